// `rmgen plan STUDY.yaml [--json] [--base-dir DIR]`: every job the study would submit, with
// its batch arithmetic, steps, schedule, precision and memory plan, without submitting.
// Training pairs are counted from the data where it is readable (paths relative to
// --base-dir, default the working directory: where the ranks would run).
#include <cstdio>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "client/commands.h"
#include "common/file.h"
#include "coordinator/memory_plan.h"
#include "coordinator/plan_report.h"
#include "coordinator/study.h"
#include "worker/data/catalog.h"
#include "worker/data/dataset.h"

namespace rmgen::cli {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string Under(const std::string& base, const std::string& path) {
  if (path.empty() || fs::path(path).is_absolute()) return path;
  return (fs::path(base) / path).lexically_normal().string();
}

// The pairs a job's data section trains on, read through the adapter as rmgen-train reads
// them (before tokenization, whose too-long drops only `data.too_long: drop` makes).
StatusOr<int64_t> CountPairs(const std::string& base, const json& data) {
  const json& train = data.contains("train") ? data["train"] : json(nullptr);
  if (train.is_null()) return InvalidArgumentError("no training set");
  ResolvedDataset r;
  if (train.is_string()) {
    ASSIGN_OR_RETURN(Catalog c, Catalog::Load(Under(base, data.value("catalog", "")),
                                              Under(base, data.value("data_root", ""))));
    ASSIGN_OR_RETURN(r, c.Resolve(train.get<std::string>()));
  } else {
    r.path = Under(base, train.value("path", ""));
    r.read.format = train.value("format", "");
    r.read.subset = train.value("subset", "");
    r.read.split = train.value("split", "");
  }
  r.read.limit = data.value("limit", int64_t{0});
  r.read.holdout = data.value("holdout", 0.0);  // a sweep's training leaves that slice out
  r.read.holdout_only = false;
  DatasetStats stats;
  RETURN_IF_ERROR(ReadDataset(
      r.path, r.read, [](PreferencePair&&) {}, &stats));
  return stats.pairs;
}

// "80GiB", "80GB", "81920MiB", "1.5e11": bytes.
StatusOr<int64_t> ParseBytes(const std::string& s) {
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(s, &used);
  } catch (...) {
    return InvalidArgumentError("--memory-per-slot '" + s + "': expected a size like 80GiB");
  }
  std::string unit = s.substr(used);
  const std::map<std::string, double> units = {
      {"", 1},      {"B", 1},       {"KB", 1e3},      {"MB", 1e6},      {"GB", 1e9},
      {"TB", 1e12}, {"KiB", 1024.}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1ll << 40}};
  auto it = units.find(unit);
  if (it == units.end() || !(v > 0)) {
    return InvalidArgumentError("--memory-per-slot '" + s + "': expected a size like 80GiB");
  }
  return static_cast<int64_t>(v * it->second);
}

}  // namespace

int PlanCommand(const std::vector<std::string>& args) {
  std::string path, base = ".";
  bool as_json = false;
  std::vector<coord::WorkerRecord> workers;  // what the plan checks the fit against
  int64_t slots = 0, memory = 0;
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--json") {
      as_json = true;
    } else if (args[i] == "--base-dir" && i + 1 < args.size()) {
      base = args[++i];
    } else if (args[i] == "--memory-per-slot" && i + 1 < args.size()) {
      auto b = ParseBytes(args[++i]);
      if (!b.ok()) {
        std::fprintf(stderr, "rmgen plan: %s\n", b.status().message().c_str());
        return 2;
      }
      memory = *b;
    } else if (args[i] == "--slots" && i + 1 < args.size()) {
      slots = std::atoll(args[++i].c_str());
    } else if (args[i] == "-h" || args[i] == "--help") {
      std::printf(
          "usage: rmgen plan STUDY.yaml [--json] [--base-dir DIR]\n"
          "                  [--memory-per-slot SIZE --slots N]\n"
          "  Prints every job the study would submit, without submitting: kind, model, ranks,\n"
          "  batch per rank, gradient accumulation, global batch, steps per epoch and in all,\n"
          "  learning rate and schedule, dtype / bf16 / ZeRO-1 / gradient checkpointing, and the\n"
          "  per-rank memory estimate. Training pairs are counted where the data is readable,\n"
          "  relative paths taken from DIR (default: here). --memory-per-slot 80GiB --slots 8\n"
          "  checks the fit against such a node (a model given by path needs its config.json\n"
          "  readable, or the study model's arch:) and says what would make a job fit.\n");
      return 0;
    } else if (path.empty() && args[i].rfind("--", 0) != 0) {
      path = args[i];
    } else {
      std::fprintf(stderr, "rmgen plan: unexpected argument '%s'\n", args[i].c_str());
      return 2;
    }
  }
  if (path.empty()) {
    std::fprintf(stderr, "usage: rmgen plan STUDY.yaml [--json] [--base-dir DIR]\n");
    return 2;
  }
  auto text = ReadFile(path);
  if (!text.ok()) {
    std::fprintf(stderr, "rmgen plan: %s\n", text.status().ToString().c_str());
    return 1;
  }
  auto study = coord::ParseStudy(*text, path);
  if (!study.ok()) {
    std::fprintf(stderr, "rmgen plan: %s\n", study.status().message().c_str());
    return 1;
  }
  auto jobs = coord::PlanStudy(*study, "", path);
  if (!jobs.ok()) {
    std::fprintf(stderr, "rmgen plan: %s\n", jobs.status().message().c_str());
    return 1;
  }
  if (memory > 0) {
    coord::WorkerRecord w;
    w.id = "--memory-per-slot";
    w.slots = slots > 0 ? slots : study->ranks;
    w.memory_bytes_per_slot = memory;
    workers.push_back(w);
  }
  coord::PlanReportOptions o;
  o.count_pairs = [&](const json& data) { return CountPairs(base, data); };
  o.memory = [&](const coord::JobRecord& j) {
    return coord::PlanJobMemory(j, workers, base, &*study);
  };
  const json plan = coord::DescribePlan(*jobs, o);
  if (as_json) {
    std::printf("%s\n", json({{"study", study->name}, {"setting", study->setting}, {"jobs", plan}})
                            .dump(2)
                            .c_str());
  } else {
    std::printf("%s", coord::PlanTable(*study, plan).c_str());
  }
  return 0;
}

}  // namespace rmgen::cli
