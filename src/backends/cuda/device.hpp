// sparsa CUDA backend: device selection, memory and timing helpers behind a plain C++ header
// (no CUDA headers), for the backend, its tests and `sparsa bench`.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "kernels/common/types.hpp"

namespace sparsa::cuda {

// True when a CUDA driver and at least one device are usable; otherwise false and *why says why.
bool cuda_available(std::string* why);

// "runtime 13.0, driver 13.0, cuBLASLt 130000, NCCL 2.28.3" for `sparsa --version`; never
// throws (a missing driver is said in the text).
std::string version_info();

// The node-local rank of this process: the launcher's variable (sparsa::local_rank(): Open MPI's,
// MPICH's, MVAPICH's, PMI's, then SLURM_LOCALID); else, when MPI is initialised with more than
// one rank, MPI_Comm_split_type(SHARED) (collective!); else 0.
int node_local_rank();
// Makes `device` (or, for -1, node_local_rank() % device count) current; returns its id.
int select_device(int device);
// The device's PCI bus id ("0000:3B:00.0"): the same GPU whatever the process's numbering.
std::string pci_bus_id(int device);
// Creates the CUDA context of the device select_device(-1) will pick (cudaSetDevice, then
// cudaFree(0)), for a helper thread at start-up, so that the context's creation (the larger part
// of a GPU job's fixed set-up) overlaps reading the checkpoint and the input. `alone`: the job
// has one rank. Never throws and makes no MPI call; does nothing where CUDA is unusable or the
// device is not known without MPI calls (no launcher variable in a multi-rank job).
void warm_up_device(bool alone) noexcept;

// A device allocation (cudaMalloc), freed on destruction. Move-only.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& o) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  // Grows (never shrinks) to at least `bytes`; contents are lost when it grows.
  void reserve(size_t bytes);
  void* get() const { return ptr_; }
  template <class T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Plain copies (synchronous unless a stream is given; then asynchronous on it).
void copy_to_device(void* dst, const void* src, size_t bytes, cudaStream_t stream = nullptr);
void copy_to_host(void* dst, const void* src, size_t bytes, cudaStream_t stream = nullptr);
void copy_device(void* dst, const void* src, size_t bytes, cudaStream_t stream = nullptr);
void memset_device(void* dst, int value, size_t bytes, cudaStream_t stream = nullptr);
// Large device-to-host copies into pageable memory (a genome's rows: GBs), synchronous: through
// two pinned buffers in turn, so the DMA of one piece overlaps the host copy of the last (a
// single pageable cudaMemcpy of GBs ran at about 1 GB/s). The buffers (2 x 64 MB) are made on
// the first large copy and kept until destruction (after the stream is idle).
class HostStaging {
 public:
  HostStaging() = default;
  ~HostStaging();
  HostStaging(const HostStaging&) = delete;
  HostStaging& operator=(const HostStaging&) = delete;
  void copy_to_host(void* dst, const void* src, size_t bytes, cudaStream_t stream);
  // count float32 values at src (device) into float16 at dst (host), converted on the device
  // piece by piece (kern::launch_to_f16: round to nearest even) into two kept 64 MB device
  // buffers: half the bytes cross PCIe.
  // A value past float16's range is a NumericError naming its row and column (row_len values a
  // row; 0: its flat index), rows counted from first_row.
  void copy_to_host_f16(uint16_t* dst, const float* src, int64_t count, cudaStream_t stream,
                        int64_t row_len = 0, int64_t first_row = 0);
  // Makes copy_to_host_f16's device buffers now (at set-up, before the activations claim the
  // memory) instead of on the first copy.
  void reserve_f16();
  // As copy_to_host / copy_to_host_f16, but each piece goes to `sink` (its byte offset in the
  // output, its bytes, the host memory holding them, valid during the call), in order, instead
  // of into one host array; pieces hold whole units of `unit` bytes (rows). The next piece's
  // copy runs while the sink works on this one.
  using Sink = std::function<void(size_t off, size_t bytes, const void* host)>;
  void copy_to_sink(const void* src, size_t bytes, size_t unit, cudaStream_t stream,
                    const Sink& sink);
  void copy_to_sink_f16(const float* src, int64_t count, size_t unit, cudaStream_t stream,
                        const Sink& sink, int64_t first_row = 0);

 private:
  // The pieces' DMAs into the pinned buffers in turn: enqueue(i, off, len, pinned) issues piece i
  // (bytes [off, off + len) of the output, len <= piece) on the stream; land(off, len, pinned)
  // takes it once it is there.
  template <class Enqueue, class Land>
  void pipeline(size_t bytes, size_t piece, cudaStream_t s, const Enqueue& enqueue,
                const Land& land);
  void* buf_[2] = {nullptr, nullptr};
  void* done_[2] = {nullptr, nullptr};  // cudaEvent_t
  void* dev_[2] = {nullptr, nullptr};   // copy_to_host_f16: the converted pieces
  // The conversions' overflow word (device, kern::ToF16Params::overflow): reset before a copy,
  // read after it; a value past float16's range is an error (spec: no Inf in an output).
  unsigned long long* overflow_ = nullptr;
  void reset_overflow(cudaStream_t s);
  void check_overflow(cudaStream_t s, int64_t row_len, int64_t first_row);
  // copy_to_sink_f16 with the overflow reported by row_len values a row (0: a flat index).
  void sink_f16(const float* src, int64_t count, size_t unit, cudaStream_t stream, const Sink& sink,
                int64_t row_len, int64_t first_row);
};

void synchronize(cudaStream_t stream = nullptr);  // one stream, or the whole device for null
// float32 <-> bfloat16 (round to nearest even) on the host, for uploads and tests.
void to_bf16(const float* in, uint16_t* out, int64_t n);
float from_bf16(uint16_t v);

// Streams and events owned by the caller.
cudaStream_t create_stream();
void destroy_stream(cudaStream_t s);

// Times work on a stream with CUDA events: start(); ...; stop(); ms() synchronizes on the end.
class GpuTimer {
 public:
  GpuTimer();
  ~GpuTimer();
  GpuTimer(const GpuTimer&) = delete;
  GpuTimer& operator=(const GpuTimer&) = delete;
  void start(cudaStream_t s);
  void stop(cudaStream_t s);
  float ms();

 private:
  void* begin_ = nullptr;
  void* end_ = nullptr;
};

// Free and total device memory (cudaMemGetInfo).
void memory_info(size_t* free_bytes, size_t* total_bytes);
std::string device_name();

}  // namespace sparsa::cuda
