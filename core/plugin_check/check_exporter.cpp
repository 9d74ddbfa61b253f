// Exporter checks, on the tiny checkpoint (output_path.h's rule: mftk never
// replaces what it did not write):
//   writes only under out   a run into a missing path changes nothing in the
//                           scratch folder or the checkpoint outside job.out
//   refuses foreign path    a run onto a folder holding a file mftk did not write,
//                           and onto a foreign file, throws mftk::UsageError (exit 2,
//                           as OutputGuard does) and changes neither
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <fmt/format.h>

#include "defaults.h"
#include "mftk/adapter.h"
#include "mftk/error.h"
#include "mftk/exporter.h"
#include "mftk/model.h"
#include "plugin_check/check_support.h"
#include "registry.h"

namespace fs = std::filesystem;

namespace mftk::core::check {
namespace {

// path -> "size:mtime" of every entry below `root` (folders as "dir").
std::map<std::string, std::string> snapshot(const fs::path& root) {
  std::map<std::string, std::string> out;
  if (!fs::exists(root)) return out;
  for (const auto& e : fs::recursive_directory_iterator(root)) {
    std::error_code ec;
    if (e.is_directory(ec)) out[e.path().string()] = "dir";
    else
      out[e.path().string()] = fmt::format("{}:{}", e.file_size(ec), e.last_write_time(ec).time_since_epoch().count());
  }
  return out;
}

bool under(const std::string& path, const std::string& root) {
  return path == root || (path.size() > root.size() && path.compare(0, root.size(), root) == 0 &&
                          path[root.size()] == '/');
}

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_file(const fs::path& p, const std::string& text) {
  std::ofstream out(p, std::ios::binary);
  out << text;
  if (!out) throw Error(fmt::format("could not write {}", p.string()));
}

constexpr const char* kForeignText = "written by someone else; mftk must leave this alone\n";

}  // namespace

void check_exporter(Registry& registry, const ComponentInfo& component, TinyModelSource& source,
                    const std::string& scratch_dir, Checker& checker) {
  std::unique_ptr<Model> model;
  // An adapter of the default adapter plugin at its initial state, saved
  // unmerged, for exporters of the adapter itself (gguf_lora). Its update is
  // zero at init (LoRA's B = 0), so the checkpoint is also the merged model,
  // as ExportJob says model_dir is.
  std::string adapter_dir;
  const auto job_for = [&](const std::string& out) {
    if (!model) model = source.load_default();
    if (adapter_dir.empty()) {
      try {
        const ComponentInfo& info = registry.find(Kind::adapter, kDefaultAdapterPlugin);
        auto own = source.load_default();
        auto adapter = registry.create<Adapter>(Kind::adapter, kDefaultAdapterPlugin, default_config(registry, info));
        adapter->inject(*own);
        const fs::path dir = fs::path(scratch_dir) / "adapter-for-exporters";
        fs::create_directories(dir);
        adapter->save(dir.string(), source.checkpoint_dir());
        adapter_dir = dir.string();
      } catch (const UsageError&) {
        // No default adapter plugin here: exporters get no adapter.
      }
    }
    ExportJob job;
    job.model_dir = source.checkpoint_dir();
    if (!adapter_dir.empty()) {
      job.base_model_dir = source.checkpoint_dir();
      job.adapter_dir = adapter_dir;
    }
    job.out = out;
    job.model = model.get();
    for (uint64_t r = 0; r < 4; ++r) {
      const auto ids = random_ids(1, 16, model->shape().vocab_size, 50 + r);
      job.calibration_rows.emplace_back(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + ids.numel());
    }
    return job;
  };
  const auto make = [&] {
    return registry.create<Exporter>(Kind::exporter, component.spec.name, default_config(registry, component));
  };
  checker.run("writes only under out", [&] {
    const fs::path area = fs::path(scratch_dir) / "export-area";
    fs::create_directories(area);
    write_file(area / "neighbour.txt", kForeignText);
    const std::string out = (area / "artefact").string();
    ExportJob job = job_for(out);
    auto exporter = make();
    const auto before = snapshot(area);
    const auto checkpoint_before = snapshot(job.model_dir);
    const ExportReport report = exporter->run(job);
    if (!fs::exists(out)) throw CheckFailed(fmt::format("run() returned but wrote nothing at job.out ({})", out));
    std::vector<std::string> stray;
    // Files the report names as written beside out (a Modelfile next to a
    // GGUF) are the exporter's own, provided they are new.
    const auto declared = [&](const std::string& path) {
      for (const auto& beside : report.also_written)
        if (fs::path(beside).lexically_normal() == fs::path(path).lexically_normal() && !before.count(path)) return true;
      return false;
    };
    for (const auto& [path, stamp] : snapshot(area))
      if (!under(path, out) && !declared(path) && (!before.count(path) || before.at(path) != stamp))
        stray.push_back(fs::path(path).lexically_relative(area).string());
    for (const auto& [path, stamp] : before)
      if (!under(path, out) && !fs::exists(path))
        stray.push_back(fs::path(path).lexically_relative(area).string() + " (removed)");
    if (snapshot(job.model_dir) != checkpoint_before) stray.push_back(job.model_dir + " (the input checkpoint)");
    checker.note(fmt::format("{} bytes written", report.bytes));
    if (!stray.empty())
      throw CheckFailed(fmt::format("job.out was 'artefact' in a scratch folder; changed beside it: {}",
                                    fmt::join(stray, ", ")));
    if (!report.path.empty() && !under(fs::path(report.path).lexically_normal().string(), out))
      throw CheckFailed(fmt::format("the report names {}, outside job.out {}", report.path, out));
  });
  checker.run("refuses foreign path", [&] {
    const fs::path area = fs::path(scratch_dir) / "foreign-area";
    fs::create_directories(area / "folder");
    write_file(area / "folder" / "notes.txt", kForeignText);
    write_file(area / "file.bin", kForeignText);
    std::vector<std::string> problems;
    for (const fs::path target : {area / "folder", area / "file.bin"}) {
      const auto before = snapshot(area);
      const std::string shown =
          target.filename().string() + (fs::is_directory(target) ? "/ (a folder holding a file)" : " (a file)");
      bool threw = false;
      try {
        auto exporter = make();
        exporter->run(job_for(target.string()));
      } catch (const UsageError&) {
        threw = true;
      } catch (const std::exception& e) {
        // A refusal is the user's to fix (another path), so it is a UsageError: exit 2, as OutputGuard throws.
        threw = true;
        const std::string what = e.what();
        problems.push_back(fmt::format("run() onto {} threw, but not mftk::UsageError: {}", shown,
                                       what.substr(0, what.find('\n'))));
      }
      if (!threw) problems.push_back(fmt::format("run() onto {} did not refuse", shown));
      if (snapshot(area) != before || read_file(area / "folder" / "notes.txt") != kForeignText ||
          read_file(area / "file.bin") != kForeignText)
        problems.push_back(fmt::format("run() onto {} changed what it did not write", shown));
    }
    if (!problems.empty())
      throw CheckFailed(fmt::format("{} (a path holding what mftk did not write must be refused: output_path.h)",
                                    fmt::join(problems, "; ")));
  });
}

}  // namespace mftk::core::check
