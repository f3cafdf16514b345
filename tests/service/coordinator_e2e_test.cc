// The coordinator over real gRPC on loopback (ctest -L service): rmgen-coordinator with a
// tokens file, fake agents (separate processes speaking the worker API), and the `rmgen`
// CLI from `submit` to `results`; roles and bad input over the wire; and the crash test:
// kill -9 the coordinator in the middle of a study, restart it on the same data
// directory, and check that nothing acknowledged is lost or duplicated. Hostile sizes and
// starts: replies paged under the 4 MiB message limit, one coordinator per data directory,
// corrupt rows quarantined, no open coordinator beyond loopback.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <sqlite3.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "common/file.h"
#include "coordinator/store.h"
#include "rmgen/v1/rmgen.grpc.pb.h"
#include "tests/service/process.h"
#include "tests/test_util.h"

namespace rmgen::testing {
namespace {

using nlohmann::json;

const char* kSubmitter = "submitter-token-0123456789";
const char* kOperator = "operator-token-0123456789";
const char* kWorker = "worker-token-0123456789ab";

class CoordinatorE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::ofstream(dir_ / "tokens.yaml")
        << "tokens:\n"
        << "  - {token: " << kSubmitter << ", user: ana, role: submitter}\n"
        << "  - {token: " << kOperator << ", user: ops, role: operator}\n"
        << "  - {token: " << kWorker << ", user: pool, role: worker}\n";
  }

  void StartCoordinator(const std::string& listen = "127.0.0.1:0",
                        const std::vector<std::string>& extra = {}) {
    std::vector<std::string> argv = {RMGEN_COORDINATOR_BIN, "--listen",    listen,
                                     "--data-dir",          dir_ / "data", "--tokens",
                                     dir_ / "tokens.yaml",  "--lease-ms",  "1500"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    coordinator_ = std::make_unique<Process>(
        argv, dir_ / ("coordinator-" + std::to_string(starts_++) + ".log"));
    ASSERT_TRUE(coordinator_->WaitFor("port ", 20)) << coordinator_->Output();
    const std::string out = coordinator_->Output();
    const auto at = out.find("\nport ");
    port_ = std::stoi(out.substr(out.find("port ", at == std::string::npos ? 0 : at) + 5));
  }
  void StartAgent(const std::string& id, int slots, int job_ms) {
    agents_.push_back(std::make_unique<Process>(
        std::vector<std::string>{RMGEN_FAKE_AGENT_BIN, "--coordinator", Address(), "--id", id,
                                 "--slots", std::to_string(slots), "--token", kWorker, "--job-ms",
                                 std::to_string(job_ms)},
        dir_ / (id + ".log")));
  }
  std::string Address() const { return "127.0.0.1:" + std::to_string(port_); }
  CommandResult Cli(const std::string& args, const char* token = kSubmitter) {
    // The token from the environment: `rmgen` refuses one on its command line (ps shows it).
    std::string cmd = std::string(RMGEN_CLI) + " " + args + " --coordinator " + Address();
    if (token) cmd = std::string("RMGEN_TOKEN=") + token + " " + cmd;
    return RunCommand("HOME=" + dir_.path() + " " + cmd);
  }
  json StudyJobs(const std::string& study) {
    auto r = Cli("results " + study + " --format json");
    EXPECT_EQ(r.rc, 0) << r.out;
    return json::parse(r.out, nullptr, false);
  }
  // Waits until `rmgen status STUDY` shows every job final.
  bool WaitStudyDone(const std::string& study, double seconds) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (std::chrono::steady_clock::now() < end) {
      auto r = Cli("status " + study);
      if (r.rc == 0 && r.out.find("QUEUED") == std::string::npos &&
          r.out.find("PENDING") == std::string::npos &&
          r.out.find("RUNNING") == std::string::npos &&
          r.out.find("ASSIGNED") == std::string::npos) {
        return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    return false;
  }

  TempDir dir_;
  std::unique_ptr<Process> coordinator_;
  std::vector<std::unique_ptr<Process>> agents_;
  int port_ = 0, starts_ = 0;
};

TEST_F(CoordinatorE2eTest, AStudyRunsFromSubmitToResultsWithFakeAgents) {
  StartCoordinator();
  StartAgent("agent-a", 2, 80);
  StartAgent("agent-b", 2, 80);
  const std::string study = SourcePath("configs/studies/demo.yaml");
  auto sub = Cli("submit " + study);
  ASSERT_EQ(sub.rc, 0) << sub.out;
  EXPECT_NE(sub.out.find("study s1 submitted: 13 jobs"), std::string::npos) << sub.out;
  auto watch = RunCommand(std::string("RMGEN_TOKEN=") + kSubmitter + " timeout 120 " +
                          std::string(RMGEN_CLI) + " watch s1 --coordinator " + Address());
  EXPECT_EQ(watch.rc, 0) << watch.out;
  EXPECT_NE(watch.out.find("SUCCEEDED"), std::string::npos) << watch.out;
  EXPECT_NE(watch.out.find("loss"), std::string::npos) << watch.out;  // progress lines
  ASSERT_TRUE(WaitStudyDone("s1", 30));

  auto table = Cli("results s1");
  ASSERT_EQ(table.rc, 0) << table.out;
  EXPECT_NE(table.out.find("6/6 runs finished"), std::string::npos) << table.out;
  // Fake accuracies: EXRM 0.80 + 0.01 * seed on the first set, DPORM 0.78 + ...
  EXPECT_NE(table.out.find("81.0 +- 1.0"), std::string::npos) << table.out;
  EXPECT_NE(table.out.find("79.0 +- 1.0"), std::string::npos) << table.out;
  json r = StudyJobs("s1");
  EXPECT_EQ(r["runs"]["finished"], 6);
  EXPECT_EQ(r["exrm_beats_dporm"]["id"]["share"], 1.0);
  EXPECT_NE(Cli("results s1 --format csv").out.find("study,setting,train,model"),
            std::string::npos);
  EXPECT_NE(Cli("results s1 --format md").out.find("| tiny |"), std::string::npos);
  auto workers = Cli("workers");
  EXPECT_NE(workers.out.find("agent-a"), std::string::npos) << workers.out;
  auto logs = Cli("logs s1-j0");
  EXPECT_NE(logs.out.find("\"step\":4"), std::string::npos) << logs.out;

  // Resubmitting the same file is the same request: no second study.
  auto again = Cli("submit " + study);
  EXPECT_NE(again.out.find("already submitted"), std::string::npos) << again.out;

  // Two more studies of the demo, tagged: I(a) and II(b) with RewardBench as a benchmark.
  auto text = ReadFile(study);
  ASSERT_TRUE(text.ok());
  const std::string ood = "  ood: [synth-prompt-shift, synth-response-shift]\n";
  ASSERT_NE(text->find(ood), std::string::npos) << *text;
  auto variant = [&](const std::string& name, const std::string& setting, bool benchmark) {
    std::string t = *text;
    t.replace(t.find("name: demo"), 10, "name: " + name + "\ntag: pair");
    t.replace(t.find("setting: demo"), 13, "setting: " + setting);
    if (benchmark) t.replace(t.find(ood), ood.size(), ood + "  benchmark: [rewardbench:test]\n");
    std::ofstream(dir_ / (name + ".yaml")) << t;
    return Cli("submit " + (dir_ / (name + ".yaml")));
  };
  auto a = variant("tagged-a", "I(a)", false);
  ASSERT_EQ(a.rc, 0) << a.out;
  EXPECT_NE(a.out.find("study s2 submitted: 13 jobs"), std::string::npos) << a.out;
  auto b = variant("tagged-b", "II(b)", true);
  ASSERT_EQ(b.rc, 0) << b.out;
  EXPECT_NE(b.out.find("study s3 submitted: 13 jobs"), std::string::npos) << b.out;
  ASSERT_TRUE(WaitStudyDone("s2", 60));
  ASSERT_TRUE(WaitStudyDone("s3", 60));

  auto tagged = Cli("results --tag pair");
  ASSERT_EQ(tagged.rc, 0) << tagged.out;
  const std::string& t = tagged.out;
  EXPECT_NE(t.find("2 studies (--tag pair): 12/12 runs finished"), std::string::npos) << t;
  EXPECT_EQ(t.find("demo (setting demo"), std::string::npos) << t;          // s1 has no tag
  EXPECT_NE(t.find("73.5 +- 1.0"), std::string::npos) << t;                 // EXRM OOD
  EXPECT_NE(t.find("n=100 ties=1 tie-half 76.5"), std::string::npos) << t;  // ties: the seed
  EXPECT_NE(t.find("EXRM beats DPORM: ID 6/6 runs (100%)"), std::string::npos) << t;
  EXPECT_NE(t.find("Table 8"), std::string::npos) << t;
  EXPECT_NE(t.find("prompt shift"), std::string::npos) << t;
  EXPECT_NE(t.find("mixture"), std::string::npos) << t;

  json tr = StudyJobs("--tag pair");
  ASSERT_TRUE(tr.is_object());
  EXPECT_EQ(tr["studies"].size(), 2u);
  EXPECT_EQ(tr["runs"]["finished"], 12);
  EXPECT_EQ(tr["tag"], "pair");
  // EXRM OOD of tagged-b: (0.75 + 0.70) / 2 + 0.01 * seed; RewardBench (k = 3: 0.65) is not
  // in it, which would make it 0.70 + 0.01 * seed.
  int checked = 0;
  for (const auto& row : tr["rows"]) {
    if (row["study"] != "tagged-b" || row["method"] != "exrm") continue;
    ++checked;
    EXPECT_NEAR(row["ood"]["mean"].get<double>(), 0.735, 1e-9) << row.dump();
    EXPECT_EQ(row["per_set"]["rewardbench:test"]["shift"], "benchmark");
  }
  EXPECT_EQ(checked, 1);
  EXPECT_EQ(tr["table7"]["eval_sets"].size(), 4u) << tr["table7"].dump();
  ASSERT_EQ(tr["figure3a"].size(), 2u);
  EXPECT_EQ(tr["figure3a"][0]["shift"], "mixture");
  EXPECT_EQ(tr["figure3a"][1]["shift"], "prompt shift");
  // Table 8 of tagged-b: per seed, Chat = alpacaeval-easy alone, Reasoning = math-prm and
  // hep-go weighted 984 : 164 (REFERENCE); mean over seeds 0, 1, 2 of 0.80 + 0.01 * seed.
  ASSERT_EQ(tr["table8"].size(), 2u) << tr["table8"].dump();
  const json& rb = tr["table8"][0];
  EXPECT_EQ(rb["reward_model"], "EXRM");
  EXPECT_NEAR(rb["chat"]["mean"].get<double>(), 0.81, 1e-9);
  EXPECT_NEAR(rb["reasoning"]["mean"].get<double>(), (984 * 0.51 + 164 * 0.91) / 1148, 1e-9);
  EXPECT_NEAR(rb["score"]["mean"].get<double>(),
              (0.81 + 0.61 + 0.71 + (984 * 0.51 + 164 * 0.91) / 1148) / 4, 1e-9);
  auto csv = Cli("results --tag pair --format csv");
  EXPECT_NE(csv.out.find("tagged-b,II(b),synth-id:train,tiny,EXRM,synth-prompt-shift,OOD,3,"
                         "0.760000,0.010000,100,1,0.765000"),
            std::string::npos)
      << csv.out;
  // The same studies by id, and with the untagged one.
  auto ids = Cli("results s2 s3 --format json");
  ASSERT_EQ(ids.rc, 0) << ids.out;
  EXPECT_EQ(json::parse(ids.out)["runs"]["finished"], 12);
  auto three = Cli("results s1 --tag pair --format md");
  EXPECT_NE(three.out.find("### 3 studies (--tag pair): 18/18 runs finished"), std::string::npos)
      << three.out;
  // An operator sees every user's tagged studies; an unknown tag is an error.
  EXPECT_NE(Cli("results --tag pair", kOperator).out.find("12/12 runs finished"),
            std::string::npos);
  auto none = Cli("results --tag nope");
  EXPECT_EQ(none.rc, 1);
  EXPECT_NE(none.out.find("no study with tag 'nope'"), std::string::npos) << none.out;
  EXPECT_EQ(Cli("results").rc, 2);
}

TEST_F(CoordinatorE2eTest, RolesAndBadInputOverTheWire) {
  StartCoordinator();
  auto none = Cli("status", nullptr);
  EXPECT_EQ(none.rc, 1);
  EXPECT_NE(none.out.find("not signed in"), std::string::npos) << none.out;
  auto wrong = Cli("status", "no-such-token-000000000");
  EXPECT_NE(wrong.out.find("unknown token"), std::string::npos) << wrong.out;
  auto worker = Cli("status", kWorker);
  EXPECT_NE(worker.out.find("not allowed"), std::string::npos) << worker.out;
  StartAgent("agent-a", 1, 50);
  ASSERT_TRUE(agents_.back()->WaitFor("registered agent-a", 30)) << agents_.back()->Output();
  auto drain = Cli("drain agent-a");
  EXPECT_NE(drain.out.find("not allowed"), std::string::npos) << drain.out;
  auto ops = Cli("drain agent-a", kOperator);
  EXPECT_EQ(ops.rc, 0) << ops.out;
  EXPECT_NE(ops.out.find("draining"), std::string::npos);

  std::ofstream(dir_ / "bad.yaml") << "name: x\nsetting: demo\nmodels: []\nmethods: [exrm]\nseeds: "
                                      "[0]\ntrain: t\neval: {id: [t]}\n";
  auto bad = Cli("submit " + (dir_ / "bad.yaml"));
  EXPECT_EQ(bad.rc, 1);
  EXPECT_NE(bad.out.find("bad.yaml:3: field 'models'"), std::string::npos) << bad.out;
  std::ofstream(dir_ / "huge.yaml") << std::string(2 << 20, '#');
  auto huge = Cli("submit " + (dir_ / "huge.yaml"));
  EXPECT_EQ(huge.rc, 1);
  EXPECT_NE(huge.out.find("huge.yaml"), std::string::npos) << huge.out;
  // The coordinator is still there.
  EXPECT_EQ(Cli("status").rc, 0);
}

TEST_F(CoordinatorE2eTest, TlsWhenConfigured) {
  auto gen = RunCommand(
      "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost "
      "-addext subjectAltName=IP:127.0.0.1,DNS:localhost -keyout " +
      (dir_ / "key.pem") + " -out " + (dir_ / "cert.pem"));
  ASSERT_EQ(gen.rc, 0) << gen.out;
  StartCoordinator("127.0.0.1:0", {"--tls-cert", dir_ / "cert.pem", "--tls-key", dir_ / "key.pem"});
  EXPECT_NE(coordinator_->Output().find("(TLS)"), std::string::npos) << coordinator_->Output();
  auto tls = Cli("status --tls-ca " + (dir_ / "cert.pem"));
  EXPECT_EQ(tls.rc, 0) << tls.out;
  EXPECT_NE(tls.out.find("no studies"), std::string::npos) << tls.out;
  // A plaintext client cannot talk to it.
  auto plain = Cli("status");
  EXPECT_EQ(plain.rc, 1);
  EXPECT_NE(plain.out.find("cannot reach the coordinator"), std::string::npos) << plain.out;
}

TEST_F(CoordinatorE2eTest, ClientCertificatesWhenRequired) {
  const std::string d = dir_.path() + "/";
  auto gen = RunCommand(
      "cd " + d +
      " && openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost "
      "-addext subjectAltName=IP:127.0.0.1,DNS:localhost -keyout key.pem -out cert.pem"
      " && openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=rmgen-clients "
      "-keyout ca.key -out ca.pem"
      " && openssl req -newkey rsa:2048 -nodes -subj /CN=ana -keyout client.key -out client.csr"
      " && openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 "
      "-out client.pem"
      " && openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=stranger "
      "-keyout other.key -out other.pem");
  ASSERT_EQ(gen.rc, 0) << gen.out;
  StartCoordinator("127.0.0.1:0", {"--tls-cert", d + "cert.pem", "--tls-key", d + "key.pem",
                                   "--tls-client-ca", d + "ca.pem"});
  const std::string tls = "status --tls-ca " + d + "cert.pem";
  auto signed_by_ca = Cli(tls + " --tls-cert " + d + "client.pem --tls-key " + d + "client.key");
  EXPECT_EQ(signed_by_ca.rc, 0) << signed_by_ca.out;
  EXPECT_NE(signed_by_ca.out.find("no studies"), std::string::npos) << signed_by_ca.out;
  // No client certificate, or one the coordinator's CA did not sign: refused.
  auto none = Cli(tls);
  EXPECT_EQ(none.rc, 1) << none.out;
  auto stranger = Cli(tls + " --tls-cert " + d + "other.pem --tls-key " + d + "other.key");
  EXPECT_EQ(stranger.rc, 1) << stranger.out;
}

TEST_F(CoordinatorE2eTest, KillingTheCoordinatorMidStudyLosesAndDuplicatesNothing) {
  StartCoordinator();
  const int port = port_;
  StartAgent("agent-a", 2, 400);
  StartAgent("agent-b", 1, 400);
  const std::string study = SourcePath("configs/studies/demo.yaml");
  ASSERT_EQ(Cli("submit " + study).rc, 0);
  // Let part of the study finish, then kill -9 while jobs run.
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < end) {
    auto s = Cli("status s1");
    const auto at = s.out.find("SUCCEEDED=");
    if (at != std::string::npos && std::stoi(s.out.substr(at + 10)) >= 3) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  auto before = Cli("status s1");
  ASSERT_EQ(coordinator_->Kill(SIGKILL) & 0x7f, SIGKILL);
  std::this_thread::sleep_for(std::chrono::milliseconds(700));
  StartCoordinator("127.0.0.1:" + std::to_string(port));
  ASSERT_EQ(port_, port);
  ASSERT_TRUE(WaitStudyDone("s1", 90)) << Cli("status s1").out;

  auto after = Cli("status s1");
  EXPECT_NE(after.out.find("13 jobs: SUCCEEDED=13"), std::string::npos) << "before the kill:\n"
                                                                        << before.out << "after:\n"
                                                                        << after.out;
  auto list = Cli("status");
  EXPECT_EQ(std::count(list.out.begin(), list.out.end(), '\n'), 1) << list.out;  // one study
  json r = StudyJobs("s1");
  EXPECT_EQ(r["runs"]["finished"], 6);
  // Every job ran to one success; a job interrupted by the crash may have a second attempt.
  for (int k = 0; k < 13; ++k) {
    auto job = Cli("status s1-j" + std::to_string(k));
    json j = json::parse(job.out.substr(job.out.find('{')), nullptr, false);
    ASSERT_TRUE(j.is_object()) << job.out;
    int succeeded = 0;
    for (const auto& a : j["history"]) succeeded += a.value("outcome", "") == "succeeded";
    EXPECT_EQ(succeeded, 1) << job.out;
  }
  EXPECT_NE(Cli("submit " + study).out.find("already submitted"), std::string::npos);
}

// ---- hostile sizes and starts --------------------------------------------------------

namespace pb = ::rmgen::v1;
constexpr size_t kMessageLimit = 4 << 20;  // gRPC's default receive limit

// A store written directly in the data dir, before the coordinator starts: more records
// than the service would take in a test's time.
std::unique_ptr<coord::Store> OpenDataStore(const TempDir& dir) {
  std::filesystem::create_directories(dir / "data");
  auto s = coord::OpenSqliteStore(dir / "data/state.db");
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return s.ok() ? std::move(s).value() : nullptr;
}

coord::JobRecord LoneJob(const std::string& kind = "reward") {
  coord::JobRecord j;
  j.name = "job";
  j.user = "ana";
  j.kind = kind;
  j.spec = json::object();
  j.state = coord::JobState::kQueued;
  return j;
}

coord::StudyRecord StudyRec(const std::string& request_id, const std::string& source,
                            json plan = json::object()) {
  coord::StudyRecord s;
  s.request_id = request_id;
  s.user = "ana";
  s.name = "study-" + request_id;
  s.setting = "demo";
  s.source = source;
  s.plan = std::move(plan);
  return s;
}

// A QUEUED job through ASSIGNED and RUNNING to SUCCEEDED, as a worker would have run it.
void Succeed(coord::Store* st, const std::string& id) {
  auto j = st->GetJob(id);
  ASSERT_TRUE(j.ok()) << j.status().ToString();
  j->attempt = 1;
  for (auto to :
       {coord::JobState::kAssigned, coord::JobState::kRunning, coord::JobState::kSucceeded}) {
    j->state = to;
    j = st->UpdateJob(*j, 1);
    ASSERT_TRUE(j.ok()) << j.status().ToString();
  }
}

std::unique_ptr<grpc::ClientContext> Ctx(const char* token = kSubmitter) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->AddMetadata("authorization", std::string("Bearer ") + token);
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  return ctx;
}

TEST_F(CoordinatorE2eTest, ListsAndLogsArePagedAndNoReplyPassesTheMessageLimit) {
  const int kStudies = 1100, kSmall = 100000, kLarge = 3000, kWorkers = 250;
  {
    auto st = OpenDataStore(dir_);
    ASSERT_TRUE(st);
    // Studies whose files are 4 KiB: all of them in one reply would be over 4 MiB.
    const std::string source = "# " + std::string(4096, 'x') + "\n";
    for (int i = 0; i < kStudies; ++i) {
      ASSERT_TRUE(st->CreateStudy(StudyRec("r" + std::to_string(i), source), {LoneJob()}, 1).ok());
    }
    // Two lone jobs: 100k small events (12 MB), and 3000 events of 2 KiB (6 MB).
    ASSERT_TRUE(st->CreateJob(LoneJob(), "small", 1).ok());  // x1-j0
    ASSERT_TRUE(st->CreateJob(LoneJob(), "large", 1).ok());  // x2-j0
    for (int from = 0; from < kSmall; from += 5000) {
      std::vector<json> batch;
      for (int k = from; k < from + 5000; ++k) {
        batch.push_back({{"step", k + 1}, {"loss", 0.5}, {"note", std::string(80, 'n')}});
      }
      ASSERT_TRUE(st->AppendEvents("x1-j0", 1, batch).ok());
    }
    std::vector<json> big;
    for (int k = 0; k < kLarge; ++k) {
      big.push_back({{"step", k + 1}, {"note", std::string(2048, 'b')}});
    }
    ASSERT_TRUE(st->AppendEvents("x2-j0", 1, big).ok());
    // A finished lone job with 12 events of 900 KiB (under the 1 MiB an event may have):
    // WatchJob must split them over several updates.
    ASSERT_TRUE(st->CreateJob(LoneJob(), "heavy", 1).ok());  // x3-j0
    std::vector<json> heavy;
    for (int k = 0; k < 12; ++k)
      heavy.push_back({{"step", k + 1}, {"note", std::string(900 << 10, 'h')}});
    ASSERT_TRUE(st->AppendEvents("x3-j0", 1, heavy).ok());
    Succeed(st.get(), "x3-j0");
    // Metrics of 900 KiB too: they count in the update that carries them.
    ASSERT_TRUE(st->RecordResult(
                      {"x3-j0", 1, {{"accuracy", 0.5}, {"note", std::string(900 << 10, 'm')}}, 1})
                    .ok());
    // Exactly one watch batch of events (500): the metrics still come, after the last one.
    ASSERT_TRUE(st->CreateJob(LoneJob(), "even", 1).ok());  // x4-j0
    std::vector<json> even;
    for (int k = 0; k < 500; ++k) even.push_back({{"step", k + 1}});
    ASSERT_TRUE(st->AppendEvents("x4-j0", 1, even).ok());
    Succeed(st.get(), "x4-j0");
    ASSERT_TRUE(st->RecordResult({"x4-j0", 1, {{"accuracy", 0.75}}, 1}).ok());
    for (int k = 0; k < kWorkers; ++k) {
      coord::WorkerRecord w;
      char id[16];
      std::snprintf(id, sizeof(id), "node%03d", k);
      w.id = id;
      w.host = id;
      w.slots = 1;
      ASSERT_TRUE(st->PutWorker(w).ok());
    }
  }
  StartCoordinator();
  auto stub =
      pb::Coordinator::NewStub(grpc::CreateChannel(Address(), grpc::InsecureChannelCredentials()));

  // ListStudies: pages of the default 100, each study once, oldest first.
  {
    pb::ListStudiesRequest req;
    std::vector<std::string> ids;
    int pages = 0;
    do {
      pb::ListStudiesResponse resp;
      auto ctx = Ctx();
      ASSERT_TRUE(stub->ListStudies(ctx.get(), req, &resp).ok());
      EXPECT_LE(resp.ByteSizeLong(), kMessageLimit);
      EXPECT_LE(resp.studies_size(), 100);
      for (const auto& s : resp.studies()) {
        EXPECT_TRUE(s.source().empty());  // GetStudy has it
        ids.push_back(s.id());
      }
      req.set_page_token(resp.next_page_token());
      ++pages;
    } while (!req.page_token().empty());
    EXPECT_EQ(pages, 11);
    ASSERT_EQ(ids.size(), size_t(kStudies));
    for (int i = 0; i < kStudies; ++i) ASSERT_EQ(ids[i], "s" + std::to_string(i + 1));
  }
  // `rmgen status` follows the pages: every study once, in order.
  {
    auto r = Cli("status");
    ASSERT_EQ(r.rc, 0) << r.out.substr(0, 2000);
    std::istringstream lines(r.out);
    std::string line;
    int k = 0;
    while (std::getline(lines, line)) {
      ASSERT_EQ(line.rfind("s" + std::to_string(++k) + " ", 0), 0u) << line;
    }
    EXPECT_EQ(k, kStudies);
  }

  // GetLogs: at most page_size events and about 2 MiB a reply; next_after_seq chains them.
  for (const auto& [job, total] : {std::pair<std::string, int>{"x1-j0", kSmall},
                                   std::pair<std::string, int>{"x2-j0", kLarge}}) {
    pb::GetLogsRequest req;
    req.set_job_id(job);
    req.set_page_size(10000);
    int64_t expect = 1, pages = 0;
    for (;;) {
      pb::GetLogsResponse resp;
      auto ctx = Ctx();
      grpc::Status s = stub->GetLogs(ctx.get(), req, &resp);
      ASSERT_TRUE(s.ok()) << s.error_message();
      ++pages;
      EXPECT_LE(resp.ByteSizeLong(), kMessageLimit);
      EXPECT_LE(resp.events_size(), job == "x1-j0" ? 10000 : 1100);
      EXPECT_GT(resp.events_size(), 0);
      for (const auto& e : resp.events()) ASSERT_EQ(e.seq(), expect++) << job;
      if (resp.next_after_seq() == 0) break;
      EXPECT_EQ(resp.next_after_seq(), expect - 1);
      req.set_after_seq(resp.next_after_seq());
    }
    EXPECT_EQ(expect - 1, total) << job;
    // 100k events: 10 pages of 10000; 3000 events of 2 KiB: cut at about 2 MiB (under 1000
    // events) a page.
    EXPECT_EQ(pages, job == "x1-j0" ? 10 : 4) << job;
  }
  // WatchJob: every event once, in order, in updates under the limit, the spec in the first
  // only, the metrics in the last only; ends at the final state.
  for (const auto& [job, events] :
       {std::pair<std::string, int>{"x3-j0", 12}, std::pair<std::string, int>{"x4-j0", 500}}) {
    pb::WatchJobRequest req;
    req.set_id(job);
    auto ctx = Ctx();
    auto reader = stub->WatchJob(ctx.get(), req);
    pb::WatchUpdate u;
    int64_t expect = 1;
    int updates = 0, with_metrics = 0, with_spec = 0;
    bool last_had_metrics = false;
    while (reader->Read(&u)) {
      ++updates;
      EXPECT_LE(u.ByteSizeLong(), kMessageLimit) << job;
      for (const auto& e : u.events()) ASSERT_EQ(e.seq(), expect++);
      last_had_metrics = u.has_metrics() && u.metrics().fields().count("accuracy") == 1;
      with_metrics += last_had_metrics;
      with_spec += u.job().has_spec();
    }
    grpc::Status s = reader->Finish();
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(expect - 1, events) << job;
    EXPECT_TRUE(last_had_metrics) << job;
    EXPECT_EQ(with_metrics, 1) << job;
    EXPECT_EQ(with_spec, 1) << job;
    // x3: at most two 900 KiB items (events or the metrics) fit the 2 MiB an update carries.
    if (job == "x3-j0") EXPECT_GE(updates, 7);
  }
  // The default page is 1000 events.
  {
    pb::GetLogsRequest req;
    req.set_job_id("x1-j0");
    pb::GetLogsResponse resp;
    auto ctx = Ctx();
    ASSERT_TRUE(stub->GetLogs(ctx.get(), req, &resp).ok());
    EXPECT_EQ(resp.events_size(), 1000);
    EXPECT_EQ(resp.next_after_seq(), 1000);
  }
  // `rmgen logs` follows the pages: every event once, in order.
  for (const auto& [job, total] : {std::pair<std::string, int>{"x1-j0", kSmall},
                                   std::pair<std::string, int>{"x2-j0", kLarge}}) {
    auto r = Cli("logs " + job);
    ASSERT_EQ(r.rc, 0) << r.out.substr(0, 2000);
    std::istringstream lines(r.out);
    std::string line;
    int k = 0;
    while (std::getline(lines, line)) {
      if (line.rfind("[", 0) != 0) continue;
      ASSERT_EQ(line.rfind("[" + std::to_string(++k) + "/attempt 1] {", 0), 0u) << line;
    }
    EXPECT_EQ(k, total) << job;
  }

  // ListWorkers: pages by id.
  {
    pb::ListWorkersRequest req;
    req.set_page_size(100);
    std::vector<std::string> ids;
    int pages = 0;
    do {
      pb::ListWorkersResponse resp;
      auto ctx = Ctx();
      ASSERT_TRUE(stub->ListWorkers(ctx.get(), req, &resp).ok());
      for (const auto& w : resp.workers()) ids.push_back(w.id());
      req.set_page_token(resp.next_page_token());
      ++pages;
    } while (!req.page_token().empty());
    EXPECT_EQ(pages, 3);
    ASSERT_EQ(ids.size(), size_t(kWorkers));
    EXPECT_TRUE(std::is_sorted(ids.begin(), ids.end()));
    EXPECT_EQ(std::set<std::string>(ids.begin(), ids.end()).size(), size_t(kWorkers));
    auto r = Cli("workers", kOperator);
    ASSERT_EQ(r.rc, 0) << r.out.substr(0, 2000);
    EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), kWorkers);
  }
  // ListJobs: the lone jobs and every study's, in pages.
  {
    pb::ListJobsRequest req;
    req.set_page_size(1000);
    int n = 0;
    do {
      pb::ListJobsResponse resp;
      auto ctx = Ctx();
      ASSERT_TRUE(stub->ListJobs(ctx.get(), req, &resp).ok());
      EXPECT_LE(resp.ByteSizeLong(), kMessageLimit);
      n += resp.jobs_size();
      req.set_page_token(resp.next_page_token());
    } while (!req.page_token().empty());
    EXPECT_EQ(n, kStudies + 4);  // one per study and the four lone jobs
  }
}

// What a worker reports comes back in replies (logs, watch updates, results): an event or
// metrics over 1 MiB, or a log tail over its caps, is refused for its content (INVALID_ARGUMENT:
// the agent splits, drops or sends it minimal) and the attempt goes on.
TEST_F(CoordinatorE2eTest, OversizedReportsAreRefusedAndTheAttemptGoesOn) {
  {
    auto st = OpenDataStore(dir_);
    ASSERT_TRUE(st);
    ASSERT_TRUE(st->CreateJob(LoneJob(), "", 1).ok());  // x1-j0
  }
  StartCoordinator();
  auto ch = grpc::CreateChannel(Address(), grpc::InsecureChannelCredentials());
  auto workers = pb::WorkerService::NewStub(ch);
  pb::RegisterWorkerRequest reg;
  reg.set_id("w1");
  reg.set_host("w1");
  reg.set_slots(1);
  reg.set_instance("instance-1");
  pb::RegisterWorkerResponse registered;
  {
    auto ctx = Ctx(kWorker);
    ASSERT_TRUE(workers->RegisterWorker(ctx.get(), reg, &registered).ok());
  }
  pb::AcquireJobRequest acq;
  acq.set_id("w1");
  acq.set_session(registered.session());
  acq.set_wait_ms(5000);
  pb::AcquireJobResponse job;
  {
    auto ctx = Ctx(kWorker);
    ASSERT_TRUE(workers->AcquireJob(ctx.get(), acq, &job).ok());
  }
  ASSERT_TRUE(job.assigned());
  auto report = [&](const std::string& note) {
    pb::ReportEventsRequest r;
    r.set_job_id(job.job().id());
    r.set_attempt(job.attempt());
    r.set_running(true);
    r.set_worker_id("w1");
    r.set_session(registered.session());
    auto* e = r.add_events();
    (*e->mutable_fields())["step"].set_number_value(1);
    (*e->mutable_fields())["note"].set_string_value(note);
    pb::ReportEventsResponse resp;
    auto ctx = Ctx(kWorker);
    auto w = workers->ReportEvents(ctx.get(), &resp);
    w->Write(r);
    w->WritesDone();
    return w->Finish();
  };
  grpc::Status big = report(std::string((1 << 20) + 100, 'e'));
  EXPECT_EQ(big.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << big.error_message();
  EXPECT_NE(big.error_message().find("over the limit"), std::string::npos) << big.error_message();
  ASSERT_TRUE(report("small").ok());
  auto complete = [&](pb::CompleteJobRequest req, pb::CompleteJobResponse* resp) {
    req.set_job_id(job.job().id());
    req.set_attempt(job.attempt());
    req.set_worker_id("w1");
    req.set_session(registered.session());
    auto ctx = Ctx(kWorker);
    return workers->CompleteJob(ctx.get(), req, resp);
  };
  pb::CompleteJobResponse done;
  pb::CompleteJobRequest heavy;
  heavy.set_success(true);
  (*heavy.mutable_metrics()->mutable_fields())["note"].set_string_value(
      std::string((1 << 20) + 100, 'm'));
  grpc::Status s = complete(heavy, &done);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  pb::CompleteJobRequest chatty;
  chatty.set_reason("exit 1");
  chatty.set_retryable(true);
  for (int k = 0; k < 300; ++k) chatty.add_log_tail("line " + std::to_string(k));
  s = complete(chatty, &done);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  EXPECT_NE(s.error_message().find("log tail"), std::string::npos) << s.error_message();
  pb::CompleteJobRequest fine;
  fine.set_success(true);
  (*fine.mutable_metrics()->mutable_fields())["accuracy"].set_number_value(0.5);
  s = complete(fine, &done);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(done.state(), pb::SUCCEEDED);
  auto logs = Cli("logs " + job.job().id());
  EXPECT_EQ(logs.rc, 0) << logs.out;
  EXPECT_NE(logs.out.find("small"), std::string::npos) << logs.out;
}

TEST_F(CoordinatorE2eTest, ASubmitReplyHoldsTheFirstPageOfJobsAndTheCliFollowsTheRest) {
  // The demo with 400 seeds: 1 SFT + 4 jobs a seed = 1601 jobs, more than one page holds.
  auto text = ReadFile(SourcePath("configs/studies/demo.yaml"));
  ASSERT_TRUE(text.ok());
  std::string seeds = "seeds: [";
  for (int i = 0; i < 400; ++i) seeds += (i ? ", " : "") + std::to_string(i);
  const size_t at = text->find("seeds: [0, 1, 2]");
  ASSERT_NE(at, std::string::npos);
  std::string yaml = *text;
  yaml.replace(at, std::string("seeds: [0, 1, 2]").size(), seeds + "]");
  StartCoordinator();
  auto stub =
      pb::Coordinator::NewStub(grpc::CreateChannel(Address(), grpc::InsecureChannelCredentials()));
  pb::SubmitStudyRequest req;
  req.set_study_yaml(yaml);
  req.set_source_name((dir_ / "many.yaml"));
  req.set_request_id("many");
  pb::SubmitStudyResponse resp;
  auto ctx = Ctx();
  grpc::Status s = stub->SubmitStudy(ctx.get(), req, &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(resp.study().jobs_total(), 1601);
  EXPECT_EQ(resp.jobs_size(), 1000);
  EXPECT_LE(resp.ByteSizeLong(), kMessageLimit);
  ASSERT_FALSE(resp.next_page_token().empty());
  std::set<std::string> ids;
  for (const auto& j : resp.jobs()) ids.insert(j.id());
  pb::ListJobsRequest lr;
  lr.set_study_id(resp.study().id());
  lr.set_page_token(resp.next_page_token());
  lr.set_page_size(1000);
  pb::ListJobsResponse rest;
  auto ctx2 = Ctx();
  ASSERT_TRUE(stub->ListJobs(ctx2.get(), lr, &rest).ok());
  for (const auto& j : rest.jobs()) ids.insert(j.id());
  EXPECT_TRUE(rest.next_page_token().empty());
  EXPECT_EQ(ids.size(), 1601u);
  // The CLI prints every job of the study once: the reply's page and the rest.
  std::ofstream(dir_ / "many.yaml") << yaml;
  auto sub = Cli("submit " + (dir_ / "many.yaml"));
  ASSERT_EQ(sub.rc, 0) << sub.out.substr(0, 2000);
  EXPECT_NE(sub.out.find(": 1601 jobs"), std::string::npos) << sub.out.substr(0, 400);
  std::set<std::string> printed;
  std::istringstream lines(sub.out);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind("s2-j", 0) == 0) printed.insert(line.substr(0, line.find(' ')));
  }
  EXPECT_EQ(printed.size(), 1601u) << sub.out.substr(0, 400);
}

TEST_F(CoordinatorE2eTest, ResultsTooLargeForOneReplyAreRefusedClearlyAndOneFormFits) {
  // Tagged studies with 150 OOD sets each, every eval job finished: all four forms of
  // their report together pass 4 MiB.
  const int kStudies = 16, kSets = 150;
  std::vector<std::string> ood;
  for (int k = 0; k < kSets; ++k) {
    ood.push_back("ood-set-with-a-rather-long-descriptive-name-number-" + std::to_string(k));
  }
  const json plan = {{"name", "big"},
                     {"setting", "II(b)"},
                     {"catalog", ""},
                     {"data_root", ""},
                     {"models",
                      {{{"name", "tiny"},
                        {"path", ""},
                        {"config", "m.json"},
                        {"tokenizer", "t"},
                        {"template", "zephyr"},
                        {"arch", ""}}}},
                     {"methods", {"exrm", "dpo"}},
                     {"seeds", {0, 1, 2}},
                     {"train", "id:train"},
                     {"eval", {{"id", {"id:test"}}, {"ood", ood}, {"benchmark", json::array()}}},
                     {"tag", "big"},
                     {"sft", nullptr},
                     {"exrm", json::object()},
                     {"dpo", json::object()},
                     {"data", json::object()},
                     {"ranks", 1},
                     {"threads", 0},
                     {"device", "cpu"},
                     {"priority", 0}};
  {
    auto st = OpenDataStore(dir_);
    ASSERT_TRUE(st);
    for (int i = 0; i < kStudies; ++i) {
      std::vector<coord::JobRecord> jobs;
      for (const char* method : {"exrm", "dpo"}) {
        for (int seed = 0; seed < 3; ++seed) {
          auto j = LoneJob("eval");
          j.labels = {{"model", "tiny"}, {"method", method}, {"seed", seed}};
          jobs.push_back(j);
        }
      }
      auto c = st->CreateStudy(StudyRec("big" + std::to_string(i), "name: big\n", plan), jobs, 1);
      ASSERT_TRUE(c.ok()) << c.status().ToString();
      for (size_t k = 0; k < jobs.size(); ++k) {
        const std::string id = c->record.id + "-j" + std::to_string(k);
        Succeed(st.get(), id);
        json eval = {{"id:test", {{"accuracy", 0.8}, {"n", 100}, {"ties", 1}}}};
        for (const auto& set : ood) eval[set] = {{"accuracy", 0.7}, {"n", 100}, {"ties", 1}};
        ASSERT_TRUE(st->RecordResult({id, 1, {{"eval", eval}}, 1}).ok());
      }
    }
  }
  StartCoordinator();
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);  // to see what the coordinator sends
  auto stub = pb::Coordinator::NewStub(
      grpc::CreateCustomChannel(Address(), grpc::InsecureChannelCredentials(), args));
  pb::GetResultsRequest req;
  req.set_tag("big");
  pb::GetResultsResponse resp;
  auto ctx = Ctx();
  grpc::Status all = stub->GetResults(ctx.get(), req, &resp);
  ASSERT_EQ(all.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << resp.ByteSizeLong();
  EXPECT_NE(all.error_message().find("16 studies"), std::string::npos) << all.error_message();
  EXPECT_NE(all.error_message().find("3.5 MiB"), std::string::npos) << all.error_message();
  EXPECT_NE(all.error_message().find("--format"), std::string::npos) << all.error_message();
  // One form at a time fits, and that is what `rmgen results` asks for.
  for (const char* format : {"csv", "table", "md", "json"}) {
    auto r = Cli(std::string("results --tag big --format ") + format);
    ASSERT_EQ(r.rc, 0) << format << ": " << r.out.substr(0, 2000);
    EXPECT_GT(r.out.size(), size_t(200) << 10) << format;
    EXPECT_NE(r.out.find("study-big15"), std::string::npos) << format;
  }
  // Asked one form, a reply carries only that one.
  req.set_format("csv");
  resp.Clear();
  auto ctx2 = Ctx();
  ASSERT_TRUE(stub->GetResults(ctx2.get(), req, &resp).ok());
  EXPECT_FALSE(resp.csv().empty());
  EXPECT_TRUE(resp.table().empty() && resp.markdown().empty() && !resp.has_results());
  EXPECT_LE(resp.ByteSizeLong(), size_t(7) << 19);
  req.set_format("xml");
  auto ctx3 = Ctx();
  EXPECT_EQ(stub->GetResults(ctx3.get(), req, &resp).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(CoordinatorE2eTest, ASecondCoordinatorOnTheSameDataDirIsRefused) {
  StartCoordinator();
  auto second = RunCommand("timeout 20 " + std::string(RMGEN_COORDINATOR_BIN) +
                           " --listen 127.0.0.1:0 --data-dir " + (dir_ / "data") + " --tokens " +
                           (dir_ / "tokens.yaml"));
  EXPECT_NE(second.rc, 0) << second.out;
  EXPECT_NE(second.rc, 124) << "the second coordinator ran: " << second.out;
  EXPECT_NE(second.out.find("data directory " + (dir_ / "data") + " is in use"), std::string::npos)
      << second.out;
  EXPECT_NE(second.out.find("pid " + std::to_string(coordinator_->pid())), std::string::npos)
      << second.out;
  // The first one keeps serving; stopped, it lets the next one start.
  auto status = Cli("status");
  EXPECT_EQ(status.rc, 0) << status.out;
  EXPECT_NE(status.out.find("no studies"), std::string::npos) << status.out;
  coordinator_->Kill(SIGTERM);
  StartCoordinator();
  EXPECT_EQ(Cli("status").rc, 0);
}

TEST_F(CoordinatorE2eTest, ListeningBeyondLoopbackNeedsTokensOrInsecure) {
  const std::string bin = std::string("timeout 20 ") + RMGEN_COORDINATOR_BIN;
  for (const char* listen : {"0.0.0.0:0", "[::]:0"}) {
    auto open = RunCommand(bin + " --listen " + listen + " --data-dir " + (dir_ / "open"));
    EXPECT_EQ(open.rc, 2) << open.out;
    EXPECT_NE(open.out.find("refusing to listen on " + std::string(listen)), std::string::npos)
        << open.out;
    EXPECT_NE(open.out.find("--tokens"), std::string::npos) << open.out;
    EXPECT_NE(open.out.find("--insecure"), std::string::npos) << open.out;
  }
  // Loopback without tokens: as before (rmgen local, development).
  for (const char* listen : {"127.0.0.1:0", "localhost:0", "[::1]:0"}) {
    Process p({RMGEN_COORDINATOR_BIN, "--listen", listen, "--data-dir", dir_ / "loop"},
              dir_ / "loop.log");
    EXPECT_TRUE(p.WaitFor("port ", 20)) << listen << ": " << p.Output();
    EXPECT_EQ(p.Output().find("WARNING"), std::string::npos) << p.Output();
  }
  // --insecure: it starts, and says loudly what that means.
  {
    Process p({RMGEN_COORDINATOR_BIN, "--listen", "0.0.0.0:0", "--insecure", "--data-dir",
               dir_ / "insecure"},
              dir_ / "insecure.log");
    ASSERT_TRUE(p.WaitFor("port ", 20)) << p.Output();
    EXPECT_NE(p.Output().find("WARNING: --insecure"), std::string::npos) << p.Output();
  }
  // --data-root confines paths, which a relative output root (resolved on each worker) defeats.
  {
    auto rel = RunCommand("cd " + dir_.path() + " && " + bin +
                          " --data-root /srv --data-dir relative-data");
    EXPECT_EQ(rel.rc, 2) << rel.out;
    EXPECT_NE(rel.out.find("needs an absolute output root"), std::string::npos) << rel.out;
  }
  // Tokens without TLS beyond loopback: it starts, warning that tokens travel in clear.
  StartCoordinator("0.0.0.0:0");
  EXPECT_NE(coordinator_->Output().find("tokens travel in clear"), std::string::npos)
      << coordinator_->Output();
  EXPECT_EQ(Cli("status").rc, 0);
}

TEST_F(CoordinatorE2eTest, ACorruptJobRowIsQuarantinedAndTheCoordinatorStarts) {
  {
    auto st = OpenDataStore(dir_);
    ASSERT_TRUE(st);
    ASSERT_TRUE(st->CreateStudy(StudyRec("one", "name: one\n"), {LoneJob(), LoneJob()}, 1).ok());
  }
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open((dir_ / "data/state.db").c_str(), &db), SQLITE_OK);
    ASSERT_EQ(
        sqlite3_exec(db, "UPDATE jobs SET body = '{\"id\": \"s1-j0\", trunc' WHERE id = 's1-j0'",
                     nullptr, nullptr, nullptr),
        SQLITE_OK);
    sqlite3_close(db);
  }
  StartCoordinator();
  const std::string out = coordinator_->Output();
  EXPECT_NE(out.find("jobs row 's1-j0' is corrupt"), std::string::npos) << out;
  EXPECT_NE(out.find("1 corrupt record(s) quarantined"), std::string::npos) << out;
  auto status = Cli("status s1");
  ASSERT_EQ(status.rc, 0) << status.out;
  EXPECT_NE(status.out.find("s1-j1"), std::string::npos) << status.out;
  EXPECT_EQ(status.out.find("s1-j0"), std::string::npos) << status.out;
  // A restart finds nothing more to quarantine.
  coordinator_->Kill(SIGTERM);
  StartCoordinator();
  EXPECT_EQ(coordinator_->Output().find("quarantined"), std::string::npos)
      << coordinator_->Output();
}

}  // namespace
}  // namespace rmgen::testing
