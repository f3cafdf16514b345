// Peak memory and time of one DPO step (forward and backward) on a Gemma-shaped small model
// (Gemma's 256k vocabulary, tied embeddings, multi-query attention; a narrow, shallow trunk),
// with the language-model head whole (runtime.vocab_chunk: 0) and in vocabulary chunks
// (worker/model/lm_head.h). Each variant runs in its own forked process: the peak is that
// process's high-water resident set during the step (VmHWM, reset just before it through
// /proc/self/clear_refs) less its resident set before the step (model, batch, libtorch). The
// two variants' losses and gradients are compared, so the saving is for the same numbers.
//   lm_head_memory [--pairs 2] [--prompt 128] [--response 256] [--vocab 256000]
//                  [--hidden 256] [--layers 2] [--chunks 0,32768,8192] [--threads 2]
// Prints one JSON line per variant, then a summary line.
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "worker/model/decoder.h"
#include "worker/train/objectives.h"

namespace {

int64_t StatusKb(const char* field) {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(field, 0) == 0) return std::atoll(line.c_str() + std::strlen(field));
  }
  return -1;
}

struct Options {
  int64_t pairs = 2, prompt = 128, response = 256, vocab = 256000, hidden = 256, layers = 2;
  int64_t threads = 2;
  std::vector<int64_t> chunks = {0, 32768, 8192};
};

// One variant, in the child: one DPO step, the peak over its resident set before the step.
nlohmann::json RunVariant(const Options& o, int64_t chunk) {
  using namespace rmgen;
  torch::set_num_threads(static_cast<int>(o.threads));
  ModelConfig c;
  c.family = Family::kGemma;
  c.vocab_size = o.vocab;
  c.hidden_size = o.hidden;
  c.intermediate_size = 4 * o.hidden;
  c.num_layers = o.layers;
  c.num_heads = 4;
  c.num_kv_heads = 1;
  c.head_dim = o.hidden / 4;
  c.tie_word_embeddings = true;
  c.activation = "gelu_pytorch_tanh";
  auto model = DecoderLM::RandomInit(c, HeadKind::kLanguageModel, 7, torch::kFloat32);
  model->SetRequiresGrad(true);
  model->SetVocabChunk(chunk);
  // Pairs with a shared prompt and two responses of the given lengths (the shared-prefix
  // layout: one row a pair).
  std::vector<TokenizedPair> pairs;
  std::mt19937_64 rng(3);
  auto token = [&] { return static_cast<int32_t>(3 + rng() % (o.vocab - 3)); };
  for (int64_t i = 0; i < o.pairs; ++i) {
    TokenizedPair p;
    for (int64_t t = 0; t < o.prompt; ++t) p.chosen.push_back(token());
    p.rejected = p.chosen;
    for (int64_t t = 0; t < o.response; ++t) p.chosen.push_back(token());
    for (int64_t t = 0; t < o.response; ++t) p.rejected.push_back(token());
    p.chosen_prompt_len = p.rejected_prompt_len = static_cast<int32_t>(o.prompt);
    pairs.push_back(std::move(p));
  }
  std::vector<int64_t> idx(o.pairs);
  for (int64_t i = 0; i < o.pairs; ++i) idx[i] = i;
  const PairBatch batch = Collate(pairs, idx, 0);
  auto ref = torch::zeros({batch.sides});
  const int64_t before_kb = StatusKb("VmRSS:");
  { std::ofstream("/proc/self/clear_refs") << "5"; }
  const auto t0 = std::chrono::steady_clock::now();
  StepMetrics metrics;
  auto loss = DpoLoss(*model, batch, ref, 0.1, 0.0, &metrics);
  loss.backward();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const int64_t peak_kb = StatusKb("VmHWM:");
  double grad_norm = 0;
  for (const auto& p : model->parameters()) grad_norm += p.grad().pow(2).sum().item<double>();
  const auto& embed_grad = model->named_parameters().front().second.grad();
  return {{"vocab_chunk", chunk},
          {"response_tokens", batch.response_tokens.sum().item<int64_t>()},
          {"vocab", o.vocab},
          {"step_s", seconds},
          {"step_peak_mib", double(peak_kb - before_kb) / 1024.0},
          {"rss_before_mib", double(before_kb) / 1024.0},
          {"loss", loss.item<double>()},
          {"logits_chosen", metrics["logits/chosen"]},
          {"grad_norm", std::sqrt(grad_norm)},
          {"embed_grad_sum", embed_grad.sum().item<double>()},
          {"embed_grad_abs_sum", embed_grad.abs().sum().item<double>()}};
}

std::vector<int64_t> ParseList(const std::string& s) {
  std::vector<int64_t> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, ',');) out.push_back(std::atoll(item.c_str()));
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--pairs") o.pairs = std::atoll(v.c_str());
    if (k == "--prompt") o.prompt = std::atoll(v.c_str());
    if (k == "--response") o.response = std::atoll(v.c_str());
    if (k == "--vocab") o.vocab = std::atoll(v.c_str());
    if (k == "--hidden") o.hidden = std::atoll(v.c_str());
    if (k == "--layers") o.layers = std::atoll(v.c_str());
    if (k == "--threads") o.threads = std::atoll(v.c_str());
    if (k == "--chunks") o.chunks = ParseList(v);
  }
  std::vector<nlohmann::json> rows;
  for (int64_t chunk : o.chunks) {
    int fds[2];
    if (pipe(fds) != 0) return 1;
    const pid_t pid = fork();
    if (pid == 0) {
      close(fds[0]);
      const std::string line = RunVariant(o, chunk).dump() + "\n";
      if (write(fds[1], line.data(), line.size()) < 0) _exit(1);
      _exit(0);
    }
    close(fds[1]);
    std::string out;
    char buf[4096];
    for (ssize_t n; (n = read(fds[0], buf, sizeof(buf))) > 0;) out.append(buf, n);
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || out.empty()) {
      std::fprintf(stderr, "variant vocab_chunk=%lld failed (status %d)\n",
                   static_cast<long long>(chunk), status);
      return 1;
    }
    rows.push_back(nlohmann::json::parse(out));
    std::printf("%s\n", rows.back().dump().c_str());
    std::fflush(stdout);
  }
  // The first variant is the anchor: the others' saving and their agreement with it.
  const auto& base = rows.front();
  for (size_t i = 1; i < rows.size(); ++i) {
    const auto& r = rows[i];
    auto rel = [&](const char* k) {
      const double a = base[k].get<double>(), b = r[k].get<double>();
      return std::abs(a - b) / std::max(1e-30, std::abs(a));
    };
    nlohmann::json s = {
        {"vocab_chunk", r["vocab_chunk"]},
        {"anchor_vocab_chunk", base["vocab_chunk"]},
        {"peak_ratio", r["step_peak_mib"].get<double>() / base["step_peak_mib"].get<double>()},
        {"time_ratio", r["step_s"].get<double>() / base["step_s"].get<double>()},
        {"loss_rel_diff", rel("loss")},
        {"grad_norm_rel_diff", rel("grad_norm")},
        {"embed_grad_abs_sum_rel_diff", rel("embed_grad_abs_sum")},
        {"logits_chosen_rel_diff", rel("logits_chosen")}};
    std::printf("%s\n", s.dump().c_str());
  }
  return 0;
}
