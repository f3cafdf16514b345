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
#include "worker/agent/agent_impl.h"
#include "worker/agent/supervisor.h"

namespace rmgen::agent {

namespace fs = std::filesystem;

void Agent::Impl::Log(const std::string& line) {
  if (o.verbose) std::fprintf(stderr, "rmgen-worker %s: %s\n", o.id.c_str(), line.c_str());
}

// A line in the attempt's own log (where `rmgen logs` and the failure's log tail show it).
void Agent::Impl::NoteInJobLog(const Attempt& a, const std::string& line) {
  const int fd = ::open(a.log.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return;
  const std::string text = "[rmgen agent] " + line + "\n";
  (void)!::write(fd, text.data(), text.size());
  ::close(fd);
}

std::string Agent::Impl::Session() {
  std::lock_guard<std::mutex> l(m);
  return session;
}

std::unique_ptr<grpc::ClientContext> Agent::Impl::Ctx(int64_t ms) {
  auto c = std::make_unique<grpc::ClientContext>();
  if (!o.token.empty()) c->AddMetadata("authorization", "Bearer " + o.token);
  c->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(ms));
  return c;
}

// A call made with session `used` was refused as UNAUTHENTICATED: the heartbeat thread
// registers again, unless that happened since the call read the session (so a call in
// flight across a registration does not cause another one).
void Agent::Impl::SessionRefused(const std::string& used) {
  std::lock_guard<std::mutex> l(m);
  if (used == session) reregister = true;
}

// Whether a failed call made with session `used` is to be made again later as it is: the
// coordinator is away, or no longer knows this agent's session (UNAUTHENTICATED: the
// heartbeat thread registers again first).
bool Agent::Impl::Later(const grpc::Status& s, const std::string& used) {
  if (s.error_code() == grpc::StatusCode::UNAUTHENTICATED) {
    SessionRefused(used);
    return true;
  }
  return Transient(s);
}

void Agent::Impl::Running(google::protobuf::RepeatedPtrField<pb::RunningJob>* out) {
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
void Agent::Impl::CancelJobs(const google::protobuf::RepeatedPtrField<std::string>& ids,
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
grpc::Status Agent::Impl::RegisterOnce() {
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
Status Agent::Impl::RegisterAtStart() {
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
void Agent::Impl::Heartbeats() {
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
      if (!said.empty()) {  // (said holds the last heartbeat failure logged)
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

int64_t Agent::Impl::FreeSlots() {
  std::lock_guard<std::mutex> l(m);
  int64_t used = 0;
  for (const auto& [id, a] : live) used += a->ranks;
  return o.slots - used;
}

// Relative output folders are relative to where the ranks run.
std::string Agent::Impl::Abs(const std::string& p) const {
  if (p.empty() || p[0] == '/') return p;
  return (fs::path(o.workdir.empty() ? fs::current_path().string() : o.workdir) / p)
      .lexically_normal()
      .string();
}

void Agent::Impl::Launch(const pb::AcquireJobResponse& acquired) {
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
  a->log = run_dir::AttemptLog(a->out_dir, attempt_no);
  a->tag = job.id() + "." + std::to_string(attempt_no) + "." + RandomHex(8);
  a->relayed_step = CheckpointStep(a->out_dir);
  a->started_ms = WallMs();
  {
    // Rank failure records of earlier attempts: this attempt's end is read from its own only.
    std::error_code ec;
    std::vector<fs::path> old;
    for (const auto& e : fs::directory_iterator(run_dir::RanksDir(a->out_dir), ec)) {
      if (e.path().filename().string().rfind("failure-", 0) == 0) old.push_back(e.path());
    }
    for (const auto& p : old) fs::remove(p, ec);
  }
  if (struct stat st; ::stat(run_dir::Events(a->out_dir).c_str(), &st) == 0) {
    a->stale_events = st.st_ino;
  }
  std::error_code ec;
  fs::create_directories(a->dir, ec);
  fs::create_directories(a->out_dir + "/logs", ec);
  const std::string spec_path = run_dir::Join(a->dir, run_dir::kAttemptSpec);
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
      argv.ok() ? StartSupervisor(o.supervisor_exe, {a->dir, a->log, lease_file, o.grace_ms, a->tag,
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
      std::to_string(a->ranks) + " rank" + (a->ranks > 1 ? "s" : "") + ") started; log " + a->log);
  prom.Inc("rmgen_agent_attempts_started_total");
}

// A job taken that could not even be set up (the agent failed before anything ran):
// reported failed at once (retryable: another node may do better). Best effort: without
// the report, the coordinator finds the job missing from the heartbeats.
void Agent::Impl::Abandon(const std::string& job_id, int64_t attempt, const std::string& why) {
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

void Agent::Impl::Acquire() {
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

// An attempt folder whose record.json cannot be read: a supervisor still running for it
// is stopped (nothing would watch or report it; the coordinator requeues the job, missing
// from the heartbeats), and the folder moves to <state_dir>/quarantine/ with a log line.
void Agent::Impl::Quarantine(const fs::path& dir, const std::string& why) {
  for (pid_t p : SupervisorsOf(dir.string())) ::kill(p, SIGTERM);
  std::error_code ec;
  const fs::path to = fs::path(o.state_dir) / "quarantine" /
                      (dir.filename().string() + "." + std::to_string(WallMs()));
  fs::create_directories(to.parent_path(), ec);
  if (!ec) fs::rename(dir, to, ec);
  std::fprintf(
      stderr, "rmgen-worker %s: unreadable attempt record %s/record.json (%s): %s\n", o.id.c_str(),
      dir.c_str(), why.c_str(),
      ec ? ("cannot move it aside: " + ec.message()).c_str() : ("moved to " + to.string()).c_str());
}

// Attempts a previous run of this agent started and did not report.
Status Agent::Impl::LoadState() {
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
      // (The monitor thread saves the record with it: the record's other fields are its.)
      a->preempted = true;
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
