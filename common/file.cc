#include "common/file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>
#include <sstream>

#include "common/utf8.h"

namespace rmgen {
namespace {

std::string ErrnoText() { return std::strerror(errno); }

}  // namespace

StatusOr<std::string> ReadSmallFile(const std::string& path, int64_t max_bytes) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return NotFoundError(path + ": " + std::strerror(errno));
  if (st.st_size > max_bytes) {
    return Status(StatusCode::kResourceExhausted, path + " is " + std::to_string(st.st_size) +
                                                      " bytes (the limit is " +
                                                      std::to_string(max_bytes) + ")");
  }
  return ReadFile(path);
}

StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    // Only a file that is not there is NOT_FOUND (a permanent failure for a job); a file
    // that cannot be opened now (a shared file system's hiccup, too many open files) is not.
    const int err = errno;
    const std::string what = path + ": cannot open (" + ErrnoText() + ")";
    if (err == ENOENT || err == ENOTDIR) return NotFoundError(what);
    if (err == EACCES || err == EPERM) return Status(StatusCode::kPermissionDenied, what);
    return Status(StatusCode::kUnavailable, what);
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return DataLossError(path + ": read failed");
  return ss.str();
}

StatusOr<std::unique_ptr<AtomicFileWriter>> AtomicFileWriter::Open(const std::string& path) {
  std::string tmp = path + ".tmp." + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return InternalError(tmp + ": cannot create (" + ErrnoText() + ")");
  return std::unique_ptr<AtomicFileWriter>(new AtomicFileWriter(path, std::move(tmp), fd));
}

AtomicFileWriter::~AtomicFileWriter() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(tmp_.c_str());
  }
}

Status AtomicFileWriter::Append(const void* data, size_t size) {
  if (fd_ < 0) return FailedPreconditionError(path_ + ": writer already committed");
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd_, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return InternalError(tmp_ + ": write failed (" + ErrnoText() + ")");
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
  return Status::Ok();
}

Status AtomicFileWriter::Commit() {
  if (fd_ < 0) return FailedPreconditionError(path_ + ": writer already committed");
  const bool synced = ::fsync(fd_) == 0;
  const bool closed = ::close(fd_) == 0;
  fd_ = -1;
  if (!synced || !closed) {
    ::unlink(tmp_.c_str());
    return InternalError(tmp_ + ": fsync/close failed (" + ErrnoText() + ")");
  }
  if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
    ::unlink(tmp_.c_str());
    return InternalError(path_ + ": rename failed (" + ErrnoText() + ")");
  }
  return Status::Ok();
}

Status WriteFileAtomic(const std::string& path, const std::string& data) {
  ASSIGN_OR_RETURN(auto writer, AtomicFileWriter::Open(path));
  RETURN_IF_ERROR(writer->Append(data.data(), data.size()));
  return writer->Commit();
}

bool FileExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

std::vector<std::string> LastLines(const std::string& path, size_t n, size_t max_line,
                                   size_t window) {
  // Not through a symbolic link (a job could point its log at any file the reader may read),
  // never blocking (a FIFO), regular files only.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (fd < 0) return {};
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return {};
  }
  const off_t size = st.st_size;
  const off_t from = std::max<off_t>(0, size - static_cast<off_t>(window));
  std::string text(static_cast<size_t>(size - from), '\0');
  size_t got = 0;
  while (got < text.size()) {
    const ssize_t r = ::pread(fd, text.data() + got, text.size() - got, from + got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    got += static_cast<size_t>(r);
  }
  ::close(fd);
  text.resize(got);
  std::vector<std::string> lines;
  size_t start = 0;
  for (size_t i = 0; i <= text.size(); ++i) {
    if (i == text.size() || text[i] == '\n') {
      if (i > start)
        lines.push_back(SanitizeUtf8(std::string_view(text).substr(start, i - start), max_line));
      start = i + 1;
    }
  }
  if (from > 0 && !lines.empty()) lines.erase(lines.begin());  // a partial first line
  if (lines.size() > n) lines.erase(lines.begin(), lines.end() - static_cast<long>(n));
  return lines;
}

StatusOr<std::shared_ptr<MappedFile>> MappedFile::Open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return NotFoundError(path + ": cannot open (" + ErrnoText() + ")");
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    std::string err = ErrnoText();
    ::close(fd);
    return InternalError(path + ": fstat failed (" + err + ")");
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return InvalidArgumentError(path + ": not a regular file");
  }
  const size_t size = static_cast<size_t>(st.st_size);
  const uint8_t* data = nullptr;
  if (size > 0) {
    void* m = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) {
      std::string err = ErrnoText();
      ::close(fd);
      return InternalError(path + ": mmap failed (" + err + ")");
    }
    data = static_cast<const uint8_t*>(m);
  }
  ::close(fd);
  return std::shared_ptr<MappedFile>(new MappedFile(path, data, size));
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
}

std::string HexHash(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

std::string RandomHex(size_t bytes) {
  std::string raw(bytes, '\0');
  bool filled = false;
  if (FILE* f = std::fopen("/dev/urandom", "rb")) {
    filled = std::fread(raw.data(), 1, raw.size(), f) == raw.size();
    std::fclose(f);
  }
  if (!filled) {
    std::random_device rd;
    for (auto& b : raw) b = static_cast<char>(rd());
  }
  static const char* kDigits = "0123456789abcdef";
  std::string out;
  out.reserve(2 * bytes);
  for (unsigned char b : raw) {
    out += kDigits[b >> 4];
    out += kDigits[b & 15];
  }
  return out;
}

}  // namespace rmgen
