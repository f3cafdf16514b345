#include "worker/data/chat_template.h"

#include <gtest/gtest.h>

namespace rmgen {
namespace {

const std::string kTok = std::string(RMGEN_SOURCE_DIR) + "/tests/fixtures/tokenizers/";

TEST(ChatTemplateTest, EveryTemplateHasANameThatParsesBack) {
  for (ChatTemplate t : kAllChatTemplates) {
    auto back = ParseChatTemplate(ChatTemplateName(t));
    ASSERT_TRUE(back.ok()) << ChatTemplateName(t);
    EXPECT_EQ(*back, t);
    EXPECT_TRUE(RenderChat(t, {{"user", "hi"}}, true).ok()) << ChatTemplateName(t);
  }
  auto bad = ParseChatTemplate("chatml");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("chatml"), std::string::npos);
}

TEST(ChatTemplateTest, GemmaRendersTurnsAndStripsContent) {
  auto text = RenderChat(ChatTemplate::kGemma,
                         {{"user", "  Hi there\n"}, {"assistant", "Hello."}, {"user", "Bye"}},
                         /*add_generation_prompt=*/true);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text,
            "<bos><start_of_turn>user\nHi there<end_of_turn>\n"
            "<start_of_turn>model\nHello.<end_of_turn>\n"
            "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n");
}

TEST(ChatTemplateTest, GemmaRejectsSystemRoleAndBadAlternation) {
  auto sys = RenderChat(ChatTemplate::kGemma, {{"system", "be nice"}, {"user", "x"}}, false);
  ASSERT_FALSE(sys.ok());
  EXPECT_NE(sys.status().message().find("message 0"), std::string::npos);
  EXPECT_NE(sys.status().message().find("system"), std::string::npos);
  auto alt = RenderChat(ChatTemplate::kGemma, {{"user", "a"}, {"user", "b"}}, false);
  ASSERT_FALSE(alt.ok());
  EXPECT_NE(alt.status().message().find("message 1"), std::string::npos);
  EXPECT_NE(alt.status().message().find("alternate"), std::string::npos);
}

TEST(ChatTemplateTest, ZephyrRendersEveryRoleWithEos) {
  auto text = RenderChat(ChatTemplate::kZephyr,
                         {{"system", "S"}, {"user", " U "}, {"assistant", "A"}}, true);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "<|system|>\nS</s>\n<|user|>\n U </s>\n<|assistant|>\nA</s>\n<|assistant|>\n");
  auto bad = RenderChat(ChatTemplate::kZephyr, {{"tool", "x"}}, false);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("tool"), std::string::npos);
}

TEST(ChatTemplateTest, ExactlyOneBosForGemmaAndZephyrNoneForNone) {
  auto mistral = std::move(Tokenizer::Load(kTok + "mistral-7b-v0.1/tokenizer.model")).value();
  auto gemma = std::move(Tokenizer::Load(kTok + "toy-gemma/tokenizer.model")).value();
  const std::vector<Message> conv = {{"user", "Hello"}};

  auto z = EncodeChat(*mistral, ChatTemplate::kZephyr, conv, true);
  ASSERT_TRUE(z.ok());
  EXPECT_EQ((*z)[0], mistral->bos_id());
  EXPECT_NE((*z)[1], mistral->bos_id());

  auto g = EncodeChat(*gemma, ChatTemplate::kGemma, conv, true);
  ASSERT_TRUE(g.ok());
  EXPECT_EQ((*g)[0], gemma->bos_id());
  EXPECT_NE((*g)[1], gemma->bos_id());
  EXPECT_EQ((*g)[1], *gemma->PieceToId("<start_of_turn>"));

  auto n = EncodeChat(*mistral, ChatTemplate::kNone, {{"user", "<s>Hello</s>"}}, false);
  ASSERT_TRUE(n.ok());
  for (int id : *n) {
    EXPECT_NE(id, mistral->bos_id());
    EXPECT_NE(id, mistral->eos_id());
  }
}

TEST(ChatTemplateTest, StripMatchesPythonOnAsciiWhitespace) {
  EXPECT_EQ(StripWhitespace(" \t\n a b \r\n\v\f"), "a b");
  EXPECT_EQ(StripWhitespace("   "), "");
  EXPECT_EQ(StripWhitespace("x"), "x");
}

}  // namespace
}  // namespace rmgen
