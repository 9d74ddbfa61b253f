// dora_formula_check BASE_DIR ADAPTER_DIR OUT_DIR
//
// Writes OUT_DIR: the base checkpoint with every adapted weight replaced by
// DoRA's merged weight computed here from the saved files alone,
//
//   V  = W + s * B @ A             s = lora_alpha / r  (lora_alpha / sqrt(r) with use_rslora)
//   W' = (m / ||V||_row) * V       ||V||_row[o] = sqrt(sum_i V[o, i]^2), m the saved magnitude vector
//
// in float64 with plain loops over rows, sharing no code with the plugin
// (only the SDK's safetensors reader and writer). scripts/check-sdk.sh then
// scores the same tokens with `mftk logprobs` twice, through the plugin
// (BASE_DIR + ADAPTER_DIR, the adapter computing m/||V|| * (x W^T + s x A^T B^T)
// without ever forming W') and as a plain model (OUT_DIR), and compares the
// full log-probability tables. That route tests the plugin as mftk runs it
// (the loader, the model plugin, the slot seam) against the formula written
// out once more, here, from the files PEFT would read.
//
// Prints "adapted N modules; max |W' - W| / max |W| = X" (so the caller can
// tell that the adapter moved the weights: the comparison is not vacuous).
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <mftk/error.h>
#include <mftk/safetensors.h>

namespace fs = std::filesystem;

namespace {

// W' for one slot, every step in float64.
at::Tensor dora_weight(const at::Tensor& w_in, const at::Tensor& a_in, const at::Tensor& b_in, const at::Tensor& m_in,
                       double s) {
  const at::Tensor w = w_in.to(at::kDouble), a = a_in.to(at::kDouble), b = b_in.to(at::kDouble),
                   m = m_in.to(at::kDouble).reshape({-1});
  const int64_t out = w.size(0), in = w.size(1), r = a.size(0);
  if (a.size(1) != in || b.size(0) != out || b.size(1) != r || m.numel() != out)
    throw mftk::Error("dora_formula_check: shapes of W, A, B, m do not fit together");
  at::Tensor result = at::empty({out, in}, at::kDouble);
  auto W = w.accessor<double, 2>();
  auto A = a.accessor<double, 2>();
  auto B = b.accessor<double, 2>();
  auto M = m.accessor<double, 1>();
  auto R = result.accessor<double, 2>();
  std::vector<double> v(in);
  for (int64_t o = 0; o < out; ++o) {
    double sum_sq = 0;
    for (int64_t i = 0; i < in; ++i) {
      double ba = 0;
      for (int64_t k = 0; k < r; ++k) ba += B[o][k] * A[k][i];
      v[i] = W[o][i] + s * ba;
      sum_sq += v[i] * v[i];
    }
    const double scale = M[o] / std::sqrt(sum_sq);
    for (int64_t i = 0; i < in; ++i) R[o][i] = scale * v[i];
  }
  return result;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: dora_formula_check BASE_DIR ADAPTER_DIR OUT_DIR\n");
    return 2;
  }
  const std::string base_dir = argv[1], adapter_dir = argv[2], out_dir = argv[3];
  try {
    std::ifstream config_file(fs::path(adapter_dir) / "adapter_config.json");
    const nlohmann::json config = nlohmann::json::parse(config_file);
    if (config.at("use_dora") != true) throw mftk::Error("adapter_config.json: use_dora is not true");
    const double r = config.at("r").get<double>(), alpha = config.at("lora_alpha").get<double>();
    const double s = config.value("use_rslora", false) ? alpha / std::sqrt(r) : alpha / r;

    const auto adapter = mftk::SafetensorsFile::open((fs::path(adapter_dir) / "adapter_model.safetensors").string());
    const mftk::CheckpointReader base = mftk::CheckpointReader::open(base_dir);
    const std::string prefix = "base_model.model.";
    int64_t adapted = 0, used = 0;
    double max_change = 0, max_w = 0;
    mftk::NamedTensors tensors;
    for (const std::string& name : base.names()) {
      at::Tensor w = base.get(name).to(at::kFloat);
      const std::string module = name.size() > 7 ? name.substr(0, name.size() - 7) : "";  // without ".weight"
      const std::string a_name = prefix + module + ".lora_A.weight";
      if (name.size() > 7 && name.compare(name.size() - 7, 7, ".weight") == 0 && adapter->find(a_name)) {
        const std::string b_name = prefix + module + ".lora_B.weight";
        const std::string m_name = prefix + module + ".lora_magnitude_vector";  // PEFT's saved spelling
        if (!adapter->find(b_name) || !adapter->find(m_name))
          throw mftk::Error("the adapter has " + a_name + " but not " + b_name + " and " + m_name);
        const at::Tensor merged = dora_weight(w, adapter->get(a_name), adapter->get(b_name), adapter->get(m_name), s);
        max_change = std::max(max_change, (merged - w.to(at::kDouble)).abs().max().item<double>());
        max_w = std::max(max_w, w.abs().max().item<double>());
        w = merged.to(at::kFloat);
        ++adapted;
        used += 3;
      }
      tensors.emplace_back(name, w.contiguous());
    }
    if (adapted == 0) throw mftk::Error("no weight of the base has a lora_A in the adapter");
    if (used != int64_t(adapter->tensors().size()))
      throw mftk::Error("the adapter holds tensors for modules the base does not have");

    fs::create_directories(out_dir);
    mftk::save_checkpoint(out_dir, tensors);
    // config.json and the tokenizer files, as they are.
    for (const auto& entry : fs::directory_iterator(base_dir)) {
      const std::string file = entry.path().filename().string();
      if (entry.is_regular_file() && file.find(".safetensors") == std::string::npos && file[0] != '.')
        fs::copy_file(entry.path(), fs::path(out_dir) / file, fs::copy_options::overwrite_existing);
    }
    std::printf("adapted %lld modules; max |W' - W| / max |W| = %.3g\n", (long long)adapted, max_change / max_w);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dora_formula_check: %s\n", e.what());
    return 1;
  }
}
