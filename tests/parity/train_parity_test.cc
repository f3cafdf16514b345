// One reward step and DPO steps (plain and label-smoothed) against TRL 0.13.0
// (tests/parity/generate_train.py): loss, logged metrics, gradients, gradient norm and the
// parameters after one AdamW step (lr 1e-3, linear schedule over 10 steps, clip 1.0), from the
// same tiny weights and batch; and EXRM pooling when the pad id is EOS.
//
// Tolerances: losses, log-probs, rewards and metrics 1e-5; gradients rtol 1e-3 + atol 1e-6;
// updated parameters atol 1e-6 where |grad| >= 1e-5, and moved from their initial value by at
// least lr/2 there. Elsewhere Adam's first step moves a weight by about lr * sign(grad), so a
// last-bit difference in a near-zero gradient can move it by up to lr: those are only bounded
// by lr (and a weight without gradient must not move).
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <nlohmann/json.hpp>

#include "common/file.h"
#include "tests/test_util.h"
#include "worker/model/checkpoint.h"
#include "worker/train/evaluate.h"
#include "worker/train/objectives.h"
#include "worker/train/optim.h"

namespace rmgen {
namespace {

using testing::SourcePath;

constexpr double kValueTol = 1e-5;
constexpr double kGradRtol = 1e-3, kGradAtol = 1e-6;
constexpr double kParamAtol = 1e-6, kSmallGrad = 1e-5, kLr = 1e-3;

class Golden {
 public:
  explicit Golden(const std::string& file)
      : f_(std::move(SafetensorsFile::Open(SourcePath("tests/parity/golden/train/" + file)))
               .value()) {}
  torch::Tensor T(const std::string& name, torch::Dtype d = torch::kFloat32) const {
    auto t = f_.Load(name, d);
    EXPECT_TRUE(t.ok()) << name;
    return t.ok() ? *t : torch::Tensor();
  }
  double D(const std::string& name) const { return T(name).item<double>(); }

  // The golden's pairs (right-padded rows, chosen then rejected; responses start at the
  // prompt lengths), collated by rmgen in `layout`.
  PairBatch Batch(PairLayout layout) const {
    return Collate(Pairs(), {0, 1, 2, 3}, /*pad_id=*/0, torch::kCPU, layout);
  }
  std::vector<TokenizedPair> Pairs() const {
    std::vector<TokenizedPair> pairs;
    auto real = [&](const std::string& side, int64_t i) {
      auto ids = T(side + "_input_ids", torch::kInt64)[i];
      const int64_t n = T(side + "_attention_mask", torch::kInt64)[i].sum().item<int64_t>();
      std::vector<int32_t> out;
      for (int64_t t = 0; t < n; ++t) out.push_back(ids[t].item<int32_t>());
      return out;
    };
    const auto cp = T("chosen_prompt_len", torch::kInt64),
               rp = T("rejected_prompt_len", torch::kInt64);
    for (int64_t i = 0; i < cp.size(0); ++i) {
      TokenizedPair p;
      p.chosen = real("chosen", i);
      p.rejected = real("rejected", i);
      p.chosen_prompt_len = cp[i].item<int32_t>();
      p.rejected_prompt_len = rp[i].item<int32_t>();
      pairs.push_back(std::move(p));
    }
    return pairs;
  }

 private:
  SafetensorsFile f_;
};

void ExpectNear(double a, double b, const std::string& what) {
  EXPECT_NEAR(a, b, kValueTol * std::max(1.0, std::abs(b))) << what;
}

// DPO's loss and TRL's logged metrics, against the golden's under `prefix`.
void CheckDpoMetrics(const Golden& g, const std::string& prefix, const StepMetrics& m,
                     double loss) {
  ExpectNear(loss, g.D(prefix + "loss"), prefix + "loss");
  for (const char* k :
       {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
        "logps/chosen", "logps/rejected", "logits/chosen", "logits/rejected"}) {
    ASSERT_TRUE(m.count(k)) << k;
    ExpectNear(m.at(k), g.D(prefix + k), prefix + k);
  }
}

// The perturbed policy of dpo_step.safetensors (the DPO goldens' trained policy).
std::unique_ptr<DecoderLM> PerturbedPolicy(const DecoderLM& ref) {
  Golden g("dpo_step.safetensors");
  NamedTensors init;
  for (const auto& [name, p] : ref.named_parameters()) init.emplace_back(name, g.T("init." + name));
  return std::make_unique<DecoderLM>(ref.config(), HeadKind::kLanguageModel, init);
}

// Gradients, clipping, one AdamW step: all compared with the golden.
void CheckStep(DecoderLM& model, const Golden& g, torch::Tensor loss,
               const std::string& prefix = "") {
  std::vector<torch::Tensor> before;
  for (const auto& [name, p] : model.named_parameters()) before.push_back(p.detach().clone());
  loss.backward();
  for (const auto& [name, p] : model.named_parameters()) {
    ASSERT_TRUE(p.grad().defined()) << name;
    auto want = g.T("grad." + name);
    EXPECT_TRUE(torch::allclose(p.grad(), want, kGradRtol, kGradAtol))
        << name << " max diff " << (p.grad() - want).abs().max().item<float>();
  }
  std::vector<torch::Tensor> grads;
  for (const auto& [name, p] : model.named_parameters()) grads.push_back(p.grad().clone());
  const double norm = ClipGradNorm(model.parameters(), 1.0);
  ExpectNear(norm, g.D(prefix + "grad_norm"), "grad_norm");
  const double lr = ScheduledLr("linear", kLr, 0, 10, 0);
  ExpectNear(lr, g.D(prefix + "lr"), "lr");
  AdamW opt(model.parameters(), AdamWOptions{kLr, 0.9, 0.999, 1e-8, 0.0});
  opt.Step(lr);
  size_t i = 0;
  for (const auto& [name, p] : model.named_parameters()) {
    auto want = g.T("param." + name);
    auto diff = (p.detach() - want).abs();
    const auto grad = grads[i].abs();
    auto big = grad >= kSmallGrad;
    ASSERT_TRUE(big.any().item<bool>()) << name << ": no gradient of at least " << kSmallGrad;
    EXPECT_LE(diff.masked_select(big).max().item<double>(), kParamAtol) << name;
    EXPECT_LE(diff.max().item<double>(), kLr * 1.01) << name;
    // The step moved the parameter: a weight that kept its initial value would match the
    // golden's updated one only where the golden did not move either. Adam's first step
    // moves a weight by about lr * g / (|g| + eps), so at least lr/2 where |g| >= 1e-5 (the
    // clipping coefficient, about 1 / grad_norm, leaves such a g far above eps = 1e-8).
    auto moved = (p.detach() - before[i]).abs();
    EXPECT_GE(moved.masked_select(big).min().item<double>(), kLr / 2) << name;
    EXPECT_FALSE((moved > 0).logical_and(grad == 0).any().item<bool>())
        << name << ": a weight without gradient moved";
    ++i;
  }
}

// Both batch layouts: a shared prompt row per pair (rmgen's default) and TRL's two rows.
const PairLayout kLayouts[] = {PairLayout::kShared, PairLayout::kSeparate};

TEST(TrainParityTest, RewardStepMatchesTrl) {
  for (PairLayout layout : kLayouts) {
    SCOPED_TRACE(layout == PairLayout::kShared ? "shared" : "separate");
    torch::set_num_threads(1);
    Golden g("reward_step.safetensors");
    LoadOptions lo;
    lo.head = HeadKind::kReward;
    auto m = LoadModel(SourcePath("tests/parity/golden/models/llama-rm"), lo);
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    m->model->SetRequiresGrad(true);
    const PairBatch b = g.Batch(layout);
    StepMetrics metrics;
    auto loss = RewardLoss(*m->model, b, torch::Tensor(), 0.0, &metrics);
    ExpectNear(loss.item<double>(), g.D("loss"), "loss");
    ExpectNear(metrics["accuracy"], g.D("accuracy"), "accuracy");
    // Per-pair rewards, and EXRM accuracy from them as the Python formula counts it.
    torch::Tensor scores;
    {
      torch::NoGradGuard ng;
      scores = m->model->ScoresAt(m->model->Hidden(b.layout), b.last);
    }
    const auto rc = g.T("rewards_chosen"), rl = g.T("rewards_rejected");
    EXPECT_TRUE(torch::allclose(scores.slice(0, 0, 4), rc, 0, kValueTol));
    EXPECT_TRUE(torch::allclose(scores.slice(0, 4), rl, 0, kValueTol));
    PairwiseMetrics pm;
    for (int i = 0; i < 4; ++i) pm.Add(scores[i].item<double>(), scores[4 + i].item<double>(), "");
    auto summary = nlohmann::json::parse(
        *ReadFile(SourcePath("tests/parity/golden/train/summary.json")))["accuracy_checks"];
    EXPECT_EQ(pm.correct, summary["exrm"]["correct"]);
    EXPECT_EQ(pm.ties, summary["exrm"]["ties"]);
    CheckStep(*m->model, g, loss);
  }
}

TEST(TrainParityTest, DpoStepMatchesTrl) {
  for (PairLayout layout : kLayouts) {
    SCOPED_TRACE(layout == PairLayout::kShared ? "shared" : "separate");
    torch::set_num_threads(1);
    Golden g("dpo_step.safetensors");
    auto summary = nlohmann::json::parse(
        *ReadFile(SourcePath("tests/parity/golden/train/summary.json")))["accuracy_checks"];
    auto ref = LoadModel(SourcePath("tests/parity/golden/models/llama-lm"), {});
    ASSERT_TRUE(ref.ok()) << ref.status().ToString();
    const PairBatch b = g.Batch(layout);
    const auto ref_lp = ResponseLogProbs(*ref->model, b);
    EXPECT_TRUE(
        torch::allclose(ref_lp.slice(0, 0, 4), g.T("perturbed.ref_chosen_logps"), 0, kValueTol));
    EXPECT_TRUE(
        torch::allclose(ref_lp.slice(0, 4), g.T("perturbed.ref_rejected_logps"), 0, kValueTol));

    auto check_metrics = [&](const std::string& prefix, const StepMetrics& m, double loss) {
      CheckDpoMetrics(g, prefix, m, loss);
    };
    // Policy == reference: every pair ties, loss log 2.
    {
      StepMetrics m;
      auto loss = DpoLoss(*ref->model, b, ref_lp, 0.03, 0.0, &m);
      check_metrics("equal.", m, loss.item<double>());
      EXPECT_NEAR(loss.item<double>(), std::log(2.0), 1e-6);
      PairwiseMetrics pm;
      auto lp = ResponseLogProbs(*ref->model, b);
      auto r = 0.03 * (lp - ref_lp);
      for (int i = 0; i < 4; ++i) pm.Add(r[i].item<double>(), r[4 + i].item<double>(), "");
      EXPECT_EQ(pm.ties, summary["dporm_equal"]["ties"]);
      EXPECT_EQ(pm.ToJson()["acc_tie_half"], summary["dporm_equal"]["acc_tie_half"]);
    }
    // A perturbed policy: a step with real gradients.
    NamedTensors init;
    for (const auto& [name, p] : ref->model->named_parameters()) {
      init.emplace_back(name, g.T("init." + name));
    }
    DecoderLM policy(ref->model->config(), HeadKind::kLanguageModel, init);
    policy.SetRequiresGrad(true);
    StepMetrics m;
    auto loss = DpoLoss(policy, b, ref_lp, 0.03, 0.0, &m);
    check_metrics("perturbed.", m, loss.item<double>());
    {
      PairwiseMetrics pm;
      auto lp = ResponseLogProbs(policy, b);
      auto r = 0.03 * (lp - ref_lp);
      for (int i = 0; i < 4; ++i) pm.Add(r[i].item<double>(), r[4 + i].item<double>(), "");
      EXPECT_EQ(pm.correct, summary["dporm_perturbed"]["correct"]);
      EXPECT_EQ(pm.ties, summary["dporm_perturbed"]["ties"]);
    }
    CheckStep(policy, g, loss, "perturbed.");
  }
}

// Conservative DPO (label smoothing 0.1) against TRL 0.13.0's step from the same perturbed
// policy (dpo_smoothed_step.safetensors): loss, per-pair losses, metrics, gradients, update.
// Smoothing changes the loss by eps * beta * mean(z) (3e-4 here, 30 times the tolerance) and
// the gradients by about 20%: a DpoLoss that ignored it fails (checked below).
TEST(TrainParityTest, LabelSmoothedDpoStepMatchesTrl) {
  constexpr double kBeta = 0.03, kSmoothing = 0.1;
  for (PairLayout layout : kLayouts) {
    SCOPED_TRACE(layout == PairLayout::kShared ? "shared" : "separate");
    torch::set_num_threads(1);
    Golden g("dpo_smoothed_step.safetensors");
    auto ref = LoadModel(SourcePath("tests/parity/golden/models/llama-lm"), {});
    ASSERT_TRUE(ref.ok()) << ref.status().ToString();
    const PairBatch b = g.Batch(layout);
    const auto ref_lp = ResponseLogProbs(*ref->model, b);
    EXPECT_TRUE(
        torch::allclose(ref_lp.slice(0, 0, 4), g.T("smoothed.ref_chosen_logps"), 0, kValueTol));
    EXPECT_TRUE(
        torch::allclose(ref_lp.slice(0, 4), g.T("smoothed.ref_rejected_logps"), 0, kValueTol));
    auto policy = PerturbedPolicy(*ref->model);
    // Per-pair losses: each pair as a batch of its own.
    const auto pairs = g.Pairs();
    const auto losses = g.T("smoothed.losses");
    for (int64_t i = 0; i < 4; ++i) {
      const PairBatch one = Collate(pairs, {i}, /*pad_id=*/0, torch::kCPU, layout);
      auto r = torch::stack({ref_lp[i], ref_lp[4 + i]});
      ExpectNear(DpoLoss(*policy, one, r, kBeta, kSmoothing, nullptr).item<double>(),
                 losses[i].item<double>(), "losses[" + std::to_string(i) + "]");
    }
    // Without the smoothing the loss is another one.
    EXPECT_GT(std::abs(DpoLoss(*policy, b, ref_lp, kBeta, 0.0, nullptr).item<double>() -
                       g.D("smoothed.loss")),
              10 * kValueTol);
    policy->SetRequiresGrad(true);
    StepMetrics m;
    auto loss = DpoLoss(*policy, b, ref_lp, kBeta, kSmoothing, &m);
    CheckDpoMetrics(g, "smoothed.", m, loss.item<double>());
    CheckStep(*policy, g, loss, "smoothed.");
  }
}

// EXRM with pad = EOS (Zephyr: pad is </s>, which also closes every turn of the prompt):
// exrm_pad_eos.safetensors has llama-rm's scores at the last position the attention mask
// keeps, and transformers 4.46's own pooled logits, which stop before the first pad id in
// the row (a mid-prompt EOS) and differ from them by more than 1e-3 on every side. rmgen's
// pairs collated with pad id 2 give the mask-based scores within 1e-5: a pooling that searched
// for the pad id would give transformers' values and fail.
TEST(TrainParityTest, ExrmPoolsAtTheLastMaskedPositionWhenPadIsEos) {
  constexpr int64_t kEos = 2;
  torch::set_num_threads(1);
  Golden g("exrm_pad_eos.safetensors");
  LoadOptions lo;
  lo.head = HeadKind::kReward;
  auto m = LoadModel(SourcePath("tests/parity/golden/models/llama-rm"), lo);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  const auto pairs = g.Pairs();
  ASSERT_EQ(pairs.size(), 3u);
  for (const auto& p : pairs) {  // EOS inside the text, not only at its end
    for (const auto* seq : {&p.chosen, &p.rejected}) {
      EXPECT_EQ(seq->back(), kEos);
      EXPECT_NE(std::find(seq->begin(), seq->end() - 1, kEos), seq->end() - 1);
    }
  }
  const auto want = torch::cat({g.T("scores_chosen"), g.T("scores_rejected")});
  const auto hf = torch::cat({g.T("hf_scores_chosen"), g.T("hf_scores_rejected")});
  ASSERT_TRUE(((want - hf).abs() > 1e-3).all().item<bool>());
  torch::NoGradGuard ng;
  for (PairLayout layout : {PairLayout::kShared, PairLayout::kSeparate}) {
    SCOPED_TRACE(layout == PairLayout::kShared ? "shared" : "separate");
    const PairBatch b = Collate(pairs, {0, 1, 2}, /*pad_id=*/kEos, torch::kCPU, layout);
    // The padding really is EOS.
    auto pad = b.layout.segments < 0;
    ASSERT_TRUE(pad.any().item<bool>());
    EXPECT_TRUE((b.layout.ids.masked_select(pad) == kEos).all().item<bool>());
    auto scores = m->model->ScoresAt(m->model->Hidden(b.layout), b.last);
    EXPECT_TRUE(torch::allclose(scores, want, 0, kValueTol))
        << "max diff " << (scores - want).abs().max().item<double>();
    EXPECT_TRUE(((scores - hf).abs() > 1e-3).all().item<bool>());
    StepMetrics metrics;
    ExpectNear(RewardLoss(*m->model, b, torch::Tensor(), 0.0, &metrics).item<double>(), g.D("loss"),
               "loss");
  }
  // The padded-rows path (Scores from the attention mask) agrees.
  for (const std::string side : {"chosen", "rejected"}) {
    auto ids = g.T(side + "_input_ids", torch::kInt64);
    auto mask = g.T(side + "_attention_mask", torch::kInt64);
    auto scores = m->model->Scores(m->model->Hidden(ids, mask), mask);
    EXPECT_TRUE(torch::allclose(scores, g.T("scores_" + side), 0, kValueTol)) << side;
  }
}

// The DPORM evaluation rmgen-train runs (reference log-probs from its reference pass, then
// EvaluatePairs), on the golden pairs, against TRL's own numbers for the same policies: its
// implicit-reward accuracy (DPOTrainer's rewards/accuracies, strict >) and mean margin
// (rewards/margins). Nothing is recomputed in the test.
TEST(TrainParityTest, DpormEvaluationMatchesTrlsImplicitRewardAccuracy) {
  torch::set_num_threads(1);
  Golden g("dpo_step.safetensors");
  auto ref = LoadModel(SourcePath("tests/parity/golden/models/llama-lm"), {});
  ASSERT_TRUE(ref.ok()) << ref.status().ToString();
  const auto pairs = g.Pairs();
  auto comm = NewSingleCommunicator();
  NamedTensors init;
  for (const auto& [name, p] : ref->model->named_parameters()) {
    init.emplace_back(name, g.T("init." + name));
  }
  DecoderLM perturbed(ref->model->config(), HeadKind::kLanguageModel, init);
  for (PairLayout layout : {PairLayout::kAuto, PairLayout::kSeparate}) {
    SCOPED_TRACE(layout == PairLayout::kAuto ? "auto" : "separate");
    // Batches of 3 over 4 pairs: a full and a partial batch, as in a real eval set.
    const auto ref_lp = RangeLogProbs(*ref->model, pairs, 0, 4, 3, /*pad_id=*/0, layout);
    EvalOptions o;
    o.reward = "dporm";
    o.beta = 0.03;
    o.batch_size = 3;
    o.layout = layout;
    for (const std::string policy : {"equal", "perturbed"}) {
      SCOPED_TRACE(policy);
      const DecoderLM& model = policy == "equal" ? *ref->model : perturbed;
      auto m = EvaluatePairs(comm.get(), model, pairs, {}, ref_lp.select(1, 0).contiguous(),
                             ref_lp.select(1, 1).contiguous(), o);
      ASSERT_TRUE(m.ok()) << m.status().ToString();
      EXPECT_EQ((*m)["n"], 4);
      EXPECT_NEAR((*m)["accuracy"].get<double>(), g.D(policy + ".rewards/accuracies"), 1e-7);
      EXPECT_NEAR((*m)["mean_margin"].get<double>(), g.D(policy + ".rewards/margins"), kValueTol);
    }
    // Policy == reference: TRL's accuracy is 0 because every pair ties; rmgen counts the
    // ties and gives them half in acc_tie_half.
    auto eq = EvaluatePairs(comm.get(), *ref->model, pairs, {}, ref_lp.select(1, 0).contiguous(),
                            ref_lp.select(1, 1).contiguous(), o);
    ASSERT_TRUE(eq.ok());
    EXPECT_EQ((*eq)["ties"], 4);
    EXPECT_EQ((*eq)["acc_tie_half"], 0.5);
  }
}

}  // namespace
}  // namespace rmgen
