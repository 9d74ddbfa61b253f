// The dense op: a bf16 frozen weight meeting fp32 activations. Without
// native bf16 matmul the weight is widened per matmul (forward and
// backward); the results must equal the fp32 formula written out.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>

#include "mftk/linear_slot.h"

namespace {

TEST(DenseLinear, Bf16WeightWithFp32InputMatchesTheWidenedFormulaAndTrainsOnlyTheInput) {
  at::manual_seed(3);
  const at::Tensor w = (at::randn({24, 40}) * 0.1).to(at::kBFloat16);  // frozen
  const at::Tensor b = at::randn({24}).to(at::kBFloat16);
  auto op = mftk::make_dense_linear(w, b);
  const at::Tensor x = at::randn({3, 5, 40}).requires_grad_(true);
  const at::Tensor y = op->forward(x);
  ASSERT_EQ(y.scalar_type(), at::kFloat);
  const at::Tensor upstream = at::randn({3, 5, 24});
  torch::autograd::backward({y}, {upstream});

  // The formula: y = x W^T + b, dL/dx = g W, in fp32 over the bf16 values.
  const at::Tensor wf = w.to(at::kFloat), bf = b.to(at::kFloat);
  const at::Tensor y_ref = at::matmul(x.detach(), wf.t()) + bf;
  const at::Tensor gx_ref = at::matmul(upstream, wf);
  // Native bf16 CPUs run the matmul in bf16 instead: bf16 rounding of x.
  const double tol = mftk::cpu_has_native_bf16() ? 3e-2 : 1e-5;
  EXPECT_TRUE(at::allclose(y.detach(), y_ref, tol, tol)) << (y.detach() - y_ref).abs().max().item<double>();
  EXPECT_TRUE(at::allclose(x.grad(), gx_ref, tol, tol)) << (x.grad() - gx_ref).abs().max().item<double>();
  EXPECT_FALSE(w.grad().defined());
  EXPECT_EQ(op->describe(), "dense BFloat16");
}

// A wide weight is widened in blocks of output rows (64 MiB of fp32 each):
// 600 rows of 32768 are two blocks, and both passes must equal the formula.
TEST(DenseLinear, WideBf16WeightWidenedInRowBlocksEqualsTheFormula) {
  if (mftk::cpu_has_native_bf16()) GTEST_SKIP() << "this CPU runs bf16 matmuls natively; no widening";
  at::manual_seed(4);
  const at::Tensor w = (at::randn({600, 32768}) * 0.01).to(at::kBFloat16);
  auto op = mftk::make_dense_linear(w);
  const at::Tensor x = at::randn({2, 3, 32768}).requires_grad_(true);
  const at::Tensor y = op->forward(x);
  const at::Tensor upstream = at::randn({2, 3, 600});
  torch::autograd::backward({y}, {upstream});
  const at::Tensor wf = w.to(at::kFloat);
  EXPECT_TRUE(at::allclose(y.detach(), at::matmul(x.detach(), wf.t()), 1e-4, 1e-4));
  EXPECT_TRUE(at::allclose(x.grad(), at::matmul(upstream, wf), 1e-4, 1e-4));
  at::NoGradGuard no_grad;  // the inference path widens in blocks too
  EXPECT_TRUE(at::allclose(op->forward(x.detach()), at::matmul(x.detach(), wf.t()), 1e-4, 1e-4));
}

}  // namespace

