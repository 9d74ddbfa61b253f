// Loads a GGUF written by mftk in llama.cpp (through node-llama-cpp's
// prebuilt CPU binaries) and compares it with mftk's own answers:
//   - the tokenization of a text (llama.cpp's SentencePiece tokenizer, from
//     the vocabulary we wrote, against `mftk tokenize`), and
//   - the next-token log-probabilities over the whole vocabulary at every
//     position of a token sequence (against `mftk logprobs --top V`).
//   - with --greedy, a greedy continuation against `mftk generate --json`.
// Prints one JSON line of measurements; exits 1 when a check fails.
//
//   node llamacpp_check.mjs --gguf F --logprobs REF.json --tokenize TOK.json
//        --text TEXT [--tolerance ABS] [--relative-tolerance REL] --label NAME [--greedy GEN.json]
import {readFileSync} from "node:fs";
import {parseArgs} from "node:util";
import {getLlama} from "node-llama-cpp";

const {values: args} = parseArgs({
    options: {
        gguf: {type: "string"},
        logprobs: {type: "string"},
        tokenize: {type: "string"},
        text: {type: "string"},
        tolerance: {type: "string", default: "0"},
        "relative-tolerance": {type: "string", default: "0"},
        label: {type: "string", default: "gguf"},
        greedy: {type: "string"}  // `mftk generate --json` output: its prompt is continued greedily here too
    }
});
const reference = JSON.parse(readFileSync(args.logprobs, "utf8"));
const referenceIds = JSON.parse(readFileSync(args.tokenize, "utf8")).ids;
// Allowed max |Δ log P|: tolerance + relative-tolerance x (the spread of
// mftk's log P over the vocabulary), so a quantised file is judged against
// how far apart its answers are in the first place.
const absoluteTolerance = Number(args.tolerance);
const relativeTolerance = Number(args["relative-tolerance"]);
const failures = [];

// CPU only, never build from source; an F32 KV cache so llama.cpp's cache
// rounding (F16 by default) does not blur the comparison.
const llama = await getLlama({gpu: false, build: "never", logLevel: "error"});
const model = await llama.loadModel({modelPath: args.gguf, gpuLayers: 0});
const vocab = reference.top[0].length;

// 1. tokenization: mftk's ids start with BOS (add_bos_token); llama.cpp's
// tokenize() adds no special tokens, so compare BOS separately.
const ids = model.tokenize(args.text, false);
const mftkIds = referenceIds.slice(1);
if (referenceIds[0] !== model.tokens.bos) failures.push(`BOS: mftk ${referenceIds[0]}, llama.cpp ${model.tokens.bos}`);
if (JSON.stringify(ids) !== JSON.stringify(mftkIds))
    failures.push(`tokenization differs:\n  mftk      ${JSON.stringify(mftkIds)}\n  llama.cpp ${JSON.stringify(ids)}`);

// 2. log-probabilities of every vocabulary entry at every position.
const context = await model.createContext({
    contextSize: 256,
    batchSize: 256,
    threads: 2,
    flashAttention: false,
    experimentalKvCacheKeyType: "F32",
    experimentalKvCacheValueType: "F32"
});
const sequence = context.getSequence();
const tokens = reference.tokens;
const full = {temperature: 1, topK: 0, topP: 1, minP: 0};  // sampler chain that keeps the whole distribution
const input = tokens.slice(0, -1).map((t) => [t, {generateNext: {probabilities: true, options: full}}]);
const outputs = await sequence.controlledEvaluate(input);

let maxNext = 0;  // |Δ log P(actual next token)|
let maxAll = 0;   // |Δ log P(v)| over every v with log P > -20 in mftk
let top1Agree = 0;
let sumNext = 0;
let spread = 0;   // largest (max - min) of mftk's log P over the vocabulary at one position
for (let i = 0; i < tokens.length - 1; i++) {
    const probabilities = outputs[i]?.next?.probabilities;
    if (probabilities == null || probabilities.size !== reference.top[i].length) {
        failures.push(`position ${i}: llama.cpp gave ${probabilities?.size ?? 0} probabilities, expected ${reference.top[i].length}`);
        break;
    }
    const ref = reference.top[i];
    spread = Math.max(spread, ref[0].logprob - ref[ref.length - 1].logprob);
    for (const {id, logprob} of ref) {
        const ours = Math.log(probabilities.get(id) ?? 0);
        if (logprob > -20) maxAll = Math.max(maxAll, Math.abs(ours - logprob));
    }
    const next = tokens[i + 1];
    const diffNext = Math.abs(Math.log(probabilities.get(next)) - reference.logprobs[i]);
    maxNext = Math.max(maxNext, diffNext);
    sumNext += diffNext;
    const llamaTop = probabilities.keys().next().value;
    if (llamaTop === reference.top[i][0].id) top1Agree++;
}
const tolerance = absoluteTolerance + relativeTolerance * spread;
if (!(maxAll <= tolerance)) failures.push(`max |Δ logprob| over the vocabulary ${maxAll} > tolerance ${tolerance}`);

// 3. greedy generation from mftk's prompt, token for token.
let greedy = null;
if (args.greedy) {
    const want = JSON.parse(readFileSync(args.greedy, "utf8"));
    await sequence.clearHistory();
    const got = [];
    for await (const token of sequence.evaluate(want.prompt_tokens, {temperature: 0})) {
        got.push(token);
        if (got.length >= want.tokens.length) break;
    }
    greedy = `${got.filter((t, i) => t === want.tokens[i]).length}/${want.tokens.length}`;
    if (JSON.stringify(got) !== JSON.stringify(want.tokens))
        failures.push(`greedy generation differs:\n  mftk      ${JSON.stringify(want.tokens)}\n  llama.cpp ${JSON.stringify(got)}`);
}

const positions = tokens.length - 1;
console.log(JSON.stringify({
    label: args.label, positions, vocab, tokenize_ok: JSON.stringify(ids) === JSON.stringify(mftkIds),
    max_abs_logprob_diff_next: maxNext, mean_abs_logprob_diff_next: sumNext / positions,
    max_abs_logprob_diff_vocab: maxAll, logprob_spread: spread,
    top1_agreement: `${top1Agree}/${positions}`, ...(greedy ? {greedy_tokens_equal: greedy} : {}), tolerance
}));
await context.dispose();
await model.dispose();
await llama.dispose();
if (failures.length) {
    for (const f of failures) console.error(`${args.label}: FAIL: ${f}`);
    process.exit(1);
}
