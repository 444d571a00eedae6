#include "vit.h"

#include "layers.h"
#include "onednn.h"
#include "tome.h"
#include "vitrine/core/error.h"
#include "vitrine/models/checkpoint.h"

#include <c10/core/InferenceMode.h>
#include <torch/nn/init.h>

#include <algorithm>
#include <cmath>
#include <map>

namespace vitrine::models {
namespace {

namespace nn = torch::nn;

// A normal distribution cut at two standard deviations, as timm's trunc_normal_.
void trunc_normal_(at::Tensor t, double std) {
  at::NoGradGuard no_grad;
  t.normal_(0.0, std);
  for (int i = 0; i < 8; ++i) {
    const at::Tensor outside = t.abs() > 2 * std;
    if (!outside.any().item<bool>()) return;
    t.masked_scatter_(outside, at::empty_like(t).normal_(0.0, std).masked_select(outside));
  }
  t.clamp_(-2 * std, 2 * std);
}

// Debian's libtorch sends fp32 at::linear to the generic BLAS (OpenBLAS: ~55 GFLOP/s on
// 2 cores here); oneDNN's inner product runs the same products ~2.3x faster, even with the
// conversion of the input to its layout on every call.
at::Tensor onednn_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  return at::mkldnn_linear(x.contiguous().to_mkldnn(), w, b).to_dense();
}

at::Tensor maybe(const at::Tensor& t, at::ScalarType dtype) {
  return t.defined() ? t.detach().to(dtype).contiguous() : t;
}

}  // namespace

ViTAttentionImpl::ViTAttentionImpl(int64_t dim, int64_t inner, bool qkv_bias) {
  in_proj_weight = register_parameter("in_proj_weight", at::empty({3 * inner, dim}));
  nn::init::xavier_uniform_(in_proj_weight);
  if (qkv_bias) in_proj_bias = register_parameter("in_proj_bias", at::zeros({3 * inner}));
  out_proj = register_module("out_proj", nn::Linear(inner, dim));
  nn::init::zeros_(out_proj->bias);
}

ViTMlpImpl::ViTMlpImpl(int64_t dim, int64_t hidden) {
  // torchvision's MLPBlock is [Linear, GELU, Dropout, Linear, Dropout]: keys 0 and 3.
  fc1 = register_module("0", nn::Linear(dim, hidden));
  fc2 = register_module("3", nn::Linear(hidden, dim));
  for (auto* l : {&fc1, &fc2}) {
    nn::init::xavier_uniform_((*l)->weight);
    at::NoGradGuard no_grad;
    (*l)->bias.normal_(0.0, 1e-6);
  }
}

ViTBlockImpl::ViTBlockImpl(const ViTConfig& c, size_t layer, double drop_path)
    : drop_path_rate(drop_path) {
  const auto ln_options =
      nn::LayerNormOptions({c.hidden_size}).eps(c.layer_norm_eps).elementwise_affine(true);
  ln_1 = register_module("ln_1", nn::LayerNorm(ln_options));
  self_attention = register_module(
      "self_attention",
      ViTAttention(c.hidden_size, c.heads_of(layer) * c.head_dim(), c.qkv_bias));
  ln_2 = register_module("ln_2", nn::LayerNorm(ln_options));
  mlp = register_module("mlp", ViTMlp(c.hidden_size, c.intermediate_of(layer)));
}

ViTBlockWeights ViTBlockImpl::weights(double lora_scale) const {
  return {ln_1->weight,          ln_1->bias,         self_attention->in_proj_weight,
          self_attention->in_proj_bias, self_attention->out_proj->weight,
          self_attention->out_proj->bias, ln_2->weight, ln_2->bias, mlp->fc1->weight,
          mlp->fc1->bias,        mlp->fc2->weight,   mlp->fc2->bias,
          self_attention->qkv_lora, self_attention->proj_lora, mlp->fc1_lora, mlp->fc2_lora,
          lora_scale};
}

namespace {

// W + scale * B A (a copy; W itself stays as it is).
at::Tensor merged(const at::Tensor& w, const LoraPair& l, double scale) {
  if (!l.defined()) return w;
  at::NoGradGuard no_grad;
  return w.detach() + at::matmul(l.b.detach(), l.a.detach()) * scale;
}

LoraPair add_pair(torch::nn::Module& owner, const std::string& name, int64_t out, int64_t in,
                  int64_t rank) {
  LoraPair p;
  // A as nn.Linear(in, rank) initialises its weight (PEFT does the same), B zero.
  p.a = owner.register_parameter("lora_" + name + "_A", at::empty({rank, in}));
  nn::init::kaiming_uniform_(p.a, std::sqrt(5.0));
  p.b = owner.register_parameter("lora_" + name + "_B", at::zeros({out, rank}));
  return p;
}

}  // namespace

int64_t ViTImpl::add_lora(const LoraOptions& o) {
  VT_CHECK(o.rank >= 1, "--lora-rank must be at least 1, got ", o.rank);
  VT_CHECK(o.alpha > 0, "--lora-alpha must be positive, got ", o.alpha);
  VT_CHECK(!o.targets.empty(), "--lora-targets: name at least one of qkv, proj, fc1, fc2");
  VT_CHECK(lora_scale_ == 0, config_.arch, " already has LoRA adapters");
  for (const auto& t : o.targets) {
    VT_CHECK(t == "qkv" || t == "proj" || t == "fc1" || t == "fc2", "--lora-targets: unknown '",
             t, "' (ViT: qkv, proj, fc1, fc2)");
  }
  const auto wants = [&](const char* t) {
    return std::find(o.targets.begin(), o.targets.end(), t) != o.targets.end();
  };
  const int64_t d = config_.vit.hidden_size;
  VT_CHECK(o.rank <= std::min(d, config_.vit.intermediate_size), "--lora-rank ", o.rank,
           " is not below the width ", d, " of ", config_.arch,
           "; LoRA adapts with a low rank (4 to 64)");
  lora_scale_ = o.alpha / static_cast<double>(o.rank);
  int64_t count = 0;
  for (auto& b : blocks_) {
    auto& attn = *b->self_attention;
    auto& mlp = *b->mlp;
    // A pruned block has its own attention and MLP widths.
    const int64_t inner = attn.out_proj->weight.size(1), h = mlp.fc1->weight.size(0);
    if (wants("qkv")) attn.qkv_lora = add_pair(attn, "qkv", 3 * inner, d, o.rank);
    if (wants("proj")) attn.proj_lora = add_pair(attn, "proj", d, inner, o.rank);
    if (wants("fc1")) mlp.fc1_lora = add_pair(mlp, "fc1", h, d, o.rank);
    if (wants("fc2")) mlp.fc2_lora = add_pair(mlp, "fc2", d, h, o.rank);
    count += static_cast<int64_t>(attn.qkv_lora.defined()) + attn.proj_lora.defined() +
             mlp.fc1_lora.defined() + mlp.fc2_lora.defined();
  }
  prepared_ = false;
  return count;
}

StateDict ViTImpl::deployable_state_dict() const {
  StateDict state = model_state_dict(*this);
  if (lora_scale_ == 0) return state;
  // Each adapted matrix by its key, merged; adapter tensors dropped.
  std::map<const void*, at::Tensor> replaced;
  for (const auto& b : blocks_) {
    const auto& attn = *b->self_attention;
    const auto& mlp = *b->mlp;
    replaced[attn.in_proj_weight.unsafeGetTensorImpl()] =
        merged(attn.in_proj_weight, attn.qkv_lora, lora_scale_);
    replaced[attn.out_proj->weight.unsafeGetTensorImpl()] =
        merged(attn.out_proj->weight, attn.proj_lora, lora_scale_);
    replaced[mlp.fc1->weight.unsafeGetTensorImpl()] =
        merged(mlp.fc1->weight, mlp.fc1_lora, lora_scale_);
    replaced[mlp.fc2->weight.unsafeGetTensorImpl()] =
        merged(mlp.fc2->weight, mlp.fc2_lora, lora_scale_);
  }
  StateDict out;
  for (auto& [name, t] : state) {
    if (name.find(".lora_") != std::string::npos) continue;
    const auto it = replaced.find(t.unsafeGetTensorImpl());
    out.emplace_back(name, it == replaced.end() ? t : it->second);
  }
  return out;
}

ViTImpl::ViTImpl(ModelConfig config) : VisionModelImpl(std::move(config)) {
  const auto& c = config_;
  c.validate();
  const auto& v = c.vit;
  const int64_t d = v.hidden_size;  ///< embedding width
  const int64_t grid = c.image_size / v.patch_size;
  conv_proj_ = register_module(
      "conv_proj",
      nn::Conv2d(nn::Conv2dOptions(c.in_channels, d, v.patch_size).stride(v.patch_size)));
  trunc_normal_(conv_proj_->weight,
                std::sqrt(1.0 / (c.in_channels * v.patch_size * v.patch_size)));
  nn::init::zeros_(conv_proj_->bias);
  class_token_ = register_parameter("class_token", at::zeros({1, 1, d}));

  auto encoder = register_module("encoder", std::make_shared<nn::Module>());
  pos_embedding_ = encoder->register_parameter("pos_embedding",
                                               at::empty({1, grid * grid + 1, d}).normal_(0, 0.02));
  auto layers = encoder->register_module("layers", std::make_shared<nn::Module>());
  for (int64_t i = 0; i < v.num_hidden_layers; ++i) {
    const double dp =
        v.num_hidden_layers > 1 ? c.drop_path * i / (v.num_hidden_layers - 1) : c.drop_path;
    blocks_.push_back(
        layers->register_module("encoder_layer_" + std::to_string(i),
                                ViTBlock(v, static_cast<size_t>(i), dp)));
  }
  ln_ = encoder->register_module(
      "ln", nn::LayerNorm(nn::LayerNormOptions({d}).eps(v.layer_norm_eps)));
  reset_head(c.num_classes);
}

void ViTImpl::reset_head(int64_t num_classes) {
  if (num_classes != config_.num_classes) config_.labels.clear();
  config_.num_classes = num_classes;
  if (heads_ != nullptr) unregister_module("heads");
  heads_ = nullptr;
  head_ = nullptr;
  if (num_classes > 0) {
    auto heads = register_module("heads", std::make_shared<nn::Module>());
    heads_ = heads.get();
    head_ = heads->register_module("head", nn::Linear(config_.vit.hidden_size, num_classes));
    // torchvision zero-initialises the head; a small random one keeps gradients flowing
    // into the backbone from the first step, as timm does.
    trunc_normal_(head_->weight, 0.02);
    nn::init::zeros_(head_->bias);
  }
  prepared_ = false;
}

ViTImpl::Weights ViTImpl::trained_weights() const {
  Weights w{conv_proj_->weight, conv_proj_->bias, class_token_, pos_embedding_,
            ln_->weight,        ln_->bias,        at::Tensor(), at::Tensor(), {}};
  if (head_) {
    w.head_w = head_->weight;
    w.head_b = head_->bias;
  }
  for (const auto& b : blocks_) w.blocks.push_back(b->weights(lora_scale_));
  return w;
}

at::Tensor ViTImpl::block(const at::Tensor& x, const ViTBlockWeights& w, double dp,
                          bool training, bool onednn, int64_t merge, at::Tensor& size) const {
  const auto linear = [onednn](const at::Tensor& in, const at::Tensor& wt, const at::Tensor& b) {
    return onednn && in.scalar_type() == at::kFloat && in.device().is_cpu()
               ? onednn_linear(in, wt, b)
               : at::linear(in, wt, b);
  };
  // A matrix product and, when the matrix has an adapter, its low-rank path beside it.
  const auto adapted = [&](const at::Tensor& in, const at::Tensor& wt, const at::Tensor& b,
                           const LoraPair& l) {
    at::Tensor out = linear(in, wt, b);
    if (l.defined()) out = out + at::linear(at::linear(in, l.a), l.b) * w.lora_scale;
    return out;
  };
  const auto& v = config_.vit;
  const int64_t n = x.size(0), t = x.size(1), d = x.size(2);  ///< batch, tokens, width
  const int64_t hd = v.head_dim();                ///< width per head
  const int64_t h = w.qkv_w.size(0) / (3 * hd);   ///< heads (fewer when pruned)
  at::Tensor y = at::layer_norm(x, {d}, w.ln1_w, w.ln1_b, v.layer_norm_eps);
  // unbind, not three selects: the backward of a select writes a zero tensor the size of
  // all three and adds them up, which cost a training step 30% (a stack is one copy).
  const auto qkv = adapted(y, w.qkv_w, w.qkv_b, w.qkv_lora)
                       .view({n, t, 3, h, hd})
                       .permute({2, 0, 3, 1, 4})
                       .unbind(0);
  const at::Tensor q = qkv[0] * (1.0 / std::sqrt(static_cast<double>(hd)));
  at::Tensor scores = at::matmul(q, qkv[1].transpose(-2, -1));
  if (size.defined()) scores = scores + size.log().view({n, 1, 1, t}).to(scores.scalar_type());
  at::Tensor attn = at::softmax(scores, -1);
  if (training && v.attention_dropout > 0) attn = at::dropout(attn, v.attention_dropout, true);
  y = at::matmul(attn, qkv[2]).transpose(1, 2).reshape({n, t, h * hd});
  y = adapted(y, w.proj_w, w.proj_b, w.proj_lora);
  if (training && config_.dropout > 0) y = at::dropout(y, config_.dropout, true);
  at::Tensor out = x + drop_path(y, dp, training);
  if (merge > 0) {
    // The metric is a statistic of the keys: no gradient flows through the pairing.
    std::tie(out, size) = tome::merge(out, size, qkv[1].detach().mean(1), merge);
  }
  y = at::layer_norm(out, {d}, w.ln2_w, w.ln2_b, v.layer_norm_eps);
  y = activation(adapted(y, w.fc1_w, w.fc1_b, w.fc1_lora), v.hidden_act);
  if (training && config_.dropout > 0) y = at::dropout(y, config_.dropout, true);
  y = adapted(y, w.fc2_w, w.fc2_b, w.fc2_lora);
  if (training && config_.dropout > 0) y = at::dropout(y, config_.dropout, true);
  return out + drop_path(y, dp, training);
}

at::Tensor ViTImpl::embed(const at::Tensor& images, const Weights& w, bool training) const {
  const auto& c = config_;
  VT_CHECK(images.dim() == 4 && images.size(1) == c.in_channels && images.size(2) == c.image_size &&
               images.size(3) == c.image_size,
           c.arch, ": expected images of shape (N, ", c.in_channels, ", ", c.image_size, ", ",
           c.image_size, "), got ", images.sizes(),
           "; preprocess with the model's transform or re-import with --image-size");
  const int64_t p = c.vit.patch_size;
  at::Tensor x = at::conv2d(images.to(w.patch_w.scalar_type()), w.patch_w, w.patch_b, {p, p});
  x = x.flatten(2).transpose(1, 2);
  x = at::cat({w.cls.expand({x.size(0), -1, -1}), x}, 1) + w.pos;
  if (training && c.dropout > 0) x = at::dropout(x, c.dropout, true);
  return x;
}

at::Tensor ViTImpl::features(const at::Tensor& images, const Weights& w, bool training,
                             bool onednn,
                             const std::function<at::Tensor(const at::Tensor&)>& before_last_block)
    const {
  const auto& c = config_;
  at::Tensor x = embed(images, w, training);
  const int64_t r = before_last_block ? 0 : c.vit.tome_r;
  at::Tensor size;
  for (size_t i = 0; i < w.blocks.size(); ++i) {
    if (before_last_block && i + 1 == w.blocks.size()) x = before_last_block(x);
    x = block(x, w.blocks[i], blocks_[i]->drop_path_rate, training, onednn,
              tome_merges(x.size(1), r), size);
  }
  x = at::layer_norm(x, {c.vit.hidden_size}, w.ln_w, w.ln_b, c.vit.layer_norm_eps);
  return x.select(1, 0);
}

at::Tensor ViTImpl::forward_features(const at::Tensor& images) {
  return features(images, trained_weights(), is_training(), /*onednn=*/false);
}

at::Tensor ViTImpl::forward_visible(const at::Tensor& images, const at::Tensor& keep) {
  const auto& c = config_;
  const Weights w = trained_weights();
  // Position embeddings join every patch before the masking, so the kept ones know where
  // they sit (as MAE does).
  at::Tensor x = embed(images, w, is_training());
  const int64_t n = x.size(0), patches = x.size(1) - 1, d = x.size(2);
  VT_CHECK(keep.dim() == 2 && keep.size(0) == n && keep.size(1) >= 1 && keep.size(1) <= patches &&
               keep.scalar_type() == at::kLong,
           "expected (", n, ", K) int64 patch indices with 1 <= K <= ", patches, ", got ",
           keep.sizes(), " ", keep.scalar_type());
  const at::Tensor visible =
      x.narrow(1, 1, patches).gather(1, keep.unsqueeze(-1).expand({n, keep.size(1), d}));
  x = at::cat({x.narrow(1, 0, 1), visible}, 1);
  at::Tensor size;  // no Token Merging: the decoder needs every kept token back
  for (size_t i = 0; i < w.blocks.size(); ++i) {
    x = block(x, w.blocks[i], blocks_[i]->drop_path_rate, is_training(), /*onednn=*/false, 0,
              size);
  }
  return at::layer_norm(x, {c.vit.hidden_size}, w.ln_w, w.ln_b, c.vit.layer_norm_eps);
}

std::pair<at::Tensor, at::Tensor> ViTImpl::forward_with_feature_map(const at::Tensor& images) {
  const int64_t grid = config_.image_size / config_.vit.patch_size;
  at::Tensor map;
  // Patch tokens (N, 1 + g*g, D) as a grid (N, D, g, g), put back in the sequence so that
  // the last block computes from the grid itself (its gradient is then defined).
  const at::Tensor f = features(
      images, trained_weights(), is_training(), /*onednn=*/false, [&](const at::Tensor& x) {
        map = x.narrow(1, 1, grid * grid).transpose(1, 2).reshape({x.size(0), x.size(2), grid, grid});
        return at::cat({x.narrow(1, 0, 1), map.flatten(2).transpose(1, 2)}, 1);
      });
  return {map, forward_head(f)};
}

at::Tensor ViTImpl::forward_head(const at::Tensor& features) {
  if (!head_) return features;
  at::Tensor x = features;
  if (config_.dropout > 0) x = at::dropout(x, config_.dropout, is_training());
  return head_(x);
}

onednn::ViTWeights ViTImpl::fused_weights() const {
  const Weights w = trained_weights();
  onednn::ViTWeights fw;
  fw.head_dim = config_.vit.head_dim();
  fw.tome_r = config_.vit.tome_r;
  fw.eps = config_.vit.layer_norm_eps;
  fw.hidden_act = config_.vit.hidden_act;
  // Adapters are merged: no extra products at inference.
  for (const auto& b : w.blocks) {
    const double s = b.lora_scale;
    fw.blocks.push_back({b.ln1_w, b.ln1_b, merged(b.qkv_w, b.qkv_lora, s), b.qkv_b,
                         merged(b.proj_w, b.proj_lora, s), b.proj_b, b.ln2_w, b.ln2_b,
                         merged(b.fc1_w, b.fc1_lora, s), b.fc1_b, merged(b.fc2_w, b.fc2_lora, s),
                         b.fc2_b});
  }
  return fw;
}

std::vector<float> ViTImpl::calibrate_int8(const std::function<at::Tensor()>& next_batch) {
  eval();
  c10::InferenceMode guard;
  const Weights w = trained_weights();
  const onednn::ViTEncoder encoder(fused_weights(), at::kFloat);
  std::vector<double> maxima;  ///< each point's largest magnitude a batch, times its images
  int64_t images = 0;
  for (at::Tensor batch = next_batch(); batch.defined(); batch = next_batch()) {
    std::vector<double> of_batch;
    encoder.forward_recording(embed(batch.to(at::kFloat), w, /*training=*/false), of_batch);
    maxima.resize(of_batch.size(), 0.0);
    for (size_t i = 0; i < of_batch.size(); ++i) {
      maxima[i] += of_batch[i] * static_cast<double>(batch.size(0));
    }
    images += batch.size(0);
  }
  VT_CHECK(images > 0, "no calibration images: int8 scales need a sample of the images the "
                       "model will see");
  std::vector<float> scales;
  for (const double m : maxima) {
    scales.push_back(onednn::int8_scale(m / static_cast<double>(images), /*is_signed=*/true));
  }
  return scales;
}

void ViTImpl::prepare_inference(at::ScalarType dtype, bool fused) {
  VT_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kQUInt8,
           "inference precision must be fp32, bf16 or int8");
  const bool int8 = dtype == at::kQUInt8;
  if (int8) check_int8_ready(fused);
  if (int8) dtype = at::kFloat;  // around the int8 products everything is fp32
  eval();
  const Weights w = trained_weights();
  Weights out{maybe(w.patch_w, dtype), maybe(w.patch_b, dtype), maybe(w.cls, dtype),
              maybe(w.pos, dtype),     maybe(w.ln_w, dtype),    maybe(w.ln_b, dtype),
              // The head in fp32: a bf16 head rounds away the small margins that decide top-1.
              maybe(w.head_w, at::kFloat),  maybe(w.head_b, at::kFloat),  {}};
  // The blocks with their adapters merged (no extra products at inference): packed by the
  // fused encoder, or converted for libtorch's operators.
  onednn::ViTWeights blocks = fused_weights();
  fused_.reset();
  if (int8) {
    fused_ = std::make_shared<const onednn::ViTEncoder>(std::move(blocks), config_.int8_scales);
  } else if (fused) {
    fused_ = std::make_shared<const onednn::ViTEncoder>(std::move(blocks), dtype);
  } else {
    for (const auto& b : blocks.blocks) {
      out.blocks.push_back({maybe(b.ln1_w, dtype), maybe(b.ln1_b, dtype), maybe(b.qkv_w, dtype),
                            maybe(b.qkv_b, dtype), maybe(b.proj_w, dtype), maybe(b.proj_b, dtype),
                            maybe(b.ln2_w, dtype), maybe(b.ln2_b, dtype), maybe(b.fc1_w, dtype),
                            maybe(b.fc1_b, dtype), maybe(b.fc2_w, dtype), maybe(b.fc2_b, dtype),
                            {}, {}, {}, {}, 0.0});
    }
  }
  inference_ = std::move(out);
  inference_dtype_ = dtype;
  prepared_ = true;
}

at::Tensor ViTImpl::forward_features_inference(const at::Tensor& images) {
  if (!prepared_) return forward_features(images);
  if (fused_) {
    const at::Tensor x = fused_->forward(embed(images, inference_, /*training=*/false));
    // Only the class token goes on: the final norm of that one row.
    return at::layer_norm(x.select(1, 0).to(at::kFloat), {config_.vit.hidden_size},
                          inference_.ln_w.to(at::kFloat), inference_.ln_b.to(at::kFloat),
                          config_.vit.layer_norm_eps);
  }
  const bool onednn = inference_dtype_ == at::kFloat && at::hasMKLDNN();
  return features(images, inference_, /*training=*/false, onednn);
}

at::Tensor ViTImpl::forward_inference(const at::Tensor& images) {
  if (!prepared_) return forward(images);
  const at::Tensor f = forward_features_inference(images);
  if (!head_) return f.to(at::kFloat);
  return at::linear(f.to(at::kFloat), inference_.head_w, inference_.head_b);
}

}  // namespace vitrine::models
