// The job contract's outcome types (jobspec/outcome.h): the cause table, the status-code
// mapping, rank failure records, exit.json, and the table that turns how an attempt ended
// into a cause, a class and a retry decision.
#include "jobspec/outcome.h"

#include <gtest/gtest.h>
#include <signal.h>

#include <set>

#include "common/file.h"
#include "jobspec/events.h"
#include "jobspec/run_dir.h"
#include "tests/test_util.h"

namespace rmgen {
namespace {

using nlohmann::json;

TEST(CauseTable, EveryCauseHasAUniqueNameThatReadsBackAndAClass) {
  std::set<std::string> names;
  for (int i = 0; i < kCauseCount; ++i) {
    const Cause c = static_cast<Cause>(i);
    const std::string name = CauseName(c);
    EXPECT_FALSE(name.empty());
    EXPECT_TRUE(names.insert(name).second) << "duplicate name " << name;
    EXPECT_EQ(CauseFromName(name), c) << name;
  }
  EXPECT_EQ(CauseFromName("no such cause"), Cause::kUnknown);
  EXPECT_EQ(CauseFromName(""), Cause::kUnknown);
}

TEST(CauseTable, TheIssuesPermanentAndTransientFailures) {
  const struct {
    Cause cause;
    FailureClass cls;
  } rows[] = {
      {Cause::kInvalidSpec, FailureClass::kPermanent},
      {Cause::kBadInput, FailureClass::kPermanent},
      {Cause::kMissingInput, FailureClass::kPermanent},
      {Cause::kIncompatible, FailureClass::kPermanent},
      {Cause::kCorruptState, FailureClass::kPermanent},
      {Cause::kNoDevice, FailureClass::kPermanent},
      {Cause::kLaunchRefused, FailureClass::kPermanent},
      {Cause::kBadResult, FailureClass::kPermanent},
      {Cause::kAgentError, FailureClass::kPermanent},
      {Cause::kPreempted, FailureClass::kTransient},
      {Cause::kLeaseLost, FailureClass::kTransient},
      {Cause::kRankKilled, FailureClass::kTransient},
      {Cause::kCommFailure, FailureClass::kTransient},
      {Cause::kNodeFailure, FailureClass::kTransient},
      {Cause::kStartFailed, FailureClass::kTransient},
      {Cause::kError, FailureClass::kTransient},
      {Cause::kUnknown, FailureClass::kTransient},
  };
  for (const auto& r : rows) {
    EXPECT_EQ(ClassOf(r.cause), r.cls) << CauseName(r.cause);
    EXPECT_EQ(ExitFor(r.cause),
              r.cls == FailureClass::kPermanent ? TrainExit::kPermanent : TrainExit::kFailed)
        << CauseName(r.cause);
  }
}

TEST(CauseTable, StatusCodesMapToCauses) {
  const std::pair<StatusCode, Cause> rows[] = {
      {StatusCode::kInvalidArgument, Cause::kBadInput},
      {StatusCode::kNotFound, Cause::kMissingInput},
      {StatusCode::kFailedPrecondition, Cause::kIncompatible},
      {StatusCode::kDataLoss, Cause::kCorruptState},
      {StatusCode::kResourceExhausted, Cause::kOutOfMemory},
      {StatusCode::kDeadlineExceeded, Cause::kCommFailure},
      {StatusCode::kUnavailable, Cause::kCommFailure},
      {StatusCode::kInternal, Cause::kError},
  };
  for (const auto& [code, cause] : rows) {
    EXPECT_EQ(CauseOfStatus(code), cause) << static_cast<int>(code);
  }
}

TEST(RankFailureRecord, RoundTripsAndRefusesWrongTypes) {
  RankFailure f;
  f.rank = 3;
  f.cause = Cause::kCorruptState;
  f.phase = "load";
  f.message = "trainer_state.json: corrupt";
  f.host = "node7";
  f.pid = 4242;
  f.unix_ms = 1234567;
  auto back = RankFailure::FromJson(f.ToJson());
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->rank, 3);
  EXPECT_EQ(back->cause, Cause::kCorruptState);
  EXPECT_EQ(back->phase, "load");
  EXPECT_EQ(back->message, f.message);
  EXPECT_EQ(back->unix_ms, 1234567);
  EXPECT_EQ(f.ToJson()["class"], "permanent");
  EXPECT_EQ(f.Describe(),
            "rank 3 (host node7, pid 4242) failed in load: trainer_state.json: corrupt "
            "[corrupt_state]");
  json bad = f.ToJson();
  bad["rank"] = "3";
  auto refused = RankFailure::FromJson(bad);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("\"rank\""), std::string::npos);
  EXPECT_FALSE(RankFailure::FromJson(json::array()).ok());
  EXPECT_FALSE(RankFailure::FromJson(json{{"rank", 1}}).ok());  // no cause
}

TEST(RankFailureRecord, TheFirstFailureOfThisAttemptIsTheEarliest) {
  testing::TempDir dir;
  const std::string out = dir.path();
  EXPECT_FALSE(FirstRankFailure(out, 0).has_value());  // no ranks folder
  auto write = [&](int rank, int64_t ms, Cause cause) {
    RankFailure f;
    f.rank = rank;
    f.cause = cause;
    f.unix_ms = ms;
    ASSERT_TRUE(WriteRankFailure(out, f).ok());
  };
  write(0, 5000, Cause::kCommFailure);  // rank 0 saw rank 1's failure later
  write(1, 4000, Cause::kBadInput);
  write(2, 900, Cause::kError);  // an earlier attempt's
  ASSERT_TRUE(WriteFileAtomic(run_dir::RankFailure(out, 3), "{not json").ok());
  auto f = FirstRankFailure(out, 1000);
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->rank, 1);
  EXPECT_EQ(f->cause, Cause::kBadInput);
  write(4, 4000, Cause::kError);  // the same moment: the lower rank
  EXPECT_EQ(FirstRankFailure(out, 1000)->rank, 1);
  EXPECT_EQ(FirstRankFailure(out, 0)->rank, 2);
  EXPECT_FALSE(FirstRankFailure(out, 6000).has_value());
}

TEST(AttemptExitRecord, RoundTripsAndReadsEarlierBuildsRecords) {
  AttemptExit x;
  x.exit_code = -1;
  x.cause = EndCause::kLaunchFailed;
  x.detail = "job j: ranks must be >= 1, got 0";
  x.ended_ms = 99;
  auto back = AttemptExit::FromJson(x.ToJson());
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->cause, EndCause::kLaunchFailed);
  EXPECT_EQ(back->detail, x.detail);
  // An exit.json of an earlier build: the detail after the cause, in one field.
  auto old = AttemptExit::FromJson(
      {{"exit_code", -1}, {"signal", 0}, {"cause", "start failed: disk full"}, {"ended_ms", 1}});
  ASSERT_TRUE(old.ok()) << old.status().ToString();
  EXPECT_EQ(old->cause, EndCause::kStartFailed);
  EXPECT_EQ(old->detail, "disk full");
  auto plain = AttemptExit::FromJson({{"exit_code", 3}, {"signal", 0}, {"cause", "lease lost"}});
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(plain->cause, EndCause::kLeaseLost);
  EXPECT_FALSE(AttemptExit::FromJson({{"exit_code", 1}, {"cause", "gremlins"}}).ok());
  EXPECT_FALSE(AttemptExit::FromJson({{"exit_code", "1"}}).ok());
  EXPECT_FALSE(AttemptExit::FromJson(json("x")).ok());
}

// The classification table, row by row.
TEST(ClassifyEnd, EachWayAnAttemptEndsHasOneCauseAndOneDecision) {
  auto exit_with = [](int code, int sig = 0, EndCause cause = EndCause::kNone) {
    AttemptExit x;
    x.exit_code = code;
    x.signal = sig;
    x.cause = cause;
    x.detail = "detail";
    return x;
  };
  auto failure = [](int rank, Cause cause) {
    RankFailure f;
    f.rank = rank;
    f.cause = cause;
    f.phase = "eval";
    f.message = "boom";
    return f;
  };
  struct Row {
    const char* what;
    AttemptFacts facts;
    Cause cause;
    bool retryable, preempted;
    int failed_rank;
  };
  std::vector<Row> rows;
  auto add = [&](const char* what, AttemptExit x, std::optional<RankFailure> f, bool stopping,
                 std::string agent_error, Cause cause, bool retryable, bool preempted,
                 int rank = -1) {
    AttemptFacts facts;
    facts.exit = x;
    facts.failure = f;
    facts.stopped_by_agent = stopping;
    facts.agent_error = std::move(agent_error);
    rows.push_back({what, facts, cause, retryable, preempted, rank});
  };
  add("the agent failed", exit_with(0), std::nullopt, false, "bug", Cause::kAgentError, false,
      false);
  add("launcher refused", exit_with(-1, 0, EndCause::kLaunchFailed), std::nullopt, false, "",
      Cause::kLaunchRefused, false, false);
  add("could not start", exit_with(-1, 0, EndCause::kStartFailed), std::nullopt, false, "",
      Cause::kStartFailed, true, false);
  add("exit.json damaged", exit_with(-1, 0, EndCause::kExitUnreadable), std::nullopt, false, "",
      Cause::kExitUnreadable, true, false);
  add("supervisor vanished", exit_with(-1, SIGKILL, EndCause::kSupervisorGone), std::nullopt, false,
      "", Cause::kNodeFailure, true, false);
  add("lease lost", exit_with(3, 0, EndCause::kLeaseLost), std::nullopt, false, "",
      Cause::kLeaseLost, true, false);
  add("lease lost, a peer's comm failure written meanwhile", exit_with(1, 0, EndCause::kLeaseLost),
      failure(0, Cause::kCommFailure), false, "", Cause::kLeaseLost, true, false);
  add("lease lost while a rank failed for good", exit_with(2, 0, EndCause::kLeaseLost),
      failure(1, Cause::kBadInput), false, "", Cause::kBadInput, false, false, 1);
  add("the agent stops", exit_with(3, 0, EndCause::kStopped), std::nullopt, true, "",
      Cause::kPreempted, true, true);
  add("a SIGTERM from outside (Slurm)", exit_with(3), std::nullopt, false, "", Cause::kPreempted,
      true, true);
  add("rank 1 bad input", exit_with(2), failure(1, Cause::kBadInput), false, "", Cause::kBadInput,
      false, false, 1);
  add("rank 1 corrupt state", exit_with(2), failure(1, Cause::kCorruptState), false, "",
      Cause::kCorruptState, false, false, 1);
  add("rank 0 no device", exit_with(2), failure(0, Cause::kNoDevice), false, "", Cause::kNoDevice,
      false, false, 0);
  add("rank 0 saw a timeout", exit_with(1), failure(0, Cause::kCommFailure), false, "",
      Cause::kCommFailure, true, false, 0);
  add("killed by a signal", exit_with(-1, SIGKILL), std::nullopt, false, "", Cause::kRankKilled,
      true, false);
  add("exit 2 without a record (usage)", exit_with(2), std::nullopt, false, "", Cause::kInvalidSpec,
      false, false);
  add("exit 1 without a record", exit_with(1), std::nullopt, false, "", Cause::kError, true, false);
  add("a newer rank's cause", exit_with(1), failure(0, Cause::kUnknown), false, "", Cause::kUnknown,
      true, false, 0);
  for (const Row& r : rows) {
    SCOPED_TRACE(r.what);
    const AttemptVerdict v = ClassifyEnd(r.facts);
    EXPECT_FALSE(v.success);
    EXPECT_EQ(CauseName(v.cause), std::string(CauseName(r.cause)));
    EXPECT_EQ(v.retryable, r.retryable);
    EXPECT_EQ(v.preempted, r.preempted);
    EXPECT_EQ(v.failed_rank, r.failed_rank);
    EXPECT_FALSE(v.reason.empty());
  }
  AttemptFacts ok;
  ok.exit = exit_with(0, 0, EndCause::kStopped);  // finished while being stopped
  EXPECT_TRUE(ClassifyEnd(ok).success);
  AttemptFacts named;
  named.exit = exit_with(2);
  named.failure = failure(1, Cause::kBadInput);
  EXPECT_EQ(ClassifyEnd(named).reason, "rank 1 failed in eval: boom [bad_input] (exit status 2)");
}

TEST(StepProgressSchema, ReadsATrainingStepAndNothingElse) {
  auto p = StepProgress::From(json{
      {"step", 7}, {"total_steps", 10}, {"loss", 0.25}, {"tokens/s", 1000.5}, {"eta_s", "soon"}});
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->step, 7);
  EXPECT_EQ(p->total_steps, 10);
  EXPECT_DOUBLE_EQ(p->loss, 0.25);
  EXPECT_DOUBLE_EQ(*p->tokens_per_s, 1000.5);
  EXPECT_FALSE(p->eta_s.has_value());  // not a number
  EXPECT_FALSE(p->pairs_per_s.has_value());
  EXPECT_FALSE(StepProgress::From(json{{"step", 7}}).has_value());  // no loss
  EXPECT_FALSE(StepProgress::From(json{{"step", 7.5}, {"loss", 1}}).has_value());
  EXPECT_FALSE(StepProgress::From(json{{"attempt_failed", 1}, {"reason", "x"}}).has_value());
  EXPECT_FALSE(StepProgress::From(json::array({1, 2})).has_value());
}

}  // namespace
}  // namespace rmgen
