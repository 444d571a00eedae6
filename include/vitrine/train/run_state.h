// The resumable state of a training run (fine-tuning or pretraining), kept in
// <run>/state/: weights, optimiser moments, counters and, mid-epoch, the generators.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace vitrine::train {

/// Writes <run_dir>/state as a unit: `write` fills a fresh folder (its argument), which
/// then replaces the old state by renames, so a kill at any moment leaves either the old
/// state or the new one, never a mix.
void write_state_folder(const std::string& run_dir,
                        const std::function<void(const std::string& folder)>& write);

/// The state folder to resume from: <run_dir>/state, or the previous one when a kill
/// interrupted the swap. A folder counts when it holds `marker` (written last). Throws,
/// saying to start without --resume, when there is none.
std::string state_folder_to_resume(const std::string& run_dir, const std::string& marker);

/// Before a run is set up: a fresh run (not `resume`) in a directory that already holds one
/// (its metrics.jsonl, state/, best/ or last/) is refused, since it would replace that run's
/// models and logs, unless `overwrite`. Returns whether there is such a run to replace.
bool check_run_dir(const std::string& run_dir, bool resume, bool overwrite);
/// Removes the files a run writes (models, logs, state, report) from `run_dir`, and only
/// those: other files in the directory stay.
void remove_run_files(const std::string& run_dir);

/// The random generators of an epoch in progress: the epoch's std::mt19937_64 and
/// libtorch's default CPU generator (dropout, drop-path, random init).
struct RngState {
  std::string mt;        ///< the std::mt19937_64 as its stream text
  at::Tensor torch_cpu;  ///< at::Generator::get_state()
};
RngState capture_rng(const std::mt19937_64& rng);
void restore_rng(const RngState& state, std::mt19937_64& rng);

/// Where an epoch stands between two steps: enough to continue it exactly after a restart.
struct EpochProgress {
  int64_t next_batch = 0;  ///< the loader's position (0: the epoch has not started)
  double loss_sum = 0, top1_sum = 0, seconds = 0;  ///< the epoch's running sums and time
  int64_t seen = 0, batches = 0;
  RngState rng;
};

/// Writes the generator state into `folder` (rng.safetensors) and returns the rest as a
/// JSON object's text, for the run's state file.
std::string save_epoch_progress(const EpochProgress& progress, const std::string& folder);
/// The inverse: `json_text` as save_epoch_progress returned it, `folder` where it wrote.
EpochProgress load_epoch_progress(const std::string& json_text, const std::string& folder);

/// The part of a run's state file every training loop has.
struct StateHeader {
  int version = 0;         ///< of the loop's state layout
  uint64_t seed = 0;
  int64_t epochs_done = 0;
  int64_t step = 0;        ///< optimisation steps so far
  EpochProgress progress;  ///< where the epoch in progress stands (next_batch 0: none)
  /// What the run learns from: its --data, and what that gave ("600 training photos, 10
  /// classes: ..."). Resuming on other photos would not continue the same run.
  std::string data_source, data_shape;
  /// The settings a resumed run must keep, as (flag, value) pairs: those that decide what
  /// each step takes or what the saved state means (batch size, optimiser, schedule...).
  /// Another value is refused on resume, naming the flag and the value the run had.
  std::vector<std::pair<std::string, std::string>> settings;
  /// The data options that decide the training photos (--val-split...), as (flag, value):
  /// not compared themselves (the data shape is), but named when the data differs.
  std::vector<std::pair<std::string, std::string>> data_settings;
  /// Which training photos (data::items_digest): as many photos of the same classes may be
  /// other photos. Empty: not compared.
  std::string data_items;
};

/// A number as a setting's value: the shortest text that reads back as the same double.
std::string setting_text(double value);

/// Writes `folder`/`name` (JSON): the header (the progress's generators beside it) and the
/// members of `extra_json`, a JSON object's text with the loop's own counters and history.
/// Write it last: its presence marks the state folder complete.
void write_state_file(const std::string& folder, const std::string& name,
                      const StateHeader& header, const std::string& extra_json);

/// Reads a state file that write_state_file wrote, refusing another layout version, seed,
/// data shape or setting than `expected`'s (another data source of the same shape, such as
/// the same photos moved, is only logged); `json_text` receives the whole file for the loop's
/// own members. Logs where the run resumes.
StateHeader read_state_file(const std::string& folder, const std::string& name,
                            const StateHeader& expected, std::string& json_text);

/// A setting a resumed run takes as given, though the run began with another: its flag, the
/// key the state file keeps it under, and its value now.
struct ResumedSetting {
  const char* flag;
  const char* key;
  double value;
};

/// The optimisation settings every resumable run keeps in its state: --lr, --weight-decay,
/// --warmup-epochs.
std::vector<ResumedSetting> optimisation_settings(double lr, double weight_decay,
                                                  double warmup_epochs);

/// Warns where a resumed run's plan differs from the one its state file (`state_json`,
/// read_state_file's json_text) recorded: another `epochs` (the schedule is planned again
/// from where the run stands), or another value of a setting in `now` (the run goes on with
/// it). Settings a state did not record are passed over.
void warn_changed_settings(const std::string& state_json, int64_t epochs,
                           const std::vector<ResumedSetting>& now);

}  // namespace vitrine::train
