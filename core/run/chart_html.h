// The parts the HTML pages mftk writes share: report.html after a run and
// compare.html from `mftk compare`. One page head (style included, nothing
// fetched), and a chart section drawn with run_log.h's SVG plotter, so both
// pages draw their curves the same way.
//
// defines: mftk::core::html_page_start, mftk::core::html_page_end, mftk::core::chart_section
#pragma once

#include <string>
#include <vector>

#include "run_log.h"

namespace mftk::core {

// <!DOCTYPE html> up to and including <body>. `generator`, when given, goes
// into <meta name="generator">: a writer that must recognise its own file
// later (compare.html) marks it there.
std::string html_page_start(const std::string& title, const std::string& generator = {});
std::string html_page_end();

// <section class="curve" id="id"><h3>title</h3> ... the chart ... </section>;
// a chart none of whose series has a point says so above the empty axes.
std::string chart_section(const std::string& id, const std::string& title, const std::vector<CurveSeries>& series);

}  // namespace mftk::core
