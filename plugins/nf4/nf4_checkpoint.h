// NF4 checkpoint folders in the layout transformers + bitsandbytes save and
// load for 4-bit models (docs/formats.md §6.4, NF4 checkpoint keys): per quantised module P
//   P.weight                                 uint8 [(numel + 1) / 2, 1]
//   P.weight.absmax                          float32 [blocks] (uint8 with double quant)
//   P.weight.quant_map                       float32 [16]
//   P.weight.nested_absmax                   float32, double quant only
//   P.weight.nested_quant_map                float32 [256], double quant only
//   P.weight.quant_state.bitsandbytes__nf4   uint8: json.dumps of the quant state
// every other tensor unchanged, and config.json with "quantization_config".
//
// defines: mftk::nf4::Nf4Weights, mftk::nf4::python_float_repr, mftk::nf4::quant_state_json,
//          mftk::nf4::bnb_state_tensors, mftk::nf4::BnbConfigOptions, mftk::nf4::save_nf4_checkpoint,
//          mftk::nf4::QuantizeReport, mftk::nf4::quantize_checkpoint, mftk::nf4::nf4_weights_of,
//          mftk::nf4::Nf4Checkpoint, mftk::nf4::read_nf4_module, mftk::nf4::load_nf4_checkpoint, mftk::nf4::Nf4Exporter
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <c10/core/ScalarType.h>

#include "mftk/exporter.h"
#include "mftk/tensor.h"
#include "nf4_quantizer.h"
#include "nf4_tensor.h"

namespace mftk {
class CheckpointReader;
class Model;
}

namespace mftk::nf4 {

// Quantised weights by module name ("model.layers.0.mlp.up_proj").
using Nf4Weights = std::map<std::string, std::shared_ptr<const Nf4Tensor>>;

// A double as Python's repr() / json.dumps writes it: shortest digits that
// round-trip, "0.0001" but "1e-05", "2.0", "1e+16", "Infinity", "NaN".
std::string python_float_repr(double value);

// The quant_state JSON text, byte for byte as bitsandbytes' QuantState.as_dict
// (packed) writes it with json.dumps: {"quant_type": "nf4", "blocksize": 64,
// "dtype": "bfloat16", "shape": [out, in]} and, with double quant,
// "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": x.
std::string quant_state_json(const Nf4Tensor& weight);

// The tensors one quantised module contributes (names as in the header).
NamedTensors bnb_state_tensors(const std::string& module, const Nf4Tensor& weight);

// What config.json's quantization_config says (BitsAndBytesConfig.to_dict()).
struct BnbConfigOptions {
  bool double_quant = false;
  at::ScalarType compute_dtype = at::kFloat;    // bnb_4bit_compute_dtype
  std::vector<std::string> skip_modules = {"lm_head"};  // llm_int8_skip_modules
};

// Writes out_dir from the checkpoint folder source_dir: each module in
// `quantized` as its bitsandbytes tensors instead of "<module>.weight",
// every other tensor unchanged (sharded like save_checkpoint), config.json
// with quantization_config added, the other files (tokenizer ...) copied.
// Throws when a module is not in the source or its shape differs.
void save_nf4_checkpoint(const std::string& source_dir, const Nf4Weights& quantized, const std::string& out_dir,
                         const BnbConfigOptions& config, uint64_t max_shard_bytes = 5'000'000'000ULL);

struct QuantizeReport {
  int64_t quantized = 0;  // modules written as NF4
  int64_t bytes_in = 0;   // of those weights in the source
  int64_t bytes_out = 0;  // packed + absmax
};

// Quantises the linear weights of source_dir and writes out_dir with
// save_nf4_checkpoint. linear_modules: the modules to consider (a model's
// slot names); when null, every 2-D "<module>.weight" whose name has no
// "embed" in it. options.skip_modules are left dense. Memory: the packed
// weights plus one weight at a time.
QuantizeReport quantize_checkpoint(const std::string& source_dir, const std::string& out_dir,
                                   const Nf4Options& options,
                                   const std::vector<std::string>* linear_modules = nullptr);

// The NF4 weights a model's slots hold (slots whose op is an Nf4Linear;
// ops wrapped by an adapter are not looked into).
Nf4Weights nf4_weights_of(Model& model);

// A bitsandbytes 4-bit folder read back: the quantised weights (mapped
// views of the files, not copies), and the names of every other tensor.
struct Nf4Checkpoint {
  Nf4Weights quantized;
  std::vector<std::string> other_tensors;  // sorted
};

// One module of an open bitsandbytes 4-bit checkpoint (views of the mapped
// files), or nullptr when the module has no NF4 quant state there. `where`
// names the checkpoint in errors; `used` collects the tensor names read.
std::shared_ptr<const Nf4Tensor> read_nf4_module(const CheckpointReader& reader, const std::string& module,
                                                 const std::string& where, std::set<std::string>* used = nullptr);

// Reads every "<module>.weight.quant_state.bitsandbytes__nf4" module of a
// folder written by save_nf4_checkpoint or by transformers' save_pretrained.
// fp4 modules, a quant_map other than NF4's, missing or mis-sized tensors
// are errors naming the tensor.
Nf4Checkpoint load_nf4_checkpoint(const std::string& dir);

// The "nf4" exporter: `mftk export --plugin nf4 --model DIR --out DIR2`
// writes DIR as a bitsandbytes 4-bit checkpoint (quantize_checkpoint; the
// loaded model's slot names when the job has one).
class Nf4Exporter final : public Exporter {
 public:
  explicit Nf4Exporter(Nf4Options options) : options_(std::move(options)) {}
  ExportReport run(const ExportJob& job) override;

 private:
  Nf4Options options_;
};

}  // namespace mftk::nf4
