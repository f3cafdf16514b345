// Fault tolerance with real processes (ctest -L service): rmgen-coordinator, rmgen-worker
// agents and, for the training cases, real rmgen-train ranks on the synthetic suite.
//   - kill -9 an agent mid-training: its supervisor stops the ranks (with a checkpoint)
//     before the lease ends, the job is requeued, another agent resumes it, and the final
//     metrics equal an uninterrupted run's;
//   - kill -9 the coordinator mid-study and restart it: the running job continues, nothing
//     is lost or recorded twice;
//   - a crashing rank is retried up to the limit and then FAILED with every attempt's reason;
//     a missing dataset fails at once;
//   - two agents, more jobs than slots: every job runs once, never twice at the same time;
//   - cancel: SIGTERM, then SIGKILL after the grace period, no orphan left;
//   - a restarted agent reports the job it still runs, and the one that ended while it was
//     down;
//   - `rmgen local`: interrupted with SIGINT (the job checkpoints), then run again: resumes.
// The non-training cases use the agent's command launcher with tests/service/fake_job.sh.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "common/file.h"
#include "tests/service/process.h"
#include "tests/test_util.h"
#include "worker/agent/supervisor.h"

namespace rmgen::testing {
namespace {

using nlohmann::json;

int64_t Int(const json& v) {
  if (v.is_string()) return std::stoll(v.get<std::string>());
  return v.is_number() ? v.get<int64_t>() : 0;
}

std::string Text(const std::string& path) {
  auto t = ReadFile(path);
  return t.ok() ? *t : std::string();
}

// The training study: one model from a seeded random init, EXRM, evaluated ID and OOD.
std::string TrainStudy(const std::string& seeds,
                       const std::string& catalog = "synth/datasets.yaml") {
  return "name: ft\nsetting: test\ncatalog: " + catalog +
         "\nmodels:\n"
         "  - {name: tiny, config: synth/model.json, tokenizer: synth/tokenizer.model, "
         "template: zephyr}\n"
         "methods: [exrm]\nseeds: [" +
         seeds +
         "]\ntrain: synth-id:train\n"
         "eval: {id: [synth-id:validation], ood: [synth-prompt-shift]}\n"
         "exrm: {epochs: 2, per_rank_batch_size: 8, learning_rate: 5.0e-4, warmup_ratio: 0.05}\n"
         "resources: {ranks: 1, threads: 1, checkpoint_every: 10}\n";
}

// The demo's shape (13 jobs) for the fake jobs.
const char* kWideStudy = R"(name: wide
setting: test
catalog: synth/datasets.yaml
models:
  - {name: tiny, config: synth/model.json, tokenizer: synth/tokenizer.model, template: zephyr}
methods: [exrm, dpo]
seeds: [0, 1, 2]
train: synth-id:train
eval: {id: [synth-id:validation], ood: [synth-prompt-shift]}
sft: {epochs: 1}
exrm: {epochs: 1}
dpo: {epochs: 1, beta: 0.1}
resources: {ranks: 1}
)";

class AgentE2eTest : public ::testing::Test {
 protected:
  // The synthetic suite, once for every test (1000 training pairs: a few seconds of training).
  static void SetUpTestSuite() {
    work_ = new TempDir();
    auto r = RunCommand(std::string(RMGEN_CLI) + " data synth --out " + (*work_ / "synth") +
                        " --train 1000 --validation 64 --shifted 64");
    ASSERT_EQ(r.rc, 0) << r.out;
  }
  static void TearDownTestSuite() {
    delete work_;
    work_ = nullptr;
  }

  void StartCoordinator(const std::string& listen, int lease_ms, int max_attempts = 3,
                        const std::vector<std::string>& extra = {}) {
    coordinator_.reset();
    std::vector<std::string> argv = {RMGEN_COORDINATOR_BIN, "--listen", listen};
    for (const std::string& a :
         {std::string("--data-dir"), dir_ / "data", std::string("--lease-ms"),
          std::to_string(lease_ms), std::string("--max-attempts"), std::to_string(max_attempts),
          std::string("--output-root"), dir_ / "jobs"}) {
      argv.push_back(a);
    }
    argv.insert(argv.end(), extra.begin(), extra.end());
    coordinator_ = std::make_unique<Process>(
        argv, dir_ / ("coordinator-" + std::to_string(starts_++) + ".log"));
    ASSERT_TRUE(coordinator_->WaitFor("port ", 20)) << coordinator_->Output();
    const std::string out = coordinator_->Output();
    port_ = std::stoi(out.substr(out.rfind("port ") + 5));
  }
  // An agent; `env` entries go into its environment (and so its ranks'), `extra` are flags.
  Process* StartAgent(const std::string& id, int slots, const std::vector<std::string>& env = {},
                      const std::vector<std::string>& extra = {}) {
    std::vector<std::string> argv = {"/usr/bin/env"};
    argv.insert(argv.end(), env.begin(), env.end());
    for (const std::string& a :
         {std::string(RMGEN_WORKER_BIN), std::string("--coordinator"), Address(),
          std::string("--id"), id, std::string("--slots"), std::to_string(slots),
          std::string("--state-dir"), dir_ / ("state-" + id), std::string("--workdir"),
          work_->path(), std::string("--train-bin"), std::string(RMGEN_TRAIN_BIN),
          std::string("--grace-ms"), std::string("1500")}) {
      argv.push_back(a);
    }
    argv.insert(argv.end(), extra.begin(), extra.end());
    agents_[id] =
        std::make_unique<Process>(argv, dir_ / (id + "-" + std::to_string(starts_++) + ".log"));
    return agents_[id].get();
  }
  // An agent whose ranks run with an injected fault (rmgen-train --fault: trainer.h).
  Process* StartFaultyAgent(const std::string& id, const std::string& fault) {
    return StartAgent(id, 1, {},
                      {"--launcher", "command", "--command",
                       std::string(RMGEN_TRAIN_BIN) + " --quiet --fault " + fault});
  }
  Process* StartFakeAgent(const std::string& id, const std::vector<std::string>& env) {
    std::vector<std::string> e = {"FAKE_JOB_LOG=" + (dir_ / "runs.log")};
    e.insert(e.end(), env.begin(), env.end());
    return StartAgent(id, 1, e,
                      {"--launcher", "command", "--command",
                       std::string("/bin/sh ") + RMGEN_SOURCE_DIR + "/tests/service/fake_job.sh"});
  }
  std::string Address() const { return "127.0.0.1:" + std::to_string(port_); }
  CommandResult Cli(const std::string& args) {
    return RunCommand("HOME=" + dir_.path() + " " + RMGEN_CLI + " " + args + " --coordinator " +
                      Address());
  }
  std::string Submit(const std::string& yaml) {
    const std::string path = dir_ / ("study-" + std::to_string(starts_++) + ".yaml");
    std::ofstream(path) << yaml;
    auto r = Cli("submit " + path);
    EXPECT_EQ(r.rc, 0) << r.out;
    const auto at = r.out.find("study ");
    return r.out.substr(at + 6, r.out.find(' ', at + 6) - at - 6);
  }
  json Job(const std::string& id) {
    auto r = Cli("status " + id);
    return r.rc == 0 ? json::parse(r.out, nullptr, false) : json();
  }
  bool WaitState(const std::string& id, const std::string& state, double seconds) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    for (;;) {
      const json j = Job(id);  // null when a status call failed: ask again
      if (j.is_object() && j.value("state", "") == state) return true;
      if (std::chrono::steady_clock::now() >= end) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
  }
  // Jobs finish in any order their dependencies allow: wait for every one of the study's.
  bool WaitAll(const std::string& study, int jobs, const std::string& state, double seconds) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    for (int k = 0; k < jobs; ++k) {
      const double left =
          std::chrono::duration<double>(end - std::chrono::steady_clock::now()).count();
      if (!WaitState(study + "-j" + std::to_string(k), state, std::max(left, 0.0))) return false;
    }
    return true;
  }
  // The progress the coordinator stored for one attempt of a train job (steps, in order).
  // Each event must be the line of that step in the job's events.jsonl as it is now, which
  // holds the latest attempt's run: a line a previous attempt left in the file, relayed as
  // this attempt's, fails the comparison.
  std::vector<int64_t> StoredSteps(const std::string& job, int64_t attempt) {
    std::map<int64_t, json> file;  // step -> line
    std::istringstream in(Text(dir_ / ("jobs/" + job + "/events.jsonl")));
    for (std::string line; std::getline(in, line);) {
      const json e = json::parse(line, nullptr, false);
      if (e.is_object()) file[Int(e["step"])] = e;
    }
    std::vector<int64_t> steps;
    std::istringstream logs(Cli("logs " + job).out);
    for (std::string line; std::getline(logs, line);) {
      const auto at = line.find("/attempt "), brace = line.find('{');
      if (at == std::string::npos || brace == std::string::npos) continue;
      const json e = json::parse(line.substr(brace), nullptr, false);
      if (std::stoll(line.substr(at + 9)) != attempt || !e.contains("step")) continue;
      steps.push_back(Int(e["step"]));
      EXPECT_EQ(e, file[steps.back()]) << "attempt " << attempt << ": not its own line";
    }
    return steps;
  }
  bool WaitFile(const std::string& path, double seconds) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (std::chrono::steady_clock::now() < end) {
      if (FileExists(path)) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }
  json ReadJson(const std::string& path) { return json::parse(Text(path), nullptr, false); }
  std::string Logs() {
    std::string s = coordinator_ ? "coordinator:\n" + coordinator_->Output() : "";
    for (const auto& [id, p] : agents_) s += "\nagent " + id + ":\n" + p->Output();
    return s;
  }

  static TempDir* work_;
  TempDir dir_;
  std::unique_ptr<Process> coordinator_;
  std::map<std::string, std::unique_ptr<Process>> agents_;
  int port_ = 0, starts_ = 0;
};
TempDir* AgentE2eTest::work_ = nullptr;

TEST_F(AgentE2eTest, KilledAgentsJobResumesElsewhereWithTheSameMetrics) {
  StartCoordinator("127.0.0.1:0", 3000);
  // Slow steps on agent a only: the lease stops its orphaned ranks 1 to 1.6 s after the kill,
  // long before they could finish the remaining steps (at full speed they might).
  Process* a = StartFaultyAgent("a", "rank=0,phase=step,step=1,action=slow");
  const std::string study = Submit(TrainStudy("0"));
  const std::string train = study + "-j0", eval = study + "-j1";
  // Mid-training: the first periodic checkpoint is there.
  ASSERT_TRUE(WaitFile(dir_ / ("jobs/" + train + "/checkpoint/trainer_state.json"), 120)) << Logs();
  a->Kill(SIGKILL);
  StartAgent("b", 1);
  ASSERT_TRUE(WaitState(eval, "SUCCEEDED", 240)) << Logs();

  const json j = Job(train);
  EXPECT_EQ(j["state"], "SUCCEEDED");
  ASSERT_EQ(Int(j["attempt"]), 2) << j.dump(2);
  ASSERT_EQ(j["history"].size(), 2u);
  EXPECT_EQ(j["history"][0]["worker"], "a");
  EXPECT_NE(j["history"][0]["outcome"].get<std::string>().find("lease"), std::string::npos)
      << j["history"][0].dump();
  EXPECT_EQ(j["history"][1]["worker"], "b");
  // The orphaned ranks were stopped (with a checkpoint) before the second attempt started.
  const std::string log1 = Text(dir_ / ("jobs/" + train + "/logs/attempt-1.log"));
  EXPECT_NE(log1.find("lease lost"), std::string::npos) << log1;
  const json exit1 = ReadJson(dir_ / ("state-a/attempts/" + train + ".1/exit.json"));
  EXPECT_EQ(exit1["exit_code"], 3) << exit1.dump();
  EXPECT_LT(Int(exit1["ended_ms"]), Int(j["history"][1]["started_ms"]));
  // The second attempt resumed from the checkpoint instead of starting over.
  const json resumed = ReadJson(dir_ / ("jobs/" + train + "/metrics.json"));
  EXPECT_GT(Int(resumed["train"]["steps_this_run"]), 0);
  EXPECT_LT(Int(resumed["train"]["steps_this_run"]), Int(resumed["train"]["steps"]))
      << "the second attempt started over";
  // The coordinator holds attempt 2's own progress: from the step after its checkpoint to
  // the end, each event the resumed run's line.
  const int64_t resumed_from =
      Int(resumed["train"]["steps"]) - Int(resumed["train"]["steps_this_run"]);
  const auto steps = StoredSteps(train, 2);
  ASSERT_FALSE(steps.empty());
  EXPECT_EQ(steps.front(), resumed_from + 1);
  EXPECT_EQ(steps.back(), Int(resumed["train"]["steps"]));
  EXPECT_TRUE(std::is_sorted(steps.begin(), steps.end()));

  // An uninterrupted run of the same spec.
  auto r = RunCommand("cd " + work_->path() + " && " + RMGEN_TRAIN_BIN + " --quiet --spec " +
                      (dir_ / ("state-a/attempts/" + train + ".1/spec.json")) + " --out " +
                      (dir_ / "reference"));
  ASSERT_EQ(r.rc, 0) << r.out;
  const json ref = ReadJson(dir_ / "reference/metrics.json");
  ASSERT_TRUE(ref["train"]["final"].is_object());
  for (const auto& [k, v] : ref["train"]["final"].items()) {
    EXPECT_NEAR(resumed["train"]["final"][k].get<double>(), v.get<double>(),
                1e-6 * std::max(1.0, std::abs(v.get<double>())))
        << k;
  }
  EXPECT_EQ(resumed["train"]["steps"], ref["train"]["steps"]);
}

TEST_F(AgentE2eTest, CoordinatorCrashLosesNothingAndRunningJobsContinue) {
  StartCoordinator("127.0.0.1:0", 8000);
  const int port = port_;
  StartAgent("a", 1);
  const std::string study = Submit(TrainStudy("0, 1"));
  ASSERT_TRUE(WaitState(study + "-j0", "RUNNING", 120)) << Logs();
  coordinator_->Kill(SIGKILL);
  // Down 1.5 s: long enough for the agent's channel to fail to connect a few times (gRPC
  // then waited about 5 s between tries unless a call waited for it), short of the 4 s after
  // which the lease file stops the ranks.
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  StartCoordinator("127.0.0.1:" + std::to_string(port), 8000);
  ASSERT_TRUE(WaitAll(study, 4, "SUCCEEDED", 300)) << Logs();
  for (int k = 0; k < 4; ++k) {
    const json j = Job(study + "-j" + std::to_string(k));
    EXPECT_EQ(j["state"], "SUCCEEDED") << j.dump(2);
    EXPECT_EQ(Int(j["attempt"]), 1) << "requeued across the restart: " << j.dump(2);
  }
  // Every progress event once, in order.
  auto logs = Cli("logs " + study + "-j0");
  std::set<std::string> seen;
  int64_t last = 0, lines = 0;
  std::istringstream in(logs.out);
  for (std::string line; std::getline(in, line);) {
    const auto brace = line.find('{');
    if (brace == std::string::npos) continue;
    const json e = json::parse(line.substr(brace), nullptr, false);
    if (!e.contains("step")) continue;
    EXPECT_GT(Int(e["step"]), last) << logs.out;
    last = Int(e["step"]);
    ++lines;
  }
  EXPECT_GT(lines, 3);
  const json res = json::parse(Cli("results " + study + " --format json").out, nullptr, false);
  ASSERT_EQ(res["rows"].size(), 1u) << res.dump(2);
  EXPECT_EQ(res["rows"][0]["per_seed"].size(), 2u);
}

TEST_F(AgentE2eTest, CrashesAreRetriedToTheLimitAndBadInputFailsAtOnce) {
  StartCoordinator("127.0.0.1:0", 3000, /*max_attempts=*/2);
  StartFaultyAgent("a", "rank=0,phase=step,step=3,action=exit");
  const std::string study = Submit(TrainStudy("0"));
  ASSERT_TRUE(WaitState(study + "-j0", "FAILED", 180)) << Logs();
  const json j = Job(study + "-j0");
  ASSERT_EQ(j["history"].size(), 2u) << j.dump(2);
  for (const auto& h : j["history"]) {
    EXPECT_NE(h["outcome"].get<std::string>().find("failed (error): exit status 1"),
              std::string::npos)
        << h.dump();
  }
  EXPECT_NE(j["reason"].get<std::string>().find("out of attempts"), std::string::npos);
  EXPECT_TRUE(WaitState(study + "-j1", "FAILED", 20));  // its eval
  // Attempt 2 started over (no checkpoint at step 3): its progress is its own steps 1 and 2,
  // not attempt 1's lines, which it found in events.jsonl when it started.
  EXPECT_EQ(StoredSteps(study + "-j0", 2), (std::vector<int64_t>{1, 2}));
  // The ranks' last log lines travel with each failure.
  auto logs = Cli("logs " + study + "-j0");
  EXPECT_NE(logs.out.find("injected fault: rank 0 exit in step at step 3"), std::string::npos)
      << logs.out;
  // And the latest attempt's log itself (the output root is shared with the coordinator).
  EXPECT_NE(logs.out.find("logs/attempt-2.log (last"), std::string::npos) << logs.out;
  EXPECT_NE(logs.out.find("[rmgen supervisor] ended: exit 1"), std::string::npos) << logs.out;

  const std::string bad = Submit(TrainStudy("0", "synth/missing.yaml"));
  ASSERT_TRUE(WaitState(bad + "-j0", "FAILED", 120)) << Logs();
  const json b = Job(bad + "-j0");
  EXPECT_EQ(Int(b["attempt"]), 1) << b.dump(2);
  EXPECT_NE(b["reason"].get<std::string>().find("not retryable"), std::string::npos) << b.dump(2);
  // The rank's own record says why, typed: a missing input, permanent.
  EXPECT_NE(b["reason"].get<std::string>().find("failed (missing_input): rank 0"),
            std::string::npos)
      << b.dump(2);
  EXPECT_NE(Cli("logs " + bad + "-j0").out.find("missing.yaml"), std::string::npos);
}

// One rank's failure ends a 2-rank job at once, and the job's failure is that rank's: rank 1
// fails for good while loading (rank 0 goes on to wait in the weight broadcast); the job
// fails at its first attempt, its reason naming rank 1, the phase and the cause.
TEST_F(AgentE2eTest, ARanksFailureEndsTheJobWithThatRanksCause) {
  StartCoordinator("127.0.0.1:0", 3000, /*max_attempts=*/3);
  StartAgent("a", 2, {},
             {"--launcher", "command", "--command",
              std::string(RMGEN_SOURCE_DIR) + "/tests/mpi/mpirun.sh 2 " + RMGEN_TRAIN_BIN +
                  " --quiet --fault rank=1,phase=load,action=invalid"});
  const auto t0 = std::chrono::steady_clock::now();
  const std::string study = Submit(TrainStudy("0"));
  ASSERT_TRUE(WaitState(study + "-j0", "FAILED", 120)) << Logs();
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 60);
  const json j = Job(study + "-j0");
  EXPECT_EQ(Int(j["attempt"]), 1) << j.dump(2);  // permanent: not retried
  const std::string reason = j["reason"].get<std::string>();
  EXPECT_NE(reason.find("failed (bad_input): rank 1 "), std::string::npos) << reason;
  EXPECT_NE(reason.find("failed in load: injected fault"), std::string::npos) << reason;
  EXPECT_NE(reason.find("not retryable"), std::string::npos) << reason;
}

TEST_F(AgentE2eTest, TwoAgentsRunEveryJobOnceAndNeverTwiceAtATime) {
  StartCoordinator("127.0.0.1:0", 3000);
  StartFakeAgent("a", {"FAKE_STEP_S=0.05"});
  StartFakeAgent("b", {"FAKE_STEP_S=0.05"});
  const std::string study = Submit(kWideStudy);
  ASSERT_TRUE(WaitAll(study, 13, "SUCCEEDED", 120)) << Logs();
  std::set<std::string> workers;
  for (int k = 0; k < 13; ++k) {
    const json j = Job(study + "-j" + std::to_string(k));
    EXPECT_EQ(j["state"], "SUCCEEDED") << j.dump(2);
    EXPECT_EQ(Int(j["attempt"]), 1);
    workers.insert(j["history"][0]["worker"].get<std::string>());
  }
  EXPECT_EQ(workers.size(), 2u) << "one agent did all the work";
  // From the jobs' own log: one start and one end per job, at most two at once.
  std::map<std::string, int> starts, ends;
  std::vector<std::pair<double, int>> edges;
  std::istringstream in(Text(dir_ / "runs.log"));
  std::string what, job;
  double t;
  int pid;
  while (in >> what >> job >> t >> pid) {
    (what == "start" ? starts : ends)[job]++;
    edges.push_back({t, what == "start" ? 1 : -1});
  }
  EXPECT_EQ(starts.size(), 13u);
  for (const auto& [j, n] : starts) EXPECT_EQ(n, 1) << j << " ran " << n << " times";
  for (const auto& [j, n] : ends) EXPECT_EQ(n, 1) << j;
  std::sort(edges.begin(), edges.end());
  int running = 0, most = 0;
  for (const auto& [time, d] : edges) most = std::max(most, running += d);
  EXPECT_LE(most, 2);
}

TEST_F(AgentE2eTest, CancelStopsTheRanksAndLeavesNoOrphan) {
  StartCoordinator("127.0.0.1:0", 3000);
  StartFakeAgent("a", {"FAKE_MODE=stubborn", "FAKE_STEPS=100000"});
  const std::string study = Submit(TrainStudy("0"));
  const std::string id = study + "-j0";
  ASSERT_TRUE(WaitState(id, "RUNNING", 60)) << Logs();
  const json record = ReadJson(dir_ / ("state-a/attempts/" + id + ".1/record.json"));
  const std::string tag = record.value("tag", "");
  ASSERT_FALSE(tag.empty());
  // The job and the grandchild it left in another session.
  for (int i = 0; i < 100 && agent::TaggedProcesses(tag).size() < 2; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_GE(agent::TaggedProcesses(tag).size(), 2u);
  auto r = Cli("cancel " + id);
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_TRUE(WaitState(id, "CANCELLED", 10));
  ASSERT_TRUE(WaitFile(dir_ / ("state-a/attempts/" + id + ".1/exit.json"), 20)) << Logs();
  EXPECT_TRUE(agent::TaggedProcesses(tag).empty()) << "orphans left behind";
  const std::string log = Text(dir_ / ("jobs/" + id + "/logs/attempt-1.log"));
  EXPECT_NE(log.find("grace period over: SIGKILL"), std::string::npos) << log;
}

TEST_F(AgentE2eTest, RestartedAgentReportsWhatItRanWhileDown) {
  // The lease (stop at half of it after the last heartbeat) outlives each 5 s job.
  StartCoordinator("127.0.0.1:0", 40000);
  // 50 steps of 0.1 s: the job outlives the agent's restart, and the eval job the kill that
  // follows its start (with seconds to spare on a loaded machine).
  Process* a = StartFakeAgent("a", {"FAKE_STEPS=50"});
  const std::string study = Submit(TrainStudy("0"));
  ASSERT_TRUE(WaitState(study + "-j0", "RUNNING", 60)) << Logs();
  a->Kill(SIGKILL);
  a = StartFakeAgent("a", {"FAKE_STEPS=50"});
  ASSERT_TRUE(WaitState(study + "-j0", "SUCCEEDED", 60)) << Logs();
  EXPECT_EQ(Int(Job(study + "-j0")["attempt"]), 1);
  EXPECT_NE(a->Output().find("still running"), std::string::npos) << a->Output();

  // The eval job ends while its agent is down; the restarted agent reports it.
  ASSERT_TRUE(WaitState(study + "-j1", "RUNNING", 60)) << Logs();
  a->Kill(SIGKILL);
  ASSERT_TRUE(WaitFile(dir_ / ("state-a/attempts/" + study + "-j1.1/exit.json"), 30));
  a = StartFakeAgent("a", {"FAKE_STEPS=50"});
  ASSERT_TRUE(WaitState(study + "-j1", "SUCCEEDED", 60)) << Logs();
  EXPECT_EQ(Int(Job(study + "-j1")["attempt"]), 1);
  EXPECT_NE(a->Output().find("ended while the agent was down"), std::string::npos) << a->Output();
}

// Tokens never go on a command line (`ps` shows them to everyone on the node): rmgen-worker
// and rmgen refuse --token; --token-file (the token on its first line) and RMGEN_TOKEN work.
TEST_F(AgentE2eTest, TokensComeFromAFileOrTheEnvironmentNeverTheCommandLine) {
  for (const std::string& bin : {std::string(RMGEN_WORKER_BIN) + " --coordinator 127.0.0.1:1",
                                 std::string(RMGEN_CLI) + " workers --coordinator 127.0.0.1:1"}) {
    auto r = RunCommand(bin + " --token tok-on-argv");
    EXPECT_EQ(r.rc, 2) << bin << ": " << r.out;
    EXPECT_NE(r.out.find("--token is not accepted"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("--token-file"), std::string::npos) << r.out;
    auto missing = RunCommand(bin + " --token-file " + (dir_ / "nonexistent.token"));
    EXPECT_EQ(missing.rc, 2) << bin << ": " << missing.out;
  }
  std::ofstream(dir_ / "tokens.yaml")
      << "tokens:\n  - {token: op-token-0123456789abcdef, user: ops, role: operator}\n"
         "  - {token: worker-token-0123456789abcdef, user: pool, role: worker}\n";
  std::ofstream(dir_ / "op.token") << "op-token-0123456789abcdef\n";
  std::ofstream(dir_ / "worker.token") << "worker-token-0123456789abcdef\n";
  StartCoordinator("127.0.0.1:0", 3000, 3, {"--tokens", dir_ / "tokens.yaml"});
  Process* by_file = StartAgent("tok-file", 1, {}, {"--token-file", dir_ / "worker.token"});
  Process* by_env = StartAgent("tok-env", 1, {"RMGEN_TOKEN=worker-token-0123456789abcdef"});
  ASSERT_TRUE(by_file->WaitFor("registered with", 30)) << by_file->Output();
  ASSERT_TRUE(by_env->WaitFor("registered with", 30)) << by_env->Output();
  auto anonymous = Cli("workers");
  EXPECT_NE(anonymous.rc, 0) << anonymous.out;
  auto listed = Cli("workers --token-file " + (dir_ / "op.token"));
  ASSERT_EQ(listed.rc, 0) << listed.out;
  EXPECT_NE(listed.out.find("tok-file"), std::string::npos) << listed.out;
  EXPECT_NE(listed.out.find("tok-env"), std::string::npos) << listed.out;
  auto env = RunCommand("RMGEN_TOKEN=op-token-0123456789abcdef HOME=" + dir_.path() + " " +
                        RMGEN_CLI + " workers --coordinator " + Address());
  EXPECT_EQ(env.rc, 0) << env.out;
  // RMGEN_TOKEN_FILE (a mounted secret: the coordinator image's health check signs in so).
  auto env_file =
      RunCommand("env -u RMGEN_TOKEN RMGEN_TOKEN_FILE=" + (dir_ / "op.token") +
                 " HOME=" + dir_.path() + " " + RMGEN_CLI + " workers --coordinator " + Address());
  EXPECT_EQ(env_file.rc, 0) << env_file.out;
  EXPECT_NE(env_file.out.find("tok-file"), std::string::npos) << env_file.out;
  auto env_missing =
      RunCommand("env -u RMGEN_TOKEN RMGEN_TOKEN_FILE=" + (dir_ / "nonexistent.token") +
                 " HOME=" + dir_.path() + " " + RMGEN_CLI + " workers --coordinator " + Address());
  EXPECT_NE(env_missing.rc, 0);
  EXPECT_NE(env_missing.out.find("RMGEN_TOKEN_FILE"), std::string::npos) << env_missing.out;
}

// `rmgen local`: the embedded coordinator and agent. Ctrl-C stops the running job with a
// checkpoint; the same command again resumes it and finishes the study with the table.
TEST_F(AgentE2eTest, LocalRunsAStudyAndResumesAfterAnInterrupt) {
  const std::string study = dir_ / "local.yaml";
  std::ofstream(study) << "name: local\nsetting: demo\ncatalog: synth/datasets.yaml\n"
                          "models:\n"
                          "  - {name: tiny, config: synth/model.json, tokenizer: "
                          "synth/tokenizer.model, template: zephyr}\n"
                          "methods: [exrm]\nseeds: [0, 1]\ntrain: synth-id:train\n"
                          "eval: {id: [synth-id:validation], ood: [synth-prompt-shift]}\n"
                          "exrm: {epochs: 1, per_rank_batch_size: 4, learning_rate: 5.0e-4}\n"
                          "resources: {ranks: 2, checkpoint_every: 20}\n";
  const std::string data = dir_ / "local";
  {
    Process run({RMGEN_CLI, "local", study, "--data-dir", data, "--ranks", "2"},
                dir_ / "local-1.log");
    ASSERT_TRUE(WaitFile(data + "/jobs/s1-j0/checkpoint/trainer_state.json", 180)) << run.Output();
    const int st = run.Kill(SIGINT);
    EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 130) << st << run.Output();
    EXPECT_NE(run.Output().find("Run the same command again to resume"), std::string::npos)
        << run.Output();
  }
  // Nothing of the stopped job is left running.
  auto ps = RunCommand("ps -eo args | grep -c '[r]mgen-train --spec " + data + "'");
  EXPECT_EQ(ps.out, "0\n");
  const std::string log1 = Text(data + "/jobs/s1-j0/logs/attempt-1.log");
  EXPECT_NE(log1.find("ended: exit 3 (stopped)"), std::string::npos) << log1;

  auto again = RunCommand(std::string(RMGEN_CLI) + " local " + study + " --data-dir " + data);
  ASSERT_EQ(again.rc, 0) << again.out;
  EXPECT_NE(again.out.find("already submitted (same request id)"), std::string::npos);
  EXPECT_NE(again.out.find("EXRM ID"), std::string::npos) << again.out;
  EXPECT_NE(again.out.find("synth-prompt-shift"), std::string::npos) << again.out;
  const json resumed = ReadJson(data + "/jobs/s1-j0/metrics.json");
  EXPECT_EQ(resumed["ranks"], 2);
  EXPECT_LT(Int(resumed["train"]["steps_this_run"]), Int(resumed["train"]["steps"]));
  // The second run's agent took the job again as attempt 2.
  EXPECT_TRUE(FileExists(data + "/worker/attempts/s1-j0.2/record.json"));
}

// Iterative DPO through `rmgen local` with real agents and ranks on 2 ranks: from the DPO
// policy, one iteration per annotator (generate, annotate, dpo), each judged against the
// starting policy by the suite's rule; the results carry the win rates.
TEST_F(AgentE2eTest, LocalRunsAnIterativeStudyToItsWinRates) {
  const std::string study = dir_ / "iterative.yaml";
  std::ofstream(study) << "name: iter\nsetting: iterative\ncatalog: synth/datasets.yaml\n"
                          "models:\n"
                          "  - {name: tiny, config: synth/model.json, tokenizer: "
                          "synth/tokenizer.model, template: zephyr}\n"
                          "methods: [exrm, dpo]\nseeds: [3]\ntrain: synth-id:train\n"
                          "eval: {id: [synth-id:validation]}\n"
                          "data: {limit: 48}\n"
                          "sft: {epochs: 1, per_rank_batch_size: 4, learning_rate: 1.0e-3}\n"
                          "exrm: {epochs: 1, per_rank_batch_size: 4, learning_rate: 5.0e-4}\n"
                          "dpo: {epochs: 1, per_rank_batch_size: 4, learning_rate: 5.0e-4, "
                          "beta: 0.1}\n"
                          "iterative: {iterations: 1, samples: 3, prompts_per_iteration: 12, "
                          "sampling: {max_new_tokens: 8}, dpo: {epochs: 1, per_rank_batch_size: "
                          "4, learning_rate: 1.0e-4}, eval_limit: 10}\n"
                          "resources: {ranks: 2}\n";
  const std::string data = dir_ / "iter";
  auto run = RunCommand(std::string(RMGEN_CLI) + " local " + study + " --data-dir " + data);
  ASSERT_EQ(run.rc, 0) << run.out;
  EXPECT_NE(run.out.find("Iterative DPO (Table 2)"), std::string::npos) << run.out;
  // 1 sft, 2 x (train, eval), and 2 + 2 annotators x 4 iterative jobs.
  int64_t iterative_jobs = 0;
  json judged = json::array();
  for (int i = 0; i < 15; ++i) {
    const std::string job = data + "/jobs/s1-j" + std::to_string(i);
    const json spec = ReadJson(job + "/spec.resolved.json");
    const std::string kind = spec["kind"];
    if (kind == "judge") judged.push_back(ReadJson(job + "/metrics.json")["judge"]);
    if (kind == "generate") {
      EXPECT_TRUE(FileExists(job + "/alpaca_eval.json")) << job;
      EXPECT_TRUE(FileExists(job + "/generations.jsonl")) << job;
    }
    if (kind == "annotate") {
      EXPECT_GT(Int(ReadJson(job + "/metrics.json")["annotate"]["pairs"]), 0) << job;
    }
    iterative_jobs += kind == "generate" || kind == "annotate" || kind == "judge" ||
                      (kind == "dpo" && spec["data"]["train"].is_object());
  }
  EXPECT_EQ(iterative_jobs, 10);
  ASSERT_EQ(judged.size(), 2u);
  for (const auto& j : judged) {
    EXPECT_EQ(j["n"], 10);
    EXPECT_GE(j["win_rate"].get<double>(), 0.0);
    EXPECT_LE(j["win_rate"].get<double>(), 1.0);
    EXPECT_EQ(j["reward"], "oracle");
  }
  // The results over the API carry both annotators' rows.
  auto res = RunCommand(std::string(RMGEN_CLI) + " local " + study + " --data-dir " + data);
  ASSERT_EQ(res.rc, 0) << res.out;
  EXPECT_NE(res.out.find("EXRM       1"), std::string::npos) << res.out;
  EXPECT_NE(res.out.find("DPORM      1"), std::string::npos) << res.out;
}

}  // namespace
}  // namespace rmgen::testing
