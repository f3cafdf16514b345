// The fused CUDA kernels (worker/model/fused_ops.h, label gpu) against the ATen compositions
// they replace, forward and backward, in float32 and bf16; then a decoder with them on against
// one with them off. Skipped where no CUDA device is visible or the kernels are not built.
#include <gtest/gtest.h>

#include <functional>
#include <vector>

#include "tests/tiny_model.h"
#include "worker/model/decoder.h"
#include "worker/model/fused_ops.h"

namespace rmgen {
namespace {

// |a - b| <= rtol * max|a| + atol, elementwise maximum.
void ExpectClose(const torch::Tensor& a, const torch::Tensor& b, double rtol, double atol,
                 const std::string& what) {
  auto x = a.to(torch::kCPU, torch::kFloat32), y = b.to(torch::kCPU, torch::kFloat32);
  const double scale = x.abs().max().item<double>();
  EXPECT_LE((x - y).abs().max().item<double>(), rtol * scale + atol) << what;
}

// Runs f on leaf copies of `inputs`, backpropagates `seed`, returns {output, input grads...}.
std::vector<torch::Tensor> Grads(const std::function<torch::Tensor(std::vector<torch::Tensor>&)>& f,
                                 const std::vector<torch::Tensor>& inputs,
                                 const torch::Tensor& seed) {
  std::vector<torch::Tensor> leaves;
  for (const auto& t : inputs) leaves.push_back(t.detach().clone().requires_grad_(true));
  auto y = f(leaves);
  y.backward(seed.to(y.scalar_type()));
  std::vector<torch::Tensor> out = {y.detach()};
  for (const auto& l : leaves) out.push_back(l.grad());
  return out;
}

torch::Tensor RotateHalf(const torch::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return torch::cat({-x.slice(-1, half), x.slice(-1, 0, half)}, -1);
}

TEST(FusedOpsGpuTest, KernelsMatchTheAtenCompositions) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  if (!fused::Available()) GTEST_SKIP() << "fused kernels not built";
  const torch::Device cuda(torch::kCUDA, 0);
  auto gen = at::detail::createCPUGenerator(2);
  for (torch::Dtype dtype : {torch::kFloat32, torch::kBFloat16}) {
    // float32: summation order only; bf16: within a couple of roundings (2^-8 each).
    const double rtol = dtype == torch::kFloat32 ? 1e-5 : 2e-2, atol = 1e-6;
    auto rnd = [&](std::vector<int64_t> shape) { return torch::randn(shape, gen).to(cuda, dtype); };
    SCOPED_TRACE(dtype == torch::kFloat32 ? "float32" : "bf16");
    for (bool plus_one : {false, true}) {
      auto x = rnd({37, 200}), w = rnd({200}) * 0.1, seed = rnd({37, 200});
      auto fused = Grads([&](auto& in) { return fused::RmsNorm(in[0], in[1], 1e-6, plus_one); },
                         {x, w}, seed);
      auto aten = Grads(
          [&](auto& in) {
            auto xf = in[0].to(torch::kFloat32);
            xf = xf * torch::rsqrt(xf.pow(2).mean(-1, true) + 1e-6);
            if (plus_one) return (xf * (1.0 + in[1].to(torch::kFloat32))).to(dtype);
            return in[1] * xf.to(dtype);
          },
          {x, w}, seed);
      for (size_t i = 0; i < fused.size(); ++i) {
        ExpectClose(fused[i], aten[i], rtol, atol,
                    "rmsnorm " + std::to_string(plus_one) + " output/grad " + std::to_string(i));
      }
    }
    {
      auto q = rnd({29, 4, 64}), cos = rnd({29, 64}), sin = rnd({29, 64}), seed = rnd({29, 4, 64});
      auto fused = Grads([&](auto& in) { return fused::Rotary(in[0], cos, sin); }, {q}, seed);
      auto aten = Grads(
          [&](auto& in) {
            auto c = cos.unsqueeze(1), s = sin.unsqueeze(1);
            return in[0] * c + RotateHalf(in[0]) * s;
          },
          {q}, seed);
      for (size_t i = 0; i < fused.size(); ++i) {
        ExpectClose(fused[i], aten[i], rtol, atol, "rotary " + std::to_string(i));
      }
    }
    for (const std::string act : {"silu", "gelu", "gelu_pytorch_tanh"}) {
      auto g = rnd({53, 96}), u = rnd({53, 96}), seed = rnd({53, 96});
      auto fused = Grads([&](auto& in) { return fused::Glu(in[0], in[1], act); }, {g, u}, seed);
      auto aten = Grads(
          [&](auto& in) {
            auto a = act == "silu"   ? torch::silu(in[0])
                     : act == "gelu" ? torch::gelu(in[0])
                                     : torch::gelu(in[0], "tanh");
            return a * in[1];
          },
          {g, u}, seed);
      for (size_t i = 0; i < fused.size(); ++i) {
        ExpectClose(fused[i], aten[i], rtol, atol, act + " " + std::to_string(i));
      }
    }
  }
}

TEST(FusedOpsGpuTest, DecoderWithFusedKernelsMatchesTheComposition) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  if (!fused::Available()) GTEST_SKIP() << "fused kernels not built";
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
    std::vector<torch::Tensor> lps;
    std::vector<std::vector<torch::Tensor>> grads;
    for (bool on : {false, true}) {
      auto m = DecoderLM::RandomInit(c, HeadKind::kLanguageModel, 6, torch::kBFloat16, cuda);
      m->SetFusedKernels(on);
      m->SetRequiresGrad(true);
      auto lp = m->SequenceLogProbs(ids, mask, resp);
      lp.sum().backward();
      lps.push_back(lp.detach());
      grads.emplace_back();
      for (const auto& [n, p] : m->named_parameters()) grads.back().push_back(p.grad());
    }
    ExpectClose(lps[1], lps[0], 2e-2, 1e-3, "log-probs");
    for (size_t i = 0; i < grads[0].size(); ++i) {
      ExpectClose(grads[1][i], grads[0][i], 5e-2, 1e-4, "parameter " + std::to_string(i));
    }
  }
}

}  // namespace
}  // namespace rmgen
