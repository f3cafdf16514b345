// The worker agent: one per node (or per Slurm allocation). It registers its slots with the
// coordinator, keeps its lease with heartbeats, takes jobs (long-poll AcquireJob), writes each
// attempt's resolved spec, starts its ranks through a Launcher under a supervisor
// (supervisor.h), relays the job's events.jsonl as it grows, and reports the end: metrics.json
// on success, or the exit status and the tail of the ranks' log on failure.
//
// State on disk (state_dir), so a restarted agent loses nothing:
//   instance                     this agent's random key, sent when registering (the
//                                coordinator answers a session that every later call carries)
//   lease                        the deadline the supervisors enforce (half a lease ahead)
//   attempts/<job>.<attempt>/    record.json (job, output folder, supervisor pid, events
//                                relayed, reported), spec.json, exit.json (from the supervisor)
//   quarantine/                  attempt folders whose record.json could not be read
// The ranks' log of attempt N is <output dir>/logs/attempt-N.log, next to the checkpoints.
//
// How an attempt ended (jobspec/outcome.h, ClassifyEnd): from the agent's own failure, the
// supervisor's exit.json (exit status, signal, stopped or lease lost), and the first rank
// failure record the ranks wrote (OUT/ranks/failure-R.json), the agent reports a cause; its
// class decides whether the coordinator retries (transient: a killed rank, a lost lease, a
// communication failure, a node failure) or ends the job (permanent: invalid spec, bad or
// missing input, an incompatible or corrupt checkpoint, no device). Exit 0 with metrics.json
// is a success; an attempt stopped because the agent stops is preempted (requeued without
// using up an attempt); a cancelled one reports nothing.
//
// Job output is input: bad events.jsonl lines are skipped and counted, never fatal; what is
// sent is bounded and valid UTF-8; calls refused for their content are split, shrunk or
// dropped, never retried as they were (README.md: "Hostile job output, refused calls").
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/status.h"
#include "worker/agent/launcher.h"

namespace rmgen::agent {

struct AgentOptions {
  std::string coordinator = "127.0.0.1:7070";
  std::string token;              // bearer token with the worker role ("" = none)
  std::string tls_ca;             // PEM: TLS to the coordinator
  std::string tls_cert, tls_key;  // PEM: this agent's client certificate, when required
  std::string id;                 // stable worker id
  std::string host;
  int64_t slots = 1;
  // Device memory of one slot, reported at registration (the coordinator refuses jobs that
  // fit on no worker); 0: not reported. rmgen-worker: --memory-per-slot, DetectMemoryPerSlot.
  int64_t memory_bytes_per_slot = 0;
  nlohmann::json labels = nlohmann::json::object();
  std::string state_dir = "rmgen-worker-state";
  std::string workdir;  // the ranks' working directory ("" = the agent's)
  // The binary (and arguments) that run `... supervise`: rmgen-worker, or rmgen for `local`.
  std::vector<std::string> supervisor_exe;
  int64_t grace_ms = 30'000;  // SIGTERM -> SIGKILL
  int64_t poll_ms = 200;      // events and exits
  bool verbose = true;        // one line per job start and end on stderr
};

// This process's executable (the agent starts supervisors with it).
std::string SelfExecutable();
// rmgen-train: $RMGEN_TRAIN, else next to this executable (installed), else where the build
// tree puts it (worker/train/), else "rmgen-train" on PATH.
std::string DefaultTrainBin();

// Memory of one slot on this node: the smallest GPU's total memory (nvidia-smi) on a GPU
// node, else the machine's RAM (/proc/meminfo MemTotal) divided by `slots`; 0 when neither
// can be read.
int64_t DetectMemoryPerSlot(int64_t slots);
// "--memory-per-slot" values: bytes, optionally with a unit (K, M, G, T: powers of 1000;
// KiB, MiB, GiB, TiB: of 1024; a trailing B is allowed: GB, MB).
StatusOr<int64_t> ParseMemoryBytes(const std::string& text);

class Agent {
 public:
  Agent(AgentOptions options, std::unique_ptr<Launcher> launcher);
  ~Agent();
  // Runs until *stop turns true, then stops its running attempts (SIGTERM: they checkpoint),
  // reports them as preempted, and returns. Errors: the state folder is unusable, or the
  // coordinator refuses this agent at start-up (bad token, bad id; kAlreadyExists: another
  // agent holds this id with a live lease).
  Status Run(const std::atomic<bool>* stop);
  // Prometheus text: running attempts, relay lag, events relayed, attempts started, ended
  // and recovered (restarts), registrations. Safe from any thread while Run runs.
  std::string MetricsText();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace rmgen::agent
