#include "worker/train/objectives.h"

#include <cmath>
#include <limits>

namespace rmgen {

PairBatch Collate(const std::vector<TokenizedPair>& pairs, const std::vector<int64_t>& idx,
                  int64_t pad_id, torch::Device device) {
  const int64_t B = idx.size();
  int64_t T = 1;
  for (int64_t i : idx) {
    T = std::max<int64_t>(T, std::max(pairs[i].chosen.size(), pairs[i].rejected.size()));
  }
  auto ids = torch::full({2 * B, T}, pad_id, torch::kInt64);
  auto mask = torch::zeros({2 * B, T}, torch::kInt64);
  auto resp = torch::zeros({2 * B, T}, torch::kInt64);
  auto* pid = ids.data_ptr<int64_t>();
  auto* pm = mask.data_ptr<int64_t>();
  auto* pr = resp.data_ptr<int64_t>();
  PairBatch b;
  b.pairs = B;
  for (int64_t r = 0; r < 2 * B; ++r) {
    const TokenizedPair& p = pairs[idx[r % B]];
    const std::vector<int32_t>& seq = r < B ? p.chosen : p.rejected;
    const int64_t plen = r < B ? p.chosen_prompt_len : p.rejected_prompt_len;
    for (int64_t t = 0; t < static_cast<int64_t>(seq.size()); ++t) {
      pid[r * T + t] = seq[t];
      pm[r * T + t] = 1;
      pr[r * T + t] = t >= plen && t > 0 ? 1 : 0;
    }
    b.tokens += seq.size();
  }
  b.ids = ids.to(device);
  b.mask = mask.to(device);
  b.response = resp.to(device);
  return b;
}

torch::Tensor RewardLoss(const DecoderLM& model, const PairBatch& batch,
                         const torch::Tensor& margin, double center_coefficient,
                         StepMetrics* metrics) {
  const int64_t B = batch.pairs;
  auto scores = model.Scores(model.Hidden(batch.ids, batch.mask), batch.mask);  // (2B)
  auto rc = scores.slice(0, 0, B), rl = scores.slice(0, B);
  auto diff = rc - rl;
  if (margin.defined()) diff = diff - margin.to(diff.device());
  auto loss = -torch::log_sigmoid(diff).mean();
  if (center_coefficient != 0) loss = loss + center_coefficient * (rc + rl).pow(2).mean();
  if (metrics != nullptr) {
    torch::NoGradGuard g;
    (*metrics)["loss"] += loss.item<double>();
    (*metrics)["accuracy"] += (rc > rl).to(torch::kFloat32).mean().item<double>();
    (*metrics)["rewards/chosen"] += rc.mean().item<double>();
    (*metrics)["rewards/rejected"] += rl.mean().item<double>();
    (*metrics)["rewards/margins"] += (rc - rl).mean().item<double>();
  }
  return loss;
}

torch::Tensor ResponseLogProbs(const DecoderLM& model, const PairBatch& batch) {
  torch::NoGradGuard g;
  return model.SequenceLogProbs(batch.ids, batch.mask, batch.response);
}

torch::Tensor DpoLoss(const DecoderLM& policy, const PairBatch& batch,
                      const torch::Tensor& ref_logps, double beta, double label_smoothing,
                      StepMetrics* metrics) {
  const int64_t B = batch.pairs;
  torch::Tensor logit_means;  // (2B): per row, sum over response positions of the mean logit
  auto logps = policy.SequenceLogProbs(batch.ids, batch.mask, batch.response,
                                       metrics != nullptr ? &logit_means : nullptr);  // (2B)
  auto ref = ref_logps.to(logps.device());
  auto pc = logps.slice(0, 0, B), pl = logps.slice(0, B);
  auto rc = ref.slice(0, 0, B), rl = ref.slice(0, B);
  auto z = (pc - pl) - (rc - rl);
  auto losses = -(1.0 - label_smoothing) * torch::log_sigmoid(beta * z) -
                label_smoothing * torch::log_sigmoid(-beta * z);
  auto loss = losses.mean();
  if (metrics != nullptr) {
    torch::NoGradGuard g;
    auto chosen_r = beta * (pc - rc), rejected_r = beta * (pl - rl);
    (*metrics)["loss"] += loss.item<double>();
    (*metrics)["rewards/chosen"] += chosen_r.mean().item<double>();
    (*metrics)["rewards/rejected"] += rejected_r.mean().item<double>();
    (*metrics)["rewards/accuracies"] +=
        (chosen_r > rejected_r).to(torch::kFloat32).mean().item<double>();
    (*metrics)["rewards/margins"] += (chosen_r - rejected_r).mean().item<double>();
    (*metrics)["logps/chosen"] += pc.mean().item<double>();
    (*metrics)["logps/rejected"] += pl.mean().item<double>();
    // TRL's logits/chosen|rejected: the mean logit over every predicted response position
    // of the side and the whole vocabulary.
    auto positions = batch.response.slice(1, 1).sum(1).to(logit_means.device(), torch::kFloat32);
    auto side_mean = [&](int64_t from, int64_t to) {
      return (logit_means.slice(0, from, to).sum() /
              positions.slice(0, from, to).sum().clamp_min(1))
          .item<double>();
    };
    (*metrics)["logits/chosen"] += side_mean(0, B);
    (*metrics)["logits/rejected"] += side_mean(B, 2 * B);
  }
  return loss;
}

torch::Tensor SftLoss(const DecoderLM& model, const PairBatch& batch, StepMetrics* metrics) {
  const int64_t B = batch.pairs;
  auto ids = batch.ids.slice(0, 0, B), mask = batch.mask.slice(0, 0, B);
  auto resp = batch.response.slice(0, 0, B);
  auto logps = model.SequenceLogProbs(ids, mask, resp);
  auto n = resp.slice(1, 1).sum().to(torch::kFloat32).clamp_min(1.0);
  auto loss = -logps.sum() / n;
  if (metrics != nullptr) (*metrics)["loss"] += loss.item<double>();
  return loss;
}

void PairwiseMetrics::Add(double r_chosen, double r_rejected, const std::string& subset) {
  ++n;
  const bool c = r_chosen > r_rejected, t = r_chosen == r_rejected;
  correct += c;
  ties += t;
  margin_sum += r_chosen - r_rejected;
  if (!subset.empty()) {
    auto& s = subsets[subset];
    s[0] += 1;
    s[1] += c;
    s[2] += t;
  }
}

namespace {

struct SectionSubset {
  const char* section;
  const char* subset;
  double weight;
};

// REFERENCE section 2: RewardBench sections as prompt-count-weighted means of subsets.
const SectionSubset kRewardBench[] = {
    {"chat", "alpacaeval-easy", 100},
    {"chat", "alpacaeval-length", 95},
    {"chat", "alpacaeval-hard", 95},
    {"chat", "mt-bench-easy", 28},
    {"chat", "mt-bench-med", 40},
    {"chat_hard", "mt-bench-hard", 37},
    {"chat_hard", "llmbar-natural", 100},
    {"chat_hard", "llmbar-adver-neighbor", 134},
    {"chat_hard", "llmbar-adver-GPTInst", 92},
    {"chat_hard", "llmbar-adver-GPTOut", 47},
    {"chat_hard", "llmbar-adver-manual", 46},
    {"safety", "refusals-dangerous", 100},
    {"safety", "refusals-offensive", 100},
    {"safety", "xstest-should-refuse", 154},
    {"safety", "xstest-should-respond", 250},
    {"safety", "donotanswer", 136},
    {"reasoning", "math-prm", 984},
    {"reasoning", "hep-cpp", 164},
    {"reasoning", "hep-go", 164},
    {"reasoning", "hep-java", 164},
    {"reasoning", "hep-js", 164},
    {"reasoning", "hep-python", 164},
    {"reasoning", "hep-rust", 164},
};

}  // namespace

double RewardBenchSection(const std::string& section,
                          const std::map<std::string, std::array<int64_t, 3>>& subsets) {
  double num = 0, den = 0;
  for (const auto& s : kRewardBench) {
    if (section != s.section) continue;
    auto it = subsets.find(s.subset);
    if (it == subsets.end() || it->second[0] == 0) continue;
    num += s.weight * double(it->second[1]) / double(it->second[0]);
    den += s.weight;
  }
  return den > 0 ? num / den : std::numeric_limits<double>::quiet_NaN();
}

nlohmann::json PairwiseMetrics::ToJson() const {
  nlohmann::json j = {{"n", n},
                      {"accuracy", n ? double(correct) / n : 0.0},
                      {"ties", ties},
                      {"acc_tie_half", n ? (correct + 0.5 * ties) / n : 0.0},
                      {"mean_margin", n ? margin_sum / n : 0.0}};
  if (!subsets.empty()) {
    nlohmann::json s = nlohmann::json::object();
    for (const auto& [name, c] : subsets) {
      s[name] = {{"n", c[0]}, {"accuracy", double(c[1]) / c[0]}, {"ties", c[2]}};
    }
    j["subsets"] = s;
    nlohmann::json sections = nlohmann::json::object();
    for (const char* sec : {"chat", "chat_hard", "safety", "reasoning"}) {
      const double v = RewardBenchSection(sec, subsets);
      if (!std::isnan(v)) sections[sec] = v;
    }
    if (!sections.empty()) j["rewardbench_sections"] = sections;
  }
  return j;
}

}  // namespace rmgen
