// bitsandbytes' dynamic quantisation map (see mftk/dynamic_map.h).
#include "mftk/dynamic_map.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "mftk/error.h"

namespace mftk {

namespace {

// A float32 product rounded on its own (never fused into a neighbouring
// add), as PyTorch's elementwise kernels round it.
float product_f32(float a, float b) {
  volatile float p = a * b;
  return p;
}

// float32 linspace as PyTorch's CPU kernel computes it: step = (end -
// start) / (steps - 1); the first steps/2 points are start + step * i, the
// others end - step * (steps - 1 - i), each product rounded to float.
std::vector<float> linspace_f32(float start, float end, int64_t steps) {
  if (steps < 1) throw Error("linspace_f32: steps must be at least 1, got " + std::to_string(steps));
  std::vector<float> points(static_cast<size_t>(steps));
  if (steps == 1) {
    points[0] = start;
    return points;
  }
  const float step = (end - start) / static_cast<float>(steps - 1);
  const int64_t half = steps / 2;
  for (int64_t i = 0; i < steps; ++i)
    points[static_cast<size_t>(i)] = i < half ? start + product_f32(step, static_cast<float>(i))
                                              : end - product_f32(step, static_cast<float>(steps - 1 - i));
  return points;
}

}  // namespace

DynamicMap make_dynamic_map(bool is_signed) {
  std::vector<float> values;
  values.reserve(256);
  for (int i = 0; i < 7; ++i) {
    const int64_t count = is_signed ? (int64_t{1} << i) + 1 : (int64_t{1} << (i + 1)) + 1;
    const std::vector<float> bounds = linspace_f32(0.1f, 1.0f, count);
    // Python computes 10 ** (i - 6) as a double; the tensor multiply rounds
    // the scalar to float first.
    const float scale = static_cast<float>(std::pow(10.0, i - 6));
    for (size_t k = 0; k + 1 < bounds.size(); ++k) {
      const float midpoint = (bounds[k] + bounds[k + 1]) / 2.0f;
      values.push_back(product_f32(scale, midpoint));
      if (is_signed) values.push_back(product_f32(-scale, midpoint));
    }
  }
  values.push_back(0.0f);
  values.push_back(1.0f);
  if (values.size() != 256)
    throw Error("make_dynamic_map: built " + std::to_string(values.size()) + " values instead of 256 (internal error)");
  std::sort(values.begin(), values.end());
  DynamicMap map;
  std::copy(values.begin(), values.end(), map.begin());
  return map;
}

const DynamicMap& signed_dynamic_map() {
  // Leaked: plugins may read it from their own static destructors.
  static const DynamicMap* map = new DynamicMap(make_dynamic_map(true));
  return *map;
}

const DynamicMap& unsigned_dynamic_map() {
  static const DynamicMap* map = new DynamicMap(make_dynamic_map(false));
  return *map;
}

uint8_t nearest_dynamic_code(const DynamicMap& map, float x) {
  int pivot = 127;
  int upper_pivot = 255;
  int lower_pivot = 0;
  float lower = -1.0f;
  float upper = 1.0f;
  float value = map[pivot];
  for (int stride = 64; stride > 0; stride >>= 1) {
    if (x > value) {
      lower_pivot = pivot;
      lower = value;
      pivot += stride;
    } else {
      upper_pivot = pivot;
      upper = value;
      pivot -= stride;
    }
    value = map[pivot];
  }
  // The search never visits the two ends; their values are the real ones.
  if (upper_pivot == 255) upper = map[255];
  if (lower_pivot == 0) lower = map[0];
  if (x > value) {
    const float midpoint = (upper + value) * 0.5f;
    return static_cast<uint8_t>(x > midpoint ? upper_pivot : pivot);
  }
  const float midpoint = (lower + value) * 0.5f;
  return static_cast<uint8_t>(x < midpoint ? lower_pivot : pivot);
}

}  // namespace mftk
