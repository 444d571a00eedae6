// The `vitrine` subcommands. Each adds itself to the app and returns nothing; the
// callback it sets runs the command and returns the process exit status through
// `status`.
#pragma once

#include <CLI/CLI.hpp>

namespace vitrine::cli {

/// Exit statuses: 0 all done, 1 some items failed (reported per item), 2 the command
/// could not run (bad flags, missing model, ...).
constexpr int kExitOk = 0;
constexpr int kExitSomeFailed = 1;
constexpr int kExitError = 2;

void add_models_command(CLI::App& app, int& status);
void add_init_command(CLI::App& app, int& status);
void add_import_command(CLI::App& app, int& status);
void add_predict_command(CLI::App& app, int& status);
void add_train_command(CLI::App& app, int& status);
void add_eval_command(CLI::App& app, int& status);

/// The command line as typed, for provenance records.
const std::string& command_line();

}  // namespace vitrine::cli
