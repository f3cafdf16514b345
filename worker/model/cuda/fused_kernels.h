// Fused CUDA kernels for the decoder's elementwise and row-wise ops, forward and backward:
// RMSNorm, rotary embedding, and the gated MLP's act(gate) * up (SwiGLU, GeGLU). Plain
// launchers over device pointers (no torch here: this header is shared by the nvcc-compiled
// kernels and the autograd wrappers in worker/model/fused_ops.cc). Each op rounds where the
// ATen composition it replaces rounds (to the tensors' dtype after every op), and accumulates
// in float32, so the results match that composition to within one rounding of its dtype.
// Every launcher returns the launch's cudaError_t (0: cudaSuccess); an empty input launches
// nothing.
#pragma once

#include <cstdint>

namespace rmgen::cuda {

enum class DType { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };
enum class Act { kSilu = 0, kGeluTanh = 1, kGelu = 2 };

// x (rows, d), w (d) -> y (rows, d), rstd (rows) float32. plus_one (Gemma): y = (x r)(1 + w)
// computed in float32 and rounded once; else y = w * round(x r) (Llama's order).
int RmsNormForward(const void* x, const void* w, void* y, float* rstd, int64_t rows, int64_t d,
                   float eps, bool plus_one, DType dtype, void* stream);
// dx (rows, d) in dtype; dw_partial (RmsNormBackwardBlocks(rows), d) float32, one row of
// partial sums per block (no atomics: the caller sums them, deterministically).
int64_t RmsNormBackwardBlocks(int64_t rows);
int RmsNormBackward(const void* dy, const void* x, const void* w, const float* rstd, void* dx,
                    float* dw_partial, int64_t rows, int64_t d, bool plus_one, DType dtype,
                    void* stream);

// x (n, heads, hd), cos and sin (n, hd) -> y = x cos + rotate_half(x) sin; transpose: the
// backward, dx = dy cos + rotate_half^T(dy sin), for any tables.
int Rotary(const void* x, const void* cos, const void* sin, void* y, int64_t n, int64_t heads,
           int64_t hd, bool transpose, DType dtype, void* stream);

// gate, up (n) -> y = round(act(gate)) * up; backward: dgate = dy * up * act'(gate),
// dup = dy * round(act(gate)).
int GluForward(const void* gate, const void* up, void* y, int64_t n, Act act, DType dtype,
               void* stream);
int GluBackward(const void* dy, const void* gate, const void* up, void* dgate, void* dup, int64_t n,
                Act act, DType dtype, void* stream);

}  // namespace rmgen::cuda
