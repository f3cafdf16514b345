// UTF-8 for what is sent over gRPC: protobuf `string` fields must hold valid UTF-8 (a message
// with an invalid one fails on the coordinator, INTERNAL), and log lines are arbitrary bytes
// cut anywhere.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace rmgen {

// Whether `text` is well-formed UTF-8 (Unicode table 3-7: no overlong encodings, no
// surrogates, nothing above U+10FFFF).
bool IsValidUtf8(std::string_view text);

// `text` as valid UTF-8 of at most `max_bytes` bytes. Each maximal ill-formed subpart (a
// byte that cannot start a character, or a sequence cut short or broken: an overlong or
// surrogate lead counts as one) becomes U+FFFD. When the result would be longer, it is cut
// at a character boundary and `marker` is appended, the whole within `max_bytes` (a marker
// longer than `max_bytes` is left out). Reads only as much of `text` as the result needs.
std::string SanitizeUtf8(std::string_view text, size_t max_bytes = std::string::npos,
                         std::string_view marker = "...");

}  // namespace rmgen
