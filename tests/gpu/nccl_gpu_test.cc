// The NCCL backend on a real GPU (label gpu): one rank, or every rank of an mpirun with
// one GPU each. Skipped where no CUDA device is visible.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <vector>

#include "worker/comm/communicator.h"

namespace rmgen {
namespace {

bool HaveGpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

TEST(NcclGpuTest, CollectivesOnDeviceBuffersOrderedOnTheComputeStream) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  const RankLayout layout = RankLayout::FromEnvironment();
  auto c = NewNcclCommunicator(layout, CommOptions{"cuda", std::chrono::seconds(60)});
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  Communicator& comm = **c;
  const int w = comm.size(), r = comm.rank();
  const int n = 1 << 20;
  std::vector<float> host(n, float(r + 1));
  float* dev = nullptr;
  ASSERT_EQ(cudaMalloc(&dev, n * sizeof(float)), cudaSuccess);
  // Written on the compute (default) stream; the collective must see it without a sync.
  ASSERT_EQ(cudaMemcpyAsync(dev, host.data(), n * sizeof(float), cudaMemcpyHostToDevice, nullptr),
            cudaSuccess);
  ASSERT_TRUE(comm.AllReduce(Buffer{dev, n, DType::kFloat32, true}, ReduceOp::kSum)->Wait().ok());
  ASSERT_EQ(cudaMemcpy(host.data(), dev, n * sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(host[0], float(w * (w + 1) / 2));
  EXPECT_EQ(host[n - 1], float(w * (w + 1) / 2));

  // All-gather in place.
  std::vector<float> parts(n, -1.0f);
  const int chunk = n / w;
  for (int i = 0; i < chunk; ++i) parts[r * chunk + i] = float(r);
  ASSERT_EQ(cudaMemcpy(dev, parts.data(), n * sizeof(float), cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_TRUE(comm.AllGather(Buffer{dev, chunk * w, DType::kFloat32, true})->Wait().ok());
  ASSERT_EQ(cudaMemcpy(parts.data(), dev, n * sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);
  for (int k = 0; k < w; ++k) EXPECT_EQ(parts[k * chunk], float(k));

  // Host buffers are refused, naming the right backend.
  float x = 0;
  EXPECT_EQ(comm.AllReduce(Buffer{&x, 1, DType::kFloat32, false}, ReduceOp::kSum)->Wait().code(),
            StatusCode::kInvalidArgument);
  cudaFree(dev);
}

}  // namespace
}  // namespace rmgen
