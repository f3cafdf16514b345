// Token ids of chat-templated conversations equal those of the transformers tokenizers
// (tests/parity/golden/tokenizer.json, from tests/parity/generate.py): the real Mistral
// SentencePiece model with the Zephyr template, the toy Gemma model with Gemma-it's. And
// preference pairs tokenized by TokenizePair equal TRL 0.9.6's own tokenization and
// truncation of them (tests/parity/golden/tokenize_pairs.json, from
// tests/parity/generate_tokenize.py).
#include <gtest/gtest.h>

#include <map>
#include <nlohmann/json.hpp>

#include "common/file.h"
#include "tests/test_util.h"
#include "worker/data/chat_template.h"
#include "worker/data/tokenize.h"

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

std::vector<Message> Messages(const nlohmann::json& j) {
  std::vector<Message> out;
  for (const auto& m : j) out.push_back({m["role"], m["content"]});
  return out;
}

// TRL's DPOTrainer tokenization (0.9.6: the joint prompt + response encoding split where the
// prompt ends, BOS and EOS added where absent, keep_end prompt truncation, then response
// truncation) on templated pairs: short ones, multi-turn prompts, responses that start with
// a space, punctuation or a newline, special-token text inside a response, over-long prompts
// and responses. rmgen's ids, prompt lengths and truncation counts must be TRL's.
TEST(TokenizerParityTest, PairTokenizationEqualsTrl) {
  auto text = ReadFile(SourcePath("tests/parity/golden/tokenize_pairs.json"));
  ASSERT_TRUE(text.ok());
  const auto golden = nlohmann::json::parse(*text);
  const auto& settings = golden["settings"];
  ASSERT_EQ(settings["truncation_mode"], "keep_end");  // rmgen's only mode
  std::map<std::string, std::unique_ptr<Tokenizer>> toks;
  std::map<std::string, int> per_template;
  int prompt_cuts = 0, response_cuts = 0;
  for (const auto& c : golden["cases"]) {
    const std::string name = c["name"];
    SCOPED_TRACE(name);
    const std::string tok_name = c["tokenizer"];
    if (!toks.count(tok_name)) {
      auto t =
          Tokenizer::Load(SourcePath("tests/fixtures/tokenizers/" + tok_name + "/tokenizer.model"));
      ASSERT_TRUE(t.ok()) << t.status().ToString();
      toks[tok_name] = std::move(t).value();
    }
    PreferencePair p;
    p.prompt = Messages(c["prompt"]);
    p.chosen = Messages(c["chosen"]);
    p.rejected = Messages(c["rejected"]);
    auto tmpl = ParseChatTemplate(c["template"]);
    ASSERT_TRUE(tmpl.ok());
    // The prompt TRL was given is rmgen's rendering (transformers' Jinja template).
    auto rendered = RenderChat(*tmpl, p.prompt, true);
    ASSERT_TRUE(rendered.ok()) << rendered.status().ToString();
    EXPECT_EQ(*rendered, c["prompt_text"].get<std::string>());
    EXPECT_EQ(ResponseText(p.chosen), c["chosen_text"].get<std::string>());
    TokenizeOptions o;
    o.chat_template = *tmpl;
    o.max_length = settings["max_length"];
    o.max_prompt_length = settings["max_prompt_length"];
    TokenizeStats st;
    auto t = TokenizePair(*toks[tok_name], p, o, &st);
    ASSERT_TRUE(t.ok()) << t.status().ToString();
    ASSERT_TRUE(t->has_value());
    const auto& trl = c["trl"];
    const auto& got = **t;
    EXPECT_EQ(std::vector<int>(got.chosen.begin(), got.chosen.end()),
              trl["chosen_input_ids"].get<std::vector<int>>());
    EXPECT_EQ(std::vector<int>(got.rejected.begin(), got.rejected.end()),
              trl["rejected_input_ids"].get<std::vector<int>>());
    EXPECT_EQ(got.chosen_prompt_len, trl["chosen_prompt_len"].get<int>());
    EXPECT_EQ(got.rejected_prompt_len, trl["rejected_prompt_len"].get<int>());
    EXPECT_EQ(st.prompt_truncated, trl["prompt_truncated"].get<bool>() ? 1 : 0);
    EXPECT_EQ(st.response_truncated, trl["response_truncated"].get<bool>() ? 1 : 0);
    prompt_cuts += trl["prompt_truncated"].get<bool>();
    response_cuts += trl["response_truncated"].get<bool>();
    per_template[c["template"]]++;
  }
  for (ChatTemplate t : kAllChatTemplates) {
    EXPECT_GT(per_template[ChatTemplateName(t)], 0) << ChatTemplateName(t);
  }
  // The goldens exercise both truncations.
  EXPECT_GT(prompt_cuts, 0);
  EXPECT_GT(response_cuts, 0);
}

}  // namespace
}  // namespace rmgen
