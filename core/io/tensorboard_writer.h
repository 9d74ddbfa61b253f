// The run's metrics as a TensorBoard event file, so `tensorboard --logdir
// <output_dir>` shows the curves while the run goes on, with no TensorFlow or
// protobuf library in mftk: the TFRecord framing, CRC32C and the few Event
// fields needed are written by hand (field numbers from TensorBoard's
// tensorboard/compat/proto/event.proto and summary.proto).
//
// defines: mftk::core::TensorBoardWriter, mftk::core::crc32c, mftk::core::masked_crc32c
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace mftk::core {

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as TFRecord uses.
uint32_t crc32c(const void* data, size_t size);
// TFRecord stores CRCs masked (rotated right by 15, plus a constant), because
// a CRC of data that itself holds CRCs is weak.
uint32_t masked_crc32c(const void* data, size_t size);

// One events file, output_dir/tensorboard/events.out.tfevents.<unix time>.
// <hostname>.<pid>.<n> (the name TensorBoard's own writers give; n counts the
// writers of this process). Each record goes out in one write(2), so a reader
// following the file sees whole records as soon as they are logged.
class TensorBoardWriter {
 public:
  // Creates the folder when missing and a new file (O_EXCL: never one that
  // exists); `first_step` > 0 (a resumed run) adds a session-start event at it,
  // which tells TensorBoard to drop the earlier files' points from that step on.
  explicit TensorBoardWriter(const std::string& output_dir, int64_t first_step = 0);
  ~TensorBoardWriter();
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  // One metrics.jsonl record: every number but "step" becomes a scalar at its
  // "step", tagged as tag_for() says. Other values (strings, nulls) are skipped.
  void write_metrics(const nlohmann::json& record);
  // Scalars (tag, value) as one Event at `step`.
  void write_scalars(int64_t step, const std::vector<std::pair<std::string, float>>& values);

  // metrics.jsonl key -> TensorBoard tag, named as transformers' TensorBoard
  // callback names Trainer/TRL logs (eval_loss -> eval/loss, lr ->
  // train/learning_rate, any other key k -> train/k), so curves from both line up.
  static std::string tag_for(const std::string& key);
  const std::string& path() const { return path_; }

 private:
  void write_event(const std::string& event);
  std::string path_;
  int fd_ = -1;
};

}  // namespace mftk::core
