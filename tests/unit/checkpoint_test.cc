// Checkpoint folders: save -> load is bit-identical for every family and head, sharding
// works, and every broken folder gives an error naming the file and tensor.
#include "worker/model/checkpoint.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "tests/test_util.h"

namespace rmgen {
namespace {

using testing::TempDir;
namespace fs = std::filesystem;

ModelConfig TinyConfig(Family f) {
  std::string extra;
  if (f == Family::kGemma) extra = R"(, "head_dim": 12, "num_key_value_heads": 1)";
  if (f == Family::kMistral) extra = R"(, "sliding_window": 4, "num_key_value_heads": 2)";
  auto c = ParseModelConfig(std::string(R"({"model_type": ")") + FamilyModelType(f) +
                                R"(", "vocab_size": 50, "hidden_size": 16,
      "intermediate_size": 24, "num_hidden_layers": 2, "num_attention_heads": 4)" +
                                extra + "}",
                            "tiny");
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  return *c;
}

void ExpectSameParams(const DecoderLM& a, const DecoderLM& b) {
  ASSERT_EQ(a.named_parameters().size(), b.named_parameters().size());
  for (size_t i = 0; i < a.named_parameters().size(); ++i) {
    EXPECT_EQ(a.named_parameters()[i].first, b.named_parameters()[i].first);
    EXPECT_TRUE(torch::equal(a.named_parameters()[i].second, b.named_parameters()[i].second))
        << a.named_parameters()[i].first;
  }
}

void ExpectError(const Status& s, const std::vector<std::string>& needles) {
  ASSERT_FALSE(s.ok());
  for (const auto& n : needles) {
    EXPECT_NE(s.message().find(n), std::string::npos) << "'" << n << "' not in: " << s.message();
  }
}

TEST(CheckpointTest, SaveLoadIsBitIdenticalForEveryFamilyAndHead) {
  for (Family f : kAllFamilies) {
    for (HeadKind head : {HeadKind::kLanguageModel, HeadKind::kReward}) {
      TempDir dir;
      auto model = DecoderLM::RandomInit(TinyConfig(f), head, 7, torch::kFloat32);
      ASSERT_TRUE(SaveModel(*model, dir.path(), {}).ok());
      LoadOptions lo;
      lo.head = head;
      auto back = LoadModel(dir.path(), lo);
      ASSERT_TRUE(back.ok()) << back.status().ToString();
      EXPECT_TRUE(back->freshly_initialized.empty());
      EXPECT_TRUE(back->unused.empty());
      ExpectSameParams(*model, *back->model);
      auto cfg = nlohmann::json::parse(*ReadFile(dir / "config.json"));
      EXPECT_EQ(cfg["architectures"][0], HfArchitecture(f, head == HeadKind::kReward));
      EXPECT_EQ(cfg["model_type"], FamilyModelType(f));
    }
  }
}

TEST(CheckpointTest, ShardedSaveWritesIndexAndLoadsIdentically) {
  TempDir dir;
  auto model = DecoderLM::RandomInit(TinyConfig(Family::kMistral), HeadKind::kLanguageModel, 3,
                                     torch::kFloat32);
  SaveOptions so;
  so.max_shard_bytes = 4096;
  ASSERT_TRUE(SaveModel(*model, dir.path(), so).ok());
  EXPECT_FALSE(FileExists(dir / "model.safetensors"));
  auto index = nlohmann::json::parse(*ReadFile(dir / "model.safetensors.index.json"));
  EXPECT_EQ(index["weight_map"].size(), model->named_parameters().size());
  std::set<std::string> shards;
  for (auto& [k, v] : index["weight_map"].items()) shards.insert(v.get<std::string>());
  EXPECT_GT(shards.size(), 2u);
  auto back = LoadModel(dir.path(), {});
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  ExpectSameParams(*model, *back->model);
  // Saving unsharded into the same folder leaves one layout only.
  ASSERT_TRUE(SaveModel(*model, dir.path(), {}).ok());
  EXPECT_FALSE(FileExists(dir / "model.safetensors.index.json"));
  EXPECT_TRUE(FileExists(dir / "model.safetensors"));
}

TEST(CheckpointTest, Bf16StorageRoundsOnceAndLoadsIntoFp32) {
  TempDir dir;
  auto model = DecoderLM::RandomInit(TinyConfig(Family::kGemma), HeadKind::kLanguageModel, 5,
                                     torch::kFloat32);
  SaveOptions so;
  so.dtype = torch::kBFloat16;
  ASSERT_TRUE(SaveModel(*model, dir.path(), so).ok());
  auto back = LoadModel(dir.path(), {});
  ASSERT_TRUE(back.ok());
  const auto& a = model->named_parameters()[0].second;
  const auto& b = back->model->named_parameters()[0].second;
  EXPECT_EQ(b.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::equal(a.to(torch::kBFloat16).to(torch::kFloat32), b));
  EXPECT_EQ(nlohmann::json::parse(*ReadFile(dir / "config.json"))["torch_dtype"], "bfloat16");
}

TEST(CheckpointTest, RewardHeadIsInitialisedFromACausalCheckpoint) {
  TempDir dir;
  auto lm = DecoderLM::RandomInit(TinyConfig(Family::kLlama), HeadKind::kLanguageModel, 1,
                                  torch::kFloat32);
  ASSERT_TRUE(SaveModel(*lm, dir.path(), {}).ok());
  LoadOptions lo;
  lo.head = HeadKind::kReward;
  lo.init_seed = 11;
  auto rm = LoadModel(dir.path(), lo);
  ASSERT_TRUE(rm.ok()) << rm.status().ToString();
  EXPECT_EQ(rm->freshly_initialized, std::vector<std::string>{"score.weight"});
  EXPECT_EQ(rm->unused, std::vector<std::string>{"lm_head.weight"});
  auto rm2 = LoadModel(dir.path(), lo);
  EXPECT_TRUE(torch::equal(rm->model->named_parameters().back().second,
                           rm2->model->named_parameters().back().second));  // seeded
  // The other way round is an error: a reward checkpoint has no untied LM head.
  TempDir rdir;
  ASSERT_TRUE(SaveModel(*rm->model, rdir.path(), {}).ok());
  ExpectError(LoadModel(rdir.path(), {}).status(), {"lm_head.weight", "HINT"});
}

TEST(CheckpointTest, BrokenFoldersGiveNamedErrors) {
  auto model = DecoderLM::RandomInit(TinyConfig(Family::kLlama), HeadKind::kLanguageModel, 2,
                                     torch::kFloat32);
  {
    TempDir dir;
    ExpectError(LoadModel(dir.path(), {}).status(), {"config.json", "missing"});
  }
  {
    TempDir dir;
    ASSERT_TRUE(SaveModel(*model, dir.path(), {}).ok());
    fs::remove(dir / "model.safetensors");
    ExpectError(LoadModel(dir.path(), {}).status(), {"model.safetensors", "HINT"});
  }
  {  // config says a wider model than the weights
    TempDir dir;
    ASSERT_TRUE(SaveModel(*model, dir.path(), {}).ok());
    auto cfg = nlohmann::json::parse(*ReadFile(dir / "config.json"));
    cfg["intermediate_size"] = 32;
    ASSERT_TRUE(WriteFileAtomic(dir / "config.json", cfg.dump()).ok());
    ExpectError(LoadModel(dir.path(), {}).status(),
                {"model.safetensors", "model.layers.0.mlp.gate_proj.weight", "shape mismatch",
                 "stored [24, 16]", "expected [32, 16]"});
  }
  {  // a tensor missing from the weights
    TempDir dir;
    NamedTensors partial;
    for (const auto& [n, t] : model->named_parameters()) {
      if (n != "model.norm.weight") partial.emplace_back(n, t);
    }
    ASSERT_TRUE(WriteSafetensors(dir / "model.safetensors", partial).ok());
    ASSERT_TRUE(WriteFileAtomic(dir / "config.json",
                                ModelConfigToJson(model->config(), false, "float32").dump())
                    .ok());
    ExpectError(LoadModel(dir.path(), {}).status(), {"missing tensor 'model.norm.weight'"});
  }
  {  // truncated shard, missing shard, index naming a tensor its shard lacks
    TempDir dir;
    SaveOptions so;
    so.max_shard_bytes = 4096;
    ASSERT_TRUE(SaveModel(*model, dir.path(), so).ok());
    auto index = nlohmann::json::parse(*ReadFile(dir / "model.safetensors.index.json"));
    const std::string shard = index["weight_map"]["model.norm.weight"];
    std::string bytes = *ReadFile(dir / shard);
    ASSERT_TRUE(WriteFileAtomic(dir / shard, bytes.substr(0, bytes.size() - 10)).ok());
    ExpectError(LoadModel(dir.path(), {}).status(), {shard, "truncated"});
    fs::remove(dir / shard);
    ExpectError(LoadModel(dir.path(), {}).status(), {"names shard '" + shard + "'"});
    ASSERT_TRUE(WriteFileAtomic(dir / shard, bytes).ok());
    index["weight_map"]["model.norm.weight"] = index["weight_map"]["model.embed_tokens.weight"];
    ASSERT_TRUE(WriteFileAtomic(dir / "model.safetensors.index.json", index.dump()).ok());
    ExpectError(LoadModel(dir.path(), {}).status(), {"missing tensor 'model.norm.weight'"});
  }
}

TEST(CheckpointTest, TokenizerFilesTravelWithTheCheckpoint) {
  TempDir src, dst;
  ASSERT_TRUE(WriteFileAtomic(src / "tokenizer.model", "sp-bytes").ok());
  ASSERT_TRUE(WriteFileAtomic(src / "tokenizer_config.json", "{}").ok());
  auto model = DecoderLM::RandomInit(TinyConfig(Family::kLlama), HeadKind::kLanguageModel, 2,
                                     torch::kFloat32);
  SaveOptions so;
  so.tokenizer_dir = src.path();
  ASSERT_TRUE(SaveModel(*model, dst.path(), so).ok());
  EXPECT_EQ(*ReadFile(dst / "tokenizer.model"), "sp-bytes");
  EXPECT_EQ(*ReadFile(dst / "tokenizer_config.json"), "{}");
}

}  // namespace
}  // namespace rmgen
