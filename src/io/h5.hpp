// sparsa: a small RAII layer over the HDF5 C API. Every call is checked; failures throw
// SystemError (or InputError where the file's content is at fault) naming the file and object.
#pragma once
#include <hdf5.h>

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "core/error.hpp"

namespace sparsa::h5 {

// Owns one hid_t and closes it with the right H5*close.
class Handle {
 public:
  Handle() = default;
  Handle(hid_t id, herr_t (*closer)(hid_t)) : id_(id), closer_(closer) {}
  ~Handle() { reset(); }
  Handle(Handle&& o) noexcept : id_(o.id_), closer_(o.closer_) { o.id_ = -1; }
  Handle& operator=(Handle&& o) noexcept {
    if (this != &o) {
      reset();
      id_ = o.id_;
      closer_ = o.closer_;
      o.id_ = -1;
    }
    return *this;
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  hid_t id() const { return id_; }
  bool valid() const { return id_ >= 0; }
  void reset();
  // Gives the id up without closing it (the caller closes it).
  hid_t release() {
    const hid_t id = id_;
    id_ = -1;
    return id;
  }

 private:
  hid_t id_ = -1;
  herr_t (*closer_)(hid_t) = nullptr;
};

enum class Dtype { kF32, kF16, kI64, kF64 };

// One HDF5 file. Object paths are absolute ("/layers/0/wq").
class File {
 public:
  static File create(const std::string& path);  // truncates
  // Collective create over MPI_COMM_WORLD (parallel HDF5 builds only; see parallel_available).
  // Every metadata call is then collective: all ranks, same order, same values. Small datasets
  // (write_f32/write_i64/write_strings) take their data from rank 0.
  static File create_parallel(const std::string& path);
  static bool parallel_available();
  static File open_read(const std::string& path);
  static File open_rw(const std::string& path);  // an existing file, for adding attributes
  const std::string& path() const { return path_; }
  hid_t id() const { return h_.id(); }
  void close();

  bool exists(const std::string& obj) const;  // every link along the path
  void create_group(const std::string& obj);

  // Datasets: row-major, shape as given. Data is converted from the memory type to `file_type`.
  void write_f32(const std::string& obj, const std::vector<int64_t>& shape, const float* data,
                 Dtype file_type = Dtype::kF32);
  void write_i64(const std::string& obj, const std::vector<int64_t>& shape, const int64_t* data);
  void write_f64(const std::string& obj, const std::vector<int64_t>& shape, const double* data);
  void write_strings(const std::string& obj, const std::vector<std::string>& values);

  // Chunked 2-D dataset written in row blocks (for embeddings larger than memory wants).
  void create_rows(const std::string& obj, int64_t rows, int64_t cols, Dtype file_type);
  void create_vector_i64(const std::string& obj, int64_t n);
  // Writes rows [row0, row0 + nrows). Parallel files: every rank writes its own rows in one
  // collective call (nrows may be 0); serial files: a plain write (nothing when nrows is 0).
  void write_rows_collective(const std::string& obj, int64_t row0, int64_t nrows, int64_t cols,
                             const float* data);
  // The same from rows already in float16 (a float16 dataset; a GPU converted them).
  void write_f16_rows_collective(const std::string& obj, int64_t row0, int64_t nrows, int64_t cols,
                                 const uint16_t* data);
  void write_i64_rows_collective(const std::string& obj, int64_t row0, int64_t nrows,
                                 const int64_t* data);
  // Copies object `src_obj` of `src` (a group with everything under it) to `dst_obj` here.
  void copy_from(const File& src, const std::string& src_obj, const std::string& dst_obj);
  // Reserves disk blocks for `bytes` more of this file before copies fill it (fallocate with
  // FALLOC_FL_KEEP_SIZE: the size is unchanged; close() gives back what was not used). HDF5
  // 1.10's H5Ocopy crashes (exit 139) where the disk fills under it instead of failing; with
  // the room reserved it cannot fill. Throws SystemError ("disk full", the bytes needed and
  // free) where the room is not there, or the file-size limit (ulimit -f) is lower; false where the
  // file system cannot reserve (the copies go ahead unreserved).
  bool reserve(int64_t bytes);

  // Reading. shape() throws InputError when `obj` is missing.
  std::vector<int64_t> shape(const std::string& obj) const;
  bool is_float32(const std::string& obj) const;        // class FLOAT and 4 bytes
  int64_t storage_bytes(const std::string& obj) const;  // a dataset's bytes in the file; 0: none
  // "float16", "float32", "float64", "int64", "int32", ..., "string", "other"; "missing".
  std::string type_name(const std::string& obj) const;
  std::vector<float> read_f32(const std::string& obj) const;
  std::vector<double> read_f64(const std::string& obj) const;
  std::vector<int64_t> read_i64(const std::string& obj) const;
  // Elements [begin, begin + count) of a 1-D int64 dataset (a long one read piece by piece).
  std::vector<int64_t> read_i64_range(const std::string& obj, int64_t begin, int64_t count) const;
  // Elements [begin, begin + count) of a 1-D dataset of variable-length strings.
  std::vector<std::string> read_strings_range(const std::string& obj, int64_t begin,
                                              int64_t count) const;
  // The flat index of the first NaN or Inf of a float dataset (float16, 32 or 64, little-endian),
  // -1 when there is none. Read in its own type, about 16 M values at a time, and judged by the
  // exponent bits: no conversion, so a GB-sized embedding takes about its read time.
  int64_t first_nonfinite(const std::string& obj) const;
  std::vector<std::string> list(const std::string& group) const;  // child names, in name order

  // Attributes on an object ("/" for the root).
  void set_attr(const std::string& obj, const std::string& name, const std::string& value);
  void set_attr(const std::string& obj, const std::string& name, int64_t value);
  // Attributes of an object that has none of these names yet (a group just made), in order:
  // the object is opened once and nothing is looked up first. A value is a string or, where
  // `is_int`, the integer.
  struct NewAttr {
    const char* name;
    std::string text;
    int64_t number = 0;
    bool is_int = false;
  };
  void add_new_attrs(const std::string& obj, const std::vector<NewAttr>& attrs);
  bool has_attr(const std::string& obj, const std::string& name) const;
  std::string attr_string(const std::string& obj, const std::string& name) const;
  int64_t attr_int(const std::string& obj, const std::string& name) const;

 private:
  static File open_existing(const std::string& path, bool write);
  File(Handle h, std::string path, bool parallel = false)
      : h_(std::move(h)), path_(std::move(path)), parallel_(parallel) {}
  Handle h_;
  std::string path_;
  bool parallel_ = false;
  bool reserved_ = false;         // reserve() holds blocks past the end until close()
  std::set<std::string> groups_;  // groups known to exist (make_parents)

 public:
  bool parallel() const { return parallel_; }
  void make_parents(const std::string& obj);
  bool writes_data() const;  // false on ranks other than 0 of a parallel file
};

// IEEE 754 binary16 type for datasets (h5py reads it as numpy float16). Caller closes.
hid_t make_f16_type();
// Silences HDF5's own error stack printing once per process (errors are reported by us), and
// keeps HDF5 from installing its exit handler. Called before the first HDF5 call.
void quiet_errors();
// float -> binary16, round to nearest even (as C's cast), n values, F16C where the CPU has it:
// the conversion of float32 rows for a float16 dataset.
// Returns the index of the first value past float16's range (|x| >= 65520, stored as Inf), or -1.
int64_t float_to_f16(const float* src, uint16_t* dst, int64_t n);

// Whether the HDF5 file at `path` can be what a stopped sparsa run left while writing a file of
// `format` ("sparsa-embeddings" or "sparsa-model"): one HDF5 cannot open (cut short), one of that
// format, or one with no format attribute holding nothing but a /records group (an output being
// assembled) or nothing at all. A user's own HDF5 file is none of these.
bool is_sparsa_scratch(const std::string& path, const std::string& format);
// " is past float16's range ...: write --dtype f32", the end of the error for such a value.
extern const char* const f16_range_advice;
// A value past float16's range met while a float16 dataset is written: the message names the
// file and dataset; row, column and value let a caller name the record instead.
class F16RangeError : public NumericError {
 public:
  F16RangeError(const std::string& msg, int64_t at_row, int64_t at_column, float at_value)
      : NumericError(msg), row(at_row), column(at_column), value(at_value) {}
  int64_t row, column;
  float value;
};

}  // namespace sparsa::h5
