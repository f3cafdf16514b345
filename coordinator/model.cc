#include "coordinator/model.h"

namespace rmgen::coord {

using nlohmann::json;

const char* JobStateName(JobState s) {
  switch (s) {
    case JobState::kPending: return "PENDING";
    case JobState::kQueued: return "QUEUED";
    case JobState::kAssigned: return "ASSIGNED";
    case JobState::kRunning: return "RUNNING";
    case JobState::kSucceeded: return "SUCCEEDED";
    case JobState::kFailed: return "FAILED";
    case JobState::kCancelled: return "CANCELLED";
  }
  return "?";
}

StatusOr<JobState> ParseJobState(const std::string& name) {
  for (JobState s : {JobState::kPending, JobState::kQueued, JobState::kAssigned, JobState::kRunning,
                     JobState::kSucceeded, JobState::kFailed, JobState::kCancelled}) {
    if (name == JobStateName(s)) return s;
  }
  return InvalidArgumentError("unknown job state '" + name +
                              "' (PENDING, QUEUED, ASSIGNED, RUNNING, SUCCEEDED, FAILED, "
                              "CANCELLED)");
}

bool IsFinal(JobState s) {
  return s == JobState::kSucceeded || s == JobState::kFailed || s == JobState::kCancelled;
}

Status CheckTransition(JobState from, JobState to) {
  bool ok = false;
  if (!IsFinal(from) && to == JobState::kCancelled) ok = true;
  switch (from) {
    case JobState::kPending:
      ok = ok || to == JobState::kQueued || to == JobState::kFailed;  // failed: a dep failed
      break;
    case JobState::kQueued: ok = ok || to == JobState::kAssigned; break;
    case JobState::kAssigned:
      ok = ok || to == JobState::kRunning || to == JobState::kQueued || to == JobState::kFailed ||
           to == JobState::kSucceeded;
      break;
    case JobState::kRunning:
      ok = ok || to == JobState::kQueued || to == JobState::kFailed || to == JobState::kSucceeded;
      break;
    case JobState::kSucceeded:
    case JobState::kFailed:
    case JobState::kCancelled: break;
  }
  if (ok) return Status::Ok();
  return FailedPreconditionError(std::string("job state ") + JobStateName(from) + " -> " +
                                 JobStateName(to) + " is not allowed");
}

json ToJson(const JobRecord& j) {
  json h = json::array();
  for (const auto& a : j.history) {
    h.push_back({{"number", a.number},
                 {"worker", a.worker},
                 {"outcome", a.outcome},
                 {"started_ms", a.started_ms},
                 {"ended_ms", a.ended_ms}});
  }
  return {{"id", j.id},
          {"study_id", j.study_id},
          {"user", j.user},
          {"name", j.name},
          {"kind", j.kind},
          {"spec", j.spec},
          {"labels", j.labels},
          {"deps", j.deps},
          {"ranks", j.ranks},
          {"priority", j.priority},
          {"seq", j.seq},
          {"state", JobStateName(j.state)},
          {"reason", j.reason},
          {"attempt", j.attempt},
          {"max_attempts", j.max_attempts},
          {"worker", j.worker},
          {"placement", j.placement},
          {"lease_deadline_ms", j.lease_deadline_ms},
          {"history", h},
          {"created_ms", j.created_ms},
          {"updated_ms", j.updated_ms},
          {"version", j.version}};
}

json ToJson(const StudyRecord& s) {
  return {{"id", s.id},     {"request_id", s.request_id}, {"user", s.user},
          {"name", s.name}, {"setting", s.setting},       {"source", s.source},
          {"plan", s.plan}, {"cancelled", s.cancelled},   {"created_ms", s.created_ms}};
}

json ToJson(const WorkerRecord& w) {
  return {{"id", w.id},
          {"host", w.host},
          {"slots", w.slots},
          {"labels", w.labels},
          {"memory_bytes_per_slot", w.memory_bytes_per_slot},
          {"draining", w.draining},
          {"spans_hosts", w.spans_hosts},
          {"instance", w.instance},
          {"registered_ms", w.registered_ms},
          {"last_heartbeat_ms", w.last_heartbeat_ms},
          {"lease_deadline_ms", w.lease_deadline_ms}};
}

// The store wrote these; a failure here means the data directory is damaged.
#define RMGEN_FROM_JSON(body)                                                   \
  try {                                                                         \
    body                                                                        \
  } catch (const std::exception& e) {                                           \
    return DataLossError(std::string("stored record unreadable: ") + e.what()); \
  }

namespace {

// The shapes Core relies on without checking again (placement entries, the labels it reads
// typed), so a damaged row is quarantined at load instead of throwing in a handler later.
void CheckJobShapes(const JobRecord& r) {
  auto fail = [&](const std::string& what) {
    throw std::runtime_error("job " + r.id + ": " + what);
  };
  if (!r.spec.is_object()) fail("spec is not an object");
  if (!r.labels.is_object()) fail("labels is not an object");
  for (const char* key : {"model", "method", "reused_from", "content_key", "setting"}) {
    if (r.labels.contains(key) && !r.labels[key].is_string()) {
      fail(std::string("labels.") + key + " is not a string");
    }
  }
  if (r.labels.contains("seed") && !r.labels["seed"].is_number_integer()) {
    fail("labels.seed is not an integer");
  }
  if (!r.placement.is_array()) fail("placement is not an array");
  for (const auto& p : r.placement) {
    if (!p.is_object() || !p.contains("worker") || !p["worker"].is_string() ||
        !p.contains("ranks") || !p["ranks"].is_number_integer()) {
      fail("placement entry " + p.dump() + " is not {worker: string, ranks: integer}");
    }
  }
}

}  // namespace

StatusOr<JobRecord> JobFromJson(const json& j){RMGEN_FROM_JSON({
  JobRecord r;
  r.id = j.at("id");
  r.study_id = j.at("study_id");
  r.user = j.at("user");
  r.name = j.at("name");
  r.kind = j.at("kind");
  r.spec = j.at("spec");
  r.labels = j.at("labels");
  r.deps = j.at("deps").get<std::vector<std::string>>();
  r.ranks = j.at("ranks");
  r.priority = j.at("priority");
  r.seq = j.at("seq");
  ASSIGN_OR_RETURN(r.state, ParseJobState(j.at("state")));
  r.reason = j.at("reason");
  r.attempt = j.at("attempt");
  r.max_attempts = j.at("max_attempts");
  r.worker = j.at("worker");
  r.placement = j.at("placement");
  r.lease_deadline_ms = j.at("lease_deadline_ms");
  for (const auto& a : j.at("history")) {
    r.history.push_back(
        {a.at("number"), a.at("worker"), a.at("outcome"), a.at("started_ms"), a.at("ended_ms")});
  }
  r.created_ms = j.at("created_ms");
  r.updated_ms = j.at("updated_ms");
  r.version = j.at("version");
  CheckJobShapes(r);
  return r;
})}

StatusOr<StudyRecord> StudyFromJson(const json& j){RMGEN_FROM_JSON({
  StudyRecord s;
  s.id = j.at("id");
  s.request_id = j.at("request_id");
  s.user = j.at("user");
  s.name = j.at("name");
  s.setting = j.at("setting");
  s.source = j.at("source");
  s.plan = j.at("plan");
  s.cancelled = j.at("cancelled");
  s.created_ms = j.at("created_ms");
  return s;
})}

StatusOr<WorkerRecord> WorkerFromJson(const json& j) {
  RMGEN_FROM_JSON({
    WorkerRecord w;
    w.id = j.at("id");
    w.host = j.at("host");
    w.slots = j.at("slots");
    w.labels = j.at("labels");
    // Records stored before workers reported their memory have none.
    w.memory_bytes_per_slot = j.value("memory_bytes_per_slot", int64_t{0});
    w.draining = j.at("draining");
    w.spans_hosts = j.value("spans_hosts", false);  // (not in records of earlier builds)
    w.instance = j.value("instance", "");
    w.registered_ms = j.at("registered_ms");
    w.last_heartbeat_ms = j.at("last_heartbeat_ms");
    w.lease_deadline_ms = j.at("lease_deadline_ms");
    return w;
  })
}

}  // namespace rmgen::coord
