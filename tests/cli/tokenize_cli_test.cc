// `rmgen tokenize`, run as a process: output format, agreement with the golden ids, and
// the exit codes and messages of bad invocations.
#include <gtest/gtest.h>

#include <cstdio>
#include <nlohmann/json.hpp>

#include "common/file.h"
#include "tests/cli/run_cli.h"
#include "tests/test_util.h"

namespace rmgen {
namespace {

using testing::RunCli;
using testing::SourcePath;
using testing::TempDir;
using Result = testing::CliResult;

const std::string kMistral =
    SourcePath("tests/fixtures/tokenizers/mistral-7b-v0.1/tokenizer.model");

TEST(TokenizeCliTest, MessagesFileMatchesGoldenIds) {
  auto golden = nlohmann::json::parse(*ReadFile(SourcePath("tests/parity/golden/tokenizer.json")));
  TempDir dir;
  int checked = 0;
  for (const auto& c : golden["cases"]) {
    if (c["template"] == "none") continue;
    ASSERT_TRUE(WriteFileAtomic(dir / "m.json", c["messages"].dump()).ok());
    const std::string tok = SourcePath("tests/fixtures/tokenizers/" +
                                       c["tokenizer"].get<std::string>() + "/tokenizer.model");
    Result r = RunCli("tokenize --tokenizer " + tok + " --template " +
                      c["template"].get<std::string>() + " --messages " + (dir / "m.json") +
                      (c["generation_prompt"].get<bool>() ? " --generation-prompt" : ""));
    ASSERT_EQ(r.code, 0) << r.out;
    auto j = nlohmann::json::parse(r.out);
    EXPECT_EQ(j["ids"], c["ids"]);
    ASSERT_EQ(j["pieces"].size(), j["ids"].size());
    ++checked;
  }
  EXPECT_GT(checked, 10);
}

TEST(TokenizeCliTest, TemplateNoneAddsNoSpecialTokens) {
  Result r = RunCli("tokenize --tokenizer " + kMistral + " --template none --text 'Hello world'");
  ASSERT_EQ(r.code, 0) << r.out;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["pieces"], nlohmann::json({"▁Hello", "▁world"}));
  Result z = RunCli("tokenize --tokenizer " + kMistral +
                    " --template zephyr --text 'Hello world' --generation-prompt");
  ASSERT_EQ(z.code, 0) << z.out;
  auto jz = nlohmann::json::parse(z.out);
  EXPECT_EQ(jz["pieces"][0], "<s>");
  EXPECT_EQ(jz["ids"][0], 1);
}

TEST(TokenizeCliTest, BadInvocationsExplainThemselves) {
  Result usage = RunCli("tokenize --tokenizer " + kMistral);
  EXPECT_EQ(usage.code, 2);
  EXPECT_NE(usage.out.find("usage"), std::string::npos);
  Result missing = RunCli("tokenize --tokenizer /nonexistent/tok.model --template none --text x");
  EXPECT_EQ(missing.code, 1);
  EXPECT_NE(missing.out.find("/nonexistent/tok.model"), std::string::npos);
  Result tmpl = RunCli("tokenize --tokenizer " + kMistral + " --template chatml --text x");
  EXPECT_EQ(tmpl.code, 1);
  EXPECT_NE(tmpl.out.find("chatml"), std::string::npos);
  TempDir dir;
  ASSERT_TRUE(WriteFileAtomic(dir / "bad.json", R"([{"role": "user"}])").ok());
  Result field = RunCli("tokenize --tokenizer " + kMistral + " --template zephyr --messages " +
                        (dir / "bad.json"));
  EXPECT_EQ(field.code, 1);
  EXPECT_NE(field.out.find("message 0"), std::string::npos) << field.out;
  EXPECT_NE(field.out.find("'content'"), std::string::npos) << field.out;
  Result unknown = RunCli("tokenize --frobnicate");
  EXPECT_EQ(unknown.code, 2);
  Result top = RunCli("nosuchcommand");
  EXPECT_EQ(top.code, 2);
}

}  // namespace
}  // namespace rmgen
