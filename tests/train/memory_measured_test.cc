// The memory plan (coordinator/memory_plan.h) against what rmgen-train really uses: the
// real binary trains a model whose tensors dwarf the process baseline (45M parameters, a
// 32k vocabulary) for one step on CPU, and its peak RSS (events.jsonl peak_rss_mb) must be
// within 25% of the estimate, for EXRM and DPO, with and without gradient checkpointing.
// The data are pairs whose sequences all reach max_length with a one-word prompt: the
// shapes the estimate plans for (its worst case), so the two measure the same thing.
// Memory, not time, is measured: nothing here depends on the machine's speed.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>

#include "common/file.h"
#include "coordinator/memory_plan.h"
#include "tests/test_util.h"
#include "worker/data/synth.h"

namespace rmgen::testing {
namespace {

using nlohmann::json;

// Llama-shaped; the synthetic tokenizer's ids (< 600) are a subset of its vocabulary.
constexpr const char* kModel = R"({
  "model_type": "llama", "architectures": ["LlamaForCausalLM"],
  "vocab_size": 32000, "hidden_size": 512, "intermediate_size": 1536,
  "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 4,
  "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "max_position_embeddings": 512,
  "hidden_act": "silu", "tie_word_embeddings": false,
  "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3
})";

constexpr double kTolerance = 0.25;

class MemoryMeasuredTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    SynthOptions o;
    o.seed = 3;
    o.train = 200;
    o.validation = 50;
    o.shifted = 50;
    ASSERT_TRUE(WriteSyntheticSuite(*dir_ / "synth", o).ok());
    std::ofstream(*dir_ / "model.json") << kModel;
    // A one-word prompt and two long responses that differ from their first word: every
    // sequence is truncated to max_length, nearly all of it response.
    const std::vector<std::string> words = {
        "lion", "tiger", "apple", "pear", "red",   "blue",   "saw",  "rain",  "drum",  "ball",
        "moon", "star",  "zebra", "plum", "green", "hammer", "snow", "piano", "chess", "comet"};
    std::mt19937 rng(7);
    std::ofstream pairs(*dir_ / "pairs.jsonl");
    for (int i = 0; i < 48; ++i) {
      std::string chosen = "yes", rejected = "no";
      for (int k = 0; k < 120; ++k) {
        chosen += " " + words[rng() % words.size()];
        rejected += " " + words[rng() % words.size()];
      }
      pairs << json({{"prompt", "q" + std::to_string(i)},
                     {"chosen", chosen},
                     {"rejected", rejected}})
                   .dump()
            << "\n";
    }
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }

  struct Measured {
    double peak_rss = 0;  // bytes
    coord::MemoryEstimate estimate;
  };

  // Runs one step of `kind` with `train_extra` in its train section; the measured peak and
  // the estimate of the spec rmgen-train resolved.
  Measured Run(const std::string& name, const std::string& kind, const std::string& train_extra) {
    const std::string out = *dir_ / name, spec = *dir_ / (name + ".yaml");
    std::ofstream(spec) << "kind: " << kind << "\n"
                        << "model: {config: " << (*dir_ / "model.json") << "}\n"
                        << "tokenizer: " << (*dir_ / "synth/tokenizer.model") << "\n"
                        << "template: none\n"
                        << "data:\n"
                        << "  train: {format: pairs, path: " << (*dir_ / "pairs.jsonl") << "}\n"
                        << "  max_length: 64\n  max_prompt_length: 16\n  limit: 16\n"
                        << "train: {batch_size: 8, max_steps: 1, learning_rate: 1.0e-5"
                        << train_extra << "}\n"
                        << "dpo: {beta: 0.1}\n"
                        << "runtime: {threads: 2}\n";
    const std::string cmd =
        std::string(RMGEN_TRAIN_BIN) + " --spec " + spec + " --out " + out + " --quiet 2>&1";
    std::string output;
    FILE* p = popen(cmd.c_str(), "r");
    char buf[4096];
    while (p && fgets(buf, sizeof(buf), p)) output += buf;
    const int st = p ? pclose(p) : -1;
    Measured m;
    EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << output;
    std::ifstream events(out + "/events.jsonl");
    std::string line, last;
    while (std::getline(events, line)) last = line;
    const json e = json::parse(last.empty() ? "{}" : last, nullptr, false);
    EXPECT_TRUE(e.contains("peak_rss_mb")) << last << output;
    m.peak_rss = e.value("peak_rss_mb", 0.0) * (1 << 20);
    auto resolved = ReadFile(out + "/spec.resolved.json");
    EXPECT_TRUE(resolved.ok());
    auto cfg = ParseModelConfig(kModel, "model.json");
    EXPECT_TRUE(cfg.ok());
    if (resolved.ok() && cfg.ok()) {
      m.estimate = coord::EstimateJobMemory(*cfg, json::parse(*resolved), 1);
    }
    std::printf("[memory] %-14s measured peak RSS %7.1f MiB, estimate %7.1f MiB (%+.1f%%): %s\n",
                name.c_str(), m.peak_rss / (1 << 20), m.estimate.total / double(1 << 20),
                100.0 * (m.estimate.total - m.peak_rss) / std::max(m.peak_rss, 1.0),
                m.estimate.Summary().c_str());
    return m;
  }

  static void ExpectClose(const Measured& m) {
    ASSERT_GT(m.peak_rss, 0);
    EXPECT_LE(std::abs(m.estimate.total - m.peak_rss), kTolerance * m.peak_rss)
        << "estimate " << m.estimate.total / double(1 << 20) << " MiB, measured "
        << m.peak_rss / double(1 << 20) << " MiB: " << m.estimate.Summary() << "\n"
        << m.estimate.ToJson().dump(2);
  }

  static TempDir* dir_;
};

TempDir* MemoryMeasuredTest::dir_ = nullptr;

TEST_F(MemoryMeasuredTest, Reward) { ExpectClose(Run("reward", "reward", "")); }

TEST_F(MemoryMeasuredTest, RewardCheckpointed) {
  ExpectClose(Run("reward-ckpt", "reward", ", gradient_checkpointing: true"));
}

TEST_F(MemoryMeasuredTest, Dpo) { ExpectClose(Run("dpo", "dpo", "")); }

TEST_F(MemoryMeasuredTest, DpoCheckpointed) {
  ExpectClose(Run("dpo-ckpt", "dpo", ", gradient_checkpointing: true"));
}

}  // namespace
}  // namespace rmgen::testing
