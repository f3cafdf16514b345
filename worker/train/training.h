// The training and evaluation of one rank (trainer.cc), as the job runner (job_runner.cc)
// calls it with the communicator it owns. `phase` follows the run (RankFailure::phase).
#pragma once

#include <string>

#include "common/status.h"
#include "jobspec/spec.h"
#include "worker/comm/communicator.h"
#include "worker/train/trainer.h"

namespace rmgen {

Status RunTrainer(const JobSpec& spec, const std::string& out_dir, const RunOptions& options,
                  Communicator* comm, std::string* phase);

}  // namespace rmgen
