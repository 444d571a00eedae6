// `vitrine serve` and `vitrine keys`.
#include "commands.h"

#include "vitrine/core/error.h"
#include "vitrine/core/fs.h"
#include "vitrine/core/threads.h"
#include "vitrine/serve/auth.h"
#include "vitrine/serve/http_server.h"
#include "vitrine/serve/metrics.h"
#include "vitrine/serve/service.h"

#include <spdlog/spdlog.h>

#include <atomic>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <malloc.h>
#include <mutex>
#include <fstream>
#include <iostream>
#include <pthread.h>
#include <set>
#include <sstream>
#include <thread>

namespace vitrine::cli {
namespace {

void add_serve(CLI::App& app, int& status) {
  auto* cmd = app.add_subcommand("serve", "HTTP service: classify, embed, search, products");
  struct Args {
    serve::ServiceOptions service;
    serve::HttpOptions http;
    int threads = 0;
    bool quiet = false;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("--model", a->service.model_dir, "Model directory")->required();
  cmd->add_option("--db", a->service.db_dir, "Search database folder (enables search, products)");
  add_search_effort_options(cmd, a->service.index);
  cmd->add_option("--host", a->http.host, "Address to listen on");
  cmd->add_option("--port", a->http.port, "Port (0: any free one, printed at start)")
      ->check(CLI::Range(0, 65535));
  cmd->add_option("--tls-cert", a->http.tls_cert, "PEM certificate (HTTPS with --tls-key)");
  cmd->add_option("--tls-key", a->http.tls_key, "PEM private key");
  cmd->add_option("--api-keys", a->http.api_keys_file,
                  "Key file (`vitrine keys add`); without it, no authentication");
  cmd->add_option("--rate-limit", a->http.rate_limit, "Requests per second per key (0: none)")
      ->check(CLI::Range(0.0, 1e6));
  cmd->add_option("--rate-burst", a->http.rate_burst, "Requests a key may make at once")
      ->check(CLI::Range(1.0, 1e6));
  cmd->add_option("--max-batch", a->service.max_batch, "Images per forward pass")
      ->check(CLI::Range(int64_t{1}, int64_t{1024}));
  cmd->add_option("--max-delay-ms", a->service.max_delay_ms,
                  "How long a request waits for others to share its forward pass")
      ->check(CLI::Range(int64_t{0}, int64_t{1000}));
  cmd->add_option("--queue", a->service.queue_capacity, "Waiting images beyond which 429")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  cmd->add_option("--timeout-ms", a->service.timeout_ms, "Per request, queueing included (504)")
      ->check(CLI::Range(int64_t{1}, int64_t{3'600'000}));
  cmd->add_option("--max-body-mb", a->http.max_body_bytes, "Largest request body, MB (413)")
      ->transform(CLI::Validator(
          [](std::string& v) -> std::string {
            int64_t mb = 0;
            if (!CLI::detail::lexical_cast(v, mb) || mb < 1 || mb > 4096) {
              return "Value " + v + " not in range 1 to 4096 (MB)";
            }
            v = std::to_string(mb << 20);
            return {};
          },
          "MB in 1..4096"));
  cmd->add_option("--max-pixels", a->service.max_pixels, "Largest image, pixels (422)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 40));
  cmd->add_option("--precision", a->service.precision,
      "auto (int8 for a model `vitrine optimize --int8` calibrated, else fp32), fp32, bf16 or int8")
      ->check(CLI::IsMember({"auto", "fp32", "bf16", "int8"}));
  cmd->add_option("--http-threads", a->http.threads, "Connections handled at once")
      ->check(CLI::Range(2, 4096));
  cmd->add_option("--threads", a->threads, "Compute threads (default: all cores)");
  cmd->add_flag("--no-access-log", a->quiet, "Do not log each request");
  cmd->callback([a, &status] {
    a->http.access_log = !a->quiet;
    if (a->http.threads < a->service.max_batch) {
      spdlog::warn("--http-threads {} is below --max-batch {}: a batch never fills, so every "
                   "photo waits the whole --max-delay-ms; give --http-threads {} or more",
                   a->http.threads, a->service.max_batch, a->service.max_batch);
    }
    if (a->http.rate_limit > 0 && a->http.api_keys_file.empty()) {
      spdlog::warn("--rate-limit counts requests per API key and has no effect without "
                   "--api-keys");
    }
    // Signals go to one thread that waits for them, not to whichever thread runs.
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    sigaddset(&signals, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);
    set_threads(a->threads);
#ifdef __GLIBC__
    // Tensors of a batch are megabytes each and their sizes change from batch to batch. glibc
    // raises its mmap threshold after each large free, so such blocks move onto the heap and
    // fragment it: under load the service grew by 100-200 MB a minute. A fixed threshold
    // keeps them mmapped and returned on free (measured: 538 -> 549 -> 555 MB over three
    // minutes at 64 clients). glibc's own MALLOC_MMAP_THRESHOLD_ variable, when set, wins.
    if (std::getenv("MALLOC_MMAP_THRESHOLD_") == nullptr) mallopt(M_MMAP_THRESHOLD, 1 << 20);
#endif
    serve::HttpServer::check(a->http);  // a bad key file fails now, not after the model loads
    auto metrics = std::make_shared<serve::Metrics>();
    // The signal waiter outlives the service, so a second SIGINT/SIGTERM also ends a long
    // drain or the index save. `handling` is held while a signal's work uses the service;
    // once `stop_asked` is set (under it), the waiter no longer touches the service.
    std::mutex handling;
    bool stop_asked = false;
    std::atomic<bool> finished{false};
    std::thread waiter;
    struct WaiterEnd {  // however the block below ends: a joinable thread would abort
      std::thread& waiter;
      std::atomic<bool>& finished;
      ~WaiterEnd() {
        if (!waiter.joinable()) return;
        finished = true;
        pthread_kill(waiter.native_handle(), SIGTERM);
        waiter.join();
      }
    } waiter_end{waiter, finished};
    {
      serve::Service service(a->service, metrics);
      serve::HttpServer server(service, metrics, a->http);
      struct Leave {  // however the block ends, the waiter leaves the service alone from here
        std::mutex& handling;
        bool& stop_asked;
        ~Leave() {
          std::lock_guard<std::mutex> lock(handling);
          stop_asked = true;
        }
      } leave{handling, stop_asked};
      const int port = server.bind();
      const bool tls = !a->http.tls_cert.empty();
      spdlog::info("listening on {}://{}:{} (model {}{}{})", tls ? "https" : "http", a->http.host,
                   port, service.model_stamp().id, a->service.db_dir.empty() ? "" : ", catalogue ",
                   a->service.db_dir);
      if (a->http.api_keys_file.empty() && a->http.host != "127.0.0.1" && a->http.host != "::1" &&
          a->http.host != "localhost") {
        spdlog::warn("no --api-keys: anyone who reaches {}:{} can use and change this service",
                     a->http.host, port);
      }
      waiter = std::thread([&] {
        for (;;) {
          int sig = 0;
          if (sigwait(&signals, &sig) != 0) continue;
          if (finished) return;
          std::lock_guard<std::mutex> lock(handling);
          if (stop_asked && sig != SIGHUP) {
            spdlog::warn("second signal: exiting without finishing the requests in flight; the "
                         "catalogue keeps what it stored, and the index catches up at the next "
                         "start");
            std::_Exit(kExitSomeFailed);
          }
          if (stop_asked) continue;  // no reload while stopping
          if (sig == SIGHUP) {
            // The key file first: revoking a key must not wait for a model to load.
            try {
              server.reload_keys();
            } catch (const std::exception& e) {
              spdlog::error("API keys not reloaded, the keys in use stay: {}", e.what());
            }
            try {
              service.reload();
            } catch (const std::exception& e) {
              spdlog::error("reload failed, the old model stays: {}", e.what());
            }
            continue;
          }
          // Stop accepting; requests already being handled finish, then run() returns.
          spdlog::info("shutting down: finishing the requests in flight (a second signal "
                       "stops at once)");
          stop_asked = true;
          service.stopping();
          server.stop();
        }
      });
      server.run();  // also returns when listening fails
      service.drain();
    }  // the service saves the search index as it goes; `waiter_end` then ends the waiter
    spdlog::info("stopped");
    status = kExitOk;
  });
}

void add_keys(CLI::App& app, int& status) {
  auto* keys = app.add_subcommand("keys", "API keys for `vitrine serve`");
  keys->require_subcommand(1);
  auto* add = keys->add_subcommand("add", "Create a key: prints it once, stores only its hash");
  auto file = std::make_shared<std::string>();
  auto name = std::make_shared<std::string>();
  auto scopes = std::make_shared<std::vector<std::string>>();
  add->add_option("--file", *file, "Key file (created when missing)")->required();
  add->add_option("--name", *name, "Who the key is for (shown in logs)")->required();
  add->add_option("--scopes", *scopes, "read, write, admin")->required()->delimiter(',');
  add->callback([file, name, scopes, &status] {
    if (std::filesystem::exists(*file)) {
      const auto existing = serve::KeyStore::load(*file);
      VT_CHECK(!existing.has_name(*name), *file, " already has a key named '", *name,
               "'; give this one another --name (names key the rate limit and the access log)");
    }
    const auto key = serve::generate_key(*name, {scopes->begin(), scopes->end()});
    // A file edited by hand may lack its last line break: the key would join that line.
    bool ends_open = false;
    if (std::ifstream in{*file, std::ios::binary | std::ios::ate}; in && in.tellg() > 0) {
      in.seekg(-1, std::ios::end);
      ends_open = in.get() != '\n';
    }
    std::ofstream out(*file, std::ios::app);
    VT_CHECK(out, "cannot write the key file ", *file);
    out << (ends_open ? "\n" : "") << key.line << "\n";
    out.close();
    VT_CHECK(out, "cannot write the key file ", *file);
    std::cout << key.key << "\n";
    spdlog::info("key '{}' added to {}; it is shown only now", *name, *file);
    status = kExitOk;
  });
  auto* remove = keys->add_subcommand("remove", "Revoke a key: delete its line from the file");
  auto remove_file = std::make_shared<std::string>();
  auto remove_name = std::make_shared<std::string>();
  remove->add_option("--file", *remove_file, "Key file")->required();
  remove->add_option("--name", *remove_name, "The key's name")->required();
  remove->callback([remove_file, remove_name, &status] {
    const auto store = serve::KeyStore::load(*remove_file);  // a malformed file is not rewritten
    VT_CHECK(store.has_name(*remove_name), *remove_file, " has no key named '", *remove_name,
             "'");
    std::istringstream in(read_text_file(*remove_file));
    std::string kept;
    for (std::string line; std::getline(in, line);) {
      std::istringstream fields(line);
      std::string digest, name;
      fields >> digest >> name;
      if (!digest.empty() && digest[0] != '#' && name == *remove_name) continue;
      kept += line + "\n";
    }
    write_file_atomic(*remove_file, kept);
    spdlog::info("key '{}' removed from {}; a running `vitrine serve` refuses it after kill -HUP",
                 *remove_name, *remove_file);
    status = kExitOk;
  });
}

}  // namespace

void add_serve_commands(CLI::App& app, int& status) {
  add_serve(app, status);
  add_keys(app, status);
}

}  // namespace vitrine::cli
