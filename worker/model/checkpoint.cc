#include "worker/model/checkpoint.h"

#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "common/file.h"

namespace rmgen {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";
constexpr const char* kTokenizerFiles[] = {"tokenizer.model", "tokenizer_config.json",
                                           "special_tokens_map.json", "tokenizer.json"};

std::string DtypeName(torch::Dtype d) {
  switch (d) {
    case torch::kBFloat16: return "bfloat16";
    case torch::kFloat16: return "float16";
    default: return "float32";
  }
}

}  // namespace

StatusOr<WeightSource> WeightSource::OpenDir(const std::string& dir) {
  WeightSource src;
  const fs::path index = fs::path(dir) / kIndexFile;
  const fs::path single = fs::path(dir) / kSingleFile;
  if (FileExists(index.string())) {
    src.description_ = index.string();
    ASSIGN_OR_RETURN(std::string text, ReadFile(index.string()));
    json j = json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("weight_map") ||
        !j["weight_map"].is_object()) {
      return InvalidArgumentError(index.string() +
                                  ": field 'weight_map': missing or not an "
                                  "object of tensor name -> shard file");
    }
    std::map<std::string, size_t> shard_index;
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      if (!it->is_string()) {
        return InvalidArgumentError(index.string() + ": weight_map['" + it.key() +
                                    "']: expected a file name");
      }
      const std::string shard = it->get<std::string>();
      if (shard.find('/') != std::string::npos) {
        return InvalidArgumentError(index.string() + ": weight_map['" + it.key() + "']: shard '" +
                                    shard + "' must be a file in the folder");
      }
      auto sit = shard_index.find(shard);
      if (sit == shard_index.end()) {
        auto file = SafetensorsFile::Open((fs::path(dir) / shard).string());
        if (!file.ok()) {
          return file.status().WithContext(index.string() + " names shard '" + shard + "'");
        }
        sit = shard_index.emplace(shard, src.files_.size()).first;
        src.files_.push_back(std::move(file).value());
      }
      if (!src.files_[sit->second].Has(it.key())) {
        return DataLossError(src.files_[sit->second].path() + ": missing tensor '" + it.key() +
                             "' that " + index.string() + " places there");
      }
      src.where_[it.key()] = sit->second;
    }
    return src;
  }
  if (FileExists(single.string())) {
    src.description_ = single.string();
    ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::Open(single.string()));
    for (const auto& [name, e] : file.entries()) src.where_[name] = 0;
    src.files_.push_back(std::move(file));
    return src;
  }
  return NotFoundError(dir + ": no " + kSingleFile + " or " + kIndexFile +
                       ". HINT: pass a Hugging Face checkpoint folder saved with safetensors");
}

bool WeightSource::Has(const std::string& name) const { return where_.count(name) > 0; }

StatusOr<torch::Tensor> WeightSource::Load(const std::string& name, torch::Dtype dtype,
                                           const std::vector<int64_t>& expected_shape) const {
  auto it = where_.find(name);
  if (it == where_.end()) {
    return NotFoundError(description_ + ": missing tensor '" + name + "'");
  }
  return files_[it->second].Load(name, dtype, expected_shape);
}

std::vector<std::string> WeightSource::Names() const {
  std::vector<std::string> out;
  for (const auto& [name, i] : where_) out.push_back(name);
  return out;
}

StatusOr<ModelConfig> LoadModelConfig(const std::string& dir) {
  const std::string path = (fs::path(dir) / "config.json").string();
  if (!FileExists(path)) {
    return NotFoundError(path + ": missing. HINT: a checkpoint folder needs its config.json");
  }
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  return ParseModelConfig(text, path);
}

StatusOr<LoadedModel> LoadModel(const std::string& dir, const LoadOptions& options) {
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(dir));
  ASSIGN_OR_RETURN(WeightSource src, WeightSource::OpenDir(dir));
  LoadedModel out;
  NamedTensors params;
  auto gen = at::detail::createCPUGenerator(options.init_seed);
  std::set<std::string> used;
  for (const ParamSpec& spec : ParameterSpecs(config, options.head)) {
    if (!src.Has(spec.name) && spec.name == "score.weight") {
      torch::Tensor t = torch::empty(spec.shape, torch::kFloat32);
      at::normal_out(t, 0.0, config.initializer_range, t.sizes(), gen);
      params.emplace_back(spec.name, t.to(options.device, options.dtype));
      out.freshly_initialized.push_back(spec.name);
      continue;
    }
    if (!src.Has(spec.name) && spec.name == "lm_head.weight") {
      return NotFoundError(src.description() +
                           ": missing tensor 'lm_head.weight' (untied "
                           "LM head). HINT: is this a reward-model "
                           "checkpoint? It has no language-model head");
    }
    auto t = src.Load(spec.name, options.dtype, spec.shape);
    if (!t.ok()) return t.status();
    params.emplace_back(spec.name, t->to(options.device));
    used.insert(spec.name);
  }
  for (const std::string& name : src.Names()) {
    if (!used.count(name)) out.unused.push_back(name);
  }
  const HeadKind head = options.head;
  config.num_labels = head == HeadKind::kReward ? 1 : 0;
  try {
    out.model = std::make_unique<DecoderLM>(std::move(config), head, std::move(params));
  } catch (const std::exception& e) {
    return InternalError(dir + ": " + e.what());
  }
  return out;
}

Status SaveModel(const DecoderLM& model, const std::string& dir, const SaveOptions& options) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return InternalError(dir + ": cannot create folder (" + ec.message() + ")");
  const bool reward = model.head() == HeadKind::kReward;
  const std::string dtype_name = DtypeName(options.dtype);

  // Shards in parameter order, each at most max_shard_bytes (a single larger tensor gets a
  // shard of its own), as transformers' save_pretrained splits them.
  std::vector<NamedTensors> shards(1);
  uint64_t shard_bytes = 0, total_bytes = 0;
  for (const auto& [name, t] : model.named_parameters()) {
    const uint64_t bytes = t.numel() * c10::elementSize(options.dtype);
    if (!shards.back().empty() && shard_bytes + bytes > options.max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().emplace_back(name, t.detach().to(torch::kCPU, options.dtype));
    shard_bytes += bytes;
    total_bytes += bytes;
  }
  // Remove weights of an earlier save so the folder has exactly one layout.
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string f = entry.path().filename().string();
    if (f == kSingleFile || f == kIndexFile ||
        (f.rfind("model-", 0) == 0 && entry.path().extension() == ".safetensors")) {
      fs::remove(entry.path(), ec);
    }
  }
  if (shards.size() == 1) {
    RETURN_IF_ERROR(WriteSafetensors((fs::path(dir) / kSingleFile).string(), shards[0]));
  } else {
    json weight_map = json::object();
    char buf[64];
    for (size_t i = 0; i < shards.size(); ++i) {
      std::snprintf(buf, sizeof(buf), "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
      RETURN_IF_ERROR(WriteSafetensors((fs::path(dir) / buf).string(), shards[i]));
      for (const auto& [name, t] : shards[i]) weight_map[name] = buf;
    }
    json index = {{"metadata", {{"total_size", total_bytes}}}, {"weight_map", weight_map}};
    RETURN_IF_ERROR(WriteFileAtomic((fs::path(dir) / kIndexFile).string(), index.dump(2) + "\n"));
  }
  json cfg = ModelConfigToJson(model.config(), reward, dtype_name);
  RETURN_IF_ERROR(WriteFileAtomic((fs::path(dir) / "config.json").string(), cfg.dump(2) + "\n"));
  if (!options.tokenizer_dir.empty() && fs::path(options.tokenizer_dir) != fs::path(dir)) {
    for (const char* f : kTokenizerFiles) {
      const fs::path from = fs::path(options.tokenizer_dir) / f;
      if (!FileExists(from.string())) continue;
      ASSIGN_OR_RETURN(std::string bytes, ReadFile(from.string()));
      RETURN_IF_ERROR(WriteFileAtomic((fs::path(dir) / f).string(), bytes));
    }
  }
  return Status::Ok();
}

}  // namespace rmgen
