// The synthetic shift suite: a small preference task a tiny model learns on CPU in
// minutes, with the two controlled shifts of the study's Setting II.
//
// Design. Eight topics of ten words each (animals, fruits, colours, tools, weather, music,
// sports, space). A prompt mentions words of one topic; the chosen response talks about
// words of the same topic, the rejected response about words of another topic, through
// the same response template, so the only thing that separates them is whether the
// response stays on the prompt's topic. Learning that needs attention from response
// tokens back to prompt tokens, which a 2-layer model picks up quickly.
//
//   train, validation  ID: prompt templates P_id, response templates R_id. The two share
//                      no prompt (split by prompt hash).
//   prompt_shift       prompt templates P_shift (upper-case "QUESTION:" frame, three topic
//                      words plus one distractor word of another topic), responses R_id:
//                      the prompts move, the responses do not (Setting II(b)).
//   response_shift     prompts P_id, response templates R_shift (longer lists, other
//                      framing words): the responses move, the prompts do not (II(a)).
//
// Output (the `pairs` format with message lists): train.jsonl, validation.jsonl,
// prompt_shift.jsonl, response_shift.jsonl; tokenizer.model (SentencePiece BPE trained on
// the suite's text with the zephyr template's markers; <unk> 0, <s> 1, </s> 2, <pad> 3);
// datasets.yaml (a catalog: synth-id with train/validation, synth-prompt-shift,
// synth-response-shift); model.json (a tiny Llama config for the tokenizer's vocabulary);
// meta.json (seed, counts). The same seed gives the same bytes.
#pragma once

#include <cstdint>
#include <string>

#include "common/status.h"

namespace rmgen {

struct SynthOptions {
  uint64_t seed = 0;
  int64_t train = 2000;
  int64_t validation = 400;
  int64_t shifted = 400;  // each shifted set
  int vocab_size = 600;   // 256 of them byte-fallback pieces
};

Status WriteSyntheticSuite(const std::string& out_dir, const SynthOptions& options);

}  // namespace rmgen
