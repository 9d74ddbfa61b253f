#include "schedule.h"

#include <algorithm>
#include <cmath>

namespace mftk::core {

double Schedule::lr(int64_t step) const {
  if (step < warmup_steps) return peak_lr * double(step) / double(std::max<int64_t>(1, warmup_steps));
  if (kind == "constant") return peak_lr;
  const double progress =
      std::clamp(double(step - warmup_steps) / double(std::max<int64_t>(1, total_steps - warmup_steps)), 0.0, 1.0);
  const double shape = kind == "linear" ? 1.0 - progress : 0.5 * (1.0 + std::cos(M_PI * progress));
  return peak_lr * (min_lr_ratio + (1.0 - min_lr_ratio) * shape);
}

int64_t warmup_from(int64_t warmup_steps, double warmup_ratio, int64_t total_steps) {
  if (warmup_steps > 0) return warmup_steps;
  return int64_t(std::ceil(warmup_ratio * double(total_steps)));
}

}  // namespace mftk::core
