#!/usr/bin/env bash
# Installs mftk's build and run dependencies from Debian 12, idempotently:
# apt runs only when something is missing. Needs root (or sudo).
set -euo pipefail

PACKAGES=(
  g++ cmake ninja-build pkg-config
  dpkg-dev                # dpkg-shlibdeps: the .deb's Depends (cpack -G DEB; ctest deb_package)
  libtorch-dev            # libtorch 1.13 (CPU)
  libboost-dev            # Boost.DLL (header-only, used with std::filesystem)
  libsentencepiece-dev    # tokenizer; loaded into its own link namespace, see docs/architecture.md
  libtomlplusplus-dev libfmt-dev libspdlog-dev libcli11-dev nlohmann-json3-dev
  libgtest-dev
  libgloo-dev             # libtorch's c10d headers include gloo
  libopenblas0-openmp     # without it libtorch uses reference BLAS: ~100x slower fp32 matmul
  libjemalloc-dev         # retaining allocator: fresh pages cost ~12 us each on these VMs
  chromium                # headless browser: the HTML run report is rendered in a test (report_test)
  nodejs npm              # llama.cpp (npm node-llama-cpp) and ggml read our GGUF files (gguf_llamacpp, ggml_quant_oracle)
)

# node and npm: the GGUF checks' pinned npm packages (node-llama-cpp 3.21.1,
# @huggingface/gguf 0.4.6) declare node >= 20. A node already on PATH (e.g.
# NodeSource's nodejs, which bundles npm and conflicts with Debian's npm
# package) is kept; otherwise Debian's packages are installed, and if that
# node is older than 20 (Debian 12 ships 18) the end of this script says so.
node_major() { node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }
missing=()
for p in "${PACKAGES[@]}"; do
  if [ "$p" = nodejs ] && command -v node >/dev/null; then continue; fi
  if [ "$p" = npm ] && command -v npm >/dev/null; then continue; fi
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
warn_old_node() {
  if [ "$(node_major)" -lt 20 ]; then
    echo "install-deps: WARNING: node $(node --version 2>/dev/null || echo missing) is older than 20, which the GGUF" \
         "checks' npm packages need: ctest gguf_llamacpp and ggml_quant_oracle will fail until a Node.js >= 20" \
         "(e.g. NodeSource's nodejs 20, or Debian 13's) is on PATH" >&2
  fi
}
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  warn_old_node
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
echo "install-deps: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
warn_old_node
