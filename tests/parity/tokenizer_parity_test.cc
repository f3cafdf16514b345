// Token ids of chat-templated conversations equal those of the transformers tokenizers
// (tests/parity/golden/tokenizer.json, from tests/parity/generate.py): the real Mistral
// SentencePiece model with the Zephyr template, the toy Gemma model with Gemma-it's.
#include <gtest/gtest.h>

#include <map>
#include <nlohmann/json.hpp>

#include "common/file.h"
#include "tests/test_util.h"
#include "worker/data/chat_template.h"

namespace rmgen {
namespace {

using testing::SourcePath;

TEST(TokenizerParityTest, ChatTemplatedIdsEqualTransformers) {
  auto text = ReadFile(SourcePath("tests/parity/golden/tokenizer.json"));
  ASSERT_TRUE(text.ok());
  auto golden = nlohmann::json::parse(*text);
  std::map<std::string, std::unique_ptr<Tokenizer>> toks;
  std::map<std::string, int> per_template;
  for (const auto& c : golden["cases"]) {
    const std::string name = c["tokenizer"];
    if (!toks.count(name)) {
      auto t =
          Tokenizer::Load(SourcePath("tests/fixtures/tokenizers/" + name + "/tokenizer.model"));
      ASSERT_TRUE(t.ok()) << t.status().ToString();
      toks[name] = std::move(t).value();
    }
    std::vector<Message> messages;
    for (const auto& m : c["messages"]) messages.push_back({m["role"], m["content"]});
    auto tmpl = ParseChatTemplate(c["template"]);
    ASSERT_TRUE(tmpl.ok());
    auto rendered = RenderChat(*tmpl, messages, c["generation_prompt"]);
    ASSERT_TRUE(rendered.ok());
    EXPECT_EQ(*rendered, c["text"].get<std::string>());
    auto ids = EncodeChat(*toks[name], *tmpl, messages, c["generation_prompt"]);
    ASSERT_TRUE(ids.ok()) << ids.status().ToString();
    EXPECT_EQ(*ids, c["ids"].get<std::vector<int>>()) << c["text"];
    per_template[c["template"]]++;
  }
  // Every template is covered by the goldens.
  for (ChatTemplate t : kAllChatTemplates) {
    EXPECT_GT(per_template[ChatTemplateName(t)], 0) << ChatTemplateName(t);
  }
}

}  // namespace
}  // namespace rmgen
