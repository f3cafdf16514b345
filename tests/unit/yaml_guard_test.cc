// The YAML guard (common/yaml_guard.h): aliases refused with their line, and the node,
// depth, value and text limits, each before anything is built.
#include "common/yaml_guard.h"

#include <gtest/gtest.h>

#include <chrono>
#include <string>

namespace rmgen {
namespace {

// "Billion laughs": level 0 lists nine scalars, every further level nine aliases of the one
// before, so the last expands to 9^levels scalars. Level k is on line k + 1.
std::string AliasBomb(int levels) {
  std::string y = "l0: &l0 [x, x, x, x, x, x, x, x, x]\n";
  for (int k = 1; k < levels; ++k) {
    const std::string prev = "*l" + std::to_string(k - 1);
    y += "l" + std::to_string(k) + ": &l" + std::to_string(k) + " [";
    for (int i = 0; i < 9; ++i) y += (i ? ", " : "") + prev;
    y += "]\n";
  }
  return y;
}

TEST(YamlGuardTest, AliasesAreRefusedWithTheirLineBeforeAnyExpansion) {
  for (int levels : {8, 9}) {
    const std::string bomb = AliasBomb(levels);
    const auto t0 = std::chrono::steady_clock::now();
    const Status s = CheckYaml(bomb, "bomb.yaml", "study files");
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    ASSERT_FALSE(s.ok()) << levels;
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("bomb.yaml:2: YAML aliases (*l0) are not accepted in study files"),
              std::string::npos)
        << s.message();
    EXPECT_LT(ms, 100.0) << levels << " levels";
  }
  // A merge key is an alias too.
  const Status merge = CheckYaml("base: &b {x: 1}\nmine:\n  <<: *b\n", "m.yaml", "job specs");
  ASSERT_FALSE(merge.ok());
  EXPECT_NE(merge.message().find("m.yaml:3: YAML aliases (*b)"), std::string::npos)
      << merge.message();
  // Anchors alone change nothing: accepted.
  EXPECT_TRUE(CheckYaml("a: &first [1, 2]\nb: &second {c: 3}\n", "a.yaml", "study files").ok());
}

TEST(YamlGuardTest, DepthNodesValuesAndBytesAreBounded) {
  const YamlLimits limits;  // 64 levels
  auto nested = [](int depth) {
    return std::string(depth, '[') + "1" + std::string(depth, ']') + "\n";
  };
  EXPECT_TRUE(CheckYaml(nested(limits.max_depth), "d.yaml", "study files").ok());
  const Status deep = CheckYaml(nested(limits.max_depth + 1), "d.yaml", "study files");
  ASSERT_FALSE(deep.ok());
  EXPECT_NE(deep.message().find("d.yaml:1: nested deeper than 64 levels"), std::string::npos)
      << deep.message();
  // Far deeper than yaml-cpp's own recursion guard: still our message, at once.
  const Status deeper = CheckYaml(nested(100000), "d.yaml", "study files");
  ASSERT_FALSE(deeper.ok());
  EXPECT_NE(deeper.message().find("nested deeper than 64"), std::string::npos);

  YamlLimits small;
  small.max_nodes = 10;
  small.max_scalar_bytes = 8;
  small.max_bytes = 200;
  // A mapping of 4 pairs is 9 nodes (the map, 4 keys, 4 values); 5 pairs are 11.
  EXPECT_TRUE(CheckYaml("a: 1\nb: 2\nc: 3\nd: 4\n", "n.yaml", "job specs", small).ok());
  const Status many = CheckYaml("a: 1\nb: 2\nc: 3\nd: 4\ne: 5\n", "n.yaml", "job specs", small);
  ASSERT_FALSE(many.ok());
  EXPECT_NE(many.message().find("n.yaml:5: more than 10 YAML nodes; job specs hold at most 10"),
            std::string::npos)
      << many.message();
  EXPECT_TRUE(CheckYaml("a: 12345678\n", "v.yaml", "job specs", small).ok());
  const Status big = CheckYaml("a: 1\nb: 123456789\n", "v.yaml", "job specs", small);
  ASSERT_FALSE(big.ok());
  EXPECT_NE(big.message().find("v.yaml:2: a value of 9 bytes"), std::string::npos) << big.message();
  const Status bytes = CheckYaml(std::string(201, '#'), "b.yaml", "job specs", small);
  ASSERT_FALSE(bytes.ok());
  EXPECT_NE(bytes.message().find("b.yaml: 201 bytes; job specs are at most 200 bytes"),
            std::string::npos)
      << bytes.message();
  // The default node cap on a flat list.
  std::string list = "[";
  for (int i = 0; i <= 200000; ++i) list += "1,";
  list += "1]";
  EXPECT_FALSE(CheckYaml(list, "l.yaml", "study files").ok());
}

TEST(YamlGuardTest, InvalidYamlIsLeftToTheLoader) {
  // The guard says nothing about syntax; YAML::Load reports it in the caller's words.
  EXPECT_TRUE(CheckYaml("a: [unclosed\n", "s.yaml", "study files").ok());
  EXPECT_TRUE(CheckYaml("", "e.yaml", "study files").ok());
  // But an alias before the syntax error is still refused.
  EXPECT_FALSE(CheckYaml("a: &x 1\nb: *x\nc: [unclosed\n", "s.yaml", "study files").ok());
}

}  // namespace
}  // namespace rmgen
