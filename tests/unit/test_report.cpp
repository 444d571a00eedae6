#include "vitrine/core/error.h"
#include "vitrine/train/report.h"

#include <gtest/gtest.h>

#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <unistd.h>

using namespace vitrine;
using namespace vitrine::train;
namespace fs = std::filesystem;

namespace {

using L = LineChartLayout;
using Series = std::vector<std::pair<std::string, std::vector<double>>>;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();
// A real 1 x 1 PNG.
const char* const kPng =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5E"
    "rkJggg==";

// ---------------------------------------------------------------------------------------------
// A strict XML well-formedness check: balanced tags, one root, quoted unique attributes, no
// raw '<' or stray '&' in text or values, only the predefined or numeric entities, valid
// UTF-8 without the control characters XML forbids. Enough to catch anything a browser's
// XML parser would reject in the SVG written here (no DOCTYPE, no CDATA).

/// The offset of the first byte that is not valid UTF-8 or is a character XML forbids, or npos.
size_t first_bad_char(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    const size_t len = c < 0x80          ? 1
                       : (c >> 5) == 0x6 ? 2
                       : (c >> 4) == 0xE ? 3
                       : (c >> 3) == 0x1E ? 4
                                          : 0;
    if (len == 0 || i + len > s.size()) return i;
    uint32_t cp = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
    for (size_t k = 1; k < len; ++k) {
      const auto b = static_cast<unsigned char>(s[i + k]);
      if ((b & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (b & 0x3F);
    }
    const uint32_t min_cp[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_cp[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF) || cp == 0xFFFE ||
        cp == 0xFFFF || (cp < 0x20 && cp != 0x9 && cp != 0xA && cp != 0xD)) {
      return i;
    }
    i += len;
  }
  return std::string::npos;
}

bool is_name_start(char c) {
  return std::isalpha(static_cast<unsigned char>(c)) || c == '_' || c == ':';
}
bool is_name_char(char c) {
  return is_name_start(c) || std::isdigit(static_cast<unsigned char>(c)) || c == '-' || c == '.';
}

/// "" when `xml` is a well-formed document, else what is wrong and where.
std::string xml_error(const std::string& xml) {
  if (const size_t bad = first_bad_char(xml); bad != std::string::npos) {
    return "invalid UTF-8 or a character XML forbids at offset " + std::to_string(bad);
  }
  std::vector<std::string> open;
  bool had_root = false;
  size_t i = 0;
  const size_t n = xml.size();
  auto at = [&](size_t p) { return " at offset " + std::to_string(p); };
  auto skip_ws = [&] {
    while (i < n && std::isspace(static_cast<unsigned char>(xml[i]))) ++i;
  };
  auto check_refs = [&](size_t from, size_t to) -> std::string {
    for (size_t p = from; p < to; ++p) {
      if (xml[p] == '<') return "raw '<'" + at(p);
      if (xml[p] != '&') continue;
      const size_t semi = xml.find(';', p);
      if (semi == std::string::npos || semi >= to || semi - p > 12) return "bad '&'" + at(p);
      const std::string ref = xml.substr(p + 1, semi - p - 1);
      static const std::set<std::string> kNamed = {"amp", "lt", "gt", "quot", "apos"};
      bool ok = kNamed.count(ref) > 0;
      if (!ok && ref.size() > 1 && ref[0] == '#') {
        const bool hex = ref[1] == 'x';
        const std::string digits = ref.substr(hex ? 2 : 1);
        ok = !digits.empty();
        for (char d : digits) {
          ok = ok && (hex ? std::isxdigit(static_cast<unsigned char>(d))
                          : std::isdigit(static_cast<unsigned char>(d)));
        }
      }
      if (!ok) return "unknown entity &" + ref + ";" + at(p);
    }
    return "";
  };
  auto read_name = [&]() -> std::string {
    const size_t start = i;
    if (i >= n || !is_name_start(xml[i])) return "";
    while (i < n && is_name_char(xml[i])) ++i;
    return xml.substr(start, i - start);
  };

  if (xml.compare(0, 5, "<?xml") == 0) {
    const size_t end = xml.find("?>");
    if (end == std::string::npos) return "unterminated XML declaration";
    i = end + 2;
  }
  while (i < n) {
    if (xml[i] != '<') {
      const size_t end = std::min(xml.find('<', i), n);
      if (open.empty()) {
        for (size_t p = i; p < end; ++p) {
          if (!std::isspace(static_cast<unsigned char>(xml[p]))) {
            return "text outside the root" + at(p);
          }
        }
      }
      if (xml.substr(i, end - i).find("]]>") != std::string::npos) return "']]>' in text" + at(i);
      if (auto e = check_refs(i, end); !e.empty()) return e;
      i = end;
      continue;
    }
    if (xml.compare(i, 4, "<!--") == 0) {
      const size_t end = xml.find("-->", i + 4);
      if (end == std::string::npos) return "unterminated comment" + at(i);
      if (xml.substr(i + 4, end - i - 4).find("--") != std::string::npos) {
        return "'--' in comment" + at(i);
      }
      i = end + 3;
      continue;
    }
    if (xml.compare(i, 2, "<?") == 0 || xml.compare(i, 2, "<!") == 0) {
      return "unexpected declaration" + at(i);
    }
    if (xml.compare(i, 2, "</") == 0) {
      i += 2;
      const std::string name = read_name();
      skip_ws();
      if (i >= n || xml[i] != '>') return "bad end tag" + at(i);
      ++i;
      if (open.empty() || open.back() != name) {
        return "end tag </" + name + "> does not match <" +
               (open.empty() ? std::string("nothing") : open.back()) + ">" + at(i);
      }
      open.pop_back();
      continue;
    }
    ++i;
    const std::string name = read_name();
    if (name.empty()) return "bad tag name" + at(i);
    if (open.empty() && had_root) return "a second root element" + at(i);
    had_root = true;
    std::set<std::string> attrs;
    bool self_closing = false;
    for (;;) {
      const size_t before = i;
      skip_ws();
      if (i >= n) return "unterminated tag <" + name + ">";
      if (xml.compare(i, 2, "/>") == 0) {
        self_closing = true;
        i += 2;
        break;
      }
      if (xml[i] == '>') {
        ++i;
        break;
      }
      if (i == before) return "attributes need white space between them" + at(i);
      const std::string attr = read_name();
      if (attr.empty()) return "bad attribute name in <" + name + ">" + at(i);
      if (!attrs.insert(attr).second) return "duplicate attribute " + attr + at(i);
      skip_ws();
      if (i >= n || xml[i] != '=') return "attribute " + attr + " without '='" + at(i);
      ++i;
      skip_ws();
      if (i >= n || (xml[i] != '"' && xml[i] != '\'')) return "unquoted attribute " + attr + at(i);
      const char quote = xml[i++];
      const size_t end = xml.find(quote, i);
      if (end == std::string::npos) return "unterminated attribute " + attr + at(i);
      if (auto e = check_refs(i, end); !e.empty()) return e;
      i = end + 1;
    }
    if (!self_closing) open.push_back(name);
  }
  if (!had_root) return "no root element";
  if (!open.empty()) return "unclosed <" + open.back() + ">";
  return "";
}

/// Every `<svg ...>...</svg>` in `text` (they do not nest here).
std::vector<std::string> svg_blocks(const std::string& text) {
  std::vector<std::string> out;
  for (size_t p = text.find("<svg"); p != std::string::npos; p = text.find("<svg", p + 1)) {
    const size_t end = text.find("</svg>", p);
    if (end == std::string::npos) break;
    out.push_back(text.substr(p, end + 6 - p));
  }
  return out;
}

/// The value of `attr` in the first tag that holds `marker`.
std::string attribute_near(const std::string& svg, const std::string& marker,
                           const std::string& attr) {
  const size_t m = svg.find(marker);
  if (m == std::string::npos) return "";
  const size_t open = svg.rfind('<', m);
  const size_t close = svg.find('>', m);
  const std::string tag = svg.substr(open, close - open);
  const size_t a = tag.find(" " + attr + "=\"");
  if (a == std::string::npos) return "";
  const size_t start = a + attr.size() + 3;
  return tag.substr(start, tag.find('"', start) - start);
}

std::vector<std::pair<double, double>> polyline_points(const std::string& svg,
                                                       const std::string& series) {
  const std::string points = attribute_near(svg, "data-series=\"" + series + "\"", "points");
  std::vector<std::pair<double, double>> out;
  std::istringstream in(points);
  std::string pair;
  while (in >> pair) {
    const size_t comma = pair.find(',');
    out.emplace_back(std::stod(pair.substr(0, comma)), std::stod(pair.substr(comma + 1)));
  }
  return out;
}

size_t count(const std::string& text, const std::string& needle) {
  size_t n = 0;
  for (size_t p = text.find(needle); p != std::string::npos; p = text.find(needle, p + 1)) ++n;
  return n;
}

bool contains(const std::string& text, const std::string& needle) {
  return text.find(needle) != std::string::npos;
}

/// Whether `f` throws vitrine::Error with `needle` in its message.
bool throws_with(const std::function<void()>& f, const std::string& needle) {
  try {
    f();
  } catch (const Error& e) {
    return contains(e.what(), needle);
  }
  return false;
}

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::vector<double> iota(size_t n, double from = 1) {
  std::vector<double> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = from + static_cast<double>(i);
  return v;
}

// ---------------------------------------------------------------------------------------------

TEST(ReportXmlCheck, RejectsBrokenDocuments) {
  // The checker itself: if it accepted these, the tests below would prove nothing.
  EXPECT_EQ(xml_error("<a><b/></a>"), "");
  EXPECT_EQ(xml_error("<a x=\"&amp;&#60;&#x3c;\">t &lt; u</a>"), "");
  EXPECT_NE(xml_error("<a><b></a>"), "");
  EXPECT_NE(xml_error("<a>x < y</a>"), "");
  EXPECT_NE(xml_error("<a>R&D</a>"), "");
  EXPECT_NE(xml_error("<a x=\"1\" x=\"2\"/>"), "");
  EXPECT_NE(xml_error("<a x=1/>"), "");
  EXPECT_NE(xml_error("<a x=\"\"\"/>"), "");
  EXPECT_NE(xml_error("<a/><b/>"), "");
  EXPECT_NE(xml_error("<a>\xff</a>"), "");
  EXPECT_NE(xml_error("<a>\x01</a>"), "");
}

TEST(ReportLineChart, IsWellFormedSvgWithGeometry) {
  const std::string svg = svg_line_chart("Loss", "epoch", "loss", iota(10),
                                         {{"train", iota(10, 0.5)}, {"val", iota(10, 1.0)}});
  EXPECT_EQ(xml_error(svg), "");
  EXPECT_EQ(svg.rfind("<svg xmlns=\"http://www.w3.org/2000/svg\"", 0), 0u);
  std::istringstream view(attribute_near(svg, "<svg", "viewBox"));
  double x0 = -1, y0 = -1, w = 0, h = 0;
  view >> x0 >> y0 >> w >> h;
  EXPECT_EQ(x0, 0);
  EXPECT_EQ(y0, 0);
  EXPECT_EQ(w, L::kWidth);
  EXPECT_EQ(h, L::kHeight);
  EXPECT_TRUE(contains(svg, ">epoch</text>"));
  EXPECT_TRUE(contains(svg, ">loss</text>"));
  // Legend: one entry per series.
  EXPECT_TRUE(contains(svg, ">train</text>"));
  EXPECT_TRUE(contains(svg, ">val</text>"));
}

TEST(ReportLineChart, PointsSpanThePlotAreaEdgeToEdge) {
  // Values 0 .. 1 give ticks 0.0, 0.2, ..., 1.0 with 0 on the bottom edge and 1 on the top;
  // epochs 1 .. 5 put epoch 1 on the left edge and epoch 5 on the right edge.
  const std::vector<double> up = {0, 0.25, 0.5, 0.75, 1.0};
  const std::vector<double> down = {1.0, 0.75, 0.5, 0.25, 0};
  const std::string svg = svg_line_chart("t", "epoch", "v", iota(5), {{"up", up}, {"down", down}});
  ASSERT_EQ(xml_error(svg), "");
  const auto p = polyline_points(svg, "up");
  ASSERT_EQ(p.size(), 5u);
  EXPECT_NEAR(p.front().first, L::kPlotLeft, 0.01);
  EXPECT_NEAR(p.front().second, L::kPlotBottom, 0.01);
  EXPECT_NEAR(p.back().first, L::kPlotRight, 0.01);
  EXPECT_NEAR(p.back().second, L::kPlotTop, 0.01);
  for (size_t i = 0; i < p.size(); ++i) {
    const double f = static_cast<double>(i) / 4;
    EXPECT_NEAR(p[i].first, L::kPlotLeft + f * (L::kPlotRight - L::kPlotLeft), 0.01) << i;
    EXPECT_NEAR(p[i].second, L::kPlotBottom - f * (L::kPlotBottom - L::kPlotTop), 0.01) << i;
  }
  const auto q = polyline_points(svg, "down");
  ASSERT_EQ(q.size(), 5u);
  EXPECT_NEAR(q.front().second, L::kPlotTop, 0.01);
  EXPECT_NEAR(q.back().first, L::kPlotRight, 0.01);
  EXPECT_NEAR(q.back().second, L::kPlotBottom, 0.01);
  for (const char* tick : {">0.0<", ">0.2<", ">0.4<", ">0.6<", ">0.8<", ">1.0<"}) {
    EXPECT_TRUE(contains(svg, tick)) << tick;
  }
  for (const char* tick : {">1<", ">2<", ">3<", ">4<", ">5<"}) {
    EXPECT_TRUE(contains(svg, tick)) << tick;
  }
  EXPECT_FALSE(contains(svg, ">1.5<"));  // integral epochs get integral ticks
}

TEST(ReportLineChart, TicksFollowOneTwoFiveSteps) {
  // 0.37 .. 2.41 in about five steps: steps of 0.5 enclose the data in 0.0 .. 2.5.
  const std::string svg = svg_line_chart("t", "x", "y", iota(3), {{"s", {0.37, 2.41, 1.2}}});
  ASSERT_EQ(xml_error(svg), "");
  EXPECT_FALSE(contains(svg, ">3.0<"));
  for (const char* tick : {">0.0<", ">0.5<", ">1.0<", ">1.5<", ">2.0<", ">2.5<"}) {
    EXPECT_TRUE(contains(svg, tick)) << tick;
  }
  const auto p = polyline_points(svg, "s");
  ASSERT_EQ(p.size(), 3u);
  const double h = L::kPlotBottom - L::kPlotTop;
  EXPECT_NEAR(p[0].second, L::kPlotBottom - 0.37 / 2.5 * h, 0.01);
  EXPECT_NEAR(p[1].second, L::kPlotBottom - 2.41 / 2.5 * h, 0.01);
  // 300 epochs: ticks every 50, not 300 labels.
  const std::string long_run = svg_line_chart("t", "x", "y", iota(300), {{"s", iota(300)}});
  EXPECT_TRUE(contains(long_run, ">50<"));
  EXPECT_TRUE(contains(long_run, ">300<"));
  EXPECT_FALSE(contains(long_run, ">10<"));
}

TEST(ReportLineChart, SkipsNonFiniteValues) {
  const std::string svg =
      svg_line_chart("t", "epoch", "loss", iota(5), {{"s", {0.0, kNaN, 0.5, kInf, 1.0}}});
  ASSERT_EQ(xml_error(svg), "");
  const auto p = polyline_points(svg, "s");
  ASSERT_EQ(p.size(), 3u);
  EXPECT_NEAR(p[0].first, L::kPlotLeft, 0.01);
  EXPECT_NEAR(p[1].first, (L::kPlotLeft + L::kPlotRight) / 2, 0.01);
  EXPECT_NEAR(p[2].first, L::kPlotRight, 0.01);
  EXPECT_NEAR(p[2].second, L::kPlotTop, 0.01);  // inf did not stretch the axis
  EXPECT_FALSE(contains(svg, "nan"));
  EXPECT_FALSE(contains(svg, "inf"));

  // A series with no finite value draws nothing; a chart without any says so.
  const std::string empty = svg_line_chart("t", "epoch", "loss", iota(2), {{"s", {kNaN, kNaN}}});
  EXPECT_EQ(xml_error(empty), "");
  EXPECT_FALSE(contains(empty, "<polyline"));
  EXPECT_TRUE(contains(empty, "no data"));
  EXPECT_EQ(xml_error(svg_line_chart("t", "x", "y", {}, {})), "");
}

TEST(ReportLineChart, OneEpochAndConstantSeriesRender) {
  const std::string one = svg_line_chart("t", "epoch", "loss", {1}, {{"s", {0.7}}});
  ASSERT_EQ(xml_error(one), "");
  const auto p = polyline_points(one, "s");
  ASSERT_EQ(p.size(), 1u);
  EXPECT_NEAR(p[0].first, (L::kPlotLeft + L::kPlotRight) / 2, 0.01);
  EXPECT_GT(p[0].second, L::kPlotTop);
  EXPECT_LT(p[0].second, L::kPlotBottom);
  EXPECT_TRUE(contains(one, "<circle"));  // a lone point is visible
  EXPECT_TRUE(contains(one, ">1<"));

  const std::string flat = svg_line_chart("t", "epoch", "v", iota(4), {{"s", {2, 2, 2, 2}}});
  ASSERT_EQ(xml_error(flat), "");
  for (const auto& [px, py] : polyline_points(flat, "s")) {
    EXPECT_GT(py, L::kPlotTop);
    EXPECT_LT(py, L::kPlotBottom);
  }
  const std::string zero = svg_line_chart("t", "epoch", "v", iota(4), {{"s", {0, 0, 0, 0}}});
  ASSERT_EQ(xml_error(zero), "");
  EXPECT_NEAR(polyline_points(zero, "s").front().second, L::kPlotBottom, 0.01);
}

TEST(ReportLineChart, EscapesUserText) {
  const std::string svg = svg_line_chart("a<b & \"c\"", "x's", "y", iota(2),
                                         {{"<b>&\"x\"", {1, 2}}});
  ASSERT_EQ(xml_error(svg), "");
  EXPECT_TRUE(contains(svg, "a&lt;b &amp; &quot;c&quot;"));
  EXPECT_TRUE(contains(svg, "&lt;b&gt;&amp;&quot;x&quot;"));
  EXPECT_FALSE(contains(svg, "<b>"));
  EXPECT_EQ(polyline_points(svg, "&lt;b&gt;&amp;&quot;x&quot;").size(), 2u);
}

TEST(ReportLineChart, RejectsSeriesOfTheWrongLength) {
  EXPECT_TRUE(throws_with([] { svg_line_chart("t", "x", "y", iota(3), {{"s", {1, 2}}}); },
                          "one value per x"));
}

TEST(ReportConfusion, CountsNamesAndEscaping) {
  const std::vector<std::vector<int64_t>> m = {{7, 1, 0}, {2, 5, 3}, {0, 0, 9}};
  const std::string svg = svg_confusion_matrix(m, {"cat", "<b>&\"x\"", "dog"});
  ASSERT_EQ(xml_error(svg), "");
  EXPECT_EQ(svg.rfind("<svg xmlns=\"http://www.w3.org/2000/svg\"", 0), 0u);
  EXPECT_TRUE(contains(svg, "viewBox=\"0 0 "));
  EXPECT_TRUE(contains(svg, "&lt;b&gt;&amp;&quot;x&quot;"));
  EXPECT_FALSE(contains(svg, "<b>"));
  for (const char* c : {">7<", ">5<", ">9<", ">3<"}) EXPECT_TRUE(contains(svg, c)) << c;
  EXPECT_TRUE(contains(svg, ">cat</text>"));
  EXPECT_TRUE(contains(svg, "rotate(-45)"));  // x labels are rotated
  // Colour follows the row share: 9 of 9 is the darkest, 5 of 10 is not.
  EXPECT_TRUE(contains(svg, "fill=\"#08306b\""));
  // Unnamed classes are numbered.
  EXPECT_EQ(xml_error(svg_confusion_matrix({{1, 0}, {0, 0}}, {})), "");
}

TEST(ReportConfusion, ArbitraryBytesInNamesStayWellFormed) {
  const std::string svg =
      svg_confusion_matrix({{1, 2}, {3, 4}}, {"bad\xff\xfe name\x01", "\xe7\x8c\xab \xce\xb1"});
  EXPECT_EQ(xml_error(svg), "");
  EXPECT_TRUE(contains(svg, "\xe7\x8c\xab \xce\xb1"));  // valid UTF-8 is kept as is
}

TEST(ReportConfusion, FiftyClassesShrinkAndStayLegible) {
  const size_t k = 50;
  std::vector<std::vector<int64_t>> m(k, std::vector<int64_t>(k, 1));
  std::vector<std::string> names;
  for (size_t i = 0; i < k; ++i) {
    m[i][i] = 100;
    names.push_back("class_" + std::to_string(i));
  }
  const std::string svg = svg_confusion_matrix(m, names);
  ASSERT_EQ(xml_error(svg), "");
  std::istringstream view(attribute_near(svg, "<svg", "viewBox"));
  double x0, y0, w, h;
  view >> x0 >> y0 >> w >> h;
  EXPECT_LE(w, 1000);
  EXPECT_LE(h, 1000);
  EXPECT_GE(std::stod(attribute_near(svg, "class=\"labels\"", "font-size")), 8.0);
  for (const auto& name : names) EXPECT_EQ(count(svg, ">" + name + "</text>"), 2u) << name;

  // 200 classes: labels are thinned rather than overlapped; counts move to tooltips.
  const size_t big = 200;
  std::vector<std::vector<int64_t>> mb(big, std::vector<int64_t>(big, 0));
  for (size_t i = 0; i < big; ++i) mb[i][i] = 1000;
  const std::string many = svg_confusion_matrix(mb, {});
  ASSERT_EQ(xml_error(many), "");
  EXPECT_GE(std::stod(attribute_near(many, "class=\"labels\"", "font-size")), 8.0);
  EXPECT_FALSE(contains(many, ">1000</text>"));
  EXPECT_TRUE(contains(many, ": 1000 (100.0%)</title>"));
  const size_t labels = count(many, "</text>");
  EXPECT_LT(labels, 2 * big);
  EXPECT_GT(labels, 2 * big / 4);
}

TEST(ReportConfusion, RejectsBadShapes) {
  EXPECT_TRUE(throws_with([] { svg_confusion_matrix({}, {}); }, "empty"));
  EXPECT_TRUE(throws_with([] { svg_confusion_matrix({{1, 2}, {3}}, {}); }, "square"));
  EXPECT_TRUE(throws_with([] { svg_confusion_matrix({{1, 2}, {3, 4}}, {"a"}); }, "one name"));
}

// ---------------------------------------------------------------------------------------------

class ReportWrite : public ::testing::Test {
 protected:
  void SetUp() override {
    static int counter = 0;
    dir_ = fs::temp_directory_path() /
           ("vitrine_report_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::set<std::string> files() const {
    std::set<std::string> out;
    for (const auto& e : fs::directory_iterator(dir_)) out.insert(e.path().filename().string());
    return out;
  }

  fs::path dir_;
};

EpochRecord epoch(int64_t e, double loss, double top1, bool val, bool best = false) {
  EpochRecord r;
  r.epoch = e;
  r.lr = 0.01 / static_cast<double>(e);
  r.train_loss = loss;
  r.train_top1 = top1;
  r.has_val = val;
  r.val_loss = loss * 1.1;
  r.val_top1 = top1 - 0.05;
  r.val_top5 = std::min(1.0, top1 + 0.1);
  r.val_macro_f1 = top1 - 0.07;
  r.best = best;
  r.seconds = 12.5;
  r.img_per_s = 800;
  return r;
}

ClassificationMetrics three_class_metrics() {
  ClassificationMetrics m;
  m.count = 30;
  m.top1 = 0.7;
  m.top5 = 1.0;
  m.macro_f1 = 0.68;
  m.ece = 0.04;
  m.loss = 0.81;
  m.confusion = {{8, 2, 0}, {1, 6, 3}, {2, 1, 7}};
  m.per_class = {{0.727, 0.8, 0.762, 10}, {0.667, 0.6, 0.632, 10}, {0.7, 0.7, 0.7, 10}};
  return m;
}

TEST_F(ReportWrite, MultiLabelRunsShowValidationMapAndF1) {
  ReportInput in;
  in.title = "multi";
  in.multi_label = true;
  in.classes = {"red", "blue"};
  EpochRecord r = epoch(1, 0.5, 0.9, true);
  r.val_map = 0.8125;
  r.val_micro_f1 = 0.75;
  in.history = {r};
  write_report(dir_.string(), in);
  const std::string html = read_file(dir_ / "report.html");
  EXPECT_TRUE(contains(html, "<th>val mAP</th>"));
  EXPECT_TRUE(contains(html, "0.8125"));
  EXPECT_FALSE(contains(html, "val top-1"));
  EXPECT_FALSE(contains(html, "val loss"));
  EXPECT_TRUE(contains(read_file(dir_ / "accuracy.svg"), "data-series=\"val mAP\""));
  EXPECT_FALSE(contains(html, "id=\"test\""));
  // With test metrics: a section of its own, per label.
  MultiLabelMetrics test;
  test.count = 40;
  test.mean_ap = 0.6875;
  test.micro_f1 = 0.625;
  test.macro_f1 = 0.5625;
  test.ap = {0.6875, 0};
  test.f1 = {0.5625, 0};
  test.positives = {12, 0};
  test.thresholds = {0.375f, 0.5f};
  in.test_multi_label = &test;
  write_report(dir_.string(), in);
  const std::string with_test = read_file(dir_ / "report.html");
  EXPECT_TRUE(contains(with_test, "id=\"test\""));
  EXPECT_TRUE(contains(with_test, "68.75%"));
  EXPECT_TRUE(contains(with_test, "0.6250"));
  EXPECT_TRUE(contains(with_test, "Per label"));
  EXPECT_TRUE(contains(with_test, "<td>0.375</td><td>12</td>"));
  EXPECT_FALSE(contains(with_test, "top-1 accuracy"));
}

TEST_F(ReportWrite, AClassWithoutTestPhotosHasNoRecallOrF1) {
  ClassificationMetrics test = three_class_metrics();
  test.per_class[2] = {0.0, 0.0, 0.0, 0};  // boot: predicted twice, never a test photo
  ReportInput in;
  in.title = "rare";
  in.history = {epoch(1, 1.2, 0.55, true)};
  in.classes = {"shirt", "bag", "boot"};
  in.test = &test;
  write_report(dir_.string(), in);
  const std::string html = read_file(dir_ / "report.html");
  EXPECT_TRUE(contains(html, "<td>0.0000</td><td>n/a</td><td class=\"bar\" style=\"--v: 0.0%\">"
                             "n/a</td><td>0</td>"))
      << html;
  EXPECT_TRUE(contains(html, "macro-F1 averages over the other classes"));
  test.per_class[2].support = 10;  // every class tested: no note
  write_report(dir_.string(), in);
  EXPECT_FALSE(contains(read_file(dir_ / "report.html"), "n/a"));
}

TEST_F(ReportWrite, WritesEveryFileAtomically) {
  const ClassificationMetrics test = three_class_metrics();
  ReportInput in;
  in.title = "resnet18 on <fashion> & co";
  in.facts = {{"command", "vitrine train --arch resnet18"}, {"best epoch", "2"}};
  in.history = {epoch(1, 1.2, 0.55, true), epoch(2, 0.8, 0.71, true, true),
                epoch(3, 0.7, 0.74, true)};
  in.classes = {"shirt", "<b>&\"x\"", "boot"};
  in.test = &test;
  in.samples = {{kPng, "shirt", "shirt", 0.93}, {kPng, "boot", "<b>&\"x\"", 0.51}};
  write_report(dir_.string(), in);

  // Exactly these files: no temporary file is left behind.
  EXPECT_EQ(files(), (std::set<std::string>{"report.html", "loss.svg", "accuracy.svg",
                                            "confusion.svg"}));
  for (const char* name : {"loss.svg", "accuracy.svg", "confusion.svg"}) {
    EXPECT_EQ(xml_error(read_file(dir_ / name)), "") << name;
  }
  EXPECT_TRUE(contains(read_file(dir_ / "confusion.svg"), "&lt;b&gt;&amp;&quot;x&quot;"));
  EXPECT_TRUE(contains(read_file(dir_ / "accuracy.svg"), "data-series=\"val top-1\""));
  // Three classes: top-5 would always be 100%, so it is not shown.
  EXPECT_FALSE(contains(read_file(dir_ / "accuracy.svg"), "val top-5"));
  EXPECT_FALSE(contains(read_file(dir_ / "report.html"), "top-5"));

  const std::string html = read_file(dir_ / "report.html");
  EXPECT_EQ(html.rfind("<!DOCTYPE html>", 0), 0u);
  EXPECT_TRUE(contains(html, "<meta charset=\"utf-8\">"));
  for (const char* id : {"summary", "training", "test", "per-class", "confusion", "samples"}) {
    EXPECT_TRUE(contains(html, std::string("id=\"") + id + "\"")) << id;
  }
  EXPECT_TRUE(contains(html, "<h1>resnet18 on &lt;fashion&gt; &amp; co</h1>"));
  EXPECT_TRUE(contains(html, "vitrine train --arch resnet18"));
  // Inline charts and matrix, each well-formed on its own.
  const auto svgs = svg_blocks(html);
  EXPECT_EQ(svgs.size(), 3u);
  for (const auto& svg : svgs) EXPECT_EQ(xml_error(svg), "");
  // One per-class row per class, names escaped, numbers present.
  EXPECT_EQ(count(html, "<tr><td class=\"name\""), 3u);
  EXPECT_TRUE(contains(html, ">shirt</td><td>0.7270</td><td>0.8000</td>"));
  EXPECT_TRUE(contains(html, ">&lt;b&gt;&amp;&quot;x&quot;</td><td>0.6670</td>"));
  EXPECT_TRUE(contains(html, ">boot</td>"));
  EXPECT_FALSE(contains(html, "<b>&"));
  EXPECT_TRUE(contains(html, "70.00%"));  // test top-1
  // History table: one row per epoch, the best one marked.
  EXPECT_EQ(count(html, "<tr class=\"best\""), 1u);
  // Samples: images inline as data: URIs.
  EXPECT_EQ(count(html, std::string("src=\"data:image/png;base64,") + kPng + "\""), 2u);
  EXPECT_EQ(count(html, "<figure class=\"bad\""), 1u);

  // Writing again replaces the files in place.
  in.title = "second run";
  write_report(dir_.string(), in);
  EXPECT_TRUE(contains(read_file(dir_ / "report.html"), "<h1>second run</h1>"));
  EXPECT_EQ(files().size(), 4u);
}

TEST_F(ReportWrite, OneEpochWithoutValidationOrTestMetrics) {
  ReportInput in;
  in.title = "one epoch";
  in.history = {epoch(1, 2.3, 0.1, false)};
  write_report(dir_.string(), in);
  EXPECT_EQ(files(), (std::set<std::string>{"report.html", "loss.svg", "accuracy.svg"}));
  const std::string loss = read_file(dir_ / "loss.svg");
  EXPECT_EQ(xml_error(loss), "");
  EXPECT_EQ(polyline_points(loss, "train").size(), 1u);
  EXPECT_FALSE(contains(loss, "data-series=\"validation\""));
  const std::string html = read_file(dir_ / "report.html");
  EXPECT_TRUE(contains(html, "id=\"training\""));
  EXPECT_FALSE(contains(html, "id=\"test\""));
  EXPECT_FALSE(contains(html, "id=\"samples\""));
  for (const auto& svg : svg_blocks(html)) EXPECT_EQ(xml_error(svg), "");

  // Nothing recorded at all still gives a page that says so.
  write_report(dir_.string(), ReportInput{});
  EXPECT_TRUE(contains(read_file(dir_ / "report.html"), "No epochs recorded"));
  EXPECT_EQ(xml_error(read_file(dir_ / "loss.svg")), "");
}

TEST_F(ReportWrite, MissingDirectoryIsAClearError) {
  const std::string missing = (dir_ / "no" / "such").string();
  EXPECT_TRUE(throws_with([&] { write_report(missing, ReportInput{}); }, "does not exist"));
  EXPECT_FALSE(fs::exists(missing));
}

TEST_F(ReportWrite, BadInputWritesNothing) {
  ReportInput in;
  in.samples = {{"not base64!", "a", "b", 0.5}};
  EXPECT_TRUE(throws_with([&] { write_report(dir_.string(), in); }, "base64"));
  in.samples = {{"R0lGODlhAQABAAAAACw=", "a", "b", 0.5}};  // a GIF
  EXPECT_TRUE(throws_with([&] { write_report(dir_.string(), in); }, "not a PNG"));
  const ClassificationMetrics test = three_class_metrics();
  ReportInput mismatch;
  mismatch.classes = {"a", "b"};
  mismatch.test = &test;
  EXPECT_TRUE(throws_with([&] { write_report(dir_.string(), mismatch); }, "class names"));
  EXPECT_TRUE(files().empty());
}

}  // namespace
