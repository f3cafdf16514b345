#include "common/file.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

namespace rmgen {
namespace {

namespace fs = std::filesystem;

class FileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("rmgen_file_test_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

TEST_F(FileTest, AtomicWriteReplacesWholeFileAndLeavesNoTemp) {
  const std::string p = (dir_ / "a.txt").string();
  ASSERT_TRUE(WriteFileAtomic(p, "first").ok());
  ASSERT_TRUE(WriteFileAtomic(p, "second, longer").ok());
  EXPECT_EQ(*ReadFile(p), "second, longer");
  int files = 0;
  for (auto& e : fs::directory_iterator(dir_)) files += e.is_regular_file();
  EXPECT_EQ(files, 1);
}

TEST_F(FileTest, LastLinesOfALog) {
  const std::string p = (dir_ / "log").string();
  EXPECT_TRUE(LastLines(p, 3).empty());  // missing file
  std::string text;
  for (int i = 1; i <= 10; ++i) text += "line " + std::to_string(i) + "\n";
  text += std::string(40, 'x') + "\n\nno newline";
  ASSERT_TRUE(WriteFileAtomic(p, text).ok());
  EXPECT_EQ(LastLines(p, 3, 10),
            (std::vector<std::string>{"line 10", std::string(7, 'x') + "...", "no newline"}));
  // A window that starts inside a line drops that partial line.
  EXPECT_EQ(LastLines(p, 100, 500, 65).front(), "line 10");
}

// A log is what a job wrote: any bytes, and a job may replace it with a link or a FIFO. The
// reader gets valid UTF-8, never another file's lines, and never waits.
TEST_F(FileTest, LastLinesReadsOnlyARegularFileAsValidUtf8) {
  const std::string p = (dir_ / "log").string();
  ASSERT_TRUE(WriteFileAtomic(p, "ok \xE2\x82\n\xFF\xFEtail \xE2\x82\xAC\n").ok());
  EXPECT_EQ(LastLines(p, 5), (std::vector<std::string>{
                                 "ok \xEF\xBF\xBD", "\xEF\xBF\xBD\xEF\xBF\xBDtail \xE2\x82\xAC"}));
  // A cut inside a character drops the whole character.
  EXPECT_EQ(LastLines(p, 1, 9), (std::vector<std::string>{"\xEF\xBF\xBD\xEF\xBF\xBD..."}));
  const std::string secret = (dir_ / "secret").string();
  ASSERT_TRUE(WriteFileAtomic(secret, "not yours\n").ok());
  const std::string link = (dir_ / "link.log").string();
  ASSERT_EQ(::symlink(secret.c_str(), link.c_str()), 0);
  EXPECT_TRUE(LastLines(link, 5).empty());
  const std::string fifo = (dir_ / "fifo.log").string();
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_TRUE(LastLines(fifo, 5).empty());  // returns at once: no writer is ever opened
  EXPECT_TRUE(LastLines(dir_.string(), 5).empty());
}

TEST_F(FileTest, UncommittedWriterLeavesTargetUntouched) {
  const std::string p = (dir_ / "b.txt").string();
  ASSERT_TRUE(WriteFileAtomic(p, "old").ok());
  {
    auto w = AtomicFileWriter::Open(p);
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE((*w)->Append("new", 3).ok());
  }  // destroyed without Commit
  EXPECT_EQ(*ReadFile(p), "old");
}

TEST_F(FileTest, MappedFileSeesBytesAndErrorsNamePath) {
  const std::string p = (dir_ / "c.bin").string();
  ASSERT_TRUE(WriteFileAtomic(p, std::string("\x01\x02\x03", 3)).ok());
  auto m = MappedFile::Open(p);
  ASSERT_TRUE(m.ok());
  ASSERT_EQ((*m)->size(), 3u);
  EXPECT_EQ((*m)->data()[2], 3);
  auto missing = MappedFile::Open((dir_ / "nope").string());
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("nope"), std::string::npos);
  auto d = MappedFile::Open(dir_.string());
  EXPECT_FALSE(d.ok());
}

}  // namespace
}  // namespace rmgen
