// Every model family is handled everywhere the code switches over families. The compiler
// checks the switches (-Werror=switch); this test checks that kAllFamilies lists every
// enum value and that each family has a name, a template, traits and parity goldens.
#include "worker/model/family.h"

#include <gtest/gtest.h>

#include <iterator>
#include <set>

#include "common/file.h"
#include "tests/test_util.h"
#include "worker/data/chat_template.h"
#include "worker/model/config.h"

namespace rmgen {
namespace {

TEST(FamilyTest, AllFamiliesListsEveryEnumValueInOrder) {
  const size_t n = std::size(kAllFamilies);
  for (size_t i = 0; i < n; ++i) EXPECT_EQ(static_cast<size_t>(kAllFamilies[i]), i);
  // A value past the list must be unknown to every switch: if it has a model type, a
  // family was added to the enum but not to kAllFamilies.
  EXPECT_STREQ(FamilyModelType(static_cast<Family>(n)), "");
}

TEST(FamilyTest, EveryFamilyIsCoveredEverywhere) {
  std::set<std::string> names;
  for (Family f : kAllFamilies) {
    const std::string type = FamilyModelType(f);
    ASSERT_FALSE(type.empty());
    EXPECT_TRUE(names.insert(type).second) << "duplicate model_type " << type;
    auto back = FamilyFromModelType(type);
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(*back, f);
    EXPECT_NE(HfArchitecture(f, false).find("ForCausalLM"), std::string::npos);
    EXPECT_NE(HfArchitecture(f, true).find("ForSequenceClassification"), std::string::npos);
    EXPECT_TRUE(ParseChatTemplate(DefaultChatTemplateName(f)).ok()) << type;
    const FamilyTraits t = TraitsOf(f);
    ASSERT_NE(t.default_activation, nullptr);
    // The default activation is one the config parser accepts.
    const std::string cfg = std::string(R"({"model_type": ")") + type +
                            R"(", "vocab_size": 8, "hidden_size": 8, "intermediate_size": 8,
        "num_hidden_layers": 1, "num_attention_heads": 2})";
    auto parsed = ParseModelConfig(cfg, "inline");
    ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
    EXPECT_EQ(parsed->activation, t.default_activation);
    // Parity goldens exist for every family (tests/parity/generate.py writes them).
    EXPECT_TRUE(FileExists(testing::SourcePath("tests/parity/golden/" + type + ".safetensors")))
        << "no parity golden for " << type;
  }
  EXPECT_FALSE(FamilyFromModelType("gpt2").ok());
}

TEST(FamilyTest, TraitsEncodeTheKnownQuirks) {
  EXPECT_TRUE(TraitsOf(Family::kGemma).norm_weight_plus_one);
  EXPECT_TRUE(TraitsOf(Family::kGemma).scale_embeddings);
  EXPECT_TRUE(TraitsOf(Family::kGemma).default_tied_embeddings);
  EXPECT_TRUE(TraitsOf(Family::kMistral).has_sliding_window);
  EXPECT_FALSE(TraitsOf(Family::kLlama).has_sliding_window);
  EXPECT_FALSE(TraitsOf(Family::kLlama).norm_weight_plus_one);
}

}  // namespace
}  // namespace rmgen
