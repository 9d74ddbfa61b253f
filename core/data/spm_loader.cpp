// Loads libmftk_spm.so with dlmopen; see spm_loader.h for why.
#include "spm_loader.h"

#include <dlfcn.h>

#include <cstdlib>
#include <filesystem>
#include <stdexcept>

#include "mftk/error.h"

namespace mftk::core {

namespace fs = std::filesystem;

namespace {

std::string core_library_dir() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<const void*>(&spm_shim_path), &info) == 0 || info.dli_fname == nullptr)
    return {};
  return fs::absolute(fs::path(info.dli_fname)).parent_path().string();
}

template <typename Fn>
void resolve(void* handle, const std::string& path, const char* name, Fn& out) {
  void* symbol = dlsym(handle, name);
  if (symbol == nullptr) {
    throw Error(fmt::format("'{}' has no symbol {}: it is not a matching libmftk_spm.so", path, name),
                "rebuild the mftk_spm target together with mftk_core");
  }
  out = reinterpret_cast<Fn>(symbol);
}

SpmShim load_shim() {
  SpmShim shim;
  shim.path = spm_shim_path();
  const char* from_env = std::getenv("MFTK_SPM_SHIM");
  std::string where = from_env != nullptr && *from_env != '\0'
                          ? "(from $MFTK_SPM_SHIM)"
                          : "(next to libmftk_core.so; set $MFTK_SPM_SHIM to use another file)";
  if (!fs::exists(shim.path)) {
    throw Error(fmt::format("the sentencepiece shim is missing: looked for '{}' {}", shim.path, where),
                "build the mftk_spm target (cmake --build <build> --target mftk_spm) or install mftk");
  }
  // Own link namespace: keeps sentencepiece's protobuf 3.14 away from torch's 3.21.
  void* handle = dlmopen(LM_ID_NEWLM, shim.path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* reason = dlerror();
    throw Error(fmt::format("cannot load the sentencepiece shim '{}' {}: {}", shim.path, where,
                            reason != nullptr ? reason : "unknown dlmopen error"),
                "check that libsentencepiece0 is installed (ldd the shim to see what is missing)");
  }
  MftkSpmAbiVersionFn abi_version = nullptr;
  resolve(handle, shim.path, "mftk_spm_abi_version", abi_version);
  if (abi_version() != MFTK_SPM_ABI_VERSION) {
    throw Error(fmt::format("sentencepiece shim '{}' has ABI version {}, this mftk expects {}", shim.path,
                            abi_version(), MFTK_SPM_ABI_VERSION),
                "rebuild the mftk_spm target together with mftk_core");
  }
  resolve(handle, shim.path, "mftk_spm_load", shim.load);
  resolve(handle, shim.path, "mftk_spm_free", shim.free);
  resolve(handle, shim.path, "mftk_spm_vocab_size", shim.vocab_size);
  resolve(handle, shim.path, "mftk_spm_bos_id", shim.bos_id);
  resolve(handle, shim.path, "mftk_spm_eos_id", shim.eos_id);
  resolve(handle, shim.path, "mftk_spm_unk_id", shim.unk_id);
  resolve(handle, shim.path, "mftk_spm_pad_id", shim.pad_id);
  resolve(handle, shim.path, "mftk_spm_encode", shim.encode);
  resolve(handle, shim.path, "mftk_spm_decode", shim.decode);
  resolve(handle, shim.path, "mftk_spm_id_to_piece", shim.id_to_piece);
  resolve(handle, shim.path, "mftk_spm_score", shim.score);
  resolve(handle, shim.path, "mftk_spm_piece_type", shim.piece_type);
  resolve(handle, shim.path, "mftk_spm_piece_to_id", shim.piece_to_id);
  resolve(handle, shim.path, "mftk_spm_train_args", shim.train_args);
  resolve(handle, shim.path, "mftk_spm_train_to_file", shim.train_to_file);
  return shim;  // the handle is deliberately never dlclose'd
}

}  // namespace

std::string spm_shim_path() {
  const char* from_env = std::getenv("MFTK_SPM_SHIM");
  if (from_env != nullptr && *from_env != '\0') return from_env;
  std::string dir = core_library_dir();
  if (dir.empty()) return "libmftk_spm.so";
  return (fs::path(dir) / "libmftk_spm.so").string();
}

const SpmShim& spm_shim() {
  // A function-local static is initialized once even with concurrent callers;
  // if load_shim throws, the static stays uninitialized, so remember the error
  // to avoid a second dlmopen (each one uses up a link namespace).
  struct Loaded {
    SpmShim shim;
    std::string error, hint;
  };
  static const Loaded loaded = [] {
    Loaded result;
    try {
      result.shim = load_shim();
    } catch (const Error& e) {
      result.error = e.what();
      result.hint = e.hint();
    }
    return result;
  }();
  if (!loaded.error.empty()) throw Error(loaded.error, loaded.hint);
  return loaded.shim;
}

}  // namespace mftk::core
