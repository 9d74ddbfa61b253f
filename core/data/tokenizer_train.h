// Trains a small sentencepiece BPE tokenizer with Mistral's conventions, for
// `mftk init` (random tiny checkpoints) and tests.
//
// defines: mftk::core::train_sentencepiece
#pragma once

#include <string>

namespace mftk::core {

// Trains on text_file (one sentence per line) and writes exactly
// model_out_path (no .vocab file). The model follows docs/formats.md §3.1 (sentencepiece model): BPE,
// <unk> 0, <s> 1, </s> 2, no pad, byte fallback, split digits, dummy prefix,
// whitespace kept as is, identity normalizer. With mistral_v3_controls, ids 3
// and 4 are the CONTROL pieces [INST] and [/INST], so the v3 chat format
// applies; with tool_controls as well, ids 5-9 are [TOOL_CALLS],
// [AVAILABLE_TOOLS], [/AVAILABLE_TOOLS], [TOOL_RESULTS] and [/TOOL_RESULTS],
// where Mistral's v0.3 tokenizer has them, so tools can be encoded. vocab_size counts everything, including the 256 byte pieces;
// sentencepiece refuses a size the text cannot fill and says the maximum.
// Training runs inside the sentencepiece shim (its own link namespace).
void train_sentencepiece(const std::string& text_file, const std::string& model_out_path, int vocab_size,
                         bool mistral_v3_controls, bool tool_controls = false);

}  // namespace mftk::core
