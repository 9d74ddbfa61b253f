// Nf4Tensor (see nf4_tensor.h).
#include "nf4_tensor.h"

#include <limits>
#include <string>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include "mftk/dynamic_map.h"
#include "mftk/error.h"
#include "mftk/kernels.h"
#include "nf4_generic.h"

namespace mftk::nf4 {

bool is_bitsandbytes_blocksize(int64_t blocksize) {
  return blocksize >= kMinBlocksize && blocksize <= kMaxBlocksize && (blocksize & (blocksize - 1)) == 0;
}

int64_t checked_numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape)
    if (d <= 0 || __builtin_mul_overflow(n, d, &n)) return -1;
  return n <= std::numeric_limits<int64_t>::max() - kMaxBlocksize ? n : -1;
}

int64_t Nf4Tensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

at::Tensor Nf4Tensor::block_absmax() const {
  if (!double_quant()) return absmax;
  if (use_generic_path(quantized_absmax))
    return recover_absmax_generic(quantized_absmax, nested_absmax, nested_map, offset);
  at::Tensor out = at::empty({blocks()}, at::kFloat);
  recover_absmax(quantized_absmax.data_ptr<uint8_t>(), nested_absmax.data_ptr<float>(), nested_map.data_ptr<float>(),
                 offset, blocks(), out.data_ptr<float>());
  return out;
}

int64_t Nf4Tensor::storage_bytes() const {
  auto bytes = [](const at::Tensor& t) { return t.defined() ? t.numel() * int64_t(t.element_size()) : int64_t{0}; };
  return bytes(packed) + bytes(absmax) + bytes(quantized_absmax) + bytes(nested_absmax);
}

Nf4Tensor Nf4Tensor::to(const at::Device& device) const {
  Nf4Tensor out = *this;
  for (at::Tensor* t : {&out.packed, &out.absmax, &out.quantized_absmax, &out.nested_absmax, &out.nested_map})
    if (t->defined()) *t = t->to(device);
  return out;
}

void Nf4Tensor::check(const std::string& what) const {
  auto fail = [&](const std::string& message) {
    throw Error(fmt::format("nf4: {}: {}", what, message),
                "the quantised weight is damaged or was not written by bitsandbytes / mftk; re-quantise it "
                "from the original checkpoint");
  };
  if (shape.empty()) fail("no shape");
  for (int64_t d : shape)
    if (d <= 0) fail(fmt::format("shape [{}] has an empty dimension", fmt::join(shape, ", ")));
  if (checked_numel(shape) < 0) fail(fmt::format("shape [{}] has more values than an int64 counts", fmt::join(shape, ", ")));
  if (!is_bitsandbytes_blocksize(blocksize))
    fail(fmt::format("blocksize {} is not a power of two from {} to {}", blocksize, kMinBlocksize, kMaxBlocksize));
  auto expect = [&](const at::Tensor& t, const char* name, at::ScalarType type, int64_t count) {
    if (!t.defined()) fail(fmt::format("{} is missing", name));
    if (t.scalar_type() != type)
      fail(fmt::format("{} is {}, expected {}", name, c10::toString(t.scalar_type()), c10::toString(type)));
    if (t.numel() != count) fail(fmt::format("{} holds {} values, expected {}", name, t.numel(), count));
    if (!t.is_contiguous()) fail(fmt::format("{} is not a contiguous tensor", name));
    // The parts live together: on the CPU, or all on one accelerator (generic kernels).
    if (packed.defined() && t.device() != packed.device())
      fail(fmt::format("{} is on {}, the packed weight on {}", name, t.device().str(), packed.device().str()));
  };
  expect(packed, "packed weight", at::kByte, (numel() + 1) / 2);
  if (double_quant()) {
    if (absmax.defined()) fail("holds both absmax and its double-quantised form");
    expect(quantized_absmax, "quantised absmax", at::kByte, blocks());
    expect(nested_absmax, "nested absmax", at::kFloat, (blocks() + kNestedBlocksize - 1) / kNestedBlocksize);
    expect(nested_map, "nested quant map", at::kFloat, 256);
  } else {
    expect(absmax, "absmax", at::kFloat, blocks());
  }
}

Nf4Tensor quantize_nf4(const at::Tensor& weight, int64_t blocksize, bool double_quant) {
  if (!weight.defined() || weight.numel() == 0) throw Error("nf4: cannot quantise an empty weight");
  if (!is_bitsandbytes_blocksize(blocksize))
    throw Error(fmt::format("nf4: blocksize {} is not a power of two from {} to {}", blocksize, kMinBlocksize,
                            kMaxBlocksize),
                "QLoRA uses 64");
  Nf4Tensor q;
  q.shape = weight.sizes().vec();
  q.blocksize = blocksize;
  q.dtype = weight.scalar_type();
  if (use_generic_path(weight)) {
    // Off the CPU (or forced): the libtorch-op kernels, results on the weight's device.
    Nf4Blocks blocks = quantize_blocks_generic(weight, blocksize);
    q.packed = std::move(blocks.packed);
    if (!double_quant) {
      q.absmax = std::move(blocks.absmax);
    } else {
      DoubleQuantized dq = double_quantize_absmax_generic(blocks.absmax);
      q.quantized_absmax = std::move(dq.codes);
      q.nested_absmax = std::move(dq.nested_absmax);
      q.offset = dq.offset;
      q.nested_map = nested_map_tensor().to(weight.device());
    }
    return q;
  }
  // A mapped checkpoint view is already contiguous; anything else is copied once.
  const at::Tensor values = weight.contiguous();
  const int64_t n = values.numel();
  q.packed = at::empty({(n + 1) / 2}, at::kByte);
  at::Tensor absmax = at::empty({q.blocks()}, at::kFloat);
  quantize_blocks(values.data_ptr(), values.scalar_type(), n, blocksize, q.packed.data_ptr<uint8_t>(),
                  absmax.data_ptr<float>());
  if (!double_quant) {
    q.absmax = absmax;
  } else {
    q.quantized_absmax = at::empty({q.blocks()}, at::kByte);
    q.nested_absmax = at::empty({(q.blocks() + kNestedBlocksize - 1) / kNestedBlocksize}, at::kFloat);
    double_quantize_absmax(absmax.data_ptr<float>(), q.blocks(), q.quantized_absmax.data_ptr<uint8_t>(),
                           q.nested_absmax.data_ptr<float>(), &q.offset);
    q.nested_map = nested_map_tensor();
  }
  return q;
}

at::Tensor dequantize_nf4(const Nf4Tensor& weight, at::ScalarType dtype, DequantPath path) {
  const at::Tensor absmax = weight.block_absmax();
  const int64_t n = weight.numel();
  // Off the CPU always; on the CPU when forced, unless a test or the bench
  // asked for a particular CPU kernel.
  if (!weight.packed.device().is_cpu() || (generic_kernels() && path == DequantPath::automatic)) {
    const at::ScalarType kernel_dtype = dtype == at::kBFloat16 ? at::kBFloat16 : at::kFloat;
    at::Tensor out =
        dequantize_blocks_generic(weight.packed, absmax, n, weight.blocksize, kernel_dtype).view(weight.shape);
    return dtype == kernel_dtype ? out : out.to(dtype);
  }
  if (dtype == at::kBFloat16) {
    at::Tensor out = at::empty(weight.shape, at::kBFloat16);
    dequantize_blocks_bf16(weight.packed.data_ptr<uint8_t>(), absmax.data_ptr<float>(), n, weight.blocksize,
                           reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>()), path);
    return out;
  }
  at::Tensor out = at::empty(weight.shape, at::kFloat);
  dequantize_blocks_f32(weight.packed.data_ptr<uint8_t>(), absmax.data_ptr<float>(), n, weight.blocksize,
                        out.data_ptr<float>(), path);
  return dtype == at::kFloat ? out : out.to(dtype);
}

const at::Tensor& nested_map_tensor() {
  // Never freed: weights of any library may share it until the process ends.
  static const at::Tensor* map = [] {
    const DynamicMap& values = signed_dynamic_map();
    auto* t = new at::Tensor(at::empty({256}, at::kFloat));
    std::copy(values.begin(), values.end(), t->data_ptr<float>());
    return t;
  }();
  return *map;
}

}  // namespace mftk::nf4
