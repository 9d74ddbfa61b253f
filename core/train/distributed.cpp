// The one file that includes c10d. Layout: the environment, the heartbeat
// that lets a survivor name a dead rank, the process group (Gloo, or NCCL
// where compiled in), then the collectives the trainer uses.
//
// Timeouts: the TCPStore rendezvous, the Gloo context (every collective) and
// each Work::wait get the same limit, so no call can block forever. A dead
// peer usually shows up much sooner, as a closed connection.
#include "distributed.h"

#include <algorithm>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/version.h>

#include "mftk/error.h"

// MFTK_HAVE_C10D_GLOO / USE_C10D_GLOO / USE_C10D_NCCL come from
// core/CMakeLists.txt, set only when the libtorch ships those headers.
#if defined(MFTK_HAVE_C10D_GLOO)
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#endif
#if defined(USE_C10D_NCCL)
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace mftk::core {

namespace {

// An integer environment variable, or `fallback` when unset.
int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  const long n = std::strtol(v, &end, 10);
  if (*end != '\0' || n < 0 || n > 1 << 20)
    throw UsageError(fmt::format("environment variable {}='{}' is not a non-negative integer", name, v),
                     "torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; so does mftk launch");
  return int(n);
}

std::string seconds_text(std::chrono::milliseconds t) {
  return t.count() % 1000 == 0 ? fmt::format("{} s", t.count() / 1000) : fmt::format("{:.1f} s", t.count() / 1000.0);
}

}  // namespace

DistributedEnv DistributedEnv::from_env() {
  DistributedEnv e;
  e.world_size = env_int("WORLD_SIZE", 1);
  if (e.world_size == 0) throw UsageError("environment variable WORLD_SIZE=0: a job needs at least one rank");
  if (e.world_size == 1) return e;
  if (!std::getenv("RANK"))
    throw UsageError(fmt::format("WORLD_SIZE={} but RANK is not set", e.world_size),
                     "set RANK (0 .. WORLD_SIZE-1) for each process, or start them with mftk launch / torchrun");
  e.rank = env_int("RANK", 0);
  if (e.rank >= e.world_size)
    throw UsageError(fmt::format("RANK={} is not below WORLD_SIZE={}", e.rank, e.world_size));
  e.local_rank = env_int("LOCAL_RANK", e.rank);
  if (const char* agent = std::getenv("TORCHELASTIC_USE_AGENT_STORE")) e.agent_store = std::string(agent) == "True";
  e.restart = env_int("TORCHELASTIC_RESTART_COUNT", 0);
  const char* addr = std::getenv("MASTER_ADDR");
  if (!addr || !*addr)
    throw UsageError(fmt::format("WORLD_SIZE={} but MASTER_ADDR is not set", e.world_size),
                     "set MASTER_ADDR to the address of the machine running rank 0 (127.0.0.1 on one machine)");
  e.master_addr = addr;
  if (!std::getenv("MASTER_PORT"))
    throw UsageError(fmt::format("WORLD_SIZE={} but MASTER_PORT is not set", e.world_size),
                     "set MASTER_PORT to a free TCP port on rank 0's machine (the same on every rank)");
  e.master_port = env_int("MASTER_PORT", 0);
  if (e.master_port <= 0 || e.master_port > 65535)
    throw UsageError(fmt::format("MASTER_PORT={} is not a TCP port", e.master_port));
  return e;
}

bool Distributed::available() {
#if defined(MFTK_HAVE_C10D_GLOO)
  return true;
#else
  return false;
#endif
}

#if defined(MFTK_HAVE_C10D_GLOO)

// ---------------------------------------------------------------------------
// The process group, its store, and the heartbeat.
//
// Gloo reports a lost peer by address ("Connection closed by peer
// [10.0.0.2]:41234"), not by rank. So each rank bumps a counter
// "mftk/alive/<rank>" in the store every heartbeat interval from its own
// thread and store connection; after a failed collective the survivor reads
// the counters twice and names the ranks whose counters stood still. If the
// store itself is gone, rank 0 (which hosts it) is the one that stopped.
struct Distributed::Group {
  DistributedEnv env;
  std::chrono::milliseconds timeout{};
  std::chrono::milliseconds heartbeat_every{};
  c10::intrusive_ptr<c10d::TCPStore> store;            // rendezvous; rank 0 runs the server
  c10::intrusive_ptr<c10d::TCPStore> heartbeat_store;  // a second connection, used by the heartbeat thread only
  c10::intrusive_ptr<c10d::ProcessGroupGloo> gloo;
#if defined(USE_C10D_NCCL)
  c10::intrusive_ptr<c10d::ProcessGroupNCCL> nccl;
  at::Device device{at::kCPU};
#endif
  std::thread heartbeat;
  std::mutex mutex;
  std::condition_variable stop_cv;
  bool stopping = false;

  ~Group() {
    {
      std::lock_guard<std::mutex> lock(mutex);
      stopping = true;
    }
    stop_cv.notify_all();
    if (heartbeat.joinable()) heartbeat.join();
  }

  std::string alive_key(int rank) const { return fmt::format("mftk/{}/alive/{}", env.restart, rank); }

  void beat() {
    std::unique_lock<std::mutex> lock(mutex);
    while (!stopping) {
      try {
        heartbeat_store->add(alive_key(env.rank), 1);
      } catch (const std::exception&) {
        return;  // the store is gone (rank 0 ended); the next collective reports it
      }
      stop_cv.wait_for(lock, heartbeat_every, [&] { return stopping; });
    }
  }

  // The ranks that stopped beating, or {0} when the store is unreachable.
  std::vector<int> silent_ranks() {
    auto counters = [&]() {
      std::vector<int64_t> c(size_t(env.world_size), 0);
      for (int r = 0; r < env.world_size; ++r) c[size_t(r)] = store->add(alive_key(r), 0);
      return c;
    };
    std::vector<int> silent;
    try {
      const auto before = counters();
      std::this_thread::sleep_for(heartbeat_every * 5 / 2);
      const auto after = counters();
      for (int r = 0; r < env.world_size; ++r)
        if (r != env.rank && after[size_t(r)] == before[size_t(r)]) silent.push_back(r);
    } catch (const std::exception&) {
      if (env.rank != 0) silent.push_back(0);
    }
    return silent;
  }

  // The error a failed collective becomes: who stopped, when, and what c10d said.
  Error failure(const std::string& during, const std::string& detail) {
    const auto silent = silent_ranks();
    std::string who;
    if (silent.empty()) {
      who = "a collective failed";
    } else {
      std::vector<std::string> names;
      for (int r : silent) names.push_back(std::to_string(r));
      who = fmt::format("rank{} {} stopped responding", silent.size() > 1 ? "s" : "", fmt::join(names, ", "));
      if (silent == std::vector<int>{0} && env.rank != 0) who += " (it hosts the rendezvous store)";
    }
    return Error(fmt::format("{} (timeout {}) during {} on rank {} of {}: {}", who, seconds_text(timeout), during,
                             env.rank, env.world_size, detail),
                 "look at the failed rank's own output first; a rank that is only slow (a long checkpoint on rank 0) "
                 "needs a larger [training] distributed_timeout_s");
  }

  // Runs one collective and waits for it, turning any c10d failure into failure().
  template <class Start>
  void run(const std::string& during, Start start) {
    try {
      c10::intrusive_ptr<c10d::Work> work = start();
      // The Gloo context fails first at `timeout`; this wait is the backstop.
      work->wait(timeout + std::chrono::seconds(5));
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      throw failure(during, e.what());
    }
  }

  // Collectives run on the backend's device: CPU for Gloo, this rank's GPU for NCCL.
  at::Tensor to_backend(const at::Tensor& t) {
#if defined(USE_C10D_NCCL)
    if (nccl) return t.to(device);
#endif
    return t;
  }

  c10::intrusive_ptr<c10d::Work> allreduce(std::vector<at::Tensor>& tensors) {
#if defined(USE_C10D_NCCL)
    if (nccl) return nccl->allreduce(tensors);
#endif
    return gloo->allreduce(tensors);
  }
  c10::intrusive_ptr<c10d::Work> broadcast(std::vector<at::Tensor>& tensors) {
    c10d::BroadcastOptions o;
    o.rootRank = 0;
#if defined(USE_C10D_NCCL)
    if (nccl) return nccl->broadcast(tensors, o);
#endif
    return gloo->broadcast(tensors, o);
  }
  c10::intrusive_ptr<c10d::Work> barrier() {
#if defined(USE_C10D_NCCL)
    if (nccl) return nccl->barrier();
#endif
    return gloo->barrier();
  }
};

// The Gloo transport binds to one address of this machine. GLOO_SOCKET_IFNAME
// picks an interface (as in torch); a loopback master means one machine; else
// the address the hostname resolves to, as torch does.
static std::shared_ptr<::gloo::transport::Device> gloo_device(const DistributedEnv& env) {
  if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname && *ifname)
    return c10d::ProcessGroupGloo::createDeviceForInterface(ifname);
  if (env.master_addr == "127.0.0.1" || env.master_addr == "localhost")
    return c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1");
  return c10d::ProcessGroupGloo::createDefaultDevice();
}

std::shared_ptr<Distributed> Distributed::connect(const DistributedEnv& env, std::chrono::milliseconds timeout,
                                                  bool cuda) {
  auto group = std::make_unique<Group>();
  group->env = env;
  group->timeout = timeout;
  group->heartbeat_every = std::clamp(timeout / 8, std::chrono::milliseconds(100), std::chrono::milliseconds(2000));
  const std::string where = fmt::format("{}:{}", env.master_addr, env.master_port);
  try {
    c10d::TCPStoreOptions so;
    so.port = uint16_t(env.master_port);
    so.isServer = env.rank == 0 && !env.agent_store;
    so.numWorkers = size_t(env.world_size);
    so.waitWorkers = true;
    so.timeout = timeout;
    group->store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, so);
    c10d::TCPStoreOptions hb = so;
    hb.isServer = false;
    hb.numWorkers = c10::nullopt;
    hb.waitWorkers = false;  // not a worker: it must not count towards the rendezvous
    group->heartbeat_store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, hb);
  } catch (const std::exception& e) {
    throw Error(fmt::format("rank {} of {}: rendezvous at {} failed within {}: {}", env.rank, env.world_size, where,
                            seconds_text(timeout), e.what()),
                env.rank == 0 ? "another process may hold MASTER_PORT, or some ranks never started; every rank must "
                                "use the same MASTER_ADDR/MASTER_PORT/WORLD_SIZE"
                              : "rank 0 must be running and reachable at MASTER_ADDR:MASTER_PORT (check firewalls, "
                                "and that every rank uses the same WORLD_SIZE)");
  }
  group->heartbeat = std::thread([g = group.get()] { g->beat(); });
  auto store = c10::make_intrusive<c10d::PrefixStore>(fmt::format("mftk/{}/pg", env.restart), group->store);
  try {
#if defined(USE_C10D_NCCL)
    if (cuda && at::cuda::is_available()) {
      group->device = at::Device(at::kCUDA, c10::DeviceIndex(env.local_rank));
      c10::cuda::set_device(c10::DeviceIndex(env.local_rank));
      auto o = c10d::ProcessGroupNCCL::Options::create();
      o->timeout = timeout;
      group->nccl = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, env.rank, env.world_size, o);
    }
    if (!group->nccl)
#else
    if (cuda && env.rank == 0)
      spdlog::warn("distributed: this libtorch has no NCCL; the GPU ranks reduce their gradients through Gloo "
                   "(host copies, slower)");
#endif
    {
      auto o = c10d::ProcessGroupGloo::Options::create(timeout);
      o->devices.push_back(gloo_device(env));
      group->gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(store, env.rank, env.world_size, o);
    }
  } catch (const std::exception& e) {
    throw Error(fmt::format("rank {} of {}: building the process group over {} failed: {}", env.rank, env.world_size,
                            where, e.what()),
                "on several machines set GLOO_SOCKET_IFNAME to the interface the machines reach each other on");
  }
  auto d = std::shared_ptr<Distributed>(new Distributed(env, timeout, std::move(group)));
  // Nobody starts training before everyone has a working group.
  d->barrier("start-up");
  spdlog::info("distributed: rank {} of {} (local rank {}), backend {}, rendezvous {}, timeout {}", env.rank,
               env.world_size, env.local_rank, d->backend(), where, seconds_text(timeout));
  return d;
}

std::string Distributed::backend() const {
  if (!group_) return "none";
#if defined(USE_C10D_NCCL)
  if (group_->nccl) return "nccl";
#endif
  return "gloo";
}

// One bucket: parameters (by index) sharing a dtype, at most bucket_bytes of them.
namespace {
struct Bucket {
  at::ScalarType dtype;
  std::vector<size_t> members;
  int64_t numel = 0;
};

std::vector<Bucket> make_buckets(const NamedTensors& params, int64_t bucket_bytes) {
  std::vector<Bucket> buckets;
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& p = params[i].second;
    const int64_t bytes = p.numel() * int64_t(p.element_size());
    if (buckets.empty() || buckets.back().dtype != p.scalar_type() ||
        (buckets.back().numel > 0 &&
         (buckets.back().numel * int64_t(p.element_size()) + bytes) > bucket_bytes))
      buckets.push_back({p.scalar_type(), {}, 0});
    buckets.back().members.push_back(i);
    buckets.back().numel += p.numel();
  }
  return buckets;
}
}  // namespace

void Distributed::allreduce_gradients(const NamedTensors& params, const std::string& during, int64_t bucket_bytes) {
  if (!group_) return;
  at::NoGradGuard no_grad;
  const auto buckets = make_buckets(params, bucket_bytes);
  // Each bucket: the gradients, then one "defined here" flag per member, so
  // the flags travel in the same message and cost no extra round trip.
  std::vector<at::Tensor> flats;
  std::vector<c10::intrusive_ptr<c10d::Work>> works;
  try {
    for (const auto& b : buckets) {
      at::Tensor flat = at::zeros({b.numel + int64_t(b.members.size())}, at::TensorOptions().dtype(b.dtype));
      int64_t offset = 0;
      for (size_t j = 0; j < b.members.size(); ++j) {
        const at::Tensor& p = params[b.members[j]].second;
        if (p.grad().defined()) {
          flat.narrow(0, offset, p.numel()).copy_(p.grad().reshape({-1}));
          flat[b.numel + int64_t(j)] = 1;
        }
        offset += p.numel();
      }
      std::vector<at::Tensor> one = {group_->to_backend(flat)};
      works.push_back(group_->allreduce(one));
      flats.push_back(one[0]);
    }
  } catch (const std::exception& e) {
    throw group_->failure(during, e.what());
  }
  for (size_t i = 0; i < buckets.size(); ++i) {
    group_->run(during, [&] { return works[i]; });
    const at::Tensor flat = flats[i].to(at::kCPU);
    const auto& b = buckets[i];
    int64_t offset = 0;
    for (size_t j = 0; j < b.members.size(); ++j) {
      at::Tensor p = params[b.members[j]].second;
      if (flat[b.numel + int64_t(j)].item<double>() > 0) {
        at::Tensor g = flat.narrow(0, offset, p.numel()).view(p.sizes());
        if (p.grad().defined()) p.mutable_grad().copy_(g);
        else p.mutable_grad() = g.clone().to(p.device());  // Gloo reduces on the host; a GPU parameter's grad stays on its GPU
      }
      offset += p.numel();
    }
  }
}

void Distributed::broadcast_from_main(const NamedTensors& tensors, const std::string& during) {
  if (!group_) return;
  at::NoGradGuard no_grad;
  for (const auto& b : make_buckets(tensors, kDefaultBucketBytes)) {
    at::Tensor flat = at::empty({b.numel}, at::TensorOptions().dtype(b.dtype));
    int64_t offset = 0;
    for (size_t i : b.members) {
      const at::Tensor& t = tensors[i].second;
      flat.narrow(0, offset, t.numel()).copy_(t.reshape({-1}));
      offset += t.numel();
    }
    std::vector<at::Tensor> one = {group_->to_backend(flat)};
    group_->run(during, [&] { return group_->broadcast(one); });
    flat = one[0].to(at::kCPU);
    offset = 0;
    for (size_t i : b.members) {
      at::Tensor t = tensors[i].second;
      t.copy_(flat.narrow(0, offset, t.numel()).view(t.sizes()));
      offset += t.numel();
    }
  }
}

std::vector<double> Distributed::sum(const std::vector<double>& values, const std::string& during) {
  if (!group_ || values.empty()) return values;
  at::Tensor t = at::tensor(values, at::TensorOptions().dtype(at::kDouble));
  std::vector<at::Tensor> one = {group_->to_backend(t)};
  group_->run(during, [&] { return group_->allreduce(one); });
  t = one[0].to(at::kCPU).contiguous();
  return std::vector<double>(t.data_ptr<double>(), t.data_ptr<double>() + t.numel());
}

void Distributed::barrier(const std::string& during) {
  if (!group_) return;
  group_->run(during, [&] { return group_->barrier(); });
}

#else  // no c10d Gloo in this libtorch

struct Distributed::Group {};

std::shared_ptr<Distributed> Distributed::connect(const DistributedEnv& env, std::chrono::milliseconds, bool) {
  throw Error(fmt::format("WORLD_SIZE={}: this mftk was built against a libtorch without c10d Gloo headers "
                          "(torch/csrc/distributed/c10d/ProcessGroupGloo.hpp, gloo/), so it cannot train on several "
                          "ranks",
                          env.world_size),
              "rebuild against a libtorch with distributed support (Debian: libtorch-dev and libgloo-dev), or "
              "unset WORLD_SIZE to train in one process");
}
std::string Distributed::backend() const { return "none"; }
void Distributed::allreduce_gradients(const NamedTensors&, const std::string&, int64_t) {}
void Distributed::broadcast_from_main(const NamedTensors&, const std::string&) {}
std::vector<double> Distributed::sum(const std::vector<double>& values, const std::string&) { return values; }
void Distributed::barrier(const std::string&) {}

#endif

Distributed::Distributed(DistributedEnv env, std::chrono::milliseconds timeout, std::unique_ptr<Group> group)
    : env_(std::move(env)), timeout_(timeout), group_(std::move(group)) {}

Distributed::~Distributed() = default;

std::shared_ptr<Distributed> Distributed::single() {
  return std::shared_ptr<Distributed>(new Distributed(DistributedEnv{}, std::chrono::milliseconds(0), nullptr));
}

std::shared_ptr<Distributed> Distributed::from_env(std::chrono::milliseconds timeout, bool cuda) {
  const auto env = DistributedEnv::from_env();
  return env.enabled() ? connect(env, timeout, cuda) : single();
}

}  // namespace mftk::core
