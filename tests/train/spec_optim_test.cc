// Job specs (validation, defaults) and the optimizer pieces (AdamW, schedules, clipping)
// against their reference formulas.
#include <gtest/gtest.h>

#include <cmath>

#include "tests/train/train_util.h"
#include "worker/data/catalog.h"
#include "worker/model/lm_head.h"
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
  EXPECT_EQ(s->vocab_chunk, kDefaultVocabChunk);  // jobspec's default is the model's
  EXPECT_EQ(s->attention, "auto");
  EXPECT_FALSE(s->profile);
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
  ExpectSpecError(kMin + "runtime:\n  attention: flash\n", "runtime.attention");
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

// A spec with one field set: "train.learning_rate" -> kMin plus "train:\n  learning_rate: V".
// Fields of model and data join kMin's own mapping.
std::string WithField(const std::string& path, const std::string& value) {
  const auto dot = path.find('.');
  const std::string section = path.substr(0, dot), key = path.substr(dot + 1);
  if (section == "model") {
    return "kind: dpo\nmodel: {path: /m, " + key + ": " + value +
           "}\ntokenizer: /t\ndata: {train: ultra}\n";
  }
  if (section == "data") {
    return "kind: dpo\nmodel: {path: /m}\ntokenizer: /t\ndata: {train: ultra, " + key + ": " +
           value + "}\n";
  }
  if (key == "per_rank_batch_size") {  // needs train.ranks
    return kMin + "train:\n  ranks: 1\n  per_rank_batch_size: " + value + "\n";
  }
  return kMin + section + ":\n  " + key + ": " + value + "\n";
}

struct Bound {
  std::string field, inside, outside, range;  // range: as the message prints it
};

TEST(JobSpecTest, EveryNumericFieldIsBounded) {
  const std::vector<Bound> bounds = {
      {"model.init_seed", "0", "-1", "must be >= 0"},
      {"model.init_seed", "9223372036854775807", "-9223372036854775807", "must be >= 0"},
      {"data.max_length", "1048576", "1048577", "[1, 1048576]"},
      {"data.max_length", "129", "0", "[1, 1048576]"},  // above max_prompt_length
      {"data.max_prompt_length", "1", "0", "[1, 1048576]"},
      {"data.max_prompt_length", "511", "1048577", "[1, 1048576]"},
      {"data.limit", "0", "-1", "must be >= 0"},
      {"data.holdout", "0", "-0.01", "[0, 1)"},
      {"data.holdout", "0.99", "1", "[0, 1)"},
      {"train.epochs", "1", "0", "[1, 1000]"},
      {"train.epochs", "1000", "1001", "[1, 1000]"},
      {"train.batch_size", "1", "0", "[1, 1048576]"},
      {"train.batch_size", "1048576", "1048577", "[1, 1048576]"},
      {"train.per_rank_batch_size", "1", "0", "[1, 65536]"},
      {"train.per_rank_batch_size", "65536", "65537", "[1, 65536]"},
      {"train.ranks", "4096", "4097", "[1, 4096]"},
      {"train.ranks", "1", "0", "[1, 4096]"},
      {"train.gradient_accumulation", "1", "0", "[1, 65536]"},
      {"train.gradient_accumulation", "65536", "65537", "[1, 65536]"},
      {"train.warmup_steps", "0", "-1", "[0, 1000000000]"},
      {"train.warmup_steps", "1000000000", "1000000001", "[0, 1000000000]"},
      {"train.max_steps", "0", "-1", "[0, 1000000000]"},
      {"train.max_steps", "1000000000", "1000000001", "[0, 1000000000]"},
      {"train.seed", "0", "-1", "must be >= 0"},
      {"train.learning_rate", "1", "1.5", "(0, 1]"},
      {"train.learning_rate", "1e-12", "0", "(0, 1]"},
      {"train.warmup_ratio", "1", "1.01", "[0, 1]"},
      {"train.warmup_ratio", "0", "-0.1", "[0, 1]"},
      {"train.max_grad_norm", "0", "-1", "[0, 1e+06]"},
      {"train.max_grad_norm", "1e6", "1.1e6", "[0, 1e+06]"},
      {"train.weight_decay", "0", "-0.1", "[0, 1]"},
      {"train.weight_decay", "1", "1.5", "[0, 1]"},
      {"train.adam_beta1", "0", "-0.1", "[0, 1)"},
      {"train.adam_beta1", "0.999", "1", "[0, 1)"},
      {"train.adam_beta2", "0.9999", "1", "[0, 1)"},
      {"train.adam_epsilon", "1", "1.5", "(0, 1]"},
      {"train.adam_epsilon", "1e-30", "0", "(0, 1]"},
      {"reward.center_coefficient", "0", "-0.01", "[0, 100]"},
      {"reward.center_coefficient", "100", "101", "[0, 100]"},
      {"dpo.beta", "100", "100.5", "(0, 100]"},
      {"dpo.beta", "1e-6", "0", "(0, 100]"},
      {"dpo.label_smoothing", "0", "-0.1", "[0, 0.5)"},
      {"dpo.label_smoothing", "0.49", "0.5", "[0, 0.5)"},
      {"eval.beta", "100", "101", "(0, 100]"},
      {"eval.beta", "0.01", "0", "(0, 100]"},
      {"eval.batch_size", "1", "0", "[1, 65536]"},
      {"eval.batch_size", "65536", "65537", "[1, 65536]"},
      {"runtime.threads", "0", "-1", "[0, 1024]"},
      {"runtime.threads", "1024", "100000000", "[0, 1024]"},
      {"runtime.checkpoint_every", "0", "-1", "[0, 1000000000]"},
      {"runtime.checkpoint_every", "1000000000", "1000000001", "[0, 1000000000]"},
      {"runtime.log_every", "1", "0", "[1, 1000000000]"},
      {"runtime.log_every", "1000000000", "1000000001", "[1, 1000000000]"},
      {"runtime.bucket_mb", "4096", "4097", "(0, 4096]"},
      {"runtime.bucket_mb", "0.5", "0", "(0, 4096]"},
      {"runtime.comm_timeout_s", "86400", "86401", "(0, 86400]"},
      {"runtime.comm_timeout_s", "0.1", "0", "(0, 86400]"},
      {"runtime.vocab_chunk", "0", "-1", "[0, 2147483647]"},
      {"runtime.vocab_chunk", "2147483647", "2147483648", "[0, 2147483647]"},
  };
  for (const Bound& b : bounds) {
    auto in = Spec(WithField(b.field, b.inside));
    EXPECT_TRUE(in.ok()) << b.field << " = " << b.inside << ": " << in.status().ToString();
    auto out = Spec(WithField(b.field, b.outside));
    ASSERT_FALSE(out.ok()) << b.field << " = " << b.outside;
    const std::string& m = out.status().message();
    EXPECT_NE(m.find("test.yaml:"), std::string::npos) << m;  // the line of the field
    EXPECT_NE(m.find("field '" + b.field + "': "), std::string::npos) << m;
    // The range, and the value given (a field past the range of its type, too).
    EXPECT_NE(m.find(b.range), std::string::npos) << "want '" << b.range << "' in: " << m;
    EXPECT_NE(m.find(", got "), std::string::npos) << m;
  }
  // The example of the issue, whole.
  auto lr = Spec(kMin + "train:\n  learning_rate: 5\n");
  ASSERT_FALSE(lr.ok());
  EXPECT_EQ(lr.status().message(),
            "test.yaml:6: field 'train.learning_rate': must be in (0, 1], got 5");
  auto threads = Spec(kMin + "runtime: {threads: 100000000}\n");
  ASSERT_FALSE(threads.ok());
  EXPECT_EQ(threads.status().message(),
            "test.yaml:5: field 'runtime.threads': must be in [0, 1024] (0: all cores), got "
            "100000000");
  // per_rank_batch_size x ranks is the global micro-batch: bounded as well.
  auto product = Spec(kMin + "train: {ranks: 32, per_rank_batch_size: 65536}\n");
  ASSERT_FALSE(product.ok());
  EXPECT_NE(product.status().message().find(
                "field 'train.per_rank_batch_size': per_rank_batch_size x ranks = 2097152"),
            std::string::npos)
      << product.status().message();
  EXPECT_TRUE(Spec(kMin + "train: {ranks: 16, per_rank_batch_size: 65536}\n").ok());
  // Values past an int (they used to be narrowed: 2^32 + 1 tokens read as 1).
  ExpectSpecError(WithField("data.max_length", "4294967297"), "data.max_length", 4);
  ExpectSpecError(kMin + "runtime: {threads: 4294967296}\n", "runtime.threads", 5);
  ExpectSpecError(kMin + "train: {epochs: 99999999999999999999}\n", "train.epochs", 5);
}

TEST(JobSpecTest, NanAndInfinityAreNotNumbers) {
  for (const char* v : {"nan", "NaN", "inf", "-inf", "infinity", "1e999", ".nan", ".inf"}) {
    for (const char* field : {"train.learning_rate", "train.weight_decay", "dpo.beta",
                              "runtime.bucket_mb", "data.holdout"}) {
      auto s = Spec(WithField(field, v));
      ASSERT_FALSE(s.ok()) << field << " = " << v;
      EXPECT_NE(s.status().message().find(std::string("field '") + field + "'"), std::string::npos)
          << s.status().message();
    }
  }
  // JSON has no nan: a spec written as JSON gets the same answer for the string.
  auto j = Spec(R"({"kind": "sft", "model": {"config": "c.json"}, "data": {"train": "x"},
                    "train": {"learning_rate": "nan"}})");
  ASSERT_FALSE(j.ok());
  EXPECT_NE(j.status().message().find("field 'train.learning_rate': expected a finite number"),
            std::string::npos)
      << j.status().message();
}

TEST(JobSpecTest, AliasesAreRefusedInSpecsAndCatalogs) {
  auto spec = Spec(kMin + "train: &t {epochs: 1}\nreward: *t\n");
  ASSERT_FALSE(spec.ok());
  EXPECT_NE(
      spec.status().message().find("test.yaml:6: YAML aliases (*t) are not accepted in job specs"),
      std::string::npos)
      << spec.status().message();
  std::string bomb = "root: .\ndatasets: {}\na: &a [x,x,x,x,x,x,x,x,x]\n";
  for (char c = 'b'; c <= 'i'; ++c) {
    bomb += std::string(1, c) + ": &" + c + " [";
    for (int i = 0; i < 9; ++i) bomb += std::string(i ? ",*" : "*") + char(c - 1);
    bomb += "]\n";
  }
  auto catalog = Catalog::Parse(bomb, "datasets.yaml", ".");
  ASSERT_FALSE(catalog.ok());
  EXPECT_NE(catalog.status().message().find(
                "datasets.yaml:4: YAML aliases (*a) are not accepted in dataset catalogs"),
            std::string::npos)
      << catalog.status().message();
}

TEST(JobSpecTest, JsonSpecsParseLikeTheirText) {
  const std::string text =
      "kind: dpo\nmodel: {path: /m, dtype: bfloat16}\ntokenizer: /t\n"
      "data: {train: ultra, eval: [a, {format: pairs, path: /x}], max_length: 256}\n"
      "train: {learning_rate: 5.0e-7, ranks: 2, per_rank_batch_size: 4, bf16: true}\n"
      "dpo: {beta: 0.1, reference: /r}\nruntime: {threads: 4, comm_timeout_s: 60}\n";
  auto from_text = Spec(text);
  ASSERT_TRUE(from_text.ok()) << from_text.status().ToString();
  const nlohmann::json j = nlohmann::json::parse(from_text->resolved.dump());
  auto from_json = ParseJobSpecJson(j, "job");
  ASSERT_TRUE(from_json.ok()) << from_json.status().ToString();
  EXPECT_EQ(from_json->resolved, from_text->resolved);
  auto again = ParseJobSpec(j.dump(), "job");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->resolved, from_json->resolved);
  // Errors name the source and the field; nesting is bounded.
  nlohmann::json bad = j;
  bad["runtime"]["threads"] = 100000000;
  auto refused = ParseJobSpecJson(bad, "job");
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().message(),
            "job: field 'runtime.threads': must be in [0, 1024] (0: all cores), got 100000000");
  bad = j;
  bad["train"]["learning_rate"] = "nan";
  EXPECT_FALSE(ParseJobSpecJson(bad, "job").ok());
  nlohmann::json deep = 1;
  for (int i = 0; i < 100; ++i) deep = nlohmann::json::array({deep});
  bad = j;
  bad["data"]["eval"] = deep;
  auto nested = ParseJobSpecJson(bad, "job");
  ASSERT_FALSE(nested.ok());
  EXPECT_NE(nested.status().message().find("nested deeper than 64"), std::string::npos)
      << nested.status().message();
  bad = j;
  for (int i = 0; i < 20000; ++i) bad["x" + std::to_string(i)] = i;
  auto wide = ParseJobSpecJson(bad, "job");
  ASSERT_FALSE(wide.ok());
  EXPECT_NE(wide.status().message().find("job: more than 10000 values"), std::string::npos)
      << wide.status().message();
  auto wide_text = ParseJobSpec(bad.dump(), "job.json");
  ASSERT_FALSE(wide_text.ok());
  EXPECT_NE(wide_text.status().message().find("job.json:1: more than 10000 YAML nodes"),
            std::string::npos)
      << wide_text.status().message();
}

TEST(JobSpecTest, SpecPathsListEveryPathValuedField) {
  auto dpo = Spec(
      "kind: dpo\nmodel: {path: /models/g2b}\ntokenizer: /tok/t.model\n"
      "data:\n  catalog: /cfg/datasets.yaml\n  data_root: /data\n"
      "  train: {format: pairs, path: /x/train.jsonl}\n"
      "  eval: [ultra:test, {format: pairs, path: /x/eval.jsonl}]\n"
      "dpo: {reference: /models/sft, reference_cache: /cache/ref}\n");
  ASSERT_TRUE(dpo.ok()) << dpo.status().ToString();
  using Paths = std::vector<std::pair<std::string, std::string>>;
  EXPECT_EQ(SpecPaths(*dpo), (Paths{{"model.path", "/models/g2b"},
                                    {"tokenizer", "/tok/t.model"},
                                    {"data.catalog", "/cfg/datasets.yaml"},
                                    {"data.data_root", "/data"},
                                    {"data.train.path", "/x/train.jsonl"},
                                    {"data.eval[1].path", "/x/eval.jsonl"},
                                    {"dpo.reference", "/models/sft"},
                                    {"dpo.reference_cache", "/cache/ref"}}));
  // A random init and an eval job against its reference; the catalog's default is listed.
  auto eval = Spec(
      "kind: eval\nmodel: {config: /cfg/tiny.json}\ntokenizer: /t.model\n"
      "data: {eval: [ultra:test]}\neval: {reward: dporm, reference: '${output:#0}/checkpoint'}\n");
  ASSERT_TRUE(eval.ok()) << eval.status().ToString();
  EXPECT_EQ(SpecPaths(*eval), (Paths{{"model.config", "/cfg/tiny.json"},
                                     {"tokenizer", "/t.model"},
                                     {"data.catalog", "configs/datasets.yaml"},
                                     {"eval.reference", "${output:#0}/checkpoint"}}));
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
