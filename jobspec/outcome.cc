#include "jobspec/outcome.h"

#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <tuple>

#include "common/file.h"
#include "jobspec/json_read.h"
#include "jobspec/run_dir.h"

namespace rmgen {
namespace {

using nlohmann::json;

struct CauseRow {
  Cause cause;
  const char* name;
  FailureClass cls;
};
// The one table of causes: name on the wire and class.
constexpr CauseRow kCauses[] = {
    {Cause::kUnknown, "unknown", FailureClass::kTransient},
    {Cause::kInvalidSpec, "invalid_spec", FailureClass::kPermanent},
    {Cause::kBadInput, "bad_input", FailureClass::kPermanent},
    {Cause::kMissingInput, "missing_input", FailureClass::kPermanent},
    {Cause::kIncompatible, "incompatible", FailureClass::kPermanent},
    {Cause::kCorruptState, "corrupt_state", FailureClass::kPermanent},
    {Cause::kNoDevice, "no_device", FailureClass::kPermanent},
    {Cause::kOutOfMemory, "out_of_memory", FailureClass::kPermanent},
    {Cause::kLaunchRefused, "launch_refused", FailureClass::kPermanent},
    {Cause::kBadResult, "bad_result", FailureClass::kPermanent},
    {Cause::kAgentError, "agent_error", FailureClass::kPermanent},
    {Cause::kError, "error", FailureClass::kTransient},
    {Cause::kCommFailure, "comm_failure", FailureClass::kTransient},
    {Cause::kRankKilled, "rank_killed", FailureClass::kTransient},
    {Cause::kPreempted, "preempted", FailureClass::kTransient},
    {Cause::kLeaseLost, "lease_lost", FailureClass::kTransient},
    {Cause::kNodeFailure, "node_failure", FailureClass::kTransient},
    {Cause::kStartFailed, "start_failed", FailureClass::kTransient},
    {Cause::kExitUnreadable, "exit_unreadable", FailureClass::kTransient},
};
static_assert(sizeof(kCauses) / sizeof(kCauses[0]) == kCauseCount, "a cause without a row");

const CauseRow& Row(Cause c) {
  for (const auto& r : kCauses) {
    if (r.cause == c) return r;
  }
  return kCauses[0];
}

struct EndRow {
  EndCause cause;
  const char* name;
};
constexpr EndRow kEnds[] = {
    {EndCause::kNone, ""},
    {EndCause::kStopped, "stopped"},
    {EndCause::kLeaseLost, "lease lost"},
    {EndCause::kLaunchFailed, "launch failed"},
    {EndCause::kStartFailed, "start failed"},
    {EndCause::kExitUnreadable, "exit record unreadable"},
    {EndCause::kSupervisorGone, "supervisor gone"},
};

std::string Signal(int sig) {
  const char* s = strsignal(sig);
  return "killed by signal " + std::to_string(sig) + " (" + (s ? s : "?") + ")";
}

}  // namespace

const char* FailureClassName(FailureClass c) {
  return c == FailureClass::kPermanent ? "permanent" : "transient";
}

const char* CauseName(Cause c) { return Row(c).name; }

Cause CauseFromName(std::string_view name) {
  for (const auto& r : kCauses) {
    if (name == r.name) return r.cause;
  }
  return Cause::kUnknown;
}

FailureClass ClassOf(Cause c) { return Row(c).cls; }

Cause CauseOfStatus(StatusCode code) {
  switch (code) {
    case StatusCode::kInvalidArgument: return Cause::kBadInput;
    case StatusCode::kNotFound: return Cause::kMissingInput;
    case StatusCode::kFailedPrecondition: return Cause::kIncompatible;
    case StatusCode::kDataLoss: return Cause::kCorruptState;
    case StatusCode::kResourceExhausted: return Cause::kOutOfMemory;
    case StatusCode::kDeadlineExceeded:
    case StatusCode::kUnavailable: return Cause::kCommFailure;
    case StatusCode::kCancelled: return Cause::kPreempted;
    default: return Cause::kError;
  }
}

TrainExit ExitFor(Cause cause) {
  return Retryable(cause) ? TrainExit::kFailed : TrainExit::kPermanent;
}

// ---- RankFailure ----

json RankFailure::ToJson() const {
  return {
      {"rank", rank},   {"cause", CauseName(cause)}, {"class", FailureClassName(ClassOf(cause))},
      {"phase", phase}, {"message", message},        {"host", host},
      {"pid", pid},     {"unix_ms", unix_ms}};
}

StatusOr<RankFailure> RankFailure::FromJson(const json& j) {
  if (!j.is_object()) return DataLossError("a rank failure record: not a JSON object");
  RankFailure f;
  std::string cause;
  for (const auto& [ok, key] : {std::pair{GetField(j, "rank", &f.rank), "rank"},
                                {GetField(j, "cause", &cause), "cause"},
                                {GetField(j, "phase", &f.phase), "phase"},
                                {GetField(j, "message", &f.message), "message"},
                                {GetField(j, "host", &f.host), "host"},
                                {GetField(j, "pid", &f.pid), "pid"},
                                {GetField(j, "unix_ms", &f.unix_ms), "unix_ms"}}) {
    if (!ok)
      return DataLossError(std::string("a rank failure record: \"") + key +
                           "\" has the wrong type");
  }
  if (!j.contains("rank") || !j.contains("cause")) {
    return DataLossError("a rank failure record: \"rank\" and \"cause\" are required");
  }
  f.cause = CauseFromName(cause);
  return f;
}

std::string RankFailure::Describe() const {
  std::string where = "rank " + std::to_string(rank);
  if (!host.empty()) where += " (host " + host + ", pid " + std::to_string(pid) + ")";
  return where + " failed" + (phase.empty() ? "" : " in " + phase) + ": " + message + " [" +
         CauseName(cause) + "]";
}

Status WriteRankFailure(const std::string& out_dir, const RankFailure& f) {
  std::error_code ec;
  std::filesystem::create_directories(run_dir::RanksDir(out_dir), ec);
  return WriteFileAtomic(run_dir::RankFailure(out_dir, f.rank), SafeDump(f.ToJson()) + "\n");
}

std::optional<RankFailure> FirstRankFailure(const std::string& out_dir, int64_t not_before_ms) {
  std::optional<RankFailure> first;
  std::error_code ec;
  const std::string dir = run_dir::RanksDir(out_dir);
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("failure-", 0) != 0 || e.path().extension() != ".json") continue;
    auto text = ReadSmallFile(e.path().string(), 64 << 10);
    if (!text.ok()) continue;
    auto f = RankFailure::FromJson(ParseJson(*text));
    if (!f.ok() || f->unix_ms < not_before_ms) continue;
    // A communication failure is mostly another rank's doing (it hung, died, or failed in a
    // collective check): any other cause comes first, whatever the clocks say.
    auto key = [](const RankFailure& x) {
      return std::make_tuple(x.cause == Cause::kCommFailure ? 1 : 0, x.unix_ms, x.rank);
    };
    if (!first || key(*f) < key(*first)) first = *f;
  }
  return first;
}

// ---- AttemptExit ----

const char* EndCauseName(EndCause c) {
  for (const auto& r : kEnds) {
    if (r.cause == c) return r.name;
  }
  return "";
}

json AttemptExit::ToJson() const {
  json j = {{"exit_code", exit_code},
            {"signal", signal},
            {"cause", EndCauseName(cause)},
            {"ended_ms", ended_ms}};
  if (!detail.empty()) j["detail"] = detail;
  return j;
}

StatusOr<AttemptExit> AttemptExit::FromJson(const json& j) {
  if (!j.is_object()) return DataLossError("not a JSON object");
  AttemptExit x;
  std::string cause;
  for (const auto& [ok, key] : {std::pair{GetField(j, "exit_code", &x.exit_code), "exit_code"},
                                {GetField(j, "signal", &x.signal), "signal"},
                                {GetField(j, "cause", &cause), "cause"},
                                {GetField(j, "detail", &x.detail), "detail"},
                                {GetField(j, "ended_ms", &x.ended_ms), "ended_ms"}}) {
    if (!ok) return DataLossError(std::string("\"") + key + "\" has the wrong type");
  }
  // Earlier builds wrote "launch failed: <detail>" in one field.
  const size_t colon = cause.find(": ");
  if (colon != std::string::npos && x.detail.empty()) {
    x.detail = cause.substr(colon + 2);
    cause.resize(colon);
  }
  bool known = false;
  for (const auto& r : kEnds) {
    if (cause == r.name) {
      x.cause = r.cause;
      known = true;
    }
  }
  if (!known) return DataLossError("\"cause\" is not one of the known ends: '" + cause + "'");
  return x;
}

std::string AttemptExit::Describe() const {
  return signal ? Signal(signal) : "exit status " + std::to_string(exit_code);
}

// ---- the classification table ----

AttemptVerdict ClassifyEnd(const AttemptFacts& f) {
  AttemptVerdict v;
  const AttemptExit& x = f.exit;
  auto verdict = [&](Cause c, std::string reason, bool preempted = false) {
    v.cause = c;
    v.retryable = Retryable(c);
    v.preempted = preempted;
    v.reason = std::move(reason);
    return v;
  };
  // 1. The agent itself failed with this job: final, whatever the ranks did.
  if (!f.agent_error.empty()) return verdict(Cause::kAgentError, f.agent_error);
  // 2. Nothing ran, or nothing can be known of the run.
  switch (x.cause) {
    case EndCause::kLaunchFailed:
      return verdict(Cause::kLaunchRefused, "launch refused: " + x.detail);
    case EndCause::kStartFailed: return verdict(Cause::kStartFailed, "start failed: " + x.detail);
    case EndCause::kExitUnreadable:
      return verdict(Cause::kExitUnreadable, "exit record unreadable: " + x.detail);
    case EndCause::kSupervisorGone:
      return verdict(Cause::kNodeFailure,
                     "the attempt's supervisor is gone and left no exit record (" + x.Describe() +
                         "): the node restarted or it was killed");
    default: break;
  }
  // 3. The ranks finished: a success, or a permanent failure they reported, stands even when
  //    a stop came at the same time.
  if (x.exit_code == static_cast<int>(TrainExit::kSucceeded)) {
    v.success = true;
    v.cause = Cause::kUnknown;
    return v;
  }
  const bool permanent_record = f.failure && !Retryable(f.failure->cause);
  // 4. Stopped by the agent or its lease: whatever a rank wrote while being stopped (a peer's
  //    comm failure) is a consequence.
  if (!permanent_record) {
    if (x.cause == EndCause::kLeaseLost) {
      return verdict(Cause::kLeaseLost,
                     "the agent lost its lease; the ranks were stopped (" + x.Describe() + ")");
    }
    if ((x.cause == EndCause::kStopped && f.stopped_by_agent) ||
        (x.cause == EndCause::kNone && x.exit_code == static_cast<int>(TrainExit::kStopped))) {
      // Stopped because this agent stops, or by someone else's SIGTERM (a Slurm preemption
      // signals the steps itself): rmgen-train checkpointed.
      return verdict(Cause::kPreempted,
                     (x.cause == EndCause::kNone ? "stopped by a signal from outside ("
                                                 : "the agent stopped (") +
                         x.Describe() + ")",
                     true);
    }
  }
  // 5. A rank said why.
  if (f.failure) {
    v = verdict(f.failure->cause, f.failure->Describe() + " (" + x.Describe() + ")");
    v.failed_rank = f.failure->rank;
    return v;
  }
  // 6. Only the exit status.
  if (x.signal) return verdict(Cause::kRankKilled, x.Describe());
  if (x.exit_code == static_cast<int>(TrainExit::kPermanent)) {
    return verdict(Cause::kInvalidSpec, x.Describe() + " (invalid spec or input)");
  }
  return verdict(Cause::kError, x.Describe());
}

}  // namespace rmgen
