// Dequantisation throughput (see nf4_bench.h).
#include "nf4_bench.h"

#include <algorithm>
#include <chrono>
#include <functional>

#include <ATen/ATen.h>

namespace mftk::nf4 {

at::Tensor reference_dequantize(const Nf4Tensor& weight) {
  const int64_t n = weight.numel();
  const at::Tensor codes = at::tensor(std::vector<float>(kNf4Codes.begin(), kNf4Codes.end()), at::kFloat);
  const at::Tensor high = at::bitwise_right_shift(weight.packed, 4);
  const at::Tensor low = at::bitwise_and(weight.packed, 15);
  const at::Tensor index = at::stack({high, low}, 1).reshape({-1}).narrow(0, 0, n).to(at::kLong);
  const at::Tensor scale = weight.block_absmax().repeat_interleave(weight.blocksize).narrow(0, 0, n);
  return (codes.index_select(0, index) * scale).view(weight.shape);
}

std::vector<DequantThroughput> measure_dequant_throughput(int64_t rows, int64_t cols, int repeats) {
  const Nf4Tensor w = quantize_nf4(at::randn({rows, cols}) * 0.02, 64, false);
  const double packed_bytes = double(w.storage_bytes());
  const double n = double(w.numel());
  std::vector<DequantThroughput> out;
  auto time = [&](const std::string& name, int out_bytes_per_value, const std::function<at::Tensor()>& run) {
    run();  // warm up: first-touch pages, thread pool
    double best = 1e30;
    for (int r = 0; r < repeats; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      const at::Tensor result = run();
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      best = std::min(best, s);
    }
    out.push_back({name, best, n * out_bytes_per_value / best / 1e9, packed_bytes / best / 1e9});
  };
  time("nf4 scalar -> f32", 4, [&] { return dequantize_nf4(w, at::kFloat, DequantPath::scalar); });
  if (avx2_available()) time("nf4 avx2 -> f32", 4, [&] { return dequantize_nf4(w, at::kFloat, DequantPath::avx2); });
  time("nf4 scalar -> bf16", 2, [&] { return dequantize_nf4(w, at::kBFloat16, DequantPath::scalar); });
  if (avx2_available())
    time("nf4 avx2 -> bf16", 2, [&] { return dequantize_nf4(w, at::kBFloat16, DequantPath::avx2); });
  time("libtorch gather -> f32", 4, [&] { return reference_dequantize(w); });
  time("libtorch gather -> bf16", 2, [&] { return reference_dequantize(w).to(at::kBFloat16); });
  return out;
}

}  // namespace mftk::nf4
