#include "worker/train/generation_jobs.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "common/file.h"
#include "jobspec/run_dir.h"
#include "worker/data/dataset.h"
#include "worker/data/pair.h"
#include "worker/data/synth.h"
#include "worker/data/tokenize.h"
#include "worker/model/checkpoint.h"
#include "worker/model/generate.h"
#include "worker/train/data_parallel.h"
#include "worker/train/evaluate.h"
#include "worker/train/job_inputs.h"

namespace rmgen {

namespace fs = std::filesystem;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

// FNV-1a, 64 bits.
uint64_t Fnv(const std::string& s, uint64_t h = 1469598103934665603ull) {
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

json MessagesJson(const std::vector<Message>& ms) {
  json a = json::array();
  for (const auto& m : ms) a.push_back({{"role", m.role}, {"content", m.content}});
  return a;
}

// Calls `fn(record, "PATH:LINE", line)` for every non-blank line of a JSONL file, which must
// be a JSON object; `field` names the spec field in the error for an unreadable file.
Status ForEachJsonLine(const std::string& path, const std::string& field,
                       const std::function<Status(const json&, const std::string&, int64_t)>& fn) {
  std::ifstream in(path);
  if (!in) return NotFoundError(field + ": " + path + " cannot be read");
  std::string line;
  for (int64_t n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = path + ":" + std::to_string(n);
    json rec = json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!rec.is_object()) return InvalidArgumentError(where + ": not a JSON object");
    RETURN_IF_ERROR(fn(rec, where, n));
  }
  return Status::Ok();
}

// The {role, content} messages of a list at `field` of a record.
Status ParseMessages(const json& list, const std::string& where, const std::string& field,
                     std::vector<Message>* out) {
  for (size_t i = 0; i < list.size(); ++i) {
    const json& m = list[i];
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string() || !m.contains("content") ||
        !m["content"].is_string()) {
      return InvalidArgumentError(where + ": field '" + field + "[" + std::to_string(i) +
                                  "]': expected {\"role\": TEXT, \"content\": TEXT}");
    }
    out->push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
  }
  return Status::Ok();
}

// A `prompts` JSONL file: {"prompt": TEXT | [{role, content}, ...], "id"?: TEXT} a line.
StatusOr<std::vector<PromptRecord>> ReadPromptsFile(const std::string& path) {
  std::vector<PromptRecord> out;
  auto one = [&](const json& rec, const std::string& where, int64_t n) -> Status {
    PromptRecord p;
    p.id = rec.contains("id") && rec["id"].is_string()
               ? rec["id"].get<std::string>()
               : fs::path(path).filename().string() + ":" + std::to_string(n);
    const json pr = rec.contains("prompt") ? rec["prompt"] : json();
    if (pr.is_string()) {
      p.prompt = {{"user", pr.get<std::string>()}};
    } else if (pr.is_array()) {
      RETURN_IF_ERROR(ParseMessages(pr, where, "prompt", &p.prompt));
    } else {
      return InvalidArgumentError(
          where + ": field 'prompt': " +
          (pr.is_null() ? std::string("missing") : "expected a string or a list of messages"));
    }
    if (p.prompt.empty() || std::all_of(p.prompt.begin(), p.prompt.end(), [](const Message& m) {
          return m.content.find_first_not_of(" \t\r\n") == std::string::npos;
        })) {
      return InvalidArgumentError(where + ": field 'prompt': empty");
    }
    out.push_back(std::move(p));
    return Status::Ok();
  };
  RETURN_IF_ERROR(ForEachJsonLine(path, "data.prompts", one));
  return out;
}

std::string TokenizerPath(const JobSpec& spec, const std::string& model_path) {
  if (!spec.tokenizer.empty()) return spec.tokenizer;
  return model_path.empty() ? std::string() : (fs::path(model_path) / "tokenizer.model").string();
}

StatusOr<std::unique_ptr<Tokenizer>> LoadJobTokenizer(const JobSpec& spec,
                                                      const std::string& model_path) {
  const std::string path = TokenizerPath(spec, model_path);
  if (path.empty() || !FileExists(path)) {
    return NotFoundError(
        "tokenizer: " + (path.empty() ? std::string("none given") : path + " not found") +
        ". HINT: the model folder has no tokenizer.model; set `tokenizer:` in "
        "the spec");
  }
  return Tokenizer::Load(path);
}

// A generator's name: the job folder of a study checkpoint (OUT/JOB/checkpoint -> JOB), else
// the folder's name; a random init is "init:SEED".
std::string GeneratorName(const JobSpec& spec) {
  if (spec.model_path.empty()) return "init:" + std::to_string(spec.init_seed);
  fs::path p = fs::path(spec.model_path).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  if (p.filename() == run_dir::kCheckpoint && p.has_parent_path()) p = p.parent_path();
  return p.filename().string();
}

// Rows finished by earlier attempts: every line of every file under OUT/parts that parses
// and whose `prompt_index` and `id` `accept` takes; a torn last line (a killed writer) is
// skipped. The last good row of an index wins.
std::map<int64_t, json> ReadParts(const std::string& out,
                                  const std::function<bool(const json&)>& accept) {
  std::map<int64_t, json> rows;
  std::error_code ec;
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(run_dir::Join(out, run_dir::kParts), ec)) {
    if (e.path().extension() == ".jsonl") files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  for (const auto& f : files) {
    std::ifstream in(f);
    std::string line;
    while (std::getline(in, line)) {
      json row = json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (!row.is_object() || !row.contains("prompt_index") ||
          !row["prompt_index"].is_number_integer()) {
        continue;
      }
      bool ok = false;
      try {
        ok = accept(row);
      } catch (const json::exception&) {  // a field of another type: not a row of this job
      }
      if (!ok) continue;
      const int64_t index = row["prompt_index"].get<int64_t>();
      rows[index] = std::move(row);
    }
  }
  return rows;
}

// This rank's file under OUT/parts for this attempt; rows are flushed as they are added.
class PartWriter {
 public:
  static StatusOr<PartWriter> Open(const std::string& out, int rank) {
    const std::string dir = run_dir::Join(out, run_dir::kParts);
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) return InternalError(dir + ": cannot create (" + ec.message() + ")");
    const auto now = std::chrono::system_clock::now().time_since_epoch();
    const std::string path =
        dir + "/part-" +
        std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(now).count()) + "-" +
        std::to_string(getpid()) + "-rank-" + std::to_string(rank) + ".jsonl";
    PartWriter w;
    w.path_ = path;
    return w;
  }
  Status Append(const std::vector<json>& rows) {
    if (rows.empty()) return Status::Ok();
    std::ofstream f(path_, std::ios::app);
    for (const auto& r : rows) f << r.dump(-1, ' ', false, json::error_handler_t::replace) << "\n";
    f.flush();
    if (!f) return InternalError(path_ + ": write failed");
    return Status::Ok();
  }

 private:
  std::string path_;
};

// Rank 0: the rows 0..n-1 (all must be there) as OUT/NAME, one a line, atomically.
Status MergeRows(const std::string& path, const std::map<int64_t, json>& rows, int64_t n,
                 const std::function<bool(int64_t)>& expected) {
  std::string text;
  for (int64_t i = 0; i < n; ++i) {
    auto it = rows.find(i);
    if (it == rows.end()) {
      if (!expected(i)) continue;
      return InternalError(path + ": prompt " + std::to_string(i) +
                           " has no row after every rank finished");
    }
    text += it->second.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
  }
  return WriteFileAtomic(path, text);
}

// Sums `values` over the ranks, in a tensor on `device` (NCCL takes device buffers only).
Status AllSum(Communicator* comm, std::vector<double>* values, torch::Device device) {
  if (comm->size() == 1) return Status::Ok();
  auto t = torch::tensor(*values, torch::kFloat64).to(device);
  RETURN_IF_ERROR(comm->AllReduce(TensorBuffer(t), ReduceOp::kSum)->Wait());
  auto host = t.cpu();
  for (size_t i = 0; i < values->size(); ++i) (*values)[i] = host[i].item<double>();
  return Status::Ok();
}

StatusOr<ModelConfig> ConfigOf(const JobSpec& spec) {
  if (!spec.model_path.empty()) return LoadModelConfig(spec.model_path);
  ASSIGN_OR_RETURN(std::string text, ReadFile(spec.model_config));
  return ParseModelConfig(text, spec.model_config);
}

}  // namespace

uint64_t PromptKey(const PromptRecord& p) { return Fnv(CanonicalPrompt(p.prompt), Fnv(p.id)); }

StatusOr<std::vector<PromptRecord>> LoadPrompts(const JobSpec& spec) {
  const DatasetRef& ref = spec.prompts_set;
  std::vector<PromptRecord> all;
  std::string source = ref.name;
  if (ref.format == "prompts") {
    ASSIGN_OR_RETURN(all, ReadPromptsFile(ref.path));
  } else {
    ASSIGN_OR_RETURN(ResolvedDataset r, ResolveRef(spec, ref));
    if (ref.holdout > 0) {
      r.read.holdout = ref.holdout;
      r.read.holdout_only = true;
    }
    source = r.path;
    std::set<std::string> seen;
    DatasetStats stats;
    RETURN_IF_ERROR(ReadDataset(
        r.path, r.read,
        [&](PreferencePair&& p) {
          if (!seen.insert(CanonicalPrompt(p.prompt)).second) return;
          all.push_back({p.id, std::move(p.prompt)});
        },
        &stats));
  }
  std::vector<PromptRecord> out;
  for (auto& p : all) {
    if (spec.slice_count > 1) {
      const int64_t slice = std::min<int64_t>(
          spec.slice_count - 1, static_cast<int64_t>(PromptHashUnit(p.prompt, "prompt-slice") *
                                                     static_cast<double>(spec.slice_count)));
      if (slice != spec.slice_index) continue;
    }
    out.push_back(std::move(p));
    if (spec.limit > 0 && static_cast<int64_t>(out.size()) >= spec.limit) break;
  }
  if (out.empty()) {
    return InvalidArgumentError("data.prompts: no prompts in '" + ref.name + "' (" + source + ")" +
                                (spec.slice_count > 1
                                     ? " in slice " + std::to_string(spec.slice_index + 1) +
                                           " of " + std::to_string(spec.slice_count)
                                     : std::string()));
  }
  return out;
}

Status RunGenerate(const JobSpec& spec, const std::string& out, Communicator* comm,
                   std::string* phase, int64_t stop_after_batches) {
  *phase = "setup";
  ASSIGN_OR_RETURN(std::vector<PromptRecord> prompts, LoadPrompts(spec));
  ASSIGN_OR_RETURN(auto tok, LoadJobTokenizer(spec, spec.model_path));
  ASSIGN_OR_RETURN(ChatTemplate tmpl, ParseChatTemplate(spec.chat_template));
  ASSIGN_OR_RETURN(ModelConfig config, ConfigOf(spec));
  // Prompt tokens as training sees a prompt: the template with the generation prompt, one
  // BOS; a prompt over data.max_prompt_length keeps its end (TRL's truncation) or, with
  // data.too_long drop, is left out (counted).
  std::vector<std::vector<int64_t>> ids(prompts.size());
  std::vector<bool> kept(prompts.size(), true);
  int64_t truncated = 0, dropped_too_long = 0;
  std::map<std::string, int64_t> dropped_template;
  for (size_t i = 0; i < prompts.size(); ++i) {
    auto enc = EncodeChat(*tok, tmpl, prompts[i].prompt, true);
    if (!enc.ok()) {
      ++dropped_template[enc.status().message()];
      kept[i] = false;
      continue;
    }
    std::vector<int64_t> v(enc->begin(), enc->end());
    if (tok->bos_id() >= 0 && (v.empty() || v.front() != tok->bos_id())) {
      v.insert(v.begin(), tok->bos_id());
    }
    if (static_cast<int64_t>(v.size()) > spec.max_prompt_length) {
      if (spec.drop_too_long) {
        ++dropped_too_long;
        kept[i] = false;
        continue;
      }
      v.erase(v.begin(), v.end() - spec.max_prompt_length);
      ++truncated;
    }
    if (static_cast<int64_t>(v.size()) >= config.max_position_embeddings) {
      return InvalidArgumentError("data.prompts: record '" + prompts[i].id + "' (prompt " +
                                  std::to_string(i) + ") has " + std::to_string(v.size()) +
                                  " tokens: no room for a response within the model's context (" +
                                  std::to_string(config.max_position_embeddings) +
                                  " positions); lower data.max_prompt_length");
    }
    ids[i] = std::move(v);
  }
  if (std::none_of(kept.begin(), kept.end(), [](bool k) { return k; })) {
    return InvalidArgumentError(
        "data.prompts: every prompt was dropped (too long or not "
        "renderable with template '" +
        spec.chat_template + "')");
  }
  SamplingOptions so;
  so.greedy = spec.greedy;
  so.temperature = spec.temperature;
  so.top_p = spec.top_p;
  so.top_k = spec.top_k;
  so.max_new_tokens = spec.max_new_tokens;
  so.seed = spec.generate_seed;
  so.batch_size = spec.generate_batch_size;
  if (tok->eos_id() >= 0) so.stop_ids.push_back(tok->eos_id());
  if (tmpl == ChatTemplate::kGemma) {
    if (auto eot = tok->PieceToId("<end_of_turn>")) so.stop_ids.push_back(*eot);
  }
  RETURN_IF_ERROR(ValidateGeneration(config, {}, so));

  *phase = "load";
  ASSIGN_OR_RETURN(auto model, BuildModel(spec, spec.model_path, HeadKind::kLanguageModel));
  const std::string generator = GeneratorName(spec);
  const int64_t K = spec.samples;
  // A row is reused only from the same generation: sampling settings, policy, template and
  // prompt truncation (a changed spec regenerates).
  const std::string key = HexHash(spec.resolved.value("generate", json()).dump() + "|" +
                                  ModelIdentity(spec, spec.model_path) + "|" + spec.chat_template +
                                  "|" + std::to_string(spec.max_prompt_length) + "|" +
                                  (spec.drop_too_long ? "drop" : "truncate"));
  auto accept = [&](const json& row) {
    const int64_t i = row["prompt_index"].get<int64_t>();
    return i >= 0 && i < static_cast<int64_t>(prompts.size()) && kept[i] &&
           row.value("id", "") == prompts[i].id && row.value("key", "") == key &&
           row.value("prompt_key", uint64_t{0}) == PromptKey(prompts[i]) &&
           row.contains("responses") && row["responses"].is_array() &&
           static_cast<int64_t>(row["responses"].size()) == K;
  };
  auto done = ReadParts(out, accept);
  // Every rank has read the parts before any writes more.
  RETURN_IF_ERROR(comm->Barrier()->Wait());
  std::vector<int64_t> pending;
  for (size_t i = 0; i < prompts.size(); ++i) {
    if (kept[i] && !done.count(static_cast<int64_t>(i))) pending.push_back(static_cast<int64_t>(i));
  }
  const int w = comm->size(), r = comm->rank();
  std::vector<int64_t> mine;
  for (size_t i = r; i < pending.size(); i += w) mine.push_back(pending[i]);
  const int64_t per_group = std::max<int64_t>(1, spec.generate_batch_size / K);
  const int64_t most = (static_cast<int64_t>(pending.size()) + w - 1) / w;
  const int64_t rounds = (most + per_group - 1) / per_group;
  ASSIGN_OR_RETURN(PartWriter writer, PartWriter::Open(out, r));

  *phase = "eval";
  const auto t0 = Clock::now();
  double new_tokens = 0, responses = 0, stopped = 0;
  for (int64_t round = 0; round < rounds; ++round) {
    const size_t b = round * per_group;
    const size_t e = std::min(mine.size(), b + per_group);
    std::vector<GenerationRequest> reqs;
    for (size_t j = b; j < e; ++j) {
      const int64_t i = mine[j];
      for (int64_t k = 0; k < K; ++k) reqs.push_back({ids[i], PromptKey(prompts[i]), k});
    }
    ASSIGN_OR_RETURN(std::vector<Generation> gens, Generate(*model, reqs, so));
    std::vector<json> rows;
    for (size_t j = b; j < e; ++j) {
      const int64_t i = mine[j];
      json resp = json::array();
      for (int64_t k = 0; k < K; ++k) {
        const Generation& g = gens[(j - b) * K + k];
        std::vector<int> text_ids(g.tokens.begin(), g.tokens.end());
        if (g.finish == FinishReason::kStop && !text_ids.empty()) text_ids.pop_back();
        resp.push_back({{"text", tok->Decode(text_ids)},
                        {"finish_reason", FinishReasonName(g.finish)},
                        {"tokens", g.tokens.size()}});
        new_tokens += g.tokens.size();
        responses += 1;
        stopped += g.finish == FinishReason::kStop;
      }
      rows.push_back({{"prompt_index", i},
                      {"id", prompts[i].id},
                      {"prompt", MessagesJson(prompts[i].prompt)},
                      {"responses", std::move(resp)},
                      {"prompt_tokens", ids[i].size()},
                      {"generator", generator},
                      {"seed", spec.generate_seed},
                      {"key", key},
                      {"prompt_key", PromptKey(prompts[i])}});
    }
    RETURN_IF_ERROR(writer.Append(rows));
    if (stop_after_batches > 0 && round + 1 == stop_after_batches && round + 1 < rounds) {
      return Status(StatusCode::kCancelled, "stopped after " + std::to_string(round + 1) +
                                                " batches; a resume skips their prompts");
    }
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  std::vector<double> totals = {new_tokens, responses, stopped, seconds};
  RETURN_IF_ERROR(AllSum(comm, &totals, DeviceOf(*model)));
  RETURN_IF_ERROR(comm->Barrier()->Wait());

  *phase = "finish";
  if (r != 0) return Status::Ok();
  auto rows = ReadParts(out, accept);
  json alpaca = json::array();  // AlpacaEval's input format
  for (const auto& [i, row] : rows) {
    const auto& msgs = prompts[i].prompt;
    alpaca.push_back({{"instruction", msgs.size() == 1 ? msgs[0].content : CanonicalPrompt(msgs)},
                      {"output", row["responses"][0]["text"]},
                      {"generator", generator},
                      {"dataset", spec.prompts_set.name}});
  }
  RETURN_IF_ERROR(
      WriteFileAtomic(run_dir::Join(out, run_dir::kAlpacaEval),
                      alpaca.dump(1, ' ', false, json::error_handler_t::replace) + "\n"));
  RETURN_IF_ERROR(MergeRows(run_dir::Join(out, run_dir::kGenerations), rows,
                            static_cast<int64_t>(prompts.size()),
                            [&](int64_t i) { return static_cast<bool>(kept[i]); }));
  const double wall = totals[3] / w;  // mean rank time
  json metrics = {{"kind", "generate"},
                  {"ranks", w},
                  {"generator", generator},
                  {"generate",
                   {{"prompts", std::count(kept.begin(), kept.end(), true)},
                    {"samples", K},
                    {"resumed_prompts", done.size()},
                    {"generated_prompts", pending.size()},
                    {"responses", totals[1]},
                    {"new_tokens", totals[0]},
                    {"finish", {{"stop", totals[2]}, {"length", totals[1] - totals[2]}}},
                    {"prompt_truncated", truncated},
                    {"dropped_too_long", dropped_too_long},
                    {"dropped_template", dropped_template},
                    {"seconds", wall},
                    {"tokens_per_s", wall > 0 ? totals[0] / wall : 0.0}}}};
  return WriteFileAtomic(run_dir::Join(out, run_dir::kMetrics), metrics.dump(2) + "\n");
}

namespace {

struct GenerationsRow {
  int64_t prompt_index = 0;
  std::string id;
  std::vector<Message> prompt;
  std::vector<std::string> responses;
  std::string generator;
};

// `min_responses`: fewer in a row is an error naming it (annotation needs 2).
StatusOr<std::vector<GenerationsRow>> ReadGenerations(const std::string& path,
                                                      size_t min_responses) {
  std::vector<GenerationsRow> out;
  auto one = [&](const json& row, const std::string& where, int64_t) -> Status {
    GenerationsRow g;
    if (!row.contains("prompt_index") || !row["prompt_index"].is_number_integer()) {
      return InvalidArgumentError(where + ": field 'prompt_index': missing or not an integer");
    }
    g.prompt_index = row["prompt_index"].get<int64_t>();
    for (const char* field : {"id", "generator"}) {
      if (row.contains(field) && !row[field].is_string()) {
        return InvalidArgumentError(where + ": field '" + field + "': expected a string");
      }
    }
    g.id = row.value("id", std::to_string(g.prompt_index));
    g.generator = row.value("generator", "");
    if (!row.contains("prompt") || !row["prompt"].is_array() || row["prompt"].empty()) {
      return InvalidArgumentError(where + ": field 'prompt': expected a list of messages");
    }
    RETURN_IF_ERROR(ParseMessages(row["prompt"], where, "prompt", &g.prompt));
    if (!row.contains("responses") || !row["responses"].is_array()) {
      return InvalidArgumentError(where + ": field 'responses': missing or not a list");
    }
    for (const auto& resp : row["responses"]) {
      if (!resp.is_object() || !resp.contains("text") || !resp["text"].is_string()) {
        return InvalidArgumentError(where + ": field 'responses': expected {\"text\": ...} items");
      }
      g.responses.push_back(resp["text"].get<std::string>());
    }
    if (g.responses.size() < min_responses) {
      return InvalidArgumentError(
          where + ": field 'responses': " + std::to_string(g.responses.size()) + " response(s); " +
          (min_responses >= 2 ? std::string("annotation picks a best and a worst of at least 2 "
                                            "(generate.samples)")
                              : std::string("expected at least one")));
    }
    out.push_back(std::move(g));
    return Status::Ok();
  };
  RETURN_IF_ERROR(ForEachJsonLine(path, "data.generations", one));
  if (out.empty()) return InvalidArgumentError("data.generations: " + path + ": no rows");
  return out;
}

}  // namespace

Status RunAnnotate(const JobSpec& spec, const std::string& out, Communicator* comm,
                   std::string* phase, int64_t stop_after_batches) {
  *phase = "setup";
  ASSIGN_OR_RETURN(std::vector<GenerationsRow> rows, ReadGenerations(spec.generations, 2));
  const bool dporm = spec.annotate_reward == "dporm";
  ASSIGN_OR_RETURN(auto tok, LoadJobTokenizer(spec, spec.model_path));
  TokenizeOptions to;
  ASSIGN_OR_RETURN(to.chat_template, ParseChatTemplate(spec.chat_template));
  to.max_length = spec.max_length;
  to.max_prompt_length = spec.max_prompt_length;
  // Each response is scored as a side of a pair: responses (0, 1), (2, 3), ... of a row share
  // one tokenized pair (an odd last one is paired with itself).
  struct Slot {
    size_t row;
    int64_t a, b;
  };
  std::vector<TokenizedPair> pairs;
  std::vector<Slot> slots;
  TokenizeStats ts;
  std::vector<bool> renderable(rows.size(), true);
  for (size_t i = 0; i < rows.size(); ++i) {
    const auto& g = rows[i];
    const int64_t K = g.responses.size();
    std::vector<TokenizedPair> mine;
    for (int64_t a = 0; a < K; a += 2) {
      const int64_t b = std::min(a + 1, K - 1);
      PreferencePair p;
      p.prompt = g.prompt;
      p.chosen = {{"assistant", g.responses[a]}};
      p.rejected = {{"assistant", g.responses[b]}};
      ASSIGN_OR_RETURN(auto t, TokenizePair(*tok, p, to, &ts));
      if (!t.has_value()) break;
      mine.push_back(std::move(*t));
    }
    if (static_cast<int64_t>(mine.size()) != (K + 1) / 2) {
      renderable[i] = false;
      continue;
    }
    for (int64_t a = 0, j = 0; a < K; a += 2, ++j) {
      pairs.push_back(std::move(mine[j]));
      slots.push_back({i, a, std::min(a + 1, K - 1)});
    }
  }
  if (pairs.empty()) {
    return InvalidArgumentError("data.generations: no row can be scored (template '" +
                                spec.chat_template + "': " + ts.ToJson().dump() + ")");
  }
  const int64_t pad_id = tok->pad_id() >= 0 ? tok->pad_id() : tok->eos_id();
  const PairLayout layout = spec.shared_prefix ? PairLayout::kAuto : PairLayout::kSeparate;
  // Rows scored by an earlier attempt of the same annotation (annotator, models, input).
  const std::string key = HexHash(
      spec.resolved.value("annotate", json()).dump() + "|" + ModelIdentity(spec, spec.model_path) +
      "|" + (dporm ? ModelIdentity(spec, spec.reference) : std::string()) + "|" +
      FileIdentity(spec.generations) + "|" + spec.chat_template + "|" +
      std::to_string(spec.max_length) + "|" + std::to_string(spec.max_prompt_length));
  auto accept = [&](const json& row) {
    const int64_t i = row["prompt_index"].get<int64_t>();
    return i >= 0 && i < static_cast<int64_t>(rows.size()) && row.value("key", "") == key &&
           row.contains("scores") && row["scores"].is_array() &&
           row["scores"].size() == rows[i].responses.size();
  };
  const auto done = ReadParts(out, accept);
  RETURN_IF_ERROR(comm->Barrier()->Wait());
  // The slots of each row still to score, in chunks every rank walks alike.
  std::vector<std::vector<size_t>> row_slots(rows.size());
  for (size_t k = 0; k < slots.size(); ++k) row_slots[slots[k].row].push_back(k);
  std::vector<size_t> pending;
  for (size_t i = 0; i < rows.size(); ++i) {
    if (renderable[i] && !done.count(static_cast<int64_t>(i))) pending.push_back(i);
  }
  constexpr size_t kRowsAChunk = 64;
  ASSIGN_OR_RETURN(PartWriter writer, PartWriter::Open(out, comm->rank()));

  *phase = "load";
  const auto t0 = Clock::now();
  std::unique_ptr<DecoderLM> ref;
  if (dporm && !pending.empty()) {
    ASSIGN_OR_RETURN(ref, BuildModel(spec, spec.reference, HeadKind::kLanguageModel));
  }
  std::unique_ptr<DecoderLM> model;
  if (!pending.empty()) {
    ASSIGN_OR_RETURN(model, BuildModel(spec, spec.model_path,
                                       dporm ? HeadKind::kLanguageModel : HeadKind::kReward));
  }
  *phase = "eval";
  EvalOptions eo;
  eo.reward = spec.annotate_reward;
  eo.beta = spec.beta;
  eo.batch_size = spec.eval_batch_size;
  eo.pad_id = pad_id;
  eo.layout = layout;
  int64_t chunks = 0, scored_pairs = 0;
  for (size_t c = 0; c < pending.size(); c += kRowsAChunk) {
    std::vector<TokenizedPair> chunk;
    std::vector<size_t> chunk_slots;
    for (size_t r = c; r < std::min(pending.size(), c + kRowsAChunk); ++r) {
      for (size_t k : row_slots[pending[r]]) {
        chunk.push_back(pairs[k]);
        chunk_slots.push_back(k);
      }
    }
    const int64_t n = static_cast<int64_t>(chunk.size());
    scored_pairs += n;
    torch::Tensor ref_c, ref_r;
    if (dporm) {
      const auto [b, e] = ShardRange(n, comm->rank(), comm->size());
      auto local = RangeLogProbs(*ref, chunk, b, e, spec.eval_batch_size, pad_id, layout);
      ASSIGN_OR_RETURN(torch::Tensor all, GatherRows(comm, local, n, DeviceOf(*ref)));
      ref_c = all.select(1, 0).contiguous();
      ref_r = all.select(1, 1).contiguous();
    }
    ASSIGN_OR_RETURN(torch::Tensor rewards, PairRewards(comm, *model, chunk, ref_c, ref_r, eo));
    // Every rank holds every reward: all refuse a non-finite one alike.
    auto finite = torch::isfinite(rewards);
    if (!finite.all().item<bool>()) {
      const int64_t bad = (finite.logical_not().nonzero()[0][0]).item<int64_t>();
      const Slot& sl = slots[chunk_slots[bad]];
      return InvalidArgumentError("data.generations: " + spec.generations + ", row " +
                                  std::to_string(sl.row + 1) + " ('" + rows[sl.row].id +
                                  "'): a non-finite " + spec.annotate_reward +
                                  " score (the model at " + spec.model_path + " gives NaN or inf)");
    }
    if (comm->rank() == 0) {
      std::map<size_t, std::vector<double>> scored;
      auto acc = rewards.accessor<float, 2>();
      for (size_t k = 0; k < chunk_slots.size(); ++k) {
        const Slot& sl = slots[chunk_slots[k]];
        auto& v = scored[sl.row];
        v.resize(rows[sl.row].responses.size(), 0.0);
        v[sl.a] = acc[k][0];
        v[sl.b] = acc[k][1];
      }
      std::vector<json> out_rows;
      for (const auto& [i, v] : scored) {
        out_rows.push_back({{"prompt_index", i}, {"scores", v}, {"key", key}});
      }
      RETURN_IF_ERROR(writer.Append(out_rows));
    }
    if (stop_after_batches > 0 && ++chunks == stop_after_batches &&
        c + kRowsAChunk < pending.size()) {
      return Status(StatusCode::kCancelled, "stopped after " + std::to_string(chunks) +
                                                " chunks; a resume skips their prompts");
    }
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  RETURN_IF_ERROR(comm->Barrier()->Wait());

  *phase = "finish";
  if (comm->rank() != 0) return Status::Ok();
  const auto scored = ReadParts(out, accept);
  std::vector<std::vector<double>> scores(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    if (!renderable[i]) continue;
    auto it = scored.find(static_cast<int64_t>(i));
    if (it == scored.end()) {
      return InternalError("annotate: row " + std::to_string(i) + " has no scores at the end");
    }
    scores[i] = it->second["scores"].get<std::vector<double>>();
  }
  std::string text;
  int64_t written = 0, ties = 0, unscored = 0;
  double margin_sum = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    if (!renderable[i]) {
      ++unscored;
      continue;
    }
    const auto& sc = scores[i];
    const size_t best = std::max_element(sc.begin(), sc.end()) - sc.begin();
    const size_t worst = std::min_element(sc.begin(), sc.end()) - sc.begin();
    if (sc[best] == sc[worst]) {
      ++ties;
      continue;
    }
    PreferencePair p;
    p.prompt = rows[i].prompt;
    p.chosen = {{"assistant", rows[i].responses[best]}};
    p.rejected = {{"assistant", rows[i].responses[worst]}};
    p.source = "annotate";
    p.id = rows[i].id;
    p.score_chosen = sc[best];
    p.score_rejected = sc[worst];
    json j = PairToJson(p);
    j["scores"] = sc;
    j["prompt_index"] = rows[i].prompt_index;
    j["generator"] = rows[i].generator;
    j["annotator"] = spec.annotate_reward;
    text += j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
    ++written;
    margin_sum += sc[best] - sc[worst];
  }
  RETURN_IF_ERROR(WriteFileAtomic(run_dir::Join(out, run_dir::kAnnotatedPairs), text));
  json metrics = {{"kind", "annotate"},
                  {"ranks", comm->size()},
                  {"annotate",
                   {{"reward", spec.annotate_reward},
                    {"prompts", rows.size()},
                    {"pairs", written},
                    {"dropped_tie", ties},
                    {"dropped_template", unscored},
                    {"responses_scored", 2 * pairs.size()},
                    {"resumed_prompts", done.size()},
                    {"mean_margin", written > 0 ? margin_sum / written : 0.0},
                    {"truncated", ts.ToJson()},
                    {"seconds", seconds},
                    {"responses_per_s", seconds > 0 ? 2.0 * scored_pairs / seconds : 0.0}}}};
  return WriteFileAtomic(run_dir::Join(out, run_dir::kMetrics), metrics.dump(2) + "\n");
}

Status RunJudge(const JobSpec& spec, const std::string& out, Communicator* comm,
                std::string* phase) {
  *phase = "setup";
  ASSIGN_OR_RETURN(std::vector<GenerationsRow> policy, ReadGenerations(spec.generations, 1));
  ASSIGN_OR_RETURN(std::vector<GenerationsRow> base, ReadGenerations(spec.judge_baseline, 1));
  std::map<std::string, const GenerationsRow*> by_id;
  for (const auto& g : base) by_id[g.id] = &g;
  std::vector<std::pair<const GenerationsRow*, const GenerationsRow*>> matched;
  for (const auto& g : policy) {
    auto it = by_id.find(g.id);
    if (it != by_id.end()) matched.emplace_back(&g, it->second);
  }
  if (matched.empty()) {
    return InvalidArgumentError("judge.baseline: " + spec.judge_baseline +
                                " shares no prompt id with data.generations " + spec.generations);
  }
  const size_t matched_prompts = matched.size();
  std::vector<std::pair<double, double>> scores;  // (policy, baseline)
  if (spec.judge_reward == "oracle") {
    for (const auto& [p, b] : matched) {
      const std::string prompt = CanonicalPrompt(p->prompt);
      scores.emplace_back(SynthOracleScore(prompt, p->responses[0]),
                          SynthOracleScore(prompt, b->responses[0]));
    }
  } else {
    ASSIGN_OR_RETURN(auto tok, LoadJobTokenizer(spec, spec.model_path));
    TokenizeOptions to;
    ASSIGN_OR_RETURN(to.chat_template, ParseChatTemplate(spec.chat_template));
    to.max_length = spec.max_length;
    to.max_prompt_length = spec.max_prompt_length;
    std::vector<TokenizedPair> pairs;
    TokenizeStats ts;
    std::vector<std::pair<const GenerationsRow*, const GenerationsRow*>> scored;
    for (const auto& [p, b] : matched) {
      PreferencePair pp;
      pp.prompt = p->prompt;
      pp.chosen = {{"assistant", p->responses[0]}};
      pp.rejected = {{"assistant", b->responses[0]}};
      ASSIGN_OR_RETURN(auto t, TokenizePair(*tok, pp, to, &ts));
      if (!t.has_value()) continue;  // counted in ts
      pairs.push_back(std::move(*t));
      scored.emplace_back(p, b);
    }
    matched = std::move(scored);
    if (pairs.empty()) return InvalidArgumentError("data.generations: no prompt can be scored");
    *phase = "load";
    ASSIGN_OR_RETURN(auto model, BuildModel(spec, spec.model_path, HeadKind::kReward));
    *phase = "eval";
    EvalOptions eo;
    eo.reward = "exrm";
    eo.batch_size = spec.eval_batch_size;
    eo.pad_id = tok->pad_id() >= 0 ? tok->pad_id() : tok->eos_id();
    eo.layout = spec.shared_prefix ? PairLayout::kAuto : PairLayout::kSeparate;
    ASSIGN_OR_RETURN(torch::Tensor r, PairRewards(comm, *model, pairs, {}, {}, eo));
    auto acc = r.accessor<float, 2>();
    for (size_t i = 0; i < pairs.size(); ++i) scores.emplace_back(acc[i][0], acc[i][1]);
  }
  *phase = "finish";
  if (comm->rank() != 0) return Status::Ok();
  int64_t wins = 0, ties = 0, losses = 0;
  for (const auto& [a, b] : scores) {
    wins += a > b;
    ties += a == b;
    losses += a < b;
  }
  const double n = static_cast<double>(scores.size());
  json metrics = {{"kind", "judge"},
                  {"ranks", comm->size()},
                  {"judge",
                   {{"reward", spec.judge_reward},
                    {"n", scores.size()},
                    {"wins", wins},
                    {"ties", ties},
                    {"losses", losses},
                    {"win_rate", (wins + 0.5 * ties) / n},
                    {"unmatched", policy.size() - matched_prompts},
                    {"unscored", matched_prompts - scores.size()},
                    {"policy", policy.front().generator},
                    {"baseline", base.front().generator}}}};
  return WriteFileAtomic(run_dir::Join(out, run_dir::kMetrics), metrics.dump(2) + "\n");
}

}  // namespace rmgen
