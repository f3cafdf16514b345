#include "coordinator/auth.h"

#include <yaml-cpp/yaml.h>

#include <set>

#include "common/file.h"

namespace rmgen::coord {

namespace {

// Compares without an early exit, so response time does not reveal a matching prefix.
bool SameToken(const std::string& a, const std::string& b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < a.size(); ++i) diff |= a[i] ^ b[i % std::max<size_t>(1, b.size())];
  return diff == 0;
}

Status Unauthenticated(const std::string& m) { return Status(StatusCode::kUnauthenticated, m); }

}  // namespace

Auth Auth::Open() {
  Auth a;
  a.open_ = true;
  return a;
}

StatusOr<Auth> Auth::Load(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  return Parse(text, path);
}

StatusOr<Auth> Auth::Parse(const std::string& yaml, const std::string& source) {
  YAML::Node doc;
  try {
    doc = YAML::Load(yaml);
  } catch (const YAML::Exception& e) {
    return InvalidArgumentError(source + ":" + std::to_string(e.mark.line + 1) +
                                ": not valid YAML: " + e.msg);
  }
  auto err = [&](const YAML::Node& n, const std::string& field, const std::string& what) {
    return InvalidArgumentError(source + ":" + std::to_string(n.Mark().line + 1) + ": field '" +
                                field + "': " + what);
  };
  if (!doc.IsMap() || !doc["tokens"] || !doc["tokens"].IsSequence()) {
    return InvalidArgumentError(source +
                                ": field 'tokens': expected a list of {token, user, role}");
  }
  Auth a;
  std::set<std::string> seen;
  for (size_t i = 0; i < doc["tokens"].size(); ++i) {
    const YAML::Node t = doc["tokens"][i];
    const std::string f = "tokens[" + std::to_string(i) + "]";
    if (!t.IsMap()) return err(t, f, "expected {token, user, role}");
    for (const auto& kv : t) {
      const std::string k = kv.first.Scalar();
      if (k != "token" && k != "user" && k != "role")
        return err(kv.first, f + "." + k, "unknown field");
    }
    for (const char* k : {"token", "user", "role"}) {
      if (!t[k] || !t[k].IsScalar() || t[k].Scalar().empty()) return err(t, f + "." + k, "missing");
    }
    Entry e;
    e.token = t["token"].Scalar();
    e.caller.user = t["user"].Scalar();
    const std::string role = t["role"].Scalar();
    if (role == "submitter") {
      e.caller.role = Role::kSubmitter;
    } else if (role == "operator") {
      e.caller.role = Role::kOperator;
    } else if (role == "worker") {
      e.caller.role = Role::kWorker;
    } else {
      return err(t["role"], f + ".role",
                 "expected submitter, operator or worker, got '" + role + "'");
    }
    if (e.token.size() < 16)
      return err(t["token"], f + ".token", "too short (16 characters at least)");
    if (!seen.insert(e.token).second) return err(t["token"], f + ".token", "used twice");
    a.entries_.push_back(e);
  }
  return a;
}

StatusOr<Caller> Auth::Authenticate(const std::string& authorization) const {
  if (open_) return Caller{"local", Role::kOperator};
  const std::string prefix = "Bearer ";
  if (authorization.empty()) {
    return Unauthenticated(
        "no credentials: send `authorization: Bearer <token>` (rmgen --token-file, "
        "RMGEN_TOKEN, or ~/.config/rmgen/config.yaml)");
  }
  if (authorization.rfind(prefix, 0) != 0) {
    return Unauthenticated("the authorization header must be `Bearer <token>`");
  }
  const std::string token = authorization.substr(prefix.size());
  const Entry* found = nullptr;
  for (const auto& e : entries_) {
    if (SameToken(e.token, token)) found = &e;
  }
  if (!found) return Unauthenticated("unknown token");
  return found->caller;
}

}  // namespace rmgen::coord
