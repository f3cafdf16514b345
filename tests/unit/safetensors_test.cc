// Safetensors reading and writing, and every malformed file the reader must reject with
// a message naming the file and tensor instead of crashing.
#include "worker/model/safetensors.h"

#include <gtest/gtest.h>

#include "tests/test_util.h"

namespace rmgen {
namespace {

using testing::TempDir;

std::string Bytes(const std::string& header, const std::string& data) {
  std::string out;
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  return out + header + data;
}

Status OpenRaw(const TempDir& dir, const std::string& bytes, const std::string& name = "t.st") {
  EXPECT_TRUE(WriteFileAtomic(dir / name, bytes).ok());
  auto f = SafetensorsFile::Open(dir / name);
  if (!f.ok()) return f.status();
  for (const auto& [n, e] : f->entries()) {
    auto t = f->Load(n, torch::kFloat32);
    if (!t.ok()) return t.status();
  }
  return Status::Ok();
}

void ExpectError(const Status& s, const std::vector<std::string>& needles) {
  ASSERT_FALSE(s.ok());
  for (const auto& n : needles) {
    EXPECT_NE(s.message().find(n), std::string::npos) << "'" << n << "' not in: " << s.message();
  }
}

TEST(SafetensorsTest, RoundTripsEveryDtypeBitExactly) {
  TempDir dir;
  NamedTensors ts = {
      {"f32", torch::randn({3, 4})},
      {"bf16", torch::randn({5}).to(torch::kBFloat16)},
      {"f16", torch::randn({2, 2, 2}).to(torch::kFloat16)},
      {"i64", torch::arange(7, torch::kInt64)},
      {"scalar", torch::tensor(3.5f).reshape({})},
      {"empty", torch::zeros({0, 4})},
  };
  ASSERT_TRUE(WriteSafetensors(dir / "a.safetensors", ts).ok());
  auto f = SafetensorsFile::Open(dir / "a.safetensors");
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ(f->entries().size(), ts.size());
  EXPECT_EQ(f->metadata().at("format"), "pt");
  for (const auto& [name, t] : ts) {
    auto back = f->Load(name, t.scalar_type());
    ASSERT_TRUE(back.ok()) << name;
    EXPECT_TRUE(torch::equal(*back, t)) << name;
  }
  // Conversion on load: bf16 stored, fp32 requested.
  auto up = f->Load("bf16", torch::kFloat32);
  EXPECT_TRUE(torch::equal(*up, ts[1].second.to(torch::kFloat32)));
}

TEST(SafetensorsTest, WritingIsDeterministicAndHeaderAligned) {
  TempDir dir;
  NamedTensors ts = {{"b", torch::ones({3})}, {"a", torch::zeros({2, 3})}};
  ASSERT_TRUE(WriteSafetensors(dir / "1", ts).ok());
  std::reverse(ts.begin(), ts.end());
  ASSERT_TRUE(WriteSafetensors(dir / "2", ts).ok());
  auto one = *ReadFile(dir / "1");
  EXPECT_EQ(one, *ReadFile(dir / "2"));
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(one[i]);
  EXPECT_EQ(n % 8, 0u);
}

TEST(SafetensorsTest, RejectsEveryKindOfCorruptFile) {
  TempDir dir;
  ExpectError(OpenRaw(dir, "abc", "short.st"), {"short.st", "truncated"});
  ExpectError(OpenRaw(dir, std::string("\xff\xff\xff\xff\x00\x00\x00\x00", 8) + "{}", "len.st"),
              {"len.st", "exceeds the file"});
  ExpectError(OpenRaw(dir, Bytes("{not json", ""), "json.st"), {"json.st", "not a JSON object"});
  ExpectError(OpenRaw(dir,
                      Bytes(R"({"w": {"dtype": "F8_E4M3", "shape": [1],
      "data_offsets": [0, 1]}})",
                            "x"),
                      "dtype.st"),
              {"dtype.st", "'w'", "unknown dtype 'F8_E4M3'"});
  ExpectError(OpenRaw(dir,
                      Bytes(R"({"w": {"dtype": "F32", "shape": [2],
      "data_offsets": [0, 4]}})",
                            "xxxx"),
                      "span.st"),
              {"span.st", "'w'", "needs 8"});
  ExpectError(OpenRaw(dir,
                      Bytes(R"({"w": {"dtype": "F32", "shape": [4],
      "data_offsets": [0, 16]}})",
                            "12345678"),
                      "trunc.st"),
              {"trunc.st", "truncated", "'w'"});
  ExpectError(OpenRaw(dir,
                      Bytes(R"({"w": {"dtype": "F32", "shape": [-1],
      "data_offsets": [0, 0]}})",
                            ""),
                      "neg.st"),
              {"neg.st", "bad 'shape'"});
  ExpectError(OpenRaw(dir, Bytes(R"({"w": {"dtype": "F32", "shape": [1]}})", "1234"), "off.st"),
              {"off.st", "data_offsets"});
  ExpectError(OpenRaw(dir,
                      Bytes(R"({"w": {"dtype": "F32", "shape": [1],
      "data_offsets": [4, 0]}})",
                            "1234"),
                      "order.st"),
              {"order.st", "begin > end"});
  ExpectError(OpenRaw(dir, Bytes(R"({"w": 5})", ""), "entry.st"), {"entry.st", "not an object"});
}

TEST(SafetensorsTest, MissingTensorAndShapeMismatchAreNamed) {
  TempDir dir;
  ASSERT_TRUE(WriteSafetensors(dir / "m.st", {{"w", torch::zeros({2, 3})}}).ok());
  auto f = SafetensorsFile::Open(dir / "m.st");
  ASSERT_TRUE(f.ok());
  ExpectError(f->Load("v", torch::kFloat32).status(), {"m.st", "missing tensor 'v'"});
  ExpectError(f->Load("w", torch::kFloat32, {3, 2}).status(),
              {"m.st", "'w'", "stored [2, 3]", "expected [3, 2]"});
}

}  // namespace
}  // namespace rmgen
