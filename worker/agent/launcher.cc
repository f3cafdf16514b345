#include "worker/agent/launcher.h"

#include <utility>

namespace rmgen::agent {
namespace {

std::vector<std::string> TrainArgs(const std::string& bin, const LaunchSpec& j) {
  return {bin, "--spec", j.spec_path, "--out", j.out_dir, "--quiet"};
}

void Append(std::vector<std::string>* out, const std::vector<std::string>& more) {
  out->insert(out->end(), more.begin(), more.end());
}

Status CheckRanks(const LaunchSpec& j) {
  if (j.ranks < 1) {
    return InvalidArgumentError("job " + j.job_id + ": ranks must be >= 1, got " +
                                std::to_string(j.ranks));
  }
  return Status::Ok();
}

class MpirunLauncher : public Launcher {
 public:
  explicit MpirunLauncher(LauncherOptions o) : o_(std::move(o)) {}
  std::string name() const override { return "mpirun"; }
  std::string stop_mode() const override { return "ranks"; }
  // (An agent over its own multi-node hostfile is one worker for the scheduler: it spans
  // its own hosts, not other workers'.)
  bool spans_hosts() const override { return o_.hostfile.empty(); }
  StatusOr<std::vector<std::string>> Command(const LaunchSpec& j) const override {
    RETURN_IF_ERROR(CheckRanks(j));
    const std::string& hostfile = !j.hostfile.empty() ? j.hostfile : o_.hostfile;
    if (j.ranks == 1 && hostfile.empty()) return TrainArgs(o_.train_bin, j);
    std::vector<std::string> argv = {o_.mpirun};
    if (o_.as_root) argv.push_back("--allow-run-as-root");
    if (!hostfile.empty()) {
      Append(&argv, {"--hostfile", hostfile});
    } else if (o_.local_cores > 0 && j.ranks > o_.local_cores) {
      // More ranks than cores on one node (a CPU test box): let them share cores.
      Append(&argv, {"--oversubscribe", "--bind-to", "none"});
    }
    Append(&argv, {"-np", std::to_string(j.ranks)});
    Append(&argv, o_.extra);
    Append(&argv, TrainArgs(o_.train_bin, j));
    return argv;
  }

 private:
  LauncherOptions o_;
};

class SlurmLauncher : public Launcher {
 public:
  explicit SlurmLauncher(LauncherOptions o) : o_(std::move(o)) {}
  std::string name() const override { return "slurm"; }
  StatusOr<std::vector<std::string>> Command(const LaunchSpec& j) const override {
    RETURN_IF_ERROR(CheckRanks(j));
    if (!j.hostfile.empty()) {
      return InvalidArgumentError("job " + j.job_id +
                                  ": placed over several workers, but the slurm launcher runs "
                                  "srun steps inside its own allocation only");
    }
    std::vector<std::string> argv = {
        o_.srun, "--ntasks=" + std::to_string(j.ranks), "--exclusive", "--kill-on-bad-exit=1",
        "--job-name=rmgen-" + j.job_id + "." + std::to_string(j.attempt)};
    if (o_.gpus_per_rank > 0) {
      // Slurm binds each task to its GPUs (CUDA_VISIBLE_DEVICES); the rank then takes
      // device local_rank % visible = its own.
      argv.push_back("--gpus-per-task=" + std::to_string(o_.gpus_per_rank));
    }
    if (!o_.srun_mpi.empty() && j.ranks > 1) argv.push_back("--mpi=" + o_.srun_mpi);
    Append(&argv, o_.extra);
    Append(&argv, TrainArgs(o_.train_bin, j));
    return argv;
  }

 private:
  LauncherOptions o_;
};

class CommandLauncher : public Launcher {
 public:
  explicit CommandLauncher(LauncherOptions o) : o_(std::move(o)) {}
  std::string name() const override { return "command"; }
  StatusOr<std::vector<std::string>> Command(const LaunchSpec& j) const override {
    RETURN_IF_ERROR(CheckRanks(j));
    std::vector<std::string> argv = o_.command;
    Append(&argv, {"--spec", j.spec_path, "--out", j.out_dir});
    return argv;
  }

 private:
  LauncherOptions o_;
};

}  // namespace

StatusOr<std::unique_ptr<Launcher>> MakeLauncher(const LauncherOptions& o) {
  if (o.kind == "mpirun") return std::unique_ptr<Launcher>(new MpirunLauncher(o));
  if (o.kind == "slurm") return std::unique_ptr<Launcher>(new SlurmLauncher(o));
  if (o.kind == "command") {
    if (o.command.empty()) return InvalidArgumentError("launcher 'command' needs a program");
    return std::unique_ptr<Launcher>(new CommandLauncher(o));
  }
  return InvalidArgumentError("unknown launcher '" + o.kind + "' (mpirun, slurm or command)");
}

}  // namespace rmgen::agent
