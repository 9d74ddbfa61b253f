// Quantizer plugins: replace frozen base weights with packed storage.
//
// defines: mftk::Quantizer
#pragma once

#include <memory>
#include <string>

#include "mftk/linear_slot.h"

namespace mftk {

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
};

}  // namespace mftk
