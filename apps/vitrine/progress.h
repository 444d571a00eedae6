// A progress bar on stderr: redrawn in place with rate and ETA on a terminal,
// plain lines every tenth of the way when stderr is a file or a pipe.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

namespace vitrine::train {
struct StepInfo;
}

namespace vitrine::cli {

class Progress {
 public:
  /// `elapsed_s` and `done`: work already done when the bar appears (its first step, or a
  /// resumed epoch's earlier steps), so rates and ETAs count from the real start.
  Progress(std::string what, int64_t total, std::string unit = "img", double elapsed_s = 0,
           int64_t done = 0);
  ~Progress();
  void advance(int64_t n = 1);
  void set_done(int64_t done);
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

/// The per-epoch bars of a training loop: a new bar for each epoch (a resumed one starts
/// where it stopped), with loss, accuracy (named `accuracy_name`; none when empty), lr and
/// img/s.
class EpochBar {
 public:
  explicit EpochBar(std::string accuracy_name) : accuracy_name_(std::move(accuracy_name)) {}
  void step(const train::StepInfo& info);
  void end_epoch();

 private:
  std::string accuracy_name_;
  std::unique_ptr<Progress> bar_;
};

}  // namespace vitrine::cli
