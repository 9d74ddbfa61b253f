// The "lora" adapter (see lora_adapter.h). PEFT facts used here are in
// docs/formats.md §8 (PEFT adapters): file names, adapter_config.json keys, tensor names
// "base_model.model.<module>.lora_{A,B}.weight", shapes [r, in] / [out, r],
// scaling alpha/r (alpha/sqrt(r) with rsLoRA), merge W + s * B @ A.
#include "lora_adapter.h"
#include "peft_config.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "mftk/error.h"
#include "mftk/log.h"
#include "mftk/model.h"
#include "mftk/output_path.h"
#include "mftk/safetensors.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace mftk::lora {
namespace {

const char* const kPeftPrefix = "base_model.model.";
const char* const kConfigFile = "adapter_config.json";
const char* const kWeightsFile = "adapter_model.safetensors";

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// PEFT's rule for a list entry: the module name equals it or ends with "." + it.
bool name_matches(const std::string& name, const std::string& entry) {
  return name == entry || ends_with(name, "." + entry);
}

bool is_lm_head(const std::string& slot_name) { return name_matches(slot_name, "lm_head"); }

bool is_all_linear(const std::vector<std::string>& targets) {
  return targets.size() == 1 && targets[0] == kAllLinear;
}

// "model.layers.0.mlp.up_proj" -> "up_proj"
std::string last_component(const std::string& name) {
  const auto dot = name.rfind('.');
  return dot == std::string::npos ? name : name.substr(dot + 1);
}

// "model.embed_tokens.weight" -> "model.embed_tokens"
std::string module_of(const std::string& tensor_name) {
  const auto dot = tensor_name.rfind('.');
  return dot == std::string::npos ? std::string() : tensor_name.substr(0, dot);
}

std::string shape_str(at::IntArrayRef shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

// A few names for an error message: "a, b, c, ... (40 in all)".
std::string some_names(const std::vector<std::string>& names, size_t shown = 6) {
  std::string out = fmt::format("{}", fmt::join(names.begin(), names.begin() + std::min(shown, names.size()), ", "));
  if (names.size() > shown) out += fmt::format(", ... ({} in all)", names.size());
  return out;
}

const at::Tensor* find_param(const NamedTensors& params, const std::string& name) {
  for (const auto& [n, t] : params)
    if (n == name && t.defined()) return &t;
  return nullptr;
}

// The dtype of a dense op's weight; none for packed (quantized) storage.
std::optional<at::ScalarType> float_weight_dtype(LinearOp& op) {
  const NamedTensors params = op.parameters();
  const at::Tensor* w = find_param(params, "weight");
  if (w && at::isFloatingType(w->scalar_type())) return w->scalar_type();
  return std::nullopt;
}

bool entry_looks_like_regex(const std::string& s) {
  return s.find_first_of("*+?()[]{}|^$\\") != std::string::npos;
}

// PEFT spells an adapter's trainable tensors with its adapter name in the
// module path ("lora_A.default.weight", "lm_head.modules_to_save.default.weight")
// and strips it on save; accept both spellings.
std::string strip_adapter_segments(const std::string& name) {
  std::vector<std::string> parts;
  std::stringstream in(name);
  for (std::string part; std::getline(in, part, '.');)
    if (part != "default" && part != "modules_to_save") parts.push_back(part);
  return fmt::format("{}", fmt::join(parts, "."));
}

json number_json(double v) {
  // 16 rather than 16.0, as PEFT's int-typed lora_alpha is usually written.
  if (std::isfinite(v) && v == std::floor(v) && std::fabs(v) < 1e15) return json(static_cast<int64_t>(v));
  return json(v);
}

}  // namespace

// ---------------------------------------------------------------------------
// recipe keys

std::vector<KeySpec> lora_keys() {
  const LoRAOptions d;
  KeySpec r = KeySpec::integer("r", d.r, "rank of the update B @ A; more trains more parameters");
  r.min = 1;
  return {
      r,
      KeySpec::number("alpha", d.alpha,
                      "lora_alpha; the update is scaled by alpha / r (alpha / sqrt(r) with use_rslora)"),
      KeySpec::number("dropout", d.dropout, "dropout on the adapter's input while training; 1.0 is refused")
          .range(0.0, 1.0),
      KeySpec::strings("target_modules", d.target_modules,
                       "linear layers to adapt: module-name suffixes (\"q_proj\", \"mlp.down_proj\"), "
                       "or [\"all-linear\"] for every linear layer except lm_head"),
      KeySpec::boolean("use_rslora", d.use_rslora, "rank-stabilised scaling alpha / sqrt(r)"),
      KeySpec::string("init", std::string("default"),
                      "A's initialisation: \"default\" (PEFT: kaiming-uniform, U(-1/sqrt(in), 1/sqrt(in))) "
                      "or \"gaussian\" (N(0, 1/r)); B starts at zero either way")
          .one_of({"default", "gaussian"}),
      KeySpec::strings("modules_to_save", {},
                       "modules trained in full and saved with the adapter, e.g. [\"lm_head\"] or "
                       "[\"embed_tokens\"] (PEFT modules_to_save)"),
      // Read by the core (pipeline.cpp), which calls load() instead of inject().
      KeySpec::string("path", std::string(),
                      "an adapter folder (PEFT layout) to continue training from, e.g. an SFT run's adapter; "
                      "its adapter_config.json then decides r, alpha and the targets"),
  };
}

LoRAOptions lora_options_from_config(const Config& config) {
  LoRAOptions o;
  o.r = config.get_int("r");
  if (o.r < 1) config.fail("r", fmt::format("rank must be at least 1, got {}", o.r), "8 or 16 are usual");
  o.alpha = config.get_number("alpha");
  if (!std::isfinite(o.alpha) || o.alpha <= 0)
    config.fail("alpha", fmt::format("must be a positive number, got {}", o.alpha), "2 * r is a common choice");
  o.dropout = config.get_number("dropout");
  if (!(o.dropout >= 0.0 && o.dropout < 1.0))
    config.fail("dropout", fmt::format("must be in [0, 1), got {}", o.dropout), "0.05 or 0.1 are usual");
  o.target_modules = config.get_strings("target_modules");
  if (o.target_modules.empty())
    config.fail("target_modules", "is empty: nothing would be trained",
                "list module-name suffixes such as \"q_proj\", or write [\"all-linear\"]");
  for (const auto& t : o.target_modules) {
    if (t == kAllLinear && o.target_modules.size() > 1)
      config.fail("target_modules", "\"all-linear\" must be the only entry", "write target_modules = [\"all-linear\"]");
    if (t.empty() || t.front() == '.' || t.back() == '.')
      config.fail("target_modules", fmt::format("\"{}\" is not a module name", t), "write e.g. \"q_proj\"");
    if (entry_looks_like_regex(t))
      config.fail("target_modules",
                  fmt::format("\"{}\" looks like a regular expression; entries are module-name suffixes", t),
                  "list the names, e.g. [\"q_proj\", \"v_proj\"]");
  }
  o.use_rslora = config.get_bool("use_rslora");
  o.init = config.get_string("init") == "gaussian" ? LoRAInit::gaussian : LoRAInit::peft_default;
  o.modules_to_save = config.get_strings("modules_to_save");
  for (const auto& m : o.modules_to_save)
    if (m.empty() || m.front() == '.' || m.back() == '.' || entry_looks_like_regex(m))
      config.fail("modules_to_save", fmt::format("\"{}\" is not a module name", m), "write e.g. \"lm_head\"");
  return o;
}

// ---------------------------------------------------------------------------
// state

struct LoRAAdapter::Wrapped {
  std::string slot_name;
  std::shared_ptr<LoRALinear> op;
  std::optional<at::ScalarType> base_dtype;  // none: packed base, merge uses the checkpoint dtype
  at::Tensor base_bias;                      // kept through merge
};

struct LoRAAdapter::SavedSlot {
  std::string slot_name;
  std::shared_ptr<LinearOp> op;  // the trainable dense copy now in the slot
  // The base op, put back while the adapter is disabled (a DPO reference is
  // the base); it is the base's own op, so keeping it costs a copy only when
  // loading had converted the weight.
  std::shared_ptr<LinearOp> original;
  LinearSlot* slot = nullptr;
  at::Tensor weight;             // fp32 copy, requires grad
  at::Tensor bias;               // fp32 copy or undefined
  std::optional<at::ScalarType> base_dtype;
};

struct LoRAAdapter::SavedTensor {
  std::string name;  // HF tensor name, "model.embed_tokens.weight"
  at::Tensor tensor;  // the model's own tensor, now writable and requiring grad
};

LoRAAdapter::LoRAAdapter(LoRAOptions options) : options_(std::move(options)) {
  if (options_.r < 1) throw UsageError(fmt::format("[adapter] r: rank must be at least 1, got {}", options_.r));
  if (!(options_.dropout >= 0.0 && options_.dropout < 1.0))
    throw UsageError(fmt::format("[adapter] dropout: must be in [0, 1), got {}", options_.dropout));
}

LoRAAdapter::~LoRAAdapter() = default;

// ---------------------------------------------------------------------------
// inject, in four steps: select the targets, count the base, freeze it,
// wrap or copy what trains; then report what was done.

namespace {

// What one inject() touches, chosen before anything changes.
struct InjectTargets {
  std::vector<LinearSlot*> lora_slots;  // wrapped in a LoRALinear
  std::vector<LinearSlot*> full_slots;  // modules_to_save slots: trained as a dense copy
  std::vector<std::pair<std::string, at::Tensor>> full_tensors;  // modules_to_save tensors outside the slots
  std::set<std::string> targets_hit;  // target_modules entries that matched (all-linear: the slots' last names)
};

// The one rule for what LoRA wraps (inject() and plan() both ask it):
// "all-linear" is every slot but lm_head, else a target_modules entry matches.
bool targets_slot(const LoRAOptions& options, const std::string& slot_name) {
  if (is_all_linear(options.target_modules)) return !is_lm_head(slot_name);
  for (const auto& t : options.target_modules)
    if (name_matches(slot_name, t)) return true;
  return false;
}

// A slot, or the module of a tensor outside the slots, that modules_to_save names.
bool saves_module(const LoRAOptions& options, const std::string& module) {
  for (const auto& m : options.modules_to_save)
    if (!module.empty() && name_matches(module, m)) return true;
  return false;
}

// Matches target_modules and modules_to_save against the model's slots and
// tensors; refuses a module in both lists, targets that match nothing and a
// modules_to_save entry that matches nothing.
InjectTargets select_targets(const LoRAOptions& options, const std::vector<LinearSlot*>& slots,
                             const NamedTensors& named) {
  InjectTargets out;
  const bool all_linear = is_all_linear(options.target_modules);
  std::set<std::string> saves_hit;
  std::vector<std::string> slot_names;
  for (LinearSlot* slot : slots) {
    slot_names.push_back(slot->name);
    const bool is_target = targets_slot(options, slot->name);
    const bool is_saved = saves_module(options, slot->name);
    if (is_target && all_linear) out.targets_hit.insert(last_component(slot->name));
    for (const auto& t : options.target_modules)
      if (is_target && !all_linear && name_matches(slot->name, t)) out.targets_hit.insert(t);
    for (const auto& m : options.modules_to_save)
      if (name_matches(slot->name, m)) saves_hit.insert(m);
    if (is_target && is_saved)
      throw UsageError(fmt::format("[adapter] modules_to_save: '{}' is also matched by target_modules; a module "
                                   "is either adapted with LoRA or trained in full", slot->name),
                       "remove it from one of the two lists");
    if (is_target) out.lora_slots.push_back(slot);
    if (is_saved) out.full_slots.push_back(slot);
  }
  if (out.lora_slots.empty())
    throw UsageError(fmt::format("[adapter] target_modules: {} matched none of the model's {} linear slots ({})",
                                 fmt::join(options.target_modules, ", "), slots.size(), some_names(slot_names)),
                     "use suffixes of those names, e.g. \"q_proj\" or \"mlp.down_proj\", or [\"all-linear\"]");
  if (!all_linear)
    for (const auto& t : options.target_modules)
      if (!out.targets_hit.count(t)) log::warn("lora: target_modules entry '{}' matched no linear slot", t);

  for (const auto& [n, t] : named) {
    if (!t.defined()) continue;
    const std::string module = module_of(n);
    for (const auto& m : options.modules_to_save)
      if (!module.empty() && name_matches(module, m)) {
        saves_hit.insert(m);
        out.full_tensors.emplace_back(n, t);
        break;
      }
  }
  for (const auto& m : options.modules_to_save)
    if (!saves_hit.count(m))
      throw UsageError(fmt::format("[adapter] modules_to_save: '{}' matches no module of the model (linear slots: "
                                   "{})", m, some_names(slot_names)),
                       "name a linear layer such as \"lm_head\" or a tensor's module such as \"embed_tokens\"");
  return out;
}

// The model's parameter count before anything changes (PEFT's "all params"
// counts a tensor shared by two modules once, e.g. tied lm_head/embed_tokens).
int64_t count_base_parameters(const std::vector<LinearSlot*>& slots, const NamedTensors& named) {
  std::set<const void*> seen;
  int64_t base_count = 0;
  for (const auto& [n, t] : named)
    if (t.defined() && seen.insert(t.data_ptr()).second) base_count += t.numel();
  for (LinearSlot* slot : slots) {
    const NamedTensors params = slot->op->parameters();
    const at::Tensor* w = find_param(params, "weight");
    if (w && !seen.insert(w->data_ptr()).second) continue;  // tied to a counted tensor
    base_count += slot->in_features * slot->out_features;
    if (const at::Tensor* b = find_param(params, "bias")) base_count += b->numel();
  }
  return base_count;
}

// No base tensor trains unless a later step makes it.
void freeze_base(const std::vector<LinearSlot*>& slots, NamedTensors& named) {
  for (auto& [n, t] : named)
    if (t.defined() && t.requires_grad()) t.requires_grad_(false);
  for (LinearSlot* slot : slots)
    for (auto& [n, t] : slot->op->parameters())
      if (t.defined() && t.is_leaf() && t.requires_grad()) t.requires_grad_(false);
}

}  // namespace

void LoRAAdapter::inject(Model& model) {
  if (injected_)
    throw Error("lora: inject() was already called on this adapter",
                "create a new adapter for another model; one adapter wraps one model once");
  const std::vector<LinearSlot*> slots = model.linear_slots();
  NamedTensors named = model.named_parameters();

  InjectTargets targets = select_targets(options_, slots, named);
  const int64_t base_count = count_base_parameters(slots, named);
  freeze_base(slots, named);

  // Where new tensors go when a slot exposes no dense weight (packed base).
  at::Device fallback_device = at::kCPU;
  for (const auto& [n, t] : named)
    if (t.defined()) { fallback_device = t.device(); break; }
  const int64_t lora_count = wrap_lora_slots(targets.lora_slots, fallback_device);
  const int64_t saved_slot_count = copy_saved_slots(targets.full_slots, named);
  const int64_t saved_tensor_count = train_saved_tensors(targets.full_tensors);

  // adapter_config.json's target_modules: what matched ("all-linear" is
  // expanded, as PEFT does before it saves).
  matched_targets_.assign(targets.targets_hit.begin(), targets.targets_hit.end());
  trainable_count_ = lora_count + saved_slot_count + saved_tensor_count;
  total_count_ = base_count + lora_count + saved_slot_count;
  injected_ = true;
  log_injection(slots.size());
}

int64_t LoRAAdapter::wrap_lora_slots(const std::vector<LinearSlot*>& slots, at::Device fallback_device) {
  LoRALinearOptions lo;
  lo.r = options_.r;
  lo.alpha = options_.alpha;
  lo.dropout = options_.dropout;
  lo.use_rslora = options_.use_rslora;
  lo.init = options_.init;
  int64_t added = 0;
  for (LinearSlot* slot : slots) {
    Wrapped w;
    w.slot_name = slot->name;
    const NamedTensors params = slot->op->parameters();
    const at::Tensor* weight = find_param(params, "weight");
    lo.device = weight ? weight->device() : fallback_device;
    w.base_dtype = float_weight_dtype(*slot->op);
    if (const at::Tensor* b = find_param(params, "bias")) w.base_bias = b->detach();
    w.op = std::make_shared<LoRALinear>(slot->op, slot->in_features, slot->out_features, lo);
    slot->op = w.op;
    added += options_.r * (slot->in_features + slot->out_features);
    wrapped_.push_back(std::move(w));
  }
  return added;
}

int64_t LoRAAdapter::copy_saved_slots(const std::vector<LinearSlot*>& slots, const NamedTensors& named) {
  int64_t added = 0;
  for (LinearSlot* slot : slots) {
    SavedSlot s;
    s.slot_name = slot->name;
    s.base_dtype = float_weight_dtype(*slot->op);
    const NamedTensors params = slot->op->parameters();
    const at::Tensor* w = find_param(params, "weight");
    for (const auto& [n, t] : named)
      if (w && t.defined() && t.data_ptr() == w->data_ptr())
        log::warn("lora: modules_to_save '{}' shares its weight with '{}' (tied embeddings); it is trained as "
                  "a separate copy, so the two are no longer tied", slot->name, n);
    {
      at::NoGradGuard no_grad;
      s.weight = slot->op->dense_weight(at::kFloat).clone();
      if (const at::Tensor* b = find_param(params, "bias")) s.bias = b->detach().to(at::kFloat).clone();
    }
    s.weight.requires_grad_(true);
    if (s.bias.defined()) s.bias.requires_grad_(true);
    s.op = make_dense_linear(s.weight, s.bias);
    s.original = slot->op;
    s.slot = slot;
    slot->op = s.op;
    added += s.weight.numel() + (s.bias.defined() ? s.bias.numel() : 0);
    saved_slots_.push_back(std::move(s));
  }
  return added;
}

int64_t LoRAAdapter::train_saved_tensors(std::vector<std::pair<std::string, at::Tensor>>& tensors) {
  int64_t trainable = 0;
  for (auto& [n, t] : tensors) {
    // The Model interface cannot swap a tensor, so the model's own tensor is
    // made trainable in place: a private writable copy of its storage first
    // (weights loaded zero-copy are views of a read-only file mapping).
    {
      at::NoGradGuard no_grad;
      t.set_(t.detach().clone());
    }
    t.requires_grad_(true);
    if (t.scalar_type() != at::kFloat)
      log::warn("lora: modules_to_save tensor '{}' is {} and trains in that dtype; load the model with "
                "dtype = \"f32\" to train it in fp32", n, c10::toString(t.scalar_type()));
    trainable += t.numel();
    saved_tensors_.push_back({n, t});
  }
  return trainable;
}

void LoRAAdapter::log_injection(size_t slot_count) const {
  log::info("lora: r={} alpha={} scaling={:.4g}{} on {} of {} linear slots ({}){}", options_.r, options_.alpha,
            lora_scaling(options_.alpha, options_.r, options_.use_rslora), options_.use_rslora ? " (rsLoRA)" : "",
            wrapped_.size(), slot_count, fmt::join(matched_targets_, ", "),
            options_.modules_to_save.empty()
                ? std::string()
                : fmt::format("; trained in full: {}", fmt::join(options_.modules_to_save, ", ")));
  log::info("lora: trainable params: {} || all params: {} || trainable%: {:.4f}", trainable_count_, total_count_,
            total_count_ > 0 ? 100.0 * double(trainable_count_) / double(total_count_) : 0.0);
}

// ---------------------------------------------------------------------------
// plan: what inject() would train, from the model's tensor table alone

std::optional<AdapterPlan> LoRAAdapter::plan(const ModelArchitecture& model) const {
  // Slots as the table lists them ([out, in] weights). A tied head has no
  // tensor of its own but is still a slot: it reads the embedding's shape.
  struct Slot {
    std::string name;
    int64_t out = 0, in = 0, layer = -1;
  };
  std::vector<Slot> slots;
  bool head_listed = false;
  const ModelTensor* embedding = nullptr;
  for (const auto& t : model.tensors) {
    if (t.name == model.embedding) embedding = &t;
    if (!t.in_slot || t.shape.size() != 2) continue;
    slots.push_back({module_of(t.name), t.shape[0], t.shape[1], t.layer});
    head_listed = head_listed || slots.back().name == model.head_slot;
  }
  const bool tied_head = !head_listed && !model.head_slot.empty() && embedding && embedding->shape.size() == 2;
  if (tied_head) slots.push_back({model.head_slot, embedding->shape[0], embedding->shape[1], -1});

  AdapterPlan p;
  const int64_t r = options_.r;
  std::map<int64_t, int64_t> saved_per_layer;  // elements per token, by decoder layer
  for (const auto& s : slots) {
    const bool head = s.name == model.head_slot;
    if (targets_slot(options_, s.name)) {
      p.trainable_parameters += r * (s.in + s.out);  // A [r, in] and B [out, r]
      p.largest_tensor = std::max(p.largest_tensor, r * std::max(s.in, s.out));
      // x A^T is kept for B's gradient; with dropout its output and mask too.
      if (s.layer >= 0) saved_per_layer[s.layer] += r + (options_.dropout > 0 ? 2 * s.in : 0);
      p.trains_head = p.trains_head || head;
    } else if (saves_module(options_, s.name)) {  // a dense fp32 copy
      p.trainable_parameters += s.out * s.in;
      p.largest_tensor = std::max(p.largest_tensor, s.out * s.in);
      p.trains_head = p.trains_head || head;
    }
  }
  for (const auto& t : model.tensors) {  // modules_to_save tensors outside the slots (embed_tokens)
    if (t.in_slot || !saves_module(options_, module_of(t.name))) continue;
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    p.trainable_parameters += n;
    p.largest_tensor = std::max(p.largest_tensor, n);
    p.trains_head = p.trains_head || (tied_head && &t == embedding);
  }
  for (const auto& [layer, elements] : saved_per_layer) p.saved_per_token = std::max(p.saved_per_token, elements);
  p.detail = fmt::format("r {} on {}", r, fmt::join(options_.target_modules, ","));
  return p;
}

// ---------------------------------------------------------------------------
// parameters, training mode

NamedTensors LoRAAdapter::trainable_parameters() {
  if (!injected_)
    throw Error("lora: trainable_parameters() called before inject()", "call inject(model) or load(dir, model) first");
  NamedTensors out;
  if (merged_) return out;
  for (const auto& w : wrapped_)
    for (const auto& [n, t] : w.op->parameters()) out.emplace_back(kPeftPrefix + w.slot_name + "." + n, t);
  for (const auto& s : saved_slots_) {
    out.emplace_back(kPeftPrefix + s.slot_name + ".weight", s.weight);
    if (s.bias.defined()) out.emplace_back(kPeftPrefix + s.slot_name + ".bias", s.bias);
  }
  for (const auto& s : saved_tensors_) out.emplace_back(kPeftPrefix + s.name, s.tensor);
  return out;
}

void LoRAAdapter::set_enabled(bool on) {
  if (!on && !saved_tensors_.empty())
    throw UsageError(fmt::format("lora: the adapter cannot be switched off: modules_to_save trains {} in place, "
                                 "so the base values are gone (a DPO reference model would include the training)",
                                 saved_tensors_.front().name),
                     "leave embed_tokens out of modules_to_save for a run that needs the base model (dpo)");
  for (auto& w : wrapped_) w.op->set_enabled(on);
  if (merged_) return;
  for (auto& s : saved_slots_) s.slot->op = on ? s.op : s.original;
}

// ---------------------------------------------------------------------------
// save

void LoRAAdapter::save(const std::string& dir, const std::string& base_model) const {
  if (!injected_)
    throw Error("lora: save() called before inject()", "call inject(model) or load(dir, model) first");
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error(fmt::format("lora: cannot create adapter folder {}: {}", dir, ec.message()));

  // Weights first, config last: a folder with a config has its weights.
  NamedTensors tensors;
  {
    at::NoGradGuard no_grad;
    auto add = [&](const std::string& name, const at::Tensor& t) {
      tensors.emplace_back(name, t.detach().to(at::kCPU, at::kFloat).contiguous());
    };
    for (const auto& w : wrapped_) {
      add(kPeftPrefix + w.slot_name + ".lora_A.weight", w.op->lora_A());
      add(kPeftPrefix + w.slot_name + ".lora_B.weight", w.op->lora_B());
    }
    for (const auto& s : saved_slots_) {
      add(kPeftPrefix + s.slot_name + ".weight", s.weight);
      if (s.bias.defined()) add(kPeftPrefix + s.slot_name + ".bias", s.bias);
    }
    for (const auto& s : saved_tensors_) add(kPeftPrefix + s.name, s.tensor);
  }
  const fs::path folder(dir);
  save_safetensors((folder / kWeightsFile).string(), tensors, {{"format", "pt"}});

  // Keys PEFT has read since 0.7 (use_rslora); newer keys keep their
  // defaults when absent, and older PEFT refuses keys it does not know.
  json config = {
      {"peft_type", "LORA"},
      {"task_type", "CAUSAL_LM"},
      {"base_model_name_or_path", base_model},
      {"revision", nullptr},
      {"inference_mode", true},
      {"r", options_.r},
      {"lora_alpha", number_json(options_.alpha)},
      {"lora_dropout", options_.dropout},
      {"target_modules", matched_targets_},
      {"use_rslora", options_.use_rslora},
      {"bias", "none"},
      {"fan_in_fan_out", false},
      {"modules_to_save", options_.modules_to_save.empty() ? json(nullptr) : json(options_.modules_to_save)},
      {"init_lora_weights", options_.init == LoRAInit::gaussian ? json("gaussian") : json(true)},
      {"layers_to_transform", nullptr},
      {"layers_pattern", nullptr},
      {"rank_pattern", json::object()},
      {"alpha_pattern", json::object()},
  };
  // Through the SDK's one atomic write (temporary beside it, fsync, rename, fsync the folder).
  write_file_atomic((folder / kConfigFile).string(), config.dump(2) + "\n");
  log::info("lora: saved {} tensors to {}", tensors.size(), (folder / kWeightsFile).string());
}

// ---------------------------------------------------------------------------
// load

void LoRAAdapter::load(const std::string& dir, Model& model) {
  const fs::path folder(dir);
  const fs::path config_path = folder / kConfigFile;
  LoRAOptions file = read_peft_config(config_path.string());
  file.init = options_.init;

  if (injected_) {
    // Loading into the layout this adapter already made (resume, reload);
    // the tensor check below catches other target_modules.
    const bool same = file.r == options_.r &&
                      lora_scaling(file.alpha, file.r, file.use_rslora) ==
                          lora_scaling(options_.alpha, options_.r, options_.use_rslora) &&
                      file.modules_to_save == options_.modules_to_save;
    if (!same)
      throw Error(fmt::format("lora: {} (r={}, lora_alpha={}, use_rslora={}) does not match the adapter already "
                              "injected (r={}, alpha={}, use_rslora={})",
                              config_path.string(), file.r, file.alpha, file.use_rslora, options_.r, options_.alpha,
                              options_.use_rslora),
                  "load the adapter into a fresh model, before inject()");
  } else {
    options_ = file;
    try {
      inject(model);
    } catch (const UsageError& e) {
      throw UsageError(fmt::format("lora: loading {}: {}", config_path.string(), e.what()), e.hint());
    }
  }

  const CheckpointReader reader = CheckpointReader::open(dir, "adapter_model");
  const NamedTensors expected = trainable_parameters();
  std::map<std::string, const at::Tensor*> by_name;
  for (const auto& [n, t] : expected) by_name[n] = &t;

  // Check everything before copying anything.
  std::map<std::string, std::string> source_of;  // PEFT name -> name in the file
  std::vector<std::string> unknown;
  for (const std::string& stored : reader.names()) {
    const std::string name = strip_adapter_segments(stored);
    const auto it = by_name.find(name);
    if (it == by_name.end()) {
      unknown.push_back(stored);
      continue;
    }
    if (source_of.count(name))
      throw Error(fmt::format("lora: {}: tensors '{}' and '{}' both give '{}'", (folder / kWeightsFile).string(),
                              source_of[name], stored, name),
                  "the file mixes two naming styles; re-save the adapter");
    const TensorInfo& info = reader.info(stored);
    const at::IntArrayRef want = it->second->sizes();
    if (!std::equal(info.shape.begin(), info.shape.end(), want.begin(), want.end()))
      throw Error(fmt::format("lora: {}: tensor '{}' has shape {}, expected {} (r={} for a slot of this model)",
                              (folder / kWeightsFile).string(), stored, shape_str(info.shape), shape_str(want),
                              options_.r),
                  "the adapter was trained for a model of another size, or its config does not match its weights");
    source_of[name] = stored;
  }
  if (!unknown.empty())
    throw Error(fmt::format("lora: {}: {} tensor(s) this adapter does not use: {}", (folder / kWeightsFile).string(),
                            unknown.size(), some_names(unknown, 8)),
                "the adapter config and its weights do not belong together, or the adapter targets modules this "
                "model does not have");
  std::vector<std::string> missing;
  for (const auto& [n, t] : expected)
    if (!source_of.count(n)) missing.push_back(n);
  if (!missing.empty())
    throw Error(fmt::format("lora: {}: {} tensor(s) missing: {}", (folder / kWeightsFile).string(), missing.size(),
                            some_names(missing, 8)),
                "the adapter file is incomplete or was saved for other target_modules");

  {
    at::NoGradGuard no_grad;
    for (const auto& [n, t] : expected) {
      at::Tensor dst = t;
      dst.copy_(reader.get(source_of.at(n)));
    }
  }
  log::info("lora: loaded {} tensors from {}", expected.size(), (folder / kWeightsFile).string());
}

// ---------------------------------------------------------------------------
// merge

void LoRAAdapter::merge(Model& model) {
  if (!injected_) throw Error("lora: merge() called before inject()", "call inject(model) or load(dir, model) first");
  if (merged_) throw Error("lora: merge() was already called", "merge once, after training");
  std::map<std::string, LinearSlot*> slots;
  for (LinearSlot* s : model.linear_slots()) slots[s->name] = s;
  auto slot_holding = [&](const std::string& name, const LinearOp* op) {
    const auto it = slots.find(name);
    if (it == slots.end() || it->second->op.get() != op)
      throw Error(fmt::format("lora: merge: slot '{}' no longer holds this adapter's op", name),
                  "merge into the model the adapter was injected into, before anything replaces its slots");
    return it->second;
  };
  // A packed base has no dense dtype of its own: merge into the checkpoint's.
  std::optional<at::ScalarType> checkpoint_dtype;
  auto merge_dtype = [&](const std::optional<at::ScalarType>& base) {
    if (base) return *base;
    if (!checkpoint_dtype) {
      checkpoint_dtype = model.shape().checkpoint_dtype;
      if (!at::isFloatingType(*checkpoint_dtype)) checkpoint_dtype = at::kFloat;
    }
    return *checkpoint_dtype;
  };

  at::NoGradGuard no_grad;
  for (const auto& w : wrapped_) {
    LinearSlot* slot = slot_holding(w.slot_name, w.op.get());
    slot->op = make_dense_linear(w.op->dense_weight(merge_dtype(w.base_dtype)), w.base_bias);
  }
  for (const auto& s : saved_slots_) {
    LinearSlot* slot = slot_holding(s.slot_name, s.op.get());
    const at::ScalarType dt = merge_dtype(s.base_dtype);
    slot->op = make_dense_linear(s.weight.detach().to(dt), s.bias.defined() ? s.bias.detach().to(dt) : at::Tensor());
  }
  for (const auto& s : saved_tensors_) {
    at::Tensor t = s.tensor;
    t.requires_grad_(false);
  }
  merged_ = true;
  log::info("lora: merged into {} slot(s){}", wrapped_.size(),
            saved_slots_.empty() && saved_tensors_.empty()
                ? std::string()
                : fmt::format(", {} module(s) trained in full kept", saved_slots_.size() + saved_tensors_.size()));
}

}  // namespace mftk::lora
