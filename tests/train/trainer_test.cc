// rmgen-train's job runner on the synthetic suite with a tiny model: exact resume,
// gradient accumulation, the reference-log-prob cache, non-finite handling, bad input.
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <sstream>

#include "tests/train/train_util.h"
#include "worker/model/checkpoint.h"
#include "worker/train/objectives.h"

namespace rmgen {
namespace {

using testing::CheckpointTensors;
using testing::ReadJson;
using testing::Spec;
using testing::SynthSpec;
using testing::TempDir;

const std::string kSmall =
    "  limit: 64\n"
    "train: {batch_size: 8, learning_rate: 0.001, epochs: 2, length_grouped: true}\n"
    "runtime: {threads: 1}\n";

void ExpectSameTensors(const NamedTensors& a, const NamedTensors& b) {
  ASSERT_EQ(a.size(), b.size());
  ASSERT_FALSE(a.empty());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].first, b[i].first);
    EXPECT_TRUE(torch::equal(a[i].second, b[i].second))
        << a[i].first << " max diff " << (a[i].second - b[i].second).abs().max().item<float>();
  }
}

// Same names, values within rtol/atol (float summation order may differ).
void ExpectCloseTensors(const NamedTensors& a, const NamedTensors& b, double rtol, double atol) {
  ASSERT_EQ(a.size(), b.size());
  ASSERT_FALSE(a.empty());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].first, b[i].first);
    EXPECT_TRUE(torch::allclose(a[i].second, b[i].second, rtol, atol))
        << a[i].first << " max diff " << (a[i].second - b[i].second).abs().max().item<float>();
  }
}

// The weights a job starts from: its spec's seeded random init (model.config, init_seed), built
// as rmgen-train builds it, by Hugging Face name.
NamedTensors InitialTensors(const JobSpec& spec) {
  auto cfg = ParseModelConfig(*ReadFile(spec.model_config), spec.model_config);
  EXPECT_TRUE(cfg.ok()) << cfg.status().ToString();
  if (!cfg.ok()) return {};
  const HeadKind head =
      spec.kind == JobKind::kReward ? HeadKind::kReward : HeadKind::kLanguageModel;
  return DecoderLM::RandomInit(*cfg, head, spec.init_seed, torch::kFloat32)->named_parameters();
}

// Every tensor of `trained` moved away from `init`: somewhere by more than a comparison with
// tolerance (rtol, atol) absorbs, so runs that left their weights untouched cannot pass the
// comparisons below; and nowhere by more than `max_change` (for AdamW without weight decay,
// at most 1.12 * lr per step over the first 16 steps, whatever the gradients: a bound that
// also checks `init` is the run's own start).
void ExpectMovedFrom(const NamedTensors& trained, const NamedTensors& init, double rtol,
                     double atol, double max_change) {
  ASSERT_FALSE(trained.empty());
  ASSERT_EQ(trained.size(), init.size());
  std::map<std::string, torch::Tensor> start(init.begin(), init.end());
  for (const auto& [name, t] : trained) {
    ASSERT_TRUE(start.count(name)) << name << " is not a parameter of the initial model";
    const auto& t0 = start.at(name);
    ASSERT_EQ(t.sizes(), t0.sizes()) << name;
    const auto moved = (t - t0).abs();
    EXPECT_TRUE((moved > atol + rtol * t0.abs()).any().item<bool>())
        << name << " kept its initial value (max change " << moved.max().item<double>() << ")";
    EXPECT_LE(moved.max().item<double>(), max_change) << name;
  }
}

class ResumeTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ResumeTest, StopAndResumeEqualsOneRun) {
  const std::string kind = GetParam();
  auto spec = Spec(SynthSpec(kind, kSmall + (kind == "dpo" ? "dpo: {beta: 0.1}\n" : "")));
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  TempDir straight, split;
  RunOptions quiet;
  quiet.progress = false;
  ASSERT_TRUE(RunJob(*spec, straight.path(), quiet).ok());
  RunOptions stop = quiet;
  stop.stop_after_steps = 5;  // 16 steps in all (64 pairs / 8, 2 epochs): stops mid-epoch 0
  Status first = RunJob(*spec, split.path(), stop);
  ASSERT_EQ(first.code(), StatusCode::kCancelled) << first.ToString();
  EXPECT_EQ(ReadJson(split / "checkpoint/trainer_state.json")["step"], 5);
  ASSERT_TRUE(RunJob(*spec, split.path(), quiet).ok());
  ExpectSameTensors(CheckpointTensors(straight.path()), CheckpointTensors(split.path()));
  // Equal because both trained: 16 steps at lr 1e-3 moved every tensor by more than lr/2.
  ExpectMovedFrom(CheckpointTensors(straight.path()), InitialTensors(*spec), 0, 0.5e-3,
                  16 * 1.12e-3);
  EXPECT_EQ(ReadJson(straight / "metrics.json")["eval"], ReadJson(split / "metrics.json")["eval"]);
  // Events continue where they stopped: one line per step, 16 in all.
  auto events = *ReadFile(split / "events.jsonl");
  EXPECT_EQ(std::count(events.begin(), events.end(), '\n'), 16);
  auto last = nlohmann::json::parse(events.substr(events.rfind('{')));
  EXPECT_EQ(last["step"], 16);
  for (const char* k :
       {"loss", "lr", "grad_norm", "tokens/s", "pairs/s", "samples", "eta_s", "peak_rss_mb"}) {
    EXPECT_TRUE(last.contains(k)) << k;
  }
  if (kind != "sft") {  // TRL's names for the pairwise objectives
    for (const char* k :
         {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"}) {
      EXPECT_TRUE(last.contains(k)) << k;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Kinds, ResumeTest, ::testing::Values("reward", "dpo", "sft"));

TEST(TrainerTest, ResumeSurvivesACrashMidSwapAndDropsRepeatedEvents) {
  auto spec = Spec(SynthSpec("reward", kSmall));
  TempDir straight, crashed;
  RunOptions q;
  q.progress = false;
  ASSERT_TRUE(RunJob(*spec, straight.path(), q).ok());
  RunOptions stop = q;
  stop.stop_after_steps = 5;
  ASSERT_EQ(RunJob(*spec, crashed.path(), stop).code(), StatusCode::kCancelled);
  // A crash between SaveCheckpoint's two renames leaves only checkpoint.old, and a crash
  // after logging step 6 leaves its event behind.
  std::filesystem::rename(crashed / "checkpoint", crashed / "checkpoint.old");
  {
    std::ofstream ev(crashed / "events.jsonl", std::ios::app);
    ev << R"({"step": 6, "loss": 1.0})"
       << "\n";
  }
  ASSERT_TRUE(RunJob(*spec, crashed.path(), q).ok());
  ExpectSameTensors(CheckpointTensors(straight.path()), CheckpointTensors(crashed.path()));
  std::ifstream in(crashed / "events.jsonl");
  std::string line;
  int64_t prev = 0, n = 0;
  while (std::getline(in, line)) {
    const int64_t step = nlohmann::json::parse(line)["step"];
    EXPECT_EQ(step, prev + 1);
    prev = step;
    ++n;
  }
  EXPECT_EQ(n, 16);
}

TEST(TrainerTest, ResumeRefusesADifferentSpec) {
  auto a = Spec(SynthSpec("reward", kSmall));
  auto b = Spec(SynthSpec("reward", kSmall + "reward: {center_coefficient: 0.01}\n"));
  TempDir out;
  RunOptions stop;
  stop.progress = false;
  stop.stop_after_steps = 2;
  ASSERT_EQ(RunJob(*a, out.path(), stop).code(), StatusCode::kCancelled);
  Status s = RunJob(*b, out.path(), stop);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("different spec"), std::string::npos) << s.message();
}

TEST(TrainerTest, AccumulationEqualsOneLargerBatch) {
  // A large Adam epsilon makes the update proportional to the gradient (lr * g / (|g| + 1)),
  // so equal parameters mean equal accumulated gradients, not just equal signs.
  const std::string common = "  limit: 32\nruntime: {threads: 1}\n";
  const std::string opt = "length_grouped: false, learning_rate: 0.1, adam_epsilon: 1.0}\n";
  auto big = Spec(
      SynthSpec("reward", common + "train: {batch_size: 16, gradient_accumulation: 1, " + opt));
  auto acc =
      Spec(SynthSpec("reward", common + "train: {batch_size: 4, gradient_accumulation: 4, " + opt));
  ASSERT_TRUE(big.ok() && acc.ok());
  TempDir a, b;
  RunOptions q;
  q.progress = false;
  ASSERT_TRUE(RunJob(*big, a.path(), q).ok());
  ASSERT_TRUE(RunJob(*acc, b.path(), q).ok());
  // Same update up to float summation order (padding differs between the batchings).
  ExpectCloseTensors(CheckpointTensors(a.path()), CheckpointTensors(b.path()), 1e-5, 1e-7);
  // ... and a real one: every tensor moved by more than that tolerance (2 steps at lr 0.1).
  ExpectMovedFrom(CheckpointTensors(a.path()), InitialTensors(*big), 1e-5, 1e-7, 2 * 0.112);
  EXPECT_EQ(ReadJson(a / "metrics.json")["train"]["steps"], 2);
  EXPECT_EQ(ReadJson(b / "metrics.json")["train"]["steps"], 2);
}

TEST(TrainerTest, SharedPrefixRowsTrainLikeTwoRowsPerPair) {
  // The same job (DPO: reference log-probs, training, DPORM eval) with each pair in one row,
  // its prompt computed once (the default), and as TRL's two padded rows. Adam's epsilon 1
  // makes updates proportional to the gradients, so float-order differences in near-zero
  // gradients cannot flip an update's sign (see AccumulationEqualsOneLargerBatch).
  for (const std::string kind : {"dpo", "reward"}) {
    SCOPED_TRACE(kind);
    const std::string base =
        "  limit: 32\n  eval: [synth-id:validation]\n"
        "train: {batch_size: 8, learning_rate: 0.1, adam_epsilon: 1.0}\n";
    TempDir cache_a, cache_b;  // each run computes its own reference log-probs
    auto shared =
        Spec(SynthSpec(kind, base + "dpo: {beta: 0.1, reference_cache: " + cache_a.path() +
                                 "}\nruntime: {threads: 1}\n"));
    auto rows = Spec(SynthSpec(kind, base + "dpo: {beta: 0.1, reference_cache: " + cache_b.path() +
                                         "}\nruntime: {threads: 1, shared_prefix: false}\n"));
    ASSERT_TRUE(shared.ok() && rows.ok()) << rows.status().ToString();
    EXPECT_EQ(rows->resolved["runtime"]["shared_prefix"], false);
    TempDir a, b;
    RunOptions q;
    q.progress = false;
    ASSERT_TRUE(RunJob(*shared, a.path(), q).ok());
    ASSERT_TRUE(RunJob(*rows, b.path(), q).ok());
    ExpectCloseTensors(CheckpointTensors(a.path()), CheckpointTensors(b.path()), 1e-5, 1e-7);
    auto ma = ReadJson(a / "metrics.json"), mb = ReadJson(b / "metrics.json");
    const auto& ea = ma["eval"]["synth-id:validation"];
    const auto& eb = mb["eval"]["synth-id:validation"];
    EXPECT_EQ(ea["n"], eb["n"]);
    EXPECT_EQ(ea["accuracy"], eb["accuracy"]);
    EXPECT_NEAR(ea["mean_margin"].get<double>(), eb["mean_margin"].get<double>(), 1e-5);
    EXPECT_NEAR(ma["train"]["final"]["loss"].get<double>(),
                mb["train"]["final"]["loss"].get<double>(), 1e-5);
    // The synthetic prompts are about half of each sequence: shared rows are the cheaper
    // layout for every batch, and compute a good part fewer tokens.
    EXPECT_LT(ma["train"]["computed_tokens_frac"].get<double>(), 0.85);
    EXPECT_EQ(mb["train"]["computed_tokens_frac"].get<double>(), 1.0);
  }
}

TEST(TrainerTest, ProfileSplitsEveryStepIntoPhases) {
  for (bool profile : {true, false}) {
    auto spec = Spec(SynthSpec("dpo",
                               "  limit: 32\ntrain: {batch_size: 8, max_steps: 3}\n"
                               "dpo: {reference_free: true}\n"
                               "runtime: {threads: 1, profile: " +
                                   std::string(profile ? "true" : "false") + "}\n"));
    ASSERT_TRUE(spec.ok()) << spec.status().ToString();
    TempDir out;
    RunOptions q;
    q.progress = false;
    ASSERT_TRUE(RunJob(*spec, out.path(), q).ok());
    std::istringstream in(*ReadFile(out / "events.jsonl"));
    int steps = 0;
    for (std::string line; std::getline(in, line);) {
      const auto e = nlohmann::json::parse(line);
      ++steps;
      ASSERT_EQ(e.contains("phase_s"), profile) << line;
      EXPECT_FALSE(e.contains("device_peak_mb")) << "CPU has no allocator peak";
      if (!profile) continue;
      double sum = 0;
      for (const char* k : {"collate", "forward", "backward", "reduce", "optimizer"}) {
        ASSERT_TRUE(e["phase_s"].contains(k)) << k;
        EXPECT_GE(e["phase_s"][k].get<double>(), 0.0) << k;
        sum += e["phase_s"][k].get<double>();
      }
      EXPECT_GT(e["phase_s"]["forward"].get<double>(), 0.0);
      EXPECT_GT(e["phase_s"]["backward"].get<double>(), 0.0);
      // The phases tile the step: their sum is the step's time (8 pairs / pairs per second)
      // less what runs outside them (the metrics' all-reduce, the clipping's bookkeeping).
      const double step_s = 8.0 / e["pairs/s"].get<double>();
      EXPECT_LE(sum, step_s * 1.001 + 1e-4);
      EXPECT_GT(sum, 0.5 * step_s);
    }
    EXPECT_EQ(steps, 3);
    const auto m = ReadJson(out / "metrics.json");
    ASSERT_EQ(m["train"].contains("profile"), profile);
    if (profile) {
      double share = 0;
      for (const auto& [k, v] : m["train"]["profile"]["phase_share"].items())
        share += v.get<double>();
      EXPECT_NEAR(share, 1.0, 1e-9);
      EXPECT_LE(m["train"]["profile"]["phase_s"]["forward"].get<double>(),
                m["train"]["seconds_this_run"].get<double>());
    }
  }
}

TEST(TrainerTest, AChunkedHeadTrainsLikeTheFullLogits) {
  // runtime.vocab_chunk reaches the jobs' models: DPO (reference log-probs, training with
  // TRL's logit metrics, DPORM eval) and SFT, with the head in chunks of 50 rows and whole.
  for (const std::string kind : {"dpo", "sft"}) {
    SCOPED_TRACE(kind);
    const std::string base = "  limit: 32\n" +
                             std::string(kind == "dpo" ? "  eval: [synth-id:validation]\n" : "") +
                             "train: {batch_size: 8, learning_rate: 0.1, adam_epsilon: 1.0}\n";
    TempDir cache_a, cache_b;
    auto chunked =
        Spec(SynthSpec(kind, base + "dpo: {beta: 0.1, reference_cache: " + cache_a.path() +
                                 "}\nruntime: {threads: 1, vocab_chunk: 50}\n"));
    auto whole = Spec(SynthSpec(kind, base + "dpo: {beta: 0.1, reference_cache: " + cache_b.path() +
                                          "}\nruntime: {threads: 1, vocab_chunk: 0}\n"));
    ASSERT_TRUE(chunked.ok() && whole.ok()) << chunked.status().ToString();
    ASSERT_EQ(chunked->vocab_chunk, 50);
    TempDir a, b;
    RunOptions q;
    q.progress = false;
    ASSERT_TRUE(RunJob(*chunked, a.path(), q).ok());
    ASSERT_TRUE(RunJob(*whole, b.path(), q).ok());
    ExpectCloseTensors(CheckpointTensors(a.path()), CheckpointTensors(b.path()), 1e-5, 1e-7);
    auto ma = ReadJson(a / "metrics.json"), mb = ReadJson(b / "metrics.json");
    for (const char* key : {"loss", "logits/chosen", "logps/chosen"}) {
      if (!mb["train"]["final"].contains(key)) continue;
      EXPECT_NEAR(ma["train"]["final"][key].get<double>(), mb["train"]["final"][key].get<double>(),
                  1e-4)
          << key;
    }
    if (kind == "dpo") {
      EXPECT_TRUE(mb["train"]["final"].contains("logits/chosen"));
      EXPECT_NEAR(ma["eval"]["synth-id:validation"]["mean_margin"].get<double>(),
                  mb["eval"]["synth-id:validation"]["mean_margin"].get<double>(), 1e-5);
    }
  }
}

// Every line of a job's events.jsonl, in order.
std::vector<nlohmann::json> Events(const std::string& out) {
  std::vector<nlohmann::json> v;
  std::istringstream in(*ReadFile(out + "/events.jsonl"));
  for (std::string line; std::getline(in, line);) v.push_back(nlohmann::json::parse(line));
  return v;
}

TEST(TrainerTest, ReferenceLogProbsAreCachedAcrossRuns) {
  TempDir cache;
  const std::string extra = "  eval: [synth-id:validation]\n" + kSmall +
                            "dpo: {beta: 0.1, reference_cache: " + cache.path() + "}\n";
  auto s1 = Spec(SynthSpec("dpo", extra));
  ASSERT_TRUE(s1.ok()) << s1.status().ToString();
  // Another seed and epoch count: same reference, data and tokenization, so the cache hits.
  auto s2 = Spec(SynthSpec("dpo",
                           "  limit: 64\n  eval: [synth-id:validation]\n"
                           "train: {batch_size: 8, learning_rate: 0.001, epochs: 1, seed: 5}\n"
                           "runtime: {threads: 1}\ndpo: {beta: 0.1, reference_cache: " +
                               cache.path() + "}\n"));
  ASSERT_TRUE(s2.ok()) << s2.status().ToString();
  TempDir a, b;
  RunOptions q;
  q.progress = false;
  ASSERT_TRUE(RunJob(*s1, a.path(), q).ok());
  ASSERT_TRUE(RunJob(*s2, b.path(), q).ok());
  auto m1 = ReadJson(a / "metrics.json"), m2 = ReadJson(b / "metrics.json");
  EXPECT_EQ(m1["train"]["reference_cache"]["misses"], 2);  // train + one eval set
  EXPECT_EQ(m2["train"]["reference_cache"]["hits"], 2);
  EXPECT_EQ(m2["train"]["reference_cache"]["misses"], 0);
}

// The cache holds what the reference computes live. With a learning rate of 1e-12 the policy
// stays the reference (Adam moves a weight by about lr, far below a float32 ulp of weights
// ~0.02), so every step's rewards/chosen = beta * mean(log pi - log pi_ref) over the batch
// measures the cached log-probs against the live ones. Those are sums of float32 log-softmax
// values over < 64 response tokens, computed in other batches (other padding, so other BLAS
// blocking): a few ulp of |log p| <= ~10 per token, so |error| < 1e-4 per sequence on any
// x86-64 kernel choice; a cache of the wrong pairs or model gives rewards of order beta.
TEST(TrainerTest, CachedReferenceLogProbsEqualTheLiveOnes) {
  TempDir cache;
  const std::string frozen =
      "  limit: 64\n"
      "train: {batch_size: 8, learning_rate: 1.0e-12, epochs: 1, length_grouped: true}\n"
      "runtime: {threads: 1}\n";
  RunOptions q;
  q.progress = false;
  TempDir live, cached;
  auto sl = Spec(SynthSpec("dpo", frozen +
                                      "dpo: {beta: 0.1, live_reference: true, "
                                      "reference_cache: " +
                                      cache.path() + "}\n"));
  auto sc =
      Spec(SynthSpec("dpo", frozen + "dpo: {beta: 0.1, reference_cache: " + cache.path() + "}\n"));
  ASSERT_TRUE(sl.ok() && sc.ok());
  ASSERT_TRUE(RunJob(*sl, live.path(), q).ok());
  ASSERT_TRUE(RunJob(*sc, cached.path(), q).ok());
  EXPECT_EQ(ReadJson(cached / "metrics.json")["train"]["reference_cache"]["hits"], 1);
  const auto ev_live = Events(live.path()), ev_cached = Events(cached.path());
  ASSERT_EQ(ev_live.size(), 8u);  // 64 pairs / 8, one epoch
  ASSERT_EQ(ev_cached.size(), ev_live.size());
  const double kPerSequence = 1e-4, beta = 0.1;
  for (size_t i = 0; i < ev_cached.size(); ++i) {
    for (const char* k : {"rewards/chosen", "rewards/rejected"}) {
      // The live reference is the policy itself: exactly zero.
      EXPECT_LE(std::abs(ev_live[i][k].get<double>()), beta * kPerSequence) << k << " step " << i;
      EXPECT_LE(std::abs(ev_cached[i][k].get<double>()), beta * kPerSequence)
          << k << " step " << i + 1 << ": cached reference log-probs differ from the live ones";
    }
    // The policy's own log-probs are the same computation in both runs.
    EXPECT_NEAR(ev_cached[i]["logps/chosen"].get<double>(),
                ev_live[i]["logps/chosen"].get<double>(), kPerSequence);
  }
}

// Training from the cached log-probs agrees with training against a live reference. Weights
// after training cannot be compared with a float tolerance (Adam turns the 1e-6 differences
// between the two into step-sized ones on some kernels), so compare what training optimises.
// Step 1: the same weights, references equal within 1e-4 per sequence, so the losses agree
// to beta/4 * 1e-4 (the slope of -log sigmoid(beta z) at z = 0 is beta/2, margin error <= 2e-4).
// Later steps: the policies drift apart by at most a few lr-sized steps per weight; the loss
// (about 0.69 falling to ~0.3 here) agrees within 2e-3, while a wrong reference moves it by
// more than 1e-2 (checked by the reference-free run below, whose reference is zero).
TEST(TrainerTest, TrainingFromCachedOrLiveReferenceAgreesInLoss) {
  TempDir cache;
  RunOptions q;
  q.progress = false;
  auto live = Spec(SynthSpec("dpo", kSmall +
                                        "dpo: {beta: 0.1, live_reference: true, "
                                        "reference_cache: " +
                                        cache.path() + "}\n"));
  auto cached =
      Spec(SynthSpec("dpo", kSmall + "dpo: {beta: 0.1, reference_cache: " + cache.path() + "}\n"));
  auto free = Spec(SynthSpec("dpo", kSmall + "dpo: {beta: 0.1, reference_free: true}\n"));
  ASSERT_TRUE(live.ok() && cached.ok() && free.ok());
  TempDir c, d, f;
  ASSERT_TRUE(RunJob(*live, c.path(), q).ok());
  ASSERT_TRUE(RunJob(*cached, d.path(), q).ok());
  ASSERT_TRUE(RunJob(*free, f.path(), q).ok());
  const auto el = Events(c.path()), ec = Events(d.path()), ef = Events(f.path());
  ASSERT_EQ(el.size(), 16u);
  ASSERT_EQ(ec.size(), el.size());
  ASSERT_EQ(ef.size(), el.size());
  EXPECT_NEAR(ec[0]["loss"].get<double>(), el[0]["loss"].get<double>(), 1e-5);
  double max_diff = 0, max_free_diff = 0;
  for (size_t i = 0; i < el.size(); ++i) {
    EXPECT_NEAR(ec[i]["loss"].get<double>(), el[i]["loss"].get<double>(), 2e-3) << "step " << i + 1;
    max_diff =
        std::max(max_diff, std::abs(ec[i]["loss"].get<double>() - el[i]["loss"].get<double>()));
    max_free_diff = std::max(max_free_diff,
                             std::abs(ef[i]["loss"].get<double>() - el[i]["loss"].get<double>()));
  }
  // The tolerance separates a right reference from a wrong one.
  EXPECT_GT(max_free_diff, 1e-2);
  RecordProperty("max_loss_diff_cached_vs_live", std::to_string(max_diff));
  RecordProperty("max_loss_diff_reference_free_vs_live", std::to_string(max_free_diff));
}

TEST(TrainerTest, NonFiniteLossFailsNamingTheStepOrIsSkipped) {
  // A checkpoint with an infinite weight makes every loss non-finite.
  TempDir model;
  auto text = ReadFile(testing::SourcePath("configs/models/tiny-synth.json"));
  auto cfg = ParseModelConfig(*text, "tiny-synth");
  auto m = DecoderLM::RandomInit(*cfg, HeadKind::kReward, 1, torch::kFloat32);
  {
    torch::NoGradGuard g;
    m->named_parameters()[0].second[5][0] = std::numeric_limits<float>::infinity();
  }
  ASSERT_TRUE(SaveModel(*m, model.path(), {}).ok());
  const std::string d = testing::SynthDir();
  const std::string base = "kind: reward\nmodel: {path: " + model.path() + "}\ntokenizer: " + d +
                           "/tokenizer.model\ntemplate: zephyr\ndata: {catalog: " + d +
                           "/datasets.yaml, train: synth-id:train, limit: 16}\n"
                           "runtime: {threads: 1}\n";
  TempDir out;
  RunOptions q;
  q.progress = false;
  Status s = RunJob(*Spec(base + "train: {batch_size: 8}\n"), out.path(), q);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("non-finite"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("step 1"), std::string::npos) << s.message();
  TempDir out2;
  ASSERT_TRUE(
      RunJob(*Spec(base + "train: {batch_size: 8, skip_nonfinite: true}\n"), out2.path(), q).ok());
  EXPECT_EQ(ReadJson(out2 / "metrics.json")["train"]["skipped_nonfinite"], 2);
}

TEST(TrainerTest, MissingInputsAreClearErrors) {
  RunOptions q;
  q.progress = false;
  TempDir out;
  auto missing_model =
      Spec("kind: reward\nmodel: {path: /nonexistent/ckpt}\ntokenizer: " + testing::SynthDir() +
           "/tokenizer.model\ndata: {train: {format: "
           "pairs, path: " +
           testing::SynthDir() + "/train.jsonl}}\n");
  Status s = RunJob(*missing_model, out.path(), q);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("/nonexistent/ckpt"), std::string::npos) << s.message();
  auto missing_data =
      Spec(SynthSpec("reward", "  eval: [{format: pairs, path: /no/such.jsonl}]\n"));
  s = RunJob(*missing_data, out.path(), q);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("/no/such.jsonl"), std::string::npos) << s.message();
  auto unknown = Spec(SynthSpec("reward", "  eval: [nosuchset]\n"));
  s = RunJob(*unknown, out.path(), q);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("no dataset 'nosuchset'"), std::string::npos) << s.message();
  auto no_tok = Spec(
      "kind: reward\nmodel: {config: " + testing::SourcePath("configs/models/tiny-synth.json") +
      "}\ndata: {train: x}\n");
  s = RunJob(*no_tok, out.path(), q);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("tokenizer"), std::string::npos) << s.message();
}

TEST(TrainerTest, Bf16AutocastTrainsCloseToFp32) {
  RunOptions q;
  q.progress = false;
  TempDir fp32, bf16;
  auto a = Spec(SynthSpec("reward", kSmall));
  auto b = Spec(SynthSpec("reward",
                          "  limit: 64\ntrain: {batch_size: 8, learning_rate: 0.001, "
                          "epochs: 2, bf16: true}\nruntime: {threads: 1}\n"));
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  ASSERT_TRUE(RunJob(*a, fp32.path(), q).ok());
  ASSERT_TRUE(RunJob(*b, bf16.path(), q).ok());
  auto first = [](const std::string& dir) {
    auto text = *ReadFile(dir + "/events.jsonl");
    return nlohmann::json::parse(text.substr(0, text.find('\n')));
  };
  const double la = first(fp32.path())["loss"], lb = first(bf16.path())["loss"];
  EXPECT_NE(la, lb);  // autocast really changed the arithmetic
  EXPECT_NEAR(la, lb, 0.02);
  // Weights stay float32 under autocast.
  auto f = SafetensorsFile::Open(bf16 / "checkpoint/model.safetensors");
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->entries().begin()->second.dtype, "F32");
}

TEST(TrainerTest, CudaWithoutAGpuIsAClearError) {
  if (torch::cuda::is_available()) GTEST_SKIP() << "a GPU is present";
  RunOptions q;
  q.progress = false;
  TempDir out;
  auto s = Spec(SynthSpec("reward",
                          "  limit: 64\ntrain: {batch_size: 8}\n"
                          "runtime: {threads: 1, device: cuda}\n"));
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  Status st = RunJob(*s, out.path(), q);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("runtime.device"), std::string::npos) << st.message();
  auto bad = Spec(SynthSpec("reward", "  limit: 64\nruntime: {device: tpu}\n"));
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("'runtime.device'"), std::string::npos);
}

TEST(EvalJobTest, EvalJobsReproduceTheTrainingJobsOwnEvaluation) {
  RunOptions q;
  q.progress = false;
  TempDir init, rm, dpo, ev1, ev2, ev3;
  // A saved initial policy, so the DPO reference has a path the eval job can name.
  auto cfg =
      ParseModelConfig(*ReadFile(testing::SourcePath("configs/models/tiny-synth.json")), "c");
  ASSERT_TRUE(SaveModel(*DecoderLM::RandomInit(*cfg, HeadKind::kLanguageModel, 3, torch::kFloat32),
                        init.path(), {})
                  .ok());
  const std::string d = testing::SynthDir();
  const std::string data = "tokenizer: " + d +
                           "/tokenizer.model\ntemplate: zephyr\ndata:\n"
                           "  catalog: " +
                           d +
                           "/datasets.yaml\n  train: synth-id:train\n"
                           "  limit: 64\n  eval: [synth-id:validation]\n"
                           "runtime: {threads: 1}\n";
  auto reward = Spec("kind: reward\nmodel: {path: " + init.path() + "}\n" + data +
                     "train: {batch_size: 8, learning_rate: 0.001}\n");
  ASSERT_TRUE(reward.ok()) << reward.status().ToString();
  ASSERT_TRUE(RunJob(*reward, rm.path(), q).ok());
  auto exrm_eval = Spec("kind: eval\nmodel: {path: " + (rm / "checkpoint") + "}\n" + data +
                        "eval: {reward: exrm}\n");
  ASSERT_TRUE(exrm_eval.ok()) << exrm_eval.status().ToString();
  ASSERT_TRUE(RunJob(*exrm_eval, ev1.path(), q).ok());
  EXPECT_EQ(ReadJson(ev1 / "metrics.json")["eval"]["synth-id:validation"]["accuracy"],
            ReadJson(rm / "metrics.json")["eval"]["synth-id:validation"]["accuracy"]);

  auto train_dpo = Spec("kind: dpo\nmodel: {path: " + init.path() + "}\n" + data +
                        "train: {batch_size: 8, learning_rate: 0.001}\ndpo: {beta: 0.1}\n");
  ASSERT_TRUE(RunJob(*train_dpo, dpo.path(), q).ok());
  auto dporm = Spec("kind: eval\nmodel: {path: " + (dpo / "checkpoint") + "}\n" + data +
                    "eval: {reward: dporm, beta: 0.1, reference: " + init.path() + "}\n");
  ASSERT_TRUE(dporm.ok()) << dporm.status().ToString();
  ASSERT_TRUE(RunJob(*dporm, ev2.path(), q).ok());
  auto a = ReadJson(ev2 / "metrics.json")["eval"]["synth-id:validation"];
  auto b = ReadJson(dpo / "metrics.json")["eval"]["synth-id:validation"];
  EXPECT_EQ(a["accuracy"], b["accuracy"]);
  EXPECT_EQ(a["ties"], b["ties"]);
  EXPECT_NEAR(a["mean_margin"].get<double>(), b["mean_margin"].get<double>(), 1e-9);
  EXPECT_EQ(a["reward"], "dporm");

  auto ref_free = Spec("kind: eval\nmodel: {path: " + (dpo / "checkpoint") + "}\n" + data +
                       "eval: {reward: ref_free_avg}\n");
  ASSERT_TRUE(RunJob(*ref_free, ev3.path(), q).ok());
  auto c = ReadJson(ev3 / "metrics.json")["eval"]["synth-id:validation"];
  EXPECT_EQ(c["reward"], "ref_free_avg");
  EXPECT_EQ(c["n"], a["n"]);
  EXPECT_NEAR(c["acc_tie_half"].get<double>(),
              (c["accuracy"].get<double>() * c["n"].get<double>() + 0.5 * c["ties"].get<double>()) /
                  c["n"].get<double>(),
              1e-12);
}

TEST(PairwiseMetricsTest, AccuracyTiesAndRewardBenchSections) {
  PairwiseMetrics m;
  m.Add(1.0, 0.0, "alpacaeval-easy");
  m.Add(0.0, 1.0, "alpacaeval-easy");
  m.Add(2.0, 1.0, "mt-bench-easy");
  m.Add(0.5, 0.5, "hep-python");  // a tie: wrong for accuracy, half for acc_tie_half
  auto j = m.ToJson();
  EXPECT_EQ(j["n"], 4);
  EXPECT_DOUBLE_EQ(j["accuracy"].get<double>(), 0.5);
  EXPECT_EQ(j["ties"], 1);
  EXPECT_DOUBLE_EQ(j["acc_tie_half"].get<double>(), 2.5 / 4);
  EXPECT_DOUBLE_EQ(j["mean_margin"].get<double>(), 0.25);
  // Chat = (100 * 0.5 + 28 * 1) / (100 + 28): weights are the subsets' prompt counts.
  EXPECT_DOUBLE_EQ(j["rewardbench_sections"]["chat"].get<double>(), 78.0 / 128.0);
  EXPECT_DOUBLE_EQ(j["rewardbench_sections"]["reasoning"].get<double>(), 0.0);
  EXPECT_FALSE(j["rewardbench_sections"].contains("safety"));
  EXPECT_EQ(j["subsets"]["hep-python"]["ties"], 1);
}

}  // namespace
}  // namespace rmgen
