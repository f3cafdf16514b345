// rmgen data: dataset tools.
//
//   rmgen data stats    (--format F --input PATH | --catalog C --dataset NAME[:SPLIT])
//                       [--subset S] [--split S] [--strict] [--json] [adapter options]
//   rmgen data convert  (same source options) --out FILE.jsonl
//   rmgen data overlap  A B [--format-a F] [--format-b F] [--json]
//   rmgen data tokenize (same source options) --tokenizer FILE --template T
//                       [--max-length 512] [--max-prompt-length 128]
//                       [--too-long truncate|drop] [--batch-size 8] [--seed 0] [--json]
//   rmgen data synth    --out DIR [--seed N] [--train N] [--validation N] [--shifted N]
//                       [--lengths short|ultrafeedback]
//   rmgen data synth    --profile paper-mini --out DIR [--seed N] [--rows N] [--test-rows N]
//
// synth profiles: `shift` (the default: the synthetic shift suite) and `paper-mini` (the
// study's sources in their own schemas, miniature; synth.h).
//
// Adapter options: --pairing random|best_worst, --prompt-field, --chosen-field,
// --rejected-field, --adapter-seed N, --val-fraction F.
#include <cstdio>
#include <fstream>
#include <map>
#include <set>

#include "client/commands.h"
#include "common/file.h"
#include "worker/data/batching.h"
#include "worker/data/catalog.h"
#include "worker/data/dataset.h"
#include "worker/data/synth.h"
#include "worker/data/tokenize.h"

namespace rmgen::cli {
namespace {

using nlohmann::json;

constexpr const char* kUsage =
    "usage: rmgen data stats    (--format F --input PATH | --catalog C --dataset NAME[:SPLIT])\n"
    "                           [--subset S] [--split S] [--strict] [--json]\n"
    "       rmgen data convert  (source options) --out FILE.jsonl\n"
    "       rmgen data overlap  A.jsonl B.jsonl [--format-a F] [--format-b F] [--json]\n"
    "       rmgen data tokenize (source options) --tokenizer FILE --template T\n"
    "                           [--max-length N] [--max-prompt-length N]\n"
    "                           [--too-long truncate|drop] [--batch-size N] [--seed N] [--json]\n"
    "       rmgen data synth    --out DIR [--seed N] [--train N] [--validation N] [--shifted N]\n"
    "                           [--lengths short|ultrafeedback]\n"
    "       rmgen data synth    --profile paper-mini --out DIR [--seed N] [--rows N]\n"
    "                           [--test-rows N]\n"
    "formats: hh_rlhf ultrafeedback arena nectar webgpt summarize rewardbench pairs\n";

struct Flags {
  std::map<std::string, std::string> kv;
  std::set<std::string> bools;
  std::vector<std::string> positional;
  std::string Get(const std::string& k, const std::string& def = "") const {
    auto it = kv.find(k);
    return it == kv.end() ? def : it->second;
  }
  bool Has(const std::string& k) const { return bools.count(k) > 0 || kv.count(k) > 0; }
};

StatusOr<Flags> ParseFlags(const std::vector<std::string>& args) {
  static const std::set<std::string> kBool = {"strict", "json"};
  Flags f;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a.rfind("--", 0) != 0) {
      f.positional.push_back(a);
      continue;
    }
    const std::string k = a.substr(2);
    if (kBool.count(k)) {
      f.bools.insert(k);
    } else if (i + 1 < args.size()) {
      f.kv[k] = args[++i];
    } else {
      return InvalidArgumentError(a + " needs a value");
    }
  }
  return f;
}

StatusOr<int64_t> IntFlag(const Flags& f, const std::string& k, int64_t def) {
  const std::string v = f.Get(k);
  if (v.empty()) return def;
  try {
    size_t used = 0;
    int64_t x = std::stoll(v, &used);
    if (used == v.size()) return x;
  } catch (...) {
  }
  return InvalidArgumentError("--" + k + ": expected an integer, got '" + v + "'");
}

// The dataset to read: a catalog entry or a format + path.
StatusOr<ResolvedDataset> Source(const Flags& f) {
  ResolvedDataset r;
  if (!f.Get("dataset").empty()) {
    ASSIGN_OR_RETURN(Catalog c,
                     Catalog::Load(f.Get("catalog", "configs/datasets.yaml"), f.Get("data-root")));
    ASSIGN_OR_RETURN(r, c.Resolve(f.Get("dataset")));
  } else {
    if (f.Get("format").empty() || f.Get("input").empty()) {
      return InvalidArgumentError("need --format and --input (or --catalog and --dataset)");
    }
    r.name = f.Get("input");
    r.path = f.Get("input");
    r.read.format = f.Get("format");
  }
  if (f.Has("subset")) r.read.subset = f.Get("subset");
  if (f.Has("split")) r.read.split = f.Get("split");
  r.read.strict = f.Has("strict");
  if (f.Has("pairing")) r.read.adapter.pairing = f.Get("pairing");
  if (f.Has("prompt-field")) r.read.adapter.prompt_field = f.Get("prompt-field");
  if (f.Has("chosen-field")) r.read.adapter.chosen_field = f.Get("chosen-field");
  if (f.Has("rejected-field")) r.read.adapter.rejected_field = f.Get("rejected-field");
  ASSIGN_OR_RETURN(int64_t seed, IntFlag(f, "adapter-seed", 0));
  r.read.adapter.seed = static_cast<uint64_t>(seed);
  if (f.Has("val-fraction")) r.read.val_fraction = std::atof(f.Get("val-fraction").c_str());
  return r;
}

void PrintStats(const DatasetStats& s, const std::string& name) {
  std::printf("%s: %lld records -> %lld pairs\n", name.c_str(), (long long)s.records,
              (long long)s.pairs);
  for (const auto& [reason, n] : s.dropped) {
    std::printf("  dropped %-18s %lld\n", reason.c_str(), (long long)n);
  }
  for (const auto& e : s.errors) {
    std::printf("  error %s:%lld field '%s': %s\n", e.file.c_str(), (long long)e.line,
                e.field.c_str(), e.message.c_str());
  }
  if (s.error_count > static_cast<int64_t>(s.errors.size())) {
    std::printf("  ... %lld more errors\n", (long long)(s.error_count - s.errors.size()));
  }
}

Status Stats(const Flags& f) {
  ASSIGN_OR_RETURN(ResolvedDataset src, Source(f));
  DatasetStats s;
  RETURN_IF_ERROR(ReadDataset(
      src.path, src.read, [](PreferencePair&&) {}, &s));
  if (f.Has("json")) {
    std::printf("%s\n", s.ToJson().dump(-1, ' ', false, json::error_handler_t::replace).c_str());
  } else {
    PrintStats(s, src.name);
  }
  return Status::Ok();
}

Status Convert(const Flags& f) {
  ASSIGN_OR_RETURN(ResolvedDataset src, Source(f));
  if (f.Get("out").empty()) return InvalidArgumentError("convert needs --out FILE.jsonl");
  ASSIGN_OR_RETURN(auto out, AtomicFileWriter::Open(f.Get("out")));
  DatasetStats s;
  Status write_status;
  RETURN_IF_ERROR(ReadDataset(
      src.path, src.read,
      [&](PreferencePair&& p) {
        if (!write_status.ok()) return;
        const std::string line =
            PairToJson(p).dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
        write_status = out->Append(line.data(), line.size());
      },
      &s));
  RETURN_IF_ERROR(write_status);
  RETURN_IF_ERROR(out->Commit());
  std::fprintf(stderr, "wrote %lld pairs to %s\n", (long long)s.pairs, f.Get("out").c_str());
  if (f.Has("json")) {
    std::printf("%s\n", s.ToJson().dump().c_str());
  } else {
    PrintStats(s, src.name);
  }
  return Status::Ok();
}

Status Overlap(const Flags& f) {
  if (f.positional.size() != 2) return InvalidArgumentError("overlap needs two files: A B");
  std::map<std::string, std::string> first_id;  // canonical prompt -> an id in A
  std::set<std::string> in_a, shared;
  std::vector<std::string> examples;
  int64_t b_prompts = 0;
  for (int side = 0; side < 2; ++side) {
    ReadOptions ro;
    ro.format = f.Get(side == 0 ? "format-a" : "format-b", "pairs");
    DatasetStats s;
    std::set<std::string> seen_b;
    RETURN_IF_ERROR(ReadDataset(
        f.positional[side], ro,
        [&](PreferencePair&& p) {
          const std::string key = CanonicalPrompt(p.prompt);
          if (side == 0) {
            in_a.insert(key);
            return;
          }
          if (!seen_b.insert(key).second) return;
          ++b_prompts;
          if (in_a.count(key) && shared.insert(key).second && examples.size() < 5) {
            examples.push_back(p.prompt.empty() ? "" : p.prompt.back().content.substr(0, 120));
          }
        },
        &s));
  }
  json j = {{"a", f.positional[0]},
            {"b", f.positional[1]},
            {"a_prompts", in_a.size()},
            {"b_prompts", b_prompts},
            {"shared_prompts", shared.size()},
            {"examples", examples}};
  if (f.Has("json")) {
    std::printf("%s\n", j.dump(-1, ' ', false, json::error_handler_t::replace).c_str());
  } else {
    std::printf("%s: %zu prompts; %s: %lld prompts; shared: %zu\n", f.positional[0].c_str(),
                in_a.size(), f.positional[1].c_str(), (long long)b_prompts, shared.size());
    for (const auto& e : examples) std::printf("  shared: %s\n", e.c_str());
  }
  return Status::Ok();
}

Status TokenizeData(const Flags& f) {
  ASSIGN_OR_RETURN(ResolvedDataset src, Source(f));
  ASSIGN_OR_RETURN(auto tok, Tokenizer::Load(f.Get("tokenizer")));
  TokenizeOptions to;
  ASSIGN_OR_RETURN(to.chat_template, ParseChatTemplate(f.Get("template", "none")));
  ASSIGN_OR_RETURN(int64_t max_length, IntFlag(f, "max-length", 512));
  ASSIGN_OR_RETURN(int64_t max_prompt, IntFlag(f, "max-prompt-length", 128));
  ASSIGN_OR_RETURN(int64_t batch, IntFlag(f, "batch-size", 8));
  ASSIGN_OR_RETURN(int64_t seed, IntFlag(f, "seed", 0));
  if (max_length <= 0 || max_prompt <= 0 || max_prompt > max_length || batch <= 0) {
    return InvalidArgumentError(
        "need 0 < --max-prompt-length <= --max-length and "
        "--batch-size > 0");
  }
  to.max_length = static_cast<int>(max_length);
  to.max_prompt_length = static_cast<int>(max_prompt);
  const std::string too_long = f.Get("too-long", "truncate");
  if (too_long != "truncate" && too_long != "drop") {
    return InvalidArgumentError("--too-long: expected truncate or drop");
  }
  to.too_long =
      too_long == "drop" ? TokenizeOptions::TooLong::kDrop : TokenizeOptions::TooLong::kTruncate;
  DatasetStats s;
  TokenizeStats ts;
  std::vector<int64_t> lc, lr, longest;
  Status st;
  RETURN_IF_ERROR(ReadDataset(
      src.path, src.read,
      [&](PreferencePair&& p) {
        if (!st.ok()) return;
        auto t = TokenizePair(*tok, p, to, &ts);
        if (!t.ok()) {
          st = t.status().WithContext(p.id);
          return;
        }
        if (!t->has_value()) return;
        lc.push_back((*t)->chosen.size());
        lr.push_back((*t)->rejected.size());
        longest.push_back(std::max(lc.back(), lr.back()));
      },
      &s));
  RETURN_IF_ERROR(st);
  auto grouped = LengthGroupedBatches(longest, batch, seed);
  std::vector<std::vector<int64_t>> random_batches;
  auto perm = SeededPermutation(longest.size(), seed);
  for (size_t i = 0; i < perm.size(); i += batch) {
    random_batches.emplace_back(perm.begin() + i,
                                perm.begin() + std::min(perm.size(), i + size_t(batch)));
  }
  int64_t tokens = 0;
  for (size_t i = 0; i < lc.size(); ++i) tokens += lc[i] + lr[i];
  json j = {{"dataset", s.ToJson()},
            {"tokenize", ts.ToJson()},
            {"tokens", tokens},
            {"batches", grouped.size()},
            {"padding_fraction_length_grouped", PaddingFraction(grouped, {lc, lr})},
            {"padding_fraction_random", PaddingFraction(random_batches, {lc, lr})}};
  std::printf("%s\n", f.Has("json") ? j.dump().c_str() : j.dump(2).c_str());
  return Status::Ok();
}

// The paper-mini profile: the study's sources in miniature (synth.h).
Status SynthPaperMini(const Flags& f) {
  for (const char* k : {"train", "validation", "shifted", "lengths"}) {
    if (f.Has(k)) {
      return InvalidArgumentError(std::string("--") + k +
                                  " is for the shift profile; paper-mini takes --rows and "
                                  "--test-rows");
    }
  }
  PaperMiniOptions o;
  ASSIGN_OR_RETURN(int64_t seed, IntFlag(f, "seed", 0));
  o.seed = static_cast<uint64_t>(seed);
  ASSIGN_OR_RETURN(o.rows, IntFlag(f, "rows", o.rows));
  ASSIGN_OR_RETURN(o.test_rows, IntFlag(f, "test-rows", o.test_rows));
  if (o.rows < 20 || o.test_rows < 0 || (f.Has("test-rows") && o.test_rows < 5)) {
    return InvalidArgumentError("--rows must be at least 20 and --test-rows at least 5");
  }
  RETURN_IF_ERROR(WritePaperMiniSuite(f.Get("out"), o));
  const PaperMiniCounts c = PaperMiniCountsFor(o);
  std::printf(
      "wrote the paper-mini suite to %s (seed %llu, %lld training pairs per training source, "
      "%lld per test split; catalog %s/datasets.yaml)\n",
      f.Get("out").c_str(), (unsigned long long)o.seed, (long long)c.rows, (long long)c.test,
      f.Get("out").c_str());
  return Status::Ok();
}

Status Synth(const Flags& f) {
  if (f.Get("out").empty()) return InvalidArgumentError("synth needs --out DIR");
  const std::string profile = f.Get("profile", "shift");
  if (profile == "paper-mini") return SynthPaperMini(f);
  if (profile != "shift") {
    return InvalidArgumentError("--profile: expected shift or paper-mini, got '" + profile + "'");
  }
  if (f.Has("rows") || f.Has("test-rows")) {
    return InvalidArgumentError("--rows and --test-rows are for --profile paper-mini");
  }
  SynthOptions o;
  ASSIGN_OR_RETURN(int64_t seed, IntFlag(f, "seed", 0));
  o.seed = static_cast<uint64_t>(seed);
  ASSIGN_OR_RETURN(o.train, IntFlag(f, "train", o.train));
  ASSIGN_OR_RETURN(o.validation, IntFlag(f, "validation", o.validation));
  ASSIGN_OR_RETURN(o.shifted, IntFlag(f, "shifted", o.shifted));
  if (o.train <= 0 || o.validation <= 0 || o.shifted <= 0) {
    return InvalidArgumentError("--train, --validation and --shifted must be positive");
  }
  const std::string lengths = f.Get("lengths", "short");
  ASSIGN_OR_RETURN(o.lengths, ParseSynthLengths(lengths));
  RETURN_IF_ERROR(WriteSyntheticSuite(f.Get("out"), o));
  std::printf("wrote the synthetic shift suite to %s (seed %llu, %s lengths)\n",
              f.Get("out").c_str(), (unsigned long long)o.seed, lengths.c_str());
  return Status::Ok();
}

}  // namespace

int DataCommand(const std::vector<std::string>& args) {
  if (args.empty() || args[0] == "-h" || args[0] == "--help") {
    std::fputs(kUsage, args.empty() ? stderr : stdout);
    return args.empty() ? 2 : 0;
  }
  const std::string sub = args[0];
  auto flags = ParseFlags(std::vector<std::string>(args.begin() + 1, args.end()));
  if (!flags.ok()) {
    std::fprintf(stderr, "rmgen data %s: %s\n%s", sub.c_str(), flags.status().message().c_str(),
                 kUsage);
    return 2;
  }
  Status st;
  if (sub == "stats") {
    st = Stats(*flags);
  } else if (sub == "convert") {
    st = Convert(*flags);
  } else if (sub == "overlap") {
    st = Overlap(*flags);
  } else if (sub == "tokenize") {
    st = TokenizeData(*flags);
  } else if (sub == "synth") {
    st = Synth(*flags);
  } else {
    std::fprintf(stderr, "rmgen data: unknown subcommand '%s'\n%s", sub.c_str(), kUsage);
    return 2;
  }
  if (!st.ok()) {
    std::fprintf(stderr, "rmgen data %s: %s\n", sub.c_str(), st.message().c_str());
    return 1;
  }
  return 0;
}

}  // namespace rmgen::cli
