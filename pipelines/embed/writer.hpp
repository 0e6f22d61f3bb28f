// sparsa: the embeddings file (spec section 4) and the progress journal that makes runs
// resumable.
//
// Finished records are written as small HDF5 files, OUT.parts/NNNNNN.h5 (written as .tmp, then
// renamed, so a part is either whole or absent), beside a MANIFEST that names the run (model,
// inputs, options). A part holds one record, or a group of short records one rank embedded one
// after another (named after the first; `write_grouped`): a FASTQ of a million reads makes a few
// thousand files, not a million. When every record is done, rank 0 copies the parts into OUT.tmp,
// writes `complete = 1` last, closes it, renames it to OUT and removes OUT.parts. A crash, a kill
// or a full disk therefore never leaves a file at OUT, and `--resume` skips the parts that exist.
#pragma once
#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/record.hpp"
#include "dist/comm.hpp"
#include "io/h5.hpp"

namespace sparsa {

struct FileAttrs {
  std::string sparsa_version, model_sha256, model_config, command_line, created_utc, pool, dtype;
  std::string
      manifest;  // the run's manifest (the MANIFEST's, less its compute lines): `run_manifest`
  // The folder the run started in (command_line's relative paths are relative to it), and each
  // kind of node that computed the records ("; " between; Journal::computes): `working_directory`,
  // `compute` ("": not written).
  std::string working_directory, compute;
};

// What differs between two manifests, by key, quoted for a message ("" when they are equal):
// "'pool mean' now vs 'pool none'", "'input /d/b.fa' added", "... no longer given".
std::string first_difference(const std::string& now, const std::string& before);

// A manifest of an earlier version as this one writes it: its input and regions_bed paths
// without . or .. (before, ./in.fa stayed /cwd/./in.fa), so that such a run still resumes.
std::string normalized_manifest(const std::string& manifest);

// One record's output as one rank holds it: rows [row0, row0 + n_rows) of n_out_total rows.
struct RecordOutput {
  const Record* record =
      nullptr;         // metadata: name, description, source, region, offset, timestamps
  std::string kind;    // "dna" | "timeseries"
  std::string strand;  // "+" | "rc-average"
  int64_t length = 0;  // tokens
  int64_t n_out_total = 0, row0 = 0, n_rows = 0, d = 0;
  const float* rows = nullptr;       // [n_rows, d]
  const uint16_t* rows16 = nullptr;  // or the rows in float16 (a float16 output; rows unused)
  const int64_t* starts = nullptr;   // [n_rows] record positions, 0-based; writer adds offset
  const int64_t* ends = nullptr;
  const int64_t* global_positions = nullptr;  // [L, G]
  const float* global_scores = nullptr;       // [L, G]
  int64_t n_layers = 0, n_global = 0;
  std::string fingerprint{};  // record_fingerprint (records.hpp): the record's input_sha256
  bool pooled = false;        // the run's bins hold several rows (bin:N, N > 1, or mean): a time
                              // series gets timestamps_end even where its bins are one row each
};

class Journal {
 public:
  // Collective. Creates OUT.parts/ with `manifest`, or with resume reopens it after checking that
  // its manifest matches (another run's is refused, or with force discarded). Without resume an
  // existing OUT.parts is refused unless force (which discards it).
  // `compute`: each kind of node this run's ranks compute with (embed's ranks_compute), kept in
  // the MANIFEST as `compute` lines beside the manifest (not compared: a resume on another kind
  // of node continues, said by compute_note()).
  Journal(const std::string& output, const std::string& manifest, bool resume, bool force,
          Comm& comm, const std::vector<std::string>& compute = {});
  ~Journal();
  Journal(const Journal&) = delete;
  Journal& operator=(const Journal&) = delete;
  bool done(int64_t index) const {
    return index >= 0 && index < (int64_t)done_.size() && done_[index];
  }
  // With resume: whether finished record `index` was made from a record of this fingerprint (its
  // part's input_sha256; where parts of several runs hold it, the one that matches is the one
  // assembled); redo(index) forgets it, so that it is embedded again.
  bool same_record(int64_t index, const std::string& fingerprint);
  // Whether no part holds a fingerprint for finished record `index` (its part could not be read:
  // damaged by a crash, or it lacks input_sha256), so same_record cannot have matched it.
  bool unreadable(int64_t index) const;
  void redo(int64_t index);
  // Every record has been reached: the earlier run's records not checked are not this run's.
  // Frees their table (48 bytes a record) before the output is assembled.
  void forget_found() { std::vector<Found>().swap(found_); }
  int64_t n_done() const { return std::count(done_.begin(), done_.end(), uint8_t{1}); }
  // Finished records past `index` (an input that ended there: an earlier run's input was longer).
  int64_t n_done_after(int64_t index) const {
    return index + 1 >= (int64_t)done_.size()
               ? 0
               : std::count(done_.begin() + index + 1, done_.end(), uint8_t{1});
  }
  const std::string& dir() const { return dir_; }
  // Rank 0, --resume --force: why the journal found was another run's and was discarded ("").
  const std::string& discarded() const { return discarded_; }
  // Rank 0: each kind that computed the journal's records and this run's, in order (the file's
  // `compute`); and, where this resume adds a kind, "'KIND', ...; this run adds 'KIND'", else "".
  const std::vector<std::string>& computes() const { return computes_; }
  const std::string& compute_note() const { return compute_note_; }
  int64_t count_parts() const { return count_parts_in(dir_); }  // finished part files on disk
  static int64_t count_parts_in(const std::string& dir);        // (inspect: a journal not opened)
  bool parts_open() const;  // whether a part is being written (its NNNNNN.h5.tmp), by any rank
  int64_t count_records() const;  // the records in them (an unreadable part counts none)
  void remove();                  // deletes the journal folder (an open group is dropped)
  // The same for a journal with no finished record, but an old output set aside by --force
  // (kPreviousOutput) stays in the folder, alone: a later run starts a fresh journal beside it.
  void remove_but_previous_output();
  // Collective. Writes record `index` (1-based, input order). With `parallel` every rank writes
  // its own rows through parallel HDF5; otherwise rank 0 holds all rows and writes alone.
  void write_part(int64_t index, const RecordOutput& r, bool f16, bool parallel, Comm& comm);
  // This rank alone: adds record `index` (all its rows in r) to this rank's open group part,
  // made when none is open. The group is moved into the journal (flush_group) once it holds
  // kGroupRecords records or kGroupBytes of rows, or when the group's seconds have passed since
  // this rank's last part: a finished record is in the journal that long later at most (a slow
  // record at once; a stop or a failure moves the group at once), and a part's own cost (~1 ms of
  // file system and HDF5 work, ~16 KB of structure, one file for the file system to hold and for
  // assemble to open) is shared by the records of a group.
  void write_grouped(int64_t index, const RecordOutput& r, bool f16);
  // Moves the open group part, if any, into the journal. Called before a part of another kind is
  // written, at the end of the input, and when a run stops or fails (its records are finished).
  void flush_group();
  // flush_group once the group's time has come (a record about to start would hold it longer).
  void flush_group_if_due();
  // Collective, before assemble: rank 0 learns which part holds each record another rank wrote.
  void gather_sources(Comm& comm);
  static constexpr int64_t kGroupRecords = 4096, kGroupBytes = int64_t{256} << 20;
  // The group's seconds: SPARSA_GROUP_SECONDS, else ranks / 2 within [1, 30]: one process keeps
  // a finished record waiting a second at most, and a job of up to 60 ranks makes about 2 group
  // parts a second by time (64 ranks: one a rank and 30 s), not a part a rank and second (10^8
  // reads over 64 ranks for hours: ~10^6 files). A kill loses that much finished work at most.
  static double default_group_seconds(int ranks) { return std::clamp(ranks / 2.0, 1.0, 30.0); }
  // Rank 0 only: builds OUT from the parts 1..n_records (one record: its part, completed in
  // place and renamed; several: copied into a new file), then removes the journal. `tick(bytes)`
  // is called before each record is copied, with the bytes of its embedding, and before the file
  // is closed (signs of life for the ranks that wait: Comm::heartbeat).
  void assemble(const FileAttrs& attrs, int64_t n_records, const std::string& output,
                const std::function<void(int64_t)>& tick = {});

  // The record's group name "NNNNNN_name": the index zero-padded to 6 digits, or to as many as
  // the largest index of n_records takes (the final file of more than a million records), so
  // that the keys sort in input order.
  static std::string key_for(int64_t index, const std::string& name, int64_t n_records = 0);
  // Whether folder `dir` holds a journal: anything besides a lock file and a previous output (a
  // folder left with only its LOCK, as NFS can leave it, is none).
  static bool present(const std::string& dir);
  // Whether `dir` holds nothing but a MANIFEST (and a lock): no work of any run, as a failed
  // --force run leaves it once its old output was moved back.
  static bool only_manifest(const std::string& dir);
  // Refuses (ConfigError) a folder at `dir` that is not a journal: a link, or one holding files
  // no run writes (a user's own). A run empties a journal it replaces and removes it at the end.
  // embed's path checks call it on every rank, before --force sets an old output aside there.
  static void check_folder(const std::string& dir);
  // The old output that `embed --force` set aside in the folder: cleared with the journal only
  // when the folder goes (the output finished), never when a journal is started over.
  static constexpr const char* kPreviousOutput = "PREVIOUS_OUTPUT";
  bool holds_previous_output() const;
  // Whether another live process holds folder `dir`'s lock (a test, no lock taken): the refusal
  // that taking the lock would give, naming that run, or "" when none holds it.
  static std::string in_use_by_another_run(const std::string& dir);

 private:
  friend class PartStream;
  std::string part_path(int64_t index) const;
  // Renames a written part's .tmp into place, under a name no other part has (a part of an
  // earlier run may hold the same first record), and counts its records done.
  void commit_part(const std::string& tmp, const std::vector<int64_t>& indices);
  // Rank 0, assembling: the part file that holds this run's version of record `index`.
  std::string source_of(int64_t index) const;
  void finish_as(const std::string& from, const std::string& output);
  void release_lock();
  std::string dir_;
  // Finished records, by index (a few bytes a record: a read set has millions).
  std::vector<uint8_t> done_;
  void set_done(int64_t index, bool done);
  // With resume: each record a part found holds, with the part's input_sha256 for it (absent
  // where unreadable), sorted by index, until the record is checked (same_record), embedded
  // again or written by this run (then `live` is cleared). 48 bytes a record, where strings in
  // maps took ~150 (peak RSS of a resumed read set: docs/benchmarks.md).
  struct Found {
    int64_t index = 0;
    int32_t part = -1;  // rank 0: the part file (into parts_); other ranks: -1
    bool live = true, has_fp = false;
    std::array<uint8_t, 32> fp{};
  };
  std::vector<Found> found_;
  void forget_found(int64_t index);  // clears `live` of the index's entries
  // The part chosen for each record resumed or written by this run (other ranks' from
  // gather_sources), as an index into parts_ (-1: none).
  std::vector<int32_t> source_;
  std::vector<std::string> parts_;
  std::map<std::string, int32_t> part_ids_;
  int32_t part_id(const std::string& part);  // its index into parts_, added when new
  void set_source(int64_t index, int32_t part);
  int32_t part_of(int64_t index) const {  // index into parts_, or -1
    return index >= 0 && index < (int64_t)source_.size() ? source_[index] : -1;
  }
  struct Group {
    std::unique_ptr<h5::File> file;
    std::string tmp;
    std::vector<int64_t> indices;
    int64_t bytes = 0;
  };
  std::unique_ptr<Group> group_;  // this rank's open group part
  double group_seconds_ = 1;
  std::chrono::steady_clock::time_point last_part_ = std::chrono::steady_clock::now();
  void drop_group();
  std::string discarded_;
  std::vector<std::string> computes_;
  std::string compute_note_;
  int lock_fd_ = -1;  // rank 0: OUT.parts/LOCK, write-locked (fcntl) while this run lives
};

// One record's part written while its rows arrive, by the one rank that holds the whole record
// (a row per token, --pool none): the host never needs all rows at once. The constructor makes
// the part's .tmp with the record's group, attributes and an embedding dataset of r.n_out_total
// rows; rows() writes rows as they come; finish() writes the bins, global sets (and timestamps)
// of r and moves the part into the journal. Destroyed unfinished (an error on the way), it
// removes the .tmp: as with write_part, a part is whole or absent.
class PartStream {
 public:
  PartStream(Journal& journal, int64_t index, const RecordOutput& r, bool f16);
  ~PartStream();
  PartStream(const PartStream&) = delete;
  PartStream& operator=(const PartStream&) = delete;
  void rows(int64_t row0, int64_t n_rows, const uint16_t* rows16);  // float16 output only
  void rows(int64_t row0, int64_t n_rows, const float* rows);  // converted for a float16 output
  void finish(const RecordOutput& r);                          // r: every row's bins, row0 = 0

 private:
  void check_rows(int64_t row0, int64_t n_rows) const;
  Journal& journal_;
  int64_t index_;
  bool f16_;
  int64_t d_, n_rows_, written_ = 0;
  std::string tmp_, group_;
  std::unique_ptr<h5::File> file_;
  bool finished_ = false;
};

}  // namespace sparsa
