// C interface of librmgen_spm.so, the only code that links libsentencepiece.
//
// Why a shim: Debian's libsentencepiece exports its own bundled copy of protobuf-lite.
// In a process that also loads libprotobuf (libtorch does), whichever copy the dynamic
// linker finds first serves both, and the process crashes at start-up. The tokenizer
// therefore loads this shim with dlmopen(LM_ID_NEWLM): a link-map namespace of its own,
// where sentencepiece binds to its own protobuf (and its own C++ runtime), and nothing of
// it enters the process's global symbol scope. Only plain C types cross this interface.
#pragma once

#include <cstddef>

extern "C" {

struct RmgenSpmApi {
  int version;  // kRmgenSpmApiVersion
  // Loads a model from a file (from_bytes = 0) or serialized bytes. Returns a handle, or
  // null with a message in err.
  void* (*load)(const char* data, size_t size, int from_bytes, char* err, size_t err_size);
  void (*free_model)(void* model);
  int (*piece_size)(void* model);
  int (*special_id)(void* model, int which);  // 0 bos, 1 eos, 2 pad, 3 unk
  int (*is_control)(void* model, int id);
  int (*is_unknown)(void* model, int id);
  // Encodes text; writes up to `cap` ids and returns how many there are (call again with a
  // larger buffer when the return value exceeds cap). Negative on error.
  long (*encode)(void* model, const char* text, size_t size, int* ids, size_t cap);
  // The piece of an id; valid until the model is freed.
  const char* (*id_to_piece)(void* model, int id, size_t* size);
  int (*piece_to_id)(void* model, const char* piece, size_t size);
  // Decodes ids into buf (up to cap bytes); returns the full length, negative on error.
  long (*decode)(void* model, const int* ids, size_t n, char* buf, size_t cap);
  // Trains a model with SentencePieceTrainer flags ("--input=... --model_prefix=...").
  // Returns 0, or -1 with a message in err.
  int (*train)(const char* flags, char* err, size_t err_size);
};

inline constexpr int kRmgenSpmApiVersion = 2;

const RmgenSpmApi* rmgen_spm_api();
}
