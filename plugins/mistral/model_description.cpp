// The Mistral model describing itself through the SDK (mftk/model.h): the
// tensor table exporters place tensors by, and what `mftk init` asks a model
// plugin for (presets, their config.json, random weights). Names and shapes
// come from tensor_names.cpp, presets from model_presets.cpp: one copy each.
#include <filesystem>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "mistral_model.h"
#include "model_presets.h"
#include "tensor_names.h"
#include "mftk/error.h"
#include "mftk/output_path.h"
#include "mftk/safetensors.h"

namespace mftk::mistral {

namespace fs = std::filesystem;

namespace {

mftk::TensorRole sdk_role(TensorRole role) {
  switch (role) {
    case TensorRole::embed_tokens: return mftk::TensorRole::embedding;
    case TensorRole::q_proj: return mftk::TensorRole::attn_q;
    case TensorRole::k_proj: return mftk::TensorRole::attn_k;
    case TensorRole::v_proj: return mftk::TensorRole::attn_v;
    case TensorRole::o_proj: return mftk::TensorRole::attn_output;
    case TensorRole::gate_proj: return mftk::TensorRole::ffn_gate;
    case TensorRole::up_proj: return mftk::TensorRole::ffn_up;
    case TensorRole::down_proj: return mftk::TensorRole::ffn_down;
    case TensorRole::input_norm: return mftk::TensorRole::attn_norm;
    case TensorRole::post_attention_norm: return mftk::TensorRole::ffn_norm;
    case TensorRole::final_norm: return mftk::TensorRole::output_norm;
    case TensorRole::lm_head: return mftk::TensorRole::output;
  }
  return mftk::TensorRole::other;
}

// The order `mftk init` has always drawn random weights in (the bytes for a
// seed depend on it): per layer the attention norm first, then attention,
// the MLP norm, the MLP. Not the state-dict order of tensor_name_table.
constexpr TensorRole kInitLayerOrder[] = {
    TensorRole::input_norm, TensorRole::q_proj, TensorRole::k_proj, TensorRole::v_proj, TensorRole::o_proj,
    TensorRole::post_attention_norm, TensorRole::gate_proj, TensorRole::up_proj, TensorRole::down_proj,
};

bool is_norm(TensorRole r) {
  return r == TensorRole::input_norm || r == TensorRole::post_attention_norm || r == TensorRole::final_norm;
}

}  // namespace

ModelArchitecture MistralModel::architecture() const {
  if (!config_loaded_) throw Error("mistral: architecture() called before load_config()");
  ModelArchitecture a;
  for (auto& ct : checkpoint_tensors(config_))
    a.tensors.push_back({ct.name, sdk_role(ct.role), ct.layer, ct.shape, tensor_name_entry(ct.role).is_linear});
  a.head_slot = hf_module_name(TensorRole::lm_head);
  a.embedding = hf_tensor_name(TensorRole::embed_tokens);
  return a;
}

std::vector<ModelPreset> MistralModel::presets() const { return mistral_presets(); }

std::string MistralModel::preset_config(const std::string& preset, int64_t vocab_size) const {
  return mistral_preset_config(preset, vocab_size).dump(2) + "\n";
}

int64_t MistralModel::write_random_weights(const RandomWeightsJob& job) {
  if (!config_loaded_) load_config(job.dir);
  struct Planned {
    std::string name;
    std::vector<int64_t> shape;
    bool norm;
  };
  std::vector<Planned> plan;
  auto add = [&](TensorRole r, int64_t layer) {
    plan.push_back({hf_tensor_name(r, layer), tensor_shape(r, config_), is_norm(r)});
  };
  add(TensorRole::embed_tokens, -1);
  for (int64_t l = 0; l < config_.num_hidden_layers; ++l)
    for (TensorRole r : kInitLayerOrder) add(r, l);
  add(TensorRole::final_norm, -1);
  if (!config_.tie_word_embeddings) add(TensorRole::lm_head, -1);

  // Shards by huggingface_hub's split rule: a new file when the next tensor
  // would push this one over max_shard_bytes.
  const int64_t elem = int64_t(c10::elementSize(job.dtype));
  std::vector<std::vector<const Planned*>> shards(1);
  uint64_t shard_bytes = 0, total_bytes = 0;
  int64_t params = 0;
  for (const auto& t : plan) {
    int64_t n = 1;
    for (auto d : t.shape) n *= d;
    params += n;
    const uint64_t bytes = uint64_t(n * elem);
    total_bytes += bytes;
    if (!shards.back().empty() && shard_bytes + bytes > job.max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(&t);
    shard_bytes += bytes;
  }
  const double stddev = config_.initializer_range;
  at::Generator gen = at::detail::createCPUGenerator(job.seed);
  nlohmann::json weight_map = nlohmann::json::object();
  for (size_t s = 0; s < shards.size(); ++s) {
    const std::string file = shards.size() == 1 ? "model.safetensors"
                                                : fmt::format("model-{:05d}-of-{:05d}.safetensors", s + 1, shards.size());
    std::vector<SafetensorsWriter::Decl> decls;
    for (const auto* t : shards[s]) decls.push_back({t->name, job.dtype, t->shape});
    SafetensorsWriter writer((fs::path(job.dir) / file).string(), decls);
    for (const auto* t : shards[s]) {
      at::Tensor w = t->norm ? at::ones(t->shape, at::kFloat)
                             : at::empty(t->shape, at::kFloat).normal_(0.0, stddev, gen);
      writer.write(t->name, w.to(job.dtype));
      weight_map[t->name] = file;
    }
    writer.finish();
  }
  if (shards.size() > 1) {
    nlohmann::json index = {{"metadata", {{"total_size", total_bytes}}}, {"weight_map", weight_map}};
    write_file_atomic((fs::path(job.dir) / "model.safetensors.index.json").string(), index.dump(2) + "\n");
  }
  return params;
}

}  // namespace mftk::mistral
