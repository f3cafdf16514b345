// The Store contract (coordinator/store.h), run against both stores.
#include <gtest/gtest.h>
#include <sqlite3.h>
#include <unistd.h>

#include <fstream>
#include <functional>

#include "coordinator/store.h"
#include "tests/test_util.h"

namespace rmgen::coord {
namespace {

using nlohmann::json;

JobRecord Job(const std::string& name, const std::string& user = "ana",
              std::vector<std::string> deps = {}) {
  JobRecord j;
  j.name = name;
  j.user = user;
  j.kind = name.find("eval") != std::string::npos ? "eval" : "reward";
  j.spec = {{"kind", j.kind}, {"train", {{"seed", 1}}}};
  j.deps = std::move(deps);
  j.state = j.deps.empty() ? JobState::kQueued : JobState::kPending;
  return j;
}

StudyRecord Study(const std::string& request_id, const std::string& user = "ana") {
  StudyRecord s;
  s.request_id = request_id;
  s.user = user;
  s.name = "demo";
  s.setting = "demo";
  s.source = "name: demo\n";
  s.plan = {{"seeds", {0, 1}}};
  return s;
}

struct StoreFactory {
  std::string name;
  std::function<std::unique_ptr<Store>(const std::string& dir)> open;
};

class StoreContractTest : public ::testing::TestWithParam<StoreFactory> {
 protected:
  void SetUp() override { store_ = GetParam().open(dir_.path()); }
  testing::TempDir dir_;
  std::unique_ptr<Store> store_;
};

TEST_P(StoreContractTest, CreateStudyAssignsIdsAndIsIdempotentPerRequestId) {
  auto c = store_->CreateStudy(Study("req-1"), {Job("train"), Job("eval", "ana", {"#0"})}, 1000);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_TRUE(c->created);
  const std::string sid = c->record.id;
  auto page = store_->ListJobs({sid});
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->jobs.size(), 2u);
  EXPECT_EQ(page->jobs[0].id, sid + "-j0");
  EXPECT_EQ(page->jobs[1].deps, std::vector<std::string>{sid + "-j0"});
  EXPECT_EQ(page->jobs[0].version, 1);
  EXPECT_LT(page->jobs[0].seq, page->jobs[1].seq);
  EXPECT_EQ(page->jobs[1].study_id, sid);
  EXPECT_EQ(page->jobs[0].spec["train"]["seed"], 1);

  // The same request id again: the first study, nothing new written.
  auto again = store_->CreateStudy(Study("req-1"), {Job("other")}, 2000);
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(again->created);
  EXPECT_EQ(again->record.id, sid);
  EXPECT_EQ(store_->ListJobs({})->jobs.size(), 2u);
  // Request ids are per user.
  auto bob = store_->CreateStudy(Study("req-1", "bob"), {Job("train", "bob")}, 3000);
  ASSERT_TRUE(bob.ok());
  EXPECT_TRUE(bob->created);
  EXPECT_NE(bob->record.id, sid);
  EXPECT_EQ(store_->ListStudies("ana")->size(), 1u);
  EXPECT_EQ(store_->ListStudies("")->size(), 2u);
}

TEST_P(StoreContractTest, ABadDependencyWritesNothing) {
  auto c = store_->CreateStudy(Study("r"), {Job("a", "ana", {"#1"}), Job("b")}, 1);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(c.status().message().find("'#1'"), std::string::npos) << c.status().message();
  EXPECT_TRUE(store_->ListJobs({})->jobs.empty());
  EXPECT_TRUE(store_->ListStudies("")->empty());
  // The request id was not consumed either.
  auto ok = store_->CreateStudy(Study("r"), {Job("a")}, 2);
  ASSERT_TRUE(ok.ok());
  EXPECT_TRUE(ok->created);
}

TEST_P(StoreContractTest, UpdateJobIsCompareAndSetAndFollowsTheStateMachine) {
  auto c = store_->CreateJob(Job("lone"), "rq", 5);
  ASSERT_TRUE(c.ok());
  JobRecord j = c->record;
  EXPECT_TRUE(j.study_id.empty());
  EXPECT_FALSE(store_->CreateJob(Job("lone"), "rq", 6)->created);

  j.state = JobState::kAssigned;
  j.attempt = 1;
  j.worker = "w1";
  auto u = store_->UpdateJob(j, 10);
  ASSERT_TRUE(u.ok()) << u.status().ToString();
  EXPECT_EQ(u->version, 2);
  EXPECT_EQ(u->updated_ms, 10);

  // A writer that read version 1 loses.
  j.state = JobState::kCancelled;
  auto stale = store_->UpdateJob(j, 11);
  EXPECT_EQ(stale.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(stale.status().message().find("stale version"), std::string::npos);

  // ASSIGNED -> PENDING is not an edge.
  JobRecord bad = *u;
  bad.state = JobState::kPending;
  EXPECT_EQ(store_->UpdateJob(bad, 12).status().code(), StatusCode::kFailedPrecondition);

  JobRecord done = *u;
  done.state = JobState::kSucceeded;
  auto d = store_->UpdateJob(done, 13);
  ASSERT_TRUE(d.ok());
  // Final states never change.
  JobRecord again = *d;
  again.state = JobState::kCancelled;
  EXPECT_FALSE(store_->UpdateJob(again, 14).ok());
  EXPECT_EQ(store_->GetJob(j.id)->state, JobState::kSucceeded);
  EXPECT_TRUE(store_->ActiveJobs()->empty());
  EXPECT_EQ(store_->GetJob("nope").status().code(), StatusCode::kNotFound);
}

TEST_P(StoreContractTest, ListJobsFiltersAndPagesInSubmissionOrder) {
  std::vector<JobRecord> jobs;
  for (int i = 0; i < 25; ++i) jobs.push_back(Job(i % 5 == 0 ? "eval" : "train"));
  ASSERT_TRUE(store_->CreateStudy(Study("a"), jobs, 1).ok());
  ASSERT_TRUE(store_->CreateStudy(Study("b", "bob"), {Job("train", "bob")}, 2).ok());
  std::vector<std::string> seen;
  JobFilter f;
  f.user = "ana";
  f.page_size = 7;
  for (;;) {
    auto p = store_->ListJobs(f);
    ASSERT_TRUE(p.ok());
    for (const auto& j : p->jobs) seen.push_back(j.id);
    if (p->next_page_token.empty()) break;
    f.page_token = p->next_page_token;
  }
  ASSERT_EQ(seen.size(), 25u);
  EXPECT_EQ(seen.front(), "s1-j0");
  EXPECT_EQ(seen.back(), "s1-j24");
  JobFilter evals;
  evals.kind = "eval";
  EXPECT_EQ(store_->ListJobs(evals)->jobs.size(), 5u);
  JobFilter pending;
  pending.state = JobState::kPending;
  EXPECT_TRUE(store_->ListJobs(pending)->jobs.empty());
  JobFilter bad;
  bad.page_token = "x";
  EXPECT_EQ(store_->ListJobs(bad).status().code(), StatusCode::kInvalidArgument);
}

TEST_P(StoreContractTest, ListStudiesPagesInCreationOrderStableUnderInserts) {
  for (int i = 0; i < 30; ++i) {
    const std::string user = i % 3 == 2 ? "bob" : "ana";
    ASSERT_TRUE(
        store_->CreateStudy(Study("r" + std::to_string(i), user), {Job("a", user)}, i).ok());
  }
  StudyFilter f;
  f.user = "ana";
  f.page_size = 7;
  std::vector<std::string> seen;
  int pages = 0;
  for (;;) {
    auto p = store_->ListStudies(f);
    ASSERT_TRUE(p.ok()) << p.status().ToString();
    ASSERT_LE(p->studies.size(), 7u);
    ++pages;
    for (const auto& s : p->studies) {
      EXPECT_EQ(s.user, "ana");
      seen.push_back(s.id);
    }
    if (pages == 1) {  // a study created meanwhile comes last, nothing is seen twice
      ASSERT_TRUE(store_->CreateStudy(Study("late"), {Job("a")}, 99).ok());
    }
    if (p->next_page_token.empty()) break;
    f.page_token = p->next_page_token;
  }
  std::vector<std::string> want;
  for (int i = 0; i < 30; ++i) {
    if (i % 3 != 2) want.push_back("s" + std::to_string(i + 1));
  }
  want.push_back("s31");
  EXPECT_EQ(seen, want);
  EXPECT_EQ(pages, 3);  // 21 studies in pages of 7
  // Everyone's, in one call and in all pages alike.
  auto all = store_->ListStudies("");
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 31u);
  EXPECT_EQ(all->front().id, "s1");
  EXPECT_EQ(all->back().id, "s31");
  StudyFilter big;
  big.page_size = 100000;  // clamped to 1000
  EXPECT_EQ(store_->ListStudies(big)->studies.size(), 31u);
  StudyFilter bad;
  bad.page_token = "s3";
  EXPECT_EQ(store_->ListStudies(bad).status().code(), StatusCode::kInvalidArgument);
}

TEST_P(StoreContractTest, EventsAreNumberedPerJob) {
  auto c = store_->CreateStudy(Study("e"), {Job("a"), Job("b")}, 1);
  ASSERT_TRUE(c.ok());
  for (int i = 0; i < 5; ++i) {
    auto seq = store_->AppendEvents("s1-j0", 1, {{{"step", i + 1}}});
    ASSERT_TRUE(seq.ok());
    EXPECT_EQ(*seq, i + 1);
  }
  EXPECT_EQ(*store_->AppendEvents("s1-j1", 1, {{{"step", 1}}}), 1);
  auto tail = store_->ListEvents("s1-j0", 2, 2);
  ASSERT_TRUE(tail.ok());
  ASSERT_EQ(tail->size(), 2u);
  EXPECT_EQ((*tail)[0].seq, 3);
  EXPECT_EQ((*tail)[0].body["step"], 3);
  EXPECT_EQ(store_->AppendEvents("nope", 1, {{}}).status().code(), StatusCode::kNotFound);
}

TEST_P(StoreContractTest, ResentProgressIsStoredOnce) {
  ASSERT_TRUE(store_->CreateStudy(Study("e"), {Job("a")}, 1).ok());
  auto batch = [](std::vector<int> steps) {
    std::vector<json> b;
    for (int s : steps) b.push_back({{"step", s}, {"loss", 1.0 / s}});
    return b;
  };
  EXPECT_EQ(*store_->AppendEvents("s1-j0", 1, batch({1, 2, 3})), 3);
  // The same batch again (the reply was lost), then one that overlaps it.
  EXPECT_EQ(*store_->AppendEvents("s1-j0", 1, batch({1, 2, 3})), 0);
  EXPECT_EQ(*store_->AppendEvents("s1-j0", 1, batch({2, 3, 4, 5})), 5);
  // Events without a step always go in; a batch is filtered against itself too.
  EXPECT_EQ(*store_->AppendEvents("s1-j0", 1, {{{"attempt_failed", 1}}, {{"step", 4}}}), 6);
  // Another attempt starts its own steps (a resume goes back to its checkpoint's step).
  EXPECT_EQ(*store_->AppendEvents("s1-j0", 2, batch({3, 4})), 8);
  auto all = store_->ListEvents("s1-j0", 0, 100);
  ASSERT_TRUE(all.ok());
  std::vector<std::pair<int64_t, int64_t>> got;  // (attempt, step or 0)
  for (const auto& e : *all) got.push_back({e.attempt, e.body.value("step", int64_t{0})});
  const std::vector<std::pair<int64_t, int64_t>> want = {{1, 1}, {1, 2}, {1, 3}, {1, 4},
                                                         {1, 5}, {1, 0}, {2, 3}, {2, 4}};
  EXPECT_EQ(got, want);
  for (size_t k = 0; k < all->size(); ++k) EXPECT_EQ((*all)[k].seq, static_cast<int64_t>(k) + 1);
}

TEST_P(StoreContractTest, ResultsAreIdempotentPerAttempt) {
  ASSERT_TRUE(store_->CreateStudy(Study("r"), {Job("a")}, 1).ok());
  EXPECT_FALSE(store_->GetResult("s1-j0")->has_value());
  ResultRecord r{"s1-j0", 1, {{"eval", {{"x", {{"accuracy", 0.75}}}}}}, 9};
  ASSERT_TRUE(store_->RecordResult(r).ok());
  EXPECT_TRUE(store_->RecordResult(r).ok());  // a duplicate report: fine, not stored twice
  ResultRecord other = r;
  other.metrics["eval"]["x"]["accuracy"] = 0.5;
  EXPECT_EQ(store_->RecordResult(other).code(), StatusCode::kAlreadyExists);
  other.attempt = 2;
  ASSERT_TRUE(store_->RecordResult(other).ok());
  auto latest = store_->GetResult("s1-j0");
  ASSERT_TRUE(latest.ok() && latest->has_value());
  EXPECT_EQ((*latest)->attempt, 2);
  EXPECT_EQ((*latest)->metrics["eval"]["x"]["accuracy"], 0.5);
}

TEST_P(StoreContractTest, WorkersArePutAndListed) {
  WorkerRecord w;
  w.id = "node1";
  w.host = "node1.cluster";
  w.slots = 8;
  w.labels = {{"gpu", "A100-80GB"}};
  ASSERT_TRUE(store_->PutWorker(w).ok());
  w.draining = true;
  ASSERT_TRUE(store_->PutWorker(w).ok());
  auto got = store_->GetWorker("node1");
  ASSERT_TRUE(got.ok());
  EXPECT_TRUE(got->draining);
  EXPECT_EQ(got->labels["gpu"], "A100-80GB");
  EXPECT_EQ(store_->ListWorkers()->size(), 1u);
  EXPECT_EQ(store_->GetWorker("x").status().code(), StatusCode::kNotFound);
}

std::unique_ptr<Store> OpenSqlite(const std::string& dir) {
  auto s = OpenSqliteStore(dir + "/state.db");
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return s.ok() ? std::move(s).value() : nullptr;
}

INSTANTIATE_TEST_SUITE_P(
    Stores, StoreContractTest,
    ::testing::Values(StoreFactory{"memory", [](const std::string&) { return NewMemoryStore(); }},
                      StoreFactory{"sqlite", OpenSqlite}),
    [](const auto& info) { return info.param.name; });

TEST(SqliteStoreTest, EverythingAcknowledgedSurvivesAReopenAndIdsAreNotReused) {
  testing::TempDir dir;
  {
    auto s = OpenSqlite(dir.path());
    ASSERT_TRUE(s->CreateStudy(Study("one"), {Job("a"), Job("b", "ana", {"#0"})}, 1).ok());
    auto j = s->GetJob("s1-j0");
    j->state = JobState::kAssigned;
    ASSERT_TRUE(s->UpdateJob(*j, 2).ok());
    ASSERT_TRUE(s->AppendEvents("s1-j0", 1, {{{"step", 1}}}).ok());
    ASSERT_TRUE(s->RecordResult({"s1-j0", 1, {{"ok", true}}, 3}).ok());
  }
  auto s = OpenSqlite(dir.path());
  EXPECT_EQ(s->GetJob("s1-j0")->state, JobState::kAssigned);
  EXPECT_EQ(s->GetJob("s1-j0")->version, 2);
  EXPECT_EQ(s->ListEvents("s1-j0", 0, 10)->size(), 1u);
  EXPECT_TRUE(s->GetResult("s1-j0")->has_value());
  EXPECT_FALSE(s->CreateStudy(Study("one"), {Job("a")}, 4)->created);
  auto next = s->CreateStudy(Study("two"), {Job("c")}, 5);
  ASSERT_TRUE(next.ok());
  EXPECT_EQ(next->record.id, "s2");
  EXPECT_GT(s->GetJob("s2-j0")->seq, s->GetJob("s1-j1")->seq);
}

TEST(SqliteStoreTest, AFileThatIsNotAStoreIsNamed) {
  testing::TempDir dir;
  const std::string path = dir.path() + "/state.db";
  std::ofstream(path) << "this is not a database, just text that is long enough to matter\n";
  auto s = OpenSqliteStore(path);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find(path), std::string::npos) << s.status().message();
}

// Runs `sql` on the store file directly, as a damaged disk or a bad hand edit would.
void ExecSql(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  char* err = nullptr;
  EXPECT_EQ(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err), SQLITE_OK) << (err ? err : "");
  sqlite3_free(err);
  sqlite3_close(db);
}

// Rows of `sql`, columns joined by '|'.
std::vector<std::string> QuerySql(const std::string& path, const std::string& sql) {
  std::vector<std::string> rows;
  sqlite3* db = nullptr;
  if (sqlite3_open(path.c_str(), &db) != SQLITE_OK) return rows;
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr) == SQLITE_OK) {
    while (sqlite3_step(st) == SQLITE_ROW) {
      std::string row;
      for (int c = 0; c < sqlite3_column_count(st); ++c) {
        const auto* t = sqlite3_column_text(st, c);
        row += (c ? "|" : "") + std::string(t ? reinterpret_cast<const char*>(t) : "NULL");
      }
      rows.push_back(row);
    }
  }
  sqlite3_finalize(st);
  sqlite3_close(db);
  return rows;
}

TEST(SqliteStoreTest, CorruptRowsAreQuarantinedAndEverythingElseLoads) {
  testing::TempDir dir;
  const std::string path = dir.path() + "/state.db";
  {
    auto s = OpenSqlite(dir.path());
    // s1: j0, j1 (waits on j0), j2, j3; s2; s3; two workers.
    ASSERT_TRUE(
        s->CreateStudy(Study("one"), {Job("a"), Job("b", "ana", {"#0"}), Job("c"), Job("d")}, 1)
            .ok());
    ASSERT_TRUE(s->CreateStudy(Study("two"), {Job("e")}, 2).ok());
    ASSERT_TRUE(s->CreateStudy(Study("three"), {Job("f")}, 3).ok());
    WorkerRecord w;
    w.id = "node1";
    ASSERT_TRUE(s->PutWorker(w).ok());
    w.id = "node2";
    ASSERT_TRUE(s->PutWorker(w).ok());
    EXPECT_EQ(s->quarantined(), 0);
  }
  // Not JSON; JSON without a field; another record's id; a study and a worker that are no
  // records at all.
  ExecSql(path,
          "UPDATE jobs SET body = '{\"id\": \"s1-j0\", trunc' WHERE id = 's1-j0';"
          "UPDATE jobs SET body = (SELECT body FROM jobs WHERE id = 's1-j2') WHERE id = 's1-j3';"
          "UPDATE jobs SET body = json_remove(body, '$.state') WHERE id = 's1-j2';"
          "UPDATE studies SET body = '[1, 2]' WHERE id = 's2';"
          "UPDATE workers SET body = 'garbage' WHERE id = 'node1';");
  auto s = OpenSqliteStore(path);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  Store& st = **s;
  // Opening finds what is not a record of its id at all; a record that lacks a field is
  // found by the first read that lists it (Recover reads every active job).
  EXPECT_EQ(st.quarantined(), 4);
  auto active = st.ActiveJobs();
  ASSERT_TRUE(active.ok()) << active.status().ToString();
  EXPECT_EQ(st.quarantined(), 5);
  std::vector<std::string> ids;
  for (const auto& j : *active) ids.push_back(j.id);
  EXPECT_EQ(ids, (std::vector<std::string>{"s2-j0", "s3-j0"}));
  // The job that waited on a quarantined one can never run: FAILED, saying why.
  auto waiting = st.GetJob("s1-j1");
  ASSERT_TRUE(waiting.ok());
  EXPECT_EQ(waiting->state, JobState::kFailed);
  EXPECT_NE(waiting->reason.find("s1-j0"), std::string::npos) << waiting->reason;
  EXPECT_NE(waiting->reason.find("quarantined"), std::string::npos) << waiting->reason;
  auto page = st.ListJobs({});
  ASSERT_TRUE(page.ok()) << page.status().ToString();
  EXPECT_EQ(page->jobs.size(), 3u);
  EXPECT_EQ(st.GetJob("s1-j0").status().code(), StatusCode::kNotFound);
  auto studies = st.ListStudies("");
  ASSERT_TRUE(studies.ok());
  ASSERT_EQ(studies->size(), 2u);
  EXPECT_EQ((*studies)[1].id, "s3");
  auto workers = st.ListWorkers();
  ASSERT_TRUE(workers.ok());
  ASSERT_EQ(workers->size(), 1u);
  EXPECT_EQ((*workers)[0].id, "node2");
  // The rows are kept aside, with what was wrong.
  auto q = QuerySql(path, "SELECT from_table, id FROM quarantine ORDER BY rowid");
  EXPECT_EQ(q, (std::vector<std::string>{"studies|s2", "jobs|s1-j0", "jobs|s1-j3", "workers|node1",
                                         "jobs|s1-j2"}));
  auto err = QuerySql(path, "SELECT error, length(body) > 0 FROM quarantine WHERE id = 's1-j3'");
  ASSERT_EQ(err.size(), 1u);
  EXPECT_NE(err[0].find("names id 's1-j2'"), std::string::npos) << err[0];
  // New writes go on; the next open finds nothing more.
  ASSERT_TRUE(st.CreateStudy(Study("four"), {Job("g")}, 4).ok());
  s->reset();
  auto again = OpenSqliteStore(path);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ((*again)->quarantined(), 0);
  EXPECT_EQ((*again)->ListStudies("")->size(), 3u);
}

// A write the store cannot make now (here: another process holds the file's write lock past
// the busy timeout) is UNAVAILABLE, which agents retry, not INTERNAL, which they would drop;
// the same write succeeds once the lock is gone.
TEST(SqliteStoreTest, AWriteBlockedByALockIsUnavailableAndSucceedsLater) {
  testing::TempDir dir;
  const std::string path = dir.path() + "/state.db";
  auto s = OpenSqlite(dir.path());
  WorkerRecord w;
  w.id = "node1";
  ASSERT_TRUE(s->PutWorker(w).ok());
  sqlite3* other = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &other), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(other, "BEGIN EXCLUSIVE", nullptr, nullptr, nullptr), SQLITE_OK);
  w.slots = 4;
  const Status blocked = s->PutWorker(w);
  EXPECT_EQ(blocked.code(), StatusCode::kUnavailable) << blocked.ToString();
  EXPECT_NE(blocked.message().find("try again"), std::string::npos) << blocked.ToString();
  ASSERT_EQ(sqlite3_exec(other, "ROLLBACK", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(other);
  ASSERT_TRUE(s->PutWorker(w).ok());
  EXPECT_EQ((*s->ListWorkers())[0].slots, 4);
}

// Valid JSON with every field, but of shapes Core reads without checking (placement entries,
// typed labels, the spec): quarantined when read, never handed to a handler.
TEST(SqliteStoreTest, ARecordOfTheWrongShapeIsQuarantinedLikeACorruptOne) {
  testing::TempDir dir;
  const std::string path = dir.path() + "/state.db";
  {
    auto s = OpenSqlite(dir.path());
    ASSERT_TRUE(
        s->CreateStudy(Study("one"), {Job("a"), Job("b"), Job("c"), Job("d"), Job("e")}, 1).ok());
  }
  ExecSql(path,
          "UPDATE jobs SET body = json_set(body, '$.placement', json('[\"node1\"]')) "
          "WHERE id = 's1-j0';"
          "UPDATE jobs SET body = json_set(body, '$.placement', "
          "json('[{\"worker\": 7, \"ranks\": 1}]')) WHERE id = 's1-j1';"
          "UPDATE jobs SET body = json_set(body, '$.labels', json('{\"seed\": \"x\"}')) "
          "WHERE id = 's1-j2';"
          "UPDATE jobs SET body = json_set(body, '$.spec', json('[1]')) WHERE id = 's1-j3';");
  auto s = OpenSqliteStore(path);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  auto active = (*s)->ActiveJobs();
  ASSERT_TRUE(active.ok()) << active.status().ToString();
  ASSERT_EQ(active->size(), 1u);
  EXPECT_EQ((*active)[0].id, "s1-j4");
  EXPECT_EQ((*s)->quarantined(), 4);
  auto err = QuerySql(path, "SELECT error FROM quarantine WHERE id = 's1-j0'");
  ASSERT_EQ(err.size(), 1u);
  EXPECT_NE(err[0].find("placement entry"), std::string::npos) << err[0];
}

TEST(SqliteStoreTest, AJobThatPendingJobsWaitOnIsCheckedWholeAtOpen) {
  testing::TempDir dir;
  const std::string path = dir.path() + "/state.db";
  {
    auto s = OpenSqlite(dir.path());
    ASSERT_TRUE(s->CreateStudy(Study("one"), {Job("a"), Job("b", "ana", {"#0"})}, 1).ok());
    auto j = s->GetJob("s1-j0");
    for (auto to : {JobState::kAssigned, JobState::kRunning, JobState::kSucceeded}) {
      j->state = to;
      j = s->UpdateJob(*j, 2);
      ASSERT_TRUE(j.ok());
    }
  }
  // Valid JSON, but no record: s1-j1 (PENDING) would make Recover read it.
  ExecSql(path, "UPDATE jobs SET body = json_remove(body, '$.history') WHERE id = 's1-j0'");
  auto s = OpenSqliteStore(path);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ((*s)->quarantined(), 1);
  EXPECT_EQ((*s)->GetJob("s1-j1")->state, JobState::kFailed);
}

TEST(SqliteStoreTest, ACorruptRowFoundLaterIsSkippedToo) {
  testing::TempDir dir;
  const std::string path = dir.path() + "/state.db";
  auto s = OpenSqlite(dir.path());
  std::vector<JobRecord> jobs;
  for (int i = 0; i < 10; ++i) jobs.push_back(Job("j"));
  ASSERT_TRUE(s->CreateStudy(Study("one"), jobs, 1).ok());
  ExecSql(path, "UPDATE jobs SET body = 'x' WHERE id IN ('s1-j2', 's1-j3', 's1-j4')");
  // A page that met corrupt rows is still full, and the listing goes on after it.
  JobFilter f;
  f.page_size = 3;
  std::vector<std::string> seen;
  for (;;) {
    auto p = s->ListJobs(f);
    ASSERT_TRUE(p.ok()) << p.status().ToString();
    for (const auto& j : p->jobs) seen.push_back(j.id);
    if (p->next_page_token.empty()) break;
    f.page_token = p->next_page_token;
  }
  EXPECT_EQ(seen, (std::vector<std::string>{"s1-j0", "s1-j1", "s1-j5", "s1-j6", "s1-j7", "s1-j8",
                                            "s1-j9"}));
  EXPECT_EQ(s->quarantined(), 3);
  EXPECT_EQ(s->ActiveJobs()->size(), 7u);
}

TEST(DataDirLockTest, OneHolderAtATimeAndTheSecondIsToldWho) {
  testing::TempDir dir;
  auto first = LockDataDir(dir.path());
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  auto second = LockDataDir(dir.path());
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), StatusCode::kFailedPrecondition);
  const std::string m = second.status().message();
  EXPECT_NE(m.find(dir.path()), std::string::npos) << m;
  EXPECT_NE(m.find("pid " + std::to_string(::getpid())), std::string::npos) << m;
  first->reset();  // released with its holder
  EXPECT_TRUE(LockDataDir(dir.path()).ok());
}

TEST(JobStateTest, TheStateMachine) {
  EXPECT_TRUE(CheckTransition(JobState::kPending, JobState::kQueued).ok());
  EXPECT_TRUE(CheckTransition(JobState::kRunning, JobState::kQueued).ok());  // lease lost
  EXPECT_TRUE(CheckTransition(JobState::kQueued, JobState::kCancelled).ok());
  EXPECT_FALSE(CheckTransition(JobState::kQueued, JobState::kRunning).ok());
  EXPECT_FALSE(CheckTransition(JobState::kFailed, JobState::kQueued).ok());
  EXPECT_FALSE(CheckTransition(JobState::kCancelled, JobState::kCancelled).ok());
  EXPECT_EQ(*ParseJobState("RUNNING"), JobState::kRunning);
  EXPECT_FALSE(ParseJobState("running").ok());
}

}  // namespace
}  // namespace rmgen::coord
