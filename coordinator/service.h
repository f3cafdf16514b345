// The gRPC face of Core: rmgen.v1.Coordinator and rmgen.v1.WorkerService, authenticated
// per call with Auth, errors mapped to gRPC codes with the Status message as the text.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "coordinator/auth.h"
#include "coordinator/core.h"

namespace rmgen::coord {

grpc::Status ToGrpc(const Status& s);

struct ServerOptions {
  std::string listen = "127.0.0.1:7070";  // explicit address; loopback by default
  std::string tls_cert, tls_key;          // PEM files: TLS when both are set
  std::string tls_client_ca;              // PEM: require client certificates signed by it
  int64_t tick_ms = 500;                  // lease and dependency housekeeping period
};

// A running coordinator server (gRPC services + the housekeeping thread).
class Server {
 public:
  static StatusOr<std::unique_ptr<Server>> Start(Core* core, const Auth* auth,
                                                 const ServerOptions& options);
  ~Server();
  int port() const { return port_; }
  void Shutdown();
  void Wait();

 private:
  Server() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int port_ = 0;
};

}  // namespace rmgen::coord
