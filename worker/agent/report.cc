// The end of an attempt: watching it, classifying how it ended (jobspec/outcome.h) into
// the CompleteJob report, and reporting it (agent_impl.h).
#include <fcntl.h>
#include <google/protobuf/util/json_util.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <thread>

#include "common/file.h"
#include "common/limits.h"
#include "common/utf8.h"
#include "jobspec/run_dir.h"
#include "worker/agent/agent_impl.h"
#include "worker/agent/supervisor.h"

namespace rmgen::agent {

namespace fs = std::filesystem;

// The CompleteJob request for an attempt that ended as `x` (its strings valid UTF-8 and
// bounded: reason kReasonBytes, log tail LogTail's).
pb::CompleteJobRequest Agent::Impl::EndReport(const Attempt& a, const AttemptExit& x) {
  pb::CompleteJobRequest req;
  req.set_job_id(a.job_id);
  req.set_attempt(a.attempt);
  req.set_worker_id(o.id);
  req.set_session(Session());
  AttemptFacts facts;
  facts.exit = x;
  // The agent removed every failure record before it launched the attempt; one older than
  // the attempt (a minute of slack for other nodes' clocks) is not this attempt's anyway.
  facts.failure = FirstRankFailure(a.out_dir, a.started_ms > 0 ? a.started_ms - 60'000 : 0);
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
    } else if (!text.ok() && text.status().code() == StatusCode::kNotFound) {
      // No metrics.json at all: a launcher that reports success for ranks it never started
      // (srun does, when a step fails to launch) more likely than a rank program that ends
      // well without writing one. Another attempt may do better.
      v.cause = Cause::kError;
      v.retryable = true;
      v.reason =
          "the ranks exited 0 but left no " + path + " (did the launcher start them? see the log)";
    } else {
      v.reason =
          "the ranks exited 0 but left no readable " + path +
          (text.ok() ? std::string(" (not a JSON object)") : " (" + text.status().message() + ")");
    }
    req.clear_metrics();
  }
  const std::string reason = v.reason;
  req.set_retryable(v.retryable);
  req.set_preempted(v.preempted);
  req.set_cause(CauseName(v.cause));
  if (v.failed_rank >= 0) req.set_failed_rank(v.failed_rank);
  if (!req.success()) {
    req.set_reason(SanitizeUtf8(reason, kReasonBytes));
    for (auto& l : LogTail(a.log)) req.add_log_tail(std::move(l));
  }
  return req;
}

std::string Agent::Impl::Outcome(const pb::CompleteJobRequest& req,
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
bool Agent::Impl::Finish(const std::shared_ptr<Attempt>& a, const AttemptExit& x) {
  if (!a->summarized && (a->skipped_lines > 0 || a->refused_events > 0)) {
    // In the job's log before its tail is read for the report.
    const std::string counts = std::to_string(a->skipped_lines) +
                               " events.jsonl line(s) skipped, " +
                               std::to_string(a->refused_events) + " event(s) refused";
    NoteInJobLog(*a, counts);
    Log("job " + a->job_id + " attempt " + std::to_string(a->attempt) + ": " + counts);
  }
  a->summarized = true;
  if (a->cancelled) return MarkReported(a, "other", "cancelled");
  pb::CompleteJobRequest req = EndReport(*a, x);
  pb::CompleteJobResponse resp;
  if (!a->minimal_report) {
    auto c = Ctx(10'000);
    grpc::Status s = stub->CompleteJob(c.get(), req, &resp);
    if (s.ok()) return MarkReported(a, OutcomeKind(req), Outcome(req, resp));
    if (Later(s, req.session())) return false;
    if (Stale(s)) return MarkReported(a, "not recorded", "not recorded: " + Error(s));
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
  if (s.ok()) return MarkReported(a, OutcomeKind(req), Outcome(req, resp));
  if (Later(s, req.session())) return false;
  return MarkReported(a, "not recorded", "not recorded: " + Error(s));
}

const char* Agent::Impl::OutcomeKind(const pb::CompleteJobRequest& req) {
  return req.success() ? "succeeded" : req.preempted() ? "preempted" : "failed";
}

bool Agent::Impl::MarkReported(const std::shared_ptr<Attempt>& a, const char* kind,
                               const std::string& outcome) {
  a->reported = true;
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
void Agent::Impl::Watch(const std::shared_ptr<Attempt>& a) {
  if (a->preempted && !a->preempted_saved) {
    (void)a->Save();  // a restarted agent still knows why the attempt stopped
    a->preempted_saved = true;
  }
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
void Agent::Impl::Broken(const std::shared_ptr<Attempt>& a, const std::string& what) {
  if (a->broken.empty()) {
    a->broken = SanitizeUtf8("the agent failed handling this job: " + what, kReasonBytes);
    Log("job " + a->job_id + " attempt " + std::to_string(a->attempt) + ": " + a->broken +
        "; stopping its ranks");
    (void)SignalSupervisor(a->supervisor, a->tag);
    return;
  }
  try {
    MarkReported(a, "not recorded", "not recorded: " + what);
  } catch (const std::exception&) {
    std::lock_guard<std::mutex> l(m);
    a->reported = true;
    auto it = live.find(a->job_id);
    if (it != live.end() && it->second == a) live.erase(it);
  }
}

void Agent::Impl::Monitor() {
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

}  // namespace rmgen::agent
