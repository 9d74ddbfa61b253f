// mftk_bench gemm: 2048^3 matmul GFLOP/s in fp32 and bf16, the peak that
// the other rows' MFU is measured against.

#include <cstdlib>

#include "workload_support.h"

namespace mftk::bench {

void cmd_gemm(const CommonOptions& common) {
  std::vector<Row> rows;
  const char* coretype = std::getenv("OPENBLAS_CORETYPE");
  for (auto [dt, name] : {std::pair{at::kFloat, "fp32"}, std::pair{at::kBFloat16, "bf16"}}) {
    Row r;
    r.workload = fmt::format("gemm {} 2048^3", name);
    r.unit = "GFLOP/s";
    r.mftk = gemm_gflops(dt, 2048, 7);
    r.extra = {{"dtype", name}, {"gemm_gflops", r.mftk}, {"openblas_coretype", coretype ? coretype : ""}};
    r.extra["note"] = std::string("libtorch at::mm, best of 7 (the peak %gemm refers to)") +
                      (coretype && dt == at::kFloat
                           ? fmt::format("; OPENBLAS_CORETYPE={} is set: fp32 runs slower kernels", coretype)
                           : "");
    rows.push_back(r);
  }
  emit(common, rows);
}

}  // namespace mftk::bench
