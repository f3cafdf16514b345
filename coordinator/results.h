// Results: per-seed eval metrics -> the study's tables, for one study or across several.
//
// For each (model, method) of a study: per seed, ID accuracy is the unweighted mean over
// the ID sets and OOD accuracy the unweighted mean over the OOD sets; across seeds, the
// mean and the sample standard deviation (ddof = 1; undefined for one seed). Per eval set
// the same over seeds (the paper's Table 7), with the set's n, ties and acc_tie_half
// (rmgen-train's metrics.json keys) as means over seeds. EXRM-beats-DPORM share (Figure
// 3b): over the (model, seed) runs that have both methods, the share where EXRM accuracy >
// DPORM accuracy (strict), separately ID and OOD.
//
// Benchmark sets (a study's `eval.benchmark`, e.g. RewardBench) are scored like the others
// but never enter the ID or OOD means; for RewardBench the sections Chat, Chat Hard,
// Safety and Reasoning are prompt-count-weighted means of the subset accuracies
// (REFERENCE section 2) and their mean is the score (the paper's Table 8).
//
// Across studies (ResultsReport): Table 6 rows are model x train set, Table 7 is a grid of
// (model, reward model, train set) x every eval set seen, Figure 3a pools the runs per
// shift kind of the studies' settings (I(a)-(c) mixture, II(a) response shift, II(b)
// prompt shift, else other), Figure 3b sums the runs of every study. Accuracies are in
// [0, 1]; the text formats print %.
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/status.h"

namespace rmgen::coord {

// One finished eval job.
struct SeedResult {
  std::string model, method;  // method: exrm | dpo (its reward model: EXRM | DPORM)
  int64_t seed = 0;
  nlohmann::json metrics;  // rmgen-train metrics.json: {"eval": {SET: {accuracy, n, ...}}}
  // The job's `point` label: the hyperparameter-sweep grid point it belongs to; empty
  // outside sweeps. Aggregation keeps the selected point of each (model, method) only.
  std::string point;
};

// One finished judge job of iterative DPO: policy pi_t (t = iteration) of (model, seed),
// trained on pairs its annotator (exrm | dporm) labelled, against pi_0.
struct JudgeResult {
  std::string model, annotator;
  int64_t iteration = 0, seed = 0;
  nlohmann::json metrics;  // rmgen-train's: {"judge": {win_rate, wins, ties, losses, n, reward}}
};

// The eval set a sweep selects on: the held-out slice of the training source (the study
// planner names it so in every eval job of a sweep; never an ID, OOD or benchmark set).
inline constexpr const char* kSelectionSet = "validation";

struct Stat {
  int64_t n = 0;             // seeds (or runs)
  double mean = 0, std = 0;  // std: NaN when n < 2
};
Stat Summarize(const std::vector<double>& values);

// rmgen-train's per-set counts, as means over seeds; n == 0 where the metrics lack them.
struct SetCounts {
  Stat pairs, ties, acc_tie_half;  // metrics.json keys: n, ties, acc_tie_half
};

// RewardBench (REFERENCE section 2): the four sections, in order, and the score (their
// mean). A section is the prompt-count-weighted mean of the accuracies of its subsets
// present in `subsets` ({SUBSET: {accuracy, ...}}); NaN when none is.
inline const std::vector<std::string> kRewardBenchSections = {"chat", "chat_hard", "safety",
                                                              "reasoning"};
double RewardBenchSection(const std::string& section, const nlohmann::json& subsets);

// What the aggregation needs to know about a study (its plan).
struct StudyInfo {
  std::string id;                          // the coordinator's study id (s<n>)
  std::string study, setting, train, tag;  // study: the study file's name
  std::vector<std::string> id_sets, ood_sets, benchmark_sets;
  int64_t expected_runs = 0;
  int64_t seeds = 0;  // seeds planned per run (0: unknown): a sweep point is complete with all
};

struct StudyResults {
  std::string id, study, setting, train, tag;
  std::vector<std::string> id_sets, ood_sets, benchmark_sets;
  struct Row {
    std::string model, method;
    Stat id, ood;
    std::map<std::string, Stat> per_set;  // accuracy, every ID, OOD and benchmark set
    std::map<std::string, SetCounts> counts;
    std::map<int64_t, std::pair<double, double>> per_seed;  // seed -> (ID, OOD)
    // benchmark set -> section (kRewardBenchSections, and "score") -> over seeds
    std::map<std::string, std::map<std::string, Stat>> sections;
  };
  std::vector<Row> rows;  // by model, then method (exrm before dpo); a sweep's selected point
  // A hyperparameter sweep (the paper's Tables 4/5): per (model, method) and grid point, the
  // accuracy on kSelectionSet, mean +- std over the seeds finished; per (model, method) the
  // point with the best mean is selected (the first listed on a tie) and is what `rows` and
  // every table report. Empty without a sweep.
  struct SweepRow {
    std::string model, method, point;
    Stat validation;
    bool selected = false;
    // Some point of this (model, method) has not finished every seed: the selection is among
    // the points with the most seeds finished, and may change.
    bool provisional = false;
  };
  std::vector<SweepRow> sweep;
  // Iterative DPO (the paper's Table 2): per (model, annotator, iteration) the win rate of
  // pi_t against pi_0 (a tie counts 1/2), mean +- sample std over seeds; by model, annotator
  // (exrm, dporm), iteration. Empty without `iterative:`.
  struct IterRow {
    std::string model, annotator, judge;
    int64_t iteration = 0;
    Stat win_rate;
    std::map<int64_t, double> per_seed;
  };
  std::vector<IterRow> iterative;
  struct Wins {
    int64_t runs = 0, exrm_wins = 0;
    double share() const { return runs ? double(exrm_wins) / double(runs) : 0.0; }
  } win_id, win_ood;
  int64_t expected_runs = 0, finished_runs = 0;

  nlohmann::json ToJson() const;  // this study alone
  // The report of this study alone (ResultsReport's formats).
  std::string Table() const;
  std::string Markdown() const;
  std::string Csv() const;
};

StatusOr<StudyResults> AggregateResults(const StudyInfo& info,
                                        const std::vector<SeedResult>& results,
                                        const std::vector<JudgeResult>& judged = {});
StatusOr<StudyResults> AggregateResults(const std::string& study, const std::string& setting,
                                        const std::string& train,
                                        const std::vector<std::string>& id_sets,
                                        const std::vector<std::string>& ood_sets,
                                        int64_t expected_runs,
                                        const std::vector<SeedResult>& results);

// "mixture" (I(a), I(b), I(c)), "response shift" (II(a)), "prompt shift" (II(b)), else
// "other" (REFERENCE section 1).
std::string ShiftKind(const std::string& setting);

// One or more studies' results and the tables across them.
struct ResultsReport {
  std::string tag;  // the tag that selected the studies, if one did
  std::vector<StudyResults> studies;
  // Table 7's columns: every ID and OOD set of the studies (first seen first), then every
  // benchmark set.
  std::vector<std::string> eval_sets;
  // Figure 3a: per shift kind, the runs of every study of that kind pooled; per reward
  // model mean +- sample std over runs of ID, OOD and the drop ID - OOD (runs with OOD sets).
  struct Shift {
    std::string kind;
    std::vector<std::string> studies;
    struct Rm {
      Stat id, ood, drop;
    } exrm, dporm;
  };
  std::vector<Shift> shifts;  // mixture, response shift, prompt shift, other (those present)
  StudyResults::Wins win_id, win_ood;  // Figure 3b over every study's runs
  int64_t expected_runs = 0, finished_runs = 0;

  // {studies: [StudyResults::ToJson], rows: [every study's rows, with study/setting/train],
  //  runs, exrm_beats_dporm, table6, table7 {eval_sets, rows}, figure3a, table8, std, tag};
  // one study: also its study, setting, train and sets at the top level.
  nlohmann::json ToJson() const;
  std::string Table() const;     // Tables 6, 7 (grid and per set with counts), Figure 3a,
                                 // Figure 3b, Table 8 (when a study has benchmarks)
  std::string Markdown() const;  // the same as Markdown tables
  std::string Csv() const;       // long format, one row per (study, model, method, set or section)
};

ResultsReport CombineResults(std::vector<StudyResults> studies, const std::string& tag = "");

// "table" | "csv" | "md" | "json".
StatusOr<std::string> FormatResults(const ResultsReport& r, const std::string& format);
StatusOr<std::string> FormatResults(const StudyResults& r, const std::string& format);

}  // namespace rmgen::coord
