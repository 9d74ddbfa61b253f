// Model plugins: a causal LM loaded from a Hugging Face checkpoint folder.
//
// defines: mftk::ModelShape, mftk::LoadOptions, mftk::DecodeState, mftk::Model
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include "mftk/batch.h"
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

struct LoadOptions {
  std::string path;                       // checkpoint folder
  std::optional<at::ScalarType> weight_dtype;  // none: keep the checkpoint's
  at::ScalarType compute_dtype = at::kFloat;
  at::Device device = at::kCPU;
  Quantizer* quantizer = nullptr;         // applied slot by slot while streaming
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
  virtual void set_training(bool on) = 0;
  virtual at::ScalarType compute_dtype() const = 0;
};

}  // namespace mftk
