// The generate and annotate jobs on the synthetic suite with tiny models: outputs and their
// schema, resume after a stop, the annotation's best/worst against scores computed here, the
// `pairs` file training reads back, ties, and bad input refused before any compute.
#include "worker/train/generation_jobs.h"

#include <gtest/gtest.h>

#include <fstream>

#include "tests/train/train_util.h"
#include "worker/data/dataset.h"
#include "worker/data/synth.h"
#include "worker/data/tokenize.h"
#include "worker/model/checkpoint.h"

namespace rmgen {
namespace {

using nlohmann::json;
using testing::ReadJson;
using testing::Spec;
using testing::SynthDir;
using testing::TempDir;

std::string Common(const std::string& kind, const std::string& model) {
  const std::string d = SynthDir();
  return "kind: " + kind + "\n" + model + "tokenizer: " + d + "/tokenizer.model\n" +
         "template: zephyr\nruntime: {threads: 1}\n";
}

std::string InitModel(int seed) {
  return "model: {config: " + testing::SourcePath("configs/models/tiny-synth.json") +
         ", init_seed: " + std::to_string(seed) + "}\n";
}

std::string GenerateSpec(const std::string& extra_data = "  limit: 10\n",
                         const std::string& gen =
                             "{samples: 3, max_new_tokens: 12, seed: 4, "
                             "batch_size: 6}") {
  return Common("generate", InitModel(5)) + "data:\n  catalog: " + SynthDir() +
         "/datasets.yaml\n  prompts: synth-id:validation\n" + extra_data + "generate: " + gen +
         "\n";
}

std::vector<json> Rows(const std::string& path) {
  std::vector<json> out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) out.push_back(json::parse(line));
  return out;
}

RunOptions Quiet() {
  RunOptions o;
  o.progress = false;
  return o;
}

TEST(GenerateJobTest, KResponsesAPromptInPromptOrderAndAStoppedJobResumes) {
  auto spec = Spec(GenerateSpec());
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  TempDir straight, split;
  ASSERT_TRUE(RunJob(*spec, straight.path(), Quiet()).ok());
  const auto rows = Rows(straight / "generations.jsonl");
  ASSERT_EQ(rows.size(), 10u);
  auto prompts = LoadPrompts(*spec);
  ASSERT_TRUE(prompts.ok());
  for (size_t i = 0; i < rows.size(); ++i) {
    EXPECT_EQ(rows[i]["prompt_index"], i);
    EXPECT_EQ(rows[i]["id"], (*prompts)[i].id);
    EXPECT_EQ(rows[i]["prompt"][0]["content"], (*prompts)[i].prompt[0].content);
    EXPECT_EQ(rows[i]["generator"], "init:5");
    EXPECT_EQ(rows[i]["seed"], 4);
    ASSERT_EQ(rows[i]["responses"].size(), 3u);
    for (const auto& r : rows[i]["responses"]) {
      const int64_t n = r["tokens"];
      EXPECT_GE(n, 1);
      EXPECT_LE(n, 12);
      EXPECT_TRUE(r["finish_reason"] == "stop" || (r["finish_reason"] == "length" && n == 12));
    }
  }
  // AlpacaEval's input: each prompt's first response.
  const json alpaca = ReadJson(straight / "alpaca_eval.json");
  ASSERT_EQ(alpaca.size(), 10u);
  EXPECT_EQ(alpaca[3]["instruction"], rows[3]["prompt"][0]["content"]);
  EXPECT_EQ(alpaca[3]["output"], rows[3]["responses"][0]["text"]);
  EXPECT_EQ(alpaca[3]["generator"], "init:5");
  EXPECT_EQ(alpaca[3]["dataset"], "synth-id:validation");
  const json m = ReadJson(straight / "metrics.json")["generate"];
  EXPECT_EQ(m["prompts"], 10);
  EXPECT_EQ(m["responses"], 30);
  EXPECT_EQ(m["resumed_prompts"], 0);
  EXPECT_GT(m["tokens_per_s"].get<double>(), 0);

  // Stopped after the first batch (2 prompts x 3 samples), then resumed: the same file, and
  // the resumed run generated only the rest.
  RunOptions stop = Quiet();
  stop.stop_after_steps = 1;
  EXPECT_EQ(RunJob(*spec, split.path(), stop).code(), StatusCode::kCancelled);
  // A torn line, as a killed writer leaves, is skipped.
  { std::ofstream(split / "parts/part-0-torn-rank-0.jsonl") << "{\"prompt_index\": 7, \"id\": "; }
  ASSERT_TRUE(RunJob(*spec, split.path(), Quiet()).ok());
  EXPECT_EQ(*ReadFile(split / "generations.jsonl"), *ReadFile(straight / "generations.jsonl"));
  const json m2 = ReadJson(split / "metrics.json")["generate"];
  EXPECT_EQ(m2["resumed_prompts"], 2);
  EXPECT_EQ(m2["generated_prompts"], 8);
  // Another sampling seed in the same folder reuses nothing.
  auto other = Spec(GenerateSpec("  limit: 10\n",
                                 "{samples: 3, max_new_tokens: 12, seed: 5, "
                                 "batch_size: 6}"));
  ASSERT_TRUE(other.ok());
  ASSERT_TRUE(RunJob(*other, split.path(), Quiet()).ok());
  EXPECT_EQ(ReadJson(split / "metrics.json")["generate"]["resumed_prompts"], 0);
  EXPECT_NE(*ReadFile(split / "generations.jsonl"), *ReadFile(straight / "generations.jsonl"));
}

// A prompts file edited between attempts: rows of a changed prompt are not reused, even when
// the prompt's id (its line) is the same.
TEST(GenerateJobTest, AnEditedPromptIsGeneratedAgain) {
  TempDir d, out;
  auto write = [&](const std::string& first) {
    std::ofstream(d / "p.jsonl") << json({{"prompt", first}}).dump() << "\n"
                                 << json({{"prompt", "Tell me about the dog."}}).dump() << "\n"
                                 << json({{"prompt", "Describe a plum."}}).dump() << "\n";
  };
  write("Tell me about the cat.");
  auto spec = Spec(Common("generate", InitModel(5)) +
                   "data: {prompts: {format: prompts, path: " + (d / "p.jsonl") +
                   "}}\ngenerate: {samples: 2, max_new_tokens: 4, batch_size: 2}\n");
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  RunOptions stop = Quiet();
  stop.stop_after_steps = 2;  // one prompt a batch: prompts 0 and 1 done
  EXPECT_EQ(RunJob(*spec, out.path(), stop).code(), StatusCode::kCancelled);
  write("Tell me about the horse.");
  ASSERT_TRUE(RunJob(*spec, out.path(), Quiet()).ok());
  EXPECT_EQ(ReadJson(out / "metrics.json")["generate"]["resumed_prompts"], 1);
  EXPECT_EQ(Rows(out / "generations.jsonl")[0]["prompt"][0]["content"], "Tell me about the horse.");
}

// A reward model that scores NaN is named, not written as a null score.
TEST(AnnotateJobTest, ANonFiniteScoreIsAnErrorNamingTheRow) {
  TempDir d, out;
  auto cfg = ParseModelConfig(*ReadFile(testing::SourcePath("configs/models/tiny-synth.json")),
                              "tiny-synth.json");
  ASSERT_TRUE(cfg.ok());
  auto rm = DecoderLM::RandomInit(*cfg, HeadKind::kReward, 8, torch::kFloat32);
  rm->named_parameters().back().second.fill_(std::nan(""));  // score.weight
  SaveOptions so;
  so.tokenizer_dir = SynthDir();
  ASSERT_TRUE(SaveModel(*rm, d / "rm", so).ok());
  std::ofstream(d / "gens.jsonl") << json({{"prompt_index", 0},
                                           {"id", "p0"},
                                           {"prompt", {{{"role", "user"}, {"content", "hi"}}}},
                                           {"responses", {{{"text", "a"}}, {{"text", "b"}}}}})
                                  << "\n";
  auto spec = Spec(Common("annotate", "model: {path: " + (d / "rm") + "}\n") +
                   "data: {generations: " + (d / "gens.jsonl") + "}\n");
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  const Status st = RunJob(*spec, out.path(), Quiet());
  EXPECT_NE(st.message().find("row 1 ('p0'): a non-finite exrm score"), std::string::npos)
      << st.ToString();
}

TEST(GenerateJobTest, SlicesAreDisjointAndCoverThePrompts) {
  std::set<std::string> seen;
  size_t total = 0;
  auto all = Spec(GenerateSpec("  limit: 0\n"));
  ASSERT_TRUE(all.ok());
  auto every = LoadPrompts(*all);
  ASSERT_TRUE(every.ok());
  for (int i = 0; i < 3; ++i) {
    auto s = Spec(GenerateSpec("  slice_index: " + std::to_string(i) + "\n  slice_count: 3\n"));
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    auto p = LoadPrompts(*s);
    ASSERT_TRUE(p.ok()) << p.status().ToString();
    EXPECT_GT(p->size(), every->size() / 6) << "slice " << i;
    for (const auto& r : *p) EXPECT_TRUE(seen.insert(r.id).second) << r.id << " in two slices";
    total += p->size();
  }
  EXPECT_EQ(total, every->size());
}

// The annotation against scores computed here: the EXRM's score of every response, as a
// side of a tokenized pair, and DPORM's beta * (log pi - log pi_ref) from two checkpoints.
TEST(AnnotateJobTest, BestIsChosenWorstIsRejectedUnderEitherAnnotator) {
  auto gen = Spec(GenerateSpec("  limit: 6\n"));
  ASSERT_TRUE(gen.ok());
  TempDir g, a, b, models;
  ASSERT_TRUE(RunJob(*gen, g.path(), Quiet()).ok());
  const auto gens = Rows(g / "generations.jsonl");

  auto cfg = ParseModelConfig(*ReadFile(testing::SourcePath("configs/models/tiny-synth.json")),
                              "tiny-synth.json");
  ASSERT_TRUE(cfg.ok());
  auto rm = DecoderLM::RandomInit(*cfg, HeadKind::kReward, 8, torch::kFloat32);
  auto pi = DecoderLM::RandomInit(*cfg, HeadKind::kLanguageModel, 9, torch::kFloat32);
  auto ref = DecoderLM::RandomInit(*cfg, HeadKind::kLanguageModel, 10, torch::kFloat32);
  SaveOptions so;
  so.tokenizer_dir = SynthDir();
  ASSERT_TRUE(SaveModel(*rm, models / "rm", so).ok());
  ASSERT_TRUE(SaveModel(*pi, models / "pi", so).ok());
  ASSERT_TRUE(SaveModel(*ref, models / "ref", so).ok());

  auto tok = Tokenizer::Load(SynthDir() + "/tokenizer.model");
  ASSERT_TRUE(tok.ok());
  TokenizeOptions to;
  to.chat_template = ChatTemplate::kZephyr;
  torch::NoGradGuard ng;
  // Score of response `text` after `prompt` under each annotator.
  auto side = [&](const json& row, const std::string& text) {
    PreferencePair p;
    for (const auto& m : row["prompt"]) p.prompt.push_back({m["role"], m["content"]});
    p.chosen = p.rejected = {{"assistant", text}};
    TokenizeStats ts;
    auto t = TokenizePair(**tok, p, to, &ts);
    EXPECT_TRUE(t.ok() && t->has_value());
    const auto& ids = (*t)->chosen;
    auto x = torch::tensor(std::vector<int64_t>(ids.begin(), ids.end())).view({1, -1});
    auto mask = torch::ones_like(x);
    auto resp = torch::zeros_like(x);
    resp.slice(1, (*t)->chosen_prompt_len) = 1;
    const double exrm = rm->Scores(rm->Hidden(x, mask), mask).item<double>();
    const double dporm = 0.1 * (pi->SequenceLogProbs(x, mask, resp).item<double>() -
                                ref->SequenceLogProbs(x, mask, resp).item<double>());
    return std::make_pair(exrm, dporm);
  };

  const std::string data = "data: {generations: " + (g / "generations.jsonl") + "}\n";
  auto ex = Spec(Common("annotate", "model: {path: " + (models / "rm") + "}\n") + data +
                 "annotate: {reward: exrm}\n");
  ASSERT_TRUE(ex.ok()) << ex.status().ToString();
  auto dp = Spec(Common("annotate", "model: {path: " + (models / "pi") + "}\n") + data +
                 "annotate: {reward: dporm, reference: " + (models / "ref") + ", beta: 0.1}\n");
  ASSERT_TRUE(dp.ok()) << dp.status().ToString();
  ASSERT_TRUE(RunJob(*ex, a.path(), Quiet()).ok());
  ASSERT_TRUE(RunJob(*dp, b.path(), Quiet()).ok());
  for (const auto& [dir, which] : {std::make_pair(a.path(), 0), std::make_pair(b.path(), 1)}) {
    const auto pairs = Rows(dir + "/pairs.jsonl");
    ASSERT_EQ(pairs.size(), gens.size());  // random models: no ties
    for (size_t i = 0; i < pairs.size(); ++i) {
      const json& row = gens[i];
      std::vector<double> expect;
      for (const auto& r : row["responses"]) {
        const auto s = side(row, r["text"]);
        expect.push_back(which == 0 ? s.first : s.second);
      }
      const auto got = pairs[i]["scores"].get<std::vector<double>>();
      ASSERT_EQ(got.size(), expect.size());
      // Batched (shared-prefix layout) against one sequence alone: float order only.
      for (size_t k = 0; k < got.size(); ++k) EXPECT_NEAR(got[k], expect[k], 1e-4) << i << k;
      const size_t best = std::max_element(got.begin(), got.end()) - got.begin();
      const size_t worst = std::min_element(got.begin(), got.end()) - got.begin();
      EXPECT_EQ(pairs[i]["chosen"][0]["content"], row["responses"][best]["text"]);
      EXPECT_EQ(pairs[i]["rejected"][0]["content"], row["responses"][worst]["text"]);
      EXPECT_EQ(pairs[i]["score_chosen"], got[best]);
      EXPECT_EQ(pairs[i]["score_rejected"], got[worst]);
      EXPECT_EQ(pairs[i]["annotator"], which == 0 ? "exrm" : "dporm");
    }
    // Training reads the file back through the `pairs` adapter.
    ReadOptions ro;
    ro.format = "pairs";
    DatasetStats st;
    int64_t n = 0;
    ASSERT_TRUE(ReadDataset(
                    dir + "/pairs.jsonl", ro, [&](PreferencePair&&) { ++n; }, &st)
                    .ok());
    EXPECT_EQ(n, static_cast<int64_t>(pairs.size())) << st.ToJson().dump();
  }
}

// Annotation is scored 64 prompts a chunk; a stopped job resumes after its last chunk and
// writes what one run writes.
TEST(AnnotateJobTest, AStoppedAnnotationResumes) {
  auto gen = Spec(GenerateSpec("  limit: 150\n", "{samples: 2, max_new_tokens: 6, seed: 1}"));
  ASSERT_TRUE(gen.ok());
  TempDir g, straight, split;
  ASSERT_TRUE(RunJob(*gen, g.path(), Quiet()).ok());
  auto ann = Spec(Common("annotate", InitModel(8)) +
                  "data: {generations: " + (g / "generations.jsonl") + "}\n");
  ASSERT_TRUE(ann.ok()) << ann.status().ToString();
  ASSERT_TRUE(RunJob(*ann, straight.path(), Quiet()).ok());
  RunOptions stop = Quiet();
  stop.stop_after_steps = 1;
  EXPECT_EQ(RunJob(*ann, split.path(), stop).code(), StatusCode::kCancelled);
  EXPECT_FALSE(FileExists(split / "pairs.jsonl"));
  ASSERT_TRUE(RunJob(*ann, split.path(), Quiet()).ok());
  EXPECT_EQ(*ReadFile(split / "pairs.jsonl"), *ReadFile(straight / "pairs.jsonl"));
  EXPECT_EQ(ReadJson(split / "metrics.json")["annotate"]["resumed_prompts"], 64);
  EXPECT_EQ(ReadJson(straight / "metrics.json")["annotate"]["prompts"], 150);
  // Another annotator model in the same folder reuses nothing.
  auto other = Spec(Common("annotate", InitModel(9)) +
                    "data: {generations: " + (g / "generations.jsonl") + "}\n");
  ASSERT_TRUE(other.ok());
  ASSERT_TRUE(RunJob(*other, split.path(), Quiet()).ok());
  EXPECT_EQ(ReadJson(split / "metrics.json")["annotate"]["resumed_prompts"], 0);
}

TEST(AnnotateJobTest, APromptWhoseResponsesTieIsDroppedAndCounted) {
  TempDir d, out;
  {
    std::ofstream f(d / "gens.jsonl");
    for (int i = 0; i < 3; ++i) {
      const std::string same = i == 1 ? "a fox" : "same words";
      f << json({{"prompt_index", i},
                 {"id", "p" + std::to_string(i)},
                 {"prompt", {{{"role", "user"}, {"content", "Tell me about animals."}}}},
                 {"responses",
                  {{{"text", same}}, {{"text", i == 1 ? "a red apple" : same}}, {{"text", same}}}}})
               .dump()
        << "\n";
    }
  }
  auto spec =
      Spec(Common("annotate", InitModel(3)) + "data: {generations: " + (d / "gens.jsonl") + "}\n");
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  ASSERT_TRUE(RunJob(*spec, out.path(), Quiet()).ok());
  const json m = ReadJson(out / "metrics.json")["annotate"];
  EXPECT_EQ(m["dropped_tie"], 2);
  EXPECT_EQ(m["pairs"], 1);
  EXPECT_EQ(Rows(out / "pairs.jsonl")[0]["id"], "p1");
}

// The suite's rule as a score ranks every chosen response of the suite above its rejected one.
TEST(JudgeJobTest, TheOracleAgreesWithEveryPairOfTheSuite) {
  int64_t n = 0;
  for (const char* set : {"validation.jsonl", "prompt_shift.jsonl", "response_shift.jsonl"}) {
    ReadOptions ro;
    ro.format = "pairs";
    DatasetStats st;
    ASSERT_TRUE(ReadDataset(
                    SynthDir() + "/" + set, ro,
                    [&](PreferencePair&& p) {
                      const std::string prompt = CanonicalPrompt(p.prompt);
                      EXPECT_GT(SynthOracleScore(prompt, p.chosen[0].content),
                                SynthOracleScore(prompt, p.rejected[0].content))
                          << prompt << " | " << p.chosen[0].content;
                      ++n;
                    },
                    &st)
                    .ok());
  }
  EXPECT_GT(n, 800);
  EXPECT_EQ(SynthOracleScore("Tell me about the cat.", "The Dog, the horse; a plum!"), 1.0);
  EXPECT_EQ(SynthOracleScore("Nothing on topic.", "cat dog"), 0.0);
}

TEST(JudgeJobTest, WinRateAgainstTheBaselineUnderTheOracle) {
  TempDir d, out;
  auto write = [&](const std::string& name, const std::vector<std::string>& outputs,
                   const std::string& generator) {
    std::ofstream f(d / name);
    for (size_t i = 0; i < outputs.size(); ++i) {
      f << json({{"prompt_index", i},
                 {"id", "p" + std::to_string(i)},
                 {"generator", generator},
                 {"prompt", {{{"role", "user"}, {"content", "Tell me about the cat."}}}},
                 {"responses", {{{"text", outputs[i]}}}}})
               .dump()
        << "\n";
    }
  };
  // Against the baseline: a win (2 > 0), a tie (1 = 1), a loss (-1 < 1), a win (1 > -1); the
  // policy's extra prompt p4 has no baseline and is left out.
  write("policy.jsonl", {"dog horse", "dog", "apple", "cat", "cat cat"}, "pi1");
  write("base.jsonl", {"snow", "dog", "dog", "apple"}, "pi0");
  auto spec = Spec("kind: judge\ndata: {generations: " + (d / "policy.jsonl") +
                   "}\njudge: {reward: oracle, baseline: " + (d / "base.jsonl") + "}\n");
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  ASSERT_TRUE(RunJob(*spec, out.path(), Quiet()).ok());
  const json m = ReadJson(out / "metrics.json")["judge"];
  EXPECT_EQ(m["n"], 4);
  EXPECT_EQ(m["wins"], 2);
  EXPECT_EQ(m["ties"], 1);
  EXPECT_EQ(m["losses"], 1);
  EXPECT_EQ(m["unmatched"], 1);
  EXPECT_DOUBLE_EQ(m["win_rate"].get<double>(), 2.5 / 4);
  EXPECT_EQ(m["policy"], "pi1");
  EXPECT_EQ(m["baseline"], "pi0");
  // An EXRM judge needs a model; no shared prompt is an error naming judge.baseline.
  EXPECT_NE(Spec("kind: judge\ndata: {generations: x}\njudge: {reward: exrm, baseline: y}\n")
                .status()
                .message()
                .find("field 'model'"),
            std::string::npos);
  write("other.jsonl", {"dog"}, "pi0");
  std::ofstream(d / "other.jsonl") << json({{"prompt_index", 0},
                                            {"id", "zzz"},
                                            {"prompt", {{{"role", "user"}, {"content", "x"}}}},
                                            {"responses", {{{"text", "y"}}}}})
                                   << "\n";
  auto none = Spec("kind: judge\ndata: {generations: " + (d / "policy.jsonl") +
                   "}\njudge: {baseline: " + (d / "other.jsonl") + "}\n");
  ASSERT_TRUE(none.ok());
  const Status st = RunJob(*none, (out / "none"), Quiet());
  EXPECT_NE(st.message().find("judge.baseline"), std::string::npos) << st.ToString();
}

Status RunSpec(const std::string& yaml, const std::string& out) {
  auto spec = Spec(yaml);
  if (!spec.ok()) return spec.status();
  return RunJob(*spec, out, Quiet());
}

TEST(GenerationJobsTest, BadInputIsRefusedNamingTheFieldOrRecord) {
  TempDir d;
  auto expect = [&](const Status& st, const std::string& what) {
    EXPECT_FALSE(st.ok()) << what;
    EXPECT_NE(st.message().find(what), std::string::npos) << st.message();
  };
  // No prompt source; an empty slice; an empty prompts file; a bad record.
  expect(RunSpec(Common("generate", InitModel(1)), d / "a"), "field 'data.prompts': missing");
  std::ofstream(d / "empty.jsonl") << "\n";
  expect(RunSpec(Common("generate", InitModel(1)) +
                     "data: {prompts: {format: prompts, path: " + (d / "empty.jsonl") + "}}\n",
                 d / "b"),
         "data.prompts: no prompts");
  std::ofstream(d / "bad.jsonl") << "{\"prompt\": \"hello\"}\n{\"prompt\": 3}\n";
  expect(RunSpec(Common("generate", InitModel(1)) +
                     "data: {prompts: {format: prompts, path: " + (d / "bad.jsonl") + "}}\n",
                 d / "c"),
         "bad.jsonl:2: field 'prompt'");
  // A prompt that leaves no room in the context (64 positions; prompts kept up to 100).
  auto cfg = json::parse(*ReadFile(testing::SourcePath("configs/models/tiny-synth.json")));
  cfg["max_position_embeddings"] = 64;
  std::ofstream(d / "small.json") << cfg.dump();
  std::ofstream(d / "long.jsonl") << json({{"prompt", std::string(400, 'a')}, {"id", "long-one"}})
                                  << "\n";
  expect(RunSpec(Common("generate", "model: {config: " + (d / "small.json") + "}\n") +
                     "data: {prompts: {format: prompts, path: " + (d / "long.jsonl") +
                     "}, max_prompt_length: 100, max_length: 200}\n",
                 d / "e"),
         "record 'long-one' (prompt 0) has");
  // A policy checkpoint without a tokenizer, and no tokenizer: field.
  auto cfgv = ParseModelConfig(cfg.dump(), "c");
  ASSERT_TRUE(SaveModel(*DecoderLM::RandomInit(*cfgv, HeadKind::kLanguageModel, 1, torch::kFloat32),
                        d / "notok", {})
                  .ok());
  std::ofstream(d / "good.jsonl") << "{\"prompt\": \"hello\"}\n";
  expect(RunSpec("kind: generate\nmodel: {path: " + (d / "notok") +
                     "}\ndata: {prompts: {format: prompts, path: " + (d / "good.jsonl") + "}}\n",
                 d / "f"),
         "tokenizer: " + (d / "notok") + "/tokenizer.model not found");
  // Fewer than two responses to annotate.
  std::ofstream(d / "one.jsonl") << json({{"prompt_index", 0},
                                          {"prompt", {{{"role", "user"}, {"content", "hi"}}}},
                                          {"responses", {{{"text", "only one"}}}}})
                                 << "\n";
  expect(
      RunSpec(Common("annotate", InitModel(1)) + "data: {generations: " + (d / "one.jsonl") + "}\n",
              d / "g"),
      "one.jsonl:1: field 'responses': 1 response(s)");
  expect(RunSpec(Common("annotate", InitModel(1)) + "annotate: {reward: dporm}\n" +
                     "data: {generations: x}\n",
                 d / "h"),
         "field 'annotate.reference': missing");
  expect(RunSpec(GenerateSpec("  limit: 2\n", "{samples: 0}"), d / "i"),
         "field 'generate.samples': must be in [1, 1024]");
  expect(RunSpec(GenerateSpec("  limit: 2\n", "{top_p: 0}"), d / "j"), "field 'generate.top_p'");
}

}  // namespace
}  // namespace rmgen
