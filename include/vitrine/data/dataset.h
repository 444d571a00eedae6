// Labelled image collections: ImageFolder trees, CSV manifests and Fashion-MNIST's IDX files,
// their train / val / test splits and label subsamples. Images are decoded on demand, so
// opening a data set reads only names and labels.
#pragma once

#include <opencv2/core.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace vitrine::data {

/// A labelled image collection. Images are decoded on demand (thread-safe const methods).
class Dataset {
 public:
  virtual ~Dataset() = default;
  virtual int64_t size() const = 0;
  /// 8-bit RGB (CV_8UC3) or grey (CV_8UC1), owned by the caller; throws vitrine::Error for a
  /// bad file (the message names it) or an index out of range.
  virtual cv::Mat image(int64_t i) const = 0;
  /// Class indices into classes(): exactly one for single-label data, any number (sorted, no
  /// repeats) for multi-label data.
  virtual std::vector<int64_t> labels(int64_t i) const = 0;
  /// File path, or e.g. "fashion-mnist:train:123".
  virtual std::string name(int64_t i) const = 0;
  const std::vector<std::string>& classes() const { return classes_; }
  bool multi_label() const { return multi_label_; }

 protected:
  std::vector<std::string> classes_;
  bool multi_label_ = false;
};

/// A view of some items of another data set (a split, a label subsample): item i is
/// base item indices[i]. Same classes as `base`. A subset of a subset refers to the first base.
std::shared_ptr<Dataset> subset(std::shared_ptr<Dataset> base, std::vector<int64_t> indices);
/// The same items with their labels expressed in `classes` (matched by name; every class of
/// `base` that labels an item must be among them, an empty folder's need not): to evaluate a
/// model on data holding some of its classes, or to join data sets whose class lists differ.
/// Returns `base` when the classes are equal.
std::shared_ptr<Dataset> with_classes(std::shared_ptr<Dataset> base,
                                      const std::vector<std::string>& classes);
/// The classes at least one item carries, in the data's order (reads every item's labels).
std::vector<std::string> classes_with_items(const Dataset& data);
/// The items of `a` then those of `b`; both must have the same classes.
std::shared_ptr<Dataset> concat(std::shared_ptr<Dataset> a, std::shared_ptr<Dataset> b);

/// 0 .. n-1 in an order drawn from `seed` alone, the same on every platform and standard
/// library (Fisher-Yates over std::mt19937_64 with an unbiased integer draw).
std::vector<int64_t> permutation(int64_t n, uint64_t seed);

/// SHA-256 of the items' names in order, a file's name being its path within the folder (or
/// the manifest's folder) of `source`: which photos a run learns from, wherever the folder
/// lies.
std::string items_digest(const Dataset& d, const std::string& source);

struct DataOptions {
  /// An ImageFolder root (root/{train,val,test}/<class>/*, or root/<class>/* split here), a
  /// CSV manifest (.csv), or "fashion-mnist".
  std::string source;
  /// Fractions split off per class for a root of class folders alone or a CSV without a split
  /// column (val_split -1: 0.1). Where the layout has no val (or test) items, a train/ folder
  /// alone or a split column without them, a fraction given (>= 0) is carved out of its train
  /// items; by default such a layout keeps them all. For Fashion-MNIST, val_split (-1: 0.1) is
  /// carved out of its training set (it has its own test set, so test_split is not used
  /// there). Rounded per class, half up, keeping at least one training item per class.
  double val_split = -1;
  double test_split = 0.0;
  uint64_t seed = 0;  ///< for the splits and the label subsample
  /// Photos with more pixels are skipped (and named) without decoding them: one of 100 MP
  /// takes 300 MB as it is decoded.
  int64_t max_pixels = 100'000'000;
  /// > 0: keep this many training items per class. With the same seed, a smaller subsample is
  /// contained in a larger one.
  int64_t labels_per_class = 0;
  /// < 1: keep this fraction of training items (per class, rounded up).
  double label_fraction = 1.0;
  std::string fashion_mnist_dir = "/usr/share/datasets/fashion-mnist";
  /// A CSV manifest row naming a missing file is an error instead of a skipped row (with a
  /// warning), as unreadable images stop a --strict run.
  bool strict = false;
  /// False where only held-out photos are read (`vitrine eval`): a root of test/ (or val/)
  /// alone, or a manifest without training rows, is then accepted.
  bool need_train = true;
};

struct DataSplits {
  std::shared_ptr<Dataset> train, val, test;  ///< val/test may be null when absent (or empty)
  std::vector<std::string> classes;
  bool multi_label = false;
  std::vector<std::string> warnings;  ///< e.g. empty class folders, labels unseen in train
  /// The validation fraction carved out of the training photos as applied: an unset
  /// val_split resolved (0.1, or 0 beside a layout that keeps its photos), 0 where the layout
  /// has validation photos of its own. What a run records, so that the default and the same
  /// value given read as one setting.
  double val_split = 0;
};

/// Opens a data set and splits it. Classes are sorted by name (torchvision's ImageFolder
/// convention) and shared by all splits. Splits and subsamples are stratified by class (by the
/// first label of a multi-label item) and depend only on `seed`, each class's name and, in a
/// folder or manifest, each photo's path within it: a class keeps its split when other
/// classes are added, and a photo added to a class or removed from it moves at most a few
/// of the class's others from one split to another. A class name that is not UTF-8 is read
/// as Windows-1252 (and warned about). Files with extensions other than .jpg,
/// .jpeg, .jpe, .jfif, .png, .webp and .bmp (any case) are ignored in folders, and so are
/// the system's entries (is_system_entry). Throws vitrine::Error for a missing source, a
/// malformed manifest (with its line number), a manifest row naming a missing file when
/// `strict` (otherwise the row is skipped, with a warning), bad or missing IDX files, no
/// training items, or invalid options.
DataSplits open_data(const DataOptions& options);

/// Unlabelled images for self-supervised pretraining: a folder of photos (searched
/// recursively, whatever its folders) as one unlabelled training split, unless it holds
/// class folders and no photo of its own; that folder and any other source open as
/// open_data does (their labels, where they have them, only measure).
DataSplits open_pretraining_data(const DataOptions& options);

}  // namespace vitrine::data
