// DecoderLM: a decoder-only transformer (llama / mistral / gemma) with either a language
// modelling head or a scalar reward head, holding its parameters under their Hugging Face
// names so checkpoints move between rmgen and transformers unchanged.
//
// The forward pass is functional over the parameter tensors; families differ only by
// FamilyTraits and config values. The entry points return no more than a job needs:
//   Hidden()            final-norm hidden states            (B, T, D)
//   Scores()            reward head at the last non-pad token (B,)      EXRM
//   SequenceLogProbs()  summed log-probs of response tokens  (B,)       DPO / DPORM
//   Logits()            full-vocabulary logits, for tests and generation only
// Batches are right- or left-padded; `attention_mask` (B, T) is 1 on real tokens. Position
// ids are 0..T-1 as transformers uses when none are given.
//
// A TokenLayout generalizes the padded batch: each cell carries a position id and a segment,
// so one row can hold a prompt once and two continuations of it (chosen and rejected) that
// do not see each other. ScoresAt() and SideLogProbs() read the outputs of such a layout.
// Padding cells are never computed: the token-wise work (projections, MLP, norms) runs on
// the real cells only, and attention sees them scattered back into their rows.
//
// Generation (worker/model/generate.h) runs on a KvCache: Prefill() runs right-padded prompts
// once (padding cells not computed) and keeps each layer's keys and values; DecodeStep()
// then runs one new token per row against them.
//
// Thread safety: forward calls are const and may run concurrently; parameter updates must
// not overlap them. A KvCache belongs to one caller.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "worker/model/config.h"
#include "worker/model/lm_head.h"
#include "worker/model/safetensors.h"
#include "worker/model/torch_compat.h"
#include "worker/model/varlen.h"

namespace rmgen {

enum class HeadKind { kLanguageModel, kReward };

// How a training or evaluation forward computes attention (worker/model/varlen.h).
//   kAuto             the flash kernels over variable-length segments (no padding, no mask
//                     tensor) where they apply: libtorch 2.5+, CUDA compute capability 8+
//                     (A100, H100), fp16/bf16 compute (weights or autocast), head_dim a
//                     multiple of 8 up to 256, a layout with a plan;
//                     elsewhere kMasked
//   kMasked           every row padded to the batch's width with an additive (B, 1, T, T) mask
//                     (SDPA on libtorch 2.x, eager math on 1.13): the CPU path
//   kVarlenReference  the segments' math eagerly on any device and dtype: the flash path's
//                     semantics on CPU, for tests
// Prefill (generation) always takes kMasked.
enum class AttentionKernel { kAuto, kMasked, kVarlenReference };

// Where each token of a batch sits, (B, T) int64 each. A token attends to the tokens of its
// row whose position is <= its own and whose segment is 0 (shared by the whole row) or its
// own; segment -1 marks padding, which nothing attends to and which is not computed.
struct TokenLayout {
  torch::Tensor ids;
  torch::Tensor positions;
  torch::Tensor segments;

  // Plain rows: positions 0..T-1, segment 0 where attention_mask is 1, else -1.
  static TokenLayout Padded(const torch::Tensor& ids, const torch::Tensor& attention_mask);
};

// Keys and values of every layer for a batch of sequences being generated. Row b's token at
// position p sits in slot p (positions are contiguous from 0), so row b holds `lengths[b]`
// tokens in slots [0, lengths[b]); later slots are free (zero, or stale after Select).
struct KvCache {
  std::vector<torch::Tensor> k, v;  // per layer (B, KV, capacity, head_dim)
  torch::Tensor lengths;            // (B) int64, on the model's device
  int64_t capacity = 0;
  int64_t max_length = 0;  // max(lengths), kept on the host
  torch::Tensor cos, sin;  // rotary tables for positions [0, capacity): (capacity, hd)

  int64_t rows() const { return lengths.defined() ? lengths.size(0) : 0; }
  // Keeps only `rows` (int64 indices into the batch), in that order.
  void Select(const torch::Tensor& rows);
};

// What a parameter is and how RandomInit fills it.
struct ParamSpec {
  enum class Init { kNormal, kNorm, kZero };
  std::string name;  // Hugging Face name, e.g. "model.layers.0.self_attn.q_proj.weight"
  std::vector<int64_t> shape;
  Init init;
};

// Every parameter of (config, head), in a fixed order: embeddings, layers, final norm, head.
std::vector<ParamSpec> ParameterSpecs(const ModelConfig& config, HeadKind head);

class DecoderLM {
 public:
  // `params` must hold exactly ParameterSpecs(config, head), with those shapes.
  DecoderLM(ModelConfig config, HeadKind head, NamedTensors params);

  // Seeded random init as transformers does it (normal(0, initializer_range) for linear
  // and embedding weights; RMSNorm weights 1, or 0 where the family applies 1 + w).
  static std::unique_ptr<DecoderLM> RandomInit(const ModelConfig& config, HeadKind head,
                                               uint64_t seed, torch::Dtype dtype,
                                               torch::Device device = torch::kCPU);

  const ModelConfig& config() const { return config_; }
  HeadKind head() const { return head_; }
  const NamedTensors& named_parameters() const { return params_; }
  std::vector<torch::Tensor> parameters() const;
  void SetRequiresGrad(bool requires_grad);
  // Recompute each layer's activations in backward instead of keeping them (memory for
  // compute); gradients are the same.
  void SetGradientCheckpointing(bool on) { gradient_checkpointing_ = on; }
  // Vocabulary rows per chunk of the language-model head in SideLogProbs() and
  // SequenceLogProbs() (worker/model/lm_head.h): a vocabulary larger than this never has its
  // full logits computed at once, forward or backward. 0: always the full logits.
  void SetVocabChunk(int64_t rows) { vocab_chunk_ = rows; }
  void SetAttentionKernel(AttentionKernel kernel) { attention_ = kernel; }
  // RMSNorm, rotary embedding and the gated MLP product as fused CUDA kernels
  // (worker/model/fused_ops.h) where they are built and their tensors qualify (CUDA, one
  // dtype); the ATen composition otherwise. Off by default.
  void SetFusedKernels(bool on) { fused_kernels_ = on; }
  // Whether a forward now (device, dtype, autocast) would run the flash kernels (kAuto).
  bool UsesFlashAttention() const;
  int64_t vocab_chunk() const { return vocab_chunk_; }
  int64_t NumParameters() const;

  // input_ids (B, T) int64, attention_mask (B, T) -> (B, T, D) in the parameter dtype.
  // Padding cells of the result are zero.
  torch::Tensor Hidden(const torch::Tensor& input_ids, const torch::Tensor& attention_mask) const;
  torch::Tensor Hidden(const TokenLayout& layout) const;
  // Prompts (B, T), right-padded (attention_mask 1 on each row's first tokens, then 0) ->
  // hidden (B, T, D) as Hidden(), and `cache` filled for them with room for `capacity`
  // tokens a row (capacity >= T). Padding cells are not computed.
  torch::Tensor Prefill(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                        int64_t capacity, KvCache* cache) const;
  // One token a row (B) at position cache->lengths -> hidden (B, D); the token's keys and
  // values are added to the cache and lengths advance by one. Every row must have room.
  torch::Tensor DecodeStep(const torch::Tensor& tokens, KvCache* cache) const;
  // hidden (..., D) -> (..., V) float32. Language-model head only.
  torch::Tensor Logits(const torch::Tensor& hidden) const;
  // Sum over positions t with response_mask[b, t] = 1 of log p(input_ids[b, t] | < t):
  // (B,) float32. Logits are computed only at those positions. response_mask[:, 0] must
  // be 0 (the first token has no prediction). With `logit_means`: also, per row, the sum over
  // those positions of the mean logit over the vocabulary (no gradient), for TRL's
  // logits/chosen|rejected.
  torch::Tensor SequenceLogProbs(const torch::Tensor& input_ids,
                                 const torch::Tensor& attention_mask,
                                 const torch::Tensor& response_mask,
                                 torch::Tensor* logit_means = nullptr) const;
  // Reward head at the last position where attention_mask is 1: (B,) float32.
  torch::Tensor Scores(const torch::Tensor& hidden, const torch::Tensor& attention_mask) const;

  // Reward head at flat cells (row * T + column) of hidden (B, T, D): (N,) float32.
  torch::Tensor ScoresAt(const torch::Tensor& hidden, const torch::Tensor& cells) const;
  // Per side s in [0, sides): the sum over i with side[i] == s of
  // log p(targets[i] | the context ending at flat cell from[i]): (sides,) float32. Logits are
  // computed at those cells only. `logit_means` as in SequenceLogProbs.
  torch::Tensor SideLogProbs(const torch::Tensor& hidden, const torch::Tensor& from,
                             const torch::Tensor& targets, const torch::Tensor& side, int64_t sides,
                             torch::Tensor* logit_means = nullptr) const;

  // Index of the last non-pad token of each row, from the mask (never from pad ids,
  // which may equal EOS): (B,) int64.
  static torch::Tensor LastTokenIndex(const torch::Tensor& attention_mask);

 private:
  struct Layer {
    torch::Tensor input_norm;            // (D)
    torch::Tensor wq, wk, wv, wo;        // (H*hd, D), (KV*hd, D), (KV*hd, D), (D, H*hd)
    torch::Tensor bq, bk, bv;            // (H*hd), (KV*hd), (KV*hd) or undefined
    torch::Tensor post_norm;             // (D)
    torch::Tensor w_gate, w_up, w_down;  // (F, D), (F, D), (D, F)
  };

  // What every layer of one forward shares. Activations are (N, D): the real cells of the
  // (B, T) batch, in row-major order; `cells` (N) are their flat indices.
  struct Frame {
    torch::Tensor cos, sin;  // (N, hd) rotary tables at each cell's position
    torch::Tensor mask;      // (B, 1, T, T) additive attention mask (undefined: varlen)
    VarlenPlan varlen;       // defined: attention over variable-length segments, no mask
    bool flash = false;      // varlen through the CUDA kernels (else the eager reference)
    torch::Tensor cells;     // (N) int64
    int64_t rows = 0, cols = 0;
    KvCache* cache = nullptr;  // Prefill: each layer stores its keys and values here
  };

  struct LayerCheckpoint : public torch::autograd::Function<LayerCheckpoint> {
    // `frame`: the Frame (its tensors are saved, so it need not outlive the call).
    static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor x,
                                 int64_t model, int64_t layer, int64_t frame);
    static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::tensor_list grad_out);
  };

  torch::Tensor LayerForward(const Layer& l, const torch::Tensor& x, const Frame& f) const;
  torch::Tensor AttentionMask(const torch::Tensor& pos, const torch::Tensor& seg, int64_t B,
                              int64_t T) const;
  torch::Tensor Hidden(const TokenLayout& layout, KvCache* cache) const;
  torch::Tensor Embed(const torch::Tensor& ids) const;
  // float32 rotary tables at `positions` (N) in the compute dtype: cos, sin (N, hd).
  std::pair<torch::Tensor, torch::Tensor> Rotary(const torch::Tensor& positions) const;
  torch::Tensor DecodeAttention(size_t layer, const torch::Tensor& x, const torch::Tensor& cos,
                                const torch::Tensor& sin, const torch::Tensor& slots,
                                const torch::Tensor& mask, KvCache* cache) const;
  torch::Tensor Norm(const torch::Tensor& x, const torch::Tensor& w) const;
  torch::Tensor Mlp(const Layer& l, const torch::Tensor& x) const;
  torch::Tensor Attention(const Layer& l, const torch::Tensor& x, const Frame& f) const;
  const torch::Tensor& Param(const std::string& name) const;

  ModelConfig config_;
  HeadKind head_;
  FamilyTraits traits_;
  NamedTensors params_;
  torch::Tensor embed_;  // (V, D)
  std::vector<Layer> layers_;
  torch::Tensor final_norm_;  // (D)
  torch::Tensor lm_head_;     // (V, D): embed_ when tied; undefined for a reward model
  torch::Tensor score_;       // (1, D) reward model only
  bool gradient_checkpointing_ = false;
  int64_t vocab_chunk_ = kDefaultVocabChunk;
  AttentionKernel attention_ = AttentionKernel::kAuto;
  bool fused_kernels_ = false;
};

}  // namespace rmgen
