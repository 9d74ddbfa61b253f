// libmftk-padding: registers the "padding" packer component.
#include <memory>

#include "mftk/plugin.h"
#include "padding_packer.h"

namespace {

using mftk::KeySpec;

std::unique_ptr<mftk::Packer> make_padding_packer(const mftk::Config& config) {
  mftk::padding_packer::PaddingPackerOptions options;
  options.group_by_length = config.get_bool("group_by_length");
  options.bucket_size = config.get_int("bucket_size");
  return std::make_unique<mftk::padding_packer::PaddingPacker>(options);
}

void register_components(mftk::Registrar& registrar) {
  registrar.add_packer(
      {mftk::Kind::packer,
       "padding",
       "one example per row, padded; the baseline for swa_packer",
       {
           KeySpec::boolean("group_by_length", false,
                            "order rows so neighbours have similar lengths (less padding per micro-batch)"),
           KeySpec::integer("bucket_size", 64, "group_by_length: rows per length-sorted bucket of a seeded shuffle")
               .range(1, 1 << 30),
       }},
      make_padding_packer);
}

}  // namespace

MFTK_PLUGIN("padding", "0.1.0", register_components)
