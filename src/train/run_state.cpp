#include "vitrine/train/run_state.h"

#include "vitrine/core/error.h"
#include "vitrine/core/fs.h"
#include "vitrine/core/hash.h"
#include "vitrine/core/json.h"
#include "vitrine/core/text.h"
#include "vitrine/train/run_files.h"
#include "vitrine/core/safetensors.h"

#include <ATen/CPUGeneratorImpl.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <filesystem>
#include <mutex>
#include <sstream>

namespace vitrine::train {

namespace fs = std::filesystem;

void write_state_folder(const std::string& run_dir,
                        const std::function<void(const std::string& folder)>& write) {
  const fs::path dir = fs::path(run_dir) / run_files::kState;
  const fs::path fresh = dir.string() + ".new";
  fs::remove_all(fresh);
  fs::create_directories(fresh);
  write(fresh.string());
  replace_dir(fresh.string(), dir.string());
}

std::string state_folder_to_resume(const std::string& run_dir, const std::string& marker) {
  const std::string state = run_files::kState;
  for (const std::string& name : {state, state + ".old"}) {
    const fs::path folder = fs::path(run_dir) / name;
    if (fs::exists(folder / marker)) return folder.string();
  }
  VT_FAIL("--resume: no saved state in ", (fs::path(run_dir) / run_files::kState).string(),
          "; start without --resume");
}

bool check_run_dir(const std::string& run_dir, bool resume, bool overwrite) {
  if (resume) return false;
  std::error_code ec;
  const fs::path dir(run_dir);
  bool holds_run = fs::exists(dir / run_files::kLog, ec);
  for (const char* folder : run_files::kFolders) holds_run = holds_run || fs::exists(dir / folder, ec);
  VT_CHECK(!holds_run || overwrite, run_dir, " already holds a run (metrics.jsonl, state/, "
           "best/ or last/); continue it with --resume, choose another --out, or pass "
           "--overwrite to replace it");
  return holds_run;
}

void remove_run_files(const std::string& run_dir) {
  spdlog::warn("--overwrite: removing the earlier run in {}", run_dir);
  const fs::path dir(run_dir);
  for (const char* name : run_files::kFiles) fs::remove_all(dir / name);
  for (const char* folder : run_files::kFolders) {
    fs::remove_all(dir / folder);
    for (const char* suffix : run_files::kFolderSuffixes) {
      fs::remove_all(dir / (std::string(folder) + suffix));
    }
  }
}

RngState capture_rng(const std::mt19937_64& rng) {
  std::ostringstream text;
  text << rng;
  at::Generator generator = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(generator.mutex());
  return {text.str(), generator.get_state()};
}

void restore_rng(const RngState& state, std::mt19937_64& rng) {
  std::istringstream text(state.mt);
  text >> rng;
  VT_CHECK(!text.fail(), "the saved random generator state is damaged; start without --resume");
  at::Generator generator = at::detail::getDefaultCPUGenerator();  // a handle, shared
  std::lock_guard<std::mutex> lock(generator.mutex());
  generator.set_state(state.torch_cpu);
}

std::string save_epoch_progress(const EpochProgress& p, const std::string& folder) {
  safetensors_save(folder + "/rng.safetensors", {{"torch_cpu", p.rng.torch_cpu}});
  const nlohmann::json j{{"next_batch", p.next_batch}, {"loss_sum", p.loss_sum},
                         {"top1_sum", p.top1_sum},     {"seconds", p.seconds},
                         {"seen", p.seen},             {"batches", p.batches},
                         {"rng", p.rng.mt}};
  return j.dump();
}

EpochProgress load_epoch_progress(const std::string& json_text, const std::string& folder) {
  EpochProgress p;
  try {
    const nlohmann::json j = nlohmann::json::parse(json_text);
    p.next_batch = j.at("next_batch");
    p.loss_sum = j.at("loss_sum");
    p.top1_sum = j.at("top1_sum");
    p.seconds = j.at("seconds");
    p.seen = j.at("seen");
    p.batches = j.at("batches");
    p.rng.mt = j.at("rng");
  } catch (const nlohmann::json::exception& e) {
    VT_FAIL(folder, ": the saved epoch position is damaged (", e.what(),
            "); start without --resume");
  }
  const auto file = safetensors_load(folder + "/rng.safetensors");
  VT_CHECK(file.tensors.size() == 1 && file.tensors[0].first == "torch_cpu", folder,
           "/rng.safetensors is damaged; start without --resume");
  p.rng.torch_cpu = file.tensors[0].second;
  return p;
}

std::string setting_text(double value) { return fmt::format("{}", value); }

std::vector<ResumedSetting> optimisation_settings(double lr, double weight_decay,
                                                  double warmup_epochs) {
  return {{"--lr", "lr", lr},
          {"--weight-decay", "weight_decay", weight_decay},
          {"--warmup-epochs", "warmup_epochs", warmup_epochs}};
}

void warn_changed_settings(const std::string& state_json, int64_t epochs,
                           const std::vector<ResumedSetting>& now) {
  const auto j = nlohmann::json::parse(state_json, nullptr, false);
  if (!j.is_object()) return;
  if (j.contains("epochs") && j["epochs"].is_number_integer() &&
      j["epochs"].get<int64_t>() != epochs) {
    spdlog::warn("the run was planned for {} epochs and resumes with --epochs {}: the "
                 "learning-rate schedule is planned again from here, so the result differs "
                 "from an uninterrupted run of either length", j["epochs"].get<int64_t>(), epochs);
  }
  for (const auto& s : now) {
    if (!j.contains(s.key) || !j[s.key].is_number()) continue;
    const double was = j[s.key].get<double>();
    if (was == s.value) continue;
    spdlog::warn("the run was saved with {} {} and resumes with {} {}: it goes on with the new "
                 "value, so the result is that of neither setting", s.flag, setting_text(was),
                 s.flag, setting_text(s.value));
  }
}

void write_state_file(const std::string& folder, const std::string& name,
                      const StateHeader& header, const std::string& extra_json) {
  nlohmann::json j = nlohmann::json::parse(extra_json);
  j["version"] = header.version;
  j["seed"] = header.seed;
  j["epochs_done"] = header.epochs_done;
  j["step"] = header.step;
  // Compared by their hashes: paths and class names need not be UTF-8, and the text kept
  // for messages has such bytes replaced.
  j["data_source"] = header.data_source;
  j["data_shape"] = header.data_shape;
  j["data_source_sha256"] = sha256_hex(header.data_source);
  j["data_shape_sha256"] = sha256_hex(header.data_shape);
  if (!header.data_items.empty()) j["data_items_sha256"] = header.data_items;
  for (const auto& [key, pairs] : {std::make_pair("settings", &header.settings),
                                   std::make_pair("data_settings", &header.data_settings)}) {
    if (pairs->empty()) continue;
    auto& object = j[key] = nlohmann::json::object();
    for (const auto& [flag, value] : *pairs) object[flag] = value;
  }
  if (header.progress.next_batch > 0) {
    j["epoch_progress"] = nlohmann::json::parse(save_epoch_progress(header.progress, folder));
  }
  write_file_atomic(folder + "/" + name, json_text(j, 2));
}

StateHeader read_state_file(const std::string& folder, const std::string& name,
                            const StateHeader& expected, std::string& json_text) {
  const int version = expected.version;
  const uint64_t seed = expected.seed;
  const std::string file = folder + "/" + name;
  json_text = read_text_file(file);
  StateHeader h;
  try {
    const nlohmann::json j = nlohmann::json::parse(json_text);
    h.version = j.value("version", 0);
    VT_CHECK(h.version == version, file, ": state written by another version of Vitrine; start "
             "without --resume");
    h.seed = j.value("seed", seed);
    VT_CHECK(h.seed == seed, "--resume with another --seed (", h.seed,
             " before) would not continue the same run");
    // Another batch size takes other photos at each step, another optimiser or schedule
    // means other state: the run would not continue, it would be another one. (A state
    // written before the settings were recorded has none to compare.)
    const nlohmann::json no_settings = nlohmann::json::object();
    const nlohmann::json& settings = j.contains("settings") ? j["settings"] : no_settings;
    for (const auto& [flag, value] : expected.settings) {
      if (!settings.contains(flag)) continue;
      const std::string was = settings[flag];
      VT_CHECK(was == value, fs::path(folder).parent_path().string(), " was trained with ",
               flag, " ", was, " (now ", value, "); resume it with the same, or start another "
               "run with --overwrite or another --out");
    }
    // State files from before the data was recorded resume as before.
    h.data_source = j.value("data_source", expected.data_source);
    h.data_shape = j.value("data_shape", expected.data_shape);
    const auto shown = [](const std::string& s) {
      return s.size() > 300 ? utf8_prefix(s, 300) + "..." : s;
    };
    // A state written before the hash was recorded compares its text.
    const bool same_data = j.contains("data_shape_sha256")
                               ? j["data_shape_sha256"] == sha256_hex(expected.data_shape)
                               : h.data_shape == expected.data_shape;
    if (!same_data && j.contains("data_settings")) {  // name the options that differ
      std::string was, now;
      const auto& stored = j["data_settings"];
      for (const auto& [flag, value] : expected.data_settings) {
        if (!stored.contains(flag) || stored[flag] == value) continue;
        was += (was.empty() ? "" : ", ") + flag + " " + stored[flag].get<std::string>();
        now += (now.empty() ? "" : ", ") + flag + " " + value;
      }
      VT_CHECK(was.empty(), "--resume on other data would not continue the same run: it was "
               "trained with ", was, " (now ", now, "), which gave ", shown(h.data_shape),
               "; resume with the same, or start a new --out");
    }
    VT_CHECK(same_data,
             "--resume on other data would not continue the same run: it learnt from ",
             h.data_source, " (", shown(h.data_shape), "), and this --data ",
             expected.data_source, " gives ", shown(expected.data_shape), ". Resume with the "
             "run's --data (and its --val-split, --test-split, --labels-per-class or "
             "--label-fraction), or start a new --out");
    if (!expected.data_items.empty()) {
      if (j.contains("data_items_sha256")) {
        VT_CHECK(j["data_items_sha256"] == expected.data_items,
                 "--resume on other photos would not continue the same run: this --data gives ",
                 shown(expected.data_shape), " as the run had, but not the same photos (some "
                 "were added, removed or renamed, or moved to another split); resume on the "
                 "run's photos, or start a new --out");
      } else {
        spdlog::warn("{} does not record which photos the run learnt from (an earlier "
                     "version wrote it): only their number and classes are checked",
                     file);
      }
    }
    if (j.value("data_source_sha256", sha256_hex(expected.data_source)) !=
        sha256_hex(expected.data_source)) {
      spdlog::warn("the run learnt from {}; it resumes on {}, which gives the same {}",
                   h.data_source, expected.data_source, shown(h.data_shape));
    }
    h.settings = expected.settings;
    h.data_settings = expected.data_settings;
    h.data_items = expected.data_items;
    h.epochs_done = j.at("epochs_done");
    h.step = j.at("step");
    if (j.contains("epoch_progress")) {
      h.progress = load_epoch_progress(j["epoch_progress"].dump(), folder);
    }
  } catch (const nlohmann::json::exception& e) {
    VT_FAIL(file, " is damaged (", e.what(), "); start without --resume");
  }
  if (h.progress.next_batch > 0) {
    spdlog::info("resuming epoch {} at batch {} (step {})", h.epochs_done + 1,
                 h.progress.next_batch + 1, h.step);
  } else {
    spdlog::info("resuming after epoch {} (step {})", h.epochs_done, h.step);
  }
  return h;
}

}  // namespace vitrine::train
