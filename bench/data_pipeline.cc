// Data pipeline throughput: parse (JSONL, `pairs` adapter) + chat template + tokenize
// (TRL's joint prompt/response encoding and truncation) of a preference file, in pairs/s.
// Its twin bench/data_pipeline_py.py does the same work in Python; bench/run_data_bench.sh
// runs both on one file and prints the ratios.
//
//   data_pipeline --input pairs.jsonl --tokenizer tokenizer.model --template zephyr
//                 [--threads N]
// Prints one JSON line. With --threads > 1 records are parsed on one thread and tokenized
// on N (the parse time is included).
#include <atomic>
#include <chrono>
#include <cstdio>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "worker/data/dataset.h"
#include "worker/data/tokenize.h"

using namespace rmgen;

int main(int argc, char** argv) {
  std::map<std::string, std::string> a = {{"template", "zephyr"}, {"threads", "1"}};
  for (int i = 1; i + 1 < argc; i += 2) a[std::string(argv[i]).substr(2)] = argv[i + 1];
  auto tok = Tokenizer::Load(a["tokenizer"]);
  if (!tok.ok()) {
    std::fprintf(stderr, "%s\n", tok.status().ToString().c_str());
    return 1;
  }
  TokenizeOptions to;
  to.chat_template = *ParseChatTemplate(a["template"]);
  const int threads = std::max(1, std::stoi(a["threads"]));
  ReadOptions ro;
  ro.format = "pairs";
  DatasetStats ds;
  std::vector<TokenizeStats> ts(threads);
  std::atomic<int64_t> tokens{0};
  const auto t0 = std::chrono::steady_clock::now();
  Status st;
  if (threads == 1) {
    st = ReadDataset(
        a["input"], ro,
        [&](PreferencePair&& p) {
          auto t = TokenizePair(**tok, p, to, &ts[0]);
          if (t.ok() && t->has_value()) {
            tokens += (*t)->chosen.size() + (*t)->rejected.size();
          }
        },
        &ds);
  } else {
    std::vector<PreferencePair> pairs;
    st = ReadDataset(
        a["input"], ro, [&](PreferencePair&& p) { pairs.push_back(std::move(p)); }, &ds);
    std::vector<std::thread> pool;
    for (int w = 0; w < threads; ++w) {
      pool.emplace_back([&, w] {
        int64_t local = 0;
        for (size_t i = w; i < pairs.size(); i += threads) {
          auto t = TokenizePair(**tok, pairs[i], to, &ts[w]);
          if (t.ok() && t->has_value()) local += (*t)->chosen.size() + (*t)->rejected.size();
        }
        tokens += local;
      });
    }
    for (auto& t : pool) t.join();
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!st.ok()) {
    std::fprintf(stderr, "%s\n", st.ToString().c_str());
    return 1;
  }
  int64_t pairs = 0;
  for (const auto& t : ts) pairs += t.pairs;
  std::printf(
      "{\"impl\": \"rmgen\", \"threads\": %d, \"pairs\": %lld, \"tokens\": %lld, "
      "\"seconds\": %.3f, \"pairs_per_s\": %.1f}\n",
      threads, (long long)pairs, (long long)tokens.load(), s, pairs / s);
  return 0;
}
