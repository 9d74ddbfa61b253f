#!/usr/bin/env bash
# Gathers, on this Debian 12 machine, what a GPU machine that has only a
# Python torch (CUDA) lacks to build mftk: the Debian packages of mftk's
# C++ dependencies as .deb files (apt-get download, no root needed), and
# Debian's CMake and Ninja for a machine whose own are missing or too old. scripts/device-check.sh unpacks them there
# with `dpkg -x` (no root, no apt) and builds against that torch.
#
# Not in the bundle: libtorch (the GPU machine's Python torch is the
# libtorch there), a C++ compiler (too large for the 64 MiB the device run
# tool carries; device-check.sh says so if the machine has none).
#
# usage: scripts/device-bundle.sh [OUT_DIR]     (default: device-bundle/)
# Writes OUT_DIR/debs/*.deb, OUT_DIR/tools/*.deb, OUT_DIR/tokenizer/ (Mistral's v1
# tokenizer, when ../shared has it) and OUT_DIR/MANIFEST
# (package, version, file, bytes, sha256), and prints the total size.
# Needs the network (the Debian mirror); not part of ctest.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$here/device-bundle}
limit_bytes=$((64 * 1000 * 1000))  # the device run tool carries at most 64 MiB; stay under 64 MB

# What CMakeLists.txt finds (find_package / pkg_check_modules) and the shared
# libraries the built binaries then load. Each -dev package is named with the
# runtime library it links against; libsentencepiece0 in Debian 12 carries
# its own protobuf-lite (no libprotobuf-lite32 dependency), which the check
# below confirms from the package's own Depends.
packages=(
  libsentencepiece-dev libsentencepiece0   # tokenizer (pkg-config sentencepiece)
  libtomlplusplus-dev libtomlplusplus3     # recipes (toml++; Debian builds it as a library)
  libfmt-dev libfmt9                       # fmt::fmt
  libspdlog-dev libspdlog1.10              # spdlog::spdlog (built against libfmt9)
  libcli11-dev                             # the CLI (header-only)
  nlohmann-json3-dev                       # JSON (header-only)
  libboost1.74-dev                         # Boost.DLL headers (Boost::headers; no compiled Boost library)
  libjemalloc-dev libjemalloc2             # the executables' allocator
  libgtest-dev googletest                  # GTest (googletest: the sources libgtest-dev's cmake package builds from)
  libgloo-dev                              # c10d's Gloo headers only (torch links its own Gloo; libgloo0 is not needed)
  pkgconf pkgconf-bin libpkgconf3 pkg-config  # pkg_check_modules needs a pkg-config binary
)
# Build tools, used only when the GPU machine's own are missing or too old
# (CMake >= 3.22). Their library dependencies beyond these (libcurl's TLS and
# compression libraries) are in every ordinary Linux image; device-check.sh
# runs `cmake --version` before relying on it.
tools=(cmake cmake-data libjsoncpp25 librhash0 libuv1 libarchive13 libcurl4 ninja-build)

rm -rf "$out.partial"
mkdir -p "$out.partial/debs" "$out.partial/tools"
cd "$out.partial/debs"

# apt-get download fetches exactly the named packages; check that no runtime
# dependency outside the C/C++ base (libc6, libgcc-s1, libstdc++6) is missed.
# Exempt: the C/C++ base, catch2 (spdlog's tests), and libgloo-dev's link-time
# dependencies (only its headers are used).
base_libs='^(libc6|libgcc-s1|libstdc\+\+6|libstdc\+\+-12-dev|catch2|libgloo0|libhiredis-dev|libibverbs-dev)$'
for p in "${packages[@]}"; do
  for dep in $(apt-cache depends "$p" 2>/dev/null | awk '$1 == "Depends:" {print $2}' | tr -d '<>'); do
    if ! printf '%s\n' "${packages[@]}" | grep -qx -- "$dep" && ! [[ $dep =~ $base_libs ]]; then
      echo "device-bundle: $p depends on $dep, which the bundle does not carry" >&2
      exit 1
    fi
  done
done
echo "device-bundle: downloading ${#packages[@]} Debian packages into $out/debs"
apt-get download "${packages[@]}" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true
for p in "${packages[@]}"; do
  ls "${p}"_*.deb >/dev/null 2>&1 || { echo "device-bundle: apt-get download did not fetch $p" >&2; exit 1; }
done

cd "$out.partial/tools"
echo "device-bundle: downloading ${#tools[@]} build-tool packages into $out/tools"
apt-get download "${tools[@]}" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true
for p in "${tools[@]}"; do
  ls "${p}"_*.deb >/dev/null 2>&1 || { echo "device-bundle: apt-get download did not fetch $p" >&2; exit 1; }
done

# Mistral's own tokenizer (vocab 32000), so the GPU benchmark's checkpoint has
# the real 7B shape, embeddings and head included; from the shared data folder
# the tests use, when this checkout has one.
tokenizers=$here/../shared/data/mistral-tokenizers
if [[ -f $tokenizers/tokenizer.model.v1 ]]; then
  mkdir -p "$out.partial/tokenizer"
  cp "$tokenizers/tokenizer.model.v1" "$tokenizers/LICENCE" "$out.partial/tokenizer/"
fi

cd "$out.partial"
{
  echo "# mftk device bundle: made $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(. /etc/os-release; echo "$PRETTY_NAME") by scripts/device-bundle.sh"
  echo "# folder package version file bytes sha256"
  for f in debs/*.deb tools/*.deb; do
    echo "${f%%/*} $(dpkg-deb -f "$f" Package) $(dpkg-deb -f "$f" Version) $f $(stat -c %s "$f") $(sha256sum "$f" | cut -d' ' -f1)"
  done
  for f in tokenizer/*; do
    [[ -f $f ]] && echo "tokenizer $(basename "$f") - $f $(stat -c %s "$f") $(sha256sum "$f" | cut -d' ' -f1)"
  done
} > MANIFEST

total=$(du -cb . | tail -1 | cut -f1)
if (( total >= limit_bytes )); then
  echo "device-bundle: $total bytes: over the 64 MB the device run tool carries" >&2
  exit 1
fi
rm -rf "$out"
mv "$out.partial" "$out"
printf 'device-bundle: %s: %d library .debs, %d tool .debs, %d bytes (%.1f MB, limit 64 MB)\n' "$out" \
  "$(ls "$out"/debs/*.deb | wc -l)" "$(ls "$out"/tools/*.deb | wc -l)" "$total" "$(awk "BEGIN{print $total/1e6}")"
