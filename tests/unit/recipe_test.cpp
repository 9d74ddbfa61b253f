// Recipe parsing and validation of the core tables: every problem names
// file:line:column, the table and the key; all problems come at once.
#include <gtest/gtest.h>

#include "recipe.h"

using mftk::core::Recipe;

namespace {

std::string error_of(const std::string& toml, const std::vector<std::string>& overrides = {}) {
  try {
    Recipe::parse(toml, "r.toml", overrides);
  } catch (const mftk::UsageError& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST(Recipe, DefaultsFillCoreTables) {
  auto r = Recipe::parse("[training]\nsequence_len = 512\n", "r.toml");
  EXPECT_EQ(r.section("training").get_int("sequence_len"), 512);
  EXPECT_EQ(r.section("training").get_int("micro_batch_size"), 1);
  EXPECT_DOUBLE_EQ(r.section("schedule").get_number("learning_rate"), 2e-4);
  EXPECT_EQ(r.section("schedule").get_string("lr_scheduler"), "cosine");
}

TEST(Recipe, UnknownKeySuggestsTheClosestOne) {
  auto e = error_of("[training]\nsequnce_len = 512\n");
  EXPECT_NE(e.find("r.toml:2:1: [training] sequnce_len: unknown key, did you mean 'sequence_len'?"),
            std::string::npos)
      << e;
}

TEST(Recipe, WrongTypeNamesFileLineAndKey) {
  auto e = error_of("[training]\nmicro_batch_size = \"two\"\n");
  EXPECT_NE(e.find("r.toml:2:20: [training] micro_batch_size: expected integer, got string \"two\""),
            std::string::npos)
      << e;
}

TEST(Recipe, IntegerIsAcceptedWhereANumberIsExpectedButNotTheReverse) {
  auto r = Recipe::parse("[schedule]\nlearning_rate = 1\n", "r.toml");
  EXPECT_DOUBLE_EQ(r.section("schedule").get_number("learning_rate"), 1.0);
  auto e = error_of("[training]\nsequence_len = 512.0\n");
  EXPECT_NE(e.find("expected integer, got number"), std::string::npos) << e;
}

TEST(Recipe, MissingRequiredKeyNamesTheTable) {
  auto e = error_of("[[datasets]]\ntype = \"chat\"\n");
  EXPECT_NE(e.find("r.toml:1:1: [datasets[0]] path: missing required key"), std::string::npos) << e;
}

TEST(Recipe, OutOfRangeAndChoicesAreChecked) {
  auto e = error_of("[training]\nmicro_batch_size = 0\n[schedule]\nlr_scheduler = \"cosin\"\n");
  EXPECT_NE(e.find("[training] micro_batch_size: 0 is out of range [1, 65536]"), std::string::npos) << e;
  EXPECT_NE(e.find("[schedule] lr_scheduler: \"cosin\" is not one of constant, linear, cosine; did you mean \"cosine\"?"),
            std::string::npos)
      << e;
}

TEST(Recipe, AllProblemsAreReportedTogether) {
  auto e = error_of("[training]\nsequnce_len = 1\nbf16 = 3\n[optimzer]\nplugin = \"adamw\"\n");
  EXPECT_NE(e.find("sequnce_len"), std::string::npos) << e;
  EXPECT_NE(e.find("[training] bf16: expected boolean"), std::string::npos) << e;
  EXPECT_NE(e.find("r.toml:4:2: unknown table [optimzer], did you mean [optimizer]?"), std::string::npos) << e;
}

TEST(Recipe, ComponentTableMustNamePlugin) {
  auto e = error_of("[adapter]\nr = 8\n");
  EXPECT_NE(e.find("[adapter] plugin: missing required key"), std::string::npos) << e;
}

TEST(Recipe, SyntaxErrorHasAPosition) {
  auto e = error_of("[training]\nsequence_len = = 3\n");
  EXPECT_NE(e.find("r.toml:2:"), std::string::npos) << e;
  EXPECT_NE(e.find("TOML syntax error"), std::string::npos) << e;
}

TEST(Recipe, StrayTopLevelKeySaysWhichTableItBelongsIn) {
  auto e = error_of("learning_rate = 1e-4\n");
  EXPECT_NE(e.find("did you mean to put it under [schedule]?"), std::string::npos) << e;
}

TEST(Recipe, SetOverridesAreTypedAndValidatedLikeTheFile) {
  auto r = Recipe::parse("[training]\nsequence_len = 512\n", "r.toml",
                         {"training.sequence_len=1024", "training.output_dir=runs/a", "schedule.learning_rate=1e-5"});
  EXPECT_EQ(r.section("training").get_int("sequence_len"), 1024);
  EXPECT_EQ(r.section("training").get_string("output_dir"), "runs/a");  // bare word -> string
  EXPECT_DOUBLE_EQ(r.section("schedule").get_number("learning_rate"), 1e-5);

  auto e = error_of("[training]\n", {"training.micro_batch_size=many"});
  EXPECT_NE(e.find("--set: [training] micro_batch_size: expected integer, got string \"many\""), std::string::npos)
      << e;
  e = error_of("[training]\n", {"training.seqlen=5"});
  EXPECT_NE(e.find("did you mean 'sequence_len'?"), std::string::npos) << e;
  e = error_of("[training]\n", {"nodot=5"});
  EXPECT_NE(e.find("expected table.key=value"), std::string::npos) << e;
}

TEST(Recipe, SetCanReachArrayTables) {
  auto r = Recipe::parse("[[datasets]]\npath = \"a.jsonl\"\n", "r.toml", {"datasets[0].type=completion"});
  ASSERT_EQ(r.datasets().size(), 1u);
  EXPECT_EQ(r.datasets()[0].get_string("type"), "completion");
  auto e = error_of("[[datasets]]\npath = \"a.jsonl\"\n", {"datasets[3].type=chat"});
  EXPECT_NE(e.find("has no [[datasets]] number 3"), std::string::npos) << e;
}

TEST(Recipe, EditDistance) {
  EXPECT_EQ(mftk::core::edit_distance("kitten", "sitting"), 3u);
  EXPECT_EQ(mftk::core::edit_distance("", "abc"), 3u);
  EXPECT_EQ(mftk::core::edit_distance("same", "same"), 0u);
}
