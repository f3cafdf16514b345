// rmgen-coordinator: the control plane.
//   rmgen-coordinator [--config coordinator.yaml] [--listen ADDR] [--data-dir DIR]
//                     [--store sqlite|memory] [--tokens FILE] [--lease-ms N] [--max-attempts N]
//                     [--output-root DIR] [--tls-cert PEM --tls-key PEM [--tls-client-ca PEM]]
// Flags override the config file, whose keys are the flag names with '_' for '-'.
// State: <data-dir>/state.db (SQLite). Stops cleanly on SIGTERM/SIGINT.
#include <signal.h>
#include <yaml-cpp/yaml.h>

#include <cstdio>
#include <filesystem>
#include <map>
#include <thread>

#include "common/file.h"
#include "coordinator/service.h"

namespace {

std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop = true; }

int Usage() {
  std::fprintf(stderr,
               "usage: rmgen-coordinator [--config FILE] [--listen ADDR] [--data-dir DIR] "
               "[--store sqlite|memory] [--tokens FILE] [--lease-ms N] [--max-attempts N] "
               "[--output-root DIR] "
               "[--tls-cert PEM --tls-key PEM [--tls-client-ca PEM]]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace rmgen;
  using namespace rmgen::coord;
  std::map<std::string, std::string> opt = {{"listen", "127.0.0.1:7070"},
                                            {"data-dir", "rmgen-data"},
                                            {"store", "sqlite"},
                                            {"lease-ms", "30000"},
                                            {"max-attempts", "3"}};
  std::map<std::string, std::string> flags;
  std::string config;
  const std::set<std::string> known = {"listen",   "data-dir",     "store",       "tokens",
                                       "lease-ms", "max-attempts", "output-root", "tls-cert",
                                       "tls-key",  "tls-client-ca"};
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--", 0) != 0 || i + 1 >= argc) return Usage();
    a = a.substr(2);
    if (a == "config") {
      config = argv[++i];
    } else if (known.count(a)) {
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
        if (!known.count(k)) {
          std::fprintf(stderr, "rmgen-coordinator: %s:%d: unknown key '%s'\n", config.c_str(),
                       kv.first.Mark().line + 1, kv.first.Scalar().c_str());
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
  const std::string data_dir = opt["data-dir"];
  std::error_code ec;
  std::filesystem::create_directories(data_dir, ec);
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
  CoreOptions co;
  co.lease_ms = std::atoll(opt["lease-ms"].c_str());
  if (co.lease_ms <= 0) {
    std::fprintf(stderr, "rmgen-coordinator: --lease-ms must be positive\n");
    return 2;
  }
  co.max_attempts = std::atoll(opt["max-attempts"].c_str());
  if (co.max_attempts < 1) {
    std::fprintf(stderr, "rmgen-coordinator: --max-attempts must be >= 1\n");
    return 2;
  }
  co.output_root = opt.count("output-root") ? opt["output-root"] : data_dir + "/jobs";
  Core core(store.get(), SystemClock(), co);
  if (Status s = core.Recover(); !s.ok()) {
    std::fprintf(stderr, "rmgen-coordinator: recovering %s: %s\n", data_dir.c_str(),
                 s.message().c_str());
    return 1;
  }
  ServerOptions so;
  so.listen = opt["listen"];
  so.tls_cert = opt.count("tls-cert") ? opt["tls-cert"] : "";
  so.tls_key = opt.count("tls-key") ? opt["tls-key"] : "";
  so.tls_client_ca = opt.count("tls-client-ca") ? opt["tls-client-ca"] : "";
  so.tick_ms = std::clamp<int64_t>(co.lease_ms / 4, 50, 5000);
  auto server = Server::Start(&core, &auth, so);
  if (!server.ok()) {
    std::fprintf(stderr, "rmgen-coordinator: %s\n", server.status().message().c_str());
    return 1;
  }
  std::fprintf(stderr, "rmgen-coordinator: listening on port %d (%s), store %s, data %s%s\n",
               (*server)->port(), so.tls_cert.empty() ? "plaintext" : "TLS", opt["store"].c_str(),
               data_dir.c_str(),
               auth.open() ? "; NO TOKENS FILE: every caller is an operator" : "");
  // A line a launcher can wait for.
  std::printf("port %d\n", (*server)->port());
  std::fflush(stdout);
  struct sigaction sa = {};
  sa.sa_handler = OnSignal;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  while (!g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  (*server)->Shutdown();
  return 0;
}
