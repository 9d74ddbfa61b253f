// NF4 kernels in libtorch ops (see nf4_generic.h). Each step mirrors the
// loop in nf4_kernels.cpp it replaces; the comments name the twin.
#include "nf4_generic.h"

#include <algorithm>

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "mftk/dynamic_map.h"
#include "mftk/error.h"
#include "mftk/kernels.h"
#include "nf4_kernels.h"

namespace mftk::nf4 {

namespace {

// Values per slice of the quantiser and the dequantiser: bounds the int64
// index tensor at 32 MiB and each float32 temporary at 16 MiB.
constexpr int64_t kSliceValues = int64_t{1} << 22;

template <size_t N>
at::Tensor float_table(const std::array<float, N>& values, const at::Device& device) {
  return at::tensor(at::ArrayRef<float>(values.data(), N), at::TensorOptions().dtype(at::kFloat)).to(device);
}

void check_layout(int64_t n, int64_t blocksize) {
  if (n < 0 || blocksize < 2 || blocksize % 2 != 0)
    throw Error(fmt::format("nf4: bad layout (n = {}, blocksize = {}); blocksize must be even and positive", n,
                            blocksize));
}

// max |x| per row with fmax's rule (a NaN never wins; an all-NaN row gives 0),
// as the CPU loops start from 0 and fold with std::fmax.
at::Tensor row_absmax(const at::Tensor& rows) {
  const at::Tensor a = rows.abs();
  return a.masked_fill(a.isnan(), 0.0).amax(1);
}

}  // namespace

Nf4Blocks quantize_blocks_generic(const at::Tensor& values, int64_t blocksize) {
  const int64_t n = values.numel();
  check_layout(n, blocksize);
  const auto dtype = values.scalar_type();
  if (dtype != at::kFloat && dtype != at::kBFloat16 && dtype != at::kHalf)
    throw Error(fmt::format("nf4: cannot quantise {} values", c10::toString(dtype)),
                "NF4 quantises float32, bfloat16 or float16 weights");
  const int64_t blocks = (n + blocksize - 1) / blocksize;
  const at::Tensor flat = values.reshape({-1});
  const at::Tensor thresholds = float_table(kNf4Thresholds, values.device());
  Nf4Blocks out;
  out.packed = at::empty({(n + 1) / 2}, values.options().dtype(at::kByte));
  out.absmax = at::empty({blocks}, values.options().dtype(at::kFloat));
  // A slice of blocks at a time, so the float32 temporaries stay a few MiB
  // whatever the weight's size (a 7B MLP weight would otherwise hold ~1 GB
  // of them at load time).
  const int64_t slice_blocks = std::max<int64_t>(1, kSliceValues / blocksize);
  for (int64_t b0 = 0; b0 < blocks; b0 += slice_blocks) {
    const int64_t nb = std::min(slice_blocks, blocks - b0);
    const int64_t first = b0 * blocksize, count = std::min(nb * blocksize, n - first);
    // Widening bf16 / f16 to float is exact, as as_float() in the CPU loop.
    // Padding with 0: it never raises a block's max, and an odd tail's extra
    // nibble is the code of 0 / absmax, as the CPU loop pads it.
    const at::Tensor rows =
        at::constant_pad_nd(flat.narrow(0, first, count).to(at::kFloat), {0, nb * blocksize - count}, 0)
            .view({nb, blocksize});
    const at::Tensor absmax = row_absmax(rows);
    out.absmax.narrow(0, b0, nb).copy_(absmax);
    // x * (1 / absmax): an all-zero block gives 0 * inf = NaN -> code 0.
    const at::Tensor scaled = rows * absmax.reciprocal().unsqueeze(1);
    // The number of thresholds strictly below x (bucketize, right = false) is
    // nearest_nf4_code's count of x > threshold[k].
    const at::Tensor codes = at::bucketize(scaled, thresholds, /*out_int32=*/true, /*right=*/false)
                                 .masked_fill_(scaled.isnan(), 0)
                                 .to(at::kByte);
    const at::Tensor pairs = codes.view({-1, 2});
    out.packed.narrow(0, first / 2, (count + 1) / 2)
        .copy_((pairs.select(1, 0) * 16 + pairs.select(1, 1)).narrow(0, 0, (count + 1) / 2));
  }
  return out;
}

at::Tensor dequantize_blocks_generic(const at::Tensor& packed, const at::Tensor& absmax, int64_t n,
                                     int64_t blocksize, at::ScalarType dtype) {
  check_layout(n, blocksize);
  MFTK_CHECK(dtype == at::kFloat || dtype == at::kBFloat16,
             "nf4: generic dequantisation to {} (Float or BFloat16 only)", c10::toString(dtype));
  const at::Tensor table = float_table(kNf4Codes, packed.device());
  const at::Tensor scales = absmax.to(packed.device(), at::kFloat);
  at::Tensor out = at::empty({n}, packed.options().dtype(dtype));
  const int64_t blocks = (n + blocksize - 1) / blocksize;
  const int64_t slice_blocks = std::max<int64_t>(1, kSliceValues / blocksize);
  for (int64_t b0 = 0; b0 < blocks; b0 += slice_blocks) {
    const int64_t nb = std::min(slice_blocks, blocks - b0);
    const int64_t first = b0 * blocksize, count = std::min(nb * blocksize, n - first);
    const at::Tensor bytes = packed.narrow(0, first / 2, (count + 1) / 2);
    // High nibble first, as the packing order.
    const at::Tensor codes =
        at::stack({at::bitwise_right_shift(bytes, 4), bytes.bitwise_and(0x0F)}, 1).view({-1}).narrow(0, 0, count);
    // code value * block absmax, one float32 product (the CPU kernels' scaled table).
    const at::Tensor scale = scales.narrow(0, b0, nb).repeat_interleave(blocksize).narrow(0, 0, count);
    const at::Tensor product = table.index_select(0, codes.to(at::kLong)) * scale;
    out.narrow(0, first, count).copy_(product);  // to bf16: round to nearest even, as c10::BFloat16
  }
  return out;
}

DoubleQuantized double_quantize_absmax_generic(const at::Tensor& absmax) {
  const int64_t blocks = absmax.numel();
  if (blocks <= 0) throw Error("nf4: double quantisation of an empty absmax");
  DoubleQuantized out;
  // The mean summed in double and rounded to float (one host read; load time only).
  out.offset = static_cast<float>(absmax.to(at::kDouble).sum().item<double>() / static_cast<double>(blocks));
  const at::Tensor centred = absmax.to(at::kFloat) - out.offset;
  const int64_t nested = (blocks + kNestedBlocksize - 1) / kNestedBlocksize;
  const at::Tensor rows =
      at::constant_pad_nd(centred, {0, nested * kNestedBlocksize - blocks}, 0).view({nested, kNestedBlocksize});
  out.nested_absmax = row_absmax(rows);
  const at::Tensor x = (rows * out.nested_absmax.reciprocal().unsqueeze(1)).view({-1}).narrow(0, 0, blocks);
  out.codes = nearest_dynamic_codes(signed_dynamic_map_tensor(absmax.device()), x);
  return out;
}

at::Tensor recover_absmax_generic(const at::Tensor& codes, const at::Tensor& nested_absmax, const at::Tensor& map,
                                  float offset) {
  const int64_t blocks = codes.numel();
  const at::Device device = codes.device();
  const at::Tensor scale =
      nested_absmax.to(device, at::kFloat).repeat_interleave(kNestedBlocksize).narrow(0, 0, blocks);
  // Two roundings, as recover_absmax: the product, then the sum.
  const at::Tensor scaled = map.to(device, at::kFloat).index_select(0, codes.to(at::kLong)) * scale;
  return scaled + offset;
}

}  // namespace mftk::nf4
