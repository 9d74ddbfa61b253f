// Writes a PEFT LoRA adapter folder (adapter_config.json +
// adapter_model.safetensors, F32) with random, non-zero A and B for every
// q/k/v/o/gate/up/down projection of a Mistral checkpoint, so that applying
// it changes every layer's output: the adapter the gguf_lora check exports.
// A real adapter after a few training steps has a nearly zero B, which
// would let a wrong row order or scale pass unnoticed.
// --scramble-qk (the negative control): q/k B rows are stored in the inverse
// of llama.cpp's RoPE order, so that after an exporter's permutation the
// file holds them in Hugging Face order, as an exporter that forgot the
// permutation would write them. Same seed, same values otherwise.
//   node random_lora.mjs --model DIR --out DIR --r R --alpha A [--rslora] [--seed S] [--scramble-qk]
import {mkdirSync, readFileSync, writeFileSync} from "node:fs";
import {parseArgs} from "node:util";

const {values: args} = parseArgs({
    options: {
        model: {type: "string"},
        out: {type: "string"},
        r: {type: "string", default: "4"},
        alpha: {type: "string", default: "8"},
        rslora: {type: "boolean", default: false},
        "scramble-qk": {type: "boolean", default: false},
        seed: {type: "string", default: "1"},
        "a-std": {type: "string", default: "0.3"},
        "b-std": {type: "string", default: "0.05"}
    }
});
const config = JSON.parse(readFileSync(`${args.model}/config.json`, "utf8"));
const r = Number(args.r);
const headDim = config.head_dim ?? config.hidden_size / config.num_attention_heads;
const H = config.hidden_size, I = config.intermediate_size;
const q = config.num_attention_heads * headDim, kv = config.num_key_value_heads * headDim;
// [module path, out, in] for each adapted projection.
const modules = [];
for (let l = 0; l < config.num_hidden_layers; l++) {
    const p = `model.layers.${l}`;
    modules.push([`${p}.self_attn.q_proj`, q, H], [`${p}.self_attn.k_proj`, kv, H], [`${p}.self_attn.v_proj`, kv, H],
                 [`${p}.self_attn.o_proj`, H, q], [`${p}.mlp.gate_proj`, I, H], [`${p}.mlp.up_proj`, I, H],
                 [`${p}.mlp.down_proj`, H, I]);
}

// mulberry32 + Box-Muller: the same adapter for the same seed, on any machine.
let state = Number(args.seed) >>> 0;
const uniform = () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
};
const normal = () => Math.sqrt(-2 * Math.log(1 - uniform())) * Math.cos(2 * Math.PI * uniform());

const tensors = [];  // [name, shape, Float32Array]
const fill = (n, std) => Float32Array.from({length: n}, () => std * normal());
// llama.cpp's row order for n heads: row h*D + 2k + s holds HF row h*D + s*D/2 + k.
const scramble = (b, rows, heads) => {
    const D = rows / heads, half = D / 2, out = new Float32Array(b.length);
    for (let h = 0; h < heads; h++)
        for (let k = 0; k < half; k++)
            for (let s = 0; s < 2; s++)
                out.set(b.subarray((h * D + 2 * k + s) * r, (h * D + 2 * k + s + 1) * r), (h * D + s * half + k) * r);
    return out;
};
for (const [path, out, inn] of modules) {
    tensors.push([`base_model.model.${path}.lora_A.weight`, [r, inn], fill(r * inn, Number(args["a-std"]))]);
    let b = fill(out * r, Number(args["b-std"]));
    if (args["scramble-qk"] && path.endsWith("q_proj")) b = scramble(b, out, config.num_attention_heads);
    if (args["scramble-qk"] && path.endsWith("k_proj")) b = scramble(b, out, config.num_key_value_heads);
    tensors.push([`base_model.model.${path}.lora_B.weight`, [out, r], b]);
}
tensors.sort((x, y) => (x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : 0));
const header = {__metadata__: {format: "pt"}};
let offset = 0;
for (const [name, shape, data] of tensors) {
    header[name] = {dtype: "F32", shape, data_offsets: [offset, offset + data.byteLength]};
    offset += data.byteLength;
}
let headerText = JSON.stringify(header);
headerText += " ".repeat((8 - (headerText.length % 8)) % 8);
const file = Buffer.alloc(8 + headerText.length + offset);
file.writeBigUInt64LE(BigInt(headerText.length), 0);
file.write(headerText, 8, "utf8");
let at = 8 + headerText.length;
for (const [, , data] of tensors) {
    Buffer.from(data.buffer).copy(file, at);
    at += data.byteLength;
}
mkdirSync(args.out, {recursive: true});
writeFileSync(`${args.out}/adapter_model.safetensors`, file);
writeFileSync(`${args.out}/adapter_config.json`, JSON.stringify({
    peft_type: "LORA", task_type: "CAUSAL_LM", base_model_name_or_path: args.model, r, lora_alpha: Number(args.alpha),
    lora_dropout: 0, target_modules: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    use_rslora: args.rslora, bias: "none", fan_in_fan_out: false, modules_to_save: null, inference_mode: true
}, null, 2) + "\n");
