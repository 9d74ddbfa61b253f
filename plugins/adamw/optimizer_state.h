// Helpers shared by the fp32 optimizers: checking what attach() receives and
// reading back what state() wrote.
//
// defines: mftk::adamw::check_trainable, mftk::adamw::StateReader
#pragma once

#include <map>
#include <string>

#include "mftk/tensor.h"

namespace mftk::adamw {

// Throws mftk::Error unless every tensor is defined, floating point, on the
// CPU or one device, and named once.
void check_trainable(const NamedTensors& params, const std::string& optimizer);

// Looks up saved state tensors by name and reports what is missing, has the
// wrong shape or dtype, or was not used (a state saved for other parameters).
class StateReader {
 public:
  StateReader(const NamedTensors& state, std::string optimizer);
  // The scalar int64 "step".
  int64_t step();
  // The tensor `name`, required to be float32 with `like`'s shape.
  at::Tensor float_like(const std::string& name, const at::Tensor& like);
  bool has(const std::string& name) const { return tensors_.count(name) != 0; }
  // Throws if some saved tensor was never asked for.
  void finish() const;

 private:
  at::Tensor take(const std::string& name);
  std::map<std::string, at::Tensor> tensors_;
  std::map<std::string, bool> used_;
  std::string optimizer_;
};

}  // namespace mftk::adamw
