#include "backends/cuda/power.hpp"

#include <cuda_runtime.h>
#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

namespace sparsa::cuda {

namespace {

// The few NVML entry points used, by their documented C signatures (nvml.h is not part of this
// toolkit; the library comes with the driver). 0 is NVML_SUCCESS.
using Device = void*;
using InitFn = int (*)();
using ByPciFn = int (*)(const char*, Device*);
using UIntFn = int (*)(Device, unsigned*);
using ClockFn = int (*)(Device, int, unsigned*);
using ReasonsFn = int (*)(Device, unsigned long long*);
constexpr int kClockSm = 1;                      // NVML_CLOCK_SM
constexpr unsigned long long kSwPowerCap = 0x4;  // nvmlClocksEventReasonSwPowerCap

struct Nvml {
  void* lib = nullptr;
  Device dev = nullptr;
  UIntFn power = nullptr, limit = nullptr;
  ClockFn clock = nullptr, max_clock = nullptr;
  ReasonsFn reasons = nullptr;
  bool inited = false;
  std::string why;

  Nvml() {
    lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      why = "no libnvidia-ml.so.1";
      return;
    }
    auto sym = [&](const char* name) { return dlsym(lib, name); };
    auto init = reinterpret_cast<InitFn>(sym("nvmlInit_v2"));
    auto by_pci = reinterpret_cast<ByPciFn>(sym("nvmlDeviceGetHandleByPciBusId_v2"));
    power = reinterpret_cast<UIntFn>(sym("nvmlDeviceGetPowerUsage"));
    limit = reinterpret_cast<UIntFn>(sym("nvmlDeviceGetEnforcedPowerLimit"));
    clock = reinterpret_cast<ClockFn>(sym("nvmlDeviceGetClockInfo"));
    max_clock = reinterpret_cast<ClockFn>(sym("nvmlDeviceGetMaxClockInfo"));
    reasons = reinterpret_cast<ReasonsFn>(sym("nvmlDeviceGetCurrentClocksEventReasons"));
    if (!reasons)
      reasons = reinterpret_cast<ReasonsFn>(sym("nvmlDeviceGetCurrentClocksThrottleReasons"));
    int device = 0;
    char bus[32] = {0};
    if (!init || !by_pci || !power || !limit || !clock || !max_clock) {
      why = "NVML lacks a function";
    } else if (!(inited = init() == 0)) {
      why = "nvmlInit failed";
    } else if (cudaGetDevice(&device) != cudaSuccess ||
               cudaDeviceGetPCIBusId(bus, sizeof bus, device) != cudaSuccess ||
               by_pci(bus, &dev) != 0) {
      why = "NVML does not know the CUDA device";
      dev = nullptr;
    }
  }
  ~Nvml() {
    if (lib) {
      if (auto shutdown = reinterpret_cast<InitFn>(dlsym(lib, "nvmlShutdown")); shutdown && inited)
        shutdown();
      dlclose(lib);
    }
  }
};

struct Sample {
  double w, mhz;
  bool capped;
};

}  // namespace

struct PowerSampler::Impl {
  Nvml nvml;
  std::vector<Sample> samples;
  std::atomic<bool> stop{false};
  std::thread thread;
};

PowerSampler::PowerSampler() : impl_(std::make_unique<Impl>()) {
  if (!impl_->nvml.dev) return;
  impl_->thread = std::thread([I = impl_.get()] {
    while (!I->stop) {
      unsigned mw = 0, mhz = 0;
      unsigned long long why = 0;
      if (I->nvml.power(I->nvml.dev, &mw) == 0 && I->nvml.clock(I->nvml.dev, kClockSm, &mhz) == 0) {
        const bool capped =
            I->nvml.reasons && I->nvml.reasons(I->nvml.dev, &why) == 0 && (why & kSwPowerCap);
        I->samples.push_back({mw / 1000.0, (double)mhz, capped});
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  });
}

PowerSampler::~PowerSampler() {
  if (impl_ && impl_->thread.joinable()) {
    impl_->stop = true;
    impl_->thread.join();
  }
}

PowerSummary PowerSampler::stop() {
  PowerSummary p;
  Impl& I = *impl_;
  if (I.thread.joinable()) {
    I.stop = true;
    I.thread.join();
  }
  if (!I.nvml.dev) {
    p.why = I.nvml.why;
    return p;
  }
  if (I.samples.empty()) {
    p.why = "no sample (the run was shorter than 50 ms, or NVML gave none)";
    return p;
  }
  p.available = true;
  p.samples = (int)I.samples.size();
  std::vector<double> mhz;
  int capped = 0;
  for (const Sample& s : I.samples) {
    p.mean_w += s.w / p.samples;
    p.max_w = std::max(p.max_w, s.w);
    mhz.push_back(s.mhz);
    capped += s.capped;
  }
  std::sort(mhz.begin(), mhz.end());
  p.sm_mhz_median = mhz[mhz.size() / 2];
  p.sm_mhz_min = mhz.front();
  p.capped = (double)capped / p.samples;
  unsigned v = 0;
  if (I.nvml.limit(I.nvml.dev, &v) == 0) p.limit_w = v / 1000.0;
  if (I.nvml.max_clock(I.nvml.dev, kClockSm, &v) == 0) p.sm_mhz_top = v;
  return p;
}

std::string format_power(const PowerSummary& p) {
  char b[320];
  if (!p.available) {
    std::snprintf(b, sizeof b, "power: not measured (%s)", p.why.c_str());
    return b;
  }
  std::snprintf(b, sizeof b,
                "power: mean %.0f W, max %.0f W of a %.0f W limit; SM clock median %.0f MHz (min "
                "%.0f, device max %.0f); power cap holding the clock in %.0f%% of %d samples "
                "(50 ms; the driver averages power over about a second)",
                p.mean_w, p.max_w, p.limit_w, p.sm_mhz_median, p.sm_mhz_min, p.sm_mhz_top,
                100.0 * p.capped, p.samples);
  return b;
}

}  // namespace sparsa::cuda
