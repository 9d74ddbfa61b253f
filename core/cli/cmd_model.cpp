// mftk init | export | quantize | generate | logprobs | merge
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "chat_template.h"
#include "cli/commands.h"
#include <nlohmann/json.hpp>

#include "defaults.h"
#include "export_parity.h"
#include "generate.h"
#include "fs_util.h"
#include "init_checkpoint.h"
#include "mftk/adapter.h"
#include "mftk/quantizer.h"
#include "mftk/exporter.h"
#include "mftk/model.h"
#include "mftk/output_path.h"
#include "mftk/tokenizer.h"
#include "model_tools.h"
#include "pipeline.h"
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

// --model, --plugin, --adapter, --adapter-plugin: a checkpoint folder and
// an optional adapter folder, loaded through the plugins named.
void add_model_source_options(CLI::App* cmd, core::ModelBundleOptions& o, bool adapter_required = false) {
  cmd->add_option("--model", o.model_dir, "checkpoint folder (config.json, *.safetensors, tokenizer.model)")
      ->required();
  auto* adapter = cmd->add_option("--adapter", o.adapter_dir, "adapter folder to load onto the model (PEFT layout)");
  if (adapter_required) adapter->required();
  cmd->add_option("--plugin", o.model_plugin, "model plugin that reads the folder")->capture_default_str();
  cmd->add_option("--adapter-plugin", o.adapter_plugin, "adapter plugin that reads --adapter")->capture_default_str();
}

// "1,2,3" -> ids; anything else is a usage error naming the bad entry.
std::vector<int32_t> parse_token_list(const std::string& text) {
  std::vector<int32_t> ids;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t comma = std::min(text.find(',', start), text.size());
    std::string item = text.substr(start, comma - start);
    item.erase(0, item.find_first_not_of(" \t"));
    item.erase(item.find_last_not_of(" \t") + 1);
    size_t used = 0;
    long long value = -1;
    try {
      value = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (item.empty() || used != item.size() || value < 0 || value > INT32_MAX)
      throw UsageError(fmt::format("--tokens: '{}' is not a token id (in \"{}\")", item, text),
                       "write comma-separated non-negative integers: --tokens 1,415,2");
    ids.push_back(int32_t(value));
    start = comma + 1;
  }
  return ids;
}

// `mftk generate --tools FILE`: a JSON list of tools, or {"tools": [...]}.
std::vector<core::ChatTool> read_tools_file(const std::string& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) throw UsageError(fmt::format("generate: --tools {} is not a file", path));
  std::string error;
  std::optional<core::JsonValue> doc = core::python_json_loads(core::read_file(path), &error);
  if (!doc) throw UsageError(fmt::format("generate: --tools {}: not valid JSON ({})", path, error));
  const core::JsonValue* list = doc->is_object() && doc->find("tools") ? doc->find("tools") : &*doc;
  try {
    return core::chat_tools_from_json(*list, "tools");
  } catch (const core::ChatJsonError& e) {
    throw UsageError(fmt::format("generate: --tools {}: {}", path, e.what()), e.hint());
  }
}

// The assistant message {"role": "assistant", "tool_calls": [...]} for a
// reply that is tool calls ([TOOL_CALLS] then their JSON list), as a chat
// row would hold it; nullopt for a plain reply. Calls that are not valid
// JSON are printed as text, with a warning.
std::optional<std::string> tool_calls_reply(const Tokenizer& tok, const std::vector<int32_t>& tokens) {
  const std::optional<int32_t> marker = tok.piece_to_id("[TOOL_CALLS]");
  auto start = marker ? std::find(tokens.begin(), tokens.end(), *marker) : tokens.end();
  if (start == tokens.end()) return std::nullopt;
  std::vector<int32_t> body(start + 1, tokens.end());
  if (!body.empty() && body.back() == tok.eos_id()) body.pop_back();
  const std::string text = tok.decode(body);
  const auto calls = core::tool_calls_from_output(text);
  if (!calls) {
    spdlog::warn("generate: the reply starts with [TOOL_CALLS] but what follows is not a JSON list of "
                 "{{\"name\", \"arguments\"}} calls: {}", text);
    return std::nullopt;
  }
  return core::python_json_dumps(core::tool_calls_message_json(*calls));
}

// The text of generated tokens, without the end-of-sequence token.
std::string generated_text(const Tokenizer& tokenizer, std::vector<int32_t> tokens) {
  if (!tokens.empty() && tokens.back() == tokenizer.eos_id()) tokens.pop_back();
  return tokenizer.decode(tokens);
}

// A folder's own name: "runs/a/adapter/" -> "adapter", "." -> the current folder's.
std::string folder_name(const std::string& dir) {
  fs::path p = fs::absolute(dir).lexically_normal();
  if (!p.has_filename()) p = p.parent_path();
  return p.filename().string();
}

// Runs the exporter `plugin` on a checkpoint folder, `sets` validated as
// the keys of an [[export]] table. With an adapter, the merged model is
// written to a private scratch folder next to `out` first and exported from
// there; its folder is named "<model folder>+<adapter folder>", the name
// exporters that record one (GGUF's general.name) take from the folder.
// With an adapter, the export parity gate compares the artefact read back
// with base + adapter unmerged (README "Export parity"); --set max_kl=X gates it.
void run_export(const char* command, const std::string& plugin, const std::string& model_dir,
                const std::string& adapter_dir, const std::string& out, const std::vector<std::string>& sets,
                const std::string& eval_data = {}, int64_t parity_rows = 0) {
  // The command line becomes a one-table recipe, validated like a file.
  std::vector<std::string> overrides;
  for (const auto& s : sets) overrides.push_back("export[0]." + s);
  std::string toml = fmt::format("[[export]]\nplugin = \"{}\"\nout = \"\"\n", plugin);
  overrides.push_back("export[0].out=\"" + out + "\"");
  auto recipe = core::Recipe::parse(toml, fmt::format("mftk {}", command), overrides);
  core::Registry registry;
  recipe.resolve(registry);
  const auto& ref = recipe.exports().at(0);
  auto exporter = registry.create<Exporter>(Kind::exporter, ref.plugin, ref.config);
  ExportJob job;
  job.model_dir = model_dir;
  job.out = out;
  std::optional<core::ScratchFolder> scratch;  // made fresh, so removing it removes only what mftk wrote
  core::ParityReference reference;             // base + adapter, before the merge
  if (!adapter_dir.empty()) {
    core::ModelBundleOptions o;
    o.model_dir = model_dir;
    o.adapter_dir = adapter_dir;
    auto bundle = core::load_model_bundle(registry, o);
    reference = core::command_parity_reference(*bundle.model, *bundle.tokenizer, eval_data, parity_rows);
    bundle.adapter->merge(*bundle.model);
    scratch.emplace(out, "merged-tmp");
    const std::string merged_dir =
        (fs::path(scratch->path()) / (folder_name(model_dir) + "+" + folder_name(adapter_dir))).string();
    core::save_hf_checkpoint(*bundle.model, model_dir, merged_dir);
    spdlog::info("{}: merged {} into {} (temporary, removed after the export)", command, adapter_dir, merged_dir);
    job.model_dir = merged_dir;
    job.base_model_dir = model_dir;  // exporters of the adapter itself (gguf_lora) read these
    job.adapter_dir = adapter_dir;
  }
  auto report = exporter->run(job);
  spdlog::info("{} {}: {} ({} bytes) {}", command, ref.plugin, report.path, report.bytes, report.summary);
  for (const auto& beside : report.also_written) spdlog::info("{} {}: also wrote {}", command, ref.plugin, beside);
  if (!reference.empty()) {  // while the merged folder still exists: exporters read names and tokenizer there
    auto check = core::check_export(registry, core::ArtefactModelSource{}, *exporter, job, report, reference);
    check.kind = ref.plugin;
    if (const double max_kl = ref.config.get_number("max_kl"); max_kl >= 0) check.threshold = max_kl;
    core::report_parity({check});
  }
}

// mftk init: a random checkpoint from a model plugin's preset, with a
// given or freshly trained tokenizer.
void add_init_command(CLI::App& app) {
  auto o = std::make_shared<core::InitOptions>();
  auto ints = std::make_shared<std::map<std::string, int64_t>>();
  auto sliding = std::make_shared<int64_t>(-1);
  auto chat = std::make_shared<std::string>("v3");
  auto* cmd = app.add_subcommand("init", "write a random checkpoint in Hugging Face layout");
  cmd->add_option("--plugin", o->model_plugin, "model plugin whose presets and weights to use (default: the "
                  "default model plugin)");
  cmd->add_option("--preset", o->preset, "a preset the model plugin offers (an unknown name lists them)")
      ->capture_default_str();
  cmd->add_option("--out", o->out, "checkpoint folder to write")->required();
  cmd->add_option("--seed", o->seed, "random seed for the weights")->capture_default_str();
  cmd->add_option("--dtype", o->dtype, "f32 | bf16 | f16 (default: the preset's)");
  cmd->add_option("--tokenizer", o->tokenizer, "use this tokenizer.model instead of training one");
  cmd->add_option("--corpus", o->corpus, "text to train the tokenizer on (default: mftk's corpus)");
  cmd->add_option("--vocab", o->tokenizer_vocab, "vocabulary size of a trained tokenizer")->capture_default_str();
  cmd->add_option("--max-shard-bytes", o->max_shard_bytes,
                  "split the weights into shards + model.safetensors.index.json above this size")
      ->capture_default_str();
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
  auto tool_tokens = std::make_shared<bool>(false);
  cmd->add_flag("--tool-tokens", *tool_tokens,
                "trained v3 tokenizers also get [TOOL_CALLS], [AVAILABLE_TOOLS], [/AVAILABLE_TOOLS], "
                "[TOOL_RESULTS], [/TOOL_RESULTS] (ids 5-9, as in Mistral's v0.3 tokenizer): function calling");
  cmd->callback([o, ints, sliding, chat, tied, tool_tokens] {
    auto opts = *o;
    opts.overrides = *ints;
    if (*sliding == 0) opts.sliding_window_null = true;
    else if (*sliding > 0) opts.overrides["sliding_window"] = *sliding;
    opts.v3_controls = *chat == "v3";
    opts.tool_controls = *tool_tokens;
    if (opts.tool_controls && !opts.v3_controls)
      throw UsageError("mftk init: --tool-tokens needs --chat v3", "the v1 chat format cannot encode tools");
    opts.tie_word_embeddings = *tied;
    if (opts.corpus.empty() && opts.tokenizer.empty()) opts.corpus = default_corpus();
    core::write_random_checkpoint(opts);
  });
}

// mftk export: one exporter plugin on a checkpoint folder (an adapter merged first).
void add_export_command(CLI::App& app) {
  struct ExportArgs {
    std::string plugin, model, adapter, out, eval_data;
    std::vector<std::string> sets;
    int64_t parity_rows = 16;
  };
  auto a = std::make_shared<ExportArgs>();
  auto* cmd = app.add_subcommand("export", "run one exporter plugin on a checkpoint folder");
  cmd->add_option("--plugin", a->plugin, "exporter name (mftk plugins lists them)")->required();
  cmd->add_option("--model", a->model, "checkpoint folder")->required();
  cmd->add_option("--adapter", a->adapter, "adapter folder to merge into --model before exporting");
  cmd->add_option("--out", a->out, "file or folder to write")->required();
  cmd->add_option("--set", a->sets, "exporter key=value (repeatable); max_kl=X fails the export past that parity")
      ->take_all();
  cmd->add_option("--eval-data", a->eval_data,
                  "with --adapter: JSONL rows (chat, instruction or text) for the parity check; default: a "
                  "built-in sample of short texts");
  cmd->add_option("--parity-rows", a->parity_rows, "with --adapter: rows for the parity check; 0: none")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 20))
      ->capture_default_str();
  cmd->callback([a] {
    run_export("export", a->plugin, a->model, a->adapter, a->out, a->sets, a->eval_data, a->parity_rows);
  });
}

// mftk quantize: a checkpoint folder written quantised through the quantizer's exporter.
void add_quantize_command(CLI::App& app) {
  struct QuantizeArgs {
    std::string plugin = core::kDefaultQuantizerPlugin, model, out;
    std::vector<std::string> sets;
  };
  auto a = std::make_shared<QuantizeArgs>();
  auto* cmd = app.add_subcommand("quantize", "write a checkpoint folder quantised, to load later without re-quantising");
  cmd->footer(fmt::format(
      "Streams --model tensor by tensor through the quantizer plugin's checkpoint writer and writes --out in "
      "the layout the quantised format's own tools read ({}: transformers + bitsandbytes 4-bit, with "
      "quantization_config in config.json). A recipe whose [model] path is --out loads the stored weights "
      "as they are. Keys as in the recipe's [quantize] table: --set double_quant=true --set blocksize=64.",
      core::kDefaultQuantizerPlugin));
  cmd->add_option("--plugin", a->plugin, "quantizer name (mftk plugins lists them)")->capture_default_str();
  cmd->add_option("--model", a->model, "checkpoint folder (bf16, f16 or f32)")->required();
  cmd->add_option("--out", a->out, "folder to write")->required();
  cmd->add_option("--set", a->sets, "quantizer key=value (repeatable)")->take_all();
  cmd->callback([a] {
    core::Registry registry;
    registry.find(Kind::quantizer, a->plugin);  // a UsageError listing the quantizers when there is none
    std::error_code ec;
    if (fs::exists(a->out, ec) && fs::equivalent(a->out, a->model, ec))
      throw UsageError(fmt::format("quantize: --out {} is the --model folder", a->out),
                       "write the quantised checkpoint to a new folder");
    run_export("quantize", a->plugin, a->model, "", a->out, a->sets);
  });
}

struct GenerateArgs {
  core::ModelBundleOptions model;
  std::string prompt, tools;
  bool chat = false;
  bool json = false;
  core::GenerateOptions gen;
};

// Encodes the prompt (as a chat turn with tools when given), generates and
// prints the reply on stdout; timings go to the log.
void run_generate(const GenerateArgs& a) {
  core::Registry registry;
  auto bundle = core::load_model_bundle(registry, a.model);
  const Tokenizer& tok = *bundle.tokenizer;
  std::vector<core::ChatTool> tools;
  if (!a.tools.empty()) tools = read_tools_file(a.tools);
  const auto prompt = tools.empty() ? core::encode_prompt(tok, a.prompt, a.chat)
                                    : core::encode_chat(tok, core::detect_chat_format(tok), {{"user", a.prompt}},
                                                        /*train_on_inputs=*/false, /*add_generation_prompt=*/true,
                                                        tools)
                                          .ids;
  if (prompt.empty())
    throw UsageError("generate: the prompt encodes to no tokens (the tokenizer adds no BOS)",
                     "pass a non-empty --prompt");
  auto options = a.gen;
  options.eos_id = tok.eos_id();
  auto gen = core::generate(*bundle.model, prompt, options);
  const std::string text = generated_text(tok, gen.tokens);
  // A reply that opens with [TOOL_CALLS] is calls, not text: shown as the message a chat row would hold.
  std::optional<std::string> calls_message;
  if (!tools.empty()) calls_message = tool_calls_reply(tok, gen.tokens);
  if (a.json) {
    nlohmann::json j = {{"prompt_tokens", prompt},
                        {"tokens", gen.tokens},
                        {"text", text},
                        {"stopped_at_eos", gen.stopped_at_eos}};
    if (calls_message) j["tool_calls"] = nlohmann::json::parse(*calls_message)["tool_calls"];
    std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  } else {
    std::printf("%s\n", calls_message ? calls_message->c_str() : text.c_str());
  }
  std::fflush(stdout);
  spdlog::info("generate: {} prompt tokens, {} new{}; {:.0f} ms to first token, {:.1f} tokens/s after it",
               prompt.size(), gen.tokens.size(), gen.stopped_at_eos ? " (stopped at EOS)" : "",
               1000 * gen.seconds_to_first_token, gen.tokens_per_second);
}

// mftk generate: continue a prompt with a checkpoint (and an adapter).
void add_generate_command(CLI::App& app) {
  auto a = std::make_shared<GenerateArgs>();
  auto* cmd = app.add_subcommand("generate", "continue a prompt with a checkpoint (and an adapter)");
  cmd->footer(
      "The prompt is BOS + the text (BOS when the tokenizer adds one); with --chat it is one user turn in the "
      "tokenizer's Mistral chat format, ending where the assistant's reply begins. Prints the new text on "
      "stdout (with --json: prompt and new token ids as well); time to first token and tokens/s go to stderr. "
      "--temperature 0 is greedy and ignores --top-p and --seed. --tools FILE (with --chat, v3 tokenizers): "
      "the tools the model may call, a JSON list of {\"type\": \"function\", \"function\": {\"name\", "
      "\"description\", \"parameters\"}} (or {\"tools\": [...]}), put before the user turn as "
      "[AVAILABLE_TOOLS]; when the reply is a [TOOL_CALLS] reply, stdout is the assistant message "
      "{\"role\": \"assistant\", \"tool_calls\": [...]} in the shape chat rows take.");
  add_model_source_options(cmd, a->model);
  cmd->add_option("--prompt", a->prompt, "text to continue")->required();
  auto* chat = cmd->add_flag("--chat", a->chat, "wrap the prompt as a user turn of the chat template");
  cmd->add_option("--tools", a->tools, "JSON file with the tools the model may call (needs --chat)")->needs(chat);
  cmd->add_option("--max-new-tokens", a->gen.max_new_tokens, "stop after this many new tokens (or at EOS)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20))
      ->capture_default_str();
  cmd->add_option("--temperature", a->gen.temperature, "sampling temperature; 0 is greedy")
      ->check(CLI::Range(0.0, 100.0))
      ->capture_default_str();
  cmd->add_option("--top-p", a->gen.top_p, "nucleus sampling: keep the smallest set of tokens reaching this mass")
      ->check(CLI::Range(1e-6, 1.0))
      ->capture_default_str();
  cmd->add_option("--seed", a->gen.seed, "sampling seed")->capture_default_str();
  cmd->add_flag("--json", a->json,
                "print {\"prompt_tokens\", \"tokens\", \"text\", \"stopped_at_eos\"} instead of the text");
  cmd->callback([a] { run_generate(*a); });
}

// mftk logprobs: per-token log-probabilities of a text or of token ids, as JSON.
void add_logprobs_command(CLI::App& app) {
  struct LogprobsArgs {
    core::ModelBundleOptions model;
    std::string text, tokens, dtype = "f32";
    int64_t top = 0;
  };
  auto a = std::make_shared<LogprobsArgs>();
  auto* cmd = app.add_subcommand("logprobs", "score tokens: log P(token | everything before it), as JSON");
  cmd->footer(
      "Prints one JSON object on stdout: {\"tokens\": [ids], \"logprobs\": [...]} where logprobs[i] = "
      "log P(tokens[i+1] | tokens[0..i]) (n-1 values for n tokens), natural log, log_softmax in fp32. With "
      "--top K also \"top\": for each of those n-1 positions the K most likely next tokens "
      "[{\"id\", \"logprob\"}, ...], most likely first. --text is encoded as BOS + text (BOS when the "
      "tokenizer adds one). README.md \"logprobs contract\" keeps this stable.");
  add_model_source_options(cmd, a->model);
  auto* text = cmd->add_option("--text", a->text, "text to score (encoded with BOS)");
  auto* tokens = cmd->add_option("--tokens", a->tokens, "token ids to score, comma separated: 1,415,2");
  text->excludes(tokens);
  cmd->add_option("--top", a->top, "also list the K most likely tokens at every position")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 24))
      ->capture_default_str();
  cmd->add_option("--dtype", a->dtype, "f32 (weights and compute in fp32) or bf16 (both in bf16)")
      ->check(CLI::IsMember({"f32", "bf16"}))
      ->capture_default_str();
  cmd->callback([a, text, tokens] {
    if (text->count() == 0 && tokens->count() == 0)
      throw UsageError("logprobs: nothing to score", "pass --text TEXT or --tokens 1,2,3");
    std::vector<int32_t> ids;
    if (tokens->count() > 0) ids = parse_token_list(a->tokens);
    auto options = a->model;
    options.bf16 = a->dtype == "bf16";
    core::Registry registry;
    auto bundle = core::load_model_bundle(registry, options);
    if (text->count() > 0) ids = core::encode_text(*bundle.tokenizer, a->text);
    const auto result = core::compute_logprobs(*bundle.model, ids, a->top);
    std::printf("%s\n", core::logprobs_json(result, a->top > 0).c_str());
  });
}

struct MergeParityArgs {
  std::string eval_data;
  int64_t rows = 16;
  double max_kl = -1;
};

// Folds model.adapter_dir into model.model_dir, writes `out`, then checks the folder
// written against base + adapter unmerged (the parity gate).
void run_merge(const core::ModelBundleOptions& model, const std::string& out, const MergeParityArgs& parity) {
  std::error_code ec;
  if (fs::exists(out, ec) && fs::exists(model.model_dir, ec) && fs::equivalent(out, model.model_dir, ec))
    throw UsageError(fmt::format("merge: --out {} is the --model folder", out),
                     "write the merged checkpoint to a new folder; the base is read while writing");
  check_output_path(out, core::kHfCheckpointKind, OutputShape::folder);  // refuse before the slow part
  core::Registry registry;
  auto bundle = core::load_model_bundle(registry, model);
  if (bundle.quantizer)
    spdlog::info("merge: folding {} into {}: the base is stored quantised, so the adapter is merged onto the "
                 "dequantised base weights (written in {})",
                 model.adapter_dir, model.model_dir, c10::toString(bundle.model->shape().checkpoint_dtype));
  else
    spdlog::info("merge: folding {} into {} (dense weights as stored)", model.adapter_dir, model.model_dir);
  const auto reference =
      core::command_parity_reference(*bundle.model, *bundle.tokenizer, parity.eval_data, parity.rows);
  bundle.adapter->merge(*bundle.model);
  core::save_hf_checkpoint(*bundle.model, model.model_dir, out);
  spdlog::info("merge: wrote {}", out);
  if (!reference.empty()) {
    const double max_kl = parity.max_kl >= 0
                              ? parity.max_kl
                              : core::default_merge_max_kl(bundle.model->shape().checkpoint_dtype, at::kFloat);
    // The in-memory model goes before the merged folder is loaded: one model in memory at a time.
    bundle.adapter.reset();
    bundle.model.reset();
    core::ArtefactModelSource source;
    source.plugin = model.model_plugin;
    auto check = core::check_checkpoint_folder(registry, source, out, reference);
    check.kind = "merge";
    check.threshold = max_kl;
    core::report_parity({check});
  }
}

// mftk merge: an adapter folded into its base, written as a plain HF checkpoint.
void add_merge_command(CLI::App& app) {
  auto a = std::make_shared<core::ModelBundleOptions>();
  auto out = std::make_shared<std::string>();
  auto* cmd = app.add_subcommand("merge", "fold an adapter into its base and write a plain HF checkpoint");
  cmd->footer(
      "Loads --model and --adapter, folds the adapter into the base weights and writes --out with the "
      "base's config.json and tokenizer files, in the base checkpoint's dtype. An adapter trained on a quantised base (QLoRA) merges onto the "
      "dequantised weights; a base folder saved quantised (`mftk quantize`) is dequantised and written dense.");
  add_model_source_options(cmd, *a, /*adapter_required=*/true);
  cmd->add_option("--out", *out, "folder to write (not the --model folder)")->required();
  auto parity = std::make_shared<MergeParityArgs>();
  cmd->add_option("--eval-data", parity->eval_data,
                  "JSONL rows (chat, instruction or text) the parity check runs; default: a built-in sample");
  cmd->add_option("--parity-rows", parity->rows, "rows for the parity check; 0: none")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 20))
      ->capture_default_str();
  cmd->add_option("--max-kl", parity->max_kl,
                  "fail (exit 1) when mean KL(base + adapter || merged) per token exceeds this; default: 1e-6 "
                  "for fp32 checkpoints, 5e-3 for bf16/f16 ones");
  cmd->callback([a, out, parity] { run_merge(*a, *out, *parity); });
}

}  // namespace

void add_model_commands(CLI::App& app) {
  add_init_command(app);
  add_export_command(app);
  add_quantize_command(app);
  add_generate_command(app);
  add_logprobs_command(app);
  add_merge_command(app);
}

}  // namespace mftk::cli
