#include "common/utf8.h"

#include <cstdint>

namespace rmgen {
namespace {

// The character at text[i]: its length when well-formed (> 0), else minus the length of the
// maximal ill-formed subpart there (>= 1 byte), which is replaced by one U+FFFD.
int Next(std::string_view text, size_t i) {
  const auto byte = [&](size_t k) { return static_cast<uint8_t>(text[k]); };
  const uint8_t b = byte(i);
  if (b < 0x80) return 1;
  int n = 0;
  uint8_t lo = 0x80, hi = 0xBF;  // the allowed range of the second byte
  if (b >= 0xC2 && b <= 0xDF) {
    n = 2;
  } else if (b >= 0xE0 && b <= 0xEF) {
    n = 3;
    if (b == 0xE0) lo = 0xA0;  // overlong below U+0800
    if (b == 0xED) hi = 0x9F;  // surrogates U+D800..U+DFFF
  } else if (b >= 0xF0 && b <= 0xF4) {
    n = 4;
    if (b == 0xF0) lo = 0x90;  // overlong below U+10000
    if (b == 0xF4) hi = 0x8F;  // above U+10FFFF
  } else {
    return -1;  // a continuation byte, C0/C1 (always overlong), F5..FF
  }
  for (int k = 1; k < n; ++k) {
    if (i + k >= text.size()) return -k;  // cut short
    const uint8_t c = byte(i + k);
    const bool ok = k == 1 ? (c >= lo && c <= hi) : (c >= 0x80 && c <= 0xBF);
    if (!ok) return -k;
  }
  return n;
}

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

}  // namespace

bool IsValidUtf8(std::string_view text) {
  for (size_t i = 0; i < text.size();) {
    const int n = Next(text, i);
    if (n < 0) return false;
    i += static_cast<size_t>(n);
  }
  return true;
}

std::string SanitizeUtf8(std::string_view text, size_t max_bytes, std::string_view marker) {
  std::string out;
  // The characters that fit with the marker after them: where to cut when the rest does
  // not fit.
  const size_t room = marker.size() <= max_bytes ? max_bytes - marker.size() : max_bytes;
  size_t keep = 0;  // out's length at the last character boundary within `room`
  for (size_t i = 0; i < text.size();) {
    const int n = Next(text, i);
    const std::string_view ch = n > 0 ? text.substr(i, static_cast<size_t>(n)) : kReplacement;
    i += static_cast<size_t>(n > 0 ? n : -n);
    if (out.size() + ch.size() > max_bytes) {
      out.resize(keep);
      if (marker.size() <= max_bytes) out += marker;
      return out;
    }
    out += ch;
    if (out.size() <= room) keep = out.size();
  }
  return out;
}

}  // namespace rmgen
