// The adapters of the study's sources (REFERENCE section 3) and the generic `pairs`.
// Each class reads exactly its source's published schema; see adapter.h for the contract.
#include <algorithm>
#include <map>

#include "worker/data/adapter.h"

namespace rmgen {
namespace {

using nlohmann::json;
using namespace adapter_util;

Message Assistant(std::string content) { return {"assistant", std::move(content)}; }

std::string IdField(const json& rec, const char* field) {
  if (!rec.is_object()) return "";
  auto it = rec.find(field);
  if (it == rec.end()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (it->is_number_integer()) return std::to_string(it->get<int64_t>());
  return "";
}

// ---------------------------------------------------------------------------------------
// hh_rlhf: {chosen: str, rejected: str}, full "\n\nHuman: ...\n\nAssistant: ..." transcripts
// sharing everything up to the last assistant turn.
class HhRlhfAdapter : public Adapter {
 public:
  const char* name() const override { return "hh_rlhf"; }
  RecordOutcome Convert(const json& rec) const override {
    std::string chosen, rejected;
    if (auto bad = GetString(rec, "chosen", &chosen)) return *bad;
    if (auto bad = GetString(rec, "rejected", &rejected)) return *bad;
    static const std::string kAssistant = "\n\nAssistant:";
    size_t common = 0;
    while (common < chosen.size() && common < rejected.size() &&
           chosen[common] == rejected[common]) {
      ++common;
    }
    // The prompt is the shared prefix cut back to its last assistant marker.
    size_t cut =
        chosen.rfind(kAssistant, common >= kAssistant.size() ? common - kAssistant.size() : 0);
    if (cut == std::string::npos || cut + kAssistant.size() > common) {
      if (chosen == rejected) return RecordOutcome::Drop(DropReason::kIdentical);
      return RecordOutcome::Drop(DropReason::kMalformed, "chosen",
                                 "no shared \"\\n\\nAssistant:\" turn before the responses");
    }
    PreferencePair p;
    p.source = name();
    p.prompt = SplitTranscript(chosen.substr(0, cut));
    const size_t body = cut + kAssistant.size();
    p.chosen = {Assistant(StripWhitespace(chosen.substr(body)))};
    p.rejected = {Assistant(StripWhitespace(rejected.substr(body)))};
    return Finish(std::move(p));
  }
};

// ---------------------------------------------------------------------------------------
// ultrafeedback: the binarized schema (HuggingFaceH4/ultrafeedback_binarized: prompt,
// prompt_id, chosen/rejected message lists, score_chosen, score_rejected) or the raw
// openbmb schema (instruction, completions[{model, response, overall_score, ...}]).
class UltraFeedbackAdapter : public Adapter {
 public:
  explicit UltraFeedbackAdapter(const AdapterOptions& o) : seed_(o.seed) {}
  const char* name() const override { return "ultrafeedback"; }
  RecordOutcome Convert(const json& rec) const override {
    if (rec.is_object() && rec.contains("completions")) return ConvertRaw(rec);
    std::vector<Message> chosen, rejected;
    if (auto bad = GetMessages(rec, "chosen", &chosen)) return *bad;
    if (auto bad = GetMessages(rec, "rejected", &rejected)) return *bad;
    if (chosen.size() < 2) {
      return RecordOutcome::Drop(DropReason::kMalformed, "chosen",
                                 "expected the prompt turns then the response");
    }
    if (rejected.size() != chosen.size() ||
        !std::equal(chosen.begin(), chosen.end() - 1, rejected.begin(),
                    [](const Message& a, const Message& b) {
                      return a.role == b.role && a.content == b.content;
                    })) {
      return RecordOutcome::Drop(DropReason::kDivergentHistory, "rejected",
                                 "prompt turns differ from chosen's");
    }
    PreferencePair p;
    p.source = name();
    p.id = IdField(rec, "prompt_id");
    p.prompt.assign(chosen.begin(), chosen.end() - 1);
    p.chosen = {chosen.back()};
    p.rejected = {rejected.back()};
    double sc = 0, sr = 0;
    const bool has_sc = !GetNumber(rec, "score_chosen", &sc).has_value();
    const bool has_sr = !GetNumber(rec, "score_rejected", &sr).has_value();
    if (has_sc && has_sr) {
      if (sc == sr) return RecordOutcome::Drop(DropReason::kTie);
      p.score_chosen = sc;
      p.score_rejected = sr;
    }
    return Finish(std::move(p));
  }

 private:
  RecordOutcome ConvertRaw(const json& rec) const {
    std::string instruction;
    if (auto bad = GetString(rec, "instruction", &instruction)) return *bad;
    const json& comps = rec["completions"];
    if (!comps.is_array()) {
      return RecordOutcome::Drop(DropReason::kMalformed, "completions", "expected a list");
    }
    struct Scored {
      std::string text;
      double score;
    };
    std::vector<Scored> scored;
    for (size_t i = 0; i < comps.size(); ++i) {
      const std::string where = "completions[" + std::to_string(i) + "]";
      Scored s;
      if (auto bad = GetString(comps[i], "response", &s.text, where)) return *bad;
      if (auto bad = GetNumber(comps[i], "overall_score", &s.score, where)) return *bad;
      scored.push_back(std::move(s));
    }
    if (scored.size() < 2) {
      return RecordOutcome::Drop(DropReason::kMissingField, "completions",
                                 "fewer than two completions");
    }
    // Chosen: the best overall_score (first on ties); rejected: a seeded random one of
    // those scored strictly lower.
    size_t best = 0;
    for (size_t i = 1; i < scored.size(); ++i) {
      if (scored[i].score > scored[best].score) best = i;
    }
    std::vector<size_t> lower;
    for (size_t i = 0; i < scored.size(); ++i) {
      if (scored[i].score < scored[best].score) lower.push_back(i);
    }
    if (lower.empty()) return RecordOutcome::Drop(DropReason::kTie);
    const size_t rej = lower[Mix(seed_ ^ HashString(instruction)) % lower.size()];
    PreferencePair p;
    p.source = name();
    p.id = IdField(rec, "source");
    p.prompt = {{"user", instruction}};
    p.chosen = {Assistant(scored[best].text)};
    p.rejected = {Assistant(scored[rej].text)};
    p.score_chosen = scored[best].score;
    p.score_rejected = scored[rej].score;
    return Finish(std::move(p));
  }
  uint64_t seed_;
};

// ---------------------------------------------------------------------------------------
// arena (lmsys/chatbot_arena_conversations): winner in {model_a, model_b, tie,
// tie (bothbad)}; conversation_a/b message lists sharing their user turns.
class ArenaAdapter : public Adapter {
 public:
  const char* name() const override { return "arena"; }
  RecordOutcome Convert(const json& rec) const override {
    std::string winner;
    if (auto bad = GetString(rec, "winner", &winner)) return *bad;
    if (winner == "tie" || winner == "tie (bothbad)") return RecordOutcome::Drop(DropReason::kTie);
    if (winner != "model_a" && winner != "model_b") {
      return RecordOutcome::Drop(
          DropReason::kMalformed, "winner",
          "expected model_a, model_b, tie or tie (bothbad), got '" + winner + "'");
    }
    std::vector<Message> a, b;
    if (auto bad = GetMessages(rec, "conversation_a", &a)) return *bad;
    if (auto bad = GetMessages(rec, "conversation_b", &b)) return *bad;
    if (a.size() < 2 || b.size() != a.size() || a.back().role != "assistant" ||
        b.back().role != "assistant") {
      return RecordOutcome::Drop(DropReason::kMalformed, "conversation_a",
                                 "expected matching user/assistant turns ending with the "
                                 "assistant");
    }
    for (size_t i = 0; i + 1 < a.size(); ++i) {
      if (a[i].role != b[i].role || a[i].content != b[i].content) {
        return RecordOutcome::Drop(DropReason::kDivergentHistory, "conversation_b",
                                   "turn " + std::to_string(i) + " differs from conversation_a");
      }
    }
    PreferencePair p;
    p.source = name();
    p.id = IdField(rec, "question_id");
    p.prompt.assign(a.begin(), a.end() - 1);
    const bool a_wins = winner == "model_a";
    p.chosen = {a_wins ? a.back() : b.back()};
    p.rejected = {a_wins ? b.back() : a.back()};
    return Finish(std::move(p));
  }
};

// ---------------------------------------------------------------------------------------
// nectar (berkeley-nest/Nectar): prompt (HH-style transcript ending in "Assistant:"),
// answers[{answer, model, rank}] with rank 1 the best.
class NectarAdapter : public Adapter {
 public:
  explicit NectarAdapter(const AdapterOptions& o)
      : best_worst_(o.pairing == "best_worst"), seed_(o.seed) {}
  const char* name() const override { return "nectar"; }
  RecordOutcome Convert(const json& rec) const override {
    std::string prompt;
    if (auto bad = GetString(rec, "prompt", &prompt)) return *bad;
    if (!rec.contains("answers")) {
      return RecordOutcome::Drop(DropReason::kMissingField, "answers", "missing");
    }
    const json& answers = rec["answers"];
    if (!answers.is_array()) {
      return RecordOutcome::Drop(DropReason::kMalformed, "answers", "expected a list");
    }
    std::vector<std::pair<double, std::string>> ranked;
    for (size_t i = 0; i < answers.size(); ++i) {
      const std::string where = "answers[" + std::to_string(i) + "]";
      std::string text;
      double rank = 0;
      if (auto bad = GetString(answers[i], "answer", &text, where)) return *bad;
      if (auto bad = GetNumber(answers[i], "rank", &rank, where)) return *bad;
      ranked.emplace_back(rank, std::move(text));
    }
    if (ranked.size() < 2) {
      return RecordOutcome::Drop(DropReason::kMissingField, "answers", "fewer than two answers");
    }
    std::stable_sort(ranked.begin(), ranked.end(),
                     [](const auto& x, const auto& y) { return x.first < y.first; });
    std::vector<size_t> lower;
    for (size_t i = 1; i < ranked.size(); ++i) {
      if (ranked[i].first > ranked[0].first) lower.push_back(i);
    }
    if (lower.empty()) return RecordOutcome::Drop(DropReason::kTie);
    const size_t rej =
        best_worst_ ? lower.back() : lower[Mix(seed_ ^ HashString(prompt)) % lower.size()];
    PreferencePair p;
    p.source = name();
    p.prompt = SplitTranscript(prompt);
    p.chosen = {Assistant(StripWhitespace(ranked[0].second))};
    p.rejected = {Assistant(StripWhitespace(ranked[rej].second))};
    p.score_chosen = -ranked[0].first;  // higher is better, as for the other sources
    p.score_rejected = -ranked[rej].first;
    return Finish(std::move(p));
  }

 private:
  bool best_worst_;
  uint64_t seed_;
};

// ---------------------------------------------------------------------------------------
// webgpt (openai/webgpt_comparisons): question{full_text, ...}, answer_0/1, score_0/1.
class WebGptAdapter : public Adapter {
 public:
  const char* name() const override { return "webgpt"; }
  RecordOutcome Convert(const json& rec) const override {
    std::string question, a0, a1;
    double s0 = 0, s1 = 0;
    if (!rec.is_object())
      return RecordOutcome::Drop(DropReason::kMalformed, "(record)", "not an object");
    if (!rec.contains("question"))
      return RecordOutcome::Drop(DropReason::kMissingField, "question", "missing");
    if (auto bad = GetString(rec["question"], "full_text", &question, "question")) return *bad;
    if (auto bad = GetString(rec, "answer_0", &a0)) return *bad;
    if (auto bad = GetString(rec, "answer_1", &a1)) return *bad;
    if (auto bad = GetNumber(rec, "score_0", &s0)) return *bad;
    if (auto bad = GetNumber(rec, "score_1", &s1)) return *bad;
    if (s0 == s1) return RecordOutcome::Drop(DropReason::kTie);
    PreferencePair p;
    p.source = name();
    if (rec["question"].is_object()) p.id = IdField(rec["question"], "id");
    p.prompt = {{"user", question}};
    const bool first = s0 > s1;
    p.chosen = {Assistant(first ? a0 : a1)};
    p.rejected = {Assistant(first ? a1 : a0)};
    p.score_chosen = first ? s0 : s1;
    p.score_rejected = first ? s1 : s0;
    return Finish(std::move(p));
  }
};

// ---------------------------------------------------------------------------------------
// summarize (openai/summarize_from_feedback, comparisons): info{post|article, title,
// subreddit, site}, summaries[2]{text}, choice, batch, split. Subset tldr (Reddit rows,
// with a post) or cnn / dailymail (news rows, from info.site, else the batch name).
class SummarizeAdapter : public Adapter {
 public:
  const char* name() const override { return "summarize"; }
  RecordOutcome Convert(const json& rec) const override {
    if (!rec.is_object())
      return RecordOutcome::Drop(DropReason::kMalformed, "(record)", "not an object");
    if (!rec.contains("info"))
      return RecordOutcome::Drop(DropReason::kMissingField, "info", "missing");
    const json& info = rec["info"];
    if (!info.is_object())
      return RecordOutcome::Drop(DropReason::kMalformed, "info", "expected an object");
    std::string title;
    if (auto bad = GetString(info, "title", &title, "info")) return *bad;
    PreferencePair p;
    p.source = name();
    p.id = IdField(info, "id");
    std::string body;
    if (info.contains("post") && info["post"].is_string()) {
      std::string subreddit;
      if (auto bad = GetString(info, "subreddit", &subreddit, "info")) return *bad;
      body = "SUBREDDIT: r/" + subreddit + "\n\nTITLE: " + title +
             "\n\nPOST: " + info["post"].get<std::string>() + "\n\nTL;DR:";
      p.subset = "tldr";
    } else {
      std::string article;
      if (auto bad = GetString(info, "article", &article, "info")) return *bad;
      body = "TITLE: " + title + "\n\n" + article + "\n\nTL;DR:";
      std::string site = IdField(info, "site"), batch = IdField(rec, "batch");
      std::transform(site.begin(), site.end(), site.begin(), ::tolower);
      if (site.find("dailymail") != std::string::npos) {
        p.subset = "dailymail";
      } else if (site.find("cnn") != std::string::npos) {
        p.subset = "cnn";
      } else {
        return RecordOutcome::Drop(DropReason::kMissingField, "info.site",
                                   "news row without cnn/dailymail site (batch '" + batch + "')");
      }
    }
    if (!rec.contains("summaries") || !rec["summaries"].is_array() ||
        rec["summaries"].size() != 2) {
      return RecordOutcome::Drop(
          rec.contains("summaries") ? DropReason::kMalformed : DropReason::kMissingField,
          "summaries", "expected a list of two summaries");
    }
    std::string s[2];
    for (int i = 0; i < 2; ++i) {
      if (auto bad = GetString(rec["summaries"][i], "text", &s[i],
                               "summaries[" + std::to_string(i) + "]")) {
        return *bad;
      }
    }
    double choice = -1;
    if (auto bad = GetNumber(rec, "choice", &choice)) return *bad;
    if (choice != 0 && choice != 1) {
      return RecordOutcome::Drop(DropReason::kMalformed, "choice", "expected 0 or 1");
    }
    p.split = IdField(rec, "split");
    p.prompt = {{"user", body}};
    const int c = static_cast<int>(choice);
    p.chosen = {Assistant(s[c])};
    p.rejected = {Assistant(s[1 - c])};
    return Finish(std::move(p));
  }
};

// ---------------------------------------------------------------------------------------
// rewardbench (allenai/reward-bench, filtered): prompt, chosen, rejected strings, subset, id.
class RewardBenchAdapter : public Adapter {
 public:
  const char* name() const override { return "rewardbench"; }
  RecordOutcome Convert(const json& rec) const override {
    std::string prompt, chosen, rejected, subset;
    if (auto bad = GetString(rec, "prompt", &prompt)) return *bad;
    if (auto bad = GetString(rec, "chosen", &chosen)) return *bad;
    if (auto bad = GetString(rec, "rejected", &rejected)) return *bad;
    if (auto bad = GetString(rec, "subset", &subset)) return *bad;
    PreferencePair p;
    p.source = name();
    p.id = IdField(rec, "id");
    p.subset = subset;
    p.prompt = {{"user", prompt}};
    p.chosen = {Assistant(chosen)};
    p.rejected = {Assistant(rejected)};
    return Finish(std::move(p));
  }
};

// ---------------------------------------------------------------------------------------
// pairs: what users bring. Field names configurable; each a string or a message list.
class PairsAdapter : public Adapter {
 public:
  explicit PairsAdapter(const AdapterOptions& o) : o_(o) {}
  const char* name() const override { return "pairs"; }
  RecordOutcome Convert(const json& rec) const override {
    if (!rec.is_object())
      return RecordOutcome::Drop(DropReason::kMalformed, "(record)", "not an object");
    PreferencePair p;
    p.source = name();
    std::vector<Message> chosen, rejected;
    if (auto bad = Side(rec, o_.chosen_field, &chosen)) return *bad;
    if (auto bad = Side(rec, o_.rejected_field, &rejected)) return *bad;
    const bool has_prompt = rec.contains(o_.prompt_field) && !rec[o_.prompt_field].is_null();
    if (has_prompt) {
      const json& pr = rec[o_.prompt_field];
      if (pr.is_string()) {
        p.prompt = {{"user", pr.get<std::string>()}};
      } else if (auto bad = GetMessages(rec, o_.prompt_field, &p.prompt)) {
        return *bad;
      }
      // Message lists that repeat the prompt: keep only what follows it.
      auto strip_prompt = [&](std::vector<Message>* side) {
        if (side->size() > p.prompt.size() &&
            std::equal(p.prompt.begin(), p.prompt.end(), side->begin(),
                       [](const Message& a, const Message& b) {
                         return a.role == b.role && a.content == b.content;
                       })) {
          side->erase(side->begin(), side->begin() + p.prompt.size());
        }
      };
      strip_prompt(&chosen);
      strip_prompt(&rejected);
    } else {
      if (chosen.size() < 2 || rejected.size() < 2) {
        return RecordOutcome::Drop(DropReason::kMissingField, o_.prompt_field,
                                   "missing, and the responses carry no prompt turns");
      }
      if (!std::equal(chosen.begin(), chosen.end() - 1, rejected.begin(), rejected.end() - 1,
                      [](const Message& a, const Message& b) {
                        return a.role == b.role && a.content == b.content;
                      })) {
        return RecordOutcome::Drop(DropReason::kDivergentHistory, o_.rejected_field,
                                   "prompt turns differ from the chosen side's");
      }
      p.prompt.assign(chosen.begin(), chosen.end() - 1);
      chosen.erase(chosen.begin(), chosen.end() - 1);
      rejected.erase(rejected.begin(), rejected.end() - 1);
    }
    p.chosen = std::move(chosen);
    p.rejected = std::move(rejected);
    p.id = IdField(rec, "id");
    p.subset = IdField(rec, "subset");
    p.split = IdField(rec, "split");
    double sc = 0, sr = 0;
    if (!GetNumber(rec, "score_chosen", &sc) && !GetNumber(rec, "score_rejected", &sr)) {
      if (sc == sr) return RecordOutcome::Drop(DropReason::kTie);
      p.score_chosen = sc;
      p.score_rejected = sr;
    }
    return Finish(std::move(p));
  }

 private:
  static std::optional<RecordOutcome> Side(const json& rec, const std::string& field,
                                           std::vector<Message>* out) {
    auto it = rec.find(field);
    if (it == rec.end() || it->is_null()) {
      return RecordOutcome::Drop(DropReason::kMissingField, field, "missing");
    }
    if (it->is_string()) {
      *out = {Assistant(it->get<std::string>())};
      return std::nullopt;
    }
    return GetMessages(rec, field, out);
  }
  AdapterOptions o_;
};

}  // namespace

const std::vector<std::string>& AdapterNames() {
  static const std::vector<std::string> names = {
      "hh_rlhf", "ultrafeedback", "arena", "nectar", "webgpt", "summarize", "rewardbench", "pairs"};
  return names;
}

StatusOr<std::unique_ptr<Adapter>> MakeAdapter(const std::string& name,
                                               const AdapterOptions& options) {
  if (options.pairing != "random" && options.pairing != "best_worst") {
    return InvalidArgumentError("pairing: expected random or best_worst, got '" + options.pairing +
                                "'");
  }
  if (name == "hh_rlhf") return std::unique_ptr<Adapter>(new HhRlhfAdapter());
  if (name == "ultrafeedback") return std::unique_ptr<Adapter>(new UltraFeedbackAdapter(options));
  if (name == "arena") return std::unique_ptr<Adapter>(new ArenaAdapter());
  if (name == "nectar") return std::unique_ptr<Adapter>(new NectarAdapter(options));
  if (name == "webgpt") return std::unique_ptr<Adapter>(new WebGptAdapter());
  if (name == "summarize") return std::unique_ptr<Adapter>(new SummarizeAdapter());
  if (name == "rewardbench") return std::unique_ptr<Adapter>(new RewardBenchAdapter());
  if (name == "pairs") return std::unique_ptr<Adapter>(new PairsAdapter(options));
  std::string known;
  for (const auto& n : AdapterNames()) known += (known.empty() ? "" : ", ") + n;
  return InvalidArgumentError("unknown dataset format '" + name + "' (known: " + known + ")");
}

}  // namespace rmgen
