// Errors that mftk did not write itself: a libtorch c10::Error reaching the
// CLI must come out as one "error: while <what mftk was doing>: <first line>"
// and a hint, with libtorch's C++ backtrace only under --verbose. The error
// is provoked for real: `mftk generate` on a model without a sliding window
// asks libtorch for a 2^20-token KV cache (8 GiB) in a process whose address
// space is limited to 4 GiB, and libtorch's allocator throws.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "init_checkpoint.h"
#include "stage.h"
#include "train_test_support.h"

namespace {

namespace fs = std::filesystem;
namespace tt = mftk::train_test;

const std::string kMftk = MFTK_BINARY_DIR "/bin/mftk";

struct Outcome {
  int code = -1;
  std::string err;
};

// `mftk args` under a 4 GiB address-space limit; stderr captured.
Outcome run_limited(const std::string& args, const std::string& err_file) {
  const std::string cmd = "ulimit -v 4194304; '" + kMftk + "' " + args + " >/dev/null 2>'" + err_file + "'";
  const int status = std::system(cmd.c_str());
  Outcome o;
  o.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream in(err_file);
  std::stringstream s;
  s << in.rdbuf();
  o.err = s.str();
  return o;
}

TEST(ErrorContext, ALibtorchErrorIsOneLineWithContextAndItsBacktraceOnlyWithVerbose) {
#if defined(__SANITIZE_ADDRESS__)
  // ASan reserves terabytes of shadow address space at start-up: an mftk
  // built with it (scripts/sanitize.sh) cannot start under the limit.
  GTEST_SKIP() << "an address-space limit and AddressSanitizer do not mix";
#endif
  ASSERT_TRUE(fs::exists(kMftk)) << kMftk << " is not built";
  tt::ScratchDir dir("error_context");
  mftk::core::InitOptions o;
  o.preset = "tiny";
  o.overrides = {{"num_hidden_layers", 1},   {"hidden_size", 256},       {"intermediate_size", 256},
                 {"num_attention_heads", 16}, {"num_key_value_heads", 16}, {"head_dim", 128}};
  o.sliding_window_null = true;  // the KV cache is as long as the request
  o.dtype = "f32";
  o.out = dir.sub("model");
  o.corpus = MFTK_SOURCE_DIR "/data/tokenizer/corpus.txt";
  o.tokenizer_vocab = 512;
  {
    tt::QuietLog quiet;
    mftk::core::write_random_checkpoint(o);
  }
  // 16 kv heads x 128 x 2^20 positions x 4 bytes = 8 GiB for one layer's keys.
  const std::string args = "generate --model '" + o.out + "' --prompt hello --max-new-tokens 1048576";

  const Outcome plain = run_limited(args, dir.sub("plain.txt"));
  EXPECT_EQ(plain.code, 1) << plain.err;
  EXPECT_NE(plain.err.find("error: while running mftk generate --model " + o.out + ": "), std::string::npos)
      << plain.err;
  EXPECT_NE(plain.err.find("allocate"), std::string::npos) << "libtorch's own first line: " << plain.err;
  EXPECT_NE(plain.err.find("\nhint: libtorch could not get the memory"), std::string::npos) << plain.err;
  EXPECT_EQ(plain.err.find("frame #"), std::string::npos) << plain.err;
  EXPECT_EQ(plain.err.find("Exception raised from"), std::string::npos) << plain.err;

  const Outcome verbose = run_limited(args + " --verbose", dir.sub("verbose.txt"));
  EXPECT_EQ(verbose.code, 1) << verbose.err;
  EXPECT_NE(verbose.err.find("error: while running mftk generate"), std::string::npos) << verbose.err;
  EXPECT_NE(verbose.err.find("frame #"), std::string::npos) << "no backtrace with --verbose:\n" << verbose.err;
}

// The stages an exception unwinds through are named, outermost first; a
// stage left normally leaves nothing, and new work forgets a handled failure.
TEST(ErrorContext, StagesRecordWhatAnEscapingExceptionUnwoundThrough) {
  using mftk::core::Stage;
  using mftk::core::failed_stages;
  try {
    Stage outer("training");
    { Stage done("reading the data"); }
    Stage inner("step 3");
    throw std::runtime_error("boom");
  } catch (const std::runtime_error&) {
    EXPECT_EQ(failed_stages(), "training, step 3");
  }
  { Stage next("saving"); }
  EXPECT_EQ(failed_stages(), "");
}

// A message of mftk's that quotes a libtorch error (plugins and the data-
// parallel layer wrap them: "...: {}", e.what()) keeps libtorch's words and
// loses its backtrace, which only --verbose shows.
TEST(ErrorContext, AQuotedLibtorchErrorKeepsItsWordsAndLosesItsBacktrace) {
  std::string quoted, words;
  try {
    at::mm(at::ones({2, 3}), at::ones({2, 3}));
  } catch (const c10::Error& e) {
    quoted = fmt::format("rank 1 of 2: the gradient all-reduce failed: {}", e.what());
    words = e.what_without_backtrace();
  }
  ASSERT_FALSE(words.empty()) << "libtorch multiplied a 2x3 by a 2x3 matrix";
  ASSERT_NE(quoted.find("frame #"), std::string::npos) << "libtorch gave no backtrace to remove:\n" << quoted;
  EXPECT_EQ(mftk::core::without_backtrace(quoted), "rank 1 of 2: the gradient all-reduce failed: " + words);
  EXPECT_EQ(mftk::core::without_backtrace("two\nlines\n"), "two\nlines");  // mftk's own lines stay
}

}  // namespace
