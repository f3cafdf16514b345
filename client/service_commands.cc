// The service commands of `rmgen`: submit, status, watch, results, cancel, logs, workers,
// drain. They talk to rmgen-coordinator over gRPC.
//
// Where the coordinator is and who you are, first found wins:
//   --coordinator HOST:PORT, --token-file FILE, --tls-ca PEM (flags, anywhere after the
//                                                             command; the token is the
//                                                             file's first line)
//   [--tls-cert PEM --tls-key PEM]                           (a client certificate, when the
//                                                             coordinator requires one)
//   RMGEN_COORDINATOR, RMGEN_TOKEN (or RMGEN_TOKEN_FILE), RMGEN_TLS_CA, RMGEN_TLS_CERT,
//   RMGEN_TLS_KEY (environment)
//   ~/.config/rmgen/config.yaml: {coordinator, token, tls_ca, tls_cert, tls_key}
//   default: 127.0.0.1:7070, no token, plaintext
// `--token TOKEN` is refused: a token on the command line shows in `ps` to everyone on the
// machine.
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "client/commands.h"
#include "common/file.h"
#include "rmgen/v1/rmgen.grpc.pb.h"

namespace rmgen::cli {
namespace {

namespace pb = ::rmgen::v1;
using nlohmann::json;

struct Conn {
  std::string address = "127.0.0.1:7070";
  std::string token, tls_ca, tls_cert, tls_key;
  std::vector<std::string> rest;  // the arguments that are not connection flags
  std::string error;              // a connection flag that cannot be used ("" = none)
};

// The token in `path`: its first line, without surrounding blanks.
StatusOr<std::string> ReadTokenFile(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  std::string line = text.substr(0, text.find('\n'));
  const size_t from = line.find_first_not_of(" \t\r");
  const size_t to = line.find_last_not_of(" \t\r");
  if (from == std::string::npos) {
    return InvalidArgumentError(path + ": the first line holds no token");
  }
  return line.substr(from, to - from + 1);
}

Conn ParseConn(const std::vector<std::string>& args) {
  Conn c;
  std::map<std::string, std::string> file;
  const char* home = std::getenv("HOME");
  if (home) {
    auto text = ReadFile(std::string(home) + "/.config/rmgen/config.yaml");
    if (text.ok()) {
      try {
        YAML::Node doc = YAML::Load(*text);
        for (const char* k : {"coordinator", "token", "tls_ca", "tls_cert", "tls_key"}) {
          if (doc[k]) file[k] = doc[k].Scalar();
        }
      } catch (const YAML::Exception& e) {
        std::fprintf(stderr, "rmgen: ~/.config/rmgen/config.yaml:%d: %s (ignored)\n",
                     e.mark.line + 1, e.msg.c_str());
      }
    }
  }
  auto pick = [&](const char* env, const char* key, std::string* out) {
    if (const char* v = std::getenv(env)) {
      *out = v;
    } else if (file.count(key)) {
      *out = file[key];
    }
  };
  pick("RMGEN_COORDINATOR", "coordinator", &c.address);
  pick("RMGEN_TOKEN", "token", &c.token);
  // RMGEN_TOKEN_FILE: a file holding the token (a mounted secret, a credential), when
  // RMGEN_TOKEN is not set; --token-file on the command line still wins.
  if (const char* f = std::getenv("RMGEN_TOKEN_FILE");
      f != nullptr && !std::getenv("RMGEN_TOKEN")) {
    auto t = ReadTokenFile(f);
    if (t.ok()) {
      c.token = *t;
    } else {
      c.error = "RMGEN_TOKEN_FILE: " + t.status().message();
    }
  }
  pick("RMGEN_TLS_CA", "tls_ca", &c.tls_ca);
  pick("RMGEN_TLS_CERT", "tls_cert", &c.tls_cert);
  pick("RMGEN_TLS_KEY", "tls_key", &c.tls_key);
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--coordinator" && i + 1 < args.size()) {
      c.address = args[++i];
    } else if (args[i] == "--token" || args[i].rfind("--token=", 0) == 0) {
      c.error =
          "--token is not accepted: a token on the command line is visible to everyone on "
          "this machine (ps). Use --token-file FILE (the token on its first line), "
          "RMGEN_TOKEN, or `token:` in ~/.config/rmgen/config.yaml";
      if (args[i] == "--token" && i + 1 < args.size()) ++i;
    } else if (args[i] == "--token-file" && i + 1 < args.size()) {
      auto t = ReadTokenFile(args[++i]);
      if (t.ok()) {
        c.token = *t;
      } else {
        c.error = "--token-file: " + t.status().message();
      }
    } else if (args[i] == "--tls-ca" && i + 1 < args.size()) {
      c.tls_ca = args[++i];
    } else if (args[i] == "--tls-cert" && i + 1 < args.size()) {
      c.tls_cert = args[++i];
    } else if (args[i] == "--tls-key" && i + 1 < args.size()) {
      c.tls_key = args[++i];
    } else {
      c.rest.push_back(args[i]);
    }
  }
  return c;
}

class Client {
 public:
  explicit Client(const Conn& c) : conn_(c) {
    std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
    if (!c.tls_ca.empty()) {
      grpc::SslCredentialsOptions o;
      auto pem = ReadFile(c.tls_ca);
      if (pem.ok()) o.pem_root_certs = *pem;
      auto cert = ReadFile(c.tls_cert), key = ReadFile(c.tls_key);
      if (!c.tls_cert.empty() && cert.ok() && key.ok()) {
        o.pem_cert_chain = *cert;
        o.pem_private_key = *key;
      }
      creds = grpc::SslCredentials(o);
    }
    stub_ = pb::Coordinator::NewStub(grpc::CreateChannel(c.address, creds));
  }
  std::unique_ptr<grpc::ClientContext> Ctx(int seconds = 30) const {
    auto ctx = std::make_unique<grpc::ClientContext>();
    if (!conn_.token.empty()) ctx->AddMetadata("authorization", "Bearer " + conn_.token);
    if (seconds > 0) {
      ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
    }
    return ctx;
  }
  // Prints a server error as a person would want to read it; returns the exit code.
  int Fail(const grpc::Status& s) const {
    const char* what = "error";
    switch (s.error_code()) {
      case grpc::StatusCode::UNAVAILABLE:
        std::fprintf(stderr,
                     "rmgen: cannot reach the coordinator at %s (%s).\n"
                     "HINT: start rmgen-coordinator, or point --coordinator / RMGEN_COORDINATOR "
                     "at it\n",
                     conn_.address.c_str(), s.error_message().c_str());
        return 1;
      case grpc::StatusCode::UNAUTHENTICATED:
        std::fprintf(stderr, "rmgen: not signed in: %s\n", s.error_message().c_str());
        return 1;
      case grpc::StatusCode::PERMISSION_DENIED: what = "not allowed"; break;
      case grpc::StatusCode::INVALID_ARGUMENT: what = "invalid"; break;
      case grpc::StatusCode::NOT_FOUND: what = "not found"; break;
      case grpc::StatusCode::FAILED_PRECONDITION: what = "cannot do that now"; break;
      default: break;
    }
    std::fprintf(stderr, "rmgen: %s: %s\n", what, s.error_message().c_str());
    return 1;
  }
  pb::Coordinator::Stub* stub() { return stub_.get(); }

 private:
  Conn conn_;
  std::unique_ptr<pb::Coordinator::Stub> stub_;
};

json ToJson(const google::protobuf::Message& m) {
  std::string text;
  google::protobuf::util::JsonPrintOptions o;
  o.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(m, &text, o);
  return json::parse(text, nullptr, false);
}

std::string StateName(pb::JobState s) { return pb::JobState_Name(s); }

bool IsStudyId(const std::string& id) {
  return !id.empty() && id[0] == 's' && id.find("-j") == std::string::npos;
}

void PrintStudy(const pb::Study& s) {
  std::string states;
  for (const auto& [k, n] : s.job_states()) states += " " + k + "=" + std::to_string(n);
  std::printf("%-6s %-20s %-8s %-10s %3lld jobs:%s%s\n", s.id().c_str(), s.name().c_str(),
              s.setting().c_str(), s.user().c_str(), (long long)s.jobs_total(), states.c_str(),
              s.cancelled() ? " (cancelled)" : "");
}

void PrintJobLine(const pb::Job& j) {
  std::printf("%-10s %-10s %-46s %-7s attempt %lld%s%s\n", j.id().c_str(),
              StateName(j.state()).c_str(), j.name().c_str(), j.kind().c_str(),
              (long long)j.attempt(), j.reason().empty() ? "" : "  ", j.reason().c_str());
}

// "[#####.....] 50/100 loss 0.4123 eta 12s"
std::string Progress(const json& e) {
  const int64_t step = e.value("step", int64_t{0}), total = e.value("total_steps", int64_t{0});
  char buf[160];
  std::string bar;
  if (total > 0) {
    const int filled = static_cast<int>(20.0 * double(step) / double(total));
    bar = "[" + std::string(filled, '#') + std::string(20 - filled, '.') + "] ";
  }
  std::snprintf(buf, sizeof(buf), "%s%lld/%lld loss %.4f eta %.0fs", bar.c_str(), (long long)step,
                (long long)total, e.value("loss", 0.0), e.value("eta_s", 0.0));
  return buf;
}

int Watch(Client& cl, const std::vector<std::string>& a);

// Submits a study file; the request id defaults to its content, so resubmitting the same file
// (a retry after a timeout, or `rmgen local` run again) returns the same study.
int SubmitFile(Client& cl, const std::string& path, const std::string& request_id,
               pb::SubmitStudyResponse* resp) {
  auto text = ReadFile(path);
  if (!text.ok()) {
    std::fprintf(stderr, "rmgen: %s\n", text.status().message().c_str());
    return 1;
  }
  pb::SubmitStudyRequest req;
  req.set_study_yaml(*text);
  req.set_source_name(path);
  req.set_request_id(request_id.empty() ? "file:" + HexHash(*text) : request_id);
  auto ctx = cl.Ctx();
  grpc::Status s = cl.stub()->SubmitStudy(ctx.get(), req, resp);
  if (!s.ok()) return cl.Fail(s);
  // The reply holds the first page of jobs: the rest by ListJobs.
  pb::ListJobsRequest lr;
  lr.set_study_id(resp->study().id());
  lr.set_page_size(1000);
  lr.set_page_token(resp->next_page_token());
  while (!lr.page_token().empty()) {
    pb::ListJobsResponse page;
    auto ctx2 = cl.Ctx();
    s = cl.stub()->ListJobs(ctx2.get(), lr, &page);
    if (!s.ok()) return cl.Fail(s);
    for (auto& j : *page.mutable_jobs()) *resp->add_jobs() = std::move(j);
    lr.set_page_token(page.next_page_token());
  }
  resp->clear_next_page_token();
  std::printf("study %s %s: %lld jobs\n", resp->study().id().c_str(),
              resp->created() ? "submitted" : "already submitted (same request id)",
              (long long)resp->study().jobs_total());
  for (const auto& j : resp->jobs()) PrintJobLine(j);
  return 0;
}

int Submit(Client& cl, const std::vector<std::string>& a) {
  std::string path, request_id;
  bool watch = false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i] == "--request-id" && i + 1 < a.size()) {
      request_id = a[++i];
    } else if (a[i] == "--watch") {
      watch = true;
    } else if (path.empty() && a[i].rfind("--", 0) != 0) {
      path = a[i];
    } else {
      std::fprintf(stderr, "usage: rmgen submit STUDY.yaml [--request-id ID] [--watch]\n");
      return 2;
    }
  }
  if (path.empty()) {
    std::fprintf(stderr, "usage: rmgen submit STUDY.yaml [--request-id ID] [--watch]\n");
    return 2;
  }
  pb::SubmitStudyResponse resp;
  if (int rc = SubmitFile(cl, path, request_id, &resp); rc != 0) return rc;
  if (!watch) return 0;
  return Watch(cl, {resp.study().id()});
}

int Status(Client& cl, const std::vector<std::string>& a) {
  bool all = false;
  std::string id;
  for (const auto& x : a) {
    if (x == "--all") {
      all = true;
    } else {
      id = x;
    }
  }
  if (id.empty()) {
    pb::ListStudiesRequest req;
    req.set_all_users(all);
    req.set_page_size(1000);
    bool any = false;
    do {  // every page
      pb::ListStudiesResponse resp;
      auto ctx = cl.Ctx();
      grpc::Status s = cl.stub()->ListStudies(ctx.get(), req, &resp);
      if (!s.ok()) return cl.Fail(s);
      for (const auto& st : resp.studies()) PrintStudy(st);
      any = any || !resp.studies().empty();
      req.set_page_token(resp.next_page_token());
    } while (!req.page_token().empty());
    if (!any) std::printf("no studies\n");
    return 0;
  }
  if (IsStudyId(id)) {
    pb::GetStudyRequest req;
    req.set_id(id);
    pb::Study st;
    auto ctx = cl.Ctx();
    grpc::Status s = cl.stub()->GetStudy(ctx.get(), req, &st);
    if (!s.ok()) return cl.Fail(s);
    PrintStudy(st);
    pb::ListJobsRequest lr;
    lr.set_study_id(id);
    lr.set_page_size(1000);
    lr.set_all_users(true);
    do {  // every page
      pb::ListJobsResponse jobs;
      auto ctx2 = cl.Ctx();
      s = cl.stub()->ListJobs(ctx2.get(), lr, &jobs);
      if (s.error_code() == grpc::StatusCode::PERMISSION_DENIED && lr.all_users()) {
        lr.set_all_users(false);
        auto ctx3 = cl.Ctx();
        s = cl.stub()->ListJobs(ctx3.get(), lr, &jobs);
      }
      if (!s.ok()) return cl.Fail(s);
      for (const auto& j : jobs.jobs()) PrintJobLine(j);
      lr.set_page_token(jobs.next_page_token());
    } while (!lr.page_token().empty());
    return 0;
  }
  pb::GetJobRequest req;
  req.set_id(id);
  pb::Job j;
  auto ctx = cl.Ctx();
  grpc::Status s = cl.stub()->GetJob(ctx.get(), req, &j);
  if (!s.ok()) return cl.Fail(s);
  json out = ToJson(j);
  std::printf("%s\n", out.dump(2).c_str());
  return 0;
}

int Watch(Client& cl, const std::vector<std::string>& a) {
  if (a.size() != 1) {
    std::fprintf(stderr, "usage: rmgen watch JOB|STUDY\n");
    return 2;
  }
  const bool tty = ::isatty(1);
  auto ctx = cl.Ctx(0);
  std::unique_ptr<grpc::ClientReader<pb::WatchUpdate>> r;
  if (IsStudyId(a[0])) {
    pb::WatchStudyRequest req;
    req.set_id(a[0]);
    r = cl.stub()->WatchStudy(ctx.get(), req);
  } else {
    pb::WatchJobRequest req;
    req.set_id(a[0]);
    r = cl.stub()->WatchJob(ctx.get(), req);
  }
  pb::WatchUpdate u;
  std::map<std::string, std::string> last_state;
  bool failed = false;
  while (r->Read(&u)) {
    const pb::Job& j = u.job();
    const std::string state = StateName(j.state());
    if (last_state[j.id()] != state) {
      std::printf("%s%-10s %-10s %s%s%s\n", tty ? "\r" : "", j.id().c_str(), state.c_str(),
                  j.name().c_str(), j.reason().empty() ? "" : "  ", j.reason().c_str());
      last_state[j.id()] = state;
      failed = failed || j.state() == pb::FAILED;
    }
    if (!u.events().empty()) {
      const json e = ToJson(u.events(u.events_size() - 1).body());
      if (e.contains("step")) {
        if (tty) {
          std::printf("\r%-10s %s   ", j.id().c_str(), Progress(e).c_str());
          std::fflush(stdout);
        } else {
          std::printf("%-10s %s\n", j.id().c_str(), Progress(e).c_str());
        }
      }
    }
  }
  if (tty) std::printf("\n");
  grpc::Status s = r->Finish();
  if (!s.ok()) return cl.Fail(s);
  return failed ? 1 : 0;
}

int Results(Client& cl, const std::vector<std::string>& a) {
  std::vector<std::string> ids;
  std::string format = "table", tag;
  bool bad = false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i] == "--format" && i + 1 < a.size()) {
      format = a[++i];
    } else if (a[i] == "--tag" && i + 1 < a.size() && !a[i + 1].empty()) {
      tag = a[++i];
    } else if (a[i].empty() || a[i][0] == '-') {
      bad = true;
    } else {
      ids.push_back(a[i]);
    }
  }
  if (bad || (ids.empty() && tag.empty()) ||
      (format != "table" && format != "csv" && format != "md" && format != "json")) {
    std::fprintf(
        stderr, "usage: rmgen results STUDY [STUDY...] [--tag TAG] [--format table|csv|md|json]\n");
    return 2;
  }
  pb::GetResultsRequest req;
  for (const auto& id : ids) req.add_study_ids(id);
  req.set_tag(tag);
  req.set_format(format);  // only the form printed: a larger report fits in one reply
  pb::GetResultsResponse resp;
  auto ctx = cl.Ctx();
  grpc::Status s = cl.stub()->GetResults(ctx.get(), req, &resp);
  if (!s.ok()) return cl.Fail(s);
  if (format == "table") std::fputs(resp.table().c_str(), stdout);
  if (format == "md") std::fputs(resp.markdown().c_str(), stdout);
  if (format == "csv") std::fputs(resp.csv().c_str(), stdout);
  if (format == "json") std::printf("%s\n", ToJson(resp.results()).dump(2).c_str());
  return 0;
}

int Cancel(Client& cl, const std::vector<std::string>& a) {
  if (a.size() != 1) {
    std::fprintf(stderr, "usage: rmgen cancel JOB|STUDY\n");
    return 2;
  }
  auto ctx = cl.Ctx();
  if (IsStudyId(a[0])) {
    pb::CancelStudyRequest req;
    req.set_id(a[0]);
    pb::Study st;
    grpc::Status s = cl.stub()->CancelStudy(ctx.get(), req, &st);
    if (!s.ok()) return cl.Fail(s);
    PrintStudy(st);
    return 0;
  }
  pb::CancelJobRequest req;
  req.set_id(a[0]);
  pb::Job j;
  grpc::Status s = cl.stub()->CancelJob(ctx.get(), req, &j);
  if (!s.ok()) return cl.Fail(s);
  PrintJobLine(j);
  return 0;
}

int Logs(Client& cl, const std::vector<std::string>& a) {
  if (a.size() != 1) {
    std::fprintf(stderr, "usage: rmgen logs JOB\n");
    return 2;
  }
  pb::GetLogsRequest req;
  req.set_job_id(a[0]);
  req.set_page_size(10000);
  pb::GetLogsResponse resp;
  google::protobuf::RepeatedPtrField<std::string> tail;  // the latest page's that has one
  // Every page of events.
  for (;;) {
    resp.Clear();
    auto ctx = cl.Ctx();
    grpc::Status s = cl.stub()->GetLogs(ctx.get(), req, &resp);
    if (!s.ok()) return cl.Fail(s);
    for (const auto& e : resp.events()) {
      std::printf("[%lld/attempt %lld] %s\n", (long long)e.seq(), (long long)e.attempt(),
                  ToJson(e.body()).dump().c_str());
    }
    if (!resp.log_tail().empty()) tail = resp.log_tail();
    if (resp.next_after_seq() <= req.after_seq()) break;  // the last page
    req.set_after_seq(resp.next_after_seq());
  }
  if (!tail.empty()) std::printf("-- last log lines of the failed attempt --\n");
  for (const auto& l : tail) std::printf("%s\n", l.c_str());
  if (!resp.log_lines().empty()) {
    std::printf("-- %s (last %d lines) --\n", resp.log_path().c_str(), resp.log_lines_size());
    for (const auto& l : resp.log_lines()) std::printf("%s\n", l.c_str());
  } else if (!resp.log_path().empty()) {
    std::printf("-- the latest attempt logs to %s (on its worker) --\n", resp.log_path().c_str());
  }
  return 0;
}

int Workers(Client& cl, const std::vector<std::string>&) {
  pb::ListWorkersRequest req;
  req.set_page_size(1000);
  std::vector<pb::Worker> workers;
  do {  // every page
    pb::ListWorkersResponse resp;
    auto ctx = cl.Ctx();
    grpc::Status s = cl.stub()->ListWorkers(ctx.get(), req, &resp);
    if (!s.ok()) return cl.Fail(s);
    workers.insert(workers.end(), resp.workers().begin(), resp.workers().end());
    req.set_page_token(resp.next_page_token());
  } while (!req.page_token().empty());
  if (workers.empty()) std::printf("no workers\n");
  for (const auto& w : workers) {
    std::string jobs;
    for (const auto& j : w.jobs()) jobs += " " + j;
    char memory[48] = "";  // per slot, when the agent reports it
    if (w.memory_bytes_per_slot() > 0) {
      std::snprintf(memory, sizeof(memory), " x %.1f GiB",
                    w.memory_bytes_per_slot() / double(1ll << 30));
    }
    std::printf("%-20s %-20s slots %lld%s free %lld %s%s%s\n", w.id().c_str(), w.host().c_str(),
                (long long)w.slots(), memory, (long long)w.free_slots(),
                w.alive() ? "alive" : "LOST", w.draining() ? " draining" : "", jobs.c_str());
  }
  return 0;
}

int Drain(Client& cl, const std::vector<std::string>& a) {
  if (a.empty() || a.size() > 2 || (a.size() == 2 && a[1] != "--undrain")) {
    std::fprintf(stderr, "usage: rmgen drain WORKER [--undrain]\n");
    return 2;
  }
  pb::DrainWorkerRequest req;
  req.set_id(a[0]);
  req.set_undrain(a.size() == 2);
  pb::Worker w;
  auto ctx = cl.Ctx();
  grpc::Status s = cl.stub()->DrainWorker(ctx.get(), req, &w);
  if (!s.ok()) return cl.Fail(s);
  std::printf("%s %s\n", w.id().c_str(), w.draining() ? "draining" : "accepting jobs");
  return 0;
}

template <int (*F)(Client&, const std::vector<std::string>&)>
int Run(const std::vector<std::string>& args) {
  Conn c = ParseConn(args);
  if (!c.error.empty()) {
    std::fprintf(stderr, "rmgen: %s\n", c.error.c_str());
    return 2;
  }
  for (const auto& a : c.rest) {
    if (a == "--help" || a == "-h") {
      std::printf("see `rmgen --help`\n");
      return 0;
    }
  }
  Client cl(c);
  return F(cl, c.rest);
}

// `rmgen report`: the Python package's report (client/python, rmgen.report: matplotlib
// figures and an HTML page), started with this command's connection. The token goes in the
// environment, never on argv.
int Report(const std::vector<std::string>& args) {
  Conn c = ParseConn(args);
  if (!c.error.empty()) {
    std::fprintf(stderr, "rmgen: %s\n", c.error.c_str());
    return 2;
  }
  // RMGEN_PYTHON, else the build's venv (scripts/setup.sh: build/pyenv, beside
  // build/client/rmgen), else python3 on PATH.
  std::string python = "python3";
  if (const char* py = std::getenv("RMGEN_PYTHON"); py && *py) {
    python = py;
  } else {
    std::error_code ec;
    const auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
    const auto venv = exe.parent_path().parent_path() / "pyenv" / "bin" / "python";
    if (!ec && access(venv.c_str(), X_OK) == 0) python = venv.string();
  }
  setenv("RMGEN_COORDINATOR", c.address.c_str(), 1);
  unsetenv("RMGEN_TOKEN_FILE");
  if (!c.token.empty()) setenv("RMGEN_TOKEN", c.token.c_str(), 1);
  for (auto [env, v] :
       {std::pair{"RMGEN_TLS_CA", &c.tls_ca}, std::pair{"RMGEN_TLS_CERT", &c.tls_cert},
        std::pair{"RMGEN_TLS_KEY", &c.tls_key}}) {
    if (!v->empty()) setenv(env, v->c_str(), 1);
  }
  static const char* kBoot =
      "import sys\n"
      "try:\n"
      "    from rmgen import report\n"
      "except ImportError as e:\n"
      "    sys.exit(f'rmgen report: the rmgen Python package is not importable by {sys.executable} "
      "({e}): pip install client/python[report] from the rmgen repository, or set RMGEN_PYTHON "
      "to a Python that has it')\n"
      "sys.argv[0] = 'rmgen report'\n"
      "sys.exit(report.main())\n";
  std::vector<std::string> argv = {python, "-c", kBoot};
  argv.insert(argv.end(), c.rest.begin(), c.rest.end());
  std::vector<char*> cargv;
  for (auto& a : argv) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  std::fflush(nullptr);
  execvp(python.c_str(), cargv.data());
  std::fprintf(stderr, "rmgen report: cannot run %s: %s (set RMGEN_PYTHON)\n", python.c_str(),
               std::strerror(errno));
  return 127;
}

}  // namespace

int ReportCommand(const std::vector<std::string>& a) { return Report(a); }
int SubmitCommand(const std::vector<std::string>& a) { return Run<Submit>(a); }
int StatusCommand(const std::vector<std::string>& a) { return Run<Status>(a); }
int WatchCommand(const std::vector<std::string>& a) { return Run<Watch>(a); }
int ResultsCommand(const std::vector<std::string>& a) { return Run<Results>(a); }
int CancelCommand(const std::vector<std::string>& a) { return Run<Cancel>(a); }
int LogsCommand(const std::vector<std::string>& a) { return Run<Logs>(a); }
int WorkersCommand(const std::vector<std::string>& a) { return Run<Workers>(a); }
int DrainCommand(const std::vector<std::string>& a) { return Run<Drain>(a); }

int SubmitLocal(const std::string& address, const std::string& path, int64_t slots,
                std::string* study_id) {
  Conn c;
  c.address = address;
  if (const char* t = std::getenv("RMGEN_TOKEN")) c.token = t;  // rmgen local's own
  Client cl(c);
  pb::SubmitStudyResponse resp;
  if (int rc = SubmitFile(cl, path, "", &resp); rc != 0) return rc;
  *study_id = resp.study().id();
  for (const auto& j : resp.jobs()) {
    if (j.ranks() > slots) {
      std::fprintf(stderr,
                   "rmgen: job %s needs %lld ranks at once but this run has %lld slot(s).\n"
                   "HINT: pass --ranks %lld, or lower the study's resources.ranks\n",
                   j.id().c_str(), (long long)j.ranks(), (long long)slots, (long long)j.ranks());
      return 2;
    }
  }
  return 0;
}

int WatchLocal(const std::string& address, const std::string& study_id) {
  Conn c;
  c.address = address;
  if (const char* t = std::getenv("RMGEN_TOKEN")) c.token = t;
  Client cl(c);
  return Watch(cl, {study_id});
}
}  // namespace rmgen::cli
