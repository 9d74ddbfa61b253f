// llama.cpp's reading of a rendered chat prompt, as Ollama has it tokenised
// (BOS, then the text with special tokens parsed), against mftk's chat
// encoding of the same conversation (`mftk tokenize --chat-json`). The text
// is what the Modelfile's TEMPLATE renders for that conversation
// (OllamaTemplate.RenderedTextAsTheFormatIsWrittenOut pins that string).
// Exits 1 when the ids differ.
//   node prompt_tokens_check.mjs --gguf F --text-file T --tokenize TOK.json --label NAME
import {readFileSync} from "node:fs";
import {parseArgs} from "node:util";
import {getLlama} from "node-llama-cpp";

const {values: args} = parseArgs({
    options: {gguf: {type: "string"}, "text-file": {type: "string"}, tokenize: {type: "string"}, label: {type: "string"}}
});
const text = readFileSync(args["text-file"], "utf8");
const want = JSON.parse(readFileSync(args.tokenize, "utf8")).ids;
const llama = await getLlama({gpu: false, build: "never", logLevel: "error"});
const model = await llama.loadModel({modelPath: args.gguf, gpuLayers: 0});
const got = [model.tokens.bos, ...model.tokenize(text, true)];
const same = JSON.stringify(got) === JSON.stringify(want);
console.log(JSON.stringify({label: args.label, tokens: want.length, equal: same}));
await model.dispose();
await llama.dispose();
if (!same) {
    console.error(`${args.label}: FAIL: llama.cpp ${JSON.stringify(got)}\n  mftk      ${JSON.stringify(want)}`);
    process.exit(1);
}
