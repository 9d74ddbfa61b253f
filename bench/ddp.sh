#!/usr/bin/env bash
# Data-parallel throughput: the same LoRA run (tiny preset, same global batch,
# same steps) as 1 rank x T threads and as `mftk launch --nproc 2` with T/2
# threads per rank. Tokens/s are summary.json's (every rank's tokens over the
# training loop's wall time, start-up excluded). "peer" is the 1-rank run, so
# ratio > 1 means data parallelism paid off here.
#
#   bench/ddp.sh [--json FILE] [--threads T] [--steps N] [--mftk BIN]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
json=""
threads=2
steps=24
mftk=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --json) json="${2:?}"; shift 2 ;;
    --threads) threads="${2:?}"; shift 2 ;;
    --steps) steps="${2:?}"; shift 2 ;;
    --mftk) mftk="${2:?}"; shift 2 ;;
    -h|--help) sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench/ddp.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
if [[ -z "$mftk" ]]; then
  for dir in "$root/build-bench" "$root/build"; do
    if [[ -x "$dir/bin/mftk" ]]; then mftk="$dir/bin/mftk"; break; fi
  done
fi
[[ -x "$mftk" ]] || { echo "bench/ddp.sh: no mftk binary (build the mftk target, or pass --mftk)" >&2; exit 2; }
(( threads >= 2 )) || { echo "bench/ddp.sh: --threads must be at least 2 (2 ranks share them)" >&2; exit 2; }

cache="${MFTK_BENCH_DIR:-$here/.cache}/ddp"
mkdir -p "$cache"
base="$cache/base-tiny-l2"
[[ -f "$base/model.safetensors" ]] || "$mftk" init --preset tiny --layers 2 --seed 1 --out "$base" > "$cache/init.log" 2>&1
# 512 instruction rows of mixed length: the data need only be the same for both runs.
data="$cache/train.jsonl"
if [[ ! -s "$data" ]]; then
  for i in $(seq 1 512); do
    words=$(( 8 + (i * 37) % 90 ))
    printf '{"instruction": "Repeat the number %d %s times.", "output": "%s"}\n' "$i" "$words" \
      "$(printf "$i %.0s" $(seq 1 "$words"))"
  done > "$data"
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cat > "$work/recipe.toml" <<EOF
[model]
plugin = "mistral"
path = "$base"

[adapter]
plugin = "lora"
r = 8
alpha = 16
dropout = 0.0

[[datasets]]
path = "$data"
type = "instruction"

[data]
dataset_prepared_path = "$cache/prepared"

[packer]
plugin = "swa_packer"

[training]
sequence_len = 512
micro_batch_size = 1
gradient_accumulation_steps = 4
max_steps = $steps
logging_steps = 1000
output_dir = "$work/one"
seed = 1
EOF

half=$(( threads / 2 ))
echo "ddp: 1 rank x $threads threads vs 2 ranks x $half thread(s), global batch 4 x 512 tokens, $steps steps"
MFTK_THREADS=$threads "$mftk" run "$work/recipe.toml" > "$work/one.log" 2>&1 \
  || { cat "$work/one.log" >&2; exit 1; }
# Also 1 rank with one rank's share of the threads: on a loaded machine more
# threads than free cores can be much slower than fewer (OpenMP spin-waits).
MFTK_THREADS=$half "$mftk" run "$work/recipe.toml" --output-dir "$work/one-half" > "$work/one-half.log" 2>&1 \
  || { cat "$work/one-half.log" >&2; exit 1; }
MFTK_THREADS=$half "$mftk" launch --nproc 2 "$work/recipe.toml" --output-dir "$work/two" \
  --set training.gradient_accumulation_steps=2 > "$work/two.log" 2>&1 \
  || { cat "$work/two.log" >&2; exit 1; }
one=$(jq .tokens_per_s "$work/one/summary.json")
two=$(jq .tokens_per_s "$work/two/summary.json")
loss1=$(jq .final_loss "$work/one/summary.json")
loss2=$(jq .final_loss "$work/two/summary.json")
one_half=$(jq .tokens_per_s "$work/one-half/summary.json")
ratio=$(jq -n "$two / $one")
# The same global batches in the same order: 2 ranks must end where 1 rank
# ends (up to reduction order), or the two runs did different work.
if jq -en --argjson a "$loss1" --argjson b "$loss2" '(($a - $b) | fabs) > 1e-3 * ($a | fabs)' > /dev/null; then
  echo "bench/ddp.sh: MISMATCH: final loss 1 rank $loss1 vs 2 ranks $loss2 (relative difference over 1e-3):" \
       "the runs did not train the same thing, so no ratio is reported" >&2
  exit 3
fi
printf '%-48s %10.0f %10.0f %7.2f   (final loss %.5f vs %.5f)\n' \
  "ddp tiny lora 2 ranks x $half vs 1 x $threads" "$two" "$one" "$ratio" "$loss2" "$loss1"
printf '%-48s %10s %10.0f %7.2f   (1 rank x %d thread(s))\n' "  same, against 1 rank x $half" "" "$one_half" \
  "$(jq -n "$two / $one_half")" "$half"

if [[ -n "$json" ]]; then
  [[ -s "$json" ]] || echo '{"rows": []}' > "$json"
  row=$(jq -n --arg w "ddp tiny lora 2 ranks x $half thr vs 1 rank x $threads thr, b4x512" \
    --argjson two "$two" --argjson one "$one" --argjson ratio "$ratio" --argjson threads "$threads" \
    --arg load "$(cut -d' ' -f1 /proc/loadavg)" --arg at "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    --argjson l1 "$loss1" --argjson l2 "$loss2" --argjson oh "$one_half" \
    '{workload: $w, unit: "tok/s", mftk: $two, peer: $one, ratio: $ratio, mftk_tokens_per_s: $two,
      peer_tokens_per_s: $one, one_rank_half_threads_tokens_per_s: $oh, final_loss_2_ranks: $l2, final_loss_1_rank: $l1, threads: $threads,
      loadavg: ($load | tonumber), measured_at: $at}')
  jq --argjson row "$row" '.rows += [$row]' "$json" > "$json.tmp" && mv "$json.tmp" "$json"
fi
