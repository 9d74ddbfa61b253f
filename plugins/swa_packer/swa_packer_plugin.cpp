// libmftk-swa_packer: registers the "swa_packer" packer component.
#include <memory>

#include "mftk/packer.h"
#include "mftk/plugin.h"
#include "swa_packer.h"

namespace {

void register_components(mftk::Registrar& registrar) {
  registrar.add_packer(
      {mftk::Kind::packer,
       "swa_packer",
       "packs several examples per row (first-fit decreasing); documents stay separate through doc_ids",
       {
           mftk::KeySpec::string("strategy", std::string("ffd"), "bin-packing algorithm: first-fit decreasing")
               .one_of({"ffd"}),
       },
       // Rows longer than the model's window stay correct: doc_ids keep
       // documents apart and the model's attention applies the window.
       {mftk::kTraitRespectsSlidingWindow}},
      [](const mftk::Config&) { return std::make_unique<mftk::swa_packer::SwaPacker>(); });
}

}  // namespace

MFTK_PLUGIN("swa_packer", "0.1.0", register_components)
