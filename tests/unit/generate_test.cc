// Generation: the KV cache against the full forward pass, batch-independent sampling, the
// filters, stops and the checks made before any compute.
//
// Tolerance: cached decoding and the full forward run the same fp32 math on the same cells
// in a different order (per-row projections against the padded batch's attention); on tiny
// models (hidden 16) the logits agree to ~1e-6, and 1e-5 leaves room for any BLAS kernel.
#include "worker/model/generate.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>

#include "tests/tiny_model.h"

namespace rmgen {
namespace {

constexpr double kLogitTol = 1e-5;

std::unique_ptr<DecoderLM> TinyLm(Family f, uint64_t seed = 7,
                                  torch::Dtype dtype = torch::kFloat32) {
  // Mistral with a window of 3, shorter than the prompts, so the window is exercised.
  auto c = testing::TinyConfig(f, f == Family::kMistral ? 3 : 0, 64);
  c.max_position_embeddings = 64;
  return DecoderLM::RandomInit(c, HeadKind::kLanguageModel, seed, dtype);
}

std::vector<GenerationRequest> Requests(const std::vector<int>& lengths, int samples,
                                        uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<GenerationRequest> out;
  for (size_t p = 0; p < lengths.size(); ++p) {
    std::vector<int64_t> prompt;
    for (int i = 0; i < lengths[p]; ++i) prompt.push_back(3 + rng() % 60);
    for (int k = 0; k < samples; ++k) out.push_back({prompt, p, k});
  }
  return out;
}

void CheckCachedSteps(const DecoderLM& model);

class GenerateFamilyTest : public ::testing::TestWithParam<Family> {
 protected:
  void SetUp() override { torch::set_num_threads(1); }
};

// Prompts of lengths 2..7 batched right-padded, then six forced tokens a row: the logits of
// every cached step equal the full forward pass over the whole row. fp32 on CPU decodes with
// the one-loop attention kernel; float64 takes the masked-matmul path that bf16 and CUDA use
// (both paths compute the norms in fp32, so the same tolerance holds).
TEST_P(GenerateFamilyTest, CachedStepsEqualTheFullForwardPass) {
  for (torch::Dtype dtype : {torch::kFloat32, torch::kFloat64}) {
    SCOPED_TRACE(dtype == torch::kFloat32 ? "float32" : "float64");
    CheckCachedSteps(*TinyLm(GetParam(), 7, dtype));
  }
}

void CheckCachedSteps(const DecoderLM& model) {
  const DecoderLM* lm = &model;
  const std::vector<int64_t> lengths = {5, 2, 7, 4};
  const int64_t B = lengths.size(), T = 7, steps = 6;
  auto prompts = torch::randint(3, 60, {B, T}, torch::kInt64);
  auto forced = torch::randint(3, 60, {B, steps}, torch::kInt64);
  auto mask = torch::zeros({B, T}, torch::kInt64);
  for (int64_t b = 0; b < B; ++b) mask[b].slice(0, 0, lengths[b]).fill_(1);
  torch::NoGradGuard g;
  KvCache cache;
  auto hidden = lm->Prefill(prompts * mask, mask, T + steps, &cache);
  EXPECT_TRUE(torch::equal(cache.lengths, torch::tensor(lengths)));
  std::vector<torch::Tensor> step_logits;  // (B, V) per step: predicting the token after
  auto last = torch::tensor(lengths) - 1;
  step_logits.push_back(lm->Logits(hidden.index({torch::arange(B), last})));
  for (int64_t s = 0; s < steps; ++s) {
    step_logits.push_back(lm->Logits(lm->DecodeStep(forced.select(1, s), &cache)));
  }
  EXPECT_TRUE(torch::equal(cache.lengths, torch::tensor(lengths) + steps));
  for (int64_t b = 0; b < B; ++b) {
    auto row = torch::cat({prompts[b].slice(0, 0, lengths[b]), forced[b]}).view({1, -1});
    auto full = lm->Logits(lm->Hidden(row, torch::ones_like(row)))[0];  // (L, V)
    for (int64_t s = 0; s <= steps; ++s) {
      const double d = (step_logits[s][b] - full[lengths[b] - 1 + s]).abs().max().item<double>();
      EXPECT_LE(d, kLogitTol) << FamilyModelType(lm->config().family) << " row " << b << " step "
                              << s;
    }
  }
}

// Sampled continuations depend on (seed, prompt, sample index) only: the same with batch
// sizes 1, 3 and 16, with the requests shuffled, and for a request run alone.
TEST_P(GenerateFamilyTest, SamplesDoNotDependOnTheBatch) {
  auto lm = TinyLm(GetParam());
  auto reqs = Requests({3, 6, 1, 9, 4}, 3, 11);
  SamplingOptions o;
  o.seed = 1234;
  o.max_new_tokens = 10;
  o.top_p = 0.9;
  o.top_k = 40;
  o.temperature = 1.3;
  std::vector<std::vector<int64_t>> base;
  for (int64_t bs : {1, 3, 16}) {
    o.batch_size = bs;
    auto gen = Generate(*lm, reqs, o);
    ASSERT_TRUE(gen.ok()) << gen.status().ToString();
    std::vector<std::vector<int64_t>> toks;
    for (const auto& x : *gen) toks.push_back(x.tokens);
    if (base.empty()) {
      base = toks;
    } else {
      EXPECT_EQ(toks, base) << "batch size " << bs;
    }
  }
  // Shuffled, and one request alone.
  auto shuffled = reqs;
  std::reverse(shuffled.begin(), shuffled.end());
  o.batch_size = 4;
  auto gen = Generate(*lm, shuffled, o);
  ASSERT_TRUE(gen.ok());
  for (size_t i = 0; i < reqs.size(); ++i) EXPECT_EQ((*gen)[reqs.size() - 1 - i].tokens, base[i]);
  auto alone = Generate(*lm, {reqs[7]}, o);
  ASSERT_TRUE(alone.ok());
  EXPECT_EQ((*alone)[0].tokens, base[7]);
  // The samples of one prompt differ from each other (10 tokens from a 64-token vocabulary
  // at temperature 1.3: equal only by a ~1e-18 chance), and another seed changes them.
  EXPECT_NE(base[0], base[1]);
  o.seed = 1235;
  auto other = Generate(*lm, reqs, o);
  ASSERT_TRUE(other.ok());
  int same = 0;
  for (size_t i = 0; i < reqs.size(); ++i) same += (*other)[i].tokens == base[i];
  EXPECT_LT(same, 3);
}

INSTANTIATE_TEST_SUITE_P(Families, GenerateFamilyTest, ::testing::ValuesIn(kAllFamilies),
                         [](const auto& info) { return std::string(FamilyModelType(info.param)); });

TEST(GenerateTest, GreedyStopsAtAStopTokenAndKeepsIt) {
  torch::set_num_threads(1);
  auto lm = TinyLm(Family::kLlama, 3);
  auto reqs = Requests({4, 8}, 1, 5);
  SamplingOptions o;
  o.greedy = true;
  o.max_new_tokens = 8;
  auto free_run = Generate(*lm, reqs, o);
  ASSERT_TRUE(free_run.ok());
  for (const auto& g : *free_run) {
    EXPECT_EQ(g.tokens.size(), 8u);
    EXPECT_EQ(g.finish, FinishReason::kLength);
  }
  // Stop at the third token of the first row's free run: that row ends there; the other
  // ends at the same token if it meets it, else runs on as before.
  const int64_t stop = (*free_run)[0].tokens[2];
  o.stop_ids = {stop};
  auto stopped = Generate(*lm, reqs, o);
  ASSERT_TRUE(stopped.ok());
  for (size_t i = 0; i < reqs.size(); ++i) {
    const auto& full = (*free_run)[i].tokens;
    const auto at = std::find(full.begin(), full.end(), stop);
    const std::vector<int64_t> expect(full.begin(), at == full.end() ? full.end() : at + 1);
    EXPECT_EQ((*stopped)[i].tokens, expect) << "request " << i;
    EXPECT_EQ((*stopped)[i].finish, at == full.end() ? FinishReason::kLength : FinishReason::kStop);
  }
  EXPECT_EQ((*stopped)[0].tokens.size(), 3u);
}

TEST(GenerateTest, TheContextLimitsNewTokens) {
  auto lm = TinyLm(Family::kGemma);  // context 64
  auto reqs = Requests({60}, 1, 1);
  SamplingOptions o;
  o.max_new_tokens = 10;
  auto gen = Generate(*lm, reqs, o);
  ASSERT_TRUE(gen.ok());
  EXPECT_EQ((*gen)[0].tokens.size(), 4u);
  EXPECT_EQ((*gen)[0].finish, FinishReason::kLength);
}

TEST(GenerateTest, BadRequestsAndOptionsAreRefusedBeforeAnyCompute) {
  auto lm = TinyLm(Family::kLlama);
  SamplingOptions o;
  auto msg = [&](const std::vector<GenerationRequest>& r, const SamplingOptions& opt) {
    auto g = Generate(*lm, r, opt);
    EXPECT_FALSE(g.ok());
    return g.ok() ? std::string() : g.status().message();
  };
  auto ok = Requests({3}, 1, 1);
  EXPECT_NE(msg({ok[0], {{}, 1, 0}}, o).find("request 1: an empty prompt"), std::string::npos);
  std::vector<int64_t> long_prompt(64, 5);
  EXPECT_NE(msg({{long_prompt, 0, 0}}, o).find("request 0: the prompt has 64 tokens"),
            std::string::npos);
  EXPECT_NE(msg({{{5, 99}, 0, 0}}, o).find("token id 99 is outside"), std::string::npos);
  SamplingOptions bad = o;
  bad.temperature = 0;
  EXPECT_NE(msg(ok, bad).find("sampling.temperature"), std::string::npos);
  bad = o;
  bad.top_p = 1.5;
  EXPECT_NE(msg(ok, bad).find("sampling.top_p"), std::string::npos);
  bad = o;
  bad.max_new_tokens = 0;
  EXPECT_NE(msg(ok, bad).find("sampling.max_new_tokens"), std::string::npos);
  auto empty = Generate(*lm, {}, o);
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->empty());
}

// Inverse-CDF draws at evenly spread uniforms give each token a share equal to its
// filtered probability (to 1/N), and never a filtered-out token.
TEST(GenerateTest, DrawsFollowTheFilteredDistribution) {
  auto logits = torch::tensor({2.0, 1.0, 0.5, -1.0, 0.0}, torch::kFloat32);
  auto probs = torch::softmax(logits.to(torch::kFloat64), 0);
  const int N = 2000;
  auto count = [&](const SamplingOptions& o) {
    std::vector<double> u;
    for (int i = 0; i < N; ++i) u.push_back((i + 0.5) / N);
    auto picks = PickTokens(logits.view({1, 5}).expand({N, 5}).contiguous(), o, u);
    std::vector<double> share(5, 0);
    for (int i = 0; i < N; ++i) share[picks[i].item<int64_t>()] += 1.0 / N;
    return share;
  };
  SamplingOptions plain;
  auto s = count(plain);
  for (int v = 0; v < 5; ++v) EXPECT_NEAR(s[v], probs[v].item<double>(), 1.0 / N) << v;
  // top_k 2: tokens 0 and 1, renormalized.
  SamplingOptions k2;
  k2.top_k = 2;
  s = count(k2);
  const double p0 = probs[0].item<double>() / (probs[0].item<double>() + probs[1].item<double>());
  EXPECT_NEAR(s[0], p0, 1.0 / N);
  EXPECT_NEAR(s[1], 1 - p0, 1.0 / N);
  EXPECT_EQ(s[2] + s[3] + s[4], 0);
  // top_p: token 0 alone has ~0.563 of the mass, so 0.5 keeps it alone and 0.6 adds token 1.
  SamplingOptions p;
  p.top_p = 0.5;
  s = count(p);
  EXPECT_NEAR(s[0], 1.0, 1e-9);
  p.top_p = 0.6;
  s = count(p);
  EXPECT_NEAR(s[0], p0, 1.0 / N);
  // Temperature 0.5 squares the odds.
  SamplingOptions t;
  t.temperature = 0.5;
  s = count(t);
  auto pt = torch::softmax(logits.to(torch::kFloat64) / 0.5, 0);
  for (int v = 0; v < 5; ++v) EXPECT_NEAR(s[v], pt[v].item<double>(), 1.0 / N) << v;
  // Greedy: the arg max.
  SamplingOptions gr;
  gr.greedy = true;
  s = count(gr);
  EXPECT_NEAR(s[0], 1.0, 1e-9);
}

TEST(GenerateTest, UniformsAreKeyedAndSpread) {
  std::map<int, int> buckets;
  for (int k = 0; k < 1000; ++k) {
    const double u = SamplingUniform(42, k / 10, k % 10, 3);
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    buckets[static_cast<int>(u * 10)]++;
  }
  for (const auto& [b, n] : buckets) EXPECT_NEAR(n, 100, 45) << b;  // ~4.7 sigma
  EXPECT_EQ(SamplingUniform(1, 2, 3, 4), SamplingUniform(1, 2, 3, 4));
  EXPECT_NE(SamplingUniform(1, 2, 3, 4), SamplingUniform(1, 2, 3, 5));
  EXPECT_NE(SamplingUniform(1, 2, 3, 4), SamplingUniform(1, 3, 2, 4));
}

}  // namespace
}  // namespace rmgen
