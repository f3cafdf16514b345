// Runs the `rmgen` binary (RMGEN_CLI) with arguments; returns its exit code and output.
#pragma once

#include <sys/wait.h>

#include <cstdio>
#include <string>

namespace rmgen::testing {

struct CliResult {
  int code;
  std::string out;  // stdout, then stderr when `merge_stderr`
};

inline CliResult RunCli(const std::string& args, bool merge_stderr = true) {
  const std::string cmd =
      std::string(RMGEN_CLI) + " " + args + (merge_stderr ? " 2>&1" : " 2>/dev/null");
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  const int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

}  // namespace rmgen::testing
