#include "progress.h"

#include "vitrine/train/loop.h"

#include <cstdio>

#include <unistd.h>

namespace vitrine::cli {

Progress::Progress(std::string what, int64_t total, std::string unit, double elapsed_s,
                   int64_t done)
    : what_(std::move(what)),
      unit_(std::move(unit)),
      total_(total),
      done_(done),
      tty_(::isatty(STDERR_FILENO) != 0),
      start_(std::chrono::steady_clock::now() -
             std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                 std::chrono::duration<double>(elapsed_s))),
      last_draw_(std::chrono::steady_clock::now()) {}

Progress::~Progress() { finish(); }

void Progress::advance(int64_t n) {
  done_ += n;
  draw(false);
}

void Progress::set_done(int64_t done) {
  done_ = done;
  draw(false);
}

void Progress::finish() {
  if (finished_) return;
  finished_ = true;
  draw(true);
}

void Progress::draw(bool final) {
  const auto now = std::chrono::steady_clock::now();
  const double secs = std::chrono::duration<double>(now - start_).count();
  // Under a tenth of a second a rate is noise (and near-infinite): show none yet, unless the
  // work is done, when it is what it was.
  const bool known = secs >= 0.1 || (final && secs > 0 && done_ > 0);
  const double rate = known ? done_ / secs : 0.0;
  // Slow work (a large model's training step on a CPU) as seconds a unit: "0.0 step/s" says
  // nothing.
  char speed[64];
  if (!known) {
    std::snprintf(speed, sizeof speed, "- %s/s", unit_.c_str());
  } else if (rate > 0 && rate < 0.1) {
    std::snprintf(speed, sizeof speed, "%.1f s/%s", 1.0 / rate, unit_.c_str());
  } else {
    std::snprintf(speed, sizeof speed, "%.1f %s/s", rate, unit_.c_str());
  }
  char eta_text[32] = "?";
  if (rate > 0) std::snprintf(eta_text, sizeof eta_text, "%.0fs", (total_ - done_) / rate);
  if (tty_) {
    if (!final && now - last_draw_ < std::chrono::milliseconds(100)) return;
    last_draw_ = now;
    constexpr int kWidth = 30;
    const int filled = total_ > 0 ? static_cast<int>(kWidth * done_ / total_) : kWidth;
    std::string bar(filled, '#');
    bar.resize(kWidth, '.');
    std::fprintf(stderr, "\r%s [%s] %lld/%lld %s ETA %s %s%s", what_.c_str(), bar.c_str(),
                 static_cast<long long>(done_), static_cast<long long>(total_), speed, eta_text,
                 status_.c_str(), final ? "\n" : "  ");
  } else {
    const int decile = total_ > 0 ? static_cast<int>(10 * done_ / total_) : 10;
    if (final ? done_ == last_printed_ : decile == last_decile_) return;
    last_decile_ = decile;
    last_printed_ = done_;
    std::fprintf(stderr, "%s: %lld/%lld (%s, %.1fs)%s%s\n", what_.c_str(),
                 static_cast<long long>(done_), static_cast<long long>(total_), speed, secs,
                 status_.empty() ? "" : " ", status_.c_str());
  }
  std::fflush(stderr);
}

void EpochBar::step(const train::StepInfo& s) {
  if (!bar_) {
    bar_ = std::make_unique<Progress>(
        "epoch " + std::to_string(s.epoch + 1) + "/" + std::to_string(s.epochs), s.steps_per_epoch,
        "step", s.seconds, s.step_in_epoch - 1);
  }
  char text[128];
  if (accuracy_name_.empty()) {
    std::snprintf(text, sizeof text, "loss %.4f lr %.2e %.0f img/s", s.loss, s.lr, s.img_per_s);
  } else {
    std::snprintf(text, sizeof text, "loss %.4f %s %.3f lr %.2e %.0f img/s", s.loss,
                  accuracy_name_.c_str(), s.top1, s.lr, s.img_per_s);
  }
  bar_->set_status(text);
  bar_->set_done(s.step_in_epoch);
}

void EpochBar::end_epoch() {
  if (bar_) bar_->finish();
  bar_.reset();
}

}  // namespace vitrine::cli
