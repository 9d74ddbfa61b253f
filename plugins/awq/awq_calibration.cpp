// Calibration activations for AWQ (see awq_calibration.h).
#include "awq_calibration.h"

#include <fstream>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "mftk/error.h"
#include "mftk/model.h"
#include "mftk/tokenizer.h"

namespace mftk::awq {

namespace {

std::string document_text(const std::string& line) {
  if (line.empty() || line.front() != '{') return line;
  const auto j = nlohmann::json::parse(line, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return line;
  if (j.contains("text") && j["text"].is_string()) return j["text"].get<std::string>();
  std::string text;
  auto append = [&](const std::string& s) { text += (text.empty() ? "" : "\n") + s; };
  if (j.contains("messages") && j["messages"].is_array()) {
    for (const auto& m : j["messages"])
      if (m.is_object() && m.contains("content") && m["content"].is_string()) append(m["content"].get<std::string>());
    return text;
  }
  for (const auto& [key, value] : j.items())
    if (value.is_string()) append(value.get<std::string>());
  return text;
}

}  // namespace

std::vector<std::vector<int32_t>> calibration_rows_from_documents(const std::vector<std::vector<int32_t>>& documents,
                                                                  int64_t max_rows, int64_t row_len) {
  std::vector<int32_t> stream;
  const size_t wanted = size_t(max_rows * row_len);
  for (const auto& doc : documents) {
    if (stream.size() >= wanted) break;
    stream.insert(stream.end(), doc.begin(), doc.end());
  }
  std::vector<std::vector<int32_t>> rows;
  for (size_t begin = 0; begin + size_t(row_len) <= stream.size() && int64_t(rows.size()) < max_rows;
       begin += size_t(row_len))
    rows.emplace_back(stream.begin() + long(begin), stream.begin() + long(begin + size_t(row_len)));
  if (rows.empty() && !stream.empty()) rows.push_back(std::move(stream));
  return rows;
}

std::vector<std::vector<int32_t>> calibration_rows_from_file(const std::string& path, const Tokenizer& tokenizer,
                                                             int64_t max_rows, int64_t row_len) {
  std::ifstream in(path);
  if (!in)
    throw UsageError(fmt::format("awq: calibration_file {} cannot be read", path),
                     "--set calibration_file=FILE with one JSON object ({\"text\": ...}) or line of text per row");
  std::vector<std::vector<int32_t>> documents;
  std::string line;
  int64_t tokens = 0;
  while (std::getline(in, line) && tokens < max_rows * row_len) {
    const std::string text = document_text(line);
    if (text.empty()) continue;
    std::vector<int32_t> doc;
    if (tokenizer.add_bos()) doc.push_back(tokenizer.bos_id());
    const auto ids = tokenizer.encode(text);
    doc.insert(doc.end(), ids.begin(), ids.end());
    tokens += int64_t(doc.size());
    documents.push_back(std::move(doc));
  }
  auto rows = calibration_rows_from_documents(documents, max_rows, row_len);
  if (rows.empty())
    throw UsageError(fmt::format("awq: calibration_file {} holds no text", path),
                     "AWQ measures activations on real text: give it a few hundred lines of the data you fine-tuned on");
  return rows;
}

ActivationRecord::ActivationRecord(int64_t in_features, int64_t stride, int64_t max_sample)
    : in_features_(in_features), stride_(std::max<int64_t>(stride, 1)), max_sample_(max_sample) {
  abs_sum_ = at::zeros({in_features}, at::kDouble);
}

void ActivationRecord::add(const at::Tensor& x) {
  const at::Tensor flat = x.detach().reshape({-1, in_features_}).to(at::kFloat);
  abs_sum_ += flat.abs().sum(0).to(at::kDouble);
  // Tokens whose running index is a multiple of the stride, until the sample is full.
  const int64_t n = flat.size(0);
  const int64_t first = (stride_ - tokens_ % stride_) % stride_;
  if (kept_ < max_sample_ && first < n) {
    at::Tensor picked = flat.index_select(0, at::arange(first, n, stride_, at::kLong));
    picked = picked.narrow(0, 0, std::min(picked.size(0), max_sample_ - kept_)).clone();
    kept_ += picked.size(0);
    sample_.push_back(std::move(picked));
  }
  tokens_ += n;
}

at::Tensor ActivationRecord::abs_mean() const {
  return (abs_sum_ / double(std::max<int64_t>(tokens_, 1))).to(at::kFloat);
}

at::Tensor ActivationRecord::sample() const {
  if (sample_.empty()) return at::zeros({0, in_features_}, at::kFloat);
  return at::cat(sample_, 0);
}

at::Tensor RecordingLinear::forward(const at::Tensor& x) {
  record_->add(x);
  return inner_->forward(x);
}

SlotRecorders::SlotRecorders(Model& model, const std::vector<std::string>& names, int64_t stride,
                             int64_t max_sample) {
  std::map<std::string, LinearSlot*> by_name;
  for (LinearSlot* slot : model.linear_slots()) by_name[slot->name] = slot;
  for (const auto& name : names) {
    auto it = by_name.find(name);
    MFTK_CHECK(it != by_name.end(), "awq: the model has no linear slot '{}' to record", name);
    LinearSlot* slot = it->second;
    auto record = std::make_shared<ActivationRecord>(slot->in_features, stride, max_sample);
    originals_.emplace_back(slot, slot->op);
    slot->op = std::make_shared<RecordingLinear>(slot->op, record);
    records_[name] = record;
  }
}

SlotRecorders::~SlotRecorders() {
  for (auto& [slot, op] : originals_) slot->op = op;
}

void run_calibration(Model& model, const std::vector<std::vector<int32_t>>& rows) {
  at::NoGradGuard no_grad;
  for (const auto& row : rows) {
    const int64_t n = int64_t(row.size());
    if (n == 0) continue;
    Batch batch;
    batch.input_ids = at::tensor(std::vector<int64_t>(row.begin(), row.end()), at::kLong).reshape({1, n});
    batch.targets = at::full({1, n}, int64_t(kIgnoreIndex), at::kLong);
    batch.position_ids = at::arange(n, at::kLong).reshape({1, n});
    batch.doc_ids = at::zeros({1, n}, at::kInt);
    model.forward(batch);
  }
}

}  // namespace mftk::awq
