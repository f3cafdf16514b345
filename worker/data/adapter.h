// Dataset adapters: one per source schema (REFERENCE section 3), behind a registry.
//
// An adapter turns one parsed JSON record into a PreferencePair or a drop with a reason
// and, for input errors, the field at fault. It never throws and never crashes on any
// JSON value (the fuzz targets in tests/fuzz hold it to that). File handling, splits,
// subsets and counting live in dataset.h; adapters only know their schema.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "worker/data/pair.h"

namespace rmgen {

struct AdapterOptions {
  // `pairs`: the field names of the user's format. Each field holds a string or a list
  // of {role, content} messages; with message lists and no prompt field, the prompt is
  // the chosen list without its last message.
  std::string prompt_field = "prompt";
  std::string chosen_field = "chosen";
  std::string rejected_field = "rejected";
  // `nectar`: "random" (rank 1 against a seeded random lower rank, the default) or
  // "best_worst". `ultrafeedback` raw schema: the rejected completion is a seeded random
  // lower-scored one.
  std::string pairing = "random";
  uint64_t seed = 0;
};

struct RecordOutcome {
  std::optional<PreferencePair> pair;
  DropReason reason = DropReason::kMalformed;  // when there is no pair
  std::string field;    // the field at fault, for input errors ("summaries[1].text")
  std::string message;  // what is wrong with it

  static RecordOutcome Drop(DropReason r, std::string field = "", std::string message = "") {
    RecordOutcome o;
    o.reason = r;
    o.field = std::move(field);
    o.message = std::move(message);
    return o;
  }
};

class Adapter {
 public:
  virtual ~Adapter() = default;
  virtual const char* name() const = 0;
  // `record` is any JSON value (adapters check the shape themselves).
  virtual RecordOutcome Convert(const nlohmann::json& record) const = 0;
};

// The names of every registered adapter.
const std::vector<std::string>& AdapterNames();
StatusOr<std::unique_ptr<Adapter>> MakeAdapter(const std::string& name,
                                               const AdapterOptions& options = {});

// Shared by the adapters (adapter_util.cc).
namespace adapter_util {

// Reads a string field; a missing field or another type is an outcome to return.
std::optional<RecordOutcome> GetString(const nlohmann::json& obj, const std::string& field,
                                       std::string* out, const std::string& where = "");
std::optional<RecordOutcome> GetNumber(const nlohmann::json& obj, const std::string& field,
                                       double* out, const std::string& where = "");
// A list of {role, content} objects.
std::optional<RecordOutcome> GetMessages(const nlohmann::json& obj, const std::string& field,
                                         std::vector<Message>* out);
// An "\n\nHuman: ...\n\nAssistant: ..." transcript split into turns (user/assistant),
// contents stripped. Text before the first marker becomes a user turn.
std::vector<Message> SplitTranscript(const std::string& text);
// Final checks every adapter shares: empty responses, identical responses, an empty
// prompt. Returns the pair as an outcome.
RecordOutcome Finish(PreferencePair pair);
// SplitMix64, for seeded per-record choices that do not depend on record order.
uint64_t Mix(uint64_t x);
uint64_t HashString(const std::string& s);

}  // namespace adapter_util
}  // namespace rmgen
