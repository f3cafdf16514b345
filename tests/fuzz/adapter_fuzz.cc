// libFuzzer target: one adapter's record parser on arbitrary bytes. Built once per adapter
// with RMGEN_FUZZ_ADAPTER naming it. The contract under test (adapter.h): any JSON value
// gives a pair or a drop, never a crash, a hang or an exception; a pair has non-empty,
// distinct responses and a prompt.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "worker/data/adapter.h"

namespace {

const rmgen::Adapter& TheAdapter() {
  static const auto* adapter = [] {
    rmgen::AdapterOptions o;
    auto a = rmgen::MakeAdapter(RMGEN_FUZZ_ADAPTER, o);
    if (!a.ok()) std::abort();
    return std::move(a).value().release();
  }();
  return *adapter;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto j = nlohmann::json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return 0;
  rmgen::RecordOutcome out = TheAdapter().Convert(j);
  if (out.pair) {
    const auto& p = *out.pair;
    if (p.prompt.empty() || rmgen::ResponseText(p.chosen) == rmgen::ResponseText(p.rejected) ||
        rmgen::StripWhitespace(rmgen::ResponseText(p.chosen)).empty()) {
      std::abort();
    }
  } else if (rmgen::IsErrorReason(out.reason) && out.field.empty()) {
    std::abort();  // input errors must name their field
  }
  return 0;
}
