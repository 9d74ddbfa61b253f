// The peer Mistral (+ LoRA) step (see peer_step.h). Deliberately plain:
// one op per line of the textbook formulas, no chunking, no reuse.
#include "peer_step.h"

#include <cmath>
#include <limits>

#include <ATen/ATen.h>

#include "mftk/error.h"

namespace mftk::bench {

const char* projection_name(int p) {
  static const char* const names[kProjections] = {"q_proj", "k_proj",  "v_proj",   "o_proj",
                                                  "gate_proj", "up_proj", "down_proj"};
  return names[p];
}

PeerModel::PeerModel(PeerShape shape, PeerWeights weights, PeerOptions options)
    : shape_(shape), w_(std::move(weights)), o_(options) {
  if (o_.compute_dtype != at::kFloat && o_.compute_dtype != at::kBFloat16)
    throw UsageError("peer: compute dtype must be f32 or bf16");
  if (!o_.train) {
    // forward only
  } else if (o_.lora) {
    for (auto& layer : w_.layers)
      for (int p = 0; p < kProjections; ++p) {
        MFTK_CHECK(layer.lora_A[p].defined() && layer.lora_B[p].defined(), "peer: LoRA weights of {} not set",
                   projection_name(p));
        trainable_.push_back(layer.lora_A[p]);
        trainable_.push_back(layer.lora_B[p]);
      }
  } else {
    trainable_.push_back(w_.embed_tokens);
    for (auto& layer : w_.layers) {
      trainable_.push_back(layer.input_norm);
      trainable_.push_back(layer.post_attention_norm);
      for (auto& wt : layer.weight) trainable_.push_back(wt);
    }
    trainable_.push_back(w_.final_norm);
    trainable_.push_back(w_.lm_head);
  }
  for (auto& t : trainable_) {
    t.requires_grad_(true);
    exp_avg_.push_back(at::zeros_like(t, at::kFloat));
    exp_avg_sq_.push_back(at::zeros_like(t, at::kFloat));
  }
  // inv_freq[j] = 1 / theta^(2j / D)
  const at::Tensor exponent = at::arange(0, shape_.head_dim, 2, at::kLong).to(at::kFloat) / double(shape_.head_dim);
  inv_freq_ = at::reciprocal(at::pow(shape_.rope_theta, exponent));
}

int64_t PeerModel::trainable_count() const {
  int64_t n = 0;
  for (const auto& t : trainable_) n += t.numel();
  return n;
}

at::Tensor PeerModel::rms_norm(const at::Tensor& x, const at::Tensor& weight) const {
  const at::Tensor x32 = x.to(at::kFloat);
  const at::Tensor normed = x32 * at::rsqrt(x32.pow(2).mean(-1, /*keepdim=*/true) + shape_.rms_norm_eps);
  return weight.to(x.scalar_type()) * normed.to(x.scalar_type());
}

at::Tensor PeerModel::project(const at::Tensor& x, const PeerLayer& layer, int p) const {
  const at::ScalarType dt = x.scalar_type();
  const at::Tensor& w = layer.weight[p];
  at::Tensor y = at::linear(w.scalar_type() == dt ? x : x.to(w.scalar_type()), w).to(dt);
  if (!o_.lora) return y;
  const double scaling = o_.alpha / double(o_.rank);
  const at::Tensor down = at::linear(x, layer.lora_A[p].to(dt));
  return y + at::linear(down, layer.lora_B[p].to(dt)) * scaling;
}

namespace {

at::Tensor rotate_half(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

}  // namespace

at::Tensor PeerModel::layer_forward(const at::Tensor& x, const PeerLayer& layer, const at::Tensor& cos,
                                    const at::Tensor& sin, const at::Tensor& mask) const {
  const int64_t B = x.size(0), T = x.size(1), nh = shape_.heads, nkv = shape_.kv_heads, D = shape_.head_dim;
  const at::Tensor h = rms_norm(x, layer.input_norm);
  at::Tensor q = project(h, layer, q_proj).view({B, T, nh, D}).transpose(1, 2);
  at::Tensor k = project(h, layer, k_proj).view({B, T, nkv, D}).transpose(1, 2);
  at::Tensor v = project(h, layer, v_proj).view({B, T, nkv, D}).transpose(1, 2);
  q = q * cos + rotate_half(q) * sin;
  k = k * cos + rotate_half(k) * sin;
  k = k.repeat_interleave(nh / nkv, 1);
  v = v.repeat_interleave(nh / nkv, 1);
  const at::Tensor scores = at::matmul(q, k.transpose(2, 3)) / std::sqrt(double(D)) + mask;
  const at::Tensor probs = at::softmax(scores, -1, at::kFloat).to(x.scalar_type());
  const at::Tensor attn = at::matmul(probs, v).transpose(1, 2).reshape({B, T, nh * D});
  const at::Tensor after_attention = x + project(attn, layer, o_proj);
  const at::Tensor h2 = rms_norm(after_attention, layer.post_attention_norm);
  const at::Tensor mlp = project(at::silu(project(h2, layer, gate_proj)) * project(h2, layer, up_proj), layer, down_proj);
  return after_attention + mlp;
}

at::Tensor PeerModel::hidden_states(const at::Tensor& ids) {
  const at::ScalarType dt = o_.compute_dtype;
  const int64_t T = ids.size(1);
  const at::Tensor positions = at::arange(T, at::kLong).to(at::kFloat);
  const at::Tensor freqs = at::outer(positions, inv_freq_);  // [T, D/2]
  const at::Tensor angles = at::cat({freqs, freqs}, -1);     // [T, D]
  const at::Tensor cos = angles.cos().to(dt), sin = angles.sin().to(dt);
  // 0 on and below the diagonal, the dtype's lowest value above it.
  const double lowest = dt == at::kBFloat16 ? -3.3895313892515355e38 : double(std::numeric_limits<float>::lowest());
  const at::Tensor mask = at::full({T, T}, lowest, at::TensorOptions().dtype(dt)).triu(1);

  at::Tensor x = at::embedding(w_.embed_tokens, ids).to(dt);
  for (const auto& layer : w_.layers) x = layer_forward(x, layer, cos, sin, mask);
  return rms_norm(x, w_.final_norm);
}

at::Tensor PeerModel::head_logits(const at::Tensor& hidden) const {
  const at::Tensor& head = w_.lm_head;
  const at::ScalarType dt = hidden.scalar_type();
  return at::linear(head.scalar_type() == dt ? hidden : hidden.to(head.scalar_type()), head).to(at::kFloat);
}

at::Tensor PeerModel::logits(const at::Tensor& ids) { return head_logits(hidden_states(ids)); }

double PeerModel::train_step(const at::Tensor& ids, int64_t prompt_tokens) {
  MFTK_CHECK(o_.train, "peer: train_step on a forward-only model");
  const int64_t B = ids.size(0), T = ids.size(1);
  // Position t predicts token t+1.
  at::Tensor labels = ids.narrow(1, 1, T - 1).clone();
  if (prompt_tokens > 1) labels.narrow(1, 0, std::min(prompt_tokens - 1, T - 1)).fill_(-100);
  labels = labels.reshape({B * (T - 1)});
  at::Tensor loss;
  if (o_.score_supervised_only) {
    // Gather the supervised rows' hidden states, then head and loss on those alone.
    // Label row b * (T - 1) + t is hidden row b * T + t (no copy of the [B, T, H] states).
    const at::Tensor hidden = hidden_states(ids).reshape({B * T, shape_.hidden});
    const at::Tensor label_rows = at::ne(labels, -100).nonzero().squeeze(1);
    const at::Tensor hidden_rows = label_rows + at::div(label_rows, T - 1, "floor");
    const at::Tensor scored = head_logits(hidden.index_select(0, hidden_rows));
    loss = at::nll_loss(at::log_softmax(scored, -1), labels.index_select(0, label_rows));
  } else {
    const at::Tensor all_logits = logits(ids);
    const at::Tensor shifted = all_logits.narrow(1, 0, T - 1).reshape({B * (T - 1), shape_.vocab});
    loss = at::nll_loss(at::log_softmax(shifted, -1), labels, {}, at::Reduction::Mean, /*ignore_index=*/-100);
  }
  loss.backward();
  const double value = loss.item<double>();

  if (o_.max_grad_norm > 0) {
    std::vector<at::Tensor> norms;
    for (const auto& t : trainable_)
      if (t.grad().defined()) norms.push_back(t.grad().to(at::kFloat).norm());
    const double total = at::stack(norms).norm().item<double>();
    const double coef = o_.max_grad_norm / (total + 1e-6);
    if (coef < 1.0)
      for (auto& t : trainable_)
        if (t.grad().defined()) t.mutable_grad().mul_(coef);
  }
  adamw_step();
  for (auto& t : trainable_) t.mutable_grad() = at::Tensor();
  return value;
}

void PeerModel::adamw_step() {
  at::NoGradGuard no_grad;
  ++step_;
  const double bias_correction1 = 1.0 - std::pow(o_.beta1, double(step_));
  const double bias_correction2 = 1.0 - std::pow(o_.beta2, double(step_));
  for (size_t i = 0; i < trainable_.size(); ++i) {
    at::Tensor& p = trainable_[i];
    if (!p.grad().defined()) continue;
    const at::Tensor g = p.grad().to(at::kFloat);
    if (o_.weight_decay != 0) p.mul_(1.0 - o_.lr * o_.weight_decay);
    exp_avg_[i].mul_(o_.beta1).add_(g, 1.0 - o_.beta1);
    exp_avg_sq_[i].mul_(o_.beta2).addcmul_(g, g, 1.0 - o_.beta2);
    const at::Tensor denom = (exp_avg_sq_[i].sqrt() / std::sqrt(bias_correction2)).add_(o_.eps);
    if (p.scalar_type() == at::kFloat) {
      p.addcdiv_(exp_avg_[i], denom, -o_.lr / bias_correction1);
    } else {
      p.copy_(p.to(at::kFloat).addcdiv_(exp_avg_[i], denom, -o_.lr / bias_correction1));
    }
  }
}

}  // namespace mftk::bench
