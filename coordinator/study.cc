#include "coordinator/study.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <set>

#include "common/yaml_guard.h"
#include "coordinator/results.h"
#include "jobspec/run_dir.h"
#include "jobspec/spec.h"

namespace rmgen::coord {
namespace {

using nlohmann::json;

// Reads a study, remembering the line of every field for later errors.
class Reader {
 public:
  explicit Reader(std::string source) : source_(std::move(source)) {}

  Status Error(const YAML::Node& n, const std::string& field, const std::string& what) const {
    return InvalidArgumentError(source_ + ":" + std::to_string(n.Mark().line + 1) + ": field '" +
                                field + "': " + what);
  }
  Status ErrorAt(const std::string& field, const std::string& what) const {
    // The closest recorded line: the field itself, else its section.
    std::string f = field;
    for (;;) {
      auto it = lines_.find(f);
      if (it != lines_.end()) {
        return InvalidArgumentError(source_ + ":" + std::to_string(it->second) + ": field '" +
                                    field + "': " + what);
      }
      const auto dot = f.rfind('.');
      if (dot == std::string::npos) break;
      f = f.substr(0, dot);
    }
    return InvalidArgumentError(source_ + ": field '" + field + "': " + what);
  }
  void Note(const std::string& field, const YAML::Node& n) { lines_[field] = n.Mark().line + 1; }
  // "<field> (line N)" when the line is known, else the field.
  std::string Where(const std::string& field) const {
    auto it = lines_.find(field);
    return it == lines_.end() ? field : field + " (line " + std::to_string(it->second) + ")";
  }

  StatusOr<std::string> String(const YAML::Node& n, const std::string& field) {
    Note(field, n);
    if (!n.IsScalar()) return Error(n, field, "expected a string");
    return n.Scalar();
  }
  StatusOr<int64_t> Int(const YAML::Node& n, const std::string& field) {
    Note(field, n);
    if (n.IsScalar()) {
      try {
        size_t used = 0;
        const long long v = std::stoll(n.Scalar(), &used);
        if (used == n.Scalar().size()) return static_cast<int64_t>(v);
      } catch (...) {
      }
    }
    return Error(n, field, "expected an integer, got '" + (n.IsScalar() ? n.Scalar() : "?") + "'");
  }
  StatusOr<std::vector<std::string>> Strings(const YAML::Node& n, const std::string& field,
                                             size_t max = kMaxStudyEvalSets) {
    Note(field, n);
    if (!n.IsSequence()) return Error(n, field, "expected a list");
    if (n.size() > max) {
      return Error(n, field, std::to_string(n.size()) + " entries; at most " + std::to_string(max));
    }
    std::vector<std::string> out;
    for (size_t i = 0; i < n.size(); ++i) {
      ASSIGN_OR_RETURN(std::string s, String(n[i], field + "[" + std::to_string(i) + "]"));
      out.push_back(s);
    }
    return out;
  }
  // A scalar typed like YAML would (int, number, bool, string).
  static json Typed(const std::string& v) {
    try {
      size_t used = 0;
      const long long i = std::stoll(v, &used);
      if (used == v.size()) return static_cast<int64_t>(i);
      const double d = std::stod(v, &used);
      // nan and inf stay strings: JSON has no such numbers, and the job spec refuses them.
      if (used == v.size() && std::isfinite(d)) return d;
    } catch (...) {
    }
    if (v == "true" || v == "false") return v == "true";
    return v;
  }
  // A flat mapping of scalars; keys in `listable` may hold a list of distinct scalars (a
  // sweep over them).
  StatusOr<json> Scalars(const YAML::Node& n, const std::string& field,
                         const std::set<std::string>& listable = {}) {
    Note(field, n);
    if (!n.IsMap()) return Error(n, field, "expected a mapping");
    json out = json::object();
    for (const auto& kv : n) {
      const std::string k = kv.first.Scalar();
      Note(field + "." + k, kv.second);
      if (kv.second.IsSequence() && listable.count(k)) {
        if (kv.second.size() == 0 || kv.second.size() > kMaxSweepValues) {
          return Error(kv.second, field + "." + k,
                       "a sweep lists 1 to " + std::to_string(kMaxSweepValues) + " values");
        }
        json list = json::array();
        for (size_t i = 0; i < kv.second.size(); ++i) {
          const std::string f = field + "." + k + "[" + std::to_string(i) + "]";
          if (!kv.second[i].IsScalar()) return Error(kv.second[i], f, "expected a value");
          json v = Typed(kv.second[i].Scalar());
          if (!v.is_number()) return Error(kv.second[i], f, "expected a number");
          for (const auto& seen : list) {
            if (seen == v) return Error(kv.second[i], f, "listed twice");
          }
          list.push_back(v);
        }
        out[k] = list;
        continue;
      }
      if (!kv.second.IsScalar()) {
        return Error(kv.second, field + "." + k,
                     listable.count(k) ? "expected a value or a list of values (a sweep)"
                                       : "expected a value");
      }
      out[k] = Typed(kv.second.Scalar());
    }
    return out;
  }
  // Checks that every key of `map` is in `known`.
  Status Keys(const YAML::Node& map, const std::string& field, const std::set<std::string>& known) {
    if (!map.IsMap()) {
      std::string list;
      for (const auto& s : known) list += (list.empty() ? "" : ", ") + s;
      return Error(map, field, "expected a mapping of " + list);
    }
    for (const auto& kv : map) {
      const std::string k = kv.first.Scalar();
      if (!known.count(k)) {
        std::string list;
        for (const auto& s : known) list += (list.empty() ? "" : ", ") + s;
        return Error(kv.first, field.empty() ? k : field + "." + k,
                     "unknown field (expected one of: " + list + ")");
      }
    }
    return Status::Ok();
  }

  const std::string& source() const { return source_; }

 private:
  std::string source_;
  std::map<std::string, int> lines_;
};

// The hyperparameter keys a method section may hold: rmgen-train `train:` fields, plus the
// objective's own.
const std::set<std::string>& TrainKeys() {
  static const std::set<std::string> k = {
      "epochs",       "learning_rate",  "per_rank_batch_size", "gradient_accumulation",
      "schedule",     "warmup_ratio",   "warmup_steps",        "max_grad_norm",
      "weight_decay", "adam_beta1",     "adam_beta2",          "adam_epsilon",
      "max_steps",    "length_grouped", "skip_nonfinite",      "gradient_checkpointing",
      "bf16"};
  return k;
}

// Keys of a method section that go elsewhere in the job spec: the weights' dtype and
// ZeRO-1 (so a study can make a 7B model fit).
const std::map<std::string, std::string>& PlacedKeys() {
  static const std::map<std::string, std::string> k = {{"dtype", "/model/dtype"},
                                                       {"zero1", "/runtime/zero1"}};
  return k;
}

// `batch_size` in a study is refused: it read as per-device but meant global.
Status RefuseBatchSize(const Reader& r, const YAML::Node& section, const std::string& name) {
  if (!section.IsMap() || !section["batch_size"]) return Status::Ok();
  return r.Error(section["batch_size"], name + ".batch_size",
                 "ambiguous; a study gives per_rank_batch_size (TRL's "
                 "per_device_train_batch_size): the global batch is per_rank_batch_size x "
                 "resources.ranks x gradient_accumulation (see `rmgen plan`)");
}

// The rmgen-train spec of one job, validated by the same code rmgen-train runs; a failure
// names the study field it came from.
StatusOr<json> BuildSpec(const Reader& r, const Study& s, const StudyModel& m,
                         const std::string& kind, const std::string& section, json hyper,
                         const std::string& model_path, int64_t seed, const json& extra) {
  json spec = {{"kind", kind}, {"template", m.chat_template}};
  if (!model_path.empty()) {
    spec["model"] = {{"path", model_path}};
  } else {
    spec["model"] = {{"config", m.config}, {"init_seed", 0}};
  }
  spec["tokenizer"] = !m.tokenizer.empty() ? m.tokenizer : m.path + "/tokenizer.model";
  json data = s.data;
  if (!s.catalog.empty()) data["catalog"] = s.catalog;
  if (!s.data_root.empty()) data["data_root"] = s.data_root;
  const bool trains = kind == "sft" || kind == "reward" || kind == "dpo";
  if (trains) data["train"] = s.train_set;
  spec["data"] = data;
  json train = json::object(), objective = json::object(), placed = json::object();
  for (auto& [k, v] : hyper.items()) {
    if (PlacedKeys().count(k)) {
      placed[json::json_pointer(PlacedKeys().at(k))] = v;
    } else {
      (TrainKeys().count(k) ? train : objective)[k] = v;
    }
  }
  train["seed"] = seed;
  train["ranks"] = s.ranks;
  // TRL's per_device_train_batch_size default: 8 pairs a rank, whatever the ranks.
  if (!train.contains("per_rank_batch_size")) train["per_rank_batch_size"] = kDefaultPerRankBatch;
  if (trains) spec["train"] = train;
  if (kind == "reward" && !objective.empty()) spec["reward"] = objective;
  if (kind == "dpo" && !objective.empty()) spec["dpo"] = objective;
  spec["runtime"] = {{"threads", s.threads}, {"device", s.device}};
  spec.merge_patch(placed);
  if (s.checkpoint_every > 0) spec["runtime"]["checkpoint_every"] = s.checkpoint_every;
  spec.merge_patch(extra);
  auto parsed = ParseJobSpecJson(spec, r.source());
  if (!parsed.ok()) {
    // "<source>: field 'train.learning_rate': ..." -> the study's own field and line.
    const std::string& msg = parsed.status().message();
    const auto a = msg.find("field '"), b = msg.find("': ", a == std::string::npos ? 0 : a);
    if (a != std::string::npos && b != std::string::npos) {
      std::string field = msg.substr(a + 7, b - a - 7);
      const std::string what = msg.substr(b + 3);
      const auto dot = field.find('.');
      const std::string head = field.substr(0, dot), leaf = field.substr(dot + 1);
      if (field == "train.ranks") {
        field = "resources.ranks";
      } else if (field == "runtime.threads" || field == "runtime.checkpoint_every" ||
                 field == "runtime.device") {
        field = "resources." + leaf;
      } else if (field == "model.dtype" || field == "runtime.zero1") {
        field = section + "." + leaf;
      } else if ((head == "train" || head == "dpo" || head == "reward") &&
                 dot != std::string::npos) {
        field = section + "." + leaf;
      } else if (head == "data") {
        field = "data." + leaf;
      } else if (head == "generate") {
        field = "iterative.sampling." + leaf;
      }
      return r.ErrorAt(field, what + " (in the " + kind + " job of model '" + m.name + "')");
    }
    return r.ErrorAt(section, msg);
  }
  return parsed->resolved;
}

StatusOr<std::vector<JobRecord>> PlanWith(const Study& s, const std::string& user, const Reader& r,
                                          const PlanLimits& limits);

// a x b, saturating at INT64_MAX (both >= 0).
int64_t MulSat(int64_t a, int64_t b) {
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  if (a == 0 || b == 0) return 0;
  return a > kMax / b ? kMax : a * b;
}
int64_t AddSat(int64_t a, int64_t b) {
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  return a > kMax - b ? kMax : a + b;
}

// The grid points of a method section's sweep (1 without lists), counted from the list
// lengths; `how`, when given, receives how they multiply ("learning_rate: 2 x beta: 4").
int64_t SweepPointCount(const json& section, const Reader* r = nullptr,
                        const std::string& method = "", std::string* how = nullptr) {
  int64_t n = 1;
  for (const char* key : kSweepKeys) {
    if (!section.contains(key) || !section[key].is_array()) continue;
    n = MulSat(n, static_cast<int64_t>(section[key].size()));
    if (how != nullptr) {
      const std::string f = method + "." + key;
      *how += (how->empty() ? "" : " x ") + (r ? r->Where(f) : f) + ": " +
              std::to_string(section[key].size());
    }
  }
  return n;
}

// 1234567 -> "1,234,567".
std::string Thousands(int64_t v) {
  std::string digits = std::to_string(v), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0 && digits[i - 1] != '-') out += ',';
    out += digits[i];
  }
  return out;
}

// Refuses a study whose plan has more jobs than `limits` allows, naming the fields that
// multiply, before any job is built.
Status CheckPlanSize(const Study& s, const Reader& r, const PlanLimits& limits) {
  const int64_t jobs = PlannedJobCount(s);
  if (jobs <= limits.max_jobs) return Status::Ok();
  const std::string models = r.Where("models") + ": " + std::to_string(s.models.size()) + " x ";
  std::string per_method;
  bool sweep = false;
  for (const auto& method : s.methods) {
    std::string how;
    const int64_t points = SweepPointCount(method == "exrm" ? s.exrm : s.dpo, &r, method, &how);
    sweep = sweep || !how.empty();
    per_method += (per_method.empty() ? "" : " + ") + method + ": " + std::to_string(points) +
                  (points == 1 ? " grid point" : " grid points") +
                  (how.empty() ? "" : " (" + how + ")");
  }
  std::string how = models +
                    (sweep ? "(" + per_method + ")"
                           : r.Where("methods") + ": " + std::to_string(s.methods.size())) +
                    " x " + r.Where("seeds") + ": " + std::to_string(s.seeds.size()) +
                    " x 2 jobs (train, eval)";
  if (!s.sft.is_null()) how += ", + 1 sft job per model";
  if (s.iterative.is_object()) {
    how += ", + per model and seed " + r.Where("iterative") + ": 2 + annotators x (5 x " +
           "iterations - 1) jobs";
  }
  return InvalidArgumentError(r.source() + ": the plan has " + Thousands(jobs) + " jobs (" + how +
                              "), more than this coordinator's limit of " +
                              Thousands(limits.max_jobs) +
                              " per study (--max-jobs-per-study). HINT: split the study (by "
                              "model, method or seeds) or ask for a higher limit");
}

}  // namespace

int64_t PlannedJobCount(const Study& s) {
  int64_t per_model = s.sft.is_null() ? 0 : 1;
  for (const auto& method : s.methods) {
    const int64_t points = SweepPointCount(method == "exrm" ? s.exrm : s.dpo);
    per_model = AddSat(per_model, MulSat(MulSat(points, static_cast<int64_t>(s.seeds.size())), 2));
  }
  if (s.iterative.is_object()) {
    const int64_t annotators = static_cast<int64_t>(s.iterative["annotators"].size());
    const int64_t t = s.iterative["iterations"].get<int64_t>();
    per_model = AddSat(per_model,
                       MulSat(2 + annotators * (5 * t - 1), static_cast<int64_t>(s.seeds.size())));
  }
  return MulSat(per_model, static_cast<int64_t>(s.models.size()));
}

std::vector<std::pair<std::string, std::string>> StudyPlanReads(const Study& s) {
  std::vector<std::pair<std::string, std::string>> out;
  auto add = [&](const std::string& field, const std::string& path) {
    if (!path.empty() && path.find("${") == std::string::npos) out.emplace_back(field, path);
  };
  for (size_t i = 0; i < s.models.size(); ++i) {
    const StudyModel& m = s.models[i];
    const std::string f = "models[" + std::to_string(i) + "]";
    add(f + ".config", m.config);
    if (!m.path.empty()) add(f + ".path", m.path + "/config.json");
    add(f + ".arch", m.arch);
  }
  return out;
}

json Study::ToJson() const {
  json ms = json::array();
  for (const auto& m : models) {
    ms.push_back({{"name", m.name},
                  {"path", m.path},
                  {"config", m.config},
                  {"tokenizer", m.tokenizer},
                  {"template", m.chat_template},
                  {"arch", m.arch}});
  }
  return {{"name", name},
          {"setting", setting},
          {"catalog", catalog},
          {"data_root", data_root},
          {"models", ms},
          {"methods", methods},
          {"seeds", seeds},
          {"train", train_set},
          {"eval", {{"id", id_eval}, {"ood", ood_eval}, {"benchmark", benchmark_eval}}},
          {"tag", tag},
          {"sft", sft},
          {"exrm", exrm},
          {"dpo", dpo},
          {"data", data},
          {"ranks", ranks},
          {"threads", threads},
          {"checkpoint_every", checkpoint_every},
          {"device", device},
          {"priority", priority},
          {"selection", {{"holdout", selection_holdout}}},
          {"iterative", iterative}};
}

StatusOr<Study> StudyPlanFromJson(const json& j) {
  try {
    Study s;
    s.name = j.at("name");
    s.setting = j.at("setting");
    s.catalog = j.at("catalog");
    s.data_root = j.at("data_root");
    for (const auto& m : j.at("models")) {
      s.models.push_back({m.at("name"), m.at("path"), m.at("config"), m.at("tokenizer"),
                          m.at("template"),
                          m.value("arch", "")});  // plans stored before `arch` have none
    }
    s.methods = j.at("methods").get<std::vector<std::string>>();
    s.seeds = j.at("seeds").get<std::vector<int64_t>>();
    s.train_set = j.at("train");
    s.id_eval = j.at("eval").at("id").get<std::vector<std::string>>();
    s.ood_eval = j.at("eval").at("ood").get<std::vector<std::string>>();
    // Plans stored before benchmarks and tags existed have neither.
    s.benchmark_eval =
        j.at("eval").value("benchmark", json::array()).get<std::vector<std::string>>();
    s.tag = j.value("tag", "");
    s.sft = j.at("sft");
    s.exrm = j.at("exrm");
    s.dpo = j.at("dpo");
    s.data = j.at("data");
    s.ranks = j.at("ranks");
    s.threads = j.at("threads");
    s.checkpoint_every = j.value("checkpoint_every", int64_t{0});
    s.device = j.at("device");
    s.priority = j.at("priority");
    s.selection_holdout = j.value("selection", json::object()).value("holdout", 0.05);
    s.iterative = j.value("iterative", json());
    return s;
  } catch (const std::exception& e) {
    return DataLossError(std::string("stored study unreadable: ") + e.what());
  }
}

// The offset of the first byte that is not part of valid UTF-8, or npos. Strict (Unicode's
// table 3-7): no overlong forms (C0, C1, E0 80..9F, F0 80..8F), no surrogates (ED A0..BF),
// nothing above U+10FFFF (F4 90.., F5..FF).
size_t FirstInvalidUtf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t n = 0;
    unsigned char lo = 0x80, hi = 0xbf;  // the allowed range of the second byte
    if (c >= 0xc2 && c <= 0xdf) {
      n = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
      n = 3;
      if (c == 0xe0) lo = 0xa0;
      if (c == 0xed) hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      n = 4;
      if (c == 0xf0) lo = 0x90;
      if (c == 0xf4) hi = 0x8f;
    }
    if (n == 0 || i + n > s.size()) return i;
    const unsigned char second = s[i + 1];
    if (second < lo || second > hi) return i;
    for (size_t k = 2; k < n; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) >> 6) != 0x2) return i;
    }
    i += n;
  }
  return std::string::npos;
}

// Every scalar of the document must be UTF-8 too: an escape such as "\uD800" decodes to a
// surrogate, which the job specs (JSON) cannot hold.
Status CheckScalars(const YAML::Node& n, const std::string& source) {
  if (n.IsScalar()) {
    if (FirstInvalidUtf8(n.Scalar()) != std::string::npos) {
      return InvalidArgumentError(source + ":" + std::to_string(n.Mark().line + 1) +
                                  ": a value that is not valid UTF-8 (an escape to a surrogate "
                                  "or beyond U+10FFFF?)");
    }
    return Status::Ok();
  }
  for (const auto& kv : n) {
    if (n.IsMap()) {
      RETURN_IF_ERROR(CheckScalars(kv.first, source));
      RETURN_IF_ERROR(CheckScalars(kv.second, source));
    } else {
      RETURN_IF_ERROR(CheckScalars(kv, source));
    }
  }
  return Status::Ok();
}

std::vector<SweepPoint> SweepPoints(const json& section) {
  std::vector<SweepPoint> points = {{"", section}};
  for (const char* key : kSweepKeys) {
    if (!section.contains(key) || !section[key].is_array()) continue;
    std::vector<SweepPoint> next;
    for (const auto& p : points) {
      for (const auto& v : section[key]) {
        SweepPoint q = p;
        q.hyper[key] = v;
        const std::string name = std::string(key) == "learning_rate" ? "lr" : key;
        char buf[64];
        if (v.is_number_integer()) {
          std::snprintf(buf, sizeof(buf), "%s=%lld", name.c_str(), (long long)v.get<int64_t>());
        } else {
          std::snprintf(buf, sizeof(buf), "%s=%g", name.c_str(), v.get<double>());
        }
        q.label += (q.label.empty() ? "" : " ") + std::string(buf);
        next.push_back(std::move(q));
      }
    }
    points = std::move(next);
  }
  return points;
}

bool Study::HasSweep() const {
  for (const auto& method : methods) {  // a list in a section the study does not run: none
    const json& section = method == "exrm" ? exrm : dpo;
    for (const char* key : kSweepKeys) {
      if (section.contains(key) && section[key].is_array()) return true;
    }
  }
  return false;
}

namespace {

// The `iterative:` section, checked and with its defaults (study.h).
StatusOr<json> ParseIterative(Reader& r, const YAML::Node& n, const Study& s,
                              const std::set<std::string>& dpo_keys) {
  RETURN_IF_ERROR(r.Keys(n, "iterative",
                         {"annotators", "iterations", "samples", "prompts", "prompts_per_iteration",
                          "sampling", "dpo", "judge", "eval_prompts", "eval_limit"}));
  json it = {
      {"annotators", {"exrm", "dporm"}},
      {"iterations", 2},
      {"samples", 8},
      {"prompts", s.train_set},
      {"prompts_per_iteration", 0},
      {"sampling", {{"temperature", 1.0}, {"top_p", 1.0}, {"top_k", 0}, {"max_new_tokens", 128}}},
      // Each iteration's DPO: the paper's recipe, at the study's DPO beta.
      {"dpo",
       {{"learning_rate", 5e-7},
        {"schedule", "cosine"},
        {"epochs", 1},
        {"beta", s.dpo.contains("beta") ? s.dpo["beta"] : json(0.03)}}},
      {"judge", "oracle"},
      {"eval_prompts", s.id_eval.empty() ? json() : json(s.id_eval[0])},
      {"eval_limit", 0}};
  if (n["annotators"]) {
    ASSIGN_OR_RETURN(auto a, r.Strings(n["annotators"], "iterative.annotators", 2));
    std::set<std::string> seen;
    for (const auto& x : a) {
      if (x != "exrm" && x != "dporm") {
        return r.Error(n["annotators"], "iterative.annotators",
                       "expected exrm and/or dporm, got '" + x + "'");
      }
      if (!seen.insert(x).second) {
        return r.Error(n["annotators"], "iterative.annotators", "'" + x + "' is listed twice");
      }
    }
    if (a.empty()) return r.Error(n["annotators"], "iterative.annotators", "empty");
    it["annotators"] = a;
  }
  auto bounded = [&](const char* key, int64_t lo, int64_t hi, const std::string& why) -> Status {
    if (!n[key]) return Status::Ok();
    const std::string f = std::string("iterative.") + key;
    ASSIGN_OR_RETURN(int64_t v, r.Int(n[key], f));
    if (v < lo || v > hi) {
      return r.Error(n[key], f,
                     "must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]" + why +
                         ", got " + std::to_string(v));
    }
    it[key] = v;
    return Status::Ok();
  };
  RETURN_IF_ERROR(bounded("iterations", 1, 8, ""));
  RETURN_IF_ERROR(bounded("samples", 2, 64, " (the best and the worst of K)"));
  RETURN_IF_ERROR(bounded("prompts_per_iteration", 0, 1000000000, " (0: the whole slice)"));
  RETURN_IF_ERROR(bounded("eval_limit", 0, 1000000000, " (0: all)"));
  for (const char* key : {"prompts", "eval_prompts"}) {
    if (n[key]) {
      ASSIGN_OR_RETURN(std::string v, r.String(n[key], std::string("iterative.") + key));
      it[key] = v;
    }
  }
  if (it["eval_prompts"].is_null()) {
    return r.ErrorAt("iterative.eval_prompts", "missing (no ID eval set to default to)");
  }
  if (n["sampling"]) {
    RETURN_IF_ERROR(r.Keys(n["sampling"], "iterative.sampling",
                           {"temperature", "top_p", "top_k", "max_new_tokens"}));
    ASSIGN_OR_RETURN(json v, r.Scalars(n["sampling"], "iterative.sampling"));
    it["sampling"].update(v);
  }
  if (n["dpo"]) {
    RETURN_IF_ERROR(RefuseBatchSize(r, n["dpo"], "iterative.dpo"));
    RETURN_IF_ERROR(r.Keys(n["dpo"], "iterative.dpo", dpo_keys));
    ASSIGN_OR_RETURN(json v, r.Scalars(n["dpo"], "iterative.dpo"));
    it["dpo"].update(v);
  }
  if (n["judge"]) {
    if (n["judge"].IsMap()) {
      RETURN_IF_ERROR(r.Keys(n["judge"], "iterative.judge", {"path"}));
      if (!n["judge"]["path"]) {
        return r.Error(n["judge"], "iterative.judge",
                       "a judge checkpoint is {path: DIR} (an EXRM); or oracle, or exrm");
      }
      ASSIGN_OR_RETURN(std::string path, r.String(n["judge"]["path"], "iterative.judge.path"));
      it["judge"] = {{"path", path}};
    } else {
      ASSIGN_OR_RETURN(std::string j, r.String(n["judge"], "iterative.judge"));
      if (j != "oracle" && j != "exrm") {
        return r.Error(n["judge"], "iterative.judge",
                       "expected oracle, exrm or {path: an EXRM checkpoint}, got '" + j + "'");
      }
      it["judge"] = j;
    }
  }
  const auto has = [&](const char* m) {
    return std::find(s.methods.begin(), s.methods.end(), m) != s.methods.end();
  };
  if (!has("dpo")) {
    return r.ErrorAt("iterative",
                     "iterative DPO starts from the study's DPO policies: add dpo "
                     "to methods");
  }
  const bool exrm_used =
      it["judge"] == "exrm" ||
      std::find(it["annotators"].begin(), it["annotators"].end(), "exrm") != it["annotators"].end();
  if (exrm_used && !has("exrm")) {
    return r.ErrorAt("iterative",
                     "the EXRM annotator or judge is the study's EXRM of the same "
                     "seed: add exrm to methods");
  }
  if (s.HasSweep()) {
    return r.ErrorAt("iterative",
                     "iterative DPO after a sweep is not supported: run the "
                     "selected point in a study of its own");
  }
  return it;
}

}  // namespace

StatusOr<Study> ParseStudy(const std::string& yaml, const std::string& source,
                           const PlanLimits& limits) {
  if (yaml.size() > kMaxStudyBytes) {
    return InvalidArgumentError(source + ": " + std::to_string(yaml.size()) +
                                " bytes; a study file is at most " +
                                std::to_string(kMaxStudyBytes) + " bytes");
  }
  if (const size_t bad = FirstInvalidUtf8(yaml); bad != std::string::npos) {
    const size_t line = 1 + std::count(yaml.begin(), yaml.begin() + bad, '\n');
    return InvalidArgumentError(source + ":" + std::to_string(line) + ": not UTF-8 text (byte " +
                                std::to_string(bad) + ")");
  }
  // Aliases, node count, depth and value sizes, before yaml-cpp builds (and we walk) a tree.
  YamlLimits yaml_limits;
  yaml_limits.max_bytes = kMaxStudyBytes;
  RETURN_IF_ERROR(CheckYaml(yaml, source, "study files", yaml_limits));
  YAML::Node doc;
  try {
    doc = YAML::Load(yaml);
  } catch (const YAML::Exception& e) {
    return InvalidArgumentError(source + ":" + std::to_string(e.mark.line + 1) +
                                ": not valid YAML: " + e.msg);
  }
  Reader r(source);
  if (!doc.IsMap()) return InvalidArgumentError(source + ": a study is a YAML mapping");
  RETURN_IF_ERROR(CheckScalars(doc, source));
  RETURN_IF_ERROR(r.Keys(
      doc, "",
      {"name", "setting", "catalog", "data_root", "models", "methods", "seeds", "train", "eval",
       "sft", "exrm", "dpo", "data", "resources", "priority", "selection", "tag", "iterative"}));
  for (const char* req : {"name", "setting", "models", "methods", "seeds", "train", "eval"}) {
    if (!doc[req]) {
      return InvalidArgumentError(source + ": field '" + req + "': missing (required)");
    }
  }
  Study s;
  ASSIGN_OR_RETURN(s.name, r.String(doc["name"], "name"));
  ASSIGN_OR_RETURN(s.setting, r.String(doc["setting"], "setting"));
  if (doc["catalog"]) {
    ASSIGN_OR_RETURN(s.catalog, r.String(doc["catalog"], "catalog"));
  }
  if (doc["data_root"]) {
    ASSIGN_OR_RETURN(s.data_root, r.String(doc["data_root"], "data_root"));
  }
  if (s.name.empty()) return r.Error(doc["name"], "name", "must not be empty");
  if (doc["tag"]) {
    ASSIGN_OR_RETURN(s.tag, r.String(doc["tag"], "tag"));
    if (s.tag.empty()) return r.Error(doc["tag"], "tag", "must not be empty (or leave it out)");
  }

  const YAML::Node models = doc["models"];
  r.Note("models", models);
  if (!models.IsSequence() || models.size() == 0) {
    return r.Error(models, "models", "expected a non-empty list of models");
  }
  if (models.size() > kMaxStudyModels) {
    return r.Error(models, "models",
                   std::to_string(models.size()) + " models; a study has at most " +
                       std::to_string(kMaxStudyModels) + " (split it)");
  }
  std::set<std::string> model_names;
  for (size_t i = 0; i < models.size(); ++i) {
    const std::string f = "models[" + std::to_string(i) + "]";
    const YAML::Node m = models[i];
    if (!m.IsMap()) return r.Error(m, f, "expected {name, path | config, template, tokenizer}");
    RETURN_IF_ERROR(r.Keys(m, f, {"name", "path", "config", "tokenizer", "template", "arch"}));
    StudyModel sm;
    if (!m["name"]) return r.Error(m, f + ".name", "missing");
    ASSIGN_OR_RETURN(sm.name, r.String(m["name"], f + ".name"));
    if (!model_names.insert(sm.name).second) {
      return r.Error(m["name"], f + ".name", "duplicate model name '" + sm.name + "'");
    }
    if (m["path"]) {
      ASSIGN_OR_RETURN(sm.path, r.String(m["path"], f + ".path"));
    }
    if (m["config"]) {
      ASSIGN_OR_RETURN(sm.config, r.String(m["config"], f + ".config"));
    }
    if (m["tokenizer"]) {
      ASSIGN_OR_RETURN(sm.tokenizer, r.String(m["tokenizer"], f + ".tokenizer"));
    }
    if (m["template"]) {
      ASSIGN_OR_RETURN(sm.chat_template, r.String(m["template"], f + ".template"));
    }
    if (m["arch"]) {
      ASSIGN_OR_RETURN(sm.arch, r.String(m["arch"], f + ".arch"));
      if (sm.arch.empty()) return r.Error(m["arch"], f + ".arch", "must not be empty");
    }
    if (sm.path.empty() == sm.config.empty()) {
      return r.Error(m, f, "give exactly one of path (a checkpoint) or config (a random init)");
    }
    if (sm.path.empty() && sm.tokenizer.empty()) {
      return r.Error(m, f + ".tokenizer", "missing: a model given by config needs a tokenizer");
    }
    s.models.push_back(sm);
  }

  ASSIGN_OR_RETURN(s.methods, r.Strings(doc["methods"], "methods", 2));
  if (s.methods.empty()) return r.Error(doc["methods"], "methods", "expected exrm and/or dpo");
  std::set<std::string> seen_methods;
  for (size_t i = 0; i < s.methods.size(); ++i) {
    if (s.methods[i] != "exrm" && s.methods[i] != "dpo") {
      return r.Error(doc["methods"][i], "methods[" + std::to_string(i) + "]",
                     "unknown method '" + s.methods[i] + "' (expected exrm or dpo)");
    }
    if (!seen_methods.insert(s.methods[i]).second) {
      return r.Error(doc["methods"][i], "methods", "duplicate method '" + s.methods[i] + "'");
    }
  }
  const YAML::Node seeds = doc["seeds"];
  r.Note("seeds", seeds);
  if (!seeds.IsSequence() || seeds.size() == 0) {
    return r.Error(seeds, "seeds", "expected a non-empty list of integers");
  }
  if (seeds.size() > kMaxStudySeeds) {
    return r.Error(seeds, "seeds",
                   std::to_string(seeds.size()) + " seeds; a study has at most " +
                       std::to_string(kMaxStudySeeds));
  }
  std::set<int64_t> seen_seeds;
  for (size_t i = 0; i < seeds.size(); ++i) {
    ASSIGN_OR_RETURN(int64_t v, r.Int(seeds[i], "seeds[" + std::to_string(i) + "]"));
    if (v < 0) return r.Error(seeds[i], "seeds", "must be >= 0");
    if (!seen_seeds.insert(v).second) {
      return r.Error(seeds[i], "seeds", "duplicate seed " + std::to_string(v));
    }
    s.seeds.push_back(v);
  }
  ASSIGN_OR_RETURN(s.train_set, r.String(doc["train"], "train"));
  const YAML::Node eval = doc["eval"];
  r.Note("eval", eval);
  if (!eval.IsMap()) return r.Error(eval, "eval", "expected {id: [...], ood: [...]}");
  RETURN_IF_ERROR(r.Keys(eval, "eval", {"id", "ood", "benchmark"}));
  if (!eval["id"]) return r.Error(eval, "eval.id", "missing: the in-distribution eval set(s)");
  ASSIGN_OR_RETURN(s.id_eval, r.Strings(eval["id"], "eval.id"));
  if (s.id_eval.empty()) return r.Error(eval["id"], "eval.id", "expected at least one set");
  if (eval["ood"]) {
    ASSIGN_OR_RETURN(s.ood_eval, r.Strings(eval["ood"], "eval.ood"));
  }
  std::set<std::string> sets;
  for (const auto& e : s.id_eval) sets.insert(e);
  for (const auto& e : s.ood_eval) {
    if (!sets.insert(e).second) {
      return r.Error(eval["ood"], "eval.ood", "'" + e + "' is listed twice");
    }
  }
  if (eval["benchmark"]) {
    ASSIGN_OR_RETURN(s.benchmark_eval, r.Strings(eval["benchmark"], "eval.benchmark"));
    for (const auto& e : s.benchmark_eval) {
      if (!sets.insert(e).second) {
        return r.Error(eval["benchmark"], "eval.benchmark", "'" + e + "' is listed twice");
      }
    }
  }

  std::set<std::string> method_keys = TrainKeys();
  for (const auto& [k, where] : PlacedKeys()) method_keys.insert(k);
  for (const char* section : {"sft", "exrm", "dpo"}) {
    RETURN_IF_ERROR(RefuseBatchSize(r, doc[section], section));
  }
  if (doc["sft"]) {
    RETURN_IF_ERROR(r.Keys(doc["sft"], "sft", method_keys));
    ASSIGN_OR_RETURN(s.sft, r.Scalars(doc["sft"], "sft"));
  }
  std::set<std::string> exrm_keys = method_keys, dpo_keys = method_keys;
  exrm_keys.insert({"use_margin", "center_coefficient"});
  dpo_keys.insert({"beta", "label_smoothing", "reference_free"});
  if (doc["exrm"]) {
    RETURN_IF_ERROR(r.Keys(doc["exrm"], "exrm", exrm_keys));
    ASSIGN_OR_RETURN(s.exrm, r.Scalars(doc["exrm"], "exrm", {"learning_rate", "epochs"}));
  }
  if (doc["dpo"]) {
    RETURN_IF_ERROR(r.Keys(doc["dpo"], "dpo", dpo_keys));
    ASSIGN_OR_RETURN(s.dpo, r.Scalars(doc["dpo"], "dpo", {"learning_rate", "epochs", "beta"}));
  }
  if (doc["data"]) {
    RETURN_IF_ERROR(
        r.Keys(doc["data"], "data", {"max_length", "max_prompt_length", "too_long", "limit"}));
    ASSIGN_OR_RETURN(s.data, r.Scalars(doc["data"], "data"));
  }
  if (doc["resources"]) {
    const YAML::Node res = doc["resources"];
    RETURN_IF_ERROR(r.Keys(res, "resources", {"ranks", "device", "threads", "checkpoint_every"}));
    if (res["checkpoint_every"]) {
      ASSIGN_OR_RETURN(s.checkpoint_every,
                       r.Int(res["checkpoint_every"], "resources.checkpoint_every"));
    }
    if (res["ranks"]) {
      ASSIGN_OR_RETURN(s.ranks, r.Int(res["ranks"], "resources.ranks"));
    }
    if (res["threads"]) {
      ASSIGN_OR_RETURN(s.threads, r.Int(res["threads"], "resources.threads"));
    }
    if (res["device"]) {
      ASSIGN_OR_RETURN(s.device, r.String(res["device"], "resources.device"));
    }
    if (s.ranks < 1 || s.ranks > 4096) {
      return r.Error(res["ranks"], "resources.ranks",
                     "must be in [1, 4096], got " + std::to_string(s.ranks));
    }
    // The same bounds as rmgen-train's runtime.threads and runtime.checkpoint_every.
    if (s.threads < 0 || s.threads > 1024) {
      return r.Error(res["threads"], "resources.threads",
                     "must be in [0, 1024] (0: all cores), got " + std::to_string(s.threads));
    }
    if (s.checkpoint_every < 0 || s.checkpoint_every > 1000000000) {
      return r.Error(res["checkpoint_every"], "resources.checkpoint_every",
                     "must be in [0, 1000000000] (steps; 0: at the end), got " +
                         std::to_string(s.checkpoint_every));
    }
  }
  if (doc["selection"]) {
    const YAML::Node sel = doc["selection"];
    RETURN_IF_ERROR(r.Keys(sel, "selection", {"holdout"}));
    if (sel["holdout"]) {
      ASSIGN_OR_RETURN(json h, r.Scalars(sel, "selection"));
      if (!h["holdout"].is_number() || !(h["holdout"].get<double>() > 0) ||
          !(h["holdout"].get<double>() <= 0.5)) {
        return r.Error(sel["holdout"], "selection.holdout",
                       "expected a share of the prompts in (0, 0.5]");
      }
      s.selection_holdout = h["holdout"].get<double>();
    }
  }
  for (const char* method : {"exrm", "dpo"}) {
    const json& section = std::string(method) == "exrm" ? s.exrm : s.dpo;
    // Counted before the grid is built.
    const int64_t count = SweepPointCount(section);
    if (count > static_cast<int64_t>(kMaxSweepPoints)) {
      return r.ErrorAt(method, "a sweep of " + std::to_string(count) + " grid points; at most " +
                                   std::to_string(kMaxSweepPoints));
    }
    const auto points = SweepPoints(section);
    std::set<std::string> labels;
    for (const auto& p : points) {
      if (!labels.insert(p.label).second) {
        return r.ErrorAt(method, "two sweep values print alike ('" + p.label +
                                     "'); give values that differ in 6 significant digits");
      }
    }
  }
  if (s.HasSweep()) {
    // The held-out slice is scored under this name: no eval set may take it.
    for (const auto* sets : {&s.id_eval, &s.ood_eval, &s.benchmark_eval}) {
      for (const auto& e : *sets) {
        if (e == kSelectionSet) {
          return r.ErrorAt("eval", std::string("'") + kSelectionSet +
                                       "' names a sweep's held-out slice; rename that eval set");
        }
      }
    }
  }
  if (doc["priority"]) {
    ASSIGN_OR_RETURN(s.priority, r.Int(doc["priority"], "priority"));
  }
  if (doc["iterative"]) {
    ASSIGN_OR_RETURN(s.iterative, ParseIterative(r, doc["iterative"], s, dpo_keys));
  }
  // Plan once to check every job's rmgen-train spec now, with the lines still known (the
  // size first: nothing is built for a plan over the limit).
  RETURN_IF_ERROR(PlanWith(s, "", r, limits).status());
  return s;
}

StatusOr<std::vector<JobRecord>> PlanStudy(const Study& s, const std::string& user,
                                           const std::string& source, const PlanLimits& limits) {
  // Field lines are only known while parsing; planning a stored study names fields alone.
  return PlanWith(s, user, Reader(source), limits);
}

namespace {

using AddJob = std::function<std::string(const std::string&, const std::string&, json, json,
                                         std::vector<std::string>)>;

std::string OutputFile(const std::string& dep, const char* file) {
  return "${output:" + dep + "}/" + file;
}

// The iterative-DPO jobs of one model (study.h): per seed from its DPO policy pi_0.
Status PlanIterative(const Reader& r, const Study& s, const StudyModel& m,
                     const std::string& base_path, const std::map<int64_t, std::string>& exrm_dep,
                     const std::map<int64_t, std::string>& dpo_dep, const AddJob& add) {
  const json& it = s.iterative;
  const int64_t T = it["iterations"].get<int64_t>(), K = it["samples"].get<int64_t>();
  const json eval_prompts = {{"prompts", it["eval_prompts"]}, {"limit", it["eval_limit"]}};
  const double dpo_beta = s.dpo.value("beta", 0.03);
  for (int64_t seed : s.seeds) {
    const std::string pi0_dep = dpo_dep.at(seed);
    const std::string pi0 = run_dir::OutputCheckpointRef(pi0_dep);
    const std::string stem = m.name + "/iterative/seed" + std::to_string(seed) + "/";
    const json base_labels = {{"model", m.name}, {"seed", seed}};
    auto labels = [&](const std::string& role, int64_t t, const std::string& annotator) {
      json l = base_labels;
      l["role"] = role;
      l["iteration"] = t;
      if (!annotator.empty()) l["annotator"] = annotator;
      return l;
    };
    // `samples` responses a prompt of `prompts_data` from `policy`.
    auto generate = [&](const std::string& policy, json prompts_data, int64_t samples,
                        uint64_t gseed) -> StatusOr<json> {
      json g = it["sampling"];
      g["samples"] = samples;
      g["seed"] = gseed;
      return BuildSpec(r, s, m, "generate", "iterative", json::object(), policy, seed,
                       {{"data", std::move(prompts_data)}, {"generate", g}});
    };
    auto slice = [&](int64_t t) {
      return json{{"prompts", it["prompts"]},
                  {"slice_index", t - 1},
                  {"slice_count", T},
                  {"limit", it["prompts_per_iteration"]}};
    };
    // The judged outputs share one sampling seed across policies.
    // Sampling seeds from the study seed (bounded: generate.seed is at most 2^63 - 1).
    const uint64_t seed_base = (static_cast<uint64_t>(seed) % (uint64_t{1} << 50)) * 1000;
    const uint64_t judge_seed = seed_base + 999;
    ASSIGN_OR_RETURN(json base_gen_spec, generate(pi0, eval_prompts, 1, judge_seed));
    const std::string base_gen = add(stem + "policy0/generate-eval", "generate", base_gen_spec,
                                     labels("judge_generate", 0, ""), {pi0_dep});
    ASSIGN_OR_RETURN(json first_spec, generate(pi0, slice(1), K, seed_base + 1));
    const std::string first_gen =
        add(stem + "iter1/generate", "generate", first_spec, labels("generate", 1, ""), {pi0_dep});
    for (const auto& a : it["annotators"]) {
      const std::string annotator = a.get<std::string>();
      std::string prev = pi0, prev_dep = pi0_dep;
      for (int64_t t = 1; t <= T; ++t) {
        const std::string at = stem + annotator + "/iter" + std::to_string(t) + "/";
        std::string gen = first_gen;
        if (t > 1) {
          ASSIGN_OR_RETURN(json g, generate(prev, slice(t), K, seed_base + t));
          gen = add(at + "generate", "generate", g, labels("generate", t, annotator), {prev_dep});
        }
        // The annotator: the same seed's EXRM, or DPORM of pi_0 against its reference.
        json ann = {{"data", {{"generations", OutputFile(gen, run_dir::kGenerations)}}},
                    {"annotate", {{"reward", annotator}}}};
        std::vector<std::string> ann_deps = {gen};
        std::string scorer = pi0;
        if (annotator == "exrm") {
          scorer = run_dir::OutputCheckpointRef(exrm_dep.at(seed));
          ann_deps.push_back(exrm_dep.at(seed));
        } else {
          ann["annotate"]["reference"] = base_path;
          ann["annotate"]["beta"] = dpo_beta;
          if (gen == first_gen) ann_deps.push_back(pi0_dep);
        }
        ASSIGN_OR_RETURN(json ann_spec, BuildSpec(r, s, m, "annotate", "iterative", json::object(),
                                                  scorer, seed, ann));
        const std::string ann_dep =
            add(at + "annotate", "annotate", ann_spec, labels("annotate", t, annotator), ann_deps);
        // pi_t from pi_{t-1} (its reference too) on the annotated pairs.
        ASSIGN_OR_RETURN(
            json dpo_spec,
            BuildSpec(r, s, m, "dpo", "iterative.dpo", it["dpo"], prev, seed,
                      {{"data",
                        {{"train",
                          {{"format", "pairs"},
                           {"path", OutputFile(ann_dep, run_dir::kAnnotatedPairs)}}}}}}));
        const std::string dpo_dep_t =
            add(at + "train", "dpo", dpo_spec, labels("train", t, annotator), {ann_dep});
        prev = run_dir::OutputCheckpointRef(dpo_dep_t);
        prev_dep = dpo_dep_t;
        // Judge pi_t against pi_0 on the eval prompts.
        ASSIGN_OR_RETURN(json jg, generate(prev, eval_prompts, 1, judge_seed));
        const std::string jgen = add(at + "generate-eval", "generate", jg,
                                     labels("judge_generate", t, annotator), {dpo_dep_t});
        json judge = {{"data", {{"generations", OutputFile(jgen, run_dir::kGenerations)}}},
                      {"judge", {{"baseline", OutputFile(base_gen, run_dir::kGenerations)}}}};
        std::vector<std::string> judge_deps = {jgen, base_gen};
        std::string judge_model = base_path.empty() ? "" : base_path;
        if (it["judge"].is_string() && it["judge"] == "oracle") {
          judge["judge"]["reward"] = "oracle";
        } else {
          judge["judge"]["reward"] = "exrm";
          if (it["judge"].is_object()) {
            judge_model = it["judge"]["path"].get<std::string>();
          } else {
            judge_model = run_dir::OutputCheckpointRef(exrm_dep.at(seed));
            judge_deps.push_back(exrm_dep.at(seed));
          }
        }
        ASSIGN_OR_RETURN(json judge_spec, BuildSpec(r, s, m, "judge", "iterative", json::object(),
                                                    judge_model, seed, judge));
        add(at + "judge", "judge", judge_spec, labels("judge", t, annotator), judge_deps);
      }
    }
  }
  return Status::Ok();
}

StatusOr<std::vector<JobRecord>> PlanWith(const Study& s, const std::string& user, const Reader& r,
                                          const PlanLimits& limits) {
  RETURN_IF_ERROR(CheckPlanSize(s, r, limits));
  std::vector<JobRecord> jobs;
  auto add = [&](const std::string& name, const std::string& kind, json spec, json labels,
                 std::vector<std::string> deps) {
    JobRecord j;
    j.name = s.name + "/" + name;
    j.user = user;
    j.kind = kind;
    j.spec = std::move(spec);
    j.labels = std::move(labels);
    j.deps = std::move(deps);
    j.ranks = s.ranks;
    j.priority = s.priority;
    j.state = j.deps.empty() ? JobState::kQueued : JobState::kPending;
    j.reason = j.deps.empty() ? "waiting for a worker" : "waiting on dependencies";
    jobs.push_back(std::move(j));
    return "#" + std::to_string(jobs.size() - 1);
  };
  json eval_sets = json::array();
  for (const auto& e : s.id_eval) eval_sets.push_back(e);
  for (const auto& e : s.ood_eval) eval_sets.push_back(e);
  for (const auto& e : s.benchmark_eval) eval_sets.push_back(e);
  // A sweep trains every job without a held-out slice of the training source's prompts and
  // scores every checkpoint on it too: results select on it (kSelectionSet).
  const bool sweep = s.HasSweep();
  json data_extra = json::object();
  if (sweep) {
    data_extra["holdout"] = s.selection_holdout;
    eval_sets.push_back(
        {{"ref", s.train_set}, {"holdout", s.selection_holdout}, {"name", kSelectionSet}});
  }
  for (const auto& m : s.models) {
    std::string base_dep, base_path = m.path;
    if (!s.sft.is_null()) {
      ASSIGN_OR_RETURN(json spec,
                       BuildSpec(r, s, m, "sft", "sft", s.sft, m.path, 0, {{"data", data_extra}}));
      base_dep = add(m.name + "/sft", "sft", spec, {{"model", m.name}, {"role", "sft"}}, {});
      base_path = run_dir::OutputCheckpointRef(base_dep);
    }
    std::vector<std::string> base_deps;
    if (!base_dep.empty()) base_deps.push_back(base_dep);
    std::map<int64_t, std::string> train_dep[2];  // [exrm, dpo]: seed -> its training job
    for (const auto& method : s.methods) {
      if (method == "dpo" && base_path.empty()) {
        return r.ErrorAt("models", "model '" + m.name +
                                       "' is a random init (config) without an sft stage: DPO "
                                       "and DPORM need a reference checkpoint. HINT: add `sft:`");
      }
      const std::string kind = method == "exrm" ? "reward" : "dpo";
      for (const SweepPoint& point : SweepPoints(method == "exrm" ? s.exrm : s.dpo)) {
        const json& hyper = point.hyper;
        // "gemma-2b/dpo/lr=1e-06,beta=0.1/seed0/train" in a sweep.
        std::string stem = m.name + "/" + method + "/";
        if (!point.label.empty()) {
          std::string p = point.label;
          std::replace(p.begin(), p.end(), ' ', ',');
          stem += p + "/";
        }
        for (int64_t seed : s.seeds) {
          json labels = {{"model", m.name}, {"method", method}, {"seed", seed}};
          if (sweep) labels["point"] = point.label;
          json extra = {{"data", data_extra}};
          if (method == "exrm") extra["model"] = {{"init_seed", seed}};
          ASSIGN_OR_RETURN(json train,
                           BuildSpec(r, s, m, kind, method, hyper, base_path, seed, extra));
          json tl = labels;
          tl["role"] = "train";
          const std::string tdep =
              add(stem + "seed" + std::to_string(seed) + "/train", kind, train, tl, base_deps);
          train_dep[method == "exrm" ? 0 : 1][seed] = tdep;
          // One eval job per checkpoint, every eval set (and in a sweep the held-out slice).
          json ev = {{"data", {{"eval", eval_sets}}},
                     {"eval", {{"reward", method == "exrm" ? "exrm" : "dporm"}}}};
          if (method == "dpo") {
            ev["eval"]["reference"] = base_path;
            ev["eval"]["beta"] = hyper.value("beta", 0.03);
          }
          // The weights' dtype of training (bf16 7B models evaluate in bf16 too).
          if (hyper.contains("dtype")) ev["model"] = {{"dtype", hyper["dtype"]}};
          ASSIGN_OR_RETURN(json eval, BuildSpec(r, s, m, "eval", "eval", json::object(),
                                                run_dir::OutputCheckpointRef(tdep), seed, ev));
          json el = labels;
          el["role"] = "eval";
          add(stem + "seed" + std::to_string(seed) + "/eval", "eval", eval, el, {tdep});
        }
      }
    }
    if (s.iterative.is_object()) {
      RETURN_IF_ERROR(PlanIterative(r, s, m, base_path, train_dep[0], train_dep[1], add));
    }
  }
  return jobs;
}

}  // namespace
}  // namespace rmgen::coord
