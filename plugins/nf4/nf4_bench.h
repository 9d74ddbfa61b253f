// Dequantisation throughput: the NF4 kernels against a plain libtorch
// gather-and-scale, for the README and the bench (no gtest).
//
// defines: mftk::nf4::DequantThroughput, mftk::nf4::reference_dequantize,
//          mftk::nf4::measure_dequant_throughput
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "nf4_tensor.h"

namespace mftk::nf4 {

struct DequantThroughput {
  std::string name;         // "nf4 avx2 -> f32", "libtorch gather -> f32" ...
  double seconds = 0;       // best of the repeats, one full weight
  double output_gbps = 0;   // dequantised bytes written per second
  double packed_gbps = 0;   // packed + absmax bytes read per second
};

// The dequantisation written with ATen ops only: split the nibbles, gather
// the code values, multiply by each block's absmax (float32 result).
at::Tensor reference_dequantize(const Nf4Tensor& weight);

// Quantises a random [rows, cols] float32 weight (blocksize 64) and times
// every dequantisation path `repeats` times at the current thread count.
std::vector<DequantThroughput> measure_dequant_throughput(int64_t rows, int64_t cols, int repeats);

}  // namespace mftk::nf4
