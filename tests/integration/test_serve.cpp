// `vitrine serve` started for real on a loopback port and spoken to over HTTP.
#include "test_util.h"

#include "vitrine/core/base64.h"

#include <gtest/gtest.h>
#include <httplib.h>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>

#include <atomic>
#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <future>
#include <random>
#include <regex>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <utility>

using namespace vitrine;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

using test::q;

/// A model, a small catalogue, photos and API keys shared by the tests of this file.
struct Fixture {
  std::string dir, read_key, write_key, admin_key;
  std::vector<std::string> photos;  ///< PNG bytes
};

std::string file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

const Fixture& fixture() {
  static const Fixture f = [] {
    Fixture f;
    f.dir = test::temp_dir("serve");
    std::ofstream(f.dir + "/labels.txt") << "shoes\nbags\nhats\n";
    auto r = test::run_command(q(test::vitrine_bin()) +
                               " init --arch resnet_custom --layers 1 1 1 1 --image-size 32 --labels " +
                               q(f.dir + "/labels.txt") + " --seed 0 --out " + q(f.dir + "/m"));
    EXPECT_EQ(r.status, 0) << r.err;
    fs::create_directories(f.dir + "/img");
    std::ofstream csv(f.dir + "/products.csv");
    csv << "sku,image,category,price\n";
    std::mt19937 rng(3);
    for (int i = 0; i < 24; ++i) {
      cv::Mat m(40, 48, CV_8UC3);
      cv::randu(m, cv::Scalar::all(0), cv::Scalar::all(255));
      const std::string path = f.dir + "/img/p" + std::to_string(i) + ".png";
      cv::imwrite(path, m);
      f.photos.push_back(file_bytes(path));
      csv << "SKU" << i << "," << path << "," << (i % 2 ? "shoes" : "bags") << "," << i << "\n";
    }
    csv.close();
    r = test::run_command(q(test::vitrine_bin()) + " index --model " + q(f.dir + "/m") +
                          " --catalog " + q(f.dir + "/products.csv") + " --db " + q(f.dir + "/db"));
    EXPECT_EQ(r.status, 0) << r.err;
    auto key = [&](const std::string& name, const std::string& scopes) {
      const auto k = test::run_command(q(test::vitrine_bin()) + " keys add --file " +
                                       q(f.dir + "/keys.txt") + " --name " + name + " --scopes " +
                                       scopes);
      EXPECT_EQ(k.status, 0) << k.err;
      return k.out.substr(0, k.out.find('\n'));
    };
    f.read_key = key("reader", "read");
    f.write_key = key("writer", "read,write");
    f.admin_key = key("admin", "read,admin");
    return f;
  }();
  return f;
}

/// A `vitrine serve` process on a free loopback port; SIGKILLed when the test ends.
class Server {
 public:
  /// `wait_listening` false: returns at once, without the port.
  explicit Server(const std::string& flags, bool keys = true, bool wait_listening = true) {
    log_ = test::temp_dir("serve-log") + "/stderr.txt";
    const auto& f = fixture();
    const std::string command = q(test::vitrine_bin()) + " serve --model " + q(f.dir + "/m") +
                                " --db " + q(f.dir + "/db") + " --port 0 " +
                                (keys ? "--api-keys " + q(f.dir + "/keys.txt") : "") + " " +
                                flags + " 2> " + q(log_);
    pid_ = fork();
    if (pid_ == 0) {
      setpgid(0, 0);
      execl("/bin/sh", "sh", "-c", ("exec " + command).c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    // The port is in the first log line: "listening on http://127.0.0.1:PORT".
    const std::regex listening("listening on https?://127\\.0\\.0\\.1:([0-9]+)");
    for (int i = 0; i < 600 && port_ == 0 && wait_listening; ++i) {
      std::smatch m;
      const std::string text = file_bytes(log_);
      if (std::regex_search(text, m, listening)) port_ = std::stoi(m[1]);
      if (port_ == 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (wait_listening) {
      EXPECT_GT(port_, 0) << file_bytes(log_);
    }
  }
  ~Server() {
    if (pid_ > 0 && !exited_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  httplib::Client client(const std::string& key = "") const {
    httplib::Client c("127.0.0.1", port_);
    c.set_read_timeout(60);
    if (!key.empty()) c.set_bearer_token_auth(key.c_str());
    return c;
  }
  /// SIGTERM, then the exit status.
  int terminate() {
    kill(pid_, SIGTERM);
    int status = 0;
    waitpid(pid_, &status, 0);
    exited_ = true;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  /// The exit status once it has exited within `seconds`, else -1.
  int wait_exit(int seconds) {
    for (int i = 0; i < seconds * 20; ++i) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        exited_ = true;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return -1;
  }
  std::string log() const { return file_bytes(log_); }
  int port() const { return port_; }
  void signal(int sig) const { kill(pid_, sig); }

 private:
  std::string log_;
  pid_t pid_ = -1;
  int port_ = 0;
  bool exited_ = false;
};

/// Sends `request` as is on a new connection to the server and returns all it answers.
std::string raw_exchange(int port, const std::string& request) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string answer;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
      ::send(fd, request.data(), request.size(), 0) == static_cast<ssize_t>(request.size())) {
    timeval tv{10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char buf[4096];
    for (ssize_t n; (n = ::recv(fd, buf, sizeof buf, 0)) > 0;) answer.append(buf, n);
  }
  ::close(fd);
  return answer;
}

/// A connection driven by hand: what is sent when, and each answer read on its own.
class RawConnection {
 public:
  explicit RawConnection(int port) : fd_(::socket(AF_INET, SOCK_STREAM, 0)) {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    timeval tv{10, 0};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }
  ~RawConnection() { ::close(fd_); }
  void send(const std::string& bytes) {
    EXPECT_EQ(::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(bytes.size()));
  }
  /// One answer: its head, then as many body bytes as its Content-Length says.
  std::string read_response() {
    while (buffer_.find("\r\n\r\n") == std::string::npos && receive()) {
    }
    const size_t head = buffer_.find("\r\n\r\n");
    if (head == std::string::npos) return std::exchange(buffer_, {});
    const size_t at = buffer_.find("Content-Length: ");
    const size_t length = at < head ? std::stoul(buffer_.substr(at + 16)) : 0;
    while (buffer_.size() < head + 4 + length && receive()) {
    }
    const std::string answer = buffer_.substr(0, head + 4 + length);
    buffer_.erase(0, answer.size());
    return answer;
  }
  /// Everything until the server closes the connection (or 10 s pass).
  std::string read_all() {
    while (receive()) {
    }
    return std::exchange(buffer_, {});
  }

 private:
  bool receive() {
    char buf[4096];
    const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
    if (n > 0) buffer_.append(buf, static_cast<size_t>(n));
    return n > 0;
  }
  int fd_;
  std::string buffer_;
};

json body_of(const httplib::Result& r) {
  EXPECT_TRUE(r) << "no response";
  return r ? json::parse(r->body, nullptr, false) : json();
}

/// Where `value` breaks `schema`, "" where it conforms. The subset of OpenAPI 3.0 schemas
/// docs/openapi.json uses: $ref, type, nullable, enum, required, properties,
/// additionalProperties false, items, oneOf.
std::string schema_mismatch(const json& value, const json& schema, const json& spec,
                            const std::string& at = "$") {
  if (schema.contains("$ref")) {
    const std::string ref = schema["$ref"];  // "#/components/schemas/Name"
    return schema_mismatch(value, spec.at(json::json_pointer(ref.substr(1))), spec, at);
  }
  if (value.is_null()) return schema.value("nullable", false) ? "" : at + " is null";
  if (schema.contains("oneOf")) {
    int matches = 0;
    for (const auto& s : schema["oneOf"]) matches += schema_mismatch(value, s, spec, at).empty();
    return matches == 1 ? "" : at + " matches " + std::to_string(matches) + " of its oneOf";
  }
  const std::string type = schema.value("type", "");
  const bool typed = type.empty() || (type == "object" && value.is_object()) ||
                     (type == "array" && value.is_array()) ||
                     (type == "string" && value.is_string()) ||
                     (type == "integer" && value.is_number_integer()) ||
                     (type == "number" && value.is_number()) ||
                     (type == "boolean" && value.is_boolean());
  if (!typed) return at + " is not " + type + ": " + value.dump().substr(0, 80);
  if (schema.contains("enum")) {
    const json& allowed = schema["enum"];
    if (std::find(allowed.begin(), allowed.end(), value) == allowed.end()) {
      return at + " is not one of " + allowed.dump();
    }
  }
  if (value.is_object()) {
    for (const auto& name : schema.value("required", json::array())) {
      if (!value.contains(name.get<std::string>())) return at + " lacks " + name.dump();
    }
    const json properties = schema.value("properties", json::object());
    for (const auto& [key, v] : value.items()) {
      if (properties.contains(key)) {
        const std::string m = schema_mismatch(v, properties[key], spec, at + "." + key);
        if (!m.empty()) return m;
      } else if (schema.value("additionalProperties", json(true)) == json(false)) {
        return at + " has " + key + ", which its schema does not name";
      }
    }
  }
  if (value.is_array() && schema.contains("items")) {
    for (size_t i = 0; i < value.size(); ++i) {
      const std::string m =
          schema_mismatch(value[i], schema["items"], spec, at + "[" + std::to_string(i) + "]");
      if (!m.empty()) return m;
    }
  }
  return "";
}

/// A JSON answer against the schema the spec gives its route, method and status (or the
/// route's default answer).
void expect_conforms(const json& spec, const std::string& path, const std::string& method,
                     const httplib::Result& r) {
  ASSERT_TRUE(r) << method << " " << path << ": no response";
  const json& responses = spec.at("paths").at(path).at(method).at("responses");
  const std::string status = std::to_string(r->status);
  json response = responses.contains(status) ? responses[status] : responses.at("default");
  if (response.contains("$ref")) {  // "#/components/responses/Name"
    response = spec.at(json::json_pointer(response["$ref"].get<std::string>().substr(1)));
  }
  ASSERT_TRUE(response.contains("content") && response["content"].contains("application/json"))
      << method << " " << path << " " << status << " has no JSON schema in the spec";
  const json& schema = response["content"]["application/json"].at("schema");
  EXPECT_EQ(schema_mismatch(json::parse(r->body), schema, spec), "")
      << method << " " << path << " " << status << ": " << r->body.substr(0, 300);
}

}  // namespace

TEST(Serve, EveryEndpointsHappyPath) {
  const auto& f = fixture();
  Server server("");
  auto reader = server.client(f.read_key);
  EXPECT_EQ(reader.Get("/healthz")->status, 200);
  auto ready = reader.Get("/readyz");
  EXPECT_EQ(ready->status, 200);
  EXPECT_EQ(body_of(ready)["catalogue"], true);
  // The API description served is the one in docs/, and every route it names exists with
  // its methods (a GET of a route the server lacks is 404 not_found; a method it lacks, 405).
  const json spec = body_of(reader.Get("/openapi.json"));
  EXPECT_EQ(spec, json::parse(file_bytes(std::string(VITRINE_SOURCE_DIR) + "/docs/openapi.json")));
  // Every JSON answer below is checked against the response schema the spec gives it.
  expect_conforms(spec, "/healthz", "get", reader.Get("/healthz"));
  expect_conforms(spec, "/readyz", "get", ready);
  auto admin_client = server.client(f.admin_key), write_client = server.client(f.write_key);
  for (const auto& [path, item] : spec["paths"].items()) {
    std::string concrete = std::regex_replace(path, std::regex("\\{sku\\}"), "NOSUCHSKU");
    concrete = std::regex_replace(concrete, std::regex("\\{i\\}"), "0");
    for (const auto& [method, op] : item.items()) {
      if (method == "parameters") continue;
      // Requests that change nothing: an empty body, an unknown product.
      auto& c = write_client;
      httplib::Result r = method == "get"      ? c.Get(concrete.c_str())
                          : method == "delete" ? c.Delete(concrete.c_str())
                          : method == "put"    ? c.Put(concrete.c_str(), "", "text/plain")
                          : method == "patch"  ? c.Patch(concrete.c_str(), "", "text/plain")
                          : concrete == "/v1/admin/reload"
                              ? admin_client.Get(concrete.c_str())  // a POST would reload
                              : c.Post(concrete.c_str(), "", "text/plain");
      ASSERT_TRUE(r) << method << " " << path;
      const auto code = json::parse(r->body, nullptr, false);
      const bool unknown = code.is_object() && code.contains("error") &&
                           code["error"]["code"] == "not_found";
      EXPECT_FALSE(unknown) << method << " " << path << ": " << r->body;
      if (concrete != "/v1/admin/reload") {
        EXPECT_NE(r->status, 405) << method << " " << path;
      }
    }
  }

  // classify: raw body, multipart, JSON with base64; the same photo, the same answer.
  auto raw = reader.Post("/v1/classify?topk=2", f.photos[0], "image/png");
  ASSERT_EQ(raw->status, 200) << raw->body;
  const auto top = body_of(raw)["top"];
  ASSERT_EQ(top.size(), 2u);
  expect_conforms(spec, "/v1/classify", "post", raw);
  // `curl --data-binary @photo.png` labels the photo form-encoded: still the photo, also
  // beyond the 8 KB httplib allows a form (here a JPEG with a 10 KB comment).
  auto as_form = reader.Post("/v1/classify?topk=2", f.photos[0],
                             "application/x-www-form-urlencoded");
  ASSERT_EQ(as_form->status, 200) << as_form->body;
  EXPECT_EQ(body_of(as_form)["top"], top);
  auto encoded_name = reader.Post("/v1/classify?%74opk=2", f.photos[0], "image/png");
  ASSERT_EQ(encoded_name->status, 200) << encoded_name->body;  // %74opk is topk
  EXPECT_EQ(body_of(encoded_name)["top"], top);
  {
    std::vector<uint8_t> jpeg;
    cv::imencode(".jpg", cv::imdecode(std::vector<uint8_t>(f.photos[0].begin(), f.photos[0].end()),
                                      cv::IMREAD_COLOR), jpeg);
    const std::string comment(10000, 'c');
    std::string big(jpeg.begin(), jpeg.begin() + 2);  // SOI, then a COM segment
    big += "\xff\xfe";
    big += static_cast<char>((comment.size() + 2) >> 8);
    big += static_cast<char>((comment.size() + 2) & 255);
    big += comment;
    big.append(jpeg.begin() + 2, jpeg.end());
    auto big_form = reader.Post("/v1/classify", big, "application/x-www-form-urlencoded");
    ASSERT_EQ(big_form->status, 200) << big_form->body;
  }
  httplib::MultipartFormDataItems items = {{"image", f.photos[0], "p0.png", "image/png"}};
  auto multipart = reader.Post("/v1/classify?topk=2", items);
  ASSERT_EQ(multipart->status, 200) << multipart->body;
  EXPECT_EQ(body_of(multipart)["top"], top);
  // Two photos in one request: which one was answered would be a guess.
  items.push_back({"image", f.photos[1], "p1.png", "image/png"});
  auto two = reader.Post("/v1/classify", items);
  EXPECT_EQ(two->status, 400) << two->body;
  EXPECT_CONTAINS(two->body, "2 'image' fields");
  const std::string b64 =
      base64_encode(reinterpret_cast<const uint8_t*>(f.photos[0].data()), f.photos[0].size());
  auto via_json = reader.Post("/v1/classify", json{{"image", b64}, {"topk", 2}}.dump(),
                              "application/json");
  ASSERT_EQ(via_json->status, 200) << via_json->body;
  EXPECT_EQ(body_of(via_json)["top"], top);

  // explain: a Grad-CAM heat map of the top class, the size of the model's input crop.
  auto explained = reader.Post("/v1/classify?explain=true", f.photos[0], "image/png");
  ASSERT_EQ(explained->status, 200) << explained->body;
  const auto heat = base64_decode(body_of(explained)["heatmap"].get<std::string>());
  const cv::Mat heat_image = cv::imdecode(heat, cv::IMREAD_COLOR);
  EXPECT_EQ(heat_image.cols, 32);
  EXPECT_EQ(heat_image.rows, 32);
  EXPECT_EQ(body_of(explained)["heatmap_label"], top[0]["label"]);
  expect_conforms(spec, "/v1/classify", "post", explained);

  // The web page and what it reads: the catalogue, page by page, and product photos.
  auto page = server.client().Get("/");
  ASSERT_EQ(page->status, 200);
  EXPECT_NE(page->get_header_value("Content-Type").find("text/html"), std::string::npos);
  EXPECT_NE(page->body.find("/v1/classify"), std::string::npos);
  const auto listed = reader.Get("/v1/products?offset=2&limit=5");
  expect_conforms(spec, "/v1/products", "get", listed);
  auto listing = body_of(listed);
  EXPECT_EQ(listing["total"], 24);
  ASSERT_EQ(listing["products"].size(), 5u);
  EXPECT_EQ(listing["products"][0]["sku"], "SKU2");
  EXPECT_EQ(listing["products"][0]["images"], json::array({"/v1/products/SKU2/images/0"}));
  auto photo = reader.Get("/v1/products/SKU3/images/0");
  ASSERT_EQ(photo->status, 200);
  EXPECT_EQ(photo->get_header_value("Content-Type"), "image/png");
  EXPECT_EQ(photo->body, f.photos[3]);
  EXPECT_EQ(reader.Get("/v1/products/SKU3/images/1")->status, 404);

  auto embed = reader.Post("/v1/embed", f.photos[3], "image/png");
  ASSERT_EQ(embed->status, 200);
  EXPECT_EQ(body_of(embed)["embedding"].size(), 512u);
  expect_conforms(spec, "/v1/embed", "post", embed);

  // search with a filter inside: the photo of SKU3 finds SKU3 first.
  auto found = reader.Post("/v1/search",
                           json{{"image", base64_encode(reinterpret_cast<const uint8_t*>(
                                                            f.photos[3].data()),
                                                        f.photos[3].size())},
                                {"k", 3},
                                {"filters", {"category=shoes"}}}
                               .dump(),
                           "application/json");
  ASSERT_EQ(found->status, 200) << found->body;
  const auto results = body_of(found)["results"];
  ASSERT_EQ(results.size(), 3u);
  EXPECT_EQ(results[0]["sku"], "SKU3");
  EXPECT_EQ(results[0]["image"], "/v1/products/SKU3/images/0");
  for (const auto& r : results) EXPECT_EQ(r["category"], "shoes");
  expect_conforms(spec, "/v1/search", "post", found);
  // "filter" as one string, or in the query string, works as "filters" does.
  auto found_again = reader.Post("/v1/search?filter=category%3Dshoes",
                                 json{{"image", base64_encode(reinterpret_cast<const uint8_t*>(
                                                                  f.photos[3].data()),
                                                              f.photos[3].size())},
                                      {"k", 3},
                                      {"filter", "category=shoes"}}
                                     .dump(),
                                 "application/json");
  ASSERT_EQ(found_again->status, 200) << found_again->body;
  EXPECT_EQ(body_of(found_again)["results"], results);
  // Routed by the head's category: how it went is in "route"; searched inside the predicted
  // categories, or, unsure (this head is untrained), in the whole catalogue.
  auto routed = reader.Post("/v1/search?k=3&route_by_category=true", f.photos[3], "image/png");
  ASSERT_EQ(routed->status, 200) << routed->body;
  expect_conforms(spec, "/v1/search", "post", routed);
  const json how = body_of(routed)["route"];
  EXPECT_NE(std::string("shoes bags hats").find(how["top"]["category"].get<std::string>()),
            std::string::npos) << how;
  if (how.contains("fallback")) {
    EXPECT_EQ(body_of(routed)["results"][0]["sku"], "SKU3") << how;
  } else {
    for (const auto& r : body_of(routed)["results"]) {
      const auto& in = how["categories"];
      EXPECT_NE(std::find(in.begin(), in.end(), r["category"]), in.end()) << how;
    }
  }
  EXPECT_EQ(reader.Post("/v1/search?route_by_category=maybe", f.photos[3], "image/png")->status,
            400);
  // Filters add up, repeated in the query string too.
  auto repeated = reader.Post("/v1/search?k=3&filters=category%3Dshoes&filters=price%3E%3D0",
                              f.photos[3], "image/png");
  ASSERT_EQ(repeated->status, 200) << repeated->body;

  // products: put (image without its EXIF), get, bulk post, delete.
  auto writer = server.client(f.write_key);
  auto put = writer.Put("/v1/products/NEW1",
                        json{{"title", "New"}, {"category", "hats"}, {"price", 5},
                             {"images", {b64}}}.dump(),
                        "application/json");
  ASSERT_EQ(put->status, 200) << put->body;
  expect_conforms(spec, "/v1/products/{sku}", "put", put);
  const auto got_one = reader.Get("/v1/products/NEW1");
  expect_conforms(spec, "/v1/products/{sku}", "get", got_one);
  auto got = body_of(got_one);
  EXPECT_EQ(got["title"], "New");
  ASSERT_EQ(got["images"].size(), 1u);
  // Photos are named by the URL that serves them, not by a path on the server.
  EXPECT_EQ(got["images"][0], "/v1/products/NEW1/images/0");
  auto stored = reader.Get(got["images"][0].get<std::string>().c_str());
  ASSERT_EQ(stored->status, 200);
  EXPECT_EQ(stored->get_header_value("Content-Type"), "image/png");
  auto bulk = writer.Post("/v1/products",
                          json::array({{{"sku", "NEW2"}, {"images", {b64}}},
                                       {{"sku", "NEW3"}, {"images", {b64}}, {"price", 1}}})
                              .dump(),
                          "application/json");
  ASSERT_EQ(bulk->status, 200) << bulk->body;
  EXPECT_EQ(body_of(bulk)["stored"], 2);
  EXPECT_EQ(body_of(bulk)["failed"], 0);
  // A batch with bad products stores the good ones and names each bad one.
  auto mixed = writer.Post("/v1/products",
                           json::array({{{"sku", "NEW4"}, {"images", {b64}}},
                                        {{"sku", "BAD1"}, {"images", {base64_encode("text")}}},
                                        {{"images", {b64}}},
                                        {{"sku", "  "}, {"images", {b64}}},
                                        {{"sku", "NEW4"}, {"images", {b64}}}})
                               .dump(),
                           "application/json");
  ASSERT_EQ(mixed->status, 200) << mixed->body;
  expect_conforms(spec, "/v1/products", "post", mixed);
  const json m = body_of(mixed);
  EXPECT_EQ(m["stored"], 1) << m;
  EXPECT_EQ(m["failed"], 4) << m;
  ASSERT_EQ(m["results"].size(), 5u) << m;
  EXPECT_EQ(m["results"][3]["error"]["code"], "bad_sku");
  EXPECT_EQ(m["results"][4]["error"]["code"], "duplicate_sku");
  EXPECT_EQ(m["results"][0]["status"], "stored");
  EXPECT_EQ(m["results"][1]["sku"], "BAD1");
  EXPECT_EQ(m["results"][1]["error"]["code"], "bad_image");
  EXPECT_EQ(m["results"][1]["error"]["message"].get<std::string>().rfind("images[0]: ", 0), 0u)
      << m["results"][1];
  EXPECT_EQ(m["results"][2]["index"], 2);
  EXPECT_EQ(m["results"][2]["error"]["code"], "bad_product");
  EXPECT_EQ(reader.Get("/v1/products/NEW4")->status, 200);
  const auto unknown = reader.Get("/v1/products/BAD1");
  EXPECT_EQ(unknown->status, 404);
  expect_conforms(spec, "/v1/products/{sku}", "get", unknown);
  const auto removed = writer.Delete("/v1/products/NEW4");
  EXPECT_EQ(removed->status, 200);
  expect_conforms(spec, "/v1/products/{sku}", "delete", removed);
  EXPECT_EQ(writer.Delete("/v1/products/NEW2")->status, 200);
  EXPECT_EQ(reader.Get("/v1/products/NEW2")->status, 404);
  EXPECT_EQ(writer.Delete("/v1/products/NEW2")->status, 404);
  writer.Delete("/v1/products/NEW1");
  writer.Delete("/v1/products/NEW3");

  auto admin = server.client(f.admin_key);
  auto reload = admin.Post("/v1/admin/reload", "", "application/json");
  EXPECT_EQ(reload->status, 200) << reload->body;
  expect_conforms(spec, "/v1/admin/reload", "post", reload);

  const std::string metrics = reader.Get("/metrics")->body;
  EXPECT_NE(metrics.find("vitrine_http_requests_total{route=\"/v1/classify\",status=\"200\"} 7"),
            std::string::npos)
      << metrics;
  EXPECT_NE(metrics.find("vitrine_model_reloads_total{outcome=\"ok\"} 1"), std::string::npos);
  EXPECT_NE(metrics.find("{route=\"/v1/products/{sku}/images/{i}\",status=\"200\"} 2"),
            std::string::npos)
      << metrics;
  // The access log names routes and statuses, never keys or image bytes.
  const std::string log = server.log();
  EXPECT_NE(log.find("\"path\":\"/v1/classify\""), std::string::npos);
  EXPECT_EQ(log.find(f.read_key), std::string::npos);
  // Each line carries its own UTC time and the request's latency.
  const auto at = log.find("{\"bytes_in\"");
  ASSERT_NE(at, std::string::npos) << log;
  const json line = json::parse(log.substr(at, log.find('\n', at) - at));
  EXPECT_TRUE(std::regex_match(line.value("time", std::string()),
                               std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)")))
      << line;
  ASSERT_TRUE(line.contains("ms") && line["ms"].is_number()) << line;
  EXPECT_GE(line["ms"].get<double>(), 0.0);
  EXPECT_LT(line["ms"].get<double>(), 600'000.0);
  EXPECT_EQ(log.find(b64.substr(0, 40)), std::string::npos);
}

TEST(Serve, KeysAndScopes) {
  const auto& f = fixture();
  Server server("");
  auto anonymous = server.client();
  auto r = anonymous.Post("/v1/classify", f.photos[0], "image/png");
  EXPECT_EQ(r->status, 401);
  EXPECT_EQ(body_of(r)["error"]["code"], "unauthorized");
  EXPECT_EQ(r->get_header_value("WWW-Authenticate"), "Bearer");
  EXPECT_EQ(server.client("vt_not_a_key").Post("/v1/classify", f.photos[0], "image/png")->status,
            401);
  // A key sent without its scheme is told so, not called invalid.
  r = anonymous.Get("/v1/products", {{"Authorization", f.read_key}});
  EXPECT_EQ(r->status, 401);
  EXPECT_CONTAINS(body_of(r)["error"]["message"].get<std::string>(), "must read 'Bearer <key>'");
  auto reader = server.client(f.read_key);
  r = reader.Delete("/v1/products/SKU1");
  EXPECT_EQ(r->status, 403);
  EXPECT_EQ(body_of(r)["error"]["code"], "forbidden");
  EXPECT_EQ(reader.Post("/v1/admin/reload", "", "application/json")->status, 403);
  EXPECT_EQ(anonymous.Get("/healthz")->status, 200) << "health checks need no key";
  // Refusals are counted as any answer is, and the log names the key (by its name).
  const std::string metrics = reader.Get("/metrics")->body;
  EXPECT_NE(metrics.find("{route=\"/v1/classify\",status=\"401\"} 2"), std::string::npos)
      << metrics;
  EXPECT_NE(metrics.find("{route=\"/v1/products/{sku}\",status=\"403\"} 1"), std::string::npos)
      << metrics;
  EXPECT_NE(server.log().find("\"key\":\"reader\""), std::string::npos) << server.log();
  // The scheme's name is case-insensitive, and HEAD reads as GET does.
  httplib::Client lower("127.0.0.1", server.port());
  lower.set_default_headers({{"Authorization", "bearer " + f.read_key}});
  EXPECT_EQ(lower.Get("/v1/products?limit=1")->status, 200);
  EXPECT_EQ(reader.Head("/v1/products/NO_SUCH_SKU")->status, 404);
  // A body sent without its JSON type is refused, not dropped (the old model reloaded).
  auto admin = server.client(f.admin_key);
  r = admin.Post("/v1/admin/reload", R"({"model": "elsewhere"})",
                 "application/x-www-form-urlencoded");
  EXPECT_EQ(r->status, 400);
  EXPECT_CONTAINS(body_of(r)["error"]["message"].get<std::string>(), "Content-Type");
  // A refused request's body is read and dropped, never taken for the next request on the
  // connection. The body comes after a pause (the refusal may be sent before it); then the
  // client's next request gets the next answer.
  const std::string smuggled = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  for (const size_t size : {smuggled.size(), size_t{3} << 20}) {  // a request, a 3 MB photo
    RawConnection raw(server.port());
    raw.send("POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
             "Content-Length: " + std::to_string(size) + "\r\n\r\n");
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    raw.send(smuggled + std::string(size - smuggled.size(), '\n'));
    const std::string first = raw.read_response();
    EXPECT_EQ(first.rfind("HTTP/1.1 401", 0), 0u) << first.substr(0, 200);
    raw.send("GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    const std::string rest = raw.read_all();
    EXPECT_CONTAINS(rest, "\"ready\"");
    EXPECT_EQ(rest.find("\"status\":\"ok\""), std::string::npos) << rest.substr(0, 400);
  }
}

TEST(Serve, LimitsAndBadInput) {
  const auto& f = fixture();
  Server server("--max-body-mb 1 --max-pixels 1000 --rate-limit 1 --rate-burst 3");
  auto reader = server.client(f.read_key);
  auto r = reader.Post("/v1/classify", std::string(2 << 20, 'x'), "image/png");
  EXPECT_EQ(r->status, 413);
  EXPECT_EQ(body_of(r)["error"]["code"], "too_large");
  r = reader.Post("/v1/classify", f.photos[0], "image/png");  // 48 x 40 > 1000 pixels
  EXPECT_EQ(r->status, 422);
  EXPECT_EQ(body_of(r)["error"]["code"], "too_many_pixels");
  r = reader.Post("/v1/classify", "not an image", "image/png");
  EXPECT_EQ(r->status, 400);
  EXPECT_EQ(body_of(r)["error"]["code"], "bad_image");
  // Three requests (413 included: limits are checked before the body is read) used up the
  // burst of 3 at 1 a second: the next one waits its turn.
  r = reader.Post("/v1/classify", "not an image", "image/png");
  EXPECT_EQ(r->status, 429);
  EXPECT_EQ(body_of(r)["error"]["code"], "rate_limited");
  EXPECT_FALSE(r->get_header_value("Retry-After").empty());
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  r = reader.Post("/v1/search", "{\"image\": 3", "application/json");
  EXPECT_EQ(r->status, 400);
  EXPECT_EQ(body_of(r)["error"]["code"], "bad_json");
}

TEST(Serve, AFullQueueAnswers429WithRetryAfter) {
  const auto& f = fixture();
  Server server("--queue 1 --max-batch 64 --max-delay-ms 300");
  std::vector<std::future<int>> answers;
  for (int i = 0; i < 6; ++i) {
    answers.push_back(std::async(std::launch::async, [&, i] {
      auto c = server.client(f.read_key);
      auto r = c.Post("/v1/classify", f.photos[static_cast<size_t>(i)], "image/png");
      return r ? r->status : -1;
    }));
  }
  int ok = 0, rejected = 0;
  for (auto& a : answers) {
    const int status = a.get();
    ok += status == 200;
    rejected += status == 429;
  }
  EXPECT_GE(ok, 1);
  EXPECT_GE(rejected, 1);
  EXPECT_EQ(ok + rejected, 6);
}

TEST(Serve, ConcurrentRequestsAreBatchedAndEachGetsItsOwnAnswer) {
  const auto& f = fixture();
  Server server("--max-batch 16 --max-delay-ms 200");
  auto reader = server.client(f.read_key);
  // Each photo alone first.
  std::vector<json> alone;
  for (int i = 0; i < 12; ++i) {
    alone.push_back(body_of(reader.Post("/v1/embed", f.photos[static_cast<size_t>(i)], "image/png"))["embedding"]);
  }
  const std::string before = reader.Get("/metrics")->body;
  std::vector<std::future<json>> answers;
  for (int i = 0; i < 12; ++i) {
    answers.push_back(std::async(std::launch::async, [&, i] {
      auto c = server.client(f.read_key);
      return body_of(c.Post("/v1/embed", f.photos[static_cast<size_t>(i)], "image/png"));
    }));
  }
  for (int i = 0; i < 12; ++i) {
    const auto got = answers[static_cast<size_t>(i)].get()["embedding"];
    ASSERT_EQ(got.size(), alone[static_cast<size_t>(i)].size());
    double diff = 0;
    for (size_t d = 0; d < got.size(); ++d) {
      diff = std::max(diff, std::abs(got[d].get<double>() - alone[static_cast<size_t>(i)][d].get<double>()));
    }
    EXPECT_LT(diff, 1e-4) << "photo " << i << " got another photo's answer";
  }
  // 12 + 12 images in fewer than 12 + 12 forward passes: some ran together.
  const std::string metrics = reader.Get("/metrics")->body;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(metrics, m, std::regex("vitrine_batch_size_count ([0-9]+)")));
  const int batches = std::stoi(m[1]);
  EXPECT_LT(batches, 24) << metrics;
  EXPECT_GE(batches, 13);
  (void)before;
  // The photos of one bulk request go through the model together too, and each product
  // gets its own photo's embedding: searching with photo i finds product i first.
  json products = json::array();
  for (size_t i = 0; i < 12; ++i) {
    products.push_back({{"sku", "BATCHED" + std::to_string(i)},
                        {"images", {base64_encode(reinterpret_cast<const uint8_t*>(
                                                      f.photos[i].data()),
                                                  f.photos[i].size())}}});
  }
  auto writer = server.client(f.write_key);
  auto bulk = writer.Post("/v1/products", products.dump(), "application/json");
  ASSERT_EQ(bulk->status, 200) << bulk->body;
  EXPECT_EQ(body_of(bulk)["stored"], 12) << bulk->body;
  ASSERT_TRUE(std::regex_search(reader.Get("/metrics")->body, m,
                                std::regex("vitrine_batch_size_count ([0-9]+)")));
  EXPECT_LT(std::stoi(m[1]) - batches, 12) << "one forward pass a photo";
  for (size_t i = 0; i < 12; ++i) {
    auto found = reader.Post(("/v1/search?k=1&filter=sku%3DBATCHED" + std::to_string(i)).c_str(),
                             f.photos[i], "image/png");
    ASSERT_EQ(found->status, 200) << found->body;
    const json results = body_of(found)["results"];
    ASSERT_EQ(results.size(), 1u) << found->body;
    EXPECT_GT(results[0]["score"].get<double>(), 0.999) << "product " << i << " holds another "
                                                           "photo's embedding";
    EXPECT_EQ(writer.Delete(("/v1/products/BATCHED" + std::to_string(i)).c_str())->status, 200);
  }
}

TEST(Serve, PatchChangesAProductsDetailsAndKeepsItsPhotos) {
  const auto& f = fixture();
  Server server("");
  auto reader = server.client(f.read_key), writer = server.client(f.write_key);
  const json spec = body_of(reader.Get("/openapi.json"));
  const auto b64 = [&f](size_t i) {
    return base64_encode(reinterpret_cast<const uint8_t*>(f.photos[i].data()), f.photos[i].size());
  };
  const auto forward_passes_and_index_size = [&reader] {
    const std::string metrics = reader.Get("/metrics")->body;
    std::smatch passes, size;
    EXPECT_TRUE(
        std::regex_search(metrics, passes, std::regex("vitrine_batch_size_count ([0-9]+)")));
    EXPECT_TRUE(std::regex_search(metrics, size, std::regex("vitrine_index_size ([0-9]+)")));
    return std::make_pair(std::stoi(passes[1]), std::stoi(size[1]));
  };
  const auto best_score = [&](size_t photo, const std::string& filter) {
    auto found = reader.Post(("/v1/search?k=1&filter=" + filter).c_str(), f.photos[photo],
                             "image/png");
    EXPECT_EQ(found->status, 200) << found->body;
    const json results = body_of(found)["results"];
    return results.empty() || results[0]["sku"] != "PATCHED" ? -1.0
                                                            : results[0]["score"].get<double>();
  };
  auto put = writer.Put("/v1/products/PATCHED",
                        json{{"title", "Wool hat"}, {"category", "hats"}, {"price", 5},
                             {"brand", "acme"},
                             {"attributes", {{"colour", "red"}, {"size", "M"}}},
                             {"images", {b64(5)}}}.dump(),
                        "application/json");
  ASSERT_EQ(put->status, 200) << put->body;
  const std::string photo_before = reader.Get("/v1/products/PATCHED/images/0")->body;
  const auto before = forward_passes_and_index_size();

  // A new price, one attribute more, one less, the title cleared: no photo goes through the
  // model and the index keeps its size, while filters see the new details at once.
  auto patched = writer.Patch("/v1/products/PATCHED",
                              json{{"price", 7.5}, {"title", nullptr},
                                   {"attributes", {{"size", nullptr}, {"material", "wool"}}}}
                                  .dump(),
                              "application/merge-patch+json");
  ASSERT_EQ(patched->status, 200) << patched->body;
  expect_conforms(spec, "/v1/products/{sku}", "patch", patched);
  const json p = body_of(patched);
  EXPECT_EQ(p["price"], 7.5);
  EXPECT_EQ(p["title"], "");
  EXPECT_EQ(p["category"], "hats");
  EXPECT_EQ(p["brand"], "acme");
  EXPECT_EQ(p["attributes"], json({{"colour", "red"}, {"material", "wool"}}));
  EXPECT_EQ(p["images"], json::array({"/v1/products/PATCHED/images/0"}));
  EXPECT_EQ(body_of(reader.Get("/v1/products/PATCHED")), p);
  EXPECT_EQ(forward_passes_and_index_size(), before);
  EXPECT_EQ(reader.Get("/v1/products/PATCHED/images/0")->body, photo_before);
  EXPECT_GT(best_score(5, "price%3D7.5"), 0.999);
  EXPECT_GT(best_score(5, "attributes.material%3Dwool"), 0.999);
  EXPECT_LT(best_score(5, "price%3D5"), 0.0) << "the old price still matches";
  // application/json is taken too; an empty patch changes nothing.
  auto same = writer.Patch("/v1/products/PATCHED", "{}", "application/json");
  ASSERT_EQ(same->status, 200) << same->body;
  EXPECT_EQ(body_of(same), p);

  // Refused, and nothing changes: the problem is named.
  const std::vector<std::tuple<std::string, std::string, int, std::string>> refused = {
      {"/v1/products/NOSUCH", R"({"price": 1})", 404, "unknown_sku"},
      {"/v1/products/NOSUCH", R"({"images": [")" + b64(6) + R"("]})", 404, "unknown_sku"},
      {"/v1/products/PATCHED", R"({"price": "cheap"})", 400, "price must be a number"},
      {"/v1/products/PATCHED", R"({"price": -1, "title": "x"})", 400, "must not be negative"},
      {"/v1/products/PATCHED", R"({"attributes": 5})", 400, "attributes must be a JSON object"},
      {"/v1/products/PATCHED", R"({"images": null})", 400, "one photo at least"},
      {"/v1/products/PATCHED", R"({"images": []})", 400, "non-empty array"},
      {"/v1/products/PATCHED", R"({"images": [")" + base64_encode("text") + R"("]})", 400,
       "images[0]: "},
      {"/v1/products/PATCHED", R"({"colour": "red"})", 400, "unknown product member 'colour'"},
      {"/v1/products/PATCHED", R"({"sku": "OTHER"})", 400, "differs from the one in the URL"},
      {"/v1/products/PATCHED", R"([{"price": 1}])", 400, "a JSON object"},
      {"/v1/products/PATCHED", R"({"price": )", 400, "bad_json"},
  };
  for (const auto& [path, body, status, says] : refused) {
    auto r = writer.Patch(path.c_str(), body, "application/merge-patch+json");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, status) << body << ": " << r->body;
    EXPECT_CONTAINS(r->body, says);
  }
  EXPECT_EQ(writer.Patch("/v1/products/PATCHED", R"({"price": 1})", "text/plain")->status, 415);
  // Media types compare whole (parameters aside): JSON Patch (RFC 6902) is another language.
  for (const char* type : {"application/json-patch+json", "application/jsonx",
                           "application/merge-patch+jsonx"}) {
    EXPECT_EQ(writer.Patch("/v1/products/PATCHED", R"({"price": 1})", type)->status, 415) << type;
  }
  EXPECT_EQ(writer.Post("/v1/products", "[]", "application/jsonx")->status, 415);
  httplib::MultipartFormDataItems form = {{"price", "1", "", ""}};
  EXPECT_EQ(writer.Put("/v1/products/PATCHED", form)->status, 415);
  auto charset = writer.Patch("/v1/products/PATCHED", "{}", "application/json; charset=utf-8");
  EXPECT_EQ(charset->status, 200) << charset->body;
  // A product's photo takes GET alone: other methods are 405, not a SKU problem.
  for (const auto& r : {writer.Patch("/v1/products/PATCHED/images/0", "{}", "application/json"),
                        writer.Put("/v1/products/PATCHED/images/0", "{}", "application/json"),
                        writer.Delete("/v1/products/PATCHED/images/0")}) {
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 405) << r->body;
    EXPECT_EQ(r->get_header_value("Allow"), "GET");
  }
  EXPECT_EQ(reader.Patch("/v1/products/PATCHED", R"({"price": 1})", "application/json")->status,
            403);
  EXPECT_EQ(body_of(reader.Get("/v1/products/PATCHED")), p);

  // Photos sent replace the old ones (one forward pass), the details are merged as before.
  const auto before_photo = forward_passes_and_index_size();
  auto new_photo = writer.Patch("/v1/products/PATCHED",
                                json{{"images", {b64(6)}}, {"category", "caps"}}.dump(),
                                "application/merge-patch+json");
  ASSERT_EQ(new_photo->status, 200) << new_photo->body;
  const json q = body_of(new_photo);
  EXPECT_EQ(q["category"], "caps");
  EXPECT_EQ(q["price"], 7.5);
  EXPECT_EQ(q["attributes"], p["attributes"]);
  EXPECT_NE(reader.Get("/v1/products/PATCHED/images/0")->body, photo_before);
  const auto after = forward_passes_and_index_size();
  EXPECT_EQ(after.first, before_photo.first + 1);
  EXPECT_EQ(after.second, before.second);
  EXPECT_GT(best_score(6, "sku%3DPATCHED"), 0.999) << "the new photo is not what is searched";
  EXPECT_EQ(writer.Delete("/v1/products/PATCHED")->status, 200);
}

TEST(Serve, HotReloadUnderLoadLosesNoRequest) {
  const auto& f = fixture();
  Server server("--max-delay-ms 2");
  std::atomic<bool> stop{false};
  std::atomic<int> ok{0}, failed{0};
  std::vector<std::thread> load;
  for (int t = 0; t < 4; ++t) {
    load.emplace_back([&, t] {
      auto c = server.client(f.read_key);
      for (int i = 0; !stop; ++i) {
        auto r = c.Post("/v1/classify", f.photos[static_cast<size_t>((t * 7 + i) % 24)], "image/png");
        (r && r->status == 200 ? ok : failed)++;
      }
    });
  }
  auto admin = server.client(f.admin_key);
  for (int i = 0; i < 4; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(150));
    auto r = admin.Post("/v1/admin/reload", "", "application/json");
    EXPECT_EQ(r->status, 200) << r->body;
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  stop = true;
  for (auto& t : load) t.join();
  EXPECT_EQ(failed.load(), 0);
  EXPECT_GT(ok.load(), 8);
}

TEST(Serve, GracefulShutdownFinishesRequestsInFlight) {
  const auto& f = fixture();
  Server server("--max-delay-ms 800 --max-batch 64");
  // This request waits ~800 ms for company in the batcher when the server is told to stop.
  auto inflight = std::async(std::launch::async, [&] {
    auto c = server.client(f.read_key);
    auto r = c.Post("/v1/classify", f.photos[1], "image/png");
    return r ? r->status : -1;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(server.terminate(), 0) << server.log();
  EXPECT_EQ(inflight.get(), 200);
  // And nothing listens any more.
  httplib::Client after("127.0.0.1", server.port());
  after.set_connection_timeout(1);
  EXPECT_FALSE(after.Get("/healthz"));
}

TEST(Serve, ASignalWhileStartingStopsIt) {
  // A SIGTERM as the model loads waits for the service to start, then stops it: httplib
  // ignored a stop before its listening loop had begun, and the service ran on for good.
  Server server("", /*keys=*/true, /*wait_listening=*/false);
  for (int i = 0; i < 600 && server.log().find(" engine, ") == std::string::npos; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  server.signal(SIGTERM);
  EXPECT_EQ(server.wait_exit(60), 0) << server.log();
  EXPECT_NE(server.log().find("stopped"), std::string::npos) << server.log();
}

TEST(Serve, ASecondSignalStopsAtOnce) {
  const auto& f = fixture();
  Server server("");
  // A client that stops half-way through its body holds a connection thread (for httplib's
  // 5 s read timeout), so the shutdown the first signal starts waits for it.
  RawConnection slow(server.port());
  slow.send("POST /v1/classify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + f.read_key +
            "\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\npartial");
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  server.signal(SIGTERM);
  // Two signals before the first is taken would be one.
  for (int i = 0; i < 200 && server.log().find("shutting down") == std::string::npos; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_NE(server.log().find("shutting down"), std::string::npos) << server.log();
  EXPECT_EQ(server.terminate(), 1) << server.log();  // the second: out at once, not 0 later
  EXPECT_NE(server.log().find("second signal"), std::string::npos) << server.log();
}

TEST(Serve, ManyClientsConnectingAtOnceAreAllAnswered) {
  // A listen backlog of a few connections drops the handshakes of a crowd arriving together
  // (a load balancer's pool opening, clients restarting); every one of them must get through.
  const auto& f = fixture();
  Server server("");
  constexpr int kClients = 200;
  std::atomic<int> ready{0}, answered{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> clients;
  for (int i = 0; i < kClients; ++i) {
    clients.emplace_back([&] {
      auto c = server.client(f.read_key);
      c.set_connection_timeout(30);
      ++ready;
      while (!go) std::this_thread::yield();
      auto r = c.Get("/healthz");
      if (r && r->status == 200) ++answered;
    });
  }
  while (ready < kClients) std::this_thread::yield();
  go = true;
  for (auto& t : clients) t.join();
  EXPECT_EQ(answered.load(), kClients);
}

TEST(Serve, APortInUseIsAnErrorNotASharedPort) {
  const auto& f = fixture();
  Server first("");
  // (`timeout`: a second server that did bind would otherwise run on.)
  const auto r = test::run_command("timeout 60 " + q(test::vitrine_bin()) + " serve --model " + q(f.dir + "/m") +
                                   " --port " + std::to_string(first.port()));
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("in use"), std::string::npos) << r.err;
}

TEST(Serve, LimitsOutOfRangeStopTheStartWithTheFlagNamed) {
  const auto& f = fixture();
  const std::string serve = "timeout 60 " + q(test::vitrine_bin()) + " serve --model " +
                            q(f.dir + "/m") + " --port 0 ";
  for (const std::string flag : {"--max-body-mb 0", "--max-body-mb 5000", "--max-body-mb -3",
                                 "--max-pixels 0"}) {
    const auto r = test::run_command(serve + flag);
    EXPECT_EQ(r.status, 2) << flag;
    EXPECT_CONTAINS(r.err, flag.substr(0, flag.find(' ')));
  }
}

TEST(Serve, MalformedRequestsAre400WithTheProblemNamed) {
  const auto& f = fixture();
  Server server("");
  auto reader = server.client(f.read_key);
  auto writer = server.client(f.write_key);
  const std::string b64 = base64_encode(f.photos[0]);
  struct Case {
    std::string what, method, path, body, type;
    int status;
    std::string code;
  };
  const std::vector<Case> cases = {
      {"topk 0", "POST", "/v1/classify?topk=0", f.photos[0], "image/png", 400, "bad_parameter"},
      {"topk a word", "POST", "/v1/classify?topk=all", f.photos[0], "image/png", 400, "bad_parameter"},
      {"topk in JSON too large", "POST", "/v1/classify", json{{"image", b64}, {"topk", 100000}}.dump(),
       "application/json", 400, "bad_parameter"},
      {"topk in JSON a string", "POST", "/v1/classify", json{{"image", b64}, {"topk", "3"}}.dump(),
       "application/json", 400, "bad_parameter"},
      {"explain a word", "POST", "/v1/classify?explain=yes", f.photos[0], "image/png", 400,
       "bad_parameter"},
      {"explain in JSON a string", "POST", "/v1/classify",
       json{{"image", b64}, {"explain", "true"}}.dump(), "application/json", 400, "bad_parameter"},
      {"bad base64", "POST", "/v1/classify", json{{"image", "%%%not base64%%%"}}.dump(),
       "application/json", 400, "bad_base64"},
      {"image not a string", "POST", "/v1/embed", json{{"image", 42}}.dump(), "application/json",
       400, "no_image"},
      {"JSON without image", "POST", "/v1/embed", json::object().dump(), "application/json",
       400, "no_image"},
      {"JSON photo misnamed", "POST", "/v1/embed", json{{"photo", b64}}.dump(), "application/json",
       400, "unknown_parameter"},
      {"empty body", "POST", "/v1/classify", "", "image/png", 400, "no_image"},
      {"JSON array", "POST", "/v1/search", "[1, 2]", "application/json", 400, "bad_json"},
      {"k negative", "POST", "/v1/search", json{{"image", b64}, {"k", -1}}.dump(),
       "application/json", 400, "bad_parameter"},
      {"k too large", "POST", "/v1/search?k=5000", f.photos[0], "image/png", 400, "bad_parameter"},
      {"filter a number", "POST", "/v1/search", json{{"image", b64}, {"filters", {7}}}.dump(),
       "application/json", 400, "bad_filter"},
      {"filter without operator", "POST", "/v1/search",
       json{{"image", b64}, {"filters", {"category"}}}.dump(), "application/json", 400, "bad_filter"},
      {"listing filter unknown field", "GET", "/v1/products?filter=colour%3Dred", "", "", 400,
       "bad_filter"},
      {"17 filters", "POST", "/v1/search",
       json{{"image", b64}, {"filters", std::vector<std::string>(17, "price>1")}}.dump(),
       "application/json", 400, "bad_filter"},
      {"listing limit 0", "GET", "/v1/products?limit=0", "", "", 400, "bad_parameter"},
      {"product not JSON", "PUT", "/v1/products/X1", "sku=X1", "text/plain", 415,
       "unsupported_media_type"},
      {"photo in the query string", "POST", "/v1/classify?image=abc", f.photos[0], "image/png",
       400, "unknown_parameter"},
      {"100,000 empty objects", "POST", "/v1/products", "[" + [] {
         std::string s = "{}";
         for (int i = 0; i < 100000; ++i) s += ",{}";
         return s;
       }() + "]", "application/json", 400, "bad_json"},
      {"1,001 products at once", "POST", "/v1/products",
       json(std::vector<json>(1001, json::object())).dump(), "application/json", 413,
       "too_many_products"},
      {"product of 101 photos", "PUT", "/v1/products/X1",
       json{{"images", std::vector<std::string>(101, b64)}}.dump(), "application/json", 400,
       "bad_product"},
      {"product price a string", "PUT", "/v1/products/X1",
       json{{"price", "cheap"}, {"images", {b64}}}.dump(), "application/json", 400, "bad_product"},
      {"product without images", "PUT", "/v1/products/X1", json{{"title", "t"}}.dump(),
       "application/json", 400, "bad_product"},
      {"product image bad base64", "PUT", "/v1/products/X1",
       json{{"images", {"@@@"}}}.dump(), "application/json", 400, "bad_base64"},
      {"product image not an image", "PUT", "/v1/products/X1",
       json{{"images", {base64_encode("plain text")}}}.dump(), "application/json", 400, "bad_image"},
      {"bulk not an array", "POST", "/v1/products", json{{"sku", "X2"}}.dump(), "application/json",
       400, "bad_json"},
      {"unknown route", "GET", "/v1/nothing", "", "", 404, "not_found"},
      {"wrong method", "GET", "/v1/classify", "", "", 405, "method_not_allowed"},
      {"misspelt query parameter", "POST", "/v1/search?filtr=category%3Dshoes",
       json{{"image", b64}}.dump(), "application/json", 400, "unknown_parameter"},
      {"misspelt JSON member", "POST", "/v1/search", json{{"image", b64}, {"kk", 2}}.dump(),
       "application/json", 400, "unknown_parameter"},
      {"product member not read", "PUT", "/v1/products/X1",
       json{{"images", {b64}}, {"colour", "red"}}.dump(), "application/json", 400,
       "unknown_parameter"},
      {"product sku differs from the URL", "PUT", "/v1/products/X1",
       json{{"images", {b64}}, {"sku", "X2"}}.dump(), "application/json", 400, "bad_sku"},
      {"SKU that reads as a photo path: the photo route's", "PUT", "/v1/products/X1/images/0",
       json{{"images", {b64}}}.dump(), "application/json", 405, "method_not_allowed"},
      {"SKU over 512 bytes", "PUT", "/v1/products/" + std::string(600, 'a'),
       json{{"images", {b64}}}.dump(), "application/json", 400, "bad_sku"},
      {"nested a million deep", "PUT", "/v1/products/X1",
       "{\"attributes\": {\"a\": " + std::string(1000000, '[') + std::string(1000000, ']') +
           "}, \"images\": [\"" + b64 + "\"]}",
       "application/json", 400, "bad_json"},
      {"data URL too short", "POST", "/v1/embed", json{{"image", "data:,AAAA"}}.dump(),
       "application/json", 400, "bad_base64"},
      {"base64 with a non-ASCII character", "POST", "/v1/embed", json{{"image", "AA\u00e9"}}.dump(),
       "application/json", 400, "bad_base64"},
      {"image index huge", "GET", "/v1/products/SKU1/images/99999999999999999999999", "", "",
       404, "no_image"},
      {"negative price", "PUT", "/v1/products/X1",
       json{{"price", -5}, {"images", {b64}}}.dump(), "application/json", 400, "bad_product"},
      {"k given twice", "POST", "/v1/search?k=1&k=3", json{{"image", b64}}.dump(),
       "application/json", 400, "bad_parameter"},
      {"k in the query and the body", "POST", "/v1/search?k=1",
       json{{"image", b64}, {"k", 3}}.dump(), "application/json", 400, "bad_parameter"},
  };
  for (const auto& c : cases) {
    auto& client = c.method == "GET" ? reader : writer;
    httplib::Result r = c.method == "GET"  ? client.Get(c.path.c_str())
                        : c.method == "PUT" ? client.Put(c.path.c_str(), c.body, c.type.c_str())
                                            : client.Post(c.path.c_str(), c.body, c.type.c_str());
    ASSERT_TRUE(r) << c.what << ": no response";
    EXPECT_EQ(r->status, c.status) << c.what << ": " << r->body;
    const auto body = json::parse(r->body, nullptr, false);
    ASSERT_TRUE(body.is_object()) << c.what << ": " << r->body;
    EXPECT_EQ(body["error"]["code"], c.code) << c.what << ": " << r->body;
    EXPECT_FALSE(body["error"]["message"].get<std::string>().empty()) << c.what;
  }
  // Allow lists every method the path's routes take, from the routes registered.
  auto wrong = writer.Post("/v1/products/X1", "{}", "application/json");
  ASSERT_TRUE(wrong);
  EXPECT_EQ(wrong->status, 405);
  EXPECT_EQ(wrong->get_header_value("Allow"), "GET, DELETE, PUT, PATCH");
  // The reload route wants a path, and a POST without a Content-Length is named as such
  // (httplib's clients always send one: this request is written by hand).
  auto admin = server.client(fixture().admin_key);
  auto reload = admin.Post("/v1/admin/reload", json{{"model", 5}}.dump(), "application/json");
  EXPECT_EQ(reload->status, 400) << reload->body;
  const std::string raw = raw_exchange(server.port(),
                                       "POST /v1/admin/reload HTTP/1.1\r\nHost: x\r\n"
                                       "Authorization: Bearer " + fixture().admin_key +
                                       "\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(raw.rfind("HTTP/1.1 411", 0), 0u) << raw;
  EXPECT_NE(raw.find("no_content_length"), std::string::npos) << raw;
  // A chunked body is refused before it is read (httplib reads those without a limit).
  const std::string chunked = raw_exchange(
      server.port(), "POST /v1/embed HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                         fixture().read_key + "\r\nContent-Type: image/png\r\n"
                         "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n");
  EXPECT_EQ(chunked.rfind("HTTP/1.1 411", 0), 0u) << chunked;
  // A DELETE without Content-Length (`curl -X DELETE`) is answered, not left waiting for a
  // body: httplib answered 400 after its read timeout.
  const std::string deleted = raw_exchange(
      server.port(), "DELETE /v1/products/NO-SUCH-SKU HTTP/1.1\r\nHost: x\r\n"
                     "Authorization: Bearer " + fixture().write_key +
                     "\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(deleted.rfind("HTTP/1.1 404", 0), 0u) << deleted;
  EXPECT_NE(deleted.find("unknown_sku"), std::string::npos) << deleted;
  // A Content-Length that is no size, or beyond the limit, is answered before any body is
  // read (httplib took -5 for a length near 2^64 and waited for it, answering nothing).
  for (const auto& [length, expected] :
       std::vector<std::pair<std::string, std::string>>{{"-5", "HTTP/1.1 400"},
                                                        {"12abc", "HTTP/1.1 400"},
                                                        {"99999999999999999999", "HTTP/1.1 400"},
                                                        {"999999999", "HTTP/1.1 413"}}) {
    const std::string answer = raw_exchange(
        server.port(), "POST /v1/embed HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                           fixture().read_key + "\r\nContent-Type: image/png\r\nContent-Length: " +
                           length + "\r\nConnection: close\r\n\r\nhello");
    EXPECT_EQ(answer.rfind(expected, 0), 0u) << length << ": " << answer;
  }
  // Paths whose bytes (percent-decoded) are not UTF-8: logged and answered, not a crash.
  const std::string bad_path = raw_exchange(server.port(), "GET /v1/%FF HTTP/1.1\r\nHost: x\r\n"
                                                           "Connection: close\r\n\r\n");
  EXPECT_EQ(bad_path.rfind("HTTP/1.1 401", 0), 0u) << bad_path;  // no key given
  const std::string product = json{{"images", {b64}}}.dump();
  const std::string bad_sku = raw_exchange(
      server.port(), "PUT /v1/products/X%FF HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                         fixture().write_key +
                         "\r\nContent-Type: application/json\r\nContent-Length: " +
                         std::to_string(product.size()) + "\r\nConnection: close\r\n\r\n" +
                         product);
  EXPECT_NE(bad_sku.find("bad_sku"), std::string::npos) << bad_sku;
  // A SKU no URL can address is refused: a line break, or a dot segment.
  const auto unaddressable = body_of(writer.Post(
      "/v1/products", json{{{"sku", "X\nY"}, {"images", {b64}}}, {{"sku", ".."}, {"images", {b64}}}}
                          .dump(),
      "application/json"));
  EXPECT_EQ(unaddressable["stored"], 0) << unaddressable;
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(unaddressable["results"][i]["error"]["code"], "bad_sku") << unaddressable;
  }
  // Media types compare case-insensitively.
  auto capitals = reader.Post("/v1/embed", json{{"image", b64}}.dump(), "Application/JSON");
  EXPECT_EQ(capitals->status, 200) << capitals->body;
  // The model to reload may be named in the query string too (it was read from the body
  // only, and the old model reloaded as if asked).
  auto missing = admin.Post("/v1/admin/reload?model=/no/such/model", "", "application/json");
  EXPECT_EQ(missing->status, 422) << missing->body;
  // A Range header does not cut (or multiply) answers: httplib 0.11 applied it to every
  // answer, errors included, with status 200.
  const auto whole = reader.Get("/openapi.json");
  std::string ranges = "bytes=0-";
  for (int i = 0; i < 50; ++i) ranges += ",0-";
  for (const std::string& range : {std::string("bytes=0-10"), ranges}) {
    const auto cut = reader.Get("/openapi.json", {{"Range", range}});
    ASSERT_TRUE(cut);
    EXPECT_EQ(cut->status, 200);
    EXPECT_EQ(cut->body, whole->body) << range.substr(0, 20);
  }
  // None of them stored anything, and the service still answers.
  EXPECT_EQ(reader.Get("/v1/products/X1")->status, 404);
  EXPECT_EQ(reader.Post("/v1/classify", f.photos[0], "image/png")->status, 200);
}

TEST(Serve, AMalformedKeyFileStopsTheStartWithTheLineNamed) {
  const auto& f = fixture();
  const std::string dir = test::temp_dir("serve-badkeys");
  std::ofstream(dir + "/keys.txt") << "# ok\nnot-a-digest reader read\n";
  const auto r = test::run_command("timeout 60 " + q(test::vitrine_bin()) + " serve --model " +
                                   q(f.dir + "/m") + " --port 0 --api-keys " + q(dir + "/keys.txt"));
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("keys.txt:2"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find(" engine, "), std::string::npos) << "checked before the model loads";

  // A file edited by hand without its last line break: a new key goes on a line of its own.
  const std::string keys = dir + "/edited.txt";
  const std::string add = q(test::vitrine_bin()) + " keys add --file " + q(keys) + " --scopes read";
  ASSERT_EQ(test::run_command(add + " --name first").status, 0);
  std::string text = file_bytes(keys);
  ASSERT_EQ(text.back(), '\n');
  text.pop_back();
  std::ofstream(keys, std::ios::trunc) << text;
  ASSERT_EQ(test::run_command(add + " --name second").status, 0);
  const auto removed = test::run_command(q(test::vitrine_bin()) + " keys remove --file " + q(keys) +
                                         " --name first");
  EXPECT_EQ(removed.status, 0) << removed.err;  // the file still reads
  EXPECT_NE(file_bytes(keys).find(" second "), std::string::npos) << file_bytes(keys);
}

TEST(Serve, TlsServesHttpsAndRefusesPlainHttp) {
  const auto& f = fixture();
  const std::string dir = test::temp_dir("serve-tls");
  const auto made = test::run_command(
      "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost -keyout " +
      q(dir + "/key.pem") + " -out " + q(dir + "/cert.pem"));
  ASSERT_EQ(made.status, 0) << made.err;
  Server server("--tls-cert " + q(dir + "/cert.pem") + " --tls-key " + q(dir + "/key.pem"));
  ASSERT_NE(server.log().find("listening on https://"), std::string::npos) << server.log();
  httplib::SSLClient tls("127.0.0.1", server.port());
  tls.enable_server_certificate_verification(false);
  tls.set_bearer_token_auth(f.read_key.c_str());
  tls.set_read_timeout(60);
  auto r = tls.Post("/v1/classify?topk=2", f.photos[0], "image/png");
  ASSERT_TRUE(r) << "no TLS response: error " << static_cast<int>(r.error());
  EXPECT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(json::parse(r->body)["top"].size(), 2u) << r->body;
  // Plain HTTP on the TLS port gets no answer.
  httplib::Client plain("127.0.0.1", server.port());
  plain.set_read_timeout(5);
  auto p = plain.Get("/healthz");
  EXPECT_FALSE(p && p->status == 200);

  // A key that is not the certificate's: a clear error at start.
  const auto other = test::run_command(
      "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=x -keyout " +
      q(dir + "/other.pem") + " -out " + q(dir + "/other-cert.pem"));
  ASSERT_EQ(other.status, 0) << other.err;
  const auto bad = test::run_command("timeout 60 " + q(test::vitrine_bin()) + " serve --model " +
                                     q(f.dir + "/m") + " --port 0 --tls-cert " +
                                     q(dir + "/cert.pem") + " --tls-key " + q(dir + "/other.pem"));
  EXPECT_NE(bad.status, 0);
  EXPECT_NE(bad.err.find("TLS"), std::string::npos) << bad.err;
}

TEST(Serve, StoredProductPhotosLoseTheirMetadataButKeepTheirOrientation) {
  const auto& f = fixture();
  // examples/images/rotated.jpg is stored sideways with EXIF Orientation 6. Its EXIF block is
  // replaced by one that also carries a description a seller would not want published.
  const std::string original = file_bytes(std::string(VITRINE_SOURCE_DIR) + "/examples/images/rotated.jpg");
  ASSERT_GT(original.size(), 100u);
  const size_t app1 = original.find("\xff\xe1");
  ASSERT_NE(app1, std::string::npos);
  const size_t app1_len = (static_cast<uint8_t>(original[app1 + 2]) << 8) | static_cast<uint8_t>(original[app1 + 3]);
  const std::string secret = "GPS 48.8566N 2.3522E home of the seller";
  std::string tiff("MM\0\x2a\0\0\0\x08", 8);
  tiff += std::string("\0\x02", 2);                                       // two entries
  tiff += std::string("\x01\x12\0\x03\0\0\0\x01\0\x06\0\0", 12);          // Orientation = 6
  const uint32_t count = static_cast<uint32_t>(secret.size() + 1);
  tiff += std::string("\x01\x0e\0\x02", 4);                               // ImageDescription
  tiff += std::string{static_cast<char>(count >> 24), static_cast<char>(count >> 16),
                      static_cast<char>(count >> 8), static_cast<char>(count)};
  tiff += std::string("\0\0\0\x26", 4);                                   // at offset 38
  tiff += std::string("\0\0\0\0", 4);                                     // no next IFD
  tiff += secret + '\0';
  const std::string payload = std::string("Exif\0\0", 6) + tiff;
  const size_t len = payload.size() + 2;
  const std::string jpeg = original.substr(0, app1) + "\xff\xe1" +
                           std::string{static_cast<char>(len >> 8), static_cast<char>(len & 255)} +
                           payload + original.substr(app1 + 2 + app1_len);
  const cv::Mat upright = cv::imdecode(std::vector<uint8_t>(jpeg.begin(), jpeg.end()), cv::IMREAD_COLOR);
  const cv::Mat as_stored = cv::imdecode(std::vector<uint8_t>(jpeg.begin(), jpeg.end()),
                                         cv::IMREAD_COLOR | cv::IMREAD_IGNORE_ORIENTATION);
  ASSERT_FALSE(upright.empty());
  ASSERT_NE(upright.cols, as_stored.cols) << "the photo should be stored sideways";
  ASSERT_NE(jpeg.find(secret), std::string::npos);

  Server server("");
  auto writer = server.client(f.write_key);
  auto put = writer.Put("/v1/products/EXIF1",
                        json{{"title", "Sideways"}, {"images", {base64_encode(jpeg)}}}.dump(),
                        "application/json");
  ASSERT_EQ(put->status, 200) << put->body;
  auto photo = writer.Get("/v1/products/EXIF1/images/0");
  ASSERT_EQ(photo->status, 200);
  const std::string& stored = photo->body;
  // A JPEG is kept as a JPEG: as PNG, a 12 MP photo took some 20 MB.
  EXPECT_EQ(photo->get_header_value("Content-Type"), "image/jpeg");
  EXPECT_EQ(stored.rfind("\xff\xd8", 0), 0u);
  EXPECT_EQ(stored.find(secret), std::string::npos) << "the description survived";
  EXPECT_EQ(stored.find("GPS 48"), std::string::npos);
  EXPECT_EQ(stored.find("Exif"), std::string::npos);
  const cv::Mat back = cv::imdecode(std::vector<uint8_t>(stored.begin(), stored.end()), cv::IMREAD_COLOR);
  ASSERT_FALSE(back.empty());
  EXPECT_EQ(back.cols, upright.cols);  // turned upright before the metadata went
  EXPECT_EQ(back.rows, upright.rows);
  // eval-retrieval finds the stored copy from the original photo: it is no answer to itself.
  const std::string original_file = f.dir + "/exif1.jpg";
  std::ofstream(original_file, std::ios::binary) << jpeg;
  std::ofstream(f.dir + "/exif1.csv") << "image,sku\n" << original_file << ",EXIF1\n";
  const auto eval = test::run_command(q(test::vitrine_bin()) + " eval-retrieval --db " +
                                      q(f.dir + "/db") + " --queries " + q(f.dir + "/exif1.csv") +
                                      " --keep-self --json " + q(f.dir + "/exif1.json"));
  ASSERT_EQ(eval.status, 0) << eval.err;
  EXPECT_EQ(json::parse(file_bytes(f.dir + "/exif1.json"))["found_self"], 1);
  // Deleting the product deletes its kept JPEG, as it does a PNG.
  const auto jpegs = [&] {
    int n = 0;
    for (const auto& e : fs::directory_iterator(f.dir + "/db/images")) {
      n += e.path().extension() == ".jpg" ? 1 : 0;
    }
    return n;
  };
  EXPECT_EQ(jpegs(), 1);
  EXPECT_EQ(writer.Delete("/v1/products/EXIF1")->status, 200);
  EXPECT_EQ(jpegs(), 0);
}

TEST(Serve, PhotosNoProductUsesAnyMoreAreDeleted) {
  const auto& f = fixture();
  Server server("");
  auto writer = server.client(f.write_key);
  const std::string photos = f.dir + "/db/images";
  auto files = [&] {
    std::set<std::string> out;
    if (fs::exists(photos)) {
      for (const auto& e : fs::directory_iterator(photos)) out.insert(e.path().string());
    }
    return out;
  };
  auto random_png = [](int seed) {
    cv::Mat m(24, 24, CV_8UC3);
    cv::RNG rng(static_cast<uint64_t>(seed));
    rng.fill(m, cv::RNG::UNIFORM, 0, 255);
    std::vector<uint8_t> png;
    cv::imencode(".png", m, png);
    return base64_encode(png.data(), png.size());
  };
  const auto before = files();
  // Two products share photo A.
  const std::string a = random_png(101), b = random_png(102);
  auto put = writer.Post("/v1/products",
                         json::array({{{"sku", "ORPH1"}, {"images", {a}}},
                                      {{"sku", "ORPH2"}, {"images", {a}}}}).dump(),
                         "application/json");
  ASSERT_EQ(put->status, 200) << put->body;
  auto after = files();
  ASSERT_EQ(after.size(), before.size() + 1);
  std::string file_a;
  for (const auto& p : after) {
    if (!before.count(p)) file_a = p;
  }
  EXPECT_EQ(writer.Delete("/v1/products/ORPH1")->status, 200);
  EXPECT_TRUE(fs::exists(file_a)) << "ORPH2 still shows it";
  // Replacing ORPH2's photo with B leaves A to nobody.
  put = writer.Put("/v1/products/ORPH2", json{{"images", {b}}}.dump(), "application/json");
  ASSERT_EQ(put->status, 200) << put->body;
  EXPECT_FALSE(fs::exists(file_a));
  after = files();
  ASSERT_EQ(after.size(), before.size() + 1);
  EXPECT_EQ(writer.Delete("/v1/products/ORPH2")->status, 200);
  EXPECT_EQ(files(), before);

  // SKUs may hold '/' (`index --data` names products by their file paths) and spaces: the
  // photo URLs in answers work for them too.
  put = writer.Put("/v1/products/shoes%2Fred%20one", json{{"images", {b}}}.dump(),
                   "application/json");
  ASSERT_EQ(put->status, 200) << put->body;
  auto got = writer.Get("/v1/products/shoes%2Fred%20one");
  ASSERT_EQ(got->status, 200) << got->body;
  const std::string url = json::parse(got->body)["images"][0];
  EXPECT_EQ(url, "/v1/products/shoes%2Fred%20one/images/0");
  auto photo = writer.Get(url.c_str());
  ASSERT_EQ(photo->status, 200) << photo->body;
  EXPECT_EQ(photo->get_header_value("Content-Type"), "image/png");
  EXPECT_EQ(writer.Delete("/v1/products/shoes%2Fred%20one")->status, 200);
  EXPECT_EQ(files(), before);
}

TEST(Serve, MetricsCountPhotosAnotherProcessIndexed) {
  const auto& f = fixture();
  Server server("");
  auto reader = server.client(f.read_key);
  const auto index_size = [&reader] {
    std::smatch m;
    const std::string metrics = reader.Get("/metrics")->body;
    EXPECT_TRUE(std::regex_search(metrics, m, std::regex("vitrine_index_size ([0-9]+)")));
    return std::stoi(m[1]);
  };
  const int before = index_size();
  std::ofstream(f.dir + "/extra.csv") << "sku,image,category\nEXTRA1," << f.dir
                                      << "/img/p1.png,bags\n";
  auto r = test::run_command(q(test::vitrine_bin()) + " index --model " + q(f.dir + "/m") +
                             " --catalog " + q(f.dir + "/extra.csv") + " --db " +
                             q(f.dir + "/db"));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(index_size(), before + 1) << "no search needed to count it";
  r = test::run_command(q(test::vitrine_bin()) + " remove --db " + q(f.dir + "/db") + " EXTRA1");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(index_size(), before);
}

TEST(Serve, ProductsStoredJustBeforeACrashAreFoundAfterARestart) {
  const auto& f = fixture();
  cv::Mat m(24, 24, CV_8UC3);
  cv::RNG(77).fill(m, cv::RNG::UNIFORM, 0, 255);
  std::vector<uint8_t> png;
  cv::imencode(".png", m, png);
  const std::string photo(png.begin(), png.end());
  {
    Server server("");
    auto writer = server.client(f.write_key);
    // The second store comes within the index's save interval: only the catalogue has it.
    for (const std::string sku : {"CRASH1", "CRASH2"}) {
      auto put = writer.Put(("/v1/products/" + sku).c_str(),
                            json{{"images", {base64_encode(sku == "CRASH2" ? photo : f.photos[5])}}}
                                .dump(),
                            "application/json");
      ASSERT_EQ(put->status, 200) << put->body;
    }
  }  // SIGKILL: no save at shutdown
  Server server("");
  auto writer = server.client(f.write_key);
  auto found = writer.Post("/v1/search?k=1", photo, "image/png");
  ASSERT_EQ(found->status, 200) << found->body;
  ASSERT_EQ(body_of(found)["results"].size(), 1u);
  EXPECT_EQ(body_of(found)["results"][0]["sku"], "CRASH2");
  EXPECT_EQ(writer.Delete("/v1/products/CRASH1")->status, 200);
  EXPECT_EQ(writer.Delete("/v1/products/CRASH2")->status, 200);
}

// Bodies httplib would inflate without limit are refused, read as sent; without keys, only
// requests naming the loopback as their Host are answered (a page elsewhere that rebinds its
// name to 127.0.0.1 is not), and products come only as JSON (which a page elsewhere cannot
// send without the preflight this service never grants).
TEST(Serve, CompressedBodiesOtherHostsAndCrossSiteWritesAreRefused) {
  const auto& f = fixture();
  Server server("", /*keys=*/false);
  auto client = server.client();
  EXPECT_EQ(client.Get("/v1/products?limit=1")->status, 200);
  const std::string body(4096, 'z');  // as if gzip: it is never inflated
  RawConnection raw(server.port());
  raw.send("POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
           "Content-Encoding: gzip\r\nContent-Length: " + std::to_string(body.size()) +
           "\r\n\r\n" + body);
  const std::string refused = raw.read_response();
  EXPECT_EQ(refused.rfind("HTTP/1.1 415", 0), 0u) << refused.substr(0, 300);
  EXPECT_CONTAINS(refused, "unsupported_encoding");
  // The body was read: the connection's next request gets its own answer.
  raw.send("GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
  EXPECT_CONTAINS(raw.read_all(), "\"ready\"");
  // Another name for this machine, as DNS rebinding sends it.
  const std::string rebound = raw_exchange(
      server.port(), "GET /v1/products HTTP/1.1\r\nHost: shop.example:8080\r\n"
                     "Connection: close\r\n\r\n");
  EXPECT_EQ(rebound.rfind("HTTP/1.1 403", 0), 0u) << rebound.substr(0, 300);
  EXPECT_CONTAINS(rebound, "host_not_allowed");
  for (const std::string host : {"localhost", "LOCALHOST:1", "[::1]:80"}) {
    const std::string ok = raw_exchange(server.port(), "GET /readyz HTTP/1.1\r\nHost: " + host +
                                                           "\r\nConnection: close\r\n\r\n");
    EXPECT_EQ(ok.rfind("HTTP/1.1 200", 0), 0u) << host << ": " << ok.substr(0, 300);
  }
  auto plain = client.Post("/v1/products", "[]", "text/plain");
  ASSERT_TRUE(plain);
  EXPECT_EQ(plain->status, 415) << plain->body;
  EXPECT_EQ(body_of(plain)["error"]["code"], "unsupported_media_type");
  EXPECT_EQ(client.Post("/v1/classify", f.photos[0], "image/png")->status, 200);
}

TEST(Serve, SighupReadsTheKeyFileAgain) {
  const auto& f = fixture();
  const std::string file = test::temp_dir("serve-keyfile") + "/keys.txt";
  const auto keys = [&](const std::string& args) {
    return test::run_command(q(test::vitrine_bin()) + " keys " + args + " --file " + q(file));
  };
  const auto added = keys("add --name old --scopes read");
  ASSERT_EQ(added.status, 0) << added.err;
  const std::string old_key = added.out.substr(0, added.out.find('\n'));
  Server server("--api-keys " + q(file), /*keys=*/false);
  auto old_client = server.client(old_key);
  EXPECT_EQ(old_client.Post("/v1/classify", f.photos[0], "image/png")->status, 200);

  const auto fresh = keys("add --name new --scopes read");
  ASSERT_EQ(fresh.status, 0) << fresh.err;
  auto new_client = server.client(fresh.out.substr(0, fresh.out.find('\n')));
  EXPECT_EQ(new_client.Post("/v1/classify", f.photos[0], "image/png")->status, 401);
  const auto removed = keys("remove --name old");
  ASSERT_EQ(removed.status, 0) << removed.err;
  const auto unknown = keys("remove --name nobody");
  EXPECT_NE(unknown.status, 0);
  EXPECT_NE(unknown.err.find("no key named 'nobody'"), std::string::npos) << unknown.err;
  // Read only at start until the service is told: the old key still works.
  EXPECT_EQ(old_client.Post("/v1/classify", f.photos[0], "image/png")->status, 200);

  const auto wait_for_log = [&](const std::string& text) {
    for (int i = 0; i < 200 && server.log().find(text) == std::string::npos; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return server.log().find(text) != std::string::npos;
  };
  server.signal(SIGHUP);
  ASSERT_TRUE(wait_for_log("API keys reloaded")) << server.log();
  EXPECT_NE(server.log().find("1 keys (were 1)"), std::string::npos) << server.log();
  EXPECT_EQ(new_client.Post("/v1/classify", f.photos[0], "image/png")->status, 200);
  EXPECT_EQ(old_client.Post("/v1/classify", f.photos[0], "image/png")->status, 401);

  // A broken file is logged and the keys in use stay.
  std::ofstream(file, std::ios::app) << "not a key line\n";
  server.signal(SIGHUP);
  ASSERT_TRUE(wait_for_log("API keys not reloaded")) << server.log();
  EXPECT_NE(server.log().find("expected `<sha256-hex> <name> <scopes>`"), std::string::npos);
  EXPECT_EQ(new_client.Post("/v1/classify", f.photos[0], "image/png")->status, 200);
  EXPECT_EQ(old_client.Post("/v1/classify", f.photos[0], "image/png")->status, 401);
}

TEST(Serve, SighupReloadsTheModel) {
  const auto& f = fixture();
  Server server("");
  auto reader = server.client(f.read_key);
  server.signal(SIGHUP);
  std::string metrics;
  for (int i = 0; i < 200; ++i) {
    metrics = reader.Get("/metrics")->body;
    if (metrics.find("vitrine_model_reloads_total{outcome=\"ok\"} 1") != std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_NE(metrics.find("vitrine_model_reloads_total{outcome=\"ok\"} 1"), std::string::npos)
      << metrics;
  EXPECT_EQ(reader.Post("/v1/classify", f.photos[2], "image/png")->status, 200);
  EXPECT_NE(server.log().find("reload"), std::string::npos) << server.log();
}
