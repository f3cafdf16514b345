// rmgen-coordinator: the control plane.
//   rmgen-coordinator [--config coordinator.yaml] [--listen ADDR] [--data-dir DIR]
//                     [--store sqlite|memory] [--tokens FILE] [--insecure] [--lease-ms N]
//                     [--max-attempts N] [--output-root DIR]
//                     [--tls-cert PEM --tls-key PEM [--tls-client-ca PEM]]
//                     [--max-jobs-per-study N] [--max-active-jobs-per-user N]
//                     [--max-submitter-priority N] [--data-root DIR ...] [--http ADDR]
// --http ADDR also serves HTTP there (coordinator/http.h): /metrics (Prometheus, operators),
// /healthz, and the web dashboard at /; with the same tokens and TLS as gRPC, and the same
// loopback rule. It prints "http port N" once listening.
// Flags override the config file, whose keys are the flag names with '_' for '-'
// (`data_roots: [DIR, ...]` for --data-root, `insecure: true`).
//
// Safe by default: without --tokens every caller is an operator, so the coordinator listens
// beyond loopback (127.0.0.0/8, ::1, localhost, unix: sockets) only with --tokens, or with
// --insecure (and a loud warning). Tokens over plaintext beyond loopback get a warning too
// (they travel in clear: give --tls-cert/--tls-key).
//
// State: <data-dir>/state.db (SQLite); <data-dir>/LOCK holds an exclusive lock (and the pid)
// while it runs, so a second coordinator on the same directory is refused. Corrupt rows of
// the store are quarantined at start-up (see store.h) and counted on the start-up line.
// Stops cleanly on SIGTERM/SIGINT.
#include <arpa/inet.h>
#include <signal.h>
#include <yaml-cpp/yaml.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <thread>
#include <tuple>

#include "common/file.h"
#include "coordinator/http.h"
#include "coordinator/service.h"

namespace {

std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop = true; }

int Usage() {
  std::fprintf(stderr,
               "usage: rmgen-coordinator [--config FILE] [--listen ADDR] [--data-dir DIR] "
               "[--store sqlite|memory] [--tokens FILE] [--insecure] [--lease-ms N] "
               "[--max-attempts N] [--output-root DIR] "
               "[--tls-cert PEM --tls-key PEM [--tls-client-ca PEM]] "
               "[--max-jobs-per-study N] [--max-active-jobs-per-user N] "
               "[--max-submitter-priority N] [--data-root DIR ...] [--http ADDR]\n"
               "  --listen (and --http) beyond loopback need --tokens (or --insecure: every "
               "caller is an operator)\n"
               "  --http ADDR: the dashboard (/), Prometheus metrics (/metrics) and /healthz\n");
  return 2;
}

// Whether a gRPC listening address reaches this host only: unix sockets, localhost,
// 127.0.0.0/8, ::1 (with or without an ipv4:/ipv6: scheme, brackets and a port).
bool IsLoopback(std::string a) {
  if (a.rfind("unix:", 0) == 0 || a.rfind("unix-abstract:", 0) == 0) return true;
  for (const char* scheme : {"ipv4:", "ipv6:", "dns:"}) {
    if (a.rfind(scheme, 0) == 0) a = a.substr(std::string(scheme).size());
  }
  std::string host;
  if (!a.empty() && a[0] == '[') {
    const size_t end = a.find(']');
    if (end == std::string::npos) return false;
    host = a.substr(1, end - 1);
  } else if (std::count(a.begin(), a.end(), ':') > 1) {
    host = a;  // a bare IPv6 address
  } else {
    host = a.substr(0, a.find(':'));
  }
  if (host == "localhost") return true;
  in_addr v4;
  if (inet_pton(AF_INET, host.c_str(), &v4) == 1) return (ntohl(v4.s_addr) >> 24) == 127;
  in6_addr v6;
  if (inet_pton(AF_INET6, host.c_str(), &v6) == 1) {
    if (IN6_IS_ADDR_LOOPBACK(&v6)) return true;
    return IN6_IS_ADDR_V4MAPPED(&v6) && v6.s6_addr[12] == 127;
  }
  return false;
}

// A whole number from a flag; false when `text` is not one.
bool ParseInt(const std::string& text, int64_t* out) {
  if (text.empty()) return false;
  char* end = nullptr;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  if (*end != '\0') return false;
  *out = v;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace rmgen;
  using namespace rmgen::coord;
  std::map<std::string, std::string> opt = {{"listen", "127.0.0.1:7070"},
                                            {"data-dir", "rmgen-data"},
                                            {"store", "sqlite"},
                                            {"lease-ms", "30000"},
                                            {"max-attempts", "3"},
                                            {"max-jobs-per-study", "10000"},
                                            {"max-active-jobs-per-user", "10000"},
                                            {"max-submitter-priority", "100"},
                                            {"insecure", "false"}};
  std::map<std::string, std::string> flags;
  std::vector<std::string> data_roots, flag_roots;
  std::string config;
  const std::set<std::string> known = {"listen",
                                       "data-dir",
                                       "store",
                                       "tokens",
                                       "lease-ms",
                                       "max-attempts",
                                       "output-root",
                                       "tls-cert",
                                       "tls-key",
                                       "tls-client-ca",
                                       "max-jobs-per-study",
                                       "max-active-jobs-per-user",
                                       "max-submitter-priority",
                                       "http",
                                       "insecure"};
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--insecure") {  // the one flag without a value
      flags["insecure"] = "true";
      continue;
    }
    if (a.rfind("--", 0) != 0 || i + 1 >= argc) return Usage();
    a = a.substr(2);
    if (a == "config") {
      config = argv[++i];
    } else if (a == "data-root") {
      flag_roots.push_back(argv[++i]);
    } else if (known.count(a) && a != "insecure") {
      flags[a] = argv[++i];
    } else {
      std::fprintf(stderr, "rmgen-coordinator: unknown flag --%s\n", a.c_str());
      return Usage();
    }
  }
  if (!config.empty()) {
    auto text = ReadFile(config);
    if (!text.ok()) {
      std::fprintf(stderr, "rmgen-coordinator: %s\n", text.status().message().c_str());
      return 2;
    }
    try {
      YAML::Node doc = YAML::Load(*text);
      for (const auto& kv : doc) {
        std::string k = kv.first.Scalar();
        for (char& ch : k) ch = ch == '_' ? '-' : ch;
        const int line = kv.first.Mark().line + 1;
        if (k == "data-roots") {  // a list of directories (or one)
          if (kv.second.IsSequence()) {
            for (const auto& r : kv.second) data_roots.push_back(r.Scalar());
          } else if (kv.second.IsScalar()) {
            data_roots.push_back(kv.second.Scalar());
          } else {
            std::fprintf(stderr, "rmgen-coordinator: %s:%d: data_roots must be a list of dirs\n",
                         config.c_str(), line);
            return 2;
          }
          continue;
        }
        if (!known.count(k)) {
          std::fprintf(stderr, "rmgen-coordinator: %s:%d: unknown key '%s'\n", config.c_str(), line,
                       kv.first.Scalar().c_str());
          return 2;
        }
        if (!kv.second.IsScalar()) {
          std::fprintf(stderr, "rmgen-coordinator: %s:%d: '%s' must be a single value\n",
                       config.c_str(), line, kv.first.Scalar().c_str());
          return 2;
        }
        opt[k] = kv.second.Scalar();
      }
    } catch (const YAML::Exception& e) {
      std::fprintf(stderr, "rmgen-coordinator: %s:%d: %s\n", config.c_str(), e.mark.line + 1,
                   e.msg.c_str());
      return 2;
    }
  }
  for (const auto& [k, v] : flags) opt[k] = v;
  if (!flag_roots.empty()) data_roots = flag_roots;
  if (opt["insecure"] != "true" && opt["insecure"] != "false") {
    std::fprintf(stderr, "rmgen-coordinator: insecure must be true or false\n");
    return 2;
  }
  const bool insecure = opt["insecure"] == "true";

  // Who may call: no tokens file means every caller is an operator, so only on loopback
  // unless --insecure says otherwise.
  const std::string listen = opt["listen"];
  const bool loopback = IsLoopback(listen);
  const std::string http = opt.count("http") ? opt["http"] : "";
  const bool http_loopback = http.empty() || IsLoopback(http);
  const bool tls = opt.count("tls-cert") || opt.count("tls-key");
  for (const auto& [flag, addr, lo] :
       {std::tuple{"listen", listen, loopback}, std::tuple{"http", http, http_loopback}}) {
    if (!opt.count("tokens") && !lo && !insecure) {
      std::fprintf(stderr,
                   "rmgen-coordinator: refusing to listen on %s (--%s) without --tokens: every "
                   "caller would be an operator.\n"
                   "HINT: give --tokens FILE (coordinator/auth.h), listen on loopback "
                   "(--%s 127.0.0.1:PORT), or pass --insecure to run open anyway\n",
                   addr.c_str(), flag, flag);
      return 2;
    }
  }

  CoreOptions co;
  struct IntOption {
    const char* flag;
    int64_t* field;
    int64_t min;
  };
  for (const IntOption& o :
       {IntOption{"lease-ms", &co.lease_ms, 1}, IntOption{"max-attempts", &co.max_attempts, 1},
        IntOption{"max-jobs-per-study", &co.max_jobs_per_study, 1},
        IntOption{"max-active-jobs-per-user", &co.max_active_jobs_per_user, 1},
        IntOption{"max-submitter-priority", &co.max_submitter_priority, 0}}) {
    if (!ParseInt(opt[o.flag], o.field) || *o.field < o.min) {
      std::fprintf(stderr, "rmgen-coordinator: --%s must be a whole number >= %lld (not '%s')\n",
                   o.flag, (long long)o.min, opt[o.flag].c_str());
      return 2;
    }
  }
  // Submitted absolute paths stay under the data roots (and the output root) once any is
  // given.
  for (const auto& r : data_roots) {
    if (r.empty()) {
      std::fprintf(stderr, "rmgen-coordinator: --data-root must name a directory\n");
      return 2;
    }
  }
  co.data_roots = data_roots;
  co.confine_paths = !data_roots.empty();

  const std::string data_dir = opt["data-dir"];
  std::error_code ec;
  std::filesystem::create_directories(data_dir, ec);
  // One coordinator per data directory, held until exit.
  auto lock = LockDataDir(data_dir);
  if (!lock.ok()) {
    std::fprintf(stderr, "rmgen-coordinator: %s\n", lock.status().message().c_str());
    return 1;
  }
  std::unique_ptr<Store> store;
  if (opt["store"] == "memory") {
    store = NewMemoryStore();
  } else if (opt["store"] == "sqlite") {
    auto s = OpenSqliteStore(data_dir + "/state.db");
    if (!s.ok()) {
      std::fprintf(stderr, "rmgen-coordinator: %s\n", s.status().message().c_str());
      return 1;
    }
    store = std::move(s).value();
  } else {
    std::fprintf(stderr, "rmgen-coordinator: --store must be sqlite or memory\n");
    return 2;
  }
  Auth auth = Auth::Open();
  if (opt.count("tokens")) {
    auto a = Auth::Load(opt["tokens"]);
    if (!a.ok()) {
      std::fprintf(stderr, "rmgen-coordinator: %s\n", a.status().message().c_str());
      return 2;
    }
    auth = std::move(a).value();
  }
  co.output_root = opt.count("output-root") ? opt["output-root"] : data_dir + "/jobs";
  if (co.confine_paths) {
    // A relative output root is resolved in each worker's working directory, where the
    // checks cannot follow it: confinement needs it absolute.
    if (!std::filesystem::path(co.output_root).is_absolute()) {
      std::fprintf(stderr,
                   "rmgen-coordinator: --data-root confines paths, which needs an absolute "
                   "output root; '%s' is relative: give --output-root (or --data-dir) as an "
                   "absolute path\n",
                   co.output_root.c_str());
      return 2;
    }
    co.denied_roots = {std::filesystem::absolute(data_dir).lexically_normal().string()};
  } else if (opt.count("tokens")) {
    std::fprintf(stderr,
                 "rmgen-coordinator: warning: tokens are set but no --data-root: submitted "
                 "paths are not confined (any user's job may name any path its worker can "
                 "read)\n");
  }
  Core core(store.get(), SystemClock(), co);
  if (Status s = core.Recover(); !s.ok()) {
    std::fprintf(stderr, "rmgen-coordinator: recovering %s: %s\n", data_dir.c_str(),
                 s.message().c_str());
    return 1;
  }
  ServerOptions so;
  so.listen = listen;
  so.tls_cert = opt.count("tls-cert") ? opt["tls-cert"] : "";
  so.tls_key = opt.count("tls-key") ? opt["tls-key"] : "";
  so.tls_client_ca = opt.count("tls-client-ca") ? opt["tls-client-ca"] : "";
  so.tick_ms = std::clamp<int64_t>(co.lease_ms / 4, 50, 5000);
  auto server = Server::Start(&core, &auth, so);
  if (!server.ok()) {
    std::fprintf(stderr, "rmgen-coordinator: %s\n", server.status().message().c_str());
    return 1;
  }
  std::string notes;
  if (store->quarantined() > 0) {
    notes += "; " + std::to_string(store->quarantined()) +
             " corrupt record(s) quarantined (the quarantine table of state.db)";
  }
  if (auth.open()) notes += "; NO TOKENS FILE: every caller is an operator";
  std::fprintf(stderr, "rmgen-coordinator: listening on port %d (%s), store %s, data %s%s\n",
               (*server)->port(), so.tls_cert.empty() ? "plaintext" : "TLS", opt["store"].c_str(),
               data_dir.c_str(), notes.c_str());
  if (auth.open() && !loopback) {
    std::fprintf(stderr,
                 "rmgen-coordinator: WARNING: --insecure: listening on %s with no tokens file; "
                 "anyone who can reach this port is an operator (cancels, drains, submits as "
                 "anyone)\n",
                 listen.c_str());
  }
  if (!auth.open() && !loopback && !tls) {
    std::fprintf(stderr,
                 "rmgen-coordinator: WARNING: tokens travel in clear on %s (plaintext beyond "
                 "loopback): give --tls-cert and --tls-key\n",
                 listen.c_str());
  }
  std::unique_ptr<HttpServer> http_server;
  if (!http.empty() && auth.open() && !insecure) {
    // A browser on this machine would be an operator too: any page it opens could drive it.
    std::fprintf(stderr,
                 "rmgen-coordinator: --http needs --tokens (the dashboard signs in with one); "
                 "or pass --insecure to serve it open anyway\n");
    (*server)->Shutdown();
    return 2;
  }
  if (!http.empty()) {
    HttpOptions ho;
    ho.listen = http;
    ho.tls_cert = so.tls_cert;
    ho.tls_key = so.tls_key;
    ho.tls_client_ca = so.tls_client_ca;
    ho.output_root = co.output_root;
    auto h = HttpServer::Start(&core, &auth, ho);
    if (!h.ok()) {
      std::fprintf(stderr, "rmgen-coordinator: %s\n", h.status().message().c_str());
      (*server)->Shutdown();
      return 1;
    }
    http_server = std::move(h).value();
    std::fprintf(stderr, "rmgen-coordinator: HTTP on port %d (%s): dashboard /, metrics /metrics\n",
                 http_server->port(), so.tls_cert.empty() ? "plaintext" : "TLS");
  }
  // Lines a launcher can wait for.
  if (http_server) std::printf("http port %d\n", http_server->port());
  std::printf("port %d\n", (*server)->port());
  std::fflush(stdout);
  struct sigaction sa = {};
  sa.sa_handler = OnSignal;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  while (!g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  if (http_server) http_server->Stop();
  (*server)->Shutdown();
  return 0;
}
