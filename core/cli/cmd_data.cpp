// mftk tokenize | preprocess | eval | verify packing
#include <cstdio>
#include <memory>

#include <ATen/Parallel.h>
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "batching.h"
#include "chat_template.h"
#include "cli/commands.h"
#include "dataset.h"
#include "defaults.h"
#include "fs_util.h"
#include "mftk/adapter.h"
#include "mftk/model.h"
#include "mftk/objective.h"
#include "mftk/packer.h"
#include "mftk/quantizer.h"
#include "mftk/tokenizer.h"
#include "model_tools.h"
#include "pipeline.h"
#include "preference_rows.h"
#include "recipe.h"
#include "registry.h"
#include "trainer.h"

namespace mftk::cli {
namespace {

// A recipe loaded, its plugins resolved, and [training] threads applied.
struct LoadedRecipe {
  explicit LoadedRecipe(const RecipeArgs& args)
      : recipe(core::Recipe::load(args.path, args.overrides)),
        registry(recipe.section("plugins").get_strings("search_paths")) {
    recipe.resolve(registry);
    if (int64_t t = recipe.section("training").get_int("threads"); t > 0) at::set_num_threads(int(t));
  }
  const core::ComponentRef& model_ref() const {
    const auto* ref = recipe.component("model");
    if (!ref)
      throw UsageError(fmt::format("{}: the recipe has no [model] table", recipe.path()),
                       fmt::format("add [model] with plugin = \"{}\" and path = \"<checkpoint folder>\"",
                                   core::kDefaultModelPlugin));
    return *ref;
  }
  core::Recipe recipe;
  core::Registry registry;
};

// sequence_len and friends from the recipe, the sliding window from the model.
PackOptions pack_options_for(const core::Recipe& recipe, const Model& model) {
  PackOptions po = core::pack_options_from_recipe(recipe);
  po.sliding_window = model.shape().sliding_window;
  return po;
}

// The adapter plugin for --adapter: the recipe's [adapter] (with its keys), else the default one.
std::unique_ptr<Adapter> load_recipe_adapter(LoadedRecipe& r, const std::string& dir, Model& model) {
  if (const auto* ref = r.recipe.component("adapter"))
    return core::load_adapter(r.registry, ref->plugin, dir, model, &ref->config);
  return core::load_adapter(r.registry, core::kDefaultAdapterPlugin, dir, model);
}

// mftk tokenize: how a checkpoint's tokenizer encodes a text or a chat, as JSON.
void add_tokenize_command(CLI::App& app) {
  struct TokenizeArgs {
    std::string model, text, chat_json;
    bool train_on_inputs = false;
  };
  auto a = std::make_shared<TokenizeArgs>();
  auto* cmd = app.add_subcommand("tokenize", "show how a checkpoint's tokenizer encodes text or a chat");
  cmd->footer(
      "Prints {\"ids\": [...], \"pieces\": [...], \"label_mask\": [...]} on stdout. --text: BOS (when the "
      "tokenizer adds one) + the text, label_mask 1 everywhere (completion rows train on every token). "
      "--chat-json FILE: {\"messages\": [...], \"tools\": [...]} or a bare list of {\"role\", \"content\"}, "
      "encoded with the tokenizer's Mistral chat format exactly as training encodes it (tools, assistant "
      "tool_calls and tool messages need a v3 tokenizer); label_mask is 1 on assistant tokens, tool calls "
      "included (every token but the tool list with --train-on-inputs).");
  cmd->add_option("--model", a->model, "checkpoint folder (or a tokenizer.model file)")->required();
  auto* text = cmd->add_option("--text", a->text, "text to encode");
  auto* chat = cmd->add_option("--chat-json", a->chat_json, "JSON file with the conversation to encode");
  text->excludes(chat);
  cmd->add_flag("--train-on-inputs", a->train_on_inputs, "chat: label every token, not only the replies");
  cmd->callback([a, text, chat] {
    if (text->count() == 0 && chat->count() == 0)
      throw UsageError("tokenize: nothing to encode", "pass --text TEXT or --chat-json FILE");
    std::error_code ec;
    if (!std::filesystem::exists(a->model, ec))
      throw UsageError(fmt::format("tokenize: --model {} does not exist", a->model),
                       "pass a checkpoint folder holding tokenizer.model");
    auto tok = Tokenizer::load(a->model);
    std::vector<int32_t> ids;
    std::vector<uint8_t> mask;
    if (text->count() > 0) {
      ids = core::encode_text(*tok, a->text);
      mask.assign(ids.size(), 1);
    } else {
      if (!std::filesystem::is_regular_file(a->chat_json, ec))
        throw UsageError(fmt::format("tokenize: --chat-json {} is not a file", a->chat_json));
      const auto chat = core::parse_chat_document(core::read_file(a->chat_json), a->chat_json);
      auto enc = core::encode_chat(*tok, core::detect_chat_format(*tok), chat.messages, a->train_on_inputs,
                                   /*add_generation_prompt=*/false, chat.tools);
      ids = std::move(enc.ids);
      mask = std::move(enc.loss_mask);
    }
    std::printf("%s\n", core::tokenization_json(*tok, ids, mask).c_str());
  });
}

// Tokenizes (through the cache) and packs the recipe's data as a run would,
// printing per file and per split what training would see. Loads no weights.
void run_preprocess(const RecipeArgs& args, bool force) {
  LoadedRecipe r(args);
  const auto& ref = r.model_ref();
  const std::string path = ref.config.get_string("path");
  auto model = r.registry.create<Model>(Kind::model, ref.plugin, ref.config);
  model->load_config(path);  // the sliding window; no weights
  auto tok = Tokenizer::load(path);
  auto data = core::prepare_data(r.recipe, *tok, force ? core::CacheMode::rebuild : core::CacheMode::read_write);
  for (const auto& line : core::describe_data(data)) std::printf("%s\n", line.c_str());
  const PackOptions po = pack_options_for(r.recipe, *model);
  if (core::is_preference_data(core::data_options_from_recipe(r.recipe))) {  // as a run packs them
    for (const auto& [split, examples] : {std::pair{"train", &data.train}, std::pair{"eval", &data.eval}}) {
      PackStats stats;
      const auto rows = core::pack_preference_pairs(*examples, po, stats);
      std::printf("%s: %zu preference pairs -> %zu rows (one pair each), %lld pairs longer than sequence_len %lld "
                  "dropped\n",
                  split, examples->size() / 2, rows.size(), (long long)stats.dropped, (long long)po.sequence_len);
    }
    return;
  }
  std::string packer_name;
  auto packer = core::make_recipe_packer(r.recipe, r.registry, &packer_name);
  const std::vector<std::pair<std::string, const std::vector<Example>*>> splits = {{"train", &data.train},
                                                                                   {"eval", &data.eval}};
  for (const auto& [split, examples] : splits) {
    if (examples->empty()) continue;
    PackStats stats;
    const auto rows = packer->pack(*examples, po, stats);
    std::printf("%s, packed by %s:\n", split.c_str(), packer_name.c_str());
    for (const auto& line : core::describe_packing(*examples, rows, stats, po.sequence_len))
      std::printf("  %s\n", line.c_str());
  }
}

// mftk preprocess: a recipe's data tokenized and packed, described.
void add_preprocess_command(CLI::App& app) {
  auto args = std::make_shared<RecipeArgs>();
  auto force = std::make_shared<bool>(false);
  auto* cmd = app.add_subcommand("preprocess", "tokenize and pack a recipe's data; print what training would see");
  cmd->footer(fmt::format(
      "Tokenizes every [[datasets]] file with the [model] checkpoint's tokenizer into the cache under [data] "
      "dataset_prepared_path (reused when nothing changed; --force rebuilds it), packs train and eval with the "
      "recipe's packer (or {} / {} per [training] sample_packing), and prints per file "
      "rows/examples/tokens and per split examples, tokens, trainable targets, a length histogram, rows, "
      "packing efficiency, truncated and dropped examples. Loads no weights.",
      core::kDefaultPackingPacker, core::kDefaultOneRowPerExamplePacker));
  add_recipe_options(cmd, *args);
  cmd->add_flag("--force", *force, "rebuild the tokenized cache even when it is up to date");
  cmd->callback([args, force] { run_preprocess(*args, *force); });
}

// A preference objective on the eval pairs (each pair its own row): its
// mean loss per pair and its metrics, as one JSON object on stdout.
void print_pair_eval(LoadedRecipe& r, Model& model, Objective& objective, Adapter* adapter,
                     const std::string& objective_name, const std::vector<Example>& eval) {
  const auto& training = r.recipe.section("training");
  PackStats stats;
  const auto rows = core::pack_preference_pairs(eval, pack_options_for(r.recipe, model), stats);
  if (stats.dropped > 0)
    spdlog::warn("eval: {} pairs longer than sequence_len {} left out", stats.dropped, training.get_int("sequence_len"));
  const int64_t mbs = training.get_int("micro_batch_size");
  model.set_training(false);  // the adapter's ops included
  core::prepare_objective(model, objective, adapter, rows, mbs);
  const auto result = core::evaluate_objective(model, &objective, adapter, rows, mbs);
  spdlog::info("eval ({}): {} pairs", objective_name, result.tokens);
  nlohmann::json j = {{"eval_loss", result.loss}, {"pairs", result.tokens}};
  for (const auto& [name, value] : result.metrics) j[name] = value;
  std::printf("%s\n", j.dump().c_str());
}

// Mean cross-entropy per supervised token over the eval documents, packed
// by the recipe's packer, and its perplexity, as JSON on stdout.
void print_token_eval(LoadedRecipe& r, Model& model, const std::vector<Example>& eval) {
  const auto& training = r.recipe.section("training");
  std::string packer_name;
  auto packer = core::make_recipe_packer(r.recipe, r.registry, &packer_name);
  PackStats stats;
  const auto rows = packer->pack(eval, pack_options_for(r.recipe, model), stats);
  if (stats.truncated > 0)
    spdlog::warn("eval: {} examples truncated to sequence_len {}", stats.truncated, training.get_int("sequence_len"));
  const auto result = core::evaluate_loss(model, rows, training.get_int("micro_batch_size"));
  spdlog::info("eval: {} examples in {} rows ({}), {} supervised tokens", eval.size(), rows.size(),
               packer_name, result.tokens);
  nlohmann::json j = {{"eval_loss", result.loss}, {"perplexity", result.perplexity}, {"tokens", result.tokens}};
  std::printf("%s\n", j.dump().c_str());
}

// Loads the recipe's model (and --adapter) and objective, checks that the
// objective fits the data, and evaluates the eval split.
void run_eval(const RecipeArgs& args, const std::string& adapter) {
  LoadedRecipe r(args);
  r.model_ref();
  const auto& training = r.recipe.section("training");
  auto lm = core::load_model(r.recipe, r.registry, training.get_bool("bf16"));
  std::unique_ptr<Adapter> loaded_adapter;
  if (!adapter.empty()) loaded_adapter = load_recipe_adapter(r, adapter, *lm.model);
  std::unique_ptr<Objective> objective;
  std::string objective_name = core::kDefaultObjectivePlugin;
  if (const auto* ref = r.recipe.component("objective")) {
    objective_name = ref->plugin;
    objective = r.registry.create<Objective>(Kind::objective, ref->plugin, ref->config);
  }
  const bool pairs = objective && objective->data() == ObjectiveData::preference_pairs;
  core::check_objective_data(objective_name, pairs, core::is_preference_data(core::data_options_from_recipe(r.recipe)));
  auto tok = Tokenizer::load(lm.path);
  auto data = core::prepare_data(r.recipe, *tok);
  if (data.eval.empty())
    throw UsageError(fmt::format("{}: no eval data", r.recipe.path()),
                     "add a [[datasets]] table with split = \"eval\", or set [data] val_set_size");
  if (pairs)
    print_pair_eval(r, *lm.model, *objective, loaded_adapter.get(), objective_name, data.eval);
  else
    print_token_eval(r, *lm.model, data.eval);
}

// mftk eval: loss (and perplexity, or a preference objective's metrics) on a recipe's eval data.
void add_eval_command(CLI::App& app) {
  auto args = std::make_shared<RecipeArgs>();
  auto adapter = std::make_shared<std::string>();
  auto* cmd = app.add_subcommand("eval", "loss and perplexity of a model (and adapter) on a recipe's eval data");
  cmd->footer(
      "Prints {\"eval_loss\": mean cross-entropy per supervised token, \"perplexity\": exp(eval_loss), "
      "\"tokens\": supervised tokens} on stdout for the eval split ([[datasets]] with split = \"eval\", or "
      "[data] val_set_size). The number does not depend on packing: every document sees only itself. With a "
      "preference [objective] it prints {\"eval_loss\": the objective's mean loss per pair, "
      "\"pairs\", and its metrics under TRL's names (rewards/accuracies, ...)}; an objective with a reference "
      "model takes the model without the --adapter (without one, the model itself: every reward is 0).");
  add_recipe_options(cmd, *args);
  cmd->add_option("--adapter", *adapter,
                  fmt::format("adapter folder to load onto the model (the [adapter] plugin, or {})",
                              core::kDefaultAdapterPlugin));
  cmd->callback([args, adapter] { run_eval(*args, *adapter); });
}

// Packs the training data as a run would, compares each document of up to
// `rows` rows packed and alone, prints the differences; an Error (exit 1)
// past `tolerance` or when nothing could be compared.
void run_verify_packing(const RecipeArgs& args, int64_t rows, double tolerance) {
  LoadedRecipe r(args);
  r.model_ref();
  auto lm = core::load_model(r.recipe, r.registry, /*bf16=*/false);
  auto tok = Tokenizer::load(lm.path);
  auto data = core::prepare_data(r.recipe, *tok);
  if (data.train.empty()) throw UsageError(fmt::format("{}: no training examples", r.recipe.path()));
  std::string packer_name;
  auto packer = core::make_recipe_packer(r.recipe, r.registry, &packer_name);
  PackStats stats;
  const auto packed = packer->pack(data.train, pack_options_for(r.recipe, *lm.model), stats);
  const auto chosen = core::select_rows_to_verify(packed, size_t(rows));
  std::printf("verify packing: %zu of %zu rows packed by %s\n", chosen.size(), packed.size(), packer_name.c_str());
  const auto checks = core::measure_packing(*lm.model, chosen);
  const auto verdict = core::judge_packing(checks, tolerance);
  for (const auto& row : verdict.rows)
    std::printf("row %lld: %lld documents (%lld with supervised tokens), worst relative difference %.3g%s%s\n",
                (long long)row.row, (long long)row.documents, (long long)row.compared, row.worst,
                row.worst_what.empty() ? "" : " at ", row.worst_what.c_str());
  std::printf("overall worst relative difference %.3g (tolerance %.3g)%s%s\n", verdict.worst, tolerance,
              verdict.worst_what.empty() ? "" : ": ", verdict.worst_what.c_str());
  std::fflush(stdout);
  if (verdict.compared == 0)
    throw Error("verify packing: no document in the chosen rows has a supervised token; nothing was compared",
                "check the data ([data] train_on_inputs, empty answers) or pass more --rows");
  if (!verdict.passed)
    throw Error(fmt::format("verify packing: FAILED: a document scores differently inside a packed row than "
                            "alone (worst relative difference {:.3g} > tolerance {:.3g}; {})",
                            verdict.worst, tolerance, verdict.worst_what),
                "the model plugin must follow the attention rule in mftk/batch.h (same doc id, causal, inside "
                "the window, position ids restarting per document)");
  std::printf("packing is exact within %.3g\n", tolerance);
}

// mftk verify packing: packing changes no document's loss or gradient.
void add_verify_command(CLI::App& app) {
  auto* verify = app.add_subcommand("verify", "self-checks on a recipe's model and data");
  verify->require_subcommand(1);
  auto args = std::make_shared<RecipeArgs>();
  auto rows = std::make_shared<int64_t>(4);
  auto tolerance = std::make_shared<double>(1e-4);
  auto* cmd = verify->add_subcommand("packing", "check that packing changes no document's loss or gradient");
  cmd->footer(
      "Packs the training data as `mftk run` would and takes --rows rows (those holding two or more documents "
      "first). For every document in them it runs the model (fp32) on the packed row and on the document "
      "alone in its own row, and compares the sum of its loss over its supervised tokens, the norm of that "
      "loss's gradient and the gradient itself. The gradient is taken w.r.t. the token-embedding table and "
      "the lm_head weight, made trainable for the check only: the embedding gradient reaches exactly the "
      "tokens a document's loss depends on, so attention across a document boundary shows up as gradient on "
      "another document's tokens even when the loss barely moves. Prints each row's worst relative difference "
      "and the overall worst; exits 1 when it exceeds --tolerance.");
  add_recipe_options(cmd, *args);
  cmd->add_option("--rows", *rows, "packed rows to check")->check(CLI::Range(int64_t{1}, int64_t{1} << 20))
      ->capture_default_str();
  cmd->add_option("--tolerance", *tolerance, "largest relative difference accepted")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  cmd->callback([args, rows, tolerance] { run_verify_packing(*args, *rows, *tolerance); });
}

}  // namespace

void add_data_commands(CLI::App& app) {
  add_tokenize_command(app);
  add_preprocess_command(app);
  add_eval_command(app);
  add_verify_command(app);
}

}  // namespace mftk::cli
