#include "vitrine/image/batch.h"

#include "vitrine/core/error.h"
#include "vitrine/core/fs.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <filesystem>
#include <set>

#include <unistd.h>

namespace vitrine::image {

std::vector<LoadedImage> load_images(const std::vector<std::string>& paths,
                                     const EvalTransform& transform,
                                     const DecodeOptions& options) {
  std::vector<LoadedImage> out(paths.size());
  at::parallel_for(0, static_cast<int64_t>(paths.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      LoadedImage& item = out[i];
      item.path = paths[i];
      // Each file's failure stays with that file; the batch goes on.
      try {
        item.tensor = eval_transform(decode_file(paths[i], options), transform);
      } catch (const Error& e) {
        item.error = e.what();
      } catch (const c10::Error& e) {
        item.error = paths[i] + ": " + e.what_without_backtrace();
      } catch (const std::exception& e) {
        item.error = paths[i] + ": " + e.what();
      }
    }
  });
  return out;
}

std::string hidden_photos_warning(int64_t count, const std::string& folder) {
  return std::to_string(count) + " hidden image file" + (count == 1 ? "" : "s") + " in " +
         folder + (count == 1 ? " was" : " were") + " skipped (names starting with '.', such "
         "as the \"._\" copies a Mac leaves on shared drives)";
}

namespace {
const std::set<std::string> kFolderImageExtensions = {".jpg", ".jpeg", ".png", ".webp", ".bmp",
                                                      ".jpe", ".jfif", ".gif", ".tif", ".tiff"};
}  // namespace

const std::string& folder_image_extensions() {
  static const std::string list = [] {
    std::string out;
    for (const auto& e : kFolderImageExtensions) out += (out.empty() ? "" : ", ") + e;
    return out;
  }();
  return list;
}

std::vector<std::string> expand_image_paths(const std::vector<std::string>& paths,
                                            std::vector<std::string>* warnings) {
  namespace fs = std::filesystem;
  const auto& kExtensions = kFolderImageExtensions;
  const auto named_as_image = [](const fs::path& path) {
    std::string ext = path.extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(), ::tolower);
    return kExtensions.count(ext) > 0;
  };
  std::vector<std::string> out;
  for (const auto& p : paths) {
    std::error_code ec;
    if (!fs::is_directory(p, ec)) {
      out.push_back(p);
      continue;
    }
    std::vector<std::string> found;
    int64_t hidden = 0;  ///< image files among the system's entries
    // Links are followed, as the data sets' folder reader does; a link back to a folder
    // already entered (a loop) is not followed again.
    EnteredFolders entered;
    entered.enter(p);
    fs::recursive_directory_iterator it(p, fs::directory_options::follow_directory_symlink |
                                               fs::directory_options::skip_permission_denied,
                                        ec);
    for (; !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
      std::error_code file_ec;
      if (is_system_entry(it->path().filename().string())) {  // "._photo.jpg", __MACOSX, ...
        if (it->is_directory(file_ec)) {
          it.disable_recursion_pending();
        } else {
          hidden += named_as_image(it->path()) ? 1 : 0;
        }
        continue;
      }
      if (it->is_directory(file_ec) && ::access(it->path().c_str(), R_OK | X_OK) != 0) {
        if (warnings) warnings->push_back(it->path().string() + ": folder not readable, skipped");
        continue;
      }
      if (it->is_directory(file_ec) && !entered.enter(it->path())) {
        it.disable_recursion_pending();
        continue;
      }
      if (it->is_regular_file(file_ec) && named_as_image(it->path())) {
        found.push_back(it->path().string());
      }
    }
    if (ec && warnings) warnings->push_back(p + ": stopped listing: " + ec.message());
    if (hidden > 0 && warnings) warnings->push_back(hidden_photos_warning(hidden, p));
    std::sort(found.begin(), found.end());
    out.insert(out.end(), found.begin(), found.end());
  }
  return out;
}

}  // namespace vitrine::image
