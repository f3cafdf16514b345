// Chat templates: turn prompt messages into the text and token ids a family was tuned on.
//
//   none    the contents concatenated as they are; nothing added (raw text, HH-style).
//   gemma   "<bos>" then per message "<start_of_turn>{user|model}\n{content.strip()}
//           <end_of_turn>\n"; generation prompt "<start_of_turn>model\n". Roles must
//           alternate user/assistant starting with user; no system role (as Gemma-it's
//           own template, which raises on both).
//   zephyr  per message "<|{role}|>\n{content}</s>\n" (roles user, system, assistant);
//           generation prompt "<|assistant|>\n". The tokenizer adds "<s>".
//
// EncodeChat() yields exactly one leading BOS for gemma and zephyr (gemma's comes from
// its template, zephyr's from the tokenizer; never both), none for `none`. Responses are
// not templated: callers append their raw tokens and EOS.
#pragma once

#include <string>
#include <vector>

#include "common/status.h"
#include "worker/data/tokenizer.h"

namespace rmgen {

struct Message {
  std::string role;  // "user", "assistant" or "system"
  std::string content;
};

enum class ChatTemplate { kNone, kGemma, kZephyr };

// All templates, for tests that must cover every one.
inline constexpr ChatTemplate kAllChatTemplates[] = {ChatTemplate::kNone, ChatTemplate::kGemma,
                                                     ChatTemplate::kZephyr};

const char* ChatTemplateName(ChatTemplate t);
StatusOr<ChatTemplate> ParseChatTemplate(const std::string& name);

// The templated text. Errors name the message index and the field.
StatusOr<std::string> RenderChat(ChatTemplate t, const std::vector<Message>& messages,
                                 bool add_generation_prompt);

// Token ids of the templated prompt (see the file comment for BOS handling).
StatusOr<std::vector<int>> EncodeChat(const Tokenizer& tok, ChatTemplate t,
                                      const std::vector<Message>& messages,
                                      bool add_generation_prompt);

// Python's str.strip() on ASCII whitespace (what the Gemma template's `| trim` does for
// the texts of the study; Unicode spaces other than ASCII are kept).
std::string StripWhitespace(const std::string& s);

}  // namespace rmgen
