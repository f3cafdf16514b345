#include "worker/data/spm_shim.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <cstring>
#include <string>
#include <vector>

namespace {

using sentencepiece::SentencePieceProcessor;

SentencePieceProcessor* P(void* m) { return static_cast<SentencePieceProcessor*>(m); }

void* Load(const char* data, size_t size, int from_bytes, char* err, size_t err_size) {
  auto* sp = new SentencePieceProcessor();
  auto st = from_bytes ? sp->LoadFromSerializedProto(std::string(data, size))
                       : sp->Load(std::string(data, size));
  if (!st.ok()) {
    std::snprintf(err, err_size, "%s", st.ToString().c_str());
    delete sp;
    return nullptr;
  }
  return sp;
}

void FreeModel(void* m) { delete P(m); }
int PieceSize(void* m) { return P(m)->GetPieceSize(); }
int SpecialId(void* m, int which) {
  switch (which) {
    case 0: return P(m)->bos_id();
    case 1: return P(m)->eos_id();
    case 2: return P(m)->pad_id();
    default: return P(m)->unk_id();
  }
}
int IsControl(void* m, int id) { return P(m)->IsControl(id) ? 1 : 0; }
int IsUnknown(void* m, int id) { return P(m)->IsUnknown(id) ? 1 : 0; }

long Encode(void* m, const char* text, size_t size, int* ids, size_t cap) {
  std::vector<int> out;
  if (!P(m)->Encode(std::string_view(text, size), &out).ok()) return -1;
  std::memcpy(ids, out.data(), std::min(cap, out.size()) * sizeof(int));
  return static_cast<long>(out.size());
}

const char* IdToPiece(void* m, int id, size_t* size) {
  const std::string& p = P(m)->IdToPiece(id);
  *size = p.size();
  return p.data();
}

int PieceToId(void* m, const char* piece, size_t size) {
  return P(m)->PieceToId(std::string_view(piece, size));
}

long Decode(void* m, const int* ids, size_t n, char* buf, size_t cap) {
  std::string text;
  if (!P(m)->Decode(std::vector<int>(ids, ids + n), &text).ok()) return -1;
  std::memcpy(buf, text.data(), std::min(cap, text.size()));
  return static_cast<long>(text.size());
}

int Train(const char* flags, char* err, size_t err_size) {
  auto st = sentencepiece::SentencePieceTrainer::Train(flags);
  if (!st.ok()) {
    std::snprintf(err, err_size, "%s", st.ToString().c_str());
    return -1;
  }
  return 0;
}

const RmgenSpmApi kApi = {kRmgenSpmApiVersion, Load,   FreeModel, PieceSize, SpecialId, IsControl,
                          IsUnknown,           Encode, IdToPiece, PieceToId, Decode,    Train};

}  // namespace

extern "C" __attribute__((visibility("default"))) const RmgenSpmApi* rmgen_spm_api() {
  return &kApi;
}
