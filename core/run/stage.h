// What mftk is doing, for the message of an error that does not say so
// itself: a libtorch c10::Error ("addmm_impl_cpu_" not implemented for
// 'Half') names an operator, never the command, file or step behind it.
//
// defines: mftk::core::Stage, mftk::core::failed_stages, mftk::core::without_backtrace
//
// A Stage is a scoped description ("loading the model from ckpt/",
// "training"). Stages nest. When an exception unwinds through one, its text
// is recorded, so the CLI, catching the exception after every Stage is gone,
// can still print "error: while training: <what libtorch said>". Costs one
// string per stage; no effect on the happy path beyond that.
#pragma once

#include <string>

namespace mftk::core {

class Stage {
 public:
  explicit Stage(std::string what);
  ~Stage();
  Stage(const Stage&) = delete;
  Stage& operator=(const Stage&) = delete;

 private:
  std::string what_;
  int exceptions_in_flight_;  // at construction: more at destruction means unwinding
};

// The stages the last escaping exception unwound through, outermost first,
// joined by ", " ("running mftk run, training"); empty if none. A Stage made
// while no exception is in flight clears it: a failure handled earlier is
// not this one's context.
std::string failed_stages();

// `text` without the C++ backtrace libtorch appends to a c10::Error's what()
// (an "Exception raised from ..." line and "frame #N: ..." lines), which a
// message quoting such an error (`fmt::format("...: {}", e.what())`) carries
// along. The CLI shows these lines only with --verbose.
std::string without_backtrace(const std::string& text);

}  // namespace mftk::core
