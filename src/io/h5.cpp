#include "io/h5.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string_view>

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif

#include "core/error.hpp"
#include "core/file_text.hpp"
#include "core/paths.hpp"

#ifdef SPARSA_HDF5_PARALLEL
#include <mpi.h>
#endif

namespace sparsa::h5 {

void Handle::reset() {
  if (id_ >= 0 && closer_) closer_(id_);
  id_ = -1;
}

void quiet_errors() {
  static std::once_flag once;
  std::call_once(once, [] {
    // No HDF5 clean-up at exit: every file is closed by its owner, and after a close that failed
    // (disk full) HDF5 1.10's exit handler crashed on the half-closed file (exit 139 instead of
    // the error and exit 1). Must come before any other HDF5 call.
    H5dont_atexit();
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  });
}

const char* const f16_range_advice =
    " is past float16's range (largest finite 65504; it would be stored as Inf): write "
    "--dtype f32";

namespace {

// float -> binary16, round to nearest even (as C's cast), n values; F16C where the CPU has it
// (the cast is a libgcc call, about 9 ns a value: 20 s for a genome's rows at d = 512).
void to_f16_scalar(const float* src, _Float16* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = (_Float16)src[i];
}
#if defined(__x86_64__)
__attribute__((target("avx,f16c"))) void to_f16_f16c(const float* src, _Float16* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(
        reinterpret_cast<__m128i*>(dst + i),
        _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  to_f16_scalar(src + i, dst + i, n - i);
}
#endif
// Converts, and returns the index of the first value that became Inf (a finite |x| >= 65520,
// past float16's range: an error for the caller, spec 2), or -1. The check reads each block's
// halves while they are in cache.
int64_t to_f16(const float* src, _Float16* dst, int64_t n) {
  constexpr int64_t kBlock = int64_t{1} << 20;
  int64_t first_inf = -1;
#if defined(__x86_64__)
  // F16C from CPUID (clang 14 has no "f16c" for __builtin_cpu_supports); AVX also checks the OS.
  static const bool f16c = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C) && __builtin_cpu_supports("avx");
  }();
#else
  constexpr bool f16c = false;
#endif
  // One block (a pooled row, a short read's rows): no thread team. A parallel region for every
  // record kept the team spinning between records: 15 cores busy for nothing on a GPU node.
#pragma omp parallel for schedule(static) if (n > kBlock)
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t m = std::min(kBlock, n - b);
#if defined(__x86_64__)
    if (f16c)
      to_f16_f16c(src + b, dst + b, m);
    else
#endif
      to_f16_scalar(src + b, dst + b, m);
    auto bits = [&](int64_t i) {  // the half's bits (memcpy: no aliasing of _Float16)
      uint16_t h;
      std::memcpy(&h, dst + b + i, sizeof h);
      return h;
    };
    uint16_t any = 0;  // branch-free scan: an Inf is 0x7C00 under the sign
    for (int64_t i = 0; i < m; ++i) any |= (uint16_t)((bits(i) & 0x7FFF) == 0x7C00);
    if (any)
      for (int64_t i = 0; i < m; ++i)
        if ((bits(i) & 0x7FFF) == 0x7C00 && std::isfinite(src[b + i])) {
#pragma omp critical(sparsa_f16_overflow)
          if (first_inf < 0 || b + i < first_inf) first_inf = b + i;
          break;
        }
  }
  return first_inf;
}

// " (the disk is full: ...)" when the file system holding `file` has (almost) no room left:
// HDF5 says only that a create or write failed, whichever object met the full disk first.
// Under a file-size limit (`ulimit -f`) a write past it fails (EFBIG) on a disk with room: the
// note gives the limit and the file's size instead.
std::string full_disk_note(const std::string& file) {
  std::string dir = std::filesystem::path(file).parent_path().string();
  if (dir.empty()) dir = ".";
  struct statvfs st {};
  if (statvfs(dir.c_str(), &st) == 0) {
    if (st.f_blocks == 0)  // /proc, /sys: not full, no storage at all
      return " (" + dir + " is on a file system that stores no files, like /proc or /sys)";
    const unsigned long long avail = (unsigned long long)st.f_bavail * st.f_frsize;
    if (avail < (1ull << 20))
      return " (disk full: " + std::to_string(avail / 1024) + " KB free in " + dir + ")";
  }
  if (const int64_t limit = file_size_limit(); limit >= 0) {  // a disk with room, then
    std::error_code ec;
    const auto size = std::filesystem::file_size(file, ec);
    if (!ec && (int64_t)size + (int64_t)(1 << 20) >= limit / 2)
      return " (" + file_size_limit_text(limit) + ", and the file has " +
             std::to_string(size >> 10) + " KB: raise it, e.g. `ulimit -f unlimited`)";
  }
  return "";
}

[[noreturn]] void fail(const std::string& file, const std::string& obj, const std::string& what) {
  // A failed read is not the disk's fullness; a write's "(disk full?)" becomes the fact.
  std::string w = what,
              note = what.find("read failed") == std::string::npos ? full_disk_note(file) : "";
  for (const std::string_view guess :
       {" (disk full?)", " (is the folder writable, or the disk full?)"})
    if (const size_t q = w.find(guess); !note.empty() && q != std::string::npos)
      w.erase(q, guess.size());
  throw SystemError(file + ": " + (obj.empty() ? "" : obj + ": ") + w + note);
}

hid_t check(hid_t id, const std::string& file, const std::string& obj, const char* what) {
  if (id < 0) fail(file, obj, std::string("HDF5 ") + what + " failed");
  return id;
}

Handle file_type(Dtype t) {
  if (t == Dtype::kF16) return Handle(make_f16_type(), H5Tclose);
  return Handle(H5Tcopy(t == Dtype::kI64   ? H5T_STD_I64LE
                        : t == Dtype::kF64 ? H5T_IEEE_F64LE
                                           : H5T_IEEE_F32LE),
                H5Tclose);
}

// Creation properties of a dataset of `bytes` bytes: small ones in a serial file are compact
// (their data in the object header: no separate allocation or chunk index, which is most of the
// cost of a short record's datasets); `chunk` (null: none) otherwise. Parallel files keep the
// default layouts (collective writes).
Handle dataset_plist(bool parallel, int64_t bytes, int rank, const hsize_t* chunk) {
  Handle dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  // No creation and modification times in the object header: the same contents make the same
  // bytes (a checkpoint's model_sha256 depends on its seed and config alone).
  H5Pset_obj_track_times(dcpl.id(), 0);
  if (!parallel && bytes > 0 && bytes <= 16384)
    H5Pset_layout(dcpl.id(), H5D_COMPACT);
  else if (chunk)
    H5Pset_chunk(dcpl.id(), rank, chunk);
  return dcpl;
}
int64_t dtype_size(Dtype t) {
  return t == Dtype::kF16 ? 2 : (t == Dtype::kI64 || t == Dtype::kF64) ? 8 : 4;
}

Handle str_type() {
  Handle t(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(t.id(), H5T_VARIABLE);
  H5Tset_cset(t.id(), H5T_CSET_UTF8);
  return t;
}

}  // namespace

int64_t float_to_f16(const float* src, uint16_t* dst, int64_t n) {
  return to_f16(src, reinterpret_cast<_Float16*>(dst), n);
}

hid_t make_f16_type() {
  hid_t t = H5Tcopy(H5T_IEEE_F32LE);
  // binary16: sign bit 15, exponent bits 10..14 (bias 15), mantissa bits 0..9.
  H5Tset_fields(t, 15, 10, 5, 0, 10);
  H5Tset_size(t, 2);
  H5Tset_precision(t, 16);
  H5Tset_ebias(t, 15);
  return t;
}

// Every file is written in HDF5 1.8's object format: a group's links and a small object's
// attributes live in its object header, not in a B-tree and a heap of their own, so a file of
// many short records is about half the size (bench/NOTES.md, session 17). HDF5 1.8 or later reads
// it (h5py, R's hdf5r, MATLAB 2011+). The root group keeps no times either (as create_group's).
static Handle file_create_plist() {
  Handle fcpl(H5Pcreate(H5P_FILE_CREATE), H5Pclose);
  H5Pset_obj_track_times(fcpl.id(), 0);
  return fcpl;
}
static Handle file_access_plist() {
  Handle fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
  H5Pset_libver_bounds(fapl.id(), H5F_LIBVER_V18, H5F_LIBVER_V18);
  return fapl;
}

File File::create(const std::string& path) {
  quiet_errors();
  Handle fcpl = file_create_plist(), fapl = file_access_plist();
  hid_t id = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, fcpl.id(), fapl.id());
  if (id < 0) fail(path, "", "cannot create HDF5 file (is the folder writable, or the disk full?)");
  return File(Handle(id, H5Fclose), path);
}

bool File::parallel_available() {
#ifdef SPARSA_HDF5_PARALLEL
  int init = 0;
  MPI_Initialized(&init);
  return init != 0;
#else
  return false;
#endif
}

// The name MPI-IO opens `path` by. ROMIO takes the text before a ':' for a file-system type
// ("ufs:", "lustre:") and refuses one it does not know, so OUT/chr1:1-100.h5 (or a folder
// holding ':') could not be written in parallel: such a path gets the prefix of the generic
// POSIX driver, which ROMIO always has. Open MPI's OMPIO (chosen by OMPI_MCA_io) takes the
// path as it is.
#ifdef SPARSA_HDF5_PARALLEL
static std::string mpi_io_name(const std::string& path) {
  if (path.find(':') == std::string::npos) return path;
#if defined(OPEN_MPI) && OPEN_MPI
  // (ROMIO: named, or OMPIO excluded; "io = romio321" in an mca-params.conf is not seen here)
  const std::string_view io = std::getenv("OMPI_MCA_io") ? std::getenv("OMPI_MCA_io") : "";
  if (io.substr(0, 5) != "romio" && io != "^ompio") return path;
#endif
  return "ufs:" + path;
}
#endif

File File::create_parallel(const std::string& path) {
#ifdef SPARSA_HDF5_PARALLEL
  quiet_errors();
  Handle fcpl = file_create_plist(), fapl = file_access_plist();
  H5Pset_fapl_mpio(fapl.id(), MPI_COMM_WORLD, MPI_INFO_NULL);
  hid_t id = H5Fcreate(mpi_io_name(path).c_str(), H5F_ACC_TRUNC, fcpl.id(), fapl.id());
  if (id < 0)
    fail(path, "",
         std::string("cannot create HDF5 file in parallel (is the folder writable?") +
             (path.find(':') != std::string::npos
                  ? " A ':' in the path: ROMIO, chosen other than by OMPI_MCA_io=romio..., reads "
                    "the text before it as a file-system type; write the output to a path "
                    "without ':'"
                  : "") +
             ")");
  return File(Handle(id, H5Fclose), path, true);
#else
  throw SystemError(path + ": this build's HDF5 is serial; no parallel create");
#endif
}

bool File::writes_data() const {
#ifdef SPARSA_HDF5_PARALLEL
  if (!parallel_) return true;
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank == 0;
#else
  return true;
#endif
}

void File::copy_from(const File& src, const std::string& src_obj, const std::string& dst_obj) {
  make_parents(dst_obj);
  if (H5Ocopy(src.id(), src_obj.c_str(), h_.id(), dst_obj.c_str(), H5P_DEFAULT, H5P_DEFAULT) < 0)
    fail(path_, dst_obj, "copy from " + src.path() + " failed (disk full?)");
}

bool File::reserve(int64_t bytes) {
  if (bytes <= 0) return true;
  const int fd = ::open(path_.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  struct stat st {};
  int err = ::fstat(fd, &st) == 0 ? 0 : errno;
  // fallocate(FALLOC_FL_KEEP_SIZE) is not held to the file-size limit, the writes are: a copy
  // that met it in H5Ocopy crashed HDF5 1.10 as a full disk did.
  if (const int64_t limit = file_size_limit(); !err && limit >= 0 && st.st_size + bytes > limit) {
    ::close(fd);
    throw SystemError(path_ + ": the file needs about " + std::to_string(bytes >> 10) +
                      " KB, but " + file_size_limit_text(limit) +
                      " (raise it, e.g. `ulimit -f unlimited`)");
  }
  if (!err && ::fallocate(fd, FALLOC_FL_KEEP_SIZE, st.st_size, bytes) != 0) {
    err = errno;
    (void)::ftruncate(fd, st.st_size);  // blocks a failed fallocate kept (ext4, XFS) go back
  }
  ::close(fd);
  if (err == ENOSPC || err == EDQUOT) {
    std::string dir = std::filesystem::path(path_).parent_path().string();
    if (dir.empty()) dir = ".";
    struct statvfs sv {};
    const unsigned long long avail =
        statvfs(dir.c_str(), &sv) == 0 ? (unsigned long long)sv.f_bavail * sv.f_frsize : 0;
    throw SystemError(path_ + ": disk full: the file needs about " + std::to_string(bytes >> 10) +
                      " KB, " + std::to_string(avail >> 10) + " KB are free in " + dir +
                      (err == EDQUOT ? " (or the quota is reached)" : ""));
  }
  reserved_ = !err;
  return reserved_;
}

// A transfer property list: collective for parallel files, default otherwise.
static Handle transfer_plist(bool parallel) {
#ifdef SPARSA_HDF5_PARALLEL
  if (parallel) {
    Handle dxpl(H5Pcreate(H5P_DATASET_XFER), H5Pclose);
    H5Pset_dxpl_mpio(dxpl.id(), H5FD_MPIO_COLLECTIVE);
    return dxpl;
  }
#endif
  (void)parallel;
  return Handle();
}

File File::open_existing(const std::string& path, bool write) {
  quiet_errors();
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    throw InputError(path + ": a folder, not an HDF5 file");
  // (A file that exists but cannot be opened: said as the system says it, not as a bad file.)
  // Its first bytes say what it is where it is no HDF5 file (an input given for a sparsa file).
  std::string head(8, '\0');
  if (std::FILE* f = std::fopen(path.c_str(), "rb")) {
    head.resize(std::fread(head.data(), 1, head.size(), f));
    std::fclose(f);
  } else if (errno != ENOENT) {
    throw InputError(path + ": cannot read: " + std::strerror(errno));
  }
  if (H5Fis_hdf5(path.c_str()) <= 0) {
    std::string what;
    if (head.starts_with(">"))
      what = " (it begins as FASTA text does: an input, not a sparsa file)";
    else if (head.starts_with("@"))
      what = " (it begins as FASTQ text does: an input, not a sparsa file)";
    else if (head.starts_with("\x1f\x8b"))
      what = " (gzip-compressed data: an input, not a sparsa file)";
    else if (head.starts_with("PK\x03\x04"))  // PyTorch's torch.save writes a zip archive
      what =
          " (a zip archive, as torch.save writes a .pt file: a checkpoint is HDF5; export the "
          "weights with h5py in the layout docs/formats.md gives)";
    else if (head.size() >= 2 && (unsigned char)head[0] == 0x80 && head[1] >= 2 && head[1] <= 5)
      what =
          " (Python pickle data, as an older torch.save writes: a checkpoint is HDF5; export "
          "the weights with h5py in the layout docs/formats.md gives)";
    else if (const OtherCompression z = other_compression(head); *z.name)
      what = std::string(" (") + z.name + "-compressed data: an input, not a sparsa file)";
    else if (head.empty())
      what = " (it is empty)";
    throw InputError(path + ": not an HDF5 file, or it cannot be read" + what);
  }
  hid_t id = H5Fopen(path.c_str(), write ? H5F_ACC_RDWR : H5F_ACC_RDONLY, H5P_DEFAULT);
  if (id < 0)
    throw InputError(path + (write ? ": cannot open HDF5 file for writing"
                                   : ": cannot open HDF5 file (truncated or damaged? its "
                                     "signature is HDF5's, but its structure cannot be read)"));
  return File(Handle(id, H5Fclose), path);
}
File File::open_read(const std::string& path) { return open_existing(path, false); }
File File::open_rw(const std::string& path) { return open_existing(path, true); }

// H5Fclose is called once, whatever it returns: after a failed close (a flush that found the disk
// full) the id is gone or unusable, and a second H5Fclose from the destructor crashed in HDF5.
void File::close() {
  if (!h_.valid()) return;
  const bool closed = H5Fclose(h_.release()) >= 0;
  // Blocks reserved past the end and not used go back: a truncate to the file's own size frees
  // them (ext4, XFS and tmpfs drop the blocks past the new end even where the size is the same).
  if (reserved_) {
    reserved_ = false;
    std::error_code ec;
    const auto size = std::filesystem::file_size(path_, ec);
    if (!ec) (void)::truncate(path_.c_str(), (off_t)size);
  }
  if (!closed) fail(path_, "", "closing the file failed (disk full?)");
}

bool File::exists(const std::string& obj) const {
  if (obj == "/") return true;
  std::string prefix;
  size_t start = 1;
  while (start <= obj.size()) {
    size_t next = obj.find('/', start);
    if (next == std::string::npos) next = obj.size();
    prefix = obj.substr(0, next);
    if (H5Lexists(h_.id(), prefix.c_str(), H5P_DEFAULT) <= 0) return false;
    start = next + 1;
  }
  return true;
}

void File::create_group(const std::string& obj) {
  make_parents(obj);
  Handle gcpl(H5Pcreate(H5P_GROUP_CREATE), H5Pclose);
  H5Pset_obj_track_times(gcpl.id(), 0);  // as dataset_plist
  // Up to 12 attributes in the object header (HDF5's default is 8: a record's 9th, a BED
  // region's name, would move them all to a heap of their own).
  H5Pset_attr_phase_change(gcpl.id(), 12, 10);
  Handle g(check(H5Gcreate2(h_.id(), obj.c_str(), H5P_DEFAULT, gcpl.id(), H5P_DEFAULT), path_, obj,
                 "group create"),
           H5Gclose);
  groups_.insert(obj);
}

// The groups above obj, made where missing (HDF5's own intermediate groups would keep
// creation times: a checkpoint's bytes would then depend on the clock).
void File::make_parents(const std::string& obj) {
  for (size_t slash = obj.find('/', 1); slash != std::string::npos;
       slash = obj.find('/', slash + 1)) {
    const std::string parent = obj.substr(0, slash);
    if (groups_.count(parent)) continue;
    if (H5Lexists(h_.id(), parent.c_str(), H5P_DEFAULT) > 0)
      groups_.insert(parent);
    else
      create_group(parent);
  }
}

// `conversion`: the type-conversion buffer's bytes (0: HDF5's default, 1 MB). HDF5 1.10 takes
// that buffer and a background one from its free lists, zeroed, at every write that converts
// (variable-length strings): 2 MB of page faults and memset a write, ~3 ms for a record's two
// timestamp datasets of two rows (a panel of 1,000 short series took 6 s to write, 0.2 s now).
static herr_t write_whole(const File& f, hid_t ds, hid_t mem_type, const void* data,
                          size_t conversion = 0) {
  Handle dxpl = transfer_plist(f.parallel());
  if (conversion > 0) {
    if (dxpl.id() < 0) dxpl = Handle(H5Pcreate(H5P_DATASET_XFER), H5Pclose);
    H5Pset_buffer(dxpl.id(), conversion, nullptr, nullptr);
  }
  const hid_t xfer = dxpl.id() < 0 ? H5P_DEFAULT : dxpl.id();
  if (!f.parallel()) return H5Dwrite(ds, mem_type, H5S_ALL, H5S_ALL, xfer, data);
  // Collective: rank 0 writes everything, the others select nothing.
  Handle fspace(H5Dget_space(ds), H5Sclose);
  if (!f.writes_data()) H5Sselect_none(fspace.id());
  Handle mspace(H5Scopy(fspace.id()), H5Sclose);
  return H5Dwrite(ds, mem_type, mspace.id(), fspace.id(), xfer, data);
}

static void write_any(File& f, const std::string& obj, const std::vector<int64_t>& shape,
                      const void* data, Dtype ft, hid_t mt) {
  std::vector<hsize_t> dims(shape.begin(), shape.end());
  Handle space(H5Screate_simple((int)dims.size(), dims.data(), nullptr), H5Sclose);
  Handle ftype = file_type(ft);
  int64_t bytes = dtype_size(ft);
  for (int64_t n : shape) bytes *= n;
  Handle dcpl = dataset_plist(f.parallel(), bytes, (int)dims.size(), nullptr);
  f.make_parents(obj);
  Handle ds(check(H5Dcreate2(f.id(), obj.c_str(), ftype.id(), space.id(), H5P_DEFAULT, dcpl.id(),
                             H5P_DEFAULT),
                  f.path(), obj, "dataset create"),
            H5Dclose);
  if (write_whole(f, ds.id(), mt, data) < 0) fail(f.path(), obj, "HDF5 write failed (disk full?)");
}

void File::write_f32(const std::string& obj, const std::vector<int64_t>& shape, const float* data,
                     Dtype ft) {
  write_any(*this, obj, shape, data, ft, H5T_NATIVE_FLOAT);
}

void File::write_i64(const std::string& obj, const std::vector<int64_t>& shape,
                     const int64_t* data) {
  write_any(*this, obj, shape, data, Dtype::kI64, H5T_NATIVE_INT64);
}

void File::write_f64(const std::string& obj, const std::vector<int64_t>& shape,
                     const double* data) {
  write_any(*this, obj, shape, data, Dtype::kF64, H5T_NATIVE_DOUBLE);
}

void File::write_strings(const std::string& obj, const std::vector<std::string>& values) {
  std::vector<const char*> ptrs(values.size());
  for (size_t i = 0; i < values.size(); ++i) ptrs[i] = values[i].c_str();
  hsize_t n = values.size();
  Handle space(H5Screate_simple(1, &n, nullptr), H5Sclose);
  Handle t = str_type();
  Handle dcpl = dataset_plist(parallel_, 0, 1, nullptr);
  make_parents(obj);
  Handle ds(check(H5Dcreate2(h_.id(), obj.c_str(), t.id(), space.id(), H5P_DEFAULT, dcpl.id(),
                             H5P_DEFAULT),
                  path_, obj, "dataset create"),
            H5Dclose);
  // (a buffer for the whole dataset, 16 bytes a string in the file, up to HDF5's 1 MB: HDF5
  // 1.10 takes the size asked for at once, and a background buffer as large)
  if (n > 0 && write_whole(*this, ds.id(), t.id(), ptrs.data(),
                           std::clamp<size_t>(16 * n + 16, 4096, size_t{1} << 20)) < 0)
    fail(path_, obj, "HDF5 write failed (disk full?)");
}

void File::create_vector_i64(const std::string& obj, int64_t n) {
  hsize_t dims[1] = {(hsize_t)n};
  Handle space(H5Screate_simple(1, dims, nullptr), H5Sclose);
  Handle ftype = file_type(Dtype::kI64);
  Handle dcpl = dataset_plist(parallel_, n * 8, 1, nullptr);
  make_parents(obj);
  Handle ds(check(H5Dcreate2(h_.id(), obj.c_str(), ftype.id(), space.id(), H5P_DEFAULT, dcpl.id(),
                             H5P_DEFAULT),
                  path_, obj, "dataset create"),
            H5Dclose);
}

void File::create_rows(const std::string& obj, int64_t rows, int64_t cols, Dtype ft) {
  hsize_t dims[2] = {(hsize_t)rows, (hsize_t)cols};
  Handle space(H5Screate_simple(2, dims, nullptr), H5Sclose);
  hsize_t chunk[2] = {
      (hsize_t)std::min<int64_t>(rows, std::max<int64_t>(1, 65536 / std::max<int64_t>(1, cols))),
      (hsize_t)cols};
  Handle dcpl =
      dataset_plist(parallel_, rows * cols * dtype_size(ft), 2, rows > 0 ? chunk : nullptr);
  Handle ftype = file_type(ft);
  make_parents(obj);
  Handle ds(check(H5Dcreate2(h_.id(), obj.c_str(), ftype.id(), space.id(), H5P_DEFAULT, dcpl.id(),
                             H5P_DEFAULT),
                  path_, obj, "dataset create"),
            H5Dclose);
}

// Writes rows [row0, row0 + nrows) of a 1-D or 2-D dataset; collective when `collective`.
// data: int64 (!is_float), float32 (converted to the dataset's type), or with `f16` the float16
// bits of a float16 dataset, written as they are.
static void write_slab(const File& f, const std::string& obj, int64_t row0, int64_t nrows,
                       int64_t cols, const void* data, bool is_float, bool collective,
                       bool f16 = false) {
  Handle ds(check(H5Dopen2(f.id(), obj.c_str(), H5P_DEFAULT), f.path(), obj, "dataset open"),
            H5Dclose);
  Handle fspace(H5Dget_space(ds.id()), H5Sclose);
  const int rank = H5Sget_simple_extent_ndims(fspace.id());
  hsize_t start[2] = {(hsize_t)row0, 0}, count[2] = {(hsize_t)nrows, (hsize_t)cols};
  hsize_t mcount[2] = {(hsize_t)std::max<int64_t>(nrows, 1), (hsize_t)cols};
  Handle mspace(H5Screate_simple(rank, mcount, nullptr), H5Sclose);
  if (nrows > 0) {
    H5Sselect_hyperslab(fspace.id(), H5S_SELECT_SET, start, nullptr, count, nullptr);
  } else {
    H5Sselect_none(fspace.id());
    H5Sselect_none(mspace.id());
  }
  Handle dxpl = transfer_plist(collective);
  const hid_t xfer = dxpl.valid() ? dxpl.id() : H5P_DEFAULT;
  Handle ftype(H5Dget_type(ds.id()), H5Tclose);
  herr_t rc;
  if (!is_float) {
    rc = H5Dwrite(ds.id(), H5T_NATIVE_INT64, mspace.id(), fspace.id(), xfer, data);
  } else if (f16) {
    if (H5Tget_size(ftype.id()) != 2) fail(f.path(), obj, "float16 rows for a wider dataset");
    rc = H5Dwrite(ds.id(), ftype.id(), mspace.id(), fspace.id(), xfer, data);
  } else if (H5Tget_size(ftype.id()) == 2) {
    const float* src = static_cast<const float*>(data);
    // NOTE: float -> binary16 is converted here (round to nearest even, as C's cast does)
    // rather than by HDF5's soft converter, so the rounding is the one the docs promise.
    // Not value-initialized: a genome's rows are GBs, and zeroing them first costs a pass.
    std::unique_ptr<_Float16[]> half(new _Float16[std::max<int64_t>(nrows, 1) * cols]);
    if (const int64_t bad = to_f16(src, half.get(), nrows * cols); bad >= 0)
      throw F16RangeError(f.path() + ": " + obj + ": row " + std::to_string(row0 + bad / cols) +
                              ", column " + std::to_string(bad % cols) + ": " +
                              std::to_string(src[bad]) + f16_range_advice,
                          row0 + bad / cols, bad % cols, src[bad]);
    rc = H5Dwrite(ds.id(), ftype.id(), mspace.id(), fspace.id(), xfer, half.get());
  } else {
    rc = H5Dwrite(ds.id(), H5T_NATIVE_FLOAT, mspace.id(), fspace.id(), xfer, data);
  }
  if (rc < 0) fail(f.path(), obj, "HDF5 write failed (disk full?)");
}

void File::write_rows_collective(const std::string& obj, int64_t row0, int64_t nrows, int64_t cols,
                                 const float* data) {
  if (nrows > 0 || parallel_) write_slab(*this, obj, row0, nrows, cols, data, true, parallel_);
}

void File::write_f16_rows_collective(const std::string& obj, int64_t row0, int64_t nrows,
                                     int64_t cols, const uint16_t* data) {
  if (nrows > 0 || parallel_)
    write_slab(*this, obj, row0, nrows, cols, data, true, parallel_, true);
}

void File::write_i64_rows_collective(const std::string& obj, int64_t row0, int64_t nrows,
                                     const int64_t* data) {
  if (nrows > 0 || parallel_) write_slab(*this, obj, row0, nrows, 1, data, false, parallel_);
}

std::vector<int64_t> File::shape(const std::string& obj) const {
  if (!exists(obj)) throw InputError(path_ + ": dataset " + obj + " is missing");
  Handle ds(H5Dopen2(h_.id(), obj.c_str(), H5P_DEFAULT), H5Dclose);
  if (!ds.valid()) throw InputError(path_ + ": " + obj + " is not a dataset");
  Handle sp(H5Dget_space(ds.id()), H5Sclose);
  int rank = H5Sget_simple_extent_ndims(sp.id());
  std::vector<hsize_t> dims(std::max(rank, 0));
  H5Sget_simple_extent_dims(sp.id(), dims.data(), nullptr);
  return std::vector<int64_t>(dims.begin(), dims.end());
}

bool File::is_float32(const std::string& obj) const { return type_name(obj) == "float32"; }

int64_t File::storage_bytes(const std::string& obj) const {
  if (!exists(obj)) return 0;
  Handle ds(H5Dopen2(h_.id(), obj.c_str(), H5P_DEFAULT), H5Dclose);
  return ds.valid() ? (int64_t)H5Dget_storage_size(ds.id()) : 0;
}

std::string File::type_name(const std::string& obj) const {
  Handle ds(H5Dopen2(h_.id(), obj.c_str(), H5P_DEFAULT), H5Dclose);
  if (!ds.valid()) return "missing";
  Handle t(H5Dget_type(ds.id()), H5Tclose);
  const size_t size = H5Tget_size(t.id());
  switch (H5Tget_class(t.id())) {
    case H5T_FLOAT:
      return size == 2 ? "float16" : size == 4 ? "float32" : size == 8 ? "float64" : "float";
    case H5T_INTEGER:
      return "int" + std::to_string(8 * size);
    case H5T_STRING:
      return "string";
    default:
      return "other";
  }
}

static void read_any(const File& f, const std::string& obj, hid_t mt, void* out) {
  Handle ds(H5Dopen2(f.id(), obj.c_str(), H5P_DEFAULT), H5Dclose);
  if (!ds.valid()) throw InputError(f.path() + ": dataset " + obj + " is missing");
  if (H5Dread(ds.id(), mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, out) < 0)
    throw InputError(f.path() + ": " + obj + ": HDF5 read failed (corrupt file?)");
}

static int64_t n_elems(const std::vector<int64_t>& s) {
  int64_t n = 1;
  for (auto v : s) n *= v;
  return n;
}

std::vector<float> File::read_f32(const std::string& obj) const {
  std::vector<float> v(n_elems(shape(obj)));
  if (!v.empty()) read_any(*this, obj, H5T_NATIVE_FLOAT, v.data());
  return v;
}

std::vector<double> File::read_f64(const std::string& obj) const {
  std::vector<double> v(n_elems(shape(obj)));
  if (!v.empty()) read_any(*this, obj, H5T_NATIVE_DOUBLE, v.data());
  return v;
}

std::vector<int64_t> File::read_i64(const std::string& obj) const {
  std::vector<int64_t> v(n_elems(shape(obj)));
  if (!v.empty()) read_any(*this, obj, H5T_NATIVE_INT64, v.data());
  return v;
}

int64_t File::first_nonfinite(const std::string& obj) const {
  Handle ds(H5Dopen2(h_.id(), obj.c_str(), H5P_DEFAULT), H5Dclose);
  if (!ds.valid()) throw InputError(path_ + ": dataset " + obj + " is missing");
  Handle t(H5Dget_type(ds.id()), H5Tclose);
  const size_t size = H5Tget_size(t.id());
  if (H5Tget_class(t.id()) != H5T_FLOAT || H5Tget_order(t.id()) != H5T_ORDER_LE ||
      (size != 2 && size != 4 && size != 8))
    throw InputError(path_ + ": " + obj +
                     " is not a little-endian float16, float32 or float64 dataset");
  Handle mt(H5Tcopy(t.id()), H5Tclose);  // the file's own type: the bytes as stored
  Handle fs(H5Dget_space(ds.id()), H5Sclose);
  const int rank = H5Sget_simple_extent_ndims(fs.id());
  if (rank < 1 || rank > 2) throw InputError(path_ + ": " + obj + " is not 1-D or 2-D");
  hsize_t dims[2] = {1, 1};
  H5Sget_simple_extent_dims(fs.id(), dims, nullptr);
  const hsize_t cols = rank == 2 ? dims[1] : 1;
  if (dims[0] == 0 || cols == 0) return -1;
  const hsize_t step = std::max<hsize_t>(1, (hsize_t{16} << 20) / cols);  // rows a read
  std::vector<uint8_t> buf(std::min(step, dims[0]) * cols * size);
  // A value is NaN or Inf when its exponent bits are all ones.
  const uint64_t mask = size == 2 ? 0x7C00u : size == 4 ? 0x7F800000u : 0x7FF0000000000000ull;
  for (hsize_t r0 = 0; r0 < dims[0]; r0 += step) {
    const hsize_t rows = std::min(step, dims[0] - r0);
    const hsize_t start[2] = {r0, 0}, count[2] = {rows, cols};
    Handle ms(H5Screate_simple(rank, count, nullptr), H5Sclose);
    if (H5Sselect_hyperslab(fs.id(), H5S_SELECT_SET, start, nullptr, count, nullptr) < 0 ||
        H5Dread(ds.id(), mt.id(), ms.id(), fs.id(), H5P_DEFAULT, buf.data()) < 0)
      throw InputError(path_ + ": " + obj + ": HDF5 read of rows " + std::to_string(r0) + ".." +
                       std::to_string(r0 + rows) + " failed (corrupt file?)");
    const int64_t n = (int64_t)(rows * cols);
    for (int64_t i = 0; i < n; ++i) {
      uint64_t bits = 0;
      std::memcpy(&bits, buf.data() + i * size, size);
      if ((bits & mask) == mask) return (int64_t)(r0 * cols) + i;
    }
  }
  return -1;
}

bool is_sparsa_scratch(const std::string& path, const std::string& format) {
  std::optional<File> f;
  try {
    f.emplace(File::open_read(path));
  } catch (const Error&) {
    return true;  // (a file cut short by the crash: HDF5 cannot open it)
  }
  try {
    if (f->has_attr("/", "format")) return f->attr_string("/", "format") == format;
    for (const std::string& name : f->list("/"))
      if (name != "records") return false;
    return true;
  } catch (const Error&) {
    return false;  // (a format attribute that is not text: not one sparsa wrote)
  }
}

std::vector<int64_t> File::read_i64_range(const std::string& obj, int64_t begin,
                                          int64_t count) const {
  std::vector<int64_t> v(std::max<int64_t>(count, 0));
  if (v.empty()) return v;
  Handle ds(H5Dopen2(h_.id(), obj.c_str(), H5P_DEFAULT), H5Dclose);
  if (!ds.valid()) throw InputError(path_ + ": dataset " + obj + " is missing");
  Handle fs(H5Dget_space(ds.id()), H5Sclose);
  const hsize_t start[1] = {(hsize_t)begin}, n[1] = {(hsize_t)count};
  Handle ms(H5Screate_simple(1, n, nullptr), H5Sclose);
  if (H5Sget_simple_extent_ndims(fs.id()) != 1 ||
      H5Sselect_hyperslab(fs.id(), H5S_SELECT_SET, start, nullptr, n, nullptr) < 0 ||
      H5Dread(ds.id(), H5T_NATIVE_INT64, ms.id(), fs.id(), H5P_DEFAULT, v.data()) < 0)
    throw InputError(path_ + ": " + obj + ": HDF5 read of elements " + std::to_string(begin) +
                     ".." + std::to_string(begin + count) + " failed (corrupt file?)");
  return v;
}

std::vector<std::string> File::read_strings_range(const std::string& obj, int64_t begin,
                                                  int64_t count) const {
  std::vector<std::string> out;
  if (count <= 0) return out;
  Handle ds(H5Dopen2(h_.id(), obj.c_str(), H5P_DEFAULT), H5Dclose);
  if (!ds.valid()) throw InputError(path_ + ": dataset " + obj + " is missing");
  Handle fs(H5Dget_space(ds.id()), H5Sclose);
  const hsize_t start[1] = {(hsize_t)begin}, n[1] = {(hsize_t)count};
  Handle ms(H5Screate_simple(1, n, nullptr), H5Sclose);
  Handle t = str_type();
  std::vector<char*> ptrs(count, nullptr);
  if (H5Sget_simple_extent_ndims(fs.id()) != 1 ||
      H5Sselect_hyperslab(fs.id(), H5S_SELECT_SET, start, nullptr, n, nullptr) < 0 ||
      H5Dread(ds.id(), t.id(), ms.id(), fs.id(), H5P_DEFAULT, ptrs.data()) < 0)
    throw InputError(path_ + ": " + obj + ": HDF5 read of elements " + std::to_string(begin) +
                     ".." + std::to_string(begin + count) + " failed (not text, or corrupt?)");
  for (char* p : ptrs) out.emplace_back(p ? p : "");
  H5Dvlen_reclaim(t.id(), ms.id(), H5P_DEFAULT, ptrs.data());
  return out;
}

std::vector<std::string> File::list(const std::string& group) const {
  std::vector<std::string> out;
  if (!exists(group)) return out;
#if H5_VERSION_GE(1, 12, 0)
  using LinkInfo = H5L_info2_t;
#else
  using LinkInfo = H5L_info_t;
#endif
  auto cb = [](hid_t, const char* name, const LinkInfo*, void* data) -> herr_t {
    static_cast<std::vector<std::string>*>(data)->push_back(name);
    return 0;
  };
  H5Literate_by_name(h_.id(), group.c_str(), H5_INDEX_NAME, H5_ITER_INC, nullptr, cb, &out,
                     H5P_DEFAULT);
  return out;
}

// An attribute that exists already is replaced (setting one twice is not an error).
static void drop_attr(hid_t file, const std::string& obj, const std::string& name) {
  if (H5Aexists_by_name(file, obj.c_str(), name.c_str(), H5P_DEFAULT) > 0)
    H5Adelete_by_name(file, obj.c_str(), name.c_str(), H5P_DEFAULT);
}

void File::set_attr(const std::string& obj, const std::string& name, const std::string& value) {
  drop_attr(h_.id(), obj, name);
  add_new_attrs(obj, {{name.c_str(), value}});
}

void File::set_attr(const std::string& obj, const std::string& name, int64_t value) {
  drop_attr(h_.id(), obj, name);
  add_new_attrs(obj, {{name.c_str(), "", value, true}});
}

void File::add_new_attrs(const std::string& obj, const std::vector<NewAttr>& attrs) {
  Handle o(check(H5Oopen(h_.id(), obj.c_str(), H5P_DEFAULT), path_, obj, "object open"), H5Oclose);
  Handle t = str_type();
  Handle sp(H5Screate(H5S_SCALAR), H5Sclose);
  for (const NewAttr& at : attrs) {
    Handle a(check(H5Acreate2(o.id(), at.name, at.is_int ? H5T_STD_I64LE : t.id(), sp.id(),
                              H5P_DEFAULT, H5P_DEFAULT),
                   path_, obj, "attribute create"),
             H5Aclose);
    const char* p = at.text.c_str();
    if ((at.is_int ? H5Awrite(a.id(), H5T_NATIVE_INT64, &at.number)
                   : H5Awrite(a.id(), t.id(), &p)) < 0)
      fail(path_, obj, "attribute write failed");
  }
}

bool File::has_attr(const std::string& obj, const std::string& name) const {
  return exists(obj) && H5Aexists_by_name(h_.id(), obj.c_str(), name.c_str(), H5P_DEFAULT) > 0;
}

std::string File::attr_string(const std::string& obj, const std::string& name) const {
  if (!has_attr(obj, name))
    throw InputError(path_ + ": " + obj + ": attribute '" + name + "' is missing");
  Handle a(H5Aopen_by_name(h_.id(), obj.c_str(), name.c_str(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  Handle t(H5Aget_type(a.id()), H5Tclose);
  if (H5Tget_class(t.id()) != H5T_STRING)
    throw InputError(path_ + ": " + obj + ": attribute '" + name + "' is not a string");
  // Read as stored, in the file's own character set and padding: h5py writes str as
  // variable-length UTF-8, np.bytes_ as fixed-length ASCII without a terminator, and either may
  // be ASCII or UTF-8. A memory type of another set fails the read (ASCII <-> UTF-8 is not
  // converted), and a fixed NULLTERM one of the stored size dropped the last byte.
  Handle mt(H5Tcopy(t.id()), H5Tclose);
  if (H5Tis_variable_str(t.id()) > 0) {
    char* p = nullptr;
    if (H5Aread(a.id(), mt.id(), &p) < 0) fail(path_, obj, "attribute read failed");
    std::string s = p ? p : "";
    H5free_memory(p);
    return s;
  }
  const size_t n = H5Tget_size(t.id());
  std::string s(n, '\0');
  if (H5Aread(a.id(), mt.id(), s.data()) < 0) fail(path_, obj, "attribute read failed");
  s.resize(std::min(s.find('\0'), n));
  if (H5Tget_strpad(t.id()) == H5T_STR_SPACEPAD)  // (Fortran's padding)
    while (!s.empty() && s.back() == ' ') s.pop_back();
  return s;
}

int64_t File::attr_int(const std::string& obj, const std::string& name) const {
  if (!has_attr(obj, name))
    throw InputError(path_ + ": " + obj + ": attribute '" + name + "' is missing");
  Handle a(H5Aopen_by_name(h_.id(), obj.c_str(), name.c_str(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  Handle t(H5Aget_type(a.id()), H5Tclose);
  Handle sp(H5Aget_space(a.id()), H5Sclose);
  int64_t v = 0;
  // An integer scalar only: HDF5 would convert 1.7 to 1 (format_version, complete) silently.
  if (H5Tget_class(t.id()) != H5T_INTEGER || H5Sget_simple_extent_npoints(sp.id()) != 1 ||
      H5Aread(a.id(), H5T_NATIVE_INT64, &v) < 0)
    throw InputError(path_ + ": " + obj + ": attribute '" + name + "' is not an integer");
  return v;
}

}  // namespace sparsa::h5
