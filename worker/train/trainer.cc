#include "worker/train/trainer.h"

#include <signal.h>
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
#include "jobspec/events.h"
#include "jobspec/run_dir.h"
#include "worker/comm/communicator.h"
#include "worker/data/batching.h"
#include "worker/data/catalog.h"
#include "worker/model/checkpoint.h"
#include "worker/train/data_parallel.h"
#include "worker/train/evaluate.h"
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

// `exclude_holdout`: leave out that share of the prompts (data.holdout, for the training set).
StatusOr<LoadedSet> LoadSet(const JobSpec& spec, const DatasetRef& ref, const Tokenizer& tok,
                            const TokenizeOptions& to, int64_t limit, double exclude_holdout) {
  ResolvedDataset r;
  if (ref.path.empty()) {
    ASSIGN_OR_RETURN(Catalog c, Catalog::Load(spec.catalog, spec.data_root));
    ASSIGN_OR_RETURN(r, c.Resolve(ref.catalog_ref.empty() ? ref.name : ref.catalog_ref));
    if (ref.holdout > 0) {
      r.read.holdout = ref.holdout;  // only the held-out slice
      r.read.holdout_only = true;
    }
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
  if (exclude_holdout > 0) {
    r.read.holdout = exclude_holdout;
    r.read.holdout_only = false;
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
  out.identity =
      FileIdentity(r.path) + "|" + r.read.format + "|" + r.read.subset + "|" + r.read.split + "|" +
      std::to_string(r.read.val_fraction) + "|" +
      // (only with a holdout, so identities from before holdouts stay the same)
      (r.read.holdout > 0 ? std::to_string(r.read.holdout) + (r.read.holdout_only ? "only|" : "|")
                          : std::string()) +
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

// Reference log-probs of a set, from the cache or computed (and cached), each rank computing
// its share. Every rank ends with all of them.
StatusOr<std::pair<torch::Tensor, torch::Tensor>> ReferenceLogProbs(
    Communicator* comm, const DecoderLM& ref, const std::string& ref_identity, const LoadedSet& set,
    const std::string& cache_dir, const std::string& tokenize_identity, int64_t batch_size,
    int64_t pad_id, PairLayout layout, bool* cache_hit) {
  const std::string key = HexHash(ref_identity + "\n" + set.identity + "\n" + tokenize_identity);
  const std::string path = (fs::path(cache_dir) / ("ref-" + key + ".safetensors")).string();
  const int64_t n = set.pairs.size();
  std::pair<torch::Tensor, torch::Tensor> cached;
  bool hit = false;
  if (FileExists(path)) {
    auto f = SafetensorsFile::Open(path);
    if (f.ok()) {
      auto c = f->Load("chosen", torch::kFloat32), r = f->Load("rejected", torch::kFloat32);
      if (c.ok() && r.ok() && c->numel() == n && r->numel() == n) {
        hit = true;
        cached = {*c, *r};
      }
    }
  }
  // Ranks agree: compute unless every rank could read the cache.
  auto miss = torch::full({1}, hit ? 0.0f : 1.0f,
                          torch::TensorOptions().dtype(torch::kFloat32).device(DeviceOf(ref)));
  RETURN_IF_ERROR(comm->AllReduce(TensorBuffer(miss), ReduceOp::kMax)->Wait());
  *cache_hit = miss.item<float>() == 0.0f;
  if (*cache_hit) return cached;
  const auto [begin, end] = ShardRange(n, comm->rank(), comm->size());
  ASSIGN_OR_RETURN(
      torch::Tensor all,
      GatherRows(comm, RangeLogProbs(ref, set.pairs, begin, end, batch_size, pad_id, layout), n,
                 DeviceOf(ref)));
  std::pair<torch::Tensor, torch::Tensor> lp = {all.select(1, 0).contiguous(),
                                                all.select(1, 1).contiguous()};
  if (comm->rank() == 0) {
    std::error_code ec;
    fs::create_directories(cache_dir, ec);
    RETURN_IF_ERROR(WriteSafetensors(path, {{"chosen", lp.first}, {"rejected", lp.second}},
                                     {{"format", "pt"}, {"dataset", set.name}}));
  }
  return lp;
}

double PeakRssMb() {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss / 1024.0;
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

// Every rank agrees on `local` (OK only when it is OK on every rank); a rank that failed
// contributes its message to the log, the others learn that one failed.
Status Agree(Communicator* comm, const Status& local, torch::Device device, const char* what) {
  if (comm->size() == 1) return local;
  auto flag = torch::full({1}, local.ok() ? 0.0f : 1.0f,
                          torch::TensorOptions().dtype(torch::kFloat32).device(device));
  Status s = comm->AllReduce(TensorBuffer(flag), ReduceOp::kMax)->Wait();
  if (!s.ok()) return s;
  if (!local.ok()) return local;
  if (flag.item<float>() != 0.0f) {
    return InternalError(std::string(what) + " failed on another rank (see its log)");
  }
  return Status::Ok();
}

// All ranks: rank 0 writes the model, every rank its optimizer files (ZeRO-1) into
// checkpoint.tmp; rank 0 then writes trainer_state.json (last: it marks a complete folder)
// and swaps folders.
Status SaveCheckpoint(Communicator* comm, const DecoderLM& model, const DataParallel& dp,
                      const TrainerState& st, const std::string& out_dir,
                      const std::string& tokenizer_path) {
  const fs::path final_dir = fs::path(out_dir) / "checkpoint";
  const fs::path tmp = fs::path(out_dir) / "checkpoint.tmp";
  const fs::path old = fs::path(out_dir) / "checkpoint.old";
  const torch::Device device = DeviceOf(model);
  std::error_code ec;
  Status s;
  if (comm->rank() == 0) {
    fs::remove_all(tmp, ec);
    SaveOptions so;
    so.tokenizer_dir = fs::absolute(tokenizer_path).parent_path().string();
    s = SaveModel(model, tmp.string(), so);
  }
  RETURN_IF_ERROR(Agree(comm, s, device, "writing the checkpoint's model"));
  RETURN_IF_ERROR(Agree(comm, dp.SaveOptimizer(tmp.string()), device,
                        "writing the checkpoint's optimizer state"));
  if (comm->rank() == 0) {
    s = WriteFileAtomic((tmp / "trainer_state.json").string(), st.ToJson().dump(2) + "\n");
    fs::remove_all(old, ec);
    if (s.ok() && fs::exists(final_dir)) fs::rename(final_dir, old, ec);
    if (s.ok() && ec) {
      s = InternalError(final_dir.string() + ": cannot move aside (" + ec.message() + ")");
    }
    if (s.ok()) fs::rename(tmp, final_dir, ec);
    if (s.ok() && ec)
      s = InternalError(final_dir.string() + ": cannot rename (" + ec.message() + ")");
    if (s.ok()) fs::remove_all(old, ec);
  }
  return Agree(comm, s, device, "completing the checkpoint");
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

// OUT/ranks/rank-R.json: where rank R is (step, phase), who it is (pid, host) and when.
void WriteRankProgress(const std::string& out, int rank, int64_t step, const char* phase) {
  std::error_code ec;
  fs::create_directories(run_dir::RanksDir(out), ec);
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  json j = {
      {"rank", rank},
      {"step", step},
      {"phase", phase},
      {"pid", getpid()},
      {"host", host},
      {"unix_time",
       std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count()}};
  (void)WriteFileAtomic(run_dir::RankProgress(out, rank), j.dump() + "\n");
}

class Trainer {
 public:
  // `phase` follows the run (RankFailure::phase), for the job runner's failure record.
  Trainer(const JobSpec& spec, std::string out_dir, RunOptions options, Communicator* comm,
          std::string* phase)
      : spec_(spec), out_(std::move(out_dir)), options_(options), comm_(comm), phase_(phase) {}

  Status Run() {
    *phase_ = "setup";
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
      ASSIGN_OR_RETURN(train_,
                       LoadSet(spec_, spec_.train_set, *tok_, to, spec_.limit, spec_.holdout));
    }
    for (const auto& ref : spec_.eval_sets) {
      ASSIGN_OR_RETURN(LoadedSet s, LoadSet(spec_, ref, *tok_, to, 0, 0));
      evals_.push_back(std::move(s));
    }
    RETURN_IF_ERROR(Fault("setup"));
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
    *phase_ = "reference";
    RETURN_IF_ERROR(Fault("reference"));
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
      ASSIGN_OR_RETURN(*out,
                       ReferenceLogProbs(comm_, *ref, identity, set, CacheDir(), tokenize_identity_,
                                         spec_.eval_batch_size, pad_id_, PairsLayout(), &hit));
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

  PairLayout PairsLayout() const {
    return spec_.shared_prefix ? PairLayout::kAuto : PairLayout::kSeparate;
  }

  // Every eval set's metrics (EvaluatePairs), with what its loading dropped and truncated.
  StatusOr<json> EvalAll(const DecoderLM& model, const std::string& reward) {
    EvalOptions o;
    o.reward = reward;
    o.beta = spec_.beta;
    o.batch_size = spec_.eval_batch_size;
    o.pad_id = pad_id_;
    o.layout = PairsLayout();
    json out = json::object();
    for (size_t i = 0; i < evals_.size(); ++i) {
      const LoadedSet& set = evals_[i];
      torch::Tensor rc, rl;
      if (i < eval_ref_.size()) std::tie(rc, rl) = eval_ref_[i];
      ASSIGN_OR_RETURN(json j, EvaluatePairs(comm_, model, set.pairs, set.subsets, rc, rl, o));
      j["dropped"] = set.stats.ToJson()["dropped"];
      j["truncated"] = set.tokenize.ToJson();
      out[set.name] = std::move(j);
    }
    return out;
  }

  // Only rank 0 writes the job's files.
  Status WriteMetrics(const json& metrics) {
    if (comm_->rank() != 0) return Status::Ok();
    return WriteFileAtomic((fs::path(out_) / "metrics.json").string(), metrics.dump(2) + "\n");
  }

  Status RunEval() {
    RETURN_IF_ERROR(PrepareReference());
    const HeadKind head =
        spec_.eval_reward == "exrm" ? HeadKind::kReward : HeadKind::kLanguageModel;
    *phase_ = "load";
    ASSIGN_OR_RETURN(auto model, BuildModel(spec_, spec_.model_path, head));
    RETURN_IF_ERROR(Fault("load"));
    *phase_ = "eval";
    RETURN_IF_ERROR(Fault("eval"));
    ASSIGN_OR_RETURN(json eval, EvalAll(*model, spec_.eval_reward));
    *phase_ = "finish";
    return WriteMetrics({{"kind", "eval"}, {"ranks", comm_->size()}, {"eval", eval}});
  }

  // The names a step logs, in a fixed order, so ranks can sum them in one collective.
  std::vector<std::string> StepMetricNames() const {
    switch (spec_.kind) {
      case JobKind::kReward:
        return {"loss", "accuracy", "rewards/chosen", "rewards/rejected", "rewards/margins"};
      case JobKind::kDpo:
        return {"loss",
                "rewards/chosen",
                "rewards/rejected",
                "rewards/accuracies",
                "rewards/margins",
                "logps/chosen",
                "logps/rejected",
                "logits/chosen",
                "logits/rejected"};
      case JobKind::kSft:
      case JobKind::kEval: break;
    }
    return {"loss"};
  }

  // Each rank's step and time, for naming a rank that stopped answering (several ranks).
  void ReportProgress(int64_t step, const char* phase) {
    if (comm_->size() > 1) WriteRankProgress(out_, comm_->rank(), step, phase);
  }

  // A collective failed or timed out: the communicator cannot be trusted any more. The error
  // (UNAVAILABLE: a communication failure) names the ranks that fell behind (from their
  // progress files); the job runner ends the whole job with it.
  Status CommFailure(const Status& s, int64_t step) {
    std::string who;
    const double now =
        std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
    for (int r = 0; r < comm_->size(); ++r) {
      if (r == comm_->rank()) continue;
      auto text =
          ReadFile(run_dir::RankProgress(out_, r));
      json j = text.ok() ? json::parse(*text, nullptr, false) : json();
      if (!j.is_object()) {
        who += "; rank " + std::to_string(r) + " never reported progress";
        continue;
      }
      // Behind: an earlier step, or this step's compute while this rank already reduces.
      const int64_t their = j.value("step", int64_t{-1});
      const std::string phase = j.value("phase", std::string("?"));
      if (their < step || (their == step && phase == "compute")) {
        char buf[320];
        std::snprintf(buf, sizeof(buf),
                      "; rank %d (pid %lld on %s) is behind: last seen in step %lld (%s), "
                      "%.1f s ago",
                      r, static_cast<long long>(j.value("pid", int64_t{0})),
                      j.value("host", std::string("?")).c_str(), static_cast<long long>(their + 1),
                      phase.c_str(), now - j.value("unix_time", now));
        who += buf;
      }
    }
    return Status(StatusCode::kUnavailable, "at step " + std::to_string(step + 1) + ": " +
                                                s.message() + who +
                                                ". The job can resume from its last checkpoint");
  }

  // Test seam (RunOptions::fault): the injected fault of this rank at `phase` (and, for step
  // and checkpoint, at optimizer step `step`, 1-based), if there is one.
  Status Fault(const char* phase, int64_t step = 0) const {
    const FaultInjection& f = options_.fault;
    if (f.rank != comm_->rank() || f.phase != phase) return Status::Ok();
    if (f.action == "slow") {
      if (step >= f.step) std::this_thread::sleep_for(std::chrono::milliseconds(100));
      return Status::Ok();
    }
    if ((f.phase == "step" || f.phase == "checkpoint") && f.step != step) return Status::Ok();
    const std::string what = "injected fault: rank " + std::to_string(f.rank) + " " + f.action +
                             " in " + phase +
                             (step > 0 ? " at step " + std::to_string(step) : std::string());
    std::fprintf(stderr, "rmgen-train: %s\n", what.c_str());
    std::fflush(stderr);
    if (f.action == "kill") raise(SIGKILL);
    if (f.action == "hang") {
      for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
    }
    if (f.action == "exit") std::_Exit(1);
    if (f.action == "throw") throw std::runtime_error(what);
    if (f.action == "invalid") return InvalidArgumentError(what);
    return InternalError(what);
  }

  Status RunTraining() {
    const HeadKind head =
        spec_.kind == JobKind::kReward ? HeadKind::kReward : HeadKind::kLanguageModel;
    const fs::path ckpt = fs::path(out_) / "checkpoint";
    const int rank = comm_->rank(), world = comm_->size();
    const torch::Device cdev(spec_.device);
    // Rank 0 repairs an interrupted swap before any rank looks for a checkpoint.
    RETURN_IF_ERROR(Agree(comm_, rank == 0 ? RecoverCheckpointSwap(out_) : Status::Ok(), cdev,
                          "recovering the checkpoint"));
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
    if (rank == 0 && spec_.ranks > 0 && spec_.ranks != world) {
      std::fprintf(stderr,
                   "rmgen-train: planned for %lld ranks, running on %d: the global micro-batch "
                   "stays %lld (%lld per rank now), so the result is the same job's\n",
                   (long long)spec_.ranks, world, (long long)spec_.batch_size,
                   (long long)((spec_.batch_size + world - 1) / world));
    }
    RETURN_IF_ERROR(PrepareReference());
    *phase_ = "load";
    ASSIGN_OR_RETURN(auto model,
                     BuildModel(spec_, resume ? ckpt.string() : spec_.model_path, head));
    RETURN_IF_ERROR(Fault("load"));
    model->SetRequiresGrad(true);
    model->SetGradientCheckpointing(spec_.gradient_checkpointing);
    const torch::Device device = DeviceOf(*model);
    int64_t num_params = 0;
    for (const auto& p : model->parameters()) num_params += p.numel();
    *phase_ = "broadcast";
    RETURN_IF_ERROR(Fault("broadcast"));
    if (world > 1) {
      // Every rank starts from rank 0's weights, whatever happened to its own load.
      torch::NoGradGuard g;
      for (auto& p : model->parameters()) {
        if (Status s = comm_->Broadcast(TensorBuffer(p), 0)->Wait(); !s.ok()) {
          return CommFailure(s, st.step);
        }
      }
    }
    *phase_ = "step";
    AdamWOptions ao;
    ao.lr = spec_.learning_rate;
    ao.beta1 = spec_.adam_beta1;
    ao.beta2 = spec_.adam_beta2;
    ao.eps = spec_.adam_epsilon;
    ao.weight_decay = spec_.weight_decay;
    DataParallelOptions dpo;
    dpo.bucket_bytes = static_cast<int64_t>(spec_.bucket_mb * (1 << 20));
    dpo.overlap = spec_.overlap;
    dpo.zero1 = spec_.zero1;
    DataParallel dp(comm_, model->parameters(), ao, dpo);
    if (resume) RETURN_IF_ERROR(dp.LoadOptimizer(ckpt.string()));

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
    if (rank == 0) RETURN_IF_ERROR(TrimEvents(events_path, resume ? st.step : 0));
    std::ofstream events;
    if (rank == 0) events.open(events_path, std::ios::app);
    const bool tty = options_.progress && rank == 0 && ::isatty(2);
    const auto t_start = Clock::now();
    int64_t run_steps = 0, run_tokens = 0, run_pairs = 0, run_cells = 0;
    double run_wait_s = 0;
    auto batches = EpochBatches(spec_, lengths, st.epoch);
    const std::vector<std::string> names = StepMetricNames();
    StepMetrics last;
    while (st.step < total) {
      if (st.micro >= static_cast<int64_t>(batches.size())) {
        ++st.epoch;
        st.micro = 0;
        batches = EpochBatches(spec_, lengths, st.epoch);
      }
      ReportProgress(st.step, "compute");
      const auto t0 = Clock::now();
      const int64_t group =
          std::min<int64_t>(spec_.gradient_accumulation, batches.size() - st.micro);
      // Weighted sums over this rank's pairs, then summed over ranks: metric names, then
      // tokens, pairs, 1 for a non-finite loss, and computed tokens (cells).
      std::vector<double> sums(names.size() + 4, 0.0);
      dp.BeginStep();
      for (int64_t k = 0; k < group; ++k) {
        // This rank's share of the global micro-batch.
        const auto& global = batches[st.micro + k];
        const auto [b0, e0] = ShardRange(global.size(), rank, world);
        const std::vector<int64_t> idx(global.begin() + b0, global.begin() + e0);
        dp.BeginBackward(k + 1 == group);
        if (idx.empty()) continue;
        PairBatch b = Collate(train_.pairs, idx, pad_id_, device,
                              spec_.kind == JobKind::kSft ? PairLayout::kChosenOnly : PairsLayout(),
                              &model->config());
        torch::Tensor loss;
        StepMetrics m;
        // The forward under bf16 autocast when asked; backward outside it, as usual.
        std::optional<compat::AutocastGuard> autocast;
        if (spec_.bf16) autocast.emplace(device.type(), at::kBFloat16, true);
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
        RETURN_IF_ERROR(Fault("step", st.step + 1));
        // This rank's pairs' share of the global micro-batch: the summed gradient is the
        // global mean (1 for a single rank).
        const double w = double(idx.size()) / double(global.size());
        if (!std::isfinite(loss.item<double>())) sums[names.size() + 2] = 1;
        (loss * w / double(group)).backward();
        for (size_t i = 0; i < names.size(); ++i) {
          auto it = m.find(names[i]);
          if (it != m.end()) sums[i] += it->second * w;
        }
        if (m.size() != names.size()) {
          return InternalError("step metrics: the objective logged " + std::to_string(m.size()) +
                               " values, the trainer expects " + std::to_string(names.size()));
        }
        sums[names.size()] += b.tokens;
        sums[names.size() + 1] += b.pairs;
        sums[names.size() + 3] += b.cells;
      }
      ReportProgress(st.step, "reduce");
      if (Status s = dp.FinishGradients(); !s.ok()) return CommFailure(s, st.step);
      auto norm = dp.ClipGradNorm(spec_.max_grad_norm);
      if (!norm.ok()) return CommFailure(norm.status(), st.step);
      const double grad_norm = *norm;
      // One collective agrees on the step's metrics, a non-finite loss anywhere, and a stop
      // asked of any rank (SIGTERM or --stop-after-steps).
      const bool stop_local =
          (options_.stop_flag != nullptr && options_.stop_flag->load()) ||
          (options_.stop_after_steps > 0 && run_steps + 1 >= options_.stop_after_steps);
      sums.push_back(stop_local ? 1.0 : 0.0);
      if (world > 1) {
        auto t = torch::tensor(sums, torch::kFloat64).to(device);
        if (Status s = comm_->AllReduce(TensorBuffer(t), ReduceOp::kSum)->Wait(); !s.ok()) {
          return CommFailure(s, st.step);
        }
        t = t.cpu();
        for (size_t i = 0; i < sums.size(); ++i) sums[i] = t[i].item<double>();
      }
      const bool stop = sums.back() > 0;
      bool finite = sums[names.size() + 2] == 0 && std::isfinite(grad_norm);
      const int64_t tokens = static_cast<int64_t>(sums[names.size()]);
      const int64_t pairs = static_cast<int64_t>(sums[names.size() + 1]);
      const int64_t cells = static_cast<int64_t>(sums[names.size() + 3]);
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
      } else {
        const double lr = ScheduledLr(spec_.schedule, spec_.learning_rate, st.step, total, warmup);
        if (Status s = dp.Step(lr); !s.ok()) return CommFailure(s, st.step);
        st.samples += pairs;
        run_tokens += tokens;
        run_cells += cells;
        run_pairs += pairs;
        StepMetrics m;
        for (size_t i = 0; i < names.size(); ++i) m[names[i]] = sums[i] / double(group);
        last = m;
        const double wait_s = dp.TakeWaitSeconds();
        run_wait_s += wait_s;
        const double step_s = std::chrono::duration<double>(Clock::now() - t0).count();
        const double run_s = std::chrono::duration<double>(Clock::now() - t_start).count();
        const double eta = run_s / (run_steps + 1) * (total - st.step - 1);
        if (rank == 0 && ((st.step + 1) % spec_.log_every == 0 || st.step + 1 == total)) {
          namespace k = event_key;
          json e = {{k::kStep, st.step + 1},
                    {k::kTotalSteps, total},
                    {k::kEpoch, st.epoch + double(st.micro) / double(batches.size())},
                    {k::kLr, lr},
                    {k::kGradNorm, grad_norm},
                    {k::kTokensPerS, tokens / std::max(step_s, 1e-9)},
                    {k::kPairsPerS, pairs / std::max(step_s, 1e-9)},
                    {k::kSamples, st.samples},
                    {k::kEtaS, eta},
                    {k::kPeakRssMb, PeakRssMb()}};
          if (world > 1) {
            e[k::kRanks] = world;
            e[k::kCommWaitS] = wait_s;
          }
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
      if (!finite) dp.TakeWaitSeconds();
      ++st.step;
      ++run_steps;
      // Interval checkpoints and early stops apply to skipped steps too.
      const bool interval = spec_.checkpoint_every > 0 && st.step % spec_.checkpoint_every == 0;
      if ((interval || stop) && st.step < total) {
        RETURN_IF_ERROR(Checkpoint(*model, dp, st));
      }
      if (stop && st.step < total) {
        if (tty) std::fprintf(stderr, "\n");
        return Status(StatusCode::kCancelled, "stopped after step " + std::to_string(st.step) +
                                                  " (" + std::to_string(run_steps) +
                                                  " in this run), checkpoint saved");
      }
    }
    if (tty) std::fprintf(stderr, "\n");
    RETURN_IF_ERROR(Checkpoint(*model, dp, st));
    const double run_s = std::chrono::duration<double>(Clock::now() - t_start).count();
    json metrics = {
        {"kind", JobKindName(spec_.kind)},
        {"ranks", world},
        {"train",
         {{"steps", st.step},
          {"params", num_params},
          {"samples", st.samples},
          {"skipped_nonfinite", st.skipped},
          {"final", last},
          {"steps_this_run", run_steps},
          {"seconds_this_run", run_s},
          {"tokens_per_s", run_tokens / std::max(run_s, 1e-9)},
          // Tokens the model computed per token of the pairs (< 1: shared prefixes).
          {"computed_tokens_frac", double(run_cells) / double(std::max<int64_t>(run_tokens, 1))},
          {"pairs_per_s", run_pairs / std::max(run_s, 1e-9)},
          {"comm_wait_share", run_wait_s / std::max(run_s, 1e-9)},
          {"dataset", train_.stats.ToJson()},
          {"truncated", train_.tokenize.ToJson()},
          {"reference_cache", {{"hits", ref_cache_hits_}, {"misses", ref_cache_misses_}}}}}};
    torch::NoGradGuard g;
    *phase_ = "eval";
    RETURN_IF_ERROR(Fault("eval"));
    if (spec_.kind == JobKind::kReward) {
      ASSIGN_OR_RETURN(metrics["eval"], EvalAll(*model, "exrm"));
    } else if (spec_.kind == JobKind::kDpo) {
      ASSIGN_OR_RETURN(metrics["eval"],
                       EvalAll(*model, spec_.reference_free ? "ref_free_sum" : "dporm"));
    } else {
      metrics["eval"] = json::object();
    }
    *phase_ = "finish";
    return WriteMetrics(metrics);
  }

  // A checkpoint of the state after step st.step (every rank takes part).
  Status Checkpoint(const DecoderLM& model, const DataParallel& dp, const TrainerState& st) {
    *phase_ = "checkpoint";
    RETURN_IF_ERROR(Fault("checkpoint", st.step));
    RETURN_IF_ERROR(SaveCheckpoint(comm_, model, dp, st, out_, tokenizer_path_));
    *phase_ = "step";
    return Status::Ok();
  }

  const JobSpec& spec_;
  std::string out_;
  RunOptions options_;
  Communicator* comm_;
  std::unique_ptr<Tokenizer> tok_;
  std::string tokenizer_path_, tokenize_identity_;
  int64_t pad_id_ = 0;
  LoadedSet train_;
  std::vector<LoadedSet> evals_;
  std::pair<torch::Tensor, torch::Tensor> train_ref_;
  std::vector<std::pair<torch::Tensor, torch::Tensor>> eval_ref_;
  std::unique_ptr<DecoderLM> live_ref_;
  int64_t ref_cache_hits_ = 0, ref_cache_misses_ = 0;
  std::string* phase_;
};

}  // namespace

StatusOr<FaultInjection> FaultInjection::Parse(const std::string& text) {
  FaultInjection f;
  bool have_phase = false;
  size_t pos = 0;
  while (pos <= text.size()) {
    const size_t comma = std::min(text.find(',', pos), text.size());
    const std::string part = text.substr(pos, comma - pos);
    pos = comma + 1;
    const size_t eq = part.find('=');
    if (eq == std::string::npos) {
      return InvalidArgumentError("--fault: '" + part + "' is not KEY=VALUE");
    }
    const std::string key = part.substr(0, eq), value = part.substr(eq + 1);
    char* end = nullptr;
    if (key == "rank" || key == "step") {
      const long long v = std::strtoll(value.c_str(), &end, 10);
      if (value.empty() || *end != '\0' || v < 0 || v > (1ll << 30)) {
        return InvalidArgumentError("--fault: " + key + " must be an integer >= 0, got '" + value +
                                    "'");
      }
      if (key == "rank") f.rank = static_cast<int>(v);
      if (key == "step") f.step = v;
    } else if (key == "phase") {
      static const char* kPhases[] = {"setup", "reference",  "load", "broadcast",
                                      "step",  "checkpoint", "eval", "finish"};
      if (std::find(std::begin(kPhases), std::end(kPhases), value) == std::end(kPhases)) {
        return InvalidArgumentError("--fault: unknown phase '" + value +
                                    "' (setup, reference, load, broadcast, step, checkpoint, "
                                    "eval, finish)");
      }
      f.phase = value;
      have_phase = true;
    } else if (key == "action") {
      static const char* kActions[] = {"error", "invalid", "throw", "exit", "kill", "hang", "slow"};
      if (std::find(std::begin(kActions), std::end(kActions), value) == std::end(kActions)) {
        return InvalidArgumentError("--fault: unknown action '" + value +
                                    "' (error, invalid, throw, exit, kill, hang, slow)");
      }
      f.action = value;
    } else {
      return InvalidArgumentError("--fault: unknown key '" + key + "' (rank, phase, step, action)");
    }
  }
  if (f.rank < 0 || !have_phase) return InvalidArgumentError("--fault needs rank= and phase=");
  if (f.action == "slow" && f.phase != "step") {
    return InvalidArgumentError("--fault: action slow is for phase step only");
  }
  return f;
}

namespace {

int64_t WallMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string HostName() {
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  return host;
}

}  // namespace

// The job runner: owns the communicator; any error on this rank is recorded and, with
// several ranks, ends the job at once.
Status RunJob(const JobSpec& spec_in, const std::string& out_dir, const RunOptions& options,
              RankFailure* failure_out) {
  const RankLayout layout = RankLayout::FromEnvironment();
  RankFailure failure;
  failure.rank = layout.rank;
  failure.host = HostName();
  failure.pid = getpid();
  // Records this rank's failure (best effort: the folder may be what failed).
  auto record = [&](const Status& st, Cause cause, const std::string& phase) {
    failure.cause = cause;
    failure.phase = phase;
    failure.message = st.message();
    failure.unix_ms = WallMs();
    (void)WriteRankFailure(out_dir, failure);
    if (failure_out != nullptr) *failure_out = failure;
    return st;
  };
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) {
    return record(InternalError(out_dir + ": cannot create (" + ec.message() + ")"), Cause::kError,
                  "setup");
  }
  fs::remove(run_dir::RankFailure(out_dir, layout.rank), ec);  // an earlier attempt's
  if (spec_in.device != "cpu" && !torch::cuda::is_available()) {
    return record(FailedPreconditionError("runtime.device is '" + spec_in.device +
                                          "' but no CUDA device is usable here (libtorch " +
                                          TORCH_VERSION + ")"),
                  Cause::kNoDevice, "setup");
  }
  JobSpec spec = spec_in;
  if (spec.device == "cuda") {
    // One GPU per rank on a node: local rank -> device.
    spec.device = "cuda:" + std::to_string(layout.local_rank %
                                           std::max<int64_t>(1, torch::cuda::device_count()));
  }
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  torch::set_num_threads(
      spec.threads > 0 ? spec.threads : std::max(1, int(cores) / std::max(1, layout.local_size)));
  CommOptions co;
  co.device = spec.device;
  co.timeout = std::chrono::milliseconds(static_cast<int64_t>(spec.comm_timeout_s * 1000));
  auto comm = CreateCommunicator(layout, co);
  if (!comm.ok()) {
    // No communicator, no abort: this rank exits, and mpirun or srun (--kill-on-bad-exit)
    // ends the others.
    return record(comm.status().WithContext("starting the communicator"), Cause::kCommFailure,
                  "setup");
  }
  Communicator* c = comm->get();
  std::string phase = "setup";
  if (c->size() > 1) WriteRankProgress(out_dir, c->rank(), 0, "setup");
  Status st;
  if (c->rank() == 0) {
    st = WriteFileAtomic(run_dir::Join(out_dir, run_dir::kSpecResolved),
                         spec_in.resolved.dump(2) + "\n");
  }
  if (st.ok()) {
    try {
      Trainer t(spec, out_dir, options, c, &phase);
      st = t.Run();
    } catch (const std::exception& e) {
      st = InternalError(std::string("an exception: ") + e.what());
    }
  }
  if (st.ok() || st.code() == StatusCode::kCancelled) return st;
  const Cause cause = CauseOfStatus(st.code());
  record(st, cause, phase);
  if (c->size() > 1) {
    // The others may be waiting in a collective this rank will never join: end them all.
    c->Abort(failure.Describe(), static_cast<int>(ExitFor(cause)));
  }
  return st;
}

}  // namespace rmgen
