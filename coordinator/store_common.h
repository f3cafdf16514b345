// What both stores do the same way: preparing a batch of new jobs, checking an update,
// page tokens. Internal to the store implementations.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "coordinator/store.h"

namespace rmgen::coord::internal {

// Assigns ids ("<prefix>-j<k>"), seq (from `first_seq`), version 1 and times, and rewrites
// "#<k>" dependencies to the ids of the batch. Rejects a dependency on a later job or on
// an index outside the batch.
Status PrepareJobs(const std::string& prefix, int64_t first_seq, int64_t now_ms,
                   std::vector<JobRecord>* jobs);

// The checks of UpdateJob against the stored record.
Status CheckUpdate(const JobRecord& stored, const JobRecord& update);

// Whether `job` passes the filter's fields (not the page).
bool Matches(const JobFilter& f, const JobRecord& job);

// An event's integer "step", or nullopt.
std::optional<int64_t> EventStep(const nlohmann::json& body);
// The bodies AppendEvents stores, given the attempt's latest stored step (if any).
std::vector<const nlohmann::json*> NewEvents(std::optional<int64_t> last_step,
                                             const std::vector<nlohmann::json>& bodies);

// Page tokens are the seq to continue after.
StatusOr<int64_t> ParsePageToken(const std::string& token);
int64_t ClampPageSize(int64_t n);

}  // namespace rmgen::coord::internal
