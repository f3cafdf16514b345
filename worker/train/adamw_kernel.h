// The element loop of AdamW over contiguous float32 arrays (no torch: it is compiled on its
// own, with flags that let it vectorize).
#pragma once

#include <cstdint>

namespace rmgen {

// Elements [begin, end): the operations, in the order and float precision, of
// torch.optim.AdamW's single-tensor path (AdamW::Step's general path): p *= decay (when
// decay != 1); m = lerp(m, g, w1) (w1 < 0.5); v = v * b2 + c2 * g * g;
// p += neg_step * m / (sqrt(v) / bc2_sqrt + eps). One pass over memory instead of seven.
void AdamWRange(float* p, const float* g, float* m, float* v, int64_t begin, int64_t end,
                float decay, float w1, float b2, float c2, float bc2_sqrt, float eps,
                float neg_step);

}  // namespace rmgen
