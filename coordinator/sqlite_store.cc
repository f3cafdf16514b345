// SqliteStore: the Store contract on one SQLite file (WAL, synchronous=FULL). Records are
// stored as JSON text next to the columns queries filter on; one connection behind a mutex.
#include <sqlite3.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <map>
#include <mutex>
#include <set>
#include <utility>
#include <vector>

#include "coordinator/store.h"
#include "coordinator/store_common.h"

namespace rmgen::coord {
namespace {

using nlohmann::json;

constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS studies(id TEXT PRIMARY KEY, num INTEGER UNIQUE NOT NULL,
                                   user TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs(id TEXT PRIMARY KEY, seq INTEGER UNIQUE NOT NULL,
                                study_id TEXT NOT NULL, user TEXT NOT NULL, kind TEXT NOT NULL,
                                state TEXT NOT NULL, version INTEGER NOT NULL,
                                body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS jobs_by_study ON jobs(study_id, seq);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state, seq);
CREATE TABLE IF NOT EXISTS requests(user TEXT NOT NULL, request_id TEXT NOT NULL,
                                    target TEXT NOT NULL, PRIMARY KEY(user, request_id));
CREATE TABLE IF NOT EXISTS events(job_id TEXT NOT NULL, seq INTEGER NOT NULL,
                                  attempt INTEGER NOT NULL, body TEXT NOT NULL,
                                  PRIMARY KEY(job_id, seq));
CREATE INDEX IF NOT EXISTS events_by_attempt ON events(job_id, attempt, seq);
CREATE TABLE IF NOT EXISTS results(job_id TEXT NOT NULL, attempt INTEGER NOT NULL,
                                   recorded_ms INTEGER NOT NULL, body TEXT NOT NULL,
                                   PRIMARY KEY(job_id, attempt));
CREATE TABLE IF NOT EXISTS workers(id TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS studies_by_user ON studies(user, num);
CREATE TABLE IF NOT EXISTS quarantine(from_table TEXT NOT NULL, id TEXT, body TEXT,
                                      error TEXT NOT NULL, quarantined_ms INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES('schema', 1), ('next_seq', 1), ('next_study', 1),
                                 ('next_lone', 1);
)sql";

// A failure the same call may well not meet later (the file locked by another process, an
// I/O error, a full disk, no memory) is UNAVAILABLE, which clients retry; anything else (a
// constraint, misuse) is INTERNAL.
Status SqlError(int rc, const std::string& m) {
  switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
    case SQLITE_IOERR:
    case SQLITE_FULL:
    case SQLITE_NOMEM:
    case SQLITE_CANTOPEN:
    case SQLITE_PROTOCOL:
      return Status(StatusCode::kUnavailable, m + " (the store is busy or failing now; try again)");
    default: return InternalError(m);
  }
}

// Prepared statements by SQL text, reused across calls (preparing costs more than running
// the small statements of a submission). Used under the store's mutex only.
using StmtCache = std::map<std::string, sqlite3_stmt*>;

// One use of a prepared statement; binds by position from 1. Reset (not finalized) at the
// end of its scope, so the next use of the same SQL starts clean.
class Stmt {
 public:
  Stmt(sqlite3* db, StmtCache* cache, const std::string& sql) : db_(db) {
    auto it = cache->find(sql);
    if (it != cache->end()) {
      s_ = it->second;
    } else {
      rc_ = sqlite3_prepare_v3(db, sql.c_str(), -1, SQLITE_PREPARE_PERSISTENT, &s_, nullptr);
      if (rc_ == SQLITE_OK) (*cache)[sql] = s_;
    }
  }
  ~Stmt() {
    if (rc_ != SQLITE_OK) {
      sqlite3_finalize(s_);
      return;
    }
    sqlite3_reset(s_);
    sqlite3_clear_bindings(s_);
  }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;
  Stmt& Bind(const std::string& v) {
    sqlite3_bind_text(s_, ++n_, v.c_str(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& Bind(int64_t v) {
    sqlite3_bind_int64(s_, ++n_, v);
    return *this;
  }
  // SQLITE_ROW, SQLITE_DONE or an error code.
  int Step() { return rc_ != SQLITE_OK ? rc_ : sqlite3_step(s_); }
  std::string Text(int col) {
    const auto* p = sqlite3_column_text(s_, col);
    return p ? std::string(reinterpret_cast<const char*>(p), sqlite3_column_bytes(s_, col)) : "";
  }
  int64_t Int(int col) { return sqlite3_column_int64(s_, col); }
  Status Done(const char* what) {
    const int rc = Step();
    if (rc == SQLITE_DONE || rc == SQLITE_ROW) return Status::Ok();
    return SqlError(rc, std::string("store: ") + what + ": " + sqlite3_errmsg(db_));
  }

 private:
  sqlite3* db_;
  sqlite3_stmt* s_ = nullptr;
  int rc_ = SQLITE_OK;
  int n_ = 0;
};

class SqliteStore : public Store {
 public:
  SqliteStore(sqlite3* db, std::string path) : db_(db), path_(std::move(path)) {}
  ~SqliteStore() override {
    for (auto& [sql, st] : cache_) sqlite3_finalize(st);
    sqlite3_close(db_);
  }

  Status Exec(const char* sql) {
    char* err = nullptr;
    if (const int rc = sqlite3_exec(db_, sql, nullptr, nullptr, &err); rc != SQLITE_OK) {
      std::string m = err ? err : "?";
      sqlite3_free(err);
      return SqlError(rc, path_ + ": " + m);
    }
    return Status::Ok();
  }

  // Runs `body` in one IMMEDIATE transaction; commits when it returns OK.
  template <typename F>
  auto Txn(F body) -> decltype(body()) {
    if (Status s = Exec("BEGIN IMMEDIATE"); !s.ok()) return s;
    auto r = body();
    if (r.ok()) {
      if (Status s = Exec("COMMIT"); !s.ok()) {
        (void)Exec("ROLLBACK");
        return s;
      }
    } else {
      (void)Exec("ROLLBACK");
    }
    return r;
  }

  StatusOr<int64_t> Counter(const char* key, int64_t add) {
    Stmt get(db_, &cache_, "SELECT value FROM meta WHERE key = ?");
    get.Bind(std::string(key));
    if (get.Step() != SQLITE_ROW) return InternalError(path_ + ": counter " + key + " missing");
    const int64_t v = get.Int(0);
    Stmt put(db_, &cache_, "UPDATE meta SET value = ? WHERE key = ?");
    put.Bind(v + add).Bind(std::string(key));
    RETURN_IF_ERROR(put.Done("counter"));
    return v;
  }

  StatusOr<std::string> FindRequest(const std::string& user, const std::string& request_id) {
    if (request_id.empty()) return std::string();
    Stmt q(db_, &cache_, "SELECT target FROM requests WHERE user = ? AND request_id = ?");
    q.Bind(user).Bind(request_id);
    return q.Step() == SQLITE_ROW ? q.Text(0) : std::string();
  }
  Status SaveRequest(const std::string& user, const std::string& request_id,
                     const std::string& target) {
    if (request_id.empty()) return Status::Ok();
    Stmt q(db_, &cache_, "INSERT INTO requests VALUES(?, ?, ?)");
    q.Bind(user).Bind(request_id).Bind(target);
    return q.Done("request id");
  }

  Status InsertJob(const JobRecord& j) {
    Stmt q(db_, &cache_, "INSERT INTO jobs VALUES(?, ?, ?, ?, ?, ?, ?, ?)");
    q.Bind(j.id)
        .Bind(j.seq)
        .Bind(j.study_id)
        .Bind(j.user)
        .Bind(j.kind)
        .Bind(std::string(JobStateName(j.state)))
        .Bind(j.version)
        .Bind(ToJson(j).dump());
    return q.Done("insert job");
  }

  StatusOr<JobRecord> LoadJob(const std::string& id, sqlite3* db = nullptr) {
    Stmt q(db ? db : db_, &cache_, "SELECT body FROM jobs WHERE id = ?");
    q.Bind(id);
    if (q.Step() != SQLITE_ROW) return NotFoundError("job " + id + " not found");
    return ParseJob(q.Text(0));
  }
  static StatusOr<JobRecord> ParseJob(const std::string& body) {
    json j = json::parse(body, nullptr, false);
    if (j.is_discarded()) return DataLossError("store: a job record is not JSON");
    return JobFromJson(j);
  }
  // A row that does not parse into its record: moved to `quarantine` (QuarantineRows).
  struct Corrupt {
    const char* table;
    int64_t rowid;
    std::string id, body, error;
  };
  // A record from its row, checked whole: JSON with every field, and its own id.
  template <typename R, typename F>
  static StatusOr<R> CheckRow(const char* what, const std::string& id, const std::string& body,
                              F from_json) {
    json j = json::parse(body, nullptr, false);
    if (j.is_discarded()) return DataLossError(std::string(what) + " " + id + ": not JSON");
    auto r = from_json(j);
    if (!r.ok()) {
      return DataLossError(std::string(what) + " " + id + ": " + r.status().message());
    }
    if (r->id != id) {
      return DataLossError(std::string(what) + " " + id + ": its record names id '" + r->id + "'");
    }
    return r;
  }
  static StatusOr<JobRecord> CheckJob(const std::string& id, const std::string& body) {
    return CheckRow<JobRecord>("job", id, body, JobFromJson);
  }
  static StatusOr<StudyRecord> CheckStudy(const std::string& id, const std::string& body) {
    return CheckRow<StudyRecord>("study", id, body, StudyFromJson);
  }
  static StatusOr<WorkerRecord> CheckWorker(const std::string& id, const std::string& body) {
    return CheckRow<WorkerRecord>("worker", id, body, WorkerFromJson);
  }
  Status ReadError(const char* table, int rc) {
    return SqlError(rc, path_ + ": reading " + table + ": " + sqlite3_errmsg(db_));
  }

  // Moves `rows` to the quarantine table in one transaction, each reported once on stderr,
  // and fails the PENDING jobs that wait on a quarantined job (the coordinator could never
  // settle them). Under m_.
  // One page of `table` (rowid, id, body rows from `sql`, whose parameters `bind` binds before
  // the LIMIT): rows that `check` refuses are quarantined and the page is read again, since
  // it may have come up short. Caller holds m_.
  template <typename Page, typename Bind, typename Check, typename Record>
  StatusOr<Page> ReadPage(const char* table, const char* sql, int64_t size, Bind bind, Check check,
                          std::vector<Record> Page::*rows) {
    for (;;) {
      Page page;
      std::vector<Corrupt> bad;
      {
        Stmt q(db_, &cache_, sql);
        bind(q);
        q.Bind(size + 1);
        int rc;
        while ((rc = q.Step()) == SQLITE_ROW) {
          StatusOr<Record> r = check(q.Text(1), q.Text(2));
          if (!r.ok()) {
            bad.push_back({table, q.Int(0), q.Text(1), q.Text(2), r.status().message()});
            continue;
          }
          if (static_cast<int64_t>((page.*rows).size()) == size) {
            page.next_page_token = PageTokenAfter((page.*rows).back());
            break;
          }
          (page.*rows).push_back(std::move(r).value());
        }
        if (rc != SQLITE_ROW && rc != SQLITE_DONE) return ReadError(table, rc);
      }
      if (bad.empty()) return page;
      RETURN_IF_ERROR(QuarantineRows(bad));
    }
  }

  Status QuarantineRows(const std::vector<Corrupt>& rows) {
    if (rows.empty()) return Status::Ok();
    const int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(
                            std::chrono::system_clock::now().time_since_epoch())
                            .count();
    std::vector<std::string> jobs, failed, failed_ids;
    RETURN_IF_ERROR(Txn([&]() -> Status {
      for (const auto& r : rows) {
        Stmt ins(db_, &cache_, "INSERT INTO quarantine VALUES(?, ?, ?, ?, ?)");
        ins.Bind(std::string(r.table)).Bind(r.id).Bind(r.body).Bind(r.error).Bind(now);
        RETURN_IF_ERROR(ins.Done("quarantine"));
        const std::string sql = std::string("DELETE FROM ") + r.table + " WHERE rowid = ?";
        Stmt del(db_, &cache_, sql);
        del.Bind(r.rowid);
        RETURN_IF_ERROR(del.Done("quarantine"));
        if (std::string(r.table) == "jobs") jobs.push_back(r.id);
      }
      if (jobs.empty()) return Status::Ok();
      std::vector<JobRecord> waiting;
      {
        Stmt q(db_, &cache_, "SELECT id, body FROM jobs WHERE state = 'PENDING' ORDER BY seq");
        while (q.Step() == SQLITE_ROW) {
          auto j = CheckJob(q.Text(0), q.Text(1));
          if (!j.ok()) continue;  // found by the next check
          for (const auto& d : j->deps) {
            if (std::find(jobs.begin(), jobs.end(), d) == jobs.end()) continue;
            j->state = JobState::kFailed;
            j->reason = "dependency " + d + " is corrupt in the store (quarantined)";
            waiting.push_back(*j);
            break;
          }
        }
      }
      for (auto& j : waiting) {
        j.version += 1;
        j.updated_ms = now;
        Stmt u(db_, &cache_, "UPDATE jobs SET state = ?, version = ?, body = ? WHERE id = ?");
        u.Bind(std::string(JobStateName(j.state)))
            .Bind(j.version)
            .Bind(ToJson(j).dump())
            .Bind(j.id);
        RETURN_IF_ERROR(u.Done("fail a dependent of a quarantined job"));
        failed.push_back("job " + j.id + " FAILED: " + j.reason);
        failed_ids.push_back(j.id);
      }
      return Status::Ok();
    }));
    for (const auto& r : rows) {
      std::fprintf(stderr,
                   "rmgen store: %s: %s row '%s' is corrupt (%s): moved to the quarantine table "
                   "and skipped\n",
                   path_.c_str(), r.table, r.id.c_str(), r.error.c_str());
    }
    for (const auto& f : failed)
      std::fprintf(stderr, "rmgen store: %s: %s\n", path_.c_str(), f.c_str());
    quarantined_ += static_cast<int64_t>(rows.size());
    changed_jobs_.insert(changed_jobs_.end(), jobs.begin(), jobs.end());
    changed_jobs_.insert(changed_jobs_.end(), failed_ids.begin(), failed_ids.end());
    return Status::Ok();
  }

  // At open, in time that stays small on large stores: every study, job and worker row whose
  // body is not a JSON object naming its own id (checked inside SQLite; every row, read whole,
  // where SQLite lacks its JSON functions), and the jobs that PENDING jobs wait on, read
  // whole; the corrupt ones quarantined. A record that is JSON but lacks a field is found
  // when read: listings (ActiveJobs, ListJobs, ListStudies, ListWorkers, which Recover
  // calls) skip and quarantine it.
  Status QuarantineCorrupt() {
    std::lock_guard<std::mutex> l(m_);
    std::vector<Corrupt> bad;
    std::set<std::string> seen;  // table + id of the rows in `bad`
    auto check = [&](const char* table, int64_t rowid, const std::string& id,
                     const std::string& body) {
      Status st = table[0] == 's'   ? CheckStudy(id, body).status()
                  : table[0] == 'j' ? CheckJob(id, body).status()
                                    : CheckWorker(id, body).status();
      if (!st.ok() && seen.insert(std::string(table) + "\n" + id).second) {
        bad.push_back({table, rowid, id, body, st.message()});
      }
    };
    for (const char* table : {"studies", "jobs", "workers"}) {
      const std::string from = std::string("SELECT rowid, id, body FROM ") + table;
      int rc;
      {
        Stmt q(db_, &cache_,
               from +
                   " WHERE body IS NULL OR NOT json_valid(body) OR json_type(body) IS NOT "
                   "'object' OR json_extract(body, '$.id') IS NOT id");
        while ((rc = q.Step()) == SQLITE_ROW) check(table, q.Int(0), q.Text(1), q.Text(2));
      }
      if (rc == SQLITE_DONE) continue;
      Stmt all(db_, &cache_, from);  // no JSON functions in this SQLite: every row, whole
      while ((rc = all.Step()) == SQLITE_ROW) check(table, all.Int(0), all.Text(1), all.Text(2));
      if (rc != SQLITE_DONE) return ReadError(table, rc);
    }
    std::set<std::string> deps;
    {
      Stmt q(db_, &cache_, "SELECT body FROM jobs WHERE state = 'PENDING'");
      while (q.Step() == SQLITE_ROW) {
        const json j = json::parse(q.Text(0), nullptr, false);
        if (!j.is_object() || !j.contains("deps") || !j["deps"].is_array()) continue;
        for (const auto& d : j["deps"]) {
          if (d.is_string()) deps.insert(d.get<std::string>());
        }
      }
    }
    for (const auto& d : deps) {
      Stmt q(db_, &cache_, "SELECT rowid, id, body FROM jobs WHERE id = ?");
      q.Bind(d);
      if (q.Step() == SQLITE_ROW) check("jobs", q.Int(0), q.Text(1), q.Text(2));
    }
    return QuarantineRows(bad);
  }

  int64_t quarantined() const override { return quarantined_; }
  std::vector<std::string> TakeQuarantinedJobs() override {
    std::lock_guard<std::mutex> l(m_);
    return std::exchange(changed_jobs_, {});
  }

  StatusOr<StudyRecord> LoadStudy(const std::string& id, sqlite3* db = nullptr) {
    Stmt q(db ? db : db_, &cache_, "SELECT body FROM studies WHERE id = ?");
    q.Bind(id);
    if (q.Step() != SQLITE_ROW) return NotFoundError("study " + id + " not found");
    json j = json::parse(q.Text(0), nullptr, false);
    if (j.is_discarded()) return DataLossError("store: study " + id + " is not JSON");
    return StudyFromJson(j);
  }

  StatusOr<std::string> LookupRequest(const std::string& user,
                                      const std::string& request_id) override {
    std::lock_guard<std::mutex> l(m_);
    return FindRequest(user, request_id);
  }

  StatusOr<Created<StudyRecord>> CreateStudy(StudyRecord study, std::vector<JobRecord> jobs,
                                             int64_t now_ms) override {
    std::lock_guard<std::mutex> l(m_);
    return Txn([&]() -> StatusOr<Created<StudyRecord>> {
      ASSIGN_OR_RETURN(std::string seen, FindRequest(study.user, study.request_id));
      if (!seen.empty()) {
        ASSIGN_OR_RETURN(StudyRecord s, LoadStudy(seen));
        return Created<StudyRecord>{s, false};
      }
      ASSIGN_OR_RETURN(int64_t num, Counter("next_study", 1));
      ASSIGN_OR_RETURN(int64_t seq, Counter("next_seq", static_cast<int64_t>(jobs.size())));
      study.id = "s" + std::to_string(num);
      study.created_ms = now_ms;
      for (auto& j : jobs) j.study_id = study.id;
      RETURN_IF_ERROR(internal::PrepareJobs(study.id, seq, now_ms, &jobs));
      Stmt q(db_, &cache_, "INSERT INTO studies VALUES(?, ?, ?, ?)");
      q.Bind(study.id).Bind(num).Bind(study.user).Bind(ToJson(study).dump());
      RETURN_IF_ERROR(q.Done("insert study"));
      for (const auto& j : jobs) RETURN_IF_ERROR(InsertJob(j));
      RETURN_IF_ERROR(SaveRequest(study.user, study.request_id, study.id));
      return Created<StudyRecord>{study, true};
    });
  }

  StatusOr<StudyRecord> GetStudy(const std::string& id) override {
    std::lock_guard<std::mutex> l(m_);
    return LoadStudy(id);
  }

  using Store::ListStudies;
  StatusOr<StudyPage> ListStudies(const StudyFilter& f) override {
    ASSIGN_OR_RETURN(int64_t after, internal::ParsePageToken(f.page_token));
    const int64_t size = internal::ClampPageSize(f.page_size);
    std::lock_guard<std::mutex> l(m_);
    return ReadPage<StudyPage>(
        "studies",
        f.user.empty()
            ? "SELECT rowid, id, body FROM studies WHERE num > ? ORDER BY num LIMIT ?"
            : "SELECT rowid, id, body FROM studies WHERE num > ? AND user = ? ORDER BY num LIMIT ?",
        size,
        [&](Stmt& q) {
          q.Bind(after);
          if (!f.user.empty()) q.Bind(f.user);
        },
        [this](const std::string& id, const std::string& body) { return CheckStudy(id, body); },
        &StudyPage::studies);
  }

  Status UpdateStudy(const StudyRecord& study) override {
    std::lock_guard<std::mutex> l(m_);
    Stmt q(db_, &cache_, "UPDATE studies SET body = ? WHERE id = ?");
    q.Bind(ToJson(study).dump()).Bind(study.id);
    RETURN_IF_ERROR(q.Done("update study"));
    if (sqlite3_changes(db_) == 0) return NotFoundError("study " + study.id + " not found");
    return Status::Ok();
  }

  // One submission inside the batch transaction, isolated by a savepoint.
  StatusOr<Created<JobRecord>> CreateJobInTxn(JobRecord job, const std::string& request_id,
                                              int64_t now_ms) {
    ASSIGN_OR_RETURN(std::string seen, FindRequest(job.user, request_id));
    if (!seen.empty()) {
      ASSIGN_OR_RETURN(JobRecord j, LoadJob(seen));
      return Created<JobRecord>{j, false};
    }
    ASSIGN_OR_RETURN(int64_t lone, Counter("next_lone", 1));
    ASSIGN_OR_RETURN(int64_t seq, Counter("next_seq", 1));
    std::vector<JobRecord> one = {std::move(job)};
    one[0].study_id = "";
    RETURN_IF_ERROR(internal::PrepareJobs("x" + std::to_string(lone), seq, now_ms, &one));
    RETURN_IF_ERROR(InsertJob(one[0]));
    RETURN_IF_ERROR(SaveRequest(one[0].user, request_id, one[0].id));
    return Created<JobRecord>{one[0], true};
  }

  // Group commit: the first caller to find no batch running becomes the leader, runs every
  // queued submission in one transaction and wakes their callers; nobody is acknowledged
  // before the commit that holds its job.
  StatusOr<Created<JobRecord>> CreateJob(JobRecord job, const std::string& request_id,
                                         int64_t now_ms) override {
    PendingJob me{std::move(job), request_id, now_ms};
    std::unique_lock<std::mutex> l(gc_m_);
    gc_queue_.push_back(&me);
    while (!me.done) {
      if (gc_leader_) {
        gc_cv_.wait(l);
        continue;
      }
      gc_leader_ = true;
      std::vector<PendingJob*> batch;
      batch.swap(gc_queue_);
      l.unlock();
      {
        std::lock_guard<std::mutex> w(m_);
        Status st = Exec("BEGIN IMMEDIATE");
        for (PendingJob* p : batch) {
          if (!st.ok()) break;
          (void)Exec("SAVEPOINT one");
          p->result = CreateJobInTxn(std::move(p->job), p->request_id, p->now_ms);
          (void)Exec(p->result.ok() ? "RELEASE one" : "ROLLBACK TO one");
          if (!p->result.ok()) (void)Exec("RELEASE one");
        }
        if (st.ok()) st = Exec("COMMIT");
        if (!st.ok()) {
          (void)Exec("ROLLBACK");
          for (PendingJob* p : batch) p->result = st;
        }
      }
      l.lock();
      for (PendingJob* p : batch) p->done = true;
      gc_leader_ = false;
      gc_cv_.notify_all();
    }
    return std::move(me.result);
  }

  StatusOr<JobRecord> GetJob(const std::string& id) override {
    std::lock_guard<std::mutex> l(m_);
    return LoadJob(id);
  }

  StatusOr<JobPage> ListJobs(const JobFilter& f) override {
    ASSIGN_OR_RETURN(int64_t after, internal::ParsePageToken(f.page_token));
    const int64_t size = internal::ClampPageSize(f.page_size);
    std::lock_guard<std::mutex> l(m_);
    std::string sql = "SELECT rowid, id, body FROM jobs WHERE seq > ?";
    if (!f.study_id.empty()) sql += " AND study_id = ?";
    if (!f.user.empty()) sql += " AND user = ?";
    if (!f.kind.empty()) sql += " AND kind = ?";
    if (f.state) sql += " AND state = ?";
    sql += " ORDER BY seq LIMIT ?";
    return ReadPage<JobPage>(
        "jobs", sql.c_str(), size,
        [&](Stmt& q) {
          q.Bind(after);
          if (!f.study_id.empty()) q.Bind(f.study_id);
          if (!f.user.empty()) q.Bind(f.user);
          if (!f.kind.empty()) q.Bind(f.kind);
          if (f.state) q.Bind(std::string(JobStateName(*f.state)));
        },
        [this](const std::string& id, const std::string& body) { return CheckJob(id, body); },
        &JobPage::jobs);
  }

  StatusOr<JobRecord> UpdateJob(JobRecord job, int64_t now_ms) override {
    std::lock_guard<std::mutex> l(m_);
    return Txn([&]() -> StatusOr<JobRecord> {
      ASSIGN_OR_RETURN(JobRecord stored, LoadJob(job.id));
      RETURN_IF_ERROR(internal::CheckUpdate(stored, job));
      job.version += 1;
      job.updated_ms = now_ms;
      Stmt q(db_, &cache_,
             "UPDATE jobs SET state = ?, version = ?, body = ? WHERE id = ? AND version = ?");
      q.Bind(std::string(JobStateName(job.state)))
          .Bind(job.version)
          .Bind(ToJson(job).dump())
          .Bind(job.id)
          .Bind(stored.version);
      RETURN_IF_ERROR(q.Done("update job"));
      return job;
    });
  }

  StatusOr<std::vector<JobRecord>> ActiveJobs() override {
    std::lock_guard<std::mutex> l(m_);
    for (;;) {
      std::vector<JobRecord> out;
      std::vector<Corrupt> bad;
      {
        Stmt q(db_, &cache_,
               "SELECT rowid, id, body FROM jobs WHERE state NOT IN ('SUCCEEDED', 'FAILED', "
               "'CANCELLED') ORDER BY seq");
        int rc;
        while ((rc = q.Step()) == SQLITE_ROW) {
          auto j = CheckJob(q.Text(1), q.Text(2));
          if (j.ok()) {
            out.push_back(std::move(j).value());
          } else {
            bad.push_back({"jobs", q.Int(0), q.Text(1), q.Text(2), j.status().message()});
          }
        }
        if (rc != SQLITE_DONE) return ReadError("jobs", rc);
      }
      if (bad.empty()) return out;
      RETURN_IF_ERROR(QuarantineRows(bad));  // and again: dependents may have failed
    }
  }

  StatusOr<int64_t> AppendEvents(const std::string& job_id, int64_t attempt,
                                 const std::vector<json>& bodies) override {
    std::lock_guard<std::mutex> l(m_);
    return Txn([&]() -> StatusOr<int64_t> {
      Stmt exists(db_, &cache_, "SELECT 1 FROM jobs WHERE id = ?");
      exists.Bind(job_id);
      if (exists.Step() != SQLITE_ROW) return NotFoundError("job " + job_id + " not found");
      // The attempt's latest event that carries a step (newest first, along the key).
      std::optional<int64_t> last_step;
      Stmt steps(db_, &cache_,
                 "SELECT body FROM events WHERE job_id = ? AND attempt = ? ORDER BY seq DESC");
      steps.Bind(job_id).Bind(attempt);
      int rc = SQLITE_DONE;
      while (!last_step && (rc = steps.Step()) == SQLITE_ROW) {
        last_step = internal::EventStep(json::parse(steps.Text(0), nullptr, false));
      }
      if (!last_step && rc != SQLITE_DONE) {
        return SqlError(rc, std::string("store: reading events: ") + sqlite3_errmsg(db_));
      }
      Stmt last(db_, &cache_, "SELECT COALESCE(MAX(seq), 0) FROM events WHERE job_id = ?");
      last.Bind(job_id);
      last.Step();
      int64_t seq = last.Int(0), stored = 0;
      for (const json* b : internal::NewEvents(last_step, bodies)) {
        Stmt q(db_, &cache_, "INSERT INTO events VALUES(?, ?, ?, ?)");
        q.Bind(job_id).Bind(++seq).Bind(attempt).Bind(b->dump());
        RETURN_IF_ERROR(q.Done("append event"));
        stored = seq;
      }
      return stored;
    });
  }

  StatusOr<std::vector<EventRecord>> ListEvents(const std::string& job_id, int64_t after_seq,
                                                int64_t limit) override {
    std::lock_guard<std::mutex> l(m_);
    Stmt q(db_, &cache_,
           "SELECT seq, attempt, body FROM events WHERE job_id = ? AND seq > ? ORDER BY seq "
           "LIMIT ?");
    q.Bind(job_id).Bind(after_seq).Bind(limit);
    std::vector<EventRecord> out;
    while (q.Step() == SQLITE_ROW) {
      out.push_back({job_id, q.Int(1), q.Int(0), json::parse(q.Text(2), nullptr, false)});
    }
    return out;
  }

  Status RecordResult(const ResultRecord& r) override {
    std::lock_guard<std::mutex> l(m_);
    return Txn([&]() -> Status {
      Stmt exists(db_, &cache_, "SELECT 1 FROM jobs WHERE id = ?");
      exists.Bind(r.job_id);
      if (exists.Step() != SQLITE_ROW) return NotFoundError("job " + r.job_id + " not found");
      Stmt q(db_, &cache_, "SELECT body FROM results WHERE job_id = ? AND attempt = ?");
      q.Bind(r.job_id).Bind(r.attempt);
      if (q.Step() == SQLITE_ROW) {
        if (json::parse(q.Text(0), nullptr, false) == r.metrics) return Status::Ok();
        return Status(StatusCode::kAlreadyExists, "job " + r.job_id + " attempt " +
                                                      std::to_string(r.attempt) +
                                                      ": a different result is already recorded");
      }
      Stmt ins(db_, &cache_, "INSERT INTO results VALUES(?, ?, ?, ?)");
      ins.Bind(r.job_id).Bind(r.attempt).Bind(r.recorded_ms).Bind(r.metrics.dump());
      return ins.Done("record result");
    });
  }

  StatusOr<std::optional<ResultRecord>> GetResult(const std::string& job_id) override {
    std::lock_guard<std::mutex> l(m_);
    Stmt q(db_, &cache_,
           "SELECT attempt, recorded_ms, body FROM results WHERE job_id = ? ORDER BY attempt "
           "DESC LIMIT 1");
    q.Bind(job_id);
    if (q.Step() != SQLITE_ROW) return std::optional<ResultRecord>();
    return std::optional<ResultRecord>(
        ResultRecord{job_id, q.Int(0), json::parse(q.Text(2), nullptr, false), q.Int(1)});
  }

  Status PutWorker(const WorkerRecord& w) override {
    std::lock_guard<std::mutex> l(m_);
    Stmt q(db_, &cache_, "INSERT OR REPLACE INTO workers VALUES(?, ?)");
    q.Bind(w.id).Bind(ToJson(w).dump());
    return q.Done("put worker");
  }
  StatusOr<WorkerRecord> GetWorker(const std::string& id) override {
    std::lock_guard<std::mutex> l(m_);
    Stmt q(db_, &cache_, "SELECT body FROM workers WHERE id = ?");
    q.Bind(id);
    if (q.Step() != SQLITE_ROW) return NotFoundError("worker " + id + " not found");
    return WorkerFromJson(json::parse(q.Text(0), nullptr, false));
  }
  StatusOr<std::vector<WorkerRecord>> ListWorkers() override {
    std::lock_guard<std::mutex> l(m_);
    std::vector<WorkerRecord> out;
    std::vector<Corrupt> bad;
    {
      Stmt q(db_, &cache_, "SELECT rowid, id, body FROM workers ORDER BY id");
      int rc;
      while ((rc = q.Step()) == SQLITE_ROW) {
        auto w = CheckWorker(q.Text(1), q.Text(2));
        if (w.ok()) {
          out.push_back(std::move(w).value());
        } else {
          bad.push_back({"workers", q.Int(0), q.Text(1), q.Text(2), w.status().message()});
        }
      }
      if (rc != SQLITE_DONE) return ReadError("workers", rc);
    }
    RETURN_IF_ERROR(QuarantineRows(bad));
    return out;
  }

 private:
  sqlite3* db_;
  std::string path_;
  std::mutex m_;  // the connection and cache_
  StmtCache cache_;
  std::atomic<int64_t> quarantined_{0};
  std::vector<std::string> changed_jobs_;  // TakeQuarantinedJobs (m_)
  // Group commit of CreateJob: concurrent submissions share one transaction (one fsync).
  struct PendingJob {
    JobRecord job;
    std::string request_id;
    int64_t now_ms;
    StatusOr<Created<JobRecord>> result = Status(StatusCode::kInternal, "not run");
    bool done = false;
  };
  std::mutex gc_m_;
  std::condition_variable gc_cv_;
  std::vector<PendingJob*> gc_queue_;
  bool gc_leader_ = false;
};

}  // namespace

StatusOr<std::unique_ptr<Store>> OpenSqliteStore(const std::string& path) {
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr) !=
      SQLITE_OK) {
    std::string m = db ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    return Status(StatusCode::kUnavailable, path + ": cannot open the store (" + m + ")");
  }
  sqlite3_busy_timeout(db, 5000);
  auto store = std::make_unique<SqliteStore>(db, path);
  // Durable before acknowledged: WAL with a full sync at every commit.
  for (const char* pragma :
       {"PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL", "PRAGMA foreign_keys=ON"}) {
    RETURN_IF_ERROR(store->Exec(pragma).WithContext("not an rmgen store"));
  }
  RETURN_IF_ERROR(store->Exec(kSchema).WithContext("not an rmgen store"));
  RETURN_IF_ERROR(store->QuarantineCorrupt());
  return std::unique_ptr<Store>(std::move(store));
}

}  // namespace rmgen::coord
