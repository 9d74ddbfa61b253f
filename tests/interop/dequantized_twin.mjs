// Writes the checkpoint llama.cpp effectively runs from a quantised GGUF:
// every tensor decoded with ggml's own decoders (ggml_encode_oracle over
// node-llama-cpp's libggml-base.so), the Q/K rows put back in Hugging Face
// order, stored as F32 into a copy of the source checkpoint (same names,
// shapes and offsets). mftk on this twin and llama.cpp on the GGUF then see
// the same weights, so what is left between them is how each computes,
// not how much the quantisation lost.
//   node dequantized_twin.mjs --gguf F --twin DIR --oracle BIN --ggml LIB
import {readFileSync, writeFileSync, openSync, readSync, closeSync} from "node:fs";
import {spawnSync} from "node:child_process";
import {parseArgs} from "node:util";
import {gguf} from "@huggingface/gguf";

const {values: args} = parseArgs({
    options: {gguf: {type: "string"}, twin: {type: "string"}, oracle: {type: "string"}, ggml: {type: "string"}}
});
const decoders = {  // ggml type id -> [decoder, block elements, block bytes]
    1: ["ggml_fp16_to_fp32_row", 1, 2],
    8: ["dequantize_row_q8_0", 32, 34],
    12: ["dequantize_row_q4_K", 256, 144],
    14: ["dequantize_row_q6_K", 256, 210],
    30: ["ggml_bf16_to_fp32_row", 1, 2]
};
const config = JSON.parse(readFileSync(`${args.twin}/config.json`, "utf8"));
const path = `${args.twin}/model.safetensors`;
const st = readFileSync(path);
const headerSize = Number(st.readBigUInt64LE(0));
const header = JSON.parse(st.subarray(8, 8 + headerSize).toString("utf8"));
const dataStart = 8 + headerSize;

// GGUF name -> HF name (docs/formats.md §4.4, GGUF tensor names) and the head count of its RoPE row order.
const perLayer = {
    attn_q: ["self_attn.q_proj", config.num_attention_heads], attn_k: ["self_attn.k_proj", config.num_key_value_heads],
    attn_v: ["self_attn.v_proj", 0], attn_output: ["self_attn.o_proj", 0], ffn_gate: ["mlp.gate_proj", 0],
    ffn_up: ["mlp.up_proj", 0], ffn_down: ["mlp.down_proj", 0], attn_norm: ["input_layernorm", 0],
    ffn_norm: ["post_attention_layernorm", 0]
};
function hfName(name) {
    if (name === "token_embd.weight") return ["model.embed_tokens.weight", 0];
    if (name === "output_norm.weight") return ["model.norm.weight", 0];
    if (name === "output.weight") return ["lm_head.weight", 0];
    const m = /^blk\.(\d+)\.(\w+)\.weight$/.exec(name);
    const [module, heads] = perLayer[m[2]];
    return [`model.layers.${m[1]}.${module}.weight`, heads];
}

const g = await gguf(args.gguf, {allowLocalFile: true});
const fd = openSync(args.gguf, "r");
for (const t of g.tensorInfos) {
    const elements = Number(t.shape.reduce((a, b) => a * b, 1n));
    let floats;
    if (t.dtype === 0) {
        floats = Buffer.alloc(elements * 4);
        readSync(fd, floats, 0, floats.length, Number(g.tensorDataOffset + t.offset));
    } else {
        const [fn, block, bytes] = decoders[t.dtype];
        const encoded = Buffer.alloc(elements / block * bytes);
        readSync(fd, encoded, 0, encoded.length, Number(g.tensorDataOffset + t.offset));
        const r = spawnSync(args.oracle, [args.ggml, fn, String(block), String(bytes)], {input: encoded, maxBuffer: 1 << 30});
        if (r.status !== 0) throw new Error(`oracle ${fn}: ${r.stderr}`);
        floats = r.stdout;
    }
    const [name, heads] = hfName(t.name);
    const info = header[name];
    if (!info || info.dtype !== "F32" || info.data_offsets[1] - info.data_offsets[0] !== floats.length)
        throw new Error(`${path}: no F32 ${name} of ${floats.length} bytes for ${t.name}`);
    const base = dataStart + info.data_offsets[0];
    if (heads === 0) {
        floats.copy(st, base);
        continue;
    }
    // GGUF row h*D + 2k + s holds HF row h*D + s*D/2 + k.
    const cols = Number(t.shape[0]), rows = elements / cols, headDim = rows / heads, rowBytes = cols * 4;
    for (let h = 0; h < heads; h++)
        for (let k = 0; k < headDim / 2; k++)
            for (let s = 0; s < 2; s++) {
                const from = h * headDim + 2 * k + s, to = h * headDim + s * (headDim / 2) + k;
                floats.copy(st, base + to * rowBytes, from * rowBytes, (from + 1) * rowBytes);
            }
}
closeSync(fd);
writeFileSync(path, st);
