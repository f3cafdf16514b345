// RunJob: everything one rmgen-train job does, single process (the data-parallel engine
// wraps this later). Reads the resolved spec, loads model, tokenizer and data, trains
// (sft / reward / dpo) or evaluates, and writes into `out_dir`:
//
//   spec.resolved.json   the spec with every default filled in
//   events.jsonl         one JSON object per logged step (TRL's metric names, lr,
//                        grad_norm, tokens/s, pairs/s, samples, eta_s, peak_rss_mb)
//   metrics.json         final per-eval-set metrics (n, accuracy, ties, acc_tie_half,
//                        mean_margin, subsets, RewardBench sections) and training totals
//   checkpoint/          the model in Hugging Face layout + trainer_state.json +
//                        optimizer.safetensors; written atomically (temp folder + rename)
//
// Resume: when out_dir/checkpoint exists, training continues from it exactly (weights,
// AdamW moments, schedule step, sampler position); N steps + resume + N steps gives the
// same parameters as 2N steps. DPO reference log-probs are computed once per (reference,
// dataset, tokenization) and cached under the reference cache folder.
#pragma once

#include <string>

#include "common/status.h"
#include "worker/train/spec.h"

namespace rmgen {

struct RunOptions {
  bool progress = true;  // a progress line on stderr when it is a terminal
  // Stop (with a checkpoint) after this many optimizer steps in this run; 0: no limit.
  // For tests of resume, and for preemption.
  int64_t stop_after_steps = 0;
};

Status RunJob(const JobSpec& spec, const std::string& out_dir, const RunOptions& options = {});

}  // namespace rmgen
