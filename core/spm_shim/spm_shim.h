/* libmftk_spm: sentencepiece 0.1.97 behind a pure C ABI.
 *
 * defines: MftkSpm (opaque), MFTK_SPM_ABI_VERSION, the mftk_spm_* functions
 *          and one function-pointer typedef per function (MftkSpm*Fn)
 *
 * Why C: libsentencepiece bundles protobuf 3.14 and libtorch links protobuf
 * 3.21; the two crash in one link namespace. core/data/tokenizer.cpp loads this
 * library with dlmopen(LM_ID_NEWLM), which gives it its own libstdc++ and
 * libc, so nothing but plain C values may cross: no std::string, no
 * exceptions, no memory allocated on one side and freed on the other.
 *
 * Buffer protocol (encode, decode, id_to_piece): the caller passes a buffer
 * and its capacity; the function returns the size the full result needs
 * (ids or bytes, no terminator counted) and writes the result only when it
 * fits. Call again with a larger buffer when the return exceeds capacity.
 * A negative return is an error; its text is copied into err (always
 * NUL-terminated, truncated to err_cap). */
#ifndef MFTK_SPM_SHIM_H
#define MFTK_SPM_SHIM_H

#include <stddef.h>
#include <stdint.h>

/* Bump when a signature below changes; the loader refuses a mismatch. */
#define MFTK_SPM_ABI_VERSION 1

#ifdef __cplusplus
extern "C" {
#endif

typedef struct MftkSpm MftkSpm;

int32_t mftk_spm_abi_version(void);

/* A loaded model, or NULL with err filled. */
MftkSpm* mftk_spm_load(const char* model_path, char* err, size_t err_cap);
void mftk_spm_free(MftkSpm* spm);

int32_t mftk_spm_vocab_size(const MftkSpm* spm);
int32_t mftk_spm_bos_id(const MftkSpm* spm); /* -1 when the model has none */
int32_t mftk_spm_eos_id(const MftkSpm* spm);
int32_t mftk_spm_unk_id(const MftkSpm* spm);
int32_t mftk_spm_pad_id(const MftkSpm* spm);

/* Plain encoding: no BOS/EOS. Returns the number of ids. */
int64_t mftk_spm_encode(const MftkSpm* spm, const char* text, size_t text_len, int32_t* ids,
                        size_t ids_cap, char* err, size_t err_cap);
/* Returns the number of bytes of the decoded text (not NUL-terminated). */
int64_t mftk_spm_decode(const MftkSpm* spm, const int32_t* ids, size_t n_ids, char* text,
                        size_t text_cap, char* err, size_t err_cap);

/* Piece string of id (bytes, not NUL-terminated); -1 when id is out of range. */
int64_t mftk_spm_id_to_piece(const MftkSpm* spm, int32_t id, char* buf, size_t buf_cap);
float mftk_spm_score(const MftkSpm* spm, int32_t id); /* 0 when out of range */
/* sentencepiece's ModelProto.SentencePiece.Type: 1 NORMAL, 2 UNKNOWN,
 * 3 CONTROL, 4 USER_DEFINED, 5 UNUSED, 6 BYTE; 0 when out of range. */
int32_t mftk_spm_piece_type(const MftkSpm* spm, int32_t id);
/* -1 when the piece is not in the vocabulary. */
int32_t mftk_spm_piece_to_id(const MftkSpm* spm, const char* piece, size_t piece_len);

/* sentencepiece's trainer with its command-line syntax
 * ("--input=a.txt --model_prefix=m --vocab_size=1000 ..."); writes
 * <model_prefix>.model and .vocab. Returns 0, or -1 with err filled. */
int32_t mftk_spm_train_args(const char* args, char* err, size_t err_cap);
/* The same from key/value pairs (values may hold spaces, e.g. paths), without
 * model_prefix: the trained model is written to exactly model_out_path and
 * no .vocab file is made. Returns 0, or -1 with err filled. */
int32_t mftk_spm_train_to_file(const char* const* keys, const char* const* values, size_t n_pairs,
                               const char* model_out_path, char* err, size_t err_cap);

typedef int32_t (*MftkSpmAbiVersionFn)(void);
typedef MftkSpm* (*MftkSpmLoadFn)(const char*, char*, size_t);
typedef void (*MftkSpmFreeFn)(MftkSpm*);
typedef int32_t (*MftkSpmIntQueryFn)(const MftkSpm*);
typedef int64_t (*MftkSpmEncodeFn)(const MftkSpm*, const char*, size_t, int32_t*, size_t, char*,
                                   size_t);
typedef int64_t (*MftkSpmDecodeFn)(const MftkSpm*, const int32_t*, size_t, char*, size_t, char*,
                                   size_t);
typedef int64_t (*MftkSpmIdToPieceFn)(const MftkSpm*, int32_t, char*, size_t);
typedef float (*MftkSpmScoreFn)(const MftkSpm*, int32_t);
typedef int32_t (*MftkSpmPieceTypeFn)(const MftkSpm*, int32_t);
typedef int32_t (*MftkSpmPieceToIdFn)(const MftkSpm*, const char*, size_t);
typedef int32_t (*MftkSpmTrainArgsFn)(const char*, char*, size_t);
typedef int32_t (*MftkSpmTrainToFileFn)(const char* const*, const char* const*, size_t, const char*,
                                        char*, size_t);

#ifdef __cplusplus
}
#endif

#endif /* MFTK_SPM_SHIM_H */
