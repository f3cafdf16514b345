#include "worker/train/objectives.h"

#include <cmath>
#include <limits>

#include "worker/data/rewardbench.h"

namespace rmgen {

namespace {

int64_t CommonPrefix(const TokenizedPair& p) {
  const size_t limit = std::min(p.chosen.size(), p.rejected.size());
  size_t n = 0;
  while (n < limit && p.chosen[n] == p.rejected[n]) ++n;
  return static_cast<int64_t>(n);
}

// kShared or kSeparate for these pairs, by LayoutFlops.
PairLayout CheaperLayout(const std::vector<TokenizedPair>& pairs, const std::vector<int64_t>& idx,
                         const ModelConfig& model) {
  int64_t shared_cells = 0, shared_cols = 1, cells = 0, cols = 1;
  for (int64_t i : idx) {
    const TokenizedPair& p = pairs[i];
    const int64_t c = p.chosen.size(), r = p.rejected.size(), row = c + r - CommonPrefix(p);
    shared_cells += row;
    shared_cols = std::max(shared_cols, row);
    cells += c + r;
    cols = std::max({cols, c, r});
  }
  const int64_t B = idx.size();
  return LayoutFlops(shared_cells, B, shared_cols, model) <= LayoutFlops(cells, 2 * B, cols, model)
             ? PairLayout::kShared
             : PairLayout::kSeparate;
}

}  // namespace

double LayoutFlops(int64_t cells, int64_t rows, int64_t cols, const ModelConfig& c) {
  const double D = c.hidden_size, F = c.intermediate_size, hd = c.head_dim;
  const double H = c.num_heads, KV = c.num_kv_heads;
  const double per_cell = 2.0 * (D * (H + 2.0 * KV) * hd + H * hd * D + 3.0 * D * F);
  // Scores and values (matmuls), and the mask and softmax over every score.
  const double per_row = double(cols) * double(cols) * H * (4.0 * hd + kAttentionElementwise);
  return double(c.num_layers) * (double(cells) * per_cell + double(rows) * per_row);
}

PairBatch Collate(const std::vector<TokenizedPair>& pairs, const std::vector<int64_t>& idx,
                  int64_t pad_id, torch::Device device, PairLayout layout,
                  const ModelConfig* model) {
  if (layout == PairLayout::kAuto) {
    layout = model != nullptr ? CheaperLayout(pairs, idx, *model) : PairLayout::kShared;
  }
  const int64_t B = idx.size();
  PairBatch b;
  b.kind = layout;
  b.pairs = B;
  b.sides = layout == PairLayout::kChosenOnly ? B : 2 * B;
  // A row is a list of (token, position, segment); each side lists its tokens' columns.
  struct Row {
    std::vector<int64_t> ids, pos, seg;
  };
  std::vector<Row> rows(layout == PairLayout::kSeparate ? 2 * B : B);
  std::vector<int64_t> last_row(b.sides), last_col(b.sides);
  std::vector<int64_t> from_row, from_col, targets, side;
  std::vector<int64_t> response_tokens(b.sides, 0);
  // Side s = sequence `seq` (prompt length plen) in row `r`, tokens from `skip` on appended to
  // the row in segment `segment`; tokens before `skip` are already in the row at columns 0..skip-1.
  auto place = [&](int64_t s, const std::vector<int32_t>& seq, int64_t plen, Row& row, int64_t r,
                   int64_t skip, int64_t segment) {
    const int64_t n = seq.size(), start = static_cast<int64_t>(row.ids.size());
    for (int64_t t = skip; t < n; ++t) {
      row.ids.push_back(seq[t]);
      row.pos.push_back(t);
      row.seg.push_back(segment);
    }
    auto column = [&](int64_t t) { return t < skip ? t : start + (t - skip); };
    for (int64_t t = std::max<int64_t>(plen, 1); t < n; ++t) {
      from_row.push_back(r);
      from_col.push_back(column(t - 1));
      targets.push_back(seq[t]);
      side.push_back(s);
      ++response_tokens[s];
    }
    last_row[s] = r;
    last_col[s] = n > 0 ? column(n - 1) : 0;
    b.tokens += n;
  };
  for (int64_t i = 0; i < B; ++i) {
    const TokenizedPair& p = pairs[idx[i]];
    switch (layout) {
      case PairLayout::kShared: {
        const int64_t L = CommonPrefix(p);
        for (int64_t t = 0; t < L; ++t) {
          rows[i].ids.push_back(p.chosen[t]);
          rows[i].pos.push_back(t);
          rows[i].seg.push_back(0);
        }
        place(i, p.chosen, p.chosen_prompt_len, rows[i], i, L, 1);
        place(B + i, p.rejected, p.rejected_prompt_len, rows[i], i, L, 2);
        break;
      }
      case PairLayout::kSeparate:
        place(i, p.chosen, p.chosen_prompt_len, rows[i], i, 0, 0);
        place(B + i, p.rejected, p.rejected_prompt_len, rows[B + i], B + i, 0, 0);
        break;
      case PairLayout::kChosenOnly:
      case PairLayout::kAuto:  // resolved above
        place(i, p.chosen, p.chosen_prompt_len, rows[i], i, 0, 0);
        break;
    }
  }
  const int64_t R = rows.size();
  int64_t T = 1;
  for (const Row& row : rows) T = std::max<int64_t>(T, row.ids.size());
  auto ids = torch::full({R, T}, pad_id, torch::kInt64);
  auto pos = torch::zeros({R, T}, torch::kInt64);
  auto seg = torch::full({R, T}, -1, torch::kInt64);
  auto* pid = ids.data_ptr<int64_t>();
  auto* ppos = pos.data_ptr<int64_t>();
  auto* pseg = seg.data_ptr<int64_t>();
  for (int64_t r = 0; r < R; ++r) {
    std::copy(rows[r].ids.begin(), rows[r].ids.end(), pid + r * T);
    std::copy(rows[r].pos.begin(), rows[r].pos.end(), ppos + r * T);
    std::copy(rows[r].seg.begin(), rows[r].seg.end(), pseg + r * T);
    b.cells += rows[r].ids.size();
  }
  std::vector<int64_t> last(b.sides), from(from_row.size());
  for (int64_t s = 0; s < b.sides; ++s) last[s] = last_row[s] * T + last_col[s];
  for (size_t k = 0; k < from.size(); ++k) from[k] = from_row[k] * T + from_col[k];
  auto vec = [&](const std::vector<int64_t>& v) {
    return torch::tensor(v, torch::kInt64).to(device);
  };
  b.layout = {ids.to(device), pos.to(device), seg.to(device)};
  b.last = vec(last);
  b.from = vec(from);
  b.targets = vec(targets);
  b.side = vec(side);
  b.response_tokens = vec(response_tokens);
  return b;
}

torch::Tensor RewardLoss(const DecoderLM& model, const PairBatch& batch,
                         const torch::Tensor& margin, double center_coefficient,
                         StepMetrics* metrics) {
  const int64_t B = batch.pairs;
  auto scores = model.ScoresAt(model.Hidden(batch.layout), batch.last);  // (2B)
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
  return model.SideLogProbs(model.Hidden(batch.layout), batch.from, batch.targets, batch.side,
                            batch.sides);
}

torch::Tensor DpoLoss(const DecoderLM& policy, const PairBatch& batch,
                      const torch::Tensor& ref_logps, double beta, double label_smoothing,
                      StepMetrics* metrics) {
  const int64_t B = batch.pairs;
  torch::Tensor logit_means;  // (2B): per row, sum over response positions of the mean logit
  auto logps = policy.SideLogProbs(policy.Hidden(batch.layout), batch.from, batch.targets,
                                   batch.side, batch.sides,
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
    auto positions = batch.response_tokens.to(logit_means.device(), torch::kFloat32);
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
  auto logps = model.SideLogProbs(model.Hidden(batch.layout), batch.from, batch.targets, batch.side,
                                  batch.sides);
  auto n = batch.response_tokens.slice(0, 0, B).sum().to(torch::kFloat32).clamp_min(1.0);
  auto loss = -logps.slice(0, 0, B).sum() / n.to(logps.device());
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

double RewardBenchSection(const std::string& section,
                          const std::map<std::string, std::array<int64_t, 3>>& subsets) {
  double num = 0, den = 0;
  for (const auto& s : kRewardBenchSubsets) {
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
