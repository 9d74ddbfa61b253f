// Nf4Quantizer (see nf4_quantizer.h).
#include "nf4_quantizer.h"

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "mftk/error.h"
#include "mftk/log.h"
#include "nf4_checkpoint.h"
#include "nf4_kernels.h"
#include "nf4_linear.h"
#include "nf4_tensor.h"

namespace mftk::nf4 {

std::vector<KeySpec> nf4_keys() {
  return {
      KeySpec::integer("blocksize", 64,
                       "values per absmax block: 32, 64 (bitsandbytes' and QLoRA's), 128, ..., 4096")
          .range(kMinBlocksize, kMaxBlocksize),
      KeySpec::boolean("double_quant", false,
                       "quantise the absmax values too (bnb_4bit_use_double_quant): ~0.37 bit/param less"),
      KeySpec::string("compute_dtype", std::string("auto"),
                      "dtype the weight is dequantised to for each matmul; auto = the model's")
          .one_of({"auto", "f32", "bf16"}),
      KeySpec::strings("skip_modules", {"lm_head"},
                       "linear layers left unquantised: a name, or its ending after a '.'"),
  };
}

Nf4Options nf4_options_from_config(const Config& config) {
  Nf4Options o;
  o.blocksize = config.get_int("blocksize");
  if (!is_bitsandbytes_blocksize(o.blocksize))
    config.fail("blocksize", fmt::format("{} is not a power of two between 32 and 4096", o.blocksize),
                "QLoRA uses 64");
  o.double_quant = config.get_bool("double_quant");
  const std::string& dtype = config.get_string("compute_dtype");
  if (dtype == "f32") o.compute_dtype = at::kFloat;
  else if (dtype == "bf16") o.compute_dtype = at::kBFloat16;
  o.skip_modules = config.get_strings("skip_modules");
  for (const auto& m : o.skip_modules)
    if (m.empty()) config.fail("skip_modules", "holds an empty name", "write module names such as \"lm_head\"");
  return o;
}

bool matches_module(const std::string& name, const std::string& module) {
  if (name == module) return true;
  return name.size() > module.size() && name.compare(name.size() - module.size(), module.size(), module) == 0 &&
         name[name.size() - module.size() - 1] == '.';
}

Nf4Quantizer::Nf4Quantizer(Nf4Options options) : options_(std::move(options)) {
  if (!is_bitsandbytes_blocksize(options_.blocksize))
    throw UsageError(fmt::format("nf4: blocksize {} is not a power of two between 32 and 4096", options_.blocksize),
                     "QLoRA uses 64");
}

bool Nf4Quantizer::reads_stored_format(const std::string& quantization_config) const {
  const auto q = nlohmann::json::parse(quantization_config, nullptr, /*allow_exceptions=*/false);
  if (q.is_discarded() || !q.is_object()) return false;
  // bitsandbytes' own default quant type is fp4, so a missing one is not NF4.
  return q.value("quant_method", std::string()) == "bitsandbytes" && q.value("load_in_4bit", false) &&
         q.value("bnb_4bit_quant_type", std::string("fp4")) == "nf4";
}

bool Nf4Quantizer::wants(const std::string& slot_name) const {
  for (const auto& m : options_.skip_modules)
    if (matches_module(slot_name, m)) return false;
  return true;
}

std::optional<QuantizedSlotPlan> Nf4Quantizer::plan_slot(const std::string& slot_name, int64_t out_features,
                                                        int64_t in_features) const {
  (void)slot_name;  // every slot it wants is stored alike
  // What quantize_nf4 stores (Nf4Tensor::storage_bytes): two weights per
  // byte and an fp32 absmax per block, or with double quantisation a code
  // byte per block plus an fp32 absmax per kNestedBlocksize codes.
  const int64_t n = out_features * in_features;
  const int64_t blocks = (n + options_.blocksize - 1) / options_.blocksize;
  const int64_t scales =
      options_.double_quant ? blocks + (blocks + kNestedBlocksize - 1) / kNestedBlocksize * 4 : blocks * 4;
  return QuantizedSlotPlan{(n + 1) / 2 + scales,
                           fmt::format("NF4 (block {}{})", options_.blocksize,
                                       options_.double_quant ? ", double quant" : "")};
}

std::shared_ptr<LinearOp> Nf4Quantizer::quantize(const std::string& slot_name, const at::Tensor& weight,
                                                 at::ScalarType compute_dtype) {
  if (weight.dim() != 2)
    throw Error(fmt::format("nf4: slot '{}' has a {}-D weight; a linear weight is [out, in]", slot_name,
                            weight.dim()));
  auto q = std::make_shared<Nf4Tensor>(quantize_nf4(weight, options_.blocksize, options_.double_quant));
  auto op = make_nf4_linear(q, options_.compute_dtype.value_or(compute_dtype));
  ++slots_;
  bytes_in_ += weight.numel() * int64_t(weight.element_size());
  bytes_out_ += q->storage_bytes();
  log::debug("nf4: {} [{}, {}] {} -> {} ({} bytes)", slot_name, weight.size(0), weight.size(1),
             c10::toString(weight.scalar_type()), op->describe(), q->storage_bytes());
  return op;
}

std::shared_ptr<LinearOp> Nf4Quantizer::load_quantized(const std::string& slot_name,
                                                       const CheckpointReader& checkpoint,
                                                       at::ScalarType compute_dtype) {
  // No folder name to give: the model loading `checkpoint` adds it to errors.
  std::shared_ptr<const Nf4Tensor> stored = read_nf4_module(checkpoint, slot_name, "");
  if (!stored) return nullptr;
  if (stored->blocksize != options_.blocksize || stored->double_quant() != options_.double_quant)
    log::debug("nf4: {} is stored with blocksize {}{}; kept as stored", slot_name, stored->blocksize,
               stored->double_quant() ? " and double quant" : "");
  ++slots_;
  bytes_out_ += stored->storage_bytes();
  return make_nf4_linear(std::move(stored), options_.compute_dtype.value_or(compute_dtype));
}

}  // namespace mftk::nf4
