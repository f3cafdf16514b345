// One rank's training (sft, reward, dpo) and evaluation: setup (tokenizer, data), the
// reference log-probs, the model, the training loop, evaluation and metrics.json. The job
// runner (job_runner.cc) owns the communicator and turns any error into the job's end.
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
#include "worker/train/collectives.h"
#include "worker/train/data_parallel.h"
#include "worker/train/evaluate.h"
#include "worker/train/generation_jobs.h"
#include "worker/train/job_inputs.h"
#include "worker/train/objectives.h"
#include "worker/train/optim.h"
#include "worker/train/reference_cache.h"
#include "worker/train/run_files.h"
#include "worker/train/training.h"

namespace rmgen {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

// runtime.profile: where a step's time goes. Each phase ends with the device synchronized, so
// queued GPU work is charged to the phase that queued it.
struct PhaseTimes {
  double collate = 0, forward = 0, backward = 0, reduce = 0, optimizer = 0;
  double Total() const { return collate + forward + backward + reduce + optimizer; }
  void Add(const PhaseTimes& o) {
    collate += o.collate, forward += o.forward, backward += o.backward;
    reduce += o.reduce, optimizer += o.optimizer;
  }
  nlohmann::json ToJson(double scale = 1.0) const {
    return {{"collate", collate * scale},
            {"forward", forward * scale},
            {"backward", backward * scale},
            {"reduce", reduce * scale},
            {"optimizer", optimizer * scale}};
  }
};

// Times the phases of a step when profiling (`on`), else does nothing and syncs nothing.
class PhaseClock {
 public:
  PhaseClock(bool on, torch::Device device) : on_(on), device_(device), t_(Clock::now()) {}
  // Charges the time since the previous mark to `*field`.
  void Mark(double* field) {
    if (!on_) return;
    compat::Synchronize(device_);
    const auto now = Clock::now();
    *field += std::chrono::duration<double>(now - t_).count();
    t_ = now;
  }

 private:
  bool on_;
  torch::Device device_;
  Clock::time_point t_;
};

double PeakRssMb() {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss / 1024.0;
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
    return (fs::path(out_).parent_path() / run_dir::kRefCache).string();
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
      case JobKind::kEval:
      case JobKind::kGenerate:
      case JobKind::kAnnotate:
      case JobKind::kJudge: break;
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
      auto text = ReadFile(run_dir::RankProgress(out_, r));
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
    const fs::path ckpt = run_dir::Checkpoint(out_);
    const int rank = comm_->rank(), world = comm_->size();
    const torch::Device cdev(spec_.device);
    // Rank 0 repairs an interrupted swap before any rank looks for a checkpoint.
    RETURN_IF_ERROR(Agree(comm_, rank == 0 ? RecoverCheckpointSwap(out_) : Status::Ok(), cdev,
                          "recovering the checkpoint"));
    TrainerState st;
    const std::string spec_key = SpecKey(spec_, train_.identity);
    st.spec_key = spec_key;
    const bool resume = FileExists(run_dir::TrainerState(out_));
    if (resume) {
      ASSIGN_OR_RETURN(st, TrainerState::Read(run_dir::TrainerState(out_)));
      if (st.spec_key != spec_key) {
        return FailedPreconditionError(ckpt.string() +
                                       ": written by a different spec; resume needs the same spec. "
                                       "HINT: use a fresh --out folder");
      }
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

    Loop L;
    L.st = st;
    L.device = device;
    for (const auto& p : train_.pairs) {
      L.lengths.push_back(std::max(p.chosen.size(), p.rejected.size()));
    }
    const int64_t micro_per_epoch =
        (int64_t(train_.pairs.size()) + spec_.batch_size - 1) / spec_.batch_size;
    const int64_t steps_per_epoch =
        (micro_per_epoch + spec_.gradient_accumulation - 1) / spec_.gradient_accumulation;
    L.total = spec_.max_steps > 0 ? spec_.max_steps : spec_.epochs * steps_per_epoch;
    L.warmup = spec_.warmup_steps > 0
                   ? spec_.warmup_steps
                   : static_cast<int64_t>(std::ceil(L.total * spec_.warmup_ratio));
    const std::string events_path = run_dir::Events(out_);
    if (rank == 0) RETURN_IF_ERROR(TrimEvents(events_path, resume ? L.st.step : 0));
    if (rank == 0) L.events.open(events_path, std::ios::app);
    L.tty = options_.progress && rank == 0 && ::isatty(2);
    L.start = Clock::now();
    compat::ResetDevicePeak(L.device);  // the peak of training, not of loading or the reference
    L.batches = EpochBatches(spec_, L.lengths, L.st.epoch);
    L.names = StepMetricNames();

    // The loop: a step, its log line, a checkpoint when due, and the stop every rank agreed on.
    while (L.st.step < L.total) {
      ASSIGN_OR_RETURN(StepResult r, TrainStep(*model, dp, &L));
      if (r.finite) LogStep(r, &L);
      ++L.st.step;
      ++L.steps;
      // Interval checkpoints and early stops apply to skipped steps too.
      const bool interval = spec_.checkpoint_every > 0 && L.st.step % spec_.checkpoint_every == 0;
      if ((interval || r.stop) && L.st.step < L.total) {
        RETURN_IF_ERROR(Checkpoint(*model, dp, L.st));
      }
      if (r.stop && L.st.step < L.total) {
        if (L.tty) std::fprintf(stderr, "\n");
        return Status(StatusCode::kCancelled, "stopped after step " + std::to_string(L.st.step) +
                                                  " (" + std::to_string(L.steps) +
                                                  " in this run), checkpoint saved");
      }
    }
    if (L.tty) std::fprintf(stderr, "\n");
    RETURN_IF_ERROR(Checkpoint(*model, dp, L.st));
    const TrainerState& st_end = L.st;
    const double run_s = std::chrono::duration<double>(Clock::now() - L.start).count();
    json metrics = {
        {"kind", JobKindName(spec_.kind)},
        {"ranks", world},
        {"train",
         {{"steps", st_end.step},
          {"params", num_params},
          {"samples", st_end.samples},
          {"skipped_nonfinite", st_end.skipped},
          {"final", L.last},
          {"steps_this_run", L.steps},
          {"seconds_this_run", run_s},
          {"tokens_per_s", double(L.tokens) / std::max(run_s, 1e-9)},
          // Tokens the model computed per token of the pairs (< 1: shared prefixes).
          {"computed_tokens_frac", double(L.cells) / double(std::max<int64_t>(L.tokens, 1))},
          {"pairs_per_s", double(L.pairs) / std::max(run_s, 1e-9)},
          {"comm_wait_share", L.wait_s / std::max(run_s, 1e-9)},
          {"dataset", train_.stats.ToJson()},
          {"truncated", train_.tokenize.ToJson()},
          {"reference_cache", {{"hits", ref_cache_hits_}, {"misses", ref_cache_misses_}}}}}};
    if (spec_.profile) {
      const double total = std::max(L.phases.Total(), 1e-12);
      metrics["train"]["profile"] = {{"phase_s", L.phases.ToJson()},
                                     {"phase_share", L.phases.ToJson(1.0 / total)}};
    }
    if (L.device_peak >= 0) metrics["train"]["device_peak_mb"] = double(L.device_peak) / (1 << 20);
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

  // A training run's state between steps: what the loop reads and writes.
  struct Loop {
    TrainerState st;
    int64_t total = 0, warmup = 0;
    std::vector<int64_t> lengths;               // per pair: the batch order groups by length
    std::vector<std::vector<int64_t>> batches;  // this epoch's global micro-batches
    std::vector<std::string> names;             // the step metrics, in a fixed order
    torch::Device device{torch::kCPU};
    // This run (since the start or the resume):
    Clock::time_point start;
    int64_t steps = 0, tokens = 0, pairs = 0, cells = 0;
    double wait_s = 0;
    PhaseTimes phases;         // runtime.profile: summed over this run's steps
    int64_t device_peak = -1;  // CUDA: the allocator's peak bytes over the run so far
    StepMetrics last;
    std::ofstream events;  // rank 0: events.jsonl
    bool tty = false;      // rank 0 on a terminal: a progress line
  };

  // One optimizer step, as every rank agreed on it.
  struct StepResult {
    bool finite = true;  // false: skipped (train.skip_nonfinite), no update
    bool stop = false;   // a rank was asked to stop: checkpoint and end after this step
    double grad_norm = 0, lr = 0;
    double wait_s = 0, step_s = 0;  // waiting for gradients; the whole step
    int64_t tokens = 0, pairs = 0, cells = 0;
    StepMetrics metrics;  // the global means
    PhaseTimes phases;    // runtime.profile only
  };

  // One optimizer step: this rank's share of each micro-batch forward and backward, the
  // gradients reduced and clipped, one collective agreeing on the metrics, a non-finite loss
  // anywhere and a stop asked of any rank (SIGTERM or --stop-after-steps), then the update.
  StatusOr<StepResult> TrainStep(DecoderLM& model, DataParallel& dp, Loop* L) {
    TrainerState& st = L->st;
    if (st.micro >= static_cast<int64_t>(L->batches.size())) {
      ++st.epoch;
      st.micro = 0;
      L->batches = EpochBatches(spec_, L->lengths, st.epoch);
    }
    ReportProgress(st.step, "compute");
    const auto t0 = Clock::now();
    const int64_t group =
        std::min<int64_t>(spec_.gradient_accumulation, L->batches.size() - st.micro);
    // Weighted sums over this rank's pairs, then summed over ranks: metric names, then
    // tokens, pairs, 1 for a non-finite loss, and computed tokens (cells).
    const size_t n = L->names.size();
    std::vector<double> sums(n + 4, 0.0);
    StepResult r;
    PhaseClock clock(spec_.profile, L->device);
    dp.BeginStep();
    for (int64_t k = 0; k < group; ++k) {
      RETURN_IF_ERROR(MicroBatch(model, dp, *L, k, group, &sums, &clock, &r.phases));
    }
    ReportProgress(st.step, "reduce");
    if (Status s = dp.FinishGradients(); !s.ok()) return CommFailure(s, st.step);
    auto norm = dp.ClipGradNorm(spec_.max_grad_norm);
    if (!norm.ok()) return CommFailure(norm.status(), st.step);
    clock.Mark(&r.phases.reduce);
    r.grad_norm = *norm;
    const bool stop_local =
        (options_.stop_flag != nullptr && options_.stop_flag->load()) ||
        (options_.stop_after_steps > 0 && L->steps + 1 >= options_.stop_after_steps);
    sums.push_back(stop_local ? 1.0 : 0.0);
    if (comm_->size() > 1) {
      auto t = torch::tensor(sums, torch::kFloat64).to(L->device);
      if (Status s = comm_->AllReduce(TensorBuffer(t), ReduceOp::kSum)->Wait(); !s.ok()) {
        return CommFailure(s, st.step);
      }
      t = t.cpu();
      for (size_t i = 0; i < sums.size(); ++i) sums[i] = t[i].item<double>();
    }
    r.stop = sums.back() > 0;
    r.finite = sums[n + 2] == 0 && std::isfinite(r.grad_norm);
    r.tokens = static_cast<int64_t>(sums[n]);
    r.pairs = static_cast<int64_t>(sums[n + 1]);
    r.cells = static_cast<int64_t>(sums[n + 3]);
    st.micro += group;
    if (!r.finite && !spec_.skip_nonfinite) {
      return InternalError("non-finite loss or gradient at step " + std::to_string(st.step + 1) +
                           " (epoch " + std::to_string(st.epoch) +
                           "). HINT: lower train.learning_rate, or set "
                           "train.skip_nonfinite to skip such batches");
    }
    if (!r.finite) {
      // The step is spent without an update, so a run of bad batches cannot loop forever.
      ++st.skipped;
      dp.TakeWaitSeconds();
      return r;
    }
    r.lr = ScheduledLr(spec_.schedule, spec_.learning_rate, st.step, L->total, L->warmup);
    if (Status s = dp.Step(r.lr); !s.ok()) return CommFailure(s, st.step);
    clock.Mark(&r.phases.optimizer);
    L->phases.Add(r.phases);
    L->device_peak = compat::DevicePeakBytes(L->device);
    st.samples += r.pairs;
    L->tokens += r.tokens;
    L->cells += r.cells;
    L->pairs += r.pairs;
    for (size_t i = 0; i < n; ++i) r.metrics[L->names[i]] = sums[i] / double(group);
    L->last = r.metrics;
    r.wait_s = dp.TakeWaitSeconds();
    L->wait_s += r.wait_s;
    r.step_s = std::chrono::duration<double>(Clock::now() - t0).count();
    return r;
  }

  // Micro-batch k (of `group`) of the step: this rank's share of it forward and backward.
  // Adds its weighted metrics, tokens, pairs, a non-finite flag and cells to `sums`.
  Status MicroBatch(DecoderLM& model, DataParallel& dp, const Loop& L, int64_t k, int64_t group,
                    std::vector<double>* sums, PhaseClock* clock, PhaseTimes* phases) {
    const size_t n = L.names.size();
    const auto& global = L.batches[L.st.micro + k];
    const auto [b0, e0] = ShardRange(global.size(), comm_->rank(), comm_->size());
    const std::vector<int64_t> idx(global.begin() + b0, global.begin() + e0);
    dp.BeginBackward(k + 1 == group);
    if (idx.empty()) return Status::Ok();
    PairBatch b = Collate(train_.pairs, idx, pad_id_, L.device,
                          spec_.kind == JobKind::kSft ? PairLayout::kChosenOnly : PairsLayout(),
                          &model.config());
    clock->Mark(&phases->collate);
    StepMetrics m;
    torch::Tensor loss = Loss(model, b, idx, L.device, &m);
    RETURN_IF_ERROR(Fault("step", L.st.step + 1));
    // This rank's pairs' share of the global micro-batch: the summed gradient is the
    // global mean (1 for a single rank).
    const double w = double(idx.size()) / double(global.size());
    if (!std::isfinite(loss.item<double>())) (*sums)[n + 2] = 1;
    clock->Mark(&phases->forward);
    (loss * w / double(group)).backward();
    clock->Mark(&phases->backward);
    for (size_t i = 0; i < n; ++i) {
      auto it = m.find(L.names[i]);
      if (it != m.end()) (*sums)[i] += it->second * w;
    }
    if (m.size() != n) {
      return InternalError("step metrics: the objective logged " + std::to_string(m.size()) +
                           " values, the trainer expects " + std::to_string(n));
    }
    (*sums)[n] += b.tokens;
    (*sums)[n + 1] += b.pairs;
    (*sums)[n + 3] += b.cells;
    return Status::Ok();
  }

  // The objective's loss on one batch (pairs `idx` of the training set); the forward under
  // bf16 autocast when asked, the backward (the caller's) outside it, as usual.
  torch::Tensor Loss(DecoderLM& model, const PairBatch& b, const std::vector<int64_t>& idx,
                     torch::Device device, StepMetrics* m) {
    std::optional<compat::AutocastGuard> autocast;
    if (spec_.bf16) autocast.emplace(device.type(), at::kBFloat16, true);
    if (spec_.kind == JobKind::kReward) {
      torch::Tensor margin;
      if (spec_.use_margin) {
        std::vector<float> mv;
        for (int64_t i : idx) mv.push_back(static_cast<float>(train_.margins[i]));
        margin = torch::tensor(mv);
      }
      return RewardLoss(model, b, margin, spec_.center_coefficient, m);
    }
    if (spec_.kind == JobKind::kDpo) {
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
      return DpoLoss(model, b, ref, spec_.beta, spec_.label_smoothing, m);
    }
    return SftLoss(model, b, m);
  }

  // A step's events.jsonl line (rank 0; every log_every steps and the last) and the
  // progress line on a terminal.
  void LogStep(const StepResult& r, Loop* L) {
    const TrainerState& st = L->st;
    const int world = comm_->size();
    const double run_s = std::chrono::duration<double>(Clock::now() - L->start).count();
    const double eta = run_s / (L->steps + 1) * (L->total - st.step - 1);
    if (comm_->rank() == 0 && ((st.step + 1) % spec_.log_every == 0 || st.step + 1 == L->total)) {
      namespace k = event_key;
      json e = {{k::kStep, st.step + 1},
                {k::kTotalSteps, L->total},
                {k::kEpoch, st.epoch + double(st.micro) / double(L->batches.size())},
                {k::kLr, r.lr},
                {k::kGradNorm, r.grad_norm},
                {k::kTokensPerS, r.tokens / std::max(r.step_s, 1e-9)},
                {k::kPairsPerS, r.pairs / std::max(r.step_s, 1e-9)},
                {k::kSamples, st.samples},
                {k::kEtaS, eta},
                {k::kPeakRssMb, PeakRssMb()}};
      if (world > 1) {
        e[k::kRanks] = world;
        e[k::kCommWaitS] = r.wait_s;
      }
      if (spec_.profile) e[k::kPhaseS] = r.phases.ToJson();
      if (L->device_peak >= 0) e[k::kDevicePeakMb] = double(L->device_peak) / (1 << 20);
      for (const auto& [key, v] : r.metrics) e[key] = v;
      if (spec_.kind == JobKind::kReward) e["rewards/accuracies"] = r.metrics.at("accuracy");
      L->events << e.dump() << "\n";
      L->events.flush();
    }
    if (L->tty) {
      std::fprintf(stderr, "\r%s step %lld/%lld  loss %.4f  lr %.2e  %.0f tok/s  eta %.0fs   ",
                   JobKindName(spec_.kind), (long long)(st.step + 1), (long long)L->total,
                   r.metrics.at("loss"), r.lr, L->tokens / std::max(run_s, 1e-9), eta);
    }
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

Status RunTrainer(const JobSpec& spec, const std::string& out_dir, const RunOptions& options,
                  Communicator* comm, std::string* phase) {
  if (spec.kind == JobKind::kGenerate) {
    return RunGenerate(spec, out_dir, comm, phase, options.stop_after_steps);
  }
  if (spec.kind == JobKind::kAnnotate) {
    return RunAnnotate(spec, out_dir, comm, phase, options.stop_after_steps);
  }
  if (spec.kind == JobKind::kJudge) return RunJudge(spec, out_dir, comm, phase);
  Trainer t(spec, out_dir, options, comm, phase);
  return t.Run();
}

}  // namespace rmgen
