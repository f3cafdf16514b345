// The paper-mini suite (`rmgen data synth --profile paper-mini`): every catalog entry read
// through the catalog and the adapters gives the counts and drop reasons its design implies
// and no input errors; the preference rule holds on every set; the arena rows the gemma
// template cannot render, the multi-turn rows and the prompt shift are there; the same seed
// gives the same bytes.
#include <gtest/gtest.h>

#include <cctype>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "common/file.h"
#include "tests/test_util.h"
#include "worker/data/catalog.h"
#include "worker/data/chat_template.h"
#include "worker/data/dataset.h"
#include "worker/data/synth.h"

namespace rmgen {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::TempDir;

PaperMiniOptions Options(uint64_t seed = 7) {
  PaperMiniOptions o;
  o.seed = seed;
  o.rows = 200;
  o.test_rows = 60;
  return o;
}

struct Read {
  DatasetStats stats;
  std::vector<PreferencePair> pairs;
};

// One suite for the whole file (training its tokenizer takes a moment).
class PaperMiniTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir;
    status_ = new Status(WritePaperMiniSuite(dir_->path(), Options()));
  }
  static void TearDownTestSuite() {
    delete dir_;
    delete status_;
  }
  void SetUp() override { ASSERT_TRUE(status_->ok()) << status_->ToString(); }

  static Read ReadRef(const std::string& ref) {
    Read r;
    auto catalog = Catalog::Load((*dir_) / "datasets.yaml");
    EXPECT_TRUE(catalog.ok()) << catalog.status().ToString();
    if (!catalog.ok()) return r;
    auto resolved = catalog->Resolve(ref);
    EXPECT_TRUE(resolved.ok()) << resolved.status().ToString();
    if (!resolved.ok()) return r;
    Status st = ReadDataset(
        resolved->path, resolved->read, [&](PreferencePair&& p) { r.pairs.push_back(p); },
        &r.stats);
    EXPECT_TRUE(st.ok()) << ref << ": " << st.ToString();
    return r;
  }

  static TempDir* dir_;
  static Status* status_;
};
TempDir* PaperMiniTest::dir_ = nullptr;
Status* PaperMiniTest::status_ = nullptr;

TEST_F(PaperMiniTest, WritesEveryFileOfTheSuite) {
  for (const char* f :
       {"ultrafeedback_binarized/train_prefs.jsonl.gz",
        "ultrafeedback_binarized/test_prefs.jsonl.gz", "chatbot_arena_conversations/train.jsonl.gz",
        "hh-rlhf/train.jsonl.gz", "hh-rlhf/test.jsonl.gz", "nectar/nectar.jsonl.gz",
        "webgpt_comparisons/comparisons.jsonl.gz", "summarize_from_feedback/comparisons.jsonl.gz",
        "reward-bench/filtered.jsonl.gz", "datasets.yaml", "tokenizer.model", "model.json",
        "meta.json"}) {
    EXPECT_TRUE(FileExists((*dir_) / f)) << f;
  }
  // gzip with no timestamp.
  const std::string gz = *ReadFile((*dir_) / "hh-rlhf/train.jsonl.gz");
  ASSERT_GT(gz.size(), 10u);
  EXPECT_EQ(static_cast<unsigned char>(gz[0]), 0x1f);
  EXPECT_EQ(static_cast<unsigned char>(gz[1]), 0x8b);
  EXPECT_EQ(gz.substr(4, 4), std::string(4, '\0'));
  // The catalog has configs/datasets.yaml's names for the study's sources.
  auto mine = Catalog::Load((*dir_) / "datasets.yaml");
  ASSERT_TRUE(mine.ok()) << mine.status().ToString();
  std::set<std::string> names;
  for (const auto& n : mine->Names()) names.insert(n);
  EXPECT_EQ(names, (std::set<std::string>{"ultra", "arena", "hh", "nectar", "webgpt", "sum-reddit",
                                          "sum-cnn", "sum-dailymail", "rewardbench"}));
  auto study = Catalog::Load(testing::SourcePath("configs/datasets.yaml"), dir_->path());
  ASSERT_TRUE(study.ok()) << study.status().ToString();
  for (const auto& n : names) {
    for (const char* split : {"train", "test"}) {
      auto a = mine->Resolve(n + ":" + split), b = study->Resolve(n + ":" + split);
      ASSERT_EQ(a.ok(), b.ok()) << n << ":" << split;
      if (!a.ok()) continue;
      EXPECT_EQ(a->path, b->path) << n << ":" << split;  // the same relative path
      EXPECT_EQ(a->read.format, b->read.format) << n;
      EXPECT_EQ(a->read.subset, b->read.subset) << n;
      EXPECT_EQ(a->read.split, b->read.split) << n;
      EXPECT_EQ(a->read.adapter.pairing, b->read.adapter.pairing) << n;
    }
  }
  // model.json is sized to the tokenizer.
  const json model = json::parse(*ReadFile((*dir_) / "model.json"));
  const json meta = json::parse(*ReadFile((*dir_) / "meta.json"));
  EXPECT_EQ(model["vocab_size"], meta["vocab_size"]);
  EXPECT_GT(model["vocab_size"].get<int>(), 300);
}

TEST_F(PaperMiniTest, EveryCatalogEntryGivesItsExpectedCountsAndDrops) {
  const PaperMiniCounts c = PaperMiniCountsFor(Options());
  ASSERT_EQ(c.rows, 200);
  ASSERT_EQ(c.test, 60);
  ASSERT_EQ(c.few, 2);
  ASSERT_EQ(c.few_test, 1);
  ASSERT_EQ(c.aux, 66);
  ASSERT_EQ(c.rewardbench_per_subset, 3);
  const int64_t R = c.rows, T = c.test, F = c.few, A = c.aux;
  const int64_t sum_records = R + T + F + 2 * T;
  struct Expect {
    const char* ref;
    int64_t records, pairs;
    std::map<std::string, int64_t> dropped;
  };
  const Expect expected[] = {
      {"ultra:train", R + F, R, {{"tie", F}}},
      {"ultra:test", T + c.few_test, T, {{"tie", c.few_test}}},
      {"arena:train",
       R + T + 3 * F,
       R,
       {{"tie", 2 * F}, {"divergent_history", F}, {"other_split", T}}},
      {"arena:test",
       R + T + 3 * F,
       T,
       {{"tie", 2 * F}, {"divergent_history", F}, {"other_split", R}}},
      {"hh:train", R, R, {}},
      {"hh:test", T, T, {}},
      {"nectar:train", A + T, A, {{"other_split", T}}},
      {"nectar:test", A + T, T, {{"other_split", A}}},
      {"webgpt:train", A + T + F, A, {{"tie", F}, {"other_split", T}}},
      {"webgpt:test", A + T + F, T, {{"tie", F}, {"other_split", A}}},
      {"sum-reddit:train", sum_records, R, {{"other_subset", 2 * T}, {"other_split", T + F}}},
      {"sum-reddit:test", sum_records, T, {{"other_subset", 2 * T}, {"other_split", R + F}}},
      {"sum-cnn:test", sum_records, T, {{"other_subset", R + 2 * T + F}}},
      {"sum-dailymail:test", sum_records, T, {{"other_subset", R + 2 * T + F}}},
      {"rewardbench:test", 23 * 3, 23 * 3, {}},
  };
  const json meta = json::parse(*ReadFile((*dir_) / "meta.json"));
  for (const Expect& e : expected) {
    const Read r = ReadRef(e.ref);
    EXPECT_EQ(r.stats.records, e.records) << e.ref;
    EXPECT_EQ(r.stats.pairs, e.pairs) << e.ref;
    EXPECT_EQ(r.stats.dropped, e.dropped) << e.ref;
    EXPECT_EQ(r.stats.error_count, 0) << e.ref << ": " << r.stats.ToJson().dump();
    EXPECT_EQ(meta["datasets"][e.ref]["pairs"], e.pairs) << e.ref;
    EXPECT_EQ(meta["datasets"][e.ref]["dropped"], json(e.dropped)) << e.ref;
  }
}

// Words of `text` (letters only, lower case).
std::vector<std::string> Words(const std::string& text) {
  std::vector<std::string> out;
  std::string w;
  for (char ch : text + " ") {
    if (std::isalpha(static_cast<unsigned char>(ch))) {
      w += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    } else if (!w.empty()) {
      out.push_back(w);
      w.clear();
    }
  }
  return out;
}

TEST_F(PaperMiniTest, ChosenStaysOnThePromptsTopicAndRejectedDrifts) {
  const auto& topics = PaperMiniTopics();
  std::map<std::string, size_t> topic_of;
  for (size_t t = 0; t < topics.size(); ++t) {
    for (const auto& w : topics[t]) {
      EXPECT_TRUE(topic_of.emplace(w, t).second) << w << " is in two topics";
    }
  }
  auto counts = [&](const std::string& text) {
    std::vector<int> n(topics.size(), 0);
    for (const auto& w : Words(text)) {
      auto it = topic_of.find(w);
      if (it != topic_of.end()) ++n[it->second];
    }
    return n;
  };
  for (const char* ref :
       {"ultra:train", "ultra:test", "arena:train", "arena:test", "hh:train", "hh:test",
        "nectar:train", "nectar:test", "webgpt:train", "webgpt:test", "sum-reddit:train",
        "sum-reddit:test", "sum-cnn:test", "sum-dailymail:test", "rewardbench:test"}) {
    const Read r = ReadRef(ref);
    ASSERT_FALSE(r.pairs.empty()) << ref;
    for (const auto& p : r.pairs) {
      std::string prompt;
      for (const auto& m : p.prompt) prompt += m.content + "\n";
      const std::vector<int> pc = counts(prompt);
      const size_t topic = static_cast<size_t>(std::max_element(pc.begin(), pc.end()) - pc.begin());
      ASSERT_GT(pc[topic], 0) << ref << ": " << prompt;
      const int on_chosen = counts(ResponseText(p.chosen))[topic];
      const int on_rejected = counts(ResponseText(p.rejected))[topic];
      EXPECT_GT(on_chosen, on_rejected) << ref << " " << p.id << ": " << prompt;
    }
  }
}

TEST_F(PaperMiniTest, ArenaHasMultiTurnRowsAndRowsGemmaCannotRender) {
  const PaperMiniCounts c = PaperMiniCountsFor(Options());
  for (const bool test : {false, true}) {
    const Read r = ReadRef(test ? "arena:test" : "arena:train");
    int64_t multi = 0, double_user = 0, gemma_fails = 0;
    for (const auto& p : r.pairs) {
      if (p.prompt.size() == 3) ++multi;
      if (p.prompt.size() == 2 && p.prompt[0].role == "user" && p.prompt[1].role == "user") {
        ++double_user;
      }
      if (!RenderChat(ChatTemplate::kGemma, p.prompt, true).ok()) ++gemma_fails;
      EXPECT_TRUE(RenderChat(ChatTemplate::kZephyr, p.prompt, true).ok());
    }
    EXPECT_EQ(multi, test ? c.arena_multi_test : c.arena_multi_train);
    EXPECT_EQ(double_user, test ? c.arena_double_test : c.arena_double_train);
    EXPECT_EQ(gemma_fails, double_user);
  }
  int64_t hh_multi = 0;
  for (const auto& p : ReadRef("hh:train").pairs) hh_multi += p.prompt.size() == 3;
  EXPECT_EQ(hh_multi, c.hh_multi_train);
  int64_t nectar_multi = 0;
  for (const auto& p : ReadRef("nectar:test").pairs) nectar_multi += p.prompt.size() == 3;
  EXPECT_EQ(nectar_multi, c.nectar_multi_test);
}

TEST_F(PaperMiniTest, SplitsShareNoPromptAndSummarizeShiftsThePrompts) {
  for (const auto& [a, b] :
       std::vector<std::pair<std::string, std::string>>{{"ultra:train", "ultra:test"},
                                                        {"arena:train", "arena:test"},
                                                        {"hh:train", "hh:test"},
                                                        {"sum-reddit:train", "sum-reddit:test"}}) {
    std::set<std::string> train;
    for (const auto& p : ReadRef(a).pairs) train.insert(CanonicalPrompt(p.prompt));
    for (const auto& p : ReadRef(b).pairs) {
      EXPECT_EQ(train.count(CanonicalPrompt(p.prompt)), 0u) << a << " / " << b;
    }
  }
  for (const auto& p : ReadRef("sum-reddit:test").pairs) {
    EXPECT_EQ(p.prompt[0].content.rfind("SUBREDDIT: r/", 0), 0u);
  }
  for (const auto& p : ReadRef("sum-cnn:test").pairs) {
    EXPECT_EQ(p.subset, "cnn");
    EXPECT_NE(p.prompt[0].content.find("(CNN) -- "), std::string::npos);
    EXPECT_EQ(p.prompt[0].content.find("SUBREDDIT"), std::string::npos);
  }
  for (const auto& p : ReadRef("sum-dailymail:test").pairs) {
    EXPECT_NE(p.prompt[0].content.find("Daily Mail Reporter"), std::string::npos);
  }
  // RewardBench: every subset of the four sections, the same number of rows each.
  std::map<std::string, int> subsets;
  for (const auto& p : ReadRef("rewardbench:test").pairs) ++subsets[p.subset];
  EXPECT_EQ(subsets.size(), 23u);
  for (const char* s : {"alpacaeval-easy", "mt-bench-hard", "llmbar-natural", "refusals-dangerous",
                        "xstest-should-respond", "math-prm", "hep-python"}) {
    EXPECT_EQ(subsets[s], 3) << s;
  }
}

// Every regular file under `dir`, by relative path -> bytes.
std::map<std::string, std::string> Files(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.is_regular_file()) {
      out[fs::relative(e.path(), dir).string()] = *ReadFile(e.path().string());
    }
  }
  return out;
}

TEST_F(PaperMiniTest, SameSeedSameBytes) {
  TempDir again, other;
  ASSERT_TRUE(WritePaperMiniSuite(again.path(), Options()).ok());
  const auto a = Files(dir_->path()), b = Files(again.path());
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, bytes] : a) {
    ASSERT_TRUE(b.count(name)) << name;
    EXPECT_TRUE(bytes == b.at(name)) << name << " differs";
  }
  ASSERT_TRUE(WritePaperMiniSuite(other.path(), Options(8)).ok());
  EXPECT_NE(*ReadFile(other / "hh-rlhf/train.jsonl.gz"), a.at("hh-rlhf/train.jsonl.gz"));
}

TEST(PaperMiniOptionsTest, RejectsTooFewRows) {
  TempDir dir;
  PaperMiniOptions o;
  o.rows = 5;
  EXPECT_FALSE(WritePaperMiniSuite(dir.path(), o).ok());
}

}  // namespace
}  // namespace rmgen
