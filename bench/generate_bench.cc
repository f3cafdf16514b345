// Generation tokens/s of rmgen (KV cache, batched prompts of different lengths) on a
// checkpoint; bench/run_generate_bench.sh runs transformers' generate on the same weights,
// prompts and threads and compares. Greedy; without --stop every request makes exactly --new
// tokens, so both sides do the same work; with --stop ID both stop there, making the same
// tokens. Prints one JSON line, with a digest of the tokens so the two sides can be checked
// to agree.
//   generate_bench --model DIR --prompts FILE.json --new N --batch B --threads T --repeat R
//                  [--stop ID]
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>

#include "common/file.h"
#include "worker/model/checkpoint.h"
#include "worker/model/generate.h"

int main(int argc, char** argv) {
  using namespace rmgen;
  std::string model_dir, prompts_path;
  int64_t new_tokens = 64, batch = 8, threads = 2, repeat = 3, stop = -1;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--model")
      model_dir = v;
    else if (k == "--prompts")
      prompts_path = v;
    else if (k == "--new")
      new_tokens = std::atoll(v.c_str());
    else if (k == "--batch")
      batch = std::atoll(v.c_str());
    else if (k == "--threads")
      threads = std::atoll(v.c_str());
    else if (k == "--repeat")
      repeat = std::atoll(v.c_str());
    else if (k == "--stop")
      stop = std::atoll(v.c_str());
  }
  torch::set_num_threads(static_cast<int>(threads));
  auto loaded = LoadModel(model_dir, {});
  if (!loaded.ok()) {
    std::fprintf(stderr, "%s\n", loaded.status().ToString().c_str());
    return 1;
  }
  auto text = ReadFile(prompts_path);
  if (!text.ok()) return 1;
  const auto prompts = nlohmann::json::parse(*text);
  std::vector<GenerationRequest> reqs;
  for (size_t i = 0; i < prompts.size(); ++i) {
    reqs.push_back({prompts[i].get<std::vector<int64_t>>(), i, 0});
  }
  SamplingOptions o;
  o.greedy = true;
  o.max_new_tokens = new_tokens;
  o.batch_size = batch;
  if (stop >= 0) o.stop_ids = {stop};
  double best = 1e30;
  uint64_t digest = 0;
  int64_t total = 0;
  for (int64_t r = 0; r < repeat + 1; ++r) {  // the first run warms up
    const auto t0 = std::chrono::steady_clock::now();
    auto gen = Generate(*loaded->model, reqs, o);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!gen.ok()) {
      std::fprintf(stderr, "%s\n", gen.status().ToString().c_str());
      return 1;
    }
    if (r == 0) {
      for (const auto& g : *gen) {
        total += g.tokens.size();
        for (int64_t t : g.tokens) digest = digest * 1000003ull + static_cast<uint64_t>(t);
      }
      continue;
    }
    best = std::min(best, s);
  }
  nlohmann::json out = {{"impl", "rmgen"},
                        {"threads", threads},
                        {"batch", batch},
                        {"new_tokens", total},
                        {"seconds", best},
                        {"tokens_per_s", total / best},
                        {"digest", std::to_string(digest)}};
  std::printf("%s\n", out.dump().c_str());
  return 0;
}
