// Runs under `mpirun -np 2` (ctest -L mpi): the MPI communicator's collectives and the
// DataParallel engine, against values every rank can compute by itself.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <thread>

#include "worker/comm/communicator.h"
#include "worker/train/data_parallel.h"

namespace rmgen {
namespace {

Communicator* comm = nullptr;

TEST(MpiCommTest, LayoutAgreesWithMpi) {
  const RankLayout l = RankLayout::FromEnvironment();
  EXPECT_EQ(l.source, "OMPI_COMM_WORLD");
  EXPECT_EQ(l.rank, comm->rank());
  EXPECT_EQ(l.size, comm->size());
  EXPECT_STREQ(comm->backend(), "mpi");
}

TEST(MpiCommTest, AllReduceSumMaxMinInEveryDtype) {
  const int r = comm->rank(), w = comm->size();
  for (auto dtype :
       {torch::kFloat32, torch::kFloat64, torch::kBFloat16, torch::kFloat16, torch::kInt64}) {
    auto base = torch::arange(0, 1000, torch::kFloat64);
    auto mine = (base * (r + 1)).to(dtype);
    auto sum = mine.clone(), mx = mine.clone(), mn = mine.clone();
    ASSERT_TRUE(comm->AllReduceNow(TensorBuffer(sum), ReduceOp::kSum).ok());
    ASSERT_TRUE(comm->AllReduceNow(TensorBuffer(mx), ReduceOp::kMax).ok());
    ASSERT_TRUE(comm->AllReduceNow(TensorBuffer(mn), ReduceOp::kMin).ok());
    // Expected: every rank's (rounded) values summed exactly, then rounded once.
    auto exact = torch::zeros_like(base);
    for (int k = 0; k < w; ++k) exact += (base * (k + 1)).to(dtype).to(torch::kFloat64);
    auto expect_sum = exact.to(dtype);
    EXPECT_TRUE(torch::equal(sum, expect_sum)) << dtype;
    EXPECT_TRUE(torch::equal(mx, (base * w).to(dtype))) << dtype;
    EXPECT_TRUE(torch::equal(mn, base.to(dtype))) << dtype;
  }
}

TEST(MpiCommTest, ReduceScatterAllGatherBroadcast) {
  const int r = comm->rank(), w = comm->size();
  auto in = torch::arange(0, 8 * w, torch::kFloat32) + r;
  auto out = torch::zeros({8}, torch::kFloat32);
  ASSERT_TRUE(
      comm->ReduceScatter(TensorBuffer(in), TensorBuffer(out), ReduceOp::kSum)->Wait().ok());
  auto expect =
      (torch::arange(0, 8 * w, torch::kFloat32) * w + w * (w - 1) / 2).slice(0, 8 * r, 8 * r + 8);
  EXPECT_TRUE(torch::equal(out, expect));

  auto g = torch::full({4 * w}, -1.0f);
  g.slice(0, 4 * r, 4 * r + 4).fill_(float(r));
  ASSERT_TRUE(comm->AllGather(TensorBuffer(g))->Wait().ok());
  for (int k = 0; k < w; ++k) EXPECT_EQ(g[4 * k].item<float>(), float(k));

  auto b = torch::full({5}, float(r + 7));
  ASSERT_TRUE(comm->Broadcast(TensorBuffer(b), w - 1)->Wait().ok());
  EXPECT_TRUE(torch::equal(b, torch::full({5}, float(w - 1 + 7))));
  EXPECT_TRUE(comm->BarrierNow().ok());
}

TEST(MpiCommTest, ALateRankIsADeadlineNotAHang) {
  // Rank 1 issues the collective 1.5 s late; rank 0 waits 0.4 s and gets DEADLINE_EXCEEDED
  // naming the collective. The collective then completes on both, so the job goes on.
  auto t = torch::ones({16});
  std::shared_ptr<Work> w;
  comm->set_timeout(std::chrono::milliseconds(400));
  if (comm->rank() == 1) std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  w = comm->AllReduce(TensorBuffer(t), ReduceOp::kSum);
  if (comm->rank() == 0) {
    Status s = w->Wait();
    EXPECT_EQ(s.code(), StatusCode::kDeadlineExceeded) << s.ToString();
    EXPECT_NE(s.message().find("all-reduce #"), std::string::npos) << s.message();
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  comm->set_timeout(std::chrono::seconds(60));
  ASSERT_TRUE(w->Wait().ok());
  EXPECT_EQ(t[0].item<float>(), float(comm->size()));
}

TEST(MpiCommTest, HostOnlyBackendRefusesDeviceBuffers) {
  float x = 0;
  Buffer b{&x, 1, DType::kFloat32, true};
  Status s = comm->AllReduce(b, ReduceOp::kSum)->Wait();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("nccl"), std::string::npos) << s.message();
}

// A tiny model whose gradients differ per rank.
struct Net {
  torch::nn::Linear a{16, 32}, b{32, 8};
  Net() {
    torch::manual_seed(5);
    a = torch::nn::Linear(16, 32);
    b = torch::nn::Linear(32, 8);
  }
  std::vector<torch::Tensor> params() {
    auto p = a->parameters();
    for (auto& t : b->parameters()) p.push_back(t);
    return p;
  }
  torch::Tensor Loss(int rank) {
    torch::manual_seed(100 + rank);
    auto x = torch::randn({4, 16});
    return b->forward(torch::tanh(a->forward(x))).pow(2).mean();
  }
};

TEST(MpiDataParallelTest, HookLaunchedBucketsSumEveryRanksGradients) {
  // Reference: each rank's plain gradients, summed over ranks by hand.
  Net ref;
  ref.Loss(comm->rank()).backward();
  std::vector<torch::Tensor> expect;
  for (auto& p : ref.params()) {
    auto g = p.grad().clone();
    ASSERT_TRUE(comm->AllReduceNow(TensorBuffer(g), ReduceOp::kSum).ok());
    expect.push_back(g);
  }
  for (bool overlap : {true, false}) {
    Net net;
    DataParallelOptions o;
    o.bucket_bytes = 16;  // one bucket per parameter
    o.overlap = overlap;
    DataParallel dp(comm, net.params(), AdamWOptions{}, o);
    EXPECT_EQ(dp.num_buckets(), 4);
    dp.BeginStep();
    dp.BeginBackward(true);
    net.Loss(comm->rank()).backward();
    ASSERT_TRUE(dp.FinishGradients().ok());
    auto ps = net.params();
    for (size_t i = 0; i < ps.size(); ++i) {
      EXPECT_TRUE(torch::allclose(ps[i].grad(), expect[i], 1e-6, 1e-7)) << i;
    }
  }
}

TEST(MpiDataParallelTest, Zero1StepEqualsTheUnshardedStep) {
  AdamWOptions ao;
  ao.lr = 1e-2;
  ao.weight_decay = 0.1;
  std::vector<std::vector<torch::Tensor>> results;
  for (bool zero1 : {false, true}) {
    Net net;
    DataParallelOptions o;
    o.bucket_bytes = 700;
    o.zero1 = zero1;
    DataParallel dp(comm, net.params(), ao, o);
    for (int step = 0; step < 3; ++step) {
      dp.BeginStep();
      dp.BeginBackward(true);
      net.Loss(comm->rank() + step).backward();
      ASSERT_TRUE(dp.FinishGradients().ok());
      auto norm = dp.ClipGradNorm(0.5);
      ASSERT_TRUE(norm.ok());
      ASSERT_TRUE(dp.Step(1e-2).ok());
    }
    std::vector<torch::Tensor> p;
    for (auto& t : net.params()) p.push_back(t.detach().clone());
    results.push_back(p);
  }
  for (size_t i = 0; i < results[0].size(); ++i) {
    EXPECT_TRUE(torch::allclose(results[0][i], results[1][i], 1e-5, 1e-6))
        << i << " max diff " << (results[0][i] - results[1][i]).abs().max().item<float>();
  }
}

}  // namespace
}  // namespace rmgen

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  torch::set_num_threads(1);
  auto c = rmgen::CreateCommunicator(rmgen::RankLayout::FromEnvironment(),
                                     rmgen::CommOptions{"cpu", std::chrono::seconds(60)});
  if (!c.ok() || (*c)->size() < 2) {
    std::fprintf(stderr, "comm_mpi_test: run under mpirun -np 2 or more (%s)\n",
                 c.ok() ? "one rank" : c.status().ToString().c_str());
    return 1;
  }
  rmgen::comm = c->get();
  // Only rank 0 prints results; every rank's failures still fail the run.
  if (rmgen::comm->rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  // Every rank's verdict: a failure on any rank fails the job.
  int64_t flag = RUN_ALL_TESTS();
  (void)rmgen::comm->AllReduceNow(rmgen::Buffer{&flag, 1, rmgen::DType::kInt64, false},
                                  rmgen::ReduceOp::kMax);
  return static_cast<int>(flag);
}
