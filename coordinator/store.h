// Store: the coordinator's durable state. Two implementations run through the same
// contract tests (tests/coordinator/store_contract_test.cc):
//
//   SqliteStore  the default: one SQLite file in the data directory, WAL journal,
//                synchronous=FULL, so a call that returned OK survives kill -9 and power
//                loss; every multi-row change is one transaction
//   MemoryStore  the same semantics in memory, for handler tests and `--store memory`
//
// Contract (both):
//  - CreateStudy/CreateJob are idempotent per (user, request_id): a repeat returns the
//    first record (created = false) and writes nothing.
//  - UpdateJob is a compare-and-set on `version`: it fails with FAILED_PRECONDITION
//    ("stale version") when the stored version differs, and when the state change is not
//    an edge of the state machine; on success the stored version is version + 1.
//  - Events get per-job sequence numbers from 1, in append order.
//  - RecordResult is idempotent per (job, attempt): the same metrics again is OK and not
//    stored twice; different metrics for a recorded (job, attempt) is ALREADY_EXISTS.
//  - Ids are assigned by the store and never reused.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "coordinator/model.h"

namespace rmgen::coord {

struct JobFilter {
  std::string study_id, user, kind;
  std::optional<JobState> state;
  int64_t page_size = 100;  // 1..1000
  std::string page_token;   // from the previous page; "" for the first
};

struct JobPage {
  std::vector<JobRecord> jobs;  // in submission order (seq)
  std::string next_page_token;  // "" on the last page
};

struct StudyFilter {
  std::string user;         // "" for every user's
  int64_t page_size = 100;  // 1..1000
  std::string page_token;   // from the previous page; "" for the first
};

struct StudyPage {
  std::vector<StudyRecord> studies;  // in creation order; stable under inserts (keyset)
  std::string next_page_token;       // "" on the last page
};

// The page token that resumes a listing after `job` (or `study`): what a caller that stops
// a page early (a reply's byte cap) hands back as next_page_token.
std::string PageTokenAfter(const JobRecord& job);
std::string PageTokenAfter(const StudyRecord& study);

template <typename T>
struct Created {
  T record;
  bool created = true;  // false: the request id was seen before; `record` is the first one
};

class Store {
 public:
  virtual ~Store() = default;

  // A new study and its jobs in one transaction. Fills study.id, each job's id (in order:
  // "<study id>-j<k>"), seq, version and created time; a job's `deps` may name other jobs
  // of the same batch by their index as "#<k>", and spec strings may name their outputs as
  // "${output:#<k>}"; both are rewritten to the assigned ids.
  virtual StatusOr<Created<StudyRecord>> CreateStudy(StudyRecord study, std::vector<JobRecord> jobs,
                                                     int64_t now_ms) = 0;
  virtual StatusOr<StudyRecord> GetStudy(const std::string& id) = 0;
  // One page of studies, oldest first.
  virtual StatusOr<StudyPage> ListStudies(const StudyFilter& filter) = 0;
  // Every study of `user` ("": everyone's), oldest first (all pages of the above).
  StatusOr<std::vector<StudyRecord>> ListStudies(const std::string& user);
  virtual Status UpdateStudy(const StudyRecord& study) = 0;
  // The id of the study or job a (user, request id) created, or "" when none did: lets a
  // retried submission be answered before its file is parsed again.
  virtual StatusOr<std::string> LookupRequest(const std::string& user,
                                              const std::string& request_id) = 0;

  // A job outside any study.
  virtual StatusOr<Created<JobRecord>> CreateJob(JobRecord job, const std::string& request_id,
                                                 int64_t now_ms) = 0;
  virtual StatusOr<JobRecord> GetJob(const std::string& id) = 0;
  virtual StatusOr<JobPage> ListJobs(const JobFilter& filter) = 0;
  // Compare-and-set (see the contract). Returns the stored record.
  virtual StatusOr<JobRecord> UpdateJob(JobRecord job, int64_t now_ms) = 0;
  // Every job not in a final state (the scheduler's and the lease checker's view).
  virtual StatusOr<std::vector<JobRecord>> ActiveJobs() = 0;

  // Appends `bodies` to the job's events in one transaction and returns the seq of the last
  // one stored (0 when none was). A body whose integer "step" is not above the latest step
  // already stored for this attempt (or earlier in the batch) is a resend and is dropped: a
  // worker that lost the reply to a report sends the same progress again.
  virtual StatusOr<int64_t> AppendEvents(const std::string& job_id, int64_t attempt,
                                         const std::vector<nlohmann::json>& bodies) = 0;
  virtual StatusOr<std::vector<EventRecord>> ListEvents(const std::string& job_id,
                                                        int64_t after_seq, int64_t limit) = 0;

  virtual Status RecordResult(const ResultRecord& result) = 0;
  // The result of the job's latest recorded attempt, if any.
  virtual StatusOr<std::optional<ResultRecord>> GetResult(const std::string& job_id) = 0;

  virtual Status PutWorker(const WorkerRecord& worker) = 0;
  virtual StatusOr<WorkerRecord> GetWorker(const std::string& id) = 0;
  virtual StatusOr<std::vector<WorkerRecord>> ListWorkers() = 0;

  // Records found corrupt (a body that is not JSON, or lacks fields) since the store was
  // opened: SQLite moves each to its `quarantine` table (table, id, body, error, time),
  // reports it once on stderr and skips it; everything else loads. Opening checks every
  // study, job and worker row. 0 for the memory store.
  virtual int64_t quarantined() const { return 0; }
  // The job ids a quarantine changed since the last call: the rows moved away and the PENDING
  // jobs failed for waiting on one. The coordinator refreshes its cache from them.
  virtual std::vector<std::string> TakeQuarantinedJobs() { return {}; }
};

std::unique_ptr<Store> NewMemoryStore();
// Opens (creating if needed) `path`; fails naming the file when it is not a store.
StatusOr<std::unique_ptr<Store>> OpenSqliteStore(const std::string& path);

// An exclusive lock on <dir>/LOCK (flock), held while the object lives; the file holds the
// holder's pid. One coordinator per data directory: a second one is refused
// (FAILED_PRECONDITION) with a message naming the directory and the holder's pid.
class DataDirLock {
 public:
  explicit DataDirLock(int fd) : fd_(fd) {}
  ~DataDirLock();
  DataDirLock(const DataDirLock&) = delete;
  DataDirLock& operator=(const DataDirLock&) = delete;

 private:
  int fd_;
};
StatusOr<std::unique_ptr<DataDirLock>> LockDataDir(const std::string& dir);

}  // namespace rmgen::coord
