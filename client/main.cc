// rmgen: the command line of the rmgen service.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "client/commands.h"

namespace {

void Usage(FILE* out) {
  std::fprintf(out,
               "usage: rmgen <command> [options]\n"
               "\n"
               "commands:\n"
               "  tokenize   encode text or chat messages with a SentencePiece tokenizer and\n"
               "             a chat template; prints {\"ids\": [...], \"pieces\": [...]}\n"
               "  data       dataset tools: stats, convert, overlap, tokenize, synth\n"
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
  std::fprintf(stderr, "rmgen: unknown command '%s'\n\n", cmd.c_str());
  Usage(stderr);
  return 2;
}
