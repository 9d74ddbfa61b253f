// mftk never deletes, truncates or replaces a file or folder it did not
// write (mftk/output_path.h). Every writing command of the real binary is
// pointed at a path holding a user's file: each must exit 2 with a message
// naming the path, and the user's bytes must survive, with nothing left
// beside them. Re-running into mftk's own output must keep working (re-runs,
// resume, re-exports), and a GGUF exported with --adapter is named after the
// model and the adapter (read back with the core's GGUF reader). OutputGuard
// itself is tested in process at the end.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

#include "child_process.h"
#include "gguf_reader.h"
#include "lora/lora_adapter.h"
#include "mftk/error.h"
#include "mftk/model.h"
#include "mftk/output_path.h"
#include "mistral/mistral_model.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

using mftk::child_process::mftk_binary;
using mftk::child_process::shell_quote;

std::string read_bytes(const fs::path& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

void write_bytes(const fs::path& path, const std::string& bytes) {
  fs::create_directories(path.parent_path());
  std::ofstream(path, std::ios::binary) << bytes;
}

// Every path below `dir` (relative) with its bytes; folders map to "<dir>".
std::map<std::string, std::string> tree(const fs::path& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    out[fs::relative(e.path(), dir).string()] = e.is_directory() ? "<dir>" : read_bytes(e.path());
  return out;
}

struct Result {
  int exit_code = -1;
  std::string err;  // stdout and stderr
};

// A user's bytes: nothing mftk would write.
const std::string kUserBytes = "my own notes, not a model\n\x01\x02\x03 keep me\n";

class OutputSafety : public testing::Test {
 public:
  static void SetUpTestSuite() {
    std::string pattern = (fs::path(testing::TempDir()) / "mftk_output_safety_XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    base_ = (dir_ / "base").string();
    const auto init = run("init --preset tiny --layers 1 --hidden 64 --intermediate 128 --heads 4 --kv-heads 2 "
                          "--vocab 512 --seed 1 --out " + shell_quote(base_));
    ASSERT_EQ(init.exit_code, 0) << init.err;
    std::string rows;
    for (int i = 0; i < 16; ++i)
      rows += json{{"instruction", fmt::format("What is {} plus one?", i)}, {"output", std::to_string(i + 1)}}.dump() +
              "\n";
    data_ = (dir_ / "train.jsonl").string();
    write_bytes(data_, rows);
    recipe_ = (dir_ / "recipe.toml").string();
    write_bytes(recipe_, fmt::format(R"([model]
plugin = "mistral"
path = "{base}"

[adapter]
plugin = "lora"
r = 4
alpha = 8

[[datasets]]
path = "{data}"
type = "instruction"

[data]
dataset_prepared_path = "{dir}/prepared"

[training]
sequence_len = 64
micro_batch_size = 2
max_steps = 2
save_steps = 1
output_dir = "{dir}/run"
threads = 1
)",
                                     fmt::arg("base", base_), fmt::arg("data", data_), fmt::arg("dir", dir_.string())));
    write_adapter();
  }
  static void TearDownTestSuite() {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

 protected:
  static Result run(const std::string& args, const std::string& cwd = "") {
    static int counter = 0;
    const fs::path log = dir_ / fmt::format("mftk-{}.log", ++counter);
    const std::string cd = cwd.empty() ? "" : "cd " + shell_quote(cwd) + " && ";
    const int status = std::system((cd + mftk_binary() + " " + args + " > " + shell_quote(log.string()) + " 2>&1").c_str());
    Result r;
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    r.err = read_bytes(log);
    fs::remove(log);
    return r;
  }

  // A LoRA adapter (non-zero B, so merging changes the model) written with
  // the lora plugin's own API: no training run needed to have one.
  static void write_adapter() {
    mftk::mistral::MistralModel model;
    model.load_config(base_);
    mftk::LoadOptions lo;
    lo.path = base_;
    model.load(lo);
    mftk::lora::LoRAOptions o;
    o.r = 4;
    o.alpha = 8;
    o.target_modules = {"q_proj", "v_proj"};
    mftk::lora::LoRAAdapter adapter(o);
    adapter.inject(model);
    at::manual_seed(5);
    at::NoGradGuard no_grad;
    for (auto& [name, t] : adapter.trainable_parameters())
      if (name.find("lora_B") != std::string::npos) t.copy_(at::randn_like(t) * 0.05);
    adapter_ = (dir_ / "adapter").string();
    adapter.save(adapter_, base_);
  }

  // A folder holding one file of the user's.
  static fs::path user_folder(const std::string& name) {
    const fs::path f = dir_ / name;
    write_bytes(f / "notes.txt", kUserBytes);
    return f;
  }

  // `args` must be refused (exit 2, the message names `named`) and leave the
  // folder `watched` (which holds the user's file) exactly as it was.
  static void expect_refused(const std::string& args, const fs::path& named, const fs::path& watched,
                             const std::string& cwd = "") {
    const auto before = tree(watched);
    const auto r = run(args, cwd);
    EXPECT_EQ(r.exit_code, 2) << "mftk " << args << "\n" << r.err;
    EXPECT_NE(r.err.find(named.string()), std::string::npos) << "the message should name " << named << ":\n" << r.err;
    EXPECT_NE(r.err.find("did not write"), std::string::npos) << r.err;
    EXPECT_EQ(tree(watched), before) << "mftk " << args << " changed " << watched;
  }

  std::string model_args() const { return " --model " + shell_quote(base_); }

  static inline fs::path dir_;
  static inline std::string base_, adapter_, data_, recipe_;
};

// ---------------------------------------------------------------------------

TEST_F(OutputSafety, EveryWritingCommandRefusesAFolderHoldingAUsersFile) {
  const fs::path user = user_folder("user");
  const std::string out = " --out " + shell_quote(user.string());
  const auto refused = [&](const std::string& args) { expect_refused(args, user, dir_ / "user"); };
  const auto names_beside = [] {
    std::set<std::string> names;
    for (const auto& e : fs::directory_iterator(dir_)) names.insert(e.path().filename().string());
    return names;
  };
  const auto before = names_beside();
  refused("init --preset tiny --layers 1 --hidden 64 --intermediate 128 --heads 4 --kv-heads 2 --vocab 512" + out);
  refused("merge" + model_args() + " --adapter " + shell_quote(adapter_) + out);
  refused("quantize --plugin nf4" + model_args() + out);
  refused("export --plugin awq" + model_args() + out + " --set group_size=32 --set calibration_file=" + shell_quote(data_));
  refused("export --plugin gguf" + model_args() + out);  // a folder where a file is to go
  refused("export --plugin gguf" + model_args() + " --adapter " + shell_quote(adapter_) + out);
  refused("run " + shell_quote(recipe_) + " --set " + shell_quote("training.output_dir=\"" + user.string() + "\""));
  // Nothing was left beside it either (no staging or scratch folders).
  EXPECT_EQ(names_beside(), before);
}

TEST_F(OutputSafety, EveryFileWriterRefusesAUsersFile) {
  const fs::path folder = dir_ / "user-files";
  const fs::path gguf = folder / "model.gguf";
  write_bytes(gguf, kUserBytes);
  const auto refused = [&](const std::string& args, const fs::path& named) { expect_refused(args, named, folder); };
  refused("export --plugin gguf" + model_args() + " --out " + shell_quote(gguf.string()), gguf);
  refused("export --plugin gguf" + model_args() + " --adapter " + shell_quote(adapter_) + " --out " + shell_quote(gguf.string()),
          gguf);
  // A file where a folder is to go.
  refused("quantize --plugin nf4" + model_args() + " --out " + shell_quote(gguf.string()), gguf);
  refused("export --plugin awq" + model_args() + " --out " + shell_quote(gguf.string()) +
              " --set group_size=32 --set calibration_file=" + shell_quote(data_),
          gguf);
  refused("merge" + model_args() + " --adapter " + shell_quote(adapter_) + " --out " + shell_quote(gguf.string()), gguf);
  refused("init --preset tiny --layers 1 --out " + shell_quote(gguf.string()), gguf);
  // mftk plan --json.
  const fs::path plan = folder / "plan.json";
  write_bytes(plan, "{\"mine\": true}\n");
  refused("plan " + shell_quote(recipe_) + " --json " + shell_quote(plan.string()), plan);
}

TEST_F(OutputSafety, ThePreparedDataCacheNeverReplacesAUsersFile) {
  // dataset_prepared_path naming a file of the user's.
  const fs::path folder = dir_ / "user-cache";
  const fs::path file = folder / "prepared";
  write_bytes(file, kUserBytes);
  expect_refused("preprocess " + shell_quote(recipe_) + " --set " +
                     shell_quote("data.dataset_prepared_path=\"" + file.string() + "\""),
                 file, folder);
  // The cache file itself replaced by the user's bytes: neither a rebuild
  // nor --force writes over it.
  const fs::path cache = dir_ / "cache-own";
  const std::string set = " --set " + shell_quote("data.dataset_prepared_path=\"" + cache.string() + "\"");
  ASSERT_EQ(run("preprocess " + shell_quote(recipe_) + set).exit_code, 0);
  fs::path examples;
  for (const auto& e : fs::recursive_directory_iterator(cache))
    if (e.path().filename() == "examples.bin") examples = e.path();
  ASSERT_FALSE(examples.empty());
  EXPECT_EQ(run("preprocess " + shell_quote(recipe_) + set + " --force").exit_code, 0);  // its own cache: rebuilt
  write_bytes(examples, kUserBytes);
  expect_refused("preprocess " + shell_quote(recipe_) + set, examples, cache);
  expect_refused("preprocess " + shell_quote(recipe_) + set + " --force", examples, cache);
}

TEST_F(OutputSafety, OutDotInAFolderWithAUsersFileIsRefused) {
  const fs::path user = user_folder("dot");
  const auto refused = [&](const std::string& args) { expect_refused(args, user, user, user.string()); };
  refused("export --plugin awq" + model_args() + " --out . --set group_size=32 --set calibration_file=" + shell_quote(data_));
  refused("merge" + model_args() + " --adapter " + shell_quote(adapter_) + " --out .");
  refused("quantize --plugin nf4" + model_args() + " --out .");
  refused("init --preset tiny --layers 1 --out .");
  refused("export --plugin gguf" + model_args() + " --out .");
}

TEST_F(OutputSafety, RerunningIntoItsOwnOutputReplacesIt) {
  const fs::path own = dir_ / "own";
  const std::string tok = " --tokenizer " + shell_quote((fs::path(base_) / "tokenizer.model").string());
  const std::string init = "init --preset tiny --layers 1 --hidden 64 --intermediate 128 --heads 4 --kv-heads 2" + tok;
  // init: twice into one folder; the second seed's weights replace the first's.
  const fs::path ckpt = own / "ckpt";
  ASSERT_EQ(run(init + " --seed 1 --out " + shell_quote(ckpt.string())).exit_code, 0);
  const std::string first = read_bytes(ckpt / "model.safetensors");
  const auto again = run(init + " --seed 2 --out " + shell_quote(ckpt.string()));
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_NE(read_bytes(ckpt / "model.safetensors"), first);
  const auto record = json::parse(read_bytes(ckpt / mftk::kOutputRecordFile));
  EXPECT_EQ(record.at("kind"), "hf-checkpoint");
  std::set<std::string> listed(record.at("files").begin(), record.at("files").end());
  std::set<std::string> present;
  for (const auto& e : fs::directory_iterator(ckpt))
    if (e.path().filename() != mftk::kOutputRecordFile) present.insert(e.path().filename().string());
  EXPECT_EQ(listed, present);

  // merge, quantize, awq and gguf exports: twice each.
  const std::string merge = "merge" + model_args() + " --adapter " + shell_quote(adapter_) + " --out " + shell_quote((own / "merged").string());
  const std::string quantize = "quantize --plugin nf4" + model_args() + " --out " + shell_quote((own / "nf4").string());
  const std::string awq = "export --plugin awq" + model_args() + " --out " + shell_quote((own / "awq").string()) +
                          " --set group_size=32 --set calibration_rows=2 --set calibration_len=16 --set calibration_file=" +
                          shell_quote(data_);
  const std::string gguf = "export --plugin gguf" + model_args() + " --out " + shell_quote((own / "m.gguf").string());
  for (const auto& cmd : {merge, quantize, awq, gguf})
    for (int k = 0; k < 2; ++k) {
      const auto r = run(cmd);
      EXPECT_EQ(r.exit_code, 0) << "run " << k << ": mftk " << cmd << "\n" << r.err;
    }
  EXPECT_EQ(mftk::core::GgufFile::open((own / "m.gguf").string()).get("mftk.written_by",
                                                                       mftk::core::GgufValueType::string).text,
            "mftk");
  // The old temporary names beside an output are other people's now: left alone.
  write_bytes(own / "m.gguf.tmp", kUserBytes);
  write_bytes(own / "awq.awq-tmp" / "notes.txt", kUserBytes);
  write_bytes(own / "m.gguf.merged-tmp" / "notes.txt", kUserBytes);
  EXPECT_EQ(run(gguf).exit_code, 0);
  EXPECT_EQ(run(awq).exit_code, 0);
  EXPECT_EQ(run("export --plugin gguf" + model_args() + " --adapter " + shell_quote(adapter_) + " --out " +
                shell_quote((own / "m.gguf").string())).exit_code, 0);
  EXPECT_EQ(read_bytes(own / "m.gguf.tmp"), kUserBytes);
  EXPECT_EQ(read_bytes(own / "awq.awq-tmp" / "notes.txt"), kUserBytes);
  EXPECT_EQ(read_bytes(own / "m.gguf.merged-tmp" / "notes.txt"), kUserBytes);

  // A user's file put into mftk's folder makes it the user's: refused, kept.
  write_bytes(own / "merged" / "README.md", kUserBytes);
  expect_refused(merge, own / "merged", own / "merged");

  // An empty folder is used, and stays the same folder.
  const fs::path empty = own / "empty";
  fs::create_directories(empty);
  ASSERT_EQ(run(init + " --seed 3 --out " + shell_quote(empty.string())).exit_code, 0);
  EXPECT_TRUE(fs::exists(empty / "model.safetensors"));

  // run: into a new output_dir, again into it, then resumed from its latest checkpoint.
  const auto first_run = run("run " + shell_quote(recipe_));
  ASSERT_EQ(first_run.exit_code, 0) << first_run.err;
  EXPECT_EQ(json::parse(read_bytes(dir_ / "run" / mftk::kOutputRecordFile)).at("kind"), "run");
  const auto rerun = run("run " + shell_quote(recipe_));
  EXPECT_EQ(rerun.exit_code, 0) << rerun.err;
  const auto resumed = run("run " + shell_quote(recipe_) + " --set training.resume_from_checkpoint=latest");
  EXPECT_EQ(resumed.exit_code, 0) << resumed.err;
  EXPECT_NE(resumed.err.find("resumed from"), std::string::npos) << resumed.err;
  // A user's file inside one of its checkpoints: that checkpoint is no longer
  // mftk's to replace, so the run stops there and the file survives.
  write_bytes(dir_ / "run" / "checkpoint-1" / "notes.txt", kUserBytes);
  const auto blocked = run("run " + shell_quote(recipe_));
  EXPECT_EQ(blocked.exit_code, 2) << blocked.err;
  EXPECT_NE(blocked.err.find((dir_ / "run" / "checkpoint-1").string()), std::string::npos) << blocked.err;
  EXPECT_EQ(read_bytes(dir_ / "run" / "checkpoint-1" / "notes.txt"), kUserBytes);
}

TEST_F(OutputSafety, GgufFromAnAdapterIsNamedAfterTheModelAndTheAdapter) {
  const fs::path out = dir_ / "named" / "tuned.gguf";
  const auto r = run("export --plugin gguf" + model_args() + " --adapter " + shell_quote(adapter_) + " --out " +
                     shell_quote(out.string()) + " --set type=f32");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto file = mftk::core::GgufFile::open(out.string());
  // base_ is ".../base", adapter_ ".../adapter".
  EXPECT_EQ(file.get("general.name", mftk::core::GgufValueType::string).text, "base+adapter");
  // Without an adapter: the model folder's name, as before.
  const fs::path plain = dir_ / "named" / "plain.gguf";
  ASSERT_EQ(run("export --plugin gguf" + model_args() + " --out " + shell_quote(plain.string()) + " --set type=f32").exit_code, 0);
  EXPECT_EQ(mftk::core::GgufFile::open(plain.string()).get("general.name", mftk::core::GgufValueType::string).text,
            "base");
  // The temporary merge left nothing beside the outputs (each GGUF has its Ollama Modelfile).
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(dir_ / "named")) names.insert(e.path().filename().string());
  EXPECT_EQ(names, (std::set<std::string>{"plain.gguf", "plain.Modelfile", "tuned.gguf", "tuned.Modelfile"}));
}

// ---------------------------------------------------------------------------
// OutputGuard itself, in process.

TEST(OutputGuard, AnUncommittedOutputLeavesNothingBehind) {
  const fs::path dir = fs::path(testing::TempDir()) / fmt::format("mftk_guard_{}", ::getpid());
  fs::remove_all(dir);
  fs::create_directories(dir);
  {
    mftk::OutputGuard out((dir / "ckpt").string(), "test", mftk::OutputShape::folder);
    write_bytes(fs::path(out.path()) / "a.bin", "half written");
    EXPECT_FALSE(fs::exists(dir / "ckpt"));
  }  // an exception would unwind here
  EXPECT_TRUE(fs::is_empty(dir));
  fs::remove_all(dir);
}

TEST(OutputGuard, ATargetThatTurnsForeignBeforeCommitIsRefusedAndTheOutputKept) {
  const fs::path dir = fs::path(testing::TempDir()) / fmt::format("mftk_guard_late_{}", ::getpid());
  fs::remove_all(dir);
  mftk::OutputGuard out((dir / "ckpt").string(), "test", mftk::OutputShape::folder);
  write_bytes(fs::path(out.path()) / "a.bin", "finished");
  write_bytes(dir / "ckpt" / "notes.txt", kUserBytes);  // the user got there first
  try {
    out.commit();
    FAIL() << "commit over a user's folder";
  } catch (const mftk::UsageError& e) {
    EXPECT_NE(std::string(e.what()).find(out.path()), std::string::npos) << e.what();
  }
  EXPECT_EQ(read_bytes(dir / "ckpt" / "notes.txt"), kUserBytes);
  EXPECT_FALSE(fs::exists(dir / "ckpt" / "a.bin"));
  EXPECT_EQ(read_bytes(fs::path(out.path()) / "a.bin"), "finished");
  fs::remove_all(dir);
}

TEST(OutputGuard, AFileIsReplacedOnlyWhenItsOwnTestSaysSo) {
  const fs::path dir = fs::path(testing::TempDir()) / fmt::format("mftk_guard_file_{}", ::getpid());
  fs::remove_all(dir);
  const std::string target = (dir / "out.txt").string();
  const auto is_own = [](const std::string& p) { return read_bytes(p).rfind("MINE", 0) == 0; };
  auto write = [&](const std::string& text, const mftk::OwnFileTest& test) {
    mftk::OutputGuard out(target, "test", mftk::OutputShape::file, test);
    mftk::write_file_atomic(out.path(), text);
    out.commit();
  };
  write("MINE 1", is_own);  // new
  write("MINE 2", is_own);  // its own: replaced
  EXPECT_EQ(read_bytes(target), "MINE 2");
  EXPECT_THROW(write("MINE 3", {}), mftk::UsageError);  // no test: an existing file is never replaced
  write_bytes(target, kUserBytes);
  EXPECT_THROW(write("MINE 4", is_own), mftk::UsageError);
  EXPECT_EQ(read_bytes(target), kUserBytes);
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.insert(e.path().filename().string());
  EXPECT_EQ(names, std::set<std::string>{"out.txt"});
  fs::remove_all(dir);
}

TEST(OutputGuard, WorkFoldersAreAdoptedOnlyWhenNewEmptyOrMftksOwn) {
  const fs::path dir = fs::path(testing::TempDir()) / fmt::format("mftk_guard_work_{}", ::getpid());
  fs::remove_all(dir);
  mftk::claim_work_folder((dir / "new").string(), "run");
  mftk::claim_work_folder((dir / "new").string(), "run");  // again: its own
  EXPECT_THROW(mftk::claim_work_folder((dir / "new").string(), "other"), mftk::UsageError);
  fs::create_directories(dir / "empty");
  mftk::claim_work_folder((dir / "empty").string(), "run");
  write_bytes(dir / "user" / "notes.txt", kUserBytes);
  EXPECT_THROW(mftk::claim_work_folder((dir / "user").string(), "run"), mftk::UsageError);
  EXPECT_EQ(tree(dir / "user"), (std::map<std::string, std::string>{{"notes.txt", kUserBytes}}));
  fs::remove_all(dir);
}

}  // namespace
