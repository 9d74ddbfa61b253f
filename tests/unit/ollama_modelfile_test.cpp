// The Ollama Modelfile's TEMPLATE against mftk's own chat encoding. The
// template is rendered here by a small Go text/template interpreter (only
// what the template uses: trim markers, variables declared with := and
// assigned with =, range $i, $m := over .Messages, if / else if / else,
// eq, lt, and, field access), with the values Ollama passes (System: the
// system messages joined, Messages: every message, system ones included;
// template/template.go, Execute and collate). The rendered text is then
// tokenised as llama.cpp tokenises a prompt for Ollama: BOS first, control
// pieces written in the text read as those tokens, and every text fragment
// in between encoded with a leading word boundary (llama.cpp's SPM
// tokenizer prefixes a space after a special token, as sentencepiece does
// at the start of each encode_chat piece). The ids must equal encode_chat's
// for the same conversation, on Mistral's real v1 and v3 tokenizers; the
// rendered text itself is also compared with strings written out here from
// docs/formats.md §3.2.
#include <gtest/gtest.h>

#include <cctype>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "chat_template.h"
#include "mftk/error.h"
#include "mftk/tokenizer.h"
#include "ollama_modelfile.h"

namespace {

namespace fs = std::filesystem;
using mftk::Tokenizer;
using mftk::core::ChatFormat;
using mftk::core::ChatMessage;

// ------------------------------------------------- a tiny Go template engine

struct Message {
  std::string role, content;
};
struct Data {
  std::string system;
  std::vector<Message> messages;
};

struct Value {
  enum Kind { none, integer, string, boolean, list, message, root } kind = none;
  int64_t i = 0;
  std::string s;
  bool b = false;
  const Message* m = nullptr;
  const Data* d = nullptr;
  bool truthy() const {
    switch (kind) {
      case integer: return i != 0;
      case string: return !s.empty();
      case boolean: return b;
      case list: return !d->messages.empty();
      case message:
      case root: return true;
      case none: return false;
    }
    return false;
  }
  std::string text() const {
    if (kind == string) return s;
    if (kind == integer) return std::to_string(i);
    if (kind == boolean) return b ? "true" : "false";
    throw std::runtime_error("cannot print this value");
  }
};

// A parsed piece of template: text, or an action with its body.
struct Node {
  enum Kind { text, output, range, branch } kind = text;
  std::string body;                     // text, or the action's words
  std::vector<Node> children;           // range / if body
  std::vector<std::pair<std::string, std::vector<Node>>> elses;  // "else if COND" / "else" branches
};

class GoTemplate {
 public:
  explicit GoTemplate(const std::string& source) {
    split(source);
    size_t at = 0;
    root_ = parse_list(at, nullptr);
    if (at != items_.size()) throw std::runtime_error("unexpected {{ end }} / {{ else }}");
  }

  std::string render(const Data& data) {
    data_ = &data;
    scopes_.assign(1, {});
    std::string out;
    run(root_, out);
    return out;
  }

 private:
  struct Item {
    bool action;
    std::string text;
  };

  static bool space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

  void split(const std::string& s) {
    size_t at = 0;
    bool trim_next = false;
    while (at < s.size()) {
      const size_t open = s.find("{{", at);
      std::string text = s.substr(at, open == std::string::npos ? std::string::npos : open - at);
      if (trim_next) {
        size_t k = 0;
        while (k < text.size() && space(text[k])) ++k;
        text = text.substr(k);
      }
      if (open == std::string::npos) {
        items_.push_back({false, text});
        break;
      }
      const size_t close = s.find("}}", open);
      if (close == std::string::npos) throw std::runtime_error("unclosed {{");
      std::string inner = s.substr(open + 2, close - open - 2);
      if (inner.size() >= 2 && inner[0] == '-' && space(inner[1])) {
        while (!text.empty() && space(text.back())) text.pop_back();
        inner = inner.substr(2);
      }
      trim_next = inner.size() >= 2 && inner.back() == '-' && space(inner[inner.size() - 2]);
      if (trim_next) inner = inner.substr(0, inner.size() - 2);
      items_.push_back({false, text});
      items_.push_back({true, trimmed(inner)});
      at = close + 2;
    }
  }

  static std::string trimmed(const std::string& s) {
    size_t b = 0, e = s.size();
    while (b < e && space(s[b])) ++b;
    while (e > b && space(s[e - 1])) --e;
    return s.substr(b, e - b);
  }
  static bool starts(const std::string& s, const std::string& word) {
    return s == word || (s.rfind(word + " ", 0) == 0);
  }

  // Parses items until {{ end }} or {{ else ... }} (left for the caller).
  std::vector<Node> parse_list(size_t& at, std::string* stop) {
    std::vector<Node> nodes;
    while (at < items_.size()) {
      const Item& item = items_[at];
      if (!item.action) {
        nodes.push_back({Node::text, item.text, {}, {}});
        ++at;
        continue;
      }
      if (item.text == "end" || starts(item.text, "else")) {
        if (!stop) throw std::runtime_error("stray " + item.text);
        *stop = item.text;
        return nodes;
      }
      ++at;
      if (starts(item.text, "range") || starts(item.text, "if")) {
        Node n;
        n.kind = starts(item.text, "range") ? Node::range : Node::branch;
        n.body = item.text.substr(n.kind == Node::range ? 6 : 3);
        std::string end;
        n.children = parse_list(at, &end);
        while (end != "end") {
          ++at;
          std::string cond = end == "else" ? "" : trimmed(end.substr(4));  // "if COND" or ""
          if (!cond.empty() && !starts(cond, "if")) throw std::runtime_error("unsupported " + end);
          if (!cond.empty()) cond = trimmed(cond.substr(2));
          std::string next;
          n.elses.push_back({cond.empty() ? std::string("true") : cond, parse_list(at, &next)});
          end = next;
        }
        ++at;  // the end
        nodes.push_back(std::move(n));
        continue;
      }
      nodes.push_back({Node::output, item.text, {}, {}});
    }
    return nodes;
  }

  // --- expressions
  std::vector<std::string> words(const std::string& s) {
    std::vector<std::string> out;
    size_t i = 0;
    while (i < s.size()) {
      if (space(s[i])) {
        ++i;
        continue;
      }
      if (s[i] == '"') {
        const size_t e = s.find('"', i + 1);
        out.push_back(s.substr(i, e - i + 1));
        i = e + 1;
        continue;
      }
      if (s[i] == '(') {
        int depth = 0;
        size_t e = i;
        for (; e < s.size(); ++e) {
          if (s[e] == '(') ++depth;
          if (s[e] == ')' && --depth == 0) break;
        }
        out.push_back(s.substr(i, e - i + 1));
        i = e + 1;
        continue;
      }
      size_t e = i;
      while (e < s.size() && !space(s[e])) ++e;
      out.push_back(s.substr(i, e - i));
      i = e;
    }
    return out;
  }

  Value* lookup(const std::string& name) {
    for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it)
      if (auto f = it->find(name); f != it->end()) return &f->second;
    return nullptr;
  }

  Value field(const Value& on, const std::string& name) {
    Value v;
    if (on.kind == Value::root && name == "System") v.kind = Value::string, v.s = on.d->system;
    else if (on.kind == Value::root && name == "Messages") v.kind = Value::list, v.d = on.d;
    else if (on.kind == Value::message && name == "Role") v.kind = Value::string, v.s = on.m->role;
    else if (on.kind == Value::message && name == "Content") v.kind = Value::string, v.s = on.m->content;
    else throw std::runtime_error("unknown field " + name);
    return v;
  }

  Value operand(const std::string& w) {
    if (w.front() == '(') return eval(w.substr(1, w.size() - 2));
    if (w.front() == '"') return Value{Value::string, 0, w.substr(1, w.size() - 2)};
    if (std::isdigit(static_cast<unsigned char>(w.front())) || w.front() == '-')
      return Value{Value::integer, std::stoll(w)};
    Value v;
    std::string rest;
    if (w.front() == '$') {
      const size_t dot = w.find('.');
      const std::string name = w.substr(0, dot);
      if (name == "$") v = Value{Value::root, 0, "", false, nullptr, data_};
      else if (Value* var = lookup(name)) v = *var;
      else throw std::runtime_error("undefined variable " + name);
      rest = dot == std::string::npos ? "" : w.substr(dot);
    } else if (w.front() == '.') {
      v = Value{Value::root, 0, "", false, nullptr, data_};  // dot is the root outside range bodies here
      rest = w;
    } else {
      throw std::runtime_error("unsupported operand " + w);
    }
    size_t i = 0;
    while (i < rest.size()) {
      const size_t next = rest.find('.', i + 1);
      v = field(v, rest.substr(i + 1, next == std::string::npos ? std::string::npos : next - i - 1));
      i = next == std::string::npos ? rest.size() : next;
    }
    return v;
  }

  Value eval(const std::string& expr) {
    const auto w = words(expr);
    if (w.empty()) throw std::runtime_error("empty expression");
    auto boolean = [](bool b) { return Value{Value::boolean, 0, "", b}; };
    if (w[0] == "eq" || w[0] == "lt") {
      const Value a = operand(w.at(1)), b = operand(w.at(2));
      if (a.kind != b.kind) throw std::runtime_error("incompatible types for comparison");
      if (w[0] == "eq") return boolean(a.kind == Value::integer ? a.i == b.i : a.s == b.s);
      return boolean(a.kind == Value::integer ? a.i < b.i : a.s < b.s);
    }
    if (w[0] == "and") {
      Value last;
      for (size_t i = 1; i < w.size(); ++i) {
        last = operand(w[i]);
        if (!last.truthy()) return last;
      }
      return last;
    }
    if (w[0] == "not") return boolean(!operand(w.at(1)).truthy());
    if (w.size() != 1) throw std::runtime_error("unsupported call " + w[0]);
    return operand(w[0]);
  }

  void run(const std::vector<Node>& nodes, std::string& out) {
    for (const Node& n : nodes) {
      if (n.kind == Node::text) {
        out += n.body;
      } else if (n.kind == Node::output) {
        const auto w = words(n.body);
        if (w.size() >= 3 && w[0].front() == '$' && (w[1] == ":=" || w[1] == "=")) {
          const std::string rest = n.body.substr(n.body.find(w[1]) + w[1].size());
          const Value v = eval(rest);
          if (w[1] == ":=") scopes_.back()[w[0]] = v;
          else if (Value* var = lookup(w[0])) *var = v;
          else throw std::runtime_error("assignment to undeclared " + w[0]);
        } else {
          out += eval(n.body).text();
        }
      } else if (n.kind == Node::range) {
        // "$i, $m := EXPR"
        const size_t decl = n.body.find(":=");
        const std::string vars = n.body.substr(0, decl);
        const std::string index = trimmed(vars.substr(0, vars.find(',')));
        const std::string element = trimmed(vars.substr(vars.find(',') + 1));
        const Value list = eval(n.body.substr(decl + 2));
        if (list.kind != Value::list) throw std::runtime_error("range over a non-list");
        for (size_t i = 0; i < list.d->messages.size(); ++i) {
          scopes_.push_back({});
          scopes_.back()[index] = Value{Value::integer, int64_t(i)};
          scopes_.back()[element] = Value{Value::message, 0, "", false, &list.d->messages[i]};
          run(n.children, out);
          scopes_.pop_back();
        }
      } else {
        std::vector<std::pair<std::string, const std::vector<Node>*>> arms = {{n.body, &n.children}};
        for (const auto& e : n.elses) arms.push_back({e.first, &e.second});
        for (const auto& [cond, body] : arms) {
          if (cond == "true" || eval(cond).truthy()) {
            scopes_.push_back({});
            run(*body, out);
            scopes_.pop_back();
            break;
          }
        }
      }
    }
  }

  std::vector<Item> items_;
  std::vector<Node> root_;
  const Data* data_ = nullptr;
  std::vector<std::map<std::string, Value>> scopes_;
};

// ------------------------------------------------------------ the fixtures

std::string tokenizer_path(const std::string& version) {
  const char* from_env = std::getenv("MFTK_SHARED_DIR");
  const std::string shared = from_env != nullptr ? from_env : MFTK_SHARED_DIR;
  const fs::path path = fs::path(shared) / "data/mistral-tokenizers" / ("tokenizer.model." + version);
  return fs::exists(path) ? path.string() : std::string();
}

// Ollama's values for a conversation: System = the system messages' text,
// Messages = all of them, system included.
Data ollama_values(const std::vector<ChatMessage>& conversation) {
  Data d;
  for (const auto& m : conversation) {
    if (m.role == "system") d.system += (d.system.empty() ? "" : "\n\n") + m.content;
    d.messages.push_back({m.role, m.content});
  }
  return d;
}

// The prompt as llama.cpp tokenises it for Ollama (see the top of the file).
std::vector<int32_t> llamacpp_ids(const Tokenizer& tok, const std::string& text) {
  std::vector<std::pair<std::string, int32_t>> specials;
  for (int32_t id = 0; id < tok.vocab_size(); ++id)
    if (tok.type(id) == mftk::PieceType::control || tok.type(id) == mftk::PieceType::unknown)
      specials.push_back({tok.piece(id), id});
  std::vector<int32_t> ids = {tok.bos_id()};
  std::string fragment;
  auto flush = [&] {
    if (fragment.empty()) return;
    const auto piece = tok.encode(fragment);
    ids.insert(ids.end(), piece.begin(), piece.end());
    fragment.clear();
  };
  for (size_t at = 0; at < text.size();) {
    const std::pair<std::string, int32_t>* best = nullptr;
    for (const auto& s : specials)
      if (!s.first.empty() && text.compare(at, s.first.size(), s.first) == 0 && (!best || s.first.size() > best->first.size()))
        best = &s;
    if (best) {
      flush();
      ids.push_back(best->second);
      at += best->first.size();
    } else {
      fragment += text[at++];
    }
  }
  flush();
  return ids;
}

class OllamaTemplate : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* v : {"v1", "v3"}) {
      const std::string path = tokenizer_path(v);
      if (path.empty())
        GTEST_SKIP() << "Mistral tokenizer files not found under " << MFTK_SHARED_DIR
                     << "/data/mistral-tokenizers (set MFTK_SHARED_DIR)";
      tokenizers_[v] = Tokenizer::load(path);
    }
  }
  std::map<std::string, std::shared_ptr<Tokenizer>> tokenizers_;
};

std::vector<std::vector<ChatMessage>> conversations() {
  return {
      {{"user", "What is 2 + 2?"}},
      {{"system", "You are a terse assistant."}, {"user", "What is 2 + 2?"}},
      {{"user", "Hi there"}, {"assistant", "Hello! How can I help?"}, {"user", "Name a colour."}},
      {{"system", "Answer in French."},
       {"user", "Good morning"},
       {"assistant", "Bonjour !"},
       {"user", "Thank you, see you tomorrow."}},
      {{"system", "Be brief.\nUse lists."},
       {"user", "List two fruits"},
       {"assistant", "- apple\n- pear"},
       {"user", "Two more?"},
       {"assistant", "- plum\n- fig"},
       {"user", "Which is sweetest?"}},
  };
}

TEST_F(OllamaTemplate, RendersTheIdsOfMftksChatEncoding) {
  int compared = 0;
  for (const auto& [name, format] : std::vector<std::pair<std::string, ChatFormat>>{{"v1", ChatFormat::v1},
                                                                                   {"v3", ChatFormat::v3}}) {
    const Tokenizer& tok = *tokenizers_[name];
    ASSERT_EQ(mftk::core::detect_chat_format(tok), format);
    GoTemplate tmpl(mftk::core::ollama_chat_template(format));
    for (const auto& conversation : conversations()) {
      // The prompt Ollama sends (ends with a user turn) and the same with the
      // reply appended, as in a multi-turn history.
      const std::string rendered = tmpl.render(ollama_values(conversation));
      const auto want = mftk::core::encode_chat(tok, format, conversation, false, /*add_generation_prompt=*/true);
      EXPECT_EQ(llamacpp_ids(tok, rendered), want.ids) << name << ": " << rendered;
      auto answered = conversation;
      answered.push_back({"assistant", "The answer is 4."});
      const std::string full = tmpl.render(ollama_values(answered));
      const auto want_full = mftk::core::encode_chat(tok, format, answered, false, false);
      EXPECT_EQ(llamacpp_ids(tok, full), want_full.ids) << name << ": " << full;
      compared += 2;
    }
  }
  EXPECT_EQ(compared, 20);
}

TEST_F(OllamaTemplate, RenderedTextAsTheFormatIsWrittenOut) {
  const std::vector<ChatMessage> chat = {{"system", "Be brief."},
                                         {"user", "Hi"},
                                         {"assistant", "Hello!"},
                                         {"user", "And now?"}};
  // v1: "[INST] " + text + " [/INST]" as plain text, system on the first user turn.
  EXPECT_EQ(GoTemplate(mftk::core::ollama_chat_template(ChatFormat::v1)).render(ollama_values(chat)),
            "[INST] Be brief.\n\nHi [/INST] Hello!</s>[INST] And now? [/INST]");
  // v3: control tokens, system on the last user turn.
  EXPECT_EQ(GoTemplate(mftk::core::ollama_chat_template(ChatFormat::v3)).render(ollama_values(chat)),
            "[INST]Hi[/INST]Hello!</s>[INST]Be brief.\n\nAnd now?[/INST]");
  // Without a system prompt nothing is added.
  EXPECT_EQ(GoTemplate(mftk::core::ollama_chat_template(ChatFormat::v3)).render(ollama_values({{"user", "Hi"}})),
            "[INST]Hi[/INST]");
}

TEST(OllamaModelfile, TextNamesFileTemplateAndStops) {
  mftk::core::OllamaModelfile m;
  m.format = ChatFormat::v3;
  m.from = "./model.gguf";
  const std::string text = m.text();
  EXPECT_EQ(text.rfind(mftk::core::kOllamaModelfileMark, 0), 0u);
  EXPECT_NE(text.find("\nFROM ./model.gguf\n"), std::string::npos);
  EXPECT_EQ(text.find("ADAPTER"), std::string::npos);
  EXPECT_NE(text.find("\nTEMPLATE \"\"\"" + mftk::core::ollama_chat_template(ChatFormat::v3) + "\"\"\"\n"),
            std::string::npos);
  EXPECT_NE(text.find("\nPARAMETER stop \"</s>\"\n"), std::string::npos);
  EXPECT_NE(text.find("\nPARAMETER stop \"[INST]\"\n"), std::string::npos);
  mftk::core::OllamaModelfile lora;
  lora.from_placeholder = "./base.gguf";
  lora.adapter = "./adapter.gguf";
  const std::string lora_text = lora.text();
  EXPECT_NE(lora_text.find("\nFROM ./base.gguf\nADAPTER ./adapter.gguf\n"), std::string::npos);
  EXPECT_NE(lora_text.find("Replace the FROM path"), std::string::npos);
  EXPECT_EQ(mftk::core::modelfile_path_for("/a/b/model-q8.gguf"), "/a/b/model-q8.Modelfile");
}

}  // namespace
