#include "worker/model/family.h"

namespace rmgen {

FamilyTraits TraitsOf(Family f) {
  switch (f) {
    case Family::kLlama: return {false, false, false, false, "silu", 1.0f};
    case Family::kMistral: return {false, false, false, true, "silu", 1.0f};
    case Family::kGemma: return {true, true, true, false, "gelu_pytorch_tanh", 0.0f};
  }
  return {};
}

const char* FamilyModelType(Family f) {
  switch (f) {
    case Family::kLlama: return "llama";
    case Family::kMistral: return "mistral";
    case Family::kGemma: return "gemma";
  }
  return "";
}

StatusOr<Family> FamilyFromModelType(const std::string& model_type) {
  for (Family f : kAllFamilies) {
    if (model_type == FamilyModelType(f)) return f;
  }
  return InvalidArgumentError("unsupported model_type '" + model_type +
                              "' (supported: llama, mistral, gemma)");
}

std::string HfArchitecture(Family f, bool reward_head) {
  std::string base;
  switch (f) {
    case Family::kLlama: base = "Llama"; break;
    case Family::kMistral: base = "Mistral"; break;
    case Family::kGemma: base = "Gemma"; break;
  }
  return base + (reward_head ? "ForSequenceClassification" : "ForCausalLM");
}

const char* DefaultChatTemplateName(Family f) {
  switch (f) {
    case Family::kLlama: return "none";
    case Family::kMistral: return "zephyr";
    case Family::kGemma: return "gemma";
  }
  return "";
}

}  // namespace rmgen
