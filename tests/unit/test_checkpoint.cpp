#include "test_util.h"

#include "vitrine/core/error.h"
#include "vitrine/core/fs.h"
#include "vitrine/core/safetensors.h"
#include "vitrine/image/transform.h"
#include "vitrine/models/checkpoint.h"
#include "vitrine/models/model_dir.h"
#include "vitrine/models/registry.h"
#include "vitrine/search/embedder.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>

#include <filesystem>
#include <fstream>
#include <set>

using namespace vitrine;
using namespace vitrine::models;
namespace fs = std::filesystem;

namespace {

ModelConfig tiny_vit() { return test::tiny_vit_config(); }

ModelConfig tiny_resnet() {
  ModelConfig c = model_preset("resnet18");
  set_image_size(c, 64);
  c.num_classes = 4;
  return c;
}


}  // namespace

// `search --data` on a database with photo copies also hashes each query's PNG copy: the
// photo it embeds must stay the photo it read (the copy once swapped its colour channels).
TEST(ModelDir, AnEmbeddingDoesNotDependOnWhichHashesAreTaken) {
  const ModelConfig c = tiny_resnet();
  at::manual_seed(3);
  VisionModel model = create_model(c);
  const std::string dir = test::temp_dir("embedder-hashes");
  save_model(*model, dir + "/m");
  cv::Mat bgr(50, 70, CV_8UC3, cv::Scalar(20, 90, 230));  // orange: far from its swap
  cv::randu(bgr(cv::Rect(0, 0, 35, 25)), cv::Scalar::all(0), cv::Scalar::all(255));
  ASSERT_TRUE(cv::imwrite(dir + "/photo.png", bgr));
  std::vector<std::vector<float>> embeddings;
  for (const bool png_hash : {false, true}) {
    search::EmbedderOptions options;
    options.pixel_hashes = true;
    options.png_hash = png_hash;
    const search::Embedder embedder(dir + "/m", options);
    const auto out = embedder.embed_files({dir + "/photo.png"});
    ASSERT_TRUE(out[0].ok()) << out[0].error;
    EXPECT_EQ(out[0].pixel_hashes.size(), png_hash ? 2u : 1u);
    embeddings.push_back(out[0].embedding);
  }
  EXPECT_EQ(embeddings[0], embeddings[1]);
  fs::remove_all(dir);
}

TEST(ModelDir, SaveLoadIsBitExact) {
  for (const ModelConfig& base : {tiny_vit(), tiny_resnet()}) {
    ModelConfig c = base;
    c.labels = {};
    for (int64_t i = 0; i < c.num_classes; ++i) c.labels.push_back("label " + std::to_string(i));
    c.provenance_json = R"({"source":"test"})";
    at::manual_seed(5);
    VisionModel model = create_model(c);
    // Non-trivial batch-norm statistics, so buffers are checked too.
    model->train();
    model->forward(at::randn({2, 3, c.image_size, c.image_size}));
    const std::string dir = test::temp_dir("modeldir-" + c.arch);
    save_model(*model, dir);
    VisionModel loaded = load_model(dir);
    const StateDict a = model_state_dict(*model), b = model_state_dict(*loaded);
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_EQ(a[i].first, b[i].first);
      EXPECT_TRUE(at::equal(a[i].second, b[i].second)) << a[i].first;
    }
    EXPECT_EQ(loaded->config().labels, c.labels);
    EXPECT_EQ(config_to_json(loaded->config()), config_to_json(model->config()));
    fs::remove_all(dir);
  }
}

TEST(ModelDir, SavingAgainReplacesWeightsAndConfigTogetherAndKeepsOtherFiles) {
  const std::string root = test::temp_dir("modeldir-again");
  const std::string dir = root + "/model";
  ModelConfig c = tiny_resnet();
  save_model(*create_model(c), dir);
  write_file_atomic(dir + "/notes.txt", "trained on the spring catalogue");
  fs::create_directories(dir + "/extra");
  write_file_atomic(dir + "/extra/a.txt", "a");
  fs::create_directory_symlink(dir, root + "/current");
  c.num_classes = 7;  // another head: weights and config must change together
  save_model(*create_model(c), root + "/current/");
  EXPECT_TRUE(fs::is_symlink(root + "/current")) << "saving through a link keeps the link";
  EXPECT_EQ(load_model(dir)->config().num_classes, 7);
  EXPECT_EQ(read_text_file(dir + "/notes.txt"), "trained on the spring catalogue");
  EXPECT_EQ(read_text_file(dir + "/extra/a.txt"), "a");
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(root)) names.insert(e.path().filename().string());
  EXPECT_EQ(names, (std::set<std::string>{"model", "current"})) << "no .saving or .old left";
  // A crash between the swap's two renames leaves only model.old: loading says so, and the
  // next save puts it back first, so its other files are kept: also when saved through a
  // (relative) link, whose target is missing then.
  fs::remove(root + "/current");
  fs::create_directory_symlink("model", root + "/current");
  fs::rename(dir, dir + ".old");
  EXPECT_CONTAINS(test::error_of([&] { load_model(dir); }), "rename it back");
  c.num_classes = 5;
  save_model(*create_model(c), root + "/current");
  EXPECT_TRUE(fs::is_symlink(root + "/current"));
  EXPECT_EQ(load_model(dir)->config().num_classes, 5);
  EXPECT_EQ(read_text_file(dir + "/notes.txt"), "trained on the spring catalogue");
  EXPECT_FALSE(fs::exists(dir + ".old"));
  EXPECT_CONTAINS(test::error_of([&] { save_model(*create_model(c), "."); }), "name a directory");
}

TEST(ModelDir, ClearErrors) {
  const std::string dir = test::temp_dir("modeldir-bad");
  EXPECT_NE(test::error_of([&] { load_model(dir + "/nope"); }).find("vitrine import"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] { load_model(dir); }).find("no config.json"), std::string::npos);
  // A training run's folder: its models are one level down.
  fs::create_directories(dir + "/run/last");
  write_file_atomic(dir + "/run/last/config.json", "{}");
  EXPECT_CONTAINS(test::error_of([&] { load_model(dir + "/run"); }),
                  "is a training run, not a model directory: give its model, " + dir +
                      "/run/last");
  write_file_atomic(dir + "/config.json", "{\"arch\": ");
  EXPECT_NE(test::error_of([&] { load_model(dir); }).find("not valid JSON"), std::string::npos);
  EXPECT_CONTAINS(test::error_of([&] { load_model(dir); }), "(parse error at line 1, column");
  write_file_atomic(dir + "/config.json", R"({"vitrine_format": 99, "arch": "x", "family": "vit"})");
  EXPECT_NE(test::error_of([&] { load_model(dir); }).find("newer Vitrine"), std::string::npos);
  write_file_atomic(dir + "/config.json", R"({"model_type": "vit", "hidden_size": 768})");
  EXPECT_NE(test::error_of([&] { load_model(dir); }).find("--from hf"), std::string::npos);
  fs::remove_all(dir);
}

TEST(Checkpoint, StrictReportNamesEveryProblem) {
  VisionModel model = create_model(tiny_resnet());
  StateDict state = model_state_dict(*model);
  StateDict edited;
  for (auto& [name, t] : state) {
    if (name == "layer2.0.conv1.weight") continue;                    // missing
    if (name == "fc.weight") {
      edited.emplace_back(name, at::zeros({4, 7}));                   // mis-shaped
      continue;
    }
    edited.emplace_back(name, t.clone());
  }
  edited.emplace_back("layer9.extra", at::zeros({1}));                // unexpected
  const std::string msg = test::error_of([&] { load_state_dict(*model, edited); });
  EXPECT_NE(msg.find("layer2.0.conv1.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("layer9.extra"), std::string::npos) << msg;
  EXPECT_NE(msg.find("fc.weight: model [4, 512] vs checkpoint [4, 7]"), std::string::npos) << msg;
  LoadOptions lax;
  lax.strict = false;
  const LoadReport r = load_state_dict(*model, edited, lax);
  EXPECT_EQ(r.missing, std::vector<std::string>{"layer2.0.conv1.weight"});
  EXPECT_EQ(r.unexpected, std::vector<std::string>{"layer9.extra"});
  EXPECT_EQ(r.mismatched.size(), 1u);
}

TEST(Checkpoint, HalfPrecisionCheckpointConverts) {
  VisionModel a = create_model(tiny_vit());
  StateDict half;
  for (auto& [name, t] : model_state_dict(*a)) half.emplace_back(name, t.to(at::kHalf));
  VisionModel b = create_model(tiny_vit());
  load_state_dict(*b, half);
  for (auto& [name, t] : model_state_dict(*b)) {
    EXPECT_EQ(t.scalar_type(), at::kFloat) << name;
  }
}

// A safetensors file's first byte is the low byte of its header length: 0x80 there (one
// header length in 32) is no pickle, and the file loads as safetensors.
TEST(Checkpoint, SafetensorsWhoseHeaderLengthStartsLikeAPickleLoads) {
  const std::string dir = test::temp_dir("st_0x80");
  const StateDict tensors{{"w", at::arange(6, at::kFloat).reshape({2, 3})}};
  int found = 0;
  for (int pad = 0; pad < 64; ++pad) {
    const std::string path = dir + "/w" + std::to_string(pad) + ".safetensors";
    safetensors_save(path, tensors, {{"note", std::string(pad, 'x')}});
    unsigned char first = 0;
    std::ifstream(path, std::ios::binary).read(reinterpret_cast<char*>(&first), 1);
    if (first != 0x80) continue;
    ++found;
    const StateDict back = read_weights(path);
    ASSERT_EQ(back.size(), 1u) << path;
    EXPECT_TRUE(at::equal(back[0].second, tensors[0].second));
  }
  EXPECT_GT(found, 0) << "no header length of 0x..80 made";
  fs::remove_all(dir);
}

// A ViT checkpoint trained at another size is imported at that size (its position
// embeddings say which), not resized to the preset's 224 unasked.
TEST(Checkpoint, AViTImportsAtTheSizeItsPositionEmbeddingsWereTrainedAt) {
  const std::string dir = test::temp_dir("vit_size");
  ModelConfig c = model_preset("vit_ti_16");
  c.num_classes = 3;
  set_image_size(c, 96);  // a 6 x 6 patch grid
  VisionModel trained = create_model(c);
  safetensors_save(dir + "/w.safetensors", model_state_dict(*trained));
  ImportOptions o;
  o.source = Source::kTorchvision;
  o.arch = "vit_ti_16";
  o.weights = dir + "/w.safetensors";
  LoadReport report;
  VisionModel imported = import_checkpoint(o, &report);
  EXPECT_EQ(imported->config().image_size, 96);
  EXPECT_EQ(imported->config().preprocess.crop, 96);
  EXPECT_TRUE(report.adapted.empty()) << report.summary();
  o.image_size = 128;  // asked for: resized to it
  EXPECT_EQ(import_checkpoint(o, &report)->config().image_size, 128);
  ASSERT_EQ(report.adapted.size(), 1u);
  EXPECT_NE(report.adapted[0].find("37 to 65 tokens (bicubic, corners aligned)"),
            std::string::npos) << report.summary();
  fs::remove_all(dir);
}

TEST(Checkpoint, HuggingFaceKeysFuseQueryKeyValue) {
  const ModelConfig c = tiny_vit();
  VisionModel model = create_model(c);
  StateDict hf;
  for (auto& [name, t] : model_state_dict(*model)) {
    const std::string p = "encoder.layers.encoder_layer_";
    if (name.rfind(p, 0) == 0 && name.find("in_proj_") != std::string::npos) {
      const std::string layer = name.substr(p.size(), name.find('.', p.size()) - p.size());
      const std::string kind = name.substr(name.rfind('_') + 1);  // weight | bias
      const auto chunks = t.chunk(3, 0);
      const char* parts[] = {"query", "key", "value"};
      // Out of order on purpose: the map must place them by name, not by position.
      for (int i : {2, 0, 1}) {
        hf.emplace_back("vit.encoder.layer." + layer + ".attention.attention." + parts[i] + "." +
                            kind,
                        chunks[i].clone());
      }
    }
  }
  hf.emplace_back("vit.pooler.dense.weight", at::zeros({32, 32}));
  LoadReport report;
  const StateDict mapped = map_keys(hf, Source::kHuggingFace, Family::kViT, report);
  EXPECT_EQ(report.ignored, std::vector<std::string>{"vit.pooler.dense.weight"});
  const StateDict original = model_state_dict(*model);
  int fused = 0;
  for (const auto& [name, t] : mapped) {
    for (const auto& [oname, ot] : original) {
      if (oname == name) {
        EXPECT_TRUE(at::equal(t, ot)) << name;
        ++fused;
      }
    }
  }
  EXPECT_EQ(fused, 2 * c.vit.num_hidden_layers);
}

TEST(Checkpoint, RgbStemAdaptsToGreyInput) {
  at::manual_seed(7);
  ModelConfig rgb_config = tiny_resnet();
  VisionModel rgb = create_model(rgb_config);
  rgb->eval();
  ModelConfig grey_config = rgb_config;
  grey_config.in_channels = 1;
  grey_config.preprocess.mean = {0.5f};
  grey_config.preprocess.std = {0.5f};
  VisionModel grey = create_model(grey_config);
  grey->eval();
  const LoadReport r = load_state_dict(*grey, model_state_dict(*rgb));
  ASSERT_EQ(r.adapted.size(), 1u);
  // A grey image seen through the RGB model (three equal channels) gives the same result.
  const at::Tensor g = at::randn({2, 1, 64, 64});
  at::NoGradGuard no_grad;
  EXPECT_LT((grey->forward(g) - rgb->forward(g.expand({2, 3, 64, 64}))).abs().max().item<double>(),
            1e-4);
}

TEST(Checkpoint, HeadReinitialisedOnlyWhenAsked) {
  VisionModel source = create_model(tiny_vit());
  ModelConfig other = tiny_vit();
  other.num_classes = 9;
  VisionModel target = create_model(other);
  EXPECT_THROW(load_state_dict(*target, model_state_dict(*source)), Error);
  LoadOptions o;
  o.reinit_head = true;
  const LoadReport r = load_state_dict(*target, model_state_dict(*source), o);
  EXPECT_TRUE(r.ok());
  EXPECT_EQ(r.adapted.size(), 2u);  // weight and bias
}

TEST(Safetensors, RoundTripKeepsDtypesShapesOrderAndMetadata) {
  const std::string dir = test::temp_dir("st");
  StateDict in = {{"z_first", at::randn({3, 4})},
                  {"a_second", at::arange(10, at::kLong)},
                  {"half", at::randn({2, 2}).to(at::kHalf)},
                  {"bf16", at::randn({5}).to(at::kBFloat16)},
                  {"flag", at::ones({2}, at::kBool)},
                  {"scalar", at::scalar_tensor(3.5)},
                  {"view", at::randn({4, 6}).t()}};
  safetensors_save(dir + "/t.safetensors", in, {{"k", "v"}});
  const auto out = safetensors_load(dir + "/t.safetensors");
  ASSERT_EQ(out.tensors.size(), in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    EXPECT_EQ(out.tensors[i].first, in[i].first);
    EXPECT_TRUE(at::equal(out.tensors[i].second, in[i].second.contiguous())) << in[i].first;
  }
  EXPECT_EQ(out.metadata.at("k"), "v");
  fs::remove_all(dir);
}

TEST(Safetensors, CorruptFilesGiveClearErrors) {
  const std::string dir = test::temp_dir("st-bad");
  safetensors_save(dir + "/ok.safetensors", {{"w", at::randn({64, 64})}});
  const std::string ok = read_text_file(dir + "/ok.safetensors");
  write_file_atomic(dir + "/truncated.safetensors", ok.substr(0, ok.size() - 100));
  EXPECT_NE(test::error_of([&] { safetensors_load(dir + "/truncated.safetensors"); }).find("truncated"),
            std::string::npos);
  // Cut inside the header: a copy cut short, not some other format.
  write_file_atomic(dir + "/cut_header.safetensors", ok.substr(0, 40));
  const std::string cut =
      test::error_of([&] { safetensors_load(dir + "/cut_header.safetensors"); });
  EXPECT_CONTAINS(cut, "truncated (its header alone needs");
  EXPECT_EQ(cut.find(".pth"), std::string::npos) << cut;
  write_file_atomic(dir + "/empty.safetensors", "");
  EXPECT_NE(test::error_of([&] { safetensors_load(dir + "/empty.safetensors"); }).find("too short"),
            std::string::npos);
  write_file_atomic(dir + "/text.safetensors", "this is not a checkpoint at all, sorry");
  EXPECT_NE(test::error_of([&] { safetensors_load(dir + "/text.safetensors"); })
                .find("not a safetensors file"),
            std::string::npos);
  std::string bad_json = ok;
  bad_json[8] = '!';  // the header's opening brace
  write_file_atomic(dir + "/json.safetensors", bad_json);
  EXPECT_NE(test::error_of([&] { safetensors_load(dir + "/json.safetensors"); }).find("malformed"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] { safetensors_load(dir + "/missing.safetensors"); }).find("no such file"),
            std::string::npos);
  // Headers written by hand: a shape whose byte count wraps around 2^64 to match the
  // offsets, and metadata nested a million deep (which used to overflow the stack).
  const auto with_header = [&](const std::string& name, const std::string& header,
                               const std::string& data = "") {
    std::string file(8, '\0');
    for (int i = 0; i < 8; ++i) file[i] = static_cast<char>((header.size() >> (8 * i)) & 0xFF);
    write_file_atomic(dir + "/" + name, file + header + data);
    return test::error_of([&] { safetensors_load(dir + "/" + name); });
  };
  EXPECT_CONTAINS(with_header("wrap.safetensors", R"({"w": {"dtype": "F32", "shape": )"
                                                  R"([4611686018427387904, 4], )"
                                                  R"("data_offsets": [0, 0]}})"),
                  "size overflows");
  // Two tensors over the same bytes: a small file could otherwise ask for any memory.
  EXPECT_CONTAINS(with_header("overlap.safetensors",
                              R"({"a": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}, )"
                              R"("b": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}, )"
                              R"("c": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}, )"
                              R"("d": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}})",
                              std::string(2, '\0')),
                  "tensors 'c' and 'd' claim the same bytes (from 1)");
  EXPECT_CONTAINS(with_header("deep.safetensors", R"({"__metadata__": {"x": )" +
                                                      std::string(1000000, '[') +
                                                      std::string(1000000, ']') + "}}"),
                  "nested deeper than 64 levels");
  fs::remove_all(dir);
}

TEST(ModelDir, ConfigSizesBeyondAnyRealModelAreRefused) {
  models::ModelConfig c = models::model_preset("resnet_custom");
  const auto error_with = [&](const std::function<void(models::ModelConfig&)>& edit) {
    models::ModelConfig bad = c;
    edit(bad);
    return test::error_of([&] { bad.validate(); });
  };
  EXPECT_NO_THROW(c.validate());
  EXPECT_CONTAINS(error_with([](auto& m) { m.resnet.layers = {int64_t{1} << 62, 1, 1, 1}; }),
                  "a ResNet stage needs 1..1024 blocks");
  EXPECT_CONTAINS(error_with([](auto& m) { m.num_classes = int64_t{1} << 40; }),
                  "num_classes must be in 0..1048576");
  EXPECT_CONTAINS(error_with([](auto& m) { m.preprocess.resize = int64_t{1} << 31; }),
                  "resize and crop must be in 1..16384");
  EXPECT_CONTAINS(test::error_of([] {
                    models::config_from_json(
                        R"({"arch": "resnet18", "family": "resnet", "vitrine_format": 1e30})",
                        "c.json");
                  }),
                  "vitrine_format must be an integer");
}

TEST(Preprocess, SquashKeepsTheWholeImage) {
  // Red | green | blue bands, 4:1. The shorter-side transform crops the centre (green only);
  // the squash transform (Hugging Face's) keeps all three bands.
  cv::Mat img(60, 240, CV_8UC3, cv::Scalar(255, 0, 0));
  img(cv::Rect(80, 0, 80, 60)).setTo(cv::Scalar(0, 255, 0));
  img(cv::Rect(160, 0, 80, 60)).setTo(cv::Scalar(0, 0, 255));
  image::EvalTransform t;
  t.resize = 8;
  t.crop = 8;
  t.mean = {0, 0, 0};
  t.std = {1, 1, 1};
  t.squash = true;
  const at::Tensor s = image::eval_transform(img, t);
  ASSERT_EQ(s.sizes(), (std::vector<int64_t>{3, 8, 8}));
  EXPECT_FLOAT_EQ(s[0][4][0].item<float>(), 1.0f);  // red on the left
  EXPECT_FLOAT_EQ(s[2][4][7].item<float>(), 1.0f);  // blue on the right
  t.squash = false;
  const at::Tensor c = image::eval_transform(img, t);
  ASSERT_EQ(c.sizes(), (std::vector<int64_t>{3, 8, 8}));
  EXPECT_FLOAT_EQ(c[1][4][0].item<float>(), 1.0f);  // green from edge to edge
  EXPECT_FLOAT_EQ(c[1][4][7].item<float>(), 1.0f);
}

TEST(Preprocess, ResizeModeRoundTripsThroughConfig) {
  ModelConfig c = tiny_vit();
  c.preprocess.squash = true;
  EXPECT_TRUE(config_from_json(config_to_json(c), "test").preprocess.squash);
  c.preprocess.squash = false;
  EXPECT_FALSE(config_from_json(config_to_json(c), "test").preprocess.squash);
}

TEST(ModelConfigJson, LabelsAreReadComposed) {
  // A model trained on a folder a Mac named decomposed still matches its data, read composed.
  ModelConfig c = tiny_vit();
  c.labels.assign(static_cast<size_t>(c.num_classes), "bags");
  c.labels[0] = "cre\xcc\x80me";
  EXPECT_EQ(config_from_json(config_to_json(c), "test").labels[0], "cr\xc3\xa8me");
}
