// Errors: VT_CHECK for caller errors (bad input, bad files, bad flags), VT_DCHECK
// for broken internal invariants. Both throw vitrine::Error; the message says what
// was wrong and what to do, and carries the source location.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace vitrine {

class Error : public std::runtime_error {
 public:
  Error(const std::string& what, const char* file, int line)
      : std::runtime_error(what), file_(file), line_(line) {}
  const char* file() const noexcept { return file_; }
  int line() const noexcept { return line_; }

 private:
  const char* file_;
  int line_;
};

namespace detail {
inline void append(std::ostringstream&) {}
template <typename T, typename... Rest>
void append(std::ostringstream& os, const T& v, const Rest&... rest) {
  os << v;
  append(os, rest...);
}
template <typename... Args>
[[noreturn]] void fail(const char* file, int line, const Args&... args) {
  std::ostringstream os;
  append(os, args...);
  throw Error(os.str(), file, line);
}
}  // namespace detail

}  // namespace vitrine

/// Throws vitrine::Error with the streamed message parts when `cond` is false.
/// Use for anything a user or caller can get wrong; say what to do about it.
#define VT_CHECK(cond, ...)                                       \
  do {                                                            \
    if (!(cond)) {                                                \
      ::vitrine::detail::fail(__FILE__, __LINE__, __VA_ARGS__);   \
    }                                                             \
  } while (0)

/// Unconditional failure with a message (for branches that reject input).
#define VT_FAIL(...) ::vitrine::detail::fail(__FILE__, __LINE__, __VA_ARGS__)

/// Internal invariant: a failure here is a bug in Vitrine, not bad input.
#define VT_DCHECK(cond)                                                     \
  do {                                                                      \
    if (!(cond)) {                                                          \
      ::vitrine::detail::fail(__FILE__, __LINE__,                           \
                              "internal error (please report): " #cond);    \
    }                                                                       \
  } while (0)
