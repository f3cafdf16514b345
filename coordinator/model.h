// The coordinator's records: studies, jobs (with their attempts), workers, events and
// results, and the job state machine of DESIGN.md "Jobs":
//
//   PENDING (waiting on dependencies) -> QUEUED -> ASSIGNED (lease + attempt) -> RUNNING
//   -> SUCCEEDED | FAILED | CANCELLED
//
// A lost lease or a retryable failure sends ASSIGNED/RUNNING back to QUEUED with attempt+1
// (up to max_attempts, then FAILED, every attempt's outcome kept in `history`). Any
// non-final state may go to CANCELLED. Final states never change.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/status.h"

namespace rmgen::coord {

enum class JobState { kPending, kQueued, kAssigned, kRunning, kSucceeded, kFailed, kCancelled };
const char* JobStateName(JobState s);
StatusOr<JobState> ParseJobState(const std::string& name);
bool IsFinal(JobState s);
// OK when `from` -> `to` is an edge of the state machine; else FAILED_PRECONDITION naming
// both.
Status CheckTransition(JobState from, JobState to);

// One try at running a job, kept after it ends.
struct Attempt {
  int64_t number = 0;   // 1, 2, ...
  std::string worker;   // who ran it
  std::string outcome;  // "" while live; "succeeded", "failed: ...", "lease expired", ...
  int64_t started_ms = 0, ended_ms = 0;
};

struct JobRecord {
  std::string id;        // "j-<study>-<n>" or "j-<n>" for a lone job
  std::string study_id;  // "" for a job submitted alone
  std::string user;      // who submitted it (the token's subject)
  std::string name;      // human label: "gemma-2b/exrm/seed0/train"
  std::string kind;      // sft | reward | dpo | eval
  nlohmann::json spec;   // the resolved rmgen-train job spec; "${output}" and "${output:ID}"
                         // stand for the job's (or job ID's) output folder
  nlohmann::json labels = nlohmann::json::object();  // {model, method, seed, role} in studies
  std::vector<std::string> deps;                     // job ids that must succeed first
  int64_t ranks = 1;     // processes (GPUs, or CPU ranks) the job needs at once
  int64_t priority = 0;  // higher first
  int64_t seq = 0;       // submission order (FIFO within a priority)
  JobState state = JobState::kPending;
  std::string reason;   // why pending/queued, or why it failed
  int64_t attempt = 0;  // the current (or last) attempt number; 0 before the first
  int64_t max_attempts = 3;
  std::string worker;  // assigned worker while ASSIGNED/RUNNING (the first, for a gang)
  // Where its ranks run while ASSIGNED/RUNNING: [{"worker": ID, "ranks": N}, ...].
  nlohmann::json placement = nlohmann::json::array();
  int64_t lease_deadline_ms = 0;
  std::vector<Attempt> history;
  int64_t created_ms = 0, updated_ms = 0;
  int64_t version = 0;  // bumped by every write; writes must name the version they read
};

struct StudyRecord {
  std::string id;          // "s-<n>"
  std::string request_id;  // the client's idempotency key
  std::string user;
  std::string name;     // the study file's `name`
  std::string setting;  // I(a), II(b), demo, ...
  std::string source;   // the study file as submitted (YAML)
  nlohmann::json plan;  // the validated study, as the planner read it
  bool cancelled = false;
  int64_t created_ms = 0;
};

struct WorkerRecord {
  std::string id;
  std::string host;
  int64_t slots = 0;
  nlohmann::json labels = nlohmann::json::object();  // {"gpu": "A100-80GB", ...}
  // Device memory of one slot (a GPU's, or RAM / slots on CPU); 0: not reported.
  int64_t memory_bytes_per_slot = 0;
  bool draining = false;
  bool spans_hosts = false;  // may share a job with other such workers (mpirun + hostfile)
  std::string instance;      // the registering agent's own key (see Core::RegisterWorker)
  int64_t registered_ms = 0, last_heartbeat_ms = 0, lease_deadline_ms = 0;
};

struct EventRecord {
  std::string job_id;
  int64_t attempt = 0;
  int64_t seq = 0;  // per job, from 1, assigned by the store
  nlohmann::json body;
};

struct ResultRecord {
  std::string job_id;
  int64_t attempt = 0;
  nlohmann::json metrics;  // rmgen-train's metrics.json
  int64_t recorded_ms = 0;
};

nlohmann::json ToJson(const JobRecord& j);
nlohmann::json ToJson(const StudyRecord& s);
nlohmann::json ToJson(const WorkerRecord& w);
StatusOr<JobRecord> JobFromJson(const nlohmann::json& j);
StatusOr<StudyRecord> StudyFromJson(const nlohmann::json& j);
StatusOr<WorkerRecord> WorkerFromJson(const nlohmann::json& j);

}  // namespace rmgen::coord
