#include "coordinator/core.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <set>

#include "common/file.h"
#include "coordinator/memory_plan.h"
#include "worker/train/spec.h"

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
};

Status PermissionDenied(const std::string& m) { return Status(StatusCode::kPermissionDenied, m); }

bool Active(const JobRecord& j) {
  return j.state == JobState::kAssigned || j.state == JobState::kRunning;
}

// "${output}" -> this job's folder, "${output:ID}" -> job ID's folder, in every string.
void ResolveOutputs(json* v, const std::string& root, const std::string& self) {
  if (v->is_string()) {
    std::string s = v->get<std::string>();
    size_t at;
    while ((at = s.find("${output")) != std::string::npos) {
      const size_t end = s.find('}', at);
      if (end == std::string::npos) break;
      const std::string inner = s.substr(at + 2, end - at - 2);  // output or output:ID
      const std::string id = inner.size() > 7 ? inner.substr(7) : self;
      s.replace(at, end + 1 - at, root + "/" + id);
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
    : store_(store), clock_(clock), options_(std::move(options)) {}

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
  auto stored = store_->UpdateJob(j, Now());
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
  for (auto& w : workers) {
    w.lease_deadline_ms = std::max(w.lease_deadline_ms, Now() + options_.lease_ms);
    RETURN_IF_ERROR(PutWorker(w));
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
  std::vector<JobRecord> active = ActiveCopy();
  for (auto& j : active) {
    if (!Active(j)) continue;
    j.lease_deadline_ms = std::max(j.lease_deadline_ms, Now() + options_.lease_ms);
    RETURN_IF_ERROR(Write(j).status());
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

StatusOr<std::pair<StudyView, bool>> Core::SubmitStudy(const Caller& c, const std::string& yaml,
                                                       const std::string& source,
                                                       const std::string& request_id) {
  RETURN_IF_ERROR(RequireClient(c));
  const std::string name = source.empty() ? "study.yaml" : source;
  ASSIGN_OR_RETURN(Study study, ParseStudy(yaml, name));
  ASSIGN_OR_RETURN(std::vector<JobRecord> jobs, PlanStudy(study, c.user, name));
  for (auto& j : jobs) j.max_attempts = options_.max_attempts;
  std::vector<std::pair<size_t, std::string>> reused;  // plan index -> finished job
  RETURN_IF_ERROR(ReuseFinished(c.user, &jobs, &reused));
  RETURN_IF_ERROR(CheckMemory(jobs, &study));  // before m_: heartbeats never wait on it
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
  RETURN_IF_ERROR(CacheStudyJobs(created.record.id));
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

StatusOr<StudyView> Core::GetStudy(const Caller& c, const std::string& id) {
  RETURN_IF_ERROR(RequireClient(c));
  ASSIGN_OR_RETURN(StudyRecord s, store_->GetStudy(id));
  RETURN_IF_ERROR(CanSee(c, s.user).WithContext("study " + id));
  return View(s);
}

StatusOr<std::vector<StudyView>> Core::ListStudies(const Caller& c, bool all_users) {
  RETURN_IF_ERROR(RequireClient(c));
  if (all_users && c.role != Role::kOperator) {
    return PermissionDenied("listing every user's studies needs the operator role");
  }
  ASSIGN_OR_RETURN(auto studies, store_->ListStudies(all_users ? "" : c.user));
  std::vector<StudyView> out;
  for (const auto& s : studies) {
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
  RETURN_IF_ERROR(CheckMemory({j}, nullptr));
  // Not under m_: the store commits concurrent submissions together (group commit), and a
  // new QUEUED job needs nothing else settled.
  ASSIGN_OR_RETURN(auto created, store_->CreateJob(j, request_id, Now()));
  if (created.created) Cache(created.record);
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
  std::vector<SeedResult> seeds;
  JobFilter f;
  f.study_id = study_id;
  f.kind = "eval";
  f.state = JobState::kSucceeded;
  f.page_size = 1000;
  for (;;) {
    ASSIGN_OR_RETURN(JobPage p, store_->ListJobs(f));
    for (const auto& j : p.jobs) {
      ASSIGN_OR_RETURN(auto r, store_->GetResult(j.id));
      if (!r && j.labels.contains("reused_from")) {  // its copy not written yet
        ASSIGN_OR_RETURN(r, store_->GetResult(j.labels["reused_from"].get<std::string>()));
      }
      if (!r) continue;
      const json point = j.labels.value("point", json());
      seeds.push_back({j.labels.value("model", ""), j.labels.value("method", ""),
                       j.labels.value("seed", int64_t{0}), r->metrics,
                       point.is_string() ? point.get<std::string>() : std::string()});
    }
    if (p.next_page_token.empty()) break;
    f.page_token = p.next_page_token;
  }
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
  return AggregateResults(info, seeds);
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

StatusOr<std::vector<WorkerView>> Core::ListWorkers(const Caller& c) {
  RETURN_IF_ERROR(RequireClient(c));
  ASSIGN_OR_RETURN(auto workers, Workers());
  const auto active = HeldSnapshot();
  std::vector<WorkerView> out;
  for (const auto& w : workers) {
    WorkerView v;
    v.worker = w;
    v.alive = w.lease_deadline_ms >= Now();
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
    const Caller& c, WorkerRecord w, const std::vector<std::pair<std::string, int64_t>>& running) {
  RETURN_IF_ERROR(RequireWorker(c));
  if (w.id.empty()) return InvalidArgumentError("worker id: must not be empty");
  if (w.slots < 1) return InvalidArgumentError("worker " + w.id + ": slots must be >= 1");
  {
    std::lock_guard<std::mutex> l(m_);
    auto old = WorkerOf(w.id);
    if (old.ok()) {
      w.draining = old->draining;
      w.registered_ms = old->registered_ms;
    } else {
      w.registered_ms = Now();
    }
    w.last_heartbeat_ms = Now();
    w.lease_deadline_ms = Now() + options_.lease_ms;
    RETURN_IF_ERROR(PutWorker(w));
  }
  return Heartbeat(c, w.id, running);
}

StatusOr<HeartbeatReply> Core::Heartbeat(
    const Caller& c, const std::string& worker,
    const std::vector<std::pair<std::string, int64_t>>& running) {
  RETURN_IF_ERROR(RequireWorker(c));
  HeartbeatReply reply;
  std::lock_guard<std::mutex> l(m_);
  auto w = WorkerOf(worker);
  if (!w.ok()) {
    reply.reregister = true;
    return reply;
  }
  w->last_heartbeat_ms = Now();
  w->lease_deadline_ms = Now() + options_.lease_ms;
  RETURN_IF_ERROR(PutWorker(*w));
  std::set<std::string> listed;
  for (const auto& [job_id, attempt] : running) {
    listed.insert(job_id);
    auto j = Lookup(job_id);
    if (!j.ok() || j->attempt != attempt || !Active(*j) || !PlacedOn(*j, worker)) {
      reply.cancel.push_back(job_id);  // cancelled, lost, or superseded: stop it
      continue;
    }
    j->lease_deadline_ms = Now() + options_.lease_ms;
    RETURN_IF_ERROR(Write(*j).status());
  }
  // Jobs this worker should hold but does not list (after a grace period for a job it
  // acquired moments ago): that attempt is gone.
  for (const auto& jp : HeldSnapshot()) {
    const JobRecord& j = *jp;
    if (!Active(j) || j.worker != worker || listed.count(j.id)) continue;
    const int64_t started = j.history.empty() ? 0 : j.history.back().started_ms;
    if (Now() - started < options_.lease_ms / 2) continue;
    RETURN_IF_ERROR(EndAttempt(j, "lost: worker " + worker + " no longer runs it", true).status());
  }
  Notify();
  return reply;
}

StatusOr<std::optional<Acquired>> Core::AcquireJob(const Caller& c, const std::string& worker) {
  RETURN_IF_ERROR(RequireWorker(c));
  std::lock_guard<std::mutex> l(m_);
  ASSIGN_OR_RETURN(WorkerRecord me, WorkerOf(worker));
  if (me.draining || me.lease_deadline_ms < Now()) return std::optional<Acquired>();
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
                    !w.draining && w.lease_deadline_ms >= Now()});
  }
  SchedulePass pass = Schedule(queued, caps, held_by_user);
  waiting_ = pass.waiting;
  for (const auto& p : pass.placements) {
    if (p.workers.front().first != worker) continue;
    ASSIGN_OR_RETURN(JobRecord j, Lookup(p.job_id));
    j.state = JobState::kAssigned;
    j.attempt += 1;
    j.worker = worker;
    j.placement = json::array();
    for (const auto& [w, n] : p.workers) j.placement.push_back({{"worker", w}, {"ranks", n}});
    j.lease_deadline_ms = Now() + options_.lease_ms;
    j.reason = "";
    j.history.push_back({j.attempt, worker, "", Now(), 0});
    ASSIGN_OR_RETURN(JobRecord stored, Write(j));
    Notify();
    Acquired a;
    a.job = stored;
    a.output_dir = options_.output_root + "/" + stored.id;
    ResolveOutputs(&a.job.spec, options_.output_root, stored.id);
    return std::optional<Acquired>(a);
  }
  return std::optional<Acquired>();
}

StatusOr<bool> Core::ReportEvents(const Caller& c, const std::string& job_id, int64_t attempt,
                                  const std::vector<json>& events, bool running) {
  RETURN_IF_ERROR(RequireWorker(c));
  std::lock_guard<std::mutex> l(m_);
  ASSIGN_OR_RETURN(JobRecord j, store_->GetJob(job_id));
  if (j.attempt == attempt && j.state == JobState::kCancelled) return true;
  if (j.attempt != attempt || !Active(j)) {
    return FailedPreconditionError("job " + job_id + ": report from attempt " +
                                   std::to_string(attempt) + " is stale (job is " +
                                   JobStateName(j.state) + ", attempt " +
                                   std::to_string(j.attempt) + ")");
  }
  // One transaction; a resend of events already stored (the reply was lost) stores nothing.
  RETURN_IF_ERROR(store_->AppendEvents(job_id, attempt, events).status());
  if (running && j.state == JobState::kAssigned) j.state = JobState::kRunning;
  j.lease_deadline_ms = Now() + options_.lease_ms;
  RETURN_IF_ERROR(Write(j).status());
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
  } else {
    j.state = JobState::kFailed;
    j.reason = outcome + (retryable ? " (out of attempts: " + std::to_string(j.attempt) + " of " +
                                          std::to_string(j.max_attempts) + ")"
                                    : " (not retryable)");
  }
  return Write(j);
}

StatusOr<JobState> Core::CompleteJob(const Caller& c, const std::string& job_id, int64_t attempt,
                                     bool success, const json& metrics, const std::string& reason,
                                     bool retryable, const std::vector<std::string>& log_tail,
                                     bool preempted) {
  RETURN_IF_ERROR(RequireWorker(c));
  std::lock_guard<std::mutex> l(m_);
  ASSIGN_OR_RETURN(JobRecord j, store_->GetJob(job_id));
  // A repeated success report of the attempt that succeeded: nothing new.
  if (j.state == JobState::kSucceeded && j.attempt == attempt && success) {
    RETURN_IF_ERROR(store_->RecordResult({job_id, attempt, metrics, Now()}));
    return j.state;
  }
  if (j.attempt != attempt || !Active(j)) {
    return FailedPreconditionError("job " + job_id + ": completion from attempt " +
                                   std::to_string(attempt) + " is stale (job is " +
                                   JobStateName(j.state) + ", attempt " +
                                   std::to_string(j.attempt) + ")");
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
    RETURN_IF_ERROR(store_->AppendEvents(job_id, attempt, {e}).status());
    ASSIGN_OR_RETURN(
        j, EndAttempt(j, (preempted ? "preempted: " : "failed: ") + reason, retryable, preempted));
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
  ASSIGN_OR_RETURN(auto workers, Workers());
  std::set<std::string> dead;
  for (const auto& w : workers) {
    if (w.lease_deadline_ms < Now()) dead.insert(w.id);
  }
  for (const auto& jp : HeldSnapshot()) {
    const JobRecord& j = *jp;
    if (!Active(j)) continue;
    std::string why;
    for (const auto& p : j.placement) {
      if (dead.count(p.value("worker", ""))) {
        why =
            "lease expired: worker " + p.value("worker", std::string()) + " missed its heartbeats";
      }
    }
    if (why.empty() && j.lease_deadline_ms < Now()) {
      why = "lease expired: worker " + j.worker + " stopped reporting this job";
    }
    if (!why.empty()) RETURN_IF_ERROR(EndAttempt(j, why, true).status());
  }
  return Status::Ok();
}

Status Core::Tick() {
  std::lock_guard<std::mutex> l(m_);
  RETURN_IF_ERROR(ExpireLeases());
  RETURN_IF_ERROR(SettleDependencies());
  Notify();
  return Status::Ok();
}

std::map<std::string, std::string> Core::WaitingReasons() {
  std::lock_guard<std::mutex> l(m_);
  return waiting_;
}

}  // namespace rmgen::coord
