// AdamW on CUDA (label gpu): the fused multi-tensor step (libtorch 2.x) against the CPU path,
// which is exact to torch.optim.AdamW's default, for float32 weights and for bf16 weights
// with float32 master copies. Skipped where no CUDA device is visible.
#include <gtest/gtest.h>

#include <vector>

#include "worker/train/optim.h"

namespace rmgen {
namespace {

TEST(AdamWGpuTest, FusedCudaStepsMatchTheCpuSteps) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const torch::Device cuda(torch::kCUDA, 0);
  for (torch::Dtype dtype : {torch::kFloat32, torch::kBFloat16}) {
    auto gen = at::detail::createCPUGenerator(4);
    std::vector<torch::Tensor> init = {torch::randn({64, 33}, gen), torch::randn({1000}, gen),
                                       torch::randn({7}, gen)};
    std::vector<std::vector<torch::Tensor>> grads;
    for (int s = 0; s < 5; ++s) {
      grads.emplace_back();
      for (const auto& t : init) grads.back().push_back(torch::randn(t.sizes(), gen));
    }
    std::vector<std::vector<torch::Tensor>> final_params;
    for (torch::Device d : {torch::Device(torch::kCPU), cuda}) {
      std::vector<torch::Tensor> params;
      // A copy each time: on CPU in float32, to() would return `init` itself, and the CPU run
      // would move the CUDA run's starting point.
      for (const auto& t : init) {
        params.push_back(t.to(d, dtype, false, /*copy=*/true).detach().requires_grad_(true));
      }
      AdamWOptions o;
      o.lr = 1e-2;
      o.weight_decay = 0.1;
      AdamW opt(params, o);
      for (const auto& step : grads) {
        for (size_t i = 0; i < params.size(); ++i) params[i].mutable_grad() = step[i].to(d, dtype);
        opt.Step(o.lr);
      }
      final_params.emplace_back();
      for (size_t i = 0; i < params.size(); ++i) {
        // Compare the float32 state: the master copies where the weights are bf16.
        const auto& p = opt.master()[i].defined() ? opt.master()[i] : params[i];
        final_params.back().push_back(p.detach().to(torch::kCPU, torch::kFloat32));
      }
    }
    for (size_t i = 0; i < init.size(); ++i) {
      EXPECT_TRUE(torch::allclose(final_params[0][i], final_params[1][i], 1e-5, 1e-6))
          << "dtype " << dtype << " parameter " << i << " max diff "
          << (final_params[0][i] - final_params[1][i]).abs().max().item<double>();
    }
  }
}

}  // namespace
}  // namespace rmgen
