// Log-probabilities of target tokens from the language-model head, computed over vocabulary
// chunks with the head's matmul fused in, forward and backward, so the (tokens x vocabulary)
// logits never exist at once. With Gemma's 256k vocabulary and 8 pairs of 511 tokens, the
// float32 logits alone are 8 GiB, and log-sum-exp's backward holds several copies; in chunks
// of C rows of the head the peak is a few (tokens x C) tensors.
//
// Forward: per chunk c, logits_c = h W_c^T (in the compute dtype, then float32), its
// log-sum-exp per token, and the target's logit where the target falls in c; the chunks'
// log-sum-exps are combined exactly at the end. Backward recomputes logits_c and applies
//   d logp_n / d logits_n = onehot(target_n) - softmax(logits_n)
// chunk by chunk: dh += dlogits_c W_c, dW_c = dlogits_c^T h. The cost is one extra head
// matmul (the recompute) for memory proportional to C instead of V.
#pragma once

#include <cstdint>

#include "worker/model/torch_compat.h"

namespace rmgen {

// Default vocabulary rows per chunk: Mistral's and Llama's 32k vocabularies fit in one chunk
// (the plain path); Gemma's 256k runs in 8.
inline constexpr int64_t kDefaultVocabChunk = 32768;

// h (N, D), weight (V, D), targets (N) int64 in [0, V) -> log p(target_n | h_n): (N) float32,
// differentiable in h and weight (float64 throughout for float64 inputs). The logits are computed
// in `compute` (the dtype autocast gives the head's matmul at the call, or h's dtype without
// autocast). With `logit_sums`: also the sum over the vocabulary of each token's logits, (N), no
// gradient.
torch::Tensor ChunkedTokenLogProbs(const torch::Tensor& h, const torch::Tensor& weight,
                                   const torch::Tensor& targets, int64_t chunk,
                                   torch::Dtype compute, torch::Tensor* logit_sums = nullptr);

}  // namespace rmgen
