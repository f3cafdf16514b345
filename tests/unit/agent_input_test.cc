// What the agent reads from jobs and sends on: events.jsonl lines (typed, bounded), files of
// any size read in bounded pieces, typed JSON fields that never throw, and UTF-8 made safe
// for protobuf strings.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <string>
#include <vector>

#include "common/utf8.h"
#include "jobspec/json_read.h"
#include "tests/test_util.h"

namespace rmgen::agent {
namespace {

using nlohmann::json;

TEST(ParseEventLine, TakesObjectsWithAnIntegerStep) {
  ParsedEvent p = ParseEventLine(R"({"step": 7, "loss": 0.5})");
  ASSERT_TRUE(p.ok()) << p.error;
  EXPECT_EQ(p.step, 7);
  EXPECT_EQ(p.event["loss"], 0.5);
  EXPECT_TRUE(ParseEventLine(R"({"step": 0})").ok());
  EXPECT_EQ(ParseEventLine(R"({"step": 9223372036854775807})").step, INT64_MAX);
}

TEST(ParseEventLine, RefusesEverythingElseWithAReason) {
  // The line that used to abort rmgen-worker (json type_error out of e.value("step", 0)).
  EXPECT_NE(ParseEventLine(R"({"step": "1"})").error.find("not an integer"), std::string::npos);
  for (const char* bad :
       {R"({"step": 1.5})", R"({"step": 1.0})", R"({"step": true})", R"({"step": null})",
        R"({"step": [1]})", R"({"step": {"n": 1}})", R"({"step": 9223372036854775808})"}) {
    ParsedEvent p = ParseEventLine(bad);
    EXPECT_FALSE(p.ok()) << bad;
    EXPECT_NE(p.error.find("not an integer"), std::string::npos) << bad << ": " << p.error;
  }
  EXPECT_EQ(ParseEventLine(R"({"step": -3})").error, "\"step\" is negative: -3");
  EXPECT_EQ(ParseEventLine(R"({"loss": 1})").error, "no \"step\"");
  EXPECT_EQ(ParseEventLine("[1, 2]").error, "not a JSON object");
  EXPECT_EQ(ParseEventLine("7").error, "not a JSON object");
  EXPECT_EQ(ParseEventLine("").error, "not JSON");
  EXPECT_EQ(ParseEventLine(R"({"step": 1)").error, "not JSON");
  EXPECT_EQ(ParseEventLine("{\"step\": 1, \"s\": \"\xC3\"}").error, "not JSON");  // bad UTF-8
  // Deep nesting is refused before parsing (printing it would recurse a million deep).
  const std::string deep =
      "{\"step\": 1, \"x\": " + std::string(100000, '[') + std::string(100000, ']') + "}";
  EXPECT_NE(ParseEventLine(deep).error.find("nested deeper"), std::string::npos);
  // Brackets inside strings are text.
  EXPECT_TRUE(ParseEventLine("{\"step\": 1, \"x\": \"" + std::string(200, '[') + "\"}").ok());
  std::string huge = R"({"step": 1, "x": ")" + std::string(kMaxEventLine, 'a') + "\"}";
  EXPECT_NE(ParseEventLine(huge).error.find("limit"), std::string::npos);
}

TEST(GetField, WrongTypesAreRefusedNotThrown) {
  const json j = json::parse(
      R"({"i": 5, "neg": -1, "big": 18446744073709551615, "f": 2.0, "s": "x", "b": true})");
  int64_t i = 0;
  EXPECT_TRUE(GetField(j, "i", &i));
  EXPECT_EQ(i, 5);
  EXPECT_TRUE(GetField(j, "missing", &i));  // absent: unchanged
  EXPECT_EQ(i, 5);
  EXPECT_FALSE(GetField(j, "f", &i));
  EXPECT_FALSE(GetField(j, "s", &i));
  EXPECT_FALSE(GetField(j, "b", &i));
  EXPECT_FALSE(GetField(j, "big", &i));
  uint64_t u = 0;
  EXPECT_TRUE(GetField(j, "big", &u));
  EXPECT_FALSE(GetField(j, "neg", &u));
  int n = 0;
  EXPECT_FALSE(GetField(json::parse(R"({"n": 4294967296})"), "n", &n));
  std::string s;
  EXPECT_FALSE(GetField(j, "i", &s));
  EXPECT_TRUE(GetField(j, "s", &s));
  EXPECT_EQ(s, "x");
  bool b = false;
  EXPECT_FALSE(GetField(j, "i", &b));
  EXPECT_TRUE(GetField(j, "b", &b));
  EXPECT_TRUE(b);
  EXPECT_FALSE(GetField(json::array(), "i", &i));
  EXPECT_TRUE(ParseJson("{").is_discarded());
  EXPECT_TRUE(ParseJson(std::string(1000, '[')).is_discarded());
  // Invalid UTF-8 put into a json value prints (replaced) instead of throwing.
  EXPECT_EQ(SafeDump(json{{"s", std::string("a\xFF")}}), "{\"s\":\"a\xEF\xBF\xBD\"}");
}

// ScanLines over a file written piece by piece, as a job does.
class ScanLinesTest : public ::testing::Test {
 protected:
  void Append(const std::string& text) {
    std::ofstream(path_, std::ios::app | std::ios::binary) << text;
  }
  // Reads what is complete; returns the lines (too-long ones as "<too long>").
  std::vector<std::string> Scan(size_t max_line, size_t stop_after = SIZE_MAX) {
    std::vector<std::string> got;
    const int fd = ::open(path_.c_str(), O_RDONLY);
    EXPECT_GE(fd, 0);
    EXPECT_TRUE(ScanLines(
        fd, max_line, &cursor_,
        [&](std::string_view text, int64_t) {
          if (got.size() >= stop_after) return false;
          got.emplace_back(text);
          return true;
        },
        [&](int64_t end) { got.push_back("<too long to " + std::to_string(end) + ">"); }));
    ::close(fd);
    return got;
  }
  testing::TempDir dir_;
  std::string path_ = dir_ / "events.jsonl";
  LineCursor cursor_;
};

TEST_F(ScanLinesTest, HandsOverCompleteLinesOnlyAndStopsWhereAsked) {
  Append("a\nbb\ncc");
  EXPECT_EQ(Scan(100), (std::vector<std::string>{"a", "bb"}));
  EXPECT_EQ(cursor_.offset, 5);
  Append("c\n\nd\n");
  EXPECT_EQ(Scan(100, 1), (std::vector<std::string>{"ccc"}));  // stops before ""
  EXPECT_EQ(Scan(100), (std::vector<std::string>{"", "d"}));
  EXPECT_EQ(cursor_.offset, 12);
  EXPECT_TRUE(Scan(100).empty());
}

TEST_F(ScanLinesTest, AnOverLongLineIsDroppedWithoutBeingHeldEvenBeforeItsNewline) {
  const size_t max = 100 * 1024;  // over one 64 KiB read
  Append("first\n" + std::string(max + 1, 'x'));
  EXPECT_EQ(Scan(max), (std::vector<std::string>{"first"}));
  EXPECT_TRUE(cursor_.skipping);  // already known too long: what was read is dropped
  EXPECT_EQ(cursor_.offset, static_cast<int64_t>(6 + max + 1));
  Append(std::string(300 * 1024, 'y'));  // still no newline
  EXPECT_TRUE(Scan(max).empty());
  EXPECT_EQ(cursor_.offset, static_cast<int64_t>(6 + max + 1 + 300 * 1024));
  Append("z\nlast\n");
  const int64_t end = 6 + max + 1 + 300 * 1024 + 2;
  EXPECT_EQ(Scan(max),
            (std::vector<std::string>{"<too long to " + std::to_string(end) + ">", "last"}));
  EXPECT_FALSE(cursor_.skipping);
  // A line of exactly the limit is kept; one byte more is not.
  Append(std::string(max, 'k') + "\n" + std::string(max + 1, 'k') + "\n");
  const auto got = Scan(max);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].size(), max);
  EXPECT_EQ(got[1].rfind("<too long", 0), 0u);
}

const std::string kFffd = "\xEF\xBF\xBD";

TEST(Utf8, ValidTextIsKeptAndInvalidBytesReplaced) {
  const std::string ok = "a\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80";  // a é € 😀
  EXPECT_TRUE(IsValidUtf8(ok));
  EXPECT_EQ(SanitizeUtf8(ok), ok);
  EXPECT_TRUE(IsValidUtf8(std::string("nul\0inside", 10)));
  EXPECT_EQ(SanitizeUtf8(std::string("a\xFF") + "b"), "a" + kFffd + "b");
  EXPECT_EQ(SanitizeUtf8("\x80\x80"), kFffd + kFffd);  // lone continuation bytes
  EXPECT_EQ(SanitizeUtf8("\xC0\xAF"), kFffd + kFffd);  // overlong '/' (C0, C1 never valid)
  EXPECT_EQ(SanitizeUtf8("\xE0\x80\xAF"), kFffd + kFffd + kFffd);              // overlong 3-byte
  EXPECT_EQ(SanitizeUtf8("\xF0\x80\x80\xAF"), kFffd + kFffd + kFffd + kFffd);  // overlong 4
  EXPECT_EQ(SanitizeUtf8("\xED\xA0\x80"), kFffd + kFffd + kFffd);  // a surrogate, U+D800
  EXPECT_EQ(SanitizeUtf8("\xF4\x90\x80\x80"), kFffd + kFffd + kFffd + kFffd);  // > U+10FFFF
  EXPECT_EQ(SanitizeUtf8("\xF5"), kFffd);
  // A sequence cut short is one U+FFFD (its maximal subpart), and what follows is kept.
  EXPECT_EQ(SanitizeUtf8(std::string("\xE2\x82") + "x"), kFffd + "x");
  EXPECT_EQ(SanitizeUtf8("\xF0\x9F\x98"), kFffd);
  for (const std::string bad : {"\xC3", "\xE2\x82", "\xF0\x9F\x98", "\xC0\xAF", "\xED\xA0\x80"}) {
    EXPECT_FALSE(IsValidUtf8(bad));
    EXPECT_TRUE(IsValidUtf8(SanitizeUtf8(bad)));
  }
}

TEST(Utf8, TruncationCutsAtACharacterBoundary) {
  const std::string e = "\xC3\xA9";                // 2 bytes
  const std::string euro = "\xE2\x82\xAC";         // 3
  const std::string smile = "\xF0\x9F\x98\x80";    // 4
  EXPECT_EQ(SanitizeUtf8("abcdef", 6), "abcdef");  // fits: no marker
  EXPECT_EQ(SanitizeUtf8("abcdefg", 6), "abc...");
  EXPECT_EQ(SanitizeUtf8("abcdefg", 6, ""), "abcdef");
  // Cuts inside a 2-, 3- and 4-byte character drop the whole character.
  EXPECT_EQ(SanitizeUtf8(e + e + e, 5, ""), e + e);
  EXPECT_EQ(SanitizeUtf8(euro + euro, 5, ""), euro);
  EXPECT_EQ(SanitizeUtf8(smile + smile, 7, ""), smile);
  EXPECT_EQ(SanitizeUtf8("ab" + smile + "cd", 8), "ab" + smile + "cd");
  EXPECT_EQ(SanitizeUtf8("ab" + smile + "cd", 7), "ab...");
  EXPECT_EQ(SanitizeUtf8(smile, 3, ""), "");
  EXPECT_EQ(SanitizeUtf8("abc", 2, "..."), "ab");  // no room for the marker
  // Every cut of a line of mixed widths is valid UTF-8 and within its limit.
  std::string mixed;
  for (int i = 0; i < 200; ++i) mixed += "a" + e + euro + smile + "\xFF";
  for (size_t max = 0; max < 200; ++max) {
    const std::string cut = SanitizeUtf8(mixed, max);
    EXPECT_LE(cut.size(), max);
    EXPECT_TRUE(IsValidUtf8(cut)) << max;
  }
  // A line of raw bytes cut in the middle of a character, as LastLines used to cut them.
  const std::string line(1000, 'x');
  const std::string cut = (line + euro).substr(0, 1001);
  EXPECT_EQ(SanitizeUtf8(cut), line + kFffd);
}

}  // namespace
}  // namespace rmgen::agent
