#include "cli/inspect.hpp"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>

#include "core/error.hpp"
#include "core/sha256.hpp"
#include "io/h5.hpp"
#include "model/weights.hpp"
#include "pipelines/embed/embed.hpp"
#include "pipelines/embed/writer.hpp"

namespace sparsa {

namespace {

std::string shape_text(const std::vector<int64_t>& s) {
  std::string t = "[";
  for (size_t i = 0; i < s.size(); ++i) t += (i ? ", " : "") + std::to_string(s[i]);
  return t + "]";
}

void inspect_model(const std::string& path) {
  ModelWeights w = load_checkpoint(path);  // validates every dataset
  const auto& c = w.config;
  int64_t params = 0;
  for (auto& t : tensor_list(w)) params += (int64_t)t.data->size();
  std::printf("%s: sparsa checkpoint (format_version 1), valid\n", path.c_str());
  std::printf("  kind %s, d_model %lld, n_layers %lld, n_heads %lld (head_dim %lld), d_ff %lld\n",
              to_string(c.kind), (long long)c.d_model, (long long)c.n_layers, (long long)c.n_heads,
              (long long)c.head_dim(), (long long)c.d_ff);
  std::printf("  window %lld (%s), globals: every %lld, min %lld, max %lld; router_hidden %lld\n",
              (long long)c.window, c.causal ? "causal" : "bidirectional", (long long)c.global_every,
              (long long)c.global_min, (long long)c.global_max, (long long)c.router_hidden);
  if (c.kind == ModelKind::kTimeseries)
    std::printf("  channels %lld, ts_bins %lld, ts_clip %g, ts_transform %s\n",
                (long long)c.channels, (long long)c.ts_bins, c.ts_clip, to_string(c.ts_transform));
  std::printf("  parameters: %lld (%.1f MB as float32)\n", (long long)params, params * 4 / 1e6);
  // What ties an embeddings file to this checkpoint (its model_sha256), and how it was made.
  std::printf("  sha256 %s; %s\n", sha256_file(path).c_str(),
              w.seed.empty() ? "no seed attribute" : ("seed " + w.seed).c_str());
  if (!w.unused.empty()) {
    std::printf("  not used by the model (ignored):");
    for (const std::string& u : w.unused) std::printf(" %s", u.c_str());
    std::printf("\n");
  }
  std::printf("config:\n%s", w.config_toml.c_str());
}

// What is wrong with a record's bins (spec 4: [bin_start, bin_end) in source coordinates, one a
// row), or "": they tile the record's `length` positions in order from a position >= 0, each N
// long under bin:N (the last at most N), one under none. Read a million rows at a time (a
// chromosome's --pool none rows would otherwise be 16 bytes a base in memory).
std::string bins_problem(const h5::File& f, const std::string& g, int64_t rows, int64_t length,
                         const std::optional<PoolSpec>& pool) {
  if (rows == 0) return length > 0 ? "no bins for length " + std::to_string(length) : "";
  const int64_t each = !pool                           ? 0
                       : pool->kind == PoolSpec::kNone ? 1
                       : pool->kind == PoolSpec::kBin  ? pool->bin
                                                       : length;
  auto at = [](int64_t i, int64_t s, int64_t e) {
    return "bin " + std::to_string(i) + " [" + std::to_string(s) + ", " + std::to_string(e) + ")";
  };
  int64_t first = 0, prev_end = 0;  // every start is >= 0 (the first checked, the rest tile)
  constexpr int64_t kChunk = int64_t{1} << 20;
  for (int64_t c = 0; c < rows; c += kChunk) {
    const int64_t n = std::min(kChunk, rows - c);
    const auto bs = f.read_i64_range(g + "/bin_start", c, n);
    const auto be = f.read_i64_range(g + "/bin_end", c, n);
    for (int64_t k = 0; k < n; ++k) {
      const int64_t i = c + k, s = bs[k], e = be[k];
      if (i == 0 && s < 0) return at(i, s, e) + " starts before the record (a position < 0)";
      if (i == 0) first = s;
      if (i > 0 && s != prev_end)
        return at(i, s, e) + " does not start where bin " + std::to_string(i - 1) + " ends (" +
               std::to_string(prev_end) + ")";
      if (e <= s) return at(i, s, e) + " is empty or backwards";
      const bool last = i + 1 == rows;
      if (each > 0 && (last ? e - s > each : e - s != each))
        return at(i, s, e) + " holds " + std::to_string(e - s) + " positions, not " +
               (last ? "at most " : "") + std::to_string(each) + " (pool " + pool->text() + ")";
      prev_end = e;
    }
  }
  if (prev_end - first != length)
    return "the bins cover " + std::to_string(prev_end - first) +
           " positions, not the record's length " + std::to_string(length);
  return "";
}

// What is wrong with a record's global sets (spec 4: each layer's positions ascending, 0-based in
// the record), or "".
std::string globals_problem(const std::vector<int64_t>& pos, int64_t g, int64_t length) {
  for (size_t i = 0; i < pos.size(); ++i) {
    const int64_t l = g > 0 ? (int64_t)i / g : 0, j = g > 0 ? (int64_t)i % g : 0;
    const std::string at = "global_positions[" + std::to_string(l) + ", " + std::to_string(j) +
                           "] = " + std::to_string(pos[i]);
    if (pos[i] < 0 || pos[i] >= length)
      return at + " is outside the record (length " + std::to_string(length) + ")";
    if (j > 0 && pos[i] <= pos[i - 1])
      return at + " does not follow " + std::to_string(pos[i - 1]) + ": not ascending";
  }
  return "";
}

// What is wrong with record group g of an embeddings file (spec 4's layout), or "". c: the
// file's model config where it could be read (then d, the layers and G are checked too).
// pool: the file's pooling where it could be read (then the rows are checked against length).
std::string check_record(const h5::File& f, const std::string& g, const ModelConfig* c,
                         const std::string& dtype, const std::optional<PoolSpec>& pool) {
  const int64_t d = c ? c->d_model : 0;
  for (const char* a : {"name", "description", "source", "kind", "strand", "length", "region"})
    if (!f.has_attr(g, a)) return std::string("attribute '") + a + "' is missing";
  if (const std::string strand = f.attr_string(g, "strand");
      strand != "+" && strand != "rc-average")
    return "strand is '" + strand + "', not '+' or 'rc-average'";
  const std::string et = f.type_name(g + "/embedding");
  if (et == "missing") return "embedding is missing";
  const auto emb = f.shape(g + "/embedding");
  if (emb.size() != 2 || (d > 0 && emb[1] != d))
    return "embedding has shape " + shape_text(emb) + ", not [rows, " + std::to_string(d) + "]";
  if (!dtype.empty() && et != dtype) return "embedding is " + et + ", the file says " + dtype;
  std::optional<int64_t> length;
  try {
    length = f.attr_int(g, "length");
  } catch (const Error&) {  // said by the listing ("is not an integer"): rows and G not checked
  }
  if (pool && length) {  // rows a record has under the file's pooling (spec 3)
    const int64_t want = pool->rows(*length);
    if (emb[0] != want)
      return "embedding has " + std::to_string(emb[0]) + " rows, not the " + std::to_string(want) +
             " of length " + std::to_string(*length) + " with pool " + pool->text();
  }
  for (const char* b : {"bin_start", "bin_end"}) {
    const std::string t = f.type_name(g + "/" + b);
    if (t != "int64") return std::string(b) + (t == "missing" ? " is missing" : " is " + t);
    if (f.shape(g + "/" + b) != std::vector<int64_t>{emb[0]})
      return std::string(b) + " does not have one value per embedding row";
  }
  if (length)
    if (std::string why = bins_problem(f, g, emb[0], *length, pool); !why.empty()) return why;
  if (f.attr_string(g, "kind") == "timeseries") {  // the time at each bin_start (spec 4)
    const std::string t = f.type_name(g + "/timestamps");
    if (t != "string")
      return "timestamps (a time series' times) " +
             (t == "missing" ? std::string("is missing") : "is " + t + ", not text");
    if (f.shape(g + "/timestamps") != std::vector<int64_t>{emb[0]})
      return "timestamps does not have one value per embedding row";
    // (files of earlier versions have neither of these two)
    if (const std::string te = f.type_name(g + "/timestamps_end"); te != "missing") {
      if (te != "string") return "timestamps_end is " + te + ", not text";
      if (f.shape(g + "/timestamps_end") != std::vector<int64_t>{emb[0]})
        return "timestamps_end does not have one value per embedding row";
    }
    if (const std::string ts = f.type_name(g + "/ts_scale"); ts != "missing") {
      if (ts != "float64") return "ts_scale is " + ts + ", not float64";
      const auto shape = f.shape(g + "/ts_scale");
      if (shape.size() != 1 || (c && shape[0] != c->channels))
        return "ts_scale is " + shape_text(shape) + ", not one value a channel" +
               (c ? " (" + std::to_string(c->channels) + ")" : std::string());
    }
  }
  if (f.type_name(g + "/global_positions") != "int64" ||
      f.type_name(g + "/global_scores") != "float32")
    return "global_positions (int64) or global_scores (float32) is missing or of another type";
  const auto gp = f.shape(g + "/global_positions");
  if (gp.size() != 2 || f.shape(g + "/global_scores") != gp)
    return "global_positions and global_scores are not both [layers, G]";
  if (c) {  // one row a layer, G of the record's length (spec 2)
    const int64_t want_g = length ? c->n_global(*length) : gp[1];
    if (gp[0] != c->n_layers || gp[1] != want_g)
      return "global_positions is " + shape_text(gp) + ", not [" + std::to_string(c->n_layers) +
             ", " + std::to_string(want_g) + "] (the model's layers" +
             (length ? ", G of length " + std::to_string(*length) : std::string()) + ")";
  }
  if (length)
    if (std::string why = globals_problem(f.read_i64(g + "/global_positions"), gp[1], *length);
        !why.empty())
      return why;
  // A NaN or Inf is an error, not an output (spec 2): a file that holds one is not a result.
  for (const auto& [name, cols] : {std::pair{"embedding", emb[1]}, {"global_scores", gp[1]}})
    if (const int64_t at = f.first_nonfinite(g + "/" + name); at >= 0)
      return std::string(name) + "[" + std::to_string(at / std::max<int64_t>(cols, 1)) + ", " +
             std::to_string(at % std::max<int64_t>(cols, 1)) +
             "] is not finite (NaN or Inf: an error, not an output)";
  return "";
}

// The same, with what a read throws (an attribute of another type, a dataset HDF5 cannot read)
// said as the record's problem: the other records are still checked and listed.
std::string record_problem(const h5::File& f, const std::string& g, const ModelConfig* c,
                           const std::string& dtype, const std::optional<PoolSpec>& pool) {
  try {
    return check_record(f, g, c, dtype, pool);
  } catch (const Error& e) {
    return e.what();
  }
}

// An attribute of a record for the listing: "(missing)" or "(unreadable)" where the check above
// has said so already (the listing goes on).
std::string listed(const h5::File& f, const std::string& g, const char* name) {
  if (!f.has_attr(g, name)) return "(missing)";
  try {
    return f.attr_string(g, name);
  } catch (const Error&) {
    return "(unreadable)";
  }
}

// What is wrong with the records `keys` of an embeddings file (and its pool), a line each: d, the
// layers and G from the file's model config where it can be read.
std::vector<std::string> record_problems(const h5::File& f, const std::vector<std::string>& keys) {
  std::vector<std::string> bad;
  std::optional<ModelConfig> config;
  if (f.has_attr("/", "model_config")) {
    try {
      config = parse_model_config(f.attr_string("/", "model_config"), f.path() + " (model_config)");
    } catch (const Error&) {
    }
  }
  std::string dtype;
  try {
    if (f.has_attr("/", "dtype")) dtype = f.attr_string("/", "dtype");
  } catch (const Error&) {
    bad.push_back("dtype is not a string");
  }
  std::optional<PoolSpec> pool;
  if (f.has_attr("/", "pool")) {
    std::optional<std::string> text;
    try {
      text = f.attr_string("/", "pool");
      pool = parse_pool(*text);
    } catch (const Error&) {
      bad.push_back(text ? "pool '" + *text + "' is not none, mean or bin:N"
                         : std::string("pool is not a string"));
    }
  }
  for (const auto& k : keys)
    if (const std::string why =
            record_problem(f, "/records/" + k, config ? &*config : nullptr, dtype, pool);
        !why.empty())
      bad.push_back("record " + k + ": " + why);
  return bad;
}

bool inspect_embeddings(const h5::File& f, bool verbose) {
  const std::string& path = f.path();
  const bool complete = f.has_attr("/", "complete") && f.attr_int("/", "complete") == 1;
  std::printf("%s: sparsa embeddings (format_version %lld)%s\n", path.c_str(),
              (long long)f.attr_int("/", "format_version"),
              complete ? "" : "  ** INCOMPLETE: not a result **");
  for (const char* a :
       {"sparsa_version", "created_utc", "pool", "dtype", "model_sha256", "command_line"})
    if (f.has_attr("/", a)) std::printf("  %-14s %s\n", a, listed(f, "/", a).c_str());
  if (const int64_t v = f.attr_int("/", "format_version"); v != 1) {
    // A later layout may mean other things by the same names: not judged as a result.
    std::printf("  ** BAD: format_version %lld, this sparsa reads version 1 **\n", (long long)v);
    return false;
  }
  if (!f.exists("/records")) {
    std::printf("  ** BAD: no /records group **\n");
    return false;
  }
  const auto keys = f.list("/records");
  std::printf("  records        %zu\n", keys.size());
  // Every record's layout is checked (not only those listed).
  const std::vector<std::string> bad = record_problems(f, keys);
  for (const auto& line : bad) std::printf("  ** BAD: %s **\n", line.c_str());
  const bool sound = bad.empty();
  // (a time series without timestamps_end, as --pool none or an earlier version writes: its last
  // row's time where every bin is one row, else only its last bin's start)
  const bool one_row_bins = listed(f, "/", "pool") == "none";
  size_t shown = 0;
  for (const auto& k : keys) {
    if (!verbose && shown == 20) {
      std::printf("  ... %zu more (use --all)\n", keys.size() - shown);
      break;
    }
    const std::string g = "/records/" + k;
    auto shape_of = [&](const char* name) {  // (missing or unreadable: said above)
      try {
        return f.type_name(g + "/" + name) == "missing" ? std::string("(missing)")
                                                        : shape_text(f.shape(g + "/" + name));
      } catch (const Error&) {
        return std::string("(unreadable)");
      }
    };
    std::string region = listed(f, g, "region");
    if (f.has_attr(g, "region_name")) region += " (" + listed(f, g, "region_name") + ")";
    std::string length = "(missing)";
    if (f.has_attr(g, "length")) try {
        length = std::to_string(f.attr_int(g, "length"));
      } catch (const Error&) {
        length = "(not an integer)";
      }
    // A time series: which columns went in, and the time its rows span.
    std::string series;
    if (f.type_name(g + "/timestamps") == "string") try {
        const int64_t n = f.shape(g + "/timestamps")[0];
        const bool ends = f.type_name(g + "/timestamps_end") == "string";
        if (n > 0)
          series =
              " time=" + f.read_strings_range(g + "/timestamps", 0, 1)[0] +
              (ends || one_row_bins ? ".." : "..(last bin from) ") +
              f.read_strings_range(g + (ends ? "/timestamps_end" : "/timestamps"), n - 1, 1)[0];
        if (const std::string d = listed(f, g, "description"); !d.empty() && d != "(missing)")
          series += " (" + d + ")";
      } catch (const Error&) {
        series = " time=(unreadable)";
      }
    std::printf("  %-24s name=%s length=%s embedding=%s globals=%s strand=%s%s%s%s\n", k.c_str(),
                listed(f, g, "name").c_str(), length.c_str(), shape_of("embedding").c_str(),
                shape_of("global_positions").c_str(), listed(f, g, "strand").c_str(),
                region.empty() ? "" : " region=", region.c_str(), series.c_str());
    ++shown;
  }
  return complete && sound;
}

}  // namespace

std::vector<std::string> embeddings_problems(const std::string& path) {
  auto f = h5::File::open_read(path);
  if (!f.has_attr("/", "format") || f.attr_string("/", "format") != "sparsa-embeddings")
    return {path + ": not a sparsa embeddings file"};
  std::vector<std::string> bad;
  if (!f.has_attr("/", "complete") || f.attr_int("/", "complete") != 1)
    bad.push_back("complete is not 1");
  if (f.attr_int("/", "format_version") != 1) bad.push_back("format_version is not 1");
  if (!f.exists("/records")) return bad.push_back("no /records group"), bad;
  for (auto& line : record_problems(f, f.list("/records"))) bad.push_back(std::move(line));
  return bad;
}

// " (inputs a.fa, b.fa; pool mean; dtype f16; 3 finished parts)": what a journal's MANIFEST says
// of its run, for the messages that tell to rerun it with --resume ("" where it cannot be read).
std::string journal_summary(const std::string& parts) {
  std::ifstream in(parts + "/MANIFEST");
  if (!in) return "";
  std::string line, inputs, pool, dtype;
  while (std::getline(in, line)) {
    if (line.starts_with("input ")) inputs += (inputs.empty() ? "" : ", ") + line.substr(6);
    if (line.starts_with("pool ")) pool = line.substr(5);
    if (line.starts_with("dtype ")) dtype = line.substr(6);
  }
  const int64_t n_parts = Journal::count_parts_in(parts);
  std::string s;
  for (const auto& [what, v] : {std::pair<const char*, const std::string&>{"inputs ", inputs},
                                {"pool ", pool},
                                {"dtype ", dtype}})
    if (!v.empty()) s += what + v + "; ";
  return " (" + s + std::to_string(n_parts) + " finished part" + (n_parts == 1 ? "" : "s") + ")";
}

// What to do with a journal: wait where a live run holds it (its lock), else --resume.
std::string journal_advice(const std::string& parts) {
  if (const std::string live = Journal::in_use_by_another_run(parts); !live.empty())
    return "; a run is writing it now: " + live;
  return "; run the same sparsa embed command with --resume to finish it";
}

// A name sparsa gives a file while it is made (OUT.h5.tmp, OUT.h5.parts/000001.h5.tmp): an
// HDF5 file there without sparsa's attributes was left by a run that stopped while writing it.
std::string unfinished_file_note(const std::string& path) {
  if (!path.ends_with(".tmp")) return "";
  const std::filesystem::path p(path);
  if (p.parent_path().extension() == ".parts")
    return ": a journal part that a sparsa run was writing when it stopped, not a result; "
           "--resume embeds its records again";
  return ": a file that a sparsa run was writing when it stopped, not a result (a run writes "
         "OUT.h5.tmp, then renames it); where its journal " +
         path.substr(0, path.size() - 4) +
         ".parts/ is left, the same sparsa embed command with --resume finishes the output";
}

bool inspect_file(const std::string& path, bool verbose) {
  // (HDF5 would wait on a FIFO for a writer, where no signal stops it; it needs a file anyway)
  if (std::error_code ec; std::filesystem::exists(path, ec) &&
                          !std::filesystem::is_regular_file(path, ec) &&
                          !std::filesystem::is_directory(path, ec))  // (a folder: said below)
    throw InputError(path +
                     ": not a regular file (a FIFO or a device): sparsa inspect reads an "
                     "HDF5 file");
  if (!std::filesystem::exists(path)) {
    std::error_code ec;
    // No file, but the journal of a run that has not finished it
    if (!std::filesystem::exists(std::filesystem::symlink_status(path, ec)) &&
        std::filesystem::is_directory(path + ".parts", ec)) {
      const std::string parts = path + ".parts";
      // A --force run that failed before its journal began left only the old output there:
      // no run to resume (embed refuses --resume then), so the advice differs.
      const std::string previous = parts + "/" + Journal::kPreviousOutput;
      if (!Journal::present(parts) && std::filesystem::exists(previous, ec))
        throw InputError(path + ": no such file: " + previous +
                         " is the old file, set aside by a --force run that failed before it "
                         "began; rerun that command (with --force), or move the old file back: "
                         "mv " +
                         previous + " " + path + " && rmdir " + parts);
      throw InputError(
          path + ": no such file yet: " + parts +
          "/ holds the journal of a run that has not finished it" + journal_summary(parts) +
          journal_advice(parts) +
          (std::filesystem::exists(previous, ec)
               ? " (the old file, set aside by --force, is " + previous + " until then)"
               : ""));
    }
    throw InputError(path + ": no such file");
  }
  if (std::error_code ec;
      std::filesystem::is_directory(path, ec) && std::filesystem::exists(path + "/MANIFEST", ec)) {
    std::string dir = path;
    while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
    const std::string out =
        dir.ends_with(".parts") ? dir.substr(0, dir.size() - 6) : std::string("its output");
    throw InputError(dir + ": the journal (a folder) of a sparsa run that has not finished " + out +
                     journal_summary(dir) + journal_advice(dir) + " (its parts: " + dir + "/*.h5)");
  }
  // A name sparsa writes while it works: what a stopped run left there may not even open (a
  // process killed while it wrote), and a file without complete = 1 is no result either.
  if (const std::string note = unfinished_file_note(path); !note.empty()) {
    std::optional<h5::File> tmp;
    try {
      tmp.emplace(h5::File::open_read(path));
    } catch (const InputError&) {
    }
    if (!tmp || !tmp->has_attr("/", "format") || !tmp->has_attr("/", "complete"))
      throw InputError(path + note);
  }
  auto f = h5::File::open_read(path);
  if (!f.has_attr("/", "format")) {
    if (f.exists("/records"))  // a part of a run's journal: records, no file attributes
      throw InputError(path +
                       ": a journal part of an unfinished sparsa run (OUT.h5.parts/), not a "
                       "result: run the same command with --resume to finish the output");
    throw InputError(path + ": an HDF5 file, but not one of sparsa's (no 'format' attribute)");
  }
  const std::string fmt = f.attr_string("/", "format");
  if (fmt == "sparsa-model") {
    f.close();
    inspect_model(path);
    return true;
  } else if (fmt == "sparsa-embeddings") {
    return inspect_embeddings(f, verbose);
  } else {
    throw InputError(path + ": unknown format '" + fmt + "'");
  }
}

}  // namespace sparsa
