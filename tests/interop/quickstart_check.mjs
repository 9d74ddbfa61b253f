// A quickstart-trained tiny model, exported to GGUF, run by llama.cpp
// (node-llama-cpp's prebuilt CPU binaries) against mftk on the merged
// checkpoint, for each held-out prompt CASE of the quickstart task:
//   - the chat-formatted prompt: mftk's chat encoding (`mftk tokenize
//     --chat-json`, the ids before the reply, label_mask 0) must equal the
//     prompt `mftk generate --chat` used, and llama.cpp's own tokenization of
//     the same formatted text (BOS + "[INST] prompt[/INST]", special tokens
//     parsed) from the vocabulary in the file;
//   - greedy generation from those ids, token for token (EOS included) equal
//     to `mftk generate --chat --json`;
//   - per-token log-probs of the answer tokens (teacher-forced on mftk's
//     answer) against `mftk logprobs --tokens PROMPT+ANSWER --top V`:
//     over the whole vocabulary at those positions (log P > -20)
//     max |Δ log P| <= T = --tolerance + --relative-tolerance x spread
//     (max - min of mftk's log P), and for each answer token t, of mftk
//     probability p, |Δ log P(t)| <= --answer-floor + B(p, 2T), where
//     B(p, D) = max(log(1 + (1-p)(e^D - 1)), -log(1 - (1-p)(1 - e^-D))) is
//     the most log p can move when no logit difference z_v - z_t moves by
//     more than D (log p = -log(p + sum_{v!=t} p_v e^(z_v - z_t)) relative to
//     the old p_v): a near-certain token is held much tighter than T.
// Also prints the smallest top-1/top-2 log-prob margin of mftk on the answer
// positions: greedy can only flip where |Δ| reaches half of it.
// Prints one JSON line of measurements; exits 1 when a check fails.
//
//   node quickstart_check.mjs --gguf F --eval EVAL.jsonl --refs DIR --count N --label NAME
//        [--answer-floor A] [--tolerance ABS] [--relative-tolerance REL]
// Case i is row i of EVAL.jsonl ({"instruction", "output"}); DIR holds mftk's
// answers for it: chat<i>.tokenize.json (`tokenize --chat-json`),
// generate<i>.json (`generate --chat --json`), logprobs<i>.json (`logprobs
// --tokens PROMPT+ANSWER --top V`).
import {readFileSync} from "node:fs";
import {parseArgs} from "node:util";
import {getLlama} from "node-llama-cpp";

const {values: args} = parseArgs({
    options: {
        gguf: {type: "string"},
        eval: {type: "string"},
        refs: {type: "string"},
        count: {type: "string"},
        label: {type: "string", default: "gguf"},
        "answer-floor": {type: "string", default: "1e-4"},
        tolerance: {type: "string", default: "0"},
        "relative-tolerance": {type: "string", default: "0"}
    }
});
const answerFloor = Number(args["answer-floor"]);
const bound = (p, D) => Math.max(Math.log1p((1 - p) * Math.expm1(D)), -Math.log1p(-(1 - p) * -Math.expm1(-D)));
const absoluteTolerance = Number(args.tolerance);
const relativeTolerance = Number(args["relative-tolerance"]);
const failures = [];
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

const llama = await getLlama({gpu: false, build: "never", logLevel: "error"});
const model = await llama.loadModel({modelPath: args.gguf, gpuLayers: 0});
// An F32 KV cache so llama.cpp's cache rounding (F16 by default) does not
// blur the comparison; the weights' encoding is what is measured.
const context = await model.createContext({
    contextSize: 256,
    batchSize: 256,
    threads: 2,
    flashAttention: false,
    experimentalKvCacheKeyType: "F32",
    experimentalKvCacheValueType: "F32"
});
const sequence = context.getSequence();
const full = {temperature: 1, topK: 0, topP: 1, minP: 0};  // sampler chain that keeps the whole distribution

let wholeTextOk = 0, greedyEqual = 0, correct = 0, answerTokens = 0, chatOk = 0;
let maxAnswer = 0, sumAnswer = 0, maxVocab = 0, spread = 0, minMargin = Infinity, minAnswerP = 1;
const answers = [];  // every answer token: its case, position, id, mftk's log P and |Δ log P|
const count = Number(args.count);
const rows = readFileSync(args.eval, "utf8").split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l));
if (rows.length < count) failures.push(`${args.eval} has ${rows.length} rows, fewer than ${count}`);
for (let c = 0; c < count; c++) {
    const read = (name) => JSON.parse(readFileSync(`${args.refs}/${name}`, "utf8"));
    const row = rows[c];
    const ref = {prompt: row.instruction, expected: row.output, chat: read(`chat${c}.tokenize.json`)};
    const want = read(`generate${c}.json`);
    const prompt = want.prompt_tokens;
    const tag = `case ${c} (${JSON.stringify(ref.prompt)})`;

    // 1. the chat-formatted prompt, three ways.
    const promptLength = ref.chat.label_mask.indexOf(1);
    const chatPrompt = ref.chat.ids.slice(0, promptLength);
    // llama.cpp's reading of the same pieces through the vocabulary in the
    // file: the control tokens by their text, the instruction as text.
    const llamaPrompt = [model.tokens.bos, ...model.tokenize("[INST]", true), ...model.tokenize(ref.prompt, false),
                         ...model.tokenize("[/INST]", true)];
    const chatSame = same(chatPrompt, prompt) && same(llamaPrompt, prompt);
    if (chatSame) chatOk++;
    else failures.push(`${tag}: chat prompt differs:\n  mftk generate --chat      ${JSON.stringify(prompt)}` +
                       `\n  mftk tokenize --chat-json ${JSON.stringify(chatPrompt)}\n  llama.cpp tokenize        ${JSON.stringify(llamaPrompt)}`);
    // Not checked, reported: llama.cpp tokenizing the whole formatted text at
    // once puts an extra "▁" after [INST] (its SPM tokenizer adds the space
    // prefix after every special token; sentencepiece / HF legacy=false and
    // mftk do not), so a text prompt given to llama.cpp differs by that token.
    const wholeText = [model.tokens.bos, ...model.tokenize(`[INST] ${ref.prompt}[/INST]`, true)];
    if (same(wholeText, prompt)) wholeTextOk++;
    if (want.text.trim() === ref.expected.trim()) correct++;

    // 2. greedy generation, token for token, EOS included.
    await sequence.clearHistory();
    const got = [];
    for await (const token of sequence.evaluate(prompt, {temperature: 0, yieldEogToken: true})) {
        got.push(token);
        if (got.length >= want.tokens.length || model.isEogToken(token)) break;
    }
    if (same(got, want.tokens)) greedyEqual++;
    else failures.push(`${tag}: greedy generation differs:\n  mftk      ${JSON.stringify(want.tokens)}` +
                       ` ${JSON.stringify(want.text)}\n  llama.cpp ${JSON.stringify(got)} ${JSON.stringify(model.detokenize(got))}`);

    // 3. log-probs at the answer positions, teacher-forced on mftk's answer.
    const lp = read(`logprobs${c}.json`);
    const tokens = lp.tokens;
    if (!same(tokens, [...prompt, ...want.tokens])) failures.push(`${tag}: logprobs reference is not prompt + answer`);
    await sequence.clearHistory();
    const input = tokens.slice(0, -1).map((t, i) =>
        i >= prompt.length - 1 ? [t, {generateNext: {probabilities: true, options: full}}] : t);
    const outputs = await sequence.controlledEvaluate(input);
    for (let i = prompt.length - 1; i < tokens.length - 1; i++) {
        const probabilities = outputs[i]?.next?.probabilities;
        const top = lp.top[i];
        if (probabilities == null || probabilities.size !== top.length) {
            failures.push(`${tag} position ${i}: llama.cpp gave ${probabilities?.size ?? 0} probabilities, expected ${top.length}`);
            break;
        }
        spread = Math.max(spread, top[0].logprob - top[top.length - 1].logprob);
        minMargin = Math.min(minMargin, top[0].logprob - top[1].logprob);
        for (const {id, logprob} of top) {
            if (logprob > -20) maxVocab = Math.max(maxVocab, Math.abs(Math.log(probabilities.get(id) ?? 0) - logprob));
        }
        const next = tokens[i + 1];
        const diff = Math.abs(Math.log(probabilities.get(next) ?? 0) - lp.logprobs[i]);
        minAnswerP = Math.min(minAnswerP, Math.exp(lp.logprobs[i]));
        answerTokens++;
        sumAnswer += diff;
        answers.push({case: c, position: i, token: next, mftk_logprob: lp.logprobs[i], diff});
        maxAnswer = Math.max(maxAnswer, diff);
    }
}
const tolerance = absoluteTolerance + relativeTolerance * spread;
// Each answer token against its own bound; "worst" is the one closest to it.
let worst = null, worstRatio = 0;
for (const a of answers) {
    a.tolerance = answerFloor + bound(Math.exp(a.mftk_logprob), 2 * tolerance);
    if (!(a.diff <= a.tolerance)) failures.push(`answer token ${JSON.stringify(a)}: |Δ logprob| over its tolerance`);
    if (!(a.diff / a.tolerance <= worstRatio)) { worstRatio = a.diff / a.tolerance; worst = a; }
}
if (!(maxVocab <= tolerance)) failures.push(`max |Δ logprob| over the vocabulary at the answer positions ${maxVocab} > tolerance ${tolerance}`);

console.log(JSON.stringify({
    label: args.label, prompts: count, chat_prompt_equal: `${chatOk}/${count}`,
    llama_whole_text_chat_tokenization_equal: `${wholeTextOk}/${count}`, greedy_equal: `${greedyEqual}/${count}`,
    mftk_answers_correct: `${correct}/${count}`, answer_tokens: answerTokens,
    max_abs_logprob_diff_answer: maxAnswer, mean_abs_logprob_diff_answer: sumAnswer / Math.max(answerTokens, 1),
    min_answer_token_p: minAnswerP, min_top1_top2_margin: minMargin,
    max_abs_logprob_diff_vocab: maxVocab, logprob_spread: spread,
    vocab_tolerance: tolerance, answer_token_closest_to_its_tolerance: worst
}));
await context.dispose();
await model.dispose();
await llama.dispose();
if (failures.length) {
    for (const f of failures) console.error(`${args.label}: FAIL: ${f}`);
    process.exit(1);
}
