// RecordReader: streams the JSON records of a dataset file one at a time.
//
// Accepted: JSON Lines (one object per line, blank lines skipped), a JSON array of objects
// (the whole file one array, split into elements without parsing the whole), and gzip of
// either (detected by magic bytes, not the name). Memory stays bounded by the largest
// record, never the file. Each record comes with the 1-based line it starts on.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "common/status.h"

namespace rmgen {

class RecordReader {
 public:
  // Largest record accepted; a longer one is an error naming the line (a guard against a
  // corrupt file making us buffer gigabytes).
  static constexpr size_t kMaxRecordBytes = 64u << 20;

  static StatusOr<std::unique_ptr<RecordReader>> Open(const std::string& path);
  virtual ~RecordReader() = default;

  // The next record's text and start line. Returns false at the end of the file. A
  // structural error (bad gzip, unterminated array or string, oversized record) is a
  // status naming the file and line; per-record JSON errors are the caller's to find.
  virtual StatusOr<bool> Next(std::string* record, int64_t* line) = 0;
  const std::string& path() const { return path_; }

 protected:
  explicit RecordReader(std::string path) : path_(std::move(path)) {}
  std::string path_;
};

}  // namespace rmgen
