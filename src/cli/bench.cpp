#include "cli/bench.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>

#include "core/config.hpp"
#include "core/error.hpp"

#ifdef SPARSA_HAVE_CUDA
#include "backends/cuda/cuda_backend.hpp"
#include "backends/cuda/gemm.hpp"
#include "backends/cuda/power.hpp"
#include "kernels/attention/attention.hpp"
#include "kernels/elementwise/elementwise.hpp"
#include "kernels/gemm/gemm.hpp"
#include "model/weights.hpp"
#endif

namespace sparsa {

#ifndef SPARSA_HAVE_CUDA

int run_bench(const BenchOptions&) {
  std::fprintf(stderr,
               "sparsa bench: this build has no CUDA backend (configure with "
               "-DSPARSA_CUDA=ON where nvcc exists)\n");
  return 2;
}

#else

namespace {

using cuda::DeviceBuffer;
using kern::DType;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

// Fills `count` elements with uniform values in [-1, 1]: a random block, then doubling copies.
void fill_random(DeviceBuffer& b, int64_t count, DType t, uint64_t seed) {
  const int64_t eb = kern::dtype_bytes(t), block = std::min<int64_t>(count, 1 << 20);
  std::mt19937_64 g(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> f(block);
  for (auto& x : f) x = u(g);
  if (t == DType::kBF16) {
    std::vector<uint16_t> h(block);
    cuda::to_bf16(f.data(), h.data(), block);
    cuda::copy_to_device(b.get(), h.data(), block * 2);
  } else {
    cuda::copy_to_device(b.get(), f.data(), block * 4);
  }
  for (int64_t done = block; done < count;) {
    const int64_t c = std::min(done, count - done);
    cuda::copy_device(b.as<char>() + done * eb, b.get(), c * eb);
    done += c;
  }
}

void header(const char* what) {
  std::printf("# sparsa bench %s on %s\n", what, cuda::device_name().c_str());
  std::printf("%12s %10s %12s %14s %12s\n", "n", "ms", "TFLOP/s", "tokens/s", "peak_GB");
}
void row(int64_t n, double ms, double flops, double peak_bytes) {
  std::printf("%12lld %10.3f %12.1f %14.4g %12.2f\n", (long long)n, ms, flops / (ms * 1e-3) / 1e12,
              (double)n / (ms * 1e-3), peak_bytes / 1e9);
  std::fflush(stdout);
}

int bench_attention(const BenchOptions& o) {
  const bool local = o.what != "attention-global", global = o.what != "attention-local";
  const DType t = o.bf16 ? DType::kBF16 : DType::kF32;
  const int64_t d = o.heads * o.head_dim, eb = kern::dtype_bytes(t);
  const int64_t G = global ? o.global : 0;
  header(o.what.c_str());
  cudaStream_t s = cuda::create_stream();
  for (int64_t n : o.n) {
    size_t free0 = 0, total = 0;
    cuda::synchronize();
    cuda::memory_info(&free0, &total);
    const int64_t g = std::min(G, n);
    {
      DeviceBuffer q(n * d * eb), k(n * d * eb), v(n * d * eb), out(n * d * eb);
      DeviceBuffer kg(std::max<int64_t>(1, g) * d * eb), vg(std::max<int64_t>(1, g) * d * eb);
      DeviceBuffer gamma(std::max<int64_t>(1, g) * 4), pos(std::max<int64_t>(1, g) * 8);
      DeviceBuffer alpha(o.heads * 4), beta(o.heads * 4);
      DeviceBuffer scratch(g > 0 && t == DType::kBF16 ? n * d * 4 : 256);
      fill_random(q, n * d, t, 1);
      fill_random(k, n * d, t, 2);
      fill_random(v, n * d, t, 3);
      if (g > 0) {
        fill_random(kg, g * d, t, 4);
        fill_random(vg, g * d, t, 5);
      }
      std::vector<int64_t> p(g);
      std::mt19937_64 rg(6);
      for (int64_t j = 0; j < g; ++j) p[j] = j * (n / g) + (int64_t)(rg() % (uint64_t)(n / g));
      std::vector<float> gam(g, 0.5f), ab(o.heads, 1.0f);
      cuda::copy_to_device(pos.get(), p.data(), g * 8);
      cuda::copy_to_device(gamma.get(), gam.data(), g * 4);
      cuda::copy_to_device(alpha.get(), ab.data(), o.heads * 4);
      cuda::copy_to_device(beta.get(), ab.data(), o.heads * 4);
      size_t free1 = 0;
      cuda::memory_info(&free1, &total);

      kern::AttentionParams ap{};
      ap.type = t;
      ap.q = q.get();
      ap.k = k.get();
      ap.v = v.get();
      ap.kv_begin = 0;
      ap.kv_count = n;
      ap.k_global = kg.get();
      ap.v_global = vg.get();
      ap.gamma = gamma.as<float>();
      ap.pos_global = pos.as<int64_t>();
      ap.n_global = g;
      ap.alpha = alpha.as<float>();
      ap.beta = beta.as<float>();
      ap.out = out.get();
      ap.n_tokens = n;
      ap.first_pos = 0;
      ap.n_record = n;
      ap.n_heads = o.heads;
      ap.head_dim = o.head_dim;
      ap.window = o.window;
      ap.causal = o.causal;
      ap.row_begin = 0;
      ap.row_end = n;
      ap.skip_local = !local;
      if (g > 0 && t == DType::kBF16) ap.global_scratch = scratch.as<float>();
      double keys = local ? band_keys(n, o.window, o.causal) : 0.0;
      if (g > 0) {
        if (!o.causal)
          keys += (double)n * (double)g;
        else
          for (int64_t j = 0; j < g; ++j) keys += (double)(n - p[j]);
      }
      const double flops = 4.0 * (double)o.heads * (double)o.head_dim * keys;
      cuda::GpuTimer timer;
      kern::launch_attention(ap, s);  // warm-up
      std::vector<double> ms;
      cuda::PowerSampler power;
      for (int it = 0; it < std::max(1, o.iters); ++it) {
        timer.start(s);
        kern::launch_attention(ap, s);
        timer.stop(s);
        ms.push_back(timer.ms());
      }
      const cuda::PowerSummary pw = power.stop();
      row(n, median(ms), flops, (double)(free0 - free1));
      std::printf("# %s\n", cuda::format_power(pw).c_str());
    }
  }
  cuda::destroy_stream(s);
  return 0;
}

// The MLP's up projection of n rows (K = d_model, N = d_ff of --config) in bf16: cuBLASLt to
// bf16, the GELU table pass after it, and our image GEMM (kernels/gemm) with and without the
// fused GELU. Useful FLOPs: 2 n d f.
int bench_gemm(const BenchOptions& o) {
  const ModelConfig c = load_model_config(o.config);
  const int64_t k = c.d_model, f = c.d_ff;
  std::printf("# sparsa bench gemm (MLP up projection, K %lld, N %lld, bf16) on %s\n", (long long)k,
              (long long)f, cuda::device_name().c_str());
  std::printf("%-22s %12s %10s %12s\n", "variant", "n", "ms", "TFLOP/s");
  const bool images = kern::gemm_images_supported(f, k);
  cudaStream_t s = cuda::create_stream();
  cuda::Gemm gemm;
  DeviceBuffer table(65536 * 2);
  kern::launch_gelu_table(table.get(), s);
  DeviceBuffer w(k * f * 2), wimg(k * f * 2);
  fill_random(w, k * f, DType::kBF16, 7);
  if (images) {
    std::vector<uint16_t> wh(k * f);
    cuda::copy_to_host(wh.data(), w.get(), k * f * 2);
    const auto img = kern::pack_gemm_b(wh.data(), k, f);
    cuda::copy_to_device(wimg.get(), img.data(), img.size() * 2);
  }
  for (int64_t n : o.n) {
    DeviceBuffer x(kern::gemm_a_bytes(n, k)), y(n * f * 2);
    fill_random(x, kern::gemm_a_bytes(n, k) / 2, DType::kBF16, 1);  // either layout: random bits
    const double flops = 2.0 * (double)n * (double)k * (double)f;
    auto time = [&](const char* name, auto&& fn) {
      cuda::GpuTimer timer;
      fn();  // warm-up
      std::vector<double> ms;
      for (int it = 0; it < std::max(1, o.iters); ++it) {
        timer.start(s);
        fn();
        timer.stop(s);
        ms.push_back(timer.ms());
      }
      const double t = median(ms);
      std::printf("%-22s %12lld %10.3f %12.1f\n", name, (long long)n, t, flops / (t * 1e-3) / 1e12);
      std::fflush(stdout);
    };
    time("cublaslt", [&] {
      gemm.run(x.get(), w.get(), y.get(), n, f, k, DType::kBF16, false, s, DType::kBF16);
    });
    time("gelu-table", [&] {
      kern::launch_gelu({nullptr, y.get(), DType::kBF16, n * f, y.get(), table.get()}, s);
    });
    if (!images) continue;
    time("images", [&] {
      kern::launch_gemm_images({x.get(), wimg.get(), y.get(), n, f, k, false}, s);
    });
    time("images+gelu", [&] {
      kern::launch_gemm_images({x.get(), wimg.get(), y.get(), n, f, k, true}, s);
    });
    time("images+gelu-table", [&] {
      kern::launch_gemm_images({x.get(), wimg.get(), y.get(), n, f, k, true, table.as<uint16_t>()},
                               s);
    });
  }
  cuda::destroy_stream(s);
  return 0;
}

int bench_model(const BenchOptions& o) {
  ModelConfig c = load_model_config(o.config);
  if (o.what == "layer") c.n_layers = 1;
  ModelWeights w = init_model(c, 1);
  header((o.what + " " + o.config + (o.bf16 ? " bf16" : " fp32") + " output=" + o.output).c_str());
  CudaOptions co;
  co.bf16 = o.bf16;
  co.output = o.output == "host"     ? CudaOutput::kHost
              : o.output == "device" ? CudaOutput::kDevice
                                     : CudaOutput::kPooled;
  auto comm = make_single_comm();
  for (int64_t n : o.n) {
    size_t free0 = 0, total = 0, free1 = 0;
    cuda::synchronize();
    cuda::memory_info(&free0, &total);
    std::vector<int32_t> tok(n * c.n_tables());
    std::mt19937_64 g(7);
    for (auto& x : tok) x = 2 + (int32_t)(g() % 5);
    double ms_med;
    std::string prof, power_line;
    {
      CudaModel model(w, co);
      const Shard sh = shard_of(n, 0, 1);
      model.forward(tok.data(), sh, *comm);  // warm-up (allocations, GEMM algorithm choice)
      cuda::memory_info(&free1, &total);
      std::vector<double> ms;
      cuda::PowerSampler power;
      for (int it = 0; it < std::max(1, o.iters); ++it) {
        const auto t0 = std::chrono::steady_clock::now();
        model.forward(tok.data(), sh, *comm);
        ms.push_back(
            std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                .count());
      }
      power_line = cuda::format_power(power.stop());
      ms_med = median(ms);
      if (o.profile) {
        model.set_profile(true);
        model.forward(tok.data(), sh, *comm);
        prof = CudaModel::format_profile(model.profile(), c.n_layers);
        prof += model.fused_router()   ? "router: fused kernel, split bf16 (router_split.hpp)\n"
                : model.split_router() ? "router GEMM: split bf16 (router_split.hpp)\n"
                                       : "router GEMM: float32\n";
        model.set_profile(false);
      }
    }
    row(n, ms_med, (double)c.n_layers * c.layer_flops(n).all(), (double)(free0 - free1));
    std::printf("# %s\n", power_line.c_str());
    if (!prof.empty()) std::printf("%s", prof.c_str());
  }
  return 0;
}

}  // namespace

int run_bench(const BenchOptions& o) {
  std::string why;
  if (!cuda_available(&why)) {
    std::fprintf(stderr, "sparsa: error: bench needs a CUDA GPU: no usable CUDA device (%s)\n",
                 why.c_str());
    return 2;
  }
  cuda::select_device(-1);
  if (o.what == "attention-local" || o.what == "attention-global" || o.what == "attention")
    return bench_attention(o);
  if (o.what == "layer" || o.what == "model") return bench_model(o);
  if (o.what == "gemm") return bench_gemm(o);
  throw ConfigError("bench: unknown --what '" + o.what +
                    "' (attention-local, attention-global, attention, layer, model, gemm)");
}

#endif

}  // namespace sparsa
