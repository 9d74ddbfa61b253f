// Text generation with a KV cache: greedy, temperature and top-p sampling.
//
// defines: mftk::core::GenerateOptions, mftk::core::Generation, mftk::core::generate
#pragma once

#include <cstdint>
#include <vector>

namespace mftk {
class Model;
}

namespace mftk::core {

struct GenerateOptions {
  int64_t max_new_tokens = 128;
  double temperature = 0.0;  // 0: greedy
  double top_p = 1.0;
  uint64_t seed = 0;
  int32_t eos_id = 2;
};

struct Generation {
  std::vector<int32_t> tokens;  // new tokens, including the EOS if one was produced
  bool stopped_at_eos = false;
  double seconds_to_first_token = 0;
  double tokens_per_second = 0;  // after the first token
};

Generation generate(Model& model, const std::vector<int32_t>& prompt, const GenerateOptions& options);

}  // namespace mftk::core
