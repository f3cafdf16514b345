// Study files and the planner.
//
// A study (YAML) names one setting of the reward-model generalization study and what to run
// for it:
//
//   name: gemma2b-ultra                 # required: a label for results
//   setting: I(a)                       # required: I(a) I(b) I(c) II(a) II(b), or any label
//   catalog: configs/datasets.yaml      # dataset catalog (paths as the workers see them)
//   data_root: /data                    # optional override of the catalog's root
//   models:                             # required, 1+
//     - {name: gemma-2b, path: /models/gemma-2b-it, template: gemma,
//        arch: configs/models/gemma-2b.json}   # arch: optional, for memory plans
//     - {name: tiny, config: configs/models/tiny-synth.json, tokenizer: T.model, template: zephyr}
//   methods: [exrm, dpo]                # required, subset of {exrm, dpo}
//   seeds: [0, 1, 2]                    # required, distinct
//   train: ultra                        # required: catalog NAME[:SPLIT]
//   eval: {id: [ultra:test], ood: [arena:test, hh:test]}   # id required, ood optional
//                                       # + benchmark: [rewardbench:test] (optional): scored,
//                                       # reported apart (Table 8), never in the ID/OOD means
//   tag: paper                          # optional: `rmgen results --tag` gathers studies by it
//   sft: {epochs: 1, learning_rate: 1.0e-5}   # optional: an SFT job per model first
//   exrm: {epochs: 1, learning_rate: 5.0e-6}  # rmgen-train `train:` fields (+ use_margin,
//   dpo: {epochs: 2, learning_rate: 1.0e-6, beta: 0.03}  # center_coefficient / beta,
//                                       # label_smoothing), and per method:
//                                       # per_rank_batch_size (default 8; `batch_size` is
//                                       # refused), gradient_accumulation, dtype, bf16, zero1,
//                                       # gradient_checkpointing. Global batch =
//                                       # per_rank_batch_size x resources.ranks x accumulation
//   data: {max_length: 512, max_prompt_length: 128, limit: 0}
//   resources: {ranks: 1, device: cpu, threads: 0, checkpoint_every: 0 (steps; 0: at the end)}
//                                       # ranks [1, 4096], threads [0, 1024] (0: all cores),
//                                       # checkpoint_every [0, 10^9]
//   priority: 0
//   selection: {holdout: 0.05}          # sweeps: the validation slice of the training source
//   iterative:                          # optional: iterative DPO (the paper's Algorithm 1)
//     annotators: [exrm, dporm]         # default both; EXRM and DPORM of the same seed
//     iterations: 2                     # T in [1, 8]
//     samples: 8                        # K responses a prompt, [2, 64]
//     prompts: NAME[:SPLIT]             # the prompt source (default: the train set), cut
//                                       # into T disjoint slices by prompt hash, one an
//     prompts_per_iteration: 0          # iteration; at most this many a slice (0: all)
//     sampling: {temperature: 1.0, top_p: 1.0, top_k: 0, max_new_tokens: 128}
//     dpo: {learning_rate: 5.0e-7, schedule: cosine, epochs: 1}   # each iteration's DPO
//                                       # recipe (a dpo section's keys; beta defaults to the
//                                       # study's dpo.beta; the paper's cap of
//                                       # 1200 steps is max_steps: 1200, which rmgen-train
//                                       # runs exactly, as TRL does); its reference is the
//                                       # previous policy
//     judge: oracle | exrm | {path: DIR} # win rate against the start policy: the synthetic
//                                       # suite's exact rule, the same seed's EXRM, or any
//                                       # EXRM checkpoint
//     eval_prompts: NAME[:SPLIT]        # the judged prompts (default: the first ID eval set)
//     eval_limit: 0                     # at most this many (0: all)
//
// Sweeps: a method section may list values for learning_rate, epochs and beta
// (`dpo: {learning_rate: [5.0e-6, 1.0e-6], beta: [0.01, 0.1]}`). Every grid point is trained
// for every seed on the training source minus a held-out slice of its prompts, and its eval
// job also scores that slice ("validation"); results select per (model, method) the point
// with the best mean validation accuracy over seeds (never an eval set) and report it.
//
// Bounded for hostile input: at most 1 MiB of YAML without aliases (common/yaml_guard.h),
// 64 models, 1000 seeds, 64 sets per eval list, 8 values per swept key and 64 grid points a
// method, and PlanLimits::max_jobs jobs (10,000 by default), counted before any is built.
// Numeric hyperparameters have rmgen-train's ranges (jobspec/spec.h).
//
// Errors name the file, the line and the field. Hyperparameters are checked by building
// every job's rmgen-train spec and validating it, so anything rmgen-train would refuse is
// refused at submission.
//
// The planner turns a study into a job DAG: per model an optional `sft` job; per (model,
// method, seed) the training job (reward or dpo, from the SFT output or the model itself),
// and one `eval` job per trained checkpoint that scores every ID, OOD and benchmark set
// (EXRM scores, or DPORM against the DPO reference). Job outputs are "${output:<job>}"
// folders the agents resolve.
//
// With `iterative:`, per (model, seed) from the DPO policy pi_0 of that seed: per annotator
// and iteration t, `generate` (pi_{t-1} samples K responses for slice t; iteration 1's is
// shared by the annotators), `annotate` (best and worst under the annotator), `dpo` (pi_t
// from pi_{t-1}, reference pi_{t-1}), and to judge pi_t a `generate` on the eval prompts and
// a `judge` against pi_0's outputs there. Labels: annotator, iteration, role.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "coordinator/model.h"

namespace rmgen::coord {

struct StudyModel {
  std::string name;       // label in results
  std::string path;       // a Hugging Face checkpoint folder, or
  std::string config;     // a config.json for a seeded random init (tests, demos)
  std::string tokenizer;  // default: <path>/tokenizer.model
  std::string chat_template = "none";
  // A config.json for memory planning only (`rmgen plan`, the submit check), where the
  // checkpoint at `path` is not readable by the coordinator; optional.
  std::string arch;
};

struct Study {
  std::string name, setting, catalog, data_root;
  std::vector<StudyModel> models;
  std::vector<std::string> methods;
  std::vector<int64_t> seeds;
  std::string train_set;
  std::vector<std::string> id_eval, ood_eval;
  std::vector<std::string> benchmark_eval;  // eval.benchmark: reported apart (Table 8)
  std::string tag;                          // optional; results gather studies by it
  nlohmann::json sft;                       // null: no SFT stage
  nlohmann::json exrm = nlohmann::json::object(), dpo = nlohmann::json::object();
  nlohmann::json data = nlohmann::json::object();
  int64_t ranks = 1, threads = 0, priority = 0;
  int64_t checkpoint_every = 0;  // runtime.checkpoint_every of the training jobs
  // Sweeps select by accuracy on this held-out share of the training source's prompts,
  // which their training jobs leave out (`selection: {holdout: F}`).
  double selection_holdout = 0.05;
  bool HasSweep() const;
  std::string device = "cpu";
  // The `iterative:` section with its defaults filled in; null: none.
  nlohmann::json iterative;

  nlohmann::json ToJson() const;
};

// Studies larger than this are refused before parsing. The YAML is then guarded
// (common/yaml_guard.h: no aliases, at most 200000 nodes, 64 levels deep, values of at most
// 256 KiB) before it is loaded.
inline constexpr size_t kMaxStudyBytes = 1 << 20;
// List lengths a study may have: models, seeds, and the sets of each eval list (eval.id,
// eval.ood, eval.benchmark).
inline constexpr size_t kMaxStudyModels = 64;
inline constexpr size_t kMaxStudySeeds = 1000;
inline constexpr size_t kMaxStudyEvalSets = 64;
// A method section without per_rank_batch_size trains 8 pairs a rank (TRL's default
// per_device_train_batch_size), so the global batch grows with resources.ranks.
inline constexpr int64_t kDefaultPerRankBatch = 8;
// Sweeps: values one key may list, and grid points one method may have.
inline constexpr size_t kMaxSweepValues = 8;
inline constexpr size_t kMaxSweepPoints = 64;
// The sweepable keys of a method section (lists give a grid).
inline const char* const kSweepKeys[] = {"learning_rate", "epochs", "beta"};

// One grid point of a method's sweep: the section with every list replaced by one value,
// and its label ("lr=1e-06 epochs=2 beta=0.03"; "" when the section lists nothing).
struct SweepPoint {
  std::string label;
  nlohmann::json hyper;
};
std::vector<SweepPoint> SweepPoints(const nlohmann::json& section);

// What one study may plan. The coordinator sets max_jobs from --max-jobs-per-study.
inline constexpr int64_t kDefaultMaxJobsPerStudy = 10000;
struct PlanLimits {
  int64_t max_jobs = kDefaultMaxJobsPerStudy;
};

// The number of jobs PlanStudy makes of `study`, from its list lengths alone (nothing is
// materialized): per model, 1 sft job if `sft:` is given, plus per method (grid points of
// its sweep) x seeds x 2 (train, eval); with `iterative:`, per seed 2 + annotators x
// (5 x iterations - 1). Saturates at INT64_MAX.
int64_t PlannedJobCount(const Study& study);

// Parses and validates a study, planning it once to check every job's spec. A study whose
// plan has more than limits.max_jobs jobs is refused, before any job is built, with the
// fields that multiply ("t.yaml: the plan has 20,002 jobs (models (line 5): 10 x methods
// (line 6): 2 x seeds (line 7): 500 x 2 jobs (train, eval), + 1 sft job per model), more
// than this coordinator's limit of 10,000 per study (--max-jobs-per-study)...").
StatusOr<Study> ParseStudy(const std::string& yaml, const std::string& source,
                           const PlanLimits& limits = {});
StatusOr<Study> StudyPlanFromJson(const nlohmann::json& j);  // what Study::ToJson wrote

// The study's jobs, in dependency order, deps as "#<index>"; `user` owns them. Refused like
// ParseStudy when the plan exceeds limits.max_jobs (a stored study planned again).
StatusOr<std::vector<JobRecord>> PlanStudy(const Study& study, const std::string& user,
                                           const std::string& source,
                                           const PlanLimits& limits = {});

// The files the coordinator may read while planning `study` (JobModelConfig, for the memory
// check at submit and `rmgen plan`): per model its `config`, `<path>/config.json` and `arch`,
// as (study field, path as written: relative paths are resolved against the planning base
// folder), skipping empty fields and paths holding "${". The catalog and data_root are not
// read by the coordinator (rmgen-train reads them on the workers, `rmgen plan` on the client):
// each job's spec names them, see rmgen::SpecPaths.
std::vector<std::pair<std::string, std::string>> StudyPlanReads(const Study& study);

}  // namespace rmgen::coord
