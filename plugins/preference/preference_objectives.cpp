// DPO and ORPO over rows of pairs; see preference_objectives.h.
#include "preference_objectives.h"

#include <algorithm>
#include <cstring>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <torch/csrc/autograd/grad_mode.h>

#include "mftk/adapter.h"
#include "mftk/error.h"
#include "mftk/model.h"
#include "mftk/token_logprobs.h"

namespace mftk::preference {
namespace {

// Pairs a row holds: k counts when documents 2k and 2k+1 both have a
// supervised target (compute() uses the same rule, so units agree).
int64_t pairs_in_row(const PackedRow& row) {
  std::vector<uint8_t> has;
  for (size_t t = 0; t < row.targets.size(); ++t) {
    const int32_t d = row.doc_ids[t];
    if (d < 0 || row.targets[t] == kIgnoreIndex) continue;
    if (size_t(d) >= has.size()) has.resize(size_t(d) + 1, 0);
    has[size_t(d)] = 1;
  }
  int64_t n = 0;
  for (size_t k = 0; 2 * k + 1 < has.size(); ++k) n += has[2 * k] && has[2 * k + 1];
  return n;
}

// The pairs of a batch as flat [pairs] tensors: each side's summed log p and
// its supervised-token count.
struct Pairs {
  at::Tensor chosen, rejected;                // fp32 log p sums
  at::Tensor chosen_tokens, rejected_tokens;  // fp32 counts
  at::Tensor index;                           // which (row, k) slots hold a pair, flat
  int64_t count = 0;
};

// Even column count: a row's last pair index is k = (D - 1) / 2.
at::Tensor pad_to_even(const at::Tensor& t) {
  return t.size(1) % 2 ? at::constant_pad_nd(t, {0, 1}, 0) : t;
}

Pairs split_pairs(const at::Tensor& logp, const at::Tensor& tokens) {
  const at::Tensor lp = pad_to_even(logp), tk = pad_to_even(tokens);
  const int64_t D = lp.size(1);
  Pairs p;
  const at::Tensor ct = tk.slice(1, 0, D, 2).reshape({-1}), rt = tk.slice(1, 1, D, 2).reshape({-1});
  p.index = ((ct > 0) & (rt > 0)).nonzero().squeeze(1);
  p.count = p.index.numel();
  p.chosen = lp.slice(1, 0, D, 2).reshape({-1}).index_select(0, p.index);
  p.rejected = lp.slice(1, 1, D, 2).reshape({-1}).index_select(0, p.index);
  p.chosen_tokens = ct.index_select(0, p.index).to(at::kFloat);
  p.rejected_tokens = rt.index_select(0, p.index).to(at::kFloat);
  return p;
}

// The same slots of a reference [B, D] tensor.
at::Tensor select_side(const at::Tensor& logp, const at::Tensor& index, int64_t side) {
  const at::Tensor lp = pad_to_even(logp);
  return lp.slice(1, side, lp.size(1), 2).reshape({-1}).index_select(0, index);
}

// Identifies a row by its tokens and document boundaries (padding left out),
// for the full fine-tuning reference recorded before training.
std::string row_key(const at::Tensor& ids, const at::Tensor& docs) {
  std::string key;
  const auto id = ids.accessor<int64_t, 1>();
  const auto doc = docs.accessor<int32_t, 1>();
  for (int64_t t = 0; t < ids.size(0); ++t) {
    if (doc[t] < 0) continue;
    const int64_t v[2] = {id[t], doc[t]};
    key.append(reinterpret_cast<const char*>(v), sizeof(v));
  }
  return key;
}

// Switches an adapter off for the reference pass and on again however it ends.
class AdapterOff {
 public:
  explicit AdapterOff(Adapter& adapter) : adapter_(adapter) { adapter_.set_enabled(false); }
  ~AdapterOff() { adapter_.set_enabled(true); }
  AdapterOff(const AdapterOff&) = delete;
  AdapterOff& operator=(const AdapterOff&) = delete;

 private:
  Adapter& adapter_;
};

// TRL's metrics, summed over the pairs (the trainer divides by the units).
std::vector<double> reward_metrics(const at::Tensor& chosen_rewards, const at::Tensor& rejected_rewards,
                                   const at::Tensor& chosen_logps, const at::Tensor& rejected_logps) {
  const at::Tensor c = chosen_rewards.detach().to(at::kDouble), r = rejected_rewards.detach().to(at::kDouble);
  return {c.sum().item<double>(),
          r.sum().item<double>(),
          (c > r).to(at::kDouble).sum().item<double>(),
          (c - r).sum().item<double>(),
          chosen_logps.detach().to(at::kDouble).sum().item<double>(),
          rejected_logps.detach().to(at::kDouble).sum().item<double>()};
}

const std::vector<std::string> kRewardMetrics = {"rewards/chosen", "rewards/rejected", "rewards/accuracies",
                                                 "rewards/margins", "logps/chosen",     "logps/rejected"};

// log(1 - e^x) for x < 0, accurate near 0 and for very negative x.
at::Tensor log1m_exp(const at::Tensor& x) {
  return at::where(x > -0.6931471805599453, at::log(-at::expm1(x)), at::log1p(-at::exp(x)));
}

}  // namespace

// ------------------------------------------------------------------ dpo ----

std::vector<std::string> DpoObjective::metric_names() const { return kRewardMetrics; }

int64_t DpoObjective::units(const PackedRow& row) const { return pairs_in_row(row); }

void DpoObjective::prepare(Model& model, Adapter* adapter, const Batch& batch) {
  if (adapter) return;  // the adapter switched off is the reference
  at::NoGradGuard no_grad;
  const DocumentLogprobs d = document_logprobs(model, batch);
  const at::Tensor logp = d.logp.to(at::kFloat).contiguous();
  for (int64_t b = 0; b < logp.size(0); ++b) {
    const at::Tensor row = logp[b];
    reference_[row_key(batch.input_ids[b], batch.doc_ids[b])] =
        std::vector<float>(row.data_ptr<float>(), row.data_ptr<float>() + row.numel());
  }
}

NamedTensors DpoObjective::prepared_state() const {
  if (reference_.empty()) return {};
  std::vector<int64_t> keys, key_counts, logp_counts;
  std::vector<float> logps;
  for (const auto& [key, values] : reference_) {
    // A key is the row's (id, document) pairs as int64 bytes (row_key).
    const auto* v = reinterpret_cast<const int64_t*>(key.data());
    keys.insert(keys.end(), v, v + key.size() / sizeof(int64_t));
    key_counts.push_back(int64_t(key.size() / sizeof(int64_t)));
    logps.insert(logps.end(), values.begin(), values.end());
    logp_counts.push_back(int64_t(values.size()));
  }
  auto i64 = [](const std::vector<int64_t>& v) { return at::tensor(at::ArrayRef<int64_t>(v), at::kLong); };
  return {{"dpo.reference.keys", i64(keys)},
          {"dpo.reference.key_counts", i64(key_counts)},
          {"dpo.reference.logps", at::tensor(at::ArrayRef<float>(logps), at::kFloat)},
          {"dpo.reference.logp_counts", i64(logp_counts)}};
}

bool DpoObjective::restore_prepared(const NamedTensors& state) {
  std::map<std::string, at::Tensor> t;
  for (const auto& [name, tensor] : state) t[name] = tensor.contiguous();
  for (const char* name : {"dpo.reference.keys", "dpo.reference.key_counts", "dpo.reference.logps",
                           "dpo.reference.logp_counts"})
    if (!t.count(name) || t[name].dim() != 1) return false;
  const at::Tensor keys = t["dpo.reference.keys"], key_counts = t["dpo.reference.key_counts"];
  const at::Tensor logps = t["dpo.reference.logps"], logp_counts = t["dpo.reference.logp_counts"];
  if (keys.scalar_type() != at::kLong || key_counts.scalar_type() != at::kLong ||
      logp_counts.scalar_type() != at::kLong || logps.scalar_type() != at::kFloat ||
      key_counts.numel() != logp_counts.numel() || key_counts.sum().item<int64_t>() != keys.numel() ||
      logp_counts.sum().item<int64_t>() != logps.numel() || (key_counts.numel() && key_counts.min().item<int64_t>() < 0) ||
      (logp_counts.numel() && logp_counts.min().item<int64_t>() < 0))
    return false;
  std::map<std::string, std::vector<float>> restored;
  const int64_t* k = keys.data_ptr<int64_t>();
  const float* l = logps.data_ptr<float>();
  const auto kc = key_counts.accessor<int64_t, 1>(), lc = logp_counts.accessor<int64_t, 1>();
  for (int64_t i = 0; i < key_counts.numel(); ++i) {
    const int64_t nk = kc[i], nl = lc[i];
    restored[std::string(reinterpret_cast<const char*>(k), size_t(nk) * sizeof(int64_t))] = std::vector<float>(l, l + nl);
    k += nk, l += nl;
  }
  reference_ = std::move(restored);
  return true;
}

at::Tensor DpoObjective::reference_logp(Model& model, Adapter* adapter, const Batch& batch, int64_t docs) {
  if (adapter) {
    at::NoGradGuard no_grad;
    AdapterOff off(*adapter);
    return document_logprobs(model, batch).logp;
  }
  at::Tensor out = at::zeros({batch.input_ids.size(0), docs}, at::kFloat);
  for (int64_t b = 0; b < out.size(0); ++b) {
    const auto it = reference_.find(row_key(batch.input_ids[b], batch.doc_ids[b]));
    if (it == reference_.end())
      throw Error("dpo: a row has no reference log-probabilities (full fine-tuning records them before training)",
                  "this is a bug in the caller: Objective::prepare must see every row before compute");
    for (int64_t d = 0; d < docs && d < int64_t(it->second.size()); ++d) out[b][d] = it->second[size_t(d)];
  }
  return out;
}

ObjectiveResult DpoObjective::compute(Model& model, Adapter* adapter, const Batch& batch) {
  // The reference first: with an adapter it is a forward of the same batch
  // with the adapter off, and needs no graph.
  const int64_t docs = batch.doc_ids.numel() ? std::max<int64_t>(batch.doc_ids.max().item<int64_t>() + 1, 0) : 0;
  const at::Tensor ref = reference_logp(model, adapter, batch, docs).to(at::kFloat);
  const DocumentLogprobs policy = document_logprobs(model, batch);
  Pairs p = split_pairs(policy.logp, policy.tokens);
  at::Tensor ref_c = select_side(ref, p.index, 0), ref_r = select_side(ref, p.index, 1);
  at::Tensor pi_c = p.chosen, pi_r = p.rejected;
  if (o_.loss_type == "ipo") {  // TRL: IPO compares length-averaged log-probabilities
    pi_c = pi_c / p.chosen_tokens, pi_r = pi_r / p.rejected_tokens;
    ref_c = ref_c / p.chosen_tokens, ref_r = ref_r / p.rejected_tokens;
  }
  const at::Tensor h = (pi_c - pi_r) - (ref_c - ref_r);
  at::Tensor losses;
  if (o_.loss_type == "ipo") {
    losses = (h - 1.0 / (2.0 * o_.beta)).pow(2);
  } else {
    losses = -(1.0 - o_.label_smoothing) * at::log_sigmoid(o_.beta * h) - o_.label_smoothing * at::log_sigmoid(-o_.beta * h);
  }
  ObjectiveResult r;
  r.loss_sum = losses.sum();
  r.units = p.count;
  r.metrics = reward_metrics(o_.beta * (pi_c - ref_c), o_.beta * (pi_r - ref_r), pi_c, pi_r);
  return r;
}

// ----------------------------------------------------------------- orpo ----

std::vector<std::string> OrpoObjective::metric_names() const {
  auto names = kRewardMetrics;
  names.insert(names.end(), {"nll_loss", "log_odds_ratio", "log_odds_chosen"});
  return names;
}

int64_t OrpoObjective::units(const PackedRow& row) const { return pairs_in_row(row); }

ObjectiveResult OrpoObjective::compute(Model& model, Adapter*, const Batch& batch) {
  const DocumentLogprobs policy = document_logprobs(model, batch);
  Pairs p = split_pairs(policy.logp, policy.tokens);
  const at::Tensor a_c = p.chosen / p.chosen_tokens, a_r = p.rejected / p.rejected_tokens;
  const at::Tensor log_odds = (a_c - a_r) - (log1m_exp(a_c) - log1m_exp(a_r));
  const at::Tensor ratio = at::log_sigmoid(log_odds);
  const at::Tensor nll = -a_c;
  ObjectiveResult r;
  r.loss_sum = (nll - o_.beta * ratio).sum();
  r.units = p.count;
  r.metrics = reward_metrics(o_.beta * a_c, o_.beta * a_r, a_c, a_r);
  r.metrics.push_back(nll.detach().to(at::kDouble).sum().item<double>());
  r.metrics.push_back(ratio.detach().to(at::kDouble).sum().item<double>());
  r.metrics.push_back(log_odds.detach().to(at::kDouble).sum().item<double>());
  return r;
}

// ----------------------------------------------------------------- keys ----

std::vector<KeySpec> dpo_keys() {
  return {KeySpec::number("beta", 0.1, "strength of the pull towards the reference model (TRL's beta)").range(1e-6, 1e6),
          KeySpec::number("label_smoothing", 0.0,
                          "conservative DPO: the assumed probability that a pair's preference is flipped (sigmoid only)")
              .range(0.0, 0.5),
          KeySpec::string("loss_type", "sigmoid",
                          "sigmoid: DPO's -log sigma(beta h); ipo: (h - 1/(2 beta))^2 on length-averaged log-probs")
              .one_of({"sigmoid", "ipo"})};
}

DpoOptions dpo_options_from_config(const Config& config) {
  DpoOptions o;
  o.beta = config.get_number("beta");
  o.label_smoothing = config.get_number("label_smoothing");
  o.loss_type = config.get_string("loss_type");
  if (o.loss_type == "ipo" && o.label_smoothing > 0)
    config.fail("label_smoothing", "label smoothing is defined for the sigmoid loss only, not for ipo",
                "set label_smoothing = 0 or loss_type = \"sigmoid\"");
  return o;
}

std::vector<KeySpec> orpo_keys() {
  return {KeySpec::number("beta", 0.1, "weight of the odds-ratio term against the chosen NLL (the paper's lambda)")
              .range(0.0, 1e6)};
}

OrpoOptions orpo_options_from_config(const Config& config) { return OrpoOptions{config.get_number("beta")}; }

}  // namespace mftk::preference
