// Memory plans: how many bytes one rank of an rmgen-train job needs at its peak, from the
// model's architecture (config.json) and the job's resolved spec, without torch. The
// coordinator refuses at submission a job that fits on no worker it knows of; `rmgen plan`
// prints the estimate and what would make a job fit.
//
// The model follows what rmgen-train allocates (worker/model/decoder.cc,
// worker/train/{data_parallel,optim,objectives,trainer}.cc):
//   weights      parameters x model.dtype (4 or 2 bytes); ZeRO-1 moves them into flat buckets
//                (same size)
//   gradients    flat buckets in the parameters' dtype, the full model on every rank; under
//                ZeRO-1 (ranks > 1) plus this rank's reduced slice (1/ranks)
//   optimizer    AdamW's two moments (float32 weights), or for bf16 weights a float32
//                master copy and float32 moments (12 bytes a parameter); 1/ranks under ZeRO-1
//   activations  what autograd keeps per decoder layer for the per-rank micro-batch
//                (ceil(train.batch_size / ranks) pairs, two sequences of data.max_length each,
//                no prefix shared: the worst case); with gradient checkpointing each layer keeps
//                only its input, and backward recomputes one layer at a time. Attention: the
//                eager softmax (B, H, T, T) in float32 on CPU (libtorch 1.13 has no fused
//                kernel); fused on CUDA (libtorch 2.x), so nothing quadratic but the mask
//   logits       response tokens x vocabulary in float32 (sft, dpo, DPORM evaluation): kept
//                for backward, and log-sum-exp's backward holds three more copies at once
//                (the largest activation for Gemma's 256k vocabulary). A vocabulary larger
//                than runtime.vocab_chunk runs in chunks (worker/model/lm_head.h): a few
//                response tokens x chunk tensors at a time, nothing kept for backward
//   reference    a live DPO reference (dpo.live_reference) stays resident; otherwise the
//                reference pass runs alone before training (its own phase) and only the
//                reference log-probs stay (8 bytes a pair)
//   runtime      CUDA: context and library workspaces (512 MiB) plus 5% for the caching
//                allocator; CPU: the rmgen-train process with libtorch loaded, measured
//                (tests/coordinator/memory_measured_test.cc checks the estimate against
//                rmgen-train's peak RSS)
// The peak is the largest of the job's phases: the reference pass, a training step (forward,
// the logits' backward, a layer's backward), the optimizer step, and the evaluation (an eval
// job, or a training job with data.eval).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/status.h"
#include "coordinator/model.h"
#include "worker/model/config.h"

namespace rmgen::coord {

struct Study;

// The CPU baseline: resident memory of an rmgen-train process beyond its tensors (libtorch,
// OpenMP and oneDNN pools, tokenizer, data): the peak RSS of a tiny-synth job (0.2M
// parameters) on Debian's libtorch 1.13, 186 MiB with 1 or 2 threads, less its tensors.
inline constexpr int64_t kCpuRuntimeBytes = 184ll << 20;
// CUDA: context, cuBLAS and NCCL workspaces.
inline constexpr int64_t kCudaRuntimeBytes = 512ll << 20;
// CUDA caching allocator: block rounding and fragmentation, a share of the tensors' bytes.
inline constexpr double kCudaAllocatorSlack = 0.05;

struct MemoryEstimate {
  // What was planned.
  std::string kind;    // sft | reward | dpo | eval
  std::string device;  // cpu | cuda
  int64_t ranks = 1;
  int64_t micro_batch = 0;  // pairs per rank per forward (training), ceil(batch_size / ranks)
  int64_t eval_batch = 0;   // pairs per rank per forward (evaluation, reference pass)
  int64_t max_length = 0;
  std::string dtype;  // of the weights
  bool bf16_autocast = false, gradient_checkpointing = false, zero1 = false;
  int64_t vocab_chunk = 0;  // runtime.vocab_chunk: the language-model head's chunk (0: whole)
  bool live_reference = false;
  int64_t parameters = 0;  // of the trained (or evaluated) model

  // Bytes per rank at the peak, by component (they sum to `total`).
  int64_t weights = 0;
  int64_t gradients = 0;
  int64_t optimizer = 0;
  int64_t activations = 0;      // decoder layers, norms, heads (and autocast weight copies)
  int64_t logits = 0;           // vocabulary-sized tensors
  int64_t reference_model = 0;  // live reference weights, or the reference in its own pass
  int64_t reference_cache = 0;  // reference log-probs kept in memory
  int64_t runtime = 0;          // CUDA context + allocator slack, or the CPU process baseline
  int64_t total = 0;
  std::string peak_phase;  // reference | train | optimizer | eval
  // Every phase's total (bytes), for the curious.
  nlohmann::json phases = nlohmann::json::object();

  nlohmann::json ToJson() const;
  // One line: "dpo, 8 ranks, micro-batch 8 x 512, bf16 weights, ZeRO-1, checkpointing:
  // 71.0 GiB per rank at train (weights 15.9, gradients 17.9, ...)".
  std::string Summary() const;
};

// sft, reward and dpo jobs train; the other kinds (eval, generate, annotate, judge) run
// forward passes only.
bool TrainingKind(const std::string& kind);

// One rank's peak for `ranks` ranks of the job `resolved_spec` (rmgen-train's resolved spec,
// spec.resolved.json, or a JobRecord's spec) of model `cfg` (its LM config; the reward head
// is taken from the job's kind).
MemoryEstimate EstimateJobMemory(const ModelConfig& cfg, const nlohmann::json& resolved_spec,
                                 int64_t ranks);

// A change that makes (or would not make) a job fit `budget` bytes per rank.
struct MemoryOption {
  std::string change;    // "runtime.zero1: true", "ranks: 16", ...
  nlohmann::json patch;  // JSON merge patch on the resolved spec (null for ranks alone)
  int64_t ranks = 1;     // the ranks it is planned for
  MemoryEstimate estimate;
  bool fits = false;

  nlohmann::json ToJson() const;
};

// What would make the job fit `budget_bytes` per rank: each of ZeRO-1, gradient checkpointing,
// bf16 weights, a smaller micro-batch with more gradient accumulation (the same global batch),
// a smaller eval batch, all of the flags together, and the fewest ranks (up to max_ranks)
// that fit, with and without the flags. Only changes that apply to the job are listed; the
// ones that fit come first, each group ordered by its total.
std::vector<MemoryOption> AdviseMemory(const ModelConfig& cfg, const nlohmann::json& resolved_spec,
                                       int64_t ranks, int64_t budget_bytes,
                                       int64_t max_ranks = 1024);

// "1.5 GiB", "512 MiB".
std::string FormatBytes(int64_t bytes);

// The architecture a job's model has, for planning: the spec's model.config, else
// <model.path>/config.json, else (for a study's job, by its `model` label) the study model's
// arch, config, or <path>/config.json. Relative paths are resolved against `base_dir` (""
// keeps them relative to the working directory); paths still holding "${output...}" are
// skipped. NotFound when none is readable. `source`, when given, receives the file read.
StatusOr<ModelConfig> JobModelConfig(const JobRecord& job, const Study* study,
                                     const std::string& base_dir, std::string* source = nullptr);

// Workers that may run a job: those seen within this long (or with a current lease).
inline constexpr int64_t kRecentWorkerMs = 24ll * 3600 * 1000;

struct WorkerFit {
  bool known = false;  // some candidate worker reports its memory, and none that does not
                       // could take the job (a worker that does not report could fit anything)
  bool fits = true;    // the workers with enough memory per slot have `ranks` slots together
  int64_t largest_memory = 0;  // the largest memory_bytes_per_slot known (0: none)
  std::string largest_worker;  // its id
  int64_t slots_that_fit = 0;  // slots of workers with enough memory per slot
};

// Whether `ranks` ranks of `bytes_per_rank` each fit on the candidate `workers` (already
// filtered to the recent ones).
WorkerFit CheckWorkerFit(int64_t bytes_per_rank, int64_t ranks,
                         const std::vector<WorkerRecord>& workers);

// The plan of one job for `rmgen plan` (and the coordinator's refusal): the model config as
// JobModelConfig finds it, the estimate for job.ranks, whether it fits on `workers` (all of
// them are candidates: filter first), and advice against the largest worker memory known:
//   {job, name, kind, ranks, model_config: {source, parameters} | null,
//    estimate: MemoryEstimate::ToJson | null, total_bytes: int | null,
//    error: "..." (only when no config was found), fits: bool | null (null: no estimate, or no
//    worker reports memory), largest_worker_memory_bytes: int | null, largest_worker,
//    slots_that_fit, advice: ["runtime.zero1: true: 71.3 GiB per rank (fits)", ...] (when it
//    does not fit), options: [MemoryOption::ToJson, ...] (the same, as data),
//    summary: MemoryEstimate::Summary or why there is none}
nlohmann::json PlanJobMemory(const JobRecord& job, const std::vector<WorkerRecord>& workers,
                             const std::string& base_dir, const Study* study = nullptr);

}  // namespace rmgen::coord
