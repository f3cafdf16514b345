// The MPI backend: host buffers. Every MPI call, MPI_Init_thread and MPI_Finalize included,
// runs on one communication thread that owns MPI (MPI_THREAD_FUNNELED), fed by a queue,
// so the caller (for example a gradient hook inside backward) only enqueues and goes on
// computing while the collective runs. Ops run one at a time in issue order, which is
// what the contract asks of every rank.
#include <mpi.h>

#include <climits>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <thread>

#include "worker/comm/communicator.h"

namespace rmgen {
namespace {

// bfloat16 and float16 have no MPI datatype: they travel as 16-bit integers and are
// reduced by user ops that compute in float and round to nearest even.
float Bf16ToFloat(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint16_t FloatToBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
float HalfToFloat(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, u;
  if (exp == 0x1f) {
    u = sign | 0x7f800000u | (man << 13);
  } else if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else {  // subnormal: normalize
      exp = 127 - 15 + 1;
      while ((man & 0x400u) == 0) {
        man <<= 1;
        --exp;
      }
      u = sign | (exp << 23) | ((man & 0x3ffu) << 13);
    }
  } else {
    u = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint16_t FloatToHalf(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return sign | 0x7e00u;   // NaN
  if (abs >= 0x477ff000u) return sign | 0x7c00u;  // overflow (incl. inf) after rounding
  if (abs < 0x38800000u) {                        // subnormal or zero in half
    if (abs < 0x33000000u) return sign;           // below half the smallest subnormal
    const uint32_t e = abs >> 23, m = (abs & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - e;  // half subnormal = m * 2^(e - 126)
    uint32_t r = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1u))) ++r;
    return sign | static_cast<uint16_t>(r);
  }
  uint32_t r = abs - 0x38000000u;  // rebias exponent 127 -> 15
  r += 0xfffu + ((r >> 13) & 1u);
  return sign | static_cast<uint16_t>(r >> 13);
}

template <float (*ToF)(uint16_t), uint16_t (*FromF)(float), int kOp>
void Reduce16(void* in, void* inout, int* len, MPI_Datatype*) {
  const auto* a = static_cast<const uint16_t*>(in);
  auto* b = static_cast<uint16_t*>(inout);
  for (int i = 0; i < *len; ++i) {
    const float x = ToF(a[i]), y = ToF(b[i]);
    const float r = kOp == 0 ? x + y : kOp == 1 ? (x > y ? x : y) : (x < y ? x : y);
    b[i] = FromF(r);
  }
}

std::string MpiErrorString(int code) {
  char buf[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(code, buf, &len);
  return std::string(buf, len);
}

class MpiWork : public Work {
 public:
  MpiWork(std::string what, std::chrono::milliseconds timeout)
      : what_(std::move(what)), timeout_(timeout) {}
  Status Wait() override {
    std::unique_lock<std::mutex> l(m_);
    if (!cv_.wait_for(l, timeout_, [&] { return done_; })) {
      return Status(StatusCode::kDeadlineExceeded,
                    what_ + " did not complete within " +
                        std::to_string(timeout_.count() / 1000.0).substr(0, 6) +
                        " s: a peer rank is dead, hung, or did not issue it");
    }
    return status_;
  }
  void Finish(Status s) {
    {
      std::lock_guard<std::mutex> l(m_);
      status_ = std::move(s);
      done_ = true;
    }
    cv_.notify_all();
  }
  const std::string& what() const { return what_; }

 private:
  std::string what_;
  std::chrono::milliseconds timeout_;
  std::mutex m_;
  std::condition_variable cv_;
  bool done_ = false;
  Status status_;
};

class MpiCommunicator : public Communicator {
 public:
  explicit MpiCommunicator(const CommOptions& o) : options_(o) {}

  Status Start() {
    std::promise<Status> ready;
    auto started = ready.get_future();
    thread_ = std::thread([this, &ready] { Loop(&ready); });
    Status s = started.get();
    if (!s.ok()) {
      thread_.join();
      return s;
    }
    return Status::Ok();
  }

  ~MpiCommunicator() override {
    {
      std::lock_guard<std::mutex> l(m_);
      stopping_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

  void set_timeout(std::chrono::milliseconds t) override { options_.timeout = t; }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const char* backend() const override { return "mpi"; }

  std::shared_ptr<Work> AllReduce(Buffer buf, ReduceOp op) override {
    return Enqueue("all-reduce", buf, [=] {
      return MPI_Allreduce(MPI_IN_PLACE, buf.data, static_cast<int>(buf.count), Type(buf.dtype),
                           Op(buf.dtype, op), MPI_COMM_WORLD);
    });
  }
  std::shared_ptr<Work> ReduceScatter(Buffer in, Buffer out, ReduceOp op) override {
    if (in.count != out.count * size_ || in.dtype != out.dtype) {
      return DoneWork(InvalidArgumentError("reduce-scatter: input must hold size() outputs"));
    }
    return Enqueue("reduce-scatter", in, [=] {
      return MPI_Reduce_scatter_block(in.data, out.data, static_cast<int>(out.count),
                                      Type(in.dtype), Op(in.dtype, op), MPI_COMM_WORLD);
    });
  }
  std::shared_ptr<Work> AllGather(Buffer buf) override {
    if (buf.count % size_ != 0) {
      return DoneWork(InvalidArgumentError("all-gather: count not a multiple of size()"));
    }
    return Enqueue("all-gather", buf, [=] {
      return MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf.data,
                           static_cast<int>(buf.count / size_), Type(buf.dtype), MPI_COMM_WORLD);
    });
  }
  std::shared_ptr<Work> Broadcast(Buffer buf, int root) override {
    return Enqueue("broadcast", buf, [=] {
      return MPI_Bcast(buf.data, static_cast<int>(buf.count), Type(buf.dtype), root,
                       MPI_COMM_WORLD);
    });
  }
  std::shared_ptr<Work> Barrier() override {
    return Enqueue("barrier", Buffer{}, [] { return MPI_Barrier(MPI_COMM_WORLD); });
  }

  [[noreturn]] void Abort(const std::string& why, int exit_code) override {
    std::fprintf(stderr, "rmgen: rank %d aborting the job: %s\n", rank_, why.c_str());
    std::fflush(stderr);
    // From this thread while the communication thread may sit in a collective: MPI
    // implementations accept an abort from any thread in practice (OpenMPI does), and
    // nothing better is left to do.
    MPI_Abort(MPI_COMM_WORLD, exit_code);
    std::_Exit(exit_code);
  }

 private:
  MPI_Datatype Type(DType t) const {
    switch (t) {
      case DType::kFloat32: return MPI_FLOAT;
      case DType::kFloat64: return MPI_DOUBLE;
      case DType::kBFloat16:
      case DType::kFloat16: return MPI_UINT16_T;
      case DType::kInt64: return MPI_INT64_T;
      case DType::kInt32: return MPI_INT32_T;
      case DType::kUInt8: return MPI_UINT8_T;
    }
    return MPI_BYTE;
  }
  MPI_Op Op(DType t, ReduceOp op) const {
    const int k = static_cast<int>(op);
    if (t == DType::kBFloat16) return bf16_ops_[k];
    if (t == DType::kFloat16) return fp16_ops_[k];
    return op == ReduceOp::kSum ? MPI_SUM : op == ReduceOp::kMax ? MPI_MAX : MPI_MIN;
  }

  std::shared_ptr<Work> Enqueue(const char* name, const Buffer& buf, std::function<int()> fn) {
    if (buf.device) {
      return DoneWork(InvalidArgumentError(std::string("mpi backend: ") + name +
                                           " of a GPU buffer; GPU jobs use the nccl backend"));
    }
    if (buf.count > INT_MAX) {
      return DoneWork(InvalidArgumentError(std::string(name) + ": " + std::to_string(buf.count) +
                                           " elements is more than one MPI call carries"));
    }
    auto w = std::make_shared<MpiWork>(
        std::string(name) + " #" + std::to_string(++issued_) + " (" + std::to_string(buf.count) +
            " x " + DTypeName(buf.dtype) + ", rank " + std::to_string(rank_) + " of " +
            std::to_string(size_) + ")",
        options_.timeout);
    {
      std::lock_guard<std::mutex> l(m_);
      queue_.emplace_back(w, std::move(fn));
    }
    cv_.notify_one();
    return w;
  }

  void Loop(std::promise<Status>* ready) {
    int provided = 0;
    int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
    if (rc != MPI_SUCCESS) {
      ready->set_value(
          Status(StatusCode::kUnavailable, "MPI_Init_thread failed: " + MpiErrorString(rc)));
      return;
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    MPI_Op_create(&Reduce16<Bf16ToFloat, FloatToBf16, 0>, 1, &bf16_ops_[0]);
    MPI_Op_create(&Reduce16<Bf16ToFloat, FloatToBf16, 1>, 1, &bf16_ops_[1]);
    MPI_Op_create(&Reduce16<Bf16ToFloat, FloatToBf16, 2>, 1, &bf16_ops_[2]);
    MPI_Op_create(&Reduce16<HalfToFloat, FloatToHalf, 0>, 1, &fp16_ops_[0]);
    MPI_Op_create(&Reduce16<HalfToFloat, FloatToHalf, 1>, 1, &fp16_ops_[1]);
    MPI_Op_create(&Reduce16<HalfToFloat, FloatToHalf, 2>, 1, &fp16_ops_[2]);
    ready->set_value(Status::Ok());
    for (;;) {
      std::pair<std::shared_ptr<MpiWork>, std::function<int()>> item;
      {
        std::unique_lock<std::mutex> l(m_);
        cv_.wait(l, [&] { return stopping_ || !queue_.empty(); });
        if (queue_.empty()) break;  // stopping, and everything issued has run
        item = std::move(queue_.front());
        queue_.pop_front();
      }
      const int r = item.second();
      item.first->Finish(r == MPI_SUCCESS
                             ? Status::Ok()
                             : InternalError(item.first->what() + " failed: " + MpiErrorString(r)));
    }
    for (auto* ops : {bf16_ops_, fp16_ops_}) {
      for (int i = 0; i < 3; ++i) MPI_Op_free(&ops[i]);
    }
    MPI_Finalize();
  }

  CommOptions options_;
  int rank_ = 0, size_ = 1;
  MPI_Op bf16_ops_[3], fp16_ops_[3];
  std::thread thread_;
  std::mutex m_;
  std::condition_variable cv_;
  std::deque<std::pair<std::shared_ptr<MpiWork>, std::function<int()>>> queue_;
  bool stopping_ = false;
  uint64_t issued_ = 0;
};

}  // namespace

StatusOr<std::unique_ptr<Communicator>> NewMpiCommunicator(const CommOptions& options) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) {
    return FailedPreconditionError("MPI is already initialized: one communicator per process");
  }
  auto c = std::make_unique<MpiCommunicator>(options);
  RETURN_IF_ERROR(c->Start());
  return std::unique_ptr<Communicator>(std::move(c));
}

}  // namespace rmgen
