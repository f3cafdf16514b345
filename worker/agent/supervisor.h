// The supervisor: one small process per job attempt, between the agent and the ranks.
//
//   <exe> supervise --dir ATTEMPT_DIR --log FILE --lease-file FILE --grace-ms MS --tag TAG
//                   [--stop ranks|launcher] -- ARGV...
//
// It starts ARGV in a new process group (stdout and stderr appended to FILE, RMGEN_ATTEMPT_TAG
// set to TAG in its environment, RMGEN_TOKEN and every RMGEN_TOKEN* variable removed from it:
// the ranks run any program a study names, and get no credentials), waits for it, and writes
// ATTEMPT_DIR/exit.json ({exit_code, signal, cause, ended_ms}) atomically when it ends. It
// lives in its own session, so the attempt outlives its agent: a restarted agent finds the job
// still running (or its exit.json) and reports it instead of losing it.
//
// It stops the ranks (one SIGTERM each: to the processes carrying TAG other than the launcher
// with --stop ranks, to the launcher with --stop launcher; after the grace period SIGKILL to
// the whole group and to anything still carrying TAG, so nothing is orphaned) when:
//   - it gets SIGTERM (the agent cancels the job, or shuts down): cause "stopped";
//   - the lease file's first deadline passes (cause "lease lost"). The agent writes there,
//     after every heartbeat the coordinator answered, two deadlines: half a lease ahead (stop)
//     and 90% of a lease ahead (SIGKILL, whatever the grace period). So when the agent dies
//     or loses the coordinator, the ranks are gone before the coordinator's lease on the job
//     ends and it hands the job to another agent: an attempt never runs twice.
//     The lease fails closed: a lease file that cannot be read, or holds no deadline, for a
//     second (over three polls or more; a file replaced by rename is never missing) counts
//     as expired, with the reason in the log. Meanwhile the deadlines last read still hold.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "common/status.h"
#include "jobspec/outcome.h"

namespace rmgen::agent {

struct SuperviseArgs {
  std::string dir;         // attempt folder: exit.json goes here
  std::string log;         // the ranks' stdout + stderr
  std::string lease_file;  // "" = no lease
  int64_t grace_ms = 30'000;
  std::string tag;
  std::string workdir;            // the ranks' working directory ("" = inherited)
  std::string stop = "launcher";  // Launcher::stop_mode()
  std::vector<std::string> argv;
};

// The `supervise` mode; returns the process exit code.
int SuperviseMain(const std::vector<std::string>& args);

// Starts `exe supervise ...` detached (its own session), with this process's environment
// less RMGEN_TOKEN*; returns its pid. `exe_prefix` is the binary and any arguments that
// select supervise mode, e.g. {"/usr/bin/rmgen-worker"}.
StatusOr<pid_t> StartSupervisor(const std::vector<std::string>& exe_prefix,
                                const SuperviseArgs& args);

// Removes RMGEN_TOKEN and every RMGEN_TOKEN* variable from this process's environment (what
// its children inherit). setenv-unsafe: call before starting threads, or in a forked child.
void DropTokenVariables();

// exit.json (jobspec/outcome.h, AttemptExit), once the attempt has ended.
// NotFound while it runs; DataLoss when exit.json is not a JSON object or a field has the
// wrong type (never throws).
StatusOr<AttemptExit> ReadExit(const std::string& dir);

// Whether `pid` is alive and is the supervisor carrying `tag` (pids are reused).
bool SupervisorAlive(pid_t pid, const std::string& tag);

// Sends SIGTERM to `pid` only if it is still the supervisor carrying `tag` (SupervisorAlive):
// a pid the system gave to another process since is left alone. Whether it was sent.
bool SignalSupervisor(pid_t pid, const std::string& tag);

// Supervisors on this node started for attempt folder `dir` (`supervise ... --dir DIR`),
// whatever their tag: how the agent finds the ranks of an attempt whose record is lost.
std::vector<pid_t> SupervisorsOf(const std::string& dir);

// Processes whose environment carries RMGEN_ATTEMPT_TAG=tag (this node only).
std::vector<pid_t> TaggedProcesses(const std::string& tag);

// The lease file: "STOP KILL", two deadlines in Unix milliseconds (KILL 0: none).
Status WriteLease(const std::string& path, int64_t stop_ms, int64_t kill_ms = 0);

int64_t WallMs();
int64_t MonoMs();  // the monotonic clock, for durations

}  // namespace rmgen::agent
