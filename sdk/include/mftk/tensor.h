// Small shared tensor types.
//
// defines: mftk::NamedTensor, mftk::NamedTensors, mftk::kIgnoreIndex
#pragma once

#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

namespace mftk {

// A tensor with its Hugging Face / PEFT name ("model.layers.0.mlp.up_proj.weight").
using NamedTensor = std::pair<std::string, at::Tensor>;
using NamedTensors = std::vector<NamedTensor>;

// Target value that carries no loss (the convention of torch's cross_entropy).
constexpr int64_t kIgnoreIndex = -100;

}  // namespace mftk
