// Instruction data: JSONL files -> tokenized examples (ids + loss mask),
// the eval split, and a cache of the result.
//
// defines: mftk::core::DatasetType, mftk::core::DatasetSpec, mftk::core::DataOptions,
//          mftk::core::CacheMode, mftk::core::DatasetFileStats, mftk::core::DataStats,
//          mftk::core::PreparedData, mftk::core::data_options_from_recipe,
//          mftk::core::load_dataset, mftk::core::split_eval, mftk::core::prepare_data,
//          mftk::core::prepared_cache_key, mftk::core::describe_data
//
// Row formats (one JSON object per line; [[datasets]] keys rename fields):
//   instruction {"instruction", "input"?, "output", "system"?}
//       -> [system?], user = instruction (+ "\n\n" + input), assistant = output
//   chat        {"messages": [{"role", "content"}, ...]}
//   completion  {"text"} -> BOS + encode(text) + EOS, loss on every token
//   preference  {"prompt", "chosen", "rejected", "system"?} (TRL's rows): prompt a
//               string (one user turn) or a list of messages, each side a string or
//               a list holding the assistant turn -> two examples, chosen then
//               rejected, each the chat encoding of [system?, prompt turns...,
//               assistant: side] with the loss on that side's reply and its </s>
//               (earlier assistant turns of a multi-turn prompt are context).
//               Pairs stay adjacent (train[2k], train[2k+1]) through the eval split
//               and the cache; a recipe cannot mix them with other types.
// Instruction and chat rows go through encode_chat (chat_template.h), so the
// loss mask covers assistant replies (all tokens with train_on_inputs).
//
// Bad rows (malformed JSON, missing or non-string field, empty response,
// invalid UTF-8, unknown role, ...) are a UsageError "file:line: problem",
// or, with [data] skip_bad_rows, skipped and counted per reason in
// DataStats. An empty file is always an error.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "chat_template.h"
#include "mftk/batch.h"

namespace mftk {
class Tokenizer;
}

namespace mftk::core {

class Recipe;

enum class DatasetType { instruction, chat, completion, preference };
const char* to_string(DatasetType type);

// One [[datasets]] table.
struct DatasetSpec {
  std::string path;  // as the program opens it
  DatasetType type = DatasetType::chat;
  bool eval_split = false;  // split = "eval"
  std::string field_messages = "messages";  // chat
  std::string field_text = "text";          // completion
  std::string field_instruction = "instruction";
  std::string field_input = "input";
  std::string field_output = "output";
  std::string field_system = "system";
  std::string table = "datasets";  // "datasets[0]", for messages
};

// Everything from the recipe that decides the prepared data.
struct DataOptions {
  std::vector<DatasetSpec> datasets;
  bool train_on_inputs = false;
  bool skip_bad_rows = false;
  std::string chat_template = "auto";  // auto | mistral_v1 | mistral_v3
  double val_set_size = 0.0;           // used only when no dataset has split = "eval"
  uint64_t seed = 42;
  std::string prepared_path = "prepared";
};

// [[datasets]], [data] and [training] seed of a loaded recipe.
DataOptions data_options_from_recipe(const Recipe& recipe);

struct DatasetFileStats {
  std::string path;
  std::string type;   // "instruction" | "chat" | "completion"
  std::string split;  // "train" | "eval"
  int64_t rows = 0;         // non-blank lines
  int64_t blank_lines = 0;  // ignored
  int64_t examples = 0;
  int64_t tokens = 0;
  int64_t trainable_tokens = 0;  // loss_mask == 1
  std::map<std::string, int64_t> skipped;  // reason -> rows (skip_bad_rows)
  int64_t skipped_total() const;
};

struct DataStats {
  std::vector<DatasetFileStats> files;
  std::string chat_format;  // "v1" | "v3" | "" when no dataset needs one
  std::string eval_source;  // how the eval set was chosen, in words
  int64_t train_examples = 0;
  int64_t eval_examples = 0;
  int64_t skipped_total() const;
};

struct PreparedData {
  std::vector<Example> train;
  std::vector<Example> eval;
  DataStats stats;
  std::string cache_key;   // SHA-256 hex of everything that decides the result
  std::string cache_file;  // <prepared>/<key>/examples.bin; empty with CacheMode::off
  bool from_cache = false; // true when read back instead of tokenized
};

enum class CacheMode {
  read_write,  // reuse a cache whose key matches, else build and write it
  rebuild,     // always build, then overwrite the cache
  off,         // build, touch nothing on disk
};

// Reads one JSONL file into examples. format is used by instruction and chat
// rows only. Throws UsageError "path:line: problem" for a bad row unless
// skip_bad_rows, which counts it in stats.skipped instead.
std::vector<Example> load_dataset(const DatasetSpec& spec, const Tokenizer& tokenizer, ChatFormat format,
                                  bool train_on_inputs, bool skip_bad_rows, DatasetFileStats& stats);

// Indices (ascending) of the n_eval items held out of n, chosen by a
// seeded Fisher-Yates shuffle on SplitMix64 (batching.h): the same on every platform.
std::vector<size_t> split_eval(size_t n, size_t n_eval, uint64_t seed);

// The chat format the options ask for, checked against the tokenizer
// (warns when a forced format does not match it; mistral_v3 on a tokenizer
// without [INST] control pieces is a UsageError).
ChatFormat resolve_chat_format(const std::string& chat_template, const Tokenizer& tokenizer);

// SHA-256 over the format version, the tokenizer fingerprint, every data
// file's bytes and the options that change the result.
std::string prepared_cache_key(const DataOptions& options, const Tokenizer& tokenizer);

// Loads every dataset, splits off the eval set and (per mode) reads or
// writes the cache under options.prepared_path.
PreparedData prepare_data(const DataOptions& options, const Tokenizer& tokenizer,
                          CacheMode mode = CacheMode::read_write);
PreparedData prepare_data(const Recipe& recipe, const Tokenizer& tokenizer,
                          CacheMode mode = CacheMode::read_write);

// Whether the options' datasets are preference pairs (all of them; a mix
// with other types is a UsageError).
bool is_preference_data(const DataOptions& options);

// Human-readable summary, one line per entry (for `mftk preprocess` and the run log).
std::vector<std::string> describe_data(const PreparedData& data);

// Version of the prepared-data format and of the tokenization rules; part of the cache key.
// 2: chat rows with tools, tool calls and tool results are encoded (they were refused, so a
// cache made with skip_bad_rows lacks them).
inline constexpr uint32_t kPreparedDataVersion = 2;

}  // namespace mftk::core
