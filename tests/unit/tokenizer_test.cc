// Tokenizer behaviour on a SentencePiece model trained here, at test time, with the
// special-token layout of the real checkpoints (<unk> 0, <s> 1, </s> 2, <pad> 3).
#include "worker/data/tokenizer.h"

#include <gtest/gtest.h>
#include <sentencepiece_trainer.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

namespace rmgen {
namespace {

namespace fs = std::filesystem;

class TokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ =
        new fs::path(fs::temp_directory_path() / ("rmgen_tok_test_" + std::to_string(::getpid())));
    fs::create_directories(*dir_);
    const fs::path corpus = *dir_ / "corpus.txt";
    std::ofstream out(corpus);
    const char* lines[] = {"the cat sat on the mat",       "a dog ran in the park",
                           "hello world, hello again",     "<ctl> is not a word here",
                           "numbers 12345 and symbols !?", "tokenizers split text into pieces"};
    for (int rep = 0; rep < 50; ++rep) {
      for (const char* l : lines) out << l << "\n";
    }
    out.close();
    const std::string prefix = (*dir_ / "tiny").string();
    auto st = sentencepiece::SentencePieceTrainer::Train(
        "--input=" + corpus.string() + " --model_prefix=" + prefix +
        " --vocab_size=80 --model_type=bpe --hard_vocab_limit=false --unk_id=0 --bos_id=1"
        " --eos_id=2 --pad_id=3 --control_symbols=<ctl> --user_defined_symbols=<ud>"
        " --character_coverage=1.0 --minloglevel=2");
    ASSERT_TRUE(st.ok()) << st.ToString();
    path_ = new std::string(prefix + ".model");
  }
  static void TearDownTestSuite() {
    fs::remove_all(*dir_);
    delete dir_;
    delete path_;
  }
  static fs::path* dir_;
  static std::string* path_;
};
fs::path* TokenizerTest::dir_ = nullptr;
std::string* TokenizerTest::path_ = nullptr;

TEST_F(TokenizerTest, SpecialIdsComeFromTheModel) {
  auto tok = Tokenizer::Load(*path_);
  ASSERT_TRUE(tok.ok()) << tok.status().ToString();
  EXPECT_EQ((*tok)->unk_id(), 0);
  EXPECT_EQ((*tok)->bos_id(), 1);
  EXPECT_EQ((*tok)->eos_id(), 2);
  EXPECT_EQ((*tok)->pad_id(), 3);
  EXPECT_EQ((*tok)->IdToPiece(1), "<s>");
  EXPECT_EQ(*(*tok)->PieceToId("</s>"), 2);
  EXPECT_FALSE((*tok)->PieceToId("no-such-piece-xyz").has_value());
  // Longest special first.
  const auto& specials = (*tok)->special_pieces();
  ASSERT_FALSE(specials.empty());
  for (size_t i = 1; i < specials.size(); ++i) {
    EXPECT_GE(specials[i - 1].size(), specials[i].size());
  }
}

TEST_F(TokenizerTest, SpecialTextBecomesTheTokenOnlyWithSpecials) {
  auto tok = std::move(Tokenizer::Load(*path_)).value();
  const auto with = tok->EncodeWithSpecials("hello</s>world<s>");
  ASSERT_GE(with.size(), 3u);
  EXPECT_EQ(with.back(), 1);
  EXPECT_NE(std::find(with.begin(), with.end(), 2), with.end());
  // Each stretch between specials is encoded on its own, with its own dummy prefix.
  std::vector<int> expect = tok->EncodePlain("hello");
  expect.push_back(2);
  for (int id : tok->EncodePlain("world")) expect.push_back(id);
  expect.push_back(1);
  EXPECT_EQ(with, expect);
  // Plain encoding never produces control tokens from text.
  for (int id : tok->EncodePlain("hello</s>world<s><ctl>")) {
    EXPECT_NE(id, 1);
    EXPECT_NE(id, 2);
    EXPECT_NE(id, *tok->PieceToId("<ctl>"));
  }
  // A user-defined control symbol is special too.
  const auto ctl = tok->EncodeWithSpecials("<ctl>");
  ASSERT_EQ(ctl.size(), 1u);
  EXPECT_EQ(ctl[0], *tok->PieceToId("<ctl>"));
  // User-defined pieces are matched by SentencePiece itself.
  const auto ud = tok->EncodePlain("<ud>");
  EXPECT_NE(std::find(ud.begin(), ud.end(), *tok->PieceToId("<ud>")), ud.end());
}

TEST_F(TokenizerTest, DecodeInvertsPlainEncoding) {
  auto tok = std::move(Tokenizer::Load(*path_)).value();
  EXPECT_EQ(tok->Decode(tok->EncodePlain("the cat sat")), "the cat sat");
  EXPECT_TRUE(tok->EncodePlain("").empty());
  EXPECT_TRUE(tok->EncodeWithSpecials("").empty());
}

TEST_F(TokenizerTest, BadFilesGiveErrorsNamingThem) {
  auto missing = Tokenizer::Load((*dir_ / "absent.model").string());
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("absent.model"), std::string::npos);

  const std::string junk = (*dir_ / "junk.model").string();
  std::ofstream(junk) << "this is not a protobuf";
  auto bad = Tokenizer::Load(junk);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("junk.model"), std::string::npos);
  EXPECT_NE(bad.status().message().find("not a SentencePiece model"), std::string::npos);
}

}  // namespace
}  // namespace rmgen
