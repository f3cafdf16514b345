// rmgen-train across real mpirun ranks (ctest -L mpi): 2 ranks reproduce 1 rank, ZeRO-1
// reproduces plain data parallel, checkpoints resume on another number of ranks, and a
// rank that dies, hangs or is told to stop ends the job cleanly.
//
// Tolerances (float reduction order differs between 1 and 2 ranks; Adam turns a
// last-bit gradient difference into a parameter difference of up to ~lr * 1e-2):
//   loss per step:     |a - b| <= 1e-5 * max(1, |a|)
//   final parameters:  max |a - b| <= 5e-5   (6 steps at learning rate 1e-3), and every
//                      tensor moved from the initial weights by at least lr/2 somewhere
//   eval accuracy:     equal
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <thread>

#include "jobspec/outcome.h"
#include "tests/train/train_util.h"
#include "worker/model/config.h"
#include "worker/model/decoder.h"

namespace rmgen::testing {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

struct Outcome {
  int rc = -1;
  std::string output;
  double seconds = 0;
};

std::string Mpirun(int n) {
  return SourcePath("tests/mpi/mpirun.sh") + " " + std::to_string(n) + " ";
}

// Runs a shell command; its output and exit status.
Outcome Sh(const std::string& cmd) {
  Outcome o;
  const auto t0 = Clock::now();
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  char buf[4096];
  while (p && fgets(buf, sizeof(buf), p)) o.output += buf;
  const int st = p ? pclose(p) : -1;
  o.rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  o.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return o;
}

constexpr double kLr = 1e-3;  // WriteSpec's learning rate

class MpiTrainTest : public ::testing::Test {
 protected:
  std::string WriteSpec(const std::string& name, const std::string& kind,
                        const std::string& runtime, int64_t steps = 6,
                        const std::string& extra_train = "") {
    const std::string path = dir_.path() + "/" + name + ".yaml";
    std::ofstream(path) << SynthSpec(kind,
                                     "  eval: [synth-id:validation, synth-prompt-shift]\n"
                                     "  limit: 96\n"
                                     "train: {batch_size: 8, gradient_accumulation: 2, "
                                     "learning_rate: 1.0e-3, max_steps: " +
                                         std::to_string(steps) + extra_train +
                                         "}\n"
                                         "dpo: {beta: 0.1}\n"
                                         "runtime: {threads: 1" +
                                         runtime + "}\n");
    return path;
  }
  Outcome Train(int ranks, const std::string& spec, const std::string& out,
                const std::string& flags = "", const std::string& env = "") {
    const std::string bin = RMGEN_TRAIN_BIN;
    const std::string cmd = env + (ranks > 1 ? Mpirun(ranks) : std::string()) + bin + " --spec " +
                            spec + " --out " + dir_.path() + "/" + out + " --quiet " + flags;
    return Sh(cmd);
  }
  std::string Out(const std::string& name) { return dir_.path() + "/" + name; }

  std::vector<double> Losses(const std::string& out) {
    std::vector<double> l;
    std::ifstream in(Out(out) + "/events.jsonl");
    std::string line;
    while (std::getline(in, line)) l.push_back(nlohmann::json::parse(line)["loss"]);
    return l;
  }
  // The weights `spec`'s runs start from: its seeded random init, built as rmgen-train builds
  // it, by Hugging Face name.
  NamedTensors InitialTensors(const std::string& spec) {
    auto s = Spec(*ReadFile(spec));
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    if (!s.ok()) return {};
    auto cfg = ParseModelConfig(*ReadFile(s->model_config), s->model_config);
    EXPECT_TRUE(cfg.ok()) << cfg.status().ToString();
    if (!cfg.ok()) return {};
    const HeadKind head =
        s->kind == JobKind::kReward ? HeadKind::kReward : HeadKind::kLanguageModel;
    return DecoderLM::RandomInit(*cfg, head, s->init_seed, torch::kFloat32)->named_parameters();
  }

  // Runs a and b of `spec` trained alike: same losses, weights and eval accuracy. And they
  // trained: run a's every weight tensor moved from the initial weights by at least lr/2 (ten
  // times param_tol) somewhere, so two runs that left their weights untouched cannot pass; and
  // nowhere by more than 6 AdamW steps of lr reach (1.12 * lr each in the first steps, whatever
  // the gradients), which checks that the initial weights are the runs' own.
  void ExpectSameRun(const std::string& spec, const std::string& a, const std::string& b,
                     double param_tol = 5e-5) {
    const auto la = Losses(a), lb = Losses(b);
    ASSERT_EQ(la.size(), lb.size());
    for (size_t i = 0; i < la.size(); ++i) {
      EXPECT_NEAR(la[i], lb[i], 1e-5 * std::max(1.0, std::abs(la[i]))) << "step " << i + 1;
    }
    const auto ta = CheckpointTensors(Out(a)), tb = CheckpointTensors(Out(b));
    ASSERT_EQ(ta.size(), tb.size());
    for (size_t i = 0; i < ta.size(); ++i) {
      const double d = (ta[i].second - tb[i].second).abs().max().item<double>();
      EXPECT_LE(d, param_tol) << ta[i].first;
    }
    const auto init = InitialTensors(spec);
    ASSERT_EQ(init.size(), ta.size());
    std::map<std::string, torch::Tensor> start(init.begin(), init.end());
    for (const auto& [name, t] : ta) {
      ASSERT_TRUE(start.count(name)) << name << " is not a parameter of the initial model";
      const double moved = (t - start.at(name)).abs().max().item<double>();
      EXPECT_GE(moved, kLr / 2) << name << " did not move from its initial value";
      EXPECT_LE(moved, 6 * 1.12 * kLr) << name;
    }
    const auto ma = ReadJson(Out(a) + "/metrics.json")["eval"];
    const auto mb = ReadJson(Out(b) + "/metrics.json")["eval"];
    for (const auto& [set, m] : ma.items()) {
      EXPECT_EQ(m["accuracy"], mb[set]["accuracy"]) << set;
      EXPECT_EQ(m["n"], mb[set]["n"]) << set;
    }
  }

  TempDir dir_;
};

TEST_F(MpiTrainTest, TwoRanksReproduceOneRankForRewardAndDpo) {
  for (const std::string kind : {"reward", "dpo"}) {
    SCOPED_TRACE(kind);
    const std::string spec = WriteSpec(kind, kind, "");
    auto one = Train(1, spec, kind + "-1");
    ASSERT_EQ(one.rc, 0) << one.output;
    auto two = Train(2, spec, kind + "-2");
    ASSERT_EQ(two.rc, 0) << two.output;
    ExpectSameRun(spec, kind + "-1", kind + "-2");
    EXPECT_EQ(ReadJson(Out(kind + "-2") + "/metrics.json")["ranks"], 2);
    // Only rank 0 writes: one line per step.
    EXPECT_EQ(Losses(kind + "-2").size(), 6u);
  }
}

// Sampling is keyed by (seed, prompt, sample): 2 ranks (each its share of the prompts, in
// other batches) write the same generations as 1 rank; the annotation of them too.
TEST_F(MpiTrainTest, GenerateAndAnnotateOnTwoRanksEqualOneRank) {
  const std::string d = SynthDir();
  const std::string gen = dir_.path() + "/gen.yaml";
  std::ofstream(gen) << "kind: generate\nmodel: {config: "
                     << SourcePath("configs/models/tiny-synth.json") << ", init_seed: 5}\n"
                     << "tokenizer: " << d << "/tokenizer.model\ntemplate: zephyr\n"
                     << "data: {catalog: " << d << "/datasets.yaml, prompts: "
                     << "synth-id:validation, limit: 9}\n"
                     << "generate: {samples: 3, max_new_tokens: 10, temperature: 1.2, top_p: 0.95, "
                        "seed: 7, batch_size: 4}\nruntime: {threads: 1}\n";
  auto one = Train(1, gen, "gen1");
  ASSERT_EQ(one.rc, 0) << one.output;
  auto two = Train(2, gen, "gen2");
  ASSERT_EQ(two.rc, 0) << two.output;
  const auto a = *ReadFile(Out("gen1") + "/generations.jsonl");
  EXPECT_EQ(a, *ReadFile(Out("gen2") + "/generations.jsonl"));
  EXPECT_EQ(std::count(a.begin(), a.end(), '\n'), 9);
  EXPECT_EQ(ReadJson(Out("gen2") + "/metrics.json")["ranks"], 2);
  for (const std::string& g : {std::string("gen1"), std::string("gen2")}) {
    const std::string ann = dir_.path() + "/ann-" + g + ".yaml";
    std::ofstream(ann) << "kind: annotate\nmodel: {config: "
                       << SourcePath("configs/models/tiny-synth.json") << ", init_seed: 8}\n"
                       << "tokenizer: " << d << "/tokenizer.model\ntemplate: zephyr\n"
                       << "data: {generations: " << Out(g) << "/generations.jsonl}\n"
                       << "runtime: {threads: 1}\n";
    auto r = Train(g == "gen1" ? 1 : 2, ann, "ann-" + g);
    ASSERT_EQ(r.rc, 0) << r.output;
  }
  const auto p1 = ReadJson(Out("ann-gen1") + "/metrics.json")["annotate"];
  const auto p2 = ReadJson(Out("ann-gen2") + "/metrics.json")["annotate"];
  EXPECT_EQ(p1["pairs"], p2["pairs"]);
  std::ifstream f1(Out("ann-gen1") + "/pairs.jsonl"), f2(Out("ann-gen2") + "/pairs.jsonl");
  std::string l1, l2;
  int n = 0;
  while (std::getline(f1, l1) && std::getline(f2, l2)) {
    const auto j1 = nlohmann::json::parse(l1), j2 = nlohmann::json::parse(l2);
    EXPECT_EQ(j1["chosen"], j2["chosen"]);
    EXPECT_EQ(j1["rejected"], j2["rejected"]);
    EXPECT_NEAR(j1["score_chosen"].get<double>(), j2["score_chosen"].get<double>(), 1e-5);
    ++n;
  }
  EXPECT_EQ(n, 9);
}

TEST_F(MpiTrainTest, Zero1EqualsDataParallelAndResumesOnAnotherRankCount) {
  const std::string plain = WriteSpec("plain", "reward", ", bucket_mb: 0.05");
  const std::string zero = WriteSpec("zero", "reward", ", bucket_mb: 0.05, zero1: true");
  ASSERT_EQ(Train(2, plain, "dp").rc, 0);
  auto z = Train(2, zero, "z");
  ASSERT_EQ(z.rc, 0) << z.output;
  ExpectSameRun(plain, "dp", "z", 1e-6);
  EXPECT_TRUE(FileExists(Out("z") + "/checkpoint/optimizer.rank-00-of-02.safetensors"));
  EXPECT_TRUE(FileExists(Out("z") + "/checkpoint/optimizer.rank-01-of-02.safetensors"));

  // 2 ranks (ZeRO-1) stop after 3 steps, 1 rank finishes; and 1 rank -> 2 ranks ZeRO-1.
  ASSERT_EQ(Train(1, plain, "ref").rc, 0);
  auto stop = Train(2, zero, "a", "--stop-after-steps 3");
  EXPECT_NE(stop.rc, 0);
  EXPECT_EQ(ReadJson(Out("a") + "/checkpoint/trainer_state.json")["step"], 3);
  auto resume = Train(1, zero, "a");
  ASSERT_EQ(resume.rc, 0) << resume.output;
  ExpectSameRun(plain, "ref", "a");

  auto stop1 = Train(1, plain, "b", "--stop-after-steps 3");
  EXPECT_EQ(stop1.rc, 3) << stop1.output;
  EXPECT_TRUE(FileExists(Out("b") + "/checkpoint/optimizer.safetensors"));
  auto resume2 = Train(2, zero, "b");
  ASSERT_EQ(resume2.rc, 0) << resume2.output;
  ExpectSameRun(plain, "ref", "b");
}

TEST_F(MpiTrainTest, AKilledRankFailsTheJobQuicklyAndItResumes) {
  const std::string spec = WriteSpec("f", "reward", ", checkpoint_every: 2, comm_timeout_s: 20");
  ASSERT_EQ(Train(1, spec, "ref").rc, 0);
  auto killed = Train(2, spec, "k", "--fault rank=1,phase=step,step=4,action=kill");
  EXPECT_NE(killed.rc, 0);
  EXPECT_LT(killed.seconds, 60);  // bounded: mpirun notices the death, no collective timeout
  // mpirun's own report names the rank that died.
  EXPECT_NE(killed.output.find("process rank 1"), std::string::npos) << killed.output;
  EXPECT_EQ(ReadJson(Out("k") + "/checkpoint/trainer_state.json")["step"], 2);
  auto resume = Train(2, spec, "k");
  ASSERT_EQ(resume.rc, 0) << resume.output;
  ExpectSameRun(spec, "ref", "k");
}

TEST_F(MpiTrainTest, AHungRankIsNamedAndTheJobEndsWithinTheTimeout) {
  const std::string spec = WriteSpec("h", "reward", ", checkpoint_every: 2, comm_timeout_s: 3");
  auto hung = Train(2, spec, "h", "--fault rank=1,phase=step,step=4,action=hang");
  EXPECT_NE(hung.rc, 0);
  EXPECT_LT(hung.seconds, 3 + 30);
  EXPECT_NE(hung.output.find("did not complete within 3"), std::string::npos) << hung.output;
  EXPECT_NE(hung.output.find("rank 1 (pid"), std::string::npos) << hung.output;
  EXPECT_NE(hung.output.find("is behind: last seen in step 4"), std::string::npos) << hung.output;
  EXPECT_EQ(ReadJson(Out("h") + "/checkpoint/trainer_state.json")["step"], 2);
}

// An error on rank 1 in any phase ends both ranks at once, though rank 0 waits in a
// collective with the default 600 s timeout: rank 1 records its failure (cause, phase,
// message) and aborts the job; the exit status is the failure's class.
TEST_F(MpiTrainTest, AnErrorOnOneRankInAnyPhaseEndsEveryRankAtOnceAndSaysWhy) {
  const std::string spec = WriteSpec("p", "dpo", ", checkpoint_every: 2", 3);
  struct Case {
    const char* fault;
    const char* phase;
    const char* cause;
    int rc;
  };
  const Case cases[] = {
      {"rank=1,phase=load,action=error", "load", "error", 1},
      {"rank=1,phase=broadcast,action=invalid", "broadcast", "bad_input", 2},
      {"rank=1,phase=step,step=2,action=throw", "step", "error", 1},
      {"rank=1,phase=checkpoint,step=2,action=error", "checkpoint", "error", 1},
      {"rank=1,phase=eval,action=error", "eval", "error", 1},
      {"rank=1,phase=reference,action=invalid", "reference", "bad_input", 2},
  };
  int k = 0;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.fault);
    const std::string out = "p" + std::to_string(k++);
    const Outcome run = Train(2, spec, out, std::string("--fault ") + c.fault);
    EXPECT_EQ(run.rc, c.rc) << run.output;
    EXPECT_LT(run.seconds, 15) << run.output;
    EXPECT_NE(run.output.find("rank 1"), std::string::npos) << run.output;
    EXPECT_NE(run.output.find("injected fault"), std::string::npos) << run.output;
    const auto f = RankFailure::FromJson(ReadJson(Out(out) + "/ranks/failure-1.json"));
    ASSERT_TRUE(f.ok()) << f.status().ToString();
    EXPECT_EQ(f->rank, 1);
    EXPECT_EQ(f->phase, c.phase);
    EXPECT_EQ(CauseName(f->cause), std::string(c.cause));
    EXPECT_NE(f->message.find("injected fault"), std::string::npos) << f->message;
    // The agent's reading of it: the first failure, rank 1's; rank 0 left none.
    const auto first = FirstRankFailure(Out(out), 0);
    ASSERT_TRUE(first.has_value());
    EXPECT_EQ(first->rank, 1);
    EXPECT_FALSE(FileExists(Out(out) + "/ranks/failure-0.json"));
    EXPECT_FALSE(FileExists(Out(out) + "/metrics.json"));
  }
}

TEST_F(MpiTrainTest, SigtermToOneRankStopsEveryRankAfterTheStepWithACheckpoint) {
  const std::string spec = WriteSpec("s", "reward", "", 100000);
  Outcome run;
  std::thread t([&] { run = Train(2, spec, "s"); });
  // Wait until rank 1 is training, then signal it alone.
  const std::string progress = Out("s") + "/ranks/rank-1.json";
  int pid = 0;
  for (int i = 0; i < 600 && pid == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    auto text = ReadFile(progress);
    if (!text.ok()) continue;
    auto j = nlohmann::json::parse(*text, nullptr, false);
    if (j.is_object() && j.value("step", 0) >= 2) pid = j.value("pid", 0);
  }
  ASSERT_GT(pid, 0);
  kill(pid, SIGTERM);
  t.join();
  EXPECT_NE(run.rc, 0);
  // Rank 0 got no signal: it stopped because the ranks agreed to.
  const auto st = ReadJson(Out("s") + "/checkpoint/trainer_state.json");
  EXPECT_GE(st["step"].get<int64_t>(), 3);
  EXPECT_LT(st["step"].get<int64_t>(), 100000);
  EXPECT_TRUE(FileExists(Out("s") + "/checkpoint/optimizer.safetensors"));
  EXPECT_NE(run.output.find("stopped after step"), std::string::npos) << run.output;
  EXPECT_EQ(run.output.find("aborting"), std::string::npos) << run.output;
}

}  // namespace
}  // namespace rmgen::testing
