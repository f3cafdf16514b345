// Subcommands of the `rmgen` CLI. Each takes its arguments (after the subcommand name)
// and returns the process exit code: 0 ok, 1 failure, 2 usage error.
#pragma once

#include <string>
#include <vector>

namespace rmgen::cli {

int TokenizeCommand(const std::vector<std::string>& args);
int DataCommand(const std::vector<std::string>& args);
// The service commands (service_commands.cc), against rmgen-coordinator.
int SubmitCommand(const std::vector<std::string>& args);
int StatusCommand(const std::vector<std::string>& args);
int WatchCommand(const std::vector<std::string>& args);
int ResultsCommand(const std::vector<std::string>& args);
int CancelCommand(const std::vector<std::string>& args);
int LogsCommand(const std::vector<std::string>& args);
int WorkersCommand(const std::vector<std::string>& args);
int DrainCommand(const std::vector<std::string>& args);

}  // namespace rmgen::cli
