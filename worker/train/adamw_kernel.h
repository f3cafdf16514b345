// The element loop of AdamW over contiguous float32 arrays (no torch: it is compiled on its
// own, with flags that let it vectorize).
#pragma once

#include <cstdint>

namespace rmgen {

// Elements [begin, end): the operations of torch.optim.AdamW's single-tensor path
// (AdamW::Step's general path), in its order and in float: p *= decay (when decay != 1);
// m = lerp(m, g, w1) (w1 < 0.5); v = v * b2 + c2 * g * g;
// p += neg_step * m / (sqrt(v) / bc2_sqrt + eps). One pass over memory instead of seven.
// Results agree with the tensor ops to float rounding, not always bit for bit (ATen's
// vectorized lerp may fuse a multiply-add; this loop never does).
void AdamWRange(float* p, const float* g, float* m, float* v, int64_t begin, int64_t end,
                float decay, float w1, float b2, float c2, float bc2_sqrt, float eps,
                float neg_step);

}  // namespace rmgen
