// The safetensors dtype names (the table in safetensors_internal.h, in the
// reference library's enum order) and their libtorch 1.13 equivalents.

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "mftk/error.h"
#include "mftk/safetensors.h"
#include "safetensors_internal.h"

namespace mftk {

namespace safetensors_impl {

int dtype_rank(const std::string& name) {
  for (int i = 0; i < kDtypeCount; ++i) {
    if (name == kDtypes[i].name) return i;
  }
  return -1;
}

std::string known_dtype_names() {
  std::string out;
  for (int i = 0; i < kDtypeCount; ++i) {
    if (i) out += ' ';
    out += kDtypes[i].name;
  }
  return out;
}

std::string torch_dtype_names() {
  std::string out;
  for (const auto& spec : kDtypes) {
    if (spec.torch == at::ScalarType::Undefined) continue;
    if (!out.empty()) out += ' ';
    out += spec.name;
  }
  return out;
}

}  // namespace safetensors_impl

using namespace safetensors_impl;

at::ScalarType dtype_from_safetensors(const std::string& dtype) {
  const int rank = dtype_rank(dtype);
  if (rank < 0) {
    throw Error(fmt::format("unknown safetensors dtype '{}' (known: {})", dtype, known_dtype_names()));
  }
  if (kDtypes[rank].torch == at::ScalarType::Undefined) {
    throw Error(fmt::format("safetensors dtype {} has no libtorch 1.13 equivalent (supported: {})", dtype,
                            torch_dtype_names()),
                "convert the tensor to bf16/f16/f32 before loading it");
  }
  return kDtypes[rank].torch;
}

std::string dtype_to_safetensors(at::ScalarType t) {
  for (const auto& spec : kDtypes) {
    if (spec.torch == t) return spec.name;
  }
  throw Error(fmt::format("libtorch dtype {} has no safetensors equivalent (supported: {})", c10::toString(t),
                          torch_dtype_names()),
              "convert the tensor (e.g. .to(at::kFloat)) before saving it");
}

}  // namespace mftk
