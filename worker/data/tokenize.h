// Tokenizing preference pairs the way TRL's DPOTrainer does (TRL 0.8-0.11, the era of the
// study), so that rmgen's sequences, truncation and log-prob masks match it:
//
//   prompt text   = chat template of the prompt messages with the generation prompt
//   side tokens   = tokenize(prompt text + response text) jointly; the response starts at
//                   len(tokenize(prompt text)), one earlier when the joint encoding merged
//                   across the boundary (TRL's build_tokenized_answer)
//   BOS           = prepended to the prompt when absent; EOS appended to each response
//   truncation    = longer = max(len(chosen response), len(rejected response)); a side
//                   whose prompt + longer exceeds max_length keeps the last
//                   max_prompt_length prompt tokens ("keep_end"); if still too long, each
//                   response keeps its first max_length - max_prompt_length tokens
//
// With too_long = kDrop, a pair that would need truncation is dropped instead (counted).
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <vector>

#include "common/status.h"
#include "worker/data/pair.h"
#include "worker/data/tokenizer.h"

namespace rmgen {

struct TokenizeOptions {
  ChatTemplate chat_template = ChatTemplate::kNone;
  int max_length = 512;
  int max_prompt_length = 128;
  enum class TooLong { kTruncate, kDrop } too_long = TooLong::kTruncate;
};

// One pair as two token sequences; the response of each starts at its prompt_len.
struct TokenizedPair {
  std::vector<int32_t> chosen;    // prompt + chosen response + EOS
  std::vector<int32_t> rejected;  // prompt + rejected response + EOS
  int32_t chosen_prompt_len = 0;
  int32_t rejected_prompt_len = 0;
};

struct TokenizeStats {
  int64_t pairs = 0;
  int64_t prompt_truncated = 0;    // pairs whose prompt lost tokens
  int64_t response_truncated = 0;  // pairs whose responses lost tokens
  int64_t dropped_too_long = 0;
  // Pairs whose prompt the chat template cannot render (a system turn for gemma, two
  // same-role turns in a row), by reason: dropped and counted, like every adapter drop.
  std::map<std::string, int64_t> dropped_template;
  nlohmann::json ToJson() const;
};

// nullopt when the pair is dropped: too long (TooLong::kDrop), or a prompt the chat template
// cannot render (counted in dropped_template by reason).
StatusOr<std::optional<TokenizedPair>> TokenizePair(const Tokenizer& tok, const PreferencePair& p,
                                                    const TokenizeOptions& options,
                                                    TokenizeStats* stats);

}  // namespace rmgen
