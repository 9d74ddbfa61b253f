// The helpers the mftk_bench subcommands share (workload_support.h says
// what each is for).

#include "workload_support.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <regex>

#include "attention.h"
#include "batching.h"
#include "mftk/linear_slot.h"

namespace mftk::bench {

void emit(const CommonOptions& common, const std::vector<Row>& rows) {
  for (const auto& r : rows) print_row(r);
  if (!common.json.empty()) append_json_rows(common.json, rows, common.threads);
}

std::string model_recipe(const std::string& dir, const std::string& weight_dtype, const std::string& compute_dtype,
                         bool lora) {
  std::string text = fmt::format(
      "[model]\nplugin = \"mistral\"\npath = \"{}\"\ndtype = \"{}\"\ncompute_dtype = \"{}\"\n"
      "attention_chunk = {}\n\n"
      "[training]\nbf16 = {}\n\n"
      "[optimizer]\nplugin = \"adamw\"\nweight_decay = 0.0\nbeta1 = 0.9\nbeta2 = 0.999\neps = 1e-8\n",
      dir, weight_dtype, compute_dtype, kAttentionChunk, compute_dtype == "bf16");
  if (lora)
    text += "\n[adapter]\nplugin = \"lora\"\nr = 8\nalpha = 16\ndropout = 0.0\n"
            "target_modules = [\"q_proj\", \"k_proj\", \"v_proj\", \"o_proj\", \"gate_proj\", \"up_proj\", "
            "\"down_proj\"]\n";
  return text;
}

void make_engine(Engine& e, const std::string& recipe_text) {
  e.recipe = core::Recipe::parse(recipe_text, "bench-recipe.toml");
  e.recipe->resolve(e.registry);
}

FlopShape flop_shape(const ModelShape& s) {
  FlopShape f;
  f.vocab = s.vocab_size;
  f.hidden = s.hidden_size;
  f.intermediate = s.intermediate_size;
  f.layers = s.num_layers;
  f.heads = s.num_heads;
  f.kv_heads = s.num_kv_heads;
  f.head_dim = s.head_dim;
  return f;
}

PeerShape peer_shape(const ModelShape& s) {
  PeerShape p;
  p.vocab = s.vocab_size;
  p.hidden = s.hidden_size;
  p.intermediate = s.intermediate_size;
  p.layers = s.num_layers;
  p.heads = s.num_heads;
  p.kv_heads = s.num_kv_heads;
  p.head_dim = s.head_dim;
  p.rope_theta = s.rope_theta;
  p.rms_norm_eps = s.rms_norm_eps;
  return p;
}

const at::Tensor* find_named(const NamedTensors& tensors, const std::string& name) {
  for (const auto& [n, t] : tensors)
    if (n == name) return &t;
  return nullptr;
}

PeerWeights peer_weights_from(Model& model, bool fp32_copies) {
  auto take = [&](const at::Tensor& t) { return fp32_copies ? t.detach().to(at::kFloat).clone() : t.detach(); };
  PeerWeights w;
  w.layers.resize(size_t(model.shape().num_layers));
  static const std::regex slot_re(R"(model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+))");
  for (LinearSlot* slot : model.linear_slots()) {
    const NamedTensors params = slot->op->parameters();
    const at::Tensor* weight = find_named(params, "weight");
    const at::Tensor dense = weight ? *weight : slot->op->dense_weight(at::kFloat);
    if (slot->name == model.architecture().head_slot) {
      w.lm_head = take(dense);
      continue;
    }
    std::smatch m;
    if (!std::regex_match(slot->name, m, slot_re)) throw Error(fmt::format("bench: unexpected slot {}", slot->name));
    const size_t layer = std::stoul(m[1]);
    for (int p = 0; p < kProjections; ++p)
      if (m[3] == projection_name(p)) w.layers.at(layer).weight[size_t(p)] = take(dense);
  }
  for (const auto& [name, t] : model.named_parameters()) {
    std::smatch m;
    static const std::regex norm_re(R"(model\.layers\.(\d+)\.(input_layernorm|post_attention_layernorm)\.weight)");
    if (name == "model.embed_tokens.weight") w.embed_tokens = take(t);
    else if (name == "model.norm.weight") w.final_norm = take(t);
    else if (std::regex_match(name, m, norm_re)) {
      auto& layer = w.layers.at(std::stoul(m[1]));
      (m[2] == "input_layernorm" ? layer.input_norm : layer.post_attention_norm) = take(t);
    }
  }
  MFTK_CHECK(w.embed_tokens.defined() && w.final_norm.defined() && w.lm_head.defined(),
             "bench: the model lacks embed_tokens, norm or lm_head");
  return w;
}

void copy_lora_into(Model& model, PeerWeights& w) {
  static const std::regex slot_re(R"(model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+))");
  for (LinearSlot* slot : model.linear_slots()) {
    std::smatch m;
    if (!std::regex_match(slot->name, m, slot_re)) continue;
    const NamedTensors params = slot->op->parameters();
    const at::Tensor* a = find_named(params, "lora_A.weight");
    const at::Tensor* b = find_named(params, "lora_B.weight");
    if (!a || !b) throw Error(fmt::format("bench: slot {} has no LoRA weights after inject", slot->name));
    for (int p = 0; p < kProjections; ++p)
      if (m[3] == projection_name(p)) {
        auto& layer = w.layers.at(std::stoul(m[1]));
        layer.lora_A[size_t(p)] = a->detach().to(at::kFloat).clone();
        layer.lora_B[size_t(p)] = b->detach().to(at::kFloat).clone();
      }
  }
}

at::Tensor random_ids(int64_t batch, int64_t seq, int64_t vocab, uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  return at::randint(3, vocab, {batch, seq}, gen, at::TensorOptions().dtype(at::kLong));
}

Batch mftk_batch(const at::Tensor& ids, int64_t prompt_tokens) {
  std::vector<PackedRow> rows(size_t(ids.size(0)));
  for (int64_t b = 0; b < ids.size(0); ++b) {
    Example ex;
    const at::Tensor row = ids[b].to(at::kInt).contiguous();
    ex.ids.assign(row.data_ptr<int32_t>(), row.data_ptr<int32_t>() + row.numel());
    ex.loss_mask.assign(ex.ids.size(), 1);
    std::fill_n(ex.loss_mask.begin(), std::min<size_t>(size_t(prompt_tokens), ex.loss_mask.size()), 0);
    core::append_document(rows[size_t(b)], ex, ex.ids.size());
  }
  return core::make_batch(rows);
}

void time_rotated(int steps, const std::vector<Side>& sides) {
  const size_t n = sides.size();
  for (int i = 0; i < steps; ++i)
    for (size_t k = 0; k < n; ++k) {
      const Side& side = sides[(size_t(i) + k) % n];
      const auto t0 = Clock::now();
      const double v = side.fn();
      const double s = seconds_since(t0);
      side.timing->seconds.push_back(s);
      std::fprintf(stderr, "  %s step %d: %.1f ms (value %.5f)\n", side.label, i + 1, 1e3 * s, v);
    }
}

std::string pair_ratio_summary(const Timing& peer, const Timing& mftk) {
  std::vector<double> r;
  for (size_t i = 0; i < mftk.seconds.size() && i < peer.seconds.size(); ++i) r.push_back(peer.seconds[i] / mftk.seconds[i]);
  if (r.empty()) return "no pairs";
  return fmt::format("{:.2f}..{:.2f}, median {:.2f}", *std::min_element(r.begin(), r.end()),
                     *std::max_element(r.begin(), r.end()), median(r));
}

double relative_difference(double a, double b) { return std::abs(a - b) / std::max(1e-12, std::abs(b)); }

double mftk_attention_pairs(const Batch& batch, std::optional<int64_t> window) {
  const int64_t B = batch.input_ids.size(0), T = batch.input_ids.size(1);
  const at::Tensor index = at::arange(T, at::kLong);
  const at::Tensor pos = batch.position_ids.defined() ? batch.position_ids.to(at::kLong)
                                                      : index.unsqueeze(0).expand({B, T});
  const at::Tensor doc = batch.doc_ids.defined() ? batch.doc_ids.to(at::kLong) : at::zeros({B, T}, at::kLong);
  mistral::AttentionPlan plan(mistral::AttentionMaskRule{index, index, pos, pos, doc, doc, window}, kAttentionChunk);
  double pairs = 0;
  for (const auto& b : plan.blocks()) pairs += double(b.q1 - b.q0) * double(b.k1 - b.k0);
  return pairs;
}

nlohmann::json in_child(const std::function<nlohmann::json()>& fn) {
  int fds[2];
  if (::pipe(fds) != 0) throw Error("bench: pipe() failed");
  std::fflush(nullptr);  // else the child inherits, and prints again, what stdout still buffers
  const pid_t pid = ::fork();
  if (pid < 0) throw Error("bench: fork() failed");
  if (pid == 0) {
    ::close(fds[0]);
    std::string out;
    int code = 0;
    try {
      out = fn().dump();
    } catch (const std::exception& e) {
      out = nlohmann::json{{"error", e.what()}}.dump();
      code = 1;
    }
    size_t done = 0;
    while (done < out.size()) {
      const ssize_t n = ::write(fds[1], out.data() + done, out.size() - done);
      if (n <= 0) break;
      done += size_t(n);
    }
    ::close(fds[1]);
    std::fflush(nullptr);
    ::_exit(code);
  }
  ::close(fds[1]);
  std::string text;
  char buf[4096];
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;) text.append(buf, size_t(n));
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded()) throw Error(fmt::format("bench: child process {} died without a result (status {})", pid, status));
  if (j.contains("error")) throw Error(fmt::format("bench child: {}", j["error"].get<std::string>()));
  return j;
}

}  // namespace mftk::bench
