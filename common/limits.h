// Caps shared by the agent (what it sends) and the coordinator (what it accepts): one event
// or one job's metrics, as an encoded protobuf Struct, fits in one reply of the client calls
// (GetLogs, WatchJob, GetResults) under gRPC's 4 MiB message limit.
#pragma once

#include <cstddef>

namespace rmgen {

constexpr size_t kMaxReportedStructBytes = 1 << 20;

}  // namespace rmgen
