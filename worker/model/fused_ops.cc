#include "worker/model/fused_ops.h"

#include <atomic>

#ifdef RMGEN_FUSED_KERNELS
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "worker/model/cuda/fused_kernels.h"
#endif

namespace rmgen::fused {

#ifdef RMGEN_FUSED_KERNELS
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

cuda::DType DTypeOf(const torch::Tensor& t) {
  switch (t.scalar_type()) {
    case torch::kBFloat16: return cuda::DType::kBFloat16;
    case torch::kFloat16: return cuda::DType::kFloat16;
    default: return cuda::DType::kFloat32;
  }
}

// The current stream of t's device (the device made current for the launch by a guard).
void* Stream(const torch::Tensor& t) {
  return at::cuda::getCurrentCUDAStream(t.device().index()).stream();
}

void Check(int status, const char* op) {
  TORCH_CHECK(status == 0, "fused ", op,
              ": kernel launch failed: ", cudaGetErrorString(static_cast<cudaError_t>(status)));
}

std::atomic<int64_t> forwards{0};

cuda::Act ActOf(const std::string& name) {
  if (name == "silu") return cuda::Act::kSilu;
  if (name == "gelu") return cuda::Act::kGelu;
  return cuda::Act::kGeluTanh;
}

struct RmsNormFn : public torch::autograd::Function<RmsNormFn> {
  static torch::Tensor forward(AutogradContext* ctx, torch::Tensor x, torch::Tensor w, double eps,
                               bool plus_one) {
    const c10::cuda::CUDAGuard guard(x.device());
    ++forwards;
    const int64_t d = x.size(-1), rows = x.numel() / d;
    auto y = torch::empty_like(x);
    auto rstd = torch::empty({rows}, x.options().dtype(torch::kFloat32));
    Check(cuda::RmsNormForward(x.data_ptr(), w.data_ptr(), y.data_ptr(), rstd.data_ptr<float>(),
                               rows, d, static_cast<float>(eps), plus_one, DTypeOf(x), Stream(x)),
          "RmsNorm");
    ctx->save_for_backward({x, w, rstd});
    ctx->saved_data["plus_one"] = plus_one;
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    auto s = ctx->get_saved_variables();
    const auto &x = s[0], &w = s[1], &rstd = s[2];
    const c10::cuda::CUDAGuard guard(x.device());
    auto dy = grad[0].to(x.scalar_type()).contiguous();
    const int64_t d = x.size(-1), rows = x.numel() / d;
    auto dx = torch::empty_like(x);
    // Per-block partial sums of dw, summed here (deterministic: no atomics).
    auto partial = torch::zeros({std::max<int64_t>(1, cuda::RmsNormBackwardBlocks(rows)), d},
                                x.options().dtype(torch::kFloat32));
    Check(cuda::RmsNormBackward(dy.data_ptr(), x.data_ptr(), w.data_ptr(), rstd.data_ptr<float>(),
                                dx.data_ptr(), partial.data_ptr<float>(), rows, d,
                                ctx->saved_data["plus_one"].toBool(), DTypeOf(x), Stream(x)),
          "RmsNorm backward");
    return {dx, partial.sum(0).to(w.scalar_type()), torch::Tensor(), torch::Tensor()};
  }
};

struct RotaryFn : public torch::autograd::Function<RotaryFn> {
  static torch::Tensor forward(AutogradContext* ctx, torch::Tensor x, torch::Tensor cos,
                               torch::Tensor sin) {
    const c10::cuda::CUDAGuard guard(x.device());
    ++forwards;
    auto y = torch::empty_like(x);
    Check(cuda::Rotary(x.data_ptr(), cos.data_ptr(), sin.data_ptr(), y.data_ptr(), x.size(0),
                       x.size(1), x.size(2), /*transpose=*/false, DTypeOf(x), Stream(x)),
          "Rotary");
    ctx->save_for_backward({cos, sin});
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    auto s = ctx->get_saved_variables();
    const c10::cuda::CUDAGuard guard(s[0].device());
    auto dy = grad[0].to(s[0].scalar_type()).contiguous();  // the tables' (and x's) dtype
    auto dx = torch::empty_like(dy);
    Check(cuda::Rotary(dy.data_ptr(), s[0].data_ptr(), s[1].data_ptr(), dx.data_ptr(), dy.size(0),
                       dy.size(1), dy.size(2), /*transpose=*/true, DTypeOf(dy), Stream(dy)),
          "Rotary backward");
    return {dx, torch::Tensor(), torch::Tensor()};  // the tables carry no gradient
  }
};

struct GluFn : public torch::autograd::Function<GluFn> {
  static torch::Tensor forward(AutogradContext* ctx, torch::Tensor gate, torch::Tensor up,
                               int64_t act) {
    const c10::cuda::CUDAGuard guard(gate.device());
    ++forwards;
    auto y = torch::empty_like(gate);
    Check(cuda::GluForward(gate.data_ptr(), up.data_ptr(), y.data_ptr(), gate.numel(),
                           static_cast<cuda::Act>(act), DTypeOf(gate), Stream(gate)),
          "Glu");
    ctx->save_for_backward({gate, up});
    ctx->saved_data["act"] = act;
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    auto s = ctx->get_saved_variables();
    const c10::cuda::CUDAGuard guard(s[0].device());
    auto dy = grad[0].to(s[0].scalar_type()).contiguous();
    auto dgate = torch::empty_like(s[0]), dup = torch::empty_like(s[1]);
    Check(cuda::GluBackward(dy.data_ptr(), s[0].data_ptr(), s[1].data_ptr(), dgate.data_ptr(),
                            dup.data_ptr(), dy.numel(),
                            static_cast<cuda::Act>(ctx->saved_data["act"].toInt()), DTypeOf(dy),
                            Stream(dy)),
          "Glu backward");
    return {dgate, dup, torch::Tensor()};
  }
};

}  // namespace

bool Available() { return true; }
int64_t Forwards() { return forwards.load(); }

bool Applies(std::initializer_list<const torch::Tensor*> tensors) {
  const torch::Tensor* first = *tensors.begin();
  const auto dtype = first->scalar_type();
  // Built for sm_80 and sm_90 (compute_80 PTX for later ones).
  if (!first->is_cuda() || compat::CudaComputeMajor(first->device()) < 8) return false;
  if (dtype != torch::kFloat32 && dtype != torch::kBFloat16 && dtype != torch::kFloat16) {
    return false;
  }
  for (const torch::Tensor* t : tensors) {
    if (!t->is_cuda() || t->scalar_type() != dtype || !t->is_contiguous() ||
        t->device() != first->device()) {
      return false;
    }
  }
  return true;
}

torch::Tensor RmsNorm(const torch::Tensor& x, const torch::Tensor& w, double eps, bool plus_one) {
  TORCH_CHECK(Applies({&x, &w}) && w.dim() == 1 && x.size(-1) == w.size(0),
              "fused::RmsNorm: x (..., D) and w (D), contiguous CUDA tensors of one dtype");
  return RmsNormFn::apply(x, w, eps, plus_one);
}

torch::Tensor Rotary(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  TORCH_CHECK(Applies({&x, &cos, &sin}) && x.dim() == 3 && cos.dim() == 2 &&
                  cos.sizes() == sin.sizes() && cos.size(0) == x.size(0) &&
                  cos.size(1) == x.size(2) && x.size(2) % 2 == 0,
              "fused::Rotary: x (N, H, hd), cos and sin (N, hd), contiguous CUDA, one dtype");
  return RotaryFn::apply(x, cos, sin);
}

torch::Tensor Glu(const torch::Tensor& gate, const torch::Tensor& up, const std::string& act) {
  TORCH_CHECK(Applies({&gate, &up}) && gate.sizes() == up.sizes(),
              "fused::Glu: gate and up of one shape, contiguous CUDA tensors of one dtype");
  return GluFn::apply(gate, up, static_cast<int64_t>(ActOf(act)));
}

#else  // no CUDA kernels in this build

bool Available() { return false; }
int64_t Forwards() { return 0; }
bool Applies(std::initializer_list<const torch::Tensor*>) { return false; }
torch::Tensor RmsNorm(const torch::Tensor&, const torch::Tensor&, double, bool) {
  TORCH_CHECK(false, "fused kernels are not built (needs a CUDA libtorch and the CUDA toolkit)");
}
torch::Tensor Rotary(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&) {
  TORCH_CHECK(false, "fused kernels are not built (needs a CUDA libtorch and the CUDA toolkit)");
}
torch::Tensor Glu(const torch::Tensor&, const torch::Tensor&, const std::string&) {
  TORCH_CHECK(false, "fused kernels are not built (needs a CUDA libtorch and the CUDA toolkit)");
}

#endif

}  // namespace rmgen::fused
