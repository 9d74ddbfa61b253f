// Multiplies every 2-D float32 tensor of a model.safetensors in place by a
// factor. A random `mftk init` model (weights ~ N(0, 0.02)) has nearly flat
// attention and nearly uniform next-token distributions, so a wrong Q/K row
// order or RoPE pairing would barely move the answers; scaled weights make
// attention sharp and the comparison sensitive to exactly those mistakes.
//   node scale_weights.mjs DIR/model.safetensors FACTOR
import {readFileSync, writeFileSync} from "node:fs";

const [path, factorText] = process.argv.slice(2);
const factor = Number(factorText);
const bytes = readFileSync(path);
const headerSize = Number(bytes.readBigUInt64LE(0));
const header = JSON.parse(bytes.subarray(8, 8 + headerSize).toString("utf8"));
const dataStart = 8 + headerSize;
for (const [name, info] of Object.entries(header)) {
    if (name === "__metadata__" || info.shape.length !== 2) continue;
    if (info.dtype !== "F32") throw new Error(`${path}: ${name} is ${info.dtype}; run mftk init with --dtype f32`);
    const [begin, end] = info.data_offsets;
    for (let at = dataStart + begin; at < dataStart + end; at += 4) bytes.writeFloatLE(bytes.readFloatLE(at) * factor, at);
}
writeFileSync(path, bytes);
