// A GGUF file mftk wrote, read back from disk as a plain Hugging Face
// checkpoint folder, for the export parity gate (core/model/export_parity.h):
// every tensor decoded from its stored type (F32, F16, BF16, Q8_0, Q4_K,
// Q6_K) with the decoders llama.cpp's formats define, the q/k rows put back
// in HF's RoPE order, and the hyperparameters taken from the file's
// metadata, so what is compared is what a GGUF reader computes.
//
// defines: mftk::gguf::read_back_gguf
#pragma once

#include <string>

namespace mftk::gguf {

// Writes out_dir/model.safetensors (fp32), out_dir/config.json (model_dir's
// config.json with the file's llama.* hyperparameters written over it) and
// the tokenizer files. model_dir: the folder the file was exported from; it
// names the tensors (the Mistral plugin's table) and holds the tokenizer.
// Returns out_dir. Throws mftk::Error when a tensor is missing from the file
// or has another shape than the model needs.
std::string read_back_gguf(const std::string& gguf_path, const std::string& model_dir, const std::string& out_dir);

}  // namespace mftk::gguf
