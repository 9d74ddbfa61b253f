// Loading a checkpoint folder without a recipe, log-probabilities and the
// packing check; see model_tools.h.
#include "model_tools.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "batching.h"
#include "chat_template.h"
#include "defaults.h"
#include "mftk/adapter.h"
#include "mftk/error.h"
#include "mftk/linear_slot.h"
#include "mftk/log.h"
#include "mftk/model.h"
#include "mftk/packer.h"
#include "mftk/quantizer.h"
#include "mftk/tokenizer.h"
#include "recipe.h"
#include "registry.h"

namespace mftk::core {

namespace {

// Rows of logits computed at once: a 32k vocabulary makes 128 KB per row.
constexpr int64_t kLogitChunkRows = 1024;

const SourceLocation kCommandLine{"command line", 0, 0};

}  // namespace

Config component_config(Registry& registry, Kind kind, const std::string& plugin, const std::string& table,
                        const std::map<std::string, Value>& values) {
  const ComponentInfo& info = registry.find(kind, plugin);
  Recipe::RawTable raw;
  raw.name = table;
  raw.where = kCommandLine;
  for (const auto& [key, value] : values) raw.values[key] = Recipe::RawValue{value, kCommandLine, kCommandLine};
  std::vector<std::string> errors;
  Config config = validate_table(raw, info.spec.keys, errors);
  if (!errors.empty())
    throw UsageError(fmt::format("{}", fmt::join(errors, "\n")),
                     fmt::format("`mftk plugins --keys {}` lists the keys of '{}'", plugin, plugin));
  return config;
}

std::unique_ptr<Adapter> load_adapter(Registry& registry, const std::string& plugin, const std::string& dir,
                                      Model& model, const Config* config) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec))
    throw UsageError(fmt::format("adapter folder {} does not exist", dir),
                     "pass the folder a run saved (output_dir/adapter) or a PEFT adapter folder");
  const Config defaults = config ? Config() : component_config(registry, Kind::adapter, plugin, "adapter");
  auto adapter = registry.create<Adapter>(Kind::adapter, plugin, config ? *config : defaults);
  adapter->load(dir, model);
  model.set_training(false);  // reaches the adapter's ops: no dropout
  return adapter;
}

ModelBundle load_model_bundle(Registry& registry, const ModelBundleOptions& o) {
  std::error_code ec;
  if (!std::filesystem::is_directory(o.model_dir, ec))
    throw UsageError(fmt::format("model folder {} does not exist", o.model_dir),
                     "pass a Hugging Face checkpoint folder (config.json + *.safetensors + tokenizer.model); "
                     "`mftk init --out DIR` writes a random one");
  ModelBundle b;
  b.model_dir = o.model_dir;
  const Config config = component_config(registry, Kind::model, o.model_plugin, "model", {{"path", o.model_dir}});
  b.quantizer = quantizer_for_checkpoint(registry, o.model_dir, nullptr, "");
  b.model = registry.create<Model>(Kind::model, o.model_plugin, config);
  LoadOptions lo;
  lo.path = o.model_dir;
  lo.quantizer = b.quantizer.get();
  lo.compute_dtype = o.bf16 ? at::kBFloat16 : at::kFloat;
  if (o.bf16) lo.weight_dtype = at::kBFloat16;
  b.model->load_config(o.model_dir);
  b.model->load(lo);
  b.model->set_training(false);
  b.tokenizer = Tokenizer::load(o.model_dir);
  if (!o.adapter_dir.empty()) b.adapter = load_adapter(registry, o.adapter_plugin, o.adapter_dir, *b.model);
  return b;
}

std::string stored_quantizer_plugin(Registry& registry, const std::string& model_dir) {
  const auto path = std::filesystem::path(model_dir) / "config.json";
  std::ifstream in(path);
  if (!in) return "";  // the model plugin reports a missing config.json
  const auto config = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded() || !config.is_object() || !config.contains("quantization_config")) return "";
  const std::string stored = config["quantization_config"].dump();
  // Every quantizer is asked, so each library on the search path is loaded
  // first; the core itself knows no stored format.
  registry.scan();
  std::vector<std::string> registered, claimed;
  for (const ComponentInfo* info : registry.components(Kind::quantizer)) {
    const std::string& name = info->spec.name;
    registered.push_back(name);
    std::unique_ptr<Quantizer> quantizer;
    try {
      quantizer = registry.create<Quantizer>(Kind::quantizer, name,
                                             component_config(registry, Kind::quantizer, name, "quantize"));
    } catch (const UsageError& e) {  // a quantizer with required keys cannot be asked without them
      log::debug("model: quantizer '{}' not asked about {}: {}", name, path.string(), e.what());
      continue;
    }
    if (quantizer->reads_stored_format(stored)) claimed.push_back(name);
  }
  if (claimed.size() == 1) return claimed.front();
  const auto& q = config["quantization_config"];
  const std::string method = q.is_object() ? q.value("quant_method", std::string()) : std::string();
  const std::string what = method.empty() ? std::string("an unnamed method") : "\"" + method + "\"";
  if (claimed.size() > 1)
    throw UsageError(fmt::format("{}: quantization_config ({}) is claimed by more than one quantizer: {}",
                                 path.string(), what, fmt::join(claimed, ", ")),
                     "name the one to load it with in [quantize] plugin, or remove the other's library from the "
                     "plugin search path");
  throw UsageError(fmt::format("{}: quantization_config says the weights are quantised with {} ({}), a format no "
                               "registered quantizer reads (registered: {})",
                               path.string(), what, stored.size() > 200 ? stored.substr(0, 200) + "..." : stored,
                               registered.empty() ? std::string("none") : fmt::format("{}", fmt::join(registered, ", "))),
                   "point [model] path at the unquantised checkpoint (`mftk quantize` writes a stored format mftk "
                   "reads), or add the plugin that reads this format to [plugins] search_paths");
}

std::unique_ptr<Quantizer> quantizer_for_checkpoint(Registry& registry, const std::string& model_dir,
                                                    std::unique_ptr<Quantizer> requested,
                                                    const std::string& requested_plugin) {
  const std::string stored = stored_quantizer_plugin(registry, model_dir);
  if (stored.empty()) return requested;
  if (requested) {
    if (requested_plugin != stored)
      throw UsageError(fmt::format("{} is saved quantised by the '{}' quantizer, but [quantize] names '{}'",
                                   model_dir, stored, requested_plugin),
                       fmt::format("set [quantize] plugin = \"{}\", or point [model] path at the unquantised "
                                   "checkpoint", stored));
    return requested;
  }
  log::info("model: {} is saved quantised ({}); loading its weights as stored", model_dir, stored);
  return registry.create<Quantizer>(Kind::quantizer, stored,
                                    component_config(registry, Kind::quantizer, stored, "quantize"));
}

std::vector<int32_t> encode_text(const Tokenizer& tokenizer, const std::string& text) {
  std::vector<int32_t> ids;
  if (tokenizer.add_bos()) ids.push_back(tokenizer.bos_id());
  const auto body = tokenizer.encode(text);
  ids.insert(ids.end(), body.begin(), body.end());
  return ids;
}

std::vector<int32_t> encode_prompt(const Tokenizer& tokenizer, const std::string& prompt, bool chat) {
  if (!chat) return encode_text(tokenizer, prompt);
  return encode_chat(tokenizer, detect_chat_format(tokenizer), {{"user", prompt}}, /*train_on_inputs=*/false,
                     /*add_generation_prompt=*/true)
      .ids;
}

std::string tokenization_json(const Tokenizer& tokenizer, const std::vector<int32_t>& ids,
                              const std::vector<uint8_t>& label_mask) {
  MFTK_CHECK(ids.size() == label_mask.size(), "tokenization_json: {} ids but {} mask entries", ids.size(),
             label_mask.size());
  nlohmann::json j;
  j["ids"] = ids;
  j["pieces"] = nlohmann::json::array();
  for (int32_t id : ids) j["pieces"].push_back(tokenizer.piece(id));
  j["label_mask"] = nlohmann::json::array();
  for (uint8_t m : label_mask) j["label_mask"].push_back(int(m));
  // A piece is valid UTF-8 unless the model file is odd; never fail on one.
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

TokenLogprobs compute_logprobs(Model& model, const std::vector<int32_t>& tokens, int64_t top_k) {
  if (tokens.empty()) throw UsageError("logprobs: no tokens to score", "pass --text TEXT or --tokens 1,2,3");
  const int64_t vocab = model.shape().vocab_size;
  for (size_t i = 0; i < tokens.size(); ++i)
    if (tokens[i] < 0 || tokens[i] >= vocab)
      throw UsageError(fmt::format("logprobs: token {} (position {}) is outside the vocabulary [0, {})", tokens[i],
                                   i, vocab));
  top_k = std::min(std::max<int64_t>(top_k, 0), vocab);

  TokenLogprobs out;
  out.tokens = tokens;
  const int64_t n = int64_t(tokens.size());
  if (n < 2) return out;  // nothing predicts anything

  at::NoGradGuard no_grad;
  model.set_training(false);
  // One document: positions 0..n-1, causal attention (and the model's window).
  PackedRow row;
  append_document(row, Example{tokens, std::vector<uint8_t>(tokens.size(), 0)}, tokens.size());
  at::Tensor hidden = model.forward(make_batch(&row, 1)).select(0, 0);  // [n, H]
  // Targets follow the model's device; the picked values come back to the
  // host (.to(kCPU)) before they are read as plain numbers.
  at::Tensor next =
      at::tensor(std::vector<int64_t>(tokens.begin() + 1, tokens.end()), at::kLong).to(hidden.device());
  out.logprobs.reserve(size_t(n - 1));
  for (int64_t start = 0; start < n - 1; start += kLogitChunkRows) {
    const int64_t len = std::min(kLogitChunkRows, n - 1 - start);
    at::Tensor lsm = at::log_softmax(model.logits(hidden.narrow(0, start, len)).to(at::kFloat), -1);  // [len, V]
    at::Tensor picked =
        lsm.gather(1, next.narrow(0, start, len).unsqueeze(1)).squeeze(1).to(at::kCPU, at::kDouble).contiguous();
    const double* p = picked.data_ptr<double>();
    out.logprobs.insert(out.logprobs.end(), p, p + len);
    if (top_k > 0) {
      auto [values, indices] = lsm.topk(top_k, -1, /*largest=*/true, /*sorted=*/true);
      at::Tensor v = values.to(at::kCPU, at::kDouble).contiguous(), ix = indices.to(at::kCPU, at::kLong).contiguous();
      const double* vp = v.data_ptr<double>();
      const int64_t* ip = ix.data_ptr<int64_t>();
      for (int64_t r = 0; r < len; ++r) {
        std::vector<TopToken> top(static_cast<size_t>(top_k));
        for (int64_t k = 0; k < top_k; ++k) top[size_t(k)] = {int32_t(ip[r * top_k + k]), vp[r * top_k + k]};
        out.top.push_back(std::move(top));
      }
    }
  }
  return out;
}

std::string logprobs_json(const TokenLogprobs& r, bool with_top) {
  nlohmann::json j;
  j["tokens"] = r.tokens;
  j["logprobs"] = r.logprobs;
  if (with_top) {
    j["top"] = nlohmann::json::array();
    for (const auto& position : r.top) {
      nlohmann::json list = nlohmann::json::array();
      for (const auto& t : position) list.push_back({{"id", t.id}, {"logprob", t.logprob}});
      j["top"].push_back(std::move(list));
    }
  }
  return j.dump();
}

std::unique_ptr<Packer> make_recipe_packer(const Recipe& recipe, Registry& registry, std::string* name) {
  if (const auto* ref = recipe.component("packer")) {
    if (name) *name = ref->plugin;
    return registry.create<Packer>(Kind::packer, ref->plugin, ref->config);
  }
  const std::string fallback = default_packer(recipe.section("training").get_bool("sample_packing"));
  if (name) *name = fallback;
  return registry.create<Packer>(Kind::packer, fallback, component_config(registry, Kind::packer, fallback, "packer"));
}

bool packer_respects_sliding_window(Registry& registry, const std::string& name) {
  return registry.find(Kind::packer, name).spec.has_trait(kTraitRespectsSlidingWindow);
}

// ---------------------------------------------------------------------------
// The packing check.

double relative_difference(double a, double b) {
  if (!std::isfinite(a) || !std::isfinite(b)) return std::numeric_limits<double>::infinity();
  const double scale = std::max(std::abs(a), std::abs(b));
  return scale == 0 ? 0.0 : std::abs(a - b) / scale;
}

PackingVerdict judge_packing(const std::vector<DocumentCheck>& checks, double tolerance) {
  PackingVerdict v;
  v.tolerance = tolerance;
  std::map<int64_t, RowVerdict> rows;
  for (const DocumentCheck& c : checks) {
    RowVerdict& row = rows[c.row];
    row.row = c.row;
    ++row.documents;
    if (c.supervised == 0) continue;
    ++row.compared;
    ++v.compared;
    const double loss = relative_difference(c.loss_packed, c.loss_alone);
    const double norm = relative_difference(c.grad_norm_packed, c.grad_norm_alone);
    const double scale = std::max(c.grad_norm_packed, c.grad_norm_alone);
    const double direction = !std::isfinite(c.grad_difference) ? std::numeric_limits<double>::infinity()
                             : scale > 0                        ? c.grad_difference / scale
                                                                : (c.grad_difference > 0 ? 1.0 : 0.0);
    // NaN compares false everywhere: count it as the worst possible.
    auto worst_of = [](double x) { return std::isnan(x) ? std::numeric_limits<double>::infinity() : x; };
    const std::pair<double, std::string> candidates[] = {
        {worst_of(loss), fmt::format("loss {:.8g} packed vs {:.8g} alone", c.loss_packed, c.loss_alone)},
        {worst_of(norm),
         fmt::format("gradient norm {:.8g} packed vs {:.8g} alone", c.grad_norm_packed, c.grad_norm_alone)},
        {worst_of(direction), fmt::format("gradient differs by {:.3g} (norm {:.6g})", c.grad_difference, scale)},
    };
    for (const auto& [value, what] : candidates) {
      const std::string where = fmt::format("row {} doc {} ({} supervised tokens): {}", c.row, c.doc, c.supervised, what);
      if (value > row.worst || row.worst_what.empty()) {
        row.worst = value;
        row.worst_what = where;
      }
      if (value > v.worst || v.worst_what.empty()) {
        v.worst = value;
        v.worst_what = where;
      }
    }
  }
  for (auto& [index, row] : rows) v.rows.push_back(row);
  v.passed = v.compared > 0 && v.worst <= tolerance;
  return v;
}

namespace {

// The probe parameters of measure_packing, made trainable on construction
// and put back on destruction: the embedding table (as a fp32 leaf) and a
// fresh dense lm_head over a fp32 copy of its weight.
class ProbeParameters {
 public:
  explicit ProbeParameters(Model& model) {
    at::NoGradGuard no_grad;
    const ModelArchitecture arch = model.architecture();  // the model names its embedding and head
    for (auto& [name, t] : model.named_parameters()) {
      if (name != arch.embedding) continue;
      embedding_ = t;
      embedding_data_ = t.detach();
      embedding_.set_data(t.detach().to(at::kFloat).clone());
      embedding_.requires_grad_(true);
      tensors_.push_back(embedding_);
    }
    for (LinearSlot* slot : model.linear_slots()) {
      if (slot->name != arch.head_slot) continue;
      lm_head_ = slot;
      lm_head_op_ = slot->op;
      at::Tensor w = slot->op->dense_weight(at::kFloat).clone().requires_grad_(true);
      slot->op = make_dense_linear(w);
      tensors_.push_back(w);
    }
    if (tensors_.empty())
      throw Error("verify packing: the model exposes neither an embed_tokens tensor nor an lm_head slot",
                  "the packing check needs one of them as a probe parameter");
  }
  ~ProbeParameters() {
    if (lm_head_) lm_head_->op = lm_head_op_;
    if (embedding_.defined()) {
      embedding_.requires_grad_(false);
      embedding_.set_data(embedding_data_);
    }
  }
  ProbeParameters(const ProbeParameters&) = delete;
  ProbeParameters& operator=(const ProbeParameters&) = delete;

  // The gradient of `loss` w.r.t. every probe tensor, flattened into one vector.
  at::Tensor gradient_of(const at::Tensor& loss, bool retain_graph) {
    for (auto& t : tensors_) t.mutable_grad() = at::Tensor();
    loss.backward({}, retain_graph);
    std::vector<at::Tensor> parts;
    for (auto& t : tensors_) {
      at::Tensor g = t.grad();
      parts.push_back(g.defined() ? g.detach().reshape({-1}).to(at::kDouble) : at::zeros({t.numel()}, at::kDouble));
      t.mutable_grad() = at::Tensor();
    }
    return at::cat(parts);
  }

 private:
  std::vector<at::Tensor> tensors_;
  at::Tensor embedding_, embedding_data_;
  LinearSlot* lm_head_ = nullptr;
  std::shared_ptr<LinearOp> lm_head_op_;
};

// Sum of cross-entropy over the rows `positions` of one row's hidden states.
at::Tensor loss_at(Model& model, const at::Tensor& hidden, const at::Tensor& targets, const at::Tensor& positions) {
  at::Tensor logits = model.logits(hidden.index_select(0, positions)).to(at::kFloat);
  return at::cross_entropy_loss(logits, targets.index_select(0, positions), {}, at::Reduction::Sum);
}

PackedRow document_alone(const PackedRow& row, int32_t doc) {
  PackedRow alone;
  for (size_t t = 0; t < row.ids.size(); ++t) {
    if (row.doc_ids[t] != doc) continue;
    alone.ids.push_back(row.ids[t]);
    alone.targets.push_back(row.targets[t]);
    alone.position_ids.push_back(row.position_ids[t]);
    alone.doc_ids.push_back(0);
  }
  return alone;
}

}  // namespace

std::vector<DocumentCheck> measure_packing(Model& model, const std::vector<PackedRow>& rows) {
  if (model.compute_dtype() != at::kFloat)
    log::warn("verify packing: the model computes in {}; differences of that precision will show",
              c10::toString(model.compute_dtype()));
  model.set_training(false);
  ProbeParameters probe(model);
  std::vector<DocumentCheck> checks;
  for (size_t r = 0; r < rows.size(); ++r) {
    const PackedRow& row = rows[r];
    std::vector<int32_t> docs;
    for (int32_t d : row.doc_ids)
      if (d >= 0 && std::find(docs.begin(), docs.end(), d) == docs.end()) docs.push_back(d);

    // One forward of the whole row; each document's loss backpropagates through it in turn.
    const Batch packed = make_batch(&row, 1);
    const at::Tensor hidden = model.forward(packed).select(0, 0);
    const at::Tensor targets = packed.targets.select(0, 0);
    const at::Tensor doc_ids = packed.doc_ids.select(0, 0);
    const at::Tensor supervised = targets != kIgnoreIndex;
    for (size_t i = 0; i < docs.size(); ++i) {
      DocumentCheck c;
      c.row = int64_t(r);
      c.doc = docs[i];
      const at::Tensor in_doc = doc_ids == docs[i];
      c.tokens = in_doc.sum().item<int64_t>();
      const at::Tensor positions = (in_doc & supervised).nonzero().squeeze(1);
      c.supervised = positions.numel();
      if (c.supervised > 0) {
        const bool last = i + 1 == docs.size();
        at::Tensor loss = loss_at(model, hidden, targets, positions);
        c.loss_packed = loss.item<double>();
        const at::Tensor g_packed = probe.gradient_of(loss, /*retain_graph=*/!last);

        const PackedRow alone_row = document_alone(row, docs[i]);
        const Batch alone = make_batch(&alone_row, 1);
        const at::Tensor alone_targets = alone.targets.select(0, 0);
        at::Tensor alone_loss = loss_at(model, model.forward(alone).select(0, 0), alone_targets,
                                        (alone_targets != kIgnoreIndex).nonzero().squeeze(1));
        c.loss_alone = alone_loss.item<double>();
        const at::Tensor g_alone = probe.gradient_of(alone_loss, /*retain_graph=*/false);

        c.grad_norm_packed = g_packed.norm().item<double>();
        c.grad_norm_alone = g_alone.norm().item<double>();
        c.grad_difference = (g_packed - g_alone).norm().item<double>();
      }
      checks.push_back(c);
    }
  }
  return checks;
}

std::vector<PackedRow> select_rows_to_verify(const std::vector<PackedRow>& rows, size_t count) {
  auto documents = [](const PackedRow& row) {
    int32_t most = -1;
    for (int32_t d : row.doc_ids) most = std::max(most, d);
    return most + 1;
  };
  std::vector<PackedRow> chosen;
  for (const auto& row : rows)
    if (chosen.size() < count && documents(row) >= 2) chosen.push_back(row);
  for (const auto& row : rows)
    if (chosen.size() < count && documents(row) < 2) chosen.push_back(row);
  return chosen;
}

}  // namespace mftk::core
