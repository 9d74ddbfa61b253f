// Nf4Linear: the linear op a quantised slot holds. y = x W^T with W
// dequantised to the compute dtype on every call; backward dequantises
// again for the input gradient and never gives the frozen weight one.
//
// defines: mftk::nf4::Nf4Linear, mftk::nf4::make_nf4_linear
#pragma once

#include <memory>
#include <string>

#include <c10/core/ScalarType.h>

#include "mftk/linear_slot.h"
#include "nf4_tensor.h"

namespace mftk::nf4 {

class Nf4Linear final : public LinearOp {
 public:
  // compute_dtype: Float or BFloat16; x is cast to it for the matmul and the
  // result cast back to x's dtype.
  Nf4Linear(std::shared_ptr<const Nf4Tensor> weight, at::ScalarType compute_dtype);

  at::Tensor forward(const at::Tensor& x) override;
  at::Tensor dense_weight(at::ScalarType dtype) const override;
  // No trainable tensors: the packed weight is frozen.
  NamedTensors parameters() override { return {}; }
  int64_t storage_bytes() const override { return weight_->storage_bytes(); }
  std::string describe() const override;  // "nf4(64)", "nf4(64, dq)"

  const Nf4Tensor& weight() const { return *weight_; }
  const std::shared_ptr<const Nf4Tensor>& shared_weight() const { return weight_; }
  at::ScalarType compute_dtype() const { return compute_dtype_; }

 private:
  std::shared_ptr<const Nf4Tensor> weight_;
  at::ScalarType compute_dtype_;
};

std::shared_ptr<LinearOp> make_nf4_linear(std::shared_ptr<const Nf4Tensor> weight, at::ScalarType compute_dtype);

}  // namespace mftk::nf4
