// Text generation with a language model: batched prompts of any lengths, a KV cache, greedy
// or sampled decoding (temperature, top-k, top-p), a stop at a stop token or after
// max_new_tokens.
//
// Reproducibility: the random number used for request r's step s is a pure function of
// (sampling seed, r.prompt_key, r.sample_index, s). A request's output therefore does not
// depend on the batch it ran in, on the other requests, or on how many ranks shared the
// work (up to float differences of the batched forward pass, which could only move a draw
// that lands within ~1e-6 of a boundary between two tokens' probability mass).
//
// Filters follow transformers' logits warpers, in its order: temperature, then top-k (keep
// the k largest logits), then top-p (keep the smallest set of most likely tokens whose mass
// reaches top_p; at least one). Greedy decoding takes the arg max (the lowest index on a tie).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "worker/model/decoder.h"

namespace rmgen {

struct SamplingOptions {
  bool greedy = false;
  double temperature = 1.0;  // (0, 100]; ignored when greedy
  double top_p = 1.0;        // (0, 1]; 1: off
  int64_t top_k = 0;         // 0: off
  int64_t max_new_tokens = 128;
  std::vector<int64_t> stop_ids;  // generation ends after any of these (it is kept)
  uint64_t seed = 0;
  int64_t batch_size = 16;  // requests decoded together
};

struct GenerationRequest {
  std::vector<int64_t> prompt;  // token ids, BOS included where the template has one
  uint64_t prompt_key = 0;      // stable identity of the prompt (its index in the set)
  int64_t sample_index = 0;     // k of the K samples of this prompt
};

enum class FinishReason { kStop, kLength };
const char* FinishReasonName(FinishReason r);  // "stop" | "length"

struct Generation {
  std::vector<int64_t> tokens;  // the new tokens only (a stop token included)
  FinishReason finish = FinishReason::kLength;
};

// Checks options and requests against the model before any compute: a prompt that is
// empty or leaves no room for one new token within max_position_embeddings, and options
// out of range, are errors naming the request index or the option.
Status ValidateGeneration(const ModelConfig& config, const std::vector<GenerationRequest>& requests,
                          const SamplingOptions& options);

// One output per request, in request order. Requests are batched `batch_size` at a time
// (sorted by prompt length inside, so a batch pads little); finished rows leave the batch.
StatusOr<std::vector<Generation>> Generate(const DecoderLM& model,
                                           const std::vector<GenerationRequest>& requests,
                                           const SamplingOptions& options);

// The uniform draw in [0, 1) for (seed, prompt_key, sample_index, step).
double SamplingUniform(uint64_t seed, uint64_t prompt_key, int64_t sample_index, int64_t step);

// Next tokens from last-position logits (B, V) float32: arg max, or the inverse-CDF draw of
// each row's filtered distribution at uniforms[b].
torch::Tensor PickTokens(const torch::Tensor& logits, const SamplingOptions& options,
                         const std::vector<double>& uniforms);

}  // namespace rmgen
