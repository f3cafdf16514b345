// The rank program's files in its run folder (jobspec/run_dir.h): the trainer state and the
// checkpoint swap, the events a resume keeps, and each rank's progress record.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "common/status.h"
#include "worker/comm/communicator.h"
#include "worker/model/decoder.h"
#include "worker/train/data_parallel.h"

namespace rmgen {

struct TrainerState {
  int64_t step = 0;      // optimizer steps done
  int64_t epoch = 0;     // current epoch
  int64_t micro = 0;     // micro-batches of the current epoch consumed
  int64_t samples = 0;   // pairs seen
  int64_t skipped = 0;   // non-finite batches skipped
  std::string spec_key;  // the training-relevant spec, to refuse a mismatched resume
  nlohmann::json ToJson() const {
    return {{"step", step},       {"epoch", epoch},     {"micro", micro},
            {"samples", samples}, {"skipped", skipped}, {"spec_key", spec_key}};
  }
  // checkpoint/trainer_state.json at `path`: DATA_LOSS naming the file and the field when it
  // is not JSON, or a field is missing or of the wrong type (a corrupt state: a permanent
  // failure); NOT_FOUND when it cannot be read.
  static StatusOr<TrainerState> Read(const std::string& path);
};

// Keeps the events of steps <= `last_step` (those the checkpoint being resumed covers), so
// a resumed run does not log the steps it repeats twice.
Status TrimEvents(const std::string& path, int64_t last_step);

// SaveCheckpoint swaps folders with two renames; a crash between them leaves no
// `checkpoint` but a complete `checkpoint.old` (or `checkpoint.tmp`). Put it back before
// deciding whether to resume, so the last good state is neither ignored nor deleted.
Status RecoverCheckpointSwap(const std::string& out_dir);

// All ranks: rank 0 writes the model, every rank its optimizer files (ZeRO-1) into
// checkpoint.tmp; rank 0 then writes trainer_state.json (last: it marks a complete folder)
// and swaps folders.
Status SaveCheckpoint(Communicator* comm, const DecoderLM& model, const DataParallel& dp,
                      const TrainerState& st, const std::string& out_dir,
                      const std::string& tokenizer_path);

// OUT/ranks/rank-R.json: where rank R is (step, phase), who it is (pid, host) and when.
void WriteRankProgress(const std::string& out, int rank, int64_t step, const char* phase);

}  // namespace rmgen
