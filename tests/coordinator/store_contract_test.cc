// The Store contract (coordinator/store.h), run against both stores.
#include <gtest/gtest.h>

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
