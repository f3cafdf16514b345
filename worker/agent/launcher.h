// Launchers: how an agent turns one job attempt into the command line that starts its ranks.
// A launcher only builds the command; the supervisor (supervisor.h) runs it in its own process
// group, logs it, and stops it. So launchers are plain functions of their options and the job,
// and the unit tests check them without starting anything.
//
//   mpirun: this node (or the nodes of a hostfile). One rank runs rmgen-train directly (no MPI
//           start-up to pay); more ranks run under `mpirun -np N`. A job the coordinator
//           placed over several workers comes with a hostfile of their hosts and slots
//           (LaunchSpec::hostfile, this worker's host first): mpirun starts every rank of it,
//           on this node and, through its remote launcher (ssh, or plm_rsh_agent), on theirs.
//   slurm:  inside a Slurm allocation: every attempt is one `srun` step with the job's rank
//           count, its own CPUs (--exclusive) and, on GPU nodes, one GPU per rank.
//   command: a fixed program in place of rmgen-train (unit tests, and a fake for dry runs); it
//           is given the same `--spec FILE --out DIR` arguments.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"

namespace rmgen::agent {

struct LaunchSpec {
  std::string job_id;
  int64_t attempt = 1;
  int64_t ranks = 1;
  std::string spec_path;  // the resolved spec, written by the agent
  std::string out_dir;    // the job's shared folder (checkpoints, events, metrics)
  // A job placed over several workers: "host slots=N" lines, one per placed worker.
  std::string hostfile;
};

class Launcher {
 public:
  virtual ~Launcher() = default;
  virtual std::string name() const = 0;
  // The argv that starts every rank of the attempt.
  virtual StatusOr<std::vector<std::string>> Command(const LaunchSpec& job) const = 0;
  // How to stop an attempt so each rank gets exactly one SIGTERM (a second one ends
  // rmgen-train at once, without its checkpoint): "ranks" signals the processes of the attempt
  // other than the launcher (mpirun would kill the job a few seconds after a SIGTERM of its
  // own); "launcher" signals the launcher, which forwards it (srun; or the rank itself).
  virtual std::string stop_mode() const { return "launcher"; }
  // Whether it can start ranks on other workers' hosts (a job spread over several workers).
  virtual bool spans_hosts() const { return false; }
};

struct LauncherOptions {
  std::string kind = "mpirun";            // mpirun | slurm | command
  std::string train_bin = "rmgen-train";  // the rank program
  // mpirun
  std::string mpirun = "mpirun";
  std::string hostfile;     // several nodes; empty: this node only
  bool as_root = false;     // add --allow-run-as-root (only ever set when running as root)
  int64_t local_cores = 0;  // this node's cores: more ranks than that run oversubscribed
  // slurm
  std::string srun = "srun";
  int64_t gpus_per_rank = 0;  // 0 on CPU nodes
  std::string srun_mpi;       // --mpi=... for multi-rank steps ("" = the cluster's default)
  // command
  std::vector<std::string> command;
  // Passed through to mpirun / srun before the program.
  std::vector<std::string> extra;
};

StatusOr<std::unique_ptr<Launcher>> MakeLauncher(const LauncherOptions& options);

}  // namespace rmgen::agent
