// The export parity gate: does the artefact a user takes away (the merged
// checkpoint, a GGUF file, an AWQ folder) compute what the trained model
// computed? Held-out rows go through the trained model as it was trained
// (base + adapter, unmerged) and through the artefact as written, read back
// from disk (Exporter::read_back decodes a format into a plain checkpoint
// folder the model plugin loads), and three figures compare them:
//
//   mean KL     (1/N) sum_i sum_v p_i(v) (log p_i(v) - log q_i(v))  over the N
//               predicting positions of the rows (p trained, q artefact),
//               nats per token, over the whole vocabulary
//   top-1       the fraction of those positions where argmax p = argmax q
//   perplexity  exp(-(1/S) sum_s log p_s(target_s)) over the S supervised
//               targets, for the trained model and for the artefact
//
// A check past its threshold fails the run (mftk::Error, exit 1) after the
// report is written, so the numbers are there to read.
//
// defines: mftk::core::ParityFigures, mftk::core::ParityTally, mftk::core::select_parity_rows,
//          mftk::core::ParityReference, mftk::core::ParityCheck, mftk::core::ArtefactModelSource,
//          mftk::core::kMergeMaxKlFp32, mftk::core::kMergeMaxKlHalf, mftk::core::default_merge_max_kl,
//          mftk::core::check_checkpoint_folder, mftk::core::check_export, mftk::core::parity_json,
//          mftk::core::enforce_parity, mftk::core::builtin_parity_rows, mftk::core::parity_rows_from_file,
//          mftk::core::command_parity_reference, mftk::core::report_parity, mftk::core::RunParityGate
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <c10/core/ScalarType.h>
#include <nlohmann/json.hpp>

#include "defaults.h"
#include "mftk/batch.h"
#include "mftk/config.h"
#include "mftk/tensor.h"

namespace mftk {
class Exporter;
class Model;
class Tokenizer;
struct ExportJob;
struct ExportReport;
}  // namespace mftk

namespace mftk::core {

class Recipe;
class Registry;
struct ComponentRef;

struct ParityFigures {
  double mean_kl = 0;         // nats per position, KL(trained || artefact)
  double top1_agreement = 0;  // fraction of positions with the same argmax
  double ppl_trained = 0;     // NaN when no target is supervised
  double ppl_artefact = 0;
  int64_t positions = 0;      // predicting positions compared
  int64_t supervised = 0;     // supervised targets among them (perplexity)
};

// Sums the figures over chunks of positions; figures() divides.
class ParityTally {
 public:
  // trained, artefact: [n, V] log-probabilities (natural log) of the same n
  // positions; targets: [n] the next token, or kIgnoreIndex where it is not
  // supervised. The sums are taken in double.
  void add(const at::Tensor& trained, const at::Tensor& artefact, const at::Tensor& targets);
  ParityFigures figures() const;

 private:
  double kl_sum_ = 0;
  double nll_trained_ = 0, nll_artefact_ = 0;
  int64_t agree_ = 0, positions_ = 0, supervised_ = 0;
};

// Up to max_rows examples of at least two tokens, each cut to max_len tokens,
// the last one cut so that all hold at most max_tokens.
std::vector<Example> select_parity_rows(const std::vector<Example>& examples, int64_t max_rows, int64_t max_tokens,
                                        int64_t max_len);

// The trained model's log-probabilities on the held-out rows, recorded once
// (before the merge changes the model) and compared with each artefact.
// Memory: positions x vocab x 4 bytes (2048 positions of a 32768-token
// vocabulary: 268 MB).
class ParityReference {
 public:
  ParityReference() = default;
  // source: where the rows came from, in words ("eval split", a file name).
  static ParityReference record(Model& trained, std::vector<Example> rows, std::string source);
  // The same rows through `artefact`, compared position by position.
  ParityFigures compare(Model& artefact) const;

  bool empty() const { return rows_.empty(); }
  int64_t rows() const { return int64_t(rows_.size()); }
  int64_t tokens() const;
  const std::string& source() const { return source_; }

 private:
  std::vector<Example> rows_;
  std::vector<at::Tensor> logprobs_;  // per row [n - 1, V], fp32
  std::string source_;
};

// One artefact's verdict, for the log, summary.json and report.html.
struct ParityCheck {
  std::string kind;   // "merge", "saved model", or the exporter's name
  std::string table;  // the recipe table that sets its threshold ("validate", "export[0]"); empty on the CLI
  std::string path;   // the artefact
  bool checked = false;
  std::string note;   // why it was not checked
  ParityFigures figures;
  int64_t rows = 0, tokens = 0;
  std::string rows_source;
  std::optional<double> threshold;  // max_kl; none: reported, not gated

  // Not checked, or no threshold, or mean KL finite and within it.
  bool passed() const;
  std::string describe() const;  // one log line
  nlohmann::json to_json() const;
};

// How the run loads a checkpoint folder as a model: the [model] table's
// plugin and keys (path replaced by the artefact's folder), and the dtypes
// the trained model ran in, so both sides compute alike.
struct ArtefactModelSource {
  std::string plugin = kDefaultModelPlugin;
  Config config;  // the [model] table; empty: the plugin's defaults
  at::ScalarType compute_dtype = at::kFloat;
  std::optional<at::ScalarType> weight_dtype;
};

// Defaults for the merge gate ([validate] merge_max_kl = -1), in nats per
// token. A merge only re-associates W x + s B (A x) into (W + s B A) x and
// stores the sum in the checkpoint's dtype, so its divergence is rounding:
//  - fp32 weights and compute: ~1e-7 relative per weight moves the logits by
//    ~1e-6 at most and KL ~ delta^2 / 2 ~ 1e-12 (the quickstart's merge:
//    7.6e-13); 1e-6 leaves a margin of a million and still fails real
//    damage (the quickstart with one down_proj zeroed: 7.8e-2; even a
//    random tiny model, nearly uniform in its outputs: 8e-5).
//  - bf16 or f16 in the stored weights or the compute: bf16 keeps 8
//    significant bits, so re-rounding W + s B A moves each weight by up to
//    2^-9 relative, as a fresh bf16 cast does (the quickstart adapter merged
//    into a bf16 base: 8.0e-5; a training.bf16 run's merge: 4.1e-6). The
//    error grows with depth and width; 5e-3 stays above what such rounding
//    costs and below a broken merge (a wrong scale, a dropped module, a
//    zeroed layer: 1e-2 and up on a trained model).
constexpr double kMergeMaxKlFp32 = 1e-6;
constexpr double kMergeMaxKlHalf = 5e-3;
double default_merge_max_kl(at::ScalarType checkpoint_dtype, at::ScalarType compute_dtype);

// Loads the checkpoint folder `dir` through `source` and compares it with
// `reference`. The check's kind, table and threshold are filled by the caller.
ParityCheck check_checkpoint_folder(Registry& registry, const ArtefactModelSource& source, const std::string& dir,
                                    const ParityReference& reference);

// An export's artefact, read back by its exporter into a scratch folder made
// beside it (and removed after); "not checked (exporter has no read-back)"
// when the exporter returns nullopt.
ParityCheck check_export(Registry& registry, const ArtefactModelSource& source, Exporter& exporter,
                         const ExportJob& job, const ExportReport& report, const ParityReference& reference);

// summary.json's "export_parity": one object per check.
nlohmann::json parity_json(const std::vector<ParityCheck>& checks);

// Throws mftk::Error naming every check past its threshold (exit 1).
void enforce_parity(const std::vector<ParityCheck>& checks, const std::string& report_path = {});

// ---------------------------------------------------------------------------
// Where the rows come from.

// `mftk merge` / `mftk export --adapter` without --eval-data: a few short
// general texts (prose, a list, code, numbers, a chat turn), every token
// scored. A fine-tune's own held-out file (--eval-data) says more.
std::vector<Example> builtin_parity_rows(const Tokenizer& tokenizer);
// --eval-data FILE: JSONL rows as [[datasets]] reads them; the type is that
// of the first row's keys ("messages": chat, "instruction": instruction,
// "text": completion). UsageError for anything else.
std::vector<Example> parity_rows_from_file(const std::string& path, const Tokenizer& tokenizer);

// `mftk merge` and `mftk export --adapter`: the base + adapter model
// recorded on --eval-data's rows (or the built-in sample), up to max_rows
// rows and 2048 tokens; max_rows = 0: an empty reference (no check).
ParityReference command_parity_reference(Model& trained, const Tokenizer& tokenizer, const std::string& eval_data,
                                         int64_t max_rows);
// Logs each check (a warning when it failed or was not done), then enforce_parity.
void report_parity(const std::vector<ParityCheck>& checks);

// ---------------------------------------------------------------------------
// The gate inside `mftk run`.
class RunParityGate {
 public:
  // Records the trained model (as trained: an adapter unmerged) on up to
  // [validate] parity_rows rows of the eval split (the training rows when
  // there is none) when `active`; otherwise, or with parity_rows = 0, does
  // nothing at all.
  RunParityGate(const Recipe& recipe, Registry& registry, Model& trained, const std::vector<Example>& eval,
                const std::vector<Example>& train, bool active);
  bool enabled() const { return !reference_.empty(); }

  // The merged (or, after full fine-tuning, the saved) checkpoint folder,
  // gated by [validate] merge_max_kl.
  void check_checkpoint(const std::string& kind, const std::string& dir);
  // One [[export]]: its artefact read back by the exporter, gated by its max_kl.
  void check_export(const ComponentRef& table, Exporter& exporter, const ExportJob& job, const ExportReport& report);

  const std::vector<ParityCheck>& checks() const { return checks_; }

 private:
  void add(ParityCheck check);
  Registry& registry_;
  ArtefactModelSource source_;
  ParityReference reference_;
  double merge_max_kl_ = 0;
  std::vector<ParityCheck> checks_;
};

}  // namespace mftk::core
