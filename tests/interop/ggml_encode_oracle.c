/* ggml's own encoders and decoders as an oracle for mftk's: loads the
 * libggml-base.so that node-llama-cpp ships and runs one of its row
 * functions on stdin, writing the result to stdout.
 *   encoders, void f(const float *x, void *y, int64_t n): float32 in, blocks out
 *     (quantize_row_q8_0_ref 32 34, quantize_row_q4_K_ref 256 144,
 *      quantize_row_q6_K_ref 256 210, ggml_fp32_to_fp16_row 1 2, ggml_fp32_to_bf16_row_ref 1 2)
 *   decoders, void f(const void *y, float *x, int64_t n): blocks in, float32 out
 *     (dequantize_row_q8_0 32 34, dequantize_row_q4_K 256 144, dequantize_row_q6_K 256 210,
 *      ggml_fp16_to_fp32_row 1 2, ggml_bf16_to_fp32_row 1 2)
 *
 *   ggml_encode_oracle LIBGGML_BASE FUNCTION BLOCK_ELEMENTS BLOCK_BYTES < in > out
 */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void (*row_fn)(const float *x, void *y, int64_t n);

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: %s LIBGGML_BASE FUNCTION BLOCK_ELEMENTS BLOCK_BYTES < floats > bytes\n", argv[0]);
    return 2;
  }
  void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    fprintf(stderr, "oracle: %s\n", dlerror());
    return 1;
  }
  row_fn fn = (row_fn)dlsym(lib, argv[2]);
  if (!fn) {
    fprintf(stderr, "oracle: %s has no %s\n", argv[1], argv[2]);
    return 1;
  }
  const size_t block = (size_t)atol(argv[3]), block_bytes = (size_t)atol(argv[4]);
  const int decode = strstr(argv[2], "dequantize") == argv[2] || strstr(argv[2], "_to_fp32_row") != NULL;
  size_t cap = 1 << 22, size = 0;
  char *in = malloc(cap);
  for (size_t got; (got = fread(in + size, 1, cap - size, stdin)) > 0;) {
    size += got;
    if (size == cap) in = realloc(in, cap *= 2);
  }
  if (block == 0 || block_bytes == 0 || size % (decode ? block_bytes : block * sizeof(float)) != 0) {
    fprintf(stderr, "oracle: %zu bytes are not whole blocks\n", size);
    return 1;
  }
  const size_t n = decode ? size / block_bytes * block : size / sizeof(float);
  const size_t out_bytes = decode ? n * sizeof(float) : n / block * block_bytes;
  void *out = malloc(out_bytes ? out_bytes : 1);
  if (decode) ((void (*)(const void *, float *, int64_t))fn)(in, out, (int64_t)n);
  else fn((const float *)in, out, (int64_t)n);
  fwrite(out, 1, out_bytes, stdout);
  return 0;
}
