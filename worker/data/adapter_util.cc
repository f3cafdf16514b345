#include <cmath>

#include "worker/data/adapter.h"

namespace rmgen::adapter_util {

using nlohmann::json;

namespace {

std::string Where(const std::string& where, const std::string& field) {
  return where.empty() ? field : where + "." + field;
}

// The value of obj[field] in *value, or the outcome saying why there is none: obj is not an
// object, or the field is absent or null.
std::optional<RecordOutcome> Find(const json& obj, const std::string& field,
                                  const std::string& where, const json** value) {
  if (!obj.is_object()) {
    return RecordOutcome::Drop(DropReason::kMalformed, where.empty() ? "(record)" : where,
                               "expected a JSON object");
  }
  auto it = obj.find(field);
  if (it == obj.end() || it->is_null()) {
    return RecordOutcome::Drop(DropReason::kMissingField, Where(where, field), "missing");
  }
  *value = &*it;
  return std::nullopt;
}

RecordOutcome WrongType(const std::string& where, const std::string& field, const char* want,
                        const json& got) {
  return RecordOutcome::Drop(DropReason::kMalformed, Where(where, field),
                             std::string("expected ") + want + ", got " + got.type_name());
}

}  // namespace

std::optional<RecordOutcome> GetString(const json& obj, const std::string& field, std::string* out,
                                       const std::string& where) {
  const json* v = nullptr;
  if (auto bad = Find(obj, field, where, &v)) return bad;
  if (!v->is_string()) return WrongType(where, field, "a string", *v);
  *out = v->get<std::string>();
  return std::nullopt;
}

std::optional<RecordOutcome> GetNumber(const json& obj, const std::string& field, double* out,
                                       const std::string& where) {
  const json* v = nullptr;
  if (auto bad = Find(obj, field, where, &v)) return bad;
  if (!v->is_number()) return WrongType(where, field, "a number", *v);
  *out = v->get<double>();
  if (!std::isfinite(*out)) {
    return RecordOutcome::Drop(DropReason::kMalformed, Where(where, field), "not finite");
  }
  return std::nullopt;
}

std::optional<RecordOutcome> GetMessages(const json& obj, const std::string& field,
                                         std::vector<Message>* out) {
  const json* v = nullptr;
  if (auto bad = Find(obj, field, "", &v)) return bad;
  if (!v->is_array()) return WrongType("", field, "a list of messages", *v);
  out->clear();
  for (size_t i = 0; i < v->size(); ++i) {
    const std::string where = field + "[" + std::to_string(i) + "]";
    Message m;
    if (auto bad = GetString((*v)[i], "role", &m.role, where)) return bad;
    if (auto bad = GetString((*v)[i], "content", &m.content, where)) return bad;
    out->push_back(std::move(m));
  }
  return std::nullopt;
}

std::vector<Message> SplitTranscript(const std::string& text) {
  static const std::string kHuman = "\n\nHuman:", kAssistant = "\n\nAssistant:";
  auto next_marker = [&](size_t from, std::string* role, size_t* len) {
    const size_t h = text.find(kHuman, from), a = text.find(kAssistant, from);
    if (h == std::string::npos && a == std::string::npos) return std::string::npos;
    const bool human = h < a;
    *role = human ? "user" : "assistant";
    *len = human ? kHuman.size() : kAssistant.size();
    return human ? h : a;
  };
  std::vector<Message> out;
  std::string role;
  size_t len = 0;
  size_t m = next_marker(0, &role, &len);
  // Text before the first marker: a user turn (Nectar writes "Human:" without newlines).
  std::string lead = StripWhitespace(text.substr(0, m));
  if (lead.rfind("Human:", 0) == 0) lead = StripWhitespace(lead.substr(6));
  if (!lead.empty()) out.push_back({"user", lead});
  while (m != std::string::npos) {
    const std::string this_role = role;
    const size_t start = m + len;
    m = next_marker(start, &role, &len);
    out.push_back({this_role, StripWhitespace(text.substr(
                                  start, m == std::string::npos ? std::string::npos : m - start))});
  }
  // A transcript that ends in "Assistant:" awaits a response: that turn is not a message.
  if (!out.empty() && out.back().role == "assistant" && out.back().content.empty()) {
    out.pop_back();
  }
  return out;
}

RecordOutcome Finish(PreferencePair pair) {
  const std::string c = ResponseText(pair.chosen), r = ResponseText(pair.rejected);
  if (StripWhitespace(c).empty()) {
    return RecordOutcome::Drop(DropReason::kEmptyResponse, "chosen", "empty response");
  }
  if (StripWhitespace(r).empty()) {
    return RecordOutcome::Drop(DropReason::kEmptyResponse, "rejected", "empty response");
  }
  if (c == r) return RecordOutcome::Drop(DropReason::kIdentical, "", "chosen == rejected");
  if (pair.prompt.empty()) {
    return RecordOutcome::Drop(DropReason::kMissingField, "prompt", "empty prompt");
  }
  RecordOutcome o;
  o.pair = std::move(pair);
  return o;
}

uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t HashString(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

}  // namespace rmgen::adapter_util
