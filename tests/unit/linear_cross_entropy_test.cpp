// The chunked head + cross-entropy against the plain formula: logits
// h W^T for every row at once, at::cross_entropy_loss (sum), autograd. The
// fused path (frozen head) and the fallback (trainable head) must both give
// its loss and its gradients, for any chunk size, in fp32 and over a bf16 head.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

#include "linear_cross_entropy.h"

namespace {

using mftk::core::linear_cross_entropy_sum;

struct Case {
  at::Tensor hidden_leaf;  // [n, H]
  at::Tensor weight;       // [V, H]
  at::Tensor targets;      // [n]
};

Case make_case(int64_t n, int64_t H, int64_t V, uint64_t seed) {
  at::manual_seed(seed);
  Case c;
  c.hidden_leaf = at::randn({n, H});
  c.weight = at::randn({V, H}) * 0.5;
  c.targets = at::randint(V, {n}, at::TensorOptions().dtype(at::kLong));
  return c;
}

// The reference: every logit at once, the library's cross-entropy, autograd.
at::Tensor reference_loss(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets) {
  const at::Tensor logits = at::matmul(hidden, weight.t()).to(at::kFloat);
  return at::cross_entropy_loss(logits, targets, {}, at::Reduction::Sum);
}

TEST(LinearCrossEntropy, FrozenHeadMatchesTheFormulaForEveryChunkSize) {
  const Case c = make_case(37, 16, 50, 1);
  // The hidden rows come out of an op, as in the model, and the loss is
  // scaled before backward, as the trainer divides by the step's tokens.
  const double scale = 0.37;
  at::Tensor x_ref = c.hidden_leaf.clone().requires_grad_(true);
  const at::Tensor ref = reference_loss(x_ref * 2.0, c.weight, c.targets);
  (ref * scale).backward();

  for (int64_t chunk : {1, 8, 36, 37, 1000}) {
    SCOPED_TRACE("chunk " + std::to_string(chunk));
    at::Tensor x = c.hidden_leaf.clone().requires_grad_(true);
    const at::Tensor loss = linear_cross_entropy_sum(
        x * 2.0, c.targets, [&](const at::Tensor& h) { return at::matmul(h, c.weight.t()); }, chunk, {});
    ASSERT_TRUE(loss.requires_grad());
    // The frozen head takes the fused path: the graph holds one node that
    // already knows the hidden-state gradient, not the logits.
    EXPECT_NE(loss.grad_fn()->name().find("FusedHeadCrossEntropy"), std::string::npos) << loss.grad_fn()->name();
    EXPECT_NEAR(loss.item<double>(), ref.item<double>(), 1e-4 * std::abs(ref.item<double>()));
    (loss * scale).backward();
    EXPECT_TRUE(at::allclose(x.grad(), x_ref.grad(), 1e-5, 1e-6))
        << "max |diff| " << (x.grad() - x_ref.grad()).abs().max().item<double>();
  }
}

TEST(LinearCrossEntropy, GradientIsSoftmaxMinusOneHotThroughTheHead) {
  // A hand-checkable case: one row, H = 1, W = [1, 2, 3]^T, h = 1, target 2.
  // logits (1, 2, 3); d loss / d h = sum_v (softmax_v - [v == 2]) W_v.
  const at::Tensor w = at::tensor({1.0f, 2.0f, 3.0f}).view({3, 1});
  at::Tensor h = at::ones({1, 1}).requires_grad_(true);
  const at::Tensor t = at::tensor({int64_t(2)});
  const at::Tensor loss =
      linear_cross_entropy_sum(h, t, [&](const at::Tensor& x) { return at::matmul(x, w.t()); }, 4, {});
  const double e1 = std::exp(1.0), e2 = std::exp(2.0), e3 = std::exp(3.0), z = e1 + e2 + e3;
  EXPECT_NEAR(loss.item<double>(), std::log(z) - 3.0, 1e-6);
  loss.backward();
  EXPECT_NEAR(h.grad().item<double>(), (e1 * 1 + e2 * 2 + e3 * 3) / z - 3.0, 1e-6);
}

TEST(LinearCrossEntropy, TrainableHeadGetsItsGradientToo) {
  const Case c = make_case(21, 8, 30, 2);
  at::Tensor w_ref = c.weight.clone().requires_grad_(true);
  at::Tensor x_ref = c.hidden_leaf.clone().requires_grad_(true);
  const at::Tensor ref = reference_loss(x_ref, w_ref, c.targets);
  ref.backward();

  // Fused with the head's weight listed, and the plain chunked path; both
  // with the loss scaled before backward (the head's gradient is kept in
  // forward, so the scale must still reach it).
  const double scale = 0.25;
  at::Tensor scaled_w_ref = w_ref.grad() * scale, scaled_x_ref = x_ref.grad() * scale;
  for (const bool fused : {true, false}) {
    SCOPED_TRACE(fused ? "fused" : "chunked");
    at::Tensor w = c.weight.clone().requires_grad_(true);
    at::Tensor x = c.hidden_leaf.clone().requires_grad_(true);
    const auto head = [&](const at::Tensor& h) { return at::matmul(h, w.t()); };
    const at::Tensor loss = fused ? linear_cross_entropy_sum(x, c.targets, head, 5, {w})
                                  : mftk::core::chunked_cross_entropy_sum(x, c.targets, head, 5);
    EXPECT_EQ(loss.grad_fn()->name().find("FusedHeadCrossEntropy") != std::string::npos, fused);
    EXPECT_NEAR(loss.item<double>(), ref.item<double>(), 1e-4 * std::abs(ref.item<double>()));
    (loss * scale).backward();
    ASSERT_TRUE(w.grad().defined());
    EXPECT_TRUE(at::allclose(w.grad(), scaled_w_ref, 1e-5, 1e-6));
    EXPECT_TRUE(at::allclose(x.grad(), scaled_x_ref, 1e-5, 1e-6));
  }
}

TEST(LinearCrossEntropy, OnlyTheHeadTrains) {
  // Frozen layers below: hidden needs no gradient, the head's weight does.
  const Case c = make_case(12, 8, 20, 5);
  at::Tensor w_ref = c.weight.clone().requires_grad_(true);
  reference_loss(c.hidden_leaf, w_ref, c.targets).backward();
  at::Tensor w = c.weight.clone().requires_grad_(true);
  const at::Tensor loss = linear_cross_entropy_sum(
      c.hidden_leaf, c.targets, [&](const at::Tensor& h) { return at::matmul(h, w.t()); }, 5, {w});
  loss.backward();
  ASSERT_TRUE(w.grad().defined());
  EXPECT_TRUE(at::allclose(w.grad(), w_ref.grad(), 1e-5, 1e-6));
}

TEST(LinearCrossEntropy, Bf16HeadTakesItsLogitsInFp32) {
  // bf16 hidden states and a bf16 head, widened to fp32 for the matmul as
  // mftk's dense op does: the loss comes back fp32 and the gradient in the
  // hidden states' dtype, equal to the full-logits reference but for the
  // gradient's own rounding to bf16 (2^-9 relative). The head is widened in
  // both, not left to a bf16 GEMM: libtorch 1.13's bf16 GEMM for small
  // shapes rounds as it accumulates (measured: 6 bf16 ulps apart for 6 rows
  // versus 19 on a CPU with avx512_bf16), which would test libtorch's kernel
  // choice, not this function.
  const Case c = make_case(19, 16, 40, 3);
  const at::Tensor w = c.weight.to(at::kBFloat16).to(at::kFloat);
  auto head = [&](const at::Tensor& h) { return at::matmul(h.to(at::kFloat), w.t()); };
  at::Tensor x_ref = c.hidden_leaf.to(at::kBFloat16).requires_grad_(true);
  const at::Tensor ref = at::cross_entropy_loss(head(x_ref), c.targets, {}, at::Reduction::Sum);
  ref.backward();

  at::Tensor x = c.hidden_leaf.to(at::kBFloat16).requires_grad_(true);
  const at::Tensor loss = linear_cross_entropy_sum(x, c.targets, head, 6, {});
  EXPECT_EQ(loss.scalar_type(), at::kFloat);
  EXPECT_NEAR(loss.item<double>(), ref.item<double>(), 1e-5 * std::abs(ref.item<double>()));
  loss.backward();
  ASSERT_EQ(x.grad().scalar_type(), at::kBFloat16);
  const at::Tensor diff = (x.grad().to(at::kFloat) - x_ref.grad().to(at::kFloat)).abs();
  EXPECT_TRUE(at::allclose(x.grad().to(at::kFloat), x_ref.grad().to(at::kFloat), 1e-2, 1e-4))
      << "max |diff| " << diff.max().item<float>() << ", max |reference| " << x_ref.grad().abs().max().item<float>();
}

TEST(LinearCrossEntropy, WithoutGradientsItIsTheSameSum) {
  const Case c = make_case(33, 8, 25, 4);
  const double ref = reference_loss(c.hidden_leaf, c.weight, c.targets).item<double>();
  at::NoGradGuard no_grad;
  const at::Tensor loss = linear_cross_entropy_sum(
      c.hidden_leaf, c.targets, [&](const at::Tensor& h) { return at::matmul(h, c.weight.t()); }, 7, {});
  EXPECT_FALSE(loss.requires_grad());
  EXPECT_NEAR(loss.item<double>(), ref, 1e-4 * std::abs(ref));
}

TEST(LinearCrossEntropy, ATargetFarBelowTheMaximumKeepsItsExactLoss) {
  // Row 0: logits (0, 200, -200) with target 2: p = e^-400, far below fp32;
  // the loss is 400 + log(1 + e^-200 + e^-400) = 400 (to double precision).
  // Row 1: an ordinary row, so both ways of reading the loss meet in one chunk.
  const at::Tensor w = at::tensor({0.0f, 200.0f, -200.0f, 1.0f, 2.0f, 3.0f}).view({2, 3}).t().contiguous();  // [3, 2]
  at::Tensor h = at::tensor({1.0f, 0.0f, 0.0f, 1.0f}).view({2, 2}).requires_grad_(true);
  const at::Tensor t = at::tensor({int64_t(2), int64_t(0)});
  const at::Tensor loss =
      linear_cross_entropy_sum(h, t, [&](const at::Tensor& x) { return at::matmul(x, w.t()); }, 2, {});
  const double z1 = std::exp(1.0) + std::exp(2.0) + std::exp(3.0);
  EXPECT_NEAR(loss.item<double>(), 400.0 + (std::log(z1) - 1.0), 1e-3);
  EXPECT_TRUE(std::isfinite(loss.item<double>()));
  loss.backward();
  // Row 0's gradient: softmax is onehot(1), so (e_1 - e_2) . W = W[1] - W[2] = (200 - -200, 2 - 3).
  EXPECT_NEAR(h.grad()[0][0].item<double>(), 400.0, 1e-3);
  EXPECT_NEAR(h.grad()[0][1].item<double>(), -1.0, 1e-3);
}

}  // namespace
