// The sentencepiece shim (libmftk_spm.so), loaded once per process into its
// own link namespace. Private to the core.
//
// defines: mftk::core::SpmShim, mftk::core::spm_shim, mftk::core::spm_shim_path
//
// libsentencepiece bundles protobuf 3.14 and libtorch links protobuf 3.21;
// in one namespace they crash at static init. dlmopen(LM_ID_NEWLM) gives the
// shim its own copies of libsentencepiece, libstdc++ and libc, so only the C
// types of spm_shim/spm_shim.h cross. The namespace is never closed (glibc has
// only 16 of them, and unloading a libc copy is not safe).
#pragma once

#include <string>

#include "spm_shim/spm_shim.h"

namespace mftk::core {

// The shim's entry points, resolved by name.
struct SpmShim {
  std::string path;  // the file that was loaded
  MftkSpmLoadFn load = nullptr;
  MftkSpmFreeFn free = nullptr;
  MftkSpmIntQueryFn vocab_size = nullptr;
  MftkSpmIntQueryFn bos_id = nullptr;
  MftkSpmIntQueryFn eos_id = nullptr;
  MftkSpmIntQueryFn unk_id = nullptr;
  MftkSpmIntQueryFn pad_id = nullptr;
  MftkSpmEncodeFn encode = nullptr;
  MftkSpmDecodeFn decode = nullptr;
  MftkSpmIdToPieceFn id_to_piece = nullptr;
  MftkSpmScoreFn score = nullptr;
  MftkSpmPieceTypeFn piece_type = nullptr;
  MftkSpmPieceToIdFn piece_to_id = nullptr;
  MftkSpmTrainArgsFn train_args = nullptr;
  MftkSpmTrainToFileFn train_to_file = nullptr;
};

// Where the shim is looked for: $MFTK_SPM_SHIM if set, else libmftk_spm.so
// next to libmftk_core.so.
std::string spm_shim_path();

// Loads the shim on first use (thread-safe) and returns it; throws
// mftk::Error saying where it looked if it cannot be loaded. A failure is
// remembered: later calls throw the same error without retrying.
const SpmShim& spm_shim();

// Size of the error buffers passed to the shim.
inline constexpr size_t kSpmErrorCapacity = 1024;

}  // namespace mftk::core
