// The training loop, read top to bottom: for each optimizer step, take its
// micro-batches, count their supervised tokens, forward/backward each with
// loss_sum / total_tokens (so accumulation equals one large batch whatever
// the lengths), clip, step the optimizer plugin at the schedule's lr, log,
// evaluate, checkpoint. Model maths lives in the model plugin; update rules
// in optimizer plugins; this file only orders the work.
#include "trainer.h"

#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <atomic>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <functional>
#include <map>
#include <regex>
#include <set>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/grad_mode.h>

#include "batching.h"
#include "device.h"
#include "distributed.h"
#include "fs_util.h"
#include "linear_cross_entropy.h"
#include "mftk/linear_slot.h"
#include "mftk/model.h"
#include "mftk/objective.h"
#include "mftk/optimizer.h"
#include "mftk/safetensors.h"
#include "objective_cache.h"
#include "recipe.h"
#include "run_log.h"
#include "sha256.h"
#include "tensorboard_writer.h"
#include "train_step.h"

namespace mftk::core {

namespace fs = std::filesystem;

namespace {

constexpr int kCheckpointFormat = 1;
constexpr int64_t kLossChunkTokens = 1024;  // logits rows per cross-entropy chunk

std::atomic<bool> g_interrupt{false};
extern "C" void on_sigint(int) { g_interrupt = true; }

// Ctrl-C asks for a checkpoint while train() runs; the previous handler comes
// back however train() ends (also when it throws, e.g. after non-finite losses).
class SigintScope {
 public:
  SigintScope() : previous_(std::signal(SIGINT, on_sigint)) { g_interrupt = false; }
  ~SigintScope() { std::signal(SIGINT, previous_); }
  SigintScope(const SigintScope&) = delete;
  SigintScope& operator=(const SigintScope&) = delete;

 private:
  void (*previous_)(int);
};

}  // namespace

TrainOptions TrainOptions::from_recipe(const Recipe& r) {
  const auto& t = r.section("training");
  const auto& s = r.section("schedule");
  TrainOptions o;
  o.micro_batch_size = t.get_int("micro_batch_size");
  o.gradient_accumulation_steps = t.get_int("gradient_accumulation_steps");
  o.num_epochs = t.get_number("num_epochs");
  o.max_steps = t.get_int("max_steps");
  o.max_grad_norm = t.get_number("max_grad_norm");
  o.logging_steps = t.get_int("logging_steps");
  o.eval_steps = t.get_int("eval_steps");
  o.save_steps = t.get_int("save_steps");
  o.save_total_limit = t.get_int("save_total_limit");
  o.nan_patience = t.get_int("nan_patience");
  o.seed = uint64_t(t.get_int("seed"));
  o.output_dir = t.get_string("output_dir");
  o.resume_from_checkpoint = t.get_string("resume_from_checkpoint");
  o.tensorboard = t.get_bool("tensorboard");
  o.schedule.kind = s.get_string("lr_scheduler");
  o.schedule.peak_lr = s.get_number("learning_rate");
  o.schedule.min_lr_ratio = s.get_number("min_lr_ratio");
  // warmup is resolved once total_steps is known (warmup_ratio).
  o.schedule.warmup_steps = s.get_int("warmup_steps");
  o.schedule.total_steps = -1;
  o.warmup_ratio_ = s.get_number("warmup_ratio");
  return o;
}

// The head slot the model names (Model::architecture) lists its op's tensors
// (a LoRA op its A and B, a dense one its weight, the embedding when tied).
std::optional<std::vector<at::Tensor>> head_trainable_tensors(Model& model) {
  const std::string head = model.architecture().head_slot;
  for (const LinearSlot* slot : model.linear_slots()) {
    if (slot->name != head) continue;
    std::vector<at::Tensor> out;
    for (const auto& [name, t] : slot->op->parameters())
      if (t.defined() && t.requires_grad()) out.push_back(t);
    return out;
  }
  return std::nullopt;
}

at::Tensor supervised_loss_sum(Model& model, const Batch& host_batch, int64_t* token_count) {
  // Rows are built on the host; the batch goes where the weights are (on the
  // CPU these are the same tensors).
  const Batch batch = batch_to_device(host_batch, model_device(model));
  at::Tensor hidden = model.forward(batch);  // [B, T, H]
  at::Tensor flat_targets = batch.targets.to(hidden.device()).reshape({-1});
  at::Tensor idx = (flat_targets != kIgnoreIndex).nonzero().squeeze(1);
  const int64_t n = idx.numel();
  if (token_count) *token_count = n;
  if (n == 0) return hidden.sum() * 0.0;  // keeps the graph; contributes nothing
  at::Tensor h = hidden.reshape({-1, hidden.size(-1)}).index_select(0, idx);
  at::Tensor t = flat_targets.index_select(0, idx);
  const LogitsFn head = [&model](const at::Tensor& x) { return model.logits(x); };
  // linear_cross_entropy_sum itself takes the plain path when no gradient is wanted.
  if (auto params = head_trainable_tensors(model)) return linear_cross_entropy_sum(h, t, head, kLossChunkTokens, *params);
  return chunked_cross_entropy_sum(h, t, head, kLossChunkTokens);  // a head we cannot see into
}

EvalResult evaluate_loss(Model& model, const std::vector<PackedRow>& rows, int64_t micro_batch_size) {
  at::NoGradGuard no_grad;
  model.set_training(false);
  double sum = 0;
  int64_t tokens = 0;
  for (size_t i = 0; i < rows.size(); i += size_t(micro_batch_size)) {
    const size_t count = std::min(rows.size() - i, size_t(micro_batch_size));
    int64_t n = 0;
    at::Tensor loss = supervised_loss_sum(model, make_batch(rows.data() + i, count), &n);
    sum += loss.item<double>();
    tokens += n;
  }
  EvalResult r;
  r.tokens = tokens;
  r.loss = tokens ? sum / double(tokens) : NAN;
  r.perplexity = std::exp(r.loss);
  return r;
}

void prepare_objective(Model& model, Objective& objective, Adapter* adapter, const std::vector<PackedRow>& rows,
                       int64_t micro_batch_size) {
  if (!objective.needs_preparation(adapter)) return;
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < rows.size(); i += size_t(micro_batch_size))
    objective.prepare(model, adapter, make_batch(rows.data() + i, std::min(rows.size() - i, size_t(micro_batch_size))));
}

EvalResult evaluate_objective(Model& model, Objective* objective, Adapter* adapter,
                              const std::vector<PackedRow>& rows, int64_t micro_batch_size) {
  if (!objective) return evaluate_loss(model, rows, micro_batch_size);
  at::NoGradGuard no_grad;
  model.set_training(false);
  const auto names = objective->metric_names();
  double sum = 0;
  int64_t units = 0;
  std::vector<double> metrics(names.size(), 0.0);
  for (size_t i = 0; i < rows.size(); i += size_t(micro_batch_size)) {
    const size_t count = std::min(rows.size() - i, size_t(micro_batch_size));
    ObjectiveResult part = objective->compute(model, adapter, make_batch(rows.data() + i, count));
    sum += part.loss_sum.item<double>();
    units += part.units;
    for (size_t k = 0; k < names.size() && k < part.metrics.size(); ++k) metrics[k] += part.metrics[k];
  }
  EvalResult r;
  r.tokens = units;
  r.loss = units ? sum / double(units) : NAN;
  r.perplexity = std::exp(r.loss);
  for (size_t k = 0; k < names.size(); ++k) r.metrics.emplace_back(names[k], units ? metrics[k] / double(units) : NAN);
  return r;
}

namespace {

std::string manifest_path(const std::string& dir) { return (fs::path(dir) / "manifest.json").string(); }

bool manifest_ok(const std::string& dir, std::string* why) {
  try {
    auto m = nlohmann::json::parse(read_file(manifest_path(dir)));
    for (const auto& [file, entry] : m.at("files").items()) {
      const auto p = (fs::path(dir) / file).string();
      if (!fs::exists(p)) throw Error(fmt::format("{} is missing", file));
      if (int64_t(fs::file_size(p)) != entry.at("bytes").get<int64_t>())
        throw Error(fmt::format("{} has the wrong size", file));
      // Name both digests: the user can tell a flipped bit from a different save.
      if (const auto found = sha256_file_hex(p), listed = entry.at("sha256").get<std::string>(); found != listed)
        throw Error(fmt::format("{} does not match its checksum in manifest.json (sha256 {}, the file has {})", file,
                                listed, found));
    }
    return true;
  } catch (const std::exception& e) {
    if (why) *why = e.what();
    return false;
  }
}

// A checkpoint folder mftk wrote: its manifest lists every file in it. The
// cheap proof that replacing or rotating it away destroys nothing else
// (the checksums are for resuming, manifest_ok).
bool is_own_checkpoint(const fs::path& dir) {
  try {
    const auto m = nlohmann::json::parse(read_file(manifest_path(dir.string())));
    const auto& listed = m.at("files");
    for (const auto& e : fs::recursive_directory_iterator(dir)) {
      if (e.is_directory() && !e.is_symlink()) continue;
      const auto rel = fs::relative(e.path(), dir).string();
      if (rel != "manifest.json" && !listed.contains(rel)) return false;
    }
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

// Folders a killed save left in output_dir: named by ScratchFolder
// (".checkpoint-<step>.mftk-tmp-<pid>-<n>") for a process that is gone.
// Only mftk makes that name, in the output_dir the run claimed as its own.
void remove_interrupted_saves(const std::string& output_dir) {
  static const std::regex re(R"(\.checkpoint-[0-9]+\.mftk-(tmp|old)-([0-9]+)-[0-9]+)");
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(output_dir, ec)) {
    std::smatch m;
    const auto name = e.path().filename().string();
    if (!e.is_directory() || e.is_symlink() || !std::regex_match(name, m, re)) continue;
    const pid_t pid = pid_t(std::stoll(m[2]));
    if (pid == ::getpid() || ::kill(pid, 0) == 0 || errno != ESRCH) continue;  // still running
    spdlog::info("removing {}, left by an interrupted checkpoint save", e.path().string());
    fs::remove_all(e.path(), ec);
  }
}

}  // namespace

std::string find_latest_checkpoint(const std::string& output_dir) {
  std::error_code ec;
  if (!fs::is_directory(output_dir, ec)) return {};
  std::vector<std::pair<int64_t, std::string>> found;
  static const std::regex re("checkpoint-([0-9]+)");
  for (const auto& e : fs::directory_iterator(output_dir, ec)) {
    std::smatch m;
    const auto name = e.path().filename().string();
    if (e.is_directory() && std::regex_match(name, m, re)) found.emplace_back(std::stoll(m[1]), e.path().string());
  }
  std::sort(found.rbegin(), found.rend());
  for (const auto& [step, dir] : found) {
    std::string why;
    if (manifest_ok(dir, &why)) return dir;
    spdlog::warn("skipping {}: {}", dir, why);
  }
  return {};
}

Trainer::Trainer(Model& model, Optimizer& optimizer, NamedTensors trainable, std::vector<PackedRow> train_rows,
                 std::vector<PackedRow> eval_rows, TrainOptions options)
    : model_(model),
      optimizer_(optimizer),
      trainable_(std::move(trainable)),
      train_rows_(std::move(train_rows)),
      eval_rows_(std::move(eval_rows)),
      o_(std::move(options)) {
  if (train_rows_.empty()) throw UsageError("no training rows: the datasets are empty after filtering");
  if (trainable_.empty()) throw UsageError("nothing to train: no parameter requires a gradient");
  micro_per_epoch_ = int64_t((train_rows_.size() + size_t(o_.micro_batch_size) - 1) / size_t(o_.micro_batch_size));
  total_micro_ = std::max<int64_t>(1, int64_t(std::floor(o_.num_epochs * double(micro_per_epoch_))));
  if (o_.distributed) world_size_ = o_.distributed->world_size(), rank_ = o_.distributed->rank();
  micro_per_step_ = o_.gradient_accumulation_steps * world_size_;
  total_steps_ = o_.max_steps > 0 ? o_.max_steps : (total_micro_ + micro_per_step_ - 1) / micro_per_step_;
  o_.schedule.total_steps = total_steps_;
  o_.schedule.warmup_steps = warmup_from(o_.schedule.warmup_steps, o_.warmup_ratio_, total_steps_);
}

void Trainer::set_objective(Objective* objective, Adapter* adapter) {
  objective_ = objective;
  adapter_ = adapter;
  metric_names_ = objective ? objective->metric_names() : std::vector<std::string>{};
  window_metrics_.assign(metric_names_.size(), 0.0);
}

// Rows of micro-batch `m` (counted from the start of training): epoch
// m / micro_per_epoch, in that epoch's seeded permutation.
std::vector<const PackedRow*> Trainer::micro_batch_rows(int64_t m) const {
  const int64_t epoch = m / micro_per_epoch_, within = m % micro_per_epoch_;
  if (epoch != order_epoch_) {
    order_.resize(train_rows_.size());
    for (size_t i = 0; i < order_.size(); ++i) order_[i] = i;
    SplitMix64 rng(o_.seed ^ (0x9E3779B97F4A7C15ULL * uint64_t(epoch + 1)));
    for (size_t i = order_.size(); i > 1; --i) std::swap(order_[i - 1], order_[size_t(rng.below(i))]);
    order_epoch_ = epoch;
  }
  const auto& order = order_;
  std::vector<const PackedRow*> rows;
  for (int64_t k = within * o_.micro_batch_size; k < std::min<int64_t>((within + 1) * o_.micro_batch_size, int64_t(order.size())); ++k)
    rows.push_back(&train_rows_[order[size_t(k)]]);
  return rows;
}

namespace {

constexpr const char* kRunRecordFile = "run.json";

// Recipe keys (table.key) a resume may change without changing what the
// checkpoint's state means: how long to train, where and how often to log
// and save, what to do after training. Reported as info.
bool resume_may_change(const std::string& key) {
  static const std::set<std::string> keys = {
      "training.max_steps",    "training.num_epochs",       "training.resume_from_checkpoint",
      "training.output_dir",   "training.logging_steps",    "training.eval_steps",
      "training.save_steps",   "training.save_total_limit", "training.tensorboard",
      "training.threads",      "training.device",           "training.distributed_timeout_s",
      "training.merge_adapter", "training.dataset_prepared_path"};
  return keys.count(key) || key.rfind("validate.", 0) == 0 || key.rfind("plugins.", 0) == 0 || key == "export";
}

// Keys whose change makes an exact resume impossible, so it is refused: a
// different base model or adapter (other tensors, or tensors of another
// shape, under the saved weights), another optimizer (its saved state means
// nothing to a different update rule), other rows in another order (the
// saved position in the data no longer points at the same step). The rest
// (learning rate, dropout, clipping, ...) is a choice the user may make
// mid-run: warned about, not refused.
bool resume_refuses_change(const std::string& key) {
  static const std::set<std::string> keys = {
      "model.plugin",     "model.path",       "quantize.plugin",        "adapter.plugin", "adapter.r",
      "adapter.target_modules", "optimizer.plugin", "objective.plugin", "packer.plugin",
      "training.sequence_len",  "datasets"};
  return keys.count(key) != 0;
}

// "table.key" -> value for every key of the record's recipe; arrays of
// tables (datasets, export) compare as one value each.
std::map<std::string, nlohmann::json> flat_recipe(const nlohmann::json& record) {
  std::map<std::string, nlohmann::json> out;
  const auto r = record.find("recipe");
  if (r == record.end() || !r->is_object()) return out;
  for (const auto& [table, keys] : r->items()) {
    if (!keys.is_object()) {
      out[table] = keys;
      continue;
    }
    for (const auto& [key, value] : keys.items()) out[table + "." + key] = value;
  }
  return out;
}

std::string shown(const nlohmann::json* v) { return v ? v->dump() : "(unset)"; }

// Logs one line per difference between the checkpoint's record and this
// run's, and throws UsageError (exit 2) when one of them makes an exact
// resume impossible.
void compare_run_records(const std::string& dir, const nlohmann::json& was, const nlohmann::json& now) {
  const auto old_keys = flat_recipe(was), new_keys = flat_recipe(now);
  std::set<std::string> keys;
  for (const auto& [k, v] : old_keys) keys.insert(k);
  for (const auto& [k, v] : new_keys) keys.insert(k);
  std::vector<std::string> refused;
  for (const auto& key : keys) {
    const auto o = old_keys.find(key), n = new_keys.find(key);
    const nlohmann::json* ov = o == old_keys.end() ? nullptr : &o->second;
    const nlohmann::json* nv = n == new_keys.end() ? nullptr : &n->second;
    if (ov && nv && *ov == *nv) continue;
    const auto dot = key.find('.');
    const std::string line = dot == std::string::npos
                                 ? fmt::format("resume: [{}] was {}, now {}", key, shown(ov), shown(nv))
                                 : fmt::format("resume: [{}] {} was {}, now {}", key.substr(0, dot), key.substr(dot + 1),
                                               shown(ov), shown(nv));
    if (resume_refuses_change(key)) refused.push_back(fmt::format("{} was {}, this run has {}", key, shown(ov), shown(nv)));
    else if (resume_may_change(key)) spdlog::info("{}", line);
    else spdlog::warn("{}", line);
  }
  // The code each component ran, by kind and table: another version of a
  // plugin may compute differently, so it is worth a warning.
  auto components = [](const nlohmann::json& record) {
    std::map<std::string, nlohmann::json> out;
    for (const auto& c : record.value("components", nlohmann::json::array()))
      out[c.value("kind", "") + "/" + c.value("table", "")] = c;
    return out;
  };
  const auto old_components = components(was), new_components = components(now);
  for (const auto& [id, c] : new_components) {
    const auto o = old_components.find(id);
    if (o == old_components.end() || o->second.value("plugin", "") != c.value("plugin", "")) continue;  // the recipe's plugin key says it
    const std::string plugin = c.value("plugin", "?");
    if (o->second.value("library_version", "") != c.value("library_version", ""))
      spdlog::warn("resume: plugin {} {} -> {}", plugin, o->second.value("library_version", "?"),
                   c.value("library_version", "?"));
    if (o->second.value("library_file", "") != c.value("library_file", ""))
      spdlog::info("resume: plugin {} library {} -> {}", plugin, o->second.value("library_file", "?"),
                   c.value("library_file", "?"));
  }
  if (was.value("mftk_version", "") != now.value("mftk_version", ""))
    spdlog::warn("resume: mftk {} -> {}", was.value("mftk_version", "?"), now.value("mftk_version", "?"));
  if (!refused.empty())
    throw UsageError(fmt::format("cannot resume from {}: {} (an exact resume needs the same model, adapter shape, "
                                 "optimizer and data)",
                                 dir, fmt::join(refused, "; ")),
                     "set these back to the checkpoint's values (its run.json), or start a fresh output_dir "
                     "without resume_from_checkpoint");
}

}  // namespace

void Trainer::save_checkpoint(int64_t step, const std::string& reason) {
  if (rank_ != 0) return;  // every rank holds the same state; rank 0 alone writes it
  const fs::path final_dir = fs::path(o_.output_dir) / fmt::format("checkpoint-{}", step);
  // Written in a folder made fresh for this save (never a leftover or a
  // file of the user's), renamed into place once its manifest is in.
  remove_interrupted_saves(o_.output_dir);
  ScratchFolder staging(final_dir.string(), "mftk-tmp");
  const fs::path tmp = staging.path();
  NamedTensors weights;
  for (const auto& [name, p] : trainable_) weights.emplace_back(name, p.detach());
  save_safetensors((tmp / "trainable.safetensors").string(), weights);
  save_safetensors((tmp / "optimizer.safetensors").string(), optimizer_.state());
  NamedTensors rng = {{"cpu_generator", at::detail::getDefaultCPUGenerator().get_state()}};
  // A GPU run's generator too (dropout draws from it); a CPU run's file is unchanged.
  if (const c10::Device device = model_device(model_); device.is_cuda())
    rng.emplace_back("cuda_generator", at::globalContext().defaultGenerator(device).get_state());
  save_safetensors((tmp / "rng.safetensors").string(), rng);
  nlohmann::json state = {{"format", kCheckpointFormat},       {"step", step},
                          {"total_steps", total_steps_},        {"seed", o_.seed},
                          {"micro_batch_size", o_.micro_batch_size},
                          {"gradient_accumulation_steps", o_.gradient_accumulation_steps},
                          {"train_rows", train_rows_.size()},   {"nan_in_a_row", nan_in_a_row_},
                          {"nan_total", nan_total_},            {"world_size", world_size_},
                          {"reason", reason}};
  if (best_eval_) state["best_eval_loss"] = *best_eval_;
  // JSON keeps the double exactly (17 significant digits).
  state["metrics_window"] = {{"loss_sum", window_loss_}, {"steps", window_steps_}, {"tokens", window_tokens_}};
  if (!metric_names_.empty()) state["metrics_window"]["objective"] = window_metrics_;
  write_file_atomic((tmp / "trainer_state.json").string(), state.dump(2) + "\n");
  // What run wrote it, listed in the manifest below like every other file.
  if (!o_.run_record.empty()) write_file_atomic((tmp / kRunRecordFile).string(), o_.run_record);
  if (on_checkpoint) on_checkpoint(tmp.string());
  // The manifest is written last: a folder without a valid one is never resumed from.
  nlohmann::json files = nlohmann::json::object();
  for (const auto& e : fs::recursive_directory_iterator(tmp)) {
    if (!e.is_regular_file()) continue;
    const auto rel = fs::relative(e.path(), tmp).string();
    files[rel] = {{"bytes", int64_t(e.file_size())}, {"sha256", sha256_file_hex(e.path().string())}};
  }
  write_file_atomic(manifest_path(tmp.string()), nlohmann::json{{"format", kCheckpointFormat}, {"files", files}}.dump(2) + "\n");
  std::error_code ec;
  if (fs::exists(fs::symlink_status(final_dir, ec))) {
    if (!is_own_checkpoint(final_dir))
      throw UsageError(fmt::format("{} exists and is not a checkpoint mftk wrote (its manifest.json does not list "
                                   "everything in it): mftk never replaces what it did not write",
                                   final_dir.string()),
                       fmt::format("move or remove {} yourself, or use another output_dir", final_dir.string()));
    ScratchFolder old(final_dir.string(), "mftk-old");  // the earlier save: set aside, swapped, then deleted
    fs::rename(final_dir, fs::path(old.path()) / "old");
    fs::rename(tmp, final_dir);
  } else {
    fs::rename(tmp, final_dir);
  }
  staging.keep();  // it is final_dir now
  spdlog::info("checkpoint {} written ({})", final_dir.string(), reason);

  if (o_.save_total_limit > 0) {
    std::vector<std::pair<int64_t, fs::path>> all;
    static const std::regex re("checkpoint-([0-9]+)");
    for (const auto& e : fs::directory_iterator(o_.output_dir)) {
      std::smatch m;
      const auto name = e.path().filename().string();
      if (!e.is_directory() || !std::regex_match(name, m, re)) continue;
      // Only checkpoints mftk wrote count and are rotated away; anything else is left alone.
      if (is_own_checkpoint(e.path())) all.emplace_back(std::stoll(m[1]), e.path());
      else spdlog::warn("save_total_limit: leaving {}: not a checkpoint mftk wrote", e.path().string());
    }
    std::sort(all.begin(), all.end());
    for (size_t i = 0; i + size_t(o_.save_total_limit) < all.size(); ++i) fs::remove_all(all[i].second);
  }
}

void Trainer::load_checkpoint(const std::string& dir) {
  std::string why;
  if (!manifest_ok(dir, &why))
    throw Error(fmt::format("checkpoint {} is damaged or incomplete: {}", dir, why),
                "resume from an earlier checkpoint, or use resume_from_checkpoint = \"latest\"");
  auto state = nlohmann::json::parse(read_file((fs::path(dir) / "trainer_state.json").string()));
  if (state.at("format").get<int>() != kCheckpointFormat)
    throw Error(fmt::format("checkpoint {} has format {}, this mftk reads {}", dir, state.at("format").get<int>(),
                            kCheckpointFormat));
  // First the recipe and plugins the checkpoint was made with: a refusal
  // there names the key that changed, before the checks below would stop
  // on one of its consequences (another row count, a missing tensor).
  if (!o_.run_record.empty()) {
    const fs::path recorded = fs::path(dir) / kRunRecordFile;
    if (fs::exists(recorded))
      compare_run_records(dir, nlohmann::json::parse(read_file(recorded.string())), nlohmann::json::parse(o_.run_record));
    else
      spdlog::info("resume: {} has no {} (written before checkpoints recorded their run): nothing to compare", dir,
                   kRunRecordFile);
  }
  auto check_same = [&](const char* key, int64_t ours) {
    if (state.at(key).get<int64_t>() != ours)
      throw UsageError(fmt::format("cannot resume from {}: it was made with {} = {}, this run has {}", dir, key,
                                   state.at(key).get<int64_t>(), ours),
                       "resume with the recipe the checkpoint was trained with");
  };
  // Before the batch-shape checks: a changed world size changes the global
  // batch, and the message should say what actually differs.
  if (const int64_t written_by = state.value("world_size", int64_t(1)); written_by != world_size_)
    throw UsageError(fmt::format("cannot resume: {} was written by {} rank{}; this run has {}",
                                 fs::path(dir).filename().string(), written_by, written_by == 1 ? "" : "s", world_size_),
                     written_by == 1 ? "resume it in one process (no WORLD_SIZE, or mftk run)"
                                     : fmt::format("resume it with {} ranks: mftk launch --nproc {} <recipe> (or "
                                                   "torchrun with WORLD_SIZE={})",
                                                   written_by, written_by, written_by));
  check_same("micro_batch_size", o_.micro_batch_size);
  check_same("gradient_accumulation_steps", o_.gradient_accumulation_steps);
  check_same("train_rows", int64_t(train_rows_.size()));
  if (state.at("seed").get<uint64_t>() != o_.seed)
    throw UsageError(fmt::format("cannot resume from {}: it was trained with seed {}, this run has {}", dir,
                                 state.at("seed").get<uint64_t>(), o_.seed));
  auto weights = CheckpointReader::open((fs::path(dir) / "trainable.safetensors").string());
  at::NoGradGuard no_grad;
  for (auto& [name, p] : trainable_) {
    if (!weights.contains(name)) throw Error(fmt::format("checkpoint {} lacks trainable tensor {}", dir, name));
    p.copy_(weights.get(name));
  }
  auto opt = CheckpointReader::open((fs::path(dir) / "optimizer.safetensors").string());
  NamedTensors opt_state;
  for (const auto& n : opt.names()) opt_state.emplace_back(n, opt.get(n).clone());
  optimizer_.load_state(opt_state);
  auto rng = CheckpointReader::open((fs::path(dir) / "rng.safetensors").string());
  at::Generator gen = at::detail::getDefaultCPUGenerator();
  gen.set_state(rng.get("cpu_generator").clone());
  if (const c10::Device device = model_device(model_); device.is_cuda() && rng.contains("cuda_generator")) {
    at::Generator cuda_gen = at::globalContext().defaultGenerator(device);
    cuda_gen.set_state(rng.get("cuda_generator").clone());
  }
  step_ = state.at("step").get<int64_t>();
  nan_in_a_row_ = state.value("nan_in_a_row", int64_t(0));
  nan_total_ = state.value("nan_total", int64_t(0));
  if (state.contains("best_eval_loss")) best_eval_ = state["best_eval_loss"].get<double>();
  if (const auto w = state.find("metrics_window"); w != state.end()) {
    window_loss_ = w->at("loss_sum").get<double>();
    window_steps_ = w->at("steps").get<int64_t>();
    window_tokens_ = w->at("tokens").get<int64_t>();
    if (const auto m = w->find("objective"); m != w->end() && m->size() == window_metrics_.size())
      window_metrics_ = m->get<std::vector<double>>();
  }
  spdlog::info("resumed from {} at step {}/{}", dir, step_, total_steps_);
}

// The eval loss over all ranks: each evaluates the whole micro-batches i
// with i % W == rank, and the sums are added (one rank: evaluate_loss).
EvalResult Trainer::evaluate_sharded() {
  if (world_size_ == 1) return evaluate_objective(model_, objective_, adapter_, eval_rows_, o_.micro_batch_size);
  std::vector<PackedRow> mine;
  const size_t mbs = size_t(o_.micro_batch_size);
  for (size_t i = 0; i < eval_rows_.size(); ++i)
    if ((i / mbs) % size_t(world_size_) == size_t(rank_)) mine.push_back(eval_rows_[i]);
  const EvalResult local =
      mine.empty() ? EvalResult{} : evaluate_objective(model_, objective_, adapter_, mine, o_.micro_batch_size);
  const double local_sum = local.tokens ? local.loss * double(local.tokens) : 0.0;
  std::vector<double> values = {local_sum, double(local.tokens)};
  for (size_t k = 0; k < metric_names_.size(); ++k)
    values.push_back(local.tokens && k < local.metrics.size() ? local.metrics[k].second * double(local.tokens) : 0.0);
  const auto sums = o_.distributed->sum(values, fmt::format("the eval-loss all-reduce at step {}", step_));
  EvalResult r;
  r.tokens = int64_t(sums[1]);
  r.loss = r.tokens ? sums[0] / sums[1] : NAN;
  r.perplexity = std::exp(r.loss);
  for (size_t k = 0; k < metric_names_.size(); ++k)
    r.metrics.emplace_back(metric_names_[k], r.tokens ? sums[2 + k] / sums[1] : NAN);
  return r;
}

// What one call of train() keeps while it runs: where the metrics go, the
// bar, the clocks, and the result being filled in.
struct Trainer::Loop {
  std::optional<MetricsWriter> metrics;
  std::optional<TensorBoardWriter> tensorboard;
  std::optional<ProgressBar> bar;
  std::string bar_extra;  // the objective's headline metric, once logged
  TrainResult result;
  std::chrono::steady_clock::time_point t0, window_t;
};

namespace {

// The series metrics.jsonl holds up to and including `step`: the part of a
// resumed run that an earlier process logged. Records past the checkpoint
// (logged before a kill, and logged again by this run) are left out.
MetricPoints metrics_up_to(const std::string& path, int64_t step) {
  MetricPoints points = read_metrics(path);
  for (auto& [name, series] : points)
    series.erase(std::remove_if(series.begin(), series.end(), [&](const auto& p) { return p.first > double(step); }),
                 series.end());
  return points;
}

}  // namespace

TrainResult Trainer::train() {
  start_training();
  Loop loop;
  open_logs(loop);
  SigintScope sigint;
  TrainStep step(model_, optimizer_, trainable_, objective_, adapter_);
  // An objective's eval metrics before the first step (TRL's eval_on_start),
  // so a run shows where its rewards started; logged as step 0.
  if (objective_ && !metric_names_.empty() && step_ == 0 && !eval_rows_.empty())
    loop.result.eval_metrics_before = evaluate_and_log(loop).metrics;
  while (step_ < total_steps_) {
    const bool interrupted = take_step(step, loop);
    const bool last = step_ == total_steps_;
    if (!eval_rows_.empty() && ((o_.eval_steps > 0 && step_ % o_.eval_steps == 0) || last)) {
      const EvalResult ev = evaluate_and_log(loop);
      loop.result.eval_metrics = ev.metrics;
      loop.result.eval_loss = ev.loss;
      if (!best_eval_ || ev.loss < *best_eval_) best_eval_ = ev.loss;
    }
    if (save_when_due(loop, interrupted)) break;
  }
  return finish(loop);
}

// Before the first step: the objective prepared, a checkpoint resumed, the
// ranks agreed on where they start.
void Trainer::start_training() {
  Distributed* dp = o_.distributed.get();
  const bool main_rank = rank_ == 0;  // writes metrics, the progress bar and checkpoints
  if (main_rank) fs::create_directories(o_.output_dir);
  if (objective_) {
    // Before a checkpoint is loaded: an objective that records a reference
    // (full fine-tuning DPO) sees the weights training started from, also
    // when this run resumes.
    const std::string line = prepare_objective_cached(model_, *objective_, adapter_, train_rows_, eval_rows_,
                                                      o_.micro_batch_size, o_.objective_cache, main_rank);
    if (!line.empty() && main_rank) spdlog::info("{}", line);
  }
  if (!o_.resume_from_checkpoint.empty()) {
    std::string dir = o_.resume_from_checkpoint;
    if (dir == "latest") {
      dir = find_latest_checkpoint(o_.output_dir);
      if (dir.empty()) spdlog::info("resume_from_checkpoint = \"latest\": no checkpoint in {}, starting fresh", o_.output_dir);
    }
    if (!dir.empty()) load_checkpoint(dir);
  }
  if (world_size_ > 1) {
    // Ranks start from rank 0's weights (they are equal already when the
    // seed is, but a plugin drawing from another generator must not make
    // them drift apart), and agree on where they start.
    dp->broadcast_from_main(trainable_, "the broadcast of the initial weights");
    const double steps = dp->sum({double(step_)}, "the start-up step check")[0];
    if (steps != double(step_) * world_size_)
      throw Error(fmt::format("rank {} starts at step {}, but the ranks' steps sum to {}: they resumed from different "
                              "checkpoints",
                              rank_, step_, steps),
                  "every rank must see the same output_dir (a shared filesystem), or name the checkpoint folder "
                  "explicitly in resume_from_checkpoint");
  }
}

// metrics.jsonl, TensorBoard and the bar (rank 0), and the clocks. A
// resumed run's series starts with what the earlier process logged, so the
// series train() hands back covers the whole run.
void Trainer::open_logs(Loop& loop) {
  const bool main_rank = rank_ == 0;
  const std::string path = (fs::path(o_.output_dir) / kMetricsFile).string();
  if (main_rank && step_ > 0) loop.result.metrics = metrics_up_to(path, step_);
  if (main_rank) loop.metrics.emplace(path);
  if (main_rank && o_.tensorboard) loop.tensorboard.emplace(o_.output_dir, step_);
  loop.bar.emplace(total_steps_, step_, o_.progress_bar && main_rank);
  loop.t0 = loop.window_t = std::chrono::steady_clock::now();
}

// Every metrics line goes to metrics.jsonl, TensorBoard and the series
// train() returns, so all three hold exactly the same records.
void Trainer::log_metrics(Loop& loop, const nlohmann::json& record) {
  if (!loop.metrics) return;  // ranks other than 0 log nothing
  loop.metrics->write(record);
  if (loop.tensorboard) loop.tensorboard->write_metrics(record);
  add_metrics_record(loop.result.metrics, record);
}

EvalResult Trainer::evaluate_and_log(Loop& loop) {
  model_.set_training(false);
  const EvalResult ev = evaluate_sharded();
  nlohmann::json record = {
      {"step", step_}, {"eval_loss", ev.loss}, {"eval_ppl", ev.perplexity}, {"eval_tokens", ev.tokens}};
  std::string objective_text;
  for (const auto& [name, value] : ev.metrics) {
    record["eval_" + name] = value;
    objective_text += fmt::format(" {} {:.4f}", name, value);
  }
  log_metrics(loop, record);
  loop.bar->finish();
  spdlog::info("step {}: eval loss {:.4f} (perplexity {:.3f}, {} {}){}", step_, ev.loss, ev.perplexity, ev.tokens,
               objective_ ? "units" : "tokens", objective_text);
  return ev;
}

// This step's micro-batches, and the step's units and tokens. Every rank
// knows every row, so the totals are the whole step's (over all ranks)
// without communication; this rank keeps micro-batches k = rank, rank + W,
// ... of the step. Dropout draws from a generator seeded by the micro-batch
// index, so its masks do not depend on which rank runs the micro-batch.
std::vector<MicroBatch> Trainer::step_micro_batches(const TrainStep& step, int64_t& units, int64_t& tokens) const {
  std::vector<MicroBatch> batches;
  units = tokens = 0;
  for (int64_t k = 0; k < micro_per_step_; ++k) {
    const int64_t m = step_ * micro_per_step_ + k;
    if (o_.max_steps <= 0 && m >= total_micro_) break;
    auto rows = micro_batch_rows(m);
    for (const auto* r : rows) {
      units += step.units(*r);
      for (int32_t d : r->doc_ids) tokens += d >= 0;
    }
    if (k % world_size_ != rank_) continue;
    std::vector<PackedRow> copy;
    for (const auto* r : rows) copy.push_back(*r);
    batches.push_back({make_batch(copy), SplitMix64(o_.seed ^ (0xD1B54A32D192ED03ULL * uint64_t(m + 1))).next()});
  }
  return batches;
}

// Data parallelism, once per optimizer step after the last micro-batch: the
// gradients (each rank's are its micro-batches' share of the global mean),
// the loss and Ctrl-C, so every rank takes the same skip/step/stop decision.
void Trainer::all_reduce_step(StepOutcome& outcome, bool& interrupted) {
  Distributed* dp = o_.distributed.get();
  const std::string at_step = fmt::format("step {}", step_ + 1);
  dp->allreduce_gradients(trainable_, "the gradient all-reduce at " + at_step);
  std::vector<double> values = {outcome.loss_sum, interrupted ? 1.0 : 0.0};
  values.insert(values.end(), outcome.metric_sums.begin(), outcome.metric_sums.end());
  const auto sums = dp->sum(values, "the loss all-reduce at " + at_step);
  outcome.loss_sum = sums[0];
  interrupted = sums[1] > 0;
  for (size_t k = 0; k < outcome.metric_sums.size(); ++k) outcome.metric_sums[k] = sums[2 + k];
}

// One optimizer step (TrainStep::run), counted into the metrics window and
// logged when due. Returns whether Ctrl-C asked to stop (on any rank).
bool Trainer::take_step(TrainStep& step, Loop& loop) {
  model_.set_training(true);
  int64_t units = 0, tokens = 0;
  const std::vector<MicroBatch> batches = step_micro_batches(step, units, tokens);
  bool interrupted = false;
  std::function<void(StepOutcome&)> reduce;
  if (world_size_ > 1)
    reduce = [&](StepOutcome& outcome) {
      interrupted = g_interrupt;
      all_reduce_step(outcome, interrupted);
    };
  const double lr = o_.schedule.lr(step_);
  const StepOutcome outcome = step.run(batches, units, lr, o_.max_grad_norm, reduce);
  if (!outcome.updated) {  // the loss or the gradients were not finite
    ++nan_total_;
    if (++nan_in_a_row_ >= o_.nan_patience)
      throw Error(fmt::format("{} non-finite losses in a row (step {}); stopping", nan_in_a_row_, step_ + 1),
                  "lower the learning rate, enable max_grad_norm clipping, try bf16 = false, or check the data "
                  "for empty or corrupt rows");
    spdlog::warn("step {}: non-finite loss ({}) or gradient norm ({}): update skipped", step_ + 1, outcome.loss(),
                 outcome.grad_norm);
  } else {
    nan_in_a_row_ = 0;
  }
  ++step_;
  loop.result.train_tokens += tokens;
  window_tokens_ += tokens;
  const double step_loss = outcome.loss();
  if (std::isfinite(step_loss)) {
    window_loss_ += step_loss, ++window_steps_;
    for (size_t k = 0; k < window_metrics_.size() && k < outcome.metric_sums.size(); ++k)
      window_metrics_[k] += outcome.units ? outcome.metric_sums[k] / double(outcome.units) : 0.0;
  }
  loop.result.final_loss = step_loss;
  const auto now = std::chrono::steady_clock::now();
  const double window_s = std::chrono::duration<double>(now - loop.window_t).count();
  const double tps = window_s > 0 ? double(window_tokens_) / window_s : 0.0;
  loop.bar->update(step_, step_loss, lr, tps, loop.bar_extra);
  if (step_ % o_.logging_steps == 0 || step_ == total_steps_) log_window(loop, lr, outcome.grad_norm, tps, now);
  return interrupted;
}

// The metrics line of the window that ends at this step, then a new window.
void Trainer::log_window(Loop& loop, double lr, double grad_norm, double tokens_per_s,
                         std::chrono::steady_clock::time_point now) {
  const double mean_loss = window_steps_ ? window_loss_ / double(window_steps_) : NAN;
  nlohmann::json record = {{"step", step_},
                           {"epoch", double(step_ * micro_per_step_) / double(micro_per_epoch_)},
                           {"loss", mean_loss},
                           {"lr", lr},
                           {"grad_norm", grad_norm},
                           {"tokens", window_tokens_},
                           {"tokens_per_s", tokens_per_s},
                           {"elapsed_s", std::chrono::duration<double>(now - loop.t0).count()}};
  std::string objective_text;  // the objective's metrics, for the log line
  for (size_t k = 0; k < metric_names_.size(); ++k) {
    const double mean = window_steps_ ? window_metrics_[k] / double(window_steps_) : NAN;
    record[metric_names_[k]] = mean;
    objective_text += fmt::format(" {} {:.4f}", metric_names_[k], mean);
    // The bar has room for one of them: a preference run's reward
    // accuracy (TRL's name), as of the last logged window.
    if (metric_names_[k] == "rewards/accuracies") loop.bar_extra = fmt::format("reward acc {:.3f}", mean);
  }
  log_metrics(loop, record);
  // An objective's metrics (rewards/accuracies ...) do not fit the bar:
  // they get their own line under it.
  if (!objective_text.empty() && ::isatty(STDERR_FILENO) && o_.progress_bar) loop.bar->finish();
  if (!::isatty(STDERR_FILENO) || !o_.progress_bar || !objective_text.empty())
    spdlog::info("step {}/{} loss {:.4f} lr {:.3e} grad_norm {:.3f} {:.0f} tok/s{}", step_, total_steps_, mean_loss,
                 lr, grad_norm, tokens_per_s, objective_text);
  loop.window_t = now, window_tokens_ = 0, window_loss_ = 0, window_steps_ = 0;
  std::fill(window_metrics_.begin(), window_metrics_.end(), 0.0);
}

// A checkpoint when Ctrl-C asked for one (then training stops: true), every
// save_steps, and at the last step.
bool Trainer::save_when_due(Loop& loop, bool interrupted) {
  const bool last = step_ == total_steps_;
  const std::string dir = (fs::path(o_.output_dir) / fmt::format("checkpoint-{}", step_)).string();
  if (interrupted || (world_size_ == 1 && g_interrupt)) {
    loop.bar->finish();
    save_checkpoint(step_, "interrupted");
    loop.result.interrupted = true;
    loop.result.last_checkpoint = dir;
    return true;
  }
  if ((o_.save_steps > 0 && step_ % o_.save_steps == 0) || last) {
    loop.bar->finish();
    save_checkpoint(step_, last ? "final" : "periodic");
    loop.result.last_checkpoint = dir;
  }
  return false;
}

TrainResult Trainer::finish(Loop& loop) {
  loop.bar->finish();
  model_.set_training(false);
  TrainResult& result = loop.result;
  result.steps = step_;
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - loop.t0).count();
  result.tokens_per_s = result.seconds > 0 ? double(result.train_tokens) / result.seconds : 0.0;
  result.best_eval_loss = best_eval_;
  result.skipped_nonfinite = nan_total_;
  return std::move(result);
}

}  // namespace mftk::core
