// The plugin loader: found by name, missing names list what exists, wrong
// ABI / libtorch / non-plugins refused with messages that say why.
#include <dlfcn.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "mftk/exporter.h"
#include "mftk/model.h"
#include "recipe.h"
#include "registry.h"

namespace fs = std::filesystem;
using mftk::Kind;
using mftk::core::PluginLoadError;
using mftk::core::PluginLoadStatus;
using mftk::core::Registry;

namespace {

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no exception)";
}

// A search path holding just one fixture library (copied), so each test sees
// exactly the files it is about.
std::string dir_with(const std::vector<std::string>& fixtures) {
  static int counter = 0;
  auto dir = fs::temp_directory_path() / ("mftk_plugins_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
  fs::create_directories(dir);
  for (const auto& f : fixtures) fs::copy_file(fs::path(MFTK_FIXTURE_DIR) / ("libmftk-" + f + ".so"), dir / ("libmftk-" + f + ".so"), fs::copy_options::overwrite_existing);
  return dir.string();
}

}  // namespace

TEST(PluginRegistry, FindsAndLoadsAPluginByName) {
  Registry r({dir_with({"fixture_good"})});
  const auto& info = r.find(Kind::exporter, "fixture_good_names");
  EXPECT_EQ(info.spec.summary, "writes the tensor names of a checkpoint (test fixture)");
  EXPECT_NE(info.library_path.find("libmftk-fixture_good.so"), std::string::npos);
  ASSERT_EQ(info.spec.keys.size(), 2u);  // `out` is added by the core to every [[export]]
}

TEST(PluginRegistry, FindsTheRealMistralPluginInTheBuildTree) {
  Registry r;
  const auto& info = r.find(Kind::model, "mistral");
  EXPECT_NE(info.library_path.find("libmftk-mistral.so"), std::string::npos);
}

TEST(PluginRegistry, MissingPluginListsWhatExistsAndWhereItLooked) {
  auto dir = dir_with({"fixture_good"});
  Registry r({dir});
  auto msg = message_of([&] { r.find(Kind::exporter, "ggfu"); });
  EXPECT_NE(msg.find("unknown exporter plugin 'ggfu'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("fixture_good_names"), std::string::npos) << msg;
  EXPECT_NE(msg.find(dir), std::string::npos) << msg;
  EXPECT_THROW(r.find(Kind::exporter, "ggfu"), mftk::UsageError);
}

TEST(PluginRegistry, RefusesWrongAbiVersionNamingBothVersions) {
  auto dir = dir_with({"fixture_wrong_abi"});
  Registry r({dir});
  auto msg = message_of([&] { r.load_library(dir + "/libmftk-fixture_wrong_abi.so"); });
  EXPECT_NE(msg.find("ABI version 999, this mftk expects " + std::to_string(MFTK_PLUGIN_ABI_VERSION)),
            std::string::npos)
      << msg;
  // ... and the component it would have registered does not exist.
  EXPECT_THROW(r.find(Kind::exporter, "fixture_wrong_abi_names"), mftk::UsageError);
}

TEST(PluginRegistry, RefusesPluginBuiltAgainstAnotherLibtorch) {
  auto dir = dir_with({"fixture_wrong_torch"});
  Registry r({dir});
  auto msg = message_of([&] { r.load_library(dir + "/libmftk-fixture_wrong_torch.so"); });
  EXPECT_NE(msg.find("built with libtorch 0.0.1, this mftk uses " TORCH_VERSION), std::string::npos) << msg;
}

TEST(PluginRegistry, RefusesLibraryWithoutEntryPoint) {
  auto dir = dir_with({"fixture_not_plugin"});
  Registry r({dir});
  auto msg = message_of([&] { r.load_library(dir + "/libmftk-fixture_not_plugin.so"); });
  EXPECT_NE(msg.find("not an mftk plugin"), std::string::npos) << msg;
}

TEST(PluginRegistry, ScanReportsEachLibraryWithItsStatus) {
  Registry r({dir_with({"fixture_good", "fixture_wrong_abi", "fixture_wrong_torch", "fixture_not_plugin"})});
  std::map<std::string, PluginLoadStatus> status;
  std::map<std::string, std::string> words;
  for (const auto& s : r.scan()) {
    status[fs::path(s.path).filename().string()] = s.status;
    words[fs::path(s.path).filename().string()] = mftk::core::to_string(s.status);
  }
  // (The scan also reports the real plugins on the default search path.)
  for (const char* f : {"libmftk-fixture_good.so", "libmftk-fixture_wrong_abi.so", "libmftk-fixture_wrong_torch.so",
                        "libmftk-fixture_not_plugin.so"})
    ASSERT_EQ(status.count(f), 1u) << f;
  EXPECT_EQ(status["libmftk-fixture_good.so"], PluginLoadStatus::ok);
  EXPECT_EQ(status["libmftk-fixture_wrong_abi.so"], PluginLoadStatus::abi_mismatch);
  EXPECT_EQ(status["libmftk-fixture_wrong_torch.so"], PluginLoadStatus::fingerprint_mismatch);
  EXPECT_EQ(status["libmftk-fixture_not_plugin.so"], PluginLoadStatus::not_a_plugin);
  // The words `mftk plugins` prints for them.
  EXPECT_EQ(words["libmftk-fixture_good.so"], "ok");
  EXPECT_EQ(words["libmftk-fixture_wrong_abi.so"], "ABI mismatch");
  EXPECT_EQ(words["libmftk-fixture_not_plugin.so"], "not an mftk plugin");
}

// The status a refused library carries, as load_library throws it: one per
// way the fixtures (and a missing path, a file that is no shared library, a
// second library of the same name) fail to load.
TEST(PluginRegistry, LoadFailuresCarryATypedStatus) {
  auto status_of = [](Registry& r, const std::string& path) {
    try {
      r.load_library(path);
    } catch (const PluginLoadError& e) {
      return e.status();
    }
    return PluginLoadStatus::ok;
  };
  auto dir = dir_with({"fixture_good", "fixture_wrong_abi", "fixture_wrong_torch", "fixture_not_plugin"});
  const auto junk = fs::path(dir) / "libmftk-junk.so";
  std::ofstream(junk) << "not an ELF file\n";
  auto other = dir_with({});
  fs::copy_file(fs::path(dir) / "libmftk-fixture_good.so", fs::path(other) / "libmftk-fixture_good_copy.so");

  Registry r({dir});
  EXPECT_EQ(status_of(r, dir + "/libmftk-fixture_good.so"), PluginLoadStatus::ok);
  EXPECT_EQ(status_of(r, dir + "/libmftk-fixture_wrong_abi.so"), PluginLoadStatus::abi_mismatch);
  EXPECT_EQ(status_of(r, dir + "/libmftk-fixture_wrong_torch.so"), PluginLoadStatus::fingerprint_mismatch);
  EXPECT_EQ(status_of(r, dir + "/libmftk-fixture_not_plugin.so"), PluginLoadStatus::not_a_plugin);
  EXPECT_EQ(status_of(r, dir + "/libmftk-absent.so"), PluginLoadStatus::not_found);
  EXPECT_EQ(status_of(r, junk.string()), PluginLoadStatus::failed_to_open);
  EXPECT_EQ(status_of(r, other + "/libmftk-fixture_good_copy.so"), PluginLoadStatus::duplicate_name);
  // Still a UsageError (exit 2) for callers that only know that.
  EXPECT_THROW(r.load_library(dir + "/libmftk-fixture_wrong_abi.so"), mftk::UsageError);
}

TEST(PluginRegistry, DuplicateLibraryNameIsAnError) {
  auto a = dir_with({"fixture_good"});
  auto b = dir_with({});
  // Same plugin under a second file name.
  fs::copy_file(a + "/libmftk-fixture_good.so", b + "/libmftk-fixture_good_copy.so");
  Registry r({a, b});
  r.load_library(a + "/libmftk-fixture_good.so");
  auto msg = message_of([&] { r.load_library(b + "/libmftk-fixture_good_copy.so"); });
  EXPECT_NE(msg.find("both named 'fixture_good'"), std::string::npos) << msg;
}

TEST(PluginRegistry, CreatesComponentFromValidatedRecipeTable) {
  Registry r({dir_with({"fixture_good"})});
  auto recipe = mftk::core::Recipe::parse(
      "[[export]]\nplugin = \"fixture_good_names\"\nout = \"names.txt\"\nlevel = 4\n", "t.toml");
  recipe.resolve(r);
  ASSERT_EQ(recipe.exports().size(), 1u);
  const auto& cfg = recipe.exports()[0].config;
  EXPECT_EQ(cfg.get_int("level"), 4);
  EXPECT_EQ(cfg.get_string("separator"), "\n");  // default filled in
  EXPECT_TRUE(cfg.is_set("level"));
  EXPECT_FALSE(cfg.is_set("separator"));
  auto exporter = r.create<mftk::Exporter>(Kind::exporter, "fixture_good_names", cfg);
  EXPECT_NE(exporter, nullptr);
}

TEST(PluginRegistry, PluginKeysAreValidatedWithLocations) {
  Registry r({dir_with({"fixture_good"})});
  auto recipe = mftk::core::Recipe::parse(
      "[[export]]\nplugin = \"fixture_good_names\"\nlevl = 4\nseparator = 3\n", "t.toml");
  auto msg = message_of([&] { recipe.resolve(r); });
  EXPECT_NE(msg.find("t.toml:3:1: [export[0]] levl: unknown key, did you mean 'level'?"), std::string::npos) << msg;
  EXPECT_NE(msg.find("t.toml:4:13: [export[0]] separator: expected string, got integer 3"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[export[0]] out: missing required key"), std::string::npos) << msg;
}

TEST(PluginRegistry, UnknownPluginInRecipePointsAtTheLine) {
  Registry r({dir_with({"fixture_good"})});
  auto recipe = mftk::core::Recipe::parse("[model]\nplugin = \"mistrall\"\n", "t.toml");
  auto msg = message_of([&] { recipe.resolve(r); });
  EXPECT_NE(msg.find("t.toml:2:10: [model] plugin: unknown model plugin 'mistrall'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("mistral"), std::string::npos) << msg;
}

// A CLI command's Registry is a local of the command: by the time main
// prints an error a plugin threw, the Registry is gone. The exception's
// vtable and destructor are the plugin's (FixtureFailure is defined there),
// so the library must still be loaded then; with the library unloaded this
// test crashes instead of failing.
TEST(PluginRegistry, AnErrorAPluginThrewIsReadableAfterItsRegistryIsGone) {
  const auto dir = dir_with({"fixture_good"});
  const std::string library = dir + "/libmftk-fixture_good.so";
  auto run_export_as_a_command_does = [&] {
    Registry r({dir});
    auto recipe = mftk::core::Recipe::parse("[[export]]\nplugin = \"fixture_good_fails\"\nout = \"x.bin\"\n", "t.toml");
    recipe.resolve(r);
    auto exporter = r.create<mftk::Exporter>(Kind::exporter, "fixture_good_fails", recipe.exports()[0].config);
    mftk::ExportJob job;
    job.out = "x.bin";
    exporter->run(job);
  };
  try {
    run_export_as_a_command_does();
    ADD_FAILURE() << "the fixture exporter did not throw";
  } catch (const mftk::Error& e) {
    // The library is still mapped (RTLD_NOLOAD finds only a loaded one) ...
    void* still_loaded = dlopen(library.c_str(), RTLD_LAZY | RTLD_NOLOAD);
    EXPECT_NE(still_loaded, nullptr) << library << " was unloaded with its Registry";
    if (still_loaded) dlclose(still_loaded);
    // ... and the error reads as the plugin wrote it.
    EXPECT_EQ(std::string(e.what()), "fixture_good: refusing to write x.bin (a test fixture that always fails)");
    EXPECT_EQ(e.hint(), "nothing to do: this plugin only tests error reporting");
  }
}
