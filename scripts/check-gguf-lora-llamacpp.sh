#!/usr/bin/env bash
# The gguf_lora exporter checked by llama.cpp itself (node-llama-cpp's
# prebuilt CPU libraries, as in check-gguf-llamacpp.sh): one base GGUF, an
# adapter GGUF on top of it, and the merged model must agree.
#  1. A tiny random Mistral from `mftk init` (hidden 96, head_dim 32, 4 query
#     and 2 KV heads, weights sharpened), exported as base.gguf (f32).
#  2. A random LoRA with non-zero A and B on every projection
#     (tests/interop/random_lora.mjs), r = 4, alpha = 8; once plain and once
#     with use_rslora (llama.cpp's alpha / r must carry PEFT's alpha / sqrt(r)).
#     Each is exported with gguf_lora (under its parity gate, max_kl 1e-6),
#     merged with `mftk merge`, and the merge exported as an f32 GGUF.
#  3. llama.cpp with base.gguf + the adapter, llama.cpp with the merged GGUF,
#     and `mftk logprobs` on the merged checkpoint: next-token log-probs over
#     the whole vocabulary at every position within 1e-3 of each other; the
#     base alone must differ by at least 0.1 (tests/interop/lora_check.mjs).
#  4. The Modelfile beside each adapter names the base (FROM ./base.gguf) and
#     the adapter (ADAPTER ./lora-*.gguf).
#  5. Negative control: an adapter whose q/k lora_b rows end up in Hugging
#     Face order in the file (as without the RoPE row permutation) must fail.
#  6. The prompt an Ollama Modelfile's TEMPLATE renders, tokenised by
#     llama.cpp, equals `mftk tokenize --chat-json` (v1 and v3 tokenizers).
#
#   bash scripts/check-gguf-lora-llamacpp.sh [BUILD_DIR]     (default: build)
#
# Needs what check-gguf-llamacpp.sh needs (node >= 20, npm, the pinned
# packages from scripts/gguf-interop-setup.sh, the ctest fixture
# `gguf_interop`). Never skips. About 20 s on two cores.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
mftk="$build/bin/mftk"
interop="$build/gguf-interop"
[ -x "$mftk" ] || { echo "check-gguf-lora-llamacpp: FAIL: $mftk not built"; exit 1; }
bash "$root/scripts/gguf-interop-setup.sh" "$build" >/dev/null ||
  { echo "check-gguf-lora-llamacpp: FAIL: the readers could not be installed"; exit 1; }
cp "$root"/tests/interop/*.mjs "$interop/"
work=$(mktemp -d "$interop/lora.XXXXXX")
trap 'rm -rf "$work"' EXIT
export MFTK_THREADS=${MFTK_THREADS:-2}

# f32 on both sides: only the summation order differs (measured: ~1e-5).
tolerance=1e-3
text="The quick brown fox jumps over the lazy dog. Fine-tuning Mistral, 1234 times: [INST] hello [/INST]"
"$mftk" init --preset tiny --out "$work/base" --dtype f32 --sliding-window 0 --seed 5 --layers 2 --hidden 96 \
  --heads 4 --kv-heads 2 --head-dim 32 --intermediate 256 2>/dev/null
node "$interop/scale_weights.mjs" "$work/base/model.safetensors" 4
"$mftk" export --plugin gguf --model "$work/base" --out "$work/base.gguf" --set type=f32 2>/dev/null
vocab=$(node -p "require('$work/base/config.json').vocab_size")

status=0
check() {  # variant name, random_lora.mjs options...
  local v=$1
  shift
  node "$interop/random_lora.mjs" --model "$work/base" --out "$work/lora-$v" --r 4 --alpha 8 --seed 11 "$@"
  "$mftk" export --plugin gguf_lora --model "$work/base" --adapter "$work/lora-$v" --out "$work/lora-$v.gguf" \
    --set base_gguf="$work/base.gguf" --set max_kl=1e-6 >"$work/export-$v.log" 2>&1 ||
    { cat "$work/export-$v.log"; echo "check-gguf-lora-llamacpp: FAIL: gguf_lora export ($v)"; return 1; }
  grep -o 'parity \[gguf_lora\].*' "$work/export-$v.log"
  local modelfile="$work/lora-$v.Modelfile"
  if ! grep -qx "FROM ./base.gguf" "$modelfile" || ! grep -qx "ADAPTER ./lora-$v.gguf" "$modelfile"; then
    echo "check-gguf-lora-llamacpp: FAIL: $modelfile does not name ./base.gguf and ./lora-$v.gguf"
    return 1
  fi
  "$mftk" merge --model "$work/base" --adapter "$work/lora-$v" --out "$work/merged-$v" >/dev/null 2>&1
  "$mftk" export --plugin gguf --model "$work/merged-$v" --out "$work/merged-$v.gguf" --set type=f32 2>/dev/null
  "$mftk" logprobs --model "$work/merged-$v" --text "$text" --top "$vocab" >"$work/merged-$v.logprobs.json" 2>/dev/null
}
compare() {  # adapter variant, merged variant, label
  node "$interop/lora_check.mjs" --base "$work/base.gguf" --lora "$work/lora-$1.gguf" --merged "$work/merged-$2.gguf" \
    --logprobs "$work/merged-$2.logprobs.json" --label "$3" --tolerance $tolerance
}
check plain || status=1
check rslora --rslora || status=1
[ $status = 0 ] || exit 1
compare plain plain "gguf_lora r=4 alpha=8" || status=1
compare rslora rslora "gguf_lora r=4 alpha=8 use_rslora" || status=1

# Negative control: the same values with q/k lora_b rows left in HF order in
# the file; its own merge is the same model as "plain".
node "$interop/random_lora.mjs" --model "$work/base" --out "$work/lora-unpermuted" --r 4 --alpha 8 --seed 11 --scramble-qk
"$mftk" export --plugin gguf_lora --model "$work/base" --adapter "$work/lora-unpermuted" \
  --out "$work/lora-unpermuted.gguf" --parity-rows 0 2>/dev/null
if compare unpermuted plain "control: no RoPE row order in lora_b" 2>/dev/null; then
  echo "check-gguf-lora-llamacpp: FAIL: llama.cpp agreed with the merged model on an adapter without the q/k row" \
       "order; the comparison cannot catch that mistake"
  status=1
else
  echo "check-gguf-lora-llamacpp: control ok: without the q/k row order in lora_b llama.cpp disagrees, as it must"
fi
# 6. The Modelfile's prompt, tokenised by llama.cpp as Ollama has it done
# (BOS, special tokens parsed), is mftk's chat encoding: a tiny model on
# Mistral's real v1 and v3 tokenizers, exported to GGUF, and the text the
# TEMPLATE renders for a system prompt and two user turns (pinned by
# OllamaTemplate.RenderedTextAsTheFormatIsWrittenOut) against
# `mftk tokenize --chat-json` (tests/interop/prompt_tokens_check.mjs).
tokenizers="${MFTK_SHARED_DIR:-$root/../shared}/data/mistral-tokenizers"
if [ -f "$tokenizers/tokenizer.model.v1" ] && [ -f "$tokenizers/tokenizer.model.v3" ]; then
  printf '%s' '[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},'\
' {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "And now?"}]' >"$work/chat.json"
  printf '[INST] Be brief.\n\nHi [/INST] Hello!</s>[INST] And now? [/INST]' >"$work/prompt-v1.txt"
  printf '[INST]Hi[/INST]Hello!</s>[INST]Be brief.\n\nAnd now?[/INST]' >"$work/prompt-v3.txt"
  for v in v1 v3; do
    "$mftk" init --preset tiny --out "$work/chat-$v" --dtype f32 --sliding-window 0 --layers 1 --hidden 32 --heads 2 \
      --kv-heads 1 --intermediate 64 --tokenizer "$tokenizers/tokenizer.model.$v" 2>/dev/null
    "$mftk" export --plugin gguf --model "$work/chat-$v" --out "$work/chat-$v.gguf" --set type=f32 2>/dev/null
    grep -q "Mistral $v chat format" "$work/chat-$v.Modelfile" ||
      { echo "check-gguf-lora-llamacpp: FAIL: chat-$v.Modelfile is not for the $v format"; status=1; }
    "$mftk" tokenize --model "$work/chat-$v" --chat-json "$work/chat.json" >"$work/chat-$v.tokenize.json"
    node "$interop/prompt_tokens_check.mjs" --gguf "$work/chat-$v.gguf" --text-file "$work/prompt-$v.txt" \
      --tokenize "$work/chat-$v.tokenize.json" --label "Modelfile prompt $v" || status=1
  done
  # Control: a space after [INST] (as in some published Mistral templates)
  # gives other ids, so this comparison sees the template's whitespace.
  printf '[INST] Hi[/INST]Hello!</s>[INST] Be brief.\n\nAnd now?[/INST]' >"$work/prompt-v3-spaced.txt"
  if node "$interop/prompt_tokens_check.mjs" --gguf "$work/chat-v3.gguf" --text-file "$work/prompt-v3-spaced.txt" \
       --tokenize "$work/chat-v3.tokenize.json" --label "control: space after [INST]" >/dev/null 2>&1; then
    echo "check-gguf-lora-llamacpp: FAIL: a prompt with a space after [INST] gave mftk's ids too; the check is blind"
    status=1
  else
    echo "check-gguf-lora-llamacpp: control ok: a space after [INST] changes llama.cpp's ids, as it must"
  fi
else
  echo "check-gguf-lora-llamacpp: the Modelfile prompt check needs Mistral's tokenizers in $tokenizers; not run"
fi
[ $status = 0 ] && echo "check-gguf-lora-llamacpp: llama.cpp applies mftk's adapter GGUF as the merged model computes, and reads the Modelfile prompt as mftk encodes it ($SECONDS s)"
exit $status
