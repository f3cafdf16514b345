// `rmgen data` as a process: the stats contract on every fixture, convert, overlap, synth,
// tokenize, and the exit codes of bad input.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "common/file.h"
#include "tests/cli/run_cli.h"
#include "tests/test_util.h"

namespace rmgen {
namespace {

using nlohmann::json;
using testing::RunCli;
using testing::SourcePath;
using testing::TempDir;

std::string Fixture(const std::string& n) { return SourcePath("tests/fixtures/data/" + n); }

TEST(DataCliTest, StatsContractHoldsOnEveryFixture) {
  const json expected = json::parse(*ReadFile(Fixture("expected.json")));
  for (const auto& [name, e] : expected.items()) {
    std::string args = "data stats --json --format " + e["format"].get<std::string>() +
                       " --input " + Fixture(e.value("file", name));
    const json& o = e["options"];
    if (o.contains("subset")) args += " --subset " + o["subset"].get<std::string>();
    if (o.contains("split")) args += " --split " + o["split"].get<std::string>();
    if (o.contains("prompt_field"))
      args += " --prompt-field " + o["prompt_field"].get<std::string>();
    if (o.contains("chosen_field"))
      args += " --chosen-field " + o["chosen_field"].get<std::string>();
    if (o.contains("rejected_field")) {
      args += " --rejected-field " + o["rejected_field"].get<std::string>();
    }
    auto r = RunCli(args, /*merge_stderr=*/false);
    ASSERT_EQ(r.code, 0) << name << ": " << r.out;
    json j = json::parse(r.out);
    EXPECT_EQ(j["records"], e["records"]) << name;
    EXPECT_EQ(j["pairs"], e["pairs"]) << name;
    EXPECT_EQ(j["dropped"], e["dropped"]) << name;
    int64_t sum = j["pairs"];
    for (const auto& [k, v] : j["dropped"].items()) sum += v.get<int64_t>();
    EXPECT_EQ(sum, j["records"].get<int64_t>()) << name;
    ASSERT_TRUE(j["errors"].is_array());
    for (const auto& err : j["errors"]) {
      for (const char* k : {"file", "line", "field", "message"}) EXPECT_TRUE(err.contains(k));
    }
  }
}

TEST(DataCliTest, StrictFailsNamingTheRecord) {
  auto r = RunCli("data stats --strict --format arena --input " + Fixture("arena.jsonl"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("arena.jsonl:7"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("'winner'"), std::string::npos) << r.out;
}

TEST(DataCliTest, ConvertWritesPairsTheGenericAdapterReadsBack) {
  TempDir dir;
  auto r = RunCli("data convert --format hh_rlhf --input " + Fixture("hh_rlhf.jsonl.gz") +
                  " --out " + (dir / "hh.jsonl"));
  ASSERT_EQ(r.code, 0) << r.out;
  auto back = RunCli("data stats --json --format pairs --input " + (dir / "hh.jsonl"), false);
  ASSERT_EQ(back.code, 0) << back.out;
  json j = json::parse(back.out);
  EXPECT_EQ(j["pairs"], 4);
  EXPECT_EQ(j["records"], 4);
  auto overlap =
      RunCli("data overlap --json " + (dir / "hh.jsonl") + " " + (dir / "hh.jsonl"), false);
  ASSERT_EQ(overlap.code, 0) << overlap.out;
  json o = json::parse(overlap.out);
  EXPECT_EQ(o["shared_prompts"], o["a_prompts"]);
  EXPECT_EQ(o["a_prompts"], 4);
}

TEST(DataCliTest, SynthThenTokenizeReportsPadding) {
  TempDir dir;
  auto r = RunCli("data synth --out " + dir.path() +
                  " --seed 3 --train 200 --validation 40 "
                  "--shifted 40");
  ASSERT_EQ(r.code, 0) << r.out;
  auto ov = RunCli(
      "data overlap --json " + (dir / "train.jsonl") + " " + (dir / "validation.jsonl"), false);
  ASSERT_EQ(ov.code, 0);
  EXPECT_EQ(json::parse(ov.out)["shared_prompts"], 0);
  auto t = RunCli("data tokenize --json --catalog " + (dir / "datasets.yaml") +
                      " --dataset synth-id:train --tokenizer " + (dir / "tokenizer.model") +
                      " --template zephyr --batch-size 8",
                  false);
  ASSERT_EQ(t.code, 0) << t.out;
  json j = json::parse(t.out);
  EXPECT_EQ(j["tokenize"]["pairs"], 200);
  EXPECT_LT(j["padding_fraction_length_grouped"].get<double>(),
            j["padding_fraction_random"].get<double>());
  EXPECT_EQ(j["tokenize"]["prompt_truncated"], 0);  // the short profile fits 512 / 128

  // The UltraFeedback-like lengths: truncated at the study's 512 / 128 like the real data.
  TempDir uf;
  auto lr = RunCli("data synth --out " + uf.path() +
                   " --seed 3 --train 200 --validation 20 --shifted 20 --lengths ultrafeedback");
  ASSERT_EQ(lr.code, 0) << lr.out;
  EXPECT_NE(lr.out.find("ultrafeedback lengths"), std::string::npos) << lr.out;
  auto ut = RunCli("data tokenize --json --catalog " + (uf / "datasets.yaml") +
                       " --dataset synth-id:train --tokenizer " + (uf / "tokenizer.model") +
                       " --template zephyr",
                   false);
  ASSERT_EQ(ut.code, 0) << ut.out;
  const json u = json::parse(ut.out);
  EXPECT_GT(u["tokenize"]["prompt_truncated"].get<int64_t>(), 20);
  EXPECT_GT(u["tokenize"]["response_truncated"].get<int64_t>(), 40);
  EXPECT_GT(u["tokens"].get<double>() / 400.0, 5 * j["tokens"].get<double>() / 400.0);
  auto bad = RunCli("data synth --out " + (uf / "x") + " --lengths long");
  EXPECT_EQ(bad.code, 1);
  EXPECT_NE(bad.out.find("expected short or ultrafeedback, got 'long'"), std::string::npos)
      << bad.out;
}

TEST(DataCliTest, SynthPaperMiniThenStatsThroughItsCatalog) {
  TempDir dir;
  // --rows 100: 100 training pairs per training source, 30 per test split, 2 of each kind of
  // dropped row (synth.h).
  auto r = RunCli("data synth --profile paper-mini --out " + dir.path() + " --seed 1 --rows 100");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("paper-mini"), std::string::npos) << r.out;
  auto stats = [&](const std::string& ref) {
    auto s = RunCli("data stats --json --catalog " + (dir / "datasets.yaml") + " --dataset " + ref,
                    false);
    EXPECT_EQ(s.code, 0) << ref << ": " << s.out;
    return s.code == 0 ? json::parse(s.out) : json();
  };
  const json arena = stats("arena:test");
  EXPECT_EQ(arena["pairs"], 30);
  EXPECT_EQ(arena["records"], 136);
  EXPECT_EQ(arena["dropped"], json({{"tie", 4}, {"divergent_history", 2}, {"other_split", 100}}));
  EXPECT_EQ(arena["error_count"], 0);
  const json cnn = stats("sum-cnn:test");
  EXPECT_EQ(cnn["pairs"], 30);
  EXPECT_EQ(cnn["dropped"], json({{"other_subset", 100 + 30 + 2 + 30}}));
  EXPECT_EQ(cnn["error_count"], 0);
  const json ultra = stats("ultra:train");
  EXPECT_EQ(ultra["pairs"], 100);
  EXPECT_EQ(ultra["dropped"], json({{"tie", 2}}));
  // meta.json carries the same counts.
  const json meta = json::parse(*ReadFile(dir / "meta.json"));
  EXPECT_EQ(meta["datasets"]["arena:test"]["dropped"], arena["dropped"]);
  EXPECT_EQ(meta["datasets"]["sum-cnn:test"]["pairs"], 30);

  auto bad = RunCli("data synth --profile nope --out " + (dir / "x"));
  EXPECT_EQ(bad.code, 1);
  EXPECT_NE(bad.out.find("expected shift or paper-mini"), std::string::npos) << bad.out;
  auto mixed = RunCli("data synth --profile paper-mini --train 10 --out " + (dir / "y"));
  EXPECT_EQ(mixed.code, 1);
  EXPECT_NE(mixed.out.find("--train"), std::string::npos) << mixed.out;
  EXPECT_EQ(RunCli("data synth --rows 50 --out " + (dir / "z")).code, 1);
  EXPECT_EQ(
      RunCli("data synth --profile paper-mini --lengths ultrafeedback --out " + (dir / "w")).code,
      1);
}

TEST(DataCliTest, BadInputGivesClearErrors) {
  auto missing = RunCli("data stats --format pairs --input /nonexistent/x.jsonl");
  EXPECT_EQ(missing.code, 1);
  EXPECT_NE(missing.out.find("/nonexistent/x.jsonl"), std::string::npos);
  auto format = RunCli("data stats --format parquet --input " + Fixture("pairs.jsonl"));
  EXPECT_EQ(format.code, 1);
  EXPECT_NE(format.out.find("unknown dataset format 'parquet'"), std::string::npos);
  auto catalog = RunCli("data stats --catalog " + SourcePath("configs/datasets.yaml") +
                        " --data-root /nonexistent --dataset hh");
  EXPECT_EQ(catalog.code, 1);
  EXPECT_NE(catalog.out.find("dataset 'hh:train'"), std::string::npos) << catalog.out;
  EXPECT_EQ(RunCli("data").code, 2);
  EXPECT_EQ(RunCli("data frobnicate").code, 2);
  EXPECT_EQ(RunCli("data stats --format").code, 2);
}

}  // namespace
}  // namespace rmgen
