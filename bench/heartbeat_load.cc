// Heartbeat load: do workers keep their leases while the coordinator is busy and its disk
// stalls? One process: the coordinator's gRPC server, Core and SQLite store (as in
// rmgen-coordinator, over loopback), the store wrapped in a decorator that sleeps once inside
// a write (a stalled disk); 50 simulated agents, each a thread pair like rmgen-worker's: one
// registers (with its own instance key), long-polls AcquireJob, reports a few progress steps
// (ReportEvents, one call per step) and completes each job with success; the other sends a
// Heartbeat every lease/6 and times it. Every call after registration carries the worker id and
// the session the registration returned (whatever it was, "" included). A 5,000-job study (4
// models x exrm x 625 seeds, a train and an eval job each: an eval waits on its train job), 20
// WatchStudy streams on it, and halfway through (when half the jobs have completed) the next store
// write of the chosen kind sleeps 5 s.
//
//   heartbeat_load [--agents 50] [--jobs 5000] [--watchers 20] [--lease-ms 10000]
//                  [--stall-ms 5000] [--stall-op UpdateJob|AppendEvents|PutWorker|RecordResult|any]
//                  [--stall-at 0.5] [--steps 3] [--step-ms 100] [--max-s 900]
//                  [--csv FILE] [--dir DIR]
//
// Prints one JSON line per measurement and a summary against the targets:
//   heartbeat round trip p99 < lease/10 (over every heartbeat of the run, the stall included);
//   no lease lost: no job attempt ended by a lease ("lease expired ..."), no agent told to
//   register again (reregister, or a call refused as UNAUTHENTICATED).
// Exit status 0 when both hold, 1 otherwise (or when the run itself went wrong).
// --csv FILE: every heartbeat as "t_s,agent,rtt_ms,ok" (t_s: when it was sent, seconds from
// the start of the agents) and FILE.meta.json (lease, target, the stall's window, the numbers);
// bench/heartbeat_load_plot.py FILE draws them (PNG + SVG).
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <thread>

#include "coordinator/service.h"
#include "rmgen/v1/rmgen.grpc.pb.h"

namespace {

namespace pb = ::rmgen::v1;
using nlohmann::json;
using Steady = std::chrono::steady_clock;
using namespace rmgen::coord;
using rmgen::Status;
using rmgen::StatusOr;

Steady::time_point g_t0 = Steady::now();
double Since(Steady::time_point t) { return std::chrono::duration<double>(t - g_t0).count(); }
double NowS() { return Since(Steady::now()); }

double Pct(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * v.size()))];
}

// ---- the stalling store ----------------------------------------------------------------

// Forwards every call to the real store; once armed, the next write of the chosen kind (or of
// any kind, "any") sleeps `stall_ms` before it runs, holding whatever locks its caller holds
// (a disk that stops answering for a while).
class StallingStore final : public Store {
 public:
  StallingStore(std::unique_ptr<Store> inner, std::string op, int64_t stall_ms)
      : inner_(std::move(inner)), op_(std::move(op)), stall_ms_(stall_ms) {}

  void Arm() { armed_ = true; }
  bool done() const { return stalled_; }
  // Seconds since the start: when the stall began and ended (-1 before), and in which write.
  double begin_s() const { return begin_s_; }
  double end_s() const { return end_s_; }
  std::string which() {
    std::lock_guard<std::mutex> l(m_);
    return which_;
  }

  StatusOr<Created<StudyRecord>> CreateStudy(StudyRecord study, std::vector<JobRecord> jobs,
                                             int64_t now_ms) override {
    Stall("CreateStudy");
    return inner_->CreateStudy(std::move(study), std::move(jobs), now_ms);
  }
  StatusOr<StudyRecord> GetStudy(const std::string& id) override { return inner_->GetStudy(id); }
  using Store::ListStudies;
  StatusOr<StudyPage> ListStudies(const StudyFilter& filter) override {
    return inner_->ListStudies(filter);
  }
  Status UpdateStudy(const StudyRecord& study) override {
    Stall("UpdateStudy");
    return inner_->UpdateStudy(study);
  }
  StatusOr<std::string> LookupRequest(const std::string& user,
                                      const std::string& request_id) override {
    return inner_->LookupRequest(user, request_id);
  }
  StatusOr<Created<JobRecord>> CreateJob(JobRecord job, const std::string& request_id,
                                         int64_t now_ms) override {
    Stall("CreateJob");
    return inner_->CreateJob(std::move(job), request_id, now_ms);
  }
  StatusOr<JobRecord> GetJob(const std::string& id) override { return inner_->GetJob(id); }
  StatusOr<JobPage> ListJobs(const JobFilter& filter) override { return inner_->ListJobs(filter); }
  StatusOr<JobRecord> UpdateJob(JobRecord job, int64_t now_ms) override {
    Stall("UpdateJob");
    return inner_->UpdateJob(std::move(job), now_ms);
  }
  StatusOr<std::vector<JobRecord>> ActiveJobs() override { return inner_->ActiveJobs(); }
  StatusOr<int64_t> AppendEvents(const std::string& job_id, int64_t attempt,
                                 const std::vector<nlohmann::json>& bodies) override {
    Stall("AppendEvents");
    return inner_->AppendEvents(job_id, attempt, bodies);
  }
  StatusOr<std::vector<EventRecord>> ListEvents(const std::string& job_id, int64_t after_seq,
                                                int64_t limit) override {
    return inner_->ListEvents(job_id, after_seq, limit);
  }
  Status RecordResult(const ResultRecord& result) override {
    Stall("RecordResult");
    return inner_->RecordResult(result);
  }
  StatusOr<std::optional<ResultRecord>> GetResult(const std::string& job_id) override {
    return inner_->GetResult(job_id);
  }
  Status PutWorker(const WorkerRecord& worker) override {
    Stall("PutWorker");
    return inner_->PutWorker(worker);
  }
  StatusOr<WorkerRecord> GetWorker(const std::string& id) override { return inner_->GetWorker(id); }
  StatusOr<std::vector<WorkerRecord>> ListWorkers() override { return inner_->ListWorkers(); }
  int64_t quarantined() const override { return inner_->quarantined(); }

 private:
  void Stall(const char* op) {
    if (!armed_.load() || (op_ != "any" && op_ != op)) return;
    bool expected = true;
    if (!armed_.compare_exchange_strong(expected, false)) return;
    {
      std::lock_guard<std::mutex> l(m_);
      which_ = op;
    }
    begin_s_ = NowS();
    std::this_thread::sleep_for(std::chrono::milliseconds(stall_ms_));
    end_s_ = NowS();
    stalled_ = true;
  }

  std::unique_ptr<Store> inner_;
  const std::string op_;
  const int64_t stall_ms_;
  std::atomic<bool> armed_{false}, stalled_{false};
  std::atomic<double> begin_s_{-1}, end_s_{-1};
  std::mutex m_;
  std::string which_;
};

// ---- simulated agents ------------------------------------------------------------------

struct Options {
  int agents = 50, jobs = 5000, watchers = 20, steps = 3;
  int64_t lease_ms = 10000, stall_ms = 5000, step_ms = 100;
  double stall_at = 0.5, max_s = 900;
  std::string stall_op = "UpdateJob", csv, dir;
};

struct Beat {
  double t_s = 0, rtt_ms = 0;
  int agent = 0;
  bool ok = false;
};

struct Totals {
  std::atomic<int64_t> completed{0}, complete_refused{0}, report_refused{0}, cancelled{0};
  std::atomic<int64_t> reregisters{0}, unauthenticated{0}, heartbeat_errors{0};
  std::atomic<int64_t> acquire_errors{0}, transient_retries{0};
};

bool Transient(const grpc::Status& s) {
  return s.error_code() == grpc::StatusCode::UNAVAILABLE ||
         s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
}

std::unique_ptr<grpc::ClientContext> Ctx(int64_t ms) {
  auto c = std::make_unique<grpc::ClientContext>();
  c->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(ms));
  return c;
}

class SimAgent {
 public:
  SimAgent(int index, const std::string& addr, const Options& o, Totals* totals,
           std::atomic<bool>* stop)
      : index_(index), o_(o), totals_(totals), stop_(stop) {
    grpc::ChannelArguments args;
    args.SetInt("grpc.channel_id", 1000 + index);  // a connection of its own, like an agent
    stub_ = pb::WorkerService::NewStub(
        grpc::CreateCustomChannel(addr, grpc::InsecureChannelCredentials(), args));
    char id[32];
    std::snprintf(id, sizeof(id), "hb-agent-%02d", index);
    id_ = id;
    std::random_device rd;
    char key[40];
    std::snprintf(key, sizeof(key), "%08x%08x%08x%08x", rd(), rd(), rd(), rd());
    instance_ = key;
  }

  bool Register(bool again) {
    if (again) ++totals_->reregisters;
    for (int tries = 0; !stop_->load(); ++tries) {
      pb::RegisterWorkerRequest req;
      req.set_id(id_);
      req.set_host(id_ + ".bench");
      req.set_slots(1);
      req.set_instance(instance_);
      {
        std::lock_guard<std::mutex> l(m_);
        if (!job_.empty()) {
          auto* r = req.add_running();
          r->set_job_id(job_);
          r->set_attempt(attempt_);
        }
      }
      pb::RegisterWorkerResponse resp;
      auto c = Ctx(o_.lease_ms);
      grpc::Status s = stub_->RegisterWorker(c.get(), req, &resp);
      if (s.ok()) {
        std::lock_guard<std::mutex> l(m_);
        session_ = resp.session();
        return true;
      }
      if (!Transient(s) || tries > 20) {
        std::fprintf(stderr, "%s: RegisterWorker: %s\n", id_.c_str(), s.error_message().c_str());
        return false;
      }
      ++totals_->transient_retries;
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    return false;
  }

  // The heartbeat thread: like rmgen-worker's, one heartbeat lease/6 after the previous one
  // returned (the first at a random phase, so 50 agents do not beat in step).
  void Heartbeats(std::vector<Beat>* beats) {
    const int64_t period = std::max<int64_t>(50, o_.lease_ms / 6);
    std::mt19937 rng(index_);
    int64_t wait = std::uniform_int_distribution<int64_t>(0, period)(rng);
    while (!stop_->load()) {
      for (int64_t t = 0; t < wait && !stop_->load(); t += 20) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
      if (stop_->load()) break;
      wait = period;
      pb::HeartbeatRequest req;
      req.set_id(id_);
      {
        std::lock_guard<std::mutex> l(m_);
        req.set_session(session_);
        if (!job_.empty()) {
          auto* r = req.add_running();
          r->set_job_id(job_);
          r->set_attempt(attempt_);
        }
      }
      pb::HeartbeatResponse resp;
      auto c = Ctx(o_.lease_ms);  // long enough to time a stalled heartbeat, not to lose it
      const auto sent = Steady::now();
      grpc::Status s = stub_->Heartbeat(c.get(), req, &resp);
      const auto got = Steady::now();
      beats->push_back({Since(sent), std::chrono::duration<double, std::milli>(got - sent).count(),
                        index_, s.ok()});
      if (!s.ok()) {
        ++totals_->heartbeat_errors;
        if (s.error_code() == grpc::StatusCode::UNAUTHENTICATED) {
          ++totals_->unauthenticated;
          Register(true);
        }
        continue;
      }
      if (resp.reregister()) Register(true);
      for (const auto& id : resp.cancel()) {
        std::lock_guard<std::mutex> l(m_);
        if (id == job_) cancel_ = true;
      }
    }
  }

  // The work thread: acquire, run (report steps), complete, again until stopped.
  void Work() {
    while (!stop_->load()) {
      pb::AcquireJobRequest req;
      req.set_id(id_);
      req.set_wait_ms(1000);
      req.set_session(Session());
      pb::AcquireJobResponse resp;
      auto c = Ctx(o_.lease_ms);
      grpc::Status s = stub_->AcquireJob(c.get(), req, &resp);
      if (!s.ok()) {
        ++totals_->acquire_errors;
        if (s.error_code() == grpc::StatusCode::UNAUTHENTICATED) {
          ++totals_->unauthenticated;
          Register(true);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(300));
        continue;
      }
      if (!resp.assigned()) continue;
      Run(resp.job().id(), resp.attempt());
    }
  }

  const std::string& id() const { return id_; }

 private:
  std::string Session() {
    std::lock_guard<std::mutex> l(m_);
    return session_;
  }

  // Calls `f` until it is answered (not UNAVAILABLE / DEADLINE_EXCEEDED) or the run stops.
  template <typename F>
  grpc::Status Retry(F f) {
    for (;;) {
      grpc::Status s = f();
      if (!Transient(s) || stop_->load()) return s;
      ++totals_->transient_retries;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }

  void Run(const std::string& job, int64_t attempt) {
    {
      std::lock_guard<std::mutex> l(m_);
      job_ = job;
      attempt_ = attempt;
      cancel_ = false;
    }
    bool go_on = true;
    for (int step = 1; step <= o_.steps && go_on && !stop_->load(); ++step) {
      std::this_thread::sleep_for(std::chrono::milliseconds(o_.step_ms));
      pb::ReportEventsResponse resp;
      grpc::Status s = Retry([&] {
        auto c = Ctx(o_.lease_ms);
        auto w = stub_->ReportEvents(c.get(), &resp);
        pb::ReportEventsRequest r;
        r.set_job_id(job);
        r.set_attempt(attempt);
        r.set_running(true);
        r.set_worker_id(id_);
        r.set_session(Session());
        auto& f = *r.add_events()->mutable_fields();
        f["step"].set_number_value(step);
        f["total_steps"].set_number_value(o_.steps);
        f["loss"].set_number_value(0.5);
        w->Write(r);
        w->WritesDone();
        return w->Finish();
      });
      if (!s.ok()) {
        ++totals_->report_refused;
        std::fprintf(stderr, "%s: ReportEvents %s/%lld: %s\n", id_.c_str(), job.c_str(),
                     static_cast<long long>(attempt), s.error_message().c_str());
        if (s.error_code() == grpc::StatusCode::UNAUTHENTICATED) {
          ++totals_->unauthenticated;
          Register(true);
        }
        go_on = false;
      } else if (resp.cancel()) {
        ++totals_->cancelled;
        go_on = false;
      }
      std::lock_guard<std::mutex> l(m_);
      if (cancel_) go_on = false;
    }
    if (go_on && !stop_->load()) {
      pb::CompleteJobResponse resp;
      grpc::Status s = Retry([&] {
        pb::CompleteJobRequest req;
        req.set_job_id(job);
        req.set_attempt(attempt);
        req.set_success(true);
        req.set_worker_id(id_);
        req.set_session(Session());
        google::protobuf::util::JsonStringToMessage(
            R"({"kind": "fake", "train": {"steps": )" + std::to_string(o_.steps) + "}}",
            req.mutable_metrics());
        auto c = Ctx(o_.lease_ms);
        return stub_->CompleteJob(c.get(), req, &resp);
      });
      if (s.ok()) {
        ++totals_->completed;
      } else {
        ++totals_->complete_refused;
        std::fprintf(stderr, "%s: CompleteJob %s/%lld: %s\n", id_.c_str(), job.c_str(),
                     static_cast<long long>(attempt), s.error_message().c_str());
        if (s.error_code() == grpc::StatusCode::UNAUTHENTICATED) {
          ++totals_->unauthenticated;
          Register(true);
        }
      }
    }
    std::lock_guard<std::mutex> l(m_);
    job_.clear();
    attempt_ = 0;
  }

  const int index_;
  const Options o_;
  Totals* totals_;
  std::atomic<bool>* stop_;
  std::unique_ptr<pb::WorkerService::Stub> stub_;
  std::string id_, instance_;
  std::mutex m_;  // session_, job_, attempt_, cancel_
  std::string session_, job_;
  int64_t attempt_ = 0;
  bool cancel_ = false;
};

// About `jobs` jobs: per model (a study takes at most 1,000 seeds) and seed, a train job and
// its eval job. The fewest models whose seed count divides the pairs evenly (5,000 jobs: 4
// models x 625 seeds).
std::string StudyYaml(int jobs) {
  const int pairs = (jobs + 1) / 2;
  int models = (pairs + 999) / 1000;
  for (int m = models; m <= models + 8; ++m) {
    if (pairs % m == 0) {
      models = m;
      break;
    }
  }
  const int seeds = (pairs + models - 1) / models;
  std::string s = "name: heartbeat-load\nsetting: bench\ncatalog: synth/datasets.yaml\nmodels:\n";
  for (int m = 0; m < models; ++m) {
    s += "  - {name: tiny" + std::to_string(m) +
         ", config: synth/model.json, tokenizer: synth/tokenizer.model, template: zephyr}\n";
  }
  s += "methods: [exrm]\nseeds: [";
  for (int i = 0; i < seeds; ++i) s += (i ? ", " : "") + std::to_string(i);
  s += "]\ntrain: synth-id:train\n"
       "eval: {id: [synth-id:validation]}\n"
       "exrm: {epochs: 1}\nresources: {ranks: 1}\n";
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  o.dir = std::filesystem::temp_directory_path() / "rmgen-heartbeat-load";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--agents") o.agents = std::max(1, std::atoi(v.c_str()));
    if (k == "--jobs") o.jobs = std::max(4, std::atoi(v.c_str()));
    if (k == "--watchers") o.watchers = std::max(0, std::atoi(v.c_str()));
    if (k == "--lease-ms") o.lease_ms = std::max<int64_t>(600, std::atoll(v.c_str()));
    if (k == "--stall-ms") o.stall_ms = std::max<int64_t>(0, std::atoll(v.c_str()));
    if (k == "--stall-op") o.stall_op = v;
    if (k == "--stall-at") o.stall_at = std::atof(v.c_str());
    if (k == "--steps") o.steps = std::max(1, std::atoi(v.c_str()));
    if (k == "--step-ms") o.step_ms = std::max<int64_t>(0, std::atoll(v.c_str()));
    if (k == "--max-s") o.max_s = std::atof(v.c_str());
    if (k == "--csv") o.csv = v;
    if (k == "--dir") o.dir = v;
  }
  std::filesystem::remove_all(o.dir);
  std::filesystem::create_directories(o.dir);
  auto sqlite = OpenSqliteStore(o.dir + "/state.db");
  if (!sqlite.ok()) {
    std::fprintf(stderr, "%s\n", sqlite.status().ToString().c_str());
    return 1;
  }
  StallingStore store(std::move(sqlite).value(), o.stall_op, o.stall_ms);
  CoreOptions co;
  co.lease_ms = o.lease_ms;
  co.output_root = o.dir + "/jobs";
  Core core(&store, SystemClock(), co);
  if (Status s = core.Recover(); !s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    return 1;
  }
  Auth auth = Auth::Open();
  ServerOptions so;
  so.listen = "127.0.0.1:0";
  so.tick_ms = std::clamp<int64_t>(o.lease_ms / 4, 50, 5000);  // as rmgen-coordinator
  auto server = Server::Start(&core, &auth, so);
  if (!server.ok()) {
    std::fprintf(stderr, "%s\n", server.status().ToString().c_str());
    return 1;
  }
  const std::string addr = "127.0.0.1:" + std::to_string((*server)->port());
  auto client =
      pb::Coordinator::NewStub(grpc::CreateChannel(addr, grpc::InsecureChannelCredentials()));
  int errors = 0;

  std::string study;
  int64_t total = 0;
  {
    pb::SubmitStudyRequest req;
    req.set_study_yaml(StudyYaml(o.jobs));
    req.set_source_name("heartbeat-load.yaml");
    req.set_request_id("heartbeat-load");
    pb::SubmitStudyResponse resp;
    const auto t = Steady::now();
    auto c = Ctx(600'000);
    grpc::Status s = client->SubmitStudy(c.get(), req, &resp);
    if (!s.ok()) {
      std::fprintf(stderr, "SubmitStudy: %s\n", s.error_message().c_str());
      return 1;
    }
    study = resp.study().id();
    total = resp.study().jobs_total();
    std::printf("{\"measure\":\"SubmitStudy\",\"jobs\":%lld,\"seconds\":%.3f}\n",
                static_cast<long long>(total),
                std::chrono::duration<double>(Steady::now() - t).count());
    std::fflush(stdout);
  }

  g_t0 = Steady::now();
  std::atomic<bool> stop{false};
  Totals totals;

  // Watchers: a WatchStudy stream each, reconnected when it breaks.
  std::atomic<int64_t> watch_updates{0}, watch_breaks{0};
  std::mutex watch_m;
  std::vector<grpc::ClientContext*> watch_ctx;
  std::vector<std::thread> watchers;
  for (int w = 0; w < o.watchers; ++w) {
    watchers.emplace_back([&, w] {
      grpc::ChannelArguments args;
      args.SetInt("grpc.channel_id", 5000 + w);
      auto stub = pb::Coordinator::NewStub(
          grpc::CreateCustomChannel(addr, grpc::InsecureChannelCredentials(), args));
      while (!stop.load()) {
        grpc::ClientContext ctx;
        {
          std::lock_guard<std::mutex> l(watch_m);
          if (stop.load()) break;
          watch_ctx.push_back(&ctx);
        }
        pb::WatchStudyRequest req;
        req.set_id(study);
        auto r = stub->WatchStudy(&ctx, req);
        pb::WatchUpdate u;
        while (r->Read(&u)) ++watch_updates;
        grpc::Status s = r->Finish();
        {
          std::lock_guard<std::mutex> l(watch_m);
          watch_ctx.erase(std::find(watch_ctx.begin(), watch_ctx.end(), &ctx));
        }
        if (s.ok() || stop.load()) break;  // ended: every job is final
        ++watch_breaks;
        std::this_thread::sleep_for(std::chrono::seconds(1));
      }
    });
  }

  // Agents.
  std::vector<std::unique_ptr<SimAgent>> agents;
  std::vector<std::vector<Beat>> beats(o.agents);
  for (int a = 0; a < o.agents; ++a) {
    agents.push_back(std::make_unique<SimAgent>(a, addr, o, &totals, &stop));
  }
  for (auto& a : agents) {
    if (!a->Register(false)) ++errors;
  }
  std::vector<std::thread> threads;
  for (int a = 0; a < o.agents; ++a) {
    threads.emplace_back([&, a] { agents[a]->Heartbeats(&beats[a]); });
    threads.emplace_back([&, a] { agents[a]->Work(); });
  }

  // Until every job is final (or --max-s): arm the stall halfway.
  bool armed = false, finished = false;
  std::map<std::string, int64_t> states;
  double last_poll = 0, next_print = 10;
  while (NowS() < o.max_s) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    if (!armed && totals.completed >= static_cast<int64_t>(o.stall_at * total)) {
      armed = true;
      if (o.stall_ms > 0) store.Arm();
      std::fprintf(stderr, "[%6.1fs] %lld jobs completed: the next %s stalls %lld ms\n", NowS(),
                   static_cast<long long>(totals.completed.load()), o.stall_op.c_str(),
                   static_cast<long long>(o.stall_ms));
    }
    if (NowS() - last_poll < 1.0) continue;
    pb::GetStudyRequest req;
    req.set_id(study);
    pb::Study st;
    auto c = Ctx(30'000);
    if (!client->GetStudy(c.get(), req, &st).ok()) continue;
    last_poll = NowS();
    int64_t final_jobs = 0;
    states.clear();
    for (const auto& [k, n] : st.job_states()) {
      states[k] = n;
      if (k == "SUCCEEDED" || k == "FAILED" || k == "CANCELLED") final_jobs += n;
    }
    if (last_poll >= next_print) {
      next_print += 10;
      std::string line;
      for (const auto& [k, n] : states) line += " " + k + "=" + std::to_string(n);
      std::fprintf(stderr, "[%6.1fs]%s\n", last_poll, line.c_str());
    }
    if (final_jobs >= st.jobs_total()) {
      finished = true;
      break;
    }
  }
  const double run_s = NowS();
  stop = true;
  {
    std::lock_guard<std::mutex> l(watch_m);
    for (auto* c : watch_ctx) c->TryCancel();
  }
  for (auto& t : threads) t.join();
  for (auto& t : watchers) t.join();

  // The jobs as the coordinator has them: states, and attempts ended by a lease.
  std::map<std::string, int64_t> final_states;
  int64_t lease_jobs = 0, lease_attempts = 0, retried = 0, listed = 0;
  std::vector<std::string> lease_examples;
  std::map<std::string, int64_t> ended_otherwise;  // attempts not succeeded, by outcome
  {
    pb::ListJobsRequest req;
    req.set_study_id(study);
    req.set_page_size(1000);
    for (;;) {
      pb::ListJobsResponse resp;
      auto c = Ctx(60'000);
      grpc::Status s = client->ListJobs(c.get(), req, &resp);
      if (!s.ok()) {
        std::fprintf(stderr, "ListJobs: %s\n", s.error_message().c_str());
        ++errors;
        break;
      }
      for (const auto& j : resp.jobs()) {
        ++listed;
        ++final_states[pb::JobState_Name(j.state())];
        if (j.attempt() > 1) ++retried;
        bool lost = false;
        for (const auto& h : j.history()) {
          if (!h.outcome().empty() && h.outcome() != "succeeded") {
            ++ended_otherwise[h.outcome().substr(0, h.outcome().find(':'))];
          }
          if (h.outcome().find("lease") != std::string::npos) {
            ++lease_attempts;
            lost = true;
            if (lease_examples.size() < 3) {
              lease_examples.push_back(j.id() + "/" + std::to_string(h.number()) + ": " +
                                       h.outcome());
            }
          }
        }
        lease_jobs += lost;
      }
      if (resp.next_page_token().empty()) break;
      req.set_page_token(resp.next_page_token());
    }
  }
  (*server)->Shutdown();

  // Heartbeat latencies: all, and those in flight during the stall.
  std::vector<Beat> all;
  for (auto& v : beats) all.insert(all.end(), v.begin(), v.end());
  std::sort(all.begin(), all.end(), [](const Beat& a, const Beat& b) { return a.t_s < b.t_s; });
  std::vector<double> rtt, in_stall, outside;
  const double s0 = store.begin_s(), s1 = store.end_s();
  const double target_ms = o.lease_ms / 10.0;
  int64_t over_target = 0, failed_beats = 0;
  for (const auto& b : all) {
    if (!b.ok) {
      ++failed_beats;
      continue;
    }
    rtt.push_back(b.rtt_ms);
    over_target += b.rtt_ms >= target_ms;
    const bool overlaps = s0 >= 0 && b.t_s <= s1 && b.t_s + b.rtt_ms / 1000 >= s0;
    (overlaps ? in_stall : outside).push_back(b.rtt_ms);
  }
  auto rtt_line = [](const char* what, const std::vector<double>& v) {
    std::printf(
        "{\"measure\":\"%s\",\"calls\":%zu,\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"max_ms\":%.3f}\n",
        what, v.size(), Pct(v, 0.5), Pct(v, 0.99), v.empty() ? 0.0 : Pct(v, 1.0));
  };
  rtt_line("Heartbeat RTT", rtt);
  rtt_line("Heartbeat RTT, in flight during the stall", in_stall);
  rtt_line("Heartbeat RTT, outside the stall", outside);
  const int64_t reregisters = totals.reregisters.load();
  const int64_t succeeded = final_states["SUCCEEDED"];
  std::printf(
      "{\"measure\":\"leases\",\"jobs_with_lease_lost\":%lld,\"attempts_lease_lost\":%lld,"
      "\"reregistrations\":%lld,\"unauthenticated\":%lld,\"heartbeat_errors\":%lld,"
      "\"acquire_errors\":%lld,\"transient_retries\":%lld,\"cancelled_by_coordinator\":%lld}\n",
      static_cast<long long>(lease_jobs), static_cast<long long>(lease_attempts),
      static_cast<long long>(reregisters), static_cast<long long>(totals.unauthenticated.load()),
      static_cast<long long>(totals.heartbeat_errors.load()),
      static_cast<long long>(totals.acquire_errors.load()),
      static_cast<long long>(totals.transient_retries.load()),
      static_cast<long long>(totals.cancelled.load()));
  std::string ended_json;
  for (const auto& [k, n] : ended_otherwise) {
    json key = k;
    ended_json += (ended_json.empty() ? "" : ",") + key.dump() + ":" + std::to_string(n);
  }
  std::string states_json;
  for (const auto& [k, n] : final_states) {
    states_json += (states_json.empty() ? "" : ",") + ("\"" + k + "\":" + std::to_string(n));
  }
  std::printf(
      "{\"measure\":\"jobs\",\"total\":%lld,\"listed\":%lld,\"states\":{%s},\"retried\":%lld,"
      "\"attempts_not_succeeded\":{%s},"
      "\"completed_by_agents\":%lld,\"complete_refused\":%lld,\"report_refused\":%lld,"
      "\"seconds\":%.1f,\"jobs_per_s\":%.1f,\"finished\":%s}\n",
      static_cast<long long>(total), static_cast<long long>(listed), states_json.c_str(),
      static_cast<long long>(retried), ended_json.c_str(),
      static_cast<long long>(totals.completed.load()),
      static_cast<long long>(totals.complete_refused.load()),
      static_cast<long long>(totals.report_refused.load()), run_s,
      totals.completed.load() / std::max(run_s, 1e-9), finished ? "true" : "false");
  std::printf("{\"measure\":\"stall\",\"op\":\"%s\",\"ms\":%lld,\"begin_s\":%.3f,\"end_s\":%.3f}\n",
              store.which().c_str(), static_cast<long long>(o.stall_ms), s0, s1);
  std::printf("{\"measure\":\"watchers\",\"streams\":%d,\"updates\":%lld,\"breaks\":%lld}\n",
              o.watchers, static_cast<long long>(watch_updates.load()),
              static_cast<long long>(watch_breaks.load()));

  const double p99 = Pct(rtt, 0.99);
  const bool hb_ok = p99 < target_ms && failed_beats == 0;
  const bool lease_ok = lease_jobs == 0 && reregisters == 0;
  if (!finished || succeeded != total) ++errors;
  if (o.stall_ms > 0 && !store.done()) {
    std::fprintf(stderr, "the stall did not happen: no %s after it was armed\n",
                 o.stall_op.c_str());
    ++errors;
  }
  for (const auto& e : lease_examples) std::fprintf(stderr, "lease lost: %s\n", e.c_str());

  if (!o.csv.empty()) {
    std::ofstream f(o.csv);
    f << "t_s,agent,rtt_ms,ok\n";
    char buf[96];
    for (const auto& b : all) {
      std::snprintf(buf, sizeof(buf), "%.4f,%d,%.3f,%d\n", b.t_s, b.agent, b.rtt_ms, b.ok ? 1 : 0);
      f << buf;
    }
    json meta = {{"lease_ms", o.lease_ms},
                 {"target_ms", target_ms},
                 {"agents", o.agents},
                 {"jobs", total},
                 {"watchers", o.watchers},
                 {"stall_op", store.which()},
                 {"stall_ms", o.stall_ms},
                 {"stall_begin_s", s0},
                 {"stall_end_s", s1},
                 {"run_s", run_s},
                 {"p50_ms", Pct(rtt, 0.5)},
                 {"p99_ms", p99},
                 {"max_ms", rtt.empty() ? 0.0 : Pct(rtt, 1.0)},
                 {"p99_in_stall_ms", Pct(in_stall, 0.99)},
                 {"p99_outside_ms", Pct(outside, 0.99)},
                 {"jobs_with_lease_lost", lease_jobs},
                 {"reregistrations", reregisters},
                 {"heartbeat_pass", hb_ok},
                 {"lease_pass", lease_ok}};
    std::ofstream(o.csv + ".meta.json") << meta.dump(2) << "\n";
  }

  std::printf(
      "\nheartbeat load: %d agents, %lld jobs, %d watchers, lease %lld ms, a %lld ms stall "
      "in %s at %.1fs:\n",
      o.agents, static_cast<long long>(total), o.watchers, static_cast<long long>(o.lease_ms),
      static_cast<long long>(o.stall_ms), store.which().empty() ? "(none)" : store.which().c_str(),
      s0);
  std::printf("  %-44s %10.2f ms  target < %.0f ms: %s\n", "heartbeat RTT p99 (all)", p99,
              target_ms, hb_ok ? "PASS" : "FAIL");
  std::printf("  %-44s %10.2f ms\n", "heartbeat RTT p50", Pct(rtt, 0.5));
  std::printf("  %-44s %10.2f ms\n", "heartbeat RTT max", rtt.empty() ? 0.0 : Pct(rtt, 1.0));
  std::printf("  %-44s %10.2f ms (%zu heartbeats)\n", "heartbeat RTT p99 in flight during stall",
              Pct(in_stall, 0.99), in_stall.size());
  std::printf("  %-44s %10.2f ms\n", "heartbeat RTT p99 outside the stall", Pct(outside, 0.99));
  std::printf("  %-44s %10lld of %zu\n", "heartbeats at or over lease/10",
              static_cast<long long>(over_target), rtt.size());
  std::printf("  %-44s %10lld\n", "heartbeats failed", static_cast<long long>(failed_beats));
  std::printf("  %-44s %10lld jobs, %lld re-registrations: %s\n", "leases lost",
              static_cast<long long>(lease_jobs), static_cast<long long>(reregisters),
              lease_ok ? "PASS" : "FAIL");
  std::printf("  %-44s %10lld of %lld in %.1f s (%s)\n", "jobs succeeded",
              static_cast<long long>(succeeded), static_cast<long long>(total), run_s,
              finished ? "all final" : "NOT all final: --max-s reached");
  std::printf("  errors: %d\n", errors);
  std::fflush(stdout);
  std::filesystem::remove_all(o.dir);
  return errors == 0 && hb_ok && lease_ok ? 0 : 1;
}
