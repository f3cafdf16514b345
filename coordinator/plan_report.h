// What a study would run, job by job, without running it (`rmgen plan`): for every job the
// planner makes, its kind, model, ranks, batch (per rank, accumulation, global), steps,
// learning rate and schedule, precision and memory settings, and where known the per-rank
// memory estimate and whether it fits the known workers.
//
// Batch arithmetic (jobspec/spec.h): global micro-batch = per_rank_batch_size x ranks;
// global batch = global micro-batch x gradient_accumulation; steps per epoch =
// ceil(ceil(pairs / global micro-batch) / gradient_accumulation), as rmgen-train counts them.
#pragma once

#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "coordinator/model.h"
#include "coordinator/study.h"

namespace rmgen::coord {

struct PlanReportOptions {
  // The training pairs a job's `data` section selects (after the adapter's drops, before
  // tokenization), or an error saying why they cannot be counted here. Unset: not counted.
  std::function<StatusOr<int64_t>(const nlohmann::json& data)> count_pairs;
  // The per-rank memory plan of a job: {"total_bytes", ..., "fits", "advice"}. Unset: none.
  std::function<nlohmann::json(const JobRecord& job)> memory;
};

// One entry per job, in plan order: {"name", "kind", "model", "method", "seed", "ranks",
// "per_rank_batch", "gradient_accumulation", "global_micro_batch", "global_batch",
// "train_pairs", "steps_per_epoch", "total_steps", "epochs", "learning_rate", "schedule",
// "warmup", "dtype", "bf16", "zero1", "gradient_checkpointing", "eval_sets", "reward",
// "deps", "memory"}; null where a value is unknown or does not apply.
nlohmann::json DescribePlan(const std::vector<JobRecord>& jobs, const PlanReportOptions& options);
// The same as a fixed-width text table, with a header naming the study and the notes.
std::string PlanTable(const Study& study, const nlohmann::json& plan);

}  // namespace rmgen::coord
