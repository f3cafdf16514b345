// Reading a dataset file through an adapter: streaming, subset and split selection,
// counting every drop by reason, and reporting input errors with file, line and field.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/status.h"
#include "worker/data/adapter.h"

namespace rmgen {

struct RecordError {
  std::string file;
  int64_t line = 0;
  std::string field;
  std::string message;
};

struct DatasetStats {
  int64_t records = 0;  // records read; always pairs + the sum of dropped
  int64_t pairs = 0;
  std::map<std::string, int64_t> dropped;  // reason name -> count
  std::vector<RecordError> errors;         // the first kMaxErrors input errors
  int64_t error_count = 0;                 // all of them

  static constexpr size_t kMaxErrors = 20;
  nlohmann::json ToJson() const;
};

struct ReadOptions {
  std::string format;  // adapter name
  AdapterOptions adapter;
  std::string subset;  // keep only this subset ("" keeps all)
  // Keep only this split. Sources with their own split compare it; sources without one
  // are split by a hash of the prompt ("train" or "validation", val_fraction of prompts).
  std::string split;
  double val_fraction = 0.05;
  // The held-out slice (InHoldout) of `holdout` of the prompts: dropped (kOtherSplit), or with
  // holdout_only the only pairs kept. 0: no holdout.
  double holdout = 0;
  bool holdout_only = false;
  bool strict = false;  // the first input error fails the read
  int64_t limit = 0;    // stop after this many pairs (0: all)
};

// Reads `path`, calling `sink` for every pair kept. Returns an error for a file that
// cannot be read at all, or (strict) for the first bad record; otherwise OK with `stats`
// holding the counts and errors.
Status ReadDataset(const std::string& path, const ReadOptions& options,
                   const std::function<void(PreferencePair&&)>& sink, DatasetStats* stats);

// The normalized JSONL line of a pair (the `pairs` format with message lists), and back.
nlohmann::json PairToJson(const PreferencePair& p);

}  // namespace rmgen
