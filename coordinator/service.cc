#include "coordinator/service.h"

#include <google/protobuf/util/json_util.h>
#include <grpcpp/support/server_interceptor.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <filesystem>

#include "common/file.h"
#include "common/limits.h"
#include "rmgen/v1/rmgen.grpc.pb.h"

namespace rmgen::coord {

using nlohmann::json;
namespace pb = ::rmgen::v1;

grpc::Status ToGrpc(const Status& s) {
  using G = grpc::StatusCode;
  G code = G::UNKNOWN;
  switch (s.code()) {
    case StatusCode::kOk: return grpc::Status::OK;
    case StatusCode::kInvalidArgument: code = G::INVALID_ARGUMENT; break;
    case StatusCode::kNotFound: code = G::NOT_FOUND; break;
    case StatusCode::kAlreadyExists: code = G::ALREADY_EXISTS; break;
    case StatusCode::kFailedPrecondition: code = G::FAILED_PRECONDITION; break;
    case StatusCode::kOutOfRange: code = G::OUT_OF_RANGE; break;
    case StatusCode::kDataLoss: code = G::DATA_LOSS; break;
    case StatusCode::kUnimplemented: code = G::UNIMPLEMENTED; break;
    case StatusCode::kInternal: code = G::INTERNAL; break;
    case StatusCode::kUnavailable: code = G::UNAVAILABLE; break;
    case StatusCode::kPermissionDenied: code = G::PERMISSION_DENIED; break;
    case StatusCode::kUnauthenticated: code = G::UNAUTHENTICATED; break;
    case StatusCode::kCancelled: code = G::CANCELLED; break;
    case StatusCode::kDeadlineExceeded: code = G::DEADLINE_EXCEEDED; break;
    case StatusCode::kResourceExhausted: code = G::RESOURCE_EXHAUSTED; break;
  }
  return grpc::Status(code, s.message());
}

namespace {

// JSON <-> google.protobuf.Struct, converted directly (no text round trip: this is on the
// path of every call that carries a spec). Struct numbers are doubles, as in JSON.
void ToValue(const json& j, google::protobuf::Value* v);

void FillStruct(const json& j, google::protobuf::Struct* s) {
  auto* fields = s->mutable_fields();
  for (auto it = j.begin(); it != j.end(); ++it) ToValue(it.value(), &(*fields)[it.key()]);
}

void ToValue(const json& j, google::protobuf::Value* v) {
  switch (j.type()) {
    case json::value_t::null:
    case json::value_t::discarded: v->set_null_value(google::protobuf::NULL_VALUE); break;
    case json::value_t::boolean: v->set_bool_value(j.get<bool>()); break;
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
    case json::value_t::number_float: v->set_number_value(j.get<double>()); break;
    case json::value_t::string: v->set_string_value(j.get_ref<const std::string&>()); break;
    case json::value_t::object: FillStruct(j, v->mutable_struct_value()); break;
    case json::value_t::array:
    case json::value_t::binary: {
      auto* list = v->mutable_list_value();
      for (const auto& x : j) ToValue(x, list->add_values());
      break;
    }
  }
}

json FromValue(const google::protobuf::Value& v);

json FromStructFields(const google::protobuf::Struct& s) {
  json out = json::object();
  for (const auto& [k, v] : s.fields()) out[k] = FromValue(v);
  return out;
}

json FromValue(const google::protobuf::Value& v) {
  switch (v.kind_case()) {
    case google::protobuf::Value::kBoolValue: return v.bool_value();
    case google::protobuf::Value::kNumberValue: {
      // Whole numbers come back as integers (step counts, seeds, sizes).
      const double d = v.number_value();
      if (std::trunc(d) == d && std::abs(d) < 9.007199254740992e15) return static_cast<int64_t>(d);
      return d;
    }
    case google::protobuf::Value::kStringValue: return v.string_value();
    case google::protobuf::Value::kStructValue: return FromStructFields(v.struct_value());
    case google::protobuf::Value::kListValue: {
      json a = json::array();
      for (const auto& x : v.list_value().values()) a.push_back(FromValue(x));
      return a;
    }
    default: return nullptr;
  }
}

google::protobuf::Struct ToStruct(const json& j) {
  google::protobuf::Struct s;
  if (j.is_object()) FillStruct(j, &s);
  return s;
}

json FromStruct(const google::protobuf::Struct& s) { return FromStructFields(s); }

void ToProto(const JobRecord& j, pb::Job* out) {
  out->set_id(j.id);
  out->set_study_id(j.study_id);
  out->set_user(j.user);
  out->set_name(j.name);
  out->set_kind(j.kind);
  *out->mutable_spec() = ToStruct(j.spec);
  *out->mutable_labels() = ToStruct(j.labels);
  for (const auto& d : j.deps) out->add_deps(d);
  out->set_ranks(j.ranks);
  out->set_priority(j.priority);
  out->set_state(static_cast<pb::JobState>(static_cast<int>(j.state) + 1));
  out->set_reason(j.reason);
  out->set_attempt(j.attempt);
  out->set_max_attempts(j.max_attempts);
  out->set_worker(j.worker);
  for (const auto& a : j.history) {
    auto* h = out->add_history();
    h->set_number(a.number);
    h->set_worker(a.worker);
    h->set_outcome(a.outcome);
    h->set_started_ms(a.started_ms);
    h->set_ended_ms(a.ended_ms);
  }
  out->set_created_ms(j.created_ms);
  out->set_updated_ms(j.updated_ms);
}

void ToProto(const StudyView& v, pb::Study* out) {
  out->set_id(v.study.id);
  out->set_name(v.study.name);
  out->set_setting(v.study.setting);
  out->set_user(v.study.user);
  out->set_created_ms(v.study.created_ms);
  out->set_cancelled(v.study.cancelled);
  for (const auto& [k, n] : v.job_states) (*out->mutable_job_states())[k] = n;
  out->set_jobs_total(v.jobs_total);
  out->set_source(v.study.source);
}

void ToProto(const WorkerView& v, pb::Worker* out) {
  out->set_id(v.worker.id);
  out->set_host(v.worker.host);
  out->set_slots(v.worker.slots);
  out->set_free_slots(v.free_slots);
  *out->mutable_labels() = ToStruct(v.worker.labels);
  out->set_draining(v.worker.draining);
  out->set_alive(v.alive);
  out->set_last_heartbeat_ms(v.worker.last_heartbeat_ms);
  for (const auto& j : v.jobs) out->add_jobs(j);
  out->set_memory_bytes_per_slot(v.worker.memory_bytes_per_slot);
}

void ToProto(const EventRecord& e, pb::Event* out) {
  out->set_job_id(e.job_id);
  out->set_attempt(e.attempt);
  out->set_seq(e.seq);
  *out->mutable_body() = ToStruct(e.body);
}

// Client replies stay under gRPC's 4 MiB message limit: a list or log page stops adding items
// once about kPageBytes are in it (its first item always goes in, an event larger than
// kMaxEventBytes as a stub naming its size), and GetResults refuses a reply over
// kMaxResultsBytes.
constexpr size_t kPageBytes = 2 << 20;
constexpr size_t kMaxEventBytes = kMaxReportedStructBytes;
constexpr size_t kMaxResultsBytes = 7 << 19;  // 3.5 MiB
constexpr int64_t kLogsPageDefault = 1000, kLogsPageMax = 10000;
// GetLogs' log_tail: the last lines, each cut to kLogLineBytes, at most kLogTailBytes.
constexpr size_t kLogTailLines = 200, kLogLineBytes = 2000, kLogTailBytes = 256 << 10;

// Whether a page keeps its item number `count` (1 = the first), just added: its size then
// counts in `*used`. The caller removes it and ends the page otherwise.
bool Fits(const google::protobuf::Message& item, int count, size_t* used) {
  const size_t n = item.ByteSizeLong() + 8;  // + its field tag and length
  if (count > 1 && *used + n > kPageBytes) return false;
  *used += n;
  return true;
}

// Adds the jobs of `page` to `out` without their specs (GetJob carries a spec) while the
// reply stays within kPageBytes; returns the token that resumes after the last one added.
std::string AddJobs(JobPage page, google::protobuf::RepeatedPtrField<pb::Job>* out) {
  size_t used = 0;
  for (auto& j : page.jobs) {
    j.spec = json::object();
    pb::Job* pj = out->Add();
    ToProto(j, pj);
    if (!Fits(*pj, out->size(), &used)) {
      out->RemoveLast();
      return PageTokenAfter(page.jobs[out->size() - 1]);
    }
  }
  return page.next_page_token;
}

// Adds `e` to `out`; an event over kMaxEventBytes (stored before reports were capped) as a
// stub naming its size.
pb::Event* AddEvent(const EventRecord& e, google::protobuf::RepeatedPtrField<pb::Event>* out) {
  pb::Event* pe = out->Add();
  ToProto(e, pe);
  if (const size_t n = pe->ByteSizeLong(); n > kMaxEventBytes) {
    *pe->mutable_body() =
        ToStruct({{"truncated", true}, {"bytes", n}, {"why", "event too large for one reply"}});
  }
  return pe;
}

// Adds `events` to `u` in order while the whole update (its job and metrics counted) stays
// within kPageBytes plus one event (the first always goes in: an event is at most
// kMaxEventBytes); moves `*after` past each one added and returns how many were.
size_t AddEvents(const std::vector<EventRecord>& events, pb::WatchUpdate* u, int64_t* after) {
  size_t used = u->ByteSizeLong(), added = 0;
  for (const auto& e : events) {
    pb::Event* pe = AddEvent(e, u->mutable_events());
    if (!Fits(*pe, static_cast<int>(added) + 1, &used)) {
      u->mutable_events()->RemoveLast();
      break;
    }
    *after = e.seq;
    ++added;
  }
  return added;
}

// The last lines of `tail` (a JSON array of strings), cut to the log-tail caps.
void AddLogTail(const json& tail, google::protobuf::RepeatedPtrField<std::string>* out) {
  out->Clear();
  if (!tail.is_array()) return;
  std::vector<std::string> lines;
  size_t bytes = 0;
  for (auto it = tail.rbegin(); it != tail.rend() && lines.size() < kLogTailLines; ++it) {
    if (!it->is_string()) continue;
    std::string l = it->get<std::string>();
    if (l.size() > kLogLineBytes) l = l.substr(0, kLogLineBytes) + "...";
    if (bytes + l.size() > kLogTailBytes) break;
    bytes += l.size();
    lines.push_back(std::move(l));
  }
  for (auto it = lines.rbegin(); it != lines.rend(); ++it) out->Add(std::move(*it));
}

std::vector<std::pair<std::string, int64_t>> Running(
    const google::protobuf::RepeatedPtrField<pb::RunningJob>& r) {
  std::vector<std::pair<std::string, int64_t>> out;
  for (const auto& x : r) out.emplace_back(x.job_id(), x.attempt());
  return out;
}

// Events per WatchUpdate: a backlog goes out in several updates, each well under the 4 MiB
// message limit.
constexpr int64_t kEventsPerUpdate = 500;

// Resolves the caller of one call, or the gRPC error to return.
#define RMGEN_CALLER(var)                               \
  auto var##_or = Authenticate(ctx);                    \
  if (!var##_or.ok()) return ToGrpc(var##_or.status()); \
  const Caller& var = *var##_or;

#define RMGEN_ASSIGN(lhs, expr)                         \
  auto lhs##_or = (expr);                               \
  if (!lhs##_or.ok()) return ToGrpc(lhs##_or.status()); \
  auto& lhs = *lhs##_or;

#define RMGEN_CHECK(expr)                                \
  do {                                                   \
    if (Status s_ = (expr); !s_.ok()) return ToGrpc(s_); \
  } while (0)

// A handler must never take the coordinator down: anything thrown is an INTERNAL error of
// that call (and a bug to fix).
grpc::Status Unexpected(const std::exception& e) {
  std::fprintf(stderr, "rmgen-coordinator: unexpected exception in a call: %s\n", e.what());
  return grpc::Status(grpc::StatusCode::INTERNAL, std::string("internal error: ") + e.what());
}

class Base {
 public:
  Base(Core* core, const Auth* auth) : core_(core), auth_(auth) {}

 protected:
  StatusOr<Caller> Authenticate(grpc::ServerContext* ctx) const {
    const auto& md = ctx->client_metadata();
    auto it = md.find("authorization");
    const std::string value =
        it == md.end() ? std::string() : std::string(it->second.data(), it->second.size());
    return auth_->Authenticate(value);
  }
  Core* core_;
  const Auth* auth_;
};

class ClientService final : public pb::Coordinator::Service, Base {
 public:
  using Base::Base;

  grpc::Status SubmitStudy(grpc::ServerContext* ctx, const pb::SubmitStudyRequest* req,
                           pb::SubmitStudyResponse* resp) override {
    try {
      RMGEN_CALLER(c);
      if (req->dry_run()) {
        RMGEN_ASSIGN(jobs, core_->PlanStudyDryRun(c, req->study_yaml(), req->source_name()));
        for (const auto& j : jobs) ToProto(j, resp->add_jobs());
        if (resp->ByteSizeLong() > kMaxResultsBytes) {
          return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                              "the plan of " + std::to_string(jobs.size()) + " jobs is " +
                                  std::to_string(resp->ByteSizeLong()) +
                                  " bytes, over a reply's 3.5 MiB: run `rmgen plan` locally");
        }
        return grpc::Status::OK;
      }
      RMGEN_ASSIGN(r,
                   core_->SubmitStudy(c, req->study_yaml(), req->source_name(), req->request_id()));
      ToProto(r.first, resp->mutable_study());
      resp->set_created(r.second);
      JobFilter f;
      f.study_id = r.first.study.id;
      f.page_size = 1000;
      RMGEN_ASSIGN(page, core_->ListJobs(c, f, c.role == Role::kOperator));
      resp->set_next_page_token(AddJobs(std::move(page), resp->mutable_jobs()));
      return grpc::Status::OK;
    } catch (const std::exception& e) {
      return Unexpected(e);
    }
  }
  grpc::Status GetStudy(grpc::ServerContext* ctx, const pb::GetStudyRequest* req,
                        pb::Study* resp) override {
    try {
      RMGEN_CALLER(c);
      RMGEN_ASSIGN(v, core_->GetStudy(c, req->id()));
      ToProto(v, resp);
      return grpc::Status::OK;
    } catch (const std::exception& e) {
      return Unexpected(e);
    }
  }
  grpc::Status ListStudies(grpc::ServerContext* ctx, const pb::ListStudiesRequest* req,
                           pb::ListStudiesResponse* resp) override {
    try {
      RMGEN_CALLER(c);
      std::string next;
      RMGEN_ASSIGN(
          vs, core_->ListStudies(c, req->all_users(), req->page_token(), req->page_size(), &next));
      size_t used = 0;
      for (const auto& v : vs) {
        pb::Study* s = resp->add_studies();
        ToProto(v, s);
        s->clear_source();  // GetStudy carries it
        if (!Fits(*s, resp->studies_size(), &used)) {
          resp->mutable_studies()->RemoveLast();
          next = PageTokenAfter(vs[resp->studies_size() - 1].study);
          break;
        }
      }
      resp->set_next_page_token(next);
      return grpc::Status::OK;
    } catch (const std::exception& e) {
      return Unexpected(e);
    }
  }
  grpc::Status CancelStudy(grpc::ServerContext* ctx, const pb::CancelStudyRequest* req,
                           pb::Study* resp) override {
    try {
      RMGEN_CALLER(c);
      RMGEN_ASSIGN(v, core_->CancelStudy(c, req->id()));
      ToProto(v, resp);
      return grpc::Status::OK;
    } catch (const std::exception& e) {
      return Unexpected(e);
    }
  }
  grpc::Status SubmitJob(grpc::ServerContext* ctx, const pb::SubmitJobRequest* req,
                         pb::SubmitJobResponse* resp) override {
    try {
      RMGEN_CALLER(c);
      RMGEN_ASSIGN(r, core_->SubmitJob(c, FromStruct(req->spec()), req->name(), req->ranks(),
                                       req->priority(), req->request_id()));
      r.record.spec = json::object();  // the caller has it; GetJob returns it resolved
      ToProto(r.record, resp->mutable_job());
      resp->set_created(r.created);
      return grpc::Status::OK;
    } catch (const std::exception& e) {
      return Unexpected(e);
    }
  }
  grpc::Status GetJob(grpc::ServerContext* ctx, const pb::GetJobRequest* req,
                      pb::Job* resp) override {
    try {
      RMGEN_CALLER(c);
      RMGEN_ASSIGN(j, core_->GetJob(c, req->id()));
      ToProto(j, resp);
      return grpc::Status::OK;
    } catch (const std::exception& e) {
      return Unexpected(e);
    }
  }
  grpc::Status ListJobs(grpc::ServerContext* ctx, const pb::ListJobsRequest* req,
                        pb::ListJobsResponse* resp) override {
    try {
      RMGEN_CALLER(c);
      JobFilter f;
      f.study_id = req->study_id();
      f.kind = req->kind();
      if (req->state() != pb::JOB_STATE_UNSPECIFIED) {
        f.state = static_cast<JobState>(static_cast<int>(req->state()) - 1);
      }
      f.page_size = req->page_size();
      f.page_token = req->page_token();
      RMGEN_ASSIGN(p, core_->ListJobs(c, f, req->all_users()));
      resp->set_next_page_token(AddJobs(std::move(p), resp->mutable_jobs()));
      return grpc::Status::OK;
    } catch (const std::exception& e) {
      return Unexpected(e);
    }
  }
  grpc::Status CancelJob(grpc::ServerContext* ctx, const pb::CancelJobRequest* req,
                         pb::Job* resp) override {
    try {
      RMGEN_CALLER(c);
      RMGEN_ASSIGN(j, core_->CancelJob(c, req->id()));
      ToProto(j, resp);
      return grpc::Status::OK;
    } catch (const std::exception& e) {
      return Unexpected(e);
    }
  }

  // Sends the job when it changed and its new events; ends when the job is final.
  grpc::Status WatchJob(grpc::ServerContext* ctx, const pb::WatchJobRequest* req,
                        grpc::ServerWriter<pb::WatchUpdate>* w) override {
    try {
      RMGEN_CALLER(c);
      int64_t after = req->after_seq(), version = -1;
      RMGEN_ASSIGN(first, core_->GetJob(c, req->id()));
      // Woken by its own study's changes only.
      const std::string study_id = first.study_id;
      std::vector<std::string> ignored;
      bool complete = false;
      uint64_t seen = study_id.empty() ? core_->Changes()
                                       : core_->StudyChanges(study_id, 0, &ignored, &complete);
      bool metrics_sent = false;
      while (!ctx->IsCancelled()) {
        RMGEN_ASSIGN(j, core_->GetJob(c, req->id()));
        RMGEN_ASSIGN(events, core_->GetEvents(c, j.id, after, kEventsPerUpdate));
        // The metrics go with the update that carries the job's last events; that update is
        // made even when nothing else changed (a backlog of exactly kEventsPerUpdate).
        const bool succeeded = j.state == JobState::kSucceeded;
        bool more = false;
        if (j.version != version || !events.empty() || (succeeded && !metrics_sent)) {
          pb::WatchUpdate u;
          ToProto(j, u.mutable_job());
          if (version >= 0) u.mutable_job()->clear_spec();  // sent once: it does not change
          const bool last_batch = static_cast<int64_t>(events.size()) < kEventsPerUpdate;
          if (succeeded && last_batch) {  // counted in the update's size before the events
            RMGEN_ASSIGN(r, core_->GetResult(c, j.id));
            if (r) *u.mutable_metrics() = ToStruct(r->metrics);
          }
          more = AddEvents(events, &u, &after) < events.size() || !last_batch;
          if (more) {
            u.clear_metrics();
          } else {
            metrics_sent = u.has_metrics();  // a reused job's result may come a moment later
          }
          if (!w->Write(u)) break;
          version = j.version;
        }
        if (more) continue;  // the rest of the events at once
        if (IsFinal(j.state)) break;
        seen = study_id.empty() ? core_->WaitForChange(seen, 1000)
                                : core_->WaitForStudyChange(study_id, seen, 1000);
      }
      return grpc::Status::OK;
    } catch (const std::exception& e) {
      return Unexpected(e);
    }
  }

  // Every job of the study, each time it changes; ends when all are final.
  // The whole study once, then only the jobs its change log names (Core::StudyChanges): a
  // watcher wakes for its own study and reads what changed, not the study again.
  grpc::Status WatchStudy(grpc::ServerContext* ctx, const pb::WatchStudyRequest* req,
                          grpc::ServerWriter<pb::WatchUpdate>* w) override {
    try {
      RMGEN_CALLER(c);
      RMGEN_ASSIGN(study, core_->GetStudy(c, req->id()));
      (void)study;
      std::map<std::string, int64_t> versions, after;
      std::set<std::string> open;          // jobs not final yet
      std::set<std::string> metrics_sent;  // succeeded jobs whose metrics went out
      // Sends a job's new state and events (in updates of at most kEventsPerUpdate), and a
      // succeeded job's metrics with its last events (as WatchJob); false when the client
      // is gone.
      auto send = [&](const JobRecord& j) -> StatusOr<bool> {
        bool changed = !versions.count(j.id) || versions[j.id] != j.version;
        bool want_metrics = j.state == JobState::kSucceeded && !metrics_sent.count(j.id);
        for (;;) {
          ASSIGN_OR_RETURN(auto events, core_->GetEvents(c, j.id, after[j.id], kEventsPerUpdate));
          if (!changed && events.empty() && !want_metrics) break;
          pb::WatchUpdate u;
          ToProto(j, u.mutable_job());
          u.mutable_job()->clear_spec();  // the spec does not change; keep the stream small
          const bool last_batch = static_cast<int64_t>(events.size()) < kEventsPerUpdate;
          if (want_metrics && last_batch) {  // counted in the update's size before the events
            ASSIGN_OR_RETURN(auto r, core_->GetResult(c, j.id));
            if (r) *u.mutable_metrics() = ToStruct(r->metrics);
          }
          const size_t added = AddEvents(events, &u, &after[j.id]);
          const bool more = added < events.size() || !last_batch;
          if (more) u.clear_metrics();  // they go with the last events, on a later pass
          if (u.has_metrics()) {
            metrics_sent.insert(j.id);
            want_metrics = false;
          } else if (!more) {
            want_metrics = false;  // no result yet (a reused one may come later): next change
          }
          if (!w->Write(u)) return false;
          changed = false;
          if (!more) break;
        }
        versions[j.id] = j.version;
        if (IsFinal(j.state)) {
          open.erase(j.id);
        } else {
          open.insert(j.id);
        }
        return true;
      };
      std::vector<std::string> ids;
      bool complete = false;
      uint64_t seen = core_->StudyChanges(req->id(), 0, &ids, &complete);
      bool full = true;
      while (!ctx->IsCancelled()) {
        if (full) {
          open.clear();  // rebuilt from the listing (a quarantined job is no longer in it)
          JobFilter f;
          f.study_id = req->id();
          f.page_size = 1000;
          for (;;) {
            RMGEN_ASSIGN(p, core_->ListJobs(c, f, c.role == Role::kOperator));
            for (const auto& j : p.jobs) {
              RMGEN_ASSIGN(more, send(j));
              if (!more) return grpc::Status::OK;
            }
            if (p.next_page_token.empty()) break;
            f.page_token = p.next_page_token;
          }
          full = false;
        } else {
          for (const auto& id : ids) {
            auto j = core_->GetJob(c, id);
            if (!j.ok() && j.status().code() == StatusCode::kNotFound) {
              open.erase(id);  // quarantined (corrupt in the store): nothing more comes of it
              continue;
            }
            if (!j.ok()) return ToGrpc(j.status());
            RMGEN_ASSIGN(more, send(*j));
            if (!more) return grpc::Status::OK;
          }
        }
        if (open.empty()) break;
        const uint64_t now = core_->WaitForStudyChange(req->id(), seen, 1000);
        if (now == seen) continue;
        ids.clear();
        seen = core_->StudyChanges(req->id(), seen, &ids, &complete);
        full = !complete;
      }
      return grpc::Status::OK;
    } catch (const std::exception& e) {
      return Unexpected(e);
    }
  }

  grpc::Status GetResults(grpc::ServerContext* ctx, const pb::GetResultsRequest* req,
                          pb::GetResultsResponse* resp) override {
    try {
      RMGEN_CALLER(c);
      std::vector<std::string> ids;
      if (!req->study_id().empty()) ids.push_back(req->study_id());
      ids.insert(ids.end(), req->study_ids().begin(), req->study_ids().end());
      const std::string& format = req->format();
      const bool all = format.empty(), md = format == "md" || format == "markdown";
      if (!all && !md && format != "json" && format != "table" && format != "csv") {
        return ToGrpc(InvalidArgumentError("format '" + format +
                                           "': one of json, table, md, csv (or none: all)"));
      }
      RMGEN_ASSIGN(r, core_->GetResults(c, ids, req->tag()));
      if (all || format == "json") *resp->mutable_results() = ToStruct(r.ToJson());
      if (all || format == "table") resp->set_table(r.Table());
      if (all || md) resp->set_markdown(r.Markdown());
      if (all || format == "csv") resp->set_csv(r.Csv());
      const size_t bytes = resp->ByteSizeLong();
      if (bytes > kMaxResultsBytes) {
        resp->Clear();
        char size[32];
        std::snprintf(size, sizeof(size), "%.1f MiB", bytes / double(1 << 20));
        const std::string n = std::to_string(r.studies.size());
        return ToGrpc(
            Status(StatusCode::kResourceExhausted,
                   "the results of " + n + (r.studies.size() == 1 ? " study" : " studies") +
                       " come to " + size + (all ? " in all four forms" : " as " + format) +
                       ", over the 3.5 MiB one reply may carry: " +
                       (all ? "ask for one form (rmgen results --format), or for fewer studies"
                            : "ask for fewer studies (fewer ids, or a narrower tag)")));
      }
      return grpc::Status::OK;
    } catch (const std::exception& e) {
      return Unexpected(e);
    }
  }
  grpc::Status GetLogs(grpc::ServerContext* ctx, const pb::GetLogsRequest* req,
                       pb::GetLogsResponse* resp) override {
    try {
      RMGEN_CALLER(c);
      const int64_t size =
          req->page_size() <= 0 ? kLogsPageDefault : std::min(req->page_size(), kLogsPageMax);
      RMGEN_ASSIGN(events, core_->GetEvents(c, req->job_id(), req->after_seq(), size + 1));
      size_t used = 0;
      bool more = false;
      const json* tail = nullptr;
      for (const auto& e : events) {
        if (resp->events_size() == size) {
          more = true;
          break;
        }
        pb::Event* pe = AddEvent(e, resp->mutable_events());
        if (!Fits(*pe, resp->events_size(), &used)) {
          resp->mutable_events()->RemoveLast();
          more = true;
          break;
        }
        if (e.body.is_object() && e.body.contains("log_tail")) tail = &e.body["log_tail"];
      }
      if (tail) AddLogTail(*tail, resp->mutable_log_tail());
      if (more) {
        resp->set_next_after_seq(resp->events(resp->events_size() - 1).seq());
        return grpc::Status::OK;
      }
      RMGEN_ASSIGN(job, core_->GetJob(c, req->job_id()));
      if (job.attempt > 0) {
        const std::string path = core_->options().output_root + "/" + job.id + "/logs/attempt-" +
                                 std::to_string(job.attempt) + ".log";
        resp->set_log_path(path);
        // The job's ranks own its folder: a `logs` replaced by a link to another folder is
        // not followed (LastLines itself refuses a linked file).
        namespace fs = std::filesystem;
        std::error_code e1, e2;
        const fs::path dir = fs::canonical(core_->options().output_root + "/" + job.id, e1);
        const fs::path logs = fs::canonical(fs::path(path).parent_path(), e2);
        if (!e1 && !e2 && logs == dir / "logs") {
          for (auto& l : LastLines(path, 50)) resp->add_log_lines(std::move(l));
        }
      }
      return grpc::Status::OK;
    } catch (const std::exception& e) {
      return Unexpected(e);
    }
  }
  grpc::Status ListWorkers(grpc::ServerContext* ctx, const pb::ListWorkersRequest* req,
                           pb::ListWorkersResponse* resp) override {
    try {
      RMGEN_CALLER(c);
      RMGEN_ASSIGN(ws, core_->ListWorkers(c));
      std::sort(ws.begin(), ws.end(),
                [](const WorkerView& a, const WorkerView& b) { return a.worker.id < b.worker.id; });
      // Pages by id: the token is the last id sent.
      const int64_t size = req->page_size() <= 0 ? 100 : std::min<int64_t>(req->page_size(), 1000);
      size_t used = 0;
      for (const auto& v : ws) {
        if (!req->page_token().empty() && v.worker.id <= req->page_token()) continue;
        if (resp->workers_size() == size) {
          resp->set_next_page_token(resp->workers(resp->workers_size() - 1).id());
          break;
        }
        pb::Worker* w = resp->add_workers();
        ToProto(v, w);
        if (!Fits(*w, resp->workers_size(), &used)) {
          resp->mutable_workers()->RemoveLast();
          resp->set_next_page_token(resp->workers(resp->workers_size() - 1).id());
          break;
        }
      }
      return grpc::Status::OK;
    } catch (const std::exception& e) {
      return Unexpected(e);
    }
  }
  grpc::Status DrainWorker(grpc::ServerContext* ctx, const pb::DrainWorkerRequest* req,
                           pb::Worker* resp) override {
    try {
      RMGEN_CALLER(c);
      RMGEN_ASSIGN(v, core_->DrainWorker(c, req->id(), req->undrain()));
      ToProto(v, resp);
      return grpc::Status::OK;
    } catch (const std::exception& e) {
      return Unexpected(e);
    }
  }
};

class WorkerServiceImpl final : public pb::WorkerService::Service, Base {
 public:
  using Base::Base;

  grpc::Status RegisterWorker(grpc::ServerContext* ctx, const pb::RegisterWorkerRequest* req,
                              pb::RegisterWorkerResponse* resp) override {
    try {
      RMGEN_CALLER(c);
      WorkerRecord w;
      w.id = req->id();
      w.host = req->host();
      w.slots = req->slots();
      w.labels = FromStruct(req->labels());
      w.memory_bytes_per_slot = req->memory_bytes_per_slot() > 0 ? req->memory_bytes_per_slot() : 0;
      w.spans_hosts = req->spans_hosts();
      RMGEN_ASSIGN(r, core_->RegisterWorker(c, w, Running(req->running()), req->instance()));
      resp->set_lease_ms(core_->options().lease_ms);
      for (const auto& id : r.cancel) resp->add_cancel(id);
      resp->set_session(r.session);
      return grpc::Status::OK;
    } catch (const std::exception& e) {
      return Unexpected(e);
    }
  }
  grpc::Status Heartbeat(grpc::ServerContext* ctx, const pb::HeartbeatRequest* req,
                         pb::HeartbeatResponse* resp) override {
    try {
      RMGEN_CALLER(c);
      // Not this worker's current session: `reregister` (checked with the lease it renews).
      RMGEN_ASSIGN(r, core_->Heartbeat(c, req->id(), Running(req->running()), &req->session()));
      resp->set_lease_ms(core_->options().lease_ms);
      for (const auto& id : r.cancel) resp->add_cancel(id);
      resp->set_reregister(r.reregister);
      return grpc::Status::OK;
    } catch (const std::exception& e) {
      return Unexpected(e);
    }
  }
  // Long poll: waits for a job up to wait_ms (at most a minute).
  grpc::Status AcquireJob(grpc::ServerContext* ctx, const pb::AcquireJobRequest* req,
                          pb::AcquireJobResponse* resp) override {
    try {
      RMGEN_CALLER(c);
      RMGEN_CHECK(core_->CheckSession(req->id(), req->session()));
      const auto deadline =
          std::chrono::steady_clock::now() +
          std::chrono::milliseconds(std::clamp<int64_t>(req->wait_ms(), 0, 60000));
      uint64_t seen = core_->Changes();
      for (;;) {
        RMGEN_ASSIGN(a, core_->AcquireJob(c, req->id(), &req->session()));
        if (a) {
          resp->set_assigned(true);
          ToProto(a->job, resp->mutable_job());
          resp->set_attempt(a->job.attempt);
          resp->set_output_dir(a->output_dir);
          for (const auto& h : a->hosts) {
            auto* x = resp->add_hosts();
            x->set_worker(h.worker);
            x->set_host(h.host);
            x->set_slots(h.slots);
          }
          return grpc::Status::OK;
        }
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                              deadline - std::chrono::steady_clock::now())
                              .count();
        if (left <= 0 || ctx->IsCancelled()) break;
        seen = core_->WaitForChange(seen, std::min<int64_t>(left, 500));
      }
      resp->set_assigned(false);
      return grpc::Status::OK;
    } catch (const std::exception& e) {
      return Unexpected(e);
    }
  }
  grpc::Status ReportEvents(grpc::ServerContext* ctx,
                            grpc::ServerReader<pb::ReportEventsRequest>* reader,
                            pb::ReportEventsResponse* resp) override {
    try {
      RMGEN_CALLER(c);
      pb::ReportEventsRequest req;
      int64_t accepted = 0;
      bool cancel = false;
      std::string worker, session;  // from the first message that names them
      while (reader->Read(&req)) {
        if (!req.worker_id().empty()) worker = req.worker_id();
        if (!req.session().empty()) session = req.session();
        RMGEN_CHECK(core_->CheckSession(worker, session));
        std::vector<json> events;
        for (const auto& e : req.events()) {
          // What is stored comes back in GetLogs and watch updates: one event fits one reply.
          if (const size_t n = e.ByteSizeLong(); n > kMaxEventBytes) {
            return ToGrpc(InvalidArgumentError("job " + req.job_id() + ": an event of " +
                                               std::to_string(n) + " bytes is over the limit of " +
                                               std::to_string(kMaxEventBytes)));
          }
          events.push_back(FromStruct(e));
        }
        RMGEN_ASSIGN(stop, core_->ReportEvents(c, worker, req.job_id(), req.attempt(), events,
                                               req.running()));
        cancel = cancel || stop;
        if (!stop) accepted += static_cast<int64_t>(events.size());
      }
      resp->set_accepted(accepted);
      resp->set_cancel(cancel);
      return grpc::Status::OK;
    } catch (const std::exception& e) {
      return Unexpected(e);
    }
  }
  grpc::Status CompleteJob(grpc::ServerContext* ctx, const pb::CompleteJobRequest* req,
                           pb::CompleteJobResponse* resp) override {
    try {
      RMGEN_CALLER(c);
      RMGEN_CHECK(core_->CheckSession(req->worker_id(), req->session()));
      // The metrics and the tail come back in replies (GetResults, GetLogs): bounded here.
      if (const size_t n = req->metrics().ByteSizeLong(); n > kMaxEventBytes) {
        return ToGrpc(InvalidArgumentError("job " + req->job_id() + ": metrics of " +
                                           std::to_string(n) + " bytes are over the limit of " +
                                           std::to_string(kMaxEventBytes)));
      }
      size_t tail_bytes = 0;
      for (const auto& l : req->log_tail()) tail_bytes += l.size();
      if (req->log_tail_size() > static_cast<int>(kLogTailLines) || tail_bytes > kLogTailBytes ||
          req->reason().size() > kLogLineBytes * 4) {
        return ToGrpc(InvalidArgumentError(
            "job " + req->job_id() + ": the log tail (" + std::to_string(req->log_tail_size()) +
            " lines, " + std::to_string(tail_bytes) + " bytes) or the reason is over the limits (" +
            std::to_string(kLogTailLines) + " lines, " + std::to_string(kLogTailBytes) +
            " bytes; reason " + std::to_string(kLogLineBytes * 4) + " bytes)"));
      }
      std::vector<std::string> tail(req->log_tail().begin(), req->log_tail().end());
      RMGEN_ASSIGN(
          st, core_->CompleteJob(c, req->worker_id(), req->job_id(), req->attempt(), req->success(),
                                 req->success() ? FromStruct(req->metrics()) : json(),
                                 req->reason(), req->retryable(), tail, req->preempted(),
                                 req->cause(), req->has_failed_rank() ? req->failed_rank() : -1));
      resp->set_state(static_cast<pb::JobState>(static_cast<int>(st) + 1));
      return grpc::Status::OK;
    } catch (const std::exception& e) {
      return Unexpected(e);
    }
  }
};

}  // namespace

struct Server::Impl {
  std::unique_ptr<ClientService> client;
  std::unique_ptr<WorkerServiceImpl> worker;
  std::unique_ptr<grpc::Server> server;
  std::thread ticker;
  std::mutex m;
  std::condition_variable cv;
  bool stop = false;
};

namespace {

const char* CodeName(grpc::StatusCode c) {
  const char* name = CanonicalCodeName(static_cast<int>(c));
  return name ? name : "UNKNOWN";
}

// Times every call into rmgen_rpc_duration_seconds{method, code}. Methods outside rmgen.v1
// are counted as "other", so a caller cannot grow the label set.
class RpcTimer : public grpc::experimental::Interceptor {
 public:
  RpcTimer(grpc::experimental::ServerRpcInfo* info, Metrics* m)
      : metrics_(m), t0_(std::chrono::steady_clock::now()) {
    const std::string full = info->method() ? info->method() : "";
    method_ = full.rfind("/rmgen.v1.", 0) == 0 ? full.substr(full.rfind('/') + 1) : "other";
  }
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_STATUS)) {
      const double s =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
      metrics_->Observe(
          "rmgen_rpc_duration_seconds",
          {{"method", method_}, {"code", CodeName(methods->GetSendStatus().error_code())}}, s);
    }
    methods->Proceed();
  }

 private:
  Metrics* metrics_;
  std::chrono::steady_clock::time_point t0_;
  std::string method_;
};

class RpcTimerFactory : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit RpcTimerFactory(Metrics* m) : metrics_(m) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    return new RpcTimer(info, metrics_);
  }

 private:
  Metrics* metrics_;
};

}  // namespace

StatusOr<std::unique_ptr<Server>> Server::Start(Core* core, const Auth* auth,
                                                const ServerOptions& o) {
  std::unique_ptr<Server> s(new Server());
  s->impl_ = std::make_unique<Impl>();
  s->impl_->client = std::make_unique<ClientService>(core, auth);
  s->impl_->worker = std::make_unique<WorkerServiceImpl>(core, auth);
  std::shared_ptr<grpc::ServerCredentials> creds = grpc::InsecureServerCredentials();
  if (!o.tls_cert.empty() || !o.tls_key.empty()) {
    grpc::SslServerCredentialsOptions ssl;
    ASSIGN_OR_RETURN(std::string cert, ReadFile(o.tls_cert));
    ASSIGN_OR_RETURN(std::string key, ReadFile(o.tls_key));
    ssl.pem_key_cert_pairs.push_back({key, cert});
    if (!o.tls_client_ca.empty()) {
      ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadFile(o.tls_client_ca));
      ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
    }
    creds = grpc::SslServerCredentials(ssl);
  }
  grpc::ServerBuilder b;
  b.AddListeningPort(o.listen, creds, &s->port_);
  b.RegisterService(s->impl_->client.get());
  b.RegisterService(s->impl_->worker.get());
  b.SetMaxReceiveMessageSize(4 << 20);
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> timers;
  timers.push_back(std::make_unique<RpcTimerFactory>(&core->metrics()));
  b.experimental().SetInterceptorCreators(std::move(timers));
  s->impl_->server = b.BuildAndStart();
  if (!s->impl_->server || s->port_ == 0) {
    return Status(StatusCode::kUnavailable, "cannot listen on " + o.listen);
  }
  Impl* impl = s->impl_.get();
  s->impl_->ticker = std::thread([impl, core, o] {
    std::unique_lock<std::mutex> l(impl->m);
    while (
        !impl->cv.wait_for(l, std::chrono::milliseconds(o.tick_ms), [&] { return impl->stop; })) {
      l.unlock();
      // A record that passed its checks but still surprises the housekeeping (a throw from
      // its JSON) is logged; the coordinator keeps serving.
      Status st;
      try {
        st = core->Tick();
      } catch (const std::exception& e) {
        st = Status(StatusCode::kInternal, std::string("unexpected error: ") + e.what());
      }
      if (!st.ok())
        std::fprintf(stderr, "rmgen-coordinator: housekeeping: %s\n", st.ToString().c_str());
      l.lock();
    }
  });
  return s;
}

void Server::Shutdown() {
  if (!impl_) return;
  {
    std::lock_guard<std::mutex> l(impl_->m);
    if (impl_->stop) return;
    impl_->stop = true;
  }
  impl_->cv.notify_all();
  impl_->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  if (impl_->ticker.joinable()) impl_->ticker.join();
}

void Server::Wait() { impl_->server->Wait(); }

Server::~Server() { Shutdown(); }

}  // namespace rmgen::coord
