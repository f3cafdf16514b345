#include "coordinator/core.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <optional>
#include <set>

#include "common/file.h"
#include "common/utf8.h"
#include "coordinator/memory_plan.h"
#include "jobspec/outcome.h"
#include "jobspec/run_dir.h"
#include "jobspec/spec.h"

namespace rmgen::coord {

using nlohmann::json;

namespace {

class SystemClockImpl : public Clock {
 public:
  int64_t NowMs() override {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
  }
  int64_t MonoMs() override {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }
};

Status PermissionDenied(const std::string& m) { return Status(StatusCode::kPermissionDenied, m); }

// A job id as "${output:ID}" may name it: letters, digits, '-', '_' and a leading '#'.
bool PlainId(const std::string& id) {
  if (id.empty()) return false;
  for (size_t i = 0; i < id.size(); ++i) {
    const char ch = id[i];
    if (std::isalnum(static_cast<unsigned char>(ch)) || ch == '-' || ch == '_') continue;
    if (ch == '#' && i == 0) continue;
    return false;
  }
  return true;
}

// An exact "${output}" (id "") or "${output:ID}" starting at `at` of `s`, and the index just
// past it; nothing for any other text starting with "${output".
struct OutputToken {
  std::string id;
  size_t end = 0;
};
std::optional<OutputToken> ParseOutputToken(const std::string& s, size_t at) {
  static const std::string kSelf = "${output}", kOther = "${output:";
  if (s.compare(at, kSelf.size(), kSelf) == 0) return OutputToken{"", at + kSelf.size()};
  if (s.compare(at, kOther.size(), kOther) != 0) return std::nullopt;
  const size_t close = s.find('}', at);
  if (close == std::string::npos) return std::nullopt;
  std::string id = s.substr(at + kOther.size(), close - at - kOther.size());
  if (!PlainId(id)) return std::nullopt;
  return OutputToken{std::move(id), close + 1};
}

// Every "${output:ID}" in the strings of `v`, with where it is. Each "${output" must be an exact
// token that starts its string and ends it or is followed by '/': "${output}2/x" would otherwise
// name job <self>2's folder, and "/data/${output}" a path the checks never see.
Status OutputRefs(const json& v, const std::string& where,
                  std::vector<std::pair<std::string, std::string>>* ids) {
  if (v.is_string()) {
    const std::string& s = v.get_ref<const std::string&>();
    for (size_t at = 0; (at = s.find("${output", at)) != std::string::npos; ++at) {
      const auto t = ParseOutputToken(s, at);
      if (!t || at != 0 || (t->end != s.size() && s[t->end] != '/')) {
        return PermissionDenied(where + ": '" + s +
                                "': a job's folder is named only by '${output}' or "
                                "'${output:ID}' (ID a job id) at the start of a path, "
                                "followed by '/' or nothing");
      }
      if (!t->id.empty()) ids->emplace_back(where, t->id);
    }
  } else if (v.is_object()) {
    for (const auto& [k, x] : v.items()) RETURN_IF_ERROR(OutputRefs(x, where + "." + k, ids));
  } else if (v.is_array()) {
    for (size_t i = 0; i < v.size(); ++i) {
      RETURN_IF_ERROR(OutputRefs(v[i], where + "[" + std::to_string(i) + "]", ids));
    }
  }
  return Status::Ok();
}

// Whether `p` (lexically normal) lies under `root`.
bool Under(const std::filesystem::path& p, const std::filesystem::path& root) {
  auto r = root.lexically_normal();
  if (!r.empty() && r.filename().empty()) r = r.parent_path();  // "a/b/" -> "a/b"
  auto pi = p.begin();
  for (auto ri = r.begin(); ri != r.end(); ++ri, ++pi) {
    if (pi == p.end() || *pi != *ri) return false;
  }
  return true;
}

bool Active(const JobRecord& j) {
  return j.state == JobState::kAssigned || j.state == JobState::kRunning;
}

// "${output}" -> this job's folder, "${output:ID}" -> job ID's folder, in every string
// (CheckPaths accepted only exact tokens; anything else is left as it is).
void ResolveOutputs(json* v, const std::string& root, const std::string& self) {
  if (v->is_string()) {
    std::string s = v->get<std::string>();
    for (size_t at = 0; (at = s.find("${output", at)) != std::string::npos;) {
      const auto t = ParseOutputToken(s, at);
      if (!t) {
        ++at;
        continue;
      }
      const std::string folder = root + "/" + (t->id.empty() ? self : t->id);
      s.replace(at, t->end - at, folder);
      at += folder.size();
    }
    *v = s;
  } else if (v->is_structured()) {
    for (auto& x : *v) ResolveOutputs(&x, root, self);
  }
}

bool PlacedOn(const JobRecord& j, const std::string& worker) {
  for (const auto& p : j.placement) {
    if (p.value("worker", "") == worker) return true;
  }
  return j.worker == worker;
}

}  // namespace

Clock* SystemClock() {
  static SystemClockImpl c;
  return &c;
}

const char* RoleName(Role r) {
  switch (r) {
    case Role::kSubmitter: return "submitter";
    case Role::kOperator: return "operator";
    case Role::kWorker: return "worker";
  }
  return "?";
}

Core::Core(Store* store, Clock* clock, CoreOptions options)
    : store_(store), clock_(clock), options_(std::move(options)) {
  using T = Metrics::Type;
  metrics_.Declare("rmgen_jobs", T::kGauge, "Jobs not yet final, by state.");
  metrics_.Declare("rmgen_jobs_finished_total", T::kCounter,
                   "Jobs that reached a final state since this coordinator started.");
  metrics_.Declare("rmgen_job_retries_total", T::kCounter,
                   "Attempts that ended and put their job back in the queue.");
  metrics_.Declare("rmgen_leases_expired_total", T::kCounter,
                   "Attempts ended by the coordinator: a worker missed its heartbeats (lease), "
                   "stopped reporting a job (report), or no longer runs it (lost).");
  metrics_.Declare("rmgen_queue_wait_seconds", T::kHistogram,
                   "Time a job waited in QUEUED before it was assigned.",
                   {0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400});
  metrics_.Declare("rmgen_scheduling_pass_seconds", T::kHistogram,
                   "Time of one scheduling pass (placing queued jobs on workers).");
  metrics_.Declare("rmgen_store_write_seconds", T::kHistogram,
                   "Time of one job write to the store (a committed transaction).");
  metrics_.Declare("rmgen_rpc_duration_seconds", T::kHistogram,
                   "gRPC calls served, by method and status code (streams: until they end).");
  metrics_.Declare("rmgen_workers", T::kGauge, "Registered workers by state.");
  metrics_.Declare("rmgen_worker_slots", T::kGauge, "Slots of each registered worker.");
  metrics_.Declare("rmgen_worker_free_slots", T::kGauge,
                   "Slots of each worker not held by an assigned or running job.");
  metrics_.Declare("rmgen_job_step", T::kGauge, "A running job's last reported step.");
  metrics_.Declare("rmgen_job_total_steps", T::kGauge, "A running job's planned steps.");
  metrics_.Declare("rmgen_job_loss", T::kGauge, "A running job's last reported training loss.");
  metrics_.Declare("rmgen_job_tokens_per_second", T::kGauge,
                   "A running job's tokens per second at its last report.");
  metrics_.Declare("rmgen_job_pairs_per_second", T::kGauge,
                   "A running job's preference pairs per second at its last report.");
  metrics_.Declare("rmgen_job_eta_seconds", T::kGauge,
                   "A running job's estimated seconds to its last step.");
}

std::string Core::MetricsText() {
  std::lock_guard<std::mutex> scrape(scrape_m_);  // its gauges are cleared and set afresh
  std::map<std::string, int64_t> states;
  for (const char* s : {"PENDING", "QUEUED", "ASSIGNED", "RUNNING"}) states[s] = 0;
  std::map<std::string, int64_t> live;  // job -> its current attempt
  for (const auto& p : Snapshot()) {
    if (!IsFinal(p->state)) ++states[JobStateName(p->state)];
    if (Active(*p)) live[p->id] = p->attempt;
  }
  metrics_.Clear("rmgen_jobs");
  for (const auto& [s, n] : states) metrics_.Set("rmgen_jobs", {{"state", s}}, double(n));
  metrics_.Clear("rmgen_workers");
  metrics_.Clear("rmgen_worker_slots");
  metrics_.Clear("rmgen_worker_free_slots");
  Caller op;
  op.user = "metrics";
  op.role = Role::kOperator;
  if (auto workers = ListWorkers(op); workers.ok()) {
    std::map<std::string, int64_t> by = {{"alive", 0}, {"draining", 0}, {"dead", 0}};
    for (const auto& w : *workers) {
      ++by[!w.alive ? "dead" : w.worker.draining ? "draining" : "alive"];
      metrics_.Set("rmgen_worker_slots", {{"worker", w.worker.id}}, double(w.worker.slots));
      metrics_.Set("rmgen_worker_free_slots", {{"worker", w.worker.id}}, double(w.free_slots));
    }
    for (const auto& [s, n] : by) metrics_.Set("rmgen_workers", {{"state", s}}, double(n));
  }
  static const char* kProgress[] = {"rmgen_job_step",
                                    "rmgen_job_total_steps",
                                    "rmgen_job_loss",
                                    "rmgen_job_tokens_per_second",
                                    "rmgen_job_pairs_per_second",
                                    "rmgen_job_eta_seconds"};
  for (const char* family : kProgress) metrics_.Clear(family);
  {
    std::lock_guard<std::mutex> g(progress_m_);
    // A report that raced its attempt's end (or an earlier attempt's) is dropped.
    for (auto it = progress_.begin(); it != progress_.end();) {
      auto l = live.find(it->first);
      const bool current = l != live.end() && it->second.attempt == l->second;
      it = current ? std::next(it) : progress_.erase(it);
    }
    for (const auto& [id, e] : progress_) {
      const MetricLabels labels = {{"job", id}, {"kind", e.kind}};
      const StepProgress& p = e.step;
      metrics_.Set("rmgen_job_step", labels, double(p.step));
      if (p.total_steps) metrics_.Set("rmgen_job_total_steps", labels, double(*p.total_steps));
      metrics_.Set("rmgen_job_loss", labels, p.loss);
      if (p.tokens_per_s) metrics_.Set("rmgen_job_tokens_per_second", labels, *p.tokens_per_s);
      if (p.pairs_per_s) metrics_.Set("rmgen_job_pairs_per_second", labels, *p.pairs_per_s);
      if (p.eta_s) metrics_.Set("rmgen_job_eta_seconds", labels, *p.eta_s);
    }
  }
  return metrics_.Render();
}

void Core::IndexLocked(const JobRecord& j) {
  pending_ids_.erase(j.id);
  held_ids_.erase(j.id);
  if (j.state == JobState::kPending) pending_ids_.insert(j.id);
  if (Active(j)) held_ids_.insert(j.id);
}

void Core::Cache(const JobRecord& j) {
  std::lock_guard<std::mutex> l(cache_m_);
  if (IsFinal(j.state)) {
    active_.erase(j.id);
    pending_ids_.erase(j.id);
    held_ids_.erase(j.id);
    final_[j.id] = j.state;
  } else {
    active_[j.id] = std::make_shared<const JobRecord>(j);
    IndexLocked(j);
  }
}

std::vector<std::shared_ptr<const JobRecord>> Core::PendingSnapshot() {
  std::lock_guard<std::mutex> l(cache_m_);
  std::vector<std::shared_ptr<const JobRecord>> out;
  for (const auto& id : pending_ids_) out.push_back(active_.at(id));
  return out;
}

std::vector<std::shared_ptr<const JobRecord>> Core::HeldSnapshot() {
  std::lock_guard<std::mutex> l(cache_m_);
  std::vector<std::shared_ptr<const JobRecord>> out;
  for (const auto& id : held_ids_) out.push_back(active_.at(id));
  return out;
}

std::vector<std::shared_ptr<const JobRecord>> Core::Snapshot() {
  std::lock_guard<std::mutex> l(cache_m_);
  std::vector<std::shared_ptr<const JobRecord>> out;
  out.reserve(active_.size());
  for (const auto& [id, p] : active_) out.push_back(p);
  return out;
}

std::vector<JobRecord> Core::ActiveCopy() {
  std::vector<JobRecord> out;
  for (const auto& p : Snapshot()) out.push_back(*p);
  return out;
}

StatusOr<JobRecord> Core::Lookup(const std::string& id) {
  {
    std::lock_guard<std::mutex> l(cache_m_);
    auto it = active_.find(id);
    if (it != active_.end()) return *it->second;
  }
  return store_->GetJob(id);
}

StatusOr<JobState> Core::StateOf(const std::string& id) {
  {
    std::lock_guard<std::mutex> l(cache_m_);
    auto a = active_.find(id);
    if (a != active_.end()) return a->second->state;
    auto f = final_.find(id);
    if (f != final_.end()) return f->second;
  }
  ASSIGN_OR_RETURN(JobRecord j, store_->GetJob(id));
  Cache(j);
  return j.state;
}

StatusOr<JobRecord> Core::Write(const JobRecord& j) {
  const auto t0 = std::chrono::steady_clock::now();
  auto stored = store_->UpdateJob(j, Now());
  metrics_.Observe("rmgen_store_write_seconds", {},
                   std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  if (stored.ok() && IsFinal(stored->state)) {
    metrics_.Inc("rmgen_jobs_finished_total", {{"state", JobStateName(stored->state)}});
  }
  if (stored.ok() && stored->state != JobState::kRunning && stored->state != JobState::kAssigned) {
    std::lock_guard<std::mutex> g(progress_m_);
    progress_.erase(j.id);
  }
  if (!stored.ok()) {
    // The store is the truth: whatever we held for this job is refreshed from it, so the
    // next pass decides on current data.
    auto fresh = store_->GetJob(j.id);
    if (fresh.ok()) {
      if (fresh->version != j.version) {
        std::fprintf(stderr,
                     "rmgen-coordinator: job %s was written at version %lld, store has %lld\n",
                     j.id.c_str(), (long long)j.version, (long long)fresh->version);
      }
      Cache(*fresh);
    }
    return stored.status();
  }
  Cache(*stored);
  if (!Active(*stored)) {
    std::lock_guard<std::mutex> l(lease_m_);
    job_lease_.erase(stored->id);
    job_started_.erase(stored->id);
  }
  LogChange(*stored);
  return *stored;
}

Status Core::LoadWorkersLocked() {
  if (workers_loaded_) return Status::Ok();
  ASSIGN_OR_RETURN(auto all, store_->ListWorkers());
  for (auto& w : all) workers_[w.id] = std::move(w);
  workers_loaded_ = true;
  return Status::Ok();
}

StatusOr<std::vector<WorkerRecord>> Core::Workers() {
  std::lock_guard<std::mutex> l(cache_m_);
  RETURN_IF_ERROR(LoadWorkersLocked());
  std::vector<WorkerRecord> out;
  out.reserve(workers_.size());
  for (const auto& [id, w] : workers_) out.push_back(w);
  return out;
}

StatusOr<WorkerRecord> Core::WorkerOf(const std::string& id) {
  std::lock_guard<std::mutex> l(cache_m_);
  RETURN_IF_ERROR(LoadWorkersLocked());
  auto it = workers_.find(id);
  if (it == workers_.end()) return NotFoundError("worker " + id + " not found");
  return it->second;
}

Status Core::PutWorker(const WorkerRecord& w) {
  RETURN_IF_ERROR(store_->PutWorker(w));
  std::lock_guard<std::mutex> l(cache_m_);
  RETURN_IF_ERROR(LoadWorkersLocked());
  workers_[w.id] = w;
  return Status::Ok();
}

Status Core::CacheStudyJobs(const std::string& study_id) {
  JobFilter f;
  f.study_id = study_id;
  f.page_size = 1000;
  for (;;) {
    ASSIGN_OR_RETURN(JobPage p, store_->ListJobs(f));
    for (const auto& j : p.jobs) Cache(j);
    if (p.next_page_token.empty()) break;
    f.page_token = p.next_page_token;
  }
  return Status::Ok();
}

void Core::Notify() {
  {
    std::lock_guard<std::mutex> l(notify_m_);
    ++changes_;
  }
  notify_cv_.notify_all();
}

uint64_t Core::Changes() {
  std::lock_guard<std::mutex> l(notify_m_);
  return changes_;
}

uint64_t Core::WaitForChange(uint64_t seen, int64_t timeout_ms) {
  std::unique_lock<std::mutex> l(notify_m_);
  notify_cv_.wait_for(l, std::chrono::milliseconds(timeout_ms), [&] { return changes_ != seen; });
  return changes_;
}

void Core::LogChange(const JobRecord& j) {
  if (j.study_id.empty()) return;
  std::lock_guard<std::mutex> l(notify_m_);
  ChangeLog& log = study_changes_[j.study_id];
  log.recent.emplace_back(++log.seq, j.id);
  log.last_mono = clock_->MonoMs();
  if (log.recent.size() > 2 * kChangeLog) {
    log.recent.erase(log.recent.begin(), log.recent.end() - kChangeLog);
  }
}

void Core::PruneChangeLogs() {
  const int64_t idle_since = clock_->MonoMs() - kChangeLogIdleMs;
  std::lock_guard<std::mutex> l(notify_m_);
  for (auto it = study_changes_.begin(); it != study_changes_.end();) {
    it = it->second.last_mono < idle_since ? study_changes_.erase(it) : std::next(it);
  }
}

uint64_t Core::StudyChanges(const std::string& study_id, uint64_t seen,
                            std::vector<std::string>* jobs, bool* complete) {
  std::lock_guard<std::mutex> l(notify_m_);
  auto it = study_changes_.find(study_id);
  if (it == study_changes_.end()) {
    *complete = seen == 0;
    return 0;
  }
  const ChangeLog& log = it->second;
  // The log reaches back to `seen` when its oldest entry is seen + 1 or older.
  *complete = seen >= log.seq || (!log.recent.empty() && log.recent.front().first <= seen + 1);
  if (seen > log.seq) *complete = false;  // a counter from before a restart
  std::set<std::string> once;
  for (auto e = log.recent.rbegin(); e != log.recent.rend() && e->first > seen; ++e) {
    if (once.insert(e->second).second) jobs->push_back(e->second);
  }
  std::reverse(jobs->begin(), jobs->end());
  return log.seq;
}

uint64_t Core::WaitForStudyChange(const std::string& study_id, uint64_t seen, int64_t timeout_ms) {
  std::unique_lock<std::mutex> l(notify_m_);
  auto now = [&]() -> uint64_t {
    auto it = study_changes_.find(study_id);
    return it == study_changes_.end() ? 0 : it->second.seq;
  };
  notify_cv_.wait_for(l, std::chrono::milliseconds(timeout_ms), [&] { return now() != seen; });
  return now();
}

Status Core::CanSee(const Caller& c, const std::string& owner) const {
  if (c.role == Role::kOperator) return Status::Ok();
  if (c.role == Role::kWorker) return PermissionDenied("the worker role has no client calls");
  if (owner == c.user) return Status::Ok();
  return PermissionDenied("it belongs to another user ('" + owner + "'); only an operator may");
}

Status Core::RequireWorker(const Caller& c) const {
  if (c.role == Role::kWorker || c.role == Role::kOperator) return Status::Ok();
  return PermissionDenied("worker calls need the worker role (caller '" + c.user + "' is " +
                          RoleName(c.role) + ")");
}

Status Core::RequireClient(const Caller& c) const {
  if (c.role != Role::kWorker) return Status::Ok();
  return PermissionDenied("the worker role has no client calls");
}

Status Core::Recover() {
  std::lock_guard<std::mutex> l(m_);
  ASSIGN_OR_RETURN(auto workers, Workers());
  {
    // Every known worker gets a fresh lease to reconnect in (it registers again: sessions
    // are not kept across a restart).
    std::lock_guard<std::mutex> g(lease_m_);
    for (const auto& w : workers) {
      Live& live = live_[w.id];
      live.deadline = clock_->MonoMs() + options_.lease_ms;
      live.instance = w.instance;  // its agent may come back; another may not meanwhile
    }
  }
  {
    ASSIGN_OR_RETURN(auto stored, store_->ActiveJobs());
    std::lock_guard<std::mutex> c(cache_m_);
    active_.clear();
    pending_ids_.clear();
    held_ids_.clear();
    for (auto& j : stored) {
      // (Not `active_[j.id] = make_shared(std::move(j))`: the right side runs first.)
      auto p = std::make_shared<const JobRecord>(std::move(j));
      IndexLocked(*p);
      active_[p->id] = std::move(p);
    }
  }
  {
    std::lock_guard<std::mutex> g(lease_m_);
    for (const auto& j : HeldSnapshot()) {
      job_lease_[j->id] = clock_->MonoMs() + options_.lease_ms;
      job_started_[j->id] = clock_->MonoMs();  // for the "lost" check: from this start
    }
  }
  RETURN_IF_ERROR(SettleDependencies());
  Notify();
  return Status::Ok();
}

StatusOr<StudyView> Core::View(const StudyRecord& s) {
  StudyView v;
  v.study = s;
  JobFilter f;
  f.study_id = s.id;
  f.page_size = 1000;
  for (;;) {
    ASSIGN_OR_RETURN(JobPage p, store_->ListJobs(f));
    for (const auto& j : p.jobs) {
      ++v.job_states[JobStateName(j.state)];
      ++v.jobs_total;
    }
    if (p.next_page_token.empty()) break;
    f.page_token = p.next_page_token;
  }
  return v;
}

StatusOr<std::vector<JobRecord>> Core::PlanStudyDryRun(const Caller& c, const std::string& yaml,
                                                       const std::string& source) {
  RETURN_IF_ERROR(RequireClient(c));
  const std::string name = source.empty() ? "study.yaml" : source;
  PlanLimits limits;
  limits.max_jobs = options_.max_jobs_per_study > 0 ? options_.max_jobs_per_study : INT64_MAX;
  ASSIGN_OR_RETURN(Study study, ParseStudy(yaml, name, limits));
  ASSIGN_OR_RETURN(std::vector<JobRecord> jobs, PlanStudy(study, c.user, name, limits));
  for (size_t k = 0; k < jobs.size(); ++k) {
    jobs[k].id = "#" + std::to_string(k);
    jobs[k].max_attempts = options_.max_attempts;
    jobs[k].state = JobState::kPending;
  }
  RETURN_IF_ERROR(CheckSubmission(c, jobs).WithContext(name));
  RETURN_IF_ERROR(CheckPaths(c, jobs, /*plan=*/true).WithContext(name));
  RETURN_IF_ERROR(CheckStudyReads(c, study).WithContext(name));
  RETURN_IF_ERROR(CheckMemory(jobs, &study));
  return jobs;
}

StatusOr<std::pair<StudyView, bool>> Core::SubmitStudy(const Caller& c, const std::string& yaml,
                                                       const std::string& source,
                                                       const std::string& request_id) {
  RETURN_IF_ERROR(RequireClient(c));
  // A retried submission is answered before its file is parsed and planned again.
  if (!request_id.empty()) {
    ASSIGN_OR_RETURN(std::string seen, store_->LookupRequest(c.user, request_id));
    if (!seen.empty()) {
      auto first = store_->GetStudy(seen);
      if (!first.ok()) {
        return InvalidArgumentError("request id '" + request_id + "' was used for job " + seen +
                                    ", not a study: use a new request id");
      }
      {
        std::lock_guard<std::mutex> l(m_);
        RETURN_IF_ERROR(CopyReusedResults(first->id));  // heals a failure between two writes
      }
      ASSIGN_OR_RETURN(StudyView v, View(*first));
      return std::make_pair(v, false);
    }
  }
  const std::string name = source.empty() ? "study.yaml" : source;
  // Parsing, planning and the checks take no lock: heartbeats, acquires and reports go on.
  PlanLimits limits;
  limits.max_jobs = options_.max_jobs_per_study > 0 ? options_.max_jobs_per_study : INT64_MAX;
  ASSIGN_OR_RETURN(Study study, ParseStudy(yaml, name, limits));
  ASSIGN_OR_RETURN(std::vector<JobRecord> jobs, PlanStudy(study, c.user, name, limits));
  for (auto& j : jobs) j.max_attempts = options_.max_attempts;
  RETURN_IF_ERROR(CheckSubmission(c, jobs).WithContext(name));
  std::vector<std::pair<size_t, std::string>> reused;  // plan index -> finished job
  RETURN_IF_ERROR(ReuseFinished(c.user, &jobs, &reused));
  // Held until the jobs are cached: concurrent submissions cannot pass the quota together.
  ASSIGN_OR_RETURN(auto quota, ReserveActiveJobs(c, jobs));
  RETURN_IF_ERROR(CheckPaths(c, jobs, /*plan=*/true).WithContext(name));
  // Before CheckMemory reads the models' config files here, on the coordinator.
  RETURN_IF_ERROR(CheckStudyReads(c, study).WithContext(name));
  RETURN_IF_ERROR(CheckMemory(jobs, &study));
  StudyRecord rec;
  rec.request_id = request_id;
  rec.user = c.user;
  rec.name = study.name;
  rec.setting = study.setting;
  rec.source = yaml;
  rec.plan = study.ToJson();
  std::lock_guard<std::mutex> l(m_);
  ASSIGN_OR_RETURN(auto created, store_->CreateStudy(rec, jobs, Now()));
  // The reused jobs' results under this study's job ids. Done on every call, a repeated
  // request id too, so a failure between the two writes heals on the client's retry (and
  // GetResults falls back to `reused_from` meanwhile).
  RETURN_IF_ERROR(CopyReusedResults(created.record.id));
  RETURN_IF_ERROR(CacheReserved(quota, [&] { return CacheStudyJobs(created.record.id); }));
  if (!reused.empty()) RETURN_IF_ERROR(SettleDependencies());
  Notify();
  ASSIGN_OR_RETURN(StudyView v, View(created.record));
  return std::make_pair(v, created.created);
}

namespace {

// A job's content key: its kind and spec, with every "${output:#k}" (a job of the same plan)
// replaced by that job's own key, so equal keys mean equal inputs all the way down.
std::string ContentKey(const JobRecord& j, const std::vector<std::string>& keys) {
  std::function<void(json*)> rewrite = [&](json* v) {
    if (v->is_string()) {
      std::string s = v->get<std::string>();
      for (size_t at = 0; (at = s.find("${output:#", at)) != std::string::npos;) {
        const size_t end = s.find('}', at);
        if (end == std::string::npos) break;
        const size_t k = std::strtoul(s.c_str() + at + 10, nullptr, 10);
        if (k < keys.size()) {
          s.replace(at, end + 1 - at, "${content:" + keys[k] + "}");
        } else {
          ++at;
        }
      }
      *v = s;
    } else if (v->is_structured()) {
      for (auto& x : *v) rewrite(&x);
    }
  };
  json spec = j.spec;
  rewrite(&spec);
  // The version names what rmgen-train computes from a spec: bump it when that changes.
  return HexHash(std::string(kReuseKeyVersion) + "\n" + j.kind + "\n" + std::to_string(j.ranks) +
                 "\n" + spec.dump());
}

}  // namespace

Status Core::CopyReusedResults(const std::string& study_id) {
  JobFilter f;
  f.study_id = study_id;
  f.state = JobState::kSucceeded;
  f.page_size = 1000;
  for (;;) {
    ASSIGN_OR_RETURN(JobPage p, store_->ListJobs(f));
    for (const auto& j : p.jobs) {
      const std::string from = j.labels.value("reused_from", "");
      if (from.empty()) continue;
      ASSIGN_OR_RETURN(auto mine, store_->GetResult(j.id));
      if (mine) continue;
      ASSIGN_OR_RETURN(auto r, store_->GetResult(from));
      if (!r) continue;
      r->job_id = j.id;
      RETURN_IF_ERROR(store_->RecordResult(*r));
    }
    if (p.next_page_token.empty()) break;
    f.page_token = p.next_page_token;
  }
  return Status::Ok();
}

Status Core::ReuseFinished(const std::string& user, std::vector<JobRecord>* jobs,
                           std::vector<std::pair<size_t, std::string>>* reused) {
  // The user's finished jobs by content key (the label their submission gave them).
  std::map<std::string, std::vector<std::string>> finished;  // newest first
  JobFilter f;
  f.user = user;
  f.state = JobState::kSucceeded;
  f.page_size = 1000;
  for (;;) {
    ASSIGN_OR_RETURN(JobPage p, store_->ListJobs(f));
    for (const auto& j : p.jobs) {
      const std::string key = j.labels.value("content_key", "");
      if (!key.empty() && !j.labels.contains("reused_from")) {
        finished[key].insert(finished[key].begin(), j.id);
      }
    }
    if (p.next_page_token.empty()) break;
    f.page_token = p.next_page_token;
  }
  // Outputs must still be there, where this coordinator can see the output root.
  std::error_code ec;
  const bool root_visible = std::filesystem::is_directory(options_.output_root, ec);
  std::vector<std::string> keys;
  for (size_t k = 0; k < jobs->size(); ++k) {
    JobRecord& j = (*jobs)[k];
    keys.push_back(ContentKey(j, keys));
    j.labels["content_key"] = keys.back();
    auto candidates = finished.find(keys.back());
    if (candidates == finished.end()) continue;
    bool deps_reused = true;
    for (const auto& d : j.deps) {
      const size_t idx = std::strtoul(d.c_str() + 1, nullptr, 10);
      deps_reused = deps_reused && std::any_of(reused->begin(), reused->end(),
                                               [&](const auto& r) { return r.first == idx; });
    }
    if (!deps_reused) continue;
    // The newest finished job whose outputs and result are still there.
    std::string from;
    for (const auto& id : candidates->second) {
      if (root_visible &&
          !std::filesystem::exists(std::filesystem::path(options_.output_root) / id, ec)) {
        continue;
      }
      ASSIGN_OR_RETURN(auto result, store_->GetResult(id));
      if (result) {
        from = id;
        break;
      }
    }
    if (from.empty()) continue;
    j.state = JobState::kSucceeded;
    j.reason = "reused: the same inputs finished as job " + from;
    j.labels["reused_from"] = from;
    reused->emplace_back(k, from);
  }
  // Later jobs read a reused job's outputs where they are.
  std::function<void(json*)> point = [&](json* v) {
    if (v->is_string()) {
      std::string s = v->get<std::string>();
      for (const auto& [idx, id] : *reused) {
        const std::string from = "${output:#" + std::to_string(idx) + "}";
        for (size_t at; (at = s.find(from)) != std::string::npos;) {
          s.replace(at, from.size(), "${output:" + id + "}");
        }
      }
      *v = s;
    } else if (v->is_structured()) {
      for (auto& x : *v) point(&x);
    }
  };
  if (!reused->empty()) {
    for (auto& j : *jobs) point(&j.spec);
  }
  return Status::Ok();
}

Status Core::CheckMemory(const std::vector<JobRecord>& jobs, const Study* study) {
  ASSIGN_OR_RETURN(auto all, Workers());
  const int64_t now = Now();
  std::vector<WorkerRecord> recent;
  int64_t reporting_slots = 0;
  for (auto& w : all) {
    FillLease(&w);
    if (w.lease_deadline_ms < now && w.last_heartbeat_ms < now - kRecentWorkerMs) continue;
    if (w.memory_bytes_per_slot > 0) reporting_slots += w.slots;
    recent.push_back(std::move(w));
  }
  if (reporting_slots == 0) return Status::Ok();
  std::string first;
  int64_t refused = 0;
  for (const JobRecord& j : jobs) {
    if (IsFinal(j.state)) continue;  // reused results
    auto cfg = JobModelConfig(j, study, options_.plan_base_dir);
    if (!cfg.ok()) continue;  // nothing to plan with: rmgen-train will tell
    const MemoryEstimate e = EstimateJobMemory(*cfg, j.spec, j.ranks);
    const WorkerFit fit = CheckWorkerFit(e.total, j.ranks, recent);
    // Refused for memory only: too few slots right now is the queue's matter (workers join).
    if (!fit.known || fit.fits || fit.largest_memory >= e.total) continue;
    if (++refused > 1) continue;
    first = "job '" + j.name + "' (" + j.kind + ", " + std::to_string(j.ranks) +
            (j.ranks == 1 ? " rank" : " ranks") + ") fits on no worker: " + e.Summary() +
            "; the largest worker memory known is " + FormatBytes(fit.largest_memory) +
            " per slot (" + fit.largest_worker + ")";
    std::string fits;
    const auto advice = AdviseMemory(*cfg, j.spec, j.ranks, fit.largest_memory,
                                     std::max<int64_t>(j.ranks, reporting_slots));
    for (const auto& o : advice) {
      if (!o.fits) continue;
      fits += (fits.empty() ? "" : "; ") + o.change + " (" + FormatBytes(o.estimate.total) + ")";
    }
    if (!fits.empty()) {
      first += ". Would fit: " + fits;
    } else if (!advice.empty()) {
      first += ". Nothing rmgen can change fits it; the least is " + advice.front().change + " (" +
               FormatBytes(advice.front().estimate.total) + ")";
    }
  }
  if (refused == 0) return Status::Ok();
  if (refused > 1) {
    first += " (and " + std::to_string(refused - 1) +
             (refused == 2 ? " more job does not fit)" : " more jobs do not fit)");
  }
  return FailedPreconditionError(first + ". HINT: `rmgen plan` prints every job's memory per rank");
}

Status Core::CheckSubmission(const Caller& c, const std::vector<JobRecord>& jobs) {
  const int64_t n = static_cast<int64_t>(jobs.size());
  if (options_.max_jobs_per_study > 0 && n > options_.max_jobs_per_study) {
    return InvalidArgumentError(
        "the plan has " + std::to_string(n) + " jobs, more than this coordinator's limit of " +
        std::to_string(options_.max_jobs_per_study) + " per study (--max-jobs-per-study)");
  }
  if (c.role != Role::kOperator) {
    const int64_t cap = options_.max_submitter_priority;
    for (const auto& j : jobs) {
      if (j.priority < -cap || j.priority > cap) {
        return PermissionDenied("field 'priority': " + std::to_string(j.priority) +
                                " is outside [-" + std::to_string(cap) + ", " +
                                std::to_string(cap) +
                                "], the range for submitters (--max-submitter-priority; "
                                "operators may set any)");
      }
    }
  }
  return Status::Ok();
}

namespace {

// A submission's reservation against max_active_jobs_per_user (Core::ReserveActiveJobs).
struct QuotaHold {
  std::string user;
  int64_t jobs = 0;  // still reserved: 0 once cached
};

}  // namespace

StatusOr<std::shared_ptr<void>> Core::ReserveActiveJobs(const Caller& c,
                                                        const std::vector<JobRecord>& jobs) {
  if (options_.max_active_jobs_per_user <= 0) return std::shared_ptr<void>();
  int64_t adding = 0;
  for (const auto& j : jobs) adding += !IsFinal(j.state);
  // Held and reserved are read together under quota_m_, and a submission's jobs move from
  // one to the other under it too (CacheReserved): each counts exactly once.
  std::lock_guard<std::mutex> l(quota_m_);
  int64_t held = 0;
  for (const auto& p : Snapshot()) held += p->user == c.user;
  const auto it = reserved_.find(c.user);
  const int64_t reserved = it == reserved_.end() ? 0 : it->second;
  if (held + reserved + adding > options_.max_active_jobs_per_user) {
    return Status(StatusCode::kResourceExhausted,
                  "user '" + c.user + "' has " + std::to_string(held + reserved) +
                      " jobs not yet finished (or being submitted); " + std::to_string(adding) +
                      " more would pass the limit of " +
                      std::to_string(options_.max_active_jobs_per_user) +
                      " (--max-active-jobs-per-user): wait for some to finish or cancel some");
  }
  reserved_[c.user] += adding;
  auto* hold = new QuotaHold{c.user, adding};
  return std::shared_ptr<void>(hold, [this](void* p) {
    std::unique_ptr<QuotaHold> h(static_cast<QuotaHold*>(p));
    if (h->jobs > 0) {  // the submission failed before its jobs were cached
      std::lock_guard<std::mutex> g(quota_m_);
      ReleaseLocked(h->user, h->jobs);
    }
  });
}

void Core::ReleaseLocked(const std::string& user, int64_t jobs) {
  auto it = reserved_.find(user);
  if (it != reserved_.end() && (it->second -= jobs) <= 0) reserved_.erase(it);
}

Status Core::CacheReserved(const std::shared_ptr<void>& token,
                           const std::function<Status()>& cache) {
  if (!token) return cache();
  std::lock_guard<std::mutex> l(quota_m_);
  Status st = cache();
  auto* h = static_cast<QuotaHold*>(token.get());
  ReleaseLocked(h->user, h->jobs);
  h->jobs = 0;
  return st;
}

Status Core::CheckPaths(const Caller& c, const std::vector<JobRecord>& jobs, bool plan) {
  for (const JobRecord& j : jobs) {
    const std::string who = "job '" + j.name + "'";
    // "${output:ID}": a job of this plan ("#k"), or one of the caller's own jobs (a lone job
    // names one it submitted; a study's reuse points at the caller's finished ones).
    std::vector<std::pair<std::string, std::string>> refs;  // field, id
    RETURN_IF_ERROR(OutputRefs(j.spec, who + ": spec", &refs));
    for (const auto& [where, id] : refs) {
      if (id[0] == '#') {
        // Rewritten to the job's id when the plan is stored: only a job of this plan.
        const std::string k = id.substr(1);
        const bool digits =
            !k.empty() && k.size() < 10 &&
            std::all_of(k.begin(), k.end(), [](char ch) { return ch >= '0' && ch <= '9'; });
        if (!plan || !digits || std::stoll(k) >= static_cast<int64_t>(jobs.size())) {
          return PermissionDenied(where + ": '${output:" + id + "}' names no job of this " +
                                  (plan ? "plan" : "submission (a lone job names others by id)"));
        }
        continue;
      }
      auto other = Lookup(id);
      if (!other.ok() || other->user != c.user) {
        return PermissionDenied(where + ": '${output:" + id + "}' names no job of user '" + c.user +
                                "'");
      }
    }
    auto parsed = ParseJobSpecJson(j.spec, "spec");
    if (!parsed.ok()) {
      if (options_.confine_paths) return parsed.status().WithContext(who);  // fail closed
      continue;  // the submission checks report it
    }
    for (const auto& [field, value] : SpecPaths(*parsed)) {
      RETURN_IF_ERROR(CheckPath(c, who, field, value));
    }
  }
  return Status::Ok();
}

Status Core::CheckStudyReads(const Caller& c, const Study& study) {
  for (const auto& [field, value] : StudyPlanReads(study)) {
    RETURN_IF_ERROR(CheckPath(c, "study", field, value));
  }
  return Status::Ok();
}

std::string Core::ReferenceCacheDir(const std::string& user) const {
  return run_dir::Join(run_dir::Join(options_.output_root, run_dir::kRefCache),
                       HexHash(user).substr(0, 16));
}

Status Core::CheckPath(const Caller& c, const std::string& who, const std::string& field,
                       const std::string& value) {
  namespace fs = std::filesystem;
  if (value.empty()) return Status::Ok();
  const std::string at = who + ": field '" + field + "': '" + value + "'";
  const auto token = ParseOutputToken(value, 0);  // OutputRefs checked its form and owner
  const std::string rest = token ? value.substr(token->end) : value;
  // On the raw components: lexically_normal() folds "a/../.." and "${output}/.." away.
  for (const auto& part : fs::path(rest)) {
    if (part == ".." && (token || options_.confine_paths)) {
      return PermissionDenied(at + " climbs out with '..'");
    }
  }
  if (token || !options_.confine_paths) return Status::Ok();
  const fs::path p = fs::path(rest).lexically_normal();
  if (p.is_relative()) return Status::Ok();  // under the worker's working directory
  std::error_code ec;
  const fs::path out = fs::absolute(options_.output_root, ec).lexically_normal();
  if (ec || out.empty()) return PermissionDenied(at + ": the output root cannot be resolved");
  if (Under(p, out)) {
    // Inside the output root only the caller's own: its jobs' folders and its reference
    // cache. Another user's checkpoints or cached log-probs are not readable by path.
    const fs::path inner = p.lexically_relative(out);
    auto part = inner.begin();
    const std::string first = part == inner.end() ? "" : part->string();
    const std::string second = part == inner.end() || ++part == inner.end() ? "" : part->string();
    bool own = false;
    if (first == run_dir::kRefCache) {
      own = !second.empty() && fs::path(ReferenceCacheDir(c.user)).filename() == second;
    } else if (PlainId(first) && first[0] != '#') {
      auto job = Lookup(first);
      own = job.ok() && job->user == c.user;
    }
    if (!own) {
      return PermissionDenied(at +
                              " is in the output root but not in a job or reference "
                              "cache of user '" +
                              c.user + "'; name a job's folder as '${output:ID}'");
    }
    return Status::Ok();
  }
  for (const auto& root : options_.denied_roots) {
    const fs::path r = fs::absolute(root, ec).lexically_normal();
    if (ec || r.empty() || Under(p, r)) {
      return PermissionDenied(at + " is in the coordinator's data directory");
    }
  }
  for (const auto& root : options_.data_roots) {
    const fs::path r = fs::absolute(root, ec).lexically_normal();
    if (!ec && !r.empty() && Under(p, r)) return Status::Ok();
  }
  std::string roots;
  for (const auto& r : options_.data_roots) roots += (roots.empty() ? "" : ", ") + r;
  return PermissionDenied(at + " is outside this coordinator's data roots (" +
                          (roots.empty() ? "none configured" : roots) +
                          ") and the output root; an operator adds roots with --data-root");
}

StatusOr<StudyView> Core::GetStudy(const Caller& c, const std::string& id) {
  RETURN_IF_ERROR(RequireClient(c));
  ASSIGN_OR_RETURN(StudyRecord s, store_->GetStudy(id));
  RETURN_IF_ERROR(CanSee(c, s.user).WithContext("study " + id));
  return View(s);
}

StatusOr<std::vector<StudyView>> Core::ListStudies(const Caller& c, bool all_users,
                                                   const std::string& page_token, int64_t page_size,
                                                   std::string* next_page_token) {
  RETURN_IF_ERROR(RequireClient(c));
  if (all_users && c.role != Role::kOperator) {
    return PermissionDenied("listing every user's studies needs the operator role");
  }
  StudyFilter f;
  f.user = all_users ? "" : c.user;
  f.page_size = page_size;
  f.page_token = page_token;
  ASSIGN_OR_RETURN(StudyPage page, store_->ListStudies(f));
  if (next_page_token) *next_page_token = page.next_page_token;
  std::vector<StudyView> out;
  for (const auto& s : page.studies) {
    ASSIGN_OR_RETURN(StudyView v, View(s));
    out.push_back(std::move(v));
  }
  return out;
}

Status Core::CancelJobRecord(JobRecord j, const std::string& why) {
  if (IsFinal(j.state)) return Status::Ok();
  if (Active(j) && !j.history.empty()) {
    j.history.back().outcome = "cancelled";
    j.history.back().ended_ms = Now();
  }
  j.state = JobState::kCancelled;
  j.reason = why;
  return Write(j).status();
}

StatusOr<StudyView> Core::CancelStudy(const Caller& c, const std::string& id) {
  RETURN_IF_ERROR(RequireClient(c));
  std::lock_guard<std::mutex> l(m_);
  ASSIGN_OR_RETURN(StudyRecord s, store_->GetStudy(id));
  RETURN_IF_ERROR(CanSee(c, s.user).WithContext("cancel study " + id));
  s.cancelled = true;
  RETURN_IF_ERROR(store_->UpdateStudy(s));
  JobFilter f;
  f.study_id = id;
  f.page_size = 1000;
  for (;;) {
    ASSIGN_OR_RETURN(JobPage p, store_->ListJobs(f));
    for (const auto& j : p.jobs) {
      RETURN_IF_ERROR(CancelJobRecord(j, "study cancelled by " + c.user));
    }
    if (p.next_page_token.empty()) break;
    f.page_token = p.next_page_token;
  }
  Notify();
  return View(s);
}

StatusOr<Created<JobRecord>> Core::SubmitJob(const Caller& c, const json& spec,
                                             const std::string& name, int64_t ranks,
                                             int64_t priority, const std::string& request_id) {
  RETURN_IF_ERROR(RequireClient(c));
  if (!spec.is_object()) return InvalidArgumentError("spec: expected an rmgen-train job spec");
  ASSIGN_OR_RETURN(JobSpec parsed, ParseJobSpec(spec.dump(), "spec"));
  if (ranks < 0 || ranks > 4096) return InvalidArgumentError("ranks: must be in [1, 4096]");
  JobRecord j;
  j.user = c.user;
  j.name = name.empty() ? std::string(JobKindName(parsed.kind)) : name;
  j.kind = JobKindName(parsed.kind);
  j.spec = parsed.resolved;
  j.ranks = ranks == 0 ? 1 : ranks;
  j.priority = priority;
  j.max_attempts = options_.max_attempts;
  j.state = JobState::kQueued;
  j.reason = "waiting for a worker";
  if (!request_id.empty()) {  // a retry: answered before the checks, as it was the first time
    ASSIGN_OR_RETURN(std::string seen, store_->LookupRequest(c.user, request_id));
    if (!seen.empty()) {
      auto first = store_->GetJob(seen);
      if (!first.ok()) {
        return InvalidArgumentError("request id '" + request_id + "' was used for study " + seen +
                                    ", not a job: use a new request id");
      }
      return Created<JobRecord>{*first, false};
    }
  }
  RETURN_IF_ERROR(CheckSubmission(c, {j}));
  ASSIGN_OR_RETURN(auto quota, ReserveActiveJobs(c, {j}));  // until cached
  RETURN_IF_ERROR(CheckPaths(c, {j}, /*plan=*/false));
  RETURN_IF_ERROR(CheckMemory({j}, nullptr));
  // Not under m_: the store commits concurrent submissions together (group commit), and a
  // new QUEUED job needs nothing else settled.
  ASSIGN_OR_RETURN(auto created, store_->CreateJob(j, request_id, Now()));
  RETURN_IF_ERROR(CacheReserved(quota, [&] {
    if (created.created) Cache(created.record);
    return Status::Ok();
  }));
  Notify();
  return created;
}

StatusOr<JobRecord> Core::GetJob(const Caller& c, const std::string& id) {
  RETURN_IF_ERROR(RequireClient(c));
  ASSIGN_OR_RETURN(JobRecord j, Lookup(id));  // the cache for active jobs, else the store
  RETURN_IF_ERROR(CanSee(c, j.user).WithContext("job " + id));
  if (j.state == JobState::kQueued) {
    std::lock_guard<std::mutex> l(m_);
    auto it = waiting_.find(id);
    if (it != waiting_.end()) j.reason = it->second;
  }
  return j;
}

StatusOr<JobPage> Core::ListJobs(const Caller& c, JobFilter filter, bool all_users) {
  RETURN_IF_ERROR(RequireClient(c));
  if (all_users && c.role != Role::kOperator) {
    return PermissionDenied("listing every user's jobs needs the operator role");
  }
  if (!all_users) filter.user = c.user;
  ASSIGN_OR_RETURN(JobPage p, store_->ListJobs(filter));
  std::lock_guard<std::mutex> l(m_);
  for (auto& j : p.jobs) {
    auto it = waiting_.find(j.id);
    if (j.state == JobState::kQueued && it != waiting_.end()) j.reason = it->second;
  }
  return p;
}

StatusOr<JobRecord> Core::CancelJob(const Caller& c, const std::string& id) {
  RETURN_IF_ERROR(RequireClient(c));
  std::lock_guard<std::mutex> l(m_);
  ASSIGN_OR_RETURN(JobRecord j, store_->GetJob(id));
  RETURN_IF_ERROR(CanSee(c, j.user).WithContext("cancel job " + id));
  if (IsFinal(j.state)) {
    return FailedPreconditionError("job " + id + " is already " + JobStateName(j.state));
  }
  RETURN_IF_ERROR(CancelJobRecord(j, "cancelled by " + c.user));
  RETURN_IF_ERROR(SettleDependencies());
  Notify();
  return store_->GetJob(id);
}

StatusOr<StudyResults> Core::GetResults(const Caller& c, const std::string& study_id) {
  RETURN_IF_ERROR(RequireClient(c));
  ASSIGN_OR_RETURN(StudyRecord s, store_->GetStudy(study_id));
  RETURN_IF_ERROR(CanSee(c, s.user).WithContext("study " + study_id));
  ASSIGN_OR_RETURN(Study plan, StudyPlanFromJson(s.plan));
  // Calls `add(job, metrics)` for every succeeded job of `kind` with a result (a reused job's
  // from the job it reuses, until its copy is written).
  auto each_result = [&](const std::string& kind,
                         const std::function<void(const JobRecord&, const json&)>& add) -> Status {
    JobFilter f;
    f.study_id = study_id;
    f.kind = kind;
    f.state = JobState::kSucceeded;
    f.page_size = 1000;
    for (;;) {
      ASSIGN_OR_RETURN(JobPage p, store_->ListJobs(f));
      for (const auto& j : p.jobs) {
        ASSIGN_OR_RETURN(auto r, store_->GetResult(j.id));
        if (!r && j.labels.contains("reused_from")) {
          ASSIGN_OR_RETURN(r, store_->GetResult(j.labels["reused_from"].get<std::string>()));
        }
        if (r) add(j, r->metrics);
      }
      if (p.next_page_token.empty()) return Status::Ok();
      f.page_token = p.next_page_token;
    }
  };
  std::vector<SeedResult> seeds;
  RETURN_IF_ERROR(each_result("eval", [&](const JobRecord& j, const json& metrics) {
    const json point = j.labels.value("point", json());
    seeds.push_back({j.labels.value("model", ""), j.labels.value("method", ""),
                     j.labels.value("seed", int64_t{0}), metrics,
                     point.is_string() ? point.get<std::string>() : std::string()});
  }));
  StudyInfo info;
  info.id = s.id;
  info.study = s.name;
  info.setting = s.setting;
  info.train = plan.train_set;
  info.tag = plan.tag;
  info.id_sets = plan.id_eval;
  info.ood_sets = plan.ood_eval;
  info.benchmark_sets = plan.benchmark_eval;
  info.expected_runs =
      static_cast<int64_t>(plan.models.size() * plan.methods.size() * plan.seeds.size());
  info.seeds = static_cast<int64_t>(plan.seeds.size());
  std::vector<JudgeResult> judged;
  if (plan.iterative.is_object()) {
    RETURN_IF_ERROR(each_result("judge", [&](const JobRecord& j, const json& metrics) {
      judged.push_back({j.labels.value("model", ""), j.labels.value("annotator", ""),
                        j.labels.value("iteration", int64_t{0}), j.labels.value("seed", int64_t{0}),
                        metrics});
    }));
  }
  return AggregateResults(info, seeds, judged);
}

StatusOr<ResultsReport> Core::GetResults(const Caller& c, const std::vector<std::string>& study_ids,
                                         const std::string& tag) {
  RETURN_IF_ERROR(RequireClient(c));
  std::vector<std::string> ids;
  for (const auto& id : study_ids) {
    if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
  }
  if (!tag.empty()) {
    ASSIGN_OR_RETURN(auto studies, store_->ListStudies(c.role == Role::kOperator ? "" : c.user));
    bool found = false;
    for (const auto& s : studies) {
      if (!s.plan.is_object() || s.plan.value("tag", json()) != json(tag)) continue;
      found = true;
      if (std::find(ids.begin(), ids.end(), s.id) == ids.end()) ids.push_back(s.id);
    }
    if (!found) {
      return NotFoundError("no study with tag '" + tag + "'" +
                           (c.role == Role::kOperator ? "" : " among " + c.user + "'s studies"));
    }
  }
  if (ids.empty()) return InvalidArgumentError("results of what? name a study id or a tag");
  std::vector<StudyResults> all;
  for (const auto& id : ids) {
    ASSIGN_OR_RETURN(StudyResults r, GetResults(c, id));
    all.push_back(std::move(r));
  }
  return CombineResults(std::move(all), tag);
}

StatusOr<std::vector<EventRecord>> Core::GetEvents(const Caller& c, const std::string& job_id,
                                                   int64_t after_seq, int64_t limit) {
  ASSIGN_OR_RETURN(JobRecord j, GetJob(c, job_id));
  return store_->ListEvents(j.id, after_seq, limit);
}

StatusOr<std::optional<ResultRecord>> Core::GetResult(const Caller& c, const std::string& job_id) {
  ASSIGN_OR_RETURN(JobRecord j, GetJob(c, job_id));
  return store_->GetResult(j.id);
}

bool Core::Alive(const std::string& worker) {
  std::lock_guard<std::mutex> l(lease_m_);
  auto it = live_.find(worker);
  return it != live_.end() && it->second.deadline >= clock_->MonoMs();
}

void Core::FillLease(WorkerRecord* w) {
  std::lock_guard<std::mutex> l(lease_m_);
  auto it = live_.find(w->id);
  if (it == live_.end()) {
    w->lease_deadline_ms = 0;
    return;
  }
  w->lease_deadline_ms = Now() + (it->second.deadline - clock_->MonoMs());
  if (it->second.last_heartbeat_wall > 0) w->last_heartbeat_ms = it->second.last_heartbeat_wall;
}

StatusOr<std::vector<WorkerView>> Core::ListWorkers(const Caller& c) {
  RETURN_IF_ERROR(RequireClient(c));
  ASSIGN_OR_RETURN(auto workers, Workers());
  const auto active = HeldSnapshot();
  std::vector<WorkerView> out;
  for (auto& w : workers) {
    WorkerView v;
    FillLease(&w);
    v.worker = w;
    v.alive = Alive(w.id);
    int64_t held = 0;
    for (const auto& jp : active) {
      const JobRecord& j = *jp;
      if (!Active(j)) continue;
      for (const auto& p : j.placement) {
        if (p.value("worker", "") == w.id) {
          held += p.value("ranks", int64_t{0});
          v.jobs.push_back(j.id);
        }
      }
    }
    v.free_slots = std::max<int64_t>(0, w.slots - held);
    out.push_back(std::move(v));
  }
  return out;
}

StatusOr<WorkerView> Core::DrainWorker(const Caller& c, const std::string& id, bool undrain) {
  if (c.role != Role::kOperator)
    return PermissionDenied("draining a worker needs the operator role");
  {
    // worker_write_m_ first: a registration's slow write then delays this drain, never the
    // passes that wait on m_.
    std::lock_guard<std::mutex> wl(worker_write_m_);
    std::lock_guard<std::mutex> l(m_);
    ASSIGN_OR_RETURN(WorkerRecord w, WorkerOf(id));
    w.draining = !undrain;
    RETURN_IF_ERROR(PutWorker(w));
  }
  Notify();
  ASSIGN_OR_RETURN(auto all, ListWorkers(c));
  for (auto& v : all) {
    if (v.worker.id == id) return v;
  }
  return NotFoundError("worker " + id + " not found");
}

StatusOr<HeartbeatReply> Core::RegisterWorker(
    const Caller& c, WorkerRecord w, const std::vector<std::pair<std::string, int64_t>>& running,
    const std::string& instance) {
  RETURN_IF_ERROR(RequireWorker(c));
  if (w.id.empty()) return InvalidArgumentError("worker id: must not be empty");
  if (w.slots < 1 || w.slots > 100'000) {
    return InvalidArgumentError("worker " + w.id + ": slots must be in [1, 100000]");
  }
  if (w.memory_bytes_per_slot < 0) {
    return InvalidArgumentError("worker " + w.id + ": memory_bytes_per_slot must be >= 0");
  }
  if (w.spans_hosts) {
    // The host goes into other workers' hostfiles: a plain host name or address only.
    const bool plain = !w.host.empty() && w.host.size() <= 253 &&
                       w.host.find_first_not_of(
                           "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                           "0123456789.-_:") == std::string::npos &&
                       w.host[0] != '-';
    if (!plain) {
      return InvalidArgumentError("worker " + w.id + ": host '" + SanitizeUtf8(w.host, 64) +
                                  "' is not a host name or address other nodes can reach "
                                  "(letters, digits, '.', '-', '_', ':')");
    }
  }
  std::string session = RandomHex(16);
  {
    std::lock_guard<std::mutex> l(lease_m_);
    Live& live = live_[w.id];
    const bool held = live.deadline >= clock_->MonoMs() && !live.instance.empty();
    if (held && live.instance != instance) {
      return Status(StatusCode::kAlreadyExists,
                    "worker id '" + w.id + "' is held by another agent whose lease is live (for " +
                        std::to_string(live.deadline - clock_->MonoMs()) +
                        " ms more): two agents cannot share an id; give this one another --id");
    }
    live.instance = instance;
    live.session = session;
    live.deadline = clock_->MonoMs() + options_.lease_ms;
    live.last_heartbeat_wall = Now();
    live.listed.clear();
    live.listed_at = 0;
  }
  {
    // Not under m_ nor lease_m_: a slow disk delays only this registration (and a drain).
    std::lock_guard<std::mutex> wl(worker_write_m_);
    auto old = WorkerOf(w.id);
    if (old.ok()) {
      w.draining = old->draining;
      w.registered_ms = old->registered_ms;
    } else {
      w.registered_ms = Now();
    }
    w.instance = instance;
    w.last_heartbeat_ms = Now();
    w.lease_deadline_ms = Now() + options_.lease_ms;
    RETURN_IF_ERROR(PutWorker(w));
  }
  Notify();
  ASSIGN_OR_RETURN(HeartbeatReply reply, Heartbeat(c, w.id, running, &session));
  reply.session = session;
  return reply;
}

Status Core::CheckSession(const std::string& worker, const std::string& session) {
  std::lock_guard<std::mutex> l(lease_m_);
  return CheckSessionLocked(worker, session);
}

Status Core::CheckSessionLocked(const std::string& worker, const std::string& session) {
  auto it = live_.find(worker);
  if (it == live_.end() || it->second.session.empty() ||
      session.size() != it->second.session.size()) {
    return Status(StatusCode::kUnauthenticated,
                  "worker '" + worker + "': not its current session; register again");
  }
  unsigned char diff = 0;  // compared without an early exit
  for (size_t i = 0; i < session.size(); ++i) diff |= session[i] ^ it->second.session[i];
  if (diff != 0) {
    return Status(StatusCode::kUnauthenticated,
                  "worker '" + worker + "': not its current session; register again");
  }
  return Status::Ok();
}

StatusOr<HeartbeatReply> Core::Heartbeat(
    const Caller& c, const std::string& worker,
    const std::vector<std::pair<std::string, int64_t>>& running, const std::string* session) {
  RETURN_IF_ERROR(RequireWorker(c));
  HeartbeatReply reply;
  const int64_t now = clock_->MonoMs();
  std::vector<std::pair<std::string, int64_t>> renew;
  std::set<std::string> listed;
  for (const auto& [job_id, attempt] : running) {
    listed.insert(job_id);
    auto j = Lookup(job_id);  // the cache for active jobs
    if (!j.ok() || j->attempt != attempt || !Active(*j) || !PlacedOn(*j, worker)) {
      reply.cancel.push_back(job_id);  // cancelled, lost, or superseded: stop it
      continue;
    }
    renew.emplace_back(job_id, now + options_.lease_ms);
  }
  // In memory only: no store write and no m_, so neither a slow disk nor a long scheduling
  // pass or submission delays a heartbeat. Tick ends attempts the worker stopped listing.
  std::lock_guard<std::mutex> l(lease_m_);
  auto it = live_.find(worker);
  if (it == live_.end() || it->second.session.empty() ||
      (session != nullptr && !CheckSessionLocked(worker, *session).ok())) {
    reply.reregister = true;
    reply.cancel.clear();
    return reply;
  }
  it->second.deadline = now + options_.lease_ms;
  it->second.last_heartbeat_wall = Now();
  it->second.listed = std::move(listed);
  it->second.listed_at = now;
  for (const auto& [id, deadline] : renew) {
    // Only a lease still held: the job may have ended since it was looked up above.
    if (auto l = job_lease_.find(id); l != job_lease_.end()) l->second = deadline;
  }
  return reply;
}

StatusOr<std::optional<Acquired>> Core::AcquireJob(const Caller& c, const std::string& worker,
                                                   const std::string* session) {
  RETURN_IF_ERROR(RequireWorker(c));
  std::lock_guard<std::mutex> l(m_);
  if (session != nullptr) RETURN_IF_ERROR(CheckSession(worker, *session));
  ASSIGN_OR_RETURN(WorkerRecord me, WorkerOf(worker));
  if (me.draining || !Alive(worker)) return std::optional<Acquired>();
  ASSIGN_OR_RETURN(auto workers, Workers());
  const auto snapshot = Snapshot();
  std::map<std::string, int64_t> held_slots, held_by_user;
  std::vector<const JobRecord*> queued;
  for (const auto& p : snapshot) {
    const JobRecord& j = *p;
    if (j.state == JobState::kQueued) queued.push_back(&j);
    if (!Active(j)) continue;
    held_by_user[j.user] += j.ranks;
    for (const auto& p : j.placement)
      held_slots[p.value("worker", "")] += p.value("ranks", int64_t{0});
  }
  std::vector<WorkerCapacity> caps;
  for (const auto& w : workers) {
    caps.push_back({w.id, w.slots, std::max<int64_t>(0, w.slots - held_slots[w.id]),
                    !w.draining && Alive(w.id), w.spans_hosts});
  }
  const auto t0 = std::chrono::steady_clock::now();
  SchedulePass pass = Schedule(queued, caps, held_by_user, hold_for_);
  hold_for_ = pass.holding_job;
  metrics_.Observe("rmgen_scheduling_pass_seconds", {},
                   std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  waiting_ = pass.waiting;
  for (const auto& p : pass.placements) {
    if (p.workers.front().first != worker) continue;
    ASSIGN_OR_RETURN(JobRecord j, Lookup(p.job_id));
    // updated_ms of a QUEUED job is when it became QUEUED (waiting reasons are not written).
    metrics_.Observe("rmgen_queue_wait_seconds", {},
                     std::max<int64_t>(0, Now() - j.updated_ms) / 1000.0);
    j.state = JobState::kAssigned;
    j.attempt += 1;
    j.worker = worker;
    j.placement = json::array();
    for (const auto& [w, n] : p.workers) j.placement.push_back({{"worker", w}, {"ranks", n}});
    j.lease_deadline_ms = Now() + options_.lease_ms;
    j.reason = "";
    j.history.push_back({j.attempt, worker, "", Now(), 0});
    // Again just before the write: a registration does not take m_, so it may have replaced
    // the session during this pass.
    if (session != nullptr) RETURN_IF_ERROR(CheckSession(worker, *session));
    ASSIGN_OR_RETURN(JobRecord stored, Write(j));
    {
      std::lock_guard<std::mutex> g(lease_m_);
      job_lease_[j.id] = clock_->MonoMs() + options_.lease_ms;
      job_started_[j.id] = clock_->MonoMs();
    }
    Notify();
    Acquired a;
    a.job = stored;
    a.output_dir = options_.output_root + "/" + stored.id;
    // The reference log-probs cache is per user unless the spec names one (confined like
    // every path): a shared cache would let one user's files stand for another's model.
    if (a.job.spec.contains("dpo") && a.job.spec["dpo"].is_object() &&
        a.job.spec["dpo"].value("reference_cache", std::string()).empty()) {
      a.job.spec["dpo"]["reference_cache"] = ReferenceCacheDir(stored.user);
    }
    ResolveOutputs(&a.job.spec, options_.output_root, stored.id);
    if (p.workers.size() > 1) {
      for (const auto& placed : p.workers) {
        std::string host;
        for (const auto& r : workers) {
          if (r.id == placed.first) host = r.host;
        }
        a.hosts.push_back({placed.first, host, placed.second});
      }
    }
    return std::optional<Acquired>(a);
  }
  return std::optional<Acquired>();
}

StatusOr<bool> Core::ReportEvents(const Caller& c, const std::string& worker,
                                  const std::string& job_id, int64_t attempt,
                                  const std::vector<json>& events, bool running) {
  RETURN_IF_ERROR(RequireWorker(c));
  ASSIGN_OR_RETURN(JobRecord j, Lookup(job_id));
  if (j.attempt == attempt && j.state == JobState::kCancelled) return true;
  if (j.attempt != attempt || !Active(j) || !PlacedOn(j, worker)) {
    return FailedPreconditionError(
        "job " + job_id + ": report from attempt " + std::to_string(attempt) + " on worker '" +
        worker + "' is stale (job is " + JobStateName(j.state) + ", attempt " +
        std::to_string(j.attempt) + (j.worker.empty() ? "" : " on '" + j.worker + "'") + ")");
  }
  // Not under m_: the store serializes the append (one transaction; a resend of events
  // already stored, because the reply was lost, stores nothing). An attempt ended meanwhile
  // keeps its events under its own number.
  RETURN_IF_ERROR(store_->AppendEvents(job_id, attempt, events).status());
  for (auto it = events.rbegin(); it != events.rend(); ++it) {  // the last training progress
    if (auto p = StepProgress::From(*it)) {
      std::lock_guard<std::mutex> g(progress_m_);
      progress_[job_id] = {j.kind, attempt, *p};
      break;
    }
  }
  {
    std::lock_guard<std::mutex> g(lease_m_);
    if (job_lease_.count(job_id)) job_lease_[job_id] = clock_->MonoMs() + options_.lease_ms;
  }
  if (running && j.state == JobState::kAssigned) {
    std::lock_guard<std::mutex> l(m_);
    ASSIGN_OR_RETURN(j, Lookup(job_id));
    if (j.attempt == attempt && j.state == JobState::kAssigned) {
      j.state = JobState::kRunning;
      RETURN_IF_ERROR(Write(j).status());
    }
  } else if (!events.empty()) {
    LogChange(j);
  }
  Notify();
  return false;
}

StatusOr<JobRecord> Core::EndAttempt(JobRecord j, const std::string& outcome, bool retryable,
                                     bool preempted) {
  if (preempted) {
    retryable = true;
    j.max_attempts += 1;
  }
  if (!j.history.empty()) {
    j.history.back().outcome = outcome;
    j.history.back().ended_ms = Now();
  }
  j.worker = "";
  j.placement = json::array();
  j.lease_deadline_ms = 0;
  if (retryable && j.attempt < j.max_attempts) {
    j.state = JobState::kQueued;
    j.reason = "retrying after attempt " + std::to_string(j.attempt) + ": " + outcome;
    metrics_.Inc("rmgen_job_retries_total", {{"kind", j.kind}});
  } else {
    j.state = JobState::kFailed;
    j.reason = outcome + (retryable ? " (out of attempts: " + std::to_string(j.attempt) + " of " +
                                          std::to_string(j.max_attempts) + ")"
                                    : " (not retryable)");
  }
  return Write(j);
}

StatusOr<JobState> Core::CompleteJob(const Caller& c, const std::string& worker,
                                     const std::string& job_id, int64_t attempt, bool success,
                                     const json& metrics, const std::string& reason, bool retryable,
                                     const std::vector<std::string>& log_tail, bool preempted,
                                     const std::string& cause, int failed_rank) {
  RETURN_IF_ERROR(RequireWorker(c));
  // A known cause decides the retry by its class (jobspec/outcome.h); an unknown one (a newer
  // agent) leaves it to the agent's flag.
  const Cause typed = CauseFromName(cause);
  if (!success && !preempted && typed != Cause::kUnknown) retryable = Retryable(typed);
  // Only names from the table are stored (the wire string is the agent's).
  const std::string cause_name = cause.empty() ? std::string() : CauseName(typed);
  std::lock_guard<std::mutex> l(m_);
  ASSIGN_OR_RETURN(JobRecord j, store_->GetJob(job_id));
  const std::string ran_on = j.history.empty() ? std::string() : j.history.back().worker;
  // A repeated success report of the attempt that succeeded: nothing new.
  if (j.state == JobState::kSucceeded && j.attempt == attempt && success && ran_on == worker) {
    RETURN_IF_ERROR(store_->RecordResult({job_id, attempt, metrics, Now()}));
    return j.state;
  }
  if (j.attempt != attempt || !Active(j) || !PlacedOn(j, worker)) {
    return FailedPreconditionError(
        "job " + job_id + ": completion from attempt " + std::to_string(attempt) + " on worker '" +
        worker + "' is stale (job is " + JobStateName(j.state) + ", attempt " +
        std::to_string(j.attempt) + (ran_on.empty() ? "" : " on '" + ran_on + "'") + ")");
  }
  if (success) {
    if (!metrics.is_object()) return InvalidArgumentError("job " + job_id + ": metrics missing");
    RETURN_IF_ERROR(store_->RecordResult({job_id, attempt, metrics, Now()}));
    if (!j.history.empty()) {
      j.history.back().outcome = "succeeded";
      j.history.back().ended_ms = Now();
    }
    j.state = JobState::kSucceeded;
    j.reason = "";
    j.worker = "";
    j.placement = json::array();
    ASSIGN_OR_RETURN(j, Write(j));
  } else {
    json e = {{"attempt_failed", attempt},
              {"reason", reason},
              {"retryable", retryable},
              {"log_tail", log_tail}};
    if (preempted) e["preempted"] = true;
    if (!cause_name.empty()) {
      e["cause"] = cause_name;
      e["class"] = FailureClassName(ClassOf(typed));
    }
    if (failed_rank >= 0) e["failed_rank"] = failed_rank;
    RETURN_IF_ERROR(store_->AppendEvents(job_id, attempt, {e}).status());
    const std::string label = preempted            ? "preempted: "
                              : cause_name.empty() ? "failed: "
                                                   : "failed (" + cause_name + "): ";
    ASSIGN_OR_RETURN(j, EndAttempt(j, label + reason, retryable, preempted));
  }
  RETURN_IF_ERROR(SettleDependencies());
  Notify();
  return j.state;
}

Status Core::SettleDependencies() {
  // Only PENDING jobs can change here; their dependencies' states come from the caches (the
  // store for a job not seen since the start), and this pass's own changes override them.
  const auto pending = PendingSnapshot();
  std::map<std::string, JobState> changed;
  auto state_of = [&](const std::string& id) -> StatusOr<JobState> {
    auto it = changed.find(id);
    if (it != changed.end()) return it->second;
    return StateOf(id);
  };
  for (const auto& jp : pending) {
    JobRecord j = *jp;
    bool ready = true;
    std::string failed, cancelled;
    for (const auto& d : j.deps) {
      ASSIGN_OR_RETURN(JobState s, state_of(d));
      if (s == JobState::kFailed) failed = d;
      if (s == JobState::kCancelled) cancelled = d;
      if (s != JobState::kSucceeded) ready = false;
    }
    if (!failed.empty() || !cancelled.empty()) {
      j.state = !failed.empty() ? JobState::kFailed : JobState::kCancelled;
      j.reason =
          "dependency " + (!failed.empty() ? failed + " failed" : cancelled + " was cancelled");
    } else if (ready) {
      j.state = JobState::kQueued;
      j.reason = "waiting for a worker";
    } else {
      continue;
    }
    auto stored = Write(j);
    if (!stored.ok()) {
      if (stored.status().code() == StatusCode::kFailedPrecondition) continue;  // refreshed
      return stored.status();
    }
    changed[j.id] = stored->state;
  }
  // A job failed or cancelled above may have dependents further down: one more pass ends it.
  for (const auto& jp : pending) {
    if (changed.count(jp->id)) continue;
    for (const auto& d : jp->deps) {
      auto it = changed.find(d);
      if (it != changed.end() &&
          (it->second == JobState::kFailed || it->second == JobState::kCancelled)) {
        return SettleDependencies();
      }
    }
  }
  return Status::Ok();
}

Status Core::ExpireLeases() {
  const int64_t now = clock_->MonoMs();
  std::set<std::string> dead;
  std::map<std::string, std::pair<std::set<std::string>, int64_t>> listed;  // worker -> jobs, when
  std::map<std::string, int64_t> job_deadline, job_started;
  ASSIGN_OR_RETURN(auto workers, Workers());
  {
    std::lock_guard<std::mutex> l(lease_m_);
    for (const auto& [id, live] : live_) {
      if (live.deadline < now) dead.insert(id);
      if (live.listed_at > 0) listed[id] = {live.listed, live.listed_at};
    }
    for (const auto& w : workers) {
      if (!live_.count(w.id)) dead.insert(w.id);  // (not seen since this start)
    }
    job_deadline = job_lease_;
    job_started = job_started_;
  }
  for (const auto& jp : HeldSnapshot()) {
    const JobRecord& j = *jp;
    if (!Active(j)) continue;
    std::string why;
    const char* label = "lease";  // the metric's cause
    for (const auto& p : j.placement) {
      if (dead.count(p.value("worker", ""))) {
        why =
            "lease expired: worker " + p.value("worker", std::string()) + " missed its heartbeats";
        label = "lease";
      }
    }
    auto deadline = job_deadline.find(j.id);
    if (why.empty() && deadline != job_deadline.end() && deadline->second < now) {
      why = "lease expired: worker " + j.worker + " stopped reporting this job";
      label = "report";
    }
    // A job its worker should hold but no longer lists (after a grace period for a job it
    // acquired moments ago): that attempt is gone.
    // All on the monotonic clock: the attempt's start here (or this coordinator's start).
    auto l = listed.find(j.worker);
    auto started = job_started.find(j.id);
    if (why.empty() && l != listed.end() && !l->second.first.count(j.id) &&
        started != job_started.end()) {
      const int64_t grace = options_.lease_ms / 2;
      if (now - started->second >= grace && l->second.second >= started->second + grace) {
        why = "lost: worker " + j.worker + " no longer runs it";
        label = "lost";
      }
    }
    if (!why.empty()) {
      metrics_.Inc("rmgen_leases_expired_total", {{"cause", label}});
      RETURN_IF_ERROR(EndAttempt(j, why, true).status());
    }
  }
  return Status::Ok();
}

Status Core::RefreshQuarantined() {
  for (std::string& id : store_->TakeQuarantinedJobs()) quarantine_pending_.insert(std::move(id));
  Status first = Status::Ok();
  for (auto it = quarantine_pending_.begin(); it != quarantine_pending_.end();) {
    const std::string id = *it;
    auto j = store_->GetJob(id);
    if (j.ok()) {
      Cache(*j);  // a dependent the store failed
      LogChange(*j);
    } else if (j.status().code() == StatusCode::kNotFound) {
      // Moved to the quarantine table: gone from the queue (its dependents settle as
      // failed), and its study's watchers are told (the job reads as not found).
      JobRecord gone;
      {
        std::lock_guard<std::mutex> c(cache_m_);
        if (auto a = active_.find(id); a != active_.end()) gone = *a->second;
        active_.erase(id);
        pending_ids_.erase(id);
        held_ids_.erase(id);
        final_[id] = JobState::kFailed;
      }
      {
        std::lock_guard<std::mutex> g(lease_m_);
        job_lease_.erase(id);
        job_started_.erase(id);
      }
      gone.id = id;
      LogChange(gone);
    } else {
      // Kept for the next tick; the rest of this one goes on.
      if (first.ok()) first = j.status().WithContext("refreshing quarantined job " + id);
      ++it;
      continue;
    }
    it = quarantine_pending_.erase(it);
  }
  return first;
}

Status Core::Tick() {
  std::lock_guard<std::mutex> l(m_);
  const Status refreshed = RefreshQuarantined();  // logged by the caller, after the rest
  RETURN_IF_ERROR(ExpireLeases());
  RETURN_IF_ERROR(SettleDependencies());
  PruneChangeLogs();
  Notify();
  return refreshed;
}

std::map<std::string, std::string> Core::WaitingReasons() {
  std::lock_guard<std::mutex> l(m_);
  return waiting_;
}

}  // namespace rmgen::coord
