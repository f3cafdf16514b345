// All-reduce bandwidth of rmgen's bucketed gradient reducer against raw MPI_Allreduce of
// the same bytes. Run under mpirun (bench/run_comm_bench.sh runs both modes in one go):
//
//   allreduce_bench raw     MB REPS   one MPI_Allreduce of MB megabytes (float32), in place,
//                                     from the main thread: the anchor
//   allreduce_bench buckets MB REPS   the same bytes as gradients of 64 parameters,
//                                     reduced by DataParallel (25 MiB buckets, communication
//                                     thread, Work handles): what training pays
//
// Prints one JSON line (rank 0): mode, bytes, median seconds per reduction, GB/s of algorithm
// bandwidth (bytes / time).
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "worker/comm/communicator.h"
#include "worker/train/data_parallel.h"

namespace {

using Clock = std::chrono::steady_clock;

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

void Print(const char* mode, int64_t bytes, const std::vector<double>& times) {
  const double t = Median(times);
  std::printf("{\"mode\":\"%s\",\"bytes\":%lld,\"seconds\":%.6f,\"gb_per_s\":%.3f}\n", mode,
              static_cast<long long>(bytes), t, bytes / t / 1e9);
}

int Raw(int64_t count, int reps) {
  MPI_Init(nullptr, nullptr);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  std::vector<float> buf(count, 1.0f);
  std::vector<double> times;
  for (int i = 0; i < reps + 1; ++i) {
    MPI_Barrier(MPI_COMM_WORLD);
    const auto t0 = Clock::now();
    MPI_Allreduce(MPI_IN_PLACE, buf.data(), static_cast<int>(count), MPI_FLOAT, MPI_SUM,
                  MPI_COMM_WORLD);
    if (i > 0) times.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  if (rank == 0) Print("raw", count * 4, times);
  MPI_Finalize();
  return 0;
}

int Buckets(int64_t count, int reps) {
  torch::set_num_threads(1);
  auto comm = rmgen::CreateCommunicator(rmgen::RankLayout::FromEnvironment(), {});
  if (!comm.ok()) {
    std::fprintf(stderr, "%s\n", comm.status().ToString().c_str());
    return 1;
  }
  std::vector<torch::Tensor> params;
  const int64_t per = count / 64;
  for (int i = 0; i < 64; ++i) params.push_back(torch::ones({per}).requires_grad_(true));
  rmgen::DataParallel dp(comm->get(), params, rmgen::AdamWOptions{}, rmgen::DataParallelOptions{});
  std::vector<double> times;
  for (int i = 0; i < reps + 1; ++i) {
    dp.BeginStep();  // zeroing the buckets is not communication: untimed
    (void)(*comm)->BarrierNow();
    const auto t0 = Clock::now();
    dp.BeginBackward(true);
    if (!dp.FinishGradients().ok()) return 1;
    if (i > 0) times.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  if ((*comm)->rank() == 0) Print("buckets", per * 64 * 4, times);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: allreduce_bench raw|buckets MB REPS\n");
    return 2;
  }
  const std::string mode = argv[1];
  const int64_t count = std::atoll(argv[2]) * (1 << 20) / 4 / 64 * 64;
  const int reps = std::atoi(argv[3]);
  return mode == "raw" ? Raw(count, reps) : Buckets(count, reps);
}
