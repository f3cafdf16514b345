// rmgen-train: the rank program. One job spec in, checkpoints + metrics + events out.
//   rmgen-train --spec job.yaml --out DIR [--quiet]
// Exit codes: 0 done; 1 failed (message on stderr; another attempt may succeed); 2 usage, an
// invalid spec, or input that is not there or not valid (a missing dataset, checkpoint or
// tokenizer, a broken record): another attempt would fail the same way; 3 stopped early with a
// checkpoint (resumable).
//
// SIGTERM (or SIGINT) stops after the current step with a checkpoint (exit 3); a second one
// ends the process at once. Several ranks: run under mpirun or srun (see trainer.h).
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <string>

#include "worker/train/trainer.h"

namespace {

std::atomic<bool> g_stop{false};

void OnTerminate(int) {
  if (g_stop.exchange(true)) _exit(143);
  static const char msg[] = "rmgen-train: stop requested; stopping after this step\n";
  (void)!write(2, msg, sizeof(msg) - 1);
}

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
    } else {
      std::fprintf(stderr,
                   "usage: rmgen-train --spec JOB.yaml --out DIR [--quiet] "
                   "[--stop-after-steps N]\n");
      return 2;
    }
  }
  if (spec_path.empty() || out.empty()) {
    std::fprintf(stderr, "usage: rmgen-train --spec JOB.yaml --out DIR [--quiet]\n");
    return 2;
  }
  auto spec = rmgen::LoadJobSpec(spec_path);
  if (!spec.ok()) {
    std::fprintf(stderr, "rmgen-train: invalid spec: %s\n", spec.status().message().c_str());
    return 2;
  }
  struct sigaction sa = {};
  sa.sa_handler = OnTerminate;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  options.stop_flag = &g_stop;
  rmgen::Status st = rmgen::RunJob(*spec, out, options);
  if (st.code() == rmgen::StatusCode::kCancelled) {
    std::fprintf(stderr, "rmgen-train: %s\n", st.message().c_str());
    return 3;
  }
  if (!st.ok()) {
    std::fprintf(stderr, "rmgen-train: %s\n", st.message().c_str());
    const bool input = st.code() == rmgen::StatusCode::kInvalidArgument ||
                       st.code() == rmgen::StatusCode::kNotFound;
    return input ? 2 : 1;
  }
  return 0;
}
