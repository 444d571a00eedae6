#include "vitrine/train/evaluate.h"

#include "vitrine/core/base64.h"
#include "vitrine/core/error.h"
#include "vitrine/core/text.h"
#include "vitrine/image/transform.h"

#include <ATen/ATen.h>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <functional>
#include <limits>
#include <random>

namespace vitrine::train {

cv::Mat with_channels(const cv::Mat& image, int64_t channels) {
  if (image.channels() == channels) return image;
  if (image.channels() == 1) {
    cv::Mat out;
    cv::cvtColor(image, out, cv::COLOR_GRAY2RGB);
    return out;
  }
  return image::to_grey(image);
}

data::SampleTransform eval_sample_transform(const models::ModelConfig& config) {
  const image::EvalTransform t = config.preprocess;
  return [t](const cv::Mat& img, std::mt19937_64&) {
    return image::eval_transform(with_channels(img, t.channels), t);
  };
}

void for_each_eval_batch(models::VisionModelImpl& model,
                         const std::shared_ptr<data::Dataset>& data, const EvalOptions& options,
                         std::vector<std::string>* errors,
                         const std::function<void(const data::Batch&)>& consume) {
  VT_CHECK(data && data->size() > 0, "nothing to evaluate: the data set is empty");
  data::LoaderOptions lo;
  lo.batch_size = options.batch_size;
  lo.workers = options.workers;
  lo.strict = options.strict;
  lo.targets = options.targets;
  data::Loader loader(data, eval_sample_transform(model.config()), lo);
  loader.start_epoch(0);
  const bool was_training = model.is_training();
  model.eval();
  int64_t read = 0;
  try {
    at::NoGradGuard no_grad;
    data::Batch batch;
    while (loader.next(batch)) {
      read += batch.images.size(0);
      consume(batch);
    }
  } catch (...) {
    model.train(was_training);
    throw;
  }
  model.train(was_training);
  // Scores of no photo at all would read as 0.
  VT_CHECK(read > 0, "none of the ", data->size(), " images to evaluate could be read (",
           loader.errors().empty() ? std::string("no error recorded")
                                   : "first: " + loader.errors().front(),
           "); fix or remove them");
  if (errors) *errors = loader.errors();
}

ClassMatch match_classes(const models::ModelConfig& config,
                         const std::vector<std::string>& data_classes) {
  const int64_t k = config.num_classes;
  const auto& labels = config.labels;
  const auto n = static_cast<int64_t>(data_classes.size());
  if (static_cast<int64_t>(labels.size()) == k) {
    // By name: the data may hold some of the model's classes (e.g. the earlier task of a
    // model fine-tuned further with new classes), in any order.
    std::vector<std::string> unknown;
    for (const auto& c : data_classes) {
      if (std::find(labels.begin(), labels.end(), c) == labels.end()) unknown.push_back(c);
    }
    if (unknown.empty()) return ClassMatch::kByName;
    // No name in common and other counts: another task altogether (ImageNet's classes
    // against a shop's), which no mapping scores.
    VT_CHECK(static_cast<int64_t>(unknown.size()) < n || n == k, config.arch, " classifies ",
             k, " classes of its own (", quoted_list(labels, "'", 40), "), none of them the "
             "data's ", n, " (",
             quoted_list(unknown), "), so it cannot be scored on this data. To see what "
             "fine-tuning bought, score a linear probe of it (`vitrine train --init <model> "
             "--reinit-head --freeze backbone`: its features, a head fitted to these classes) "
             "beside the fine-tuned model");
    // No name in common: by position, as torchvision's ImageFolder numbers sorted folders.
    VT_CHECK(static_cast<int64_t>(unknown.size()) == n && n == k, config.arch,
             " does not know ", unknown.size(), " of the data's ", n, " classes (",
             quoted_list(unknown), "); use data with the model's classes, such as the data it "
             "was trained on (`vitrine train --append-classes` teaches it new ones)");
  }
  VT_CHECK(n == k, config.arch, " has ", k, " classes but the data has ", n,
           "; use data with the model's classes");
  return ClassMatch::kByPosition;
}

std::shared_ptr<data::Dataset> scored_as(const models::ModelConfig& config,
                                         std::shared_ptr<data::Dataset> data, ClassMatch* how) {
  // By name where every class with photos is one of the model's (an empty folder of a class
  // it lacks changes nothing); otherwise as match_classes() says for all of the data's
  // classes, by position counting every folder, or an error.
  const auto& labels = config.labels;
  bool named = static_cast<int64_t>(labels.size()) == config.num_classes;
  if (named) {
    const auto used = data::classes_with_items(*data);
    named = std::all_of(used.begin(), used.end(), [&labels](const std::string& c) {
      return std::find(labels.begin(), labels.end(), c) != labels.end();
    });
  }
  ClassMatch match = ClassMatch::kByName;
  if (named) {
    data = data::with_classes(data, labels);
  } else {
    match = match_classes(config, data->classes());
  }
  if (how != nullptr) *how = match;
  return data;
}

namespace {

// Runs the model over `data` in eval mode, handing (logits, targets) of each batch on;
// with `adversary`, over adversarial versions of the images.
void for_each_batch(models::VisionModelImpl& model, const std::shared_ptr<data::Dataset>& data,
                    const EvalOptions& options, std::vector<std::string>* errors,
                    const std::function<void(const at::Tensor&, const at::Tensor&)>& consume,
                    const AttackOptions* adversary = nullptr) {
  VT_CHECK(data && data->size() > 0, "nothing to evaluate: the split is empty");
  // A softmax scored as sigmoids, or the reverse, gives numbers that look right and are not.
  const bool multi_label_model = model.config().task == "multi_label";
  VT_CHECK(multi_label_model == data->multi_label(), "the model is ",
           multi_label_model ? "multi-label (a sigmoid a class)"
                             : "single-label (one class a photo)",
           " but the data is ", data->multi_label() ? "multi-label" : "single-label",
           ": evaluate it on data of its kind (multi-label: a CSV manifest with a labels column), "
           "or train a model for this data");
  const int64_t k = model.config().num_classes;
  const auto& labels = model.config().labels;
  ClassMatch match = ClassMatch::kByName;
  const std::shared_ptr<data::Dataset> d = scored_as(model.config(), data, &match);
  if (match == ClassMatch::kByPosition && static_cast<int64_t>(labels.size()) == k) {
    spdlog::warn("none of the data's classes is named as one of the model's: the data's "
                 "class {} ('{}') is taken as the model's class {} ('{}'), and so on",
                 0, d->classes().front(), 0, labels.front());
  }
  const auto& pre = model.config().preprocess;
  for_each_eval_batch(model, d, options, errors, [&](const data::Batch& batch) {
    const at::Tensor images = adversary ? attack(model, batch.images, batch.targets,
                                                 *adversary, pre.mean, pre.std)
                                        : batch.images;
    const at::Tensor logits = options.inference ? model.forward_inference(images).to(at::kFloat)
                                                : model.forward(images);
    if (!at::isfinite(logits).all().item<bool>()) {
      throw NonFiniteOutput(model.config().arch + " produces non-finite outputs (its weights "
                            "have diverged)", __FILE__, __LINE__);
    }
    consume(logits, batch.targets);
  });
}

}  // namespace

MultiLabelMetrics evaluate_multi_label(models::VisionModelImpl& model,
                                       const std::shared_ptr<data::Dataset>& data,
                                       const EvalOptions& options, std::vector<std::string>* errors,
                                       std::vector<float>* tuned) {
  VT_CHECK(data && data->multi_label(), "multi-label evaluation needs multi-label data");
  MultiLabelAccumulator acc(model.config().num_classes);
  for_each_batch(model, data, options, errors, [&](const at::Tensor& logits, const at::Tensor& t) {
    acc.add(at::sigmoid(logits), t);
  });
  if (!tuned) return acc.compute(model.config().thresholds);
  *tuned = acc.tune_thresholds();
  return acc.compute(*tuned);
}

MultiLabelMetrics evaluate_multi_label_under_attack(models::VisionModelImpl& model,
                                                    const std::shared_ptr<data::Dataset>& data,
                                                    const AttackOptions& attack,
                                                    const EvalOptions& options,
                                                    std::vector<std::string>* errors) {
  VT_CHECK(data && data->multi_label(), "multi-label evaluation needs multi-label data");
  check_attack(attack);
  AttackOptions a = attack;
  a.multi_label = true;
  MultiLabelAccumulator acc(model.config().num_classes);
  for_each_batch(
      model, data, options, errors,
      [&](const at::Tensor& logits, const at::Tensor& t) { acc.add(at::sigmoid(logits), t); },
      &a);
  return acc.compute(model.config().thresholds);
}

namespace {

// Single-label metrics over `data`, on adversarial images when `adversary` is given.
ClassificationMetrics classify(models::VisionModelImpl& model,
                               const std::shared_ptr<data::Dataset>& data,
                               const EvalOptions& options, std::vector<std::string>* errors,
                               const AttackOptions* adversary) {
  ClassificationAccumulator acc(model.config().num_classes);
  for_each_batch(
      model, data, options, errors,
      [&](const at::Tensor& logits, const at::Tensor& t) { acc.add(at::softmax(logits, 1), t); },
      adversary);
  return acc.compute();
}

}  // namespace

ClassificationMetrics evaluate(models::VisionModelImpl& model,
                               const std::shared_ptr<data::Dataset>& data,
                               const EvalOptions& options, std::vector<std::string>* errors) {
  VT_CHECK(data, "nothing to evaluate: the data has no such split");
  VT_CHECK(!data->multi_label(), "the data is multi-label; use multi-label evaluation (mAP, F1)");
  return classify(model, data, options, errors, nullptr);
}

ClassificationMetrics evaluate_under_attack(models::VisionModelImpl& model,
                                            const std::shared_ptr<data::Dataset>& data,
                                            const AttackOptions& attack,
                                            const EvalOptions& options,
                                            std::vector<std::string>* errors) {
  VT_CHECK(data, "nothing to evaluate: the data has no such split");
  VT_CHECK(!data->multi_label(),
           "the data is multi-label; use evaluate_multi_label_under_attack");
  check_attack(attack);
  return classify(model, data, options, errors, &attack);
}

std::vector<std::pair<int64_t, double>> predict_items(models::VisionModelImpl& model,
                                                      const data::Dataset& data,
                                                      const std::vector<int64_t>& indices) {
  const auto transform = eval_sample_transform(model.config());
  std::mt19937_64 unused;
  const bool was_training = model.is_training();
  model.eval();
  at::NoGradGuard no_grad;
  std::vector<std::pair<int64_t, double>> out;
  for (const int64_t i : indices) {
    try {
      const at::Tensor p =
          at::softmax(model.forward(transform(data.image(i), unused).unsqueeze(0)), 1)[0];
      const int64_t top = p.argmax().item<int64_t>();
      out.emplace_back(top, p[top].item<double>());
    } catch (const Error&) {
      out.emplace_back(-1, std::numeric_limits<double>::quiet_NaN());
    }
  }
  model.train(was_training);
  return out;
}

std::string png_base64(const cv::Mat& image) {
  cv::Mat bgr = image;
  if (image.channels() == 3) cv::cvtColor(image, bgr, cv::COLOR_RGB2BGR);
  std::vector<uint8_t> png;
  VT_CHECK(cv::imencode(".png", bgr, png), "could not encode a report image as PNG");
  return base64_encode(png);
}

}  // namespace vitrine::train
