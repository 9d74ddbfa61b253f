// The negative control of check-gguf-llamacpp.sh: rewrites a checkpoint's
// q_proj / k_proj rows so that exporting it gives the ORIGINAL rows in the
// GGUF, i.e. what an exporter that forgot llama.cpp's RoPE row order would
// write. llama.cpp must then disagree with mftk on the original checkpoint;
// if it does not, the comparison is too weak to catch that mistake.
//   node undo_rope_order.mjs MODEL_DIR
import {readFileSync, writeFileSync} from "node:fs";

const dir = process.argv[2];
const config = JSON.parse(readFileSync(`${dir}/config.json`, "utf8"));
const path = `${dir}/model.safetensors`;
const bytes = readFileSync(path);
const headerSize = Number(bytes.readBigUInt64LE(0));
const header = JSON.parse(bytes.subarray(8, 8 + headerSize).toString("utf8"));
const dataStart = 8 + headerSize;

// The exporter writes GGUF row h*D + 2k + s from HF row h*D + s*D/2 + k.
// Storing original row (h*D + 2k + s) at (h*D + s*D/2 + k) undoes it.
function undo(info, heads) {
    const [rows, cols] = info.shape;
    const headDim = rows / heads, half = headDim / 2, rowBytes = cols * 4;
    const begin = dataStart + info.data_offsets[0];
    const original = Buffer.from(bytes.subarray(begin, begin + rows * rowBytes));
    for (let h = 0; h < heads; h++)
        for (let k = 0; k < half; k++)
            for (let s = 0; s < 2; s++) {
                const from = h * headDim + 2 * k + s, to = h * headDim + s * half + k;
                original.copy(bytes, begin + to * rowBytes, from * rowBytes, (from + 1) * rowBytes);
            }
}
for (const [name, info] of Object.entries(header)) {
    if (name.endsWith("self_attn.q_proj.weight")) undo(info, config.num_attention_heads);
    if (name.endsWith("self_attn.k_proj.weight")) undo(info, config.num_key_value_heads);
}
writeFileSync(path, bytes);
