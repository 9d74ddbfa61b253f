#!/usr/bin/env bash
# The function-calling task end to end: build, make the data and a tiny
# random base whose tokenizer has Mistral v0.3's tool control pieces, train,
# and print exact match of the greedy tool call on held-out questions before
# and after (a few minutes on 2 CPU cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
[ -f data/tool_use/train.jsonl ] || python3 scripts/make_tool_use_data.py
if [ ! -f out/tool_use/base/config.json ]; then
  build/bin/mftk init --preset tiny --tool-tokens --corpus data/tool_use/corpus.txt --seed 1 --out out/tool_use/base
fi
build/bin/mftk run configs/tool_use.toml "$@"
echo
echo "try it: build/bin/mftk generate --model out/tool_use/base --adapter out/tool_use/run/adapter --chat \\"
echo "          --tools data/tool_use/tools.json --prompt 'What is 12 times 31?'"
echo "summary: out/tool_use/run/summary.json"
