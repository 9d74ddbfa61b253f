// Model checks: the attention rule of batch.h and the decode contract of
// model.h, on the tiny random checkpoint.
//   forward shapes        hidden [B, T, hidden], logits [B, T, vocab], finite
//   causal                changing token k never moves a logit at a position < k
//   documents separate    a document packed after another scores as it does alone
//   kv cache              decode() token by token equals one full forward pass
//   description           architecture() names tensors the model holds, with their shapes
//   training mode         set_training() reaches every slot's op (an adapter's dropout hears it there)
#include <map>
#include <memory>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "mftk/model.h"
#include "plugin_check/check_support.h"
#include "registry.h"

namespace mftk::core::check {
namespace {

// Wraps a slot's op and remembers the last training mode it was told.
class ModeProbe final : public LinearOp {
 public:
  explicit ModeProbe(std::shared_ptr<LinearOp> inner) : inner_(std::move(inner)) {}
  at::Tensor forward(const at::Tensor& x) override { return inner_->forward(x); }
  at::Tensor dense_weight(at::ScalarType dtype) const override { return inner_->dense_weight(dtype); }
  NamedTensors parameters() override { return inner_->parameters(); }
  int64_t storage_bytes() const override { return inner_->storage_bytes(); }
  std::string describe() const override { return inner_->describe(); }
  void set_training(bool on) override {
    heard = on ? 1 : 0;
    inner_->set_training(on);
  }
  const std::shared_ptr<LinearOp>& inner() const { return inner_; }
  int heard = -1;  // -1: never told

 private:
  std::shared_ptr<LinearOp> inner_;
};

// fp32 on a tiny model: what differs only by summation order stays far below this.
constexpr double kSameLogits = 1e-4;
constexpr int64_t kLen = 12;  // longer than the checkpoint's sliding window (4)

// hidden [B, T, hidden], logits [B, T, vocab], all finite.
void check_forward_shapes(Model& model, const ModelShape& shape, Checker& checker) {
  const auto batch = single_document_batch(random_ids(2, kLen, shape.vocab_size, 1));
  at::NoGradGuard no_grad;
  const auto hidden = model.forward(batch);
  if (hidden.sizes() != at::IntArrayRef({2, kLen, shape.hidden_size}))
    throw CheckFailed(fmt::format("forward() gave {}, expected [2, {}, {}] (hidden_size from shape())",
                                  sizes_text(hidden), kLen, shape.hidden_size));
  const auto logits = model.logits(hidden);
  if (logits.sizes() != at::IntArrayRef({2, kLen, shape.vocab_size}))
    throw CheckFailed(fmt::format("logits() gave {}, expected [2, {}, {}]", sizes_text(logits),
                                  kLen, shape.vocab_size));
  if (!logits.isfinite().all().item<bool>()) throw CheckFailed("logits hold non-finite values");
  checker.note(fmt::format("logits {}", sizes_text(logits)));
}

// Changing token k (early, middle, last) never moves a logit at a position < k.
void check_causal(Model& model, const ModelShape& shape, Checker& checker) {
  const auto ids = random_ids(1, kLen, shape.vocab_size, 2);
  const auto base = logits_of(model, single_document_batch(ids));
  double worst = 0;
  for (int64_t k : {int64_t(1), kLen / 2, kLen - 1}) {
    auto changed = ids.clone();
    changed[0][k] = 3 + (changed[0][k].item<int64_t>() - 3 + 1) % (shape.vocab_size - 3);
    const auto other = logits_of(model, single_document_batch(changed));
    const double d = max_relative_difference(other.narrow(1, 0, k), base.narrow(1, 0, k), "logits before k");
    worst = std::max(worst, d);
    if (d > kSameLogits)
      throw CheckFailed(fmt::format("changing token {} moved the logits of earlier positions by {:.3g} (relative); "
                                    "a query may see only keys at or before it",
                                    k, d));
  }
  checker.note(fmt::format("max relative change before k {:.2g}", worst));
}

// A document packed after another scores as it does alone.
void check_documents_separate(Model& model, const ModelShape& shape, Checker& checker) {
  // Row: document A (5 tokens) then document B (7), positions restarting.
  const int64_t la = 5, lb = kLen - 5;
  const auto ids = random_ids(1, kLen, shape.vocab_size, 3);
  Batch packed = single_document_batch(ids);
  for (int64_t t = la; t < kLen; ++t) {
    packed.position_ids[0][t] = t - la;
    packed.doc_ids[0][t] = 1;
  }
  const auto together = logits_of(model, packed).narrow(1, la, lb);
  const auto alone = logits_of(model, single_document_batch(ids.narrow(1, la, lb).contiguous()));
  const double d = max_relative_difference(together, alone, "second document's logits");
  checker.note(fmt::format("max relative difference {:.2g}", d));
  if (d > kSameLogits)
    throw CheckFailed(fmt::format("a document packed after another scores differently from the same document "
                                  "alone (max relative difference {:.3g}); attention must follow doc_ids and "
                                  "position_ids (batch.h)",
                                  d));
}

// Exporters place tensors by architecture()'s table and the core finds the
// head by it: each entry must be a tensor the model holds, at the stated shape.
void check_description(Model& model, Checker& checker) {
  const ModelArchitecture arch = model.architecture();
  if (arch.tensors.empty()) throw CheckSkipped("architecture() describes no tensors");
  std::map<std::string, std::vector<int64_t>> held;
  for (const auto& [name, t] : model.named_parameters()) held[name] = t.sizes().vec();
  std::map<std::string, std::vector<int64_t>> slots;
  for (const LinearSlot* slot : model.linear_slots())
    slots[slot->name + ".weight"] = slot->op->dense_weight(at::kFloat).sizes().vec();
  for (const auto& t : arch.tensors) {
    const auto& where = t.in_slot ? slots : held;
    const auto it = where.find(t.name);
    if (it == where.end())
      throw CheckFailed(fmt::format("architecture() lists '{}' ({}), which the model does not hold", t.name,
                                    t.in_slot ? "in linear_slots()" : "in named_parameters()"));
    if (it->second != t.shape)
      throw CheckFailed(fmt::format("architecture() gives '{}' shape [{}], the model holds [{}]", t.name,
                                    fmt::join(t.shape, ", "), fmt::join(it->second, ", ")));
  }
  if (!arch.head_slot.empty() && !slots.count(arch.head_slot + ".weight"))
    throw CheckFailed(fmt::format("architecture() names head slot '{}', which linear_slots() lacks", arch.head_slot));
  checker.note(fmt::format("{} tensors, head '{}'", arch.tensors.size(), arch.head_slot));
}

// decode() on a 3-token prompt, then token by token, equals one full forward pass.
void check_kv_cache(Model& model, const ModelShape& shape, Checker& checker) {
  const auto ids = random_ids(1, kLen, shape.vocab_size, 4);
  const auto full = logits_of(model, single_document_batch(ids));
  at::NoGradGuard no_grad;
  auto state = model.start_decode(kLen);
  std::vector<at::Tensor> steps;
  // A prompt of 3 tokens at once, then one token per call.
  steps.push_back(model.decode(*state, ids[0].narrow(0, 0, 3).contiguous()));
  for (int64_t t = 3; t < kLen; ++t) steps.push_back(model.decode(*state, ids[0].narrow(0, t, 1).contiguous()));
  if (state->position() != kLen)
    throw CheckFailed(fmt::format("DecodeState::position() is {} after {} tokens", state->position(), kLen));
  const auto decoded = model.logits(at::cat(steps, 0)).to(at::kFloat).unsqueeze(0);
  const double d = max_relative_difference(decoded, full, "decoded logits");
  const std::string window =
      shape.sliding_window ? fmt::format("sliding window {}", *shape.sliding_window) : "no sliding window";
  checker.note(fmt::format("max relative difference {:.2g} over {} tokens, {}", d, kLen, window));
  if (d > kSameLogits)
    throw CheckFailed(fmt::format("decoding with the KV cache differs from a full forward pass by {:.3g} "
                                  "(relative; {} tokens, {})",
                                  d, kLen, window));
}

// set_training(on) then (off) reaches every slot's op; the slots get their
// own ops back afterwards, whatever the outcome.
void check_training_mode(Model& model, Checker& checker) {
  const std::vector<LinearSlot*> slots = model.linear_slots();
  if (slots.empty()) throw CheckSkipped("linear_slots() is empty");
  std::vector<std::shared_ptr<ModeProbe>> probes;
  for (LinearSlot* slot : slots) {
    probes.push_back(std::make_shared<ModeProbe>(slot->op));
    slot->op = probes.back();
  }
  std::string missed;
  for (bool on : {true, false}) {
    model.set_training(on);
    for (size_t i = 0; i < slots.size() && missed.empty(); ++i)
      if (probes[i]->heard != int(on))
        missed = fmt::format("set_training({}) did not reach slot '{}' (LinearOp::set_training): an adapter's "
                             "dropout there would not follow the model's mode",
                             on, slots[i]->name);
  }
  for (size_t i = 0; i < slots.size(); ++i) slots[i]->op = probes[i]->inner();
  if (!missed.empty()) throw CheckFailed(missed);
  checker.note(fmt::format("{} slots told on and off", slots.size()));
}

}  // namespace

void check_model(Registry& registry, const ComponentInfo& component, TinyModelSource& source, Checker& checker) {
  (void)registry;
  std::unique_ptr<Model> model;
  const bool made = checker.run("defaults valid", [&] {
    for (const auto& key : component.spec.keys)
      if (!key.default_value && key.name != "path")
        throw CheckSkipped(fmt::format("key '{}' is required (no default), so the check cannot make one", key.name));
    model = source.load(component.spec.name);
  });
  if (!made) {
    for (const char* c : {"forward shapes", "causal", "documents separate", "kv cache", "description", "training mode"})
      checker.report(c, CheckOutcome::skip, "the model could not be created from default keys and the checkpoint path");
    return;
  }
  const ModelShape shape = model->shape();
  checker.run("forward shapes", [&] { check_forward_shapes(*model, shape, checker); });
  checker.run("causal", [&] { check_causal(*model, shape, checker); });
  checker.run("documents separate", [&] { check_documents_separate(*model, shape, checker); });
  checker.run("description", [&] { check_description(*model, checker); });
  checker.run("kv cache", [&] { check_kv_cache(*model, shape, checker); });
  checker.run("training mode", [&] { check_training_mode(*model, checker); });
}

}  // namespace mftk::core::check
