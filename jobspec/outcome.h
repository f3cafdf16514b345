// How a job attempt ends, as the rank program, the supervisor, the agent and the coordinator
// tell each other: typed, so that no party matches another's message text.
//
//   rmgen-train   exits with a TrainExit; a rank that fails writes OUT/ranks/failure-R.json
//                 (RankFailure: its cause, phase and message) before it ends the job
//   supervisor    writes ATTEMPT/exit.json (AttemptExit: exit status, signal, EndCause)
//   agent         ClassifyEnd(exit, first rank failure, ...) -> the cause, its class and the
//                 reason it reports (CompleteJobRequest.cause, a CauseName)
//   coordinator   retries a transient cause and ends the job at once on a permanent one
//
// Failure classes: a permanent cause would fail the same way on any attempt (an invalid spec,
// bad or missing input, an incompatible or corrupt checkpoint, no CUDA device); a transient
// one may not (a killed rank, a lost lease, a communication timeout, a node failure).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "common/status.h"

namespace rmgen {

// rmgen-train's exit status.
enum class TrainExit : int {
  kSucceeded = 0,  // metrics.json written
  kFailed = 1,     // a transient failure: another attempt may succeed
  kPermanent = 2,  // usage, an invalid spec, or input that is missing, invalid or incompatible
  kStopped = 3,    // stopped early (SIGTERM, --stop-after-steps) with a checkpoint
};

enum class FailureClass { kTransient, kPermanent };
const char* FailureClassName(FailureClass c);

// Why an attempt did not succeed. Names (CauseName) are the wire form: stable, snake_case.
enum class Cause {
  kUnknown,  // a name this build does not know (a newer peer): treated as transient
  // Permanent.
  kInvalidSpec,    // the spec does not validate, or rmgen-train was called wrongly
  kBadInput,       // a dataset, tokenizer or model file that is there but not valid
  kMissingInput,   // a dataset, checkpoint or tokenizer that is not there
  kIncompatible,   // a checkpoint of another spec or shape; a resume that cannot match
  kCorruptState,   // trainer_state.json or another record of the run is damaged
  kNoDevice,       // runtime.device asks for CUDA and none is usable on the node
  kOutOfMemory,    // the job does not fit the device or host memory
  kLaunchRefused,  // the launcher cannot run the job (for example, more ranks than it has)
  kBadResult,      // the ranks exited 0 without readable metrics, or too large ones
  kAgentError,     // the agent failed handling the job
  // Transient.
  kError,           // an unexpected error in a rank
  kCommFailure,     // a collective failed or timed out: a peer rank died, hung or lost its link
  kRankKilled,      // a rank or the launcher ended by a signal (OOM killer, node failure)
  kPreempted,       // stopped by its agent or by the cluster (Slurm), with a checkpoint
  kLeaseLost,       // the agent lost its lease; the ranks were stopped
  kNodeFailure,     // the attempt's supervisor vanished without a record (node restart)
  kStartFailed,     // this node could not start the attempt (disk, fork)
  kExitUnreadable,  // the attempt's exit record is damaged
};
inline constexpr int kCauseCount = static_cast<int>(Cause::kExitUnreadable) + 1;

const char* CauseName(Cause c);
// kUnknown for a name not in the table.
Cause CauseFromName(std::string_view name);
FailureClass ClassOf(Cause c);
inline bool Retryable(Cause c) { return ClassOf(c) == FailureClass::kTransient; }

// The cause of an error the rank program returned, by its status code: INVALID_ARGUMENT ->
// bad input, NOT_FOUND -> missing input, FAILED_PRECONDITION -> incompatible, DATA_LOSS ->
// corrupt state, RESOURCE_EXHAUSTED -> out of memory, DEADLINE_EXCEEDED and UNAVAILABLE ->
// communication failure, anything else -> error. (kNoDevice and kInvalidSpec are set by
// the places that know.)
Cause CauseOfStatus(StatusCode code);
// The exit status for a failure of `cause`: kPermanent or kFailed.
TrainExit ExitFor(Cause cause);

// OUT/ranks/failure-R.json: one rank's failure, written before it ends the job.
struct RankFailure {
  int rank = 0;
  Cause cause = Cause::kError;
  std::string phase;  // setup, load, reference, broadcast, step, eval, checkpoint, finish
  std::string message;
  std::string host;
  int64_t pid = 0;
  int64_t unix_ms = 0;  // when it was written
  nlohmann::json ToJson() const;
  // DataLoss naming the field when `j` is not one (never throws).
  static StatusOr<RankFailure> FromJson(const nlohmann::json& j);
  // "rank 1 (host h, pid 7) failed in eval: <message> [bad_input]"
  std::string Describe() const;
};
Status WriteRankFailure(const std::string& out_dir, const RankFailure& f);
// The failure that ended the job, of those written under OUT/ranks at or after
// `not_before_ms`: the earliest (then the lowest rank) other than a communication failure,
// else the earliest communication failure (a rank that saw a collective fail or time out,
// or learned that another rank failed: a consequence); nullopt when there is none.
// Unreadable records are skipped.
std::optional<RankFailure> FirstRankFailure(const std::string& out_dir, int64_t not_before_ms);

// ATTEMPT/exit.json, written by the supervisor (or by the agent when nothing started).
enum class EndCause {
  kNone,            // the launcher ended by itself
  kStopped,         // the supervisor was told to stop (SIGTERM from the agent)
  kLeaseLost,       // the lease file's deadline passed, or it stayed unreadable
  kLaunchFailed,    // the launcher refused the job: nothing started
  kStartFailed,     // this node could not start it (spec not written, fork failed)
  kExitUnreadable,  // exit.json was there but damaged (the agent's reading)
  kSupervisorGone,  // neither a supervisor nor exit.json (the agent's reading)
};
const char* EndCauseName(EndCause c);
struct AttemptExit {
  int exit_code = -1;  // -1 when ended by a signal
  int signal = 0;
  EndCause cause = EndCause::kNone;
  std::string detail;  // what went wrong, for kLaunchFailed, kStartFailed, kExitUnreadable
  int64_t ended_ms = 0;
  nlohmann::json ToJson() const;
  // DataLoss naming the field (never throws). Accepts the exit.json of earlier builds, whose
  // "cause" carried the detail after a colon.
  static StatusOr<AttemptExit> FromJson(const nlohmann::json& j);
  // "exit status 1" or "killed by signal 9 (Killed)".
  std::string Describe() const;
};

// What the agent knows when an attempt that did not succeed has ended.
struct AttemptFacts {
  AttemptExit exit;
  std::optional<RankFailure> failure;  // FirstRankFailure of the attempt
  bool stopped_by_agent = false;       // the agent was stopping (shutdown, preemption)
  std::string agent_error;             // non-empty: the agent failed handling the job
};
struct AttemptVerdict {
  bool success = false;  // exit 0: the caller still checks metrics.json (kBadResult)
  Cause cause = Cause::kUnknown;
  bool retryable = false;
  bool preempted = false;  // requeued without using up an attempt
  int failed_rank = -1;    // the rank whose failure ended the job, when one is known
  std::string reason;
};
// The table of how an attempt ended (see outcome.cc): the agent's failure first, then what the
// launch and the lease say, then a rank's own failure record, then the exit status.
AttemptVerdict ClassifyEnd(const AttemptFacts& facts);

}  // namespace rmgen
