// The pre-flight estimate (plan.h). The memory model counts what the code
// keeps alive at the peak of a step, part by part; docs/plan.md derives each
// term and compares the totals with measured peaks.
#include "plan.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "batching.h"
#include "dataset.h"
#include "device.h"
#include "mftk/adapter.h"
#include "mftk/error.h"
#include "mftk/model.h"
#include "mftk/objective.h"
#include "mftk/optimizer.h"
#include "mftk/packer.h"
#include "mftk/quantizer.h"
#include "mftk/tokenizer.h"
#include "model_tools.h"
#include "pipeline.h"
#include "preference_rows.h"
#include "recipe.h"
#include "registry.h"
#include "run_log.h"
#include "trainer.h"

namespace mftk::core {

namespace fs = std::filesystem;

namespace {

// ---------------------------------------------------------------------------
// Constants of the code being modelled (each names where it comes from).

constexpr int64_t kLossChunk = 1024;               // core/train/trainer.cpp kLossChunkTokens
constexpr int64_t kWidenChunkBytes = 64ll << 20;   // core/train/linear_slot.cpp widen_chunk_rows
constexpr int64_t kCudaContextBytes = 600ll << 20; // CUDA context + cuBLAS workspace of a libtorch process

// VmRSS of this process now.
int64_t resident_bytes() {
  long pages_total = 0, pages_resident = 0;
  if (FILE* f = std::fopen("/proc/self/statm", "r")) {
    if (std::fscanf(f, "%ld %ld", &pages_total, &pages_resident) != 2) pages_resident = 0;
    std::fclose(f);
  }
  return int64_t(pages_resident) * int64_t(sysconf(_SC_PAGESIZE));
}

int64_t physical_memory_bytes() { return int64_t(sysconf(_SC_PHYS_PAGES)) * int64_t(sysconf(_SC_PAGESIZE)); }

int64_t elements(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// The model's tensor table as the estimate reads it: linear slots ([out, in]
// weights, the head among them unless tied), the embedding, the rest.
struct TensorTable {
  struct Slot {
    std::string name;  // the slot: the tensor's name less ".weight"
    int64_t out = 0, in = 0, layer = -1;
    int64_t elements() const { return out * in; }
  };
  std::vector<Slot> slots;
  const ModelTensor* embedding = nullptr;
  int64_t other_elements = 0;  // norms and whatever else is neither
  int64_t largest = 0;         // elements of the largest tensor

  explicit TensorTable(const ModelArchitecture& a) {
    for (const auto& t : a.tensors) {
      const int64_t n = elements(t.shape);
      largest = std::max(largest, n);
      if (t.name == a.embedding) {
        embedding = &t;
      } else if (t.in_slot && t.shape.size() == 2) {
        const auto dot = t.name.rfind('.');
        slots.push_back({dot == std::string::npos ? t.name : t.name.substr(0, dot), t.shape[0], t.shape[1], t.layer});
      } else {
        other_elements += n;
      }
    }
  }
  int64_t embedding_rows() const { return embedding && !embedding->shape.empty() ? embedding->shape[0] : 0; }
  int64_t embedding_row_elements() const {
    return embedding && embedding->shape.size() == 2 ? embedding->shape[1] : 0;
  }
};

std::string gb(int64_t bytes) { return fmt::format("{:.2f} GB", double(bytes) / 1e9); }

}  // namespace

std::string format_bytes(int64_t bytes) {
  if (std::llabs(bytes) >= 1'000'000'000) return gb(bytes);
  return fmt::format("{:.1f} MB", double(bytes) / 1e6);
}

int64_t ModelFacts::parameters() const {
  int64_t n = 0;
  for (const auto& t : architecture.tensors) n += elements(t.shape);
  return n;
}

ModelFacts describe_model(std::shared_ptr<const Model> model, const std::string& path) {
  ModelFacts f;
  f.path = path;
  const ModelShape& s = model->shape();
  f.vocab_size = s.vocab_size;
  f.hidden_size = s.hidden_size;
  f.intermediate_size = s.intermediate_size;
  f.num_layers = s.num_layers;
  f.num_heads = s.num_heads;
  f.num_kv_heads = s.num_kv_heads;
  f.head_dim = s.head_dim;
  f.sliding_window = s.sliding_window;
  f.tie_word_embeddings = s.tie_word_embeddings;
  f.architecture = model->architecture();
  f.activations = [model](const ActivationQuery& q) { return model->plan_activations(q); };
  return f;
}

ModelFacts read_model_facts(const Recipe& recipe, Registry& registry) {
  const auto* ref = recipe.component("model");
  if (!ref)
    throw UsageError(fmt::format("{}: the recipe has no [model] table", recipe.path()),
                     fmt::format("add [model] with plugin = \"{}\" and path = \"<checkpoint folder>\"",
                                 kDefaultModelPlugin));
  const std::string path = ref->config.get_string("path");
  const auto config_path = fs::path(path) / "config.json";
  if (!fs::exists(config_path))
    throw UsageError(fmt::format("{}: [model] path: no config.json in '{}'", recipe.path(), path),
                     "point model.path at a Hugging Face checkpoint folder (mftk plan reads only its config.json), "
                     "or make a random one with `mftk init --preset ...`");
  std::shared_ptr<Model> model = registry.create<Model>(Kind::model, ref->plugin, ref->config);
  model->load_config(path);
  ModelFacts f = describe_model(model, path);
  // load_config leaves checkpoint_dtype to load(); config.json says it.
  std::ifstream in(config_path);
  const auto j = nlohmann::json::parse(in, nullptr, false);
  if (!j.is_discarded()) {
    const std::string dtype = j.value("torch_dtype", std::string("bfloat16"));
    f.checkpoint_dtype = dtype;
    f.checkpoint_dtype_bytes = dtype == "float32" ? 4 : 2;
    f.stored_quantized = j.contains("quantization_config");
  }
  return f;
}

TrainingFacts training_facts(const Recipe& recipe) {
  const auto& t = recipe.section("training");
  TrainingFacts f;
  f.sequence_len = t.get_int("sequence_len");
  f.micro_batch_size = t.get_int("micro_batch_size");
  f.gradient_accumulation_steps = t.get_int("gradient_accumulation_steps");
  f.num_epochs = t.get_number("num_epochs");
  f.max_steps = t.get_int("max_steps");
  f.bf16 = t.get_bool("bf16");
  f.gradient_checkpointing = t.get_bool("gradient_checkpointing");
  // Component keys are the plugins' own: what a component will hold comes
  // from its planning hook (ask_planning_hooks), never from its keys here.
  if (const auto* q = recipe.component("quantize")) f.quantizer = q->plugin;
  if (const auto* a = recipe.component("adapter")) f.adapter = a->plugin;
  if (const auto* o = recipe.component("optimizer")) f.optimizer = o->plugin;
  if (const auto* p = recipe.component("packer")) f.packer = p->plugin;
  else f.packer = default_packer(t.get_bool("sample_packing"));
  if (const auto* o = recipe.component("objective")) f.objective = o->plugin;
  return f;
}

namespace {

// The recipe's table for `kind` when it names `plugin`, else the plugin's defaults.
Config planning_config(const Recipe* recipe, Registry& registry, Kind kind, const std::string& plugin,
                       const std::string& table) {
  const auto* ref = recipe ? recipe->component(table) : nullptr;
  return ref && ref->plugin == plugin ? ref->config : component_config(registry, kind, plugin, table);
}

}  // namespace

void ask_planning_hooks(TrainingFacts& t, const Recipe* recipe, Registry& registry) {
  std::shared_ptr<const Optimizer> optimizer = registry.create<Optimizer>(
      Kind::optimizer, t.optimizer, planning_config(recipe, registry, Kind::optimizer, t.optimizer, "optimizer"));
  t.optimizer_state = [optimizer](int64_t n) { return optimizer->plan_state(n); };
  const auto probe = optimizer->plan_state(1);
  t.optimizer_state_on_host = probe && probe->on_host;
  const auto objective = registry.create<Objective>(
      Kind::objective, t.objective, planning_config(recipe, registry, Kind::objective, t.objective, "objective"));
  t.objective_note = objective->plan_note(!t.adapter.empty());
  if (!t.adapter.empty()) {
    std::shared_ptr<const Adapter> adapter = registry.create<Adapter>(
        Kind::adapter, t.adapter, planning_config(recipe, registry, Kind::adapter, t.adapter, "adapter"));
    t.adapter_plan = [adapter](const ModelArchitecture& a) { return adapter->plan(a); };
  }
  if (!t.quantizer.empty()) {
    std::shared_ptr<const Quantizer> quantizer = registry.create<Quantizer>(
        Kind::quantizer, t.quantizer, planning_config(recipe, registry, Kind::quantizer, t.quantizer, "quantize"));
    t.quantizer_wants = [quantizer](const std::string& slot) { return quantizer->wants(slot); };
    t.quantized_slot = [quantizer](const std::string& slot, int64_t out, int64_t in) {
      return quantizer->plan_slot(slot, out, in);
    };
  }
}

// ---------------------------------------------------------------------------
// The memory model.

MemoryEstimate estimate_memory(const ModelFacts& m, const TrainingFacts& t, const DataPlan& data, PlanDevice device,
                               int64_t runtime_bytes) {
  MemoryEstimate e;
  const bool cpu = device == PlanDevice::cpu;
  const int64_t H = m.hidden_size, I = m.intermediate_size, V = m.vocab_size, L = m.num_layers;
  const int64_t c = t.bf16 ? 2 : 4;  // compute dtype bytes
  // Frozen weights: [training] bf16 loads them as bf16, else they keep the checkpoint's dtype.
  const int64_t wd = t.bf16 ? 2 : m.checkpoint_dtype_bytes;
  const bool quantized = !t.quantizer.empty() || m.stored_quantized;
  const bool full_ft = t.adapter.empty();
  const TensorTable table(m.architecture);
  const std::string& head = m.architecture.head_slot;
  constexpr const char* kNoFigure = "the plugin gave no figure";

  // The micro-batch at the peak: rows are as long as the longest packed row.
  const int64_t B = t.micro_batch_size;
  const int64_t T = data.available && data.longest_row > 0 ? std::min(t.sequence_len, data.longest_row) : t.sequence_len;
  const int64_t N = B * T;
  e.batch_rows = B, e.batch_tokens = N;
  const double supervised_share = data.available && data.real_tokens > 0
                                      ? double(data.supervised_tokens) / double(data.total_tokens)
                                      : 1.0;
  const int64_t S = std::max<int64_t>(1, int64_t(std::ceil(double(N) * supervised_share)));

  auto add = [&](std::string name, int64_t bytes, std::string detail) {
    e.parts.push_back({std::move(name), bytes, std::move(detail)});
    e.total += bytes;
  };

  // 0. The process itself.
  if (cpu)
    add("runtime", runtime_bytes, "libtorch, plugins, tokenizer: this process's resident set before any weight");
  else
    add("runtime", kCudaContextBytes, "CUDA context and cuBLAS workspace of a libtorch process (typical)");

  // 1. Base weights, tensor by tensor from the model's table.
  const int64_t embed_rows_total = table.embedding_rows();
  const int64_t embed_rows = cpu && data.available && data.distinct_tokens > 0
                                 ? std::min(embed_rows_total, data.distinct_tokens)
                                 : embed_rows_total;
  const int64_t embed_bytes = embed_rows * table.embedding_row_elements() * wd;
  int64_t largest_slot = 0;   // of the slots the quantizer packs (dequantised whole per matmul)
  int64_t widest_weight = table.embedding ? elements(table.embedding->shape) : 0;  // any slot or the embedding
  for (const auto& s : table.slots) widest_weight = std::max(widest_weight, s.elements());
  int64_t base = 0;
  std::string base_detail;
  std::string quantized_kind = "quantised";  // the quantizer's format, less its settings ("NF4")
  if (m.architecture.tensors.empty()) {
    base_detail = "the model plugin describes no tensors (Model::architecture): not counted";
  } else if (full_ft) {
    base = 0;
    base_detail = "full fine-tuning: the weights are the trainable fp32 copies (below)";
  } else if (quantized) {
    // Each slot the quantizer wants is priced by its plan_slot; the head (as
    // a quantizer usually skips it) and skipped slots stay in the load dtype.
    int64_t packed = 0, head_bytes = 0, dense_slots = 0;
    std::string format, head_format = m.checkpoint_dtype;
    bool no_figure = false;
    for (const auto& s : table.slots) {
      const bool wanted = t.quantizer_wants ? t.quantizer_wants(s.name) : s.name != head;
      std::optional<QuantizedSlotPlan> plan;
      if (wanted && t.quantized_slot) plan = t.quantized_slot(s.name, s.out, s.in);
      if (wanted && !plan) no_figure = true;
      if (wanted) largest_slot = std::max(largest_slot, s.elements());
      const int64_t bytes = plan ? plan->bytes : s.elements() * wd;
      if (s.name == head) {
        head_bytes = bytes;
        if (plan) head_format = plan->format.substr(0, plan->format.find(" ("));
      } else if (wanted) {
        packed += bytes;
        if (plan) format = plan->format, quantized_kind = format.substr(0, format.find(" ("));
      } else {
        dense_slots += bytes;
      }
    }
    if (no_figure)
      format = fmt::format("{} ({} (Quantizer::plan_slot): its slots counted unquantised)",
                           t.quantizer.empty() ? std::string("the stored quantizer") : t.quantizer, kNoFigure);
    base = packed + head_bytes + dense_slots + embed_bytes + table.other_elements * wd;
    base_detail = fmt::format("{} {}{} + {} {} {} + embeddings {} ({} of {} rows{})", format, format_bytes(packed),
                              dense_slots ? fmt::format(" + unquantised slots {}", format_bytes(dense_slots)) : "",
                              head, head_format, format_bytes(head_bytes), format_bytes(embed_bytes), embed_rows,
                              embed_rows_total, cpu && embed_rows < embed_rows_total ? ": mapped pages the data touches" : "");
  } else {
    for (const auto& s : table.slots) base += s.elements() * wd;
    base += embed_bytes + table.other_elements * wd;
    // bf16 compute keeps bf16 weights; otherwise they stay as the checkpoint stores them (f16 included).
    const std::string stored = t.bf16 ? "bf16" : m.checkpoint_dtype == "float16" ? "f16" : wd == 2 ? "bf16" : "fp32";
    base_detail = fmt::format("{} params in {}{}", m.parameters(), stored,
                              cpu ? " (memory-mapped; embeddings: the rows the data touches)" : "");
  }
  add("base weights", base, base_detail);

  // 2. Trainable parameters, their gradients, optimizer state.
  int64_t trainable = 0, largest_trainable = 0;
  int64_t adapter_saved_per_token = 0;  // the adapter's own saved activations, per token per layer (elements)
  bool head_trainable = full_ft;
  std::string trainable_detail;
  if (full_ft) {
    trainable = m.parameters();
    largest_trainable = table.largest;
  } else {
    const std::optional<AdapterPlan> plan = t.adapter_plan ? t.adapter_plan(m.architecture) : std::nullopt;
    if (plan) {
      trainable = plan->trainable_parameters;
      largest_trainable = plan->largest_tensor;
      adapter_saved_per_token = plan->saved_per_token;
      head_trainable = plan->trains_head;
      trainable_detail = fmt::format(" ({} {})", t.adapter, plan->detail);
    } else {
      trainable_detail = fmt::format(" ({}: {} (Adapter::plan): its tensors not counted)", t.adapter, kNoFigure);
    }
  }
  e.trainable_parameters = trainable;
  add(full_ft ? "trainable weights" : "adapter", trainable * 4,
      fmt::format("{} trainable parameters in fp32{}", trainable, trainable_detail));
  add("gradients", trainable * 4, "one fp32 gradient per trainable parameter");
  // The optimizer's planning hook; without one, two fp32 moments per parameter.
  std::optional<OptimizerStatePlan> state = t.optimizer_state ? t.optimizer_state(trainable) : std::nullopt;
  if (!state)
    state = OptimizerStatePlan{trainable * 8, fmt::format("{} (plan_state): 2 fp32 moments assumed", kNoFigure), false};
  const int64_t opt = state->bytes;
  const std::string opt_detail = state->detail;
  add("optimizer state", opt, fmt::format("{}: {}", t.optimizer, opt_detail));

  // 3. Activations kept for backward: the model's own count per layer, plus
  // what the adapter's wrapped slots keep per token.
  std::optional<ActivationPlan> act_plan =
      m.activations ? m.activations(ActivationQuery{B, T, c, /*fused_attention=*/!cpu}) : std::nullopt;
  std::string act_note;
  if (!act_plan) {
    // Generic: every linear keeps its input and output per token; attention
    // scores and the model's other intermediates are not counted.
    std::map<int64_t, int64_t> per_layer;
    int64_t widest = H;
    for (const auto& s : table.slots) {
      if (s.layer < 0) continue;
      per_layer[s.layer] += s.in + s.out;
      widest = std::max({widest, s.in, s.out});
    }
    int64_t per_token = 0;
    for (const auto& [layer, n] : per_layer) per_token = std::max(per_token, n);
    act_plan = ActivationPlan{N * per_token * c, N * H * c, 0, 3 * N * widest * c, ""};
    act_note = fmt::format("; {} (Model::plan_activations): each linear's input and output per token, attention "
                           "not counted", kNoFigure);
  }
  const int64_t layer_full = act_plan->layer_bytes + N * adapter_saved_per_token * c;
  const int64_t shared = act_plan->shared_bytes;
  e.activations_without_checkpointing = L * layer_full + shared;
  // Checkpointing keeps only each layer's input and recomputes one layer at
  // a time in backward; the last layer is not checkpointed (its input is
  // part of its activations).
  e.activations_with_checkpointing = (L - 1) * act_plan->layer_input_bytes + layer_full + shared;
  const int64_t act = t.gradient_checkpointing ? e.activations_with_checkpointing : e.activations_without_checkpointing;
  add("activations", act,
      fmt::format("{} x {} tokens, {} layers: {} with gradient checkpointing, {} without (now {}){}", B, T, L,
                  format_bytes(e.activations_with_checkpointing), format_bytes(e.activations_without_checkpointing),
                  t.gradient_checkpointing ? "on" : "off", act_note));

  // 4. Logits and cross-entropy: only supervised tokens, in chunks
  // (core/train/linear_cross_entropy.cpp). Gradients are taken chunk by chunk in
  // the forward pass: a chunk's logits and softmax are live, [S, H] of
  // hidden-state gradient is kept, and a trainable head (full fine-tuning,
  // or as the adapter's plan says) also keeps its weight's gradient, summed
  // over chunks.
  const int64_t chunk = std::min(S, kLossChunk);
  const int64_t logits = 2 * chunk * V * 4 + S * H * c + (head_trainable ? V * H * 4 : 0);
  add("logits / cross-entropy", logits,
      fmt::format("a chunk of {} x vocab {} in flight, its gradients taken at once; {} x hidden kept{}", chunk, V, S,
                  head_trainable ? " and the head's gradient summed over chunks" : ""));

  // 5. What is live only for a moment but sets the peak: a dequantised
  // or widened (bf16 on a CPU without native bf16) weight, and backward's
  // working set of one layer (the model's figure) with the largest
  // trainable tensor's gradient.
  int64_t weight_tmp = 0;
  std::string weight_detail;
  if (!full_ft && quantized) {
    weight_tmp = largest_slot * c;
    weight_detail = fmt::format("the largest {} weight dequantised for its matmul", quantized_kind);
  } else if (!full_ft && cpu && !t.bf16 && wd == 2) {
    weight_tmp = std::min(kWidenChunkBytes, widest_weight * 4);
    weight_detail = "bf16 weight rows widened to fp32 (64 MiB chunks)";
  }
  const int64_t backward_tmp = act_plan->backward_bytes + largest_trainable * 4;
  add("transient", weight_tmp + backward_tmp,
      fmt::format("{}{}backward working set of one layer {}", weight_detail,
                  weight_detail.empty() ? "" : fmt::format(" {}, ", format_bytes(weight_tmp)), format_bytes(backward_tmp)));
  return e;
}

// ---------------------------------------------------------------------------
// Data and steps.

namespace {

DataPlan plan_data(const Recipe& recipe, Registry& registry, const ModelFacts& model, TrainingFacts& training) {
  DataPlan d;
  auto options = data_options_from_recipe(recipe);
  for (const auto& spec : options.datasets) {
    if (spec.type != DatasetType::completion) d.instruction_data = true;
    if (!fs::exists(spec.path)) {
      d.why_not = fmt::format("[{}] path: {} does not exist", spec.table, spec.path);
      return d;
    }
  }
  if (options.datasets.empty()) {
    d.why_not = "the recipe has no [[datasets]]";
    return d;
  }
  if (!fs::exists(fs::path(model.path) / "tokenizer.model")) {
    d.why_not = fmt::format("no tokenizer.model in {}", model.path);
    return d;
  }
  auto tokenizer = Tokenizer::load(model.path);
  // Through the prepared-data cache: `mftk run` then finds the same data ready.
  auto data = prepare_data(options, *tokenizer);
  PackOptions po = pack_options_from_recipe(recipe);
  po.sliding_window = model.sliding_window;
  PackStats train_stats, eval_stats;
  std::vector<PackedRow> rows, eval_rows;
  training.preference_pairs = is_preference_data(options);
  if (training.preference_pairs) {  // as the pipeline packs them: one pair per row
    training.packer = "one preference pair per row";
    training.packer_window_aware = false;
    rows = pack_preference_pairs(data.train, po, train_stats);
    eval_rows = pack_preference_pairs(data.eval, po, eval_stats);
  } else {
    std::string packer_name;
    auto packer = make_recipe_packer(recipe, registry, &packer_name);
    training.packer = packer_name;
    rows = packer->pack(data.train, po, train_stats);
    eval_rows = packer->pack(data.eval, po, eval_stats);
  }

  d.available = true;
  d.train_examples = int64_t(data.train.size());
  d.eval_examples = int64_t(data.eval.size());
  d.train_rows = int64_t(rows.size());
  d.eval_rows = int64_t(eval_rows.size());
  d.real_tokens = train_stats.real_tokens;
  d.total_tokens = train_stats.total_tokens;
  d.truncated = train_stats.truncated;
  d.dropped = train_stats.dropped;
  d.packing_efficiency = train_stats.efficiency();
  std::vector<int64_t> lengths;
  std::set<int32_t> distinct;
  std::map<int64_t, int64_t> histogram;
  for (const auto& ex : data.train) {
    const int64_t n = int64_t(ex.ids.size());
    lengths.push_back(n);
    int64_t bound = 1;
    while (bound < n) bound <<= 1;
    ++histogram[bound];
  }
  for (const auto& split : {&data.train, &data.eval})
    for (const auto& ex : *split) distinct.insert(ex.ids.begin(), ex.ids.end());
  for (const auto& r : rows) {
    d.longest_row = std::max<int64_t>(d.longest_row, int64_t(r.ids.size()));
    for (int32_t target : r.targets) d.supervised_tokens += target != kIgnoreIndex;
  }
  d.distinct_tokens = int64_t(distinct.size());
  d.supervised_fraction = d.real_tokens ? double(d.supervised_tokens) / double(d.real_tokens) : 0.0;
  std::sort(lengths.begin(), lengths.end());
  if (!lengths.empty()) d.longest_example = lengths.back(), d.median_example = lengths[lengths.size() / 2];
  d.histogram.assign(histogram.begin(), histogram.end());
  return d;
}

StepPlan plan_steps(const Recipe& recipe, const TrainingFacts& t, const DataPlan& d) {
  StepPlan s;
  const auto& schedule = recipe.section("schedule");
  s.tokens_per_step = t.micro_batch_size * t.gradient_accumulation_steps * t.sequence_len;
  if (!d.available) {
    s.total_steps = t.max_steps > 0 ? t.max_steps : 0;
  } else {
    // The trainer's arithmetic (core/train/trainer.cpp: Trainer::Trainer).
    s.micro_batches_per_epoch = (d.train_rows + t.micro_batch_size - 1) / t.micro_batch_size;
    s.steps_per_epoch = (s.micro_batches_per_epoch + t.gradient_accumulation_steps - 1) / t.gradient_accumulation_steps;
    const int64_t micro = std::max<int64_t>(1, int64_t(std::floor(t.num_epochs * double(s.micro_batches_per_epoch))));
    s.total_steps = t.max_steps > 0 ? t.max_steps
                                    : (micro + t.gradient_accumulation_steps - 1) / t.gradient_accumulation_steps;
    const double rows_per_step = double(t.micro_batch_size * t.gradient_accumulation_steps);
    s.real_tokens_per_step = d.train_rows ? int64_t(double(d.real_tokens) / double(d.train_rows) * rows_per_step) : 0;
  }
  const int64_t warmup = schedule.get_int("warmup_steps");
  s.warmup_steps = warmup > 0 ? warmup : int64_t(std::ceil(schedule.get_number("warmup_ratio") * double(s.total_steps)));
  return s;
}

}  // namespace

Plan make_plan(const Recipe& recipe, Registry& registry, const PlanOptions& options) {
  Plan p;
  p.recipe_path = recipe.path();
  p.device = options.device;
  // Measured before any weight or data is touched: what the process costs by itself.
  const int64_t runtime = resident_bytes();
  p.model = read_model_facts(recipe, registry);
  p.training = training_facts(recipe);
  p.training.packer_window_aware = packer_respects_sliding_window(registry, p.training.packer);
  // A checkpoint saved quantised loads through the quantizer that claims its
  // format (as the run's load does), [quantize] or not.
  if (p.model.stored_quantized && p.training.quantizer.empty())
    p.training.quantizer = stored_quantizer_plugin(registry, p.model.path);
  ask_planning_hooks(p.training, &recipe, registry);
  p.data = plan_data(recipe, registry, p.model, p.training);
  p.steps = plan_steps(recipe, p.training, p.data);
  p.memory = estimate_memory(p.model, p.training, p.data, p.device, runtime);
  if (options.gpu_memory_gb > 0) {
    p.device_memory = int64_t(options.gpu_memory_gb * double(1ll << 30));
    p.device_memory_source = fmt::format("--gpu-memory {} GB", options.gpu_memory_gb);
  } else if (options.device == PlanDevice::cuda) {
    p.device_memory = 24ll << 30;
    p.device_memory_source = "a 24 GB card (set --gpu-memory)";
  } else {
    p.device_memory = physical_memory_bytes();
    p.device_memory_source = "this machine's RAM";
  }
  return p;
}

// ---------------------------------------------------------------------------
// Output.

std::vector<std::pair<std::string, std::string>> plan_placement(PlanDevice device, bool optimizer_state_on_host) {
  const std::string d = device == PlanDevice::cuda ? "cuda" : "cpu";
  return {{"weights", d},
          {"trainable", d},
          {"optimizer_state", optimizer_state_on_host ? "cpu" : d},
          {"activations", d},
          {"data", "cpu"}};
}

PlanDevice plan_device_for(const std::string& device_setting) {
  const auto s = parse_device_setting(device_setting);
  if (!s || s->kind == DeviceSetting::Kind::cpu) return PlanDevice::cpu;
  if (s->kind == DeviceSetting::Kind::cuda) return PlanDevice::cuda;
  const CudaSupport cuda = cuda_support();
  return cuda.built_with_cuda && cuda.visible_gpus > 0 ? PlanDevice::cuda : PlanDevice::cpu;
}

std::string format_plan(const Plan& p) {
  const auto& m = p.model;
  const auto& t = p.training;
  std::string out;
  out += fmt::format("plan for {} on {}\n", p.recipe_path, p.device == PlanDevice::cpu ? "cpu (this machine)" : "cuda");
  {
    std::vector<std::string> on_device, on_host;
    for (const auto& [part, where] : plan_placement(p.device, t.optimizer_state_on_host))
      (where == "cuda" ? on_device : on_host).push_back(part);
    out += p.device == PlanDevice::cpu
               ? "  placement: everything on the cpu\n"
               : fmt::format("  placement: {} on the GPU; {} in host memory (copied per micro-batch / update)\n",
                             fmt::join(on_device, ", "), fmt::join(on_host, ", "));
  }
  out += fmt::format("  model: {} ({} layers, hidden {}, {} heads / {} kv, vocab {}, {} params, {}, sliding window {})\n",
                     m.path, m.num_layers, m.hidden_size, m.num_heads, m.num_kv_heads, m.vocab_size, m.parameters(),
                     m.checkpoint_dtype, m.sliding_window ? std::to_string(*m.sliding_window) : "none");
  out += fmt::format("  training: micro batch {} x sequence {}, accumulation {}, {}, gradient checkpointing {}\n",
                     t.micro_batch_size, t.sequence_len, t.gradient_accumulation_steps,
                     t.bf16 ? "bf16 compute" : "fp32 compute", t.gradient_checkpointing ? "on" : "off");
  out += "\nmemory (peak of one step)\n";
  for (const auto& part : p.memory.parts)
    out += fmt::format("  {:<24} {:>10}  {}\n", part.name, format_bytes(part.bytes), part.detail);
  const double share = p.device_memory > 0 ? double(p.memory.total) / double(p.device_memory) : 0;
  // Device sizes are binary (a "24 GB" card holds 24 GiB); parts are printed in 10^9 bytes.
  out += fmt::format("  {:<24} {:>10}  {:.0f}% of {:.1f} GiB ({}){}\n", "total", format_bytes(p.memory.total),
                     100 * share, double(p.device_memory) / double(1ll << 30), p.device_memory_source,
                     share > 1 ? ": DOES NOT FIT" : share > 0.9 ? ": tight" : "");
  out += "\nsteps\n";
  const auto& s = p.steps;
  out += fmt::format("  tokens per optimizer step: {} ({} rows x {}){}\n", s.tokens_per_step,
                     t.micro_batch_size * t.gradient_accumulation_steps, t.sequence_len,
                     s.real_tokens_per_step ? fmt::format(", of them ~{} document tokens", s.real_tokens_per_step) : "");
  if (p.data.available)
    out += fmt::format("  steps per epoch: {} ({} micro-batches), total steps: {}, warmup {}\n", s.steps_per_epoch,
                       s.micro_batches_per_epoch, s.total_steps, s.warmup_steps);
  else
    out += fmt::format("  steps: unknown without the data{}\n",
                       s.total_steps > 0 ? fmt::format(" (max_steps = {})", s.total_steps) : "");
  if (t.preference_pairs)
    out += fmt::format("  objective {}: a row is one preference pair, two sequences (the prompt in both); "
                       "micro_batch_size counts pairs\n",
                       t.objective);
  // What the objective adds (a reference model's passes), in its own words.
  if (!t.objective_note.empty()) out += fmt::format("  {}\n", t.objective_note);
  if (p.time.measured_steps > 0)
    out += fmt::format("  time: {:.2f} s per step (median of {} measured here), {:.0f} tokens/s -> {:.1f} min for {} steps; "
                       "peak RSS while measuring {}\n",
                       p.time.seconds_per_step, p.time.measured_steps, p.time.tokens_per_s, p.time.total_seconds / 60,
                       s.total_steps, format_bytes(p.time.measured_peak_rss));
  else
    out += "  time: not measured (add --measure N to time N steps on this machine)\n";
  out += "\ndata\n";
  const auto& d = p.data;
  if (!d.available) {
    out += fmt::format("  not read: {} (memory assumes full rows)\n", d.why_not);
  } else {
    out += fmt::format("  {} train / {} eval examples -> {} / {} rows; packing efficiency {:.1f}% ({})\n",
                       d.train_examples, d.eval_examples, d.train_rows, d.eval_rows, 100 * d.packing_efficiency,
                       t.packer);
    out += fmt::format("  lengths: median {}, longest {}; supervised {:.1f}% of tokens\n", d.median_example,
                       d.longest_example, 100 * d.supervised_fraction);
    const double n = std::max<int64_t>(1, d.train_examples);
    out += fmt::format("  at sequence_len {}: {} truncated ({:.1f}%), {} dropped ({:.1f}%)\n", t.sequence_len,
                       d.truncated, 100 * double(d.truncated) / n, d.dropped, 100 * double(d.dropped) / n);
    int64_t most = 1;
    for (const auto& [bound, count] : d.histogram) most = std::max(most, count);
    for (const auto& [bound, count] : d.histogram)
      out += fmt::format("  {:>7} - {:<7} {:>7}  {}\n", bound / 2 + 1, bound, count,
                         std::string(size_t(std::ceil(40.0 * double(count) / double(most))), '#'));
  }
  return out;  // lint lines go to stderr (report_lint), like validate's and run's
}

nlohmann::json plan_json(const Plan& p) {
  nlohmann::json parts = nlohmann::json::array();
  for (const auto& part : p.memory.parts)
    parts.push_back({{"name", part.name}, {"bytes", part.bytes}, {"detail", part.detail}});
  nlohmann::json hist = nlohmann::json::array();
  for (const auto& [bound, count] : p.data.histogram) hist.push_back({bound, count});
  nlohmann::json placement = nlohmann::json::object();
  for (const auto& [part, where] : plan_placement(p.device, p.training.optimizer_state_on_host)) placement[part] = where;
  return {{"device", p.device == PlanDevice::cpu ? "cpu" : "cuda"},
          {"placement", placement},
          {"device_memory", p.device_memory},
          {"memory", {{"parts", parts},
                      {"total", p.memory.total},
                      {"activations_with_checkpointing", p.memory.activations_with_checkpointing},
                      {"activations_without_checkpointing", p.memory.activations_without_checkpointing},
                      {"trainable_parameters", p.memory.trainable_parameters}}},
          {"steps", {{"tokens_per_step", p.steps.tokens_per_step},
                     {"steps_per_epoch", p.steps.steps_per_epoch},
                     {"total_steps", p.steps.total_steps},
                     {"warmup_steps", p.steps.warmup_steps}}},
          {"data", {{"available", p.data.available},
                    {"train_examples", p.data.train_examples},
                    {"eval_examples", p.data.eval_examples},
                    {"packing_efficiency", p.data.packing_efficiency},
                    {"truncated", p.data.truncated},
                    {"dropped", p.data.dropped},
                    {"histogram", hist}}},
          {"time", {{"measured_steps", p.time.measured_steps},
                    {"seconds_per_step", p.time.seconds_per_step},
                    {"tokens_per_s", p.time.tokens_per_s},
                    {"total_seconds", p.time.total_seconds}}},
          {"lint", p.lint}};
}

}  // namespace mftk::core
