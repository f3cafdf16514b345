// rmgen-train: the rank program. One job spec in, checkpoints + metrics + events out.
//   rmgen-train --spec job.yaml --out DIR [--quiet]
// Exit codes: 0 done, 1 failed (message on stderr), 2 usage or invalid spec,
// 3 stopped early with a checkpoint (resumable).
#include <cstdio>
#include <cstring>
#include <string>

#include "worker/train/trainer.h"

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
  rmgen::Status st = rmgen::RunJob(*spec, out, options);
  if (st.code() == rmgen::StatusCode::kCancelled) {
    std::fprintf(stderr, "rmgen-train: %s\n", st.message().c_str());
    return 3;
  }
  if (!st.ok()) {
    std::fprintf(stderr, "rmgen-train: %s\n", st.message().c_str());
    return 1;
  }
  return 0;
}
