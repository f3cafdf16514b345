// Hugging Face checkpoint folders: load a DecoderLM from one, save one that transformers
// loads as `*ForCausalLM` (language-model head) or `*ForSequenceClassification` with
// num_labels 1 (reward head).
//
// A folder holds config.json and either model.safetensors or model.safetensors.index.json
// with its shards; tokenizer files travel along on save. Weights stored in bf16/fp16/fp32
// are converted to the compute dtype on load. Every error names the folder or file and
// the tensor, and says what was expected.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "worker/model/decoder.h"
#include "worker/model/safetensors.h"

namespace rmgen {

// The weights of a checkpoint folder: one safetensors file, or the shards an index names.
class WeightSource {
 public:
  static StatusOr<WeightSource> OpenDir(const std::string& dir);

  bool Has(const std::string& name) const;
  StatusOr<torch::Tensor> Load(const std::string& name, torch::Dtype dtype,
                               const std::vector<int64_t>& expected_shape) const;
  std::vector<std::string> Names() const;
  const std::string& description() const { return description_; }

 private:
  std::vector<SafetensorsFile> files_;
  std::map<std::string, size_t> where_;  // tensor name -> index into files_
  std::string description_;              // the file or index path, for messages
};

struct LoadOptions {
  // Which head to build. A reward head missing from the checkpoint (a causal-LM
  // checkpoint used to start an EXRM) is initialised as transformers does, seeded.
  HeadKind head = HeadKind::kLanguageModel;
  torch::Dtype dtype = torch::kFloat32;
  torch::Device device = torch::kCPU;
  uint64_t init_seed = 0;
};

struct LoadedModel {
  std::unique_ptr<DecoderLM> model;
  std::vector<std::string> freshly_initialized;  // parameters not in the checkpoint
  std::vector<std::string> unused;               // checkpoint tensors the model ignored
};

StatusOr<ModelConfig> LoadModelConfig(const std::string& dir);
StatusOr<LoadedModel> LoadModel(const std::string& dir, const LoadOptions& options);

struct SaveOptions {
  torch::Dtype dtype = torch::kFloat32;  // stored dtype
  // Above this many bytes per file, weights are sharded with an index (transformers
  // uses 5 GB by default).
  uint64_t max_shard_bytes = 5ull << 30;
  // Folder whose tokenizer files (tokenizer.model, tokenizer_config.json,
  // special_tokens_map.json, tokenizer.json) are copied along; empty for none.
  std::string tokenizer_dir;
};

Status SaveModel(const DecoderLM& model, const std::string& dir, const SaveOptions& options);

}  // namespace rmgen
