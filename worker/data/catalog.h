// The dataset catalog (configs/datasets.yaml): names the studies use -> adapter, files per
// split, subset. Paths are data the user supplies, relative to the catalog's `root`
// (itself relative to the catalog file) unless absolute; `--data-root` overrides it.
//
//   root: ../data
//   datasets:
//     ultra:
//       adapter: ultrafeedback
//       splits:
//         train: ultrafeedback_binarized/train_prefs.jsonl.gz
//         test: ultrafeedback_binarized/test_prefs.jsonl.gz
//     arena:
//       adapter: arena
//       splits:          # no split in the source: a prompt-hash split of one file
//         train: {path: arena/conversations.jsonl, split: train}
//         test: {path: arena/conversations.jsonl, split: validation}
//
// A reference is "name" (its train split, else its only split) or "name:split".
#pragma once

#include <map>
#include <string>
#include <vector>

#include "common/status.h"
#include "worker/data/dataset.h"

namespace rmgen {

struct ResolvedDataset {
  std::string name;  // "ultra:test"
  std::string path;  // absolute or relative to the working directory
  ReadOptions read;  // format, subset, split filter
};

class Catalog {
 public:
  // Parses the YAML; errors name the file, the line and the field.
  static StatusOr<Catalog> Load(const std::string& path, const std::string& data_root = "");
  // `data_root`, when given, replaces the catalog's root for relative paths.
  static StatusOr<Catalog> Parse(const std::string& yaml, const std::string& source,
                                 const std::string& base_dir, const std::string& data_root = "");

  // Resolves a reference. A missing file is an error naming the catalog entry.
  StatusOr<ResolvedDataset> Resolve(const std::string& ref, bool check_file = true) const;
  std::vector<std::string> Names() const;

 private:
  struct Split {
    std::string path;
    std::string split;  // filter passed to ReadOptions::split
  };
  struct Entry {
    std::string adapter, subset, pairing;
    std::map<std::string, Split> splits;
  };
  std::string source_;
  std::map<std::string, Entry> entries_;
};

}  // namespace rmgen
