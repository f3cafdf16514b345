#include "coordinator/results.h"

#include <cmath>
#include <cstdio>
#include <sstream>

namespace rmgen::coord {

using nlohmann::json;

Stat Summarize(const std::vector<double>& v) {
  Stat s;
  s.n = static_cast<int64_t>(v.size());
  if (v.empty()) return s;
  double sum = 0;
  for (double x : v) sum += x;
  s.mean = sum / double(v.size());
  if (v.size() < 2) {
    s.std = NAN;
    return s;
  }
  double sq = 0;
  for (double x : v) sq += (x - s.mean) * (x - s.mean);
  s.std = std::sqrt(sq / double(v.size() - 1));
  return s;
}

namespace {

std::string Pct(const Stat& s) {
  if (s.n == 0) return "-";
  char buf[64];
  if (std::isnan(s.std)) {
    std::snprintf(buf, sizeof(buf), "%.1f", 100 * s.mean);
  } else {
    std::snprintf(buf, sizeof(buf), "%.1f +- %.1f", 100 * s.mean, 100 * s.std);
  }
  return buf;
}

json StatJson(const Stat& s) {
  return {{"n", s.n}, {"mean", s.mean}, {"std", std::isnan(s.std) ? json(nullptr) : json(s.std)}};
}

const char* RewardName(const std::string& method) { return method == "exrm" ? "EXRM" : "DPORM"; }

// Fixed-width text table.
std::string Grid(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> w;
  for (const auto& r : rows) {
    for (size_t i = 0; i < r.size(); ++i) {
      if (w.size() <= i) w.push_back(0);
      w[i] = std::max(w[i], r[i].size());
    }
  }
  std::ostringstream o;
  for (size_t k = 0; k < rows.size(); ++k) {
    for (size_t i = 0; i < rows[k].size(); ++i) {
      o << (i ? "  " : "") << rows[k][i] << std::string(w[i] - rows[k][i].size(), ' ');
    }
    o << "\n";
    if (k == 0) {
      size_t total = 0;
      for (size_t x : w) total += x + 2;
      o << std::string(total - 2, '-') << "\n";
    }
  }
  return o.str();
}

std::string MdTable(const std::vector<std::vector<std::string>>& rows) {
  std::ostringstream o;
  for (size_t k = 0; k < rows.size(); ++k) {
    o << "|";
    for (const auto& c : rows[k]) o << " " << c << " |";
    o << "\n";
    if (k == 0) {
      o << "|";
      for (size_t i = 0; i < rows[k].size(); ++i) o << "---|";
      o << "\n";
    }
  }
  return o.str();
}

// Table 6 (ID / mean OOD per model) and Table 7 (per eval set) as rows of cells.
std::vector<std::vector<std::string>> Table6(const StudyResults& r) {
  std::vector<std::vector<std::string>> t = {
      {"model", "train", "DPORM ID", "EXRM ID", "DPORM OOD", "EXRM OOD", "seeds"}};
  std::map<std::string, std::map<std::string, const StudyResults::Row*>> by_model;
  std::vector<std::string> order;
  for (const auto& row : r.rows) {
    if (!by_model.count(row.model)) order.push_back(row.model);
    by_model[row.model][row.method] = &row;
  }
  for (const auto& m : order) {
    auto cell = [&](const char* method, bool id) {
      auto it = by_model[m].find(method);
      return it == by_model[m].end() ? std::string("-")
                                     : Pct(id ? it->second->id : it->second->ood);
    };
    int64_t seeds = 0;
    for (const auto& [method, row] : by_model[m]) seeds = std::max(seeds, row->id.n);
    t.push_back({m, r.train, cell("dpo", true), cell("exrm", true), cell("dpo", false),
                 cell("exrm", false), std::to_string(seeds)});
  }
  return t;
}

std::vector<std::vector<std::string>> Table7(const StudyResults& r) {
  std::vector<std::vector<std::string>> t = {
      {"model", "reward model", "eval set", "shift", "accuracy"}};
  for (const auto& row : r.rows) {
    for (const auto& set : r.id_sets) {
      auto it = row.per_set.find(set);
      t.push_back({row.model, RewardName(row.method), set, "ID",
                   it == row.per_set.end() ? "-" : Pct(it->second)});
    }
    for (const auto& set : r.ood_sets) {
      auto it = row.per_set.find(set);
      t.push_back({row.model, RewardName(row.method), set, "OOD",
                   it == row.per_set.end() ? "-" : Pct(it->second)});
    }
  }
  return t;
}

std::string WinLine(const StudyResults& r) {
  char buf[256];
  std::snprintf(buf, sizeof(buf),
                "EXRM beats DPORM: ID %lld/%lld runs (%.0f%%), OOD %lld/%lld runs (%.0f%%)",
                (long long)r.win_id.exrm_wins, (long long)r.win_id.runs, 100 * r.win_id.share(),
                (long long)r.win_ood.exrm_wins, (long long)r.win_ood.runs, 100 * r.win_ood.share());
  return buf;
}

}  // namespace

StatusOr<StudyResults> AggregateResults(const std::string& study, const std::string& setting,
                                        const std::string& train,
                                        const std::vector<std::string>& id_sets,
                                        const std::vector<std::string>& ood_sets,
                                        int64_t expected_runs,
                                        const std::vector<SeedResult>& results) {
  StudyResults r;
  r.study = study;
  r.setting = setting;
  r.train = train;
  r.id_sets = id_sets;
  r.ood_sets = ood_sets;
  r.expected_runs = expected_runs;
  // (model, method) -> seed -> per-set accuracy.
  std::map<std::pair<std::string, std::string>, std::map<int64_t, std::map<std::string, double>>>
      acc;
  std::vector<std::string> models;
  for (const auto& s : results) {
    const json& ev = s.metrics.contains("eval") ? s.metrics["eval"] : json::object();
    std::map<std::string, double> per;
    for (const auto* sets : {&id_sets, &ood_sets}) {
      for (const auto& set : *sets) {
        if (!ev.contains(set) || !ev[set].contains("accuracy")) {
          return DataLossError("results of " + s.model + "/" + s.method + "/seed" +
                               std::to_string(s.seed) + " have no accuracy for eval set '" + set +
                               "'");
        }
        per[set] = ev[set]["accuracy"].get<double>();
      }
    }
    if (std::find(models.begin(), models.end(), s.model) == models.end()) models.push_back(s.model);
    acc[{s.model, s.method}][s.seed] = per;
    ++r.finished_runs;
  }
  auto mean_of = [](const std::map<std::string, double>& per,
                    const std::vector<std::string>& sets) -> double {
    if (sets.empty()) return NAN;
    double sum = 0;
    for (const auto& s : sets) sum += per.at(s);
    return sum / double(sets.size());
  };
  for (const auto& m : models) {
    for (const char* method : {"exrm", "dpo"}) {
      auto it = acc.find({m, method});
      if (it == acc.end()) continue;
      StudyResults::Row row;
      row.model = m;
      row.method = method;
      std::vector<double> ids, oods;
      std::map<std::string, std::vector<double>> per_set;
      for (const auto& [seed, per] : it->second) {
        const double id = mean_of(per, id_sets), ood = mean_of(per, ood_sets);
        row.per_seed[seed] = {id, ood};
        ids.push_back(id);
        if (!ood_sets.empty()) oods.push_back(ood);
        for (const auto& [set, a] : per) per_set[set].push_back(a);
      }
      row.id = Summarize(ids);
      row.ood = Summarize(oods);
      for (const auto& [set, v] : per_set) row.per_set[set] = Summarize(v);
      r.rows.push_back(row);
    }
    // Win rates over seeds that have both.
    auto e = acc.find({m, "exrm"}), d = acc.find({m, "dpo"});
    if (e == acc.end() || d == acc.end()) continue;
    for (const auto& [seed, per] : e->second) {
      auto dp = d->second.find(seed);
      if (dp == d->second.end()) continue;
      ++r.win_id.runs;
      r.win_id.exrm_wins += mean_of(per, id_sets) > mean_of(dp->second, id_sets);
      if (!ood_sets.empty()) {
        ++r.win_ood.runs;
        r.win_ood.exrm_wins += mean_of(per, ood_sets) > mean_of(dp->second, ood_sets);
      }
    }
  }
  return r;
}

json StudyResults::ToJson() const {
  json rs = json::array();
  for (const auto& row : rows) {
    json per = json::object();
    for (const auto& [set, s] : row.per_set) per[set] = StatJson(s);
    json seeds = json::object();
    for (const auto& [seed, v] : row.per_seed) {
      seeds[std::to_string(seed)] = {
          {"id", v.first}, {"ood", std::isnan(v.second) ? json(nullptr) : json(v.second)}};
    }
    rs.push_back({{"model", row.model},
                  {"method", row.method},
                  {"reward_model", RewardName(row.method)},
                  {"id", StatJson(row.id)},
                  {"ood", StatJson(row.ood)},
                  {"per_set", per},
                  {"per_seed", seeds}});
  }
  return {
      {"study", study},
      {"setting", setting},
      {"train", train},
      {"id_sets", id_sets},
      {"ood_sets", ood_sets},
      {"std", "sample standard deviation over seeds (ddof = 1); null for one seed"},
      {"rows", rs},
      {"exrm_beats_dporm",
       {{"id", {{"runs", win_id.runs}, {"exrm_wins", win_id.exrm_wins}, {"share", win_id.share()}}},
        {"ood",
         {{"runs", win_ood.runs}, {"exrm_wins", win_ood.exrm_wins}, {"share", win_ood.share()}}}}},
      {"runs", {{"finished", finished_runs}, {"expected", expected_runs}}}};
}

std::string StudyResults::Table() const {
  std::ostringstream o;
  o << "Study " << study << " (setting " << setting << ", train " << train << "): " << finished_runs
    << "/" << expected_runs << " runs finished\n";
  o << "Accuracy %, mean +- sample std (ddof=1) over seeds; OOD = mean over the OOD sets\n\n";
  o << Grid(Table6(*this)) << "\n" << Grid(Table7(*this)) << "\n" << WinLine(*this) << "\n";
  return o.str();
}

std::string StudyResults::Markdown() const {
  std::ostringstream o;
  o << "### " << study << " (setting " << setting << ", train " << train << ")\n\n";
  o << "Accuracy %, mean +- sample std (ddof=1) over seeds; OOD = mean over the OOD sets. "
    << finished_runs << "/" << expected_runs << " runs finished.\n\n";
  o << MdTable(Table6(*this)) << "\n" << MdTable(Table7(*this)) << "\n" << WinLine(*this) << "\n";
  return o.str();
}

std::string StudyResults::Csv() const {
  std::ostringstream o;
  o << "study,setting,train,model,reward_model,eval_set,shift,seeds,mean,std\n";
  auto line = [&](const Row& row, const std::string& set, const char* shift, const Stat& s) {
    char buf[64];
    o << study << "," << setting << "," << train << "," << row.model << ","
      << RewardName(row.method) << "," << set << "," << shift << "," << s.n << ",";
    std::snprintf(buf, sizeof(buf), "%.6f,", s.mean);
    o << buf;
    if (!std::isnan(s.std)) {
      std::snprintf(buf, sizeof(buf), "%.6f", s.std);
      o << buf;
    }
    o << "\n";
  };
  for (const auto& row : rows) {
    line(row, "(mean ID)", "ID", row.id);
    if (!ood_sets.empty()) line(row, "(mean OOD)", "OOD", row.ood);
    for (const auto& set : id_sets) {
      if (row.per_set.count(set)) line(row, set, "ID", row.per_set.at(set));
    }
    for (const auto& set : ood_sets) {
      if (row.per_set.count(set)) line(row, set, "OOD", row.per_set.at(set));
    }
  }
  return o.str();
}

StatusOr<std::string> FormatResults(const StudyResults& r, const std::string& format) {
  if (format == "table") return r.Table();
  if (format == "md" || format == "markdown") return r.Markdown();
  if (format == "csv") return r.Csv();
  if (format == "json") return r.ToJson().dump(2) + "\n";
  return InvalidArgumentError("--format '" + format + "': expected table, csv, md or json");
}

}  // namespace rmgen::coord
