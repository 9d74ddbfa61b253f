#!/usr/bin/env bash
# The SDK as a third party meets it: install mftk, build
# examples/tensor_stats_exporter out of tree with find_package(mftk), and run
# it by name from a recipe and from `mftk export`, after `mftk plugin check`.
set -euo pipefail
# Usage: check-sdk.sh [BUILD_DIR]   (run by ctest as the test sdk_out_of_tree)
cd "$(dirname "$0")/.."
build=${1:-build}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cmake --install "$build" --prefix "$work/prefix" >/dev/null
cmake -S examples/tensor_stats_exporter -B "$work/example" -G Ninja -DCMAKE_PREFIX_PATH="$work/prefix" >/dev/null
cmake --build "$work/example" >/dev/null
mftk="$work/prefix/bin/mftk"
export MFTK_PLUGIN_PATH="$work/example"
"$mftk" plugins | tee "$work/plugins.txt"
grep -q "acme_tensor_stats .* ok .*exporter:acme.tensor_stats" "$work/plugins.txt"
# The conformance kit, as a third party runs it on its plugin (exit 1 on any failed check).
"$mftk" plugin check "$work/example/libmftk-acme_tensor_stats.so" | tee "$work/check.txt"
grep -q "^PASS .*exporter:acme.tensor_stats .*refuses foreign path" "$work/check.txt"
"$mftk" init --preset tiny --layers 1 --seed 1 --out "$work/tiny" >/dev/null
"$mftk" validate examples/tensor_stats_exporter/recipe.toml --set model.path="$work/tiny"
"$mftk" export --plugin acme.tensor_stats --model "$work/tiny" --out "$work/stats.json" --set match=layers.0.
grep -q '"model.layers.0.self_attn.q_proj.weight": {"dtype": "' "$work/stats.json"
python3 -c 'import json, sys; json.load(open(sys.argv[1]))' "$work/stats.json"
# Through mftk::OutputGuard: its own file is replaced, a user's file is refused (exit 2) and kept.
"$mftk" export --plugin acme.tensor_stats --model "$work/tiny" --out "$work/stats.json" --set match=layers.0.mlp
echo "my notes" > "$work/notes.json"
rc=0; "$mftk" export --plugin acme.tensor_stats --model "$work/tiny" --out "$work/notes.json" 2>/dev/null || rc=$?
[[ $rc == 2 && "$(cat "$work/notes.json")" == "my notes" ]] || { echo "check-sdk: a user's file was not refused (exit $rc)"; exit 1; }
echo "check-sdk: the out-of-tree plugin built, loaded by name and ran"
