// Activation (gradient) checkpointing: run a function without keeping its
// activations, and run it again in backward to get the gradients.
//
// defines: mftk::mistral::checkpointed
//
// libtorch 1.13 has no C++ torch.utils.checkpoint; this is the
// torch::autograd::Function pattern of TOOLCHAIN.md §2.
#pragma once

#include <functional>

#include "mftk/tensor.h"

namespace mftk::mistral {

// Returns fn(x). In backward, fn is re-run with grad mode on and the
// gradients for x and for `params` are taken from the recomputed graph.
// `params` must list every tensor fn reads that may need a gradient
// (leaves such as norm weights and LoRA matrices); a tensor fn uses but
// that is not listed gets no gradient. fn is kept alive by the graph and
// must be deterministic apart from the RNG, whose state is saved and
// restored around the recomputation (dropout masks repeat exactly).
at::Tensor checkpointed(std::function<at::Tensor(const at::Tensor&)> fn, const at::Tensor& x,
                        at::TensorList params);

}  // namespace mftk::mistral
