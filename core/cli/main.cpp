// mftk: the command-line entry point. Sets up the process (allocator,
// threads, logging), hands the arguments to the subcommands, and turns any
// error into one clear message and an exit code:
//   0 success, 1 runtime failure, 2 usage or recipe error.
#include <cstdio>
#include <cstdlib>
#include <new>
#include <string>
#include <thread>

#include <unistd.h>

#include <ATen/Parallel.h>
#include <CLI/CLI.hpp>
#include <c10/util/Exception.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "cli/commands.h"
#include "defaults.h"
#include "mftk/abi.h"
#include "mftk/error.h"
#include "stage.h"

// jemalloc, linked into this executable, reads this at start-up. Retaining
// freed pages matters on these machines: a fresh page costs ~12 us to
// fault in, and a training step frees and reallocates hundreds of MB.
extern "C" const char* malloc_conf = "retain:true,dirty_decay_ms:-1,muzzy_decay_ms:-1";

namespace {

// libtorch defaults to one thread here; use every core unless told otherwise.
void set_default_threads() {
  int n = 0;
  if (const char* env = std::getenv("MFTK_THREADS")) n = std::atoi(env);
  else if (const char* omp = std::getenv("OMP_NUM_THREADS")) n = std::atoi(omp);
  if (n <= 0) n = int(std::max(1u, std::thread::hardware_concurrency()));
  at::set_num_threads(n);
}

// libgomp's default wait policy spins: when another process takes one of
// the cores, every parallel region waits out that process's time slice, and
// the quickstart measured 125 tokens/s on 2 threads against 1543 on 1 (a
// niced fuzzer on the other core). Passive waiting measured 6x better there
// and 6% better on a quiet machine (2244 vs 2108 tokens/s). libgomp reads
// the variable when it is loaded, before main, so the process re-executes
// itself once with it set; a value the user set is left alone.
void ensure_passive_omp_wait(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr) return;
  if (setenv("OMP_WAIT_POLICY", "PASSIVE", 1) != 0) return;
  execv("/proc/self/exe", argv);  // returns only on failure: go on as we are
}

// The log files a command opened (`mftk run` adds output_dir/mftk.log to
// the default logger); everything the logger has but the console.
void log_to_files(const spdlog::sink_ptr& console, const std::string& text) {
  std::vector<spdlog::sink_ptr> files;
  for (const auto& sink : spdlog::default_logger()->sinks())
    if (sink != console) files.push_back(sink);
  if (files.empty()) return;
  spdlog::logger file_log("mftk", files.begin(), files.end());
  file_log.error("{}", text);
  file_log.flush();
}

// A message of mftk's may quote a libtorch error, backtrace included; that
// part reaches the console only with --verbose.
void print_error(const mftk::Error& e, bool verbose, const spdlog::sink_ptr& console) {
  std::fprintf(stderr, "error: %s\n", verbose ? e.what() : mftk::core::without_backtrace(e.what()).c_str());
  if (!e.hint().empty()) std::fprintf(stderr, "hint: %s\n", e.hint().c_str());
  log_to_files(console, std::string(e.what()) + (e.hint().empty() ? "" : "\nhint: " + e.hint()));
}

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

// "mftk logprobs --model ckpt": the command that was running, with the
// folder or recipe it worked on.
std::string command_context(const CLI::App& app) {
  for (const CLI::App* sub : app.get_subcommands()) {
    std::string s = "running mftk " + sub->get_name();
    for (const char* name : {"recipe", "--model", "--adapter"})
      if (const CLI::Option* opt = sub->get_option_no_throw(name); opt && opt->count() > 0)
        s += std::string(name[0] == '-' ? " " + std::string(name) + " " : " ") + opt->results().front();
    return s;
  }
  return "running mftk";
}

// An exception mftk did not write (libtorch's c10::Error, a std::exception
// from a library) names no command, file or step; the message says what
// mftk was doing when it escaped, gives libtorch's first line only and ends
// with a hint. The full text (libtorch's C++ backtrace) goes to stderr with
// --verbose and to the command's log file always.
int report_library_error(const CLI::App& app, const std::string& first, const std::string& full, const char* hint,
                         bool verbose, const spdlog::sink_ptr& console) {
  std::string where = command_context(app);
  if (const std::string stages = mftk::core::failed_stages(); !stages.empty()) where += ", " + stages;
  std::fprintf(stderr, "error: while %s: %s\n", where.c_str(), first.c_str());
  std::fprintf(stderr, "hint: %s\n", hint);
  if (verbose && full != first) std::fprintf(stderr, "%s\n", full.c_str());
  log_to_files(console, fmt::format("while {}: {}\n{}", where, full, hint));
  return 1;
}

const char* library_error_hint(const std::string& message) {
  if (message.find("can't allocate memory") != std::string::npos ||
      message.find("not enough memory") != std::string::npos)
    return "libtorch could not get the memory this step needs; ask for less (a shorter --max-new-tokens, a "
           "smaller micro_batch_size or sequence_len, an NF4 base), and see `mftk plan` for what a run holds";
  if (message.find("for 'Half'") != std::string::npos || message.find("for 'BFloat16'") != std::string::npos)
    return "a half-precision tensor reached an operation libtorch's CPU kernels lack for it; convert the "
           "checkpoint to f32, or report this with the command line (mftk widens f16 and bf16 weights itself)";
  return "this error comes from libtorch, not from a check of mftk's: the input reached an operation it does not "
         "fit (a checkpoint whose tensors have unusual dtypes or shapes, for example); run again with --verbose for "
         "libtorch's backtrace, and report it if the input is valid";
}

}  // namespace

int main(int argc, char** argv) {
  ensure_passive_omp_wait(argv);
  auto console = spdlog::stderr_color_mt("mftk");
  const spdlog::sink_ptr console_sink = console->sinks().front();
  spdlog::set_default_logger(console);
  spdlog::set_pattern("[%H:%M:%S] %^%l%$ %v");
  set_default_threads();

  CLI::App app{"mftk: fine-tune Mistral-family models from a TOML recipe", "mftk"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("mftk ") + MFTK_SDK_VERSION);
  // Options of mftk itself (--verbose) are taken after the subcommand's as well.
  app.fallthrough();
  bool verbose = false;
  app.add_flag("-v,--verbose", verbose, "debug logging; libtorch's backtrace with its errors");
  app.parse_complete_callback([&] {
    if (verbose) spdlog::set_level(spdlog::level::debug);
  });
  mftk::cli::add_recipe_commands(app);
  mftk::cli::add_model_commands(app);
  mftk::cli::add_data_commands(app);
  mftk::cli::add_inspect_commands(app);
  mftk::cli::add_plan_commands(app);
  mftk::cli::add_launch_commands(app);
  mftk::cli::add_plugin_commands(app);
  mftk::cli::add_compare_commands(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? 0 : 2;
  } catch (const mftk::UsageError& e) {
    print_error(e, verbose, console_sink);
    return 2;
  } catch (const mftk::Error& e) {
    print_error(e, verbose, console_sink);
    return 1;
  } catch (const c10::Error& e) {
    const std::string message = e.what_without_backtrace();
    return report_library_error(app, first_line(message), e.what(), library_error_hint(message), verbose,
                                console_sink);
  } catch (const std::bad_alloc&) {
    return report_library_error(app, "out of memory", "out of memory (std::bad_alloc)",
                                fmt::format("lower micro_batch_size or sequence_len, quantize the base ([quantize] "
                                            "plugin = \"{}\"), or see `mftk plan` for what the run holds",
                                            mftk::core::kDefaultQuantizerPlugin)
                                    .c_str(),
                                verbose, console_sink);
  } catch (const std::exception& e) {
    const std::string message = e.what();
    return report_library_error(app, first_line(mftk::core::without_backtrace(message)), message,
                                "this error comes from a library mftk uses, not from a check of mftk's; run again "
                                "with --verbose, and report it if the input is valid",
                                verbose, console_sink);
  }
  return 0;
}
