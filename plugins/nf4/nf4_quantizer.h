// The "nf4" quantizer: bitsandbytes NF4 (QLoRA's 4-bit base weights) on the
// model's linear slots, applied slot by slot while the model streams in.
//
// defines: mftk::nf4::Nf4Options, mftk::nf4::nf4_keys, mftk::nf4::nf4_options_from_config,
//          mftk::nf4::matches_module, mftk::nf4::Nf4Quantizer
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <c10/core/ScalarType.h>

#include "mftk/config.h"
#include "mftk/quantizer.h"

namespace mftk::nf4 {

// The recipe's [quantize] table, after validation.
struct Nf4Options {
  int64_t blocksize = 64;
  // transformers' BitsAndBytesConfig default (bnb_4bit_use_double_quant=False).
  bool double_quant = false;
  // none: the model's compute dtype.
  std::optional<at::ScalarType> compute_dtype;
  // Slots left dense: a slot is skipped when its name is one of these or
  // ends with "." + one of these ("lm_head", "mlp.down_proj").
  std::vector<std::string> skip_modules = {"lm_head"};
};

// blocksize, double_quant, compute_dtype, skip_modules.
std::vector<KeySpec> nf4_keys();
// Reads and checks a validated table (blocksize must be a power of two).
Nf4Options nf4_options_from_config(const Config& config);

// `name` is `module` or ends with "." + module.
bool matches_module(const std::string& name, const std::string& module);

class Nf4Quantizer final : public Quantizer {
 public:
  explicit Nf4Quantizer(Nf4Options options = {});

  bool wants(const std::string& slot_name) const override;
  // The bytes quantize() will hold for a slot of [out, in] (`mftk plan`).
  std::optional<QuantizedSlotPlan> plan_slot(const std::string& slot_name, int64_t out_features,
                                             int64_t in_features) const override;
  // Quantises `weight` (any float dtype, possibly a mapped view it does not
  // keep) into an Nf4Linear computing in options.compute_dtype, or in
  // `compute_dtype` (the model's) when that is not set.
  std::shared_ptr<LinearOp> quantize(const std::string& slot_name, const at::Tensor& weight,
                                     at::ScalarType compute_dtype) override;

  // A slot stored as bitsandbytes NF4 in `checkpoint` (a folder from
  // `mftk quantize` or transformers' save_pretrained) becomes an Nf4Linear
  // over the mapped tensors, with the blocksize and double quant it was
  // saved with; nullptr for a slot stored dense.
  std::shared_ptr<LinearOp> load_quantized(const std::string& slot_name, const CheckpointReader& checkpoint,
                                           at::ScalarType compute_dtype) override;
  // A bitsandbytes 4-bit NF4 quantization_config (what transformers and
  // `mftk quantize` write); not 8-bit, FP4 or another method.
  bool reads_stored_format(const std::string& quantization_config) const override;

  const Nf4Options& options() const { return options_; }
  int64_t slots_quantized() const { return slots_; }
  int64_t bytes_in() const { return bytes_in_; }    // of the weights as given
  int64_t bytes_out() const { return bytes_out_; }  // packed + absmax

 private:
  Nf4Options options_;
  int64_t slots_ = 0;
  int64_t bytes_in_ = 0;
  int64_t bytes_out_ = 0;
};

}  // namespace mftk::nf4
