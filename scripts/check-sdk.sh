#!/usr/bin/env bash
# The SDK as a third party meets it: install mftk, build
# examples/tensor_stats_exporter out of tree with find_package(mftk), and run
# it by name from a recipe and from `mftk export`, after `mftk plugin check`;
# then build examples/dora_adapter the same way, check it, train it with
# `mftk run` and compare its logits with DoRA's formula.
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

# The out-of-tree adapter (examples/dora_adapter, DoRA with PEFT's files), built
# the same way, checked by the kit and trained by name through the recipe's
# [plugins] search_paths (not MFTK_PLUGIN_PATH, which names the exporter only).
cmake -S examples/dora_adapter -B "$work/dora" -G Ninja -DCMAKE_PREFIX_PATH="$work/prefix" >/dev/null
cmake --build "$work/dora" >/dev/null
"$mftk" plugin check "$work/dora/libmftk-example_dora.so" | tee "$work/dora-check.txt"
grep -q "^PASS .*adapter:example.dora .*disabled equals base" "$work/dora-check.txt"
"$mftk" run examples/dora_adapter/recipe.toml --set model.path="$work/tiny" \
  --set "plugins.search_paths=[\"$work/dora\"]" --set training.output_dir="$work/dora-run" \
  --set data.dataset_prepared_path="$work/dora-prepared" --set training.max_steps=6 --set training.logging_steps=2 \
  2>&1 | tee "$work/dora-run.txt" | grep -E "example.dora|step|parity \[merge\]"
grep -q '"use_dora": true' "$work/dora-run/adapter/adapter_config.json"
# Its logits against DoRA's formula, computed independently: dora_formula_check
# writes the base with each adapted W replaced by m * V / ||V||_row, V = W + s B A
# (float64, from the saved files), and `mftk logprobs` scores the same text
# through the plugin (base + adapter), as that plain model, as the run's merged
# model, and as the base alone. Full-vocabulary log-probabilities are the logits
# less each position's log-sum-exp.
"$work/dora/dora_formula_check" "$work/tiny" "$work/dora-run/adapter" "$work/dora-formula"
text="What is the capital of Norway? Convert 45 km to m."
lp() {
  MFTK_PLUGIN_PATH="$work/dora" "$mftk" logprobs --text "$text" --top 100000 "$@" 2>"$work/lp.log" ||
    { cat "$work/lp.log" >&2; return 1; }
}
lp --model "$work/tiny" --adapter "$work/dora-run/adapter" --adapter-plugin example.dora > "$work/lp-adapter.json"
lp --model "$work/dora-formula" > "$work/lp-formula.json"
lp --model "$work/dora-run/merged" > "$work/lp-merged.json"
lp --model "$work/tiny" > "$work/lp-base.json"
python3 - "$work" <<'PY'
import json, sys
def table(name):
    d = json.load(open(f"{sys.argv[1]}/lp-{name}.json"))
    return d["tokens"], [{e["id"]: e["logprob"] for e in row} for row in d["top"]]
def max_diff(x, y):
    assert x[0] == y[0] and all(a.keys() == b.keys() for a, b in zip(x[1], y[1])), "different tokens or vocabularies"
    return max(abs(a[k] - b[k]) for a, b in zip(x[1], y[1]) for k in a)
adapter, formula, merged, base = (table(n) for n in ("adapter", "formula", "merged", "base"))
scale = max(abs(v) for row in formula[1] for v in row.values())
d, m, moved = max_diff(adapter, formula), max_diff(merged, formula), max_diff(adapter, base)
print(f"check-sdk: example.dora vs DoRA's formula: max |logprob diff| {d:.3g} (relative {d / scale:.3g}) over "
      f"{len(formula[1])} positions x {len(formula[1][0])} tokens; its merge {m:.3g}; the adapter moved them {moved:.3g}")
assert d <= 1e-5 * scale and m <= 1e-5 * scale, "the adapter's log-probabilities are not DoRA's"
assert moved > 1e3 * 1e-5 * scale, "the trained adapter barely changed the model: the comparison would prove nothing"
PY
echo "check-sdk: the out-of-tree plugins built, loaded by name and ran"
