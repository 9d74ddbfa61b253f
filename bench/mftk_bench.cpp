// mftk_bench: benchmarks of the engine against a peer measured in the same
// run (bench/README.md explains every row). Subcommands:
//   forward  mistral plugin forward (no grad) vs the peer's forward
//   load     peak RSS and time of loading a bf16 checkpoint vs a read-it-all loader
//   train    one training step (LoRA or full) vs the peer's step
//   pack     swa_packer vs padding efficiency; prepare_data vs plain encoding
//   gemm     2048^3 matmul GFLOP/s, the peak MFU is measured against
//   qlora    peak RSS of one QLoRA step on an NF4 base vs the same step on the bf16 base
//   nf4-dequant  NF4 dequantisation GB/s vs a libtorch gather-and-scale
//   gguf-export  time and peak RSS of a GGUF export against the checkpoint's size
//   report   the table of a --json results file
//
// This file holds main and the dispatch; the shared helpers are in
// workload_support.h, each subcommand in cmd_<name>.cpp (nf4-dequant next to
// qlora in cmd_qlora.cpp; report in bench_util.cpp).
#include <cstdio>
#include <cstdlib>

#include <ATen/Parallel.h>
#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include "bench_util.h"
#include "mftk/error.h"
#include "workload_support.h"

// The same allocator settings as the mftk executable (core/cli/main.cpp):
// freed pages are kept, since a fresh page costs ~12 us to fault in here.
extern "C" {
const char* malloc_conf = "retain:true,dirty_decay_ms:-1,muzzy_decay_ms:-1";
}

int main(int argc, char** argv) {
  using namespace mftk::bench;
  spdlog::set_level(spdlog::level::warn);
  CLI::App app{"mftk_bench: mftk against a peer measured in the same run", "mftk_bench"};
  app.require_subcommand(1);
  CommonOptions common;
  app.add_option("--threads", common.threads, "libtorch threads (default 2)")->check(CLI::PositiveNumber);
  app.add_option("--json", common.json, "append result rows to this JSON file");

  TrainArgs train_args, forward_args, load_args;
  auto add_shape = [](CLI::App* cmd, TrainArgs& a) {
    cmd->add_option("--preset", a.preset, "tiny | 7b-1layer")->check(CLI::IsMember({"tiny", "7b-1layer"}));
    cmd->add_option("--seq", a.seq, "tokens per row (default 512 tiny, 256 7b-1layer)");
    cmd->add_option("--batch", a.batch, "rows (default 2 tiny, 1 7b-1layer)");
    cmd->add_option("--dtype", a.dtype, "f32 | bf16 (weights and activations)")->check(CLI::IsMember({"f32", "bf16"}));
    cmd->add_option("--warmup", a.warmup, "untimed steps first (default 2)");
    cmd->add_option("--steps", a.steps, "timed steps; the median is reported (default 5)")->check(CLI::PositiveNumber);
  };
  auto* train = app.add_subcommand("train", "training step tokens/s and peak RSS vs the peer");
  add_shape(train, train_args);
  train->add_option("--mode", train_args.mode, "lora (r=8, alpha=16, 7 projections) | full")
      ->check(CLI::IsMember({"lora", "full"}));
  train->add_option("--response-fraction", train_args.response_fraction,
                    "supervised share of each row, the rest a masked prompt (default 1: every token)")
      ->check(CLI::Range(0.01, 1.0));
  train->add_option("--profile", train_args.profile,
                    "after timing, profile one step of each side: top ops printed, all in PREFIX-peer.txt and PREFIX-mftk.txt");
  auto* forward = app.add_subcommand("forward", "forward (no grad) tokens/s and peak RSS vs the peer");
  add_shape(forward, forward_args);
  auto* load = app.add_subcommand("load", "peak RSS and time of loading a bf16 checkpoint vs reading it all");
  load->add_option("--preset", load_args.preset, "tiny | 7b-1layer")->check(CLI::IsMember({"tiny", "7b-1layer"}));
  int load_rounds = 5;
  load->add_option("--rounds", load_rounds, "alternating rounds of both loaders; medians are reported (default 5)")
      ->check(CLI::PositiveNumber);
  int64_t pack_examples = 2000, pack_rows = 20000;
  auto* pack = app.add_subcommand("pack", "swa_packer vs padding efficiency; prepare_data vs plain encoding");
  pack->add_option("--examples", pack_examples, "synthetic examples to pack (default 2000)");
  pack->add_option("--rows", pack_rows, "instruction rows to preprocess (default 20000)");
  auto* gemm = app.add_subcommand("gemm", "fp32 and bf16 2048^3 matmul GFLOP/s");
  TrainArgs qlora_args;
  qlora_args.preset = "7b-1layer";
  auto* qlora = app.add_subcommand("qlora", "peak RSS of loading and of one QLoRA step, NF4 vs bf16 base");
  qlora->add_option("--preset", qlora_args.preset, "7b-1layer | 7b (full depth, ~14.5 GB bf16 on disk)")
      ->check(CLI::IsMember({"7b-1layer", "7b"}));
  qlora->add_option("--seq", qlora_args.seq, "tokens per row (default 512)");
  qlora->add_option("--batch", qlora_args.batch, "rows (default 1)");
  std::string gguf_preset = "7b-1layer", gguf_type = "f16";
  auto* gguf = app.add_subcommand("gguf-export", "time and peak RSS of a GGUF export against the checkpoint's size");
  gguf->add_option("--preset", gguf_preset, "7b-1layer | 7b")->check(CLI::IsMember({"7b-1layer", "7b"}));
  gguf->add_option("--type", gguf_type, "f16 | q8_0 | ... (the exporter's type key)");
  int64_t dq_rows = 4096, dq_cols = 14336;
  auto* nf4_dequant = app.add_subcommand("nf4-dequant", "NF4 dequantisation GB/s vs a libtorch gather-and-scale");
  nf4_dequant->add_option("--rows", dq_rows, "weight rows (default 4096)");
  nf4_dequant->add_option("--cols", dq_cols, "weight columns (default 14336: a 7B MLP weight)");
  int dq_steps = 7;
  nf4_dequant->add_option("--steps", dq_steps, "timed rounds; medians are reported (default 7)")
      ->check(CLI::PositiveNumber);
  std::string report_file;
  auto* report = app.add_subcommand("report", "print the table of a --json results file");
  report->add_option("file", report_file, "results JSON")->required();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : 2;
  }
  try {
    at::set_num_threads(common.threads);
    if (report->parsed()) {
      print_report(report_file);
      return 0;
    }
    if (!load->parsed() && std::getenv("OPENBLAS_CORETYPE"))
      std::fprintf(stderr, "warning: OPENBLAS_CORETYPE=%s is set; fp32 GEMM may run at half speed "
                   "(bench/run unsets it)\n", std::getenv("OPENBLAS_CORETYPE"));
    print_row_header();
    if (train->parsed()) cmd_train(common, train_args);
    else if (forward->parsed()) cmd_forward(common, forward_args);
    else if (load->parsed()) cmd_load(common, load_args, load_rounds);
    else if (pack->parsed()) cmd_pack(common, pack_examples, pack_rows);
    else if (gemm->parsed()) cmd_gemm(common);
    else if (qlora->parsed()) cmd_qlora(common, qlora_args);
    else if (gguf->parsed()) cmd_gguf_export(common, gguf_preset, gguf_type);
    else if (nf4_dequant->parsed()) cmd_nf4_dequant(common, dq_rows, dq_cols, dq_steps);
  } catch (const WorkloadMismatch& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    if (!e.hint().empty()) std::fprintf(stderr, "hint: %s\n", e.hint().c_str());
    return 3;
  } catch (const mftk::UsageError& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    if (!e.hint().empty()) std::fprintf(stderr, "hint: %s\n", e.hint().c_str());
    return 2;
  } catch (const mftk::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    if (!e.hint().empty()) std::fprintf(stderr, "hint: %s\n", e.hint().c_str());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
