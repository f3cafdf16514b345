#include "worker/train/evaluate.h"

#include <chrono>

#include "worker/train/data_parallel.h"

namespace rmgen {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

torch::Device DeviceOf(const DecoderLM& model) {
  return model.named_parameters().front().second.device();
}

}  // namespace

// Rank r's contiguous share [begin, end) of n items over w ranks; earlier ranks take the
// remainder, so rank 0 is never empty while n > 0.
std::pair<int64_t, int64_t> ShardRange(int64_t n, int r, int w) {
  const int64_t base = n / w, extra = n % w;
  const int64_t begin = r * base + std::min<int64_t>(r, extra);
  return {begin, begin + base + (r < extra ? 1 : 0)};
}

// Rows [begin, end) of a per-pair quantity computed by this rank -> all n rows on every
// rank, in pair order (one all-gather; shards padded to equal size on the wire).
StatusOr<torch::Tensor> GatherRows(Communicator* comm, const torch::Tensor& local, int64_t n,
                                   torch::Device device) {
  const int w = comm->size();
  if (w == 1) return local;
  const int64_t chunk = (n + w - 1) / w, k = local.size(1);
  auto buf =
      torch::zeros({w * chunk, k}, torch::TensorOptions().dtype(torch::kFloat32).device(device));
  const auto [b0, e0] = ShardRange(n, comm->rank(), w);
  buf.slice(0, comm->rank() * chunk, comm->rank() * chunk + (e0 - b0)).copy_(local);
  RETURN_IF_ERROR(comm->AllGather(TensorBuffer(buf))->Wait());
  auto out = torch::empty({n, k}, torch::kFloat32);
  auto host = buf.cpu();
  for (int r = 0; r < w; ++r) {
    const auto [b, e] = ShardRange(n, r, w);
    out.slice(0, b, e).copy_(host.slice(0, r * chunk, r * chunk + (e - b)));
  }
  return out;
}

// Summed response log-probs (columns: chosen, rejected) of pairs [begin, end), in batches.
torch::Tensor RangeLogProbs(const DecoderLM& model, const std::vector<TokenizedPair>& pairs,
                            int64_t begin, int64_t end, int64_t batch_size, int64_t pad_id,
                            PairLayout layout) {
  auto out = torch::zeros({end - begin, 2}, torch::kFloat32);
  torch::NoGradGuard g;
  for (int64_t s = begin; s < end; s += batch_size) {
    std::vector<int64_t> idx;
    for (int64_t i = s; i < std::min(end, s + batch_size); ++i) idx.push_back(i);
    PairBatch b = Collate(pairs, idx, pad_id, DeviceOf(model), layout, &model.config());
    auto lp = ResponseLogProbs(model, b).cpu();
    const int64_t B = idx.size();
    out.slice(0, s - begin, s - begin + B).select(1, 0).copy_(lp.slice(0, 0, B));
    out.slice(0, s - begin, s - begin + B).select(1, 1).copy_(lp.slice(0, B));
  }
  return out;
}

StatusOr<torch::Tensor> PairRewards(Communicator* comm, const DecoderLM& model,
                                    const std::vector<TokenizedPair>& pairs,
                                    const torch::Tensor& ref_chosen,
                                    const torch::Tensor& ref_rejected, const EvalOptions& o) {
  const std::string& reward = o.reward;
  const int64_t n = pairs.size();
  const auto [begin, end] = ShardRange(n, comm->rank(), comm->size());
  torch::NoGradGuard g;
  auto local = torch::zeros({end - begin, 2}, torch::kFloat32);
  for (int64_t s = begin; s < end; s += o.batch_size) {
    std::vector<int64_t> idx;
    for (int64_t i = s; i < std::min(end, s + o.batch_size); ++i) idx.push_back(i);
    PairBatch b = Collate(pairs, idx, o.pad_id, DeviceOf(model), o.layout, &model.config());
    const int64_t B = idx.size();
    torch::Tensor rewards;  // (2B)
    if (reward == "exrm") {
      rewards = model.ScoresAt(model.Hidden(b.layout), b.last).cpu();
    } else {
      rewards = ResponseLogProbs(model, b).cpu();
      if (reward == "dporm") {
        auto ref = torch::cat({ref_chosen.slice(0, s, s + B), ref_rejected.slice(0, s, s + B)});
        rewards = o.beta * (rewards - ref);
      } else if (reward == "ref_free_avg") {
        rewards = rewards / b.response_tokens.to(torch::kFloat32).clamp_min(1).cpu();
      }
    }
    local.slice(0, s - begin, s - begin + B).select(1, 0).copy_(rewards.slice(0, 0, B));
    local.slice(0, s - begin, s - begin + B).select(1, 1).copy_(rewards.slice(0, B));
  }
  return GatherRows(comm, local, n, DeviceOf(model));
}

StatusOr<json> EvaluatePairs(Communicator* comm, const DecoderLM& model,
                             const std::vector<TokenizedPair>& pairs,
                             const std::vector<std::string>& subsets,
                             const torch::Tensor& ref_chosen, const torch::Tensor& ref_rejected,
                             const EvalOptions& o) {
  const int64_t n = pairs.size();
  const auto t0 = Clock::now();
  ASSIGN_OR_RETURN(torch::Tensor all, PairRewards(comm, model, pairs, ref_chosen, ref_rejected, o));
  PairwiseMetrics m;
  auto acc = all.accessor<float, 2>();
  for (int64_t i = 0; i < n; ++i)
    m.Add(acc[i][0], acc[i][1], i < int64_t(subsets.size()) ? subsets[i] : std::string());
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  json j = m.ToJson();
  j["reward"] = o.reward;
  j["seconds"] = seconds;
  j["pairs_per_s"] = n / std::max(seconds, 1e-9);
  return j;
}

}  // namespace rmgen
