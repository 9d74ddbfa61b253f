// `mftk run`: the whole flow, top to bottom, one named call per stage.
//
// defines: mftk::core::run_pipeline
#pragma once

namespace mftk::core {

class Recipe;
class Registry;

// Runs a resolved recipe: load model -> quantize -> adapter -> data -> pack
// -> train -> save -> merge -> export -> validate prompts.
void run_pipeline(const Recipe& recipe, Registry& registry);

}  // namespace mftk::core
