#!/usr/bin/env bash
# Installs dependencies, builds, and runs every test: the GoogleTest suite
# and the end-to-end checks, all through ctest (the SDK check installs mftk
# to a temporary prefix, builds examples/ out of tree and runs it by name).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh
ctest --test-dir build --output-on-failure -j"$(nproc)"
