#include "worker/train/run_files.h"

#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "common/file.h"
#include "jobspec/json_read.h"
#include "jobspec/run_dir.h"
#include "worker/data/batching.h"
#include "worker/data/catalog.h"
#include "worker/model/checkpoint.h"
#include "worker/train/collectives.h"
#include "worker/train/job_inputs.h"

namespace rmgen {

namespace fs = std::filesystem;
using nlohmann::json;

StatusOr<TrainerState> TrainerState::Read(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  const json j = ParseJson(text);
  if (!j.is_object()) return DataLossError(path + ": corrupt (not a JSON object)");
  TrainerState st;
  for (const auto& [ok, key] : {std::pair{GetField(j, "step", &st.step), "step"},
                                {GetField(j, "epoch", &st.epoch), "epoch"},
                                {GetField(j, "micro", &st.micro), "micro"},
                                {GetField(j, "samples", &st.samples), "samples"},
                                {GetField(j, "skipped", &st.skipped), "skipped"},
                                {GetField(j, "spec_key", &st.spec_key), "spec_key"}}) {
    if (!ok || !j.contains(key)) {
      return DataLossError(path + ": corrupt (\"" + key + "\" missing or of the wrong type)");
    }
  }
  return st;
}

// Keeps the events of steps <= `last_step` (those the checkpoint being resumed covers), so
// a resumed run does not log the steps it repeats twice.
Status TrimEvents(const std::string& path, int64_t last_step) {
  if (!FileExists(path)) return Status::Ok();
  std::string kept;
  if (last_step > 0) {
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) {
      json e = json::parse(line, nullptr, false);
      if (!e.is_discarded() && e.value("step", int64_t{0}) <= last_step) kept += line + "\n";
    }
  }
  return WriteFileAtomic(path, kept);
}

// SaveCheckpoint swaps folders with two renames; a crash between them leaves no
// `checkpoint` but a complete `checkpoint.old` (or `checkpoint.tmp`). Put it back before
// deciding whether to resume, so the last good state is neither ignored nor deleted.
Status RecoverCheckpointSwap(const std::string& out_dir) {
  const fs::path final_dir = run_dir::Checkpoint(out_dir);
  if (fs::exists(final_dir)) return Status::Ok();
  for (const char* candidate : {run_dir::kCheckpointTmp, run_dir::kCheckpointOld}) {
    const fs::path c = fs::path(out_dir) / candidate;
    if (FileExists((c / run_dir::kTrainerState).string())) {
      std::error_code ec;
      fs::rename(c, final_dir, ec);
      if (ec) return InternalError(c.string() + ": cannot restore (" + ec.message() + ")");
      return Status::Ok();
    }
  }
  return Status::Ok();
}

// All ranks: rank 0 writes the model, every rank its optimizer files (ZeRO-1) into
// checkpoint.tmp; rank 0 then writes trainer_state.json (last: it marks a complete folder)
// and swaps folders.
Status SaveCheckpoint(Communicator* comm, const DecoderLM& model, const DataParallel& dp,
                      const TrainerState& st, const std::string& out_dir,
                      const std::string& tokenizer_path) {
  const fs::path final_dir = run_dir::Checkpoint(out_dir);
  const fs::path tmp = fs::path(out_dir) / run_dir::kCheckpointTmp;
  const fs::path old = fs::path(out_dir) / run_dir::kCheckpointOld;
  const torch::Device device = DeviceOf(model);
  std::error_code ec;
  Status s;
  if (comm->rank() == 0) {
    fs::remove_all(tmp, ec);
    SaveOptions so;
    so.tokenizer_dir = fs::absolute(tokenizer_path).parent_path().string();
    s = SaveModel(model, tmp.string(), so);
  }
  RETURN_IF_ERROR(Agree(comm, s, device, "writing the checkpoint's model"));
  RETURN_IF_ERROR(Agree(comm, dp.SaveOptimizer(tmp.string()), device,
                        "writing the checkpoint's optimizer state"));
  if (comm->rank() == 0) {
    s = WriteFileAtomic((tmp / run_dir::kTrainerState).string(), st.ToJson().dump(2) + "\n");
    fs::remove_all(old, ec);
    if (s.ok() && fs::exists(final_dir)) fs::rename(final_dir, old, ec);
    if (s.ok() && ec) {
      s = InternalError(final_dir.string() + ": cannot move aside (" + ec.message() + ")");
    }
    if (s.ok()) fs::rename(tmp, final_dir, ec);
    if (s.ok() && ec)
      s = InternalError(final_dir.string() + ": cannot rename (" + ec.message() + ")");
    if (s.ok()) fs::remove_all(old, ec);
  }
  return Agree(comm, s, device, "completing the checkpoint");
}

// OUT/ranks/rank-R.json: where rank R is (step, phase), who it is (pid, host) and when.
void WriteRankProgress(const std::string& out, int rank, int64_t step, const char* phase) {
  std::error_code ec;
  fs::create_directories(run_dir::RanksDir(out), ec);
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  json j = {
      {"rank", rank},
      {"step", step},
      {"phase", phase},
      {"pid", getpid()},
      {"host", host},
      {"unix_time",
       std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count()}};
  (void)WriteFileAtomic(run_dir::RankProgress(out, rank), j.dump() + "\n");
}

}  // namespace rmgen
