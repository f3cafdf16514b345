#include "worker/data/batching.h"

#include <algorithm>
#include <random>

namespace rmgen {

std::vector<int64_t> SeededPermutation(int64_t n, uint64_t seed) {
  std::vector<int64_t> p(n);
  for (int64_t i = 0; i < n; ++i) p[i] = i;
  std::mt19937_64 rng(seed);
  for (int64_t i = n - 1; i > 0; --i) {
    const int64_t j = static_cast<int64_t>(rng() % static_cast<uint64_t>(i + 1));
    std::swap(p[i], p[j]);
  }
  return p;
}

std::vector<std::vector<int64_t>> LengthGroupedBatches(const std::vector<int64_t>& lengths,
                                                       int64_t batch_size, uint64_t seed,
                                                       int64_t mega_batch_mult) {
  std::vector<std::vector<int64_t>> batches;
  if (batch_size <= 0 || lengths.empty()) return batches;
  const std::vector<int64_t> perm = SeededPermutation(lengths.size(), seed);
  const int64_t mega = batch_size * std::max<int64_t>(1, mega_batch_mult);
  for (size_t start = 0; start < perm.size(); start += mega) {
    std::vector<int64_t> group(perm.begin() + start,
                               perm.begin() + std::min(perm.size(), start + size_t(mega)));
    std::stable_sort(group.begin(), group.end(),
                     [&](int64_t a, int64_t b) { return lengths[a] > lengths[b]; });
    for (size_t i = 0; i < group.size(); i += batch_size) {
      batches.emplace_back(group.begin() + i,
                           group.begin() + std::min(group.size(), i + size_t(batch_size)));
    }
  }
  // Longest batch first.
  size_t longest = 0;
  for (size_t i = 1; i < batches.size(); ++i) {
    if (lengths[batches[i][0]] > lengths[batches[longest][0]]) longest = i;
  }
  if (longest != 0) std::swap(batches[0], batches[longest]);
  return batches;
}

double PaddingFraction(const std::vector<std::vector<int64_t>>& batches,
                       const std::vector<std::vector<int64_t>>& row_lengths) {
  int64_t real = 0, total = 0;
  for (const auto& batch : batches) {
    int64_t longest = 0, rows = 0;
    for (int64_t i : batch) {
      for (const auto& lens : row_lengths) {
        longest = std::max(longest, lens[i]);
        real += lens[i];
        ++rows;
      }
    }
    total += longest * rows;
  }
  return total == 0 ? 0.0 : 1.0 - static_cast<double>(real) / static_cast<double>(total);
}

}  // namespace rmgen
