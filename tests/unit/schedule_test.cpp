// Learning-rate schedules against the formulas of Hugging Face's schedulers,
// worked out by hand for chosen steps (step s is the s-th update, 0-based):
//   warmup (s < W):  peak * s / W                  (so step 0 has lr 0)
//   constant:        peak
//   linear:          peak * (m + (1-m) * (T - s) / (T - W))
//   cosine:          peak * (m + (1-m) * 0.5 * (1 + cos(pi * (s - W) / (T - W))))
// with T total steps and m = min_lr_ratio; warmup_ratio r gives W = ceil(r * T).
#include <gtest/gtest.h>

#include "schedule.h"

using mftk::core::Schedule;
using mftk::core::warmup_from;

namespace {

constexpr double kPeak = 1e-3;
constexpr double kTol = 1e-15;

Schedule make(const std::string& kind, int64_t warmup, int64_t total, double min_ratio = 0.0) {
  Schedule s;
  s.kind = kind;
  s.peak_lr = kPeak;
  s.warmup_steps = warmup;
  s.total_steps = total;
  s.min_lr_ratio = min_ratio;
  return s;
}

}  // namespace

TEST(Schedule, ConstantWithWarmupRisesFromZeroThenStays) {
  const Schedule s = make("constant", 4, 20);
  EXPECT_EQ(s.lr(0), 0.0);
  EXPECT_NEAR(s.lr(1), 2.5e-4, kTol);
  EXPECT_NEAR(s.lr(2), 5.0e-4, kTol);
  EXPECT_NEAR(s.lr(3), 7.5e-4, kTol);
  EXPECT_NEAR(s.lr(4), 1e-3, kTol);
  EXPECT_NEAR(s.lr(19), 1e-3, kTol);
}

TEST(Schedule, ConstantWithoutWarmupStartsAtPeak) {
  const Schedule s = make("constant", 0, 5);
  EXPECT_NEAR(s.lr(0), kPeak, kTol);
  EXPECT_NEAR(s.lr(4), kPeak, kTol);
}

TEST(Schedule, LinearDecaysToZeroAtTotalSteps) {
  const Schedule s = make("linear", 2, 10);  // decay over T - W = 8 steps
  EXPECT_EQ(s.lr(0), 0.0);
  EXPECT_NEAR(s.lr(1), 5e-4, kTol);
  EXPECT_NEAR(s.lr(2), 1e-3, kTol);
  EXPECT_NEAR(s.lr(3), 8.75e-4, kTol);   // 7/8
  EXPECT_NEAR(s.lr(6), 5e-4, kTol);      // 4/8
  EXPECT_NEAR(s.lr(9), 1.25e-4, kTol);   // 1/8
  EXPECT_NEAR(s.lr(10), 0.0, kTol);
}

TEST(Schedule, LinearStopsAtItsFloor) {
  const Schedule s = make("linear", 2, 10, 0.1);
  EXPECT_NEAR(s.lr(2), 1e-3, kTol);
  EXPECT_NEAR(s.lr(6), 5.5e-4, kTol);  // 0.1 + 0.9 * 0.5
  EXPECT_NEAR(s.lr(10), 1e-4, kTol);
}

TEST(Schedule, CosineFollowsHalfACosineAfterWarmup) {
  const Schedule s = make("cosine", 2, 10);
  EXPECT_EQ(s.lr(0), 0.0);
  EXPECT_NEAR(s.lr(1), 5e-4, kTol);
  EXPECT_NEAR(s.lr(2), 1e-3, kTol);
  EXPECT_NEAR(s.lr(4), 1e-3 * 0.8535533905932737, 1e-15);  // (1 + cos(pi/4)) / 2
  EXPECT_NEAR(s.lr(6), 5e-4, kTol);                         // (1 + cos(pi/2)) / 2
  EXPECT_NEAR(s.lr(8), 1e-3 * 0.14644660940672624, 1e-15);  // (1 + cos(3pi/4)) / 2
  EXPECT_NEAR(s.lr(10), 0.0, kTol);
}

TEST(Schedule, CosineWithFloorAndNoWarmup) {
  const Schedule s = make("cosine", 0, 10, 0.2);
  EXPECT_NEAR(s.lr(0), 1e-3, kTol);  // no warmup: the first update uses the peak
  EXPECT_NEAR(s.lr(5), 6e-4, kTol);  // 0.2 + 0.8 * 0.5
  EXPECT_NEAR(s.lr(10), 2e-4, kTol);
}

TEST(Schedule, WarmupRatioRoundsUpAndStepsWin) {
  EXPECT_EQ(warmup_from(0, 0.1, 25), 3);    // ceil(2.5)
  EXPECT_EQ(warmup_from(0, 0.05, 100), 5);  // exact
  EXPECT_EQ(warmup_from(0, 0.0, 100), 0);
  EXPECT_EQ(warmup_from(7, 0.5, 100), 7);   // warmup_steps > 0 overrides the ratio
}

TEST(Schedule, WarmupGivenAsRatioShapesTheCurve) {
  Schedule s = make("cosine", warmup_from(0, 0.1, 25), 25);  // W = 3, decay over 22 steps
  EXPECT_EQ(s.lr(0), 0.0);
  EXPECT_NEAR(s.lr(1), 1e-3 / 3, kTol);
  EXPECT_NEAR(s.lr(2), 2e-3 / 3, kTol);
  EXPECT_NEAR(s.lr(3), 1e-3, kTol);
  EXPECT_NEAR(s.lr(14), 5e-4, kTol);  // (14 - 3) / 22 = 1/2
}
