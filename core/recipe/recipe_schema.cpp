// The keys of the core recipe tables. The seed recipe's Axolotl keys keep
// their names (sequence_len, micro_batch_size, lr_scheduler, ...) so people
// can translate recipes line by line.
#include "recipe.h"

#include <fmt/format.h>

#include "defaults.h"

namespace mftk::core {

const std::map<std::string, std::vector<KeySpec>>& core_tables() {
  using K = KeySpec;
  static const std::map<std::string, std::vector<KeySpec>> tables = {
      {"training",
       {
           K::integer("sequence_len", 2048, "tokens per row (packed rows hold several examples)").range(8, 1 << 20),
           K::boolean("sample_packing", true, "pack several examples per row (packer plugin) instead of one per row"),
           K::boolean("pad_to_sequence_len", false, "pad every row to sequence_len (fixed shapes)"),
           K::integer("micro_batch_size", 1, "rows per forward/backward pass").range(1, 1 << 16),
           K::integer("gradient_accumulation_steps", 1, "micro-batches per optimizer step").range(1, 1 << 16),
           K::number("num_epochs", 1.0, "passes over the training data (fractions allowed)").range(0, 1e6),
           K::integer("max_steps", -1, "optimizer steps; -1 derives them from num_epochs").range(-1, 1e12),
           K::boolean("bf16", false, "compute in bfloat16 (frozen base weights in bf16, trainable ones fp32)"),
           K::boolean("gradient_checkpointing", false, "recompute each decoder layer in backward to save memory"),
           K::number("max_grad_norm", 1.0, "clip the global gradient norm; 0 disables").range(0, 1e9),
           K::integer("logging_steps", 10, "log a metrics line every N optimizer steps").range(1, 1e12),
           K::boolean("tensorboard", true,
                      "also write each metrics line as TensorBoard scalars in output_dir/tensorboard/ "
                      "(tensorboard --logdir output_dir)"),
           K::integer("eval_steps", 0, "evaluate every N steps; 0: only at the end").range(0, 1e12),
           K::integer("save_steps", 0, "checkpoint every N steps; 0: only at the end").range(0, 1e12),
           K::integer("save_total_limit", 0, "keep only the newest N checkpoints; 0 keeps all").range(0, 1e9),
           K::string("output_dir", "out", "where checkpoints, logs, metrics and the adapter go"),
           K::integer("seed", 42, "fixes data order, dropout and initialisation").range(0, 9.2e18),
           K::string("resume_from_checkpoint", "", "a checkpoint folder, or \"latest\" in output_dir"),
           K::boolean("group_by_length", false, fmt::format("batch rows of similar length ({} packer)",
                                                             kDefaultOneRowPerExamplePacker)),
           K::integer("threads", 0, "CPU threads for libtorch; 0: all cores").range(0, 4096),
           // Checked beyond one_of by check_device_setting (core/train/device.h): cuda:N takes any index.
           K::string("device", "auto",
                     "where weights, adapter, optimizer state and batches live: auto (a GPU when the libtorch has "
                     "CUDA and one is visible, else cpu), cpu, cuda, or cuda:N; under mftk launch / torchrun each "
                     "rank takes cuda:LOCAL_RANK"),
           K::boolean("merge_adapter", false, "after training, write output_dir/merged as a plain HF checkpoint"),
           K::integer("nan_patience", 3, "stop after this many non-finite losses in a row").range(1, 1e9),
           K::number("distributed_timeout_s", 300.0,
                     "data-parallel runs: the longest any rank waits for the others (rendezvous, each collective)")
               .range(0.5, 1e6),
       }},
      {"data",
       {
           K::string("dataset_prepared_path", "prepared", "cache of tokenized data, keyed by a hash of its inputs"),
           K::number("val_set_size", 0.0, "fraction of training rows held out for eval when no eval dataset")
               .range(0, 0.9),
           K::string("chat_template", "auto", "auto follows the tokenizer").one_of({"auto", "mistral_v1", "mistral_v3"}),
           K::boolean("train_on_inputs", false, "loss on prompts too (false: assistant answers only)"),
           K::boolean("skip_bad_rows", false, "skip malformed rows (counted and reported) instead of failing"),
           K::boolean("drop_long_examples", false, "drop examples longer than sequence_len instead of truncating"),
       }},
      {"schedule",
       {
           K::number("learning_rate", 2e-4, "peak learning rate").range(0, 10),
           K::string("lr_scheduler", "cosine", "shape after warmup").one_of({"constant", "linear", "cosine"}),
           K::integer("warmup_steps", 0, "linear warmup steps (overrides warmup_ratio when > 0)").range(0, 1e12),
           K::number("warmup_ratio", 0.0, "warmup as a fraction of all steps").range(0, 1),
           K::number("min_lr_ratio", 0.0, "floor of linear/cosine decay, as a fraction of learning_rate").range(0, 1),
       }},
      {"validate",
       {
           K::strings("prompts", {}, "after training, generate an answer to each (wrapped in the chat template)"),
           K::integer("max_new_tokens", 128, "tokens to generate per prompt").range(1, 1 << 20),
           K::number("temperature", 0.0, "0 is greedy").range(0, 100),
           K::integer("exact_match", 0, "score greedy answers of N eval examples before and after training; 0: off")
               .range(0, 1 << 20),
           // The export parity gate (core/model/export_parity.h): rows through the trained model and through each
           // artefact read back from disk.
           K::integer("parity_rows", 16,
                      "export parity: held-out rows (the eval split; training rows when there is none) run through "
                      "the trained model and each merged or exported artefact; 0: no parity check")
               .range(0, 1 << 20),
           K::integer("parity_tokens", 2048,
                      "export parity: at most this many tokens in all (the trained model's log-probabilities are "
                      "kept: tokens x vocab x 4 bytes)")
               .range(2, 1 << 24),
           K::number("merge_max_kl", -1.0,
                     "export parity: fail the run when the merged checkpoint's mean KL(trained || merged) per token "
                     "exceeds this (nats); -1: automatic (1e-6 when weights and compute are fp32, 5e-3 with bf16/f16)")
               .range(-1, 1e9),
       }},
      {"plugins",
       {
           K::strings("search_paths", {}, "extra folders to search for plugin libraries, searched first"),
       }},
      {"datasets",
       {
           K::string("path", std::nullopt, "a JSONL file"),
           K::string("type", "chat", "row format; preference: {prompt, chosen, rejected} pairs for a preference "
                     "[objective]")
               .one_of({"instruction", "chat", "completion", "preference"}),
           K::string("split", "train", "train, or eval for a held-out file").one_of({"train", "eval"}),
           K::string("field", "", "chat: messages field (default messages); completion: text field (default text)"),
           K::string("field_instruction", "instruction", "instruction rows: the prompt field"),
           K::string("field_input", "input", "instruction rows: optional extra input, appended to the prompt"),
           K::string("field_output", "output", "instruction rows: the answer field"),
           K::string("field_system", "system", "optional system prompt field"),
       }},
  };
  return tables;
}

std::vector<KeySpec> export_core_keys() {
  return {export_out_key(),
          // The export parity gate: the artefact read back and compared with the trained model.
          KeySpec::number("max_kl", -1.0,
                          "fail the run when this artefact's mean KL(trained || artefact) per token exceeds this "
                          "(nats; README \"Export parity\"); -1: report the parity figures only")
              .range(-1, 1e9)};
}

}  // namespace mftk::core
