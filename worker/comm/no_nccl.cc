// Linked instead of nccl.cc when the build found no NCCL (compare MLX's no_nccl.cpp):
// callers never test for NCCL themselves; asking for it says what is missing.
#include "worker/comm/communicator.h"

namespace rmgen {

bool NcclCompiledIn() { return false; }

StatusOr<std::unique_ptr<Communicator>> NewNcclCommunicator(const RankLayout&,
                                                            const CommOptions& options) {
  return UnimplementedError("runtime.device is '" + options.device +
                            "' with several ranks, which needs the NCCL backend, but this build "
                            "has none. HINT: build where the CUDA toolkit and NCCL are installed "
                            "(cmake finds them under /usr/local/cuda or CUDAToolkit_ROOT)");
}

}  // namespace rmgen
