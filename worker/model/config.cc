#include "worker/model/config.h"

namespace rmgen {
namespace {

using nlohmann::json;

class FieldReader {
 public:
  FieldReader(const json& j, const std::string& source) : j_(j), source_(source) {}

  Status Error(const std::string& field, const std::string& what) const {
    return InvalidArgumentError(source_ + ": field '" + field + "': " + what);
  }

  // Reads a positive integer; `required` fields must be present.
  Status PositiveInt(const char* field, bool required, int64_t* out) const {
    auto it = j_.find(field);
    if (it == j_.end() || it->is_null()) {
      return required ? Error(field, "missing (expected a positive integer)") : Status::Ok();
    }
    if (!it->is_number_integer()) return Error(field, "expected an integer, got " + Dump(*it));
    int64_t v = it->get<int64_t>();
    if (v <= 0) return Error(field, "expected a positive integer, got " + std::to_string(v));
    *out = v;
    return Status::Ok();
  }

  Status PositiveNumber(const char* field, double* out) const {
    auto it = j_.find(field);
    if (it == j_.end() || it->is_null()) return Status::Ok();
    if (!it->is_number()) return Error(field, "expected a number, got " + Dump(*it));
    double v = it->get<double>();
    if (!(v > 0)) return Error(field, "expected a positive number, got " + Dump(*it));
    *out = v;
    return Status::Ok();
  }

  Status Bool(const char* field, bool* out) const {
    auto it = j_.find(field);
    if (it == j_.end() || it->is_null()) return Status::Ok();
    if (!it->is_boolean()) return Error(field, "expected true or false, got " + Dump(*it));
    *out = it->get<bool>();
    return Status::Ok();
  }

  // A token id; Llama-3 style lists are accepted and their first id used.
  Status TokenId(const char* field, int64_t* out) const {
    auto it = j_.find(field);
    if (it == j_.end() || it->is_null()) return Status::Ok();
    const json* v = &*it;
    if (v->is_array()) {
      if (v->empty()) return Status::Ok();
      v = &(*v)[0];
    }
    if (!v->is_number_integer() || v->get<int64_t>() < 0) {
      return Error(field, "expected a non-negative token id, got " + Dump(*it));
    }
    *out = v->get<int64_t>();
    return Status::Ok();
  }

  Status String(const char* field, std::string* out) const {
    auto it = j_.find(field);
    if (it == j_.end() || it->is_null()) return Status::Ok();
    if (!it->is_string()) return Error(field, "expected a string, got " + Dump(*it));
    *out = it->get<std::string>();
    return Status::Ok();
  }

 private:
  static std::string Dump(const json& v) {
    std::string s = v.dump();
    return s.size() > 60 ? s.substr(0, 60) + "..." : s;
  }
  const json& j_;
  const std::string& source_;
};

bool KnownActivation(const std::string& a) {
  return a == "silu" || a == "gelu_pytorch_tanh" || a == "gelu" || a == "gelu_new";
}

}  // namespace

StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text, const std::string& source) {
  json j = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return InvalidArgumentError(source + ": not valid JSON");
  if (!j.is_object()) return InvalidArgumentError(source + ": expected a JSON object");
  FieldReader r(j, source);
  ModelConfig c;
  c.raw = j;

  std::string model_type;
  RETURN_IF_ERROR(r.String("model_type", &model_type));
  if (model_type.empty())
    return r.Error("model_type", "missing (expected llama, mistral or gemma)");
  auto family = FamilyFromModelType(model_type);
  if (!family.ok()) return r.Error("model_type", family.status().message());
  c.family = *family;
  const FamilyTraits traits = TraitsOf(c.family);

  RETURN_IF_ERROR(r.PositiveInt("vocab_size", true, &c.vocab_size));
  RETURN_IF_ERROR(r.PositiveInt("hidden_size", true, &c.hidden_size));
  RETURN_IF_ERROR(r.PositiveInt("intermediate_size", true, &c.intermediate_size));
  RETURN_IF_ERROR(r.PositiveInt("num_hidden_layers", true, &c.num_layers));
  RETURN_IF_ERROR(r.PositiveInt("num_attention_heads", true, &c.num_heads));
  c.num_kv_heads = c.num_heads;
  RETURN_IF_ERROR(r.PositiveInt("num_key_value_heads", false, &c.num_kv_heads));
  if (c.num_heads % c.num_kv_heads != 0) {
    return r.Error("num_key_value_heads",
                   "must divide num_attention_heads (" + std::to_string(c.num_heads) + ")");
  }
  c.head_dim = 0;
  RETURN_IF_ERROR(r.PositiveInt("head_dim", false, &c.head_dim));
  if (c.head_dim == 0) {
    if (c.hidden_size % c.num_heads != 0) {
      return r.Error("head_dim",
                     "missing, and hidden_size is not divisible by "
                     "num_attention_heads");
    }
    c.head_dim = c.hidden_size / c.num_heads;
  }
  if (c.head_dim % 2 != 0) return r.Error("head_dim", "must be even for rotary embeddings");
  RETURN_IF_ERROR(r.PositiveNumber("rms_norm_eps", &c.rms_norm_eps));
  RETURN_IF_ERROR(r.PositiveNumber("rope_theta", &c.rope_theta));
  RETURN_IF_ERROR(r.PositiveInt("max_position_embeddings", false, &c.max_position_embeddings));
  RETURN_IF_ERROR(r.PositiveNumber("initializer_range", &c.initializer_range));
  c.tie_word_embeddings = traits.default_tied_embeddings;
  RETURN_IF_ERROR(r.Bool("tie_word_embeddings", &c.tie_word_embeddings));
  RETURN_IF_ERROR(r.Bool("attention_bias", &c.attention_bias));
  if (auto it = j.find("rope_scaling"); it != j.end() && !it->is_null()) {
    return r.Error("rope_scaling", "RoPE scaling is not supported; expected null");
  }
  if (traits.has_sliding_window) {
    RETURN_IF_ERROR(r.PositiveInt("sliding_window", false, &c.sliding_window));
  }

  // Activation. Gemma reads `hidden_activation` and, like transformers, uses the tanh
  // GELU when it is absent (its configs say "gelu" in hidden_act but mean tanh).
  std::string act;
  if (c.family == Family::kGemma) {
    RETURN_IF_ERROR(r.String("hidden_activation", &act));
    if (act.empty()) act = traits.default_activation;
  } else {
    RETURN_IF_ERROR(r.String("hidden_act", &act));
    if (act.empty()) act = traits.default_activation;
  }
  if (!KnownActivation(act)) {
    return r.Error(c.family == Family::kGemma ? "hidden_activation" : "hidden_act",
                   "unsupported activation '" + act +
                       "' (supported: silu, gelu_pytorch_tanh, gelu, gelu_new)");
  }
  c.activation = act;

  RETURN_IF_ERROR(r.TokenId("bos_token_id", &c.bos_token_id));
  RETURN_IF_ERROR(r.TokenId("eos_token_id", &c.eos_token_id));
  RETURN_IF_ERROR(r.TokenId("pad_token_id", &c.pad_token_id));

  // Reward model or causal LM: from the architecture, then num_labels / id2label.
  bool reward = false;
  if (auto it = j.find("architectures");
      it != j.end() && it->is_array() && !it->empty() && (*it)[0].is_string()) {
    reward = (*it)[0].get<std::string>().find("ForSequenceClassification") != std::string::npos;
  }
  if (reward) {
    int64_t labels = 0;
    if (auto it = j.find("id2label"); it != j.end() && it->is_object()) labels = it->size();
    RETURN_IF_ERROR(r.PositiveInt("num_labels", false, &labels));
    if (labels == 0) labels = 2;  // transformers' default when nothing is said
    if (labels != 1) {
      return r.Error("num_labels",
                     "a reward model needs exactly 1 label, got " + std::to_string(labels));
    }
    c.num_labels = 1;
  }
  return c;
}

nlohmann::json ModelConfigToJson(const ModelConfig& c, bool reward_head,
                                 const std::string& torch_dtype) {
  json j = c.raw.is_object() ? c.raw : json::object();
  j["model_type"] = FamilyModelType(c.family);
  j["architectures"] = json::array({HfArchitecture(c.family, reward_head)});
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_layers;
  j["num_attention_heads"] = c.num_heads;
  j["num_key_value_heads"] = c.num_kv_heads;
  j["head_dim"] = c.head_dim;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["rope_theta"] = c.rope_theta;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["initializer_range"] = c.initializer_range;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["attention_bias"] = c.attention_bias;
  j["rope_scaling"] = nullptr;
  if (c.family == Family::kGemma) {
    j["hidden_activation"] = c.activation;
    if (!j.contains("hidden_act")) j["hidden_act"] = c.activation;
  } else {
    j["hidden_act"] = c.activation;
  }
  if (TraitsOf(c.family).has_sliding_window) {
    j["sliding_window"] = c.sliding_window > 0 ? json(c.sliding_window) : json(nullptr);
  }
  if (c.bos_token_id >= 0 && !j.contains("bos_token_id")) j["bos_token_id"] = c.bos_token_id;
  if (c.eos_token_id >= 0 && !j.contains("eos_token_id")) j["eos_token_id"] = c.eos_token_id;
  if (c.pad_token_id >= 0) j["pad_token_id"] = c.pad_token_id;
  j["torch_dtype"] = torch_dtype;
  if (reward_head) {
    j["num_labels"] = 1;
    j["id2label"] = {{"0", "LABEL_0"}};
    j["label2id"] = {{"LABEL_0", 0}};
  } else {
    j.erase("num_labels");
    j.erase("id2label");
    j.erase("label2id");
  }
  return j;
}

}  // namespace rmgen
