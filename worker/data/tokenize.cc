#include "worker/data/tokenize.h"

#include <algorithm>

namespace rmgen {
namespace {

struct Side {
  std::vector<int32_t> prompt, answer;
};

// The templated prompt, encoded so that joint prompt + response encodings reuse its head.
class PromptEncoding {
 public:
  PromptEncoding(const Tokenizer& tok, ChatTemplate t, std::string text)
      : tok_(tok), plain_(t == ChatTemplate::kNone), text_(std::move(text)) {
    if (!plain_) head_ = tok.EncodeHeadWithSpecials(text_, &tail_);
    ids_ = Joint("");
  }
  const std::vector<int>& ids() const { return ids_; }

  // Encoding of prompt text + response, as one string would be encoded.
  std::vector<int> Joint(const std::string& response) const {
    if (!plain_ && tok_.ContainsSpecial(response)) {
      return tok_.EncodeWithSpecials(text_ + response);
    }
    std::vector<int> out = head_;
    std::vector<int> rest = tok_.EncodePlain(text_.substr(tail_) + response);
    out.insert(out.end(), rest.begin(), rest.end());
    return out;
  }

 private:
  const Tokenizer& tok_;
  bool plain_;
  std::string text_;
  size_t tail_ = 0;
  std::vector<int> head_, ids_;
};

// TRL's build_tokenized_answer: joint encoding, split where the prompt ends (one token
// earlier when the joint encoding merged across the boundary).
Side SplitJoint(const PromptEncoding& prompt, const std::string& response) {
  const std::vector<int> full = prompt.Joint(response);
  const std::vector<int>& p = prompt.ids();
  size_t start = std::min(p.size(), full.size());
  if (!std::equal(p.begin(), p.begin() + start, full.begin())) start = start > 0 ? start - 1 : 0;
  return {std::vector<int32_t>(full.begin(), full.begin() + start),
          std::vector<int32_t>(full.begin() + start, full.end())};
}

}  // namespace

nlohmann::json TokenizeStats::ToJson() const {
  return {{"pairs", pairs},
          {"prompt_truncated", prompt_truncated},
          {"response_truncated", response_truncated},
          {"dropped_too_long", dropped_too_long},
          {"dropped_template", dropped_template}};
}

StatusOr<std::optional<TokenizedPair>> TokenizePair(const Tokenizer& tok, const PreferencePair& p,
                                                    const TokenizeOptions& o,
                                                    TokenizeStats* stats) {
  auto rendered = RenderChat(o.chat_template, p.prompt, true);
  if (!rendered.ok()) {
    if (rendered.status().code() != StatusCode::kInvalidArgument) return rendered.status();
    // "message 3, field 'role': roles must alternate ..." -> the reason without the index.
    const std::string& m = rendered.status().message();
    const size_t at = m.find("': ");
    ++stats->dropped_template[std::string(ChatTemplateName(o.chat_template)) + ": " +
                              (at == std::string::npos ? m : m.substr(at + 3))];
    return std::optional<TokenizedPair>();
  }
  std::string prompt_text = std::move(rendered).value();
  const PromptEncoding prompt(tok, o.chat_template, std::move(prompt_text));
  Side c = SplitJoint(prompt, ResponseText(p.chosen));
  Side r = SplitJoint(prompt, ResponseText(p.rejected));
  for (Side* s : {&c, &r}) {
    if (tok.bos_id() >= 0 && (s->prompt.empty() || s->prompt.front() != tok.bos_id())) {
      s->prompt.insert(s->prompt.begin(), tok.bos_id());
    }
    // EOS, unless the response's text already ended in it (as TRL's DPOTrainer 0.9).
    if (tok.eos_id() >= 0 && (s->answer.empty() || s->answer.back() != tok.eos_id())) {
      s->answer.push_back(tok.eos_id());
    }
  }
  const size_t longer = std::max(c.answer.size(), r.answer.size());
  const size_t max_len = static_cast<size_t>(o.max_length);
  const size_t max_prompt = static_cast<size_t>(o.max_prompt_length);
  bool prompt_cut = false, answer_cut = false;
  for (Side* s : {&c, &r}) {
    if (s->prompt.size() + longer > max_len && s->prompt.size() > max_prompt) {
      s->prompt.erase(s->prompt.begin(), s->prompt.end() - max_prompt);  // keep the end
      prompt_cut = true;
    }
  }
  for (Side* s : {&c, &r}) {
    if (s->prompt.size() + longer > max_len) {
      const size_t keep = max_len > max_prompt ? max_len - max_prompt : 0;
      if (s->answer.size() > keep) {
        s->answer.resize(keep);
        answer_cut = true;
      }
    }
  }
  if ((prompt_cut || answer_cut) && o.too_long == TokenizeOptions::TooLong::kDrop) {
    ++stats->dropped_too_long;
    return std::optional<TokenizedPair>();
  }
  stats->prompt_truncated += prompt_cut;
  stats->response_truncated += answer_cut;
  ++stats->pairs;
  TokenizedPair out;
  out.chosen_prompt_len = static_cast<int32_t>(c.prompt.size());
  out.rejected_prompt_len = static_cast<int32_t>(r.prompt.size());
  out.chosen = std::move(c.prompt);
  out.chosen.insert(out.chosen.end(), c.answer.begin(), c.answer.end());
  out.rejected = std::move(r.prompt);
  out.rejected.insert(out.rejected.end(), r.answer.begin(), r.answer.end());
  return std::optional<TokenizedPair>(std::move(out));
}

}  // namespace rmgen
