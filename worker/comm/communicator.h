// Communicator: the collectives data-parallel training needs, over raw buffers (no torch
// here: the trainer passes data pointers), with three backends chosen by linking:
//
//   single  one process; every collective is the identity and completes at once
//   mpi     CPU buffers, OpenMPI (or any MPI), one communication thread per process
//   nccl    CUDA buffers, NCCL on its own stream; the unique id travels over MPI
//
// CreateCommunicator() picks single when the world has one rank, nccl for device "cuda"
// and mpi otherwise. The NCCL backend lives in nccl.cc when the build found NCCL and in
// no_nccl.cc (which only says so) when it did not; no caller has an #ifdef.
//
// THE CONTRACT (every backend relies on it; breaking it hangs or corrupts):
//  1. Every rank issues the same collectives, with the same counts and dtypes, in the
//     same order. Code that decides whether to issue one (skip a step, stop, shard is
//     empty) must first agree on the decision through a collective.
//  2. Launching returns at once with a Work handle. The caller must not touch the buffer
//     until Wait() on that handle returned OK. Handles complete in issue order.
//  3. Who waits for what: Wait() on a host backend (mpi, single) blocks the calling
//     thread until the result is in the buffer. On nccl it blocks nothing: it orders the
//     compute stream after the collective (cudaStreamWaitEvent), so later kernels on the
//     compute stream see the result; a host read of the buffer still needs the usual
//     stream synchronization. The collective itself starts only after all work already
//     issued to the compute stream (an event recorded at launch), without a host sync.
//  4. A collective that does not complete within `timeout` (a peer died or hangs) makes
//     Wait() return DEADLINE_EXCEEDED (host backends) or makes the NCCL watchdog abort the
//     communicator. The process cannot recover the communicator after that: the caller
//     reports the error and calls Abort(), which ends every rank of the job.
//  5. Buffers handed to one collective must not overlap buffers of another collective
//     still in flight.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "common/status.h"

namespace rmgen {

enum class DType { kFloat32, kFloat64, kBFloat16, kFloat16, kInt64, kInt32, kUInt8 };
const char* DTypeName(DType t);
size_t DTypeSize(DType t);

enum class ReduceOp { kSum, kMax, kMin };

// A contiguous buffer of `count` elements; on the GPU when `device` is true.
struct Buffer {
  void* data = nullptr;
  int64_t count = 0;
  DType dtype = DType::kFloat32;
  bool device = false;
  size_t bytes() const { return static_cast<size_t>(count) * DTypeSize(dtype); }
};

class Work {
 public:
  virtual ~Work() = default;
  // See the contract, point 3. Returns the collective's error, if it failed or timed out.
  virtual Status Wait() = 0;
};

// Where this process sits in the job: from the environment mpirun (OMPI_COMM_WORLD_*),
// PMIx (PMIX_RANK) or srun (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID) set; rank 0 of 1
// when none is set. `local_rank` picks the GPU: device local_rank % visible devices.
struct RankLayout {
  int rank = 0, size = 1;
  int local_rank = 0, local_size = 1;
  std::string source = "none";  // which variables it came from
  static RankLayout FromEnvironment(const std::map<std::string, std::string>& env);
  static RankLayout FromEnvironment();  // the process environment
};

struct CommOptions {
  // "cpu" or "cuda[:N]": which kind of buffers the collectives carry.
  std::string device = "cpu";
  // A collective slower than this is declared lost (contract, point 4).
  std::chrono::milliseconds timeout{std::chrono::minutes(10)};
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual const char* backend() const = 0;

  // In place: every rank ends with op over all ranks' buffers.
  virtual std::shared_ptr<Work> AllReduce(Buffer buf, ReduceOp op) = 0;
  // `in` holds size() equal blocks; rank r receives op over every rank's block r in `out`
  // (out.count * size() == in.count; out must not overlap in).
  virtual std::shared_ptr<Work> ReduceScatter(Buffer in, Buffer out, ReduceOp op) = 0;
  // In place: `buf` holds size() equal blocks; each rank contributes its own block (rank r
  // at offset r * count / size()) and every rank ends with all of them.
  virtual std::shared_ptr<Work> AllGather(Buffer buf) = 0;
  virtual std::shared_ptr<Work> Broadcast(Buffer buf, int root) = 0;
  virtual std::shared_ptr<Work> Barrier() = 0;

  // Ends every rank of the job (after a lost collective, or an error on this rank while the
  // others may wait in a collective): `why` on stderr, then every process of the job exits
  // (this one with `exit_code`; mpirun passes it on). Does not return.
  [[noreturn]] virtual void Abort(const std::string& why, int exit_code) = 0;

  // The timeout of collectives launched from now on (contract, point 4).
  virtual void set_timeout(std::chrono::milliseconds timeout) { (void)timeout; }

  // NCCL only: the CUDA stream compute runs on (nullptr: the legacy default stream, which
  // is libtorch's current stream unless the caller changed it).
  virtual void SetComputeStream(void* stream) { (void)stream; }

  // Blocking conveniences.
  Status AllReduceNow(Buffer buf, ReduceOp op) { return AllReduce(buf, op)->Wait(); }
  Status BarrierNow() { return Barrier()->Wait(); }
};

// The communicator for this process: single when the layout has one rank, else nccl
// (device "cuda...") or mpi. Initializes MPI when it is used; MPI is finalized when the
// communicator is destroyed.
StatusOr<std::unique_ptr<Communicator>> CreateCommunicator(const RankLayout& layout,
                                                           const CommOptions& options);

// Backend constructors (for tests and for CreateCommunicator).
std::unique_ptr<Communicator> NewSingleCommunicator();
StatusOr<std::unique_ptr<Communicator>> NewMpiCommunicator(const CommOptions& options);
// Defined by nccl.cc, or by no_nccl.cc (UNIMPLEMENTED, naming why) in builds without NCCL.
StatusOr<std::unique_ptr<Communicator>> NewNcclCommunicator(const RankLayout& layout,
                                                            const CommOptions& options);
// Whether this build carries the NCCL backend.
bool NcclCompiledIn();

// A Work that is already complete with `status` (single backend, errors at launch).
std::shared_ptr<Work> DoneWork(Status status = Status::Ok());

}  // namespace rmgen
