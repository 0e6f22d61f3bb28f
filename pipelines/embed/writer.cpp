#include "pipelines/embed/writer.hpp"

#include <cstdio>
#include <filesystem>

#include "core/error.hpp"

namespace sparsa {

EmbeddingsWriter::EmbeddingsWriter(const std::string& final_path, const FileAttrs& a, bool f16)
    : final_(final_path), tmp_(final_path + ".tmp"), f16_(f16) {
  file_ = std::make_unique<h5::File>(h5::File::create(tmp_));
  file_->set_attr("/", "format", std::string("sparsa-embeddings"));
  file_->set_attr("/", "format_version", (int64_t)1);
  file_->set_attr("/", "sparsa_version", a.sparsa_version);
  file_->set_attr("/", "model_sha256", a.model_sha256);
  file_->set_attr("/", "model_config", a.model_config);
  file_->set_attr("/", "command_line", a.command_line);
  file_->set_attr("/", "created_utc", a.created_utc);
  file_->set_attr("/", "pool", a.pool);
  file_->set_attr("/", "dtype", a.dtype);
  file_->create_group("/records");
}

EmbeddingsWriter::~EmbeddingsWriter() {
  if (done_) return;
  try {
    file_.reset();
  } catch (...) {
  }
  std::remove(tmp_.c_str());
}

std::string EmbeddingsWriter::key_for(int64_t index, const std::string& name) {
  char num[32];
  std::snprintf(num, sizeof num, "%06lld", (long long)index);
  std::string key = std::string(num) + "_";
  // HDF5-safe and readable: letters, digits, '.', '_', '-' kept; the rest becomes '_'.
  for (char c : name.substr(0, 64)) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    key += ok ? c : '_';
  }
  return key;
}

void EmbeddingsWriter::write(const RecordOutput& r) {
  const Record& rec = *r.record;
  const std::string g = "/records/" + key_for(count_++, rec.name);
  file_->create_group(g);
  file_->set_attr(g, "name", rec.name);
  file_->set_attr(g, "description", rec.description);
  file_->set_attr(g, "source", rec.source);
  file_->set_attr(g, "kind", r.kind);
  file_->set_attr(g, "length", r.length);
  file_->set_attr(g, "region", rec.region);
  file_->set_attr(g, "strand", r.strand);
  file_->create_rows(g + "/embedding", r.n_out, r.d, f16_ ? h5::Dtype::kF16 : h5::Dtype::kF32);
  // Write in blocks so the f16 conversion buffer stays small.
  const int64_t block = std::max<int64_t>(1, (1 << 22) / std::max<int64_t>(1, r.d));
  for (int64_t i = 0; i < r.n_out; i += block)
    file_->write_rows(g + "/embedding", i, std::min(block, r.n_out - i), r.d, r.rows + i * r.d);
  std::vector<int64_t> s(r.n_out), e(r.n_out);
  for (int64_t i = 0; i < r.n_out; ++i) {
    s[i] = r.starts[i] + rec.offset;
    e[i] = r.ends[i] + rec.offset;
  }
  file_->write_i64(g + "/bin_start", {r.n_out}, s.data());
  file_->write_i64(g + "/bin_end", {r.n_out}, e.data());
  file_->write_i64(g + "/global_positions", {r.n_layers, r.n_global}, r.global_positions);
  file_->write_f32(g + "/global_scores", {r.n_layers, r.n_global}, r.global_scores);
  if (!rec.timestamps.empty()) {
    std::vector<std::string> ts(r.n_out);
    for (int64_t i = 0; i < r.n_out; ++i) ts[i] = rec.timestamps[r.starts[i]];
    file_->write_strings(g + "/timestamps", ts);
  }
}

void EmbeddingsWriter::finish() {
  file_->set_attr("/", "complete", (int64_t)1);
  file_->close();
  file_.reset();
  std::error_code ec;
  std::filesystem::rename(tmp_, final_, ec);
  if (ec) throw SystemError(final_ + ": cannot move the finished output into place: " + ec.message());
  done_ = true;
}

}  // namespace sparsa
