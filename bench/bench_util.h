// What every benchmark shares: memory and time probes, the FLOP formula
// (matmuls only, counted from the work each side does), the cached random checkpoints, and result rows (a table
// line on stdout, JSON rows appended to --json FILE).
//
// defines: mftk::bench::MemoryStatus, mftk::bench::read_memory_status, mftk::bench::reset_peak_rss,
//          mftk::bench::release_free_memory, mftk::bench::seconds_since, mftk::bench::median,
//          mftk::bench::load_average, mftk::bench::cpu_model, mftk::bench::FlopShape,
//          mftk::bench::lora_parameter_count, mftk::bench::step_flops, mftk::bench::forward_flops,
//          mftk::bench::causal_attention_pairs,
//          mftk::bench::gemm_gflops, mftk::bench::BenchCheckpoint, mftk::bench::bench_cache_dir,
//          mftk::bench::ensure_checkpoint, mftk::bench::Row, mftk::bench::print_row_header,
//          mftk::bench::print_row, mftk::bench::append_json_rows, mftk::bench::print_report
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <c10/core/ScalarType.h>
#include <nlohmann/json.hpp>

namespace mftk::bench {

// /proc/self/status, in bytes.
struct MemoryStatus {
  int64_t rss = 0;       // VmRSS
  int64_t peak_rss = 0;  // VmHWM (resettable, see reset_peak_rss)
  int64_t rss_anon = 0;  // RssAnon: private memory (copies, activations)
  int64_t rss_file = 0;  // RssFile: mapped file pages (a memory-mapped checkpoint)
};
MemoryStatus read_memory_status();

// Resets VmHWM to the current RSS (writes 5 to /proc/self/clear_refs), so
// each phase of one process reports its own peak. False if the kernel refused.
bool reset_peak_rss();

// Hands jemalloc's retained free pages back to the kernel (the executable
// keeps them by default: see malloc_conf), so a later phase's peak RSS does
// not include what an earlier phase freed.
void release_free_memory();

double seconds_since(std::chrono::steady_clock::time_point start);
double median(std::vector<double> values);

double load_average();  // 1-minute load average
std::string cpu_model();

// The FLOP formula (matmul FLOPs only; elementwise work is ignored).
struct FlopShape {
  int64_t vocab = 0, hidden = 0, intermediate = 0, layers = 0, heads = 0, kv_heads = 0, head_dim = 0;
  // Frozen matmul parameters P_f: every projection and lm_head (the embedding gather costs nothing).
  int64_t matmul_parameters() const;
};
// P_l: LoRA rank r on q,k,v,o,gate,up,down of every layer.
int64_t lora_parameter_count(const FlopShape& s, int64_t rank);
// Matmul FLOPs of the work a side actually does, per row of seq tokens:
//   head_rows        positions that go through lm_head (seq for an
//                    implementation that scores every position; the
//                    supervised positions for one that gathers them first)
//   attention_pairs  (query, key) pairs whose score is computed, per head:
//                    seq^2 for eager attention over the full masked square;
//                    fewer for blockwise attention that skips masked blocks
// One training step: LoRA 4 P N + 6 P_l N + 3 A, full 6 P N + 3 A, with
// P N = (P_f - head) N + head * head_rows * batch and
// A = L * batch * 4 * attention_pairs * h_q (scores and weighted values,
// 2 FLOPs per multiply-add; backward twice the forward).
double step_flops(const FlopShape& s, int64_t batch, int64_t seq, bool lora, int64_t rank, int64_t head_rows,
                  double attention_pairs);
// A forward pass (no adapter): 2 P N + A, same terms.
double forward_flops(const FlopShape& s, int64_t batch, int64_t seq, int64_t head_rows, double attention_pairs);
// The pairs causal attention needs: query i sees keys max(0, i - W + 1) .. i,
// min(i + 1, W) of them (seq (seq + 1) / 2 in all without a window W).
double causal_attention_pairs(int64_t seq, std::optional<int64_t> window = std::nullopt);

// Best-of-`repeats` GFLOP/s of an n x n x n matmul in `dtype` (the peak MFU is measured against).
double gemm_gflops(at::ScalarType dtype, int64_t n = 2048, int repeats = 5);

// Random checkpoints the benchmarks create once and reuse.
struct BenchCheckpoint {
  std::string dir;
  std::string preset;     // "tiny" | "7b-1layer"
  std::string dtype;      // on disk: "f32" | "bf16"
  std::string tokenizer;  // the tokenizer.model it was made with ("trained" when none was given)
  int64_t bytes = 0;      // weight files
};
// $MFTK_BENCH_DIR, else <source>/bench/.cache.
std::string bench_cache_dir();
// tiny: the tiny preset with plain causal attention (no sliding window, like
// the peer) and Mistral's v1 tokenizer when present (vocab 32000, as in
// TOOLCHAIN.md §7), else a trained one. 7b-1layer: mistral-7b-v0.1 with one
// layer; needs the v1 tokenizer (returns nullopt with a message when absent).
std::optional<BenchCheckpoint> ensure_checkpoint(const std::string& preset, const std::string& dtype);

// One result line. unit says what mftk / peer measure; ratio = mftk / peer
// unless the workload says otherwise.
struct Row {
  std::string workload;
  std::string unit;
  double mftk = 0;
  std::optional<double> peer;
  std::optional<double> ratio;
  nlohmann::json extra = nlohmann::json::object();  // mftk_tokens_per_s, peak_rss_bytes, ...
  nlohmann::json to_json() const;
};
void print_row_header();
void print_row(const Row& row);
// Appends to FILE's {"rows": [...]} (created when missing); each row also
// gets the threads, the load average and the time it was measured at.
void append_json_rows(const std::string& file, const std::vector<Row>& rows, int threads);
// The table of every row in FILE.
void print_report(const std::string& file);

}  // namespace mftk::bench
