// Evaluation passes of rmgen-train, public so tests run the code the product runs: each rank
// computes its share of the pairs, and a gather gives every rank all the rows.
#pragma once

#include <torch/torch.h>

#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"
#include "worker/comm/communicator.h"
#include "worker/data/tokenize.h"
#include "worker/model/decoder.h"
#include "worker/train/objectives.h"

namespace rmgen {

// Rank r's contiguous share [begin, end) of n items over w ranks; earlier ranks take the
// remainder, so rank 0 is never empty while n > 0.
std::pair<int64_t, int64_t> ShardRange(int64_t n, int r, int w);

// Rows [begin, end) of a per-pair quantity computed by this rank -> all n rows on every
// rank, in pair order (one all-gather; shards padded to equal size on the wire).
StatusOr<torch::Tensor> GatherRows(Communicator* comm, const torch::Tensor& local, int64_t n,
                                   torch::Device device);

// Summed response log-probs (columns: chosen, rejected) of pairs [begin, end), in batches.
torch::Tensor RangeLogProbs(const DecoderLM& model, const std::vector<TokenizedPair>& pairs,
                            int64_t begin, int64_t end, int64_t batch_size, int64_t pad_id,
                            PairLayout layout);

struct EvalOptions {
  // exrm (the model's scalar head) | dporm (beta * (log pi - log pi_ref), the reference
  // log-probs given) | ref_free_sum | ref_free_avg (summed / per-token log pi)
  std::string reward = "exrm";
  double beta = 0.03;
  int64_t batch_size = 16;  // pairs per forward pass, per rank
  int64_t pad_id = 0;
  PairLayout layout = PairLayout::kAuto;
};

// Per-pair rewards of `pairs` under options.reward, (n, 2) float32 (chosen, rejected) on
// every rank: each rank computes its share, an all-gather gives all rows.
StatusOr<torch::Tensor> PairRewards(Communicator* comm, const DecoderLM& model,
                                    const std::vector<TokenizedPair>& pairs,
                                    const torch::Tensor& ref_chosen,
                                    const torch::Tensor& ref_rejected, const EvalOptions& options);

// Per-pair rewards of `pairs` (each rank its share, gathered) -> PairwiseMetrics::ToJson()
// (n, accuracy, ties, acc_tie_half, mean margin, subsets, RewardBench sections) plus
// reward, seconds and pairs_per_s; the same on every rank. `subsets` has one entry a pair.
StatusOr<nlohmann::json> EvaluatePairs(Communicator* comm, const DecoderLM& model,
                                       const std::vector<TokenizedPair>& pairs,
                                       const std::vector<std::string>& subsets,
                                       const torch::Tensor& ref_chosen,
                                       const torch::Tensor& ref_rejected,
                                       const EvalOptions& options);

}  // namespace rmgen
