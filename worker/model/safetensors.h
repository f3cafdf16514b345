// Safetensors files: memory-mapped reading with full validation, and deterministic writing.
//
// Format: 8-byte little-endian header length N, N bytes of JSON
//   {"__metadata__": {str: str}, name: {"dtype": "BF16", "shape": [..],
//    "data_offsets": [begin, end]}, ...}
// then the data section; offsets are relative to its start.
//
// Every malformed input (short file, header length past the end, bad JSON, unknown dtype,
// offsets outside the data or not matching the shape) is a Status naming the file and,
// where there is one, the tensor. Reading never touches bytes outside the map.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/file.h"
#include "common/status.h"
#include "worker/model/torch_compat.h"

namespace rmgen {

// Tensors with their (Hugging Face) names, in a meaningful order.
using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

struct SafetensorsEntry {
  std::string name;
  std::string dtype;  // as stored: "F32", "BF16", ...
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte range inside the data section
};

class SafetensorsFile {
 public:
  static StatusOr<SafetensorsFile> Open(const std::string& path);

  const std::string& path() const { return file_->path(); }
  const std::map<std::string, SafetensorsEntry>& entries() const { return entries_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool Has(const std::string& name) const { return entries_.count(name) > 0; }

  // Copies tensor `name` out of the map, converted to `dtype`. With a non-empty
  // `expected_shape`, a different stored shape is an error naming both shapes.
  StatusOr<torch::Tensor> Load(const std::string& name, torch::Dtype dtype,
                               const std::vector<int64_t>& expected_shape = {}) const;

 private:
  std::shared_ptr<MappedFile> file_;
  uint64_t data_start_ = 0;
  std::map<std::string, SafetensorsEntry> entries_;
  std::map<std::string, std::string> metadata_;
};

// The safetensors dtype string of a torch dtype ("F32", "BF16", ...), or "" if none.
std::string SafetensorsDtypeName(torch::Dtype dtype);

// Writes `tensors` (any device; copied to CPU, contiguous) in name order with an 8-byte
// aligned header. The same tensors always give the same bytes. Atomic (temp + rename).
Status WriteSafetensors(const std::string& path, const NamedTensors& tensors,
                        const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

}  // namespace rmgen
