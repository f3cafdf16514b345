// The training objectives and pairwise evaluation, exactly as REFERENCE section 2 gives
// them (TRL's RewardTrainer and DPOTrainer semantics), over a batch of pairs collated as
// one forward pass (chosen and rejected together; see PairLayout).
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "worker/data/tokenize.h"
#include "worker/model/decoder.h"

namespace rmgen {

// How a batch of pairs is laid out for the forward pass.
//   kShared    one row per pair: the longest common prefix of the two sequences (usually the
//              prompt and more) once, then the rest of chosen, then the rest of rejected, which
//              see the prefix and themselves only (TokenLayout segments 0, 1, 2). Exactly
//              the two sequences' math with the prefix computed once.
//   kSeparate  two rows per pair, chosen rows then rejected rows (TRL's concatenated batch).
//   kChosenOnly  one row per pair, the chosen sequence only (SFT).
//   kAuto      kShared or kSeparate, whichever costs fewer estimated decoder FLOPs for this
//              batch (LayoutFlops). A shared row is longer than either side, so with short
//              common prefixes and long sequences its attention can outweigh what it saves.
enum class PairLayout { kShared, kSeparate, kChosenOnly, kAuto };

// Sides are indexed chosen 0..B-1, then rejected B..2B-1 (chosen only: 0..B-1).
struct PairBatch {
  TokenLayout layout;           // (R, T), right-padded rows
  torch::Tensor last;           // (S) int64: flat cell (row * T + column) of each side's last token
  torch::Tensor from, targets;  // (N) int64: each response token, and the cell predicting it
  torch::Tensor side;           // (N) int64: the side it belongs to
  torch::Tensor response_tokens;  // (S) int64: response tokens per side
  int64_t pairs = 0;              // B
  int64_t sides = 0;              // S: 2B, or B for kChosenOnly
  int64_t tokens = 0;             // tokens of all sides (a shared prefix counted for each side)
  int64_t cells = 0;              // tokens the model computes (a shared prefix once)
  PairLayout kind = PairLayout::kShared;  // the layout used (never kAuto)
};

// Estimated forward cost, in FLOPs, of `config`'s decoder layers over `cells` computed
// tokens in `rows` rows of `cols` columns: the token-wise projections and MLP per cell,
// attention over every column of each padded row. Attention scores also pay for the mask
// and softmax (elementwise passes, memory-bound): kAttentionElementwise FLOP-equivalents per
// score and head, fit on CPU with bench/run_layout_bench.sh (with 4 * head_dim = 128 FLOPs of
// matmul per score, the measured attention cost was about 3x its FLOPs).
inline constexpr double kAttentionElementwise = 256;
double LayoutFlops(int64_t cells, int64_t rows, int64_t cols, const ModelConfig& config);

// Collates pairs[idx] into one batch on `device`. `pad_id` fills the padding (it may equal
// EOS: the layout's segments, not the id, say what is padding). kAuto needs `model`.
PairBatch Collate(const std::vector<TokenizedPair>& pairs, const std::vector<int64_t>& idx,
                  int64_t pad_id, torch::Device device = torch::kCPU,
                  PairLayout layout = PairLayout::kShared, const ModelConfig* model = nullptr);

// Values logged for a step, under TRL's names ("loss", "rewards/chosen", ...).
using StepMetrics = std::map<std::string, double>;

// EXRM, Bradley-Terry: -mean log sigmoid(r_w - r_l - margin) + c * mean((r_w + r_l)^2).
// `margin` (B,) or undefined.
torch::Tensor RewardLoss(const DecoderLM& model, const PairBatch& batch,
                         const torch::Tensor& margin, double center_coefficient,
                         StepMetrics* metrics);

// DPO (sigmoid): z = (logp_w - logp_l) - (ref_w - ref_l),
// loss = -(1 - eps) log sigmoid(beta z) - eps log sigmoid(-beta z), averaged over pairs.
// `ref_logps` (2B,) float32 (zeros for reference-free).
torch::Tensor DpoLoss(const DecoderLM& policy, const PairBatch& batch,
                      const torch::Tensor& ref_logps, double beta, double label_smoothing,
                      StepMetrics* metrics);

// SFT on the chosen responses (the chosen sides of any layout): mean negative
// log-likelihood per response token.
torch::Tensor SftLoss(const DecoderLM& model, const PairBatch& batch, StepMetrics* metrics);

// Summed response log-probs of every side, no gradient: (S,) float32.
torch::Tensor ResponseLogProbs(const DecoderLM& model, const PairBatch& batch);

// Pairwise accuracy of a reward model on one eval set, from per-pair rewards.
struct PairwiseMetrics {
  int64_t n = 0, correct = 0, ties = 0;
  double margin_sum = 0;
  std::map<std::string, std::array<int64_t, 3>> subsets;  // subset -> {n, correct, ties}

  void Add(double r_chosen, double r_rejected, const std::string& subset);
  // {n, accuracy, ties, acc_tie_half, mean_margin, subsets{...}, and RewardBench sections
  // (chat, chat_hard, safety, reasoning) when the subsets are RewardBench's}.
  nlohmann::json ToJson() const;
};

// RewardBench section score: prompt-count-weighted mean of subset accuracies (REFERENCE
// section 2); nullopt-like NaN when none of the section's subsets is present.
double RewardBenchSection(const std::string& section,
                          const std::map<std::string, std::array<int64_t, 3>>& subsets);

}  // namespace rmgen
