// fake_agent: a test process that speaks the worker API like an agent but runs no ranks:
// each acquired job "runs" for --job-ms, reports a few progress events, and completes with
// metrics made up from its labels (eval jobs: an accuracy per eval set that depends on the
// method and seed, so the study's tables have something to aggregate, with n, ties and
// acc_tie_half, and RewardBench subsets for sets named rewardbench*). It survives a
// coordinator that goes away: every call is retried until the coordinator answers.
//
//   fake_agent --coordinator ADDR --id ID [--slots N] [--token T] [--job-ms MS]
//              [--fail-kind KIND]   (jobs of that kind fail, retryably)
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <cstdio>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "rmgen/v1/rmgen.grpc.pb.h"

namespace {

namespace pb = ::rmgen::v1;
using nlohmann::json;

struct Options {
  std::string address, id, token, fail_kind;
  int slots = 1;
  int job_ms = 100;
};

class Agent {
 public:
  explicit Agent(Options o) : o_(std::move(o)) {
    stub_ = pb::WorkerService::NewStub(
        grpc::CreateChannel(o_.address, grpc::InsecureChannelCredentials()));
  }

  std::unique_ptr<grpc::ClientContext> Ctx(int ms) {
    auto c = std::make_unique<grpc::ClientContext>();
    if (!o_.token.empty()) c->AddMetadata("authorization", "Bearer " + o_.token);
    c->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(ms));
    return c;
  }

  // Calls `f` until it returns something other than UNAVAILABLE / DEADLINE_EXCEEDED.
  template <typename F>
  grpc::Status Retry(F f) {
    for (;;) {
      grpc::Status s = f();
      if (s.error_code() != grpc::StatusCode::UNAVAILABLE &&
          s.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED) {
        return s;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }

  void Register() {
    pb::RegisterWorkerRequest req;
    req.set_id(o_.id);
    req.set_host(o_.id + ".test");
    req.set_slots(o_.slots);
    req.set_instance(instance_);
    const auto listed = Running(req.mutable_running());
    pb::RegisterWorkerResponse resp;
    grpc::Status s = Retry([&] {
      auto c = Ctx(2000);
      return stub_->RegisterWorker(c.get(), req, &resp);
    });
    if (!s.ok()) Die("register", s);
    lease_ms_ = resp.lease_ms();
    SetSession(resp.session());
    Cancel(resp.cancel(), listed);
    std::printf("registered %s\n", o_.id.c_str());
    std::fflush(stdout);
  }

  void Heartbeats() {
    while (!stop_) {
      std::this_thread::sleep_for(std::chrono::milliseconds(std::max<int64_t>(50, lease_ms_ / 4)));
      pb::HeartbeatRequest req;
      req.set_id(o_.id);
      req.set_session(Session());
      const auto listed = Running(req.mutable_running());
      pb::HeartbeatResponse resp;
      auto c = Ctx(2000);
      grpc::Status s = stub_->Heartbeat(c.get(), req, &resp);
      if (!s.ok()) continue;  // the coordinator is away: keep trying
      if (resp.reregister()) Register();
      Cancel(resp.cancel(), listed);
    }
  }

  void Slot() {
    while (!stop_) {
      pb::AcquireJobRequest req;
      req.set_id(o_.id);
      req.set_session(Session());
      req.set_wait_ms(500);
      pb::AcquireJobResponse resp;
      auto c = Ctx(3000);
      grpc::Status s = stub_->AcquireJob(c.get(), req, &resp);
      if (!s.ok() || !resp.assigned()) {
        if (!s.ok()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
        continue;
      }
      Run(resp.job(), resp.attempt());
    }
  }

  void Run(const pb::Job& job, int64_t attempt) {
    {
      std::lock_guard<std::mutex> l(m_);
      running_[job.id()] = attempt;
    }
    std::printf("run %s attempt %lld\n", job.id().c_str(), (long long)attempt);
    std::fflush(stdout);
    bool cancelled = false;
    const int steps = 4;
    for (int i = 1; i <= steps && !cancelled; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(o_.job_ms / steps));
      pb::ReportEventsResponse resp;
      grpc::Status s = Retry([&] {
        auto c = Ctx(2000);
        auto w = stub_->ReportEvents(c.get(), &resp);
        pb::ReportEventsRequest r;
        r.set_job_id(job.id());
        r.set_attempt(attempt);
        r.set_running(true);
        r.set_worker_id(o_.id);
        r.set_session(Session());
        google::protobuf::util::JsonStringToMessage(
            json({{"step", i}, {"total_steps", steps}, {"loss", 1.0 / i}, {"eta_s", steps - i}})
                .dump(),
            r.add_events());
        w->Write(r);
        w->WritesDone();
        return w->Finish();
      });
      if (!s.ok() || resp.cancel() || Cancelled(job.id(), attempt)) cancelled = true;
    }
    if (!cancelled) Complete(job, attempt);
    std::lock_guard<std::mutex> l(m_);
    // A later attempt of the same job may have started here meanwhile: leave it listed.
    auto it = running_.find(job.id());
    if (it != running_.end() && it->second == attempt) running_.erase(it);
  }

  void Complete(const pb::Job& job, int64_t attempt) {
    std::string text;
    google::protobuf::util::MessageToJsonString(job.labels(), &text);
    json labels = json::parse(text);
    text.clear();
    google::protobuf::util::MessageToJsonString(job.spec(), &text);
    json spec = json::parse(text);
    pb::CompleteJobRequest req;
    req.set_job_id(job.id());
    req.set_attempt(attempt);
    req.set_worker_id(o_.id);
    if (job.kind() == o_.fail_kind) {
      req.set_success(false);
      req.set_reason("exit status 1 (injected by fake_agent)");
      req.set_retryable(true);
      req.add_log_tail("fake_agent: failing " + job.id() + " on purpose");
    } else {
      req.set_success(true);
      json m = {{"kind", job.kind()}, {"worker", o_.id}};
      if (job.kind() == "eval") {
        const double base = labels.value("method", "") == "exrm" ? 0.80 : 0.78;
        const double seed = 0.01 * labels.value("seed", 0);
        json ev = json::object();
        int k = 0;
        for (const auto& set : spec["data"]["eval"]) {
          // rmgen-train's keys: n, accuracy, ties (here: the seed), acc_tie_half.
          const double acc = base + seed - 0.05 * k++, ties = labels.value("seed", 0);
          json e = {{"accuracy", acc},
                    {"n", 100},
                    {"ties", ties},
                    {"acc_tie_half", acc + 0.5 * ties / 100}};
          if (set.get<std::string>().rfind("rewardbench", 0) == 0) {
            // RewardBench subsets: one per section, two for reasoning.
            const double a = base + seed;
            e["subsets"] = {{"alpacaeval-easy", {{"n", 100}, {"accuracy", a}, {"ties", 0}}},
                            {"llmbar-natural", {{"n", 100}, {"accuracy", a - 0.2}, {"ties", 0}}},
                            {"donotanswer", {{"n", 136}, {"accuracy", a - 0.1}, {"ties", 0}}},
                            {"math-prm", {{"n", 984}, {"accuracy", a - 0.3}, {"ties", 0}}},
                            {"hep-go", {{"n", 164}, {"accuracy", a + 0.1}, {"ties", 0}}}};
          }
          ev[set.get<std::string>()] = e;
        }
        m["eval"] = ev;
      }
      google::protobuf::util::JsonStringToMessage(m.dump(), req.mutable_metrics());
    }
    pb::CompleteJobResponse resp;
    grpc::Status s = Retry([&] {
      auto c = Ctx(2000);
      req.set_session(Session());
      return stub_->CompleteJob(c.get(), req, &resp);
    });
    std::printf("complete %s attempt %lld: %s\n", job.id().c_str(), (long long)attempt,
                s.ok() ? pb::JobState_Name(resp.state()).c_str() : s.error_message().c_str());
    std::fflush(stdout);
  }

  void Start() {
    Register();
    std::vector<std::thread> t;
    t.emplace_back([this] { Heartbeats(); });
    for (int i = 0; i < o_.slots; ++i) t.emplace_back([this] { Slot(); });
    for (auto& x : t) x.join();
  }

 private:
  std::string Session() {
    std::lock_guard<std::mutex> l(m_);
    return session_;
  }
  void SetSession(const std::string& s) {
    std::lock_guard<std::mutex> l(m_);
    session_ = s;
  }

  // Lists the running attempts into `out` and returns them.
  std::map<std::string, int64_t> Running(google::protobuf::RepeatedPtrField<pb::RunningJob>* out) {
    std::lock_guard<std::mutex> l(m_);
    for (const auto& [id, attempt] : running_) {
      auto* r = out->Add();
      r->set_job_id(id);
      r->set_attempt(attempt);
    }
    return running_;
  }
  // A cancel names a job; it applies to the attempt the call listed, never to a later one.
  void Cancel(const google::protobuf::RepeatedPtrField<std::string>& ids,
              const std::map<std::string, int64_t>& listed) {
    std::lock_guard<std::mutex> l(m_);
    for (const auto& id : ids) {
      auto it = listed.find(id);
      if (it != listed.end()) cancelled_.insert({id, it->second});
    }
  }
  bool Cancelled(const std::string& id, int64_t attempt) {
    std::lock_guard<std::mutex> l(m_);
    return cancelled_.count({id, attempt}) > 0;
  }
  [[noreturn]] void Die(const char* what, const grpc::Status& s) {
    std::fprintf(stderr, "fake_agent %s: %s: %s\n", o_.id.c_str(), what, s.error_message().c_str());
    std::exit(1);
  }

  Options o_;
  std::unique_ptr<pb::WorkerService::Stub> stub_;
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> lease_ms_{1000};
  std::mutex m_;
  std::string session_;  // from the latest registration (m_)
  // Stable across restarts, as a real agent's is (kept in its state dir).
  const std::string instance_ = "fake-" + o_.id;
  std::map<std::string, int64_t> running_;
  std::set<std::pair<std::string, int64_t>> cancelled_;
};

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--coordinator")
      o.address = v;
    else if (k == "--id")
      o.id = v;
    else if (k == "--slots")
      o.slots = std::atoi(v.c_str());
    else if (k == "--token")
      o.token = v;
    else if (k == "--job-ms")
      o.job_ms = std::atoi(v.c_str());
    else if (k == "--fail-kind")
      o.fail_kind = v;
    else {
      std::fprintf(stderr, "fake_agent: unknown flag %s\n", k.c_str());
      return 2;
    }
  }
  if (o.address.empty() || o.id.empty()) {
    std::fprintf(stderr, "usage: fake_agent --coordinator ADDR --id ID [--slots N] ...\n");
    return 2;
  }
  Agent(o).Start();
  return 0;
}
