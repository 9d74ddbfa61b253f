// The "paged_adamw_8bit" and "adamw_8bit" optimizers: bitsandbytes' blockwise
// 8-bit AdamW (docs/formats.md §7, 8-bit optimiser). CPU parameters take
// the fast loops; parameters on an accelerator (or any under
// MFTK_GENERIC_KERNELS=1) the same update in libtorch ops (mftk/kernels.h),
// with the 8-bit state kept in host pages and copied over per update.
//
// defines: mftk::paged_adamw_8bit::AdamW8bitOptions,
//          mftk::paged_adamw_8bit::adamw_8bit_keys,
//          mftk::paged_adamw_8bit::adamw_8bit_options_from_config,
//          mftk::paged_adamw_8bit::AdamW8bit
//
// Parameters with at least max(min_8bit_size, 4096) elements keep m and v as
// one byte each per element (m on the signed dynamic map, v on the unsigned
// one) plus a float32 absmax per 256-element block and state. Per element,
// in float32, as bitsandbytes' kOptimizerStatic8bit2StateBlockwise kernel:
//   m = map1[c1]*absmax1, v = map2[c2]*absmax2          (dequantise)
//   v = v*beta2 + ((1-beta2)*g)*g;  m = m*beta1 + (1-beta1)*g
//   absmax1 = max|m|, absmax2 = max|v| over the block
//   p = p + step_size * m / (sqrt(v) + c2*eps)   step_size = -lr*c2/c1,
//                                                c1 = 1-beta1^t, c2 = sqrt(1-beta2^t)
//   p = p * (1 - lr*wd)                          (decay after the update)
//   c1 = nearest(m/absmax1) (moved one code toward m's sign if the sign
//   flipped), c2 = nearest(v/absmax2)
// A non-finite gradient element zeroes its m and v and leaves p alone.
// Smaller parameters keep float32 m and v and follow bitsandbytes' 32-bit
// Adam kernel (same formulas, v = v*beta2 + (1-beta2)*(g*g), no rounding).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "code_book.h"
#include "mftk/config.h"
#include "mftk/optimizer.h"
#include "paged_block_store.h"

namespace mftk::paged_adamw_8bit {

struct AdamW8bitOptions {
  double weight_decay = 0.0;  // bitsandbytes' AdamW8bit defaults to 0.01; mftk's adamw to 0
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  int64_t min_8bit_size = 4096;  // smaller parameters keep float32 state
  bool paged = true;
  int64_t page_size = int64_t{1} << 20;  // bytes per page when paged
};

// The keys of "paged_adamw_8bit" (paged = true) or "adamw_8bit".
std::vector<KeySpec> adamw_8bit_keys(bool paged);
AdamW8bitOptions adamw_8bit_options_from_config(const Config& config, bool paged);

class AdamW8bit final : public Optimizer {
 public:
  explicit AdamW8bit(AdamW8bitOptions options);
  ~AdamW8bit() override;

  void attach(const NamedTensors& params) override;
  void step(double lr) override;
  // bitsandbytes' names: "<param>.state1"/"<param>.state2" (uint8 codes with
  // the parameter's shape, or float32 m/v for small parameters),
  // "<param>.absmax1"/"<param>.absmax2" (float32, one per 256 elements),
  // "qmap1"/"qmap2" (the two maps, float32[256]) and "step" (int64 scalar).
  NamedTensors state() const override;
  // Restores exactly what state() wrote (also the maps, so a resume never
  // depends on how this build rounds the map construction).
  void load_state(const NamedTensors& state) override;
  // Pages + float32 moments of the small parameters.
  int64_t state_bytes() const override;
  // Two uint8 moments plus one float32 absmax per block each, counting every
  // tensor as large enough for 8-bit state; paged state lives in host memory.
  std::optional<OptimizerStatePlan> plan_state(int64_t trainable_parameters) const override {
    const int64_t blocks = (trainable_parameters + kBlockSize - 1) / kBlockSize;
    return OptimizerStatePlan{trainable_parameters * 2 + 2 * 4 * blocks,
                              "8-bit: 2 moments x 1 byte + an fp32 absmax per " + std::to_string(kBlockSize) +
                                  " values each (fp32 state would be 4x)" +
                                  (options_.paged ? "; paged in host memory" : ""),
                              options_.paged};
  }

  // For tests and reports.
  const CodeBook& signed_map() const { return *signed_map_; }
  const CodeBook& unsigned_map() const { return *unsigned_map_; }
  bool is_8bit(const std::string& param) const;
  const PagedBlockStore& store() const { return store_; }
  // Dequantised m and v of an 8-bit parameter (float32, its shape).
  std::pair<at::Tensor, at::Tensor> dequantized_moments(const std::string& param) const;

 private:
  struct Slot;
  const Slot& slot(const std::string& param) const;

  AdamW8bitOptions options_;
  std::unique_ptr<CodeBook> signed_map_;
  std::unique_ptr<CodeBook> unsigned_map_;
  std::vector<Slot> slots_;
  PagedBlockStore store_;
  bool attached_ = false;
  int64_t step_ = 0;
};

}  // namespace mftk::paged_adamw_8bit
