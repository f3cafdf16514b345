#include "worker/comm/communicator.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

extern char** environ;

namespace rmgen {

const char* DTypeName(DType t) {
  switch (t) {
    case DType::kFloat32: return "float32";
    case DType::kFloat64: return "float64";
    case DType::kBFloat16: return "bfloat16";
    case DType::kFloat16: return "float16";
    case DType::kInt64: return "int64";
    case DType::kInt32: return "int32";
    case DType::kUInt8: return "uint8";
  }
  return "?";
}

size_t DTypeSize(DType t) {
  switch (t) {
    case DType::kFloat64:
    case DType::kInt64: return 8;
    case DType::kFloat32:
    case DType::kInt32: return 4;
    case DType::kBFloat16:
    case DType::kFloat16: return 2;
    case DType::kUInt8: return 1;
  }
  return 1;
}

namespace {

bool ParseInt(const std::map<std::string, std::string>& env, const char* name, int* out) {
  auto it = env.find(name);
  if (it == env.end() || it->second.empty()) return false;
  char* end = nullptr;
  const long v = std::strtol(it->second.c_str(), &end, 10);
  if (*end != '\0' || v < 0) return false;
  *out = static_cast<int>(v);
  return true;
}

class DoneWorkImpl : public Work {
 public:
  explicit DoneWorkImpl(Status s) : s_(std::move(s)) {}
  Status Wait() override { return s_; }

 private:
  Status s_;
};

class SingleCommunicator : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  const char* backend() const override { return "single"; }
  std::shared_ptr<Work> AllReduce(Buffer, ReduceOp) override { return DoneWork(); }
  std::shared_ptr<Work> ReduceScatter(Buffer in, Buffer out, ReduceOp) override {
    if (in.count != out.count || in.dtype != out.dtype) {
      return DoneWork(InvalidArgumentError("reduce-scatter: 1 rank needs equal buffers"));
    }
    if (in.data != out.data) {
      // A host copy; on a GPU the single backend is only used with host buffers or equal
      // pointers (the data-parallel engine passes views of one allocation).
      if (in.device) return DoneWork(UnimplementedError("single backend: device copy"));
      std::memcpy(out.data, in.data, in.bytes());
    }
    return DoneWork();
  }
  std::shared_ptr<Work> AllGather(Buffer) override { return DoneWork(); }
  std::shared_ptr<Work> Broadcast(Buffer, int) override { return DoneWork(); }
  std::shared_ptr<Work> Barrier() override { return DoneWork(); }
  [[noreturn]] void Abort(const std::string& why, int exit_code) override {
    std::fprintf(stderr, "rmgen: aborting: %s\n", why.c_str());
    std::fflush(stderr);
    std::_Exit(exit_code);
  }
};

}  // namespace

std::shared_ptr<Work> DoneWork(Status status) {
  return std::make_shared<DoneWorkImpl>(std::move(status));
}

RankLayout RankLayout::FromEnvironment(const std::map<std::string, std::string>& env) {
  RankLayout l;
  int rank = 0, size = 0;
  if (ParseInt(env, "OMPI_COMM_WORLD_RANK", &rank) &&
      ParseInt(env, "OMPI_COMM_WORLD_SIZE", &size)) {
    l.source = "OMPI_COMM_WORLD";
    ParseInt(env, "OMPI_COMM_WORLD_LOCAL_RANK", &l.local_rank);
    ParseInt(env, "OMPI_COMM_WORLD_LOCAL_SIZE", &l.local_size);
  } else if (ParseInt(env, "PMIX_RANK", &rank) && ParseInt(env, "SLURM_NTASKS", &size)) {
    l.source = "PMIX";
    ParseInt(env, "SLURM_LOCALID", &l.local_rank);
    if (!ParseInt(env, "SLURM_NTASKS_PER_NODE", &l.local_size)) l.local_size = size;
  } else if (ParseInt(env, "SLURM_PROCID", &rank) && ParseInt(env, "SLURM_NTASKS", &size)) {
    l.source = "SLURM";
    ParseInt(env, "SLURM_LOCALID", &l.local_rank);
    if (!ParseInt(env, "SLURM_NTASKS_PER_NODE", &l.local_size)) l.local_size = size;
  } else {
    return l;
  }
  if (size < 1 || rank >= size) return RankLayout{};
  l.rank = rank;
  l.size = size;
  if (l.local_size < 1) l.local_size = 1;
  if (l.local_rank >= l.local_size) l.local_rank = l.local_rank % l.local_size;
  return l;
}

RankLayout RankLayout::FromEnvironment() {
  std::map<std::string, std::string> env;
  for (char** e = environ; e && *e; ++e) {
    const char* eq = std::strchr(*e, '=');
    if (eq) env.emplace(std::string(*e, eq - *e), std::string(eq + 1));
  }
  return FromEnvironment(env);
}

std::unique_ptr<Communicator> NewSingleCommunicator() {
  return std::make_unique<SingleCommunicator>();
}

StatusOr<std::unique_ptr<Communicator>> CreateCommunicator(const RankLayout& layout,
                                                           const CommOptions& options) {
  if (layout.size <= 1) return NewSingleCommunicator();
  if (options.device.rfind("cuda", 0) == 0) {
    auto c = NewNcclCommunicator(layout, options);
    if (!c.ok()) return c.status().WithContext("rank " + std::to_string(layout.rank));
    return c;
  }
  auto c = NewMpiCommunicator(options);
  if (!c.ok()) return c.status().WithContext("rank " + std::to_string(layout.rank));
  if ((*c)->size() != layout.size || (*c)->rank() != layout.rank) {
    return InternalError("MPI says rank " + std::to_string((*c)->rank()) + " of " +
                         std::to_string((*c)->size()) + " but " + layout.source + " says " +
                         std::to_string(layout.rank) + " of " + std::to_string(layout.size));
  }
  return c;
}

}  // namespace rmgen
