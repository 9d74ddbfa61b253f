// mftk launch: data-parallel training on one machine. Starts --nproc
// `mftk run` processes with torchrun's environment (RANK, WORLD_SIZE,
// LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and supervises them: when one rank
// fails or is killed, the others are stopped (SIGTERM, then SIGKILL) and
// launch exits non-zero naming the rank and how it ended. Several machines:
// run `mftk run` on each with those variables set (README, "Distributed").
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "cli/commands.h"
#include "mftk/error.h"

extern char** environ;

namespace mftk::cli {

namespace {

struct LaunchArgs {
  RecipeArgs recipe;
  int nproc = 0;
  int master_port = 0;  // 0: a free one
  std::string output_dir;
};

// A TCP port nobody listens on right now (the kernel's pick for port 0).
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw Error(fmt::format("cannot open a socket to find a free port: {}", std::strerror(errno)));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof addr;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    ::close(fd);
    throw Error(fmt::format("cannot bind a socket to find a free port: {}", std::strerror(errno)),
                "pass --master-port");
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

// How a child ended, in words: "exited with code 1", "was killed by signal 9 (Killed)".
std::string describe_status(int status) {
  if (WIFEXITED(status)) return fmt::format("exited with code {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return fmt::format("was killed by signal {} ({})", WTERMSIG(status), ::strsignal(WTERMSIG(status)));
  return fmt::format("ended with wait status {}", status);
}

// 130 is a rank that was interrupted and wrote its checkpoint: not a failure.
bool failed(int status) {
  return !(WIFEXITED(status) && (WEXITSTATUS(status) == 0 || WEXITSTATUS(status) == 130));
}

std::atomic<int> g_forward_signal{0};
extern "C" void remember_signal(int sig) { g_forward_signal = sig; }

// One rank's process: argv and envp are built before fork, because after
// fork in a threaded program only async-signal-safe calls are allowed.
struct Rank {
  int rank = 0;
  pid_t pid = -1;
  std::vector<std::string> env;
  std::optional<int> status;
};

// Ranks share the cores: cores / N threads each, unless the user chose.
std::string threads_per_rank(int nproc) {
  const char* user_threads = std::getenv("MFTK_THREADS");
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  return user_threads && *user_threads ? user_threads : std::to_string(std::max(1u, cores / unsigned(nproc)));
}

// `self run RECIPE [--set K=V ...] [--output-dir DIR]`: what every rank runs.
std::vector<std::string> rank_command(const LaunchArgs& a, const std::string& self) {
  std::vector<std::string> args = {self, "run", a.recipe.path};
  for (const auto& o : a.recipe.overrides) args.insert(args.end(), {"--set", o});
  if (!a.output_dir.empty()) args.insert(args.end(), {"--output-dir", a.output_dir});
  return args;
}

// Each rank's environment: launch's own, with torchrun's variables (and the
// thread counts) set for that rank in place of any inherited ones.
std::vector<Rank> make_ranks(int nproc, int port, const std::string& threads) {
  const std::map<std::string, std::string> common = {
      {"WORLD_SIZE", std::to_string(nproc)}, {"LOCAL_WORLD_SIZE", std::to_string(nproc)},
      {"MASTER_ADDR", "127.0.0.1"},         {"MASTER_PORT", std::to_string(port)},
      {"MFTK_THREADS", threads},            {"OMP_NUM_THREADS", threads}};
  std::vector<Rank> ranks(static_cast<size_t>(nproc));
  for (int r = 0; r < nproc; ++r) {
    auto vars = common;
    vars["RANK"] = vars["LOCAL_RANK"] = std::to_string(r);
    auto& env = ranks[size_t(r)].env;
    for (char** e = environ; *e; ++e) {
      const std::string kv = *e;
      if (!vars.count(kv.substr(0, kv.find('=')))) env.push_back(kv);
    }
    for (const auto& [k, v] : vars) env.push_back(k + "=" + v);
    ranks[size_t(r)].rank = r;
  }
  return ranks;
}

// Forks and execs every rank; argv and envp point into `args` and each
// rank's env, built before fork.
void start_ranks(std::vector<Rank>& ranks, std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (auto& s : args) argv.push_back(s.data());
  argv.push_back(nullptr);
  for (auto& rk : ranks) {
    std::vector<char*> envp;
    for (auto& s : rk.env) envp.push_back(s.data());
    envp.push_back(nullptr);
    const pid_t parent = ::getpid();
    rk.pid = ::fork();
    if (rk.pid < 0) throw Error(fmt::format("cannot start rank {}: fork failed: {}", rk.rank, std::strerror(errno)));
    if (rk.pid == 0) {
      // The ranks must not outlive launch, even when launch is SIGKILLed.
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (::getppid() != parent) _exit(1);
      ::signal(SIGINT, SIG_DFL);
      ::signal(SIGTERM, SIG_DFL);
      ::execve(argv[0], argv.data(), envp.data());
      _exit(127);
    }
  }
}

// Waits for every rank, passing on a signal launch received. The first rank
// to fail gets the others stopped: SIGTERM now, SIGKILL 10 s later. Returns
// that rank's index, if any failed.
std::optional<size_t> supervise(std::vector<Rank>& ranks) {
  std::optional<size_t> first_failure;
  std::optional<std::chrono::steady_clock::time_point> kill_at;  // SIGKILL whoever is left then
  auto alive = [&] {
    return std::count_if(ranks.begin(), ranks.end(), [](const Rank& r) { return !r.status; });
  };
  while (alive() > 0) {
    if (const int sig = g_forward_signal.exchange(0)) {
      for (auto& rk : ranks)
        if (!rk.status) ::kill(rk.pid, sig);
    }
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid > 0) {
      auto it = std::find_if(ranks.begin(), ranks.end(), [&](const Rank& r) { return r.pid == pid; });
      if (it == ranks.end()) continue;
      it->status = status;
      if (failed(status) && !first_failure) {
        first_failure = size_t(it - ranks.begin());
        if (alive() > 0) {
          spdlog::error("launch: rank {} {}; stopping the other ranks", it->rank, describe_status(status));
          for (auto& rk : ranks)
            if (!rk.status) ::kill(rk.pid, SIGTERM);
          kill_at = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        }
      }
      continue;
    }
    if (kill_at && std::chrono::steady_clock::now() > *kill_at) {
      for (auto& rk : ranks)
        if (!rk.status) ::kill(rk.pid, SIGKILL);
      kill_at.reset();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return first_failure;
}

// launch's exit code once every rank has ended: an Error naming the first
// failed rank and how the others ended; 130 when a rank was interrupted
// (and checkpointed); else 0.
int launch_outcome(const std::vector<Rank>& ranks, std::optional<size_t> first_failure) {
  if (first_failure) {
    const Rank& f = ranks[*first_failure];
    std::vector<std::string> others;
    for (const auto& rk : ranks)
      if (rk.rank != f.rank) others.push_back(fmt::format("rank {} {}", rk.rank, describe_status(*rk.status)));
    throw Error(fmt::format("launch: rank {} {} (first to fail); {}", f.rank, describe_status(*f.status),
                            fmt::join(others, ", ")),
                "the failed rank's own error is printed above, prefixed [rank " + std::to_string(f.rank) + "]");
  }
  for (const auto& rk : ranks)
    if (WEXITSTATUS(*rk.status) == 130) return 130;
  return 0;
}

int launch(const LaunchArgs& a) {
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  const int port = a.master_port > 0 ? a.master_port : free_port();
  const std::string threads = threads_per_rank(a.nproc);
  std::vector<std::string> args = rank_command(a, self);
  std::vector<Rank> ranks = make_ranks(a.nproc, port, threads);
  spdlog::info("launch: {} ranks of `mftk run {}`, rendezvous 127.0.0.1:{}, {} thread(s) each", a.nproc,
               a.recipe.path, port, threads);

  // Ctrl-C reaches the children from the terminal; a signal sent to launch
  // alone (kill, a scheduler) is passed on so they can checkpoint and stop.
  struct sigaction sa {};
  sa.sa_handler = remember_signal;
  sigemptyset(&sa.sa_mask);
  struct sigaction old_int {}, old_term {};
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);
  start_ranks(ranks, args);
  const std::optional<size_t> first_failure = supervise(ranks);
  sigaction(SIGINT, &old_int, nullptr);
  sigaction(SIGTERM, &old_term, nullptr);
  return launch_outcome(ranks, first_failure);
}

}  // namespace

void add_launch_commands(CLI::App& app) {
  auto a = std::make_shared<LaunchArgs>();
  auto* cmd = app.add_subcommand(
      "launch", "data-parallel training on this machine: --nproc ranks of `mftk run`, supervised together");
  cmd->add_option("--nproc", a->nproc, "number of ranks (processes)")->required()->check(CLI::Range(1, 4096));
  cmd->add_option("--master-port", a->master_port, "rendezvous TCP port (default: a free one)")
      ->check(CLI::Range(1, 65535));
  add_recipe_options(cmd, a->recipe);
  cmd->add_option("--output-dir", a->output_dir, "override training.output_dir");
  cmd->callback([a] {
    const int code = launch(*a);
    if (code != 0) std::exit(code);
  });
}

}  // namespace mftk::cli
