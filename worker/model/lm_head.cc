#include "worker/model/lm_head.h"

#include <c10/core/impl/LocalDispatchKeySet.h>

#include <algorithm>
#include <vector>

namespace rmgen {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The matmuls below run in the dtype chosen at the call; autocast (which may be on in the
// thread that runs the backward on CPU) must not change it.
struct NoAutocast {
  c10::impl::ExcludeDispatchKeyGuard guard{c10::autocast_dispatch_keyset};
};

// The dtype logits and their gradients are handled in: float32, or float64 for float64 inputs.
torch::Dtype Accumulate(torch::Dtype compute) {
  return compute == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
}

struct Chunk {
  int64_t begin, size;
};

std::vector<Chunk> Chunks(int64_t vocab, int64_t chunk) {
  std::vector<Chunk> out;
  for (int64_t v = 0; v < vocab; v += chunk) out.push_back({v, std::min(chunk, vocab - v)});
  return out;
}

// Per chunk: the rows n whose target falls in it (mask) and the target's column there.
std::pair<torch::Tensor, torch::Tensor> TargetsIn(const torch::Tensor& targets, const Chunk& c) {
  auto in = (targets >= c.begin) & (targets < c.begin + c.size);
  return {in, (targets - c.begin).clamp(0, c.size - 1)};
}

// The forward without autograd: log-sum-exp (N), the target logits (N), and optionally the
// logit sums (N), in float32 (float64 for float64). hc is in the compute dtype; each chunk of
// the weight is cast to it in turn (a cast copy of a whole 256k-row head would cost as much
// memory as the logits the chunks avoid).
struct Forward {
  torch::Tensor lse, target_logit, logit_sum;
};
Forward RunForward(const torch::Tensor& hc, const torch::Tensor& weight,
                   const torch::Tensor& targets, int64_t chunk, bool sums) {
  NoAutocast no_autocast;
  const int64_t N = hc.size(0), V = weight.size(0);
  const auto dtype = hc.scalar_type();
  const auto acc = Accumulate(hc.scalar_type());
  const auto f32 = hc.options().dtype(acc);
  const auto chunks = Chunks(V, chunk);
  auto lses = torch::empty({N, static_cast<int64_t>(chunks.size())}, f32);
  Forward out;
  out.target_logit = torch::zeros({N}, f32);
  if (sums) out.logit_sum = torch::zeros({N}, f32);
  for (size_t i = 0; i < chunks.size(); ++i) {
    const Chunk& c = chunks[i];
    auto w = weight.narrow(0, c.begin, c.size).to(dtype);
    auto logits = torch::mm(hc, w.t()).to(acc);  // (N, C)
    lses.select(1, static_cast<int64_t>(i)).copy_(logits.logsumexp(1));
    auto [in, col] = TargetsIn(targets, c);
    out.target_logit += logits.gather(1, col.unsqueeze(1)).squeeze(1) * in;
    if (sums) out.logit_sum += logits.sum(1);
  }
  out.lse = chunks.size() == 1 ? lses.squeeze(1) : lses.logsumexp(1);
  return out;
}

struct ChunkedHead : public torch::autograd::Function<ChunkedHead> {
  // -> {token log-probs (N), logit sums (N) or an empty tensor}
  static variable_list forward(AutogradContext* ctx, torch::Tensor h, torch::Tensor weight,
                               torch::Tensor targets, int64_t chunk, int64_t compute, bool sums) {
    const auto dtype = static_cast<torch::Dtype>(compute);
    Forward f = RunForward(h.to(dtype), weight, targets, chunk, sums);
    ctx->save_for_backward({h, weight, targets, f.lse});
    ctx->saved_data["chunk"] = chunk;
    ctx->saved_data["compute"] = compute;
    auto sum = sums ? f.logit_sum : torch::zeros({0}, f.lse.options());
    ctx->mark_non_differentiable({sum});
    return {f.target_logit - f.lse, sum};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    NoAutocast no_autocast;
    auto saved = ctx->get_saved_variables();
    const auto& h = saved[0];
    const auto& weight = saved[1];
    const auto& targets = saved[2];
    const auto& lse = saved[3];
    const int64_t chunk = ctx->saved_data["chunk"].toInt();
    const auto dtype = static_cast<torch::Dtype>(ctx->saved_data["compute"].toInt());
    const bool want_h = ctx->needs_input_grad(0), want_w = ctx->needs_input_grad(1);
    variable_list out(6);
    if (!grad[0].defined() || (!want_h && !want_w)) return out;
    const auto acc = Accumulate(dtype);
    auto g = grad[0].to(acc).unsqueeze(1);  // (N, 1)
    auto hc = h.to(dtype);
    torch::Tensor dh, dw;
    if (want_h) dh = torch::zeros({h.size(0), h.size(1)}, h.options().dtype(acc));
    if (want_w) dw = torch::empty_like(weight);
    for (const Chunk& c : Chunks(weight.size(0), chunk)) {
      auto w = weight.narrow(0, c.begin, c.size).to(dtype);
      auto logits = torch::mm(hc, w.t()).to(acc);
      // dlogits = g * (onehot - softmax), in float32, then the compute dtype for the matmuls.
      auto dlogits = (logits - lse.unsqueeze(1)).exp_().mul_(-g);
      auto [in, col] = TargetsIn(targets, c);
      dlogits.scatter_add_(1, col.unsqueeze(1), g * in.unsqueeze(1));
      auto dl = dlogits.to(dtype);
      if (want_h) dh += torch::mm(dl, w).to(acc);
      if (want_w) dw.narrow(0, c.begin, c.size).copy_(torch::mm(dl.t(), hc));
    }
    if (want_h) out[0] = dh.to(h.scalar_type());
    if (want_w) out[1] = dw;
    return out;
  }
};

}  // namespace

torch::Tensor ChunkedTokenLogProbs(const torch::Tensor& h, const torch::Tensor& weight,
                                   const torch::Tensor& targets, int64_t chunk,
                                   torch::Dtype compute, torch::Tensor* logit_sums) {
  TORCH_CHECK(h.dim() == 2 && weight.dim() == 2 && h.size(1) == weight.size(1),
              "ChunkedTokenLogProbs: h (N, D) and weight (V, D)");
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == h.size(0),
              "ChunkedTokenLogProbs: one target per row of h");
  TORCH_CHECK(chunk > 0, "ChunkedTokenLogProbs: chunk must be positive");
  auto t = targets.to(h.device(), torch::kInt64);
  const bool sums = logit_sums != nullptr;
  if (!torch::GradMode::is_enabled() || (!h.requires_grad() && !weight.requires_grad())) {
    Forward f = RunForward(h.to(compute), weight, t, chunk, sums);
    if (sums) *logit_sums = f.logit_sum;
    return f.target_logit - f.lse;
  }
  auto out = ChunkedHead::apply(h, weight, t, chunk, static_cast<int64_t>(compute), sums);
  if (sums) *logit_sums = out[1];
  return out[0];
}

}  // namespace rmgen
