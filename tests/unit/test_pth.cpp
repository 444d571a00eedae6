// pth_load against checkpoints written by PyTorch itself (scripts/testdata/pth_cases.py,
// under $VITRINE_TEST_DATA/pth) and against archives crafted here to be malformed.
#include "test_util.h"
#include "vitrine/core/pth.h"

#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <caffe2/serialize/inline_container.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "vitrine/core/error.h"

namespace vitrine {
namespace {

namespace fs = std::filesystem;
using namespace std::string_literals;

// Where the generated checkpoints live (made by scripts/testdata/pth_cases.py).
void pth_data_dir(std::string* out) {
  *out = vitrine::test::data_dir("pth");
  ASSERT_TRUE(fs::is_directory(*out)) << *out << " does not exist: run "
                                      << "/usr/bin/python3 scripts/make_test_data.py "
                                      << vitrine::test::data_dir();
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

at::ScalarType parse_dtype(const std::string& name) {
  static const std::vector<std::pair<std::string, at::ScalarType>> kNames = {
      {"float32", at::kFloat}, {"float64", at::kDouble}, {"float16", at::kHalf},
      {"bfloat16", at::kBFloat16}, {"int64", at::kLong}, {"int32", at::kInt},
      {"int16", at::kShort}, {"int8", at::kChar}, {"uint8", at::kByte}, {"bool", at::kBool},
  };
  for (const auto& entry : kNames) {
    if (entry.first == name) return entry.second;
  }
  ADD_FAILURE() << "unknown dtype in index.tsv: " << name;
  return at::kFloat;
}

struct Expected {
  std::string name;
  at::ScalarType dtype;
  std::vector<int64_t> shape;
  std::vector<double> values;
};

std::vector<Expected> read_expected(const std::string& folder) {
  std::vector<Expected> out;
  std::ifstream index(folder + "/index.tsv");
  EXPECT_TRUE(index.good()) << "cannot open " << folder << "/index.tsv";
  std::string line;
  while (std::getline(index, line)) {
    std::vector<std::string> fields;
    std::stringstream ss(line);
    std::string field;
    while (std::getline(ss, field, '\t')) fields.push_back(field);
    if (fields.size() == 3) fields.insert(fields.begin() + 2, "");  // 0-dim: empty shape
    EXPECT_EQ(fields.size(), 4u) << "bad index.tsv line: " << line;
    if (fields.size() != 4) continue;
    Expected e;
    e.name = fields[0];
    e.dtype = parse_dtype(fields[1]);
    std::stringstream dims(fields[2]);
    std::string dim;
    while (std::getline(dims, dim, ',')) e.shape.push_back(std::stoll(dim));
    const std::string raw = read_file(folder + "/" + fields[3]);
    e.values.resize(raw.size() / sizeof(double));
    std::memcpy(e.values.data(), raw.data(), e.values.size() * sizeof(double));
    out.push_back(std::move(e));
  }
  return out;
}

// Exact names, order, dtypes, shapes and values; results must be contiguous and own only
// their own data.
void expect_matches(const StateDict& sd, const std::string& expected_folder) {
  const std::vector<Expected> expected = read_expected(expected_folder);
  ASSERT_FALSE(expected.empty());
  ASSERT_EQ(sd.size(), expected.size());
  for (size_t i = 0; i < sd.size(); ++i) {
    const Expected& e = expected[i];
    const at::Tensor& t = sd[i].second;
    SCOPED_TRACE("tensor " + e.name);
    EXPECT_EQ(sd[i].first, e.name);
    EXPECT_EQ(t.scalar_type(), e.dtype);
    EXPECT_EQ(t.sizes().vec(), e.shape);
    EXPECT_TRUE(t.is_contiguous());
    EXPECT_EQ(t.storage_offset(), 0);
    EXPECT_EQ(t.storage().nbytes(), t.nbytes());
    EXPECT_FALSE(t.requires_grad());
    ASSERT_EQ(static_cast<size_t>(t.numel()), e.values.size());
    const at::Tensor d = t.to(at::kDouble).contiguous();
    const double* got = d.data_ptr<double>();
    for (size_t k = 0; k < e.values.size(); ++k) {
      ASSERT_EQ(got[k], e.values[k]) << "element " << k;
    }
  }
}

// The message of the vitrine::Error that loading `path` throws (fails on any other outcome).
std::string load_error(const std::string& path) {
  try {
    pth_load(path);
  } catch (const Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << path << ": threw a non-vitrine exception: " << e.what();
    return "";
  }
  ADD_FAILURE() << path << ": loaded, but should have been rejected";
  return "";
}

class PthFiles : public ::testing::Test {
 protected:
  void SetUp() override { pth_data_dir(&dir_); }

  std::string file(const std::string& name) const { return dir_ + "/" + name + ".pth"; }

  void expect_good(const std::string& name, const std::string& expected = "") {
    SCOPED_TRACE(file(name));
    StateDict sd;
    try {
      sd = pth_load(file(name));
    } catch (const std::exception& e) {
      FAIL() << "pth_load threw: " << e.what();
    }
    expect_matches(sd, dir_ + "/" + (expected.empty() ? name : expected) + ".expected");
  }

  std::string dir_;
};

TEST_F(PthFiles, PlainStateDict) { expect_good("small"); }

TEST_F(PthFiles, HalfPrecision) { expect_good("half"); }

TEST_F(PthFiles, BFloat16) { expect_good("bfloat16"); }

TEST_F(PthFiles, AllDtypes) { expect_good("dtypes"); }

TEST_F(PthFiles, NewerPickleProtocol) { expect_good("protocol5", "small"); }

TEST_F(PthFiles, ParametersAndTaggedTensors) { expect_good("params"); }

TEST_F(PthFiles, ViewsAreMaterialised) {
  expect_good("views");
  const StateDict sd = pth_load(file("views"));
  // Every view shared one storage in the file; none may alias another after loading.
  for (size_t i = 0; i < sd.size(); ++i) {
    for (size_t j = i + 1; j < sd.size(); ++j) {
      if (sd[i].second.numel() == 0 || sd[j].second.numel() == 0) continue;
      EXPECT_NE(sd[i].second.storage().unsafeGetStorageImpl(),
                sd[j].second.storage().unsafeGetStorageImpl())
          << sd[i].first << " and " << sd[j].first;
    }
  }
  ASSERT_EQ(sd[1].first, "transposed");
  EXPECT_TRUE(sd[1].second.equal(sd[0].second.t()));
}

TEST_F(PthFiles, TrainingCheckpointIsUnwrapped) { expect_good("wrapped", "small"); }

// torchvision's and timm's training scripts save their argparse.Namespace (and numpy
// values) beside the weights: nothing of them runs, and the weights load.
TEST_F(PthFiles, TrainingCheckpointsWithTheirRunsArgumentsLoad) {
  expect_good("training_args");
  expect_good("timm_saver");
  const std::string msg = load_error(file("object_in_state_dict"));
  EXPECT_NE(msg.find("refusing to load: the checkpoint's pickle references "
                     "'argparse.Namespace'"), std::string::npos) << msg;
}

TEST_F(PthFiles, DataParallelPrefixIsStripped) { expect_good("prefixed", "small"); }

TEST_F(PthFiles, LegacyFormatIsExplained) {
  const std::string msg = load_error(file("legacy"));
  EXPECT_NE(msg.find(file("legacy")), std::string::npos) << msg;
  EXPECT_NE(msg.find("not yet supported"), std::string::npos) << msg;
  EXPECT_NE(msg.find("torch.save(torch.load('old.pth'), 'new.pth')"), std::string::npos)
      << msg;
}

TEST_F(PthFiles, MaliciousPickleIsRefusedAndNotRun) {
  const std::string pwned = dir_ + "/pwned";
  fs::remove(pwned);
  for (const char* name : {"evil", "evil_nested"}) {
    const std::string msg = load_error(file(name));
    EXPECT_NE(msg.find(file(name)), std::string::npos) << msg;
    EXPECT_NE(msg.find("refusing to load"), std::string::npos) << msg;
    EXPECT_NE(msg.find("system'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("torch.save(model.state_dict(), path)"), std::string::npos) << msg;
  }
  EXPECT_FALSE(fs::exists(pwned)) << "the pickle's payload ran";
}

TEST_F(PthFiles, TruncatedFileIsAnError) {
  const std::string msg = load_error(file("truncated"));
  EXPECT_NE(msg.find(file("truncated")), std::string::npos) << msg;
}

TEST_F(PthFiles, TextFileIsAnError) {
  const std::string msg = load_error(file("not_a_checkpoint"));
  EXPECT_NE(msg.find(file("not_a_checkpoint")), std::string::npos) << msg;
  EXPECT_NE(msg.find("not a PyTorch checkpoint"), std::string::npos) << msg;
}

TEST_F(PthFiles, MissingFileAndDirectoryAreErrors) {
  EXPECT_NE(load_error(dir_ + "/no_such.pth").find("no such checkpoint"), std::string::npos);
  EXPECT_NE(load_error(dir_).find("is a directory"), std::string::npos);
}

// Every prefix of the file, and of its pickle inside a sound archive, is rejected cleanly.
TEST_F(PthFiles, EveryTruncationIsAnError) {
  const std::string data = read_file(file("small"));
  const std::string cut = ::testing::TempDir() + "/vitrine_pth_cut.pth";
  for (size_t n = 0; n < data.size(); n += 97) {
    std::ofstream(cut, std::ios::binary) << data.substr(0, n);
    SCOPED_TRACE("first " + std::to_string(n) + " bytes");
    load_error(cut);
  }
  fs::remove(cut);
}

// ---------------------------------------------------------------------------------------
// Crafted archives: pickles torch.save would never write.

std::string le32(uint32_t v) {
  std::string s(4, '\0');
  for (int k = 0; k < 4; ++k) s[k] = static_cast<char>((v >> (8 * k)) & 0xff);
  return s;
}
std::string str(const std::string& s) { return "X" + le32(static_cast<uint32_t>(s.size())) + s; }
std::string num(int32_t v) { return "J" + le32(static_cast<uint32_t>(v)); }
std::string ints(const std::vector<int32_t>& vs) {
  std::string s = "(";
  for (int32_t v : vs) s += num(v);
  return s + "t";
}

// The argument tuple of _rebuild_tensor_v2 over storage `key`, a FloatStorage of `numel`
// elements.
std::string tensor_args(const std::string& key, int32_t numel, int32_t offset,
                        const std::vector<int32_t>& size, const std::vector<int32_t>& stride) {
  return "((" + str("storage") + "ctorch\nFloatStorage\n" + str(key) + str("cpu") + num(numel) +
         "tQ" + num(offset) + ints(size) + ints(stride) + "\x89" "ccollections\nOrderedDict\n)Rt";
}

std::string tensor(const std::string& key, int32_t numel, int32_t offset,
                   const std::vector<int32_t>& size, const std::vector<int32_t>& stride) {
  return "ctorch._utils\n_rebuild_tensor_v2\n" + tensor_args(key, numel, offset, size, stride) +
         "R";
}

// What newer PyTorch writes for a tensor (subclass) with Python attributes.
std::string typed_tensor(const std::string& type_global) {
  return "ctorch._tensor\n_rebuild_from_type_v2\n(ctorch._utils\n_rebuild_tensor_v2\n" +
         type_global + tensor_args("0", 6, 0, {6}, {1}) + "}" + str("note") + str("x") + "stR";
}

class PthCrafted : public ::testing::Test {
 protected:
  void TearDown() override { fs::remove(path_); }

  // Writes an archive with `pickle` as data.pkl and `records` as data/<name>.
  const std::string& write(const std::string& pickle,
                           const std::vector<std::pair<std::string, std::string>>& records =
                               {{"0", std::string(24, '\0')}}) {
    caffe2::serialize::PyTorchStreamWriter writer(path_);
    writer.writeRecord("data.pkl", pickle.data(), pickle.size());
    for (const auto& record : records) {
      writer.writeRecord("data/" + record.first, record.second.data(), record.second.size());
    }
    writer.writeEndOfFile();
    return path_;
  }

  void expect_error(const std::string& pickle, const std::string& phrase) {
    const std::string msg = load_error(write(pickle));
    EXPECT_NE(msg.find(path_), std::string::npos) << msg;
    EXPECT_NE(msg.find(phrase), std::string::npos) << "expected '" << phrase << "' in: " << msg;
  }

  // One file per test: ctest runs tests of this fixture in parallel processes.
  std::string path_ = ::testing::TempDir() + "/vitrine_pth_crafted_" +
                      ::testing::UnitTest::GetInstance()->current_test_info()->name() + ".pth";
};

TEST_F(PthCrafted, WellFormedBaseline) {
  const std::string pickle =
      "\x80\x02}(" + str("w") + tensor("0", 6, 0, {2, 3}, {3, 1}) + "u.";
  std::string data(24, '\0');
  const float values[6] = {1, 2, 3, 4, 5, 6};
  std::memcpy(&data[0], values, sizeof(values));
  const StateDict sd = pth_load(write(pickle, {{"0", data}}));
  ASSERT_EQ(sd.size(), 1u);
  EXPECT_EQ(sd[0].first, "w");
  EXPECT_TRUE(sd[0].second.equal(at::arange(1, 7, at::kFloat).reshape({2, 3})));
}

TEST_F(PthCrafted, OutOfBoundsView) {
  expect_error("\x80\x02}(" + str("w") + tensor("0", 6, 0, {2, 3}, {3, 2}) + "u.",
               "reaches element 7 of a 6-element storage");
  expect_error("\x80\x02}(" + str("w") + tensor("0", 6, 4, {3}, {1}) + "u.",
               "reaches element 6");
  expect_error("\x80\x02}(" + str("w") + tensor("0", 6, 0, {2}, {-1}) + "u.",
               "negative size or stride");
  expect_error("\x80\x02}(" + str("w") + tensor("0", 6, 0, {2, 3}, {3}) + "u.",
               "2 sizes but 1 strides");
}

TEST_F(PthCrafted, CopiesBeyondWhatTheFileHoldsAreRefused) {
  // One 4-byte storage expanded (stride 0) to 400 MB, named under three keys through the
  // pickle's memo: each copy alone is allowed, the three together (1.2 GB from a file of a
  // few hundred bytes) are not.
  const std::string pickle = "\x80\x02}(" + str("a") +
                             tensor("0", 1, 0, {100000000}, {0}) + "q\x00"s + str("b") +
                             "h\x00"s + str("c") + "h\x00"s + "u.";
  const std::string msg = load_error(write(pickle, {{"0", std::string(4, '\0')}}));
  EXPECT_CONTAINS(msg, "up to 'c') come to 1200000000 bytes, more than the file's");
}

TEST_F(PthCrafted, BigEndianTensorsAreRefused) {
  const std::string pickle = "\x80\x02}(" + str("w") + tensor("0", 6, 0, {6}, {1}) + "u.";
  for (const std::string order : {"little", "big"}) {
    {
      caffe2::serialize::PyTorchStreamWriter writer(path_);
      writer.writeRecord("data.pkl", pickle.data(), pickle.size());
      writer.writeRecord("byteorder", order.data(), order.size());
      writer.writeRecord("data/0", std::string(24, '\0').data(), 24);
      writer.writeEndOfFile();
    }
    if (order == "little") {
      EXPECT_EQ(pth_load(path_).size(), 1u);
    } else {
      EXPECT_CONTAINS(load_error(path_), "written in 'big' byte order");
    }
  }
}

TEST_F(PthCrafted, CompressedRecordsAreRefusedBeforeTheyAreInflated) {
  const std::string pickle = "\x80\x02}(" + str("w") + tensor("0", 6, 0, {6}, {1}) + "u.";
  std::string bytes = read_file(write(pickle));
  EXPECT_EQ(pth_load(path_).size(), 1u);
  // The central directory entry of data/0 made to say "deflated, 2 GB once inflated": the
  // zip reader would allocate the 2 GB first.
  size_t entry = 0;
  for (size_t at = bytes.find("PK\x01\x02"s); at != std::string::npos;
       at = bytes.find("PK\x01\x02"s, at + 4)) {
    uint16_t name_size = 0;
    std::memcpy(&name_size, &bytes[at + 28], 2);
    const std::string name = bytes.substr(at + 46, name_size);
    if (name.size() >= 6 && name.compare(name.size() - 6, 6, "data/0") == 0) entry = at;
  }
  ASSERT_NE(entry, 0u);
  bytes[entry + 10] = 8;
  const uint32_t claimed = 0x7FFFFFFF;
  std::memcpy(&bytes[entry + 24], &claimed, 4);
  std::ofstream(path_, std::ios::binary | std::ios::trunc) << bytes;
  const std::string msg = load_error(path_);
  EXPECT_CONTAINS(msg, "record '");
  EXPECT_CONTAINS(msg, "data/0' is compressed (zip method 8)");
}

TEST_F(PthCrafted, StorageRecordProblems) {
  expect_error("\x80\x02}(" + str("w") + tensor("0", 5, 0, {5}, {1}) + "u.",
               "holds 24 bytes but 5 elements");
  expect_error("\x80\x02}(" + str("w") + tensor("9", 6, 0, {6}, {1}) + "u.",
               "no record 'data/9'");
}

TEST_F(PthCrafted, PickleMachineErrors) {
  expect_error("\x80\x02h\x05.", "memo entry 5 is used before it is defined");
  expect_error("\x80\x02" "a.", "stack underflow");
  expect_error("\x80\x02t.", "no MARK");
  expect_error("\x80\x02}", "without a STOP");
  expect_error("\x80\x02X\xff\x00\x00\x00" "ab."s, "truncated");
  expect_error("\x80\x02I1\n.", "opcode INT");
  expect_error("\x80\x02\xff.", "unknown pickle opcode 0xff");
  expect_error("\x80\x09}.", "unsupported pickle protocol 9");
  expect_error("\x80\x02]" + str("x") + "b.", "BUILD on a list");
  // Placeholders copy their class's name: a long one is refused at once.
  expect_error("\x80\x02" "c" + std::string(300, 'm') + "\nx\n.", "a global name of 301 bytes");
}

TEST_F(PthCrafted, ForbiddenGlobals) {
  expect_error("\x80\x02" "cbuiltins\neval\n" + str("1") + "\x85R.",
               "refusing to load: the checkpoint's pickle references 'builtins.eval'");
  expect_error("\x80\x04\x8c\x02os\x8c\x06system\x93.", "references 'os.system'");
  expect_error("\x80\x02" "c__builtin__\nopen\n.", "'__builtin__.open'");
  expect_error("\x80\x02" "cnumpy.core.multiarray\n_reconstruct\n.", "'numpy.core.multiarray");
  // Allowed names may not be used for anything but their purpose.
  expect_error("\x80\x02" "ctorch\nFloatStorage\n)R.", "torch.FloatStorage' is called");
}

TEST_F(PthCrafted, NotAStateDict) {
  expect_error("\x80\x02]" "." , "holds a list, not a state_dict");
  expect_error("\x80\x02}(" + str("w") + tensor("0", 6, 0, {6}, {1}) + str("step") + num(3) +
                   "u.",
               "entry 'step' is an int, not a tensor");
  expect_error("\x80\x02}(" + str("model") + "}(" + str("a") + "Nu" + str("epoch") + num(1) +
                   "u.",
               "entry 'a' under 'model' is None");
  expect_error("\x80\x02}.", "holds no tensors");
}

TEST_F(PthCrafted, TensorWithAttributes) {
  const StateDict sd =
      pth_load(write("\x80\x02}(" + str("w") + typed_tensor("ctorch\nTensor\n") + "u."));
  ASSERT_EQ(sd.size(), 1u);
  EXPECT_EQ(sd[0].second.sizes().vec(), std::vector<int64_t>{6});
  expect_error("\x80\x02}(" + str("w") + typed_tensor("c__main__\nTagged\n") + "u.",
               "holds a tensor of type '__main__.Tagged'");
}

TEST_F(PthCrafted, PrefixIsOnlyStrippedFromEveryKey) {
  const std::string pickle = "\x80\x02}(" + str("module.a") + tensor("0", 6, 0, {6}, {1}) +
                             str("b") + tensor("0", 6, 0, {6}, {1}) + "u.";
  const StateDict sd = pth_load(write(pickle));
  ASSERT_EQ(sd.size(), 2u);
  EXPECT_EQ(sd[0].first, "module.a");
  EXPECT_EQ(sd[1].first, "b");
}

TEST_F(PthCrafted, DeepAndCyclicStructuresDoNotCrash) {
  const int depth = 200000;
  expect_error("\x80\x02" + std::string(depth, ']') + std::string(depth - 1, 'a') + ".",
               "holds a list");
  expect_error("\x80\x02]q\x00h\x00" "a."s, "holds a list");
}

// Random corruption of a real pickle inside a sound archive: never anything but
// vitrine::Error or a successful load.
TEST(PthFuzz, CorruptedPicklesFailCleanly) {
  std::string dir;
  pth_data_dir(&dir);
  if (HasFatalFailure()) return;
  caffe2::serialize::PyTorchStreamReader reader(dir + "/views.pth");
  at::DataPtr data;
  size_t size = 0;
  std::tie(data, size) = reader.getRecord("data.pkl");
  const std::string pickle(static_cast<const char*>(data.get()), size);
  std::vector<std::pair<std::string, std::string>> records;
  for (const char* key : {"0", "1"}) {
    std::tie(data, size) = reader.getRecord("data/"s + key);
    records.emplace_back(key, std::string(static_cast<const char*>(data.get()), size));
  }
  const std::string path = ::testing::TempDir() + "/vitrine_pth_fuzz.pth";
  std::mt19937 rng(7);
  for (int round = 0; round < 600; ++round) {
    std::string mutated = pickle;
    const int flips = 1 + static_cast<int>(rng() % 3);
    for (int k = 0; k < flips; ++k) {
      mutated[rng() % mutated.size()] = static_cast<char>(rng() & 0xff);
    }
    if (round % 5 == 0) mutated.resize(rng() % mutated.size());
    {
      caffe2::serialize::PyTorchStreamWriter writer(path);
      writer.writeRecord("data.pkl", mutated.data(), mutated.size());
      for (const auto& record : records) {
        writer.writeRecord("data/" + record.first, record.second.data(), record.second.size());
      }
      writer.writeEndOfFile();
    }
    try {
      pth_load(path);
    } catch (const Error&) {
    } catch (const std::exception& e) {
      ADD_FAILURE() << "round " << round << ": non-vitrine exception: " << e.what();
    }
  }
  fs::remove(path);
}

}  // namespace
}  // namespace vitrine
