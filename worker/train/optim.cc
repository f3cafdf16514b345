#include "worker/train/optim.h"

#include <ATen/Parallel.h>

#include <cmath>
#include <map>

#include "worker/train/adamw_kernel.h"

namespace rmgen {

AdamW::AdamW(std::vector<torch::Tensor> params, AdamWOptions options,
             std::vector<torch::Tensor> grads)
    : params_(std::move(params)), grads_(std::move(grads)), o_(options) {
  torch::NoGradGuard no_grad;
  for (const auto& p : params_) {
    // Low-precision weights train through a float32 master copy with float32 moments.
    const bool mixed = p.is_floating_point() && p.scalar_type() != torch::kFloat32;
    master_.push_back(mixed ? p.detach().to(torch::kFloat32).contiguous() : torch::Tensor());
    const torch::Tensor& like = mixed ? master_.back() : p;
    exp_avg_.push_back(torch::zeros_like(like, torch::MemoryFormat::Preserve));
    exp_avg_sq_.push_back(torch::zeros_like(like, torch::MemoryFormat::Preserve));
  }
}

namespace {

// One pass over a contiguous float32 CPU parameter, split over the intra-op threads.
void FusedAdamWCpu(float* p, const float* g, float* m, float* v, int64_t n, float decay, float w1,
                   float b2, float c2, float bc2_sqrt, float eps, float neg_step) {
  at::parallel_for(0, n, 1 << 14, [&](int64_t begin, int64_t end) {
    AdamWRange(p, g, m, v, begin, end, decay, w1, b2, c2, bc2_sqrt, eps, neg_step);
  });
}

bool Fusable(const torch::Tensor& p, const torch::Tensor& g, const torch::Tensor& m,
             const torch::Tensor& v) {
  for (const auto* t : {&p, &g, &m, &v}) {
    if (!t->device().is_cpu() || t->scalar_type() != torch::kFloat32 || !t->is_contiguous()) {
      return false;
    }
  }
  return g.numel() == p.numel();
}

}  // namespace

// CUDA with libtorch 2.x: every float32 (or master) parameter of the step in one fused
// multi-tensor kernel (ATen's _fused_adamw_, torch.optim.AdamW(fused=True)): one pass over
// each parameter, its gradient and moments instead of seven elementwise kernels a parameter.
// Returns false (nothing done) where it does not apply: CPU keeps its own fused loop, which
// is exact to PyTorch's default path.
bool AdamW::FusedStepCuda(double lr) {
#if TORCH_VERSION_MAJOR >= 2
  std::vector<torch::Tensor> ps, gs, ms, vs;
  std::vector<size_t> mixed;
  for (size_t i = 0; i < params_.size(); ++i) {
    const torch::Tensor& grad = grads_.empty() ? params_[i].grad() : grads_[i];
    if (!grad.defined()) continue;
    torch::Tensor& p = master_[i].defined() ? master_[i] : params_[i];
    if (!p.is_cuda() || p.scalar_type() != torch::kFloat32 || !p.is_contiguous()) return false;
    if (master_[i].defined()) mixed.push_back(i);
    ps.push_back(p);
    gs.push_back(grad.to(torch::kFloat32).contiguous());
    ms.push_back(exp_avg_[i]);
    vs.push_back(exp_avg_sq_[i]);
  }
  if (ps.empty()) return true;
  // The kernel reads each parameter's step count (already incremented, as PyTorch does).
  auto step = torch::full({}, double(step_), ps.front().options());
  const std::vector<torch::Tensor> steps(ps.size(), step);
  at::_fused_adamw_(ps, gs, ms, vs, {}, steps, lr, o_.beta1, o_.beta2, o_.weight_decay, o_.eps,
                    /*amsgrad=*/false, /*maximize=*/false);
  for (size_t i : mixed) params_[i].copy_(master_[i]);
  return true;
#else
  (void)lr;
  return false;
#endif
}

void AdamW::Step(double lr) {
  torch::NoGradGuard no_grad;
  ++step_;
  if (FusedStepCuda(lr)) return;
  const double bc1 = 1.0 - std::pow(o_.beta1, double(step_));
  const double bc2 = 1.0 - std::pow(o_.beta2, double(step_));
  const double step_size = lr / bc1;
  const double bc2_sqrt = std::sqrt(bc2);
  for (size_t i = 0; i < params_.size(); ++i) {
    torch::Tensor& param = params_[i];
    const torch::Tensor& grad = grads_.empty() ? param.grad() : grads_[i];
    if (!grad.defined()) continue;
    // bf16 weights: update the float32 master, then round it into the parameter.
    const bool mixed = master_[i].defined();
    torch::Tensor& p = mixed ? master_[i] : param;
    const torch::Tensor g = mixed ? grad.to(torch::kFloat32).contiguous() : grad;
    struct CopyBack {
      bool on;
      torch::Tensor &dst, &src;
      ~CopyBack() {
        if (on) dst.copy_(src);
      }
    } copy_back{mixed, param, p};
    // Decoupled weight decay first, then the Adam moments (torch.optim.AdamW, foreach off).
    const double lerp_weight = 1.0 - o_.beta1;
    if (Fusable(p, g, exp_avg_[i], exp_avg_sq_[i]) && lerp_weight < 0.5) {
      FusedAdamWCpu(p.data_ptr<float>(), g.data_ptr<float>(), exp_avg_[i].data_ptr<float>(),
                    exp_avg_sq_[i].data_ptr<float>(), p.numel(), float(1.0 - lr * o_.weight_decay),
                    float(lerp_weight), float(o_.beta2), float(1.0 - o_.beta2), float(bc2_sqrt),
                    float(o_.eps), float(-step_size));
      p.unsafeGetTensorImpl()->bump_version();  // as an in-place tensor op would
      continue;
    }
    if (o_.weight_decay != 0) p.mul_(1.0 - lr * o_.weight_decay);
    exp_avg_[i].lerp_(g, lerp_weight);
    exp_avg_sq_[i].mul_(o_.beta2).addcmul_(g, g, 1.0 - o_.beta2);
    auto denom = (exp_avg_sq_[i].sqrt() / bc2_sqrt).add_(o_.eps);
    p.addcdiv_(exp_avg_[i], denom, -step_size);
  }
}

void AdamW::ZeroGrad() {
  for (auto& p : params_) {
    if (p.grad().defined()) p.mutable_grad() = torch::Tensor();
  }
}

NamedTensors AdamW::StateDict() const {
  NamedTensors out;
  out.emplace_back("step", torch::tensor({step_}, torch::kInt64));
  for (size_t i = 0; i < params_.size(); ++i) {
    out.emplace_back("exp_avg." + std::to_string(i), exp_avg_[i]);
    out.emplace_back("exp_avg_sq." + std::to_string(i), exp_avg_sq_[i]);
    if (master_[i].defined()) out.emplace_back("master." + std::to_string(i), master_[i]);
  }
  return out;
}

Status AdamW::LoadStateDict(const NamedTensors& state) {
  std::map<std::string, torch::Tensor> m(state.begin(), state.end());
  if (!m.count("step")) return DataLossError("optimizer state: missing 'step'");
  torch::NoGradGuard no_grad;
  auto restore = [&](const std::string& name, torch::Tensor* dst) {
    auto it = m.find(name);
    if (it == m.end() || it->second.sizes() != dst->sizes()) {
      return DataLossError("optimizer state: missing or mis-shaped '" + name +
                           "' (was it saved for another model?)");
    }
    dst->copy_(it->second);
    return Status::Ok();
  };
  for (size_t i = 0; i < params_.size(); ++i) {
    RETURN_IF_ERROR(restore("exp_avg." + std::to_string(i), &exp_avg_[i]));
    RETURN_IF_ERROR(restore("exp_avg_sq." + std::to_string(i), &exp_avg_sq_[i]));
    // A master copy saved with the state wins over the rounded weights; without one (a
    // float32 run resumed in bf16, say) the master stays the loaded weights.
    const std::string master = "master." + std::to_string(i);
    if (master_[i].defined() && m.count(master)) RETURN_IF_ERROR(restore(master, &master_[i]));
  }
  step_ = m["step"].item<int64_t>();
  return Status::Ok();
}

double ScheduledLr(const std::string& schedule, double base_lr, int64_t step, int64_t total,
                   int64_t warmup) {
  if (step < warmup) return base_lr * double(step) / double(std::max<int64_t>(1, warmup));
  if (schedule == "constant") return base_lr;
  const double progress = double(step - warmup) / double(std::max<int64_t>(1, total - warmup));
  if (schedule == "cosine") {
    return base_lr * std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * progress)));
  }
  return base_lr *
         std::max(0.0, double(total - step) / double(std::max<int64_t>(1, total - warmup)));
}

double ClipGradNorm(const std::vector<torch::Tensor>& params, double max_norm) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> norms;
  for (const auto& p : params) {
    if (p.grad().defined()) norms.push_back(p.grad().norm(2).to(torch::kFloat32));
  }
  if (norms.empty()) return 0.0;
  const torch::Tensor total = torch::stack(norms).norm(2);
  if (max_norm > 0) {
    // In float32 tensors, as clip_grad_norm_ computes the coefficient.
    const torch::Tensor coef = (max_norm / (total + 1e-6)).clamp_max(1.0);
    if (coef.item<float>() < 1.0f) {
      for (const auto& p : params) {
        if (p.grad().defined()) p.grad().mul_(coef.to(p.grad().scalar_type()));
      }
    }
  }
  return total.item<double>();
}

}  // namespace rmgen
