// What the model and data commands (generate, logprobs, merge, tokenize,
// eval, verify packing) share, kept out of the CLI so tests can call it:
// loading a checkpoint folder without a recipe, prompt encoding, next-token
// log-probabilities, and the packing check (a document must score the same
// inside a packed row as alone in its own row).
//
// defines: mftk::core::component_config, mftk::core::ModelBundleOptions, mftk::core::ModelBundle,
//          mftk::core::load_model_bundle, mftk::core::stored_quantizer_plugin,
//          mftk::core::quantizer_for_checkpoint, mftk::core::load_adapter, mftk::core::encode_text,
//          mftk::core::encode_prompt,
//          mftk::core::tokenization_json, mftk::core::TopToken, mftk::core::TokenLogprobs,
//          mftk::core::compute_logprobs, mftk::core::logprobs_json, mftk::core::make_recipe_packer,
//          mftk::core::packer_respects_sliding_window,
//          mftk::core::DocumentCheck, mftk::core::relative_difference, mftk::core::RowVerdict,
//          mftk::core::PackingVerdict, mftk::core::judge_packing, mftk::core::measure_packing,
//          mftk::core::select_rows_to_verify
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "chat_template.h"
#include "defaults.h"
#include "mftk/batch.h"
#include "mftk/config.h"
#include "mftk/plugin.h"

namespace mftk {
class Adapter;
class Model;
class Packer;
class Quantizer;
class Tokenizer;
}  // namespace mftk

namespace mftk::core {

class Recipe;
class Registry;

// The Config a component gets from a one-table recipe holding `values`
// (defaults fill the rest), validated against the keys the plugin declared.
// Problems are one UsageError naming `table`.
Config component_config(Registry& registry, Kind kind, const std::string& plugin, const std::string& table,
                        const std::map<std::string, Value>& values = {});

struct ModelBundleOptions {
  std::string model_dir;
  std::string model_plugin = kDefaultModelPlugin;
  std::string adapter_dir;  // empty: no adapter
  std::string adapter_plugin = kDefaultAdapterPlugin;
  bool bf16 = false;        // bf16 weights and compute; fp32 otherwise
};

// A checkpoint folder loaded through the registry, with its tokenizer and,
// when asked, an adapter folder loaded onto it. Declared in destruction
// order: the adapter's ops live in the model's slots.
struct ModelBundle {
  std::unique_ptr<Quantizer> quantizer;  // a checkpoint saved quantised; first: the model's slots use it
  std::unique_ptr<Model> model;
  std::unique_ptr<Adapter> adapter;
  std::shared_ptr<Tokenizer> tokenizer;
  std::string model_dir;
};
ModelBundle load_model_bundle(Registry& registry, const ModelBundleOptions& options);

// The quantizer a checkpoint folder saved quantised loads with: the one
// registered quantizer whose reads_stored_format claims config.json's
// quantization_config (every library on the search path is asked), or ""
// for a plain checkpoint. A format none claims, or more than one, is a
// UsageError naming the registered quantizers.
std::string stored_quantizer_plugin(Registry& registry, const std::string& model_dir);

// The quantizer to load `model_dir` with: `requested` (the recipe's
// [quantize], may be null) when the folder is plain or was saved by that
// same plugin; the stored format's plugin with default keys when the
// recipe names none. A recipe naming another quantizer is a UsageError.
std::unique_ptr<Quantizer> quantizer_for_checkpoint(Registry& registry, const std::string& model_dir,
                                                    std::unique_ptr<Quantizer> requested,
                                                    const std::string& requested_plugin);

// Creates the adapter component `plugin` (default keys; `config` when the
// recipe has one) and loads `dir` onto `model`.
std::unique_ptr<Adapter> load_adapter(Registry& registry, const std::string& plugin, const std::string& dir,
                                      Model& model, const Config* config = nullptr);

// BOS (when the tokenizer's add_bos says so) + encode(text).
std::vector<int32_t> encode_text(const Tokenizer& tokenizer, const std::string& text);
// A generation prompt: encode_text, or with `chat` one user turn in the
// tokenizer's chat format, ending where the assistant reply starts.
std::vector<int32_t> encode_prompt(const Tokenizer& tokenizer, const std::string& prompt, bool chat);

// {"ids":[...], "pieces":[...], "label_mask":[...]} (`mftk tokenize`).
std::string tokenization_json(const Tokenizer& tokenizer, const std::vector<int32_t>& ids,
                              const std::vector<uint8_t>& label_mask);

struct TopToken {
  int32_t id = 0;
  double logprob = 0;
};

// logprobs[i] = log P(tokens[i+1] | tokens[0..i]), so n-1 values for n
// tokens; top[i] (when asked) the k most likely tokens at that position,
// most likely first. README.md "logprobs contract" promises this shape.
struct TokenLogprobs {
  std::vector<int32_t> tokens;
  std::vector<double> logprobs;
  std::vector<std::vector<TopToken>> top;  // empty unless top_k > 0
};

// One forward pass over `tokens` as a single document; log_softmax in fp32
// whatever the model computes in. top_k is clamped to the vocabulary.
TokenLogprobs compute_logprobs(Model& model, const std::vector<int32_t>& tokens, int64_t top_k = 0);
// {"tokens":[...], "logprobs":[...]} plus "top":[[{"id","logprob"},...],...] when top was asked for.
std::string logprobs_json(const TokenLogprobs& result, bool with_top);

// The recipe's [packer], or swa_packer / padding as [training] sample_packing
// says (what `mftk run` uses). `name` receives the component's name.
std::unique_ptr<Packer> make_recipe_packer(const Recipe& recipe, Registry& registry, std::string* name = nullptr);
// Whether the packer component `name` declares the respects_sliding_window
// trait (ComponentSpec::traits; mftk/packer.h).
bool packer_respects_sliding_window(Registry& registry, const std::string& name);

// ---------------------------------------------------------------------------
// The packing check.

// One document of a packed row, measured twice: inside its row ("packed")
// and alone in a row of its own ("alone"). loss is the sum of cross-entropy
// over its supervised tokens; the gradient is that loss's gradient w.r.t.
// the probe parameters (see measure_packing).
struct DocumentCheck {
  int64_t row = 0;  // index into the rows measured
  int32_t doc = 0;  // doc id within the row
  int64_t tokens = 0;
  int64_t supervised = 0;  // 0: nothing to compare (skipped by judge_packing)
  double loss_packed = 0, loss_alone = 0;
  double grad_norm_packed = 0, grad_norm_alone = 0;
  double grad_difference = 0;  // || g_packed - g_alone ||
};

// |a - b| / max(|a|, |b|); 0 when both are 0, infinite when either is not finite.
double relative_difference(double a, double b);

struct RowVerdict {
  int64_t row = 0;
  int64_t documents = 0;
  int64_t compared = 0;  // documents with supervised tokens
  double worst = 0;      // largest relative difference in the row
  std::string worst_what;
};

struct PackingVerdict {
  std::vector<RowVerdict> rows;
  double worst = 0;
  std::string worst_what;  // "row 1 doc 2: loss 31.2 packed vs 31.4 alone"
  int64_t compared = 0;
  double tolerance = 0;
  bool passed = true;  // worst <= tolerance and at least one document compared
};

// Per document the worst of: relative difference of the losses, of the
// gradient norms, and ||g_packed - g_alone|| / max(||g_packed||, ||g_alone||).
PackingVerdict judge_packing(const std::vector<DocumentCheck>& checks, double tolerance);

// Measures every document of every row in fp32 without changing the
// model's results. The probe parameters are the token-embedding table and
// the lm_head weight, made trainable for the measurement only (restored
// afterwards): the embedding gradient reaches exactly the tokens a
// document's loss depends on, so attention that crosses a document
// boundary shows up as gradient on another document's tokens even when
// the loss barely moves; lm_head covers the output side.
std::vector<DocumentCheck> measure_packing(Model& model, const std::vector<PackedRow>& rows);

// Up to `count` rows to verify, in packing order, rows holding two or more
// documents first (a one-document row checks only padding).
std::vector<PackedRow> select_rows_to_verify(const std::vector<PackedRow>& rows, size_t count);

}  // namespace mftk::core
