#!/usr/bin/env bash
# Configures and builds mftk into build/ (Release, Ninja, all cores).
# Usage: build.sh [--runtime-only] [CMAKE_ARGS...]
#   --runtime-only  build only what `mftk run` needs (the mftk_runtime target:
#                   the CLI, libmftk_spm.so and every plugin), not the test
#                   suite or the benchmarks. The quickstart uses it; the tests
#                   (scripts/test.sh) build everything.
set -euo pipefail
cd "$(dirname "$0")/.."
targets=()
if [ "${1:-}" = --runtime-only ]; then
  targets=(--target mftk_runtime)
  shift
fi
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build build -j"$(nproc)" "${targets[@]}"
