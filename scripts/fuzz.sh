#!/usr/bin/env bash
# Runs mftk's libFuzzer targets (fuzz/): configures and builds build-fuzz/
# with clang (ASan + UBSan + coverage), makes seed corpora from files mftk
# writes itself, runs each target for --time seconds, one after another, and
# prints executions, coverage and crashes per target.
#
#   scripts/fuzz.sh [--time SECONDS] [--jobs N] [target...]
#
# Targets: safetensors_header safetensors_index gguf recipe jsonl_chat
# peft_config config_json (default: all). Seeds need the normal build's
# mftk binary and plugins (scripts/build.sh, or MFTK_BIN=path/to/mftk).
# Corpora grow in build-fuzz/corpus/<target>/ and are kept between runs;
# crashes land in build-fuzz/crashes/<target>/. A crash found becomes a
# regression test: add the input to tests/data/fuzz/<target>/ (the
# FuzzRegressions tests replay every file there through the same parser).
# Exit status: 0 when no target crashed, 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

TIME=60
JOBS=2
TARGETS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --time) TIME=$2; shift 2 ;;
    --jobs) JOBS=$2; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
    *) TARGETS+=("$1"); shift ;;
  esac
done
ALL=(safetensors_header safetensors_index gguf recipe jsonl_chat peft_config config_json)
[[ ${#TARGETS[@]} -eq 0 ]] && TARGETS=("${ALL[@]}")
for t in "${TARGETS[@]}"; do
  [[ " ${ALL[*]} " == *" $t "* ]] || { echo "fuzz.sh: unknown target '$t' (targets: ${ALL[*]})" >&2; exit 2; }
done

B=$ROOT/build-fuzz
MFTK_BIN=${MFTK_BIN:-$ROOT/build/bin/mftk}
if [[ ! -x $MFTK_BIN ]]; then
  echo "fuzz.sh: $MFTK_BIN is not built; the seed corpora are files mftk writes (run scripts/build.sh first)" >&2
  exit 2
fi
command -v clang++ >/dev/null || { echo "fuzz.sh: clang++ is missing (apt-get install clang libclang-rt-14-dev)" >&2; exit 2; }

# --- build (only the fuzz targets and the sentencepiece shim; no torch TU of the core)
if [[ ! -f $B/build.ninja ]]; then
  cmake -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=clang \
    -DCMAKE_CXX_COMPILER=clang++ -DMFTK_BUILD_FUZZ=ON -DMFTK_BUILD_TESTS=OFF -DMFTK_BUILD_BENCH=OFF \
    -DMFTK_USE_PCH=OFF >/dev/null
fi
nice -n 10 cmake --build "$B" -j"$JOBS" --target fuzz_all

# --- seeds: what mftk itself writes
SEEDS=$B/seeds
if [[ ! -f $SEEDS/.done ]]; then
  rm -rf "$SEEDS"
  mkdir -p "$SEEDS"/{safetensors_header,safetensors_index,gguf,recipe,jsonl_chat,peft_config,config_json}
  W=$B/seed-work
  rm -rf "$W"
  mkdir -p "$W"
  echo "fuzz.sh: writing seed files with $MFTK_BIN"
  # A small checkpoint split into shards (for the index; vocab and sizes
  # kept small so whole files fit in -max_len), and one with a v1 tokenizer.
  "$MFTK_BIN" init --preset tiny --seed 2 --vocab 512 --layers 1 --hidden 32 --intermediate 64 --heads 4 \
    --kv-heads 2 --max-shard-bytes 40000 --out "$W/sharded" >/dev/null
  "$MFTK_BIN" init --preset tiny --seed 3 --vocab 512 --chat v1 --layers 1 --hidden 32 --intermediate 64 \
    --heads 4 --kv-heads 2 --out "$W/v1" >/dev/null
  "$MFTK_BIN" export --plugin gguf --model "$W/sharded" --out "$W/f32.gguf" --set type=f32 >/dev/null
  "$MFTK_BIN" export --plugin gguf --model "$W/sharded" --out "$W/q8.gguf" --set type=q8_0 >/dev/null
  # An adapter the lora plugin writes: a short run of a recipe on the tiny base.
  head -n 16 data/quickstart/train.jsonl >"$W/train.jsonl"
  cat >"$W/recipe.toml" <<EOF
[model]
plugin = "mistral"
path = "$W/sharded"
[adapter]
plugin = "lora"
r = 4
alpha = 8
[[datasets]]
path = "$W/train.jsonl"
type = "instruction"
[data]
dataset_prepared_path = "$W/prepared"
[packer]
plugin = "swa_packer"
[optimizer]
plugin = "adamw"
[training]
sequence_len = 64
micro_batch_size = 2
max_steps = 1
output_dir = "$W/run"
EOF
  "$MFTK_BIN" run "$W/recipe.toml" >"$W/run.log" 2>&1 || { cat "$W/run.log" >&2; exit 1; }

  n=0
  for f in "$W"/sharded/*.safetensors "$W"/run/adapter/*.safetensors \
           "$W"/run/checkpoint-*/*.safetensors; do
    [[ -f $f ]] && cp "$f" "$SEEDS/safetensors_header/$((n++))-$(basename "$f")"
  done
  cp "$W"/sharded/model.safetensors.index.json "$SEEDS/safetensors_index/"
  cp "$W"/f32.gguf "$W"/q8.gguf "$SEEDS/gguf/"
  cp configs/*.toml "$SEEDS/recipe/"
  for f in configs/*/*.toml; do cp "$f" "$SEEDS/recipe/$(basename "$(dirname "$f")")-$(basename "$f")"; done
  cp "$W/recipe.toml" "$SEEDS/recipe/seed-run.toml"
  # A recipe with --set overrides (the target reads leading "#@" lines as --set).
  { echo "#@training.max_steps=3"; echo "#@export[0].out=x.gguf"; cat configs/quickstart.toml; } \
    >"$SEEDS/recipe/with-overrides.toml"
  # JSONL: the first byte picks type and options (see fuzz/fuzz_jsonl_chat.cpp).
  for f in data/quickstart/*.jsonl; do
    { printf '\x00'; head -n 20 "$f"; } >"$SEEDS/jsonl_chat/instruction-$(basename "$f")"
    { printf '\x1c'; head -n 5 "$f"; } >"$SEEDS/jsonl_chat/instruction-v1-$(basename "$f")"
  done
  { printf '\x01'
    echo '{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}'
    echo '{"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}, {"role": "user", "content": "3+3?"}, {"role": "assistant", "content": "6"}]}'
  } >"$SEEDS/jsonl_chat/chat.jsonl"
  { printf '\x02'; echo '{"text": "The sky is blue."}'; } >"$SEEDS/jsonl_chat/completion.jsonl"
  cp "$W"/run/adapter/adapter_config.json "$SEEDS/peft_config/"
  for f in "$W"/sharded/config.json "$W"/v1/config.json; do
    cp "$f" "$SEEDS/config_json/$(basename "$(dirname "$f")")-config.json"
  done
  touch "$SEEDS/.done"
fi

# --- run each target for TIME seconds, one at a time
export MFTK_FUZZ_TOKENIZER=$B/seed-work/sharded
export MFTK_SPM_SHIM=$B/lib/libmftk_spm.so
export ASAN_OPTIONS=${ASAN_OPTIONS:-halt_on_error=1:detect_leaks=0:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
# One thread for libtorch's pools: nothing fuzzed runs torch code.
export OMP_NUM_THREADS=1 MFTK_THREADS=1
SUMMARY=()
failed=0
for t in "${TARGETS[@]}"; do
  corpus=$B/corpus/$t
  crashes=$B/crashes/$t
  log=$B/logs/$t.log
  mkdir -p "$corpus" "$crashes" "$(dirname "$log")"
  echo "fuzz.sh: $t for ${TIME}s (log: $log)"
  touch "$log.start"
  set +e
  nice -n 15 "$B/bin/fuzz_$t" -max_total_time="$TIME" -max_len=65536 -timeout=10 -rss_limit_mb=4096 \
    -print_final_stats=1 -artifact_prefix="$crashes/" "$corpus" "$SEEDS/$t" >"$log" 2>&1
  rc=$?
  set -e
  # libFuzzer's last status line ("#N DONE cov: C ft: F corp: ...") and final stats.
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9a-zA-Z]*\).*/\1/p' <<<"$last")
  found=$(find "$crashes" -type f -newer "$log.start" | wc -l)
  status=ok
  if [[ $rc -ne 0 ]]; then status="FAILED (exit $rc)"; failed=1; fi
  SUMMARY+=("$(printf '%-20s %8ss %12s execs  cov %-6s ft %-6s corpus %-12s crashes %-3s %s' \
    "$t" "$TIME" "${execs:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$found" "$status")")
  if [[ $rc -ne 0 ]]; then
    grep -E 'ERROR: |SUMMARY: |runtime error|deadly signal|uncaught|terminate' "$log" | head -5 | sed 's/^/    /'
  fi
done
echo
echo "fuzz.sh summary (per target: run time, executions, coverage edges, features, corpus, crashes)"
printf '%s\n' "${SUMMARY[@]}"
exit $failed
