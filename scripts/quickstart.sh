#!/usr/bin/env bash
# The quickstart, end to end on a fresh Debian 12 machine: install the
# dependencies, build what it runs (the CLI and the plugins, not the test
# suite), create a tiny random base model, fine-tune it on the bundled tasks,
# and print exact match before and after (about 2 minutes of training on 2 CPU
# cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh --runtime-only
if [ ! -f out/quickstart/base/config.json ]; then
  build/bin/mftk init --preset tiny --seed 1 --out out/quickstart/base
fi
build/bin/mftk run configs/quickstart.toml "$@"
echo
echo "summary: out/quickstart/run/summary.json   loss curve: out/quickstart/run/loss_curve.svg   llama.cpp: out/quickstart/run/quickstart-q8_0.gguf"
