// sparsa CUDA backend: the GPU's power draw and SM clock while work runs, through NVML (the
// driver's library, opened at run time: a build or a machine without it reports "not measured").
// On an H200 the whole dna-base model runs at the 700 W power limit, the SM clock lowered by the
// cap (docs/benchmarks.md): `sparsa bench` prints this summary beside its timings.
#pragma once
#include <memory>
#include <string>

namespace sparsa::cuda {

struct PowerSummary {
  bool available = false;
  std::string why;  // what was missing, when not available
  int samples = 0;
  double mean_w = 0, max_w = 0, limit_w = 0;  // power draw (the driver's own averaging)
  double sm_mhz_median = 0, sm_mhz_min = 0, sm_mhz_top = 0;  // SM clock; top: the device's max
  double capped = 0;  // share of samples with the power-cap clock reason set
};

// Samples the current device every 50 ms on a thread of its own from construction to stop().
class PowerSampler {
 public:
  PowerSampler();
  ~PowerSampler();
  PowerSummary stop();
  PowerSampler(const PowerSampler&) = delete;
  PowerSampler& operator=(const PowerSampler&) = delete;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// One line for bench output: "power: mean 688 W, max 695 W of a 700 W limit; ...".
std::string format_power(const PowerSummary& p);

}  // namespace sparsa::cuda
