// Data sets (ImageFolder, CSV manifests, Fashion-MNIST IDX), splits and label subsamples, the
// multi-threaded loader, and the training augmentations. Every input is made here, in a
// temporary folder or in memory.
#include "test_util.h"

#include "vitrine/core/csv.h"
#include "vitrine/core/error.h"
#include "vitrine/core/json.h"
#include "vitrine/core/text.h"
#include "vitrine/data/dataset.h"
#include "vitrine/data/duplicates.h"
#include "vitrine/data/loader.h"
#include "vitrine/image/augment.h"
#include "vitrine/image/transform.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <zlib.h>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <numeric>
#include <set>
#include <string>
#include <thread>
#include <vector>

using vitrine::test::error_of;

namespace {

namespace fs = std::filesystem;
using vitrine::data::Batch;
using vitrine::data::DataOptions;
using vitrine::data::Dataset;
using vitrine::data::DataSplits;
using vitrine::data::Loader;
using vitrine::data::LoaderOptions;
using vitrine::data::open_data;
using vitrine::image::TrainTransform;

/// A fresh temporary folder, removed with its content when the test ends.
class TempDir {
 public:
  explicit TempDir(const std::string& name) : path_(vitrine::test::temp_dir(name)) {}
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};


bool any_contains(const std::vector<std::string>& lines, const std::string& part) {
  for (const auto& l : lines) {
    if (l.find(part) != std::string::npos) return true;
  }
  return false;
}

cv::Mat noise(int w, int h, int channels, unsigned seed) {
  cv::Mat m(h, w, CV_8UC(channels));
  cv::RNG rng(seed);
  rng.fill(m, cv::RNG::UNIFORM, 0, 256);
  return m;
}

void write_image(const fs::path& path, const cv::Mat& m) {
  fs::create_directories(path.parent_path());
  ASSERT_TRUE(cv::imwrite(path.string(), m)) << path;
}

/// root/<class>/<class>_<k>.png for each (class, count).
void make_classes(const fs::path& root, const std::map<std::string, int>& counts) {
  unsigned seed = 1;
  for (const auto& [cls, n] : counts) {
    fs::create_directories(root / cls);
    for (int k = 0; k < n; ++k) {
      write_image(root / cls / (cls + "_" + std::to_string(k) + ".png"), noise(6, 5, 3, seed++));
    }
  }
}

void write_text(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  std::ofstream(path, std::ios::binary) << text;
}

std::vector<std::string> names_of(const Dataset& d) {
  std::vector<std::string> out;
  for (int64_t i = 0; i < d.size(); ++i) out.push_back(d.name(i));
  return out;
}

std::map<int64_t, int64_t> class_counts(const Dataset& d) {
  std::map<int64_t, int64_t> out;
  for (int64_t i = 0; i < d.size(); ++i) ++out[d.labels(i).at(0)];
  return out;
}

/// The class folder an item's path lies in.
std::string folder_of(const std::string& path) {
  return fs::path(path).parent_path().filename().string();
}

}  // namespace

// ---- ImageFolder ------------------------------------------------------------------------

// Terminal tables pad names by the columns they take, not their bytes.
TEST(Text, DisplayWidthCountsColumnsNotBytes) {
  EXPECT_EQ(vitrine::display_width("bags"), 4u);
  EXPECT_EQ(vitrine::display_width("Sacs \xc3\xa0 main"), 11u);      // "Sacs à main"
  EXPECT_EQ(vitrine::display_width("gr\xc3\xb6\xc3\x9f" "er"), 6u);  // "größer"
  EXPECT_EQ(vitrine::display_width("\xe9\x9e\x8b"), 2u);             // "鞋": wide
  EXPECT_EQ(vitrine::display_width("\xff" "a"), 2u);                  // a stray byte: one
  EXPECT_EQ(vitrine::pad_right("Sacs \xc3\xa0 main", 13), "Sacs \xc3\xa0 main  ");
  EXPECT_EQ(vitrine::pad_right("long name", 4), "long name");
}

TEST(Text, NfcComposesWhatLooksAlike) {
  EXPECT_EQ(vitrine::nfc("Cre\xcc\x80me"), "Cr\xc3\xa8me");    // e + U+0300 is è
  EXPECT_EQ(vitrine::nfc("Cr\xc3\xa8me"), "Cr\xc3\xa8me");     // already composed
  EXPECT_EQ(vitrine::nfc("bags"), "bags");
  EXPECT_EQ(vitrine::nfc("\xea\xb0\x80"), "\xea\xb0\x80");      // 가 stays one character
  EXPECT_EQ(vitrine::nfc("\xe1\x84\x80\xe1\x85\xa1"), "\xea\xb0\x80");  // its jamo compose
  EXPECT_EQ(vitrine::nfc("Caf\xe9"), "Caf\xe9");                 // not UTF-8: left as is
}

TEST(Text, QuotedListNamesItemsAndCutsLongLists) {
  EXPECT_EQ(vitrine::quoted_list({}), "");
  EXPECT_EQ(vitrine::quoted_list({"bag", "shoe"}), "'bag', 'shoe'");
  EXPECT_EQ(vitrine::quoted_list({"SKU 'a'", "category 'b'"}, ""), "SKU 'a', category 'b'");
  std::vector<std::string> many;
  for (int i = 0; i < 1000; ++i) many.push_back("class_" + std::to_string(i));
  const std::string cut = vitrine::quoted_list(many);
  EXPECT_LT(cut.size(), 240u);
  const auto shown = static_cast<size_t>(std::count(cut.begin(), cut.end(), ','));  // joins + 1
  EXPECT_CONTAINS(cut, ", ... (" + std::to_string(1000 - shown) + " more)");
  EXPECT_EQ(cut.find("'class_0', 'class_1'"), 0u) << cut;
  // One name longer than the limit is cut too, between UTF-8 characters ("é" is 2 bytes).
  std::string accents;
  for (int i = 0; i < 200; ++i) accents += "\xC3\xA9";
  const std::string one = vitrine::quoted_list({accents}, "'", 11);
  EXPECT_EQ(one, "'\xC3\xA9\xC3\xA9\xC3\xA9\xC3\xA9\xC3\xA9...'");
}

TEST(Json, NestingIsCountedOutsideStringsOnly) {
  // Brackets and escaped quotes inside strings are text, not nesting.
  const std::string text = R"({"a": "[[[[\"{{{{", "b": [[1]]})";
  EXPECT_EQ(vitrine::parse_json(text, "t")["b"][0][0], 1);
  const std::string deep = std::string(65, '[') + std::string(65, ']');
  EXPECT_CONTAINS(vitrine::test::error_of([&] { vitrine::parse_json(deep, "body"); }),
                  "body: JSON nested deeper than 64 levels");
  const std::string ok = std::string(64, '[') + std::string(64, ']');
  EXPECT_TRUE(vitrine::parse_json(ok, "body").is_array());
  // Many shallow objects parse (an array of objects is the common large body).
  std::string many = "[";
  for (int i = 0; i < 20000; ++i) many += i ? ",{}" : "{}";
  EXPECT_EQ(vitrine::parse_json(many + "]", "body").size(), 20000u);
  // ... up to a bound on how many, checked before any is built ("{}" in strings not counted).
  EXPECT_CONTAINS(vitrine::test::error_of([&] { vitrine::parse_json(many + "]", "body", 20000); }),
                  "body: JSON of 20001 arrays and objects, more than the 20000 accepted");
  EXPECT_EQ(vitrine::parse_json(R"(["{}{}{}"])", "body", 1).size(), 1u);
  EXPECT_CONTAINS(vitrine::test::error_of([&] { vitrine::parse_json("{\"a\": ", "body"); }),
                  "body: not valid JSON");
}

TEST(Json, Utf8IsCheckedStrictly) {
  EXPECT_TRUE(vitrine::valid_utf8("plain"));
  EXPECT_TRUE(vitrine::valid_utf8("\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80"));  // é € emoji
  EXPECT_FALSE(vitrine::valid_utf8("\xC0\xAF"));          // '/' written in two bytes
  EXPECT_FALSE(vitrine::valid_utf8("\xE0\x80\xAF"));      // and in three
  EXPECT_FALSE(vitrine::valid_utf8("\xED\xA0\x80"));      // a UTF-16 surrogate
  EXPECT_FALSE(vitrine::valid_utf8("\xF4\x90\x80\x80"));  // above U+10FFFF
  EXPECT_FALSE(vitrine::valid_utf8("\xC3"));              // cut short
}

TEST(DataImageFolder, SplitLayoutClassOrderAndWarnings) {
  const TempDir tmp("data-folder-layout");
  const fs::path& root = tmp.path();
  make_classes(root / "train", {{"zebra", 2}, {"apple", 2}, {"Mango", 2}});
  fs::create_directories(root / "train" / "empty_class");
  write_text(root / "train" / "apple" / "notes.txt", "not an image");
  write_image(root / "train" / "apple" / "sub" / "deep.JPG", noise(4, 4, 3, 9));
  make_classes(root / "val", {{"apple", 1}, {"zebra", 1}, {"kiwi", 1}});

  DataOptions o;
  o.source = root.string();
  const DataSplits s = open_data(o);
  // Byte order, as Python's sorted(): capitals first. The empty class keeps its place.
  const std::vector<std::string> expected{"Mango", "apple", "empty_class", "kiwi", "zebra"};
  EXPECT_EQ(s.classes, expected);
  EXPECT_FALSE(s.multi_label);
  ASSERT_TRUE(s.train && s.val);
  EXPECT_FALSE(s.test);
  EXPECT_EQ(s.train->classes(), expected);
  EXPECT_EQ(s.val->classes(), expected);
  EXPECT_EQ(s.train->size(), 7);  // .txt ignored, nested .JPG found
  EXPECT_EQ(s.val->size(), 3);
  for (const auto* d : {s.train.get(), s.val.get()}) {
    for (int64_t i = 0; i < d->size(); ++i) {
      const std::string name = d->name(i);
      const std::string cls = name.find("/sub/") != std::string::npos ? "apple" : folder_of(name);
      EXPECT_EQ(d->classes()[d->labels(i).at(0)], cls) << name;
    }
  }
  const cv::Mat img = s.train->image(0);
  EXPECT_EQ(img.type(), CV_8UC3);
  EXPECT_EQ(img.size(), cv::Size(6, 5));
  EXPECT_TRUE(any_contains(s.warnings, "empty_class has no images"));
  EXPECT_TRUE(any_contains(s.warnings, "class 'kiwi' has items in val but none in train"));
  // A class split down to two training photos beside its val photo is named.
  EXPECT_TRUE(any_contains(s.warnings, "class 'zebra' has 2 training photos and 1 in val/test: "
                                       "too few to learn it well"));
  // A class with training photos but none in val is not measured there.
  EXPECT_TRUE(any_contains(s.warnings, "1 class has no val photos ('Mango'): val scores cannot "
                                       "measure it, and its macro-F1 averages over the other"));
  EXPECT_EQ(s.warnings.size(), 4u) << ::testing::PrintToString(s.warnings);
}

TEST(DataImageFolder, DeterministicStratifiedSplit) {
  const TempDir tmp("data-folder-split");
  const fs::path& root = tmp.path();
  make_classes(root, {{"a", 10}, {"b", 10}, {"c", 10}});
  DataOptions o;
  o.source = root.string();
  o.val_split = 0.2;
  o.test_split = 0.1;
  o.seed = 1;
  const DataSplits s1 = open_data(o);
  const DataSplits s2 = open_data(o);
  o.seed = 2;
  const DataSplits s3 = open_data(o);

  ASSERT_TRUE(s1.train && s1.val && s1.test);
  const std::map<int64_t, int64_t> train_counts{{0, 7}, {1, 7}, {2, 7}};
  const std::map<int64_t, int64_t> val_counts{{0, 2}, {1, 2}, {2, 2}};
  const std::map<int64_t, int64_t> test_counts{{0, 1}, {1, 1}, {2, 1}};
  EXPECT_EQ(class_counts(*s1.train), train_counts);
  EXPECT_EQ(class_counts(*s1.val), val_counts);
  EXPECT_EQ(class_counts(*s1.test), test_counts);

  EXPECT_EQ(names_of(*s1.train), names_of(*s2.train));
  EXPECT_EQ(names_of(*s1.val), names_of(*s2.val));
  EXPECT_EQ(names_of(*s1.test), names_of(*s2.test));
  EXPECT_NE(names_of(*s1.val), names_of(*s3.val));
  EXPECT_EQ(class_counts(*s3.val), val_counts);

  std::set<std::string> all;
  for (const auto* d : {s1.train.get(), s1.val.get(), s1.test.get()}) {
    for (const auto& n : names_of(*d)) EXPECT_TRUE(all.insert(n).second) << n << " twice";
  }
  EXPECT_EQ(all.size(), 30u);

  // A class's split depends on its name, not its index: adding a class leaves it alone.
  make_classes(root, {{"0first", 10}});
  o.seed = 1;
  const DataSplits s4 = open_data(o);
  std::vector<std::string> val_b1, val_b4;
  for (const auto& n : names_of(*s1.val)) {
    if (folder_of(n) == "b") val_b1.push_back(n);
  }
  for (const auto& n : names_of(*s4.val)) {
    if (folder_of(n) == "b") val_b4.push_back(n);
  }
  EXPECT_EQ(val_b1, val_b4);

  // A photo added to a class moves at most one of the others (the class's val and test
  // counts stay 2 and 1 with 11 photos); a permutation would deal the class again. The
  // split follows the photos' paths within the folder, wherever the folder is.
  const auto split_of = [](const DataSplits& s, const fs::path& under) {
    std::map<std::string, std::string> out;
    for (const auto& [part, d] : {std::pair<const char*, const Dataset*>{"train", s.train.get()},
                                  {"val", s.val.get()}, {"test", s.test.get()}}) {
      for (const auto& n : names_of(*d)) out[fs::path(n).lexically_relative(under).string()] = part;
    }
    return out;
  };
  const auto before = split_of(s4, root);
  write_image(root / "c" / "c_new.png", noise(6, 5, 3, 99));
  const auto after = split_of(open_data(o), root);
  int moved = 0;
  for (const auto& [name, part] : before) moved += after.at(name) != part;
  EXPECT_LE(moved, 1);
  EXPECT_EQ(after.size(), before.size() + 1);
  const TempDir moved_to("data-folder-split-moved");
  fs::copy(root, moved_to.path() / "photos", fs::copy_options::recursive);
  DataOptions elsewhere = o;
  elsewhere.source = (moved_to.path() / "photos").string();
  EXPECT_EQ(split_of(open_data(elsewhere), moved_to.path() / "photos"), after);

  // No val / test when their fractions are 0.
  o.val_split = 0;
  o.test_split = 0;
  const DataSplits s5 = open_data(o);
  EXPECT_FALSE(s5.val);
  EXPECT_FALSE(s5.test);
  EXPECT_EQ(s5.train->size(), 41);
}

TEST(DataImageFolder, LabelSubsample) {
  const TempDir tmp("data-folder-subsample");
  const fs::path& root = tmp.path();
  make_classes(root, {{"a", 10}, {"b", 10}, {"c", 5}});
  DataOptions o;
  o.source = root.string();
  o.val_split = 0.2;
  o.seed = 3;
  const DataSplits full = open_data(o);
  EXPECT_EQ(class_counts(*full.train), (std::map<int64_t, int64_t>{{0, 8}, {1, 8}, {2, 4}}));

  o.labels_per_class = 2;
  const DataSplits two = open_data(o);
  EXPECT_EQ(class_counts(*two.train), (std::map<int64_t, int64_t>{{0, 2}, {1, 2}, {2, 2}}));
  EXPECT_EQ(names_of(*two.val), names_of(*full.val));  // val untouched
  EXPECT_TRUE(two.warnings.empty());
  EXPECT_EQ(names_of(*two.train), names_of(*open_data(o).train));

  o.labels_per_class = 3;
  const DataSplits three = open_data(o);
  const std::vector<std::string> n3 = names_of(*three.train);
  for (const auto& n : names_of(*two.train)) {
    EXPECT_NE(std::find(n3.begin(), n3.end(), n), n3.end()) << n << " not kept with 3 per class";
  }
  o.seed = 4;
  EXPECT_NE(names_of(*open_data(o).train), n3);
  o.seed = 3;

  o.labels_per_class = 6;
  const DataSplits six = open_data(o);
  EXPECT_EQ(class_counts(*six.train), (std::map<int64_t, int64_t>{{0, 6}, {1, 6}, {2, 4}}));
  EXPECT_TRUE(any_contains(six.warnings,
                           "class 'c' has only 4 training items, fewer than "
                           "labels_per_class 6"));

  o.labels_per_class = 0;
  o.label_fraction = 0.25;  // ceil(8 / 4) = 2, ceil(4 / 4) = 1
  EXPECT_EQ(class_counts(*open_data(o).train),
            (std::map<int64_t, int64_t>{{0, 2}, {1, 2}, {2, 1}}));
  o.label_fraction = 0.3;  // ceil(2.4) = 3, ceil(1.2) = 2
  EXPECT_EQ(class_counts(*open_data(o).train),
            (std::map<int64_t, int64_t>{{0, 3}, {1, 3}, {2, 2}}));

  o.labels_per_class = 2;
  EXPECT_CONTAINS(error_of([&] { open_data(o); }), "give one of them");
}

TEST(DataImageFolder, Errors) {
  const TempDir tmp("data-folder-errors");
  const fs::path& root = tmp.path();
  DataOptions o;
  o.source = (root / "missing").string();
  EXPECT_CONTAINS(error_of([&] { open_data(o); }), "does not exist");

  fs::create_directories(root / "flat");
  write_image(root / "flat" / "loose.png", noise(4, 4, 3, 1));
  o.source = (root / "flat").string();
  EXPECT_CONTAINS(error_of([&] { open_data(o); }), "has no class folders");

  make_classes(root / "noval" / "val", {{"a", 1}});
  o.source = (root / "noval").string();
  EXPECT_CONTAINS(error_of([&] { open_data(o); }), "has val/ or test/ but no train/ folder");

  make_classes(root / "ok", {{"a", 2}});
  o.source = (root / "ok").string();
  o.val_split = 1.5;
  EXPECT_CONTAINS(error_of([&] { open_data(o); }), "val_split 1.5 is out of range");
  o.val_split = 0.6;
  o.test_split = 0.5;
  EXPECT_CONTAINS(error_of([&] { open_data(o); }), "leaves nothing to train on");
  o.val_split = 0.1;
  o.test_split = 0;
  o.label_fraction = 0;
  EXPECT_CONTAINS(error_of([&] { open_data(o); }), "label_fraction 0 is out of range");
  o.label_fraction = 1;
  o.source = "";
  EXPECT_CONTAINS(error_of([&] { open_data(o); }), "no data source given");

  // A link to a folder already entered (here: itself) is not followed round and round.
  make_classes(root / "loop", {{"a", 2}, {"b", 1}});
  fs::create_directory_symlink(".", root / "loop" / "a" / "self");
  o.source = (root / "loop").string();
  o.val_split = 0;
  EXPECT_EQ(open_data(o).train->size(), 3);

  // A bad file fails when it is read, naming the file.
  write_text(root / "bad" / "a" / "broken.png", "not a png");
  o.source = (root / "bad").string();
  o.val_split = 0;
  const DataSplits s = open_data(o);
  EXPECT_CONTAINS(error_of([&] { s.train->image(0); }), "broken.png");
  EXPECT_CONTAINS(error_of([&] { s.train->image(1); }), "index 1 is out of range");
}

// ---- CSV manifests ----------------------------------------------------------------------

TEST(DataCsv, QuotingSplitsAndPaths) {
  const TempDir tmp("data-csv");
  const fs::path& dir = tmp.path();
  write_image(dir / "img" / "a 1.png", noise(3, 3, 3, 1));
  write_image(dir / "img" / "b,2.png", noise(3, 3, 3, 2));
  write_image(dir / "img" / "c.png", noise(3, 3, 3, 3));
  write_image(dir / "abs.png", noise(3, 3, 3, 4));
  // A byte-order mark, CRLF line ends, an extra column, quoted commas and quotes, a blank
  // line, spaces around unquoted fields, an absolute path.
  std::string text =
      "\xEF\xBB\xBF"
      "sku,Path,label,split\r\n"
      "1, img/a 1.png ,shoes,train\r\n"
      "2,\"img/b,2.png\",\"bags, leather\",TRAIN\r\n"
      "\r\n"
      "3,img/c.png,\"say \"\"hi\"\"\",val\r\n";
  text += "4," + (dir / "abs.png").string() + ",shoes,test\r\n";
  write_text(dir / "products.csv", text);
  DataOptions o;
  o.source = (dir / "products.csv").string();
  const DataSplits s = open_data(o);
  const std::vector<std::string> classes{"bags, leather", "say \"hi\"", "shoes"};
  EXPECT_EQ(s.classes, classes);
  EXPECT_FALSE(s.multi_label);
  ASSERT_TRUE(s.train && s.val && s.test);
  ASSERT_EQ(s.train->size(), 2);
  EXPECT_EQ(s.train->name(0), (dir / "img" / "a 1.png").string());
  EXPECT_EQ(s.train->labels(0), std::vector<int64_t>{2});
  EXPECT_EQ(s.train->name(1), (dir / "img" / "b,2.png").string());
  EXPECT_EQ(s.train->labels(1), std::vector<int64_t>{0});
  ASSERT_EQ(s.val->size(), 1);
  EXPECT_EQ(s.val->labels(0), std::vector<int64_t>{1});
  EXPECT_EQ(s.test->name(0), (dir / "abs.png").string());
  EXPECT_EQ(s.train->image(1).size(), cv::Size(3, 3));
  EXPECT_TRUE(any_contains(s.warnings, "class 'say \"hi\"' has items in val but none in train"));

  // Without a split column, split per class as a folder root is.
  text = "path,label\n";
  for (int i = 0; i < 20; ++i) {
    const std::string name = "img/n" + std::to_string(i) + ".png";
    write_image(dir / name, noise(3, 3, 3, 10 + i));
    text += name + (i < 10 ? ",x\n" : ",y\n");
  }
  write_text(dir / "nosplit.csv", text);
  o.source = (dir / "nosplit.csv").string();
  o.val_split = 0.3;
  const DataSplits n = open_data(o);
  EXPECT_EQ(class_counts(*n.train), (std::map<int64_t, int64_t>{{0, 7}, {1, 7}}));
  EXPECT_EQ(class_counts(*n.val), (std::map<int64_t, int64_t>{{0, 3}, {1, 3}}));
  EXPECT_FALSE(n.test);
}

TEST(DataCsv, AbsolutePathsSplitAlikeHoweverTheManifestIsNamedOrWherever) {
  const TempDir tmp("data-csv-abs");
  const fs::path& dir = tmp.path();
  std::string text = "path,label\n";
  for (int i = 0; i < 40; ++i) {
    const fs::path photo = dir / "photos" / ("p" + std::to_string(i) + ".png");
    write_image(photo, noise(3, 3, 3, 50 + i));
    text += photo.string() + (i % 2 ? ",x\n" : ",y\n");
  }
  write_text(dir / "a" / "m.csv", text);
  write_text(dir / "b" / "deeper" / "m.csv", text);
  DataOptions o;
  o.val_split = 0.25;
  o.test_split = 0.25;
  const auto test_names = [&](const std::string& source) {
    o.source = source;
    const DataSplits s = open_data(o);
    std::vector<std::string> names;
    for (int64_t i = 0; i < s.test->size(); ++i) names.push_back(s.test->name(i));
    std::sort(names.begin(), names.end());
    EXPECT_EQ(names.size(), 10u);
    return std::make_pair(names, items_digest(*s.train, source));
  };
  const auto absolute = test_names((dir / "a" / "m.csv").string());
  const auto relative = test_names(fs::relative(dir / "a" / "m.csv").string());
  const auto dotted = test_names((dir / "a" / "." / ".." / "a" / "m.csv").string());
  const auto moved = test_names((dir / "b" / "deeper" / "m.csv").string());
  EXPECT_EQ(relative, absolute);
  EXPECT_EQ(dotted, absolute);
  EXPECT_EQ(moved, absolute) << "the photos stayed where they were";
}

TEST(DataCsv, MultiLabel) {
  const TempDir tmp("data-csv-multi");
  const fs::path& dir = tmp.path();
  for (const char* f : {"x.png", "y.png", "z.png"}) write_image(dir / f, noise(3, 3, 3, 1));
  write_text(dir / "tags.csv",
             "path,labels\n"
             "x.png,red | cotton\n"
             "y.png,blue|red|blue\n"
             "z.png,\n");
  DataOptions o;
  o.source = (dir / "tags.csv").string();
  o.val_split = 0;
  const DataSplits s = open_data(o);
  EXPECT_TRUE(s.multi_label);
  EXPECT_TRUE(s.train->multi_label());
  EXPECT_EQ(s.classes, (std::vector<std::string>{"blue", "cotton", "red"}));
  ASSERT_EQ(s.train->size(), 3);
  EXPECT_EQ(s.train->labels(0), (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(s.train->labels(1), (std::vector<int64_t>{0, 2}));
  EXPECT_TRUE(s.train->labels(2).empty());

  // Multi-hot targets through the loader.
  Loader loader(
      s.train,
      [](const cv::Mat& m, std::mt19937_64&) {
        return vitrine::image::to_tensor(m, {0.5f}, {0.5f});
      },
      [] {
        LoaderOptions lo;
        lo.batch_size = 3;
        return lo;
      }());
  loader.start_epoch(0);
  Batch b;
  ASSERT_TRUE(loader.next(b));
  const at::Tensor expected =
      at::tensor({0.f, 1.f, 1.f, 1.f, 0.f, 1.f, 0.f, 0.f, 0.f}).reshape({3, 3});
  EXPECT_TRUE(at::equal(b.targets, expected)) << b.targets;
  EXPECT_EQ(b.images.sizes(), (std::vector<int64_t>{3, 3, 3, 3}));
}

TEST(DataCsv, Errors) {
  const TempDir tmp("data-csv-errors");
  const fs::path& dir = tmp.path();
  write_image(dir / "img" / "ok.png", noise(3, 3, 3, 1));
  write_image(dir / "img" / "ok2.png", noise(3, 3, 3, 2));
  DataOptions o;
  auto open = [&](const std::string& name, const std::string& text) {
    write_text(dir / name, text);
    o.source = (dir / name).string();
    return error_of([&] { open_data(o); });
  };
  std::string rows = "path,label\n";
  for (int line = 2; line <= 16; ++line) rows += "img/ok.png,a\n";
  EXPECT_CONTAINS(open("products.csv", rows + "img/ok.png,a,b\n"),
                  "products.csv:17: expected 2 fields, got 3");
  // A missing photo is skipped and named; a manifest of missing photos is an error.
  write_text(dir / "missing.csv", "path,label\nimg/ok.png,a\nimg/missing.png,a\nimg/ok2.png,a\n");
  o.source = (dir / "missing.csv").string();
  o.val_split = 0;
  const DataSplits kept = open_data(o);
  EXPECT_EQ(kept.train->size(), 2);
  ASSERT_FALSE(kept.warnings.empty());
  EXPECT_CONTAINS(kept.warnings.front(), "missing.csv:3: image 'img/missing.png' not found "
                                         "(looked for " + (dir / "img" / "missing.png").string());
  o.strict = true;  // ... unless missing photos are to stop the run
  EXPECT_CONTAINS(error_of([&] { open_data(o); }), "missing.csv:3: image 'img/missing.png' not found");
  o.strict = false;
  o.val_split = 0.1;
  EXPECT_CONTAINS(open("none.csv", "path,label\nimg/gone.png,a\nimg/missing.png,b\n"),
                  "none.csv:2: image 'img/gone.png' not found");
  EXPECT_CONTAINS(open("quote.csv", "path,label\nimg/ok.png,a\n\"img/ok.png,a\n"),
                  "quote.csv:3: a quoted field is not closed");
  EXPECT_CONTAINS(open("after.csv", "path,label\n\"img/ok.png\"x,a\n"),
                  "after.csv:2: text after a closing quote");
  EXPECT_CONTAINS(open("header.csv", "file,class\nimg/ok.png,a\n"),
                  "header.csv:1: the header must name a path column");
  EXPECT_CONTAINS(open("both.csv", "path,label,labels\nimg/ok.png,a,a\n"),
                  "both.csv:1: the header must name a path column and either a label column");
  EXPECT_CONTAINS(open("twice.csv", "path,label,path\nimg/ok.png,a,b\n"),
                  "twice.csv:1: the column 'path' appears twice");
  EXPECT_CONTAINS(open("empty.csv", ""), "empty.csv is empty");
  EXPECT_CONTAINS(open("label.csv", "path,label\nimg/ok.png,\n"),
                  "label.csv:2: the label is empty");
  EXPECT_CONTAINS(open("split.csv", "path,label,split\nimg/ok.png,a,dev\n"),
                  "split.csv:2: unknown split 'dev'; use train, val or test");
  EXPECT_CONTAINS(open("notrain.csv", "path,label,split\nimg/ok.png,a,val\n"),
                  "has no training images");
  // A spreadsheet's Windows-1252 export: its class names are read as such, and said.
  write_text(dir / "latin.csv", "path,label\nimg/ok.png,Caf\xe9 noir\nimg/ok2.png,\x80uro\n");
  o.source = (dir / "latin.csv").string();
  o.val_split = 0;
  const DataSplits latin = open_data(o);
  EXPECT_EQ(latin.classes, (std::vector<std::string>{"Caf\xc3\xa9 noir", "\xe2\x82\xacuro"}));
  EXPECT_TRUE(any_contains(latin.warnings, "is not UTF-8 text: read as Windows-1252, "
                                           "'Caf\xc3\xa9 noir'"))
      << ::testing::PrintToString(latin.warnings);
  // ... unless that gives a name the data already has.
  EXPECT_CONTAINS(
      open("twice_enc.csv", "path,label\nimg/ok.png,Caf\xe9\nimg/ok2.png,Caf\xc3\xa9\n"),
      "name one class twice");
  // A class named decomposed (NFD, as macOS names files) and composed is one class, composed.
  write_text(dir / "nfd.csv", "path,label\nimg/ok.png,Cre\xcc\x80me\nimg/ok2.png,Cr\xc3\xa8me\n");
  o.source = (dir / "nfd.csv").string();
  EXPECT_EQ(open_data(o).classes, std::vector<std::string>{"Cr\xc3\xa8me"});
  o.val_split = 0.1;
  o.source = (dir / "absent.csv").string();
  EXPECT_CONTAINS(error_of([&] { open_data(o); }), "absent.csv does not exist");
}

TEST(DataImageFolder, SystemFilesAreSkippedAndJfifIsAPhoto) {
  const TempDir tmp("data-system-files");
  const fs::path& root = tmp.path();
  make_classes(root, {{"bags", 3}, {"shoes", 3}});
  // What a Mac leaves on a shared drive, a zip made on a Mac, a NAS's thumbnails.
  write_text(root / "bags" / "._bags_0.png", std::string(4096, '\0'));
  write_text(root / "shoes" / ".DS_Store", "x");
  write_image(root / "__MACOSX" / "bags" / "x.png", noise(6, 5, 3, 7));
  write_image(root / "shoes" / "@eaDir" / "shoes_0.png" / "SYNOPHOTO_THUMB_S.png",
              noise(6, 5, 3, 8));
  write_image(root / "shoes" / "download.jpg", noise(6, 5, 3, 9));
  fs::rename(root / "shoes" / "download.jpg", root / "shoes" / "download.JFIF");
  // Formats the decoders do not read are skipped, and counted (torchvision reads TIFF).
  write_text(root / "bags" / "scan.TIFF", "II*\0");
  write_text(root / "shoes" / "anim.gif", "GIF89a");
  write_text(root / "shoes" / "notes.txt", "not a photo: not counted");
  DataOptions o;
  o.source = root.string();
  o.val_split = 0;
  const DataSplits s = open_data(o);
  EXPECT_TRUE(any_contains(s.warnings, "2 photos in class folders of " + root.string() +
                                           " (GIF, TIFF"))
      << ::testing::PrintToString(s.warnings);
  EXPECT_EQ(s.classes, (std::vector<std::string>{"bags", "shoes"}));
  EXPECT_EQ(class_counts(*s.train), (std::map<int64_t, int64_t>{{0, 3}, {1, 4}}));
  for (int64_t i = 0; i < s.train->size(); ++i) EXPECT_NO_THROW(s.train->image(i)) << i;
  EXPECT_TRUE(any_contains(s.warnings, "1 hidden image file in " + root.string() +
                                           " was skipped"))
      << ::testing::PrintToString(s.warnings);
}

TEST(DataImageFolder, PhotosRepeatedAcrossSplitsAreFoundByTheirBytes) {
  const TempDir tmp("data-repeats");
  const fs::path& root = tmp.path();
  make_classes(root / "train", {{"a", 6}, {"b", 6}});
  const auto bytes_of = [](const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  // Two copies under other names and classes; a file of a training photo's size with one
  // byte other; a photo of its own; empty files (all alike, and no photos).
  write_text(root / "test/a/a_1.png", bytes_of(root / "train/a/a_1.png"));
  write_text(root / "test/b/copy of b4.png", bytes_of(root / "train/b/b_4.png"));
  std::string changed = bytes_of(root / "train/a/a_2.png");
  changed.back() ^= 1;
  write_text(root / "test/a/changed.png", changed);
  write_image(root / "test/b/own.png", noise(6, 5, 3, 99));
  write_text(root / "train/b/empty.png", "");
  write_text(root / "test/a/empty.png", "");
  DataOptions o;
  o.source = root.string();
  const DataSplits s = open_data(o);
  ASSERT_TRUE(s.test);
  ASSERT_EQ(s.test->size(), 5);
  std::set<std::pair<std::string, std::string>> found;  // (test photo, training photo)
  for (const auto& [j, i] : vitrine::data::repeated_files(*s.train, *s.test)) {
    found.emplace(fs::path(s.test->name(j)).filename().string(),
                  fs::path(s.train->name(i)).filename().string());
  }
  EXPECT_EQ(found, (std::set<std::pair<std::string, std::string>>{
                       {"a_1.png", "a_1.png"}, {"copy of b4.png", "b_4.png"}}));
  // A photo gone since the data was opened is passed over.
  fs::remove(root / "train/b/b_4.png");
  EXPECT_EQ(vitrine::data::repeated_files(*s.train, *s.test).size(), 1u);
}

TEST(DataImageFolder, AMissingValOrTestSplitIsCarvedOutOfTrain) {
  const TempDir tmp("data-carve");
  const fs::path& root = tmp.path();
  make_classes(root / "train", {{"a", 10}, {"b", 10}});
  make_classes(root / "test", {{"a", 2}, {"b", 2}});
  DataOptions o;
  o.source = root.string();
  const DataSplits all = open_data(o);  // by default a train/ folder keeps all its photos
  EXPECT_EQ(all.train->size(), 20);
  EXPECT_FALSE(all.val);
  o.val_split = 0.2;  // given, it carves a validation split out of them
  const DataSplits s = open_data(o);
  ASSERT_TRUE(s.val && s.test);
  EXPECT_EQ(class_counts(*s.train), (std::map<int64_t, int64_t>{{0, 8}, {1, 8}}));
  EXPECT_EQ(class_counts(*s.val), (std::map<int64_t, int64_t>{{0, 2}, {1, 2}}));
  EXPECT_EQ(s.test->size(), 4);  // the folder's, not carved
  std::set<std::string> seen;
  for (const auto* d : {s.train.get(), s.val.get()}) {
    for (const auto& n : names_of(*d)) {
      EXPECT_NE(n.find("/train/"), std::string::npos) << n;
      EXPECT_TRUE(seen.insert(n).second) << n << " is in two splits";
    }
  }
  EXPECT_EQ(names_of(*open_data(o).val), names_of(*s.val));  // the same carve each time
  // A test fraction is carved too where there is no test/ folder; none is asked by default.
  fs::remove_all(root / "test");
  o.test_split = 0.1;
  const DataSplits t = open_data(o);
  ASSERT_TRUE(t.test);
  EXPECT_EQ(t.train->size() + t.val->size() + t.test->size(), 20);
  EXPECT_EQ(t.test->size(), 2);
}

TEST(DataCsv, RowsNamingOnePhotoAreOneItem) {
  const TempDir tmp("data-csv-repeats");
  const fs::path& dir = tmp.path();
  for (const char* f : {"x.png", "y.png"}) write_image(dir / f, noise(3, 3, 3, 1));
  // A multi-label manifest written a row per (photo, label), a path written two ways.
  write_text(dir / "tags.csv", "path,labels\nx.png,red\ny.png,blue\n./x.png,dress\nx.png,red\n");
  DataOptions o;
  o.source = (dir / "tags.csv").string();
  o.val_split = 0;
  const DataSplits m = open_data(o);
  ASSERT_EQ(m.train->size(), 2);
  EXPECT_EQ(m.classes, (std::vector<std::string>{"blue", "dress", "red"}));
  EXPECT_EQ(m.train->labels(0), (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(m.train->labels(1), (std::vector<int64_t>{0}));
  EXPECT_TRUE(any_contains(m.warnings, "2 rows of " + o.source + " name a photo an earlier row "
                                       "names; each photo is one item with the labels of all"));
  // Single-label rows that disagree keep the first and are named with both lines.
  write_text(dir / "noisy.csv", "path,label,split\nx.png,bag,train\ny.png,shoe,train\n"
                                "x.png,shoe,train\ny.png,shoe,test\n");
  o.source = (dir / "noisy.csv").string();
  const DataSplits s = open_data(o);
  ASSERT_EQ(s.train->size(), 2);
  EXPECT_FALSE(s.test);
  EXPECT_EQ(s.train->labels(0), (std::vector<int64_t>{0}));
  EXPECT_TRUE(any_contains(s.warnings, "noisy.csv:4: 'x.png' is labelled 'shoe' here and 'bag' "
                                       "at line 2; the first is kept"));
  EXPECT_TRUE(any_contains(s.warnings, "noisy.csv:5: 'y.png' is put in split 'test' here and "
                                       "in another at line 3; the first is kept"));
  // Past five, the rest are counted, not listed.
  std::string many = "path,label\nx.png,bag\n";
  for (int i = 0; i < 7; ++i) many += "x.png,shoe\n";
  write_text(dir / "many.csv", many);
  o.source = (dir / "many.csv").string();
  const DataSplits m7 = open_data(o);
  EXPECT_EQ(std::count_if(m7.warnings.begin(), m7.warnings.end(),
                          [](const std::string& w) { return w.find("is labelled") != w.npos; }),
            5);
  EXPECT_TRUE(any_contains(m7.warnings, "7 rows of " + o.source + " disagree with an earlier row "
                                        "on a photo's label or split (the first 5 above)"));
}

TEST(DataCsv, RowsOfEmptyCellsAreBlankLines) {
  const TempDir tmp("data-csv-blank");
  const fs::path& dir = tmp.path();
  write_image(dir / "x.png", noise(3, 3, 3, 1));
  write_image(dir / "y.png", noise(3, 3, 3, 2));
  // A spreadsheet writes a cleared row as its commas; a quoted empty cell is data.
  write_text(dir / "sheet.csv", "path,label,sku\r\nx.png,a,1\r\n,,\r\ny.png,b,2\r\n , ,\r\n");
  DataOptions o;
  o.source = (dir / "sheet.csv").string();
  o.val_split = 0;
  EXPECT_EQ(open_data(o).train->size(), 2);
  write_text(dir / "quoted.csv", "path,label\nx.png,a\n\"\",\n");
  o.source = (dir / "quoted.csv").string();
  EXPECT_CONTAINS(error_of([&] { open_data(o); }), "quoted.csv:3: the path is empty");
}

TEST(DataCsv, CellsWrittenForTheOtherLabelColumnAreWarned) {
  const TempDir tmp("data-csv-separators");
  const fs::path& dir = tmp.path();
  for (const char* f : {"x.png", "y.png", "z.png"}) write_image(dir / f, noise(3, 3, 3, 1));
  DataOptions o;
  o.val_split = 0;
  const auto warnings_of = [&](const std::string& text) {
    write_text(dir / "m.csv", text);
    o.source = (dir / "m.csv").string();
    std::string all;
    for (const auto& w : open_data(o).warnings) all += w + "\n";
    return all;
  };
  EXPECT_EQ(warnings_of("path,labels\nx.png,red|cotton\ny.png,blue\n"), "");
  const std::string multi =
      warnings_of("path,labels\nx.png,red|cotton\ny.png,red;cotton\nz.png,\"blue, red\"\n");
  EXPECT_CONTAINS(multi, "2 rows of " + o.source + " (first at line 3: 'red;cotton') separate "
                  "labels with ';' or ','");
  EXPECT_CONTAINS(multi, "separate labels with '|' (a|b)");
  EXPECT_EQ(warnings_of("path,label\nx.png,shirt\ny.png,shirt;long sleeve\n"), "");
  EXPECT_CONTAINS(warnings_of("path,label\nx.png,shirt\ny.png,shirt|blue\n"),
                  "1 row of " + o.source + " (first at line 3: 'shirt|blue') has '|' in the "
                  "label");
}

// ---- Fashion-MNIST ----------------------------------------------------------------------

namespace {

std::string be32(uint32_t v) {
  return {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8),
          static_cast<char>(v)};
}

uint8_t fm_pixel(int item, int r, int c) {
  return static_cast<uint8_t>(item * 31 + r * 3 + c);
}

std::string idx_images(int n, uint32_t magic = 0x803) {
  std::string s = be32(magic) + be32(n) + be32(28) + be32(28);
  for (int i = 0; i < n; ++i) {
    for (int r = 0; r < 28; ++r) {
      for (int c = 0; c < 28; ++c) s += static_cast<char>(fm_pixel(i, r, c));
    }
  }
  return s;
}

std::string idx_labels(const std::vector<int>& labels) {
  std::string s = be32(0x801) + be32(static_cast<uint32_t>(labels.size()));
  for (const int l : labels) s += static_cast<char>(l);
  return s;
}

void write_gz(const fs::path& path, const std::string& data) {
  gzFile f = gzopen(path.string().c_str(), "wb");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(gzwrite(f, data.data(), static_cast<unsigned>(data.size())),
            static_cast<int>(data.size()));
  ASSERT_EQ(gzclose(f), Z_OK);
}

const std::vector<int> kTrainLabels{9, 0, 3, 3, 7};
const std::vector<int> kTestLabels{1, 8};

/// A tiny Fashion-MNIST in `tmp`: train gzipped, t10k uncompressed (both are accepted).
const fs::path& make_fashion_mnist(const TempDir& tmp) {
  const fs::path& dir = tmp.path();
  write_gz(dir / "train-images-idx3-ubyte.gz", idx_images(5));
  write_gz(dir / "train-labels-idx1-ubyte.gz", idx_labels(kTrainLabels));
  write_text(dir / "t10k-images-idx3-ubyte", idx_images(2));
  write_text(dir / "t10k-labels-idx1-ubyte", idx_labels(kTestLabels));
  return dir;
}

}  // namespace

TEST(DataFashionMnist, ReadsIdxFiles) {
  const TempDir tmp("data-fmnist");
  const fs::path& dir = make_fashion_mnist(tmp);
  DataOptions o;
  o.source = "fashion-mnist";
  o.fashion_mnist_dir = dir.string();
  o.val_split = 0;
  const DataSplits s = open_data(o);
  const std::vector<std::string> classes{"T-shirt/top", "Trouser",   "Pullover", "Dress",
                                         "Coat",        "Sandal",    "Shirt",    "Sneaker",
                                         "Bag",         "Ankle boot"};
  EXPECT_EQ(s.classes, classes);
  EXPECT_EQ(s.train->classes(), classes);
  EXPECT_FALSE(s.multi_label);
  EXPECT_FALSE(s.val);
  ASSERT_TRUE(s.train && s.test);
  ASSERT_EQ(s.train->size(), 5);
  ASSERT_EQ(s.test->size(), 2);
  for (int64_t i = 0; i < 5; ++i) {
    EXPECT_EQ(s.train->labels(i), std::vector<int64_t>{kTrainLabels[i]});
    EXPECT_EQ(s.train->name(i), "fashion-mnist:train:" + std::to_string(i));
    const cv::Mat m = s.train->image(i);
    ASSERT_EQ(m.type(), CV_8UC1);
    ASSERT_EQ(m.size(), cv::Size(28, 28));
    int wrong = 0;
    for (int r = 0; r < 28; ++r) {
      for (int c = 0; c < 28; ++c) wrong += m.at<uint8_t>(r, c) != fm_pixel(int(i), r, c);
    }
    EXPECT_EQ(wrong, 0) << "item " << i;
  }
  EXPECT_EQ(s.test->labels(1), std::vector<int64_t>{8});
  EXPECT_EQ(s.test->name(1), "fashion-mnist:test:1");
  EXPECT_EQ(s.test->image(1).at<uint8_t>(3, 4), fm_pixel(1, 3, 4));

  // val carved out of train per class: only class 3 has two items, one goes to val.
  o.val_split = 0.5;
  const DataSplits v = open_data(o);
  ASSERT_TRUE(v.val);
  ASSERT_EQ(v.val->size(), 1);
  EXPECT_EQ(v.val->labels(0), std::vector<int64_t>{3});
  EXPECT_EQ(v.train->size(), 4);
  EXPECT_EQ(names_of(*v.val), names_of(*open_data(o).val));
  const std::string held = v.val->name(0);
  EXPECT_TRUE(held == "fashion-mnist:train:2" || held == "fashion-mnist:train:3") << held;
}

TEST(DataFashionMnist, Errors) {
  DataOptions o;
  o.source = "fashion-mnist";
  o.fashion_mnist_dir = "/nonexistent/fashion-mnist";
  const std::string missing = error_of([&] { open_data(o); });
  EXPECT_CONTAINS(missing, "/nonexistent/fashion-mnist does not exist");
  EXPECT_CONTAINS(missing, "apt-get install dataset-fashion-mnist");

  const TempDir tmp_nolabels("data-fmnist-nolabels");
  fs::path dir = make_fashion_mnist(tmp_nolabels);
  fs::remove(dir / "t10k-labels-idx1-ubyte");
  o.fashion_mnist_dir = dir.string();
  const std::string no_file = error_of([&] { open_data(o); });
  EXPECT_CONTAINS(no_file, "has no t10k-labels-idx1-ubyte.gz");
  EXPECT_CONTAINS(no_file, "apt-get install dataset-fashion-mnist");

  const TempDir tmp_magic("data-fmnist-magic");
  dir = make_fashion_mnist(tmp_magic);
  write_gz(dir / "train-images-idx3-ubyte.gz", idx_images(5, 0x801));
  o.fashion_mnist_dir = dir.string();
  EXPECT_CONTAINS(error_of([&] { open_data(o); }), "is not an IDX image file (magic number 2049");

  const TempDir tmp_count("data-fmnist-count");
  dir = make_fashion_mnist(tmp_count);
  write_gz(dir / "train-labels-idx1-ubyte.gz", idx_labels({1, 2, 3}));
  o.fashion_mnist_dir = dir.string();
  EXPECT_CONTAINS(error_of([&] { open_data(o); }), "has 5 images but");

  const TempDir tmp_short("data-fmnist-short");
  dir = make_fashion_mnist(tmp_short);
  std::string images = idx_images(5);
  write_gz(dir / "train-images-idx3-ubyte.gz", images.substr(0, images.size() - 10));
  o.fashion_mnist_dir = dir.string();
  EXPECT_CONTAINS(error_of([&] { open_data(o); }), "but its header announces 5 images");

  const TempDir tmp_label("data-fmnist-label");
  dir = make_fashion_mnist(tmp_label);
  write_gz(dir / "train-labels-idx1-ubyte.gz", idx_labels({1, 2, 3, 12, 0}));
  o.fashion_mnist_dir = dir.string();
  EXPECT_CONTAINS(error_of([&] { open_data(o); }), "gives item 3 the label 12");

  // A gzip stream cut short (an interrupted download).
  const TempDir tmp_truncated("data-fmnist-truncated");
  dir = make_fashion_mnist(tmp_truncated);
  write_gz(dir / "train-images-idx3-ubyte.gz", idx_images(5));
  const fs::path gz = dir / "train-images-idx3-ubyte.gz";
  fs::resize_file(gz, fs::file_size(gz) / 2);
  o.fashion_mnist_dir = dir.string();
  EXPECT_CONTAINS(error_of([&] { open_data(o); }), "train-images-idx3-ubyte.gz");
}

// ---- Loader -----------------------------------------------------------------------------

namespace {

/// Item i: a 2 x 2 image whose first two bytes encode i, label i % 3; the items in `bad`
/// throw as a corrupt file would; each image takes `delay_ms` to "decode".
class FakeDataset : public Dataset {
 public:
  explicit FakeDataset(int64_t n, std::set<int64_t> bad = {}, int delay_ms = 0)
      : n_(n), bad_(std::move(bad)), delay_ms_(delay_ms) {
    classes_ = {"a", "b", "c"};
  }
  int64_t size() const override { return n_; }
  cv::Mat image(int64_t i) const override {
    if (delay_ms_ > 0) std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms_));
    if (bad_.count(i)) throw vitrine::Error("corrupt image", __FILE__, __LINE__);
    cv::Mat m(2, 2, CV_8UC3, cv::Scalar::all(0));
    m.data[0] = static_cast<uint8_t>(i % 256);
    m.data[1] = static_cast<uint8_t>(i / 256);
    return m;
  }
  std::vector<int64_t> labels(int64_t i) const override { return {i % 3}; }
  std::string name(int64_t i) const override { return "fake:" + std::to_string(i); }

 private:
  int64_t n_;
  std::set<int64_t> bad_;
  int delay_ms_;
};

/// [index, a draw from the sample's generator]
at::Tensor index_and_draw(const cv::Mat& m, std::mt19937_64& rng) {
  at::Tensor t = at::empty({2}, at::kFloat);
  t.data_ptr<float>()[0] = static_cast<float>(m.data[0] + 256 * m.data[1]);
  t.data_ptr<float>()[1] = static_cast<float>(rng() % 1000000);
  return t;
}

std::vector<Batch> run_epoch(Loader& loader, int64_t epoch, int64_t skip = 0) {
  loader.start_epoch(epoch, skip);
  std::vector<Batch> out;
  Batch b;
  while (loader.next(b)) out.push_back(b);
  return out;
}

std::vector<Batch> run_epoch(int64_t n, LoaderOptions o, int64_t epoch, int64_t skip = 0) {
  Loader loader(std::make_shared<FakeDataset>(n), index_and_draw, o);
  return run_epoch(loader, epoch, skip);
}

void expect_same(const std::vector<Batch>& a, const std::vector<Batch>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t k = 0; k < a.size(); ++k) {
    EXPECT_EQ(a[k].indices, b[k].indices) << "batch " << k;
    EXPECT_EQ(a[k].batch_index, b[k].batch_index);
    EXPECT_TRUE(at::equal(a[k].images, b[k].images)) << "batch " << k;
    EXPECT_TRUE(at::equal(a[k].targets, b[k].targets)) << "batch " << k;
  }
}

std::vector<int64_t> all_indices(const std::vector<Batch>& batches) {
  std::vector<int64_t> out;
  for (const auto& b : batches) out.insert(out.end(), b.indices.begin(), b.indices.end());
  return out;
}

}  // namespace

TEST(DataLoader, BatchesInOrder) {
  LoaderOptions o;
  o.batch_size = 4;
  o.workers = 3;
  Loader loader(std::make_shared<FakeDataset>(10), index_and_draw, o);
  EXPECT_EQ(loader.batches_per_epoch(), 3);
  const std::vector<Batch> batches = run_epoch(loader, 0);
  ASSERT_EQ(batches.size(), 3u);
  int64_t next = 0;
  for (size_t k = 0; k < batches.size(); ++k) {
    const Batch& b = batches[k];
    const int64_t n = k < 2 ? 4 : 2;
    EXPECT_EQ(b.batch_index, static_cast<int64_t>(k));
    ASSERT_EQ(b.images.sizes(), (std::vector<int64_t>{n, 2}));
    EXPECT_EQ(b.images.scalar_type(), at::kFloat);
    ASSERT_EQ(b.targets.sizes(), (std::vector<int64_t>{n}));
    EXPECT_EQ(b.targets.scalar_type(), at::kLong);
    for (int64_t r = 0; r < n; ++r, ++next) {
      EXPECT_EQ(b.indices[r], next);
      EXPECT_EQ(b.images[r][0].item<float>(), static_cast<float>(next));
      EXPECT_EQ(b.targets[r].item<int64_t>(), next % 3);
    }
  }
  EXPECT_TRUE(loader.errors().empty());
  Batch b;
  EXPECT_FALSE(loader.next(b));  // stays at the end

  o.drop_last = true;
  Loader dropping(std::make_shared<FakeDataset>(10), index_and_draw, o);
  EXPECT_EQ(dropping.batches_per_epoch(), 2);
  EXPECT_EQ(all_indices(run_epoch(dropping, 0)), (std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7}));

  Loader empty(std::make_shared<FakeDataset>(0), index_and_draw, o);
  EXPECT_EQ(empty.batches_per_epoch(), 0);
  EXPECT_TRUE(run_epoch(empty, 0).empty());
}

TEST(DataLoader, ShuffleIsDeterministicAndIndependentOfWorkers) {
  LoaderOptions o;
  o.batch_size = 8;
  o.shuffle = true;
  o.seed = 7;
  o.workers = 1;
  const std::vector<Batch> one = run_epoch(50, o, 0);
  o.workers = 3;
  o.prefetch = 3;
  const std::vector<Batch> three = run_epoch(50, o, 0);
  expect_same(one, three);
  expect_same(three, run_epoch(50, o, 0));

  std::vector<int64_t> order0 = all_indices(one);
  ASSERT_EQ(order0.size(), 50u);
  std::vector<int64_t> sorted = order0;
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i = 0; i < 50; ++i) EXPECT_EQ(sorted[i], i);
  std::vector<int64_t> identity(50);
  std::iota(identity.begin(), identity.end(), 0);
  EXPECT_NE(order0, identity);

  const std::vector<Batch> epoch1 = run_epoch(50, o, 1);
  EXPECT_NE(all_indices(epoch1), order0);
  o.seed = 8;
  EXPECT_NE(all_indices(run_epoch(50, o, 0)), order0);

  // Per-sample draws depend on (seed, epoch, index) only: equal for an index wherever it
  // lands, different in another epoch.
  std::map<int64_t, float> draw0, draw1;
  for (const auto& b : one) {
    for (size_t r = 0; r < b.indices.size(); ++r) {
      draw0[b.indices[r]] = b.images[r][1].item<float>();
    }
  }
  for (const auto& b : epoch1) {
    for (size_t r = 0; r < b.indices.size(); ++r) {
      draw1[b.indices[r]] = b.images[r][1].item<float>();
    }
  }
  o.shuffle = false;
  o.seed = 7;
  for (const auto& b : run_epoch(50, o, 0)) {
    for (size_t r = 0; r < b.indices.size(); ++r) {
      EXPECT_EQ(b.images[r][1].item<float>(), draw0[b.indices[r]]);
    }
  }
  int same = 0;
  for (const auto& [i, d] : draw0) same += draw1[i] == d;
  EXPECT_LT(same, 3);
}

TEST(DataLoader, SkipBatchesResumesExactly) {
  LoaderOptions o;
  o.batch_size = 4;
  o.shuffle = true;
  o.seed = 11;
  o.workers = 2;
  const std::vector<Batch> full = run_epoch(23, o, 2);
  ASSERT_EQ(full.size(), 6u);
  const std::vector<Batch> rest = run_epoch(23, o, 2, 3);
  expect_same(std::vector<Batch>(full.begin() + 3, full.end()), rest);
  EXPECT_TRUE(run_epoch(23, o, 2, 6).empty());

  // Restarting an epoch mid-way abandons the one in flight.
  Loader loader(std::make_shared<FakeDataset>(23), index_and_draw, o);
  loader.start_epoch(2);
  Batch b;
  ASSERT_TRUE(loader.next(b));
  expect_same(run_epoch(loader, 2, 3), rest);
  EXPECT_CONTAINS(error_of([&] { loader.start_epoch(0, 7); }),
                  "skip_batches 7 is out of range; an epoch has 6 batches");
}

TEST(DataLoader, WeightedSamplingDrawsByWeight) {
  LoaderOptions o;
  o.batch_size = 50;
  o.seed = 5;
  o.workers = 2;
  // FakeDataset's item i has class i % 3; class a weighs 8, b and c 1 each; item 7
  // (class b) weighs nothing.
  const int64_t n = 300;
  o.sample_weights.resize(n);
  for (int64_t i = 0; i < n; ++i) o.sample_weights[i] = i % 3 == 0 ? 8.0 : 1.0;
  o.sample_weights[7] = 0;
  Loader loader(std::make_shared<FakeDataset>(n), index_and_draw, o);
  int64_t drawn = 0, class_a = 0, repeats = 0;
  std::vector<int64_t> first_epoch;
  std::map<int64_t, std::set<float>> draws;  // item -> its random draws in the first epoch
  for (int64_t epoch = 0; epoch < 5; ++epoch) {
    for (const Batch& b : run_epoch(loader, epoch)) {
      for (size_t r = 0; r < b.indices.size(); ++r) {
        const int64_t i = b.indices[r];
        EXPECT_NE(i, 7);
        ++drawn;
        class_a += i % 3 == 0;
        if (epoch == 0) {
          first_epoch.push_back(i);
          repeats += !draws[i].insert(b.images[static_cast<int64_t>(r)][1].item<float>()).second;
        }
      }
    }
  }
  // An item drawn twice is augmented twice, with draws of its own each time.
  EXPECT_EQ(repeats, 0);
  EXPECT_EQ(drawn, 5 * n);  // an epoch draws as many items as the data set holds
  // 8 / (8 + 1 + 1) = 0.8; the standard error over 1500 draws is 0.01.
  EXPECT_NEAR(static_cast<double>(class_a) / drawn, 0.8, 0.04);
  // Drawn with replacement: some items come twice in one epoch.
  EXPECT_LT(std::set<int64_t>(first_epoch.begin(), first_epoch.end()).size(), first_epoch.size());
  // The same seed draws the same items.
  std::vector<int64_t> again;
  for (const Batch& b : run_epoch(n, o, 0)) again.insert(again.end(), b.indices.begin(), b.indices.end());
  EXPECT_EQ(again, first_epoch);

  auto data = std::make_shared<FakeDataset>(4);
  o.sample_weights = {1, 1, 1};
  EXPECT_CONTAINS(error_of([&] { Loader l(data, index_and_draw, o); }), "one weight per item");
  o.sample_weights = {1, -1, 1, 1};
  EXPECT_CONTAINS(error_of([&] { Loader l(data, index_and_draw, o); }), "non-negative");
  o.sample_weights = {0, 0, 0, 0};
  EXPECT_CONTAINS(error_of([&] { Loader l(data, index_and_draw, o); }), "all sampling weights");
}

TEST(DataLoader, BadItemsSkippedOrThrown) {
  LoaderOptions o;
  o.batch_size = 4;
  o.workers = 2;
  auto data = std::make_shared<FakeDataset>(14, std::set<int64_t>{3, 8, 9, 10, 11});
  Loader loader(data, index_and_draw, o);
  const std::vector<Batch> batches = run_epoch(loader, 0);
  // Batch 2 (items 8-11) failed entirely and is skipped; batch_index keeps counting it.
  ASSERT_EQ(batches.size(), 3u);
  EXPECT_EQ(batches[0].indices, (std::vector<int64_t>{0, 1, 2}));
  EXPECT_EQ(batches[0].images.size(0), 3);
  EXPECT_EQ(batches[0].targets.size(0), 3);
  EXPECT_EQ(batches[0].images[2][0].item<float>(), 2.0f);
  EXPECT_EQ(batches[1].indices, (std::vector<int64_t>{4, 5, 6, 7}));
  EXPECT_EQ(batches[2].indices, (std::vector<int64_t>{12, 13}));
  EXPECT_EQ(batches[2].batch_index, 3);
  EXPECT_EQ(loader.errors(),
            (std::vector<std::string>{"fake:3: corrupt image", "fake:8: corrupt image",
                                      "fake:9: corrupt image", "fake:10: corrupt image",
                                      "fake:11: corrupt image"}));
  run_epoch(loader, 1);
  EXPECT_EQ(loader.errors().size(), 5u);  // per epoch, not accumulated

  o.strict = true;
  Loader strict(data, index_and_draw, o);
  strict.start_epoch(0);
  Batch b;
  EXPECT_CONTAINS(error_of([&] { strict.next(b); }), "fake:3: corrupt image");
  EXPECT_FALSE(strict.next(b));  // the epoch ended with the error
  strict.start_epoch(0, 1);
  ASSERT_TRUE(strict.next(b));
  EXPECT_EQ(b.indices, (std::vector<int64_t>{4, 5, 6, 7}));
}

TEST(DataLoader, BrokenDataSetStopsTheEpoch) {
  std::set<int64_t> bad;
  for (int64_t i = 0; i < 40; ++i) {
    if (i % 4 != 0) bad.insert(i);
  }
  LoaderOptions o;
  o.batch_size = 4;
  o.shuffle = true;
  Loader loader(std::make_shared<FakeDataset>(40, bad), index_and_draw, o);
  loader.start_epoch(0);
  Batch b;
  // Three of every four items fail: a few bad photos are skipped, but in random order the
  // epoch stops as soon as 8 or more failed and they are more than half of those loaded.
  int64_t delivered = 0;
  const std::string message = error_of([&] {
    while (loader.next(b)) ++delivered;
  });
  EXPECT_LT(delivered, 4);
  EXPECT_CONTAINS(message, "items loaded so far in this epoch failed (first: fake:");
  EXPECT_CONTAINS(message, ": corrupt image)");
  EXPECT_FALSE(loader.next(b));
  // In order (evaluation), the same data is judged at the end of the epoch, after every good
  // item was delivered.
  o.shuffle = false;
  Loader in_order(std::make_shared<FakeDataset>(40, bad), index_and_draw, o);
  in_order.start_epoch(0);
  delivered = 0;
  EXPECT_CONTAINS(error_of([&] {
                    while (in_order.next(b)) ++delivered;
                  }),
                  "30 of the 40 items loaded so far in this epoch failed (first: fake:1: "
                  "corrupt image)");
  EXPECT_EQ(delivered, 10);
}

TEST(DataLoader, BadPhotosTogetherAtTheStartOfAnOrderedPassAreSkipped) {
  // One supplier's broken files sort together: 12 bad items of 100, all at the start.
  std::set<int64_t> bad;
  for (int64_t i = 0; i < 12; ++i) bad.insert(i);
  LoaderOptions o;
  o.batch_size = 4;
  Loader loader(std::make_shared<FakeDataset>(100, bad), index_and_draw, o);
  const auto batches = run_epoch(loader, 0);
  EXPECT_EQ(all_indices(batches).size(), 88u);
  EXPECT_EQ(loader.errors().size(), 12u);
}

TEST(DataLoader, DestructionMidEpochDoesNotHang) {
  const auto start = std::chrono::steady_clock::now();
  {
    LoaderOptions o;
    o.batch_size = 8;
    o.workers = 3;
    o.prefetch = 4;
    Loader loader(std::make_shared<FakeDataset>(400, std::set<int64_t>{}, 5), index_and_draw, o);
    loader.start_epoch(0);
    Batch b;
    ASSERT_TRUE(loader.next(b));
  }
  { Loader never_started(std::make_shared<FakeDataset>(10), index_and_draw, LoaderOptions{}); }
  {
    Loader just_started(std::make_shared<FakeDataset>(400, std::set<int64_t>{}, 5), index_and_draw,
                        LoaderOptions{});
    just_started.start_epoch(0);
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(seconds, 5.0);
}

TEST(DataLoader, Errors) {
  auto data = std::make_shared<FakeDataset>(10);
  LoaderOptions o;
  o.batch_size = 0;
  EXPECT_CONTAINS(error_of([&] { Loader l(data, index_and_draw, o); }), "batch size 0 is invalid");
  o.batch_size = 2;
  o.prefetch = 0;
  EXPECT_CONTAINS(error_of([&] { Loader l(data, index_and_draw, o); }),
                  "prefetch 0 is out of range");
  o.prefetch = 2;
  EXPECT_CONTAINS(error_of([&] { Loader l(nullptr, index_and_draw, o); }), "null data set");
  EXPECT_CONTAINS(error_of([&] { Loader l(data, nullptr, o); }), "without a sample transform");
  Loader loader(data, index_and_draw, o);
  Batch b;
  EXPECT_CONTAINS(error_of([&] { loader.next(b); }), "before start_epoch");

  // A transform whose output shape varies is a bug, reported even when not strict.
  Loader ragged(
      data,
      [](const cv::Mat& m, std::mt19937_64&) { return at::zeros({m.data[0] % 2 == 0 ? 2 : 3}); },
      o);
  ragged.start_epoch(0);
  EXPECT_CONTAINS(error_of([&] { ragged.next(b); }), "return CPU tensors of one shape");
}

TEST(DataLoader, TrainTransformOnImageFolder) {
  const TempDir tmp("data-loader-folder");
  const fs::path& root = tmp.path();
  make_classes(root, {{"a", 5}, {"b", 4}});
  DataOptions d;
  d.source = root.string();
  d.val_split = 0;
  const DataSplits s = open_data(d);
  TrainTransform t;
  t.size = 16;
  t.auto_augment = "trivialaugment";
  LoaderOptions o;
  o.batch_size = 4;
  o.shuffle = true;
  Loader loader(
      s.train,
      [t](const cv::Mat& m, std::mt19937_64& rng) {
        return vitrine::image::train_transform(m, t, rng);
      },
      o);
  const std::vector<Batch> batches = run_epoch(loader, 0);
  ASSERT_EQ(batches.size(), 3u);
  EXPECT_EQ(batches[0].images.sizes(), (std::vector<int64_t>{4, 3, 16, 16}));
  EXPECT_EQ(batches[2].images.sizes(), (std::vector<int64_t>{1, 3, 16, 16}));
  for (const auto& b : batches) {
    for (size_t r = 0; r < b.indices.size(); ++r) {
      EXPECT_EQ(b.targets[r].item<int64_t>(), s.train->labels(b.indices[r]).at(0));
    }
  }
}

// ---- Augmentations ----------------------------------------------------------------------

namespace {

using vitrine::image::train_augment;
using vitrine::image::train_transform;

/// Every value within [(0 - mean) / std, (1 - mean) / std] of its channel.
void expect_normalised_range(const at::Tensor& x, const TrainTransform& t) {
  for (int64_t c = 0; c < x.size(0); ++c) {
    const float m = t.mean.size() == 1 ? t.mean[0] : t.mean[c];
    const float s = t.std.size() == 1 ? t.std[0] : t.std[c];
    EXPECT_GE(x[c].min().item<float>(), (0.0f - m) / s - 1e-5f) << "channel " << c;
    EXPECT_LE(x[c].max().item<float>(), (1.0f - m) / s + 1e-5f) << "channel " << c;
  }
}

bool same_pixels(const cv::Mat& a, const cv::Mat& b) {
  return a.size() == b.size() && a.type() == b.type() && cv::norm(a, b, cv::NORM_INF) == 0;
}

TrainTransform whole_image(int64_t size) {
  TrainTransform t;
  t.size = size;
  t.scale = {1.0, 1.0};
  t.ratio = {1.0, 1.0};
  t.hflip = 0;
  return t;
}

}  // namespace

namespace {

/// The reference pattern of the op table below: x, y, channel -> a byte with edges and texture.
cv::Mat pattern(int channels, bool narrow) {
  cv::Mat m(29, 37, CV_8UC(channels));
  for (int y = 0; y < m.rows; ++y) {
    for (int x = 0; x < m.cols; ++x) {
      for (int c = 0; c < channels; ++c) {
        const int v = (x * 7 + y * 13 + c * 50 + (x * y) % 17 + ((x ^ y) & 5) * 9) & 255;
        m.ptr<uint8_t>(y)[x * channels + c] = static_cast<uint8_t>(narrow ? 60 + v % 101 : v);
      }
    }
  }
  return m;
}

/// sum of byte[i] * (i % 251 + 1) over the image in memory order (H, W, C).
int64_t checksum(const cv::Mat& m) {
  int64_t sum = 0;
  int64_t i = 0;
  for (int y = 0; y < m.rows; ++y) {
    const uint8_t* p = m.ptr<uint8_t>(y);
    for (int k = 0; k < m.cols * m.channels(); ++k, ++i) sum += p[k] * (i % 251 + 1);
  }
  return sum;
}

}  // namespace

TEST(Augment, OpsEqualTorchvisionOnPil) {
  // Checksums of torchvision 0.14.1's _apply_op (Pillow 9.4, NEAREST, fill None) on the same
  // pattern, made with python3-torch:
  //   _apply_op(Image.fromarray(pattern), op, magnitude, InterpolationMode.NEAREST, None)
  // Channels 3 = RGB pattern, 1 = its first channel as an "L" image, 0 = the narrow-range RGB
  // pattern (60 + v % 101).
  struct Case {
    int channels;
    const char* op;
    double magnitude;
    int64_t expected;
  };
  const Case cases[] = {
      {3, "Identity", 0.0, 51644386},    {3, "ShearX", 0.3, 44812628},
      {3, "ShearX", -0.99, 31456357},    {3, "ShearY", 0.5, 34842844},
      {3, "ShearY", -0.2, 46972573},     {3, "TranslateX", 9.7, 39181144},
      {3, "TranslateX", -32.0, 6698957}, {3, "TranslateY", 14.0, 27149765},
      {3, "TranslateY", -3.0, 45462035}, {3, "Rotate", 30.0, 42746211},
      {3, "Rotate", -135.0, 41660537},   {3, "Rotate", 90.0, 40021473},
      {3, "Rotate", 180.0, 51113354},    {3, "Brightness", 0.5, 68634494},
      {3, "Brightness", -0.9, 4993235},  {3, "Color", 0.9, 52364993},
      {3, "Color", -0.6, 51197897},      {3, "Contrast", 0.7, 51673432},
      {3, "Contrast", -0.5, 51173348},   {3, "Sharpness", 0.99, 51547393},
      {3, "Sharpness", -0.8, 51289610},  {3, "Posterize", 2.0, 38926400},
      {3, "Posterize", 5.0, 50276392},   {3, "Solarize", 100.0, 26708929},
      {3, "Solarize", 246.5, 47980953},  {3, "AutoContrast", 0.0, 51644386},
      {3, "Equalize", 0.0, 53889618},    {1, "ShearX", 0.3, 14321224},
      {1, "ShearX", -0.99, 9922024},     {1, "ShearY", 0.5, 11507664},
      {1, "ShearY", -0.2, 15771180},     {1, "TranslateX", 9.7, 12906499},
      {1, "TranslateX", -32.0, 2012805}, {1, "TranslateY", 14.0, 8350809},
      {1, "TranslateY", -3.0, 14927159}, {1, "Rotate", 30.0, 14632147},
      {1, "Rotate", -135.0, 14729359},   {1, "Rotate", 90.0, 13246595},
      {1, "Rotate", 180.0, 16398051},    {1, "Brightness", 0.5, 21643394},
      {1, "Brightness", -0.9, 1576930},  {1, "Color", 0.9, 16320317},
      {1, "Color", -0.6, 16320317},      {1, "Contrast", 0.7, 16193038},
      {1, "Contrast", -0.5, 16382642},   {1, "Sharpness", 0.99, 16289832},
      {1, "Sharpness", -0.8, 16252329},  {1, "Posterize", 2.0, 12331840},
      {1, "Posterize", 5.0, 15879168},   {1, "Solarize", 100.0, 8450343},
      {1, "Solarize", 246.5, 15364900},  {1, "AutoContrast", 0.0, 16320317},
      {1, "Equalize", 0.0, 16980929},    {0, "AutoContrast", 0.0, 46721987},
      {0, "Equalize", 0.0, 53522166},    {0, "Contrast", 0.6, 42509354},
  };
  for (const Case& c : cases) {
    const cv::Mat in = pattern(c.channels == 0 ? 3 : c.channels, c.channels == 0);
    const cv::Mat before = in.clone();
    const cv::Mat out = vitrine::image::apply_augment_op(in, c.op, c.magnitude);
    EXPECT_EQ(out.size(), in.size());
    EXPECT_EQ(out.type(), in.type());
    EXPECT_EQ(checksum(out), c.expected) << c.op << " " << c.magnitude << " on " << c.channels;
    EXPECT_TRUE(same_pixels(in, before));
  }
  const cv::Mat rgb = pattern(3, false);
  EXPECT_CONTAINS(error_of([&] { vitrine::image::apply_augment_op(rgb, "Invert", 0); }),
                  "unknown augment op 'Invert'; use one of Identity, ShearX");
  EXPECT_CONTAINS(error_of([&] { vitrine::image::apply_augment_op(rgb, "Posterize", 9); }),
                  "Posterize keeps 9 bits; use 0 to 8");
}

TEST(Augment, KeepsShapeAndRange) {
  const cv::Mat rgb = noise(48, 40, 3, 5);
  std::vector<std::pair<std::string, TrainTransform>> configs;
  TrainTransform t;
  t.size = 24;
  configs.push_back({"default", t});
  TrainTransform r = t;
  r.rotation = 30;
  configs.push_back({"rotation", r});
  TrainTransform j = t;
  j.brightness = j.contrast = j.saturation = 0.4;
  j.hue = 0.1;
  configs.push_back({"jitter", j});
  TrainTransform ta = t;
  ta.auto_augment = "trivialaugment";
  configs.push_back({"trivialaugment", ta});
  TrainTransform ra = t;
  ra.auto_augment = "randaugment";
  ra.randaugment_ops = 3;
  ra.randaugment_magnitude = 30;
  configs.push_back({"randaugment", ra});
  TrainTransform e = t;
  e.random_erasing = 1.0;
  configs.push_back({"erasing", e});
  TrainTransform all = j;
  all.rotation = 10;
  all.auto_augment = "randaugment";
  all.random_erasing = 0.5;
  all.interpolation = vitrine::image::Interpolation::kBicubic;
  configs.push_back({"all", all});
  TrainTransform nearest = t;
  nearest.interpolation = vitrine::image::Interpolation::kNearest;
  nearest.size = 100;  // enlarging
  configs.push_back({"nearest", nearest});
  TrainTransform simclr = j;  // SimCLR's views: jitter with p 0.8, grayscale, blur
  simclr.jitter_prob = 0.8;
  simclr.grayscale = 0.5;
  simclr.blur = 0.5;
  configs.push_back({"simclr", simclr});

  for (const auto& [name, cfg] : configs) {
    SCOPED_TRACE(name);
    // Enough seeds that TrivialAugmentWide draws each of its 14 ops.
    for (uint64_t seed = 0; seed < 60; ++seed) {
      std::mt19937_64 rng(seed);
      const at::Tensor x = train_transform(rgb, cfg, rng);
      ASSERT_EQ(x.sizes(), (std::vector<int64_t>{3, cfg.size, cfg.size}));
      ASSERT_EQ(x.scalar_type(), at::kFloat);
      expect_normalised_range(x, cfg);
      std::mt19937_64 rng2(seed);
      const cv::Mat m = train_augment(rgb, cfg, rng2);
      ASSERT_EQ(m.type(), CV_8UC3);
      ASSERT_EQ(m.size(), cv::Size(int(cfg.size), int(cfg.size)));
    }
  }

  // Erasing fills a rectangle with 0 (the mean colour after normalisation).
  std::mt19937_64 rng(1);
  const at::Tensor erased = train_transform(noise(64, 64, 3, 1), e, rng);
  EXPECT_GT((erased == 0).sum().item<int64_t>(), 3 * 24 * 24 / 100);
}

TEST(Augment, GrayscaleAndBlurDoWhatTheySay) {
  const cv::Mat rgb = noise(32, 32, 3, 7);
  TrainTransform t;
  t.size = 32;
  t.scale = {1.0, 1.0};
  t.ratio = {1.0, 1.0};
  t.hflip = 0;
  TrainTransform grey = t;
  grey.grayscale = 1.0;
  std::mt19937_64 rng(3);
  const cv::Mat g = train_augment(rgb, grey, rng);
  ASSERT_EQ(g.type(), CV_8UC3);  // still RGB, with three equal channels
  std::vector<cv::Mat> planes;
  cv::split(g, planes);
  EXPECT_EQ(cv::norm(planes[0], planes[1], cv::NORM_INF), 0);
  EXPECT_EQ(cv::norm(planes[1], planes[2], cv::NORM_INF), 0);
  TrainTransform blur = t;
  blur.blur = 1.0;
  const cv::Mat plain = train_augment(rgb, t, rng);
  const cv::Mat b = train_augment(rgb, blur, rng);
  // Blurring noise lowers its spread.
  cv::Scalar mean_p, sd_p, mean_b, sd_b;
  cv::meanStdDev(plain, mean_p, sd_p);
  cv::meanStdDev(b, mean_b, sd_b);
  EXPECT_LT(sd_b[0], 0.8 * sd_p[0]);
  // Probability 0.8: about four in five draws jitter.
  TrainTransform j = t;
  j.brightness = 0.9;
  j.jitter_prob = 0.8;
  int changed = 0;
  for (uint64_t seed = 0; seed < 200; ++seed) {
    std::mt19937_64 r(seed);
    changed += cv::norm(train_augment(rgb, j, r), plain, cv::NORM_INF) > 0;
  }
  EXPECT_NEAR(changed / 200.0, 0.8, 0.1);
}

TEST(Augment, SameSeedSameOutput) {
  const cv::Mat rgb = noise(50, 37, 3, 6);
  const cv::Mat before = rgb.clone();
  TrainTransform t;
  t.size = 20;
  t.rotation = 15;
  t.brightness = t.contrast = t.saturation = 0.3;
  t.hue = 0.05;
  t.auto_augment = "trivialaugment";
  t.random_erasing = 0.5;
  for (uint64_t seed = 0; seed < 10; ++seed) {
    std::mt19937_64 a(seed), b(seed), c(seed + 100);
    const at::Tensor xa = train_transform(rgb, t, a);
    EXPECT_TRUE(at::equal(xa, train_transform(rgb, t, b)));
    EXPECT_FALSE(at::equal(xa, train_transform(rgb, t, c)));
  }
  EXPECT_TRUE(same_pixels(rgb, before));  // the input is never written
}

TEST(Augment, HorizontalFlipMirrorsExactly) {
  const cv::Mat rgb = noise(32, 32, 3, 7);
  TrainTransform t = whole_image(32);
  std::mt19937_64 rng(0);
  EXPECT_TRUE(same_pixels(train_augment(rgb, t, rng), rgb));
  t.hflip = 1.0;
  cv::Mat mirrored;
  cv::flip(rgb, mirrored, 1);
  EXPECT_TRUE(same_pixels(train_augment(rgb, t, rng), mirrored));
  EXPECT_TRUE(
      at::equal(train_transform(rgb, t, rng), vitrine::image::to_tensor(mirrored, t.mean, t.std)));
}

TEST(Augment, WholeImageCropIsAPlainResize) {
  std::mt19937_64 rng(3);
  const cv::Mat big = noise(64, 64, 3, 8);
  cv::Mat expected;
  cv::resize(big, expected, cv::Size(32, 32), 0, 0, cv::INTER_AREA);
  TrainTransform t = whole_image(32);
  EXPECT_TRUE(same_pixels(train_augment(big, t, rng), expected));
  EXPECT_TRUE(
      at::equal(train_transform(big, t, rng), vitrine::image::to_tensor(expected, t.mean, t.std)));

  const cv::Mat small = noise(16, 16, 3, 9);
  cv::resize(small, expected, cv::Size(32, 32), 0, 0, cv::INTER_LINEAR);
  EXPECT_TRUE(same_pixels(train_augment(small, t, rng), expected));
  t.interpolation = vitrine::image::Interpolation::kBicubic;
  cv::resize(small, expected, cv::Size(32, 32), 0, 0, cv::INTER_CUBIC);
  EXPECT_TRUE(same_pixels(train_augment(small, t, rng), expected));

  // A 40 x 20 image cannot hold a square of its whole area: after 10 tries, torchvision's
  // fallback crops the centre to the nearest allowed ratio (20 x 20 at x = 10).
  const cv::Mat wide = noise(40, 20, 3, 10);
  t.interpolation = vitrine::image::Interpolation::kBilinear;
  cv::resize(wide(cv::Rect(10, 0, 20, 20)), expected, cv::Size(32, 32), 0, 0, cv::INTER_LINEAR);
  EXPECT_TRUE(same_pixels(train_augment(wide, t, rng), expected));
}

TEST(Augment, Grey) {
  const cv::Mat rgb = noise(30, 30, 3, 11);
  TrainTransform t;
  t.size = 16;
  t.channels = 1;
  t.mean = {0.5f};
  t.std = {0.25f};
  t.brightness = t.contrast = t.saturation = 0.4;
  t.hue = 0.2;
  t.auto_augment = "trivialaugment";
  t.random_erasing = 0.5;
  for (uint64_t seed = 0; seed < 40; ++seed) {
    std::mt19937_64 rng(seed);
    const at::Tensor x = train_transform(rgb, t, rng);
    ASSERT_EQ(x.sizes(), (std::vector<int64_t>{1, 16, 16}));
    expect_normalised_range(x, t);
  }
  // Grey in, grey out (Fashion-MNIST); the grey of an RGB image is PIL's.
  const cv::Mat grey = noise(28, 28, 1, 12);
  TrainTransform w = whole_image(28);
  w.channels = 1;
  w.mean = {0.0f};
  w.std = {1.0f};
  std::mt19937_64 rng(0);
  EXPECT_TRUE(same_pixels(train_augment(grey, w, rng), grey));
  const cv::Mat rgb28 = rgb(cv::Rect(0, 0, 28, 28)).clone();
  EXPECT_TRUE(same_pixels(train_augment(rgb28, w, rng), vitrine::image::to_grey(rgb28)));
  // Grey in, RGB out: three equal planes.
  const at::Tensor x = train_transform(grey, whole_image(28), rng);
  ASSERT_EQ(x.size(0), 3);
  const TrainTransform d;
  EXPECT_TRUE(at::allclose((x[0] * d.std[0] + d.mean[0]), (x[1] * d.std[1] + d.mean[1]), 0, 1e-5));
}

TEST(Augment, RandAugmentWithoutOpsChangesNothing) {
  const cv::Mat rgb = noise(40, 40, 3, 13);
  TrainTransform t;
  t.size = 24;
  TrainTransform r = t;
  r.auto_augment = "randaugment";
  r.randaugment_ops = 0;
  std::mt19937_64 a(5), b(5);
  EXPECT_TRUE(same_pixels(train_augment(rgb, t, a), train_augment(rgb, r, b)));
}

TEST(Augment, ColourJitterStaysInItsRange) {
  // A flat grey image under brightness 0.5 only: every pixel becomes trunc(100 f), f in
  // [0.5, 1.5].
  const cv::Mat flat(20, 20, CV_8UC3, cv::Scalar::all(100));
  TrainTransform t = whole_image(20);
  t.brightness = 0.5;
  std::set<int> seen;
  for (uint64_t seed = 0; seed < 30; ++seed) {
    std::mt19937_64 rng(seed);
    const cv::Mat m = train_augment(flat, t, rng);
    double lo = 0, hi = 0;
    cv::minMaxLoc(m.reshape(1), &lo, &hi);
    EXPECT_EQ(lo, hi);
    EXPECT_GE(lo, 50);
    EXPECT_LE(hi, 150);
    seen.insert(static_cast<int>(lo));
  }
  EXPECT_GT(seen.size(), 10u);
}

TEST(Augment, BadParametersAreClearErrors) {
  const cv::Mat rgb = noise(8, 8, 3, 1);
  auto message = [&](const std::function<void(TrainTransform&)>& change) {
    TrainTransform t;
    change(t);
    std::mt19937_64 rng(0);
    return error_of([&] { train_transform(rgb, t, rng); });
  };
  EXPECT_CONTAINS(message([](auto& t) { t.size = 0; }), "size 0 is out of range");
  EXPECT_CONTAINS(message([](auto& t) {
                    t.scale = {0.5, 0.1};
                  }),
                  "scale (0.5, 0.1) is invalid; give area fractions with 0 < min <= max <= 1");
  EXPECT_CONTAINS(message([](auto& t) { t.scale = {0.0, 1.0}; }), "scale (0, 1) is invalid");
  EXPECT_CONTAINS(message([](auto& t) { t.ratio = {0.0, 1.0}; }), "ratio (0, 1) is invalid");
  EXPECT_CONTAINS(message([](auto& t) { t.hflip = 1.5; }), "flip probability 1.5 is out of range");
  EXPECT_CONTAINS(message([](auto& t) { t.rotation = -5; }), "rotation -5 degrees is out of range");
  EXPECT_CONTAINS(message([](auto& t) { t.contrast = -1; }), "contrast -1 is invalid");
  EXPECT_CONTAINS(message([](auto& t) { t.hue = 0.6; }),
                  "hue 0.6 is out of range; use 0 (off) to 0.5");
  EXPECT_CONTAINS(message([](auto& t) { t.auto_augment = "autoaugment"; }),
                  "unknown auto-augment policy 'autoaugment'; use none, trivialaugment or "
                  "randaugment");
  EXPECT_CONTAINS(message([](auto& t) { t.randaugment_magnitude = 31; }),
                  "RandAugment magnitude 31 is out of range; use 0 to 30");
  EXPECT_CONTAINS(message([](auto& t) { t.randaugment_ops = -1; }), "RandAugment ops -1");
  EXPECT_CONTAINS(message([](auto& t) { t.random_erasing = 2; }),
                  "random erasing probability 2 is out of range");
  EXPECT_CONTAINS(message([](auto& t) { t.channels = 2; }), "2 channels; use 3 (RGB) or 1 (grey)");
  EXPECT_CONTAINS(message([](auto& t) { t.mean = {0.5f, 0.5f}; }), "2 mean and 3 std values");
  EXPECT_CONTAINS(message([](auto& t) { t.std = {0.2f, 0.0f, 0.2f}; }), "std 0 is invalid");
  std::mt19937_64 rng(0);
  EXPECT_CONTAINS(error_of([&] { train_transform(cv::Mat(), TrainTransform{}, rng); }),
                  "the image is empty");
  EXPECT_CONTAINS(error_of([&] { train_transform(cv::Mat(4, 4, CV_8UC4), TrainTransform{}, rng); }),
                  "expected an 8-bit RGB or grey image");
  EXPECT_CONTAINS(
      error_of([&] { train_transform(cv::Mat(4, 4, CV_32FC3), TrainTransform{}, rng); }),
      "expected an 8-bit RGB or grey image");
}

TEST(DataCsv, WrittenFieldsReadBackUnchanged) {
  const std::vector<std::string> fields = {"plain", "a, b", "say \"hi\"", " padded ", "\ttab",
                                           "two\nlines", "", "T-shirt/top"};
  std::string line;
  for (size_t i = 0; i < fields.size(); ++i) line += (i ? "," : "") + vitrine::csv_field(fields[i]);
  const auto records = vitrine::parse_csv("h1,h2,h3,h4,h5,h6,h7,h8\n" + line + "\n", "t.csv");
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[1].fields, fields);
  EXPECT_EQ(vitrine::csv_field("plain"), "plain");  // quoted only when it must be
}

TEST(DataCsv, LineNumbersCountLinesAsEditorsShowThem) {
  for (const std::string end : {"\n", "\r\n", "\r", "\r\r\n"}) {
    const auto records =
        vitrine::parse_csv("h1,h2" + end + "a,b" + end + end + "\"c" + end + "d\",e" + end + "f,g",
                           "t.csv");
    ASSERT_EQ(records.size(), 4u);
    EXPECT_EQ(records[1].line, 2) << "line end " << ::testing::PrintToString(end);
    EXPECT_EQ(records[2].line, 4) << "after a blank line";
    EXPECT_EQ(records[3].line, 6) << "after a field of two lines";
  }
}
