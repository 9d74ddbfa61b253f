// The export parity gate (export_parity.h).
#include "export_parity.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <torch/csrc/autograd/grad_mode.h>

#include "batching.h"
#include "chat_template.h"
#include "dataset.h"
#include "fs_util.h"
#include "mftk/error.h"
#include "mftk/exporter.h"
#include "mftk/model.h"
#include "mftk/tokenizer.h"
#include "model_tools.h"
#include "recipe.h"
#include "registry.h"

namespace mftk::core {

namespace fs = std::filesystem;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// The rows' next-token targets: position i predicts token i + 1, which is a
// supervised target when its loss_mask says so.
at::Tensor next_token_targets(const Example& ex) {
  std::vector<int64_t> t;
  for (size_t i = 0; i + 1 < ex.ids.size(); ++i)
    t.push_back(ex.loss_mask.size() > i + 1 && ex.loss_mask[i + 1] ? int64_t(ex.ids[i + 1]) : kIgnoreIndex);
  return at::tensor(t, at::kLong);
}

// log p(next | prefix) at every position but the last: [n - 1, V] fp32.
at::Tensor row_logprobs(Model& model, const Example& ex) {
  PackedRow row;
  append_document(row, Example{ex.ids, std::vector<uint8_t>(ex.ids.size(), 0)}, ex.ids.size());
  const at::Tensor hidden = model.forward(make_batch(&row, 1)).select(0, 0);  // [n, H]
  const int64_t n = hidden.size(0) - 1;
  // On the host: the tally compares with CPU targets, and a GPU run keeps
  // these rows (tokens x vocab) out of device memory.
  return at::log_softmax(model.logits(hidden.narrow(0, 0, n)).to(at::kFloat), -1).to(at::kCPU).contiguous();
}

std::string number(double x, const char* format = "{:.4g}") {
  return std::isfinite(x) ? fmt::format(fmt::runtime(format), x) : std::string(std::isnan(x) ? "n/a" : "inf");
}

}  // namespace

void ParityTally::add(const at::Tensor& trained, const at::Tensor& artefact, const at::Tensor& targets) {
  MFTK_CHECK(trained.dim() == 2 && trained.sizes() == artefact.sizes(),
             "export parity: compares [positions, vocab] log-probabilities of one shape");
  MFTK_CHECK(targets.dim() == 1 && targets.size(0) == trained.size(0),
             "export parity: {} targets for {} positions", targets.size(0), trained.size(0));
  // Renormalised in double: an fp32 log_softmax row sums to 1 only within
  // fp32 rounding, and that offset (~1e-7 nats) would swamp the divergence
  // of a merge (~1e-12) and could make the mean KL negative.
  const at::Tensor lp_raw = trained.to(at::kDouble), lq_raw = artefact.to(at::kDouble);
  const at::Tensor lp = lp_raw - lp_raw.logsumexp(1, true), lq = lq_raw - lq_raw.logsumexp(1, true);
  // p log(p/q) with 0 log 0 = 0: a token the trained model gives no mass
  // adds nothing, whatever the artefact says about it.
  const at::Tensor p = lp.exp();
  const at::Tensor terms = at::where(p > 0, p * (lp - lq), at::zeros_like(p));
  kl_sum_ += terms.sum().item<double>();
  agree_ += lp.argmax(1).eq(lq.argmax(1)).sum().item<int64_t>();
  positions_ += trained.size(0);
  const at::Tensor supervised = targets.ne(kIgnoreIndex);
  const int64_t s = supervised.sum().item<int64_t>();
  if (s > 0) {
    const at::Tensor rows = supervised.nonzero().squeeze(1);
    const at::Tensor t = targets.index_select(0, rows).unsqueeze(1);
    nll_trained_ -= lp.index_select(0, rows).gather(1, t).sum().item<double>();
    nll_artefact_ -= lq.index_select(0, rows).gather(1, t).sum().item<double>();
    supervised_ += s;
  }
}

ParityFigures ParityTally::figures() const {
  ParityFigures f;
  f.positions = positions_;
  f.supervised = supervised_;
  f.mean_kl = positions_ ? kl_sum_ / double(positions_) : kNaN;
  f.top1_agreement = positions_ ? double(agree_) / double(positions_) : kNaN;
  f.ppl_trained = supervised_ ? std::exp(nll_trained_ / double(supervised_)) : kNaN;
  f.ppl_artefact = supervised_ ? std::exp(nll_artefact_ / double(supervised_)) : kNaN;
  return f;
}

std::vector<Example> select_parity_rows(const std::vector<Example>& examples, int64_t max_rows, int64_t max_tokens,
                                        int64_t max_len) {
  std::vector<Example> rows;
  int64_t left = max_tokens;
  for (const auto& ex : examples) {
    if (int64_t(rows.size()) >= max_rows || left < 2) break;
    const int64_t n = std::min({int64_t(ex.ids.size()), max_len, left});
    if (n < 2) continue;  // one token predicts nothing
    Example cut;
    cut.ids.assign(ex.ids.begin(), ex.ids.begin() + n);
    cut.loss_mask.assign(n, 0);
    for (int64_t i = 0; i < n && i < int64_t(ex.loss_mask.size()); ++i) cut.loss_mask[size_t(i)] = ex.loss_mask[size_t(i)];
    rows.push_back(std::move(cut));
    left -= n;
  }
  return rows;
}

ParityReference ParityReference::record(Model& trained, std::vector<Example> rows, std::string source) {
  ParityReference r;
  r.source_ = std::move(source);
  at::NoGradGuard no_grad;
  trained.set_training(false);
  for (auto& ex : rows) {
    if (ex.ids.size() < 2) continue;
    r.logprobs_.push_back(row_logprobs(trained, ex));
    r.rows_.push_back(std::move(ex));
  }
  return r;
}

int64_t ParityReference::tokens() const {
  int64_t n = 0;
  for (const auto& ex : rows_) n += int64_t(ex.ids.size());
  return n;
}

ParityFigures ParityReference::compare(Model& artefact) const {
  at::NoGradGuard no_grad;
  artefact.set_training(false);
  MFTK_CHECK(logprobs_.empty() || artefact.shape().vocab_size == logprobs_.front().size(1),
             "export parity: the artefact has a vocabulary of {}, the trained model {}", artefact.shape().vocab_size,
             logprobs_.front().size(1));
  ParityTally tally;
  // The tally works in double on [positions, vocab]: in chunks, so a 32k
  // vocabulary costs ~70 MB per temporary, not a whole row's worth.
  constexpr int64_t kChunk = 256;
  for (size_t i = 0; i < rows_.size(); ++i) {
    const at::Tensor trained = logprobs_[i], other = row_logprobs(artefact, rows_[i]);
    const at::Tensor targets = next_token_targets(rows_[i]);
    for (int64_t start = 0; start < trained.size(0); start += kChunk) {
      const int64_t len = std::min(kChunk, trained.size(0) - start);
      tally.add(trained.narrow(0, start, len), other.narrow(0, start, len), targets.narrow(0, start, len));
    }
  }
  return tally.figures();
}

bool ParityCheck::passed() const {
  if (!checked || !threshold) return true;
  return std::isfinite(figures.mean_kl) && figures.mean_kl <= *threshold;
}

std::string ParityCheck::describe() const {
  const std::string what = fmt::format("parity [{}] {}", kind, path);
  if (!checked) return fmt::format("{}: not checked ({})", what, note);
  const auto& f = figures;
  return fmt::format("{}: mean KL {} nats/token, top-1 agreement {:.2f}% ({} positions), perplexity {} -> {} "
                     "({} supervised tokens; {} rows, {}){}",
                     what, number(f.mean_kl, "{:.3e}"), 100 * f.top1_agreement, f.positions, number(f.ppl_trained, "{:.4f}"),
                     number(f.ppl_artefact, "{:.4f}"), f.supervised, rows, rows_source,
                     threshold ? fmt::format(" — {} (max_kl {})", passed() ? "passed" : "FAILED", *threshold)
                               : " — reported only (no max_kl)");
}

nlohmann::json ParityCheck::to_json() const {
  // Non-finite doubles would become null in JSON anyway; say so explicitly.
  auto num = [](double x) { return std::isfinite(x) ? nlohmann::json(x) : nlohmann::json(nullptr); };
  nlohmann::json j = {{"kind", kind}, {"path", path}, {"checked", checked}, {"passed", passed()}};
  if (!table.empty()) j["table"] = table;
  j["threshold"] = threshold ? nlohmann::json(*threshold) : nlohmann::json(nullptr);
  if (!checked) {
    j["note"] = note;
    return j;
  }
  j["mean_kl"] = num(figures.mean_kl);
  j["top1_agreement"] = num(figures.top1_agreement);
  j["ppl_trained"] = num(figures.ppl_trained);
  j["ppl_artefact"] = num(figures.ppl_artefact);
  j["rows"] = rows;
  j["tokens"] = tokens;
  j["positions"] = figures.positions;
  j["supervised_tokens"] = figures.supervised;
  j["rows_source"] = rows_source;
  return j;
}

double default_merge_max_kl(at::ScalarType checkpoint_dtype, at::ScalarType compute_dtype) {
  return checkpoint_dtype == at::kFloat && compute_dtype == at::kFloat ? kMergeMaxKlFp32 : kMergeMaxKlHalf;
}

ParityCheck check_checkpoint_folder(Registry& registry, const ArtefactModelSource& source, const std::string& dir,
                                    const ParityReference& reference) {
  ParityCheck c;
  c.path = dir;
  c.rows = reference.rows();
  c.tokens = reference.tokens();
  c.rows_source = reference.source();
  if (reference.empty()) {
    c.note = "no held-out rows";
    return c;
  }
  // The [model] table's own keys (dtype, attention_chunk, ...) with the
  // artefact's folder as its path; a dense folder needs no quantizer.
  std::map<std::string, Value> values;
  for (const auto& [key, entry] : source.config.entries())
    if (entry.explicitly_set) values[key] = entry.value;
  values["path"] = dir;
  const Config config = component_config(registry, Kind::model, source.plugin, "model", values);
  auto model = registry.create<Model>(Kind::model, source.plugin, config);
  LoadOptions lo;
  lo.path = dir;
  lo.compute_dtype = source.compute_dtype;
  lo.weight_dtype = source.weight_dtype;
  model->load_config(dir);
  model->load(lo);
  c.figures = reference.compare(*model);
  c.checked = true;
  return c;
}

ParityCheck check_export(Registry& registry, const ArtefactModelSource& source, Exporter& exporter,
                         const ExportJob& job, const ExportReport& report, const ParityReference& reference) {
  // Beside the artefact (a filesystem mftk already writes to), under a
  // fresh name, so removing it removes only what the read-back wrote.
  ScratchFolder scratch(report.path, "parity-readback");
  const auto folder = exporter.read_back(job, report, scratch.path());
  if (!folder) {
    ParityCheck c;
    c.path = report.path;
    c.note = "exporter has no read-back";
    return c;
  }
  auto c = check_checkpoint_folder(registry, source, *folder, reference);
  c.path = report.path;
  return c;
}

nlohmann::json parity_json(const std::vector<ParityCheck>& checks) {
  nlohmann::json j = nlohmann::json::array();
  for (const auto& c : checks) j.push_back(c.to_json());
  return j;
}

void enforce_parity(const std::vector<ParityCheck>& checks, const std::string& report_path) {
  std::vector<std::string> failed;
  for (const auto& c : checks)
    if (!c.passed())
      failed.push_back(fmt::format("{} {}: mean KL {} > max_kl {}{}", c.kind, c.path, number(c.figures.mean_kl, "{:.3e}"),
                                   *c.threshold, c.table.empty() ? "" : fmt::format(" ([{}])", c.table)));
  if (failed.empty()) return;
  throw Error(fmt::format("export parity gate: {} artefact{} computes something else than the trained model: {}",
                          failed.size(), failed.size() == 1 ? "" : "s", fmt::join(failed, "; ")),
              fmt::format("{}; raise max_kl only if this loss is expected (a coarser quantisation), else the "
                          "artefact is damaged",
                          report_path.empty() ? "the parity lines above have the figures"
                                              : "the figures are in " + report_path + ", summary.json and the log"));
}

std::vector<Example> builtin_parity_rows(const Tokenizer& tokenizer) {
  // Short and varied on purpose: a damaged layer shows on any text, and
  // these cost a few hundred tokens whatever the model.
  static const char* const texts[] = {
      "The river rose through the night, and by morning the lower fields were under water.",
      "Ingredients: two cups of flour, one egg, a pinch of salt and a cup of milk.",
      "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
      "In 1969, 3 astronauts flew 384,400 km to the Moon and came back 8 days later.",
      "Question: what is the capital of France? Answer: Paris is the capital of France.",
      "She closed the book, looked out of the window, and decided to walk to the station.",
      "Temperature readings: 21.5, 22.0, 22.4, 23.1 and 22.8 degrees over five hours.",
      "Please summarise the following email in one sentence and keep the tone polite.",
  };
  std::vector<Example> rows;
  for (const char* text : texts) {
    Example ex;
    ex.ids = encode_text(tokenizer, text);
    ex.loss_mask.assign(ex.ids.size(), 1);
    if (!ex.loss_mask.empty()) ex.loss_mask[0] = 0;  // the first token is never predicted
    rows.push_back(std::move(ex));
  }
  return rows;
}

std::vector<Example> parity_rows_from_file(const std::string& path, const Tokenizer& tokenizer) {
  std::ifstream in(path);
  if (!in) throw UsageError(fmt::format("--eval-data {}: cannot read the file", path), "pass a JSONL file");
  std::string line;
  nlohmann::json first;
  while (std::getline(in, line)) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    first = nlohmann::json::parse(line, nullptr, false);
    break;
  }
  DatasetSpec spec;
  spec.path = path;
  spec.table = "--eval-data";
  if (first.is_object() && first.contains("messages")) spec.type = DatasetType::chat;
  else if (first.is_object() && first.contains("instruction")) spec.type = DatasetType::instruction;
  else if (first.is_object() && first.contains("text")) spec.type = DatasetType::completion;
  else
    throw UsageError(fmt::format("--eval-data {}: the first row has none of \"messages\", \"instruction\", \"text\"",
                                 path),
                     "JSONL rows as [[datasets]] reads them: chat, instruction or completion");
  DatasetFileStats stats;
  return load_dataset(spec, tokenizer, resolve_chat_format("auto", tokenizer), /*train_on_inputs=*/false,
                      /*skip_bad_rows=*/false, stats);
}

ParityReference command_parity_reference(Model& trained, const Tokenizer& tokenizer, const std::string& eval_data,
                                         int64_t max_rows) {
  if (max_rows <= 0) return {};
  auto rows = eval_data.empty() ? builtin_parity_rows(tokenizer) : parity_rows_from_file(eval_data, tokenizer);
  const int64_t max_len = std::min<int64_t>(trained.shape().max_position_embeddings > 0
                                                ? trained.shape().max_position_embeddings
                                                : int64_t(2048),
                                            2048);
  auto reference = ParityReference::record(trained, select_parity_rows(rows, max_rows, 2048, max_len),
                                           eval_data.empty() ? "built-in sample" : eval_data);
  spdlog::info("parity: base + adapter (unmerged) recorded on {} rows ({} tokens, {})", reference.rows(),
               reference.tokens(), reference.source());
  return reference;
}

void report_parity(const std::vector<ParityCheck>& checks) {
  for (const auto& c : checks) {
    if (c.checked && c.passed()) spdlog::info("{}", c.describe());
    else spdlog::warn("{}", c.describe());
  }
  enforce_parity(checks);
}

RunParityGate::RunParityGate(const Recipe& recipe, Registry& registry, Model& trained, const std::vector<Example>& eval,
                             const std::vector<Example>& train, bool active)
    : registry_(registry) {
  const auto& validate = recipe.section("validate");
  const int64_t max_rows = validate.get_int("parity_rows");
  if (!active || max_rows == 0) return;
  const auto* model_ref = recipe.component("model");
  if (model_ref) {
    source_.plugin = model_ref->plugin;
    source_.config = model_ref->config;
  }
  source_.compute_dtype = trained.compute_dtype();
  if (recipe.section("training").get_bool("bf16")) source_.weight_dtype = at::kBFloat16;  // as load_model does
  const double configured = validate.get_number("merge_max_kl");
  merge_max_kl_ = configured >= 0 ? configured
                                  : default_merge_max_kl(trained.shape().checkpoint_dtype, trained.compute_dtype());
  const bool from_eval = !eval.empty();
  auto rows = select_parity_rows(from_eval ? eval : train, max_rows, validate.get_int("parity_tokens"),
                                 recipe.section("training").get_int("sequence_len"));
  reference_ = ParityReference::record(trained, std::move(rows),
                                       from_eval ? "eval split" : "training rows: the recipe has no eval split");
  if (reference_.empty()) {
    spdlog::warn("parity: no held-out row has two tokens or more ({}): the merged and exported artefacts are not "
                 "checked against the trained model", reference_.source());
    return;
  }
  spdlog::info("parity: the trained model's log-probabilities on {} held-out rows ({} tokens, {}) recorded; each "
               "merged or exported artefact is read back and compared",
               reference_.rows(), reference_.tokens(), reference_.source());
}

void RunParityGate::add(ParityCheck check) {
  const std::string line = check.describe();
  if (check.passed() && check.checked) spdlog::info("{}", line);
  else spdlog::warn("{}", line);
  checks_.push_back(std::move(check));
}

void RunParityGate::check_checkpoint(const std::string& kind, const std::string& dir) {
  if (!enabled()) return;
  auto c = check_checkpoint_folder(registry_, source_, dir, reference_);
  c.kind = kind;
  c.table = "validate";
  c.threshold = merge_max_kl_;
  add(std::move(c));
}

void RunParityGate::check_export(const ComponentRef& table, Exporter& exporter, const ExportJob& job,
                                 const ExportReport& report) {
  if (!enabled()) return;
  auto c = core::check_export(registry_, source_, exporter, job, report, reference_);
  c.kind = table.plugin;
  c.table = table.table;
  if (const double max_kl = table.config.get_number("max_kl"); max_kl >= 0) c.threshold = max_kl;
  add(std::move(c));
}

}  // namespace mftk::core
