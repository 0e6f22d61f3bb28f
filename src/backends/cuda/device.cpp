#include "backends/cuda/device.hpp"

#include <mpi.h>
#include <nccl.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "backends/cuda/check.hpp"
#include "backends/cuda/cublaslt.hpp"
#include "core/env.hpp"
#include "dist/comm.hpp"
#include "kernels/elementwise/elementwise.hpp"

namespace sparsa::cuda {

namespace {
std::string rank_tag() {
  for (const char* v : {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID"})
    if (const char* r = std::getenv(v)) return std::string(" [rank ") + r + "]";
  return "";
}

// The bytes every DeviceBuffer of the process holds, against SPARSA_GPU_MEMORY.
std::atomic<int64_t> g_held{0};

// SPARSA_GPU_MEMORY=N[K|M|G]: the most bytes the process's DeviceBuffers may hold together, as if
// the GPU had no more (tests of the out-of-memory paths; a GPU shared with another job). 0: none.
int64_t gpu_memory_limit() { return env_bytes("SPARSA_GPU_MEMORY"); }
}  // namespace

void fail_cuda(cudaError_t e, const char* expr, const char* file, int line) {
  throw SystemError(std::string("CUDA error ") + cudaGetErrorName(e) + " (" +
                    cudaGetErrorString(e) + ") in " + expr + " at " + file + ":" +
                    std::to_string(line) + rank_tag());
}
void fail_cublas(cublasStatus_t s, const char* expr, const char* file, int line) {
  throw SystemError(std::string("cuBLASLt error ") + cublaslt().GetStatusName(s) + " (" +
                    cublaslt().GetStatusString(s) + ") in " + expr + " at " + file + ":" +
                    std::to_string(line) + rank_tag());
}

bool cuda_available(std::string* why) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    // The runtime says "driver version is insufficient" also where there is no driver at all.
    int drv = 0;
    if (why)
      *why =
          e == cudaErrorInsufficientDriver && cudaDriverGetVersion(&drv) == cudaSuccess && drv == 0
              ? std::string(
                    "no CUDA driver on this machine (no GPU, or its driver is not "
                    "installed)")
              : std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
    cudaGetLastError();  // clear the sticky-free error state
    return false;
  }
  if (n == 0) {
    if (why) *why = "no CUDA device";
    return false;
  }
  return true;
}

std::string version_info() {
  auto mm = [](int v) { return std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10); };
  int rt = 0, drv = 0, nccl = 0;
  std::string out = "runtime ";
  out += cudaRuntimeGetVersion(&rt) == cudaSuccess ? mm(rt) : "?";
  if (cudaDriverGetVersion(&drv) == cudaSuccess && drv > 0)
    out += ", driver " + mm(drv);
  else
    out += ", no CUDA driver on this machine";
  cudaGetLastError();
  try {
    out += ", cuBLASLt " + std::to_string(cublaslt().GetVersion());
  } catch (const Error& e) {
    out += ", cuBLASLt not loadable (" + std::string(e.what()) + ")";
  }
  if (ncclGetVersion(&nccl) == ncclSuccess)
    out += ", NCCL " + std::to_string(nccl / 10000) + "." + std::to_string(nccl / 100 % 100) + "." +
           std::to_string(nccl % 100);
  return out;
}

int node_local_rank() {
  if (const int r = sparsa::local_rank(); r >= 0) return r;
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  if (init && !fin) {
    int size = 1;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (size > 1) {
      MPI_Comm node;
      MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
      int r = 0;
      MPI_Comm_rank(node, &r);
      MPI_Comm_free(&node);
      return r;
    }
  }
  return 0;
}

int select_device(int device) {
  int n = 0;
  CUDA_OK(cudaGetDeviceCount(&n));
  if (n <= 0) throw SystemError("no CUDA device");
  if (device < 0) device = node_local_rank() % n;
  if (device >= n)
    throw ConfigError("CUDA device " + std::to_string(device) + " requested, " + std::to_string(n) +
                      " present");
  CUDA_OK(cudaSetDevice(device));
  return device;
}

std::string pci_bus_id(int device) {
  char id[32] = {};
  CUDA_OK(cudaDeviceGetPCIBusId(id, (int)sizeof id, device));
  return id;
}

void warm_up_device(bool alone) noexcept {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n <= 0) {
    cudaGetLastError();
    return;
  }
  int r = sparsa::local_rank();
  if (r < 0) {  // no launcher variable: only a lone process knows its device without MPI calls
    if (!alone) return;
    r = 0;
  }
  if (cudaSetDevice(r % n) != cudaSuccess || cudaFree(nullptr) != cudaSuccess) cudaGetLastError();
}

DeviceBuffer::DeviceBuffer(size_t bytes) { reserve(bytes); }
DeviceBuffer::~DeviceBuffer() {
  if (ptr_) {
    cudaFree(ptr_);
    g_held -= (int64_t)bytes_;
  }
}
DeviceBuffer::DeviceBuffer(DeviceBuffer&& o) noexcept
    : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    if (ptr_) {
      cudaFree(ptr_);
      g_held -= (int64_t)bytes_;
    }
    ptr_ = std::exchange(o.ptr_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
  }
  return *this;
}
void DeviceBuffer::reserve(size_t bytes) {
  if (bytes <= bytes_ && ptr_) return;
  if (ptr_) {  // freed first: after a throw below the buffer is empty, and not counted
    g_held -= (int64_t)std::exchange(bytes_, 0);
    CUDA_OK(cudaFree(std::exchange(ptr_, nullptr)));
  }
  // NOTE: at least 256 bytes so that an empty tensor still has a valid, aligned address.
  const size_t want = bytes < 256 ? 256 : bytes;
  if (const int64_t limit = gpu_memory_limit(); limit && g_held + (int64_t)want > limit)
    throw OutOfMemory("CUDA out of memory: " + std::to_string(want) + " bytes requested, " +
                          std::to_string(g_held.load()) + " held of SPARSA_GPU_MEMORY's " +
                          std::to_string(limit) + rank_tag(),
                      (long long)limit);
  const cudaError_t e = cudaMalloc(&ptr_, want);
  if (e != cudaSuccess) {
    cudaGetLastError();
    size_t fr = 0, tot = 0;
    cudaMemGetInfo(&fr, &tot);
    throw OutOfMemory("CUDA out of memory: " + std::to_string(want) + " bytes requested, " +
                          std::to_string(fr) + " free of " + std::to_string(tot) + rank_tag(),
                      (long long)tot);
  }
  bytes_ = want;
  g_held += (int64_t)want;
}

void copy_to_device(void* dst, const void* src, size_t bytes, cudaStream_t s) {
  if (!bytes) return;
  if (s)
    CUDA_OK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, s));
  else
    CUDA_OK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}
void copy_to_host(void* dst, const void* src, size_t bytes, cudaStream_t s) {
  if (!bytes) return;
  if (s)
    CUDA_OK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, s));
  else
    CUDA_OK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}
HostStaging::~HostStaging() {
  for (int i = 0; i < 2; ++i) {
    if (done_[i]) cudaEventSynchronize(static_cast<cudaEvent_t>(done_[i]));
    if (buf_[i]) cudaFreeHost(buf_[i]);
    if (done_[i]) cudaEventDestroy(static_cast<cudaEvent_t>(done_[i]));
    if (dev_[i]) cudaFree(dev_[i]);
  }
  if (overflow_) cudaFree(overflow_);
}

namespace {
constexpr size_t kPiece = size_t{64} << 20;
}

namespace {
// Copies a landed piece out of its pinned buffer in 4 MB parts, in parallel.
void copy_out(char* d, const char* p, size_t len) {
  constexpr size_t kPart = size_t{4} << 20;
#pragma omp parallel for schedule(static) if (len > kPart)
  for (size_t q = 0; q < len; q += kPart) std::memcpy(d + q, p + q, std::min(kPart, len - q));
}
}  // namespace

void HostStaging::copy_to_host(void* dst, const void* src, size_t bytes, cudaStream_t s) {
  if (bytes <= kPiece) {
    sparsa::cuda::copy_to_host(dst, src, bytes, s);
    synchronize(s);
    return;
  }
  copy_to_sink(src, bytes, 1, s, [&](size_t off, size_t len, const void* pinned) {
    copy_out(static_cast<char*>(dst) + off, static_cast<const char*>(pinned), len);
  });
}

void HostStaging::copy_to_host_f16(uint16_t* dst, const float* src, int64_t count, cudaStream_t s,
                                   int64_t row_len, int64_t first_row) {
  if (count <= 0) return;
  const size_t bytes = (size_t)count * 2;
  if (bytes <= kPiece) {
    reserve_f16();
    reset_overflow(s);
    kern::launch_to_f16({src, dev_[0], count, overflow_, 0}, s);
    sparsa::cuda::copy_to_host(dst, dev_[0], bytes, s);
    check_overflow(s, row_len, first_row);
    return;
  }
  sink_f16(
      src, count, 2, s,
      [&](size_t off, size_t len, const void* pinned) {
        copy_out(reinterpret_cast<char*>(dst) + off, static_cast<const char*>(pinned), len);
      },
      row_len, first_row);
}

void HostStaging::reset_overflow(cudaStream_t s) {
  if (!overflow_) CUDA_OK(cudaMalloc(&overflow_, sizeof *overflow_));
  CUDA_OK(cudaMemsetAsync(overflow_, 0xFF, sizeof *overflow_, s));
}

void HostStaging::check_overflow(cudaStream_t s, int64_t row_len, int64_t first_row) {
  unsigned long long first = 0;
  CUDA_OK(cudaMemcpyAsync(&first, overflow_, sizeof first, cudaMemcpyDeviceToHost, s));
  synchronize(s);
  if (first == ~0ull) return;
  const int64_t i = (int64_t)first;
  throw NumericError(
      (row_len > 0 ? "output row " + std::to_string(first_row + i / row_len) + ", column " +
                         std::to_string(i % row_len)
                   : "output value " + std::to_string(i)) +
      ": a value past float16's range (largest finite 65504; it would be stored as Inf): write "
      "--dtype f32");
}

// Whole units in a piece (at least one unit; a unit larger than a piece is not supported).
static size_t sink_piece(size_t unit) {
  if (unit == 0 || unit > kPiece) throw SystemError("HostStaging: a row larger than 64 MB");
  return kPiece / unit * unit;
}

void HostStaging::copy_to_sink(const void* src, size_t bytes, size_t unit, cudaStream_t s,
                               const Sink& sink) {
  if (bytes == 0) return;
  pipeline(
      bytes, sink_piece(unit), s,
      [&](size_t, size_t off, size_t len, void* pinned) {
        CUDA_OK(cudaMemcpyAsync(pinned, static_cast<const char*>(src) + off, len,
                                cudaMemcpyDeviceToHost, s));
      },
      sink);
}

void HostStaging::copy_to_sink_f16(const float* src, int64_t count, size_t unit, cudaStream_t s,
                                   const Sink& sink, int64_t first_row) {
  sink_f16(src, count, unit, s, sink, (int64_t)(unit / 2), first_row);
}

void HostStaging::sink_f16(const float* src, int64_t count, size_t unit, cudaStream_t s,
                           const Sink& sink, int64_t row_len, int64_t first_row) {
  if (count <= 0) return;
  reserve_f16();
  reset_overflow(s);
  pipeline((size_t)count * 2, sink_piece(unit), s,
           [&](size_t i, size_t off, size_t len, void* pinned) {
             // after the DMA of piece i - 2 out of the same buffer (stream order)
             kern::launch_to_f16(
                 {src + off / 2, dev_[i % 2], (int64_t)(len / 2), overflow_, (int64_t)(off / 2)},
                 s);
             CUDA_OK(cudaMemcpyAsync(pinned, dev_[i % 2], len, cudaMemcpyDeviceToHost, s));
           },
           sink);
  check_overflow(s, row_len, first_row);
}

void HostStaging::reserve_f16() {
  for (int i = 0; i < 2; ++i)
    if (!dev_[i]) CUDA_OK(cudaMalloc(&dev_[i], kPiece));
}

template <class Enqueue, class Land>
void HostStaging::pipeline(size_t bytes, size_t piece, cudaStream_t s, const Enqueue& enqueue,
                           const Land& land) {
  for (int i = 0; i < 2; ++i) {
    if (!buf_[i]) CUDA_OK(cudaMallocHost(&buf_[i], kPiece));
    if (!done_[i]) {
      cudaEvent_t e;
      CUDA_OK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
      done_[i] = e;
    }
  }
  const size_t pieces = (bytes + piece - 1) / piece;
  auto take = [&](size_t i) {  // piece i: wait for its DMA, hand it over (frees buffer i % 2)
    const size_t off = i * piece, len = std::min(piece, bytes - off);
    CUDA_OK(cudaEventSynchronize(static_cast<cudaEvent_t>(done_[i % 2])));
    land(off, len, static_cast<const void*>(buf_[i % 2]));
  };
  for (size_t i = 0; i < pieces; ++i) {
    const size_t off = i * piece, len = std::min(piece, bytes - off);
    if (i >= 2) take(i - 2);
    enqueue(i, off, len, buf_[i % 2]);
    CUDA_OK(cudaEventRecord(static_cast<cudaEvent_t>(done_[i % 2]), s));
  }
  for (size_t i = pieces >= 2 ? pieces - 2 : 0; i < pieces; ++i) take(i);
}

void copy_device(void* dst, const void* src, size_t bytes, cudaStream_t s) {
  if (!bytes) return;
  if (s)
    CUDA_OK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, s));
  else
    CUDA_OK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice));
}
void memset_device(void* dst, int value, size_t bytes, cudaStream_t s) {
  if (!bytes) return;
  if (s)
    CUDA_OK(cudaMemsetAsync(dst, value, bytes, s));
  else
    CUDA_OK(cudaMemset(dst, value, bytes));
}
void synchronize(cudaStream_t s) {
  if (s)
    CUDA_OK(cudaStreamSynchronize(s));
  else
    CUDA_OK(cudaDeviceSynchronize());
}

void to_bf16(const float* in, uint16_t* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    uint32_t u;
    std::memcpy(&u, &in[i], 4);
    if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x7fffffu)) {  // NaN stays NaN
      out[i] = (uint16_t)((u >> 16) | 0x40);
      continue;
    }
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
    out[i] = (uint16_t)(u >> 16);
  }
}
float from_bf16(uint16_t v) {
  const uint32_t u = (uint32_t)v << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

cudaStream_t create_stream() {
  cudaStream_t s;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  return s;
}
void destroy_stream(cudaStream_t s) {
  if (s) cudaStreamDestroy(s);
}

GpuTimer::GpuTimer() {
  cudaEvent_t a, b;
  CUDA_OK(cudaEventCreate(&a));
  CUDA_OK(cudaEventCreate(&b));
  begin_ = a;
  end_ = b;
}
GpuTimer::~GpuTimer() {
  cudaEventDestroy((cudaEvent_t)begin_);
  cudaEventDestroy((cudaEvent_t)end_);
}
void GpuTimer::start(cudaStream_t s) { CUDA_OK(cudaEventRecord((cudaEvent_t)begin_, s)); }
void GpuTimer::stop(cudaStream_t s) { CUDA_OK(cudaEventRecord((cudaEvent_t)end_, s)); }
float GpuTimer::ms() {
  CUDA_OK(cudaEventSynchronize((cudaEvent_t)end_));
  float t = 0;
  CUDA_OK(cudaEventElapsedTime(&t, (cudaEvent_t)begin_, (cudaEvent_t)end_));
  return t;
}

void memory_info(size_t* free_bytes, size_t* total_bytes) {
  CUDA_OK(cudaMemGetInfo(free_bytes, total_bytes));
}
std::string device_name() {
  int dev = 0;
  CUDA_OK(cudaGetDevice(&dev));
  cudaDeviceProp prop;
  CUDA_OK(cudaGetDeviceProperties(&prop, dev));
  return prop.name;
}

}  // namespace sparsa::cuda
