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

std::vector<std::string> expand_image_paths(const std::vector<std::string>& paths,
                                            std::vector<std::string>* warnings) {
  namespace fs = std::filesystem;
  static const std::set<std::string> kExtensions = {".jpg", ".jpeg", ".png", ".webp", ".bmp",
                                                    ".jpe", ".jfif", ".gif", ".tif", ".tiff"};
  std::vector<std::string> out;
  for (const auto& p : paths) {
    std::error_code ec;
    if (!fs::is_directory(p, ec)) {
      out.push_back(p);
      continue;
    }
    std::vector<std::string> found;
    int64_t hidden = 0;  ///< image files among the system's entries
    fs::recursive_directory_iterator it(p, fs::directory_options::skip_permission_denied, ec);
    for (; !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
      std::error_code file_ec;
      if (is_system_entry(it->path().filename().string())) {  // "._photo.jpg", __MACOSX, ...
        if (it->is_directory(file_ec)) {
          it.disable_recursion_pending();
        } else {
          std::string ext = it->path().extension().string();
          std::transform(ext.begin(), ext.end(), ext.begin(), ::tolower);
          hidden += kExtensions.count(ext) > 0 ? 1 : 0;
        }
        continue;
      }
      if (it->is_directory(file_ec) && ::access(it->path().c_str(), R_OK | X_OK) != 0) {
        if (warnings) warnings->push_back(it->path().string() + ": folder not readable, skipped");
        continue;
      }
      if (!it->is_regular_file(file_ec)) continue;
      std::string ext = it->path().extension().string();
      std::transform(ext.begin(), ext.end(), ext.begin(), ::tolower);
      if (kExtensions.count(ext)) found.push_back(it->path().string());
    }
    if (ec && warnings) warnings->push_back(p + ": stopped listing: " + ec.message());
    if (hidden > 0 && warnings) {
      warnings->push_back(std::to_string(hidden) + " hidden image file" +
                          (hidden == 1 ? "" : "s") + " in " + p +
                          (hidden == 1 ? " was" : " were") + " skipped (names starting with "
                          "'.', such as the \"._\" copies a Mac leaves on shared drives)");
    }
    std::sort(found.begin(), found.end());
    out.insert(out.end(), found.begin(), found.end());
  }
  return out;
}

}  // namespace vitrine::image
