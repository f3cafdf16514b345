#include "worker/model/decoder.h"

#include <cmath>
#include <limits>
#include <stdexcept>

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

// transformers' torch.finfo(dtype).min: masked scores stay finite, so a row with no
// allowed key (a left-pad query) gives a uniform softmax instead of NaN.
double LowestValue(torch::Dtype dtype) {
  switch (dtype) {
    case torch::kFloat16: return -65504.0;
    case torch::kBFloat16: return -3.3895313892515355e38;
    case torch::kFloat64: return std::numeric_limits<double>::lowest();
    default: return std::numeric_limits<float>::lowest();
  }
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
  auto xf = x.to(torch::kFloat32);
  xf = xf * torch::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + config_.rms_norm_eps);
  if (traits_.norm_weight_plus_one) return (xf * (1.0 + w.to(torch::kFloat32))).to(x.dtype());
  return w * xf.to(x.dtype());
}

torch::Tensor DecoderLM::Mlp(const Layer& l, const torch::Tensor& x) const {
  auto gate = Activation(config_.activation, torch::linear(x, l.w_gate));
  return torch::linear(gate * torch::linear(x, l.w_up), l.w_down);
}

torch::Tensor DecoderLM::Attention(const Layer& l, const torch::Tensor& x, const torch::Tensor& cos,
                                   const torch::Tensor& sin, const torch::Tensor& mask) const {
  const int64_t B = x.size(0), T = x.size(1);
  const int64_t H = config_.num_heads, KV = config_.num_kv_heads, hd = config_.head_dim;
  auto q = torch::linear(x, l.wq, l.bq).view({B, T, H, hd}).transpose(1, 2);   // (B,H,T,hd)
  auto k = torch::linear(x, l.wk, l.bk).view({B, T, KV, hd}).transpose(1, 2);  // (B,KV,T,hd)
  auto v = torch::linear(x, l.wv, l.bv).view({B, T, KV, hd}).transpose(1, 2);  // (B,KV,T,hd)
  q = q * cos + RotateHalf(q) * sin;
  k = k * cos + RotateHalf(k) * sin;
  if (KV != H) {  // grouped-query: head h reads kv head h / (H / KV)
    k = k.unsqueeze(2).expand({B, KV, H / KV, T, hd}).reshape({B, H, T, hd});
    v = v.unsqueeze(2).expand({B, KV, H / KV, T, hd}).reshape({B, H, T, hd});
  }
  auto o = compat::ScaledDotProductAttention(q, k, v, mask, 1.0 / std::sqrt(double(hd)));
  return torch::linear(o.transpose(1, 2).reshape({B, T, H * hd}), l.wo);
}

torch::Tensor DecoderLM::LayerForward(const Layer& l, const torch::Tensor& x,
                                      const torch::Tensor& cos, const torch::Tensor& sin,
                                      const torch::Tensor& mask) const {
  auto h = x + Attention(l, Norm(x, l.input_norm), cos, sin, mask);
  return h + Mlp(l, Norm(h, l.post_norm));
}

// Gradient checkpointing of one layer: the forward keeps only the layer's input; the
// backward runs the layer again with gradients on (and the forward's autocast state) and
// back-propagates through it, which
// accumulates the layer's parameter gradients and yields the input's (the reentrant scheme
// of torch.utils.checkpoint). Activation memory drops from O(layers) to O(1) layers, at
// the price of a second forward per layer.
torch::Tensor DecoderLM::LayerCheckpoint::forward(torch::autograd::AutogradContext* ctx,
                                                  torch::Tensor x, int64_t model, int64_t layer,
                                                  torch::Tensor cos, torch::Tensor sin,
                                                  torch::Tensor mask) {
  ctx->save_for_backward({x});
  ctx->saved_data["model"] = model;
  ctx->saved_data["layer"] = layer;
  ctx->saved_data["cos"] = cos;
  ctx->saved_data["sin"] = sin;
  ctx->saved_data["mask"] = mask;
  // The recompute in backward must run under the same autocast as this forward.
  const auto [autocast_on, autocast_dtype] = compat::AutocastState(x.device().type());
  ctx->saved_data["autocast"] = autocast_on;
  ctx->saved_data["autocast_dtype"] = static_cast<int64_t>(autocast_dtype);
  const auto* self = reinterpret_cast<const DecoderLM*>(model);
  torch::NoGradGuard no_grad;
  return self->LayerForward(*reinterpret_cast<const Layer*>(layer), x, cos, sin, mask);
}

torch::autograd::tensor_list DecoderLM::LayerCheckpoint::backward(
    torch::autograd::AutogradContext* ctx, torch::autograd::tensor_list grad_out) {
  const auto* self = reinterpret_cast<const DecoderLM*>(ctx->saved_data["model"].toInt());
  const auto* layer = reinterpret_cast<const Layer*>(ctx->saved_data["layer"].toInt());
  auto x = ctx->get_saved_variables()[0].detach().requires_grad_(true);
  torch::Tensor out;
  {
    torch::AutoGradMode enable(true);
    compat::AutocastGuard autocast(
        x.device().type(), static_cast<at::ScalarType>(ctx->saved_data["autocast_dtype"].toInt()),
        ctx->saved_data["autocast"].toBool());
    out = self->LayerForward(*layer, x, ctx->saved_data["cos"].toTensor(),
                             ctx->saved_data["sin"].toTensor(), ctx->saved_data["mask"].toTensor());
  }
  torch::autograd::backward({out}, {grad_out[0]});
  return {x.grad(),        torch::Tensor(), torch::Tensor(),
          torch::Tensor(), torch::Tensor(), torch::Tensor()};
}

torch::Tensor DecoderLM::Hidden(const torch::Tensor& input_ids,
                                const torch::Tensor& attention_mask) const {
  TORCH_CHECK(input_ids.dim() == 2, "input_ids must be (B, T)");
  TORCH_CHECK(attention_mask.sizes() == input_ids.sizes(), "attention_mask must match input_ids");
  const int64_t B = input_ids.size(0), T = input_ids.size(1);
  const auto dtype = embed_.scalar_type();
  const auto device = embed_.device();
  auto ids = input_ids.to(device, torch::kInt64);

  auto x = torch::embedding(embed_, ids);  // (B, T, D)
  if (traits_.scale_embeddings) {
    x = x * torch::scalar_tensor(std::sqrt(double(config_.hidden_size)),
                                 torch::TensorOptions().dtype(dtype).device(device));
  }

  // Rotary tables in float32, cast to the compute dtype: (1, 1, T, hd).
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(device);
  const int64_t hd = config_.head_dim;
  auto exponents =
      torch::arange(0, hd, 2, torch::TensorOptions().dtype(torch::kInt64).device(device))
          .to(torch::kFloat32) /
      double(hd);
  auto inv_freq = 1.0 / torch::pow(config_.rope_theta, exponents);          // (hd/2)
  auto freqs = torch::arange(T, f32).unsqueeze(1) * inv_freq.unsqueeze(0);  // (T, hd/2)
  auto emb = torch::cat({freqs, freqs}, -1);                                // (T, hd)
  auto cos = emb.cos().to(dtype).view({1, 1, T, hd});
  auto sin = emb.sin().to(dtype).view({1, 1, T, hd});

  // Additive mask (B, 1, T, T): causal, key padding, optional sliding window.
  auto pos = torch::arange(T, torch::TensorOptions().dtype(torch::kInt64).device(device));
  auto allowed = pos.view({1, T}) <= pos.view({T, 1});  // key <= query
  if (config_.sliding_window > 0) {
    allowed = allowed & ((pos.view({T, 1}) - pos.view({1, T})) < config_.sliding_window);
  }
  allowed =
      allowed.view({1, 1, T, T}) & attention_mask.to(device).to(torch::kBool).view({B, 1, 1, T});
  auto mask = torch::zeros({B, 1, T, T}, torch::TensorOptions().dtype(dtype).device(device))
                  .masked_fill(allowed.logical_not(), LowestValue(dtype));

  const bool checkpoint = gradient_checkpointing_ && torch::GradMode::is_enabled();
  for (const Layer& l : layers_) {
    x = checkpoint ? LayerCheckpoint::apply(x, reinterpret_cast<int64_t>(this),
                                            reinterpret_cast<int64_t>(&l), cos, sin, mask)
                   : LayerForward(l, x, cos, sin, mask);
  }
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
  const int64_t B = hidden.size(0);
  // Predictions at t - 1 for targets at t, t in the response.
  auto targets_mask = response_mask.to(device).slice(1, 1).to(torch::kBool);  // (B, T-1)
  auto idx = targets_mask.nonzero();                                          // (N, 2)
  auto rows = idx.select(1, 0), cols = idx.select(1, 1);
  auto h = hidden.index({rows, cols});                                         // (N, D)
  auto targets = input_ids.to(device, torch::kInt64).index({rows, cols + 1});  // (N)
  auto logits = Logits(h);                                                     // (N, V)
  auto token_lp = logits.gather(1, targets.unsqueeze(1)).squeeze(1) - logits.logsumexp(-1);
  if (logit_means != nullptr) {
    torch::NoGradGuard g;
    *logit_means = torch::zeros({B}, logits.options()).index_add(0, rows, logits.mean(-1));
  }
  return torch::zeros({B}, token_lp.options()).index_add(0, rows, token_lp);
}

torch::Tensor DecoderLM::LastTokenIndex(const torch::Tensor& attention_mask) {
  const int64_t T = attention_mask.size(1);
  auto pos = torch::arange(T, attention_mask.options().dtype(torch::kInt64));
  return (attention_mask.to(torch::kInt64) * pos).argmax(1);
}

torch::Tensor DecoderLM::Scores(const torch::Tensor& hidden,
                                const torch::Tensor& attention_mask) const {
  TORCH_CHECK(score_.defined(), "Scores() needs a reward head (this is a language model)");
  const int64_t B = hidden.size(0);
  auto last = LastTokenIndex(attention_mask.to(hidden.device()));
  auto rows = torch::arange(B, last.options());
  auto pooled = hidden.index({rows, last});  // (B, D)
  return torch::linear(pooled, score_).squeeze(1).to(torch::kFloat32);
}

}  // namespace rmgen
