// Model plugins: a causal LM loaded from a Hugging Face checkpoint folder.
//
// defines: mftk::ModelShape, mftk::TensorRole, mftk::ModelTensor, mftk::ModelArchitecture,
//          mftk::ModelPreset, mftk::RandomWeightsJob, mftk::LoadOptions, mftk::DecodeState,
//          mftk::Model, mftk::open_model
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include "mftk/batch.h"
#include "mftk/error.h"
#include "mftk/linear_slot.h"
#include "mftk/tensor.h"

namespace mftk {

class Quantizer;

// The hyperparameters the core needs (memory plans, generation, export).
// Plain data; the model plugin fills it from config.json.
struct ModelShape {
  std::string architecture;  // "MistralForCausalLM"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;  // < num_heads means grouped-query attention
  int64_t head_dim = 0;
  int64_t max_position_embeddings = 0;
  std::optional<int64_t> sliding_window;  // none: plain causal attention
  double rope_theta = 10000.0;
  double rms_norm_eps = 1e-5;
  bool tie_word_embeddings = false;
  at::ScalarType checkpoint_dtype = at::kFloat;
};

// What a tensor does in a decoder-only transformer, so exporters can place it
// (llama.cpp names, AWQ's scaling groups, RoPE row order) without knowing the
// plugin's names. `other`: no standard place; exporters refuse it.
enum class TensorRole {
  embedding, attn_norm, attn_q, attn_k, attn_v, attn_output,
  ffn_norm, ffn_gate, ffn_up, ffn_down, output_norm, output, other,
};

struct ModelTensor {
  std::string name;            // Hugging Face checkpoint name
  TensorRole role = TensorRole::other;
  int64_t layer = -1;          // decoder layer; -1 for tensors outside the layers
  std::vector<int64_t> shape;  // [out, in] for linears
  bool in_slot = false;        // the weight of the LinearSlot named `name` less ".weight"
};

// The model's description of itself, from config.json alone (valid after
// load_config). Exporters and the core read this instead of knowing a model.
// The defaults are Hugging Face's *ForCausalLM names; an empty table means
// "not described", which exporters refuse.
struct ModelArchitecture {
  std::vector<ModelTensor> tensors;  // every checkpoint tensor, state-dict order; no head when tied
  std::string head_slot = "lm_head";                   // the LinearSlot that makes the logits
  std::string embedding = "model.embed_tokens.weight";  // the tensor a tied head shares
};

// A named shape `mftk init` can write.
struct ModelPreset {
  std::string name;
  int64_t vocab_size = 0;      // 0: the tokenizer's size; else the tokenizer must have this many
  std::string tokenizer_hint;  // for a fixed vocabulary: which tokenizer to pass
};

// `mftk init`: random weights for the config.json already in `dir`.
struct RandomWeightsJob {
  std::string dir;
  uint64_t seed = 0;
  at::ScalarType dtype = at::kFloat;
  uint64_t max_shard_bytes = 0;  // split into model-0000i-of-0000n + index above this
};

struct LoadOptions {
  std::string path;                       // checkpoint folder
  std::optional<at::ScalarType> weight_dtype;  // none: keep the checkpoint's
  at::ScalarType compute_dtype = at::kFloat;
  at::Device device = at::kCPU;
  Quantizer* quantizer = nullptr;         // applied slot by slot while streaming
};

// `mftk plan` asks a model what one micro-batch's forward keeps for backward.
struct ActivationQuery {
  int64_t rows = 0;              // micro-batch rows
  int64_t row_len = 0;           // tokens per row
  int64_t compute_bytes = 4;     // bytes per element of the compute dtype
  bool fused_attention = false;  // a GPU's fused attention (no probabilities kept)
};
struct ActivationPlan {
  int64_t layer_bytes = 0;        // kept by one decoder layer for backward
  int64_t layer_input_bytes = 0;  // one layer's input: all a checkpointed layer keeps
  int64_t shared_bytes = 0;       // held once for the whole step (mask caches)
  int64_t backward_bytes = 0;     // one layer's backward working set, live for a moment
  std::string detail;             // what the figures count, for the plan's reader
};

// Per-sequence inference state (KV cache); owned by the caller.
class DecodeState {
 public:
  virtual ~DecodeState() = default;
  virtual int64_t position() const = 0;  // tokens consumed so far
};

class Model {
 public:
  virtual ~Model() = default;

  // Reads config.json (no weights) so shape() is valid.
  virtual void load_config(const std::string& path) = 0;
  // Reads the weights, mapping instead of copying where dtypes allow.
  virtual void load(const LoadOptions& options) = 0;
  virtual const ModelShape& shape() const = 0;

  // Every linear layer, by Hugging Face module name, in checkpoint order.
  virtual std::vector<LinearSlot*> linear_slots() = 0;
  // Every tensor that is not inside a slot (embeddings, norms), HF names.
  virtual NamedTensors named_parameters() = 0;

  // Final hidden states [B, T, hidden] (after the last norm), following the
  // attention rule in batch.h.
  virtual at::Tensor forward(const Batch& batch) = 0;
  // hidden [..., hidden] -> logits [..., vocab].
  virtual at::Tensor logits(const at::Tensor& hidden) = 0;

  // Incremental decoding with a KV cache (honours the sliding window).
  virtual std::unique_ptr<DecodeState> start_decode(int64_t max_tokens) = 0;
  // ids: [n] new tokens of one sequence -> hidden [n, hidden].
  virtual at::Tensor decode(DecodeState& state, const at::Tensor& ids) = 0;

  // Recompute each decoder layer in backward instead of keeping activations.
  virtual void set_gradient_checkpointing(bool on) = 0;
  // Training or evaluation; reaches every slot's op (LinearOp::set_training),
  // which is how an adapter's dropout learns the mode.
  virtual void set_training(bool on) = 0;
  virtual at::ScalarType compute_dtype() const = 0;

  // The tensor table, head and embedding (valid after load_config).
  virtual ModelArchitecture architecture() const { return {}; }

  // `mftk init`: the presets, a preset's config.json text (vocab_size: the
  // tokenizer's), and random weights (returns the parameter count; the
  // config.json in job.dir has been read with load_config first).
  virtual std::vector<ModelPreset> presets() const { return {}; }
  virtual std::string preset_config(const std::string& preset, int64_t vocab_size) const {
    (void)vocab_size;
    throw UsageError("this model plugin has no presets (asked for '" + preset + "')");
  }
  virtual int64_t write_random_weights(const RandomWeightsJob& job) {
    throw UsageError("this model plugin cannot write random weights (for " + job.dir + ")");
  }

  // Planning hook (`mftk plan`): the activations a training step keeps
  // (valid after load_config). None (the default): the plan says it has no
  // figure for them.
  virtual std::optional<ActivationPlan> plan_activations(const ActivationQuery& query) const {
    (void)query;
    return std::nullopt;
  }
};

// Host service (mftk's core implements it): the model plugin `plugin` (empty:
// the default model plugin) made through the registry for checkpoint `dir`,
// with its config.json read; weights not loaded. Exporters use it when
// ExportJob::model is null.
std::unique_ptr<Model> open_model(const std::string& dir, const std::string& plugin = {});

}  // namespace mftk
