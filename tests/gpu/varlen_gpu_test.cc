// The flash kernels over variable-length segments (worker/model/varlen.h) and the chunked
// language-model head on a GPU (label gpu), against the CPU paths on small shapes: a shared-
// prefix batch, plain padded rows and a sliding window, every family, head_dim 64. Skipped
// where no CUDA device is visible.
#include <gtest/gtest.h>

#include <vector>

#include "tests/tiny_model.h"
#include "worker/model/decoder.h"

namespace rmgen {
namespace {

// Two rows: prefix 6, chosen 5, rejected 9 (segments 0, 1, 2); a plain sequence of 12.
TokenLayout SharedLayout() {
  const int64_t T = 20;
  TokenLayout l;
  l.ids = torch::randint(3, 300, {2, T}, at::detail::createCPUGenerator(5), torch::kInt64);
  l.positions = torch::zeros({2, T}, torch::kInt64);
  l.segments = torch::full({2, T}, -1, torch::kInt64);
  int64_t t = 0;
  for (auto [seg, first, n] :
       std::vector<std::array<int64_t, 3>>{{0, 0, 6}, {1, 6, 5}, {2, 6, 9}}) {
    for (int64_t i = 0; i < n; ++i, ++t) {
      l.positions[0][t] = first + i;
      l.segments[0][t] = seg;
    }
  }
  for (int64_t i = 0; i < 12; ++i) {
    l.positions[1][i] = i;
    l.segments[1][i] = 0;
  }
  return l;
}

struct Result {
  torch::Tensor hidden;              // float32, CPU
  std::vector<torch::Tensor> grads;  // float32, CPU
};

// Hidden states and the gradients of sum(hidden * w) and of the response log-probs.
Result Forward(const ModelConfig& c, torch::Device device, torch::Dtype dtype,
               AttentionKernel kernel, int64_t vocab_chunk, bool expect_flash,
               bool autocast = false, bool checkpointing = false) {
  auto m = DecoderLM::RandomInit(c, HeadKind::kLanguageModel, 3, dtype, device);
  m->SetAttentionKernel(kernel);
  m->SetVocabChunk(vocab_chunk);
  m->SetRequiresGrad(true);
  m->SetGradientCheckpointing(checkpointing);
  const TokenLayout l = SharedLayout();
  EXPECT_TRUE(PlanVarlen(l.positions, l.segments, torch::kCPU).has_value());
  torch::Tensor h, lp;
  {
    // Float32 weights under bf16 autocast, as train.bf16 runs the forward (the backward
    // outside it, as the trainer does).
    compat::AutocastGuard guard(device.type(), at::kBFloat16, autocast);
    EXPECT_EQ(m->UsesFlashAttention(), expect_flash);
    h = m->Hidden(l);
    // Log-probs of the second row's tokens 1..11 from cells 0..10.
    auto from = torch::arange(20, 31, torch::kInt64), targets = l.ids[1].slice(0, 1, 12);
    lp = m->SideLogProbs(h, from, targets, torch::zeros({11}, torch::kInt64), 1);
  }
  auto w = torch::randn(h.sizes(), at::detail::createCPUGenerator(9)).to(device, h.scalar_type());
  auto loss = (h * w).sum().to(torch::kFloat32) + lp.sum();
  loss.backward();
  Result r;
  r.hidden = h.detach().to(torch::kCPU, torch::kFloat32);
  for (const auto& [n, p] : m->named_parameters()) {
    r.grads.push_back(p.grad().defined() ? p.grad().to(torch::kCPU, torch::kFloat32)
                                         : torch::Tensor());
  }
  return r;
}

// Within rtol of the largest magnitude (plus atol): bf16 rounding errors scale with the
// contributions summed into an element, not with the element, which may be near 0.
void ExpectClose(const Result& a, const Result& b, double rtol, double atol) {
  const double h_scale = a.hidden.abs().max().item<double>();
  const double h_diff = (a.hidden - b.hidden).abs().max().item<double>();
  EXPECT_LE(h_diff, rtol * h_scale + atol) << "hidden (max |h| " << h_scale << ")";
  for (size_t i = 0; i < a.grads.size(); ++i) {
    ASSERT_EQ(a.grads[i].defined(), b.grads[i].defined()) << i;
    if (!a.grads[i].defined()) continue;
    const double scale = a.grads[i].abs().max().item<double>();
    const double diff = (a.grads[i] - b.grads[i]).abs().max().item<double>();
    EXPECT_LE(diff, rtol * scale + atol) << "parameter " << i << " (max |grad| " << scale << ")";
  }
}

TEST(VarlenGpuTest, FlashSegmentsAndChunkedHeadMatchTheCpuPaths) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  if (!kHasVarlenFlash) GTEST_SKIP() << "libtorch 1.x: no flash kernels";
  const torch::Device cuda(torch::kCUDA, 0);
  for (Family f : kAllFamilies) {
    SCOPED_TRACE(FamilyModelType(f));
    const ModelConfig c = testing::GpuConfig(f);
    const Result cpu = Forward(c, torch::kCPU, torch::kFloat32, AttentionKernel::kMasked, 0, false);
    // fp32 on the GPU: the masked path (SDPA), the head in chunks of 64 rows.
    ExpectClose(Forward(c, cuda, torch::kFloat32, AttentionKernel::kAuto, 64, false), cpu, 1e-4,
                1e-5);
    // bf16 on the GPU: the flash kernels over segments, against fp32 on CPU within bf16's
    // resolution (2^-8 relative per rounding, a few roundings deep), and against the masked
    // path in bf16 on the same GPU.
    const Result flash = Forward(c, cuda, torch::kBFloat16, AttentionKernel::kAuto, 64, true);
    ExpectClose(flash, cpu, 5e-2, 5e-3);
    ExpectClose(flash, Forward(c, cuda, torch::kBFloat16, AttentionKernel::kMasked, 0, false), 3e-2,
                3e-3);
    // float32 weights under bf16 autocast (train.bf16), with gradient checkpointing: the
    // kernels get half inputs although the rotary tables are float32.
    ExpectClose(Forward(c, cuda, torch::kFloat32, AttentionKernel::kAuto, 64, true, true, true),
                cpu, 5e-2, 5e-3);
  }
}

// The kernel alone against the eager reference on N(0, 1) queries and keys (sharp attention,
// so a wrong alignment or window shows), bf16: segments with fewer queries than keys,
// grouped heads, with and without a window.
TEST(VarlenGpuTest, FlashKernelEqualsTheReference) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  if (!kHasVarlenFlash) GTEST_SKIP() << "libtorch < 2.5: no flash kernels";
  const torch::Device cuda(torch::kCUDA, 0);
  const TokenLayout l = SharedLayout();
  auto plan = PlanVarlen(l.positions, l.segments, cuda);
  ASSERT_TRUE(plan.has_value());
  const int64_t N = (l.segments >= 0).sum().item<int64_t>(), keys = plan->key_cells.size(0);
  auto gen = at::detail::createCPUGenerator(8);
  for (int64_t kv : {4, 2, 1}) {
    for (int64_t window : {0, 4}) {
      SCOPED_TRACE("kv heads " + std::to_string(kv) + ", window " + std::to_string(window));
      auto q = torch::randn({N, 4, 64}, gen).to(cuda, torch::kBFloat16);
      auto k = torch::randn({keys, kv, 64}, gen).to(cuda, torch::kBFloat16);
      auto v = torch::randn({keys, kv, 64}, gen).to(cuda, torch::kBFloat16);
      auto flash = VarlenAttention(q, k, v, *plan, window, 0.125, true).to(torch::kFloat32);
      auto ref = VarlenAttention(q, k, v, *plan, window, 0.125, false).to(torch::kFloat32);
      EXPECT_LE((flash - ref).abs().max().item<double>(), 3e-2);
    }
  }
}

}  // namespace
}  // namespace rmgen
