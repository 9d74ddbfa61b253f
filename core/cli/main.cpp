// mftk: the command-line entry point. Sets up the process (allocator,
// threads, logging), hands the arguments to the subcommands, and turns any
// error into one clear message and an exit code:
//   0 success, 1 runtime failure, 2 usage or recipe error.
#include <cstdio>
#include <cstdlib>
#include <thread>

#include <unistd.h>

#include <ATen/Parallel.h>
#include <CLI/CLI.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "cli/commands.h"
#include "mftk/abi.h"
#include "mftk/error.h"

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

void print_error(const mftk::Error& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  if (!e.hint().empty()) std::fprintf(stderr, "hint: %s\n", e.hint().c_str());
}

}  // namespace

int main(int argc, char** argv) {
  ensure_passive_omp_wait(argv);
  auto console = spdlog::stderr_color_mt("mftk");
  spdlog::set_default_logger(console);
  spdlog::set_pattern("[%H:%M:%S] %^%l%$ %v");
  set_default_threads();

  CLI::App app{"mftk: fine-tune Mistral-family models from a TOML recipe", "mftk"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("mftk ") + MFTK_SDK_VERSION);
  bool verbose = false;
  app.add_flag("-v,--verbose", verbose, "debug logging");
  app.parse_complete_callback([&] {
    if (verbose) spdlog::set_level(spdlog::level::debug);
  });
  mftk::cli::add_recipe_commands(app);
  mftk::cli::add_model_commands(app);
  mftk::cli::add_data_commands(app);
  mftk::cli::add_inspect_commands(app);
  mftk::cli::add_plan_commands(app);
  mftk::cli::add_launch_commands(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? 0 : 2;
  } catch (const mftk::UsageError& e) {
    print_error(e);
    return 2;
  } catch (const mftk::Error& e) {
    print_error(e);
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
