// rmgen local STUDY.yaml [STUDY.yaml ...] [--data-dir DIR] [--ranks N] [--lease-ms MS]
//             [--http 127.0.0.1:PORT]
//
// --http also serves the web dashboard there (loopback only); the line it prints opens it
// signed in (the URL carries this run's token in its fragment, which browsers never send).
//
// The whole service on one machine, in one command: an embedded coordinator (SQLite in the
// data dir, gRPC on a loopback port) and a local agent with N slots that runs each job's ranks
// with mpirun (one rank: directly) under supervisors. It submits the studies, shows live
// progress, prints the results tables (across the studies when there are several), and
// leaves everything in the data dir:
//   DIR/state.db            the coordinator's store (studies, jobs, events, results)
//   DIR/jobs/<job id>/      each job's checkpoints, events.jsonl, metrics.json, logs/
//   DIR/worker/             the agent's attempt records
//   DIR/synth/              the synthetic suite, written on first use when a study's
//                           catalog is synth/datasets.yaml
//   DIR/paper-mini/         the paper-shaped miniature (real source schemas), written on
//                           first use when a study's catalog is paper-mini/datasets.yaml
// The ranks run in DIR, so a study's relative paths are relative to it. Running the same
// command again resumes: the same study (its request id is the file's content), finished jobs
// kept, interrupted ones continued from their last checkpoint. Ctrl-C stops the running jobs
// with a checkpoint first.
#include <signal.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include "client/commands.h"
#include "common/file.h"
#include "coordinator/http.h"
#include "coordinator/service.h"
#include "coordinator/store.h"
#include "worker/agent/agent.h"
#include "worker/data/synth.h"

namespace rmgen::cli {
namespace {

namespace fs = std::filesystem;

std::atomic<bool> g_interrupt{false};
void OnInterrupt(int) {
  if (g_interrupt.exchange(true)) _exit(130);
  static const char msg[] =
      "\nrmgen local: stopping: the running jobs checkpoint first (Ctrl-C again to quit now)\n";
  (void)!write(2, msg, sizeof(msg) - 1);
}

int Usage() {
  std::fprintf(stderr,
               "usage: rmgen local STUDY.yaml [STUDY.yaml ...] [--data-dir DIR] [--ranks N]\n"
               "                   [--lease-ms MS] [--http 127.0.0.1:PORT]\n"
               "  --data-dir DIR  where everything goes (default: rmgen-local); run again with\n"
               "                  the same DIR to resume\n"
               "  --ranks N       CPU ranks (or GPUs) the local agent offers (default: 2)\n"
               "  --http ADDR     also serve the web dashboard on this loopback address\n");
  return 2;
}

// The demos' data: a study whose catalog is synth/datasets.yaml gets the synthetic suite
// written there (once), paper-mini/datasets.yaml the paper-shaped miniature.
Status PrepareSynth(const std::string& study_path, const fs::path& data_dir) {
  ASSIGN_OR_RETURN(std::string text, ReadFile(study_path));
  std::string catalog;
  try {
    YAML::Node doc = YAML::Load(text);
    if (doc["catalog"] && doc["catalog"].IsScalar()) catalog = doc["catalog"].Scalar();
  } catch (const YAML::Exception&) {
    return Status::Ok();  // the coordinator reports the study's errors with their lines
  }
  if (fs::exists(data_dir / catalog)) return Status::Ok();
  if (catalog == "synth/datasets.yaml") {
    std::printf("writing the synthetic shift suite to %s\n", (data_dir / "synth").c_str());
    return WriteSyntheticSuite((data_dir / "synth").string(), SynthOptions());
  }
  if (catalog == "paper-mini/datasets.yaml") {
    std::printf("writing the paper-shaped miniature to %s\n", (data_dir / "paper-mini").c_str());
    return WritePaperMiniSuite((data_dir / "paper-mini").string(), PaperMiniOptions());
  }
  return Status::Ok();
}

}  // namespace

int LocalCommand(const std::vector<std::string>& args) {
  std::vector<std::string> study_paths;
  std::string data_dir = "rmgen-local";
  int64_t ranks = 2, lease_ms = 10'000;
  std::string http;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "-h" || a == "--help") {
      Usage();
      return 0;
    }
    if ((a == "--data-dir" || a == "--ranks" || a == "--lease-ms" || a == "--http") &&
        i + 1 < args.size()) {
      const std::string v = args[++i];
      if (a == "--http") http = v;
      if (a == "--data-dir") data_dir = v;
      if (a == "--ranks") ranks = std::atoll(v.c_str());
      if (a == "--lease-ms") lease_ms = std::atoll(v.c_str());
    } else if (a.rfind("--", 0) != 0) {
      study_paths.push_back(a);
    } else {
      return Usage();
    }
  }
  if (study_paths.empty() || ranks < 1 || lease_ms < 100) return Usage();
  std::error_code ec;
  for (auto& p : study_paths) p = fs::absolute(p, ec).string();
  const fs::path dir = fs::absolute(data_dir, ec).lexically_normal();
  fs::create_directories(dir, ec);
  if (ec) {
    std::fprintf(stderr, "rmgen local: cannot create %s: %s\n", dir.c_str(), ec.message().c_str());
    return 1;
  }
  for (const auto& p : study_paths) {
    if (Status s = PrepareSynth(p, dir); !s.ok()) {
      std::fprintf(stderr, "rmgen local: %s\n", s.message().c_str());
      return 1;
    }
  }

  // The coordinator: one per data directory, like rmgen-coordinator.
  auto lock = coord::LockDataDir(dir.string());
  if (!lock.ok()) {
    std::fprintf(stderr, "rmgen local: %s\n", lock.status().message().c_str());
    return 1;
  }
  auto store = coord::OpenSqliteStore((dir / "state.db").string());
  if (!store.ok()) {
    std::fprintf(stderr, "rmgen local: %s\n", store.status().message().c_str());
    return 1;
  }
  coord::CoreOptions co;
  co.lease_ms = lease_ms;
  co.output_root = (dir / "jobs").string();
  coord::Core core(store->get(), coord::SystemClock(), co);
  if (Status s = core.Recover(); !s.ok()) {
    std::fprintf(stderr, "rmgen local: recovering %s: %s\n", dir.c_str(), s.message().c_str());
    return 1;
  }
  // Its own token, never shown: another user of this host cannot reach the coordinator on its
  // loopback port. The agent, the submit, watch and results calls of this process take it
  // from RMGEN_TOKEN, which the agent keeps out of the ranks' environment.
  const std::string token = RandomHex(16);
  auto auth_or = coord::Auth::Parse(
      "tokens:\n  - {token: \"" + token + "\", user: local, role: operator}\n", "rmgen local");
  if (!auth_or.ok()) {
    std::fprintf(stderr, "rmgen local: %s\n", auth_or.status().message().c_str());
    return 1;
  }
  coord::Auth auth = std::move(auth_or).value();
  ::setenv("RMGEN_TOKEN", token.c_str(), 1);
  coord::ServerOptions so;
  so.listen = "127.0.0.1:0";
  so.tick_ms = std::clamp<int64_t>(lease_ms / 4, 50, 2000);
  auto server = coord::Server::Start(&core, &auth, so);
  if (!server.ok()) {
    std::fprintf(stderr, "rmgen local: %s\n", server.status().message().c_str());
    return 1;
  }
  const std::string address = "127.0.0.1:" + std::to_string((*server)->port());
  std::unique_ptr<coord::HttpServer> dashboard;
  if (!http.empty()) {
    const std::string host = http.substr(0, http.rfind(':'));
    if (host != "127.0.0.1" && host != "localhost" && host != "[::1]") {
      std::fprintf(stderr, "rmgen local: --http %s: only a loopback address (127.0.0.1:PORT)\n",
                   http.c_str());
      return 2;
    }
    coord::HttpOptions ho;
    ho.listen = http;
    auto h = coord::HttpServer::Start(&core, &auth, ho);
    if (!h.ok()) {
      std::fprintf(stderr, "rmgen local: %s\n", h.status().message().c_str());
      return 1;
    }
    dashboard = std::move(h).value();
    std::printf("dashboard: http://%s:%d/#token=%s\n", host.c_str(), dashboard->port(),
                token.c_str());
    std::fflush(stdout);
  }

  // The agent.
  agent::AgentOptions ao;
  ao.coordinator = address;
  ao.token = token;
  ao.id = "local";
  char host[256] = {};
  ::gethostname(host, sizeof(host) - 1);
  ao.host = host;
  ao.slots = ranks;
  // Its memory per slot (RAM, or the GPUs'), so the coordinator refuses what cannot fit.
  ao.memory_bytes_per_slot = agent::DetectMemoryPerSlot(ranks);
  ao.state_dir = (dir / "worker").string();
  ao.workdir = dir.string();
  ao.supervisor_exe = {agent::SelfExecutable()};
  ao.verbose = false;
  agent::LauncherOptions lo;
  lo.kind = "mpirun";
  lo.train_bin = agent::DefaultTrainBin();
  lo.as_root = ::geteuid() == 0;
  lo.local_cores = sysconf(_SC_NPROCESSORS_ONLN);
  auto launcher = agent::MakeLauncher(lo);
  if (!launcher.ok()) {
    std::fprintf(stderr, "rmgen local: %s\n", launcher.status().message().c_str());
    return 1;
  }
  agent::Agent agent(ao, std::move(launcher).value());
  std::atomic<bool> agent_stop{false}, agent_done{false};
  Status agent_status = Status::Ok();
  std::thread agent_thread([&] {
    agent_status = agent.Run(&agent_stop);
    agent_done = true;
  });

  struct sigaction sa = {};
  sa.sa_handler = OnInterrupt;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
  // Ctrl-C: stop the agent first (its jobs checkpoint and are reported), then the server,
  // which ends the watch below.
  std::atomic<bool> finished{false};
  // (Only main joins the agent thread.)
  std::thread interrupter([&] {
    while (!finished && !g_interrupt) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    if (!g_interrupt) return;
    agent_stop = true;
    while (!agent_done) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    (*server)->Shutdown();
  });

  std::printf("rmgen local: coordinator on %s, %lld slot(s), data in %s\n", address.c_str(),
              (long long)ranks, dir.c_str());
  std::fflush(stdout);
  // Every study first (their jobs share the slots), then each watched to its end.
  std::vector<std::string> study_ids;
  int rc = 0;
  for (const auto& p : study_paths) {
    std::string id;
    rc = SubmitLocal(address, p, ranks, &id);
    if (rc != 0) break;
    study_ids.push_back(id);
  }
  // Every study to its end: a failed job in one (rc 1) does not stop watching the others.
  for (const auto& id : study_ids) {
    if (rc == 2 || g_interrupt) break;
    const int r = WatchLocal(address, id);
    rc = rc != 0 ? rc : r;
  }
  finished = true;
  interrupter.join();
  if (g_interrupt) {
    agent_thread.join();
    std::printf("rmgen local: stopped. Run the same command again to resume.\n");
    return 130;
  }
  if (!study_ids.empty() && rc != 2 && study_ids.size() == study_paths.size()) {
    std::printf("\n");
    std::vector<std::string> args = {"--coordinator", address};
    args.insert(args.end(), study_ids.begin(), study_ids.end());
    const int r = ResultsCommand(args);
    rc = rc != 0 ? rc : r;
  }
  agent_stop = true;
  agent_thread.join();
  (*server)->Shutdown();
  if (!agent_status.ok()) {
    std::fprintf(stderr, "rmgen local: the agent: %s\n", agent_status.message().c_str());
    rc = rc != 0 ? rc : 1;
  }
  std::printf("\nresults, checkpoints and logs under %s (jobs/<job id>/)%s\n", dir.c_str(),
              rc == 0 ? "" : "; `rmgen local` again resumes");
  return rc;
}

}  // namespace rmgen::cli
