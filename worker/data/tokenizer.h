// SentencePiece tokenizer (`tokenizer.model` of Llama, Mistral and Gemma checkpoints).
//
// Special tokens: every control and unknown piece of the model (for example <s>, </s>,
// <unk>, <bos>, <eos>, <pad>) is special. EncodeWithSpecials() treats the text of a
// special piece as that token, and encodes each stretch of text between them on its own,
// exactly as Hugging Face tokenizers do with added tokens (each stretch gets
// SentencePiece's dummy-prefix "▁" when the model asks for one; this is transformers'
// `legacy=True` behaviour, the one the Mistral and Zephyr checkpoints ship with).
// User-defined pieces (Gemma's <start_of_turn>, <end_of_turn>) need no splitting:
// SentencePiece itself always encodes their text as the one piece.
//
// Thread safety: const methods may be called concurrently. No torch here.
// SentencePiece itself is reached through librmgen_spm.so (spm_shim.h explains why).
#pragma once

#include <array>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

struct RmgenSpmApi;

namespace rmgen {

class Tokenizer {
 public:
  // Loads a SentencePiece model file. Errors name the file.
  static StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& path);
  // Loads from the serialized model proto (for tests that train a model in memory).
  static StatusOr<std::unique_ptr<Tokenizer>> FromSerialized(const std::string& bytes,
                                                             const std::string& name);
  ~Tokenizer();

  // Trains a SentencePiece model (SentencePieceTrainer flags, e.g. "--input=corpus.txt
  // --model_prefix=DIR/tokenizer --vocab_size=300"); writes <model_prefix>.model.
  static Status Train(const std::string& flags);

  // Encodes text as SentencePiece does; special-token text is not recognised and nothing
  // is added.
  std::vector<int> EncodePlain(std::string_view text) const;
  // Encodes text in which special pieces stand for their token (see the file comment).
  std::vector<int> EncodeWithSpecials(std::string_view text) const;
  // EncodeWithSpecials of everything before the stretch of plain text that ends `text`;
  // *tail gets that stretch's offset. EncodeWithSpecials(text) equals the result followed
  // by EncodePlain(text.substr(*tail)), and so does EncodeWithSpecials(text + more) with
  // EncodePlain(text.substr(*tail) + more) when `more` holds no special piece: a prompt's
  // head is encoded once for both responses of a pair.
  std::vector<int> EncodeHeadWithSpecials(std::string_view text, size_t* tail) const;
  // Whether `text` contains the text of a special piece.
  bool ContainsSpecial(std::string_view text) const;

  std::string IdToPiece(int id) const;
  // The id of a piece that is in the vocabulary, or nullopt.
  std::optional<int> PieceToId(std::string_view piece) const;
  std::string Decode(const std::vector<int>& ids) const;

  int vocab_size() const;
  int bos_id() const { return bos_id_; }  // -1 when the model has none
  int eos_id() const { return eos_id_; }
  int pad_id() const { return pad_id_; }
  int unk_id() const { return unk_id_; }
  const std::string& name() const { return name_; }
  // The special pieces, longest first (the order used for matching).
  const std::vector<std::string>& special_pieces() const { return specials_; }

 private:
  Tokenizer() = default;
  // Length of the special piece at text[i], and its id; 0 when none starts there.
  size_t MatchSpecial(std::string_view text, size_t i, int* id) const;
  static StatusOr<std::unique_ptr<Tokenizer>> Create(const std::string& data, bool from_bytes,
                                                     const std::string& name);

  const RmgenSpmApi* api_ = nullptr;
  void* sp_ = nullptr;  // the shim's model handle (see spm_shim.h)
  std::string name_;
  std::vector<std::string> specials_;
  std::vector<int> special_ids_;                // parallel to specials_
  std::array<bool, 256> special_first_byte_{};  // bytes some special piece starts with
  int bos_id_ = -1, eos_id_ = -1, pad_id_ = -1, unk_id_ = -1;
};

}  // namespace rmgen
