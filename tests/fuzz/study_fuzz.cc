// libFuzzer: study files (coordinator/study.h), rmgen-train job specs (jobspec/spec.h)
// and coordinator token files (coordinator/auth.h) are parsed from untrusted text: any input
// gives a Status, never a crash, a hang or a sanitizer report.
#include <cstddef>
#include <cstdint>
#include <string>

#include "coordinator/auth.h"
#include "coordinator/study.h"
#include "jobspec/spec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto study = rmgen::coord::ParseStudy(text, "fuzz.yaml");
  if (study.ok()) (void)rmgen::coord::PlanStudy(*study, "fuzz", "fuzz.yaml");
  (void)rmgen::ParseJobSpec(text, "spec.yaml");
  (void)rmgen::coord::Auth::Parse(text, "tokens.yaml");
  return 0;
}
