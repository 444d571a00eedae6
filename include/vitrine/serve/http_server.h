// The HTTP/1.1 + JSON face of the service (cpp-httplib): routes, API keys and scopes, rate
// limits, body and pixel limits, errors as {"error": {"code", "message"}}, an access log
// without image data or keys, Prometheus metrics, graceful shutdown.
#pragma once

#include "vitrine/serve/auth.h"
#include "vitrine/serve/metrics.h"
#include "vitrine/serve/service.h"

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

namespace httplib {
class Server;
}

namespace vitrine::serve {

struct HttpOptions {
  std::string host = "127.0.0.1";
  int port = 8080;                      ///< 0: any free port (see HttpServer::port())
  std::string tls_cert, tls_key;        ///< both set: HTTPS
  std::string api_keys_file;            ///< empty: no authentication
  double rate_limit = 0;                ///< requests per second per key (0: none)
  double rate_burst = 20;
  int64_t max_body_bytes = 20 << 20;    ///< larger bodies: 413
  int threads = 64;                     ///< connections handled at once (>= max batch)
  bool access_log = true;
};

class HttpServer {
 public:
  HttpServer(Service& service, std::shared_ptr<Metrics> metrics, HttpOptions options);
  ~HttpServer();
  /// Binds the port (throws vitrine::Error when it cannot) and returns it.
  int bind();
  int port() const { return port_; }
  /// Serves until stop(); returns once in-flight requests are answered.
  void run();
  /// Stops accepting connections; requests being handled finish.
  void stop();

 private:
  void routes();
  Service& service_;
  std::shared_ptr<Metrics> metrics_;
  HttpOptions options_;
  std::optional<KeyStore> keys_;
  RateLimiter limiter_;
  std::unique_ptr<httplib::Server> server_;
  int port_ = 0;
  int listen_fd_ = -1;  ///< the listening socket, seen when httplib creates it
};

}  // namespace vitrine::serve
