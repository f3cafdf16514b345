// ModelConfig: the architecture of a decoder-only LM, read from and written to a Hugging
// Face `config.json`. Parsing validates every field it uses and names the bad one.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "common/status.h"
#include "worker/model/family.h"

namespace rmgen {

struct ModelConfig {
  Family family = Family::kLlama;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;        // d_model
  int64_t intermediate_size = 0;  // MLP width
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;  // < num_heads: grouped-query; 1: multi-query
  int64_t head_dim = 0;      // hidden_size / num_heads unless the config says
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  int64_t max_position_embeddings = 2048;
  bool tie_word_embeddings = false;
  bool attention_bias = false;
  int64_t sliding_window = 0;  // 0: full causal attention
  std::string activation;      // silu | gelu_pytorch_tanh | gelu | gelu_new
  double initializer_range = 0.02;
  int64_t bos_token_id = -1, eos_token_id = -1, pad_token_id = -1;  // -1: not set
  // 1 for a reward model (`*ForSequenceClassification`, num_labels 1), 0 for a causal LM.
  int64_t num_labels = 0;
  // The parsed file, kept so that fields rmgen does not use survive a save.
  nlohmann::json raw = nlohmann::json::object();
};

// `source` names the file in error messages.
StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text, const std::string& source);
// The config.json to save next to weights; `reward_head` picks the architecture.
nlohmann::json ModelConfigToJson(const ModelConfig& c, bool reward_head,
                                 const std::string& torch_dtype);

}  // namespace rmgen
