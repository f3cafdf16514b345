#include "worker/train/trainer.h"

#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <thread>

#include "common/file.h"
#include "worker/data/batching.h"
#include "worker/data/catalog.h"
#include "worker/model/checkpoint.h"
#include "worker/train/objectives.h"
#include "worker/train/optim.h"

namespace rmgen {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

// A dataset, tokenized, with what evaluation needs per pair.
struct LoadedSet {
  std::string name;
  std::vector<TokenizedPair> pairs;
  std::vector<std::string> subsets;
  std::vector<double> margins;  // score_chosen - score_rejected, 0 when unknown
  DatasetStats stats;
  TokenizeStats tokenize;
  std::string identity;  // what the reference-log-prob cache keys on
};

std::string FileIdentity(const std::string& path) {
  std::error_code ec;
  const auto size = fs::file_size(path, ec);
  const auto mtime = fs::last_write_time(path, ec).time_since_epoch().count();
  return path + "#" + std::to_string(size) + "#" + std::to_string(mtime);
}

std::string DirIdentity(const std::string& dir) {
  std::vector<std::string> parts;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string f = e.path().filename().string();
    if (f == "config.json" || e.path().extension() == ".safetensors") {
      parts.push_back(FileIdentity(e.path().string()));
    }
  }
  std::sort(parts.begin(), parts.end());
  std::string s;
  for (const auto& p : parts) s += p + ";";
  return s;
}

std::string HexHash(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

StatusOr<LoadedSet> LoadSet(const JobSpec& spec, const DatasetRef& ref, const Tokenizer& tok,
                            const TokenizeOptions& to, int64_t limit) {
  ResolvedDataset r;
  if (ref.path.empty()) {
    ASSIGN_OR_RETURN(Catalog c, Catalog::Load(spec.catalog, spec.data_root));
    ASSIGN_OR_RETURN(r, c.Resolve(ref.name));
  } else {
    r.name = ref.name;
    r.path = ref.path;
    r.read.format = ref.format;
    r.read.subset = ref.subset;
    r.read.split = ref.split;
    if (!FileExists(r.path)) {
      return NotFoundError("dataset '" + ref.name + "': file " + r.path + " not found");
    }
  }
  r.read.limit = limit;
  LoadedSet out;
  out.name = ref.name;
  Status st;
  RETURN_IF_ERROR(ReadDataset(
      r.path, r.read,
      [&](PreferencePair&& p) {
        if (!st.ok()) return;
        auto t = TokenizePair(tok, p, to, &out.tokenize);
        if (!t.ok()) {
          st = t.status().WithContext("dataset '" + ref.name + "', pair " + p.id);
          return;
        }
        if (!t->has_value()) return;
        out.pairs.push_back(std::move(**t));
        out.subsets.push_back(p.subset);
        out.margins.push_back(
            p.score_chosen && p.score_rejected ? *p.score_chosen - *p.score_rejected : 0.0);
      },
      &out.stats));
  RETURN_IF_ERROR(st);
  if (out.pairs.empty()) {
    return InvalidArgumentError("dataset '" + ref.name + "' (" + r.path + "): no usable pairs (" +
                                out.stats.ToJson().dump() + ")");
  }
  const AdapterOptions& ao = r.read.adapter;
  out.identity = FileIdentity(r.path) + "|" + r.read.format + "|" + r.read.subset + "|" +
                 r.read.split + "|" + std::to_string(r.read.val_fraction) + "|" +
                 std::to_string(limit) + "|" + ao.prompt_field + "|" + ao.chosen_field + "|" +
                 ao.rejected_field + "|" + ao.pairing + "|" + std::to_string(ao.seed);
  return out;
}

torch::Dtype DtypeOf(const JobSpec& s) {
  return s.dtype == "bfloat16" ? torch::kBFloat16 : torch::kFloat32;
}

// The model of the spec (checkpoint or random init) with the given head.
StatusOr<std::unique_ptr<DecoderLM>> BuildModel(const JobSpec& spec, const std::string& path,
                                                HeadKind head) {
  if (!path.empty()) {
    LoadOptions lo;
    lo.head = head;
    lo.dtype = DtypeOf(spec);
    lo.init_seed = spec.init_seed;
    lo.device = torch::Device(spec.device);
    ASSIGN_OR_RETURN(LoadedModel m, LoadModel(path, lo));
    return std::move(m.model);
  }
  ASSIGN_OR_RETURN(std::string text, ReadFile(spec.model_config));
  ASSIGN_OR_RETURN(ModelConfig c, ParseModelConfig(text, spec.model_config));
  return DecoderLM::RandomInit(c, head, spec.init_seed, DtypeOf(spec), torch::Device(spec.device));
}

torch::Device DeviceOf(const DecoderLM& model) {
  return model.named_parameters().front().second.device();
}

std::string ModelIdentity(const JobSpec& spec, const std::string& path) {
  if (!path.empty()) return "ckpt:" + DirIdentity(path) + "|" + spec.dtype;
  auto text = ReadFile(spec.model_config);
  return "init:" + (text.ok() ? *text : spec.model_config) + "#" + std::to_string(spec.init_seed) +
         "|" + spec.dtype;
}

// Summed response log-probs (2 per pair: chosen, rejected) of every pair, in batches.
std::pair<torch::Tensor, torch::Tensor> AllLogProbs(const DecoderLM& model, const LoadedSet& set,
                                                    int64_t batch_size, int64_t pad_id) {
  const int64_t n = set.pairs.size();
  auto chosen = torch::zeros({n}, torch::kFloat32), rejected = torch::zeros({n}, torch::kFloat32);
  torch::NoGradGuard g;
  for (int64_t s = 0; s < n; s += batch_size) {
    std::vector<int64_t> idx;
    for (int64_t i = s; i < std::min(n, s + batch_size); ++i) idx.push_back(i);
    PairBatch b = Collate(set.pairs, idx, pad_id, DeviceOf(model));
    auto lp = ResponseLogProbs(model, b).cpu();
    const int64_t B = idx.size();
    chosen.slice(0, s, s + B).copy_(lp.slice(0, 0, B));
    rejected.slice(0, s, s + B).copy_(lp.slice(0, B));
  }
  return {chosen, rejected};
}

// Reference log-probs of a set, from the cache or computed (and cached).
StatusOr<std::pair<torch::Tensor, torch::Tensor>> ReferenceLogProbs(
    const DecoderLM& ref, const std::string& ref_identity, const LoadedSet& set,
    const std::string& cache_dir, const std::string& tokenize_identity, int64_t batch_size,
    int64_t pad_id, bool* cache_hit) {
  const std::string key = HexHash(ref_identity + "\n" + set.identity + "\n" + tokenize_identity);
  const std::string path = (fs::path(cache_dir) / ("ref-" + key + ".safetensors")).string();
  *cache_hit = false;
  if (FileExists(path)) {
    auto f = SafetensorsFile::Open(path);
    if (f.ok()) {
      auto c = f->Load("chosen", torch::kFloat32), r = f->Load("rejected", torch::kFloat32);
      const int64_t n = set.pairs.size();
      if (c.ok() && r.ok() && c->numel() == n && r->numel() == n) {
        *cache_hit = true;
        return std::make_pair(*c, *r);
      }
    }
  }
  auto lp = AllLogProbs(ref, set, batch_size, pad_id);
  std::error_code ec;
  fs::create_directories(cache_dir, ec);
  RETURN_IF_ERROR(WriteSafetensors(path, {{"chosen", lp.first}, {"rejected", lp.second}},
                                   {{"format", "pt"}, {"dataset", set.name}}));
  return lp;
}

double PeakRssMb() {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss / 1024.0;
}

// Evaluates one set: per-pair rewards of the chosen kind -> pairwise metrics.
json Evaluate(const std::string& reward, const DecoderLM& model, const LoadedSet& set,
              const torch::Tensor& ref_chosen, const torch::Tensor& ref_rejected, double beta,
              int64_t batch_size, int64_t pad_id) {
  PairwiseMetrics m;
  const int64_t n = set.pairs.size();
  torch::NoGradGuard g;
  const auto t0 = Clock::now();
  for (int64_t s = 0; s < n; s += batch_size) {
    std::vector<int64_t> idx;
    for (int64_t i = s; i < std::min(n, s + batch_size); ++i) idx.push_back(i);
    PairBatch b = Collate(set.pairs, idx, pad_id, DeviceOf(model));
    const int64_t B = idx.size();
    torch::Tensor rewards;  // (2B)
    if (reward == "exrm") {
      rewards = model.Scores(model.Hidden(b.ids, b.mask), b.mask).cpu();
    } else {
      rewards = ResponseLogProbs(model, b).cpu();
      if (reward == "dporm") {
        auto ref = torch::cat({ref_chosen.slice(0, s, s + B), ref_rejected.slice(0, s, s + B)});
        rewards = beta * (rewards - ref);
      } else if (reward == "ref_free_avg") {
        rewards = rewards / b.response.slice(1, 1).sum(1).to(torch::kFloat32).clamp_min(1).cpu();
      }
    }
    for (int64_t i = 0; i < B; ++i) {
      m.Add(rewards[i].item<double>(), rewards[B + i].item<double>(), set.subsets[s + i]);
    }
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  json j = m.ToJson();
  j["reward"] = reward;
  j["seconds"] = seconds;
  j["pairs_per_s"] = n / std::max(seconds, 1e-9);
  j["dropped"] = set.stats.ToJson()["dropped"];
  j["truncated"] = set.tokenize.ToJson();
  return j;
}

struct TrainerState {
  int64_t step = 0;      // optimizer steps done
  int64_t epoch = 0;     // current epoch
  int64_t micro = 0;     // micro-batches of the current epoch consumed
  int64_t samples = 0;   // pairs seen
  int64_t skipped = 0;   // non-finite batches skipped
  std::string spec_key;  // the training-relevant spec, to refuse a mismatched resume
  json ToJson() const {
    return {{"step", step},       {"epoch", epoch},     {"micro", micro},
            {"samples", samples}, {"skipped", skipped}, {"spec_key", spec_key}};
  }
};

// The spec minus runtime settings, and the training data's identity: resuming is only
// allowed into the same job.
std::string SpecKey(const JobSpec& spec, const std::string& train_identity) {
  json j = spec.resolved;
  j.erase("runtime");
  return HexHash(j.dump() + "\n" + train_identity);
}

// Keeps the events of steps <= `last_step` (those the checkpoint being resumed covers), so
// a resumed run does not log the steps it repeats twice.
Status TrimEvents(const std::string& path, int64_t last_step) {
  if (!FileExists(path)) return Status::Ok();
  std::string kept;
  if (last_step > 0) {
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) {
      json e = json::parse(line, nullptr, false);
      if (!e.is_discarded() && e.value("step", int64_t{0}) <= last_step) kept += line + "\n";
    }
  }
  return WriteFileAtomic(path, kept);
}

// SaveCheckpoint swaps folders with two renames; a crash between them leaves no
// `checkpoint` but a complete `checkpoint.old` (or `checkpoint.tmp`). Put it back before
// deciding whether to resume, so the last good state is neither ignored nor deleted.
Status RecoverCheckpointSwap(const std::string& out_dir) {
  const fs::path final_dir = fs::path(out_dir) / "checkpoint";
  if (fs::exists(final_dir)) return Status::Ok();
  for (const char* candidate : {"checkpoint.tmp", "checkpoint.old"}) {
    const fs::path c = fs::path(out_dir) / candidate;
    if (FileExists((c / "trainer_state.json").string())) {
      std::error_code ec;
      fs::rename(c, final_dir, ec);
      if (ec) return InternalError(c.string() + ": cannot restore (" + ec.message() + ")");
      return Status::Ok();
    }
  }
  return Status::Ok();
}

Status SaveCheckpoint(const DecoderLM& model, const AdamW& opt, const TrainerState& st,
                      const std::string& out_dir, const std::string& tokenizer_path) {
  const fs::path final_dir = fs::path(out_dir) / "checkpoint";
  const fs::path tmp = fs::path(out_dir) / "checkpoint.tmp";
  const fs::path old = fs::path(out_dir) / "checkpoint.old";
  std::error_code ec;
  fs::remove_all(tmp, ec);
  SaveOptions so;
  so.tokenizer_dir = fs::absolute(tokenizer_path).parent_path().string();
  RETURN_IF_ERROR(SaveModel(model, tmp.string(), so));
  RETURN_IF_ERROR(WriteSafetensors((tmp / "optimizer.safetensors").string(), opt.StateDict()));
  RETURN_IF_ERROR(
      WriteFileAtomic((tmp / "trainer_state.json").string(), st.ToJson().dump(2) + "\n"));
  fs::remove_all(old, ec);
  // trainer_state.json is written last, so its presence marks a complete folder.
  if (fs::exists(final_dir)) fs::rename(final_dir, old, ec);
  if (ec) return InternalError(final_dir.string() + ": cannot move aside (" + ec.message() + ")");
  fs::rename(tmp, final_dir, ec);
  if (ec) return InternalError(final_dir.string() + ": cannot rename (" + ec.message() + ")");
  fs::remove_all(old, ec);
  return Status::Ok();
}

std::vector<std::vector<int64_t>> EpochBatches(const JobSpec& spec,
                                               const std::vector<int64_t>& lengths, int64_t epoch) {
  const uint64_t seed = spec.seed * 1000003ull + static_cast<uint64_t>(epoch);
  if (spec.length_grouped) return LengthGroupedBatches(lengths, spec.batch_size, seed);
  std::vector<std::vector<int64_t>> out;
  auto perm = SeededPermutation(lengths.size(), seed);
  for (size_t i = 0; i < perm.size(); i += spec.batch_size) {
    out.emplace_back(perm.begin() + i,
                     perm.begin() + std::min(perm.size(), i + size_t(spec.batch_size)));
  }
  return out;
}

class Trainer {
 public:
  Trainer(const JobSpec& spec, std::string out_dir, RunOptions options)
      : spec_(spec), out_(std::move(out_dir)), options_(options) {}

  Status Run() {
    const std::string tok_path = !spec_.tokenizer.empty()
                                     ? spec_.tokenizer
                                     : (fs::path(spec_.model_path) / "tokenizer.model").string();
    if (!FileExists(tok_path)) {
      return NotFoundError("tokenizer: " + tok_path +
                           " not found. HINT: set `tokenizer:` in "
                           "the spec");
    }
    tokenizer_path_ = tok_path;
    ASSIGN_OR_RETURN(tok_, Tokenizer::Load(tok_path));
    pad_id_ = tok_->pad_id() >= 0 ? tok_->pad_id() : tok_->eos_id();
    TokenizeOptions to;
    ASSIGN_OR_RETURN(to.chat_template, ParseChatTemplate(spec_.chat_template));
    to.max_length = spec_.max_length;
    to.max_prompt_length = spec_.max_prompt_length;
    to.too_long =
        spec_.drop_too_long ? TokenizeOptions::TooLong::kDrop : TokenizeOptions::TooLong::kTruncate;
    tokenize_identity_ = FileIdentity(tok_path) + "|" + spec_.chat_template + "|" +
                         std::to_string(to.max_length) + "|" +
                         std::to_string(to.max_prompt_length) + "|" +
                         (spec_.drop_too_long ? "drop" : "truncate");
    if (spec_.kind != JobKind::kEval) {
      ASSIGN_OR_RETURN(train_, LoadSet(spec_, spec_.train_set, *tok_, to, spec_.limit));
    }
    for (const auto& ref : spec_.eval_sets) {
      ASSIGN_OR_RETURN(LoadedSet s, LoadSet(spec_, ref, *tok_, to, 0));
      evals_.push_back(std::move(s));
    }
    return spec_.kind == JobKind::kEval ? RunEval() : RunTraining();
  }

 private:
  bool UsesReference() const {
    return (spec_.kind == JobKind::kDpo && !spec_.reference_free) ||
           (spec_.kind == JobKind::kEval && spec_.eval_reward == "dporm");
  }
  std::string ReferencePath() const {
    return spec_.reference.empty() ? spec_.model_path : spec_.reference;
  }
  std::string CacheDir() const {
    if (!spec_.reference_cache.empty()) return spec_.reference_cache;
    return (fs::path(out_).parent_path() / "ref-cache").string();
  }

  // Reference log-probs of the train set and every eval set, computed (or read from the
  // cache) while the reference is the only model resident.
  Status PrepareReference() {
    if (!UsesReference()) return Status::Ok();
    const std::string ref_path = ReferencePath();
    const std::string identity = ModelIdentity(spec_, ref_path);
    std::unique_ptr<DecoderLM> ref;
    auto compute = [&](const LoadedSet& set, std::pair<torch::Tensor, torch::Tensor>* out) {
      if (!ref) {
        auto m = BuildModel(spec_, ref_path, HeadKind::kLanguageModel);
        if (!m.ok()) return m.status().WithContext("reference model");
        ref = std::move(m).value();
      }
      bool hit = false;
      ASSIGN_OR_RETURN(*out, ReferenceLogProbs(*ref, identity, set, CacheDir(), tokenize_identity_,
                                               spec_.eval_batch_size, pad_id_, &hit));
      ref_cache_hits_ += hit;
      ref_cache_misses_ += !hit;
      return Status::Ok();
    };
    if (spec_.kind == JobKind::kDpo) RETURN_IF_ERROR(compute(train_, &train_ref_));
    eval_ref_.resize(evals_.size());
    for (size_t i = 0; i < evals_.size(); ++i) RETURN_IF_ERROR(compute(evals_[i], &eval_ref_[i]));
    if (spec_.live_reference && spec_.kind == JobKind::kDpo) live_ref_ = std::move(ref);
    return Status::Ok();
  }

  json EvalAll(const DecoderLM& model, const std::string& reward) {
    json out = json::object();
    for (size_t i = 0; i < evals_.size(); ++i) {
      torch::Tensor rc, rl;
      if (i < eval_ref_.size()) std::tie(rc, rl) = eval_ref_[i];
      out[evals_[i].name] =
          Evaluate(reward, model, evals_[i], rc, rl, spec_.beta, spec_.eval_batch_size, pad_id_);
    }
    return out;
  }

  Status RunEval() {
    RETURN_IF_ERROR(PrepareReference());
    const HeadKind head =
        spec_.eval_reward == "exrm" ? HeadKind::kReward : HeadKind::kLanguageModel;
    ASSIGN_OR_RETURN(auto model, BuildModel(spec_, spec_.model_path, head));
    json metrics = {{"kind", "eval"}, {"eval", EvalAll(*model, spec_.eval_reward)}};
    return WriteFileAtomic((fs::path(out_) / "metrics.json").string(), metrics.dump(2) + "\n");
  }

  Status RunTraining() {
    const HeadKind head =
        spec_.kind == JobKind::kReward ? HeadKind::kReward : HeadKind::kLanguageModel;
    const fs::path ckpt = fs::path(out_) / "checkpoint";
    RETURN_IF_ERROR(RecoverCheckpointSwap(out_));
    TrainerState st;
    st.spec_key = SpecKey(spec_, train_.identity);
    const bool resume = FileExists((ckpt / "trainer_state.json").string());
    if (resume) {
      ASSIGN_OR_RETURN(std::string text, ReadFile((ckpt / "trainer_state.json").string()));
      json j = json::parse(text, nullptr, false);
      if (j.is_discarded() || !j.contains("step")) {
        return DataLossError((ckpt / "trainer_state.json").string() + ": corrupt");
      }
      if (j.value("spec_key", "") != st.spec_key) {
        return FailedPreconditionError(ckpt.string() +
                                       ": written by a different spec; resume needs the same spec. "
                                       "HINT: use a fresh --out folder");
      }
      st.step = j["step"];
      st.epoch = j["epoch"];
      st.micro = j["micro"];
      st.samples = j["samples"];
      st.skipped = j["skipped"];
    }
    RETURN_IF_ERROR(PrepareReference());
    ASSIGN_OR_RETURN(auto model,
                     BuildModel(spec_, resume ? ckpt.string() : spec_.model_path, head));
    model->SetRequiresGrad(true);
    model->SetGradientCheckpointing(spec_.gradient_checkpointing);
    AdamWOptions ao;
    ao.lr = spec_.learning_rate;
    ao.beta1 = spec_.adam_beta1;
    ao.beta2 = spec_.adam_beta2;
    ao.eps = spec_.adam_epsilon;
    ao.weight_decay = spec_.weight_decay;
    AdamW opt(model->parameters(), ao);
    if (resume) {
      ASSIGN_OR_RETURN(SafetensorsFile f,
                       SafetensorsFile::Open((ckpt / "optimizer.safetensors").string()));
      NamedTensors state;
      for (const auto& [name, e] : f.entries()) {
        ASSIGN_OR_RETURN(torch::Tensor t,
                         f.Load(name, name == "step" ? torch::kInt64 : torch::kFloat32));
        state.emplace_back(name, t);
      }
      RETURN_IF_ERROR(opt.LoadStateDict(state));
    }

    std::vector<int64_t> lengths;
    for (const auto& p : train_.pairs) {
      lengths.push_back(std::max(p.chosen.size(), p.rejected.size()));
    }
    const int64_t micro_per_epoch =
        (int64_t(train_.pairs.size()) + spec_.batch_size - 1) / spec_.batch_size;
    const int64_t steps_per_epoch =
        (micro_per_epoch + spec_.gradient_accumulation - 1) / spec_.gradient_accumulation;
    const int64_t total = spec_.max_steps > 0 ? spec_.max_steps : spec_.epochs * steps_per_epoch;
    const int64_t warmup = spec_.warmup_steps > 0
                               ? spec_.warmup_steps
                               : static_cast<int64_t>(std::ceil(total * spec_.warmup_ratio));

    const std::string events_path = (fs::path(out_) / "events.jsonl").string();
    RETURN_IF_ERROR(TrimEvents(events_path, resume ? st.step : 0));
    std::ofstream events(events_path, std::ios::app);
    const bool tty = options_.progress && ::isatty(2);
    const auto t_start = Clock::now();
    int64_t run_steps = 0, run_tokens = 0, run_pairs = 0;
    auto batches = EpochBatches(spec_, lengths, st.epoch);
    StepMetrics last;
    while (st.step < total) {
      if (st.micro >= static_cast<int64_t>(batches.size())) {
        ++st.epoch;
        st.micro = 0;
        batches = EpochBatches(spec_, lengths, st.epoch);
      }
      const auto t0 = Clock::now();
      const int64_t group =
          std::min<int64_t>(spec_.gradient_accumulation, batches.size() - st.micro);
      StepMetrics m;
      int64_t tokens = 0, pairs = 0;
      bool finite = true;
      opt.ZeroGrad();
      for (int64_t k = 0; k < group; ++k) {
        const auto& idx = batches[st.micro + k];
        PairBatch b = Collate(train_.pairs, idx, pad_id_, DeviceOf(*model));
        torch::Tensor loss;
        // The forward under bf16 autocast when asked; backward outside it, as usual.
        std::optional<compat::AutocastGuard> autocast;
        if (spec_.bf16) autocast.emplace(DeviceOf(*model).type(), at::kBFloat16, true);
        if (spec_.kind == JobKind::kReward) {
          torch::Tensor margin;
          if (spec_.use_margin) {
            std::vector<float> mv;
            for (int64_t i : idx) mv.push_back(static_cast<float>(train_.margins[i]));
            margin = torch::tensor(mv);
          }
          loss = RewardLoss(*model, b, margin, spec_.center_coefficient, &m);
        } else if (spec_.kind == JobKind::kDpo) {
          torch::Tensor ref;
          if (spec_.reference_free) {
            ref = torch::zeros({2 * b.pairs}, torch::kFloat32);
          } else if (live_ref_) {
            ref = ResponseLogProbs(*live_ref_, b);
          } else {
            auto ids = torch::tensor(idx, torch::kInt64);
            ref = torch::cat(
                {train_ref_.first.index_select(0, ids), train_ref_.second.index_select(0, ids)});
          }
          loss = DpoLoss(*model, b, ref, spec_.beta, spec_.label_smoothing, &m);
        } else {
          loss = SftLoss(*model, b, &m);
        }
        autocast.reset();
        if (!std::isfinite(loss.item<double>())) {
          finite = false;
          break;
        }
        (loss / double(group)).backward();
        tokens += b.tokens;
        pairs += b.pairs;
      }
      double grad_norm = finite ? ClipGradNorm(model->parameters(), spec_.max_grad_norm) : NAN;
      if (!std::isfinite(grad_norm)) finite = false;
      st.micro += group;
      if (!finite && !spec_.skip_nonfinite) {
        return InternalError("non-finite loss or gradient at step " + std::to_string(st.step + 1) +
                             " (epoch " + std::to_string(st.epoch) +
                             "). HINT: lower train.learning_rate, or set "
                             "train.skip_nonfinite to skip such batches");
      }
      if (!finite) {
        // The step is spent without an update, so a run of bad batches cannot loop forever.
        ++st.skipped;
        opt.ZeroGrad();
      } else {
        const double lr = ScheduledLr(spec_.schedule, spec_.learning_rate, st.step, total, warmup);
        opt.Step(lr);
        st.samples += pairs;
        run_tokens += tokens;
        run_pairs += pairs;
        for (auto& [k, v] : m) v /= double(group);
        last = m;
        const double step_s = std::chrono::duration<double>(Clock::now() - t0).count();
        const double run_s = std::chrono::duration<double>(Clock::now() - t_start).count();
        const double eta = run_s / (run_steps + 1) * (total - st.step - 1);
        if ((st.step + 1) % spec_.log_every == 0 || st.step + 1 == total) {
          json e = {{"step", st.step + 1},
                    {"epoch", st.epoch + double(st.micro) / double(batches.size())},
                    {"lr", lr},
                    {"grad_norm", grad_norm},
                    {"tokens/s", tokens / std::max(step_s, 1e-9)},
                    {"pairs/s", pairs / std::max(step_s, 1e-9)},
                    {"samples", st.samples},
                    {"eta_s", eta},
                    {"peak_rss_mb", PeakRssMb()}};
          for (const auto& [k, v] : m) e[k] = v;
          if (spec_.kind == JobKind::kReward) e["rewards/accuracies"] = m["accuracy"];
          events << e.dump() << "\n";
          events.flush();
        }
        if (tty) {
          std::fprintf(stderr, "\r%s step %lld/%lld  loss %.4f  lr %.2e  %.0f tok/s  eta %.0fs   ",
                       JobKindName(spec_.kind), (long long)(st.step + 1), (long long)total,
                       m["loss"], lr, run_tokens / std::max(run_s, 1e-9), eta);
        }
      }
      ++st.step;
      ++run_steps;
      // Interval checkpoints and early stops apply to skipped steps too.
      const bool interval = spec_.checkpoint_every > 0 && st.step % spec_.checkpoint_every == 0;
      const bool stop = options_.stop_after_steps > 0 && run_steps >= options_.stop_after_steps;
      if ((interval || stop) && st.step < total) {
        RETURN_IF_ERROR(SaveCheckpoint(*model, opt, st, out_, tokenizer_path_));
      }
      if (stop && st.step < total) {
        if (tty) std::fprintf(stderr, "\n");
        return Status(StatusCode::kCancelled,
                      "stopped after " + std::to_string(run_steps) + " steps, checkpoint saved");
      }
    }
    if (tty) std::fprintf(stderr, "\n");
    RETURN_IF_ERROR(SaveCheckpoint(*model, opt, st, out_, tokenizer_path_));
    const double run_s = std::chrono::duration<double>(Clock::now() - t_start).count();
    json metrics = {
        {"kind", JobKindName(spec_.kind)},
        {"train",
         {{"steps", st.step},
          {"samples", st.samples},
          {"skipped_nonfinite", st.skipped},
          {"final", last},
          {"seconds_this_run", run_s},
          {"tokens_per_s", run_tokens / std::max(run_s, 1e-9)},
          {"pairs_per_s", run_pairs / std::max(run_s, 1e-9)},
          {"dataset", train_.stats.ToJson()},
          {"truncated", train_.tokenize.ToJson()},
          {"reference_cache", {{"hits", ref_cache_hits_}, {"misses", ref_cache_misses_}}}}}};
    torch::NoGradGuard g;
    if (spec_.kind == JobKind::kReward) {
      metrics["eval"] = EvalAll(*model, "exrm");
    } else if (spec_.kind == JobKind::kDpo) {
      metrics["eval"] = EvalAll(*model, spec_.reference_free ? "ref_free_sum" : "dporm");
    } else {
      metrics["eval"] = json::object();
    }
    return WriteFileAtomic((fs::path(out_) / "metrics.json").string(), metrics.dump(2) + "\n");
  }

  const JobSpec& spec_;
  std::string out_;
  RunOptions options_;
  std::unique_ptr<Tokenizer> tok_;
  std::string tokenizer_path_, tokenize_identity_;
  int64_t pad_id_ = 0;
  LoadedSet train_;
  std::vector<LoadedSet> evals_;
  std::pair<torch::Tensor, torch::Tensor> train_ref_;
  std::vector<std::pair<torch::Tensor, torch::Tensor>> eval_ref_;
  std::unique_ptr<DecoderLM> live_ref_;
  int64_t ref_cache_hits_ = 0, ref_cache_misses_ = 0;
};

}  // namespace

Status RunJob(const JobSpec& spec, const std::string& out_dir, const RunOptions& options) {
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) return InternalError(out_dir + ": cannot create (" + ec.message() + ")");
  if (spec.device != "cpu" && !torch::cuda::is_available()) {
    return FailedPreconditionError("runtime.device is '" + spec.device +
                                   "' but no CUDA device is usable here (libtorch " +
                                   TORCH_VERSION + ")");
  }
  torch::set_num_threads(spec.threads > 0 ? spec.threads
                                          : std::max(1u, std::thread::hardware_concurrency()));
  RETURN_IF_ERROR(WriteFileAtomic((fs::path(out_dir) / "spec.resolved.json").string(),
                                  spec.resolved.dump(2) + "\n"));
  try {
    Trainer t(spec, out_dir, options);
    return t.Run();
  } catch (const std::exception& e) {
    return InternalError(std::string("rmgen-train: ") + e.what());
  }
}

}  // namespace rmgen
