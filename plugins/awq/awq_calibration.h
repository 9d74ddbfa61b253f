// What AWQ needs from a calibration run: the inputs each linear sees.
//
//   calibration_rows_from_file  a JSONL / plain text file -> rows of token ids
//   calibration_rows_from_documents  documents' token ids -> rows of row_len tokens
//   ActivationRecord            mean |x| per input channel over every token, and a
//                               strided sample of input rows for the searches
//   RecordingLinear             a LinearOp that records its input, then calls the op it wraps
//   SlotRecorders               wraps named slots of a model for as long as it lives
//   run_calibration             one forward pass per row, no gradients
//
// defines: mftk::awq::calibration_rows_from_documents, mftk::awq::calibration_rows_from_file, mftk::awq::ActivationRecord,
//          mftk::awq::RecordingLinear, mftk::awq::SlotRecorders, mftk::awq::run_calibration
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "mftk/linear_slot.h"

namespace mftk {
class Model;
class Tokenizer;
}  // namespace mftk

namespace mftk::awq {

// Documents (token ids) concatenated and cut into up to `max_rows` rows of
// `row_len` tokens, as AutoAWQ cuts its calibration set; everything as one
// shorter row when there is not one full row. Empty when there are no tokens.
std::vector<std::vector<int32_t>> calibration_rows_from_documents(const std::vector<std::vector<int32_t>>& documents,
                                                                  int64_t max_rows, int64_t row_len);

// Each line of `path`: a JSON object ("text", else the "content" of every
// "messages" entry, else every string value, joined by newlines) or plain
// text; each encoded (BOS first when the tokenizer adds one), then cut as
// calibration_rows_from_documents. No tokens at all is a UsageError naming the file.
std::vector<std::vector<int32_t>> calibration_rows_from_file(const std::string& path, const Tokenizer& tokenizer,
                                                             int64_t max_rows, int64_t row_len);

class ActivationRecord {
 public:
  // Keeps every `stride`-th token, at most `max_sample` of them.
  ActivationRecord(int64_t in_features, int64_t stride, int64_t max_sample);
  void add(const at::Tensor& x);  // [..., in_features], any float dtype
  at::Tensor abs_mean() const;    // fp32 [in]
  at::Tensor sample() const;      // fp32 [n, in]
  int64_t tokens() const { return tokens_; }

 private:
  int64_t in_features_, stride_, max_sample_;
  int64_t tokens_ = 0, kept_ = 0;
  at::Tensor abs_sum_;  // fp64: millions of tokens summed without drift
  std::vector<at::Tensor> sample_;
};

class RecordingLinear final : public LinearOp {
 public:
  RecordingLinear(std::shared_ptr<LinearOp> inner, std::shared_ptr<ActivationRecord> record)
      : inner_(std::move(inner)), record_(std::move(record)) {}
  at::Tensor forward(const at::Tensor& x) override;
  at::Tensor dense_weight(at::ScalarType dtype) const override { return inner_->dense_weight(dtype); }
  NamedTensors parameters() override { return inner_->parameters(); }
  int64_t storage_bytes() const override { return inner_->storage_bytes(); }
  std::string describe() const override { return "recording over " + inner_->describe(); }
  const std::shared_ptr<LinearOp>& inner() const { return inner_; }

 private:
  std::shared_ptr<LinearOp> inner_;
  std::shared_ptr<ActivationRecord> record_;
};

// Wraps the slots named in `names` (missing names are an Error) with a
// RecordingLinear; the destructor puts the original ops back, so the model
// is unchanged whatever happens in between.
class SlotRecorders {
 public:
  SlotRecorders(Model& model, const std::vector<std::string>& names, int64_t stride, int64_t max_sample);
  ~SlotRecorders();
  SlotRecorders(const SlotRecorders&) = delete;
  SlotRecorders& operator=(const SlotRecorders&) = delete;
  const std::map<std::string, std::shared_ptr<ActivationRecord>>& records() const { return records_; }

 private:
  std::vector<std::pair<LinearSlot*, std::shared_ptr<LinearOp>>> originals_;
  std::map<std::string, std::shared_ptr<ActivationRecord>> records_;
};

// Each row as its own one-document batch (no padding to skew the means).
void run_calibration(Model& model, const std::vector<std::vector<int32_t>>& rows);

}  // namespace mftk::awq
