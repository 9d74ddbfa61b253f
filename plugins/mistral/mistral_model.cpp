// MistralModel: hparams -> tensors -> forward. The block math follows
// transformers' modeling_mistral.py (docs/formats.md §2.3-§2.5, Mistral block, RoPE, window):
//   h = x + o_proj(attn(rms_norm(x)))
//   y = h + down(silu(gate(rms_norm(h))) * up(rms_norm(h)))
#include "mistral_model.h"

#include <algorithm>
#include <cmath>
#include <map>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include "attention.h"
#include "checkpoint.h"
#include "tensor_names.h"
#include "mftk/error.h"
#include "mftk/log.h"
#include "mftk/quantizer.h"
#include "mftk/safetensors.h"

namespace mftk::mistral {

struct MistralModel::PassContext {
  at::Tensor cos, sin;  // [B, T, D] in the compute dtype
  std::shared_ptr<AttentionPlan> plan;
};

namespace {

// The KV cache of one sequence. With a sliding window W the cache is a ring
// of W slots (position p lives in slot p % W), so memory stays bounded.
class MistralDecodeState final : public DecodeState {
 public:
  int64_t position() const override { return position_; }

  const void* owner = nullptr;
  int64_t position_ = 0;
  int64_t max_tokens = 0;
  int64_t capacity = 0;
  std::vector<at::Tensor> keys, values;  // per layer [1, nkv, capacity, D]

  // The cached entries for positions [start, position_) in position order.
  at::Tensor cached(const at::Tensor& ring, int64_t start) const {
    const int64_t count = position_ - start;
    const int64_t first = start % capacity;
    if (first + count <= capacity) return ring.narrow(2, first, count);
    return at::cat({ring.narrow(2, first, capacity - first),
                    ring.narrow(2, 0, count - (capacity - first))}, 2);
  }
};

std::string shape_str(const std::vector<int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

// The op a quantizer built from tensors stored quantised in `path` must fit
// the layer config.json describes, as a dense weight must. A zero-row
// forward ([0, in] -> [0, out]) tells any op's shape without computing.
void check_stored_quantized(LinearOp& op, const std::string& module, const std::vector<int64_t>& shape,
                            const std::string& path, at::ScalarType dtype) {
  const char* hint = "the weights and config.json do not belong together; quantise the checkpoint again";
  at::NoGradGuard no_grad;
  at::Tensor out;
  try {
    out = op.forward(at::zeros({0, shape[1]}, dtype));
  } catch (const std::exception& e) {
    throw Error(fmt::format("checkpoint {}: the stored {} weight '{}.weight' does not take the {} inputs of shape {} "
                            "config.json implies: {}",
                            path, op.describe(), module, shape[1], shape_str(shape), e.what()),
                hint);
  }
  if (out.dim() != 2 || out.size(1) != shape[0])
    throw Error(fmt::format("checkpoint {}: the stored {} weight '{}.weight' gives {} outputs, but config.json "
                            "implies shape {}",
                            path, op.describe(), module, out.dim() == 2 ? out.size(1) : -1, shape_str(shape)),
                hint);
}

at::ScalarType checked_compute_dtype(at::ScalarType t) {
  if (t != at::kFloat && t != at::kBFloat16)
    throw UsageError(fmt::format("mistral: compute dtype {} is not supported", c10::toString(t)),
                     "use compute_dtype = \"f32\" or \"bf16\"");
  return t;
}

// Module name -> the op a quantizer built from tensors stored in the checkpoint.
using StoredOps = std::map<std::string, std::shared_ptr<LinearOp>>;

// Slots the checkpoint stores already quantised (a folder the quantizer
// wrote): their ops come from the stored tensors, and "<slot>.weight" is
// the quantizer's business, not config.json's.
StoredOps load_stored_quantized(Quantizer& quantizer, const CheckpointReader& reader,
                                const std::vector<CheckpointTensor>& expected, const std::string& path,
                                at::ScalarType compute_dtype) {
  StoredOps stored_quantized;
  for (const auto& t : expected) {
    if (t.role == TensorRole::embed_tokens || t.role == TensorRole::input_norm ||
        t.role == TensorRole::post_attention_norm || t.role == TensorRole::final_norm)
      continue;
    const std::string module = hf_module_name(t.role, t.layer);
    std::shared_ptr<LinearOp> op;
    try {
      op = quantizer.load_quantized(module, reader, compute_dtype);
    } catch (const UsageError&) {
      throw;
    } catch (const Error& e) {
      throw Error(fmt::format("checkpoint {}: {}", path, e.what()), e.hint());  // the quantizer cannot name it
    }
    if (!op) continue;
    check_stored_quantized(*op, module, t.shape, path, compute_dtype);
    stored_quantized.emplace(module, std::move(op));
  }
  return stored_quantized;
}

bool in_stored_module(const StoredOps& stored_quantized, const std::string& tensor) {
  for (const auto& [module, op] : stored_quantized)
    if (tensor.rfind(module + ".weight", 0) == 0) return true;
  return false;
}

// Every tensor present with the shape config.json implies, before any is used.
void check_expected_tensors(const CheckpointReader& reader, const std::vector<CheckpointTensor>& expected,
                            const StoredOps& stored_quantized, const std::string& path) {
  std::vector<std::string> missing;
  for (const auto& t : expected) {
    if (in_stored_module(stored_quantized, t.name)) continue;
    if (!reader.contains(t.name)) {
      missing.push_back(fmt::format("'{}' (expected shape {})", t.name, shape_str(t.shape)));
      continue;
    }
    const TensorInfo& info = reader.info(t.name);
    if (info.shape != t.shape)
      throw Error(fmt::format("checkpoint {}: tensor '{}' has shape {}, but config.json implies {}",
                              path, t.name, shape_str(info.shape), shape_str(t.shape)),
                  "the weights and config.json do not belong together; re-export the checkpoint");
    // Any float dtype is computed in (f16 and bf16 widened per matmul);
    // an integer one would be multiplied as integers, silently wrong.
    if (!at::isFloatingType(dtype_from_safetensors(info.dtype)))
      throw Error(fmt::format("checkpoint {}: tensor '{}' is stored as {}, not as a float type", path, t.name,
                              info.dtype),
                  "store the model's weights as F32, F16 or BF16 (a quantised folder needs its "
                  "quantization_config in config.json)");
  }
  if (!missing.empty()) {
    const size_t shown = std::min<size_t>(missing.size(), 8);
    throw Error(fmt::format("checkpoint {}: {} tensor(s) missing: {}{}", path, missing.size(),
                            fmt::join(missing.begin(), missing.begin() + shown, ", "),
                            missing.size() > shown ? ", ..." : ""),
                "the checkpoint is incomplete or is not a MistralForCausalLM checkpoint");
  }
}

// Tensors a MistralForCausalLM does not read are ignored, but said; a
// stored lm_head beside tie_word_embeddings gets its own warning.
void warn_unused_tensors(const CheckpointReader& reader, const std::vector<CheckpointTensor>& expected,
                         const StoredOps& stored_quantized, const std::string& path, bool tie_word_embeddings) {
  std::vector<std::string> unexpected;
  for (const auto& name : reader.names()) {
    const bool known = std::any_of(expected.begin(), expected.end(),
                                   [&](const CheckpointTensor& t) { return t.name == name; });
    if (known || in_stored_module(stored_quantized, name)) continue;
    if (name == hf_tensor_name(TensorRole::lm_head) && tie_word_embeddings)
      log::warn("mistral: {} holds lm_head.weight but tie_word_embeddings is set; using "
                "model.embed_tokens.weight for lm_head, as transformers does", path);
    else
      unexpected.push_back(name);
  }
  if (!unexpected.empty())
    log::warn("mistral: {} holds {} tensor(s) a MistralForCausalLM does not use (ignored): {}{}",
              path, unexpected.size(),
              fmt::join(unexpected.begin(), unexpected.begin() + std::min<size_t>(unexpected.size(), 8), ", "),
              unexpected.size() > 8 ? ", ..." : "");
}

// Turns checked checkpoint tensors into the model's weights and linear
// slots, on the load's device, in its weight dtype, through its quantizer.
struct WeightPlacer {
  const CheckpointReader& reader;
  const MistralConfig& config;
  const StoredOps& stored_quantized;
  Quantizer* quantizer;
  at::Device device;
  std::optional<at::ScalarType> weight_dtype;
  at::ScalarType compute_dtype;

  // Zero-copy view when the dtype already fits; a converted copy otherwise.
  // On another device (a GPU) each tensor goes over as it is read, then is
  // converted there, and its mapped pages are dropped: the host never holds
  // more than one tensor of the model at a time.
  at::Tensor place(const at::Tensor& mapped) const {
    at::Tensor t = mapped;
    if (t.device() != device) t = t.to(device);
    if (weight_dtype && t.scalar_type() != *weight_dtype) t = t.to(*weight_dtype);
    if (!mapped.is_same(t) && mapped.is_cpu() && !device.is_cpu()) release_mapped_pages(mapped);
    return t;
  }
  at::Tensor tensor(TensorRole role, int64_t layer = -1) const {
    return place(reader.get(hf_tensor_name(role, layer)));
  }

  LinearSlot slot(TensorRole role, int64_t layer) const {
    LinearSlot slot;
    slot.name = hf_module_name(role, layer);
    const auto shape = tensor_shape(role, config);
    slot.out_features = shape[0];
    slot.in_features = shape[1];
    if (auto it = stored_quantized.find(slot.name); it != stored_quantized.end()) {
      slot.op = it->second;
      return slot;
    }
    const at::Tensor raw = reader.get(hf_tensor_name(role, layer));
    if (quantizer && quantizer->wants(slot.name)) {
      const at::Tensor on_device = raw.device() == device ? raw : raw.to(device);
      slot.op = quantizer->quantize(slot.name, on_device, compute_dtype);
      // The quantised op keeps what it made; the source pages need not stay
      // resident (a 7B bf16 source would otherwise end up wholly in RSS).
      release_mapped_pages(raw);  // also after a copy to the GPU: the host needs the source no more
    } else {
      slot.op = make_dense_linear(place(raw));
    }
    return slot;
  }

  // lm_head under tie_word_embeddings: the embedding tensor itself.
  LinearSlot tied_head(const at::Tensor& embed_tokens) const {
    LinearSlot head;
    head.name = hf_module_name(TensorRole::lm_head);
    head.out_features = config.vocab_size;
    head.in_features = config.hidden_size;
    if (quantizer && quantizer->wants(head.name))
      head.op = quantizer->quantize(head.name, embed_tokens, compute_dtype);
    else
      head.op = make_dense_linear(embed_tokens);  // the same tensor: tied
    return head;
  }
};

}  // namespace

MistralModel::MistralModel(MistralModelOptions options) : options_(std::move(options)) {}
MistralModel::~MistralModel() = default;

void MistralModel::load_config(const std::string& path) {
  config_ = MistralConfig::load(path);
  shape_ = config_.to_shape();
  config_loaded_ = true;
  if (options_.path.empty()) options_.path = path;
}

void MistralModel::require_loaded(const char* what) const {
  if (!loaded_)
    throw Error(fmt::format("mistral: {} called before load()", what),
                "call load_config(path) and load(options) first");
}

void MistralModel::load(const LoadOptions& options) {
  const std::string path = !options.path.empty() ? options.path : options_.path;
  if (path.empty())
    throw UsageError("mistral: no checkpoint path given", "set `path` in the recipe's [model] table");
  load_config(path);

  const std::optional<at::ScalarType> weight_dtype =
      options_.weight_dtype ? options_.weight_dtype : options.weight_dtype;
  compute_dtype_ = checked_compute_dtype(options_.compute_dtype.value_or(options.compute_dtype));
  device_ = options.device;

  const CheckpointReader reader = CheckpointReader::open(path);
  const std::vector<CheckpointTensor> expected = checkpoint_tensors(config_);
  const StoredOps stored_quantized =
      options.quantizer ? load_stored_quantized(*options.quantizer, reader, expected, path, compute_dtype_)
                        : StoredOps{};
  check_expected_tensors(reader, expected, stored_quantized, path);
  warn_unused_tensors(reader, expected, stored_quantized, path, config_.tie_word_embeddings);

  const WeightPlacer weights{reader, config_, stored_quantized, options.quantizer, device_, weight_dtype,
                             compute_dtype_};
  embed_tokens_ = weights.tensor(TensorRole::embed_tokens);
  layers_.clear();
  layers_.reserve(config_.num_hidden_layers);
  for (int64_t n = 0; n < config_.num_hidden_layers; ++n) {
    DecoderLayer layer;
    layer.q_proj = weights.slot(TensorRole::q_proj, n);
    layer.k_proj = weights.slot(TensorRole::k_proj, n);
    layer.v_proj = weights.slot(TensorRole::v_proj, n);
    layer.o_proj = weights.slot(TensorRole::o_proj, n);
    layer.gate_proj = weights.slot(TensorRole::gate_proj, n);
    layer.up_proj = weights.slot(TensorRole::up_proj, n);
    layer.down_proj = weights.slot(TensorRole::down_proj, n);
    layer.input_norm = weights.tensor(TensorRole::input_norm, n);
    layer.post_attention_norm = weights.tensor(TensorRole::post_attention_norm, n);
    layers_.push_back(std::move(layer));
  }
  final_norm_ = weights.tensor(TensorRole::final_norm);
  lm_head_ = config_.tie_word_embeddings ? weights.tied_head(embed_tokens_) : weights.slot(TensorRole::lm_head, -1);

  rotary_ = RotaryEmbedding(config_.head_dim, config_.rope_theta, device_);
  // transformers: head_dim ** -0.5
  attention_scale_ = std::pow(static_cast<double>(config_.head_dim), -0.5);
  shape_.checkpoint_dtype = reader.get(hf_tensor_name(TensorRole::embed_tokens)).scalar_type();
  if (config_.attention_dropout > 0)
    log::warn("mistral: config.json sets attention_dropout = {}; attention dropout is not "
              "implemented, training runs without it", config_.attention_dropout);
  loaded_ = true;
  if (!stored_quantized.empty())
    log::info("mistral: {} of {} linear weights loaded as stored quantised ({}), not re-quantised",
              stored_quantized.size(), linear_slots().size(), stored_quantized.begin()->second->describe());
  log::info("mistral: loaded {} ({} layers, hidden {}, heads {}/{} kv, window {}), {:.1f} MB of "
            "weights, weights {}, compute {}",
            path, config_.num_hidden_layers, config_.hidden_size, config_.num_attention_heads,
            config_.num_key_value_heads,
            config_.sliding_window ? std::to_string(*config_.sliding_window) : "none",
            reader.total_bytes() / 1e6,
            weight_dtype ? c10::toString(*weight_dtype) : "as stored", c10::toString(compute_dtype_));
}

std::vector<LinearSlot*> MistralModel::linear_slots() {
  std::vector<LinearSlot*> slots;
  for (auto& l : layers_)
    for (LinearSlot* s : {&l.q_proj, &l.k_proj, &l.v_proj, &l.o_proj, &l.gate_proj, &l.up_proj,
                          &l.down_proj})
      slots.push_back(s);
  if (loaded_) slots.push_back(&lm_head_);
  return slots;
}

void MistralModel::set_training(bool on) {
  training_ = on;
  for (LinearSlot* s : linear_slots())
    if (s->op) s->op->set_training(on);
}

NamedTensors MistralModel::named_parameters() {
  NamedTensors out;
  if (!loaded_) return out;
  out.emplace_back(hf_tensor_name(TensorRole::embed_tokens), embed_tokens_);
  for (int64_t n = 0; n < static_cast<int64_t>(layers_.size()); ++n) {
    out.emplace_back(hf_tensor_name(TensorRole::input_norm, n), layers_[n].input_norm);
    out.emplace_back(hf_tensor_name(TensorRole::post_attention_norm, n),
                     layers_[n].post_attention_norm);
  }
  out.emplace_back(hf_tensor_name(TensorRole::final_norm), final_norm_);
  return out;
}

at::Tensor MistralModel::embed(const at::Tensor& ids) const {
  return at::embedding(embed_tokens_, ids).to(compute_dtype_);
}

std::vector<at::Tensor> MistralModel::layer_trainable_tensors(const DecoderLayer& layer) const {
  std::vector<at::Tensor> out;
  for (const at::Tensor& t : {layer.input_norm, layer.post_attention_norm})
    if (t.requires_grad()) out.push_back(t);
  for (const LinearSlot* s : {&layer.q_proj, &layer.k_proj, &layer.v_proj, &layer.o_proj,
                              &layer.gate_proj, &layer.up_proj, &layer.down_proj})
    for (const auto& [name, t] : s->op->parameters())
      if (t.defined() && t.requires_grad()) out.push_back(t);
  return out;
}

at::Tensor MistralModel::layer_forward(const DecoderLayer& layer, const at::Tensor& x,
                                       const PassContext& ctx, const at::Tensor& past_k,
                                       const at::Tensor& past_v, at::Tensor* new_k,
                                       at::Tensor* new_v) const {
  const int64_t B = x.size(0), T = x.size(1);
  const int64_t nkv = config_.num_key_value_heads, G = config_.group_size(), D = config_.head_dim;
  const double eps = config_.rms_norm_eps;

  const at::Tensor h = rms_norm(x, layer.input_norm, eps);
  // Query head kv * G + g -> [B, nkv, T, G, D]; keys and values [B, nkv, T, D].
  at::Tensor q = layer.q_proj.forward(h).reshape({B, T, nkv, G, D}).permute({0, 2, 1, 3, 4});
  at::Tensor k = layer.k_proj.forward(h).reshape({B, T, nkv, D}).transpose(1, 2);
  at::Tensor v = layer.v_proj.forward(h).reshape({B, T, nkv, D}).transpose(1, 2);
  q = apply_rotary(q, ctx.cos.view({B, 1, T, 1, D}), ctx.sin.view({B, 1, T, 1, D}));
  k = apply_rotary(k, ctx.cos.unsqueeze(1), ctx.sin.unsqueeze(1));
  if (new_k) *new_k = k;
  if (new_v) *new_v = v;
  if (past_k.defined()) {
    k = at::cat({past_k, k}, 2);
    v = at::cat({past_v, v}, 2);
  }
  const at::Tensor attn = grouped_query_attention(q, k, v, *ctx.plan, attention_scale_)
                              .permute({0, 2, 1, 3, 4})
                              .reshape({B, T, config_.q_dim()});
  const at::Tensor after_attention = x + layer.o_proj.forward(attn);

  const at::Tensor h2 = rms_norm(after_attention, layer.post_attention_norm, eps);
  const at::Tensor mlp =
      layer.down_proj.forward(at::silu(layer.gate_proj.forward(h2)) * layer.up_proj.forward(h2));
  return after_attention + mlp;
}

at::Tensor MistralModel::forward(const Batch& batch) {
  require_loaded("forward");
  MFTK_CHECK(batch.input_ids.defined() && batch.input_ids.dim() == 2,
             "mistral: forward expects input_ids [B, T]");
  const at::Tensor ids = batch.input_ids.to(device_, at::kLong);
  const int64_t B = ids.size(0), T = ids.size(1);
  const auto long_opts = at::TensorOptions().dtype(at::kLong).device(device_);
  // position_ids / doc_ids may be left out: one document per row, positions 0..T-1.
  const at::Tensor index = at::arange(T, long_opts);
  const at::Tensor pos = batch.position_ids.defined() ? batch.position_ids.to(device_, at::kLong)
                                                      : index.unsqueeze(0).expand({B, T});
  const at::Tensor doc = batch.doc_ids.defined() ? batch.doc_ids.to(device_, at::kLong)
                                                 : at::zeros({B, T}, long_opts);
  MFTK_CHECK(pos.sizes() == ids.sizes() && doc.sizes() == ids.sizes(),
             "mistral: position_ids {} and doc_ids {} must have the shape of input_ids {}",
             shape_str(pos.sizes().vec()), shape_str(doc.sizes().vec()), shape_str(ids.sizes().vec()));

  auto ctx = std::make_shared<PassContext>();
  AttentionMaskRule rule{index, index, pos, pos, doc, doc, config_.sliding_window};
  ctx->plan = std::make_shared<AttentionPlan>(std::move(rule), options_.attention_chunk);
  std::tie(ctx->cos, ctx->sin) = rotary_.cos_sin(pos, compute_dtype_);

  at::Tensor h = embed(ids);
  for (const DecoderLayer& layer : layers_) {
    // The last layer is not checkpointed: its backward runs right after the
    // loss, so recomputing it would only repeat its forward, and backward
    // holds one layer's activations at a time either way (no higher peak).
    const bool last = &layer == &layers_.back();
    if (gradient_checkpointing_ && at::GradMode::is_enabled() && !last) {
      const DecoderLayer* l = &layer;
      h = checkpointed(
          [this, l, ctx](const at::Tensor& x) {
            return layer_forward(*l, x, *ctx, {}, {}, nullptr, nullptr);
          },
          h, layer_trainable_tensors(layer));
    } else {
      h = layer_forward(layer, h, *ctx, {}, {}, nullptr, nullptr);
    }
  }
  return rms_norm(h, final_norm_, config_.rms_norm_eps);
}

at::Tensor MistralModel::logits(const at::Tensor& hidden) {
  require_loaded("logits");
  return lm_head_.forward(hidden);
}

std::unique_ptr<DecodeState> MistralModel::start_decode(int64_t max_tokens) {
  require_loaded("start_decode");
  if (max_tokens <= 0)
    throw UsageError(fmt::format("mistral: start_decode needs max_tokens > 0, got {}", max_tokens));
  auto state = std::make_unique<MistralDecodeState>();
  state->owner = this;
  state->max_tokens = max_tokens;
  state->capacity = config_.sliding_window ? std::min(*config_.sliding_window, max_tokens) : max_tokens;
  const auto opts = at::TensorOptions().dtype(compute_dtype_).device(device_);
  for (size_t n = 0; n < layers_.size(); ++n) {
    state->keys.push_back(at::empty({1, config_.num_key_value_heads, state->capacity, config_.head_dim}, opts));
    state->values.push_back(at::empty({1, config_.num_key_value_heads, state->capacity, config_.head_dim}, opts));
  }
  return state;
}

at::Tensor MistralModel::decode(DecodeState& base_state, const at::Tensor& ids) {
  require_loaded("decode");
  auto* state = dynamic_cast<MistralDecodeState*>(&base_state);
  if (!state || state->owner != this)
    throw Error("mistral: decode() was given a DecodeState from another model",
                "use the state returned by this model's start_decode()");
  const at::Tensor tokens = ids.to(device_, at::kLong).reshape({1, -1});
  const int64_t n = tokens.size(1), p0 = state->position_, cap = state->capacity;
  if (n == 0) return at::empty({0, config_.hidden_size}, at::TensorOptions().dtype(compute_dtype_).device(device_));
  if (p0 + n > state->max_tokens)
    throw Error(fmt::format("mistral: decoding {} more token(s) at position {} exceeds the "
                            "max_tokens ({}) given to start_decode", n, p0, state->max_tokens),
                "start decoding with a larger max_tokens");
  at::NoGradGuard no_grad;

  const auto long_opts = at::TensorOptions().dtype(at::kLong).device(device_);
  const int64_t past_start = std::max<int64_t>(0, p0 - cap);
  const at::Tensor positions = at::arange(p0, p0 + n, long_opts);
  const at::Tensor key_positions = at::arange(past_start, p0 + n, long_opts);
  auto ctx = std::make_shared<PassContext>();
  AttentionMaskRule rule{positions,
                         key_positions,
                         positions.unsqueeze(0),
                         key_positions.unsqueeze(0),
                         at::zeros({1, n}, long_opts),
                         at::zeros({1, key_positions.size(0)}, long_opts),
                         config_.sliding_window};
  ctx->plan = std::make_shared<AttentionPlan>(std::move(rule), options_.attention_chunk);
  std::tie(ctx->cos, ctx->sin) = rotary_.cos_sin(positions.unsqueeze(0), compute_dtype_);

  // The last min(n, capacity) new entries go into the ring.
  const int64_t kept = std::min(n, cap);
  const at::Tensor slots = at::remainder(positions.narrow(0, n - kept, kept), cap);
  at::Tensor h = embed(tokens);
  for (size_t i = 0; i < layers_.size(); ++i) {
    at::Tensor past_k, past_v, new_k, new_v;
    if (p0 > past_start) {
      past_k = state->cached(state->keys[i], past_start);
      past_v = state->cached(state->values[i], past_start);
    }
    h = layer_forward(layers_[i], h, *ctx, past_k, past_v, &new_k, &new_v);
    state->keys[i].index_copy_(2, slots, new_k.narrow(2, n - kept, kept));
    state->values[i].index_copy_(2, slots, new_v.narrow(2, n - kept, kept));
  }
  state->position_ += n;
  return rms_norm(h, final_norm_, config_.rms_norm_eps).view({n, config_.hidden_size});
}

}  // namespace mftk::mistral
