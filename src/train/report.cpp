#include "vitrine/train/report.h"

#include "vitrine/core/error.h"
#include "vitrine/core/fs.h"
#include "vitrine/train/compare.h"
#include "vitrine/train/run_files.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

namespace vitrine::train {
namespace {

// ---------------------------------------------------------------------------------------------
// Text: names come from users and folders, so they may hold markup characters, control
// characters or bytes that are not UTF-8 at all; any of these would make the SVG unreadable
// to an XML parser (and a browser shows nothing but an error for a broken SVG file).

/// `s` as valid UTF-8 holding only characters XML 1.0 allows; anything else becomes U+FFFD.
std::string sanitize_utf8(const std::string& s) {
  static const char kReplacement[] = "\xEF\xBF\xBD";
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    const auto c = static_cast<unsigned char>(s[i]);
    // Sequence length, payload bits of the lead byte, and the smallest code point that
    // needs this length (anything below is an overlong encoding).
    size_t len = 0;
    uint32_t cp = 0, min_cp = 0;
    if (c < 0x80) {
      len = 1;
      cp = c;
    } else if ((c >> 5) == 0x6) {
      len = 2;
      cp = c & 0x1F;
      min_cp = 0x80;
    } else if ((c >> 4) == 0xE) {
      len = 3;
      cp = c & 0x0F;
      min_cp = 0x800;
    } else if ((c >> 3) == 0x1E) {
      len = 4;
      cp = c & 0x07;
      min_cp = 0x10000;
    }
    bool ok = len > 0 && i + len <= n;
    for (size_t k = 1; ok && k < len; ++k) {
      const auto b = static_cast<unsigned char>(s[i + k]);
      ok = (b & 0xC0) == 0x80;
      cp = (cp << 6) | (b & 0x3F);
    }
    ok = ok && cp >= min_cp && cp <= 0x10FFFF && !(cp >= 0xD800 && cp <= 0xDFFF);
    // XML 1.0 forbids most C0 controls and the two non-characters U+FFFE, U+FFFF.
    ok = ok && (cp >= 0x20 || cp == 0x9 || cp == 0xA || cp == 0xD) && cp != 0xFFFE &&
         cp != 0xFFFF;
    if (ok) {
      out.append(s, i, len);
      i += len;
    } else {
      out += kReplacement;
      i += 1;  // resynchronise on the next byte
    }
  }
  return out;
}

/// Escapes already sanitised text for XML / HTML text and attribute values.
std::string escape_clean(const std::string& s) {
  std::string out;
  out.reserve(s.size() + 8);
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

/// Any user text, ready to go between tags or inside a quoted attribute.
std::string esc(const std::string& s) { return escape_clean(sanitize_utf8(s)); }

size_t count_code_points(const std::string& clean) {
  size_t n = 0;
  for (char c : clean) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return n;
}

/// The width of sanitised text in ems, roughly: the viewer's font is unknown, but wide
/// scripts (CJK, Hangul) take about twice the room of Latin letters.
double text_width_em(const std::string& clean) {
  double em = 0;
  for (size_t i = 0; i < clean.size(); ++i) {
    const auto c = static_cast<unsigned char>(clean[i]);
    if ((c & 0xC0) == 0x80) continue;
    em += c < 0x80 ? 0.6 : c >= 0xE1 ? 1.0 : 0.65;  // lead byte 0xE1+: U+1000 and above
  }
  return em;
}

/// Sanitised `s` cut to at most `max_cp` code points, an ellipsis marking the cut. Widths
/// in SVG are estimated from code points, since the viewer's font is unknown.
std::string clip(const std::string& s, size_t max_cp) {
  const std::string clean = sanitize_utf8(s);
  if (count_code_points(clean) <= max_cp) return clean;
  if (max_cp == 0) return "";
  size_t kept = 0, i = 0;
  for (; i < clean.size(); ++i) {
    if ((static_cast<unsigned char>(clean[i]) & 0xC0) != 0x80) {
      if (kept == max_cp - 1) break;
      ++kept;
    }
  }
  return clean.substr(0, i) + "\xE2\x80\xA6";
}

/// An SVG `<text>` body: the clipped label, plus the full name as a tooltip when clipped.
std::string text_body(const std::string& s, size_t max_cp) {
  const std::string shown = clip(s, max_cp);
  const std::string full = sanitize_utf8(s);
  if (shown == full) return escape_clean(shown);
  return "<title>" + escape_clean(full) + "</title>" + escape_clean(shown);
}

std::string fixed(double v, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*f", decimals, v);
  return buf;
}

/// A coordinate in SVG user units; two decimals are far below a pixel at any sane zoom.
std::string co(double v) { return fixed(v, 2); }

std::string general(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*g", digits, v);
  return buf;
}

// ---------------------------------------------------------------------------------------------
// Axes.

/// The smallest of 1, 2, 5 x 10^k that splits `range` into at most about `target` steps.
double nice_step(double range, int target) {
  const double raw = range / target;
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  const double f = raw / magnitude;
  const double nice = f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10;
  return nice * magnitude;
}

struct Axis {
  double lo = 0, hi = 1;  ///< the domain mapped onto the plot area's edges
  std::vector<double> ticks;
  int decimals = 0;  ///< of the tick labels

  /// Where `v` falls between the edges, 0 at `lo` and 1 at `hi`.
  double fraction(double v) const {
    const double t = (v - lo) / (hi - lo);
    return std::isfinite(t) ? t : 0.5;
  }
  std::string label(double v) const {
    if (std::abs(v) >= 1e7) return general(v, 3);
    return fixed(v, decimals);
  }
};

/// Tick positions in 1-2-5 steps from the first multiple of `step` at or above `lo` up to `hi`.
void place_ticks(Axis& axis, double step) {
  if (!(step > 0) || !std::isfinite(step) ||
      !std::isfinite((axis.hi - axis.lo) / step) || (axis.hi - axis.lo) / step > 100) {
    // Degenerate ranges (denormals, near-overflow): label the two edges only.
    axis.ticks = {axis.lo, axis.hi};
    axis.decimals = 3;
    return;
  }
  constexpr double kEps = 1e-9;  // absorbs 0.1 + 0.2 style rounding at the edges
  const double first = std::ceil(axis.lo / step - kEps);
  const double last = std::floor(axis.hi / step + kEps);
  axis.ticks.clear();
  for (double k = first; k <= last; k += 1) {
    double v = k * step;
    if (std::abs(v) < step * kEps) v = 0;  // no "-0.0"
    axis.ticks.push_back(v);
  }
  axis.decimals = std::clamp(static_cast<int>(-std::floor(std::log10(step) + kEps)), 0, 10);
}

/// A value axis that encloses [lo, hi] with ticks on both edges.
Axis value_axis(double lo, double hi, int target) {
  if (lo == hi) {
    // A constant series gets a band around it, not a zero-height axis.
    const double pad = lo == 0 ? 1 : std::abs(lo) * 0.1;
    lo = lo == 0 ? 0 : lo - pad;
    hi = hi + pad;
  }
  Axis axis;
  const double step = nice_step(hi - lo, target);
  if (step > 0 && std::isfinite(step)) {
    axis.lo = std::floor(lo / step + 1e-9) * step;
    axis.hi = std::ceil(hi / step - 1e-9) * step;
  } else {
    axis.lo = lo;
    axis.hi = hi;
  }
  if (!std::isfinite(axis.lo) || !std::isfinite(axis.hi) || axis.lo >= axis.hi) {
    axis.lo = lo;
    axis.hi = hi;
  }
  place_ticks(axis, step);
  return axis;
}

/// A position axis whose edges are the data's extremes (the last epoch on the right edge).
Axis position_axis(double lo, double hi, bool integral, int target) {
  if (lo == hi) {
    lo -= 0.5;
    hi += 0.5;
  }
  Axis axis;
  axis.lo = lo;
  axis.hi = hi;
  double step = nice_step(hi - lo, target);
  if (integral) step = std::max(step, 1.0);  // no "epoch 2.5"
  place_ticks(axis, step);
  return axis;
}

// ---------------------------------------------------------------------------------------------
// SVG pieces.

constexpr double kSqrtHalf = 0.70710678118654752;  ///< sin and cos of 45 degrees

constexpr const char* kFontFamily =
    "system-ui, -apple-system, &quot;Segoe UI&quot;, &quot;DejaVu Sans&quot;, Arial, sans-serif";

/// tab10: distinct hues, familiar from matplotlib plots.
constexpr std::array<const char*, 10> kPalette = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728",
                                                  "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                                                  "#bcbd22", "#17becf"};

std::string svg_open(double width, double height, const std::string& title) {
  std::string out = "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 " + co(width) +
                    " " + co(height) + "\" width=\"" + co(width) + "\" height=\"" + co(height) +
                    "\" font-family=\"" + kFontFamily + "\" font-size=\"12\" role=\"img\">\n";
  out += "<title>" + esc(title) + "</title>\n";
  out += "<rect width=\"" + co(width) + "\" height=\"" + co(height) + "\" fill=\"#ffffff\"/>\n";
  return out;
}

/// The "Blues" ramp from white to dark blue; `t` in [0, 1].
std::array<int, 3> blues(double t) {
  static const std::array<std::array<double, 3>, 5> kStops = {{{247, 251, 255},
                                                               {198, 219, 239},
                                                               {107, 174, 214},
                                                               {33, 113, 181},
                                                               {8, 48, 107}}};
  t = std::clamp(std::isfinite(t) ? t : 0.0, 0.0, 1.0) * (kStops.size() - 1);
  const auto i = std::min(static_cast<size_t>(t), kStops.size() - 2);
  const double f = t - static_cast<double>(i);
  std::array<int, 3> rgb{};
  for (int c = 0; c < 3; ++c) {
    rgb[c] = static_cast<int>(std::lround(kStops[i][c] + f * (kStops[i + 1][c] - kStops[i][c])));
  }
  return rgb;
}

std::string hex(const std::array<int, 3>& rgb) {
  char buf[8];
  std::snprintf(buf, sizeof(buf), "#%02x%02x%02x", rgb[0], rgb[1], rgb[2]);
  return buf;
}

}  // namespace

std::string svg_line_chart(const std::string& title, const std::string& x_label,
                           const std::string& y_label, const std::vector<double>& x,
                           const std::vector<std::pair<std::string, std::vector<double>>>& series) {
  using L = LineChartLayout;
  for (const auto& [name, values] : series) {
    VT_CHECK(values.size() == x.size(), "line chart '", title, "': series '", name, "' has ",
             values.size(), " values for ", x.size(), " x positions; give one value per x");
  }

  // Only finite points count, so one NaN loss cannot flatten the whole chart.
  const double inf = std::numeric_limits<double>::infinity();
  double x_lo = inf, x_hi = -inf, y_lo = inf, y_hi = -inf;
  bool integral = true;
  for (size_t i = 0; i < x.size(); ++i) {
    if (!std::isfinite(x[i])) continue;
    x_lo = std::min(x_lo, x[i]);
    x_hi = std::max(x_hi, x[i]);
    integral = integral && x[i] == std::round(x[i]);
    for (const auto& s : series) {
      const double v = s.second[i];
      if (!std::isfinite(v)) continue;
      y_lo = std::min(y_lo, v);
      y_hi = std::max(y_hi, v);
    }
  }
  const bool has_x = x_lo <= x_hi;
  const bool has_y = y_lo <= y_hi;
  const Axis xa = has_x ? position_axis(x_lo, x_hi, integral, 7) : position_axis(0, 1, false, 5);
  const Axis ya = has_y ? value_axis(y_lo, y_hi, 5) : value_axis(0, 1, 5);
  const auto px = [&](double v) {
    return L::kPlotLeft + xa.fraction(v) * (L::kPlotRight - L::kPlotLeft);
  };
  const auto py = [&](double v) {
    return L::kPlotBottom - ya.fraction(v) * (L::kPlotBottom - L::kPlotTop);
  };

  std::string out = svg_open(L::kWidth, L::kHeight, title);
  out += "<text x=\"" + co(L::kPlotLeft) + "\" y=\"24\" font-size=\"15\" font-weight=\"600\" "
         "fill=\"#222\">" + text_body(title, 60) + "</text>\n";

  // Grid and ticks.
  out += "<g class=\"grid\" stroke=\"#e8e8e8\" stroke-width=\"1\">\n";
  for (double t : ya.ticks) {
    out += "<line x1=\"" + co(L::kPlotLeft) + "\" x2=\"" + co(L::kPlotRight) + "\" y1=\"" +
           co(py(t)) + "\" y2=\"" + co(py(t)) + "\"/>\n";
  }
  for (double t : xa.ticks) {
    out += "<line x1=\"" + co(px(t)) + "\" x2=\"" + co(px(t)) + "\" y1=\"" + co(L::kPlotTop) +
           "\" y2=\"" + co(L::kPlotBottom + 4) + "\"/>\n";
  }
  out += "</g>\n<g class=\"ticks\" fill=\"#555\" font-size=\"12\">\n";
  for (double t : ya.ticks) {
    out += "<text x=\"" + co(L::kPlotLeft - 6) + "\" y=\"" + co(py(t) + 4) +
           "\" text-anchor=\"end\">" + ya.label(t) + "</text>\n";
  }
  for (double t : xa.ticks) {
    out += "<text x=\"" + co(px(t)) + "\" y=\"" + co(L::kPlotBottom + 18) +
           "\" text-anchor=\"middle\">" + xa.label(t) + "</text>\n";
  }
  out += "</g>\n";
  out += "<path d=\"M" + co(L::kPlotLeft) + "," + co(L::kPlotTop) + "V" + co(L::kPlotBottom) +
         "H" + co(L::kPlotRight) + "\" fill=\"none\" stroke=\"#888\" stroke-width=\"1\"/>\n";
  out += "<text x=\"" + co((L::kPlotLeft + L::kPlotRight) / 2) + "\" y=\"" +
         co(L::kHeight - 12) + "\" text-anchor=\"middle\" font-size=\"13\" fill=\"#333\">" +
         text_body(x_label, 50) + "</text>\n";
  out += "<text transform=\"translate(16," + co((L::kPlotTop + L::kPlotBottom) / 2) +
         ") rotate(-90)\" text-anchor=\"middle\" font-size=\"13\" fill=\"#333\">" +
         text_body(y_label, 36) + "</text>\n";
  if (!has_y) {
    out += "<text x=\"" + co((L::kPlotLeft + L::kPlotRight) / 2) + "\" y=\"" +
           co((L::kPlotTop + L::kPlotBottom) / 2) +
           "\" text-anchor=\"middle\" fill=\"#999\">no data</text>\n";
  }

  // Series. Markers make single points visible and show where the epochs are; with many
  // points they would only blur the line.
  for (size_t s = 0; s < series.size(); ++s) {
    const std::string colour = kPalette[s % kPalette.size()];
    std::vector<std::pair<double, double>> points;
    for (size_t i = 0; i < x.size(); ++i) {
      if (std::isfinite(x[i]) && std::isfinite(series[s].second[i])) {
        points.emplace_back(px(x[i]), py(series[s].second[i]));
      }
    }
    if (points.empty()) continue;
    out += "<polyline data-series=\"" + esc(series[s].first) + "\" fill=\"none\" stroke=\"" +
           colour + "\" stroke-width=\"2\" stroke-linejoin=\"round\" stroke-linecap=\"round\" "
           "points=\"";
    for (size_t i = 0; i < points.size(); ++i) {
      if (i > 0) out += ' ';
      out += co(points[i].first) + "," + co(points[i].second);
    }
    out += "\"/>\n";
    if (points.size() <= 40) {
      const std::string r = points.size() == 1 ? "4" : "2.5";
      out += "<g fill=\"" + colour + "\">";
      for (const auto& [cx, cy] : points) {
        out += "<circle cx=\"" + co(cx) + "\" cy=\"" + co(cy) + "\" r=\"" + r + "\"/>";
      }
      out += "</g>\n";
    }
  }

  // Legend, right of the plot area; names are clipped to the space there.
  const double legend_x = L::kPlotRight + 14;
  const double text_x = legend_x + 24;
  const auto legend_chars = static_cast<size_t>((L::kWidth - 6 - text_x) / 6.8);
  const auto rows = static_cast<size_t>((L::kPlotBottom - L::kPlotTop) / 20);
  out += "<g class=\"legend\" font-size=\"12\" fill=\"#222\">\n";
  for (size_t s = 0; s < series.size(); ++s) {
    const double y = L::kPlotTop + 8 + 20 * static_cast<double>(s);
    if (s + 1 == rows && series.size() > rows) {
      out += "<text x=\"" + co(legend_x) + "\" y=\"" + co(y + 4) + "\" fill=\"#777\">+" +
             std::to_string(series.size() - s) + " more</text>\n";
      break;
    }
    out += "<line x1=\"" + co(legend_x) + "\" x2=\"" + co(legend_x + 18) + "\" y1=\"" + co(y) +
           "\" y2=\"" + co(y) + "\" stroke=\"" + kPalette[s % kPalette.size()] +
           "\" stroke-width=\"3\" stroke-linecap=\"round\"/>\n";
    out += "<text x=\"" + co(text_x) + "\" y=\"" + co(y + 4) + "\">" +
           text_body(series[s].first, legend_chars) + "</text>\n";
  }
  out += "</g>\n</svg>\n";
  return out;
}

std::string svg_confusion_matrix(const std::vector<std::vector<int64_t>>& confusion,
                                 const std::vector<std::string>& classes) {
  const size_t k = confusion.size();
  VT_CHECK(k > 0, "the confusion matrix is empty; it needs at least one class");
  VT_CHECK(classes.empty() || classes.size() == k, "the confusion matrix has ", k,
           " classes but ", classes.size(), " class names were given; pass one name per class "
           "or none");
  std::vector<std::string> names(k);
  std::vector<int64_t> row_sum(k, 0);
  int64_t max_count = 0;
  for (size_t i = 0; i < k; ++i) {
    names[i] = classes.empty() ? std::to_string(i) : classes[i];
    VT_CHECK(confusion[i].size() == k, "confusion matrix row ", i, " has ",
             confusion[i].size(), " columns, expected ", k, "; the matrix must be square");
    for (int64_t c : confusion[i]) {
      VT_CHECK(c >= 0, "confusion matrix row ", i, " holds a negative count (", c, ")");
      row_sum[i] += c;
      max_count = std::max(max_count, c);
    }
  }

  // Cells shrink to keep the matrix near 520 units; below a legible label size, every n-th
  // label is shown instead of letting them overlap.
  const auto kd = static_cast<double>(k);
  const double cell = std::clamp(520.0 / kd, 3.0, 40.0);
  double label_font = std::min(12.0, cell * 0.8);
  size_t stride_y = 1;
  if (label_font < 8) {
    label_font = 8;
    stride_y = static_cast<size_t>(std::ceil(label_font * 1.2 / cell));
  }
  // Diagonal labels read best but need more room than the cells give once they are small.
  const bool diagonal = cell >= 20;
  const size_t stride_x =
      diagonal ? static_cast<size_t>(std::ceil(label_font * 1.2 / (cell * kSqrtHalf))) : stride_y;
  constexpr size_t kLabelChars = 20;
  double label_em = 1;
  for (const auto& name : names) {
    label_em = std::max(label_em, text_width_em(clip(name, kLabelChars)));
  }
  const double label_w = label_em * label_font;
  const double mx = 12 + 18 + label_w + 8;  // axis title, labels, gap
  const double my = 58;                     // title and subtitle
  const double m = kd * cell;
  const double x_label_h = diagonal ? (label_w + label_font) * kSqrtHalf : label_w;
  const double bar_x = mx + m + 16;
  const double width = std::max(bar_x + 12 + 6 + 34 + 8, 420.0);
  const double predicted_y = my + m + 6 + x_label_h + 20;
  const double height = predicted_y + 10;

  std::string out = svg_open(width, height, "Confusion matrix");
  out += "<text x=\"12\" y=\"24\" font-size=\"15\" font-weight=\"600\" fill=\"#222\">"
         "Confusion matrix</text>\n";
  out += "<text x=\"12\" y=\"42\" font-size=\"11\" fill=\"#666\">rows: true class, columns: "
         "predicted; colour: share of the true class</text>\n";

  // Cells: the background carries every empty cell, so only non-zero cells are drawn.
  out += "<rect x=\"" + co(mx) + "\" y=\"" + co(my) + "\" width=\"" + co(m) + "\" height=\"" +
         co(m) + "\" fill=\"" + hex(blues(0)) + "\" stroke=\"#ccc\"/>\n";
  const double count_digits = static_cast<double>(std::to_string(max_count).size());
  const double count_font =
      std::min({12.0, cell * 0.42, cell * 0.85 / (count_digits * 0.62)});
  const bool show_counts = count_font >= 6.5;
  const std::string cell_stroke = cell >= 8 ? " stroke=\"#ffffff\" stroke-width=\"0.5\"" : "";
  out += "<g class=\"cells\">\n";
  for (size_t i = 0; i < k; ++i) {
    for (size_t j = 0; j < k; ++j) {
      const int64_t c = confusion[i][j];
      if (c == 0) continue;
      const double share = static_cast<double>(c) / static_cast<double>(row_sum[i]);
      out += "<rect x=\"" + co(mx + static_cast<double>(j) * cell) + "\" y=\"" +
             co(my + static_cast<double>(i) * cell) + "\" width=\"" + co(cell) + "\" height=\"" +
             co(cell) + "\" fill=\"" + hex(blues(share)) + "\"" + cell_stroke + "><title>true " +
             esc(names[i]) + ", predicted " + esc(names[j]) + ": " + std::to_string(c) + " (" +
             fixed(100 * share, 1) + "%)</title></rect>\n";
    }
  }
  out += "</g>\n";
  if (show_counts) {
    out += "<g class=\"counts\" font-size=\"" + co(count_font) + "\" text-anchor=\"middle\">\n";
    for (size_t i = 0; i < k; ++i) {
      for (size_t j = 0; j < k; ++j) {
        const int64_t c = confusion[i][j];
        const double share =
            row_sum[i] > 0 ? static_cast<double>(c) / static_cast<double>(row_sum[i]) : 0;
        const char* fill = c == 0 ? "#b8c2cc" : share > 0.55 ? "#ffffff" : "#1a1a1a";
        out += "<text x=\"" + co(mx + (static_cast<double>(j) + 0.5) * cell) + "\" y=\"" +
               co(my + (static_cast<double>(i) + 0.5) * cell + count_font * 0.35) +
               "\" fill=\"" + fill + "\">" + std::to_string(c) + "</text>\n";
      }
    }
    out += "</g>\n";
  }

  // Axis labels.
  out += "<g class=\"labels\" font-size=\"" + co(label_font) + "\" fill=\"#333\">\n";
  for (size_t i = 0; i < k; i += stride_y) {
    out += "<text x=\"" + co(mx - 6) + "\" y=\"" +
           co(my + (static_cast<double>(i) + 0.5) * cell + label_font * 0.35) +
           "\" text-anchor=\"end\">" + text_body(names[i], kLabelChars) + "</text>\n";
  }
  for (size_t j = 0; j < k; j += stride_x) {
    const double cx = mx + (static_cast<double>(j) + 0.5) * cell;
    const double cy = my + m + 6;
    // Rotated about its own anchor, the label's end touches the column it names.
    out += "<text transform=\"translate(" + co(cx + label_font * 0.35) + "," + co(cy) +
           ") rotate(" + (diagonal ? "-45" : "-90") + ")\" text-anchor=\"end\">" +
           text_body(names[j], kLabelChars) + "</text>\n";
  }
  out += "</g>\n";
  out += "<text x=\"" + co(mx + m / 2) + "\" y=\"" + co(predicted_y) +
         "\" text-anchor=\"middle\" font-size=\"13\" fill=\"#333\">predicted</text>\n";
  // "true" sits beside the row labels, not at the far left, when they are all short.
  out += "<text transform=\"translate(" + co(mx - label_w - 14) + "," + co(my + m / 2) +
         ") rotate(-90)\" text-anchor=\"middle\" font-size=\"13\" fill=\"#333\">true</text>\n";

  // Colour bar.
  const double bar_h = std::clamp(m, 60.0, 200.0);
  constexpr int kBarSteps = 20;
  out += "<g class=\"colour-bar\">\n";
  for (int s = 0; s < kBarSteps; ++s) {
    const double y = my + bar_h - (s + 1) * bar_h / kBarSteps;
    out += "<rect x=\"" + co(bar_x) + "\" y=\"" + co(y) + "\" width=\"12\" height=\"" +
           co(bar_h / kBarSteps + 0.3) + "\" fill=\"" + hex(blues((s + 0.5) / kBarSteps)) +
           "\"/>\n";
  }
  out += "<rect x=\"" + co(bar_x) + "\" y=\"" + co(my) + "\" width=\"12\" height=\"" +
         co(bar_h) + "\" fill=\"none\" stroke=\"#ccc\"/>\n";
  for (int pct : {0, 50, 100}) {
    out += "<text x=\"" + co(bar_x + 16) + "\" y=\"" + co(my + bar_h * (1 - pct / 100.0) + 4) +
           "\" font-size=\"10\" fill=\"#555\">" + std::to_string(pct) + "%</text>\n";
  }
  out += "</g>\n</svg>\n";
  return out;
}

namespace {

// ---------------------------------------------------------------------------------------------
// The HTML page.

constexpr const char* kCss = R"css(
:root { color-scheme: light; }
body { margin: 0; background: #f4f5f7; color: #222;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", Arial, sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 20px 24px; }
h1 { font-size: 22px; margin: 4px 0 14px; overflow-wrap: anywhere; }
h2 { font-size: 17px; margin: 0 0 12px; }
h3 { font-size: 14px; margin: 20px 0 8px; color: #444; }
section { background: #fff; border: 1px solid #e2e4e8; border-radius: 8px;
  padding: 16px 20px; margin: 0 0 16px; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: 3px 12px 3px 0; text-align: right; border-bottom: 1px solid #eef0f2;
  white-space: nowrap; }
th { font-weight: 600; color: #444; }
th:first-child, td:first-child { text-align: left; }
table.facts th { font-weight: normal; color: #666; padding-right: 24px; }
table.facts td { text-align: left; white-space: normal; overflow-wrap: anywhere; }
tr.best td { font-weight: 600; background: #f1f7ec; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(400px, 1fr)); gap: 16px; }
figure { margin: 0; }
figure.confusion { margin-top: 20px; }
svg { display: block; max-width: 100%; height: auto; }
.scroll { max-height: 340px; overflow: auto; border: 1px solid #eef0f2; border-radius: 4px;
  margin-top: 12px; }
.scroll table { width: 100%; }
.scroll th { position: sticky; top: 0; background: #fafbfc; }
.scroll th, .scroll td { padding-left: 10px; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; }
.card { border: 1px solid #e2e4e8; border-radius: 6px; padding: 6px 14px; min-width: 96px; }
.card b { display: block; font-size: 20px; font-variant-numeric: tabular-nums; }
.card span { color: #666; font-size: 12px; }
td.bar { background: linear-gradient(90deg, #d3e3f4 var(--v), transparent var(--v)); }
td.name { max-width: 320px; overflow: hidden; text-overflow: ellipsis; }
.samples { display: grid; grid-template-columns: repeat(auto-fill, minmax(118px, 1fr)); gap: 10px; }
.samples figure { border: 2px solid; border-radius: 6px; padding: 6px; text-align: center;
  font-size: 12px; overflow-wrap: anywhere; }
.samples .ok { border-color: #7fbf7f; }
.samples .bad { border-color: #e07b7b; background: #fff6f6; }
.samples img { width: 96px; height: 96px; object-fit: contain; }
.samples img.px { image-rendering: pixelated; }
.samples .truth { color: #666; }
.retrieval .row { display: flex; flex-wrap: wrap; gap: 8px; align-items: flex-start;
  margin-bottom: 12px; padding-bottom: 12px; border-bottom: 1px solid #e3e5e8; }
.retrieval figure { margin: 0; width: 104px; border: 2px solid #ccc; border-radius: 6px;
  padding: 4px; text-align: center; font-size: 12px; background: #fff; }
.retrieval .query { border-color: #4a6fa5; background: #eef3fb; margin-right: 10px; }
.retrieval .ok { border-color: #7fbf7f; }
.retrieval .bad { border-color: #e07b7b; background: #fff6f6; }
.retrieval img { width: 96px; height: 96px; object-fit: contain; }
.retrieval img.px { image-rendering: pixelated; }
.samples .wrong { color: #b03030; }
.muted { color: #777; }
footer { color: #999; font-size: 12px; text-align: center; margin: 8px 0 24px; }
)css";

std::string pct(double fraction) {
  return std::isfinite(fraction) ? fixed(100 * fraction, 2) + "%" : "–";
}

std::string num(double v, int decimals) {
  return std::isfinite(v) ? fixed(v, decimals) : "–";
}

bool is_base64_char(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
         c == '+' || c == '/';
}

/// Rejects anything that is not a base64 PNG before it goes into an attribute: a stray quote
/// would break the page, and a wrong format would show a broken image.
void check_sample_image(const std::string& b64, size_t index) {
  VT_CHECK(!b64.empty(), "report sample ", index, " has no image; pass the PNG base64-encoded");
  size_t padding = 0;
  for (size_t i = 0; i < b64.size(); ++i) {
    const char c = b64[i];
    if (c == '=' && i + 2 >= b64.size()) {
      ++padding;
      continue;
    }
    VT_CHECK(is_base64_char(c) && padding == 0, "report sample ", index,
             ": the image is not plain base64 (unexpected character at offset ", i,
             "); pass the PNG's bytes base64-encoded, without a data: prefix or line breaks");
  }
  VT_CHECK(b64.size() % 4 == 0, "report sample ", index, ": the image's base64 length ",
           b64.size(), " is not a multiple of 4; is it truncated?");
  // "iVBORw0KGgo" is the base64 of the PNG signature \x89PNG\r\n\x1a\n.
  VT_CHECK(b64.compare(0, 11, "iVBORw0KGgo") == 0, "report sample ", index,
           ": the image is not a PNG; encode the image as PNG first");
}

/// The PNG's width from its IHDR chunk (bytes 16-19), or 0 when the data is too short.
uint32_t png_width(const std::string& b64) {
  if (b64.size() < 32) return 0;
  auto value = [](char c) -> uint32_t {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    return c == '+' ? 62 : 63;
  };
  std::array<uint8_t, 24> bytes{};
  for (size_t g = 0; g < 8; ++g) {
    uint32_t v = 0;
    for (size_t i = 0; i < 4; ++i) v = (v << 6) | value(b64[4 * g + i]);
    bytes[3 * g] = static_cast<uint8_t>(v >> 16);
    bytes[3 * g + 1] = static_cast<uint8_t>(v >> 8);
    bytes[3 * g + 2] = static_cast<uint8_t>(v);
  }
  return (uint32_t{bytes[16]} << 24) | (uint32_t{bytes[17]} << 16) | (uint32_t{bytes[18]} << 8) |
         bytes[19];
}

std::string class_name(const std::vector<std::string>& classes, size_t i) {
  return i < classes.size() ? classes[i] : std::to_string(i);
}

/// The epochs as a table. Multi-label runs show validation mAP and F1 (no loss or top-k is
/// measured there); top-5 is left out with 5 classes or fewer, where it is always 100%.
std::string history_table(const std::vector<EpochRecord>& history, bool has_val,
                          bool multi_label, bool top5) {
  std::string out = "<div class=\"scroll\"><table class=\"history\">\n<thead><tr><th>epoch</th>"
                    "<th>lr</th><th>train loss</th><th>" +
                    std::string(multi_label ? "train label accuracy" : "train top-1") + "</th>";
  if (has_val && multi_label) {
    out += "<th>val mAP</th><th>val micro-F1</th><th>val macro-F1</th>";
  } else if (has_val) {
    out += std::string("<th>val loss</th><th>val top-1</th>") + (top5 ? "<th>val top-5</th>" : "") +
           "<th>val macro-F1</th>";
  }
  out += "<th>time</th><th>img/s</th></tr></thead>\n<tbody>\n";
  for (const auto& r : history) {
    out += r.best ? "<tr class=\"best\" title=\"best epoch\">" : "<tr>";
    out += "<td>" + std::to_string(r.epoch) + (r.best ? " ★" : "") + "</td>";
    out += "<td>" + (std::isfinite(r.lr) ? general(r.lr, 3) : "–") + "</td>";
    out += "<td>" + num(r.train_loss, 4) + "</td><td>" + pct(r.train_top1) + "</td>";
    if (has_val) {
      const int columns = multi_label ? 3 : top5 ? 4 : 3;
      if (!r.has_val) {
        for (int c = 0; c < columns; ++c) out += "<td>–</td>";
      } else if (multi_label) {
        out += "<td>" + num(r.val_map, 4) + "</td><td>" + num(r.val_micro_f1, 4) + "</td><td>" +
               num(r.val_macro_f1, 4) + "</td>";
      } else {
        out += "<td>" + num(r.val_loss, 4) + "</td><td>" + pct(r.val_top1) + "</td>" +
               (top5 ? "<td>" + pct(r.val_top5) + "</td>" : "") + "<td>" +
               num(r.val_macro_f1, 4) + "</td>";
      }
    }
    out += "<td>" + num(r.seconds, 1) + " s</td><td>" + num(r.img_per_s, 0) + "</td></tr>\n";
  }
  out += "</tbody></table></div>\n";
  return out;
}

std::string card(const std::string& value, const std::string& label) {
  return "<div class=\"card\"><b>" + value + "</b><span>" + label + "</span></div>";
}

/// One row of a per-class table: the class's name (escaped here), its cells (HTML), and the
/// value in [0, 1] the bar cell draws.
struct ClassRow {
  std::string name;
  std::vector<std::string> cells;
  double bar = 0;
};

/// A scrolling per-class table under `heading`: the columns after `first` (the class's
/// name), the cell at `bar_column` of each row drawn over a bar of its row's value.
std::string per_class_table(const std::string& heading, const std::string& first,
                            const std::vector<std::string>& columns, size_t bar_column,
                            const std::vector<ClassRow>& rows) {
  std::string out = "<h3 id=\"per-class\">" + heading + "</h3>\n<div class=\"scroll\">"
                    "<table class=\"per-class\">\n<thead><tr><th>" + first + "</th>";
  for (const auto& c : columns) out += "<th>" + c + "</th>";
  out += "</tr></thead>\n<tbody>\n";
  for (const auto& r : rows) {
    const std::string name = esc(r.name);
    out += "<tr><td class=\"name\" title=\"" + name + "\">" + name + "</td>";
    const double bar_pct = std::isfinite(r.bar) ? std::clamp(100 * r.bar, 0.0, 100.0) : 0;
    for (size_t c = 0; c < r.cells.size(); ++c) {
      out += c == bar_column ? "<td class=\"bar\" style=\"--v: " + fixed(bar_pct, 1) + "%\">"
                             : std::string("<td>");
      out += r.cells[c] + "</td>";
    }
    out += "</tr>\n";
  }
  return out + "</tbody></table></div>\n";
}

std::string test_section(const ClassificationMetrics& m, const std::vector<std::string>& classes,
                         const std::string& confusion_svg) {
  std::string out = "<section id=\"test\">\n<h2>Test</h2>\n<div class=\"cards\">";
  out += card(pct(m.top1), "top-1 accuracy") +
         (m.per_class.size() > 5 ? card(pct(m.top5), "top-5 accuracy") : std::string()) +
         card(num(m.macro_f1, 4), "macro-F1") + card(num(m.ece, 4), "calibration error (ECE)") +
         card(num(m.loss, 4), "loss") + card(std::to_string(m.count), "images");
  out += "</div>\n";
  std::vector<ClassRow> rows;
  bool unmeasured = false;  // a class without test photos: no recall, no F1
  for (size_t i = 0; i < m.per_class.size(); ++i) {
    const auto& c = m.per_class[i];
    const bool held = c.support > 0;
    unmeasured = unmeasured || !held;
    rows.push_back({class_name(classes, i),
                    {num(c.precision, 4), held ? num(c.recall, 4) : "n/a",
                     held ? num(c.f1, 4) : "n/a", std::to_string(c.support)},
                    c.f1});
  }
  out += per_class_table("Per class", "class", {"precision", "recall", "F1", "support"}, 2, rows);
  if (unmeasured) {
    out += "<p class=\"muted\">n/a: no test photos of the class, so its recall and F1 are not "
           "measured; macro-F1 averages over the other classes.</p>\n";
  }
  if (!confusion_svg.empty()) {
    // The matrix carries its own title, so the page adds no heading.
    out += "<figure id=\"confusion\" class=\"confusion\">\n" + confusion_svg + "</figure>\n";
  }
  out += "</section>\n";
  return out;
}

std::string multi_label_test_section(const MultiLabelMetrics& m,
                                     const std::vector<std::string>& labels) {
  std::string out = "<section id=\"test\">\n<h2>Test</h2>\n<div class=\"cards\">";
  out += card(pct(m.mean_ap), "mAP") + card(num(m.micro_f1, 4), "micro-F1") +
         card(num(m.macro_f1, 4), "macro-F1") + card(std::to_string(m.count), "images");
  out += "</div>\n";
  std::vector<ClassRow> rows;
  for (size_t i = 0; i < m.ap.size(); ++i) {
    // A label without positives has no average precision (left out of mAP).
    const bool scored = i < m.positives.size() && m.positives[i] > 0;
    const double f1 = i < m.f1.size() ? m.f1[i] : 0;
    rows.push_back({class_name(labels, i),
                    {scored ? num(m.ap[i], 4) : std::string("–"), num(f1, 4),
                     i < m.thresholds.size() ? num(m.thresholds[i], 3) : std::string(),
                     i < m.positives.size() ? std::to_string(m.positives[i]) : std::string()},
                    f1});
  }
  out += per_class_table("Per label", "label",
                         {"average precision", "F1", "threshold", "positives"}, 1, rows);
  return out + "</section>\n";
}

std::string samples_section(const std::vector<ReportSample>& samples) {
  std::string out = "<section id=\"samples\">\n<h2>Samples</h2>\n<div class=\"samples\">\n";
  for (const auto& s : samples) {
    const bool correct = s.truth == s.predicted;
    const uint32_t w = png_width(s.image_png_base64);
    // Small images (28 px digits) are upscaled; smoothing would blur them into mush.
    const char* img_class = w > 0 && w <= 64 ? " class=\"px\"" : "";
    const std::string score =
        std::isfinite(s.score) ? fixed(100 * std::clamp(s.score, 0.0, 1.0), 0) + "%" : "–";
    out += std::string("<figure class=\"") + (correct ? "ok" : "bad") + "\"><img" + img_class +
           " alt=\"" + esc(s.truth) + "\" src=\"data:image/png;base64," + s.image_png_base64 +
           "\"><figcaption><div>" + esc(s.predicted) + " · " + score + "</div>";
    if (!correct) out += "<div class=\"truth\">true: " + esc(s.truth) + "</div>";
    out += "</figcaption></figure>\n";
  }
  out += "</div>\n</section>\n";
  return out;
}

}  // namespace

void write_report(const std::string& dir, const ReportInput& input) {
  namespace fs = std::filesystem;
  std::error_code ec;
  VT_CHECK(!dir.empty() && fs::is_directory(dir, ec), "cannot write the report: directory '",
           dir, "' does not exist; create it first (it is normally the run's output directory)");
  for (size_t i = 0; i < input.samples.size(); ++i) {
    check_sample_image(input.samples[i].image_png_base64, i);
  }
  const ClassificationMetrics* test = input.test;
  if (test != nullptr) {
    VT_CHECK(input.classes.empty() || test->per_class.empty() ||
                 input.classes.size() == test->per_class.size(),
             "the report has ", input.classes.size(), " class names but the test metrics have ",
             test->per_class.size(), " classes; pass the names of the classes the model predicts");
  }

  // Build everything before writing anything, so a bad input leaves no half report.
  std::vector<double> epochs;
  std::vector<double> train_loss, val_loss, train_top1, val_top1, val_top5, val_f1, val_map,
      val_micro;
  bool has_val = false;
  const bool multi = input.multi_label;
  const bool top5 = !multi && (input.classes.empty() || input.classes.size() > 5);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (const auto& r : input.history) {
    epochs.push_back(static_cast<double>(r.epoch));
    train_loss.push_back(r.train_loss);
    train_top1.push_back(100 * r.train_top1);
    has_val = has_val || r.has_val;
    val_loss.push_back(r.has_val ? r.val_loss : nan);
    val_top1.push_back(r.has_val ? 100 * r.val_top1 : nan);
    val_top5.push_back(r.has_val ? 100 * r.val_top5 : nan);
    val_f1.push_back(r.has_val ? 100 * r.val_macro_f1 : nan);
    val_map.push_back(r.has_val ? 100 * r.val_map : nan);
    val_micro.push_back(r.has_val ? 100 * r.val_micro_f1 : nan);
  }
  std::vector<std::pair<std::string, std::vector<double>>> loss_series = {{"train", train_loss}};
  std::vector<std::pair<std::string, std::vector<double>>> accuracy_series = {
      {multi ? "train label accuracy" : "train top-1", train_top1}};
  if (has_val && multi) {
    accuracy_series.emplace_back("val mAP", val_map);
    accuracy_series.emplace_back("val micro-F1", val_micro);
    accuracy_series.emplace_back("val macro-F1", val_f1);
  } else if (has_val) {
    loss_series.emplace_back("validation", val_loss);
    accuracy_series.emplace_back("val top-1", val_top1);
    if (top5) accuracy_series.emplace_back("val top-5", val_top5);
    accuracy_series.emplace_back("val macro-F1", val_f1);
  }
  const std::string loss_svg = svg_line_chart("Loss", "epoch", "loss", epochs, loss_series);
  const std::string accuracy_svg =
      svg_line_chart("Accuracy", "epoch", "percent", epochs, accuracy_series);
  std::string confusion_svg;
  if (test != nullptr && !test->confusion.empty()) {
    const bool named = input.classes.size() == test->confusion.size();
    confusion_svg =
        svg_confusion_matrix(test->confusion, named ? input.classes : std::vector<std::string>{});
  }

  std::string html = "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
                     "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
                     "<title>" + esc(input.title) + "</title>\n<style>" + kCss +
                     "</style>\n</head>\n<body>\n<main>\n";
  html += "<h1>" + esc(input.title) + "</h1>\n";
  html += "<section id=\"summary\">\n<h2>Run</h2>\n";
  if (input.facts.empty()) {
    html += "<p class=\"muted\">No details recorded.</p>\n";
  } else {
    html += "<table class=\"facts\">\n";
    for (const auto& [key, value] : input.facts) {
      html += "<tr><th>" + esc(key) + "</th><td>" + esc(value) + "</td></tr>\n";
    }
    html += "</table>\n";
  }
  html += "</section>\n";

  html += "<section id=\"training\">\n<h2>Training</h2>\n";
  if (input.history.empty()) {
    html += "<p class=\"muted\">No epochs recorded.</p>\n";
  } else {
    html += "<div class=\"charts\">\n<figure>\n" + loss_svg + "</figure>\n<figure>\n" +
            accuracy_svg + "</figure>\n</div>\n" + history_table(input.history, has_val, multi, top5);
  }
  html += "</section>\n";

  if (test != nullptr) html += test_section(*test, input.classes, confusion_svg);
  if (input.test_multi_label != nullptr) {
    html += multi_label_test_section(*input.test_multi_label, input.classes);
  }
  if (!input.samples.empty()) html += samples_section(input.samples);
  html += "<footer>vitrine run report</footer>\n</main>\n</body>\n</html>\n";

  const fs::path base(dir);
  write_file_atomic((base / run_files::kLossChart).string(), loss_svg);
  write_file_atomic((base / run_files::kAccuracyChart).string(), accuracy_svg);
  if (!confusion_svg.empty()) write_file_atomic((base / run_files::kConfusionChart).string(), confusion_svg);
  // The page last: once it exists, everything it describes exists too.
  write_file_atomic((base / run_files::kReport).string(), html);
}

void write_comparison_report(const std::string& path, const std::string& title,
                             const std::vector<RunSummary>& runs,
                             const std::vector<ComparedSample>& samples,
                             const std::string& samples_heading) {
  VT_CHECK(!runs.empty(), "nothing to compare: give at least one run");
  for (size_t i = 0; i < samples.size(); ++i) {
    check_sample_image(samples[i].image_png_base64, i);
    VT_CHECK(samples[i].predicted.size() == runs.size() &&
                 samples[i].score.size() == runs.size(),
             "comparison sample ", i, " has ", samples[i].predicted.size(),
             " predictions for ", runs.size(), " runs; give one per run");
  }
  check_one_kind(runs);
  const bool multi = runs.front().multi_label;
  // Shared charts: every run's validation top-1 (mAP for multi-label runs) and training
  // loss over its epochs.
  size_t longest = 0;
  for (const auto& r : runs) longest = std::max(longest, r.history.size());
  std::vector<double> epochs;
  for (size_t e = 1; e <= longest; ++e) epochs.push_back(static_cast<double>(e));
  const double nan = std::numeric_limits<double>::quiet_NaN();
  std::vector<std::pair<std::string, std::vector<double>>> val_series, loss_series;
  for (const auto& r : runs) {
    std::vector<double> val(longest, nan), loss(longest, nan);
    for (size_t e = 0; e < r.history.size(); ++e) {
      if (r.history[e].has_val) {
        val[e] = 100 * (multi ? r.history[e].val_map : r.history[e].val_top1);
      }
      loss[e] = r.history[e].train_loss;
    }
    val_series.emplace_back(r.name, val);
    loss_series.emplace_back(r.name, loss);
  }
  std::string html = "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
                     "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
                     "<title>" + esc(title) + "</title>\n<style>" + kCss +
                     "</style>\n</head>\n<body>\n<main>\n<h1>" + esc(title) + "</h1>\n";
  html += "<section id=\"summary\">\n<h2>Test</h2>\n<table class=\"comparison\">\n<thead><tr>"
          "<th>run</th>" +
          std::string(multi ? "<th>mAP</th><th>micro-F1</th><th>macro-F1</th>"
                            : "<th>top-1</th><th>top-5</th><th>macro-F1</th><th>ECE</th>") +
          "<th>images</th><th>epochs</th><th>training time</th><th>directory</th></tr></thead>"
          "\n<tbody>\n";
  for (const auto& r : runs) {
    html += "<tr><td>" + esc(r.name) + "</td>";
    if (r.has_test && multi) {
      html += "<td>" + pct(r.test_map) + "</td><td>" + num(r.test_micro_f1, 4) + "</td><td>" +
              num(r.test_macro_f1, 4) + "</td><td>" + std::to_string(r.test_count) + "</td>";
    } else if (multi) {
      html += "<td>–</td><td>–</td><td>–</td><td>–</td>";
    } else if (r.has_test) {
      html += "<td>" + pct(r.test_top1) + "</td><td>" + pct(r.test_top5) + "</td><td>" +
              num(r.test_macro_f1, 4) + "</td><td>" + num(r.test_ece, 4) + "</td><td>" +
              std::to_string(r.test_count) + "</td>";
    } else {
      html += "<td>–</td><td>–</td><td>–</td><td>–</td><td>–</td>";
    }
    html += "<td>" + std::to_string(r.history.size()) + "</td><td>" + num(r.train_seconds, 0) +
            " s</td><td class=\"name\">" + esc(r.dir) + "</td></tr>\n";
  }
  html += "</tbody></table>\n</section>\n";
  html += "<section id=\"training\">\n<h2>Training</h2>\n<div class=\"charts\">\n<figure>\n" +
          svg_line_chart(multi ? "Validation mAP" : "Validation top-1", "epoch", "percent",
                         epochs, val_series) +
          "</figure>\n<figure>\n" +
          svg_line_chart("Training loss", "epoch", "loss", epochs, loss_series) +
          "</figure>\n</div>\n</section>\n";
  if (!multi) {  // a photo of several labels has no one cell
    html += "<section id=\"confusion\">\n<h2>Confusion on the test split</h2>\n"
            "<div class=\"charts\">\n";
    for (const auto& r : runs) {
      if (!r.has_test || r.confusion.empty()) continue;
      html += "<figure>\n<h3>" + esc(r.name) + "</h3>\n" +
              svg_confusion_matrix(r.confusion, r.classes.size() == r.confusion.size()
                                                    ? r.classes
                                                    : std::vector<std::string>{}) +
              "</figure>\n";
    }
    html += "</div>\n</section>\n";
  }
  if (!samples.empty()) {
    html += "<section id=\"samples\">\n<h2>" + esc(samples_heading) +
            "</h2>\n<div class=\"samples\">\n";
    for (const auto& s : samples) {
      const uint32_t w = png_width(s.image_png_base64);
      const char* img_class = w > 0 && w <= 64 ? " class=\"px\"" : "";
      bool all_right = true;
      std::string lines;
      for (size_t i = 0; i < runs.size(); ++i) {
        const bool right = s.predicted[i] == s.truth;
        all_right = all_right && right;
        const std::string score = std::isfinite(s.score[i])
                                      ? fixed(100 * std::clamp(s.score[i], 0.0, 1.0), 0) + "%"
                                      : "–";
        lines += std::string("<div class=\"") + (right ? "muted" : "wrong") + "\">" +
                 (right ? "✓ " : "✗ ") + esc(runs[i].name) + ": " + esc(s.predicted[i]) + " · " +
                 score + "</div>";
      }
      html += std::string("<figure class=\"") + (all_right ? "ok" : "bad") + "\"><img" +
              img_class + " alt=\"" + esc(s.truth) + "\" src=\"data:image/png;base64," +
              s.image_png_base64 + "\"><figcaption><div><b>" + esc(s.truth) + "</b></div>" +
              lines + "</figcaption></figure>\n";
    }
    html += "</div>\n</section>\n";
  }
  html += "<footer>vitrine comparison report</footer>\n</main>\n</body>\n</html>\n";
  write_file_atomic(path, html);
}

void write_retrieval_report(const std::string& path, const RetrievalReport& report) {
  auto figure = [](const RetrievalShown& shown, const std::string& css, const std::string& line) {
    std::string out = "<figure class=\"" + css + "\">";
    if (!shown.image_png_base64.empty()) {
      const uint32_t w = png_width(shown.image_png_base64);
      out += std::string("<img") + (w > 0 && w <= 64 ? " class=\"px\"" : "") + " alt=\"" +
             esc(shown.caption) + "\" src=\"data:image/png;base64," + shown.image_png_base64 +
             "\">";
    }
    return out + "<figcaption><div>" + esc(shown.caption) + "</div>" + line +
           "</figcaption></figure>";
  };
  std::string html = "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
                     "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
                     "<title>" + esc(report.title) + "</title>\n<style>" + kCss +
                     "</style>\n</head>\n<body>\n<main>\n<h1>" + esc(report.title) + "</h1>\n";
  html += "<section id=\"summary\">\n<h2>Retrieval</h2>\n<table class=\"facts\">\n";
  for (const auto& [key, value] : report.facts) {
    html += "<tr><th>" + esc(key) + "</th><td>" + esc(value) + "</td></tr>\n";
  }
  for (const auto& [key, value] : report.metrics) {
    html += "<tr><th>" + esc(key) + "</th><td>" + num(value, 4) + "</td></tr>\n";
  }
  html += "</table>\n";
  if (!report.groups.empty()) {
    html += "<h3>Precision@10 by category</h3>\n<table class=\"comparison\">\n<thead><tr>"
            "<th>category</th><th>queries</th><th>precision@10</th></tr></thead>\n<tbody>\n";
    for (const auto& [name, queries, precision] : report.groups) {
      html += "<tr><td>" + esc(name) + "</td><td>" + std::to_string(queries) + "</td><td>" +
              num(precision, 4) + "</td></tr>\n";
    }
    html += "</tbody></table>\n";
  }
  html += "</section>\n";
  if (!report.examples.empty()) {
    html += "<section id=\"examples\" class=\"retrieval\">\n<h2>Example queries</h2>\n"
            "<p class=\"muted\">Each row: the query photo, then the most similar products, best "
            "first; green frames match the query, red ones do not.</p>\n";
    for (const auto& ex : report.examples) {
      html += "<div class=\"row\">" + figure(ex.query, "query", "<div>query</div>");
      for (const auto& r : ex.results) {
        html += figure(r, r.relevant ? "ok" : "bad", "<div>" + fixed(r.score, 3) + "</div>");
      }
      html += "</div>\n";
    }
    html += "</section>\n";
  }
  html += "<footer>vitrine retrieval report</footer>\n</main>\n</body>\n</html>\n";
  write_file_atomic(path, html);
}

}  // namespace vitrine::train
