// Every adapter on fixtures in its source's real schema (tests/fixtures/data, written by
// make_fixtures.py with the outcome of every record known by construction), the record
// reader's formats, error reporting, splits and subsets.
#include "worker/data/dataset.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "common/file.h"
#include "tests/test_util.h"
#include "worker/data/record_reader.h"

namespace rmgen {
namespace {

using nlohmann::json;
using testing::SourcePath;
using testing::TempDir;

std::string Fixture(const std::string& name) { return SourcePath("tests/fixtures/data/" + name); }

std::vector<PreferencePair> ReadAll(const std::string& file, const ReadOptions& ro,
                                    DatasetStats* stats) {
  std::vector<PreferencePair> out;
  Status st = ReadDataset(
      Fixture(file), ro, [&](PreferencePair&& p) { out.push_back(p); }, stats);
  EXPECT_TRUE(st.ok()) << st.ToString();
  return out;
}

TEST(DatasetTest, EveryFixtureGivesItsExpectedCounts) {
  const json expected = json::parse(*ReadFile(Fixture("expected.json")));
  std::set<std::string> formats;
  for (const auto& [name, e] : expected.items()) {
    ReadOptions ro;
    ro.format = e["format"];
    const json& o = e["options"];
    if (o.contains("subset")) ro.subset = o["subset"];
    if (o.contains("split")) ro.split = o["split"];
    if (o.contains("prompt_field")) ro.adapter.prompt_field = o["prompt_field"];
    if (o.contains("chosen_field")) ro.adapter.chosen_field = o["chosen_field"];
    if (o.contains("rejected_field")) ro.adapter.rejected_field = o["rejected_field"];
    DatasetStats s;
    ReadAll(e.value("file", name), ro, &s);
    EXPECT_EQ(s.records, e["records"].get<int64_t>()) << name;
    EXPECT_EQ(s.pairs, e["pairs"].get<int64_t>()) << name;
    EXPECT_EQ(json(s.dropped), e["dropped"]) << name;
    int64_t sum = s.pairs;
    for (const auto& [r, n] : s.dropped) sum += n;
    EXPECT_EQ(sum, s.records) << name;
    formats.insert(ro.format);
  }
  // Every registered adapter has fixtures.
  for (const auto& n : AdapterNames()) EXPECT_TRUE(formats.count(n)) << "no fixture for " << n;
}

TEST(DatasetTest, GzipAndJsonArrayReadLikeJsonl) {
  ReadOptions ro;
  ro.format = "hh_rlhf";
  DatasetStats a, b, c;
  auto plain = ReadAll("hh_rlhf.jsonl", ro, &a);
  auto gz = ReadAll("hh_rlhf.jsonl.gz", ro, &b);
  auto arr = ReadAll("hh_rlhf_array.json", ro, &c);
  ASSERT_EQ(plain.size(), gz.size());
  ASSERT_EQ(plain.size(), arr.size());
  for (size_t i = 0; i < plain.size(); ++i) {
    EXPECT_EQ(PairToJson(plain[i])["chosen"], PairToJson(gz[i])["chosen"]);
    EXPECT_EQ(PairToJson(plain[i])["prompt"], PairToJson(arr[i])["prompt"]);
  }
}

TEST(DatasetTest, HhTranscriptsSplitIntoTurns) {
  ReadOptions ro;
  ro.format = "hh_rlhf";
  DatasetStats s;
  auto pairs = ReadAll("hh_rlhf.jsonl", ro, &s);
  ASSERT_GE(pairs.size(), 2u);
  const auto& multi = pairs[1];
  ASSERT_EQ(multi.prompt.size(), 3u);
  EXPECT_EQ(multi.prompt[0].role, "user");
  EXPECT_EQ(multi.prompt[0].content, "Hi");
  EXPECT_EQ(multi.prompt[1].role, "assistant");
  EXPECT_EQ(multi.prompt[2].content, "Tell me a joke");
  EXPECT_EQ(multi.chosen[0].content, "Why did the chicken cross the road?");
  EXPECT_EQ(multi.rejected[0].content, "No.");
  EXPECT_EQ(pairs[2].prompt[0].content, "Grüße, 東京 🚀 — naïve café");  // unicode intact
  EXPECT_GT(pairs[3].chosen[0].content.size(), 90000u);                 // the long record
}

TEST(DatasetTest, ErrorsNameFileLineAndField) {
  ReadOptions ro;
  ro.format = "hh_rlhf";
  DatasetStats s;
  ReadAll("hh_rlhf.jsonl", ro, &s);
  ASSERT_EQ(s.error_count, 3);
  EXPECT_EQ(s.errors[0].line, 7);
  EXPECT_EQ(s.errors[0].field, "rejected");
  EXPECT_NE(s.errors[0].file.find("hh_rlhf.jsonl"), std::string::npos);
  EXPECT_EQ(s.errors[1].line, 8);
  EXPECT_EQ(s.errors[1].field, "chosen");
  EXPECT_NE(s.errors[1].message.find("expected a string"), std::string::npos);

  DatasetStats b;
  ReadAll("hh_rlhf_broken_json.jsonl", ro, &b);
  ASSERT_EQ(b.errors.size(), 1u);
  EXPECT_EQ(b.errors[0].line, 2);
  EXPECT_EQ(b.errors[0].message, "not valid JSON");

  DatasetStats arena;
  ro.format = "arena";
  ReadAll("arena.jsonl", ro, &arena);
  ASSERT_EQ(arena.errors.size(), 2u);
  EXPECT_EQ(arena.errors[0].field, "winner");
  EXPECT_EQ(arena.errors[1].field, "conversation_b");
}

TEST(DatasetTest, StrictStopsAtTheFirstBadRecord) {
  ReadOptions ro;
  ro.format = "ultrafeedback";
  ro.strict = true;
  DatasetStats s;
  Status st = ReadDataset(
      Fixture("ultrafeedback.jsonl"), ro, [](PreferencePair&&) {}, &s);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("ultrafeedback.jsonl:5"), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("field 'chosen'"), std::string::npos) << st.message();
  EXPECT_EQ(s.pairs, 2);  // the good records before it were still delivered
}

TEST(DatasetTest, SourceFieldsAreKept) {
  ReadOptions ro;
  ro.format = "rewardbench";
  DatasetStats s;
  auto rb = ReadAll("rewardbench.jsonl", ro, &s);
  ASSERT_EQ(rb.size(), 6u);
  EXPECT_EQ(rb[0].subset, "alpacaeval-easy");
  EXPECT_EQ(rb[4].subset, "math-prm");
  EXPECT_EQ(rb[0].id, "0");
  ro.format = "ultrafeedback";
  auto uf = ReadAll("ultrafeedback.jsonl", ro, &s);
  ASSERT_FALSE(uf.empty());
  EXPECT_EQ(*uf[0].score_chosen, 8.0);
  EXPECT_EQ(*uf[0].score_rejected, 4.0);
  EXPECT_EQ(uf[0].id, "a");
  ro.format = "summarize";
  auto sum = ReadAll("summarize.jsonl", ro, &s);
  ASSERT_EQ(sum.size(), 4u);
  EXPECT_EQ(sum[0].prompt[0].content,
            "SUBREDDIT: r/cats\n\nTITLE: Cat problem\n\nPOST: My cat ate my homework.\n\nTL;DR:");
  EXPECT_EQ(sum[0].chosen[0].content, " first summary");
  EXPECT_EQ(sum[1].chosen[0].content, " second summary");
  EXPECT_EQ(sum[2].subset, "cnn");
  EXPECT_EQ(sum[2].prompt[0].content,
            "TITLE: Storm hits coast\n\nA storm hit the coast today.\n\nTL;DR:");
  EXPECT_EQ(sum[3].subset, "dailymail");
  EXPECT_EQ(sum[1].split, "valid1");
}

TEST(DatasetTest, NectarPairsBestWithASeededLowerRank) {
  ReadOptions ro;
  ro.format = "nectar";
  DatasetStats s;
  auto random = ReadAll("nectar.jsonl", ro, &s);
  ASSERT_EQ(random.size(), 3u);
  EXPECT_EQ(random[0].chosen[0].content, "Mix flour, water, yeast; knead; bake.");
  EXPECT_EQ(random[0].prompt.size(), 1u);
  EXPECT_EQ(random[0].prompt[0].content, "How do I bake bread?");
  EXPECT_EQ(random[1].prompt.size(), 3u);  // multi-turn prompt
  ro.adapter.pairing = "best_worst";
  auto bw = ReadAll("nectar.jsonl", ro, &s);
  EXPECT_EQ(bw[0].rejected[0].content, "No idea.");
  // The random pairing is reproducible and depends on the seed.
  std::set<std::string> seen;
  for (uint64_t seed = 0; seed < 16; ++seed) {
    ro.adapter.pairing = "random";
    ro.adapter.seed = seed;
    seen.insert(ReadAll("nectar.jsonl", ro, &s)[0].rejected[0].content);
  }
  EXPECT_GT(seen.size(), 1u);
}

TEST(DatasetTest, HashSplitKeepsPromptsOnOneSide) {
  ReadOptions ro;
  ro.format = "pairs";
  TempDir dir;
  std::string text;
  for (int i = 0; i < 400; ++i) {
    // Two pairs per prompt: both must land on the same side.
    for (int k = 0; k < 2; ++k) {
      text += json({{"prompt", "prompt " + std::to_string(i)},
                    {"chosen", "c" + std::to_string(k)},
                    {"rejected", "r" + std::to_string(k)}})
                  .dump() +
              "\n";
    }
  }
  ASSERT_TRUE(WriteFileAtomic(dir / "p.jsonl", text).ok());
  std::map<std::string, std::set<std::string>> sides;
  int64_t total = 0;
  for (const char* split : {"train", "validation"}) {
    ro.split = split;
    ro.val_fraction = 0.25;
    DatasetStats s;
    ASSERT_TRUE(ReadDataset(
                    dir / "p.jsonl", ro,
                    [&](PreferencePair&& p) {
                      EXPECT_EQ(p.split, split);
                      sides[split].insert(p.prompt[0].content);
                    },
                    &s)
                    .ok());
    total += s.pairs;
    EXPECT_EQ(s.dropped["other_split"] + s.pairs, 800);
  }
  EXPECT_EQ(total, 800);
  for (const auto& p : sides["train"]) EXPECT_FALSE(sides["validation"].count(p)) << p;
  EXPECT_NEAR(sides["validation"].size() / 400.0, 0.25, 0.07);
}

TEST(RecordReaderTest, StructuralErrorsNameFileAndLine) {
  TempDir dir;
  auto read_all = [&](const std::string& name, const std::string& content) -> Status {
    EXPECT_TRUE(WriteFileAtomic(dir / name, content).ok());
    auto r = RecordReader::Open(dir / name);
    if (!r.ok()) return r.status();
    std::string rec;
    int64_t line;
    while (true) {
      auto more = (*r)->Next(&rec, &line);
      if (!more.ok()) return more.status();
      if (!*more) return Status::Ok();
    }
  };
  Status s = read_all("unterminated.json", "[\n{\"a\": 1},\n{\"b\": 2}\n");
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("unterminated.json"), std::string::npos);
  EXPECT_NE(s.message().find("unterminated JSON array"), std::string::npos);
  s = read_all("unclosed.json", "[{\"a\": 1}, ");
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("no closing ']'"), std::string::npos) << s.message();
  s = read_all("trailing.json", "[{\"a\": 1}] x");
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("after the closing"), std::string::npos);
  s = read_all("string.json", "[{\"a\": \"]}");
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(read_all("empty.jsonl", "").ok());
  EXPECT_TRUE(read_all("empty_array.json", "  [ ]  \n").ok());
  EXPECT_FALSE(RecordReader::Open(dir / "absent.jsonl").ok());
  // A gzip file cut short is an error, not a silent end.
  const std::string gz = *ReadFile(Fixture("hh_rlhf.jsonl.gz"));
  s = read_all("cut.jsonl.gz", gz.substr(0, gz.size() / 2));
  EXPECT_FALSE(s.ok());
}

TEST(RecordReaderTest, ArrayElementsCarryTheirLine) {
  TempDir dir;
  ASSERT_TRUE(
      WriteFileAtomic(dir / "a.json", "\xEF\xBB\xBF[\n {\"x\": \"a,]b\"},\n\n {\"y\": [1, 2]}\n]\n")
          .ok());
  auto r = std::move(RecordReader::Open(dir / "a.json")).value();
  std::string rec;
  int64_t line = 0;
  ASSERT_TRUE(*r->Next(&rec, &line));
  EXPECT_EQ(rec, "{\"x\": \"a,]b\"}");
  EXPECT_EQ(line, 2);
  ASSERT_TRUE(*r->Next(&rec, &line));
  EXPECT_EQ(rec, "{\"y\": [1, 2]}");
  EXPECT_EQ(line, 4);
  EXPECT_FALSE(*r->Next(&rec, &line));
}

}  // namespace
}  // namespace rmgen
