// Forward + backward throughput of rmgen's DecoderLM on CPU: the loss is the summed
// log-probability of every token but the first (the DPO path: SequenceLogProbs), so the
// step is what a policy update costs. Its twin, bench/model_fwd_bwd_torch.py, runs
// transformers' model (PyTorch eager) on the same weights, batch and thread count;
// bench/run_model_bench.sh runs both and prints the ratio.
//
//   model_fwd_bwd --config configs/models/bench-llama-small.json --batch 4 --seq 256
//                 --threads 2 --steps 5 --warmup 2 --save-dir DIR
// Prints one JSON line: {"impl": "rmgen", "tokens_per_s": ..., "loss": ..., ...}.
// With --save-dir it first writes the weights and the batch there, for the twin.
#include <chrono>
#include <cstdio>
#include <map>
#include <string>

#include "common/file.h"
#include "worker/model/checkpoint.h"

using namespace rmgen;

int main(int argc, char** argv) {
  std::map<std::string, std::string> a = {{"config", "configs/models/bench-llama-small.json"},
                                          {"batch", "4"},
                                          {"seq", "256"},
                                          {"threads", "2"},
                                          {"steps", "5"},
                                          {"warmup", "2"},
                                          {"save-dir", ""}};
  for (int i = 1; i + 1 < argc; i += 2) a[std::string(argv[i]).substr(2)] = argv[i + 1];
  torch::set_num_threads(std::stoi(a["threads"]));
  auto text = ReadFile(a["config"]);
  if (!text.ok()) {
    std::fprintf(stderr, "%s\n", text.status().ToString().c_str());
    return 1;
  }
  auto config = ParseModelConfig(*text, a["config"]);
  if (!config.ok()) {
    std::fprintf(stderr, "%s\n", config.status().ToString().c_str());
    return 1;
  }
  const int64_t B = std::stoll(a["batch"]), T = std::stoll(a["seq"]);
  auto model = DecoderLM::RandomInit(*config, HeadKind::kLanguageModel, 0, torch::kFloat32);
  torch::manual_seed(0);
  auto ids = torch::randint(3, config->vocab_size, {B, T}, torch::kInt64);
  auto mask = torch::ones({B, T}, torch::kInt64);
  auto resp = torch::ones({B, T}, torch::kInt64);
  resp.select(1, 0) = 0;
  if (!a["save-dir"].empty()) {
    Status st = SaveModel(*model, a["save-dir"], {});
    if (st.ok()) st = WriteSafetensors(a["save-dir"] + "/batch.safetensors", {{"input_ids", ids}});
    if (!st.ok()) {
      std::fprintf(stderr, "%s\n", st.ToString().c_str());
      return 1;
    }
  }
  model->SetRequiresGrad(true);
  double loss_value = 0;
  auto step = [&] {
    for (auto& p : model->parameters()) p.mutable_grad() = torch::Tensor();
    auto loss = -model->SequenceLogProbs(ids, mask, resp).sum() / double(B * (T - 1));
    loss.backward();
    loss_value = loss.item<double>();
  };
  const int warmup = std::stoi(a["warmup"]), steps = std::stoi(a["steps"]);
  for (int i = 0; i < warmup; ++i) step();
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < steps; ++i) step();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf(
      "{\"impl\": \"rmgen\", \"torch\": \"%s\", \"threads\": %d, \"batch\": %lld, "
      "\"seq\": %lld, \"params\": %lld, \"loss\": %.6f, \"step_s\": %.4f, "
      "\"tokens_per_s\": %.1f}\n",
      TORCH_VERSION, torch::get_num_threads(), (long long)B, (long long)T,
      (long long)model->NumParameters(), loss_value, s / steps, B * T * steps / s);
  return 0;
}
