#include "worker/train/job_inputs.h"

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

namespace rmgen {

namespace fs = std::filesystem;
using nlohmann::json;

std::string FileIdentity(const std::string& path) {
  std::error_code ec;
  const auto size = fs::file_size(path, ec);
  const auto mtime = fs::last_write_time(path, ec).time_since_epoch().count();
  return path + "#" + std::to_string(size) + "#" + std::to_string(mtime);
}

std::string DirIdentity(const std::string& dir) {
  std::vector<std::string> parts;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string f = e.path().filename().string();
    if (f == "config.json" || e.path().extension() == ".safetensors") {
      parts.push_back(FileIdentity(e.path().string()));
    }
  }
  std::sort(parts.begin(), parts.end());
  std::string s;
  for (const auto& p : parts) s += p + ";";
  return s;
}

StatusOr<ResolvedDataset> ResolveRef(const JobSpec& spec, const DatasetRef& ref) {
  ResolvedDataset r;
  if (ref.path.empty()) {
    ASSIGN_OR_RETURN(Catalog c, Catalog::Load(spec.catalog, spec.data_root));
    ASSIGN_OR_RETURN(r, c.Resolve(ref.catalog_ref.empty() ? ref.name : ref.catalog_ref));
    if (ref.holdout > 0) {
      r.read.holdout = ref.holdout;  // only the held-out slice
      r.read.holdout_only = true;
    }
  } else {
    r.name = ref.name;
    r.path = ref.path;
    r.read.format = ref.format;
    r.read.subset = ref.subset;
    r.read.split = ref.split;
    if (!FileExists(r.path)) {
      return NotFoundError("dataset '" + ref.name + "': file " + r.path + " not found");
    }
  }
  return r;
}

// `exclude_holdout`: leave out that share of the prompts (data.holdout, for the training set).
StatusOr<LoadedSet> LoadSet(const JobSpec& spec, const DatasetRef& ref, const Tokenizer& tok,
                            const TokenizeOptions& to, int64_t limit, double exclude_holdout) {
  ASSIGN_OR_RETURN(ResolvedDataset r, ResolveRef(spec, ref));
  if (exclude_holdout > 0) {
    r.read.holdout = exclude_holdout;
    r.read.holdout_only = false;
  }
  r.read.limit = limit;
  LoadedSet out;
  out.name = ref.name;
  Status st;
  RETURN_IF_ERROR(ReadDataset(
      r.path, r.read,
      [&](PreferencePair&& p) {
        if (!st.ok()) return;
        auto t = TokenizePair(tok, p, to, &out.tokenize);
        if (!t.ok()) {
          st = t.status().WithContext("dataset '" + ref.name + "', pair " + p.id);
          return;
        }
        if (!t->has_value()) return;
        out.pairs.push_back(std::move(**t));
        out.subsets.push_back(p.subset);
        out.margins.push_back(
            p.score_chosen && p.score_rejected ? *p.score_chosen - *p.score_rejected : 0.0);
      },
      &out.stats));
  RETURN_IF_ERROR(st);
  if (out.pairs.empty()) {
    return InvalidArgumentError("dataset '" + ref.name + "' (" + r.path + "): no usable pairs (" +
                                out.stats.ToJson().dump() + ")");
  }
  const AdapterOptions& ao = r.read.adapter;
  out.identity =
      FileIdentity(r.path) + "|" + r.read.format + "|" + r.read.subset + "|" + r.read.split + "|" +
      std::to_string(r.read.val_fraction) + "|" +
      // (only with a holdout, so identities from before holdouts stay the same)
      (r.read.holdout > 0 ? std::to_string(r.read.holdout) + (r.read.holdout_only ? "only|" : "|")
                          : std::string()) +
      std::to_string(limit) + "|" + ao.prompt_field + "|" + ao.chosen_field + "|" +
      ao.rejected_field + "|" + ao.pairing + "|" + std::to_string(ao.seed);
  return out;
}

torch::Dtype DtypeOf(const JobSpec& s) {
  return s.dtype == "bfloat16" ? torch::kBFloat16 : torch::kFloat32;
}

// The model of the spec (checkpoint or random init) with the given head.
StatusOr<std::unique_ptr<DecoderLM>> BuildModel(const JobSpec& spec, const std::string& path,
                                                HeadKind head) {
  if (!path.empty()) {
    LoadOptions lo;
    lo.head = head;
    lo.dtype = DtypeOf(spec);
    lo.init_seed = spec.init_seed;
    lo.device = torch::Device(spec.device);
    ASSIGN_OR_RETURN(LoadedModel m, LoadModel(path, lo));
    m.model->SetVocabChunk(spec.vocab_chunk);
    if (spec.attention == "masked") m.model->SetAttentionKernel(AttentionKernel::kMasked);
    m.model->SetFusedKernels(spec.fused_kernels);
    return std::move(m.model);
  }
  ASSIGN_OR_RETURN(std::string text, ReadFile(spec.model_config));
  ASSIGN_OR_RETURN(ModelConfig c, ParseModelConfig(text, spec.model_config));
  auto model =
      DecoderLM::RandomInit(c, head, spec.init_seed, DtypeOf(spec), torch::Device(spec.device));
  model->SetVocabChunk(spec.vocab_chunk);
  if (spec.attention == "masked") model->SetAttentionKernel(AttentionKernel::kMasked);
  model->SetFusedKernels(spec.fused_kernels);
  return model;
}

torch::Device DeviceOf(const DecoderLM& model) {
  return model.named_parameters().front().second.device();
}

std::string ModelIdentity(const JobSpec& spec, const std::string& path) {
  if (!path.empty()) return "ckpt:" + DirIdentity(path) + "|" + spec.dtype;
  auto text = ReadFile(spec.model_config);
  return "init:" + (text.ok() ? *text : spec.model_config) + "#" + std::to_string(spec.init_seed) +
         "|" + spec.dtype;
}

std::vector<std::vector<int64_t>> EpochBatches(const JobSpec& spec,
                                               const std::vector<int64_t>& lengths, int64_t epoch) {
  const uint64_t seed = spec.seed * 1000003ull + static_cast<uint64_t>(epoch);
  if (spec.length_grouped) return LengthGroupedBatches(lengths, spec.batch_size, seed);
  std::vector<std::vector<int64_t>> out;
  auto perm = SeededPermutation(lengths.size(), seed);
  for (size_t i = 0; i < perm.size(); i += spec.batch_size) {
    out.emplace_back(perm.begin() + i,
                     perm.begin() + std::min(perm.size(), i + size_t(spec.batch_size)));
  }
  return out;
}

// The spec minus runtime settings, and the training data's identity: resuming is only
// allowed into the same job.
std::string SpecKey(const JobSpec& spec, const std::string& train_identity) {
  json j = spec.resolved;
  j.erase("runtime");
  return HexHash(j.dump() + "\n" + train_identity);
}

}  // namespace rmgen
