// Helpers shared by the tests: where the reference data lives, reading it.
#pragma once

#include "vitrine/core/error.h"
#include "vitrine/core/state_dict.h"
#include "vitrine/models/config.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

namespace vitrine::train {
struct StepInfo;
}

namespace vitrine::test {

/// What the default logger writes while this lives (the warnings a test expects).
class LogCapture {
 public:
  LogCapture();
  ~LogCapture();
  LogCapture(const LogCapture&) = delete;
  LogCapture& operator=(const LogCapture&) = delete;
  std::string text() const { return stream_->str(); }

 private:
  std::shared_ptr<std::ostringstream> stream_;
  std::shared_ptr<void> sink_;  ///< an spdlog sink, kept out of this header
};

/// $VITRINE_TEST_DATA/<sub>; fails the calling test when the variable is unset.
std::string data_dir(const std::string& sub = "");
/// The `vitrine` binary under test ($VITRINE_BIN).
std::string vitrine_bin();
/// A fresh empty directory under the system temp dir, removed when the test program ends
/// with every test passed (kept after a failure, or with VITRINE_KEEP_TEST_DIRS set).
std::string temp_dir(const std::string& name);
/// A small ViT for fast tests, the size of scripts/testdata/train_steps.py's: 32-pixel
/// input, 8-pixel patches, width 32, 4 heads, MLP 64, 5 classes.
models::ModelConfig tiny_vit_config(int64_t depth = 2);
/// A tensor of a safetensors file by name.
at::Tensor load_tensor(const std::string& file, const std::string& name);
/// Largest absolute difference of two tensors (as float).
double max_abs_diff(const at::Tensor& a, const at::Tensor& b);
/// Expects two safetensors files to hold the same names and bit-identical tensors.
void expect_identical_tensors(const std::string& file_a, const std::string& file_b);

/// A training loop's step callback.
using StepCallback = std::function<void(const train::StepInfo&)>;
/// Calls `run` with a step callback that throws std::runtime_error at step `step_in_epoch`
/// (1-based) of epoch `epoch` (0-based), as if the process were killed there, and catches
/// it; the test fails if the run ends without reaching that step.
void run_killed_at(int64_t epoch, int64_t step_in_epoch,
                   const std::function<void(const StepCallback&)>& run);

struct CommandResult {
  int status;
  std::string out;  ///< stdout
  std::string err;  ///< stderr
};
/// Runs a shell command line, capturing stdout and stderr.
CommandResult run_command(const std::string& command);
/// `s` in single quotes for a shell command line (paths here hold no single quote).
inline std::string q(const std::string& s) { return "'" + s + "'"; }
/// Each non-empty line of `out` parsed as JSON.
std::vector<nlohmann::json> json_lines(const std::string& out);

/// The message of the vitrine::Error `f` throws, or a failure when it throws none.
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const vitrine::Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no vitrine::Error thrown";
  return {};
}

}  // namespace vitrine::test

/// Expects `part` inside `text`, showing the whole text when it is not.
#define EXPECT_CONTAINS(text, part) \
  EXPECT_NE(std::string(text).find(part), std::string::npos) << "\"" << (text) << "\""
