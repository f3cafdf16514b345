// rmgen-model: create, convert and run Hugging Face-layout checkpoints.
//
//   rmgen-model init --config CONFIG.json --out DIR [--head lm|reward] [--seed N]
//                    [--dtype float32|bfloat16] [--max-shard-bytes N] [--tokenizer-dir D]
//   rmgen-model convert --in DIR --out DIR [--head lm|reward] [--dtype ...]
//                    [--max-shard-bytes N]
//   rmgen-model forward --model DIR --inputs IN.safetensors --out OUT.safetensors
//                    [--head lm|reward] [--threads N]
//       IN holds input_ids and attention_mask (B, T) int64 and, for lm, response_mask;
//       OUT gets logits (B, T, V) and logps (B,) for lm, scores (B,) for reward.
//   rmgen-model demo --config-dir configs/models --tokenizer FILE --out DIR [--threads N]
//       Every family end to end: random init, save (sharded for one), reload, bit-identity
//       check, chat-templated scoring of a preference pair with both heads.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "common/file.h"
#include "worker/data/chat_template.h"
#include "worker/data/tokenizer.h"
#include "worker/model/checkpoint.h"

namespace rmgen {
namespace {

namespace fs = std::filesystem;

struct Args {
  std::map<std::string, std::string> kv;
  std::string Get(const std::string& k, const std::string& def = "") const {
    auto it = kv.find(k);
    return it == kv.end() ? def : it->second;
  }
};

StatusOr<Args> ParseArgs(int argc, char** argv, int first) {
  Args a;
  for (int i = first; i < argc; ++i) {
    std::string k = argv[i];
    if (k.rfind("--", 0) != 0 || i + 1 >= argc) {
      return InvalidArgumentError("expected --option VALUE pairs, got '" + k + "'");
    }
    a.kv[k.substr(2)] = argv[++i];
  }
  return a;
}

StatusOr<HeadKind> ParseHead(const std::string& s) {
  if (s == "lm" || s.empty()) return HeadKind::kLanguageModel;
  if (s == "reward") return HeadKind::kReward;
  return InvalidArgumentError("--head: expected lm or reward, got '" + s + "'");
}

StatusOr<torch::Dtype> ParseDtype(const std::string& s) {
  if (s.empty() || s == "float32") return torch::kFloat32;
  if (s == "bfloat16") return torch::kBFloat16;
  if (s == "float16") return torch::kFloat16;
  return InvalidArgumentError("--dtype: expected float32, bfloat16 or float16, got '" + s + "'");
}

StatusOr<SaveOptions> SaveOptionsFrom(const Args& a) {
  SaveOptions o;
  ASSIGN_OR_RETURN(o.dtype, ParseDtype(a.Get("dtype")));
  if (!a.Get("max-shard-bytes").empty()) o.max_shard_bytes = std::stoull(a.Get("max-shard-bytes"));
  o.tokenizer_dir = a.Get("tokenizer-dir");
  return o;
}

Status Init(const Args& a) {
  if (a.Get("config").empty() || a.Get("out").empty()) {
    return InvalidArgumentError("init needs --config and --out");
  }
  ASSIGN_OR_RETURN(std::string text, ReadFile(a.Get("config")));
  ASSIGN_OR_RETURN(ModelConfig config, ParseModelConfig(text, a.Get("config")));
  ASSIGN_OR_RETURN(HeadKind head, ParseHead(a.Get("head")));
  ASSIGN_OR_RETURN(SaveOptions save, SaveOptionsFrom(a));
  auto model =
      DecoderLM::RandomInit(config, head, std::stoull(a.Get("seed", "0")), torch::kFloat32);
  RETURN_IF_ERROR(SaveModel(*model, a.Get("out"), save));
  std::printf("wrote %s (%lld parameters)\n", a.Get("out").c_str(),
              static_cast<long long>(model->NumParameters()));
  return Status::Ok();
}

Status Convert(const Args& a) {
  if (a.Get("in").empty() || a.Get("out").empty()) {
    return InvalidArgumentError("convert needs --in and --out");
  }
  LoadOptions lo;
  ASSIGN_OR_RETURN(lo.head, ParseHead(a.Get("head")));
  ASSIGN_OR_RETURN(LoadedModel loaded, LoadModel(a.Get("in"), lo));
  ASSIGN_OR_RETURN(SaveOptions save, SaveOptionsFrom(a));
  if (save.tokenizer_dir.empty()) save.tokenizer_dir = a.Get("in");
  return SaveModel(*loaded.model, a.Get("out"), save);
}

Status Forward(const Args& a) {
  LoadOptions lo;
  ASSIGN_OR_RETURN(lo.head, ParseHead(a.Get("head")));
  ASSIGN_OR_RETURN(LoadedModel loaded, LoadModel(a.Get("model"), lo));
  ASSIGN_OR_RETURN(SafetensorsFile in, SafetensorsFile::Open(a.Get("inputs")));
  ASSIGN_OR_RETURN(torch::Tensor ids, in.Load("input_ids", torch::kInt64));
  ASSIGN_OR_RETURN(torch::Tensor mask, in.Load("attention_mask", torch::kInt64));
  torch::NoGradGuard no_grad;
  NamedTensors out;
  auto hidden = loaded.model->Hidden(ids, mask);
  if (lo.head == HeadKind::kReward) {
    out.emplace_back("scores", loaded.model->Scores(hidden, mask));
  } else {
    out.emplace_back("logits", loaded.model->Logits(hidden));
    if (in.Has("response_mask")) {
      ASSIGN_OR_RETURN(torch::Tensor resp, in.Load("response_mask", torch::kInt64));
      out.emplace_back("logps", loaded.model->SequenceLogProbs(ids, mask, resp));
    }
  }
  return WriteSafetensors(a.Get("out"), out);
}

// Right-pads prompt+response rows into (B, T) ids / mask / response mask.
struct Batch {
  torch::Tensor ids, mask, response;
};
Batch MakeBatch(const std::vector<std::vector<int>>& prompts,
                const std::vector<std::vector<int>>& responses, int pad) {
  int64_t T = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    T = std::max<int64_t>(T, prompts[i].size() + responses[i].size());
  }
  const int64_t B = prompts.size();
  Batch b{torch::full({B, T}, pad, torch::kInt64), torch::zeros({B, T}, torch::kInt64),
          torch::zeros({B, T}, torch::kInt64)};
  for (int64_t r = 0; r < B; ++r) {
    int64_t t = 0;
    for (int id : prompts[r]) b.ids[r][t] = id, b.mask[r][t++] = 1;
    for (int id : responses[r]) b.ids[r][t] = id, b.mask[r][t] = 1, b.response[r][t++] = 1;
  }
  return b;
}

Status Demo(const Args& a) {
  const std::string out_dir = a.Get("out", "rmgen-demo");
  const std::string config_dir = a.Get("config-dir", "configs/models");
  ASSIGN_OR_RETURN(auto tok, Tokenizer::Load(a.Get("tokenizer")));
  const std::vector<Message> prompt = {
      {"user", "What is the boiling point of water at sea level?"}};
  const std::string chosen = "100 degrees Celsius, or 212 degrees Fahrenheit.";
  const std::string rejected = "It depends on the color of the kettle.";
  for (Family f : kAllFamilies) {
    const auto t0 = std::chrono::steady_clock::now();
    const std::string name = std::string("tiny-") + FamilyModelType(f);
    const std::string cfg_path = (fs::path(config_dir) / (name + ".json")).string();
    ASSIGN_OR_RETURN(std::string text, ReadFile(cfg_path));
    ASSIGN_OR_RETURN(ModelConfig config, ParseModelConfig(text, cfg_path));
    if (config.vocab_size < tok->vocab_size()) {
      return InvalidArgumentError(cfg_path +
                                  ": field 'vocab_size': smaller than the "
                                  "tokenizer's " +
                                  std::to_string(tok->vocab_size()));
    }
    // The chat template of the family, or zephyr where the family has none (llama).
    std::string tmpl_name = DefaultChatTemplateName(f);
    if (tmpl_name == "none" || (tmpl_name == "gemma" && !tok->PieceToId("<start_of_turn>"))) {
      tmpl_name = "zephyr";
    }
    ASSIGN_OR_RETURN(ChatTemplate tmpl, ParseChatTemplate(tmpl_name));
    ASSIGN_OR_RETURN(std::vector<int> p, EncodeChat(*tok, tmpl, prompt, true));
    std::vector<int> yw = tok->EncodePlain(chosen), yl = tok->EncodePlain(rejected);
    yw.push_back(tok->eos_id());
    yl.push_back(tok->eos_id());
    Batch batch = MakeBatch({p, p}, {yw, yl}, tok->eos_id());

    for (HeadKind head : {HeadKind::kLanguageModel, HeadKind::kReward}) {
      const bool reward = head == HeadKind::kReward;
      auto model = DecoderLM::RandomInit(config, head, 1234, torch::kFloat32);
      const std::string dir = (fs::path(out_dir) / (name + (reward ? "-rm" : "-lm"))).string();
      SaveOptions so;
      if (f == Family::kMistral) so.max_shard_bytes = 64 << 10;  // exercise sharding
      so.tokenizer_dir = fs::path(a.Get("tokenizer")).parent_path().string();
      RETURN_IF_ERROR(SaveModel(*model, dir, so));
      LoadOptions lo;
      lo.head = head;
      ASSIGN_OR_RETURN(LoadedModel back, LoadModel(dir, lo));
      for (size_t i = 0; i < model->named_parameters().size(); ++i) {
        if (!torch::equal(model->named_parameters()[i].second,
                          back.model->named_parameters()[i].second)) {
          return InternalError(dir + ": tensor " + model->named_parameters()[i].first +
                               " changed in save -> load");
        }
      }
      torch::NoGradGuard no_grad;
      if (reward) {
        auto s = back.model->Scores(back.model->Hidden(batch.ids, batch.mask), batch.mask);
        std::printf("  %-13s reward  r(chosen)=%+.5f r(rejected)=%+.5f\n", name.c_str(),
                    s[0].item<float>(), s[1].item<float>());
      } else {
        auto lp = back.model->SequenceLogProbs(batch.ids, batch.mask, batch.response);
        std::printf("  %-13s policy  logp(chosen)=%.3f logp(rejected)=%.3f\n", name.c_str(),
                    lp[0].item<float>(), lp[1].item<float>());
      }
    }
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    std::printf(
        "%s: template %s, prompt %zu tokens, saved + reloaded bit-identically, "
        "%.0f ms\n",
        name.c_str(), tmpl_name.c_str(), p.size(), ms);
  }
  std::printf("checkpoints in %s (Hugging Face layout)\n", out_dir.c_str());
  return Status::Ok();
}

}  // namespace
}  // namespace rmgen

int main(int argc, char** argv) {
  using namespace rmgen;
  if (argc < 2) {
    std::fprintf(stderr, "usage: rmgen-model init|convert|forward|demo [--option VALUE ...]\n");
    return 2;
  }
  const std::string cmd = argv[1];
  auto args = ParseArgs(argc, argv, 2);
  if (!args.ok()) {
    std::fprintf(stderr, "rmgen-model: %s\n", args.status().message().c_str());
    return 2;
  }
  const int threads = std::stoi(args->Get("threads", "0"));
  torch::set_num_threads(threads > 0 ? threads : std::max(1u, std::thread::hardware_concurrency()));
  Status st;
  try {
    if (cmd == "init") {
      st = Init(*args);
    } else if (cmd == "convert") {
      st = Convert(*args);
    } else if (cmd == "forward") {
      st = Forward(*args);
    } else if (cmd == "demo") {
      st = Demo(*args);
    } else {
      std::fprintf(stderr, "rmgen-model: unknown command '%s'\n", cmd.c_str());
      return 2;
    }
  } catch (const std::exception& e) {
    st = InternalError(e.what());
  }
  if (!st.ok()) {
    std::fprintf(stderr, "rmgen-model %s: %s\n", cmd.c_str(), st.message().c_str());
    return 1;
  }
  return 0;
}
