#include "worker/model/decoder.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <tuple>
#include <vector>

#include "worker/model/fused_ops.h"

namespace rmgen {
namespace {

std::string LayerPrefix(int64_t i) { return "model.layers." + std::to_string(i) + "."; }

torch::Tensor RotateHalf(const torch::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return torch::cat({-x.slice(-1, half), x.slice(-1, 0, half)}, -1);
}

torch::Tensor Activation(const std::string& name, const torch::Tensor& x) {
  if (name == "silu") return torch::silu(x);
  if (name == "gelu") return torch::gelu(x);
  return torch::gelu(x, "tanh");  // gelu_pytorch_tanh, gelu_new (validated at parse time)
}

// transformers' torch.finfo(dtype).min for masked scores. (Hidden also lets every cell
// see itself, so no row of the mask is fully masked whatever the compute dtype.)
double LowestValue(torch::Dtype dtype) {
  switch (dtype) {
    case torch::kFloat16: return -65504.0;
    case torch::kBFloat16: return -3.3895313892515355e38;
    case torch::kFloat64: return std::numeric_limits<double>::lowest();
    default: return std::numeric_limits<float>::lowest();
  }
}

// Decode attention for fp32 on CPU, one query a row: for row b and head h (kv head
// h / (H / KV)), softmax over the keys j <= slots[b] (and slots[b] - j < window when a window
// is set) of q . k_j * scale, then the weighted sum of the v_j. The same values as the masked
// matmul path (masked keys weigh exp(lowest) = 0 there); one parallel loop instead of a
// dozen tensor ops and a small GEMM per (row, kv head). q (B, H, hd); k, v (B, KV, cap, hd).
torch::Tensor CpuDecodeAttention(const torch::Tensor& q, const torch::Tensor& k,
                                 const torch::Tensor& v, const torch::Tensor& slots, int64_t window,
                                 double scale) {
  const int64_t B = q.size(0), H = q.size(1), hd = q.size(2);
  const int64_t KV = k.size(1), cap = k.size(2), G = H / KV;
  TORCH_CHECK(k.is_contiguous() && v.is_contiguous(), "the KV cache must be contiguous");
  auto out = torch::empty_like(q);
  const float* qp = q.data_ptr<float>();
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  float* op = out.data_ptr<float>();
  auto pos = slots.to(torch::kCPU).contiguous();
  const int64_t* pp = pos.data_ptr<int64_t>();
  const float fscale = static_cast<float>(scale);
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> w;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / H, h = i % H, kv = h / G;
      const int64_t last = pp[b];
      const int64_t first = window > 0 ? std::max<int64_t>(0, last - window + 1) : 0;
      const float* qv = qp + i * hd;
      const float* kb = kp + (b * KV + kv) * cap * hd;
      const float* vb = vp + (b * KV + kv) * cap * hd;
      w.assign(last - first + 1, 0.0f);
      float top = -std::numeric_limits<float>::infinity();
      for (int64_t j = first; j <= last; ++j) {
        const float* kj = kb + j * hd;
        float dot = 0;
        for (int64_t d = 0; d < hd; ++d) dot += qv[d] * kj[d];
        w[j - first] = dot * fscale;
        top = std::max(top, w[j - first]);
      }
      float total = 0;
      for (float& x : w) total += (x = std::exp(x - top));
      float* o = op + i * hd;
      std::fill(o, o + hd, 0.0f);
      for (int64_t j = first; j <= last; ++j) {
        const float a = w[j - first] / total;
        const float* vj = vb + j * hd;
        for (int64_t d = 0; d < hd; ++d) o[d] += a * vj[d];
      }
    }
  });
  return out;
}

}  // namespace

std::vector<ParamSpec> ParameterSpecs(const ModelConfig& c, HeadKind head) {
  using Init = ParamSpec::Init;
  const int64_t D = c.hidden_size, F = c.intermediate_size, hd = c.head_dim;
  const int64_t q_out = c.num_heads * hd, kv_out = c.num_kv_heads * hd;
  std::vector<ParamSpec> specs;
  specs.push_back({"model.embed_tokens.weight", {c.vocab_size, D}, Init::kNormal});
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = LayerPrefix(i);
    specs.push_back({p + "input_layernorm.weight", {D}, Init::kNorm});
    specs.push_back({p + "self_attn.q_proj.weight", {q_out, D}, Init::kNormal});
    specs.push_back({p + "self_attn.k_proj.weight", {kv_out, D}, Init::kNormal});
    specs.push_back({p + "self_attn.v_proj.weight", {kv_out, D}, Init::kNormal});
    if (c.attention_bias) {
      specs.push_back({p + "self_attn.q_proj.bias", {q_out}, Init::kZero});
      specs.push_back({p + "self_attn.k_proj.bias", {kv_out}, Init::kZero});
      specs.push_back({p + "self_attn.v_proj.bias", {kv_out}, Init::kZero});
    }
    specs.push_back({p + "self_attn.o_proj.weight", {D, q_out}, Init::kNormal});
    specs.push_back({p + "post_attention_layernorm.weight", {D}, Init::kNorm});
    specs.push_back({p + "mlp.gate_proj.weight", {F, D}, Init::kNormal});
    specs.push_back({p + "mlp.up_proj.weight", {F, D}, Init::kNormal});
    specs.push_back({p + "mlp.down_proj.weight", {D, F}, Init::kNormal});
  }
  specs.push_back({"model.norm.weight", {D}, Init::kNorm});
  if (head == HeadKind::kReward) {
    specs.push_back({"score.weight", {1, D}, Init::kNormal});
  } else if (!c.tie_word_embeddings) {
    specs.push_back({"lm_head.weight", {c.vocab_size, D}, Init::kNormal});
  }
  return specs;
}

DecoderLM::DecoderLM(ModelConfig config, HeadKind head, NamedTensors params)
    : config_(std::move(config)),
      head_(head),
      traits_(TraitsOf(config_.family)),
      params_(std::move(params)) {
  const auto specs = ParameterSpecs(config_, head_);
  if (specs.size() != params_.size()) {
    throw std::invalid_argument("DecoderLM: expected " + std::to_string(specs.size()) +
                                " parameters, got " + std::to_string(params_.size()));
  }
  for (size_t i = 0; i < specs.size(); ++i) {
    if (specs[i].name != params_[i].first || params_[i].second.sizes().vec() != specs[i].shape) {
      throw std::invalid_argument("DecoderLM: parameter " + std::to_string(i) + " is '" +
                                  params_[i].first + "', expected '" + specs[i].name +
                                  "' with its shape");
    }
  }
  embed_ = Param("model.embed_tokens.weight");
  for (int64_t i = 0; i < config_.num_layers; ++i) {
    const std::string p = LayerPrefix(i);
    Layer l;
    l.input_norm = Param(p + "input_layernorm.weight");
    l.wq = Param(p + "self_attn.q_proj.weight");
    l.wk = Param(p + "self_attn.k_proj.weight");
    l.wv = Param(p + "self_attn.v_proj.weight");
    if (config_.attention_bias) {
      l.bq = Param(p + "self_attn.q_proj.bias");
      l.bk = Param(p + "self_attn.k_proj.bias");
      l.bv = Param(p + "self_attn.v_proj.bias");
    }
    l.wo = Param(p + "self_attn.o_proj.weight");
    l.post_norm = Param(p + "post_attention_layernorm.weight");
    l.w_gate = Param(p + "mlp.gate_proj.weight");
    l.w_up = Param(p + "mlp.up_proj.weight");
    l.w_down = Param(p + "mlp.down_proj.weight");
    layers_.push_back(std::move(l));
  }
  final_norm_ = Param("model.norm.weight");
  if (head_ == HeadKind::kReward) {
    score_ = Param("score.weight");
  } else {
    lm_head_ = config_.tie_word_embeddings ? embed_ : Param("lm_head.weight");
  }
}

const torch::Tensor& DecoderLM::Param(const std::string& name) const {
  for (const auto& [n, t] : params_) {
    if (n == name) return t;
  }
  throw std::invalid_argument("DecoderLM: no parameter " + name);
}

std::unique_ptr<DecoderLM> DecoderLM::RandomInit(const ModelConfig& config, HeadKind head,
                                                 uint64_t seed, torch::Dtype dtype,
                                                 torch::Device device) {
  auto gen = at::detail::createCPUGenerator(seed);
  NamedTensors params;
  const float norm_value = TraitsOf(config.family).norm_init;
  for (const ParamSpec& s : ParameterSpecs(config, head)) {
    torch::Tensor t = torch::empty(s.shape, torch::kFloat32);
    switch (s.init) {
      case ParamSpec::Init::kNormal:
        at::normal_out(t, 0.0, config.initializer_range, t.sizes(), gen);
        break;
      case ParamSpec::Init::kNorm: t.fill_(norm_value); break;
      case ParamSpec::Init::kZero: t.zero_(); break;
    }
    params.emplace_back(s.name, t.to(device, dtype));
  }
  return std::make_unique<DecoderLM>(config, head, std::move(params));
}

std::vector<torch::Tensor> DecoderLM::parameters() const {
  std::vector<torch::Tensor> out;
  out.reserve(params_.size());
  for (const auto& [n, t] : params_) out.push_back(t);
  return out;
}

void DecoderLM::SetRequiresGrad(bool requires_grad) {
  for (auto& [n, t] : params_) t.requires_grad_(requires_grad);
}

int64_t DecoderLM::NumParameters() const {
  int64_t n = 0;
  for (const auto& [name, t] : params_) n += t.numel();
  return n;
}

torch::Tensor DecoderLM::Norm(const torch::Tensor& x, const torch::Tensor& w) const {
  if (fused_kernels_ && fused::Applies({&x, &w})) {
    return fused::RmsNorm(x, w, config_.rms_norm_eps, traits_.norm_weight_plus_one);
  }
  auto xf = x.to(torch::kFloat32);
  xf = xf * torch::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + config_.rms_norm_eps);
  if (traits_.norm_weight_plus_one) return (xf * (1.0 + w.to(torch::kFloat32))).to(x.dtype());
  return w * xf.to(x.dtype());
}

torch::Tensor DecoderLM::Mlp(const Layer& l, const torch::Tensor& x) const {
  auto gate = torch::linear(x, l.w_gate);
  if (fused_kernels_) {
    auto up = torch::linear(x, l.w_up);
    if (fused::Applies({&gate, &up})) {
      return torch::linear(fused::Glu(gate, up, config_.activation), l.w_down);
    }
    return torch::linear(Activation(config_.activation, gate) * up, l.w_down);
  }
  // The activation replaces the pre-activation before `up` exists (inference peak memory).
  gate = Activation(config_.activation, gate);
  return torch::linear(gate * torch::linear(x, l.w_up), l.w_down);
}

// x (N, D): the real cells. Projections and rotary run per cell; attention runs on the
// (B, T) rows, with the cells scattered back into place (padding cells zero and masked).
torch::Tensor DecoderLM::Attention(const Layer& l, const torch::Tensor& x, const Frame& f) const {
  const int64_t N = x.size(0), B = f.rows, T = f.cols;
  const int64_t H = config_.num_heads, KV = config_.num_kv_heads, hd = config_.head_dim;
  const bool dense = N == B * T;
  auto cos = f.cos.unsqueeze(1), sin = f.sin.unsqueeze(1);  // (N, 1, hd)
  auto q = torch::linear(x, l.wq, l.bq).view({N, H, hd});
  auto k = torch::linear(x, l.wk, l.bk).view({N, KV, hd});
  auto v = torch::linear(x, l.wv, l.bv).view({N, KV, hd});
  if (fused_kernels_ && fused::Applies({&q, &k, &f.cos, &f.sin})) {
    q = fused::Rotary(q, f.cos, f.sin);
    k = fused::Rotary(k, f.cos, f.sin);
  } else {
    q = q * cos + RotateHalf(q) * sin;
    k = k * cos + RotateHalf(k) * sin;
  }
  const double scale = 1.0 / std::sqrt(double(hd));
  if (f.varlen.defined()) {  // no padding, no mask: each segment against its keys
    auto kk = k.index_select(0, f.varlen.key_cells), vv = v.index_select(0, f.varlen.key_cells);
    if (f.flash) {
      // The kernels take one half dtype. Under autocast with float32 weights, v comes out of
      // its projection in that dtype but q and k were promoted to float32 by the float32
      // rotary tables; autocast does not cast the flash entry point's inputs as it does SDPA's.
      q = q.to(vv.scalar_type());
      kk = kk.to(vv.scalar_type());
    }
    auto o = VarlenAttention(q, kk, vv, f.varlen, config_.sliding_window, scale, f.flash);
    return torch::linear(o.reshape({N, H * hd}), l.wo);
  }
  // (N, heads, hd) -> (B, heads, T, hd)
  auto to_rows = [&](const torch::Tensor& t, int64_t heads) {
    auto flat = t.reshape({N, heads * hd});
    if (!dense) {
      flat = torch::zeros({B * T, heads * hd}, flat.options()).index_copy(0, f.cells, flat);
    }
    return flat.view({B, T, heads, hd}).transpose(1, 2);
  };
  auto qr = to_rows(q, H), kr = to_rows(k, KV), vr = to_rows(v, KV);
  if (f.cache != nullptr) {  // Prefill: slot t of row b holds the token in column t
    const size_t i = static_cast<size_t>(&l - layers_.data());
    f.cache->k[i].narrow(2, 0, T).copy_(kr);
    f.cache->v[i].narrow(2, 0, T).copy_(vr);
  }
  if (KV != H) {  // grouped-query: head h reads kv head h / (H / KV)
    kr = kr.unsqueeze(2).expand({B, KV, H / KV, T, hd}).reshape({B, H, T, hd});
    vr = vr.unsqueeze(2).expand({B, KV, H / KV, T, hd}).reshape({B, H, T, hd});
  }
  auto o = compat::ScaledDotProductAttention(qr, kr, vr, f.mask, scale);
  o = o.transpose(1, 2).reshape({B * T, H * hd});
  if (!dense) o = o.index_select(0, f.cells);
  return torch::linear(o, l.wo);
}

torch::Tensor DecoderLM::LayerForward(const Layer& l, const torch::Tensor& x,
                                      const Frame& f) const {
  auto h = x + Attention(l, Norm(x, l.input_norm), f);
  return h + Mlp(l, Norm(h, l.post_norm));
}

// Gradient checkpointing of one layer: the forward keeps only the layer's input; the
// backward runs the layer again with gradients on (and the forward's autocast state) and
// back-propagates through it, which accumulates the layer's parameter gradients and yields
// the input's (the reentrant scheme of torch.utils.checkpoint). Activation memory drops
// from O(layers) to O(1) layers, at the price of a second forward per layer.
torch::Tensor DecoderLM::LayerCheckpoint::forward(torch::autograd::AutogradContext* ctx,
                                                  torch::Tensor x, int64_t model, int64_t layer,
                                                  int64_t frame) {
  const Frame& f = *reinterpret_cast<const Frame*>(frame);
  ctx->save_for_backward({x});
  auto& d = ctx->saved_data;
  d["model"] = model;
  d["layer"] = layer;
  d["cos"] = f.cos;
  d["sin"] = f.sin;
  d["mask"] = f.mask;
  d["cells"] = f.cells;
  d["rows"] = f.rows;
  d["cols"] = f.cols;
  d["cu_q"] = f.varlen.cu_q;
  d["cu_k"] = f.varlen.cu_k;
  d["key_cells"] = f.varlen.key_cells;
  d["max_q"] = f.varlen.max_q;
  d["max_k"] = f.varlen.max_k;
  d["flash"] = f.flash;
  // The recompute in backward must run under the same autocast as this forward.
  const auto [autocast_on, autocast_dtype] = compat::AutocastState(x.device().type());
  d["autocast"] = autocast_on;
  d["autocast_dtype"] = static_cast<int64_t>(autocast_dtype);
  const auto* self = reinterpret_cast<const DecoderLM*>(model);
  torch::NoGradGuard no_grad;
  return self->LayerForward(*reinterpret_cast<const Layer*>(layer), x, f);
}

torch::autograd::tensor_list DecoderLM::LayerCheckpoint::backward(
    torch::autograd::AutogradContext* ctx, torch::autograd::tensor_list grad_out) {
  auto& d = ctx->saved_data;
  const auto* self = reinterpret_cast<const DecoderLM*>(d["model"].toInt());
  const auto* layer = reinterpret_cast<const Layer*>(d["layer"].toInt());
  auto x = ctx->get_saved_variables()[0].detach().requires_grad_(true);
  Frame f;
  f.cos = d["cos"].toTensor();
  f.sin = d["sin"].toTensor();
  f.mask = d["mask"].toTensor();
  f.cells = d["cells"].toTensor();
  f.rows = d["rows"].toInt();
  f.cols = d["cols"].toInt();
  f.varlen.cu_q = d["cu_q"].toTensor();
  f.varlen.cu_k = d["cu_k"].toTensor();
  f.varlen.key_cells = d["key_cells"].toTensor();
  f.varlen.max_q = d["max_q"].toInt();
  f.varlen.max_k = d["max_k"].toInt();
  f.flash = d["flash"].toBool();
  torch::Tensor out;
  {
    torch::AutoGradMode enable(true);
    compat::AutocastGuard autocast(x.device().type(),
                                   static_cast<at::ScalarType>(d["autocast_dtype"].toInt()),
                                   d["autocast"].toBool());
    out = self->LayerForward(*layer, x, f);
  }
  torch::autograd::backward({out}, {grad_out[0]});
  std::vector<torch::Tensor> grads(4);
  grads[0] = x.grad();
  return grads;
}

// Additive mask (B, 1, T, T): a key is visible when it is real, not after the query, and
// shared or in the query's segment (and within the sliding window).
torch::Tensor DecoderLM::AttentionMask(const torch::Tensor& pos, const torch::Tensor& seg,
                                       int64_t B, int64_t T) const {
  const auto device = pos.device();
  const auto dtype = embed_.scalar_type();
  auto pq = pos.view({B, T, 1}), pk = pos.view({B, 1, T});
  auto sq = seg.view({B, T, 1}), sk = seg.view({B, 1, T});
  auto allowed = (sk >= 0) & (pk <= pq) & ((sk == 0) | (sk == sq));
  if (config_.sliding_window > 0) allowed = allowed & ((pq - pk) < config_.sliding_window);
  // Every cell sees at least itself: a padding query (its output is never read) must not
  // face a fully masked row, which bf16 (where LowestValue rounds to -inf) turns into NaN,
  // and NaN would reach the keys' gradients. A real cell sees itself anyway.
  allowed =
      allowed |
      torch::eye(T, torch::TensorOptions().dtype(torch::kBool).device(device)).view({1, T, T});
  return torch::zeros({B, 1, T, T}, torch::TensorOptions().dtype(dtype).device(device))
      .masked_fill(allowed.logical_not().unsqueeze(1), LowestValue(dtype));
}

bool DecoderLM::UsesFlashAttention() const {
  if (!kHasVarlenFlash || attention_ != AttentionKernel::kAuto) return false;
  const auto device = embed_.device();
  if (!device.is_cuda() || compat::CudaComputeMajor(device) < 8) return false;
  const auto [autocast_on, autocast_dtype] = compat::AutocastState(device.type());
  const auto compute = autocast_on ? autocast_dtype : embed_.scalar_type();
  const int64_t hd = config_.head_dim;
  return (compute == torch::kBFloat16 || compute == torch::kFloat16) && hd % 8 == 0 && hd <= 256;
}

TokenLayout TokenLayout::Padded(const torch::Tensor& ids, const torch::Tensor& attention_mask) {
  TORCH_CHECK(ids.dim() == 2, "input_ids must be (B, T)");
  TORCH_CHECK(attention_mask.sizes() == ids.sizes(), "attention_mask must match input_ids");
  const int64_t B = ids.size(0), T = ids.size(1);
  auto pos = torch::arange(T, ids.options().dtype(torch::kInt64)).view({1, T}).expand({B, T});
  return {ids, pos, attention_mask.to(torch::kBool).to(torch::kInt64) - 1};
}

torch::Tensor DecoderLM::Hidden(const torch::Tensor& input_ids,
                                const torch::Tensor& attention_mask) const {
  return Hidden(TokenLayout::Padded(input_ids, attention_mask));
}

torch::Tensor DecoderLM::Embed(const torch::Tensor& ids) const {
  auto x = torch::embedding(embed_, ids);  // (N, D)
  if (!traits_.scale_embeddings) return x;
  return x * torch::scalar_tensor(std::sqrt(double(config_.hidden_size)),
                                  torch::TensorOptions().dtype(x.dtype()).device(x.device()));
}

std::pair<torch::Tensor, torch::Tensor> DecoderLM::Rotary(const torch::Tensor& positions) const {
  const int64_t hd = config_.head_dim;
  const auto dtype = embed_.scalar_type();
  auto exponents =
      torch::arange(0, hd, 2, positions.options().dtype(torch::kInt64)).to(torch::kFloat32) /
      double(hd);
  auto inv_freq = 1.0 / torch::pow(config_.rope_theta, exponents);                  // (hd/2)
  auto freqs = positions.to(torch::kFloat32).unsqueeze(1) * inv_freq.unsqueeze(0);  // (N, hd/2)
  auto emb = torch::cat({freqs, freqs}, -1);                                        // (N, hd)
  return {emb.cos().to(dtype), emb.sin().to(dtype)};
}

torch::Tensor DecoderLM::Hidden(const TokenLayout& layout) const { return Hidden(layout, nullptr); }

torch::Tensor DecoderLM::Hidden(const TokenLayout& layout, KvCache* cache) const {
  TORCH_CHECK(layout.ids.dim() == 2, "input_ids must be (B, T)");
  TORCH_CHECK(layout.positions.sizes() == layout.ids.sizes() &&
                  layout.segments.sizes() == layout.ids.sizes(),
              "positions and segments must match input_ids");
  const int64_t B = layout.ids.size(0), T = layout.ids.size(1);
  const auto device = embed_.device();
  const auto i64 = torch::TensorOptions().dtype(torch::kInt64).device(device);
  auto ids = layout.ids.to(device, torch::kInt64).reshape({B * T});
  auto pos = layout.positions.to(device, torch::kInt64);
  auto seg = layout.segments.to(device, torch::kInt64);

  // The real cells, in row-major order.
  Frame f;
  f.rows = B, f.cols = T;
  f.cache = cache;
  auto real = seg.reshape({B * T}) >= 0;
  const bool dense = real.all().item<bool>();
  f.cells = dense ? torch::arange(B * T, i64) : real.nonzero().squeeze(1);
  auto x = Embed(dense ? ids : ids.index_select(0, f.cells));  // (N, D)

  // Rotary tables at each cell's position: (N, hd).
  auto cell_pos = pos.reshape({B * T});
  if (!dense) cell_pos = cell_pos.index_select(0, f.cells);
  std::tie(f.cos, f.sin) = Rotary(cell_pos);

  // Variable-length segments instead of padded rows and a mask, where they apply.
  const bool flash =
      attention_ == AttentionKernel::kAuto && cache == nullptr && UsesFlashAttention();
  if (flash || (attention_ == AttentionKernel::kVarlenReference && cache == nullptr)) {
    if (auto plan = PlanVarlen(pos, seg, device)) {
      f.varlen = std::move(*plan);
      f.flash = flash;
    }
  }
  if (!f.varlen.defined()) f.mask = AttentionMask(pos, seg, B, T);

  const bool checkpoint = gradient_checkpointing_ && torch::GradMode::is_enabled();
  for (const Layer& l : layers_) {
    x = checkpoint
            ? LayerCheckpoint::apply(x, reinterpret_cast<int64_t>(this),
                                     reinterpret_cast<int64_t>(&l), reinterpret_cast<int64_t>(&f))
            : LayerForward(l, x, f);
  }
  x = Norm(x, final_norm_);
  const int64_t D = x.size(1);
  if (dense) return x.view({B, T, D});
  return torch::zeros({B * T, D}, x.options()).index_copy(0, f.cells, x).view({B, T, D});
}

void KvCache::Select(const torch::Tensor& keep) {
  for (auto& t : k) t = t.index_select(0, keep);
  for (auto& t : v) t = t.index_select(0, keep);
  lengths = lengths.index_select(0, keep);
  max_length = lengths.numel() > 0 ? lengths.max().item<int64_t>() : 0;
}

torch::Tensor DecoderLM::Prefill(const torch::Tensor& input_ids,
                                 const torch::Tensor& attention_mask, int64_t capacity,
                                 KvCache* cache) const {
  TORCH_CHECK(input_ids.dim() == 2 && attention_mask.sizes() == input_ids.sizes(),
              "Prefill: input_ids and attention_mask must be (B, T)");
  const int64_t B = input_ids.size(0), T = input_ids.size(1);
  TORCH_CHECK(capacity >= T, "Prefill: capacity ", capacity, " < prompt width ", T);
  // Generation never needs gradients (and a checkpointed layer would not fill the cache).
  torch::NoGradGuard no_grad;
  const auto device = embed_.device();
  auto mask = attention_mask.to(device, torch::kInt64);
  auto lengths = mask.sum(1);
  // Right-padded: every row's real tokens come first (the cache slot is the column).
  auto first_pad = torch::arange(T, mask.options()).view({1, T}) >= lengths.view({B, 1});
  TORCH_CHECK(torch::equal(first_pad, mask == 0),
              "Prefill: prompts must be right-padded (real tokens first in every row)");
  TORCH_CHECK(lengths.min().item<int64_t>() >= 1, "Prefill: an empty prompt");
  const auto opts = embed_.options().requires_grad(false);
  cache->k.clear();
  cache->v.clear();
  for (int64_t i = 0; i < config_.num_layers; ++i) {
    cache->k.push_back(torch::zeros({B, config_.num_kv_heads, capacity, config_.head_dim}, opts));
    cache->v.push_back(torch::zeros({B, config_.num_kv_heads, capacity, config_.head_dim}, opts));
  }
  cache->lengths = lengths;
  cache->capacity = capacity;
  cache->max_length = lengths.max().item<int64_t>();
  std::tie(cache->cos, cache->sin) = Rotary(torch::arange(capacity, mask.options()));
  return Hidden(TokenLayout::Padded(input_ids, mask), cache);
}

torch::Tensor DecoderLM::DecodeAttention(size_t layer, const torch::Tensor& x,
                                         const torch::Tensor& cos, const torch::Tensor& sin,
                                         const torch::Tensor& slots, const torch::Tensor& mask,
                                         KvCache* cache) const {
  const Layer& l = layers_[layer];
  const int64_t B = x.size(0);
  const int64_t H = config_.num_heads, KV = config_.num_kv_heads, hd = config_.head_dim;
  const int64_t S = cache->max_length + 1;
  auto c = cos.unsqueeze(1), s = sin.unsqueeze(1);  // (B, 1, hd)
  auto q = torch::linear(x, l.wq, l.bq).view({B, H, hd});
  auto k = torch::linear(x, l.wk, l.bk).view({B, KV, hd});
  auto v = torch::linear(x, l.wv, l.bv).view({B, KV, hd});
  q = q * c + RotateHalf(q) * s;
  k = k * c + RotateHalf(k) * s;
  auto rows = torch::arange(B, slots.options());
  using torch::indexing::Slice;
  cache->k[layer].index_put_({rows, Slice(), slots}, k);
  cache->v[layer].index_put_({rows, Slice(), slots}, v);
  // Grouped heads read their kv head in place: q (B, KV, G, hd) against k (B, KV, S, hd), so
  // the cache is never expanded to H heads (head h = kv * G + g, as the training path maps).
  const double scale = 1.0 / std::sqrt(double(hd));
  if (!mask.defined()) {  // fp32 on CPU: one pass a (row, head) over its keys
    return torch::linear(CpuDecodeAttention(q.contiguous(), cache->k[layer], cache->v[layer], slots,
                                            config_.sliding_window, scale)
                             .view({B, H * hd}),
                         l.wo);
  }
  auto kr = cache->k[layer].narrow(2, 0, S), vr = cache->v[layer].narrow(2, 0, S);
  auto qg = q.view({B, KV, H / KV, hd});
  auto scores = torch::matmul(qg, kr.transpose(-1, -2)) * scale + mask;  // (B, KV, G, S)
  auto probs = torch::softmax(scores, -1, torch::kFloat32).to(q.scalar_type());
  auto o = torch::matmul(probs, vr);  // (B, KV, G, hd)
  return torch::linear(o.reshape({B, H * hd}), l.wo);
}

torch::Tensor DecoderLM::DecodeStep(const torch::Tensor& tokens, KvCache* cache) const {
  const int64_t B = cache->rows();
  TORCH_CHECK(tokens.dim() == 1 && tokens.size(0) == B, "DecodeStep: one token per cache row");
  torch::NoGradGuard no_grad;
  const auto device = embed_.device();
  auto slots = cache->lengths;  // the new token's position and slot, per row
  const int64_t S = cache->max_length + 1;
  TORCH_CHECK(S <= cache->capacity, "DecodeStep: the cache is full (capacity ", cache->capacity,
              ")");
  auto x = Embed(tokens.to(device, torch::kInt64));  // (B, D)
  auto cos = cache->cos.index_select(0, slots), sin = cache->sin.index_select(0, slots);
  // Slot j is visible to row b's new token when j <= its position (and within the window).
  // The fp32 CPU path masks as it goes; the others take an additive mask (B, 1, 1, S).
  const auto dtype = embed_.scalar_type();
  torch::Tensor mask;
  if (!(device.is_cpu() && dtype == torch::kFloat32)) {
    auto j = torch::arange(S, slots.options()).view({1, S});
    auto pq = slots.view({B, 1});
    auto allowed = j <= pq;
    if (config_.sliding_window > 0) allowed = allowed & ((pq - j) < config_.sliding_window);
    mask = torch::zeros({B, 1, 1, S}, torch::TensorOptions().dtype(dtype).device(device))
               .masked_fill(allowed.logical_not().view({B, 1, 1, S}), LowestValue(dtype));
  }
  for (size_t i = 0; i < layers_.size(); ++i) {
    const Layer& l = layers_[i];
    auto h = x + DecodeAttention(i, Norm(x, l.input_norm), cos, sin, slots, mask, cache);
    x = h + Mlp(l, Norm(h, l.post_norm));
  }
  cache->lengths = cache->lengths + 1;
  cache->max_length += 1;
  return Norm(x, final_norm_);
}

torch::Tensor DecoderLM::Logits(const torch::Tensor& hidden) const {
  TORCH_CHECK(lm_head_.defined(), "Logits() needs a language-model head (this is a reward model)");
  return torch::linear(hidden, lm_head_).to(torch::kFloat32);
}

torch::Tensor DecoderLM::SequenceLogProbs(const torch::Tensor& input_ids,
                                          const torch::Tensor& attention_mask,
                                          const torch::Tensor& response_mask,
                                          torch::Tensor* logit_means) const {
  auto hidden = Hidden(input_ids, attention_mask);  // (B, T, D)
  const auto device = hidden.device();
  const int64_t B = hidden.size(0), T = hidden.size(1);
  // Predictions at t - 1 for targets at t, t in the response.
  auto targets_mask = response_mask.to(device).slice(1, 1).to(torch::kBool);  // (B, T-1)
  auto idx = targets_mask.nonzero();                                          // (N, 2)
  auto rows = idx.select(1, 0), cols = idx.select(1, 1);
  auto targets = input_ids.to(device, torch::kInt64).index({rows, cols + 1});  // (N)
  return SideLogProbs(hidden, rows * T + cols, targets, rows, B, logit_means);
}

torch::Tensor DecoderLM::SideLogProbs(const torch::Tensor& hidden, const torch::Tensor& from,
                                      const torch::Tensor& targets, const torch::Tensor& side,
                                      int64_t sides, torch::Tensor* logit_means) const {
  const auto device = hidden.device();
  auto h = hidden.reshape({-1, hidden.size(-1)}).index_select(0, from.to(device));  // (N, D)
  auto s = side.to(device, torch::kInt64);
  TORCH_CHECK(lm_head_.defined(), "SideLogProbs() needs a language-model head");
  if (vocab_chunk_ > 0 && lm_head_.size(0) > vocab_chunk_) {
    // The head's matmul runs in the dtype autocast would give it, as Logits() does.
    const auto [autocast_on, autocast_dtype] = compat::AutocastState(device.type());
    const auto compute = autocast_on ? autocast_dtype : h.scalar_type();
    torch::Tensor sums;
    auto token_lp = ChunkedTokenLogProbs(h, lm_head_, targets, vocab_chunk_, compute,
                                         logit_means != nullptr ? &sums : nullptr);
    if (logit_means != nullptr) {
      torch::NoGradGuard g;
      *logit_means =
          torch::zeros({sides}, sums.options()).index_add(0, s, sums / double(lm_head_.size(0)));
    }
    return torch::zeros({sides}, token_lp.options()).index_add(0, s, token_lp);
  }
  auto logits = Logits(h);  // (N, V)
  auto t = targets.to(device, torch::kInt64).unsqueeze(1);
  auto token_lp = logits.gather(1, t).squeeze(1) - logits.logsumexp(-1);
  if (logit_means != nullptr) {
    torch::NoGradGuard g;
    *logit_means = torch::zeros({sides}, logits.options()).index_add(0, s, logits.mean(-1));
  }
  return torch::zeros({sides}, token_lp.options()).index_add(0, s, token_lp);
}

torch::Tensor DecoderLM::LastTokenIndex(const torch::Tensor& attention_mask) {
  const int64_t T = attention_mask.size(1);
  auto pos = torch::arange(T, attention_mask.options().dtype(torch::kInt64));
  return (attention_mask.to(torch::kInt64) * pos).argmax(1);
}

torch::Tensor DecoderLM::Scores(const torch::Tensor& hidden,
                                const torch::Tensor& attention_mask) const {
  const int64_t B = hidden.size(0), T = hidden.size(1);
  auto last = LastTokenIndex(attention_mask.to(hidden.device()));
  return ScoresAt(hidden, torch::arange(B, last.options()) * T + last);
}

torch::Tensor DecoderLM::ScoresAt(const torch::Tensor& hidden, const torch::Tensor& cells) const {
  TORCH_CHECK(score_.defined(), "Scores() needs a reward head (this is a language model)");
  auto pooled = hidden.reshape({-1, hidden.size(-1)}).index_select(0, cells.to(hidden.device()));
  return torch::linear(pooled, score_).squeeze(1).to(torch::kFloat32);
}

}  // namespace rmgen
