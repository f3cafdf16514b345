// rmgen-train: the rank program. One job spec in, checkpoints + metrics + events out.
//   rmgen-train --spec job.yaml --out DIR [--quiet] [--stop-after-steps N]
//               [--fault rank=R,phase=P[,step=S],action=A]
// Exit codes (jobspec/outcome.h, TrainExit): 0 done; 1 failed, transient (another attempt may
// succeed); 2 failed, permanent: usage, an invalid spec, or input that is missing, invalid or
// incompatible (another attempt would fail the same way); 3 stopped early with a checkpoint
// (resumable). A failing rank also writes OUT/ranks/failure-R.json with its cause and phase.
//
// SIGTERM (or SIGINT) stops after the current step with a checkpoint (exit 3); a second one
// ends the process at once. Several ranks: run under mpirun or srun (see trainer.h).
// --fault is the tests' seam for failures (trainer.h, FaultInjection).
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>

#include "worker/comm/communicator.h"
#include "worker/train/trainer.h"

namespace {

std::atomic<bool> g_stop{false};

void OnTerminate(int) {
  if (g_stop.exchange(true)) _exit(143);
  static const char msg[] = "rmgen-train: stop requested; stopping after this step\n";
  (void)!write(2, msg, sizeof(msg) - 1);
}

constexpr const char* kUsage =
    "usage: rmgen-train --spec JOB.yaml --out DIR [--quiet] [--stop-after-steps N] "
    "[--fault rank=R,phase=P[,step=S],action=A]\n";

int Exit(rmgen::TrainExit e) { return static_cast<int>(e); }

}  // namespace

int main(int argc, char** argv) {
  std::string spec_path, out;
  rmgen::RunOptions options;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--spec" && i + 1 < argc) {
      spec_path = argv[++i];
    } else if (a == "--out" && i + 1 < argc) {
      out = argv[++i];
    } else if (a == "--quiet") {
      options.progress = false;
    } else if (a == "--stop-after-steps" && i + 1 < argc) {
      options.stop_after_steps = std::atoll(argv[++i]);
    } else if (a == "--fault" && i + 1 < argc) {
      auto f = rmgen::FaultInjection::Parse(argv[++i]);
      if (!f.ok()) {
        std::fprintf(stderr, "rmgen-train: %s\n", f.status().message().c_str());
        return Exit(rmgen::TrainExit::kPermanent);
      }
      options.fault = *f;
    } else {
      std::fputs(kUsage, stderr);
      return Exit(rmgen::TrainExit::kPermanent);
    }
  }
  if (spec_path.empty() || out.empty()) {
    std::fputs(kUsage, stderr);
    return Exit(rmgen::TrainExit::kPermanent);
  }
  auto spec = rmgen::LoadJobSpec(spec_path);
  if (!spec.ok()) {
    // Every rank reads the same spec and fails alike: no rank waits for another here.
    std::fprintf(stderr, "rmgen-train: invalid spec: %s\n", spec.status().message().c_str());
    rmgen::RankFailure f;
    f.rank = rmgen::RankLayout::FromEnvironment().rank;
    f.cause = rmgen::Cause::kInvalidSpec;
    f.phase = "setup";
    f.message = "invalid spec: " + spec.status().message();
    f.pid = getpid();
    f.unix_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                    std::chrono::system_clock::now().time_since_epoch())
                    .count();
    (void)rmgen::WriteRankFailure(out, f);
    return Exit(rmgen::TrainExit::kPermanent);
  }
  struct sigaction sa = {};
  sa.sa_handler = OnTerminate;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  options.stop_flag = &g_stop;
  rmgen::RankFailure failure;
  rmgen::Status st = rmgen::RunJob(*spec, out, options, &failure);
  if (st.code() == rmgen::StatusCode::kCancelled) {
    std::fprintf(stderr, "rmgen-train: %s\n", st.message().c_str());
    return Exit(rmgen::TrainExit::kStopped);
  }
  if (!st.ok()) {
    std::fprintf(stderr, "rmgen-train: %s\n", failure.Describe().c_str());
    return Exit(rmgen::ExitFor(failure.cause));
  }
  return Exit(rmgen::TrainExit::kSucceeded);
}
