// The study as published: batch semantics (per-rank batch x ranks x accumulation), memory
// settings per method, sweeps over a held-out slice, `rmgen plan`'s arithmetic, and the
// shipped settings checked field by field against the paper's recipe.
#include <gtest/gtest.h>

#include <set>

#include "common/file.h"
#include "coordinator/memory_plan.h"
#include "coordinator/plan_report.h"
#include "coordinator/results.h"
#include "coordinator/study.h"
#include "jobspec/spec.h"
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
sft: {epochs: 1, learning_rate: 1.0e-3}
exrm: {epochs: 2, learning_rate: 5.0e-4, per_rank_batch_size: 4, gradient_accumulation: 2}
dpo: {epochs: 2, learning_rate: 5.0e-4, beta: 0.1, per_rank_batch_size: 8}
resources: {ranks: 2}
)";

std::string Replace(std::string s, const std::string& from, const std::string& to) {
  const auto at = s.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  if (at != std::string::npos) s.replace(at, from.size(), to);
  return s;
}

std::vector<JobRecord> Plan(const std::string& yaml) {
  auto s = ParseStudy(yaml, "t.yaml");
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  if (!s.ok()) return {};
  auto jobs = PlanStudy(*s, "ana", "t.yaml");
  EXPECT_TRUE(jobs.ok()) << jobs.status().ToString();
  return jobs.ok() ? *jobs : std::vector<JobRecord>{};
}

TEST(StudySemanticsTest, PerRankBatchTimesRanksIsTheGlobalMicroBatch) {
  const auto jobs = Plan(kStudy);
  ASSERT_EQ(jobs.size(), 9u);
  const JobRecord& exrm = jobs[1];
  ASSERT_EQ(exrm.kind, "reward");
  EXPECT_EQ(exrm.spec["train"]["per_rank_batch_size"], 4);
  EXPECT_EQ(exrm.spec["train"]["ranks"], 2);
  EXPECT_EQ(exrm.spec["train"]["batch_size"], 8);  // global micro-batch
  EXPECT_EQ(exrm.spec["train"]["gradient_accumulation"], 2);
  const JobRecord& dpo = jobs[5];
  ASSERT_EQ(dpo.kind, "dpo");
  EXPECT_EQ(dpo.spec["train"]["batch_size"], 16);
  // The resolved spec parses again (agents hand it to rmgen-train) and agrees.
  auto again = ParseJobSpec(dpo.spec.dump(), "resolved.json");
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(again->batch_size, 16);
  EXPECT_EQ(again->per_rank_batch_size, 8);
  EXPECT_EQ(again->ranks, 2);
}

TEST(StudySemanticsTest, AStudyWithoutABatchTrainsEightPairsARank) {
  // The SFT section gives none: TRL's per-device default, 8 per rank on 2 ranks.
  const auto jobs = Plan(kStudy);
  ASSERT_EQ(jobs[0].kind, "sft");
  EXPECT_EQ(jobs[0].spec["train"]["per_rank_batch_size"], 8);
  EXPECT_EQ(jobs[0].spec["train"]["batch_size"], 16);
}

TEST(StudySemanticsTest, BatchSizeInAStudyIsRefusedAsAmbiguous) {
  auto s = ParseStudy(Replace(kStudy, "per_rank_batch_size: 8", "batch_size: 8"), "t.yaml");
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("t.yaml:12: field 'dpo.batch_size'"), std::string::npos)
      << s.status().message();
  EXPECT_NE(s.status().message().find("per_rank_batch_size"), std::string::npos);
}

TEST(StudySemanticsTest, JobSpecBatchFormsMustAgree) {
  const std::string base =
      "kind: reward\nmodel: {config: c.json}\ndata: {train: x}\ntrain: {ranks: 4, ";
  auto ok = ParseJobSpec(base + "per_rank_batch_size: 2}\n", "j.yaml");
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ(ok->batch_size, 8);
  EXPECT_EQ(ok->resolved["train"]["batch_size"], 8);
  auto both = ParseJobSpec(base + "per_rank_batch_size: 2, batch_size: 6}\n", "j.yaml");
  ASSERT_FALSE(both.ok());
  EXPECT_NE(both.status().message().find("train.batch_size"), std::string::npos);
  auto no_ranks = ParseJobSpec(
      "kind: reward\nmodel: {config: c.json}\ndata: {train: x}\ntrain: {per_rank_batch_size: 2}\n",
      "j.yaml");
  ASSERT_FALSE(no_ranks.ok());
  EXPECT_NE(no_ranks.status().message().find("train.ranks"), std::string::npos);
  // The global form alone keeps its meaning (and its default).
  auto global = ParseJobSpec("kind: reward\nmodel: {config: c.json}\ndata: {train: x}\n", "j");
  ASSERT_TRUE(global.ok());
  EXPECT_EQ(global->batch_size, 8);
  EXPECT_EQ(global->ranks, 0);
}

TEST(StudySemanticsTest, MethodsSetDtypeZero1CheckpointingAndBf16) {
  const auto jobs = Plan(Replace(kStudy, "beta: 0.1, per_rank_batch_size: 8}",
                                 "beta: 0.1, per_rank_batch_size: 8, dtype: bfloat16, zero1: "
                                 "true, gradient_checkpointing: true, bf16: true}"));
  ASSERT_EQ(jobs.size(), 9u);
  const JobRecord& dpo = jobs[5];
  EXPECT_EQ(dpo.spec["model"]["dtype"], "bfloat16");
  EXPECT_EQ(dpo.spec["runtime"]["zero1"], true);
  EXPECT_EQ(dpo.spec["train"]["gradient_checkpointing"], true);
  EXPECT_EQ(dpo.spec["train"]["bf16"], true);
  // EXRM keeps the defaults.
  EXPECT_EQ(jobs[1].spec["model"]["dtype"], "float32");
  EXPECT_EQ(jobs[1].spec["runtime"]["zero1"], false);
  // A bad value names the study's own field and line.
  auto bad = ParseStudy(Replace(kStudy, "beta: 0.1,", "beta: 0.1, dtype: float16,"), "t.yaml");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("t.yaml:12: field 'dpo.dtype'"), std::string::npos)
      << bad.status().message();
}

TEST(StudySemanticsTest, SweepsPlanTheGridOverAHeldOutSlice) {
  const std::string yaml =
      Replace(Replace(kStudy, "dpo: {epochs: 2, learning_rate: 5.0e-4, beta: 0.1,",
                      "dpo: {epochs: 2, learning_rate: [5.0e-4, 1.0e-4], beta: [0.1, 0.3],"),
              "resources: {ranks: 2}", "resources: {ranks: 2}\nselection: {holdout: 0.1}");
  const auto jobs = Plan(yaml);
  // 1 sft + exrm (1 point) x 2 seeds x 2 + dpo (4 points) x 2 seeds x 2.
  ASSERT_EQ(jobs.size(), 1u + 4u + 16u);
  std::set<std::string> points;
  for (const auto& j : jobs) {
    if (j.kind == "eval") {
      // Every checkpoint is also scored on the held-out slice of the training source.
      const json& sets = j.spec["data"]["eval"];
      ASSERT_EQ(sets.size(), 3u);
      EXPECT_EQ(sets[2]["ref"], "synth-id:train");
      EXPECT_EQ(sets[2]["holdout"], 0.1);
      EXPECT_EQ(sets[2]["name"], kSelectionSet);
    } else {
      // ... which every training job leaves out (the SFT job too).
      EXPECT_EQ(j.spec["data"]["holdout"], 0.1) << j.name;
    }
    if (j.labels.value("method", "") == "dpo") points.insert(j.labels["point"]);
  }
  EXPECT_EQ(points, (std::set<std::string>{"lr=0.0005 beta=0.1", "lr=0.0005 beta=0.3",
                                           "lr=0.0001 beta=0.1", "lr=0.0001 beta=0.3"}));
  // The point's values reach the job: training and its DPORM eval use the point's beta.
  for (const auto& j : jobs) {
    if (j.labels.value("point", "") != "lr=0.0001 beta=0.3") continue;
    if (j.kind == "dpo") {
      EXPECT_EQ(j.spec["train"]["learning_rate"], 1.0e-4);
      EXPECT_EQ(j.spec["dpo"]["beta"], 0.3);
      EXPECT_NE(j.name.find("/dpo/lr=0.0001,beta=0.3/seed"), std::string::npos) << j.name;
    } else {
      EXPECT_EQ(j.spec["eval"]["beta"], 0.3);
    }
  }
  // The stored study plans the same jobs.
  auto s = ParseStudy(yaml, "t.yaml");
  ASSERT_TRUE(s.ok());
  auto back = StudyPlanFromJson(s->ToJson());
  ASSERT_TRUE(back.ok());
  auto again = PlanStudy(*back, "ana", "t.yaml");
  ASSERT_TRUE(again.ok());
  ASSERT_EQ(again->size(), jobs.size());
  for (size_t i = 0; i < jobs.size(); ++i) EXPECT_EQ((*again)[i].spec, jobs[i].spec);
}

TEST(StudySemanticsTest, BadSweepsNameTheField) {
  struct Case {
    std::string from, to, expect;
  };
  const Case cases[] = {
      {"exrm: {epochs: 2,", "exrm: {epochs: [],", "t.yaml:11: field 'exrm.epochs'"},
      {"exrm: {epochs: 2,", "exrm: {epochs: [1, 1],", "listed twice"},
      {"exrm: {epochs: 2,", "exrm: {epochs: [1, x],", "field 'exrm.epochs[1]': expected a number"},
      {"exrm: {epochs: 2,", "exrm: {epochs: 2, weight_decay: [0, 1],",
       "field 'exrm.weight_decay': expected a value"},
      {"exrm: {epochs: 2,", "exrm: {epochs: 2, beta: [0.1],", "field 'exrm.beta': unknown field"},
      {"dpo: {epochs: 2, learning_rate: 5.0e-4, beta: 0.1,",
       "dpo: {epochs: [1, 2, 3, 4], learning_rate: [1, 2, 3, 4, 5, 6, 7, 8], beta: [1, 2, 3],",
       "96 grid points; at most 64"},
      {"resources: {ranks: 2}", "resources: {ranks: 2}\nselection: {holdout: 0.9}",
       "field 'selection.holdout'"},
      // Values %g prints alike would share job names and a selection point.
      {"exrm: {epochs: 2, learning_rate: 5.0e-4,",
       "exrm: {epochs: 2, learning_rate: [5.0e-4, 5.0000001e-4],", "print alike"},
      // The held-out slice's name is taken in a sweep.
      {"ood: [synth-prompt-shift]}\nsft: {epochs: 1, learning_rate: 1.0e-3}\nexrm: {epochs: 2,",
       "ood: [synth-prompt-shift, validation]}\nsft: {epochs: 1, learning_rate: 1.0e-3}\n"
       "exrm: {epochs: [1, 2],",
       "'validation' names a sweep's held-out slice"},
  };
  for (const auto& c : cases) {
    auto s = ParseStudy(Replace(kStudy, c.from, c.to), "t.yaml");
    ASSERT_FALSE(s.ok()) << c.to;
    EXPECT_NE(s.status().message().find(c.expect), std::string::npos)
        << c.to << ": " << s.status().message();
  }
}

TEST(StudySemanticsTest, PlanReportsBatchArithmeticAndSteps) {
  auto s = ParseStudy(kStudy, "t.yaml");
  ASSERT_TRUE(s.ok());
  auto jobs = PlanStudy(*s, "", "t.yaml");
  ASSERT_TRUE(jobs.ok());
  PlanReportOptions o;
  int counted = 0;
  o.count_pairs = [&](const json& data) -> StatusOr<int64_t> {
    ++counted;
    EXPECT_EQ(data["train"], "synth-id:train");
    return 1001;
  };
  const json plan = DescribePlan(*jobs, o);
  ASSERT_EQ(plan.size(), jobs->size());
  EXPECT_EQ(counted, 1);  // one data section, counted once
  const json& exrm = plan[1];
  EXPECT_EQ(exrm["per_rank_batch"], 4);
  EXPECT_EQ(exrm["gradient_accumulation"], 2);
  EXPECT_EQ(exrm["global_micro_batch"], 8);
  EXPECT_EQ(exrm["global_batch"], 16);
  // ceil(ceil(1001 / 8) / 2) = ceil(126 / 2) = 63 steps an epoch, 2 epochs.
  EXPECT_EQ(exrm["steps_per_epoch"], 63);
  EXPECT_EQ(exrm["total_steps"], 126);
  EXPECT_EQ(exrm["deps"], json::array({"t/tiny/sft"}));
  const json& dpo = plan[5];
  EXPECT_EQ(dpo["global_batch"], 16);
  EXPECT_EQ(dpo["steps_per_epoch"], 63);  // ceil(1001 / 16)
  EXPECT_EQ(dpo["beta"], 0.1);
  const json& eval = plan[2];
  EXPECT_EQ(eval["kind"], "eval");
  EXPECT_EQ(eval["reward"], "exrm");
  const std::string table = PlanTable(*s, plan);
  EXPECT_NE(table.find("tiny/exrm/seed0/train"), std::string::npos) << table;
  EXPECT_EQ(table.find("t/tiny/exrm"), std::string::npos) << "the header names the study";
  EXPECT_NE(table.find("Training steps in all: "), std::string::npos);
  // Unreadable data: steps unknown, said so.
  o.count_pairs = [](const json&) -> StatusOr<int64_t> { return NotFoundError("no file"); };
  const json unknown = DescribePlan(*jobs, o);
  EXPECT_TRUE(unknown[1]["steps_per_epoch"].is_null());
  EXPECT_NE(PlanTable(*s, unknown).find("unknown"), std::string::npos);
}

// Results select each (model, method)'s best point by mean validation accuracy over seeds,
// and report that point's ID and OOD accuracy only; an eval set never selects.
TEST(StudySemanticsTest, ResultsSelectTheBestPointOnValidationOnly) {
  auto seed = [](const std::string& method, const std::string& point, int64_t seed, double val,
                 double id, double ood) {
    SeedResult r;
    r.model = "tiny";
    r.method = method;
    r.point = point;
    r.seed = seed;
    r.metrics = {{"eval",
                  {{"id", {{"accuracy", id}, {"n", 10}}},
                   {"ood", {{"accuracy", ood}, {"n", 10}}},
                   {kSelectionSet, {{"accuracy", val}, {"n", 5}}}}}};
    return r;
  };
  // Point A: better on validation (0.8, 0.7: mean 0.75); B: worse on validation (0.7, 0.7)
  // but better on ID and OOD. A must win. EXRM has one point ("").
  const std::vector<SeedResult> results = {
      seed("dpo", "lr=1e-06", 0, 0.8, 0.60, 0.50), seed("dpo", "lr=1e-06", 1, 0.7, 0.62, 0.52),
      seed("dpo", "lr=5e-06", 0, 0.7, 0.90, 0.80), seed("dpo", "lr=5e-06", 1, 0.7, 0.92, 0.82),
      seed("exrm", "", 0, 0.9, 0.70, 0.60),        seed("exrm", "", 1, 0.9, 0.72, 0.62)};
  StudyInfo info;
  info.study = "sweep";
  info.setting = "I(a)";
  info.train = "ultra";
  info.id_sets = {"id"};
  info.ood_sets = {"ood"};
  info.expected_runs = 4;
  auto r = AggregateResults(info, results);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->sweep.size(), 3u);
  EXPECT_EQ(r->sweep[0].point, "lr=1e-06");
  EXPECT_TRUE(r->sweep[0].selected);
  EXPECT_NEAR(r->sweep[0].validation.mean, 0.75, 1e-12);
  EXPECT_FALSE(r->sweep[1].selected);
  EXPECT_EQ(r->finished_runs, 4);  // the selected point's 2 runs per method
  for (const auto& row : r->rows) {
    if (row.method != "dpo") continue;
    EXPECT_NEAR(row.id.mean, 0.61, 1e-12);
    EXPECT_NEAR(row.ood.mean, 0.51, 1e-12);
  }
  const std::string table = r->Table();
  EXPECT_NE(table.find("Sweep"), std::string::npos) << table;
  EXPECT_NE(table.find("lr=5e-06"), std::string::npos);
  EXPECT_EQ(r->ToJson()["sweep"]["points"].size(), 3u);
  EXPECT_NE(r->Csv().find("sweep selected: lr=1e-06"), std::string::npos) << r->Csv();
  // A sweep of methods the study does not run sweeps nothing.
  {
    auto s = ParseStudy(Replace(Replace(kStudy, "methods: [exrm, dpo]", "methods: [exrm]"),
                                "dpo: {epochs: 2, learning_rate: 5.0e-4,",
                                "dpo: {epochs: 2, learning_rate: [5.0e-4, 1.0e-4],"),
                        "t.yaml");
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    EXPECT_FALSE(s->HasSweep());
  }
  // While a point has not finished every seed, only the points with the most seeds compete
  // and the selection says it is provisional.
  {
    auto partial = results;
    partial.erase(partial.begin() + 1);  // lr=1e-06 has seed 0 only
    info.seeds = 2;
    auto p = AggregateResults(info, partial);
    ASSERT_TRUE(p.ok()) << p.status().ToString();
    EXPECT_EQ(p->sweep[0].point, "lr=1e-06");
    EXPECT_FALSE(p->sweep[0].selected);  // 0.8 on one seed does not beat a complete point
    EXPECT_TRUE(p->sweep[1].selected);
    EXPECT_TRUE(p->sweep[1].provisional);
    EXPECT_FALSE(r->sweep[0].provisional);  // the complete run above
  }
  // A point's run without the validation set: an error naming it, never a silent pick.
  auto broken = results;
  broken[2].metrics["eval"].erase(kSelectionSet);
  auto bad = AggregateResults(info, broken);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("tiny/dpo/lr=5e-06/seed0"), std::string::npos)
      << bad.status().message();
}

// REFERENCE section 1, transcribed: what each shipped setting must say.
struct Setting {
  const char* file;
  const char* setting;
  const char* train;
  std::vector<std::string> id, ood;
  std::vector<std::string> models;
};

TEST(StudySemanticsTest, ShippedSettingsFollowThePapersRecipe) {
  const std::vector<std::string> mixture_models = {"gemma-2b", "gemma-7b", "mistral-7b"};
  const std::vector<Setting> settings = {
      {"setting-1a.yaml",
       "I(a)",
       "ultra",
       {"ultra:test"},
       {"arena:test", "hh:test", "nectar:test", "webgpt:test", "sum-reddit:test"},
       mixture_models},
      {"setting-1b.yaml",
       "I(b)",
       "arena",
       {"arena:test"},
       {"ultra:test", "hh:test", "nectar:test", "webgpt:test", "sum-reddit:test"},
       mixture_models},
      {"setting-1c.yaml",
       "I(c)",
       "hh",
       {"hh:test"},
       {"ultra:test", "arena:test", "nectar:test", "webgpt:test", "sum-reddit:test"},
       mixture_models},
      {"setting-2a.yaml",
       "II(a)",
       "ultra",
       {"ultra:test"},
       {"ultra-lm3-sft:test", "ultra-lm3-rlhf:test"},
       {"gemma-2b"}},
      {"setting-2b.yaml",
       "II(b)",
       "sum-reddit",
       {"sum-reddit:test"},
       {"sum-cnn:test", "sum-dailymail:test"},
       {"gemma-2b"}},
  };
  const std::map<std::string, std::pair<std::string, std::string>> model_files = {
      {"gemma-2b", {"gemma-2b-it", "gemma"}},
      {"gemma-7b", {"gemma-7b-it", "gemma"}},
      {"mistral-7b", {"mistral-7b-sft-beta", "zephyr"}}};
  for (const auto& want : settings) {
    SCOPED_TRACE(want.file);
    const std::string path = testing::SourcePath(std::string("configs/studies/") + want.file);
    auto text = ReadFile(path);
    ASSERT_TRUE(text.ok());
    auto s = ParseStudy(*text, path);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    EXPECT_EQ(s->setting, want.setting);
    EXPECT_EQ(s->train_set, want.train);
    EXPECT_EQ(s->id_eval, want.id);
    EXPECT_EQ(s->ood_eval, want.ood);
    ASSERT_EQ(s->models.size(), want.models.size());
    for (size_t i = 0; i < want.models.size(); ++i) {
      EXPECT_EQ(s->models[i].name, want.models[i]);
      const auto& [dir, tmpl] = model_files.at(want.models[i]);
      EXPECT_NE(s->models[i].path.find(dir), std::string::npos) << s->models[i].path;
      EXPECT_EQ(s->models[i].chat_template, tmpl);
    }
    EXPECT_EQ(s->methods, (std::vector<std::string>{"exrm", "dpo"}));
    EXPECT_EQ(s->seeds, (std::vector<int64_t>{0, 1, 2}));
    EXPECT_TRUE(s->sft.is_null());  // the published checkpoints are already instruction-tuned
    EXPECT_EQ(s->ranks, 8);         // the GPU count the file assumes
    auto jobs = PlanStudy(*s, "", path);
    ASSERT_TRUE(jobs.ok()) << jobs.status().ToString();
    // Every job fits one 8-GPU node of 80 GB per GPU (the estimate of coordinator/memory_plan).
    WorkerRecord node;
    node.id = "a100-80gb";
    node.slots = 8;
    node.memory_bytes_per_slot = 80'000'000'000;
    for (const auto& j : *jobs) {
      const json m = PlanJobMemory(j, {node}, testing::SourcePath(""), &*s);
      EXPECT_EQ(m["fits"], true) << j.name << ": " << m.dump();
    }
    for (const auto& j : *jobs) {
      const json& t = j.spec["train"];
      if (j.kind == "eval") {
        if (j.labels["method"] == "dpo") {
          EXPECT_EQ(j.spec["eval"]["beta"], 0.03);
        }
        continue;
      }
      SCOPED_TRACE(j.name);
      EXPECT_EQ(j.spec["data"]["max_length"], 512);
      EXPECT_EQ(j.spec["data"]["max_prompt_length"], 128);
      // TRL-era defaults: per-device batch 8 (here per rank x accumulation steps: the same
      // update), so a global batch of 64 on 8 GPUs; AdamW (0.9, 0.999, 1e-8), no weight
      // decay, linear decay, no warmup, clip 1.0.
      EXPECT_EQ(t["ranks"], 8);
      EXPECT_EQ(t["per_rank_batch_size"].get<int64_t>() * t["gradient_accumulation"].get<int64_t>(),
                8);
      EXPECT_EQ(t["batch_size"].get<int64_t>() * t["gradient_accumulation"].get<int64_t>(), 64);
      EXPECT_EQ(t["adam_beta1"], 0.9);
      EXPECT_EQ(t["adam_beta2"], 0.999);
      EXPECT_EQ(t["adam_epsilon"], 1e-8);
      EXPECT_EQ(t["weight_decay"], 0.0);
      EXPECT_EQ(t["schedule"], "linear");
      EXPECT_EQ(t["warmup_ratio"], 0.0);
      EXPECT_EQ(t["warmup_steps"], 0);
      EXPECT_EQ(t["max_grad_norm"], 1.0);
      if (j.kind == "reward") {  // EXRM: 1 epoch, lr 5e-6
        EXPECT_EQ(t["epochs"], 1);
        EXPECT_EQ(t["learning_rate"], 5e-6);
      } else {  // DPO: 2 epochs, lr 1e-6, beta 0.03, sigmoid, no label smoothing
        ASSERT_EQ(j.kind, "dpo");
        EXPECT_EQ(t["epochs"], 2);
        EXPECT_EQ(t["learning_rate"], 1e-6);
        EXPECT_EQ(j.spec["dpo"]["beta"], 0.03);
        EXPECT_EQ(j.spec["dpo"]["label_smoothing"], 0.0);
        EXPECT_EQ(j.spec["dpo"]["reference_free"], false);
      }
    }
  }
}

}  // namespace
}  // namespace rmgen::coord
