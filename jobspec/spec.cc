#include "jobspec/spec.h"

#include <yaml-cpp/yaml.h>

#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <map>

#include "common/file.h"
#include "common/yaml_guard.h"

namespace rmgen {
namespace {

using nlohmann::json;

enum class T { kString, kInt, kNumber, kBool, kDataset, kDatasetList };

struct FieldDef {
  T type;
  json def;  // null: no default (optional unless a kind requires it)
};

// Every field a spec may have, by dotted path, with its type and default.
const std::map<std::string, FieldDef>& Schema() {
  static const std::map<std::string, FieldDef> s = {
      {"kind", {T::kString, nullptr}},
      {"model.path", {T::kString, nullptr}},
      {"model.config", {T::kString, nullptr}},
      {"model.init_seed", {T::kInt, 0}},
      {"model.dtype", {T::kString, "float32"}},
      {"tokenizer", {T::kString, nullptr}},
      {"template", {T::kString, "none"}},
      {"data.catalog", {T::kString, "configs/datasets.yaml"}},
      {"data.data_root", {T::kString, ""}},
      {"data.train", {T::kDataset, nullptr}},
      {"data.eval", {T::kDatasetList, json::array()}},
      {"data.max_length", {T::kInt, 512}},
      {"data.max_prompt_length", {T::kInt, 128}},
      {"data.too_long", {T::kString, "truncate"}},
      {"data.limit", {T::kInt, 0}},
      {"data.holdout", {T::kNumber, nullptr}},  // absent: none (older specs resume as before)
      {"data.prompts", {T::kDataset, nullptr}},
      {"data.generations", {T::kString, nullptr}},
      {"data.slice_index", {T::kInt, 0}},
      {"data.slice_count", {T::kInt, 1}},
      {"generate.samples", {T::kInt, 1}},
      {"generate.max_new_tokens", {T::kInt, 128}},
      {"generate.temperature", {T::kNumber, 1.0}},
      {"generate.top_p", {T::kNumber, 1.0}},
      {"generate.top_k", {T::kInt, 0}},
      {"generate.greedy", {T::kBool, false}},
      {"generate.seed", {T::kInt, 0}},
      {"generate.batch_size", {T::kInt, 16}},
      {"annotate.reward", {T::kString, "exrm"}},
      {"annotate.reference", {T::kString, ""}},
      {"annotate.beta", {T::kNumber, nullptr}},
      {"judge.reward", {T::kString, "oracle"}},
      {"judge.baseline", {T::kString, ""}},
      {"train.epochs", {T::kInt, 1}},
      {"train.learning_rate", {T::kNumber, nullptr}},  // kind-dependent default
      {"train.batch_size", {T::kInt, nullptr}},        // default 8, or per_rank_batch_size x ranks
      {"train.per_rank_batch_size", {T::kInt, nullptr}},
      {"train.ranks", {T::kInt, nullptr}},
      {"train.gradient_accumulation", {T::kInt, 1}},
      {"train.schedule", {T::kString, "linear"}},
      {"train.warmup_ratio", {T::kNumber, 0.0}},
      {"train.warmup_steps", {T::kInt, 0}},
      {"train.max_grad_norm", {T::kNumber, 1.0}},
      {"train.weight_decay", {T::kNumber, 0.0}},
      {"train.adam_beta1", {T::kNumber, 0.9}},
      {"train.adam_beta2", {T::kNumber, 0.999}},
      {"train.adam_epsilon", {T::kNumber, 1e-8}},
      {"train.max_steps", {T::kInt, 0}},
      {"train.seed", {T::kInt, 0}},
      {"train.length_grouped", {T::kBool, true}},
      {"train.skip_nonfinite", {T::kBool, false}},
      {"train.gradient_checkpointing", {T::kBool, false}},
      {"train.bf16", {T::kBool, false}},
      {"runtime.device", {T::kString, "cpu"}},
      {"reward.use_margin", {T::kBool, false}},
      {"reward.center_coefficient", {T::kNumber, 0.0}},
      {"dpo.beta", {T::kNumber, 0.03}},
      {"dpo.label_smoothing", {T::kNumber, 0.0}},
      {"dpo.reference", {T::kString, ""}},
      {"dpo.reference_free", {T::kBool, false}},
      {"dpo.live_reference", {T::kBool, false}},
      {"dpo.reference_cache", {T::kString, ""}},
      {"eval.reward", {T::kString, ""}},
      {"eval.reference", {T::kString, ""}},
      {"eval.beta", {T::kNumber, nullptr}},
      {"eval.batch_size", {T::kInt, 16}},
      {"runtime.threads", {T::kInt, 0}},
      {"runtime.checkpoint_every", {T::kInt, 0}},
      {"runtime.log_every", {T::kInt, 1}},
      {"runtime.zero1", {T::kBool, false}},
      {"runtime.bucket_mb", {T::kNumber, 25.0}},
      {"runtime.overlap", {T::kBool, true}},
      {"runtime.shared_prefix", {T::kBool, true}},
      {"runtime.comm_timeout_s", {T::kNumber, 600.0}},
      {"runtime.vocab_chunk", {T::kInt, 32768}},
      {"runtime.profile", {T::kBool, false}},
      {"runtime.attention", {T::kString, "auto"}},
      {"runtime.fused_kernels", {T::kBool, false}},
  };
  return s;
}

// The range of every numeric field (spec.h documents them). A value outside is refused with
// the field and the range; nan and inf never parse.
constexpr int64_t kInt64Max = std::numeric_limits<int64_t>::max();
struct IntRange {
  const char* path;
  int64_t lo, hi;
  const char* note;  // appended to the message: what 0 means
};
const std::vector<IntRange>& IntRanges() {
  static const std::vector<IntRange> r = {
      {"model.init_seed", 0, kInt64Max, ""},
      {"data.max_length", 1, kMaxSequenceLength, " (tokens)"},
      {"data.max_prompt_length", 1, kMaxSequenceLength, " (tokens)"},
      {"data.limit", 0, kInt64Max, " (0: no limit)"},
      {"train.epochs", 1, 1000, ""},
      {"train.batch_size", 1, kMaxGlobalBatch, " (the global micro-batch)"},
      {"train.per_rank_batch_size", 1, kMaxBatch, ""},
      {"train.ranks", 1, kMaxRanks, ""},
      {"train.gradient_accumulation", 1, kMaxBatch, ""},
      {"train.warmup_steps", 0, kMaxSteps, ""},
      {"train.max_steps", 0, kMaxSteps, " (0: epochs)"},
      {"train.seed", 0, kInt64Max, ""},
      {"eval.batch_size", 1, kMaxBatch, ""},
      {"data.slice_index", 0, kMaxRanks, ""},
      {"data.slice_count", 1, kMaxRanks, ""},
      {"generate.samples", 1, 1024, ""},
      {"generate.max_new_tokens", 1, kMaxSequenceLength, " (tokens)"},
      {"generate.top_k", 0, kInt64Max, " (0: off)"},
      {"generate.seed", 0, kInt64Max, ""},
      {"generate.batch_size", 1, kMaxBatch, ""},
      {"runtime.threads", 0, kMaxThreads, " (0: all cores)"},
      {"runtime.checkpoint_every", 0, kMaxSteps, " (steps; 0: at the end)"},
      {"runtime.log_every", 1, kMaxSteps, " (steps)"},
      {"runtime.vocab_chunk", 0, (int64_t{1} << 31) - 1, " (vocabulary rows; 0: full logits)"},
  };
  return r;
}
struct NumberRange {
  const char* path;
  double lo, hi;
  bool lo_open, hi_open;
  const char* note;
};
const std::vector<NumberRange>& NumberRanges() {
  static const std::vector<NumberRange> r = {
      {"data.holdout", 0, 1, false, true, " (0: none)"},
      {"train.learning_rate", 0, 1, true, false, ""},
      {"train.warmup_ratio", 0, 1, false, false, ""},
      {"train.max_grad_norm", 0, 1e6, false, false, " (0: off)"},
      {"train.weight_decay", 0, 1, false, false, ""},
      {"train.adam_beta1", 0, 1, false, true, ""},
      {"train.adam_beta2", 0, 1, false, true, ""},
      {"train.adam_epsilon", 0, 1, true, false, ""},
      {"reward.center_coefficient", 0, 100, false, false, ""},
      {"dpo.beta", 0, 100, true, false, ""},
      {"dpo.label_smoothing", 0, 0.5, false, true, ""},
      {"eval.beta", 0, 100, true, false, ""},
      {"annotate.beta", 0, 100, true, false, ""},
      {"generate.temperature", 0, 100, true, false, ""},
      {"generate.top_p", 0, 1, true, false, " (1: off)"},
      {"runtime.bucket_mb", 0, 4096, true, false, " (MiB)"},
      {"runtime.comm_timeout_s", 0, 86400, true, false, " (seconds)"},
  };
  return r;
}

std::string FormatNumber(double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%g", v);
  return buf;
}

bool IsSection(const std::string& prefix) {
  for (const auto& [path, f] : Schema()) {
    if (path.rfind(prefix + ".", 0) == 0) return true;
  }
  return false;
}

class Parser {
 public:
  explicit Parser(std::string source) : source_(std::move(source)) {}

  // Nodes built from JSON (ParseJobSpecJson) have no line.
  Status Error(const YAML::Node& n, const std::string& field, const std::string& what) const {
    const int line = n.Mark().line;
    return InvalidArgumentError(source_ + (line < 0 ? "" : ":" + std::to_string(line + 1)) +
                                ": field '" + field + "': " + what);
  }

  StatusOr<json> Scalar(const YAML::Node& n, const std::string& path, T type) const {
    if (!n.IsScalar()) return Error(n, path, "expected a single value");
    const std::string s = n.Scalar();
    try {
      switch (type) {
        case T::kString: return json(s);
        case T::kBool: return json(n.as<bool>());
        case T::kInt: {
          size_t used = 0;
          long long v = std::stoll(s, &used);
          if (used != s.size()) throw std::invalid_argument(s);
          return json(static_cast<int64_t>(v));
        }
        case T::kNumber: {
          size_t used = 0;
          double v = std::stod(s, &used);
          if (used != s.size() || !std::isfinite(v)) throw std::invalid_argument(s);
          return json(v);
        }
        default: break;
      }
    } catch (...) {
    }
    const char* want = type == T::kBool  ? "true or false"
                       : type == T::kInt ? "an integer"
                                         : "a finite number";
    return Error(n, path, std::string("expected ") + want + ", got '" + s + "'");
  }

  StatusOr<json> Dataset(const YAML::Node& n, const std::string& path) const {
    if (n.IsScalar()) return json(n.Scalar());
    if (!n.IsMap()) return Error(n, path, "expected a catalog name or {format, path, ...}");
    json d = json::object();
    for (const auto& kv : n) {
      const std::string k = kv.first.Scalar();
      if (k != "name" && k != "format" && k != "path" && k != "subset" && k != "split" &&
          k != "ref" && k != "holdout") {
        return Error(kv.first, path + "." + k,
                     "unknown field (expected name, format, path, subset, split, or ref and "
                     "holdout)");
      }
      if (k == "holdout") {
        ASSIGN_OR_RETURN(d[k], Scalar(kv.second, path + "." + k, T::kNumber));
        const double f = d[k].get<double>();
        if (!(f > 0 && f < 1)) return Error(kv.second, path + "." + k, "must be in (0, 1)");
        continue;
      }
      if (!kv.second.IsScalar()) return Error(kv.second, path + "." + k, "expected a string");
      d[k] = kv.second.Scalar();
    }
    if (d.contains("ref")) {
      if (!d.contains("holdout") || d.contains("path") || d.contains("format")) {
        return Error(n, path, "a held-out slice is {ref: NAME[:SPLIT], holdout: F[, name]}");
      }
      return d;
    }
    if (d.contains("holdout")) return Error(n, path, "holdout needs ref: NAME[:SPLIT]");
    if (!d.contains("path") || !d.contains("format")) {
      return Error(n, path, "a dataset given by path needs 'format' and 'path'");
    }
    return d;
  }

  // Walks a mapping, checking every key against the schema.
  Status Walk(const YAML::Node& map, const std::string& prefix, json* out) const {
    for (const auto& kv : map) {
      const std::string key = kv.first.Scalar();
      const std::string path = prefix.empty() ? key : prefix + "." + key;
      auto it = Schema().find(path);
      if (it == Schema().end()) {
        if (IsSection(path)) {
          if (!kv.second.IsMap()) return Error(kv.second, path, "expected a mapping");
          RETURN_IF_ERROR(Walk(kv.second, path, out));
          continue;
        }
        return Error(kv.first, path, "unknown field");
      }
      if (kv.second.IsNull()) continue;
      json v;
      if (it->second.type == T::kDataset) {
        ASSIGN_OR_RETURN(v, Dataset(kv.second, path));
      } else if (it->second.type == T::kDatasetList) {
        if (!kv.second.IsSequence()) return Error(kv.second, path, "expected a list of datasets");
        v = json::array();
        for (size_t i = 0; i < kv.second.size(); ++i) {
          ASSIGN_OR_RETURN(json d, Dataset(kv.second[i], path + "[" + std::to_string(i) + "]"));
          v.push_back(d);
        }
      } else {
        ASSIGN_OR_RETURN(v, Scalar(kv.second, path, it->second.type));
      }
      if (kv.second.Mark().line >= 0) lines_[path] = kv.second.Mark().line + 1;
      (*out)[json::json_pointer("/" + Pointer(path))] = v;
    }
    return Status::Ok();
  }

  Status Check(bool ok, const std::string& field, const std::string& what) const {
    if (ok) return Status::Ok();
    auto it = lines_.find(field);
    const std::string where =
        it == lines_.end() ? source_ : source_ + ":" + std::to_string(it->second);
    return InvalidArgumentError(where + ": field '" + field + "': " + what);
  }

  static std::string Pointer(const std::string& dotted) {
    std::string p = dotted;
    for (char& c : p) c = c == '.' ? '/' : c;
    return p;
  }

 private:
  std::string source_;
  mutable std::map<std::string, int> lines_;
};

DatasetRef ToRef(const json& j) {
  DatasetRef r;
  if (j.is_string()) {
    r.name = j.get<std::string>();
    return r;
  }
  if (j.contains("ref")) {
    r.catalog_ref = j["ref"].get<std::string>();
    r.holdout = j["holdout"].get<double>();
    r.name = j.value("name", r.catalog_ref + "@holdout");
    return r;
  }
  r.format = j.value("format", "");
  r.path = j.value("path", "");
  r.subset = j.value("subset", "");
  r.split = j.value("split", "");
  r.name = j.value("name", r.path);
  return r;
}

}  // namespace

const char* JobKindName(JobKind k) {
  switch (k) {
    case JobKind::kSft: return "sft";
    case JobKind::kReward: return "reward";
    case JobKind::kDpo: return "dpo";
    case JobKind::kEval: return "eval";
    case JobKind::kGenerate: return "generate";
    case JobKind::kAnnotate: return "annotate";
    case JobKind::kJudge: return "judge";
  }
  return "";
}

namespace {

// A spec has some 60 fields and a few eval sets: 10,000 values is far beyond any real one.
YamlLimits SpecLimits() {
  YamlLimits l;
  l.max_nodes = 10000;
  return l;
}

// A JSON value as the YAML node its text would load as (scalars keep the text JSON prints),
// within the guard's limits (nesting, nodes).
Status JsonToYaml(const json& j, const std::string& source, int depth, int64_t* nodes,
                  YAML::Node* out) {
  const YamlLimits limits = SpecLimits();
  if (++*nodes > limits.max_nodes) {
    return InvalidArgumentError(source + ": more than " + std::to_string(limits.max_nodes) +
                                " values; job specs hold at most " +
                                std::to_string(limits.max_nodes));
  }
  if (j.is_object() || j.is_array()) {
    if (depth >= limits.max_depth) {
      return InvalidArgumentError(source + ": nested deeper than " +
                                  std::to_string(limits.max_depth) + " levels");
    }
    *out = YAML::Node(j.is_object() ? YAML::NodeType::Map : YAML::NodeType::Sequence);
    for (auto it = j.begin(); it != j.end(); ++it) {
      YAML::Node child;
      RETURN_IF_ERROR(JsonToYaml(it.value(), source, depth + 1, nodes, &child));
      if (j.is_object()) {
        out->force_insert(it.key(), child);  // keys are distinct: no lookup
      } else {
        out->push_back(child);
      }
    }
  } else if (j.is_null()) {
    *out = YAML::Node(YAML::NodeType::Null);
  } else if (j.is_string()) {
    *out = YAML::Node(j.get<std::string>());
  } else {
    *out = YAML::Node(j.dump());  // numbers and booleans as JSON prints them
  }
  return Status::Ok();
}

StatusOr<JobSpec> ParseDocument(const YAML::Node& doc, const std::string& source);

}  // namespace

StatusOr<JobSpec> ParseJobSpec(const std::string& text, const std::string& source) {
  RETURN_IF_ERROR(CheckYaml(text, source, "job specs", SpecLimits()));
  YAML::Node doc;
  try {
    doc = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    return InvalidArgumentError(source + ":" + std::to_string(e.mark.line + 1) +
                                ": not valid YAML or JSON (" + e.msg + ")");
  }
  return ParseDocument(doc, source);
}

StatusOr<JobSpec> ParseJobSpecJson(const nlohmann::json& spec, const std::string& source) {
  if (!spec.is_object()) return InvalidArgumentError(source + ": expected a mapping of fields");
  YAML::Node doc;
  int64_t nodes = 0;
  RETURN_IF_ERROR(JsonToYaml(spec, source, 0, &nodes, &doc));
  return ParseDocument(doc, source);
}

namespace {

StatusOr<JobSpec> ParseDocument(const YAML::Node& doc, const std::string& source) {
  if (!doc.IsMap()) return InvalidArgumentError(source + ": expected a mapping of fields");
  Parser p(source);
  json j = json::object();
  try {
    RETURN_IF_ERROR(p.Walk(doc, "", &j));
  } catch (const YAML::Exception& e) {
    return InvalidArgumentError(
        source + (e.mark.line < 0 ? "" : ":" + std::to_string(e.mark.line + 1)) + ": " + e.msg);
  }
  // Defaults. The generate and annotate sections (and prompt slices) are filled in only for
  // their kinds, so the resolved spec of every other kind, and the resume key hashed from it,
  // stay as they were.
  const std::string kind_name =
      j.contains("kind") && j["kind"].is_string() ? j["kind"].get<std::string>() : "";
  auto kind_section = [](const std::string& path) -> std::string {
    if (path.rfind("generate.", 0) == 0 || path.rfind("data.slice_", 0) == 0) return "generate";
    if (path.rfind("annotate.", 0) == 0) return "annotate";
    if (path.rfind("judge.", 0) == 0) return "judge";
    return "";
  };
  for (const auto& [path, f] : Schema()) {
    const json::json_pointer ptr("/" + Parser::Pointer(path));
    const std::string only = kind_section(path);
    if (!only.empty() && only != kind_name) continue;
    if (!j.contains(ptr) && !f.def.is_null()) j[ptr] = f.def;
  }
  auto get = [&](const std::string& path) -> const json& {
    static const json null;
    const json::json_pointer ptr("/" + Parser::Pointer(path));
    return j.contains(ptr) ? j.at(ptr) : null;
  };
  JobSpec s;
  const std::string kind = get("kind").is_string() ? get("kind").get<std::string>() : "";
  if (kind == "sft") {
    s.kind = JobKind::kSft;
  } else if (kind == "reward") {
    s.kind = JobKind::kReward;
  } else if (kind == "dpo") {
    s.kind = JobKind::kDpo;
  } else if (kind == "eval") {
    s.kind = JobKind::kEval;
  } else if (kind == "generate") {
    s.kind = JobKind::kGenerate;
  } else if (kind == "annotate") {
    s.kind = JobKind::kAnnotate;
  } else if (kind == "judge") {
    s.kind = JobKind::kJudge;
  } else {
    RETURN_IF_ERROR(p.Check(false, "kind",
                            kind.empty()
                                ? "missing (sft, reward, dpo, eval, generate, annotate or judge)"
                                : "expected sft, reward, dpo, eval, generate, annotate or "
                                  "judge, got '" +
                                      kind + "'"));
  }
  // Learning-rate default by kind (REFERENCE section 1: EXRM 5e-6, DPO 1e-6).
  if (get("train.learning_rate").is_null()) {
    j["train"]["learning_rate"] = s.kind == JobKind::kDpo ? 1e-6 : 5e-6;
  }
  if (get("eval.beta").is_null()) j["eval"]["beta"] = get("dpo.beta");
  if (s.kind == JobKind::kAnnotate && get("annotate.beta").is_null()) {
    j["annotate"]["beta"] = get("dpo.beta");
  }
  // Ranges, on the parsed values (before any is narrowed to an int or multiplied).
  for (const IntRange& r : IntRanges()) {
    const json& v = get(r.path);
    if (v.is_null()) continue;
    const int64_t x = v.get<int64_t>();
    RETURN_IF_ERROR(p.Check(x >= r.lo && x <= r.hi, r.path,
                            (r.hi == kInt64Max ? "must be >= " + std::to_string(r.lo)
                                               : "must be in [" + std::to_string(r.lo) + ", " +
                                                     std::to_string(r.hi) + "]") +
                                r.note + ", got " + std::to_string(x)));
  }
  for (const NumberRange& r : NumberRanges()) {
    const json& v = get(r.path);
    if (v.is_null()) continue;
    const double x = v.get<double>();
    const bool ok = std::isfinite(x) && (r.lo_open ? x > r.lo : x >= r.lo) &&
                    (r.hi_open ? x < r.hi : x <= r.hi);
    RETURN_IF_ERROR(p.Check(ok, r.path,
                            std::string("must be in ") + (r.lo_open ? "(" : "[") +
                                FormatNumber(r.lo) + ", " + FormatNumber(r.hi) +
                                (r.hi_open ? ")" : "]") + r.note + ", got " + FormatNumber(x)));
  }
  // Batch: the global micro-batch (train.batch_size), or per_rank_batch_size x ranks.
  {
    const json &global = get("train.batch_size"), &per_rank = get("train.per_rank_batch_size"),
               &ranks = get("train.ranks");
    if (!per_rank.is_null()) {
      RETURN_IF_ERROR(p.Check(!ranks.is_null(), "train.ranks",
                              "missing: per_rank_batch_size needs the number of ranks the job is "
                              "planned for (the global micro-batch is per_rank_batch_size x "
                              "ranks)"));
      // Both bounded above: no overflow.
      const int64_t want = per_rank.get<int64_t>() * ranks.get<int64_t>();
      RETURN_IF_ERROR(p.Check(want <= kMaxGlobalBatch, "train.per_rank_batch_size",
                              "per_rank_batch_size x ranks = " + std::to_string(want) +
                                  ": the global micro-batch must be at most " +
                                  std::to_string(kMaxGlobalBatch)));
      RETURN_IF_ERROR(
          p.Check(global.is_null() || global.get<int64_t>() == want, "train.batch_size",
                  "the global micro-batch " + (global.is_null() ? std::string() : global.dump()) +
                      " disagrees with per_rank_batch_size x ranks = " + std::to_string(want) +
                      "; give one of them"));
      j["train"]["batch_size"] = want;
    } else if (global.is_null()) {
      j["train"]["batch_size"] = 8;
    }
  }
  if (get("eval.reward").get<std::string>().empty()) {
    j["eval"]["reward"] = s.kind == JobKind::kDpo ? "dporm" : "exrm";
  }

  s.model_path = get("model.path").is_string() ? get("model.path").get<std::string>() : "";
  s.model_config = get("model.config").is_string() ? get("model.config").get<std::string>() : "";
  s.init_seed = get("model.init_seed").get<uint64_t>();
  s.dtype = get("model.dtype");
  s.tokenizer = get("tokenizer").is_string() ? get("tokenizer").get<std::string>() : "";
  s.chat_template = get("template");
  s.catalog = get("data.catalog");
  s.data_root = get("data.data_root");
  if (!get("data.train").is_null()) s.train_set = ToRef(get("data.train"));
  for (const auto& e : get("data.eval")) s.eval_sets.push_back(ToRef(e));
  s.max_length = get("data.max_length").get<int>();
  s.max_prompt_length = get("data.max_prompt_length").get<int>();
  s.drop_too_long = get("data.too_long") == "drop";
  s.limit = get("data.limit");
  s.holdout = get("data.holdout").is_null() ? 0.0 : get("data.holdout").get<double>();
  s.epochs = get("train.epochs");
  s.learning_rate = get("train.learning_rate");
  s.batch_size = get("train.batch_size");
  if (!get("train.ranks").is_null()) {
    s.ranks = get("train.ranks");
    s.per_rank_batch_size = (s.batch_size + s.ranks - 1) / s.ranks;
  }
  s.gradient_accumulation = get("train.gradient_accumulation");
  s.schedule = get("train.schedule");
  s.warmup_ratio = get("train.warmup_ratio");
  s.warmup_steps = get("train.warmup_steps");
  s.max_grad_norm = get("train.max_grad_norm");
  s.weight_decay = get("train.weight_decay");
  s.adam_beta1 = get("train.adam_beta1");
  s.adam_beta2 = get("train.adam_beta2");
  s.adam_epsilon = get("train.adam_epsilon");
  s.max_steps = get("train.max_steps");
  s.seed = get("train.seed").get<uint64_t>();
  s.length_grouped = get("train.length_grouped");
  s.skip_nonfinite = get("train.skip_nonfinite");
  s.gradient_checkpointing = get("train.gradient_checkpointing");
  s.bf16 = get("train.bf16");
  s.device = get("runtime.device");
  s.use_margin = get("reward.use_margin");
  s.center_coefficient = get("reward.center_coefficient");
  s.beta = get("dpo.beta");
  s.label_smoothing = get("dpo.label_smoothing");
  s.reference = get("dpo.reference");
  s.reference_free = get("dpo.reference_free");
  s.live_reference = get("dpo.live_reference");
  s.reference_cache = get("dpo.reference_cache");
  s.eval_reward = get("eval.reward");
  if (s.kind == JobKind::kEval) {
    s.beta = get("eval.beta");
    if (!get("eval.reference").get<std::string>().empty()) s.reference = get("eval.reference");
  }
  s.eval_batch_size = get("eval.batch_size");
  if (!get("data.prompts").is_null()) s.prompts_set = ToRef(get("data.prompts"));
  s.generations =
      get("data.generations").is_string() ? get("data.generations").get<std::string>() : "";
  if (s.kind == JobKind::kGenerate) {
    s.slice_index = get("data.slice_index");
    s.slice_count = get("data.slice_count");
    s.samples = get("generate.samples");
    s.max_new_tokens = get("generate.max_new_tokens");
    s.temperature = get("generate.temperature");
    s.top_p = get("generate.top_p");
    s.top_k = get("generate.top_k");
    s.greedy = get("generate.greedy");
    s.generate_seed = get("generate.seed").get<uint64_t>();
    s.generate_batch_size = get("generate.batch_size");
  }
  if (s.kind == JobKind::kJudge) {
    s.judge_reward = get("judge.reward");
    s.judge_baseline = get("judge.baseline");
  }
  if (s.kind == JobKind::kAnnotate) {
    s.annotate_reward = get("annotate.reward");
    s.beta = get("annotate.beta");
    s.reference = get("annotate.reference");
  }
  s.threads = get("runtime.threads");
  s.checkpoint_every = get("runtime.checkpoint_every");
  s.log_every = get("runtime.log_every");
  s.zero1 = get("runtime.zero1");
  s.bucket_mb = get("runtime.bucket_mb");
  s.overlap = get("runtime.overlap");
  s.shared_prefix = get("runtime.shared_prefix");
  s.comm_timeout_s = get("runtime.comm_timeout_s");
  s.vocab_chunk = get("runtime.vocab_chunk");
  s.profile = get("runtime.profile");
  s.attention = get("runtime.attention");
  s.fused_kernels = get("runtime.fused_kernels");

  // Semantic checks, each naming its field.
  const bool oracle_judge = s.kind == JobKind::kJudge && s.judge_reward == "oracle";
  RETURN_IF_ERROR(p.Check(oracle_judge || s.model_path.empty() != s.model_config.empty(), "model",
                          "give exactly one of model.path (a checkpoint) or model.config "
                          "(a config.json for a random init)"));
  RETURN_IF_ERROR(p.Check(s.dtype == "float32" || s.dtype == "bfloat16", "model.dtype",
                          "expected float32 or bfloat16"));
  RETURN_IF_ERROR(p.Check(
      s.chat_template == "none" || s.chat_template == "gemma" || s.chat_template == "zephyr",
      "template", "expected none, gemma or zephyr"));
  const bool trains =
      s.kind == JobKind::kSft || s.kind == JobKind::kReward || s.kind == JobKind::kDpo;
  RETURN_IF_ERROR(p.Check(!trains || !get("data.train").is_null(), "data.train",
                          "missing: a training job needs a training set"));
  RETURN_IF_ERROR(p.Check(s.kind != JobKind::kGenerate || !get("data.prompts").is_null(),
                          "data.prompts",
                          "missing: a generate job needs a prompt source (a catalog set, or "
                          "{format: prompts, path: FILE.jsonl})"));
  RETURN_IF_ERROR(p.Check(s.kind != JobKind::kAnnotate || !s.generations.empty(),
                          "data.generations",
                          "missing: an annotate job needs a generate job's generations.jsonl"));
  RETURN_IF_ERROR(
      p.Check(s.slice_index < s.slice_count, "data.slice_index",
              "must be below data.slice_count (" + std::to_string(s.slice_count) + ")"));
  RETURN_IF_ERROR(p.Check(s.judge_reward == "oracle" || s.judge_reward == "exrm", "judge.reward",
                          "expected oracle (the synthetic suite's rule) or exrm"));
  RETURN_IF_ERROR(p.Check(s.kind != JobKind::kJudge || !s.judge_baseline.empty(), "judge.baseline",
                          "missing: a judge job compares against a baseline's generations.jsonl"));
  RETURN_IF_ERROR(p.Check(s.kind != JobKind::kJudge || !s.generations.empty(), "data.generations",
                          "missing: a judge job needs the policy's generations.jsonl"));
  RETURN_IF_ERROR(p.Check(s.annotate_reward == "exrm" || s.annotate_reward == "dporm",
                          "annotate.reward", "expected exrm or dporm"));
  RETURN_IF_ERROR(
      p.Check(s.kind != JobKind::kAnnotate || s.annotate_reward != "dporm" || !s.reference.empty(),
              "annotate.reference",
              "missing: DPORM annotation needs the reference the policy was trained against"));
  RETURN_IF_ERROR(p.Check(s.kind != JobKind::kEval || !s.eval_sets.empty(), "data.eval",
                          "missing: an eval job needs at least one eval set"));
  RETURN_IF_ERROR(p.Check(s.max_prompt_length > 0 && s.max_prompt_length < s.max_length,
                          "data.max_prompt_length", "must be positive and below max_length"));
  RETURN_IF_ERROR(p.Check(get("data.too_long") == "truncate" || get("data.too_long") == "drop",
                          "data.too_long", "expected truncate or drop"));
  RETURN_IF_ERROR(
      p.Check(s.schedule == "linear" || s.schedule == "cosine" || s.schedule == "constant",
              "train.schedule", "expected linear, cosine or constant"));
  RETURN_IF_ERROR(p.Check(s.eval_reward == "exrm" || s.eval_reward == "dporm" ||
                              s.eval_reward == "ref_free_sum" || s.eval_reward == "ref_free_avg",
                          "eval.reward", "expected exrm, dporm, ref_free_sum or ref_free_avg"));
  RETURN_IF_ERROR(p.Check(
      s.kind != JobKind::kEval || s.eval_reward != "dporm" || !s.reference.empty(),
      "eval.reference", "missing: DPORM needs the reference the policy was trained against"));
  RETURN_IF_ERROR(p.Check(s.device == "cpu" || s.device.rfind("cuda", 0) == 0, "runtime.device",
                          "expected cpu, cuda or cuda:N"));
  RETURN_IF_ERROR(p.Check(s.attention == "auto" || s.attention == "masked", "runtime.attention",
                          "expected auto or masked, got '" + s.attention + "'"));
  s.resolved = j;
  return s;
}

}  // namespace

std::vector<std::pair<std::string, std::string>> SpecPaths(const JobSpec& s) {
  std::vector<std::pair<std::string, std::string>> out;
  auto add = [&](const std::string& field, const std::string& path) {
    if (!path.empty()) out.emplace_back(field, path);
  };
  add("model.path", s.model_path);
  add("model.config", s.model_config);
  add("tokenizer", s.tokenizer);
  add("data.catalog", s.catalog);
  add("data.data_root", s.data_root);
  add("data.train.path", s.train_set.path);
  for (size_t i = 0; i < s.eval_sets.size(); ++i) {
    add("data.eval[" + std::to_string(i) + "].path", s.eval_sets[i].path);
  }
  // An eval job's reference is eval.reference, else (as for dpo jobs) dpo.reference.
  const bool from_eval = s.kind == JobKind::kEval && s.resolved.is_object() &&
                         s.resolved.contains("eval") &&
                         !s.resolved["eval"].value("reference", "").empty();
  add(s.kind == JobKind::kAnnotate ? "annotate.reference"
      : from_eval                  ? "eval.reference"
                                   : "dpo.reference",
      s.reference);
  add("dpo.reference_cache", s.reference_cache);
  add("data.prompts.path", s.prompts_set.path);
  add("data.generations", s.generations);
  add("judge.baseline", s.judge_baseline);
  return out;
}

StatusOr<JobSpec> LoadJobSpec(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  return ParseJobSpec(text, path);
}

}  // namespace rmgen
