// The agent's inside (agent.h is its outside), shared by the files that implement it:
//
//   agent.cc    the coordinator client: registration, sessions, heartbeats, taking jobs
//               (AcquireJob) and launching them, the attempts found at a restart; Agent itself
//   relay.cc    the event relay: new events.jsonl lines to ReportEvents, in bounded batches
//   report.cc   the end of an attempt: watching it, classifying its end (jobspec/outcome.h,
//               ClassifyEnd) into the CompleteJob report, and reporting it
//   attempt.cc  the attempt record (record.json) and small helpers
//
// Threads, and what each owns:
//   Run (the caller's thread)  starts the others, then runs Acquire: the only thread that
//                              creates attempts (Launch) and adds them to `live`.
//   Heartbeats                 the lease: heartbeats, the lease file the supervisors read,
//                              registering again (`reregister`), cancels from the replies.
//   Monitor                    every attempt's progress after its launch: Watch (relay,
//                              end, report) runs only here, so an Attempt's relay cursor,
//                              counters and report state are this thread's alone.
//   watch_stop (in Run)        turns the caller's stop flag into `stopping`.
// Shared between them: `live` and `session` under `m`; the atomics below; an Attempt's
// `cancelled` and `preempted` (atomics, set by Heartbeats or Run, read by Monitor) and
// `behind_since_ms` (written by Monitor, read by MetricsText from any thread); `prom`
// (internally locked).
#pragma once

#include <grpcpp/grpcpp.h>
#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/file.h"
#include "common/metrics.h"
#include "jobspec/json_read.h"
#include "jobspec/outcome.h"
#include "rmgen/v1/rmgen.grpc.pb.h"
#include "worker/agent/agent.h"

namespace rmgen::agent {

namespace fs = std::filesystem;
namespace pb = ::rmgen::v1;
using nlohmann::json;

// What one call may carry: gRPC refuses messages over 4 MiB by default, and protobuf
// strings must be valid UTF-8.
inline constexpr size_t kRelayBatch = 500;              // events per ReportEvents call
inline constexpr size_t kRelayBytes = size_t{1} << 20;  // their encoded size per call
inline constexpr size_t kLogTailLines = 30;
inline constexpr size_t kLogTailLine = 2000;          // bytes of one log line in CompleteJob
inline constexpr size_t kLogTailBytes = 32 << 10;     // bytes of log tail in all
inline constexpr size_t kReasonBytes = 2000;          // a failure's reason
inline constexpr size_t kShortReasonBytes = 200;      // ... in the minimal CompleteJob
inline constexpr int64_t kMaxMetricsBytes = 1 << 20;  // metrics.json
inline constexpr int64_t kNotedBadLines = 3;  // skipped events.jsonl lines described in the job log

json FromProto(const google::protobuf::Message& m);

// `j` (an object) as a protobuf Struct; false (and *out empty) when it cannot be one.
bool ToStruct(const json& j, google::protobuf::Struct* out);

google::protobuf::Struct ToStruct(const json& j);

// The coordinator is away or slow: the same call later may succeed. Retried without end
// (a pause between tries): the coordinator may be down for a while.
bool Transient(const grpc::Status& s);

// The call was refused because the attempt is no longer this agent's (a stale attempt, a
// job gone or moved): its ranks stop, and nothing more is sent about it.
bool Stale(const grpc::Status& s);

// Any other error (RESOURCE_EXHAUSTED, INTERNAL, INVALID_ARGUMENT, ...) refuses that message
// for good: it is split, made smaller, or dropped, never sent again as it was.
std::string Error(const grpc::Status& s);

// The newest complete checkpoint's step in `out` (0 without one): events up to it were
// relayed by the attempt that wrote it. A state file that is not JSON, or whose step is not
// an integer, counts as no checkpoint.
int64_t CheckpointStep(const std::string& out);

// The last lines of a log for CompleteJob: valid UTF-8, each at most kLogTailLine bytes (cut
// at a character boundary, "..." marking the cut), kLogTailBytes in all (the oldest dropped).
std::vector<std::string> LogTail(const std::string& path);

// <state_dir>/instance: this agent's random key (32 hex digits), made once and kept across
// restarts. The coordinator tells by it a restart of this agent (same key: welcome) from
// another agent registering under the same id (refused while this one's lease lives).
StatusOr<std::string> LoadInstance(const std::string& state_dir);

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
  bool preempted_saved = false;        // record.json says so (the monitor thread's)
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

  void Log(const std::string& line);

  // A line in the attempt's own log (where `rmgen logs` and the failure's log tail show it).
  static void NoteInJobLog(const Attempt& a, const std::string& line);

  std::string Session();

  std::unique_ptr<grpc::ClientContext> Ctx(int64_t ms);

  // A call made with session `used` was refused as UNAUTHENTICATED: the heartbeat thread
  // registers again, unless that happened since the call read the session (so a call in
  // flight across a registration does not cause another one).
  void SessionRefused(const std::string& used);

  // Whether a failed call made with session `used` is to be made again later as it is: the
  // coordinator is away, or no longer knows this agent's session (UNAUTHENTICATED: the
  // heartbeat thread registers again first).
  bool Later(const grpc::Status& s, const std::string& used);

  void Running(google::protobuf::RepeatedPtrField<pb::RunningJob>* out);

  // The coordinator took these jobs back (cancelled, or handed to another worker).
  // `sent`: the running list the reply answers; a cancel applies to the attempt listed there,
  // never to a newer attempt of the same job taken meanwhile.
  void CancelJobs(const google::protobuf::RepeatedPtrField<std::string>& ids,
                  const google::protobuf::RepeatedPtrField<pb::RunningJob>& sent);

  // One RegisterWorker call: this agent's slots, instance key and the attempts it runs. On
  // success it keeps the session (every later call carries it), renews the lease file and
  // stops the attempts the coordinator takes back; otherwise it changes nothing.
  grpc::Status RegisterOnce();

  // The first registration, when the agent starts: waits (500 ms between tries) while the
  // coordinator cannot be reached. Errors: refused (a bad token or id; kAlreadyExists when
  // another agent holds this worker id with a live lease: the operator must see it at once,
  // not a worker that silently never runs anything); kCancelled when the agent is stopped
  // first.
  Status RegisterAtStart();

  // Renews the lease (the file the supervisors watch) every sixth of it, and registers again
  // when the coordinator asks (a reply with reregister, a call refused as UNAUTHENTICATED:
  // the session is gone). A registration refused because another agent holds this id is
  // logged (once per message) and tried again every 5 s; meanwhile no heartbeat renews the
  // lease, so the supervisors stop the ranks, as they must.
  void Heartbeats();

  int64_t FreeSlots();

  // Relative output folders are relative to where the ranks run.
  std::string Abs(const std::string& p) const;

  void Launch(const pb::AcquireJobResponse& acquired);

  // A job taken that could not even be set up (the agent failed before anything ran):
  // reported failed at once (retryable: another node may do better). Best effort: without
  // the report, the coordinator finds the job missing from the heartbeats.
  void Abandon(const std::string& job_id, int64_t attempt, const std::string& why);

  void Acquire();

  // A line of events.jsonl that is no event (bad JSON, no integer step, too long): skipped,
  // counted, and the first few described in the job's log.
  void SkipLine(Attempt* a, uint64_t ino, int64_t end, const std::string& why);

  // The attempt is no longer this agent's (cancelled, stale): its ranks stop, nothing more
  // is reported about it.
  void TakenBack(Attempt* a, const std::string& why);

  // One ReportEvents call with events[from, from + n) (none: the RUNNING announcement), made
  // with session `used`.
  grpc::Status SendEvents(const Attempt& a, const std::vector<PendingEvent>& events, size_t from,
                          size_t n, const std::string& used, pb::ReportEventsResponse* resp);

  // Sends the new events of events.jsonl: objects with an integer step after the last one
  // relayed, at most kRelayBatch of them and kRelayBytes encoded per call. Lines that are no
  // event are skipped (SkipLine), over-long ones without being held in memory. A batch the
  // coordinator refuses for its content (anything but unreachable, UNAUTHENTICATED or a stale
  // attempt) is halved and sent again; a single refused event is dropped and counted. So
  // nothing in the file stops the relay, and the job goes on. Never throws on the file's
  // content.
  Relayed Relay(Attempt* a);

  // The CompleteJob request for an attempt that ended as `x` (its strings valid UTF-8 and
  // bounded: reason kReasonBytes, log tail LogTail's).
  pb::CompleteJobRequest EndReport(const Attempt& a, const AttemptExit& x);

  static std::string Outcome(const pb::CompleteJobRequest& req,
                             const pb::CompleteJobResponse& resp);

  // Reports the end of an attempt; true once the coordinator has it (or has no use for it).
  // Unreachable or UNAUTHENTICATED: false, again at the next poll. Refused for its content
  // (RESOURCE_EXHAUSTED, INTERNAL, INVALID_ARGUMENT, ...): sent once more as a minimal request
  // (no log tail, a short reason); refused again, or stale: marked reported as "not recorded"
  // so its slots are free (the coordinator finds the job gone from the heartbeats).
  bool Finish(const std::shared_ptr<Attempt>& a, const AttemptExit& x);

  // Marks the attempt reported (its slots free) with `outcome` in the log; `kind` (succeeded,
  // failed, preempted, not recorded, other) is the metric's bounded label.
  bool MarkReported(const std::shared_ptr<Attempt>& a, const char* kind,
                    const std::string& outcome);
  static const char* OutcomeKind(const pb::CompleteJobRequest& req);

  // One look at an attempt: relays its new events while it runs; once it ended (exit.json,
  // or its supervisor gone), relays the rest and reports the end.
  void Watch(const std::shared_ptr<Attempt>& a);

  // The last line of defence: something thrown while handling one attempt (a bug, out of
  // memory) fails that job only, never the agent. The first time, its ranks are stopped and
  // it is reported, once they end, as failed (not retryable) with `what`; thrown again while
  // reporting, it is marked reported as not recorded.
  void Broken(const std::shared_ptr<Attempt>& a, const std::string& what);

  // Relay, noting since when the attempt has events the coordinator does not have yet.
  Relayed RelayTimed(Attempt* a);

  void Monitor();

  // An attempt folder whose record.json cannot be read: a supervisor still running for it
  // is stopped (nothing would watch or report it; the coordinator requeues the job, missing
  // from the heartbeats), and the folder moves to <state_dir>/quarantine/ with a log line.
  void Quarantine(const fs::path& dir, const std::string& why);

  // Attempts a previous run of this agent started and did not report.
  Status LoadState();
};

}  // namespace rmgen::agent
