// The decoder's RMSNorm, rotary embedding and gated MLP product as fused CUDA kernels with
// autograd (worker/model/cuda/fused_kernels.cu), for DecoderLM::SetFusedKernels and
// runtime.fused_kernels. Built where libtorch has CUDA and the toolkit is present; elsewhere
// Available() is false and the decoder keeps the ATen composition. Each op takes contiguous
// CUDA tensors of one dtype (float32, bf16 or fp16) and matches the composition it replaces
// to within one rounding of that dtype (tests/gpu/fused_ops_gpu_test.cc).
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>

#include "worker/model/torch_compat.h"

namespace rmgen::fused {

// Whether the kernels are compiled into this build.
bool Available();
// Forward calls of the ops below so far in this process (tests check the kernels ran).
int64_t Forwards();
// Whether the ops below take these tensors (CUDA compute capability 8+, contiguous, one
// supported dtype, one device).
bool Applies(std::initializer_list<const torch::Tensor*> tensors);

// x (..., D), w (D) -> RMSNorm: w * round(x r) (plus_one: round(x r (1 + w))), r from float32.
torch::Tensor RmsNorm(const torch::Tensor& x, const torch::Tensor& w, double eps, bool plus_one);
// x (N, H, hd), cos and sin (N, hd) -> x cos + rotate_half(x) sin.
torch::Tensor Rotary(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);
// act(gate) * up; act: silu, gelu (exact) or gelu_pytorch_tanh / gelu_new (tanh).
torch::Tensor Glu(const torch::Tensor& gate, const torch::Tensor& up, const std::string& act);

}  // namespace rmgen::fused
