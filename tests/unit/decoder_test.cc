// Forward-pass properties that hold for every family, independent of golden files.
#include "worker/model/decoder.h"

#include <gtest/gtest.h>

#include "tests/tiny_model.h"

namespace rmgen {
namespace {

ModelConfig Config(Family f, int64_t window = 0) { return testing::TinyConfig(f, window); }

TEST(DecoderTest, LastTokenComesFromTheMaskEvenWhenPadEqualsEos) {
  // Rows end with EOS (2) and are padded with EOS: only the mask can tell them apart.
  auto mask =
      torch::tensor({1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1}, torch::kInt64).view({3, 5});
  mask[2][0] = 0;  // left padding
  auto last = DecoderLM::LastTokenIndex(mask);
  EXPECT_EQ(last[0].item<int64_t>(), 2);
  EXPECT_EQ(last[1].item<int64_t>(), 4);
  EXPECT_EQ(last[2].item<int64_t>(), 4);

  auto rm = DecoderLM::RandomInit(Config(Family::kLlama), HeadKind::kReward, 1, torch::kFloat32);
  auto ids =
      torch::tensor({5, 6, 2, 2, 2, 7, 8, 9, 10, 2, 2, 2, 2, 2, 2}, torch::kInt64).view({3, 5});
  torch::NoGradGuard g;
  auto hidden = rm->Hidden(ids, mask);
  auto scores = rm->Scores(hidden, mask);
  const auto& w = rm->named_parameters().back().second;  // score.weight (1, D)
  EXPECT_EQ(rm->named_parameters().back().first, "score.weight");
  for (int b = 0; b < 3; ++b) {
    const float expect = (hidden[b][last[b].item<int64_t>()] * w[0]).sum().item<float>();
    EXPECT_NEAR(scores[b].item<float>(), expect, 1e-5);
  }
}

TEST(DecoderTest, LogProbsOnlyPathEqualsFullLogits) {
  for (Family f : kAllFamilies) {
    auto lm = DecoderLM::RandomInit(Config(f, f == Family::kMistral ? 3 : 0),
                                    HeadKind::kLanguageModel, 2, torch::kFloat32);
    auto ids = torch::randint(3, 40, {2, 7}, torch::kInt64);
    auto mask = torch::ones({2, 7}, torch::kInt64);
    mask[1][5] = 0, mask[1][6] = 0;
    auto resp = torch::zeros({2, 7}, torch::kInt64);
    resp.slice(1, 3) = 1;
    resp[1][5] = 0, resp[1][6] = 0;
    torch::NoGradGuard g;
    auto lp = lm->SequenceLogProbs(ids, mask, resp);
    auto logits = lm->Logits(lm->Hidden(ids, mask));  // (B, T, V)
    auto full =
        logits.slice(1, 0, 6).log_softmax(-1).gather(2, ids.slice(1, 1).unsqueeze(2)).squeeze(2);
    auto expect = (full * resp.slice(1, 1)).sum(1);
    EXPECT_TRUE(torch::allclose(lp, expect, 1e-5, 1e-5)) << FamilyModelType(f);
  }
}

TEST(DecoderTest, RightPaddingDoesNotChangeRealPositions) {
  for (Family f : kAllFamilies) {
    auto lm = DecoderLM::RandomInit(Config(f), HeadKind::kLanguageModel, 3, torch::kFloat32);
    auto ids = torch::randint(3, 40, {1, 6}, torch::kInt64);
    torch::NoGradGuard g;
    auto alone = lm->Logits(lm->Hidden(ids, torch::ones({1, 6}, torch::kInt64)));
    auto padded_ids = torch::cat({ids, torch::zeros({1, 3}, torch::kInt64)}, 1);
    auto padded_mask =
        torch::cat({torch::ones({1, 6}, torch::kInt64), torch::zeros({1, 3}, torch::kInt64)}, 1);
    auto padded = lm->Logits(lm->Hidden(padded_ids, padded_mask)).slice(1, 0, 6);
    EXPECT_TRUE(torch::allclose(alone, padded, 1e-5, 1e-5)) << FamilyModelType(f);
  }
}

TEST(DecoderTest, SlidingWindowLimitsTheReceptiveField) {
  // Two layers of window 3 see 2 * (3 - 1) = 4 tokens back; token 0 cannot reach position 5
  // or later, but reaches position 4.
  auto lm = DecoderLM::RandomInit(Config(Family::kMistral, 3), HeadKind::kLanguageModel, 4,
                                  torch::kFloat32);
  auto ids = torch::randint(3, 40, {1, 8}, torch::kInt64);
  auto other = ids.clone();
  other[0][0] = (ids[0][0].item<int64_t>() + 1) % 40;
  auto mask = torch::ones({1, 8}, torch::kInt64);
  torch::NoGradGuard g;
  auto a = lm->Logits(lm->Hidden(ids, mask)), b = lm->Logits(lm->Hidden(other, mask));
  EXPECT_TRUE(torch::equal(a.slice(1, 5), b.slice(1, 5)));
  EXPECT_FALSE(torch::allclose(a.slice(1, 4, 5), b.slice(1, 4, 5)));
  // Without a window every later position depends on token 0.
  auto full = DecoderLM::RandomInit(Config(Family::kMistral, 0), HeadKind::kLanguageModel, 4,
                                    torch::kFloat32);
  auto c = full->Logits(full->Hidden(ids, mask)), d = full->Logits(full->Hidden(other, mask));
  EXPECT_FALSE(torch::allclose(c.slice(1, 7), d.slice(1, 7)));
}

TEST(DecoderTest, GradientsReachEveryParameter) {
  for (Family f : kAllFamilies) {
    for (HeadKind head : {HeadKind::kLanguageModel, HeadKind::kReward}) {
      auto m = DecoderLM::RandomInit(Config(f), head, 5, torch::kFloat32);
      m->SetRequiresGrad(true);
      auto ids = torch::randint(3, 40, {2, 5}, torch::kInt64);
      auto mask = torch::ones({2, 5}, torch::kInt64);
      torch::Tensor loss;
      if (head == HeadKind::kReward) {
        loss = m->Scores(m->Hidden(ids, mask), mask).sum();
      } else {
        auto resp = torch::ones({2, 5}, torch::kInt64);
        resp.select(1, 0) = 0;
        loss = -m->SequenceLogProbs(ids, mask, resp).sum();
      }
      loss.backward();
      for (const auto& [name, p] : m->named_parameters()) {
        ASSERT_TRUE(p.grad().defined()) << FamilyModelType(f) << " " << name;
        EXPECT_GT(p.grad().abs().sum().item<float>(), 0.0f) << FamilyModelType(f) << " " << name;
      }
    }
  }
}

TEST(DecoderTest, GradientCheckpointingGivesTheSameGradients) {
  for (Family f : kAllFamilies) {
    for (HeadKind head : {HeadKind::kLanguageModel, HeadKind::kReward}) {
      auto ids = torch::randint(3, 40, {2, 6}, torch::kInt64);
      auto mask = torch::ones({2, 6}, torch::kInt64);
      mask[1][5] = 0;
      auto resp = torch::ones({2, 6}, torch::kInt64);
      resp.select(1, 0) = 0;
      std::vector<std::vector<torch::Tensor>> grads;
      for (bool ckpt : {false, true}) {
        auto m = DecoderLM::RandomInit(Config(f, f == Family::kMistral ? 3 : 0), head, 9,
                                       torch::kFloat32);
        m->SetRequiresGrad(true);
        m->SetGradientCheckpointing(ckpt);
        auto loss = head == HeadKind::kReward ? m->Scores(m->Hidden(ids, mask), mask).pow(2).sum()
                                              : -m->SequenceLogProbs(ids, mask, resp).sum();
        loss.backward();
        grads.emplace_back();
        for (const auto& [n, p] : m->named_parameters()) grads.back().push_back(p.grad());
      }
      for (size_t i = 0; i < grads[0].size(); ++i) {
        ASSERT_TRUE(grads[1][i].defined());
        EXPECT_TRUE(torch::allclose(grads[0][i], grads[1][i], 1e-5, 1e-7))
            << FamilyModelType(f) << " parameter " << i;
      }
    }
  }
}

TEST(DecoderTest, GradientCheckpointingKeepsTheForwardsAutocast) {
  // Under bf16 autocast the recompute must run in bf16 too, or the gradients would belong
  // to another function than the loss.
  auto ids = torch::randint(3, 40, {2, 6}, torch::kInt64);
  auto mask = torch::ones({2, 6}, torch::kInt64);
  auto resp = torch::ones({2, 6}, torch::kInt64);
  resp.select(1, 0) = 0;
  std::vector<std::vector<torch::Tensor>> grads;
  for (bool ckpt : {false, true}) {
    auto m =
        DecoderLM::RandomInit(Config(Family::kLlama), HeadKind::kLanguageModel, 4, torch::kFloat32);
    m->SetRequiresGrad(true);
    m->SetGradientCheckpointing(ckpt);
    torch::Tensor loss;
    {
      compat::AutocastGuard autocast(torch::kCPU, at::kBFloat16, true);
      loss = -m->SequenceLogProbs(ids, mask, resp).sum();
    }
    loss.backward();
    grads.emplace_back();
    for (const auto& [n, p] : m->named_parameters()) grads.back().push_back(p.grad());
  }
  for (size_t i = 0; i < grads[0].size(); ++i) {
    EXPECT_TRUE(torch::allclose(grads[0][i], grads[1][i], 1e-4, 1e-6)) << "parameter " << i;
  }
}

TEST(DecoderTest, ConstructorRejectsWrongParameterSets) {
  const ModelConfig c = Config(Family::kLlama);
  auto m = DecoderLM::RandomInit(c, HeadKind::kLanguageModel, 1, torch::kFloat32);
  NamedTensors params = m->named_parameters();
  params.pop_back();
  EXPECT_THROW(DecoderLM(c, HeadKind::kLanguageModel, params), std::invalid_argument);
  params = m->named_parameters();
  params[1].second = torch::zeros({3});
  EXPECT_THROW(DecoderLM(c, HeadKind::kLanguageModel, params), std::invalid_argument);
}

}  // namespace
}  // namespace rmgen
