#include "coordinator/memory_plan.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "common/file.h"
#include "coordinator/study.h"

namespace rmgen::coord {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

// A field of the resolved spec by dotted path; `def` when absent or of another type.
template <typename T>
T Field(const json& spec, const std::string& path, T def) {
  const json* cur = &spec;
  size_t start = 0;
  for (;;) {
    const size_t dot = path.find('.', start);
    const std::string key = path.substr(start, dot == std::string::npos ? dot : dot - start);
    if (!cur->is_object()) return def;
    auto it = cur->find(key);
    if (it == cur->end() || it->is_null()) return def;
    cur = &*it;
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  try {
    return cur->get<T>();
  } catch (const std::exception&) {
    return def;
  }
}

// The architecture's sizes, as doubles (byte counts of 7B models overflow nothing here).
struct Arch {
  double D, F, H, KV, hd, V, layers, qo, kvo;
  bool plus_one;  // Gemma's RMSNorm: (1 + w) in float32 (no bf16 copy kept for the weight)
};

Arch ArchOf(const ModelConfig& c) {
  Arch a;
  a.D = c.hidden_size;
  a.F = c.intermediate_size;
  a.H = c.num_heads;
  a.KV = c.num_kv_heads;
  a.hd = c.head_dim;
  a.V = c.vocab_size;
  a.layers = c.num_layers;
  a.qo = a.H * a.hd;
  a.kvo = a.KV * a.hd;
  a.plus_one = TraitsOf(c.family).norm_weight_plus_one;
  return a;
}

// Parameters of one decoder layer (worker/model/decoder.cc ParameterSpecs).
int64_t LayerParameters(const ModelConfig& c) {
  const int64_t D = c.hidden_size, F = c.intermediate_size;
  const int64_t qo = c.num_heads * c.head_dim, kvo = c.num_kv_heads * c.head_dim;
  int64_t n = 2 * D + qo * D + 2 * kvo * D + D * qo + 3 * F * D;
  if (c.attention_bias) n += qo + 2 * kvo;
  return n;
}

int64_t Parameters(const ModelConfig& c, bool reward_head) {
  const int64_t D = c.hidden_size;
  int64_t n = c.vocab_size * D + c.num_layers * LayerParameters(c) + D;
  if (reward_head) {
    n += D;
  } else if (!c.tie_word_embeddings) {
    n += c.vocab_size * D;
  }
  return n;
}

// The largest single parameter (elements): the embeddings, or an MLP matrix.
int64_t LargestParameter(const ModelConfig& c) {
  return std::max(c.vocab_size * c.hidden_size, c.intermediate_size * c.hidden_size);
}

// One forward's tokens: computed cells, in rows x cols (padded) for attention.
struct Shape {
  double cells, rows, cols;
};

// worker/train/objectives.cc LayoutFlops (kAttentionElementwise = 256).
double LayoutFlops(const Arch& a, double cells, double rows, double cols) {
  const double per_cell = 2.0 * (a.D * (a.H + 2.0 * a.KV) * a.hd + a.qo * a.D + 3.0 * a.D * a.F);
  const double per_row = cols * cols * a.H * (4.0 * a.hd + 256.0);
  return a.layers * (cells * per_cell + rows * per_row);
}

// The forward shapes `pairs` pairs can take, both sides at `L` tokens (the worst case): two
// rows per pair; with the shared-prefix layout also one row per pair for every common prefix
// p for which the layout chooser (objectives.cc CheaperLayout) takes it. SFT: one row per pair.
std::vector<Shape> PairShapes(const Arch& a, double pairs, double L, bool sft, bool shared) {
  if (sft) return {{pairs * L, pairs, L}};
  std::vector<Shape> out = {{2 * pairs * L, 2 * pairs, L}};
  if (!shared) return out;
  const double separate = LayoutFlops(a, 2 * pairs * L, 2 * pairs, L);
  const int steps = 64;
  for (int i = 0; i <= steps; ++i) {
    const double p = std::max(1.0, std::floor((L - 1) * i / double(steps)));
    const double row = 2 * L - p;
    if (LayoutFlops(a, pairs * row, pairs, row) <= separate)
      out.push_back({pairs * row, pairs, row});
  }
  return out;
}

// What a phase holds, in bytes, by component.
struct Phase {
  std::string name;
  double weights = 0, gradients = 0, optimizer = 0, activations = 0, logits = 0;
  double reference_model = 0, reference_cache = 0;
  double Tensors() const {
    return weights + gradients + optimizer + activations + logits + reference_model +
           reference_cache;
  }
};

// Activations and vocabulary-sized tensors at a sub-phase's peak.
struct Act {
  double activations = 0, logits = 0;
  double Total() const { return activations + logits; }
};

void Keep(Act* best, double activations, double logits) {
  if (activations + logits > best->Total()) *best = {activations, logits};
}

struct Setup {
  Arch a;
  bool fused;  // attention without the (B, H, T, T) scores: CUDA (libtorch 2.x)
  // The language-model head in vocabulary chunks of `chunk` rows (runtime.vocab_chunk,
  // worker/model/lm_head.h) when the vocabulary is larger; 0: the full logits.
  double chunk = 0;
  bool Chunked() const { return chunk > 0 && a.V > chunk; }
};

// Bytes autograd keeps for one decoder layer (training, no checkpointing): per cell the two
// norms (float32 input and normalized copy, the linear's input in the compute dtype, and for
// non-Gemma bf16 weights the bf16 normalized copy the weight multiplies), q and k before and
// after rotation, the attention output, and the MLP's gate, activation, up and product; per
// padded cell the attention's q, k, v (k and v expanded to every head under grouped-query);
// per score the float32 softmax (and its bf16 copy) when attention is eager. `c`: compute
// bytes (2 under bf16 weights or autocast), `r`: the residual stream's (the weights').
double LayerSaved(const Setup& s, const Shape& sh, double c, double r) {
  const Arch& a = s.a;
  const double e = (!a.plus_one && r == 2) ? 2 * a.D : 0;
  const double kv_eff = a.KV != a.H ? a.qo : a.kvo;
  const double cell =
      2 * (8 * a.D + c * a.D + e) + c * (2 * a.qo + 2 * a.kvo) + c * a.qo + 4 * c * a.F;
  const double row = c * (a.qo + 2 * kv_eff) + (s.fused ? c * a.qo + 4 * a.H : 0);
  const double quad = s.fused ? 0 : a.H * (4 + (c == 2 ? 2 : 0));
  return sh.cells * cell + sh.rows * sh.cols * row + sh.rows * sh.cols * sh.cols * quad;
}

// The peak inside one decoder layer's forward without gradients: the residual and hidden
// stream, the norm's float32 temporaries, and the larger of attention's projections (with
// the rotary temporaries) and the MLP's three (N, F) tensors; per padded cell q, k, v and
// the output; per score the scores, scaled, masked and the float32 softmax (eager).
double LayerInference(const Setup& s, const Shape& sh, double c) {
  const Arch& a = s.a;
  const double kv_eff = a.KV != a.H ? a.qo : a.kvo;
  const double cell = 2 * c * a.D + 8 * a.D + std::max(c * (3 * a.qo + 3 * a.kvo), 3 * c * a.F);
  const double row = c * (2 * a.qo + 2 * kv_eff);
  const double quad = s.fused ? 0 : 12 * a.H;
  return sh.cells * cell + sh.rows * sh.cols * row + sh.rows * sh.cols * sh.cols * quad;
}

// The additive attention mask (B, 1, T, T) and the boolean it is built from.
double Mask(const Shape& sh, double r) { return sh.rows * sh.cols * sh.cols * (r + 1); }

// A forward without gradients over `sh` with `nr` predicted tokens: the layers' peak, or the
// hidden states with the heads (the language-model head's logits in float32 and
// log-sum-exp's float32 temporary).
Act Inference(const Setup& s, const Shape& sh, double nr, bool lm, double c) {
  const Arch& a = s.a;
  Act best;
  Keep(&best, LayerInference(s, sh, c) + Mask(sh, c) + sh.rows * sh.cols * c * a.D, 0);
  const double hidden = sh.rows * sh.cols * c * a.D + (lm ? nr * c * a.D : 0);
  // Chunked: one chunk's matmul output, its float32 copy and log-sum-exp's temporary.
  Keep(&best, hidden, !lm ? 0 : s.Chunked() ? (c + 8) * nr * s.chunk : 8 * nr * a.V);
  return best;
}

struct StepOptions {
  double c, r;            // compute and residual bytes
  bool gc, lm;            // gradient checkpointing; language-model head (logits)
  double copies_forward;  // bf16 autocast copies of float32 weights, alive at the forward's end
  double copies_backward;
};

// One training forward and backward over `sh` with `nr` predicted tokens.
Act TrainStep(const Setup& s, const Shape& sh, double nr, const StepOptions& o) {
  const Arch& a = s.a;
  const double layer = LayerSaved(s, sh, o.c, o.r);
  const double saved = o.gc ? a.layers * sh.cells * o.r * a.D : a.layers * layer;
  const double e = (!a.plus_one && o.r == 2) ? 2 * a.D : 0;
  // Final norm, the head's input, the mask.
  const double head = sh.cells * (8 * a.D + e) + (o.lm ? nr * o.c * a.D : 0) + Mask(sh, o.r);
  Act best;
  if (o.lm && s.Chunked()) {
    // Chunked head: nothing vocabulary-sized is kept. Its forward holds one chunk's matmul
    // output, float32 copy and log-sum-exp temporary; its backward one chunk's recomputed
    // logits (compute dtype and float32, the latter turned into the logits' gradient in
    // place), that gradient in the compute dtype and the float32 copy of its product with the
    // head, plus the hidden states' float32 gradient.
    Keep(&best, saved + head + o.copies_forward, (o.c + 8) * nr * s.chunk);
    Keep(&best, saved + head + o.copies_backward, (2 * o.c + 8) * nr * s.chunk + 4 * nr * a.D);
  } else if (o.lm) {
    // The forward's end: the logits (the head's output, and its float32 copy under bf16).
    Keep(&best, saved + head + o.copies_forward, (o.c == 2 ? 6 : 4) * nr * a.V);
    // The logits' backward: log-sum-exp's backward holds the saved logits and three more
    // float32 copies at once (self - result, its exp, the product with the gradient).
    Keep(&best, saved + head + o.copies_backward, 16 * nr * a.V);
  }
  // A layer's backward: its saved tensors and about as much in gradients; with
  // checkpointing the layer is recomputed first.
  Keep(&best, saved + head + (o.gc ? 2 : 1) * layer + o.copies_backward, 0);
  return best;
}

template <typename F>
Act MaxOver(const std::vector<Shape>& shapes, F f) {
  Act best;
  for (const Shape& sh : shapes) {
    const Act a = f(sh);
    if (a.Total() > best.Total()) best = a;
  }
  return best;
}

std::string Gib(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f", bytes / double(1ll << 30));
  return buf;
}

}  // namespace

std::string FormatBytes(int64_t bytes) {
  char buf[48];
  if (bytes >= (1ll << 30)) {
    std::snprintf(buf, sizeof(buf), "%.1f GiB", bytes / double(1ll << 30));
  } else {
    std::snprintf(buf, sizeof(buf), "%.0f MiB", bytes / double(1ll << 20));
  }
  return buf;
}

bool TrainingKind(const std::string& kind) {
  return kind == "sft" || kind == "reward" || kind == "dpo";
}

MemoryEstimate EstimateJobMemory(const ModelConfig& cfg, const json& spec, int64_t ranks) {
  MemoryEstimate m;
  ranks = std::max<int64_t>(1, ranks);
  m.kind = Field<std::string>(spec, "kind", "reward");
  const std::string device = Field<std::string>(spec, "runtime.device", "cpu");
  m.device = device.rfind("cuda", 0) == 0 ? "cuda" : "cpu";
  m.ranks = ranks;
  m.dtype = Field<std::string>(spec, "model.dtype", "float32");
  m.bf16_autocast = Field<bool>(spec, "train.bf16", false);
  m.gradient_checkpointing = Field<bool>(spec, "train.gradient_checkpointing", false);
  m.zero1 = Field<bool>(spec, "runtime.zero1", false);
  m.max_length = std::max<int64_t>(2, Field<int64_t>(spec, "data.max_length", 512));
  const int64_t batch = std::max<int64_t>(1, Field<int64_t>(spec, "train.batch_size", 8));
  m.micro_batch = (batch + ranks - 1) / ranks;
  m.eval_batch = std::max<int64_t>(1, Field<int64_t>(spec, "eval.batch_size", 16));
  // Generate, annotate and judge jobs run forward passes only, as eval does (an estimate: the
  // KV cache of generation is not counted).
  const bool trains = TrainingKind(m.kind);
  const bool dpo = m.kind == "dpo", sft = m.kind == "sft";
  const bool ref_free = Field<bool>(spec, "dpo.reference_free", false);
  m.live_reference = dpo && !ref_free && Field<bool>(spec, "dpo.live_reference", false);
  const std::string eval_reward =
      Field<std::string>(spec, "eval.reward", m.kind == "dpo" ? "dporm" : "exrm");
  const bool shared = Field<bool>(spec, "runtime.shared_prefix", true);
  const json eval_sets = Field<json>(spec, "data.eval", json::array());
  const int64_t n_eval = eval_sets.is_array() ? int64_t(eval_sets.size()) : 0;
  const int64_t limit = Field<int64_t>(spec, "data.limit", 0);
  const double bucket_bytes = Field<double>(spec, "runtime.bucket_mb", 25.0) * (1 << 20);
  if (!trains) m.gradient_checkpointing = m.zero1 = m.bf16_autocast = false;

  Setup s;
  s.a = ArchOf(cfg);
  s.fused = m.device == "cuda";
  m.vocab_chunk = std::max<int64_t>(0, Field<int64_t>(spec, "runtime.vocab_chunk", 32768));
  s.chunk = double(m.vocab_chunk);
  const Arch& a = s.a;
  const double w = m.dtype == "bfloat16" ? 2 : 4;
  const double c_train = (m.bf16_autocast || w == 2) ? 2 : 4;
  const double L = double(m.max_length);
  const double R = double(ranks);
  const bool zero1 = m.zero1 && ranks > 1;

  // The trained (or evaluated) model and the reference.
  const bool reward_head = trains ? m.kind == "reward" : eval_reward == "exrm";
  const double P = Parameters(cfg, reward_head);
  const double P_lm = Parameters(cfg, false);
  m.parameters = int64_t(P);
  const bool uses_ref = (dpo && !ref_free) || (!trains && eval_reward == "dporm");
  // Reference log-probs: a chosen and a rejected float32 per pair of the train and eval sets
  // (data.limit pairs each when set; else assumed 200k, more than the study's sets have).
  const double ref_cache =
      uses_ref ? 8.0 * double(limit > 0 ? limit : 200'000) * double((dpo ? 1 : 0) + n_eval) : 0;

  // Shapes: training micro-batch and evaluation batch.
  const std::vector<Shape> train_shapes = PairShapes(a, m.micro_batch, L, sft, shared);
  const double train_nr = (sft ? 1 : 2) * m.micro_batch * (L - 1);
  const std::vector<Shape> eval_shapes = PairShapes(a, m.eval_batch, L, false, shared);
  const double eval_nr = 2 * m.eval_batch * (L - 1);

  std::vector<Phase> phases;
  // The reference pass (reference log-probs, computed while the reference is the only model).
  if (uses_ref) {
    Phase p;
    p.name = "reference";
    p.reference_model = P_lm * w;
    p.reference_cache = ref_cache;
    const Act act =
        MaxOver(eval_shapes, [&](const Shape& sh) { return Inference(s, sh, eval_nr, true, w); });
    p.activations = act.activations;
    p.logits = act.logits;
    phases.push_back(p);
  }
  if (trains) {
    Phase persistent;
    persistent.weights = P * w;
    persistent.gradients = P * w + (zero1 ? std::ceil(P / R) * w : 0);
    // AdamW's two moments; bf16 weights train through float32 master copies with float32
    // moments (worker/train/optim.h): 12 bytes a parameter, sharded under ZeRO-1.
    persistent.optimizer = (w == 4 ? 2 * P * 4 : 3 * P * 4) / (zero1 ? R : 1);
    persistent.reference_model = m.live_reference ? P_lm * w : 0;
    persistent.reference_cache = ref_cache;
    // The training step.
    StepOptions o;
    o.c = c_train;
    o.r = w;
    o.gc = m.gradient_checkpointing;
    o.lm = !reward_head;
    const bool copies = m.bf16_autocast && w == 4;
    const double head_copy = o.lm ? 2 * a.V * a.D : 0;
    o.copies_forward = !copies ? 0 : (o.gc && m.zero1) ? head_copy : 2 * P;
    o.copies_backward = !copies ? 0 : o.gc ? head_copy + 2.0 * double(LayerParameters(cfg)) : 2 * P;
    Phase step = persistent;
    step.name = "train";
    Act act = MaxOver(train_shapes, [&](const Shape& sh) { return TrainStep(s, sh, train_nr, o); });
    if (m.live_reference) {
      // The live reference's forward comes first, inside the step's autocast.
      const Act ref = MaxOver(
          train_shapes, [&](const Shape& sh) { return Inference(s, sh, train_nr, true, c_train); });
      if (ref.Total() > act.Total()) act = ref;
    }
    step.activations = act.activations;
    step.logits = act.logits;
    phases.push_back(step);
    // The end of backward and the optimizer step: the embeddings' dense gradient, then
    // AdamW's temporaries (none on CPU in float32: one fused loop).
    Phase opt = persistent;
    opt.name = "optimizer";
    const double largest = double(LargestParameter(cfg));
    const double chunk = zero1 ? std::ceil(std::max(largest, bucket_bytes / w) / R) : largest;
    const bool fused_adamw = m.device == "cpu" && w == 4;
    // bf16 weights: the float32 copy of a gradient chunk, then the tensor ops' temporaries.
    opt.activations = std::max(a.V * a.D * w, fused_adamw ? 0.0 : (w == 4 ? 2 : 3) * chunk * 4);
    phases.push_back(opt);
    // Evaluation at the end of training (data.eval), the model and optimizer still resident.
    if (n_eval > 0 && !sft) {
      Phase ev = persistent;
      ev.name = "eval";
      const Act e = MaxOver(
          eval_shapes, [&](const Shape& sh) { return Inference(s, sh, eval_nr, !reward_head, w); });
      ev.activations = e.activations;
      ev.logits = e.logits;
      phases.push_back(ev);
    }
  } else {
    Phase ev;
    ev.name = "eval";
    ev.weights = P * w;
    ev.reference_cache = ref_cache;
    const Act e = MaxOver(
        eval_shapes, [&](const Shape& sh) { return Inference(s, sh, eval_nr, !reward_head, w); });
    ev.activations = e.activations;
    ev.logits = e.logits;
    phases.push_back(ev);
  }

  auto runtime = [&](const Phase& p) {
    return m.device == "cuda" ? double(kCudaRuntimeBytes) + kCudaAllocatorSlack * p.Tensors()
                              : double(kCpuRuntimeBytes);
  };
  const Phase* peak = &phases.front();
  for (const Phase& p : phases) {
    const double total = p.Tensors() + runtime(p);
    m.phases[p.name] = int64_t(total);
    if (total > peak->Tensors() + runtime(*peak)) peak = &p;
  }
  m.peak_phase = peak->name;
  m.weights = int64_t(peak->weights);
  m.gradients = int64_t(peak->gradients);
  m.optimizer = int64_t(peak->optimizer);
  m.activations = int64_t(peak->activations);
  m.logits = int64_t(peak->logits);
  m.reference_model = int64_t(peak->reference_model);
  m.reference_cache = int64_t(peak->reference_cache);
  m.runtime = int64_t(runtime(*peak));
  m.total = m.weights + m.gradients + m.optimizer + m.activations + m.logits + m.reference_model +
            m.reference_cache + m.runtime;
  return m;
}

json MemoryEstimate::ToJson() const {
  return {{"kind", kind},
          {"device", device},
          {"ranks", ranks},
          {"micro_batch", micro_batch},
          {"eval_batch", eval_batch},
          {"max_length", max_length},
          {"dtype", dtype},
          {"bf16_autocast", bf16_autocast},
          {"gradient_checkpointing", gradient_checkpointing},
          {"zero1", zero1},
          {"vocab_chunk", vocab_chunk},
          {"live_reference", live_reference},
          {"parameters", parameters},
          {"bytes",
           {{"weights", weights},
            {"gradients", gradients},
            {"optimizer", optimizer},
            {"activations", activations},
            {"logits", logits},
            {"reference_model", reference_model},
            {"reference_cache", reference_cache},
            {"runtime", runtime},
            {"total", total}}},
          {"peak_phase", peak_phase},
          {"phases", phases},
          {"summary", Summary()}};
}

std::string MemoryEstimate::Summary() const {
  std::string s = kind + " on " + device + ", " + std::to_string(ranks) +
                  (ranks == 1 ? " rank" : " ranks") + ", ";
  if (!TrainingKind(kind)) {
    s += "eval batch " + std::to_string(eval_batch);
  } else {
    s += "micro-batch " + std::to_string(micro_batch);
  }
  s += " x " + std::to_string(max_length) + " tokens, " + (dtype == "bfloat16" ? "bf16" : "fp32") +
       " weights";
  if (bf16_autocast) s += ", bf16 autocast";
  if (zero1) s += ", ZeRO-1";
  if (gradient_checkpointing) s += ", checkpointing";
  if (live_reference) s += ", live reference";
  s += ": " + FormatBytes(total) + " per rank at its peak (" + peak_phase + "): ";
  std::string parts;
  auto part = [&](const char* name, int64_t v) {
    if (v <= 0) return;
    if (!parts.empty()) parts += ", ";
    parts += std::string(name) + " " + Gib(double(v));
  };
  part("weights", weights);
  part("gradients", gradients);
  part("optimizer", optimizer);
  part("activations", activations);
  part("logits", logits);
  part("reference", reference_model);
  part("ref log-probs", reference_cache);
  part("runtime", runtime);
  return s + parts + " GiB";
}

json MemoryOption::ToJson() const {
  return {{"change", change}, {"patch", patch},
          {"ranks", ranks},   {"total_bytes", estimate.total},
          {"fits", fits},     {"summary", estimate.Summary()}};
}

std::vector<MemoryOption> AdviseMemory(const ModelConfig& cfg, const json& spec, int64_t ranks,
                                       int64_t budget, int64_t max_ranks) {
  ranks = std::max<int64_t>(1, ranks);
  const MemoryEstimate base = EstimateJobMemory(cfg, spec, ranks);
  const bool trains = TrainingKind(base.kind);
  std::vector<MemoryOption> out;
  auto estimate = [&](const json& patch, int64_t r) {
    json s = spec;
    if (!patch.is_null()) s.merge_patch(patch);
    return EstimateJobMemory(cfg, s, r);
  };
  auto add = [&](const std::string& change, const json& patch, int64_t r) {
    MemoryOption o;
    o.change = change;
    o.patch = patch;
    o.ranks = r;
    o.estimate = estimate(patch, r);
    o.fits = o.estimate.total <= budget;
    out.push_back(std::move(o));
  };
  json flags = json::object();
  std::vector<std::string> names;
  auto flag = [&](const std::string& name, const json& patch) {
    add(name, patch, ranks);
    flags.merge_patch(patch);
    names.push_back(name);
  };
  if (trains && !base.zero1 && ranks > 1)
    flag("runtime.zero1: true", {{"runtime", {{"zero1", true}}}});
  if (trains && !base.gradient_checkpointing) {
    flag("train.gradient_checkpointing: true", {{"train", {{"gradient_checkpointing", true}}}});
  }
  if (base.dtype != "bfloat16") flag("model.dtype: bfloat16", {{"model", {{"dtype", "bfloat16"}}}});
  if (names.size() > 1) {
    std::string all;
    for (const auto& n : names) all += (all.empty() ? "" : " + ") + n;
    add(all, flags, ranks);
  }
  // A smaller micro-batch with more accumulation: the same global batch a step.
  if (trains) {
    const int64_t batch = Field<int64_t>(spec, "train.batch_size", 8);
    const int64_t accum = Field<int64_t>(spec, "train.gradient_accumulation", 1);
    const int64_t planned = Field<int64_t>(spec, "train.ranks", 0);
    const bool per_rank = !Field<json>(spec, "train.per_rank_batch_size", json()).is_null();
    int64_t last_micro = base.micro_batch;
    for (int64_t k = 2; k <= batch && batch % k == 0; k *= 2) {
      const int64_t b = batch / k, micro = (b + ranks - 1) / ranks;
      if (micro == last_micro) break;
      last_micro = micro;
      json patch = {{"train", {{"batch_size", b}, {"gradient_accumulation", accum * k}}}};
      if (per_rank && planned > 0 && b % planned == 0) {
        patch["train"]["per_rank_batch_size"] = b / planned;
      }
      const MemoryEstimate e = estimate(patch, ranks);
      const bool last = micro == 1 || batch % (2 * k) != 0;
      if (e.total <= budget || last) {
        add("train.batch_size: " + std::to_string(b) +
                " with train.gradient_accumulation: " + std::to_string(accum * k) +
                " (micro-batch " + std::to_string(micro) + " per rank, the same global batch)",
            patch, ranks);
        break;
      }
    }
  }
  // A smaller eval batch, when evaluation or the reference pass is the peak.
  if (base.peak_phase == "eval" || base.peak_phase == "reference") {
    for (int64_t eb = base.eval_batch / 2; eb >= 1; eb /= 2) {
      const json patch = {{"eval", {{"batch_size", eb}}}};
      const MemoryEstimate e = estimate(patch, ranks);
      if (e.total <= budget || eb == 1) {
        add("eval.batch_size: " + std::to_string(eb), patch, ranks);
        break;
      }
    }
  }
  // More ranks (the global batch stays): per-rank memory never grows with ranks, so the
  // fewest that fit is a binary search.
  if (trains) {
    auto fewest = [&](const json& patch) -> int64_t {
      if (max_ranks <= ranks || estimate(patch, max_ranks).total > budget) return 0;
      int64_t lo = ranks, hi = max_ranks;  // lo does not fit (or is the start), hi fits
      while (hi - lo > 1) {
        const int64_t mid = lo + (hi - lo) / 2;
        (estimate(patch, mid).total <= budget ? hi : lo) = mid;
      }
      return hi;
    };
    if (base.total > budget) {
      if (const int64_t r = fewest(json()); r > 0) {
        add("ranks: " + std::to_string(r) + " (resources.ranks)", json(), r);
      }
    }
    if (!names.empty() && estimate(flags, ranks).total > budget) {
      if (const int64_t r = fewest(flags); r > 0) {
        std::string all;
        for (const auto& n : names) all += " + " + n;
        add("ranks: " + std::to_string(r) + " (resources.ranks)" + all, flags, r);
      }
    }
  }
  std::stable_sort(out.begin(), out.end(), [](const MemoryOption& x, const MemoryOption& y) {
    if (x.fits != y.fits) return x.fits;
    return x.estimate.total < y.estimate.total;
  });
  return out;
}

namespace {

// A config.json named by a submitter, read inside an RPC: a regular file of at most
// kMaxConfigBytes, opened without blocking (a FIFO or /dev/zero is refused, not read).
constexpr int64_t kMaxConfigBytes = 1 << 20;
StatusOr<std::string> ReadConfigFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return NotFoundError(path + ": cannot open");
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > kMaxConfigBytes) {
    ::close(fd);
    return InvalidArgumentError(path + ": not a regular file of at most 1 MiB");
  }
  std::string text(static_cast<size_t>(st.st_size), '\0');
  size_t got = 0;
  while (got < text.size()) {
    const ssize_t n = ::read(fd, text.data() + got, text.size() - got);
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  ::close(fd);
  text.resize(got);
  return text;
}

}  // namespace

StatusOr<ModelConfig> JobModelConfig(const JobRecord& job, const Study* study,
                                     const std::string& base_dir, std::string* source) {
  auto resolve = [&](const std::string& p) -> std::string {
    if (p.empty() || p.find("${") != std::string::npos) return "";
    if (base_dir.empty() || fs::path(p).is_absolute()) return p;
    return (fs::path(base_dir) / p).string();
  };
  auto in_dir = [&](const std::string& dir) {
    const std::string d = resolve(dir);
    return d.empty() ? d : (fs::path(d) / "config.json").string();
  };
  std::vector<std::string> candidates;
  const json model = job.spec.is_object() ? job.spec.value("model", json::object()) : json();
  if (model.is_object()) {
    if (model.contains("config") && model["config"].is_string()) {
      candidates.push_back(resolve(model["config"].get<std::string>()));
    }
    if (model.contains("path") && model["path"].is_string()) {
      candidates.push_back(in_dir(model["path"].get<std::string>()));
    }
  }
  if (study != nullptr && job.labels.is_object()) {
    const std::string name = job.labels.value("model", "");
    for (const StudyModel& m : study->models) {
      if (m.name != name) continue;
      candidates.push_back(resolve(m.config));
      candidates.push_back(in_dir(m.path));
      candidates.push_back(resolve(m.arch));
    }
  }
  std::string tried;
  for (const std::string& path : candidates) {
    if (path.empty()) continue;
    if (!FileExists(path)) {
      tried += (tried.empty() ? "" : ", ") + path;
      continue;
    }
    ASSIGN_OR_RETURN(std::string text, ReadConfigFile(path));
    ASSIGN_OR_RETURN(ModelConfig cfg, ParseModelConfig(text, path));
    if (source != nullptr) *source = path;
    return cfg;
  }
  return NotFoundError("job " + (job.id.empty() ? job.name : job.id) +
                       ": no model config.json readable here" +
                       (tried.empty() ? std::string() : " (tried " + tried + ")") +
                       ". HINT: give the study model an `arch:` config.json for planning");
}

WorkerFit CheckWorkerFit(int64_t bytes_per_rank, int64_t ranks,
                         const std::vector<WorkerRecord>& workers) {
  WorkerFit f;
  int64_t unknown_slots = 0;
  for (const WorkerRecord& w : workers) {
    if (w.memory_bytes_per_slot <= 0) {
      unknown_slots += w.slots;
      continue;
    }
    if (w.memory_bytes_per_slot > f.largest_memory) {
      f.largest_memory = w.memory_bytes_per_slot;
      f.largest_worker = w.id;
    }
    if (w.memory_bytes_per_slot >= bytes_per_rank) f.slots_that_fit += w.slots;
  }
  f.known = f.largest_memory > 0;
  f.fits = f.slots_that_fit >= ranks;
  if (!f.fits && f.slots_that_fit + unknown_slots >= ranks) {
    // Workers that do not report their memory could take it.
    f.known = false;
    f.fits = true;
  }
  if (!f.known) f.fits = true;
  return f;
}

json PlanJobMemory(const JobRecord& job, const std::vector<WorkerRecord>& workers,
                   const std::string& base_dir, const Study* study) {
  json out = {
      {"job", job.id},          {"name", job.name},        {"kind", job.kind},
      {"ranks", job.ranks},     {"model_config", nullptr}, {"estimate", nullptr},
      {"total_bytes", nullptr}, {"fits", nullptr},         {"largest_worker_memory_bytes", nullptr},
      {"advice", json::array()}};
  std::string source;
  auto cfg = JobModelConfig(job, study, base_dir, &source);
  if (!cfg.ok()) {
    out["error"] = cfg.status().message();
    out["summary"] = job.name + ": no estimate (" + cfg.status().message() + ")";
    return out;
  }
  const MemoryEstimate e = EstimateJobMemory(*cfg, job.spec, job.ranks);
  out["model_config"] = {{"source", source}, {"parameters", e.parameters}};
  out["estimate"] = e.ToJson();
  out["total_bytes"] = e.total;
  out["summary"] = e.Summary();
  const WorkerFit fit = CheckWorkerFit(e.total, job.ranks, workers);
  if (fit.largest_memory > 0) {
    out["largest_worker_memory_bytes"] = fit.largest_memory;
    out["largest_worker"] = fit.largest_worker;
  }
  if (fit.known) {
    out["fits"] = fit.fits;
    out["slots_that_fit"] = fit.slots_that_fit;
    if (!fit.fits) {
      json options = json::array();
      for (const MemoryOption& o : AdviseMemory(*cfg, job.spec, job.ranks, fit.largest_memory)) {
        out["advice"].push_back(o.change + ": " + FormatBytes(o.estimate.total) + " per rank" +
                                (o.fits ? " (fits)" : " (does not fit)"));
        options.push_back(o.ToJson());
      }
      out["options"] = options;
    }
  }
  return out;
}

}  // namespace rmgen::coord
