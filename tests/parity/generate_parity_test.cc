// Greedy generation against transformers' `generate` (4.46.3, its KV cache, fp32, eager
// attention) on the tiny golden checkpoints: tests/parity/golden/decode.json, written by
// tests/parity/generate_decode.py. Token-for-token equality, with all prompts of a family
// in one padded batch and one at a time. The golden file records each step's gap between
// the two best logits (smallest 9e-4 here); rmgen's logits match transformers' to ~1e-6
// (model_parity_test), so no step is a near tie that float order could flip.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "common/file.h"
#include "tests/test_util.h"
#include "worker/model/checkpoint.h"
#include "worker/model/generate.h"

namespace rmgen {
namespace {

class GenerateParityTest : public ::testing::TestWithParam<Family> {
 protected:
  void SetUp() override { torch::set_num_threads(1); }
};

TEST_P(GenerateParityTest, GreedyContinuationsEqualTransformersGenerate) {
  const std::string family = FamilyModelType(GetParam());
  auto text = ReadFile(testing::SourcePath("tests/parity/golden/decode.json"));
  ASSERT_TRUE(text.ok()) << text.status().ToString();
  const auto golden = nlohmann::json::parse(*text);
  auto loaded = LoadModel(testing::SourcePath("tests/parity/golden/models/" + family + "-lm"), {});
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  std::vector<GenerationRequest> reqs;
  std::vector<std::vector<int64_t>> expect;
  for (const auto& row : golden["families"][family]) {
    reqs.push_back({row["prompt"].get<std::vector<int64_t>>(), reqs.size(), 0});
    expect.push_back(row["continuation"].get<std::vector<int64_t>>());
  }
  ASSERT_GE(reqs.size(), 3u);
  SamplingOptions o;
  o.greedy = true;
  o.max_new_tokens = golden["max_new_tokens"].get<int64_t>();
  o.stop_ids = {golden["eos_token_id"].get<int64_t>()};
  int stopped = 0;
  for (int64_t bs : {int64_t(reqs.size()), int64_t(1)}) {
    o.batch_size = bs;
    auto gen = Generate(*loaded->model, reqs, o);
    ASSERT_TRUE(gen.ok()) << gen.status().ToString();
    for (size_t i = 0; i < reqs.size(); ++i) {
      EXPECT_EQ((*gen)[i].tokens, expect[i]) << family << " prompt " << i << " batch " << bs;
      const bool at_eos = !expect[i].empty() && expect[i].back() == o.stop_ids[0];
      EXPECT_EQ((*gen)[i].finish, at_eos ? FinishReason::kStop : FinishReason::kLength);
      stopped += at_eos;
    }
  }
  RecordProperty("stopped_at_eos", stopped);
}

INSTANTIATE_TEST_SUITE_P(Families, GenerateParityTest, ::testing::ValuesIn(kAllFamilies),
                         [](const auto& info) { return std::string(FamilyModelType(info.param)); });

}  // namespace
}  // namespace rmgen
