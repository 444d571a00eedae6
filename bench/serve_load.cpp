// Load on `vitrine serve` over loopback: for each concurrency, clients post photos to
// /v1/classify for a fixed time; throughput, p50/p99 latency, errors by status, and the
// server's resident memory before and after. The peer: the same model's offline batch
// throughput (Predictor, batch --max-batch) in the same run.
#include "vitrine/core/memory.h"
#include "vitrine/core/threads.h"
#include "vitrine/image/decode.h"
#include "vitrine/models/model_dir.h"
#include "vitrine/models/predictor.h"

#include <ATen/ATen.h>
#include <CLI/CLI.hpp>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <regex>
#include <sstream>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

namespace {

using Clock = std::chrono::steady_clock;

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

/// Resident memory of a process, in MiB (VmRSS).
double rss_mib(pid_t pid) {
  std::istringstream in(read_all("/proc/" + std::to_string(pid) + "/status"));
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  }
  return -1;
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())))];
}

}  // namespace

int main(int argc, char** argv) {
  std::string vitrine = "build/vitrine", model, photo, json_path;
  std::vector<int> concurrency{1, 8, 64};
  double seconds = 60;
  int64_t max_batch = 32, max_delay_ms = 5;
  int threads = 0;
  std::string precision = "auto";
  CLI::App app("Load on vitrine serve over loopback (/v1/classify)");
  app.add_option("--vitrine", vitrine, "The vitrine binary");
  app.add_option("--model", model, "Model directory")->required();
  app.add_option("--photo", photo, "The photo every request sends")->required();
  app.add_option("--concurrency", concurrency, "Concurrent clients, one run each");
  app.add_option("--seconds", seconds, "Length of each run");
  app.add_option("--max-batch", max_batch, "Server batch size (and the offline peer's)");
  app.add_option("--max-delay-ms", max_delay_ms, "Server batching delay");
  app.add_option("--precision", precision,
                 "auto | fp32 | bf16 | int8, for the server and its offline peer alike")
      ->check(CLI::IsMember({"auto", "fp32", "bf16", "int8"}));
  app.add_option("--threads", threads, "Compute threads (0: all cores)");
  app.add_option("--json", json_path, "Also write the results here");
  CLI11_PARSE(app, argc, argv);
  const std::string body = read_all(photo);
  if (body.empty()) {
    std::cerr << "error: cannot read " << photo << "\n";
    return 2;
  }

  // The peer: offline batched inference of the same model on the same photo.
  double offline_img_s = 0;
  {
    vitrine::keep_freed_memory();  // as the vitrine binary does
    vitrine::set_threads(threads);
    vitrine::models::Predictor predictor(vitrine::models::load_model(model),
                                         vitrine::models::parse_precision(precision));
    const auto rgb = vitrine::image::decode(reinterpret_cast<const uint8_t*>(body.data()), body.size());
    const at::Tensor x = predictor.preprocess(rgb).unsqueeze(0).expand(
        {max_batch, -1, -1, -1}).contiguous();
    predictor.scores(x);  // warm-up
    const auto t0 = Clock::now();
    int64_t images = 0;
    while (std::chrono::duration<double>(Clock::now() - t0).count() < 10) {
      predictor.embeddings_and_scores(x);
      images += max_batch;
    }
    offline_img_s = static_cast<double>(images) / std::chrono::duration<double>(Clock::now() - t0).count();
  }

  const std::string log = "/tmp/vitrine_serve_load_" + std::to_string(getpid()) + ".log";
  const pid_t server = fork();
  if (server == 0) {
    const std::string cmd = "exec '" + vitrine + "' serve --model '" + model +
                            "' --port 0 --no-access-log --max-batch " + std::to_string(max_batch) +
                            " --max-delay-ms " + std::to_string(max_delay_ms) +
                            " --precision " + precision + " --threads " +
                            std::to_string(threads) + " --queue 4096 2> '" + log + "'";
    execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  int port = 0;
  for (int i = 0; i < 1200 && port == 0; ++i) {
    std::smatch m;
    const std::string text = read_all(log);
    static const std::regex listening("listening on http://127\\.0\\.0\\.1:([0-9]+)");
    if (std::regex_search(text, m, listening)) port = std::stoi(m[1]);
    if (port == 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (port == 0) {
    std::cerr << "error: the server did not start:\n" << read_all(log);
    kill(server, SIGKILL);
    return 2;
  }
  nlohmann::json results = nlohmann::json::array();
  std::printf("offline batch-%lld throughput (precision %s): %.1f img/s\n",
              static_cast<long long>(max_batch), precision.c_str(), offline_img_s);
  std::printf("%11s %9s %9s %9s %8s %8s %10s %10s %8s\n", "concurrency", "req/s", "p50_ms",
              "p99_ms", "errors", "5xx", "rss_before", "rss_after", "vs_batch");
  for (const int c : concurrency) {
    const double rss_before = rss_mib(server);
    std::atomic<bool> stop{false};
    std::mutex mu;
    std::vector<double> latencies;
    std::map<int, int64_t> statuses;
    std::vector<std::pair<double, double>> failures;  // (seconds into the run, ms waited)
    std::vector<std::thread> clients;
    const auto t0 = Clock::now();
    for (int i = 0; i < c; ++i) {
      clients.emplace_back([&] {
        httplib::Client client("127.0.0.1", port);
        client.set_read_timeout(120);
        client.set_keep_alive(true);
        std::vector<double> mine;
        std::map<int, int64_t> codes;
        while (!stop) {
          const auto t1 = Clock::now();
          auto r = client.Post("/v1/classify", body, "image/jpeg");
          const double ms = 1000 * std::chrono::duration<double>(Clock::now() - t1).count();
          mine.push_back(ms);
          ++codes[r ? r->status : -static_cast<int>(r.error())];
          if (!r) {
            std::lock_guard<std::mutex> lock(mu);
            failures.push_back({std::chrono::duration<double>(t1 - t0).count(), ms});
          }
        }
        std::lock_guard<std::mutex> lock(mu);
        latencies.insert(latencies.end(), mine.begin(), mine.end());
        for (const auto& [k, v] : codes) statuses[k] += v;
      });
    }
    std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
    stop = true;
    for (auto& t : clients) t.join();
    const double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
    int64_t ok = 0, errors = 0, server_errors = 0;
    for (const auto& [k, v] : statuses) {
      if (k == 200) ok += v;
      else errors += v;
      if (k >= 500 || k < 0) server_errors += v;
    }
    const double rps = static_cast<double>(ok) / elapsed;
    const double rss_after = rss_mib(server);
    std::printf("%11d %9.1f %9.1f %9.1f %8lld %8lld %9.0fM %9.0fM %7.2fx\n", c, rps,
                percentile(latencies, 0.5), percentile(latencies, 0.99),
                static_cast<long long>(errors), static_cast<long long>(server_errors), rss_before,
                rss_after, rps / offline_img_s);
    if (errors > 0) {
      std::string codes;
      for (const auto& [k, v] : statuses) {
        if (k != 200) codes += " " + (k < 0 ? "no-response(httplib error " + std::to_string(-k) + ")" : std::to_string(k)) + ":" + std::to_string(v);
      }
      std::printf("%11s errors by status:%s\n", "", codes.c_str());
      std::sort(failures.begin(), failures.end());
      for (const auto& [at, waited] : failures) {
        std::printf("%11s no response: sent %.1f s into the run, failed after %.0f ms\n", "", at,
                    waited);
      }
    }
    std::fflush(stdout);
    results.push_back({{"concurrency", c}, {"req_per_s", rps}, {"p50_ms", percentile(latencies, 0.5)},
                       {"p99_ms", percentile(latencies, 0.99)}, {"errors", errors},
                       {"server_errors", server_errors}, {"rss_before_mib", rss_before},
                       {"rss_after_mib", rss_after}, {"offline_img_per_s", offline_img_s},
                       {"ratio_to_offline", rps / offline_img_s}});
  }
  kill(server, SIGTERM);
  waitpid(server, nullptr, 0);
  std::remove(log.c_str());
  if (!json_path.empty()) std::ofstream(json_path) << results.dump(2) << "\n";
  return 0;
}
