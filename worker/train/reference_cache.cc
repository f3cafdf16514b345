#include "worker/train/reference_cache.h"

#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "common/file.h"
#include "jobspec/run_dir.h"
#include "worker/data/batching.h"
#include "worker/data/catalog.h"
#include "worker/model/checkpoint.h"
#include "worker/train/data_parallel.h"
#include "worker/train/evaluate.h"

namespace rmgen {

namespace fs = std::filesystem;
using nlohmann::json;

// Reference log-probs of a set, from the cache or computed (and cached), each rank computing
// its share. Every rank ends with all of them.
StatusOr<std::pair<torch::Tensor, torch::Tensor>> ReferenceLogProbs(
    Communicator* comm, const DecoderLM& ref, const std::string& ref_identity, const LoadedSet& set,
    const std::string& cache_dir, const std::string& tokenize_identity, int64_t batch_size,
    int64_t pad_id, PairLayout layout, bool* cache_hit) {
  const std::string key = HexHash(ref_identity + "\n" + set.identity + "\n" + tokenize_identity);
  const std::string path = (fs::path(cache_dir) / ("ref-" + key + ".safetensors")).string();
  const int64_t n = set.pairs.size();
  std::pair<torch::Tensor, torch::Tensor> cached;
  bool hit = false;
  if (FileExists(path)) {
    auto f = SafetensorsFile::Open(path);
    if (f.ok()) {
      auto c = f->Load("chosen", torch::kFloat32), r = f->Load("rejected", torch::kFloat32);
      if (c.ok() && r.ok() && c->numel() == n && r->numel() == n) {
        hit = true;
        cached = {*c, *r};
      }
    }
  }
  // Ranks agree: compute unless every rank could read the cache.
  auto miss = torch::full({1}, hit ? 0.0f : 1.0f,
                          torch::TensorOptions().dtype(torch::kFloat32).device(DeviceOf(ref)));
  RETURN_IF_ERROR(comm->AllReduce(TensorBuffer(miss), ReduceOp::kMax)->Wait());
  *cache_hit = miss.item<float>() == 0.0f;
  if (*cache_hit) return cached;
  const auto [begin, end] = ShardRange(n, comm->rank(), comm->size());
  ASSIGN_OR_RETURN(
      torch::Tensor all,
      GatherRows(comm, RangeLogProbs(ref, set.pairs, begin, end, batch_size, pad_id, layout), n,
                 DeviceOf(ref)));
  std::pair<torch::Tensor, torch::Tensor> lp = {all.select(1, 0).contiguous(),
                                                all.select(1, 1).contiguous()};
  if (comm->rank() == 0) {
    std::error_code ec;
    fs::create_directories(cache_dir, ec);
    RETURN_IF_ERROR(WriteSafetensors(path, {{"chosen", lp.first}, {"rejected", lp.second}},
                                     {{"format", "pt"}, {"dataset", set.name}}));
  }
  return lp;
}

}  // namespace rmgen
