// Shared benchmark helpers (see bench_util.h).
#include "bench_util.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "fs_util.h"
#include "init_checkpoint.h"
#include "mftk/error.h"

// jemalloc's control interface (the executable links jemalloc).
extern "C" int mallctl(const char* name, void* oldp, size_t* oldlenp, void* newp, size_t newlen);

namespace mftk::bench {

namespace fs = std::filesystem;

MemoryStatus read_memory_status() {
  MemoryStatus m;
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);) {
    auto value_kb = [&](const char* key, int64_t& out) {
      const size_t n = std::char_traits<char>::length(key);
      if (line.compare(0, n, key) == 0) out = std::atoll(line.c_str() + n) * 1024;
    };
    value_kb("VmRSS:", m.rss);
    value_kb("VmHWM:", m.peak_rss);
    value_kb("RssAnon:", m.rss_anon);
    value_kb("RssFile:", m.rss_file);
  }
  return m;
}

bool reset_peak_rss() {
  std::ofstream out("/proc/self/clear_refs");
  out << "5";
  out.flush();
  return bool(out);
}

void release_free_memory() {
  // MALLCTL_ARENAS_ALL is 4096 in jemalloc 5.
  mallctl("thread.tcache.flush", nullptr, nullptr, nullptr, 0);
  mallctl("arena.4096.purge", nullptr, nullptr, nullptr, 0);
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double load_average() {
  double avg[1] = {0};
  return getloadavg(avg, 1) == 1 ? avg[0] : -1;
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      return colon == std::string::npos ? line : line.substr(colon + 2);
    }
  return "unknown";
}

int64_t FlopShape::matmul_parameters() const {
  const int64_t hq = heads * head_dim, hkv = kv_heads * head_dim;
  return layers * (hidden * hq + 2 * hidden * hkv + hq * hidden + 3 * hidden * intermediate) + hidden * vocab;
}

int64_t lora_parameter_count(const FlopShape& s, int64_t rank) {
  const int64_t H = s.hidden, I = s.intermediate, hq = s.heads * s.head_dim, hkv = s.kv_heads * s.head_dim;
  // r * (in + out) for q, k, v, o, gate, up, down
  const int64_t per_layer = (H + hq) + 2 * (H + hkv) + (hq + H) + 2 * (H + I) + (I + H);
  return s.layers * rank * per_layer;
}

namespace {

// P N: every projection on all tokens, lm_head on head_rows of each row.
double projection_flops_per_multiply(const FlopShape& s, int64_t batch, int64_t seq, int64_t head_rows) {
  const double head = double(s.hidden * s.vocab);
  return (double(s.matmul_parameters()) - head) * double(batch * seq) + head * double(batch * head_rows);
}

double attention_flops(const FlopShape& s, int64_t batch, double attention_pairs) {
  return double(s.layers) * double(batch) * 4.0 * attention_pairs * double(s.heads * s.head_dim);
}

}  // namespace

double step_flops(const FlopShape& s, int64_t batch, int64_t seq, bool lora, int64_t rank, int64_t head_rows,
                  double attention_pairs) {
  const double PN = projection_flops_per_multiply(s, batch, seq, head_rows);
  const double A = attention_flops(s, batch, attention_pairs);
  if (!lora) return 6.0 * PN + 3.0 * A;
  return 4.0 * PN + 6.0 * double(lora_parameter_count(s, rank)) * double(batch * seq) + 3.0 * A;
}

double forward_flops(const FlopShape& s, int64_t batch, int64_t seq, int64_t head_rows, double attention_pairs) {
  return 2.0 * projection_flops_per_multiply(s, batch, seq, head_rows) + attention_flops(s, batch, attention_pairs);
}

double causal_attention_pairs(int64_t seq, std::optional<int64_t> window) {
  double pairs = 0;
  for (int64_t i = 0; i < seq; ++i) pairs += double(window ? std::min(i + 1, *window) : i + 1);
  return pairs;
}

double gemm_gflops(at::ScalarType dtype, int64_t n, int repeats) {
  at::NoGradGuard no_grad;
  const auto opts = at::TensorOptions().dtype(dtype);
  const at::Tensor a = at::randn({n, n}, opts), b = at::randn({n, n}, opts);
  at::Tensor c = at::mm(a, b);  // warm-up: kernels chosen, output pages touched
  double best = 1e30;
  for (int i = 0; i < repeats; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    at::mm_out(c, a, b);
    best = std::min(best, seconds_since(t0));
  }
  return 2.0 * double(n) * double(n) * double(n) / best / 1e9;
}

std::string bench_cache_dir() {
  if (const char* env = std::getenv("MFTK_BENCH_DIR"); env && *env) return env;
  return (fs::path(MFTK_SOURCE_DIR) / "bench" / ".cache").string();
}

namespace {

int64_t weight_bytes(const std::string& dir) {
  int64_t n = 0;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".safetensors") n += int64_t(e.file_size());
  return n;
}

}  // namespace

std::optional<BenchCheckpoint> ensure_checkpoint(const std::string& preset, const std::string& dtype) {
  if (preset != "tiny" && preset != "7b-1layer" && preset != "7b")
    throw UsageError(fmt::format("unknown benchmark preset '{}'", preset),
                     "use --preset tiny, 7b-1layer or 7b (full depth)");
  if (dtype != "f32" && dtype != "bf16")
    throw UsageError(fmt::format("unknown dtype '{}'", dtype), "use f32 or bf16");
  const std::string v1 = (fs::path(MFTK_SHARED_DIR) / "data" / "mistral-tokenizers" / "tokenizer.model.v1").string();
  const bool have_v1 = fs::exists(v1);

  core::InitOptions o;
  o.seed = 1234;
  o.dtype = dtype;
  BenchCheckpoint ck;
  ck.preset = preset;
  ck.dtype = dtype;
  if (preset == "tiny") {
    o.preset = "tiny";
    o.sliding_window_null = true;  // the peer computes plain causal attention
    if (have_v1) {
      o.tokenizer = v1;
    } else {
      o.corpus = (fs::path(MFTK_SOURCE_DIR) / "data" / "tokenizer" / "corpus.txt").string();
      std::fprintf(stderr, "note: %s not found; the tiny checkpoint gets a trained tokenizer (vocab %d), so its "
                   "shapes differ from TOOLCHAIN.md §7 (vocab 32000)\n", v1.c_str(), o.tokenizer_vocab);
    }
  } else {
    if (!have_v1) {
      std::printf("skipped: preset %s needs Mistral's tokenizer %s (vocab 32000), which is not here\n",
                  preset.c_str(), v1.c_str());
      return std::nullopt;
    }
    o.preset = "mistral-7b-v0.1";
    if (preset == "7b-1layer") o.overrides["num_hidden_layers"] = 1;
    o.tokenizer = v1;
  }
  ck.tokenizer = o.tokenizer.empty() ? "trained" : o.tokenizer;
  const std::string name = fmt::format("{}-{}{}", preset, dtype, have_v1 ? "" : "-trainedtok");
  ck.dir = (fs::path(bench_cache_dir()) / name).string();
  const auto ready = fs::path(ck.dir) / "bench_ready";
  if (!fs::exists(ready)) {
    // Written next to its final place and renamed, so an interrupted run never leaves a half checkpoint.
    const std::string tmp = fmt::format("{}.tmp-{}", ck.dir, ::getpid());
    fs::remove_all(tmp);
    std::fprintf(stderr, "creating %s checkpoint %s (once; reused by later runs)\n", preset.c_str(), ck.dir.c_str());
    o.out = tmp;
    core::write_random_checkpoint(o);
    core::write_file_atomic((fs::path(tmp) / "bench_ready").string(), ck.tokenizer + "\n");
    fs::remove_all(ck.dir);
    fs::rename(tmp, ck.dir);
  }
  ck.bytes = weight_bytes(ck.dir);
  return ck;
}

nlohmann::json Row::to_json() const {
  nlohmann::json j = extra;
  j["workload"] = workload;
  j["unit"] = unit;
  j["mftk"] = mftk;
  j["peer"] = peer ? nlohmann::json(*peer) : nlohmann::json(nullptr);
  j["ratio"] = ratio ? nlohmann::json(*ratio) : nlohmann::json(nullptr);
  return j;
}

namespace {

std::string format_value(double v) {
  if (v == 0) return "0";
  if (std::abs(v) >= 100) return fmt::format("{:.0f}", v);
  if (std::abs(v) >= 1) return fmt::format("{:.2f}", v);
  return fmt::format("{:.3f}", v);
}

std::string mb(const nlohmann::json& j, const char* key) {
  return j.contains(key) && j[key].is_number() ? fmt::format("{:.0f}", j[key].get<double>() / 1e6) : "-";
}

void print_json_row(const nlohmann::json& j) {
  const auto num = [&](const char* key) -> std::string {
    return j.contains(key) && j[key].is_number() ? format_value(j[key].get<double>()) : "-";
  };
  const std::string peak = j.contains("gemm_peak_fraction") && j["gemm_peak_fraction"].is_number()
                               ? fmt::format("{:.0f}%", 100 * j["gemm_peak_fraction"].get<double>())
                               : "-";
  std::printf("%-34s %10s %10s  %-12s %7s %6s %9s %9s %6s\n", j.value("workload", "?").c_str(), num("mftk").c_str(),
              num("peer").c_str(), j.value("unit", "").c_str(), num("ratio").c_str(), peak.c_str(),
              mb(j, "peak_rss_bytes").c_str(), mb(j, "peer_peak_rss_bytes").c_str(),
              j.contains("loadavg") ? fmt::format("{:.1f}", j["loadavg"].get<double>()).c_str() : "-");
  if (j.contains("note") && j["note"].is_string() && !j["note"].get<std::string>().empty())
    std::printf("    %s\n", j["note"].get<std::string>().c_str());
}

}  // namespace

void print_row_header() {
  std::printf("%-34s %10s %10s  %-12s %7s %6s %9s %9s %6s\n", "workload", "mftk", "peer", "unit", "ratio", "%gemm",
              "RSS MB", "peer MB", "load");
}

void print_row(const Row& row) {
  nlohmann::json j = row.to_json();
  j["loadavg"] = load_average();
  print_json_row(j);
  std::fflush(stdout);
}

void append_json_rows(const std::string& file, const std::vector<Row>& rows, int threads) {
  nlohmann::json doc = {{"rows", nlohmann::json::array()}};
  if (fs::exists(file)) {
    auto parsed = nlohmann::json::parse(core::read_file(file), nullptr, false);
    if (parsed.is_discarded() || !parsed.contains("rows") || !parsed["rows"].is_array())
      throw UsageError(fmt::format("--json {}: not a benchmark results file (expected {{\"rows\": [...]}})", file),
                       "pass a new file name, or delete the file");
    doc = std::move(parsed);
  }
  if (!doc.contains("machine")) doc["machine"] = {{"cpu", cpu_model()}, {"cpus", int64_t(::sysconf(_SC_NPROCESSORS_ONLN))}};
  const std::time_t now = std::time(nullptr);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  for (const auto& r : rows) {
    nlohmann::json j = r.to_json();
    j["threads"] = threads;
    j["loadavg"] = load_average();
    j["measured_at"] = stamp;
    doc["rows"].push_back(std::move(j));
  }
  core::write_file_atomic(file, doc.dump(2) + "\n");
}

void print_report(const std::string& file) {
  auto doc = nlohmann::json::parse(core::read_file(file), nullptr, false);
  if (doc.is_discarded() || !doc.contains("rows"))
    throw UsageError(fmt::format("{}: not a benchmark results file", file));
  if (doc.contains("machine"))
    std::printf("machine: %s, %lld CPUs\n", doc["machine"].value("cpu", "?").c_str(),
                (long long)doc["machine"].value("cpus", int64_t(0)));
  print_row_header();
  for (const auto& j : doc["rows"]) print_json_row(j);
  std::printf("ratio = mftk / peer (higher is better for throughput rows; for RSS rows lower is better). "
              "%%gemm = GFLOP/s over the same process's 2048^3 matmul rate in the step's dtype. load = 1-min load "
              "average when the row was measured.\n");
}

}  // namespace mftk::bench
