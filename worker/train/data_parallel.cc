#include "worker/train/data_parallel.h"

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "common/file.h"

namespace rmgen {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::string ShardFileName(int rank, int size) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "optimizer.rank-%02d-of-%02d.safetensors", rank, size);
  return buf;
}

}  // namespace

Buffer TensorBuffer(const torch::Tensor& t) {
  Buffer b;
  b.data = t.data_ptr();
  b.count = t.numel();
  b.device = t.is_cuda();
  switch (t.scalar_type()) {
    case torch::kFloat32: b.dtype = DType::kFloat32; break;
    case torch::kFloat64: b.dtype = DType::kFloat64; break;
    case torch::kBFloat16: b.dtype = DType::kBFloat16; break;
    case torch::kFloat16: b.dtype = DType::kFloat16; break;
    case torch::kInt64: b.dtype = DType::kInt64; break;
    case torch::kInt32: b.dtype = DType::kInt32; break;
    default:
      b.dtype = DType::kUInt8;
      b.count = t.numel() * t.element_size();
      break;
  }
  return b;
}

// Marks its parameter ready once autograd has accumulated its gradient.
struct DataParallel::Hook : torch::autograd::FunctionPostHook {
  Hook(DataParallel* dp, int64_t param) : dp_(dp), param_(param) {}
  torch::autograd::variable_list operator()(
      const torch::autograd::variable_list& outputs,
      const torch::autograd::variable_list& /*inputs*/) override {
    dp_->MarkReady(param_);
    return outputs;
  }
  DataParallel* dp_;
  int64_t param_;
};

DataParallel::DataParallel(Communicator* comm, std::vector<torch::Tensor> params,
                           const AdamWOptions& adamw, const DataParallelOptions& options)
    : comm_(comm), options_(options), params_(std::move(params)) {
  torch::NoGradGuard no_grad;
  const int64_t world = comm_->size();
  bucket_of_.assign(params_.size(), -1);
  // Buckets in reverse parameter order, one dtype and device per bucket.
  std::vector<int64_t> order;
  for (int64_t i = static_cast<int64_t>(params_.size()) - 1; i >= 0; --i) order.push_back(i);
  std::vector<std::vector<int64_t>> groups;
  int64_t bytes = 0;
  for (int64_t i : order) {
    const auto& p = params_[i];
    const bool fits = !groups.empty() && bytes < options_.bucket_bytes &&
                      params_[groups.back().front()].scalar_type() == p.scalar_type() &&
                      params_[groups.back().front()].device() == p.device();
    if (!fits) {
      groups.emplace_back();
      bytes = 0;
    }
    groups.back().push_back(i);
    bytes += p.numel() * p.element_size();
  }
  for (const auto& g : groups) {
    Bucket b;
    int64_t n = 0;
    for (int64_t i : g) {
      b.members.push_back(i);
      b.offsets.push_back(n);
      n += params_[i].numel();
    }
    if (options_.zero1) n = (n + world - 1) / world * world;
    const auto opts = params_[g.front()].options().requires_grad(false);
    b.grads = torch::zeros({n}, opts);
    if (options_.zero1) {
      b.params = torch::zeros({n}, opts);
      // One rank owns the whole bucket: its shard is the bucket itself, so the reduce-scatter
      // is the identity on every backend (no copy, host or device).
      b.grad_shard = world == 1 ? b.grads : torch::zeros({n / world}, opts);
    }
    buckets_.push_back(std::move(b));
  }
  for (size_t bi = 0; bi < buckets_.size(); ++bi) {
    Bucket& b = buckets_[bi];
    for (size_t k = 0; k < b.members.size(); ++k) {
      torch::Tensor& p = params_[b.members[k]];
      const int64_t off = b.offsets[k], n = p.numel();
      bucket_of_[b.members[k]] = bi;
      if (options_.zero1) {
        auto view = b.params.slice(0, off, off + n).view(p.sizes());
        view.copy_(p);
        p.set_data(view);
      }
      p.mutable_grad() = b.grads.slice(0, off, off + n).view(p.sizes());
    }
  }
  for (size_t i = 0; i < params_.size(); ++i) {
    auto acc = torch::autograd::impl::grad_accumulator(params_[i]);
    if (!acc) continue;  // does not require grad: never ready, launched by FinishGradients
    const uintptr_t key = acc->add_post_hook(std::make_unique<Hook>(this, int64_t(i)));
    hooks_.emplace_back(acc, key);
  }
  if (options_.zero1) {
    std::vector<torch::Tensor> shard_params, shard_grads;
    for (auto& b : buckets_) {
      const int64_t s = ShardSize(b);
      shard_params.push_back(b.params.slice(0, comm_->rank() * s, (comm_->rank() + 1) * s));
      shard_grads.push_back(b.grad_shard);
    }
    opt_ = std::make_unique<AdamW>(shard_params, adamw, shard_grads);
  } else {
    opt_ = std::make_unique<AdamW>(params_, adamw);
  }
}

DataParallel::~DataParallel() {
  for (auto& [node, key] : hooks_) node->del_post_hook(key);
}

void DataParallel::BeginStep() {
  torch::NoGradGuard no_grad;
  for (auto& b : buckets_) b.grads.zero_();
  armed_ = false;
}

void DataParallel::BeginBackward(bool last) {
  armed_ = last && options_.overlap;
  if (last) {
    next_launch_ = 0;
    for (auto& b : buckets_) {
      b.ready = 0;
      b.work.reset();
    }
  }
}

void DataParallel::MarkReady(int64_t param) {
  if (!armed_) return;
  Bucket& b = buckets_[bucket_of_[param]];
  if (++b.ready == static_cast<int64_t>(b.members.size())) LaunchReadyBuckets();
}

void DataParallel::LaunchReadyBuckets() {
  while (next_launch_ < num_buckets() &&
         buckets_[next_launch_].ready >=
             static_cast<int64_t>(buckets_[next_launch_].members.size())) {
    Launch(buckets_[next_launch_++]);
  }
}

void DataParallel::Launch(Bucket& b) {
  if (options_.zero1) {
    b.work =
        comm_->ReduceScatter(TensorBuffer(b.grads), TensorBuffer(b.grad_shard), ReduceOp::kSum);
  } else {
    b.work = comm_->AllReduce(TensorBuffer(b.grads), ReduceOp::kSum);
  }
}

Status DataParallel::WaitAll() {
  const auto t0 = Clock::now();
  Status first;
  for (auto& b : buckets_) {
    if (!b.work) continue;
    Status s = b.work->Wait();
    b.work.reset();
    if (first.ok() && !s.ok()) first = s;
  }
  wait_seconds_ += std::chrono::duration<double>(Clock::now() - t0).count();
  return first;
}

Status DataParallel::FinishGradients() {
  armed_ = false;
  while (next_launch_ < num_buckets()) Launch(buckets_[next_launch_++]);
  return WaitAll();
}

StatusOr<double> DataParallel::ClipGradNorm(double max_norm) {
  torch::NoGradGuard no_grad;
  if (!options_.zero1) return rmgen::ClipGradNorm(params_, max_norm);
  // Sum of squares of the owned slices, summed over ranks: the global norm.
  torch::Tensor sq = torch::zeros({1}, buckets_.front().grads.options().dtype(torch::kFloat32));
  for (const auto& b : buckets_) sq += b.grad_shard.to(torch::kFloat32).pow(2).sum();
  const auto t0 = Clock::now();
  RETURN_IF_ERROR(comm_->AllReduce(TensorBuffer(sq), ReduceOp::kSum)->Wait());
  wait_seconds_ += std::chrono::duration<double>(Clock::now() - t0).count();
  const torch::Tensor total = sq.sqrt();
  if (max_norm > 0) {
    const torch::Tensor coef = (max_norm / (total + 1e-6)).clamp_max(1.0);
    if (coef.item<float>() < 1.0f) {
      for (auto& b : buckets_) b.grad_shard.mul_(coef.to(b.grad_shard.scalar_type()));
    }
  }
  return total.item<double>();
}

Status DataParallel::Step(double lr) {
  opt_->Step(lr);
  if (!options_.zero1) return Status::Ok();
  for (auto& b : buckets_) b.work = comm_->AllGather(TensorBuffer(b.params));
  return WaitAll();
}

Status DataParallel::ForEachOwnedPiece(const std::function<Status(const OwnedPiece&)>& fn) const {
  const int64_t r = comm_->rank();
  for (size_t bi = 0; bi < buckets_.size(); ++bi) {
    const Bucket& b = buckets_[bi];
    const int64_t s = ShardSize(b), lo = r * s, hi = lo + s;
    for (size_t k = 0; k < b.members.size(); ++k) {
      const int64_t off = b.offsets[k], n = params_[b.members[k]].numel();
      const int64_t a = std::max(off, lo), e = std::min(off + n, hi);
      if (a >= e) continue;
      RETURN_IF_ERROR(
          fn(OwnedPiece{static_cast<int64_t>(bi), b.members[k], a - off, e - off, a - lo}));
    }
  }
  return Status::Ok();
}

double DataParallel::TakeWaitSeconds() {
  const double s = wait_seconds_;
  wait_seconds_ = 0;
  return s;
}

Status DataParallel::SaveOptimizer(const std::string& dir) const {
  if (!options_.zero1) {
    if (comm_->rank() != 0) return Status::Ok();
    return WriteSafetensors((fs::path(dir) / "optimizer.safetensors").string(), opt_->StateDict());
  }
  // Pieces of each parameter's moments that this rank's slices cover.
  NamedTensors out;
  nlohmann::json ranges = nlohmann::json::object();
  out.emplace_back("step", torch::tensor({opt_->steps()}, torch::kInt64));
  (void)ForEachOwnedPiece([&](const OwnedPiece& pc) {
    const std::string i = std::to_string(pc.param);
    out.emplace_back("exp_avg." + i, opt_->exp_avg()[pc.bucket].slice(0, pc.at, pc.at + pc.size()));
    out.emplace_back("exp_avg_sq." + i,
                     opt_->exp_avg_sq()[pc.bucket].slice(0, pc.at, pc.at + pc.size()));
    if (opt_->master()[pc.bucket].defined()) {
      out.emplace_back("master." + i, opt_->master()[pc.bucket].slice(0, pc.at, pc.at + pc.size()));
    }
    ranges[i] = {pc.begin, pc.end};
    return Status::Ok();
  });
  return WriteSafetensors((fs::path(dir) / ShardFileName(comm_->rank(), comm_->size())).string(),
                          out, {{"format", "rmgen-zero1"}, {"ranges", ranges.dump()}});
}

Status DataParallel::LoadOptimizer(const std::string& dir) {
  // Every piece on disk: parameter -> [(begin, end, file, tensor)].
  struct Piece {
    int64_t begin, end;
    size_t file;
  };
  std::vector<SafetensorsFile> files;
  std::map<int64_t, std::vector<Piece>> pieces;
  int64_t steps = -1;
  bool masters = false;  // the files hold float32 master copies (bf16 weights)
  auto add_file = [&](const std::string& path, bool sharded) -> Status {
    ASSIGN_OR_RETURN(SafetensorsFile f, SafetensorsFile::Open(path));
    nlohmann::json ranges = nlohmann::json::object();
    if (sharded) {
      auto it = f.metadata().find("ranges");
      if (it == f.metadata().end()) return DataLossError(path + ": no 'ranges' metadata");
      ranges = nlohmann::json::parse(it->second, nullptr, false);
      if (!ranges.is_object()) return DataLossError(path + ": 'ranges' metadata is not JSON");
    }
    ASSIGN_OR_RETURN(torch::Tensor st, f.Load("step", torch::kInt64));
    if (steps >= 0 && st.item<int64_t>() != steps) {
      return DataLossError(path + ": step " + std::to_string(st.item<int64_t>()) +
                           " differs from the other shards' " + std::to_string(steps));
    }
    steps = st.item<int64_t>();
    for (const auto& [name, e] : f.entries()) {
      if (name.rfind("master.", 0) == 0) masters = true;
      if (name.rfind("exp_avg.", 0) != 0) continue;
      const std::string idx = name.substr(8);
      const int64_t p = std::atoll(idx.c_str());
      if (p < 0 || p >= static_cast<int64_t>(params_.size())) {
        return DataLossError(path + ": tensor '" + name + "' names parameter " + idx + " of " +
                             std::to_string(params_.size()) + " (saved for another model?)");
      }
      int64_t begin = 0, end = params_[p].numel();
      if (sharded) {
        if (!ranges.contains(idx)) return DataLossError(path + ": no range for '" + name + "'");
        begin = ranges[idx][0];
        end = ranges[idx][1];
      }
      pieces[p].push_back({begin, end, files.size()});
    }
    files.push_back(std::move(f));
    return Status::Ok();
  };
  const std::string full = (fs::path(dir) / "optimizer.safetensors").string();
  if (FileExists(full)) {
    RETURN_IF_ERROR(add_file(full, false));
  } else {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir, ec)) {
      const std::string f = e.path().filename().string();
      if (f.rfind("optimizer.rank-", 0) == 0) RETURN_IF_ERROR(add_file(e.path().string(), true));
    }
    if (files.empty()) {
      return NotFoundError(dir + ": no optimizer.safetensors and no optimizer.rank-*-of-* files");
    }
  }
  torch::NoGradGuard no_grad;
  // Copies elements [a, b) of parameter p's `kind` moment into dst (1-D, b - a elements).
  auto fill = [&](const char* kind, int64_t p, int64_t a, int64_t b, torch::Tensor dst) {
    int64_t covered = 0;
    for (const Piece& pc : pieces[p]) {
      const int64_t lo = std::max(a, pc.begin), hi = std::min(b, pc.end);
      if (lo >= hi) continue;
      const std::string name = std::string(kind) + "." + std::to_string(p);
      auto t = files[pc.file].Load(name, dst.scalar_type());
      if (!t.ok()) return t.status();
      torch::Tensor flat = t->reshape({-1});
      if (flat.numel() != pc.end - pc.begin) {
        return DataLossError(files[pc.file].path() + ": '" + name + "' has " +
                             std::to_string(flat.numel()) + " elements, its range " +
                             std::to_string(pc.end - pc.begin));
      }
      dst.slice(0, lo - a, hi - a).copy_(flat.slice(0, lo - pc.begin, hi - pc.begin));
      covered += hi - lo;
    }
    if (covered != b - a) {
      return DataLossError(dir + ": optimizer state of parameter " + std::to_string(p) +
                           " covers " + std::to_string(covered) + " of elements [" +
                           std::to_string(a) + ", " + std::to_string(b) +
                           ") (a shard file missing, or saved for another model?)");
    }
    return Status::Ok();
  };
  if (!options_.zero1) {
    for (size_t p = 0; p < params_.size(); ++p) {
      const int64_t n = params_[p].numel();
      RETURN_IF_ERROR(fill("exp_avg", p, 0, n, opt_->exp_avg()[p].view({-1})));
      RETURN_IF_ERROR(fill("exp_avg_sq", p, 0, n, opt_->exp_avg_sq()[p].view({-1})));
      if (masters && opt_->master()[p].defined()) {
        RETURN_IF_ERROR(fill("master", p, 0, n, opt_->master()[p].view({-1})));
      }
    }
  } else {
    RETURN_IF_ERROR(ForEachOwnedPiece([&](const OwnedPiece& pc) -> Status {
      RETURN_IF_ERROR(fill("exp_avg", pc.param, pc.begin, pc.end,
                           opt_->exp_avg()[pc.bucket].slice(0, pc.at, pc.at + pc.size())));
      if (masters && opt_->master()[pc.bucket].defined()) {
        RETURN_IF_ERROR(fill("master", pc.param, pc.begin, pc.end,
                             opt_->master()[pc.bucket].slice(0, pc.at, pc.at + pc.size())));
      }
      return fill("exp_avg_sq", pc.param, pc.begin, pc.end,
                  opt_->exp_avg_sq()[pc.bucket].slice(0, pc.at, pc.at + pc.size()));
    }));
  }
  opt_->set_steps(steps);
  return Status::Ok();
}

}  // namespace rmgen
