// Fuzz target: a JSONL data file through load_dataset (line splitting, BOM,
// UTF-8, the row schema of each dataset type) and the Mistral chat template,
// tokenized by the real sentencepiece tokenizer of a checkpoint that
// `mftk init` wrote (MFTK_FUZZ_TOKENIZER; scripts/fuzz.sh sets it).
//
// The first input byte picks the options: bits 0-1 the dataset type
// (instruction, chat, completion), bit 2 the v1 format instead of the
// tokenizer's own, bit 3 train_on_inputs, bit 4 skip_bad_rows. The rest is
// the file, written to a memfd so load_dataset reads it like any file.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "chat_template.h"
#include "dataset.h"
#include "fuzz_support.h"
#include "mftk/tokenizer.h"

namespace {

std::shared_ptr<mftk::Tokenizer> g_tokenizer;
int g_fd = -1;
std::string g_path;

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* tokenizer = std::getenv("MFTK_FUZZ_TOKENIZER");
  if (!tokenizer) {
    std::fprintf(stderr, "fuzz_jsonl_chat: set MFTK_FUZZ_TOKENIZER to a checkpoint folder with tokenizer.model "
                         "(scripts/fuzz.sh does)\n");
    std::exit(2);
  }
  g_tokenizer = mftk::Tokenizer::load(tokenizer);
  g_fd = memfd_create("fuzz.jsonl", 0);
  if (g_fd < 0) {
    std::perror("memfd_create");
    std::exit(2);
  }
  g_path = "/proc/self/fd/" + std::to_string(g_fd);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t flags = data[0];
  if (ftruncate(g_fd, 0) != 0 ||
      pwrite(g_fd, data + 1, size - 1, 0) != static_cast<ssize_t>(size - 1)) {
    std::perror("fuzz_jsonl_chat: writing the memfd");
    std::abort();
  }
  mftk::core::DatasetSpec spec;
  spec.path = g_path;
  spec.type = static_cast<mftk::core::DatasetType>((flags & 3) % 3);
  const auto format = (flags & 4) ? mftk::core::ChatFormat::v1 : mftk::core::detect_chat_format(*g_tokenizer);
  const bool train_on_inputs = flags & 8;
  const bool skip_bad_rows = flags & 16;
  mftk::fuzz::run_parser([&] {
    mftk::core::DatasetFileStats stats;
    const auto examples =
        mftk::core::load_dataset(spec, *g_tokenizer, format, train_on_inputs, skip_bad_rows, stats);
    // What the packer relies on: one mask entry per id, ids in the
    // vocabulary, something to train on in every example.
    const int32_t vocab = g_tokenizer->vocab_size();
    for (const auto& e : examples) {
      if (e.ids.size() != e.loss_mask.size() || e.ids.empty()) __builtin_trap();
      bool trainable = false;
      for (size_t i = 0; i < e.ids.size(); ++i) {
        if (e.ids[i] < 0 || e.ids[i] >= vocab) __builtin_trap();
        trainable = trainable || e.loss_mask[i] == 1;
      }
      if (!trainable) __builtin_trap();
    }
    if (stats.examples != static_cast<int64_t>(examples.size())) __builtin_trap();
  });
  return 0;
}
