// Mistral-style BPE training through the sentencepiece shim.
#include "tokenizer_train.h"

#include <filesystem>
#include <utility>
#include <vector>

#include "mftk/error.h"
#include "spm_loader.h"

namespace mftk::core {

namespace fs = std::filesystem;

void train_sentencepiece(const std::string& text_file, const std::string& model_out_path, int vocab_size,
                         bool mistral_v3_controls, bool tool_controls) {
  std::error_code ec;
  if (!fs::is_regular_file(text_file, ec)) {
    throw UsageError(fmt::format("tokenizer training text '{}' does not exist", text_file),
                     "pass a UTF-8 text file, one sentence per line");
  }
  if (text_file.find(',') != std::string::npos) {
    // sentencepiece splits its `input` option on commas.
    throw UsageError(fmt::format("tokenizer training text '{}': sentencepiece cannot read a path with a comma",
                                 text_file),
                     "rename the file or copy it to a path without commas");
  }
  if (tool_controls && !mistral_v3_controls) {
    throw UsageError("tokenizer training: the function-calling control pieces need the [INST] ones too",
                     "train a v3-style tokenizer (mistral_v3_controls) to add the tool pieces");
  }
  const int special_count = 3 + (mistral_v3_controls ? 2 : 0) + (tool_controls ? 5 : 0);
  const int byte_count = 256;
  if (vocab_size <= special_count + byte_count) {
    throw UsageError(fmt::format("tokenizer vocab_size {} is too small: {} special and {} byte pieces come first",
                                 vocab_size, special_count, byte_count),
                     fmt::format("use a vocab_size above {}", special_count + byte_count));
  }
  fs::path out_dir = fs::path(model_out_path).parent_path();
  if (!out_dir.empty() && !fs::is_directory(out_dir, ec)) {
    throw UsageError(fmt::format("cannot write tokenizer '{}': folder '{}' does not exist", model_out_path,
                                 out_dir.string()),
                     "create the folder first");
  }

  // Mistral's own TrainerSpec/NormalizerSpec values (read from tokenizer.model.v1).
  std::vector<std::pair<std::string, std::string>> options = {
      {"input", text_file},
      {"model_type", "bpe"},
      {"vocab_size", std::to_string(vocab_size)},
      {"unk_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"pad_id", "-1"},
      {"byte_fallback", "true"},
      {"split_digits", "true"},
      {"split_by_unicode_script", "true"},
      {"split_by_number", "true"},
      {"split_by_whitespace", "true"},
      {"allow_whitespace_only_pieces", "true"},
      {"max_sentencepiece_length", "16"},
      {"add_dummy_prefix", "true"},
      {"remove_extra_whitespaces", "false"},
      {"normalization_rule_name", "identity"},
      // Small corpora: keep every character; rare ones still fall back to bytes.
      {"character_coverage", "1.0"},
      {"num_threads", "2"},
      {"minloglevel", "1"},  // sentencepiece's INFO lines are hundreds per run
  };
  // Control symbols take the first free ids after unk/bos/eos, in order.
  if (tool_controls) {
    options.emplace_back("control_symbols",
                         "[INST],[/INST],[TOOL_CALLS],[AVAILABLE_TOOLS],[/AVAILABLE_TOOLS],[TOOL_RESULTS],[/TOOL_RESULTS]");
  } else if (mistral_v3_controls) {
    options.emplace_back("control_symbols", "[INST],[/INST]");
  }

  std::vector<const char*> keys, values;
  for (const auto& [key, value] : options) {
    keys.push_back(key.c_str());
    values.push_back(value.c_str());
  }
  const SpmShim& shim = spm_shim();
  char err[kSpmErrorCapacity] = {0};
  if (shim.train_to_file(keys.data(), values.data(), keys.size(), model_out_path.c_str(), err, sizeof err) != 0) {
    throw Error(fmt::format("training a tokenizer on '{}' into '{}': {}", text_file, model_out_path, err),
                "a smaller vocab_size or a larger text usually fixes 'Vocabulary size too high'");
  }
}

}  // namespace mftk::core
