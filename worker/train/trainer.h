// RunJob: everything one rmgen-train rank does. Reads the resolved spec, loads model, tokenizer and
// data, trains (sft / reward / dpo) or evaluates, and writes into `out_dir`:
//
//   spec.resolved.json   the spec with every default filled in
//   events.jsonl         one JSON object per logged step (TRL's metric names, lr,
//                        grad_norm, tokens/s, pairs/s, samples, eta_s, peak_rss_mb);
//                        a training run first replaces it (new file, atomically) with the
//                        lines up to its checkpoint's step: rmgen-worker relays nothing
//                        from the file a previous attempt left
//   metrics.json         final per-eval-set metrics (n, accuracy, ties, acc_tie_half,
//                        mean_margin, subsets, RewardBench sections) and training totals
//   checkpoint/          the model in Hugging Face layout + trainer_state.json +
//                        optimizer.safetensors; written atomically (temp folder + rename)
//
// Data parallel: launched by mpirun or srun with several ranks (the rank layout comes from
// their environment), every rank runs RunJob; each takes a disjoint share of every global
// micro-batch (train.batch_size pairs), gradients are summed in buckets during backward,
// evaluation and reference log-probs are sharded and gathered, and rank 0 alone writes
// files. Every rank agrees, once per step, on stopping (SIGTERM on any rank, or
// stop_after_steps) and on skipping a non-finite step. A collective that fails or times out
// (runtime.comm_timeout_s) ends the whole job with an error naming the ranks that fell
// behind (from OUT/ranks/rank-R.json); the job resumes from its last checkpoint, on any
// number of ranks.
//
// Failing fast: an error on any rank (a returned status, an exception) is written to
// OUT/ranks/failure-R.json (jobspec/outcome.h: cause, phase, message) and, with several
// ranks, ends every rank at once (Communicator::Abort; the launcher ends the rest): no rank is
// left waiting in a collective for the one that failed. A rank killed by a signal is mpirun's
// or srun's (--kill-on-bad-exit) to end the others. A collective that times out is a failure
// of the rank that saw it, naming the ranks behind.
//
// Threads: a rank's own thread runs all of this (the job runner, job_runner.cc, then the
// training loop, trainer.cc); the MPI backend runs every MPI call on its communication thread
// (worker/comm/mpi.cc), fed by the collectives the loop and the gradient hooks enqueue.
//
// Test seam: RunOptions::fault injects a fault into one rank at one phase (rmgen-train
// --fault rank=R,phase=P[,step=S],action=A; see FaultInjection).
//
// Resume: when out_dir/checkpoint exists, training continues from it exactly (weights,
// AdamW moments, schedule step, sampler position); N steps + resume + N steps gives the
// same parameters as 2N steps. DPO reference log-probs are computed once per (reference,
// dataset, tokenization) and cached under the reference cache folder.
#pragma once

#include <atomic>
#include <string>

#include "common/status.h"
#include "jobspec/outcome.h"
#include "jobspec/spec.h"

namespace rmgen {

// The phases of a rank's run, as RankFailure::phase names them: setup (tokenizer, data),
// reference (reference log-probs), load (the model), broadcast (rank 0's weights to all),
// step, checkpoint, eval, finish (metrics.json).
struct FaultInjection {
  int rank = -1;  // -1: no fault
  std::string phase;
  int64_t step = 1;  // step and checkpoint: the optimizer step (1-based) it fires at
  // error (an INTERNAL status: transient), invalid (INVALID_ARGUMENT: permanent), throw (an
  // exception), exit (_Exit(1) at once), kill (SIGKILL to itself), hang (sleeps forever), slow
  // (step only: 100 ms more on every micro-batch from `step` on; the math is unchanged)
  std::string action = "error";
  // "rank=R,phase=P[,step=S][,action=A]"; INVALID_ARGUMENT naming the part.
  static StatusOr<FaultInjection> Parse(const std::string& text);
};

struct RunOptions {
  bool progress = true;  // a progress line on stderr when it is a terminal
  // Stop (with a checkpoint) after this many optimizer steps in this run; 0: no limit.
  // For tests of resume, and for preemption.
  int64_t stop_after_steps = 0;
  // Set (for example by a SIGTERM handler) to stop after the current step, with a
  // checkpoint; every rank agrees on it.
  const std::atomic<bool>* stop_flag = nullptr;
  FaultInjection fault;  // tests only
};

// With several ranks, RunJob does not return on a failure (see above). `failure` (optional)
// receives this rank's failure record when it returns an error (not for kCancelled: a stop).
Status RunJob(const JobSpec& spec, const std::string& out_dir, const RunOptions& options = {},
              RankFailure* failure = nullptr);

}  // namespace rmgen
