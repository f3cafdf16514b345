// Core's handlers with the memory store (and SQLite for restarts) and a manual clock: a
// study from submission to results, leases, retries, stale reports, cancellation,
// draining, roles, and recovery after a restart.
#include "coordinator/core.h"

#include <gtest/gtest.h>
#include <sqlite3.h>

#include <atomic>
#include <thread>

#include "common/file.h"
#include "jobspec/outcome.h"
#include "tests/test_util.h"

namespace rmgen::coord {
namespace {

using nlohmann::json;

const char* kStudy = R"(name: t
setting: demo
catalog: /data/datasets.yaml
models:
  - {name: tiny, config: configs/models/tiny-synth.json, tokenizer: /data/tokenizer.model, template: zephyr}
methods: [exrm, dpo]
seeds: [0, 1]
train: synth-id:train
eval: {id: [synth-id:validation], ood: [synth-prompt-shift]}
sft: {epochs: 1}
)";

// A job submitted on its own, outside any study.
json LoneSpec() {
  return {{"kind", "reward"},
          {"model", {{"config", "c.json"}}},
          {"tokenizer", "t.model"},
          {"data", {{"train", "synth-id:train"}}}};
}

const Caller kAna{"ana", Role::kSubmitter};
const Caller kBob{"bob", Role::kSubmitter};
const Caller kOps{"ops", Role::kOperator};
const Caller kAgent{"agent", Role::kWorker};

WorkerRecord Worker(const std::string& id, int64_t slots) {
  WorkerRecord w;
  w.id = id;
  w.host = id + ".local";
  w.slots = slots;
  return w;
}

// Metrics an eval job would report: accuracies derived from the labels, so results differ
// per method and seed.
json FakeMetrics(const JobRecord& j) {
  if (j.kind != "eval") return {{"kind", j.kind}, {"train", {{"steps", 10}}}};
  const double base = j.labels["method"] == "exrm" ? 0.9 : 0.85;
  const double seed = j.labels["seed"].get<int64_t>() * 0.01;
  return {{"kind", "eval"},
          {"eval",
           {{"synth-id:validation", {{"accuracy", base + seed}, {"n", 100}}},
            {"synth-prompt-shift", {{"accuracy", base - 0.2 + seed}, {"n", 100}}}}}};
}

class CoreTest : public ::testing::Test {
 protected:
  CoreTest() : store_(NewMemoryStore()), core_(store_.get(), &clock_, Options()) {}
  static CoreOptions Options() {
    CoreOptions o;
    o.lease_ms = 10'000;
    o.max_attempts = 2;
    o.output_root = "/runs";
    return o;
  }
  // Acquires and completes jobs on `worker` until none is left to give.
  int RunAll(const std::string& worker) {
    int n = 0;
    for (;;) {
      auto a = core_.AcquireJob(kAgent, worker);
      EXPECT_TRUE(a.ok()) << a.status().ToString();
      if (!a.ok() || !a->has_value()) return n;
      const JobRecord& j = (*a)->job;
      EXPECT_TRUE(
          core_.ReportEvents(kAgent, worker, j.id, j.attempt, {{{"step", 1}, {"loss", 0.5}}}, true)
              .ok());
      auto st =
          core_.CompleteJob(kAgent, worker, j.id, j.attempt, true, FakeMetrics(j), "", false, {});
      EXPECT_TRUE(st.ok()) << st.status().ToString();
      ++n;
    }
  }
  ManualClock clock_;
  std::unique_ptr<Store> store_;
  Core core_;
};

TEST_F(CoreTest, AStudyRunsInDependencyOrderToResults) {
  auto sub = core_.SubmitStudy(kAna, kStudy, "t.yaml", "req-1");
  ASSERT_TRUE(sub.ok()) << sub.status().ToString();
  EXPECT_TRUE(sub->second);
  const std::string sid = sub->first.study.id;
  EXPECT_EQ(sub->first.jobs_total, 9);
  EXPECT_EQ(sub->first.job_states["QUEUED"], 1);  // only the SFT job is ready
  // The same request: the same study, nothing new.
  auto again = core_.SubmitStudy(kAna, kStudy, "t.yaml", "req-1");
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(again->second);
  EXPECT_EQ(again->first.study.id, sid);

  ASSERT_TRUE(core_.RegisterWorker(kAgent, Worker("w1", 4), {}).ok());
  auto first = core_.AcquireJob(kAgent, "w1");
  ASSERT_TRUE(first.ok() && first->has_value());
  EXPECT_EQ((*first)->job.kind, "sft");
  EXPECT_EQ((*first)->output_dir, "/runs/" + sid + "-j0");
  // Nothing else is ready until the SFT job succeeds.
  EXPECT_FALSE(core_.AcquireJob(kAgent, "w1")->has_value());
  ASSERT_TRUE(core_
                  .CompleteJob(kAgent, "w1", (*first)->job.id, 1, true, FakeMetrics((*first)->job),
                               "", false, {})
                  .ok());
  // Training jobs now see the SFT output as their model, resolved to a folder.
  auto train = core_.AcquireJob(kAgent, "w1");
  ASSERT_TRUE(train.ok() && train->has_value());
  EXPECT_EQ((*train)->job.spec["model"]["path"], "/runs/" + sid + "-j0/checkpoint");
  ASSERT_TRUE(core_
                  .CompleteJob(kAgent, "w1", (*train)->job.id, 1, true, FakeMetrics((*train)->job),
                               "", false, {})
                  .ok());
  EXPECT_EQ(RunAll("w1"), 7);
  auto view = core_.GetStudy(kAna, sid);
  ASSERT_TRUE(view.ok());
  EXPECT_EQ(view->job_states["SUCCEEDED"], 9);

  auto results = core_.GetResults(kAna, sid);
  ASSERT_TRUE(results.ok()) << results.status().ToString();
  EXPECT_EQ(results->finished_runs, 4);
  EXPECT_EQ(results->expected_runs, 4);
  ASSERT_EQ(results->rows.size(), 2u);
  EXPECT_NEAR(results->rows[0].id.mean, 0.905, 1e-9);   // exrm: 0.90, 0.91
  EXPECT_NEAR(results->rows[1].ood.mean, 0.655, 1e-9);  // dpo: 0.65, 0.66
  EXPECT_EQ(results->win_id.exrm_wins, 2);
  auto events = core_.GetEvents(kAna, sid + "-j0", 0, 10);
  ASSERT_TRUE(events.ok());
  EXPECT_TRUE(events->empty());  // the SFT job above reported none
  EXPECT_EQ(core_.GetEvents(kAna, sid + "-j3", 0, 10)->size(), 1u);
}

TEST_F(CoreTest, ALostLeaseRequeuesWithTheNextAttemptAndStaleReportsAreRejected) {
  ASSERT_TRUE(core_.SubmitJob(kAna, LoneSpec(), "lone", 2, 0, "r").ok());
  ASSERT_TRUE(core_.RegisterWorker(kAgent, Worker("w1", 2), {}).ok());
  auto a = core_.AcquireJob(kAgent, "w1");
  ASSERT_TRUE(a.ok() && a->has_value());
  const std::string id = (*a)->job.id;
  EXPECT_EQ((*a)->job.attempt, 1);
  clock_.Advance(11'000);  // w1 missed its heartbeats
  ASSERT_TRUE(core_.Tick().ok());
  auto j = core_.GetJob(kAna, id);
  EXPECT_EQ(j->state, JobState::kQueued);
  ASSERT_EQ(j->history.size(), 1u);
  EXPECT_NE(j->history[0].outcome.find("lease expired: worker w1"), std::string::npos);

  ASSERT_TRUE(core_.RegisterWorker(kAgent, Worker("w2", 2), {}).ok());
  auto b = core_.AcquireJob(kAgent, "w2");
  ASSERT_TRUE(b.ok() && b->has_value());
  EXPECT_EQ((*b)->job.attempt, 2);
  // w1 comes back and reports its dead attempt: rejected, and told to stop.
  auto stale = core_.CompleteJob(kAgent, "w1", id, 1, true, {{"x", 1}}, "", false, {});
  EXPECT_EQ(stale.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(stale.status().message().find("stale"), std::string::npos);
  auto hb = core_.RegisterWorker(kAgent, Worker("w1", 2), {{id, 1}});
  ASSERT_TRUE(hb.ok());
  EXPECT_EQ(hb->cancel, std::vector<std::string>{id});
  // The live attempt completes; a duplicate of that report changes nothing.
  EXPECT_EQ(*core_.CompleteJob(kAgent, "w2", id, 2, true, {{"x", 2}}, "", false, {}),
            JobState::kSucceeded);
  EXPECT_EQ(*core_.CompleteJob(kAgent, "w2", id, 2, true, {{"x", 2}}, "", false, {}),
            JobState::kSucceeded);
  EXPECT_EQ((*core_.GetResult(kAna, id))->metrics["x"], 2);
}

TEST_F(CoreTest, RetriesAreBoundedAndDependentsFail) {
  ASSERT_TRUE(core_.SubmitStudy(kAna, kStudy, "t.yaml", "").ok());
  ASSERT_TRUE(core_.RegisterWorker(kAgent, Worker("w", 8), {}).ok());
  for (int attempt = 1; attempt <= 2; ++attempt) {
    auto a = core_.AcquireJob(kAgent, "w");
    ASSERT_TRUE(a.ok() && a->has_value());
    EXPECT_EQ((*a)->job.attempt, attempt);
    ASSERT_TRUE(core_
                    .CompleteJob(kAgent, "w", (*a)->job.id, attempt, false, json(), "exit 1 (OOM)",
                                 true, {"line a", "line b"})
                    .ok());
  }
  auto sft = core_.GetJob(kAna, "s1-j0");
  EXPECT_EQ(sft->state, JobState::kFailed);
  EXPECT_EQ(sft->history.size(), 2u);
  EXPECT_NE(sft->reason.find("out of attempts"), std::string::npos) << sft->reason;
  EXPECT_EQ(core_.GetJob(kAna, "s1-j1")->state, JobState::kFailed);
  EXPECT_NE(core_.GetJob(kAna, "s1-j2")->reason.find("dependency"), std::string::npos);
  auto logs = core_.GetEvents(kAna, "s1-j0", 0, 10);
  ASSERT_EQ(logs->size(), 2u);
  EXPECT_EQ((*logs)[1].body["log_tail"][1], "line b");

  // A non-retryable failure ends a job at its first attempt.
  ASSERT_TRUE(core_.SubmitStudy(kAna, kStudy, "t.yaml", "other").ok());
  auto a = core_.AcquireJob(kAgent, "w");
  ASSERT_TRUE(a.ok() && a->has_value());
  EXPECT_EQ(*core_.CompleteJob(kAgent, "w", (*a)->job.id, 1, false, json(), "bad spec", false, {}),
            JobState::kFailed);
  EXPECT_NE(core_.GetJob(kAna, (*a)->job.id)->reason.find("not retryable"), std::string::npos);
}

// The cause an agent reports decides the retry by its class (jobspec/outcome.h), whatever the
// agent's flag says; a name the coordinator does not know leaves it to the flag.
TEST_F(CoreTest, ACausesClassDecidesTheRetry) {
  ASSERT_TRUE(core_.RegisterWorker(kAgent, Worker("w", 8), {}).ok());
  const struct {
    const char* cause;
    bool flag;
    JobState after;
  } rows[] = {
      {"corrupt_state", true, JobState::kFailed},  // permanent, though flagged retryable
      {"no_device", true, JobState::kFailed},
      {"incompatible", true, JobState::kFailed},
      {"comm_failure", false, JobState::kQueued},  // transient, though flagged final
      {"rank_killed", false, JobState::kQueued},
      {"from_a_newer_agent", true, JobState::kQueued},
      {"from_a_newer_agent", false, JobState::kFailed},
  };
  int n = 0;
  for (const auto& r : rows) {
    SCOPED_TRACE(std::string(r.cause) + (r.flag ? " retryable" : " final"));
    ASSERT_TRUE(core_.SubmitStudy(kAna, kStudy, "t.yaml", "c" + std::to_string(n++)).ok());
    auto a = core_.AcquireJob(kAgent, "w");
    ASSERT_TRUE(a.ok() && a->has_value());
    auto st = core_.CompleteJob(kAgent, "w", (*a)->job.id, 1, false, json(), "rank 1 failed",
                                r.flag, {}, false, r.cause, 1);
    ASSERT_TRUE(st.ok()) << st.status().ToString();
    EXPECT_EQ(*st, r.after);
    auto events = core_.GetEvents(kAna, (*a)->job.id, 0, 10);
    ASSERT_TRUE(events.ok());
    ASSERT_FALSE(events->empty());
    const json& e = events->back().body;
    const bool known = CauseFromName(r.cause) != Cause::kUnknown;
    EXPECT_EQ(e.value("cause", std::string()), known ? r.cause : "unknown") << e.dump();
    EXPECT_EQ(e.value("failed_rank", -1), 1);
    const std::string reason = core_.GetJob(kAna, (*a)->job.id)->reason;
    EXPECT_NE(reason.find(std::string("failed (") + (known ? r.cause : "unknown") + "): rank 1"),
              std::string::npos)
        << reason;
    if (r.after == JobState::kQueued) {  // out of the way of the next row
      ASSERT_TRUE(core_.CancelJob(kAna, (*a)->job.id).ok());
    }
  }
}

TEST_F(CoreTest, PreemptedAttemptsDoNotUseUpTheRetries) {
  ASSERT_TRUE(core_.SubmitStudy(kAna, kStudy, "t.yaml", "").ok());
  ASSERT_TRUE(core_.RegisterWorker(kAgent, Worker("w", 8), {}).ok());
  // The test core allows 2 attempts; three preemptions in a row still leave the job queued.
  for (int attempt = 1; attempt <= 3; ++attempt) {
    auto a = core_.AcquireJob(kAgent, "w");
    ASSERT_TRUE(a.ok() && a->has_value());
    EXPECT_EQ((*a)->job.attempt, attempt);
    ASSERT_EQ(*core_.CompleteJob(kAgent, "w", (*a)->job.id, attempt, false, json(), "agent stopped",
                                 false, {}, /*preempted=*/true),
              JobState::kQueued);
  }
  auto sft = core_.GetJob(kAna, "s1-j0");
  EXPECT_EQ(sft->history.size(), 3u);
  EXPECT_EQ(sft->history[0].outcome, "preempted: agent stopped");
  // A real failure after that still counts: the budget is 2 own failures.
  for (int attempt = 4; attempt <= 5; ++attempt) {
    auto a = core_.AcquireJob(kAgent, "w");
    ASSERT_TRUE(a.ok() && a->has_value());
    ASSERT_TRUE(
        core_.CompleteJob(kAgent, "w", (*a)->job.id, attempt, false, json(), "exit 1", true, {})
            .ok());
  }
  EXPECT_EQ(core_.GetJob(kAna, "s1-j0")->state, JobState::kFailed);
}

TEST_F(CoreTest, CancelReachesTheWorkerAndDrainingStopsNewWork) {
  ASSERT_TRUE(core_.SubmitStudy(kAna, kStudy, "t.yaml", "").ok());
  ASSERT_TRUE(core_.RegisterWorker(kAgent, Worker("w", 4), {}).ok());
  auto a = core_.AcquireJob(kAgent, "w");
  ASSERT_TRUE(a.ok() && a->has_value());
  const std::string id = (*a)->job.id;
  EXPECT_EQ(core_.CancelJob(kBob, id).status().code(), StatusCode::kPermissionDenied);
  auto c = core_.CancelJob(kAna, id);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->state, JobState::kCancelled);
  EXPECT_TRUE(*core_.ReportEvents(kAgent, "w", id, 1, {}, true));
  EXPECT_EQ(core_.Heartbeat(kAgent, "w", {{id, 1}})->cancel, std::vector<std::string>{id});
  // Its dependents are cancelled too; the study has nothing left to run.
  EXPECT_EQ(core_.GetJob(kAna, "s1-j1")->state, JobState::kCancelled);
  EXPECT_EQ(core_.CancelJob(kAna, id).status().code(), StatusCode::kFailedPrecondition);

  ASSERT_TRUE(core_.SubmitStudy(kAna, kStudy, "t.yaml", "2").ok());
  EXPECT_EQ(core_.DrainWorker(kAna, "w", false).status().code(), StatusCode::kPermissionDenied);
  ASSERT_TRUE(core_.DrainWorker(kOps, "w", false).ok());
  EXPECT_FALSE(core_.AcquireJob(kAgent, "w")->has_value());
  ASSERT_TRUE(core_.DrainWorker(kOps, "w", true).ok());
  EXPECT_TRUE(core_.AcquireJob(kAgent, "w")->has_value());
}

TEST_F(CoreTest, AResentProgressReportIsRecordedOnce) {
  ASSERT_TRUE(core_.SubmitStudy(kAna, kStudy, "t.yaml", "").ok());
  ASSERT_TRUE(core_.RegisterWorker(kAgent, Worker("w", 4), {}).ok());
  auto a = core_.AcquireJob(kAgent, "w");
  ASSERT_TRUE(a.ok() && a->has_value());
  const std::string id = (*a)->job.id;
  const std::vector<json> first = {{{"step", 1}}, {{"step", 2}}};
  const std::vector<json> more = {{{"step", 2}}, {{"step", 3}}};
  // The agent lost the reply to the first report (a coordinator restart) and sends it again.
  ASSERT_TRUE(core_.ReportEvents(kAgent, "w", id, 1, first, true).ok());
  ASSERT_TRUE(core_.ReportEvents(kAgent, "w", id, 1, first, true).ok());
  ASSERT_TRUE(core_.ReportEvents(kAgent, "w", id, 1, more, true).ok());
  auto ev = core_.GetEvents(kAna, id, 0, 100);
  ASSERT_TRUE(ev.ok());
  std::vector<int64_t> steps;
  for (const auto& e : *ev) steps.push_back(e.body.value("step", int64_t{0}));
  EXPECT_EQ(steps, (std::vector<int64_t>{1, 2, 3}));
}

// With confinement on, every path a job or study names stays in a data root, in the caller's
// own jobs' folders or in its own reference cache; job folders are named by exact tokens.
TEST(CorePathTest, PathsStayInTheDataRootsAndTheCallersOwnOutputs) {
  ManualClock clock;
  auto store = NewMemoryStore();
  CoreOptions o;
  o.output_root = "/runs";
  o.confine_paths = true;
  o.data_roots = {"/data", "/srv"};
  o.denied_roots = {"/srv/rmgen"};  // the coordinator's data directory
  Core core(store.get(), &clock, o);
  auto with_config = [](const std::string& path) {
    json s = LoneSpec();
    s["model"]["config"] = path;
    return s;
  };
  auto submit = [&](const Caller& who, const std::string& path) {
    return core.SubmitJob(who, with_config(path), "", 1, 0, "").status();
  };
  auto a = core.SubmitJob(kAna, with_config("/data/c.json"), "a", 1, 0, "");
  auto b = core.SubmitJob(kBob, with_config("/data/c.json"), "b", 1, 0, "");
  ASSERT_TRUE(a.ok() && b.ok());
  const std::string ana_job = a->record.id, bob_job = b->record.id;
  // Allowed: the data roots, relative paths, the caller's own jobs and reference cache.
  for (const std::string& ok : std::vector<std::string>{
           std::string("/data/models/c.json"), std::string("models/c.json"),
           std::string("/srv/other/c.json"), "${output:" + ana_job + "}/checkpoint/config.json",
           "${output}/c.json", "/runs/" + ana_job + "/checkpoint/config.json",
           "/runs/ref-cache/" + HexHash("ana").substr(0, 16) + "/x.bin"}) {
    EXPECT_TRUE(submit(kAna, ok).ok()) << ok << ": " << submit(kAna, ok).ToString();
  }
  // Refused: anything that reaches another user's outputs, the output root itself, or
  // outside the roots, however it is spelled.
  for (const std::string& bad : std::vector<std::string>{
           "${output:" + bob_job + "}/checkpoint", "${outputXs" + bob_job + "}/checkpoint",
           "${output}2/checkpoint", "${output}/../" + bob_job + "/checkpoint",
           "${output:" + ana_job + "}/../" + bob_job, "/data/../etc/passwd",
           "/data/x/../../runs/" + bob_job, std::string("/etc/passwd"), std::string("/runs"),
           "/runs/" + bob_job + "/checkpoint/config.json",
           "/runs/ref-cache/" + HexHash("bob").substr(0, 16) + "/x.bin",
           std::string("/runs/ref-cache"), std::string("/runs/other/x"),
           std::string("/data/${output}/x"), std::string("models/../../etc/passwd"),
           std::string("${output:#1}/x"), std::string("${output:#0}/x"),
           std::string("/srv/rmgen/state.db"), std::string("/srv/rmgen")}) {
    const Status st = submit(kAna, bad);
    EXPECT_EQ(st.code(), StatusCode::kPermissionDenied) << bad << ": " << st.ToString();
    EXPECT_NE(st.message().find("model.config"), std::string::npos) << st.ToString();
  }
  // A study's model files are read here (the memory check) and are confined alike.
  std::string study = kStudy;
  study.replace(study.find("template: zephyr}"), 17, "template: zephyr, arch: /etc/hostname}");
  const Status st = core.SubmitStudy(kAna, study, "t.yaml", "").status();
  EXPECT_EQ(st.code(), StatusCode::kPermissionDenied) << st.ToString();
  EXPECT_NE(st.message().find("models[0].arch"), std::string::npos) << st.ToString();
  EXPECT_TRUE(core.SubmitStudy(kAna, kStudy, "t.yaml", "").ok());
}

// A call made with a session that a registration has replaced renews nothing and is given
// nothing, whenever the registration happened (the check is made with the lease it renews).
TEST_F(CoreTest, AReplacedSessionRenewsNoLeaseAndGetsNoJob) {
  auto first = core_.RegisterWorker(kAgent, Worker("w", 2), {}, "agent-a");
  ASSERT_TRUE(first.ok());
  ASSERT_TRUE(core_.SubmitJob(kAna, LoneSpec(), "lone", 1, 0, "").ok());
  auto a = core_.AcquireJob(kAgent, "w", &first->session);
  ASSERT_TRUE(a.ok() && a->has_value());
  const std::string id = (*a)->job.id;
  auto second = core_.RegisterWorker(kAgent, Worker("w", 2), {{id, 1}}, "agent-a");
  ASSERT_TRUE(second.ok());
  ASSERT_NE(first->session, second->session);
  // The old session's heartbeat: told to register again; neither the worker's lease nor the
  // job's is renewed (both ran from the registration: 10 s).
  clock_.Advance(9'000);
  auto stale = core_.Heartbeat(kAgent, "w", {{id, 1}}, &first->session);
  ASSERT_TRUE(stale.ok());
  EXPECT_TRUE(stale->reregister);
  EXPECT_TRUE(stale->cancel.empty());
  ASSERT_TRUE(core_.SubmitJob(kAna, LoneSpec(), "second", 1, 0, "").ok());
  EXPECT_EQ(core_.AcquireJob(kAgent, "w", &first->session).status().code(),
            StatusCode::kUnauthenticated);
  clock_.Advance(2'000);
  ASSERT_TRUE(core_.Tick().ok());
  auto j = core_.GetJob(kAna, id);
  ASSERT_TRUE(j.ok());
  EXPECT_EQ(j->state, JobState::kQueued) << j->reason;
  EXPECT_NE(j->reason.find("lease expired"), std::string::npos) << j->reason;
  // The current session is answered as usual.
  auto live = core_.Heartbeat(kAgent, "w", {}, &second->session);
  ASSERT_TRUE(live.ok());
  EXPECT_FALSE(live->reregister);
}

// The per-user limit on unfinished jobs holds for submissions made at once: each reserves
// its jobs before it is written, so the limit is never passed.
TEST(CoreQuotaTest, ConcurrentSubmissionsNeverPassTheActiveJobLimit) {
  ManualClock clock;
  auto store = NewMemoryStore();
  CoreOptions o;
  o.output_root = "/runs";
  o.max_active_jobs_per_user = 5;
  Core core(store.get(), &clock, o);
  std::atomic<int> ok{0}, refused{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int k = 0; k < 4; ++k) {
        const Status st = core.SubmitJob(kAna, LoneSpec(), "", 1, 0, "").status();
        if (st.ok()) {
          ++ok;
        } else {
          EXPECT_EQ(st.code(), StatusCode::kResourceExhausted) << st.ToString();
          EXPECT_NE(st.message().find("--max-active-jobs-per-user"), std::string::npos);
          ++refused;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 5);
  EXPECT_EQ(refused.load(), 27);
  // Another user has a limit of its own; a study counts all its unfinished jobs (9 > 5).
  EXPECT_TRUE(core.SubmitJob(kBob, LoneSpec(), "", 1, 0, "").ok());
  EXPECT_EQ(core.SubmitStudy(kBob, kStudy, "t.yaml", "").status().code(),
            StatusCode::kResourceExhausted);
  // A finished job frees its place.
  auto page = core.ListJobs(kAna, {}, false);
  ASSERT_TRUE(page.ok() && !page->jobs.empty());
  ASSERT_TRUE(core.CancelJob(kAna, page->jobs[0].id).ok());
  EXPECT_TRUE(core.SubmitJob(kAna, LoneSpec(), "", 1, 0, "").ok());
  EXPECT_EQ(core.SubmitJob(kAna, LoneSpec(), "", 1, 0, "").status().code(),
            StatusCode::kResourceExhausted);
}

TEST_F(CoreTest, RolesAndVisibility) {
  auto s = core_.SubmitStudy(kAna, kStudy, "t.yaml", "");
  ASSERT_TRUE(s.ok());
  const std::string sid = s->first.study.id;
  EXPECT_EQ(core_.GetStudy(kBob, sid).status().code(), StatusCode::kPermissionDenied);
  EXPECT_TRUE(core_.GetStudy(kOps, sid).ok());
  EXPECT_EQ(core_.GetStudy(kAgent, sid).status().code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(core_.SubmitStudy(kAgent, kStudy, "t.yaml", "").status().code(),
            StatusCode::kPermissionDenied);
  EXPECT_EQ(core_.AcquireJob(kAna, "w").status().code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(core_.ListJobs(kBob, {}, false)->jobs.size(), 0u);
  EXPECT_EQ(core_.ListJobs(kAna, {}, false)->jobs.size(), 9u);
  EXPECT_EQ(core_.ListJobs(kBob, {}, true).status().code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(core_.ListJobs(kOps, {}, true)->jobs.size(), 9u);
  EXPECT_EQ(core_.ListStudies(kOps, true)->size(), 1u);
  EXPECT_EQ(core_.ListStudies(kBob, false)->size(), 0u);
  // Bad input is an error naming the field, not a crash.
  auto bad = core_.SubmitStudy(kAna, "name: [", "bad.yaml", "");
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(core_.SubmitJob(kAna, {{"kind", "reward"}, {"bogus", 1}}, "", 1, 0, "").status().code(),
            StatusCode::kInvalidArgument);
}

TEST_F(CoreTest, AQueuedJobSaysWhyItWaits) {
  ASSERT_TRUE(core_.SubmitJob(kAna, LoneSpec(), "big", 16, 0, "").ok());
  ASSERT_TRUE(core_.RegisterWorker(kAgent, Worker("w", 4), {}).ok());
  EXPECT_FALSE(core_.AcquireJob(kAgent, "w")->has_value());
  auto j = core_.GetJob(kAna, "x1-j0");
  ASSERT_TRUE(j.ok());
  EXPECT_NE(j->reason.find("16 slots"), std::string::npos) << j->reason;
}

// A row found corrupt while the coordinator runs (a page read quarantines it, and the store
// fails the jobs waiting on it): the next tick brings Core's queue in line, so the job is
// never handed out and its dependents do not wait forever.
TEST(CoreRestartTest, AJobQuarantinedWhileRunningLeavesTheQueueAndItsDependentsFail) {
  testing::TempDir dir;
  ManualClock clock;
  const std::string path = dir.path() + "/state.db";
  auto store = OpenSqliteStore(path);
  ASSERT_TRUE(store.ok());
  Core core(store->get(), &clock, {});
  ASSERT_TRUE(core.Recover().ok());
  auto study = core.SubmitStudy(kAna, kStudy, "t.yaml", "");
  ASSERT_TRUE(study.ok()) << study.status().ToString();
  const std::string sid = study->first.study.id;
  ASSERT_TRUE(core.RegisterWorker(kAgent, Worker("w", 4), {}).ok());
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  const std::string damage = "UPDATE jobs SET body = '{broken' WHERE id = '" + sid + "-j0'";
  ASSERT_EQ(sqlite3_exec(db, damage.c_str(), nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(db);
  ASSERT_TRUE((*store)->ListJobs({}).ok());  // finds it: quarantined, its waiters failed
  EXPECT_EQ((*store)->quarantined(), 1);
  ASSERT_TRUE(core.Tick().ok());
  EXPECT_EQ(core.GetJob(kAna, sid + "-j0").status().code(), StatusCode::kNotFound);
  auto a = core.AcquireJob(kAgent, "w");
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_FALSE(a->has_value()) << (*a)->job.id;
  auto page = core.ListJobs(kAna, {}, false);
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->jobs.size(), 8u);
  for (const auto& j : page->jobs) {
    EXPECT_EQ(j.state, JobState::kFailed) << j.id;
    auto cached = core.GetJob(kAna, j.id);  // the cache agrees with the store
    ASSERT_TRUE(cached.ok());
    EXPECT_EQ(cached->state, JobState::kFailed) << j.id;
  }
}

TEST(CoreRestartTest, ARestartedCoordinatorKeepsRunningJobsWhoseAgentsReconnect) {
  testing::TempDir dir;
  ManualClock clock;
  std::string id;
  {
    auto store = OpenSqliteStore(dir.path() + "/state.db");
    ASSERT_TRUE(store.ok());
    Core core(store->get(), &clock, {});
    ASSERT_TRUE(core.SubmitStudy(kAna, kStudy, "t.yaml", "once").ok());
    ASSERT_TRUE(core.RegisterWorker(kAgent, Worker("w", 4), {}).ok());
    auto a = core.AcquireJob(kAgent, "w");
    ASSERT_TRUE(a.ok() && a->has_value());
    id = (*a)->job.id;
    ASSERT_TRUE(core.ReportEvents(kAgent, "w", id, 1, {{{"step", 1}}}, true).ok());
  }                       // the coordinator dies
  clock.Advance(60'000);  // down for longer than a lease
  auto store = OpenSqliteStore(dir.path() + "/state.db");
  ASSERT_TRUE(store.ok());
  Core core(store->get(), &clock, {});
  ASSERT_TRUE(core.Recover().ok());
  ASSERT_TRUE(core.Tick().ok());  // the fresh lease keeps the job
  EXPECT_EQ(core.GetJob(kAna, id)->state, JobState::kRunning);
  auto hb = core.RegisterWorker(kAgent, Worker("w", 4), {{id, 1}});
  ASSERT_TRUE(hb.ok());
  EXPECT_TRUE(hb->cancel.empty());
  EXPECT_EQ(*core.CompleteJob(kAgent, "w", id, 1, true, {{"ok", true}}, "", false, {}),
            JobState::kSucceeded);
  // Every job the old coordinator knew goes on: the rest of the study still runs.
  int ran = 0;
  for (;;) {
    auto a = core.AcquireJob(kAgent, "w");
    ASSERT_TRUE(a.ok());
    if (!a->has_value()) break;
    ASSERT_TRUE(core.CompleteJob(kAgent, "w", (*a)->job.id, (*a)->job.attempt, true,
                                 FakeMetrics((*a)->job), "", false, {})
                    .ok());
    ++ran;
  }
  EXPECT_EQ(ran, 8);
  // Resubmitting the same request after the restart: the same study.
  auto again = core.SubmitStudy(kAna, kStudy, "t.yaml", "once");
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(again->second);
  EXPECT_EQ(core.ListStudies(kAna, false)->size(), 1u);
}

// The submit-time memory check (coordinator/memory_plan.h): a job whose per-rank estimate
// fits on no recent worker that reports its memory is refused, naming the job, the estimate,
// the largest worker memory and what would fit; without such workers anything goes.
TEST_F(CoreTest, AJobThatFitsOnNoWorkerIsRefusedAtSubmit) {
  const json spec = {{"kind", "reward"},
                     {"model", {{"config", testing::SourcePath("configs/models/gemma-2b.json")}}},
                     {"tokenizer", "t.model"},
                     {"data", {{"train", "synth-id:train"}}},
                     {"runtime", {{"device", "cuda"}}}};
  // No worker reports its memory: accepted (gemma-2b EXRM in fp32 needs about 96 GiB).
  ASSERT_TRUE(core_.SubmitJob(kAna, spec, "first", 1, 0, "r1").ok());
  ASSERT_TRUE(core_.RegisterWorker(kAgent, Worker("unknown", 2), {}).ok());
  ASSERT_TRUE(core_.SubmitJob(kAna, spec, "second", 1, 0, "r2").ok());
  clock_.Advance(25ll * 3600 * 1000);  // "unknown" is no longer recent
  WorkerRecord small = Worker("small", 2);
  small.memory_bytes_per_slot = 48ll << 30;
  ASSERT_TRUE(core_.RegisterWorker(kAgent, small, {}).ok());
  auto refused = core_.SubmitJob(kAna, spec, "gemma-exrm", 1, 0, "r3");
  ASSERT_EQ(refused.status().code(), StatusCode::kFailedPrecondition)
      << refused.status().ToString();
  const std::string msg = refused.status().message();
  for (const char* part :
       {"job 'gemma-exrm' (reward, 1 rank) fits on no worker", "96.3 GiB per rank", "weights 9.3",
        "48.0 GiB per slot (small)",
        "Would fit: train.gradient_checkpointing: true + model.dtype: bfloat16 (45.9 GiB)",
        "rmgen plan"}) {
    EXPECT_NE(msg.find(part), std::string::npos) << part << "\n" << msg;
  }
  // What the advice says fits is accepted.
  json fixed = spec;
  fixed["model"]["dtype"] = "bfloat16";
  fixed["train"] = {{"gradient_checkpointing", true}};
  EXPECT_TRUE(core_.SubmitJob(kAna, fixed, "gemma-exrm", 1, 0, "r4").ok());
  // A model config not readable here: nothing to plan with, accepted.
  json unknown = spec;
  unknown["model"] = {{"path", "/nowhere/gemma"}};
  EXPECT_TRUE(core_.SubmitJob(kAna, unknown, "elsewhere", 1, 0, "r5").ok());
  // A worker with room for it: accepted.
  WorkerRecord big = Worker("big", 8);
  big.memory_bytes_per_slot = 141ll << 30;
  ASSERT_TRUE(core_.RegisterWorker(kAgent, big, {}).ok());
  EXPECT_TRUE(core_.SubmitJob(kAna, spec, "gemma-exrm", 1, 0, "r6").ok());
  // Workers show their memory.
  bool listed = false;
  auto workers = core_.ListWorkers(kOps);
  ASSERT_TRUE(workers.ok());
  for (const auto& v : *workers) {
    if (v.worker.id == "big") listed = v.worker.memory_bytes_per_slot == (141ll << 30);
  }
  EXPECT_TRUE(listed);
  // Gone for more than a day, the big worker no longer counts.
  clock_.Advance(25ll * 3600 * 1000);
  ASSERT_TRUE(core_.RegisterWorker(kAgent, small, {}).ok());
  EXPECT_EQ(core_.SubmitJob(kAna, spec, "gemma-exrm", 1, 0, "r7").status().code(),
            StatusCode::kFailedPrecondition);
}

TEST_F(CoreTest, AStudyWhoseJobsFitOnNoWorkerIsRefusedWhole) {
  const std::string study = std::string(R"(name: big
setting: demo
catalog: /data/datasets.yaml
models:
  - {name: gemma, path: /nowhere/gemma-2b-it, template: gemma, arch: )") +
                            testing::SourcePath("configs/models/gemma-2b.json") + R"(}
methods: [exrm, dpo]
seeds: [0, 1]
train: synth-id:train
eval: {id: [synth-id:validation]}
resources: {ranks: 1, device: cuda}
)";
  WorkerRecord small = Worker("small", 2);
  small.memory_bytes_per_slot = 48ll << 30;
  ASSERT_TRUE(core_.RegisterWorker(kAgent, small, {}).ok());
  auto refused = core_.SubmitStudy(kAna, study, "big.yaml", "q1");
  ASSERT_EQ(refused.status().code(), StatusCode::kFailedPrecondition)
      << refused.status().ToString();
  const std::string msg = refused.status().message();
  EXPECT_NE(msg.find("job 'big/gemma/exrm/seed0/train' (reward, 1 rank) fits on no worker"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find(" more job"), std::string::npos) << msg;
  EXPECT_TRUE(core_.ListStudies(kAna, false)->empty());
  // Without the arch (and the checkpoint not readable here) there is nothing to plan with.
  std::string no_arch = study;
  no_arch.replace(no_arch.find(", arch: "), no_arch.find("}\nmethods") - no_arch.find(", arch: "),
                  "");
  auto accepted = core_.SubmitStudy(kAna, no_arch, "big.yaml", "q2");
  EXPECT_TRUE(accepted.ok()) << accepted.status().ToString();
}

}  // namespace
}  // namespace rmgen::coord
