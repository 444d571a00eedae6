// Small file-system helpers shared by the writers of checkpoints and indexes.
#pragma once

#include <cstdint>
#include <functional>
#include <iosfwd>
#include <set>
#include <string>
#include <utility>

namespace vitrine {

/// Writes a file through a temporary file in the same directory that is flushed,
/// synced and renamed, so readers see either the old or the new file, never half
/// of one. `write` streams the content.
void write_file_atomic(const std::string& path, const std::function<void(std::ostream&)>& write);
void write_file_atomic(const std::string& path, const std::string& data);

/// Puts the finished directory `fresh` in the place of `dest` (which may be missing): `dest`
/// is renamed to `dest.old` first and removed last, so a crash leaves one complete
/// directory, the old or the new one, under one of those names.
void replace_dir(const std::string& fresh, const std::string& dest);
/// When a crash between replace_dir's renames left only `dest.old`, renames it back to
/// `dest`.
void restore_interrupted_dir(const std::string& dest);

/// The whole file as a string; a clear error when it is missing or unreadable.
std::string read_text_file(const std::string& path);

/// `path` made absolute with links and "." / ".." resolved as far as it exists (as
/// std::filesystem::weakly_canonical), or as given where that fails: one file named two ways
/// compares equal.
std::string canonical_path(const std::string& path);

/// A data source as recorded beside its name: the canonical path of a source that is a file
/// or folder, "" for another ("fashion-mnist"), so that a model's provenance names its data
/// wherever the command was run.
std::string data_path(const std::string& source);

/// Whether a source recorded as `recorded` (with `recorded_path`, data_path then, "" where
/// not recorded) is `source`: by that path, or by the name as given (from the same place).
bool same_data(const std::string& recorded, const std::string& recorded_path,
               const std::string& source);

/// Whether a folder entry's name is one that systems keep for themselves, never a photo or a
/// class: dot files (macOS's "._photo.jpg" copies on shared drives, .DS_Store), __MACOSX
/// (zip files made on a Mac) and @eaDir (a Synology NAS's thumbnails of every photo).
bool is_system_entry(const std::string& name);

/// The folders a walk that follows links has entered, by device and inode: enter() is false
/// for a folder entered before (a link back up is a loop) or one that cannot be examined.
class EnteredFolders {
 public:
  bool enter(const std::string& dir);

 private:
  std::set<std::pair<uint64_t, uint64_t>> entered_;
};

}  // namespace vitrine
