// AWQ folder -> dense checkpoint folder for the export parity gate (awq_readback.h).
#include "awq_readback.h"

#include <filesystem>
#include <fstream>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "awq_exporter.h"
#include "awq_quant.h"
#include "mftk/error.h"
#include "mftk/safetensors.h"

namespace mftk::awq {

namespace fs = std::filesystem;

at::Tensor unpack_int4_columns(const at::Tensor& packed) {
  MFTK_CHECK(packed.dim() == 2 && packed.scalar_type() == at::kInt, "awq read-back: packed columns must be int32 [rows, words]");
  const at::Tensor words = packed.contiguous();
  const int64_t rows = words.size(0), n_words = words.size(1);
  at::Tensor values = at::empty({rows, n_words * 8}, at::kInt);
  const int32_t* in = words.data_ptr<int32_t>();
  int32_t* out = values.data_ptr<int32_t>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < n_words; ++c) {
      const uint32_t word = uint32_t(in[r * n_words + c]);
      // Nibble i (bits 4i..4i+3) holds column 8c + kPackOrder[i].
      for (int64_t i = 0; i < 8; ++i)
        out[r * n_words * 8 + 8 * c + kPackOrder[size_t(i)]] = int32_t((word >> (4 * i)) & 0xFu);
    }
  return values;
}

at::Tensor dequantize_gemm(const at::Tensor& qweight, const at::Tensor& qzeros, const at::Tensor& scales) {
  const at::Tensor q = unpack_int4_columns(qweight).to(at::kFloat);  // [in, out]
  const at::Tensor z = unpack_int4_columns(qzeros).to(at::kFloat);   // [in / G, out]
  const at::Tensor s = scales.to(at::kFloat);                        // [in / G, out]
  const int64_t in = q.size(0), out = q.size(1), groups = s.size(0);
  MFTK_CHECK(groups > 0 && in % groups == 0 && z.sizes() == s.sizes() && s.size(1) == out,
             "awq read-back: qweight [{}, {}], qzeros [{}, {}], scales [{}, {}] do not fit together", in, out,
             z.size(0), z.size(1), groups, s.size(1));
  const int64_t G = in / groups;
  const at::Tensor w = (q.reshape({groups, G, out}) - z.unsqueeze(1)) * s.unsqueeze(1);  // [in/G, G, out]
  return w.reshape({in, out}).t().contiguous();
}

std::string read_back_awq(const std::string& awq_dir, const std::string& out_dir) {
  const auto checkpoint = CheckpointReader::open(awq_dir);
  const auto names = checkpoint.names();
  auto has = [&](const std::string& n) { return checkpoint.contains(n); };
  std::vector<SafetensorsWriter::Decl> decls;
  for (const auto& name : names) {
    const auto& info = checkpoint.info(name);
    if (name.size() > 8 && name.compare(name.size() - 8, 8, ".qweight") == 0) {
      const std::string module = name.substr(0, name.size() - 8);
      if (!has(module + ".qzeros") || !has(module + ".scales"))
        throw Error(fmt::format("awq read-back: {} has {} without its qzeros and scales", awq_dir, name));
      decls.push_back({module + ".weight", at::kFloat, {info.shape.at(1) * 8, info.shape.at(0)}});
    } else if ((name.size() > 7 && name.compare(name.size() - 7, 7, ".qzeros") == 0 &&
                has(name.substr(0, name.size() - 7) + ".qweight")) ||
               (name.size() > 7 && name.compare(name.size() - 7, 7, ".scales") == 0 &&
                has(name.substr(0, name.size() - 7) + ".qweight"))) {
      continue;  // read with their qweight
    } else {
      decls.push_back({name, at::kFloat, info.shape});
    }
  }
  fs::create_directories(out_dir);
  SafetensorsWriter writer((fs::path(out_dir) / "model.safetensors").string(), decls);
  for (const auto& d : decls) {
    const std::string module = d.name.size() > 7 ? d.name.substr(0, d.name.size() - 7) : "";
    if (!module.empty() && has(module + ".qweight"))
      writer.write(d.name, dequantize_gemm(checkpoint.get(module + ".qweight"), checkpoint.get(module + ".qzeros"),
                                           checkpoint.get(module + ".scales")));
    else
      writer.write(d.name, checkpoint.get(d.name).to(at::kFloat));
  }
  writer.finish();

  const fs::path source(awq_dir), target(out_dir);
  std::ifstream in(source / "config.json");
  if (!in) throw Error(fmt::format("awq read-back: cannot read {}", (source / "config.json").string()));
  auto config = nlohmann::json::parse(in);
  config.erase("quantization_config");
  config["torch_dtype"] = "float32";
  {
    std::ofstream out(target / "config.json");
    out << config.dump(2) << "\n";
    if (!out) throw Error(fmt::format("awq read-back: cannot write {}", (target / "config.json").string()));
  }
  for (const auto& entry : fs::directory_iterator(source)) {
    const std::string file = entry.path().filename().string();
    if (!entry.is_regular_file() || file == "config.json" || file == "model.safetensors.index.json" ||
        entry.path().extension() == ".safetensors")
      continue;
    fs::copy_file(entry.path(), target / file, fs::copy_options::overwrite_existing);
  }
  return out_dir;
}

std::optional<std::string> AwqExporter::read_back(const ExportJob&, const ExportReport& report,
                                                  const std::string& scratch_dir) {
  return read_back_awq(report.path, (fs::path(scratch_dir) / "checkpoint").string());
}

}  // namespace mftk::awq
