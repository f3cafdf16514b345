// The event schema: one JSON object per line of OUT/events.jsonl, written by rank 0 after each
// logged optimizer step, relayed by the agent (ParseEventLine, json_read.h: an integer step
// is required), stored by the coordinator, and read back by `rmgen watch`, the dashboard and
// the metrics endpoint. Keys (event_key): the step's progress below, plus the objective's own
// metrics under TRL's names (loss, accuracy, rewards/..., logps/..., logits/...).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>

namespace rmgen {

namespace event_key {
inline constexpr const char* kStep = "step";               // optimizer steps done (>= 1)
inline constexpr const char* kTotalSteps = "total_steps";  // planned steps
inline constexpr const char* kEpoch = "epoch";             // fractional epoch
inline constexpr const char* kLr = "lr";
inline constexpr const char* kGradNorm = "grad_norm";
inline constexpr const char* kTokensPerS = "tokens/s";
inline constexpr const char* kPairsPerS = "pairs/s";
inline constexpr const char* kSamples = "samples";  // pairs seen
inline constexpr const char* kEtaS = "eta_s";
inline constexpr const char* kPeakRssMb = "peak_rss_mb";
inline constexpr const char* kRanks = "ranks";            // several ranks only
inline constexpr const char* kCommWaitS = "comm_wait_s";  // several ranks only
inline constexpr const char* kLoss = "loss";
// runtime.profile: seconds of the step by phase {collate, forward, backward, reduce, optimizer}
inline constexpr const char* kPhaseS = "phase_s";
inline constexpr const char* kDevicePeakMb = "device_peak_mb";  // CUDA: allocator peak so far
}  // namespace event_key

// A training step's progress, as the coordinator follows a running job. From() is nullopt
// for an event that is not one (no integer step, or no numeric loss: for example the
// coordinator's own attempt records); the optional numbers are unset when absent or not
// numbers. Never throws.
struct StepProgress {
  int64_t step = 0;
  std::optional<int64_t> total_steps;
  double loss = 0;
  std::optional<double> tokens_per_s, pairs_per_s, eta_s, lr;
  static std::optional<StepProgress> From(const nlohmann::json& event);
};

}  // namespace rmgen
