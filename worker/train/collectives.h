// Collective helpers of the rank program beyond the data-parallel engine.
#pragma once

#include <torch/torch.h>

#include "common/status.h"
#include "worker/comm/communicator.h"

namespace rmgen {

// Every rank agrees on `local` (OK only when it is OK on every rank); a rank that failed
// contributes its message to the log, the others learn that one failed.
Status Agree(Communicator* comm, const Status& local, torch::Device device, const char* what);

}  // namespace rmgen
