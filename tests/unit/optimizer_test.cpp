// Optimizer plugins: "adamw" / "sgd" (plugins/adamw) and the bitsandbytes-style
// 8-bit AdamW (plugins/paged_adamw_8bit).
//
// Every expectation comes from outside the code under test: updates worked
// out by hand from the formulas, a second implementation written here from
// docs/formats.md §7 (8-bit optimiser; maps, nearest-code rule, the kernel's per-element order),
// and invariants (symmetry, bounds derived from the map spacing, resume ==
// uninterrupted run, paging changes nothing).
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "adamw/adamw_optimizer.h"
#include "adamw/sgd_optimizer.h"
#include "mftk/dynamic_map.h"
#include "mftk/error.h"
#include "paged_adamw_8bit/adamw_8bit.h"
#include "paged_adamw_8bit/code_book.h"

namespace p8 = mftk::paged_adamw_8bit;
using mftk::NamedTensors;
using mftk::adamw::AdamW;
using mftk::adamw::AdamWOptions;
using mftk::adamw::Sgd;
using mftk::adamw::SgdOptions;
using Map = std::array<float, 256>;

namespace {

// ---------------------------------------------------------------------------
// helpers

// A product rounded to float on its own (no fused multiply-add), the way
// PyTorch's tensor ops round it.
float mul(float a, float b) {
  volatile float r = a * b;
  return r;
}

// torch.linspace(start, end, steps) for float32, element by element as
// PyTorch's CPU kernel defines each point: step = (end - start) / (steps - 1)
// in float; points before steps / 2 are start + step * k, the others
// end - step * (steps - 1 - k). (libtorch 1.13's at::linspace is not used:
// its vectorised loop applies the first formula to whole 8-lane chunks past
// the halfway point, one ulp off at some points; the table bitsandbytes
// prints under current PyTorch follows the per-element definition, see
// EntriesWorkedOutByHand.)
std::vector<float> torch_linspace(float start, float end, int64_t steps) {
  const float step = (end - start) / static_cast<float>(steps - 1);
  std::vector<float> points;
  for (int64_t k = 0; k < steps; ++k)
    points.push_back(k < steps / 2 ? start + mul(step, static_cast<float>(k))
                                   : end - mul(step, static_cast<float>(steps - 1 - k)));
  return points;
}

// bitsandbytes' create_dynamic_map(signed, max_exponent_bits=7,
// total_bits=8) from bitsandbytes/functional.py, line by line: float32
// tensors, a Python-float scale (rounded to float by the tensor multiply),
// .tolist() and back.
Map reference_dynamic_map(bool is_signed) {
  const int max_exponent_bits = 7, total_bits = 8;
  std::vector<double> data;  // Python's list
  const int non_sign_bits = total_bits - 1;  // "(1 if signed else 1)" upstream
  const int additional_items = (1 << (non_sign_bits - max_exponent_bits)) - 1;
  EXPECT_EQ(additional_items, 0);  // so the "if additional_items > 0" branch never runs
  for (int i = 0; i < max_exponent_bits; ++i) {
    const int64_t fraction_items = is_signed ? (int64_t{1} << (i + non_sign_bits - max_exponent_bits)) + 1
                                             : (int64_t{1} << (i + non_sign_bits - max_exponent_bits + 1)) + 1;
    const std::vector<float> boundaries = torch_linspace(0.1f, 1.0f, fraction_items);
    const float scale = static_cast<float>(std::pow(10.0, -(max_exponent_bits - 1) + i));  // 10 ** (-(7 - 1) + i)
    std::vector<float> means;  // (boundaries[:-1] + boundaries[1:]) / 2.0
    for (size_t k = 0; k + 1 < boundaries.size(); ++k) means.push_back((boundaries[k] + boundaries[k + 1]) / 2.0f);
    for (float m : means) data.push_back(mul(scale, m));
    if (is_signed)
      for (float m : means) data.push_back(mul(-scale, m));
  }
  data.push_back(0);
  data.push_back(1.0);
  EXPECT_EQ(data.size(), 256u);
  std::sort(data.begin(), data.end());
  Map out{};
  for (size_t k = 0; k < std::min<size_t>(256, data.size()); ++k) out[k] = static_cast<float>(data[k]);
  return out;
}

// Nearest code by the kernel's rule, by a linear scan: move from code k to
// k+1 while x is past the float midpoint (a tie counts as past for odd k, so
// ties land on the even code); NaN stays at code 0.
int reference_nearest(const Map& c, float x) {
  if (std::isnan(x)) return 0;
  int k = 0;
  while (k < 255) {
    const float mid = (c[k] + c[k + 1]) * 0.5f;
    const bool past = (k % 2 == 0) ? x > mid : x >= mid;
    if (!past) break;
    ++k;
  }
  return k;
}

// FORMATS §7.3 step 5 for m: if the code's sign differs from m's, move one code toward m's sign.
int reference_code_m(const Map& c, float m, float absmax) {
  int code = reference_nearest(c, m / absmax);
  if (std::signbit(c[code]) != std::signbit(m)) code = (m > 0.0f) ? code + 1 : code - 1;
  return code & 0xFF;
}

at::Tensor find(const NamedTensors& state, const std::string& name) {
  for (const auto& [n, t] : state)
    if (n == name) return t;
  ADD_FAILURE() << "state has no tensor '" << name << "'";
  return at::Tensor();
}

bool same_state(const NamedTensors& a, const NamedTensors& b) {
  if (a.size() != b.size()) return false;
  for (const auto& [name, t] : a) {
    at::Tensor u = find(b, name);
    if (!u.defined() || t.scalar_type() != u.scalar_type() || !at::equal(t, u)) {
      ADD_FAILURE() << "state tensor '" << name << "' differs";
      return false;
    }
  }
  return true;
}

at::Tensor trainable(at::Tensor t) {
  t.set_requires_grad(true);
  return t;
}

void set_grad(const at::Tensor& param, const at::Tensor& grad) { param.mutable_grad() = grad.clone(); }

// Gradients whose size changes from block to block, so the per-block absmax differ.
at::Tensor uneven_gradient(int64_t n, int64_t step) {
  at::manual_seed(1000 + step);
  const int64_t blocks = (n + 255) / 256;
  at::Tensor scale = at::exp(at::randn({blocks}) * 2.0).repeat_interleave(256).slice(0, 0, n);
  return at::randn({n}) * scale * 0.01;
}

mftk::Config make_config(const std::vector<mftk::KeySpec>& keys, const std::map<std::string, mftk::Value>& set) {
  std::map<std::string, mftk::Config::Entry> entries;
  const mftk::SourceLocation where{"recipe.toml", 7, 1};
  for (const auto& k : keys) {
    auto it = set.find(k.name);
    entries[k.name] = {it != set.end() ? it->second : *k.default_value, where, it != set.end()};
  }
  return mftk::Config("optimizer", where, entries);
}

p8::AdamW8bitOptions options_8bit(bool paged, double wd = 0.0) {
  p8::AdamW8bitOptions o;
  o.paged = paged;
  o.weight_decay = wd;
  return o;
}

}  // namespace

// ---------------------------------------------------------------------------
// dynamic maps

TEST(DynamicMap, SignedMapIsTheBitsandbytesConstruction) {
  const Map& got = mftk::signed_dynamic_map();
  const Map want = reference_dynamic_map(true);
  for (int k = 0; k < 256; ++k) EXPECT_EQ(got[k], want[k]) << "code " << k;  // bit-exact
  EXPECT_EQ(mftk::make_dynamic_map(true), got);
  for (int k = 0; k < 255; ++k) EXPECT_LT(got[k], got[k + 1]) << "code " << k;
  // Negatives mirror positives: codes 0..126 and 128..254.
  for (int k = 0; k < 127; ++k) EXPECT_EQ(got[k], -got[254 - k]) << "code " << k;
  // 2^i values per decade [10^(i-7), 10^(i-6)) on each side.
  for (int i = 0; i < 7; ++i) {
    const double lo = std::pow(10.0, i - 7), hi = std::pow(10.0, i - 6);
    const auto in_decade = std::count_if(got.begin(), got.end(), [&](float x) { return x > lo && x < hi; });
    EXPECT_EQ(in_decade, 1 << i) << "decade " << i;
  }
}

TEST(DynamicMap, UnsignedMapIsTheBitsandbytesConstruction) {
  const Map& got = mftk::unsigned_dynamic_map();
  const Map want = reference_dynamic_map(false);
  for (int k = 0; k < 256; ++k) EXPECT_EQ(got[k], want[k]) << "code " << k;
  EXPECT_EQ(mftk::make_dynamic_map(false), got);
  for (int k = 0; k < 255; ++k) EXPECT_LT(got[k], got[k + 1]) << "code " << k;
  for (int i = 0; i < 7; ++i) {
    const double lo = std::pow(10.0, i - 7), hi = std::pow(10.0, i - 6);
    const auto in_decade = std::count_if(got.begin(), got.end(), [&](float x) { return x > lo && x < hi; });
    EXPECT_EQ(in_decade, 2 << i) << "decade " << i;
  }
}

// Entries worked out by hand from the construction, in float32 arithmetic
// (each sum, quotient and product rounded to the nearest float, as the
// tensor ops round them); f(x) below is "x rounded to float32".
//   linspace(0.1, 1, n): step = f(f(1 - f(0.1)) / (n - 1)) with f(1 - f(0.1)) = f(0.9)
//     = 0.89999997615814209; point k = f(f(0.1) + f(step * k)) for k < n/2,
//     else f(1 - f(step * (n - 1 - k))).
//   value = f(f(10^(i-6)) * f(f(p_k + p_k+1) / 2)).
// Positive codes of the signed map: i = 0 gives code 128, i = 1 codes
// 129..130, i = 2 131..134, i = 3 135..142, i = 4 143..158, i = 5 159..190,
// i = 6 191..254; then 0 is code 127 and 1 code 255. The unsigned map has
// 2^(i+1) values per i: i = 0 codes 1..2, ..., i = 6 codes 127..254.
TEST(DynamicMap, EntriesWorkedOutByHand) {
  const Map& s = mftk::signed_dynamic_map();
  // As bitsandbytes' create_dynamic_map() prints them under PyTorch 2 (the
  // table other projects copy from it): codes 0..3.
  EXPECT_EQ(s[0], -0.992968738079071f);
  EXPECT_EQ(s[1], -0.9789062738418579f);
  EXPECT_EQ(s[2], -0.96484375f);
  EXPECT_EQ(s[3], -0.9507812261581421f);
  // The two values appended to the list.
  EXPECT_EQ(s[127], 0.0f);
  EXPECT_EQ(s[255], 1.0f);
  // i = 0, n = 2: points f(0.1) = 0.10000000149011612 and 1; sum f(1.1000000015) =
  // 1.1000000238418579, mean 0.55000001192092896; times f(1e-6) = 9.9999999747524271e-07 -> 5.5000003840177669e-07.
  EXPECT_EQ(s[128], 5.5000003840177669e-07f);
  EXPECT_EQ(s[126], -5.5000003840177669e-07f);
  // i = 1, n = 3: step f(0.9 / 2) = 0.44999998807907104, points 0.1, 0.55000001192092896, 1;
  // first sum f(0.1 + 0.55) = 0.65000003576278687, mean 0.32500001788139343; times f(1e-5) =
  // 9.9999997473787516e-06 -> 3.2500001907465048e-06.
  EXPECT_EQ(s[129], 3.2500001907465048e-06f);
  // i = 3, n = 9: step f(0.9 / 8) = 0.11249999701976776, point 1 = f(0.1 + 0.1125) =
  // 0.21250000596046448; sum f(0.1 + 0.2125) = 0.3125, mean 0.15625; times f(1e-3) =
  // 0.0010000000474974513 -> 1.5625001105945557e-04.
  EXPECT_EQ(s[135], 1.5625001105945557e-04f);
  // i = 6, n = 65: step f(0.9 / 64) = 0.014062499627470970. First mean: point 1 =
  // f(0.1 + 0.0140625) = 0.11406250298023224, sum f(0.1 + 0.1140625) = 0.21406251192092896,
  // mean 0.10703125596046448 (scale 1). Second: point 2 = f(0.1 + f(2 * step)) =
  // 0.12812499701976776, sum 0.2421875, mean 0.12109375.
  EXPECT_EQ(s[191], 0.10703125596046448f);
  EXPECT_EQ(s[192], 0.12109375f);
  // Last mean: point 63 = f(1 - step) = 0.98593747615814209, sum 1.9859374761581421,
  // mean 0.99296873807907104: the largest magnitude below 1, at both ends of the signed map.
  EXPECT_EQ(s[254], 0.99296873807907104f);
  EXPECT_EQ(s[0], -0.99296873807907104f);

  const Map& u = mftk::unsigned_dynamic_map();
  EXPECT_EQ(u[0], 0.0f);
  EXPECT_EQ(u[255], 1.0f);
  // i = 0, n = 3: first mean 0.32500001788139343 (as above) times f(1e-6) -> 3.2500003044333425e-07.
  EXPECT_EQ(u[1], 3.2500003044333425e-07f);
  // i = 6, n = 129: step f(0.9 / 128) = 0.0070312498137354851; point 1 = f(0.1 + step) =
  // 0.10703124850988388, mean f(0.20703125 / 2) = 0.103515625 exactly.
  EXPECT_EQ(u[127], 0.103515625f);
  // Last mean: point 127 = f(1 - step) = 0.99296873807907104, sum f(1.99296873807907104) =
  // 1.9929687976837158, mean 0.99648439884185791.
  EXPECT_EQ(u[254], 0.99648439884185791f);
}

TEST(OptimizerDynamicMap, NearestCodeFollowsTheKernelRule) {
  for (bool is_signed : {true, false}) {
    const Map c = mftk::make_dynamic_map(is_signed);
    const p8::CodeBook book(c);
    std::vector<float> probes;
    for (int k = 0; k < 256; ++k) {
      probes.push_back(c[k]);
      if (k < 255) {
        const float mid = (c[k] + c[k + 1]) * 0.5f;
        probes.push_back(mid);  // ties
        probes.push_back(std::nextafter(mid, -2.0f));
        probes.push_back(std::nextafter(mid, 2.0f));
      }
    }
    at::manual_seed(7);
    at::Tensor mags = at::pow(10.0, at::rand({20000}) * -9.0);  // 1e-9 .. 1
    at::Tensor signs = is_signed ? 1.0 - 2.0 * at::rand({20000}).lt(0.5).to(at::kFloat) : at::ones({20000});
    at::Tensor random = (mags * signs).to(at::kFloat).contiguous();
    for (int64_t i = 0; i < random.numel(); ++i) probes.push_back(random.data_ptr<float>()[i]);
    probes.push_back(0.0f);
    probes.push_back(-0.0f);
    probes.push_back(1.0f);
    if (is_signed) probes.push_back(-1.0f);

    for (float x : probes) {
      ASSERT_EQ(book.nearest(x), reference_nearest(c, x)) << "x = " << x << (is_signed ? " signed" : " unsigned");
      ASSERT_EQ(book.nearest_by_search(x), reference_nearest(c, x)) << "x = " << x;
    }
    for (int k = 0; k < 256; ++k) EXPECT_EQ(book.nearest(c[k]), k);
    EXPECT_EQ(book.nearest(std::numeric_limits<float>::quiet_NaN()), 0);
    // Exactly on a midpoint: the even code wins.
    EXPECT_EQ(book.nearest((c[10] + c[11]) * 0.5f), 10);
    EXPECT_EQ(book.nearest((c[11] + c[12]) * 0.5f), 12);
  }
}

TEST(OptimizerDynamicMap, RejectsAnUnsortedMap) {
  Map c = mftk::make_dynamic_map(true);
  std::swap(c[3], c[4]);
  EXPECT_THROW(p8::CodeBook{c}, mftk::Error);
}

// ---------------------------------------------------------------------------
// adamw

TEST(OptimizerAdamW, TwoStepsWorkedByHand) {
  const double lr = 0.01, wd = 0.1, b1 = 0.9, b2 = 0.999, eps = 1e-8;
  AdamWOptions o;
  o.weight_decay = wd;
  AdamW opt(o);
  at::Tensor p = trainable(at::tensor({1.0f, -0.75f, 0.5f}));
  opt.attach({{"w", p}});

  // The float32 inputs, widened exactly.
  const double p0[3] = {1.0, -0.75, 0.5};
  const double g1[3] = {0.1f, -0.2f, 0.3f};
  const double g2[3] = {-0.05f, 0.4f, 0.3f};
  set_grad(p, at::tensor({0.1f, -0.2f, 0.3f}));
  opt.step(lr);
  // Step 1: p *= 1 - lr*wd; m = (1-b1) g; v = (1-b2) g^2; bias corrections
  // undo the (1-b) factors, so p -= lr * g / (|g| + eps).
  double p1[3], m1[3], v1[3];
  for (int i = 0; i < 3; ++i) {
    m1[i] = (1 - b1) * g1[i];
    v1[i] = (1 - b2) * g1[i] * g1[i];
    p1[i] = p0[i] * (1 - lr * wd) - lr * g1[i] / (std::fabs(g1[i]) + eps);
  }
  EXPECT_NEAR(p1[0], 0.989, 1e-8);  // 0.999 - 0.01 (by hand)
  for (int i = 0; i < 3; ++i) EXPECT_NEAR(p[i].item<float>(), p1[i], 1e-7) << i;
  NamedTensors s1 = opt.state();
  for (int i = 0; i < 3; ++i) {
    EXPECT_NEAR(find(s1, "w.exp_avg")[i].item<float>(), m1[i], 1e-8);
    EXPECT_NEAR(find(s1, "w.exp_avg_sq")[i].item<float>(), v1[i], 1e-10);
  }
  EXPECT_EQ(find(s1, "step").item<int64_t>(), 1);
  EXPECT_EQ(find(s1, "step").scalar_type(), at::kLong);

  set_grad(p, at::tensor({-0.05f, 0.4f, 0.3f}));
  opt.step(lr);
  const double bc1 = 1 - b1 * b1, bc2 = 1 - b2 * b2;  // 0.19, 0.001999
  for (int i = 0; i < 3; ++i) {
    const double m2 = b1 * m1[i] + (1 - b1) * g2[i];
    const double v2 = b2 * v1[i] + (1 - b2) * g2[i] * g2[i];
    const double p2 = p1[i] * (1 - lr * wd) - (lr / bc1) * m2 / (std::sqrt(v2) / std::sqrt(bc2) + eps);
    EXPECT_NEAR(p[i].item<float>(), p2, 1e-7) << i;
  }
}

TEST(OptimizerAdamW, MatchesAnIndependentImplementationOverTenSteps) {
  const double lr = 3e-3, wd = 0.02, b1 = 0.85, b2 = 0.99, eps = 1e-6;
  AdamWOptions o{wd, b1, b2, eps};
  AdamW opt(o);
  at::manual_seed(3);
  at::Tensor a = trainable(at::randn({7, 13}));
  at::Tensor b = trainable(at::randn({5}));
  at::Tensor frozen = at::randn({4});  // attached but never given a gradient
  const at::Tensor frozen_before = frozen.clone();
  opt.attach({{"a", a}, {"b", b}, {"frozen", frozen}});

  // Plain double-precision AdamW on flat copies.
  struct Ref {
    std::vector<double> p, m, v;
  };
  auto make_ref = [](const at::Tensor& t) {
    at::Tensor d = t.detach().to(at::kDouble).contiguous().view({-1});
    Ref r;
    r.p.assign(d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
    r.m.assign(r.p.size(), 0.0);
    r.v.assign(r.p.size(), 0.0);
    return r;
  };
  Ref ra = make_ref(a), rb = make_ref(b);
  for (int t = 1; t <= 10; ++t) {
    at::Tensor ga = at::randn({7, 13}), gb = at::randn({5}) * 10.0;
    set_grad(a, ga);
    set_grad(b, gb);
    opt.step(lr);
    for (auto [ref, g] : {std::make_pair(&ra, ga), std::make_pair(&rb, gb)}) {
      at::Tensor gd = g.to(at::kDouble).contiguous().view({-1});
      for (size_t i = 0; i < ref->p.size(); ++i) {
        const double gi = gd.data_ptr<double>()[i];
        ref->p[i] *= 1 - lr * wd;
        ref->m[i] = b1 * ref->m[i] + (1 - b1) * gi;
        ref->v[i] = b2 * ref->v[i] + (1 - b2) * gi * gi;
        const double m_hat = ref->m[i] / (1 - std::pow(b1, t));
        const double v_hat = ref->v[i] / (1 - std::pow(b2, t));
        ref->p[i] -= lr * m_hat / (std::sqrt(v_hat) + eps);
      }
    }
  }
  auto flat = [](const at::Tensor& t) { return t.detach().to(at::kDouble).contiguous().view({-1}); };
  const NamedTensors s = opt.state();
  for (auto [ref, name, param] : {std::make_tuple(&ra, "a", a), std::make_tuple(&rb, "b", b)}) {
    at::Tensor p = flat(param), m = flat(find(s, std::string(name) + ".exp_avg")),
               v = flat(find(s, std::string(name) + ".exp_avg_sq"));
    for (size_t i = 0; i < ref->p.size(); ++i) {
      EXPECT_NEAR(p.data_ptr<double>()[i], ref->p[i], 2e-6) << name << " " << i;
      EXPECT_NEAR(m.data_ptr<double>()[i], ref->m[i], 1e-6 * (1 + std::fabs(ref->m[i])));
      EXPECT_NEAR(v.data_ptr<double>()[i], ref->v[i], 1e-6 * (1 + std::fabs(ref->v[i])));
    }
  }
  EXPECT_TRUE(at::equal(frozen, frozen_before));  // no grad: untouched
  EXPECT_EQ(opt.state_bytes(), (7 * 13 + 5 + 4) * 8);
}

TEST(OptimizerAdamW, ResumeFromSavedStateIsBitIdentical) {
  at::manual_seed(11);
  const at::Tensor init = at::randn({33, 17});
  std::vector<at::Tensor> grads;
  for (int t = 0; t < 8; ++t) grads.push_back(at::randn({33, 17}));
  AdamWOptions o;
  o.weight_decay = 0.05;

  at::Tensor p_full = trainable(init.clone());
  AdamW full(o);
  full.attach({{"w", p_full}});
  for (int t = 0; t < 8; ++t) {
    set_grad(p_full, grads[t]);
    full.step(1e-2 * (t + 1));
  }

  at::Tensor p_first = trainable(init.clone());
  AdamW first(o);
  first.attach({{"w", p_first}});
  for (int t = 0; t < 4; ++t) {
    set_grad(p_first, grads[t]);
    first.step(1e-2 * (t + 1));
  }
  // A fresh optimizer on a copy of the parameters, as after a restart.
  at::Tensor p_resumed = trainable(p_first.detach().clone());
  AdamW resumed(o);
  resumed.attach({{"w", p_resumed}});
  resumed.load_state(first.state());
  for (int t = 4; t < 8; ++t) {
    set_grad(p_resumed, grads[t]);
    resumed.step(1e-2 * (t + 1));
  }
  EXPECT_TRUE(at::equal(p_resumed, p_full));
  EXPECT_TRUE(same_state(resumed.state(), full.state()));
}

TEST(OptimizerAdamW, BadStateIsRefusedWithItsName) {
  AdamW opt({});
  at::Tensor p = trainable(at::zeros({3}));
  opt.attach({{"layer.w", p}});
  NamedTensors state = opt.state();
  NamedTensors missing(state.begin() + 1, state.end());
  try {
    opt.load_state(missing);
    FAIL() << "no error";
  } catch (const mftk::Error& e) {
    EXPECT_NE(std::string(e.what()).find("layer.w.exp_avg"), std::string::npos) << e.what();
  }
  NamedTensors wrong_shape = state;
  wrong_shape[0].second = at::zeros({4});
  EXPECT_THROW(opt.load_state(wrong_shape), mftk::Error);
  NamedTensors extra = state;
  extra.emplace_back("other.exp_avg", at::zeros({3}));
  EXPECT_THROW(opt.load_state(extra), mftk::Error);
  EXPECT_THROW(AdamW({}).load_state(state), mftk::Error);  // before attach
}

TEST(OptimizerAdamW, Bfloat16ParameterKeepsFloat32Moments) {
  at::Tensor p = trainable(at::tensor({1.0f, -1.0f}).to(at::kBFloat16));
  AdamW opt({});
  opt.attach({{"w", p}});
  set_grad(p, at::tensor({0.5f, -0.5f}).to(at::kBFloat16));
  opt.step(0.125);  // first Adam step moves each element by lr * sign(g)
  EXPECT_EQ(p.scalar_type(), at::kBFloat16);
  EXPECT_EQ(find(opt.state(), "w.exp_avg").scalar_type(), at::kFloat);
  EXPECT_FLOAT_EQ(p[0].item<float>(), 0.875f);
  EXPECT_FLOAT_EQ(p[1].item<float>(), -0.875f);
}

TEST(OptimizerAdamW, OptionsComeFromTheRecipeTable) {
  const auto keys = mftk::adamw::adamw_keys();
  auto o = mftk::adamw::adamw_options_from_config(make_config(keys, {{"weight_decay", 0.01}}));
  EXPECT_DOUBLE_EQ(o.weight_decay, 0.01);
  EXPECT_DOUBLE_EQ(o.beta1, 0.9);
  EXPECT_DOUBLE_EQ(o.beta2, 0.999);
  EXPECT_DOUBLE_EQ(o.eps, 1e-8);
  try {
    mftk::adamw::adamw_options_from_config(make_config(keys, {{"beta2", 1.0}}));
    FAIL() << "no error";
  } catch (const mftk::UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("beta2"), std::string::npos) << e.what();
  }
}

// ---------------------------------------------------------------------------
// sgd

TEST(OptimizerSgd, StepsWorkedByHand) {
  {
    Sgd opt({});
    at::Tensor p = trainable(at::tensor({1.0f, 2.0f}));
    opt.attach({{"w", p}});
    set_grad(p, at::tensor({0.5f, -1.0f}));
    opt.step(0.1);
    EXPECT_FLOAT_EQ(p[0].item<float>(), 0.95f);  // 1 - 0.1*0.5
    EXPECT_FLOAT_EQ(p[1].item<float>(), 2.1f);   // 2 + 0.1*1
    EXPECT_EQ(opt.state_bytes(), 0);
  }
  {
    Sgd opt(SgdOptions{0.9, 0.1});
    at::Tensor p = trainable(at::tensor({1.0f, 2.0f}));
    opt.attach({{"w", p}});
    set_grad(p, at::tensor({0.5f, -1.0f}));
    opt.step(0.1);
    // d = g + 0.1 p = [0.6, -0.8]; buf = d; p -= 0.1 d
    EXPECT_NEAR(p[0].item<float>(), 0.94, 1e-7);
    EXPECT_NEAR(p[1].item<float>(), 2.08, 1e-7);
    set_grad(p, at::tensor({0.2f, 0.2f}));
    opt.step(0.1);
    // d = [0.2 + 0.094, 0.2 + 0.208]; buf = 0.9*[0.6, -0.8] + d = [0.834, -0.312]; p -= 0.1 buf
    EXPECT_NEAR(p[0].item<float>(), 0.8566, 1e-6);
    EXPECT_NEAR(p[1].item<float>(), 2.1112, 1e-6);
    EXPECT_NEAR(find(opt.state(), "w.momentum_buffer")[0].item<float>(), 0.834, 1e-6);

    // Resume mid-run.
    Sgd again(SgdOptions{0.9, 0.1});
    at::Tensor q = trainable(p.detach().clone());
    again.attach({{"w", q}});
    again.load_state(opt.state());
    set_grad(p, at::tensor({-0.3f, 0.7f}));
    set_grad(q, at::tensor({-0.3f, 0.7f}));
    opt.step(0.05);
    again.step(0.05);
    EXPECT_TRUE(at::equal(p, q));
  }
}

// ---------------------------------------------------------------------------
// 8-bit AdamW

// bitsandbytes' 32-bit Adam kernel, written out: the path for small tensors.
TEST(OptimizerAdamW8bit, SmallTensorIsFloat32AdamInBitsandbytesOrder) {
  const float lr = 2e-3f, wd = 0.01f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
  for (auto [numel, min_size] : {std::pair<int64_t, int64_t>{100, 4096}, {5000, 10000}, {4095, 0}}) {
    p8::AdamW8bitOptions o = options_8bit(true, wd);
    o.min_8bit_size = min_size;
    p8::AdamW8bit opt(o);
    at::manual_seed(5);
    at::Tensor p = trainable(at::randn({numel}));
    opt.attach({{"small", p}});
    EXPECT_FALSE(opt.is_8bit("small")) << numel;
    std::vector<float> rp(p.data_ptr<float>(), p.data_ptr<float>() + numel), rm(numel, 0.0f), rv(numel, 0.0f);
    for (int t = 1; t <= 6; ++t) {
      at::Tensor g = at::randn({numel}) * 0.1;
      set_grad(p, g);
      opt.step(lr);
      const float c1 = 1.0f - std::pow(b1, static_cast<float>(t));
      const float c2 = std::sqrt(1.0f - std::pow(b2, static_cast<float>(t)));
      const float step_size = (-lr * c2) / c1;
      for (int64_t i = 0; i < numel; ++i) {
        const float gi = g.data_ptr<float>()[i];
        rm[i] = mul(rm[i], b1) + mul(1.0f - b1, gi);
        rv[i] = mul(rv[i], b2) + mul(1.0f - b2, mul(gi, gi));
        rp[i] = rp[i] + mul(step_size, rm[i] / (std::sqrt(rv[i]) + mul(eps, c2)));
        rp[i] = mul(rp[i], 1.0f - mul(lr, wd));  // decay after the update
      }
    }
    const NamedTensors s = opt.state();
    for (int64_t i = 0; i < numel; ++i) {
      ASSERT_EQ(p.data_ptr<float>()[i], rp[i]) << numel << " @" << i;
      ASSERT_EQ(find(s, "small.state1").data_ptr<float>()[i], rm[i]);
      ASSERT_EQ(find(s, "small.state2").data_ptr<float>()[i], rv[i]);
    }
    EXPECT_EQ(opt.state_bytes(), numel * 8);
  }
}

// Each step against a step written out here from FORMATS §7.3, started from
// the optimizer's own dequantised state: p, absmax and the codes must agree
// exactly, and the dequantised m, v lie within half a map gap (times the
// block's absmax) of the unquantised values. Over the run, m and v stay
// within the accumulated quantisation bound of a float32 run without it.
TEST(OptimizerAdamW8bit, LargeTensorFollowsTheBlockwiseStep) {
  const float lr = 1e-3f, wd = 0.01f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
  const int64_t n = 256 * 37 + 100;  // short last block
  const int64_t blocks = 38;
  p8::AdamW8bit opt(options_8bit(true, wd));
  at::manual_seed(9);
  at::Tensor p = trainable(at::randn({n}));
  opt.attach({{"big", p}});
  ASSERT_TRUE(opt.is_8bit("big"));
  const Map &c1 = mftk::signed_dynamic_map(), &c2 = mftk::unsigned_dynamic_map();

  std::vector<float> fm(n, 0.0f), fv(n, 0.0f);      // float32 run without quantisation
  std::vector<double> bound_m(n, 0.0), bound_v(n, 0.0);  // accumulated bounds
  int sign_fixes = 0;
  for (int t = 1; t <= 25; ++t) {
    at::Tensor g = uneven_gradient(n, t);
    g.slice(0, 256 * 3, 256 * 4).zero_();      // a block that never sees a gradient
    if (t == 4) g[17] = std::numeric_limits<float>::quiet_NaN();  // a non-finite element
    if (t % 5 == 0) g.slice(0, 1000, 1200).mul_(1e-6);  // tiny values near zero codes
    g.slice(0, 1280, 1290).fill_(-1e-12);  // negative m that rounds to code 0.0: the sign rule

    const NamedTensors before = opt.state();
    const at::Tensor codes_m = find(before, "big.state1"), codes_v = find(before, "big.state2");
    const at::Tensor absmax_m = find(before, "big.absmax1"), absmax_v = find(before, "big.absmax2");
    std::vector<float> p_ref(p.data_ptr<float>(), p.data_ptr<float>() + n);
    set_grad(p, g);
    opt.step(lr);

    const float cor1 = 1.0f - std::pow(b1, static_cast<float>(t));
    const float cor2 = std::sqrt(1.0f - std::pow(b2, static_cast<float>(t)));
    const float step_size = (-lr * cor2) / cor1;
    const NamedTensors after = opt.state();
    const auto [deq_m, deq_v] = opt.dequantized_moments("big");
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t begin = b * 256, end = std::min(n, begin + 256);
      const float am = absmax_m.data_ptr<float>()[b], av = absmax_v.data_ptr<float>()[b];
      std::vector<float> m(end - begin), v(end - begin);
      float max_m = 0.0f, max_v = 0.0f;
      for (int64_t i = begin; i < end; ++i) {
        const float gi = g.data_ptr<float>()[i];
        float& mi = m[i - begin];
        float& vi = v[i - begin];
        if (std::isfinite(gi)) {
          vi = mul(c2[codes_v.data_ptr<uint8_t>()[i]], av);
          vi = mul(vi, b2) + mul(mul(1.0f - b2, gi), gi);
          mi = mul(c1[codes_m.data_ptr<uint8_t>()[i]], am);
          mi = mul(mi, b1) + mul(1.0f - b1, gi);
          p_ref[i] = p_ref[i] + mul(step_size, mi / (std::sqrt(vi) + mul(cor2, eps)));
          p_ref[i] = mul(p_ref[i], 1.0f - mul(lr, wd));
        } else {
          mi = vi = 0.0f;
        }
        max_m = std::max(max_m, std::fabs(mi));
        max_v = std::max(max_v, std::fabs(vi));
      }
      if (end - begin < 256) {  // the kernel's padding: code 128 for m, 0 for v, zero gradient
        max_m = std::max(max_m, std::fabs(mul(mul(c1[128], am), b1)));
        max_v = std::max(max_v, std::fabs(mul(mul(c2[0], av), b2)));
      }
      ASSERT_EQ(find(after, "big.absmax1").data_ptr<float>()[b], max_m) << "block " << b << " step " << t;
      ASSERT_EQ(find(after, "big.absmax2").data_ptr<float>()[b], max_v) << "block " << b << " step " << t;
      for (int64_t i = begin; i < end; ++i) {
        const float mi = m[i - begin], vi = v[i - begin];
        const int want_m = reference_code_m(c1, mi, max_m);
        const int want_v = reference_nearest(c2, vi / max_v);
        ASSERT_EQ(find(after, "big.state1").data_ptr<uint8_t>()[i], want_m) << "element " << i << " step " << t;
        ASSERT_EQ(find(after, "big.state2").data_ptr<uint8_t>()[i], want_v) << "element " << i << " step " << t;
        ASSERT_EQ(p.data_ptr<float>()[i], p_ref[i]) << "element " << i << " step " << t;

        // The quantisation bound, from the map spacing around m/absmax.
        const float dm = deq_m.data_ptr<float>()[i], dv = deq_v.data_ptr<float>()[i];
        if (max_m > 0.0f) {
          const float x = mi / max_m;
          int j = 0;
          while (j < 254 && c1[j + 1] < x) ++j;  // c1[j] <= x <= c1[j + 1]
          const bool sign_fixed = std::signbit(c1[reference_nearest(c1, x)]) != std::signbit(mi);
          sign_fixes += sign_fixed;
          const double gap = static_cast<double>(c1[j + 1]) - c1[j];
          // Plus float32 rounding of m/absmax, of the midpoints and of code*absmax.
          const double q_bound = (sign_fixed ? gap : 0.5 * gap) * max_m + 1e-6 * std::fabs(mi) + 1e-12;
          ASSERT_LE(std::fabs(static_cast<double>(dm) - mi), q_bound) << "element " << i << " step " << t;
          bound_m[i] = b1 * bound_m[i] + q_bound + 1e-6 * std::fabs(mi);
        }
        if (max_v > 0.0f) {
          const float x = vi / max_v;
          int j = 0;
          while (j < 254 && c2[j + 1] < x) ++j;
          const double gap = static_cast<double>(c2[j + 1]) - c2[j];
          const double q_bound = 0.5 * gap * max_v + 1e-6 * std::fabs(vi) + 1e-15;
          ASSERT_LE(std::fabs(static_cast<double>(dv) - vi), q_bound) << "element " << i << " step " << t;
          bound_v[i] = b2 * bound_v[i] + q_bound + 1e-6 * std::fabs(vi);
        }
      }
    }
    // The float32 run of the same update without quantisation.
    for (int64_t i = 0; i < n; ++i) {
      const float gi = g.data_ptr<float>()[i];
      if (std::isfinite(gi)) {
        fv[i] = mul(fv[i], b2) + mul(mul(1.0f - b2, gi), gi);
        fm[i] = mul(fm[i], b1) + mul(1.0f - b1, gi);
      } else {
        fm[i] = fv[i] = 0.0f;
        bound_m[i] = bound_v[i] = 0.0;  // both runs reset the element
      }
      ASSERT_LE(std::fabs(static_cast<double>(deq_m.data_ptr<float>()[i]) - fm[i]), bound_m[i] + 1e-12)
          << "element " << i << " step " << t;
      ASSERT_LE(std::fabs(static_cast<double>(deq_v.data_ptr<float>()[i]) - fv[i]), bound_v[i] + 1e-15)
          << "element " << i << " step " << t;
    }
  }
  EXPECT_GT(sign_fixes, 0) << "the sign rule was never exercised";
  // The NaN element: state reset to zero, parameter left alone at that step.
  const auto [m_end, v_end] = opt.dequantized_moments("big");
  EXPECT_EQ(find(opt.state(), "step").item<int64_t>(), 25);
  // The all-zero block keeps zero state.
  EXPECT_EQ(find(opt.state(), "big.absmax1")[3].item<float>(), 0.0f);
  EXPECT_EQ(at::abs(m_end.slice(0, 768, 1024)).max().item<float>(), 0.0f);
}

TEST(OptimizerAdamW8bit, NonFiniteGradientZeroesStateAndSkipsTheElement) {
  p8::AdamW8bit opt(options_8bit(false, 0.1));
  at::Tensor p = trainable(at::ones({4096}));
  opt.attach({{"w", p}});
  set_grad(p, at::full({4096}, 0.5f));
  opt.step(0.01);
  at::Tensor g = at::full({4096}, 0.5f);
  g[5] = std::numeric_limits<float>::infinity();
  g[6] = std::numeric_limits<float>::quiet_NaN();
  const float p5 = p[5].item<float>();
  set_grad(p, g);
  opt.step(0.01);
  EXPECT_EQ(p[5].item<float>(), p5);  // untouched, also by weight decay
  EXPECT_EQ(p[6].item<float>(), p5);
  EXPECT_LT(p[7].item<float>(), p5);
  const auto [m, v] = opt.dequantized_moments("w");
  EXPECT_EQ(m[5].item<float>(), 0.0f);
  EXPECT_EQ(v[6].item<float>(), 0.0f);
  EXPECT_GT(m[7].item<float>(), 0.0f);
}

TEST(OptimizerAdamW8bit, ResumeFromSavedStateIsBitIdentical) {
  at::manual_seed(21);
  const at::Tensor init_big = at::randn({70, 300});  // 8-bit, short last block
  const at::Tensor init_small = at::randn({64});     // float32 state
  auto run = [&](p8::AdamW8bit& opt, at::Tensor& big, at::Tensor& small, int from, int to) {
    for (int t = from; t < to; ++t) {
      set_grad(big, uneven_gradient(big.numel(), t).view({70, 300}));
      set_grad(small, uneven_gradient(64, 100 + t));
      opt.step(1e-3 * (1 + t % 3));
    }
  };
  for (bool paged : {true, false}) {
    at::Tensor big = trainable(init_big.clone()), small = trainable(init_small.clone());
    p8::AdamW8bit full(options_8bit(paged, 0.01));
    full.attach({{"big", big}, {"small", small}});
    run(full, big, small, 0, 10);

    at::Tensor big1 = trainable(init_big.clone()), small1 = trainable(init_small.clone());
    p8::AdamW8bit first(options_8bit(paged, 0.01));
    first.attach({{"big", big1}, {"small", small1}});
    run(first, big1, small1, 0, 5);
    // Resume into the other layout: the saved state does not depend on paging.
    at::Tensor big2 = trainable(big1.detach().clone()), small2 = trainable(small1.detach().clone());
    p8::AdamW8bit resumed(options_8bit(!paged, 0.01));
    resumed.attach({{"big", big2}, {"small", small2}});
    resumed.load_state(first.state());
    run(resumed, big2, small2, 5, 10);

    EXPECT_TRUE(at::equal(big2, big)) << paged;
    EXPECT_TRUE(at::equal(small2, small)) << paged;
    EXPECT_TRUE(same_state(resumed.state(), full.state())) << paged;
    const NamedTensors s = full.state();
    EXPECT_EQ(find(s, "big.state1").scalar_type(), at::kByte);
    EXPECT_EQ(find(s, "big.state1").sizes().vec(), std::vector<int64_t>({70, 300}));
    EXPECT_EQ(find(s, "big.absmax1").numel(), (70 * 300 + 255) / 256);
    EXPECT_EQ(find(s, "small.state1").scalar_type(), at::kFloat);
    EXPECT_EQ(find(s, "qmap2").numel(), 256);
  }
}

TEST(OptimizerAdamW8bit, BadStateIsRefusedWithItsName) {
  p8::AdamW8bit opt(options_8bit(true));
  at::Tensor p = trainable(at::zeros({5000}));
  opt.attach({{"w", p}});
  NamedTensors state = opt.state();
  for (auto& [name, t] : state)
    if (name == "w.state1") t = at::zeros({5000}, at::kFloat);  // as saved with a large min_8bit_size
  try {
    opt.load_state(state);
    FAIL() << "no error";
  } catch (const mftk::Error& e) {
    EXPECT_NE(std::string(e.what()).find("w.state1"), std::string::npos) << e.what();
  }
  NamedTensors unsorted = opt.state();
  for (auto& [name, t] : unsorted)
    if (name == "qmap1") t = t.flip(0).contiguous();
  EXPECT_THROW(opt.load_state(unsorted), mftk::Error);
}

TEST(OptimizerAdamW8bit, PagingChangesOnlyTheLayout) {
  p8::AdamW8bitOptions paged = options_8bit(true, 0.01);
  paged.page_size = 4096;  // 7 blocks of 520 bytes per page
  p8::AdamW8bit a(paged), b(options_8bit(false, 0.01));
  at::manual_seed(4);
  const std::vector<int64_t> sizes = {5000, 300, 70000, 4096};
  std::vector<at::Tensor> pa, pb;
  NamedTensors na, nb;
  for (size_t i = 0; i < sizes.size(); ++i) {
    at::Tensor init = at::randn({sizes[i]});
    pa.push_back(trainable(init.clone()));
    pb.push_back(trainable(init.clone()));
    na.emplace_back("p" + std::to_string(i), pa.back());
    nb.emplace_back("p" + std::to_string(i), pb.back());
  }
  a.attach(na);
  b.attach(nb);
  for (int t = 0; t < 5; ++t) {
    for (size_t i = 0; i < sizes.size(); ++i) {
      at::Tensor g = uneven_gradient(sizes[i], 10 * t + i);
      set_grad(pa[i], g);
      set_grad(pb[i], g);
    }
    a.step(1e-3);
    b.step(1e-3);
  }
  for (size_t i = 0; i < sizes.size(); ++i) EXPECT_TRUE(at::equal(pa[i], pb[i])) << i;
  EXPECT_TRUE(same_state(a.state(), b.state()));

  // 20 + 274 + 16 blocks in 8-bit ranges (p1 keeps float32), 7 per page.
  const int64_t total_blocks = 20 + 274 + 16;
  EXPECT_EQ(a.store().page_count(), (total_blocks + 6) / 7);
  EXPECT_EQ(a.store().bytes(), total_blocks * 520);
  const auto pages = a.store().pages_of(1);  // p2: starts on page 2 (blocks 20..293)
  EXPECT_EQ(pages.front(), 20 / 7);
  EXPECT_EQ(pages.back(), 293 / 7);
  EXPECT_EQ(b.store().page_count(), 3);  // unpaged: one allocation per 8-bit tensor
}

TEST(OptimizerAdamW8bit, StateIsAboutTwoBytesPerParameter) {
  const int64_t n = int64_t{1} << 20;
  at::Tensor p = trainable(at::zeros({1024, 1024}));
  p8::AdamW8bit eight(options_8bit(true));
  eight.attach({{"w", p}});
  AdamW full({});
  full.attach({{"w", p}});
  // 1 byte each for m and v, plus two float32 absmax per 256 elements.
  EXPECT_EQ(eight.state_bytes(), 2 * n + 8 * (n / 256));
  EXPECT_NEAR(static_cast<double>(eight.state_bytes()) / n, 2.03125, 1e-12);
  EXPECT_EQ(full.state_bytes(), 8 * n);

  // A short last block still takes a whole record.
  at::Tensor q = trainable(at::zeros({4097}));
  p8::AdamW8bit odd(options_8bit(false));
  odd.attach({{"q", q}});
  EXPECT_EQ(odd.state_bytes(), 17 * 520);
}

// Noisy least squares with 10k parameters and a linearly decaying learning
// rate: 8-bit state must train as well as float32 state.
TEST(OptimizerAdamW8bit, TrainsLeastSquaresAsWellAsAdamW) {
  at::manual_seed(2024);
  const at::Tensor x = at::randn({400, 100});
  const at::Tensor w_true = at::randn({100, 100}) * 0.3;
  const at::Tensor y = at::matmul(x, w_true) + 0.5 * at::randn({400, 100});
  const at::Tensor w0 = at::randn({100, 100}) * 0.01;
  auto loss_of = [&](const at::Tensor& w) { return (at::matmul(x, w) - y).pow(2).mean().item<double>(); };
  auto train = [&](mftk::Optimizer& opt) {
    at::Tensor w = trainable(w0.clone());
    opt.attach({{"w", w}});
    for (int t = 0; t < 200; ++t) {
      at::Tensor residual = at::matmul(x, w.detach()) - y;
      set_grad(w, at::matmul(x.t(), residual) * (2.0 / residual.numel()));
      opt.step(1e-2 * (1.0 - t / 200.0) + 1e-4);
    }
    return loss_of(w.detach());
  };
  AdamW reference({});
  p8::AdamW8bit eight(options_8bit(true));
  const double initial = loss_of(w0);
  const double loss_fp32 = train(reference);
  const double loss_8bit = train(eight);
  ASSERT_TRUE(eight.is_8bit("w"));
  EXPECT_LT(loss_fp32, 0.05 * initial);  // the task is actually learned
  EXPECT_NEAR(loss_8bit, loss_fp32, 0.02 * loss_fp32)
      << "initial " << initial << ", adamw " << loss_fp32 << ", 8-bit " << loss_8bit;
}

TEST(OptimizerAdamW8bit, OptionsComeFromTheRecipeTable) {
  const auto paged_keys = p8::adamw_8bit_keys(true);
  auto o = p8::adamw_8bit_options_from_config(make_config(paged_keys, {{"page_size", int64_t{65536}}}), true);
  EXPECT_TRUE(o.paged);
  EXPECT_EQ(o.page_size, 65536);
  EXPECT_EQ(o.min_8bit_size, 4096);
  EXPECT_DOUBLE_EQ(o.weight_decay, 0.0);
  try {
    p8::adamw_8bit_options_from_config(make_config(paged_keys, {{"block_size", int64_t{128}}}), true);
    FAIL() << "no error";
  } catch (const mftk::UsageError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("recipe.toml:7:1"), std::string::npos) << msg;
    EXPECT_NE(msg.find("block_size"), std::string::npos) << msg;
    EXPECT_NE(msg.find("256"), std::string::npos) << msg;
  }
  // The unpaged twin has no page_size key.
  const auto keys = p8::adamw_8bit_keys(false);
  EXPECT_TRUE(std::none_of(keys.begin(), keys.end(), [](const auto& k) { return k.name == "page_size"; }));
  EXPECT_FALSE(p8::adamw_8bit_options_from_config(make_config(keys, {}), false).paged);
}

// A 7B LoRA (r=16 on all linear layers) trains ~42M parameters. Run with
// --gtest_also_run_disabled_tests; prints the step time at 2 threads.
TEST(OptimizerAdamW8bit, DISABLED_SpeedOnLoRA7bSizedState) {
  const int threads = at::get_num_threads();
  at::set_num_threads(2);
  NamedTensors params;
  for (int layer = 0; layer < 32; ++layer)
    for (auto [in, out] : {std::pair<int64_t, int64_t>{4096, 4096}, {4096, 1024}, {4096, 1024}, {4096, 4096},
                           {4096, 14336}, {4096, 14336}, {14336, 4096}}) {
      at::Tensor a = trainable(at::randn({16, in}) * 0.01), b = trainable(at::zeros({out, 16}));
      set_grad(a, at::randn({16, in}) * 1e-3);
      set_grad(b, at::randn({out, 16}) * 1e-3);
      params.emplace_back("l" + std::to_string(layer) + "." + std::to_string(params.size()) + ".A", a);
      params.emplace_back("l" + std::to_string(layer) + "." + std::to_string(params.size()) + ".B", b);
    }
  int64_t total = 0;
  for (const auto& [n, t] : params) total += t.numel();
  for (bool eight_bit : {true, false}) {
    std::unique_ptr<mftk::Optimizer> opt;
    if (eight_bit) opt = std::make_unique<p8::AdamW8bit>(options_8bit(true));
    else opt = std::make_unique<AdamW>(AdamWOptions{});
    opt->attach(params);
    opt->step(1e-4);  // first touch of the state
    const auto t0 = std::chrono::steady_clock::now();
    const std::clock_t cpu0 = std::clock();
    for (int i = 0; i < 3; ++i) opt->step(1e-4);
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / 3;
    // CPU time of both threads: on a busy machine wall time overstates the cost.
    const double cpu_ms = 1e3 * static_cast<double>(std::clock() - cpu0) / CLOCKS_PER_SEC / 3;
    std::printf("%s: %lld params, %.1f ms/step wall, %.1f ms/step CPU (2 threads), state %.1f MiB\n",
                eight_bit ? "paged_adamw_8bit" : "adamw", static_cast<long long>(total), ms, cpu_ms,
                opt->state_bytes() / 1048576.0);
  }
  at::set_num_threads(threads);
}
