#include "vitrine/train/adversarial.h"

#include "vitrine/core/error.h"
#include "vitrine/models/model.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>

#include <cmath>

namespace vitrine::train {

void check_attack(const AttackOptions& o) {
  VT_CHECK(o.method == "fgsm" || o.method == "pgd", "the attack must be fgsm or pgd, got '",
           o.method, "'");
  VT_CHECK(std::isfinite(o.eps) && o.eps > 0 && o.eps <= 1, "--adv-eps must be in (0, 1] (pixel "
           "units: 8/255 is a common budget), got ", o.eps);
  VT_CHECK(o.method == "fgsm" || (o.steps >= 1 && o.steps <= 1000),
           "--adv-steps must be in 1..1000, got ", o.steps);
  VT_CHECK(std::isfinite(o.alpha) && o.alpha >= 0 && o.alpha <= 1,
           "--adv-alpha must be in [0, 1] (0: 2.5 * eps / steps), got ", o.alpha);
}

double parse_epsilon(const std::string& text) {
  auto number = [&](const std::string& s) {
    size_t used = 0;
    double v = 0;
    try {
      v = std::stod(s, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    VT_CHECK(used > 0 && used == s.size() && std::isfinite(v), "cannot read '", text,
             "' as a budget: write 8/255 or 0.031");
    return v;
  };
  const auto slash = text.find('/');
  if (slash == std::string::npos) return number(text);
  const double den = number(text.substr(slash + 1));
  VT_CHECK(den != 0, "cannot read '", text, "' as a budget: division by zero");
  return number(text.substr(0, slash)) / den;
}

double attack_step_size(const AttackOptions& o) {
  if (o.method == "fgsm") return o.eps;
  return o.alpha > 0 ? o.alpha : 2.5 * o.eps / static_cast<double>(o.steps);
}

at::Tensor attack(models::VisionModelImpl& model, const at::Tensor& images,
                  const at::Tensor& targets, const AttackOptions& o,
                  const std::vector<float>& mean, const std::vector<float>& std,
                  const at::Tensor& start) {
  check_attack(o);
  VT_CHECK(images.dim() == 4, "attack: images must be (N, C, H, W), got ", images.sizes());
  const int64_t c = images.size(1);
  VT_CHECK(static_cast<int64_t>(mean.size()) == c && static_cast<int64_t>(std.size()) == c,
           "attack: ", c, "-channel images need ", c, " means and deviations, got ", mean.size(),
           " and ", std.size());
  const auto opts = images.options().dtype(at::kFloat);
  const at::Tensor m = at::tensor(mean, opts).view({1, c, 1, 1});
  const at::Tensor s = at::tensor(std, opts).view({1, c, 1, 1});
  const at::Tensor pixels = images.detach().to(at::kFloat) * s + m;
  // The valid range: [0, 1], widened where a pixel already lies outside it.
  const at::Tensor lo = at::clamp_max(pixels, 0.0), hi = at::clamp_min(pixels, 1.0);
  const bool fgsm = o.method == "fgsm";
  const int64_t steps = fgsm ? 1 : o.steps;
  const double alpha = attack_step_size(o);
  at::Tensor delta;
  if (start.defined()) {
    VT_CHECK(start.sizes() == images.sizes(), "attack: the start must have the images' shape");
    delta = start.detach().to(at::kFloat).clamp(-o.eps, o.eps);
  } else if (!fgsm && o.random_start) {
    delta = (at::rand_like(pixels) * 2 - 1) * o.eps;
  } else {
    delta = at::zeros_like(pixels);
  }
  delta = at::minimum(at::maximum(pixels + delta, lo), hi) - pixels;

  at::AutoGradMode grad_on(true);
  for (int64_t step = 0; step < steps; ++step) {
    const at::Tensor x = (pixels + delta).detach().requires_grad_(true);
    const at::Tensor logits = model.forward((x - m) / s).to(at::kFloat);
    at::Tensor loss;
    if (o.multi_label) {
      loss = at::binary_cross_entropy_with_logits(logits, targets.to(at::kFloat));
    } else if (targets.is_floating_point()) {
      loss = (-targets * at::log_softmax(logits, 1)).sum(1).mean();
    } else {
      loss = at::cross_entropy_loss(logits, targets);
    }
    const at::Tensor grad = torch::autograd::grad({loss}, {x})[0];
    delta = (delta + alpha * grad.sign()).clamp(-o.eps, o.eps);
    delta = at::minimum(at::maximum(pixels + delta, lo), hi) - pixels;
  }
  return (((pixels + delta) - m) / s).to(images.scalar_type()).detach();
}

}  // namespace vitrine::train
