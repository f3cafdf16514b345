// The memory plan (coordinator/memory_plan.h): the estimate's arithmetic and its monotonicity,
// what ZeRO-1, checkpointing and bf16 weights change, the study's 7B models on 80 GB GPUs,
// advice, finding a job's model config, and worker fit. (The estimate against rmgen-train's
// measured peak RSS: memory_measured_test.cc.)
#include "coordinator/memory_plan.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <fstream>

#include "common/file.h"
#include "coordinator/study.h"
#include "tests/test_util.h"

namespace rmgen::coord {
namespace {

using nlohmann::json;

// An 80 GB GPU as nvidia-smi reports an A100-80GB: 81920 MiB.
constexpr int64_t k80GB = 80ll << 30;

ModelConfig Config(const std::string& name) {
  const std::string path = testing::SourcePath("configs/models/" + name + ".json");
  auto text = ReadFile(path);
  EXPECT_TRUE(text.ok()) << path;
  auto cfg = ParseModelConfig(text.ok() ? *text : "{}", path);
  EXPECT_TRUE(cfg.ok()) << cfg.status().ToString();
  return cfg.ok() ? *cfg : ModelConfig();
}

// A resolved-spec-like job: the fields the estimate reads.
json Spec(const std::string& kind, int64_t global_batch, int64_t max_length,
          const std::string& dtype, bool bf16, bool zero1, bool checkpointing,
          const std::string& device = "cuda") {
  return {
      {"kind", kind},
      {"model", {{"path", "/models/m"}, {"dtype", dtype}}},
      {"data", {{"max_length", max_length}, {"max_prompt_length", 128}}},
      {"train",
       {{"batch_size", global_batch}, {"bf16", bf16}, {"gradient_checkpointing", checkpointing}}},
      {"dpo", {{"live_reference", false}, {"reference_free", false}}},
      {"eval", {{"batch_size", 16}}},
      {"runtime", {{"device", device}, {"zero1", zero1}}}};
}

TEST(MemoryPlanTest, ParametersMatchTheModels) {
  // Hugging Face's counts: gemma-7b 8.54B, mistral-7b 7.24B, gemma-2b 2.51B.
  EXPECT_NEAR(
      EstimateJobMemory(Config("gemma-7b"), Spec("dpo", 8, 512, "float32", false, false, false), 1)
              .parameters /
          1e9,
      8.54, 0.01);
  EXPECT_NEAR(EstimateJobMemory(Config("mistral-7b"),
                                Spec("dpo", 8, 512, "float32", false, false, false), 1)
                      .parameters /
                  1e9,
              7.24, 0.01);
  EXPECT_NEAR(
      EstimateJobMemory(Config("gemma-2b"), Spec("sft", 8, 512, "float32", false, false, false), 1)
              .parameters /
          1e9,
      2.51, 0.01);
  // The reward head replaces the untied LM head: mistral's EXRM has 131M parameters fewer.
  const auto lm = EstimateJobMemory(Config("mistral-7b"),
                                    Spec("dpo", 8, 512, "float32", false, false, false), 1);
  const auto rm = EstimateJobMemory(Config("mistral-7b"),
                                    Spec("reward", 8, 512, "float32", false, false, false), 1);
  EXPECT_EQ(lm.parameters - rm.parameters, 32000 * 4096 - 4096);
}

TEST(MemoryPlanTest, ComponentsSumToTheTotal) {
  for (const char* kind : {"sft", "reward", "dpo", "eval"}) {
    const auto e =
        EstimateJobMemory(Config("gemma-2b"), Spec(kind, 16, 512, "bfloat16", true, true, true), 4);
    EXPECT_EQ(e.total, e.weights + e.gradients + e.optimizer + e.activations + e.logits +
                           e.reference_model + e.reference_cache + e.runtime)
        << kind;
    EXPECT_GT(e.total, 0) << kind;
    EXPECT_EQ(e.micro_batch, 4) << kind;  // ceil(16 / 4)
    const json j = e.ToJson();
    EXPECT_EQ(j["bytes"]["total"], e.total);
    EXPECT_EQ(j["phases"][e.peak_phase], e.total) << j.dump();
    EXPECT_NE(e.Summary().find(kind), std::string::npos) << e.Summary();
  }
  // An eval job has no gradients or optimizer state.
  const auto ev = EstimateJobMemory(Config("gemma-2b"),
                                    Spec("eval", 16, 512, "float32", false, false, false), 1);
  EXPECT_EQ(ev.gradients, 0);
  EXPECT_EQ(ev.optimizer, 0);
}

TEST(MemoryPlanTest, MonotonicInBatchAndLength) {
  const ModelConfig cfg = Config("gemma-2b");
  for (const char* kind : {"sft", "reward", "dpo"}) {
    for (const char* device : {"cpu", "cuda"}) {
      int64_t last = 0;
      for (int64_t batch : {1, 2, 4, 8, 16, 32}) {
        const int64_t t =
            EstimateJobMemory(cfg, Spec(kind, batch, 512, "float32", false, false, false, device),
                              1)
                .total;
        EXPECT_GT(t, last) << kind << " " << device << " batch " << batch;
        last = t;
      }
      // With ZeRO-1 and checkpointing short sequences may peak elsewhere (the optimizer
      // step): never less with length, and more in the end.
      last = 0;
      int64_t first = 0;
      for (int64_t length : {64, 128, 256, 512, 1024, 2048}) {
        const int64_t t =
            EstimateJobMemory(cfg, Spec(kind, 8, length, "bfloat16", true, true, true, device), 2)
                .total;
        EXPECT_GE(t, last) << kind << " " << device << " length " << length;
        if (first == 0) first = t;
        last = t;
      }
      EXPECT_GT(last, first) << kind << " " << device;
      last = 0;
      for (int64_t length : {64, 128, 256, 512, 1024}) {
        const int64_t t =
            EstimateJobMemory(cfg, Spec(kind, 8, length, "float32", false, false, false, device), 1)
                .total;
        EXPECT_GT(t, last) << kind << " " << device << " length " << length;
        last = t;
      }
    }
  }
  // The global batch splits over ranks: 8 ranks of batch 64 plan like 1 rank of batch 8,
  // but for the gradients' all-reduce and (ZeRO-1) the shards.
  const auto one =
      EstimateJobMemory(cfg, Spec("reward", 8, 512, "float32", false, false, false), 1);
  const auto eight =
      EstimateJobMemory(cfg, Spec("reward", 64, 512, "float32", false, false, false), 8);
  EXPECT_EQ(eight.micro_batch, 8);
  EXPECT_EQ(one.total, eight.total);
}

TEST(MemoryPlanTest, Zero1DividesTheOptimizerStateByTheRanks) {
  const ModelConfig cfg = Config("mistral-7b");
  for (int64_t ranks : {2, 4, 8}) {
    const auto plain = EstimateJobMemory(
        cfg, Spec("reward", 8 * ranks, 512, "bfloat16", true, false, true), ranks);
    const auto zero =
        EstimateJobMemory(cfg, Spec("reward", 8 * ranks, 512, "bfloat16", true, true, true), ranks);
    EXPECT_NEAR(double(zero.optimizer), double(plain.optimizer) / ranks, 2.0) << ranks;
    // bf16 weights: a float32 master copy and two float32 moments, 12 bytes a parameter.
    EXPECT_EQ(plain.optimizer, 12 * plain.parameters);
    // Weights unchanged; gradients gain this rank's reduced slice.
    EXPECT_EQ(zero.weights, plain.weights);
    EXPECT_NEAR(double(zero.gradients - plain.gradients), double(plain.gradients) / ranks, 2.0);
    EXPECT_LT(zero.total, plain.total);
  }
  // On one rank ZeRO-1 shards nothing.
  const auto a = EstimateJobMemory(cfg, Spec("reward", 8, 512, "float32", false, false, false), 1);
  const auto b = EstimateJobMemory(cfg, Spec("reward", 8, 512, "float32", false, true, false), 1);
  EXPECT_EQ(a.total, b.total);
}

TEST(MemoryPlanTest, CheckpointingReducesActivations) {
  for (const char* model : {"gemma-2b", "mistral-7b"}) {
    for (const char* device : {"cpu", "cuda"}) {
      const ModelConfig cfg = Config(model);
      const auto full =
          EstimateJobMemory(cfg, Spec("reward", 8, 512, "bfloat16", true, false, false, device), 1);
      const auto ckpt =
          EstimateJobMemory(cfg, Spec("reward", 8, 512, "bfloat16", true, false, true, device), 1);
      EXPECT_LT(ckpt.activations * 3, full.activations) << model << " " << device;
      EXPECT_LT(ckpt.total, full.total);
    }
  }
}

TEST(MemoryPlanTest, Bf16WeightsHalveWeightsAndGradientsButAddAMasterCopy) {
  const ModelConfig cfg = Config("gemma-7b");
  const auto f32 = EstimateJobMemory(cfg, Spec("dpo", 64, 512, "float32", true, true, true), 8);
  const auto b16 = EstimateJobMemory(cfg, Spec("dpo", 64, 512, "bfloat16", true, true, true), 8);
  EXPECT_EQ(f32.weights, 2 * b16.weights);
  EXPECT_EQ(b16.weights, 2 * b16.parameters);
  EXPECT_NEAR(double(f32.gradients), 2.0 * b16.gradients, 4.0);
  // float32: two moments (8 bytes a parameter); bf16: master copy and moments in float32 (12).
  EXPECT_NEAR(3.0 * f32.optimizer, 2.0 * b16.optimizer, 8.0);
}

TEST(MemoryPlanTest, GemmasVocabularyMakesTheLogitsTheLargestActivation) {
  auto spec = Spec("dpo", 64, 512, "bfloat16", true, true, true);
  spec["runtime"]["vocab_chunk"] = 0;  // the full logits
  const auto e = EstimateJobMemory(Config("gemma-7b"), spec, 8);
  // 8 pairs x 2 sides x 511 predicted tokens x 256000 x 4 bytes, four copies in backward.
  EXPECT_EQ(e.peak_phase, "train");
  EXPECT_NEAR(double(e.logits), 16.0 * 8 * 2 * 511 * 256000, 1e6);
  EXPECT_GT(e.logits, e.activations);
}

TEST(MemoryPlanTest, AChunkedHeadKeepsNoVocabularySizedTensor) {
  // The default chunk (32768 rows): Gemma's 256k vocabulary runs in 8 chunks, so the head's
  // peak is a chunk's, (2 * 2 + 8) bytes x 8176 response tokens x 32768 plus dh, and no
  // longer the step's peak (a layer's backward is).
  const auto chunked =
      EstimateJobMemory(Config("gemma-7b"), Spec("dpo", 64, 512, "bfloat16", true, true, true), 8);
  EXPECT_EQ(chunked.vocab_chunk, 32768);
  const double nr = 8.0 * 2 * 511;
  EXPECT_LE(double(chunked.logits), 12.0 * nr * 32768 + 4 * nr * 3072);
  EXPECT_GT(chunked.activations, chunked.logits);
  // Two chunks of nearly the whole vocabulary: the head is the peak again, a chunk's worth.
  auto wide = Spec("dpo", 64, 512, "bfloat16", true, true, true);
  wide["runtime"]["vocab_chunk"] = 255999;
  EXPECT_NEAR(double(EstimateJobMemory(Config("gemma-7b"), wide, 8).logits),
              12.0 * nr * 255999 + 4 * nr * 3072, 1e6);
  auto full_spec = Spec("dpo", 64, 512, "bfloat16", true, true, true);
  full_spec["runtime"]["vocab_chunk"] = 0;
  const auto full = EstimateJobMemory(Config("gemma-7b"), full_spec, 8);
  EXPECT_LT(chunked.total + 10 * (1ll << 30), full.total);
  // Mistral's 32000 rows fit one chunk: the plain path, the same estimate either way.
  auto one = Spec("dpo", 64, 512, "bfloat16", true, true, true);
  one["runtime"]["vocab_chunk"] = 0;
  EXPECT_EQ(
      EstimateJobMemory(Config("mistral-7b"), one, 8).total,
      EstimateJobMemory(Config("mistral-7b"), Spec("dpo", 64, 512, "bfloat16", true, true, true), 8)
          .total);
}

// The study's 7B settings (configs/studies/setting-1*.yaml): per-device batch 8 at
// max_length 512 on 8 ranks fits an 80 GB GPU with bf16 weights, ZeRO-1 and gradient
// checkpointing (DPO as 4 x 2 accumulation steps: Gemma's 256k-vocabulary logits); in fp32
// without ZeRO-1 they do not come close.
TEST(MemoryPlanTest, SevenBModelsFit80GBWithBf16Zero1AndCheckpointing) {
  for (const char* model : {"gemma-7b", "mistral-7b"}) {
    const ModelConfig cfg = Config(model);
    for (const char* kind : {"reward", "dpo"}) {
      const bool dpo = std::string(kind) == "dpo";
      json spec = Spec(kind, dpo ? 32 : 64, 512, "bfloat16", true, true, true);
      spec["train"]["gradient_accumulation"] = dpo ? 2 : 1;
      const auto fit = EstimateJobMemory(cfg, spec, 8);
      EXPECT_LE(fit.total, k80GB) << fit.Summary();
      EXPECT_EQ(fit.micro_batch, dpo ? 4 : 8);
      const auto fp32 =
          EstimateJobMemory(cfg, Spec(kind, 64, 512, "float32", false, false, false), 8);
      EXPECT_GT(fp32.total, 100'000'000'000) << fp32.Summary();
      // The eval job of the trained model (fp32 weights, eval batch 16) fits too.
      json ev = Spec("eval", 64, 512, "float32", false, false, false);
      ev["eval"]["reward"] = std::string(kind) == "dpo" ? "dporm" : "exrm";
      EXPECT_LE(EstimateJobMemory(cfg, ev, 8).total, k80GB);
    }
  }
}

TEST(MemoryPlanTest, AdviceSaysWhatWouldFit) {
  const ModelConfig cfg = Config("gemma-7b");
  auto check = [&](const json& spec) {
    const auto base = EstimateJobMemory(cfg, spec, 8);
    EXPECT_GT(base.total, k80GB);
    const auto advice = AdviseMemory(cfg, spec, 8, k80GB);
    std::string changes;
    for (const auto& o : advice) changes += o.change + (o.fits ? " (fits)" : "") + "\n";
    for (const auto& o : advice) {
      EXPECT_EQ(o.fits, o.estimate.total <= k80GB) << o.change;
      EXPECT_LT(o.estimate.total, base.total) << o.change;
      // Each option is the estimate of the patched spec on its ranks.
      json patched = spec;
      if (!o.patch.is_null()) patched.merge_patch(o.patch);
      EXPECT_EQ(EstimateJobMemory(cfg, patched, o.ranks).total, o.estimate.total) << o.change;
    }
    // Fitting options first.
    EXPECT_FALSE(advice.empty());
    if (!advice.empty()) {
      EXPECT_TRUE(advice.front().fits) << changes;
    }
    return std::make_pair(advice, changes);
  };
  // fp32 weights without ZeRO-1 or checkpointing: only all three flags together fit (DPO at
  // micro-batch 4 per rank).
  {
    const auto [advice, changes] = check(Spec("dpo", 32, 512, "float32", true, false, false));
    bool combined = false, zero1 = false;
    for (const auto& o : advice) {
      if (o.change == "runtime.zero1: true") zero1 = !o.fits;
      if (o.change.find(" + ") != std::string::npos && o.ranks == 8) combined = o.fits;
    }
    EXPECT_TRUE(combined) << changes;
    EXPECT_TRUE(zero1) << changes;
  }
  // fp32 weights with ZeRO-1 and checkpointing: bf16 weights fit, and so do more ranks (the
  // fewest that do: one fewer does not).
  {
    const auto [advice, changes] = check(Spec("dpo", 32, 512, "float32", true, true, true));
    bool dtype = false, ranks = false;
    for (const auto& o : advice) {
      if (o.change == "model.dtype: bfloat16") dtype = o.fits;
      if (o.change.rfind("ranks: ", 0) == 0) {
        ranks = o.fits && o.ranks > 8;
        EXPECT_GT(
            EstimateJobMemory(cfg, Spec("dpo", 32, 512, "float32", true, true, true), o.ranks - 1)
                .total,
            k80GB);
      }
    }
    EXPECT_TRUE(dtype) << changes;
    EXPECT_TRUE(ranks) << changes;
  }
  // An eval job gets no training advice.
  for (const auto& o :
       AdviseMemory(cfg, Spec("eval", 8, 512, "float32", false, false, false), 1, 1ll << 30)) {
    EXPECT_EQ(o.change.find("zero1"), std::string::npos) << o.change;
    EXPECT_EQ(o.change.find("ranks"), std::string::npos) << o.change;
  }
}

// A submitter names the file: the coordinator reads only a regular file of at most 1 MiB,
// and never blocks on one (a FIFO, /dev/zero).
TEST(MemoryPlanTest, AConfigThatIsNotASmallRegularFileIsNotRead) {
  testing::TempDir dir;
  const std::string fifo = dir / "fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  std::string big(2 << 20, ' ');
  ASSERT_TRUE(WriteFileAtomic(dir / "big.json", big).ok());
  for (const std::string& path : {std::string("/dev/zero"), fifo, std::string(dir / "big.json")}) {
    JobRecord j;
    j.spec = {{"kind", "reward"}, {"model", {{"config", path}}}};
    auto cfg = JobModelConfig(j, nullptr, "", nullptr);
    ASSERT_FALSE(cfg.ok()) << path;
    EXPECT_NE(cfg.status().message().find("regular file"), std::string::npos)
        << cfg.status().message();
  }
}

TEST(MemoryPlanTest, AJobsModelConfigComesFromItsSpecOrItsStudy) {
  testing::TempDir dir;
  const std::string gemma = testing::SourcePath("configs/models/gemma-2b.json");
  // model.config, relative to the base folder.
  std::filesystem::create_directories(dir / "configs");
  std::filesystem::copy_file(gemma, dir / "configs/g.json");
  JobRecord j;
  j.id = "j-1";
  j.spec = {{"kind", "reward"}, {"model", {{"config", "configs/g.json"}}}};
  std::string source;
  auto cfg = JobModelConfig(j, nullptr, dir.path(), &source);
  ASSERT_TRUE(cfg.ok()) << cfg.status().ToString();
  EXPECT_EQ(cfg->num_layers, 18);
  EXPECT_EQ(source, dir / "configs/g.json");
  EXPECT_FALSE(JobModelConfig(j, nullptr, "", nullptr).ok());  // relative to here: not found
  // model.path: its config.json.
  std::filesystem::create_directories(dir / "ckpt");
  std::filesystem::copy_file(gemma, dir / "ckpt/config.json");
  j.spec = {{"kind", "reward"}, {"model", {{"path", dir / "ckpt"}}}};
  ASSERT_TRUE(JobModelConfig(j, nullptr, "", &source).ok());
  EXPECT_EQ(source, dir / "ckpt/config.json");
  // A path not readable here (or another job's output): the study model's arch.
  Study s;
  StudyModel m;
  m.name = "g";
  m.path = "/nowhere/gemma-2b-it";
  m.arch = "configs/g.json";
  s.models.push_back(m);
  j.spec = {{"kind", "eval"}, {"model", {{"path", "${output:j-0}/checkpoint"}}}};
  j.labels = {{"model", "g"}};
  auto missing = JobModelConfig(j, nullptr, dir.path(), nullptr);
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("arch"), std::string::npos);
  ASSERT_TRUE(JobModelConfig(j, &s, dir.path(), &source).ok());
  EXPECT_EQ(source, dir / "configs/g.json");
  // A malformed config.json is an error, not a silent skip.
  { std::ofstream(dir / "configs/bad.json") << "{\"model_type\": \"gemma\"}"; }
  s.models[0].arch = "configs/bad.json";
  auto bad = JobModelConfig(j, &s, dir.path(), nullptr);
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument) << bad.status().ToString();
}

WorkerRecord Worker(const std::string& id, int64_t slots, int64_t memory) {
  WorkerRecord w;
  w.id = id;
  w.slots = slots;
  w.memory_bytes_per_slot = memory;
  return w;
}

TEST(MemoryPlanTest, WorkerFit) {
  const int64_t GB = 1'000'000'000;
  // Nobody reports memory: unknown, accepted.
  auto f = CheckWorkerFit(50 * GB, 8, {Worker("a", 8, 0)});
  EXPECT_FALSE(f.known);
  EXPECT_TRUE(f.fits);
  // One big node fits; small ones do not.
  f = CheckWorkerFit(50 * GB, 8, {Worker("small", 8, 24 * GB), Worker("big", 8, 80 * GB)});
  EXPECT_TRUE(f.known && f.fits);
  EXPECT_EQ(f.largest_worker, "big");
  EXPECT_EQ(f.slots_that_fit, 8);
  f = CheckWorkerFit(50 * GB, 8, {Worker("small", 8, 24 * GB)});
  EXPECT_TRUE(f.known);
  EXPECT_FALSE(f.fits);
  EXPECT_EQ(f.largest_memory, 24 * GB);
  // A gang over two 4-slot workers with enough memory fits; one is not enough.
  EXPECT_TRUE(CheckWorkerFit(50 * GB, 8, {Worker("x", 4, 80 * GB), Worker("y", 4, 80 * GB)}).fits);
  EXPECT_FALSE(CheckWorkerFit(50 * GB, 8, {Worker("x", 4, 80 * GB), Worker("s", 8, GB)}).fits);
  // A worker that does not report could take it: not refused.
  f = CheckWorkerFit(50 * GB, 8, {Worker("small", 8, 24 * GB), Worker("old", 8, 0)});
  EXPECT_FALSE(f.known);
  EXPECT_TRUE(f.fits);
}

TEST(MemoryPlanTest, PlanJobMemoryReportsTheEstimateFitAndAdvice) {
  JobRecord j;
  j.id = "j-7";
  j.name = "big";
  j.kind = "dpo";
  j.ranks = 8;
  j.spec = Spec("dpo", 64, 512, "float32", true, false, false);
  j.spec["model"] = {{"config", testing::SourcePath("configs/models/gemma-7b.json")}};
  json p = PlanJobMemory(j, {}, "");
  EXPECT_TRUE(p["fits"].is_null()) << p.dump(2);  // no worker reports memory
  EXPECT_EQ(p["estimate"]["parameters"], p["model_config"]["parameters"]);
  EXPECT_EQ(p["total_bytes"], p["estimate"]["bytes"]["total"]);
  EXPECT_TRUE(p["advice"].empty());
  p = PlanJobMemory(j, {Worker("gpu", 8, k80GB)}, "");
  EXPECT_EQ(p["fits"], false) << p.dump(2);
  EXPECT_EQ(p["largest_worker_memory_bytes"], k80GB);
  ASSERT_FALSE(p["advice"].empty());
  EXPECT_EQ(p["advice"].size(), p["options"].size());
  EXPECT_NE(p["advice"][0].get<std::string>().find("(fits)"), std::string::npos) << p.dump(2);
  p = PlanJobMemory(j, {Worker("gpu", 8, 400ll << 30)}, "");
  EXPECT_EQ(p["fits"], true);
  EXPECT_TRUE(p["advice"].empty());
  // No config readable: an error, no estimate.
  j.spec["model"] = {{"path", "/nowhere"}};
  p = PlanJobMemory(j, {Worker("gpu", 8, k80GB)}, "");
  EXPECT_TRUE(p["estimate"].is_null());
  EXPECT_TRUE(p["fits"].is_null());
  EXPECT_TRUE(p.contains("error"));
}

TEST(MemoryPlanTest, StoredWorkersWithoutMemoryStillLoad) {
  // A worker record written before memory_bytes_per_slot existed.
  const json old = {{"id", "w"},
                    {"host", "h"},
                    {"slots", 2},
                    {"labels", json::object()},
                    {"draining", false},
                    {"registered_ms", 1},
                    {"last_heartbeat_ms", 2},
                    {"lease_deadline_ms", 3}};
  auto w = WorkerFromJson(old);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  EXPECT_EQ(w->memory_bytes_per_slot, 0);
  WorkerRecord r = *w;
  r.memory_bytes_per_slot = 42;
  EXPECT_EQ(WorkerFromJson(ToJson(r))->memory_bytes_per_slot, 42);
}

TEST(MemoryPlanTest, StudyModelsMayNameAnArch) {
  const std::string study = R"(name: t
setting: demo
models:
  - {name: g, path: /models/gemma-2b-it, template: gemma, arch: configs/models/gemma-2b.json}
methods: [exrm]
seeds: [0]
train: ultra
eval: {id: [ultra:test]}
)";
  auto s = ParseStudy(study, "t.yaml");
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->models[0].arch, "configs/models/gemma-2b.json");
  auto back = StudyPlanFromJson(s->ToJson());
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->models[0].arch, "configs/models/gemma-2b.json");
  // Plans stored before `arch` existed.
  json old = s->ToJson();
  old["models"][0].erase("arch");
  back = StudyPlanFromJson(old);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->models[0].arch, "");
  // Errors name the line.
  std::string bad = study;
  bad.replace(bad.find("arch: configs/models/gemma-2b.json"), 34, "arch: [1]");
  auto err = ParseStudy(bad, "t.yaml");
  EXPECT_EQ(err.status().message().find("t.yaml:4: field 'models[0].arch'"), 0u)
      << err.status().message();
  // The shipped settings plan every model from its arch.
  for (const char* setting :
       {"setting-1a", "setting-1b", "setting-1c", "setting-2a", "setting-2b"}) {
    const std::string path =
        testing::SourcePath("configs/studies/" + std::string(setting) + ".yaml");
    auto text = ReadFile(path);
    ASSERT_TRUE(text.ok()) << path;
    auto st = ParseStudy(*text, path);
    ASSERT_TRUE(st.ok()) << st.status().ToString();
    auto jobs = PlanStudy(*st, "u", path);
    ASSERT_TRUE(jobs.ok()) << jobs.status().ToString();
    for (const auto& job : *jobs) {
      auto cfg = JobModelConfig(job, &*st, testing::SourcePath(""), nullptr);
      EXPECT_TRUE(cfg.ok()) << setting << " " << job.name << ": " << cfg.status().ToString();
    }
  }
}

}  // namespace
}  // namespace rmgen::coord
