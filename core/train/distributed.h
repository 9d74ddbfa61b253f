// Data parallelism over a torch.distributed (c10d) process group: Gloo when
// the ranks compute on the CPU, NCCL when they compute on GPUs (and the
// libtorch was built with it; Gloo otherwise). The
// c10d headers are heavy and differ between libtorch versions, so they stay
// in distributed.cpp; this header only speaks tensors and plain types.
//
// What the trainer asks of it: the ranks' environment (torchrun's variables),
// a bucketed gradient all-reduce, a broadcast of rank 0's weights, a sum of a
// few scalars and a barrier. Every collective waits at most timeout(); when a
// peer dies or hangs the survivor throws an mftk::Error that names the rank
// (found through heartbeats each rank keeps in the rendezvous store).
//
// defines: mftk::core::DistributedEnv, mftk::core::Distributed
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "mftk/tensor.h"

namespace mftk::core {

// Who this process is in the job: torchrun's RANK, WORLD_SIZE, LOCAL_RANK,
// MASTER_ADDR and MASTER_PORT (cluster scripts written for torchrun work).
struct DistributedEnv {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  // Under torchrun its agent already serves a store on MASTER_PORT
  // (TORCHELASTIC_USE_AGENT_STORE=True): rank 0 then connects to it instead
  // of serving one, and keys carry the restart count.
  bool agent_store = false;
  int restart = 0;

  // WORLD_SIZE unset or 1: one process. Throws UsageError naming the
  // variable when a value is malformed or inconsistent.
  static DistributedEnv from_env();
  bool enabled() const { return world_size > 1; }
};

class Distributed {
 public:
  // Gradient buckets of about this size: large enough that per-message
  // latency does not dominate, small enough that the flat copy stays cheap.
  static constexpr int64_t kDefaultBucketBytes = 25 << 20;

  // One process: every collective is a no-op (no c10d at all).
  static std::shared_ptr<Distributed> single();
  // Rendezvous at master_addr:master_port (rank 0 hosts the store) and build
  // the process group; waits at most `timeout` for every rank to arrive.
  // `cuda`: the ranks train on GPUs (cuda:local_rank), so NCCL where compiled
  // in; false: Gloo, whatever GPUs the machine has.
  static std::shared_ptr<Distributed> connect(const DistributedEnv& env, std::chrono::milliseconds timeout,
                                              bool cuda = false);
  // single() or connect() as the environment says.
  static std::shared_ptr<Distributed> from_env(std::chrono::milliseconds timeout, bool cuda = false);
  // Whether this build has a c10d backend at all (false: connect() throws).
  static bool available();

  ~Distributed();
  Distributed(const Distributed&) = delete;
  Distributed& operator=(const Distributed&) = delete;

  int rank() const { return env_.rank; }
  int world_size() const { return env_.world_size; }
  int local_rank() const { return env_.local_rank; }
  bool is_main() const { return env_.rank == 0; }
  std::chrono::milliseconds timeout() const { return timeout_; }
  std::string backend() const;  // "gloo", "nccl", or "none" for one process

  // Sums the gradients of `params` over all ranks, in place: flattened into
  // buckets of at most `bucket_bytes` (one dtype per bucket), all buckets in
  // flight at once. A parameter whose gradient is undefined on a rank adds
  // zeros there; it stays undefined only if it is undefined on every rank,
  // so the optimizer skips it exactly as a one-process run would.
  // `during` names the moment in errors ("gradient all-reduce at step 3").
  void allreduce_gradients(const NamedTensors& params, const std::string& during,
                           int64_t bucket_bytes = kDefaultBucketBytes);
  // Overwrites `tensors` on every rank with rank 0's values.
  void broadcast_from_main(const NamedTensors& tensors, const std::string& during);
  // Element-wise sum over ranks (losses, token counts, flags), in double.
  std::vector<double> sum(const std::vector<double>& values, const std::string& during);
  void barrier(const std::string& during);

 private:
  struct Group;  // the c10d store, process group and heartbeat (distributed.cpp)
  Distributed(DistributedEnv env, std::chrono::milliseconds timeout, std::unique_ptr<Group> group);

  DistributedEnv env_;
  std::chrono::milliseconds timeout_;
  std::unique_ptr<Group> group_;
};

}  // namespace mftk::core
