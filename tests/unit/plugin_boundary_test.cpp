// The plugin boundary seen from the core (issue 17): the core asks plugins
// what they can do instead of spelling their names. Quantizers claim the
// stored formats they read, packers declare the respects_sliding_window
// trait, and core/ sources spell no first-party plugin name outside
// core/recipe/defaults.h (a source scan against the names the build's plugins
// register).
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <unistd.h>

#include "defaults.h"
#include "mftk/error.h"
#include "mftk/packer.h"
#include "mftk/quantizer.h"
#include "model_tools.h"
#include "plan.h"
#include "nf4/nf4_quantizer.h"
#include "registry.h"

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// bitsandbytes' BitsAndBytesConfig.to_dict() for 4-bit NF4, as transformers writes it.
json bnb_4bit(const std::string& quant_type) {
  return {{"quant_method", "bitsandbytes"}, {"load_in_4bit", true},          {"load_in_8bit", false},
          {"bnb_4bit_quant_type", quant_type}, {"bnb_4bit_use_double_quant", false}};
}

TEST(StoredFormat, Nf4ClaimsBitsandbytes4BitNf4Only) {
  const mftk::nf4::Nf4Quantizer nf4;
  EXPECT_TRUE(nf4.reads_stored_format(bnb_4bit("nf4").dump()));
  EXPECT_FALSE(nf4.reads_stored_format(bnb_4bit("fp4").dump()));
  json no_type = bnb_4bit("nf4");
  no_type.erase("bnb_4bit_quant_type");  // bitsandbytes' default is fp4
  EXPECT_FALSE(nf4.reads_stored_format(no_type.dump()));
  json eight_bit = bnb_4bit("nf4");
  eight_bit["load_in_4bit"] = false, eight_bit["load_in_8bit"] = true;
  EXPECT_FALSE(nf4.reads_stored_format(eight_bit.dump()));
  EXPECT_FALSE(nf4.reads_stored_format(json{{"quant_method", "awq"}, {"bits", 4}}.dump()));
  EXPECT_FALSE(nf4.reads_stored_format("not json"));
  // The SDK's default claims nothing.
  struct Plain : mftk::Quantizer {
    bool wants(const std::string&) const override { return true; }
    std::shared_ptr<mftk::LinearOp> quantize(const std::string&, const at::Tensor&, at::ScalarType) override {
      return nullptr;
    }
  } plain;
  EXPECT_FALSE(plain.reads_stored_format(bnb_4bit("nf4").dump()));
}

// A folder holding only config.json with `quantization_config`.
std::string folder_with(const std::string& name, const json& quantization_config) {
  const fs::path dir = fs::temp_directory_path() / ("mftk-boundary-" + std::to_string(::getpid())) / name;
  fs::create_directories(dir);
  std::ofstream(dir / "config.json") << json{{"model_type", "mistral"}, {"quantization_config", quantization_config}};
  return dir.string();
}

TEST(StoredFormat, TheCoreLoadsAFolderWithTheQuantizerThatClaimsIt) {
  // The fixture library's int8 quantizers each claim quant_method == their own name.
  mftk::core::Registry registry({MFTK_FIXTURE_DIR});
  EXPECT_EQ(mftk::core::stored_quantizer_plugin(registry, folder_with("nf4", bnb_4bit("nf4"))),
            mftk::core::kDefaultQuantizerPlugin);
  EXPECT_EQ(mftk::core::stored_quantizer_plugin(
                registry, folder_with("int8", json{{"quant_method", "conf.int8_one_bit"}, {"bits", 8}})),
            "conf.int8_one_bit");
  // A format nobody claims is refused, naming what is registered.
  const std::string gptq = folder_with("gptq", json{{"quant_method", "gptq"}, {"bits", 4}});
  try {
    mftk::core::stored_quantizer_plugin(registry, gptq);
    ADD_FAILURE() << "expected a UsageError";
  } catch (const mftk::UsageError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("\"gptq\""), std::string::npos) << m;
    EXPECT_NE(m.find("no registered quantizer reads"), std::string::npos) << m;
    for (const auto* q : registry.components(mftk::Kind::quantizer))
      EXPECT_NE(m.find(q->spec.name), std::string::npos) << q->spec.name << " not listed in: " << m;
  }
  fs::remove_all(fs::path(gptq).parent_path());
}

TEST(PackerTraits, OnlyTheWindowAwareDefaultDeclaresRespectsSlidingWindow) {
  mftk::core::Registry registry;
  EXPECT_TRUE(mftk::core::packer_respects_sliding_window(registry, mftk::core::default_packer(true)));
  EXPECT_FALSE(mftk::core::packer_respects_sliding_window(registry, mftk::core::default_packer(false)));
  const auto& spec = registry.find(mftk::Kind::packer, mftk::core::kDefaultPackingPacker).spec;
  EXPECT_TRUE(spec.has_trait(mftk::kTraitRespectsSlidingWindow));
  EXPECT_FALSE(spec.has_trait("some_other_trait"));
}

// `mftk plan` prices optimizer state from the optimizer's own planning hook:
// the figures below are each optimizer's state layout written out.
TEST(PlanningHooks, OptimizersPriceTheirStateAndObjectivesDescribeTheirExtraWork) {
  mftk::core::Registry registry;
  const int64_t n = 1000;  // 4 blocks of 256 (the last one partial)
  auto state_of = [&](const std::string& optimizer) {
    mftk::core::TrainingFacts t;
    t.optimizer = optimizer;
    mftk::core::ask_planning_hooks(t, nullptr, registry);
    const auto plan = t.optimizer_state(n);
    EXPECT_TRUE(plan.has_value()) << optimizer;
    return std::make_pair(plan ? plan->bytes : -1, t.optimizer_state_on_host);
  };
  EXPECT_EQ(state_of("adamw"), std::make_pair(n * 2 * 4, false));                 // m and v in fp32
  EXPECT_EQ(state_of("paged_adamw_8bit"), std::make_pair(n * 2 + 2 * 4 * 4, true));  // 2 codes + 2 absmax per block
  EXPECT_EQ(state_of("adamw_8bit"), std::make_pair(n * 2 + 2 * 4 * 4, false));
  EXPECT_EQ(state_of("sgd"), std::make_pair(int64_t{0}, false));                  // momentum defaults to 0

  // Without a hook the estimate assumes two fp32 moments and says so.
  mftk::core::ModelFacts m;
  m.vocab_size = 64, m.hidden_size = 16, m.intermediate_size = 32, m.num_layers = 1;
  m.num_heads = 2, m.num_kv_heads = 1, m.head_dim = 8;
  m.architecture.tensors = {{"model.embed_tokens.weight", mftk::TensorRole::embedding, -1, {64, 16}, false},
                            {"model.layers.0.mlp.up_proj.weight", mftk::TensorRole::ffn_up, 0, {32, 16}, true},
                            {"lm_head.weight", mftk::TensorRole::output, -1, {64, 16}, true}};
  mftk::core::TrainingFacts t;
  t.sequence_len = 8;
  t.optimizer = "acme.unplanned";
  const auto e = mftk::core::estimate_memory(m, t, mftk::core::DataPlan{}, mftk::core::PlanDevice::cpu, 0);
  bool found = false;
  for (const auto& part : e.parts)
    if (part.name == "optimizer state") {
      found = true;
      EXPECT_EQ(e.trainable_parameters, 64 * 16 + 32 * 16 + 64 * 16);  // full fine-tuning: the whole table
      EXPECT_EQ(part.bytes, e.trainable_parameters * 8);
      EXPECT_NE(part.detail.find("gave no figure"), std::string::npos) << part.detail;
    }
  EXPECT_TRUE(found);

  // The preference objective that runs a reference model says what it costs; sft adds nothing.
  mftk::core::TrainingFacts d;
  d.objective = "dpo", d.adapter = "lora";
  mftk::core::ask_planning_hooks(d, nullptr, registry);
  EXPECT_NE(d.objective_note.find("per micro-batch"), std::string::npos) << d.objective_note;
  d.adapter.clear();
  mftk::core::ask_planning_hooks(d, nullptr, registry);
  EXPECT_NE(d.objective_note.find("before training"), std::string::npos) << d.objective_note;
  mftk::core::TrainingFacts s;
  mftk::core::ask_planning_hooks(s, nullptr, registry);
  EXPECT_TRUE(s.objective_note.empty()) << s.objective_note;
}

// ---------------------------------------------------------------------------
// core/ spells no first-party plugin name.

// Every string literal of a C++ source, as written (escapes kept), with its
// line; comments and character literals are skipped.
std::vector<std::pair<int, std::string>> string_literals(const std::string& src) {
  std::vector<std::pair<int, std::string>> out;
  int line = 1;
  for (size_t i = 0; i < src.size(); ++i) {
    const char c = src[i];
    if (c == '\n') ++line;
    else if (c == '/' && i + 1 < src.size() && src[i + 1] == '/') {
      while (i < src.size() && src[i] != '\n') ++i;
      --i;
    } else if (c == '/' && i + 1 < src.size() && src[i + 1] == '*') {
      const size_t end = src.find("*/", i + 2);
      const size_t stop = end == std::string::npos ? src.size() : end + 2;
      line += int(std::count(src.begin() + long(i), src.begin() + long(stop), '\n'));
      i = stop - 1;
    } else if (c == 'R' && i + 1 < src.size() && src[i + 1] == '"' &&
               (i == 0 || !(std::isalnum(static_cast<unsigned char>(src[i - 1])) || src[i - 1] == '_'))) {
      const size_t open = src.find('(', i + 2);
      const std::string close = ")" + src.substr(i + 2, open - i - 2) + "\"";
      const size_t end = src.find(close, open);
      out.emplace_back(line, src.substr(open + 1, end - open - 1));
      line += int(std::count(src.begin() + long(i), src.begin() + long(end), '\n'));
      i = end + close.size() - 1;
    } else if (c == '\'' && !(i > 0 && std::isxdigit(static_cast<unsigned char>(src[i - 1])))) {
      for (++i; i < src.size() && src[i] != '\''; ++i)
        if (src[i] == '\\') ++i;
    } else if (c == '"') {
      std::string lit;
      for (++i; i < src.size() && src[i] != '"'; ++i) {
        if (src[i] == '\\') lit += src[i++];
        lit += src[i];
      }
      out.emplace_back(line, lit);
    }
  }
  return out;
}

// Where `name` is spelled as a whole literal ("lora") or quoted inside one
// ("set plugin = \"lora\"").
bool spells(const std::string& literal, const std::string& name) {
  return literal == name || literal.find("\\\"" + name + "\\\"") != std::string::npos;
}

TEST(StringLiterals, FindsLiteralsOutsideComments) {
  const auto lits = string_literals("// \"a\"\nx = \"b\\\"c\\\"\"; /* \"d\" */ y = 'e'; z = R\"(f\"g)\";\n\"h\"");
  ASSERT_EQ(lits.size(), 3u);
  EXPECT_EQ(lits[0], std::make_pair(2, std::string("b\\\"c\\\"")));
  EXPECT_EQ(lits[1], std::make_pair(2, std::string("f\"g")));
  EXPECT_EQ(lits[2], std::make_pair(3, std::string("h")));
  EXPECT_TRUE(spells("b\\\"c\\\"", "c"));
  EXPECT_FALSE(spells("mistral_v3", "mistral"));
}

// Files that still spell plugin names while their move into the plugins is
// under way (issue 17); each must still spell one, or leave this list.
// Printed by the test. Empty: no file is pending.
const std::set<std::string> kPending = {};

TEST(PluginBoundary, CoreSpellsNoFirstPartyPluginNameOutsideTheDefaultsTable) {
  // The names: every component the build's plugin folder registers (library
  // names too would be components' names, or core words such as "preference").
  mftk::core::Registry registry;
  std::set<std::string> names;
  for (const auto& lib : registry.scan()) {
    ASSERT_EQ(lib.status, mftk::core::PluginLoadStatus::ok) << lib.path << ": " << lib.detail;
    for (const auto& component : lib.components) names.insert(component.substr(component.find(':') + 1));
  }
  ASSERT_GE(names.size(), 9u) << "the build's plugins were not found";

  const fs::path core = fs::path(MFTK_SOURCE_DIR) / "core";
  std::map<std::string, std::vector<std::string>> found;  // file -> "line: name"
  for (const auto& entry : fs::recursive_directory_iterator(core)) {
    const auto ext = entry.path().extension();
    if (!entry.is_regular_file() || (ext != ".cpp" && ext != ".h")) continue;
    const std::string rel = fs::relative(entry.path(), fs::path(MFTK_SOURCE_DIR)).generic_string();
    if (rel == "core/recipe/defaults.h") continue;  // the one table allowed to
    std::ifstream in(entry.path());
    std::stringstream text;
    text << in.rdbuf();
    for (const auto& [line, literal] : string_literals(text.str()))
      for (const auto& name : names)
        if (spells(literal, name)) found[rel].push_back(std::to_string(line) + ": \"" + name + "\"");
  }
  std::printf("pending files (still spelling plugin names, issue 17): %s\n",
              kPending.empty() ? "none" : "");
  for (const auto& file : kPending) std::printf("  %s\n", file.c_str());
  for (const auto& [file, where] : found) {
    std::string list;
    for (const auto& w : where) list += "\n  " + file + ":" + w;
    if (kPending.count(file)) {
      std::printf("pending %s:%s\n", file.c_str(), list.c_str());
      continue;
    }
    ADD_FAILURE() << file << " spells first-party plugin names; read them from core/recipe/defaults.h or ask the plugin "
                  << "(ComponentSpec traits, SDK hooks):" << list;
  }
  for (const auto& file : kPending)
    EXPECT_TRUE(found.count(file)) << file << " no longer spells a plugin name: take it off kPending";
}

}  // namespace
