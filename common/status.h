// rmgen::Status and rmgen::StatusOr<T>: the one error type of the project.
//
// Contract: a function that can fail on input (files, specs, records, RPC payloads)
// returns Status or StatusOr<T>; the message names what failed (file, record or line,
// field) and, where the user can fix it, says how (a "HINT:"). Exceptions are used
// only inside torch code (libtorch throws) and are converted to a Status at the
// boundary of the library that catches them. gRPC adapters convert Status to
// grpc::Status; nothing else does.
#pragma once

#include <cstdlib>
#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace rmgen {

enum class StatusCode {
  kOk = 0,
  kInvalidArgument,  // bad input: a malformed file, spec or record
  kNotFound,         // a file, tensor or entity that does not exist
  kAlreadyExists,
  kFailedPrecondition,
  kOutOfRange,
  kDataLoss,  // truncated or corrupt data
  kUnimplemented,
  kInternal,
  kUnavailable,
  kPermissionDenied,
  kUnauthenticated,
  kCancelled,
  kDeadlineExceeded,
  kResourceExhausted,  // a quota or limit reached
};

const char* StatusCodeName(StatusCode code);
// The name of a canonical status code by its number (gRPC's grpc::StatusCode and
// absl::StatusCode number them alike: 0 OK .. 16 UNAUTHENTICATED); nullptr outside 0..16.
const char* CanonicalCodeName(int code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }
  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

  // "INVALID_ARGUMENT: <message>" (or "OK").
  std::string ToString() const;

  // Returns a copy whose message is "<prefix>: <message>", for adding context on the way
  // up ("reading config.json: ...").
  Status WithContext(const std::string& prefix) const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status InvalidArgumentError(std::string m) {
  return Status(StatusCode::kInvalidArgument, std::move(m));
}
inline Status NotFoundError(std::string m) { return Status(StatusCode::kNotFound, std::move(m)); }
inline Status DataLossError(std::string m) { return Status(StatusCode::kDataLoss, std::move(m)); }
inline Status InternalError(std::string m) { return Status(StatusCode::kInternal, std::move(m)); }
inline Status UnimplementedError(std::string m) {
  return Status(StatusCode::kUnimplemented, std::move(m));
}
inline Status FailedPreconditionError(std::string m) {
  return Status(StatusCode::kFailedPrecondition, std::move(m));
}

// A value or the Status saying why there is none.
template <typename T>
class [[nodiscard]] StatusOr {
 public:
  StatusOr(T value) : value_(std::move(value)) {}         // NOLINT: implicit by design
  StatusOr(Status status) : status_(std::move(status)) {  // NOLINT: implicit by design
    if (status_.ok()) status_ = InternalError("StatusOr constructed from an OK status");
  }

  bool ok() const { return status_.ok(); }
  const Status& status() const { return status_; }

  // Precondition: ok(). Calling these on an error aborts with the status message, since
  // it is a programming error, not an input error.
  T& value() & {
    CheckOk();
    return *value_;
  }
  const T& value() const& {
    CheckOk();
    return *value_;
  }
  T&& value() && {
    CheckOk();
    return std::move(*value_);
  }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  void CheckOk() const;
  Status status_;
  std::optional<T> value_;
};

[[noreturn]] void DieWithStatus(const Status& status);

template <typename T>
void StatusOr<T>::CheckOk() const {
  if (!status_.ok()) DieWithStatus(status_);
}

}  // namespace rmgen

#define RMGEN_CONCAT_INNER_(a, b) a##b
#define RMGEN_CONCAT_(a, b) RMGEN_CONCAT_INNER_(a, b)

// Returns the status from the enclosing function when `expr` is not OK.
#define RETURN_IF_ERROR(expr)                      \
  do {                                             \
    ::rmgen::Status rmgen_status_ = (expr);        \
    if (!rmgen_status_.ok()) return rmgen_status_; \
  } while (0)

// `ASSIGN_OR_RETURN(auto x, F())`: assigns the value of F() or returns its status.
#define ASSIGN_OR_RETURN(lhs, expr) \
  ASSIGN_OR_RETURN_IMPL_(RMGEN_CONCAT_(rmgen_statusor_, __LINE__), lhs, expr)
#define ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                           \
  if (!tmp.ok()) return tmp.status();          \
  lhs = std::move(tmp).value()
