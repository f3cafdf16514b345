// What the agent reads from files other processes write (the job's events.jsonl, its own
// records, the supervisor's exit.json), read so that nothing in them can throw or make it
// allocate without bound: a file written by a job is input, not trusted.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace rmgen {

// An events.jsonl line longer than this (without its newline) is skipped, never parsed.
inline constexpr size_t kMaxEventLine = size_t{1} << 20;
// Deeper nesting than this is refused (printing or converting such JSON recurses).
inline constexpr int kMaxEventDepth = 64;

// One line of events.jsonl (without its newline): a JSON object whose "step" is an integer
// >= 0 (a float, a string, a bool or a missing step is refused), nested at most
// kMaxEventDepth deep, at most kMaxEventLine bytes. Never throws: `error` says why a line is
// refused ("" when `event` holds it).
struct ParsedEvent {
  nlohmann::json event;
  int64_t step = 0;
  std::string error;
  bool ok() const { return error.empty(); }
};
ParsedEvent ParseEventLine(std::string_view line);

// Where reading a growing text file stands between calls of ScanLines.
struct LineCursor {
  int64_t offset = 0;     // the next byte to read
  bool skipping = false;  // offset is inside an over-long line: drop it up to its newline
};

// Reads the complete lines of `fd` from cursor->offset (pread, 64 KiB at a time; at most
// `max_line` bytes of a line are held). For each line ended by '\n' it calls
// `line(text, end)` (text without the newline, end: the offset after it); a line longer than
// `max_line` is not kept but reported as `too_long(end)` once its newline comes. The cursor
// moves past every line handed over; when `line` returns false the line is not taken and
// reading stops before it. A last line without its newline (being written) is left for the
// next call, unless it is already too long: then it is dropped as it grows (skipping).
// Returns false on a read error (the cursor stays at the last line handed over).
bool ScanLines(int fd, size_t max_line, LineCursor* cursor,
               const std::function<bool(std::string_view text, int64_t end)>& line,
               const std::function<void(int64_t end)>& too_long);

// json::parse that never throws: a discarded value (is_discarded()) when `text` is not JSON,
// or nests deeper than kMaxEventDepth.
nlohmann::json ParseJson(std::string_view text);

// Typed fields of a JSON object that never throw. Each returns false when `key` is present
// with another type (or, for integers, out of range; for objects other than `j`, nothing is
// read), and leaves *out unchanged when `key` is absent. Integers are JSON integers only:
// 3.0, "3" and true are refused.
bool GetField(const nlohmann::json& j, const char* key, int64_t* out);
bool GetField(const nlohmann::json& j, const char* key, uint64_t* out);
bool GetField(const nlohmann::json& j, const char* key, int* out);
bool GetField(const nlohmann::json& j, const char* key, std::string* out);
bool GetField(const nlohmann::json& j, const char* key, bool* out);

// j.dump() that never throws: invalid UTF-8 in strings is replaced (U+FFFD); "null" if the
// printing fails otherwise (out of memory).
std::string SafeDump(const nlohmann::json& j, int indent = -1);

}  // namespace rmgen
