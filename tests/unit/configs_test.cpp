// Every recipe shipped in configs/ passes `mftk validate` as a user runs it
// (plugins resolved, every key checked, every component built).
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <string>

namespace fs = std::filesystem;

namespace {

int run(const std::string& cmd, std::string* output) {
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  char buf[4096];
  while (size_t n = std::fread(buf, 1, sizeof buf, p)) output->append(buf, n);
  int status = ::pclose(p);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace

TEST(Configs, EveryShippedRecipeValidates) {
  int count = 0;
  for (const auto& e : fs::recursive_directory_iterator(fs::path(MFTK_SOURCE_DIR) / "configs")) {
    if (e.path().extension() != ".toml") continue;
    ++count;
    std::string out;
    int code = run(std::string(MFTK_BINARY_DIR) + "/bin/mftk validate " + e.path().string(), &out);
    EXPECT_EQ(code, 0) << e.path() << "\n" << out;
    EXPECT_NE(out.find("is valid"), std::string::npos) << out;
  }
  EXPECT_GE(count, 4);
}

TEST(Configs, ValidateExitsWithTwoAndNamesTheLineForABadKey) {
  auto dir = fs::temp_directory_path() / ("mftk_cfg_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const auto recipe = (dir / "bad.toml").string();
  FILE* f = std::fopen(recipe.c_str(), "w");
  std::fputs("[model]\nplugin = \"mistral\"\npath = \"x\"\n[training]\nmicro_batch = 2\n", f);
  std::fclose(f);
  std::string out;
  int code = run(std::string(MFTK_BINARY_DIR) + "/bin/mftk validate " + recipe, &out);
  EXPECT_EQ(code, 2) << out;
  EXPECT_NE(out.find(recipe + ":5:1: [training] micro_batch: unknown key, did you mean 'micro_batch_size'?"),
            std::string::npos)
      << out;
  out.clear();
  code = run(std::string(MFTK_BINARY_DIR) + "/bin/mftk validate " + recipe + " --set training.micro_batch_size=x", &out);
  EXPECT_EQ(code, 2) << out;
  fs::remove_all(dir);
}
