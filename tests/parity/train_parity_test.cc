// One reward step and one DPO step against TRL 0.13.0 (tests/parity/generate_train.py):
// loss, logged metrics, gradients, gradient norm and the parameters after one AdamW step
// (lr 1e-3, linear schedule over 10 steps, clip 1.0), from the same tiny weights and batch.
//
// Tolerances: losses, log-probs, rewards and metrics 1e-5; gradients rtol 1e-3 + atol 1e-6;
// updated parameters atol 1e-6 where |grad| >= 1e-5. Elsewhere Adam's first step moves a
// weight by about lr * sign(grad), so a last-bit difference in a near-zero gradient can move
// it by up to lr: those are only bounded by lr.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "common/file.h"
#include "tests/test_util.h"
#include "worker/model/checkpoint.h"
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
    return Collate(pairs, {0, 1, 2, 3}, /*pad_id=*/0, torch::kCPU, layout);
  }

 private:
  SafetensorsFile f_;
};

void ExpectNear(double a, double b, const std::string& what) {
  EXPECT_NEAR(a, b, kValueTol * std::max(1.0, std::abs(b))) << what;
}

// Gradients, clipping, one AdamW step: all compared with the golden.
void CheckStep(DecoderLM& model, const Golden& g, torch::Tensor loss,
               const std::string& prefix = "") {
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
    auto big = grads[i++].abs() >= kSmallGrad;
    EXPECT_LE(diff.masked_select(big).max().item<double>(), kParamAtol) << name;
    EXPECT_LE(diff.max().item<double>(), kLr * 1.01) << name;
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
      ExpectNear(loss, g.D(prefix + "loss"), prefix + "loss");
      for (const char* k :
           {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
            "logps/chosen", "logps/rejected", "logits/chosen", "logits/rejected"}) {
        ASSERT_TRUE(m.count(k)) << k;
        ExpectNear(m.at(k), g.D(prefix + k), prefix + k);
      }
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

}  // namespace
}  // namespace rmgen
