// libFuzzer target: the streaming record reader (JSONL / JSON array / gzip) on arbitrary
// file contents. Any input ends in records or an error status, with bounded memory.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

#include "common/file.h"
#include "worker/data/record_reader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = "/tmp/rmgen_fuzz_reader_" + std::to_string(::getpid());
  if (!rmgen::WriteFileAtomic(path, std::string(reinterpret_cast<const char*>(data), size)).ok()) {
    return 0;
  }
  auto reader = rmgen::RecordReader::Open(path);
  if (!reader.ok()) return 0;
  std::string rec;
  int64_t line = 0;
  for (int i = 0; i < 100000; ++i) {
    auto more = (*reader)->Next(&rec, &line);
    if (!more.ok() || !*more) break;
  }
  return 0;
}
