// The `vitrine` subcommands. Each adds itself to the app and returns nothing; the
// callback it sets runs the command and returns the process exit status through
// `status`.
#pragma once

#include <CLI/CLI.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace vitrine::data {
struct DataOptions;
struct DataSplits;
class Dataset;
}
namespace vitrine::image {
struct TrainTransform;
}
namespace vitrine::search {
struct IndexOptions;
}
namespace vitrine::train {
struct OptimizerOptions;
}

namespace vitrine::cli {

/// Exit statuses: 0 all done, 1 some items failed (reported per item), 2 the command
/// could not run (bad flags, missing model, ...).
constexpr int kExitOk = 0;
constexpr int kExitSomeFailed = 1;
constexpr int kExitError = 2;

void add_models_command(CLI::App& app, int& status);
void add_init_command(CLI::App& app, int& status);
void add_merge_adapter_command(CLI::App& app, int& status);
void add_bench_command(CLI::App& app, int& status);
void add_optimize_command(CLI::App& app, int& status);
void add_import_command(CLI::App& app, int& status);
void add_predict_command(CLI::App& app, int& status);
void add_train_command(CLI::App& app, int& status);
void add_eval_command(CLI::App& app, int& status);
void add_pretrain_command(CLI::App& app, int& status);
void add_compare_command(CLI::App& app, int& status);
/// index, search, remove, duplicates, eval-retrieval.
void add_search_commands(CLI::App& app, int& status);
/// serve, keys.
void add_serve_commands(CLI::App& app, int& status);

/// --data and its split and subsampling flags, as train, eval and pretrain share them.
void add_data_options(CLI::App* cmd, data::DataOptions& d);

/// data::open_data, with the data's warnings (skipped rows, unreadable files) logged.
data::DataSplits open_data_logged(const data::DataOptions& options);
/// The named split ("train", "val" or "test"); an error when it is missing or empty.
std::shared_ptr<data::Dataset> pick_split(const data::DataSplits& s, const std::string& split);
/// The split settings the model in `model_dir` was trained with on this same `source`, taken
/// for those the command line `cmd` leaves unset (--val-split, --test-split, --data-seed), so
/// its val/test photos are the run's own and never photos it learnt from. Logs what it took,
/// and warns of given ones that differ (all are taken as given without `cmd`).
/// `applied_val_split`, once the data is open: an unset --val-split is compared as the data
/// applied it (runs record the applied fraction; those of stops 28-32 recorded -1).
void adopt_training_split(const CLI::App* cmd, const std::string& model_dir,
                          const std::string& source, double& val_split, double& test_split,
                          uint64_t& seed, double applied_val_split = -1);
/// Before writing a model directory to `dir`: a model directory there may be replaced (with a
/// warning), any other non-empty directory (a run, a data set) is refused.
void check_output_dir(const std::string& dir);

/// Where the model flags of train and pretrain write.
struct ModelChoice {
  std::string* arch;
  std::string* init_dir;
  int64_t* image_size;
  int64_t* in_channels;
  std::string* stem;
  double* eval_crop_pct;
};
/// --model, --init, --image-size, --in-channels, --stem, --eval-crop-pct.
void add_model_options(CLI::App* cmd, ModelChoice choice);

/// Where the optimisation and run flags of train and pretrain write.
struct LoopFlags {
  int64_t* epochs;
  int64_t* batch_size;
  train::OptimizerOptions* optim;
  std::string* schedule;
  double* warmup_epochs;
  double* min_lr;
  double* clip_grad;
  std::string* amp;
  uint64_t* seed;
  int* workers;
  int* threads;
  bool* resume;
  bool* overwrite;
  int64_t* save_every;
  bool* strict;
};
/// --epochs, -b, --opt, --lr, --weight-decay, --momentum, --nesterov, --sched,
/// --warmup-epochs, --min-lr, --clip-grad, --amp, --seed, --workers, --threads, --resume,
/// --overwrite, --save-every, --strict.
void add_loop_options(CLI::App* cmd, LoopFlags flags);
/// --scale, --ratio, --hflip, --color-jitter.
void add_crop_flip_jitter_options(CLI::App* cmd, image::TrainTransform& augment);

/// --precision (auto | fp32 | bf16 | int8) and, with `engine`, --engine (auto | fused |
/// libtorch): how a command's forward passes run, as models::Predictor takes them.
void add_precision_options(CLI::App* cmd, std::string& precision, std::string* engine = nullptr);

/// --ef-search and --nprobe: the search effort asked for, over the database's own.
void add_search_effort_options(CLI::App* cmd, search::IndexOptions& o);

/// Option checks for numbers >= 0 and > 0. CLI11's own (NonNegativeNumber, PositiveNumber)
/// print the largest double as the upper bound of their range.
const CLI::Validator& non_negative();
const CLI::Validator& positive();

/// The command line as typed, for provenance records.
const std::string& command_line();
/// The same, word by word (argv), for commands that start copies of themselves.
const std::vector<std::string>& command_args();

}  // namespace vitrine::cli
