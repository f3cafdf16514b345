#include "coordinator/plan_report.h"

#include <cstdio>
#include <map>
#include <sstream>

#include "coordinator/text_table.h"

namespace rmgen::coord {
namespace {

using nlohmann::json;

const json& At(const json& j, const char* ptr) {
  static const json null;
  const json::json_pointer p(ptr);
  return j.contains(p) ? j.at(p) : null;
}

std::string Num(const json& v) {
  if (v.is_null()) return "?";
  if (v.is_number_integer()) return std::to_string(v.get<int64_t>());
  if (v.is_number()) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%g", v.get<double>());
    return buf;
  }
  if (v.is_boolean()) return v.get<bool>() ? "yes" : "no";
  return v.is_string() ? v.get<std::string>() : v.dump();
}

std::string Gb(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f GB", bytes / 1e9);
  return buf;
}

}  // namespace

json DescribePlan(const std::vector<JobRecord>& jobs, const PlanReportOptions& options) {
  // Counting reads the data: once per distinct data section.
  std::map<std::string, json> counted;
  auto pairs_of = [&](const json& data) -> json {
    if (!options.count_pairs) return nullptr;
    const std::string key = data.dump();
    auto it = counted.find(key);
    if (it != counted.end()) return it->second;
    auto n = options.count_pairs(data);
    json v = n.ok() ? json(*n) : json(nullptr);
    if (n.ok() && data.value("limit", int64_t{0}) > 0) {
      v = std::min<int64_t>(*n, data["limit"].get<int64_t>());
    }
    counted[key] = v;
    return v;
  };
  json out = json::array();
  for (size_t i = 0; i < jobs.size(); ++i) {
    const JobRecord& j = jobs[i];
    const json& s = j.spec;
    json e = {{"name", j.name},
              {"kind", j.kind},
              {"model", j.labels.value("model", "")},
              {"method", j.labels.value("method", "")},
              {"seed", j.labels.contains("seed") ? j.labels["seed"] : json(nullptr)},
              {"ranks", j.ranks},
              {"dtype", At(s, "/model/dtype")},
              {"deps", json::array()}};
    for (const auto& d : j.deps) {
      // "#<index>" within the plan.
      const size_t k = d.size() > 1 && d[0] == '#' ? std::stoul(d.substr(1)) : jobs.size();
      e["deps"].push_back(k < jobs.size() ? jobs[k].name : d);
    }
    if (j.labels.contains("iteration")) {
      e["iteration"] = j.labels["iteration"];
      e["annotator"] = j.labels.value("annotator", "");
      e["role"] = j.labels.value("role", "");
    }
    if (j.kind == "generate") {
      e["prompts"] = At(s, "/data/prompts");
      const json& index = At(s, "/data/slice_index");
      e["slice"] = (index.is_number_integer() ? std::to_string(index.get<int64_t>() + 1) : "?") +
                   " of " + Num(At(s, "/data/slice_count"));
      e["samples"] = At(s, "/generate/samples");
      e["max_new_tokens"] = At(s, "/generate/max_new_tokens");
      e["temperature"] = At(s, "/generate/temperature");
      e["top_p"] = At(s, "/generate/top_p");
    } else if (j.kind == "annotate") {
      e["reward"] = At(s, "/annotate/reward");
    } else if (j.kind == "judge") {
      e["reward"] = At(s, "/judge/reward");
    } else if (j.kind == "eval") {
      e["eval_sets"] = At(s, "/data/eval");
      e["reward"] = At(s, "/eval/reward");
      e["per_rank_batch"] = At(s, "/eval/batch_size");
    } else {
      const int64_t micro = At(s, "/train/batch_size").get<int64_t>();
      const int64_t accum = At(s, "/train/gradient_accumulation").get<int64_t>();
      const int64_t epochs = At(s, "/train/epochs").get<int64_t>();
      const int64_t max_steps = At(s, "/train/max_steps").get<int64_t>();
      e["per_rank_batch"] = (micro + j.ranks - 1) / j.ranks;
      e["gradient_accumulation"] = accum;
      e["global_micro_batch"] = micro;
      e["global_batch"] = micro * accum;
      e["epochs"] = epochs;
      e["learning_rate"] = At(s, "/train/learning_rate");
      e["schedule"] = At(s, "/train/schedule");
      const int64_t warmup_steps = At(s, "/train/warmup_steps").get<int64_t>();
      e["warmup"] = warmup_steps > 0 ? json(std::to_string(warmup_steps) + " steps")
                                     : json("ratio " + Num(At(s, "/train/warmup_ratio")));
      e["bf16"] = At(s, "/train/bf16");
      e["zero1"] = At(s, "/runtime/zero1");
      e["gradient_checkpointing"] = At(s, "/train/gradient_checkpointing");
      if (j.kind == "dpo") e["beta"] = At(s, "/dpo/beta");
      const json pairs = pairs_of(At(s, "/data"));
      e["train_pairs"] = pairs;
      if (pairs.is_number_integer()) {
        const int64_t micro_per_epoch = (pairs.get<int64_t>() + micro - 1) / micro;
        const int64_t per_epoch = (micro_per_epoch + accum - 1) / accum;
        e["steps_per_epoch"] = per_epoch;
        e["total_steps"] = max_steps > 0 ? max_steps : epochs * per_epoch;
      } else {
        e["steps_per_epoch"] = nullptr;
        e["total_steps"] = max_steps > 0 ? json(max_steps) : json(nullptr);
      }
    }
    e["memory"] = options.memory ? options.memory(j) : json(nullptr);
    out.push_back(std::move(e));
  }
  return out;
}

std::string PlanTable(const Study& study, const json& plan) {
  TextRows train = {{"job", "ranks", "batch/rank", "accum", "global", "pairs", "steps/epoch",
                     "steps", "lr", "schedule", "precision", "memory/rank", "fits"}};
  TextRows eval = {{"job", "ranks", "batch/rank", "reward", "eval sets", "memory/rank", "fits"}};
  TextRows iterative = {{"job", "kind", "iteration", "annotator", "what"}};
  auto precision = [](const json& e) {
    std::string p = Num(e["dtype"]);
    if (e.value("bf16", false)) p += "+bf16";
    if (e.value("zero1", false)) p += " zero1";
    if (e.value("gradient_checkpointing", false)) p += " ckpt";
    return p;
  };
  // Job names without the study's prefix (the header names the study).
  const std::string prefix = study.name + "/";
  auto short_name = [&](const json& e) {
    std::string n = e["name"].get<std::string>();
    return n.rfind(prefix, 0) == 0 ? n.substr(prefix.size()) : n;
  };
  auto memory = [](const json& e) -> std::pair<std::string, std::string> {
    const json& m = e["memory"];
    if (!m.is_object() || !m.contains("total_bytes")) return {"?", "?"};
    const json& fits = m.contains("fits") ? m["fits"] : json(nullptr);
    return {Gb(m["total_bytes"].get<double>()),
            fits.is_boolean() ? (fits.get<bool>() ? "yes" : "NO") : "?"};
  };
  int64_t total_steps = 0;
  bool steps_known = true;
  std::vector<std::string> advice;
  for (const auto& e : plan) {
    const auto [mem, fits] = memory(e);
    if (fits == "NO" && e["memory"].contains("advice")) {
      for (const auto& a : e["memory"]["advice"]) {
        advice.push_back(e["name"].get<std::string>() + ": " + Num(a));
      }
    }
    const std::string kind = e["kind"].get<std::string>();
    if (kind == "generate" || kind == "annotate" || kind == "judge") {
      std::string what;
      if (kind == "generate") {
        what = Num(e["samples"]) + " x " + Num(e["max_new_tokens"]) + " tokens a prompt of " +
               Num(e["prompts"]) + " (slice " + Num(e["slice"]) + "), temperature " +
               Num(e["temperature"]) + ", top_p " + Num(e["top_p"]);
      } else {
        what = (kind == "annotate" ? "best/worst by " : "win rate against policy 0 by ") +
               Num(e["reward"]);
      }
      iterative.push_back({short_name(e), kind, Num(e.value("iteration", json())),
                           e.value("annotator", std::string("-")).empty()
                               ? "-"
                               : e.value("annotator", std::string("-")),
                           what});
      continue;
    }
    if (e.contains("iteration")) {  // an iteration's DPO: its pairs exist once annotated
      iterative.push_back(
          {short_name(e), kind, Num(e["iteration"]), Num(e["annotator"]),
           "DPO from the previous policy on the annotated pairs, lr " + Num(e["learning_rate"]) +
               ", " + Num(e["schedule"]) +
               (e["total_steps"].is_null() ? std::string()
                                           : ", " + Num(e["total_steps"]) + " steps")});
      continue;
    }
    if (kind == "eval") {
      std::string sets;
      for (const auto& s : e["eval_sets"]) sets += (sets.empty() ? "" : ", ") + Num(s);
      eval.push_back({short_name(e), Num(e["ranks"]), Num(e["per_rank_batch"]), Num(e["reward"]),
                      sets, mem, fits});
      continue;
    }
    if (e["total_steps"].is_number_integer()) {
      total_steps += e["total_steps"].get<int64_t>();
    } else {
      steps_known = false;
    }
    std::string lr = Num(e["learning_rate"]);
    if (e.contains("beta")) lr += " (beta " + Num(e["beta"]) + ")";
    std::string schedule = Num(e["schedule"]);
    if (e["warmup"] != "ratio 0") schedule += ", warmup " + Num(e["warmup"]);
    train.push_back({short_name(e), Num(e["ranks"]), Num(e["per_rank_batch"]),
                     Num(e["gradient_accumulation"]), Num(e["global_batch"]), Num(e["train_pairs"]),
                     Num(e["steps_per_epoch"]),
                     Num(e["total_steps"]) + " (" + Num(e["epochs"]) + " ep)", lr, schedule,
                     precision(e), mem, fits});
  }
  std::ostringstream o;
  o << "Study " << study.name << " (setting " << study.setting << "): " << plan.size() << " jobs, "
    << (train.size() - 1) << " training and " << (eval.size() - 1) << " eval";
  if (iterative.size() > 1) o << ", " << (iterative.size() - 1) << " of iterative DPO";
  o << "\n";
  o << "global batch = batch/rank x ranks x accum; steps/epoch = ceil(ceil(pairs / (batch/rank "
       "x ranks)) / accum)\n\n";
  if (train.size() > 1) o << TextGrid(train) << "\n";
  if (eval.size() > 1) o << TextGrid(eval) << "\n";
  if (iterative.size() > 1) o << TextGrid(iterative) << "\n";
  o << "Training steps in all: " << (steps_known ? std::to_string(total_steps) : "unknown")
    << (steps_known ? "" : " (pairs unknown: the data is not readable here; see --base-dir)")
    << "\n";
  if (!advice.empty()) {
    o << "\nDoes not fit:\n";
    for (const auto& a : advice) o << "  " << a << "\n";
  }
  return o.str();
}

}  // namespace rmgen::coord
