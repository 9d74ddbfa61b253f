// Shared HTML page parts (chart_html.h). Plain HTML and inline SVG only, so
// a page opens anywhere, offline, and can be attached to an issue as is.
#include "chart_html.h"

#include <fmt/format.h>

namespace mftk::core {

std::string html_page_start(const std::string& title, const std::string& generator) {
  std::string h = "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n";
  if (!generator.empty()) h += fmt::format("<meta name=\"generator\" content=\"{}\">\n", xml_escape(generator));
  h += fmt::format("<title>{}</title>\n", xml_escape(title));
  h += "<style>body{font-family:sans-serif;margin:24px;max-width:1100px;color:#222}"
       "table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}"
       "th{background:#f2f2f2}pre{background:#f7f7f7;padding:10px;overflow:auto;font-size:12px}"
       "section.curve{display:inline-block;margin:0 12px 12px 0;vertical-align:top}</style>\n</head><body>\n";
  return h;
}

std::string html_page_end() { return "</body></html>\n"; }

std::string chart_section(const std::string& id, const std::string& title, const std::vector<CurveSeries>& series) {
  std::string h = fmt::format("<section class=\"curve\" id=\"{}\"><h3>{}</h3>\n", xml_escape(id), xml_escape(title));
  bool any_point = false;
  for (const auto& s : series) any_point = any_point || !s.points.empty();
  if (!any_point) h += "<p>(no points logged)</p>\n";
  h += curves_svg(title, series);
  h += "</section>\n";
  return h;
}

}  // namespace mftk::core
