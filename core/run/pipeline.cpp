// `mftk run`: the flow of a fine-tuning run, one named step per stage
// (docs/architecture.md draws the same picture).
#include "pipeline.h"

#include <dlfcn.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/spdlog.h>
#include <torch/csrc/autograd/grad_mode.h>

#include "batching.h"
#include "chat_template.h"
#include "dataset.h"
#include "defaults.h"
#include "device.h"
#include "distributed.h"
#include "export_parity.h"
#include "fs_util.h"
#include "generate.h"
#include "mftk/abi.h"
#include "mftk/adapter.h"
#include "mftk/exporter.h"
#include "mftk/linear_slot.h"
#include "mftk/model.h"
#include "mftk/objective.h"
#include "mftk/optimizer.h"
#include "mftk/output_path.h"
#include "mftk/packer.h"
#include "mftk/quantizer.h"
#include "mftk/safetensors.h"
#include "mftk/tokenizer.h"
#include "model_tools.h"
#include "objective_cache.h"
#include "preference_rows.h"
#include "recipe.h"
#include "registry.h"
#include "report.h"
#include "run_folder.h"
#include "run_build.h"
#include "run_log.h"
#include "run_spec.h"
#include "stage.h"
#include "trainer.h"

namespace mftk::core {

namespace fs = std::filesystem;

namespace {

// One component of the run as its checkpoints record it (run.json): the
// library a plugin came from and the version its handshake gives, so that a
// resume can say a plugin changed under it.
nlohmann::json component_record(Registry& registry, Kind kind, const std::string& table, const std::string& name) {
  const ComponentInfo& info = registry.find(kind, name);
  nlohmann::json c = {{"kind", to_string(kind)}, {"table", table}, {"plugin", name}};
  if (info.library_path.empty()) {
    c["library"] = "mftk (built in)";
    c["library_version"] = MFTK_SDK_VERSION;
    c["library_file"] = "";
    return c;
  }
  c["library"] = "";
  c["library_version"] = "";
  c["library_file"] = fs::path(info.library_path).filename().string();
  // The library is loaded already (find loaded it): RTLD_NOLOAD only looks it up.
  if (void* h = dlopen(info.library_path.c_str(), RTLD_LAZY | RTLD_LOCAL | RTLD_NOLOAD)) {
    if (auto entry = reinterpret_cast<MftkPluginEntryFn>(dlsym(h, MFTK_PLUGIN_ENTRY_SYMBOL)))
      if (const MftkPluginInfo* handshake = entry()) {
        if (handshake->name) c["library"] = handshake->name;
        if (handshake->version) c["library_version"] = handshake->version;
      }
    dlclose(h);
  }
  return c;
}

void setup_log_file(const std::string& log_path) {
  auto sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>(log_path);
  spdlog::default_logger()->sinks().push_back(sink);
}

std::string token_text(const Tokenizer& tok, const std::vector<int32_t>& ids) {
  std::vector<int32_t> plain;
  for (auto id : ids)
    if (id != tok.eos_id() && id != tok.bos_id()) plain.push_back(id);
  return tok.decode(plain);
}

// Whether a slot's weight is one of the model's own tensors: a head tied to
// the embeddings holds the embedding tensor itself (the same TensorImpl).
bool slot_holds_model_tensor(LinearSlot& slot, const NamedTensors& named) {
  for (const auto& [n, w] : slot.op->parameters())
    if (n == "weight")
      for (const auto& [m, t] : named)
        if (t.is_same(w)) return true;
  return false;
}

// Where the run's tensors are, observed, under the names `mftk plan`
// predicts them with (plan_placement): summary.json "placement".
nlohmann::json observed_placement(Model& model, const NamedTensors& trainable, const Optimizer& optimizer) {
  auto type = [](const c10::Device& d) { return c10::DeviceTypeName(d.type(), /*lower_case=*/true); };
  const c10::Device weights = model_device(model);
  c10::Device state = weights;
  int64_t largest = -1;  // the bulk of the state, not a step counter
  for (const auto& [name, t] : optimizer.state())
    if (t.defined() && t.numel() > largest) largest = t.numel(), state = t.device();
  return {{"weights", type(weights)},
          {"trainable", type(trainable.empty() ? weights : trainable.front().second.device())},
          {"optimizer_state", type(state)},
          {"activations", type(weights)},
          {"data", "cpu"}};
}

}  // namespace

void check_objective_data(const std::string& objective, bool wants_pairs, bool has_pairs) {
  if (wants_pairs && !has_pairs)
    throw UsageError(fmt::format("[objective] {} trains on preference pairs, and the recipe's datasets are not "
                                 "type = \"preference\"",
                                 objective),
                     fmt::format("give each [[datasets]] entry type = \"preference\" (rows {{\"prompt\", "
                                 "\"chosen\", \"rejected\"}}), or use [objective] plugin = \"{}\"",
                                 kDefaultObjectivePlugin));
  if (!wants_pairs && has_pairs)
    throw UsageError(fmt::format("the datasets are type = \"preference\", and [objective] {} trains on documents",
                                 objective),
                     "set [objective] plugin to an objective that trains on preference pairs (`mftk plugins` "
                     "lists the objectives)");
}

// Full fine-tuning: every weight becomes a writable fp32 leaf (the loaded
// ones may be read-only views of the mapped checkpoint). A tied head keeps
// its tensor, which is made trainable once with the embeddings: both uses add
// their gradients into one leaf, and the model saved (which writes the
// embeddings only) is the model trained. A private copy for the head would
// train apart and then be dropped at save.
NamedTensors make_all_trainable(Model& model) {
  NamedTensors out;
  at::NoGradGuard no_grad;
  const NamedTensors named = model.named_parameters();
  for (auto* slot : model.linear_slots()) {
    if (slot_holds_model_tensor(*slot, named)) continue;  // tied: trained as the model tensor below
    at::Tensor w = slot->op->dense_weight(at::kFloat).clone().requires_grad_(true);
    slot->op = make_dense_linear(w);
    out.emplace_back(slot->name + ".weight", w);
  }
  for (auto [name, t] : named) {
    t.set_data(t.detach().to(at::kFloat).clone());
    t.requires_grad_(true);
    out.emplace_back(name, t);
  }
  return out;
}

void save_hf_checkpoint(Model& model, const std::string& source_dir, const std::string& target) {
  // Written privately, then put in place of nothing, an empty folder or an
  // earlier checkpoint mftk wrote (mftk/output_path.h).
  OutputGuard out(target, kHfCheckpointKind, OutputShape::folder);
  const std::string& dir = out.path();
  const auto& shape = model.shape();
  const at::ScalarType dtype = shape.checkpoint_dtype;
  NamedTensors tensors;
  const NamedTensors named = model.named_parameters();
  for (auto& [name, t] : named) tensors.emplace_back(name, t.detach().to(dtype).contiguous());
  // A tied head is left out only while it still is the embedding tensor. One
  // that became a weight of its own (an adapter merged into lm_head, lm_head
  // trained in full as a LoRA modules_to_save) is written, and config.json
  // unties it: dropping it would save another model than the one trained.
  bool untied_head = false;
  const std::string head = model.architecture().head_slot;  // the model names its head
  for (auto* slot : model.linear_slots()) {
    if (slot->name == head && shape.tie_word_embeddings) {
      if (slot_holds_model_tensor(*slot, named)) continue;
      untied_head = true;
    }
    tensors.emplace_back(slot->name + ".weight", slot->op->dense_weight(dtype).contiguous());
  }
  if (untied_head)
    spdlog::info("save: lm_head no longer equals the embeddings it was tied to; {} stores it and sets "
                 "tie_word_embeddings = false", target);
  save_checkpoint(dir, tensors);
  // Every weight written is dense, so a quantised source's
  // quantization_config must not follow it (loaders would expect 4-bit
  // tensors); everything else in config.json is kept as it was.
  {
    std::ifstream in(fs::path(source_dir) / "config.json");
    auto config = nlohmann::json::parse(in);
    config.erase("quantization_config");
    if (untied_head) config["tie_word_embeddings"] = false;
    write_file_atomic((fs::path(dir) / "config.json").string(), config.dump(2) + "\n");
  }
  for (const char* f : {"generation_config.json", "tokenizer.model", "tokenizer_config.json",
                        "special_tokens_map.json"}) {
    const auto src = fs::path(source_dir) / f;
    if (fs::exists(src)) fs::copy_file(src, fs::path(dir) / f);
  }
  out.commit();
}

ExactMatch exact_match(Model& model, const Tokenizer& tok, const std::vector<Example>& examples, int64_t limit) {
  ExactMatch r;
  for (const auto& ex : examples) {
    if (r.total >= limit) break;
    size_t first = 0;
    while (first < ex.loss_mask.size() && !ex.loss_mask[first]) ++first;
    if (first == 0 || first >= ex.ids.size()) continue;  // nothing to answer, or no prompt
    size_t last = ex.loss_mask.size();
    while (last > first && !ex.loss_mask[last - 1]) --last;
    std::vector<int32_t> prompt(ex.ids.begin(), ex.ids.begin() + long(first));
    std::vector<int32_t> reference(ex.ids.begin() + long(first), ex.ids.begin() + long(last));
    GenerateOptions go;
    go.max_new_tokens = int64_t(reference.size()) + 2;
    go.eos_id = tok.eos_id();
    auto gen = generate(model, prompt, go);
    const bool ok = gen.tokens == reference;
    r.correct += ok;
    ++r.total;
    if (r.samples.size() < 4)
      r.samples.push_back(fmt::format("{} -> {} ({})", token_text(tok, prompt), token_text(tok, gen.tokens),
                                      ok ? "correct" : "expected " + token_text(tok, reference)));
  }
  return r;
}

namespace {

// Where and with whom the run computes, settled before anything is loaded
// or written.
struct RunSession {
  c10::Device device = c10::kCPU;
  std::shared_ptr<Distributed> dist;
};

// 0. The device (a recipe asking for a GPU this machine or libtorch cannot
// give stops here, exit 2; under mftk launch / torchrun each rank takes
// cuda:LOCAL_RANK), the ranks, and on rank 0 the output folder.
RunSession open_run(const RunSpec& spec) {
  if (spec.threads > 0) at::set_num_threads(int(spec.threads));
  const DistributedEnv dist_env = DistributedEnv::from_env();
  RunSession s;
  s.device = resolve_device(spec.device, cuda_support(), dist_env.world_size, dist_env.local_rank);
  // Data parallelism when started by mftk launch or torchrun (WORLD_SIZE > 1):
  // every rank loads, packs and trains; rank 0 alone writes into output_dir.
  // NCCL when the ranks compute on GPUs, Gloo on the CPU.
  s.dist = Distributed::from_env(std::chrono::milliseconds(int64_t(std::llround(1000 * spec.distributed_timeout_s))),
                                 s.device.is_cuda());
  if (s.dist->world_size() > 1) {
    spdlog::set_pattern(fmt::format("[%H:%M:%S] [rank {}] %^%l%$ %v", s.dist->rank()));
    // The other ranks repeat rank 0's story; they only speak up with warnings and errors.
    if (!s.dist->is_main() && spdlog::get_level() == spdlog::level::info) spdlog::set_level(spdlog::level::warn);
  }
  if (s.dist->is_main()) {
    // A new or empty folder, or one an earlier run wrote (re-runs, resume);
    // never a folder of the user's, which a run would fill and rotate in.
    claim_work_folder(spec.paths.output_dir, kRunOutputKind);
    setup_log_file(spec.paths.log);
    // Every key with its default, for `mftk compare` to tell runs apart by.
    write_resolved_recipe(spec.paths.output_dir, *spec.recipe);
  }
  return s;
}

// run.json in every checkpoint: the resolved recipe (as recipe.resolved.json
// has it), the code of each component and the mftk version, for resume to compare.
nlohmann::json run_record(const RunSpec& spec, Registry& registry, const BuiltRun& run) {
  nlohmann::json record = resolved_recipe_json(*spec.recipe);
  record["mftk_version"] = MFTK_SDK_VERSION;
  nlohmann::json& components = record["components"] = nlohmann::json::array();
  auto add = [&](const ComponentChoice& c) { components.push_back(component_record(registry, c.kind, c.table, c.plugin)); };
  add(spec.model);
  if (spec.quantize) add(*spec.quantize);
  if (spec.adapter) add(*spec.adapter);
  add(spec.objective);
  if (!run.preference_pairs) add(spec.packer);  // pairs are packed by the core
  add(spec.optimizer);
  return record;
}

// What an objective's prepared state depends on (objective_cache.h), from
// the run record: the tables that shape the model and the rows, the
// objective's library and version, the weights the run starts from.
ObjectiveCacheInputs objective_cache_inputs(const RunSpec& spec, const nlohmann::json& record, const BuiltRun& run,
                                            const c10::Device& device) {
  ObjectiveCacheInputs in;
  in.data_cache_file = run.rows.data.cache_file;
  const nlohmann::json& tables = record.at("recipe");
  nlohmann::json settings = nlohmann::json::object();
  for (const char* table : {"model", "quantize", "adapter", "objective"})
    if (tables.contains(table)) settings[table] = tables[table];
  settings["training"] = {{"bf16", spec.bf16}, {"sequence_len", spec.sequence_len}};
  in.settings_json = settings.dump();
  for (const auto& c : record.at("components"))
    if (c.at("table") == "objective") in.objective = c.dump();
  in.weight_folders.push_back(spec.model_path);
  if (!spec.adapter_start.empty()) in.weight_folders.push_back(spec.adapter_start);
  in.device = device.str();
  return in;
}

// 5. Train.
TrainResult train_model(const RunSpec& spec, Registry& registry, const RunSession& session, BuiltRun& run) {
  TrainOptions train_options = spec.train;
  train_options.distributed = session.dist;
  const nlohmann::json record = run_record(spec, registry, run);
  train_options.run_record = record.dump(2) + "\n";
  // A recorded reference (full fine-tuning DPO) is cached beside the prepared data.
  train_options.objective_cache = objective_cache_file(objective_cache_inputs(spec, record, run, session.device));
  Trainer trainer(run.model(), *run.optimizer, run.trainable, std::move(run.rows.train), std::move(run.rows.eval),
                  std::move(train_options));
  trainer.set_objective(run.objective.get(), run.adapter.get());
  if (run.adapter) {
    trainer.on_checkpoint = [&](const std::string& dir) {
      run.adapter->save((fs::path(dir) / "adapter").string(), run.lm.path);
    };
  }
  spdlog::info("training: {} optimizer steps ({} optimizer: {} tensors), output {}", trainer.total_steps(),
               spec.optimizer.plugin, run.trainable.size(), spec.paths.output_dir);
  Stage stage("training");
  return trainer.train();
}

// 6. Save: the adapter in PEFT format, or the whole model. Returns the folder.
std::string save_trained(const RunSpec& spec, BuiltRun& run) {
  Stage stage("saving the trained weights");
  std::string dir;
  if (run.adapter) {
    dir = spec.paths.adapter;
    OutputGuard out(dir, "peft-adapter", OutputShape::folder);
    run.adapter->save(out.path(), run.lm.path);
    out.commit();
  } else {
    dir = spec.paths.model;
    save_hf_checkpoint(run.model(), run.lm.path, dir);
  }
  spdlog::info("saved {}", dir);
  return dir;
}

// summary.json's figures of the training itself.
nlohmann::json training_summary(const RunSpec& spec, const RunSession& session, const BuiltRun& run,
                                const TrainResult& result, const std::string& saved, const nlohmann::json& placement) {
  int64_t trainable = 0;
  for (auto& [k, t] : run.trainable) trainable += t.numel();
  nlohmann::json summary = {{"steps", result.steps},
                            {"train_tokens", result.train_tokens},
                            {"seconds", result.seconds},
                            {"tokens_per_s", result.tokens_per_s},
                            {"final_loss", result.final_loss},
                            {"skipped_nonfinite_steps", result.skipped_nonfinite},
                            {"trainable_parameters", trainable},
                            {"total_parameters", run.total_parameters},
                            {"output_dir", spec.paths.output_dir},
                            {"saved", saved},
                            {"metrics", spec.paths.metrics}};
  if (result.eval_loss) summary["eval_loss"] = *result.eval_loss;
  if (result.best_eval_loss) summary["best_eval_loss"] = *result.best_eval_loss;
  summary["device"] = session.device.str();
  summary["placement"] = placement;
  summary["objective"] = spec.objective.plugin;
  for (const auto& [name, value] : result.eval_metrics) summary["eval_" + name] = value;
  for (const auto& [name, value] : result.eval_metrics_before) summary["eval_" + name + "_before"] = value;
  return summary;
}

// 7. Greedy exact match on the eval examples, before training (nullopt when
// [validate] exact_match is 0, there is no eval split, or the data is pairs).
std::optional<ExactMatch> exact_match_before(const RunSpec& spec, const RunSession& session, BuiltRun& run) {
  const auto& eval = run.rows.data.eval;
  if (spec.validate.exact_match <= 0 || eval.empty() || !session.dist->is_main() || run.preference_pairs) return {};
  ExactMatch em = exact_match(run.model(), *run.tokenizer, eval, spec.validate.exact_match);
  spdlog::info("exact match before training: {}/{} = {:.1f}%", em.correct, em.total, 100 * em.fraction());
  return em;
}

void exact_match_after(const RunSpec& spec, BuiltRun& run, const ExactMatch& before, nlohmann::json& summary) {
  auto after = exact_match(run.model(), *run.tokenizer, run.rows.data.eval, spec.validate.exact_match);
  spdlog::info("exact match after training: {}/{} = {:.1f}% (before: {:.1f}%)", after.correct, after.total,
               100 * after.fraction(), 100 * before.fraction());
  for (const auto& s : after.samples) spdlog::info("  sample: {}", s);
  summary["exact_match_before"] = before.fraction();
  summary["exact_match_after"] = after.fraction();
  summary["exact_match_samples"] = after.total;
}

// 8. The merge and each [[export]], every artefact read back and compared
// with the trained model by the parity gate. Returns the merged folder ("" when none).
std::string merge_and_export(const RunSpec& spec, Registry& registry, BuiltRun& run, const std::string& saved,
                             RunParityGate& parity, nlohmann::json& summary) {
  Model& model = run.model();
  std::string merged_dir = run.adapter ? "" : saved;
  if (!run.adapter) parity.check_checkpoint("saved model", saved);
  if (run.adapter && spec.wants_merge()) {
    if (run.lm.quantizer)
      spdlog::info("merge: the base is quantised; the adapter is merged onto the dequantised base weights "
                   "(written in {}), so the merged model carries the base's quantisation error",
                   c10::toString(model.shape().checkpoint_dtype));
    Stage stage("merging the adapter into the model");
    run.adapter->merge(model);
    merged_dir = spec.paths.merged;
    save_hf_checkpoint(model, run.lm.path, merged_dir);
    spdlog::info("merged checkpoint: {}", merged_dir);
    summary["merged"] = merged_dir;
    parity.check_checkpoint("merge", merged_dir);
  }
  for (const auto& ex : spec.recipe->exports()) {
    auto exporter = registry.create<Exporter>(Kind::exporter, ex.plugin, ex.config);
    ExportJob job;
    job.model_dir = merged_dir;
    job.out = spec.paths.export_target(ex.config.get_string("out"));
    job.model = &model;
    if (run.adapter) {  // the adapter as saved, unmerged, for exporters of the adapter itself (gguf_lora)
      job.base_model_dir = run.lm.path;
      job.adapter_dir = saved;
    }
    // Calibration documents for exporters that run the model (awq): the
    // training documents' token ids; exporters that need none ignore them.
    for (const auto& doc : run.rows.data.train) job.calibration_rows.push_back(doc.ids);
    Stage stage(fmt::format("exporting with the {} plugin to {}", ex.plugin, job.out));
    auto report = exporter->run(job);
    spdlog::info("export [{}] {}: {} ({} bytes) {}", ex.table, ex.plugin, report.path, report.bytes, report.summary);
    for (const auto& beside : report.also_written) spdlog::info("export [{}] {}: also wrote {}", ex.table, ex.plugin, beside);
    summary["exports"].push_back({{"plugin", ex.plugin}, {"path", report.path}, {"bytes", report.bytes}});
    if (!report.also_written.empty()) summary["exports"].back()["also_written"] = report.also_written;
    parity.check_export(ex, *exporter, job, report);
  }
  if (parity.enabled()) summary["export_parity"] = parity_json(parity.checks());
  return merged_dir;
}

// 9. The [validate] prompts, answered by the trained model.
std::vector<ReportAnswer> answer_prompts(const RunSpec& spec, BuiltRun& run) {
  std::vector<ReportAnswer> answers;
  const Tokenizer& tokenizer = *run.tokenizer;
  for (const auto& prompt : spec.validate.prompts) {
    Stage stage(fmt::format("answering the [validate] prompt \"{}\"", prompt));
    auto enc = encode_chat(tokenizer, resolve_chat_format(spec.chat_template, tokenizer), {{"user", prompt}}, false,
                           true);
    GenerateOptions go;
    go.max_new_tokens = spec.validate.max_new_tokens;
    go.temperature = spec.validate.temperature;
    go.eos_id = tokenizer.eos_id();
    auto gen = generate(run.model(), enc.ids, go);
    answers.push_back({prompt, token_text(tokenizer, gen.tokens)});
    spdlog::info("prompt: {}\n  answer: {}\n  ({:.0f} ms to first token, {:.1f} tokens/s)", prompt,
                 token_text(tokenizer, gen.tokens), 1000 * gen.seconds_to_first_token, gen.tokens_per_second);
  }
  return answers;
}

// 10. What a person reads at the end: loss_curve.svg and report.html, drawn
// from the series the trainer handed back, and summary.json. Returns the
// report's path.
std::string write_run_report(const RunSpec& spec, const Plan* plan, const TrainResult& result,
                             nlohmann::json& summary, const std::vector<ReportAnswer>& answers) {
  MetricPoints metrics = result.metrics;
  const std::vector<CurveSeries> curves = {{"train loss", "#1f77b4", metrics["loss"], false},
                                           {"eval loss", "#d62728", metrics["eval_loss"], false},
                                           {"learning rate", "#2ca02c", metrics["lr"], true}};
  write_curves_svg(spec.paths.loss_curve, "mftk: loss and learning rate", curves);
  summary["peak_rss_bytes"] = peak_rss_bytes();
  summary["loss_curve"] = spec.paths.loss_curve;
  write_file_atomic(spec.paths.summary, summary.dump(2) + "\n");
  const std::string& recipe = spec.recipe->path();
  ReportInputs report{fmt::format("mftk run: {}", fs::path(recipe).filename().string()), recipe, read_file(recipe),
                      plan, summary, answers};
  const std::string path = write_report(spec.paths.output_dir, report, result.metrics);
  spdlog::info("report: {}", path);
  return path;
}

}  // namespace

int run_pipeline(const Recipe& recipe, Registry& registry, const Plan* plan) {
  const RunSpec spec = make_run_spec(recipe, registry);
  const RunSession session = open_run(spec);
  // 1-4. Model (quantised while it streams in), adapter or full fine-tuning,
  // objective, data (tokenized, cached) packed into rows, optimizer.
  BuiltRun run = build_run(spec, registry, {session.device});
  const nlohmann::json placement = observed_placement(run.model(), run.trainable, *run.optimizer);
  spdlog::info("placement: {} (device {})", placement.dump(), session.device.str());
  const std::optional<ExactMatch> em_before = exact_match_before(spec, session, run);

  const TrainResult result = train_model(spec, registry, session, run);
  if (result.interrupted) {
    if (session.dist->is_main())
      spdlog::warn("interrupted: checkpoint {} written; continue with --set training.resume_from_checkpoint=latest",
                   result.last_checkpoint);
    return 130;
  }
  if (!session.dist->is_main()) {
    spdlog::debug("rank {}: training done; rank 0 saves, merges and exports", session.dist->rank());
    return 0;
  }

  const std::string saved = save_trained(spec, run);
  nlohmann::json summary = training_summary(spec, session, run, result, saved, placement);
  if (em_before) exact_match_after(spec, run, *em_before, summary);
  // The export parity gate: the trained model's log-probabilities on
  // held-out rows, taken now, before the merge changes the model.
  run.model().set_training(false);  // dropout off, in the adapter's ops too
  RunParityGate parity(recipe, registry, run.model(), run.rows.data.eval, run.rows.data.train,
                       (run.adapter && spec.wants_merge()) || !recipe.exports().empty());
  merge_and_export(spec, registry, run, saved, parity, summary);
  const std::vector<ReportAnswer> answers = answer_prompts(spec, run);
  const std::string report_path = write_run_report(spec, plan, result, summary, answers);
  // After the report, so the figures of a failed gate are there to read.
  enforce_parity(parity.checks(), report_path);
  spdlog::info("done: {} steps in {:.1f} s, {:.0f} tokens/s, final loss {:.4f}{}, peak RSS {:.2f} GB", result.steps,
               result.seconds, result.tokens_per_s, result.final_loss,
               result.eval_loss ? fmt::format(", eval loss {:.4f}", *result.eval_loss) : "",
               double(peak_rss_bytes()) / 1e9);
  spdlog::info("wrote {}, {}, {}", spec.paths.summary, spec.paths.loss_curve, spec.paths.metrics);
  return 0;
}

}  // namespace mftk::core
