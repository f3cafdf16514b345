#include "jobspec/json_read.h"

#include <errno.h>
#include <unistd.h>

#include <cstring>
#include <limits>
#include <vector>

#include "common/utf8.h"

namespace rmgen {
namespace {

using nlohmann::json;

// Whether brackets in `text` (outside strings) nest deeper than `limit`; a cheap look before
// parsing, so a line of a million '[' is refused without building it.
bool TooDeep(std::string_view text, int limit) {
  int depth = 0;
  bool in_string = false, escaped = false;
  for (const char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > limit) return true;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return false;
}

// A short printable excerpt of a value, for messages.
std::string Excerpt(const json& v) { return SanitizeUtf8(SafeDump(v), 60); }

}  // namespace

json ParseJson(std::string_view text) {
  if (TooDeep(text, kMaxEventDepth)) return json(json::value_t::discarded);
  try {
    return json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  } catch (const std::exception&) {  // out of memory
    return json(json::value_t::discarded);
  }
}

ParsedEvent ParseEventLine(std::string_view line) {
  ParsedEvent p;
  if (line.size() > kMaxEventLine) {
    p.error = "line of " + std::to_string(line.size()) + " bytes (limit " +
              std::to_string(kMaxEventLine) + ")";
    return p;
  }
  if (TooDeep(line, kMaxEventDepth)) {
    p.error = "nested deeper than " + std::to_string(kMaxEventDepth);
    return p;
  }
  try {
    json e = ParseJson(line);
    if (e.is_discarded()) {
      p.error = "not JSON";
      return p;
    }
    if (!e.is_object()) {
      p.error = "not a JSON object";
      return p;
    }
    const auto it = e.find("step");
    if (it == e.end()) {
      p.error = "no \"step\"";
      return p;
    }
    if (!it->is_number_integer() ||
        (it->is_number_unsigned() &&
         it->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))) {
      p.error = "\"step\" is not an integer: " + Excerpt(*it);
      return p;
    }
    const int64_t step = it->get<int64_t>();
    if (step < 0) {
      p.error = "\"step\" is negative: " + std::to_string(step);
      return p;
    }
    p.step = step;
    p.event = std::move(e);
  } catch (const std::exception& ex) {  // only bad_alloc is left to throw here
    p.error = std::string("unreadable: ") + ex.what();
    p.event = json();
  }
  return p;
}

bool ScanLines(int fd, size_t max_line, LineCursor* cursor,
               const std::function<bool(std::string_view text, int64_t end)>& line,
               const std::function<void(int64_t end)>& too_long) {
  constexpr size_t kChunk = 64 << 10;
  std::vector<char> buf(kChunk);
  std::string current;  // the line being put together (never while skipping)
  int64_t pos = cursor->offset;
  for (;;) {
    const ssize_t n = ::pread(fd, buf.data(), buf.size(), pos);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return false;
    if (n == 0) return true;
    const char* data = buf.data();
    size_t i = 0;
    while (i < static_cast<size_t>(n)) {
      const void* nl = std::memchr(data + i, '\n', static_cast<size_t>(n) - i);
      const size_t stop =
          nl ? static_cast<size_t>(static_cast<const char*>(nl) - data) : static_cast<size_t>(n);
      if (!cursor->skipping && current.size() + (stop - i) > max_line) {
        current.clear();
        current.shrink_to_fit();
        cursor->skipping = true;
      }
      if (cursor->skipping) {
        if (nl) {
          const int64_t end = pos + static_cast<int64_t>(stop) + 1;
          cursor->skipping = false;
          cursor->offset = end;
          too_long(end);
        } else {
          cursor->offset = pos + n;  // dropped so far
        }
        i = stop + 1;
        continue;
      }
      current.append(data + i, stop - i);
      if (!nl) break;  // the rest comes with the next chunk (or is being written)
      const int64_t end = pos + static_cast<int64_t>(stop) + 1;
      if (!line(current, end)) return true;
      cursor->offset = end;
      current.clear();
      i = stop + 1;
    }
    pos += n;
  }
}

bool GetField(const json& j, const char* key, int64_t* out) {
  if (!j.is_object()) return false;
  const auto it = j.find(key);
  if (it == j.end()) return true;
  if (!it->is_number_integer()) return false;
  if (it->is_number_unsigned() &&
      it->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    return false;
  }
  *out = it->get<int64_t>();
  return true;
}

bool GetField(const json& j, const char* key, uint64_t* out) {
  if (!j.is_object()) return false;
  const auto it = j.find(key);
  if (it == j.end()) return true;
  if (!it->is_number_integer()) return false;
  if (!it->is_number_unsigned() && it->get<int64_t>() < 0) return false;
  *out = it->get<uint64_t>();
  return true;
}

bool GetField(const json& j, const char* key, int* out) {
  int64_t v = *out;
  if (!GetField(j, key, &v)) return false;
  if (v < std::numeric_limits<int>::min() || v > std::numeric_limits<int>::max()) return false;
  *out = static_cast<int>(v);
  return true;
}

bool GetField(const json& j, const char* key, std::string* out) {
  if (!j.is_object()) return false;
  const auto it = j.find(key);
  if (it == j.end()) return true;
  if (!it->is_string()) return false;
  *out = it->get<std::string>();
  return true;
}

bool GetField(const json& j, const char* key, bool* out) {
  if (!j.is_object()) return false;
  const auto it = j.find(key);
  if (it == j.end()) return true;
  if (!it->is_boolean()) return false;
  *out = it->get<bool>();
  return true;
}

std::string SafeDump(const json& j, int indent) {
  try {
    return j.dump(indent, ' ', false, json::error_handler_t::replace);
  } catch (const std::exception&) {
    return "null";
  }
}

}  // namespace rmgen
