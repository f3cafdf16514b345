#include "worker/data/tokenizer.h"

#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <mutex>

#include "common/file.h"
#include "worker/data/spm_shim.h"

namespace rmgen {
namespace {

// Finds and opens librmgen_spm.so once per process: next to the executable, in ../lib
// beside it, or where the build put it.
StatusOr<const RmgenSpmApi*> SpmApi() {
  static std::once_flag once;
  static const RmgenSpmApi* api = nullptr;
  static std::string error;
  std::call_once(once, [] {
    std::vector<std::string> candidates;
    std::error_code ec;
    auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
    if (!ec) {
      candidates.push_back((exe.parent_path() / "librmgen_spm.so").string());
      candidates.push_back((exe.parent_path() / ".." / "lib" / "librmgen_spm.so").string());
    }
    candidates.push_back(RMGEN_SPM_SHIM_PATH);
    for (const auto& path : candidates) {
      if (!FileExists(path)) continue;
      // A link-map namespace of its own: sentencepiece, its bundled protobuf and its own
      // copy of the C++ runtime stay invisible to (and unaffected by) the rest of the
      // process. RTLD_DEEPBIND alone is not enough: it binds the library to an
      // uninitialised std::cerr when the executable holds a copy-relocated one.
      void* h = ::dlmopen(LM_ID_NEWLM, path.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (h == nullptr) {
        error += path + ": " + ::dlerror() + "; ";
        continue;
      }
      auto fn = reinterpret_cast<const RmgenSpmApi* (*)()>(::dlsym(h, "rmgen_spm_api"));
      if (fn != nullptr && fn()->version == kRmgenSpmApiVersion) {
        api = fn();
        return;
      }
      error += path + ": not an rmgen SentencePiece shim of this version; ";
    }
    if (error.empty())
      error = "librmgen_spm.so not found (looked beside the executable and in " +
              std::string(RMGEN_SPM_SHIM_PATH) + ")";
  });
  if (api == nullptr) {
    return InternalError("cannot load the SentencePiece shim: " + error +
                         " HINT: install librmgen_spm.so next to the rmgen binaries");
  }
  return api;
}

}  // namespace

Tokenizer::~Tokenizer() {
  if (sp_ != nullptr) api_->free_model(sp_);
}

Status Tokenizer::Train(const std::string& flags) {
  ASSIGN_OR_RETURN(const RmgenSpmApi* api, SpmApi());
  char err[512] = {0};
  if (api->train(flags.c_str(), err, sizeof(err)) != 0) {
    return InvalidArgumentError(std::string("SentencePiece training failed: ") + err);
  }
  return Status::Ok();
}

StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& path) {
  if (!FileExists(path)) {
    return NotFoundError(path +
                         ": tokenizer model not found. HINT: pass the checkpoint's "
                         "SentencePiece `tokenizer.model`");
  }
  return Create(path, /*from_bytes=*/false, path);
}

StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromSerialized(const std::string& bytes,
                                                               const std::string& name) {
  return Create(bytes, /*from_bytes=*/true, name);
}

StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Create(const std::string& data, bool from_bytes,
                                                       const std::string& name) {
  ASSIGN_OR_RETURN(const RmgenSpmApi* api, SpmApi());
  char err[512] = {0};
  void* sp = api->load(data.data(), data.size(), from_bytes ? 1 : 0, err, sizeof(err));
  if (sp == nullptr) {
    return InvalidArgumentError(name + ": not a SentencePiece model (" + err + ")");
  }
  std::unique_ptr<Tokenizer> tok(new Tokenizer());
  tok->api_ = api;
  tok->sp_ = sp;
  tok->name_ = name;
  const int n = api->piece_size(sp);
  if (n <= 0) return InvalidArgumentError(name + ": empty vocabulary");
  tok->bos_id_ = api->special_id(sp, 0);
  tok->eos_id_ = api->special_id(sp, 1);
  tok->pad_id_ = api->special_id(sp, 2);
  tok->unk_id_ = api->special_id(sp, 3);
  std::vector<std::pair<std::string, int>> specials;
  for (int id = 0; id < n; ++id) {
    if (api->is_control(sp, id) || api->is_unknown(sp, id)) {
      std::string piece = tok->IdToPiece(id);
      if (!piece.empty()) specials.emplace_back(std::move(piece), id);
    }
  }
  // Longest first, so a special piece wins over a shorter one that is its prefix.
  std::stable_sort(specials.begin(), specials.end(),
                   [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
  for (auto& [piece, id] : specials) {
    tok->special_first_byte_[static_cast<unsigned char>(piece[0])] = true;
    tok->specials_.push_back(std::move(piece));
    tok->special_ids_.push_back(id);
  }
  return tok;
}

std::vector<int> Tokenizer::EncodePlain(std::string_view text) const {
  std::vector<int> ids;
  if (text.empty()) return ids;
  ids.resize(text.size() + 8);  // SentencePiece never makes more pieces than bytes + prefix
  long n = api_->encode(sp_, text.data(), text.size(), ids.data(), ids.size());
  if (n > static_cast<long>(ids.size())) {
    ids.resize(n);
    n = api_->encode(sp_, text.data(), text.size(), ids.data(), ids.size());
  }
  ids.resize(std::max(0L, n));
  return ids;
}

size_t Tokenizer::MatchSpecial(std::string_view text, size_t i, int* id) const {
  if (!special_first_byte_[static_cast<unsigned char>(text[i])]) return 0;
  for (size_t k = 0; k < specials_.size(); ++k) {
    if (text.compare(i, specials_[k].size(), specials_[k]) == 0) {
      *id = special_ids_[k];
      return specials_[k].size();
    }
  }
  return 0;
}

std::vector<int> Tokenizer::EncodeHeadWithSpecials(std::string_view text, size_t* tail) const {
  std::vector<int> out;
  size_t seg_start = 0;
  for (size_t i = 0; i < text.size();) {
    int id = 0;
    const size_t len = MatchSpecial(text, i, &id);
    if (len == 0) {
      ++i;
      continue;
    }
    if (i > seg_start) {
      std::vector<int> ids = EncodePlain(text.substr(seg_start, i - seg_start));
      out.insert(out.end(), ids.begin(), ids.end());
    }
    out.push_back(id);
    i += len;
    seg_start = i;
  }
  *tail = seg_start;
  return out;
}

std::vector<int> Tokenizer::EncodeWithSpecials(std::string_view text) const {
  size_t tail = 0;
  std::vector<int> out = EncodeHeadWithSpecials(text, &tail);
  std::vector<int> rest = EncodePlain(text.substr(tail));
  out.insert(out.end(), rest.begin(), rest.end());
  return out;
}

bool Tokenizer::ContainsSpecial(std::string_view text) const {
  int id = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    if (MatchSpecial(text, i, &id) > 0) return true;
  }
  return false;
}

std::string Tokenizer::IdToPiece(int id) const {
  if (id < 0 || id >= vocab_size()) return "";
  size_t size = 0;
  const char* p = api_->id_to_piece(sp_, id, &size);
  return std::string(p, size);
}

std::optional<int> Tokenizer::PieceToId(std::string_view piece) const {
  const int id = api_->piece_to_id(sp_, piece.data(), piece.size());
  if (id == unk_id_ && piece != IdToPiece(unk_id_)) return std::nullopt;
  return id;
}

std::string Tokenizer::Decode(const std::vector<int>& ids) const {
  std::string text(ids.size() * 8 + 16, '\0');
  long n = api_->decode(sp_, ids.data(), ids.size(), text.data(), text.size());
  if (n > static_cast<long>(text.size())) {
    text.resize(n);
    n = api_->decode(sp_, ids.data(), ids.size(), text.data(), text.size());
  }
  text.resize(std::max(0L, n));
  return text;
}

int Tokenizer::vocab_size() const { return api_->piece_size(sp_); }

}  // namespace rmgen
