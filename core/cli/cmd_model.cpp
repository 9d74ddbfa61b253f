// mftk init | export  (generate and logprobs join them once the model runs)
#include <unistd.h>

#include <filesystem>
#include <memory>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "cli/commands.h"
#include "init_checkpoint.h"
#include "mftk/exporter.h"
#include "recipe.h"
#include "registry.h"

namespace mftk::cli {

namespace fs = std::filesystem;

namespace {

std::string executable_dir() {
  std::error_code ec;
  auto p = fs::read_symlink("/proc/self/exe", ec);
  return ec ? std::string() : p.parent_path().string();
}

// The corpus `mftk init` trains tokenizers on: installed under share/, or
// in the source tree next to a build folder.
std::string default_corpus() {
  const auto exe = executable_dir();
  for (const auto& candidate : {fs::path(exe) / "../share/mftk/tokenizer/corpus.txt",
                                fs::path(exe) / "../../data/tokenizer/corpus.txt",
                                fs::path("data/tokenizer/corpus.txt")}) {
    std::error_code ec;
    if (fs::exists(candidate, ec)) return fs::weakly_canonical(candidate, ec).string();
  }
  return {};
}

}  // namespace

void add_model_commands(CLI::App& app) {
  {
    auto o = std::make_shared<core::InitOptions>();
    auto ints = std::make_shared<std::map<std::string, int64_t>>();
    auto sliding = std::make_shared<int64_t>(-1);
    auto chat = std::make_shared<std::string>("v3");
    auto* cmd = app.add_subcommand("init", "write a random checkpoint in Hugging Face layout");
    cmd->add_option("--preset", o->preset, "tiny | small | mistral-7b-v0.1 | mistral-7b-v0.3")->capture_default_str();
    cmd->add_option("--out", o->out, "checkpoint folder to write")->required();
    cmd->add_option("--seed", o->seed, "random seed for the weights")->capture_default_str();
    cmd->add_option("--dtype", o->dtype, "f32 | bf16 | f16 (default: the preset's)");
    cmd->add_option("--tokenizer", o->tokenizer, "use this tokenizer.model instead of training one");
    cmd->add_option("--corpus", o->corpus, "text to train the tokenizer on (default: mftk's corpus)");
    cmd->add_option("--vocab", o->tokenizer_vocab, "vocabulary size of a trained tokenizer")->capture_default_str();
    cmd->add_option("--chat", *chat, "trained tokenizers: v3 ([INST] control tokens) or v1 (plain text)")
        ->check(CLI::IsMember({"v1", "v3"}))
        ->capture_default_str();
    for (const auto& [flag, key] : std::vector<std::pair<std::string, std::string>>{
             {"--layers", "num_hidden_layers"},
             {"--hidden", "hidden_size"},
             {"--intermediate", "intermediate_size"},
             {"--heads", "num_attention_heads"},
             {"--kv-heads", "num_key_value_heads"},
             {"--head-dim", "head_dim"},
             {"--max-position", "max_position_embeddings"}}) {
      auto k = key;
      cmd->add_option_function<int64_t>(flag, [ints, k](const int64_t& v) { (*ints)[k] = v; },
                                        "override config.json " + key);
    }
    cmd->add_option("--sliding-window", *sliding, "sliding window; 0 for none (null)");
    auto tied = std::make_shared<bool>(false);
    cmd->add_flag("--tie-embeddings", *tied, "tie lm_head to the embeddings");
    cmd->callback([o, ints, sliding, chat, tied] {
      auto opts = *o;
      opts.overrides = *ints;
      if (*sliding == 0) opts.sliding_window_null = true;
      else if (*sliding > 0) opts.overrides["sliding_window"] = *sliding;
      opts.v3_controls = *chat == "v3";
      opts.tie_word_embeddings = *tied;
      if (opts.corpus.empty() && opts.tokenizer.empty()) opts.corpus = default_corpus();
      core::write_random_checkpoint(opts);
    });
  }
  {
    struct ExportArgs {
      std::string plugin, model, adapter, out;
      std::vector<std::string> sets;
    };
    auto a = std::make_shared<ExportArgs>();
    auto* cmd = app.add_subcommand("export", "run one exporter plugin on a checkpoint folder");
    cmd->add_option("--plugin", a->plugin, "exporter name (mftk plugins lists them)")->required();
    cmd->add_option("--model", a->model, "checkpoint folder")->required();
    cmd->add_option("--adapter", a->adapter, "adapter folder to merge first");
    cmd->add_option("--out", a->out, "file or folder to write")->required();
    cmd->add_option("--set", a->sets, "exporter key=value (repeatable)")->take_all();
    cmd->callback([a] {
      if (!a->adapter.empty())
        throw UsageError("mftk export --adapter: merging before export is not built yet; run `mftk merge` first "
                         "(training-engine issue)");
      // The command line becomes a one-table recipe, validated like a file.
      std::vector<std::string> overrides;
      for (const auto& s : a->sets) overrides.push_back("export[0]." + s);
      std::string toml = fmt::format("[[export]]\nplugin = \"{}\"\nout = \"\"\n", a->plugin);
      overrides.push_back("export[0].out=\"" + a->out + "\"");
      auto recipe = core::Recipe::parse(toml, "mftk export", overrides);
      core::Registry registry;
      recipe.resolve(registry);
      const auto& ref = recipe.exports().at(0);
      auto exporter = registry.create<Exporter>(Kind::exporter, ref.plugin, ref.config);
      ExportJob job;
      job.model_dir = a->model;
      job.out = a->out;
      auto report = exporter->run(job);
      spdlog::info("export {}: {} ({} bytes) {}", ref.plugin, report.path, report.bytes, report.summary);
    });
  }
}

}  // namespace mftk::cli
