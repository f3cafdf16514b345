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
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "common/metrics.h"
#include "coordinator/results.h"
#include "coordinator/scheduler.h"
#include "coordinator/store.h"
#include "coordinator/study.h"
#include "jobspec/events.h"

namespace rmgen::coord {

// Two readings: NowMs, the wall clock, for what people read (created, started, ended); and
// MonoMs, a clock that never steps, for every lease and deadline (a wall-clock step must not
// expire every worker at once).
class Clock {
 public:
  virtual ~Clock() = default;
  virtual int64_t NowMs() = 0;
  virtual int64_t MonoMs() { return NowMs(); }
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
  // Limits for submitters (operators are bound by the first two as well): a study plans at
  // most this many jobs; a user holds at most this many jobs not yet final; a submitter's
  // priority lies in [-max_submitter_priority, max_submitter_priority].
  int64_t max_jobs_per_study = 10'000;
  int64_t max_active_jobs_per_user = 10'000;
  int64_t max_submitter_priority = 100;
  // Where submitted absolute paths may point (data, models, tokenizers, reference caches),
  // besides the output root; relative paths (resolved in the worker's workdir) may not climb
  // out with "..". `confine_paths` false (the default of an open, single-user coordinator):
  // any path is taken.
  bool confine_paths = false;
  std::vector<std::string> data_roots;
  // Never reachable by a submitted path, whatever the data roots say (the coordinator's data
  // directory: its store, lock and keys), except the output root inside it.
  std::vector<std::string> denied_roots;
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
  // Placed over several workers: each one's host and ranks, the acquiring worker first.
  struct HostSlots {
    std::string worker, host;
    int64_t slots = 0;
  };
  std::vector<HostSlots> hosts;
};

struct HeartbeatReply {
  std::vector<std::string> cancel;
  bool reregister = false;  // unknown worker, or not its current session: register again
  std::string session;      // RegisterWorker: the new session's secret
};

class Core {
 public:
  Core(Store* store, Clock* clock, CoreOptions options);

  // Call once at start-up (after a restart too): renews every known worker's lease so its
  // agent can reconnect, and settles dependencies.
  Status Recover();

  // ---- client calls ----
  // The jobs SubmitStudy would store (ids "#<k>", deps by those), after the same checks
  // (specs, quota shape, paths, the coordinator's reads, memory); stores nothing.
  StatusOr<std::vector<JobRecord>> PlanStudyDryRun(const Caller& c, const std::string& yaml,
                                                   const std::string& source);
  StatusOr<std::pair<StudyView, bool>> SubmitStudy(const Caller& c, const std::string& yaml,
                                                   const std::string& source,
                                                   const std::string& request_id);
  StatusOr<StudyView> GetStudy(const Caller& c, const std::string& id);
  // One page of the caller's studies (all_users, operators only: everyone's), oldest first:
  // page_size 1..1000 (0: 100); `next_page_token`, when given, gets the next page's token ("" on
  // the last page).
  StatusOr<std::vector<StudyView>> ListStudies(const Caller& c, bool all_users,
                                               const std::string& page_token = "",
                                               int64_t page_size = 0,
                                               std::string* next_page_token = nullptr);
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
  // Identity: a registration names the agent's `instance` (its own random key); a worker id
  // whose lease is live under another instance is refused (ALREADY_EXISTS), so two hosts
  // cannot share an id. Each registration gets a new session secret (in the reply); the
  // gRPC layer checks it with CheckSession on every later call of that worker. Reports name
  // their worker and are fenced by (worker, attempt): only the attempt placed on that worker
  // may report or complete. Leases live in memory on the monotonic clock: heartbeats write
  // nothing to the store and never wait on the lock that scheduling and writes hold.
  StatusOr<HeartbeatReply> RegisterWorker(
      const Caller& c, WorkerRecord w, const std::vector<std::pair<std::string, int64_t>>& running,
      const std::string& instance = "");
  // OK when `session` is the current session of `worker`; UNAUTHENTICATED otherwise.
  Status CheckSession(const std::string& worker, const std::string& session);
  // With `session` (the gRPC layer passes the call's), it is checked under the same lock as
  // the lease it renews: a heartbeat of a session replaced meanwhile renews nothing and is
  // answered `reregister`.
  StatusOr<HeartbeatReply> Heartbeat(const Caller& c, const std::string& worker,
                                     const std::vector<std::pair<std::string, int64_t>>& running,
                                     const std::string* session = nullptr);
  // A job for this worker now, if the scheduler places one on it. With `session`, checked at
  // the start of this pass (UNAUTHENTICATED when replaced): a long poll made by a replaced
  // session is not given a job.
  StatusOr<std::optional<Acquired>> AcquireJob(const Caller& c, const std::string& worker,
                                               const std::string* session = nullptr);
  // Returns whether the job should stop (cancelled). `worker` ran the attempt.
  StatusOr<bool> ReportEvents(const Caller& c, const std::string& worker, const std::string& job_id,
                              int64_t attempt, const std::vector<nlohmann::json>& events,
                              bool running);
  StatusOr<JobState> CompleteJob(const Caller& c, const std::string& worker,
                                 const std::string& job_id, int64_t attempt, bool success,
                                 const nlohmann::json& metrics, const std::string& reason,
                                 bool retryable, const std::vector<std::string>& log_tail,
                                 bool preempted = false, const std::string& cause = "",
                                 int failed_rank = -1);

  // ---- observability ----
  // The coordinator's Prometheus text: counters and histograms kept as it runs (jobs
  // finished, retries, leases expired, queue wait, scheduling pass, store writes; the gRPC
  // layer adds RPC latency to metrics()), and gauges taken now: jobs by live state,
  // workers by state with their slots, and each running job's last training progress
  // (labels job and kind: bounded by the cluster's slots).
  std::string MetricsText();
  Metrics& metrics() { return metrics_; }

  // ---- housekeeping ----
  // Expires leases (requeueing or failing their jobs) and settles dependencies.
  Status Tick();
  // Why each QUEUED job waits, from the last scheduling pass.
  std::map<std::string, std::string> WaitingReasons();

  // Change notification, for watches and long polls: a counter bumped by every change.
  uint64_t Changes();
  // Waits until Changes() != seen or timeout; returns Changes().
  uint64_t WaitForChange(uint64_t seen, int64_t timeout_ms);
  // One study's changes: every job write of the study bumps its counter and is logged (the
  // last kChangeLog per study). StudyChanges fills `jobs` with the ids written after `seen`
  // (each once) and returns the counter now; false in `complete` when the log no longer
  // reaches back to `seen` (re-read the study). WaitForStudyChange waits for that study only.
  static constexpr size_t kChangeLog = 4096;
  static constexpr int64_t kChangeLogIdleMs = 10 * 60 * 1000;
  uint64_t StudyChanges(const std::string& study_id, uint64_t seen, std::vector<std::string>* jobs,
                        bool* complete);
  uint64_t WaitForStudyChange(const std::string& study_id, uint64_t seen, int64_t timeout_ms);

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
  // Brings the cache in line with what the store quarantined at run time
  // (Store::TakeQuarantinedJobs): quarantined jobs leave it (final as FAILED for their
  // dependents), the dependents the store failed are re-read. Under m_.
  Status RefreshQuarantined();
  std::set<std::string> quarantine_pending_;  // ids RefreshQuarantined has yet to apply (m_)
  // Bounds of a submission (CoreOptions), before anything is written.
  Status CheckSubmission(const Caller& c, const std::vector<JobRecord>& jobs);
  // max_active_jobs_per_user: counts the user's jobs held (the cache) and those of its
  // submissions in flight, and reserves this one's unfinished jobs until the returned token
  // is dropped (after they are cached, or on failure). RESOURCE_EXHAUSTED past the limit.
  StatusOr<std::shared_ptr<void>> ReserveActiveJobs(const Caller& c,
                                                    const std::vector<JobRecord>& jobs);
  // Runs `cache` (which puts the submission's jobs in the cache) and releases the
  // reservation `token` in one step under quota_m_. Lock order: m_, quota_m_, cache_m_.
  Status CacheReserved(const std::shared_ptr<void>& token, const std::function<Status()>& cache);
  void ReleaseLocked(const std::string& user, int64_t jobs);  // quota_m_ held
  // Submitted paths (CoreOptions::data_roots) and "${output:ID}" references: ID must be a
  // job of the same user (and of the same study for a study's job).
  // `plan`: the jobs are one study's plan, and "${output:#k}" may name its job k.
  Status CheckPaths(const Caller& c, const std::vector<JobRecord>& jobs, bool plan);
  // The model files a study names that CheckMemory reads on the coordinator (StudyPlanReads),
  // confined like job paths.
  Status CheckStudyReads(const Caller& c, const Study& study);
  // One path-valued field: no '..' component; with confine_paths an absolute path lies under
  // a data root, or in the output root inside one of the caller's jobs or its reference cache.
  Status CheckPath(const Caller& c, const std::string& who, const std::string& field,
                   const std::string& value);
  // The per-user reference log-probs cache a DPO job gets when its spec names none.
  std::string ReferenceCacheDir(const std::string& user) const;
  bool Alive(const std::string& worker);
  // Fills the worker's lease fields (wall time) from the in-memory lease.
  void FillLease(WorkerRecord* w);
  // Records a job write in its study's change log and wakes watchers.
  void LogChange(const JobRecord& j);
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
  Metrics metrics_;
  std::mutex scrape_m_;    // one MetricsText at a time
  std::string hold_for_;   // under m_: the multi-node job the last scheduling pass held for
  std::mutex progress_m_;  // guards progress_
  struct LiveProgress {
    std::string kind;
    int64_t attempt = 0;
    StepProgress step;
  };
  std::map<std::string, LiveProgress> progress_;  // live job -> its last training step
  std::set<std::string> pending_ids_, held_ids_;  // indexes into active_
  std::map<std::string, WorkerRecord> workers_;
  bool workers_loaded_ = false;
  std::mutex quota_m_;
  std::map<std::string, int64_t> reserved_;  // user -> unfinished jobs being submitted
  // Held across each read-modify-write of a worker record (registration, drain), so neither
  // loses the other's change; taken before m_ when both are (a drain).
  std::mutex worker_write_m_;
  // Leases, in memory only, on the monotonic clock (lease_m_ guards them; it is never held
  // across a store call, so heartbeats never wait on the disk). A restart renews every lease.
  struct Live {
    std::string instance, session;
    int64_t deadline = 0;             // MonoMs
    int64_t last_heartbeat_wall = 0;  // NowMs, for display
    // The jobs its latest heartbeat listed, and when (MonoMs); Tick ends the attempts placed on
    // this worker that it stopped listing.
    std::set<std::string> listed;
    int64_t listed_at = 0;
  };
  std::mutex lease_m_;
  std::map<std::string, Live> live_;
  // CheckSession with lease_m_ held.
  Status CheckSessionLocked(const std::string& worker, const std::string& session);
  std::map<std::string, int64_t> job_lease_;    // job id -> MonoMs deadline
  std::map<std::string, int64_t> job_started_;  // job id -> MonoMs its attempt was assigned
  // Per-study change logs (notify_m_).
  struct ChangeLog {
    uint64_t seq = 0;
    std::vector<std::pair<uint64_t, std::string>> recent;  // (seq, job id), oldest first
    int64_t last_mono = 0;  // when the last change was logged (MonoMs)
  };
  // Drops the logs of studies unchanged for kChangeLogIdleMs (a finished study's): a watcher
  // that still holds a counter reads the study whole once (StudyChanges: incomplete).
  void PruneChangeLogs();
  std::map<std::string, ChangeLog> study_changes_;
};

}  // namespace rmgen::coord
