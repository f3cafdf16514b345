// Results: per-seed eval metrics -> the study's tables.
//
// For each (model, method) of a study: per seed, ID accuracy is the unweighted mean over
// the ID sets and OOD accuracy the unweighted mean over the OOD sets; across seeds, the
// mean and the sample standard deviation (ddof = 1; undefined for one seed). Per eval set
// the same over seeds (the paper's Table 7). EXRM-beats-DPORM share (Figure 3b): over the
// (model, seed) runs that have both methods, the share where EXRM accuracy > DPORM
// accuracy, separately ID and OOD. Accuracies are in [0, 1]; the text formats print %.
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
};

struct Stat {
  int64_t n = 0;             // seeds
  double mean = 0, std = 0;  // std: NaN when n < 2
};
Stat Summarize(const std::vector<double>& values);

struct StudyResults {
  std::string study, setting, train;
  std::vector<std::string> id_sets, ood_sets;
  struct Row {
    std::string model, method;
    Stat id, ood;
    std::map<std::string, Stat> per_set;
    std::map<int64_t, std::pair<double, double>> per_seed;  // seed -> (ID, OOD)
  };
  std::vector<Row> rows;  // by model, then method (exrm before dpo)
  struct Wins {
    int64_t runs = 0, exrm_wins = 0;
    double share() const { return runs ? double(exrm_wins) / double(runs) : 0.0; }
  } win_id, win_ood;
  int64_t expected_runs = 0, finished_runs = 0;

  nlohmann::json ToJson() const;
  std::string Table() const;     // Table 6 + Table 7 shapes and win rates, plain text
  std::string Markdown() const;  // the same as Markdown tables
  std::string Csv() const;       // long format, one row per (model, method, set)
};

StatusOr<StudyResults> AggregateResults(const std::string& study, const std::string& setting,
                                        const std::string& train,
                                        const std::vector<std::string>& id_sets,
                                        const std::vector<std::string>& ood_sets,
                                        int64_t expected_runs,
                                        const std::vector<SeedResult>& results);

// "table" | "csv" | "md" | "json".
StatusOr<std::string> FormatResults(const StudyResults& r, const std::string& format);

}  // namespace rmgen::coord
