#include "worker/agent/agent.h"

#include <fcntl.h>
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
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <thread>

#include "common/file.h"
#include "common/limits.h"
#include "common/metrics.h"
#include "common/utf8.h"
#include "jobspec/json_read.h"
#include "jobspec/outcome.h"
#include "jobspec/run_dir.h"
#include "rmgen/v1/rmgen.grpc.pb.h"
#include "worker/agent/supervisor.h"

namespace rmgen::agent {
namespace {

namespace fs = std::filesystem;
namespace pb = ::rmgen::v1;
using nlohmann::json;

// What one call may carry: gRPC refuses messages over 4 MiB by default, and protobuf
// strings must be valid UTF-8.
constexpr size_t kRelayBatch = 500;              // events per ReportEvents call
constexpr size_t kRelayBytes = size_t{1} << 20;  // their encoded size per call
constexpr size_t kLogTailLines = 30;
constexpr size_t kLogTailLine = 2000;          // bytes of one log line in CompleteJob
constexpr size_t kLogTailBytes = 32 << 10;     // bytes of log tail in all
constexpr size_t kReasonBytes = 2000;          // a failure's reason
constexpr size_t kShortReasonBytes = 200;      // ... in the minimal CompleteJob
constexpr int64_t kMaxMetricsBytes = 1 << 20;  // metrics.json
constexpr int64_t kNotedBadLines = 3;  // skipped events.jsonl lines described in the job log

json FromProto(const google::protobuf::Message& m) {
  std::string text;
  (void)google::protobuf::util::MessageToJsonString(m, &text);
  return json::parse(text, nullptr, false);
}

// `j` (an object) as a protobuf Struct; false (and *out empty) when it cannot be one.
bool ToStruct(const json& j, google::protobuf::Struct* out) {
  out->Clear();
  if (j.is_object() && google::protobuf::util::JsonStringToMessage(SafeDump(j), out).ok()) {
    return true;
  }
  out->Clear();
  return false;
}

google::protobuf::Struct ToStruct(const json& j) {
  google::protobuf::Struct s;
  (void)ToStruct(j, &s);
  return s;
}

// The coordinator is away or slow: the same call later may succeed. Retried without end
// (a pause between tries): the coordinator may be down for a while.
bool Transient(const grpc::Status& s) {
  return s.error_code() == grpc::StatusCode::UNAVAILABLE ||
         s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
}

// The call was refused because the attempt is no longer this agent's (a stale attempt, a
// job gone or moved): its ranks stop, and nothing more is sent about it.
bool Stale(const grpc::Status& s) {
  return s.error_code() == grpc::StatusCode::FAILED_PRECONDITION ||
         s.error_code() == grpc::StatusCode::NOT_FOUND ||
         s.error_code() == grpc::StatusCode::PERMISSION_DENIED;
}

// Any other error (RESOURCE_EXHAUSTED, INTERNAL, INVALID_ARGUMENT, ...) refuses that message
// for good: it is split, made smaller, or dropped, never sent again as it was.
std::string Error(const grpc::Status& s) {
  const int code = static_cast<int>(s.error_code());
  const char* known = CanonicalCodeName(code);
  const std::string name = known ? known : std::to_string(code);
  return name + ": " + SanitizeUtf8(s.error_message(), 500);
}

// The newest complete checkpoint's step in `out` (0 without one): events up to it were
// relayed by the attempt that wrote it. A state file that is not JSON, or whose step is not
// an integer, counts as no checkpoint.
int64_t CheckpointStep(const std::string& out) {
  int64_t best = 0;
  for (const char* d : {run_dir::kCheckpoint, run_dir::kCheckpointOld, run_dir::kCheckpointTmp}) {
    auto text = ReadFile(out + "/" + d + "/trainer_state.json");
    if (!text.ok()) continue;
    int64_t step = 0;
    if (GetField(ParseJson(*text), "step", &step)) best = std::max(best, step);
  }
  return best;
}

// The last lines of a log for CompleteJob: valid UTF-8, each at most kLogTailLine bytes (cut
// at a character boundary, "..." marking the cut), kLogTailBytes in all (the oldest dropped).
std::vector<std::string> LogTail(const std::string& path) {
  const auto lines = LastLines(path, kLogTailLines, /*max_line=*/65536, /*window=*/65536);
  std::vector<std::string> out;
  size_t total = 0;
  for (auto it = lines.rbegin(); it != lines.rend(); ++it) {
    std::string line = SanitizeUtf8(*it, kLogTailLine);
    if (total + line.size() > kLogTailBytes) break;
    total += line.size();
    out.push_back(std::move(line));
  }
  std::reverse(out.begin(), out.end());
  return out;
}

// <state_dir>/instance: this agent's random key (32 hex digits), made once and kept across
// restarts. The coordinator tells by it a restart of this agent (same key: welcome) from
// another agent registering under the same id (refused while this one's lease lives).
StatusOr<std::string> LoadInstance(const std::string& state_dir) {
  const std::string path = state_dir + "/instance";
  if (auto text = ReadFile(path); text.ok()) {
    std::string key = text->substr(0, text->find_first_of(" \t\r\n"));
    if (key.size() == 32 && key.find_first_not_of("0123456789abcdef") == std::string::npos) {
      return key;
    }
  }
  const std::string key = RandomHex(16);
  RETURN_IF_ERROR(WriteFileAtomic(path, key + "\n"));
  return key;
}

struct Attempt {
  std::string job_id, name, kind;
  int64_t attempt = 0, ranks = 1;
  std::string dir, out_dir, log, tag;
  pid_t supervisor = -1;
  int64_t relayed_step = 0;
  int64_t started_ms = 0;  // wall clock: rank failure records older than this are not ours
  // events.jsonl as the previous attempt left it (its inode; 0: none). rmgen-train rewrites
  // the file when it starts (trimmed to its checkpoint); until then nothing in it is ours.
  uint64_t stale_events = 0;
  bool reported = false;
  // In memory only.
  uint64_t events_ino = 0;             // the events.jsonl being read
  LineCursor cursor;                   // how far it is read (and sent)
  bool announced = false;              // RUNNING reported
  std::atomic<bool> cancelled{false};  // the coordinator took it back: report nothing
  std::atomic<bool> preempted{false};  // stopped because this agent stops
  int64_t gone_since = 0;              // supervisor not seen alive, no exit.json yet
  // Lines of events.jsonl skipped (not an event, too long), and events the coordinator
  // refused one by one. (bad_ino, bad_end): the last skipped line counted, so a line read
  // again after a failed send is not counted twice.
  int64_t skipped_lines = 0, refused_events = 0;
  uint64_t bad_ino = 0;
  int64_t bad_end = 0;
  bool summarized = false;  // the counts above are in the job's log
  // Events left to relay since then (monotonic ms; 0: caught up). Written by the monitor,
  // read by the metrics server.
  std::atomic<int64_t> behind_since_ms{0};
  bool minimal_report = false;  // the full CompleteJob was refused: send the minimal one
  std::string broken;           // the agent failed handling it: stop it, fail it with this

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
            {"started_ms", started_ms},
            {"stale_events", stale_events},
            {"preempted", preempted.load()},
            {"reported", reported}};
  }
  // record.json as ToJson wrote it; DataLoss when it is not an object or a field has the
  // wrong type (never throws).
  static StatusOr<std::shared_ptr<Attempt>> FromJson(const json& j, const std::string& dir) {
    if (!j.is_object()) return DataLossError("not a JSON object");
    auto a = std::make_shared<Attempt>();
    a->dir = dir;
    int supervisor = -1;
    bool preempted = false;
    const std::pair<bool, const char*> fields[] = {
        {GetField(j, "job_id", &a->job_id), "job_id"},
        {GetField(j, "name", &a->name), "name"},
        {GetField(j, "kind", &a->kind), "kind"},
        {GetField(j, "attempt", &a->attempt), "attempt"},
        {GetField(j, "ranks", &a->ranks), "ranks"},
        {GetField(j, "out_dir", &a->out_dir), "out_dir"},
        {GetField(j, "log", &a->log), "log"},
        {GetField(j, "tag", &a->tag), "tag"},
        {GetField(j, "supervisor", &supervisor), "supervisor"},
        {GetField(j, "relayed_step", &a->relayed_step), "relayed_step"},
        {GetField(j, "started_ms", &a->started_ms), "started_ms"},
        {GetField(j, "stale_events", &a->stale_events), "stale_events"},
        {GetField(j, "reported", &a->reported), "reported"},
        {GetField(j, "preempted", &preempted), "preempted"}};
    for (const auto& [ok, key] : fields) {
      if (!ok) return DataLossError(std::string("\"") + key + "\" has the wrong type");
    }
    a->supervisor = supervisor;
    a->preempted = preempted;
    return a;
  }
  Status Save() const {
    return WriteFileAtomic(dir + "/record.json", SafeDump(ToJson(), 2) + "\n");
  }
};

// One event ready to send: where its line ends in events.jsonl, and its step.
struct PendingEvent {
  google::protobuf::Struct event;
  int64_t step = 0;
  int64_t end = 0;
};

enum class Relayed {
  kDone,   // everything read so far is sent (or given up)
  kMore,   // a batch went out and more lines wait
  kLater,  // the coordinator cannot take them now: again at the next poll
};

}  // namespace

struct Agent::Impl {
  AgentOptions o;
  std::unique_ptr<Launcher> launcher;
  std::unique_ptr<pb::WorkerService::Stub> stub;
  std::mutex m;                                          // live, session
  std::map<std::string, std::shared_ptr<Attempt>> live;  // job id -> its unreported attempt
  std::string instance;                                  // <state_dir>/instance
  // From the last registration ("" from an older coordinator: sent back as it is).
  std::string session;
  std::atomic<bool> reregister{false};  // a call found the session gone: register again
  std::atomic<int64_t> lease_ms{30'000};
  std::atomic<bool> stopping{false}, done{false};
  std::string lease_file;
  Metrics prom;  // this agent's Prometheus metrics (MetricsText)

  void Log(const std::string& line) {
    if (o.verbose) std::fprintf(stderr, "rmgen-worker %s: %s\n", o.id.c_str(), line.c_str());
  }

  // A line in the attempt's own log (where `rmgen logs` and the failure's log tail show it).
  static void NoteInJobLog(const Attempt& a, const std::string& line) {
    const int fd = ::open(a.log.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return;
    const std::string text = "[rmgen agent] " + line + "\n";
    (void)!::write(fd, text.data(), text.size());
    ::close(fd);
  }

  std::string Session() {
    std::lock_guard<std::mutex> l(m);
    return session;
  }

  std::unique_ptr<grpc::ClientContext> Ctx(int64_t ms) {
    auto c = std::make_unique<grpc::ClientContext>();
    if (!o.token.empty()) c->AddMetadata("authorization", "Bearer " + o.token);
    c->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(ms));
    return c;
  }

  // A call made with session `used` was refused as UNAUTHENTICATED: the heartbeat thread
  // registers again, unless that happened since the call read the session (so a call in
  // flight across a registration does not cause another one).
  void SessionRefused(const std::string& used) {
    std::lock_guard<std::mutex> l(m);
    if (used == session) reregister = true;
  }

  // Whether a failed call made with session `used` is to be made again later as it is: the
  // coordinator is away, or no longer knows this agent's session (UNAUTHENTICATED: the
  // heartbeat thread registers again first).
  bool Later(const grpc::Status& s, const std::string& used) {
    if (s.error_code() == grpc::StatusCode::UNAUTHENTICATED) {
      SessionRefused(used);
      return true;
    }
    return Transient(s);
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
      (void)SignalSupervisor(it->second->supervisor, it->second->tag);
    }
  }

  // One RegisterWorker call: this agent's slots, instance key and the attempts it runs. On
  // success it keeps the session (every later call carries it), renews the lease file and
  // stops the attempts the coordinator takes back; otherwise it changes nothing.
  grpc::Status RegisterOnce() {
    pb::RegisterWorkerRequest req;
    req.set_id(o.id);
    req.set_host(SanitizeUtf8(o.host));
    req.set_slots(o.slots);
    req.set_memory_bytes_per_slot(o.memory_bytes_per_slot);
    req.set_spans_hosts(launcher->spans_hosts());
    req.set_instance(instance);
    *req.mutable_labels() = ToStruct(o.labels);
    Running(req.mutable_running());
    pb::RegisterWorkerResponse resp;
    const int64_t sent = WallMs();
    auto c = Ctx(5000);
    c->set_wait_for_ready(true);  // (as a heartbeat: connects again at once)
    grpc::Status s = stub->RegisterWorker(c.get(), req, &resp);
    if (!s.ok()) return s;
    {
      std::lock_guard<std::mutex> l(m);
      session = resp.session();
    }
    reregister = false;
    prom.Inc("rmgen_agent_registrations_total");
    lease_ms = std::max<int64_t>(resp.lease_ms(), 100);
    (void)WriteLease(lease_file, sent + lease_ms / 2, sent + lease_ms * 9 / 10);
    CancelJobs(resp.cancel(), req.running());
    return s;
  }

  // The first registration, when the agent starts: waits (500 ms between tries) while the
  // coordinator cannot be reached. Errors: refused (a bad token or id; kAlreadyExists when
  // another agent holds this worker id with a live lease: the operator must see it at once,
  // not a worker that silently never runs anything); kCancelled when the agent is stopped
  // first.
  Status RegisterAtStart() {
    for (;;) {
      grpc::Status s = RegisterOnce();
      if (s.ok()) return Status::Ok();
      if (s.error_code() == grpc::StatusCode::ALREADY_EXISTS) {
        return Status(StatusCode::kAlreadyExists,
                      "the coordinator at " + o.coordinator + " refused worker '" + o.id +
                          "': another agent runs under this id (" + Error(s) +
                          "). Give each agent its own --id (and --state-dir), or wait for the "
                          "other agent's lease to end");
      }
      if (!Transient(s)) {
        return Status(
            StatusCode::kPermissionDenied,
            "the coordinator at " + o.coordinator + " refused worker '" + o.id + "': " + Error(s));
      }
      if (stopping) return Status(StatusCode::kCancelled, "stopped before registering");
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
    }
  }

  // Renews the lease (the file the supervisors watch) every sixth of it, and registers again
  // when the coordinator asks (a reply with reregister, a call refused as UNAUTHENTICATED:
  // the session is gone). A registration refused because another agent holds this id is
  // logged (once per message) and tried again every 5 s; meanwhile no heartbeat renews the
  // lease, so the supervisors stop the ranks, as they must.
  void Heartbeats() {
    bool failed = false;
    int64_t register_after = 0;  // no registration before this (wall ms) after a refusal
    std::string said;            // the last registration error logged
    while (!done) {
      // After a failed heartbeat, try again soon: the lease file is running down.
      const int64_t period =
          std::max<int64_t>(50, failed ? std::min<int64_t>(250, lease_ms / 6) : lease_ms / 6);
      for (int64_t t = 0; t < period && !done; t += 25) {
        if (reregister && WallMs() >= register_after) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(25));
      }
      if (done) break;
      try {
        if (reregister) {
          if (WallMs() < register_after) continue;
          grpc::Status r = RegisterOnce();
          if (!r.ok()) {
            failed = true;
            const bool refused = !Transient(r);
            register_after = WallMs() + (refused ? 5000 : 500);
            const std::string why =
                r.error_code() == grpc::StatusCode::ALREADY_EXISTS
                    ? "another agent runs under worker id '" + o.id + "' (" + Error(r) +
                          "); its ranks here stop as the lease runs out; trying again every 5 s"
                    : Error(r);
            if (why != said) Log("registering again failed: " + why);
            said = why;
            continue;
          }
          said.clear();
          Log("registered again with " + o.coordinator);
          failed = false;
          continue;
        }
        pb::HeartbeatRequest req;
        req.set_id(o.id);
        req.set_session(Session());
        Running(req.mutable_running());
        pb::HeartbeatResponse resp;
        const int64_t sent = WallMs();
        auto c = Ctx(std::max<int64_t>(1000, lease_ms / 3));
        // Waits (within its deadline) for the channel to connect instead of failing at once:
        // only a call waiting for the channel makes gRPC (1.51's pick_first) connect again
        // after a coordinator restart; failing fast left the channel down about 5 s a time,
        // long enough for a short lease to lapse on every running attempt.
        c->set_wait_for_ready(true);
        grpc::Status s = stub->Heartbeat(c.get(), req, &resp);
        failed = !s.ok();
        if (s.error_code() == grpc::StatusCode::UNAUTHENTICATED) {
          Log("the coordinator refused the heartbeat (" + Error(s) + "): registering again");
          SessionRefused(req.session());
          continue;
        }
        if (failed) {  // the coordinator is away: the lease file runs down
          const std::string why = "heartbeat failed: " + Error(s);
          if (why != said) Log(why + " (the ranks stop when the lease file runs out)");
          said = why;
          continue;
        }
        if (said.rfind("heartbeat failed", 0) == 0) {
          Log("heartbeat through again");
          said.clear();
        }
        if (resp.reregister()) {
          // Not a renewal: the coordinator does not know this worker (or this session).
          Log("the coordinator does not know this worker (or its session): registering again");
          SessionRefused(req.session());
          continue;
        }
        lease_ms = std::max<int64_t>(resp.lease_ms(), 100);
        (void)WriteLease(lease_file, sent + lease_ms / 2, sent + lease_ms * 9 / 10);
        CancelJobs(resp.cancel(), req.running());
      } catch (const std::exception& e) {
        failed = true;
        Log(std::string("heartbeat: unexpected error: ") + e.what());
      }
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

  void Launch(const pb::AcquireJobResponse& acquired) {
    const pb::Job& job = acquired.job();
    const int64_t attempt_no = acquired.attempt();
    const std::string& output_dir = acquired.output_dir();
    auto a = std::make_shared<Attempt>();
    a->job_id = job.id();
    a->name = job.name();
    a->kind = job.kind();
    a->attempt = attempt_no;
    a->ranks = std::max<int64_t>(1, job.ranks());
    a->dir = o.state_dir + "/attempts/" + job.id() + "." + std::to_string(attempt_no);
    a->out_dir = Abs(output_dir);
    a->log = a->out_dir + "/logs/attempt-" + std::to_string(attempt_no) + ".log";
    a->tag = job.id() + "." + std::to_string(attempt_no) + "." + RandomHex(8);
    a->relayed_step = CheckpointStep(a->out_dir);
    a->started_ms = WallMs();
    if (struct stat st; ::stat((a->out_dir + "/events.jsonl").c_str(), &st) == 0) {
      a->stale_events = st.st_ino;
    }
    std::error_code ec;
    fs::create_directories(a->dir, ec);
    fs::create_directories(a->out_dir + "/logs", ec);
    const std::string spec_path = a->dir + "/spec.json";
    Status written = WriteFileAtomic(spec_path, SafeDump(FromProto(job.spec()), 2) + "\n");
    std::string hostfile;  // placed over several workers: their hosts, this one first
    if (written.ok() && acquired.hosts_size() > 1) {
      std::string lines;
      for (const auto& h : acquired.hosts()) {
        lines += h.host() + " slots=" + std::to_string(h.slots()) + "\n";
      }
      hostfile = run_dir::Join(a->dir, "hostfile");
      written = WriteFileAtomic(hostfile, lines);
      Log("job " + a->job_id + ": placed over " + std::to_string(acquired.hosts_size()) +
          " workers; hostfile " + hostfile);
    }
    StatusOr<std::vector<std::string>> argv =
        written.ok()
            ? launcher->Command({job.id(), attempt_no, a->ranks, spec_path, a->out_dir, hostfile})
            : StatusOr<std::vector<std::string>>(written);
    StatusOr<pid_t> pid =
        argv.ok()
            ? StartSupervisor(o.supervisor_exe, {a->dir, a->log, lease_file, o.grace_ms, a->tag,
                                                 o.workdir, launcher->stop_mode(), *argv})
            : StatusOr<pid_t>(argv.status());
    AttemptExit none;  // why nothing runs
    if (pid.ok()) {
      a->supervisor = *pid;
      // The ranks run: a record that cannot be written only costs the restart report.
      if (Status saved = a->Save(); !saved.ok()) Log("job " + a->job_id + ": " + saved.message());
    } else if (!written.ok()) {
      none.cause = EndCause::kStartFailed;  // this node's disk: retryable
      none.detail = written.message();
    } else if (!argv.ok()) {
      none.cause = EndCause::kLaunchFailed;  // the launcher refused the job
      none.detail = argv.status().message();
    } else {
      none.cause = EndCause::kStartFailed;  // this node, now: retryable
      none.detail = pid.status().message();
    }
    {
      std::lock_guard<std::mutex> l(m);
      live[a->job_id] = a;
    }
    if (!pid.ok()) {
      // Nothing ran (the spec could not be written, or the launcher refused the job): the
      // exit.json the supervisor would have written says so, and the monitor reports it.
      Log("job " + a->job_id + " attempt " + std::to_string(attempt_no) + ": " +
          EndCauseName(none.cause) + ": " + none.detail);
      none.ended_ms = WallMs();
      (void)WriteFileAtomic(run_dir::Join(a->dir, run_dir::kExit), SafeDump(none.ToJson()) + "\n");
      return;
    }
    Log("job " + a->job_id + " attempt " + std::to_string(attempt_no) + " (" + a->name + ", " +
        std::to_string(a->ranks) + " rank" + (a->ranks > 1 ? "s" : "") + ") started; log " +
        a->log);
    prom.Inc("rmgen_agent_attempts_started_total");
  }

  // A job taken that could not even be set up (the agent failed before anything ran):
  // reported failed at once (retryable: another node may do better). Best effort: without
  // the report, the coordinator finds the job missing from the heartbeats.
  void Abandon(const std::string& job_id, int64_t attempt, const std::string& why) {
    Log("job " + job_id + " attempt " + std::to_string(attempt) + ": " + why);
    pb::CompleteJobRequest req;
    req.set_job_id(job_id);
    req.set_attempt(attempt);
    req.set_worker_id(o.id);
    req.set_session(Session());
    req.set_reason(SanitizeUtf8(why, kReasonBytes));
    req.set_retryable(true);
    req.set_cause(CauseName(Cause::kStartFailed));
    pb::CompleteJobResponse resp;
    auto c = Ctx(10'000);
    (void)stub->CompleteJob(c.get(), req, &resp);
  }

  void Acquire() {
    while (!stopping) {
      if (FreeSlots() <= 0 || reregister) {
        std::this_thread::sleep_for(std::chrono::milliseconds(o.poll_ms));
        continue;
      }
      pb::AcquireJobRequest req;
      req.set_id(o.id);
      req.set_session(Session());
      req.set_wait_ms(1000);
      pb::AcquireJobResponse resp;
      auto c = Ctx(6000);
      grpc::Status s = stub->AcquireJob(c.get(), req, &resp);
      if (!s.ok()) {
        if (s.error_code() == grpc::StatusCode::UNAUTHENTICATED) SessionRefused(req.session());
        std::this_thread::sleep_for(std::chrono::milliseconds(300));
        continue;
      }
      if (!resp.assigned()) continue;
      try {
        Launch(resp);
      } catch (const std::exception& e) {
        Abandon(resp.job().id(), resp.attempt(),
                std::string("start failed: the agent failed setting it up: ") + e.what());
      }
    }
  }

  // A line of events.jsonl that is no event (bad JSON, no integer step, too long): skipped,
  // counted, and the first few described in the job's log.
  void SkipLine(Attempt* a, uint64_t ino, int64_t end, const std::string& why) {
    if (ino == a->bad_ino && end <= a->bad_end) return;  // counted when first read
    a->bad_ino = ino;
    a->bad_end = end;
    if (++a->skipped_lines > kNotedBadLines) return;
    NoteInJobLog(
        *a, "events.jsonl: skipped the line ending at byte " + std::to_string(end) + ": " + why +
                (a->skipped_lines == kNotedBadLines ? " (further ones only counted)" : ""));
  }

  // The attempt is no longer this agent's (cancelled, stale): its ranks stop, nothing more
  // is reported about it.
  void TakenBack(Attempt* a, const std::string& why) {
    if (a->cancelled.exchange(true)) return;
    Log("job " + a->job_id + ": " + why + "; stopping its ranks");
    (void)SignalSupervisor(a->supervisor, a->tag);
  }

  // One ReportEvents call with events[from, from + n) (none: the RUNNING announcement), made
  // with session `used`.
  grpc::Status SendEvents(const Attempt& a, const std::vector<PendingEvent>& events, size_t from,
                          size_t n, const std::string& used, pb::ReportEventsResponse* resp) {
    pb::ReportEventsRequest r;
    r.set_job_id(a.job_id);
    r.set_attempt(a.attempt);
    r.set_running(true);
    r.set_worker_id(o.id);
    r.set_session(used);
    for (size_t k = from; k < from + n; ++k) *r.add_events() = events[k].event;
    auto c = Ctx(10'000);
    auto w = stub->ReportEvents(c.get(), resp);
    w->Write(r);
    w->WritesDone();
    return w->Finish();
  }

  // Sends the new events of events.jsonl: objects with an integer step after the last one
  // relayed, at most kRelayBatch of them and kRelayBytes encoded per call. Lines that are no
  // event are skipped (SkipLine), over-long ones without being held in memory. A batch the
  // coordinator refuses for its content (anything but unreachable, UNAUTHENTICATED or a stale
  // attempt) is halved and sent again; a single refused event is dropped and counted. So
  // nothing in the file stops the relay, and the job goes on. Never throws on the file's
  // content.
  Relayed Relay(Attempt* a) {
    const std::string path = a->out_dir + "/events.jsonl";
    std::vector<PendingEvent> events;
    LineCursor cursor = a->cursor;  // replaces a's once the events are delivered
    uint64_t ino = a->events_ino;
    int64_t top = a->relayed_step;
    size_t bytes = 0;
    bool more = false;
    // The file is identified by its inode: the one opened here is the one read.
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd >= 0 && ::fstat(fd, &st) == 0 && st.st_ino != a->stale_events) {
      // Another file than the one read so far (the trainer rewrote it), or shorter: from 0.
      if (st.st_ino != ino || st.st_size < cursor.offset) cursor = LineCursor();
      ino = st.st_ino;
      auto line = [&](std::string_view text, int64_t end) {
        if (events.size() >= kRelayBatch) {
          more = true;
          return false;
        }
        ParsedEvent p = ParseEventLine(text);
        if (!p.ok()) {
          SkipLine(a, ino, end, p.error + ": " + SanitizeUtf8(text, 80));
          return true;
        }
        if (p.step <= top) return true;  // relayed before (or repeated by a resumed attempt)
        PendingEvent e;
        if (!ToStruct(p.event, &e.event)) {
          SkipLine(a, ino, end, "not representable as a protobuf Struct");
          return true;
        }
        const size_t size = e.event.ByteSizeLong();
        if (size > kRelayBytes) {
          SkipLine(a, ino, end, "an event of " + std::to_string(size) + " bytes encoded");
          return true;
        }
        if (!events.empty() && bytes + size > kRelayBytes) {
          more = true;
          return false;
        }
        bytes += size;
        top = p.step;
        e.step = p.step;
        e.end = end;
        events.push_back(std::move(e));
        return true;
      };
      auto too_long = [&](int64_t end) {
        SkipLine(a, ino, end, "longer than " + std::to_string(kMaxEventLine) + " bytes");
      };
      (void)ScanLines(fd, kMaxEventLine, &cursor, line, too_long);
    }
    if (fd >= 0) ::close(fd);
    // Delivered: events[0, upto) (all: everything read, skipped lines included).
    // `announced` is set only by a call the coordinator took (each carries running=true): an
    // announcement that failed for want of a coordinator is made again at the next poll.
    auto commit = [&](size_t upto, bool all) {
      if (all) {
        a->cursor = cursor;
        a->events_ino = ino;
      } else if (upto > 0) {
        a->cursor = LineCursor{events[upto - 1].end, false};
        a->events_ino = ino;
      }
      if (upto > 0 && events[upto - 1].step > a->relayed_step) {
        a->relayed_step = events[upto - 1].step;
        (void)a->Save();
      }
    };
    if (events.empty() && a->announced) {
      commit(0, true);
      return Relayed::kDone;
    }
    size_t from = 0, chunk = std::max<size_t>(1, events.size());
    do {
      const size_t n = std::min(chunk, events.size() - from);
      pb::ReportEventsResponse resp;
      const std::string used = Session();
      grpc::Status s = SendEvents(*a, events, from, n, used, &resp);
      if (s.ok()) {
        a->announced = true;
        from += n;
        prom.Inc("rmgen_agent_events_relayed_total", {}, double(n));
        commit(from, from == events.size());
        if (resp.cancel()) TakenBack(a, "cancelled");
        continue;
      }
      if (Later(s, used)) {
        commit(from, false);
        return Relayed::kLater;
      }
      if (Stale(s)) {
        commit(events.size(), true);
        TakenBack(a, Error(s));
        return Relayed::kDone;
      }
      if (n > 1) {
        chunk = (n + 1) / 2;
        continue;
      }
      if (n == 0) {  // the announcement alone, refused: the next batch announces again
        Log("job " + a->job_id + ": the coordinator refused the RUNNING report: " + Error(s));
        a->announced = true;
        commit(0, true);
        return Relayed::kDone;
      }
      ++a->refused_events;
      Log("job " + a->job_id + ": the coordinator refused the event of step " +
          std::to_string(events[from].step) + " (" + Error(s) + "); dropped");
      if (a->refused_events <= kNotedBadLines) {
        NoteInJobLog(*a, "the coordinator refused the event of step " +
                             std::to_string(events[from].step) + ": " + Error(s));
      }
      ++from;
      commit(from, from == events.size());
    } while (from < events.size());
    return more ? Relayed::kMore : Relayed::kDone;
  }

  // The CompleteJob request for an attempt that ended as `x` (its strings valid UTF-8 and
  // bounded: reason kReasonBytes, log tail LogTail's).
  pb::CompleteJobRequest EndReport(const Attempt& a, const AttemptExit& x) {
    pb::CompleteJobRequest req;
    req.set_job_id(a.job_id);
    req.set_attempt(a.attempt);
    req.set_worker_id(o.id);
    req.set_session(Session());
    AttemptFacts facts;
    facts.exit = x;
    facts.failure = FirstRankFailure(a.out_dir, a.started_ms);
    facts.stopped_by_agent = a.preempted;
    facts.agent_error = a.broken;
    AttemptVerdict v = ClassifyEnd(facts);
    if (v.success) {
      // The ranks exited 0: the result is metrics.json, or a permanent failure that says why.
      const std::string path = run_dir::Metrics(a.out_dir);
      auto text = ReadSmallFile(path, kMaxMetricsBytes);
      const json m = text.ok() ? ParseJson(*text) : json();
      if (m.is_object() && ToStruct(m, req.mutable_metrics()) &&
          req.metrics().ByteSizeLong() <= kMaxReportedStructBytes) {
        req.set_success(true);
        return req;
      }
      v.success = false;
      v.cause = Cause::kBadResult;
      v.retryable = false;
      if (m.is_object() && req.has_metrics()) {
        const size_t encoded = req.metrics().ByteSizeLong();
        v.reason = "the ranks exited 0 but " + path + " encodes to " + std::to_string(encoded) +
                   " bytes, over the " + std::to_string(kMaxReportedStructBytes) +
                   " a result may have (write fewer or shorter values)";
      } else {
        v.reason = "the ranks exited 0 but left no readable " + path +
                   (text.ok() ? std::string(" (not a JSON object)")
                              : " (" + text.status().message() + ")");
      }
      req.clear_metrics();
    }
    const std::string reason = v.reason;
    req.set_retryable(v.retryable);
    req.set_preempted(v.preempted);
    req.set_cause(CauseName(v.cause));
    req.set_failed_rank(v.failed_rank);
    if (!req.success()) {
      req.set_reason(SanitizeUtf8(reason, kReasonBytes));
      for (auto& l : LogTail(a.log)) req.add_log_tail(std::move(l));
    }
    return req;
  }

  static std::string Outcome(const pb::CompleteJobRequest& req,
                             const pb::CompleteJobResponse& resp) {
    return req.success() ? "succeeded"
                         : std::string(req.preempted() ? "preempted" : "failed") + ": " +
                               req.reason() + " -> " + pb::JobState_Name(resp.state());
  }

  // Reports the end of an attempt; true once the coordinator has it (or has no use for it).
  // Unreachable or UNAUTHENTICATED: false, again at the next poll. Refused for its content
  // (RESOURCE_EXHAUSTED, INTERNAL, INVALID_ARGUMENT, ...): sent once more as a minimal request
  // (no log tail, a short reason); refused again, or stale: marked reported as "not recorded"
  // so its slots are free (the coordinator finds the job gone from the heartbeats).
  bool Finish(const std::shared_ptr<Attempt>& a, const AttemptExit& x) {
    if (!a->summarized && (a->skipped_lines > 0 || a->refused_events > 0)) {
      // In the job's log before its tail is read for the report.
      const std::string counts = std::to_string(a->skipped_lines) +
                                 " events.jsonl line(s) skipped, " +
                                 std::to_string(a->refused_events) + " event(s) refused";
      NoteInJobLog(*a, counts);
      Log("job " + a->job_id + " attempt " + std::to_string(a->attempt) + ": " + counts);
    }
    a->summarized = true;
    if (a->cancelled) return MarkReported(a, "cancelled");
    pb::CompleteJobRequest req = EndReport(*a, x);
    pb::CompleteJobResponse resp;
    if (!a->minimal_report) {
      auto c = Ctx(10'000);
      grpc::Status s = stub->CompleteJob(c.get(), req, &resp);
      if (s.ok()) return MarkReported(a, Outcome(req, resp));
      if (Later(s, req.session())) return false;
      if (Stale(s)) return MarkReported(a, "not recorded: " + Error(s));
      Log("job " + a->job_id + ": the coordinator refused the report of attempt " +
          std::to_string(a->attempt) + " (" + Error(s) + "); sending it without the log tail");
      a->minimal_report = true;
    }
    req.clear_log_tail();
    if (req.success()) {  // the metrics were refused: a failure that says so, not a retry
      req.set_success(false);
      req.clear_metrics();
      req.set_retryable(false);
      req.set_reason("the coordinator refused the metrics of this attempt");
    }
    req.set_reason(SanitizeUtf8(req.reason(), kShortReasonBytes));
    req.set_session(Session());
    auto c = Ctx(10'000);
    grpc::Status s = stub->CompleteJob(c.get(), req, &resp);
    if (s.ok()) return MarkReported(a, Outcome(req, resp));
    if (Later(s, req.session())) return false;
    return MarkReported(a, "not recorded: " + Error(s));
  }

  bool MarkReported(const std::shared_ptr<Attempt>& a, const std::string& outcome) {
    a->reported = true;
    std::string kind = "other";  // a bounded label: the outcome's first word
    for (const char* k : {"succeeded", "failed", "preempted", "not recorded"}) {
      if (outcome.rfind(k, 0) == 0) kind = k;
    }
    prom.Inc("rmgen_agent_attempts_ended_total", {{"outcome", kind}});
    (void)a->Save();
    Log("job " + a->job_id + " attempt " + std::to_string(a->attempt) + " " + outcome);
    std::lock_guard<std::mutex> l(m);
    auto it = live.find(a->job_id);
    if (it != live.end() && it->second == a) live.erase(it);
    return true;
  }

  // One look at an attempt: relays its new events while it runs; once it ended (exit.json,
  // or its supervisor gone), relays the rest and reports the end.
  void Watch(const std::shared_ptr<Attempt>& a) {
    auto x = ReadExit(a->dir);
    if (!x.ok()) {
      if (SupervisorAlive(a->supervisor, a->tag)) {
        a->gone_since = 0;
        if (a->broken.empty()) (void)RelayTimed(a.get());
        return;
      }
      x = ReadExit(a->dir);  // it may have ended between the two looks
    }
    if (!x.ok() && x.status().code() != StatusCode::kNotFound) {
      // exit.json is there, but damaged, and its supervisor is gone.
      AttemptExit bad;
      bad.cause = EndCause::kExitUnreadable;
      bad.detail = x.status().message();
      x = bad;
    }
    if (!x.ok()) {
      // No supervisor and no exit.json: it was killed (or the node restarted). Give it a
      // moment (it may be writing exit.json), then report the attempt as lost.
      if (a->gone_since == 0) a->gone_since = WallMs();
      if (WallMs() - a->gone_since < 2000) return;
      AttemptExit lost;
      lost.signal = SIGKILL;
      lost.cause = EndCause::kSupervisorGone;
      x = lost;
    }
    // Everything the attempt logged goes out before its end is reported.
    if (a->broken.empty()) {
      Relayed r;
      while ((r = RelayTimed(a.get())) == Relayed::kMore) {
      }
      if (r == Relayed::kLater) return;
    }
    Finish(a, *x);
  }

  // The last line of defence: something thrown while handling one attempt (a bug, out of
  // memory) fails that job only, never the agent. The first time, its ranks are stopped and
  // it is reported, once they end, as failed (not retryable) with `what`; thrown again while
  // reporting, it is marked reported as not recorded.
  void Broken(const std::shared_ptr<Attempt>& a, const std::string& what) {
    if (a->broken.empty()) {
      a->broken = SanitizeUtf8("the agent failed handling this job: " + what, kReasonBytes);
      Log("job " + a->job_id + " attempt " + std::to_string(a->attempt) + ": " + a->broken +
          "; stopping its ranks");
      (void)SignalSupervisor(a->supervisor, a->tag);
      return;
    }
    try {
      MarkReported(a, "not recorded: " + what);
    } catch (const std::exception&) {
      std::lock_guard<std::mutex> l(m);
      a->reported = true;
      auto it = live.find(a->job_id);
      if (it != live.end() && it->second == a) live.erase(it);
    }
  }

  // Relay, noting since when the attempt has events the coordinator does not have yet.
  Relayed RelayTimed(Attempt* a) {
    const Relayed r = Relay(a);
    if (r == Relayed::kDone) {
      a->behind_since_ms = 0;
    } else if (a->behind_since_ms == 0) {
      a->behind_since_ms = MonoMs();
    }
    return r;
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
        try {
          Watch(a);
        } catch (const std::exception& e) {
          Broken(a, e.what());
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(o.poll_ms));
    }
  }

  // An attempt folder whose record.json cannot be read: a supervisor still running for it
  // is stopped (nothing would watch or report it; the coordinator requeues the job, missing
  // from the heartbeats), and the folder moves to <state_dir>/quarantine/ with a log line.
  void Quarantine(const fs::path& dir, const std::string& why) {
    for (pid_t p : SupervisorsOf(dir.string())) ::kill(p, SIGTERM);
    std::error_code ec;
    const fs::path to = fs::path(o.state_dir) / "quarantine" /
                        (dir.filename().string() + "." + std::to_string(WallMs()));
    fs::create_directories(to.parent_path(), ec);
    if (!ec) fs::rename(dir, to, ec);
    std::fprintf(stderr, "rmgen-worker %s: unreadable attempt record %s/record.json (%s): %s\n",
                 o.id.c_str(), dir.c_str(), why.c_str(),
                 ec ? ("cannot move it aside: " + ec.message()).c_str()
                    : ("moved to " + to.string()).c_str());
  }

  // Attempts a previous run of this agent started and did not report.
  Status LoadState() {
    std::error_code ec;
    fs::create_directories(o.state_dir + "/attempts", ec);
    if (ec) return InternalError("cannot create " + o.state_dir + "/attempts: " + ec.message());
    std::vector<fs::path> dirs;
    for (const auto& e : fs::directory_iterator(o.state_dir + "/attempts", ec)) {
      dirs.push_back(e.path());
    }
    for (const auto& dir : dirs) {
      auto text = ReadFile((dir / "record.json").string());
      if (!text.ok()) continue;
      auto a = Attempt::FromJson(ParseJson(*text), dir.string());
      if (!a.ok()) {
        Quarantine(dir, a.status().message());
        continue;
      }
      if ((*a)->reported || (*a)->job_id.empty()) continue;
      const bool alive = SupervisorAlive((*a)->supervisor, (*a)->tag);
      Log("found job " + (*a)->job_id + " attempt " + std::to_string((*a)->attempt) +
          " from before: " + (alive ? "still running" : "ended while the agent was down"));
      prom.Inc("rmgen_agent_attempts_recovered_total");
      std::lock_guard<std::mutex> l(m);
      live[(*a)->job_id] = *a;
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
  using T = Metrics::Type;
  Metrics& m = impl_->prom;
  m.Declare("rmgen_agent_running_attempts", T::kGauge,
            "Attempts this agent runs (or has yet to report).");
  m.Declare("rmgen_agent_relay_lag_seconds", T::kGauge,
            "How long the attempt furthest behind has had events the coordinator lacks.");
  m.Declare("rmgen_agent_events_relayed_total", T::kCounter,
            "Progress events relayed to the coordinator.");
  m.Declare("rmgen_agent_attempts_started_total", T::kCounter, "Attempts this agent started.");
  m.Declare("rmgen_agent_attempts_ended_total", T::kCounter,
            "Attempts this agent reported, by outcome.");
  m.Declare("rmgen_agent_attempts_recovered_total", T::kCounter,
            "Attempts found from before this agent (re)started: the agent's restarts.");
  m.Declare("rmgen_agent_registrations_total", T::kCounter,
            "Registrations with the coordinator (the first, then one after each coordinator "
            "restart or lost session).");
  m.Declare("rmgen_agent_slots", T::kGauge, "This worker's slots.");
}

std::string Agent::MetricsText() {
  Impl& I = *impl_;
  int64_t running = 0, lag_ms = 0;
  const int64_t now = MonoMs();
  {
    std::lock_guard<std::mutex> l(I.m);
    running = static_cast<int64_t>(I.live.size());
    for (const auto& [id, a] : I.live) {
      const int64_t since = a->behind_since_ms.load();
      if (since > 0) lag_ms = std::max(lag_ms, now - since);
    }
  }
  I.prom.Set("rmgen_agent_running_attempts", {}, double(running));
  I.prom.Set("rmgen_agent_relay_lag_seconds", {}, lag_ms / 1000.0);
  I.prom.Set("rmgen_agent_slots", {}, double(I.o.slots));
  return I.prom.Render();
}

Agent::~Agent() = default;

Status Agent::Run(const std::atomic<bool>* stop) {
  Impl& I = *impl_;
  if (I.o.id.empty()) return InvalidArgumentError("the worker needs an id");
  if (I.o.slots < 1) return InvalidArgumentError("the worker needs at least one slot");
  if (I.o.supervisor_exe.empty()) return InvalidArgumentError("no supervisor binary");
  if (!IsValidUtf8(I.o.id)) return InvalidArgumentError("the worker id must be UTF-8 text");
  std::error_code ec;
  fs::create_directories(I.o.state_dir, ec);
  I.o.state_dir = fs::absolute(I.o.state_dir, ec).string();
  if (!I.o.workdir.empty()) I.o.workdir = fs::absolute(I.o.workdir, ec).string();
  I.lease_file = I.o.state_dir + "/lease";
  RETURN_IF_ERROR(I.LoadState());
  ASSIGN_OR_RETURN(I.instance, LoadInstance(I.o.state_dir));
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
  if (Status reg = I.RegisterAtStart(); !reg.ok()) {
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
      (void)SignalSupervisor(a->supervisor, a->tag);
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
