// Google Benchmark of the CPU backend's ops and of the whole forward pass (not a test).
//   build/bench/sparsa_bench --benchmark_counters_tabular=true
// Sizes are dna-tiny's (d 64, 4 heads, w 32, f 128) unless the name says otherwise; every
// benchmark reports tokens/s (items_per_second).
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "backends/cpu/ops.hpp"
#include "dist/comm.hpp"
#include "io/timeseries.hpp"
#include "model/forward.hpp"
#include "model/weights.hpp"

namespace {

using namespace sparsa;

std::vector<float> random_vec(int64_t n, uint64_t seed) {
  std::vector<float> v(n);
  for (auto& x : v) {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    x = (float)((double)(seed >> 40) / (double)(1ull << 24) * 2.0 - 1.0);
  }
  return v;
}

ModelConfig tiny() {
  ModelConfig c;  // the defaults are dna-tiny's
  return c;
}

void BM_Linear(benchmark::State& st) {
  const int64_t n = st.range(0), d = st.range(1);
  auto x = random_vec(n * d, 1), w = random_vec(d * d, 2);
  std::vector<float> y(n * d);
  for (auto _ : st) cpu::linear({x.data(), w.data(), y.data(), n, d, d, 0, false});
  st.SetItemsProcessed(st.iterations() * n);
  st.counters["GFLOP/s"] =
      benchmark::Counter(2.0 * n * d * d * st.iterations() / 1e9, benchmark::Counter::kIsRate);
}
BENCHMARK(BM_Linear)->Args({65536, 64})->Args({65536, 512})->Unit(benchmark::kMillisecond);

void BM_Attention(benchmark::State& st) {
  const int64_t n = st.range(0), H = 4, dh = 16, d = H * dh, w = st.range(1), G = st.range(2);
  auto q = random_vec(n * d, 3), k = random_vec(n * d, 4), v = random_vec(n * d, 5);
  auto kg = random_vec(G * d, 6), vg = random_vec(G * d, 7), gamma = random_vec(G, 8);
  std::vector<int64_t> pos(G);
  for (int64_t j = 0; j < G; ++j) pos[j] = j * (n / std::max<int64_t>(G, 1));
  std::vector<float> alpha(H, 1.0f), beta(H, 1.0f), out(n * d);
  for (auto _ : st) {
    cpu::dsa_attention({q.data(),
                        k.data(),
                        v.data(),
                        0,
                        n,
                        kg.data(),
                        vg.data(),
                        gamma.data(),
                        pos.data(),
                        G,
                        alpha.data(),
                        beta.data(),
                        out.data(),
                        n,
                        0,
                        n,
                        H,
                        dh,
                        w,
                        false,
                        0,
                        n});
  }
  st.SetItemsProcessed(st.iterations() * n);
  st.counters["useful GFLOP/s"] = benchmark::Counter(
      4.0 * n * d * (2 * w + 1 + G) * st.iterations() / 1e9, benchmark::Counter::kIsRate);
}
BENCHMARK(BM_Attention)
    ->Args({65536, 32, 0})
    ->Args({65536, 32, 128})
    ->Args({65536, 256, 0})
    ->Unit(benchmark::kMillisecond);

void BM_TopG(benchmark::State& st) {
  const int64_t n = st.range(0), g = st.range(1);
  auto s = random_vec(n, 9);
  for (auto _ : st) benchmark::DoNotOptimize(cpu::top_g(s.data(), n, 0, g));
  st.SetItemsProcessed(st.iterations() * n);
}
BENCHMARK(BM_TopG)->Args({1 << 20, 128})->Args({1 << 20, 4096})->Unit(benchmark::kMillisecond);

void BM_ForwardTiny(benchmark::State& st) {
  const int64_t n = st.range(0);
  const ModelWeights w = init_model(tiny(), 1);
  std::vector<int32_t> tok(n);
  for (int64_t i = 0; i < n; ++i) tok[i] = 3 + (int32_t)((i * 2654435761u) >> 7) % 4;
  auto comm = make_single_comm();
  for (auto _ : st) benchmark::DoNotOptimize(forward(w, tok.data(), shard_of(n, 0, 1), *comm));
  st.SetItemsProcessed(st.iterations() * n);
}
BENCHMARK(BM_ForwardTiny)->Arg(1 << 16)->Arg(1 << 18)->Unit(benchmark::kMillisecond);

// A time-series CSV of n rows (minute timestamps and OHLCV columns, ~60 bytes a row) read and
// parsed whole, as `sparsa embed` reads each CSV input (bytes/s: of the file).
void BM_ReadTimeseriesCsv(benchmark::State& st) {
  const int64_t n = st.range(0);
  const std::filesystem::path path =
      std::filesystem::temp_directory_path() / ("sparsa_bench_" + std::to_string(n) + ".csv");
  {
    std::ofstream f(path);
    f << "timestamp,open,high,low,close,volume\n";
    uint64_t seed = 7;
    char line[128];
    for (int64_t i = 0; i < n; ++i) {
      seed = seed * 6364136223846793005ull + 1442695040888963407ull;
      const int64_t t = 60 * i, day = t / 86400, sec = t % 86400;
      const double px = 100.0 + (double)(seed >> 44) / 1e4;
      std::snprintf(line, sizeof line, "2020-%02d-%02dT%02d:%02d:%02d,%.4f,%.4f,%.4f,%.4f,%llu\n",
                    (int)(1 + day / 28 % 12), (int)(1 + day % 28), (int)(sec / 3600),
                    (int)(sec / 60 % 60), (int)(sec % 60), px, px + 0.5, px - 0.5, px + 0.1,
                    (unsigned long long)(seed >> 40));
      f << line;
    }
  }
  const auto bytes = (int64_t)std::filesystem::file_size(path);
  for (auto _ : st)
    benchmark::DoNotOptimize(read_timeseries_csv(path.string(), CsvOptions{"", {"close"}, ""}, 1));
  std::filesystem::remove(path);
  st.SetItemsProcessed(st.iterations() * n);
  st.SetBytesProcessed(st.iterations() * bytes);
}
BENCHMARK(BM_ReadTimeseriesCsv)->Arg(1 << 20)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
