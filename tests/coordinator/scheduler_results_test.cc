// The scheduler's policy (gang, best fit, priorities, per-user fairness, draining, several
// nodes, reasons) and the results tables (mean, sample std, OOD mean, win rates, formats).
#include <gtest/gtest.h>

#include <cmath>

#include "coordinator/results.h"
#include "coordinator/scheduler.h"

namespace rmgen::coord {
namespace {

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
  auto pass = Schedule(Ptrs(jobs), {{"big", 8, 8, true}, {"small", 4, 4, true}}, {});
  auto m = ByJob(pass);
  // 4 ranks: best fit is the 4-slot worker, leaving the 8-slot one whole.
  EXPECT_EQ(m["j0"], (std::vector<std::pair<std::string, int64_t>>{{"small", 4}}));
  EXPECT_EQ(m["j1"], (std::vector<std::pair<std::string, int64_t>>{{"big", 2}}));
  // 16 ranks > any node: would need both nodes idle; they are not.
  EXPECT_FALSE(m.count("j2"));
  EXPECT_NE(pass.waiting["j2"].find("idle"), std::string::npos) << pass.waiting["j2"];
}

TEST(SchedulerTest, AJobLargerThanANodeSpansIdleNodes) {
  auto jobs = Jobs({{"ana", 12, 0}});
  auto pass = Schedule(Ptrs(jobs), {{"a", 8, 8, true}, {"b", 8, 8, true}, {"c", 8, 3, true}}, {});
  ASSERT_EQ(pass.placements.size(), 1u);
  const auto& w = pass.placements[0].workers;
  ASSERT_EQ(w.size(), 2u);
  EXPECT_EQ(w[0].second + w[1].second, 12);
  EXPECT_NE(w[0].first, "c");
  EXPECT_NE(w[1].first, "c");
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
            {{"id", {{"accuracy", id}}}, {"o1", {{"accuracy", o1}}}, {"o2", {{"accuracy", o2}}}}}}};
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

}  // namespace
}  // namespace rmgen::coord
