#include "worker/data/catalog.h"

#include <yaml-cpp/yaml.h>

#include <filesystem>

#include "common/file.h"
#include "common/yaml_guard.h"

namespace rmgen {
namespace fs = std::filesystem;

namespace {

std::string At(const std::string& source, const YAML::Node& n) {
  return source + ":" + std::to_string(n.Mark().line + 1);
}

}  // namespace

StatusOr<Catalog> Catalog::Load(const std::string& path, const std::string& data_root) {
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  const std::string base = fs::path(path).parent_path().string();
  return Parse(text, path, base.empty() ? "." : base, data_root);
}

StatusOr<Catalog> Catalog::Parse(const std::string& yaml, const std::string& source,
                                 const std::string& base_dir, const std::string& data_root) {
  // A catalog is named by a job spec (data.catalog): guard it like any submitted YAML.
  RETURN_IF_ERROR(CheckYaml(yaml, source, "dataset catalogs"));
  YAML::Node doc;
  try {
    doc = YAML::Load(yaml);
  } catch (const YAML::Exception& e) {
    return InvalidArgumentError(source + ":" + std::to_string(e.mark.line + 1) +
                                ": not valid YAML (" + e.msg + ")");
  }
  Catalog c;
  c.source_ = source;
  if (!doc.IsMap()) return InvalidArgumentError(source + ": expected a mapping at the top");
  std::string root = ".";
  try {
    if (doc["root"]) root = doc["root"].as<std::string>();
    const YAML::Node ds = doc["datasets"];
    if (!ds || !ds.IsMap()) {
      return InvalidArgumentError(source + ": field 'datasets': missing or not a mapping");
    }
    for (const auto& kv : ds) {
      const std::string name = kv.first.as<std::string>();
      const YAML::Node& e = kv.second;
      const std::string where = At(source, e) + ": dataset '" + name + "'";
      if (!e.IsMap()) return InvalidArgumentError(where + ": expected a mapping");
      for (const auto& f : e) {
        const std::string key = f.first.as<std::string>();
        if (key != "adapter" && key != "splits" && key != "subset" && key != "pairing" &&
            key != "description") {
          return InvalidArgumentError(At(source, f.first) + ": dataset '" + name +
                                      "': unknown field '" + key + "'");
        }
      }
      Entry entry;
      if (!e["adapter"]) return InvalidArgumentError(where + ": field 'adapter': missing");
      entry.adapter = e["adapter"].as<std::string>();
      auto adapter = MakeAdapter(entry.adapter);
      if (!adapter.ok()) {
        return InvalidArgumentError(At(source, e["adapter"]) + ": dataset '" + name +
                                    "': field 'adapter': " + adapter.status().message());
      }
      if (e["subset"]) entry.subset = e["subset"].as<std::string>();
      entry.pairing = e["pairing"] ? e["pairing"].as<std::string>() : "random";
      const YAML::Node& splits = e["splits"];
      if (!splits || !splits.IsMap() || splits.size() == 0) {
        return InvalidArgumentError(where + ": field 'splits': missing or empty");
      }
      for (const auto& s : splits) {
        Split sp;
        const std::string split_name = s.first.as<std::string>();
        if (s.second.IsScalar()) {
          sp.path = s.second.as<std::string>();
        } else if (s.second.IsMap() && s.second["path"]) {
          sp.path = s.second["path"].as<std::string>();
          if (s.second["split"]) sp.split = s.second["split"].as<std::string>();
        } else {
          return InvalidArgumentError(At(source, s.second) + ": dataset '" + name +
                                      "': field 'splits." + split_name +
                                      "': expected a path or {path, split}");
        }
        if (fs::path(sp.path).is_relative()) {
          const fs::path r = data_root.empty() ? fs::path(base_dir) / root : fs::path(data_root);
          sp.path = (r / sp.path).lexically_normal().string();
        }
        entry.splits[split_name] = sp;
      }
      c.entries_[name] = std::move(entry);
    }
  } catch (const YAML::Exception& e) {
    return InvalidArgumentError(source + ":" + std::to_string(e.mark.line + 1) + ": " + e.msg);
  }
  return c;
}

StatusOr<ResolvedDataset> Catalog::Resolve(const std::string& ref, bool check_file) const {
  const size_t colon = ref.find(':');
  const std::string name = ref.substr(0, colon);
  auto it = entries_.find(name);
  if (it == entries_.end()) {
    std::string known;
    for (const auto& [n, e] : entries_) known += (known.empty() ? "" : ", ") + n;
    return NotFoundError(source_ + ": no dataset '" + name + "' (known: " + known + ")");
  }
  const Entry& e = it->second;
  std::string split = colon == std::string::npos ? "" : ref.substr(colon + 1);
  if (split.empty()) split = e.splits.count("train") ? "train" : e.splits.begin()->first;
  auto sit = e.splits.find(split);
  if (sit == e.splits.end()) {
    std::string known;
    for (const auto& [n, s] : e.splits) known += (known.empty() ? "" : ", ") + n;
    return NotFoundError(source_ + ": dataset '" + name + "' has no split '" + split +
                         "' (it has: " + known + ")");
  }
  ResolvedDataset r;
  r.name = name + ":" + split;
  r.path = sit->second.path;
  r.read.format = e.adapter;
  r.read.subset = e.subset;
  r.read.split = sit->second.split;
  r.read.adapter.pairing = e.pairing;
  if (check_file && !FileExists(r.path)) {
    return NotFoundError("dataset '" + r.name + "' (" + source_ + "): file " + r.path +
                         " not found. HINT: download the source and place it there, or pass "
                         "--data-root");
  }
  return r;
}

std::vector<std::string> Catalog::Names() const {
  std::vector<std::string> out;
  for (const auto& [n, e] : entries_) out.push_back(n);
  return out;
}

}  // namespace rmgen
