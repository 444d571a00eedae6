// vitrine: image recognition and visual search for product photos.
#include "commands.h"

#include "vitrine/core/error.h"
#include "vitrine/core/memory.h"

#include <c10/util/Exception.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <iostream>

namespace vitrine::cli {
namespace {
std::string g_command_line;
std::vector<std::string> g_command_args;
}
const std::string& command_line() { return g_command_line; }
const std::vector<std::string>& command_args() { return g_command_args; }
}  // namespace vitrine::cli

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
