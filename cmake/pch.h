// Precompiled for every torch-using target (see MFTK_USE_PCH). Sources still
// include what they use; this only makes the heavy headers cheap.
#pragma once
#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/autograd.h>
#include <nlohmann/json.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <map>
#include <memory>
#include <string>
#include <vector>
