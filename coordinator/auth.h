// Bearer tokens with roles. The coordinator config names a tokens file:
//
//   tokens:
//     - {token: "long-random-string", user: ana, role: submitter}
//     - {token: "...", user: ops, role: operator}
//     - {token: "...", user: node-pool, role: worker}
//
// Calls carry `authorization: Bearer <token>`. No tokens file configured: every caller is
// the operator "local" (for `rmgen local` and loopback-only development; the coordinator
// says so at start-up).
#pragma once

#include <string>
#include <vector>

#include "coordinator/core.h"

namespace rmgen::coord {

class Auth {
 public:
  // Everyone is the operator "local".
  static Auth Open();
  // Reads a tokens file; errors name the file, line and field.
  static StatusOr<Auth> Load(const std::string& path);
  static StatusOr<Auth> Parse(const std::string& yaml, const std::string& source);

  bool open() const { return open_; }
  // From the `authorization` metadata value ("" when absent): UNAUTHENTICATED when missing
  // or unknown.
  StatusOr<Caller> Authenticate(const std::string& authorization) const;

 private:
  struct Entry {
    std::string token;
    Caller caller;
  };
  bool open_ = false;
  std::vector<Entry> entries_;
};

}  // namespace rmgen::coord
