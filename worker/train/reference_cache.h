// DPO's reference log-probs of a dataset: computed once per (reference model, dataset,
// tokenization), sharded over the ranks, and cached as safetensors.
#pragma once

#include <torch/torch.h>

#include <string>
#include <utility>

#include "common/status.h"
#include "worker/comm/communicator.h"
#include "worker/model/decoder.h"
#include "worker/train/job_inputs.h"
#include "worker/train/objectives.h"

namespace rmgen {

// Reference log-probs of a set, from the cache or computed (and cached), each rank computing
// its share. Every rank ends with all of them.
StatusOr<std::pair<torch::Tensor, torch::Tensor>> ReferenceLogProbs(
    Communicator* comm, const DecoderLM& ref, const std::string& ref_identity, const LoadedSet& set,
    const std::string& cache_dir, const std::string& tokenize_identity, int64_t batch_size,
    int64_t pad_id, PairLayout layout, bool* cache_hit);

}  // namespace rmgen
