// Small pieces of the agent: protobuf and gRPC helpers, the checkpoint step, log tails,
// the instance key (agent_impl.h).
#include <fcntl.h>
#include <google/protobuf/util/json_util.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <thread>

#include "common/file.h"
#include "common/limits.h"
#include "common/utf8.h"
#include "jobspec/run_dir.h"
#include "worker/agent/agent_impl.h"
#include "worker/agent/supervisor.h"

namespace rmgen::agent {

namespace fs = std::filesystem;

json FromProto(const google::protobuf::Message& m) {
  std::string text;
  (void)google::protobuf::util::MessageToJsonString(m, &text);
  return json::parse(text, nullptr, false);
}

// `j` (an object) as a protobuf Struct; false (and *out empty) when it cannot be one.
bool ToStruct(const json& j, google::protobuf::Struct* out) {
  out->Clear();
  if (j.is_object() && google::protobuf::util::JsonStringToMessage(SafeDump(j), out).ok()) {
    return true;
  }
  out->Clear();
  return false;
}

google::protobuf::Struct ToStruct(const json& j) {
  google::protobuf::Struct s;
  (void)ToStruct(j, &s);
  return s;
}

// The coordinator is away or slow: the same call later may succeed. Retried without end
// (a pause between tries): the coordinator may be down for a while.
bool Transient(const grpc::Status& s) {
  return s.error_code() == grpc::StatusCode::UNAVAILABLE ||
         s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
}

// The call was refused because the attempt is no longer this agent's (a stale attempt, a
// job gone or moved): its ranks stop, and nothing more is sent about it.
bool Stale(const grpc::Status& s) {
  return s.error_code() == grpc::StatusCode::FAILED_PRECONDITION ||
         s.error_code() == grpc::StatusCode::NOT_FOUND ||
         s.error_code() == grpc::StatusCode::PERMISSION_DENIED;
}

// Any other error (RESOURCE_EXHAUSTED, INTERNAL, INVALID_ARGUMENT, ...) refuses that message
// for good: it is split, made smaller, or dropped, never sent again as it was.
std::string Error(const grpc::Status& s) {
  const int code = static_cast<int>(s.error_code());
  const char* known = CanonicalCodeName(code);
  const std::string name = known ? known : std::to_string(code);
  return name + ": " + SanitizeUtf8(s.error_message(), 500);
}

// The newest complete checkpoint's step in `out` (0 without one): events up to it were
// relayed by the attempt that wrote it. A state file that is not JSON, or whose step is not
// an integer, counts as no checkpoint.
int64_t CheckpointStep(const std::string& out) {
  int64_t best = 0;
  for (const char* d : {run_dir::kCheckpoint, run_dir::kCheckpointOld, run_dir::kCheckpointTmp}) {
    auto text = ReadFile(run_dir::Join(run_dir::Join(out, d), run_dir::kTrainerState));
    if (!text.ok()) continue;
    int64_t step = 0;
    if (GetField(ParseJson(*text), "step", &step)) best = std::max(best, step);
  }
  return best;
}

// The last lines of a log for CompleteJob: valid UTF-8, each at most kLogTailLine bytes (cut
// at a character boundary, "..." marking the cut), kLogTailBytes in all (the oldest dropped).
std::vector<std::string> LogTail(const std::string& path) {
  const auto lines = LastLines(path, kLogTailLines, /*max_line=*/65536, /*window=*/65536);
  std::vector<std::string> out;
  size_t total = 0;
  for (auto it = lines.rbegin(); it != lines.rend(); ++it) {
    std::string line = SanitizeUtf8(*it, kLogTailLine);
    if (total + line.size() > kLogTailBytes) break;
    total += line.size();
    out.push_back(std::move(line));
  }
  std::reverse(out.begin(), out.end());
  return out;
}

// <state_dir>/instance: this agent's random key (32 hex digits), made once and kept across
// restarts. The coordinator tells by it a restart of this agent (same key: welcome) from
// another agent registering under the same id (refused while this one's lease lives).
StatusOr<std::string> LoadInstance(const std::string& state_dir) {
  const std::string path = state_dir + "/instance";
  if (auto text = ReadFile(path); text.ok()) {
    std::string key = text->substr(0, text->find_first_of(" \t\r\n"));
    if (key.size() == 32 && key.find_first_not_of("0123456789abcdef") == std::string::npos) {
      return key;
    }
  }
  const std::string key = RandomHex(16);
  RETURN_IF_ERROR(WriteFileAtomic(path, key + "\n"));
  return key;
}

}  // namespace rmgen::agent
