#include "vitrine/serve/http_server.h"

#include "vitrine/core/base64.h"
#include "vitrine/core/error.h"
#include "vitrine/core/fs.h"
#include "vitrine/core/hash.h"
#include "vitrine/core/json.h"
#include "vitrine/image/decode.h"
#include "vitrine/search/catalog.h"
#include "vitrine/search/json.h"

#include <httplib.h>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <optional>
#include <regex>
#include <set>
#include <system_error>
#include <thread>
#include <utility>
#include <sys/socket.h>

// The web page, embedded at build time (cmake/embed.cmake).
extern const unsigned char kWebIndex[];
extern const std::size_t kWebIndex_size;
extern const unsigned char kOpenApiJson[];  // docs/openapi.json
extern const std::size_t kOpenApiJson_size;

namespace vitrine::serve {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

void send_json(httplib::Response& res, int status, const json& body) {
  res.status = status;
  // json_text: a message may quote the client's bytes (a bad base64 character, a SKU),
  // which need not be UTF-8.
  res.set_content(json_text(body), "application/json");
}

void send_error(httplib::Response& res, int status, const std::string& code,
                const std::string& message) {
  send_json(res, status, {{"error", {{"code", code}, {"message", message}}}});
}

/// The scope a route needs ("" for public ones).
std::string scope_for(const httplib::Request& req) {
  const std::string& p = req.path;
  if (p == "/healthz" || p == "/readyz" || p == "/openapi.json" || p == "/") return "";  // the page asks for a key itself
  if (p.rfind("/v1/admin/", 0) == 0) return "admin";
  if (p.rfind("/v1/products", 0) == 0 && req.method != "GET" && req.method != "HEAD") {
    return "write";
  }
  return "read";
}


/// Products, and photos in all, one POST /v1/products may store: each photo is a forward pass
/// and the answer a line per product, so a 20 MB array of 10 million entries is refused
/// before any work.
constexpr size_t kMaxProductsPerRequest = 1000;
constexpr size_t kMaxImagesPerRequest = 1000;
/// Arrays and objects one request body may hold: 1,000 products with their attributes need
/// some thousands; 20 MB of "[{},{},...]" would cost half a gigabyte to parse.
constexpr int64_t kMaxRequestContainers = 100'000;

/// The key of the request this server thread is answering (httplib runs a request's
/// pre-routing, handler and logger on one thread), for the access log.
thread_local std::string t_key_name;

/// The status of a refusal (401, 403, 429) the pre-routing handler wrote into the response
/// of the request this thread is answering, 0 for none. httplib still reads that request's
/// body, which a client on a kept-alive connection sends anyway: left unread, it would be
/// taken for the next request on the connection. The route then leaves the answer as is.
thread_local int t_refused = 0;

/// When pre-routing began for the request this thread is answering (its headers read, its
/// body not yet), for the access log's latency. Unset for a request httplib refused itself.
thread_local std::optional<Clock::time_point> t_started;

/// Now in UTC as ISO 8601 with milliseconds ("2026-12-07T16:53:49.123Z"): the access log's
/// lines carry their own time, whatever the log's collector adds.
std::string utc_now_ms() {
  const auto now = std::chrono::system_clock::now();
  const auto t = std::chrono::system_clock::to_time_t(now);
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                      now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[40];
  const size_t n = std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  std::snprintf(buf + n, sizeof buf - n, ".%03dZ", static_cast<int>(ms));
  return buf;
}

/// The image of a request: the raw body (image/* or octet-stream), the multipart field
/// "image", or base64 in a JSON body's "image".
std::string image_of(const httplib::Request& req, const json* body) {
  if (req.is_multipart_form_data()) {
    if (!req.has_file("image")) throw ServiceError(400, "no_image", "multipart body without an \"image\" field");
    return req.get_file_value("image").content;
  }
  if (body) {
    if (!body->contains("image") || !(*body)["image"].is_string()) {
      throw ServiceError(400, "no_image", "the JSON body needs \"image\": a base64 string");
    }
    try {
      const auto bytes = base64_decode((*body)["image"].get<std::string>());
      return std::string(bytes.begin(), bytes.end());
    } catch (const Error& e) {
      throw ServiceError(400, "bad_base64", e.what());
    }
  }
  if (req.body.empty()) {
    throw ServiceError(400, "no_image", "send the image as the body (Content-Type image/jpeg, "
                                        "...), as multipart field \"image\", or as base64 JSON");
  }
  return req.body;
}

/// `s` in ASCII lower case (header values and names compare case-insensitively).
std::string lowered(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

/// Whether a Host header names this machine's loopback: localhost, 127.0.0.1 or [::1], with
/// or without a port.
bool is_local_host(const std::string& host) {
  const std::string name = lowered(!host.empty() && host.front() == '['
                                       ? host.substr(0, host.find(']') + 1)
                                       : host.substr(0, host.find(':')));
  return name == "localhost" || name == "127.0.0.1" || name == "[::1]";
}

/// The request's media type: Content-Type without its parameters (charset=...), lowered.
std::string media_type(const httplib::Request& req) {
  std::string type = lowered(req.get_header_value("Content-Type"));
  type = type.substr(0, type.find(';'));
  while (!type.empty() && (type.back() == ' ' || type.back() == '\t')) type.pop_back();
  return type;
}

/// Whether the body is declared JSON (media types compare case-insensitively).
bool is_json_type(const httplib::Request& req) { return media_type(req) == "application/json"; }

/// The request's body parsed as JSON; 400 bad_json where it is not.
json parsed_body(const httplib::Request& req) {
  try {
    return parse_json(req.body, "the request body", kMaxRequestContainers);
  } catch (const Error& e) {
    throw ServiceError(400, "bad_json", e.what());
  }
}

/// A JSON body when the request has one (Content-Type application/json).
std::optional<json> json_body(const httplib::Request& req) {
  if (!is_json_type(req) || req.body.empty()) {
    return std::nullopt;
  }
  const json body = parsed_body(req);
  if (!body.is_object()) throw ServiceError(400, "bad_json", "the body is not a JSON object");
  return body;
}

/// Refuses query parameters, JSON body members and multipart fields a route does not read:
/// a misspelt one would otherwise be ignored and the answer look right.
void check_parameters(const httplib::Request& req, const json* body,
                      std::initializer_list<const char*> known) {
  auto listed = [&] {
    std::string out;
    for (const char* k : known) out += (out.empty() ? "" : ", ") + std::string(k);
    return out.empty() ? std::string("none") : out;
  };
  auto is_known = [&](const std::string& name) {
    return std::any_of(known.begin(), known.end(), [&](const char* k) { return name == k; });
  };
  // Names from the query string only (decoded as httplib decodes them): httplib would also
  // parse a form-encoded body into params.
  const auto q = req.target.find('?');
  httplib::Params query;
  if (q != std::string::npos) httplib::detail::parse_query_text(req.target.substr(q + 1), query);
  for (const auto& [name, value] : query) {
    if (name == "image") {  // read from the body only: a query's image was ignored
      throw ServiceError(400, "unknown_parameter",
                         "the photo goes in the body (raw bytes, a multipart field 'image' or a "
                         "JSON member \"image\"), not in the query string");
    }
    if (!is_known(name)) {
      throw ServiceError(400, "unknown_parameter",
                         "unknown parameter '" + name + "'; this route reads: " + listed());
    }
    // One value a parameter: of two, which one counted was a guess. Filters add up (all
    // must hold), from the query string and the body alike.
    const bool adds_up = name == "filter" || name == "filters";
    if (!adds_up && query.count(name) > 1) {
      throw ServiceError(400, "bad_parameter", "'" + name + "' is given " +
                                                   std::to_string(query.count(name)) +
                                                   " times in the query string; give it once");
    }
    if (!adds_up && body && body->is_object() && body->contains(name)) {
      throw ServiceError(400, "bad_parameter", "'" + name + "' is given both in the query "
                                               "string and in the JSON body; give it once");
    }
  }
  if (body && body->is_object()) {
    for (const auto& [name, value] : body->items()) {
      if (!is_known(name)) {
        throw ServiceError(400, "unknown_parameter",
                           "unknown member '" + name + "'; this route reads: " + listed());
      }
    }
  }
  if (req.files.count("image") > 1) {
    throw ServiceError(400, "bad_parameter", "the multipart body has " +
                                                 std::to_string(req.files.count("image")) +
                                                 " 'image' fields; send one photo a request");
  }
  for (const auto& [name, file] : req.files) {
    if (name != "image") {
      throw ServiceError(400, "unknown_parameter",
                         "multipart field '" + name + "' is not read: send the photo as the "
                         "field 'image' and parameters in the query string");
    }
  }
}

/// An integer parameter from the JSON body or the query string, within [lo, hi].
int64_t int_param(const httplib::Request& req, const json* body, const char* name, int64_t fallback,
                  int64_t lo, int64_t hi) {
  int64_t v = fallback;
  if (body && body->contains(name)) {
    if (!(*body)[name].is_number_integer()) {
      throw ServiceError(400, "bad_parameter", std::string(name) + " must be an integer");
    }
    v = (*body)[name].get<int64_t>();
  } else if (req.has_param(name)) {
    try {
      size_t used = 0;
      const std::string text = req.get_param_value(name);
      v = std::stoll(text, &used);
      if (used != text.size()) throw std::invalid_argument(name);
    } catch (const std::exception&) {
      throw ServiceError(400, "bad_parameter", std::string(name) + " must be an integer");
    }
  }
  if (v < lo || v > hi) {
    throw ServiceError(400, "bad_parameter", std::string(name) + " must be in " +
                                                 std::to_string(lo) + ".." + std::to_string(hi));
  }
  return v;
}

/// A boolean parameter from the JSON body (true/false) or the query string (true/false/1/0).
bool bool_param(const httplib::Request& req, const json* body, const char* name) {
  if (body && body->contains(name)) {
    if (!(*body)[name].is_boolean()) {
      throw ServiceError(400, "bad_parameter", std::string(name) + " must be true or false");
    }
    return (*body)[name].get<bool>();
  }
  if (!req.has_param(name)) return false;
  const std::string v = req.get_param_value(name);
  if (v == "true" || v == "1") return true;
  if (v == "false" || v == "0") return false;
  throw ServiceError(400, "bad_parameter", std::string(name) + " must be true or false");
}

/// Where the service serves a product's i-th photo (the SKU percent-encoded). Answers name
/// photos by these URLs, never by the server's file paths.
std::string image_url(const std::string& sku, size_t i) {
  static const char* const kHex = "0123456789ABCDEF";
  std::string out = "/v1/products/";
  for (const unsigned char c : sku) {
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out + "/images/" + std::to_string(i);
}

/// A product sent to the service, with its photos (path, PNG bytes) still to be written.
struct StoredProduct {
  search::ProductUpdate update;
  std::vector<std::pair<std::string, std::string>> photos;
};

/// A product checked and its photos decoded from base64, not yet embedded.
struct PendingProduct {
  StoredProduct stored;
  std::vector<std::string> encoded;  ///< each photo's file bytes
};

/// One photo through the model, or why not.
struct EmbeddedPhoto {
  Inference out;
  StoredPhoto photo;  ///< stored again as decoded: without the file's metadata
  std::exception_ptr error;
};

/// Embeds the photos through the service's batcher together: up to a batch of them in
/// flight at once, each from its own thread (decoding too), so that they share forward
/// passes instead of taking one each. Each photo's answer or error, in order.
std::vector<EmbeddedPhoto> embed_all(Service& service,
                                     const std::vector<const std::string*>& encoded) {
  std::vector<EmbeddedPhoto> out(encoded.size());
  // At most half the queue at once: other requests keep room in it.
  const auto& o = service.options();
  const size_t wave =
      static_cast<size_t>(std::max<int64_t>(1, std::min(o.max_batch, o.queue_capacity / 2)));
  const auto embed = [&service, &out, &encoded](size_t i) {
    try {
      out[i].out = service.infer(*encoded[i], 1, &out[i].photo);  // refuses bad images
    } catch (...) {
      out[i].error = std::current_exception();
    }
  };
  for (size_t begin = 0; begin < encoded.size(); begin += wave) {
    const size_t end = std::min(encoded.size(), begin + wave);
    std::vector<std::thread> threads;
    for (size_t i = begin; i < end; ++i) {
      try {
        threads.emplace_back(embed, i);
      } catch (const std::system_error&) {  // no thread to be had: this one here, alone
        embed(i);
      }
    }
    for (auto& t : threads) t.join();
  }
  return out;
}

/// A product with the URLs of its stored images, as the product routes answer.
json product_with_images(const search::Product& p) {
  json j = search::product_json(p);
  json urls = json::array();
  for (size_t i = 0; i < p.images.size(); ++i) urls.push_back(image_url(p.sku, i));
  j["images"] = urls;
  return j;
}

/// Refuses a product body that is not an object, members no product has, and a SKU the URL
/// cannot name or the body contradicts.
void check_product_members(const std::string& sku, const json& p) {
  if (!p.is_object()) throw ServiceError(400, "bad_product", "a product is a JSON object");
  if (const std::string problem = search::sku_problem(sku); !problem.empty()) {
    throw ServiceError(400, "bad_sku", problem);
  }
  for (const auto& [name, value] : p.items()) {
    static const char* const kFields[] = {"sku",    "title",      "category", "price",
                                          "brand",  "seller",     "attributes", "images"};
    if (std::find(std::begin(kFields), std::end(kFields), name) == std::end(kFields)) {
      throw ServiceError(400, "unknown_parameter",
                         "unknown product member '" + name + "' (title, category, price, "
                         "brand, seller, attributes, images; other facts go in attributes)");
    }
  }
  if (p.contains("sku") && p["sku"] != sku) {
    throw ServiceError(400, "bad_sku", "the body's sku differs from the one in the URL");
  }
}

/// Reads a product's details (all but its photos) from a body into `p`: a member left out
/// keeps p's value, null clears it. `attributes` replaces p's, or with `merge` is merged into
/// them as a JSON merge patch (RFC 7396: an attribute set to null is removed).
void read_details(const json& body, search::Product& p, bool merge) {
  const auto text = [&body](const char* k, std::string& field) {
    if (!body.contains(k)) return;
    if (body[k].is_null()) {
      field.clear();
    } else if (body[k].is_string()) {
      field = body[k].get<std::string>();
    } else {
      throw ServiceError(400, "bad_product", std::string(k) + " must be a string");
    }
  };
  text("title", p.title);
  text("category", p.category);
  text("brand", p.brand);
  text("seller", p.seller);
  if (body.contains("price")) {
    const json& price = body["price"];
    if (price.is_null()) {
      p.price.reset();
    } else if (!price.is_number()) {
      throw ServiceError(400, "bad_product", "price must be a number");
    } else if (price.get<double>() < 0) {
      throw ServiceError(400, "bad_product", "price must not be negative");
    } else {
      p.price = price.get<double>();
    }
  }
  if (body.contains("attributes")) {
    const json& given = body["attributes"];
    if (given.is_null()) {
      p.attributes = "{}";
    } else if (!given.is_object()) {
      throw ServiceError(400, "bad_product", "attributes must be a JSON object");
    } else if (merge) {
      json stored = json::parse(p.attributes, nullptr, /*allow_exceptions=*/false);
      if (!stored.is_object()) stored = json::object();
      stored.merge_patch(given);
      p.attributes = stored.dump();
    } else {
      p.attributes = given.dump();
    }
  }
}

/// The photos of a body's `images` (base64), decoded: one at least, kMaxImagesPerProduct at
/// most, a bad one named by its position.
std::vector<std::string> decode_photos(const json& p) {
  if (!p.contains("images") || !p["images"].is_array() || p["images"].empty()) {
    throw ServiceError(400, "bad_product", "images: a non-empty array of base64 images");
  }
  if (p["images"].size() > search::kMaxImagesPerProduct) {
    throw ServiceError(400, "bad_product", "images: at most " +
                       std::to_string(search::kMaxImagesPerProduct) + " a product, got " +
                       std::to_string(p["images"].size()));
  }
  std::vector<std::string> encoded;
  for (size_t at = 0; at < p["images"].size(); ++at) {
    const json& img = p["images"][at];
    const std::string which = "images[" + std::to_string(at) + "]: ";  // names the bad one
    if (!img.is_string()) throw ServiceError(400, "bad_product", which + "not a base64 string");
    try {
      const auto bytes = base64_decode(img.get<std::string>());
      encoded.emplace_back(bytes.begin(), bytes.end());
    } catch (const Error& e) {
      throw ServiceError(400, "bad_base64", which + e.what());
    }
  }
  return encoded;
}

/// A search result: the product and the URL of its photo that matched.
json hit_with_url(const search::Hit& h) {
  json j = search::hit_json(h);
  const auto& images = h.product.images;
  const auto at = std::find(images.begin(), images.end(), h.image);
  j["image"] = at == images.end() ? json(nullptr)
                                  : json(image_url(h.product.sku,
                                                   static_cast<size_t>(at - images.begin())));
  return j;
}

}  // namespace

namespace {

/// An HTTP server, or an HTTPS one when the options name a certificate and key.
std::unique_ptr<httplib::Server> make_server(const HttpOptions& options) {
  if (options.tls_cert.empty() && options.tls_key.empty()) {
    return std::make_unique<httplib::Server>();
  }
  VT_CHECK(!options.tls_cert.empty() && !options.tls_key.empty(),
           "TLS needs both --tls-cert and --tls-key");
  auto tls = std::make_unique<httplib::SSLServer>(options.tls_cert.c_str(),
                                                  options.tls_key.c_str());
  VT_CHECK(tls->is_valid(), "cannot start TLS with ", options.tls_cert, " and ",
           options.tls_key, ": check that they are a PEM certificate and its private key");
  return tls;
}

}  // namespace

void HttpServer::check(const HttpOptions& options) {
  if (!options.api_keys_file.empty()) KeyStore::load(options.api_keys_file);
  make_server(options);
}

HttpServer::HttpServer(Service& service, std::shared_ptr<Metrics> metrics, HttpOptions options)
    : service_(service),
      metrics_(std::move(metrics)),
      options_(std::move(options)),
      loopback_only_(options_.host == "127.0.0.1" || options_.host == "::1" ||
                     options_.host == "localhost"),
      limiter_(options_.rate_limit, options_.rate_burst) {
  // A client that hangs up while its answer is written must not end the process (httplib
  // writes with plain send(), and TLS writes go through OpenSSL).
  std::signal(SIGPIPE, SIG_IGN);
  if (!options_.api_keys_file.empty()) {
    keys_ = std::make_shared<const KeyStore>(KeyStore::load(options_.api_keys_file));
    if (keys_->size() == 0) {
      spdlog::warn("{} holds no key: every request but /healthz, /readyz and the page will be "
                   "refused (401); add one with `vitrine keys add`", options_.api_keys_file);
    }
  }
  server_ = make_server(options_);
  const int threads = std::max(options_.threads, 2);
  server_->new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
  server_->set_payload_max_length(static_cast<size_t>(options_.max_body_bytes));
  // Clients keep their connections: closing one every few requests (httplib's default is 5)
  // makes busy clients reconnect, and reconnects race with the close under load.
  server_->set_keep_alive_max_count(100000);
  // Idle connections close after 5 s (httplib's default): httplib 0.11 notices stop() only
  // between requests, so a longer wait would hold a shutdown up that long.
  server_->set_keep_alive_timeout(5);
  // httplib's default sets SO_REUSEPORT, with which a second server binds the same port
  // silently and takes half its connections; SO_REUSEADDR alone still allows a restart while
  // old connections linger. The socket is remembered to widen its listen backlog (below).
  server_->set_socket_options([this](int sock) {
    const int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    listen_fd_ = sock;
  });
  routes();
}

HttpServer::~HttpServer() = default;

/// A registered route: its path pattern (as httplib matches it), method and metrics name.
struct HttpServer::RouteEntry {
  std::regex pattern;
  std::string method;
  std::string name;
};

std::string HttpServer::allowed_methods(const std::string& path) const {
  std::string out;
  for (const auto& r : table_) {
    if (!std::regex_match(path, r.pattern)) continue;
    if (out.find(r.method) == std::string::npos) out += (out.empty() ? "" : ", ") + r.method;
  }
  return out;
}

std::string HttpServer::route_name(const std::string& path) const {
  for (const auto& r : table_) {
    if (std::regex_match(path, r.pattern)) return r.name;
  }
  return "other";
}

int HttpServer::bind() {
  if (options_.port == 0) {
    port_ = server_->bind_to_any_port(options_.host);
  } else {
    port_ = server_->bind_to_port(options_.host, options_.port) ? options_.port : -1;
  }
  VT_CHECK(port_ > 0, "cannot listen on ", options_.host, ":", options_.port,
           " (in use, or not an address of this machine); choose another --port or --host");
  // The packaged httplib listens with a backlog of 5: a crowd of clients connecting at once
  // (a pool opening, a load balancer's health checks) overflows it and their handshakes are
  // dropped. Listening again on a listening socket only changes its backlog.
  int listening = 0;
  socklen_t size = sizeof(listening);
  if (listen_fd_ >= 0 &&
      getsockopt(listen_fd_, SOL_SOCKET, SO_ACCEPTCONN, &listening, &size) == 0 && listening) {
    if (::listen(listen_fd_, SOMAXCONN) != 0) {
      spdlog::warn("could not widen the listen backlog; many clients connecting at once may "
                   "wait or fail");
    }
  }
  return port_;
}

void HttpServer::run() {
  running_ = true;
  if (!stop_asked_) server_->listen_after_bind();
  running_ = false;
}

void HttpServer::stop() {
  stop_asked_ = true;
  // httplib's stop() does nothing until its listening loop has begun: a SIGTERM a moment
  // after the start left the service running for good. Wait for the loop (run() checks
  // stop_asked_ before it enters), then stop it.
  for (int i = 0; i < 500 && running_ && !server_->is_running(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  server_->stop();
}

std::shared_ptr<const KeyStore> HttpServer::keys() const {
  std::lock_guard<std::mutex> lock(keys_mu_);
  return keys_;
}

void HttpServer::reload_keys() {
  if (options_.api_keys_file.empty()) return;
  // Read before swapping: a file being edited, or broken, leaves the keys in use in place.
  auto fresh = std::make_shared<const KeyStore>(KeyStore::load(options_.api_keys_file));
  const size_t before = keys()->size();
  {
    std::lock_guard<std::mutex> lock(keys_mu_);
    keys_ = fresh;
  }
  spdlog::info("API keys reloaded from {}: {} keys (were {})", options_.api_keys_file,
               fresh->size(), before);
  if (fresh->size() == 0) {
    spdlog::warn("{} holds no key: every request but /healthz, /readyz and the page will be "
                 "refused (401)", options_.api_keys_file);
  }
}

void HttpServer::routes() {
  auto& s = *server_;
  const auto too_large = [this](httplib::Response& res) {
    send_error(res, 413, "too_large",
               "the body exceeds the " + std::to_string(options_.max_body_bytes >> 20) +
                   " MB this service accepts (vitrine serve --max-body-mb)");
  };
  // Authentication, scopes and rate limits before any route runs.
  s.set_pre_routing_handler([this, too_large](const httplib::Request& req,
                                              httplib::Response& res) {
    t_started = Clock::now();
    t_key_name.clear();
    t_refused = 0;
    // httplib 0.11 cuts every answer, errors included, to the Range header's ranges and
    // still says 200: 2,000 ranges of "0-" made a 100 KB photo a 200 MB answer, without a key
    // on the public routes. Answers are whole.
    const_cast<httplib::Request&>(req).ranges.clear();
    res.set_header("Accept-Ranges", "none");
    // Refused before the body is read: the answer asks the client to close the connection
    // (Connection: close); httplib 0.11 itself keeps reading it.
    const auto refused = [&] {
      metrics_->count_request(route_name(req.path), res.status);
      return httplib::Server::HandlerResponse::Handled;
    };
    // Refused once httplib has read (and dropped) the body, which keeps the connection in
    // step with the client (httplib 0.11 does not close a connection for a response's
    // Connection: close, so an unread body would be parsed as the next request). Its size
    // is bounded by the checks above. httplib reads no body for GET and the like.
    const auto refused_after_body = [&] {
      metrics_->count_request(route_name(req.path), res.status);
      const bool read = req.method == "POST" || req.method == "PUT" || req.method == "PATCH" ||
                        req.method == "DELETE";
      if (!read || !req.has_header("Content-Length") ||
          req.get_header_value("Content-Length") == "0") {
        return httplib::Server::HandlerResponse::Handled;
      }
      t_refused = res.status;
      return httplib::Server::HandlerResponse::Unhandled;
    };
    // Before the body is read: httplib takes a Content-Length such as -5 for a length near
    // 2^64 and waits for that many bytes, answering nothing. A body a little over the limit is
    // read and dropped by httplib, so that the client, still sending, gets the 413; one far
    // over it is refused at once and the connection closed.
    if (req.has_header("Transfer-Encoding")) {  // httplib reads chunked bodies without limit
      res.set_header("Connection", "close");
      send_error(res, 411, "no_content_length",
                 "send the body with a Content-Length header; chunked bodies are not accepted");
      return refused();
    }
    // The request is httplib's own (not const) until the body is read: these edits shape how
    // it reads the body.
    auto& headers = const_cast<httplib::Headers&>(req.headers);
    if (!req.has_header("Content-Length")) {
      if (req.method == "POST" || req.method == "PUT" || req.method == "PATCH") {
        res.set_header("Connection", "close");  // httplib would read until the client closes
        send_error(res, 411, "no_content_length",
                   "a " + req.method + " request needs a Content-Length header, 0 for no body "
                   "(curl sends one with -d '')");
        return refused();
      }
      // httplib waits for a DELETE's body; `curl -X DELETE` sends none.
      if (req.method == "DELETE") headers.emplace("Content-Length", "0");
    }
    // No route takes form fields: a form-labelled body is a photo sent by
    // `curl --data-binary @photo.jpg`, which httplib would cut off at 8 KB as a form.
    if (lowered(req.get_header_value("Content-Type"))
            .rfind("application/x-www-form-urlencoded", 0) == 0) {
      headers.erase("Content-Type");
      headers.emplace("Content-Type", "application/octet-stream");
    }
    if (req.has_header("Content-Length")) {
      const std::string length = req.get_header_value("Content-Length");
      const bool number = !length.empty() && length.size() <= 18 &&
                          std::all_of(length.begin(), length.end(),
                                      [](unsigned char c) { return std::isdigit(c); });
      if (!number || std::stoll(length) > 4 * options_.max_body_bytes) {
        res.set_header("Connection", "close");  // the body that follows is not read
        if (number) {
          too_large(res);
        } else {
          send_error(res, 400, "bad_content_length",
                     "Content-Length must be the body's size in bytes, got '" + length + "'");
        }
        return refused();
      }
    }
    // httplib inflates a gzip, deflate or br body as it reads it, without limit: 20 MB of
    // zeros would become 20 GB. The header is dropped, so the body is read as sent (within the
    // limit above), and the request refused; photos are compressed already.
    if (req.has_header("Content-Encoding")) {
      const std::string encoding = lowered(req.get_header_value("Content-Encoding"));
      if (encoding != "identity") {
        headers.erase("Content-Encoding");
        send_error(res, 415, "unsupported_encoding",
                   "bodies with Content-Encoding '" + encoding + "' are not accepted; send the "
                   "body uncompressed");
        return refused_after_body();
      }
    }
    const std::shared_ptr<const KeyStore> keys = this->keys();
    if (!keys) {
      // Without keys, on this machine's loopback, only its own pages may call: a web page
      // elsewhere that rebinds its name to 127.0.0.1 sends its own name as Host.
      if (loopback_only_ && !is_local_host(req.get_header_value("Host"))) {
        send_error(res, 403, "host_not_allowed",
                   "this service listens on " + options_.host + " without --api-keys and "
                   "answers only requests to localhost, 127.0.0.1 or [::1]; give --api-keys to "
                   "serve other names");
        return refused_after_body();
      }
      return httplib::Server::HandlerResponse::Unhandled;
    }
    const std::string scope = scope_for(req);
    if (scope.empty()) return httplib::Server::HandlerResponse::Unhandled;
    const std::string auth = req.get_header_value("Authorization");
    // The scheme's name is case-insensitive (RFC 7235): "bearer <key>" is the same.
    const std::string prefix = "bearer ";
    const bool bearer = auth.size() > prefix.size() &&
                        lowered(auth.substr(0, prefix.size())) == prefix;
    std::optional<ApiKey> key;
    if (bearer) key = keys->find(auth.substr(prefix.size()));
    if (!key) {
      res.set_header("WWW-Authenticate", "Bearer");
      send_error(res, 401, "unauthorized",
                 auth.empty() ? "send an API key: Authorization: Bearer <key>"
                 : bearer     ? "the API key is not valid"
                              : "the Authorization header must read 'Bearer <key>'");
      return refused_after_body();
    }
    t_key_name = key->name;
    if (!key->scopes.count(scope)) {
      send_error(res, 403, "forbidden",
                 "the key '" + key->name + "' lacks the '" + scope + "' scope for this route");
      return refused_after_body();
    }
    double retry = 0;
    if (!limiter_.allow(key->name, &retry)) {
      res.set_header("Retry-After", std::to_string(static_cast<int>(std::ceil(retry))));
      send_error(res, 429, "rate_limited", "too many requests for this key; slow down");
      return refused_after_body();
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });
  s.set_error_handler([this, too_large](const httplib::Request& req, httplib::Response& res) {
    if (t_refused != 0) {
      // Refused before routing; reading the body (over the limit, say) may have set another
      // status, but the refusal is what the answer says.
      res.status = std::exchange(t_refused, 0);
      return;
    }
    if (!res.body.empty()) return;  // already an error body (and counted)
    const bool sends_body = req.method == "POST" || req.method == "PUT" || req.method == "PATCH";
    if (res.status == 413) {
      too_large(res);
    } else if (res.status == 404 && !allowed_methods(req.path).empty()) {
      res.set_header("Allow", allowed_methods(req.path));
      send_error(res, 405, "method_not_allowed",
                 req.method + " is not a method of this route; it takes " +
                     allowed_methods(req.path));
    } else if (res.status == 404) {
      send_error(res, 404, "not_found", "no such route (see /openapi.json)");
    } else if (res.status == 400 && sends_body) {
      send_error(res, 400, "bad_body",
                 "the body could not be read: it ended before its Content-Length, or its "
                 "multipart form is malformed");
    } else {
      send_error(res, res.status, "http_error", "HTTP error " + std::to_string(res.status));
    }
    metrics_->count_request(route_name(req.path), res.status);
  });
  s.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
    if (!options_.access_log) return;
    // No bodies, no keys: only what an operator needs to follow the traffic. The path and
    // method are the client's bytes (json_text: not necessarily UTF-8), and nothing thrown
    // here may leave the server's worker thread.
    try {
      json line{{"time", utc_now_ms()},     {"method", req.method},
                {"path", req.path},         {"status", res.status},
                {"remote", req.remote_addr}, {"bytes_in", req.body.size()},
                {"bytes_out", res.body.size()}};
      // From the headers read to the answer ready (the body's upload included, its sending
      // not): absent for a request httplib refused before pre-routing.
      if (t_started) {
        const double ms = std::chrono::duration<double, std::milli>(Clock::now() - *t_started)
                              .count();
        line["ms"] = std::round(ms * 1000) / 1000;
      }
      if (!t_key_name.empty()) line["key"] = t_key_name;  // the key's name, never the key
      spdlog::info("{}", json_text(line));
    } catch (const std::exception&) {
    }
    t_key_name.clear();  // a request httplib refuses before pre-routing logs no one's key
    t_started.reset();
    t_refused = 0;
  });

  // Each route through one wrapper: timing, metrics, and errors as JSON.
  using Body = std::function<void(const httplib::Request&, httplib::Response&)>;
  auto route = [this](const std::string& name, Body body) {
    return [this, name, body](const httplib::Request& req, httplib::Response& res) {
      if (t_refused != 0) return;  // answered (and counted) before the body was read
      const auto t0 = Clock::now();
      try {
        body(req, res);
        if (res.status == -1) res.status = 200;  // set_content leaves it to httplib
      } catch (const ServiceError& e) {
        if (e.status() == 429) res.set_header("Retry-After", "1");
        send_error(res, e.status(), e.code(), e.what());
      } catch (const std::exception& e) {
        // Requests' faults are ServiceErrors; anything else (a full disk, a database locked
        // by another process) is the service's, logged with details the client needs not see.
        spdlog::error("{} failed: {}", name, e.what());
        send_error(res, 500, "internal", "the request failed inside the service; see its log");
      }
      metrics_->observe_request(name, res.status,
                                std::chrono::duration<double>(Clock::now() - t0).count());
    };
  };
  // Registers a route with httplib and in the table that answers 405s and names metrics.
  auto add = [this, &s, route](const std::string& method, const std::string& pattern,
                               const std::string& name, Body body) {
    table_.push_back({std::regex(pattern), method, name});
    auto handler = route(name, std::move(body));
    if (method == "GET") s.Get(pattern, handler);
    if (method == "POST") s.Post(pattern, handler);
    if (method == "PUT") s.Put(pattern, handler);
    if (method == "PATCH") s.Patch(pattern, handler);
    if (method == "DELETE") s.Delete(pattern, handler);
  };

  // PUT, PATCH or DELETE of a product's photo (/v1/products/{sku}/images/{i}, which the
  // product routes' pattern also matches): that route takes GET alone.
  const auto not_a_photo = [](const httplib::Request& req, httplib::Response& res) {
    static const std::regex photo(R"(.+/images/[0-9]+)");
    if (std::regex_match(std::string(req.matches[1]), photo)) {
      res.set_header("Allow", "GET");
      throw ServiceError(405, "method_not_allowed",
                         req.method + " is not a method of a product's photo (it takes GET); "
                         "no SKU ends in /images/<number>");
    }
  };
  add("GET", "/healthz", "/healthz", [](const httplib::Request&, httplib::Response& res) {
          send_json(res, 200, {{"status", "ok"}});
        });
  add("GET", "/readyz", "/readyz", [this](const httplib::Request&, httplib::Response& res) {
          const bool ready = service_.ready();
          send_json(res, ready ? 200 : 503,
                    {{"ready", ready},
                     {"model", service_.model_stamp().id},
                     {"catalogue", service_.has_search()}});
        });
  add("GET", "/metrics", "/metrics", [this](const httplib::Request&, httplib::Response& res) {
          metrics_->set_queue_depth(service_.queue_depth());
          try {  // the index size with what other processes stored since
            service_.catch_up();
          } catch (const std::exception& e) {  // the metrics still answer, with the last size
            spdlog::warn("metrics: the index could not catch up with the catalogue: {}",
                         e.what());
          }
          res.set_content(metrics_->render(), "text/plain; version=0.0.4");
        });
  add("GET", "/openapi.json", "/openapi.json", [](const httplib::Request&, httplib::Response& res) {
          res.set_content(reinterpret_cast<const char*>(kOpenApiJson), kOpenApiJson_size,
                          "application/json");
        });
  add("POST", "/v1/classify", "/v1/classify", [this](const httplib::Request& req, httplib::Response& res) {
           const auto body = json_body(req);
           const json* b = body ? &*body : nullptr;
           check_parameters(req, b, {"image", "topk", "explain"});
           const int64_t topk = int_param(req, b, "topk", 5, 1, 1000);
           const bool explain = bool_param(req, b, "explain");
           if (service_.labels().empty()) {
             throw ServiceError(409, "no_head", "the model has no classification head; use "
                                                "/v1/embed or /v1/search");
           }
           const std::string image = image_of(req, b);
           const auto out = service_.infer(image, topk);
           json top = json::array();
           for (const auto& c : out.top) top.push_back({{"label", c.label}, {"score", c.score}});
           json answer{{"top", top}, {"model", out.model_version.substr(0, 12)}};
           if (explain && !out.top.empty()) {
             answer["heatmap"] = service_.explain(image, out.top.front().label,
                                                  out.model_version);
             answer["heatmap_label"] = out.top.front().label;
           }
           send_json(res, 200, answer);
         });
  add("POST", "/v1/embed", "/v1/embed", [this](const httplib::Request& req, httplib::Response& res) {
           const auto body = json_body(req);
           check_parameters(req, body ? &*body : nullptr, {"image"});
           const auto out = service_.infer(image_of(req, body ? &*body : nullptr), 1);
           send_json(res, 200, {{"embedding", out.embedding},
                                {"dim", out.embedding.size()},
                                {"model", out.model_version.substr(0, 12)}});
         });
  add("POST", "/v1/search", "/v1/search", [this](const httplib::Request& req, httplib::Response& res) {
           const auto body = json_body(req);
           const json* b = body ? &*body : nullptr;
           check_parameters(req, b, {"image", "k", "filters", "filter", "route_by_category"});
           if (!service_.has_search()) throw ServiceError(404, "no_catalogue", "no --db given");
           search::SearchOptions so;
           so.k = int_param(req, b, "k", 10, 1, 1000);
           const bool route = bool_param(req, b, "route_by_category");
           // Filters as "filters" or "filter": a string or an array of strings in JSON,
           // repeated in the query string.
           std::vector<std::string> filters;
           for (const char* name : {"filters", "filter"}) {
             if (b && b->contains(name)) {
               const json& given = (*b)[name];
               for (const auto& f : given.is_array() ? given : json::array({given})) {
                 if (!f.is_string()) throw ServiceError(400, "bad_filter", "filters are strings");
                 filters.push_back(f.get<std::string>());
               }
             }
             for (size_t i = 0; i < req.get_param_value_count(name); ++i) {
               filters.push_back(req.get_param_value(name, i));
             }
           }
           try {
             so.filters = search::parse_filters(filters);
           } catch (const Error& e) {
             throw ServiceError(400, "bad_filter", e.what());
           }
           const auto out = service_.infer(image_of(req, b), 5);
           if (route && out.top.empty()) {
             throw ServiceError(409, "no_head", "route_by_category needs a model with a "
                                "classification head of the catalogue's categories; this one "
                                "is a backbone");
           }
           const auto search = [&](const search::SearchOptions& o) {
             return service_.search(out.embedding, o);
           };
           // Inside the likely categories when the head is sure enough (as `vitrine search
           // --route-by-category`, with its defaults); otherwise the whole catalogue.
           search::Route how;
           const auto hits = route ? search::routed_search(search, out.top, so, {}, &how)
                                   : search(so);
           json results = json::array();
           for (const auto& h : hits) results.push_back(hit_with_url(h));
           json top = json::array();
           for (const auto& c : out.top) top.push_back({{"label", c.label}, {"score", c.score}});
           json answer{{"results", results}, {"top", top}};
           if (route) answer["route"] = search::route_json(how);
           if (results.empty() && !so.filters.empty()) {  // say which filter left nothing
             std::shared_lock<Service::DbMutex> lock(service_.db_mutex());
             answer["warnings"] = search::explain_empty_filters(service_.db()->catalog(),
                                                                so.filters);
           }
           send_json(res, 200, answer);
         });
  add("GET", "/", "/", [](const httplib::Request&, httplib::Response& res) {
          res.set_content(reinterpret_cast<const char*>(kWebIndex), kWebIndex_size,
                          "text/html; charset=utf-8");
        });
  add("GET", "/v1/products", "/v1/products", [this](const httplib::Request& req, httplib::Response& res) {
          if (!service_.has_search()) throw ServiceError(404, "no_catalogue", "no --db given");
          check_parameters(req, nullptr, {"offset", "limit", "filter"});
          const int64_t offset = int_param(req, nullptr, "offset", 0, 0, int64_t{1} << 40);
          const int64_t limit = int_param(req, nullptr, "limit", 24, 1, 1000);
          std::vector<std::string> texts;
          for (size_t i = 0; i < req.get_param_value_count("filter"); ++i) {
            texts.push_back(req.get_param_value("filter", i));
          }
          std::vector<search::Filter> filters;
          try {
            filters = search::parse_filters(texts);
          } catch (const Error& e) {
            throw ServiceError(400, "bad_filter", e.what());
          }
          std::shared_lock<Service::DbMutex> lock(service_.db_mutex());
          json products = json::array();
          for (const auto& p : service_.db()->catalog().list(filters, offset, limit)) {
            products.push_back(product_with_images(p));
          }
          send_json(res, 200, {{"products", products},
                               {"total", service_.db()->catalog().product_count_where(filters)},
                               {"offset", offset}});
        });
  // A product's stored photo, by position: only files the catalogue names are served.
  add("GET", R"(/v1/products/(.+)/images/([0-9]+))",
        "/v1/products/{sku}/images/{i}", [this](const httplib::Request& req, httplib::Response& res) {
          if (!service_.has_search()) throw ServiceError(404, "no_catalogue", "no --db given");
          std::optional<search::Product> p;
          {
            std::shared_lock<Service::DbMutex> lock(service_.db_mutex());
            p = service_.db()->catalog().find(req.matches[1]);
          }
          if (!p) throw ServiceError(404, "unknown_sku", "no product " + std::string(req.matches[1]));
          // The route's pattern allows digits only; more of them than any product has images.
          const std::string index = req.matches[2];
          if (index.size() > 6 || std::stoul(index) >= p->images.size()) {
            throw ServiceError(404, "no_image", "the product has no such image");
          }
          const size_t i = std::stoul(index);
          std::vector<uint8_t> bytes;
          try {
            bytes = image::read_file(p->images[i]);
          } catch (const Error&) {
            throw ServiceError(404, "no_image", "the image is not a file this service can read");
          }
          const char* type = "application/octet-stream";
          try {
            switch (image::probe(bytes.data(), bytes.size()).format) {
              case image::Format::kJpeg: type = "image/jpeg"; break;
              case image::Format::kPng: type = "image/png"; break;
              case image::Format::kWebp: type = "image/webp"; break;
              case image::Format::kBmp: type = "image/bmp"; break;
              default: break;
            }
          } catch (const Error&) {
          }
          res.set_content(reinterpret_cast<const char*>(bytes.data()), bytes.size(), type);
        });
  add("GET", R"(/v1/products/(.+))", "/v1/products/{sku}", [this](const httplib::Request& req, httplib::Response& res) {
          if (!service_.has_search()) throw ServiceError(404, "no_catalogue", "no --db given");
          std::shared_lock<Service::DbMutex> lock(service_.db_mutex());
          const auto p = service_.db()->catalog().find(req.matches[1]);
          if (!p) throw ServiceError(404, "unknown_sku", "no product " + std::string(req.matches[1]));
          send_json(res, 200, product_with_images(*p));
        });
  add("DELETE", R"(/v1/products/(.+))", "/v1/products/{sku}", [this, not_a_photo](const httplib::Request& req, httplib::Response& res) {
             if (!service_.has_search()) throw ServiceError(404, "no_catalogue", "no --db given");
             not_a_photo(req, res);
             const auto lock = service_.lock_for_write();
             const std::string sku = req.matches[1];
             if (!service_.db()->remove({sku}).empty()) {
               throw ServiceError(404, "unknown_sku", "no product " + sku);
             }
             metrics_->set_index_size(service_.db()->index() ? service_.db()->index()->size() : 0);
             send_json(res, 200, {{"sku", sku}, {"status", "removed"}});
           });
  // Storing products: each image decoded (so bad ones are refused before anything is
  // stored), saved again without its metadata (EXIF: GPS, camera, ...), embedded through the
  // batcher, then the product stored in one transaction. In three steps, so that the photos
  // of a whole bulk request go through the model together: prepare() checks a product and
  // decodes its base64, embed_all() embeds every photo at once, finish() takes a product's
  // answers.
  auto prepare = [](const std::string& sku, const json& p) {
    check_product_members(sku, p);
    PendingProduct pending;
    pending.stored.update.product.sku = sku;
    read_details(p, pending.stored.update.product, /*merge=*/false);
    pending.encoded = decode_photos(p);
    return pending;
  };
  auto finish = [this](PendingProduct& pending, std::vector<EmbeddedPhoto>::iterator photos) {
    const std::filesystem::path dir = service_.db()->photo_dir();
    StoredProduct& stored = pending.stored;
    search::ProductUpdate& u = stored.update;
    for (size_t at = 0; at < pending.encoded.size(); ++at) {
      EmbeddedPhoto& e = *(photos + static_cast<std::ptrdiff_t>(at));
      if (e.error) {
        try {
          std::rethrow_exception(e.error);
        } catch (const ServiceError& error) {
          if (error.status() != 400 && error.status() != 422) throw;
          throw ServiceError(error.status(), error.code(),
                             "images[" + std::to_string(at) + "]: " + error.what());
        }
      }
      const StoredPhoto& photo = e.photo;
      const std::string& hash = photo.content_hash;
      const bool again = std::any_of(u.images.begin(), u.images.end(),
                                     [&](const auto& stored) { return stored.content_hash == hash; });
      if (again) continue;  // the same photo twice is one photo of the product
      const std::string path = (dir / (hash + photo.extension)).string();
      stored.photos.emplace_back(path, std::string(photo.bytes.begin(), photo.bytes.end()));
      u.images.push_back({path, hash, std::move(e.out.embedding)});
      u.product.images.push_back(path);
    }
    return std::move(stored);
  };
  auto embed_product = [this, finish](PendingProduct& pending) {
    std::vector<const std::string*> encoded;
    for (const auto& e : pending.encoded) encoded.push_back(&e);
    auto photos = embed_all(service_, encoded);
    return finish(pending, photos.begin());
  };
  auto store = [prepare, embed_product](const std::string& sku, const json& p) {
    PendingProduct pending = prepare(sku, p);
    return embed_product(pending);
  };
  // Writes the photos and stores the products, under the database lock: a product removed
  // meanwhile cannot take a shared photo file away with it. `before` may still change the
  // products under that lock (a PATCH merges the stored product's details there).
  using BeforeCommit = std::function<void(std::vector<StoredProduct>&)>;
  auto commit = [this](std::vector<StoredProduct> products, const BeforeCommit& before = {}) {
    namespace fs = std::filesystem;
    auto lock = service_.lock_for_write();
    auto* db = service_.db();
    if (before) before(products);
    std::vector<std::string> written;
    std::vector<search::ProductUpdate> batch;
    auto write_missing = [&] {
      for (const auto& p : products) {
        for (const auto& [path, png] : p.photos) {
          if (fs::exists(path)) continue;
          write_file_atomic(path, png);
          written.push_back(path);
        }
      }
    };
    try {
      fs::create_directories(db->photo_dir());
      write_missing();
      for (const auto& p : products) batch.push_back(p.update);
      db->upsert(batch);
    } catch (...) {
      // Only files no stored image names: the catalogue may have committed before the
      // index update failed.
      std::error_code ec;
      for (const auto& path : written) {
        try {
          if (db->catalog().image_ids_with_hash(fs::path(path).stem()).empty()) {
            fs::remove(path, ec);
          }
        } catch (const std::exception& e) {  // a file left over costs disk, not data
          spdlog::warn("keeping {}: could not check whether a product names it: {}", path,
                       e.what());
        }
      }
      throw;
    }
    // Another process (vitrine remove) may have deleted a shared photo file between the
    // check above and the commit: what the stored products name must exist. The products
    // are stored by now, so a failure here is logged, not answered as one.
    try {
      write_missing();
    } catch (const std::exception& e) {
      spdlog::error("a stored product's photo could not be written again: {}", e.what());
    }
    metrics_->set_index_size(service_.db()->index() ? service_.db()->index()->size() : 0);
    lock.unlock();
    service_.save_index_when_due();
  };
  add("PUT", R"(/v1/products/(.+))", "/v1/products/{sku}", [this, store, commit, not_a_photo](const httplib::Request& req, httplib::Response& res) {
          if (!service_.has_search()) throw ServiceError(404, "no_catalogue", "no --db given");
          not_a_photo(req, res);
          if (!is_json_type(req)) {  // as POST /v1/products answers
            throw ServiceError(415, "unsupported_media_type",
                               "send the product as JSON (Content-Type: application/json)");
          }
          check_parameters(req, nullptr, {});
          const auto body = json_body(req);
          if (!body) throw ServiceError(400, "bad_json", "the body is empty: send the product");
          const auto p = store(req.matches[1], *body);
          commit({p});
          send_json(res, 200, {{"sku", p.update.product.sku}, {"status", "stored"},
                               {"images", p.update.images.size()}});
        });
  // Changing a stored product: the members sent replace its own (null clears one), its
  // attributes are merged (a JSON merge patch, RFC 7396), and its photos stay as they are,
  // embeddings and all, unless `images` is sent, which replaces them as a PUT does. A price
  // change sends no photo and embeds nothing.
  add("PATCH", R"(/v1/products/(.+))", "/v1/products/{sku}",
      [this, embed_product, commit,
       not_a_photo](const httplib::Request& req, httplib::Response& res) {
           if (!service_.has_search()) throw ServiceError(404, "no_catalogue", "no --db given");
           not_a_photo(req, res);
           if (!is_json_type(req) && media_type(req) != "application/merge-patch+json") {
             throw ServiceError(415, "unsupported_media_type",
                                "send the changes as JSON (Content-Type: "
                                "application/merge-patch+json or application/json)");
           }
           check_parameters(req, nullptr, {});
           const json body = parsed_body(req);
           if (!body.is_object()) {
             throw ServiceError(400, "bad_json",
                                "send the changes as a JSON object, e.g. {\"price\": 9.99}");
           }
           const std::string sku = req.matches[1];
           check_product_members(sku, body);
           search::Product checked;  // bad details are refused before any photo is embedded
           read_details(body, checked, /*merge=*/true);
           const auto unknown = [&sku] {
             return ServiceError(404, "unknown_sku",
                                 "no product " + sku +
                                     " (PUT /v1/products/{sku} stores a new one)");
           };
           const auto stored = [this, &sku] {
             return service_.db()->catalog().find(sku);
           };
           if (!body.contains("images")) {
             const auto lock = service_.lock_for_write();
             const auto p = service_.db()->catalog().update_details(
                 sku, [&body](search::Product& p) { read_details(body, p, /*merge=*/true); });
             if (!p) throw unknown();
             send_json(res, 200, product_with_images(*p));
             return;
           }
           // New photos: embedded first, then the details merged under the lock.
           if (body["images"].is_null()) {
             throw ServiceError(400, "bad_product", "images: a product keeps one photo at "
                                "least (DELETE /v1/products/{sku} removes the product)");
           }
           {
             std::shared_lock<Service::DbMutex> lock(service_.db_mutex());
             if (!stored()) throw unknown();  // before the photos' work
           }
           PendingProduct pending;
           pending.stored.update.product.sku = sku;
           pending.encoded = decode_photos(body);
           commit({embed_product(pending)}, [&](std::vector<StoredProduct>& products) {
             auto p = stored();
             if (!p) throw unknown();
             read_details(body, *p, /*merge=*/true);
             p->images = products.front().update.product.images;
             products.front().update.product = *p;
           });
           std::shared_lock<Service::DbMutex> lock(service_.db_mutex());
           const auto p = stored();
           if (!p) throw unknown();  // removed by another process meanwhile
           send_json(res, 200, product_with_images(*p));
         });
  add("POST", "/v1/products", "/v1/products", [this, prepare, finish, commit](const httplib::Request& req, httplib::Response& res) {
           if (!service_.has_search()) throw ServiceError(404, "no_catalogue", "no --db given");
           // Any web page can send a text/plain body across sites without asking first; a
           // JSON one needs the browser's preflight, which this service does not grant.
           if (!is_json_type(req)) {
             throw ServiceError(415, "unsupported_media_type",
                                "send the products as JSON (Content-Type: application/json)");
           }
           check_parameters(req, nullptr, {});
           const json body = parsed_body(req);
           if (!body.is_array()) {
             throw ServiceError(400, "bad_json", "send a JSON array of products, each with a sku");
           }
           size_t images = 0;
           for (const auto& p : body) {
             if (p.is_object() && p.contains("images") && p["images"].is_array()) {
               images += p["images"].size();
             }
           }
           if (body.size() > kMaxProductsPerRequest || images > kMaxImagesPerRequest) {
             throw ServiceError(413, "too_many_products",
                                "one request stores at most " +
                                    std::to_string(kMaxProductsPerRequest) + " products and " +
                                    std::to_string(kMaxImagesPerRequest) + " photos in all; got " +
                                    std::to_string(body.size()) + " products and " +
                                    std::to_string(images) + " photos: send them in several "
                                    "requests");
           }
           // As `vitrine index`: the good products are stored, each bad one is reported
           // (by its position and SKU) and stores nothing. All their photos go through the
           // model together.
           std::vector<StoredProduct> batch;
           json results = json::array();
           std::set<std::string> skus;
           auto failed = [](json& result, const std::string& code, const std::string& message) {
             result["status"] = "failed";
             result["error"] = {{"code", code}, {"message", message}};
           };
           std::vector<std::optional<PendingProduct>> pending(body.size());
           for (size_t i = 0; i < body.size(); ++i) {
             const json& p = body[i];
             json result{{"index", i}};
             try {
               if (!p.is_object() || !p.contains("sku") || !p["sku"].is_string()) {
                 throw ServiceError(400, "bad_product", "each product needs a \"sku\" string");
               }
               result["sku"] = p["sku"];
               if (skus.count(p["sku"].get<std::string>())) {
                 throw ServiceError(400, "duplicate_sku",
                                    "this SKU is stored earlier in the batch; send a product once");
               }
               pending[i] = prepare(p["sku"].get<std::string>(), p);
               skus.insert(p["sku"].get<std::string>());
             } catch (const ServiceError& e) {
               failed(result, e.code(), e.what());
             } catch (const Error& e) {
               spdlog::error("storing a product failed: {}", e.what());
               failed(result, "internal", "storing it failed inside the service; see its log");
             }
             results.push_back(std::move(result));
           }
           std::vector<const std::string*> encoded;
           for (const auto& one : pending) {
             if (!one) continue;
             for (const auto& photo : one->encoded) encoded.push_back(&photo);
           }
           std::vector<EmbeddedPhoto> photos = embed_all(service_, encoded);
           auto next = photos.begin();
           for (size_t i = 0; i < body.size(); ++i) {
             if (!pending[i]) continue;
             json& result = results[i];
             const auto mine = next;
             next += static_cast<std::ptrdiff_t>(pending[i]->encoded.size());
             try {
               batch.push_back(finish(*pending[i], mine));
               result["status"] = "stored";
             } catch (const ServiceError& e) {
               failed(result, e.code(), e.what());
             } catch (const Error& e) {
               spdlog::error("storing a product failed: {}", e.what());
               failed(result, "internal", "storing it failed inside the service; see its log");
             }
           }
           if (!batch.empty()) commit(batch);
           send_json(res, 200, {{"stored", batch.size()},
                                {"failed", body.size() - batch.size()},
                                {"results", results}});
         });
  add("POST", "/v1/admin/reload", "/v1/admin/reload", [this](const httplib::Request& req, httplib::Response& res) {
           const auto body = json_body(req);
           // A body sent without its JSON type (curl -d) would be dropped, and the old model
           // reloaded as if asked.
           if (!body && !req.body.empty()) {
             throw ServiceError(400, "bad_json", "send the body as JSON with Content-Type: "
                                "application/json, e.g. {\"model\": \"runs/new/best\"}");
           }
           check_parameters(req, body ? &*body : nullptr, {"model"});
           std::string dir = req.get_param_value("model");  // ?model=DIR, or in the JSON body
           if (body && body->contains("model")) {
             if (!(*body)["model"].is_string()) {
               throw ServiceError(400, "bad_parameter", "model must be a directory path (a string)");
             }
             if (req.has_param("model")) {
               throw ServiceError(400, "bad_parameter", "give model in the query or the body, "
                                  "not both");
             }
             dir = (*body)["model"].get<std::string>();
           }
           try {
             service_.reload(dir);
           } catch (const Error& e) {
             throw ServiceError(422, "reload_failed", e.what());
           }
           send_json(res, 200, {{"status", "reloaded"}, {"model", service_.model_stamp().id}});
         });
}

}  // namespace vitrine::serve
