// Shared pieces of the tests of mftk's HTML pages (report_test.cpp,
// compare_test.cpp): an element's text by id, the points of each SVG
// polyline, and headless Chromium (the DOM it builds, and a screenshot
// measured against one of a blank page).
#pragma once

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <regex>
#include <string>
#include <vector>

#include "plan_test_support.h"

namespace mftk::html_test {

namespace fs = std::filesystem;

// The text from the element with id="id" up to the first `close` after it ("" when there is none).
inline std::string element_text(const std::string& html, const std::string& id,
                                const std::string& close = "</section>") {
  const auto start = html.find("id=\"" + id + "\"");
  if (start == std::string::npos) return {};
  const auto end = html.find(close, start);
  return html.substr(start, end == std::string::npos ? std::string::npos : end - start);
}

// Point counts of the polylines in `text`, in order.
inline std::vector<size_t> polyline_points(const std::string& text) {
  static const std::regex re("<polyline[^>]*points=\"([^\"]*)\"");
  std::vector<size_t> counts;
  for (auto it = std::sregex_iterator(text.begin(), text.end(), re); it != std::sregex_iterator(); ++it) {
    const std::string pts = (*it)[1];
    counts.push_back(size_t(std::count(pts.begin(), pts.end(), ',')));
  }
  return counts;
}

// Headless Chromium from Debian (scripts/install-deps.sh installs it).
inline const char* kChromium = "/usr/bin/chromium";

inline std::string chromium(const std::string& args) {
  return std::string(kChromium) + " --headless=new --no-sandbox --disable-gpu --hide-scrollbars " + args;
}

// A screenshot of `page` (written to dir/<name>.png) and one of an empty
// page of the same size: a rendered page compresses far worse than a blank one.
struct Screenshot {
  plan_test::Command page, blank;
  bool is_png = false;
  uintmax_t page_bytes = 0, blank_bytes = 0;
};

inline Screenshot screenshot_against_blank(const fs::path& dir, const fs::path& page, const std::string& name) {
  plan_test::write_text(dir / "blank.html", "<!DOCTYPE html><html><body></body></html>");
  Screenshot s;
  s.blank = plan_test::run_in(dir, chromium("--screenshot=blank.png --window-size=1200,2000 'file://" +
                                            (dir / "blank.html").string() + "'"));
  s.page = plan_test::run_in(dir, chromium("--screenshot=" + name + ".png --window-size=1200,2000 'file://" +
                                           page.string() + "'"));
  const fs::path png = dir / (name + ".png"), blank = dir / "blank.png";
  if (fs::exists(png)) {
    s.is_png = plan_test::read_text(png).substr(1, 3) == "PNG";
    s.page_bytes = fs::file_size(png);
  }
  if (fs::exists(blank)) s.blank_bytes = fs::file_size(blank);
  return s;
}

}  // namespace mftk::html_test
