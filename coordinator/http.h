// The coordinator's HTTP face, beside gRPC: Prometheus metrics (/metrics, operators), a
// health check (/healthz), and the web dashboard (/: one self-contained page; /api/...:
// JSON read through Core with the caller's rights; operator actions by POST). Auth is the
// gRPC one: `Authorization: Bearer <token>`; no or a wrong token is 401 and reveals nothing.
// TLS with the gRPC server's certificate and key (and client CA) when given.
#pragma once

#include <memory>
#include <string>

#include "common/status.h"
#include "coordinator/auth.h"
#include "coordinator/core.h"

namespace rmgen::coord {

struct HttpOptions {
  std::string listen;             // "host:port"; port 0 picks one
  std::string tls_cert, tls_key;  // PEM files: HTTPS when both are set
  std::string tls_client_ca;      // PEM: require client certificates signed by it
  std::string output_root;        // for job log lines (as GetLogs reads them)
};

class HttpServer {
 public:
  // Binds and starts serving on its own threads; errors name the address.
  static StatusOr<std::unique_ptr<HttpServer>> Start(Core* core, const Auth* auth,
                                                     const HttpOptions& options);
  ~HttpServer();
  int port() const { return port_; }
  void Stop();

 private:
  HttpServer() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int port_ = 0;
};

// The dashboard page (coordinator/dashboard/index.html, embedded at build time).
extern const char* const kDashboardHtml;

}  // namespace rmgen::coord
