#!/usr/bin/env bash
# The GGUF exporter checked by readers no one here wrote: llama.cpp itself,
# through the npm package node-llama-cpp (pinned; it ships prebuilt llama.cpp
# CPU libraries), and @huggingface/gguf.
#  1. Two tiny random Mistrals from `mftk init`, weights sharpened
#     (tests/interop/scale_weights.mjs), are exported at f32 / f16 / bf16 /
#     q8_0 (hidden 96) and f32 / q4_k / q6_k / q4_k_m (hidden 256).
#  2. llama.cpp's tokenization of a sample text must equal `mftk tokenize`,
#     its greedy continuation (f32 files) must equal `mftk generate`'s, and
#     its next-token log-probabilities over the whole vocabulary at every
#     position must match `mftk logprobs` (tests/interop/llamacpp_check.mjs):
#     against the original checkpoint, and for quantised files also against
#     the "twin" checkpoint holding the weights ggml decodes from the file.
#  3. Every file parses with @huggingface/gguf with the expected metadata,
#     and every F16 / BF16 / Q8_0 / Q4_K / Q6_K tensor is byte for byte what
#     ggml's own encoders make of the F32 values
#     (tests/interop/second_reader_check.mjs, ggml_encode_oracle.c).
#  4. Negative control: a file without the Q/K RoPE row order must fail 2.
#  5. A tiny model trained on the quickstart task with configs/quickstart.toml
#     (LoRA, merged), exported to F16 and Q8_0: for held-out prompts of
#     data/quickstart/eval.jsonl in the chat format, llama.cpp's greedy answer
#     must equal `mftk generate --chat` on the merged checkpoint token for
#     token, and the answer tokens' log-probs `mftk logprobs`'
#     (tests/interop/quickstart_check.mjs).
#
#   bash scripts/check-gguf-llamacpp.sh [BUILD_DIR]     (default: build)
#
# Needs node >= 20 and npm (scripts/install-deps.sh), a C compiler, and the
# npm registry the first time: scripts/gguf-interop-setup.sh (the ctest
# fixture `gguf_interop`, run again here so the script also works alone)
# installs the pinned packages, ~90 MB, into BUILD_DIR/gguf-interop. This
# check never skips: exit 1 when node, npm or the packages cannot be had, or
# when a check fails.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
mftk="$build/bin/mftk"
interop="$build/gguf-interop"

# Tolerances on max |Δ log P| over the whole vocabulary at every position
# (entries with log P > -20), as "absolute relative": the bound is
# absolute + relative x spread, spread = max - min of mftk's log P.
# f32: both sides compute in fp32, only the summation order differs: 1e-3
#   absolute (measured: ~1e-5).
tol_f32="--tolerance 1e-3"
# q8_0: mftk scores the fp32 checkpoint, llama.cpp the 8-bit weights, and it
#   also rounds activations to 8 bits for each Q8_0 dot product. Rounding
#   to a step of amax/127 moves a weight by step/sqrt(12) rms, about 0.6 %
#   of the weights' rms for Gaussian blocks (amax ~ 2.5 sigma); activations
#   add as much; over the ~8 matmuls in a row of this 2-layer model that
#   compounds to a few percent of each logit, so 4 % of the spread
#   (measured: 1.8 % here; 1.6 % with weights x3, 2.6 % with x6).
tol_q8_0="--relative-tolerance 0.04"
# f16 / bf16: every weight rounded to 11 / 8 significant bits (relative
#   error <= 2^-11 / 2^-8), and llama.cpp's CPU dot products round the
#   activations to the same type; compounded over the matmuls: 0.5 % / 2 %
#   of the spread (measured: ~0.07 % / ~0.5 %).
tol_f16="--tolerance 1e-3 --relative-tolerance 0.005"
tol_bf16="--tolerance 1e-3 --relative-tolerance 0.02"
# K-quants against the fp32 checkpoint: what 4 and 6 bits cost on a random
#   sharpened model is large (measured: q4_k 26 %, q6_k 7.5 % of the spread),
#   so this is only a sanity bound (a wrong layout gives noise ~ the spread):
#   50 % / 20 %. Their real check is the twin below.
tol_q4_k="--relative-tolerance 0.5"
tol_q4_k_m="--relative-tolerance 0.5"
tol_q6_k="--relative-tolerance 0.2"
# Twin (llama.cpp on the file vs mftk on the weights decoded from it): the
# weights are identical, so what is left is llama.cpp rounding activations
# to 8 bits for its quantised dot products (Q8_0 blocks of 32 next to Q8_0
# weights, Q8_K blocks of 256, with a coarser step, next to K-quants; F16 /
# BF16 next to F16 / BF16), about 0.6-0.9 % of each matmul input's rms,
# compounded over the ~8 matmuls in a row: 5 % of the spread (measured:
# f16 0.04 %, bf16 0.3 %, q8_0 1.0 %, q4_k 2.4 %, q4_k_m 2.3 %, q6_k 2.8 %;
# the missing Q/K row order gives 39 %).
tol_twin="--tolerance 1e-3 --relative-tolerance 0.05"
# Quickstart-trained model (step 5), F16 and Q8_0 against mftk on the merged
# fp32 checkpoint: the same weight rounding as for the random models above,
# so the same bounds on max |Δ log P| over the vocabulary at the answer
# positions (f16 0.5 %, q8_0 4 % of the spread). Each answer token t, of
# mftk probability p, is held to what that bound T allows for it:
# log p = -log(p + sum_{v!=t} p_v e^(Δz_v - Δz_t)) and |Δz_v - Δz_t| <= 2T,
# so |Δ log p| <= B(p, 2T) ~ (1 - p) 2T (tests/interop/quickstart_check.mjs),
# plus 1e-4 for fp32 noise: a near-certain answer token is held ~(1 - p)
# times tighter than the vocabulary.
tol_qs_f16="--tolerance 1e-3 --relative-tolerance 0.005 --answer-floor 1e-4"
tol_qs_q8_0="--relative-tolerance 0.04 --answer-floor 1e-4"
# Training steps: the fewest after which every checked answer is right and
# greedy decoding has a clear margin (min top-1 / top-2 log P gap on the
# answers, printed); prompts: the first rows of eval.jsonl, which cycle
# through the four tasks.
qs_steps=${MFTK_GGUF_CHECK_STEPS:-150}
qs_prompts=${MFTK_GGUF_CHECK_PROMPTS:-12}

[ -x "$mftk" ] || { echo "check-gguf-llamacpp: FAIL: $mftk not built"; exit 1; }
# Installs (once) or confirms the pinned node-llama-cpp and @huggingface/gguf
# (the versions live in that script); fails with the reason when it cannot.
bash "$root/scripts/gguf-interop-setup.sh" "$build" || { echo "check-gguf-llamacpp: FAIL: the readers could not be installed"; exit 1; }
platform=$(node -p "process.platform + '-' + process.arch")
version=$(node -p "require('$interop/node_modules/node-llama-cpp/package.json').version")
# Node resolves packages from the script's folder upwards; run copies there.
cp "$root"/tests/interop/*.mjs "$interop/"

work=$(mktemp -d "$interop/run.XXXXXX")
trap 'rm -rf "$work"' EXIT
export MFTK_THREADS=${MFTK_THREADS:-2}

# Two tiny random Mistrals, without sliding window (llama's graph has none):
#   small: hidden 96 with head_dim 32 (llama.cpp must read key_length),
#          for f32 / f16 / bf16 / q8_0;
#   kq:    hidden 256 (K-quant super-blocks need rows of 256); with 2 layers
#          q4_k_m gives layer 1 the extra bits (Q6_K attn_v/ffn_down), not layer 0.
text="The quick brown fox jumps over the lazy dog. Fine-tuning Mistral, 1234 times: [INST] hello [/INST]"
make_model() {  # name, mftk init options...
  local name=$1
  shift
  "$mftk" init --preset tiny --out "$work/$name" --dtype f32 --sliding-window 0 "$@" 2>/dev/null
  node "$interop/scale_weights.mjs" "$work/$name/model.safetensors" "${MFTK_GGUF_CHECK_SCALE:-4}"
  "$mftk" tokenize --model "$work/$name" --text "$text" >"$work/$name.tokenize.json"
  local vocab
  vocab=$(node -p "require('$work/$name/config.json').vocab_size")
  "$mftk" logprobs --model "$work/$name" --text "$text" --top "$vocab" >"$work/$name.logprobs.json" 2>/dev/null
  "$mftk" generate --model "$work/$name" --prompt "$text" --max-new-tokens 32 --json >"$work/$name.generate.json" 2>/dev/null
}
compare() {  # model name, type, label, tolerance options...
  local name=$1 type=$2 label=$3
  shift 3
  node "$interop/llamacpp_check.mjs" --gguf "$work/$name-$type.gguf" --logprobs "$work/$name.logprobs.json" \
    --tokenize "$work/$name.tokenize.json" --text "$text" --label "$label" "$@"
}
# For a quantised file, also the "twin": the checkpoint with the weights
# llama.cpp decodes from the file (tests/interop/dequantized_twin.mjs, ggml's
# own decoders). llama.cpp vs mftk on the twin isolates the file's layout
# (names, types, row order, block packing) from the quantisation's loss.
twin() {  # model name, type
  local name=$1 type=$2
  cp -r "$work/$name" "$work/$name-$type-twin"
  node "$interop/dequantized_twin.mjs" --gguf "$work/$name-$type.gguf" --twin "$work/$name-$type-twin" \
    --oracle "$work/ggml_encode_oracle" --ggml "$ggml_base"
  local vocab
  vocab=$(node -p "require('$work/$name/config.json').vocab_size")
  "$mftk" logprobs --model "$work/$name-$type-twin" --text "$text" --top "$vocab" \
    >"$work/$name-$type-twin.logprobs.json" 2>/dev/null
  cp "$work/$name-$type.gguf" "$work/$name-$type-twin-$type.gguf"
  cp "$work/$name.tokenize.json" "$work/$name-$type-twin.tokenize.json"
}
cc -O2 -o "$work/ggml_encode_oracle" "$root/tests/interop/ggml_encode_oracle.c" -ldl
ggml_base="$interop/node_modules/@node-llama-cpp/$platform/bins/$platform/libggml-base.so"

make_model small --seed 5 --layers 2 --hidden 96 --heads 4 --kv-heads 2 --head-dim 32 --intermediate 256
make_model kq --seed 9 --layers 2 --hidden 256 --heads 4 --kv-heads 2 --head-dim 64 --intermediate 512

status=0
run() {  # model name, type
  local name=$1 type=$2 tol_var=tol_$2
  "$mftk" export --plugin gguf --model "$work/$name" --out "$work/$name-$type.gguf" --set type=$type 2>/dev/null
  local greedy=()
  # Greedy decoding must agree token for token where the weights are the same.
  [ "$type" = f32 ] && greedy=(--greedy "$work/$name.generate.json")
  compare "$name" "$type" "$name $type vs mftk on the checkpoint" ${!tol_var} "${greedy[@]}" || status=1
  if [ "$type" != f32 ]; then
    twin "$name" "$type"
    compare "$name-$type-twin" "$type" "$name $type vs mftk on the decoded twin" $tol_twin || status=1
  fi
}
for type in f32 f16 bf16 q8_0; do run small $type; done
for type in f32 q4_k q6_k q4_k_m; do run kq $type; done

# A second reader (@huggingface/gguf) and ggml's own encoders (from the
# libggml-base.so node-llama-cpp ships) on the same files: every F16, BF16,
# Q8_0, Q4_K and Q6_K tensor must be byte for byte what ggml makes of the
# same tensor's F32 values.
node "$interop/second_reader_check.mjs" --model "$work/small" --oracle "$work/ggml_encode_oracle" --ggml "$ggml_base" \
  --expect F16,BF16,Q8_0 "$work/small-f32.gguf" "$work/small-f16.gguf" "$work/small-bf16.gguf" "$work/small-q8_0.gguf" || status=1
node "$interop/second_reader_check.mjs" --model "$work/kq" --oracle "$work/ggml_encode_oracle" --ggml "$ggml_base" \
  --expect Q4_K,Q6_K "$work/kq-f32.gguf" "$work/kq-q4_k.gguf" "$work/kq-q6_k.gguf" "$work/kq-q4_k_m.gguf" || status=1

# Negative control: the same comparison must FAIL for a file whose Q/K rows
# are not in llama.cpp's RoPE order (an exporter that forgot the permutation).
cp -r "$work/small" "$work/unpermuted"
node "$interop/undo_rope_order.mjs" "$work/unpermuted"
"$mftk" export --plugin gguf --model "$work/unpermuted" --out "$work/unpermuted-f32.gguf" --set type=f32 2>/dev/null
cp "$work/small.logprobs.json" "$work/unpermuted.logprobs.json"
cp "$work/small.tokenize.json" "$work/unpermuted.tokenize.json"
if compare unpermuted f32 "control: no RoPE row order" $tol_f32 2>/dev/null; then
  echo "check-gguf-llamacpp: FAIL: llama.cpp agreed with mftk on a file without the Q/K row order;" \
       "the comparison cannot catch that mistake"
  status=1
else
  echo "check-gguf-llamacpp: control ok: without the Q/K row order llama.cpp disagrees, as it must"
fi
# 5. A quickstart-trained tiny model (issue 7's "Done when"): the base from
# `mftk init --preset tiny --seed 1`, trained briefly with the real recipe
# (configs/quickstart.toml, LoRA merged), exported to F16 and Q8_0; llama.cpp
# must generate greedily exactly what `mftk generate --chat` does on the merged
# checkpoint for the first $qs_prompts held-out prompts of
# data/quickstart/eval.jsonl (the rows cycle through the four tasks), from
# the same chat-formatted token ids (`mftk tokenize --chat-json`, checked
# against generate's prompt and llama.cpp's reading of the same pieces), and
# score the answer tokens within the tolerances above
# (tests/interop/quickstart_check.mjs).
echo "check-gguf-llamacpp: random models done ($SECONDS s)"
qs="$work/quickstart"
mkdir -p "$qs"
"$mftk" init --preset tiny --seed 1 --out "$qs/base" 2>/dev/null
qs_start=$SECONDS
if ! "$mftk" run "$root/configs/quickstart.toml" --set model.path="$qs/base" \
      --set "datasets[0].path=$root/data/quickstart/train.jsonl" --set "datasets[1].path=$root/data/quickstart/eval.jsonl" \
      --set training.output_dir="$qs/run" --set data.dataset_prepared_path="$qs/prepared" \
      --set training.max_steps=$qs_steps --set training.merge_adapter=true --set validate.exact_match=0 \
      >"$qs/train.log" 2>&1; then
  tail -20 "$qs/train.log"
  echo "check-gguf-llamacpp: FAIL: training the quickstart model failed"
  exit 1
fi
echo "check-gguf-llamacpp: quickstart model: $(grep -o 'done: .*' "$qs/train.log" | head -1) ($((SECONDS - qs_start)) s)"
merged="$qs/run/merged"
qs_start=$SECONDS
# The chat conversations (user: the instruction, assistant: the expected
# answer) and the prompts, one file each.
node -e '
  const fs = require("fs");
  const [evalFile, dir, n] = process.argv.slice(1);
  const rows = fs.readFileSync(evalFile, "utf8").split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l));
  for (let i = 0; i < Number(n); i++) {
    fs.writeFileSync(`${dir}/chat${i}.json`, JSON.stringify([{role: "user", content: rows[i].instruction},
                                                            {role: "assistant", content: rows[i].output}]));
    fs.writeFileSync(`${dir}/prompt${i}.txt`, rows[i].instruction);
  }' "$root/data/quickstart/eval.jsonl" "$qs" "$qs_prompts"
qs_vocab=$(node -p "require('$merged/config.json').vocab_size")
for ((i = 0; i < qs_prompts; i++)); do
  "$mftk" tokenize --model "$merged" --chat-json "$qs/chat$i.json" >"$qs/chat$i.tokenize.json"
  "$mftk" generate --model "$merged" --chat --prompt "$(cat "$qs/prompt$i.txt")" --max-new-tokens 16 --json \
    >"$qs/generate$i.json" 2>/dev/null
  qs_tokens=$(node -p "const g = require('$qs/generate$i.json'); [...g.prompt_tokens, ...g.tokens].join(',')")
  "$mftk" logprobs --model "$merged" --tokens "$qs_tokens" --top "$qs_vocab" >"$qs/logprobs$i.json" 2>/dev/null
done
for type in f16 q8_0; do
  "$mftk" export --plugin gguf --model "$merged" --out "$qs/quickstart-$type.gguf" --set type=$type 2>/dev/null
  tol_var=tol_qs_$type
  node "$interop/quickstart_check.mjs" --gguf "$qs/quickstart-$type.gguf" --eval "$root/data/quickstart/eval.jsonl" \
    --refs "$qs" --count "$qs_prompts" --label "quickstart $type vs mftk on the merged checkpoint" ${!tol_var} || status=1
done
echo "check-gguf-llamacpp: quickstart references, exports and llama.cpp checks: $((SECONDS - qs_start)) s; total $SECONDS s"

[ $status = 0 ] && echo "check-gguf-llamacpp: llama.cpp $version reads mftk's GGUF files and agrees with mftk"
exit $status
