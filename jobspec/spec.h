// JobSpec: what one rmgen-train job does, parsed from YAML or JSON, validated before any
// work, with every default filled in. The resolved spec (ResolvedJson) is written next to
// the job's outputs, so a result can always be traced to exactly what produced it.
//
//   kind: reward | dpo | sft | eval | generate | annotate | judge
//   model: {path: DIR} | {config: CONFIG.json, init_seed: N}    (+ dtype)
//   tokenizer: FILE            template: none | gemma | zephyr
//   data: {catalog, data_root, train: REF, eval: [REF, ...], max_length, max_prompt_length,
//          too_long, limit, holdout}   REF = catalog NAME[:SPLIT], {format, path, subset,
//          split}, or {ref: NAME[:SPLIT], holdout: F, name} (the held-out slice of a set)
//   train: {epochs, learning_rate, batch_size | per_rank_batch_size + ranks,
//           gradient_accumulation, schedule, warmup_ratio,
//           warmup_steps, max_grad_norm, weight_decay, adam_beta1, adam_beta2, adam_epsilon,
//           max_steps, seed, length_grouped, skip_nonfinite, gradient_checkpointing, bf16}
//   reward: {use_margin, center_coefficient}
//   dpo: {beta, label_smoothing, reference, reference_free, live_reference, reference_cache}
//   eval: {reward: exrm | dporm | ref_free_sum | ref_free_avg, reference, beta, batch_size}
//   generate: {samples, max_new_tokens, temperature, top_p, top_k, greedy, seed, batch_size}
//       with data.prompts: REF (any catalog set: its distinct prompts) or
//       {format: prompts, path: FILE.jsonl} (rows {"prompt": TEXT | [messages], "id"?}), and
//       data.slice_index / data.slice_count: only the prompts whose hash falls in that slice
//       (disjoint slices of one source, for the iterations of iterative DPO)
//   annotate: {reward: exrm | dporm, reference, beta} with data.generations: a generate job's
//       generations.jsonl; model.path is the EXRM (exrm) or the policy (dporm)
//   judge: {reward: oracle | exrm, baseline: GENERATIONS.jsonl} with data.generations: the
//       policy's; each prompt's first response against the baseline's under the synthetic
//       suite's exact rule (oracle: no model) or an EXRM (model.path) -> a win rate
//   runtime: {threads, checkpoint_every, log_every, device: cpu | cuda[:N], zero1, bucket_mb,
//             overlap, comm_timeout_s, shared_prefix, vocab_chunk, profile, attention,
//             fused_kernels}
//
// Batch semantics (one design, the same in study files, job specs and `rmgen plan`):
//   global batch = global micro-batch x gradient_accumulation, and
//   global micro-batch (train.batch_size) = per_rank_batch_size x ranks.
// A spec gives either train.batch_size (the global micro-batch; default 8) or
// train.per_rank_batch_size with train.ranks (the data-parallel width the job is planned
// for; TRL's per_device_train_batch_size is per_rank_batch_size), and the resolved spec
// always carries batch_size. Study files give per_rank_batch_size and resources.ranks. The
// global micro-batch is what the job means: it is split across however many ranks run it
// (so it resumes, with the same result, on any number of ranks); the runtime section does
// not change the job's result beyond float reduction order and may differ on resume.
//
// Errors name the file, the line and the field: unknown fields, wrong types, values out of
// range, and fields a kind needs but lacks. The YAML is guarded before it is loaded
// (common/yaml_guard.h: no aliases, at most 10000 nodes, 64 levels, 1 MiB).
//
// Ranges (inclusive unless open; nan and inf are never numbers):
//   model.init_seed, train.seed          [0, 2^63-1]
//   data.max_length, max_prompt_length   [1, 1048576] tokens (prompt also < max_length)
//   data.limit                           >= 0 (0: no limit)
//   data.holdout                         [0, 1) (0: none); a {ref, holdout} set's: (0, 1)
//   train.epochs                         [1, 1000]
//   train.batch_size                     [1, 1048576] (global micro-batch; also
//                                        per_rank_batch_size x ranks)
//   train.per_rank_batch_size            [1, 65536]
//   train.ranks                          [1, 4096]
//   train.gradient_accumulation          [1, 65536]
//   train.warmup_steps, train.max_steps  [0, 10^9] (max_steps 0: epochs)
//   train.learning_rate                  (0, 1]
//   train.warmup_ratio                   [0, 1]
//   train.max_grad_norm                  [0, 10^6] (0: off)
//   train.weight_decay                   [0, 1]
//   train.adam_beta1, adam_beta2         [0, 1)
//   train.adam_epsilon                   (0, 1]
//   reward.center_coefficient            [0, 100]
//   dpo.beta, eval.beta                  (0, 100]
//   dpo.label_smoothing                  [0, 0.5)
//   eval.batch_size                      [1, 65536]
//   data.slice_count                     [1, 4096]; data.slice_index [0, slice_count)
//   generate.samples                     [1, 1024]
//   generate.max_new_tokens              [1, 1048576]
//   generate.temperature                 (0, 100]
//   generate.top_p                       (0, 1] (1: off); generate.top_k >= 0 (0: off)
//   generate.batch_size                  [1, 65536]
//   annotate.beta                        (0, 100] (default dpo.beta)
//   runtime.threads                      [0, 1024] (0: all cores)
//   runtime.checkpoint_every             [0, 10^9] steps (0: at the end)
//   runtime.log_every                    [1, 10^9] steps
//   runtime.bucket_mb                    (0, 4096]
//   runtime.comm_timeout_s               (0, 86400]
//   runtime.vocab_chunk                  [0, 2^31) vocabulary rows (0: full logits)
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"

namespace rmgen {

// Upper bounds of the ranges above.
inline constexpr int64_t kMaxSequenceLength = 1 << 20;
inline constexpr int64_t kMaxBatch = 65536;          // per rank; eval; accumulation steps
inline constexpr int64_t kMaxGlobalBatch = 1 << 20;  // train.batch_size
inline constexpr int64_t kMaxRanks = 4096;
inline constexpr int64_t kMaxThreads = 1024;
inline constexpr int64_t kMaxSteps = 1000000000;

enum class JobKind { kSft, kReward, kDpo, kEval, kGenerate, kAnnotate, kJudge };
const char* JobKindName(JobKind k);

struct DatasetRef {
  std::string name;    // catalog reference ("ultra:test"), or a label for a path
  std::string format;  // with path: the adapter
  std::string path;
  std::string subset, split;
  // {ref: NAME[:SPLIT], holdout: F}: only the held-out slice (a share F of the prompts) of a
  // catalog set, the slice that training with data.holdout F leaves out.
  std::string catalog_ref;
  double holdout = 0;
};

struct JobSpec {
  JobKind kind = JobKind::kReward;
  // Model.
  std::string model_path;    // HF checkpoint folder, or
  std::string model_config;  // config.json for a seeded random init
  uint64_t init_seed = 0;
  std::string dtype = "float32";
  std::string tokenizer;
  std::string chat_template = "none";
  // Data.
  std::string catalog, data_root;
  DatasetRef train_set;
  std::vector<DatasetRef> eval_sets;
  int max_length = 512, max_prompt_length = 128;
  bool drop_too_long = false;
  int64_t limit = 0;
  double holdout = 0;  // a share of the training prompts left out (for validation), 0: none
  // Optimisation (TRL-era defaults, REFERENCE section 1).
  int64_t epochs = 1;
  double learning_rate = 5e-6;
  int64_t batch_size = 8;           // the global micro-batch (all ranks, one accumulation step)
  int64_t ranks = 0;                // train.ranks: the width planned for (0: not given)
  int64_t per_rank_batch_size = 0;  // ceil(batch_size / ranks) when ranks is given
  int64_t gradient_accumulation = 1;
  std::string schedule = "linear";
  double warmup_ratio = 0.0;
  int64_t warmup_steps = 0;
  double max_grad_norm = 1.0, weight_decay = 0.0;
  double adam_beta1 = 0.9, adam_beta2 = 0.999, adam_epsilon = 1e-8;
  int64_t max_steps = 0;
  uint64_t seed = 0;
  bool length_grouped = true, skip_nonfinite = false;
  bool gradient_checkpointing = false;
  bool bf16 = false;  // autocast to bfloat16 (weights stay in model.dtype)
  // Objectives.
  bool use_margin = false;
  double center_coefficient = 0.0;
  double beta = 0.03, label_smoothing = 0.0;
  std::string reference;  // DPO reference / DPORM reference checkpoint
  bool reference_free = false, live_reference = false;
  std::string reference_cache;
  std::string eval_reward;  // exrm | dporm | ref_free_sum | ref_free_avg
  int64_t eval_batch_size = 16;
  // Generation (kind generate) and annotation (kind annotate).
  DatasetRef prompts_set;
  std::string generations;  // annotate: the generate job's generations.jsonl
  int64_t slice_index = 0, slice_count = 1;
  int64_t samples = 1, max_new_tokens = 128, top_k = 0;
  double temperature = 1.0, top_p = 1.0;
  bool greedy = false;
  uint64_t generate_seed = 0;
  int64_t generate_batch_size = 16;
  std::string annotate_reward = "exrm";  // exrm | dporm (with `reference` and `beta`)
  std::string judge_reward = "oracle";   // oracle | exrm
  std::string judge_baseline;            // the baseline policy's generations.jsonl
  // Runtime.
  int threads = 0;
  std::string device = "cpu";  // cpu | cuda | cuda:N
  int64_t checkpoint_every = 0, log_every = 1;
  bool zero1 = false;           // shard AdamW state across ranks
  double bucket_mb = 25.0;      // gradient bucket size (MiB)
  bool overlap = true;          // reduce buckets during backward
  double comm_timeout_s = 600;  // a collective slower than this fails the job
  // Chosen and rejected in one row, their common prefix computed once (PairLayout::kShared),
  // in each batch where that costs fewer estimated FLOPs (PairLayout::kAuto); off: always
  // two padded rows per pair, as TRL batches them.
  bool shared_prefix = true;
  // The language-model head's log-probs in chunks of this many vocabulary rows, forward and
  // backward, so a larger vocabulary never has its (tokens x vocabulary) logits at once
  // (worker/model/lm_head.h; its kDefaultVocabChunk is the default). 0: the full logits.
  int64_t vocab_chunk = 32768;
  // Time each training step's phases (collate, forward, backward, reduce, optimizer), the
  // device synchronized at each phase's end: events carry phase_s, metrics.json
  // train.profile. Costs the synchronizations; off by default.
  bool profile = false;
  // auto: the flash kernels over variable-length segments where they apply (CUDA, libtorch
  // 2.x, bf16; worker/model/decoder.h AttentionKernel); masked: always padded rows and a mask.
  std::string attention = "auto";
  // RMSNorm, rotary and the gated MLP product as fused CUDA kernels where built (CUDA
  // libtorch builds; worker/model/fused_ops.h). Off by default until measured on a GPU.
  bool fused_kernels = false;

  nlohmann::json resolved;  // the whole spec with defaults, as written to spec.resolved.json
};

// `source` names the file in errors. YAML is a superset of JSON, so both parse.
StatusOr<JobSpec> ParseJobSpec(const std::string& text, const std::string& source);
StatusOr<JobSpec> LoadJobSpec(const std::string& path);
// The same for a spec already held as JSON (the coordinator's study jobs): no text to scan,
// about twice as fast; errors name the source and the field, without a line. Nesting and
// size are bounded as ParseJobSpec's text is (64 levels, 10000 values).
StatusOr<JobSpec> ParseJobSpecJson(const nlohmann::json& spec, const std::string& source);

// Every path-valued field of a parsed spec, as (field, path as written), skipping empty ones:
// model.path, model.config, tokenizer, data.catalog (defaulted: always there), data.data_root,
// data.train.path and data.eval[i].path (datasets given by path), dpo.reference or (an eval
// job's) eval.reference, dpo.reference_cache. Paths may hold "${output:...}" (study jobs,
// resolved by the agent). Not listed, as no field names them: what rmgen-train reads inside
// them (model.path/{config.json, *.safetensors, tokenizer.model} — the tokenizer defaults to
// <model.path>/tokenizer.model; the catalog's splits, under its `root:` or data.data_root)
// and the --out folder (its parent's ref-cache/ when dpo.reference_cache is empty).
std::vector<std::pair<std::string, std::string>> SpecPaths(const JobSpec& spec);

}  // namespace rmgen
