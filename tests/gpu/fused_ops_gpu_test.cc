// The fused CUDA kernels (worker/model/fused_ops.h, label gpu) against the ATen compositions
// they replace, forward and backward, in float32, bf16 and fp16; then a decoder with them on
// against one with them off. Skipped where no CUDA device is visible or the kernels are not
// built (and failed where the build enabled them but they are missing).
#include <gtest/gtest.h>

#include <functional>
#include <tuple>
#include <vector>

#include "tests/tiny_model.h"
#include "worker/model/decoder.h"
#include "worker/model/fused_ops.h"

namespace rmgen {
namespace {

// `a` (the fused result) finite and within rtol * max|b| + atol of the reference `b`.
void ExpectClose(const torch::Tensor& a, const torch::Tensor& b, double rtol, double atol,
                 const std::string& what) {
  auto x = a.to(torch::kCPU, torch::kFloat32), y = b.to(torch::kCPU, torch::kFloat32);
  ASSERT_TRUE(x.isfinite().all().item<bool>()) << what;
  const double scale = y.abs().max().item<double>();
  EXPECT_LE((x - y).abs().max().item<double>(), rtol * scale + atol) << what;
}

// Skips without a GPU; fails where the build should have the kernels but does not.
bool Skip() {
  if (!torch::cuda::is_available()) return true;
#ifdef RMGEN_FUSED_KERNELS_EXPECTED
  EXPECT_TRUE(fused::Available()) << "the build enabled the fused kernels but they are missing";
#endif
  return !fused::Available();
}

// Runs f on leaf copies of `inputs`, backpropagates `seed` (undefined: y.sum(), whose gradient
// reaches the op expanded, not contiguous), returns {output, input grads...}.
std::vector<torch::Tensor> Grads(const std::function<torch::Tensor(std::vector<torch::Tensor>&)>& f,
                                 const std::vector<torch::Tensor>& inputs,
                                 const torch::Tensor& seed) {
  std::vector<torch::Tensor> leaves;
  for (const auto& t : inputs) leaves.push_back(t.detach().clone().requires_grad_(true));
  auto y = f(leaves);
  if (seed.defined()) {
    y.backward(seed.to(y.scalar_type()));
  } else {
    y.sum().backward();
  }
  std::vector<torch::Tensor> out = {y.detach()};
  for (const auto& l : leaves) out.push_back(l.grad());
  return out;
}

torch::Tensor RotateHalf(const torch::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return torch::cat({-x.slice(-1, half), x.slice(-1, 0, half)}, -1);
}

TEST(FusedOpsGpuTest, KernelsMatchTheAtenCompositions) {
  if (Skip()) GTEST_SKIP() << "no CUDA device or no fused kernels in this build";
  const torch::Device cuda(torch::kCUDA, 0);
  auto gen = at::detail::createCPUGenerator(2);
  for (torch::Dtype dtype : {torch::kFloat32, torch::kBFloat16, torch::kFloat16}) {
    // float32: summation order only; bf16 and fp16: within a couple of roundings.
    const double rtol = dtype == torch::kFloat32 ? 1e-5 : 2e-2, atol = 1e-6;
    auto rnd = [&](std::vector<int64_t> shape) { return torch::randn(shape, gen).to(cuda, dtype); };
    SCOPED_TRACE(dtype == torch::kFloat32    ? "float32"
                 : dtype == torch::kBFloat16 ? "bf16"
                                             : "fp16");
    // Rows wider than a block (1000, 4100: several passes a thread), x away from mean 0 and
    // scale 1 (r far from 1), and a gradient that arrives expanded (no seed).
    const std::vector<std::tuple<int64_t, int64_t, bool>> shapes = {
        {37, 200, true}, {5, 1000, true}, {3, 4100, false}};
    for (const auto& shape : shapes) {
      const int64_t rows = std::get<0>(shape), d = std::get<1>(shape);
      const bool seeded = std::get<2>(shape);
      for (bool plus_one : {false, true}) {
        auto x = (rnd({rows, d}) * 3 + 0.5).to(dtype), w = rnd({d}) * 0.1;
        auto seed = seeded ? rnd({rows, d}) : torch::Tensor();
        auto got = Grads([&](auto& in) { return fused::RmsNorm(in[0], in[1], 1e-6, plus_one); },
                         {x, w}, seed);
        auto want = Grads(
            [&](auto& in) {
              auto xf = in[0].to(torch::kFloat32);
              xf = xf * torch::rsqrt(xf.pow(2).mean(-1, true) + 1e-6);
              if (plus_one) return (xf * (1.0 + in[1].to(torch::kFloat32))).to(dtype);
              return in[1] * xf.to(dtype);
            },
            {x, w}, seed);
        for (size_t i = 0; i < got.size(); ++i) {
          ExpectClose(got[i], want[i], rtol, atol,
                      "rmsnorm d " + std::to_string(d) + " plus_one " + std::to_string(plus_one) +
                          " output/grad " + std::to_string(i));
        }
      }
    }
    {
      auto q = rnd({29, 4, 64}), cos = rnd({29, 64}), sin = rnd({29, 64}), seed = rnd({29, 4, 64});
      auto got = Grads([&](auto& in) { return fused::Rotary(in[0], cos, sin); }, {q}, seed);
      auto want = Grads(
          [&](auto& in) {
            auto c = cos.unsqueeze(1), s = sin.unsqueeze(1);
            return in[0] * c + RotateHalf(in[0]) * s;
          },
          {q}, seed);
      for (size_t i = 0; i < got.size(); ++i) {
        ExpectClose(got[i], want[i], rtol, atol, "rotary " + std::to_string(i));
      }
    }
    for (const std::string act : {"silu", "gelu", "gelu_pytorch_tanh"}) {
      auto g = rnd({53, 96}), u = rnd({53, 96}), seed = rnd({53, 96});
      auto got = Grads([&](auto& in) { return fused::Glu(in[0], in[1], act); }, {g, u}, seed);
      auto want = Grads(
          [&](auto& in) {
            auto a = act == "silu"   ? torch::silu(in[0])
                     : act == "gelu" ? torch::gelu(in[0])
                                     : torch::gelu(in[0], "tanh");
            return a * in[1];
          },
          {g, u}, seed);
      for (size_t i = 0; i < got.size(); ++i) {
        ExpectClose(got[i], want[i], rtol, atol, act + " " + std::to_string(i));
      }
    }
  }
}

TEST(FusedOpsGpuTest, DecoderWithFusedKernelsMatchesTheComposition) {
  if (Skip()) GTEST_SKIP() << "no CUDA device or no fused kernels in this build";
  const torch::Device cuda(torch::kCUDA, 0);
  for (Family f : kAllFamilies) {
    SCOPED_TRACE(FamilyModelType(f));
    const ModelConfig c = testing::GpuConfig(f);
    auto ids = torch::randint(3, 300, {3, 17}, at::detail::createCPUGenerator(4), torch::kInt64);
    auto mask = torch::ones({3, 17}, torch::kInt64);
    mask[2].slice(0, 12) = 0;
    auto resp = torch::zeros({3, 17}, torch::kInt64);
    resp.slice(1, 5) = 1;
    resp[2].slice(0, 12) = 0;
    std::vector<torch::Tensor> lps, hidden;
    std::vector<std::vector<torch::Tensor>> grads;
    for (bool on : {false, true}) {
      auto m = DecoderLM::RandomInit(c, HeadKind::kLanguageModel, 6, torch::kBFloat16, cuda);
      m->SetFusedKernels(on);
      m->SetRequiresGrad(true);
      const int64_t before = fused::Forwards();
      auto lp = m->SequenceLogProbs(ids, mask, resp);
      // Per layer: two norms, q and k rotary, the MLP product; then the final norm.
      EXPECT_EQ(fused::Forwards() - before, on ? c.num_layers * 5 + 1 : 0);
      lp.sum().backward();
      lps.push_back(lp.detach());
      {
        torch::NoGradGuard g;
        hidden.push_back(m->Hidden(ids, mask));
      }
      grads.emplace_back();
      for (const auto& [n, p] : m->named_parameters()) grads.back().push_back(p.grad());
    }
    ExpectClose(hidden[1], hidden[0], 2e-2, 1e-3, "hidden states");
    ExpectClose(lps[1], lps[0], 2e-2, 1e-3, "log-probs");
    for (size_t i = 0; i < grads[0].size(); ++i) {
      ExpectClose(grads[1][i], grads[0][i], 5e-2, 1e-4, "parameter " + std::to_string(i));
    }
  }
}

}  // namespace
}  // namespace rmgen
