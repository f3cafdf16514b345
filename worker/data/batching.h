// Length-grouped batching (transformers' LengthGroupedSampler, seeded): shuffle, cut into
// mega-batches of `batch_size * mega_batch_mult`, sort each by length (longest first),
// cut into batches. Padding stays low while the order stays random across mega-batches.
// The longest batch comes first, so an out-of-memory shows at step 1, not at hour 9.
#pragma once

#include <cstdint>
#include <vector>

namespace rmgen {

// A seeded Fisher-Yates permutation of 0..n-1 (the same on every platform).
std::vector<int64_t> SeededPermutation(int64_t n, uint64_t seed);

std::vector<std::vector<int64_t>> LengthGroupedBatches(const std::vector<int64_t>& lengths,
                                                       int64_t batch_size, uint64_t seed,
                                                       int64_t mega_batch_mult = 50);

// Share of padding tokens when each batch is padded to its longest row; `lengths` are the
// row lengths (for pairs: both sides are rows of one forward pass, so pass both).
double PaddingFraction(const std::vector<std::vector<int64_t>>& batches,
                       const std::vector<std::vector<int64_t>>& row_lengths);

}  // namespace rmgen
