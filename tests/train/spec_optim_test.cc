// Job specs (validation, defaults) and the optimizer pieces (AdamW, schedules, clipping)
// against their reference formulas.
#include <gtest/gtest.h>

#include <cmath>

#include "tests/train/train_util.h"
#include "worker/train/optim.h"

namespace rmgen {
namespace {

using testing::Spec;

const std::string kMin = "kind: dpo\nmodel: {path: /m}\ntokenizer: /t\ndata: {train: ultra}\n";

void ExpectSpecError(const std::string& yaml, const std::string& field, int line = 0) {
  auto s = Spec(yaml);
  ASSERT_FALSE(s.ok()) << yaml;
  EXPECT_NE(s.status().message().find("'" + field + "'"), std::string::npos)
      << s.status().message();
  if (line > 0) {
    EXPECT_NE(s.status().message().find("test.yaml:" + std::to_string(line)), std::string::npos)
        << s.status().message();
  }
}

TEST(JobSpecTest, DefaultsAreFilledAndResolved) {
  auto s = Spec(kMin);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->kind, JobKind::kDpo);
  EXPECT_DOUBLE_EQ(s->learning_rate, 1e-6);  // DPO's default
  EXPECT_DOUBLE_EQ(s->beta, 0.03);
  EXPECT_EQ(s->batch_size, 8);
  EXPECT_EQ(s->max_length, 512);
  EXPECT_EQ(s->max_prompt_length, 128);
  EXPECT_EQ(s->eval_reward, "dporm");
  EXPECT_EQ(s->resolved["train"]["adam_epsilon"], 1e-8);
  EXPECT_EQ(s->resolved["eval"]["beta"], 0.03);
  auto r = Spec("kind: reward\nmodel: {path: /m}\ndata: {train: {format: pairs, path: /x}}\n");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_DOUBLE_EQ(r->learning_rate, 5e-6);  // EXRM's default
  EXPECT_EQ(r->eval_reward, "exrm");
  EXPECT_EQ(r->train_set.format, "pairs");
  // JSON is YAML too.
  EXPECT_TRUE(
      Spec(R"({"kind": "sft", "model": {"config": "c.json"}, "data": {"train": "x"}})").ok());
}

TEST(JobSpecTest, InvalidSpecsNameTheField) {
  ExpectSpecError("model: {path: /m}\ndata: {train: x}\n", "kind");
  ExpectSpecError("kind: ppo\nmodel: {path: /m}\ndata: {train: x}\n", "kind");
  ExpectSpecError(kMin + "train:\n  learning_rate: fast\n", "train.learning_rate", 6);
  ExpectSpecError(kMin + "train:\n  epochs: 0\n", "train.epochs", 6);
  ExpectSpecError(kMin + "train:\n  lerning_rate: 0.1\n", "train.lerning_rate", 6);
  ExpectSpecError(kMin + "dpo:\n  beta: -1\n", "dpo.beta");
  ExpectSpecError(kMin + "train:\n  schedule: exponential\n", "train.schedule");
  ExpectSpecError("kind: reward\nmodel: {path: /m, config: /c}\ndata: {train: x}\n", "model");
  ExpectSpecError("kind: reward\nmodel: {path: /m}\n", "data.train");
  ExpectSpecError("kind: eval\nmodel: {path: /m}\n", "data.eval");
  ExpectSpecError("kind: reward\nmodel: {path: /m}\ndata: {train: {path: /x}}\n", "data.train");
  ExpectSpecError(kMin + "data:\n  max_prompt_length: 600\n", "data.max_prompt_length");
  ExpectSpecError(kMin + "template: chatml\n", "template");
  ExpectSpecError("kind: eval\nmodel: {path: /m}\ndata: {eval: [x]}\neval: {reward: dporm}\n",
                  "eval.reference");
  auto broken = Spec("kind: [unclosed\n");
  ASSERT_FALSE(broken.ok());
  EXPECT_NE(broken.status().message().find("not valid YAML"), std::string::npos);
}

TEST(OptimTest, AdamWMatchesTheReferenceFormula) {
  auto p = torch::tensor({1.0f, -2.0f, 3.0f});
  p.set_requires_grad(true);
  AdamWOptions o;
  o.lr = 0.1;
  o.weight_decay = 0.01;
  AdamW opt({p}, o);
  auto expect = p.detach().clone().to(torch::kFloat64);
  auto m = torch::zeros_like(expect), v = torch::zeros_like(expect);
  for (int t = 1; t <= 3; ++t) {
    auto g = torch::tensor({0.5, -1.0, 2.0 * t}, torch::kFloat64);
    p.mutable_grad() = g.to(torch::kFloat32);
    opt.Step(0.1);
    expect = expect * (1 - 0.1 * 0.01);
    m = 0.9 * m + 0.1 * g;
    v = 0.999 * v + 0.001 * g * g;
    auto mh = m / (1 - std::pow(0.9, t)), vh = v / (1 - std::pow(0.999, t));
    expect = expect - 0.1 * mh / (vh.sqrt() + 1e-8);
  }
  EXPECT_TRUE(torch::allclose(p.detach().to(torch::kFloat64), expect, 1e-5, 1e-6));
  EXPECT_EQ(opt.steps(), 3);
  // State round trip.
  auto q = torch::tensor({1.0f, -2.0f, 3.0f});
  AdamW opt2({q}, o);
  ASSERT_TRUE(opt2.LoadStateDict(opt.StateDict()).ok());
  EXPECT_EQ(opt2.steps(), 3);
  EXPECT_FALSE(AdamW({torch::zeros({2})}, o).LoadStateDict(opt.StateDict()).ok());
}

// bf16 weights train through a float32 master copy: the master follows exactly what a
// float32 AdamW on the same gradients computes, the weights are its rounding, and updates
// far below a bf16 ulp add up instead of vanishing. The state round-trips with the master.
TEST(OptimTest, Bf16WeightsTrainThroughAFloat32Master) {
  torch::manual_seed(5);
  const auto init = torch::randn({1000}) * 0.05;
  auto half = init.to(torch::kBFloat16), full = half.to(torch::kFloat32);
  AdamWOptions o;
  AdamW a({half}, o), b({full}, o);
  ASSERT_TRUE(a.master()[0].defined());
  EXPECT_FALSE(b.master()[0].defined());
  EXPECT_EQ(a.exp_avg()[0].scalar_type(), torch::kFloat32);
  const double lr = 1e-6;  // a bf16 ulp at 0.05 is 2.4e-4: each update alone rounds away
  for (int t = 0; t < 300; ++t) {
    auto g = torch::randn({1000}).to(torch::kBFloat16);
    half.mutable_grad() = g;
    full.mutable_grad() = g.to(torch::kFloat32);
    a.Step(lr);
    b.Step(lr);
  }
  EXPECT_TRUE(torch::equal(a.master()[0], full)) << (a.master()[0] - full).abs().max();
  EXPECT_TRUE(torch::equal(half, full.to(torch::kBFloat16)));
  // The updates (up to 300 lr) moved the weights past a rounding boundary somewhere.
  EXPECT_FALSE(torch::equal(half, init.to(torch::kBFloat16)));
  // Without the master, every step would have rounded back: bf16 AdamW arithmetic alone.
  auto naive = init.to(torch::kBFloat16);
  auto m = torch::zeros_like(naive), v = torch::zeros_like(naive);
  auto g1 = torch::randn({1000}).to(torch::kBFloat16);
  m = m.lerp(g1, 0.1);
  v = v.mul(0.999).addcmul(g1, g1, 0.001);
  auto stepped = naive.addcdiv((m / 0.1), (v / 0.001).sqrt().add(1e-8), -lr);
  // The premise: where |w| > 0.01 (a bf16 ulp >= 6e-5), one bf16 update rounds away.
  const auto big = naive.abs().to(torch::kFloat32) > 0.01;
  ASSERT_GT(big.sum().item<int64_t>(), 500);
  EXPECT_TRUE(torch::equal(stepped.masked_select(big), naive.masked_select(big)));
  // State round trip: a fresh optimizer over the rounded weights resumes from the master.
  auto q = half.clone();
  AdamW c({q}, o);
  ASSERT_TRUE(c.LoadStateDict(a.StateDict()).ok());
  EXPECT_TRUE(torch::equal(c.master()[0], a.master()[0]));
  auto g = torch::randn({1000}).to(torch::kBFloat16);
  half.mutable_grad() = g;
  q.mutable_grad() = g;
  a.Step(lr);
  c.Step(lr);
  EXPECT_TRUE(torch::equal(q, half));
  EXPECT_TRUE(torch::equal(c.master()[0], a.master()[0]));
}

TEST(OptimTest, FusedCpuLoopEqualsTheTensorOps) {
  // A contiguous float32 parameter takes the fused loop; a transposed one (not contiguous)
  // the tensor ops. 200k elements: several threads' chunks and a vector tail.
  torch::manual_seed(3);
  auto base = torch::randn({401, 499});
  auto fused = base.clone(), general = base.t().contiguous().t();  // same values, other strides
  ASSERT_TRUE(fused.is_contiguous());
  ASSERT_FALSE(general.is_contiguous());
  AdamWOptions o;
  o.weight_decay = 0.05;
  AdamW a({fused}, o), b({general}, o);
  for (int t = 1; t <= 4; ++t) {
    auto g = torch::randn({401, 499}) * (t == 2 ? 1e-6 : 1.0);
    fused.mutable_grad() = g;
    general.mutable_grad() = g.t().contiguous().t();
    a.Step(1e-3 * t);
    b.Step(1e-3 * t);
  }
  EXPECT_TRUE(torch::allclose(fused, general, 1e-6, 1e-9))
      << (fused - general).abs().max().item<float>();
  // The moments agree to float rounding (ATen's vectorized lerp may fuse a multiply-add).
  EXPECT_TRUE(torch::allclose(a.exp_avg()[0], b.exp_avg()[0], 1e-6, 1e-7));
  EXPECT_TRUE(torch::allclose(a.exp_avg_sq()[0], b.exp_avg_sq()[0], 1e-6, 1e-9));
  EXPECT_FALSE(torch::equal(fused, base));
}

TEST(OptimTest, SchedulesFollowTransformers) {
  EXPECT_DOUBLE_EQ(ScheduledLr("linear", 1.0, 0, 10, 0), 1.0);
  EXPECT_DOUBLE_EQ(ScheduledLr("linear", 1.0, 5, 10, 0), 0.5);
  EXPECT_DOUBLE_EQ(ScheduledLr("linear", 1.0, 1, 10, 2), 0.5);  // warming up
  EXPECT_DOUBLE_EQ(ScheduledLr("linear", 1.0, 2, 10, 2), 1.0);
  EXPECT_DOUBLE_EQ(ScheduledLr("linear", 1.0, 6, 10, 2), 0.5);
  EXPECT_DOUBLE_EQ(ScheduledLr("cosine", 1.0, 0, 10, 0), 1.0);
  EXPECT_NEAR(ScheduledLr("cosine", 1.0, 5, 10, 0), 0.5, 1e-12);
  EXPECT_NEAR(ScheduledLr("cosine", 1.0, 10, 10, 0), 0.0, 1e-12);
  EXPECT_DOUBLE_EQ(ScheduledLr("constant", 2.0, 7, 10, 2), 2.0);
}

TEST(OptimTest, ClipScalesOnlyAboveTheLimit) {
  auto a = torch::zeros({2}), b = torch::zeros({1});
  a.mutable_grad() = torch::tensor({3.0f, 0.0f});
  b.mutable_grad() = torch::tensor({4.0f});
  EXPECT_NEAR(ClipGradNorm({a, b}, 1.0), 5.0, 1e-6);
  EXPECT_NEAR(a.grad()[0].item<float>(), 3.0f / (5.0f + 1e-6f), 1e-6);
  a.mutable_grad() = torch::tensor({0.3f, 0.0f});
  b.mutable_grad() = torch::tensor({0.4f});
  EXPECT_NEAR(ClipGradNorm({a, b}, 1.0), 0.5, 1e-6);
  EXPECT_FLOAT_EQ(a.grad()[0].item<float>(), 0.3f);
}

}  // namespace
}  // namespace rmgen
