#include "coordinator/results.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <set>
#include <sstream>
#include <tuple>

#include "coordinator/text_table.h"
#include "worker/data/rewardbench.h"

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

double RewardBenchSection(const std::string& section, const json& subsets) {
  if (!subsets.is_object()) return NAN;
  double num = 0, den = 0;
  for (const auto& w : kRewardBenchSubsets) {
    if (section != w.section) continue;
    auto it = subsets.find(w.subset);
    if (it == subsets.end() || !it->is_object()) continue;
    auto acc = it->find("accuracy");
    if (acc == it->end() || !acc->is_number()) continue;
    auto n = it->find("n");
    if (n != it->end() && n->is_number() && n->get<double>() <= 0) continue;
    num += w.weight * acc->get<double>();
    den += w.weight;
  }
  return den > 0 ? num / den : NAN;
}

std::string ShiftKind(const std::string& setting) {
  std::string s;
  for (char c : setting) {
    if (c != ' ') s += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  if (s == "i(a)" || s == "i(b)" || s == "i(c)") return "mixture";
  if (s == "ii(a)") return "response shift";
  if (s == "ii(b)") return "prompt shift";
  return "other";
}

namespace {

const char* kStdNote = "sample standard deviation over seeds (ddof = 1); null for one seed";

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

// A count (mean over seeds): an integer when it is one.
std::string Count(double x) {
  char buf[64];
  if (std::fabs(x - std::round(x)) < 1e-9) {
    std::snprintf(buf, sizeof(buf), "%lld", static_cast<long long>(std::llround(x)));
  } else {
    std::snprintf(buf, sizeof(buf), "%.1f", x);
  }
  return buf;
}

// "n=2000 ties=3 tie-half 74.9" (means over seeds); "-" where the metrics had none.
std::string CountsCell(const SetCounts& c) {
  if (c.pairs.n == 0 && c.ties.n == 0 && c.acc_tie_half.n == 0) return "-";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f", 100 * c.acc_tie_half.mean);
  return "n=" + (c.pairs.n ? Count(c.pairs.mean) : "-") +
         " ties=" + (c.ties.n ? Count(c.ties.mean) : "-") + " tie-half " +
         (c.acc_tie_half.n ? std::string(buf) : "-");
}

json Num(const Stat& s) { return s.n ? json(s.mean) : json(nullptr); }

json StatJson(const Stat& s) {
  return {{"n", s.n}, {"mean", s.mean}, {"std", std::isnan(s.std) ? json(nullptr) : json(s.std)}};
}

json CountsJson(const SetCounts& c) {
  return {{"n", Num(c.pairs)}, {"ties", Num(c.ties)}, {"acc_tie_half", Num(c.acc_tie_half)}};
}

const char* RewardName(const std::string& method) { return method == "exrm" ? "EXRM" : "DPORM"; }

bool Contains(const std::vector<std::string>& v, const std::string& x) {
  return std::find(v.begin(), v.end(), x) != v.end();
}

const char* ShiftOf(const StudyResults& r, const std::string& set) {
  if (Contains(r.id_sets, set)) return "ID";
  if (Contains(r.ood_sets, set)) return "OOD";
  return "benchmark";
}

std::string CsvField(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

// A (study, row) of the report, in the order of Tables 7 and 8: by model (first seen
// first), then reward model (EXRM, DPORM), then study.
struct RowRef {
  const StudyResults* study;
  const StudyResults::Row* row;
};

std::vector<std::string> ModelOrder(const ResultsReport& r) {
  std::vector<std::string> models;
  for (const auto& s : r.studies) {
    for (const auto& row : s.rows) {
      if (!Contains(models, row.model)) models.push_back(row.model);
    }
  }
  return models;
}

std::vector<RowRef> OrderedRows(const ResultsReport& r) {
  std::vector<RowRef> out;
  for (const auto& m : ModelOrder(r)) {
    for (const char* method : {"exrm", "dpo"}) {
      for (const auto& s : r.studies) {
        for (const auto& row : s.rows) {
          if (row.model == m && row.method == method) out.push_back({&s, &row});
        }
      }
    }
  }
  return out;
}

bool Several(const ResultsReport& r) { return r.studies.size() > 1; }

// Table 6: per (model, train set): ID and mean OOD of both reward models.
std::vector<std::vector<std::string>> Table6(const ResultsReport& r) {
  std::vector<std::vector<std::string>> t = {
      {"model", "train", "DPORM ID", "EXRM ID", "DPORM OOD", "EXRM OOD", "seeds"}};
  if (Several(r)) t[0].push_back("study");
  for (const auto& m : ModelOrder(r)) {
    for (const auto& s : r.studies) {
      std::map<std::string, const StudyResults::Row*> by_method;
      for (const auto& row : s.rows) {
        if (row.model == m) by_method[row.method] = &row;
      }
      if (by_method.empty()) continue;
      auto cell = [&](const char* method, bool id) {
        auto it = by_method.find(method);
        return it == by_method.end() ? std::string("-")
                                     : Pct(id ? it->second->id : it->second->ood);
      };
      int64_t seeds = 0;
      for (const auto& [method, row] : by_method) seeds = std::max(seeds, row->id.n);
      t.push_back({m, s.train, cell("dpo", true), cell("exrm", true), cell("dpo", false),
                   cell("exrm", false), std::to_string(seeds)});
      if (Several(r)) t.back().push_back(s.study);
    }
  }
  return t;
}

std::vector<std::string> RowHead(const ResultsReport& r, const RowRef& x) {
  std::vector<std::string> h = {x.row->model, RewardName(x.row->method), x.study->train};
  if (Several(r)) h.push_back(x.study->study);
  return h;
}

std::vector<std::string> HeadTitles(const ResultsReport& r) {
  std::vector<std::string> h = {"model", "reward model", "train"};
  if (Several(r)) h.push_back("study");
  return h;
}

// Table 7 as a grid: (model, reward model, train set) x every eval set; * marks the row's
// in-distribution sets, - a set its study did not evaluate.
std::vector<std::vector<std::string>> Table7Grid(const ResultsReport& r) {
  std::vector<std::vector<std::string>> t = {HeadTitles(r)};
  for (const auto& set : r.eval_sets) t[0].push_back(set);
  for (const auto& x : OrderedRows(r)) {
    auto line = RowHead(r, x);
    for (const auto& set : r.eval_sets) {
      auto it = x.row->per_set.find(set);
      if (it == x.row->per_set.end()) {
        line.push_back("-");
      } else {
        line.push_back(Pct(it->second) + (Contains(x.study->id_sets, set) ? "*" : ""));
      }
    }
    t.push_back(line);
  }
  return t;
}

// Table 7 per eval set, with rmgen-train's counts.
std::vector<std::vector<std::string>> Table7Sets(const ResultsReport& r) {
  std::vector<std::vector<std::string>> t = {HeadTitles(r)};
  for (const char* h : {"eval set", "shift", "accuracy", "n / ties / acc_tie_half"}) {
    t[0].push_back(h);
  }
  for (const auto& x : OrderedRows(r)) {
    for (const auto* sets : {&x.study->id_sets, &x.study->ood_sets, &x.study->benchmark_sets}) {
      for (const auto& set : *sets) {
        auto line = RowHead(r, x);
        auto it = x.row->per_set.find(set);
        auto c = x.row->counts.find(set);
        line.push_back(set);
        line.push_back(ShiftOf(*x.study, set));
        line.push_back(it == x.row->per_set.end() ? "-" : Pct(it->second));
        line.push_back(c == x.row->counts.end() ? "-" : CountsCell(c->second));
        t.push_back(line);
      }
    }
  }
  return t;
}

std::vector<std::vector<std::string>> Figure3a(const ResultsReport& r) {
  std::vector<std::vector<std::string>> t = {
      {"shift", "studies", "reward model", "runs", "ID", "OOD", "drop (ID - OOD)"}};
  for (const auto& sh : r.shifts) {
    std::string studies;
    for (const auto& s : sh.studies) studies += (studies.empty() ? "" : ", ") + s;
    for (const auto* rm : {&sh.exrm, &sh.dporm}) {
      if (rm->id.n == 0) continue;
      t.push_back({sh.kind, studies, rm == &sh.exrm ? "EXRM" : "DPORM", std::to_string(rm->id.n),
                   Pct(rm->id), Pct(rm->ood), Pct(rm->drop)});
    }
  }
  return t;
}

bool HasBenchmarks(const ResultsReport& r) {
  for (const auto& s : r.studies) {
    if (!s.benchmark_sets.empty()) return true;
  }
  return false;
}

std::vector<std::vector<std::string>> Table8(const ResultsReport& r) {
  std::vector<std::vector<std::string>> t = {HeadTitles(r)};
  for (const char* h : {"benchmark", "Chat", "Chat Hard", "Safety", "Reasoning", "mean", "seeds"}) {
    t[0].push_back(h);
  }
  for (const auto& x : OrderedRows(r)) {
    for (const auto& set : x.study->benchmark_sets) {
      auto line = RowHead(r, x);
      line.push_back(set);
      auto it = x.row->sections.find(set);
      for (const auto& sec : kRewardBenchSections) {
        line.push_back(
            it == x.row->sections.end() || !it->second.count(sec) ? "-" : Pct(it->second.at(sec)));
      }
      line.push_back(it == x.row->sections.end() || !it->second.count("score")
                         ? "-"
                         : Pct(it->second.at("score")));
      auto acc = x.row->per_set.find(set);
      line.push_back(std::to_string(acc == x.row->per_set.end() ? 0 : acc->second.n));
      t.push_back(line);
    }
  }
  return t;
}

std::string WinLine(const StudyResults::Wins& id, const StudyResults::Wins& ood) {
  char buf[256];
  std::snprintf(buf, sizeof(buf),
                "EXRM beats DPORM: ID %lld/%lld runs (%.0f%%), OOD %lld/%lld runs (%.0f%%)",
                (long long)id.exrm_wins, (long long)id.runs, 100 * id.share(),
                (long long)ood.exrm_wins, (long long)ood.runs, 100 * ood.share());
  return buf;
}

json WinsJson(const StudyResults::Wins& id, const StudyResults::Wins& ood) {
  return {{"id", {{"runs", id.runs}, {"exrm_wins", id.exrm_wins}, {"share", id.share()}}},
          {"ood", {{"runs", ood.runs}, {"exrm_wins", ood.exrm_wins}, {"share", ood.share()}}}};
}

json RowJson(const StudyResults& s, const StudyResults::Row& row) {
  json per = json::object();
  for (const auto& [set, st] : row.per_set) {
    json e = StatJson(st);
    e["shift"] = ShiftOf(s, set);
    auto c = row.counts.find(set);
    e["counts"] = CountsJson(c == row.counts.end() ? SetCounts{} : c->second);
    auto sec = row.sections.find(set);
    if (sec != row.sections.end()) {
      json j = json::object();
      for (const auto& [name, v] : sec->second) j[name] = StatJson(v);
      e["sections"] = j;
    }
    per[set] = e;
  }
  json seeds = json::object();
  for (const auto& [seed, v] : row.per_seed) {
    seeds[std::to_string(seed)] = {{"id", v.first},
                                   {"ood", std::isnan(v.second) ? json(nullptr) : json(v.second)}};
  }
  return {{"model", row.model},
          {"method", row.method},
          {"reward_model", RewardName(row.method)},
          {"id", StatJson(row.id)},
          {"ood", StatJson(row.ood)},
          {"per_set", per},
          {"per_seed", seeds}};
}

struct SeedData {
  std::map<std::string, double> acc;
  std::map<std::string, std::array<double, 3>> counts;  // n, ties, acc_tie_half; NaN: absent
  std::map<std::string, std::map<std::string, double>> sections;
};

// The RewardBench sections of one run's benchmark set: rmgen-train's
// `rewardbench_sections` where present, checked against the REFERENCE weights applied to
// its `subsets`; else computed from the subsets. "score" (the mean) when all four exist.
StatusOr<std::map<std::string, double>> Sections(const json& m, const std::string& where) {
  std::map<std::string, double> out;
  static const json kNone = json::object();
  const json& subsets = m.contains("subsets") && m["subsets"].is_object() ? m["subsets"] : kNone;
  const json& given = m.contains("rewardbench_sections") && m["rewardbench_sections"].is_object()
                          ? m["rewardbench_sections"]
                          : kNone;
  for (const auto& sec : kRewardBenchSections) {
    const double computed = RewardBenchSection(sec, subsets);
    double v = computed;
    if (given.contains(sec) && given[sec].is_number()) {
      v = given[sec].get<double>();
      if (!std::isnan(computed) && std::fabs(v - computed) > 1e-6) {
        char buf[160];
        std::snprintf(buf, sizeof(buf),
                      ": RewardBench section '%s' is %.6f in metrics.json but %.6f from its "
                      "subsets with the REFERENCE weights",
                      sec.c_str(), v, computed);
        return DataLossError(where + buf);
      }
    }
    if (!std::isnan(v)) out[sec] = v;
  }
  if (out.size() == kRewardBenchSections.size()) {
    double sum = 0;
    for (const auto& sec : kRewardBenchSections) sum += out[sec];
    out["score"] = sum / double(kRewardBenchSections.size());
  }
  return out;
}

}  // namespace

namespace {

// A sweep's selection: the results of each (model, method)'s best grid point by mean
// accuracy on kSelectionSet over seeds (the first point on a tie); `sweep` gets every point.
StatusOr<std::vector<SeedResult>> SelectSweepPoints(const std::vector<SeedResult>& results,
                                                    int64_t seeds,
                                                    std::vector<StudyResults::SweepRow>* sweep) {
  bool any = false;
  for (const auto& s : results) any = any || !s.point.empty();
  if (!any) return results;
  // (model, method) -> points in order of appearance -> validation accuracies.
  std::map<std::pair<std::string, std::string>,
           std::vector<std::pair<std::string, std::vector<double>>>>
      groups;
  std::vector<std::pair<std::string, std::string>> order;
  for (const auto& s : results) {
    const auto key = std::make_pair(s.model, s.method);
    if (!groups.count(key)) order.push_back(key);
    auto& points = groups[key];
    auto it = std::find_if(points.begin(), points.end(),
                           [&](const auto& p) { return p.first == s.point; });
    if (it == points.end()) {
      points.push_back({s.point, {}});
      it = points.end() - 1;
    }
    const json* v = nullptr;
    if (s.metrics.contains("eval") && s.metrics["eval"].is_object() &&
        s.metrics["eval"].contains(kSelectionSet)) {
      v = &s.metrics["eval"][kSelectionSet];
    }
    if (v == nullptr || !v->is_object() || !v->contains("accuracy") ||
        !(*v)["accuracy"].is_number()) {
      return DataLossError("results of " + s.model + "/" + s.method + "/" + s.point + "/seed" +
                           std::to_string(s.seed) + " have no accuracy on the sweep's '" +
                           kSelectionSet + "' set");
    }
    it->second.push_back((*v)["accuracy"].get<double>());
  }
  std::set<std::pair<std::pair<std::string, std::string>, std::string>> chosen;
  for (const auto& key : order) {
    const auto& points = groups[key];
    // Only the points with the most seeds finished compete (all of them, once complete).
    std::vector<Stat> stats;
    int64_t most = 0;
    for (const auto& p : points) {
      stats.push_back(Summarize(p.second));
      most = std::max(most, stats.back().n);
    }
    size_t best = points.size();
    for (size_t i = 0; i < points.size(); ++i) {
      if (stats[i].n != most) continue;
      if (best == points.size() || stats[i].mean > stats[best].mean) best = i;
    }
    bool provisional = false;
    for (const auto& st : stats) provisional = provisional || st.n < std::max(most, seeds);
    for (size_t i = 0; i < points.size(); ++i) {
      sweep->push_back({key.first, key.second, points[i].first, stats[i], i == best, provisional});
    }
    chosen.insert({key, points[best].first});
  }
  std::vector<SeedResult> out;
  for (const auto& s : results) {
    if (chosen.count({{s.model, s.method}, s.point})) out.push_back(s);
  }
  return out;
}

}  // namespace

StatusOr<StudyResults> AggregateResults(const StudyInfo& info,
                                        const std::vector<SeedResult>& all_results,
                                        const std::vector<JudgeResult>& judged) {
  StudyResults r;
  // Iterative DPO: (model, annotator rank, iteration) -> the row; exrm before dporm.
  std::map<std::tuple<std::string, int, int64_t>, StudyResults::IterRow> iter;
  std::vector<std::string> iter_models;
  for (const auto& j : judged) {
    const json& m = j.metrics.contains("judge") ? j.metrics["judge"] : json();
    if (!m.is_object() || !m.contains("win_rate") || !m["win_rate"].is_number()) {
      return DataLossError("judge result of " + j.model + "/" + j.annotator + "/iter" +
                           std::to_string(j.iteration) + "/seed" + std::to_string(j.seed) +
                           ": no judge.win_rate in its metrics");
    }
    if (std::find(iter_models.begin(), iter_models.end(), j.model) == iter_models.end()) {
      iter_models.push_back(j.model);
    }
    auto& row = iter[{j.model, j.annotator == "exrm" ? 0 : 1, j.iteration}];
    row.model = j.model;
    row.annotator = j.annotator;
    row.iteration = j.iteration;
    row.judge = m.value("reward", "");
    row.per_seed[j.seed] = m["win_rate"].get<double>();
  }
  for (const auto& model : iter_models) {
    for (auto& [key, row] : iter) {
      if (std::get<0>(key) != model) continue;
      std::vector<double> v;
      for (const auto& [seed, w] : row.per_seed) v.push_back(w);
      row.win_rate = Summarize(v);
      r.iterative.push_back(row);
    }
  }
  ASSIGN_OR_RETURN(const std::vector<SeedResult> results,
                   SelectSweepPoints(all_results, info.seeds, &r.sweep));
  r.id = info.id;
  r.study = info.study;
  r.setting = info.setting;
  r.train = info.train;
  r.tag = info.tag;
  r.id_sets = info.id_sets;
  r.ood_sets = info.ood_sets;
  r.benchmark_sets = info.benchmark_sets;
  r.expected_runs = info.expected_runs;
  // (model, method) -> seed -> per-set metrics (of the selected sweep point).
  std::map<std::pair<std::string, std::string>, std::map<int64_t, SeedData>> acc;
  std::vector<std::string> models;
  for (const auto& s : results) {
    const std::string run = s.model + "/" + s.method + "/seed" + std::to_string(s.seed);
    static const json kNone = json::object();
    const json& ev =
        s.metrics.contains("eval") && s.metrics["eval"].is_object() ? s.metrics["eval"] : kNone;
    SeedData d;
    for (const auto* sets : {&info.id_sets, &info.ood_sets, &info.benchmark_sets}) {
      for (const auto& set : *sets) {
        auto it = ev.find(set);
        if (it == ev.end() || !it->is_object() || !it->contains("accuracy") ||
            !(*it)["accuracy"].is_number()) {
          return DataLossError("results of " + run + " have no accuracy for eval set '" + set +
                               "'");
        }
        d.acc[set] = (*it)["accuracy"].get<double>();
        std::array<double, 3> c;
        const char* keys[] = {"n", "ties", "acc_tie_half"};
        for (int k = 0; k < 3; ++k) {
          c[k] = it->contains(keys[k]) && (*it)[keys[k]].is_number() ? (*it)[keys[k]].get<double>()
                                                                     : NAN;
        }
        d.counts[set] = c;
        if (sets == &info.benchmark_sets) {
          ASSIGN_OR_RETURN(d.sections[set], Sections(*it, run + " eval set '" + set + "'"));
        }
      }
    }
    if (!Contains(models, s.model)) models.push_back(s.model);
    acc[{s.model, s.method}][s.seed] = std::move(d);
    ++r.finished_runs;
  }
  auto mean_of = [](const SeedData& d, const std::vector<std::string>& sets) -> double {
    if (sets.empty()) return NAN;
    double sum = 0;
    for (const auto& s : sets) sum += d.acc.at(s);
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
      std::map<std::string, std::array<std::vector<double>, 3>> counts;
      std::map<std::string, std::map<std::string, std::vector<double>>> sections;
      for (const auto& [seed, d] : it->second) {
        const double id = mean_of(d, info.id_sets), ood = mean_of(d, info.ood_sets);
        row.per_seed[seed] = {id, ood};
        ids.push_back(id);
        if (!info.ood_sets.empty()) oods.push_back(ood);
        for (const auto& [set, a] : d.acc) per_set[set].push_back(a);
        for (const auto& [set, c] : d.counts) {
          for (int k = 0; k < 3; ++k) {
            if (!std::isnan(c[k])) counts[set][k].push_back(c[k]);
          }
        }
        for (const auto& [set, secs] : d.sections) {
          auto& out = sections[set];  // present (maybe empty) for every benchmark set
          for (const auto& [name, v] : secs) out[name].push_back(v);
        }
      }
      row.id = Summarize(ids);
      row.ood = Summarize(oods);
      for (const auto& [set, v] : per_set) row.per_set[set] = Summarize(v);
      for (const auto& [set, c] : counts) {
        row.counts[set] = {Summarize(c[0]), Summarize(c[1]), Summarize(c[2])};
      }
      for (const auto& [set, secs] : sections) {
        auto& out = row.sections[set];
        for (const auto& [name, v] : secs) out[name] = Summarize(v);
      }
      r.rows.push_back(row);
    }
    // Win rates over seeds that have both.
    auto e = acc.find({m, "exrm"}), d = acc.find({m, "dpo"});
    if (e == acc.end() || d == acc.end()) continue;
    for (const auto& [seed, per] : e->second) {
      auto dp = d->second.find(seed);
      if (dp == d->second.end()) continue;
      ++r.win_id.runs;
      r.win_id.exrm_wins += mean_of(per, info.id_sets) > mean_of(dp->second, info.id_sets);
      if (!info.ood_sets.empty()) {
        ++r.win_ood.runs;
        r.win_ood.exrm_wins += mean_of(per, info.ood_sets) > mean_of(dp->second, info.ood_sets);
      }
    }
  }
  return r;
}

StatusOr<StudyResults> AggregateResults(const std::string& study, const std::string& setting,
                                        const std::string& train,
                                        const std::vector<std::string>& id_sets,
                                        const std::vector<std::string>& ood_sets,
                                        int64_t expected_runs,
                                        const std::vector<SeedResult>& results) {
  StudyInfo info;
  info.study = study;
  info.setting = setting;
  info.train = train;
  info.id_sets = id_sets;
  info.ood_sets = ood_sets;
  info.expected_runs = expected_runs;
  return AggregateResults(info, results);
}

json StudyResults::ToJson() const {
  json rs = json::array();
  for (const auto& row : rows) rs.push_back(RowJson(*this, row));
  json j = {{"id", id},
            {"study", study},
            {"setting", setting},
            {"shift_kind", ShiftKind(setting)},
            {"train", train},
            {"id_sets", id_sets},
            {"ood_sets", ood_sets},
            {"benchmark_sets", benchmark_sets},
            {"std", kStdNote},
            {"rows", rs},
            {"exrm_beats_dporm", WinsJson(win_id, win_ood)},
            {"runs", {{"finished", finished_runs}, {"expected", expected_runs}}}};
  if (!tag.empty()) j["tag"] = tag;
  if (!iterative.empty()) {
    json it = json::array();
    for (const auto& row : iterative) {
      json seeds = json::object();
      for (const auto& [seed, w] : row.per_seed) seeds[std::to_string(seed)] = w;
      it.push_back({{"model", row.model},
                    {"annotator", row.annotator},
                    {"annotator_name", RewardName(row.annotator == "exrm" ? "exrm" : "dpo")},
                    {"iteration", row.iteration},
                    {"judge", row.judge},
                    {"win_rate", StatJson(row.win_rate)},
                    {"per_seed", seeds}});
    }
    j["iterative"] = {{"against", "policy 0 (the study's DPO policy of the same seed)"},
                      {"ties", "count 1/2"},
                      {"rows", it}};
  }
  if (!sweep.empty()) {
    json sw = json::array();
    for (const auto& p : sweep) {
      sw.push_back({{"model", p.model},
                    {"method", p.method},
                    {"reward_model", RewardName(p.method)},
                    {"point", p.point},
                    {"validation", StatJson(p.validation)},
                    {"selected", p.selected},
                    {"provisional", p.provisional}});
    }
    j["sweep"] = {{"selected_on", kSelectionSet}, {"points", sw}};
  }
  return j;
}

std::string StudyResults::Table() const { return CombineResults({*this}).Table(); }
std::string StudyResults::Markdown() const { return CombineResults({*this}).Markdown(); }
std::string StudyResults::Csv() const { return CombineResults({*this}).Csv(); }

ResultsReport CombineResults(std::vector<StudyResults> studies, const std::string& tag) {
  ResultsReport r;
  r.tag = tag;
  r.studies = std::move(studies);
  for (const auto& s : r.studies) {
    for (const auto* sets : {&s.id_sets, &s.ood_sets}) {
      for (const auto& set : *sets) {
        if (!Contains(r.eval_sets, set)) r.eval_sets.push_back(set);
      }
    }
  }
  for (const auto& s : r.studies) {
    for (const auto& set : s.benchmark_sets) {
      if (!Contains(r.eval_sets, set)) r.eval_sets.push_back(set);
    }
  }
  struct Pool {
    std::vector<std::string> studies;
    std::vector<double> id[2], ood[2], drop[2];  // [0] EXRM, [1] DPORM
  };
  std::map<std::string, Pool> pools;
  for (const auto& s : r.studies) {
    r.win_id.runs += s.win_id.runs;
    r.win_id.exrm_wins += s.win_id.exrm_wins;
    r.win_ood.runs += s.win_ood.runs;
    r.win_ood.exrm_wins += s.win_ood.exrm_wins;
    r.expected_runs += s.expected_runs;
    r.finished_runs += s.finished_runs;
    Pool& p = pools[ShiftKind(s.setting)];
    p.studies.push_back(s.study);
    for (const auto& row : s.rows) {
      const int k = row.method == "exrm" ? 0 : 1;
      for (const auto& [seed, v] : row.per_seed) {
        p.id[k].push_back(v.first);
        if (std::isnan(v.second)) continue;
        p.ood[k].push_back(v.second);
        p.drop[k].push_back(v.first - v.second);
      }
    }
  }
  for (const char* kind : {"mixture", "response shift", "prompt shift", "other"}) {
    auto it = pools.find(kind);
    if (it == pools.end()) continue;
    ResultsReport::Shift sh;
    sh.kind = kind;
    sh.studies = it->second.studies;
    ResultsReport::Shift::Rm* rm[2] = {&sh.exrm, &sh.dporm};
    for (int k = 0; k < 2; ++k) {
      rm[k]->id = Summarize(it->second.id[k]);
      rm[k]->ood = Summarize(it->second.ood[k]);
      rm[k]->drop = Summarize(it->second.drop[k]);
    }
    r.shifts.push_back(sh);
  }
  return r;
}

json ResultsReport::ToJson() const {
  json j = json::object();
  json ss = json::array(), rows = json::array();
  for (const auto& s : studies) {
    ss.push_back(s.ToJson());
    for (const auto& row : s.rows) {
      json x = RowJson(s, row);
      x["study"] = s.study;
      x["setting"] = s.setting;
      x["train"] = s.train;
      rows.push_back(x);
    }
  }
  json t6 = json::array();
  for (const auto& m : ModelOrder(*this)) {
    for (const auto& s : studies) {
      json e = {{"model", m}, {"train", s.train}, {"study", s.study}};
      bool any = false;
      for (const auto& row : s.rows) {
        if (row.model != m) continue;
        any = true;
        const std::string rm = row.method == "exrm" ? "exrm" : "dporm";
        e[rm + "_id"] = StatJson(row.id);
        e[rm + "_ood"] = StatJson(row.ood);
      }
      if (any) t6.push_back(e);
    }
  }
  json t7 = json::array(), t8 = json::array();
  for (const auto& x : OrderedRows(*this)) {
    json cells = json::object();
    json row = RowJson(*x.study, *x.row);
    for (const auto& set : eval_sets) {
      if (row["per_set"].contains(set)) cells[set] = row["per_set"][set];
    }
    t7.push_back({{"model", x.row->model},
                  {"reward_model", RewardName(x.row->method)},
                  {"train", x.study->train},
                  {"study", x.study->study},
                  {"cells", cells}});
    for (const auto& set : x.study->benchmark_sets) {
      json e = {{"model", x.row->model},
                {"reward_model", RewardName(x.row->method)},
                {"train", x.study->train},
                {"study", x.study->study},
                {"benchmark", set}};
      auto it = x.row->sections.find(set);
      for (const auto& sec : kRewardBenchSections) e[sec] = nullptr;
      e["score"] = nullptr;
      if (it != x.row->sections.end()) {
        for (const auto& [name, v] : it->second) e[name] = StatJson(v);
      }
      t8.push_back(e);
    }
  }
  json f3a = json::array();
  for (const auto& sh : shifts) {
    auto rm = [](const Shift::Rm& x) {
      return json{{"runs", x.id.n},
                  {"id", StatJson(x.id)},
                  {"ood", StatJson(x.ood)},
                  {"drop", StatJson(x.drop)}};
    };
    f3a.push_back({{"shift", sh.kind},
                   {"studies", sh.studies},
                   {"exrm", rm(sh.exrm)},
                   {"dporm", rm(sh.dporm)}});
  }
  if (studies.size() == 1) {
    const auto& s = studies[0];
    j = {{"study", s.study},     {"setting", s.setting},   {"train", s.train},
         {"id_sets", s.id_sets}, {"ood_sets", s.ood_sets}, {"benchmark_sets", s.benchmark_sets}};
  }
  if (!tag.empty()) j["tag"] = tag;
  j["std"] = kStdNote;
  j["studies"] = ss;
  j["rows"] = rows;
  j["runs"] = {{"finished", finished_runs}, {"expected", expected_runs}};
  j["exrm_beats_dporm"] = WinsJson(win_id, win_ood);
  j["table6"] = t6;
  j["table7"] = {{"eval_sets", eval_sets}, {"rows", t7}};
  j["figure3a"] = f3a;
  j["table8"] = t8;
  return j;
}

namespace {

// The report's text, in either rendering (`md`: Markdown tables and headings).
std::string Render(const ResultsReport& r, bool md) {
  std::ostringstream o;
  auto table = [&](const std::vector<std::vector<std::string>>& t) {
    o << (md ? MarkdownGrid(t) : TextGrid(t)) << "\n";
  };
  auto caption = [&](const std::string& c) { o << (md ? "**" + c + "**" : c) << "\n\n"; };
  if (r.studies.size() == 1) {
    const auto& s = r.studies[0];
    if (md) {
      o << "### " << s.study << " (setting " << s.setting << ", train " << s.train << ")\n\n";
    } else {
      o << "Study " << s.study << " (setting " << s.setting << ", train " << s.train
        << "): " << s.finished_runs << "/" << s.expected_runs << " runs finished\n";
    }
  } else {
    o << (md ? "### " : "") << r.studies.size() << " studies"
      << (r.tag.empty() ? "" : " (--tag " + r.tag + ")") << ": " << r.finished_runs << "/"
      << r.expected_runs << " runs finished\n";
    if (md) o << "\n";
    for (const auto& s : r.studies) {
      o << (md ? "- " : "  ") << s.study << " (setting " << s.setting << ", train " << s.train
        << "): " << s.finished_runs << "/" << s.expected_runs << " runs finished\n";
    }
    if (md) o << "\n";
  }
  o << "Accuracy %, mean +- sample std (ddof=1) over seeds; OOD = mean over the OOD sets";
  if (HasBenchmarks(r)) o << "; benchmark sets are in neither ID nor OOD";
  if (md && r.studies.size() == 1) {
    o << ". " << r.studies[0].finished_runs << "/" << r.studies[0].expected_runs
      << " runs finished";
  }
  o << (md ? ".\n\n" : "\n\n");
  for (const auto& s : r.studies) {
    if (s.sweep.empty()) continue;
    caption("Sweep" + (r.studies.size() > 1 ? " of " + s.study : std::string()) +
            " (Tables 4/5): accuracy on the held-out slice of the training source, mean +- "
            "sample std over seeds; * the selected point, which every table below reports");
    std::vector<std::vector<std::string>> t = {
        {"model", "reward model", "point", "validation", "seeds", "selected"}};
    for (const auto& p : s.sweep) {
      t.push_back({p.model, RewardName(p.method), p.point.empty() ? "(default)" : p.point,
                   Pct(p.validation), std::to_string(p.validation.n),
                   p.selected ? (p.provisional ? "* (provisional: points unfinished)" : "*") : ""});
    }
    table(t);
  }
  for (const auto& s : r.studies) {
    if (s.iterative.empty()) continue;
    caption("Iterative DPO" + (r.studies.size() > 1 ? " of " + s.study : std::string()) +
            " (Table 2): win rate % of pi_t against pi_0 (the DPO policy of the same seed) "
            "under the judge, ties count 1/2; mean +- sample std over seeds");
    std::vector<std::vector<std::string>> t = {
        {"model", "annotator", "iteration", "win rate", "seeds", "judge"}};
    for (const auto& row : s.iterative) {
      t.push_back({row.model, RewardName(row.annotator == "exrm" ? "exrm" : "dpo"),
                   std::to_string(row.iteration), Pct(row.win_rate), std::to_string(row.win_rate.n),
                   row.judge});
    }
    table(t);
  }
  caption("Table 6: ID and mean OOD accuracy per model and train set");
  table(Table6(r));
  caption("Table 7: accuracy per eval set (* in-distribution for that row, - not evaluated)");
  table(Table7Grid(r));
  caption("Table 7, per eval set: n, ties and acc_tie_half (ties count 1/2) as means over seeds");
  table(Table7Sets(r));
  caption(
      "Figure 3a: ID and OOD accuracy per shift kind, every run of that kind pooled (mean +- "
      "sample std over runs, ddof=1; drop = ID - OOD per run)");
  table(Figure3a(r));
  o << (md ? "**Figure 3b:** " : "Figure 3b: ") << WinLine(r.win_id, r.win_ood)
    << " (strict >, per (model, train set, seed) run)\n";
  if (HasBenchmarks(r)) {
    o << "\n";
    caption(
        "Table 8: RewardBench sections (prompt-count-weighted subset accuracy, REFERENCE "
        "weights) and their mean; not part of ID or OOD");
    table(Table8(r));
  }
  std::string out = o.str();
  while (out.size() > 1 && out[out.size() - 1] == '\n' && out[out.size() - 2] == '\n') {
    out.pop_back();
  }
  return out;
}

}  // namespace

std::string ResultsReport::Table() const { return Render(*this, false); }
std::string ResultsReport::Markdown() const { return Render(*this, true); }

std::string ResultsReport::Csv() const {
  std::ostringstream o;
  o << "study,setting,train,model,reward_model,eval_set,shift,seeds,mean,std,n,ties,acc_tie_half\n";
  auto fixed = [](double x) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), "%.6f", x);
    return std::string(buf);
  };
  for (const auto& study : studies) {
    auto line = [&](const StudyResults::Row& row, const std::string& set, const std::string& shift,
                    const Stat& s, const SetCounts* c) {
      o << CsvField(study.study) << "," << CsvField(study.setting) << "," << CsvField(study.train)
        << "," << CsvField(row.model) << "," << RewardName(row.method) << "," << CsvField(set)
        << "," << shift << "," << s.n << "," << (s.n > 0 ? fixed(s.mean) : "") << ","
        << (std::isnan(s.std) ? "" : fixed(s.std)) << ",";
      if (c) {
        o << (c->pairs.n ? Count(c->pairs.mean) : "") << ","
          << (c->ties.n ? Count(c->ties.mean) : "") << ","
          << (c->acc_tie_half.n ? fixed(c->acc_tie_half.mean) : "");
      } else {
        o << ",,";
      }
      o << "\n";
    };
    for (const auto& p : study.sweep) {
      StudyResults::Row row;
      row.model = p.model;
      row.method = p.method;
      line(row, kSelectionSet, std::string(p.selected ? "sweep selected: " : "sweep: ") + p.point,
           p.validation, nullptr);
    }
    // Iterative DPO: the annotator is the reward model; the "set" names the iteration, and
    // the values are win rates against pi_0.
    for (const auto& it : study.iterative) {
      StudyResults::Row row;
      row.model = it.model;
      row.method = it.annotator == "exrm" ? "exrm" : "dpo";
      line(row, "(win rate at iteration " + std::to_string(it.iteration) + ")",
           "iterative: " + it.judge, it.win_rate, nullptr);
    }
    for (const auto& row : study.rows) {
      line(row, "(mean ID)", "ID", row.id, nullptr);
      if (!study.ood_sets.empty()) line(row, "(mean OOD)", "OOD", row.ood, nullptr);
      for (const auto* sets : {&study.id_sets, &study.ood_sets, &study.benchmark_sets}) {
        for (const auto& set : *sets) {
          auto it = row.per_set.find(set);
          if (it == row.per_set.end()) continue;
          auto c = row.counts.find(set);
          line(row, set, ShiftOf(study, set), it->second,
               c == row.counts.end() ? nullptr : &c->second);
        }
      }
      for (const auto& set : study.benchmark_sets) {
        auto it = row.sections.find(set);
        if (it == row.sections.end()) continue;
        std::vector<std::string> names = kRewardBenchSections;
        names.push_back("score");
        for (const auto& name : names) {
          if (it->second.count(name)) {
            line(row, set, "benchmark:" + name, it->second.at(name), nullptr);
          }
        }
      }
    }
  }
  return o.str();
}

StatusOr<std::string> FormatResults(const ResultsReport& r, const std::string& format) {
  if (format == "table") return r.Table();
  if (format == "md" || format == "markdown") return r.Markdown();
  if (format == "csv") return r.Csv();
  if (format == "json") return r.ToJson().dump(2) + "\n";
  return InvalidArgumentError("--format '" + format + "': expected table, csv, md or json");
}

StatusOr<std::string> FormatResults(const StudyResults& r, const std::string& format) {
  return FormatResults(CombineResults({r}), format);
}

}  // namespace rmgen::coord
