// A job whose inputs equal one its user already finished is reused, not retrained: within a
// resubmission, across studies (a sweep's points shared with a plain study), never across
// users, and never when the finished outputs are gone.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "coordinator/core.h"
#include "tests/test_util.h"

namespace rmgen::coord {
namespace {

using nlohmann::json;

const char* kStudy = R"(name: NAME
setting: demo
catalog: /data/datasets.yaml
models:
  - {name: tiny, config: configs/models/tiny-synth.json, tokenizer: /data/tokenizer.model, template: zephyr}
methods: [exrm]
seeds: [0, 1]
train: synth-id:train
eval: {id: [synth-id:validation], ood: [EVALSET]}
exrm: {epochs: 1, learning_rate: 5.0e-4}
)";

std::string Study(const std::string& name, const std::string& ood) {
  std::string s = kStudy;
  s.replace(s.find("NAME"), 4, name);
  s.replace(s.find("EVALSET"), 7, ood);
  return s;
}

const Caller kAna{"ana", Role::kSubmitter};
const Caller kBob{"bob", Role::kSubmitter};
const Caller kAgent{"agent", Role::kWorker};

class ReuseTest : public ::testing::Test {
 protected:
  ReuseTest() : store_(NewMemoryStore()), core_(store_.get(), &clock_, Options(root_.path())) {
    WorkerRecord w;
    w.id = "w1";
    w.host = "w1.local";
    w.slots = 4;
    EXPECT_TRUE(core_.RegisterWorker(kAgent, w, {}).ok());
  }
  static CoreOptions Options(const std::string& root) {
    CoreOptions o;
    o.output_root = root;
    return o;
  }
  // Runs every job it can, each writing its output folder; returns the ids it ran.
  std::vector<std::string> RunAll() {
    std::vector<std::string> ran;
    for (;;) {
      auto a = core_.AcquireJob(kAgent, "w1");
      EXPECT_TRUE(a.ok()) << a.status().ToString();
      if (!a.ok() || !a->has_value()) break;
      const JobRecord& j = (*a)->job;
      std::filesystem::create_directories((*a)->output_dir);
      std::ofstream((*a)->output_dir + "/metrics.json") << "{}";
      json metrics = {{"kind", j.kind}};
      if (j.kind == "eval") {
        metrics["eval"] = json::object();
        for (const auto& set : j.spec["data"]["eval"]) {
          metrics["eval"][set.get<std::string>()] = {{"accuracy", 0.75}, {"n", 4}};
        }
      }
      EXPECT_TRUE(
          core_.CompleteJob(kAgent, "w1", j.id, j.attempt, true, metrics, "", false, {}).ok());
      ran.push_back(j.id);
      EXPECT_TRUE(core_.Tick().ok());
    }
    return ran;
  }
  std::vector<JobRecord> Jobs(const std::string& study) {
    JobFilter f;
    f.study_id = study;
    f.page_size = 1000;
    auto p = store_->ListJobs(f);
    EXPECT_TRUE(p.ok());
    return p.ok() ? p->jobs : std::vector<JobRecord>{};
  }

  testing::TempDir root_;
  ManualClock clock_;
  std::unique_ptr<Store> store_;
  Core core_;
};

TEST_F(ReuseTest, FinishedTrainingIsReusedAcrossStudiesAndOnlyNewEvalsRun) {
  auto a = core_.SubmitStudy(kAna, Study("a", "synth-prompt-shift"), "a.yaml", "ra");
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_EQ(RunAll().size(), 4u);  // 2 seeds x (train + eval)
  // Another study with the same training jobs but another OOD set: the training jobs are
  // reused, the evals (other inputs) run.
  auto b = core_.SubmitStudy(kAna, Study("b", "synth-response-shift"), "b.yaml", "rb");
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  const std::string sa = a->first.study.id, sb = b->first.study.id;
  const auto jobs_b = Jobs(sb);
  ASSERT_EQ(jobs_b.size(), 4u);
  const auto jobs_a = Jobs(sa);
  for (size_t i = 0; i < jobs_b.size(); ++i) {
    const JobRecord& j = jobs_b[i];
    if (j.kind == "reward") {
      EXPECT_EQ(j.state, JobState::kSucceeded) << j.name;
      EXPECT_EQ(j.labels["reused_from"], jobs_a[i].id);
      EXPECT_NE(j.reason.find(jobs_a[i].id), std::string::npos) << j.reason;
      auto r = store_->GetResult(j.id);
      ASSERT_TRUE(r.ok() && r->has_value());
    } else {
      EXPECT_EQ(j.state, JobState::kQueued) << j.name;  // its dependency is done
      // It reads the reused checkpoint where it is.
      EXPECT_EQ(j.spec["model"]["path"], "${output:" + jobs_a[i - 1].id + "}/checkpoint");
    }
  }
  const auto ran = RunAll();
  EXPECT_EQ(ran.size(), 2u);  // the two new evals only
  for (const auto& id : ran) EXPECT_EQ(id.rfind(sb + "-", 0), 0u) << id;
  auto results = core_.GetResults(kAna, sb);
  ASSERT_TRUE(results.ok()) << results.status().ToString();
  EXPECT_EQ(results->finished_runs, 2);
  // The same study a third time: everything is reused, nothing runs.
  auto c = core_.SubmitStudy(kAna, Study("c", "synth-prompt-shift"), "c.yaml", "rc");
  ASSERT_TRUE(c.ok());
  for (const auto& j : Jobs(c->first.study.id)) EXPECT_EQ(j.state, JobState::kSucceeded) << j.name;
  EXPECT_TRUE(RunAll().empty());
}

TEST_F(ReuseTest, OtherUsersAndMissingOutputsAreNotReused) {
  auto a = core_.SubmitStudy(kAna, Study("a", "synth-prompt-shift"), "a.yaml", "ra");
  ASSERT_TRUE(a.ok());
  RunAll();
  // Bob's identical study trains its own.
  auto b = core_.SubmitStudy(kBob, Study("a", "synth-prompt-shift"), "a.yaml", "rb");
  ASSERT_TRUE(b.ok());
  for (const auto& j : Jobs(b->first.study.id)) {
    EXPECT_NE(j.state, JobState::kSucceeded) << j.name;
    EXPECT_FALSE(j.labels.contains("reused_from"));
  }
  RunAll();
  // Ana's outputs deleted: not reused either.
  for (const auto& j : Jobs(a->first.study.id)) {
    std::filesystem::remove_all(std::filesystem::path(root_.path()) / j.id);
  }
  auto c = core_.SubmitStudy(kAna, Study("a", "synth-prompt-shift"), "a.yaml", "rc");
  ASSERT_TRUE(c.ok());
  for (const auto& j : Jobs(c->first.study.id)) {
    EXPECT_FALSE(j.labels.contains("reused_from")) << j.name;
  }
}

}  // namespace
}  // namespace rmgen::coord
