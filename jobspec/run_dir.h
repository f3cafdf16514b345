// The run directory: what rmgen-train writes into a job's output folder (--out), and what the
// agent keeps per attempt. The coordinator, the agent and the rank program name these files
// only through this header.
//
//   OUT/spec.resolved.json          the spec with every default filled in (rank 0)
//   OUT/events.jsonl                one step event per line (events.h)
//   OUT/metrics.json                the final metrics (rank 0, at success)
//   OUT/checkpoint/                 the model, trainer_state.json, optimizer.safetensors
//   OUT/checkpoint.tmp/ .old/       a checkpoint being swapped in (checkpoint.h)
//   OUT/ranks/rank-R.json           rank R's progress: step, phase, pid, host, time
//   OUT/ranks/failure-R.json        rank R's failure, written before it ends the job
//                                   (outcome.h, RankFailure)
//   OUT/logs/attempt-N.log          the ranks' stdout and stderr of attempt N (the agent)
//
//   ATTEMPT/spec.json               the spec the agent hands to the ranks
//   ATTEMPT/exit.json               how the attempt ended (outcome.h, AttemptExit)
#pragma once

#include <cstdint>
#include <string>

namespace rmgen::run_dir {

inline constexpr const char* kSpecResolved = "spec.resolved.json";
inline constexpr const char* kEvents = "events.jsonl";
inline constexpr const char* kMetrics = "metrics.json";
inline constexpr const char* kCheckpoint = "checkpoint";
inline constexpr const char* kCheckpointTmp = "checkpoint.tmp";
inline constexpr const char* kCheckpointOld = "checkpoint.old";
inline constexpr const char* kTrainerState = "trainer_state.json";
inline constexpr const char* kOptimizer = "optimizer.safetensors";
inline constexpr const char* kRanks = "ranks";
inline constexpr const char* kLogs = "logs";
inline constexpr const char* kAttemptSpec = "spec.json";
inline constexpr const char* kExit = "exit.json";
// Generate and annotate jobs: the rows each rank finished (appended as it goes, kept across
// attempts: a resumed job skips them), and the merged outputs.
inline constexpr const char* kParts = "parts";
inline constexpr const char* kGenerations = "generations.jsonl";
inline constexpr const char* kAnnotatedPairs = "pairs.jsonl";
inline constexpr const char* kAlpacaEval = "alpaca_eval.json";
// Where a job's reference log-probs are cached when its spec names no folder: beside the
// job folders (OUT/../ref-cache), shared by the jobs of a study.
inline constexpr const char* kRefCache = "ref-cache";

inline std::string Join(const std::string& dir, const std::string& name) {
  return dir.empty() ? name : (dir.back() == '/' ? dir + name : dir + "/" + name);
}
inline std::string Checkpoint(const std::string& out) { return Join(out, kCheckpoint); }
inline std::string TrainerState(const std::string& out) {
  return Join(Checkpoint(out), kTrainerState);
}
inline std::string Events(const std::string& out) { return Join(out, kEvents); }
inline std::string Metrics(const std::string& out) { return Join(out, kMetrics); }
inline std::string RanksDir(const std::string& out) { return Join(out, kRanks); }
inline std::string RankProgress(const std::string& out, int rank) {
  return Join(RanksDir(out), "rank-" + std::to_string(rank) + ".json");
}
inline std::string RankFailure(const std::string& out, int rank) {
  return Join(RanksDir(out), "failure-" + std::to_string(rank) + ".json");
}
inline std::string AttemptLog(const std::string& out, int64_t attempt) {
  return Join(Join(out, kLogs), "attempt-" + std::to_string(attempt) + ".log");
}
// A study's reference to another job's checkpoint: "${output:JOB}/checkpoint".
inline std::string OutputCheckpointRef(const std::string& job) {
  return "${output:" + job + "}/" + kCheckpoint;
}

}  // namespace rmgen::run_dir
