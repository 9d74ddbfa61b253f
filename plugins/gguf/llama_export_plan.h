// What a Mistral checkpoint becomes in a GGUF file for llama.cpp's `llama`
// architecture (docs/formats.md §4.3-4.6, GGUF for llama): the metadata (hyperparameters and the
// sentencepiece vocabulary) and, for every tensor, its GGUF name, type,
// shape and whether its rows are reordered for llama.cpp's RoPE. Names come
// from the Mistral plugin's one table (plugins/mistral/tensor_names.h).
//
// defines: mftk::gguf::Encoding, mftk::gguf::parse_encoding, mftk::gguf::to_string(Encoding),
//          mftk::gguf::llama_rope_row_order, mftk::gguf::TokenizerFacts,
//          mftk::gguf::load_tokenizer_facts, mftk::gguf::llama_metadata,
//          mftk::gguf::PlannedTensor, mftk::gguf::plan_llama_tensors
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "gguf_writer.h"
#include "mftk/model.h"

namespace mftk {
class Tokenizer;
class CheckpointReader;
}  // namespace mftk

namespace mftk::gguf {

// The `type` key: how the 2-D weights are stored (norms are always F32).
// q4_k / q6_k: every 2-D weight in that K-quant; q4_k_m: llama-quantize's
// Q4_K_M mix (Q4_K, with Q6_K for the output matrix and for attn_v and
// ffn_down in the layers use_more_bits picks).
enum class Encoding { f32, f16, bf16, q8_0, q4_k, q6_k, q4_k_m };

// nullopt for anything else; the exporter names the supported ones.
std::optional<Encoding> parse_encoding(const std::string& name);
std::string to_string(Encoding e);
GgmlType weight_type(Encoding e);  // the type most 2-D weights get
uint32_t llama_file_type(Encoding e);  // general.file_type (LlamaFileType)

// llama-quantize's layer choice for the extra bits of the *_M mixes: the
// first and last eighth of the layers, and every third one in between.
bool use_more_bits(int64_t layer, int64_t n_layers);

// HF keeps each head's rotation pairs half a head apart (rotate_half);
// llama.cpp's RoPE rotates adjacent rows. For a q or k projection of
// n_head heads (k: the KV heads), GGUF row h*D + 2k + s is HF row
// h*D + s*D/2 + k (the converter's reshape(n_head, 2, D/2, in) then
// swapaxes(1, 2)). Returns, for each GGUF row, the HF row it holds.
std::vector<int64_t> llama_rope_row_order(int64_t rows, int64_t n_head);

// The vocabulary facts GGUF carries, from the checkpoint's tokenizer files.
struct TokenizerFacts {
  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<int32_t> types;  // llama token types (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte)
  uint32_t bos = 1, eos = 2, unk = 0;
  std::optional<uint32_t> pad;
  bool add_bos = true, add_eos = false;
  std::string chat_template;  // empty: none in tokenizer_config.json
};

// Reads tokenizer.model (through mftk's Tokenizer), added_tokens.json and
// tokenizer_config.json, and builds the vocabulary as llama.cpp's HF
// converter does (the rules in llama_export_plan.cpp): sentencepiece's pieces
// and scores, padded to vocab_size with "[PAD<i>]" (score -10000, unused),
// then the added tokens (score -1000; control when special, else
// user-defined). Throws when the tokenizer has more pieces than the model has
// embeddings.
TokenizerFacts load_tokenizer_facts(const std::string& model_dir, int64_t vocab_size);

// Every key llama.cpp reads for a llama-architecture SentencePiece model,
// in the order the converter writes them.
// What the llama writer reads of a checkpoint: the model plugin's shape and
// tensor table for it (mftk/model.h), never another plugin's code.
struct DescribedCheckpoint {
  ModelShape shape;
  ModelArchitecture architecture;
};
// The default model plugin, through the host's registry, on model_dir's config.json.
DescribedCheckpoint describe_checkpoint(const std::string& model_dir);

// llama.cpp's name for a tensor of `role` ("blk.3.attn_q.weight"); throws for
// a role llama's layout has no place for.
std::string llama_tensor_name(TensorRole role, int64_t layer, const std::string& hf_name);
// The heads whose rows llama.cpp wants in its RoPE order (q: heads, k: KV
// heads), 0 for every other tensor.
int64_t llama_rope_heads(TensorRole role, const ModelShape& shape);

GgufWriter::Metadata llama_metadata(const ModelShape& shape, const TokenizerFacts& tokenizer,
                                    Encoding encoding, const std::string& name);

struct PlannedTensor {
  std::string hf_name;
  std::vector<int64_t> hf_shape;   // torch order
  GgufTensorDecl decl;             // GGUF name, type, ne
  int64_t rope_heads = 0;          // > 0: rows reordered with llama_rope_row_order
  bool fell_back = false;          // ne[0] not a multiple of the block: Q8_0 -> F16, K-quants -> Q8_0
};

// The tensors in HF state-dict order; lm_head is left out when the
// embeddings are tied. Checks that the checkpoint holds exactly these
// tensors with these shapes (errors name the tensor).
std::vector<PlannedTensor> plan_llama_tensors(const DescribedCheckpoint& model, const CheckpointReader& checkpoint,
                                              Encoding encoding, const std::string& model_dir);

}  // namespace mftk::gguf
