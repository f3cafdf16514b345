#include "worker/model/generate.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace rmgen {

namespace {

// SplitMix64's finalizer: a bijective mix of 64 bits.
uint64_t Mix(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace

const char* FinishReasonName(FinishReason r) {
  switch (r) {
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength: return "length";
  }
  return "length";
}

double SamplingUniform(uint64_t seed, uint64_t prompt_key, int64_t sample_index, int64_t step) {
  uint64_t h = Mix(seed);
  h = Mix(h ^ prompt_key);
  h = Mix(h ^ static_cast<uint64_t>(sample_index));
  h = Mix(h ^ static_cast<uint64_t>(step));
  return static_cast<double>(h >> 11) * (1.0 / 9007199254740992.0);  // 53 bits
}

Status ValidateGeneration(const ModelConfig& config, const std::vector<GenerationRequest>& requests,
                          const SamplingOptions& o) {
  if (!(o.temperature > 0 && o.temperature <= 100)) {
    return InvalidArgumentError("sampling.temperature must be in (0, 100]");
  }
  if (!(o.top_p > 0 && o.top_p <= 1)) {
    return InvalidArgumentError("sampling.top_p must be in (0, 1]");
  }
  if (o.top_k < 0) return InvalidArgumentError("sampling.top_k must be >= 0 (0: off)");
  if (o.max_new_tokens < 1) return InvalidArgumentError("sampling.max_new_tokens must be >= 1");
  if (o.batch_size < 1) return InvalidArgumentError("the generation batch size must be >= 1");
  for (int64_t id : o.stop_ids) {
    if (id < 0 || id >= config.vocab_size) {
      return InvalidArgumentError("stop token " + std::to_string(id) +
                                  " is outside the vocabulary (" +
                                  std::to_string(config.vocab_size) + ")");
    }
  }
  for (size_t i = 0; i < requests.size(); ++i) {
    const auto& p = requests[i].prompt;
    if (p.empty())
      return InvalidArgumentError("request " + std::to_string(i) + ": an empty prompt");
    if (static_cast<int64_t>(p.size()) >= config.max_position_embeddings) {
      return InvalidArgumentError("request " + std::to_string(i) + ": the prompt has " +
                                  std::to_string(p.size()) +
                                  " tokens, no room for a new one within the model's context (" +
                                  std::to_string(config.max_position_embeddings) + ")");
    }
    for (int64_t id : p) {
      if (id < 0 || id >= config.vocab_size) {
        return InvalidArgumentError("request " + std::to_string(i) + ": token id " +
                                    std::to_string(id) + " is outside the vocabulary");
      }
    }
  }
  return Status::Ok();
}

torch::Tensor PickTokens(const torch::Tensor& logits, const SamplingOptions& o,
                         const std::vector<double>& uniforms) {
  if (o.greedy) return logits.argmax(-1).cpu();
  auto l = logits.to(torch::kCPU, torch::kFloat64);
  const int64_t B = l.size(0), V = l.size(1);
  TORCH_CHECK(static_cast<int64_t>(uniforms.size()) == B, "PickTokens: one uniform a row");
  if (o.temperature != 1.0) l = l / o.temperature;
  if (o.top_k > 0 && o.top_k < V) {
    auto kth = std::get<0>(l.topk(o.top_k, -1)).slice(1, o.top_k - 1);  // (B, 1)
    l = l.masked_fill(l < kth, -std::numeric_limits<double>::infinity());
  }
  auto probs = torch::softmax(l, -1);
  torch::Tensor order;  // the vocabulary index of each column of `probs`
  if (o.top_p < 1.0) {
    auto [sorted, idx] = probs.sort(-1, /*descending=*/true);
    auto before = sorted.cumsum(-1) - sorted;  // mass of the more likely tokens
    probs = sorted.masked_fill(before >= o.top_p, 0.0);
    order = idx;
  }
  auto cdf = probs.cumsum(-1);
  auto u = torch::tensor(uniforms, torch::kFloat64).view({B, 1});
  auto target = u * cdf.slice(1, V - 1);
  // The first column whose cumulative mass exceeds the target (never a zero-mass one).
  auto pick = (cdf <= target).sum(-1);
  auto last_positive = (V - 1) - (probs > 0).flip({-1}).to(torch::kInt64).argmax(-1);
  pick = torch::minimum(pick, last_positive);
  if (order.defined()) pick = order.gather(1, pick.view({B, 1})).view({B});
  return pick;
}

StatusOr<std::vector<Generation>> Generate(const DecoderLM& model,
                                           const std::vector<GenerationRequest>& requests,
                                           const SamplingOptions& o) {
  RETURN_IF_ERROR(ValidateGeneration(model.config(), requests, o));
  std::vector<Generation> out(requests.size());
  if (requests.empty()) return out;
  torch::NoGradGuard no_grad;
  const auto device = model.named_parameters().front().second.device();
  const int64_t context = model.config().max_position_embeddings;
  // Shortest prompts first: a batch pads little.
  std::vector<size_t> order(requests.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return requests[a].prompt.size() < requests[b].prompt.size();
  });
  auto is_stop = [&](int64_t id) {
    return std::find(o.stop_ids.begin(), o.stop_ids.end(), id) != o.stop_ids.end();
  };
  for (size_t start = 0; start < order.size(); start += o.batch_size) {
    std::vector<size_t> rows(order.begin() + start,
                             order.begin() + std::min(order.size(), start + o.batch_size));
    const int64_t B = rows.size();
    int64_t T = 0;
    for (size_t r : rows) T = std::max<int64_t>(T, requests[r].prompt.size());
    auto ids = torch::zeros({B, T}, torch::kInt64);
    auto mask = torch::zeros({B, T}, torch::kInt64);
    std::vector<int64_t> budget(B);  // new tokens row b may still produce
    for (int64_t b = 0; b < B; ++b) {
      const auto& p = requests[rows[b]].prompt;
      const int64_t n = p.size();
      ids[b].slice(0, 0, n).copy_(torch::tensor(p, torch::kInt64));
      mask[b].slice(0, 0, n).fill_(1);
      budget[b] = std::min<int64_t>(o.max_new_tokens, context - n);
    }
    const int64_t capacity = T + *std::max_element(budget.begin(), budget.end());
    KvCache cache;
    auto hidden = model.Prefill(ids, mask, capacity, &cache);  // (B, T, D)
    auto last = (mask.sum(1) - 1).to(device);
    auto h = hidden.index({torch::arange(B, last.options()), last});  // (B, D)
    std::vector<int64_t> active(B);  // batch row -> index into `rows`
    std::iota(active.begin(), active.end(), 0);
    for (int64_t step = 0;; ++step) {
      std::vector<double> u;
      u.reserve(active.size());
      for (int64_t a : active) {
        const auto& r = requests[rows[a]];
        u.push_back(o.greedy ? 0.0 : SamplingUniform(o.seed, r.prompt_key, r.sample_index, step));
      }
      auto next = PickTokens(model.Logits(h), o, u);
      auto acc = next.accessor<int64_t, 1>();
      std::vector<int64_t> keep, still;
      for (size_t i = 0; i < active.size(); ++i) {
        Generation& g = out[rows[active[i]]];
        g.tokens.push_back(acc[i]);
        if (is_stop(acc[i])) {
          g.finish = FinishReason::kStop;
        } else if (static_cast<int64_t>(g.tokens.size()) >= budget[active[i]]) {
          g.finish = FinishReason::kLength;
        } else {
          keep.push_back(static_cast<int64_t>(i));
          still.push_back(active[i]);
        }
      }
      if (still.empty()) break;
      if (still.size() != active.size()) {
        auto k = torch::tensor(keep, torch::kInt64).to(device);
        cache.Select(k);
        next = next.index_select(0, k.cpu());
      }
      active = std::move(still);
      h = model.DecodeStep(next.to(device), &cache);
    }
  }
  return out;
}

}  // namespace rmgen
