// Adversarial examples: FGSM (Goodfellow et al. 2015) and PGD (Madry et al. 2018) under an
// L-infinity budget in pixel units, for adversarial training (`vitrine train --adv`) and
// robust accuracy (`vitrine eval --attack`). Models take normalised images; the attacks
// work on the pixels behind them (x * std + mean, in [0, 1]), so `--adv-eps 8/255` means
// what it says whatever the model's normalisation.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace vitrine::models {
class VisionModelImpl;
}

namespace vitrine::train {

struct AttackOptions {
  std::string method = "pgd";  ///< fgsm | pgd
  double eps = 8.0 / 255;      ///< L-inf radius in pixel units (images in [0, 1])
  int64_t steps = 10;          ///< PGD iterations
  double alpha = 0;            ///< PGD step size; 0: 2.5 * eps / steps (Madry et al.)
  bool random_start = true;    ///< PGD starts from a uniform point of the eps-ball
  bool multi_label = false;    ///< the loss to raise: binary cross-entropy, not softmax
};

/// Throws naming the option when `o` is not a valid attack.
void check_attack(const AttackOptions& o);

/// "8/255", "0.03" or "2": a budget in pixel units (a fraction of the [0, 1] range).
double parse_epsilon(const std::string& text);

/// The step size the attack uses (alpha, or its default).
double attack_step_size(const AttackOptions& o);

/// Adversarial versions of `images` (N, C, H, W), normalised as `model` takes them with
/// `mean`/`std` (one value per channel). `targets` are class indices (N), soft targets
/// (N, K) as training uses them, or multi-label 0/1 targets (N, K). Each step raises the
/// loss along the sign of its gradient; the perturbation stays within eps of the original
/// pixels and the pixels within [0, 1] (pixels already outside, as random erasing makes
/// them, may stay where they are). `start`, when given, is PGD's first perturbation in
/// pixel units instead of a random one. The model's mode is left as it is (training runs
/// attacks in eval mode); gradients reach the images only, never the weights.
at::Tensor attack(models::VisionModelImpl& model, const at::Tensor& images,
                  const at::Tensor& targets, const AttackOptions& o,
                  const std::vector<float>& mean, const std::vector<float>& std,
                  const at::Tensor& start = {});

}  // namespace vitrine::train
