#include "worker/data/chat_template.h"

namespace rmgen {
namespace {

Status MessageError(size_t index, const std::string& field, const std::string& what) {
  return InvalidArgumentError("message " + std::to_string(index) + ", field '" + field +
                              "': " + what);
}

StatusOr<std::string> RenderGemma(const std::vector<Message>& messages, bool gen_prompt) {
  std::string out = "<bos>";
  for (size_t i = 0; i < messages.size(); ++i) {
    const Message& m = messages[i];
    const bool expect_user = (i % 2 == 0);
    std::string role;
    if (m.role == "user") {
      role = "user";
    } else if (m.role == "assistant" || m.role == "model") {
      role = "model";
    } else if (m.role == "system") {
      return MessageError(i, "role", "the gemma template has no system role");
    } else {
      return MessageError(i, "role", "unknown role '" + m.role + "'");
    }
    if ((role == "user") != expect_user) {
      return MessageError(i, "role",
                          "roles must alternate user/assistant starting with user (gemma)");
    }
    out += "<start_of_turn>" + role + "\n" + StripWhitespace(m.content) + "<end_of_turn>\n";
  }
  if (gen_prompt) out += "<start_of_turn>model\n";
  return out;
}

StatusOr<std::string> RenderZephyr(const std::vector<Message>& messages, bool gen_prompt) {
  std::string out;
  for (size_t i = 0; i < messages.size(); ++i) {
    const Message& m = messages[i];
    if (m.role != "user" && m.role != "assistant" && m.role != "system") {
      return MessageError(i, "role", "unknown role '" + m.role + "'");
    }
    out += "<|" + m.role + "|>\n" + m.content + "</s>\n";
  }
  if (gen_prompt) out += "<|assistant|>\n";
  return out;
}

}  // namespace

const char* ChatTemplateName(ChatTemplate t) {
  switch (t) {
    case ChatTemplate::kNone: return "none";
    case ChatTemplate::kGemma: return "gemma";
    case ChatTemplate::kZephyr: return "zephyr";
  }
  return "?";
}

StatusOr<ChatTemplate> ParseChatTemplate(const std::string& name) {
  for (ChatTemplate t : kAllChatTemplates) {
    if (name == ChatTemplateName(t)) return t;
  }
  return InvalidArgumentError("unknown chat template '" + name +
                              "' (expected one of: none, gemma, zephyr)");
}

std::string StripWhitespace(const std::string& s) {
  auto is_space = [](char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
  };
  size_t b = 0, e = s.size();
  while (b < e && is_space(s[b])) ++b;
  while (e > b && is_space(s[e - 1])) --e;
  return s.substr(b, e - b);
}

StatusOr<std::string> RenderChat(ChatTemplate t, const std::vector<Message>& messages,
                                 bool add_generation_prompt) {
  switch (t) {
    case ChatTemplate::kNone: {
      std::string out;
      for (const Message& m : messages) out += m.content;
      return out;
    }
    case ChatTemplate::kGemma: return RenderGemma(messages, add_generation_prompt);
    case ChatTemplate::kZephyr: return RenderZephyr(messages, add_generation_prompt);
  }
  return InternalError("unhandled chat template");
}

StatusOr<std::vector<int>> EncodeChat(const Tokenizer& tok, ChatTemplate t,
                                      const std::vector<Message>& messages,
                                      bool add_generation_prompt) {
  ASSIGN_OR_RETURN(std::string text, RenderChat(t, messages, add_generation_prompt));
  if (t == ChatTemplate::kNone) return tok.EncodePlain(text);
  std::vector<int> ids = tok.EncodeWithSpecials(text);
  if (tok.bos_id() >= 0 && (ids.empty() || ids.front() != tok.bos_id())) {
    ids.insert(ids.begin(), tok.bos_id());
  }
  return ids;
}

}  // namespace rmgen
