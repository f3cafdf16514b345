// Model families: the decoder-only architectures rmgen trains, behind one enum.
//
// Adding a family: add it to Family and kAllFamilies, then fix every switch the compiler
// flags (-Werror=switch) and the family-coverage test (tests/unit/test_family.cc) names.
// What differs between families is data (FamilyTraits), so the forward pass has no
// per-family branches beyond reading these traits.
#pragma once

#include <string>

#include "common/status.h"

namespace rmgen {

enum class Family { kLlama, kMistral, kGemma };

inline constexpr Family kAllFamilies[] = {Family::kLlama, Family::kMistral, Family::kGemma};

struct FamilyTraits {
  bool norm_weight_plus_one;       // RMSNorm multiplies by (1 + w) (gemma) instead of w
  bool scale_embeddings;           // embeddings scaled by sqrt(d_model) (gemma)
  bool default_tied_embeddings;    // LM head tied to embeddings unless config says otherwise
  bool has_sliding_window;         // config's sliding_window is honoured (mistral)
  const char* default_activation;  // MLP activation when the config names none
  float norm_init;                 // RMSNorm weight at random init (1 for w, 0 for 1 + w)
};

FamilyTraits TraitsOf(Family f);
// The Hugging Face `model_type` ("llama", "mistral", "gemma").
const char* FamilyModelType(Family f);
StatusOr<Family> FamilyFromModelType(const std::string& model_type);
// "LlamaForCausalLM", "MistralForSequenceClassification", ...
std::string HfArchitecture(Family f, bool reward_head);
// The chat template a family's instruction-tuned checkpoints use ("gemma", "zephyr").
const char* DefaultChatTemplateName(Family f);

}  // namespace rmgen
