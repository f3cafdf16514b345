// The one place where libtorch 1.13 (Debian's CPU build) and libtorch 2.x (CUDA builds)
// differ for rmgen. Everything else includes this header instead of testing versions.
#pragma once

#include <torch/torch.h>
#include <torch/version.h>

namespace rmgen::compat {

inline constexpr bool kHasFusedSdpa = TORCH_VERSION_MAJOR >= 2;

// softmax(q k^T * scale + mask) v. q: (B, H, Tq, hd), k/v: (B, H, Tk, hd), additive mask
// broadcastable to (B, H, Tq, Tk) in q's dtype. libtorch 2.x dispatches to the fused
// kernels (flash / memory-efficient on CUDA); 1.13 has none, so the math runs eagerly with
// the softmax in float32, as transformers' eager attention does.
inline torch::Tensor ScaledDotProductAttention(const torch::Tensor& q, const torch::Tensor& k,
                                               const torch::Tensor& v,
                                               const torch::Tensor& additive_mask, double scale) {
#if TORCH_VERSION_MAJOR >= 2
  return at::scaled_dot_product_attention(q, k, v, additive_mask, /*dropout_p=*/0.0,
                                          /*is_causal=*/false, scale);
#else
  auto scores = torch::matmul(q, k.transpose(-2, -1)) * scale + additive_mask;
  auto probs = torch::softmax(scores.to(torch::kFloat32), -1).to(q.scalar_type());
  return torch::matmul(probs, v);
#endif
}

}  // namespace rmgen::compat
