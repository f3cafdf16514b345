// The demo check of the training issue: on the synthetic shift suite, a tiny model trained
// from scratch on CPU reaches ID validation accuracy >= 0.9 as an EXRM and as a DPO policy
// (DPORM, after SFT), and reports accuracy on the prompt-shift and response-shift sets.
// Accuracy thresholds decide; time does not (it is printed).
#include <gtest/gtest.h>

#include <chrono>

#include "tests/train/train_util.h"

namespace rmgen {
namespace {

using testing::ReadJson;
using testing::Spec;
using testing::SynthSpec;
using testing::TempDir;

const std::string kEval =
    "  eval: [synth-id:validation, synth-prompt-shift, synth-response-shift]\n";

void Report(const char* what, const nlohmann::json& eval) {
  std::printf("%s: ID %.3f  prompt-shift %.3f  response-shift %.3f\n", what,
              eval["synth-id:validation"]["accuracy"].get<double>(),
              eval["synth-prompt-shift"]["accuracy"].get<double>(),
              eval["synth-response-shift"]["accuracy"].get<double>());
}

TEST(DemoCheckTest, ExrmAndDpoLearnTheSyntheticTask) {
  // As in the study, both reward models start from the same SFT model: an SFT run on the
  // chosen responses, then EXRM (fresh score head) and DPO (the SFT model as reference).
  const auto t0 = std::chrono::steady_clock::now();
  RunOptions q;
  q.progress = false;
  TempDir root;
  const std::string rt = "runtime: {threads: 2, log_every: 50}\n";
  auto sft = Spec(SynthSpec("sft", rt + "train: {epochs: 2, batch_size: 16, learning_rate: 0.001, "
                                        "warmup_ratio: 0.05}\n"));
  ASSERT_TRUE(sft.ok()) << sft.status().ToString();
  ASSERT_TRUE(RunJob(*sft, root / "sft", q).ok());

  const std::string d = testing::SynthDir();
  auto from_sft = [&](const std::string& kind, const std::string& train) {
    return Spec("kind: " + kind + "\nmodel: {path: " + (root / "sft/checkpoint") +
                "}\ntemplate: zephyr\ndata:\n  catalog: " + d +
                "/datasets.yaml\n  train: synth-id:train\n" + kEval + rt + train);
  };
  auto exrm = from_sft("reward",
                       "train: {epochs: 3, batch_size: 16, learning_rate: 0.0005, "
                       "warmup_ratio: 0.05}\n");
  ASSERT_TRUE(exrm.ok()) << exrm.status().ToString();
  ASSERT_TRUE(RunJob(*exrm, root / "exrm", q).ok());
  auto em = ReadJson(root / "exrm/metrics.json")["eval"];
  Report("EXRM ", em);
  EXPECT_GE(em["synth-id:validation"]["accuracy"].get<double>(), 0.9);
  EXPECT_EQ(em["synth-id:validation"]["reward"], "exrm");

  auto dpo = from_sft("dpo",
                      "train: {epochs: 2, batch_size: 16, learning_rate: 0.0005, "
                      "warmup_ratio: 0.05}\ndpo: {beta: 0.1}\n");
  ASSERT_TRUE(dpo.ok()) << dpo.status().ToString();
  ASSERT_TRUE(RunJob(*dpo, root / "dpo", q).ok());
  auto dm = ReadJson(root / "dpo/metrics.json")["eval"];
  Report("DPORM", dm);
  EXPECT_GE(dm["synth-id:validation"]["accuracy"].get<double>(), 0.9);
  EXPECT_EQ(dm["synth-id:validation"]["reward"], "dporm");
  for (const auto* m : {&em, &dm}) {
    for (const char* set : {"synth-prompt-shift", "synth-response-shift"}) {
      EXPECT_EQ((*m)[set]["n"], 300) << set;
    }
  }
  std::printf("demo check wall time: %.1f s\n",
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
}

}  // namespace
}  // namespace rmgen
