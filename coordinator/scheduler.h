// The scheduler: one pure pass from queued jobs and worker capacity to placements.
//
// Policy:
//  - Gang: a job gets all its ranks at once or nothing. It goes on one worker when one has
//    enough free slots (best fit: the smallest free count that suffices). A job asking for
//    more ranks than any single worker has in total spreads over whole idle workers that can
//    span hosts (spans_hosts: an mpirun agent, which launches every rank of the job with a
//    hostfile of the placed workers' hosts); it is never split over workers that cannot (a
//    Slurm agent runs srun inside its own allocation: a multi-node job there needs one agent
//    over a multi-node allocation, which this scheduler sees as one worker).
//  - No starvation of multi-node jobs: the first job (in the order below) that needs several
//    workers and cannot start holds the workers it will use, as they drain: no other job is
//    placed on them until it starts. Only one job holds workers at a time, and it keeps
//    holding them across passes (`hold_for`: the last pass's holding_job), so jobs that come
//    before it in a later pass's order (a user holding fewer slots) cannot take them either.
//    Jobs of a higher priority placed before the hold was made keep what they got.
//  - Priorities: higher first. Within a priority, per-user fairness: the next job comes from
//    the user holding the fewest slots (running plus placed in this pass), so one large
//    study does not starve another user's jobs; within a user, FIFO by submission order.
//    A job that does not fit now is skipped (smaller jobs behind it may still run), with a
//    reason.
//  - Draining and dead workers get nothing.
// Dependencies are not the scheduler's business: only QUEUED jobs (dependencies met) come
// in.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "coordinator/model.h"

namespace rmgen::coord {

struct WorkerCapacity {
  std::string id;
  int64_t slots = 0;         // total
  int64_t free_slots = 0;    // not held by ASSIGNED or RUNNING jobs
  bool schedulable = true;   // alive and not draining
  bool spans_hosts = false;  // may share a job with other such workers
};

struct Placement {
  std::string job_id;
  std::vector<std::pair<std::string, int64_t>> workers;  // worker -> ranks there
};

struct SchedulePass {
  std::vector<Placement> placements;
  std::map<std::string, std::string> waiting;  // job id -> why it was not placed
  std::string holding_job;                     // the multi-node job holding workers, if any
  std::vector<std::string> held_workers;       // the workers it holds
};

// `queued`: jobs in state QUEUED (any order). `held_by_user`: slots each user's ASSIGNED
// and RUNNING jobs hold now. `hold_for`: the job the previous pass held workers for.
SchedulePass Schedule(const std::vector<const JobRecord*>& queued,
                      const std::vector<WorkerCapacity>& workers,
                      const std::map<std::string, int64_t>& held_by_user,
                      const std::string& hold_for = "");

}  // namespace rmgen::coord
