#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "worker/model/cuda/fused_kernels.h"

namespace rmgen::cuda {
namespace {

template <typename T>
__device__ __forceinline__ float Load(const T* p, int64_t i) {
  return static_cast<float>(p[i]);
}
template <>
__device__ __forceinline__ float Load<__nv_bfloat16>(const __nv_bfloat16* p, int64_t i) {
  return __bfloat162float(p[i]);
}
template <>
__device__ __forceinline__ float Load<__half>(const __half* p, int64_t i) {
  return __half2float(p[i]);
}
template <typename T>
__device__ __forceinline__ T Cast(float v) {
  return static_cast<T>(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 Cast<__nv_bfloat16>(float v) {
  return __float2bfloat16(v);
}
template <>
__device__ __forceinline__ __half Cast<__half>(float v) {
  return __float2half(v);
}
// v rounded to T and back: where the ATen composition stores an intermediate tensor.
template <typename T>
__device__ __forceinline__ float Round(float v);
template <>
__device__ __forceinline__ float Round<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ float Round<__nv_bfloat16>(float v) {
  return __bfloat162float(__float2bfloat16(v));
}
template <>
__device__ __forceinline__ float Round<__half>(float v) {
  return __half2float(__float2half(v));
}

constexpr int kThreads = 256;

// The sum of v over the block (every thread gets it).
__device__ float BlockSum(float v) {
  __shared__ float warp_sums[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  float total = 0;
  for (int i = 0; i < kThreads / 32; ++i) total += warp_sums[i];
  __syncthreads();
  return total;
}

template <typename T>
__global__ void RmsNormForwardKernel(const T* x, const T* w, T* y, float* rstd, int64_t d,
                                     float eps, bool plus_one) {
  const int64_t row = blockIdx.x;
  const T* xr = x + row * d;
  T* yr = y + row * d;
  float ss = 0;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    const float v = Load(xr, j);
    ss += v * v;
  }
  const float r = rsqrtf(BlockSum(ss) / float(d) + eps);
  if (threadIdx.x == 0) rstd[row] = r;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    const float n = Load(xr, j) * r;
    yr[j] = plus_one ? Cast<T>(n * (1.0f + Load(w, j))) : Cast<T>(Load(w, j) * Round<T>(n));
  }
}

// y_j = n_j w'_j with n = x r, r = (mean(x^2) + eps)^-1/2:
//   dx = r (w' dy) - x r^3 / d * sum_j(w'_j dy_j x_j),   dw_j = sum_rows dy_j n_j.
// Block b takes rows b, b + gridDim.x, ...; its dw partial sums go to dw_partial[b, :], each
// column written by one thread only.
template <typename T>
__global__ void RmsNormBackwardKernel(const T* dy, const T* x, const T* w, const float* rstd, T* dx,
                                      float* dw_partial, int64_t rows, int64_t d, bool plus_one) {
  float* dw = dw_partial + blockIdx.x * d;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = x + row * d;
    const T* gr = dy + row * d;
    const float r = rstd[row];
    float dot = 0;
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
      const float wj = plus_one ? 1.0f + Load(w, j) : Load(w, j);
      dot += wj * Load(gr, j) * Load(xr, j);
    }
    const float c = BlockSum(dot) * r * r * r / float(d);
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
      const float wj = plus_one ? 1.0f + Load(w, j) : Load(w, j);
      const float g = Load(gr, j), xv = Load(xr, j);
      dx[row * d + j] = Cast<T>(r * wj * g - xv * c);
      dw[j] += g * (plus_one ? xv * r : Round<T>(xv * r));
    }
  }
}

template <typename T>
__global__ void RotaryKernel(const T* x, const T* cos, const T* sin, T* y, int64_t n, int64_t heads,
                             int64_t hd, bool transpose) {
  const int64_t total = n * heads * hd, half = hd / 2;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = i % hd, cell = i / (heads * hd), base = i - j;
    const float c = Load(cos, cell * hd + j);
    if (!transpose) {
      // rotate_half(x)_j = -x_{j+h} (j < h), x_{j-h} (j >= h)
      const float rot = j < half ? -Load(x, base + j + half) : Load(x, base + j - half);
      const float s = Load(sin, cell * hd + j);
      y[i] = Cast<T>(Round<T>(Load(x, i) * c) + Round<T>(rot * s));
    } else {
      // The transpose: dx_j = dy_j cos_j + (j < h ? dy_{j+h} sin_{j+h} : -dy_{j-h} sin_{j-h})
      const int64_t k = j < half ? j + half : j - half;
      const float other = Load(x, base + k) * Load(sin, cell * hd + k);
      y[i] = Cast<T>(Load(x, i) * c + (j < half ? other : -other));
    }
  }
}

__device__ __forceinline__ float Activate(float g, Act act) {
  switch (act) {
    case Act::kSilu: return g / (1.0f + expf(-g));
    case Act::kGeluTanh: {
      const float k = 0.7978845608028654f;  // sqrt(2 / pi)
      return 0.5f * g * (1.0f + tanhf(k * (g + 0.044715f * g * g * g)));
    }
    default: return 0.5f * g * (1.0f + erff(g * 0.7071067811865476f));
  }
}

__device__ __forceinline__ float ActivateGrad(float g, Act act) {
  switch (act) {
    case Act::kSilu: {
      const float s = 1.0f / (1.0f + expf(-g));
      return s * (1.0f + g * (1.0f - s));
    }
    case Act::kGeluTanh: {
      const float k = 0.7978845608028654f;
      const float inner = k * (g + 0.044715f * g * g * g);
      const float t = tanhf(inner);
      return 0.5f * (1.0f + t) + 0.5f * g * (1.0f - t * t) * k * (1.0f + 3.0f * 0.044715f * g * g);
    }
    default:
      return 0.5f * (1.0f + erff(g * 0.7071067811865476f)) +
             g * 0.3989422804014327f * expf(-0.5f * g * g);
  }
}

template <typename T>
__global__ void GluForwardKernel(const T* gate, const T* up, T* y, int64_t n, Act act) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    y[i] = Cast<T>(Round<T>(Activate(Load(gate, i), act)) * Load(up, i));
  }
}

template <typename T>
__global__ void GluBackwardKernel(const T* dy, const T* gate, const T* up, T* dgate, T* dup,
                                  int64_t n, Act act) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float g = Load(gate, i), d = Load(dy, i);
    dup[i] = Cast<T>(d * Round<T>(Activate(g, act)));
    dgate[i] = Cast<T>(Round<T>(d * Load(up, i)) * ActivateGrad(g, act));
  }
}

int Blocks(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<int>(b < 65535 * 16 ? b : 65535 * 16);
}

// Calls f with a null pointer of the dtype's element type.
template <typename F>
void Dispatch(DType dtype, F f) {
  switch (dtype) {
    case DType::kFloat32: f(static_cast<float*>(nullptr)); break;
    case DType::kBFloat16: f(static_cast<__nv_bfloat16*>(nullptr)); break;
    case DType::kFloat16: f(static_cast<__half*>(nullptr)); break;
  }
}

int Launched() { return static_cast<int>(cudaGetLastError()); }

}  // namespace

int RmsNormForward(const void* x, const void* w, void* y, float* rstd, int64_t rows, int64_t d,
                   float eps, bool plus_one, DType dtype, void* stream) {
  if (rows == 0 || d == 0) return 0;
  Dispatch(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    RmsNormForwardKernel<T><<<rows, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(x), static_cast<const T*>(w), static_cast<T*>(y), rstd, d, eps,
        plus_one);
  });
  return Launched();
}

int64_t RmsNormBackwardBlocks(int64_t rows) { return rows < 1024 ? rows : 1024; }

int RmsNormBackward(const void* dy, const void* x, const void* w, const float* rstd, void* dx,
                    float* dw_partial, int64_t rows, int64_t d, bool plus_one, DType dtype,
                    void* stream) {
  if (rows == 0 || d == 0) return 0;
  const int blocks = static_cast<int>(RmsNormBackwardBlocks(rows));
  Dispatch(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    RmsNormBackwardKernel<T><<<blocks, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(dy), static_cast<const T*>(x), static_cast<const T*>(w), rstd,
        static_cast<T*>(dx), dw_partial, rows, d, plus_one);
  });
  return Launched();
}

int Rotary(const void* x, const void* cos, const void* sin, void* y, int64_t n, int64_t heads,
           int64_t hd, bool transpose, DType dtype, void* stream) {
  if (n * heads * hd == 0) return 0;
  Dispatch(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    RotaryKernel<T><<<Blocks(n * heads * hd), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(x), static_cast<const T*>(cos), static_cast<const T*>(sin),
        static_cast<T*>(y), n, heads, hd, transpose);
  });
  return Launched();
}

int GluForward(const void* gate, const void* up, void* y, int64_t n, Act act, DType dtype,
               void* stream) {
  if (n == 0) return 0;
  Dispatch(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    GluForwardKernel<T><<<Blocks(n), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(gate), static_cast<const T*>(up), static_cast<T*>(y), n, act);
  });
  return Launched();
}

int GluBackward(const void* dy, const void* gate, const void* up, void* dgate, void* dup, int64_t n,
                Act act, DType dtype, void* stream) {
  if (n == 0) return 0;
  Dispatch(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    GluBackwardKernel<T><<<Blocks(n), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(dy), static_cast<const T*>(gate), static_cast<const T*>(up),
        static_cast<T*>(dgate), static_cast<T*>(dup), n, act);
  });
  return Launched();
}

}  // namespace rmgen::cuda
