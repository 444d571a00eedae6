// Preprocessing against torchvision's eval transform (Resize 256, CenterCrop 224,
// ToTensor, Normalize) on PIL-decoded photos that python3-torchvision processed.
#include "test_util.h"

#include "vitrine/image/decode.h"
#include "vitrine/image/transform.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fstream>

using namespace vitrine;

TEST(PreprocessGolden, EqualsTorchvisionEvalTransform) {
  const std::string dir = test::data_dir("images/preprocess");
  const auto index = nlohmann::json::parse(std::ifstream(dir + "/index.json"));
  const image::EvalTransform transform;  // torchvision's defaults
  const at::Tensor std = at::tensor(transform.std).view({3, 1, 1});
  int checked = 0;
  for (const auto& entry : index["files"]) {
    const std::string file = entry["file"];
    const at::Tensor ours = image::eval_transform(image::decode_file(dir + "/" + file), transform);
    const at::Tensor ref = test::load_tensor(dir + "/ref.safetensors", file);
    ASSERT_EQ(ours.sizes(), ref.sizes()) << file;
    // Back to pixel units (0..1) before comparing: the bar is 2/255 per pixel.
    const at::Tensor diff = ((ours - ref) * std).abs();
    EXPECT_LE(diff.mean().item<double>(), 2.0 / 255) << file;
    // Pillow's resampling is reproduced exactly, so in practice nothing differs.
    EXPECT_LE(diff.max().item<double>(), 1.0 / 255 + 1e-6) << file;
    ++checked;
  }
  EXPECT_GE(checked, 12);
}

TEST(PreprocessGolden, DecodedPixelsEqualPil) {
  const std::string dir = test::data_dir("images/preprocess");
  const auto index = nlohmann::json::parse(std::ifstream(dir + "/index.json"));
  for (const auto& entry : index["files"]) {
    const std::string file = entry["file"];
    const cv::Mat rgb = image::decode_file(dir + "/" + file);
    const at::Tensor ours = at::from_blob(rgb.data, {rgb.rows, rgb.cols, 3}, at::kByte);
    const at::Tensor ref = test::load_tensor(dir + "/ref.safetensors", file + ":rgb");
    ASSERT_EQ(ours.sizes(), ref.sizes()) << file;
    EXPECT_LE(test::max_abs_diff(ours, ref), 0.0) << file;
  }
}
