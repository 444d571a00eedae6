#include "test_util.h"

#include "vitrine/core/fs.h"
#include "vitrine/core/safetensors.h"
#include "vitrine/models/registry.h"
#include "vitrine/train/loop.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <sstream>
#include <stdexcept>
#include <sys/wait.h>
#include <unistd.h>

namespace vitrine::test {

LogCapture::LogCapture() : stream_(std::make_shared<std::ostringstream>()) {
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(*stream_);
  spdlog::default_logger()->sinks().push_back(sink);
  sink_ = sink;
}

LogCapture::~LogCapture() {
  auto& sinks = spdlog::default_logger()->sinks();
  sinks.erase(std::remove(sinks.begin(), sinks.end(),
                          std::static_pointer_cast<spdlog::sinks::sink>(sink_)),
              sinks.end());
}
namespace fs = std::filesystem;

std::string data_dir(const std::string& sub) {
  const char* root = std::getenv("VITRINE_TEST_DATA");
  if (root == nullptr) root = VITRINE_TEST_DATA_DEFAULT;
  if (!fs::exists(fs::path(root) / "manifest.json")) {
    ADD_FAILURE() << "no reference data in " << root << "; run the tests through ctest, which "
                     "makes it first (scripts/make_test_data.py)";
  }
  return sub.empty() ? std::string(root) : (fs::path(root) / sub).string();
}

std::string vitrine_bin() {
  const char* bin = std::getenv("VITRINE_BIN");
  return bin != nullptr ? bin : VITRINE_BIN_DEFAULT;
}

namespace {

// The directories temp_dir() made in this process. Some are shared by several tests of a
// file (a model imported once), so they are removed when the program ends: all of them
// when every test passed, none when one failed (they are what a failure is read from), or
// with VITRINE_KEEP_TEST_DIRS set.
std::vector<fs::path>& made_dirs() {
  static std::vector<fs::path> dirs;
  return dirs;
}

class TempDirCleaner : public ::testing::EmptyTestEventListener {
  void OnTestProgramEnd(const ::testing::UnitTest& unit) override {
    auto& dirs = made_dirs();
    if (dirs.empty()) return;
    if (!unit.Passed() || std::getenv("VITRINE_KEEP_TEST_DIRS") != nullptr) {
      std::fprintf(stderr, "test directories kept for inspection:\n");
      for (const auto& d : dirs) std::fprintf(stderr, "  %s\n", d.c_str());
      return;
    }
    std::error_code ec;
    for (const auto& d : dirs) fs::remove_all(d, ec);
    dirs.clear();
  }
};

[[maybe_unused]] const bool kCleanerInstalled = [] {
  ::testing::UnitTest::GetInstance()->listeners().Append(new TempDirCleaner);
  return true;
}();

}  // namespace

std::string temp_dir(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() /
                       ("vitrine-test-" + std::to_string(::getpid()) + "-" + name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  auto& dirs = made_dirs();
  if (std::find(dirs.begin(), dirs.end(), dir) == dirs.end()) dirs.push_back(dir);
  return dir.string();
}

models::ModelConfig tiny_vit_config(int64_t depth) {
  models::ModelConfig c = models::model_preset("vit_custom");
  c.vit.patch_size = 8;
  c.vit.hidden_size = 32;
  c.vit.num_hidden_layers = depth;
  c.vit.num_attention_heads = 4;
  c.vit.intermediate_size = 64;
  models::set_image_size(c, 32);
  c.num_classes = 5;
  return c;
}

at::Tensor load_tensor(const std::string& file, const std::string& name) {
  for (auto& [n, t] : safetensors_load(file).tensors) {
    if (n == name) return t;
  }
  ADD_FAILURE() << file << " has no tensor " << name;
  return at::Tensor();
}

double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kFloat) - b.to(at::kFloat)).abs().max().item<double>();
}

CommandResult run_command(const std::string& command) {
  const std::string dir = temp_dir("cmd");
  const std::string out = dir + "/out", err = dir + "/err";
  const int raw = std::system((command + " >" + out + " 2>" + err).c_str());
  CommandResult r{WIFEXITED(raw) ? WEXITSTATUS(raw) : -1, read_text_file(out),
                  read_text_file(err)};
  fs::remove_all(dir);
  return r;
}

void expect_identical_tensors(const std::string& file_a, const std::string& file_b) {
  const auto a = safetensors_load(file_a).tensors;
  const auto b = safetensors_load(file_b).tensors;
  ASSERT_EQ(a.size(), b.size()) << file_a << " vs " << file_b;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].first, b[i].first);
    EXPECT_TRUE(at::equal(a[i].second, b[i].second)) << file_a << ": " << a[i].first;
  }
}

void run_killed_at(int64_t epoch, int64_t step_in_epoch,
                   const std::function<void(const StepCallback&)>& run) {
  try {
    run([&](const train::StepInfo& s) {
      if (s.epoch == epoch && s.step_in_epoch == step_in_epoch) throw std::runtime_error("killed");
    });
  } catch (const std::runtime_error& e) {
    if (std::string(e.what()) == "killed") return;
    throw;
  }
  ADD_FAILURE() << "the run should have been killed at step " << step_in_epoch << " of epoch "
                << epoch + 1;
}

std::vector<nlohmann::json> json_lines(const std::string& out) {
  std::vector<nlohmann::json> lines;
  std::istringstream in(out);
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) lines.push_back(nlohmann::json::parse(line));
  }
  return lines;
}

}  // namespace vitrine::test
