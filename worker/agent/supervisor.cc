#include "worker/agent/supervisor.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string_view>
#include <thread>
#include <utility>

#include "common/file.h"
#include "jobspec/json_read.h"
#include "jobspec/run_dir.h"

extern char** environ;

namespace rmgen::agent {
namespace {

using nlohmann::json;

// A lease file that cannot be read (or holds no deadline) this long, over at least this many
// polls, counts as an expired lease: a file being replaced (rename) is never missing, but a
// network file system may hiccup.
constexpr int64_t kLeaseUnreadableMs = 1000;
constexpr int kLeaseUnreadablePolls = 3;

std::atomic<bool> g_stop{false};
void OnStop(int) { g_stop = true; }

std::vector<char*> CArgs(const std::vector<std::string>& v) {
  std::vector<char*> out;
  for (const auto& s : v) out.push_back(const_cast<char*>(s.c_str()));
  out.push_back(nullptr);
  return out;
}

// Reads a small /proc file whole ("" when the process is gone or not ours to read).
std::string ProcFile(pid_t pid, const char* name) {
  auto text = ReadFile("/proc/" + std::to_string(pid) + "/" + name);
  return text.ok() ? *text : std::string();
}

void Note(const std::string& log, const std::string& line) {
  const int fd = ::open(log.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return;
  const std::string text = "[rmgen supervisor] " + line + "\n";
  (void)!::write(fd, text.data(), text.size());
  ::close(fd);
}

bool IsTokenVariable(std::string_view entry) { return entry.rfind("RMGEN_TOKEN", 0) == 0; }

// The lease file: "STOP KILL", two deadlines in Unix milliseconds (an older agent wrote STOP
// alone). False, with the reason, when it cannot be read or holds no positive STOP deadline.
bool ReadLease(const std::string& path, int64_t* stop, int64_t* kill, std::string* why) {
  auto text = ReadFile(path);
  if (!text.ok()) {
    *why = text.status().message();
    return false;
  }
  const char* p = text->c_str();
  char* end = nullptr;
  errno = 0;
  const long long s = std::strtoll(p, &end, 10);
  if (end == p || errno != 0 || s <= 0) {
    *why = path + ": no deadline in '" + text->substr(0, 40) + "'";
    return false;
  }
  p = end;
  long long k = 0;
  while (*p == ' ' || *p == '\t') ++p;
  if (*p != '\0' && *p != '\n') {
    errno = 0;
    k = std::strtoll(p, &end, 10);
    if (end == p || errno != 0 || k < 0) {
      *why = path + ": bad second deadline in '" + text->substr(0, 40) + "'";
      return false;
    }
    p = end;
  }
  while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') ++p;
  if (*p != '\0' || static_cast<size_t>(p - text->c_str()) != text->size()) {
    *why = path + ": unexpected text after the deadlines";
    return false;
  }
  *stop = s;
  *kill = k;
  return true;
}

// Whether any process is left in process group `pgid`.
bool GroupAlive(pid_t pgid) { return ::kill(-pgid, 0) == 0; }

void KillTagged(const std::string& tag, int sig) {
  for (pid_t p : TaggedProcesses(tag)) ::kill(p, sig);
}

StatusOr<SuperviseArgs> ParseArgs(const std::vector<std::string>& a) {
  SuperviseArgs s;
  size_t i = 0;
  for (; i < a.size(); ++i) {
    if (a[i] == "--") {
      ++i;
      break;
    }
    if (i + 1 >= a.size())
      return InvalidArgumentError("supervise: flag " + a[i] + " needs a value");
    const std::string& v = a[++i];
    if (a[i - 1] == "--dir") {
      s.dir = v;
    } else if (a[i - 1] == "--log") {
      s.log = v;
    } else if (a[i - 1] == "--lease-file") {
      s.lease_file = v;
    } else if (a[i - 1] == "--grace-ms") {
      s.grace_ms = std::atoll(v.c_str());
    } else if (a[i - 1] == "--tag") {
      s.tag = v;
    } else if (a[i - 1] == "--workdir") {
      s.workdir = v;
    } else if (a[i - 1] == "--stop") {
      if (v != "ranks" && v != "launcher")
        return InvalidArgumentError("supervise: --stop ranks|launcher");
      s.stop = v;
    } else {
      return InvalidArgumentError("supervise: unknown flag " + a[i - 1]);
    }
  }
  s.argv.assign(a.begin() + static_cast<long>(i), a.end());
  if (s.dir.empty() || s.log.empty() || s.tag.empty() || s.argv.empty()) {
    return InvalidArgumentError(
        "usage: supervise --dir D --log F --tag T [--lease-file F] [--grace-ms MS] "
        "[--workdir D] -- ARGV...");
  }
  return s;
}

}  // namespace

int64_t WallMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

int64_t MonoMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

Status WriteLease(const std::string& path, int64_t stop_ms, int64_t kill_ms) {
  return WriteFileAtomic(path, std::to_string(stop_ms) + " " + std::to_string(kill_ms) + "\n");
}

// Every process but this one whose /proc/PID/`file` satisfies `match`.
template <typename Match>
std::vector<pid_t> ProcessesWhere(const char* file, Match match) {
  std::vector<pid_t> out;
  DIR* d = ::opendir("/proc");
  if (!d) return out;
  while (dirent* e = ::readdir(d)) {
    char* end = nullptr;
    const long pid = std::strtol(e->d_name, &end, 10);
    if (*end != '\0' || pid <= 0 || pid == ::getpid()) continue;
    if (match(ProcFile(static_cast<pid_t>(pid), file))) out.push_back(static_cast<pid_t>(pid));
  }
  ::closedir(d);
  return out;
}

std::vector<pid_t> TaggedProcesses(const std::string& tag) {
  const std::string needle = "RMGEN_ATTEMPT_TAG=" + tag;
  return ProcessesWhere("environ", [&](const std::string& env) {
    // environ is NUL-separated: match a whole entry.
    size_t at = 0;
    while ((at = env.find(needle, at)) != std::string::npos) {
      const bool starts = at == 0 || env[at - 1] == '\0';
      const size_t after = at + needle.size();
      if (starts && (after == env.size() || env[after] == '\0')) return true;
      at = after;
    }
    return false;
  });
}

std::vector<pid_t> SupervisorsOf(const std::string& dir) {
  return ProcessesWhere("cmdline", [&](const std::string& cmd) {
    std::vector<std::string_view> argv;
    for (size_t at = 0; at < cmd.size();) {
      const size_t nul = cmd.find('\0', at);
      const size_t stop = nul == std::string::npos ? cmd.size() : nul;
      argv.emplace_back(cmd.data() + at, stop - at);
      at = stop + 1;
    }
    bool supervise = false, ours = false;
    for (size_t i = 0; i < argv.size(); ++i) {
      if (argv[i] == "--") break;  // the ranks' own arguments
      supervise = supervise || argv[i] == "supervise";
      ours = ours || (argv[i] == "--dir" && i + 1 < argv.size() && argv[i + 1] == dir);
    }
    return supervise && ours;
  });
}

bool SupervisorAlive(pid_t pid, const std::string& tag) {
  if (pid <= 0 || ::kill(pid, 0) != 0) return false;
  std::string cmd = ProcFile(pid, "cmdline");
  for (char& c : cmd) c = c == '\0' ? ' ' : c;
  if (cmd.find("supervise") == std::string::npos ||
      cmd.find(" " + tag + " ") == std::string::npos) {
    return false;
  }
  // A zombie (our own child that ended but is not reaped yet) is not alive.
  const std::string stat = ProcFile(pid, "stat");
  const size_t paren = stat.rfind(')');
  return paren == std::string::npos || paren + 2 >= stat.size() || stat[paren + 2] != 'Z';
}

bool SignalSupervisor(pid_t pid, const std::string& tag) {
  return SupervisorAlive(pid, tag) && ::kill(pid, SIGTERM) == 0;
}

StatusOr<AttemptExit> ReadExit(const std::string& dir) {
  const std::string path = run_dir::Join(dir, run_dir::kExit);
  if (!FileExists(path)) return NotFoundError(path + ": the attempt still runs");
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  const json j = ParseJson(text);
  if (!j.is_object()) return DataLossError(path + ": not a JSON object");
  auto x = AttemptExit::FromJson(j);
  if (!x.ok()) return DataLossError(path + ": " + x.status().message());
  return x;
}

int SuperviseMain(const std::vector<std::string>& raw) {
  auto parsed = ParseArgs(raw);
  if (!parsed.ok()) {
    std::fprintf(stderr, "%s\n", parsed.status().message().c_str());
    return 2;
  }
  const SuperviseArgs a = *parsed;
  auto finish = [&](int code, int sig, EndCause cause, const std::string& detail = "") {
    AttemptExit x;
    x.exit_code = code;
    x.signal = sig;
    x.cause = cause;
    x.detail = detail;
    x.ended_ms = WallMs();
    Status s = WriteFileAtomic(run_dir::Join(a.dir, run_dir::kExit), SafeDump(x.ToJson()) + "\n");
    if (!s.ok()) Note(a.log, "cannot write exit.json: " + s.message());
    return s.ok() ? 0 : 1;
  };
  struct sigaction sa = {};
  sa.sa_handler = OnStop;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  signal(SIGHUP, SIG_IGN);
  signal(SIGPIPE, SIG_IGN);
  // StartSupervisor started us with SIGTERM and SIGINT blocked, so a stop sent at once waits
  // for the handler instead of killing us before exit.json exists.
  sigset_t stops;
  sigemptyset(&stops);
  sigaddset(&stops, SIGTERM);
  sigaddset(&stops, SIGINT);
  sigprocmask(SIG_UNBLOCK, &stops, nullptr);

  auto args = CArgs(a.argv);
  const pid_t child = ::fork();
  if (child < 0)
    return finish(-1, 0, EndCause::kStartFailed, std::string("fork: ") + std::strerror(errno));
  if (child == 0) {
    ::setpgid(0, 0);
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
    signal(SIGPIPE, SIG_DFL);
    const int fd = ::open(a.log.c_str(), O_WRONLY | O_APPEND | O_CREAT, 0644);
    if (fd >= 0) {
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      ::close(fd);
    }
    if (!a.workdir.empty() && ::chdir(a.workdir.c_str()) != 0) {
      std::fprintf(stderr, "[rmgen supervisor] cannot enter %s: %s\n", a.workdir.c_str(),
                   std::strerror(errno));
      _exit(127);
    }
    DropTokenVariables();  // the ranks run anything: they get no credentials
    ::setenv("RMGEN_ATTEMPT_TAG", a.tag.c_str(), 1);
    ::execvp(args[0], args.data());
    std::fprintf(stderr, "[rmgen supervisor] cannot start %s: %s\n", args[0], std::strerror(errno));
    _exit(127);
  }
  ::setpgid(child, child);
  Note(a.log, "started pid " + std::to_string(child) + ": " + a.argv[0]);

  EndCause cause = EndCause::kNone;
  // The lease's deadlines as last read (kill_by: the hard one; 0: none). The lease fails
  // closed: a lease file that stays unreadable (kLeaseUnreadableMs) is an expired lease.
  int64_t term_at = 0, stop_at = 0, kill_by = 0;
  int64_t unreadable_since = 0;
  int unreadable_polls = 0;
  std::string lease_problem;  // set once the lease counts as lost for being unreadable
  bool killed = false;
  int status = 0;
  for (;;) {
    const pid_t r = ::waitpid(child, &status, WNOHANG);
    if (r == child) break;
    if (r < 0 && errno != EINTR) {
      status = 0;
      break;
    }
    const int64_t now = WallMs();
    if (!a.lease_file.empty() && lease_problem.empty()) {
      int64_t stop = 0, kill = 0;
      std::string why;
      if (ReadLease(a.lease_file, &stop, &kill, &why)) {
        stop_at = stop;
        kill_by = kill;
        unreadable_since = 0;
        unreadable_polls = 0;
      } else {
        // The deadlines read before still hold meanwhile.
        if (unreadable_since == 0) unreadable_since = now;
        ++unreadable_polls;
        if (now - unreadable_since >= kLeaseUnreadableMs &&
            unreadable_polls >= kLeaseUnreadablePolls) {
          lease_problem = "the lease file is unreadable (" + why + ")";
        }
      }
    }
    if (cause == EndCause::kNone) {
      if (g_stop) {
        cause = EndCause::kStopped;
      } else if (!lease_problem.empty()) {
        cause = EndCause::kLeaseLost;
        Note(a.log, lease_problem);
      } else if (stop_at > 0 && stop_at < now) {
        cause = EndCause::kLeaseLost;
      }
      if (cause != EndCause::kNone) {
        Note(a.log, std::string(EndCauseName(cause)) + ": SIGTERM to the ranks (SIGKILL in " +
                        std::to_string(a.grace_ms) + " ms)");
        std::vector<pid_t> targets;
        if (a.stop == "ranks") {
          for (pid_t p : TaggedProcesses(a.tag)) {
            if (p != child) targets.push_back(p);
          }
        }
        if (targets.empty()) targets.push_back(child);
        for (pid_t p : targets) ::kill(p, SIGTERM);
        term_at = now;
      }
    }
    if (cause != EndCause::kNone && !killed &&
        (now - term_at > a.grace_ms || (kill_by > 0 && now > kill_by))) {
      Note(a.log,
           now - term_at > a.grace_ms ? "grace period over: SIGKILL" : "the lease ends: SIGKILL");
      ::kill(-child, SIGKILL);
      KillTagged(a.tag, SIGKILL);
      killed = true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  // The launcher is gone; its ranks must be too. Anything left in its group, or anywhere on
  // this node with the attempt's tag (a rank that changed its process group), is killed.
  if (GroupAlive(child) || !TaggedProcesses(a.tag).empty()) {
    ::kill(-child, SIGTERM);
    KillTagged(a.tag, SIGTERM);
    const int64_t until = WallMs() + a.grace_ms;
    while (WallMs() < until && !(kill_by > 0 && WallMs() > kill_by) &&
           (GroupAlive(child) || !TaggedProcesses(a.tag).empty())) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    ::kill(-child, SIGKILL);
    KillTagged(a.tag, SIGKILL);
    Note(a.log, "killed processes left behind by the launcher");
  }
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  const int sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
  Note(a.log, "ended: " + (sig ? "signal " + std::to_string(sig) : "exit " + std::to_string(code)) +
                  (cause == EndCause::kNone ? "" : std::string(" (") + EndCauseName(cause) + ")"));
  return finish(code, sig, cause);
}

void DropTokenVariables() {
  std::vector<std::string> names;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    const std::string_view entry(*e);
    if (IsTokenVariable(entry)) names.emplace_back(entry.substr(0, entry.find('=')));
  }
  for (const auto& n : names) ::unsetenv(n.c_str());
}

StatusOr<pid_t> StartSupervisor(const std::vector<std::string>& exe_prefix,
                                const SuperviseArgs& a) {
  std::vector<std::string> argv = exe_prefix;
  argv.push_back("supervise");
  for (const auto& [k, v] :
       std::vector<std::pair<std::string, std::string>>{{"--dir", a.dir},
                                                        {"--log", a.log},
                                                        {"--lease-file", a.lease_file},
                                                        {"--grace-ms", std::to_string(a.grace_ms)},
                                                        {"--tag", a.tag},
                                                        {"--workdir", a.workdir},
                                                        {"--stop", a.stop}}) {
    argv.push_back(k);
    argv.push_back(v);
  }
  argv.push_back("--");
  argv.insert(argv.end(), a.argv.begin(), a.argv.end());
  auto args = CArgs(argv);
  // The supervisor (and so the ranks) starts without the agent's credentials. Built before
  // the fork: the agent has threads, and a forked child may only exec.
  std::vector<std::string> env;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    if (!IsTokenVariable(*e)) env.emplace_back(*e);
  }
  auto envp = CArgs(env);
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0)
    return InternalError(std::string("pipe: ") + std::strerror(errno));
  // Double fork: the supervisor is nobody's child (no zombie to reap) and leads its own
  // session, so neither the agent's end nor a Ctrl-C on its terminal reaches the ranks.
  const pid_t first = ::fork();
  if (first < 0) return InternalError(std::string("fork: ") + std::strerror(errno));
  if (first == 0) {
    ::setsid();
    const pid_t second = ::fork();
    if (second != 0) {
      (void)!::write(fds[1], &second, sizeof(second));
      _exit(second > 0 ? 0 : 1);
    }
    const int null = ::open("/dev/null", O_RDWR);
    if (null >= 0) {
      ::dup2(null, 0);
      ::dup2(null, 1);
      ::dup2(null, 2);
    }
    ::closefrom(3);
    sigset_t stops;
    sigemptyset(&stops);
    sigaddset(&stops, SIGTERM);
    sigaddset(&stops, SIGINT);
    sigprocmask(SIG_BLOCK, &stops, nullptr);  // until SuperviseMain has its handler
    ::execve(args[0], args.data(), envp.data());
    _exit(127);
  }
  ::close(fds[1]);
  pid_t pid = -1;
  const ssize_t n = ::read(fds[0], &pid, sizeof(pid));
  ::close(fds[0]);
  int st = 0;
  ::waitpid(first, &st, 0);
  if (n != sizeof(pid) || pid <= 0) return InternalError("could not start the supervisor");
  return pid;
}

}  // namespace rmgen::agent
