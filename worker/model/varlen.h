// Attention over the real cells of a TokenLayout as variable-length segments, the layout of
// the flash-attention kernels (cumulative sequence lengths, no padding, no mask tensor).
//
// A row's real cells, in column order, are runs of one segment each: the shared run (segment
// 0, if any) first, then one run per continuation (segment s > 0). Each run is a query
// segment. Its keys are the shared run's cells followed by its own: the shared run attends to
// itself, a continuation to the shared prefix and itself. Causal attention aligned to the
// bottom right of each (queries x keys) block, which is the flash kernels' convention when a
// segment has fewer queries than keys, is then exactly the layout's rule (a key is visible
// when its position is <= the query's and it is shared or in the query's segment), given that
// positions count up by one along each key sequence. A sliding window W is a left window of
// W - 1 keys in that order. Layouts for which this does not hold (a segment in two runs, the
// shared run after a continuation, a gap in positions) have no plan and keep the masked path.
//
// The plan's cells index the real cells of the layout in row-major order (DecoderLM's Frame
// cells): queries are those cells in order, so the attention output needs no reordering; keys
// and values are gathered (the shared prefix once per continuation: keys and values only).
#pragma once

#include <cstdint>
#include <optional>

#include "worker/model/torch_compat.h"

namespace rmgen {

struct VarlenPlan {
  torch::Tensor cu_q, cu_k;  // (S + 1) int32: segment starts in the packed queries and keys
  torch::Tensor key_cells;   // (total keys) int64: the real cell each packed key comes from
  int64_t max_q = 0, max_k = 0;
  bool defined() const { return cu_q.defined(); }
};

// The plan of `positions` and `segments` (B, T) int64 (any device; read on the host), its
// tensors on `device`; nullopt when the layout is not expressible as above.
std::optional<VarlenPlan> PlanVarlen(const torch::Tensor& positions, const torch::Tensor& segments,
                                     torch::Device device);

// Whether this libtorch has the flash kernels' variable-length entry point with window
// arguments (flash-attention 2, whose causal mask is bottom-right aligned): 2.5 and later
// (built and tested against 2.7).
inline constexpr bool kHasVarlenFlash = TORCH_VERSION_MAJOR > 2 ||
                                        (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 5);

// q (N, H, hd), k and v (total keys, KV, hd) packed by the plan -> (N, H, hd). `window` > 0:
// a key at most window - 1 before the query. flash: the CUDA kernel (fp16 / bf16, head_dim a
// multiple of 8 up to 256, compute capability 8+; differentiable); otherwise the same math eagerly,
// one segment at a time (any device and dtype, softmax in float32): the CPU reference of the
// kernel's semantics, for tests.
torch::Tensor VarlenAttention(const torch::Tensor& q, const torch::Tensor& k,
                              const torch::Tensor& v, const VarlenPlan& plan, int64_t window,
                              double scale, bool flash);

}  // namespace rmgen
