#include "vitrine/train/evaluate.h"

#include "vitrine/core/error.h"
#include "vitrine/image/transform.h"

#include <ATen/ATen.h>
#include <opencv2/imgproc.hpp>

#include <functional>

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

namespace {

// Runs the model over `data` in eval mode, handing (logits, targets) of each batch on.
void for_each_batch(models::VisionModelImpl& model, const std::shared_ptr<data::Dataset>& data,
                    const EvalOptions& options, std::vector<std::string>* errors,
                    const std::function<void(const at::Tensor&, const at::Tensor&)>& consume) {
  VT_CHECK(data && data->size() > 0, "nothing to evaluate: the split is empty");
  const int64_t k = model.config().num_classes;
  VT_CHECK(static_cast<int64_t>(data->classes().size()) == k, model.config().arch, " has ", k,
           " classes but the data has ", data->classes().size(),
           "; evaluate on data with the model's classes");
  data::LoaderOptions lo;
  lo.batch_size = options.batch_size;
  lo.workers = options.workers;
  lo.strict = options.strict;
  data::Loader loader(data, eval_sample_transform(model.config()), lo);
  loader.start_epoch(0);
  const bool was_training = model.is_training();
  model.eval();
  {
    at::NoGradGuard no_grad;
    data::Batch batch;
    while (loader.next(batch)) {
      const at::Tensor logits = model.forward(batch.images);
      if (!at::isfinite(logits).all().item<bool>()) {
        model.train(was_training);
        throw NonFiniteOutput(model.config().arch + " produces non-finite outputs (its weights "
                              "have diverged)", __FILE__, __LINE__);
      }
      consume(logits, batch.targets);
    }
  }
  model.train(was_training);
  if (errors) *errors = loader.errors();
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
  if (tuned) *tuned = acc.tune_thresholds();
  return acc.compute(model.config().thresholds);
}

ClassificationMetrics evaluate(models::VisionModelImpl& model,
                               const std::shared_ptr<data::Dataset>& data,
                               const EvalOptions& options, std::vector<std::string>* errors) {
  VT_CHECK(data && !data->multi_label(),
           "the data is multi-label; use multi-label evaluation (mAP, F1)");
  ClassificationAccumulator acc(model.config().num_classes);
  for_each_batch(model, data, options, errors, [&](const at::Tensor& logits, const at::Tensor& t) {
    acc.add(at::softmax(logits, 1), t);
  });
  return acc.compute();
}

}  // namespace vitrine::train
