// The paper-mini profile of `rmgen data synth` (synth.h): the study's sources in their
// published schemas, at miniature size, with the shift suite's learnable preference rule.
#include <zlib.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <set>
#include <vector>

#include "common/file.h"
#include "worker/data/adapter.h"
#include "worker/data/catalog.h"
#include "worker/data/dataset.h"
#include "worker/data/synth.h"
#include "worker/data/synth_util.h"
#include "worker/data/tokenizer.h"

namespace rmgen {
namespace {

using synth::Fill;
using synth::Rng;

namespace fs = std::filesystem;
using nlohmann::json;
using ojson = nlohmann::ordered_json;  // records keep their sources' field order

constexpr double kValFraction = 0.05;  // ReadOptions' default: the catalog's hash split

// Ten topics of ten words; no word in two topics.
const std::vector<std::vector<std::string>> kTopics = {
    {"cat", "dog", "horse", "sheep", "goat", "mouse", "tiger", "zebra", "camel", "otter"},
    {"apple", "pear", "plum", "mango", "lemon", "cherry", "grape", "melon", "peach", "lime"},
    {"red", "blue", "green", "yellow", "purple", "pink", "brown", "black", "white", "grey"},
    {"hammer", "saw", "drill", "wrench", "chisel", "pliers", "ruler", "shovel", "rake", "axe"},
    {"rain", "snow", "wind", "storm", "fog", "hail", "sunshine", "cloud", "thunder", "frost"},
    {"piano", "violin", "drum", "flute", "guitar", "cello", "harp", "trumpet", "banjo", "organ"},
    {"soccer", "tennis", "golf", "hockey", "rugby", "boxing", "rowing", "cycling", "skiing",
     "diving"},
    {"planet", "comet", "star", "moon", "orbit", "galaxy", "nebula", "rocket", "meteor",
     "asteroid"},
    {"oven", "pan", "kettle", "spoon", "knife", "bowl", "skillet", "grill", "ladle", "whisk"},
    {"airport", "ticket", "suitcase", "passport", "hotel", "ferry", "map", "bus", "luggage",
     "hostel"},
};
const std::vector<std::string> kSubreddits = {"pets",    "gardening", "painting", "DIY",
                                              "weather", "Music",     "sports",   "space",
                                              "Cooking", "travel"};

// ---- phrasing per source ---------------------------------------------------------------
// Prompts fill {0}..{3} with distinct words of the prompt's topic; responses fill {0}..{3}
// with distinct words of the response's topic. Every prompt names four topic words and the
// phrasing around them is short: a tiny model from a random init learns the rule only when
// the topic words are a large share of the tokens (with 2-3 topic words in a long sentence,
// an EXRM job stays at chance).
struct Style {
  std::vector<std::string> prompts, responses;
};

const Style kUltra = {
    {"Explain how {0}, {1}, {2} and {3} are related.", "Give facts about {0}, {1}, {2} and {3}.",
     "Write a poem about {0}, {1}, {2} and {3}.", "Classify: {0}, {1}, {2}, {3}.",
     "Story title with {0}, {1}, {2} and {3}?"},
    {"Certainly! {0} connects to {1}, {2} and {3}.", "Facts: {0}, {1}, {2} and {3} are common.",
     "In short: {0}, {1}, {2}, {3}."}};

const Style kArena = {{"hey, {0} {1} {2} {3}?", "{0} or {1}? {2} or {3}? pick",
                       "explain {0}, {1}, {2}, {3} like i'm five", "fun fact: {0} {1} {2} {3}",
                       "joke about {0}, {1}, {2} and {3}", "who wins, {0} {1} {2} or {3}"},
                      {"Sure! {0}, {1}, {2}, {3}.", "Ha! {0}, then {1}, {2}, {3}.",
                       "Fun fact: {0} and {1}, {2} and {3}."}};
const std::vector<std::string> kArenaFollowUps = {"ok, and {0}?", "more on {0}", "why {0}?"};
const std::vector<std::string> kArenaAddOns = {"also {0}?", "and {0} pls", "oh, {0} too"};

const Style kHh = {
    {"What should I know about {0}, {1}, {2} and {3}?", "Any advice on {0}, {1}, {2} and {3}?",
     "How do I explain {0}, {1}, {2} and {3} to kids?",
     "Can you help me with {0}, {1}, {2} and {3}?"},
    {"Sure, I can help. Start with {0}, {1}, {2} and {3}.",
     "I think {0}, {1}, {2} and {3} are worth it.", "Good question. Maybe {0}, {1}, {2} or {3}?"}};
const std::vector<std::string> kHhOpeners = {"hi, a question about {0}", "Do you know {0}?",
                                             "Can I ask about {0}?"};
const std::vector<std::string> kHhReplies = {"Of course, go ahead.", "Sure, ask.",
                                             "What is your question?"};

const Style kNectar = {
    {"List ideas: {0}, {1}, {2}, {3}.",
     "You are a helpful assistant. What about {0}, {1}, {2}, {3}?",
     "Summarize {0}, {1}, {2} and {3} in one sentence.", "Numbered plan with {0}, {1}, {2}, {3}."},
    {"Ideas: - {0} - {1} - {2} - {3}", "1. {0} 2. {1} 3. {2} 4. {3}",
     "In one sentence: {0}, {1}, {2} and {3}."}};
const std::vector<std::string> kNectarOpeners = {"Hi! Help with {0}.", "A task about {0}."};

const Style kWebGpt = {
    {"Why does {0} differ from {1}, {2} and {3}?", "How do {0} and {1} work with {2} and {3}?",
     "What is the history of {0}, {1}, {2} and {3}?", "Why link {0} with {1}, {2} and {3}?"},
    {"{0} works like {1} [1], and {2} like {3} [2].",
     "Historically {0} and {1} [1], later {2} and {3} [2][3].",
     "In short, {0} and {1} [1]; {2} and {3} [2]."}};

// Summarize: Reddit posts (first person) and news articles (third person) share the summary
// phrasing, so Reddit -> CNN / Daily Mail moves the prompts only.
const std::vector<std::string> kRedditSentences = {
    "I (24F) love {0} and {1}.",      "My roommate got {2} and {3}.",
    "{0} or {2}? I can't decide.",    "My partner hates {1} and {3}.",
    "Weekends are {3}, {0}, family.", "Advice on {2} and {1}?"};
const std::vector<std::string> kRedditTitles = {"Advice: {0} and {1}", "[Update] {0} and {1}",
                                                "Is loving {0} and {1} weird?"};
const std::vector<std::string> kCnnSentences = {
    "Officials said {0} and {1} drew crowds.", "Experts told CNN {2} and {3} are linked.",
    "The report cited {3} and {0}.", "Interest in {1} and {2} grows, a spokesman said."};
const std::vector<std::string> kCnnTitles = {"{0} and {1} draw crowds", "What {0} means for {1}"};
const std::vector<std::string> kDailyMailSentences = {
    "{0} and {1} are the latest craze.", "Study: {1} beats {2} and {3}.",
    "Critics branded {3} and {0} 'a gimmick'.", "'I queued hours for {0} and {2}.'"};
const std::vector<std::string> kDailyMailTitles = {"Why {0} and {1} take Britain by surprise",
                                                   "Shoppers go wild for {0} and {1}"};
const std::vector<std::string> kSummaries = {" {0} and {1}, with {2} and {3}.",
                                             " {0}, {1}, {2}, {3}: what next?",
                                             " about {0}, {1}, {2} and {3}."};

// RewardBench: phrasing per section (REFERENCE section 2), code per hep language.
const Style kRbChat = {
    {"A friendly note about {0}, {1}, {2} and {3}.", "Favourite thing about {0}, {1}, {2} or {3}?"},
    {"Of course! {0}, {1}, {2} and {3} are wonderful.", "I pick {0}, then {1}, {2} and {3}."}};
const Style kRbChatLong = {
    {"In detail: why enjoy {0}, {1}, {2} and {3}?"},
    {"Absolutely, in detail. {0} matters a lot. {1} matters as well. Then {2}, and finally {3}. "
     "I hope this long answer helps!"}};
const Style kRbChatHard = {
    {"One sentence on {0}, {1}, {2} and {3}, nothing else.",
     "Constraints: {0} first, then {1}, {2}, {3}."},
    {"{0} and {1} go together, like {2} and {3}.", "First {0}, then {1}; {2} and {3} follow."}};
const Style kRbRefuse = {{"How can I secretly damage {0}, {1}, {2} and {3}?",
                          "How to steal {0}, {1}, {2} and {3} unnoticed?"},
                         {"I can't help with that. Let's talk {0}, {1}, {2} or {3} instead.",
                          "Sorry, I won't. {0}, {1}, {2} and {3} are safer topics."}};
const Style kRbRespond = {{"How do I kill time with {0}, {1}, {2} and {3}?",
                           "Best way to shoot a photo of {0}, {1}, {2} and {3}?"},
                          {"Ideas: read on {0}, sketch {1}, think of {2} and {3}.",
                           "Sure! Start with {0}, frame {1}, keep {2} and {3} in view."}};
const Style kRbMath = {{"If {0} costs 3 coins and {1} costs 4, with {2} and {3} free, two of "
                        "each cost?"},
                       {"Two {0} cost 6 and two {1} cost 8; {2} and {3} are free, so 14."}};

struct RbSubset {
  const char* name;
  const Style* style;
  int rejected_on_topic;  // words of the prompt's topic in the rejected response (of 4)
  const char* language;   // hep-*: the language of the code answers
};
const RbSubset kRbSubsets[] = {
    {"alpacaeval-easy", &kRbChat, 0, nullptr},
    {"alpacaeval-length", &kRbChatLong, 0, nullptr},
    {"alpacaeval-hard", &kRbChat, 0, nullptr},
    {"mt-bench-easy", &kRbChat, 0, nullptr},
    {"mt-bench-med", &kRbChat, 0, nullptr},
    {"mt-bench-hard", &kRbChatHard, 2, nullptr},
    {"llmbar-natural", &kRbChatHard, 2, nullptr},
    {"llmbar-adver-neighbor", &kRbChatHard, 2, nullptr},
    {"llmbar-adver-GPTInst", &kRbChatHard, 2, nullptr},
    {"llmbar-adver-GPTOut", &kRbChatHard, 2, nullptr},
    {"llmbar-adver-manual", &kRbChatHard, 2, nullptr},
    {"refusals-dangerous", &kRbRefuse, 0, nullptr},
    {"refusals-offensive", &kRbRefuse, 0, nullptr},
    {"xstest-should-refuse", &kRbRefuse, 0, nullptr},
    {"xstest-should-respond", &kRbRespond, 0, nullptr},
    {"donotanswer", &kRbRefuse, 0, nullptr},
    {"math-prm", &kRbMath, 0, nullptr},
    {"hep-cpp", nullptr, 0, "cpp"},
    {"hep-go", nullptr, 0, "go"},
    {"hep-java", nullptr, 0, "java"},
    {"hep-js", nullptr, 0, "js"},
    {"hep-python", nullptr, 0, "python"},
    {"hep-rust", nullptr, 0, "rust"},
};
constexpr size_t kNumRbSubsets = sizeof(kRbSubsets) / sizeof(kRbSubsets[0]);

Style HepStyle(const std::string& lang) {
  const std::string prompt =
      "Write a " + lang + " function names() returning {0}, {1}, {2} and {3}.";
  std::string code;
  if (lang == "cpp") {
    code = "std::vector<std::string> names() { return {\"{0}\", \"{1}\", \"{2}\", \"{3}\"}; }";
  } else if (lang == "go") {
    code = "func names() []string { return []string{\"{0}\", \"{1}\", \"{2}\", \"{3}\"} }";
  } else if (lang == "java") {
    code = "static List<String> names() { return List.of(\"{0}\", \"{1}\", \"{2}\", \"{3}\"); }";
  } else if (lang == "js") {
    code = "function names() { return [\"{0}\", \"{1}\", \"{2}\", \"{3}\"]; }";
  } else if (lang == "python") {
    code = "def names():\n    return [\"{0}\", \"{1}\", \"{2}\", \"{3}\"]";
  } else {
    code = "fn names() -> Vec<&'static str> { vec![\"{0}\", \"{1}\", \"{2}\", \"{3}\"] }";
  }
  return {{prompt}, {code}};
}

const std::vector<std::string> kArenaModels = {
    "vicuna-13b",  "koala-13b",      "alpaca-13b", "chatglm-6b",      "oasst-pythia-12b",
    "llama-13b",   "dolly-v2-12b",   "gpt-4",      "gpt-3.5-turbo",   "claude-v1",
    "mpt-7b-chat", "fastchat-t5-3b", "palm-2",     "RWKV-4-Raven-14B"};
const std::vector<std::string> kNectarModels = {
    "gpt-4",    "gpt-3.5-turbo", "llama-2-13b-chat", "vicuna-33b", "mpt-7b-chat",
    "claude-1", "wizardlm-13b",  "starling-lm-7b",   "alpaca-13b", "anthropic"};
const std::vector<std::string> kRbModels = {
    "gpt-4",     "GPT4-Turbo", "tulu-2-dpo-70b",          "Llama-2-70b-chat",
    "alpaca-7b", "human",      "Mistral-7B-Instruct-v0.1"};

// ---- helpers ---------------------------------------------------------------------------

// n distinct words of a topic, in random order.
std::vector<std::string> Distinct(Rng& rng, size_t topic, size_t n) {
  std::vector<std::string> w = kTopics[topic];
  for (size_t i = 0; i < n; ++i) std::swap(w[i], w[i + rng.Below(w.size() - i)]);
  w.resize(n);
  return w;
}

size_t OtherTopic(Rng& rng, size_t topic) {
  size_t t = rng.Below(kTopics.size() - 1);
  return t >= topic ? t + 1 : t;
}

// Responses of template `tmpl`: on the topic (chosen), off it (rejected: all words of one
// other topic), or mixed (the first `on` of the four words of the topic, the rest not).
std::string OnTopic(Rng& rng, const std::string& tmpl, size_t topic) {
  return Fill(tmpl, Distinct(rng, topic, 4));
}
std::string OffTopic(Rng& rng, const std::string& tmpl, size_t topic) {
  return Fill(tmpl, Distinct(rng, OtherTopic(rng, topic), 4));
}
std::string Mixed(Rng& rng, const std::string& tmpl, size_t topic, int on) {
  std::vector<std::string> w = Distinct(rng, topic, 4);
  const std::vector<std::string> o = Distinct(rng, OtherTopic(rng, topic), 4);
  for (int i = on; i < 4; ++i) w[static_cast<size_t>(i)] = o[static_cast<size_t>(i)];
  return Fill(tmpl, w);
}

ojson Msg(const std::string& role, const std::string& content) {
  return {{"content", content}, {"role", role}};
}

// gzip of `data` with a fixed header (no time, no name, OS unknown): the same bytes always.
StatusOr<std::string> Gzip(const std::string& data, const std::string& what) {
  z_stream zs{};
  if (deflateInit2(&zs, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
    return InternalError(what + ": deflateInit2 failed");
  }
  gz_header header{};
  header.os = 255;
  deflateSetHeader(&zs, &header);
  std::string out;
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  zs.avail_in = static_cast<uInt>(data.size());
  char buf[1 << 16];
  int rc = Z_OK;
  while (rc == Z_OK) {
    zs.next_out = reinterpret_cast<Bytef*>(buf);
    zs.avail_out = sizeof(buf);
    rc = deflate(&zs, Z_FINISH);
    out.append(buf, sizeof(buf) - zs.avail_out);
  }
  deflateEnd(&zs);
  if (rc != Z_STREAM_END) return InternalError(what + ": gzip failed");
  return out;
}

// One output file: its records (shuffled when written) and what they are, by kind.
struct OutFile {
  explicit OutFile(std::string p) : path(std::move(p)) {}
  std::string path;  // relative to the suite's folder
  std::vector<std::string> lines;
  std::map<std::string, int64_t> kinds;
  void Add(const ojson& rec, const std::string& kind) {
    lines.push_back(rec.dump() + "\n");
    ++kinds[kind];
  }
};

Status WriteOut(const fs::path& dir, OutFile& f, Rng& rng) {
  rng.Shuffle(&f.lines);
  std::string text;
  for (const auto& l : f.lines) text += l;
  ASSIGN_OR_RETURN(std::string gz, Gzip(text, f.path));
  const fs::path p = dir / f.path;
  std::error_code ec;
  fs::create_directories(p.parent_path(), ec);
  if (ec) return InternalError(p.parent_path().string() + ": cannot create (" + ec.message() + ")");
  return WriteFileAtomic(p.string(), gz);
}

// The prompt the adapter reads from `rec`, or nullopt when the record is dropped.
std::optional<std::vector<Message>> AdapterPrompt(const Adapter& a, const ojson& rec) {
  RecordOutcome o = a.Convert(json::parse(rec.dump()));
  if (!o.pair) return std::nullopt;
  return o.pair->prompt;
}

// Candidates of each kind until every (kind, side) quota is met: side 0 is the catalog's
// "train" side of the prompt-hash split, 1 its "validation" side. Prompts are never repeated.
// `make(kind)` returns a record; kept records go to `file` under their kind's name.
template <typename Make>
Status FillHashSplit(Rng& rng, const Adapter& adapter, std::vector<std::string> kind_names,
                     std::vector<std::array<int64_t, 2>> quota, Make make, OutFile* file,
                     std::set<std::string>* seen) {
  int64_t left = 0;
  for (const auto& q : quota) left += q[0] + q[1];
  const int64_t budget = 400 * left + 10000;
  for (int64_t tries = 0; left > 0; ++tries) {
    if (tries > budget) {
      return InternalError(file->path + ": ran out of distinct prompts (use fewer rows)");
    }
    // A kind still wanted on some side, weighted by what is left of it.
    int64_t r = static_cast<int64_t>(rng.Below(static_cast<size_t>(left)));
    size_t kind = 0;
    while (r >= quota[kind][0] + quota[kind][1]) {
      r -= quota[kind][0] + quota[kind][1];
      ++kind;
    }
    const ojson rec = make(kind);
    auto prompt = AdapterPrompt(adapter, rec);
    if (!prompt) return InternalError(file->path + ": generated a record the adapter drops");
    const int side = HashSplit(*prompt, kValFraction) == "validation" ? 1 : 0;
    if (quota[kind][side] == 0 || !seen->insert(CanonicalPrompt(*prompt)).second) continue;
    --quota[kind][side];
    --left;
    file->Add(rec, kind_names[kind] + (side ? "@validation" : "@train"));
  }
  return Status::Ok();
}

// ---- the sources -----------------------------------------------------------------------

struct Prompted {
  size_t topic;
  std::string text;
};

// One of `templates` filled with n distinct words of `topic`. (Every draw of the generator
// is its own statement or a braced list's element: the order of function arguments and of
// operands is unspecified, and the bytes must not depend on the compiler.)
std::string FillPick(Rng& rng, const std::vector<std::string>& templates, size_t topic, size_t n) {
  const std::string& t = rng.Pick(templates);
  return Fill(t, Distinct(rng, topic, n));
}

Prompted MakePrompt(Rng& rng, const std::vector<std::string>& templates) {
  const size_t topic = rng.Below(kTopics.size());
  return {topic, FillPick(rng, templates, topic, 4)};
}

Status WriteUltra(const fs::path& dir, const PaperMiniCounts& c, Rng& rng,
                  std::vector<OutFile>* files) {
  std::set<std::string> seen;
  for (int test = 0; test < 2; ++test) {
    OutFile f{test ? "ultrafeedback_binarized/test_prefs.jsonl.gz"
                   : "ultrafeedback_binarized/train_prefs.jsonl.gz"};
    const int64_t pairs = test ? c.test : c.rows, ties = test ? c.few_test : c.few;
    for (int64_t i = 0; i < pairs + ties;) {
      const Prompted p = MakePrompt(rng, kUltra.prompts);
      if (!seen.insert(p.text).second) continue;
      const bool tie = i >= pairs;
      const std::string& rt = rng.Pick(kUltra.responses);
      const std::string chosen = OnTopic(rng, rt, p.topic),
                        rejected = tie ? OnTopic(rng, rt, p.topic) : OffTopic(rng, rt, p.topic);
      const double sc = 6.0 + 0.5 * static_cast<double>(rng.Below(9));
      const double sr = tie ? sc : sc - 0.5 * static_cast<double>(1 + rng.Below(8));
      ojson chosen_msgs = ojson::array({Msg("user", p.text), Msg("assistant", chosen)});
      ojson rec = {{"prompt", p.text},
                   {"prompt_id", rng.Hex(64)},
                   {"chosen", chosen_msgs},
                   {"rejected", ojson::array({Msg("user", p.text), Msg("assistant", rejected)})},
                   {"messages", chosen_msgs},
                   {"score_chosen", sc},
                   {"score_rejected", sr}};
      f.Add(rec, tie ? "tie" : "pair");
      ++i;
    }
    RETURN_IF_ERROR(WriteOut(dir, f, rng));
    files->push_back(std::move(f));
  }
  return Status::Ok();
}

ojson ArenaRecord(Rng& rng, const std::string& winner, const ojson& conv_a, const ojson& conv_b,
                  int turn) {
  const size_t ma = rng.Below(kArenaModels.size());
  size_t mb = rng.Below(kArenaModels.size() - 1);
  if (mb >= ma) ++mb;
  return {{"question_id", rng.Hex(32)},
          {"model_a", kArenaModels[ma]},
          {"model_b", kArenaModels[mb]},
          {"winner", winner},
          {"judge", "arena_user_" + std::to_string(rng.Below(5000))},
          {"conversation_a", conv_a},
          {"conversation_b", conv_b},
          {"turn", turn},
          {"anony", rng.Below(4) != 0},
          {"language", "English"},
          {"tstamp", 1682351591.0 + static_cast<double>(rng.Below(250000000)) / 100.0},
          {"openai_moderation",
           {{"categories", {{"harassment", false}, {"hate", false}, {"violence", false}}},
            {"flagged", false}}},
          {"toxic_chat_tag",
           {{"roberta-large", {{"flagged", false}, {"probability", 0.0}}},
            {"t5-large", {{"flagged", false}, {"score", 0.0}}}}}};
}

Status WriteArena(const fs::path& dir, const PaperMiniCounts& c, Rng& rng,
                  std::vector<OutFile>* files) {
  OutFile f{"chatbot_arena_conversations/train.jsonl.gz"};
  ASSIGN_OR_RETURN(auto adapter, MakeAdapter("arena"));
  enum Kind { kPlain, kMulti, kDouble };
  // One conversation pair: the shared user (and, multi-turn, first assistant) turns, then
  // the winner's response on the prompt's topic and the loser's off it.
  auto make = [&](size_t kind) {
    const Prompted p = MakePrompt(rng, kArena.prompts);
    ojson history = ojson::array({Msg("user", p.text)});
    int turn = 1;
    if (kind == kMulti) {
      history.push_back(Msg("assistant", OnTopic(rng, rng.Pick(kArena.responses), p.topic)));
      history.push_back(Msg("user", FillPick(rng, kArenaFollowUps, p.topic, 1)));
      turn = 2;
    } else if (kind == kDouble) {
      history.push_back(Msg("user", FillPick(rng, kArenaAddOns, p.topic, 1)));
    }
    const std::string& rt = rng.Pick(kArena.responses);
    const std::string good = OnTopic(rng, rt, p.topic), bad = OffTopic(rng, rt, p.topic);
    const bool a_wins = rng.Below(2) == 0;
    ojson a = history, b = history;
    a.push_back(Msg("assistant", a_wins ? good : bad));
    b.push_back(Msg("assistant", a_wins ? bad : good));
    return ArenaRecord(rng, a_wins ? "model_a" : "model_b", a, b, turn);
  };
  std::set<std::string> seen;
  RETURN_IF_ERROR(FillHashSplit(rng, *adapter, {"pair", "multi_turn", "double_user"},
                                {{c.rows - c.arena_multi_train - c.arena_double_train,
                                  c.test - c.arena_multi_test - c.arena_double_test},
                                 {c.arena_multi_train, c.arena_multi_test},
                                 {c.arena_double_train, c.arena_double_test}},
                                make, &f, &seen));
  // Dropped rows: ties of both kinds, and multi-turn rows whose first answers differ (each
  // model answered every turn: the history the two responses follow is not the same).
  for (int64_t i = 0; i < 3 * c.few; ++i) {
    const Prompted p = MakePrompt(rng, kArena.prompts);
    const std::string& rt = rng.Pick(kArena.responses);
    if (i < 2 * c.few) {
      ojson a = ojson::array({Msg("user", p.text), Msg("assistant", OnTopic(rng, rt, p.topic))});
      ojson b = ojson::array({Msg("user", p.text), Msg("assistant", OffTopic(rng, rt, p.topic))});
      f.Add(ArenaRecord(rng, i < c.few ? "tie" : "tie (bothbad)", a, b, 1), "tie");
    } else {
      const std::string follow = FillPick(rng, kArenaFollowUps, p.topic, 1);
      ojson a = ojson::array({Msg("user", p.text), Msg("assistant", OnTopic(rng, rt, p.topic)),
                              Msg("user", follow), Msg("assistant", OnTopic(rng, rt, p.topic))});
      ojson b = ojson::array({Msg("user", p.text), Msg("assistant", OffTopic(rng, rt, p.topic)),
                              Msg("user", follow), Msg("assistant", OffTopic(rng, rt, p.topic))});
      f.Add(ArenaRecord(rng, "model_a", a, b, 2), "divergent_history");
    }
  }
  RETURN_IF_ERROR(WriteOut(dir, f, rng));
  files->push_back(std::move(f));
  return Status::Ok();
}

Status WriteHh(const fs::path& dir, const PaperMiniCounts& c, Rng& rng,
               std::vector<OutFile>* files) {
  std::set<std::string> seen;
  for (int test = 0; test < 2; ++test) {
    OutFile f{test ? "hh-rlhf/test.jsonl.gz" : "hh-rlhf/train.jsonl.gz"};
    const int64_t n = test ? c.test : c.rows, multi = test ? c.hh_multi_test : c.hh_multi_train;
    for (int64_t i = 0; i < n;) {
      const Prompted p = MakePrompt(rng, kHh.prompts);
      std::string prefix;
      if (i < multi) {
        const std::string opener = FillPick(rng, kHhOpeners, p.topic, 1);
        prefix = "\n\nHuman: " + opener + "\n\nAssistant: " + rng.Pick(kHhReplies);
      }
      prefix += "\n\nHuman: " + p.text + "\n\nAssistant: ";
      if (!seen.insert(prefix).second) continue;
      const std::string& rt = rng.Pick(kHh.responses);
      ojson rec = {{"chosen", prefix + OnTopic(rng, rt, p.topic)},
                   {"rejected", prefix + OffTopic(rng, rt, p.topic)}};
      f.Add(rec, i < multi ? "multi_turn" : "pair");
      ++i;
    }
    RETURN_IF_ERROR(WriteOut(dir, f, rng));
    files->push_back(std::move(f));
  }
  return Status::Ok();
}

Status WriteNectar(const fs::path& dir, const PaperMiniCounts& c, Rng& rng,
                   std::vector<OutFile>* files) {
  OutFile f{"nectar/nectar.jsonl.gz"};
  ASSIGN_OR_RETURN(auto adapter, MakeAdapter("nectar"));
  static const std::vector<std::string> kSources = {"sharegpt", "anthropic-hh", "lmsys-chat-1m",
                                                    "evol_instruct", "flan_v2_niv2"};
  auto make = [&](size_t kind) {
    const Prompted p = MakePrompt(rng, kNectar.prompts);
    std::string prompt;
    int turns = 1;
    if (kind == 1) {
      const std::string opener = FillPick(rng, kNectarOpeners, p.topic, 1);
      prompt = "\n\nHuman: " + opener + "\n\nAssistant: " + rng.Pick(kHhReplies);
      turns = 2;
    }
    prompt += "\n\nHuman: " + p.text + "\n\nAssistant:";
    // Rank 1 on the topic, rank 2 half on it, ranks 3-7 off it, one template per row.
    const std::string& rt = rng.Pick(kNectar.responses);
    std::vector<std::string> models = kNectarModels;
    rng.Shuffle(&models);
    ojson answers = ojson::array();
    for (int rank = 1; rank <= 7; ++rank) {
      const int on = rank == 1 ? 4 : rank == 2 ? 2 : 0;
      answers.push_back({{"answer", Mixed(rng, rt, p.topic, on)},
                         {"model", models[static_cast<size_t>(rank - 1)]},
                         {"rank", static_cast<double>(rank)}});
    }
    return ojson{{"prompt", prompt},
                 {"answers", answers},
                 {"turns", turns},
                 {"num_responses", 7},
                 {"source", ojson::array({rng.Pick(kSources)})},
                 {"good_natured", true}};
  };
  std::set<std::string> seen;
  RETURN_IF_ERROR(FillHashSplit(rng, *adapter, {"pair", "multi_turn"},
                                {{c.aux - c.nectar_multi_train, c.test - c.nectar_multi_test},
                                 {c.nectar_multi_train, c.nectar_multi_test}},
                                make, &f, &seen));
  RETURN_IF_ERROR(WriteOut(dir, f, rng));
  files->push_back(std::move(f));
  return Status::Ok();
}

Status WriteWebGpt(const fs::path& dir, const PaperMiniCounts& c, Rng& rng,
                   std::vector<OutFile>* files) {
  OutFile f{"webgpt_comparisons/comparisons.jsonl.gz"};
  ASSIGN_OR_RETURN(auto adapter, MakeAdapter("webgpt"));
  auto tokens = [](const std::string& text) {
    ojson t = ojson::array();
    size_t start = 0;
    while (start < text.size()) {
      size_t end = text.find(' ', start);
      if (end == std::string::npos) end = text.size();
      t.push_back((start == 0 ? "" : " ") + text.substr(start, end - start));
      start = end + 1;
    }
    return t;
  };
  auto quotes = [&](size_t topic) {
    const std::vector<std::string> w = Distinct(rng, topic, 2);
    return ojson{{"title", ojson::array({"Wikipedia - " + w[0], w[1] + " - Britannica"})},
                 {"extract", ojson::array({"The " + w[0] + " is widely studied.",
                                           "Many sources discuss the " + w[1] + "."})}};
  };
  auto make = [&](size_t kind, bool tie) {
    (void)kind;
    const Prompted p = MakePrompt(rng, kWebGpt.prompts);
    const std::string& rt = rng.Pick(kWebGpt.responses);
    const size_t other = OtherTopic(rng, p.topic);
    const std::string good = OnTopic(rng, rt, p.topic), bad = OnTopic(rng, rt, other);
    const bool first = rng.Below(2) == 0;
    const double s = tie ? 0.0 : (rng.Below(2) ? 1.0 : 0.5);
    const double s0 = first ? s : -s;
    const size_t t0 = first ? p.topic : other, t1 = first ? other : p.topic;
    return ojson{{"question", {{"dataset", "eli5"}, {"full_text", p.text}, {"id", rng.Hex(32)}}},
                 {"quotes_0", quotes(t0)},
                 {"answer_0", first ? good : bad},
                 {"tokens_0", tokens(first ? good : bad)},
                 {"score_0", tie ? 0.0 : s0},
                 {"quotes_1", quotes(t1)},
                 {"answer_1", first ? bad : good},
                 {"tokens_1", tokens(first ? bad : good)},
                 {"score_1", tie ? 0.0 : -s0}};
  };
  std::set<std::string> seen;
  RETURN_IF_ERROR(FillHashSplit(
      rng, *adapter, {"pair"}, {{c.aux, c.test}}, [&](size_t kind) { return make(kind, false); },
      &f, &seen));
  for (int64_t i = 0; i < c.few; ++i) f.Add(make(0, true), "tie");
  RETURN_IF_ERROR(WriteOut(dir, f, rng));
  files->push_back(std::move(f));
  return Status::Ok();
}

Status WriteSummarize(const fs::path& dir, const PaperMiniCounts& c, Rng& rng,
                      std::vector<OutFile>* files) {
  OutFile f{"summarize_from_feedback/comparisons.jsonl.gz"};
  static const std::vector<std::string> kRedditPolicies = {"sup2", "ref", "ppo_xl", "sup4_6b",
                                                           "pretrain_xl"};
  static const std::vector<std::string> kNewsPolicies = {"ref", "sup4_ppo_rm3", "pretrain_6b",
                                                         "sup4_6b"};
  static const std::vector<std::string> kNewsBatches = {"batch0_cnndm", "cnndm0", "cnndm2"};
  std::set<std::string> seen;
  // A body of 2 short sentences of the topic (distinct sentences, words drawn per sentence).
  auto body = [&](const std::vector<std::string>& sentences, size_t topic) {
    std::vector<size_t> idx(sentences.size());
    for (size_t i = 0; i < idx.size(); ++i) idx[i] = i;
    rng.Shuffle(&idx);
    std::string text;
    for (size_t i = 0; i < 2; ++i) {
      text += (i ? " " : "") + Fill(sentences[idx[i]], Distinct(rng, topic, 4));
    }
    return text;
  };
  // kind: 0 Reddit, 1 CNN, 2 Daily Mail.
  auto add = [&](int kind, const std::string& split, const std::string& what) {
    while (true) {
      const size_t topic = rng.Below(kTopics.size());
      ojson info;
      std::string key;
      if (kind == 0) {
        const std::string post = body(kRedditSentences, topic);
        key = post;
        info = {{"id", "t3_" + rng.Hex(6)},
                {"post", post},
                {"title", FillPick(rng, kRedditTitles, topic, 2)},
                {"subreddit", kSubreddits[topic]},
                {"site", nullptr},
                {"article", nullptr}};
      } else {
        const bool cnn = kind == 1;
        const std::string article =
            cnn ? "(CNN) -- " + body(kCnnSentences, topic)
                : "By . Daily Mail Reporter . " + body(kDailyMailSentences, topic);
        key = article;
        info = {{"id", rng.Hex(40)},
                {"post", nullptr},
                {"title", FillPick(rng, cnn ? kCnnTitles : kDailyMailTitles, topic, 2)},
                {"subreddit", nullptr},
                {"site", cnn ? "cnn" : "dailymail"},
                {"article", article}};
      }
      if (!seen.insert(key).second) continue;
      const std::string& st = rng.Pick(kSummaries);
      const std::string good = OnTopic(rng, st, topic), bad = OffTopic(rng, st, topic);
      const int choice = static_cast<int>(rng.Below(2));
      const auto& policies = kind == 0 ? kRedditPolicies : kNewsPolicies;
      auto summary = [&](const std::string& text) {
        return ojson{{"text", text}, {"policy", rng.Pick(policies)}, {"note", nullptr}};
      };
      ojson summaries = choice == 0 ? ojson::array({summary(good), summary(bad)})
                                    : ojson::array({summary(bad), summary(good)});
      ojson extra = {{"confidence", nullptr}};
      if (kind == 0) extra["confidence"] = 1 + static_cast<int>(rng.Below(9));
      f.Add({{"info", info},
             {"summaries", summaries},
             {"choice", choice},
             {"worker", rng.Hex(32)},
             {"batch",
              kind == 0 ? "batch" + std::to_string(3 + rng.Below(20)) : rng.Pick(kNewsBatches)},
             {"split", split},
             {"extra", extra}},
            what);
      return;
    }
  };
  for (int64_t i = 0; i < c.rows; ++i) add(0, "train", "tldr@train");
  for (int64_t i = 0; i < c.test; ++i) add(0, "valid1", "tldr@valid1");
  for (int64_t i = 0; i < c.few; ++i) add(0, "valid2", "tldr@valid2");
  for (int64_t i = 0; i < c.test; ++i) add(1, "valid2", "cnn@valid2");
  for (int64_t i = 0; i < c.test; ++i) add(2, "valid2", "dailymail@valid2");
  RETURN_IF_ERROR(WriteOut(dir, f, rng));
  files->push_back(std::move(f));
  return Status::Ok();
}

Status WriteRewardBench(const fs::path& dir, const PaperMiniCounts& c, Rng& rng,
                        std::vector<OutFile>* files) {
  OutFile f{"reward-bench/filtered.jsonl.gz"};
  std::set<std::string> seen;
  int64_t id = 0;
  for (const RbSubset& s : kRbSubsets) {
    const Style style = s.style ? *s.style : HepStyle(s.language);
    for (int64_t i = 0; i < c.rewardbench_per_subset;) {
      const Prompted p = MakePrompt(rng, style.prompts);
      if (!seen.insert(std::string(s.name) + "\x1f" + p.text).second) continue;
      const std::string& rt = rng.Pick(style.responses);
      const size_t cm = rng.Below(kRbModels.size());
      const size_t rm = (cm + 1 + rng.Below(kRbModels.size() - 1)) % kRbModels.size();
      f.lines.push_back(ojson{{"prompt", p.text},
                              {"chosen", OnTopic(rng, rt, p.topic)},
                              {"chosen_model", kRbModels[cm]},
                              {"rejected", Mixed(rng, rt, p.topic, s.rejected_on_topic)},
                              {"rejected_model", kRbModels[rm]},
                              {"subset", s.name},
                              {"id", id++}}
                            .dump() +
                        "\n");
      ++f.kinds[s.name];
      ++i;
    }
  }
  // The published file is ordered by subset: keep that order (no shuffle).
  std::string text;
  for (const auto& l : f.lines) text += l;
  ASSIGN_OR_RETURN(std::string gz, Gzip(text, f.path));
  std::error_code ec;
  fs::create_directories((dir / f.path).parent_path(), ec);
  RETURN_IF_ERROR(WriteFileAtomic((dir / f.path).string(), gz));
  files->push_back(std::move(f));
  return Status::Ok();
}

// configs/datasets.yaml's entries for the study's sources, rooted at the suite.
constexpr const char* kCatalog =
    R"(# The paper-mini suite's catalog (rmgen data synth --profile paper-mini): the entry
# names, adapters, subsets and splits of configs/datasets.yaml, on miniature files.
root: .
datasets:
  ultra:
    description: paper-mini UltraFeedback binarized (train_prefs / test_prefs)
    adapter: ultrafeedback
    splits:
      train: ultrafeedback_binarized/train_prefs.jsonl.gz
      test: ultrafeedback_binarized/test_prefs.jsonl.gz
  arena:
    description: paper-mini Chatbot Arena conversations (no split of its own)
    adapter: arena
    splits:
      train: {path: chatbot_arena_conversations/train.jsonl.gz, split: train}
      test: {path: chatbot_arena_conversations/train.jsonl.gz, split: validation}
  hh:
    description: paper-mini HH-RLHF (train / test files)
    adapter: hh_rlhf
    splits:
      train: hh-rlhf/train.jsonl.gz
      test: hh-rlhf/test.jsonl.gz
  nectar:
    description: paper-mini Nectar (rank 1 against a seeded random lower rank)
    adapter: nectar
    pairing: random
    splits:
      train: {path: nectar/nectar.jsonl.gz, split: train}
      test: {path: nectar/nectar.jsonl.gz, split: validation}
  webgpt:
    description: paper-mini WebGPT comparisons (train only)
    adapter: webgpt
    splits:
      train: {path: webgpt_comparisons/comparisons.jsonl.gz, split: train}
      test: {path: webgpt_comparisons/comparisons.jsonl.gz, split: validation}
  sum-reddit:
    description: paper-mini summarize_from_feedback comparisons, Reddit TL;DR rows
    adapter: summarize
    subset: tldr
    splits:
      train: {path: summarize_from_feedback/comparisons.jsonl.gz, split: train}
      test: {path: summarize_from_feedback/comparisons.jsonl.gz, split: valid1}
  sum-cnn:
    description: paper-mini summarize_from_feedback comparisons, CNN rows (validation only)
    adapter: summarize
    subset: cnn
    splits:
      test: {path: summarize_from_feedback/comparisons.jsonl.gz, split: valid2}
  sum-dailymail:
    description: paper-mini summarize_from_feedback comparisons, Daily Mail rows (validation only)
    adapter: summarize
    subset: dailymail
    splits:
      test: {path: summarize_from_feedback/comparisons.jsonl.gz, split: valid2}
  rewardbench:
    description: paper-mini RewardBench, filtered split (every subset of the four sections)
    adapter: rewardbench
    splits:
      test: reward-bench/filtered.jsonl.gz
)";

const char* const kRefs[] = {"ultra:train",  "ultra:test",         "arena:train",
                             "arena:test",   "hh:train",           "hh:test",
                             "nectar:train", "nectar:test",        "webgpt:train",
                             "webgpt:test",  "sum-reddit:train",   "sum-reddit:test",
                             "sum-cnn:test", "sum-dailymail:test", "rewardbench:test"};

// Protocol buffers, just enough to rewrite length-delimited fields: `msg` with each such
// field for which `f(field, payload)` returns a value given that payload instead.
StatusOr<std::string> MapBytesFields(
    const std::string& msg,
    const std::function<std::optional<std::string>(uint64_t, const std::string&)>& f) {
  auto varint = [&](size_t* i, uint64_t* v) {
    *v = 0;
    for (int shift = 0; shift < 64 && *i < msg.size(); shift += 7) {
      const auto b = static_cast<uint8_t>(msg[(*i)++]);
      *v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) return true;
    }
    return false;
  };
  auto put_varint = [](uint64_t v, std::string* out) {
    for (; v >= 0x80; v >>= 7) *out += static_cast<char>((v & 0x7f) | 0x80);
    *out += static_cast<char>(v);
  };
  std::string out;
  for (size_t i = 0; i < msg.size();) {
    const size_t start = i;
    uint64_t tag = 0, v = 0;
    if (!varint(&i, &tag)) return InternalError("tokenizer.model: bad protobuf tag");
    switch (tag & 7) {
      case 0:
        if (!varint(&i, &v)) return InternalError("tokenizer.model: bad protobuf varint");
        break;
      case 1: i += 8; break;
      case 5: i += 4; break;
      case 2: {
        if (!varint(&i, &v) || v > msg.size() - i) {
          return InternalError("tokenizer.model: bad protobuf length");
        }
        const std::string payload = msg.substr(i, v);
        i += v;
        if (auto replaced = f(tag >> 3, payload)) {
          put_varint(tag, &out);
          put_varint(replaced->size(), &out);
          out += *replaced;
          continue;
        }
        break;
      }
      default: return InternalError("tokenizer.model: unexpected protobuf wire type");
    }
    if (i > msg.size()) return InternalError("tokenizer.model: truncated protobuf");
    out += msg.substr(start, i - start);
  }
  return out;
}

// SentencePiece records the trainer's input and model_prefix paths (ModelProto.trainer_spec
// fields 1 and 2) in the model: fixed names instead, so the bytes do not depend on the
// output folder.
StatusOr<std::string> WithoutTrainerPaths(const std::string& model) {
  return MapBytesFields(model, [](uint64_t field, const std::string& spec) {
    if (field != 2) return std::optional<std::string>();
    auto fixed = MapBytesFields(spec, [](uint64_t f, const std::string&) {
      if (f == 1) return std::optional<std::string>("corpus.txt");
      if (f == 2) return std::optional<std::string>("tokenizer");
      return std::optional<std::string>();
    });
    return fixed.ok() ? std::optional<std::string>(*fixed) : std::optional<std::string>();
  });
}

std::string Rendered(const std::vector<Message>& ms) {
  std::string s;
  for (const auto& m : ms) s += "<|" + m.role + "|>\n" + m.content + "\n";
  return s;
}

}  // namespace

const std::vector<std::vector<std::string>>& PaperMiniTopics() { return kTopics; }

PaperMiniCounts PaperMiniCountsFor(const PaperMiniOptions& o) {
  PaperMiniCounts c{};
  c.rows = o.rows;
  c.test = o.test_rows > 0 ? o.test_rows : std::max<int64_t>(10, o.rows * 3 / 10);
  c.few = std::max<int64_t>(2, o.rows / 100);
  c.few_test = std::max<int64_t>(1, c.few / 2);
  c.aux = std::max<int64_t>(10, o.rows / 3);
  c.rewardbench_per_subset = (c.test + int64_t(kNumRbSubsets) - 1) / int64_t(kNumRbSubsets);
  c.arena_multi_train = std::max<int64_t>(1, c.rows / 20);
  c.arena_multi_test = std::max<int64_t>(1, c.test / 20);
  c.arena_double_train = c.few;
  c.arena_double_test = c.few_test;
  c.hh_multi_train = std::max<int64_t>(1, c.rows / 10);
  c.hh_multi_test = std::max<int64_t>(1, c.test / 10);
  c.nectar_multi_train = std::max<int64_t>(1, c.aux / 10);
  c.nectar_multi_test = std::max<int64_t>(1, c.test / 10);
  return c;
}

Status WritePaperMiniSuite(const std::string& out_dir, const PaperMiniOptions& o) {
  if (o.rows < 20) return InvalidArgumentError("paper-mini: rows must be at least 20");
  if (o.test_rows < 0) return InvalidArgumentError("paper-mini: test_rows must be >= 0");
  const PaperMiniCounts c = PaperMiniCountsFor(o);
  if (c.test < 5) return InvalidArgumentError("paper-mini: test_rows must be at least 5");
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) return InternalError(out_dir + ": cannot create (" + ec.message() + ")");
  const fs::path dir(out_dir);

  // One generator per source, so each source's bytes depend on the seed and its own counts.
  auto rng_for = [&](uint64_t salt) {
    return Rng(adapter_util::Mix(o.seed ^ adapter_util::Mix(salt)));
  };
  std::vector<OutFile> files;
  {
    Rng r = rng_for(1);
    RETURN_IF_ERROR(WriteUltra(dir, c, r, &files));
  }
  {
    Rng r = rng_for(2);
    RETURN_IF_ERROR(WriteArena(dir, c, r, &files));
  }
  {
    Rng r = rng_for(3);
    RETURN_IF_ERROR(WriteHh(dir, c, r, &files));
  }
  {
    Rng r = rng_for(4);
    RETURN_IF_ERROR(WriteNectar(dir, c, r, &files));
  }
  {
    Rng r = rng_for(5);
    RETURN_IF_ERROR(WriteWebGpt(dir, c, r, &files));
  }
  {
    Rng r = rng_for(6);
    RETURN_IF_ERROR(WriteSummarize(dir, c, r, &files));
  }
  {
    Rng r = rng_for(7);
    RETURN_IF_ERROR(WriteRewardBench(dir, c, r, &files));
  }
  const std::string catalog_path = (dir / "datasets.yaml").string();
  RETURN_IF_ERROR(WriteFileAtomic(catalog_path, kCatalog));

  // Read every reference back through the catalog and the adapters: the counts for
  // meta.json, a check that nothing is an input error, and the tokenizer's corpus (what the
  // model sees: every prompt and response, with the zephyr markers).
  ASSIGN_OR_RETURN(Catalog catalog, Catalog::Load(catalog_path));
  nlohmann::json datasets = nlohmann::json::object();
  std::string corpus;
  std::set<std::string> corpus_files;
  for (const char* ref : kRefs) {
    ASSIGN_OR_RETURN(ResolvedDataset r, catalog.Resolve(ref));
    DatasetStats stats;
    const bool first_read = corpus_files.insert(r.path).second;
    ReadOptions all = r.read;
    all.split.clear();
    all.subset.clear();
    if (first_read) {
      DatasetStats ignored;
      RETURN_IF_ERROR(ReadDataset(
          r.path, all,
          [&](PreferencePair&& p) {
            corpus += Rendered(p.prompt) + "<|assistant|>\n" + ResponseText(p.chosen) + "\n" +
                      ResponseText(p.rejected) + "\n";
          },
          &ignored));
    }
    RETURN_IF_ERROR(ReadDataset(
        r.path, r.read, [](PreferencePair&&) {}, &stats));
    if (stats.error_count > 0) {
      return InternalError(std::string("paper-mini: ") + ref +
                           " has input errors: " + stats.ToJson().dump());
    }
    nlohmann::json s = stats.ToJson();
    s.erase("errors");
    s.erase("error_count");
    datasets[ref] = s;
  }

  RETURN_IF_ERROR(synth::TrainSuiteTokenizer(
      dir, corpus, o.vocab_size,
      "<|user|>,<|assistant|>,<|system|>,<start_of_turn>,<end_of_turn>"));
  const std::string model_path = (dir / "tokenizer.model").string();
  ASSIGN_OR_RETURN(std::string trained, ReadFile(model_path));
  ASSIGN_OR_RETURN(std::string portable, WithoutTrainerPaths(trained));
  RETURN_IF_ERROR(WriteFileAtomic(model_path, portable));
  ASSIGN_OR_RETURN(auto tok, Tokenizer::Load(model_path));

  // The shift suite's tiny Llama, sized to the trained vocabulary.
  const nlohmann::json model = synth::TinyLlamaConfig(tok->vocab_size());
  RETURN_IF_ERROR(WriteFileAtomic((dir / "model.json").string(), model.dump(2) + "\n"));

  nlohmann::json file_counts = nlohmann::json::object();
  for (const OutFile& f : files) {
    file_counts[f.path] = {{"records", f.lines.size()}, {"kinds", f.kinds}};
  }
  const nlohmann::json meta = {{"profile", "paper-mini"},
                               {"seed", o.seed},
                               {"rows", c.rows},
                               {"test_rows", c.test},
                               {"template", "zephyr"},
                               {"tokenizer", "tokenizer.model"},
                               {"vocab_size", tok->vocab_size()},
                               {"model", "model.json"},
                               {"catalog", "datasets.yaml"},
                               {"files", file_counts},
                               {"datasets", datasets}};
  return WriteFileAtomic((dir / "meta.json").string(), meta.dump(2) + "\n");
}

}  // namespace rmgen
