// Batch layouts: the shared-prefix row (rmgen's default) computes exactly what TRL's two
// padded rows per pair compute, for every family, including pairs whose common prefix runs
// into the responses, pairs where one side is a prefix of the other, identical sides, and
// sides with nothing in common.
#include "worker/train/objectives.h"

#include <gtest/gtest.h>

#include "tests/tiny_model.h"

namespace rmgen {
namespace {

// Vocabulary 50 (the pairs below use ids up to 45); Mistral's window is shorter than the
// sequences.
ModelConfig Config(Family f) {
  return testing::TinyConfig(f, f == Family::kMistral ? 4 : 0, /*vocab=*/50);
}

TokenizedPair Pair(std::vector<int32_t> chosen, std::vector<int32_t> rejected, int32_t cp,
                   int32_t rp) {
  TokenizedPair p;
  p.chosen = std::move(chosen);
  p.rejected = std::move(rejected);
  p.chosen_prompt_len = cp;
  p.rejected_prompt_len = rp;
  return p;
}

std::vector<TokenizedPair> EdgePairs() {
  return {
      // A prompt, then responses that share their first token.
      Pair({1, 7, 8, 9, 10, 11, 12, 2}, {1, 7, 8, 9, 10, 13, 14, 15, 16, 2}, 4, 4),
      // Identical sides: everything shared, both sides end on the same cell.
      Pair({1, 20, 21, 22, 2}, {1, 20, 21, 22, 2}, 2, 2),
      // The rejected side is a prefix of the chosen one.
      Pair({1, 30, 31, 32, 33, 34, 2}, {1, 30, 31, 32}, 2, 2),
      // Nothing in common (no BOS), and different prompt lengths.
      Pair({5, 6, 7, 8, 9}, {40, 41, 42}, 3, 1),
      // A long pair: the batch's other rows are padded.
      Pair({1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 2}, {1, 3, 4, 5, 6, 44, 45, 2}, 5, 5),
  };
}

// Values and parameter gradients of `loss_of` under both layouts.
template <typename LossFn>
void ExpectLayoutsAgree(DecoderLM& m, const std::vector<TokenizedPair>& pairs, LossFn loss_of,
                        const std::string& what) {
  const std::vector<int64_t> idx = {0, 1, 2, 3, 4};
  std::vector<torch::Tensor> values, grads[2];
  int i = 0;
  for (PairLayout layout : {PairLayout::kShared, PairLayout::kSeparate}) {
    for (auto& p : m.parameters()) p.mutable_grad() = torch::Tensor();
    const PairBatch b = Collate(pairs, idx, /*pad_id=*/2, torch::kCPU, layout);
    auto v = loss_of(b);  // (2B)
    (v * torch::linspace(0.5, 1.5, v.size(0))).sum().backward();
    values.push_back(v.detach());
    for (auto& p : m.parameters()) grads[i].push_back(p.grad().clone());
    ++i;
  }
  EXPECT_TRUE(torch::allclose(values[0], values[1], 1e-5, 1e-5)) << what << "\n"
                                                                 << values[0] << "\n"
                                                                 << values[1];
  for (size_t k = 0; k < grads[0].size(); ++k) {
    EXPECT_TRUE(torch::allclose(grads[0][k], grads[1][k], 1e-4, 1e-6))
        << what << " gradient of " << m.named_parameters()[k].first << " max diff "
        << (grads[0][k] - grads[1][k]).abs().max().item<float>();
  }
}

TEST(ObjectivesTest, SharedPrefixRowEqualsTwoRowsPerPair) {
  torch::manual_seed(0);
  const auto pairs = EdgePairs();
  for (Family f : kAllFamilies) {
    auto rm = DecoderLM::RandomInit(Config(f), HeadKind::kReward, 3, torch::kFloat32);
    rm->SetRequiresGrad(true);
    ExpectLayoutsAgree(
        *rm, pairs, [&](const PairBatch& b) { return rm->ScoresAt(rm->Hidden(b.layout), b.last); },
        std::string("scores ") + FamilyModelType(f));
    auto lm = DecoderLM::RandomInit(Config(f), HeadKind::kLanguageModel, 4, torch::kFloat32);
    lm->SetRequiresGrad(true);
    ExpectLayoutsAgree(
        *lm, pairs,
        [&](const PairBatch& b) {
          return lm->SideLogProbs(lm->Hidden(b.layout), b.from, b.targets, b.side, b.sides);
        },
        std::string("log-probs ") + FamilyModelType(f));
    // With gradient checkpointing, the shared row still gives the same gradients.
    lm->SetGradientCheckpointing(true);
    ExpectLayoutsAgree(
        *lm, pairs,
        [&](const PairBatch& b) {
          return lm->SideLogProbs(lm->Hidden(b.layout), b.from, b.targets, b.side, b.sides);
        },
        std::string("checkpointed log-probs ") + FamilyModelType(f));
  }
}

TEST(ObjectivesTest, SharedRowsComputeEachCommonPrefixOnce) {
  const auto pairs = EdgePairs();
  const std::vector<int64_t> idx = {0, 1, 2, 3, 4};
  const PairBatch shared = Collate(pairs, idx, 2, torch::kCPU, PairLayout::kShared);
  const PairBatch separate = Collate(pairs, idx, 2, torch::kCPU, PairLayout::kSeparate);
  // Common prefixes: 5, 5 (identical), 4 (a prefix), 0, 5.
  const int64_t total = 8 + 10 + 5 + 5 + 7 + 4 + 5 + 3 + 14 + 8;
  EXPECT_EQ(shared.tokens, total);
  EXPECT_EQ(separate.tokens, total);
  EXPECT_EQ(separate.cells, total);
  EXPECT_EQ(shared.cells, total - (5 + 5 + 4 + 0 + 5));
  EXPECT_EQ(shared.layout.ids.size(0), 5);
  EXPECT_EQ(separate.layout.ids.size(0), 10);
  EXPECT_EQ(shared.layout.ids.size(1), 14 + 8 - 5);  // the longest row: pair 4
  // Response tokens per side (targets after the prompt, never position 0), the same in both.
  EXPECT_TRUE(torch::equal(shared.response_tokens, separate.response_tokens));
  EXPECT_EQ(shared.response_tokens[0].item<int64_t>(), 4);      // 8 tokens, prompt 4
  EXPECT_EQ(shared.response_tokens[5 + 3].item<int64_t>(), 2);  // 3 tokens, prompt 1
  // Identical sides end on the same cell; a prefix side ends inside the shared prefix.
  EXPECT_EQ(shared.last[1].item<int64_t>(), shared.last[5 + 1].item<int64_t>());
  const int64_t T = shared.layout.ids.size(1);
  EXPECT_EQ(shared.last[5 + 2].item<int64_t>(), 2 * T + 3);
  EXPECT_EQ(shared.layout.segments[2][3].item<int64_t>(), 0);
  // Padding is segment -1 and filled with the pad id.
  EXPECT_EQ(shared.layout.segments[1][T - 1].item<int64_t>(), -1);
  EXPECT_EQ(shared.layout.ids[1][T - 1].item<int64_t>(), 2);
  // Chosen only: the chosen sides of the separate layout.
  const PairBatch chosen = Collate(pairs, idx, 2, torch::kCPU, PairLayout::kChosenOnly);
  EXPECT_EQ(chosen.sides, 5);
  EXPECT_TRUE(torch::equal(chosen.layout.ids, separate.layout.ids.slice(0, 0, 5).slice(1, 0, 14)));
}

TEST(ObjectivesTest, AutoPicksTheCheaperLayout) {
  const ModelConfig c = Config(Family::kLlama);
  std::vector<int32_t> prompt;
  for (int t = 3; t < 33; ++t) prompt.push_back(t);
  auto with = [&](std::vector<int32_t> tail) {
    auto s = prompt;
    s.insert(s.end(), tail.begin(), tail.end());
    return s;
  };
  // A long shared prompt and short responses: one row per pair computes far fewer tokens.
  const std::vector<TokenizedPair> long_prompt = {Pair(with({40, 41, 2}), with({42, 2}), 30, 30)};
  // Nothing in common: the same tokens either way, in one row twice as long.
  const std::vector<TokenizedPair> unrelated = {
      Pair({5, 6, 7, 8, 9, 10}, {11, 12, 13, 14, 15, 16}, 2, 2)};
  const std::vector<TokenizedPair> identical = {Pair(prompt, prompt, 0, 0)};
  EXPECT_EQ(Collate(long_prompt, {0}, 2, torch::kCPU, PairLayout::kAuto, &c).kind,
            PairLayout::kShared);
  EXPECT_EQ(Collate(unrelated, {0}, 2, torch::kCPU, PairLayout::kAuto, &c).kind,
            PairLayout::kSeparate);
  // Identical sequences: everything shared.
  EXPECT_EQ(Collate(identical, {0}, 2, torch::kCPU, PairLayout::kAuto, &c).kind,
            PairLayout::kShared);
  EXPECT_LT(LayoutFlops(32, 1, 32, c), LayoutFlops(64, 2, 32, c));
  EXPECT_GT(LayoutFlops(64, 1, 64, c), LayoutFlops(64, 2, 32, c));

  // The bench model's shape (configs/models/bench-synth-small.json) on the layout bench's
  // shapes, where shared rows were measured slower (long responses after a 16-token prefix:
  // 0.82x to 0.91x) and faster (a 100-token prefix before two 100-token responses: 1.57x).
  ModelConfig m = c;
  m.hidden_size = 256;
  m.intermediate_size = 688;
  m.num_layers = 4;
  m.num_heads = 8;
  m.num_kv_heads = 4;
  m.head_dim = 32;
  auto pair = [](int shared, int rest) {
    std::vector<int32_t> a, b;
    for (int t = 0; t < shared; ++t) a.push_back(3 + t % 500), b.push_back(3 + t % 500);
    for (int t = 0; t < rest; ++t) a.push_back(4 + t % 400), b.push_back(5 + t % 300);
    return Pair(a, b, shared, shared);
  };
  EXPECT_EQ(Collate({pair(16, 100)}, {0}, 2, torch::kCPU, PairLayout::kAuto, &m).kind,
            PairLayout::kSeparate);
  EXPECT_EQ(Collate({pair(100, 100)}, {0}, 2, torch::kCPU, PairLayout::kAuto, &m).kind,
            PairLayout::kShared);
}

TEST(ObjectivesTest, ObjectivesAgreeAcrossLayouts) {
  const auto pairs = EdgePairs();
  const std::vector<int64_t> idx = {0, 1, 2, 3, 4};
  auto lm =
      DecoderLM::RandomInit(Config(Family::kLlama), HeadKind::kLanguageModel, 5, torch::kFloat32);
  auto rm = DecoderLM::RandomInit(Config(Family::kLlama), HeadKind::kReward, 6, torch::kFloat32);
  torch::NoGradGuard g;
  StepMetrics dpo[2], reward[2], sft[2];
  int i = 0;
  for (PairLayout layout : {PairLayout::kShared, PairLayout::kSeparate}) {
    const PairBatch b = Collate(pairs, idx, 2, torch::kCPU, layout);
    auto ref = ResponseLogProbs(*lm, b) * 0.9;
    DpoLoss(*lm, b, ref, 0.1, 0.05, &dpo[i]);
    RewardLoss(*rm, b, torch::Tensor(), 0.01, &reward[i]);
    SftLoss(*lm, b, &sft[i]);
    ++i;
  }
  StepMetrics chosen_only;
  SftLoss(*lm, Collate(pairs, idx, 2, torch::kCPU, PairLayout::kChosenOnly), &chosen_only);
  for (const auto* m : {dpo, reward}) {
    ASSERT_EQ(m[0].size(), m[1].size());
    for (const auto& [k, v] : m[0])
      EXPECT_NEAR(v, m[1].at(k), 1e-5 * std::max(1.0, std::abs(v))) << k;
  }
  EXPECT_EQ(dpo[0].size(), 9u);  // loss, rewards/*, logps/*, logits/*
  EXPECT_NEAR(sft[0]["loss"], sft[1]["loss"], 1e-5);
  EXPECT_NEAR(sft[0]["loss"], chosen_only["loss"], 1e-5);
}

}  // namespace
}  // namespace rmgen
