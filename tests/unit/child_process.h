// Child processes for the end-to-end tests: the real mftk binary started
// with fork + exec, its output appended to a log file, waited for with a
// deadline so a hung run fails the test instead of the whole ctest run.
//
// defines: mftk::child_process::mftk_binary, shell_quote, SpawnOptions, spawn, wait_status, exit_code
#pragma once

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <filesystem>
#include <map>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace mftk::child_process {

// The mftk binary of this build.
inline std::string mftk_binary() { return (std::filesystem::path(MFTK_BINARY_DIR) / "bin" / "mftk").string(); }

// 'text' for the shell, whatever it holds.
inline std::string shell_quote(const std::string& text) {
  std::string out = "'";
  for (char c : text) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

struct SpawnOptions {
  std::map<std::string, std::string> env;  // added to (or replacing in) this process's environment
  // A finite RLIMIT_FSIZE, with SIGXFSZ ignored so a write past it fails
  // with EFBIG instead of killing the child: a full disk where no small
  // filesystem can be mounted.
  rlim_t file_size_limit = RLIM_INFINITY;
};

// Starts `exe args...` with stdout and stderr appended to `log`.
inline pid_t spawn(const std::string& exe, const std::vector<std::string>& args, const std::string& log,
                   const SpawnOptions& options = {}) {
  std::vector<std::string> all = {exe};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : all) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<std::string> vars;
  for (char** e = environ; *e; ++e) {
    const std::string kv = *e;
    if (!options.env.count(kv.substr(0, kv.find('=')))) vars.push_back(kv);
  }
  for (const auto& [k, v] : options.env) vars.push_back(k + "=" + v);
  std::vector<char*> envp;
  for (auto& v : vars) envp.push_back(v.data());
  envp.push_back(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {  // only async-signal-safe calls until exec
    const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) dup2(fd, 1), dup2(fd, 2);
    if (options.file_size_limit != RLIM_INFINITY) {
      signal(SIGXFSZ, SIG_IGN);  // SIG_IGN survives exec
      const rlimit limit{options.file_size_limit, options.file_size_limit};
      setrlimit(RLIMIT_FSIZE, &limit);
    }
    execve(argv[0], argv.data(), envp.data());
    _exit(127);
  }
  return pid;
}

// waitpid with a deadline; kills the child and reports -1 when it is exceeded.
inline int wait_status(pid_t pid, std::chrono::milliseconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  int status = 0;
  while (waitpid(pid, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return status;
}

// The exit code of a normal exit; -1 for a signal or a missed deadline.
inline int exit_code(int status) { return status >= 0 && WIFEXITED(status) ? WEXITSTATUS(status) : -1; }

}  // namespace mftk::child_process
