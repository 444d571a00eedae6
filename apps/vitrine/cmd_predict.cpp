// `vitrine predict`: classify images with a model directory, one JSON line each.
#include "commands.h"
#include "progress.h"

#include "vitrine/core/error.h"
#include "vitrine/core/json.h"
#include "vitrine/core/threads.h"
#include "vitrine/image/batch.h"
#include "vitrine/models/model_dir.h"
#include "vitrine/models/predictor.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <iostream>

namespace vitrine::cli {

void add_precision_options(CLI::App* cmd, std::string& precision, std::string* engine) {
  cmd->add_option("--precision", precision,
                  "auto (int8 for a model `vitrine optimize --int8` calibrated, else fp32), fp32, "
                  "bf16 or int8; `vitrine bench` measures which is fastest here")
      ->check(CLI::IsMember({"auto", "fp32", "bf16", "int8"}));
  if (engine == nullptr) return;
  cmd->add_option("--engine", *engine,
                  "fused (oneDNN, weights pre-packed, post-ops fused), libtorch (the reference) "
                  "or auto (fused where built)")
      ->check(CLI::IsMember({"auto", "fused", "libtorch"}));
}

void add_predict_command(CLI::App& app, int& status) {
  auto* cmd = app.add_subcommand("predict", "Classify images; prints one JSON object per line");
  struct Args {
    std::string model, precision = "auto", engine = "auto";
    std::vector<std::string> images;
    int64_t topk = 5, batch_size = 32, max_pixels = 100'000'000;
    int threads = 0;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("--model", a->model, "Model directory (config.json + model.safetensors)")
      ->required();
  cmd->add_option("--topk", a->topk, "Classes per image")->check(CLI::Range(1, 1 << 24));
  cmd->add_option("--batch-size", a->batch_size, "Images per forward pass")
      ->check(CLI::Range(1, 1 << 16));
  cmd->add_option("--threads", a->threads, "CPU threads (default: all cores)")
      ->check(CLI::Range(0, 4096));
  add_precision_options(cmd, a->precision, &a->engine);
  cmd->add_option("--max-pixels", a->max_pixels,
                  "Refuse images with more pixels (checked from the header)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 40));
  cmd->add_option("images", a->images, "Image files or directories")->required();
  cmd->callback([a, &status] {
    const int threads = set_threads(a->threads);
    auto predictor =
        models::Predictor(models::load_model(a->model), models::parse_precision(a->precision),
                          models::parse_engine(a->engine));
    std::vector<std::string> warnings;
    const auto paths = image::expand_image_paths(a->images, &warnings);
    for (const auto& w : warnings) spdlog::warn("{}", w);
    VT_CHECK(!paths.empty(), "no images found in the given paths (looked for ",
             image::folder_image_extensions(), " in folders)");
    spdlog::debug("{} images, {} threads, {} engine, {}", paths.size(), threads,
                  models::engine_name(predictor.engine()),
                  models::precision_name(predictor.precision()));
    image::DecodeOptions decode;
    decode.max_pixels = a->max_pixels;
    Progress progress("predict", static_cast<int64_t>(paths.size()));
    int64_t failed = 0;
    for (size_t begin = 0; begin < paths.size(); begin += a->batch_size) {
      const size_t end = std::min(paths.size(), begin + static_cast<size_t>(a->batch_size));
      const std::vector<std::string> chunk(paths.begin() + begin, paths.begin() + end);
      auto loaded = image::load_images(chunk, predictor.config().preprocess, decode);
      std::vector<at::Tensor> inputs;
      for (const auto& item : loaded) {
        if (item.ok()) inputs.push_back(item.tensor);
      }
      std::vector<std::vector<models::Scored>> tops, chosen;
      const bool multi = predictor.config().task == "multi_label";
      if (!inputs.empty()) {
        const at::Tensor scores = predictor.scores(at::stack(inputs));
        tops = predictor.top_k(scores, a->topk);
        if (multi) chosen = predictor.above_threshold(scores);
      }
      size_t next = 0;
      for (const auto& item : loaded) {
        nlohmann::json line{{"image", item.path}};
        if (item.ok()) {
          auto& top = line["top"] = nlohmann::json::array();
          for (const auto& s : tops[next]) {
            top.push_back({{"label", s.label}, {"index", s.index}, {"score", s.score}});
          }
          if (multi) {
            // The labels the model assigns, at its tuned per-label thresholds.
            auto& labels = line["labels"] = nlohmann::json::array();
            for (const auto& s : chosen[next]) labels.push_back(s.label);
          }
          ++next;
        } else {
          line["error"] = item.error;
          ++failed;
        }
        std::cout << json_text(line) << "\n";
      }
      std::cout.flush();
      progress.advance(static_cast<int64_t>(chunk.size()));
    }
    progress.finish();
    if (failed > 0) spdlog::warn("{} of {} images failed (see their error lines)", failed, paths.size());
    status = failed > 0 ? kExitSomeFailed : kExitOk;
  });
}

}  // namespace vitrine::cli
