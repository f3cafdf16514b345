#include "coordinator/store_common.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace rmgen::coord {

// Page tokens are the seq (jobs) or number (studies, "s<n>") to continue after.
std::string PageTokenAfter(const JobRecord& job) { return std::to_string(job.seq); }
std::string PageTokenAfter(const StudyRecord& study) {
  return study.id.size() > 1 ? study.id.substr(1) : "0";
}

StatusOr<std::vector<StudyRecord>> Store::ListStudies(const std::string& user) {
  std::vector<StudyRecord> out;
  StudyFilter f;
  f.user = user;
  f.page_size = 1000;
  for (;;) {
    ASSIGN_OR_RETURN(StudyPage p, ListStudies(f));
    for (auto& s : p.studies) out.push_back(std::move(s));
    if (p.next_page_token.empty()) break;
    f.page_token = p.next_page_token;
  }
  return out;
}

DataDirLock::~DataDirLock() {
  if (fd_ >= 0) ::close(fd_);  // releases the lock
}

StatusOr<std::unique_ptr<DataDirLock>> LockDataDir(const std::string& dir) {
  const std::string path = dir + "/LOCK";
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) {
    return Status(StatusCode::kUnavailable,
                  "cannot open " + path + " to lock the data directory: " + std::strerror(errno));
  }
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    char buf[32] = {};
    const ssize_t n = ::pread(fd, buf, sizeof(buf) - 1, 0);
    ::close(fd);
    std::string pid = n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
    while (!pid.empty() && (pid.back() == '\n' || pid.back() == ' ')) pid.pop_back();
    if (err != EWOULDBLOCK) {
      return Status(StatusCode::kUnavailable, "cannot lock " + path + ": " + std::strerror(err));
    }
    return FailedPreconditionError(
        "data directory " + dir + " is in use by another rmgen-coordinator" +
        (pid.empty() ? std::string() : " (pid " + pid + ")") + ": it holds " + path +
        ". Stop that one first, or give this one another --data-dir");
  }
  const std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, pid.data(), pid.size(), 0) < 0) {
    // The lock holds without the pid; only the message of a second coordinator is poorer.
  }
  return std::make_unique<DataDirLock>(fd);
}

}  // namespace rmgen::coord

namespace rmgen::coord::internal {

namespace {

// "${output:#k}" in any string of `spec` -> "${output:<id of job k>}".
void RewriteOutputs(nlohmann::json* spec, const std::vector<JobRecord>& jobs) {
  if (spec->is_string()) {
    std::string s = spec->get<std::string>();
    size_t at = 0;
    while ((at = s.find("${output:#", at)) != std::string::npos) {
      const size_t end = s.find('}', at);
      if (end == std::string::npos) break;
      const long idx = std::strtol(s.c_str() + at + 10, nullptr, 10);
      if (idx >= 0 && static_cast<size_t>(idx) < jobs.size()) {
        s.replace(at, end + 1 - at, "${output:" + jobs[idx].id + "}");
      }
      ++at;
    }
    *spec = s;
  } else if (spec->is_structured()) {
    for (auto& v : *spec) RewriteOutputs(&v, jobs);
  }
}

}  // namespace

Status PrepareJobs(const std::string& prefix, int64_t first_seq, int64_t now_ms,
                   std::vector<JobRecord>* jobs) {
  for (size_t k = 0; k < jobs->size(); ++k) {
    JobRecord& j = (*jobs)[k];
    j.id = prefix + "-j" + std::to_string(k);
    j.seq = first_seq + static_cast<int64_t>(k);
    j.version = 1;
    j.created_ms = j.updated_ms = now_ms;
  }
  for (size_t k = 0; k < jobs->size(); ++k) {
    for (auto& d : (*jobs)[k].deps) {
      if (d.empty() || d[0] != '#') continue;
      char* end = nullptr;
      const long idx = std::strtol(d.c_str() + 1, &end, 10);
      if (*end != '\0' || idx < 0 || static_cast<size_t>(idx) >= k) {
        return InvalidArgumentError("job " + std::to_string(k) + " (" + (*jobs)[k].name +
                                    "): dependency '" + d +
                                    "' must name an earlier job of the same submission");
      }
      d = (*jobs)[idx].id;
    }
    RewriteOutputs(&(*jobs)[k].spec, *jobs);
  }
  return Status::Ok();
}

Status CheckUpdate(const JobRecord& stored, const JobRecord& update) {
  if (stored.version != update.version) {
    return FailedPreconditionError("job " + stored.id + ": stale version " +
                                   std::to_string(update.version) + " (stored " +
                                   std::to_string(stored.version) + ")");
  }
  if (stored.state != update.state) RETURN_IF_ERROR(CheckTransition(stored.state, update.state));
  if (stored.seq != update.seq || stored.study_id != update.study_id) {
    return FailedPreconditionError("job " + stored.id + ": seq and study never change");
  }
  return Status::Ok();
}

bool Matches(const JobFilter& f, const JobRecord& j) {
  return (f.study_id.empty() || j.study_id == f.study_id) && (f.user.empty() || j.user == f.user) &&
         (f.kind.empty() || j.kind == f.kind) && (!f.state || j.state == *f.state);
}

StatusOr<int64_t> ParsePageToken(const std::string& token) {
  if (token.empty()) return int64_t{-1};
  char* end = nullptr;
  const long long v = std::strtoll(token.c_str(), &end, 10);
  if (*end != '\0' || v < 0) return InvalidArgumentError("page_token '" + token + "' is not valid");
  return static_cast<int64_t>(v);
}

int64_t ClampPageSize(int64_t n) { return std::clamp<int64_t>(n <= 0 ? 100 : n, 1, 1000); }

std::optional<int64_t> EventStep(const nlohmann::json& body) {
  if (!body.is_object()) return std::nullopt;
  auto it = body.find("step");
  if (it == body.end() || !it->is_number_integer()) return std::nullopt;
  return it->get<int64_t>();
}

std::vector<const nlohmann::json*> NewEvents(std::optional<int64_t> last_step,
                                             const std::vector<nlohmann::json>& bodies) {
  std::vector<const nlohmann::json*> out;
  for (const auto& b : bodies) {
    const auto step = EventStep(b);
    if (step) {
      if (last_step && *step <= *last_step) continue;
      last_step = step;
    }
    out.push_back(&b);
  }
  return out;
}

}  // namespace rmgen::coord::internal
