// Shared by the training tests: a synthetic suite written once per test binary, and job
// specs pointing at it.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "common/file.h"
#include "tests/test_util.h"
#include "worker/data/synth.h"
#include "worker/model/safetensors.h"
#include "worker/train/trainer.h"

namespace rmgen::testing {

// The synthetic suite (small) in a temp folder, shared by the tests of one binary.
inline const std::string& SynthDir(int64_t train = 2000) {
  static TempDir* dir = nullptr;
  if (dir == nullptr) {
    dir = new TempDir();
    SynthOptions o;
    o.seed = 11;
    o.train = train;
    o.validation = 300;
    o.shifted = 300;
    EXPECT_TRUE(WriteSyntheticSuite(dir->path(), o).ok());
  }
  static const std::string path = dir->path();
  return path;
}

// A spec over the synth suite with a tiny random model; `extra` is appended YAML.
inline std::string SynthSpec(const std::string& kind, const std::string& extra) {
  const std::string d = SynthDir();
  return "kind: " + kind + "\n" +
         "model:\n  config: " + SourcePath("configs/models/tiny-synth.json") + "\n" +
         "tokenizer: " + d + "/tokenizer.model\n" + "template: zephyr\n" +
         "data:\n  catalog: " + d + "/datasets.yaml\n  train: synth-id:train\n" + extra;
}

inline StatusOr<JobSpec> Spec(const std::string& yaml) { return ParseJobSpec(yaml, "test.yaml"); }

// Every tensor of a checkpoint's weights (single-file layout), by name.
inline NamedTensors CheckpointTensors(const std::string& dir) {
  NamedTensors out;
  auto f = SafetensorsFile::Open(dir + "/checkpoint/model.safetensors");
  EXPECT_TRUE(f.ok()) << f.status().ToString();
  if (!f.ok()) return out;
  for (const auto& [name, e] : f->entries())
    out.emplace_back(name, *f->Load(name, torch::kFloat32));
  return out;
}

inline nlohmann::json ReadJson(const std::string& path) {
  auto text = ReadFile(path);
  EXPECT_TRUE(text.ok()) << path;
  return nlohmann::json::parse(text.ok() ? *text : "{}");
}

}  // namespace rmgen::testing
