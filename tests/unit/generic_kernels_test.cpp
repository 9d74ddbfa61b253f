// The device-generic kernels (mftk/kernels.h) against the fast CPU kernels
// they stand in for, run in the same process on the same inputs: the code an
// accelerator runs is checked here on the CPU. Where the math is integer or
// every float32 step is rounded the same way (quantisation codes, packed
// nibbles, dequantised values, the 8-bit optimizer's update), the two must
// agree bit for bit; a whole model step must agree to float rounding.
//
// Where libtorch has CUDA and a GPU is visible, the generic side runs there
// instead (generic_device()), so the same tests are the GPU check of the
// kernels; only the matmul-based comparisons then relax to float rounding.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>

#include "linear_cross_entropy.h"
#include "mftk/dynamic_map.h"
#include "mftk/kernels.h"
#include "mftk/safetensors.h"
#include "mistral/attention.h"
#include "mistral/mistral_config.h"
#include "mistral/mistral_model.h"
#include "nf4/nf4_generic.h"
#include "nf4/nf4_linear.h"
#include "nf4/nf4_tensor.h"
#include "paged_adamw_8bit/adamw_8bit.h"

namespace fs = std::filesystem;

namespace {

// Where the generic kernels run in these tests: a GPU when there is one,
// else the CPU with the generic path forced.
at::Device generic_device() { return at::hasCUDA() ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU); }

// Bit-level equality of two tensors of one dtype (NaN equal to NaN with the same bits).
bool same_bits(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || !a.sizes().equals(b.sizes())) return false;
  const at::Tensor x = a.cpu().contiguous(), y = b.cpu().contiguous();
  return std::memcmp(x.data_ptr(), y.data_ptr(), x.numel() * x.element_size()) == 0;
}

double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  if (a.numel() == 0) return 0.0;
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

// Weights with the cases the kernels treat specially: an all-zero block,
// values exactly on NF4 thresholds (after scaling by an absmax of 1), +-0,
// and an odd element count (a half-filled last byte).
at::Tensor awkward_weight(int64_t rows, int64_t cols, uint64_t seed) {
  at::manual_seed(seed);
  at::Tensor w = at::randn({rows, cols}) * 0.05;
  w.view({-1}).narrow(0, 64, 64).zero_();  // block 1 (blocksize 64) or half of a 128 block
  at::Tensor flat = w.view({-1});
  flat[200] = 1.0f;  // absmax 1 for block 3 (64): the thresholds below land exactly
  for (int k = 0; k < 15; ++k) flat[201 + k] = mftk::nf4::kNf4Thresholds[k];
  flat[230] = -0.0f;
  return w;
}

}  // namespace

// ------------------------------------------------------------------ switch

TEST(GenericKernels, ScopesForceThePathAndNest) {
  const at::Tensor cpu = at::zeros({2});
  {
    mftk::ScopedGenericKernels on(true);
    EXPECT_TRUE(mftk::generic_kernels());
    EXPECT_TRUE(mftk::use_generic_path(cpu));
    {
      mftk::ScopedGenericKernels off(false);
      EXPECT_FALSE(mftk::generic_kernels());
      EXPECT_FALSE(mftk::use_generic_path(cpu));
    }
    EXPECT_TRUE(mftk::generic_kernels());
  }
  {
    mftk::ScopedGenericKernels off(false);
    EXPECT_FALSE(mftk::use_generic_path(cpu));
  }
}

// Run by ctest twice: plain, and as generic_kernels_cpu with MFTK_GENERIC_KERNELS=1.
TEST(GenericKernels, EnvironmentVariableForcesTheGenericPath) {
  const char* value = std::getenv("MFTK_GENERIC_KERNELS");
  const bool expected = value != nullptr && std::string(value) == "1";
  EXPECT_EQ(mftk::generic_kernels(), expected);
  EXPECT_EQ(mftk::use_generic_path(at::zeros({1})), expected);
}

// ------------------------------------------------------------- dynamic map

TEST(GenericKernels, DynamicCodesEqualTheScalarSearch) {
  for (bool is_signed : {true, false}) {
    SCOPED_TRACE(is_signed ? "signed map" : "unsigned map");
    const mftk::DynamicMap& map = is_signed ? mftk::signed_dynamic_map() : mftk::unsigned_dynamic_map();
    std::vector<float> xs;
    // Every map value, every float32 midpoint (a tie) and its two float neighbours.
    for (int k = 0; k < 256; ++k) xs.push_back(map[k]);
    for (int k = 0; k < 255; ++k) {
      const float mid = (map[k] + map[k + 1]) * 0.5f;
      xs.push_back(mid);
      xs.push_back(std::nextafter(mid, 2.0f));
      xs.push_back(std::nextafter(mid, -2.0f));
    }
    for (float x : {0.0f, -0.0f, 1.5f, -1.5f, 1e-30f, -1e-30f, std::numeric_limits<float>::quiet_NaN(),
                    std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity()})
      xs.push_back(x);
    std::mt19937 rng(7);
    std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
    for (int i = 0; i < 20000; ++i) xs.push_back(uniform(rng) * std::pow(10.0f, -float(i % 7)));
    const at::Tensor x = at::tensor(at::ArrayRef<float>(xs), at::kFloat);
    const at::Tensor codes =
        mftk::nearest_dynamic_codes(is_signed ? mftk::signed_dynamic_map_tensor(at::kCPU)
                                              : mftk::unsigned_dynamic_map_tensor(at::kCPU),
                                    x.to(generic_device()))
            .cpu();
    ASSERT_EQ(codes.scalar_type(), at::kByte);
    const auto* c = codes.data_ptr<uint8_t>();
    int64_t mismatches = 0;
    for (size_t i = 0; i < xs.size(); ++i)
      if (c[i] != mftk::nearest_dynamic_code(map, xs[i]) && ++mismatches <= 5)
        ADD_FAILURE() << "x = " << xs[i] << ": generic " << int(c[i]) << ", scalar "
                      << int(mftk::nearest_dynamic_code(map, xs[i]));
    EXPECT_EQ(mismatches, 0);
  }
}

// ---------------------------------------------------------------------- NF4

TEST(GenericKernels, Nf4QuantizeEqualsTheCpuKernelBitForBit) {
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16, at::kHalf})
    for (int64_t blocksize : {int64_t{32}, int64_t{64}, int64_t{256}})
      for (bool dq : {false, true}) {
        SCOPED_TRACE(std::string(c10::toString(dtype)) + " blocksize " + std::to_string(blocksize) +
                     (dq ? " dq" : ""));
        // 37 x 129 = 4773 values: odd, and a short last block for every blocksize;
        // 150 blocks of 32 also make a short nested (256) block.
        const at::Tensor w = awkward_weight(37, 129, 11).to(dtype);
        mftk::nf4::Nf4Tensor fast, generic;
        {
          mftk::ScopedGenericKernels off(false);
          fast = mftk::nf4::quantize_nf4(w, blocksize, dq);
        }
        {
          mftk::ScopedGenericKernels on(true);
          generic = mftk::nf4::quantize_nf4(w.to(generic_device()), blocksize, dq);
        }
        generic.check("generic");
        EXPECT_TRUE(same_bits(fast.packed, generic.packed));
        if (!dq) {
          EXPECT_TRUE(same_bits(fast.absmax, generic.absmax));
        } else {
          EXPECT_TRUE(same_bits(fast.quantized_absmax, generic.quantized_absmax));
          EXPECT_TRUE(same_bits(fast.nested_absmax, generic.nested_absmax));
          EXPECT_EQ(fast.offset, generic.offset);
          EXPECT_TRUE(same_bits(fast.nested_map, generic.nested_map));
        }
      }
}

TEST(GenericKernels, Nf4DequantizeEqualsTheCpuKernelsBitForBit) {
  for (bool dq : {false, true}) {
    SCOPED_TRACE(dq ? "double quant" : "plain absmax");
    const mftk::nf4::Nf4Tensor q = mftk::nf4::quantize_nf4(awkward_weight(37, 129, 12), 64, dq);
    const mftk::nf4::Nf4Tensor on_device = q.to(generic_device());
    at::Tensor generic_absmax;
    {
      mftk::ScopedGenericKernels on(true);
      generic_absmax = on_device.block_absmax();
    }
    at::Tensor fast_absmax;
    {
      mftk::ScopedGenericKernels off(false);
      fast_absmax = q.block_absmax();
    }
    EXPECT_TRUE(same_bits(fast_absmax, generic_absmax));
    for (at::ScalarType dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
      SCOPED_TRACE(c10::toString(dtype));
      at::Tensor generic;
      {
        mftk::ScopedGenericKernels on(true);
        generic = mftk::nf4::dequantize_nf4(on_device, dtype);
      }
      for (auto path : {mftk::nf4::DequantPath::scalar, mftk::nf4::DequantPath::automatic}) {
        mftk::ScopedGenericKernels off(false);
        EXPECT_TRUE(same_bits(mftk::nf4::dequantize_nf4(q, dtype, path), generic));
      }
    }
  }
}

// Larger than one slice of the generic kernels (2^22 values), so the slice
// seams are crossed, with an odd count that no blocksize divides.
TEST(GenericKernels, Nf4AcrossSlicesEqualsTheCpuKernels) {
  at::manual_seed(3);
  const at::Tensor w = at::randn({2049, 2051}, at::kFloat);
  for (int64_t blocksize : {int64_t{64}, int64_t{4096}}) {
    SCOPED_TRACE("blocksize " + std::to_string(blocksize));
    mftk::nf4::Nf4Tensor fast, generic;
    {
      mftk::ScopedGenericKernels off(false);
      fast = mftk::nf4::quantize_nf4(w, blocksize, false);
    }
    {
      mftk::ScopedGenericKernels on(true);
      generic = mftk::nf4::quantize_nf4(w.to(generic_device()), blocksize, false);
    }
    EXPECT_TRUE(same_bits(fast.packed, generic.packed));
    EXPECT_TRUE(same_bits(fast.absmax, generic.absmax));
    const at::Tensor fast_out = mftk::nf4::dequantize_nf4(fast, at::kBFloat16, mftk::nf4::DequantPath::scalar);
    at::Tensor generic_out;
    {
      mftk::ScopedGenericKernels on(true);
      generic_out = mftk::nf4::dequantize_nf4(fast.to(generic_device()), at::kBFloat16);
    }
    EXPECT_TRUE(same_bits(fast_out, generic_out));
  }
}

TEST(GenericKernels, Nf4LinearForwardAndBackwardEqualTheCpuKernels) {
  auto weight = std::make_shared<const mftk::nf4::Nf4Tensor>(
      mftk::nf4::quantize_nf4(awkward_weight(48, 96, 13), 64, true));
  const bool on_cpu = generic_device().is_cpu();
  for (at::ScalarType compute : {at::kFloat, at::kBFloat16}) {
    SCOPED_TRACE(c10::toString(compute));
    auto run = [&](bool generic) {
      mftk::ScopedGenericKernels scope(generic);
      const at::Device device = generic ? generic_device() : at::Device(at::kCPU);
      auto op = mftk::nf4::make_nf4_linear(std::make_shared<const mftk::nf4::Nf4Tensor>(weight->to(device)), compute);
      at::manual_seed(5);
      const at::Tensor x = at::randn({3, 7, 96}).to(device).requires_grad_(true);
      const at::Tensor y = op->forward(x);
      const at::Tensor grad_x = torch::autograd::grad({(y.to(at::kFloat) * y.to(at::kFloat)).sum()}, {x})[0];
      return std::make_pair(y.detach().cpu(), grad_x.cpu());
    };
    const auto [y_fast, gx_fast] = run(false);
    const auto [y_generic, gx_generic] = run(true);
    if (on_cpu) {  // the same dequantised weight into the same CPU matmul
      EXPECT_TRUE(same_bits(y_fast, y_generic)) << "max |dy| = " << max_abs_diff(y_fast, y_generic);
      EXPECT_TRUE(same_bits(gx_fast, gx_generic)) << "max |dgx| = " << max_abs_diff(gx_fast, gx_generic);
    } else {  // a GPU matmul sums in another order
      const double tol = compute == at::kFloat ? 1e-5 : 2e-2;
      EXPECT_LE(max_abs_diff(y_fast, y_generic), tol * y_fast.abs().max().item<double>());
      EXPECT_LE(max_abs_diff(gx_fast, gx_generic), tol * gx_fast.abs().max().item<double>());
    }
    EXPECT_GT(gx_fast.abs().max().item<double>(), 0.0);
  }
}

// ----------------------------------------------------------- 8-bit AdamW

namespace {

namespace p8 = mftk::paged_adamw_8bit;

// Several steps of one optimizer over fresh copies of the same parameters,
// with gradients that include inf and NaN elements; returns the parameters
// and the saved state.
std::pair<mftk::NamedTensors, mftk::NamedTensors> run_8bit(bool generic, bool paged, at::ScalarType dtype,
                                                            bool with_big) {
  mftk::ScopedGenericKernels scope(generic);
  const at::Device device = generic ? generic_device() : at::Device(at::kCPU);
  p8::AdamW8bitOptions o;
  o.paged = paged;
  // 3 blocks a page: parameters straddle pages (with the big one, 2016 a page,
  // so it spans three pages without thousands of tiny ones).
  o.page_size = with_big ? int64_t{1} << 20 : 3 * p8::kRecordBytes;
  o.weight_decay = 0.01;
  at::manual_seed(21);
  // 8-bit: 4400 (a short last block), 8192 (whole blocks; bf16 in the bf16 case:
  // not updated in place), with_big: 1031 x 1023 (past one slice of the
  // generic update, 4096 blocks); float32 state: 10 x 10.
  mftk::NamedTensors params = {{"a", at::randn({44, 100}).to(device)},
                               {"b", at::randn({64, 128}).to(device, dtype)},
                               {"small", at::randn({10, 10}).to(device)}};
  if (with_big) params.emplace_back("big", at::randn({1031, 1023}).to(device));
  p8::AdamW8bit opt(o);
  opt.attach(params);
  for (int step = 1; step <= 6; ++step) {
    at::manual_seed(100 + step);
    for (auto& [name, p] : params) {
      at::Tensor g = at::randn(p.sizes()) * (0.1 * step);
      // Tiny gradients: their m rounds to the code of 0.0 and, when negative,
      // must be moved one code down to keep its sign.
      g.view({-1}).narrow(0, 5, 5).fill_(-1e-12);
      g.view({-1}).narrow(0, 10, 5).fill_(1e-12);
      if (step == 3 && name == "a") {
        g.view({-1})[17] = std::numeric_limits<float>::infinity();
        g.view({-1})[4399] = std::numeric_limits<float>::quiet_NaN();
      }
      p.mutable_grad() = g.to(device, p.scalar_type());
    }
    opt.step(step <= 3 ? 1e-2 : 3e-3);
  }
  mftk::NamedTensors state = opt.state();
  for (auto& entry : params) entry.second = entry.second.cpu();
  for (auto& entry : state) entry.second = entry.second.cpu();
  return {params, state};
}

}  // namespace

TEST(GenericKernels, OptimizerAdamW8bitStepsEqualTheCpuKernelBitForBit) {
  for (bool paged : {true, false})
    for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
      SCOPED_TRACE(std::string(paged ? "paged " : "unpaged ") + c10::toString(dtype));
      const bool with_big = paged && dtype == at::kFloat;  // once: it is the slow one
      const auto [params_fast, state_fast] = run_8bit(false, paged, dtype, with_big);
      const auto [params_generic, state_generic] = run_8bit(true, paged, dtype, with_big);
      ASSERT_EQ(params_fast.size(), params_generic.size());
      for (size_t i = 0; i < params_fast.size(); ++i)
        EXPECT_TRUE(same_bits(params_fast[i].second, params_generic[i].second))
            << params_fast[i].first << ": max |dp| = " << max_abs_diff(params_fast[i].second, params_generic[i].second);
      ASSERT_EQ(state_fast.size(), state_generic.size());
      for (size_t i = 0; i < state_fast.size(); ++i) {
        ASSERT_EQ(state_fast[i].first, state_generic[i].first);
        EXPECT_TRUE(same_bits(state_fast[i].second, state_generic[i].second)) << state_fast[i].first;
      }
      // The update did something: the moments are not all zero.
      for (const auto& [name, t] : state_fast)
        if (name == "a.absmax1") EXPECT_GT(t.abs().max().item<double>(), 0.0);
    }
}

// ------------------------------------------------ Mistral + NF4 + loss, packed

namespace {

class ScratchDir {
 public:
  ScratchDir() {
    std::string pattern = (fs::path(testing::TempDir()) / "mftk_generic_XXXXXX").string();
    if (!mkdtemp(pattern.data())) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~ScratchDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string str() const { return path_.string(); }

 private:
  fs::path path_;
};

}  // namespace

// A tiny Mistral with a sliding window, its layer weights NF4 (double
// quantised), two packed documents plus padding per row, query blocks of 2:
// the fused loss and its gradients (norm weights, embeddings' output)
// computed with the fast kernels and with the generic ones.
TEST(GenericKernels, MistralPackedSlidingWindowQloraStepAgrees) {
  mftk::mistral::MistralConfig c;
  c.vocab_size = 61;
  c.hidden_size = 32;
  c.intermediate_size = 64;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  c.max_position_embeddings = 64;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  c.sliding_window = 3;
  c.torch_dtype = "float32";
  at::manual_seed(31);
  mftk::NamedTensors weights;
  auto linear = [](int64_t out, int64_t in) { return at::randn({out, in}) / std::sqrt(double(in)) * 1.5; };
  weights.emplace_back("model.embed_tokens.weight", at::randn({61, 32}));
  for (int n = 0; n < 2; ++n) {
    const std::string p = "model.layers." + std::to_string(n) + ".";
    weights.emplace_back(p + "self_attn.q_proj.weight", linear(32, 32));
    weights.emplace_back(p + "self_attn.k_proj.weight", linear(16, 32));
    weights.emplace_back(p + "self_attn.v_proj.weight", linear(16, 32));
    weights.emplace_back(p + "self_attn.o_proj.weight", linear(32, 32));
    weights.emplace_back(p + "mlp.gate_proj.weight", linear(64, 32));
    weights.emplace_back(p + "mlp.up_proj.weight", linear(64, 32));
    weights.emplace_back(p + "mlp.down_proj.weight", linear(32, 64));
    weights.emplace_back(p + "input_layernorm.weight", 1.0 + 0.2 * at::randn({32}));
    weights.emplace_back(p + "post_attention_layernorm.weight", 1.0 + 0.2 * at::randn({32}));
  }
  weights.emplace_back("model.norm.weight", 1.0 + 0.2 * at::randn({32}));
  weights.emplace_back("lm_head.weight", linear(61, 32));
  ScratchDir dir;
  mftk::save_checkpoint(dir.str(), weights);
  c.save(dir.str());

  // Two rows of 9: documents [0..3], [4..7] and one pad; [0..5], [6..8].
  mftk::Batch batch;
  batch.input_ids = at::randint(3, 61, {2, 9}, at::kLong);
  batch.position_ids = at::tensor({0, 1, 2, 3, 0, 1, 2, 3, 0, 0, 1, 2, 3, 4, 5, 0, 1, 2}, at::kLong).view({2, 9});
  batch.doc_ids = at::tensor({0, 0, 0, 0, 1, 1, 1, 1, -1, 0, 0, 0, 0, 0, 0, 1, 1, 1}, at::kInt).view({2, 9});
  const at::Tensor targets = at::randint(61, {18}, at::kLong).masked_fill_(batch.doc_ids.view({-1}).lt(0), -100)
                                 .masked_fill_(at::arange(18).eq(3), -100);
  const at::Tensor rows = targets.ne(-100).nonzero().squeeze(1);

  auto run = [&](bool generic) {
    mftk::ScopedGenericKernels scope(generic);
    mftk::mistral::MistralModelOptions options;
    options.attention_chunk = 2;
    auto model = std::make_unique<mftk::mistral::MistralModel>(options);
    model->load_config(dir.str());
    mftk::LoadOptions load;
    load.path = dir.str();
    load.device = generic ? generic_device() : at::Device(at::kCPU);
    model->load(load);
    // QLoRA's frozen base: every layer projection NF4, quantised under this path.
    for (mftk::LinearSlot* slot : model->linear_slots()) {
      if (slot->name == "lm_head") continue;
      slot->op = mftk::nf4::make_nf4_linear(
          std::make_shared<const mftk::nf4::Nf4Tensor>(
              mftk::nf4::quantize_nf4(slot->op->dense_weight(at::kFloat), 32, true)),
          at::kFloat);
    }
    std::vector<at::Tensor> params;
    for (auto& [name, t] : model->named_parameters())
      if (name.find("norm") != std::string::npos) params.push_back(t.requires_grad_(true));
    const at::Tensor hidden = model->forward(batch).view({18, 32}).index_select(0, rows.to(load.device));
    const at::Tensor loss = mftk::core::linear_cross_entropy_sum(
        hidden, targets.index_select(0, rows).to(load.device), [&](const at::Tensor& h) { return model->logits(h); },
        5, {});
    auto grads = torch::autograd::grad({loss}, params);
    for (auto& g : grads) g = g.cpu();
    return std::make_pair(loss.detach().cpu(), grads);
  };
  const auto [loss_fast, grads_fast] = run(false);
  const auto [loss_generic, grads_generic] = run(true);
  // Float rounding: on the CPU the two runs are in fact identical (0 measured);
  // on a GPU the matmuls and reductions sum in another order.
  const double tol = generic_device().is_cpu() ? 1e-6 : 1e-4;
  EXPECT_LE(std::abs(loss_fast.item<double>() - loss_generic.item<double>()),
            tol * std::abs(loss_fast.item<double>()));
  ASSERT_EQ(grads_fast.size(), grads_generic.size());
  double worst = 0.0;
  for (size_t k = 0; k < grads_fast.size(); ++k) {
    const double scale = std::max(grads_fast[k].abs().max().item<double>(), 1e-12);
    worst = std::max(worst, max_abs_diff(grads_fast[k], grads_generic[k]) / scale);
    EXPECT_GT(grads_fast[k].abs().max().item<double>(), 0.0) << k;
  }
  EXPECT_LE(worst, tol);
  std::printf("[ generic  ] mistral+nf4 step: |dloss| = %.3g, worst relative |dgrad| = %.3g\n",
              std::abs(loss_fast.item<double>() - loss_generic.item<double>()), worst);
}

// The attention plan made on the host from a copy of the rule (the generic
// planning) finds the same blocks and masks as the direct one.
TEST(GenericKernels, AttentionPlanOnTheHostEqualsTheDirectPlan) {
  const at::Tensor index = at::arange(12, at::kLong);
  const at::Tensor pos = at::tensor({0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 0, 0}, at::kLong).view({1, 12});
  const at::Tensor doc = at::tensor({0, 0, 0, 0, 0, 1, 1, 1, 2, 2, -1, -1}, at::kLong).view({1, 12});
  for (int64_t cache : {int64_t{64} << 20, int64_t{0}}) {
    std::unique_ptr<mftk::mistral::AttentionPlan> fast, generic;
    {
      mftk::ScopedGenericKernels off(false);
      fast = std::make_unique<mftk::mistral::AttentionPlan>(
          mftk::mistral::AttentionMaskRule{index, index, pos, pos, doc, doc, 3}, 4, cache);
    }
    {
      mftk::ScopedGenericKernels on(true);
      const at::Device d = generic_device();
      generic = std::make_unique<mftk::mistral::AttentionPlan>(
          mftk::mistral::AttentionMaskRule{index.to(d), index.to(d), pos.to(d), pos.to(d), doc.to(d), doc.to(d), 3},
          4, cache);
    }
    ASSERT_EQ(fast->blocks().size(), generic->blocks().size());
    for (size_t b = 0; b < fast->blocks().size(); ++b) {
      const auto& x = fast->blocks()[b];
      const auto& y = generic->blocks()[b];
      EXPECT_EQ(x.k0, y.k0) << b;
      EXPECT_EQ(x.k1, y.k1) << b;
      EXPECT_EQ(x.all_visible, y.all_visible) << b;
      EXPECT_EQ(x.has_empty_rows, y.has_empty_rows) << b;
      if (x.k1 > x.k0) EXPECT_TRUE(at::equal(fast->visible(x), generic->visible(y).cpu())) << b;
    }
  }
}
