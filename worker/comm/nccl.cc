// The NCCL backend: CUDA buffers. Collectives run on a stream of their own; each launch
// records an event on the compute stream and makes the NCCL stream wait for it, and
// Work::Wait() makes the compute stream wait for the collective's event: no host sync on
// either side. A watchdog thread turns a collective that outlives the timeout, or an
// asynchronous NCCL error, into an abort of the communicator and of the job, naming the
// collective. MPI carries the unique id at start-up and the host-side barrier.
#include <cuda_runtime.h>
#include <nccl.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <thread>

#include "worker/comm/communicator.h"

namespace rmgen {
namespace {

using Clock = std::chrono::steady_clock;

Status CudaStatus(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return Status::Ok();
  return InternalError(std::string(what) + ": " + cudaGetErrorString(e));
}
Status NcclStatus(ncclResult_t r, const char* what) {
  if (r == ncclSuccess) return Status::Ok();
  return InternalError(std::string(what) + ": " + ncclGetErrorString(r));
}

ncclDataType_t NcclType(DType t) {
  switch (t) {
    case DType::kFloat32: return ncclFloat32;
    case DType::kFloat64: return ncclFloat64;
    case DType::kBFloat16: return ncclBfloat16;
    case DType::kFloat16: return ncclFloat16;
    case DType::kInt64: return ncclInt64;
    case DType::kInt32: return ncclInt32;
    case DType::kUInt8: return ncclUint8;
  }
  return ncclUint8;
}

ncclRedOp_t NcclOp(ReduceOp op) {
  return op == ReduceOp::kSum ? ncclSum : op == ReduceOp::kMax ? ncclMax : ncclMin;
}

class NcclCommunicator;

class NcclWork : public Work {
 public:
  NcclWork(NcclCommunicator* c, cudaEvent_t done) : comm_(c), done_(done) {}
  ~NcclWork() override { cudaEventDestroy(done_); }
  Status Wait() override;
  cudaEvent_t event() const { return done_; }

 private:
  NcclCommunicator* comm_;
  cudaEvent_t done_;
};

class NcclCommunicator : public Communicator {
 public:
  NcclCommunicator(std::unique_ptr<Communicator> mpi, const CommOptions& o)
      : mpi_(std::move(mpi)), options_(o) {}

  Status Init(const RankLayout& layout) {
    int count = 0;
    RETURN_IF_ERROR(CudaStatus(cudaGetDeviceCount(&count), "cudaGetDeviceCount"));
    if (count == 0) return FailedPreconditionError("nccl backend: no CUDA device visible");
    device_ = layout.local_rank % count;
    const auto colon = options_.device.find(':');
    if (colon != std::string::npos) device_ = std::atoi(options_.device.c_str() + colon + 1);
    RETURN_IF_ERROR(CudaStatus(cudaSetDevice(device_), "cudaSetDevice"));
    ncclUniqueId id;
    if (mpi_->rank() == 0) RETURN_IF_ERROR(NcclStatus(ncclGetUniqueId(&id), "ncclGetUniqueId"));
    RETURN_IF_ERROR(mpi_->Broadcast(Buffer{&id, sizeof(id), DType::kUInt8, false}, 0)
                        ->Wait()
                        .WithContext("sending the NCCL unique id"));
    RETURN_IF_ERROR(
        NcclStatus(ncclCommInitRank(&comm_, mpi_->size(), id, mpi_->rank()), "ncclCommInitRank"));
    RETURN_IF_ERROR(
        CudaStatus(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate"));
    watchdog_ = std::thread([this] { Watch(); });
    return Status::Ok();
  }

  ~NcclCommunicator() override {
    stop_ = true;
    if (watchdog_.joinable()) watchdog_.join();
    if (stream_) cudaStreamSynchronize(stream_);
    if (comm_) ncclCommDestroy(comm_);
    if (stream_) cudaStreamDestroy(stream_);
  }

  void set_timeout(std::chrono::milliseconds t) override { options_.timeout = t; }
  int rank() const override { return mpi_->rank(); }
  int size() const override { return mpi_->size(); }
  const char* backend() const override { return "nccl"; }
  void SetComputeStream(void* s) override { compute_ = static_cast<cudaStream_t>(s); }
  cudaStream_t compute_stream() const { return compute_; }
  Status error() {
    std::lock_guard<std::mutex> l(m_);
    return error_;
  }

  std::shared_ptr<Work> AllReduce(Buffer b, ReduceOp op) override {
    return Launch("all-reduce", b, [&] {
      return ncclAllReduce(b.data, b.data, b.count, NcclType(b.dtype), NcclOp(op), comm_, stream_);
    });
  }
  std::shared_ptr<Work> ReduceScatter(Buffer in, Buffer out, ReduceOp op) override {
    if (in.count != out.count * size() || in.dtype != out.dtype || !out.device) {
      return DoneWork(InvalidArgumentError("reduce-scatter: input must hold size() outputs"));
    }
    return Launch("reduce-scatter", in, [&] {
      return ncclReduceScatter(in.data, out.data, out.count, NcclType(in.dtype), NcclOp(op), comm_,
                               stream_);
    });
  }
  std::shared_ptr<Work> AllGather(Buffer b) override {
    if (b.count % size() != 0) {
      return DoneWork(InvalidArgumentError("all-gather: count not a multiple of size()"));
    }
    const int64_t chunk = b.count / size();
    auto* mine = static_cast<char*>(b.data) + chunk * rank() * DTypeSize(b.dtype);
    return Launch("all-gather", b, [&] {
      return ncclAllGather(mine, b.data, chunk, NcclType(b.dtype), comm_, stream_);
    });
  }
  std::shared_ptr<Work> Broadcast(Buffer b, int root) override {
    return Launch("broadcast", b, [&] {
      return ncclBroadcast(b.data, b.data, b.count, NcclType(b.dtype), root, comm_, stream_);
    });
  }
  std::shared_ptr<Work> Barrier() override {
    // Host-side: after the compute stream's work so far, then every rank meets over MPI.
    Status s = CudaStatus(cudaStreamSynchronize(compute_), "cudaStreamSynchronize");
    if (!s.ok()) return DoneWork(s);
    return mpi_->Barrier();
  }
  [[noreturn]] void Abort(const std::string& why, int exit_code) override {
    if (comm_) ncclCommAbort(comm_);
    comm_ = nullptr;
    mpi_->Abort(why, exit_code);
    std::_Exit(1);  // not reached
  }

 private:
  template <typename F>
  std::shared_ptr<Work> Launch(const char* name, const Buffer& b, F call) {
    if (!b.device) {
      return DoneWork(InvalidArgumentError(std::string("nccl backend: ") + name +
                                           " of a host buffer; CPU jobs use the mpi backend"));
    }
    {
      Status e = error();
      if (!e.ok()) return DoneWork(e);
    }
    cudaEvent_t ready = nullptr, done = nullptr;
    Status s = CudaStatus(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming), "event");
    if (s.ok()) s = CudaStatus(cudaEventRecord(ready, compute_), "cudaEventRecord");
    if (s.ok()) s = CudaStatus(cudaStreamWaitEvent(stream_, ready, 0), "cudaStreamWaitEvent");
    if (ready) cudaEventDestroy(ready);
    if (s.ok()) s = NcclStatus(call(), name);
    if (s.ok()) s = CudaStatus(cudaEventCreateWithFlags(&done, cudaEventDisableTiming), "event");
    if (s.ok()) s = CudaStatus(cudaEventRecord(done, stream_), "cudaEventRecord");
    if (!s.ok()) {
      if (done) cudaEventDestroy(done);
      return DoneWork(s);
    }
    auto w = std::make_shared<NcclWork>(this, done);
    std::lock_guard<std::mutex> l(m_);
    pending_.push_back({w, Clock::now() + options_.timeout,
                        std::string(name) + " #" + std::to_string(++issued_) + " (" +
                            std::to_string(b.count) + " x " + DTypeName(b.dtype) + ")"});
    return w;
  }

  // Polls the oldest pending collectives; aborts the job on a timeout or an async error.
  void Watch() {
    cudaSetDevice(device_);
    while (!stop_) {
      std::string failure;
      {
        std::lock_guard<std::mutex> l(m_);
        while (!pending_.empty()) {
          auto w = pending_.front().work.lock();
          if (!w || cudaEventQuery(w->event()) == cudaSuccess) {
            pending_.pop_front();
            continue;
          }
          if (Clock::now() > pending_.front().deadline) {
            failure = pending_.front().what + " on rank " + std::to_string(mpi_->rank()) +
                      " did not complete within " +
                      std::to_string(options_.timeout.count() / 1000) +
                      " s: a peer rank is dead, hung, or did not issue it";
          }
          break;
        }
        ncclResult_t async = ncclSuccess;
        if (failure.empty() && comm_ && ncclCommGetAsyncError(comm_, &async) == ncclSuccess &&
            async != ncclSuccess && async != ncclInProgress) {
          failure = std::string("NCCL asynchronous error: ") + ncclGetErrorString(async);
        }
        if (!failure.empty()) error_ = Status(StatusCode::kDeadlineExceeded, failure);
      }
      if (!failure.empty()) Abort(failure, 1);
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }

  struct Pending {
    std::weak_ptr<NcclWork> work;
    Clock::time_point deadline;
    std::string what;
  };

  std::unique_ptr<Communicator> mpi_;
  CommOptions options_;
  int device_ = 0;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr, compute_ = nullptr;
  std::thread watchdog_;
  std::atomic<bool> stop_{false};
  std::mutex m_;
  std::deque<Pending> pending_;
  Status error_;
  uint64_t issued_ = 0;
};

Status NcclWork::Wait() {
  RETURN_IF_ERROR(comm_->error());
  return CudaStatus(cudaStreamWaitEvent(comm_->compute_stream(), done_, 0), "cudaStreamWaitEvent");
}

}  // namespace

bool NcclCompiledIn() { return true; }

StatusOr<std::unique_ptr<Communicator>> NewNcclCommunicator(const RankLayout& layout,
                                                            const CommOptions& options) {
  ASSIGN_OR_RETURN(std::unique_ptr<Communicator> mpi, NewMpiCommunicator(options));
  auto c = std::make_unique<NcclCommunicator>(std::move(mpi), options);
  RETURN_IF_ERROR(c->Init(layout));
  return std::unique_ptr<Communicator>(std::move(c));
}

}  // namespace rmgen
