// The chunked language-model head (worker/model/lm_head.h) against the full-logits path:
// values, logit sums and gradients, for every chunking of the vocabulary, through the
// decoder for every family, and under bf16 autocast.
#include "worker/model/lm_head.h"

#include <gtest/gtest.h>

#include <vector>

#include "tests/tiny_model.h"
#include "worker/model/decoder.h"

namespace rmgen {
namespace {

// log_softmax(h W^T)[target] the plain autograd way: (N).
torch::Tensor FullTokenLogProbs(const torch::Tensor& h, const torch::Tensor& w,
                                const torch::Tensor& targets) {
  return torch::log_softmax(torch::mm(h, w.t()), 1).gather(1, targets.unsqueeze(1)).squeeze(1);
}

struct Grads {
  torch::Tensor value, dh, dw;
};

// Value and gradients of sum_n weight_n * logp_n (a per-token upstream gradient, as DPO's
// per-side factors give), with chunk 0 meaning the full path.
Grads HeadGrads(const torch::Tensor& h0, const torch::Tensor& w0, const torch::Tensor& targets,
                const torch::Tensor& upstream, int64_t chunk) {
  auto h = h0.clone().requires_grad_(true), w = w0.clone().requires_grad_(true);
  auto lp = chunk == 0 ? FullTokenLogProbs(h, w, targets)
                       : ChunkedTokenLogProbs(h, w, targets, chunk, h.scalar_type());
  (lp * upstream).sum().backward();
  return {lp.detach(), h.grad(), w.grad()};
}

TEST(LmHeadTest, EveryChunkingEqualsTheFullLogitsInFloat64) {
  torch::manual_seed(11);
  const int64_t N = 9, D = 6, V = 23;
  auto opts = torch::TensorOptions().dtype(torch::kFloat64);
  auto h = torch::randn({N, D}, opts) * 2, w = torch::randn({V, D}, opts);
  // Targets on chunk edges and the vocabulary's ends, and a repeated one.
  auto targets = torch::tensor({0, 22, 6, 7, 13, 14, 20, 21, 7}, torch::kInt64);
  auto upstream = torch::randn({N}, opts);
  const Grads full = HeadGrads(h, w, targets, upstream, 0);
  for (int64_t chunk : {1, 2, 7, 8, 22, 23, 64}) {
    const Grads c = HeadGrads(h, w, targets, upstream, chunk);
    EXPECT_TRUE(torch::allclose(c.value, full.value, 1e-12, 1e-12)) << "chunk " << chunk;
    EXPECT_TRUE(torch::allclose(c.dh, full.dh, 1e-12, 1e-12)) << "chunk " << chunk;
    EXPECT_TRUE(torch::allclose(c.dw, full.dw, 1e-12, 1e-12)) << "chunk " << chunk;
  }
}

TEST(LmHeadTest, LogitSumsAndOneSidedGradients) {
  torch::manual_seed(12);
  const int64_t N = 5, D = 4, V = 17;
  auto h = torch::randn({N, D}, torch::kFloat64), w = torch::randn({V, D}, torch::kFloat64);
  auto targets = torch::randint(0, V, {N}, torch::kInt64);
  torch::Tensor sums;
  {
    torch::NoGradGuard g;
    auto lp = ChunkedTokenLogProbs(h, w, targets, 5, torch::kFloat64, &sums);
    EXPECT_TRUE(torch::allclose(lp, FullTokenLogProbs(h, w, targets), 1e-12, 1e-12));
  }
  EXPECT_TRUE(torch::allclose(sums, torch::mm(h, w.t()).sum(1), 1e-12, 1e-12));
  // A frozen head: only h gets a gradient, and it is the full path's.
  auto hg = h.clone().requires_grad_(true);
  ChunkedTokenLogProbs(hg, w, targets, 5, torch::kFloat64, &sums).sum().backward();
  auto hf = h.clone().requires_grad_(true);
  FullTokenLogProbs(hf, w, targets).sum().backward();
  EXPECT_FALSE(sums.requires_grad());
  EXPECT_TRUE(torch::allclose(hg.grad(), hf.grad(), 1e-12, 1e-12));
}

TEST(LmHeadTest, RefusesBadShapes) {
  auto h = torch::zeros({3, 4}), w = torch::zeros({10, 4});
  auto t = torch::zeros({3}, torch::kInt64);
  EXPECT_THROW(ChunkedTokenLogProbs(h, w, t, 0, torch::kFloat32), c10::Error);
  EXPECT_THROW(ChunkedTokenLogProbs(h, torch::zeros({10, 5}), t, 4, torch::kFloat32), c10::Error);
  EXPECT_THROW(ChunkedTokenLogProbs(h, w, torch::zeros({2}, torch::kInt64), 4, torch::kFloat32),
               c10::Error);
}

// The decoder's summed response log-probs, their logit means, and every parameter's gradient,
// with the head in chunks and whole. fp32: the two paths differ only in summation order
// (the log-sum-exp over chunks, dh summed over chunks), so 1e-5 relative is ample.
TEST(LmHeadTest, DecoderGradientsMatchTheFullHeadForEveryFamily) {
  for (Family f : kAllFamilies) {
    const auto config = testing::TinyConfig(f, f == Family::kMistral ? 3 : 0, /*vocab=*/45);
    auto ids = torch::randint(3, 45, {3, 7}, torch::kInt64);
    auto mask = torch::ones({3, 7}, torch::kInt64);
    mask[2][6] = 0;
    auto resp = torch::zeros({3, 7}, torch::kInt64);
    resp.slice(1, 2) = 1;
    resp[2][6] = 0;
    auto upstream = torch::tensor({1.0f, -0.5f, 2.0f});
    std::vector<std::vector<torch::Tensor>> grads;
    std::vector<torch::Tensor> values, means;
    for (int64_t chunk : {0, 8}) {
      auto m = DecoderLM::RandomInit(config, HeadKind::kLanguageModel, 21, torch::kFloat32);
      m->SetRequiresGrad(true);
      m->SetVocabChunk(chunk);
      torch::Tensor logit_means;
      auto lp = m->SequenceLogProbs(ids, mask, resp, &logit_means);
      (lp * upstream).sum().backward();
      values.push_back(lp.detach());
      means.push_back(logit_means);
      grads.emplace_back();
      for (const auto& [n, p] : m->named_parameters()) grads.back().push_back(p.grad());
    }
    EXPECT_TRUE(torch::allclose(values[0], values[1], 1e-5, 1e-5)) << FamilyModelType(f);
    EXPECT_TRUE(torch::allclose(means[0], means[1], 1e-5, 1e-6)) << FamilyModelType(f);
    for (size_t i = 0; i < grads[0].size(); ++i) {
      ASSERT_TRUE(grads[1][i].defined()) << FamilyModelType(f) << " parameter " << i;
      EXPECT_TRUE(torch::allclose(grads[0][i], grads[1][i], 1e-4, 1e-6))
          << FamilyModelType(f) << " parameter " << i;
    }
  }
}

// Under bf16 autocast both paths run the head's matmul in bf16 and the rest in float32. The
// loss agrees to float32 summation order; the gradients differ by bf16 roundings of partial
// products (the chunks' dh terms are rounded one by one; measured 0.7% of the largest).
TEST(LmHeadTest, ChunkedHeadFollowsAutocast) {
  const auto config = testing::TinyConfig(Family::kGemma, 0, /*vocab=*/64);
  auto ids = torch::randint(3, 64, {2, 8}, torch::kInt64);
  auto mask = torch::ones({2, 8}, torch::kInt64);
  auto resp = torch::ones({2, 8}, torch::kInt64);
  resp.select(1, 0) = 0;
  std::vector<torch::Tensor> values, embed_grads;
  for (int64_t chunk : {0, 16}) {
    auto m = DecoderLM::RandomInit(config, HeadKind::kLanguageModel, 5, torch::kFloat32);
    m->SetRequiresGrad(true);
    m->SetVocabChunk(chunk);
    torch::Tensor loss;
    {
      compat::AutocastGuard autocast(torch::kCPU, at::kBFloat16, true);
      loss = -m->SequenceLogProbs(ids, mask, resp).sum();
      // Backward inside the autocast scope: the chunked backward must not be re-cast.
      loss.backward();
    }
    values.push_back(loss.detach());
    embed_grads.push_back(m->named_parameters().front().second.grad());
  }
  // Both paths round the same logits to bf16 (measured: 7e-8 apart). 1e-4: a GEMM blocked
  // differently on another CPU may round a few logits the other way (one bf16 ulp of a target
  // logit moves this loss by ~1e-5 of itself).
  EXPECT_NEAR(values[0].item<double>(), values[1].item<double>(),
              1e-4 * std::abs(values[0].item<double>()));
  const double scale = embed_grads[0].abs().max().item<double>();
  const double diff = (embed_grads[0] - embed_grads[1]).abs().max().item<double>();
  EXPECT_LT(diff, 3e-2 * scale) << "max |grad| " << scale;
}

}  // namespace
}  // namespace rmgen
