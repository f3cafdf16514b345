// Study files: validation naming line and field, and the planner's job DAG. Also checks
// that every study shipped in configs/studies/ parses and plans.
#include "coordinator/study.h"

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>

#include "common/file.h"
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
eval: {id: [synth-id:validation], ood: [synth-prompt-shift, synth-response-shift]}
sft: {epochs: 1, learning_rate: 1.0e-3}
exrm: {epochs: 2, learning_rate: 5.0e-4}
dpo: {epochs: 2, learning_rate: 5.0e-4, beta: 0.1}
resources: {ranks: 2}
)";

std::string Replace(std::string s, const std::string& from, const std::string& to) {
  const auto at = s.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  if (at != std::string::npos) s.replace(at, from.size(), to);
  return s;
}

TEST(StudyTest, PlansSftThenTrainingAndOneEvalPerCheckpoint) {
  auto s = ParseStudy(kStudy, "t.yaml");
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  auto jobs = PlanStudy(*s, "ana", "t.yaml");
  ASSERT_TRUE(jobs.ok()) << jobs.status().ToString();
  // 1 sft + 2 methods x 2 seeds x (train + eval).
  ASSERT_EQ(jobs->size(), 9u);
  const JobRecord& sft = (*jobs)[0];
  EXPECT_EQ(sft.kind, "sft");
  EXPECT_TRUE(sft.deps.empty());
  EXPECT_EQ(sft.state, JobState::kQueued);
  EXPECT_EQ(sft.ranks, 2);
  const JobRecord& train = (*jobs)[1];
  EXPECT_EQ(train.kind, "reward");
  EXPECT_EQ(train.deps, std::vector<std::string>{"#0"});
  EXPECT_EQ(train.state, JobState::kPending);
  EXPECT_EQ(train.spec["model"]["path"], "${output:#0}/checkpoint");
  EXPECT_EQ(train.spec["train"]["seed"], 0);
  EXPECT_EQ(train.spec["train"]["learning_rate"], 5.0e-4);
  EXPECT_EQ(train.labels["method"], "exrm");
  const JobRecord& eval = (*jobs)[2];
  EXPECT_EQ(eval.kind, "eval");
  EXPECT_EQ(eval.deps, std::vector<std::string>{"#1"});
  EXPECT_EQ(eval.spec["eval"]["reward"], "exrm");
  EXPECT_EQ(eval.spec["data"]["eval"].size(), 3u);
  EXPECT_EQ(eval.labels["role"], "eval");
  // DPO: its eval is DPORM against the SFT reference, with the study's beta.
  const JobRecord& dpo_eval = (*jobs)[6];
  EXPECT_EQ(dpo_eval.labels["method"], "dpo");
  EXPECT_EQ(dpo_eval.spec["eval"]["reward"], "dporm");
  EXPECT_EQ(dpo_eval.spec["eval"]["reference"], "${output:#0}/checkpoint");
  EXPECT_EQ(dpo_eval.spec["eval"]["beta"], 0.1);
  EXPECT_EQ((*jobs)[5].spec["dpo"]["beta"], 0.1);
  // The study round-trips through its stored form.
  auto back = StudyPlanFromJson(s->ToJson());
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->ToJson(), s->ToJson());
}

struct BadCase {
  std::string from, to;
  std::string expect;  // in the message
};

TEST(StudyTest, BadStudiesNameLineAndField) {
  const std::vector<BadCase> cases = {
      {"seeds: [0, 1]", "seeds: [0, 0]", "t.yaml:7: field 'seeds': duplicate seed 0"},
      {"methods: [exrm, dpo]", "methods: [exrm, ppo]",
       "t.yaml:6: field 'methods[1]': unknown method 'ppo'"},
      {"setting: demo", "setting: demo\ncolor: red", "t.yaml:3: field 'color': unknown field"},
      {"exrm: {epochs: 2, learning_rate: 5.0e-4}", "exrm: {epochs: 2, learning_rate: -1}",
       "t.yaml:11: field 'exrm.learning_rate'"},
      {"exrm: {epochs: 2,", "exrm: {epochs: two,", "field 'exrm.epochs'"},
      {"dpo: {epochs: 2, learning_rate: 5.0e-4, beta: 0.1}", "dpo: {beta: 0.1, temperature: 2}",
       "t.yaml:12: field 'dpo.temperature': unknown field"},
      {"resources: {ranks: 2}", "resources: {ranks: 0}", "field 'resources.ranks': must be in"},
      {"seeds: [0, 1]", "seeds: 3", "field 'seeds': expected a non-empty list"},
      {"name: t\n", "", "field 'name': missing (required)"},
      {"  - {name: tiny, config", "  - {name: tiny, path: /m, config", "give exactly one of path"},
      {"ood: [synth-prompt-shift,", "ood: [synth-id:validation,",
       "'synth-id:validation' is listed twice"},
      {"sft: {epochs: 1, learning_rate: 1.0e-3}\n", "",
       "DPO and DPORM need a reference checkpoint"},
      {"models:", "models: [\nx: :", "not valid YAML"},
      // Found by fuzz_study: a section that is a scalar used to throw inside yaml-cpp.
      {"resources: {ranks: 2}", "resources: 4", "t.yaml:13: field 'resources': expected a mapping"},
      {"resources: {ranks: 2}", "resources: {checkpoint_every: -3x}",
       "field 'resources.checkpoint_every'"},
  };
  for (const auto& c : cases) {
    auto s = ParseStudy(Replace(kStudy, c.from, c.to), "t.yaml");
    ASSERT_FALSE(s.ok()) << c.to;
    EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(s.status().message().find(c.expect), std::string::npos)
        << "want '" << c.expect << "' in: " << s.status().message();
  }
  auto huge = ParseStudy(std::string(kMaxStudyBytes + 1, '#'), "big.yaml");
  ASSERT_FALSE(huge.ok());
  EXPECT_NE(huge.status().message().find("at most"), std::string::npos);
  EXPECT_FALSE(ParseStudy("[1, 2]", "list.yaml").ok());
  // Found by fuzz_study: a name that is not UTF-8 used to throw while building job specs.
  auto latin1 = ParseStudy(Replace(kStudy, "name: t", "name: caf\xe9"), "t.yaml");
  ASSERT_FALSE(latin1.ok());
  EXPECT_NE(latin1.status().message().find("t.yaml:1: not UTF-8"), std::string::npos)
      << latin1.status().message();
  EXPECT_FALSE(ParseStudy("", "empty.yaml").ok());
  // Also found by fuzz_study: an overlong encoding (C1 9D) passed the first UTF-8 check, and
  // an escape can decode to a surrogate; both used to throw while building job specs.
  auto overlong = ParseStudy(Replace(kStudy, "name: t", "name: t\xc1\x9d"), "t.yaml");
  ASSERT_FALSE(overlong.ok());
  EXPECT_NE(overlong.status().message().find("t.yaml:1: not UTF-8"), std::string::npos)
      << overlong.status().message();
  auto surrogate = ParseStudy(Replace(kStudy, "name: t", "name: \"t\\uD800\""), "t.yaml");
  ASSERT_FALSE(surrogate.ok());
  EXPECT_NE(surrogate.status().message().find("t.yaml:1:"), std::string::npos)
      << surrogate.status().message();
  for (const char* ok : {"caf\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80"}) {
    EXPECT_TRUE(ParseStudy(Replace(kStudy, "name: t", std::string("name: t") + ok), "t.yaml").ok())
        << ok;
  }
}

TEST(StudyTest, TagAndBenchmarkSets) {
  const std::string ood = "ood: [synth-prompt-shift, synth-response-shift]}";
  auto s = ParseStudy(
      Replace(Replace(kStudy, "setting: demo", "setting: demo\ntag: paper"), ood,
              "ood: [synth-prompt-shift, synth-response-shift], benchmark: [rewardbench:test]}"),
      "t.yaml");
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->tag, "paper");
  EXPECT_EQ(s->benchmark_eval, std::vector<std::string>{"rewardbench:test"});
  auto jobs = PlanStudy(*s, "ana", "t.yaml");
  ASSERT_TRUE(jobs.ok()) << jobs.status().ToString();
  // Every eval job scores the benchmark too, after the ID and OOD sets.
  int evals = 0;
  for (const auto& j : *jobs) {
    if (j.kind != "eval") continue;
    ++evals;
    ASSERT_EQ(j.spec["data"]["eval"].size(), 4u) << j.spec.dump();
    EXPECT_EQ(j.spec["data"]["eval"][3], "rewardbench:test");
  }
  EXPECT_EQ(evals, 4);
  // Stored and read back; a plan stored before tags and benchmarks reads as neither.
  const auto stored = s->ToJson();
  EXPECT_EQ(stored["tag"], "paper");
  auto back = StudyPlanFromJson(stored);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->ToJson(), stored);
  auto old = stored;
  old.erase("tag");
  old["eval"].erase("benchmark");
  auto old_back = StudyPlanFromJson(old);
  ASSERT_TRUE(old_back.ok()) << old_back.status().ToString();
  EXPECT_TRUE(old_back->tag.empty());
  EXPECT_TRUE(old_back->benchmark_eval.empty());
  // Without either: none.
  auto plain = ParseStudy(kStudy, "t.yaml");
  ASSERT_TRUE(plain.ok());
  EXPECT_TRUE(plain->tag.empty());
  EXPECT_TRUE(plain->benchmark_eval.empty());

  const std::vector<BadCase> cases = {
      {"setting: demo", "setting: demo\ntag: [a, b]", "t.yaml:3: field 'tag': expected a string"},
      {"setting: demo", "setting: demo\ntag: ''", "t.yaml:3: field 'tag': must not be empty"},
      {"eval: {id: [synth-id:validation], " + ood,
       "eval:\n  id: [synth-id:validation]\n  benchmark: rewardbench",
       "t.yaml:11: field 'eval.benchmark': expected a list"},
      {ood, "ood: [synth-prompt-shift], benchmark: [rewardbench, synth-prompt-shift]}",
       "t.yaml:9: field 'eval.benchmark': 'synth-prompt-shift' is listed twice"},
      {ood, "ood: [synth-prompt-shift], benchmark: [rewardbench, rewardbench]}",
       "field 'eval.benchmark': 'rewardbench' is listed twice"},
      {ood, "ood: [synth-prompt-shift], benchmark: [[rewardbench]]}",
       "t.yaml:9: field 'eval.benchmark[0]': expected a string"},
      {ood, "ood: [synth-prompt-shift], benchmarks: [rewardbench]}",
       "t.yaml:9: field 'eval.benchmarks': unknown field"},
  };
  for (const auto& c : cases) {
    auto bad = ParseStudy(Replace(kStudy, c.from, c.to), "t.yaml");
    ASSERT_FALSE(bad.ok()) << c.to;
    EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(bad.status().message().find(c.expect), std::string::npos)
        << "want '" << c.expect << "' in: " << bad.status().message();
  }
}

TEST(StudyTest, EveryShippedStudyParsesAndPlans) {
  int n = 0;
  for (const auto& e :
       std::filesystem::recursive_directory_iterator(testing::SourcePath("configs/studies"))) {
    if (e.path().extension() != ".yaml") continue;
    auto text = ReadFile(e.path().string());
    ASSERT_TRUE(text.ok());
    auto s = ParseStudy(*text, e.path().filename().string());
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    auto jobs = PlanStudy(*s, "ana", e.path().string());
    ASSERT_TRUE(jobs.ok()) << jobs.status().ToString();
    // Per model an optional SFT, then per method, sweep point and seed a train and an eval.
    int64_t runs = 0;
    for (const auto& m : s->methods) {
      runs += int64_t(SweepPoints(m == "exrm" ? s->exrm : s->dpo).size() * s->seeds.size());
    }
    // Iterative DPO: per model and seed 2 + annotators x (5 x iterations - 1).
    int64_t iterative = 0;
    if (s->iterative.is_object()) {
      iterative =
          int64_t(s->seeds.size()) * (2 + int64_t(s->iterative["annotators"].size()) *
                                              (5 * s->iterative["iterations"].get<int64_t>() - 1));
    }
    EXPECT_EQ(static_cast<int64_t>(jobs->size()),
              int64_t(s->models.size()) * ((s->sft.is_null() ? 0 : 1) + 2 * runs + iterative))
        << e.path();
    EXPECT_EQ(PlannedJobCount(*s), static_cast<int64_t>(jobs->size())) << e.path();
    ++n;
  }
  EXPECT_GE(n, 11);  // the five settings, the two demos and the four paper-mini studies
}

// Hostile input: parsing and planning are bounded (aliases, list lengths, jobs per study).

double MillisSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// "Billion laughs" after the study's own 13 lines: a: nine scalars, then each level nine
// aliases of the one before (9^levels scalars once expanded). Level b is on line 15.
std::string AliasBombStudy(int levels) {
  std::string y = std::string(kStudy) + "a: &a [x,x,x,x,x,x,x,x,x]\n";
  for (int k = 1; k < levels; ++k) {
    const std::string prev(1, char('a' + k - 1)), cur(1, char('a' + k));
    y += cur + ": &" + cur + " [";
    for (int i = 0; i < 9; ++i) y += (i ? ",*" : "*") + prev;
    y += "]\n";
  }
  return y;
}

TEST(StudyLimitsTest, AliasBombsAreRefusedAtOnceNamingTheLine) {
  for (int levels : {8, 9}) {
    const auto t0 = std::chrono::steady_clock::now();
    auto s = ParseStudy(AliasBombStudy(levels), "bomb.yaml");
    const double ms = MillisSince(t0);
    ASSERT_FALSE(s.ok()) << levels;
    EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(s.status().message().find(
                  "bomb.yaml:15: YAML aliases (*a) are not accepted in study files"),
              std::string::npos)
        << s.status().message();
    // It used to take ~10 s (9 levels): every traversal expanded the shared nodes.
    EXPECT_LT(ms, 250.0) << levels << " levels";
    std::printf("alias bomb, %d levels (%zu bytes): refused in %.3f ms\n", levels,
                AliasBombStudy(levels).size(), ms);
  }
  // A normal study still parses; anchors without aliases are harmless and accepted.
  EXPECT_TRUE(ParseStudy(kStudy, "t.yaml").ok());
  auto anchored = ParseStudy(Replace(kStudy, "seeds: [0, 1]", "seeds: &s [0, 1]"), "t.yaml");
  EXPECT_TRUE(anchored.ok()) << anchored.status().ToString();
  // Nesting and value sizes are bounded too.
  auto deep = ParseStudy(
      Replace(kStudy, "setting: demo", "setting: " + std::string(100, '[') + std::string(100, ']')),
      "t.yaml");
  ASSERT_FALSE(deep.ok());
  EXPECT_NE(deep.status().message().find("t.yaml:2: nested deeper than 64 levels"),
            std::string::npos)
      << deep.status().message();
  auto long_value = ParseStudy(
      Replace(kStudy, "setting: demo", "setting: " + std::string(300 << 10, 'x')), "t.yaml");
  ASSERT_FALSE(long_value.ok());
  EXPECT_NE(long_value.status().message().find("t.yaml:2: a value of"), std::string::npos)
      << long_value.status().message();
}

TEST(StudyLimitsTest, ListLengthsAreBounded) {
  std::string models = "models:\n";
  for (size_t i = 0; i <= kMaxStudyModels; ++i) {
    models += "  - {name: m" + std::to_string(i) + ", path: /m, template: zephyr}\n";
  }
  std::string seeds = "seeds: [0";
  for (size_t i = 1; i <= kMaxStudySeeds; ++i) seeds += ", " + std::to_string(i);
  seeds += "]";
  std::string ids = "eval: {id: [s0";
  for (size_t i = 1; i <= kMaxStudyEvalSets; ++i) ids += ", s" + std::to_string(i);
  ids += "], ood:";
  const std::vector<BadCase> cases = {
      {"models:\n  - {name: tiny, config: configs/models/tiny-synth.json, tokenizer: "
       "/data/tokenizer.model, template: zephyr}\n",
       models, "t.yaml:5: field 'models': 65 models; a study has at most 64"},
      {"seeds: [0, 1]", seeds, "t.yaml:7: field 'seeds': 1001 seeds; a study has at most 1000"},
      {"eval: {id: [synth-id:validation], ood:", ids,
       "t.yaml:9: field 'eval.id': 65 entries; at most 64"},
  };
  for (const auto& c : cases) {
    auto s = ParseStudy(Replace(kStudy, c.from, c.to), "t.yaml");
    ASSERT_FALSE(s.ok()) << c.expect;
    EXPECT_NE(s.status().message().find(c.expect), std::string::npos)
        << "want '" << c.expect << "' in: " << s.status().message();
  }
}

TEST(StudyLimitsTest, JobsPerStudyAreCountedBeforeAnyIsBuilt) {
  // 1 sft + 2 methods x 3 seeds x (train, eval) = 13 jobs.
  const std::string three = Replace(kStudy, "seeds: [0, 1]", "seeds: [0, 1, 2]");
  auto ok = ParseStudy(three, "t.yaml");
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ(PlannedJobCount(*ok), 13);
  EXPECT_TRUE(ParseStudy(three, "t.yaml", PlanLimits{13}).ok());
  auto over = ParseStudy(three, "t.yaml", PlanLimits{12});
  ASSERT_FALSE(over.ok());
  EXPECT_EQ(over.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(over.status().message(),
            "t.yaml: the plan has 13 jobs (models (line 5): 1 x methods (line 6): 2 x seeds "
            "(line 7): 3 x 2 jobs (train, eval), + 1 sft job per model), more than this "
            "coordinator's limit of 12 per study (--max-jobs-per-study). HINT: split the study "
            "(by model, method or seeds) or ask for a higher limit");
  // PlanStudy (a stored study planned again) is held to the limit too.
  auto jobs = PlanStudy(*ok, "ana", "t.yaml", PlanLimits{12});
  ASSERT_FALSE(jobs.ok());
  EXPECT_NE(jobs.status().message().find("t.yaml: the plan has 13 jobs (models: 1 x methods"),
            std::string::npos)
      << jobs.status().message();

  // The default limit (10,000): 2 models x (exrm: 3 grid points + dpo: 1) x 1000 seeds x 2 +
  // 2 sft = 16,002 jobs, refused without building one.
  std::string seeds = "seeds: [0";
  for (int i = 1; i < 1000; ++i) seeds += ", " + std::to_string(i);
  seeds += "]";
  std::string big = Replace(kStudy, "seeds: [0, 1]", seeds);
  big = Replace(big, "template: zephyr}\n",
                "template: zephyr}\n  - {name: tiny2, config: c.json, tokenizer: t.model}\n");
  big = Replace(big, "exrm: {epochs: 2, learning_rate: 5.0e-4}",
                "exrm: {epochs: 2, learning_rate: [5.0e-4, 1.0e-4, 2.0e-4]}");
  const auto t0 = std::chrono::steady_clock::now();
  auto refused = ParseStudy(big, "big.yaml");
  const double ms = MillisSince(t0);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find(
                "big.yaml: the plan has 16,002 jobs (models (line 5): 2 x (exrm: 3 grid points "
                "(exrm.learning_rate (line 12): 3) + dpo: 1 grid point) x seeds (line 8): 1000 x "
                "2 jobs (train, eval), + 1 sft job per model), more than this coordinator's "
                "limit of 10,000 per study"),
            std::string::npos)
      << refused.status().message();
  EXPECT_LT(ms, 1000.0);
  std::printf("16,002-job study refused in %.1f ms\n", ms);

  // A study that reaches the planner with a huge sweep (a stored plan, say): 10^9 grid points
  // are counted, not built.
  Study huge = *ok;
  json lr = json::array(), beta = json::array(), epochs = json::array();
  for (int i = 1; i <= 1000; ++i) {
    lr.push_back(i * 1e-7);
    beta.push_back(i * 1e-3);
    epochs.push_back(i);
  }
  huge.dpo["learning_rate"] = lr;
  huge.dpo["beta"] = beta;
  huge.dpo["epochs"] = epochs;
  // 1 sft + exrm 1 x 3 seeds x 2 + dpo 10^9 x 3 x 2.
  EXPECT_EQ(PlannedJobCount(huge), 1 + 6 + 6'000'000'000);
  const auto t1 = std::chrono::steady_clock::now();
  auto huge_jobs = PlanStudy(huge, "ana", "stored");
  ASSERT_FALSE(huge_jobs.ok());
  EXPECT_NE(huge_jobs.status().message().find("the plan has 6,000,000,007 jobs"), std::string::npos)
      << huge_jobs.status().message();
  EXPECT_LT(MillisSince(t1), 100.0);
}

TEST(StudyLimitsTest, ResourceFieldsAreBoundedLikeTheSpec) {
  const std::vector<BadCase> cases = {
      {"resources: {ranks: 2}", "resources: {ranks: 2, threads: 100000000}",
       "t.yaml:13: field 'resources.threads': must be in [0, 1024] (0: all cores), got "
       "100000000"},
      {"resources: {ranks: 2}", "resources: {ranks: 2, threads: -1}",
       "t.yaml:13: field 'resources.threads'"},
      {"resources: {ranks: 2}", "resources: {ranks: 2, checkpoint_every: -1}",
       "t.yaml:13: field 'resources.checkpoint_every': must be in [0, 1000000000]"},
      {"resources: {ranks: 2}", "resources: {ranks: 5000}",
       "t.yaml:13: field 'resources.ranks': must be in [1, 4096], got 5000"},
      // nan and inf are not numbers (they used to reach the spec as null: the default).
      {"exrm: {epochs: 2, learning_rate: 5.0e-4}", "exrm: {epochs: 2, learning_rate: nan}",
       "t.yaml:11: field 'exrm.learning_rate': expected a finite number, got 'nan'"},
      {"dpo: {epochs: 2, learning_rate: 5.0e-4, beta: 0.1}",
       "dpo: {epochs: 2, learning_rate: 5.0e-4, beta: inf}",
       "t.yaml:12: field 'dpo.beta': expected a finite number, got 'inf'"},
      // The spec's ranges, named by the study's field.
      {"exrm: {epochs: 2, learning_rate: 5.0e-4}", "exrm: {epochs: 1001, learning_rate: 5.0e-4}",
       "t.yaml:11: field 'exrm.epochs': must be in [1, 1000], got 1001"},
      {"exrm: {epochs: 2, learning_rate: 5.0e-4}",
       "exrm: {epochs: 2, learning_rate: 5.0e-4, per_rank_batch_size: 100000}",
       "t.yaml:11: field 'exrm.per_rank_batch_size': must be in [1, 65536], got 100000"},
  };
  for (const auto& c : cases) {
    auto s = ParseStudy(Replace(kStudy, c.from, c.to), "t.yaml");
    ASSERT_FALSE(s.ok()) << c.to;
    EXPECT_NE(s.status().message().find(c.expect), std::string::npos)
        << "want '" << c.expect << "' in: " << s.status().message();
  }
  EXPECT_TRUE(ParseStudy(Replace(kStudy, "resources: {ranks: 2}",
                                 "resources: {ranks: 2, threads: 1024, checkpoint_every: 100}"),
                         "t.yaml")
                  .ok());
}

TEST(StudyLimitsTest, PlanReadsListTheModelConfigsThePlannerMayOpen) {
  auto s = ParseStudy(Replace(kStudy, "template: zephyr}\n",
                              "template: zephyr}\n  - {name: big, path: /models/g7b, arch: "
                              "configs/models/g7b.json}\n"),
                      "t.yaml");
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  const std::vector<std::pair<std::string, std::string>> want = {
      {"models[0].config", "configs/models/tiny-synth.json"},
      {"models[1].path", "/models/g7b/config.json"},
      {"models[1].arch", "configs/models/g7b.json"}};
  EXPECT_EQ(StudyPlanReads(*s), want);
}

}  // namespace
}  // namespace rmgen::coord
