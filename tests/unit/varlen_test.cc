// Attention as variable-length segments (worker/model/varlen.h): the plans of the layouts the
// trainer builds, the layouts that have none, and the decoder's forward and gradients through
// the segments' eager reference against the masked path, for every family. The CUDA kernels
// run the same plans; tests/gpu/varlen_gpu_test.cc compares them on a GPU.
#include "worker/model/varlen.h"

#include <gtest/gtest.h>

#include <vector>

#include "tests/tiny_model.h"
#include "worker/model/decoder.h"

namespace rmgen {
namespace {

// Rows given as (segment, position) runs; padded with segment -1 to the widest row.
struct RunSpec {
  int64_t segment, first_pos, length;
};
TokenLayout Layout(const std::vector<std::vector<RunSpec>>& rows, int64_t vocab, uint64_t seed) {
  int64_t T = 0;
  for (const auto& r : rows) {
    int64_t n = 0;
    for (const auto& run : r) n += run.length;
    T = std::max(T, n);
  }
  const int64_t B = rows.size();
  auto gen = at::detail::createCPUGenerator(seed);
  TokenLayout l;
  l.ids = torch::randint(3, vocab, {B, T}, gen, torch::kInt64);
  l.positions = torch::zeros({B, T}, torch::kInt64);
  l.segments = torch::full({B, T}, -1, torch::kInt64);
  for (int64_t b = 0; b < B; ++b) {
    int64_t t = 0;
    for (const auto& run : rows[b]) {
      for (int64_t i = 0; i < run.length; ++i, ++t) {
        l.positions[b][t] = run.first_pos + i;
        l.segments[b][t] = run.segment;
      }
    }
  }
  return l;
}

std::vector<int64_t> Values(const torch::Tensor& t) {
  auto c = t.to(torch::kCPU, torch::kInt64).contiguous();
  return {c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel()};
}

TEST(VarlenTest, SharedPrefixRowsBecomeSegmentsWithTheirPrefixKeys) {
  // Row 0: prefix 3, chosen 2, rejected 1. Row 1: one plain sequence of 4 (padded).
  const auto l = Layout({{{0, 0, 3}, {1, 3, 2}, {2, 3, 1}}, {{0, 0, 4}}}, 40, 1);
  auto plan = PlanVarlen(l.positions, l.segments, torch::kCPU);
  ASSERT_TRUE(plan.has_value());
  EXPECT_EQ(Values(plan->cu_q), (std::vector<int64_t>{0, 3, 5, 6, 10}));
  EXPECT_EQ(Values(plan->cu_k), (std::vector<int64_t>{0, 3, 8, 12, 16}));
  // Cells: row 0 is 0..5, row 1 is 6..9. The chosen keys are the prefix then itself.
  EXPECT_EQ(Values(plan->key_cells),
            (std::vector<int64_t>{0, 1, 2, 0, 1, 2, 3, 4, 0, 1, 2, 5, 6, 7, 8, 9}));
  EXPECT_EQ(plan->max_q, 4);
  EXPECT_EQ(plan->max_k, 5);
  // No common prefix: the continuations stand alone.
  auto alone = PlanVarlen(Layout({{{1, 0, 2}, {2, 0, 3}}}, 40, 1).positions,
                          Layout({{{1, 0, 2}, {2, 0, 3}}}, 40, 1).segments, torch::kCPU);
  ASSERT_TRUE(alone.has_value());
  EXPECT_EQ(Values(alone->cu_k), (std::vector<int64_t>{0, 2, 5}));
}

TEST(VarlenTest, LayoutsWithoutAPlan) {
  auto none = [](const std::vector<std::vector<RunSpec>>& rows) {
    const auto l = Layout(rows, 40, 1);
    return !PlanVarlen(l.positions, l.segments, torch::kCPU).has_value();
  };
  EXPECT_TRUE(none({{{1, 3, 2}, {0, 0, 3}}}));             // the shared run after a continuation
  EXPECT_TRUE(none({{{0, 0, 2}, {1, 2, 1}, {0, 3, 1}}}));  // segment 0 in two runs
  EXPECT_TRUE(none({{{0, 0, 2}, {1, 5, 2}}}));             // a continuation after a gap
  EXPECT_FALSE(none({{{0, 4, 3}}}));                       // positions need not start at 0
}

struct Case {
  const char* name;
  std::vector<std::vector<RunSpec>> rows;
};

// The decoder's hidden states, and every parameter's gradient of a weighted sum of them, with
// attention through the segments' reference and through the mask. fp32: the two differ by
// the order of float sums (and the mask path's exp(lowest) terms, exactly 0).
TEST(VarlenTest, DecoderThroughSegmentsEqualsTheMaskedPath) {
  const std::vector<Case> cases = {
      {"shared prefix", {{{0, 0, 4}, {1, 4, 3}, {2, 4, 5}}, {{0, 0, 2}, {1, 2, 1}, {2, 2, 2}}}},
      {"no common prefix", {{{1, 0, 3}, {2, 0, 4}}, {{0, 0, 6}}}},
      {"right padded", {{{0, 0, 7}}, {{0, 0, 3}}}},
      {"positions from 2", {{{0, 0, 5}}, {{0, 2, 3}}}},
      {"left padded", {{{-1, 0, 2}, {0, 0, 5}}, {{0, 0, 7}}}},
  };
  for (Family f : kAllFamilies) {
    for (bool checkpointing : {false, true}) {
      const auto config = testing::TinyConfig(f, f == Family::kMistral ? 3 : 0);
      for (const Case& c : cases) {
        SCOPED_TRACE(std::string(FamilyModelType(f)) + ", " + c.name +
                     (checkpointing ? ", checkpointing" : ""));
        const auto layout = Layout(c.rows, 40, 7);
        ASSERT_TRUE(PlanVarlen(layout.positions, layout.segments, torch::kCPU).has_value());
        auto weights = torch::randn({layout.ids.size(0), layout.ids.size(1), config.hidden_size},
                                    at::detail::createCPUGenerator(3));
        std::vector<torch::Tensor> hidden;
        std::vector<std::vector<torch::Tensor>> grads;
        for (AttentionKernel k : {AttentionKernel::kMasked, AttentionKernel::kVarlenReference}) {
          auto m = DecoderLM::RandomInit(config, HeadKind::kLanguageModel, 11, torch::kFloat32);
          m->SetAttentionKernel(k);
          m->SetGradientCheckpointing(checkpointing);
          m->SetRequiresGrad(true);
          auto h = m->Hidden(layout);
          (h * weights).sum().backward();
          hidden.push_back(h.detach());
          grads.emplace_back();
          for (const auto& [n, p] : m->named_parameters()) grads.back().push_back(p.grad());
        }
        EXPECT_TRUE(torch::allclose(hidden[0], hidden[1], 1e-5, 1e-6))
            << (hidden[0] - hidden[1]).abs().max().item<double>();
        for (size_t i = 0; i < grads[0].size(); ++i) {
          // The head is not part of Hidden(): no gradient on either side.
          ASSERT_EQ(grads[0][i].defined(), grads[1][i].defined()) << "parameter " << i;
          if (!grads[0][i].defined()) continue;
          EXPECT_TRUE(torch::allclose(grads[0][i], grads[1][i], 1e-4, 1e-6)) << "parameter " << i;
        }
      }
    }
  }
}

TEST(VarlenTest, CpuNeverPicksTheFlashKernels) {
  auto m = DecoderLM::RandomInit(testing::TinyConfig(Family::kLlama), HeadKind::kLanguageModel, 1,
                                 torch::kBFloat16);
  EXPECT_FALSE(m->UsesFlashAttention());
  auto plan = PlanVarlen(torch::zeros({1, 1}, torch::kInt64), torch::zeros({1, 1}, torch::kInt64),
                         torch::kCPU);
  ASSERT_TRUE(plan.has_value());
  auto q = torch::randn({1, 4, 8}), kv = torch::randn({1, 2, 8});
  if (!kHasVarlenFlash) {
    EXPECT_THROW(VarlenAttention(q, kv, kv, *plan, 0, 1.0, /*flash=*/true), c10::Error);
  }
  // One query, one key: the output is the value, whatever the scores.
  auto o = VarlenAttention(q, kv, kv, *plan, 0, 1.0, /*flash=*/false);
  EXPECT_TRUE(torch::allclose(o, kv.repeat_interleave(2, 1)));
}

}  // namespace
}  // namespace rmgen
