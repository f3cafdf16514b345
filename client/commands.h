// Subcommands of the `rmgen` CLI. Each takes its arguments (after the subcommand name)
// and returns the process exit code: 0 ok, 1 failure, 2 usage error.
#pragma once

#include <string>
#include <vector>

namespace rmgen::cli {

int TokenizeCommand(const std::vector<std::string>& args);
int DataCommand(const std::vector<std::string>& args);

}  // namespace rmgen::cli
