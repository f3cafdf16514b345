// The agent against an in-process fake coordinator (a real gRPC server on loopback), running
// jobs through the command launcher: hostile job output (bad event lines, over-long lines,
// broken UTF-8 in the log), calls the coordinator refuses for their content, the session
// protocol, and a damaged state folder. Whatever happens, the agent must stay up and every
// job must end.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <thread>

#include "common/file.h"
#include "common/utf8.h"
#include "rmgen/v1/rmgen.grpc.pb.h"
#include "tests/test_util.h"
#include "worker/agent/agent.h"

namespace rmgen::agent {
namespace {

namespace fs = std::filesystem;
namespace pb = ::rmgen::v1;

// A WorkerService that hands out queued jobs and records what it gets. Calls must carry the
// current session (else UNAUTHENTICATED, as the real coordinator answers); the hooks refuse
// calls for their content.
class FakeCoordinator final : public pb::WorkerService::Service {
 public:
  std::mutex mu;
  // Set by the test.
  std::deque<std::pair<pb::Job, std::string>> jobs;  // (job, output dir) to hand out
  grpc::Status register_status = grpc::Status::OK;
  std::string session = "none";        // each registration makes a new one
  bool require_session = false;        // calls must carry it (else any session, "" too, is taken)
  bool heartbeat_any_session = false;  // heartbeats pass whatever their session
  std::function<grpc::Status(const pb::ReportEventsRequest&)> on_events;
  std::function<grpc::Status(const pb::CompleteJobRequest&)> on_complete;
  // Recorded.
  std::vector<pb::RegisterWorkerRequest> registrations;
  std::vector<std::string> calls;                    // "Heartbeat s-1", "ReportEvents w1 s-1", ...
  std::vector<int64_t> steps;                        // of the events accepted, in order
  std::vector<pb::CompleteJobRequest> completions;   // every try
  std::vector<pb::CompleteJobRequest> completed;     // the accepted ones
  std::vector<std::vector<std::string>> heartbeats;  // the running jobs of each

  grpc::Status RegisterWorker(grpc::ServerContext*, const pb::RegisterWorkerRequest* req,
                              pb::RegisterWorkerResponse* resp) override {
    std::lock_guard<std::mutex> l(mu);
    registrations.push_back(*req);
    if (!register_status.ok()) return register_status;
    session = "s-" + std::to_string(registrations.size());
    resp->set_lease_ms(3000);
    resp->set_session(session);
    return grpc::Status::OK;
  }
  grpc::Status Heartbeat(grpc::ServerContext*, const pb::HeartbeatRequest* req,
                         pb::HeartbeatResponse* resp) override {
    std::lock_guard<std::mutex> l(mu);
    calls.push_back("Heartbeat " + req->session());
    if (!heartbeat_any_session && Refused(req->session())) {
      resp->set_reregister(true);  // as rmgen-coordinator answers a stale session
      resp->set_lease_ms(3000);
      return grpc::Status::OK;
    }
    std::vector<std::string> running;
    for (const auto& r : req->running()) running.push_back(r.job_id());
    heartbeats.push_back(running);
    resp->set_lease_ms(3000);
    return grpc::Status::OK;
  }
  grpc::Status AcquireJob(grpc::ServerContext*, const pb::AcquireJobRequest* req,
                          pb::AcquireJobResponse* resp) override {
    {
      std::lock_guard<std::mutex> l(mu);
      calls.push_back("AcquireJob " + req->session());
      if (Refused(req->session())) return Unknown();
      if (!jobs.empty()) {
        resp->set_assigned(true);
        *resp->mutable_job() = jobs.front().first;
        resp->set_attempt(1);
        resp->set_output_dir(jobs.front().second);
        jobs.pop_front();
        return grpc::Status::OK;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    return grpc::Status::OK;
  }
  grpc::Status ReportEvents(grpc::ServerContext*, grpc::ServerReader<pb::ReportEventsRequest>* r,
                            pb::ReportEventsResponse*) override {
    pb::ReportEventsRequest req;
    while (r->Read(&req)) {
      std::lock_guard<std::mutex> l(mu);
      calls.push_back("ReportEvents " + req.worker_id() + " " + req.session());
      if (Refused(req.session())) return Unknown();
      if (on_events) {
        grpc::Status s = on_events(req);
        if (!s.ok()) return s;
      }
      for (const auto& e : req.events()) {
        steps.push_back(static_cast<int64_t>(e.fields().at("step").number_value()));
      }
    }
    return grpc::Status::OK;
  }
  grpc::Status CompleteJob(grpc::ServerContext*, const pb::CompleteJobRequest* req,
                           pb::CompleteJobResponse* resp) override {
    std::lock_guard<std::mutex> l(mu);
    calls.push_back("CompleteJob " + req->worker_id() + " " + req->session());
    if (Refused(req->session())) return Unknown();
    completions.push_back(*req);
    if (on_complete) {
      grpc::Status s = on_complete(*req);
      if (!s.ok()) return s;
    }
    completed.push_back(*req);
    resp->set_state(req->success() ? pb::SUCCEEDED : pb::FAILED);
    return grpc::Status::OK;
  }

 private:
  bool Refused(const std::string& s) const { return require_session && s != session; }
  static grpc::Status Unknown() {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "unknown session for worker w1: register again");
  }
};

class AgentServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder b;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    b.RegisterService(&fake_);
    server_ = b.BuildAndStart();
    ASSERT_TRUE(server_ != nullptr);
    ASSERT_GT(port_, 0);
  }
  void TearDown() override {
    StopAgent();
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  }

  static std::string Self() {
    char buf[4096];
    const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
    return std::string(buf, n > 0 ? n : 0);
  }
  // An agent whose jobs run `script` (sh; $4 is the job's output folder).
  void StartAgent(const std::string& script) {
    std::ofstream(dir_ / "job.sh") << script << "\n";
    LauncherOptions lo;
    lo.kind = "command";
    lo.command = {"/bin/sh", dir_ / "job.sh"};
    auto launcher = MakeLauncher(lo);
    ASSERT_TRUE(launcher.ok());
    AgentOptions o;
    o.coordinator = "127.0.0.1:" + std::to_string(port_);
    o.token = "secret-token-123";
    o.id = "w1";
    o.host = "test-host";
    o.state_dir = dir_ / "state";
    o.workdir = dir_.path();
    o.supervisor_exe = {Self()};
    o.grace_ms = 1000;
    o.poll_ms = 50;
    agent_ = std::make_unique<Agent>(o, std::move(launcher).value());
    stop_ = false;
    ended_ = false;
    thread_ = std::thread([this] {
      status_ = agent_->Run(&stop_);
      ended_ = true;
    });
  }
  void StopAgent() {
    if (!thread_.joinable()) return;
    stop_ = true;
    thread_.join();
  }
  // Queues a job whose output folder is dir_/jobs/ID.
  std::string AddJob(const std::string& id) {
    pb::Job j;
    j.set_id(id);
    j.set_name("test/" + id);
    j.set_kind("reward");
    j.set_ranks(1);
    std::lock_guard<std::mutex> l(fake_.mu);
    fake_.jobs.emplace_back(j, dir_ / ("jobs/" + id));
    return dir_ / ("jobs/" + id);
  }
  // Waits until `f()` (called under the fake's lock) holds.
  bool WaitUntil(const std::function<bool()>& f, double seconds = 30) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (std::chrono::steady_clock::now() < end) {
      {
        std::lock_guard<std::mutex> l(fake_.mu);
        if (f()) return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }
  static std::string Text(const std::string& path) {
    auto t = ReadFile(path);
    return t.ok() ? *t : std::string();
  }

  testing::TempDir dir_;
  FakeCoordinator fake_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::unique_ptr<Agent> agent_;
  std::thread thread_;
  std::atomic<bool> stop_{false}, ended_{false};
  Status status_ = Status::Ok();
};

TEST_F(AgentServiceTest, BadEventLinesAreSkippedAndNeverStopTheAgent) {
  // The token the agent holds must not reach the ranks.
  ::setenv("RMGEN_TOKEN", "secret-token-123", 1);
  ::setenv("RMGEN_TOKEN_FILE", "/etc/rmgen/token", 1);
  const std::string out = AddJob("j1");
  // A checkpoint state with a string step (it used to throw when the job started).
  fs::create_directories(out + "/checkpoint");
  std::ofstream(out + "/checkpoint/trainer_state.json") << R"({"step": "5"})";
  StartAgent(R"(out=$4
env > "$out/env.txt"
e="$out/events.jsonl"
printf '%s\n' '{"step": "1"}' '{"step": 1.5}' 'not json' '[1]' '{"step": true}' >> "$e"
printf '%s\n' '{"step": 2, "loss": 0.5}' >> "$e"
head -c 3000000 /dev/zero | tr '\0' 'x' >> "$e"; echo >> "$e"
printf '%s\n' '{"step": 3}' >> "$e"
echo '{"accuracy": 0.5}' > "$out/metrics.json")");
  const bool completed = WaitUntil([&] { return !fake_.completed.empty(); });
  ::unsetenv("RMGEN_TOKEN");
  ::unsetenv("RMGEN_TOKEN_FILE");
  ASSERT_TRUE(completed) << Text(out + "/logs/attempt-1.log");
  EXPECT_FALSE(ended_);  // the agent is still up
  {
    std::lock_guard<std::mutex> l(fake_.mu);
    EXPECT_TRUE(fake_.completed[0].success());
    EXPECT_EQ(fake_.steps, (std::vector<int64_t>{2, 3}));
  }
  const std::string log = Text(out + "/logs/attempt-1.log");
  EXPECT_NE(log.find("[rmgen agent] events.jsonl: skipped the line ending at byte 14: \"step\" "
                     "is not an integer: \"1\""),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("6 events.jsonl line(s) skipped, 0 event(s) refused"), std::string::npos)
      << log;
  const std::string env = Text(out + "/env.txt");
  EXPECT_NE(env.find("RMGEN_ATTEMPT_TAG="), std::string::npos) << env;
  EXPECT_EQ(env.find("RMGEN_TOKEN"), std::string::npos) << env;
  EXPECT_EQ(env.find("secret-token-123"), std::string::npos) << env;
  StopAgent();
  EXPECT_TRUE(status_.ok()) << status_.message();
}

TEST_F(AgentServiceTest, ARefusedBatchIsSplitAndARefusedEventDropped) {
  {
    std::lock_guard<std::mutex> l(fake_.mu);
    fake_.on_events = [](const pb::ReportEventsRequest& r) {
      if (r.events_size() > 16) {
        return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "message too large");
      }
      for (const auto& e : r.events()) {
        if (e.fields().count("poison")) {
          return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "bad event");
        }
      }
      return grpc::Status::OK;
    };
  }
  const std::string out = AddJob("j1");
  StartAgent(R"(out=$4
i=1
while [ $i -le 100 ]; do
  if [ $i -eq 70 ]; then echo '{"step": 70, "poison": 1}'; else echo "{\"step\": $i}"; fi
  i=$((i + 1))
done > "$out/events.tmp"
mv "$out/events.tmp" "$out/events.jsonl"
echo '{"accuracy": 0.5}' > "$out/metrics.json")");
  ASSERT_TRUE(WaitUntil([&] { return !fake_.completed.empty(); }));
  std::vector<int64_t> want;
  for (int64_t i = 1; i <= 100; ++i) {
    if (i != 70) want.push_back(i);
  }
  std::lock_guard<std::mutex> l(fake_.mu);
  EXPECT_EQ(fake_.steps, want);
  EXPECT_TRUE(fake_.completed[0].success());
  const std::string log = Text(out + "/logs/attempt-1.log");
  EXPECT_NE(log.find("the coordinator refused the event of step 70: INVALID_ARGUMENT: bad event"),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("0 events.jsonl line(s) skipped, 1 event(s) refused"), std::string::npos);
}

// The RUNNING announcement (a report without events) that fails because the coordinator is
// away is made again: the job must not stay ASSIGNED until its first event.
TEST_F(AgentServiceTest, AFailedRunningAnnouncementIsMadeAgain) {
  int tries = 0, taken = 0;
  {
    std::lock_guard<std::mutex> l(fake_.mu);
    fake_.on_events = [&](const pb::ReportEventsRequest& r) {
      EXPECT_TRUE(r.running());
      if (++tries <= 2) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "restarting");
      ++taken;
      return grpc::Status::OK;
    };
  }
  const std::string out = AddJob("j1");
  StartAgent("sleep 3; echo '{\"accuracy\": 0.5}' > \"$4/metrics.json\"");
  ASSERT_TRUE(WaitUntil([&] { return !fake_.completed.empty(); }));
  std::lock_guard<std::mutex> l(fake_.mu);
  EXPECT_GE(tries, 3);
  EXPECT_GE(taken, 1) << "the announcement was never made again";
  EXPECT_TRUE(fake_.steps.empty());
}

// Exit 0 with no metrics.json (srun reports success for a step whose tasks never launched)
// is retried; a metrics.json that is there but not a JSON object fails for good.
TEST_F(AgentServiceTest, AnExitZeroWithoutMetricsIsRetriedButBadMetricsAreFinal) {
  AddJob("j1");
  StartAgent("exit 0");
  ASSERT_TRUE(WaitUntil([&] { return !fake_.completed.empty(); }));
  {
    std::lock_guard<std::mutex> l(fake_.mu);
    const pb::CompleteJobRequest& c = fake_.completed[0];
    EXPECT_FALSE(c.success());
    EXPECT_TRUE(c.retryable());
    EXPECT_EQ(c.cause(), "error");
    EXPECT_NE(c.reason().find("did the launcher start them?"), std::string::npos) << c.reason();
  }
  StopAgent();
  AddJob("j2");
  StartAgent(R"(echo '[1, 2]' > "$4/metrics.json")");
  ASSERT_TRUE(WaitUntil([&] { return fake_.completed.size() >= 2; }));
  std::lock_guard<std::mutex> l(fake_.mu);
  const pb::CompleteJobRequest& c = fake_.completed.back();
  EXPECT_FALSE(c.success());
  EXPECT_FALSE(c.retryable());
  EXPECT_EQ(c.cause(), "bad_result");
}

TEST_F(AgentServiceTest, ALogTailWithBrokenUtf8IsSentAsValidUtf8) {
  AddJob("j1");
  // Invalid bytes, a 5000-byte line of 2-byte characters, a 3-byte character cut short.
  StartAgent(R"(printf 'bad \377\376 bytes\n'
head -c 2500 /dev/zero | tr '\0' 'x' | sed 's/x/\xc3\xa9/g'; echo
printf 'cut \342\202\n'
exit 1)");
  ASSERT_TRUE(WaitUntil([&] { return !fake_.completed.empty(); }));
  std::lock_guard<std::mutex> l(fake_.mu);
  const pb::CompleteJobRequest& c = fake_.completed[0];
  EXPECT_FALSE(c.success());
  EXPECT_TRUE(c.retryable());
  EXPECT_EQ(c.reason(), "exit status 1");
  std::string all;
  for (const auto& line : c.log_tail()) {
    EXPECT_TRUE(IsValidUtf8(line)) << line;
    EXPECT_LE(line.size(), 2000u);
    all += line + "\n";
  }
  EXPECT_NE(all.find("bad \xEF\xBF\xBD\xEF\xBF\xBD bytes"), std::string::npos) << all;
  EXPECT_NE(all.find("cut \xEF\xBF\xBD"), std::string::npos) << all;
  EXPECT_NE(all.find("\xC3\xA9\xC3\xA9..."), std::string::npos) << all;  // cut, marked
}

TEST_F(AgentServiceTest, ARefusedReportIsSentMinimalThenGivenUpAndFreesTheSlot) {
  {
    std::lock_guard<std::mutex> l(fake_.mu);
    fake_.on_complete = [](const pb::CompleteJobRequest& r) {
      if (r.job_id() == "j2" || r.log_tail_size() > 0) {
        return grpc::Status(grpc::StatusCode::INTERNAL, "cannot store that");
      }
      return grpc::Status::OK;
    };
  }
  AddJob("j1");
  StartAgent(std::string("echo some output; echo '") + std::string(3000, 'r') + "'; exit 1");
  ASSERT_TRUE(WaitUntil([&] { return !fake_.completed.empty(); }));
  {
    std::lock_guard<std::mutex> l(fake_.mu);
    ASSERT_EQ(fake_.completions.size(), 2u);
    EXPECT_GT(fake_.completions[0].log_tail_size(), 0);
    EXPECT_EQ(fake_.completions[1].log_tail_size(), 0);
    EXPECT_EQ(fake_.completed[0].reason(), "exit status 1");
    EXPECT_TRUE(fake_.completed[0].retryable());
  }
  // Refused in every form: given up after the minimal try, and its slot is free again.
  AddJob("j2");
  ASSERT_TRUE(WaitUntil([&] {
    return fake_.completions.size() == 4 && !fake_.heartbeats.empty() &&
           fake_.heartbeats.back().empty();
  }));
  AddJob("j3");
  ASSERT_TRUE(WaitUntil([&] { return fake_.completed.size() == 2; }));
  std::lock_guard<std::mutex> l(fake_.mu);
  EXPECT_EQ(fake_.completed[1].job_id(), "j3");
  EXPECT_EQ(fake_.completions.size(), 6u);
}

TEST_F(AgentServiceTest, EveryCallCarriesTheSessionAndALostSessionRegistersAgain) {
  {
    std::lock_guard<std::mutex> l(fake_.mu);
    fake_.require_session = true;
  }
  const std::string out = AddJob("j1");
  // Writes 10 events, waits for go1 to go; 10 more, waits for go2; 10 more; ends.
  StartAgent(R"(out=$4
: > "$out/go1"; : > "$out/go2"
i=1
while [ $i -le 30 ]; do
  echo "{\"step\": $i}" >> "$out/events.jsonl"
  [ $i -eq 10 ] && while [ -e "$out/go1" ]; do sleep 0.05; done
  [ $i -eq 20 ] && while [ -e "$out/go2" ]; do sleep 0.05; done
  i=$((i + 1))
done
echo '{"accuracy": 0.5}' > "$out/metrics.json")");
  ASSERT_TRUE(WaitUntil([&] { return fake_.steps.size() == 10; }));
  {
    // The coordinator forgets the session (as after another agent's takeover): the next
    // heartbeat's reply says reregister.
    std::lock_guard<std::mutex> l(fake_.mu);
    fake_.session = "revoked";
  }
  ASSERT_TRUE(WaitUntil([&] { return fake_.registrations.size() == 2; }));
  fs::remove(out + "/go1");
  ASSERT_TRUE(WaitUntil([&] { return fake_.steps.size() == 20; }));
  {
    // Again, but only ReportEvents notices (UNAUTHENTICATED).
    std::lock_guard<std::mutex> l(fake_.mu);
    fake_.heartbeat_any_session = true;
    fake_.session = "revoked";
  }
  fs::remove(out + "/go2");
  ASSERT_TRUE(WaitUntil([&] { return !fake_.completed.empty(); }));
  {
    std::lock_guard<std::mutex> l(fake_.mu);
    std::vector<int64_t> want;
    for (int64_t i = 1; i <= 30; ++i) want.push_back(i);
    EXPECT_EQ(fake_.steps, want);  // each once, none lost
    EXPECT_TRUE(fake_.completed[0].success());
    EXPECT_EQ(fake_.completed[0].session(), "s-3");
    EXPECT_EQ(fake_.completed[0].worker_id(), "w1");
    // Registered again each time, with the running job and the same instance key.
    const auto& r = fake_.registrations;
    ASSERT_EQ(r.size(), 3u);
    for (size_t k = 1; k < r.size(); ++k) {
      ASSERT_EQ(r[k].running_size(), 1);
      EXPECT_EQ(r[k].running(0).job_id(), "j1");
      EXPECT_EQ(r[k].instance(), r[0].instance());
    }
    EXPECT_EQ(r[0].instance().size(), 32u);
    EXPECT_EQ(Text(dir_ / "state/instance"), r[0].instance() + "\n");
    // (Registration 2 came from a heartbeat reply, 3 from a refused ReportEvents: heartbeats
    // passed then, and the busy slot sent no AcquireJob.)
    for (const auto& c : fake_.calls) {
      // Every call carries a session it was given (none is sent empty), worker calls the id.
      const std::string session = c.substr(c.rfind(' ') + 1);
      EXPECT_TRUE(session == "s-1" || session == "s-2" || session == "s-3") << c;
      if (c.rfind("ReportEvents", 0) == 0 || c.rfind("CompleteJob", 0) == 0) {
        EXPECT_NE(c.find(" w1 "), std::string::npos) << c;
      }
    }
  }
  // A restarted agent (same state folder) is the same instance.
  StopAgent();
  StartAgent("exit 0");
  ASSERT_TRUE(WaitUntil([&] { return fake_.registrations.size() == 4; }));
  std::lock_guard<std::mutex> l(fake_.mu);
  EXPECT_EQ(fake_.registrations[3].instance(), fake_.registrations[0].instance());
}

TEST_F(AgentServiceTest, AnIdHeldByAnotherAgentIsAClearErrorAtStart) {
  {
    std::lock_guard<std::mutex> l(fake_.mu);
    fake_.register_status =
        grpc::Status(grpc::StatusCode::ALREADY_EXISTS, "worker w1 is live with another instance");
  }
  StartAgent("exit 0");
  thread_.join();
  EXPECT_EQ(status_.code(), StatusCode::kAlreadyExists) << status_.message();
  EXPECT_NE(status_.message().find("another agent runs under this id"), std::string::npos)
      << status_.message();
  EXPECT_NE(status_.message().find("worker w1 is live with another instance"), std::string::npos)
      << status_.message();
}

TEST_F(AgentServiceTest, ADamagedAttemptRecordIsQuarantined) {
  fs::create_directories(dir_ / "state/attempts/j9.1");
  fs::create_directories(dir_ / "state/attempts/j8.1");
  std::ofstream(dir_ / "state/attempts/j9.1/record.json")
      << R"({"job_id": "j9", "attempt": "1", "supervisor": "x", "reported": false})";
  std::ofstream(dir_ / "state/attempts/j8.1/record.json") << "{ not json";
  StartAgent("exit 0");
  ASSERT_TRUE(WaitUntil([&] { return !fake_.heartbeats.empty(); }));
  EXPECT_FALSE(ended_);
  EXPECT_FALSE(fs::exists(dir_ / "state/attempts/j9.1"));
  EXPECT_FALSE(fs::exists(dir_ / "state/attempts/j8.1"));
  std::vector<std::string> moved;
  for (const auto& e : fs::directory_iterator(dir_ / "state/quarantine")) {
    moved.push_back(e.path().filename().string().substr(0, 4));
  }
  std::sort(moved.begin(), moved.end());
  EXPECT_EQ(moved, (std::vector<std::string>{"j8.1", "j9.1"}));
  std::lock_guard<std::mutex> l(fake_.mu);
  EXPECT_EQ(fake_.registrations[0].running_size(), 0);
}

}  // namespace
}  // namespace rmgen::agent
