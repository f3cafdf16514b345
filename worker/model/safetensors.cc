#include "worker/model/safetensors.h"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

namespace rmgen {
namespace {

using nlohmann::json;

// Caps the header so a corrupt length cannot make us allocate gigabytes.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

struct DtypeInfo {
  const char* name;
  torch::Dtype dtype;
  int64_t bytes;
};

const DtypeInfo kDtypes[] = {
    {"F64", torch::kFloat64, 8},   {"F32", torch::kFloat32, 4}, {"F16", torch::kFloat16, 2},
    {"BF16", torch::kBFloat16, 2}, {"I64", torch::kInt64, 8},   {"I32", torch::kInt32, 4},
    {"I16", torch::kInt16, 2},     {"I8", torch::kInt8, 1},     {"U8", torch::kUInt8, 1},
    {"BOOL", torch::kBool, 1},
};

const DtypeInfo* FindDtype(const std::string& name) {
  for (const auto& d : kDtypes) {
    if (name == d.name) return &d;
  }
  return nullptr;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

}  // namespace

std::string SafetensorsDtypeName(torch::Dtype dtype) {
  for (const auto& d : kDtypes) {
    if (d.dtype == dtype) return d.name;
  }
  return "";
}

StatusOr<SafetensorsFile> SafetensorsFile::Open(const std::string& path) {
  ASSIGN_OR_RETURN(auto file, MappedFile::Open(path));
  const uint64_t size = file->size();
  if (size < 8) {
    return DataLossError(path + ": truncated safetensors file (" + std::to_string(size) +
                         " bytes, need at least 8 for the header length)");
  }
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | file->data()[i];
  if (header_len > kMaxHeaderBytes || header_len > size - 8) {
    return DataLossError(path + ": bad safetensors header: length " + std::to_string(header_len) +
                         " exceeds the file (" + std::to_string(size) + " bytes)");
  }
  const char* hp = reinterpret_cast<const char*>(file->data() + 8);
  json header = json::parse(hp, hp + header_len, nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded() || !header.is_object()) {
    return DataLossError(path + ": bad safetensors header: not a JSON object");
  }
  SafetensorsFile out;
  out.file_ = file;
  out.data_start_ = 8 + header_len;
  const uint64_t data_size = size - out.data_start_;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    if (name == "__metadata__") {
      if (!it->is_object()) return DataLossError(path + ": __metadata__ is not an object");
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (m->is_string()) out.metadata_[m.key()] = m->get<std::string>();
      }
      continue;
    }
    auto bad = [&](const std::string& what) {
      return DataLossError(path + ": tensor '" + name + "': " + what);
    };
    const json& e = *it;
    if (!e.is_object()) return bad("header entry is not an object");
    SafetensorsEntry entry;
    entry.name = name;
    if (!e.contains("dtype") || !e["dtype"].is_string()) return bad("missing 'dtype'");
    entry.dtype = e["dtype"].get<std::string>();
    const DtypeInfo* dt = FindDtype(entry.dtype);
    if (dt == nullptr) {
      return bad("unknown dtype '" + entry.dtype +
                 "' (supported: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL)");
    }
    if (!e.contains("shape") || !e["shape"].is_array()) return bad("missing 'shape'");
    uint64_t numel = 1;
    for (const auto& d : e["shape"]) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0) return bad("bad 'shape'");
      const uint64_t dim = d.get<uint64_t>();
      if (dim != 0 && numel > (uint64_t{1} << 48) / dim) return bad("shape too large");
      numel *= dim;
      entry.shape.push_back(d.get<int64_t>());
    }
    const auto& off = e.contains("data_offsets") ? e["data_offsets"] : json();
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() ||
        !off[1].is_number_unsigned()) {
      return bad("missing or bad 'data_offsets'");
    }
    entry.begin = off[0].get<uint64_t>();
    entry.end = off[1].get<uint64_t>();
    if (entry.begin > entry.end) return bad("data_offsets begin > end");
    if (entry.end - entry.begin != numel * static_cast<uint64_t>(dt->bytes)) {
      return bad("data_offsets span " + std::to_string(entry.end - entry.begin) +
                 " bytes but shape " + ShapeString(entry.shape) + " of " + entry.dtype + " needs " +
                 std::to_string(numel * dt->bytes));
    }
    if (entry.end > data_size) {
      return DataLossError(path + ": truncated: tensor '" + name + "' ends at byte " +
                           std::to_string(entry.end) + " of the data section, which has " +
                           std::to_string(data_size) + " bytes");
    }
    out.entries_.emplace(name, std::move(entry));
  }
  return out;
}

StatusOr<torch::Tensor> SafetensorsFile::Load(const std::string& name, torch::Dtype dtype,
                                              const std::vector<int64_t>& expected_shape) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) {
    return NotFoundError(path() + ": missing tensor '" + name + "'");
  }
  const SafetensorsEntry& e = it->second;
  if (!expected_shape.empty() && e.shape != expected_shape) {
    return InvalidArgumentError(path() + ": tensor '" + name + "': shape mismatch: stored " +
                                ShapeString(e.shape) + ", expected " + ShapeString(expected_shape) +
                                ". HINT: does config.json match these weights?");
  }
  const DtypeInfo* dt = FindDtype(e.dtype);
  const uint8_t* src = file_->data() + data_start_ + e.begin;
  // Safetensors data need not be aligned for the element type: copy the bytes into an
  // owned buffer first, then convert (the stored dtype is little-endian, as is x86/ARM).
  torch::Tensor raw = torch::empty(e.shape, torch::TensorOptions().dtype(dt->dtype));
  if (e.end > e.begin) std::memcpy(raw.data_ptr(), src, e.end - e.begin);
  return raw.to(dtype);
}

Status WriteSafetensors(const std::string& path, const NamedTensors& tensors,
                        const std::map<std::string, std::string>& metadata) {
  NamedTensors sorted;
  sorted.reserve(tensors.size());
  for (const auto& [name, t] : tensors) {
    if (SafetensorsDtypeName(t.scalar_type()).empty()) {
      return InvalidArgumentError(path + ": tensor '" + name + "': dtype not storable");
    }
    sorted.emplace_back(name, t.detach().to(torch::kCPU).contiguous());
  }
  std::sort(sorted.begin(), sorted.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& [name, t] : sorted) {
    if (header.contains(name)) return InvalidArgumentError(path + ": duplicate tensor " + name);
    const uint64_t bytes = t.numel() * t.element_size();
    header[name] = {{"dtype", SafetensorsDtypeName(t.scalar_type())},
                    {"shape", t.sizes().vec()},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>((h.size() >> (8 * i)) & 0xff);
  ASSIGN_OR_RETURN(auto writer, AtomicFileWriter::Open(path));
  RETURN_IF_ERROR(writer->Append(len, sizeof(len)));
  RETURN_IF_ERROR(writer->Append(h.data(), h.size()));
  for (const auto& [name, t] : sorted) {
    RETURN_IF_ERROR(writer->Append(t.data_ptr(), t.numel() * t.element_size()));
  }
  return writer->Commit();
}

}  // namespace rmgen
