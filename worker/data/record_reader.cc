#include "worker/data/record_reader.h"

#include <zlib.h>

#include <vector>

#include "common/file.h"

namespace rmgen {
namespace {

// Buffered bytes of a plain or gzip file (zlib reads both transparently).
class ByteStream {
 public:
  explicit ByteStream(gzFile f) : f_(f), buf_(1 << 20) {}
  ~ByteStream() { gzclose(f_); }

  // Next byte, or -1 at the end; an error sets error().
  int Get() {
    if (pos_ == len_) {
      if (!Fill()) return -1;
    }
    return static_cast<unsigned char>(buf_[pos_++]);
  }
  int Peek() {
    if (pos_ == len_ && !Fill()) return -1;
    return static_cast<unsigned char>(buf_[pos_]);
  }
  const std::string& error() const { return error_; }

 private:
  bool Fill() {
    if (!error_.empty()) return false;
    int n = gzread(f_, buf_.data(), static_cast<unsigned>(buf_.size()));
    if (n < 0) {
      int code = 0;
      error_ = gzerror(f_, &code);
      return false;
    }
    pos_ = 0;
    len_ = static_cast<size_t>(n);
    if (n == 0) {
      // The end of the data, or a gzip stream cut short (zlib reports that only here).
      int code = Z_OK;
      const char* msg = gzerror(f_, &code);
      if (code != Z_OK && code != Z_STREAM_END) error_ = msg;
    }
    return n > 0;
  }
  gzFile f_;
  std::vector<char> buf_;
  size_t pos_ = 0, len_ = 0;
  std::string error_;
};

bool IsSpace(int c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

class StreamReader : public RecordReader {
 public:
  StreamReader(std::string path, gzFile f) : RecordReader(std::move(path)), in_(f) {}

  StatusOr<bool> Next(std::string* record, int64_t* line) override {
    if (!started_) {
      started_ = true;
      RETURN_IF_ERROR(Start());
    }
    return array_ ? NextElement(record, line) : NextLine(record, line);
  }

 private:
  Status Err(const std::string& what) const {
    return DataLossError(path_ + ":" + std::to_string(line_) + ": " + what);
  }
  Status StreamError() const {
    return DataLossError(path_ + ": read failed near line " + std::to_string(line_) + " (" +
                         in_.error() + ")");
  }

  // Skips a UTF-8 BOM and leading whitespace; an opening '[' means a JSON array.
  Status Start() {
    if (in_.Peek() == 0xEF) {
      in_.Get();
      if (in_.Get() != 0xBB || in_.Get() != 0xBF) return Err("bad byte-order mark");
    }
    while (IsSpace(in_.Peek())) {
      if (in_.Get() == '\n') ++line_;
    }
    if (!in_.error().empty()) return StreamError();
    if (in_.Peek() == '[') {
      in_.Get();
      array_ = true;
    }
    return Status::Ok();
  }

  StatusOr<bool> NextLine(std::string* record, int64_t* line) {
    while (true) {
      record->clear();
      int c;
      bool any = false;
      while ((c = in_.Get()) != -1 && c != '\n') {
        any = true;
        if (record->size() >= kMaxRecordBytes) {
          return Err("record longer than " + std::to_string(kMaxRecordBytes) + " bytes");
        }
        record->push_back(static_cast<char>(c));
      }
      if (!in_.error().empty()) return StreamError();
      *line = line_;
      ++line_;
      if (c == -1 && !any) return false;
      bool blank = true;
      for (char ch : *record) blank = blank && IsSpace(static_cast<unsigned char>(ch));
      if (!blank) return true;
      if (c == -1) return false;
    }
  }

  // One element of the top-level array: everything up to the ',' or ']' at depth 0,
  // honouring strings and escapes.
  StatusOr<bool> NextElement(std::string* record, int64_t* line) {
    record->clear();
    if (done_) return false;
    int c;
    while ((c = in_.Peek()) != -1 && (IsSpace(c) || (c == ',' && after_element_))) {
      if (c == ',') after_element_ = false;
      if (in_.Get() == '\n') ++line_;
    }
    if (c == -1) {
      if (!in_.error().empty()) return StreamError();
      return Err("unterminated JSON array (no closing ']')");
    }
    if (c == ']') {
      in_.Get();
      done_ = true;
      while ((c = in_.Get()) != -1) {
        if (c == '\n') ++line_;
        if (!IsSpace(c)) return Err("data after the closing ']' of the array");
      }
      return false;
    }
    if (after_element_) return Err("expected ',' or ']' between array elements");
    *line = line_;
    int depth = 0;
    bool in_string = false, escape = false;
    while ((c = in_.Peek()) != -1) {
      if (!in_string && depth == 0 && (c == ',' || c == ']') && !record->empty()) break;
      in_.Get();
      if (c == '\n') ++line_;
      if (record->size() >= kMaxRecordBytes) {
        return Err("record longer than " + std::to_string(kMaxRecordBytes) + " bytes");
      }
      record->push_back(static_cast<char>(c));
      if (in_string) {
        if (escape) {
          escape = false;
        } else if (c == '\\') {
          escape = true;
        } else if (c == '"') {
          in_string = false;
        }
      } else if (c == '"') {
        in_string = true;
      } else if (c == '{' || c == '[') {
        ++depth;
      } else if (c == '}' || c == ']') {
        if (--depth < 0) return Err("unbalanced '" + std::string(1, char(c)) + "'");
      }
    }
    if (!in_.error().empty()) return StreamError();
    if (c == -1) return Err("unterminated JSON array (file ends inside an element)");
    while (!record->empty() && IsSpace(static_cast<unsigned char>(record->back()))) {
      record->pop_back();
    }
    after_element_ = true;
    return true;
  }

  ByteStream in_;
  bool started_ = false, array_ = false, done_ = false, after_element_ = false;
  int64_t line_ = 1;
};

}  // namespace

StatusOr<std::unique_ptr<RecordReader>> RecordReader::Open(const std::string& path) {
  if (!FileExists(path)) return NotFoundError(path + ": no such file");
  gzFile f = gzopen(path.c_str(), "rb");
  if (f == nullptr) return NotFoundError(path + ": cannot open");
  gzbuffer(f, 1 << 20);
  return std::unique_ptr<RecordReader>(new StreamReader(path, f));
}

}  // namespace rmgen
