// llama.cpp (node-llama-cpp's prebuilt CPU libraries) applying a LoRA
// adapter GGUF from mftk's gguf_lora exporter on top of the base model's
// GGUF must compute what the merged model computes. At every position of a
// token sequence, over the whole vocabulary, the next-token log-probabilities
// of
//   A  llama.cpp: base.gguf + --lora adapter.gguf
//   M  llama.cpp: merged.gguf (mftk merge, exported with the gguf exporter)
//   R  mftk logprobs on the merged checkpoint
//   B  llama.cpp: base.gguf alone (the control)
// are compared: max |A - M| and max |A - R| must be within --tolerance, and
// max |B - R| must be at least --min-effect (the adapter changes the model,
// so agreement is not the base agreeing with itself). Prints one JSON line;
// exits 1 when a check fails.
//
//   node lora_check.mjs --base B.gguf --lora L.gguf --merged M.gguf --logprobs REF.json --label NAME
//        [--tolerance 1e-3] [--min-effect 0.1]
import {readFileSync} from "node:fs";
import {parseArgs} from "node:util";
import {getLlama} from "node-llama-cpp";

const {values: args} = parseArgs({
    options: {
        base: {type: "string"},
        lora: {type: "string"},
        merged: {type: "string"},
        logprobs: {type: "string"},
        label: {type: "string", default: "gguf_lora"},
        tolerance: {type: "string", default: "1e-3"},
        "min-effect": {type: "string", default: "0.1"}
    }
});
const reference = JSON.parse(readFileSync(args.logprobs, "utf8"));
const tokens = reference.tokens;
const failures = [];
const llama = await getLlama({gpu: false, build: "never", logLevel: "error"});

// log P of every vocabulary entry at every position: [positions][Map id -> log P]
async function distributions(modelPath, loraPath) {
    const model = await llama.loadModel({modelPath, gpuLayers: 0});
    const context = await model.createContext({
        contextSize: 256, batchSize: 256, threads: 2, flashAttention: false,
        experimentalKvCacheKeyType: "F32", experimentalKvCacheValueType: "F32",
        ...(loraPath ? {lora: {adapters: [{filePath: loraPath, scale: 1}]}} : {})
    });
    const full = {temperature: 1, topK: 0, topP: 1, minP: 0};
    const input = tokens.slice(0, -1).map((t) => [t, {generateNext: {probabilities: true, options: full}}]);
    const outputs = await context.getSequence().controlledEvaluate(input);
    const out = outputs.map((o) => o?.next?.probabilities);
    await context.dispose();
    await model.dispose();
    return out;
}
const adapted = await distributions(args.base, args.lora);
const merged = await distributions(args.merged, null);
const base = await distributions(args.base, null);

// max |Δ log P| over the entries with mftk log P > -20 (as llamacpp_check.mjs).
function maxDiff(x, y) {
    let worst = 0;
    for (let i = 0; i < tokens.length - 1; i++) {
        for (const {id, logprob} of reference.top[i]) {
            if (logprob <= -20) continue;
            const a = Math.log(x[i].get(id) ?? 0);
            const b = y === null ? logprob : Math.log(y[i].get(id) ?? 0);
            worst = Math.max(worst, Math.abs(a - b));
        }
    }
    return worst;
}
for (const [name, d] of [["base+adapter", adapted], ["merged", merged], ["base", base]])
    if (d.some((p) => p == null || p.size !== reference.top[0].length))
        failures.push(`${name}: llama.cpp did not give a full distribution at every position`);
const tolerance = Number(args.tolerance), minEffect = Number(args["min-effect"]);
const result = failures.length ? {} : {
    adapter_vs_merged_gguf: maxDiff(adapted, merged),
    adapter_vs_mftk_merged: maxDiff(adapted, null),
    merged_gguf_vs_mftk_merged: maxDiff(merged, null),
    base_vs_mftk_merged: maxDiff(base, null)
};
if (!failures.length) {
    for (const key of ["adapter_vs_merged_gguf", "adapter_vs_mftk_merged", "merged_gguf_vs_mftk_merged"])
        if (!(result[key] <= tolerance)) failures.push(`max |Δ logprob| ${key} ${result[key]} > tolerance ${tolerance}`);
    if (!(result.base_vs_mftk_merged >= minEffect))
        failures.push(`the adapter moves log P by only ${result.base_vs_mftk_merged} (< ${minEffect}): the check cannot see it`);
}
console.log(JSON.stringify({label: args.label, positions: tokens.length - 1, vocab: reference.top[0].length, ...result,
                            tolerance}));
await llama.dispose();
if (failures.length) {
    for (const f of failures) console.error(`${args.label}: FAIL: ${f}`);
    process.exit(1);
}
