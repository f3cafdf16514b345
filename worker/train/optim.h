// AdamW, learning-rate schedules and gradient clipping, with PyTorch's and transformers'
// exact arithmetic (torch.optim.AdamW's default path, get_linear_schedule_with_warmup,
// get_cosine_schedule_with_warmup, clip_grad_norm_), and state that checkpoints exactly. On
// CUDA with libtorch 2.x the AdamW step is torch.optim.AdamW(fused=True)'s kernel instead:
// the same update to float rounding, not bit for bit.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "worker/model/safetensors.h"

namespace rmgen {

struct AdamWOptions {
  double lr = 5e-6;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double weight_decay = 0.0;
};

class AdamW {
 public:
  // `grads`: where each parameter's gradient is read from; empty: p.grad(). (ZeRO-1 passes
  // slices of flat parameter and gradient buckets.)
  AdamW(std::vector<torch::Tensor> params, AdamWOptions options,
        std::vector<torch::Tensor> grads = {});

  // One update with learning rate `lr` from the params' .grad(). Params without a gradient
  // are skipped (as PyTorch does).
  void Step(double lr);
  void ZeroGrad();
  int64_t steps() const { return step_; }

  // State as named tensors ("exp_avg.<i>", "exp_avg_sq.<i>", "step") for checkpoints.
  NamedTensors StateDict() const;
  Status LoadStateDict(const NamedTensors& state);

  // The moments, one per parameter (for sharded checkpoints).
  const std::vector<torch::Tensor>& exp_avg() const { return exp_avg_; }
  const std::vector<torch::Tensor>& exp_avg_sq() const { return exp_avg_sq_; }
  // float32 master copies of the parameters that are not float32 (bf16 weights), undefined
  // for float32 ones: the update applies to the master and the parameter gets it rounded,
  // so updates far below a bf16 ulp still add up.
  const std::vector<torch::Tensor>& master() const { return master_; }
  void set_steps(int64_t steps) { step_ = steps; }

 private:
  bool FusedStepCuda(double lr);

  std::vector<torch::Tensor> params_, grads_;
  std::vector<torch::Tensor> exp_avg_, exp_avg_sq_;  // same shapes as params_, float32 for
                                                     // a parameter with a master copy
  std::vector<torch::Tensor> master_;
  AdamWOptions o_;
  int64_t step_ = 0;
};

// Learning rate at optimizer step `step` (0-based) of `total`, as the transformers
// schedulers compute it: linear (warmup then linear decay to 0), cosine (warmup then half a
// cosine to 0) or constant (warmup then flat).
double ScheduledLr(const std::string& schedule, double base_lr, int64_t step, int64_t total,
                   int64_t warmup);

// Total L2 norm of the gradients (before clipping), then scales them by
// min(1, max_norm / (norm + 1e-6)) when max_norm > 0.
double ClipGradNorm(const std::vector<torch::Tensor>& params, double max_norm);

}  // namespace rmgen
