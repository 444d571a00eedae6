// The HTTP/1.1 + JSON face of the service (cpp-httplib): routes, API keys and scopes, rate
// limits, body and pixel limits, errors as {"error": {"code", "message"}}, an access log
// without image data or keys, Prometheus metrics, graceful shutdown.
#pragma once

#include "vitrine/serve/auth.h"
#include "vitrine/serve/metrics.h"
#include "vitrine/serve/service.h"

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

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
  /// Throws vitrine::Error for a key file or TLS files that cannot be used: cheap checks to
  /// run before the model is loaded.
  static void check(const HttpOptions& options);
  HttpServer(Service& service, std::shared_ptr<Metrics> metrics, HttpOptions options);
  ~HttpServer();
  /// Binds the port (throws vitrine::Error when it cannot) and returns it.
  int bind();
  int port() const { return port_; }
  /// Serves until stop(); returns once in-flight requests are answered.
  void run();
  /// Stops accepting connections; requests being handled finish. Safe from another thread at
  /// any time, also before run() has begun (run() then returns at once).
  void stop();
  /// Reads --api-keys again (on SIGHUP): added keys work and removed ones are refused from
  /// the next request on. A file that cannot be read or parsed keeps the keys in use and
  /// throws vitrine::Error naming the problem. Without --api-keys it does nothing.
  void reload_keys();

 private:
  struct RouteEntry;
  void routes();
  /// The methods the routes matching `path` take ("GET, PUT"), or "" for none.
  std::string allowed_methods(const std::string& path) const;
  /// The route `path` belongs to, as the metrics name it ("other" for none: client paths are
  /// not label values, or a scan of random paths would grow the metrics without bound).
  std::string route_name(const std::string& path) const;
  Service& service_;
  std::shared_ptr<Metrics> metrics_;
  HttpOptions options_;
  /// The keys in use, swapped whole by reload_keys(); null without --api-keys.
  std::shared_ptr<const KeyStore> keys() const;
  std::shared_ptr<const KeyStore> keys_;
  mutable std::mutex keys_mu_;
  /// Listening on the loopback only (and without keys, requests must name it as their Host).
  bool loopback_only_ = false;
  RateLimiter limiter_;
  std::unique_ptr<httplib::Server> server_;
  int port_ = 0;
  int listen_fd_ = -1;  ///< the listening socket, seen when httplib creates it
  std::atomic<bool> stop_asked_{false};
  std::atomic<bool> running_{false};  ///< inside run()
  std::vector<RouteEntry> table_;  ///< every route, in registration order (set up once)
};

}  // namespace vitrine::serve
