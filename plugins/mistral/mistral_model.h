// MistralForCausalLM on libtorch: mftk::Model for Hugging Face Mistral
// checkpoints, computing what transformers computes for the same weights.
//
// defines: mftk::mistral::MistralModelOptions, mftk::mistral::MistralModel
//
// Three steps, as llama.cpp's model files: read hparams (load_config ->
// MistralConfig), load tensors (load: map the safetensors, build the linear
// slots), forward (embeddings, L x [RMSNorm, GQA with RoPE and the sliding
// window, RMSNorm, SwiGLU], final RMSNorm; logits() applies lm_head).
//
// Weights loaded in the checkpoint's dtype are zero-copy views of the
// read-only file mapping: anything that updates a base weight in place
// (full fine-tuning, merging an adapter into a dense op) must clone it first.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "layers.h"
#include "mistral_config.h"
#include "mftk/model.h"

namespace mftk::mistral {

struct AttentionMaskRule;
class AttentionPlan;

// Settings from the recipe's [model] table. A value written there wins over
// the host's LoadOptions; LoadOptions fill in what the recipe leaves unset.
struct MistralModelOptions {
  std::string path;                              // checkpoint folder
  std::optional<at::ScalarType> weight_dtype;    // none: LoadOptions, else keep the checkpoint's
  std::optional<at::ScalarType> compute_dtype;   // none: LoadOptions::compute_dtype
  int64_t attention_chunk = 128;                 // query rows per attention block
};

class MistralModel final : public Model {
 public:
  explicit MistralModel(MistralModelOptions options = {});
  ~MistralModel() override;

  void load_config(const std::string& path) override;
  void load(const LoadOptions& options) override;
  const ModelShape& shape() const override { return shape_; }

  std::vector<LinearSlot*> linear_slots() override;
  NamedTensors named_parameters() override;

  at::Tensor forward(const Batch& batch) override;
  at::Tensor logits(const at::Tensor& hidden) override;

  std::unique_ptr<DecodeState> start_decode(int64_t max_tokens) override;
  at::Tensor decode(DecodeState& state, const at::Tensor& ids) override;

  void set_gradient_checkpointing(bool on) override { gradient_checkpointing_ = on; }
  void set_training(bool on) override;  // and every slot's op
  at::ScalarType compute_dtype() const override { return compute_dtype_; }

  // model_description.cpp: the tensor table and `mftk init`'s presets and weights.
  ModelArchitecture architecture() const override;
  std::vector<ModelPreset> presets() const override;
  std::string preset_config(const std::string& preset, int64_t vocab_size) const override;
  int64_t write_random_weights(const RandomWeightsJob& job) override;
  // activation_plan.cpp: what a training step keeps for backward (`mftk plan`).
  std::optional<ActivationPlan> plan_activations(const ActivationQuery& query) const override;

  const MistralConfig& config() const { return config_; }
  // Query rows per attention block (tests compare block sizes).
  void set_attention_chunk(int64_t rows) { options_.attention_chunk = rows; }

 private:
  struct DecoderLayer {
    at::Tensor input_norm;           // [H]
    at::Tensor post_attention_norm;  // [H]
    LinearSlot q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj;
  };
  // What every layer of one pass shares: RoPE tables and the attention mask.
  struct PassContext;

  void require_loaded(const char* what) const;
  at::Tensor embed(const at::Tensor& ids) const;
  // One decoder layer; keys/values of this pass are returned through
  // new_k / new_v when non-null (the KV cache), and `past_k`/`past_v`
  // (may be undefined) are prepended to them for attention.
  at::Tensor layer_forward(const DecoderLayer& layer, const at::Tensor& x, const PassContext& ctx,
                           const at::Tensor& past_k, const at::Tensor& past_v, at::Tensor* new_k,
                           at::Tensor* new_v) const;
  std::vector<at::Tensor> layer_trainable_tensors(const DecoderLayer& layer) const;

  MistralModelOptions options_;
  MistralConfig config_;
  ModelShape shape_;
  bool config_loaded_ = false;
  bool loaded_ = false;

  at::ScalarType compute_dtype_ = at::kFloat;
  at::Device device_ = at::kCPU;
  at::Tensor embed_tokens_;  // [V, H]
  std::vector<DecoderLayer> layers_;
  at::Tensor final_norm_;    // [H]
  LinearSlot lm_head_;
  RotaryEmbedding rotary_;
  double attention_scale_ = 1.0;

  bool gradient_checkpointing_ = false;
  bool training_ = false;
};

}  // namespace mftk::mistral
