// `mftk plugin check`, the conformance kit, run as a user runs it (the built
// binary): every first-party plugin passes every check of its kind, and on
// the fixture plugin (tests/fixtures/conformance_fixture_plugin.cpp) the
// component that keeps the contract passes while each variant fails exactly
// the check its flaw breaks.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {

struct CheckRun {
  int exit_code = -1;
  std::string out;
};

// Runs `mftk plugin check ARGS` (stderr kept apart), the environment as ctest gives it.
CheckRun plugin_check(const std::string& args) {
  const std::string cmd = (fs::path(MFTK_BINARY_DIR) / "bin" / "mftk").string() + " plugin check " + args +
                          " 2>/dev/null";
  CheckRun r;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  const int status = ::pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

// (component, check) -> "PASS" | "FAIL" | "SKIP", from lines
// "PASS  <plugin>  <kind:name>  <check>[ (measured)| : why]".
std::map<std::pair<std::string, std::string>, std::string> outcomes(const std::string& out) {
  std::map<std::pair<std::string, std::string>, std::string> result;
  std::istringstream lines(out);
  std::string line;
  while (std::getline(lines, line)) {
    std::istringstream words(line);
    std::string word, plugin, component;
    if (!(words >> word >> plugin >> component) || (word != "PASS" && word != "FAIL" && word != "SKIP")) continue;
    std::string rest;
    std::getline(words >> std::ws, rest);
    const std::string check = rest.substr(0, std::min(rest.find(" ("), rest.find(": ")));
    result[{component, check}] = word;
  }
  return result;
}

const std::map<std::string, std::vector<std::string>> kChecksOfKind = {
    {"model",
     {"keys documented", "defaults valid", "forward shapes", "causal", "documents separate", "kv cache",
      "description"}},
    {"adapter",
     {"keys documented", "defaults valid", "identity at init", "gradients own tensors", "disabled equals base",
      "merged equals unmerged", "save/load round trip"}},
    {"quantizer", {"keys documented", "defaults valid", "dequantised close", "forward matches weight",
                   "save/load bit-exact"}},
    {"packer", {"keys documented", "defaults valid", "no token lost", "documents separate"}},
    {"optimizer", {"keys documented", "defaults valid", "step decreases quadratic", "state resumes exactly"}},
    {"exporter", {"keys documented", "defaults valid", "writes only under out", "refuses foreign path"}},
    // "token cross-entropy" applies to the default objective only (checked below).
    {"objective", {"keys documented", "defaults valid", "units counted up front", "sums, not means"}},
};

std::string kind_of(const std::string& component) { return component.substr(0, component.find(':')); }

TEST(PluginCheck, EveryFirstPartyPluginPassesEveryCheck) {
  const CheckRun r = plugin_check("");
  const auto got = outcomes(r.out);
  EXPECT_EQ(r.exit_code, 0) << r.out;
  for (const std::string component :
       {"model:mistral", "adapter:lora", "quantizer:nf4", "packer:swa_packer", "packer:padding", "optimizer:adamw",
        "optimizer:sgd", "optimizer:adamw_8bit", "optimizer:paged_adamw_8bit", "exporter:gguf", "exporter:awq",
        "exporter:nf4", "objective:sft", "objective:dpo", "objective:orpo"})
    for (const auto& check : kChecksOfKind.at(kind_of(component))) {
      const auto it = got.find({component, check});
      ASSERT_NE(it, got.end()) << component << " / " << check << " missing in:\n" << r.out;
      EXPECT_EQ(it->second, "PASS") << component << " / " << check << "\n" << r.out;
    }
  const auto sft = got.find({"objective:sft", "token cross-entropy"});
  ASSERT_NE(sft, got.end()) << r.out;
  EXPECT_EQ(sft->second, "PASS") << r.out;
}

TEST(PluginCheck, EachFlawFailsTheCheckItBreaks) {
  const CheckRun r = plugin_check(std::string(MFTK_FIXTURE_DIR) + "/libmftk-conformance_fixture.so");
  EXPECT_EQ(r.exit_code, 1) << r.out;
  const auto got = outcomes(r.out);
  // component -> the checks it must fail; every other check of its kind passes.
  const std::map<std::string, std::set<std::string>> must_fail = {
      {"model:conf.model", {}},
      {"model:conf.model_sees_future", {"causal", "kv cache"}},  // the cache cannot see the future the forward saw
      {"model:conf.model_ignores_documents", {"documents separate"}},
      {"model:conf.model_forgets_cache", {"kv cache"}},
      {"model:conf.model_short_logits", {"forward shapes"}},
      {"model:conf.model_misdescribed", {"description"}},  // states a shape its tensor does not have
      {"model:conf.model_mode_stays_home", {"training mode"}},
      {"adapter:conf.adapter", {}},
      {"adapter:conf.adapter_starts_nonzero", {"identity at init"}},
      {"adapter:conf.adapter_trains_base", {"gradients own tensors"}},
      {"adapter:conf.adapter_merges_without_scale", {"merged equals unmerged"}},
      {"adapter:conf.adapter_saves_only_a", {"save/load round trip"}},
      {"adapter:conf.adapter_ignores_disable", {"disabled equals base"}},
      {"quantizer:conf.int8", {}},
      {"quantizer:conf.int8_one_bit", {"dequantised close"}},
      {"quantizer:conf.int8_forward_uses_original", {"forward matches weight"}},
      {"quantizer:conf.int8_lossy_store", {"save/load bit-exact"}},
      {"exporter:conf.int8", {}},  // the stored-format writers keep the exporter contract themselves
      {"exporter:conf.int8_lossy_store", {}},
      {"packer:conf.packer", {}},
      {"packer:conf.packer_drops_a_token", {"no token lost"}},
      {"packer:conf.packer_positions_continue", {"documents separate"}},
      {"packer:conf.packer_undocumented_key", {"keys documented"}},
      {"optimizer:conf.sgd", {}},
      {"optimizer:conf.sgd_climbs", {"step decreases quadratic"}},
      {"optimizer:conf.sgd_ignores_loaded_state", {"state resumes exactly"}},
      {"exporter:conf.names", {}},
      {"exporter:conf.names_writes_beside", {"writes only under out"}},
      {"exporter:conf.names_replaces_anything", {"refuses foreign path"}},
      {"objective:conf.objective", {}},
      {"objective:conf.objective_returns_means", {"sums, not means"}},
      {"objective:conf.objective_counts_every_token", {"units counted up front"}},
  };
  for (const auto& [component, fails] : must_fail)
    for (const auto& check : kChecksOfKind.at(kind_of(component))) {
      const auto it = got.find({component, check});
      ASSERT_NE(it, got.end()) << component << " / " << check << " missing in:\n" << r.out;
      // Only conf.int8 and conf.int8_lossy_store have an exporter of their name to write a stored format.
      const bool stores = component == "quantizer:conf.int8" || component == "quantizer:conf.int8_lossy_store";
      const std::string want = fails.count(check)                               ? "FAIL"
                               : check == "save/load bit-exact" && !stores ? "SKIP"
                                                                                : "PASS";
      EXPECT_EQ(it->second, want) << component << " / " << check << "\n" << r.out;
    }
  // A default its own factory refuses: creation fails, and so does every check that needs the component.
  EXPECT_EQ(got.at({"packer:conf.packer_bad_defaults", "keys documented"}), "PASS");
  EXPECT_EQ(got.at({"packer:conf.packer_bad_defaults", "defaults valid"}), "FAIL");
  EXPECT_EQ(got.at({"packer:conf.packer_bad_defaults", "no token lost"}), "FAIL");
}

TEST(PluginCheck, NamesPathsAndUsageErrors) {
  // A library or component name checks that plugin only.
  const CheckRun one = plugin_check("lora");
  EXPECT_EQ(one.exit_code, 0) << one.out;
  const auto got = outcomes(one.out);
  ASSERT_FALSE(got.empty()) << one.out;
  for (const auto& [key, outcome] : got) EXPECT_EQ(key.first, "adapter:lora") << one.out;
  // Unknown names and missing files are usage errors (exit 2).
  EXPECT_EQ(plugin_check("no_such_plugin").exit_code, 2);
  EXPECT_EQ(plugin_check("/no/such/libmftk-x.so").exit_code, 2);
  // A library without the entry point is a failed check, not a crash.
  const CheckRun bad = plugin_check(std::string(MFTK_FIXTURE_DIR) + "/libmftk-fixture_not_plugin.so");
  EXPECT_EQ(bad.exit_code, 1) << bad.out;
  EXPECT_NE(bad.out.find("FAIL"), std::string::npos) << bad.out;
  EXPECT_NE(bad.out.find("loads"), std::string::npos) << bad.out;
}

}  // namespace
