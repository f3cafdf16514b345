#include "worker/model/varlen.h"

#include <limits>
#include <vector>

namespace rmgen {

std::optional<VarlenPlan> PlanVarlen(const torch::Tensor& positions, const torch::Tensor& segments,
                                     torch::Device device) {
  auto pos = positions.to(torch::kCPU, torch::kInt64).contiguous();
  auto seg = segments.to(torch::kCPU, torch::kInt64).contiguous();
  TORCH_CHECK(pos.dim() == 2 && pos.sizes() == seg.sizes(), "PlanVarlen: (B, T) layouts");
  const int64_t B = pos.size(0), T = pos.size(1);
  const int64_t* pp = pos.data_ptr<int64_t>();
  const int64_t* ps = seg.data_ptr<int64_t>();
  std::vector<int32_t> cu_q = {0}, cu_k = {0};
  std::vector<int64_t> key_cells;
  int64_t cell = 0, max_q = 0, max_k = 0;
  struct Run {
    int64_t segment, first_cell, length, first_pos, last_pos;
  };
  for (int64_t b = 0; b < B; ++b) {
    // The row's runs of one segment, in column order.
    std::vector<Run> runs;
    for (int64_t t = 0; t < T; ++t) {
      const int64_t s = ps[b * T + t], p = pp[b * T + t];
      if (s < 0) continue;
      if (!runs.empty() && runs.back().segment == s) {
        if (p != runs.back().last_pos + 1) return std::nullopt;  // a gap in positions
        runs.back().last_pos = p;
        ++runs.back().length;
      } else {
        runs.push_back({s, cell, 1, p, p});
      }
      ++cell;
    }
    const Run* shared = nullptr;
    for (size_t i = 0; i < runs.size(); ++i) {
      for (size_t j = 0; j < i; ++j) {
        if (runs[j].segment == runs[i].segment) return std::nullopt;  // a segment in two runs
      }
      if (runs[i].segment == 0) {
        if (i != 0) return std::nullopt;  // the shared run after a continuation
        shared = &runs[i];
      } else if (shared != nullptr && runs[i].first_pos != shared->last_pos + 1) {
        return std::nullopt;  // the continuation does not follow its prefix
      }
    }
    for (const Run& r : runs) {
      const bool prefixed = r.segment != 0 && shared != nullptr;
      const int64_t keys = r.length + (prefixed ? shared->length : 0);
      if (prefixed) {
        for (int64_t i = 0; i < shared->length; ++i) key_cells.push_back(shared->first_cell + i);
      }
      for (int64_t i = 0; i < r.length; ++i) key_cells.push_back(r.first_cell + i);
      cu_q.push_back(static_cast<int32_t>(cu_q.back() + r.length));
      cu_k.push_back(static_cast<int32_t>(cu_k.back() + keys));
      max_q = std::max(max_q, r.length);
      max_k = std::max(max_k, keys);
    }
  }
  VarlenPlan plan;
  auto i32 = torch::TensorOptions().dtype(torch::kInt32);
  plan.cu_q = torch::tensor(cu_q, i32).to(device);
  plan.cu_k = torch::tensor(cu_k, i32).to(device);
  plan.key_cells = torch::tensor(key_cells, torch::kInt64).to(device);
  plan.max_q = max_q;
  plan.max_k = max_k;
  return plan;
}

torch::Tensor VarlenAttention(const torch::Tensor& q, const torch::Tensor& k,
                              const torch::Tensor& v, const VarlenPlan& plan, int64_t window,
                              double scale, bool flash) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && v.sizes() == k.sizes(),
              "VarlenAttention: q (N, H, hd), k and v (keys, KV, hd)");
  const int64_t H = q.size(1), KV = k.size(1);
  TORCH_CHECK(H % KV == 0, "VarlenAttention: heads must be a multiple of kv heads");
  if (flash) {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 5)
    std::optional<int64_t> left, right;
    if (window > 0) left = window - 1, right = 0;
    return std::get<0>(at::_flash_attention_forward(
        q, k, v, plan.cu_q, plan.cu_k, plan.max_q, plan.max_k, /*dropout_p=*/0.0,
        /*is_causal=*/true, /*return_debug_mask=*/false, scale, left, right));
#else
    TORCH_CHECK(false, "VarlenAttention: the flash kernels need libtorch 2.5 or later");
#endif
  }
  auto cq = plan.cu_q.to(torch::kCPU, torch::kInt64), ck = plan.cu_k.to(torch::kCPU, torch::kInt64);
  const int64_t S = cq.size(0) - 1;
  if (S == 0) return torch::empty_like(q);
  const int64_t* pq = cq.data_ptr<int64_t>();
  const int64_t* pk = ck.data_ptr<int64_t>();
  std::vector<torch::Tensor> outs;
  outs.reserve(S);
  for (int64_t s = 0; s < S; ++s) {
    const int64_t nq = pq[s + 1] - pq[s], nk = pk[s + 1] - pk[s];
    auto qs = q.narrow(0, pq[s], nq).transpose(0, 1);  // (H, nq, hd)
    auto ks = k.narrow(0, pk[s], nk).transpose(0, 1);  // (KV, nk, hd)
    auto vs = v.narrow(0, pk[s], nk).transpose(0, 1);
    if (KV != H) {
      ks = ks.repeat_interleave(H / KV, 0);
      vs = vs.repeat_interleave(H / KV, 0);
    }
    // Query i sits at key index i + (nk - nq) (bottom-right aligned): it sees keys j <= that,
    // and with a window only those less than `window` before it.
    auto qi = torch::arange(nq, q.options().dtype(torch::kInt64)).view({nq, 1}) + (nk - nq);
    auto kj = torch::arange(nk, q.options().dtype(torch::kInt64)).view({1, nk});
    auto allowed = kj <= qi;
    if (window > 0) allowed = allowed & ((qi - kj) < window);
    auto scores = torch::matmul(qs, ks.transpose(1, 2)).to(torch::kFloat32) * scale;
    scores = scores.masked_fill(allowed.logical_not().unsqueeze(0),
                                -std::numeric_limits<float>::infinity());
    auto probs = torch::softmax(scores, -1).to(q.scalar_type());
    outs.push_back(torch::matmul(probs, vs).transpose(0, 1));  // (nq, H, hd)
  }
  return torch::cat(outs, 0);
}

}  // namespace rmgen
