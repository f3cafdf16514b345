// What a job reads: its datasets, tokenized (LoadSet), its model (a checkpoint or a seeded
// init: BuildModel), the identities that caches and resume key on, and the order of its
// batches. Every rank reads the same and gets the same.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "jobspec/spec.h"
#include "worker/data/catalog.h"
#include "worker/data/dataset.h"
#include "worker/data/tokenize.h"
#include "worker/data/tokenizer.h"
#include "worker/model/decoder.h"

namespace rmgen {

// A dataset, tokenized, with what evaluation needs per pair.
struct LoadedSet {
  std::string name;
  std::vector<TokenizedPair> pairs;
  std::vector<std::string> subsets;
  std::vector<double> margins;  // score_chosen - score_rejected, 0 when unknown
  DatasetStats stats;
  TokenizeStats tokenize;
  std::string identity;  // what the reference-log-prob cache keys on
};

std::string FileIdentity(const std::string& path);

std::string DirIdentity(const std::string& dir);

// A dataset reference (catalog name, held-out slice, or {format, path}) -> file and read
// options; a missing file is NOT_FOUND naming the set.
StatusOr<ResolvedDataset> ResolveRef(const JobSpec& spec, const DatasetRef& ref);

// `exclude_holdout`: leave out that share of the prompts (data.holdout, for the training set).
StatusOr<LoadedSet> LoadSet(const JobSpec& spec, const DatasetRef& ref, const Tokenizer& tok,
                            const TokenizeOptions& to, int64_t limit, double exclude_holdout);

torch::Dtype DtypeOf(const JobSpec& s);

// The model of the spec (checkpoint or random init) with the given head.
StatusOr<std::unique_ptr<DecoderLM>> BuildModel(const JobSpec& spec, const std::string& path,
                                                HeadKind head);

torch::Device DeviceOf(const DecoderLM& model);

std::string ModelIdentity(const JobSpec& spec, const std::string& path);

std::vector<std::vector<int64_t>> EpochBatches(const JobSpec& spec,
                                               const std::vector<int64_t>& lengths, int64_t epoch);

// The spec minus runtime settings, and the training data's identity: resuming is only
// allowed into the same job.
std::string SpecKey(const JobSpec& spec, const std::string& train_identity);

}  // namespace rmgen
