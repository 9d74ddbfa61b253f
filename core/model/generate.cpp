#include "generate.h"

#include <chrono>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/autograd/grad_mode.h>

#include "device.h"
#include "mftk/error.h"
#include "mftk/model.h"

namespace mftk::core {

namespace {

int32_t pick(const at::Tensor& logits_row, const GenerateOptions& o, at::Generator& gen) {
  // Picked on the host with a CPU generator: a seed samples the same tokens
  // whatever device computed the logits (one row of the vocabulary per token).
  at::Tensor logits = logits_row.to(at::kCPU, at::kFloat);
  if (o.temperature <= 0) return int32_t(logits.argmax().item<int64_t>());
  at::Tensor probs = at::softmax(logits / o.temperature, -1);
  if (o.top_p < 1.0) {
    // Keep the smallest set of tokens whose probability reaches top_p.
    auto sorted = probs.sort(-1, /*descending=*/true);
    at::Tensor p = std::get<0>(sorted), idx = std::get<1>(sorted);
    at::Tensor cum = p.cumsum(-1);
    at::Tensor drop = (cum - p) > o.top_p;
    p = p.masked_fill(drop, 0.0);
    at::Tensor choice = at::multinomial(p / p.sum(), 1, false, gen);
    return int32_t(idx[choice.item<int64_t>()].item<int64_t>());
  }
  return int32_t(at::multinomial(probs, 1, false, gen).item<int64_t>());
}

}  // namespace

Generation generate(Model& model, const std::vector<int32_t>& prompt, const GenerateOptions& o) {
  MFTK_CHECK(!prompt.empty(), "generate: empty prompt");
  at::NoGradGuard no_grad;
  model.set_training(false);
  at::Generator gen = at::detail::createCPUGenerator(o.seed);
  Generation out;
  auto state = model.start_decode(int64_t(prompt.size()) + o.max_new_tokens);
  const auto t0 = std::chrono::steady_clock::now();
  // Token ids go where the weights are (the logits come back to the host in pick()).
  const c10::Device device = model_device(model);
  at::Tensor ids = at::tensor(std::vector<int64_t>(prompt.begin(), prompt.end()), at::kLong).to(device);
  at::Tensor hidden = model.decode(*state, ids);
  auto t_first = t0;
  for (int64_t i = 0; i < o.max_new_tokens; ++i) {
    at::Tensor logits = model.logits(hidden.select(0, hidden.size(0) - 1));
    int32_t next = pick(logits, o, gen);
    out.tokens.push_back(next);
    if (i == 0) {
      t_first = std::chrono::steady_clock::now();
      out.seconds_to_first_token = std::chrono::duration<double>(t_first - t0).count();
    }
    if (next == o.eos_id) {
      out.stopped_at_eos = true;
      break;
    }
    if (i + 1 == o.max_new_tokens) break;
    hidden = model.decode(*state, at::tensor({int64_t(next)}, at::kLong).to(device));
  }
  const double rest = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_first).count();
  if (out.tokens.size() > 1 && rest > 0) out.tokens_per_second = double(out.tokens.size() - 1) / rest;
  return out;
}

}  // namespace mftk::core
