#include "vitrine/core/fs.h"

#include "vitrine/core/error.h"

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace vitrine {
namespace fs = std::filesystem;

void write_file_atomic(const std::string& path,
                       const std::function<void(std::ostream&)>& write) {
  static std::atomic<int> counter{0};
  const fs::path target(path);
  const fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
  VT_CHECK(fs::is_directory(dir), "cannot write ", path, ": directory ", dir.string(),
           " does not exist; create it first");
  const std::string tmp = (dir / ("." + target.filename().string() + ".tmp-" +
                                  std::to_string(::getpid()) + "-" +
                                  std::to_string(counter++)))
                              .string();
  try {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    VT_CHECK(out.good(), "cannot write ", path, ": ", std::strerror(errno),
             "; check the directory's permissions");
    write(out);
    out.flush();
    VT_CHECK(out.good(), "cannot write ", path, ": write failed; check free space");
    out.close();
    // Sync before the rename so a crash cannot leave a renamed but empty file.
    const int fd = ::open(tmp.c_str(), O_RDONLY);
    if (fd >= 0) {
      ::fsync(fd);
      ::close(fd);
    }
    VT_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0, "cannot write ", path, ": ",
             std::strerror(errno));
  } catch (...) {
    std::remove(tmp.c_str());
    throw;
  }
}

void write_file_atomic(const std::string& path, const std::string& data) {
  write_file_atomic(path, [&](std::ostream& out) { out.write(data.data(), data.size()); });
}

namespace {
std::string without_trailing_slash(const std::string& path) {
  std::string d = fs::path(path).lexically_normal().string();
  while (d.size() > 1 && d.back() == '/') d.pop_back();
  return d;
}
}  // namespace

void restore_interrupted_dir(const std::string& dest) {
  const std::string d = without_trailing_slash(dest);
  std::error_code ec;
  if (!fs::exists(d, ec) && fs::is_directory(d + ".old", ec)) {
    fs::rename(d + ".old", d, ec);
    VT_CHECK(!ec, "cannot put ", d, ".old back as ", d, ": ", ec.message());
  }
}

void replace_dir(const std::string& fresh, const std::string& dest) {
  const std::string d = without_trailing_slash(dest);
  const std::string old = d + ".old";
  restore_interrupted_dir(d);  // else the one complete copy would be removed below
  std::error_code ec;
  fs::remove_all(old, ec);
  VT_CHECK(!ec, "cannot remove ", old, ": ", ec.message());
  if (fs::exists(d)) {
    fs::rename(d, old, ec);
    VT_CHECK(!ec, "cannot move ", d, " aside to replace it: ", ec.message());
  }
  fs::rename(fresh, d, ec);
  VT_CHECK(!ec, "cannot move ", fresh, " to ", d, ": ", ec.message(), " (the previous one is in ",
           old, ")");
  fs::remove_all(old, ec);
}

std::string read_text_file(const std::string& path) {
  VT_CHECK(fs::exists(path), path, ": no such file");
  VT_CHECK(!fs::is_directory(path), path, ": is a directory, expected a file");
  std::ifstream in(path, std::ios::binary);
  VT_CHECK(in.good(), path, ": cannot open: ", std::strerror(errno));
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

bool is_system_entry(const std::string& name) {
  return (!name.empty() && name[0] == '.') || name == "__MACOSX" || name == "@eaDir";
}

bool EnteredFolders::enter(const std::string& dir) {
  struct stat st{};
  return ::stat(dir.c_str(), &st) == 0 &&
         entered_.insert({static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino)})
             .second;
}

std::string canonical_path(const std::string& path) {
  std::error_code ec;
  const auto c = std::filesystem::weakly_canonical(path, ec);
  return ec ? path : c.string();
}

std::string data_path(const std::string& source) {
  if (source == "fashion-mnist") return {};  // the packed data set's name, not a path
  std::error_code ec;
  return std::filesystem::exists(source, ec) ? canonical_path(source) : std::string();
}

bool same_data(const std::string& recorded, const std::string& recorded_path,
               const std::string& source) {
  return (!recorded_path.empty() && recorded_path == canonical_path(source)) ||
         recorded == source || canonical_path(recorded) == canonical_path(source);
}

}  // namespace vitrine
