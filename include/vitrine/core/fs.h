// Small file-system helpers shared by the writers of checkpoints and indexes.
#pragma once

#include <functional>
#include <iosfwd>
#include <string>

namespace vitrine {

/// Writes a file through a temporary file in the same directory that is flushed,
/// synced and renamed, so readers see either the old or the new file, never half
/// of one. `write` streams the content.
void write_file_atomic(const std::string& path, const std::function<void(std::ostream&)>& write);
void write_file_atomic(const std::string& path, const std::string& data);

/// The whole file as a string; a clear error when it is missing or unreadable.
std::string read_text_file(const std::string& path);

}  // namespace vitrine
