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
#include "run_log.h"
#include "stage.h"
#include "trainer.h"

namespace mftk::core {

namespace fs = std::filesystem;

namespace {

// A component the recipe names, or `fallback` with its defaults.
template <class Interface>
std::unique_ptr<Interface> make_component(const Recipe& recipe, Registry& registry, const std::string& table, Kind kind,
                                          const std::string& fallback, std::string* used = nullptr) {
  if (const auto* ref = recipe.component(table)) {
    if (used) *used = ref->plugin;
    return registry.create<Interface>(kind, ref->plugin, ref->config);
  }
  if (fallback.empty()) return nullptr;
  const auto& info = registry.find(kind, fallback);
  Recipe::RawTable empty;
  empty.name = table;
  empty.where = SourceLocation{recipe.path(), 0, 0};
  std::vector<std::string> errors;
  Config defaults = validate_table(empty, info.spec.keys, errors);
  if (!errors.empty()) throw UsageError(fmt::format("{}", fmt::join(errors, "\n")));
  if (used) *used = fallback;
  return registry.create<Interface>(kind, fallback, defaults);
}

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

int64_t count_parameters(Model& model) {
  int64_t n = 0;
  for (auto* s : model.linear_slots()) n += s->in_features * s->out_features;
  for (auto& [name, t] : model.named_parameters()) n += t.numel();
  if (model.shape().tie_word_embeddings) n -= model.shape().vocab_size * model.shape().hidden_size;
  return n;
}

void setup_log_file(const std::string& output_dir) {
  auto sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>((fs::path(output_dir) / "mftk.log").string());
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

// Full fine-tuning: every weight becomes a writable fp32 leaf (the loaded
// ones may be read-only views of the mapped checkpoint). A tied head keeps
// its tensor, which is made trainable once with the embeddings: both uses add
// their gradients into one leaf, and the model saved (which writes the
// embeddings only) is the model trained. A private copy for the head would
// train apart and then be dropped at save.
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

LoadedModel load_model(const Recipe& recipe, Registry& registry, bool bf16, c10::Device device) {
  // A GPU multiplies bf16 natively (DenseLinear takes that path off the CPU).
  if (bf16 && device.is_cpu() && !cpu_has_native_bf16())
    spdlog::warn("training.bf16: this CPU has no native bf16 matmul (avx512_bf16), so bf16 compute runs about "
                 "25x slower than fp32 here; set training.bf16 = false (bf16 weights are still kept in bf16 and "
                 "widened per matmul)");
  const auto* ref = recipe.component("model");
  if (!ref)
    throw UsageError(fmt::format("{}: the recipe has no [model] table", recipe.path()),
                     fmt::format("add [model] with plugin = \"{}\" and path = \"<checkpoint folder>\"",
                                 kDefaultModelPlugin));
  LoadedModel lm;
  lm.path = ref->config.get_string("path");
  const auto* quantize = recipe.component("quantize");
  lm.quantizer = quantizer_for_checkpoint(registry, lm.path,
                                          make_component<Quantizer>(recipe, registry, "quantize", Kind::quantizer, ""),
                                          quantize ? quantize->plugin : "");
  lm.model = registry.create<Model>(Kind::model, ref->plugin, ref->config);
  LoadOptions lo;
  lo.path = lm.path;
  lo.compute_dtype = bf16 ? at::kBFloat16 : at::kFloat;
  if (bf16) lo.weight_dtype = at::kBFloat16;
  lo.quantizer = lm.quantizer.get();
  lo.device = device;
  lm.model->load_config(lm.path);
  lm.model->load(lo);
  return lm;
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

int run_pipeline(const Recipe& recipe, Registry& registry, const Plan* plan) {
  const auto& training = recipe.section("training");
  const auto& validate = recipe.section("validate");
  if (int64_t t = training.get_int("threads"); t > 0) at::set_num_threads(int(t));
  const std::string output_dir = training.get_string("output_dir");
  // Where the run computes, settled before anything is loaded or written: a
  // recipe asking for a GPU this machine or libtorch cannot give stops here
  // (exit 2). Under mftk launch / torchrun each rank takes cuda:LOCAL_RANK.
  const DistributedEnv dist_env = DistributedEnv::from_env();
  const auto device_setting = parse_device_setting(training.get_string("device"));
  if (!device_setting) training.fail("device", "not one of auto, cpu, cuda, cuda:N");
  const c10::Device device =
      resolve_device(*device_setting, cuda_support(), dist_env.world_size, dist_env.local_rank);
  // Data parallelism when started by mftk launch or torchrun (WORLD_SIZE > 1):
  // every rank loads, packs and trains; rank 0 alone writes into output_dir.
  // NCCL when the ranks compute on GPUs, Gloo on the CPU.
  auto dist = Distributed::from_env(std::chrono::milliseconds(
      int64_t(std::llround(1000 * training.get_number("distributed_timeout_s")))), device.is_cuda());
  if (dist->world_size() > 1) {
    spdlog::set_pattern(fmt::format("[%H:%M:%S] [rank {}] %^%l%$ %v", dist->rank()));
    // The other ranks repeat rank 0's story; they only speak up with warnings and errors.
    if (!dist->is_main() && spdlog::get_level() == spdlog::level::info) spdlog::set_level(spdlog::level::warn);
  }
  if (dist->is_main()) {
    // A new or empty folder, or one an earlier run wrote (re-runs, resume);
    // never a folder of the user's, which a run would fill and rotate in.
    claim_work_folder(output_dir, kRunOutputKind);
    setup_log_file(output_dir);
    // Every key with its default, for `mftk compare` to tell runs apart by.
    write_resolved_recipe(output_dir, recipe);
  }
  at::manual_seed(uint64_t(training.get_int("seed")));
  const bool bf16 = training.get_bool("bf16");

  // 1. Model (quantised while it streams in, when the recipe says so).
  auto lm = [&] {
    Stage stage("loading the model");
    return load_model(recipe, registry, bf16, device);
  }();
  Model& model = *lm.model;
  model.set_gradient_checkpointing(training.get_bool("gradient_checkpointing"));
  const int64_t total_params = count_parameters(model);
  spdlog::info("model: {} ({} layers, hidden {}, {} parameters) on {}", lm.path, model.shape().num_layers,
               model.shape().hidden_size, total_params, device.str());

  // 2. Adapter, or full fine-tuning.
  std::string adapter_name;
  auto adapter = make_component<Adapter>(recipe, registry, "adapter", Kind::adapter, "", &adapter_name);
  NamedTensors trainable;
  if (adapter) {
    // An adapter table's `path` (when its plugin declares one) names a saved
    // adapter to continue from, e.g. an SFT adapter under a DPO run.
    const Config& adapter_config = recipe.component("adapter")->config;
    const std::string start = adapter_config.has("path") ? adapter_config.get_string("path") : "";
    if (start.empty()) {
      adapter->inject(model);
    } else {
      adapter->load(recipe.resolve_path(start), model);
      spdlog::info("adapter: continuing from {}", recipe.resolve_path(start));
    }
    trainable = adapter->trainable_parameters();
  } else {
    trainable = make_all_trainable(model);
    spdlog::info("no [adapter]: full fine-tuning of all {} parameters", total_params);
  }

  // 3. The objective, and its data: tokenized (cached), then packed into
  // rows (preference pairs by the core, one pair per row).
  std::string objective_name;
  auto objective = make_component<Objective>(recipe, registry, "objective", Kind::objective, kDefaultObjectivePlugin,
                                             &objective_name);
  const bool pairs = objective->data() == ObjectiveData::preference_pairs;
  check_objective_data(objective_name, pairs, is_preference_data(data_options_from_recipe(recipe)));
  auto tokenizer = Tokenizer::load(lm.path);
  auto data = prepare_data(recipe, *tokenizer);
  for (const auto& line : describe_data(data)) spdlog::info("data: {}", line);
  PackOptions po = pack_options_from_recipe(recipe);
  po.sliding_window = model.shape().sliding_window;
  PackStats train_stats, eval_stats;
  std::vector<PackedRow> train_rows, eval_rows;
  std::string packer_name;  // none for preference pairs (the core packs them)
  if (pairs) {
    train_rows = pack_preference_pairs(data.train, po, train_stats);
    eval_rows = pack_preference_pairs(data.eval, po, eval_stats);
    spdlog::info("pairs: {} train rows, {} eval rows (one pair each); {} train and {} eval pairs longer than "
                 "sequence_len {} dropped",
                 train_rows.size(), eval_rows.size(), train_stats.dropped, eval_stats.dropped, po.sequence_len);
  } else {
    auto packer = make_component<Packer>(recipe, registry, "packer", Kind::packer,
                                         default_packer(training.get_bool("sample_packing")), &packer_name);
    train_rows = packer->pack(data.train, po, train_stats);
    eval_rows = packer->pack(data.eval, po, eval_stats);
    for (const auto& line : describe_packing(data.train, train_rows, train_stats, po.sequence_len)) spdlog::info("packing ({}): {}", packer_name, line);
  }

  // 4. Optimizer.
  std::string optimizer_name;
  auto optimizer = make_component<Optimizer>(recipe, registry, "optimizer", Kind::optimizer, kDefaultOptimizerPlugin,
                                             &optimizer_name);
  optimizer->attach(trainable);
  const nlohmann::json placement = observed_placement(model, trainable, *optimizer);
  spdlog::info("placement: {} (device {})", placement.dump(), device.str());

  const int64_t em_limit = validate.get_int("exact_match");
  std::optional<ExactMatch> em_before;
  if (em_limit > 0 && !data.eval.empty() && dist->is_main() && !pairs) {
    em_before = exact_match(model, *tokenizer, data.eval, em_limit);
    spdlog::info("exact match before training: {}/{} = {:.1f}%", em_before->correct, em_before->total,
                 100 * em_before->fraction());
  }

  // 5. Train.
  TrainOptions train_options = TrainOptions::from_recipe(recipe);
  train_options.distributed = dist;
  {
    // run.json in every checkpoint: the resolved recipe (as recipe.resolved.json
    // has it), the code of each component and the mftk version, for resume to compare.
    nlohmann::json record = resolved_recipe_json(recipe);
    record["mftk_version"] = MFTK_SDK_VERSION;
    nlohmann::json& components = record["components"] = nlohmann::json::array();
    components.push_back(component_record(registry, Kind::model, "model", recipe.component("model")->plugin));
    if (const auto* q = recipe.component("quantize")) components.push_back(component_record(registry, Kind::quantizer, "quantize", q->plugin));
    if (adapter) components.push_back(component_record(registry, Kind::adapter, "adapter", adapter_name));
    components.push_back(component_record(registry, Kind::objective, "objective", objective_name));
    if (!packer_name.empty()) components.push_back(component_record(registry, Kind::packer, "packer", packer_name));
    components.push_back(component_record(registry, Kind::optimizer, "optimizer", optimizer_name));
    train_options.run_record = record.dump(2) + "\n";
    // A recorded reference (full fine-tuning DPO) is cached beside the prepared data.
    train_options.objective_cache = objective_cache_file(objective_cache_inputs(
        recipe, data.cache_file, component_record(registry, Kind::objective, "objective", objective_name).dump(),
        device.str()));
  }
  Trainer trainer(model, *optimizer, trainable, std::move(train_rows), std::move(eval_rows), std::move(train_options));
  trainer.set_objective(objective.get(), adapter.get());
  if (adapter) {
    trainer.on_checkpoint = [&](const std::string& dir) {
      adapter->save((fs::path(dir) / "adapter").string(), lm.path);
    };
  }
  spdlog::info("training: {} optimizer steps ({} optimizer: {} tensors), output {}", trainer.total_steps(),
               optimizer_name, trainable.size(), output_dir);
  auto result = [&] {
    Stage stage("training");
    return trainer.train();
  }();
  if (result.interrupted) {
    if (dist->is_main()) spdlog::warn("interrupted: checkpoint {} written; continue with --set training.resume_from_checkpoint=latest",
                 result.last_checkpoint);
    return 130;
  }
  if (!dist->is_main()) {
    spdlog::debug("rank {}: training done; rank 0 saves, merges and exports", dist->rank());
    return 0;
  }

  // 6. Save: the adapter in PEFT format, or the whole model.
  std::string final_dir;
  {
    Stage stage("saving the trained weights");
    if (adapter) {
      final_dir = (fs::path(output_dir) / "adapter").string();
      OutputGuard out(final_dir, "peft-adapter", OutputShape::folder);
      adapter->save(out.path(), lm.path);
      out.commit();
    } else {
      final_dir = (fs::path(output_dir) / "model").string();
      save_hf_checkpoint(model, lm.path, final_dir);
    }
  }
  spdlog::info("saved {}", final_dir);

  // 7. Scores after training, merge, exports, prompts.
  nlohmann::json summary = {{"steps", result.steps},
                            {"train_tokens", result.train_tokens},
                            {"seconds", result.seconds},
                            {"tokens_per_s", result.tokens_per_s},
                            {"final_loss", result.final_loss},
                            {"skipped_nonfinite_steps", result.skipped_nonfinite},
                            {"trainable_parameters", [&] {
                               int64_t n = 0;
                               for (auto& [k, t] : trainable) n += t.numel();
                               return n;
                             }()},
                            {"total_parameters", total_params},
                            {"output_dir", output_dir},
                            {"saved", final_dir},
                            {"metrics", (fs::path(output_dir) / "metrics.jsonl").string()}};
  if (result.eval_loss) summary["eval_loss"] = *result.eval_loss;
  if (result.best_eval_loss) summary["best_eval_loss"] = *result.best_eval_loss;
  summary["device"] = device.str();
  summary["placement"] = placement;
  summary["objective"] = objective_name;
  for (const auto& [name, value] : result.eval_metrics) summary["eval_" + name] = value;
  for (const auto& [name, value] : result.eval_metrics_before) summary["eval_" + name + "_before"] = value;
  if (em_before) {
    auto em_after = exact_match(model, *tokenizer, data.eval, em_limit);
    spdlog::info("exact match after training: {}/{} = {:.1f}% (before: {:.1f}%)", em_after.correct, em_after.total,
                 100 * em_after.fraction(), 100 * em_before->fraction());
    for (const auto& s : em_after.samples) spdlog::info("  sample: {}", s);
    summary["exact_match_before"] = em_before->fraction();
    summary["exact_match_after"] = em_after.fraction();
    summary["exact_match_samples"] = em_after.total;
  }
  const bool want_merge = training.get_bool("merge_adapter") || !recipe.exports().empty();
  std::string merged_dir = adapter ? "" : final_dir;
  // The export parity gate: the trained model's log-probabilities on
  // held-out rows, taken now, before the merge changes the model.
  model.set_training(false);  // dropout off, in the adapter's ops too
  RunParityGate parity(recipe, registry, model, data.eval, data.train,
                       (adapter && want_merge) || !recipe.exports().empty());
  if (!adapter) parity.check_checkpoint("saved model", final_dir);
  if (adapter && want_merge) {
    if (lm.quantizer)
      spdlog::info("merge: the base is quantised; the adapter is merged onto the dequantised base weights "
                   "(written in {}), so the merged model carries the base's quantisation error",
                   c10::toString(model.shape().checkpoint_dtype));
    Stage stage("merging the adapter into the model");
    adapter->merge(model);
    merged_dir = (fs::path(output_dir) / "merged").string();
    save_hf_checkpoint(model, lm.path, merged_dir);
    spdlog::info("merged checkpoint: {}", merged_dir);
    summary["merged"] = merged_dir;
    parity.check_checkpoint("merge", merged_dir);
  }
  for (const auto& ex : recipe.exports()) {
    auto exporter = registry.create<Exporter>(Kind::exporter, ex.plugin, ex.config);
    ExportJob job;
    job.model_dir = merged_dir;
    // A relative `out` lives in output_dir, with everything else the run
    // writes, not wherever the command happened to be started.
    const fs::path out = ex.config.get_string("out");
    job.out = out.is_absolute() ? out.string() : (fs::path(output_dir) / out).string();
    job.model = &model;
    if (adapter) {  // the adapter as saved, unmerged, for exporters of the adapter itself (gguf_lora)
      job.base_model_dir = lm.path;
      job.adapter_dir = final_dir;
    }
    // Calibration documents for exporters that run the model (awq): the
    // training documents' token ids; exporters that need none ignore them.
    for (const auto& ex : data.train) job.calibration_rows.push_back(ex.ids);
    Stage stage(fmt::format("exporting with the {} plugin to {}", ex.plugin, job.out));
    auto report = exporter->run(job);
    spdlog::info("export [{}] {}: {} ({} bytes) {}", ex.table, ex.plugin, report.path, report.bytes, report.summary);
    for (const auto& beside : report.also_written) spdlog::info("export [{}] {}: also wrote {}", ex.table, ex.plugin, beside);
    summary["exports"].push_back({{"plugin", ex.plugin}, {"path", report.path}, {"bytes", report.bytes}});
    if (!report.also_written.empty()) summary["exports"].back()["also_written"] = report.also_written;
    parity.check_export(ex, *exporter, job, report);
  }
  if (parity.enabled()) summary["export_parity"] = parity_json(parity.checks());
  const auto prompts = validate.get_strings("prompts");
  std::vector<ReportAnswer> answers;  // for report.html
  for (const auto& prompt : prompts) {
    Stage stage(fmt::format("answering the [validate] prompt \"{}\"", prompt));
    auto enc = encode_chat(*tokenizer, resolve_chat_format(recipe.section("data").get_string("chat_template"), *tokenizer),
                           {{"user", prompt}}, false, true);
    GenerateOptions go;
    go.max_new_tokens = validate.get_int("max_new_tokens");
    go.temperature = validate.get_number("temperature");
    go.eos_id = tokenizer->eos_id();
    auto gen = generate(model, enc.ids, go);
    answers.push_back({prompt, token_text(*tokenizer, gen.tokens)});
    spdlog::info("prompt: {}\n  answer: {}\n  ({:.0f} ms to first token, {:.1f} tokens/s)", prompt,
                 token_text(*tokenizer, gen.tokens), 1000 * gen.seconds_to_first_token, gen.tokens_per_second);
  }

  // 8. What a person reads at the end.
  MetricPoints metrics = read_metrics((fs::path(output_dir) / "metrics.jsonl").string());
  const std::vector<CurveSeries> curves = {{"train loss", "#1f77b4", metrics["loss"], false},
                                           {"eval loss", "#d62728", metrics["eval_loss"], false},
                                           {"learning rate", "#2ca02c", metrics["lr"], true}};
  const auto svg = (fs::path(output_dir) / "loss_curve.svg").string();
  write_curves_svg(svg, "mftk: loss and learning rate", curves);
  summary["peak_rss_bytes"] = peak_rss_bytes();
  summary["loss_curve"] = svg;
  write_file_atomic((fs::path(output_dir) / "summary.json").string(), summary.dump(2) + "\n");
  std::string report_path;
  {
    ReportInputs report{fmt::format("mftk run: {}", fs::path(recipe.path()).filename().string()), recipe.path(),
                        read_file(recipe.path()), plan, summary, answers};
    report_path = write_report(output_dir, report);
    spdlog::info("report: {}", report_path);
  }
  // After the report, so the figures of a failed gate are there to read.
  enforce_parity(parity.checks(), report_path);
  spdlog::info("done: {} steps in {:.1f} s, {:.0f} tokens/s, final loss {:.4f}{}, peak RSS {:.2f} GB", result.steps,
               result.seconds, result.tokens_per_s, result.final_loss,
               result.eval_loss ? fmt::format(", eval loss {:.4f}", *result.eval_loss) : "",
               double(peak_rss_bytes()) / 1e9);
  spdlog::info("wrote {}, {}, {}", (fs::path(output_dir) / "summary.json").string(), svg,
               (fs::path(output_dir) / "metrics.jsonl").string());
  return 0;
}

}  // namespace mftk::core
