#include "worker/data/synth.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>
#include <vector>

#include "common/file.h"
#include "worker/data/dataset.h"
#include "worker/data/synth_util.h"
#include "worker/data/tokenizer.h"

namespace rmgen {
namespace {

using synth::Fill;
using synth::Rng;

namespace fs = std::filesystem;

const std::vector<std::vector<std::string>> kTopics = {
    {"cat", "dog", "horse", "sheep", "goat", "mouse", "tiger", "zebra", "camel", "otter"},
    {"apple", "pear", "plum", "mango", "lemon", "cherry", "grape", "melon", "peach", "lime"},
    {"red", "blue", "green", "yellow", "purple", "orange", "pink", "brown", "black", "white"},
    {"hammer", "saw", "drill", "wrench", "chisel", "pliers", "ruler", "shovel", "rake", "axe"},
    {"rain", "snow", "wind", "storm", "fog", "hail", "sun", "cloud", "thunder", "frost"},
    {"piano", "violin", "drum", "flute", "guitar", "cello", "harp", "trumpet", "banjo", "organ"},
    {"soccer", "tennis", "golf", "hockey", "rugby", "boxing", "rowing", "cycling", "skiing",
     "diving"},
    {"planet", "comet", "star", "moon", "orbit", "galaxy", "nebula", "rocket", "meteor",
     "asteroid"},
};

const std::vector<std::string> kIdPrompts = {"Tell me about the {0} and the {1}.",
                                             "What do you think of the {0}?",
                                             "Describe a {0} please.",
                                             "I like the {0} and the {1}. Say more.",
                                             "Can you talk about {0}, {1} and {2}?",
                                             "My friend asked me about the {1}. Any ideas?"};
const std::vector<std::string> kShiftPrompts = {
    "QUESTION: REGARDING {0}, {1}, {2} AND ALSO {3}, WHAT COMES NEXT? ANSWER BRIEFLY.",
    "QUESTION: CONSIDER {2}; THEN {3}; THEN {0} AND {1}. WHAT FOLLOWS?"};
const std::vector<std::string> kIdResponses = {"The {0} is like the {1} and the {2}.",
                                               "{0}, {1} and {2} come to mind.",
                                               "Think of the {0} or the {1}."};
const std::vector<std::string> kShiftResponses = {
    "Here is a longer reply: first {0}, then {1}, also {2}, and finally {3}. Hope this helps!",
    "Sure thing. A list for you: - {0} - {1} - {2} - {3}. That is all I have."};

std::vector<std::string> LetterRuns(const std::string& text);

// Neutral words (no topic's) for the length profile's filler.
const std::vector<std::string> kFiller = {
    "well",  "so",    "note",    "that",  "this",     "is",      "about",   "general",
    "idea",  "here",  "we",      "also",  "then",     "some",    "more",    "detail",
    "and",   "it",    "with",    "for",   "a",        "the",     "point",   "which",
    "means", "often", "usually", "might", "consider", "context", "example", "case",
    "part",  "first", "second",  "next",  "overall",  "simply",  "really",  "quite"};

// About `words` filler words in sentences of 6 to 13 words.
std::string Filler(Rng& rng, int64_t words) {
  std::string out;
  while (words > 0) {
    const int64_t n = std::min<int64_t>(words, 6 + static_cast<int64_t>(rng.Below(8)));
    for (int64_t i = 0; i < n; ++i) {
      std::string w = rng.Pick(kFiller);
      if (i == 0) w[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(w[0])));
      out += (i == 0 ? "" : " ") + w;
    }
    out += ". ";
    words -= n;
  }
  if (!out.empty()) out.pop_back();
  return out;
}

int64_t WordCount(const std::string& text) { return static_cast<int64_t>(LetterRuns(text).size()); }

// The profile's target length in tokens: log-normal, clamped.
int64_t DrawLength(Rng& rng, double median, double sigma) {
  return std::clamp<int64_t>(std::llround(rng.LogNormal(median, sigma)), 8, 1500);
}

// Lower-case runs of letters.
std::vector<std::string> LetterRuns(const std::string& text) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : text) {
    if (std::isalpha(static_cast<unsigned char>(c))) {
      cur += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    } else if (!cur.empty()) {
      out.push_back(std::move(cur));
      cur.clear();
    }
  }
  if (!cur.empty()) out.push_back(std::move(cur));
  return out;
}

// The topic of a word, or -1.
int TopicOf(const std::string& word) {
  for (size_t t = 0; t < kTopics.size(); ++t) {
    for (const auto& w : kTopics[t]) {
      if (w == word) return static_cast<int>(t);
    }
  }
  return -1;
}

std::vector<std::string> Words(Rng& rng, size_t topic, size_t n) {
  std::vector<std::string> w;
  for (size_t i = 0; i < n; ++i) w.push_back(rng.Pick(kTopics[topic]));
  return w;
}

size_t OtherTopic(Rng& rng, size_t topic) {
  size_t t = rng.Below(kTopics.size() - 1);
  return t >= topic ? t + 1 : t;
}

// The length profile applied to a pair made short: context before the prompt's question,
// elaboration after each response's topic words. Filler words count about one token each
// (plus a period a sentence), so the targets are met approximately.
void Lengthen(Rng& rng, SynthLengths lengths, PreferencePair* p) {
  if (lengths == SynthLengths::kShort) return;
  const int64_t prompt = DrawLength(rng, 90, 0.9);
  const int64_t chosen = DrawLength(rng, 250, 0.7), rejected = DrawLength(rng, 250, 0.7);
  auto words = [](int64_t tokens, const std::string& text) {
    return std::max<int64_t>(0, tokens * 9 / 10 - WordCount(text) - 4);
  };
  std::string& q = p->prompt[0].content;
  if (const int64_t n = words(prompt, q); n > 0)
    q = "Some context first. " + Filler(rng, n) + " " + q;
  for (auto [m, target] :
       {std::pair{&p->chosen[0].content, chosen}, std::pair{&p->rejected[0].content, rejected}}) {
    if (const int64_t n = words(target, *m); n > 0) *m += " " + Filler(rng, n);
  }
}

PreferencePair MakePair(Rng& rng, bool shift_prompt, bool shift_response) {
  const size_t topic = rng.Below(kTopics.size());
  std::vector<std::string> pw = Words(rng, topic, 4);
  if (shift_prompt) pw[3] = rng.Pick(kTopics[OtherTopic(rng, topic)]);  // a distractor
  const std::string prompt = Fill(rng.Pick(shift_prompt ? kShiftPrompts : kIdPrompts), pw);
  const std::string& rt = rng.Pick(shift_response ? kShiftResponses : kIdResponses);
  const size_t other = OtherTopic(rng, topic);
  PreferencePair p;
  p.source = "synth";
  p.prompt = {{"user", prompt}};
  p.chosen = {{"assistant", Fill(rt, Words(rng, topic, 4))}};
  p.rejected = {{"assistant", Fill(rt, Words(rng, other, 4))}};
  return p;
}

Status WriteJsonl(const std::string& path, std::vector<PreferencePair>& pairs,
                  const std::string& split) {
  std::string out;
  for (size_t i = 0; i < pairs.size(); ++i) {
    pairs[i].split = split;
    pairs[i].id = split + "-" + std::to_string(i);
    out += PairToJson(pairs[i]).dump() + "\n";
  }
  return WriteFileAtomic(path, out);
}

}  // namespace

Status WriteSyntheticSuite(const std::string& out_dir, const SynthOptions& o) {
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) return InternalError(out_dir + ": cannot create (" + ec.message() + ")");
  Rng rng(o.seed);
  // ID pool: split by prompt hash, no prompt on both sides, no duplicate prompt on a side
  // more than a few times (the template space is small on purpose).
  std::vector<PreferencePair> train, validation, pshift, rshift;
  int64_t guard = 0;
  while ((int64_t(train.size()) < o.train || int64_t(validation.size()) < o.validation) &&
         ++guard < 100 * (o.train + o.validation)) {
    PreferencePair p = MakePair(rng, false, false);
    Lengthen(rng, o.lengths, &p);
    if (HashSplit(p.prompt, 0.2) == "validation") {
      if (int64_t(validation.size()) < o.validation) {
        validation.push_back(std::move(p));
      }
    } else if (int64_t(train.size()) < o.train) {
      train.push_back(std::move(p));
    }
  }
  for (auto [set, shift_prompt] : {std::pair{&pshift, true}, std::pair{&rshift, false}}) {
    for (int64_t i = 0; i < o.shifted; ++i) {
      set->push_back(MakePair(rng, shift_prompt, !shift_prompt));
      Lengthen(rng, o.lengths, &set->back());
    }
  }
  const fs::path dir(out_dir);
  RETURN_IF_ERROR(WriteJsonl((dir / "train.jsonl").string(), train, "train"));
  RETURN_IF_ERROR(WriteJsonl((dir / "validation.jsonl").string(), validation, "validation"));
  RETURN_IF_ERROR(WriteJsonl((dir / "prompt_shift.jsonl").string(), pshift, "test"));
  RETURN_IF_ERROR(WriteJsonl((dir / "response_shift.jsonl").string(), rshift, "test"));

  // Tokenizer corpus: every text of the suite, rendered with the zephyr markers.
  std::string corpus;
  for (const auto* set : {&train, &validation, &pshift, &rshift}) {
    for (const auto& p : *set) {
      corpus += "<|user|>\n" + p.prompt[0].content + "\n<|assistant|>\n" + p.chosen[0].content +
                "\n" + p.rejected[0].content + "\n";
    }
  }
  RETURN_IF_ERROR(
      synth::TrainSuiteTokenizer(dir, corpus, o.vocab_size, "<|user|>,<|assistant|>,<|system|>"));

  RETURN_IF_ERROR(WriteFileAtomic(
      (dir / "datasets.yaml").string(),
      "# The synthetic shift suite's catalog (rmgen data synth).\n"
      "root: .\n"
      "datasets:\n"
      "  synth-id:\n    adapter: pairs\n    splits:\n      train: train.jsonl\n"
      "      validation: validation.jsonl\n"
      "  synth-prompt-shift:\n    adapter: pairs\n    splits:\n      test: prompt_shift.jsonl\n"
      "  synth-response-shift:\n    adapter: pairs\n    splits:\n"
      "      test: response_shift.jsonl\n"));
  nlohmann::json meta = {{"seed", o.seed},
                         {"train", train.size()},
                         {"validation", validation.size()},
                         {"prompt_shift", pshift.size()},
                         {"response_shift", rshift.size()},
                         {"lengths", o.lengths == SynthLengths::kShort ? "short" : "ultrafeedback"},
                         {"template", "zephyr"},
                         {"tokenizer", "tokenizer.model"},
                         {"model", "model.json"}};
  // A tiny Llama sized to the tokenizer (configs/models/tiny-synth.json at the default
  // vocabulary), so a study can use the suite without any other file.
  const nlohmann::json model = synth::TinyLlamaConfig(o.vocab_size);
  RETURN_IF_ERROR(WriteFileAtomic((dir / "model.json").string(), model.dump(2) + "\n"));
  return WriteFileAtomic((dir / "meta.json").string(), meta.dump(2) + "\n");
}

StatusOr<SynthLengths> ParseSynthLengths(const std::string& name) {
  if (name == "short") return SynthLengths::kShort;
  if (name == "ultrafeedback") return SynthLengths::kUltraFeedback;
  return InvalidArgumentError("--lengths: expected short or ultrafeedback, got '" + name + "'");
}

double SynthOracleScore(const std::string& prompt, const std::string& response) {
  std::vector<int> votes(kTopics.size(), 0);
  for (const auto& w : LetterRuns(prompt)) {
    const int t = TopicOf(w);
    if (t >= 0) ++votes[t];
  }
  const auto best = std::max_element(votes.begin(), votes.end());
  if (*best == 0) return 0.0;
  const int topic = static_cast<int>(best - votes.begin());
  double score = 0;
  for (const auto& w : LetterRuns(response)) {
    const int t = TopicOf(w);
    if (t >= 0) score += t == topic ? 1.0 : -1.0;
  }
  return score;
}

}  // namespace rmgen
