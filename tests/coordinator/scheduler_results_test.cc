// The scheduler's policy (gang, best fit, priorities, per-user fairness, draining, several
// nodes, reasons) and the results tables (mean, sample std, OOD mean, win rates, formats).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <sstream>

#include "coordinator/results.h"
#include "coordinator/scheduler.h"

namespace rmgen::coord {
namespace {

using nlohmann::json;

std::vector<JobRecord> Jobs(const std::vector<std::tuple<std::string, int64_t, int64_t>>& spec) {
  std::vector<JobRecord> out;
  int64_t seq = 0;
  for (const auto& [user, ranks, priority] : spec) {
    JobRecord j;
    j.id = "j" + std::to_string(seq);
    j.seq = seq++;
    j.user = user;
    j.ranks = ranks;
    j.priority = priority;
    j.state = JobState::kQueued;
    out.push_back(j);
  }
  return out;
}

std::vector<const JobRecord*> Ptrs(const std::vector<JobRecord>& v) {
  std::vector<const JobRecord*> p;
  for (const auto& j : v) p.push_back(&j);
  return p;
}

std::map<std::string, std::vector<std::pair<std::string, int64_t>>> ByJob(const SchedulePass& p) {
  std::map<std::string, std::vector<std::pair<std::string, int64_t>>> m;
  for (const auto& x : p.placements) m[x.job_id] = x.workers;
  return m;
}

TEST(SchedulerTest, GangBestFitAndReasons) {
  auto jobs = Jobs({{"ana", 4, 0}, {"ana", 2, 0}, {"ana", 16, 0}});
  auto pass = Schedule(Ptrs(jobs), {{"big", 8, 8, true, true}, {"small", 4, 4, true, true}}, {});
  auto m = ByJob(pass);
  // 4 ranks: best fit is the 4-slot worker, leaving the 8-slot one whole.
  EXPECT_EQ(m["j0"], (std::vector<std::pair<std::string, int64_t>>{{"small", 4}}));
  EXPECT_EQ(m["j1"], (std::vector<std::pair<std::string, int64_t>>{{"big", 2}}));
  // 16 ranks > both nodes together.
  EXPECT_FALSE(m.count("j2"));
  EXPECT_NE(pass.waiting["j2"].find("can span hosts have 12 in all"), std::string::npos)
      << pass.waiting["j2"];
}

TEST(SchedulerTest, AJobLargerThanANodeSpansIdleNodes) {
  auto jobs = Jobs({{"ana", 12, 0}});
  auto pass = Schedule(
      Ptrs(jobs), {{"a", 8, 8, true, true}, {"b", 8, 8, true, true}, {"c", 8, 3, true, true}}, {});
  ASSERT_EQ(pass.placements.size(), 1u);
  const auto& w = pass.placements[0].workers;
  ASSERT_EQ(w.size(), 2u);
  EXPECT_EQ(w[0].second + w[1].second, 12);
  EXPECT_NE(w[0].first, "c");
  EXPECT_NE(w[1].first, "c");
}

// Workers that cannot span hosts (Slurm agents: srun stays inside their allocation) never
// share a job; a job larger than every one of them waits, saying why.
TEST(SchedulerTest, AJobIsNeverSplitOverWorkersThatCannotSpanHosts) {
  auto jobs = Jobs({{"ana", 12, 0}});
  auto pass = Schedule(Ptrs(jobs), {{"s1", 8, 8, true, false}, {"s2", 8, 8, true, false}}, {});
  EXPECT_TRUE(pass.placements.empty());
  EXPECT_NE(pass.waiting["j0"].find("can span hosts have 0 in all"), std::string::npos)
      << pass.waiting["j0"];
  // One spanning worker and one that cannot: still not enough to span.
  pass = Schedule(Ptrs(jobs), {{"m", 8, 8, true, true}, {"s", 8, 8, true, false}}, {});
  EXPECT_TRUE(pass.placements.empty());
  // Two spanning ones: placed over both, the largest first.
  pass =
      Schedule(Ptrs(jobs),
               {{"m1", 8, 8, true, true}, {"m2", 4, 4, true, true}, {"s", 8, 8, true, false}}, {});
  ASSERT_EQ(pass.placements.size(), 1u);
  EXPECT_EQ(pass.placements[0].workers,
            (std::vector<std::pair<std::string, int64_t>>{{"m1", 8}, {"m2", 4}}));
}

// A multi-node job waiting for idle workers holds them as they drain: the 1-rank jobs behind
// it go elsewhere or wait, instead of refilling its workers forever.
TEST(SchedulerTest, AWaitingMultiNodeJobHoldsItsWorkersAgainstBackfill) {
  auto jobs = Jobs({{"ana", 8, 0}, {"bob", 1, 0}, {"bob", 1, 0}, {"bob", 1, 0}});
  // a and b (4 slots each) both have a slot busy; c cannot span hosts.
  std::vector<WorkerCapacity> workers = {
      {"a", 4, 3, true, true}, {"b", 4, 3, true, true}, {"c", 2, 2, true, false}};
  auto pass = Schedule(Ptrs(jobs), workers, {});
  EXPECT_EQ(pass.holding_job, "j0");
  EXPECT_EQ(pass.held_workers, (std::vector<std::string>{"a", "b"}));
  EXPECT_NE(pass.waiting["j0"].find("holding 2 worker(s)"), std::string::npos)
      << pass.waiting["j0"];
  auto m = ByJob(pass);
  // bob's jobs: two fit on c; none lands on a or b.
  int on_c = 0;
  for (const auto& [job, where] : m) {
    ASSERT_EQ(where.size(), 1u);
    EXPECT_EQ(where[0].first, "c") << job;
    ++on_c;
  }
  EXPECT_EQ(on_c, 2);
  // Once a and b drained, it starts on both.
  workers[0].free_slots = 4;
  workers[1].free_slots = 4;
  pass = Schedule(Ptrs(jobs), workers, {});
  EXPECT_EQ(ByJob(pass)["j0"], (std::vector<std::pair<std::string, int64_t>>{{"b", 4}, {"a", 4}}));
  EXPECT_TRUE(pass.holding_job.empty());
}

// The hold lasts across passes: in a later pass the fairness order puts bob's small jobs
// first (ana now holds slots elsewhere), yet they cannot take the workers held for ana's job.
TEST(SchedulerTest, AHoldLastsAcrossPassesWhateverTheOrder) {
  auto jobs = Jobs({{"ana", 8, 0}, {"bob", 1, 0}, {"bob", 1, 0}});
  std::vector<WorkerCapacity> workers = {{"a", 4, 3, true, true}, {"b", 4, 4, true, true}};
  auto first = Schedule(Ptrs(jobs), workers, {});
  ASSERT_EQ(first.holding_job, "j0");
  EXPECT_TRUE(first.placements.empty());
  // Without the hold carried over, bob (holding fewer slots than ana) goes first and fills b.
  auto unheld = Schedule(Ptrs(jobs), workers, {{"ana", 16}});
  EXPECT_EQ(unheld.placements.size(), 2u);
  auto held = Schedule(Ptrs(jobs), workers, {{"ana", 16}}, first.holding_job);
  EXPECT_TRUE(held.placements.empty());
  EXPECT_EQ(held.holding_job, "j0");
  // Once a drains, the held job starts, and the hold ends with it.
  workers[0].free_slots = 4;
  auto go = Schedule(Ptrs(jobs), workers, {{"ana", 16}}, held.holding_job);
  EXPECT_EQ(ByJob(go)["j0"].size(), 2u);
  EXPECT_TRUE(go.holding_job.empty());
}

TEST(SchedulerTest, PriorityThenFairnessThenFifo) {
  // ana submitted a big study first; bob's two jobs come later; one high-priority job.
  auto jobs = Jobs({{"ana", 1, 0},
                    {"ana", 1, 0},
                    {"ana", 1, 0},
                    {"ana", 1, 0},
                    {"bob", 1, 0},
                    {"bob", 1, 0},
                    {"cat", 1, 5}});
  auto pass = Schedule(Ptrs(jobs), {{"w", 4, 4, true}}, {{"ana", 2}});
  std::vector<std::string> order;
  for (const auto& p : pass.placements) order.push_back(p.job_id);
  // cat first (priority); ana already holds 2 slots, so bob's jobs go before ana's next.
  EXPECT_EQ(order, (std::vector<std::string>{"j6", "j4", "j5", "j0"}));
  EXPECT_EQ(pass.waiting.size(), 3u);
  EXPECT_NE(pass.waiting["j1"].find("no worker with 1 free slots"), std::string::npos);
}

TEST(SchedulerTest, DrainingAndDeadWorkersGetNothing) {
  auto jobs = Jobs({{"ana", 1, 0}});
  auto pass = Schedule(Ptrs(jobs), {{"w", 4, 4, false}}, {});
  EXPECT_TRUE(pass.placements.empty());
  EXPECT_NE(pass.waiting["j0"].find("no live, non-draining worker"), std::string::npos);
  EXPECT_NE(Schedule(Ptrs(jobs), {}, {}).waiting["j0"].find("no worker registered"),
            std::string::npos);
}

TEST(SchedulerTest, TenThousandJobsOverAThousandWorkersInOnePass) {
  std::vector<std::tuple<std::string, int64_t, int64_t>> spec;
  for (int i = 0; i < 10000; ++i) spec.emplace_back("u" + std::to_string(i % 17), 1 + i % 4, i % 3);
  auto jobs = Jobs(spec);
  std::vector<WorkerCapacity> workers;
  for (int i = 0; i < 1000; ++i) workers.push_back({"w" + std::to_string(i), 8, 8, i % 10 != 0});
  auto pass = Schedule(Ptrs(jobs), workers, {});
  int64_t used = 0;
  std::map<std::string, int64_t> per_worker;
  for (const auto& p : pass.placements) {
    for (const auto& [w, n] : p.workers) {
      per_worker[w] += n;
      used += n;
    }
  }
  for (const auto& [w, n] : per_worker) EXPECT_LE(n, 8) << w;
  EXPECT_EQ(used, 900 * 8);  // every live slot filled (sizes 1..4 pack 8 exactly)
  EXPECT_EQ(pass.placements.size() + pass.waiting.size(), 10000u);
}

SeedResult R(const std::string& model, const std::string& method, int64_t seed, double id,
             double o1, double o2) {
  return {model,
          method,
          seed,
          {{"eval",
            {{"id", {{"accuracy", id}}}, {"o1", {{"accuracy", o1}}}, {"o2", {{"accuracy", o2}}}}}},
          ""};
}

TEST(ResultsTest, MeanSampleStdOodMeanAndWinRates) {
  std::vector<SeedResult> rs = {
      R("m", "exrm", 0, 0.80, 0.60, 0.70), R("m", "exrm", 1, 0.70, 0.70, 0.70),
      R("m", "dpo", 0, 0.75, 0.50, 0.60), R("m", "dpo", 1, 0.75, 0.60, 0.60)};
  auto r = AggregateResults("s", "I(a)", "ultra", {"id"}, {"o1", "o2"}, 4, rs);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->rows.size(), 2u);
  const auto& exrm = r->rows[0];
  EXPECT_EQ(exrm.method, "exrm");
  EXPECT_NEAR(exrm.id.mean, 0.75, 1e-12);
  EXPECT_NEAR(exrm.id.std, std::sqrt(0.005), 1e-12);  // ddof = 1
  EXPECT_NEAR(exrm.ood.mean, (0.65 + 0.70) / 2, 1e-12);
  EXPECT_NEAR(exrm.per_set.at("o1").mean, 0.65, 1e-12);
  // Seed 0: EXRM ID 0.80 > 0.75 (win), seed 1: 0.70 < 0.75; OOD wins both.
  EXPECT_EQ(r->win_id.runs, 2);
  EXPECT_EQ(r->win_id.exrm_wins, 1);
  EXPECT_EQ(r->win_ood.exrm_wins, 2);
  const std::string table = *FormatResults(*r, "table");
  EXPECT_NE(table.find("DPORM ID"), std::string::npos);
  EXPECT_NE(table.find("75.0 +- 7.1"), std::string::npos) << table;
  EXPECT_NE(table.find("ddof=1"), std::string::npos);
  const std::string csv = *FormatResults(*r, "csv");
  EXPECT_NE(csv.find("s,I(a),ultra,m,EXRM,o1,OOD,2,0.650000,0.070711"), std::string::npos) << csv;
  EXPECT_NE(FormatResults(*r, "md")->find("| m | ultra |"), std::string::npos);
  auto j = r->ToJson();
  EXPECT_EQ(j["exrm_beats_dporm"]["ood"]["share"], 1.0);
  EXPECT_FALSE(FormatResults(*r, "xml").ok());
}

TEST(ResultsTest, OneSeedHasNoStdAndMissingSetsAreErrors) {
  auto r = AggregateResults("s", "x", "t", {"id"}, {}, 2, {R("m", "exrm", 0, 0.9, 0, 0)});
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(std::isnan(r->rows[0].id.std));
  EXPECT_TRUE(r->ToJson()["rows"][0]["id"]["std"].is_null());
  EXPECT_EQ(r->finished_runs, 1);
  auto bad = AggregateResults("s", "x", "t", {"nope"}, {}, 1, {R("m", "exrm", 0, 0.9, 0, 0)});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("'nope'"), std::string::npos);
}

// ---- several studies: Tables 6, 7, 8 and Figure 3 across them ----

// Per eval set, per seed (the vector index is the seed) accuracies of one (model, method).
using Accs = std::map<std::string, std::vector<double>>;
constexpr double kPairs = 2000;
double Ties(int64_t seed) { return 3 + seed; }  // 3, 4, 5: mean 4 over three seeds

struct Synth {
  StudyInfo info;
  std::map<std::pair<std::string, std::string>, Accs> data;  // (model, method) -> accs

  std::vector<SeedResult> Results() const {
    std::vector<SeedResult> out;
    for (const auto& [key, accs] : data) {
      const size_t seeds = accs.begin()->second.size();
      for (size_t seed = 0; seed < seeds; ++seed) {
        json ev = json::object();
        for (const auto& [set, v] : accs) {
          const double t = Ties(int64_t(seed));
          ev[set] = {{"n", kPairs},
                     {"accuracy", v[seed]},
                     {"ties", t},
                     {"acc_tie_half", v[seed] + 0.5 * t / kPairs},
                     {"mean_margin", 0.25}};
        }
        out.push_back({key.first, key.second, int64_t(seed), {{"kind", "eval"}, {"eval", ev}}, ""});
      }
    }
    return out;
  }
  double Mean(const std::string& model, const std::string& method,
              const std::vector<std::string>& sets, size_t seed) const {
    double sum = 0;
    for (const auto& set : sets) sum += data.at({model, method}).at(set)[seed];
    return sum / double(sets.size());
  }
  size_t Seeds(const std::string& model, const std::string& method) const {
    return data.at({model, method}).begin()->second.size();
  }
};

// mean and sample std (ddof = 1), computed here from the raw numbers
std::pair<double, double> MeanStd(const std::vector<double>& v) {
  double m = 0, q = 0;
  for (double x : v) m += x / double(v.size());
  for (double x : v) q += (x - m) * (x - m);
  return {m, std::sqrt(q / double(v.size() - 1))};
}

// Setting I(a): two models, three seeds; ID ultra, OOD arena and hh.
Synth StudyA() {
  Synth s;
  s.info = {"s1", "A", "I(a)", "ultra", "paper", {"ultra"}, {"arena", "hh"}, {}, 12};
  s.data[{"g2b", "exrm"}] = {
      {"ultra", {0.78, 0.77, 0.77}}, {"arena", {0.66, 0.64, 0.65}}, {"hh", {0.60, 0.62, 0.61}}};
  s.data[{"g2b", "dpo"}] = {
      {"ultra", {0.75, 0.76, 0.74}}, {"arena", {0.60, 0.61, 0.59}}, {"hh", {0.58, 0.57, 0.56}}};
  s.data[{"m7b", "exrm"}] = {
      {"ultra", {0.80, 0.82, 0.81}}, {"arena", {0.70, 0.69, 0.68}}, {"hh", {0.65, 0.66, 0.64}}};
  s.data[{"m7b", "dpo"}] = {
      {"ultra", {0.82, 0.81, 0.83}}, {"arena", {0.66, 0.65, 0.64}}, {"hh", {0.62, 0.63, 0.61}}};
  return s;
}

// Setting I(b): one model, two seeds; an ID tie at seed 1 (not a win: strict >).
Synth StudyC() {
  Synth s;
  s.info = {"s3", "C", "I(b)", "arena", "paper", {"arena"}, {"ultra", "hh"}, {}, 4};
  s.data[{"g2b", "exrm"}] = {
      {"arena", {0.75, 0.76}}, {"ultra", {0.66, 0.67}}, {"hh", {0.62, 0.63}}};
  s.data[{"g2b", "dpo"}] = {{"arena", {0.74, 0.76}}, {"ultra", {0.60, 0.62}}, {"hh", {0.61, 0.59}}};
  return s;
}

// RewardBench metrics of one run: one or two subsets per section, shifted by `d`.
json RewardBenchMetrics(double d, bool with_sections) {
  json sub = {{"alpacaeval-easy", {{"n", 100}, {"accuracy", 0.90 + d}, {"ties", 0}}},
              {"mt-bench-easy", {{"n", 28}, {"accuracy", 0.50 + d}, {"ties", 0}}},
              {"mt-bench-hard", {{"n", 37}, {"accuracy", 0.40 + d}, {"ties", 1}}},
              {"llmbar-natural", {{"n", 100}, {"accuracy", 0.60 + d}, {"ties", 0}}},
              {"donotanswer", {{"n", 136}, {"accuracy", 0.80 + d}, {"ties", 0}}},
              {"math-prm", {{"n", 984}, {"accuracy", 0.70 + d}, {"ties", 2}}},
              {"hep-go", {{"n", 164}, {"accuracy", 0.50 + d}, {"ties", 0}}}};
  json m = {{"n", 1549},
            {"accuracy", 0.5 + d},
            {"ties", 3},
            {"acc_tie_half", 0.501 + d},
            {"subsets", sub}};
  if (with_sections) {
    // What rmgen-train writes (REFERENCE weights).
    m["rewardbench_sections"] = {{"chat", (100 * (0.90 + d) + 28 * (0.50 + d)) / 128},
                                 {"chat_hard", (37 * (0.40 + d) + 100 * (0.60 + d)) / 137},
                                 {"safety", 0.80 + d},
                                 {"reasoning", (984 * (0.70 + d) + 164 * (0.50 + d)) / 1148}};
  }
  return m;
}
double RbShift(const std::string& method, int64_t seed) {
  return (method == "dpo" ? -0.05 : 0.0) + 0.02 * double(seed);
}

// Setting II(b): prompt shift, with RewardBench as a benchmark (accuracy ~0.5: far below
// every OOD set, so it would show in the OOD mean if it leaked in).
Synth StudyB() {
  Synth s;
  s.info = {"s2", "B", "II(b)", "tldr", "paper", {"tldr"}, {"cnn", "dm"}, {"rewardbench"}, 4};
  s.data[{"g2b", "exrm"}] = {{"tldr", {0.70, 0.72}}, {"cnn", {0.65, 0.66}}, {"dm", {0.64, 0.63}}};
  s.data[{"g2b", "dpo"}] = {{"tldr", {0.71, 0.73}}, {"cnn", {0.60, 0.62}}, {"dm", {0.66, 0.60}}};
  return s;
}
std::vector<SeedResult> WithRewardBench(std::vector<SeedResult> rs) {
  for (auto& r : rs) {
    // Only EXRM seed 0 carries rmgen-train's sections; the rest are computed from subsets.
    r.metrics["eval"]["rewardbench"] =
        RewardBenchMetrics(RbShift(r.method, r.seed), r.method == "exrm" && r.seed == 0);
  }
  return rs;
}

// The cells of the Markdown row that starts with `head` ("| a | b |").
std::vector<std::string> MdRow(const std::string& md, const std::string& head) {
  const auto at = md.find("\n" + head);
  EXPECT_NE(at, std::string::npos) << head << "\n" << md;
  if (at == std::string::npos) return {};
  const std::string line = md.substr(at + 1, md.find('\n', at + 1) - at - 1);
  std::vector<std::string> cells;
  std::stringstream in(line.substr(1));
  std::string c;
  while (std::getline(in, c, '|')) {
    const auto b = c.find_first_not_of(' '), e = c.find_last_not_of(' ');
    cells.push_back(b == std::string::npos ? "" : c.substr(b, e - b + 1));
  }
  return cells;
}

std::string Pct(double mean, double std) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.1f +- %.1f", 100 * mean, 100 * std);
  return buf;
}

class CrossStudyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    a_ = StudyA();
    b_ = StudyB();
    c_ = StudyC();
    auto ra = AggregateResults(a_.info, a_.Results());
    auto rb = AggregateResults(b_.info, WithRewardBench(b_.Results()));
    auto rc = AggregateResults(c_.info, c_.Results());
    ASSERT_TRUE(ra.ok()) << ra.status().ToString();
    ASSERT_TRUE(rb.ok()) << rb.status().ToString();
    ASSERT_TRUE(rc.ok()) << rc.status().ToString();
    report_ = CombineResults({*ra, *rc, *rb}, "paper");
    json_ = report_.ToJson();
  }
  Synth a_, b_, c_;
  ResultsReport report_;
  json json_;
};

TEST_F(CrossStudyTest, Table6RowsAreModelByTrainSetWithSampleStd) {
  // Rows by model (first seen first), then study: g2b/ultra, g2b/arena, g2b/tldr, m7b/ultra.
  const json& t6 = json_["table6"];
  ASSERT_EQ(t6.size(), 4u) << t6.dump(1);
  std::vector<std::pair<std::string, std::string>> order;
  for (const auto& r : t6) order.push_back({r["model"], r["train"]});
  EXPECT_EQ(order, (std::vector<std::pair<std::string, std::string>>{
                       {"g2b", "ultra"}, {"g2b", "arena"}, {"g2b", "tldr"}, {"m7b", "ultra"}}));
  const std::vector<std::pair<const Synth*, std::string>> cases = {
      {&a_, "g2b"}, {&c_, "g2b"}, {&b_, "g2b"}, {&a_, "m7b"}};
  for (size_t k = 0; k < cases.size(); ++k) {
    const Synth& s = *cases[k].first;
    const std::string& m = cases[k].second;
    for (const std::string method : {"exrm", "dpo"}) {
      std::vector<double> id, ood;
      for (size_t seed = 0; seed < s.Seeds(m, method); ++seed) {
        id.push_back(s.Mean(m, method, s.info.id_sets, seed));
        ood.push_back(s.Mean(m, method, s.info.ood_sets, seed));
      }
      const auto [id_mean, id_std] = MeanStd(id);
      const auto [ood_mean, ood_std] = MeanStd(ood);
      const std::string rm = method == "exrm" ? "exrm" : "dporm";
      EXPECT_NEAR(t6[k][rm + "_id"]["mean"].get<double>(), id_mean, 1e-12) << k << method;
      EXPECT_NEAR(t6[k][rm + "_id"]["std"].get<double>(), id_std, 1e-12) << k << method;
      EXPECT_NEAR(t6[k][rm + "_ood"]["mean"].get<double>(), ood_mean, 1e-12) << k << method;
      EXPECT_NEAR(t6[k][rm + "_ood"]["std"].get<double>(), ood_std, 1e-12) << k << method;
    }
  }
  // The benchmark (accuracy 0.5) is not in B's OOD mean: (cnn + dm) / 2 only.
  EXPECT_NEAR(t6[2]["exrm_ood"]["mean"].get<double>(), (0.65 + 0.64 + 0.66 + 0.63) / 4, 1e-12);
  EXPECT_NEAR(t6[2]["exrm_id"]["mean"].get<double>(), 0.71, 1e-12);
  // Text: the paper's column order, the study column, and the ddof note.
  const std::string md = report_.Markdown();
  const auto row = MdRow(md, "| g2b | ultra |");
  ASSERT_EQ(row.size(), 8u) << md;
  EXPECT_EQ(row[2], "75.0 +- 1.0");  // DPORM ID: 0.75, 0.76, 0.74
  EXPECT_EQ(row[7], "A");
  EXPECT_NE(report_.Table().find("ddof=1"), std::string::npos);
  EXPECT_NE(report_.Table().find("3 studies (--tag paper): 20/20 runs finished"), std::string::npos)
      << report_.Table();
}

TEST_F(CrossStudyTest, Table7IsAGridOverEverySetSeen) {
  EXPECT_EQ(report_.eval_sets,
            (std::vector<std::string>{"ultra", "arena", "hh", "tldr", "cnn", "dm", "rewardbench"}));
  const std::string md = report_.Markdown();
  // Rows: model, reward model, train, study; then one cell per set.
  const auto exrm_c = MdRow(md, "| g2b | EXRM | arena | C |");
  ASSERT_EQ(exrm_c.size(), 4u + 7u) << md;
  const auto ultra = MeanStd(c_.data[{"g2b", "exrm"}]["ultra"]);
  EXPECT_EQ(exrm_c[4], Pct(ultra.first, ultra.second));  // ultra is OOD for C: no star
  const auto arena = MeanStd(c_.data[{"g2b", "exrm"}]["arena"]);
  EXPECT_EQ(exrm_c[5], Pct(arena.first, arena.second) + "*");  // ID
  EXPECT_EQ(exrm_c[7], "-");                                   // tldr: C did not evaluate it
  EXPECT_EQ(exrm_c[10], "-");
  const auto dpo_a = MdRow(md, "| g2b | DPORM | ultra | A |");
  ASSERT_EQ(dpo_a.size(), 11u);
  const auto hh = MeanStd(a_.data[{"g2b", "dpo"}]["hh"]);
  EXPECT_EQ(dpo_a[6], Pct(hh.first, hh.second));
  const auto dpo_b = MdRow(md, "| g2b | DPORM | tldr | B |");
  ASSERT_EQ(dpo_b.size(), 11u);
  EXPECT_EQ(dpo_b[10], "46.0 +- 1.4");  // RewardBench accuracy: 0.45, 0.47
  // The grid's rows come by model, then reward model (EXRM first), then study.
  EXPECT_LT(md.find("| g2b | EXRM | tldr | B |"), md.find("| g2b | DPORM | ultra | A |"));
  EXPECT_LT(md.find("| g2b | DPORM | tldr | B |"), md.find("| m7b | EXRM | ultra | A |"));
  // The same cells in JSON.
  bool found = false;
  for (const auto& r : json_["table7"]["rows"]) {
    if (r["model"] != "g2b" || r["reward_model"] != "EXRM" || r["study"] != "C") continue;
    found = true;
    EXPECT_NEAR(r["cells"]["ultra"]["mean"].get<double>(), ultra.first, 1e-12);
    EXPECT_EQ(r["cells"]["ultra"]["shift"], "OOD");
    EXPECT_EQ(r["cells"]["arena"]["shift"], "ID");
    EXPECT_FALSE(r["cells"].contains("tldr"));
  }
  EXPECT_TRUE(found);
}

TEST_F(CrossStudyTest, CountsTiesAndTieHalfInEveryFormat) {
  // Means over seeds: n 2000, ties (3 + 4 + 5) / 3 = 4, acc_tie_half = acc + ties / 4000.
  const auto acc = MeanStd(a_.data[{"g2b", "exrm"}]["ultra"]);
  const double tie_half = acc.first + 0.5 * 4 / kPairs;
  char want[256];
  std::snprintf(want, sizeof(want), "A,I(a),ultra,g2b,EXRM,ultra,ID,3,%.6f,%.6f,2000,4,%.6f\n",
                acc.first, acc.second, tie_half);
  const std::string csv = report_.Csv();
  EXPECT_EQ(csv.rfind("study,setting,train,model,reward_model,eval_set,shift,seeds,mean,std,n,"
                      "ties,acc_tie_half\n",
                      0),
            0u)
      << csv;
  EXPECT_NE(csv.find(want), std::string::npos) << want << "\n" << csv;
  // Two seeds: ties (3 + 4) / 2 = 3.5.
  // Every line has the header's 13 fields, the means' lines (no counts) too.
  std::stringstream lines(csv);
  for (std::string l; std::getline(lines, l);) {
    EXPECT_EQ(std::count(l.begin(), l.end(), ','), 12) << l;
  }
  const auto c_line = csv.find("C,I(b),arena,g2b,DPORM,hh,OOD,2,");
  ASSERT_NE(c_line, std::string::npos) << csv;
  EXPECT_NE(csv.substr(c_line, csv.find('\n', c_line) - c_line).find(",2000,3.5,"),
            std::string::npos)
      << csv;
  bool found = false;
  for (const auto& r : json_["rows"]) {
    if (r["study"] != "A" || r["model"] != "g2b" || r["method"] != "exrm") continue;
    found = true;
    const json& c = r["per_set"]["ultra"]["counts"];
    EXPECT_EQ(c["n"], 2000.0);
    EXPECT_NEAR(c["ties"].get<double>(), 4.0, 1e-12);
    EXPECT_NEAR(c["acc_tie_half"].get<double>(), tie_half, 1e-12);
    EXPECT_EQ(r["per_set"]["ultra"]["n"], 3);  // seeds
  }
  EXPECT_TRUE(found);
  char cell[64];
  std::snprintf(cell, sizeof(cell), "n=2000 ties=4 tie-half %.1f", 100 * tie_half);
  EXPECT_NE(report_.Table().find(cell), std::string::npos) << cell << "\n" << report_.Table();
  EXPECT_NE(report_.Markdown().find(cell), std::string::npos);
}

TEST_F(CrossStudyTest, Figure3aPoolsRunsPerShiftKind) {
  ASSERT_EQ(report_.shifts.size(), 2u);
  EXPECT_EQ(report_.shifts[0].kind, "mixture");  // A (I(a)) and C (I(b))
  EXPECT_EQ(report_.shifts[0].studies, (std::vector<std::string>{"A", "C"}));
  EXPECT_EQ(report_.shifts[1].kind, "prompt shift");  // B (II(b))
  struct Want {
    std::vector<double> id, ood, drop;
  };
  auto pool = [](const std::vector<const Synth*>& studies, const std::string& method) {
    Want w;
    for (const Synth* s : studies) {
      for (const auto& [key, accs] : s->data) {
        if (key.second != method) continue;
        for (size_t seed = 0; seed < s->Seeds(key.first, method); ++seed) {
          const double id = s->Mean(key.first, method, s->info.id_sets, seed);
          const double ood = s->Mean(key.first, method, s->info.ood_sets, seed);
          w.id.push_back(id);
          w.ood.push_back(ood);
          w.drop.push_back(id - ood);
        }
      }
    }
    return w;
  };
  for (const std::string method : {"exrm", "dpo"}) {
    const Want mix = pool({&a_, &c_}, method), prompt = pool({&b_}, method);
    const auto& got_mix = method == "exrm" ? report_.shifts[0].exrm : report_.shifts[0].dporm;
    const auto& got_prompt = method == "exrm" ? report_.shifts[1].exrm : report_.shifts[1].dporm;
    EXPECT_EQ(got_mix.id.n, 8);  // 2 models x 3 seeds + 1 model x 2 seeds
    EXPECT_EQ(got_prompt.id.n, 2);
    EXPECT_NEAR(got_mix.id.mean, MeanStd(mix.id).first, 1e-12);
    EXPECT_NEAR(got_mix.id.std, MeanStd(mix.id).second, 1e-12);
    EXPECT_NEAR(got_mix.ood.mean, MeanStd(mix.ood).first, 1e-12);
    EXPECT_NEAR(got_mix.drop.mean, MeanStd(mix.drop).first, 1e-12);
    EXPECT_NEAR(got_prompt.ood.mean, MeanStd(prompt.ood).first, 1e-12);
    EXPECT_NEAR(got_prompt.drop.mean, MeanStd(prompt.drop).first, 1e-12);
  }
  // DPORM drops more OOD than EXRM in this data, in the JSON too.
  const json& f = json_["figure3a"];
  ASSERT_EQ(f.size(), 2u);
  EXPECT_GT(f[0]["dporm"]["drop"]["mean"].get<double>(),
            f[0]["exrm"]["drop"]["mean"].get<double>());
  EXPECT_NE(report_.Table().find("Figure 3a"), std::string::npos);
  EXPECT_EQ(ShiftKind("II(a)"), "response shift");
  EXPECT_EQ(ShiftKind("i(c)"), "mixture");
  EXPECT_EQ(ShiftKind("demo"), "other");
}

TEST_F(CrossStudyTest, Figure3bCountsEveryRunOfEveryStudyStrictly) {
  int id_runs = 0, id_wins = 0, ood_runs = 0, ood_wins = 0;
  for (const Synth* s : {&a_, &b_, &c_}) {
    for (const auto& [key, accs] : s->data) {
      if (key.second != "exrm") continue;
      for (size_t seed = 0; seed < s->Seeds(key.first, "exrm"); ++seed) {
        ++id_runs;
        ++ood_runs;
        id_wins += s->Mean(key.first, "exrm", s->info.id_sets, seed) >
                   s->Mean(key.first, "dpo", s->info.id_sets, seed);
        ood_wins += s->Mean(key.first, "exrm", s->info.ood_sets, seed) >
                    s->Mean(key.first, "dpo", s->info.ood_sets, seed);
      }
    }
  }
  ASSERT_EQ(id_runs, 10);
  EXPECT_EQ(id_wins, 5);  // A: 3 + 1, C: 1 (the tie at seed 1 is no win), B: 0
  EXPECT_EQ(report_.win_id.runs, id_runs);
  EXPECT_EQ(report_.win_id.exrm_wins, id_wins);
  EXPECT_EQ(report_.win_ood.runs, ood_runs);
  EXPECT_EQ(report_.win_ood.exrm_wins, ood_wins);
  EXPECT_EQ(json_["exrm_beats_dporm"]["id"]["share"], double(id_wins) / id_runs);
  EXPECT_NE(report_.Table().find("EXRM beats DPORM: ID 5/10 runs (50%)"), std::string::npos)
      << report_.Table();
}

TEST_F(CrossStudyTest, Table8RewardBenchSectionsUseTheReferenceWeights) {
  const json& t8 = json_["table8"];
  ASSERT_EQ(t8.size(), 2u) << t8.dump(1);  // g2b EXRM and DPORM of study B
  for (const auto& r : t8) {
    const std::string method = r["reward_model"] == "EXRM" ? "exrm" : "dpo";
    std::map<std::string, std::vector<double>> want;
    for (int64_t seed = 0; seed < 2; ++seed) {
      const double d = RbShift(method, seed);
      // REFERENCE section 2: alpacaeval-easy 100, mt-bench-easy 28; mt-bench-hard 37,
      // llmbar-natural 100; donotanswer alone; math-prm 984, hep-go 164.
      const double chat = (100 * (0.90 + d) + 28 * (0.50 + d)) / 128;
      const double hard = (37 * (0.40 + d) + 100 * (0.60 + d)) / 137;
      const double safety = 0.80 + d;
      const double reasoning = (984 * (0.70 + d) + 164 * (0.50 + d)) / 1148;
      want["chat"].push_back(chat);
      want["chat_hard"].push_back(hard);
      want["safety"].push_back(safety);
      want["reasoning"].push_back(reasoning);
      want["score"].push_back((chat + hard + safety + reasoning) / 4);
    }
    for (const auto& [sec, v] : want) {
      EXPECT_NEAR(r[sec]["mean"].get<double>(), MeanStd(v).first, 1e-12) << sec;
      EXPECT_NEAR(r[sec]["std"].get<double>(), MeanStd(v).second, 1e-12) << sec;
    }
    // Not an unweighted mean of the subsets: chat would be 0.70 + d.
    EXPECT_GT(std::fabs(r["chat"]["mean"].get<double>() - (0.70 + RbShift(method, 0) + 0.01)),
              0.05);
  }
  const std::string md = report_.Markdown();
  ASSERT_NE(md.find("Table 8"), std::string::npos) << md;
  const auto row = MdRow(md.substr(md.find("Table 8")), "| g2b | EXRM | tldr | B | rewardbench |");
  ASSERT_EQ(row.size(), 5u + 6u) << md;
  const auto chat = MeanStd({(100 * 0.90 + 28 * 0.50) / 128, (100 * 0.92 + 28 * 0.52) / 128});
  EXPECT_EQ(row[5], Pct(chat.first, chat.second));
  EXPECT_EQ(row[10], "2");  // seeds
  EXPECT_NE(md.find("Table 8"), std::string::npos);
  // The benchmark is in neither mean: B's rows are as if it were not there.
  for (const auto& st : report_.studies) {
    if (st.study != "B") continue;
    EXPECT_NEAR(st.rows[0].ood.mean, (0.65 + 0.64 + 0.66 + 0.63) / 4, 1e-12);
    EXPECT_EQ(st.ToJson()["rows"][0]["per_set"]["rewardbench"]["shift"], "benchmark");
  }
  EXPECT_NE(report_.Csv().find("B,II(b),tldr,g2b,EXRM,rewardbench,benchmark:chat,2,"),
            std::string::npos)
      << report_.Csv();
  // A study without benchmarks prints no Table 8.
  auto only_a = AggregateResults(a_.info, a_.Results());
  ASSERT_TRUE(only_a.ok());
  EXPECT_EQ(only_a->Table().find("Table 8"), std::string::npos);
}

TEST(ResultsTest, RewardBenchSectionsThatDisagreeWithTheWeightsAreErrors) {
  Synth b = StudyB();
  auto rs = WithRewardBench(b.Results());
  rs[0].metrics["eval"]["rewardbench"]["rewardbench_sections"] = {
      {"chat", 0.70}, {"chat_hard", 0.5}, {"safety", 0.8}, {"reasoning", 0.67}};
  auto bad = AggregateResults(b.info, rs);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("section 'chat'"), std::string::npos)
      << bad.status().message();
  // Sections without subsets are taken as given; a missing section leaves no score.
  rs = b.Results();
  for (auto& r : rs) {
    r.metrics["eval"]["rewardbench"] = {
        {"n", 10}, {"accuracy", 0.5}, {"rewardbench_sections", {{"chat", 0.9}, {"safety", 0.7}}}};
  }
  auto given = AggregateResults(b.info, rs);
  ASSERT_TRUE(given.ok()) << given.status().ToString();
  const auto& secs = given->rows[0].sections.at("rewardbench");
  EXPECT_NEAR(secs.at("chat").mean, 0.9, 1e-12);
  EXPECT_FALSE(secs.count("chat_hard"));
  EXPECT_FALSE(secs.count("score"));
  // A benchmark set missing from the metrics is an error like any set.
  auto missing = AggregateResults(b.info, b.Results());
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("'rewardbench'"), std::string::npos);
}

TEST(ResultsTest, SweepPointLabelIsCarried) {
  SeedResult r = R("m", "exrm", 0, 0.9, 0, 0);
  EXPECT_TRUE(r.point.empty());
  r.point = "lr=1e-6,epochs=2";
  // A sweep's run must carry its selection set.
  EXPECT_FALSE(AggregateResults("s", "x", "t", {"id"}, {}, 1, {r}).ok());
  r.metrics["eval"][kSelectionSet] = {{"accuracy", 0.5}};
  auto agg = AggregateResults("s", "x", "t", {"id"}, {}, 1, {r});
  ASSERT_TRUE(agg.ok()) << agg.status().ToString();
  ASSERT_EQ(agg->sweep.size(), 1u);
  EXPECT_EQ(agg->sweep[0].point, "lr=1e-6,epochs=2");
  EXPECT_TRUE(agg->sweep[0].selected);
  // A single study's report keeps the single-study JSON keys at the top level.
  json j = CombineResults({*agg}).ToJson();
  EXPECT_EQ(j["study"], "s");
  EXPECT_EQ(j["rows"][0]["study"], "s");
  EXPECT_EQ(j["runs"]["finished"], 1);
}

}  // namespace
}  // namespace rmgen::coord
