// Subcommands of the `rmgen` CLI. Each takes its arguments (after the subcommand name)
// and returns the process exit code: 0 ok, 1 failure, 2 usage error.
#pragma once

#include <string>
#include <vector>

namespace rmgen::cli {

int TokenizeCommand(const std::vector<std::string>& args);
int DataCommand(const std::vector<std::string>& args);
// `rmgen plan` (plan_command.cc): a study's jobs, batches, steps and memory, not submitted.
int PlanCommand(const std::vector<std::string>& args);
// The service commands (service_commands.cc), against rmgen-coordinator.
int SubmitCommand(const std::vector<std::string>& args);
int StatusCommand(const std::vector<std::string>& args);
int WatchCommand(const std::vector<std::string>& args);
int ReportCommand(const std::vector<std::string>& args);
int ResultsCommand(const std::vector<std::string>& args);
int CancelCommand(const std::vector<std::string>& args);
int LogsCommand(const std::vector<std::string>& args);
int WorkersCommand(const std::vector<std::string>& args);
int DrainCommand(const std::vector<std::string>& args);
// For `rmgen local`: submits STUDY.yaml to the coordinator at `address` (the request id is its
// content, so a second run resumes the same study) and checks that every job fits `slots`
// (2 when one does not); then watches a study to the end (0 when every job succeeded).
int SubmitLocal(const std::string& address, const std::string& path, int64_t slots,
                std::string* study_id);
int WatchLocal(const std::string& address, const std::string& study_id);
// `rmgen local` (local_command.cc): an embedded coordinator and agent.
int LocalCommand(const std::vector<std::string>& args);

}  // namespace rmgen::cli
