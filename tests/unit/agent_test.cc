// The agent's parts without a coordinator: the launchers' command lines, and the supervisor
// with real processes (exit status, one SIGTERM per rank, the grace period, orphans, the
// lease file and its failing closed, no token in the ranks' environment, exit.json's types).
// agent_input_test.cc and agent_service_test.cc are linked into the same binary.
#include "worker/agent/agent.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

#include "common/file.h"
#include "tests/test_util.h"
#include "worker/agent/launcher.h"
#include "worker/agent/supervisor.h"

namespace rmgen::agent {
namespace {

namespace fs = std::filesystem;
using Argv = std::vector<std::string>;

Argv Command(const LauncherOptions& o, int64_t ranks) {
  auto l = MakeLauncher(o);
  EXPECT_TRUE(l.ok()) << l.status().message();
  auto argv = (*l)->Command({"s1-j3", 2, ranks, "/st/spec.json", "/out/s1-j3", ""});
  EXPECT_TRUE(argv.ok()) << argv.status().message();
  return *argv;
}

TEST(Launcher, MpirunRunsOneRankDirectlyAndSeveralUnderMpirun) {
  LauncherOptions o;
  o.train_bin = "/opt/rmgen-train";
  o.local_cores = 2;
  EXPECT_EQ(Command(o, 1), (Argv{"/opt/rmgen-train", "--spec", "/st/spec.json", "--out",
                                 "/out/s1-j3", "--quiet"}));
  EXPECT_EQ(Command(o, 2), (Argv{"mpirun", "-np", "2", "/opt/rmgen-train", "--spec",
                                 "/st/spec.json", "--out", "/out/s1-j3", "--quiet"}));
  // More ranks than cores share them; root needs OpenMPI's explicit consent.
  o.as_root = true;
  const Argv four = Command(o, 4);
  EXPECT_EQ(
      Argv(four.begin(), four.begin() + 7),
      (Argv{"mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-np", "4"}));
  // A hostfile: always mpirun (the ranks may be elsewhere), never oversubscribed.
  o.as_root = false;
  o.hostfile = "/etc/rmgen/hosts";
  o.extra = {"-x", "NCCL_DEBUG"};
  EXPECT_EQ(Command(o, 1), (Argv{"mpirun", "--hostfile", "/etc/rmgen/hosts", "-np", "1", "-x",
                                 "NCCL_DEBUG", "/opt/rmgen-train", "--spec", "/st/spec.json",
                                 "--out", "/out/s1-j3", "--quiet"}));
  EXPECT_EQ((*MakeLauncher(o))->stop_mode(), "ranks");
  // An agent over its own hostfile is one worker for the scheduler: it spans no others.
  EXPECT_FALSE((*MakeLauncher(o))->spans_hosts());
  o.hostfile.clear();
  EXPECT_TRUE((*MakeLauncher(o))->spans_hosts());
  // A job placed over several workers brings its own hostfile, which wins.
  auto spread = (*MakeLauncher(o))
                    ->Command({"s1-j4", 1, 12, "/st/spec.json", "/out/s1-j4",
                               "/st/attempts/s1-j4.1/hostfile"});
  ASSERT_TRUE(spread.ok());
  EXPECT_EQ(Argv(spread->begin(), spread->begin() + 5),
            (Argv{"mpirun", "--hostfile", "/st/attempts/s1-j4.1/hostfile", "-np", "12"}));
}

TEST(Launcher, SlurmRunsOneExclusiveStepPerAttempt) {
  LauncherOptions o;
  o.kind = "slurm";
  o.train_bin = "rmgen-train";
  EXPECT_EQ(Command(o, 1), (Argv{"srun", "--ntasks=1", "--exclusive", "--kill-on-bad-exit=1",
                                 "--job-name=rmgen-s1-j3.2", "rmgen-train", "--spec",
                                 "/st/spec.json", "--out", "/out/s1-j3", "--quiet"}));
  o.gpus_per_rank = 1;
  o.srun_mpi = "pmix";
  const Argv gpu = Command(o, 8);
  EXPECT_EQ(Argv(gpu.begin(), gpu.begin() + 7),
            (Argv{"srun", "--ntasks=8", "--exclusive", "--kill-on-bad-exit=1",
                  "--job-name=rmgen-s1-j3.2", "--gpus-per-task=1", "--mpi=pmix"}));
  EXPECT_EQ((*MakeLauncher(o))->stop_mode(), "launcher");
  // srun reaches the nodes of its own allocation only: it never spans other workers.
  EXPECT_FALSE((*MakeLauncher(o))->spans_hosts());
  auto spread = (*MakeLauncher(o))->Command({"s1-j4", 1, 12, "/st/spec.json", "/out/s1-j4", "/h"});
  EXPECT_EQ(spread.status().code(), StatusCode::kInvalidArgument);
}

TEST(Launcher, BadOptionsAndJobsAreRefused) {
  LauncherOptions o;
  o.kind = "pbs";
  EXPECT_NE(MakeLauncher(o).status().message().find("unknown launcher 'pbs'"), std::string::npos);
  o.kind = "command";
  EXPECT_FALSE(MakeLauncher(o).ok());  // no program
  o.command = {"/bin/true"};
  auto l = MakeLauncher(o);
  ASSERT_TRUE(l.ok());
  EXPECT_EQ(*(*l)->Command({"j", 1, 1, "s", "o", ""}),
            (Argv{"/bin/true", "--spec", "s", "--out", "o"}));
  EXPECT_EQ((*l)->Command({"j", 1, 0, "s", "o", ""}).status().code(), StatusCode::kInvalidArgument);
}

// A supervisor started the way the agent starts it (detached, its own session), running the
// test binary's own `supervise` mode.
class SupervisorTest : public ::testing::Test {
 protected:
  SuperviseArgs Args(const std::string& script) {
    SuperviseArgs a;
    a.dir = dir_.path();
    a.log = dir_ / "attempt.log";
    a.grace_ms = 1500;
    a.tag = "t" + std::to_string(::getpid()) + "." + std::to_string(n_++);
    a.argv = {"/bin/sh", "-c", script};
    return a;
  }
  pid_t Start(const SuperviseArgs& a) {
    auto pid = StartSupervisor({Self()}, a);
    EXPECT_TRUE(pid.ok()) << pid.status().message();
    return pid.ok() ? *pid : -1;
  }
  static std::string Self() {
    char buf[4096];
    const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
    return std::string(buf, n > 0 ? n : 0);
  }
  StatusOr<AttemptExit> WaitExit(double seconds) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (std::chrono::steady_clock::now() < end) {
      auto x = ReadExit(dir_.path());
      if (x.ok()) return x;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return ReadExit(dir_.path());
  }
  static std::string Text(const std::string& path) {
    auto t = ReadFile(path);
    return t.ok() ? *t : std::string();
  }
  std::string Log() { return Text(dir_ / "attempt.log"); }
  bool WaitFor(const std::string& text, double seconds) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (std::chrono::steady_clock::now() < end) {
      if (Log().find(text) != std::string::npos) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }
  // The job's script touches `ready` once its traps are set.
  bool WaitReady() {
    for (int i = 0; i < 400; ++i) {
      if (FileExists(dir_ / "ready")) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(25));
    }
    return false;
  }
  testing::TempDir dir_;
  int n_ = 0;
};

TEST_F(SupervisorTest, RecordsTheExitStatusAndTheOutput) {
  SuperviseArgs a = Args("echo \"tag=$RMGEN_ATTEMPT_TAG pwd=$(pwd)\"; exit 3");
  a.workdir = "/tmp";
  const pid_t pid = Start(a);
  auto x = WaitExit(20);
  ASSERT_TRUE(x.ok()) << x.status().message() << Log();
  EXPECT_EQ(x->exit_code, 3);
  EXPECT_EQ(x->signal, 0);
  EXPECT_EQ(x->cause, EndCause::kNone);
  EXPECT_NE(Log().find("tag=" + a.tag + " pwd=/tmp"), std::string::npos) << Log();
  for (int i = 0; i < 50 && SupervisorAlive(pid, a.tag); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_FALSE(SupervisorAlive(pid, a.tag));
}

TEST_F(SupervisorTest, StopGivesEachRankOneSigtermAndTheLauncherNone) {
  // A stand-in for mpirun: a launcher shell that dies on SIGTERM (as mpirun kills the job),
  // and two "ranks" that count their SIGTERMs, write it down, and exit 3.
  const std::string rank =
      "n=0; trap 'n=$((n+1)); echo \"$1 got $n\" >> " + (dir_ / "terms") +
      "; [ $n -eq 1 ] && { sleep 0.5; exit 3; }' TERM; while :; do sleep 0.05; done";
  std::ofstream(dir_ / "rank.sh") << rank << "\n";
  SuperviseArgs a = Args("trap 'exit 1' TERM; sh " + (dir_ / "rank.sh") + " a & sh " +
                         (dir_ / "rank.sh") + " b & wait; wait; exit 3");
  a.stop = "ranks";
  const pid_t pid = Start(a);
  ASSERT_TRUE(WaitFor("started pid", 10)) << Log();
  for (int i = 0; i < 100 && TaggedProcesses(a.tag).size() < 3; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_EQ(::kill(pid, SIGTERM), 0);
  auto x = WaitExit(20);
  ASSERT_TRUE(x.ok()) << Log();
  EXPECT_EQ(x->cause, EndCause::kStopped);
  EXPECT_EQ(x->exit_code, 3) << Log();  // the launcher was not signalled: it exits as its ranks
  const std::string terms = Text(dir_ / "terms");
  EXPECT_NE(terms.find("a got 1"), std::string::npos) << terms;
  EXPECT_NE(terms.find("b got 1"), std::string::npos) << terms;
  EXPECT_EQ(terms.find("got 2"), std::string::npos) << terms;
}

// The agent signals a supervisor by the pid it saved; by then the pid may be another
// process's. Only the supervisor carrying the attempt's tag gets the SIGTERM.
TEST_F(SupervisorTest, SignalSupervisorLeavesAReusedPidAlone) {
  const pid_t other = ::fork();  // stands for a process given the supervisor's pid since
  if (other == 0) {
    ::execlp("sleep", "sleep", "30", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ASSERT_GT(other, 0);
  SuperviseArgs a = Args("trap 'exit 3' TERM; while :; do sleep 0.05; done");
  const pid_t pid = Start(a);
  ASSERT_TRUE(WaitFor("started pid", 10)) << Log();
  EXPECT_FALSE(SignalSupervisor(other, a.tag));
  EXPECT_FALSE(SignalSupervisor(pid, a.tag + "x"));
  EXPECT_FALSE(SignalSupervisor(0, a.tag));
  int status = 0;
  EXPECT_EQ(::waitpid(other, &status, WNOHANG), 0);  // still running, never signalled
  EXPECT_EQ(::kill(pid, 0), 0);
  EXPECT_TRUE(SignalSupervisor(pid, a.tag));
  auto x = WaitExit(20);
  ASSERT_TRUE(x.ok()) << Log();
  EXPECT_EQ(x->cause, EndCause::kStopped);
  ::kill(other, SIGKILL);
  ::waitpid(other, &status, 0);
}

TEST_F(SupervisorTest, GracePeriodThenKillAndNoOrphans) {
  // Ignores SIGTERM, and leaves a grandchild in another process group behind.
  SuperviseArgs a = Args("trap '' TERM; setsid sleep 300 & while :; do sleep 0.05; done");
  const pid_t pid = Start(a);
  ASSERT_TRUE(WaitFor("started pid", 10));
  for (int i = 0; i < 100 && TaggedProcesses(a.tag).size() < 2; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_GE(TaggedProcesses(a.tag).size(), 2u);
  const auto t0 = std::chrono::steady_clock::now();
  ::kill(pid, SIGTERM);
  auto x = WaitExit(20);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_TRUE(x.ok()) << Log();
  EXPECT_EQ(x->signal, SIGKILL);
  EXPECT_EQ(x->cause, EndCause::kStopped);
  EXPECT_GE(s, 1.4);  // the grace period was given
  EXPECT_NE(Log().find("grace period over: SIGKILL"), std::string::npos) << Log();
  for (int i = 0; i < 40 && !TaggedProcesses(a.tag).empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(TaggedProcesses(a.tag).empty()) << "orphans left behind";
}

TEST_F(SupervisorTest, AnExpiredLeaseStopsTheAttempt) {
  SuperviseArgs a =
      Args("trap 'exit 3' TERM; touch " + (dir_ / "ready") + "; while :; do sleep 0.05; done");
  a.lease_file = dir_ / "lease";
  ASSERT_TRUE(WriteLease(a.lease_file, WallMs() + 600'000).ok());
  Start(a);
  // The lease runs out only once the job has set its trap (however slow the start).
  ASSERT_TRUE(WaitReady());
  ASSERT_TRUE(WriteLease(a.lease_file, WallMs() + 500).ok());
  EXPECT_FALSE(ReadExit(dir_.path()).ok());  // still running while the lease holds
  auto x = WaitExit(20);
  ASSERT_TRUE(x.ok()) << Log();
  EXPECT_EQ(x->cause, EndCause::kLeaseLost);
  EXPECT_EQ(x->exit_code, 3);
}

TEST_F(SupervisorTest, TheLeasesHardDeadlineCutsTheGracePeriodShort) {
  // Ignores SIGTERM; the grace period alone would let it run for a minute.
  SuperviseArgs a =
      Args("trap '' TERM; touch " + (dir_ / "ready") + "; while :; do sleep 0.05; done");
  a.grace_ms = 60'000;
  a.lease_file = dir_ / "lease";
  ASSERT_TRUE(WriteLease(a.lease_file, WallMs() + 600'000).ok());
  Start(a);
  ASSERT_TRUE(WaitReady());
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(WriteLease(a.lease_file, WallMs() + 300, WallMs() + 1500).ok());
  auto x = WaitExit(20);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_TRUE(x.ok()) << Log();
  EXPECT_EQ(x->cause, EndCause::kLeaseLost);
  EXPECT_EQ(x->signal, SIGKILL);
  EXPECT_LT(s, 10);
  EXPECT_NE(Log().find("the lease ends: SIGKILL"), std::string::npos) << Log();
}

// The lease fails closed: a lease file that cannot be read, or holds no deadline, stops the
// ranks as an expired lease would (it used to let them run on).
TEST_F(SupervisorTest, AnUnreadableLeaseFileStopsTheAttempt) {
  for (const bool remove : {false, true}) {
    SCOPED_TRACE(remove ? "removed" : "garbage");
    SuperviseArgs a =
        Args("trap 'exit 3' TERM; touch " + (dir_ / "ready") + "; while :; do sleep 0.05; done");
    a.lease_file = dir_ / "lease";
    ASSERT_TRUE(WriteLease(a.lease_file, WallMs() + 600'000).ok());
    fs::remove(dir_ / "ready");
    fs::remove(dir_ / "exit.json");
    Start(a);
    ASSERT_TRUE(WaitReady());
    if (remove) {
      fs::remove(a.lease_file);
    } else {
      ASSERT_TRUE(WriteFileAtomic(a.lease_file, "not a lease\n").ok());
    }
    const auto t0 = std::chrono::steady_clock::now();
    auto x = WaitExit(20);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ASSERT_TRUE(x.ok()) << Log();
    EXPECT_EQ(x->cause, EndCause::kLeaseLost);
    EXPECT_EQ(x->exit_code, 3);
    EXPECT_GE(s, 0.9);  // a second's tolerance first
    EXPECT_NE(Log().find("the lease file is unreadable"), std::string::npos) << Log();
  }
}

TEST_F(SupervisorTest, ALeaseFileGoneForAMomentIsTolerated) {
  SuperviseArgs a =
      Args("trap 'exit 3' TERM; touch " + (dir_ / "ready") + "; while :; do sleep 0.05; done");
  a.lease_file = dir_ / "lease";
  ASSERT_TRUE(WriteLease(a.lease_file, WallMs() + 600'000).ok());
  const pid_t pid = Start(a);
  ASSERT_TRUE(WaitReady());
  fs::remove(a.lease_file);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ASSERT_TRUE(WriteLease(a.lease_file, WallMs() + 600'000).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  EXPECT_FALSE(ReadExit(dir_.path()).ok()) << Log();  // still running
  ::kill(pid, SIGTERM);
  auto x = WaitExit(20);
  ASSERT_TRUE(x.ok()) << Log();
  EXPECT_EQ(x->cause, EndCause::kStopped);
}

// RMGEN_TOKEN* never reaches the ranks: StartSupervisor starts the supervisor without them,
// and the supervisor removes them again before it runs the launcher (however it was started).
TEST_F(SupervisorTest, TheRanksGetNoToken) {
  ::setenv("RMGEN_TOKEN", "tok-secret-1", 1);
  ::setenv("RMGEN_TOKEN_FILE", "/etc/rmgen/token", 1);
  ::setenv("RMGEN_KEEP_ME", "yes", 1);
  SuperviseArgs a = Args("env > " + (dir_ / "env") + "; touch " + (dir_ / "ready") +
                         "; while [ -e " + (dir_ / "ready") + " ]; do sleep 0.05; done");
  const pid_t pid = Start(a);
  ::unsetenv("RMGEN_TOKEN");
  ::unsetenv("RMGEN_TOKEN_FILE");
  ASSERT_TRUE(WaitReady());
  std::string supervisor_env = Text("/proc/" + std::to_string(pid) + "/environ");
  fs::remove(dir_ / "ready");
  ASSERT_TRUE(WaitExit(20).ok()) << Log();
  EXPECT_EQ(supervisor_env.find("RMGEN_TOKEN"), std::string::npos);
  EXPECT_NE(supervisor_env.find("RMGEN_KEEP_ME=yes"), std::string::npos);
  std::string env = Text(dir_ / "env");
  EXPECT_EQ(env.find("RMGEN_TOKEN"), std::string::npos) << env;
  EXPECT_EQ(env.find("tok-secret-1"), std::string::npos) << env;
  EXPECT_NE(env.find("RMGEN_KEEP_ME=yes"), std::string::npos) << env;
  EXPECT_NE(env.find("RMGEN_ATTEMPT_TAG=" + a.tag), std::string::npos) << env;

  // The supervisor started by hand, with the token in its environment.
  fs::remove(dir_ / "exit.json");
  fs::remove(dir_ / "env");
  const std::string cmd = "RMGEN_TOKEN=tok-secret-2 RMGEN_TOKEN_X=1 " + Self() +
                          " supervise --dir " + dir_.path() + " --log " + (dir_ / "attempt.log") +
                          " --tag t-by-hand -- /bin/sh -c 'env > " + (dir_ / "env") + "'";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  env = Text(dir_ / "env");
  EXPECT_NE(env.find("RMGEN_ATTEMPT_TAG=t-by-hand"), std::string::npos) << env;
  EXPECT_EQ(env.find("RMGEN_TOKEN"), std::string::npos) << env;
  ::unsetenv("RMGEN_KEEP_ME");
}

// exit.json is read with its types checked: wrong ones are an error, never an exception.
TEST_F(SupervisorTest, ADamagedExitFileIsAnErrorNotACrash) {
  EXPECT_EQ(ReadExit(dir_.path()).status().code(), StatusCode::kNotFound);
  for (const char* text : {R"({"exit_code": "0", "signal": 0})", R"({"signal": 1.5})",
                           R"({"cause": 7})", R"([1])", "{"}) {
    ASSERT_TRUE(WriteFileAtomic(dir_ / "exit.json", text).ok());
    auto x = ReadExit(dir_.path());
    EXPECT_EQ(x.status().code(), StatusCode::kDataLoss) << text;
  }
  ASSERT_TRUE(WriteFileAtomic(dir_ / "exit.json", R"({"exit_code": 4, "cause": "stopped"})").ok());
  auto x = ReadExit(dir_.path());
  ASSERT_TRUE(x.ok());
  EXPECT_EQ(x->exit_code, 4);
  EXPECT_EQ(x->signal, 0);
  EXPECT_EQ(x->cause, EndCause::kStopped);
}

TEST_F(SupervisorTest, AProgramThatCannotStartIsReported) {
  SuperviseArgs a = Args("");
  a.argv = {"/nonexistent/rmgen-train", "--spec", "x"};
  Start(a);
  auto x = WaitExit(20);
  ASSERT_TRUE(x.ok());
  EXPECT_EQ(x->exit_code, 127);
  EXPECT_NE(Log().find("cannot start /nonexistent/rmgen-train"), std::string::npos) << Log();
}

// --memory-per-slot values, and what auto finds on this machine (RAM / slots without GPUs).
TEST(AgentMemoryTest, MemoryPerSlot) {
  EXPECT_EQ(*ParseMemoryBytes("85899345920"), 85899345920);
  EXPECT_EQ(*ParseMemoryBytes("80GiB"), 80ll << 30);
  EXPECT_EQ(*ParseMemoryBytes("81920MiB"), 80ll << 30);
  EXPECT_EQ(*ParseMemoryBytes("80G"), 80'000'000'000);
  EXPECT_EQ(*ParseMemoryBytes("1.5GB"), 1'500'000'000);
  EXPECT_FALSE(ParseMemoryBytes("lots").ok());
  EXPECT_FALSE(ParseMemoryBytes("80 potatoes").ok());
  EXPECT_FALSE(ParseMemoryBytes("-1G").ok());
  const int64_t one = DetectMemoryPerSlot(1), four = DetectMemoryPerSlot(4);
  EXPECT_GT(one, 0);
  EXPECT_LE(four, one);  // RAM is shared by the slots; a GPU's is not
}

}  // namespace
}  // namespace rmgen::agent

// The test binary doubles as the supervisor it tests (as rmgen-worker and rmgen do).
int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "supervise") {
    return rmgen::agent::SuperviseMain(std::vector<std::string>(argv + 2, argv + argc));
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
