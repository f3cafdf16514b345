// A tiny model configuration of each family, for forward-pass and objective tests.
#pragma once

#include <cstdint>

#include "worker/model/config.h"

namespace rmgen::testing {

// 2 layers, hidden 16, 4 heads (grouped-query: 2 kv heads, 1 for Gemma), the family's
// default activation and embedding tying; `window` > 0 sets a sliding window.
inline ModelConfig TinyConfig(Family f, int64_t window = 0, int64_t vocab = 40) {
  ModelConfig c;
  c.family = f;
  c.vocab_size = vocab;
  c.hidden_size = 16;
  c.intermediate_size = 24;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = f == Family::kGemma ? 1 : 2;
  c.head_dim = f == Family::kGemma ? 8 : 4;
  c.tie_word_embeddings = TraitsOf(f).default_tied_embeddings;
  c.activation = TraitsOf(f).default_activation;
  c.sliding_window = window;
  return c;
}

// A small model of each family with head_dim 64 (what the flash and fused CUDA kernels take):
// 2 layers, hidden 256, 4 heads (2 kv heads, 1 for Gemma), vocabulary 300; Mistral with a
// sliding window of 5.
inline ModelConfig GpuConfig(Family f) {
  ModelConfig c = TinyConfig(f, f == Family::kMistral ? 5 : 0, /*vocab=*/300);
  c.hidden_size = 256;
  c.intermediate_size = 512;
  c.head_dim = 64;
  return c;
}

}  // namespace rmgen::testing
