// Our GGUF files through a second reader no one here wrote
// (@huggingface/gguf), and our encoded tensor bytes against ggml's own
// encoders (tests/interop/ggml_encode_oracle.c over node-llama-cpp's
// libggml-base.so):
//   - every file parses; the keys llama.cpp needs are there with the types
//     and values config.json and the tokenizer imply (added tokens typed
//     as llama.cpp's converter types them);
//   - tensor offsets are aligned, contiguous and inside the file;
//   - each F16 / BF16 / Q8_0 / Q4_K / Q6_K tensor is byte for byte what ggml makes of the
//     same tensor's F32 values (taken from the f32 export, so the Q/K row
//     order is the same);
//   - and that this comparison happened: every OTHER file must have had
//     tensors compared, and each type named in --expect at least one (a
//     check that compared nothing fails, it does not pass).
//   node second_reader_check.mjs --model DIR --oracle BIN --ggml LIB --expect F16,Q8_0 F32.gguf OTHER.gguf...
import {openSync, readSync, closeSync, readFileSync, statSync} from "node:fs";
import {spawnSync} from "node:child_process";
import {parseArgs} from "node:util";
import {gguf} from "@huggingface/gguf";

const {values: args, positionals: files} = parseArgs({
    options: {model: {type: "string"}, oracle: {type: "string"}, ggml: {type: "string"}, expect: {type: "string"}},
    allowPositionals: true
});
const config = JSON.parse(readFileSync(`${args.model}/config.json`, "utf8"));
const addedTokens = JSON.parse(readFileSync(`${args.model}/tokenizer_config.json`, "utf8")).added_tokens_decoder ?? {};
const failures = [];
const fail = (file, what) => failures.push(`${file}: ${what}`);
if (files.length < 2) fail("arguments", "need the F32 reference and at least one other file to compare with ggml");
if (!args.expect) fail("arguments", "--expect TYPES (e.g. F16,Q8_0) is required: the types that must be compared");

// ggml type id -> [name, block elements, block bytes, oracle function]
const types = {
    0: ["F32", 1, 4, null],
    1: ["F16", 1, 2, "ggml_fp32_to_fp16_row"],
    8: ["Q8_0", 32, 34, "quantize_row_q8_0_ref"],
    12: ["Q4_K", 256, 144, "quantize_row_q4_K_ref"],
    14: ["Q6_K", 256, 210, "quantize_row_q6_K_ref"],
    30: ["BF16", 1, 2, "ggml_fp32_to_bf16_row_ref"]
};
const U32 = 4, I32 = 5, F32 = 6, BOOL = 7, STRING = 8, ARRAY = 9;
const headDim = config.head_dim ?? config.hidden_size / config.num_attention_heads;
const expected = {
    "general.architecture": [STRING, "llama"],
    "llama.block_count": [U32, config.num_hidden_layers],
    "llama.context_length": [U32, config.max_position_embeddings],
    "llama.embedding_length": [U32, config.hidden_size],
    "llama.feed_forward_length": [U32, config.intermediate_size],
    "llama.attention.head_count": [U32, config.num_attention_heads],
    "llama.attention.head_count_kv": [U32, config.num_key_value_heads],
    "llama.rope.dimension_count": [U32, headDim],
    "llama.rope.freq_base": [F32, Math.fround(config.rope_theta)],
    "llama.attention.layer_norm_rms_epsilon": [F32, Math.fround(config.rms_norm_eps)],
    "llama.vocab_size": [U32, config.vocab_size],
    "tokenizer.ggml.model": [STRING, "llama"],
    "tokenizer.ggml.pre": [STRING, "default"],
    "tokenizer.ggml.bos_token_id": [U32, config.bos_token_id],
    "tokenizer.ggml.eos_token_id": [U32, config.eos_token_id],
    "tokenizer.ggml.add_bos_token": [BOOL, true],
    "tokenizer.ggml.add_eos_token": [BOOL, false],
    "general.alignment": [U32, 32]
};
if (headDim * config.num_attention_heads !== config.hidden_size) {
    expected["llama.attention.key_length"] = [U32, headDim];
    expected["llama.attention.value_length"] = [U32, headDim];
}

function readTensor(path, start, bytes) {
    const fd = openSync(path, "r");
    const buffer = Buffer.alloc(bytes);
    readSync(fd, buffer, 0, bytes, start);
    closeSync(fd);
    return buffer;
}

const parsed = [];
for (const file of files) {
    const g = await gguf(file, {allowLocalFile: true, typedMetadata: true});
    const m = g.typedMetadata;
    for (const [key, [type, value]] of Object.entries(expected)) {
        if (!(key in m)) fail(file, `missing ${key}`);
        else if (m[key].type !== type || m[key].value !== value)
            fail(file, `${key} = ${m[key].value} (type ${m[key].type}), expected ${value} (type ${type})`);
    }
    for (const [key, subType] of [["tokenizer.ggml.tokens", STRING], ["tokenizer.ggml.scores", F32], ["tokenizer.ggml.token_type", I32]]) {
        if (m[key]?.type !== ARRAY || m[key].subType !== subType || m[key].value.length !== config.vocab_size)
            fail(file, `${key} is not an array of ${config.vocab_size} items of type ${subType}`);
    }
    // Tokens tokenizer_config.json lists as added: control (3) when special,
    // user-defined (4) otherwise, score -1000, as llama.cpp's converter writes.
    for (const [id, entry] of Object.entries(addedTokens)) {
        const type = m["tokenizer.ggml.token_type"]?.value?.[Number(id)];
        const score = m["tokenizer.ggml.scores"]?.value?.[Number(id)];
        if (type !== (entry.special ? 3 : 4) || score !== -1000)
            fail(file, `added token ${id} (${entry.content}): type ${type}, score ${score}; expected ` +
                `${entry.special ? 3 : 4}, -1000`);
    }
    const size = BigInt(statSync(file).size);
    if (g.tensorDataOffset % 32n !== 0n) fail(file, `tensor data at ${g.tensorDataOffset}, not aligned`);
    let next = 0n;
    for (const t of g.tensorInfos) {
        const type = types[t.dtype];
        if (!type) { fail(file, `${t.name}: unexpected type ${t.dtype}`); continue; }
        const elements = t.shape.reduce((a, b) => a * b, 1n);
        t.nbytes = elements / BigInt(type[1]) * BigInt(type[2]);
        if (t.offset !== next) fail(file, `${t.name} at offset ${t.offset}, expected ${next}`);
        if (g.tensorDataOffset + t.offset + t.nbytes > size) fail(file, `${t.name} ends past the end of the file`);
        next = t.offset + (t.nbytes + 31n) / 32n * 32n;
    }
    parsed.push({file, g});
}

// Byte-for-byte against ggml, every non-F32 tensor of every file.
const [reference, ...others] = parsed;
const f32 = new Map(reference.g.tensorInfos.map((t) => [t.name, t]));
let compared = 0;
const encodedBy = {};
for (const {file, g} of others) {
    let comparedHere = 0;
    for (const t of g.tensorInfos) {
        const type = types[t.dtype];
        if (!type?.[3]) continue;
        const source = f32.get(t.name);
        if (!source || source.dtype !== 0) { fail(file, `${t.name} has no F32 twin in ${reference.file}`); continue; }
        const floats = readTensor(reference.file, Number(reference.g.tensorDataOffset + source.offset), Number(source.nbytes));
        const ours = readTensor(file, Number(g.tensorDataOffset + t.offset), Number(t.nbytes));
        const oracle = spawnSync(args.oracle, [args.ggml, type[3], String(type[1]), String(type[2])],
            {input: floats, maxBuffer: 1 << 30});
        if (oracle.status !== 0) { fail(file, `oracle failed: ${oracle.stderr}`); continue; }
        if (oracle.stdout.length !== ours.length) {
            fail(file, `${t.name} (${type[0]}): ggml made ${oracle.stdout.length} bytes, the file holds ${ours.length}`);
            continue;
        }
        if (Buffer.compare(oracle.stdout, ours) !== 0) {
            let first = 0;
            while (oracle.stdout[first] === ours[first]) first++;
            fail(file, `${t.name} (${type[0]}) differs from ggml's ${type[3]} at byte ${first} of ${ours.length}`);
        }
        compared++;
        comparedHere++;
        encodedBy[type[0]] = (encodedBy[type[0]] ?? 0) + 1;
    }
    if (comparedHere === 0) fail(file, "no tensor of this file was compared with ggml's encoders");
}
for (const name of (args.expect ?? "").split(",").filter((n) => n))
    if (!encodedBy[name]) fail("all files", `no ${name} tensor was compared with ggml's encoders`);
console.log(JSON.stringify({files: files.length, tensors_compared_with_ggml: compared, by_type: encodedBy,
    second_reader: "@huggingface/gguf", failures: failures.length}));
if (failures.length) {
    for (const f of failures) console.error(`FAIL: ${f}`);
    process.exit(1);
}
