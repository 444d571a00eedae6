// Data sets: ImageFolder trees (torchvision's layout and class order), CSV manifests, and
// Fashion-MNIST's IDX files (read through zlib, which also reads uncompressed files). Every
// source becomes one base data set of all its items; splits and label subsamples are subsets
// of it, so names and labels come from one place.
#include "vitrine/data/dataset.h"

#include "vitrine/core/random.h"

#include "vitrine/core/csv.h"
#include "vitrine/core/error.h"
#include "vitrine/core/fs.h"
#include "vitrine/core/hash.h"
#include "vitrine/core/json.h"
#include "vitrine/core/text.h"
#include "vitrine/image/batch.h"
#include "vitrine/image/decode.h"

#include <zlib.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <system_error>
#include <utility>

namespace vitrine::data {
namespace {

namespace fs = std::filesystem;

// ---- seeds --------------------------------------------------------------------------------

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t mix(uint64_t a, uint64_t b) {
  return splitmix64(splitmix64(a) ^ b);
}

/// FNV-1a: a class's draws depend on its name, not its index, so adding a class leaves the
/// split of the others unchanged.
uint64_t name_hash(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (const unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

constexpr uint64_t kSplitSalt = 0x73706c6974ull;        // "split"
constexpr uint64_t kSubsampleSalt = 0x6c6162656c73ull;  // "labels"


// ---- strings ------------------------------------------------------------------------------

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

std::string trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t");
  if (b == std::string::npos) return "";
  const size_t e = s.find_last_not_of(" \t");
  return s.substr(b, e - b + 1);
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// ---- data sets ----------------------------------------------------------------------------

void check_index(int64_t i, int64_t size) {
  VT_CHECK(i >= 0 && i < size, "data set index ", i, " is out of range; the data set has ", size,
           " items");
}

/// Image files named by path, decoded when asked for.
class FileDataset : public Dataset {
 public:
  FileDataset(std::vector<std::string> paths, std::vector<std::vector<int64_t>> labels,
              std::vector<std::string> classes, bool multi_label, int64_t max_pixels)
      : paths_(std::move(paths)), labels_(std::move(labels)) {
    decode_.max_pixels = max_pixels;
    classes_ = std::move(classes);
    multi_label_ = multi_label;
  }
  int64_t size() const override { return static_cast<int64_t>(paths_.size()); }
  cv::Mat image(int64_t i) const override {
    check_index(i, size());
    return image::decode_file(paths_[i], decode_);
  }
  std::vector<int64_t> labels(int64_t i) const override {
    check_index(i, size());
    return labels_[i];
  }
  std::string name(int64_t i) const override {
    check_index(i, size());
    return paths_[i];
  }

 private:
  std::vector<std::string> paths_;
  std::vector<std::vector<int64_t>> labels_;
  image::DecodeOptions decode_;
};

constexpr int kIdxSide = 28;
constexpr int kIdxPixels = kIdxSide * kIdxSide;
constexpr size_t kIdxImageHeader = 16;

/// Grey 28 x 28 images held in an IDX image file's bytes (header included).
class IdxDataset : public Dataset {
 public:
  IdxDataset(std::shared_ptr<const std::vector<uint8_t>> file, std::vector<int64_t> labels,
             std::string prefix, std::vector<std::string> classes)
      : file_(std::move(file)), labels_(std::move(labels)), prefix_(std::move(prefix)) {
    classes_ = std::move(classes);
  }
  int64_t size() const override { return static_cast<int64_t>(labels_.size()); }
  cv::Mat image(int64_t i) const override {
    check_index(i, size());
    const uint8_t* p = file_->data() + kIdxImageHeader + static_cast<size_t>(i) * kIdxPixels;
    return cv::Mat(kIdxSide, kIdxSide, CV_8UC1, const_cast<uint8_t*>(p)).clone();
  }
  std::vector<int64_t> labels(int64_t i) const override {
    check_index(i, size());
    return {labels_[i]};
  }
  std::string name(int64_t i) const override {
    check_index(i, size());
    return prefix_ + std::to_string(i);
  }

 private:
  std::shared_ptr<const std::vector<uint8_t>> file_;
  std::vector<int64_t> labels_;
  std::string prefix_;
};

class SubsetDataset : public Dataset {
 public:
  SubsetDataset(std::shared_ptr<Dataset> base, std::vector<int64_t> indices)
      : base_(std::move(base)), indices_(std::move(indices)) {
    classes_ = base_->classes();
    multi_label_ = base_->multi_label();
  }
  int64_t size() const override { return static_cast<int64_t>(indices_.size()); }
  cv::Mat image(int64_t i) const override {
    check_index(i, size());
    return base_->image(indices_[i]);
  }
  std::vector<int64_t> labels(int64_t i) const override {
    check_index(i, size());
    return base_->labels(indices_[i]);
  }
  std::string name(int64_t i) const override {
    check_index(i, size());
    return base_->name(indices_[i]);
  }
  const std::shared_ptr<Dataset>& base() const { return base_; }
  const std::vector<int64_t>& indices() const { return indices_; }

 private:
  std::shared_ptr<Dataset> base_;
  std::vector<int64_t> indices_;
};

// ---- splits and subsamples ----------------------------------------------------------------

/// The stratum of an item: its first (smallest) class index, -1 for a multi-label item with
/// no labels.
int64_t stratum_of(const std::vector<int64_t>& labels) {
  return labels.empty() ? -1 : labels.front();
}

std::string stratum_name(int64_t stratum, const std::vector<std::string>& classes) {
  return stratum < 0 ? std::string("(no labels)") : classes[stratum];
}

/// Positions 0 .. n-1 grouped by stratum, each group in position order.
std::map<int64_t, std::vector<int64_t>> group_by(const std::vector<int64_t>& strata) {
  std::map<int64_t, std::vector<int64_t>> groups;
  for (size_t i = 0; i < strata.size(); ++i) groups[strata[i]].push_back(static_cast<int64_t>(i));
  return groups;
}

/// The folder a source's photo paths are taken within: the folder itself, or a manifest's
/// folder; empty for a packed data set ("fashion-mnist").
fs::path source_home(const std::string& source) {
  std::error_code ec;
  return fs::is_directory(source, ec) ? fs::path(source) : fs::path(source).parent_path();
}

/// A photo's path within `home` (source_home), which stays when the folder moves, however
/// the source is written (relative, absolute, "./"); a photo outside it (a manifest's
/// absolute path) by its absolute path; an item of a packed data set
/// ("fashion-mnist:train:7", no home) as it is.
std::string path_within(const std::string& name, const fs::path& home) {
  if (home.empty()) return name;
  const fs::path photo = fs::absolute(name).lexically_normal();
  const fs::path within = photo.lexically_relative(fs::absolute(home).lexically_normal());
  if (within.empty() || *within.begin() == "..") return photo.string();
  return within.string();
}

struct SplitIndices {
  std::vector<int64_t> train, val, test;
};

/// Per stratum: the items in a seeded order, the first round(n * test) to test, the next
/// round(n * val) to val, the rest to train (at least one when the stratum has any). With
/// `keys` (a photo's path within its data set) each item's place in that order is a hash of
/// its key, so a photo added to or removed from a class moves at most a few others from one
/// split to another, where a permutation of the class's items would deal them all again;
/// without (packed data sets, whose items never change), a seeded permutation.
SplitIndices split_stratified(const std::vector<int64_t>& strata,
                              const std::vector<std::string>& classes, double val_split,
                              double test_split, uint64_t seed,
                              const std::vector<std::string>* keys = nullptr) {
  SplitIndices out;
  for (const auto& [stratum, items] : group_by(strata)) {
    const auto n = static_cast<int64_t>(items.size());
    auto n_test = static_cast<int64_t>(std::floor(n * test_split + 0.5));
    auto n_val = static_cast<int64_t>(std::floor(n * val_split + 0.5));
    int64_t excess = n_test + n_val - (n - 1);
    if (excess > 0) {
      const int64_t cut = std::min(excess, n_test);
      n_test -= cut;
      n_val -= std::min(excess - cut, n_val);
    }
    const uint64_t stratum_seed =
        mix(mix(seed, kSplitSalt), name_hash(stratum_name(stratum, classes)));
    std::vector<int64_t> order;
    if (keys == nullptr) {
      order = permutation(n, stratum_seed);
    } else {
      std::vector<std::pair<uint64_t, int64_t>> ranked;  // ties (a path twice): by position
      for (int64_t k = 0; k < n; ++k) {
        ranked.emplace_back(mix(stratum_seed, name_hash((*keys)[items[k]])), k);
      }
      std::sort(ranked.begin(), ranked.end());
      for (const auto& r : ranked) order.push_back(r.second);
    }
    for (int64_t k = 0; k < n; ++k) {
      const int64_t item = items[order[k]];
      if (k < n_test) {
        out.test.push_back(item);
      } else if (k < n_test + n_val) {
        out.val.push_back(item);
      } else {
        out.train.push_back(item);
      }
    }
  }
  for (auto* v : {&out.train, &out.val, &out.test}) std::sort(v->begin(), v->end());
  return out;
}

std::vector<int64_t> strata_of(const Dataset& d) {
  std::vector<int64_t> strata(d.size());
  for (int64_t i = 0; i < d.size(); ++i) strata[i] = stratum_of(d.labels(i));
  return strata;
}

/// The label subsample of the training set: per stratum, the first k items of a seeded
/// permutation (so with one seed a smaller k keeps a subset of a larger k's items).
std::shared_ptr<Dataset> subsample(const std::shared_ptr<Dataset>& train,
                                   const DataOptions& options, std::vector<std::string>& warnings) {
  if (options.labels_per_class == 0 && options.label_fraction >= 1.0) return train;
  const std::vector<std::string>& classes = train->classes();
  std::vector<int64_t> kept;
  for (const auto& [stratum, items] : group_by(strata_of(*train))) {
    const auto n = static_cast<int64_t>(items.size());
    int64_t k = 0;
    if (options.labels_per_class > 0) {
      k = std::min(n, options.labels_per_class);
      if (n < options.labels_per_class && stratum >= 0) {
        warnings.push_back("class '" + classes[stratum] + "' has only " + std::to_string(n) +
                           " training items, fewer than labels_per_class " +
                           std::to_string(options.labels_per_class) + "; all are kept");
      }
    } else {
      // The tolerance keeps products such as 10 * 0.3 = 3.0000000000000004 from rounding up.
      k = std::clamp<int64_t>(static_cast<int64_t>(std::ceil(n * options.label_fraction - 1e-9)), 1,
                              n);
    }
    const std::vector<int64_t> order = permutation(
        n, mix(mix(options.seed, kSubsampleSalt), name_hash(stratum_name(stratum, classes))));
    for (int64_t j = 0; j < k; ++j) kept.push_back(items[order[j]]);
  }
  std::sort(kept.begin(), kept.end());
  return subset(train, std::move(kept));
}

/// The validation fraction of data without a validation split of its own: the one asked for,
/// else 0.1.
double val_fraction(const DataOptions& o) { return o.val_split < 0 ? 0.1 : o.val_split; }

void check_options(const DataOptions& o) {
  VT_CHECK(!o.source.empty(),
           "no data source given; pass an ImageFolder root, a .csv manifest or fashion-mnist");
  VT_CHECK(std::isfinite(o.val_split) && (o.val_split >= 0.0 || o.val_split == -1) &&
               o.val_split < 1.0,
           "val_split ", o.val_split, " is out of range; use a fraction from 0 to below 1");
  VT_CHECK(std::isfinite(o.test_split) && o.test_split >= 0.0 && o.test_split < 1.0, "test_split ",
           o.test_split, " is out of range; use a fraction from 0 to below 1");
  VT_CHECK(std::max(o.val_split, 0.0) + o.test_split < 1.0, "val_split ", o.val_split,
           " plus test_split ",
           o.test_split, " leaves nothing to train on; keep their sum below 1");
  VT_CHECK(o.labels_per_class >= 0, "labels_per_class ", o.labels_per_class,
           " is negative; use 0 (all) or a positive count");
  VT_CHECK(std::isfinite(o.label_fraction) && o.label_fraction > 0.0 && o.label_fraction <= 1.0,
           "label_fraction ", o.label_fraction, " is out of range; use a fraction above 0 up to 1");
  VT_CHECK(o.labels_per_class == 0 || o.label_fraction >= 1.0, "both labels_per_class (",
           o.labels_per_class, ") and label_fraction (", o.label_fraction,
           ") are set; give one of them");
}

/// Items of a file-based source before they become data sets.
struct FileItems {
  std::vector<std::string> paths;
  std::vector<std::vector<std::string>> labels;  ///< class names
  std::vector<int> split;                        ///< 0 train, 1 val, 2 test, -1 not given
};

constexpr const char* kSplitNames[] = {"train", "val", "test"};
constexpr const char* kPhotoExtensions = ".jpg, .jpeg, .jpe, .jfif, .png, .webp, .bmp";

/// Shared tail of the ImageFolder and CSV readers: class indices, splits, warnings, subsample.
DataSplits finish_files(FileItems items, std::set<std::string> class_set, bool multi_label,
                        bool splits_given, const DataOptions& options,
                        std::vector<std::string> warnings, const std::string& source) {
  for (const auto& names : items.labels) class_set.insert(names.begin(), names.end());
  // A model stores its class names as UTF-8 text. A name that is not (a Latin-1 folder, a
  // spreadsheet's Windows-1252 CSV) is read as Windows-1252, so the model's config.json holds
  // the name as written and `eval` of this data matches it again.
  // Names are compared composed (NFC): macOS writes file names decomposed (NFD), so a folder
  // "Crème" copied from a Mac and a manifest's "Crème" typed on a keyboard are one class.
  std::map<std::string, std::string> renamed;
  for (const auto& name : class_set) {
    if (valid_utf8(name)) {
      if (std::string composed = nfc(name); composed != name) renamed.emplace(name, composed);
      continue;
    }
    const std::string text = nfc(windows1252_to_utf8(name));
    std::string first;
    for (size_t i = 0; i < items.labels.size() && first.empty(); ++i) {
      const auto& names = items.labels[i];
      if (std::find(names.begin(), names.end(), name) != names.end()) first = items.paths[i];
    }
    VT_CHECK(class_set.count(text) == 0, "the class names '", text, "' (UTF-8) and ",
             json_text(nlohmann::json(name)), " (of ", first, ", Windows-1252) name one class "
             "twice; rename one of them");
    warnings.push_back("the class name " + json_text(nlohmann::json(name)) + " (of " + first +
                       ") is not UTF-8 text: read as Windows-1252, '" + text + "'; save "
                       "manifests as UTF-8 (spreadsheets: \"CSV UTF-8\")");
    renamed.emplace(name, text);
  }
  for (const auto& [from, to] : renamed) {
    class_set.erase(from);
    class_set.insert(to);
  }
  if (!renamed.empty()) {
    for (auto& names : items.labels) {
      for (auto& n : names) {
        if (const auto it = renamed.find(n); it != renamed.end()) n = it->second;
      }
    }
  }
  std::vector<std::string> classes(class_set.begin(), class_set.end());
  std::map<std::string, int64_t> index;
  for (size_t k = 0; k < classes.size(); ++k) index[classes[k]] = static_cast<int64_t>(k);

  std::vector<std::vector<int64_t>> labels(items.labels.size());
  std::vector<int64_t> strata(items.labels.size());
  for (size_t i = 0; i < items.labels.size(); ++i) {
    for (const auto& name : items.labels[i]) labels[i].push_back(index.at(name));
    std::sort(labels[i].begin(), labels[i].end());
    labels[i].erase(std::unique(labels[i].begin(), labels[i].end()), labels[i].end());
    strata[i] = stratum_of(labels[i]);
  }

  // A photo's key is its path within the data set: the split stays when the folder moves.
  const fs::path home = source_home(source);
  std::vector<std::string> keys;
  keys.reserve(items.paths.size());
  for (const auto& p : items.paths) keys.push_back(path_within(p, home));
  SplitIndices parts;
  double applied_val_split = 0;
  if (splits_given) {
    for (size_t i = 0; i < items.split.size(); ++i) {
      std::vector<int64_t>& part = items.split[i] == 0   ? parts.train
                                   : items.split[i] == 1 ? parts.val
                                                         : parts.test;
      part.push_back(static_cast<int64_t>(i));
    }
    // A layout without val (or test) items has them carved out of train by a fraction asked
    // for (a train/ folder alone keeps all its photos by default).
    const double carve_val = parts.val.empty() ? std::max(options.val_split, 0.0) : 0.0;
    const double carve_test = parts.test.empty() ? options.test_split : 0.0;
    applied_val_split = carve_val;
    if (carve_val > 0 || carve_test > 0) {
      std::vector<int64_t> train_strata;
      std::vector<std::string> train_keys;
      for (const int64_t i : parts.train) {
        train_strata.push_back(strata[i]);
        train_keys.push_back(keys[i]);
      }
      const SplitIndices carved = split_stratified(train_strata, classes, carve_val, carve_test,
                                                   options.seed, &train_keys);
      const std::vector<int64_t> train = std::move(parts.train);
      parts.train.clear();
      for (const int64_t j : carved.train) parts.train.push_back(train[j]);
      for (const int64_t j : carved.val) parts.val.push_back(train[j]);
      for (const int64_t j : carved.test) parts.test.push_back(train[j]);  // still sorted
    }
    // A class seen only outside train gets an index (its items are still scored), but no
    // training signal: worth a warning, not an error.
    std::set<int64_t> trained;
    for (const int64_t i : parts.train) trained.insert(labels[i].begin(), labels[i].end());
    for (int s = 1; s <= 2 && options.need_train; ++s) {
      std::set<int64_t> seen;
      for (const int64_t i : s == 1 ? parts.val : parts.test) {
        for (const int64_t l : labels[i]) {
          if (!trained.count(l)) seen.insert(l);
        }
      }
      for (const int64_t l : seen) {
        warnings.push_back("class '" + classes[l] + "' has items in " + kSplitNames[s] +
                           " but none in train; it keeps index " + std::to_string(l) +
                           ", but the model cannot learn it");
      }
    }
  } else {
    applied_val_split = val_fraction(options);
    parts = split_stratified(strata, classes, val_fraction(options), options.test_split,
                             options.seed, &keys);
    if (val_fraction(options) > 0 && parts.val.empty()) {
      warnings.push_back("val_split " + std::to_string(val_fraction(options)) +
                         " leaves no validation items (too few items per class)");
    }
    if (options.test_split > 0 && parts.test.empty()) {
      warnings.push_back("test_split " + std::to_string(options.test_split) +
                         " leaves no test items (too few items per class)");
    }
  }
  VT_CHECK(!parts.train.empty() || !options.need_train, source, " has no training images; add "
           "images (", kPhotoExtensions, ") to its train split");
  // A class split down to a training photo or two is hardly learnt, and its scores on a
  // photo or two are noise. (A label subsample, smaller on purpose, says so itself.)
  if (options.need_train && options.labels_per_class == 0 && options.label_fraction >= 1.0 &&
      !multi_label) {
    std::vector<int64_t> in_train(classes.size(), 0), elsewhere(classes.size(), 0);
    for (const int64_t i : parts.train) ++in_train[labels[i].at(0)];
    for (const auto* part : {&parts.val, &parts.test}) {
      for (const int64_t i : *part) ++elsewhere[labels[i].at(0)];
    }
    for (size_t c = 0; c < classes.size(); ++c) {
      if (in_train[c] > 0 && in_train[c] < 3 && elsewhere[c] > 0) {
        warnings.push_back("class '" + classes[c] + "' has " + std::to_string(in_train[c]) +
                           " training photo" + (in_train[c] == 1 ? "" : "s") + " and " +
                           std::to_string(elsewhere[c]) + " in val/test: too few to learn it "
                           "well, and its scores are noise; add photos of it");
      }
    }
  }
  // A class with training photos but none in a held-out split (a rare class, or a split
  // column that leaves it out) is not scored there: its F1 reads 0 of 0 photos and the
  // split's macro-F1 averages over the other classes.
  if (options.need_train && !multi_label) {
    std::vector<bool> trained(classes.size(), false);
    for (const int64_t i : parts.train) trained[labels[i].at(0)] = true;
    for (int s = 1; s <= 2; ++s) {
      const auto& part = s == 1 ? parts.val : parts.test;
      if (part.empty()) continue;
      std::vector<bool> held(classes.size(), false);
      for (const int64_t i : part) held[labels[i].at(0)] = true;
      std::vector<std::string> missing;
      for (size_t c = 0; c < classes.size(); ++c) {
        if (trained[c] && !held[c]) missing.push_back(classes[c]);
      }
      if (missing.empty()) continue;
      warnings.push_back(std::to_string(missing.size()) + " class" +
                         (missing.size() == 1 ? " has" : "es have") + " no " + kSplitNames[s] +
                         " photos (" + quoted_list(missing) + "): " + kSplitNames[s] +
                         " scores cannot measure " + (missing.size() == 1 ? "it" : "them") +
                         ", and its macro-F1 averages over the other classes; add photos of " +
                         (missing.size() == 1 ? "it" : "them") + " to " + kSplitNames[s]);
    }
  }

  auto base = std::make_shared<FileDataset>(std::move(items.paths), std::move(labels), classes,
                                            multi_label, options.max_pixels);
  DataSplits out;
  out.classes = classes;
  out.multi_label = multi_label;
  out.val_split = applied_val_split;
  out.train = parts.train.empty() ? subset(base, {})
                                  : subsample(subset(base, std::move(parts.train)), options,
                                              warnings);
  if (!parts.val.empty()) out.val = subset(base, std::move(parts.val));
  if (!parts.test.empty()) out.test = subset(base, std::move(parts.test));
  out.warnings = std::move(warnings);
  return out;
}

// ---- ImageFolder --------------------------------------------------------------------------

bool is_image_file(const fs::path& p) {
  static const std::set<std::string> kExtensions = {".jpg", ".jpeg", ".jpe", ".jfif", ".png",
                                                    ".webp", ".bmp"};
  return kExtensions.count(lower(p.extension().string())) > 0;
}

/// Photo formats the decoders do not read, which a shop's folders may hold beside the others.
bool is_unread_photo_format(const fs::path& p) {
  static const std::set<std::string> kExtensions = {".gif",  ".tif", ".tiff", ".ppm", ".pgm",
                                                    ".pbm",  ".pnm", ".heic", ".heif", ".avif",
                                                    ".jp2",  ".jxl", ".svg"};
  return kExtensions.count(lower(p.extension().string())) > 0;
}

/// Sorted names of the visible sub-folders of `dir` (not the system's: is_system_entry).
std::vector<std::string> subfolders(const fs::path& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    std::error_code entry_ec;
    if (!is_system_entry(name) && it->is_directory(entry_ec)) out.push_back(name);
  }
  VT_CHECK(!ec, "cannot list the folder ", dir.string(), ": ", ec.message(),
           "; check that it exists and is readable");
  std::sort(out.begin(), out.end());
  return out;
}

/// Image files anywhere below `dir` (following links, as torchvision's os.walk does), sorted.
/// A link back to a folder already entered (a loop) is not followed again, and entries that
/// cannot be read (a broken link, a folder without permission) are passed over, and so are
/// the system's entries (is_system_entry): `hidden` counts the image files among them, and
/// `unread` the photos in formats the decoders do not read (is_unread_photo_format).
std::vector<std::string> images_below(const fs::path& dir, int64_t& hidden, int64_t& unread) {
  std::vector<std::string> out;
  EnteredFolders entered;
  entered.enter(dir);
  std::error_code ec;
  const auto options = fs::directory_options::follow_directory_symlink |
                       fs::directory_options::skip_permission_denied;
  for (fs::recursive_directory_iterator it(dir, options, ec), end; !ec && it != end;
       it.increment(ec)) {
    std::error_code entry_ec;
    const fs::file_status st = it->status(entry_ec);  // follows links
    if (entry_ec) continue;
    if (is_system_entry(it->path().filename().string())) {
      if (fs::is_directory(st)) {
        it.disable_recursion_pending();
      } else if (is_image_file(it->path())) {
        ++hidden;
      }
    } else if (fs::is_directory(st)) {
      if (!entered.enter(it->path())) it.disable_recursion_pending();
    } else if (fs::is_regular_file(st) && is_image_file(it->path())) {
      out.push_back(it->path().string());
    } else if (fs::is_regular_file(st) && is_unread_photo_format(it->path())) {
      ++unread;
    }
  }
  VT_CHECK(!ec, "cannot list the folder ", dir.string(), ": ", ec.message(),
           "; check that it exists and is readable");
  std::sort(out.begin(), out.end());
  return out;
}

/// Images directly in `dir` (not in a class folder), which ImageFolder ignores.
int64_t loose_images(const fs::path& dir) {
  int64_t n = 0;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::error_code entry_ec;
    if (it->is_regular_file(entry_ec) && is_image_file(it->path()) &&
        !is_system_entry(it->path().filename().string())) {
      ++n;
    }
  }
  return n;
}

/// Adds the class folders of `dir` to `items` with split `split`.
void scan_class_folders(const fs::path& dir, int split, FileItems& items,
                        std::set<std::string>& classes, std::vector<std::string>& warnings) {
  if (const int64_t loose = loose_images(dir); loose > 0) {
    warnings.push_back(std::to_string(loose) + " images directly in " + dir.string() +
                       " are not in a class folder and are ignored; move them into " +
                       dir.string() + "/<class>/");
  }
  int64_t hidden = 0, unread = 0;
  for (const std::string& cls : subfolders(dir)) {
    classes.insert(cls);
    const std::vector<std::string> files = images_below(dir / cls, hidden, unread);
    if (files.empty()) {
      warnings.push_back("class folder " + (dir / cls).string() +
                         " has no images (" + kPhotoExtensions + "); class '" + cls +
                         "' is kept but has no items there");
    }
    for (const std::string& f : files) {
      items.paths.push_back(f);
      items.labels.push_back({cls});
      items.split.push_back(split);
    }
  }
  if (hidden > 0) warnings.push_back(image::hidden_photos_warning(hidden, dir.string()));
  if (unread > 0) {
    warnings.push_back(std::to_string(unread) + " photo" + (unread == 1 ? "" : "s") +
                       " in class folders of " + dir.string() + " (GIF, TIFF, PPM, HEIC, "
                       "AVIF or another format Vitrine does not read) " +
                       (unread == 1 ? "was" : "were") + " skipped: convert them to JPEG, PNG "
                       "or WebP (" + kPhotoExtensions + ") to use them");
  }
}

DataSplits open_image_folder(const fs::path& root, const DataOptions& options) {
  FileItems items;
  std::set<std::string> classes;
  std::vector<std::string> warnings;
  // Evaluation reads held-out photos alone: root/test/<class>/ without train/ is split too.
  const bool split_layout =
      fs::is_directory(root / "train") ||
      (!options.need_train && (fs::is_directory(root / "val") || fs::is_directory(root / "test")));
  if (split_layout) {
    for (const std::string& name : subfolders(root)) {
      if (name != "train" && name != "val" && name != "test") {
        warnings.push_back("folder " + (root / name).string() +
                           " is ignored: beside train/ only val/ and test/ are read");
      }
    }
    for (int s = 0; s < 3; ++s) {
      const fs::path dir = root / kSplitNames[s];
      if (fs::is_directory(dir)) scan_class_folders(dir, s, items, classes, warnings);
    }
  } else {
    VT_CHECK(!fs::is_directory(root / "val") && !fs::is_directory(root / "test"), root.string(),
             " has val/ or test/ but no train/ folder; put the training images in ",
             (root / "train").string(), "/<class>/, or all images in ", root.string(),
             "/<class>/ to split them automatically");
    scan_class_folders(root, -1, items, classes, warnings);
  }
  VT_CHECK(!classes.empty(), root.string(), " has no class folders; put the images in ",
           root.string(), "/<class>/ (or ", root.string(), "/train/<class>/ with val/ and test/)");
  return finish_files(std::move(items), std::move(classes), /*multi_label=*/false, split_layout,
                      options, std::move(warnings), root.string());
}

// ---- CSV manifests ------------------------------------------------------------------------

std::vector<std::string> split_labels(const std::string& field) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= field.size()) {
    size_t end = field.find('|', start);
    if (end == std::string::npos) end = field.size();
    std::string label = trim(field.substr(start, end - start));
    if (!label.empty()) out.push_back(std::move(label));
    start = end + 1;
  }
  return out;
}

/// The first 5 of `lines` (each with `suffix`) as warnings and, when there are more, one that
/// counts them: "<count><what> (the first 5 above)".
void warn_first_five(std::vector<std::string>& warnings, const std::vector<std::string>& lines,
                     const std::string& suffix, const std::string& what) {
  constexpr size_t kShown = 5;
  for (size_t i = 0; i < lines.size() && i < kShown; ++i) warnings.push_back(lines[i] + suffix);
  if (lines.size() > kShown) {
    warnings.push_back(std::to_string(lines.size()) + what + " (the first 5 above)");
  }
}

DataSplits open_csv(const std::string& file, const DataOptions& options) {
  const std::vector<CsvRecord> records = parse_csv(read_text_file(file), file);
  VT_CHECK(!records.empty(), file,
           " is empty; start it with a header line: path,label (or path,labels for multi-label, "
           "and an optional split column)");
  const CsvRecord& header = records.front();
  int path_col = -1, label_col = -1, labels_col = -1, split_col = -1;
  for (size_t c = 0; c < header.fields.size(); ++c) {
    const std::string name = lower(header.fields[c]);
    int* col = name == "path"     ? &path_col
               : name == "label"  ? &label_col
               : name == "labels" ? &labels_col
               : name == "split"  ? &split_col
                                  : nullptr;
    if (col == nullptr) continue;  // other columns (sku, title, ...) are the user's own
    VT_CHECK(*col < 0, file, ":", header.line, ": the column '", name,
             "' appears twice in the header; keep one");
    *col = static_cast<int>(c);
  }
  if (path_col < 0 || (label_col >= 0) == (labels_col >= 0)) {
    std::string got;
    for (const std::string& f : header.fields) got += (got.empty() ? "" : ",") + f;
    VT_FAIL(file, ":", header.line,
            ": the header must name a path column and either a label "
            "column (single-label) or a labels column (multi-label, '|'-separated), got '",
            got, "'; start the file with path,label or path,labels");
  }
  const bool multi_label = labels_col >= 0;
  const bool splits_given = split_col >= 0;
  const fs::path folder = fs::path(file).parent_path();

  FileItems items;
  // Rows whose file is missing (a product photo deleted since the manifest was written) are
  // skipped and named; a manifest none of whose files exist is an error (a wrong base folder).
  std::vector<std::string> missing;
  // A photo named on several rows is one item: a multi-label manifest may give its labels a
  // row each (merged); single-label rows that disagree keep the first label (label noise, or
  // two products sharing a photo) and are named.
  std::map<std::string, std::pair<size_t, int64_t>> seen;  ///< path -> item, line
  int64_t repeats = 0;
  std::vector<std::string> conflicts;
  // A cell that looks written for the other column: "a|b" under label (one class named
  // "a|b"), "a;b" or "a,b" under labels (one class, where '|' separates). Counted, first shown.
  int64_t odd_cells = 0;
  std::string first_odd;
  for (size_t r = 1; r < records.size(); ++r) {
    const CsvRecord& rec = records[r];
    VT_CHECK(rec.fields.size() == header.fields.size(), file, ":", rec.line, ": expected ",
             header.fields.size(), " fields, got ", rec.fields.size(),
             "; quote fields that contain commas (\"a,b\")");
    const std::string& given = rec.fields[path_col];
    VT_CHECK(!given.empty(), file, ":", rec.line, ": the path is empty; name an image file");
    const fs::path path = fs::path(given).is_absolute() ? fs::path(given) : folder / given;
    std::error_code ec;
    if (!fs::is_regular_file(path, ec)) {
      missing.push_back(file + ":" + std::to_string(rec.line) + ": image '" + given +
                        "' not found (looked for " + path.string() + ")");
      VT_CHECK(!options.strict, missing.back(), "; fix the path (relative paths start at the "
               "manifest's folder) or remove the row");
      continue;
    }
    std::vector<std::string> names;
    const std::string& cell = rec.fields[multi_label ? labels_col : label_col];
    if (cell.find_first_of(multi_label ? ";," : "|") != std::string::npos) {
      if (odd_cells++ == 0) first_odd = "line " + std::to_string(rec.line) + ": '" + cell + "'";
    }
    if (multi_label) {
      names = split_labels(cell);
    } else {
      VT_CHECK(!rec.fields[label_col].empty(), file, ":", rec.line,
               ": the label is empty; give every row a class name");
      names = {rec.fields[label_col]};
    }
    int split = -1;
    if (splits_given) {
      const std::string s = lower(rec.fields[split_col]);
      split = s == "train" ? 0 : s == "val" ? 1 : s == "test" ? 2 : -1;
      VT_CHECK(split >= 0, file, ":", rec.line, ": unknown split '", rec.fields[split_col],
               "'; use train, val or test");
    }
    const auto [it, fresh] = seen.emplace(path.lexically_normal().string(),
                                          std::make_pair(items.paths.size(), rec.line));
    if (!fresh) {
      ++repeats;
      auto& labels = items.labels[it->second.first];
      const std::string where = file + ":" + std::to_string(rec.line) + ": '" + given + "' ";
      const std::string earlier = std::to_string(it->second.second);
      if (items.split[it->second.first] != split) {
        conflicts.push_back(where + "is put in split '" + rec.fields[split_col] + "' here and in "
                            "another at line " + earlier + "; the first is kept");
      }
      if (multi_label) {
        labels.insert(labels.end(), names.begin(), names.end());  // duplicates go later
      } else if (labels.front() != names.front()) {
        conflicts.push_back(where + "is labelled '" + names.front() + "' here and '" +
                            labels.front() + "' at line " + earlier + "; the first is kept");
      }
      continue;
    }
    items.paths.push_back(path.string());
    items.labels.push_back(std::move(names));
    items.split.push_back(split);
  }
  std::vector<std::string> warnings;
  if (repeats > 0) {
    warnings.push_back(std::to_string(repeats) + " rows of " + file + " name a photo an earlier "
                       "row names; each photo is one item" +
                       (multi_label ? std::string(" with the labels of all its rows") : ""));
  }
  warn_first_five(warnings, conflicts, "", " rows of " + file + " disagree with an earlier row "
                  "on a photo's label or split");
  if (odd_cells > 0) {
    const std::string rows = std::to_string(odd_cells) + (odd_cells == 1 ? " row" : " rows") +
                             " of " + file + " (first at " + first_odd + ")";
    const bool one = odd_cells == 1;
    warnings.push_back(multi_label
                           ? rows + (one ? " separates" : " separate") + " labels with ';' or "
                                 "','; each such cell is one class name: separate labels with "
                                 "'|' (a|b)"
                           : rows + (one ? " has" : " have") + " '|' in the label, which is one "
                                 "class name in a label column; for photos with several labels "
                                 "name the column labels ('|'-separated)");
  }
  if (!missing.empty()) {
    VT_CHECK(!items.paths.empty(), missing.front(), ", and so is every other image of ", file,
             "; fix the paths (relative paths start at the manifest's folder)");
    warn_first_five(warnings, missing, ", skipped",
                    " rows of " + file + " name images that do not exist, skipped");
  }
  return finish_files(std::move(items), {}, multi_label, splits_given, options,
                      std::move(warnings), file);
}

// ---- Fashion-MNIST ------------------------------------------------------------------------

const std::vector<std::string>& fashion_mnist_classes() {
  static const std::vector<std::string> kClasses = {
      "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
      "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
  return kClasses;
}

constexpr const char* kInstallHint =
    "install it with `apt-get install dataset-fashion-mnist`, or pass another directory "
    "(--fashion-mnist-dir) holding train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
    "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz (gzipped or not)";

struct GzCloser {
  void operator()(gzFile_s* f) const { gzclose(f); }
};

/// zlib's error for `f` without the "path: " it starts with; sets `code`.
std::string gz_message(gzFile_s* f, const std::string& path, int& code) {
  std::string message = gzerror(f, &code);
  if (message.compare(0, path.size() + 2, path + ": ") == 0) message.erase(0, path.size() + 2);
  return message;
}

/// The whole of `dir`/`name`.gz, or of `dir`/`name` when there is no .gz (gzread passes
/// uncompressed files through).
std::vector<uint8_t> read_idx_file(const fs::path& dir, const std::string& name,
                                   std::string& path_out) {
  fs::path path = dir / (name + ".gz");
  if (!fs::is_regular_file(path)) path = dir / name;
  VT_CHECK(fs::is_regular_file(path), "fashion-mnist: ", dir.string(), " has no ", name,
           ".gz (nor ", name, "); ", kInstallHint);
  path_out = path.string();
  std::unique_ptr<gzFile_s, GzCloser> f(gzopen(path_out.c_str(), "rb"));
  VT_CHECK(f != nullptr, "fashion-mnist: cannot open ", path_out, "; check its permissions");
  gzbuffer(f.get(), 1 << 17);
  std::vector<uint8_t> out;
  constexpr unsigned kChunk = 1 << 20;
  for (;;) {
    const size_t old = out.size();
    out.resize(old + kChunk);
    const int got = gzread(f.get(), out.data() + old, kChunk);
    int code = Z_OK;
    const std::string message = gz_message(f.get(), path_out, code);
    VT_CHECK(got >= 0 && (code == Z_OK || code == Z_STREAM_END), "fashion-mnist: ", path_out,
             " is damaged (", message, "); ", kInstallHint);
    out.resize(old + static_cast<size_t>(got));
    if (got == 0) break;
  }
  int code = Z_OK;
  const std::string message = gz_message(f.get(), path_out, code);
  // Z_BUF_ERROR at the end: the gzip stream stops before its end (a truncated download).
  VT_CHECK(code == Z_OK || code == Z_STREAM_END, "fashion-mnist: ", path_out, " is damaged (",
           message, "); ", kInstallHint);
  return out;
}

uint32_t be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}

/// Images and labels of one Fashion-MNIST part ("train" or "t10k") as a data set.
std::shared_ptr<Dataset> read_fashion_mnist_part(const fs::path& dir, const std::string& part,
                                                 const std::string& split_name) {
  std::string images_path, labels_path;
  auto images = std::make_shared<std::vector<uint8_t>>(
      read_idx_file(dir, part + "-images-idx3-ubyte", images_path));
  const std::vector<uint8_t> labels = read_idx_file(dir, part + "-labels-idx1-ubyte", labels_path);

  VT_CHECK(images->size() >= kIdxImageHeader && be32(images->data()) == 0x00000803,
           "fashion-mnist: ", images_path, " is not an IDX image file (magic number ",
           images->size() >= 4 ? be32(images->data()) : 0, ", expected 2051); ", kInstallHint);
  const uint32_t count = be32(images->data() + 4);
  const uint32_t rows = be32(images->data() + 8);
  const uint32_t cols = be32(images->data() + 12);
  VT_CHECK(rows == kIdxSide && cols == kIdxSide, "fashion-mnist: ", images_path, " holds ", rows,
           "x", cols, " images, expected 28x28; ", kInstallHint);
  VT_CHECK(images->size() == kIdxImageHeader + uint64_t{count} * kIdxPixels,
           "fashion-mnist: ", images_path, " has ", images->size(),
           " bytes, but its header announces ", count, " images (",
           kIdxImageHeader + uint64_t{count} * kIdxPixels, " bytes); ", kInstallHint);

  VT_CHECK(labels.size() >= 8 && be32(labels.data()) == 0x00000801, "fashion-mnist: ", labels_path,
           " is not an IDX label file (magic number ", labels.size() >= 4 ? be32(labels.data()) : 0,
           ", expected 2049); ", kInstallHint);
  const uint32_t label_count = be32(labels.data() + 4);
  VT_CHECK(labels.size() == 8 + uint64_t{label_count}, "fashion-mnist: ", labels_path, " has ",
           labels.size(), " bytes, but its header announces ", label_count, " labels; ",
           kInstallHint);
  VT_CHECK(label_count == count, "fashion-mnist: ", images_path, " has ", count, " images but ",
           labels_path, " has ", label_count, " labels; ", kInstallHint);
  std::vector<int64_t> values(count);
  for (uint32_t i = 0; i < count; ++i) {
    values[i] = labels[8 + i];
    VT_CHECK(values[i] < 10, "fashion-mnist: ", labels_path, " gives item ", i, " the label ",
             values[i], ", but there are 10 classes (0-9); ", kInstallHint);
  }
  return std::make_shared<IdxDataset>(std::move(images), std::move(values),
                                      "fashion-mnist:" + split_name + ":", fashion_mnist_classes());
}

DataSplits open_fashion_mnist(const DataOptions& options) {
  const fs::path dir = options.fashion_mnist_dir;
  VT_CHECK(fs::is_directory(dir), "fashion-mnist: the directory ", dir.string(),
           " does not exist; ", kInstallHint);
  std::shared_ptr<Dataset> train = read_fashion_mnist_part(dir, "train", "train");
  std::shared_ptr<Dataset> test = read_fashion_mnist_part(dir, "t10k", "test");
  VT_CHECK(train->size() > 0, "fashion-mnist: the training files in ", dir.string(),
           " hold no images; ", kInstallHint);
  DataSplits out;
  out.classes = fashion_mnist_classes();
  out.val_split = val_fraction(options);
  if (val_fraction(options) > 0) {
    SplitIndices parts = split_stratified(strata_of(*train), out.classes, val_fraction(options),
                                          0.0, options.seed);
    if (!parts.val.empty()) out.val = subset(train, std::move(parts.val));
    train = subset(train, std::move(parts.train));
  }
  out.train = subsample(train, options, out.warnings);
  if (test->size() > 0) out.test = test;
  return out;
}

}  // namespace

namespace {

class ConcatDataset : public Dataset {
 public:
  ConcatDataset(std::shared_ptr<Dataset> a, std::shared_ptr<Dataset> b)
      : a_(std::move(a)), b_(std::move(b)) {
    classes_ = a_->classes();
    multi_label_ = a_->multi_label();
  }
  int64_t size() const override { return a_->size() + b_->size(); }
  cv::Mat image(int64_t i) const override {
    check_index(i, size());
    return i < a_->size() ? a_->image(i) : b_->image(i - a_->size());
  }
  std::vector<int64_t> labels(int64_t i) const override {
    check_index(i, size());
    return i < a_->size() ? a_->labels(i) : b_->labels(i - a_->size());
  }
  std::string name(int64_t i) const override {
    check_index(i, size());
    return i < a_->size() ? a_->name(i) : b_->name(i - a_->size());
  }

 private:
  std::shared_ptr<Dataset> a_, b_;
};

class RelabelledDataset : public Dataset {
 public:
  RelabelledDataset(std::shared_ptr<Dataset> base, std::vector<std::string> classes,
                    std::vector<int64_t> map)
      : base_(std::move(base)), map_(std::move(map)) {
    classes_ = std::move(classes);
    multi_label_ = base_->multi_label();
  }
  int64_t size() const override { return base_->size(); }
  cv::Mat image(int64_t i) const override { return base_->image(i); }
  std::vector<int64_t> labels(int64_t i) const override {
    std::vector<int64_t> out;
    for (const int64_t c : base_->labels(i)) out.push_back(map_[static_cast<size_t>(c)]);
    std::sort(out.begin(), out.end());
    return out;
  }
  std::string name(int64_t i) const override { return base_->name(i); }

 private:
  std::shared_ptr<Dataset> base_;
  std::vector<int64_t> map_;  ///< base class index -> index into classes_
};

}  // namespace

std::shared_ptr<Dataset> with_classes(std::shared_ptr<Dataset> base,
                                      const std::vector<std::string>& classes) {
  VT_CHECK(base != nullptr, "relabelling a null data set; open a data set first");
  if (base->classes() == classes) return base;
  std::vector<int64_t> map;
  std::vector<std::string> in_use;  // read only when some class is not among `classes`
  for (const auto& c : base->classes()) {
    const auto it = std::find(classes.begin(), classes.end(), c);
    if (it == classes.end()) {
      if (in_use.empty()) in_use = classes_with_items(*base);
      // A class no item has (an empty folder) needs no place among them.
      VT_CHECK(std::find(in_use.begin(), in_use.end(), c) == in_use.end(), "the class '", c,
               "' of the data is not among the ", classes.size(), " classes expected here");
      map.push_back(-1);
      continue;
    }
    map.push_back(it - classes.begin());
  }
  return std::make_shared<RelabelledDataset>(std::move(base), classes, std::move(map));
}

std::vector<std::string> classes_with_items(const Dataset& data) {
  std::vector<bool> seen(data.classes().size(), false);
  for (int64_t i = 0; i < data.size(); ++i) {
    for (const int64_t c : data.labels(i)) seen.at(static_cast<size_t>(c)) = true;
  }
  std::vector<std::string> out;
  for (size_t c = 0; c < seen.size(); ++c) {
    if (seen[c]) out.push_back(data.classes()[c]);
  }
  return out;
}

std::shared_ptr<Dataset> concat(std::shared_ptr<Dataset> a, std::shared_ptr<Dataset> b) {
  VT_CHECK(a != nullptr && b != nullptr, "concatenation of a null data set; open both first");
  VT_CHECK(a->classes() == b->classes() && a->multi_label() == b->multi_label(),
           "only data sets with the same classes can be joined");
  return std::make_shared<ConcatDataset>(std::move(a), std::move(b));
}

std::shared_ptr<Dataset> subset(std::shared_ptr<Dataset> base, std::vector<int64_t> indices) {
  VT_CHECK(base != nullptr, "subset of a null data set; open a data set first");
  if (const auto* inner = dynamic_cast<const SubsetDataset*>(base.get())) {
    for (int64_t& i : indices) {
      check_index(i, inner->size());
      i = inner->indices()[i];
    }
    base = inner->base();
  } else {
    for (const int64_t i : indices) check_index(i, base->size());
  }
  return std::make_shared<SubsetDataset>(std::move(base), std::move(indices));
}

std::string items_digest(const Dataset& d, const std::string& source) {
  const fs::path home = source_home(source);
  std::string names;
  for (int64_t i = 0; i < d.size(); ++i) names += path_within(d.name(i), home) + '\n';
  return sha256_hex(names);
}

std::vector<int64_t> permutation(int64_t n, uint64_t seed) {
  VT_CHECK(n >= 0, "permutation of ", n, " items; the count must not be negative");
  std::vector<int64_t> out(n);
  for (int64_t i = 0; i < n; ++i) out[i] = i;
  std::mt19937_64 rng(seed);
  for (int64_t i = n - 1; i > 0; --i) std::swap(out[i], out[randint(rng, i + 1)]);
  return out;
}

DataSplits open_data(const DataOptions& options) {
  check_options(options);
  if (options.source == "fashion-mnist") return open_fashion_mnist(options);
  if (ends_with(lower(options.source), ".csv")) {
    VT_CHECK(fs::is_regular_file(options.source), "the manifest ", options.source,
             " does not exist; check the path (a CSV manifest, an ImageFolder root or "
             "fashion-mnist)");
    return open_csv(options.source, options);
  }
  VT_CHECK(fs::is_directory(options.source), "the data source ", options.source,
           " does not exist or is not a folder; give an ImageFolder root, a .csv manifest or "
           "fashion-mnist");
  return open_image_folder(options.source, options);
}

DataSplits open_pretraining_data(const DataOptions& options) {
  const fs::path root(options.source);
  // Class folders (and their labels, for the k-NN monitor) when the root holds only those
  // or a train/ folder (whose val/ and test/ stay out); otherwise every photo below it,
  // whatever the folders.
  if (options.source == "fashion-mnist" || !fs::is_directory(root) ||
      fs::is_directory(root / "train") || (!subfolders(root).empty() && loose_images(root) == 0)) {
    return open_data(options);
  }
  DataSplits out;
  std::vector<std::string> paths;
  int64_t unsupported = 0;
  for (auto& p : image::expand_image_paths({options.source}, &out.warnings)) {
    if (is_image_file(p)) {
      paths.push_back(std::move(p));
    } else {
      ++unsupported;  // GIF and TIFF, which would fail every epoch
    }
  }
  if (unsupported > 0) {
    out.warnings.push_back(std::to_string(unsupported) + " GIF or TIFF files in " +
                           options.source + " are skipped: convert them to PNG or JPEG to "
                           "learn from them");
  }
  VT_CHECK(!paths.empty(), options.source, " holds no images (", kPhotoExtensions, ")");
  const size_t n = paths.size();
  out.train = std::make_shared<FileDataset>(std::move(paths), std::vector<std::vector<int64_t>>(n),
                                            std::vector<std::string>{}, /*multi_label=*/false,
                                            options.max_pixels);
  return out;
}

}  // namespace vitrine::data
