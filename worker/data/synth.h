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
#include <vector>

#include "common/status.h"

namespace rmgen {

// Lengths of prompts and responses.
//   kShort          the suite as designed: one-sentence prompts and responses (about 10 to 30
//                   tokens), which a tiny model learns in minutes on CPU.
//   kUltraFeedback  shaped like the study's main source (UltraFeedback binarized): every
//                   prompt gets neutral context sentences before its question and every
//                   response neutral elaboration after its topic words, to lengths drawn
//                   log-normally, median 90 prompt tokens (sigma 0.9, mean about 135) and 250
//                   response tokens (sigma 0.7, mean about 320), chosen and rejected drawn apart;
//                   clamped to [8, 1500]. Training at max_prompt_length 128 / max_length 512
//                   then truncates about a third of the prompts (keeping their question at the
//                   end) and about half of the pairs' responses, as on the real data. The
//                   filler uses no topic word, so the preference rule (and SynthOracleScore)
//                   is unchanged; lengths are in the suite tokenizer's tokens, approximately
//                   (one filler word is about one token; `rmgen data stats` reports the real
//                   ones). For speed and memory benchmarks at the study's shapes.
// The UltraFeedback figures are an approximation from public statistics: the dataset card's
// train_prefs split (61,135 rows, 405.7 MB, each row holding the prompt four times and a
// response three times) gives about 6,600 bytes a row, which these means match at about 4.4
// bytes a token.
enum class SynthLengths { kShort, kUltraFeedback };

struct SynthOptions {
  uint64_t seed = 0;
  int64_t train = 2000;
  int64_t validation = 400;
  int64_t shifted = 400;  // each shifted set
  int vocab_size = 600;   // 256 of them byte-fallback pieces
  SynthLengths lengths = SynthLengths::kShort;
};

// "short" | "ultrafeedback" -> the profile; anything else: INVALID_ARGUMENT naming both.
StatusOr<SynthLengths> ParseSynthLengths(const std::string& name);

Status WriteSyntheticSuite(const std::string& out_dir, const SynthOptions& options);

// The suite's own preference rule as a score, for judging generated responses exactly (the
// oracle judge of iterative DPO): the prompt's topic is the one most of its topic words
// belong to (the first such topic on a tie; none: every score is 0); a response scores +1
// for every word of that topic and -1 for every word of another topic (words are runs of
// letters, compared in lower case). A chosen response of the suite always outscores its
// rejected one.
double SynthOracleScore(const std::string& prompt, const std::string& response);

// The paper-mini profile (`rmgen data synth --profile paper-mini`, paper_mini.cc): a
// miniature of the study's data, for a CPU end-to-end run of settings I(a), I(b), I(c),
// II(b) and RewardBench. Small files in the REAL schemas the adapters read (REFERENCE
// section 3), at the paths configs/datasets.yaml names under its root:
//
//   ultrafeedback_binarized/{train,test}_prefs.jsonl.gz   binarized rows; a few ties
//   chatbot_arena_conversations/train.jsonl.gz            arena rows (one file, the catalog
//       splits it by prompt hash); "tie" / "tie (bothbad)" rows, multi-turn rows, rows
//       whose earlier turns differ (divergent_history), rows with two user turns in a row
//       (the adapter keeps them; the gemma template cannot render them)
//   hh-rlhf/{train,test}.jsonl.gz                         "\n\nHuman: ..." transcripts
//   nectar/nectar.jsonl.gz                                7 ranked answers per prompt
//   webgpt_comparisons/comparisons.jsonl.gz               score_1 = -score_0; a few 0 ties
//   summarize_from_feedback/comparisons.jsonl.gz          Reddit TL;DR rows (train, valid1,
//       a few in valid2) and CNN / Daily Mail rows (valid2)
//   reward-bench/filtered.jsonl.gz                        every subset of the four sections
//   datasets.yaml (root: ., the entry names, adapters, subsets and splits of
//   configs/datasets.yaml); tokenizer.model (SentencePiece BPE trained, as the shift
//   suite's, on every prompt and response the adapters read, with the zephyr markers and
//   gemma's <start_of_turn>/<end_of_turn> as user-defined pieces; the trainer's paths in it
//   replaced by fixed names); model.json (the shift suite's tiny Llama, sized to the trained
//   vocabulary); meta.json (counts per file and, read back through the catalog, pairs and
//   drops per dataset reference).
//
// The preference rule is the shift suite's: the chosen response stays on the prompt's topic,
// the rejected one drifts to another topic (Nectar: rank 1 on topic, rank 2 half on topic,
// the rest off; RewardBench Chat Hard: the rejected one half on topic). Each source has its
// own prompt and response phrasing (HH and Nectar their transcript framing, summarize its
// post / article framing), so training on one source and testing on another is a mild
// mixture shift, and Reddit posts against CNN / Daily Mail articles a prompt shift. Every
// prompt names four topic words (Reddit posts and articles: two short sentences of them) in
// short phrasing, and responses name four: with 2-3 topic words in long sentences a tiny model
// from a random init stays at chance. An EXRM job (random init, zephyr, 3 epochs, batch 16,
// lr 5e-4) on 1000 rows of ultra, arena, hh or sum-reddit reaches 0.9+ in-distribution.
//
// Pair counts (R = rows, T = test_rows, F = max(2, R/100), A = max(10, R/3)): R per
// training split of ultra, arena, hh, sum-reddit; A for nectar:train and webgpt:train; T
// for every test split; RewardBench 23 subsets x ceil(T/23). The same options give the
// same bytes (gzip without a timestamp).
struct PaperMiniOptions {
  uint64_t seed = 0;
  int64_t rows = 600;     // training pairs per training source
  int64_t test_rows = 0;  // pairs per test split; 0: max(10, rows * 3 / 10)
  int vocab_size = 1000;  // requested; model.json takes the trained tokenizer's size
};

// The counts the options give (see above); test_rows resolved.
struct PaperMiniCounts {
  int64_t rows, test, few, few_test, aux, rewardbench_per_subset;
  int64_t arena_multi_train, arena_multi_test, arena_double_train, arena_double_test;
  int64_t hh_multi_train, hh_multi_test, nectar_multi_train, nectar_multi_test;
};
PaperMiniCounts PaperMiniCountsFor(const PaperMiniOptions& options);
// The suite's topics (ten words each, no word in two topics): what the rule is about.
const std::vector<std::vector<std::string>>& PaperMiniTopics();

Status WritePaperMiniSuite(const std::string& out_dir, const PaperMiniOptions& options);

}  // namespace rmgen
