// Quantizer plugins: replace frozen base weights with packed storage.
//
// defines: mftk::QuantizedSlotPlan, mftk::Quantizer
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "mftk/linear_slot.h"

namespace mftk {

class CheckpointReader;

// What a quantizer stores for one slot, for `mftk plan`.
struct QuantizedSlotPlan {
  int64_t bytes = 0;   // packed weights plus their scales
  std::string format;  // "NF4 (block 64, double quant)"
};

class Quantizer {
 public:
  virtual ~Quantizer() = default;
  // Whether this slot is quantised (norms, embeddings and lm_head usually not).
  virtual bool wants(const std::string& slot_name) const = 0;
  // weight: [out, in] in the checkpoint's dtype (possibly a view of a
  // mapped file). Returns an op that dequantises on the fly, gives the input
  // gradient in backward, and never a gradient for the frozen weight.
  virtual std::shared_ptr<LinearOp> quantize(const std::string& slot_name,
                                             const at::Tensor& weight,
                                             at::ScalarType compute_dtype) = 0;
  // A checkpoint saved already quantised in this quantizer's format: the
  // slot's op built from the stored tensors as they are (no re-quantising),
  // or nullptr when the checkpoint holds this slot dense. The model calls it
  // before it checks the slot's "<slot>.weight" against config.json, and
  // leaves alone every "<slot>.weight.*" tensor of a slot it returned.
  virtual std::shared_ptr<LinearOp> load_quantized(const std::string& slot_name,
                                                   const CheckpointReader& checkpoint,
                                                   at::ScalarType compute_dtype) {
    (void)slot_name, (void)checkpoint, (void)compute_dtype;
    return nullptr;
  }
  // Whether load_quantized reads a checkpoint whose config.json says it was
  // saved quantised: `quantization_config` is that object as JSON text. The
  // core asks every registered quantizer (default keys) and loads the folder
  // with the one that claims it; a format no quantizer claims is refused.
  virtual bool reads_stored_format(const std::string& quantization_config) const {
    (void)quantization_config;
    return false;
  }
  // Planning hook: the storage quantize() would give a slot it wants() of
  // [out_features, in_features]. None (the default): no figure.
  virtual std::optional<QuantizedSlotPlan> plan_slot(const std::string& slot_name, int64_t out_features,
                                                     int64_t in_features) const {
    (void)slot_name, (void)out_features, (void)in_features;
    return std::nullopt;
  }
};

}  // namespace mftk
