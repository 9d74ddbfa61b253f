// Learning-rate schedules: a pure function of the step, so a checkpoint
// needs no scheduler state.
//
// defines: mftk::core::Schedule
#pragma once

#include <cstdint>
#include <string>

namespace mftk::core {

struct Schedule {
  std::string kind = "cosine";  // constant | linear | cosine
  double peak_lr = 2e-4;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;
  double min_lr_ratio = 0.0;

  // The learning rate of update number `step` (0-based), as Hugging Face's
  // schedulers give it: warmup rises linearly from 0 (step 0 -> 0), then
  // linear or cosine decay reaches min_lr_ratio * peak at total_steps.
  double lr(int64_t step) const;
};

// warmup_steps if > 0, else ceil(warmup_ratio * total_steps).
int64_t warmup_from(int64_t warmup_steps, double warmup_ratio, int64_t total_steps);

}  // namespace mftk::core
