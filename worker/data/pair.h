// PreferencePair: what every dataset adapter produces, whatever the source's schema.
//
// A record of a source file becomes either one pair or one counted drop with a reason;
// nothing is dropped silently. Reasons are stable strings (they appear in `rmgen data
// stats` output and in job metrics).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "worker/data/chat_template.h"

namespace rmgen {

struct PreferencePair {
  std::vector<Message> prompt;    // the conversation so far, ending with a user turn
  std::vector<Message> chosen;    // the preferred continuation (usually one assistant turn)
  std::vector<Message> rejected;  // the other continuation
  std::string source;             // adapter name ("hh_rlhf", ...)
  std::string id;                 // the source's record id, or "<file>:<line>"
  std::string subset;             // rewardbench subset, summarize tldr|cnn|dailymail, ...
  std::string split;              // the source's own split, "" when it has none
  std::optional<double> score_chosen, score_rejected;  // where the source rates responses
};

// Why a record gave no pair.
enum class DropReason {
  kTie,               // the source rates both responses equally
  kEmptyResponse,     // a response is empty or whitespace
  kMalformed,         // not valid JSON, or a field of the wrong type/shape
  kMissingField,      // a required field is absent
  kIdentical,         // chosen and rejected are the same text
  kTooLong,           // over the length limit when dropping (not truncating) is asked
  kOtherSubset,       // filtered out by --subset
  kOtherSplit,        // filtered out by --split
  kDivergentHistory,  // multi-turn record whose earlier turns differ between the responses
};

inline constexpr DropReason kAllDropReasons[] = {
    DropReason::kTie,          DropReason::kEmptyResponse, DropReason::kMalformed,
    DropReason::kMissingField, DropReason::kIdentical,     DropReason::kTooLong,
    DropReason::kOtherSubset,  DropReason::kOtherSplit,    DropReason::kDivergentHistory};

const char* DropReasonName(DropReason r);

// True for the reasons that are input errors (reported with file, line and field, and
// fatal under --strict); the others are ordinary properties of the data.
bool IsErrorReason(DropReason r);

// The prompt as one canonical string (roles and contents), for hashing and overlap.
std::string CanonicalPrompt(const std::vector<Message>& prompt);

// Deterministic split of a source that has none: FNV-1a of the canonical prompt, so every
// pair of one prompt lands on the same side. Returns "validation" for a `val_fraction`
// share of prompts, else "train".
std::string HashSplit(const std::vector<Message>& prompt, double val_fraction);
// A uniform number in [0, 1) from the prompt (and a salt), the same on every machine.
double PromptHashUnit(const std::vector<Message>& prompt, const std::string& salt);
// Whether the prompt lies in the held-out slice of a training source (hyperparameter
// selection): a hash independent of HashSplit's, so it cuts every split alike.
bool InHoldout(const std::vector<Message>& prompt, double fraction);

// The text of a response (the contents of its messages, concatenated).
std::string ResponseText(const std::vector<Message>& response);

}  // namespace rmgen
