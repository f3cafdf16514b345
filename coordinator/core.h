// Core: every coordinator operation over a Store and a Clock, with no gRPC in it (the
// services in service.cc translate to and from protos; tests drive Core directly with the
// memory store and a manual clock).
//
// Callers carry a user and a role: `submitter` sees and cancels its own studies and jobs,
// `operator` everything (drain, cancel any), `worker` only the worker calls.
//
// Durability: every state change is written to the store (and so, with SQLite, on disk)
// before the call returns. Active jobs and workers are also held in memory, written
// through, so scheduling passes and heartbeats never re-read the store. Restart: Core recovers from
// the store alone; workers get a fresh lease to reconnect, and the jobs of those that do not are
// requeued when it ends.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "coordinator/results.h"
#include "coordinator/scheduler.h"
#include "coordinator/store.h"
#include "coordinator/study.h"

namespace rmgen::coord {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual int64_t NowMs() = 0;
};
Clock* SystemClock();
class ManualClock : public Clock {
 public:
  explicit ManualClock(int64_t now = 1'000'000) : now_(now) {}
  int64_t NowMs() override { return now_; }
  void Advance(int64_t ms) { now_ += ms; }

 private:
  int64_t now_;
};

enum class Role { kSubmitter, kOperator, kWorker };
const char* RoleName(Role r);
struct Caller {
  std::string user;
  Role role = Role::kSubmitter;
};

struct CoreOptions {
  int64_t lease_ms = 30'000;         // a worker (and its jobs) is lost after this without heartbeat
  int64_t max_attempts = 3;          // attempts per job before FAILED
  std::string output_root = "jobs";  // job folders: <output_root>/<job id>
  // Where relative model paths (spec model.config / model.path, a study model's arch) are
  // read for the submit-time memory check; "" = the working directory.
  std::string plan_base_dir;
};

// Part of every reuse key: what rmgen-train computes from a spec. Bump it when a change of
// rmgen-train changes results (tokenization, optimizer), so older jobs are not reused.
// File contents behind paths are not in the key: regenerate data under a new path.
inline constexpr const char* kReuseKeyVersion = "rmgen-reuse-2";

struct StudyView {
  StudyRecord study;
  std::map<std::string, int64_t> job_states;  // state name -> count
  int64_t jobs_total = 0;
};

struct WorkerView {
  WorkerRecord worker;
  int64_t free_slots = 0;
  bool alive = false;
  std::vector<std::string> jobs;
};

struct Acquired {
  JobRecord job;  // spec with ${output...} resolved
  std::string output_dir;
};

struct HeartbeatReply {
  std::vector<std::string> cancel;
  bool reregister = false;
};

class Core {
 public:
  Core(Store* store, Clock* clock, CoreOptions options);

  // Call once at start-up (after a restart too): renews every known worker's lease so its
  // agent can reconnect, and settles dependencies.
  Status Recover();

  // ---- client calls ----
  StatusOr<std::pair<StudyView, bool>> SubmitStudy(const Caller& c, const std::string& yaml,
                                                   const std::string& source,
                                                   const std::string& request_id);
  StatusOr<StudyView> GetStudy(const Caller& c, const std::string& id);
  StatusOr<std::vector<StudyView>> ListStudies(const Caller& c, bool all_users);
  StatusOr<StudyView> CancelStudy(const Caller& c, const std::string& id);
  StatusOr<Created<JobRecord>> SubmitJob(const Caller& c, const nlohmann::json& spec,
                                         const std::string& name, int64_t ranks, int64_t priority,
                                         const std::string& request_id);
  StatusOr<JobRecord> GetJob(const Caller& c, const std::string& id);
  StatusOr<JobPage> ListJobs(const Caller& c, JobFilter filter, bool all_users);
  StatusOr<JobRecord> CancelJob(const Caller& c, const std::string& id);
  StatusOr<StudyResults> GetResults(const Caller& c, const std::string& study_id);
  // Several studies' results and the tables across them: `study_ids`, then every study the
  // caller may see (operators: everyone's) whose file has `tag: <tag>`, in submission order.
  StatusOr<ResultsReport> GetResults(const Caller& c, const std::vector<std::string>& study_ids,
                                     const std::string& tag);
  StatusOr<std::vector<EventRecord>> GetEvents(const Caller& c, const std::string& job_id,
                                               int64_t after_seq, int64_t limit);
  StatusOr<std::optional<ResultRecord>> GetResult(const Caller& c, const std::string& job_id);
  StatusOr<std::vector<WorkerView>> ListWorkers(const Caller& c);
  StatusOr<WorkerView> DrainWorker(const Caller& c, const std::string& id, bool undrain);

  // ---- worker calls ----
  StatusOr<HeartbeatReply> RegisterWorker(
      const Caller& c, WorkerRecord w, const std::vector<std::pair<std::string, int64_t>>& running);
  StatusOr<HeartbeatReply> Heartbeat(const Caller& c, const std::string& worker,
                                     const std::vector<std::pair<std::string, int64_t>>& running);
  // A job for this worker now, if the scheduler places one on it.
  StatusOr<std::optional<Acquired>> AcquireJob(const Caller& c, const std::string& worker);
  // Returns whether the job should stop (cancelled).
  StatusOr<bool> ReportEvents(const Caller& c, const std::string& job_id, int64_t attempt,
                              const std::vector<nlohmann::json>& events, bool running);
  StatusOr<JobState> CompleteJob(const Caller& c, const std::string& job_id, int64_t attempt,
                                 bool success, const nlohmann::json& metrics,
                                 const std::string& reason, bool retryable,
                                 const std::vector<std::string>& log_tail, bool preempted = false);

  // ---- housekeeping ----
  // Expires leases (requeueing or failing their jobs) and settles dependencies.
  Status Tick();
  // Why each QUEUED job waits, from the last scheduling pass.
  std::map<std::string, std::string> WaitingReasons();

  // Change notification, for watches and long polls: a counter bumped by every change.
  uint64_t Changes();
  // Waits until Changes() != seen or timeout; returns Changes().
  uint64_t WaitForChange(uint64_t seen, int64_t timeout_ms);

  Store* store() { return store_; }
  const CoreOptions& options() const { return options_; }

 private:
  Status CanSee(const Caller& c, const std::string& owner) const;
  Status RequireWorker(const Caller& c) const;
  Status RequireClient(const Caller& c) const;
  StatusOr<StudyView> View(const StudyRecord& s);
  // Ends an attempt: retry (QUEUED, attempt + 1 later) or FAILED; writes the job. A preempted
  // attempt is retried without using up the job's attempts (its number is still never reused).
  StatusOr<JobRecord> EndAttempt(JobRecord j, const std::string& outcome, bool retryable,
                                 bool preempted = false);
  Status SettleDependencies();
  // Marks the jobs of a new plan whose inputs equal a job `user` already finished (the same
  // kind, ranks and spec; dependencies reused alike) SUCCEEDED, reusing that job's outputs
  // and result; labels every job with its content key.
  Status ReuseFinished(const std::string& user, std::vector<JobRecord>* jobs,
                       std::vector<std::pair<size_t, std::string>>* reused);
  // Records, for each reused job of the study without a result yet, its source's result.
  Status CopyReusedResults(const std::string& study_id);
  // Refuses (FAILED_PRECONDITION) jobs whose memory estimate (memory_plan.h) fits on no
  // recent worker that reports its memory; accepts when none does, or when a job's model
  // config is not readable here. Takes no lock but the worker cache's, briefly.
  Status CheckMemory(const std::vector<JobRecord>& jobs, const Study* study);
  Status ExpireLeases();
  Status CancelJobRecord(JobRecord j, const std::string& why);
  void Notify();
  int64_t Now() { return clock_->NowMs(); }
  // The active-job cache (written through on every change; the store stays the truth).
  void Cache(const JobRecord& j);
  std::vector<std::shared_ptr<const JobRecord>> Snapshot();
  // Only the PENDING jobs, or only the held (ASSIGNED or RUNNING) ones: housekeeping and
  // heartbeats look at these, not at every queued job.
  std::vector<std::shared_ptr<const JobRecord>> PendingSnapshot();
  std::vector<std::shared_ptr<const JobRecord>> HeldSnapshot();
  void IndexLocked(const JobRecord& j);  // under cache_m_
  std::vector<JobRecord> ActiveCopy();
  StatusOr<JobRecord> Lookup(const std::string& id);
  StatusOr<JobState> StateOf(const std::string& id);
  StatusOr<JobRecord> Write(const JobRecord& j);
  Status CacheStudyJobs(const std::string& study_id);
  // Workers, cached the same way (read on every AcquireJob and heartbeat).
  Status LoadWorkersLocked();
  StatusOr<std::vector<WorkerRecord>> Workers();
  StatusOr<WorkerRecord> WorkerOf(const std::string& id);
  Status PutWorker(const WorkerRecord& w);

  Store* store_;
  Clock* clock_;
  CoreOptions options_;
  std::mutex m_;  // serializes state changes (the store is consistent; this keeps passes whole)
  std::mutex notify_m_;
  std::condition_variable notify_cv_;
  uint64_t changes_ = 0;
  std::map<std::string, std::string> waiting_;
  // Every non-final job, so scheduling passes, heartbeats and housekeeping never re-read the
  // store; and the final state of jobs seen ending (for dependency checks).
  std::mutex cache_m_;
  std::map<std::string, std::shared_ptr<const JobRecord>> active_;
  std::map<std::string, JobState> final_;
  std::set<std::string> pending_ids_, held_ids_;  // indexes into active_
  std::map<std::string, WorkerRecord> workers_;
  bool workers_loaded_ = false;
};

}  // namespace rmgen::coord
