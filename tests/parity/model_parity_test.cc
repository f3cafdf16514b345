// Parity with Hugging Face transformers (4.46.3, eager attention) on the tiny checkpoints
// and golden outputs written by tests/parity/generate.py.
//
// Tolerances (fp32 compute on CPU; both sides run the same math in a different order):
//   logits, max |diff| over real (non-pad) positions  <= 1e-4
//   summed response log-probs                          <= 5e-4 (a sum of ~15 terms)
//   reward scores                                      <= 1e-4
#include <gtest/gtest.h>

#include "tests/test_util.h"
#include "worker/model/checkpoint.h"

namespace rmgen {
namespace {

using testing::SourcePath;
using testing::TempDir;

constexpr double kLogitTol = 1e-4;
constexpr double kLogpTol = 5e-4;
constexpr double kScoreTol = 1e-4;

struct Golden {
  torch::Tensor ids, mask, resp, logits, logps, scores;
};

Golden LoadGolden(const std::string& family) {
  auto f = SafetensorsFile::Open(SourcePath("tests/parity/golden/" + family + ".safetensors"));
  EXPECT_TRUE(f.ok()) << f.status().ToString();
  auto get = [&](const char* n, torch::Dtype d) { return f->Load(n, d).value(); };
  return {get("input_ids", torch::kInt64),     get("attention_mask", torch::kInt64),
          get("response_mask", torch::kInt64), get("logits", torch::kFloat32),
          get("logps", torch::kFloat32),       get("scores", torch::kFloat32)};
}

std::string ModelDir(const std::string& family, const char* head) {
  return SourcePath("tests/parity/golden/models/" + family + "-" + head);
}

double MaxDiffOnRealTokens(const torch::Tensor& a, const torch::Tensor& b,
                           const torch::Tensor& mask) {
  auto m = mask.to(torch::kBool);
  return (a.index({m}) - b.index({m})).abs().max().item<double>();
}

class ModelParityTest : public ::testing::TestWithParam<Family> {
 protected:
  void SetUp() override { torch::set_num_threads(1); }
};

TEST_P(ModelParityTest, LogitsAndLogProbsMatchTransformers) {
  const std::string family = FamilyModelType(GetParam());
  const Golden g = LoadGolden(family);
  auto loaded = LoadModel(ModelDir(family, "lm"), {});
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  torch::NoGradGuard no_grad;
  auto logits = loaded->model->Logits(loaded->model->Hidden(g.ids, g.mask));
  const double d = MaxDiffOnRealTokens(logits, g.logits, g.mask);
  EXPECT_LE(d, kLogitTol) << family << " logits";
  auto logps = loaded->model->SequenceLogProbs(g.ids, g.mask, g.resp);
  EXPECT_LE((logps - g.logps).abs().max().item<double>(), kLogpTol) << family << " logps";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.3g", d);
  RecordProperty("max_abs_logit_diff", buf);
}

TEST_P(ModelParityTest, RewardScoresMatchTransformers) {
  const std::string family = FamilyModelType(GetParam());
  const Golden g = LoadGolden(family);
  LoadOptions lo;
  lo.head = HeadKind::kReward;
  auto loaded = LoadModel(ModelDir(family, "rm"), lo);
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_TRUE(loaded->freshly_initialized.empty());
  torch::NoGradGuard no_grad;
  auto scores = loaded->model->Scores(loaded->model->Hidden(g.ids, g.mask), g.mask);
  EXPECT_LE((scores - g.scores).abs().max().item<double>(), kScoreTol) << family;
}

TEST_P(ModelParityTest, ResavedCheckpointIsBitIdenticalAndStillMatches) {
  const std::string family = FamilyModelType(GetParam());
  auto loaded = LoadModel(ModelDir(family, "lm"), {});
  ASSERT_TRUE(loaded.ok());
  TempDir dir;
  ASSERT_TRUE(SaveModel(*loaded->model, dir.path(), {}).ok());
  auto again = LoadModel(dir.path(), {});
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  for (size_t i = 0; i < loaded->model->named_parameters().size(); ++i) {
    EXPECT_TRUE(torch::equal(loaded->model->named_parameters()[i].second,
                             again->model->named_parameters()[i].second));
  }
}

INSTANTIATE_TEST_SUITE_P(AllFamilies, ModelParityTest, ::testing::ValuesIn(kAllFamilies),
                         [](const auto& info) { return std::string(FamilyModelType(info.param)); });

TEST(ModelParityTest, OneGoldenCheckpointIsSharded) {
  EXPECT_TRUE(FileExists(ModelDir("mistral", "lm") + "/model.safetensors.index.json"));
  EXPECT_FALSE(FileExists(ModelDir("mistral", "lm") + "/model.safetensors"));
}

}  // namespace
}  // namespace rmgen
