// rmgen-worker: the worker agent (agent.h). One per node, or one per Slurm allocation
// (deploy/slurm/rmgen-worker.sbatch).
//
//   rmgen-worker --coordinator HOST:PORT [--token-file F] [--tls-ca PEM]
//                [--tls-cert PEM --tls-key PEM]
//                [--id ID] [--slots N] [--memory-per-slot BYTES|auto] [--label K=V ...]
//                [--state-dir DIR] [--workdir DIR]
//                [--launcher mpirun|slurm|command] [--train-bin PATH] [--hostfile F]
//                [--gpus-per-rank N] [--srun-mpi PLUGIN] [--launcher-arg ARG ...]
//                [--command "PROGRAM ARGS"] [--grace-ms MS]
//                [--metrics ADDR [--metrics-token-file F]]
//
// --metrics ADDR serves this agent's Prometheus metrics at http://ADDR/metrics (running
// attempts, relay lag, events relayed, attempts started / ended / recovered, registrations).
// Beyond loopback it needs --metrics-token-file (scrapers then send `Authorization: Bearer`
// with that token; anything else is 401).
//
// Defaults: the coordinator from RMGEN_COORDINATOR, the token from RMGEN_TOKEN (or the first
// line of --token-file; `--token T` is refused: `ps` would show it to everyone on the node).
// The agent keeps the token to itself: RMGEN_TOKEN* variables are removed from its
// environment at start, so neither supervisors nor ranks inherit them. The id is the
// host name (plus the Slurm job id inside an allocation); slots are the allocation's tasks
// inside Slurm, else this node's GPUs, else its cores; the launcher is slurm inside an
// allocation, else mpirun; rmgen-train is $RMGEN_TRAIN, or next to this binary, or on PATH.
// --host: the name or address other nodes reach this one by (default: the host name). With
// the mpirun launcher the agent registers as able to span hosts: the coordinator may place a
// job over it and other such workers, and the first of them starts all the ranks with a
// hostfile of their --host names (mpirun's remote launcher, ssh by default, must reach them).
// The memory per slot (auto): the smallest GPU's (nvidia-smi), else RAM / slots; the
// coordinator refuses jobs whose estimate fits on no worker (0: report none).
//
// Registration: the agent sends a random instance key, made once and kept in
// <state-dir>/instance, and the coordinator answers with a session that every later call
// carries. A restart with the same --state-dir is the same instance (its jobs are picked up
// again). If the coordinator refuses the id because another agent holds it with a live lease
// (ALREADY_EXISTS: two hosts with one --id, or a state dir wiped while the old agent's lease
// still runs), the agent exits at start-up with status 1 and the coordinator's message, so
// the mistake shows at once (a service manager restarting it retries after its own delay).
// Later, when the coordinator asks the running agent to register again (its session is gone:
// UNAUTHENTICATED, or a heartbeat reply says reregister) and the id is taken meanwhile, the
// agent logs the message and keeps trying every 5 s; its heartbeats fail meanwhile, so its
// ranks stop when the lease runs out, as they must.
//
// SIGTERM or SIGINT: stop taking jobs, stop the running ones (they checkpoint), report them
// as preempted (requeued without using up an attempt), exit 0. A second signal exits at once;
// the ranks keep running under their supervisors and a restart with the same --state-dir
// reports them.
#include <arpa/inet.h>
#include <httplib.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/file.h"
#include "worker/agent/agent.h"
#include "worker/agent/supervisor.h"

namespace {

namespace fs = std::filesystem;
std::atomic<bool> g_stop{false};

void OnSignal(int) {
  if (g_stop.exchange(true)) _exit(130);
}

std::string Env(const char* k, const std::string& fallback = "") {
  const char* v = std::getenv(k);
  return v && *v ? v : fallback;
}

int64_t DefaultSlots() {
  if (!Env("SLURM_JOB_ID").empty()) {
    const int64_t tasks = std::atoll(Env("SLURM_NTASKS", "0").c_str());
    if (tasks > 0) return tasks;
    return std::max<int64_t>(
        1, std::atoll(Env("SLURM_JOB_NUM_NODES", "1").c_str()) *
               std::max<int64_t>(1, std::atoll(Env("SLURM_GPUS_ON_NODE", "1").c_str())));
  }
  int64_t gpus = 0;
  for (int i = 0; i < 64; ++i) gpus += fs::exists("/dev/nvidia" + std::to_string(i)) ? 1 : 0;
  if (gpus > 0) return gpus;
  const long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? n : 1;
}

std::vector<std::string> Split(const std::string& s) {
  std::istringstream in(s);
  std::vector<std::string> out;
  std::string w;
  while (in >> w) out.push_back(w);
  return out;
}

int Usage() {
  std::fprintf(stderr,
               "usage: rmgen-worker --coordinator HOST:PORT [--token-file F] "
               "[--tls-ca PEM [--tls-cert PEM --tls-key PEM]] [--id ID] [--host NAME] [--slots N] "
               "[--memory-per-slot BYTES|auto] [--label "
               "K=V]... [--state-dir DIR] "
               "[--workdir DIR] [--launcher mpirun|slurm|command] [--train-bin PATH] "
               "[--hostfile F] [--gpus-per-rank N] [--srun-mpi PLUGIN] [--launcher-arg A]... "
               "[--command \"PROGRAM ARGS\"] [--grace-ms MS] [--quiet] "
               "[--metrics ADDR [--metrics-token-file F]]\n"
               "       rmgen-worker supervise ...   (started by the agent itself)\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (!args.empty() && args[0] == "supervise") {
    return rmgen::agent::SuperviseMain({args.begin() + 1, args.end()});
  }

  rmgen::agent::AgentOptions o;
  rmgen::agent::LauncherOptions lo;
  o.coordinator = Env("RMGEN_COORDINATOR", o.coordinator);
  o.token = Env("RMGEN_TOKEN");
  rmgen::agent::DropTokenVariables();  // no child inherits it (no threads run yet)
  char host[256] = {};
  ::gethostname(host, sizeof(host) - 1);
  o.host = host;
  o.id = o.host + (Env("SLURM_JOB_ID").empty() ? "" : "-slurm" + Env("SLURM_JOB_ID"));
  o.slots = DefaultSlots();
  lo.kind = Env("SLURM_JOB_ID").empty() ? "mpirun" : "slurm";
  lo.train_bin = rmgen::agent::DefaultTrainBin();
  std::string memory = "auto";
  std::string metrics_addr, metrics_token;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& k = args[i];
    if (k == "--token" || k.rfind("--token=", 0) == 0) {
      std::fprintf(stderr,
                   "rmgen-worker: --token is not accepted: a token on the command line is "
                   "visible to everyone on this node (ps). Put it in a file and pass "
                   "--token-file FILE, or set RMGEN_TOKEN in the environment\n");
      return 2;
    }
    if (k == "--quiet") {
      o.verbose = false;
      continue;
    }
    if (k == "-h" || k == "--help") {
      Usage();
      return 0;
    }
    if (i + 1 >= args.size()) return Usage();
    const std::string v = args[++i];
    if (k == "--coordinator") {
      o.coordinator = v;
    } else if (k == "--token-file") {
      auto t = rmgen::ReadFile(v);
      if (!t.ok()) {
        std::fprintf(stderr, "rmgen-worker: --token-file: %s\n", t.status().message().c_str());
        return 2;
      }
      const std::string first = t->substr(0, t->find('\n'));
      o.token = Split(first).empty() ? "" : Split(first)[0];
      if (o.token.empty()) {
        std::fprintf(stderr, "rmgen-worker: --token-file %s: the first line holds no token\n",
                     v.c_str());
        return 2;
      }
    } else if (k == "--tls-ca") {
      o.tls_ca = v;
    } else if (k == "--tls-cert") {
      o.tls_cert = v;
    } else if (k == "--tls-key") {
      o.tls_key = v;
    } else if (k == "--host") {
      o.host = v;
    } else if (k == "--id") {
      o.id = v;
    } else if (k == "--slots") {
      o.slots = std::atoll(v.c_str());
    } else if (k == "--memory-per-slot") {
      memory = v;
    } else if (k == "--label") {
      const auto eq = v.find('=');
      if (eq == std::string::npos || eq == 0) {
        std::fprintf(stderr, "rmgen-worker: --label wants KEY=VALUE, got '%s'\n", v.c_str());
        return 2;
      }
      o.labels[v.substr(0, eq)] = v.substr(eq + 1);
    } else if (k == "--state-dir") {
      o.state_dir = v;
    } else if (k == "--workdir") {
      o.workdir = v;
    } else if (k == "--launcher") {
      lo.kind = v;
    } else if (k == "--train-bin") {
      lo.train_bin = v;
    } else if (k == "--hostfile") {
      lo.hostfile = v;
    } else if (k == "--gpus-per-rank") {
      lo.gpus_per_rank = std::atoll(v.c_str());
    } else if (k == "--srun-mpi") {
      lo.srun_mpi = v;
    } else if (k == "--launcher-arg") {
      lo.extra.push_back(v);
    } else if (k == "--command") {
      lo.command = Split(v);
    } else if (k == "--grace-ms") {
      o.grace_ms = std::atoll(v.c_str());
    } else if (k == "--metrics") {
      metrics_addr = v;
    } else if (k == "--metrics-token-file") {
      auto t = rmgen::ReadFile(v);
      const std::string first = t.ok() ? t->substr(0, t->find('\n')) : "";
      metrics_token = Split(first).empty() ? "" : Split(first)[0];
      if (metrics_token.empty()) {
        std::fprintf(stderr, "rmgen-worker: --metrics-token-file %s: %s\n", v.c_str(),
                     t.ok() ? "the first line holds no token" : t.status().message().c_str());
        return 2;
      }
    } else {
      std::fprintf(stderr, "rmgen-worker: unknown flag %s\n", k.c_str());
      return Usage();
    }
  }
  if (o.slots < 1) {
    std::fprintf(stderr, "rmgen-worker: --slots must be >= 1\n");
    return 2;
  }
  if (memory == "auto") {
    o.memory_bytes_per_slot = rmgen::agent::DetectMemoryPerSlot(o.slots);
  } else {
    auto bytes = rmgen::agent::ParseMemoryBytes(memory);
    if (!bytes.ok()) {
      std::fprintf(stderr, "rmgen-worker: --memory-per-slot: %s\n",
                   bytes.status().message().c_str());
      return 2;
    }
    o.memory_bytes_per_slot = *bytes;
  }
  lo.as_root = ::geteuid() == 0;
  lo.local_cores = sysconf(_SC_NPROCESSORS_ONLN);
  auto launcher = rmgen::agent::MakeLauncher(lo);
  if (!launcher.ok()) {
    std::fprintf(stderr, "rmgen-worker: %s\n", launcher.status().message().c_str());
    return 2;
  }
  o.supervisor_exe = {rmgen::agent::SelfExecutable()};
  struct sigaction sa = {};
  sa.sa_handler = OnSignal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
  rmgen::agent::Agent agent(o, std::move(launcher).value());
  httplib::Server metrics_server;
  std::thread metrics_thread;
  if (!metrics_addr.empty()) {
    const size_t colon = metrics_addr.rfind(':');
    std::string mhost = colon == std::string::npos ? "" : metrics_addr.substr(0, colon);
    if (mhost.size() >= 2 && mhost.front() == '[') mhost = mhost.substr(1, mhost.size() - 2);
    const int mport = colon == std::string::npos ? -1 : std::atoi(metrics_addr.c_str() + colon + 1);
    in_addr v4{};
    const bool lo =
        mhost == "localhost" || mhost == "::1" ||
        (inet_pton(AF_INET, mhost.c_str(), &v4) == 1 && (ntohl(v4.s_addr) >> 24) == 127);
    if (mport < 0 || mhost.empty()) {
      std::fprintf(stderr, "rmgen-worker: --metrics '%s': expected HOST:PORT\n",
                   metrics_addr.c_str());
      return 2;
    }
    if (!lo && metrics_token.empty()) {
      std::fprintf(stderr,
                   "rmgen-worker: --metrics %s is beyond loopback: give --metrics-token-file\n",
                   metrics_addr.c_str());
      return 2;
    }
    metrics_server.Get(
        "/metrics", [&agent, metrics_token](const httplib::Request& req, httplib::Response& res) {
          // Compared in constant time: the reply's timing says nothing of the token.
          const std::string got = req.get_header_value("Authorization");
          const std::string want = "Bearer " + metrics_token;
          unsigned char diff = got.size() == want.size() ? 0 : 1;
          for (size_t i = 0; i < std::min(got.size(), want.size()); ++i) diff |= got[i] ^ want[i];
          if (!metrics_token.empty() && diff != 0) {
            res.status = 401;
            res.set_header("WWW-Authenticate", "Bearer realm=\"rmgen-worker\"");
            res.set_content("{\"error\":\"a valid bearer token is needed\"}", "application/json");
            return;
          }
          res.set_content(agent.MetricsText(), "text/plain; version=0.0.4; charset=utf-8");
        });
    const int bound = mport == 0 ? metrics_server.bind_to_any_port(mhost)
                                 : (metrics_server.bind_to_port(mhost, mport) ? mport : -1);
    if (bound <= 0) {
      std::fprintf(stderr, "rmgen-worker: --metrics: cannot listen on %s\n", metrics_addr.c_str());
      return 1;
    }
    std::fprintf(stderr, "rmgen-worker: metrics on http://%s:%d/metrics\n", mhost.c_str(), bound);
    metrics_thread = std::thread([&metrics_server] { metrics_server.listen_after_bind(); });
    // stop() only works once the loop runs: wait for it, so an early exit cannot hang.
    for (int i = 0; i < 5000 && !metrics_server.is_running(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  rmgen::Status s = agent.Run(&g_stop);
  if (metrics_thread.joinable()) {
    metrics_server.stop();
    metrics_thread.join();
  }
  if (!s.ok()) {
    std::fprintf(stderr, "rmgen-worker: %s\n", s.message().c_str());
    return 1;
  }
  return 0;
}
