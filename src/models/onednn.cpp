#include "onednn.h"

#include "tome.h"
#include "vitrine/core/error.h"
#include "vitrine/models/config.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#ifdef VITRINE_HAVE_DNNL
#include <oneapi/dnnl/dnnl.hpp>
#endif

#include <chrono>
#include <cmath>
#include <map>
#include <mutex>
#include <optional>
#include <tuple>
#include <unordered_map>
#include <utility>

namespace vitrine::models::onednn {

size_t ResNet::calibration_points(const ResNetWeights& w) {
  size_t n = 2;  // the images, the stem's output
  for (const auto& b : w.blocks) n += b.convs.size() + (b.down.weight.defined() ? 1 : 0);
  return n;
}

float int8_scale(double range, bool is_signed) {
  return static_cast<float>(std::max(range, 1e-8) / (is_signed ? 127.0 : 255.0));
}

ResNetCalibrator::ResNetCalibrator(ResNetWeights weights) : weights_(std::move(weights)) {
  // The images and the shortcut convolutions' outputs are signed; the rest follow a ReLU.
  is_signed_ = {true, false};
  for (const auto& b : weights_.blocks) {
    for (size_t i = 0; i + 1 < b.convs.size(); ++i) is_signed_.push_back(false);
    if (b.down.weight.defined()) is_signed_.push_back(true);
    is_signed_.push_back(false);
  }
  max_sum_.assign(is_signed_.size(), 0.0);
}

void ResNetCalibrator::record(size_t point, const at::Tensor& t) {
  // Weighted by the batch's images: a short last batch counts for what it holds.
  max_sum_.at(point) += t.abs().max().item<double>() * static_cast<double>(t.size(0));
}

void ResNetCalibrator::observe(const at::Tensor& images) {
  VT_CHECK(images.dim() == 4 && images.size(0) > 0,
           "expected calibration images (N, C, H, W), got ", images.sizes());
  c10::InferenceMode guard;
  const auto conv = [](const Conv& c, const at::Tensor& x) {
    return at::conv2d(x, c.weight, c.bias, {c.stride, c.stride}, {c.padding, c.padding});
  };
  size_t k = 0;
  const at::Tensor x = images.to(at::kFloat);
  record(k++, x);
  at::Tensor y = conv(weights_.stem, x).relu_();
  record(k++, y);  // max pooling keeps the range
  if (weights_.stem_pool) y = at::max_pool2d(y, {3, 3}, {2, 2}, {1, 1});
  for (const auto& b : weights_.blocks) {
    at::Tensor t = y;
    for (size_t i = 0; i + 1 < b.convs.size(); ++i) {
      t = conv(b.convs[i], t).relu_();
      record(k++, t);
    }
    at::Tensor shortcut = y;
    if (b.down.weight.defined()) {
      shortcut = conv(b.down, y);
      record(k++, shortcut);
    }
    y = (conv(b.convs.back(), t) + shortcut).relu_();
    record(k++, y);
  }
  ++batches_;
  images_ += images.size(0);
}

std::vector<float> ResNetCalibrator::scales() const {
  VT_CHECK(batches_ > 0, "no calibration images observed");
  std::vector<float> out;
  for (size_t i = 0; i < max_sum_.size(); ++i) {
    out.push_back(int8_scale(max_sum_[i] / static_cast<double>(images_), is_signed_[i]));
  }
  return out;
}

#ifndef VITRINE_HAVE_DNNL

namespace {
[[noreturn]] void no_fused_path() {
  VT_FAIL(
      "this build has no fused inference path (which int8 needs): install libdnnl-dev and "
      "rebuild");
}
}  // namespace

bool available() {
  return false;
}
bool bf16_available() {
  return false;
}
double matmul_peak_gflops(const std::string&, int64_t, int) {
  no_fused_path();
}
struct ResNet::Impl {};
struct ViTEncoder::Impl {};
ResNet::ResNet(ResNetWeights, at::ScalarType) {
  no_fused_path();
}
ResNet::ResNet(ResNetWeights, const std::vector<float>&) {
  no_fused_path();
}
at::Tensor ResNet::features(const at::Tensor&) const {
  no_fused_path();
}
ViTEncoder::ViTEncoder(ViTWeights, at::ScalarType) {
  no_fused_path();
}
ViTEncoder::ViTEncoder(ViTWeights, const std::vector<float>&) {
  no_fused_path();
}
at::Tensor ViTEncoder::forward(const at::Tensor&) const {
  no_fused_path();
}
at::Tensor ViTEncoder::forward_recording(const at::Tensor&, std::vector<double>&) const {
  no_fused_path();
}

#else

namespace {

using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;
using Args = std::unordered_map<int, memory>;

const dnnl::engine& cpu() {
  static const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

dt to_dnnl(at::ScalarType type) {
  VT_CHECK(type == at::kFloat || type == at::kBFloat16, "the fused path runs in fp32 or bf16, not ",
           c10::toString(type));
  return type == at::kFloat ? dt::f32 : dt::bf16;
}

/// A weight matrix or kernel (fp32, or s8 for int8) kept in its plain layout and reordered
/// once into each layout a primitive asks for (all shapes of one model usually share one).
class Packed {
 public:
  Packed() = default;
  /// `plain` describes `source`'s own layout (oihw for kernels, ba for (out, in) matrices).
  Packed(const at::Tensor& source, const memory::desc& plain) : state_(std::make_shared<State>()) {
    state_->source = source.contiguous();
    state_->plain = plain;
  }

  memory get(const memory::desc& want) const {
    std::lock_guard<std::mutex> lock(state_->mutex);
    for (const auto& [md, mem] : state_->packed) {
      if (md == want) return mem;
    }
    memory src(state_->plain, cpu(), state_->source.data_ptr());
    memory dst(want, cpu());
    dnnl::stream s(cpu());
    dnnl::reorder(src, dst).execute(s, src, dst);
    s.wait();
    state_->packed.emplace_back(want, dst);
    return dst;
  }

 private:
  struct State {
    at::Tensor source;
    memory::desc plain;
    std::mutex mutex;
    std::vector<std::pair<memory::desc, memory> > packed;
  };
  std::shared_ptr<State> state_;
};

/// An fp32 vector (bias, norm scale or shift) as a oneDNN memory over the tensor's data.
struct Vector {
  at::Tensor data;
  memory mem;
  Vector() = default;
  explicit Vector(const at::Tensor& t, bool as_row = false)
      : data(t.detach().to(at::kFloat).contiguous()) {
    const auto n = static_cast<memory::dim>(data.numel());
    mem = as_row ? memory({{1, n}, dt::f32, tag::ab}, cpu(), data.data_ptr())
                 : memory({{n}, dt::f32, tag::x}, cpu(), data.data_ptr());
  }
};

/// Bytes for one activation of layout `md`, owned by a tensor (libtorch's allocator).
struct Buffer {
  at::Tensor bytes;
  memory mem;
  explicit Buffer(const memory::desc& md)
      : bytes(at::empty({static_cast<int64_t>(md.get_size())}, at::kByte)),
        mem(md, cpu(), bytes.data_ptr()) {}
};

dnnl::primitive_attr attr_with(const dnnl::post_ops& ops) {
  dnnl::primitive_attr attr;
  attr.set_post_ops(ops);
  // Each call brings its own scratchpad, so calls can run concurrently.
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

dnnl::post_ops sum_relu(bool sum_first, bool relu) {
  dnnl::post_ops ops;
  if (sum_first) ops.append_sum(1.f);
  if (relu) ops.append_eltwise(1.f, dnnl::algorithm::eltwise_relu, 0.f, 0.f);
  return ops;
}

/// A primitive and the memories it was made for.
struct Step {
  dnnl::primitive prim;
  memory::desc src, dst, scratch;
  memory weights, bias;
};

struct ConvLayer {
  Packed weights;
  Vector bias;
  int64_t out = 0, in = 0, kernel = 0, stride = 1, padding = 0;
  // int8 only: per output channel src_scale * weight_scale / dst_scale, and the scale of
  // the shortcut summed into the output relative to the output's.
  std::vector<float> out_scales;
  float sum_scale = 1;
};

memory::dims conv_out_dims(const ConvLayer& l, const memory::dims& d) {
  return {d[0], l.out, (d[2] + 2 * l.padding - l.kernel) / l.stride + 1,
          (d[3] + 2 * l.padding - l.kernel) / l.stride + 1};
}

std::vector<float> floats(const at::Tensor& t) {
  const at::Tensor c = t.to(at::kFloat).contiguous();
  return {c.data_ptr<float>(), c.data_ptr<float>() + c.numel()};
}

/// Symmetric int8 per row (output channel or column) of `w`: the s8 values and each
/// row's scale (largest |w| / 127).
std::pair<at::Tensor, at::Tensor> quantise_rows(const at::Tensor& w) {
  const at::Tensor wf = w.detach().to(at::kFloat);
  std::vector<int64_t> rest;
  for (int64_t i = 1; i < wf.dim(); ++i) rest.push_back(i);
  const at::Tensor scale = wf.abs().amax(rest).clamp_min(1e-12) / 127.0;
  std::vector<int64_t> shape(static_cast<size_t>(wf.dim()), 1);
  shape[0] = -1;
  return {(wf / scale.view(shape)).round().clamp(-127, 127).to(at::kChar), scale};
}

/// A convolution's weights as given (fp32), its shape and geometry.
ConvLayer conv_layer(const Conv& c) {
  ConvLayer l;
  l.out = c.weight.size(0);
  l.in = c.weight.size(1);
  l.kernel = c.weight.size(2);
  l.stride = c.stride;
  l.padding = c.padding;
  l.weights = Packed(c.weight.detach().to(at::kFloat),
                     memory::desc({l.out, l.in, l.kernel, l.kernel}, dt::f32, tag::oihw));
  l.bias = Vector(c.bias);
  return l;
}

/// An int8 convolution: weights quantised symmetrically per output channel, the bias in
/// accumulator units (oneDNN adds it before the output scale).
ConvLayer conv_layer_int8(const Conv& c, float src_scale, float dst_scale) {
  ConvLayer l = conv_layer(c);
  const auto [q, ws] = quantise_rows(c.weight);
  l.weights = Packed(q, memory::desc({l.out, l.in, l.kernel, l.kernel}, dt::s8, tag::oihw));
  l.bias = Vector(c.bias.detach().to(at::kFloat) / (ws * src_scale));
  l.out_scales = floats(ws * (src_scale / dst_scale));
  return l;
}

/// A convolution from `src` to `dst` (either may be `any`: the kernel's preferred layout)
/// with weights of type `weights`.
Step conv_step(const ConvLayer& l, const memory::desc& src, const memory::desc& dst, dt weights,
               const dnnl::primitive_attr& attr) {
  const dnnl::convolution_forward::desc desc(
      dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct, src,
      memory::desc({l.out, l.in, l.kernel, l.kernel}, weights, tag::any), l.bias.mem.get_desc(),
      dst, {l.stride, l.stride}, {l.padding, l.padding}, {l.padding, l.padding});
  const dnnl::convolution_forward::primitive_desc pd(desc, attr, cpu());
  return {dnnl::convolution_forward(pd),    pd.src_desc(), pd.dst_desc(), pd.scratchpad_desc(),
          l.weights.get(pd.weights_desc()), l.bias.mem};
}

void run(const Step& s, dnnl::stream& stream, const memory& src, const memory& dst,
         const memory& scratch) {
  Args args{{DNNL_ARG_SRC, src}, {DNNL_ARG_DST, dst}, {DNNL_ARG_SCRATCHPAD, scratch}};
  if (s.weights) args.emplace(DNNL_ARG_WEIGHTS, s.weights);
  if (s.bias) args.emplace(DNNL_ARG_BIAS, s.bias);
  s.prim.execute(stream, args);
}

size_t scratch_bytes(const std::vector<const Step*>& steps) {
  size_t most = 0;
  for (const Step* s : steps) most = std::max(most, s->scratch.get_size());
  return most;
}

}  // namespace

bool available() {
  return true;
}

bool bf16_available() {
  static const bool ok = [] {
    try {  // a bf16 product this CPU has no kernel for cannot be built
      const dnnl::matmul::primitive_desc pd(
          dnnl::matmul::desc(memory::desc({2, 2}, dt::bf16, tag::ab),
                             memory::desc({2, 2}, dt::bf16, tag::ab),
                             memory::desc({2, 2}, dt::bf16, tag::ab)),
          cpu());
      return true;
    } catch (const dnnl::error&) {
      return false;
    }
  }();
  return ok;
}

double matmul_peak_gflops(const std::string& precision, int64_t size, int iters) {
  dt a = dt::f32, b = dt::f32, c = dt::f32;
  if (precision == "bf16") {
    a = b = dt::bf16;
  } else if (precision == "int8") {
    a = dt::u8;
    b = dt::s8;
    c = dt::s32;
  } else {
    VT_CHECK(precision == "fp32", "no peak for precision '", precision,
             "'; use fp32, bf16 or int8");
  }
  const memory::dim n = size;
  const dnnl::matmul::primitive_desc pd(
      dnnl::matmul::desc(memory::desc({n, n}, a, tag::ab), memory::desc({n, n}, b, tag::any),
                         memory::desc({n, n}, c, tag::ab)),
      attr_with({}), cpu());
  const dnnl::matmul prim(pd);
  const Buffer src(pd.src_desc()), wei(pd.weights_desc()), dst(pd.dst_desc()),
      scratch(pd.scratchpad_desc());
  src.bytes.zero_();
  wei.bytes.zero_();
  dnnl::stream stream(cpu());
  const auto once = [&] {
    prim.execute(stream, {{DNNL_ARG_SRC, src.mem},
                          {DNNL_ARG_WEIGHTS, wei.mem},
                          {DNNL_ARG_DST, dst.mem},
                          {DNNL_ARG_SCRATCHPAD, scratch.mem}});
    stream.wait();
  };
  once();
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; ++i) once();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return 2.0 * static_cast<double>(n * n * n) * iters / s / 1e9;
}

// ---------------------------------------------------------------- ResNet

struct ResNet::Impl {
  struct Block {
    std::vector<ConvLayer> convs;
    bool has_down = false;
    ConvLayer down;
  };
  struct BlockPlan {
    std::vector<Step> convs;
    Step down;  ///< prim undefined without a shortcut convolution
  };
  struct Plan {
    dnnl::reorder in, out;  ///< the caller's fp32 NCHW images in; the last map out (fp32)
    memory::desc input, output;
    Step stem, pool;
    std::vector<BlockPlan> blocks;
    size_t scratch = 0;
  };

  dt type;  ///< f32, bf16, or u8 for int8
  bool int8 = false;
  float input_scale = 1, output_scale = 1;  ///< int8: the images' and the last map's
  ConvLayer stem;
  bool stem_pool = true;
  std::vector<Block> blocks;
  std::mutex mutex;
  std::map<std::vector<int64_t>, std::shared_ptr<const Plan> > plans;

  std::shared_ptr<const Plan> plan_for(const at::IntArrayRef shape) {
    std::lock_guard<std::mutex> lock(mutex);
    auto& slot = plans[shape.vec()];
    if (!slot) slot = make_plan(shape);
    return slot;
  }

  Step pool_step(const memory::desc& x) const {
    const auto d = x.dims();
    const memory::dims out{d[0], d[1], (d[2] + 2 - 3) / 2 + 1, (d[3] + 2 - 3) / 2 + 1};
    const dnnl::pooling_forward::desc desc(
        dnnl::prop_kind::forward_inference, dnnl::algorithm::pooling_max, x,
        memory::desc(out, x.data_type(), int8 ? tag::nhwc : tag::any), {2, 2}, {3, 3}, {1, 1},
        {1, 1});
    const dnnl::pooling_forward::primitive_desc pd(desc, attr_with({}), cpu());
    return {dnnl::pooling_forward(pd), pd.src_desc(), pd.dst_desc(), pd.scratchpad_desc(), {}, {}};
  }

  /// What a convolution does after its product: an inner one (the stem included) applies
  /// a ReLU; a block's last one adds the shortcut already in its output buffer, then the
  /// ReLU; a shortcut (projection) convolution nothing.
  enum class Role { kInner, kLast, kShortcut };

  /// fp32 and bf16: layouts as the kernels prefer them, except a fixed `out` (a block's
  /// input for its last convolution when the shortcut is the identity, or the last
  /// convolution's output layout for the shortcut convolution). int8: u8 activations after
  /// each ReLU, s8 for the images and the shortcut convolutions' outputs, all NHWC.
  Step conv(const ConvLayer& l, const memory::desc& src, Role role, bool projected,
            const memory::desc* out) const {
    if (!int8) {
      const memory::desc dst =
          out ? *out : memory::desc(conv_out_dims(l, src.dims()), type, tag::any);
      return conv_step(l, src, dst, type,
                       attr_with(sum_relu(role == Role::kLast, role != Role::kShortcut)));
    }
    dnnl::post_ops ops;
    // The shortcut, in its own type and scale, read from the output buffer.
    if (role == Role::kLast) ops.append_sum(l.sum_scale, 0, projected ? dt::s8 : dt::u8);
    if (role != Role::kShortcut) ops.append_eltwise(1.f, dnnl::algorithm::eltwise_relu, 0.f, 0.f);
    const memory::desc dst(out ? out->dims() : conv_out_dims(l, src.dims()),
                           role == Role::kShortcut ? dt::s8 : dt::u8, tag::nhwc);
    dnnl::primitive_attr attr = attr_with(ops);
    attr.set_output_scales(1 << 1, l.out_scales);  // per output channel
    return conv_step(l, src, dst, dt::s8, attr);
  }

  void plan_steps(Plan& p, const at::IntArrayRef s) const {
    const memory::dims images{s[0], s[1], s[2], s[3]};
    p.stem = conv(
        stem, int8 ? memory::desc(images, dt::s8, tag::nhwc) : memory::desc(images, type, tag::any),
        Role::kInner, false, nullptr);
    memory::desc x = p.stem.dst;
    if (stem_pool) {
      p.pool = pool_step(x);
      x = p.pool.dst;
    }
    for (const Block& b : blocks) {
      BlockPlan bp;
      memory::desc y = x;
      for (size_t i = 0; i < b.convs.size(); ++i) {
        const bool last = i + 1 == b.convs.size();
        bp.convs.push_back(conv(b.convs[i], y, last ? Role::kLast : Role::kInner, b.has_down,
                                last && !b.has_down ? &x : nullptr));
        y = bp.convs.back().dst;
      }
      if (b.has_down) bp.down = conv(b.down, x, Role::kShortcut, true, &y);
      x = y;
      p.blocks.push_back(std::move(bp));
    }
  }

  std::shared_ptr<const Plan> make_plan(const at::IntArrayRef s) const {
    auto p = std::make_shared<Plan>();
    plan_steps(*p, s);
    std::vector<const Step*> all{&p->stem};
    if (stem_pool) all.push_back(&p->pool);
    for (const auto& bp : p->blocks) {
      for (const auto& c : bp.convs) all.push_back(&c);
      if (bp.down.prim) all.push_back(&bp.down);
    }
    p->scratch = scratch_bytes(all);
    const memory::desc last = p->blocks.empty() ? (stem_pool ? p->pool.dst : p->stem.dst)
                                                : p->blocks.back().convs.back().dst;
    p->input = memory::desc({s[0], s[1], s[2], s[3]}, dt::f32, tag::nchw);
    p->output = memory::desc(last.dims(), dt::f32, tag::nchw);
    dnnl::primitive_attr in_attr, out_attr;
    if (int8) {
      in_attr.set_output_scales(0, {1.f / input_scale});
      out_attr.set_output_scales(0, {output_scale});
    }
    p->in =
        dnnl::reorder(dnnl::reorder::primitive_desc(cpu(), p->input, cpu(), p->stem.src, in_attr));
    p->out = dnnl::reorder(dnnl::reorder::primitive_desc(cpu(), last, cpu(), p->output, out_attr));
    return p;
  }

  at::Tensor features(const at::Tensor& images) {
    const at::Tensor in = images.to(at::kFloat).contiguous();
    const auto plan = plan_for(in.sizes());
    dnnl::stream stream(cpu());
    const Buffer scratch(memory::desc({static_cast<memory::dim>(plan->scratch)}, dt::u8, tag::x));
    Buffer x(plan->stem.src);
    memory user(plan->input, cpu(), in.data_ptr());
    plan->in.execute(stream, user, x.mem);
    Buffer y(plan->stem.dst);
    run(plan->stem, stream, x.mem, y.mem, scratch.mem);
    if (stem_pool) {
      Buffer z(plan->pool.dst);
      run(plan->pool, stream, y.mem, z.mem, scratch.mem);
      y = std::move(z);
    }
    Buffer cur = std::move(y);
    for (const auto& bp : plan->blocks) {
      // The shortcut: the block's input itself, or its projection, in the output buffer.
      std::optional<Buffer> shortcut;
      if (bp.down.prim) {
        shortcut.emplace(bp.down.dst);
        run(bp.down, stream, cur.mem, shortcut->mem, scratch.mem);
      }
      Buffer t(bp.convs[0].dst);
      run(bp.convs[0], stream, cur.mem, t.mem, scratch.mem);
      for (size_t i = 1; i + 1 < bp.convs.size(); ++i) {
        Buffer u(bp.convs[i].dst);
        run(bp.convs[i], stream, t.mem, u.mem, scratch.mem);
        t = std::move(u);
      }
      Buffer& out = shortcut ? *shortcut : cur;
      // The output buffer holds the shortcut (s8 after a projection); the convolution
      // writes its own u8 result over it.
      const memory dst(bp.convs.back().dst, cpu(), out.bytes.data_ptr());
      run(bp.convs.back(), stream, t.mem, dst, scratch.mem);
      if (shortcut) cur = std::move(*shortcut);
      cur.mem = dst;
    }
    const auto d = plan->output.dims();
    at::Tensor map = at::empty({d[0], d[1], d[2], d[3]}, at::kFloat);
    memory out(plan->output, cpu(), map.data_ptr());
    plan->out.execute(stream, cur.mem, out);
    stream.wait();
    return map.mean({2, 3});
  }
};

namespace {

void check_block(const ResNetBlock& b) {
  VT_CHECK(b.convs.size() >= 2, "a residual block has at least two convolutions");
}

void check_int8_scales(const std::vector<float>& scales, size_t needed) {
  VT_CHECK(scales.size() == needed, "the int8 calibration has ", scales.size(),
           " activation scales where this network needs ", needed,
           "; calibrate again (vitrine optimize --int8)");
  for (const float s : scales) {
    VT_CHECK(std::isfinite(s) && s > 0, "an int8 activation scale is ", s,
             "; calibrate again (vitrine optimize --int8)");
  }
}

}  // namespace

ResNet::ResNet(ResNetWeights w, at::ScalarType dtype) : impl_(std::make_shared<Impl>()) {
  impl_->type = to_dnnl(dtype);
  impl_->stem = conv_layer(w.stem);
  impl_->stem_pool = w.stem_pool;
  for (const auto& b : w.blocks) {
    check_block(b);
    Impl::Block block;
    for (const auto& c : b.convs) block.convs.push_back(conv_layer(c));
    block.has_down = b.down.weight.defined();
    if (block.has_down) block.down = conv_layer(b.down);
    impl_->blocks.push_back(std::move(block));
  }
}

ResNet::ResNet(ResNetWeights w, const std::vector<float>& scales)
    : impl_(std::make_shared<Impl>()) {
  check_int8_scales(scales, calibration_points(w));
  impl_->type = dt::u8;
  impl_->int8 = true;
  size_t k = 0;
  impl_->input_scale = scales[k++];
  float in = scales[k++];
  impl_->stem = conv_layer_int8(w.stem, impl_->input_scale, in);
  impl_->stem_pool = w.stem_pool;
  for (const auto& b : w.blocks) {
    check_block(b);
    Impl::Block block;
    float prev = in;
    for (size_t i = 0; i + 1 < b.convs.size(); ++i) {
      const float out = scales[k++];
      block.convs.push_back(conv_layer_int8(b.convs[i], prev, out));
      prev = out;
    }
    block.has_down = b.down.weight.defined();
    const float shortcut = block.has_down ? scales[k++] : in;
    const float out = scales[k++];
    block.convs.push_back(conv_layer_int8(b.convs.back(), prev, out));
    block.convs.back().sum_scale = shortcut / out;
    if (block.has_down) block.down = conv_layer_int8(b.down, in, shortcut);
    impl_->blocks.push_back(std::move(block));
    in = out;
  }
  impl_->output_scale = in;
}

at::Tensor ResNet::features(const at::Tensor& images) const {
  VT_CHECK(images.dim() == 4, "expected images (N, C, H, W), got ", images.sizes());
  return impl_->features(images);
}

// ---------------------------------------------------------------- ViT encoder

namespace {

struct Linear {
  Packed weights;
  Vector bias;
  int64_t out = 0, in = 0;
  /// int8 only: per output column src_scale * weight_scale (the product in real units).
  std::vector<float> out_scales;
};

Linear linear_layer(const at::Tensor& w, const at::Tensor& b) {
  Linear l;
  l.out = w.size(0);
  l.in = w.size(1);
  // (out, in) row-major is the (in, out) matrix the product wants, stored transposed.
  l.weights = Packed(w.detach().to(at::kFloat), memory::desc({l.in, l.out}, dt::f32, tag::ba));
  l.bias = b.defined() ? Vector(b, /*as_row=*/true) : Vector(at::zeros({l.out}), true);
  return l;
}

/// An int8 matrix: weights symmetric per output column, the bias in accumulator units.
Linear linear_layer_int8(const at::Tensor& w, const at::Tensor& b, float src_scale) {
  Linear l = linear_layer(w, b);
  const auto [q, ws] = quantise_rows(w);
  l.weights = Packed(q, memory::desc({l.in, l.out}, dt::s8, tag::ba));
  l.bias = Vector(l.bias.data.view({-1}) / (ws * src_scale), /*as_row=*/true);
  l.out_scales = floats(ws * src_scale);
  return l;
}

struct Matmul {
  dnnl::matmul prim;
  memory::desc src, weights, dst, scratch;
};

/// rows x in (`src` type) times the layer's matrix (`weights` type, packed as the kernel
/// wants) plus bias -> rows x out (`dst` type).
Matmul matmul_step(int64_t rows, const Linear& l, dt src, dt weights, dt dst,
                   const dnnl::primitive_attr& attr) {
  const dnnl::matmul::desc desc(memory::desc({rows, l.in}, src, tag::ab),
                                memory::desc({l.in, l.out}, weights, tag::any),
                                l.bias.mem.get_desc(), memory::desc({rows, l.out}, dst, tag::ab));
  const dnnl::matmul::primitive_desc pd(desc, attr, cpu());
  return {dnnl::matmul(pd), pd.src_desc(), pd.weights_desc(), pd.dst_desc(), pd.scratchpad_desc()};
}

Matmul matmul_step(int64_t rows, const Linear& l, dt type, const dnnl::post_ops& ops) {
  return matmul_step(rows, l, type, type, type, attr_with(ops));
}

/// An int8 product: s8 rows in, `dst` out (real units, or s8 when `ops` end by scaling
/// into the next product's units).
Matmul matmul_step_int8(int64_t rows, const Linear& l, dt dst, const dnnl::post_ops& ops) {
  dnnl::primitive_attr attr = attr_with(ops);
  attr.set_output_scales(1 << 1, l.out_scales);  // per output column
  return matmul_step(rows, l, dt::s8, dt::s8, dst, attr);
}

dnnl::post_ops activation_ops(const std::string& name) {
  dnnl::post_ops ops;
  if (name == "gelu") {
    ops.append_eltwise(1.f, dnnl::algorithm::eltwise_gelu_erf, 0.f, 0.f);
  } else if (name == "gelu_new" || name == "gelu_pytorch_tanh") {
    ops.append_eltwise(1.f, dnnl::algorithm::eltwise_gelu_tanh, 0.f, 0.f);
  } else if (name == "quick_gelu") {
    ops.append_eltwise(1.f, dnnl::algorithm::eltwise_swish, 1.702f, 0.f);
  } else if (name == "relu") {
    ops.append_eltwise(1.f, dnnl::algorithm::eltwise_relu, 0.f, 0.f);
  } else {
    VT_FAIL("the fused path has no activation '", name, "'");
  }
  return ops;
}

}  // namespace

struct ViTEncoder::Impl {
  struct Block {
    Vector ln1_w, ln1_b, ln2_w, ln2_b;
    Linear qkv, proj, fc1, fc2;
    /// int8: the scales of the products' inputs (ln_1's output, attention's output, ln_2's
    /// output, the activation's output).
    float s_ln1 = 1, s_attn = 1, s_ln2 = 1, s_hidden = 1;
    int64_t heads = 0;
  };
  /// One block's primitives for the token counts it sees: `t` into attention, `t_mlp` into
  /// the MLP (t - merges with Token Merging).
  struct Step {
    int64_t t = 0, t_mlp = 0, merges = 0;
    dnnl::layer_normalization_forward norm1, norm2;
    memory::desc rows1, rows2;  ///< the token stream before and after merging
    Matmul qkv, proj, fc1, fc2;
    dnnl::reorder q_ln1, q_attn, q_ln2;  ///< int8: fp32 rows into the products' s8 inputs
    // Attention per (image, head): scores = scale * Q K^T, softmax in place, P V written
    // straight into the (N, T, heads, head width) layout the out-projection reads.
    Matmul scores, mix;
    dnnl::softmax_forward softmax;
    memory::desc q, kt, p, out;
  };
  struct Plan {
    std::vector<Step> steps;
    size_t scratch = 0;
  };

  dt type;
  at::ScalarType dtype;
  bool int8 = false;  ///< int8 products; the token stream, norms and attention in fp32
  int64_t hd = 64;    ///< width per head
  int64_t tome_r = 0;
  double eps = 1e-6;
  std::string act;
  std::vector<Block> blocks;
  std::mutex mutex;
  std::map<std::pair<int64_t, int64_t>, std::shared_ptr<const Plan> > plans;

  /// What both kinds of encoder share: the shape and the non-product settings.
  void init(const ViTWeights& w, at::ScalarType activations) {
    VT_CHECK(!w.blocks.empty(), "a ViT encoder needs at least one block");
    VT_CHECK(w.head_dim > 0, "a ViT encoder needs a positive width per head");
    type = to_dnnl(activations);
    dtype = activations;
    hd = w.head_dim;
    tome_r = w.tome_r;
    eps = w.eps;
    activation_ops(w.hidden_act);  // fails early for an activation the path lacks
    act = w.hidden_act;
  }

  void add_block(Block b) {
    const int64_t inner = b.proj.in;
    VT_CHECK(inner % hd == 0 && b.qkv.out == 3 * inner && b.fc2.in == b.fc1.out, "ViT block ",
             blocks.size(), ": QKV (", b.qkv.out, " rows), projection (", inner,
             " columns) and MLP widths do not fit heads of width ", hd);
    b.heads = inner / hd;
    blocks.push_back(std::move(b));
  }

  std::shared_ptr<const Plan> plan_for(int64_t n, int64_t t) {
    std::lock_guard<std::mutex> lock(mutex);
    auto& slot = plans[{n, t}];
    if (!slot) slot = make_plan(n, t);
    return slot;
  }

  dnnl::layer_normalization_forward norm_step(const memory::desc& rows, size_t& scratch) const {
    const dnnl::layer_normalization_forward::desc ln(
        dnnl::prop_kind::forward_inference, rows, static_cast<float>(eps),
        dnnl::normalization_flags::use_scale | dnnl::normalization_flags::use_shift);
    const dnnl::layer_normalization_forward::primitive_desc pd(ln, attr_with({}), cpu());
    scratch = std::max(scratch, pd.scratchpad_desc().get_size());
    return dnnl::layer_normalization_forward(pd);
  }

  std::shared_ptr<const Plan> make_plan(int64_t n, int64_t t0) const {
    auto p = std::make_shared<Plan>();
    const int64_t d = blocks.front().qkv.in;
    // oneDNN's primitive cache makes the blocks that share shapes share their kernels.
    int64_t t = t0;
    for (const Block& b : blocks) {
      Step s;
      s.t = t;
      s.merges = tome_r > 0 ? tome_merges(t, tome_r) : 0;
      s.t_mlp = t - s.merges;
      t = s.t_mlp;
      const int64_t rows = n * s.t, rows_mlp = n * s.t_mlp, heads = b.heads, inner = heads * hd;
      s.rows1 = memory::desc({rows, d}, type, tag::ab);
      s.rows2 = memory::desc({rows_mlp, d}, type, tag::ab);
      s.norm1 = norm_step(s.rows1, p->scratch);
      s.norm2 = norm_step(s.rows2, p->scratch);
      // Bias in every product; the activation after fc1; the residual sum after proj and
      // fc2, which write into the token stream itself.
      if (int8) {
        const auto quantise = [&](int64_t r, int64_t width, float scale) {
          dnnl::primitive_attr attr;
          attr.set_output_scales(0, {1.f / scale});
          return dnnl::reorder(dnnl::reorder::primitive_desc(
              cpu(), memory::desc({r, width}, dt::f32, tag::ab), cpu(),
              memory::desc({r, width}, dt::s8, tag::ab), attr));
        };
        // fc1 writes its activation straight in fc2's input units.
        dnnl::post_ops to_s8 = activation_ops(act);
        to_s8.append_eltwise(1.f, dnnl::algorithm::eltwise_linear, 1.f / b.s_hidden, 0.f);
        s.qkv = matmul_step_int8(rows, b.qkv, dt::f32, {});
        s.proj = matmul_step_int8(rows, b.proj, dt::f32, sum_relu(true, false));
        s.fc1 = matmul_step_int8(rows_mlp, b.fc1, dt::s8, to_s8);
        s.fc2 = matmul_step_int8(rows_mlp, b.fc2, dt::f32, sum_relu(true, false));
        s.q_ln1 = quantise(rows, d, b.s_ln1);
        s.q_attn = quantise(rows, inner, b.s_attn);
        s.q_ln2 = quantise(rows_mlp, d, b.s_ln2);
      } else {
        s.qkv = matmul_step(rows, b.qkv, type, {});
        s.proj = matmul_step(rows, b.proj, type, sum_relu(true, false));
        s.fc1 = matmul_step(rows_mlp, b.fc1, type, activation_ops(act));
        s.fc2 = matmul_step(rows_mlp, b.fc2, type, sum_relu(true, false));
      }
      // Q, K and V read in place from the (3, N, heads, T, head width) copy of qkv; K as
      // its transpose by strides.
      const int64_t tt = s.t;
      s.q = memory::desc({n * heads, tt, hd}, type, tag::abc);
      s.kt = memory::desc({n * heads, hd, tt}, type, tag::acb);
      s.p = memory::desc({n * heads, tt, tt}, type, tag::abc);
      s.out = memory::desc({n, heads, tt, hd}, type, memory::dims{tt * inner, hd, inner, 1});
      {
        dnnl::primitive_attr attr = attr_with({});
        attr.set_output_scales(0, {static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)))});
        const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(s.q, s.kt, s.p), attr, cpu());
        s.scores = {dnnl::matmul(pd), pd.src_desc(), pd.weights_desc(), pd.dst_desc(),
                    pd.scratchpad_desc()};
      }
      {
        const dnnl::softmax_forward::desc desc(
            dnnl::prop_kind::forward_inference,
            memory::desc({n * heads * tt, tt}, type, tag::ab), 1);
        const dnnl::softmax_forward::primitive_desc pd(desc, attr_with({}), cpu());
        s.softmax = dnnl::softmax_forward(pd);
        p->scratch = std::max(p->scratch, pd.scratchpad_desc().get_size());
      }
      {
        const dnnl::matmul::primitive_desc pd(
            dnnl::matmul::desc(memory::desc({n, heads, tt, tt}, type, tag::abcd),
                               memory::desc({n, heads, tt, hd}, type, tag::abcd), s.out),
            attr_with({}), cpu());
        s.mix = {dnnl::matmul(pd), pd.src_desc(), pd.weights_desc(), pd.dst_desc(),
                 pd.scratchpad_desc()};
      }
      for (const auto* m : {&s.qkv, &s.proj, &s.fc1, &s.fc2, &s.scores, &s.mix}) {
        p->scratch = std::max(p->scratch, m->scratch.get_size());
      }
      p->steps.push_back(std::move(s));
    }
    return p;
  }

  /// `maxima`, when given (fp32 only), gains each block's largest magnitudes of ln_1's,
  /// attention's, ln_2's and the activation's outputs: int8 calibration.
  at::Tensor forward(const at::Tensor& tokens, std::vector<double>* maxima = nullptr) {
    VT_CHECK(tokens.dim() == 3, "expected tokens (N, T, D), got ", tokens.sizes());
    VT_CHECK(!maxima || (!int8 && dtype == at::kFloat), "calibration runs in fp32");
    const int64_t n = tokens.size(0), t0 = tokens.size(1), d = tokens.size(2);
    VT_CHECK(d == blocks.front().qkv.in, "tokens of width ", d, " for an encoder of width ",
             blocks.front().qkv.in);
    const auto plan = plan_for(n, t0);
    // The token stream, updated in place by the residual sums (and replaced by a shorter
    // one where tokens merge).
    at::Tensor x = tokens.to(dtype).contiguous().clone();
    // Work buffers, at the largest size a block asks for (the first sees the most tokens).
    int64_t inner_max = 0, heads_max = 0, width_max = 0;
    for (const Block& b : blocks) {
      heads_max = std::max(heads_max, b.heads);
      inner_max = std::max(inner_max, b.heads * hd);
      width_max = std::max(width_max, b.fc1.out);
    }
    const auto opts = x.options();
    const at::Tensor h = at::empty({n * t0 * d}, opts);
    const at::Tensor qkv = at::empty({n * t0 * 3 * inner_max}, opts);
    const at::Tensor heads_qkv = at::empty({3 * n * t0 * inner_max}, opts);
    const at::Tensor probs = at::empty({n * heads_max * t0 * t0}, opts);
    const at::Tensor attn_out = at::empty({n * t0 * inner_max}, opts);
    // The MLP's hidden rows: fp32/bf16, or for int8 s8 (fc1 writes fc2's input units), with
    // the s8 input rows of the other products.
    const at::Tensor hidden = at::empty({n * t0 * width_max}, int8 ? opts.dtype(at::kChar) : opts);
    const at::Tensor rows_s8 =
        int8 ? at::empty({n * t0 * std::max(d, inner_max)}, at::kChar) : at::Tensor();
    const Buffer scratch(memory::desc({static_cast<memory::dim>(plan->scratch)}, dt::u8, tag::x));
    const auto mem = [&](const memory::desc& md, const at::Tensor& a) {
      return memory(md, cpu(), a.data_ptr());
    };
    dnnl::stream stream(cpu());
    const auto norm = [&](const dnnl::layer_normalization_forward& prim, const memory& src,
                          const memory& dst, const Vector& w, const Vector& bias) {
      prim.execute(stream, {{DNNL_ARG_SRC, src},
                            {DNNL_ARG_DST, dst},
                            {DNNL_ARG_SCALE, w.mem},
                            {DNNL_ARG_SHIFT, bias.mem},
                            {DNNL_ARG_SCRATCHPAD, scratch.mem}});
    };
    const auto product = [&](const Matmul& m, const Linear& l, const memory& src,
                             const memory& dst) {
      m.prim.execute(stream, {{DNNL_ARG_SRC, src},
                              {DNNL_ARG_WEIGHTS, l.weights.get(m.weights)},
                              {DNNL_ARG_BIAS, l.bias.mem},
                              {DNNL_ARG_DST, dst},
                              {DNNL_ARG_SCRATCHPAD, scratch.mem}});
    };
    const auto quantise = [&](const dnnl::reorder& r, const memory& from, int64_t rows,
                              int64_t width) {
      const memory to = mem(memory::desc({rows, width}, dt::s8, tag::ab), rows_s8);
      r.execute(stream, {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}});
      return to;
    };
    const auto record = [&](size_t i, const at::Tensor& a, int64_t count) {
      stream.wait();
      (*maxima)[i] += a.narrow(0, 0, count).abs().max().item<double>();
    };
    if (maxima) maxima->resize(4 * blocks.size(), 0.0);
    at::Tensor size;  ///< Token Merging: original tokens per token, from the first merge on
    for (size_t bi = 0; bi < blocks.size(); ++bi) {
      const Block& b = blocks[bi];
      const Step& s = plan->steps[bi];
      const int64_t t = s.t, rows = n * t, heads = b.heads, inner = heads * hd;
      const memory xm = mem(s.rows1, x), hm = mem(s.rows1, h),
                   qkvm = mem(memory::desc({rows, 3 * inner}, type, tag::ab), qkv),
                   am = mem(memory::desc({rows, inner}, type, tag::ab), attn_out);
      norm(s.norm1, xm, hm, b.ln1_w, b.ln1_b);
      if (maxima) record(4 * bi, h, rows * d);
      product(s.qkv, b.qkv, int8 ? quantise(s.q_ln1, hm, rows, d) : hm, qkvm);
      stream.wait();
      // One copy puts each head's Q, K and V rows together; the rest reads in place.
      const at::Tensor grouped =
          heads_qkv.narrow(0, 0, 3 * rows * inner).view({3, n, heads, t, hd});
      grouped.copy_(qkv.narrow(0, 0, rows * 3 * inner)
                        .view({n, t, 3, heads, hd})
                        .permute({2, 0, 3, 1, 4}));
      const size_t part = static_cast<size_t>(rows * inner) * x.element_size();
      auto* base = static_cast<char*>(heads_qkv.data_ptr());
      const memory qm(s.q, cpu(), base), ktm(s.kt, cpu(), base + part),
          vm(s.mix.weights, cpu(), base + 2 * part), pm(s.p, cpu(), probs.data_ptr()),
          om(s.out, cpu(), attn_out.data_ptr()),
          probs_rows(memory::desc({n * heads * t, t}, type, tag::ab), cpu(), probs.data_ptr()),
          probs_4d(s.mix.src, cpu(), probs.data_ptr());
      s.scores.prim.execute(stream, {{DNNL_ARG_SRC, qm},
                                     {DNNL_ARG_WEIGHTS, ktm},
                                     {DNNL_ARG_DST, pm},
                                     {DNNL_ARG_SCRATCHPAD, scratch.mem}});
      if (size.defined()) {
        stream.wait();
        tome::add_log_size(probs.narrow(0, 0, n * heads * t * t).view({n, heads, t, t}), size);
      }
      s.softmax.execute(stream, {{DNNL_ARG_SRC, probs_rows},
                                 {DNNL_ARG_DST, probs_rows},
                                 {DNNL_ARG_SCRATCHPAD, scratch.mem}});
      s.mix.prim.execute(stream, {{DNNL_ARG_SRC, probs_4d},
                                  {DNNL_ARG_WEIGHTS, vm},
                                  {DNNL_ARG_DST, om},
                                  {DNNL_ARG_SCRATCHPAD, scratch.mem}});
      if (maxima) record(4 * bi + 1, attn_out, rows * inner);
      product(s.proj, b.proj, int8 ? quantise(s.q_attn, am, rows, inner) : am, xm);
      if (s.merges > 0) {
        stream.wait();
        std::tie(x, size) = tome::merge(x, size, grouped[1].mean(1), s.merges);
      }
      const int64_t rows_mlp = n * s.t_mlp;
      const memory xm2 = mem(s.rows2, x), hm2 = mem(s.rows2, h),
                   hidm = mem(memory::desc({rows_mlp, b.fc1.out}, int8 ? dt::s8 : type, tag::ab),
                              hidden);
      norm(s.norm2, xm2, hm2, b.ln2_w, b.ln2_b);
      if (maxima) record(4 * bi + 2, h, rows_mlp * d);
      product(s.fc1, b.fc1, int8 ? quantise(s.q_ln2, hm2, rows_mlp, d) : hm2, hidm);
      if (maxima) record(4 * bi + 3, hidden, rows_mlp * b.fc1.out);
      product(s.fc2, b.fc2, hidm, xm2);
    }
    stream.wait();
    return x;
  }
};

ViTEncoder::ViTEncoder(ViTWeights w, at::ScalarType dtype) : impl_(std::make_shared<Impl>()) {
  impl_->init(w, dtype);
  for (const auto& b : w.blocks) {
    impl_->add_block({Vector(b.ln1_w), Vector(b.ln1_b), Vector(b.ln2_w), Vector(b.ln2_b),
                      linear_layer(b.qkv_w, b.qkv_b), linear_layer(b.proj_w, b.proj_b),
                      linear_layer(b.fc1_w, b.fc1_b), linear_layer(b.fc2_w, b.fc2_b)});
  }
}

ViTEncoder::ViTEncoder(ViTWeights w, const std::vector<float>& scales)
    : impl_(std::make_shared<Impl>()) {
  impl_->init(w, at::kFloat);
  check_int8_scales(scales, 4 * w.blocks.size());
  impl_->int8 = true;
  for (size_t i = 0; i < w.blocks.size(); ++i) {
    const auto& b = w.blocks[i];
    const float* s = &scales[4 * i];
    Impl::Block block{Vector(b.ln1_w),
                      Vector(b.ln1_b),
                      Vector(b.ln2_w),
                      Vector(b.ln2_b),
                      linear_layer_int8(b.qkv_w, b.qkv_b, s[0]),
                      linear_layer_int8(b.proj_w, b.proj_b, s[1]),
                      linear_layer_int8(b.fc1_w, b.fc1_b, s[2]),
                      linear_layer_int8(b.fc2_w, b.fc2_b, s[3])};
    block.s_ln1 = s[0];
    block.s_attn = s[1];
    block.s_ln2 = s[2];
    block.s_hidden = s[3];
    impl_->add_block(std::move(block));
  }
}

at::Tensor ViTEncoder::forward(const at::Tensor& tokens) const {
  return impl_->forward(tokens);
}

at::Tensor ViTEncoder::forward_recording(const at::Tensor& tokens,
                                         std::vector<double>& maxima) const {
  return impl_->forward(tokens, &maxima);
}

#endif

}  // namespace vitrine::models::onednn
