#include "worker/data/dataset.h"

#include "worker/data/record_reader.h"

namespace rmgen {

using nlohmann::json;

json DatasetStats::ToJson() const {
  json j = {{"records", records},
            {"pairs", pairs},
            {"dropped", json::object()},
            {"errors", json::array()},
            {"error_count", error_count}};
  for (const auto& [reason, n] : dropped) j["dropped"][reason] = n;
  for (const auto& e : errors) {
    j["errors"].push_back(
        {{"file", e.file}, {"line", e.line}, {"field", e.field}, {"message", e.message}});
  }
  return j;
}

Status ReadDataset(const std::string& path, const ReadOptions& options,
                   const std::function<void(PreferencePair&&)>& sink, DatasetStats* stats) {
  ASSIGN_OR_RETURN(auto adapter, MakeAdapter(options.format, options.adapter));
  ASSIGN_OR_RETURN(auto reader, RecordReader::Open(path));
  std::string text;
  int64_t line = 0;
  auto drop = [&](DropReason r) { ++stats->dropped[DropReasonName(r)]; };
  while (true) {
    ASSIGN_OR_RETURN(bool more, reader->Next(&text, &line));
    if (!more) break;
    ++stats->records;
    json rec = json::parse(text, nullptr, /*allow_exceptions=*/false);
    RecordOutcome out;
    if (rec.is_discarded()) {
      out = RecordOutcome::Drop(DropReason::kMalformed, "", "not valid JSON");
    } else {
      out = adapter->Convert(rec);
    }
    if (!out.pair) {
      drop(out.reason);
      if (IsErrorReason(out.reason)) {
        RecordError e{path, line, out.field,
                      out.message.empty() ? DropReasonName(out.reason) : out.message};
        if (options.strict) {
          return InvalidArgumentError(e.file + ":" + std::to_string(e.line) + ": field '" +
                                      e.field + "': " + e.message + " (" + options.format +
                                      " record; --strict stops at the first bad record)");
        }
        ++stats->error_count;
        if (stats->errors.size() < DatasetStats::kMaxErrors) stats->errors.push_back(e);
      }
      continue;
    }
    PreferencePair& p = *out.pair;
    if (p.id.empty()) p.id = path + ":" + std::to_string(line);
    if (!options.subset.empty() && p.subset != options.subset) {
      drop(DropReason::kOtherSubset);
      continue;
    }
    if (!options.split.empty()) {
      const std::string split =
          p.split.empty() ? HashSplit(p.prompt, options.val_fraction) : p.split;
      if (split != options.split) {
        drop(DropReason::kOtherSplit);
        continue;
      }
      if (p.split.empty()) p.split = split;
    }
    if (options.holdout > 0 && InHoldout(p.prompt, options.holdout) != options.holdout_only) {
      drop(DropReason::kOtherSplit);
      continue;
    }
    ++stats->pairs;
    sink(std::move(p));
    if (options.limit > 0 && stats->pairs >= options.limit) break;
  }
  return Status::Ok();
}

json PairToJson(const PreferencePair& p) {
  auto messages = [](const std::vector<Message>& ms) {
    json a = json::array();
    for (const auto& m : ms) a.push_back({{"role", m.role}, {"content", m.content}});
    return a;
  };
  json j = {{"prompt", messages(p.prompt)},
            {"chosen", messages(p.chosen)},
            {"rejected", messages(p.rejected)},
            {"source", p.source},
            {"id", p.id}};
  if (!p.subset.empty()) j["subset"] = p.subset;
  if (!p.split.empty()) j["split"] = p.split;
  if (p.score_chosen) j["score_chosen"] = *p.score_chosen;
  if (p.score_rejected) j["score_rejected"] = *p.score_rejected;
  return j;
}

}  // namespace rmgen
