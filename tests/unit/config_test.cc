#include "worker/model/config.h"

#include <gtest/gtest.h>

namespace rmgen {
namespace {

std::string Base(const std::string& model_type, const std::string& extra = "") {
  return R"({"model_type": ")" + model_type +
         R"(", "vocab_size": 100, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 4)" +
         (extra.empty() ? "" : ", " + extra) + "}";
}

void ExpectFieldError(const std::string& json, const std::string& field) {
  auto c = ParseModelConfig(json, "cfg.json");
  ASSERT_FALSE(c.ok()) << json;
  EXPECT_NE(c.status().message().find("cfg.json"), std::string::npos) << c.status().message();
  EXPECT_NE(c.status().message().find("'" + field + "'"), std::string::npos)
      << c.status().message();
}

TEST(ConfigTest, DefaultsFollowTransformers) {
  auto c = ParseModelConfig(Base("llama"), "cfg.json");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->num_kv_heads, 4);
  EXPECT_EQ(c->head_dim, 8);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_EQ(c->activation, "silu");
  EXPECT_EQ(c->num_labels, 0);
  auto g = ParseModelConfig(Base("gemma", R"("hidden_act": "gelu", "head_dim": 16)"), "g");
  ASSERT_TRUE(g.ok());
  EXPECT_TRUE(g->tie_word_embeddings);
  EXPECT_EQ(g->activation, "gelu_pytorch_tanh");  // hidden_act is ignored, as transformers
  EXPECT_EQ(g->head_dim, 16);
  auto m = ParseModelConfig(Base("mistral", R"("sliding_window": 4096)"), "m");
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->sliding_window, 4096);
  auto l = ParseModelConfig(Base("llama", R"("sliding_window": 4096)"), "l");
  EXPECT_EQ(l->sliding_window, 0);  // llama has no sliding window
}

TEST(ConfigTest, ErrorsNameTheFileAndField) {
  ExpectFieldError(R"({"vocab_size": 1})", "model_type");
  ExpectFieldError(Base("gpt2"), "model_type");
  ExpectFieldError(R"({"model_type": "llama", "vocab_size": 100})", "hidden_size");
  ExpectFieldError(Base("llama", R"("num_key_value_heads": 3)"), "num_key_value_heads");
  ExpectFieldError(Base("llama", R"("rms_norm_eps": "small")"), "rms_norm_eps");
  ExpectFieldError(Base("llama", R"("rope_scaling": {"type": "linear", "factor": 2.0})"),
                   "rope_scaling");
  ExpectFieldError(Base("llama", R"("hidden_act": "relu2")"), "hidden_act");
  ExpectFieldError(Base("llama", R"("tie_word_embeddings": 1)"), "tie_word_embeddings");
  ExpectFieldError(Base("llama", R"("eos_token_id": -4)"), "eos_token_id");
  ExpectFieldError(R"({"model_type": "llama", "vocab_size": 100, "hidden_size": 30,
      "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4})",
                   "head_dim");
  auto notjson = ParseModelConfig("{oops", "cfg.json");
  ASSERT_FALSE(notjson.ok());
  EXPECT_NE(notjson.status().message().find("not valid JSON"), std::string::npos);
}

TEST(ConfigTest, RewardModelsNeedOneLabel) {
  auto ok = ParseModelConfig(Base("llama", R"("architectures": ["LlamaForSequenceClassification"],
                       "id2label": {"0": "LABEL_0"})"),
                             "rm");
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ(ok->num_labels, 1);
  ExpectFieldError(Base("llama", R"("architectures": ["LlamaForSequenceClassification"])"),
                   "num_labels");  // transformers defaults to 2 labels
}

TEST(ConfigTest, EosListTakesFirstAndJsonRoundTrips) {
  auto c = ParseModelConfig(Base("llama", R"("eos_token_id": [7, 9], "custom_field": 5)"), "c");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->eos_token_id, 7);
  auto j = ModelConfigToJson(*c, /*reward_head=*/true, "bfloat16");
  EXPECT_EQ(j["architectures"][0], "LlamaForSequenceClassification");
  EXPECT_EQ(j["num_labels"], 1);
  EXPECT_EQ(j["custom_field"], 5);     // unknown fields survive
  EXPECT_EQ(j["eos_token_id"][1], 9);  // as written, not collapsed
  auto back = ParseModelConfig(j.dump(), "back");
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->num_labels, 1);
  EXPECT_EQ(back->hidden_size, c->hidden_size);
  auto lm = ModelConfigToJson(*back, false, "float32");
  EXPECT_FALSE(lm.contains("id2label"));
  EXPECT_EQ(lm["architectures"][0], "LlamaForCausalLM");
}

}  // namespace
}  // namespace rmgen
