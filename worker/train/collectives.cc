#include "worker/train/collectives.h"

#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "common/file.h"
#include "jobspec/run_dir.h"
#include "worker/data/batching.h"
#include "worker/data/catalog.h"
#include "worker/model/checkpoint.h"
#include "worker/train/data_parallel.h"

namespace rmgen {

namespace fs = std::filesystem;
using nlohmann::json;

// Every rank agrees on `local` (OK only when it is OK on every rank); a rank that failed
// contributes its message to the log, the others learn that one failed.
Status Agree(Communicator* comm, const Status& local, torch::Device device, const char* what) {
  if (comm->size() == 1) return local;
  auto flag = torch::full({1}, local.ok() ? 0.0f : 1.0f,
                          torch::TensorOptions().dtype(torch::kFloat32).device(device));
  Status s = comm->AllReduce(TensorBuffer(flag), ReduceOp::kMax)->Wait();
  if (!s.ok()) return s;
  if (!local.ok()) return local;
  if (flag.item<float>() != 0.0f) {
    // A consequence (a communication failure), so the failing rank's own record names the
    // job's cause.
    return Status(StatusCode::kUnavailable,
                  std::string(what) + " failed on another rank (see its log)");
  }
  return Status::Ok();
}

}  // namespace rmgen
