// Iterative DPO in a study: the `iterative:` section, the DAG the planner makes of it (who
// generates from which policy, who annotates with what, which reference each iteration's
// DPO uses, what the judge compares), bad sections, the stored plan's round trip, `rmgen
// plan`'s table, and the win-rate table of the results.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "coordinator/plan_report.h"
#include "coordinator/results.h"
#include "coordinator/study.h"
#include "jobspec/run_dir.h"

namespace rmgen::coord {
namespace {

using nlohmann::json;

const char* kStudy = R"(name: t
setting: iterative
catalog: /data/datasets.yaml
models:
  - {name: tiny, config: configs/models/tiny-synth.json, tokenizer: /data/tokenizer.model, template: zephyr}
methods: [exrm, dpo]
seeds: [0, 1]
train: synth-id:train
eval: {id: [synth-id:validation], ood: [synth-prompt-shift]}
sft: {epochs: 1, learning_rate: 1.0e-3}
exrm: {epochs: 1, learning_rate: 5.0e-4}
dpo: {epochs: 1, learning_rate: 5.0e-4, beta: 0.1}
)";

const char* kIterative = R"(iterative:
  iterations: 2
  samples: 4
  prompts_per_iteration: 50
  sampling: {temperature: 0.9, max_new_tokens: 16}
  dpo: {learning_rate: 1.0e-4, schedule: cosine, beta: 0.2}
)";

struct Planned {
  std::vector<JobRecord> jobs;
  std::map<std::string, size_t> by_name;  // name without the study prefix -> index
  const JobRecord& operator[](const std::string& n) const { return jobs.at(by_name.at(n)); }
  // "#<index>" of a job, as deps and ${output:...} name it.
  std::string Ref(const std::string& n) const { return "#" + std::to_string(by_name.at(n)); }
  std::string Checkpoint(const std::string& n) const {
    return run_dir::OutputCheckpointRef(Ref(n));
  }
  std::string Output(const std::string& n, const char* file) const {
    return "${output:" + Ref(n) + "}/" + file;
  }
};

Planned Plan(const std::string& yaml) {
  Planned p;
  auto s = ParseStudy(yaml, "t.yaml");
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  if (!s.ok()) return p;
  auto jobs = PlanStudy(*s, "ana", "t.yaml");
  EXPECT_TRUE(jobs.ok()) << jobs.status().ToString();
  if (!jobs.ok()) return p;
  p.jobs = *jobs;
  for (size_t i = 0; i < p.jobs.size(); ++i) p.by_name[p.jobs[i].name.substr(2)] = i;
  EXPECT_EQ(static_cast<int64_t>(p.jobs.size()), PlannedJobCount(*s));
  return p;
}

std::string Error(const std::string& yaml) {
  auto s = ParseStudy(yaml, "t.yaml");
  EXPECT_FALSE(s.ok());
  return s.ok() ? std::string() : s.status().message();
}

TEST(IterativeStudyTest, TheDagFollowsAlgorithmOne) {
  const Planned p = Plan(std::string(kStudy) + kIterative);
  // 9 jobs of the study, and per seed 2 + 2 annotators x (5 x 2 - 1).
  ASSERT_EQ(p.jobs.size(), 9u + 2 * 20);
  const std::string sft = p.Checkpoint("tiny/sft");
  for (int seed : {0, 1}) {
    const std::string sd = "tiny/iterative/seed" + std::to_string(seed) + "/";
    const std::string pi0 = "tiny/dpo/seed" + std::to_string(seed) + "/train";
    const std::string exrm = "tiny/exrm/seed" + std::to_string(seed) + "/train";
    // Iteration 1 samples once from pi_0, shared by both annotators; slice 1 of 2.
    const JobRecord& g1 = p[sd + "iter1/generate"];
    EXPECT_EQ(g1.kind, "generate");
    EXPECT_EQ(g1.spec["model"]["path"], p.Checkpoint(pi0));
    EXPECT_EQ(g1.deps, std::vector<std::string>{p.Ref(pi0)});
    EXPECT_EQ(g1.spec["data"]["prompts"], "synth-id:train");
    EXPECT_EQ(g1.spec["data"]["slice_index"], 0);
    EXPECT_EQ(g1.spec["data"]["slice_count"], 2);
    EXPECT_EQ(g1.spec["data"]["limit"], 50);
    EXPECT_EQ(g1.spec["generate"]["samples"], 4);
    EXPECT_EQ(g1.spec["generate"]["temperature"], 0.9);
    EXPECT_EQ(g1.spec["generate"]["max_new_tokens"], 16);
    for (const std::string a : {"exrm", "dporm"}) {
      const std::string at = sd + a + "/";
      const JobRecord& ann1 = p[at + "iter1/annotate"];
      EXPECT_EQ(ann1.spec["data"]["generations"],
                p.Output(sd + "iter1/generate", run_dir::kGenerations));
      EXPECT_EQ(ann1.spec["annotate"]["reward"], a);
      if (a == "exrm") {  // the same seed's EXRM
        EXPECT_EQ(ann1.spec["model"]["path"], p.Checkpoint(exrm));
      } else {  // DPORM: pi_0 against its reference, at pi_0's beta
        EXPECT_EQ(ann1.spec["model"]["path"], p.Checkpoint(pi0));
        EXPECT_EQ(ann1.spec["annotate"]["reference"], sft);
        EXPECT_EQ(ann1.spec["annotate"]["beta"], 0.1);
      }
      // pi_1 from pi_0 (its reference too) on the annotated pairs, with the iteration recipe.
      const JobRecord& t1 = p[at + "iter1/train"];
      EXPECT_EQ(t1.kind, "dpo");
      EXPECT_EQ(t1.spec["model"]["path"], p.Checkpoint(pi0));
      EXPECT_EQ(t1.spec["dpo"]["reference"], "");  // the model itself: pi_0
      EXPECT_EQ(t1.spec["data"]["train"]["format"], "pairs");
      EXPECT_EQ(t1.spec["data"]["train"]["path"],
                p.Output(at + "iter1/annotate", run_dir::kAnnotatedPairs));
      EXPECT_EQ(t1.spec["train"]["learning_rate"], 1e-4);
      EXPECT_EQ(t1.spec["train"]["schedule"], "cosine");
      EXPECT_EQ(t1.spec["dpo"]["beta"], 0.2);
      EXPECT_EQ(t1.deps, std::vector<std::string>{p.Ref(at + "iter1/annotate")});
      // Iteration 2 samples from pi_1 on the other slice; pi_2 starts from pi_1.
      const JobRecord& g2 = p[at + "iter2/generate"];
      EXPECT_EQ(g2.spec["model"]["path"], p.Checkpoint(at + "iter1/train"));
      EXPECT_EQ(g2.spec["data"]["slice_index"], 1);
      EXPECT_NE(g2.spec["generate"]["seed"], g1.spec["generate"]["seed"]);
      const JobRecord& t2 = p[at + "iter2/train"];
      EXPECT_EQ(t2.spec["model"]["path"], p.Checkpoint(at + "iter1/train"));
      EXPECT_EQ(t2.labels["iteration"], 2);
      EXPECT_EQ(t2.labels["annotator"], a);
      // The judge: pi_t's outputs on the eval prompts against pi_0's, same sampling seed.
      for (int t : {1, 2}) {
        const std::string it = at + "iter" + std::to_string(t) + "/";
        const JobRecord& jg = p[it + "generate-eval"];
        const JobRecord& base = p[sd + "policy0/generate-eval"];
        EXPECT_EQ(jg.spec["model"]["path"], p.Checkpoint(it + "train"));
        EXPECT_EQ(jg.spec["data"]["prompts"], "synth-id:validation");
        EXPECT_EQ(jg.spec["generate"]["seed"], base.spec["generate"]["seed"]);
        EXPECT_EQ(base.spec["model"]["path"], p.Checkpoint(pi0));
        const JobRecord& judge = p[it + "judge"];
        EXPECT_EQ(judge.kind, "judge");
        EXPECT_EQ(judge.spec["judge"]["reward"], "oracle");
        EXPECT_EQ(judge.spec["judge"]["baseline"],
                  p.Output(sd + "policy0/generate-eval", run_dir::kGenerations));
        EXPECT_EQ(judge.spec["data"]["generations"],
                  p.Output(it + "generate-eval", run_dir::kGenerations));
        EXPECT_EQ(judge.labels["role"], "judge");
        EXPECT_EQ(judge.labels["iteration"], t);
      }
    }
  }
  // No generate, annotate or judge job names the study's train set.
  for (const auto& j : p.jobs) {
    if (j.kind == "generate" || j.kind == "annotate" || j.kind == "judge") {
      EXPECT_FALSE(j.spec["data"].contains("train")) << j.name;
    }
  }
}

TEST(IterativeStudyTest, IterationsTrainAtTheStudysBetaUnlessTheyGiveOne) {
  const Planned p = Plan(std::string(kStudy) + "iterative: {iterations: 1}\n");
  EXPECT_EQ(p["tiny/iterative/seed0/exrm/iter1/train"].spec["dpo"]["beta"], 0.1);
  EXPECT_EQ(p["tiny/iterative/seed0/exrm/iter1/train"].spec["train"]["learning_rate"], 5e-7);
  // A huge study seed still gives valid sampling seeds.
  std::string big = std::string(kStudy);
  big.replace(big.find("seeds: [0, 1]"), 13, "seeds: [9000000000000000000]");
  const Planned q = Plan(big + "iterative: {iterations: 1}\n");
  EXPECT_EQ(q.jobs.size(), 5u + 10u);  // 1 sft, 2 x (train, eval); 2 + 2 x (5 - 1)
}

TEST(IterativeStudyTest, AJudgeByEXRMUsesTheSameSeedsEXRMOrAGivenCheckpoint) {
  Planned p = Plan(std::string(kStudy) + kIterative + "  judge: exrm\n");
  const JobRecord& j = p["tiny/iterative/seed1/dporm/iter2/judge"];
  EXPECT_EQ(j.spec["judge"]["reward"], "exrm");
  EXPECT_EQ(j.spec["model"]["path"], p.Checkpoint("tiny/exrm/seed1/train"));
  p = Plan(std::string(kStudy) + kIterative + "  judge: {path: /models/big-rm}\n");
  EXPECT_EQ(p["tiny/iterative/seed0/exrm/iter1/judge"].spec["model"]["path"], "/models/big-rm");
}

TEST(IterativeStudyTest, BadSectionsNameTheField) {
  const std::string base = std::string(kStudy) + "iterative:\n";
  EXPECT_NE(Error(base + "  samples: 1\n").find("field 'iterative.samples': must be in [2, 64]"),
            std::string::npos);
  EXPECT_NE(Error(base + "  annotators: [exrm, gpt4]\n").find("field 'iterative.annotators'"),
            std::string::npos);
  EXPECT_NE(Error(base + "  judge: human\n").find("field 'iterative.judge'"), std::string::npos);
  EXPECT_NE(Error(base + "  judge: {}\n").find("field 'iterative.judge': a judge checkpoint"),
            std::string::npos);
  EXPECT_NE(Error(base + "  iterations: 9\n").find("field 'iterative.iterations'"),
            std::string::npos);
  EXPECT_NE(Error(base + "  colour: red\n").find("unknown field"), std::string::npos);
  EXPECT_NE(Error(base + "  dpo: {batch_size: 8}\n").find("iterative.dpo"), std::string::npos);
  // Bad values reach the job specs' checks, named by the study's field.
  EXPECT_NE(Error(base + "  sampling: {top_p: 1.5}\n").find("iterative.sampling.top_p"),
            std::string::npos);
  EXPECT_NE(Error(base + "  dpo: {learning_rate: 2}\n").find("iterative.dpo.learning_rate"),
            std::string::npos);
  // Iterations start from the DPO policies and use the EXRMs.
  std::string no_dpo = std::string(kStudy);
  no_dpo.replace(no_dpo.find("methods: [exrm, dpo]"), 20, "methods: [exrm]");
  EXPECT_NE(Error(no_dpo + "iterative: {}\n").find("add dpo to methods"), std::string::npos);
  std::string no_exrm = std::string(kStudy);
  no_exrm.replace(no_exrm.find("methods: [exrm, dpo]"), 20, "methods: [dpo]");
  EXPECT_NE(Error(no_exrm + "iterative: {}\n").find("add exrm to methods"), std::string::npos);
  auto only_dporm = ParseStudy(no_exrm + "iterative: {annotators: [dporm]}\n", "t.yaml");
  EXPECT_TRUE(only_dporm.ok()) << only_dporm.status().ToString();
}

TEST(IterativeStudyTest, TheStoredPlanKeepsTheSectionAndPlansTheSameJobs) {
  auto s = ParseStudy(std::string(kStudy) + kIterative, "t.yaml");
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  auto back = StudyPlanFromJson(s->ToJson());
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->iterative, s->iterative);
  auto a = PlanStudy(*s, "ana", "t.yaml"), b = PlanStudy(*back, "ana", "t.yaml");
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_EQ(a->size(), b->size());
  for (size_t i = 0; i < a->size(); ++i) EXPECT_EQ((*a)[i].spec, (*b)[i].spec) << (*a)[i].name;
  // A study without the section stores null and plans no iterative job.
  auto plain = ParseStudy(kStudy, "t.yaml");
  ASSERT_TRUE(plain.ok());
  EXPECT_TRUE(plain->iterative.is_null());
  EXPECT_EQ(PlannedJobCount(*plain), 9);
}

TEST(IterativeStudyTest, PlanTableListsEveryIterationJob) {
  auto s = ParseStudy(std::string(kStudy) + kIterative, "t.yaml");
  ASSERT_TRUE(s.ok());
  auto jobs = PlanStudy(*s, "ana", "t.yaml");
  ASSERT_TRUE(jobs.ok());
  const json plan = DescribePlan(*jobs, {});
  const std::string table = PlanTable(*s, plan);
  EXPECT_NE(table.find("49 jobs, 5 training and 4 eval, 40 of iterative DPO"), std::string::npos)
      << table;
  EXPECT_NE(table.find("tiny/iterative/seed1/dporm/iter2/judge"), std::string::npos) << table;
  EXPECT_NE(table.find("4 x 16 tokens a prompt of synth-id:train"), std::string::npos) << table;
  EXPECT_NE(table.find("win rate against policy 0 by oracle"), std::string::npos);
}

TEST(IterativeStudyTest, ResultsGiveTheWinRatePerAnnotatorAndIteration) {
  StudyInfo info;
  info.study = "t";
  info.setting = "iterative";
  std::vector<JudgeResult> judged;
  auto judge = [](double w) { return json{{"judge", {{"win_rate", w}, {"reward", "oracle"}}}}; };
  // EXRM-annotated: 0.6, 0.7 at t=1; 0.8 (one seed) at t=2. DPORM: 0.4, 0.5 at t=1.
  judged.push_back({"tiny", "dporm", 1, 0, judge(0.4)});
  judged.push_back({"tiny", "exrm", 1, 0, judge(0.6)});
  judged.push_back({"tiny", "exrm", 1, 1, judge(0.7)});
  judged.push_back({"tiny", "dporm", 1, 1, judge(0.5)});
  judged.push_back({"tiny", "exrm", 2, 0, judge(0.8)});
  auto r = AggregateResults(info, {}, judged);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->iterative.size(), 3u);
  EXPECT_EQ(r->iterative[0].annotator, "exrm");
  EXPECT_EQ(r->iterative[0].iteration, 1);
  EXPECT_NEAR(r->iterative[0].win_rate.mean, 0.65, 1e-12);
  EXPECT_NEAR(r->iterative[0].win_rate.std, std::sqrt(0.005), 1e-12);
  EXPECT_EQ(r->iterative[1].iteration, 2);
  EXPECT_EQ(r->iterative[1].win_rate.n, 1);
  EXPECT_EQ(r->iterative[2].annotator, "dporm");
  EXPECT_NEAR(r->iterative[2].win_rate.mean, 0.45, 1e-12);
  const json j = r->ToJson();
  EXPECT_EQ(j["iterative"]["rows"][0]["annotator_name"], "EXRM");
  EXPECT_EQ(j["iterative"]["rows"][2]["per_seed"]["1"], 0.5);
  const std::string t = r->Table();
  EXPECT_NE(t.find("Iterative DPO (Table 2)"), std::string::npos) << t;
  EXPECT_NE(t.find("65.0 +- 7.1"), std::string::npos) << t;
  const std::string csv = r->Csv();
  EXPECT_NE(csv.find("tiny,EXRM,(win rate at iteration 1),iterative: oracle,2,0.650000,0.070711"),
            std::string::npos)
      << csv;
  // A judge result without a win rate is an error naming the run.
  judged.push_back({"tiny", "exrm", 2, 1, json{{"judge", json::object()}}});
  auto bad = AggregateResults(info, {}, judged);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("tiny/exrm/iter2/seed1"), std::string::npos);
}

}  // namespace
}  // namespace rmgen::coord
