// DataParallel: the torch side of data-parallel training over a Communicator.
//
// Gradients live in flat buckets (about kDefaultBucketBytes each, parameters in reverse
// order, the order backward produces their gradients); every parameter's .grad is a view
// into its bucket, so autograd accumulates micro-batches in place. A post hook on each
// parameter's gradient accumulator marks it ready during the backward of the step's last
// micro-batch; a full bucket is launched at once (all-reduce, or reduce-scatter under
// ZeRO-1) while backward goes on with the earlier layers. Buckets launch strictly in
// index order, so every rank issues the same collectives in the same order (the
// communicator's contract) whatever order its hooks fire in; buckets the hooks did not
// finish (unused parameters, a rank with no pairs in this micro-batch) are launched by
// FinishGradients.
//
// Reduction is a SUM: the caller scales each rank's loss by (its pairs / the global
// micro-batch's pairs), so the sum is the global mean whatever the shard sizes.
//
// ZeRO-1: each rank owns 1/size of every bucket (buckets padded to a multiple of size).
// Parameters are views into flat parameter buckets; gradients are reduce-scattered into
// the owned slice, AdamW (the same element-wise arithmetic) updates only that slice and
// keeps moments only for it, and an all-gather brings every rank's updated slice back.
//
// Optimizer checkpoints: without ZeRO-1 rank 0 writes `optimizer.safetensors` (the
// single-process format: exp_avg.<i>, exp_avg_sq.<i> per parameter i, and step). With
// ZeRO-1 every rank writes `optimizer.rank-<r>-of-<n>.safetensors` holding its pieces of
// each parameter's moments, with their element ranges in the metadata. Either format
// loads into either mode and any number of ranks: each rank assembles the ranges it owns
// from whichever pieces cover them.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "worker/comm/communicator.h"
#include "worker/train/optim.h"

namespace rmgen {

// The default gradient bucket: large enough that per-collective latency is amortized,
// small enough that the first bucket launches early in backward (DDP's default, too).
inline constexpr int64_t kDefaultBucketBytes = 25ll << 20;

struct DataParallelOptions {
  int64_t bucket_bytes = kDefaultBucketBytes;
  bool overlap = true;  // launch buckets from hooks; false: all after backward (bench)
  bool zero1 = false;
};

// torch dtype <-> communicator buffer.
Buffer TensorBuffer(const torch::Tensor& t);

class DataParallel {
 public:
  // `params`: the model's trainable parameters, in model order (their index i names the
  // optimizer state, as in AdamW). Under ZeRO-1 their storage moves into flat buckets.
  DataParallel(Communicator* comm, std::vector<torch::Tensor> params, const AdamWOptions& adamw,
               const DataParallelOptions& options);
  ~DataParallel();
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  // Zeroes the gradient buckets: call before the first micro-batch of a step.
  void BeginStep();
  // Call before each micro-batch's backward (or in its place, for a rank that has no pairs
  // in it); `last` arms the hooks: this backward completes the step's gradients.
  void BeginBackward(bool last);
  // Launches what the hooks did not and waits for all of it. Afterwards every parameter's
  // .grad holds the sum over ranks (ZeRO-1: this rank's slices do).
  Status FinishGradients();
  // Global L2 norm of the summed gradients before clipping; clips to max_norm when > 0
  // with torch's clip_grad_norm_ coefficient. The same value on every rank.
  StatusOr<double> ClipGradNorm(double max_norm);
  // AdamW update with learning rate `lr` (ZeRO-1: of the owned slices, then all-gather).
  Status Step(double lr);

  // Writes this rank's optimizer files into `dir` (see the header comment).
  Status SaveOptimizer(const std::string& dir) const;
  // Loads optimizer state from `dir`, written by any mode and any number of ranks.
  Status LoadOptimizer(const std::string& dir);

  int64_t num_buckets() const { return static_cast<int64_t>(buckets_.size()); }
  int64_t steps() const { return opt_->steps(); }
  // Seconds this rank spent blocked waiting on collectives since the last call.
  double TakeWaitSeconds();

 private:
  struct Bucket {
    torch::Tensor grads;           // flat, padded to a multiple of size() under ZeRO-1
    torch::Tensor params;          // ZeRO-1: flat parameter storage; else undefined
    torch::Tensor grad_shard;      // ZeRO-1: this rank's reduced slice
    std::vector<int64_t> members;  // parameter indices
    std::vector<int64_t> offsets;  // element offset of each member in the flat buffers
    int64_t ready = 0;
    std::shared_ptr<Work> work;
  };
  struct Hook;
  // Under ZeRO-1: elements [begin, end) of parameter `param`, held at offset `at` of this
  // rank's slice of bucket `bucket`.
  struct OwnedPiece {
    int64_t bucket, param, begin, end, at;
    int64_t size() const { return end - begin; }
  };
  Status ForEachOwnedPiece(const std::function<Status(const OwnedPiece&)>& fn) const;

  void MarkReady(int64_t param);
  void LaunchReadyBuckets();
  void Launch(Bucket& b);
  Status WaitAll();
  int64_t ShardSize(const Bucket& b) const { return b.grads.numel() / comm_->size(); }

  Communicator* comm_;
  DataParallelOptions options_;
  std::vector<torch::Tensor> params_;
  std::vector<Bucket> buckets_;
  std::vector<int64_t> bucket_of_;  // parameter -> bucket
  std::vector<std::pair<std::shared_ptr<torch::autograd::Node>, uintptr_t>> hooks_;
  std::unique_ptr<AdamW> opt_;
  bool armed_ = false;
  int64_t next_launch_ = 0;
  double wait_seconds_ = 0;
};

}  // namespace rmgen
