// The conformance kit behind `mftk plugin check`: for every component a
// plugin registers, the checks its kind implies (what the SDK interfaces
// promise in their comments, tested on tiny inputs in a scratch folder).
// A third party runs it on its .so to test a plugin against the contract
// the core relies on (sdk/docs/writing-a-plugin.md).
//
// defines: mftk::core::CheckOutcome, mftk::core::CheckResult, mftk::core::CheckSink,
//          mftk::core::check_component
#pragma once

#include <functional>
#include <string>

namespace mftk::core {

class Registry;
struct ComponentInfo;

enum class CheckOutcome { pass, fail, skip };

struct CheckResult {
  std::string component;  // "model:mistral"
  std::string check;      // "causal"
  CheckOutcome outcome = CheckOutcome::pass;
  std::string detail;     // why it failed or was skipped; empty on a pass
};

using CheckSink = std::function<void(const CheckResult&)>;

// Runs every check of `component`'s kind, reporting each result to `sink`
// as it finishes. `scratch_dir` is an existing folder private to this run;
// the checks write only below it. A check that throws is a failure with the
// exception's message; nothing a plugin does escapes this function except a
// crash. Adapters, quantizers and exporters run against the default model
// plugin (core/recipe/defaults.h), found through `registry`.
void check_component(Registry& registry, const ComponentInfo& component, const std::string& scratch_dir,
                     const CheckSink& sink);

}  // namespace mftk::core
