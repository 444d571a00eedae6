// vitrine: image recognition and visual search for product photos.
#include "commands.h"

#include "vitrine/core/error.h"
#include "vitrine/core/memory.h"

#include <c10/util/Exception.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <iostream>
#include <string>
#include <vector>

namespace vitrine::cli {
namespace {
std::string g_command_line;
std::vector<std::string> g_command_args;
}
const std::string& command_line() { return g_command_line; }
const std::vector<std::string>& command_args() { return g_command_args; }

namespace {
CLI::Validator number_at_least_zero(bool above) {
  return CLI::Validator(
      [above](std::string& text) -> std::string {
        double v = 0;
        if (!CLI::detail::lexical_cast(text, v)) return "'" + text + "' is not a number";
        if (above ? v > 0 : v >= 0) return {};
        return std::string("must be ") + (above ? "above 0" : "0 or more") + ", got " + text;
      },
      above ? "POSITIVE" : "NONNEGATIVE");
}
}  // namespace

const CLI::Validator& non_negative() {
  static const CLI::Validator check = number_at_least_zero(false);
  return check;
}
const CLI::Validator& positive() {
  static const CLI::Validator check = number_at_least_zero(true);
  return check;
}
}  // namespace vitrine::cli

namespace {
/// Levenshtein distance, for "did you mean" on a mistyped command.
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1])});
      diagonal = up;
    }
  }
  return row[b.size()];
}
}  // namespace

int main(int argc, char** argv) {
  using namespace vitrine::cli;
  for (int i = 0; i < argc; ++i) {
    g_command_line += (i ? " " : "") + std::string(argv[i]);
    g_command_args.emplace_back(argv[i]);
  }
  // Logs and progress go to stderr; stdout carries only results (JSON lines).
  spdlog::set_default_logger(spdlog::stderr_color_mt("vitrine"));
  spdlog::set_pattern("%^%l%$: %v");
  // Large tensors reuse freed heap memory instead of fresh pages (see memory.h).
  const bool kept = vitrine::keep_freed_memory();

  CLI::App app{"Vitrine: image recognition and visual search for product photos"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "vitrine 0.1.0");
  bool verbose = false;
  app.add_flag("-v,--verbose", verbose, "More detailed logs");
  app.parse_complete_callback([&] {
    spdlog::set_level(verbose ? spdlog::level::debug : spdlog::level::info);
    spdlog::debug("malloc: {}", kept ? "freed memory kept for reuse (VITRINE_MALLOC=system: off)"
                                     : "the system's settings");
    if (const auto problem = vitrine::malloc_setting_problem(); !problem.empty()) {
      spdlog::warn("{}", problem);
    }
  });
  int status = kExitOk;
  add_models_command(app, status);
  add_init_command(app, status);
  add_merge_adapter_command(app, status);
  add_bench_command(app, status);
  add_optimize_command(app, status);
  add_import_command(app, status);
  add_predict_command(app, status);
  add_train_command(app, status);
  add_eval_command(app, status);
  add_pretrain_command(app, status);
  add_compare_command(app, status);
  add_search_commands(app, status);
  add_serve_commands(app, status);
  // A mistyped command: CLI11 would say only that a subcommand is required.
  for (int i = 1; i < argc; ++i) {
    const std::string word = argv[i];
    if (word.empty() || word[0] == '-') continue;  // -v, --version, --help
    std::vector<std::string> names;
    for (const auto* sub : app.get_subcommands({})) names.push_back(sub->get_name());
    if (std::find(names.begin(), names.end(), word) != names.end()) break;
    std::string closest;
    size_t best = 3;  // at most 2 edits away
    for (const auto& name : names) {
      const size_t d = edit_distance(word, name);
      const bool prefix = name.rfind(word, 0) == 0 || word.rfind(name, 0) == 0;
      if (d < best || (prefix && closest.empty())) {
        best = std::min(best, d);
        closest = name;
      }
    }
    std::cerr << "error: unknown command '" << word << "'"
              << (closest.empty() ? "" : "; did you mean '" + closest + "'?")
              << " (`vitrine --help` lists the commands)\n";
    return kExitError;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : kExitError;
  } catch (const vitrine::Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return kExitError;
  } catch (const c10::Error& e) {
    std::cerr << "error: " << e.what_without_backtrace() << "\n";
    return kExitError;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return kExitError;
  }
  return status;
}
