// rmgen tokenize --tokenizer FILE --template none|gemma|zephyr
//                (--text STR | --messages FILE.json) [--generation-prompt]
//
// Prints one JSON object {"ids": [...], "pieces": [...]}. With a chat template, --text is
// one user message; --messages is a JSON array of {"role", "content"}. With --template
// none the raw text (or the concatenated contents) is encoded with no special tokens.
#include <cstdio>
#include <nlohmann/json.hpp>

#include "client/commands.h"
#include "common/file.h"
#include "worker/data/chat_template.h"
#include "worker/data/tokenizer.h"

namespace rmgen::cli {
namespace {

constexpr const char* kUsage =
    "usage: rmgen tokenize --tokenizer FILE --template none|gemma|zephyr\n"
    "                      (--text STR | --messages FILE.json) [--generation-prompt]\n";

StatusOr<std::vector<Message>> ReadMessages(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return InvalidArgumentError(path + ": not valid JSON");
  if (!j.is_array()) {
    return InvalidArgumentError(path + ": expected a JSON array of {\"role\", \"content\"}");
  }
  std::vector<Message> messages;
  for (size_t i = 0; i < j.size(); ++i) {
    const auto& m = j[i];
    const std::string where = path + ": message " + std::to_string(i);
    if (!m.is_object()) return InvalidArgumentError(where + ": expected an object");
    for (const char* field : {"role", "content"}) {
      if (!m.contains(field) || !m[field].is_string()) {
        return InvalidArgumentError(where + ", field '" + field + "': missing or not a string");
      }
    }
    messages.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
  }
  return messages;
}

int Fail(const Status& s) {
  std::fprintf(stderr, "rmgen tokenize: %s\n", s.message().c_str());
  return 1;
}

}  // namespace

int TokenizeCommand(const std::vector<std::string>& args) {
  std::string tokenizer_path, template_name, text, messages_path;
  bool has_text = false, generation_prompt = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&](std::string* out) {
      if (i + 1 >= args.size()) return false;
      *out = args[++i];
      return true;
    };
    bool ok = true;
    if (a == "--tokenizer") {
      ok = value(&tokenizer_path);
    } else if (a == "--template") {
      ok = value(&template_name);
    } else if (a == "--text") {
      ok = value(&text);
      has_text = true;
    } else if (a == "--messages") {
      ok = value(&messages_path);
    } else if (a == "--generation-prompt") {
      generation_prompt = true;
    } else if (a == "-h" || a == "--help") {
      std::fputs(kUsage, stdout);
      return 0;
    } else {
      std::fprintf(stderr, "rmgen tokenize: unknown option '%s'\n%s", a.c_str(), kUsage);
      return 2;
    }
    if (!ok) {
      std::fprintf(stderr, "rmgen tokenize: %s needs a value\n%s", a.c_str(), kUsage);
      return 2;
    }
  }
  if (tokenizer_path.empty() || template_name.empty() || has_text == !messages_path.empty()) {
    std::fprintf(stderr,
                 "rmgen tokenize: need --tokenizer, --template and exactly one of "
                 "--text or --messages\n%s",
                 kUsage);
    return 2;
  }
  auto tmpl = ParseChatTemplate(template_name);
  if (!tmpl.ok()) return Fail(tmpl.status().WithContext("--template"));
  auto tok = Tokenizer::Load(tokenizer_path);
  if (!tok.ok()) return Fail(tok.status());

  std::vector<Message> messages;
  if (has_text) {
    messages.push_back({"user", text});
  } else {
    auto m = ReadMessages(messages_path);
    if (!m.ok()) return Fail(m.status());
    messages = std::move(m).value();
  }
  auto ids = EncodeChat(**tok, *tmpl, messages, generation_prompt);
  if (!ids.ok()) {
    return Fail(ids.status().WithContext(has_text ? std::string("--text") : messages_path));
  }
  nlohmann::json out = {{"ids", *ids}, {"pieces", nlohmann::json::array()}};
  for (int id : *ids) out["pieces"].push_back((*tok)->IdToPiece(id));
  std::printf("%s\n", out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  return 0;
}

}  // namespace rmgen::cli
