#include "worker/agent/agent.h"

#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "common/file.h"
#include "rmgen/v1/rmgen.grpc.pb.h"
#include "worker/agent/supervisor.h"

namespace rmgen::agent {
namespace {

namespace fs = std::filesystem;
namespace pb = ::rmgen::v1;
using nlohmann::json;

json FromProto(const google::protobuf::Message& m) {
  std::string text;
  (void)google::protobuf::util::MessageToJsonString(m, &text);
  return json::parse(text, nullptr, false);
}

google::protobuf::Struct ToStruct(const json& j) {
  google::protobuf::Struct s;
  (void)google::protobuf::util::JsonStringToMessage(j.dump(), &s);
  return s;
}

bool Transient(const grpc::Status& s) {
  return s.error_code() == grpc::StatusCode::UNAVAILABLE ||
         s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ||
         s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED ||
         s.error_code() == grpc::StatusCode::INTERNAL;
}

// The newest complete checkpoint's step in `out` (0 without one): events up to it were
// relayed by the attempt that wrote it.
int64_t CheckpointStep(const std::string& out) {
  int64_t best = 0;
  for (const char* d : {"checkpoint", "checkpoint.old", "checkpoint.tmp"}) {
    auto text = ReadFile(out + "/" + d + "/trainer_state.json");
    if (!text.ok()) continue;
    const json j = json::parse(*text, nullptr, false);
    if (j.is_object()) best = std::max(best, j.value("step", int64_t{0}));
  }
  return best;
}

std::string Describe(const AttemptExit& x) {
  if (x.signal)
    return "killed by signal " + std::to_string(x.signal) + " (" + strsignal(x.signal) + ")";
  return "exit status " + std::to_string(x.exit_code);
}

struct Attempt {
  std::string job_id, name, kind;
  int64_t attempt = 0, ranks = 1;
  std::string dir, out_dir, log, tag;
  pid_t supervisor = -1;
  int64_t relayed_step = 0;
  // events.jsonl as the previous attempt left it (its inode; 0: none). rmgen-train rewrites
  // the file when it starts (trimmed to its checkpoint); until then nothing in it is ours.
  uint64_t stale_events = 0;
  bool reported = false;
  // In memory only.
  uint64_t events_ino = 0;             // the events.jsonl being read
  int64_t offset = 0;                  // bytes of it read
  bool announced = false;              // RUNNING reported
  std::atomic<bool> cancelled{false};  // the coordinator took it back: report nothing
  std::atomic<bool> preempted{false};  // stopped because this agent stops
  int64_t gone_since = 0;              // supervisor not seen alive, no exit.json yet

  json ToJson() const {
    return {{"job_id", job_id},
            {"name", name},
            {"kind", kind},
            {"attempt", attempt},
            {"ranks", ranks},
            {"out_dir", out_dir},
            {"log", log},
            {"tag", tag},
            {"supervisor", supervisor},
            {"relayed_step", relayed_step},
            {"stale_events", stale_events},
            {"preempted", preempted.load()},
            {"reported", reported}};
  }
  static std::shared_ptr<Attempt> FromJson(const json& j, const std::string& dir) {
    auto a = std::make_shared<Attempt>();
    a->dir = dir;
    a->job_id = j.value("job_id", "");
    a->name = j.value("name", "");
    a->kind = j.value("kind", "");
    a->attempt = j.value("attempt", int64_t{0});
    a->ranks = j.value("ranks", int64_t{1});
    a->out_dir = j.value("out_dir", "");
    a->log = j.value("log", "");
    a->tag = j.value("tag", "");
    a->supervisor = j.value("supervisor", -1);
    a->relayed_step = j.value("relayed_step", int64_t{0});
    a->stale_events = j.value("stale_events", uint64_t{0});
    a->reported = j.value("reported", false);
    a->preempted = j.value("preempted", false);
    return a;
  }
  Status Save() const { return WriteFileAtomic(dir + "/record.json", ToJson().dump(2) + "\n"); }
};

}  // namespace

constexpr size_t kRelayBatch = 500;  // events per ReportEvents call

struct Agent::Impl {
  AgentOptions o;
  std::unique_ptr<Launcher> launcher;
  std::unique_ptr<pb::WorkerService::Stub> stub;
  std::mutex m;
  std::map<std::string, std::shared_ptr<Attempt>> live;  // job id -> its unreported attempt
  std::atomic<int64_t> lease_ms{30'000};
  std::atomic<bool> stopping{false}, done{false};
  std::string lease_file;

  void Log(const std::string& line) {
    if (o.verbose) std::fprintf(stderr, "rmgen-worker %s: %s\n", o.id.c_str(), line.c_str());
  }

  std::unique_ptr<grpc::ClientContext> Ctx(int64_t ms) {
    auto c = std::make_unique<grpc::ClientContext>();
    if (!o.token.empty()) c->AddMetadata("authorization", "Bearer " + o.token);
    c->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(ms));
    return c;
  }

  void Running(google::protobuf::RepeatedPtrField<pb::RunningJob>* out) {
    std::lock_guard<std::mutex> l(m);
    for (const auto& [id, a] : live) {
      auto* r = out->Add();
      r->set_job_id(id);
      r->set_attempt(a->attempt);
    }
  }

  // The coordinator took these jobs back (cancelled, or handed to another worker).
  // `sent`: the running list the reply answers; a cancel applies to the attempt listed there,
  // never to a newer attempt of the same job taken meanwhile.
  void CancelJobs(const google::protobuf::RepeatedPtrField<std::string>& ids,
                  const google::protobuf::RepeatedPtrField<pb::RunningJob>& sent) {
    std::lock_guard<std::mutex> l(m);
    for (const auto& id : ids) {
      auto it = live.find(id);
      if (it == live.end()) continue;
      bool listed = false;
      for (const auto& r : sent)
        listed = listed || (r.job_id() == id && r.attempt() == it->second->attempt);
      if (!listed || it->second->cancelled.exchange(true)) continue;
      Log("job " + id + " attempt " + std::to_string(it->second->attempt) +
          ": the coordinator took it back; stopping its ranks");
      if (it->second->supervisor > 0) ::kill(it->second->supervisor, SIGTERM);
    }
  }

  Status Register() {
    for (;;) {
      pb::RegisterWorkerRequest req;
      req.set_id(o.id);
      req.set_host(o.host);
      req.set_slots(o.slots);
      req.set_memory_bytes_per_slot(o.memory_bytes_per_slot);
      *req.mutable_labels() = ToStruct(o.labels);
      Running(req.mutable_running());
      pb::RegisterWorkerResponse resp;
      const int64_t sent = WallMs();
      auto c = Ctx(5000);
      grpc::Status s = stub->RegisterWorker(c.get(), req, &resp);
      if (s.ok()) {
        lease_ms = std::max<int64_t>(resp.lease_ms(), 100);
        (void)WriteLease(lease_file, sent + lease_ms / 2, sent + lease_ms * 9 / 10);
        CancelJobs(resp.cancel(), req.running());
        return Status::Ok();
      }
      if (!Transient(s)) {
        return Status(StatusCode::kPermissionDenied, "the coordinator at " + o.coordinator +
                                                         " refused worker '" + o.id +
                                                         "': " + s.error_message());
      }
      if (stopping) return Status(StatusCode::kCancelled, "stopped before registering");
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
    }
  }

  void Heartbeats() {
    bool failed = false;
    while (!done) {
      // After a failed heartbeat, try again soon: the lease file is running down.
      const int64_t period =
          std::max<int64_t>(50, failed ? std::min<int64_t>(250, lease_ms / 6) : lease_ms / 6);
      for (int64_t t = 0; t < period && !done; t += 25) {
        std::this_thread::sleep_for(std::chrono::milliseconds(25));
      }
      if (done) break;
      pb::HeartbeatRequest req;
      req.set_id(o.id);
      Running(req.mutable_running());
      pb::HeartbeatResponse resp;
      const int64_t sent = WallMs();
      auto c = Ctx(std::max<int64_t>(1000, lease_ms / 3));
      grpc::Status s = stub->Heartbeat(c.get(), req, &resp);
      failed = !s.ok();
      if (failed) continue;  // the coordinator is away: the lease file runs down
      lease_ms = std::max<int64_t>(resp.lease_ms(), 100);
      (void)WriteLease(lease_file, sent + lease_ms / 2, sent + lease_ms * 9 / 10);
      if (resp.reregister()) {
        Log("the coordinator does not know this worker: registering again");
        (void)Register();
      }
      CancelJobs(resp.cancel(), req.running());
    }
  }

  int64_t FreeSlots() {
    std::lock_guard<std::mutex> l(m);
    int64_t used = 0;
    for (const auto& [id, a] : live) used += a->ranks;
    return o.slots - used;
  }

  // Relative output folders are relative to where the ranks run.
  std::string Abs(const std::string& p) const {
    if (p.empty() || p[0] == '/') return p;
    return (fs::path(o.workdir.empty() ? fs::current_path().string() : o.workdir) / p)
        .lexically_normal()
        .string();
  }

  void Launch(const pb::Job& job, int64_t attempt_no, const std::string& output_dir) {
    auto a = std::make_shared<Attempt>();
    a->job_id = job.id();
    a->name = job.name();
    a->kind = job.kind();
    a->attempt = attempt_no;
    a->ranks = std::max<int64_t>(1, job.ranks());
    a->dir = o.state_dir + "/attempts/" + job.id() + "." + std::to_string(attempt_no);
    a->out_dir = Abs(output_dir);
    a->log = a->out_dir + "/logs/attempt-" + std::to_string(attempt_no) + ".log";
    std::random_device rd;
    char rnd[17];
    std::snprintf(rnd, sizeof(rnd), "%08x%08x", rd(), rd());
    a->tag = job.id() + "." + std::to_string(attempt_no) + "." + rnd;
    a->relayed_step = CheckpointStep(a->out_dir);
    if (struct stat st; ::stat((a->out_dir + "/events.jsonl").c_str(), &st) == 0) {
      a->stale_events = st.st_ino;
    }
    std::error_code ec;
    fs::create_directories(a->dir, ec);
    fs::create_directories(a->out_dir + "/logs", ec);
    const std::string spec_path = a->dir + "/spec.json";
    const Status written = WriteFileAtomic(spec_path, FromProto(job.spec()).dump(2) + "\n");
    StatusOr<std::vector<std::string>> argv =
        written.ok() ? launcher->Command({job.id(), attempt_no, a->ranks, spec_path, a->out_dir})
                     : StatusOr<std::vector<std::string>>(written);
    StatusOr<pid_t> pid =
        argv.ok()
            ? StartSupervisor(o.supervisor_exe, {a->dir, a->log, lease_file, o.grace_ms, a->tag,
                                                 o.workdir, launcher->stop_mode(), *argv})
            : StatusOr<pid_t>(argv.status());
    std::string cause;  // why nothing runs
    if (pid.ok()) {
      a->supervisor = *pid;
      // The ranks run: a record that cannot be written only costs the restart report.
      if (Status saved = a->Save(); !saved.ok()) Log("job " + a->job_id + ": " + saved.message());
    } else if (!written.ok()) {
      cause = "start failed: " + written.message();  // this node's disk: retryable
    } else if (!argv.ok()) {
      cause = "launch failed: " + argv.status().message();  // the launcher refused the job
    } else {
      cause = "start failed: " + pid.status().message();  // this node, now: retryable
    }
    const Status st = cause.empty() ? Status::Ok() : InternalError(cause);
    {
      std::lock_guard<std::mutex> l(m);
      live[a->job_id] = a;
    }
    if (!st.ok()) {
      // Nothing ran (the spec could not be written, or the launcher refused the job): the
      // exit.json the supervisor would have written says so, and the monitor reports it.
      Log("job " + a->job_id + ": cannot launch: " + cause);
      const json x = {{"exit_code", -1}, {"signal", 0}, {"cause", cause}, {"ended_ms", WallMs()}};
      (void)WriteFileAtomic(a->dir + "/exit.json", x.dump() + "\n");
      return;
    }
    Log("job " + a->job_id + " attempt " + std::to_string(attempt_no) + " (" + a->name + ", " +
        std::to_string(a->ranks) + " rank" + (a->ranks > 1 ? "s" : "") + ") started; log " +
        a->log);
  }

  void Acquire() {
    while (!stopping) {
      if (FreeSlots() <= 0) {
        std::this_thread::sleep_for(std::chrono::milliseconds(o.poll_ms));
        continue;
      }
      pb::AcquireJobRequest req;
      req.set_id(o.id);
      req.set_wait_ms(1000);
      pb::AcquireJobResponse resp;
      auto c = Ctx(6000);
      grpc::Status s = stub->AcquireJob(c.get(), req, &resp);
      if (!s.ok()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(300));
        continue;
      }
      if (resp.assigned()) Launch(resp.job(), resp.attempt(), resp.output_dir());
    }
  }

  // Sends new lines of events.jsonl (steps after the last one relayed; at most kRelayBatch).
  // Returns how many it sent, or -1 while the coordinator cannot be reached (later again).
  int Relay(Attempt* a) {
    const std::string path = a->out_dir + "/events.jsonl";
    std::vector<json> events;
    int64_t offset = a->offset, top = a->relayed_step;
    uint64_t ino = a->events_ino;  // (offset, ino) replace a's once the events are delivered
    // The file is identified by its inode: the one opened here is the one read.
    FILE* in = std::fopen(path.c_str(), "rb");
    struct stat st;
    if (in && ::fstat(::fileno(in), &st) == 0 && st.st_ino != a->stale_events) {
      // Another file than the one read so far (the trainer rewrote it), or shorter: from 0.
      if (st.st_ino != ino || st.st_size < offset) offset = 0;
      ino = st.st_ino;
      char* buf = nullptr;
      size_t cap = 0;
      ssize_t n;
      const bool at = std::fseek(in, static_cast<long>(offset), SEEK_SET) == 0;
      while (at && events.size() < kRelayBatch && (n = ::getline(&buf, &cap, in)) > 0) {
        if (buf[n - 1] != '\n') break;  // no newline yet: a line being written
        offset += n;
        json e = json::parse(buf, buf + n - 1, nullptr, false);
        if (!e.is_object()) continue;
        const int64_t step = e.value("step", int64_t{0});
        if (step <= top) continue;
        top = step;
        events.push_back(std::move(e));
      }
      std::free(buf);
    }
    if (in) std::fclose(in);
    if (events.empty() && a->announced) {
      a->offset = offset;
      a->events_ino = ino;
      return 0;
    }
    pb::ReportEventsResponse resp;
    auto c = Ctx(10'000);
    auto w = stub->ReportEvents(c.get(), &resp);
    pb::ReportEventsRequest r;
    r.set_job_id(a->job_id);
    r.set_attempt(a->attempt);
    r.set_running(true);
    for (const auto& e : events) *r.add_events() = ToStruct(e);
    w->Write(r);
    w->WritesDone();
    grpc::Status s = w->Finish();
    if (Transient(s)) return -1;
    a->announced = true;
    a->offset = offset;
    a->events_ino = ino;
    if (!events.empty()) {
      a->relayed_step = top;
      (void)a->Save();
    }
    if (!s.ok() || resp.cancel()) {
      // Cancelled, or the job is no longer this attempt's (stale): stop the ranks.
      if (!a->cancelled.exchange(true)) {
        Log("job " + a->job_id + ": " + (s.ok() ? "cancelled" : s.error_message()) +
            "; stopping its ranks");
        if (a->supervisor > 0) ::kill(a->supervisor, SIGTERM);
      }
    }
    return static_cast<int>(events.size());
  }

  // Reports the end of an attempt; true once the coordinator has it (or has no use for it).
  bool Finish(const std::shared_ptr<Attempt>& a, const AttemptExit& x) {
    if (a->cancelled) return MarkReported(a, "cancelled");
    pb::CompleteJobRequest req;
    req.set_job_id(a->job_id);
    req.set_attempt(a->attempt);
    std::string outcome;
    // What the ranks did decides first: a job that finished (exit 0) or was given bad input
    // (exit 2) while being stopped is still a success or a bad-input failure.
    if (x.cause.rfind("launch failed", 0) == 0 || x.cause.rfind("start failed", 0) == 0) {
      req.set_reason(x.cause);
      req.set_retryable(x.cause.rfind("start failed", 0) == 0);  // the launcher's refusal is final
    } else if (x.exit_code == 0) {
      auto text = ReadFile(a->out_dir + "/metrics.json");
      const json m = text.ok() ? json::parse(*text, nullptr, false) : json();
      if (m.is_object()) {
        req.set_success(true);
        *req.mutable_metrics() = ToStruct(m);
      } else {
        req.set_reason("the ranks exited 0 but left no readable " + a->out_dir + "/metrics.json");
        req.set_retryable(false);
      }
    } else if (x.exit_code == 2) {
      req.set_reason(Describe(x) + " (invalid spec or input)");
      req.set_retryable(false);
    } else if (x.cause == "lease lost") {
      req.set_reason("the agent lost its lease; the ranks were stopped (" + Describe(x) + ")");
      req.set_retryable(true);
    } else if ((x.cause == "stopped" && a->preempted) || (x.cause.empty() && x.exit_code == 3)) {
      // Stopped because this agent stops, or by someone else's SIGTERM (a Slurm preemption
      // signals the steps itself): rmgen-train checkpointed (exit 3).
      req.set_reason(
          (x.cause.empty() ? "stopped by a signal from outside (" : "the agent stopped (") +
          Describe(x) + ")");
      req.set_retryable(true);
      req.set_preempted(true);
    } else {
      req.set_reason(Describe(x));
      req.set_retryable(true);
    }
    if (!req.success()) {
      for (const auto& l : LastLines(a->log, 30)) req.add_log_tail(l);
    }
    pb::CompleteJobResponse resp;
    auto c = Ctx(10'000);
    grpc::Status s = stub->CompleteJob(c.get(), req, &resp);
    if (Transient(s)) return false;
    if (s.ok()) {
      outcome = req.success() ? "succeeded"
                              : std::string(req.preempted() ? "preempted" : "failed") + ": " +
                                    req.reason() + " -> " + pb::JobState_Name(resp.state());
    } else {
      outcome = "not recorded: " + s.error_message();
    }
    return MarkReported(a, outcome);
  }

  bool MarkReported(const std::shared_ptr<Attempt>& a, const std::string& outcome) {
    a->reported = true;
    (void)a->Save();
    Log("job " + a->job_id + " attempt " + std::to_string(a->attempt) + " " + outcome);
    std::lock_guard<std::mutex> l(m);
    auto it = live.find(a->job_id);
    if (it != live.end() && it->second == a) live.erase(it);
    return true;
  }

  void Monitor() {
    while (!done) {
      std::vector<std::shared_ptr<Attempt>> now;
      {
        std::lock_guard<std::mutex> l(m);
        for (const auto& [id, a] : live) now.push_back(a);
      }
      for (const auto& a : now) {
        if (a->reported) continue;
        auto x = ReadExit(a->dir);
        if (!x.ok()) {
          if (SupervisorAlive(a->supervisor, a->tag)) {
            a->gone_since = 0;
            Relay(a.get());
            continue;
          }
          x = ReadExit(a->dir);  // it may have ended between the two looks
        }
        if (!x.ok()) {
          // No supervisor and no exit.json: it was killed (or the node restarted). Give it a
          // moment (it may be writing exit.json), then report the attempt as lost.
          if (a->gone_since == 0) a->gone_since = WallMs();
          if (WallMs() - a->gone_since < 2000) continue;
          AttemptExit lost;
          lost.signal = SIGKILL;
          lost.cause = "supervisor gone";
          x = lost;
        }
        // Everything the attempt logged goes out before its end is reported.
        int sent;
        while ((sent = Relay(a.get())) == static_cast<int>(kRelayBatch)) {
        }
        if (sent < 0) continue;
        Finish(a, *x);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(o.poll_ms));
    }
  }

  // Attempts a previous run of this agent started and did not report.
  Status LoadState() {
    std::error_code ec;
    fs::create_directories(o.state_dir + "/attempts", ec);
    if (ec) return InternalError("cannot create " + o.state_dir + "/attempts: " + ec.message());
    for (const auto& e : fs::directory_iterator(o.state_dir + "/attempts", ec)) {
      auto text = ReadFile((e.path() / "record.json").string());
      if (!text.ok()) continue;
      const json j = json::parse(*text, nullptr, false);
      if (!j.is_object()) {
        Log("ignoring " + (e.path() / "record.json").string() + ": not JSON");
        continue;
      }
      auto a = Attempt::FromJson(j, e.path().string());
      if (a->reported || a->job_id.empty()) continue;
      const bool alive = SupervisorAlive(a->supervisor, a->tag);
      Log("found job " + a->job_id + " attempt " + std::to_string(a->attempt) +
          " from before: " + (alive ? "still running" : "ended while the agent was down"));
      std::lock_guard<std::mutex> l(m);
      live[a->job_id] = a;
    }
    return Status::Ok();
  }
};

std::string SelfExecutable() {
  std::error_code ec;
  const fs::path p = fs::read_symlink("/proc/self/exe", ec);
  return ec ? std::string() : p.string();
}

std::string DefaultTrainBin() {
  if (const char* v = std::getenv("RMGEN_TRAIN"); v && *v) return v;
  const fs::path self = fs::path(SelfExecutable()).parent_path();
  for (const fs::path& p : {self / "rmgen-train", self / ".." / "train" / "rmgen-train",
                            self / ".." / "worker" / "train" / "rmgen-train"}) {
    std::error_code ec;
    if (!self.empty() && fs::exists(p, ec)) return fs::weakly_canonical(p, ec).string();
  }
  return "rmgen-train";
}

int64_t DetectMemoryPerSlot(int64_t slots) {
  // GPUs: the smallest one's total memory (MiB), one line per GPU.
  if (FILE* p = ::popen(
          "nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null", "r")) {
    int64_t smallest = 0;
    char line[128];
    while (std::fgets(line, sizeof(line), p) != nullptr) {
      const long long mib = std::atoll(line);
      if (mib > 0 && (smallest == 0 || mib < smallest)) smallest = mib;
    }
    ::pclose(p);
    if (smallest > 0) return smallest << 20;
  }
  std::ifstream in("/proc/meminfo");
  std::string line;
  while (std::getline(in, line)) {
    long long kib = 0;
    if (std::sscanf(line.c_str(), "MemTotal: %lld kB", &kib) == 1 && kib > 0) {
      return kib * 1024 / std::max<int64_t>(1, slots);
    }
  }
  return 0;
}

StatusOr<int64_t> ParseMemoryBytes(const std::string& text) {
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  std::string unit = text.substr(used);
  if (used == 0 || !(v >= 0)) {
    return InvalidArgumentError("memory: expected bytes (80G, 81920MiB, 85899345920), got '" +
                                text + "'");
  }
  double scale = unit.empty() || unit == "B" ? 1 : 0;
  const std::string prefixes = "KMGT";
  for (size_t i = 0; i < prefixes.size(); ++i) {
    const std::string p(1, prefixes[i]);
    if (unit == p || unit == p + "B") scale = std::pow(1000.0, double(i + 1));
    if (unit == p + "iB") scale = std::pow(1024.0, double(i + 1));
  }
  if (scale == 0) {
    return InvalidArgumentError("memory: unknown unit '" + unit + "' in '" + text +
                                "' (K, M, G, T, KiB, MiB, GiB, TiB)");
  }
  return static_cast<int64_t>(v * scale);
}

Agent::Agent(AgentOptions options, std::unique_ptr<Launcher> launcher) : impl_(new Impl) {
  impl_->o = std::move(options);
  impl_->launcher = std::move(launcher);
}

Agent::~Agent() = default;

Status Agent::Run(const std::atomic<bool>* stop) {
  Impl& I = *impl_;
  if (I.o.id.empty()) return InvalidArgumentError("the worker needs an id");
  if (I.o.slots < 1) return InvalidArgumentError("the worker needs at least one slot");
  if (I.o.supervisor_exe.empty()) return InvalidArgumentError("no supervisor binary");
  std::error_code ec;
  fs::create_directories(I.o.state_dir, ec);
  I.o.state_dir = fs::absolute(I.o.state_dir, ec).string();
  if (!I.o.workdir.empty()) I.o.workdir = fs::absolute(I.o.workdir, ec).string();
  I.lease_file = I.o.state_dir + "/lease";
  RETURN_IF_ERROR(I.LoadState());
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  if (!I.o.tls_ca.empty()) {
    ASSIGN_OR_RETURN(std::string pem, ReadFile(I.o.tls_ca));
    grpc::SslCredentialsOptions so;
    so.pem_root_certs = pem;
    if (!I.o.tls_cert.empty()) {
      ASSIGN_OR_RETURN(so.pem_cert_chain, ReadFile(I.o.tls_cert));
      ASSIGN_OR_RETURN(so.pem_private_key, ReadFile(I.o.tls_key));
    }
    creds = grpc::SslCredentials(so);
  }
  // A restarted coordinator must hear from its agents within their leases: gRPC's default
  // reconnect backoff grows to 120 s over a long outage, so cap it at one second. (The
  // connect timeout, GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, keeps its 20 s default.)
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  I.stub = pb::WorkerService::NewStub(grpc::CreateCustomChannel(I.o.coordinator, creds, args));
  // Registering waits for the coordinator; a stop request meanwhile ends it.
  std::thread watch_stop([&] {
    while (!I.done && !*stop) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    if (*stop) I.stopping = true;
  });
  if (Status reg = I.Register(); !reg.ok()) {
    I.done = true;
    watch_stop.join();
    return reg.code() == StatusCode::kCancelled ? Status::Ok() : reg;
  }
  I.Log("registered with " + I.o.coordinator + ": " + std::to_string(I.o.slots) + " slot(s), " +
        "launcher " + I.launcher->name() + ", lease " + std::to_string(I.lease_ms) + " ms");
  std::thread hb([&] { I.Heartbeats(); });
  std::thread mon([&] { I.Monitor(); });
  I.Acquire();  // until stopping
  // Stop: every running attempt gets SIGTERM (it checkpoints and exits), is reported as
  // preempted, and the agent leaves when all are reported (or after the grace period).
  {
    std::lock_guard<std::mutex> l(I.m);
    for (auto& [id, a] : I.live) {
      a->preempted = true;
      (void)a->Save();  // a restarted agent still knows why the attempt stopped
      if (a->supervisor > 0) ::kill(a->supervisor, SIGTERM);
    }
  }
  const int64_t until = WallMs() + I.o.grace_ms + 10'000;
  while (WallMs() < until) {
    {
      std::lock_guard<std::mutex> l(I.m);
      if (I.live.empty()) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  I.done = true;
  hb.join();
  mon.join();
  watch_stop.join();
  std::lock_guard<std::mutex> l(I.m);
  if (!I.live.empty()) {
    return Status(StatusCode::kDeadlineExceeded,
                  std::to_string(I.live.size()) +
                      " attempt(s) not reported before the agent stopped; a restart "
                      "with the same --state-dir reports them");
  }
  return Status::Ok();
}

}  // namespace rmgen::agent
