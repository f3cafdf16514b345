#include "coordinator/scheduler.h"

#include <algorithm>
#include <deque>
#include <queue>
#include <set>
#include <tuple>

namespace rmgen::coord {

SchedulePass Schedule(const std::vector<const JobRecord*>& queued,
                      const std::vector<WorkerCapacity>& workers,
                      const std::map<std::string, int64_t>& held_by_user,
                      const std::string& hold_for) {
  SchedulePass pass;
  // Free capacity, indexed for best fit: (free slots, worker index).
  std::set<std::pair<int64_t, size_t>> by_free;
  std::vector<int64_t> free(workers.size(), 0);
  int64_t largest_total = 0, schedulable = 0, spanning_total = 0;
  for (size_t i = 0; i < workers.size(); ++i) {
    if (!workers[i].schedulable) continue;
    ++schedulable;
    free[i] = workers[i].free_slots;
    largest_total = std::max(largest_total, workers[i].slots);
    if (workers[i].spans_hosts) spanning_total += workers[i].slots;
    if (free[i] > 0) by_free.insert({free[i], i});
  }
  // A job that must span several workers.
  auto multi_node = [&](const JobRecord& j) {
    return j.ranks > largest_total && j.ranks <= spanning_total;
  };
  std::vector<bool> reserved(workers.size(), false);  // held for pass.holding_job
  auto take = [&](size_t i, int64_t n) {
    by_free.erase({free[i], i});
    free[i] -= n;
    if (free[i] > 0 && !reserved[i]) by_free.insert({free[i], i});
  };
  // Holds for `j` the spanning workers closest to idle (most free slots, then the largest)
  // until they drain: no other job is placed on them.
  auto hold = [&](const JobRecord& j) {
    std::vector<size_t> order;
    for (size_t i = 0; i < workers.size(); ++i) {
      if (workers[i].schedulable && workers[i].spans_hosts) order.push_back(i);
    }
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      return std::tie(free[a], workers[a].slots, b) > std::tie(free[b], workers[b].slots, a);
    });
    int64_t sum = 0;
    pass.holding_job = j.id;
    pass.held_workers.clear();
    for (size_t i : order) {
      if (sum >= j.ranks) break;
      sum += workers[i].slots;
      reserved[i] = true;
      by_free.erase({free[i], i});
      pass.held_workers.push_back(workers[i].id);
    }
  };
  auto release = [&] {
    for (size_t i = 0; i < workers.size(); ++i) {
      if (!reserved[i]) continue;
      reserved[i] = false;
      if (free[i] > 0) by_free.insert({free[i], i});
    }
    pass.holding_job.clear();
    pass.held_workers.clear();
  };
  // The job held for in the last pass keeps its hold from the start of this one, so jobs
  // ordered before it (a user holding fewer slots) cannot take the slots that drain for it.
  for (const JobRecord* j : queued) {
    if (j->id == hold_for && multi_node(*j)) hold(*j);
  }
  // Tries to place one job; returns the placement or sets `why`.
  auto place = [&](const JobRecord& j,
                   std::string* why) -> std::vector<std::pair<std::string, int64_t>> {
    std::vector<std::pair<std::string, int64_t>> out;
    if (schedulable == 0) {
      *why = workers.empty() ? "no worker registered" : "no live, non-draining worker";
      return out;
    }
    if (j.ranks <= largest_total) {
      auto it = by_free.lower_bound({j.ranks, 0});
      if (it == by_free.end()) {
        const int64_t most = by_free.empty() ? 0 : by_free.rbegin()->first;
        *why = "no worker with " + std::to_string(j.ranks) +
               " free slots (most free: " + std::to_string(most) + ")";
        return out;
      }
      const size_t i = it->second;
      take(i, j.ranks);
      out.emplace_back(workers[i].id, j.ranks);
      return out;
    }
    if (j.ranks > spanning_total) {
      *why = "needs " + std::to_string(j.ranks) + " slots: the largest worker has " +
             std::to_string(largest_total) + " and the workers that can span hosts have " +
             std::to_string(spanning_total) +
             " in all (start an agent over a larger allocation, or mpirun agents)";
      return out;
    }
    const bool holder = pass.holding_job == j.id;
    if (holder) release();  // its own held workers are its to use
    // Several nodes: whole idle workers that span hosts, largest first.
    std::vector<size_t> idle;
    for (auto it = by_free.rbegin(); it != by_free.rend(); ++it) {
      const size_t i = it->second;
      if (workers[i].spans_hosts && free[i] == workers[i].slots) idle.push_back(i);
    }
    int64_t got = 0;
    size_t used = 0;
    while (used < idle.size() && got < j.ranks) got += workers[idle[used++]].slots;
    if (got < j.ranks) {
      *why = "needs " + std::to_string(j.ranks) + " slots across idle workers; " +
             std::to_string(got) + " idle now";
      if (pass.holding_job.empty()) {
        hold(j);
        *why += "; holding " + std::to_string(pass.held_workers.size()) +
                " worker(s) for it as they drain";
      }
      return out;
    }
    int64_t left = j.ranks;
    for (size_t k = 0; k < used; ++k) {
      const size_t i = idle[k];
      const int64_t n = std::min(left, workers[i].slots);
      take(i, workers[i].slots);  // the whole node: its other slots stay idle
      out.emplace_back(workers[i].id, n);
      left -= n;
    }
    return out;
  };

  // Priority levels, highest first; per level, per-user FIFO queues.
  std::map<int64_t, std::map<std::string, std::deque<const JobRecord*>>, std::greater<>> levels;
  std::vector<const JobRecord*> sorted = queued;
  std::sort(sorted.begin(), sorted.end(),
            [](const JobRecord* a, const JobRecord* b) { return a->seq < b->seq; });
  for (const JobRecord* j : sorted) levels[j->priority][j->user].push_back(j);
  std::map<std::string, int64_t> held = held_by_user;
  for (auto& [priority, users] : levels) {
    // Min-heap on (slots held, head job's seq, user).
    using Key = std::tuple<int64_t, int64_t, std::string>;
    std::priority_queue<Key, std::vector<Key>, std::greater<>> heap;
    for (auto& [user, q] : users) heap.push({held[user], q.front()->seq, user});
    while (!heap.empty()) {
      auto [h, seq, user] = heap.top();
      heap.pop();
      auto& q = users[user];
      const JobRecord* j = q.front();
      q.pop_front();
      std::string why;
      auto where = place(*j, &why);
      if (where.empty()) {
        pass.waiting[j->id] = why;
      } else {
        pass.placements.push_back({j->id, where});
        held[user] += j->ranks;
      }
      if (!q.empty()) heap.push({held[user], q.front()->seq, user});
    }
  }
  return pass;
}

}  // namespace rmgen::coord
