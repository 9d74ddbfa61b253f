// The seam between models, quantizers and adapters: named linear slots.
//
// defines: mftk::LinearOp, mftk::LinearSlot, mftk::make_dense_linear, mftk::cpu_has_native_bf16
//
// A model exposes every linear layer under its Hugging Face module name
// ("model.layers.7.self_attn.k_proj", "lm_head") as a LinearSlot. The slot
// owns a LinearOp that computes y = x W^T (+ b). A quantizer replaces the op
// with one that stores W packed and dequantises on the fly; an adapter wraps
// the op it finds (LoRA: y = inner(x) + s * B(A(x))). Neither knows the model,
// and the model knows neither: it only ever calls slot.op->forward(x).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include <c10/core/ScalarType.h>

#include "mftk/tensor.h"

namespace mftk {

class LinearOp {
 public:
  virtual ~LinearOp() = default;
  // x: [..., in_features] -> [..., out_features], in x's dtype.
  virtual at::Tensor forward(const at::Tensor& x) = 0;
  // The effective weight [out, in] as a dense tensor of `dtype`
  // (dequantised, adapters folded in). Used by merge and export.
  virtual at::Tensor dense_weight(at::ScalarType dtype) const = 0;
  // Tensors this op holds that an optimizer may train, with names relative
  // to the slot ("weight", "lora_A.weight" ...).
  virtual NamedTensors parameters() { return {}; }
  // Bytes of storage this op holds for its weights.
  virtual int64_t storage_bytes() const = 0;
  // "dense bf16", "nf4(64)", "lora(r=8) over nf4(64)".
  virtual std::string describe() const = 0;
  // Training or evaluation (dropout on or off). Model::set_training calls it
  // on every slot's op; an op that wraps another passes it on.
  virtual void set_training(bool on) { (void)on; }
};

struct LinearSlot {
  std::string name;  // Hugging Face module path, without ".weight"
  int64_t in_features = 0;
  int64_t out_features = 0;
  std::shared_ptr<LinearOp> op;

  at::Tensor forward(const at::Tensor& x) const { return op->forward(x); }
};

// The plain op every slot starts with: y = x W^T (+ b). W keeps its dtype.
// The matmul runs in W's dtype (x cast to it, the result cast back) where
// that dtype has native matmul support; a bf16 W with fp32 x on a CPU
// without it (no avx512_bf16 / AMX) is widened to fp32 for the matmul
// instead, since emulated bf16 GEMM there is ~25x slower than fp32.
std::shared_ptr<LinearOp> make_dense_linear(at::Tensor weight, at::Tensor bias = {});

// Whether bf16 matmuls on this CPU run on native instructions (oneDNN with
// avx512_bf16 or AMX), checked once at run time.
bool cpu_has_native_bf16();

}  // namespace mftk
