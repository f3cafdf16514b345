#include "coordinator/http.h"

#include <httplib.h>  // Debian libcpp-httplib-dev: built with OpenSSL (pkg-config flags)

#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <regex>
#include <thread>

#include "common/limits.h"

namespace rmgen::coord {
namespace {

using nlohmann::json;

Status Denied(const std::string& m) { return Status(StatusCode::kPermissionDenied, m); }

int HttpCode(StatusCode c) {
  switch (c) {
    case StatusCode::kInvalidArgument: return 400;
    case StatusCode::kUnauthenticated: return 401;
    case StatusCode::kPermissionDenied: return 403;
    case StatusCode::kNotFound: return 404;
    case StatusCode::kAlreadyExists:
    case StatusCode::kFailedPrecondition: return 409;
    case StatusCode::kResourceExhausted: return 429;
    case StatusCode::kUnavailable: return 503;
    default: return 500;
  }
}

void SendJson(httplib::Response& res, int code, const json& body) {
  res.status = code;
  res.set_header("Cache-Control", "no-store");
  res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

void SendError(httplib::Response& res, const Status& s) {
  const int code = HttpCode(s.code());
  if (code == 401) res.set_header("WWW-Authenticate", "Bearer realm=\"rmgen\"");
  SendJson(res, code, {{"error", s.message()}});
}

// A job as the store writes it (model.h), less what a page has no use for (the spec, the
// lease's internals).
json JobJson(const JobRecord& j) {
  json out = ToJson(j);
  for (const char* k : {"spec", "placement", "lease_deadline_ms", "version", "seq"}) out.erase(k);
  return out;
}

json StudyJson(const StudyView& v) {
  return {{"id", v.study.id},
          {"name", v.study.name},
          {"setting", v.study.setting},
          {"user", v.study.user},
          {"created_ms", v.study.created_ms},
          {"cancelled", v.study.cancelled},
          {"job_states", v.job_states},
          {"jobs_total", v.jobs_total}};
}

json WorkerJson(const WorkerView& w) {
  return {{"id", w.worker.id},
          {"host", w.worker.host},
          {"slots", w.worker.slots},
          {"free_slots", w.free_slots},
          {"labels", w.worker.labels},
          {"draining", w.worker.draining},
          {"alive", w.alive},
          {"last_heartbeat_ms", w.worker.last_heartbeat_ms},
          {"jobs", w.jobs}};
}

// "host:port", "[v6]:port" -> (host, port); port -1 when malformed.
std::pair<std::string, int> SplitAddress(const std::string& a) {
  const size_t colon = a.rfind(':');
  if (colon == std::string::npos || colon + 1 >= a.size()) return {a, -1};
  std::string host = a.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  int port = -1;
  try {
    size_t used = 0;
    port = std::stoi(a.substr(colon + 1), &used);
    if (used != a.size() - colon - 1 || port < 0 || port > 65535) port = -1;
  } catch (...) {
    port = -1;
  }
  return {host.empty() ? "0.0.0.0" : host, port};
}

int64_t IntParam(const httplib::Request& req, const char* key, int64_t def, int64_t lo,
                 int64_t hi) {
  if (!req.has_param(key)) return def;
  try {
    size_t used = 0;
    const std::string v = req.get_param_value(key);
    const long long x = std::stoll(v, &used);
    if (used != v.size()) return def;
    return std::clamp<int64_t>(x, lo, hi);
  } catch (...) {
    return def;
  }
}

}  // namespace

struct HttpServer::Impl {
  std::unique_ptr<httplib::Server> server;
  std::thread thread;
};

StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(Core* core, const Auth* auth,
                                                        const HttpOptions& o) {
  auto [host, port] = SplitAddress(o.listen);
  if (port < 0) {
    return InvalidArgumentError("--http '" + o.listen + "': expected HOST:PORT");
  }
  std::unique_ptr<HttpServer> s(new HttpServer());
  s->impl_ = std::make_unique<Impl>();
  if (!o.tls_cert.empty() || !o.tls_key.empty()) {
    auto ssl = std::make_unique<httplib::SSLServer>(
        o.tls_cert.c_str(), o.tls_key.c_str(),
        o.tls_client_ca.empty() ? nullptr : o.tls_client_ca.c_str());
    if (!ssl->is_valid()) {
      return InvalidArgumentError(
          "--http: cannot use the TLS certificate " + o.tls_cert + " and key " + o.tls_key +
          (o.tls_client_ca.empty() ? "" : " (client CA " + o.tls_client_ca + ")"));
    }
    s->impl_->server = std::move(ssl);
  } else {
    s->impl_->server = std::make_unique<httplib::Server>();
  }
  httplib::Server& srv = *s->impl_->server;
  srv.set_payload_max_length(64 << 10);  // nothing here takes a large body
  srv.set_read_timeout(10, 0);
  srv.set_write_timeout(10, 0);
  // A kept-alive connection holds a pool thread while idle: short, so dashboards polling
  // every few seconds do not pin the pool; and a pool larger than httplib's default.
  srv.set_keep_alive_max_count(20);
  srv.set_keep_alive_timeout(1);
  srv.new_task_queue = [] { return new httplib::ThreadPool(32); };
  srv.set_exception_handler(
      [](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
        std::string what = "unknown";
        try {
          if (ep) std::rethrow_exception(ep);
        } catch (const std::exception& e) {
          what = e.what();
        } catch (...) {
        }
        std::fprintf(stderr, "rmgen-coordinator: http: unexpected exception: %s\n", what.c_str());
        SendJson(res, 500, {{"error", "internal error"}});
      });
  srv.set_default_headers({{"X-Content-Type-Options", "nosniff"},
                           {"X-Frame-Options", "DENY"},
                           {"Referrer-Policy", "no-referrer"}});

  auto caller = [auth](const httplib::Request& req) {
    return auth->Authenticate(req.get_header_value("Authorization"));
  };
  // A handler with the caller; any error is an HTTP status with {"error": message}.
  using Handler = std::function<StatusOr<json>(const Caller&, const httplib::Request&)>;
  auto api = [caller](Handler h) {
    return [caller, h](const httplib::Request& req, httplib::Response& res) {
      // A browser's cross-site POST carries an Origin other than this server: refused, so a
      // page elsewhere cannot act with credentials it does not hold anyway (tokens are never
      // sent automatically) nor on an --insecure coordinator.
      if (req.method == "POST" && req.has_header("Origin")) {
        const std::string origin = req.get_header_value("Origin");
        const std::string host = req.get_header_value("Host");
        const size_t scheme = origin.find("://");
        if (host.empty() || scheme == std::string::npos || origin.substr(scheme + 3) != host) {
          return SendError(res, Denied("cross-origin request refused (Origin " + origin + ")"));
        }
      }
      auto c = caller(req);
      if (!c.ok()) return SendError(res, c.status());
      StatusOr<json> out = Status(StatusCode::kInternal, "no reply");
      try {
        out = h(*c, req);
      } catch (const std::exception& e) {
        out = Status(StatusCode::kInternal, std::string("internal error: ") + e.what());
      }
      if (!out.ok()) return SendError(res, out.status());
      SendJson(res, 200, *out);
    };
  };

  srv.Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("ok\n", "text/plain");
  });
  srv.Get("/metrics", [caller, core](const httplib::Request& req, httplib::Response& res) {
    auto c = caller(req);
    if (!c.ok()) return SendError(res, c.status());
    if (c->role != Role::kOperator) {
      return SendError(res, Denied("/metrics needs the operator role"));
    }
    res.set_header("Cache-Control", "no-store");
    res.set_content(core->MetricsText(), "text/plain; version=0.0.4; charset=utf-8");
  });
  auto page = [](const httplib::Request&, httplib::Response& res) {
    res.set_header("Content-Security-Policy",
                   "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                   "connect-src 'self'; img-src 'self' data:; base-uri 'none'; "
                   "form-action 'none'; frame-ancestors 'none'");
    res.set_header("Cache-Control", "no-cache");
    res.set_content(kDashboardHtml, "text/html; charset=utf-8");
  };
  srv.Get("/", page);
  srv.Get("/index.html", page);

  srv.Get("/api/whoami", api([](const Caller& c, const httplib::Request&) -> StatusOr<json> {
            return json{{"user", c.user}, {"role", RoleName(c.role)}};
          }));
  srv.Get("/api/studies",
          api([core](const Caller& c, const httplib::Request& req) -> StatusOr<json> {
            const bool all = c.role == Role::kOperator && req.get_param_value("all") == "1";
            json out = json::array();
            std::string token, next;
            // The newest 200: a page for a person, not an export.
            for (int pages = 0; pages < 100; ++pages) {
              ASSIGN_OR_RETURN(auto vs, core->ListStudies(c, all, token, 1000, &next));
              for (const auto& v : vs) out.push_back(StudyJson(v));
              if (next.empty()) break;
              token = next;
            }
            if (out.size() > 200) out.erase(out.begin(), out.end() - 200);
            return json{{"studies", out}};
          }));
  const std::string id = "([A-Za-z0-9_.:#-]{1,128})";
  srv.Get("/api/studies/" + id,
          api([core](const Caller& c, const httplib::Request& req) -> StatusOr<json> {
            const std::string sid = req.matches[1];
            ASSIGN_OR_RETURN(StudyView v, core->GetStudy(c, sid));
            json jobs = json::array();
            JobFilter f;
            f.study_id = sid;
            f.page_size = 1000;
            for (int pages = 0; pages < 20; ++pages) {  // a study has at most 20k jobs here
              ASSIGN_OR_RETURN(JobPage p, core->ListJobs(c, f, c.role == Role::kOperator));
              for (const auto& j : p.jobs) jobs.push_back(JobJson(j));
              if (p.next_page_token.empty()) break;
              f.page_token = p.next_page_token;
            }
            json s = StudyJson(v);
            s["source"] = v.study.source;
            return json{{"study", s}, {"jobs", jobs}};
          }));
  srv.Get("/api/studies/" + id + "/results",
          api([core](const Caller& c, const httplib::Request& req) -> StatusOr<json> {
            ASSIGN_OR_RETURN(ResultsReport r, core->GetResults(c, {req.matches[1]}, ""));
            return r.ToJson();
          }));
  srv.Get("/api/jobs/" + id,
          api([core](const Caller& c, const httplib::Request& req) -> StatusOr<json> {
            ASSIGN_OR_RETURN(JobRecord j, core->GetJob(c, req.matches[1]));
            json out = JobJson(j);
            ASSIGN_OR_RETURN(auto r, core->GetResult(c, j.id));
            if (r) out["metrics"] = r->metrics;
            return out;
          }));
  srv.Get("/api/jobs/" + id + "/events",
          api([core](const Caller& c, const httplib::Request& req) -> StatusOr<json> {
            const int64_t after = IntParam(req, "after", 0, 0, INT64_MAX);
            const int64_t limit = IntParam(req, "limit", 500, 1, 1000);
            ASSIGN_OR_RETURN(auto events, core->GetEvents(c, req.matches[1], after, limit));
            json out = json::array();
            size_t bytes = 0;
            for (const auto& e : events) {
              json x = {{"seq", e.seq}, {"attempt", e.attempt}, {"body", e.body}};
              bytes += x.dump().size();
              if (bytes > (2u << 20)) break;  // a page stays small; the client asks again
              out.push_back(std::move(x));
            }
            return json{{"events", out}};
          }));
  srv.Post("/api/jobs/" + id + "/cancel",
           api([core](const Caller& c, const httplib::Request& req) -> StatusOr<json> {
             if (c.role != Role::kOperator) {
               return Denied("cancelling from the dashboard needs the operator role");
             }
             ASSIGN_OR_RETURN(JobRecord j, core->CancelJob(c, req.matches[1]));
             return JobJson(j);
           }));
  srv.Post("/api/studies/" + id + "/cancel",
           api([core](const Caller& c, const httplib::Request& req) -> StatusOr<json> {
             if (c.role != Role::kOperator) {
               return Denied("cancelling from the dashboard needs the operator role");
             }
             ASSIGN_OR_RETURN(StudyView v, core->CancelStudy(c, req.matches[1]));
             return StudyJson(v);
           }));
  srv.Get("/api/workers", api([core](const Caller& c, const httplib::Request&) -> StatusOr<json> {
            ASSIGN_OR_RETURN(auto ws, core->ListWorkers(c));
            json out = json::array();
            for (const auto& w : ws) out.push_back(WorkerJson(w));
            return json{{"workers", out}};
          }));
  srv.Post("/api/workers/" + id + "/drain",
           api([core](const Caller& c, const httplib::Request& req) -> StatusOr<json> {
             ASSIGN_OR_RETURN(
                 WorkerView w,
                 core->DrainWorker(c, req.matches[1], req.get_param_value("undrain") == "1"));
             return WorkerJson(w);
           }));
  srv.set_error_handler([](const httplib::Request&, httplib::Response& res) {
    if (res.body.empty()) {
      res.set_content("{\"error\":\"" + std::to_string(res.status) + "\"}", "application/json");
    }
  });

  if (port == 0) {
    port = srv.bind_to_any_port(host);
  } else if (!srv.bind_to_port(host, port)) {
    port = -1;
  }
  if (port <= 0) return Status(StatusCode::kUnavailable, "--http: cannot listen on " + o.listen);
  s->port_ = port;
  httplib::Server* raw = s->impl_->server.get();
  auto ended = std::make_shared<std::atomic<bool>>(false);
  s->impl_->thread = std::thread([raw, ended] {
    raw->listen_after_bind();
    *ended = true;
  });
  // stop() only works once the loop runs: wait for it, so an early Stop() cannot hang.
  while (!raw->is_running() && !*ended) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  return s;
}

void HttpServer::Stop() {
  if (!impl_ || !impl_->server) return;
  impl_->server->stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

HttpServer::~HttpServer() { Stop(); }

}  // namespace rmgen::coord
