#!/usr/bin/env bash
# Installs the readers no one here wrote that the GGUF checks compare mftk
# with, pinned, into BUILD_DIR/gguf-interop (once; ~90 MB from the npm
# registry):
#   - node-llama-cpp and its CPU prebuilt for this platform (llama.cpp's own
#     libraries, among them libggml-base.so with ggml's encoders and decoders);
#   - @huggingface/gguf, a second, independent GGUF reader.
# and links BUILD_DIR/gguf-interop/libggml-base.so to the prebuilt's copy.
#
#   bash scripts/gguf-interop-setup.sh [BUILD_DIR]     (default: build)
#
# ctest runs it as the fixture `gguf_interop` that `gguf_llamacpp` and
# `ggml_quant_oracle` require, so one install serves both. Nothing here is
# optional: a missing node/npm or a failed install is a failure (exit 1)
# with the reason, never a skip; scripts/install-deps.sh installs node and
# npm.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
interop="$build/gguf-interop"
node_llama_cpp_version=3.21.1
hf_gguf_version=0.4.6

fail() {
  echo "gguf-interop-setup: FAIL: $*" >&2
  exit 1
}
command -v node >/dev/null || fail "node not found; run scripts/install-deps.sh (Debian: nodejs npm)"
command -v npm >/dev/null || fail "npm not found; run scripts/install-deps.sh (Debian: nodejs npm)"
# Both packages declare "engines": {"node": ">=20"}.
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 20 ] || fail "node $(node --version) is too old: node-llama-cpp $node_llama_cpp_version and" \
  "@huggingface/gguf $hf_gguf_version need node >= 20 (Debian 12 ships 18; use NodeSource's nodejs 20 or Debian 13's)"

mkdir -p "$interop"
installed() { node -p "try { require('$interop/node_modules/$1/package.json').version } catch { '' }"; }
platform=$(node -p "process.platform + '-' + process.arch")
if [ "$(installed node-llama-cpp)" != "$node_llama_cpp_version" ] ||
   [ "$(installed "@node-llama-cpp/$platform")" != "$node_llama_cpp_version" ] ||
   [ "$(installed @huggingface/gguf)" != "$hf_gguf_version" ]; then
  # The CPU prebuilt for this platform only: --omit=optional skips the CUDA
  # and Vulkan builds (hundreds of MB) and the other platforms.
  [ -f "$interop/package.json" ] || echo '{"name": "mftk-gguf-interop", "private": true, "type": "module"}' > "$interop/package.json"
  echo "gguf-interop-setup: npm install node-llama-cpp@$node_llama_cpp_version @huggingface/gguf@$hf_gguf_version into $interop"
  if ! (cd "$interop" && NODE_LLAMA_CPP_SKIP_DOWNLOAD=true npm install --no-audit --no-fund --omit=optional -E \
          "node-llama-cpp@$node_llama_cpp_version" "@node-llama-cpp/$platform@$node_llama_cpp_version" \
          "@huggingface/gguf@$hf_gguf_version" >npm.log 2>&1); then
    tail -20 "$interop/npm.log" >&2
    fail "npm install failed (log: $interop/npm.log); the npm registry must be reachable the first time"
  fi
fi
ggml_base="$interop/node_modules/@node-llama-cpp/$platform/bins/$platform/libggml-base.so"
[ -f "$ggml_base" ] || fail "$ggml_base is missing: the node-llama-cpp prebuilt for $platform has no libggml-base.so"
ln -sfn "$ggml_base" "$interop/libggml-base.so"
echo "gguf-interop-setup: node $(node --version), node-llama-cpp $node_llama_cpp_version ($platform)," \
     "@huggingface/gguf $hf_gguf_version ready in $interop"
