// File helpers shared by every component: whole-file reads, atomic writes
// (temp + fsync + rename, so a reader never sees half a file) and read-only memory maps.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"

namespace rmgen {

StatusOr<std::string> ReadFile(const std::string& path);
// A whole file of at most `max_bytes` (another process's output, read into memory):
// RESOURCE_EXHAUSTED naming the size when it is larger.
StatusOr<std::string> ReadSmallFile(const std::string& path, int64_t max_bytes);

// Streams a file into `path.tmp.<pid>`; Commit() fsyncs it and renames it into place, so
// readers see the old file or the whole new one. Destroying it uncommitted removes the temp.
class AtomicFileWriter {
 public:
  static StatusOr<std::unique_ptr<AtomicFileWriter>> Open(const std::string& path);
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  Status Append(const void* data, size_t size);
  Status Commit();

 private:
  AtomicFileWriter(std::string path, std::string tmp, int fd)
      : path_(std::move(path)), tmp_(std::move(tmp)), fd_(fd) {}
  std::string path_, tmp_;
  int fd_;
};

// Writes `data` to `path` atomically (AtomicFileWriter).
Status WriteFileAtomic(const std::string& path, const std::string& data);

bool FileExists(const std::string& path);

// The last `n` lines of a text file (a log), reading at most its last `window` bytes: each
// valid UTF-8 (SanitizeUtf8) of at most `max_line` bytes, a cut line ending in "...". None when
// the file cannot be read, is not a regular file, or is a symbolic link.
std::vector<std::string> LastLines(const std::string& path, size_t n, size_t max_line = 500,
                                   size_t window = 65536);

// A read-only memory map of a whole file. Movable, not copyable; unmaps on destruction.
// Tensors made with from_blob over data() must not outlive it (the model loader copies
// into the compute dtype, so they never do).
class MappedFile {
 public:
  static StatusOr<std::shared_ptr<MappedFile>> Open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile(std::string path, const uint8_t* data, size_t size)
      : path_(std::move(path)), data_(data), size_(size) {}
  std::string path_;
  const uint8_t* data_;
  size_t size_;
};

// 64-bit FNV-1a of `s` as 16 hex digits: a stable content key (cache file names, request
// ids), not a cryptographic hash.
std::string HexHash(const std::string& s);

// `bytes` random bytes from /dev/urandom (std::random_device if it cannot be read) as
// 2*bytes lowercase hex digits: session secrets, tokens, instance keys, attempt tags.
std::string RandomHex(size_t bytes);

}  // namespace rmgen
