// MemoryStore: the Store contract in memory, behind one mutex.
#include <algorithm>
#include <map>
#include <mutex>

#include "coordinator/store.h"
#include "coordinator/store_common.h"

namespace rmgen::coord {
namespace {

using internal::CheckUpdate;

class MemoryStore : public Store {
 public:
  StatusOr<std::string> LookupRequest(const std::string& user,
                                      const std::string& request_id) override {
    std::lock_guard<std::mutex> l(m_);
    if (request_id.empty()) return std::string();
    auto it = requests_.find(user + "\n" + request_id);
    return it == requests_.end() ? std::string() : it->second;
  }
  StatusOr<Created<StudyRecord>> CreateStudy(StudyRecord study, std::vector<JobRecord> jobs,
                                             int64_t now_ms) override {
    std::lock_guard<std::mutex> l(m_);
    const std::string key = study.user + "\n" + study.request_id;
    if (!study.request_id.empty()) {
      auto it = requests_.find(key);
      if (it != requests_.end()) return Created<StudyRecord>{studies_.at(it->second), false};
    }
    study.id = "s" + std::to_string(++next_study_);
    study.created_ms = now_ms;
    for (auto& j : jobs) j.study_id = study.id;
    RETURN_IF_ERROR(internal::PrepareJobs(study.id, next_seq_ + 1, now_ms, &jobs));
    next_seq_ += jobs.size();
    for (auto& j : jobs) jobs_[j.id] = j;
    for (auto& j : jobs) order_[j.seq] = j.id;
    studies_[study.id] = study;
    study_order_[next_study_] = study.id;
    if (!study.request_id.empty()) requests_[key] = study.id;
    return Created<StudyRecord>{study, true};
  }

  StatusOr<StudyRecord> GetStudy(const std::string& id) override {
    std::lock_guard<std::mutex> l(m_);
    auto it = studies_.find(id);
    if (it == studies_.end()) return NotFoundError("study " + id + " not found");
    return it->second;
  }

  using Store::ListStudies;
  StatusOr<StudyPage> ListStudies(const StudyFilter& f) override {
    ASSIGN_OR_RETURN(int64_t after, internal::ParsePageToken(f.page_token));
    const int64_t size = internal::ClampPageSize(f.page_size);
    std::lock_guard<std::mutex> l(m_);
    StudyPage page;
    // In creation order: ids are "s<n>".
    for (auto it = study_order_.upper_bound(after); it != study_order_.end(); ++it) {
      const StudyRecord& s = studies_.at(it->second);
      if (!f.user.empty() && s.user != f.user) continue;
      if (static_cast<int64_t>(page.studies.size()) == size) {
        page.next_page_token = PageTokenAfter(page.studies.back());
        break;
      }
      page.studies.push_back(s);
    }
    return page;
  }

  Status UpdateStudy(const StudyRecord& study) override {
    std::lock_guard<std::mutex> l(m_);
    auto it = studies_.find(study.id);
    if (it == studies_.end()) return NotFoundError("study " + study.id + " not found");
    it->second = study;
    return Status::Ok();
  }

  StatusOr<Created<JobRecord>> CreateJob(JobRecord job, const std::string& request_id,
                                         int64_t now_ms) override {
    std::lock_guard<std::mutex> l(m_);
    const std::string key = job.user + "\n" + request_id;
    if (!request_id.empty()) {
      auto it = requests_.find(key);
      if (it != requests_.end()) return Created<JobRecord>{jobs_.at(it->second), false};
    }
    std::vector<JobRecord> one = {std::move(job)};
    one[0].study_id = "";
    RETURN_IF_ERROR(
        internal::PrepareJobs("x" + std::to_string(++next_lone_), next_seq_ + 1, now_ms, &one));
    ++next_seq_;
    jobs_[one[0].id] = one[0];
    order_[one[0].seq] = one[0].id;
    if (!request_id.empty()) requests_[key] = one[0].id;
    return Created<JobRecord>{one[0], true};
  }

  StatusOr<JobRecord> GetJob(const std::string& id) override {
    std::lock_guard<std::mutex> l(m_);
    auto it = jobs_.find(id);
    if (it == jobs_.end()) return NotFoundError("job " + id + " not found");
    return it->second;
  }

  StatusOr<JobPage> ListJobs(const JobFilter& f) override {
    ASSIGN_OR_RETURN(int64_t after, internal::ParsePageToken(f.page_token));
    const int64_t size = internal::ClampPageSize(f.page_size);
    std::lock_guard<std::mutex> l(m_);
    JobPage page;
    for (auto it = order_.upper_bound(after); it != order_.end(); ++it) {
      const JobRecord& j = jobs_.at(it->second);
      if (!internal::Matches(f, j)) continue;
      if (static_cast<int64_t>(page.jobs.size()) == size) {
        page.next_page_token = std::to_string(page.jobs.back().seq);
        break;
      }
      page.jobs.push_back(j);
    }
    return page;
  }

  StatusOr<JobRecord> UpdateJob(JobRecord job, int64_t now_ms) override {
    std::lock_guard<std::mutex> l(m_);
    auto it = jobs_.find(job.id);
    if (it == jobs_.end()) return NotFoundError("job " + job.id + " not found");
    RETURN_IF_ERROR(CheckUpdate(it->second, job));
    job.version += 1;
    job.updated_ms = now_ms;
    it->second = job;
    return job;
  }

  StatusOr<std::vector<JobRecord>> ActiveJobs() override {
    std::lock_guard<std::mutex> l(m_);
    std::vector<JobRecord> out;
    for (const auto& [seq, id] : order_) {
      const JobRecord& j = jobs_.at(id);
      if (!IsFinal(j.state)) out.push_back(j);
    }
    return out;
  }

  StatusOr<int64_t> AppendEvents(const std::string& job_id, int64_t attempt,
                                 const std::vector<nlohmann::json>& bodies) override {
    std::lock_guard<std::mutex> l(m_);
    if (!jobs_.count(job_id)) return NotFoundError("job " + job_id + " not found");
    auto& ev = events_[job_id];
    std::optional<int64_t> last_step;
    for (auto it = ev.rbegin(); it != ev.rend() && !last_step; ++it) {
      if (it->attempt == attempt) last_step = internal::EventStep(it->body);
    }
    int64_t seq = 0;
    for (const auto* b : internal::NewEvents(last_step, bodies)) {
      ev.push_back({job_id, attempt, static_cast<int64_t>(ev.size()) + 1, *b});
      seq = ev.back().seq;
    }
    return seq;
  }

  StatusOr<std::vector<EventRecord>> ListEvents(const std::string& job_id, int64_t after_seq,
                                                int64_t limit) override {
    std::lock_guard<std::mutex> l(m_);
    std::vector<EventRecord> out;
    auto it = events_.find(job_id);
    if (it == events_.end()) return out;
    for (const auto& e : it->second) {
      if (e.seq > after_seq && static_cast<int64_t>(out.size()) < limit) out.push_back(e);
    }
    return out;
  }

  Status RecordResult(const ResultRecord& r) override {
    std::lock_guard<std::mutex> l(m_);
    if (!jobs_.count(r.job_id)) return NotFoundError("job " + r.job_id + " not found");
    auto& by_attempt = results_[r.job_id];
    auto it = by_attempt.find(r.attempt);
    if (it != by_attempt.end()) {
      if (it->second.metrics == r.metrics) return Status::Ok();
      return Status(StatusCode::kAlreadyExists, "job " + r.job_id + " attempt " +
                                                    std::to_string(r.attempt) +
                                                    ": a different result is already recorded");
    }
    by_attempt[r.attempt] = r;
    return Status::Ok();
  }

  StatusOr<std::optional<ResultRecord>> GetResult(const std::string& job_id) override {
    std::lock_guard<std::mutex> l(m_);
    auto it = results_.find(job_id);
    if (it == results_.end() || it->second.empty()) return std::optional<ResultRecord>();
    return std::optional<ResultRecord>(it->second.rbegin()->second);
  }

  Status PutWorker(const WorkerRecord& w) override {
    std::lock_guard<std::mutex> l(m_);
    workers_[w.id] = w;
    return Status::Ok();
  }
  StatusOr<WorkerRecord> GetWorker(const std::string& id) override {
    std::lock_guard<std::mutex> l(m_);
    auto it = workers_.find(id);
    if (it == workers_.end()) return NotFoundError("worker " + id + " not found");
    return it->second;
  }
  StatusOr<std::vector<WorkerRecord>> ListWorkers() override {
    std::lock_guard<std::mutex> l(m_);
    std::vector<WorkerRecord> out;
    for (const auto& [id, w] : workers_) out.push_back(w);
    return out;
  }

 private:
  std::mutex m_;
  std::map<std::string, StudyRecord> studies_;
  std::map<int64_t, std::string> study_order_;  // number -> study id
  std::map<std::string, JobRecord> jobs_;
  std::map<int64_t, std::string> order_;         // seq -> job id
  std::map<std::string, std::string> requests_;  // user\nrequest id -> study or job id
  std::map<std::string, std::vector<EventRecord>> events_;
  std::map<std::string, std::map<int64_t, ResultRecord>> results_;
  std::map<std::string, WorkerRecord> workers_;
  int64_t next_study_ = 0, next_lone_ = 0, next_seq_ = 0;
};

}  // namespace

std::unique_ptr<Store> NewMemoryStore() { return std::make_unique<MemoryStore>(); }

}  // namespace rmgen::coord
