// Pair tokenization (TRL's joint encoding and truncation), length-grouped batching, the
// dataset catalog and the synthetic shift suite.
#include "worker/data/tokenize.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <numeric>
#include <set>

#include "common/file.h"
#include "tests/test_util.h"
#include "worker/data/batching.h"
#include "worker/data/catalog.h"
#include "worker/data/synth.h"

namespace rmgen {
namespace {

using testing::SourcePath;
using testing::TempDir;

std::unique_ptr<Tokenizer> Mistral() {
  return std::move(Tokenizer::Load(
                       SourcePath("tests/fixtures/tokenizers/mistral-7b-v0.1/tokenizer.model")))
      .value();
}

PreferencePair Pair(const std::string& prompt, const std::string& chosen,
                    const std::string& rejected) {
  PreferencePair p;
  p.prompt = {{"user", prompt}};
  p.chosen = {{"assistant", chosen}};
  p.rejected = {{"assistant", rejected}};
  return p;
}

std::string Words(int n) {
  std::string s;
  for (int i = 0; i < n; ++i) s += "word" + std::to_string(i) + " ";
  return s;
}

TEST(TokenizePairTest, PromptThenJointResponseThenEos) {
  auto tok = Mistral();
  TokenizeOptions o;
  o.chat_template = ChatTemplate::kZephyr;
  TokenizeStats st;
  auto p = Pair("Hello there", "General Kenobi!", "Who?");
  auto t = TokenizePair(*tok, p, o, &st);
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  ASSERT_TRUE(t->has_value());
  const auto prompt = *EncodeChat(*tok, ChatTemplate::kZephyr, p.prompt, true);
  ASSERT_EQ((*t)->chosen_prompt_len, static_cast<int32_t>(prompt.size()));
  EXPECT_TRUE(std::equal(prompt.begin(), prompt.end(), (*t)->chosen.begin()));
  EXPECT_EQ((*t)->chosen.front(), tok->bos_id());
  EXPECT_NE((*t)->chosen[1], tok->bos_id());
  EXPECT_EQ((*t)->chosen.back(), tok->eos_id());
  EXPECT_EQ((*t)->rejected.back(), tok->eos_id());
  // The response tokens are those of the joint encoding, not of the response alone (which
  // would start with SentencePiece's dummy-prefix piece).
  const auto joint = tok->EncodeWithSpecials(*RenderChat(ChatTemplate::kZephyr, p.prompt, true) +
                                             "General Kenobi!");
  std::vector<int32_t> expect(joint.begin() + (prompt.size() - 1), joint.end());  // no BOS
  std::vector<int32_t> got((*t)->chosen.begin() + prompt.size(), (*t)->chosen.end() - 1);
  EXPECT_EQ(got, expect);
  EXPECT_EQ(st.pairs, 1);
  EXPECT_EQ(st.prompt_truncated + st.response_truncated, 0);
}

TEST(TokenizePairTest, SharedPromptHeadEqualsFullJointEncoding) {
  auto tok = Mistral();
  TokenizeOptions o;
  o.chat_template = ChatTemplate::kZephyr;
  PreferencePair p;
  p.prompt = {{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello"}, {"user", "Q?"}};
  for (const std::string resp : {"plain answer", "text with </s> and <s> inside", " lead", "\n"}) {
    p.chosen = {{"assistant", resp}};
    p.rejected = {{"assistant", "other"}};
    TokenizeStats st;
    auto t = std::move(TokenizePair(*tok, p, o, &st)).value();
    ASSERT_TRUE(t.has_value());
    std::vector<int> expect =
        tok->EncodeWithSpecials(*RenderChat(ChatTemplate::kZephyr, p.prompt, true) + resp);
    expect.insert(expect.begin(), tok->bos_id());
    expect.push_back(tok->eos_id());
    EXPECT_EQ(std::vector<int>(t->chosen.begin(), t->chosen.end()), expect) << resp;
  }
}

TEST(TokenizePairTest, LongPromptKeepsItsEnd) {
  auto tok = Mistral();
  TokenizeOptions o;
  o.chat_template = ChatTemplate::kZephyr;
  o.max_length = 64;
  o.max_prompt_length = 16;
  TokenizeStats st;
  auto p = Pair(Words(80), "Yes.", "No.");
  auto t = std::move(TokenizePair(*tok, p, o, &st)).value();
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->chosen_prompt_len, 16);
  // The last 16 tokens of the templated prompt; its BOS is gone, as in TRL.
  std::vector<int> full = *EncodeChat(*tok, ChatTemplate::kZephyr, p.prompt, true);
  std::vector<int32_t> tail(full.end() - 16, full.end());
  EXPECT_TRUE(std::equal(tail.begin(), tail.end(), t->chosen.begin()));
  EXPECT_EQ(st.prompt_truncated, 1);
  EXPECT_EQ(st.response_truncated, 0);
  EXPECT_LE(t->chosen.size(), 64u);
}

TEST(TokenizePairTest, LongResponseIsCutToMaxLengthMinusMaxPrompt) {
  auto tok = Mistral();
  TokenizeOptions o;
  o.max_length = 40;
  o.max_prompt_length = 10;
  TokenizeStats st;
  auto p = Pair("Hi", Words(60), "Short.");
  auto t = std::move(TokenizePair(*tok, p, o, &st)).value();
  ASSERT_TRUE(t.has_value());
  const int32_t plen = t->chosen_prompt_len;
  EXPECT_LT(plen, 10);                                       // short prompt untouched
  EXPECT_EQ(static_cast<int>(t->chosen.size()) - plen, 30);  // 40 - 10, EOS cut too
  EXPECT_NE(t->chosen.back(), tok->eos_id());
  EXPECT_EQ(t->rejected.back(), tok->eos_id());  // the short side keeps its EOS
  EXPECT_EQ(st.response_truncated, 1);

  o.too_long = TokenizeOptions::TooLong::kDrop;
  TokenizeStats ds;
  auto d = std::move(TokenizePair(*tok, p, o, &ds)).value();
  EXPECT_FALSE(d.has_value());
  EXPECT_EQ(ds.dropped_too_long, 1);
  EXPECT_EQ(ds.pairs, 0);
}

TEST(TokenizePairTest, WhatTheTemplateCannotRenderIsACountedDrop) {
  auto tok = Mistral();
  TokenizeOptions o;
  o.chat_template = ChatTemplate::kGemma;
  TokenizeStats st;
  // A system turn (gemma has no system role), then two user turns in a row.
  PreferencePair sys = Pair("x", "a", "b");
  sys.prompt.insert(sys.prompt.begin(), Message{"system", "be brief"});
  PreferencePair twice = Pair("x", "a", "b");
  twice.prompt.push_back(Message{"user", "and again"});
  for (const PreferencePair* p : {&sys, &twice, &twice}) {
    auto t = TokenizePair(*tok, *p, o, &st);
    ASSERT_TRUE(t.ok()) << t.status().ToString();
    EXPECT_FALSE(t->has_value());
  }
  // The same pair renders with zephyr, and a well-formed one with gemma.
  auto ok = TokenizePair(*tok, Pair("x", "a", "b"), o, &st);
  ASSERT_TRUE(ok.ok() && ok->has_value());
  EXPECT_EQ(st.pairs, 1);
  ASSERT_EQ(st.dropped_template.size(), 2u) << st.ToJson().dump();
  EXPECT_EQ(st.dropped_template.at("gemma: the gemma template has no system role"), 1);
  EXPECT_EQ(st.dropped_template.at(
                "gemma: roles must alternate user/assistant starting with user (gemma)"),
            2);
  EXPECT_EQ(st.ToJson()["dropped_template"].size(), 2u);
  TokenizeOptions z = o;
  z.chat_template = ChatTemplate::kZephyr;
  TokenizeStats zs;
  auto zt = TokenizePair(*tok, twice, z, &zs);
  ASSERT_TRUE(zt.ok() && zt->has_value());
  EXPECT_TRUE(zs.dropped_template.empty());
}

TEST(BatchingTest, LengthGroupedBatchesCoverEverythingOnceLongestFirst) {
  std::vector<int64_t> lengths;
  for (int i = 0; i < 1000; ++i) lengths.push_back((i * 7919) % 500 + 1);
  auto batches = LengthGroupedBatches(lengths, 8, 42, 10);
  std::vector<int> seen(lengths.size(), 0);
  for (const auto& b : batches) {
    EXPECT_LE(b.size(), 8u);
    for (int64_t i : b) ++seen[i];
  }
  for (int s : seen) EXPECT_EQ(s, 1);
  const int64_t longest = *std::max_element(lengths.begin(), lengths.end());
  EXPECT_EQ(lengths[batches[0][0]], longest);
  EXPECT_EQ(batches, LengthGroupedBatches(lengths, 8, 42, 10));
  EXPECT_NE(batches, LengthGroupedBatches(lengths, 8, 43, 10));

  std::vector<std::vector<int64_t>> random;
  auto perm = SeededPermutation(lengths.size(), 42);
  for (size_t i = 0; i < perm.size(); i += 8) {
    random.emplace_back(perm.begin() + i, perm.begin() + std::min(perm.size(), i + 8));
  }
  const double grouped = PaddingFraction(batches, {lengths});
  EXPECT_LT(grouped, 0.1);
  EXPECT_GT(PaddingFraction(random, {lengths}), 3 * grouped);
  EXPECT_DOUBLE_EQ(PaddingFraction({{0, 1}}, {{2, 4}}), 0.25);
}

TEST(CatalogTest, ResolvesNamesSplitsAndRoots) {
  TempDir dir;
  ASSERT_TRUE(WriteFileAtomic(dir / "a.jsonl", "").ok());
  const std::string yaml =
      "root: data\n"
      "datasets:\n"
      "  arena:\n"
      "    adapter: arena\n"
      "    splits:\n"
      "      train: {path: a.jsonl, split: train}\n"
      "      test: {path: a.jsonl, split: validation}\n"
      "  sum-cnn:\n"
      "    adapter: summarize\n"
      "    subset: cnn\n"
      "    splits:\n"
      "      test: {path: /abs/comparisons.jsonl, split: valid2}\n";
  auto c = Catalog::Parse(yaml, "cat.yaml", "/base", dir.path());
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  auto r = c->Resolve("arena");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->name, "arena:train");
  EXPECT_EQ(r->path, dir / "a.jsonl");
  EXPECT_EQ(r->read.format, "arena");
  EXPECT_EQ(r->read.split, "train");
  EXPECT_EQ(c->Resolve("arena:test")->read.split, "validation");
  auto cnn = c->Resolve("sum-cnn", /*check_file=*/false);
  ASSERT_TRUE(cnn.ok());
  EXPECT_EQ(cnn->name, "sum-cnn:test");  // its only split
  EXPECT_EQ(cnn->read.subset, "cnn");
  EXPECT_EQ(cnn->path, "/abs/comparisons.jsonl");
  auto missing = c->Resolve("sum-cnn");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("dataset 'sum-cnn:test'"), std::string::npos);
  EXPECT_NE(missing.status().message().find("/abs/comparisons.jsonl"), std::string::npos);
  auto unknown = c->Resolve("nope");
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("known: arena, sum-cnn"), std::string::npos);
  EXPECT_FALSE(c->Resolve("arena:dev").ok());
  // Without a data root, paths sit under base_dir/root.
  auto d = Catalog::Parse(yaml, "cat.yaml", "/base");
  EXPECT_EQ(d->Resolve("arena", false)->path, "/base/data/a.jsonl");
}

TEST(CatalogTest, BadCatalogsNameLineAndField) {
  auto bad_adapter =
      Catalog::Parse("datasets:\n  x:\n    adapter: nosuch\n    splits: {a: b}\n", "c.yaml", ".");
  ASSERT_FALSE(bad_adapter.ok());
  EXPECT_NE(bad_adapter.status().message().find("c.yaml:3"), std::string::npos)
      << bad_adapter.status().message();
  EXPECT_NE(bad_adapter.status().message().find("'adapter'"), std::string::npos);
  auto unknown = Catalog::Parse(
      "datasets:\n  x:\n    adapter: pairs\n    splits: {a: b}\n    colour: red\n", "c.yaml", ".");
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("c.yaml:5"), std::string::npos)
      << unknown.status().message();
  EXPECT_NE(unknown.status().message().find("'colour'"), std::string::npos);
  auto yaml = Catalog::Parse("datasets: [\n", "c.yaml", ".");
  ASSERT_FALSE(yaml.ok());
  EXPECT_NE(yaml.status().message().find("not valid YAML"), std::string::npos);
  EXPECT_FALSE(Catalog::Parse("datasets:\n  x:\n    adapter: pairs\n", "c.yaml", ".").ok());
}

TEST(CatalogTest, ShippedCatalogNamesEveryStudyDataset) {
  auto c = Catalog::Load(SourcePath("configs/datasets.yaml"));
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  for (const char* name : {"ultra", "arena", "hh", "nectar", "webgpt", "sum-reddit", "sum-cnn",
                           "sum-dailymail", "rewardbench", "ultra-lm3-sft", "ultra-lm3-rlhf"}) {
    EXPECT_TRUE(c->Resolve(name, /*check_file=*/false).ok()) << name;
  }
}

TEST(SynthTest, SuiteIsDeterministicDisjointAndShifted) {
  TempDir a, b;
  SynthOptions o;
  o.seed = 7;
  o.train = 300;
  o.validation = 60;
  o.shifted = 60;
  ASSERT_TRUE(WriteSyntheticSuite(a.path(), o).ok());
  ASSERT_TRUE(WriteSyntheticSuite(b.path(), o).ok());
  for (const char* f :
       {"train.jsonl", "validation.jsonl", "prompt_shift.jsonl", "response_shift.jsonl"}) {
    EXPECT_EQ(*ReadFile(a / f), *ReadFile(b / f)) << f;
  }
  auto cat = Catalog::Load(a / "datasets.yaml");
  ASSERT_TRUE(cat.ok()) << cat.status().ToString();
  auto read = [&](const std::string& ref) {
    std::vector<PreferencePair> out;
    auto r = cat->Resolve(ref);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    DatasetStats s;
    EXPECT_TRUE(ReadDataset(
                    r->path, r->read, [&](PreferencePair&& p) { out.push_back(p); }, &s)
                    .ok());
    EXPECT_EQ(s.pairs, s.records);
    return out;
  };
  auto train = read("synth-id:train"), val = read("synth-id:validation");
  auto ps = read("synth-prompt-shift"), rs = read("synth-response-shift");
  EXPECT_EQ(train.size(), 300u);
  EXPECT_EQ(val.size(), 60u);
  std::set<std::string> train_prompts;
  for (const auto& p : train) train_prompts.insert(CanonicalPrompt(p.prompt));
  for (const auto& p : val) EXPECT_FALSE(train_prompts.count(CanonicalPrompt(p.prompt)));
  // Prompt shift: new prompt frames, responses in the ID style.
  for (const auto& p : ps) {
    EXPECT_EQ(p.prompt[0].content.rfind("QUESTION:", 0), 0u);
    EXPECT_EQ(p.chosen[0].content.find("Here is a longer reply"), std::string::npos);
  }
  // Response shift: ID prompt frames, longer responses in new frames.
  auto mean_len = [](const std::vector<PreferencePair>& v) {
    double s = 0;
    for (const auto& p : v) s += p.chosen[0].content.size();
    return s / v.size();
  };
  for (const auto& p : rs) EXPECT_NE(p.prompt[0].content.rfind("QUESTION:", 0), 0u);
  EXPECT_GT(mean_len(rs), 1.8 * mean_len(train));
  // The suite's tokenizer encodes its text without unknown pieces.
  auto tok = Tokenizer::Load(a / "tokenizer.model");
  ASSERT_TRUE(tok.ok()) << tok.status().ToString();
  for (int id : (*tok)->EncodePlain(ps[0].prompt[0].content + " " + rs[0].chosen[0].content)) {
    EXPECT_NE(id, (*tok)->unk_id());
  }
  EXPECT_EQ((*tok)->bos_id(), 1);
  EXPECT_EQ((*tok)->eos_id(), 2);
  EXPECT_EQ((*tok)->pad_id(), 3);
}

TEST(SynthTest, UltraFeedbackLengthsAreLongAndKeepThePreferenceRule) {
  TempDir dir;
  SynthOptions o;
  o.seed = 5;
  o.train = 400;
  o.validation = 40;
  o.shifted = 40;
  o.lengths = SynthLengths::kUltraFeedback;
  ASSERT_TRUE(WriteSyntheticSuite(dir.path(), o).ok());
  auto tok = Tokenizer::Load(dir / "tokenizer.model");
  ASSERT_TRUE(tok.ok()) << tok.status().ToString();
  std::vector<int64_t> prompts, responses;
  int64_t pairs = 0;
  for (const char* f : {"train.jsonl", "prompt_shift.jsonl", "response_shift.jsonl"}) {
    DatasetStats stats;
    ReadOptions ro;
    ro.format = "pairs";
    ASSERT_TRUE(ReadDataset(
                    dir / f, ro,
                    [&](PreferencePair&& p) {
                      ++pairs;
                      const std::string& q = p.prompt[0].content;
                      const std::string &c = p.chosen[0].content, &r = p.rejected[0].content;
                      // The filler has no topic word: the suite's rule still separates them.
                      EXPECT_GT(SynthOracleScore(q, c), SynthOracleScore(q, r)) << p.id;
                      if (std::string(f) != "train.jsonl") return;
                      prompts.push_back((*tok)->EncodePlain(q).size());
                      responses.push_back((*tok)->EncodePlain(c).size());
                      responses.push_back((*tok)->EncodePlain(r).size());
                    },
                    &stats)
                    .ok());
  }
  EXPECT_EQ(pairs, 480);
  auto quantile = [](std::vector<int64_t> v, double q) {
    std::sort(v.begin(), v.end());
    return double(v[static_cast<size_t>(q * (v.size() - 1))]);
  };
  // Targets: medians 90 and 250 tokens (log-normal sigma 0.9 and 0.7); the filler meets them
  // within the word-to-token slack, and the spread is log-normal's (p90/p50 = e^(1.28 sigma):
  // 3.2 and 2.5).
  EXPECT_NEAR(quantile(prompts, 0.5), 90, 20);
  EXPECT_NEAR(quantile(responses, 0.5), 250, 45);
  EXPECT_NEAR(quantile(prompts, 0.9) / quantile(prompts, 0.5), 3.2, 0.8);
  EXPECT_NEAR(quantile(responses, 0.9) / quantile(responses, 0.5), 2.5, 0.6);
  // At the study's 128 / 512 truncation: a good share of prompts and responses truncated.
  const auto over = [](const std::vector<int64_t>& v, int64_t n) {
    return double(std::count_if(v.begin(), v.end(), [&](int64_t x) { return x > n; })) / v.size();
  };
  EXPECT_GT(over(prompts, 128), 0.2);
  EXPECT_LT(over(prompts, 128), 0.5);
  EXPECT_GT(over(responses, 384), 0.15);
  EXPECT_EQ(nlohmann::json::parse(*ReadFile(dir / "meta.json"))["lengths"], "ultrafeedback");
  EXPECT_FALSE(ParseSynthLengths("long").ok());
}

}  // namespace
}  // namespace rmgen
