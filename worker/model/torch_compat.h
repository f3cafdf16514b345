// The one place where libtorch 1.13 (Debian's CPU build) and libtorch 2.x (CUDA builds)
// differ for rmgen. Everything else includes this header instead of testing versions.
#pragma once

#include <ATen/autocast_mode.h>
#include <torch/torch.h>
#include <torch/version.h>

#include <utility>

#if __has_include(<c10/cuda/CUDACachingAllocator.h>) && TORCH_VERSION_MAJOR >= 2
#include <c10/cuda/CUDACachingAllocator.h>
#define RMGEN_CUDA_ALLOCATOR_STATS 1
#endif
#if __has_include(<ATen/cuda/CUDAContext.h>) && TORCH_VERSION_MAJOR >= 2
#include <ATen/cuda/CUDAContext.h>
#define RMGEN_CUDA_DEVICE_PROPERTIES 1
#endif

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

// Waits for the work queued on `device` (CUDA); nothing to wait for on CPU.
inline void Synchronize(const torch::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.index());
}

// The caching allocator's peak of allocated bytes on a CUDA device since the process started
// (or the last ResetDevicePeak); -1 on CPU or without the allocator's statistics.
inline int64_t DevicePeakBytes(const torch::Device& device) {
#ifdef RMGEN_CUDA_ALLOCATOR_STATS
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(
        device.has_index() ? device.index() : c10::DeviceIndex{0});
    return stats.allocated_bytes[0].peak;  // [0]: StatType::AGGREGATE in every 2.x
  }
#endif
  (void)device;
  return -1;
}

// The compute capability's major version of a CUDA device (8: A100, 9: H100/H200); 0 on CPU
// or where this libtorch cannot tell.
inline int CudaComputeMajor(const torch::Device& device) {
#ifdef RMGEN_CUDA_DEVICE_PROPERTIES
  if (device.is_cuda()) {
    return at::cuda::getDeviceProperties(device.has_index() ? device.index() : 0)->major;
  }
#endif
  (void)device;
  return 0;
}

inline void ResetDevicePeak(const torch::Device& device) {
#ifdef RMGEN_CUDA_ALLOCATOR_STATS
  if (device.is_cuda()) {
    c10::cuda::CUDACachingAllocator::resetPeakStats(device.has_index() ? device.index()
                                                                       : c10::DeviceIndex{0});
  }
#endif
  (void)device;
}

// Whether autocast is on for `device` now, and its dtype.
inline std::pair<bool, at::ScalarType> AutocastState(c10::DeviceType device) {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
  return {at::autocast::is_autocast_enabled(device), at::autocast::get_autocast_dtype(device)};
#else
  if (device == c10::DeviceType::CPU) {
    return {at::autocast::is_cpu_enabled(), at::autocast::get_autocast_cpu_dtype()};
  }
  return {at::autocast::is_enabled(), at::autocast::get_autocast_gpu_dtype()};
#endif
}

// Mixed precision for a scope: while it lives, the ops autocast covers (matmuls, linear,
// attention) run in `dtype` on `device` (CUDA or CPU); weights stay in their own dtype.
// Nesting is supported; the previous state is restored on destruction.
class AutocastGuard {
 public:
  AutocastGuard(c10::DeviceType device, at::ScalarType dtype, bool enabled)
      : device_(device), active_(enabled) {
    if (!active_) return;
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
    prev_enabled_ = at::autocast::is_autocast_enabled(device_);
    prev_dtype_ = at::autocast::get_autocast_dtype(device_);
    at::autocast::set_autocast_enabled(device_, true);
    at::autocast::set_autocast_dtype(device_, dtype);
#else
    if (device_ == c10::DeviceType::CPU) {
      prev_enabled_ = at::autocast::is_cpu_enabled();
      prev_dtype_ = at::autocast::get_autocast_cpu_dtype();
      at::autocast::set_cpu_enabled(true);
      at::autocast::set_autocast_cpu_dtype(dtype);
    } else {
      prev_enabled_ = at::autocast::is_enabled();
      prev_dtype_ = at::autocast::get_autocast_gpu_dtype();
      at::autocast::set_enabled(true);
      at::autocast::set_autocast_gpu_dtype(dtype);
    }
#endif
    at::autocast::increment_nesting();
  }
  ~AutocastGuard() {
    if (!active_) return;
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
    at::autocast::set_autocast_enabled(device_, prev_enabled_);
    at::autocast::set_autocast_dtype(device_, prev_dtype_);
#else
    if (device_ == c10::DeviceType::CPU) {
      at::autocast::set_cpu_enabled(prev_enabled_);
      at::autocast::set_autocast_cpu_dtype(prev_dtype_);
    } else {
      at::autocast::set_enabled(prev_enabled_);
      at::autocast::set_autocast_gpu_dtype(prev_dtype_);
    }
#endif
  }
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  c10::DeviceType device_;
  bool active_;
  bool prev_enabled_ = false;
  at::ScalarType prev_dtype_ = at::kBFloat16;
};

}  // namespace rmgen::compat
