#!/usr/bin/env bash
# Installs mftk's build and run dependencies from Debian 12, idempotently:
# apt runs only when something is missing. Needs root (or sudo).
set -euo pipefail

PACKAGES=(
  g++ cmake ninja-build pkg-config
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

# A node from elsewhere (e.g. NodeSource's nodejs, which bundles npm and
# conflicts with Debian's npm package) is kept when it is recent enough.
node_ok() { command -v node >/dev/null && command -v npm >/dev/null && [ "$(node -p 'process.versions.node.split(".")[0]')" -ge 18 ]; }
missing=()
for p in "${PACKAGES[@]}"; do
  if [ "$p" = nodejs ] || [ "$p" = npm ]; then
    node_ok && continue
  fi
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
echo "install-deps: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
