// The communicator without MPI: rank layout from each launcher's environment, the single
// backend, and which backends this build carries.
#include <gtest/gtest.h>

#include "worker/comm/communicator.h"

namespace rmgen {
namespace {

TEST(RankLayoutTest, ReadsMpirunPmixAndSrunVariables) {
  RankLayout o = RankLayout::FromEnvironment({{"OMPI_COMM_WORLD_RANK", "3"},
                                              {"OMPI_COMM_WORLD_SIZE", "8"},
                                              {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
                                              {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}});
  EXPECT_EQ(o.source, "OMPI_COMM_WORLD");
  EXPECT_EQ(o.rank, 3);
  EXPECT_EQ(o.size, 8);
  EXPECT_EQ(o.local_rank, 1);
  EXPECT_EQ(o.local_size, 2);

  RankLayout s = RankLayout::FromEnvironment({{"SLURM_PROCID", "5"},
                                              {"SLURM_NTASKS", "6"},
                                              {"SLURM_LOCALID", "2"},
                                              {"SLURM_NTASKS_PER_NODE", "3"}});
  EXPECT_EQ(s.source, "SLURM");
  EXPECT_EQ(s.rank, 5);
  EXPECT_EQ(s.local_rank, 2);
  EXPECT_EQ(s.local_size, 3);

  RankLayout p = RankLayout::FromEnvironment({{"PMIX_RANK", "1"}, {"SLURM_NTASKS", "2"}});
  EXPECT_EQ(p.source, "PMIX");
  EXPECT_EQ(p.rank, 1);
  EXPECT_EQ(p.size, 2);
  // mpirun's variables win over a surrounding Slurm allocation's.
  RankLayout both = RankLayout::FromEnvironment({{"OMPI_COMM_WORLD_RANK", "0"},
                                                 {"OMPI_COMM_WORLD_SIZE", "2"},
                                                 {"SLURM_PROCID", "0"},
                                                 {"SLURM_NTASKS", "1"}});
  EXPECT_EQ(both.size, 2);
}

TEST(RankLayoutTest, NoLauncherOrNonsenseMeansOneRank) {
  EXPECT_EQ(RankLayout::FromEnvironment({}).size, 1);
  EXPECT_EQ(RankLayout::FromEnvironment({}).source, "none");
  RankLayout bad =
      RankLayout::FromEnvironment({{"OMPI_COMM_WORLD_RANK", "4"}, {"OMPI_COMM_WORLD_SIZE", "2"}});
  EXPECT_EQ(bad.size, 1);
  RankLayout junk = RankLayout::FromEnvironment({{"SLURM_PROCID", "x"}, {"SLURM_NTASKS", "2"}});
  EXPECT_EQ(junk.size, 1);
}

TEST(CommunicatorTest, OneRankIsTheSingleBackendAndCollectivesAreIdentity) {
  auto c = CreateCommunicator(RankLayout{}, CommOptions{});
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_STREQ((*c)->backend(), "single");
  float x[4] = {1, 2, 3, 4}, y[4] = {0, 0, 0, 0};
  Buffer bx{x, 4, DType::kFloat32, false}, by{y, 4, DType::kFloat32, false};
  EXPECT_TRUE((*c)->AllReduceNow(bx, ReduceOp::kSum).ok());
  EXPECT_EQ(x[3], 4);
  EXPECT_TRUE((*c)->ReduceScatter(bx, by, ReduceOp::kSum)->Wait().ok());
  EXPECT_EQ(y[2], 3);
  Buffer half{y, 2, DType::kFloat32, false};
  EXPECT_EQ((*c)->ReduceScatter(bx, half, ReduceOp::kSum)->Wait().code(),
            StatusCode::kInvalidArgument);
  EXPECT_TRUE((*c)->BarrierNow().ok());
}

TEST(CommunicatorTest, DtypeSizes) {
  EXPECT_EQ(DTypeSize(DType::kBFloat16), 2u);
  EXPECT_EQ(DTypeSize(DType::kInt64), 8u);
  EXPECT_EQ((Buffer{nullptr, 10, DType::kFloat32, false}.bytes()), 40u);
  EXPECT_STREQ(DTypeName(DType::kFloat16), "float16");
}

// The NCCL backend is chosen by linking: the build carries it exactly when configure
// found CUDA and NCCL (CI does: the CUDA 13 toolkit with NCCL is installed there).
TEST(CommunicatorTest, NcclBackendIsLinkedWhenTheBuildFoundNccl) {
  EXPECT_EQ(NcclCompiledIn(), RMGEN_EXPECT_NCCL != 0);
  if (!NcclCompiledIn()) {
    auto c = NewNcclCommunicator(RankLayout{}, CommOptions{"cuda", std::chrono::seconds(1)});
    ASSERT_FALSE(c.ok());
    EXPECT_EQ(c.status().code(), StatusCode::kUnimplemented);
    EXPECT_NE(c.status().message().find("NCCL"), std::string::npos);
  }
}

}  // namespace
}  // namespace rmgen
