#include "adamw_8bit.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <utility>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include "mftk/error.h"
#include "mftk/kernels.h"
#include "mftk/optimizer_state.h"

namespace mftk::paged_adamw_8bit {

// bitsandbytes uses float32 state for tensors under 4096 elements whatever
// min_8bit_size says (Optimizer2State.init_state).
constexpr int64_t kMin8bitFloor = 4096;
// Blocks per parallel task: ~16k elements, enough to amortise the fork.
constexpr int64_t kGrainBlocks = 64;
constexpr int64_t kGrainElements = 16384;
// Blocks per slice of the device-generic 8-bit update (2^20 elements).
constexpr int64_t kGenericSliceBlocks = 4096;

struct AdamW8bit::Slot {
  std::string name;
  at::Tensor param;
  int64_t numel = 0;
  bool eight_bit = false;
  size_t range = 0;     // in store_, when eight_bit
  int64_t blocks = 0;   // ceil(numel / 256), when eight_bit
  at::Tensor exp_avg;     // float32 state1, when !eight_bit
  at::Tensor exp_avg_sq;  // float32 state2, when !eight_bit
};

namespace {

std::string optimizer_name(bool paged) { return paged ? "paged_adamw_8bit" : "adamw_8bit"; }

// The scalars of one step, rounded to float32 as bitsandbytes passes them.
struct StepConstants {
  float beta1, beta2, one_minus_beta1, one_minus_beta2;
  float step_size;  // -lr * c2 / c1
  float eps_scaled;  // c2 * eps
  float decay;       // 1 - lr * wd
  bool apply_decay;  // wd > 0
};

StepConstants make_constants(const AdamW8bitOptions& o, double lr, int64_t step) {
  StepConstants k;
  const float lr_f = static_cast<float>(lr), wd = static_cast<float>(o.weight_decay);
  const float eps = static_cast<float>(o.eps);
  k.beta1 = static_cast<float>(o.beta1);
  k.beta2 = static_cast<float>(o.beta2);
  k.one_minus_beta1 = 1.0f - k.beta1;
  k.one_minus_beta2 = 1.0f - k.beta2;
  const float t = static_cast<float>(step);
  const float correction1 = 1.0f - std::pow(k.beta1, t);
  const float correction2 = std::sqrt(1.0f - std::pow(k.beta2, t));
  k.step_size = (-lr_f * correction2) / correction1;
  k.eps_scaled = correction2 * eps;
  k.decay = 1.0f - lr_f * wd;
  k.apply_decay = wd > 0.0f;
  return k;
}

// One 256-element block of the 8-bit step (Count = 256, or the element count
// of a tensor's short last block). Follows kOptimizerStatic8bit2StateBlockwise
// operation by operation; split into simple loops so the arithmetic ones
// vectorise (a constant Count lets the compiler see whole vectors).
template <int64_t Count>
void update_block(const float* g, float* p, const int64_t count_arg, const BlockRecord& rec, const CodeBook& map_m,
                  const CodeBook& map_v, const StepConstants& k) {
  const int64_t count = Count > 0 ? Count : count_arg;
  float m[kBlockSize];
  float v[kBlockSize];
  float x[kBlockSize];
  bool finite[kBlockSize];
  const float absmax_m = *rec.absmax_m, absmax_v = *rec.absmax_v;
  for (int64_t i = 0; i < count; ++i) {  // dequantise
    m[i] = map_m.value(rec.codes_m[i]) * absmax_m;
    v[i] = map_v.value(rec.codes_v[i]) * absmax_v;
  }
  for (int64_t i = 0; i < count; ++i) {
    const float gi = g[i];
    finite[i] = std::fabs(gi) <= std::numeric_limits<float>::max();  // false for inf and NaN
    const float vi = v[i] * k.beta2 + (k.one_minus_beta2 * gi) * gi;
    const float mi = m[i] * k.beta1 + k.one_minus_beta1 * gi;
    v[i] = finite[i] ? vi : 0.0f;
    m[i] = finite[i] ? mi : 0.0f;
  }
  // fmaxf semantics (a NaN never wins) without the libm call.
  float new_max_m = -std::numeric_limits<float>::max();
  float new_max_v = -std::numeric_limits<float>::max();
  for (int64_t i = 0; i < count; ++i) {
    const float am = std::fabs(m[i]), av = std::fabs(v[i]);
    new_max_m = am > new_max_m ? am : new_max_m;
    new_max_v = av > new_max_v ? av : new_max_v;
  }
  if (count < kBlockSize) {
    // The kernel pads a short last block with code 128 for m, code 0 for v
    // and a zero gradient, and those padding elements join the max.
    const float pad_m = (map_m.value(128) * absmax_m) * k.beta1 + k.one_minus_beta1 * 0.0f;
    const float pad_v = (map_v.value(0) * absmax_v) * k.beta2 + (k.one_minus_beta2 * 0.0f) * 0.0f;
    new_max_m = std::fabs(pad_m) > new_max_m ? std::fabs(pad_m) : new_max_m;
    new_max_v = std::fabs(pad_v) > new_max_v ? std::fabs(pad_v) : new_max_v;
  }
  *rec.absmax_m = new_max_m;
  *rec.absmax_v = new_max_v;

  // p += step_size * m / (sqrt(v) + c2*eps), then the decay; a non-finite
  // gradient element leaves its parameter alone.
  const float decay = k.apply_decay ? k.decay : 1.0f;
  for (int64_t i = 0; i < count; ++i) {
    float pi = p[i] + k.step_size * (m[i] / (std::sqrt(v[i]) + k.eps_scaled));
    if (k.apply_decay) pi = pi * decay;
    p[i] = finite[i] ? pi : p[i];
  }

  for (int64_t i = 0; i < count; ++i) x[i] = m[i] / new_max_m;
  for (int64_t i = 0; i < count; ++i) {
    uint8_t code = map_m.nearest(x[i]);
    // Keep m's sign: a negative m must not land on 0.0 or a positive code.
    if (std::signbit(map_m.value(code)) != std::signbit(m[i]))
      code = static_cast<uint8_t>(m[i] > 0.0f ? code + 1 : code - 1);
    rec.codes_m[i] = code;
  }
  for (int64_t i = 0; i < count; ++i) x[i] = v[i] / new_max_v;
  for (int64_t i = 0; i < count; ++i) rec.codes_v[i] = map_v.nearest(x[i]);
}

// bitsandbytes' 32-bit Adam kernel (kOptimizer32bit2State, ADAM).
void update_float32(const float* g, float* p, float* m, float* v, int64_t numel, const StepConstants& k) {
  at::parallel_for(0, numel, kGrainElements, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float gi = g[i];
      m[i] = m[i] * k.beta1 + k.one_minus_beta1 * gi;
      v[i] = v[i] * k.beta2 + k.one_minus_beta2 * (gi * gi);
      p[i] = p[i] + k.step_size * (m[i] / (std::sqrt(v[i]) + k.eps_scaled));
      if (k.apply_decay) p[i] = p[i] * k.decay;
    }
  });
}

// --- device-generic update -------------------------------------------------
// The two kernels above in libtorch tensor ops only, for parameters off the
// CPU (and on the CPU under MFTK_GENERIC_KERNELS=1). Same operations in the
// same order, each float32 result rounded on its own, so they agree with the
// CPU loops bit for bit (GenericKernels.Optimizer*). The 8-bit state stays in
// the host pages (paged_block_store.h): each parameter's records are copied
// to its device for the update and back, which is what paging means there.

// The maps and their search boundaries on one device.
struct GenericTables {
  at::Tensor values_m, values_v;          // float32 [256]
  at::Tensor boundaries_m, boundaries_v;  // float32 [255]
};

GenericTables make_tables(const CodeBook& map_m, const CodeBook& map_v, const at::Device& device) {
  auto table = [&](const float* values, int64_t count) {
    return at::tensor(at::ArrayRef<float>(values, static_cast<size_t>(count)), at::TensorOptions().dtype(at::kFloat))
        .to(device);
  };
  return {table(map_m.values().data(), 256), table(map_v.values().data(), 256),
          table(map_m.boundaries().data(), 255), table(map_v.boundaries().data(), 255)};
}

// CodeBook::nearest for every element: the count of boundaries strictly
// below x (searchsorted, left side); NaN gives code 0. int64 codes.
at::Tensor nearest_codes(const at::Tensor& boundaries, const at::Tensor& x) {
  return at::searchsorted(boundaries, x).masked_fill_(x.isnan(), 0);
}

// max |x| per row, a NaN never winning and -FLT_MAX for a row of NaNs (the
// CPU loop's fold).
at::Tensor row_absmax(const at::Tensor& rows) {
  const at::Tensor a = rows.abs();
  return a.masked_fill(a.isnan(), -std::numeric_limits<float>::max()).amax(1);
}

// One 8-bit parameter's state as tensors: codes [blocks, 256], absmax [blocks].
struct BlockState {
  at::Tensor codes_m, codes_v, absmax_m, absmax_v;
};

// update_block over every block at once. g and p: float32 [numel] on one
// device; `state` on the same device, replaced by the new state.
void update_8bit_generic(const at::Tensor& g, at::Tensor& p, BlockState& state, const GenericTables& t,
                         const StepConstants& k) {
  const int64_t numel = p.numel(), blocks = state.absmax_m.size(0);
  const int64_t pad = blocks * kBlockSize - numel;
  at::Tensor cm = state.codes_m.to(at::kLong).reshape({-1});
  at::Tensor cv = state.codes_v.to(at::kLong).reshape({-1});
  if (pad > 0) {
    // A short last block is padded as the kernel pads it: code 128 for m,
    // code 0 for v and a zero gradient, and the padding joins the block max.
    cm.narrow(0, numel, pad).fill_(128);
    cv.narrow(0, numel, pad).fill_(0);
  }
  const at::Tensor gb = at::constant_pad_nd(g, {0, pad}, 0).view({blocks, kBlockSize});
  const at::Tensor pb = at::constant_pad_nd(p, {0, pad}, 0).view({blocks, kBlockSize});
  at::Tensor m = t.values_m.index_select(0, cm).view({blocks, kBlockSize}) * state.absmax_m.unsqueeze(1);
  at::Tensor v = t.values_v.index_select(0, cv).view({blocks, kBlockSize}) * state.absmax_v.unsqueeze(1);
  const at::Tensor not_finite = gb.abs().le(std::numeric_limits<float>::max()).logical_not();
  v = (v * k.beta2 + (gb * k.one_minus_beta2) * gb).masked_fill_(not_finite, 0.0);
  m = (m * k.beta1 + gb * k.one_minus_beta1).masked_fill_(not_finite, 0.0);
  const at::Tensor new_max_m = row_absmax(m), new_max_v = row_absmax(v);

  at::Tensor pi = pb + (m / (v.sqrt() + k.eps_scaled)) * k.step_size;
  if (k.apply_decay) pi = pi * k.decay;
  p.copy_(at::where(not_finite, pb, pi).view({-1}).narrow(0, 0, numel));

  at::Tensor code_m = nearest_codes(t.boundaries_m, m / new_max_m.unsqueeze(1));
  // Keep m's sign: a negative m must not land on 0.0 or a positive code.
  const at::Tensor flipped =
      at::signbit(t.values_m.index_select(0, code_m.view({-1})).view({blocks, kBlockSize})).ne(at::signbit(m));
  code_m = at::where(flipped, at::where(m.gt(0), code_m + 1, code_m - 1), code_m).bitwise_and(0xFF);
  at::Tensor code_v = nearest_codes(t.boundaries_v, v / new_max_v.unsqueeze(1));
  if (pad > 0) {
    // The CPU kernel never writes a record's padding bytes: they stay 0.
    code_m.view({-1}).narrow(0, numel, pad).fill_(0);
    code_v.view({-1}).narrow(0, numel, pad).fill_(0);
  }
  state.codes_m = code_m.to(at::kByte);
  state.codes_v = code_v.to(at::kByte);
  state.absmax_m = new_max_m;
  state.absmax_v = new_max_v;
}

// update_float32 in tensor ops, in place on p, m and v (float32, one device).
void update_float32_generic(const at::Tensor& g, at::Tensor& p, at::Tensor& m, at::Tensor& v,
                            const StepConstants& k) {
  m.mul_(k.beta1).add_(g * k.one_minus_beta1);
  v.mul_(k.beta2).add_((g * g) * k.one_minus_beta2);
  at::Tensor pi = p + (m / (v.sqrt() + k.eps_scaled)) * k.step_size;
  if (k.apply_decay) pi.mul_(k.decay);
  p.copy_(pi);
}

// Saved tensors by name; reports missing, malformed and unused entries.
CodeValues code_values_from(const at::Tensor& t) {
  CodeValues out;
  const at::Tensor host = t.to(at::kCPU).contiguous();  // host bookkeeping: the CodeBook is host data
  std::memcpy(out.data(), host.data_ptr<float>(), sizeof(out));
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------
// recipe keys

std::vector<KeySpec> adamw_8bit_keys(bool paged) {
  const AdamW8bitOptions d;
  std::vector<KeySpec> keys = {
      KeySpec::number("weight_decay", d.weight_decay,
                      "decoupled weight decay, applied after the Adam update: p *= 1 - lr*weight_decay "
                      "(bitsandbytes' default is 0.01; mftk's is 0 like its adamw)")
          .range(0.0, 1e6),
      KeySpec::number("beta1", d.beta1, "decay of the gradient average (first moment), in [0, 1)").range(0.0, 1.0),
      KeySpec::number("beta2", d.beta2, "decay of the squared-gradient average (second moment), in [0, 1)")
          .range(0.0, 1.0),
      KeySpec::number("eps", d.eps, "added to sqrt of the second moment (scaled by sqrt(1-beta2^t))")
          .range(0.0, 1.0),
      KeySpec::integer("min_8bit_size", d.min_8bit_size,
                       "parameters with fewer elements keep float32 state (never below 4096, as bitsandbytes)")
          .range(0, 9.0e18),
      KeySpec::integer("block_size", kBlockSize,
                       "elements per absmax block; only 256 (bitsandbytes' blockwise 8-bit optimizers)")
          .range(1, 1 << 30),
  };
  if (paged)
    keys.push_back(KeySpec::integer("page_size", d.page_size,
                                    "bytes per host-memory page of 8-bit state (a page holds page_size/520 "
                                    "blocks of 256 elements)")
                       .range(static_cast<double>(kRecordBytes), static_cast<double>(int64_t{1} << 34)));
  return keys;
}

AdamW8bitOptions adamw_8bit_options_from_config(const Config& config, bool paged) {
  AdamW8bitOptions o;
  o.paged = paged;
  const AdamHyperparameters h = adam_hyperparameters_from_config(config);  // the SDK's checks, as adamw's
  o.weight_decay = h.weight_decay;
  o.beta1 = h.beta1;
  o.beta2 = h.beta2;
  o.eps = h.eps;
  o.min_8bit_size = config.get_int("min_8bit_size");
  if (o.min_8bit_size < 0)
    config.fail("min_8bit_size", fmt::format("must be >= 0, got {}", o.min_8bit_size), "4096 is the default");
  const int64_t block_size = config.get_int("block_size");
  if (block_size != kBlockSize)
    config.fail("block_size",
                fmt::format("only {} is supported, got {}: the blockwise 8-bit AdamW kernel and its saved state "
                            "use 256-element blocks",
                            kBlockSize, block_size),
                "remove the key or set block_size = 256");
  if (paged) {
    o.page_size = config.get_int("page_size");
    if (o.page_size < kRecordBytes)
      config.fail("page_size",
                  fmt::format("{} bytes cannot hold one 256-element block of state ({} bytes)", o.page_size,
                              kRecordBytes),
                  "1048576 (1 MiB) is the default");
  }
  return o;
}

// ---------------------------------------------------------------------------
// the optimizer

AdamW8bit::AdamW8bit(AdamW8bitOptions options)
    : options_(options),
      signed_map_(std::make_unique<CodeBook>(signed_dynamic_map())),
      unsigned_map_(std::make_unique<CodeBook>(unsigned_dynamic_map())) {
  if (options_.paged && options_.page_size < kRecordBytes)
    throw Error(fmt::format("{}: page_size {} bytes cannot hold one block of state ({} bytes)",
                            optimizer_name(true), options_.page_size, kRecordBytes));
}

AdamW8bit::~AdamW8bit() = default;

void AdamW8bit::attach(const NamedTensors& params) {
  const std::string name = optimizer_name(options_.paged);
  if (attached_) throw Error(name + ": attach() was called twice; create a new optimizer instead");
  check_trainable(params, name);  // the SDK's checks, as every optimizer makes them
  std::vector<int64_t> blocks;
  for (const auto& [pname, param] : params) {
    if (pname == "qmap1" || pname == "qmap2")  // this optimizer's own state names
      throw Error(fmt::format("{}: a trainable tensor has the reserved name '{}'", name, pname));
    Slot slot;
    slot.name = pname;
    slot.param = param;
    slot.numel = param.numel();
    slot.eight_bit = slot.numel >= std::max(options_.min_8bit_size, kMin8bitFloor);
    if (slot.eight_bit) {
      slot.range = blocks.size();
      slot.blocks = (slot.numel + kBlockSize - 1) / kBlockSize;
      blocks.push_back(slot.blocks);
    } else {
      // On the parameter's device, where its update runs.
      slot.exp_avg = at::zeros({slot.numel}, param.options().dtype(at::kFloat));
      slot.exp_avg_sq = at::zeros({slot.numel}, param.options().dtype(at::kFloat));
    }
    slots_.push_back(std::move(slot));
  }
  store_ = PagedBlockStore(blocks, options_.paged ? options_.page_size : 0);
  attached_ = true;
}

void AdamW8bit::step(double lr) {
  const std::string name = optimizer_name(options_.paged);
  if (!attached_) throw Error(name + ": step() before attach()");
  if (!std::isfinite(lr) || lr < 0)
    throw Error(fmt::format("{}: learning rate must be a finite number >= 0, got {}", name, lr),
                "check the [schedule] table");
  at::NoGradGuard no_grad;
  ++step_;
  const StepConstants k = make_constants(options_, lr, step_);
  std::optional<GenericTables> tables;  // built on first use, on the parameters' device
  for (auto& slot : slots_) {
    const at::Tensor& grad = slot.param.grad();
    if (!grad.defined()) continue;
    if (grad.numel() != slot.numel)
      throw Error(fmt::format("{}: gradient of '{}' has shape {}, the parameter {}", name, slot.name, grad.sizes(),
                              slot.param.sizes()));
    // Work on a float32 contiguous view; copy back when the parameter is not one.
    const bool in_place = slot.param.scalar_type() == at::kFloat && slot.param.is_contiguous();
    at::Tensor param = in_place ? slot.param : slot.param.to(at::kFloat).contiguous();
    at::Tensor g = grad.to(at::kFloat).contiguous();
    if (use_generic_path(param)) {
      at::Tensor flat = param.view({-1});
      if (slot.eight_bit) {
        if (!tables || tables->values_m.device() != param.device())
          tables = make_tables(*signed_map_, *unsigned_map_, param.device());
        const std::vector<BlockSpan> spans = store_.spans(slot.range);
        auto gather = [&](at::Tensor BlockSpan::*part) {
          std::vector<at::Tensor> parts;
          for (const BlockSpan& span : spans) parts.push_back(span.*part);
          return at::cat(parts, 0).to(param.device());
        };
        BlockState state{gather(&BlockSpan::codes_m), gather(&BlockSpan::codes_v), gather(&BlockSpan::absmax_m),
                         gather(&BlockSpan::absmax_v)};
        // A slice of blocks at a time: the update's float32 temporaries
        // (about ten per element) stay a few MiB for any parameter size.
        const at::Tensor g_flat = g.view({-1});
        for (int64_t b0 = 0; b0 < slot.blocks; b0 += kGenericSliceBlocks) {
          const int64_t nb = std::min(kGenericSliceBlocks, slot.blocks - b0);
          const int64_t first = b0 * kBlockSize, count = std::min(nb * kBlockSize, slot.numel - first);
          BlockState part{state.codes_m.narrow(0, b0, nb), state.codes_v.narrow(0, b0, nb),
                          state.absmax_m.narrow(0, b0, nb), state.absmax_v.narrow(0, b0, nb)};
          at::Tensor p_part = flat.narrow(0, first, count);
          update_8bit_generic(g_flat.narrow(0, first, count), p_part, part, *tables, k);
          state.codes_m.narrow(0, b0, nb).copy_(part.codes_m);
          state.codes_v.narrow(0, b0, nb).copy_(part.codes_v);
          state.absmax_m.narrow(0, b0, nb).copy_(part.absmax_m);
          state.absmax_v.narrow(0, b0, nb).copy_(part.absmax_v);
        }
        for (const BlockSpan& span : spans) {
          span.codes_m.copy_(state.codes_m.narrow(0, span.first_block, span.count));
          span.codes_v.copy_(state.codes_v.narrow(0, span.first_block, span.count));
          span.absmax_m.copy_(state.absmax_m.narrow(0, span.first_block, span.count));
          span.absmax_v.copy_(state.absmax_v.narrow(0, span.first_block, span.count));
        }
      } else {
        update_float32_generic(g.view({-1}), flat, slot.exp_avg, slot.exp_avg_sq, k);
      }
      if (!in_place) slot.param.copy_(param.view(slot.param.sizes()));
      continue;
    }
    float* p = param.data_ptr<float>();
    const float* gp = g.data_ptr<float>();
    if (slot.eight_bit) {
      const int64_t numel = slot.numel;
      const size_t range = slot.range;
      const CodeBook& map_m = *signed_map_;
      const CodeBook& map_v = *unsigned_map_;
      at::parallel_for(0, slot.blocks, kGrainBlocks, [&](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; ++b) {
          const int64_t offset = b * kBlockSize;
          const int64_t count = std::min(kBlockSize, numel - offset);
          if (count == kBlockSize) {
            update_block<kBlockSize>(gp + offset, p + offset, count, store_.record(range, b), map_m, map_v, k);
          } else {
            update_block<0>(gp + offset, p + offset, count, store_.record(range, b), map_m, map_v, k);
          }
        }
      });
    } else {
      update_float32(gp, p, slot.exp_avg.data_ptr<float>(), slot.exp_avg_sq.data_ptr<float>(), slot.numel, k);
    }
    if (!in_place) slot.param.copy_(param.view(slot.param.sizes()));
  }
}

NamedTensors AdamW8bit::state() const {
  NamedTensors out;
  for (const auto& slot : slots_) {
    if (!slot.eight_bit) {
      out.emplace_back(slot.name + ".state1", slot.exp_avg.view(slot.param.sizes()).clone());
      out.emplace_back(slot.name + ".state2", slot.exp_avg_sq.view(slot.param.sizes()).clone());
      continue;
    }
    at::Tensor codes_m = at::empty(slot.param.sizes(), at::kByte);
    at::Tensor codes_v = at::empty(slot.param.sizes(), at::kByte);
    at::Tensor absmax_m = at::empty({slot.blocks}, at::kFloat);
    at::Tensor absmax_v = at::empty({slot.blocks}, at::kFloat);
    uint8_t* cm = codes_m.data_ptr<uint8_t>();
    uint8_t* cv = codes_v.data_ptr<uint8_t>();
    for (int64_t b = 0; b < slot.blocks; ++b) {
      const BlockRecord rec = store_.record(slot.range, b);
      const int64_t offset = b * kBlockSize, count = std::min(kBlockSize, slot.numel - offset);
      std::memcpy(cm + offset, rec.codes_m, static_cast<size_t>(count));
      std::memcpy(cv + offset, rec.codes_v, static_cast<size_t>(count));
      absmax_m.data_ptr<float>()[b] = *rec.absmax_m;
      absmax_v.data_ptr<float>()[b] = *rec.absmax_v;
    }
    out.emplace_back(slot.name + ".state1", codes_m);
    out.emplace_back(slot.name + ".state2", codes_v);
    out.emplace_back(slot.name + ".absmax1", absmax_m);
    out.emplace_back(slot.name + ".absmax2", absmax_v);
  }
  auto map_tensor = [](const CodeBook& map) {
    at::Tensor t = at::empty({256}, at::kFloat);
    std::memcpy(t.data_ptr<float>(), map.values().data(), 256 * sizeof(float));
    return t;
  };
  out.emplace_back("qmap1", map_tensor(*signed_map_));
  out.emplace_back("qmap2", map_tensor(*unsigned_map_));
  out.emplace_back("step", at::scalar_tensor(step_, at::kLong));
  return out;
}

void AdamW8bit::load_state(const NamedTensors& state) {
  const std::string name = optimizer_name(options_.paged);
  if (!attached_) throw Error(name + ": load_state() before attach(); attach the trainable tensors first");
  OptimizerStateReader reader(state, name,
                              "the checkpoint was saved for other trainable tensors, by another optimizer or with "
                              "another min_8bit_size; resume with the recipe that wrote it");
  const int64_t step = reader.step();
  // Validate everything before changing anything.
  std::unique_ptr<CodeBook> map_m, map_v;
  map_m = std::make_unique<CodeBook>(code_values_from(reader.take("qmap1", at::kFloat, {256})));
  map_v = std::make_unique<CodeBook>(code_values_from(reader.take("qmap2", at::kFloat, {256})));
  std::vector<std::array<at::Tensor, 4>> saved;
  for (const auto& slot : slots_) {
    if (slot.eight_bit) {
      // To the host: the 8-bit state lives in host pages whatever the device.
      saved.push_back({reader.take(slot.name + ".state1", at::kByte, slot.param.sizes()).to(at::kCPU),
                       reader.take(slot.name + ".state2", at::kByte, slot.param.sizes()).to(at::kCPU),
                       reader.take(slot.name + ".absmax1", at::kFloat, {slot.blocks}).to(at::kCPU),
                       reader.take(slot.name + ".absmax2", at::kFloat, {slot.blocks}).to(at::kCPU)});
    } else {
      saved.push_back({reader.take(slot.name + ".state1", at::kFloat, slot.param.sizes()),
                       reader.take(slot.name + ".state2", at::kFloat, slot.param.sizes()), at::Tensor(),
                       at::Tensor()});
    }
  }
  reader.finish();

  for (size_t i = 0; i < slots_.size(); ++i) {
    Slot& slot = slots_[i];
    if (!slot.eight_bit) {
      slot.exp_avg.copy_(saved[i][0].reshape({-1}));
      slot.exp_avg_sq.copy_(saved[i][1].reshape({-1}));
      continue;
    }
    const uint8_t* cm = saved[i][0].data_ptr<uint8_t>();
    const uint8_t* cv = saved[i][1].data_ptr<uint8_t>();
    const float* am = saved[i][2].data_ptr<float>();
    const float* av = saved[i][3].data_ptr<float>();
    for (int64_t b = 0; b < slot.blocks; ++b) {
      const BlockRecord rec = store_.record(slot.range, b);
      const int64_t offset = b * kBlockSize, count = std::min(kBlockSize, slot.numel - offset);
      std::memcpy(rec.codes_m, cm + offset, static_cast<size_t>(count));
      std::memcpy(rec.codes_v, cv + offset, static_cast<size_t>(count));
      *rec.absmax_m = am[b];
      *rec.absmax_v = av[b];
    }
  }
  signed_map_ = std::move(map_m);
  unsigned_map_ = std::move(map_v);
  step_ = step;
}

int64_t AdamW8bit::state_bytes() const {
  int64_t bytes = store_.bytes();
  for (const auto& slot : slots_)
    if (!slot.eight_bit) bytes += 2 * slot.numel * static_cast<int64_t>(sizeof(float));
  return bytes;
}

const AdamW8bit::Slot& AdamW8bit::slot(const std::string& param) const {
  for (const auto& s : slots_)
    if (s.name == param) return s;
  throw Error(fmt::format("{}: no trainable tensor named '{}'", optimizer_name(options_.paged), param));
}

bool AdamW8bit::is_8bit(const std::string& param) const { return slot(param).eight_bit; }

std::pair<at::Tensor, at::Tensor> AdamW8bit::dequantized_moments(const std::string& param) const {
  const Slot& s = slot(param);
  if (!s.eight_bit) return {s.exp_avg.view(s.param.sizes()).clone(), s.exp_avg_sq.view(s.param.sizes()).clone()};
  at::Tensor m = at::empty({s.numel}, at::kFloat), v = at::empty({s.numel}, at::kFloat);
  float* mp = m.data_ptr<float>();
  float* vp = v.data_ptr<float>();
  for (int64_t b = 0; b < s.blocks; ++b) {
    const BlockRecord rec = store_.record(s.range, b);
    const int64_t offset = b * kBlockSize, count = std::min(kBlockSize, s.numel - offset);
    for (int64_t i = 0; i < count; ++i) {
      mp[offset + i] = signed_map_->value(rec.codes_m[i]) * *rec.absmax_m;
      vp[offset + i] = unsigned_map_->value(rec.codes_v[i]) * *rec.absmax_v;
    }
  }
  return {m.view(s.param.sizes()), v.view(s.param.sizes())};
}

}  // namespace mftk::paged_adamw_8bit
