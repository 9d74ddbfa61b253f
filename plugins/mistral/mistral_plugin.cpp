// libmftk-mistral: registers the "mistral" model component.
#include <memory>

#include "mistral_config.h"
#include "mistral_model.h"
#include "mftk/plugin.h"

namespace {

using mftk::KeySpec;

std::unique_ptr<mftk::Model> make_mistral(const mftk::Config& config) {
  mftk::mistral::MistralModelOptions options;
  options.path = config.get_string("path");
  const std::string& dtype = config.get_string("dtype");
  if (dtype != "auto") options.weight_dtype = mftk::mistral::dtype_from_torch_name(dtype, "dtype");
  // Only a value the recipe wrote overrides the host's LoadOptions.
  if (config.is_set("compute_dtype"))
    options.compute_dtype = mftk::mistral::dtype_from_torch_name(config.get_string("compute_dtype"),
                                                                 "compute_dtype");
  options.attention_chunk = config.get_int("attention_chunk");
  if (options.attention_chunk <= 0)
    config.fail("attention_chunk", "must be positive", "128 suits most CPUs");
  return std::make_unique<mftk::mistral::MistralModel>(std::move(options));
}

void register_components(mftk::Registrar& registrar) {
  registrar.add_model(
      {mftk::Kind::model,
       "mistral",
       "Mistral causal LM (MistralForCausalLM) from a Hugging Face checkpoint folder",
       {
           KeySpec::string("path", std::nullopt,
                           "checkpoint folder: config.json + model.safetensors (or shards)")
               .required(),
           KeySpec::string("dtype", std::string("auto"),
                           "weight dtype in memory; auto keeps the checkpoint's (zero-copy)")
               .one_of({"auto", "f32", "bf16", "f16"}),
           KeySpec::string("compute_dtype", std::string("f32"),
                           "activation dtype; bf16 halves activation memory, f32 matches HF fp32")
               .one_of({"f32", "bf16"}),
           KeySpec::integer("attention_chunk", 128,
                            "query rows per attention block; smaller uses less memory")
               .range(1, 1 << 20),
       }},
      make_mistral);
}

}  // namespace

MFTK_PLUGIN("mistral", "0.1.0", register_components)
