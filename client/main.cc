// rmgen: the command line of the rmgen service.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "client/commands.h"
#include "worker/agent/supervisor.h"

namespace {

void Usage(FILE* out) {
  std::fprintf(
      out,
      "usage: rmgen <command> [options]\n"
      "\n"
      "commands:\n"
      "  tokenize   encode text or chat messages with a SentencePiece tokenizer and\n"
      "             a chat template; prints {\"ids\": [...], \"pieces\": [...]}\n"
      "  data       dataset tools: stats, convert, overlap, tokenize, synth\n"
      "\n"
      "service (rmgen-coordinator; --coordinator HOST:PORT --token-file F --tls-ca PEM\n"
      "[--tls-cert PEM --tls-key PEM], or RMGEN_COORDINATOR / RMGEN_TOKEN[_FILE] / RMGEN_TLS_*,\n"
      "or ~/.config/rmgen/config.yaml):\n"
      "  plan STUDY.yaml [--json] [--base-dir DIR]      every job it would run: batch,\n"
      "             steps, schedule, precision, memory per rank (nothing submitted)\n"
      "  submit STUDY.yaml [--request-id ID] [--watch]   plan and queue a study\n"
      "  status [STUDY|JOB] [--all]                     studies, a study's jobs, a job\n"
      "  watch JOB|STUDY                                live progress until done\n"
      "  results STUDY... [--tag T] [--format table|csv|md|json]  the paper's tables\n"
      "             (6, 7, 8, Figure 3a/3b) over the studies named and those tagged T\n"
      "  report STUDY... [--tag T] --out DIR             an HTML report and the figures\n"
      "             (PNG, SVG): Figure 3b, per-run ID vs OOD, per eval set, learning\n"
      "             curves (Python: client/python, matplotlib; RMGEN_PYTHON picks it)\n"
      "  cancel JOB|STUDY                               cancel\n"
      "  logs JOB                                       events and failure log tails\n"
      "  workers                                        registered workers\n"
      "  drain WORKER [--undrain]                       stop (or resume) giving it jobs\n"
      "\n"
      "on one machine, no service to start:\n"
      "  local STUDY.yaml [--data-dir DIR] [--ranks N] run a study end to end with an\n"
      "             embedded coordinator and agent; prints the results table; run it\n"
      "             again with the same DIR to resume\n"
      "\n"
      "Run `rmgen <command> --help` for a command's options.\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    Usage(stderr);
    return 2;
  }
  const std::string cmd = argv[1];
  std::vector<std::string> args(argv + 2, argv + argc);
  if (cmd == "-h" || cmd == "--help" || cmd == "help") {
    Usage(stdout);
    return 0;
  }
  if (cmd == "tokenize") return rmgen::cli::TokenizeCommand(args);
  if (cmd == "data") return rmgen::cli::DataCommand(args);
  if (cmd == "plan") return rmgen::cli::PlanCommand(args);
  if (cmd == "submit") return rmgen::cli::SubmitCommand(args);
  if (cmd == "status") return rmgen::cli::StatusCommand(args);
  if (cmd == "watch") return rmgen::cli::WatchCommand(args);
  if (cmd == "results") return rmgen::cli::ResultsCommand(args);
  if (cmd == "report") return rmgen::cli::ReportCommand(args);
  if (cmd == "cancel") return rmgen::cli::CancelCommand(args);
  if (cmd == "logs") return rmgen::cli::LogsCommand(args);
  if (cmd == "workers") return rmgen::cli::WorkersCommand(args);
  if (cmd == "drain") return rmgen::cli::DrainCommand(args);
  if (cmd == "local") return rmgen::cli::LocalCommand(args);
  // Started by `rmgen local`'s agent, one per job attempt (worker/agent/supervisor.h).
  if (cmd == "supervise") return rmgen::agent::SuperviseMain(args);
  std::fprintf(stderr, "rmgen: unknown command '%s'\n\n", cmd.c_str());
  Usage(stderr);
  return 2;
}
