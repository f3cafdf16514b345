// The job runner: one rank's whole run. It owns the communicator; any error on this rank is
// written to OUT/ranks/failure-R.json and, with several ranks, ends the job at once.
#include <c10/util/Exception.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <new>
#include <thread>
#include <vector>

#include "common/file.h"
#include "jobspec/run_dir.h"
#include "worker/comm/communicator.h"
#include "worker/train/run_files.h"
#include "worker/train/trainer.h"
#include "worker/train/training.h"

namespace rmgen {

namespace fs = std::filesystem;

StatusOr<FaultInjection> FaultInjection::Parse(const std::string& text) {
  FaultInjection f;
  bool have_phase = false;
  size_t pos = 0;
  while (pos <= text.size()) {
    const size_t comma = std::min(text.find(',', pos), text.size());
    const std::string part = text.substr(pos, comma - pos);
    pos = comma + 1;
    const size_t eq = part.find('=');
    if (eq == std::string::npos) {
      return InvalidArgumentError("--fault: '" + part + "' is not KEY=VALUE");
    }
    const std::string key = part.substr(0, eq), value = part.substr(eq + 1);
    char* end = nullptr;
    if (key == "rank" || key == "step") {
      const long long v = std::strtoll(value.c_str(), &end, 10);
      if (value.empty() || *end != '\0' || v < 0 || v > (1ll << 30)) {
        return InvalidArgumentError("--fault: " + key + " must be an integer >= 0, got '" + value +
                                    "'");
      }
      if (key == "rank") f.rank = static_cast<int>(v);
      if (key == "step") f.step = v;
    } else if (key == "phase") {
      static const char* kPhases[] = {"setup", "reference",  "load", "broadcast",
                                      "step",  "checkpoint", "eval", "finish"};
      if (std::find(std::begin(kPhases), std::end(kPhases), value) == std::end(kPhases)) {
        return InvalidArgumentError("--fault: unknown phase '" + value +
                                    "' (setup, reference, load, broadcast, step, checkpoint, "
                                    "eval, finish)");
      }
      f.phase = value;
      have_phase = true;
    } else if (key == "action") {
      static const char* kActions[] = {"error", "invalid", "throw", "exit", "kill", "hang", "slow"};
      if (std::find(std::begin(kActions), std::end(kActions), value) == std::end(kActions)) {
        return InvalidArgumentError("--fault: unknown action '" + value +
                                    "' (error, invalid, throw, exit, kill, hang, slow)");
      }
      f.action = value;
    } else {
      return InvalidArgumentError("--fault: unknown key '" + key + "' (rank, phase, step, action)");
    }
  }
  if (f.rank < 0 || !have_phase) return InvalidArgumentError("--fault needs rank= and phase=");
  if (f.action == "slow" && f.phase != "step") {
    return InvalidArgumentError("--fault: action slow is for phase step only");
  }
  return f;
}

namespace {

int64_t WallMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string HostName() {
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  return host;
}

}  // namespace

// The job runner: owns the communicator; any error on this rank is recorded and, with
// several ranks, ends the job at once.
Status RunJob(const JobSpec& spec_in, const std::string& out_dir, const RunOptions& options,
              RankFailure* failure_out) {
  const RankLayout layout = RankLayout::FromEnvironment();
  RankFailure failure;
  failure.rank = layout.rank;
  failure.host = HostName();
  failure.pid = getpid();
  // Records this rank's failure (best effort: the folder may be what failed).
  auto record = [&](const Status& st, Cause cause, const std::string& phase) {
    failure.cause = cause;
    failure.phase = phase;
    failure.message = st.message();
    failure.unix_ms = WallMs();
    (void)WriteRankFailure(out_dir, failure);
    if (failure_out != nullptr) *failure_out = failure;
    return st;
  };
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) {
    return record(InternalError(out_dir + ": cannot create (" + ec.message() + ")"), Cause::kError,
                  "setup");
  }
  fs::remove(run_dir::RankFailure(out_dir, layout.rank), ec);  // an earlier attempt's
  if (spec_in.device != "cpu" && !torch::cuda::is_available()) {
    return record(FailedPreconditionError("runtime.device is '" + spec_in.device +
                                          "' but no CUDA device is usable here (libtorch " +
                                          TORCH_VERSION + ")"),
                  Cause::kNoDevice, "setup");
  }
  JobSpec spec = spec_in;
  if (spec.device == "cuda") {
    // One GPU per rank on a node: local rank -> device.
    spec.device = "cuda:" + std::to_string(layout.local_rank %
                                           std::max<int64_t>(1, torch::cuda::device_count()));
  }
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  torch::set_num_threads(
      spec.threads > 0 ? spec.threads : std::max(1, int(cores) / std::max(1, layout.local_size)));
  CommOptions co;
  co.device = spec.device;
  co.timeout = std::chrono::milliseconds(static_cast<int64_t>(spec.comm_timeout_s * 1000));
  auto comm = CreateCommunicator(layout, co);
  if (!comm.ok()) {
    // No communicator, no abort: this rank exits, and mpirun or srun (--kill-on-bad-exit)
    // ends the others.
    return record(comm.status().WithContext("starting the communicator"), Cause::kCommFailure,
                  "setup");
  }
  Communicator* c = comm->get();
  std::string phase = "setup";
  if (c->size() > 1) WriteRankProgress(out_dir, c->rank(), 0, "setup");
  if (c->rank() == 0) {
    // Failure records of ranks this attempt does not have (an earlier attempt had more).
    std::vector<fs::path> stale;
    for (const auto& e : fs::directory_iterator(run_dir::RanksDir(out_dir), ec)) {
      int r = -1;
      const std::string f = e.path().filename().string();
      if (std::sscanf(f.c_str(), "failure-%d.json", &r) == 1 && r >= c->size()) {
        stale.push_back(e.path());
      }
    }
    for (const auto& p : stale) fs::remove(p, ec);
  }
  Status st;
  if (c->rank() == 0) {
    st = WriteFileAtomic(run_dir::Join(out_dir, run_dir::kSpecResolved),
                         spec_in.resolved.dump(2) + "\n");
  }
  if (st.ok()) {
    try {
      st = RunTrainer(spec, out_dir, options, c, &phase);
    } catch (const c10::OutOfMemoryError& e) {  // device memory: the job does not fit
      st = Status(StatusCode::kResourceExhausted,
                  std::string("out of device memory: ") + e.what_without_backtrace());
    } catch (const std::bad_alloc& e) {  // host memory
      st = Status(StatusCode::kResourceExhausted, std::string("out of host memory: ") + e.what());
    } catch (const std::exception& e) {
      st = InternalError(std::string("an exception: ") + e.what());
    }
  }
  if (st.ok() || st.code() == StatusCode::kCancelled) return st;
  const Cause cause = CauseOfStatus(st.code());
  (void)record(st, cause, phase);
  if (c->size() > 1) {
    // The others may be waiting in a collective this rank will never join: end them all.
    c->Abort(failure.Describe(), static_cast<int>(ExitFor(cause)));
  }
  return st;
}

}  // namespace rmgen
