#include "worker/data/pair.h"

namespace rmgen {

const char* DropReasonName(DropReason r) {
  switch (r) {
    case DropReason::kTie: return "tie";
    case DropReason::kEmptyResponse: return "empty_response";
    case DropReason::kMalformed: return "malformed";
    case DropReason::kMissingField: return "missing_field";
    case DropReason::kIdentical: return "identical";
    case DropReason::kTooLong: return "too_long";
    case DropReason::kOtherSubset: return "other_subset";
    case DropReason::kOtherSplit: return "other_split";
    case DropReason::kDivergentHistory: return "divergent_history";
  }
  return "";
}

bool IsErrorReason(DropReason r) {
  return r == DropReason::kMalformed || r == DropReason::kMissingField;
}

std::string CanonicalPrompt(const std::vector<Message>& prompt) {
  std::string s;
  for (const Message& m : prompt) {
    s += m.role;
    s += '\x1f';
    s += m.content;
    s += '\x1e';
  }
  return s;
}

double PromptHashUnit(const std::vector<Message>& prompt, const std::string& salt) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a 64
  for (unsigned char c : salt + CanonicalPrompt(prompt)) {
    h ^= c;
    h *= 1099511628211ull;
  }
  // FNV alone leaves similar short prompts with similar high bits: finish with SplitMix64.
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebull;
  h ^= h >> 31;
  return static_cast<double>(h >> 11) / static_cast<double>(1ull << 53);
}

std::string HashSplit(const std::vector<Message>& prompt, double val_fraction) {
  return PromptHashUnit(prompt, "") < val_fraction ? "validation" : "train";
}

bool InHoldout(const std::vector<Message>& prompt, double fraction) {
  return PromptHashUnit(prompt, "holdout\x1d") < fraction;
}

std::string ResponseText(const std::vector<Message>& response) {
  std::string s;
  for (const Message& m : response) s += m.content;
  return s;
}

}  // namespace rmgen
