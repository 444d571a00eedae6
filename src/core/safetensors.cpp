#include "vitrine/core/safetensors.h"

#include "vitrine/core/error.h"
#include "vitrine/core/fs.h"
#include "vitrine/core/json.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <tuple>

namespace vitrine {
namespace {

using json = nlohmann::json;

// Headers of real checkpoints are a few hundred kB; anything far larger is a
// corrupt or hostile length field.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

struct DtypeName {
  const char* name;
  at::ScalarType type;
};
constexpr DtypeName kDtypes[] = {
    {"F32", at::kFloat}, {"F16", at::kHalf},  {"BF16", at::kBFloat16}, {"F64", at::kDouble},
    {"I64", at::kLong},  {"I32", at::kInt},   {"I16", at::kShort},     {"I8", at::kChar},
    {"U8", at::kByte},   {"BOOL", at::kBool},
};

at::ScalarType dtype_from_name(const std::string& name, const std::string& path,
                               const std::string& tensor) {
  for (const auto& d : kDtypes) {
    if (name == d.name) return d.type;
  }
  VT_FAIL(path, ": tensor '", tensor, "' has dtype ", name,
          ", which Vitrine cannot read (supported: F32 F16 BF16 F64 I64 I32 I16 I8 U8 BOOL)");
}

const char* dtype_name(at::ScalarType type) {
  for (const auto& d : kDtypes) {
    if (type == d.type) return d.name;
  }
  VT_FAIL("cannot save a tensor of type ", c10::toString(type), " as safetensors");
}

}  // namespace

SafetensorsFile safetensors_load(const std::string& path) {
  namespace fs = std::filesystem;
  VT_CHECK(fs::exists(path), path, ": no such file");
  VT_CHECK(fs::is_regular_file(path), path, ": not a regular file");
  const uint64_t file_size = fs::file_size(path);
  std::ifstream in(path, std::ios::binary);
  VT_CHECK(in.good(), path, ": cannot open for reading");

  unsigned char len_bytes[8];
  VT_CHECK(file_size >= 8 && in.read(reinterpret_cast<char*>(len_bytes), 8), path,
           ": too short to be a safetensors file (", file_size, " bytes)");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | len_bytes[i];
  VT_CHECK(header_len <= kMaxHeaderBytes, path, ": not a safetensors file (its first bytes "
           "give a header of ", header_len, " bytes); is it a .pth or .bin checkpoint? import "
           "it with `vitrine import --from torchvision` (or --from hf, timm)");
  VT_CHECK(8 + header_len <= file_size, path, ": truncated (its header alone needs ",
           8 + header_len, " bytes, the file has ", file_size, "); copy or download it again");
  std::string header(header_len, '\0');
  VT_CHECK(in.read(header.data(), static_cast<std::streamsize>(header_len)), path,
           ": truncated header");

  json meta;
  try {
    meta = parse_json(header, "header");
  } catch (const Error& e) {
    VT_FAIL(path, ": malformed safetensors header (", e.what(), ")");
  }
  VT_CHECK(meta.is_object(), path, ": malformed safetensors header (not a JSON object)");

  const uint64_t data_start = 8 + header_len;
  const uint64_t data_size = file_size - data_start;
  SafetensorsFile out;
  struct Entry {
    std::string name;
    at::ScalarType type;
    std::vector<int64_t> shape;
    uint64_t begin, end;
  };
  std::vector<Entry> entries;
  for (const auto& [name, info] : meta.items()) {
    if (name == "__metadata__") {
      VT_CHECK(info.is_object(), path, ": __metadata__ must be an object of strings");
      for (const auto& [k, v] : info.items()) {
        out.metadata[k] = v.is_string() ? v.get<std::string>() : json_text(v);
      }
      continue;
    }
    try {
      Entry e;
      e.name = name;
      e.type = dtype_from_name(info.at("dtype").get<std::string>(), path, name);
      e.shape = info.at("shape").get<std::vector<int64_t>>();
      const auto offsets = info.at("data_offsets").get<std::vector<uint64_t>>();
      VT_CHECK(offsets.size() == 2, path, ": tensor '", name, "': data_offsets needs 2 values");
      e.begin = offsets[0];
      e.end = offsets[1];
      entries.push_back(std::move(e));
    } catch (const json::exception& ex) {
      VT_FAIL(path, ": tensor '", name, "': malformed header entry: ", ex.what());
    }
  }
  // Data is laid out in offset order; reading in that order keeps the file access sequential.
  std::vector<size_t> order(entries.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) {
              return std::tie(entries[a].begin, entries[a].end) <
                     std::tie(entries[b].begin, entries[b].end);
            });
  std::vector<at::Tensor> loaded(entries.size());
  uint64_t previous_end = 0;  ///< tensors may not share bytes: together they fit the file
  std::string previous_name;
  for (const size_t i : order) {
    const Entry& e = entries[i];
    uint64_t numel = 1;
    bool overflow = false;
    for (const int64_t d : e.shape) {
      VT_CHECK(d >= 0, path, ": tensor '", e.name, "' has a negative dimension");
      overflow |= __builtin_mul_overflow(numel, static_cast<uint64_t>(d), &numel);
    }
    uint64_t bytes = 0;
    overflow |= __builtin_mul_overflow(numel, c10::elementSize(e.type), &bytes);
    VT_CHECK(!overflow, path, ": tensor '", e.name, "' has a shape whose size overflows; the "
             "file is corrupt");
    VT_CHECK(e.begin <= e.end && e.end <= data_size && e.end - e.begin == bytes, path,
             ": tensor '", e.name, "' claims bytes [", e.begin, ", ", e.end,
             ") which do not match its shape or lie outside the file (", data_size,
             " data bytes); the file is truncated or corrupt");
    VT_CHECK(e.begin >= previous_end, path, ": tensors '", previous_name, "' and '", e.name,
             "' claim the same bytes (from ", e.begin, "); the file is corrupt");
    previous_end = e.end;
    previous_name = e.name;
    at::Tensor t = at::empty(e.shape, at::TensorOptions().dtype(e.type));
    in.seekg(static_cast<std::streamoff>(data_start + e.begin));
    VT_CHECK(in.read(static_cast<char*>(t.data_ptr()), static_cast<std::streamsize>(bytes)),
             path, ": truncated while reading tensor '", e.name, "'");
    loaded[i] = std::move(t);
  }
  // The JSON header's key order is lost in parsing; the data order is the writer's order.
  out.tensors.reserve(entries.size());
  for (const size_t i : order) out.tensors.emplace_back(entries[i].name, std::move(loaded[i]));
  return out;
}

void safetensors_save(const std::string& path, const StateDict& tensors,
                      const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<at::Tensor> contiguous;
  contiguous.reserve(tensors.size());
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    VT_CHECK(!header.contains(name), "cannot save ", path, ": duplicate tensor name '", name,
             "'");
    at::Tensor t = tensor.detach().to(at::kCPU).contiguous();
    const uint64_t bytes = t.numel() * t.element_size();
    header[name] = {{"dtype", dtype_name(t.scalar_type())},
                    {"shape", t.sizes().vec()},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    contiguous.push_back(std::move(t));
  }
  std::string text = header.dump();
  // Pad so the data starts 8-byte aligned, as the reference writer does.
  text.append((8 - text.size() % 8) % 8, ' ');
  write_file_atomic(path, [&](std::ostream& out) {
    uint64_t n = text.size();
    unsigned char len_bytes[8];
    for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<unsigned char>(n >> (8 * i));
    out.write(reinterpret_cast<const char*>(len_bytes), 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const auto& t : contiguous) {
      out.write(static_cast<const char*>(t.data_ptr()),
                static_cast<std::streamsize>(t.numel() * t.element_size()));
    }
  });
}

}  // namespace vitrine
