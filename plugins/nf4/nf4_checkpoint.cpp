// bitsandbytes 4-bit checkpoint folders (see nf4_checkpoint.h).
#include "nf4_checkpoint.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "mftk/error.h"
#include "mftk/log.h"
#include "mftk/model.h"
#include "mftk/output_path.h"
#include "mftk/safetensors.h"
#include "nf4_linear.h"

namespace mftk::nf4 {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kQuantStateSuffix = ".weight.quant_state.bitsandbytes__nf4";
constexpr const char* kFp4StateSuffix = ".weight.quant_state.bitsandbytes__fp4";
// The OutputGuard kind of the 4-bit folders written here.
constexpr const char* kNf4CheckpointKind = "nf4-checkpoint";

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// torch's dtype names, as str(torch.bfloat16).strip("torch.") gives them.
std::string torch_dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "float32";
    case at::kBFloat16: return "bfloat16";
    case at::kHalf: return "float16";
    default:
      throw Error(fmt::format("nf4: weights of dtype {} have no bitsandbytes name", c10::toString(t)));
  }
}

at::ScalarType dtype_from_torch_name(const std::string& name, const std::string& where) {
  if (name == "float32") return at::kFloat;
  if (name == "bfloat16") return at::kBFloat16;
  if (name == "float16") return at::kHalf;
  throw Error(fmt::format("nf4: {}: dtype \"{}\" is not float32, bfloat16 or float16", where, name),
              "the checkpoint was not written by bitsandbytes' 4-bit Linear");
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("nf4: cannot read {}", path.string()), "check the folder and its permissions");
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

json bnb_quantization_config(const BnbConfigOptions& o) {
  // BitsAndBytesConfig(...).to_dict(): its attributes plus the two
  // load_in_* properties; transformers writes config.json with sorted keys.
  json c = json::object();
  c["_load_in_4bit"] = true;
  c["_load_in_8bit"] = false;
  c["bnb_4bit_compute_dtype"] = torch_dtype_name(o.compute_dtype);
  c["bnb_4bit_quant_storage"] = "uint8";
  c["bnb_4bit_quant_type"] = "nf4";
  c["bnb_4bit_use_double_quant"] = o.double_quant;
  c["llm_int8_enable_fp32_cpu_offload"] = false;
  c["llm_int8_has_fp16_weight"] = false;
  c["llm_int8_skip_modules"] = o.skip_modules;
  c["llm_int8_threshold"] = 6.0;
  c["load_in_4bit"] = true;
  c["load_in_8bit"] = false;
  c["quant_method"] = "bitsandbytes";
  return c;
}

// A tensor's bytes as the uint8 tensor bitsandbytes' pack_dict_to_tensor makes.
at::Tensor bytes_tensor(const std::string& text) {
  at::Tensor t = at::empty({static_cast<int64_t>(text.size())}, at::kByte);
  std::memcpy(t.data_ptr<uint8_t>(), text.data(), text.size());
  return t;
}

at::Tensor nf4_code_tensor() {
  at::Tensor t = at::empty({16}, at::kFloat);
  std::copy(kNf4Codes.begin(), kNf4Codes.end(), t.data_ptr<float>());
  return t;
}

}  // namespace

std::string python_float_repr(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "Infinity" : "-Infinity";
  if (value == 0.0) return std::signbit(value) ? "-0.0" : "0.0";
  // Shortest round-trip digits, as d.ddde±x.
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, value, std::chars_format::scientific);
  std::string sci(buf, r.ptr);
  std::string sign;
  if (sci[0] == '-') {
    sign = "-";
    sci.erase(0, 1);
  }
  const size_t e = sci.find('e');
  std::string digits = sci.substr(0, e);
  digits.erase(std::remove(digits.begin(), digits.end(), '.'), digits.end());
  const int exponent = std::stoi(sci.substr(e + 1));
  // Python's repr: scientific when exponent < -4 or >= 16, fixed otherwise.
  if (exponent < -4 || exponent >= 16) {
    std::string mantissa = digits.substr(0, 1);
    if (digits.size() > 1) mantissa += "." + digits.substr(1);
    return fmt::format("{}{}e{}{:02d}", sign, mantissa, exponent < 0 ? '-' : '+', std::abs(exponent));
  }
  std::string fixed;
  if (exponent < 0) {
    fixed = "0." + std::string(static_cast<size_t>(-exponent - 1), '0') + digits;
  } else {
    const size_t int_digits = static_cast<size_t>(exponent) + 1;
    if (digits.size() <= int_digits) {
      fixed = digits + std::string(int_digits - digits.size(), '0') + ".0";
    } else {
      fixed = digits.substr(0, int_digits) + "." + digits.substr(int_digits);
    }
  }
  return sign + fixed;
}

std::string quant_state_json(const Nf4Tensor& w) {
  // json.dumps with default separators ", " and ": ", keys in as_dict order.
  std::string text = fmt::format(R"({{"quant_type": "nf4", "blocksize": {}, "dtype": "{}", "shape": [{}])",
                                 w.blocksize, torch_dtype_name(w.dtype), fmt::join(w.shape, ", "));
  if (w.double_quant())
    text += fmt::format(R"(, "nested_blocksize": {}, "nested_dtype": "float32", "nested_offset": {})",
                        kNestedBlocksize, python_float_repr(static_cast<double>(w.offset)));
  return text + "}";
}

NamedTensors bnb_state_tensors(const std::string& module, const Nf4Tensor& w) {
  w.check(module);
  const std::string p = module + ".weight";
  NamedTensors out;
  out.emplace_back(p, w.packed.view({w.packed.numel(), 1}));
  if (w.double_quant()) {
    out.emplace_back(p + ".absmax", w.quantized_absmax);
    out.emplace_back(p + ".nested_absmax", w.nested_absmax);
    out.emplace_back(p + ".nested_quant_map", w.nested_map);
  } else {
    out.emplace_back(p + ".absmax", w.absmax);
  }
  out.emplace_back(p + ".quant_map", nf4_code_tensor());
  out.emplace_back(p + ".quant_state.bitsandbytes__nf4", bytes_tensor(quant_state_json(w)));
  return out;
}

void save_nf4_checkpoint(const std::string& source_dir, const Nf4Weights& quantized, const std::string& out_dir,
                         const BnbConfigOptions& config, uint64_t max_shard_bytes) {
  if (fs::exists(out_dir) && fs::equivalent(source_dir, out_dir))
    throw UsageError(fmt::format("nf4: the output folder {} is the source checkpoint", out_dir),
                     "write the 4-bit checkpoint to a new folder");
  const CheckpointReader reader = CheckpointReader::open(source_dir);
  for (const auto& [module, weight] : quantized) {
    const std::string name = module + ".weight";
    if (!reader.contains(name))
      throw Error(fmt::format("nf4: {} has no tensor '{}' for the quantised module '{}'", source_dir, name, module),
                  "save against the checkpoint the model was loaded from");
    if (reader.info(name).shape != weight->shape)
      throw Error(fmt::format("nf4: '{}' is [{}] in {}, but the quantised weight is [{}]", name,
                              fmt::join(reader.info(name).shape, ", "), source_dir, fmt::join(weight->shape, ", ")),
                  "save against the checkpoint the model was loaded from");
  }
  NamedTensors tensors;
  for (const auto& name : reader.names()) {
    const bool is_weight = ends_with(name, ".weight");
    const std::string module = is_weight ? name.substr(0, name.size() - 7) : std::string();
    auto it = is_weight ? quantized.find(module) : quantized.end();
    if (it == quantized.end()) {
      tensors.emplace_back(name, reader.get(name));  // a mapped view: written unchanged
      continue;
    }
    for (auto& t : bnb_state_tensors(module, *it->second)) tensors.push_back(std::move(t));
  }
  // Written privately and put in place at the end (mftk/output_path.h):
  // out_dir may be new, empty or a 4-bit folder mftk wrote, nothing else.
  OutputGuard guard(out_dir, kNf4CheckpointKind, OutputShape::folder);
  const std::string& staged = guard.path();
  save_checkpoint(staged, tensors, max_shard_bytes);

  // config.json gains quantization_config (sorted keys, indent 2, as transformers writes it).
  const fs::path source(source_dir);
  json cfg = json::parse(read_text(source / "config.json"));
  cfg["quantization_config"] = bnb_quantization_config(config);
  write_file_atomic((fs::path(staged) / "config.json").string(), cfg.dump(2) + "\n");
  // Tokenizer and generation files come along unchanged.
  for (const auto& entry : fs::directory_iterator(source)) {
    if (!entry.is_regular_file()) continue;
    const std::string file = entry.path().filename().string();
    if (file == "config.json" || ends_with(file, ".safetensors") || file == "model.safetensors.index.json")
      continue;
    fs::copy_file(entry.path(), fs::path(staged) / file);
  }
  guard.commit();
}

QuantizeReport quantize_checkpoint(const std::string& source_dir, const std::string& out_dir,
                                   const Nf4Options& options, const std::vector<std::string>* linear_modules) {
  check_output_path(out_dir, kNf4CheckpointKind, OutputShape::folder);  // refuse before quantising
  const CheckpointReader reader = CheckpointReader::open(source_dir);
  std::vector<std::string> modules;
  if (linear_modules) {
    modules = *linear_modules;
  } else {
    for (const auto& name : reader.names()) {
      if (!ends_with(name, ".weight") || reader.info(name).shape.size() != 2) continue;
      const std::string module = name.substr(0, name.size() - 7);
      if (module.find("embed") == std::string::npos) modules.push_back(module);
    }
  }
  Nf4Quantizer quantizer(options);
  Nf4Weights quantized;
  QuantizeReport report;
  for (const auto& module : modules) {
    if (!quantizer.wants(module)) continue;
    const std::string name = module + ".weight";
    if (!reader.contains(name)) continue;  // e.g. a tied lm_head
    const at::Tensor weight = reader.get(name);  // mapped; dropped after this iteration
    auto q = std::make_shared<Nf4Tensor>(quantize_nf4(weight, options.blocksize, options.double_quant));
    release_mapped_pages(weight);  // streaming: the source weight's pages leave the resident set
    report.bytes_in += weight.numel() * int64_t(weight.element_size());
    report.bytes_out += q->storage_bytes();
    quantized.emplace(module, std::move(q));
  }
  report.quantized = int64_t(quantized.size());

  BnbConfigOptions config;
  config.double_quant = options.double_quant;
  config.skip_modules = options.skip_modules;
  if (options.compute_dtype) {
    config.compute_dtype = *options.compute_dtype;
  } else {
    const json cfg = json::parse(read_text(fs::path(source_dir) / "config.json"));
    config.compute_dtype = cfg.value("torch_dtype", std::string()) == "bfloat16" ? at::kBFloat16 : at::kFloat;
  }
  save_nf4_checkpoint(source_dir, quantized, out_dir, config);
  return report;
}

Nf4Weights nf4_weights_of(Model& model) {
  Nf4Weights out;
  for (LinearSlot* slot : model.linear_slots())
    if (const auto* op = dynamic_cast<const Nf4Linear*>(slot->op.get())) out.emplace(slot->name, op->shared_weight());
  return out;
}

std::shared_ptr<const Nf4Tensor> read_nf4_module(const CheckpointReader& reader, const std::string& module,
                                                 const std::string& where, std::set<std::string>* used) {
  const std::string in = where.empty() ? std::string() : where + ": ";
  const std::string p = module + ".weight";
  if (reader.contains(module + kFp4StateSuffix))
    throw Error(fmt::format("nf4: {}'{}' is an FP4 weight; only NF4 is supported", in, module),
                "quantise the model with bnb_4bit_quant_type=\"nf4\"");
  const std::string state_name = module + kQuantStateSuffix;
  if (!reader.contains(state_name)) return nullptr;
  // Every size below is checked against the quant state's shape before a
  // byte is read: the file's dimensions are not trusted to fit each other.
  const char* kDamaged =
      "the 4-bit checkpoint is damaged or was not written by bitsandbytes / mftk; quantise the original "
      "checkpoint again (mftk quantize)";
  auto refuse = [&](const std::string& tensor, const std::string& message) {
    throw Error(fmt::format("nf4: {}tensor '{}': {}", in, tensor, message), kDamaged);
  };
  auto tensor = [&](const std::string& key) -> at::Tensor {
    if (!reader.contains(key))
      throw Error(fmt::format("nf4: {}'{}' has a quant state but no tensor '{}'", in, module, key),
                  "the checkpoint is incomplete");
    if (used) used->insert(key);
    return reader.get(key);
  };
  // A tensor of `dtype` holding `count` values, or the refusal saying what it holds instead.
  auto sized = [&](const std::string& key, at::ScalarType dtype, int64_t count, const std::string& why) {
    const at::Tensor t = tensor(key);
    if (t.scalar_type() != dtype)
      refuse(key, fmt::format("dtype is {}, expected {}", c10::toString(t.scalar_type()), c10::toString(dtype)));
    if (t.numel() != count) refuse(key, fmt::format("holds {} values, expected {} ({})", t.numel(), count, why));
    return t;
  };

  const at::Tensor state_bytes = tensor(state_name);
  if (state_bytes.scalar_type() != at::kByte || state_bytes.dim() != 1)
    refuse(state_name, "is not a 1-D uint8 tensor (bitsandbytes stores the quant state as JSON bytes)");
  const std::string text(reinterpret_cast<const char*>(state_bytes.data_ptr<uint8_t>()),
                         static_cast<size_t>(state_bytes.numel()));
  json state;
  try {
    state = json::parse(text);
  } catch (const std::exception& e) {
    refuse(state_name, fmt::format("does not hold JSON: {}", e.what()));
  }
  auto w = std::make_shared<Nf4Tensor>();
  try {
    if (state.at("quant_type").get<std::string>() != "nf4")
      throw Error(fmt::format("quant_type is \"{}\", not \"nf4\"", state.at("quant_type").get<std::string>()));
    const json& blocksize = state.at("blocksize");
    if (!blocksize.is_number_integer() || !is_bitsandbytes_blocksize(blocksize.get<int64_t>()))
      throw Error(fmt::format("blocksize {} is not one bitsandbytes' 4-bit kernels take (a power of two from {} to {})",
                              blocksize.dump(), kMinBlocksize, kMaxBlocksize));
    w->blocksize = blocksize.get<int64_t>();
    w->dtype = dtype_from_torch_name(state.at("dtype").get<std::string>(), state_name);
    const json& shape = state.at("shape");
    bool integers = shape.is_array();
    for (const json& d : shape) integers = integers && d.is_number_integer();
    if (!integers || shape.size() != 2)
      throw Error(fmt::format("shape {} is not [out, in] (a 4-bit weight is a linear layer's)", shape.dump()));
    w->shape = shape.get<std::vector<int64_t>>();
    if (checked_numel(w->shape) < 0)
      throw Error(fmt::format("shape {} has an empty dimension or more values than an int64 counts", shape.dump()));
    if (state.contains("nested_blocksize")) {
      if (state.at("nested_blocksize") != kNestedBlocksize)
        throw Error(fmt::format("nested_blocksize {} is not {}", state.at("nested_blocksize").dump(),
                                kNestedBlocksize));
      if (state.at("nested_dtype").get<std::string>() != "float32")
        throw Error(fmt::format("nested_dtype is \"{}\", not \"float32\"", state.at("nested_dtype").get<std::string>()));
      w->offset = static_cast<float>(state.at("nested_offset").get<double>());
      if (!std::isfinite(w->offset))
        throw Error(fmt::format("nested_offset {} is not a finite float32", state.at("nested_offset").dump()));
    }
  } catch (const json::exception& e) {
    throw Error(fmt::format("nf4: {}quant state of '{}' ({}) is malformed: {}", in, module, state_name, e.what()),
                "expected the keys quant_type, blocksize, dtype, shape (and nested_* with double quant)");
  } catch (const Error& e) {
    throw Error(fmt::format("nf4: {}tensor '{}': {}", in, state_name, e.what()),
                "only bitsandbytes NF4 weights can be read");
  }

  const int64_t n = w->numel();  // safe: checked_numel above
  const std::string shape_text = fmt::format("[{}]", fmt::join(w->shape, ", "));
  const at::Tensor packed =
      sized(p, at::kByte, (n + 1) / 2, fmt::format("two 4-bit values a byte for shape {}", shape_text));
  if (!(packed.dim() == 1 || (packed.dim() == 2 && packed.size(1) == 1)))
    refuse(p, fmt::format("shape [{}] is not [{}, 1]", fmt::join(packed.sizes(), ", "), (n + 1) / 2));
  w->packed = packed.reshape({packed.numel()});
  const std::string per_block =
      fmt::format("one per block of {} for shape {}: {} values", w->blocksize, shape_text, n);
  const at::Tensor quant_map = sized(p + ".quant_map", at::kFloat, 16, "the 16 NF4 codes");
  if (std::memcmp(quant_map.data_ptr<float>(), kNf4Codes.data(), sizeof(float) * 16) != 0)
    throw Error(fmt::format("nf4: {}'{}.quant_map' is not the NF4 code table", in, p),
                "only bitsandbytes NF4 weights can be read");
  if (state.contains("nested_blocksize")) {
    w->quantized_absmax = sized(p + ".absmax", at::kByte, w->blocks(), per_block);
    w->nested_absmax = sized(p + ".nested_absmax", at::kFloat, (w->blocks() + kNestedBlocksize - 1) / kNestedBlocksize,
                             fmt::format("one per {} absmax values", kNestedBlocksize));
    w->nested_map = sized(p + ".nested_quant_map", at::kFloat, 256, "the 8-bit dynamic map");
  } else {
    w->absmax = sized(p + ".absmax", at::kFloat, w->blocks(), per_block);
  }
  w->check(fmt::format("{}'{}'", in, module));
  return w;
}

Nf4Checkpoint load_nf4_checkpoint(const std::string& dir) {
  const CheckpointReader reader = CheckpointReader::open(dir);
  Nf4Checkpoint out;
  std::set<std::string> used;
  for (const auto& name : reader.names()) {
    if (ends_with(name, kFp4StateSuffix))
      throw Error(fmt::format("nf4: {}: '{}' is an FP4 weight; only NF4 is supported", dir, name),
                  "quantise the model with bnb_4bit_quant_type=\"nf4\"");
    if (!ends_with(name, kQuantStateSuffix)) continue;
    const std::string module = name.substr(0, name.size() - std::strlen(kQuantStateSuffix));
    out.quantized.emplace(module, read_nf4_module(reader, module, dir, &used));
  }
  for (const auto& name : reader.names())
    if (!used.count(name)) out.other_tensors.push_back(name);
  return out;
}

ExportReport Nf4Exporter::run(const ExportJob& job) {
  std::vector<std::string> slot_names;
  if (job.model)
    for (LinearSlot* slot : job.model->linear_slots()) slot_names.push_back(slot->name);
  const QuantizeReport r = quantize_checkpoint(job.model_dir, job.out, options_, job.model ? &slot_names : nullptr);
  int64_t bytes = 0;
  for (const auto& entry : fs::directory_iterator(job.out))
    if (entry.is_regular_file()) bytes += int64_t(entry.file_size());
  const std::string summary =
      fmt::format("{} linear weights as NF4 (block {}{}): {:.1f} MB -> {:.1f} MB", r.quantized, options_.blocksize,
                  options_.double_quant ? ", double quant" : "", r.bytes_in / 1e6, r.bytes_out / 1e6);
  log::info("nf4: {} -> {}: {}", job.model_dir, job.out, summary);
  return {job.out, bytes, summary};
}

}  // namespace mftk::nf4
