// A progress bar on stderr: redrawn in place with rate and ETA on a terminal,
// plain lines every tenth of the way when stderr is a file or a pipe.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace vitrine::cli {

class Progress {
 public:
  Progress(std::string what, int64_t total, std::string unit = "img");
  ~Progress();
  void advance(int64_t n = 1);
  /// Text shown after the counters, e.g. "loss 0.41 acc 0.87".
  void set_status(std::string status) { status_ = std::move(status); }
  void finish();

 private:
  void draw(bool final);

  std::string what_, unit_, status_;
  int64_t total_, done_ = 0;
  int last_decile_ = -1;
  int64_t last_printed_ = -1;
  bool tty_, finished_ = false;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

}  // namespace vitrine::cli
