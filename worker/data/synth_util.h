// What the generated suites (synth.cc, paper_mini.cc) share: a seeded random stream,
// "{0}".."{9}" template filling, and the tiny Llama config sized to a trained vocabulary.
#pragma once

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "common/file.h"
#include "common/status.h"
#include "worker/data/tokenizer.h"

namespace rmgen::synth {

class Rng {
 public:
  explicit Rng(uint64_t seed) : g_(seed) {}
  size_t Below(size_t n) { return static_cast<size_t>(g_() % n); }
  template <typename T>
  const T& Pick(const std::vector<T>& v) {
    return v[Below(v.size())];
  }
  std::string Hex(size_t digits) {
    static const char* kHex = "0123456789abcdef";
    std::string s;
    for (size_t i = 0; i < digits; ++i) s += kHex[Below(16)];
    return s;
  }
  // Uniform in (0, 1), from 53 random bits (the same values on every platform).
  double Uniform() { return (static_cast<double>(g_() >> 11) + 0.5) * 0x1.0p-53; }
  // exp(N(log(median), sigma^2)) by Box-Muller, platform-independent like Uniform().
  double LogNormal(double median, double sigma) {
    const double u = Uniform(), v = Uniform();
    const double z = std::sqrt(-2.0 * std::log(u)) * std::cos(6.283185307179586 * v);
    return median * std::exp(sigma * z);
  }
  template <typename T>
  void Shuffle(std::vector<T>* v) {
    for (size_t i = v->size(); i > 1; --i) std::swap((*v)[i - 1], (*v)[Below(i)]);
  }

 private:
  std::mt19937_64 g_;
};

// `tmpl` with "{k}" replaced by words[k].
inline std::string Fill(const std::string& tmpl, const std::vector<std::string>& words) {
  std::string out;
  for (size_t i = 0; i < tmpl.size(); ++i) {
    if (tmpl[i] == '{' && i + 2 < tmpl.size() && tmpl[i + 2] == '}' && tmpl[i + 1] >= '0' &&
        tmpl[i + 1] <= '9') {
      out += words[static_cast<size_t>(tmpl[i + 1] - '0')];
      i += 2;
    } else {
      out += tmpl[i];
    }
  }
  return out;
}

// The suites' tiny Llama (configs/models/tiny-synth.json at the shift suite's default
// vocabulary), sized to the tokenizer.
inline nlohmann::json TinyLlamaConfig(int64_t vocab_size) {
  return {{"model_type", "llama"},
          {"architectures", {"LlamaForCausalLM"}},
          {"vocab_size", vocab_size},
          {"hidden_size", 64},
          {"intermediate_size", 176},
          {"num_hidden_layers", 2},
          {"num_attention_heads", 4},
          {"num_key_value_heads", 2},
          {"rms_norm_eps", 1e-5},
          {"rope_theta", 10000.0},
          {"max_position_embeddings", 512},
          {"hidden_act", "silu"},
          {"tie_word_embeddings", false},
          {"bos_token_id", 1},
          {"eos_token_id", 2},
          {"pad_token_id", 3}};
}

// A BPE SentencePiece model trained on `corpus` into DIR/tokenizer.model (<unk> 0, <s> 1,
// </s> 2, <pad> 3, byte fallback, `symbols` as user-defined pieces); the corpus and the
// .vocab file are removed.
inline Status TrainSuiteTokenizer(const std::filesystem::path& dir, const std::string& corpus,
                                  int vocab_size, const std::string& symbols) {
  const std::string corpus_path = (dir / "corpus.txt.tmp").string();
  RETURN_IF_ERROR(WriteFileAtomic(corpus_path, corpus));
  Status st = Tokenizer::Train("--input=" + corpus_path +
                               " --model_prefix=" + (dir / "tokenizer").string() +
                               " --vocab_size=" + std::to_string(vocab_size) +
                               " --model_type=bpe --hard_vocab_limit=false --character_coverage=1.0"
                               " --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=3 --byte_fallback=true"
                               " --user_defined_symbols=" +
                               symbols +
                               " --split_digits=true"
                               " --num_threads=1 --minloglevel=2");
  std::error_code ec;
  std::filesystem::remove(corpus_path, ec);
  std::filesystem::remove(dir / "tokenizer.vocab", ec);
  return st;
}

}  // namespace rmgen::synth
