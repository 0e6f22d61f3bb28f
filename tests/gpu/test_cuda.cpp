// GPU tests: every CUDA op against the CPU oracle, and the whole model against sparsa::forward.
// Error bounds (documented in docs and bench/NOTES.md):
//   fp32 mode: ops within ~1e-5 of the largest reference value (summation order only); the whole
//     model within 1e-5 (CudaModel.Fp32MatchesCpu; 1e-4 where the window is past the record);
//     global sets identical.
//   bf16 mode: ops fed with bf16-rounded inputs within 1e-2 of the largest reference value
//     (P and the output are rounded to bf16); the whole model within 2e-2 (CudaModel.
//     Bf16WithinBound; 5e-2 elsewhere), global sets at least 90% shared, layer 0's identical
//     (equal tokens get equal scores on both backends).
// Every test skips with a clear message where no CUDA device is usable.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <thread>
#include <tuple>

#include "backends/cpu/ops.hpp"
#include "backends/cuda/cuda_backend.hpp"
#include "backends/cuda/gemm.hpp"
#include "backends/cuda/power.hpp"
#include "backends/cuda/router_split.hpp"
#include "core/error.hpp"
#include "core/memory.hpp"
#include "core/signals.hpp"
#include "io/dna.hpp"
#include "io/h5.hpp"
#include "kernels/attention/attention.hpp"
#include "kernels/attention/attention_wgmma.hpp"
#include "kernels/elementwise/elementwise.hpp"
#include "kernels/embed/embed.hpp"
#include "kernels/gemm/gemm.hpp"
#include "kernels/norm/norm.hpp"
#include "kernels/rope/rope.hpp"
#include "kernels/router/router.hpp"
#include "kernels/topg/topg.hpp"
#include "model/forward.hpp"

using namespace sparsa;
using cuda::DeviceBuffer;
using kern::DType;

#define SKIP_WITHOUT_GPU()                                              \
  std::string why;                                                      \
  if (!cuda_available(&why)) GTEST_SKIP() << "no CUDA device: " << why; \
  cuda::select_device(-1)

namespace {

std::vector<float> rnd(int64_t n, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937_64 g(seed);
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = u(g);
  return v;
}
template <class T>
DeviceBuffer up(const std::vector<T>& v) {
  DeviceBuffer b(v.size() * sizeof(T));
  cuda::copy_to_device(b.get(), v.data(), v.size() * sizeof(T));
  return b;
}
template <class T>
std::vector<T> down(const DeviceBuffer& b, int64_t n) {
  std::vector<T> v(n);
  cuda::copy_to_host(v.data(), b.get(), n * sizeof(T));
  return v;
}
std::vector<float> round_bf16(const std::vector<float>& v) {
  std::vector<uint16_t> b(v.size());
  cuda::to_bf16(v.data(), b.data(), (int64_t)v.size());
  std::vector<float> r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = cuda::from_bf16(b[i]);
  return r;
}
DeviceBuffer up_act(const std::vector<float>& v, DType t) {
  if (t == DType::kF32) return up(v);
  std::vector<uint16_t> b(v.size());
  cuda::to_bf16(v.data(), b.data(), (int64_t)v.size());
  return up(b);
}
std::vector<float> down_act(const DeviceBuffer& d, int64_t n, DType t) {
  if (t == DType::kF32) return down<float>(d, n);
  std::vector<uint16_t> b = down<uint16_t>(d, n);
  std::vector<float> r(n);
  for (int64_t i = 0; i < n; ++i) r[i] = cuda::from_bf16(b[i]);
  return r;
}
// g distinct record positions below n_record, ascending (a global set).
std::vector<int64_t> random_positions(int64_t g, int64_t n_record, uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::set<int64_t> ps;
  while ((int64_t)ps.size() < g) ps.insert((int64_t)(gen() % n_record));
  return {ps.begin(), ps.end()};
}
// max |a - ref| / max |ref| (0 for an all-zero reference that a matches).
double rel_err(const std::vector<float>& a, const std::vector<float>& ref) {
  EXPECT_EQ(a.size(), ref.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size() && i < ref.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    num = std::max(num, (double)std::fabs(a[i] - ref[i]));
    den = std::max(den, (double)std::fabs(ref[i]));
  }
  return den > 0 ? num / den : num;
}

}  // namespace

// `sparsa bench`'s power line: NVML's view of the device the process uses, over ~0.4 s of GEMMs.
TEST(CudaPower, SamplerSeesTheDevice) {
  SKIP_WITHOUT_GPU();
  cuda::PowerSampler sampler;
  const int64_t n = 4096;
  DeviceBuffer a(n * n * 4), b(n * n * 4), c(n * n * 4);
  cuda::Gemm gemm;
  const auto t0 = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(400)) {
    gemm.run(a.get(), b.get(), c.get(), n, n, n, DType::kF32, false, nullptr);
    cuda::synchronize();
  }
  const cuda::PowerSummary p = sampler.stop();
  if (!p.available && p.why == "no libnvidia-ml.so.1") GTEST_SKIP() << "no NVML on this machine";
  ASSERT_TRUE(p.available) << p.why;
  EXPECT_GE(p.samples, 4);
  EXPECT_GT(p.limit_w, 50.0);
  EXPECT_GT(p.mean_w, 10.0);
  EXPECT_LE(p.max_w, 2.0 * p.limit_w);
  EXPECT_GT(p.sm_mhz_min, 0.0);
  EXPECT_LE(p.sm_mhz_median, p.sm_mhz_top);
  EXPECT_GE(p.capped, 0.0);
  EXPECT_LE(p.capped, 1.0);
  EXPECT_NE(cuda::format_power(p).find("W limit; SM clock median"), std::string::npos);
}

TEST(CudaOps, Embed) {
  SKIP_WITHOUT_GPU();
  for (int64_t d : {40, 42, 512}) {  // d % 4 == 0: a warp a token (16-byte accesses); 42: a
                                     // thread a value
    const int64_t n = 1000, nt = 3, vocab = 11;
    std::vector<float> tables = rnd(nt * vocab * d, 1);
    std::vector<int32_t> tok(n * nt);
    std::mt19937 g(2);
    for (auto& t : tok) t = (int32_t)(g() % vocab);
    std::vector<const float*> tp;
    for (int64_t c = 0; c < nt; ++c) tp.push_back(tables.data() + c * vocab * d);
    std::vector<float> ref(n * d);
    cpu::embed({tok.data(), tp.data(), ref.data(), n, nt, vocab, d});
    DeviceBuffer dt = up(tables), dk = up(tok), dx(n * d * 4);
    kern::launch_embed({dk.as<int32_t>(), dt.as<float>(), dx.as<float>(), n, nt, vocab, d},
                       nullptr);
    EXPECT_EQ(down<float>(dx, n * d), ref) << "d " << d;  // same order of float adds: exact
  }
}

TEST(CudaOps, RmsNormReportsFirstNonFinite) {
  SKIP_WITHOUT_GPU();
  // The final RMSNorm's fused check: the smallest flat index of a non-finite output, on the
  // vector kernel (d = 512) and the plain one (d = 96); ~0 when every value is finite.
  for (int64_t d : {512, 96}) {
    const int64_t n = 1000;
    auto x = rnd(n * d, 61, -2, 2), gain = rnd(d, 62, 0.5f, 1.5f);
    DeviceBuffer dx = up(x), dg = up(gain), dy(n * d * 4), bad(8);
    kern::RmsNormParams p{
        dx.as<float>(), dg.as<float>(), dy.as<float>(), nullptr, DType::kF32, n, d, 1e-6};
    p.bad = bad.as<unsigned long long>();
    cuda::memset_device(bad.get(), 0xff, 8);
    kern::launch_rmsnorm(p, nullptr);
    EXPECT_EQ(down<unsigned long long>(bad, 1)[0], ~0ull) << "d " << d;
    x[700 * d + 5] = NAN;         // the whole row becomes NaN
    x[300 * d + 77] = INFINITY;   // inv = 0: inf * 0 = NaN there, 0 elsewhere in the row
    x[300 * d + 40] = -INFINITY;  // ... and here, on another lane: the row's smaller index wins
    DeviceBuffer dx2 = up(x);
    p.x = dx2.as<float>();
    cuda::memset_device(bad.get(), 0xff, 8);
    kern::launch_rmsnorm(p, nullptr);
    EXPECT_EQ(down<unsigned long long>(bad, 1)[0], (unsigned long long)(300 * d + 40)) << "d " << d;
  }
}

TEST(CudaOps, RmsNorm) {
  SKIP_WITHOUT_GPU();
  const int64_t n = 777, d = 96;
  auto x = rnd(n * d, 3, -3, 3), gain = rnd(d, 4);
  std::vector<float> ref(n * d);
  cpu::rmsnorm({x.data(), gain.data(), ref.data(), n, d, 1e-6});
  DeviceBuffer dx = up(x), dg = up(gain), df(n * d * 4), db(n * d * 2);
  kern::launch_rmsnorm(
      {dx.as<float>(), dg.as<float>(), df.as<float>(), db.get(), DType::kBF16, n, d, 1e-6},
      nullptr);
  EXPECT_LE(rel_err(down<float>(df, n * d), ref), 1e-6);
  EXPECT_LE(rel_err(down_act(db, n * d, DType::kBF16), ref), 1e-2);
}

TEST(CudaOps, StagedCopyToHost) {
  SKIP_WITHOUT_GPU();
  // Through the two pinned buffers: 3 full pieces of 64 MB and a partial one, into a vector made
  // by resize_huge; exactly two pieces; and a small copy (one plain copy). One staging object
  // for all (its buffers are reused).
  cuda::HostStaging staging;
  for (size_t n : {size_t{(3u << 24) + 12345}, size_t{2u << 24}, size_t{1000}}) {
    std::vector<float> src(n);
    for (size_t i = 0; i < n; ++i) src[i] = (float)(i % 1000003) - 0.5f;
    DeviceBuffer d = up(src);
    std::vector<float> got;
    resize_huge(got, n);
    cudaStream_t s = cuda::create_stream();
    staging.copy_to_host(got.data(), d.get(), n * 4, s);
    cuda::destroy_stream(s);
    EXPECT_TRUE(got == src) << n;
  }
}

// The rows' way into a streamed part (HostStaging::copy_to_sink[_f16]): pieces of whole rows of
// 384 values (a size that does not divide 64 MB), in order, covering everything once, the same
// bytes as copy_to_host / copy_to_host_f16; a sink that throws leaves the staging usable.
TEST(CudaOps, StagedCopyToSink) {
  SKIP_WITHOUT_GPU();
  cuda::HostStaging staging;
  const int64_t d = 384, rows = 110000;  // 169 MB of float32 rows: 3 pieces; f16: 2 pieces
  std::vector<float> src(rows * d);
  // Within float16's range (past it is an error: CudaOps.Float16RowsAreTheHostConversion).
  for (size_t i = 0; i < src.size(); ++i) src[i] = (float)(i % 1000003) * 0.05f - 25000.5f;
  DeviceBuffer dev = up(src);
  cudaStream_t s = cuda::create_stream();
  for (bool f16 : {false, true}) {
    SCOPED_TRACE(f16 ? "f16" : "f32");
    const size_t rb = d * (f16 ? 2 : 4), bytes = rows * rb;
    std::vector<unsigned char> want(bytes), got(bytes, 0xAB);
    if (f16)
      staging.copy_to_host_f16(reinterpret_cast<uint16_t*>(want.data()), dev.as<float>(), rows * d,
                               s);
    else
      staging.copy_to_host(want.data(), dev.get(), bytes, s);
    size_t next = 0, pieces = 0;
    auto sink = [&](size_t off, size_t len, const void* host) {
      EXPECT_EQ(off, next);
      EXPECT_EQ(len % rb, 0u);
      std::memcpy(got.data() + off, host, len);
      next = off + len;
      ++pieces;
    };
    if (f16)
      staging.copy_to_sink_f16(dev.as<float>(), rows * d, rb, s, sink);
    else
      staging.copy_to_sink(dev.get(), bytes, rb, s, sink);
    EXPECT_EQ(next, bytes);
    EXPECT_GE(pieces, 2u);
    EXPECT_TRUE(got == want);
    // A sink that fails on its second piece: the error comes out; the next copy is whole.
    int calls = 0;
    auto failing = [&](size_t, size_t, const void*) {
      if (++calls == 2) throw SystemError("disk full");
    };
    if (f16)
      EXPECT_THROW(staging.copy_to_sink_f16(dev.as<float>(), rows * d, rb, s, failing),
                   SystemError);
    else
      EXPECT_THROW(staging.copy_to_sink(dev.get(), bytes, rb, s, failing), SystemError);
    next = 0;
    std::fill(got.begin(), got.end(), 0xAB);
    if (f16)
      staging.copy_to_sink_f16(dev.as<float>(), rows * d, rb, s, sink);
    else
      staging.copy_to_sink(dev.get(), bytes, rb, s, sink);
    EXPECT_TRUE(got == want);
  }
  cuda::destroy_stream(s);
}

TEST(CudaOps, RmsNormVectorAndSplit) {
  SKIP_WITHOUT_GPU();
  // d % 128 == 0 takes the float4 kernel: the same floats as the one-element kernel (d = 96 path
  // above agrees with the CPU), and the split output hi + lo within 2^-16 of each float.
  const int64_t n = 1003, d = 512;  // 8 rows a block: the last block partly filled
  auto x = rnd(n * d, 5, -4, 4), gain = rnd(d, 6, -2, 2);
  std::vector<float> ref(n * d);
  cpu::rmsnorm({x.data(), gain.data(), ref.data(), n, d, 1e-6});
  DeviceBuffer dx = up(x), dg = up(gain), df(n * d * 4), db(n * d * 2), dsplit(n * d * 4);
  kern::RmsNormParams p{
      dx.as<float>(), dg.as<float>(), df.as<float>(), db.get(), DType::kBF16, n, d, 1e-6};
  p.out_split = dsplit.get();
  kern::launch_rmsnorm(p, nullptr);
  const auto got = down<float>(df, n * d);
  EXPECT_LE(rel_err(got, ref), 1e-6);
  EXPECT_EQ(down_act(db, n * d, DType::kBF16), round_bf16(got));
  const auto split = down<uint16_t>(dsplit, 2 * n * d);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < d; ++j) {
      const float v = got[i * d + j], hi = cuda::from_bf16(split[i * 2 * d + j]),
                  lo = cuda::from_bf16(split[i * 2 * d + d + j]);
      ASSERT_EQ(hi, round_bf16({v})[0]) << i << " " << j;
      ASSERT_LE(std::fabs((double)hi + (double)lo - (double)v), std::ldexp(std::fabs(v), -16))
          << i << " " << j;
    }
}

TEST(CudaOps, RopeNearOneBillion) {
  SKIP_WITHOUT_GPU();
  // head_dim 64: the 4-pairs-a-thread kernel; 6: the one-pair kernel.
  for (int64_t dh : {64, 6}) {
    SCOPED_TRACE("head_dim " + std::to_string(dh));
    const int64_t n = 300, H = 4, d = H * dh, first = 1000000000 - 150;
    auto qkv = rnd(n * 3 * d, 5);
    std::vector<float> q(n * d), k(n * d), v(n * d);
    for (int64_t i = 0; i < n; ++i) {
      std::copy_n(qkv.begin() + i * 3 * d, d, q.begin() + i * d);
      std::copy_n(qkv.begin() + i * 3 * d + d, d, k.begin() + i * d);
      std::copy_n(qkv.begin() + i * 3 * d + 2 * d, d, v.begin() + i * d);
    }
    cpu::rope({q.data(), n, H, dh, first, 10000.0, k.data()});
    for (DType t : {DType::kF32, DType::kBF16}) {
      const int64_t eb = kern::dtype_bytes(t);
      DeviceBuffer din = up(qkv), dq(n * d * eb), dk(n * d * eb), dv(n * d * eb);
      const float* p = din.as<float>();
      kern::launch_rope(
          {p, p + d, p + 2 * d, 3 * d, dq.get(), dk.get(), dv.get(), t, n, H, dh, first, 10000.0},
          nullptr);
      const double tol = t == DType::kF32 ? 1e-6 : 1e-2;
      EXPECT_LE(rel_err(down_act(dq, n * d, t), q), tol);
      EXPECT_LE(rel_err(down_act(dk, n * d, t), k), tol);
      EXPECT_LE(rel_err(down_act(dv, n * d, t), v), tol);
      // q alone (the model's per-chunk queries) and k, v alone: the same values.
      DeviceBuffer dq1(n * d * eb), dk1(n * d * eb), dv1(n * d * eb);
      kern::launch_rope(
          {p, nullptr, nullptr, 3 * d, dq1.get(), nullptr, nullptr, t, n, H, dh, first, 10000.0},
          nullptr);
      kern::launch_rope({nullptr, p + d, p + 2 * d, 3 * d, nullptr, dk1.get(), dv1.get(), t, n, H,
                         dh, first, 10000.0},
                        nullptr);
      EXPECT_TRUE(down_act(dq1, n * d, t) == down_act(dq, n * d, t));
      EXPECT_TRUE(down_act(dk1, n * d, t) == down_act(dk, n * d, t));
      EXPECT_TRUE(down_act(dv1, n * d, t) == down_act(dv, n * d, t));
      if (t == DType::kBF16) {
        // A bf16 projection output (the model's bf16 mode): the same bits as float32 input that
        // holds the same bf16 values, and within the bf16 bound of the CPU.
        DeviceBuffer in_b = up_act(qkv, DType::kBF16);
        DeviceBuffer in_f = up(down_act(in_b, n * 3 * d, DType::kBF16));
        DeviceBuffer qb(n * d * eb), kb(n * d * eb), vb(n * d * eb), qf(n * d * eb), kf(n * d * eb),
            vf(n * d * eb);
        const char* pb = in_b.as<char>();
        kern::RopeParams rb{pb, pb + 2 * d, pb + 4 * d, 3 * d, qb.get(), kb.get(), vb.get(),
                            t,  n,          H,          dh,    first,    10000.0};
        rb.in_type = DType::kBF16;
        kern::launch_rope(rb, nullptr);
        const float* pf = in_f.as<float>();
        kern::launch_rope({pf, pf + d, pf + 2 * d, 3 * d, qf.get(), kf.get(), vf.get(), t, n, H, dh,
                           first, 10000.0},
                          nullptr);
        EXPECT_TRUE(down_act(qb, n * d, t) == down_act(qf, n * d, t));
        EXPECT_TRUE(down_act(kb, n * d, t) == down_act(kf, n * d, t));
        EXPECT_TRUE(down_act(vb, n * d, t) == down_act(vf, n * d, t));
        EXPECT_LE(rel_err(down_act(qb, n * d, t), q), 1e-2);
        EXPECT_LE(rel_err(down_act(kb, n * d, t), k), 1e-2);
        EXPECT_LE(rel_err(down_act(vb, n * d, t), v), 1e-2);
      }
      // Rows gathered from anywhere (the global rows' K/V): positions[] instead of first_pos. Row
      // i of the input is row perm[i] of the record, so its output is row perm[i] of the above.
      std::vector<int64_t> perm(n), pos(n);
      for (int64_t i = 0; i < n; ++i) perm[i] = (i * 7 + 3) % n;  // 7 is prime to 300
      std::vector<float> qkv_p(n * 3 * d);
      for (int64_t i = 0; i < n; ++i) {
        std::copy_n(qkv.begin() + perm[i] * 3 * d, 3 * d, qkv_p.begin() + i * 3 * d);
        pos[i] = first + perm[i];
      }
      DeviceBuffer din_p = up(qkv_p), dpos(n * 8), dk2(n * d * eb), dv2(n * d * eb);
      cuda::copy_to_device(dpos.get(), pos.data(), n * 8);
      const float* pp = din_p.as<float>();
      kern::RopeParams rp{nullptr, pp + d, pp + 2 * d, 3 * d, nullptr, dk2.get(), dv2.get(),
                          t,       n,      H,          dh,    0,       10000.0};
      rp.positions = dpos.as<int64_t>();
      kern::launch_rope(rp, nullptr);
      const auto k_all = down_act(dk, n * d, t), k_got = down_act(dk2, n * d, t);
      const auto v_all = down_act(dv, n * d, t), v_got = down_act(dv2, n * d, t);
      for (int64_t i = 0; i < n; ++i) {
        EXPECT_TRUE(std::equal(k_got.begin() + i * d, k_got.begin() + (i + 1) * d,
                               k_all.begin() + perm[i] * d))
            << "row " << i;
        EXPECT_TRUE(std::equal(v_got.begin() + i * d, v_got.begin() + (i + 1) * d,
                               v_all.begin() + perm[i] * d))
            << "row " << i;
      }
    }
  }
}

// The model's bf16 path ([q | k] rows of a bf16 projection, no v): the one-warp-a-row kernel
// gives the 4-pairs-a-thread kernel's bits, for 1 to 16 heads, q and k together or alone, rows at
// first_pos near 1e9 or at gathered positions, and a row count that leaves a block part empty.
TEST(CudaOps, RopeWarpKernelGivesTheSameBits) {
  SKIP_WITHOUT_GPU();
  const int64_t dh = 64, n = 1001, first = 1000000000 - 500;
  for (int64_t H : {1, 2, 4, 8, 16}) {
    SCOPED_TRACE("heads " + std::to_string(H));
    const int64_t d = H * dh;
    DeviceBuffer in = up_act(rnd(n * 2 * d, 11 + H), DType::kBF16);
    std::vector<int64_t> pos(n);
    for (int64_t i = 0; i < n; ++i) pos[i] = (i * 7919) % 1000003 + 999000000;
    DeviceBuffer dpos(n * 8);
    cuda::copy_to_device(dpos.get(), pos.data(), n * 8);
    for (int what = 0; what < 3; ++what)  // q and k, q alone, k alone
      for (bool gathered : {false, true}) {
        SCOPED_TRACE("what " + std::to_string(what) + (gathered ? " gathered" : ""));
        std::vector<std::vector<float>> got[2];
        for (int variant : {0, 1}) {
          DeviceBuffer q(n * d * 2), k(n * d * 2);
          cuda::memset_device(q.get(), 0, q.bytes());
          cuda::memset_device(k.get(), 0, k.bytes());
          const char* pi = in.as<char>();
          kern::RopeParams rp{pi,
                              pi + d * 2,
                              nullptr,
                              2 * d,
                              what != 2 ? q.get() : nullptr,
                              what != 1 ? k.get() : nullptr,
                              nullptr,
                              DType::kBF16,
                              n,
                              H,
                              dh,
                              first,
                              10000.0};
          rp.in_type = DType::kBF16;
          rp.variant = variant;
          if (gathered) rp.positions = dpos.as<int64_t>();
          kern::launch_rope(rp, nullptr);
          got[variant] = {down_act(q, n * d, DType::kBF16), down_act(k, n * d, DType::kBF16)};
        }
        EXPECT_TRUE(got[0][0] == got[1][0]) << "q";
        EXPECT_TRUE(got[0][1] == got[1][1]) << "k";
        if (what != 2) EXPECT_GT(rel_err(got[0][0], std::vector<float>(n * d, 0.0f)), 0.5);
      }
  }
}

TEST(CudaOps, GemmMatchesLinear) {
  SKIP_WITHOUT_GPU();
  const int64_t m = 1000, din = 128, dout = 192;
  auto x = rnd(m * din, 6), w = rnd(din * dout, 7), y0 = rnd(m * dout, 8);
  cuda::Gemm gemm;
  for (DType t : {DType::kF32, DType::kBF16}) {
    auto xr = t == DType::kBF16 ? round_bf16(x) : x, wr = t == DType::kBF16 ? round_bf16(w) : w;
    std::vector<float> ref = y0;
    cpu::linear({xr.data(), wr.data(), ref.data(), m, din, dout, 0, true});
    DeviceBuffer dx = up_act(x, t), dw = up_act(w, t), dy = up(y0);
    gemm.run(dx.get(), dw.get(), dy.as<float>(), m, dout, din, t, true, nullptr);
    EXPECT_LE(rel_err(down<float>(dy, m * dout), ref), 1e-5) << (t == DType::kF32 ? "f32" : "bf16");
  }
  // bf16 output (the model's MLP up projection): the fp32 result rounded once to bf16.
  auto xr = round_bf16(x), wr = round_bf16(w);
  std::vector<float> ref(m * dout, 0.0f);
  cpu::linear({xr.data(), wr.data(), ref.data(), m, din, dout, 0, false});
  DeviceBuffer dx = up_act(x, DType::kBF16), dw = up_act(w, DType::kBF16), dy(m * dout * 2);
  gemm.run(dx.get(), dw.get(), dy.get(), m, dout, din, DType::kBF16, false, nullptr, DType::kBF16);
  EXPECT_LE(rel_err(down_act(dy, m * dout, DType::kBF16), ref), 4e-3);
  EXPECT_THROW(gemm.run(dx.get(), dw.get(), dy.get(), m, dout, din, DType::kBF16, true, nullptr,
                        DType::kBF16),
               SystemError);
}

// A row's bits do not depend on M, for the model's GEMM shapes (dna-base, bf16 and fp32 modes):
// the rows of short products (a read's M) equal the same rows of a product at the reference M
// (65,536), whichever algorithm each M gets.
TEST(CudaOps, GemmRowsDoNotDependOnM) {
  SKIP_WITHOUT_GPU();
  struct Shape {
    int64_t n, k;
    DType in, out;
    bool acc;
  };
  const Shape shapes[] = {{1024, 512, DType::kBF16, DType::kBF16, false},
                          {512, 512, DType::kBF16, DType::kBF16, false},
                          {512, 512, DType::kBF16, DType::kF32, true},
                          {2048, 512, DType::kBF16, DType::kBF16, false},
                          {512, 2048, DType::kBF16, DType::kF32, true},
                          {256, 1024, DType::kBF16, DType::kF32, false},
                          {1536, 512, DType::kF32, DType::kF32, false},
                          {512, 512, DType::kF32, DType::kF32, true}};
  const int64_t big = 65536;
  cuda::Gemm gemm;
  for (const Shape& sh : shapes) {
    const auto x = rnd(big * sh.k, 21), w = rnd(sh.k * sh.n, 22), y0 = rnd(big * sh.n, 23);
    DeviceBuffer dx = up_act(x, sh.in), dw = up_act(w, sh.in);
    const int64_t ob = sh.out == DType::kF32 ? 4 : 2;
    DeviceBuffer ybig = up(y0);  // float; a bf16 output uses its first half
    gemm.run(dx.get(), dw.get(), ybig.get(), big, sh.n, sh.k, sh.in, sh.acc, nullptr, sh.out);
    const auto ref = down<uint8_t>(ybig, big * sh.n * ob);
    for (int64_t m : {1, 37, 150, 1000, 4099, 20000}) {
      DeviceBuffer y = up(std::vector<float>(y0.begin(), y0.begin() + m * sh.n));
      gemm.run(dx.get(), dw.get(), y.get(), m, sh.n, sh.k, sh.in, sh.acc, nullptr, sh.out);
      const auto got = down<uint8_t>(y, m * sh.n * ob);
      EXPECT_TRUE(std::equal(got.begin(), got.end(), ref.begin()))
          << "N " << sh.n << " K " << sh.k << " M " << m << (sh.acc ? " accumulate" : "")
          << (sh.in == DType::kF32 ? " fp32" : " bf16");
    }
  }
}

// The image GEMM (kernels/gemm, the model's MLP up projection + GELU in bf16 mode) against
// cuBLASLt's bf16 output followed by the GELU table (the path it replaces), against the CPU, and
// for row invariance: a row's bits do not depend on M or on where the row block starts.
TEST(CudaOps, GemmImagesMatchCublasAndTable) {
  SKIP_WITHOUT_GPU();
  if (!kern::wgmma_available()) GTEST_SKIP() << "no sm_90a device: the wgmma kernels do not run";
  cuda::Gemm gemm;
  DeviceBuffer table(65536 * 2);
  kern::launch_gelu_table(table.get(), nullptr);
  // dna-base's shapes; more row blocks than a GPU has SMs with an odd count of column tiles and
  // k tiles (the A block and the ping-pong reused across row blocks); small ones.
  for (auto [m, k, n] : {std::tuple<int64_t, int64_t, int64_t>{5003, 512, 2048},
                         {17000, 448, 640},
                         {300, 128, 256},
                         {64, 64, 128}}) {
    SCOPED_TRACE("m " + std::to_string(m) + " k " + std::to_string(k) + " n " + std::to_string(n));
    ASSERT_TRUE(kern::gemm_images_supported(n, k));
    const auto x = rnd(m * k, 31 + m, -3, 3), w = rnd(k * n, 32 + n, -0.15f, 0.15f);
    std::vector<float> gain(k, 1.0f);
    const auto wr = round_bf16(w);
    std::vector<uint16_t> wb(w.size());
    cuda::to_bf16(w.data(), wb.data(), (int64_t)w.size());
    DeviceBuffer dx = up(x), dg = up(gain), dw = up(wb),
                 dimg = up(kern::pack_gemm_b(wb.data(), k, n));
    // h = RMSNorm(x) in bf16, row-major (cuBLASLt's operand) and as A images (ours).
    // himg has 64 rows to spare: the row-invariance launch below starts 64 rows in.
    DeviceBuffer hrow(m * k * 2), himg(kern::gemm_a_bytes(m + 64, k));
    kern::launch_rmsnorm(
        {dx.as<float>(), dg.as<float>(), nullptr, hrow.get(), DType::kBF16, m, k, 1e-6}, nullptr);
    kern::RmsNormParams np{
        dx.as<float>(), dg.as<float>(), nullptr, himg.get(), DType::kBF16, m, k, 1e-6};
    np.act_tiled = true;
    kern::launch_rmsnorm(np, nullptr);
    for (int mode : {0, 1, 2}) {  // no GELU, GELU computed, GELU by the table
      const bool gelu = mode > 0;
      const uint16_t* tab = mode == 2 ? table.as<uint16_t>() : nullptr;
      SCOPED_TRACE(mode == 0 ? "plain" : mode == 1 ? "gelu" : "gelu table");
      DeviceBuffer yc(m * n * 2), yi(m * n * 2);
      gemm.run(hrow.get(), dw.get(), yc.get(), m, n, k, DType::kBF16, false, nullptr, DType::kBF16);
      if (gelu)
        kern::launch_gelu({nullptr, yc.get(), DType::kBF16, m * n, yc.get(), table.get()}, nullptr);
      kern::launch_gemm_images({himg.get(), dimg.get(), yi.get(), m, n, k, gelu, tab}, nullptr);
      const auto bc = down<uint16_t>(yc, m * n), bi = down<uint16_t>(yi, m * n);
      int64_t differ = 0, far = 0;
      for (int64_t i = 0; i < m * n; ++i) {
        differ += bc[i] != bi[i];
        far += std::abs((int)bc[i] - (int)bi[i]) > 1;  // more than one bf16 ulp apart
      }
      std::printf("  image GEMM (mode %d) vs cuBLASLt%s (m %lld): %lld of %lld values differ\n",
                  mode, gelu ? " + GELU table" : "", (long long)m, (long long)differ,
                  (long long)(m * n));
      EXPECT_EQ(far, 0);
      EXPECT_LE(differ, m * n / 1000);
      // Against the CPU: bf16 h (row-major bits) times bf16 W in double, rounded as the kernel.
      const auto h = down_act(hrow, m * k, DType::kBF16);
      std::vector<float> ref(m * n, 0.0f);
      cpu::linear({h.data(), wr.data(), ref.data(), m, k, n, 0, false});
      ref = round_bf16(ref);
      if (gelu)
        for (float& v : ref) v = cpu::gelu(v);
      EXPECT_LE(rel_err(down_act(yi, m * n, DType::kBF16), ref), 8e-3);
      // Row invariance: rows 64.. (a block that starts mid-tile) alone give the same bits. The
      // A images of a block of rows at row 64 are those of the whole at an offset of 64 rows.
      if (m > 128) {
        const int64_t m2 = m - 64;
        DeviceBuffer y2(m2 * n * 2);
        kern::launch_gemm_images(
            {himg.as<char>() + 64 * k * 2, dimg.get(), y2.get(), m2, n, k, gelu, tab}, nullptr);
        const auto b2 = down<uint16_t>(y2, m2 * n);
        EXPECT_TRUE(std::equal(b2.begin(), b2.end(), bi.begin() + 64 * n));
      }
    }
  }
  EXPECT_THROW(kern::pack_gemm_b(nullptr, 100, 128), SystemError);
}

TEST(CudaOps, Router) {
  SKIP_WITHOUT_GPU();
  const int64_t n = 2000, d = 96, r = 40;
  auto h = rnd(n * d, 9), w1 = rnd(d * r, 10, -0.3f, 0.3f), b1 = rnd(r, 11), w2 = rnd(r, 12);
  for (int64_t i = 0; i < 100; ++i)  // repeated rows must get equal scores
    std::copy_n(h.begin(), d, h.begin() + (i * 13 + 5) * d);
  std::vector<float> ref(n);
  cpu::router({h.data(), w1.data(), b1.data(), w2.data(), 0.25f, ref.data(), n, d, r, 0});
  DeviceBuffer dh = up(h), dw1 = up(w1), db1 = up(b1), dw2 = up(w2), hid(n * r * 4), ds(n * 4);
  cuda::Gemm gemm;
  gemm.run(dh.get(), dw1.get(), hid.as<float>(), n, r, d, DType::kF32, false, nullptr);
  kern::launch_router(
      {hid.as<float>(), db1.as<float>(), dw2.as<float>(), 0.25f, ds.as<float>(), n, r}, nullptr);
  auto got = down<float>(ds, n);
  EXPECT_LE(rel_err(got, ref), 1e-5);
  for (int64_t i = 0; i < 100; ++i) EXPECT_EQ(got[(i * 13 + 5)], got[0]);
}

TEST(CudaOps, RouterSplitWithinItsBound) {
  SKIP_WITHOUT_GPU();
  // The split router's scores (norm split, one bf16 GEMM, router kernel) differ from the float32
  // router's by at most the bound of router_split.hpp, for every row, and in fact by under 2e-5
  // of the score spread (bf16 operands without the lo parts would be off by about 1e-3 of it).
  // So do the fused kernel's (one chunk of hidden units, or 2 or 3 chunks added up), which also
  // gives a row the same bits wherever it sits (a later start, another n) and equal rows equal
  // scores.
  struct Case {
    int64_t d, r;
    float wscale, gscale;
  };
  for (Case k : {Case{512, 128, 1, 1}, Case{128, 32, 4, 3}, Case{256, 64, 0.25f, 0.5f},
                 Case{256, 96, 1, 1}, Case{128, 64, 1, 1}, Case{512, 96, 0.5f, 1}}) {
    const int64_t n = 6000, d = k.d, r = k.r;
    SCOPED_TRACE("d " + std::to_string(d) + " r " + std::to_string(r));
    const float sd = 1.0f / std::sqrt((float)d);
    auto x = rnd(n * d, 21, -3, 3), gain = rnd(d, 22, 0.2f * k.gscale, k.gscale);
    auto w1 = rnd(d * r, 23, -k.wscale * sd, k.wscale * sd), b1 = rnd(r, 24, -0.1f, 0.1f);
    auto w2 = rnd(r, 25, -1 / std::sqrt((float)r), 1 / std::sqrt((float)r));
    for (int64_t i = 0; i < 50; ++i) {  // rows near the extremes: one spike, or a constant row
      std::fill_n(x.begin() + i * d, d, 0.001f);
      x[i * d + i % d] = 50.0f;
    }
    for (int64_t i = 50; i < 100; ++i) std::fill_n(x.begin() + i * d, d, (float)(i - 75) * 0.1f);
    for (int64_t i = 0; i < 40; ++i)  // equal rows, in every position of a tile of 32
      std::copy_n(x.begin() + 200 * d, d, x.begin() + (1000 + 33 * i) * d);
    const float b2 = 0.3f;
    const cuda::RouterSplit rs =
        cuda::make_router_split(w1.data(), b1.data(), w2.data(), b2, gain.data(), d, r);
    DeviceBuffer dx = up(x), dg = up(gain), dw1 = up(w1), db1 = up(b1), dw2 = up(w2),
                 dws = up(rs.w), h32(n * d * 4), hid(n * 2 * r * 4), exact(n * 4), approx(n * 4);
    cuda::Gemm gemm;
    kern::launch_rmsnorm(
        {dx.as<float>(), dg.as<float>(), h32.as<float>(), nullptr, DType::kF32, n, d, 1e-6},
        nullptr);
    gemm.run(h32.get(), dw1.get(), hid.as<float>(), n, r, d, DType::kF32, false, nullptr);
    kern::launch_router(
        {hid.as<float>(), db1.as<float>(), dw2.as<float>(), b2, exact.as<float>(), n, r}, nullptr);
    kern::RmsNormParams np{
        dx.as<float>(), dg.as<float>(), nullptr, nullptr, DType::kF32, n, d, 1e-6};
    np.out_split = h32.get();
    kern::launch_rmsnorm(np, nullptr);
    gemm.run(h32.get(), dws.get(), hid.as<float>(), n, 2 * r, 2 * d, DType::kBF16, false, nullptr);
    kern::RouterParams rp{
        hid.as<float>(), db1.as<float>(), dw2.as<float>(), b2, approx.as<float>(), n, r};
    rp.split = true;
    kern::launch_router(rp, nullptr);
    const auto e = down<float>(exact, n), a = down<float>(approx, n);
    double worst = 0, lo = INFINITY, hi = -INFINITY;
    for (int64_t i = 0; i < n; ++i) {
      worst = std::max(worst, std::fabs((double)a[i] - (double)e[i]));
      lo = std::min(lo, (double)e[i]);
      hi = std::max(hi, (double)e[i]);
    }
    std::printf("[ router ] d=%lld r=%lld: max |approx - float32| %.3g, bound %.3g, spread %.3g\n",
                (long long)d, (long long)r, worst, rs.bound, hi - lo);
    EXPECT_LE(worst, rs.bound);
    EXPECT_LE(worst, 2e-5 * (hi - lo));

    {  // the fused kernel
      ASSERT_TRUE(kern::router_fused_supported(d, r));
      ASSERT_FALSE(rs.frags.empty());
      DeviceBuffer dfr = up(rs.frags), dim = up(rs.images), fused(n * 4), part(n * r / 32 * 8);
      // the mma.sync kernel, then (on an sm_90a GPU) the wgmma one
      for (bool mma_only : {true, false}) {
        if (!mma_only && !kern::wgmma_available()) continue;
        if (!kern::router_fused_fits(d, r, mma_only))
          continue;  // e.g. mma.sync at d 256 on an sm_86 GPU
        SCOPED_TRACE(mma_only ? "mma.sync kernel" : "wgmma kernel");
        kern::RouterFusedParams fp{dx.as<float>(),
                                   dg.as<float>(),
                                   kern::router_fused_eps(1e-6),
                                   dfr.as<uint32_t>(),
                                   db1.as<float>(),
                                   dw2.as<float>(),
                                   b2,
                                   part.as<double>(),
                                   fused.as<float>(),
                                   n,
                                   d,
                                   r};
        fp.images = dim.as<uint16_t>();
        fp.mma_only = mma_only;
        kern::launch_router_fused(fp, nullptr);
        const auto f = down<float>(fused, n);
        if (mma_only) {  // one x buffer (as on an A100): the same bits as two
          fp.mma_buffers = 1;
          kern::launch_router_fused(fp, nullptr);
          EXPECT_EQ(down<float>(fused, n), f);
          fp.mma_buffers = 0;
        }
        double fworst = 0;
        for (int64_t i = 0; i < n; ++i)
          fworst = std::max(fworst, std::fabs((double)f[i] - (double)e[i]));
        std::printf("[ router ] fused (%s): max |fused - float32| %.3g\n",
                    mma_only ? "mma.sync" : "wgmma", fworst);
        EXPECT_LE(fworst, rs.bound);
        EXPECT_LE(fworst, 2e-5 * (hi - lo));
        for (int64_t i = 0; i < 40; ++i) EXPECT_EQ(f[1000 + 33 * i], f[200]);
        // rows 77.. of a shorter call: the same bits
        const int64_t off = 77, n2 = 3001;
        fp.x = dx.as<float>() + off * d;
        fp.n_tokens = n2;
        kern::launch_router_fused(fp, nullptr);
        const auto f2 = down<float>(fused, n2);
        for (int64_t i = 0; i < n2; ++i) ASSERT_EQ(f2[i], f[off + i]) << "row " << off + i;
        // a row too large for the float sum of squares (|x| > 2^96) scores NaN, not a number
        fp.x = dx.as<float>();
        fp.n_tokens = n;
        const std::vector<float> huge(d, 1e30f);
        cuda::copy_to_device(dx.as<float>() + 5 * d, huge.data(), d * 4);
        kern::launch_router_fused(fp, nullptr);
        const auto f3 = down<float>(fused, n);
        EXPECT_TRUE(std::isnan(f3[5]));
        EXPECT_EQ(f3[6], f[6]);
        cuda::copy_to_device(dx.as<float>() + 5 * d, x.data() + 5 * d, d * 4);
      }
    }
  }
  std::vector<uint16_t> b(128 * 40);
  EXPECT_THROW(kern::pack_router_frags(b.data(), b.data(), 128, 40), SystemError);
  EXPECT_FALSE(kern::router_fused_supported(384, 64));
}

TEST(CudaOps, TopGMatchesCpuWithTies) {
  SKIP_WITHOUT_GPU();
  const int64_t n = 100000, first = 12345;
  std::vector<float> s = rnd(n, 13, -4, 4);
  for (int64_t i = 0; i < n; i += 3) s[i] = std::round(s[i]);  // many exact ties
  s[10] = -0.0f;
  s[20] = 0.0f;
  const size_t temp = kern::topg_temp_bytes(n);
  DeviceBuffer ds = up(s), keys(n * 8), sorted(n * 8), dt(temp), bad(8);
  kern::launch_topg({ds.as<float>(), n, first, keys.as<uint64_t>(), sorted.as<uint64_t>(), dt.get(),
                     temp, bad.as<unsigned long long>()},
                    nullptr);
  auto got = down<uint64_t>(sorted, n);
  EXPECT_EQ(down<unsigned long long>(bad, 1)[0], ~0ull);
  for (int64_t G : {0, 1, 1000, 8192}) {
    auto ref = cpu::top_g(s.data(), n, first, G);
    ASSERT_EQ((int64_t)ref.size(), G);
    for (int64_t j = 0; j < G; ++j) {
      ASSERT_EQ(kern::topg_key_pos(got[j]), ref[j].pos) << "G=" << G << " j=" << j;
      ASSERT_EQ(kern::topg_key_score(got[j]), ref[j].score);
    }
    // The device selection (one rank holding the record): S in position order with its scores
    // and shard rows, as cpu::select_global; and the gate of every chosen score.
    if (G == 0) continue;
    const auto S = cpu::select_global(ref, G);
    const size_t st = kern::topg_select_temp_bytes(G);
    DeviceBuffer sk(2 * G * 8), stemp(st), pos(G * 8), sc(G * 4), rows(G * 8), gam(G * 4);
    kern::launch_topg_select({sorted.as<uint64_t>(), G, first, sk.as<uint64_t>(), stemp.get(), st,
                              pos.as<int64_t>(), sc.as<float>(), rows.as<int64_t>()},
                             nullptr);
    kern::launch_topg_gate(sc.as<float>(), G, gam.as<float>(), nullptr);
    const auto gp = down<int64_t>(pos, G), gr = down<int64_t>(rows, G);
    const auto gs = down<float>(sc, G), gg = down<float>(gam, G);
    for (int64_t j = 0; j < G; ++j) {
      ASSERT_EQ(gp[j], S[j].pos) << "G=" << G << " j=" << j;
      ASSERT_EQ(gs[j], S[j].score);
      ASSERT_EQ(gr[j], S[j].pos - first);
      ASSERT_NEAR(gg[j], 1.0 / (1.0 + std::exp(-(double)S[j].score)), 1e-7);
    }
  }
  s[777] = NAN;
  s[900] = INFINITY;
  DeviceBuffer ds2 = up(s);
  kern::launch_topg({ds2.as<float>(), n, first, keys.as<uint64_t>(), sorted.as<uint64_t>(),
                     dt.get(), temp, bad.as<unsigned long long>()},
                    nullptr);
  EXPECT_EQ(down<unsigned long long>(bad, 1)[0], (unsigned long long)(first + 777));
}

namespace {

struct AttnCase {
  int64_t n_record, first_pos, n_tokens, heads, head_dim, window, G;
  bool causal;
  DType type;
  bool simple = false;
  std::vector<std::pair<int64_t, int64_t>> check_rows;  // empty: all rows
  // the global part split off: on sm_90a the kernel that runs both parts, else its own kernel
  // through an fp32 scratch (global_scratch); false: the v1 kernel
  bool split = false;
};

// Runs the GPU attention and the CPU oracle (on the same, bf16-rounded where bf16, inputs) and
// returns the error relative to the largest reference value over the checked rows.
double attention_error(const AttnCase& a, uint64_t seed) {
  const int64_t d = a.heads * a.head_dim, m = a.n_tokens;
  const int64_t kv_begin = std::max<int64_t>(0, a.first_pos - a.window);
  const int64_t kv_end =
      a.causal ? a.first_pos + m : std::min(a.n_record, a.first_pos + m + a.window);
  const int64_t kvc = kv_end - kv_begin;
  auto prep = [&](std::vector<float> v) { return a.type == DType::kBF16 ? round_bf16(v) : v; };
  auto q = prep(rnd(m * d, seed, -2, 2)), k = prep(rnd(kvc * d, seed + 1, -2, 2));
  auto v = prep(rnd(kvc * d, seed + 2)), kg = prep(rnd(a.G * d, seed + 3, -2, 2));
  auto vg = prep(rnd(a.G * d, seed + 4)), gamma = rnd(a.G, seed + 5, 0, 1);
  auto alpha = rnd(a.heads, seed + 6, 0.5, 1.5), beta = rnd(a.heads, seed + 7, 0.5, 1.5);
  const std::vector<int64_t> pos = random_positions(a.G, a.n_record, seed + 8);
  std::vector<float> ref(m * d, 0.0f);
  cpu::AttentionParams cp{q.data(),   k.data(),   v.data(),     kv_begin,
                          kvc,        kg.data(),  vg.data(),    gamma.data(),
                          pos.data(), a.G,        alpha.data(), beta.data(),
                          ref.data(), m,          a.first_pos,  a.n_record,
                          a.heads,    a.head_dim, a.window,     a.causal,
                          0,          m};
  auto ranges =
      a.check_rows.empty() ? std::vector<std::pair<int64_t, int64_t>>{{0, m}} : a.check_rows;
  for (auto [r0, r1] : ranges) {
    cp.row_begin = r0;
    cp.row_end = r1;
    cpu::dsa_attention(cp);
  }
  const int64_t eb = kern::dtype_bytes(a.type);
  DeviceBuffer dq = up_act(q, a.type), dk = up_act(k, a.type), dv = up_act(v, a.type);
  DeviceBuffer dkg = up_act(kg, a.type), dvg = up_act(vg, a.type), dgam = up(gamma), dpos = up(pos),
               dal = up(alpha), dbe = up(beta), dout(m * d * eb);
  kern::AttentionParams p{};
  p.type = a.type;
  p.q = dq.get();
  p.k = dk.get();
  p.v = dv.get();
  p.kv_begin = kv_begin;
  p.kv_count = kvc;
  p.k_global = dkg.get();
  p.v_global = dvg.get();
  p.gamma = dgam.as<float>();
  p.pos_global = dpos.as<int64_t>();
  p.n_global = a.G;
  p.alpha = dal.as<float>();
  p.beta = dbe.as<float>();
  p.out = dout.get();
  p.n_tokens = m;
  p.first_pos = a.first_pos;
  p.n_record = a.n_record;
  p.n_heads = a.heads;
  p.head_dim = a.head_dim;
  p.window = a.window;
  p.causal = a.causal;
  p.row_begin = 0;
  p.row_end = m;
  p.force_simple = a.simple;
  p.split_global = a.split;  // else the v1 kernel, the global part inside
  DeviceBuffer scratch;
  if (a.split) {
    scratch.reserve(m * d * 4);
    p.global_scratch = scratch.as<float>();
  }
  if (a.check_rows.empty()) {
    kern::launch_attention(p, nullptr);
  } else {  // the checked ranges as separate launches, as the model's interior/edge split
    for (auto [r0, r1] : a.check_rows) {
      p.row_begin = r0;
      p.row_end = r1;
      kern::launch_attention(p, nullptr);
    }
  }
  auto got = down_act(dout, m * d, a.type);
  std::vector<float> g2, r2;
  for (auto [r0, r1] : ranges) {
    g2.insert(g2.end(), got.begin() + r0 * d, got.begin() + r1 * d);
    r2.insert(r2.end(), ref.begin() + r0 * d, ref.begin() + r1 * d);
  }
  return rel_err(g2, r2);
}

}  // namespace

TEST(CudaOps, AttentionFp32) {
  SKIP_WITHOUT_GPU();
  // n_record, first, n_tokens, H, dh, w, G, causal, type
  for (bool causal : {false, true}) {
    EXPECT_LE(attention_error({1000, 0, 1000, 2, 64, 37, 50, causal, DType::kF32}, 1), 2e-5);
    EXPECT_LE(attention_error({3000, 1100, 900, 3, 16, 100, 64, causal, DType::kF32}, 2), 2e-5);
    EXPECT_LE(attention_error({500, 0, 500, 2, 32, 600, 10, causal, DType::kF32}, 3), 2e-5);
    EXPECT_LE(attention_error({800, 0, 800, 1, 64, 20, 0, causal, DType::kF32}, 4), 2e-5);
    // window 0: W(i) = {i}
    EXPECT_LE(attention_error({300, 5, 290, 2, 64, 0, 0, causal, DType::kF32}, 11), 2e-5);
    EXPECT_LE(attention_error({300, 5, 290, 2, 64, 0, 20, causal, DType::kF32}, 12), 2e-5);
  }
}

TEST(CudaOps, AttentionBf16TensorCores) {
  SKIP_WITHOUT_GPU();
  for (bool causal : {false, true}) {
    for (int64_t dh : {64, 128}) {
      SCOPED_TRACE(std::string(causal ? "causal" : "bidirectional") + " dh=" + std::to_string(dh));
      EXPECT_LE(attention_error({1000, 0, 1000, 2, dh, 37, 50, causal, DType::kBF16}, 5), 1e-2);
      EXPECT_LE(attention_error({3000, 1100, 900, 2, dh, 100, 64, causal, DType::kBF16}, 6), 1e-2);
      EXPECT_LE(attention_error({500, 0, 500, 1, dh, 600, 10, causal, DType::kBF16}, 7), 1e-2);
      EXPECT_LE(attention_error({800, 0, 800, 1, dh, 20, 0, causal, DType::kBF16}, 8), 1e-2);
      EXPECT_LE(attention_error({257, 3, 250, 1, dh, 1, 1, causal, DType::kBF16}, 9), 1e-2);
      EXPECT_LE(attention_error({257, 3, 250, 1, dh, 0, 0, causal, DType::kBF16}, 13), 1e-2);
      EXPECT_LE(attention_error({257, 3, 250, 1, dh, 0, 16, causal, DType::kBF16}, 14), 1e-2);
      // The CUDA-core kernel in bf16 too.
      AttnCase s{1000, 0, 1000, 2, dh, 37, 50, causal, DType::kBF16, true};
      EXPECT_LE(attention_error(s, 10), 1e-2);
    }
  }
}

TEST(CudaOps, AttentionBf16SplitGlobal) {
  SKIP_WITHOUT_GPU();
  // The global part as its own 128-query kernel (head_dim 64), added by the band kernel.
  for (bool causal : {false, true}) {
    SCOPED_TRACE(causal ? "causal" : "bidirectional");
    for (auto a : {AttnCase{1000, 0, 1000, 2, 64, 37, 50, causal, DType::kBF16},
                   AttnCase{3000, 1100, 900, 2, 64, 100, 64, causal, DType::kBF16},
                   AttnCase{500, 0, 500, 1, 64, 600, 10, causal, DType::kBF16},
                   AttnCase{257, 3, 250, 1, 64, 1, 1, causal, DType::kBF16},
                   AttnCase{5000,
                            0,
                            5000,
                            2,
                            64,
                            256,
                            700,
                            causal,
                            DType::kBF16,
                            false,
                            {{0, 300}, {300, 4700}, {4700, 5000}}}}) {
      a.split = true;
      EXPECT_LE(attention_error(a, 13), 1e-2);
    }
    // Many key tiles of the global kernel (G = 2500: 20 tiles of 128 with a partial last one).
    AttnCase big{20000,
                 0,
                 20000,
                 2,
                 64,
                 256,
                 2500,
                 causal,
                 DType::kBF16,
                 false,
                 {{0, 500}, {9000, 9500}, {19500, 20000}}};
    big.split = true;
    EXPECT_LE(attention_error(big, 14), 1e-2);
  }
}

TEST(CudaOps, Float16RowsAreTheHostConversion) {
  SKIP_WITHOUT_GPU();
  // HostStaging::copy_to_host_f16 (device conversion, pieces of 32M values through two buffers,
  // each reused: 4 pieces) gives the bits of the host's conversion for a float16 file
  // (h5::float_to_f16), edge values included: ties, subnormals, the largest float16, -0. A value
  // past float16's range (it would become infinity) is an error on both sides, which name the
  // first such value. On a stream of its own, as the model's.
  const int64_t n = 110'000'000;
  std::vector<float> v = rnd(n, 51, -3, 3);
  const float edges[] = {0.0f,        -0.0f,    1.0f + 1.0f / 2048, 1.0f + 3.0f / 2048,
                         65504.0f,    65519.0f, 65520.0f,           -70000.0f,
                         6.0e-8f,     3.0e-8f,  2.9802322e-8f,      1.0e-5f,
                         -6.1035e-5f, 1.0e-30f, 0.33333334f,        1234.5678f};
  for (size_t i = 0; i < sizeof edges / sizeof edges[0]; ++i) {
    v[i] = edges[i];
    v[n - 1 - i] = edges[i];
    v[n / 2 + i] = edges[i] * 1e-3f;
  }
  std::vector<uint16_t> want(n);
  EXPECT_EQ(h5::float_to_f16(v.data(), want.data(), n), 6);  // 65520 at v[6]
  cuda::HostStaging staging;
  cudaStream_t s = cuda::create_stream();
  {
    DeviceBuffer dv = up(v);
    std::vector<uint16_t> got(n);
    for (int64_t count : {n, int64_t{1000}}) {
      try {
        staging.copy_to_host_f16(got.data(), dv.as<float>(), count, s);
        ADD_FAILURE() << "no error for a value past float16's range";
      } catch (const NumericError& e) {
        EXPECT_NE(std::string(e.what()).find("output value 6:"), std::string::npos) << e.what();
      }
    }
  }
  for (float* x : {&v[6], &v[7], &v[n - 7], &v[n - 8]}) *x = *x > 0 ? 65503.0f : -65503.0f;
  EXPECT_EQ(h5::float_to_f16(v.data(), want.data(), n), -1);
  DeviceBuffer dv = up(v);
  for (int64_t count : {n, int64_t{1000}}) {  // many pieces, and one small copy
    std::vector<uint16_t> got(count, 0x7e00);
    staging.copy_to_host_f16(got.data(), dv.as<float>(), count, s);
    EXPECT_TRUE(std::equal(got.begin(), got.end(), want.begin())) << count << " values";
  }
  cuda::destroy_stream(s);
}

namespace {
// The global kernel's inputs on the device (bf16 q, K, V; the 3000 x 2 heads x 64 case of the
// global-kernel tests: G = 2500 keys in 20 tiles of 128, the last partial, partial query tiles).
struct GlobalCase {
  // The defaults: q rows [m, d], global keys [G, d] at random positions of a record of n_record.
  static constexpr int64_t m = 3000, H = 2, dh = 64, d = H * dh, G = 2500, n_record = 9000,
                           first = 1700;
  DeviceBuffer dq, dkg, dvg, dgam, dbeta, dpos, scratch;
  kern::AttentionParams p{};
  GlobalCase(const std::vector<float>& q, const std::vector<float>& kg,
             const std::vector<float>& vg, uint64_t seed)
      : GlobalCase(q, kg, vg, seed, random_positions(G, n_record, seed + 2), n_record, first) {}
  // Any number of rows (q.size() / d) and global keys (positions.size()).
  GlobalCase(const std::vector<float>& q, const std::vector<float>& kg,
             const std::vector<float>& vg, uint64_t seed, const std::vector<int64_t>& positions,
             int64_t record, int64_t first_pos)
      : dq(up_act(q, DType::kBF16)),
        dkg(up_act(kg, DType::kBF16)),
        dvg(up_act(vg, DType::kBF16)),
        dgam(up(rnd((int64_t)positions.size(), seed, 0, 1))),
        dbeta(up(rnd(H, seed + 1, 0.5, 1.5))),
        dpos(up(positions)),
        scratch(q.size() * 4) {
    const int64_t rows = (int64_t)q.size() / d;
    p.type = DType::kBF16;
    p.q = dq.get();
    p.k_global = dkg.get();
    p.v_global = dvg.get();
    p.gamma = dgam.as<float>();
    p.pos_global = dpos.as<int64_t>();
    p.n_global = (int64_t)positions.size();
    p.beta = dbeta.as<float>();
    p.global_scratch = scratch.as<float>();
    p.n_tokens = rows;
    p.first_pos = first_pos;
    p.n_record = record;
    p.n_heads = H;
    p.head_dim = dh;
    p.row_begin = 0;
    p.row_end = rows;
  }
};
}  // namespace

TEST(CudaOps, GlobalKernelVariantsBitIdentical) {
  SKIP_WITHOUT_GPU();
  if (!kern::wgmma_available()) GTEST_SKIP() << "no sm_90a device: the wgmma kernels do not run";
  // The wgmma variants of the global kernel do a row's arithmetic in the same order (they differ
  // in how tiles are loaded and buffers released), so their fp32 outputs agree bit for bit.
  using C = GlobalCase;
  const int64_t m = C::m, d = C::d;
  GlobalCase gc(rnd(m * d, 31, -2, 2), rnd(C::G * d, 32, -2, 2), rnd(C::G * d, 33), 34);
  kern::AttentionParams& p = gc.p;
  DeviceBuffer& scratch = gc.scratch;
  for (bool causal : {false, true}) {
    p.causal = causal;
    std::vector<uint32_t> ref;
    for (const char* v : {"wg", "wgbar", "wgcp"}) {
      SCOPED_TRACE(std::string(v) + (causal ? " causal" : " bidirectional"));
      cuda::memset_device(scratch.get(), 0xff, m * d * 4);
      kern::launch_global_wgmma(p, v, nullptr);
      auto got = down<uint32_t>(scratch, m * d);
      if (ref.empty()) {
        ref = got;
        EXPECT_TRUE(
            std::all_of(got.begin(), got.end(), [](uint32_t b) { return b != 0xffffffffu; }));
      } else {
        EXPECT_EQ(got, ref);
      }
    }
  }
}

// A band launch (bf16, head_dim 64) for query rows [first, first + m) of a record of n_record
// tokens, with the keys [kv_begin, kv_end) given, as a shard's window with its halo.
struct BandRun {
  int64_t n_record, first, m, window, kv_begin, kv_end;
  bool causal = false;
};
// Its parameters on device buffers: q of r.m rows, k and v of the r.kv_end - r.kv_begin keys,
// alpha per head, out [r.m, heads * 64] bf16; no global part.
kern::AttentionParams band_params(const BandRun& r, int64_t heads, const DeviceBuffer& q,
                                  const DeviceBuffer& k, const DeviceBuffer& v,
                                  const DeviceBuffer& alpha, const DeviceBuffer& out) {
  kern::AttentionParams p{};
  p.type = DType::kBF16;
  p.q = q.get();
  p.k = k.get();
  p.v = v.get();
  p.kv_begin = r.kv_begin;
  p.kv_count = r.kv_end - r.kv_begin;
  p.alpha = alpha.as<float>();
  p.out = out.get();
  p.n_tokens = r.m;
  p.first_pos = r.first;
  p.n_record = r.n_record;
  p.n_heads = heads;
  p.head_dim = 64;
  p.window = r.window;
  p.causal = r.causal;
  return p;
}
// The rows written in two launches (the row range split at a third).
void launch_band_in_two(kern::AttentionParams p, const char* variant) {
  const int64_t m = p.n_tokens;
  for (auto [r0, r1] : {std::pair<int64_t, int64_t>{0, m / 3}, {m / 3, m}}) {
    p.row_begin = r0;
    p.row_end = r1;
    kern::launch_band_wgmma(p, variant, nullptr);
  }
}
// run's output (bf16 bits) with `variant` from the record's q, k, v rows (all n_record of them).
std::vector<uint16_t> run_band(const BandRun& r, const std::vector<float>& q,
                               const std::vector<float>& k, const std::vector<float>& v,
                               int64_t heads, const char* variant, float alpha = 1.0f) {
  const int64_t d = heads * 64, kvc = r.kv_end - r.kv_begin;
  auto rows = [&](const std::vector<float>& x, int64_t lo, int64_t n) {
    return up_act(std::vector<float>(x.begin() + lo * d, x.begin() + (lo + n) * d), DType::kBF16);
  };
  DeviceBuffer dq = rows(q, r.first, r.m), dk = rows(k, r.kv_begin, kvc),
               dv = rows(v, r.kv_begin, kvc);
  DeviceBuffer dal = up(std::vector<float>(heads, alpha)), dout(r.m * d * 2);
  cuda::memset_device(dout.get(), 0xff, r.m * d * 2);
  launch_band_in_two(band_params(r, heads, dq, dk, dv, dal, dout), variant);
  return down<uint16_t>(dout, r.m * d);
}

TEST(CudaOps, BandKernelVariantsBitIdentical) {
  SKIP_WITHOUT_GPU();
  if (!kern::wgmma_available()) GTEST_SKIP() << "no sm_90a device: the wgmma kernels do not run";
  // The band kernels walk the same 64-key tiles in the same order with the same arithmetic per
  // row (2 or 3 cp.async stages), so their bf16 outputs agree bit for bit: unaligned shards, key
  // ranges cut short on both sides (the missing keys load as zeros and are masked), windows from
  // 1 to beyond a tile span, rows written in two launches, with and without a global part.
  struct Case {
    int64_t n_record, first, m, window, kv_cut_lo, kv_cut_hi;
  };
  const int64_t H = 2, dh = 64, d = H * dh;
  for (Case c : {Case{5000, 1100, 900, 100, 0, 0}, Case{5000, 1100, 900, 256, 0, 0},
                 Case{3000, 0, 3000, 600, 0, 0}, Case{257, 3, 250, 1, 0, 0},
                 Case{257, 3, 250, 0, 0, 0}, Case{6000, 2000, 1500, 256, 310, 77}}) {
    for (bool causal : {false, true}) {
      for (bool with_global : {false, true}) {
        SCOPED_TRACE("first " + std::to_string(c.first) + " m " + std::to_string(c.m) + " w " +
                     std::to_string(c.window) + (causal ? " causal" : "") +
                     (with_global ? " +global" : ""));
        const int64_t kv_begin = std::max<int64_t>(0, c.first - c.window) + c.kv_cut_lo;
        const int64_t kv_end =
            (causal ? c.first + c.m : std::min(c.n_record, c.first + c.m + c.window)) - c.kv_cut_hi;
        const int64_t kvc = kv_end - kv_begin;
        DeviceBuffer dq = up_act(round_bf16(rnd(c.m * d, 61, -2, 2)), DType::kBF16);
        DeviceBuffer dk = up_act(round_bf16(rnd(kvc * d, 62, -2, 2)), DType::kBF16);
        DeviceBuffer dv = up_act(round_bf16(rnd(kvc * d, 63)), DType::kBF16);
        DeviceBuffer dal = up(rnd(H, 64, 0.5, 1.5)), dg = up(rnd(c.m * d, 65)), dout(c.m * d * 2);
        const BandRun r{c.n_record, c.first, c.m, c.window, kv_begin, kv_end, causal};
        kern::AttentionParams p = band_params(r, H, dq, dk, dv, dal, dout);
        p.global_in = with_global ? dg.as<float>() : nullptr;
        std::vector<uint16_t> ref;
        for (const char* v : {"wg", "wgs3"}) {
          SCOPED_TRACE(v);
          cuda::memset_device(dout.get(), 0xff, c.m * d * 2);
          launch_band_in_two(p, v);
          auto got = down<uint16_t>(dout, c.m * d);
          if (ref.empty()) {
            ref = got;
            EXPECT_TRUE(
                std::none_of(got.begin(), got.end(), [](uint16_t b) { return b == 0xffff; }));
          } else {
            ASSERT_EQ(got, ref);
          }
        }
      }
    }
  }
}

TEST(CudaOps, BandKernelFrozenOffsetsAgree) {
  SKIP_WITHOUT_GPU();
  if (!kern::wgmma_available()) GTEST_SKIP() << "no sm_90a device: the wgmma kernels do not run";
  // wgstat (a row's softmax offset frozen after the first tile where it sees a key) against wg
  // (running max): the same softmax up to rounding, every row written, for unaligned shards,
  // windows of 1 to beyond a tile span, key ranges cut on both sides, bidirectional and causal;
  // scores of ordinary size and 4x larger (P above 1 where a first tile with few visible keys
  // has a low max).
  const int64_t H = 2, d = H * 64;
  struct Case {
    int64_t n_record, first, m, window, cut_lo, cut_hi;
  };
  for (float qs : {2.0f, 8.0f}) {
    for (Case c : {Case{5000, 1100, 900, 100, 0, 0}, Case{5000, 1100, 900, 256, 0, 0},
                   Case{3000, 0, 3000, 600, 0, 0}, Case{257, 3, 250, 1, 0, 0},
                   Case{6000, 2000, 1500, 256, 310, 77}}) {
      for (bool causal : {false, true}) {
        SCOPED_TRACE("q scale " + std::to_string(qs) + " first " + std::to_string(c.first) + " w " +
                     std::to_string(c.window) + (causal ? " causal" : ""));
        const auto q = round_bf16(rnd(c.n_record * d, 71, -qs, qs));
        const auto k = round_bf16(rnd(c.n_record * d, 72, -2, 2));
        const auto v = round_bf16(rnd(c.n_record * d, 73));
        BandRun r{c.n_record, c.first, c.m, c.window, 0, 0, causal};
        r.kv_begin = std::max<int64_t>(0, c.first - c.window) + c.cut_lo;
        r.kv_end =
            (causal ? c.first + c.m : std::min(c.n_record, c.first + c.m + c.window)) - c.cut_hi;
        const auto ref = run_band(r, q, k, v, H, "wg");
        const auto got = run_band(r, q, k, v, H, "wgstat");
        double worst = 0, scale = 0;
        for (size_t i = 0; i < ref.size(); ++i) {
          ASSERT_NE(got[i], 0xffff) << "row " << i / d << " not written";
          const float a = cuda::from_bf16(got[i]), b = cuda::from_bf16(ref[i]);
          ASSERT_TRUE(std::isfinite(a)) << i;
          worst = std::max(worst, (double)std::fabs(a - b));
          scale = std::max(scale, (double)std::fabs(b));
        }
        EXPECT_LE(worst, 8e-3 * scale) << "largest |wgstat - wg| " << worst << " of " << scale;
      }
    }
  }
}

TEST(CudaOps, BandKernelFrozenOffsetsRowInvariantAndRedone) {
  SKIP_WITHOUT_GPU();
  if (!kern::wgmma_available()) GTEST_SKIP() << "no sm_90a device: the wgmma kernels do not run";
  // Head 0: every q row 3 to 3.5 in every channel and two "spike" keys far above the others: a
  // row that sees a spike in a later tile than its first gets l >= 2^64 (or an overflow) under
  // the frozen offset, so the exact pass redoes it: the bits of wg. Spikes of +6 overflow (~195
  // log2 units above the first tile's max); spikes of +3 stay finite (~90-120 units) and are
  // redone for l, with alpha = 2^-30 (alpha / l would be subnormal without the redo). A NaN in
  // a V row: every NaN output has wg's bits. Head 1: ordinary scores. Bidirectional and causal;
  // with finite inputs a shard's rows (any first row; its window of keys, or all keys) have the
  // whole record's bits.
  const int64_t H = 2, d = H * 64, n = 4000, w = 256;
  const int64_t spikes[] = {700, 2100};
  struct Scenario {
    float spike, alpha;
    int64_t nan_v;  // a V row set to NaN (head 1), or -1
  };
  for (Scenario sc :
       {Scenario{6.0f, 1.0f, -1}, Scenario{3.0f, 0x1p-30f, -1}, Scenario{6.0f, 1.0f, 3333}}) {
    for (bool causal : {false, true}) {
      SCOPED_TRACE("spike " + std::to_string(sc.spike) + " alpha " + std::to_string(sc.alpha) +
                   " nan row " + std::to_string(sc.nan_v) + (causal ? " causal" : ""));
      auto q = rnd(n * d, 81, -2, 2), k = rnd(n * d, 82, -2, 2), v = round_bf16(rnd(n * d, 83));
      for (int64_t i = 0; i < n; ++i)
        for (int64_t c = 0; c < 64; ++c) q[i * d + c] = 3.0f + 0.5f * (q[i * d + c] + 2.0f) / 4.0f;
      for (int64_t s : spikes)
        for (int64_t c = 0; c < 64; ++c) k[s * d + c] = sc.spike;
      if (sc.nan_v >= 0) v[sc.nan_v * d + 64 + 5] = std::nanf("");
      q = round_bf16(q);
      k = round_bf16(k);
      const BandRun whole{n, 0, n, w, 0, n, causal};
      const auto ref = run_band(whole, q, k, v, H, "wg", sc.alpha);
      const auto got = run_band(whole, q, k, v, H, "wgstat", sc.alpha);
      int64_t redone = 0, nans = 0;
      for (int64_t i = 0; i < n; ++i) {
        const int64_t first_tile = std::max<int64_t>(0, i - w) / 64;
        bool later_spike = false;
        for (int64_t s : spikes)
          later_spike |=
              (causal ? s <= i && i - s <= w : std::llabs(s - i) <= w) && s / 64 > first_tile;
        if (!later_spike) continue;
        ++redone;
        for (int64_t c = 0; c < 64; ++c)
          ASSERT_EQ(got[i * d + c], ref[i * d + c]) << "row " << i << " (a spike in a later tile)";
      }
      EXPECT_GT(redone, causal ? 200 : 500);
      for (size_t i = 0; i < got.size(); ++i) {
        const float a = cuda::from_bf16(got[i]), b = cuda::from_bf16(ref[i]);
        if (std::isnan(b)) {
          ++nans;
          ASSERT_EQ(got[i], ref[i]) << "row " << i / d << " channel " << i % d << " (NaN)";
        } else {
          ASSERT_NEAR(a, b, 8e-3 * std::max(1.0f, sc.alpha))
              << "row " << i / d << " channel " << i % d;
        }
      }
      if (sc.nan_v >= 0) {
        EXPECT_GT(nans, 0);
        continue;  // shard invariance is for finite inputs (docs/model.md)
      }
      // Shards: windows of keys as a shard's halo gives them, and one with every key.
      struct Part {
        int64_t first, m;
        bool all_keys;
      };
      for (Part pt : {Part{1100, 1500, false}, Part{1100, 700, false}, Part{1, 900, false},
                      Part{2999, 1001, false}, Part{1100, 700, true}}) {
        SCOPED_TRACE("shard from " + std::to_string(pt.first) + " of " + std::to_string(pt.m) +
                     (pt.all_keys ? ", every key" : ""));
        const int64_t lo = pt.all_keys ? 0 : std::max<int64_t>(0, pt.first - w);
        const int64_t hi = pt.all_keys ? n : std::min(n, pt.first + pt.m + (causal ? 0 : w));
        const BandRun shard{n, pt.first, pt.m, w, lo, hi, causal};
        const auto part = run_band(shard, q, k, v, H, "wgstat", sc.alpha);
        for (int64_t i = 0; i < pt.m * d; ++i)
          ASSERT_EQ(part[i], got[pt.first * d + i])
              << "row " << pt.first + i / d << " channel " << i % d;
      }
    }
  }
}

TEST(CudaOps, FusedGlobalBandBitIdentical) {
  SKIP_WITHOUT_GPU();
  if (!kern::wgmma_available()) GTEST_SKIP() << "no sm_90a device: the wgmma kernels do not run";
  // The fused kernel (the global part, then each warpgroup's band rows, adding the global part
  // from shared memory) against its two halves (wgpipe into the float scratch, then the band
  // kernel reading it back), bit for bit: unaligned shards, windows of 1 to beyond a tile span,
  // key ranges cut on both sides, rows written in two launches, bidirectional and causal, with
  // the frozen band (wgfused against wgstat) and the running max (wgfused-wg against wg). With
  // spikes, head 0's rows that see a spike key after their first tile leave the frozen pass
  // (l >= 2^64 or an overflow) and take the exact pass: the warpgroup-wide vote and the redo.
  // With late globals every global key sits after the shard: causal rows see none (blocks with
  // no global tile). Then as the model calls it: out aliasing q, one launch; and a launch of a
  // middle row range alone writes those rows and no other.
  const int64_t H = 2, d = H * 64;
  struct Case {
    int64_t n_record, first, m, window, cut_lo, cut_hi;
    bool spikes, late_globals = false;
  };
  for (Case c : {Case{5000, 1100, 900, 100, 0, 0, false}, Case{5000, 1100, 900, 256, 0, 0, true},
                 Case{3000, 0, 3000, 600, 0, 0, false}, Case{257, 3, 250, 1, 0, 0, false},
                 Case{6000, 2000, 1500, 256, 310, 77, true},
                 Case{5000, 1100, 900, 256, 0, 0, false, true}}) {
    for (bool causal : {false, true}) {
      SCOPED_TRACE("first " + std::to_string(c.first) + " m " + std::to_string(c.m) + " w " +
                   std::to_string(c.window) + (causal ? " causal" : "") +
                   (c.spikes ? " spikes" : ""));
      const int64_t kv_begin = std::max<int64_t>(0, c.first - c.window) + c.cut_lo;
      const int64_t kv_end =
          (causal ? c.first + c.m : std::min(c.n_record, c.first + c.m + c.window)) - c.cut_hi;
      const int64_t kvc = kv_end - kv_begin, G = std::min<int64_t>(700, c.n_record / 2);
      auto q = rnd(c.m * d, 101, -2, 2), k = rnd(kvc * d, 102, -2, 2);
      if (c.spikes) {
        for (int64_t i = 0; i < c.m; ++i)
          for (int64_t ch = 0; ch < 64; ++ch)
            q[i * d + ch] = 3.0f + 0.5f * (q[i * d + ch] + 2.0f) / 4.0f;
        for (int64_t s : {c.first + c.m / 3, c.first + 2 * c.m / 3})
          for (int64_t ch = 0; ch < 64; ++ch) k[(s - kv_begin) * d + ch] = 6.0f;
      }
      std::vector<int64_t> gpos = random_positions(G, c.n_record, 106);
      if (c.late_globals) {  // in [first + m, n_record)
        gpos = random_positions(G, c.n_record - c.first - c.m, 106);
        for (auto& x : gpos) x += c.first + c.m;
      }
      GlobalCase gc(q, rnd(G * d, 103, -2, 2), rnd(G * d, 104), 105, gpos, c.n_record, c.first);
      DeviceBuffer dk = up_act(k, DType::kBF16), dv = up_act(rnd(kvc * d, 107), DType::kBF16);
      DeviceBuffer dal = up(rnd(H, 108, 0.5, 1.5)), dout(c.m * d * 2);
      const BandRun r{c.n_record, c.first, c.m, c.window, kv_begin, kv_end, causal};
      kern::AttentionParams p = band_params(r, H, gc.dq, dk, dv, dal, dout);
      p.k_global = gc.p.k_global;
      p.v_global = gc.p.v_global;
      p.gamma = gc.p.gamma;
      p.pos_global = gc.p.pos_global;
      p.n_global = gc.p.n_global;
      p.beta = gc.p.beta;
      p.global_scratch = gc.p.global_scratch;
      const int64_t third = c.m / 3;
      for (auto [band, fused] : {std::pair{"wgstat", "wgfused"}, std::pair{"wg", "wgfused-wg"}}) {
        SCOPED_TRACE(fused);
        std::vector<uint16_t> out[2];
        for (int fuse = 0; fuse < 2; ++fuse) {
          cuda::memset_device(dout.get(), 0xff, c.m * d * 2);
          for (auto [r0, r1] : {std::pair<int64_t, int64_t>{0, third}, {third, c.m}}) {
            p.row_begin = r0;
            p.row_end = r1;
            p.global_in = nullptr;
            kern::launch_global_wgmma(p, fuse ? fused : "wgpipe", nullptr);
            if (!fuse) {
              p.global_in = gc.p.global_scratch;
              kern::launch_band_wgmma(p, band, nullptr);
            }
          }
          out[fuse] = down<uint16_t>(dout, c.m * d);
        }
        EXPECT_TRUE(
            std::none_of(out[1].begin(), out[1].end(), [](uint16_t b) { return b == 0xffff; }));
        for (int64_t i = 0; i < c.m * d; ++i)
          ASSERT_EQ(out[1][i], out[0][i]) << "row " << i / d << " channel " << i % d;
        p.global_in = nullptr;
        {  // in place, one launch: out is q
          DeviceBuffer dqa = up_act(q, DType::kBF16);
          kern::AttentionParams pa = p;
          pa.q = pa.out = dqa.get();
          pa.row_begin = 0;
          pa.row_end = c.m;
          kern::launch_global_wgmma(pa, fused, nullptr);
          const auto got = down<uint16_t>(dqa, c.m * d);
          for (int64_t i = 0; i < c.m * d; ++i)
            ASSERT_EQ(got[i], out[0][i]) << "in place: row " << i / d << " channel " << i % d;
        }
        // the middle third alone: its rows, and nothing outside them
        cuda::memset_device(dout.get(), 0xff, c.m * d * 2);
        p.row_begin = third;
        p.row_end = 2 * third;
        kern::launch_global_wgmma(p, fused, nullptr);
        const auto mid = down<uint16_t>(dout, c.m * d);
        for (int64_t i = 0; i < c.m * d; ++i) {
          const bool inside = i / d >= third && i / d < 2 * third;
          ASSERT_EQ(mid[i], inside ? out[0][i] : uint16_t{0xffff})
              << "middle range: row " << i / d << " channel " << i % d;
        }
      }
    }
  }
}

TEST(CudaOps, GlobalKernelFixedOffsetsAgree) {
  SKIP_WITHOUT_GPU();
  if (!kern::wgmma_available()) GTEST_SKIP() << "no sm_90a device: the wgmma kernels do not run";
  // wgstat (fixed softmax offsets after the first key tile, global_wg_kernel's STAT) against wg
  // (running max): the same softmax up to rounding, for scores of ordinary size (every warp
  // fixes its offsets), larger (the offsets are the Cauchy-Schwarz bound, 2^-40 and below for
  // the largest P), far larger (bound - first max > 140: warps keep the running max), and a
  // first key tile much weaker than the rest; bidirectional and causal.
  using C = GlobalCase;
  const int64_t m = C::m, d = C::d;
  struct Case {
    float qscale, tile0_scale;
    int64_t first = C::first;  // 0: causal rows before or among the first key tile's positions
  };
  for (Case c : {Case{1, 1}, Case{6, 1}, Case{25, 1}, Case{5, 0.01f}, Case{1, 1, 0}}) {
    auto q = rnd(m * d, 41, -2, 2), kg = rnd(C::G * d, 42, -2, 2);
    for (auto& x : q) x *= c.qscale;
    for (int64_t i = 0; i < 128 * d; ++i) kg[i] *= c.tile0_scale;
    GlobalCase gc(q, kg, rnd(C::G * d, 43), 44);
    kern::AttentionParams& p = gc.p;
    DeviceBuffer& scratch = gc.scratch;
    p.first_pos = c.first;
    for (bool causal : {false, true}) {
      SCOPED_TRACE("q x " + std::to_string(c.qscale) + ", first tile x " +
                   std::to_string(c.tile0_scale) + ", first row " + std::to_string(c.first) +
                   (causal ? ", causal" : ""));
      p.causal = causal;
      kern::launch_global_wgmma(p, "wg", nullptr);
      const auto ref = down<float>(scratch, m * d);
      // wgpipe*: the same kernel pipelined (row sums by FADD, not the ones column); its three
      // shapes (warpgroups a block, stages) give the same bits.
      std::vector<uint32_t> pipe_bits;
      for (const char* v : {"wgstat", "wgpipe", "wgpipe3", "wgpipe2"}) {
        cuda::memset_device(scratch.get(), 0xff, m * d * 4);
        kern::launch_global_wgmma(p, v, nullptr);
        const auto got = down<float>(scratch, m * d);
        ASSERT_TRUE(std::all_of(got.begin(), got.end(), [](float x) { return std::isfinite(x); }))
            << v;
        const double e = rel_err(got, ref);
        std::printf(
            "[ attention ] %s (fixed offsets) vs running max: q x %g, first tile x %g, first row "
            "%lld%s: %.3g\n",
            v, c.qscale, c.tile0_scale, (long long)c.first, causal ? ", causal" : "", e);
        EXPECT_LE(e, 1e-2) << v;
        if (std::string(v).rfind("wgpipe", 0) == 0) {
          const auto bits = down<uint32_t>(scratch, m * d);
          if (pipe_bits.empty())
            pipe_bits = bits;
          else
            EXPECT_EQ(bits, pipe_bits) << v;
        }
      }
    }
  }
}

TEST(CudaOps, GlobalKernelFixedOffsetsRowInvariant) {
  SKIP_WITHOUT_GPU();
  if (!kern::wgmma_available()) GTEST_SKIP() << "no sm_90a device: the wgmma kernels do not run";
  // Whether a row fixes its softmax offset depends on that row alone: rows 5.. of the record
  // give the same bits when the shard starts at row 5, though row 2 (scores too large to fix,
  // in the same warp of 16 rows) is then not in it.
  using C = GlobalCase;
  const int64_t m = C::m, d = C::d, off = 5;
  auto q = rnd(m * d, 51, -2, 2);
  for (int64_t i = 2 * d; i < 3 * d; ++i) q[i] *= 60.0f;
  GlobalCase gc(q, rnd(C::G * d, 52, -2, 2), rnd(C::G * d, 53), 54);
  kern::AttentionParams& p = gc.p;
  for (const char* v : {"wgstat", "wgpipe", "wgpipe2", "wgpipe3"}) {
    for (bool causal : {false, true}) {
      SCOPED_TRACE(std::string(v) + (causal ? " causal" : " bidirectional"));
      p.causal = causal;
      p.q = gc.dq.get();
      p.first_pos = C::first;
      p.n_tokens = p.row_end = m;
      kern::launch_global_wgmma(p, v, nullptr);
      const auto ref = down<uint32_t>(gc.scratch, m * d);
      p.q = static_cast<const char*>(gc.dq.get()) + off * d * 2;
      p.first_pos = C::first + off;
      p.n_tokens = p.row_end = m - off;
      cuda::memset_device(gc.scratch.get(), 0xff, m * d * 4);
      kern::launch_global_wgmma(p, v, nullptr);
      const auto got = down<uint32_t>(gc.scratch, (m - off) * d);
      EXPECT_TRUE(std::equal(got.begin(), got.end(), ref.begin() + off * d));
    }
  }
}

TEST(CudaOps, GlobalKernelPipelinedEdgeShapes) {
  SKIP_WITHOUT_GPU();
  if (!kern::wgmma_available()) GTEST_SKIP() << "no sm_90a device: the wgmma kernels do not run";
  // The pipelined global kernel's edge shapes against the running-max kernel, row by row: fewer
  // global keys than one tile (one partial tile), a whole number of tiles (no partial one), and
  // causal rows before every global key (blocks without a tile: exact zeros).
  const int64_t m = 1500, d = GlobalCase::d, n_record = 4000;
  for (int64_t G : {100, 256}) {
    std::vector<int64_t> pos = random_positions(G, n_record - 1000, 90 + G);
    for (auto& x : pos) x += 1000;  // every global key at position >= 1000
    GlobalCase gc(rnd(m * d, 91, -2, 2), rnd(G * d, 92, -2, 2), rnd(G * d, 93), 94, pos, n_record,
                  0);
    kern::AttentionParams& p = gc.p;
    DeviceBuffer& scratch = gc.scratch;
    for (bool causal : {false, true}) {
      p.causal = causal;
      kern::launch_global_wgmma(p, "wg", nullptr);
      const auto ref = down<float>(scratch, m * d);
      for (const char* v : {"wgpipe", "wgpipe2", "wgpipe3"}) {
        SCOPED_TRACE(std::string(v) + " G " + std::to_string(G) + (causal ? " causal" : ""));
        cuda::memset_device(scratch.get(), 0xff, m * d * 4);
        kern::launch_global_wgmma(p, v, nullptr);
        const auto got = down<float>(scratch, m * d);
        for (int64_t i = 0; i < m; ++i) {
          float big = 0.0f, err = 0.0f;
          for (int64_t j = 0; j < d; ++j) {
            big = std::max(big, std::fabs(ref[i * d + j]));
            err = std::max(err, std::fabs(got[i * d + j] - ref[i * d + j]));
          }
          if (causal && i < pos[0]) {  // no global key at or before the row
            ASSERT_EQ(big, 0.0f) << "row " << i;
            ASSERT_EQ(err, 0.0f) << "row " << i;
          } else {
            ASSERT_GT(big, 0.0f) << "row " << i;
            ASSERT_LE(err, 1e-2f * big) << "row " << i;
          }
        }
      }
    }
  }
}

TEST(CudaOps, AttentionHundredThousandTokens) {
  SKIP_WITHOUT_GPU();
  // Many query tiles and key tiles; the CPU checks sampled row ranges (edges and middle).
  const std::vector<std::pair<int64_t, int64_t>> rows = {{0, 300}, {49900, 50200}, {99700, 100000}};
  for (bool causal : {false, true}) {
    AttnCase a{100000, 0, 100000, 2, 64, 256, 1024, causal, DType::kBF16, false, rows};
    EXPECT_LE(attention_error(a, 11), 1e-2);
    a.type = DType::kF32;
    EXPECT_LE(attention_error(a, 12), 2e-5);
  }
}

TEST(CudaOps, ElementwiseGeluPoolRc) {
  SKIP_WITHOUT_GPU();
  const int64_t n = 1003, d = 24;
  auto x = rnd(n * d, 14, -4, 4);
  {  // GELU
    std::vector<float> ref(x.size());
    for (size_t i = 0; i < x.size(); ++i) ref[i] = cpu::gelu(x[i]);
    DeviceBuffer din = up(x), d32(n * d * 4), d16(n * d * 2);
    kern::launch_gelu({din.as<float>(), d32.get(), DType::kF32, n * d}, nullptr);
    kern::launch_gelu({din.as<float>(), d16.get(), DType::kBF16, n * d}, nullptr);
    EXPECT_LE(rel_err(down<float>(d32, n * d), ref), 1e-6);  // device erf vs glibc: ulps
    EXPECT_LE(rel_err(down_act(d16, n * d, DType::kBF16), ref), 1e-2);
    // bf16 in, bf16 out, in place (the model's MLP in bf16 mode).
    std::vector<float> ref16(x.size());
    const auto xb = round_bf16(x);
    for (size_t i = 0; i < x.size(); ++i) ref16[i] = cpu::gelu(xb[i]);
    DeviceBuffer db = up_act(x, DType::kBF16);
    kern::launch_gelu({nullptr, db.get(), DType::kBF16, n * d, db.get()}, nullptr);
    EXPECT_LE(rel_err(down_act(db, n * d, DType::kBF16), ref16), 1e-2);
    // n * d % 8 == 0 took the 8-a-thread kernel; a count that is not (the 2-a-thread kernel)
    // gives the same bits.
    DeviceBuffer dc = up_act(x, DType::kBF16);
    kern::launch_gelu({nullptr, dc.get(), DType::kBF16, n * d - 2, dc.get()}, nullptr);
    const auto g8 = down_act(db, n * d, DType::kBF16), g2 = down_act(dc, n * d, DType::kBF16);
    EXPECT_TRUE(std::equal(g2.begin(), g2.end() - 2, g8.begin()));
    EXPECT_EQ(g2.back(), xb.back());  // past the count: untouched
    // The table (the model's path in bf16 mode): the same bits as computing, for every one of
    // the 65536 bf16 inputs (NaN included) and for the data above.
    DeviceBuffer table(65536 * 2), all(65536 * 2), dt = up_act(x, DType::kBF16);
    kern::launch_gelu_table(table.get(), nullptr);
    std::vector<uint16_t> bits(65536);
    for (int b = 0; b < 65536; ++b) bits[b] = (uint16_t)b;
    DeviceBuffer dall = up(bits);
    kern::launch_gelu({nullptr, all.get(), DType::kBF16, 65536, dall.get()}, nullptr);
    EXPECT_EQ(down<uint16_t>(table, 65536), down<uint16_t>(all, 65536));
    kern::launch_gelu({nullptr, dt.get(), DType::kBF16, n * d, dt.get(), table.get()}, nullptr);
    EXPECT_EQ(down<uint16_t>(dt, n * d), down<uint16_t>(db, n * d));
  }
  {  // pooling: bins of 10 (last short), as pool_shard
    const int64_t bin = 10, nb = (n + bin - 1) / bin;
    std::vector<float> ref;
    for (int64_t b0 = 0; b0 < n; b0 += bin) {
      const int64_t b1 = std::min(n, b0 + bin);
      for (int64_t j = 0; j < d; ++j) {
        double acc = 0;
        for (int64_t i = b0; i < b1; ++i) acc += x[i * d + j];
        ref.push_back((float)(acc / (double)(b1 - b0)));
      }
    }
    DeviceBuffer dy = up(x), dp(nb * d * 4);
    kern::launch_pool({dy.as<float>(), dp.as<float>(), n, d, bin}, nullptr);
    EXPECT_EQ(down<float>(dp, nb * d), ref);
    // reversed (the reverse-complement pass): bin k over rows n - 1 - t, t in bin k, in t order.
    std::vector<float> ref_r;
    for (int64_t b0 = 0; b0 < n; b0 += bin) {
      const int64_t b1 = std::min(n, b0 + bin);
      for (int64_t j = 0; j < d; ++j) {
        double acc = 0;
        for (int64_t t = b0; t < b1; ++t) acc += x[(n - 1 - t) * d + j];
        ref_r.push_back((float)(acc / (double)(b1 - b0)));
      }
    }
    kern::PoolParams pr{dy.as<float>(), dp.as<float>(), n, d, bin};
    pr.reversed = true;
    kern::launch_pool(pr, nullptr);
    EXPECT_EQ(down<float>(dp, nb * d), ref_r);
  }
  {  // reverse complement of tokens and the average of the two strands
    std::vector<int32_t> tok = {2, 3, 4, 5, 6, 3, 3, 0, 1};
    const std::vector<int32_t> want = {1, 0, 6, 6, 3, 4, 5, 6, 2};
    DeviceBuffer dt = up(tok), dr(tok.size() * 4);
    kern::launch_rc_tokens({dt.as<int32_t>(), dr.as<int32_t>(), (int64_t)tok.size()}, nullptr);
    EXPECT_EQ(down<int32_t>(dr, tok.size()), want);
    auto y2 = rnd(n * d, 15);
    std::vector<float> ref(n * d);
    for (int64_t t = 0; t < n; ++t)
      for (int64_t j = 0; j < d; ++j)
        ref[t * d + j] = (x[t * d + j] + y2[(n - 1 - t) * d + j]) * 0.5f;
    DeviceBuffer df = up(x), drc = up(y2);
    kern::launch_rc_average({df.as<float>(), drc.as<float>(), df.as<float>(), n, d}, nullptr);
    EXPECT_EQ(down<float>(df, n * d), ref);
  }
}

namespace {

ModelConfig small_config(int64_t d, int64_t heads, int64_t window, bool causal, int64_t gmax) {
  ModelConfig c;
  c.d_model = d;
  c.n_layers = 2;
  c.n_heads = heads;
  c.d_ff = 2 * d;
  c.window = window;
  c.causal = causal;
  c.global_every = 64;
  c.global_min = gmax > 0 ? 1 : 0;
  c.global_max = gmax;
  c.router_hidden = 32;
  c.validate();
  return c;
}

std::vector<int32_t> dna(int64_t n, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::vector<int32_t> t(n);
  for (int64_t i = 0; i < n; ++i) t[i] = 2 + (int32_t)(g() % 5);
  for (int64_t i = n / 3; i < n / 3 + std::min<int64_t>(200, n / 4); ++i) t[i] = 3;  // a run
  return t;
}

struct Compared {
  double err;
  double overlap;  // of the global sets over all layers
  bool identical;
  bool layer0_identical;  // layer 0's global set (its scores come from the embeddings alone)
};

Compared compare_model(const ModelConfig& c, int64_t n, bool bf16, int64_t chunk_rows = 65536) {
  ModelWeights w = init_model(c, 42);
  auto tok = dna(n, 7);
  auto comm = make_single_comm();
  const Shard sh = shard_of(n, 0, 1);
  ForwardOutput ref = forward(w, tok.data(), sh, *comm);
  CudaModel gpu(w, {bf16, -1, chunk_rows});
  ForwardOutput got = gpu.forward(tok.data(), sh, *comm);
  EXPECT_EQ(got.n_global, ref.n_global);
  EXPECT_EQ(got.y.size(), ref.y.size());
  const int64_t G = ref.n_global;
  Compared r{rel_err(got.y, ref.y), 1.0, got.global_positions == ref.global_positions,
             G == 0 || std::equal(ref.global_positions.begin(), ref.global_positions.begin() + G,
                                  got.global_positions.begin())};
  if (G > 0) {
    int64_t same = 0;
    for (int64_t l = 0; l < c.n_layers; ++l) {
      std::set<int64_t> a(ref.global_positions.begin() + l * G,
                          ref.global_positions.begin() + (l + 1) * G);
      for (int64_t j = 0; j < G; ++j) same += a.count(got.global_positions[l * G + j]);
    }
    r.overlap = (double)same / (double)(c.n_layers * G);
  }
  std::printf("[ model ] n=%lld d=%lld %s %s: max err %.3g (rel), global overlap %.4f%s\n",
              (long long)n, (long long)c.d_model, bf16 ? "bf16" : "fp32",
              c.causal ? "causal" : "bidirectional", r.err, r.overlap,
              r.identical ? " (identical)" : "");
  return r;
}

}  // namespace

TEST(CudaModel, Fp32MatchesCpu) {
  SKIP_WITHOUT_GPU();
  for (bool causal : {false, true}) {
    for (int64_t heads : {2, 4}) {  // head_dim 64 and 32
      Compared r = compare_model(small_config(128, heads, 32, causal, 64), 3000, false);
      EXPECT_LE(r.err, 1e-5);  // docs/reliability.md: ~1e-6
      EXPECT_TRUE(r.identical);
    }
  }
}

TEST(CudaModel, Bf16WithinBound) {
  SKIP_WITHOUT_GPU();
  for (bool causal : {false, true}) {
    Compared r = compare_model(small_config(128, 2, 32, causal, 64), 3000, true);
    EXPECT_LE(r.err, 2e-2);  // docs/reliability.md: ~8e-3, at least 95.8% of the global set
    EXPECT_GE(r.overlap, 0.9);
    EXPECT_TRUE(r.layer0_identical);
  }
}

TEST(CudaModel, WindowBeyondRecordAndNoGlobal) {
  SKIP_WITHOUT_GPU();
  for (bool causal : {false, true}) {
    Compared r = compare_model(small_config(128, 2, 5000, causal, 0), 1500, false);
    EXPECT_LE(r.err, 1e-4);
    r = compare_model(small_config(128, 2, 5000, causal, 64), 1500, true);
    EXPECT_LE(r.err, 5e-2);
    // window 0: W(i) = {i} (the band of one key), with no global tokens and with every token
    // global (G = n). A routed set of G < n hinges on near-ties there: a token's context is its
    // own id, so many layer-1 scores differ only in their last bits, and the CPU and the GPU
    // sum in other orders (measured: fp32 sets 62.5% alike at G = 24; Reference.WindowZero).
    for (bool all_global : {false, true}) {
      ModelConfig c = small_config(128, 2, 0, causal, all_global ? 5000 : 0);
      if (all_global) c.global_every = 1;
      r = compare_model(c, 1500, false);
      EXPECT_LE(r.err, 1e-5);
      EXPECT_TRUE(r.identical);
    }
  }
}

TEST(CudaModel, AttentionChunksBitIdentical) {
  SKIP_WITHOUT_GPU();
  // Queries, attention and W_o run over attention chunks; any chunking (aligned to 128 record
  // positions, or below one tile) gives the same bits as one chunk, in both precisions.
  ModelConfig c = small_config(128, 2, 256, false, 512);  // head_dim 64: the split global part
  const int64_t n = 20000;
  ModelWeights w = init_model(c, 42);
  auto tok = dna(n, 9);
  auto comm = make_single_comm();
  const Shard sh = shard_of(n, 0, 1);
  for (bool bf16 : {true, false}) {
    SCOPED_TRACE(bf16 ? "bf16" : "fp32");
    CudaOptions one{bf16, -1, 4096};
    ForwardOutput ref = CudaModel(w, one).forward(tok.data(), sh, *comm);
    for (int64_t ac : {3000, 100}) {
      CudaOptions o = one;
      o.attn_chunk_rows = ac;
      ForwardOutput got = CudaModel(w, o).forward(tok.data(), sh, *comm);
      EXPECT_TRUE(got.y == ref.y) << "attention chunk " << ac;
      EXPECT_TRUE(got.global_positions == ref.global_positions) << "attention chunk " << ac;
    }
  }
}

TEST(CudaModel, ProjectionChunksBitIdentical) {
  SKIP_WITHOUT_GPU();
  // The projections, the router and the MLP run over chunks of chunk_rows rows (0: automatic,
  // 131072 here); a row's bits do not depend on the chunking (the GEMMs' algorithms are fixed per
  // shape, not per number of rows), in both precisions.
  ModelConfig c = small_config(128, 2, 256, false, 512);
  const int64_t n = 20000;
  ModelWeights w = init_model(c, 43);
  auto tok = dna(n, 10);
  auto comm = make_single_comm();
  const Shard sh = shard_of(n, 0, 1);
  for (bool bf16 : {true, false}) {
    SCOPED_TRACE(bf16 ? "bf16" : "fp32");
    ForwardOutput ref = CudaModel(w, {bf16, -1, 4096}).forward(tok.data(), sh, *comm);
    for (int64_t cr : {0, 1000, 7777}) {
      ForwardOutput got = CudaModel(w, {bf16, -1, cr}).forward(tok.data(), sh, *comm);
      EXPECT_TRUE(got.y == ref.y) << "chunk rows " << cr;
      EXPECT_TRUE(got.global_positions == ref.global_positions) << "chunk rows " << cr;
    }
  }
}

TEST(CudaModel, PooledOutputIsThePoolOfTheRowsOnBothStrands) {
  SKIP_WITHOUT_GPU();
  // kPooled gives the bin means of the rows kHost returns; for a mirrored shard (the reverse
  // pass of --rc-average) bin k pools the rows that mirror forward bin k, bit for bit.
  ModelConfig c = small_config(128, 2, 64, false, 64);
  const int64_t n = 1000, bin = 64, nb = (n + bin - 1) / bin, d = c.d_model;
  ModelWeights w = init_model(c, 7);
  auto tok = dna(n, 11);
  auto comm = make_single_comm();
  for (bool mirrored : {false, true}) {
    SCOPED_TRACE(mirrored ? "mirrored" : "forward");
    const Shard sh = shard_of(n, 0, 1, 1, mirrored);
    CudaOptions host{true, -1, 4096};
    CudaOptions pooled = host;
    pooled.output = CudaOutput::kPooled;
    pooled.pool_bin = bin;
    const ForwardOutput rows = CudaModel(w, host).forward(tok.data(), sh, *comm);
    const ForwardOutput got = CudaModel(w, pooled).forward(tok.data(), sh, *comm);
    ASSERT_EQ(got.pooled_bin, bin);
    ASSERT_EQ((int64_t)got.y.size(), nb * d);
    for (int64_t k = 0; k < nb; ++k) {
      const int64_t t0 = k * bin, t1 = std::min(n, t0 + bin);
      for (int64_t j = 0; j < d; ++j) {
        double acc = 0;
        for (int64_t t = t0; t < t1; ++t) acc += rows.y[(mirrored ? n - 1 - t : t) * d + j];
        ASSERT_EQ(got.y[k * d + j], (float)(acc / (double)(t1 - t0))) << "bin " << k << " " << j;
      }
    }
  }
}

TEST(CudaModel, RcAverageOnTheDeviceIsTheHostAverage) {
  SKIP_WITHOUT_GPU();
  // forward_rc_average (both passes, averaged on the device, one copy back) gives the bits of two
  // forwards averaged on the host by rc_average_rows, and the forward pass's global sets.
  ModelConfig c = small_config(128, 2, 64, false, 64);
  const int64_t n = 3000, d = c.d_model;
  ModelWeights w = init_model(c, 7);
  auto tok = dna(n, 12);
  auto rc = tok;
  reverse_complement(rc);
  auto comm = make_single_comm();
  CudaOptions host{true, -1, 4096};
  const Shard sh = shard_of(n, 0, 1, 1), mir = shard_of(n, 0, 1, 1, true);
  CudaModel model(w, host);
  ForwardOutput a = model.forward(tok.data(), sh, *comm);
  const ForwardOutput r = model.forward(rc.data() + mir.begin, mir, *comm);
  rc_average_rows(a.y, r.y, n, d);
  std::vector<uint16_t> a16(a.y.size());
  h5::float_to_f16(a.y.data(), a16.data(), (int64_t)a.y.size());
  for (bool on_device : {true, false}) {  // false: the host fallback (no room on the device)
    SCOPED_TRACE(on_device ? "averaged on the device" : "averaged on the host");
    CudaOptions o = host;
    o.rc_on_device = on_device;
    // Float16 rows (sparsa embed --dtype float16 --pool none): the host conversion's bits.
    o.rows_f16 = true;
    const ForwardOutput h =
        CudaModel(w, o).forward_rc_average(tok.data(), sh, rc.data() + mir.begin, mir, *comm);
    EXPECT_TRUE(h.y.empty());
    EXPECT_TRUE(h.y16 == a16);
    o.rows_f16 = false;
    CudaModel m2(w, o);
    int calls = 0;
    ForwardHooks hooks;
    hooks.after_layer = [&](int64_t) { ++calls; };
    const ForwardOutput b =
        m2.forward_rc_average(tok.data(), sh, rc.data() + mir.begin, mir, *comm, hooks);
    EXPECT_EQ(calls, 2 * c.n_layers);
    ASSERT_EQ(a.y.size(), b.y.size());
    EXPECT_TRUE(a.y == b.y);
    EXPECT_EQ(a.global_positions, b.global_positions);
    EXPECT_EQ(a.global_scores, b.global_scores);
    // The model is left as it was: plain forwards still copy their rows back.
    EXPECT_EQ(m2.forward(tok.data(), sh, *comm).y.size(), (size_t)(n * d));
  }
  CudaOptions pooled = host;
  pooled.output = CudaOutput::kPooled;
  EXPECT_THROW(CudaModel(w, pooled).forward_rc_average(tok.data(), sh, rc.data(), mir, *comm),
               SystemError);
}

TEST(CudaModel, ImageGemmMlpBitIdentical) {
  SKIP_WITHOUT_GPU();
  if (!kern::wgmma_available()) GTEST_SKIP() << "no sm_90a device: the wgmma kernels do not run";
  // SPARSA_MLP_GEMM=images (the fused up projection + GELU of kernels/gemm) gives the bits of
  // cuBLASLt + the GELU table over a whole model, chunks of 4096 rows with a ragged last one.
  ModelConfig c = small_config(128, 2, 64, false, 512);
  const int64_t n = 20000;
  ModelWeights w = init_model(c, 3);
  auto tok = dna(n, 21);
  auto comm = make_single_comm();
  const Shard sh = shard_of(n, 0, 1);
  const ForwardOutput ref = CudaModel(w, {true, -1, 4096}).forward(tok.data(), sh, *comm);
  setenv("SPARSA_MLP_GEMM", "images", 1);
  CudaModel model(w, {true, -1, 4096});
  unsetenv("SPARSA_MLP_GEMM");
  const ForwardOutput got = model.forward(tok.data(), sh, *comm);
  EXPECT_TRUE(got.y == ref.y);
  EXPECT_TRUE(got.global_positions == ref.global_positions);
  setenv("SPARSA_MLP_GEMM", "images", 1);
  EXPECT_THROW(CudaModel(w, {false, -1, 4096}), ConfigError);  // fp32 mode has no image GEMM
  setenv("SPARSA_MLP_GEMM", "fast", 1);
  EXPECT_THROW(CudaModel(w, {true, -1, 4096}), ConfigError);
  unsetenv("SPARSA_MLP_GEMM");
}

TEST(CudaModel, SplitRouterCloseToFloat32Router) {
  SKIP_WITHOUT_GPU();
  // bf16 mode scores the router with the split GEMM (router_split.hpp); SPARSA_ROUTER=exact with
  // the float32 GEMM. On layer 0 (same input) the global sets agree and the scores are within the
  // bound; later layers see inputs that differ at bf16 rounding level, so only the overlap is
  // checked there. fp32 mode always uses the float32 GEMM.
  ModelConfig c = small_config(128, 2, 64, false, 512);
  c.n_layers = 3;
  const int64_t n = 30000, G = c.n_global(n);
  auto tok = dna(n, 13);
  auto comm = make_single_comm();
  const Shard sh = shard_of(n, 0, 1);
  ModelWeights w = init_model(c, 5);
  setenv("SPARSA_ROUTER", "exact", 1);
  CudaModel exact(w, {true, -1, 4096});
  unsetenv("SPARSA_ROUTER");
  const ForwardOutput ref = exact.forward(tok.data(), sh, *comm);
  EXPECT_FALSE(exact.split_router());
  CudaModel model(w, {true, -1, 4096});
  const ForwardOutput got = model.forward(tok.data(), sh, *comm);
  EXPECT_TRUE(model.split_router());
  EXPECT_TRUE(model.fused_router());
  // the unfused passes, and the mma.sync kernel (the default is the wgmma one on an sm_90a GPU):
  // the same arithmetic in other orders
  for (const char* mode : {"split", "fused-mma"}) {
    SCOPED_TRACE(mode);
    setenv("SPARSA_ROUTER", mode, 1);
    CudaModel other(w, {true, -1, 4096});
    unsetenv("SPARSA_ROUTER");
    const ForwardOutput got2 = other.forward(tok.data(), sh, *comm);
    EXPECT_TRUE(other.split_router());
    EXPECT_EQ(other.fused_router(), std::string(mode) != "split");
    std::set<int64_t> a(got.global_positions.begin(), got.global_positions.begin() + G);
    int64_t common = 0;
    for (int64_t j = 0; j < G; ++j) common += a.count(got2.global_positions[j]);
    EXPECT_GE(common, G - 1);
  }
  CudaModel fp32(w, {false, -1, 4096});
  fp32.forward(tok.data(), sh, *comm);
  EXPECT_FALSE(fp32.split_router());
  EXPECT_FALSE(fp32.fused_router());
  int64_t same = 0, same0 = 0;
  double worst = 0;
  const LayerWeights& L0 = w.layers[0];
  const double bound =
      cuda::make_router_split(L0.router_w1.data(), L0.router_b1.data(), L0.router_w2.data(),
                              L0.router_b2[0], L0.attn_norm.data(), c.d_model, c.router_hidden)
          .bound;
  for (int64_t l = 0; l < c.n_layers; ++l) {
    std::map<int64_t, float> a;
    for (int64_t j = 0; j < G; ++j)
      a[ref.global_positions[l * G + j]] = ref.global_scores[l * G + j];
    for (int64_t j = 0; j < G; ++j)
      if (auto it = a.find(got.global_positions[l * G + j]); it != a.end()) {
        ++same;
        if (l > 0) continue;
        ++same0;
        worst = std::max(worst, std::fabs((double)it->second - got.global_scores[l * G + j]));
      }
  }
  const double overlap = (double)same / (double)(c.n_layers * G);
  std::printf(
      "[ router ] n=%lld G=%lld: split vs float32 router: layer 0 overlap %.4f, max score "
      "difference %.3g (bound %.3g); all layers overlap %.4f\n",
      (long long)n, (long long)G, (double)same0 / (double)G, worst, bound, overlap);
  EXPECT_GE(same0, G - 1);
  EXPECT_LE(worst, bound);
  EXPECT_GE(overlap, 0.9);
  EXPECT_LE(rel_err(got.y, ref.y), 5e-2);

  c.router_hidden = 48;  // not a multiple of 32: auto falls back to the unfused passes
  const ModelWeights w48 = init_model(c, 6);
  CudaModel m48(w48, {true, -1, 4096});
  m48.forward(tok.data(), shard_of(3000, 0, 1), *comm);
  EXPECT_TRUE(m48.split_router());
  EXPECT_FALSE(m48.fused_router());
  setenv("SPARSA_ROUTER", "fused", 1);
  EXPECT_THROW(CudaModel(w48, {true, -1, 4096}), ConfigError);
  setenv("SPARSA_ROUTER", "fast", 1);
  EXPECT_THROW(CudaModel(w, {true, -1, 4096}), ConfigError);
  unsetenv("SPARSA_ROUTER");
}

TEST(CudaModel, HundredThousandTokensInChunks) {
  SKIP_WITHOUT_GPU();
  ModelConfig c = small_config(128, 2, 256, false, 512);
  Compared r = compare_model(c, 100000, false, 16384);
  EXPECT_LE(r.err, 1e-4);
  EXPECT_TRUE(r.identical);
  r = compare_model(c, 100000, true, 16384);
  EXPECT_LE(r.err, 5e-2);
}

TEST(CudaModel, ProgressHookOncePerLayerInOrder) {
  SKIP_WITHOUT_GPU();
  // The hook of layer l runs after the GPU finished layer l, while layer l + 1 is queued: once per
  // layer, in order, the last one too. A hook that throws ends the forward with its exception,
  // and the next forward of the same model gives the bits of a fresh model.
  ModelConfig c = small_config(64, 2, 16, false, 16);
  c.n_layers = 4;
  ModelWeights w = init_model(c, 3);
  auto tok = dna(3000, 5);
  auto comm = make_single_comm();
  const Shard sh = shard_of(3000, 0, 1);
  CudaModel gpu(w, {true, -1, 65536});
  std::vector<int64_t> seen;
  ForwardHooks hooks;
  hooks.after_layer = [&](int64_t l) { seen.push_back(l); };
  const ForwardOutput first = gpu.forward(tok.data(), sh, *comm, hooks);
  EXPECT_EQ(seen, (std::vector<int64_t>{0, 1, 2, 3}));
  hooks.after_layer = [&](int64_t l) {
    if (l == 1) throw Interrupted("stop");
  };
  EXPECT_THROW(gpu.forward(tok.data(), sh, *comm, hooks), Interrupted);
  const ForwardOutput again = gpu.forward(tok.data(), sh, *comm);
  EXPECT_TRUE(again.y == first.y);
  EXPECT_TRUE(again.global_positions == first.global_positions);
}

TEST(CudaModel, RouterNaNIsAnError) {
  SKIP_WITHOUT_GPU();
  ModelConfig c = small_config(64, 2, 16, false, 8);
  ModelWeights w = init_model(c, 1);
  w.layers[0].router_b2[0] = NAN;
  auto tok = dna(500, 3);
  auto comm = make_single_comm();
  CudaModel gpu(w, {false, -1, 65536});
  EXPECT_THROW(gpu.forward(tok.data(), shard_of(500, 0, 1), *comm), NumericError);
}

TEST(CudaModel, NonFiniteOutputNamesThePosition) {
  SKIP_WITHOUT_GPU();
  // An infinite final_norm gain makes dimension 3 of every row infinite; the error names the
  // first row (record position 0) and the dimension, in both modes.
  ModelConfig c = small_config(64, 2, 16, false, 8);
  ModelWeights w = init_model(c, 1);
  w.final_norm[3] = INFINITY;
  auto tok = dna(500, 3);
  auto comm = make_single_comm();
  for (bool bf16 : {false, true}) {
    CudaModel gpu(w, {bf16, -1, 65536});
    try {
      gpu.forward(tok.data(), shard_of(500, 0, 1), *comm);
      ADD_FAILURE() << "no error";
    } catch (const NumericError& e) {
      EXPECT_NE(std::string(e.what()).find("position 0, dimension 3"), std::string::npos)
          << e.what();
    }
  }
  // Finite, but past float16's range (|y| >= 65520) in float16 rows (CudaOptions::rows_f16): an
  // error naming the row (record position) and column.
  w.final_norm[3] = 1e5f;
  CudaOptions o{true, -1, 65536};
  o.rows_f16 = true;
  CudaModel gpu(w, o);
  try {
    gpu.forward(tok.data(), shard_of(500, 0, 1), *comm);
    ADD_FAILURE() << "no error";
  } catch (const NumericError& e) {
    EXPECT_NE(std::string(e.what()).find(", column 3: a value past float16's range"),
              std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("output row "), std::string::npos) << e.what();
  }
}

// Short records side by side on one GPU (sparsa embed's SidePipe): several models of
// the same weights, each driven by its own host thread, give every record the bits one model
// gives it alone, records one after another.
TEST(CudaModel, ModelsSideBySideGiveTheSameBits) {
  SKIP_WITHOUT_GPU();
  const ModelConfig c = small_config(128, 2, 32, false, 64);
  ModelWeights w = init_model(c, 42);
  std::vector<std::vector<int32_t>> recs;
  for (int i = 0; i < 24; ++i) recs.push_back(dna(100 + 37 * i, 100 + i));
  auto comm = make_single_comm();
  CudaOptions pooled;
  pooled.output = CudaOutput::kPooled;
  pooled.pool_bin = 50;
  CudaOptions f16_rows;
  f16_rows.rows_f16 = true;
  for (const CudaOptions& opt : {CudaOptions{}, pooled, f16_rows}) {
    std::vector<ForwardOutput> ref(recs.size()), got(recs.size());
    {
      CudaModel one(w, opt);
      for (size_t i = 0; i < recs.size(); ++i)
        ref[i] = one.forward(recs[i].data(), shard_of((int64_t)recs[i].size(), 0, 1), *comm);
    }
    const int kModels = 4;
    std::vector<std::unique_ptr<CudaModel>> models;
    for (int m = 0; m < kModels; ++m) models.push_back(std::make_unique<CudaModel>(w, opt));
    std::atomic<size_t> next{0};
    std::vector<std::thread> threads;
    for (int m = 0; m < kModels; ++m)
      threads.emplace_back([&, m] {
        auto self = make_single_comm();
        for (size_t i; (i = next++) < recs.size();)
          got[i] =
              models[m]->forward(recs[i].data(), shard_of((int64_t)recs[i].size(), 0, 1), *self);
      });
    for (auto& t : threads) t.join();
    for (size_t i = 0; i < recs.size(); ++i) {
      EXPECT_FALSE(got[i].y.empty() && got[i].y16.empty()) << "record " << i;
      EXPECT_EQ(got[i].y, ref[i].y) << "record " << i;
      EXPECT_EQ(got[i].y16, ref[i].y16) << "record " << i;
      EXPECT_EQ(got[i].global_positions, ref[i].global_positions) << "record " << i;
      EXPECT_EQ(got[i].global_scores, ref[i].global_scores) << "record " << i;
    }
  }
}

// Short records packed into one pass (CudaModel::forward_packed, sparsa embed's short records):
// every record gets the bits its own forward pass gives it, in fp32 and bf16 (the tensor-core
// kernels at head_dim 64), bidirectional and causal, rows or bins (forward and mirrored), for
// lengths from 1 token to the packing limit, where the set is the whole record (G = n), one
// token, or capped. Layer 0 ranks tied scores (a record's equal tokens score the same).
TEST(CudaModel, PackedRecordsGiveTheirOwnBits) {
  SKIP_WITHOUT_GPU();
  const int64_t lengths[] = {1, 2, 5, 33, 64, 100, 129, 300, 777, 2000, 5000, 8192, 16384};
  auto comm = make_single_comm();
  struct Case {
    ModelConfig c;
    bool bf16;
    CudaOutput output;
  };
  std::vector<Case> cases;
  for (bool bf16 : {false, true})
    for (bool causal : {false, true})
      cases.push_back({small_config(128, 2, 32, causal, 4096), bf16, CudaOutput::kHost});
  cases.push_back({small_config(128, 2, 256, false, 64), true, CudaOutput::kPooled});
  cases.push_back({small_config(64, 2, 16, false, 0), true, CudaOutput::kHost});  // no set
  ModelConfig ts = small_config(128, 2, 32, false, 64);  // 3 channels: 3 tokens a row
  ts.kind = ModelKind::kTimeseries;
  ts.channels = 3;
  ts.ts_bins = 16;
  ts.validate();
  cases.push_back({ts, true, CudaOutput::kHost});
  for (const Case& k : cases) {
    SCOPED_TRACE(std::string(k.bf16 ? "bf16" : "fp32") + (k.c.causal ? " causal" : "") +
                 " window " + std::to_string(k.c.window) +
                 (k.output == CudaOutput::kPooled ? " pooled" : ""));
    ModelWeights w = init_model(k.c, 42);
    CudaOptions opt{k.bf16, -1, 0};
    opt.output = k.output;
    opt.pool_bin = 50;
    std::vector<std::vector<int32_t>> recs;
    std::vector<CudaModel::PackedItem> items;
    const int64_t tables = k.c.n_tables();
    for (int64_t n : lengths) {
      recs.push_back(dna(n * tables, 1000 + n));
      for (int32_t& t : recs.back()) t = 3 + t % (int32_t)(k.c.vocab() - 3);
    }
    for (size_t i = 0; i < recs.size(); ++i)  // every other one as a mirrored pass
      items.push_back({recs[i].data(), (int64_t)recs[i].size() / tables, i % 2 == 1});
    CudaModel gpu(w, opt);
    ASSERT_EQ(gpu.packed_max_tokens(), 16384);  // an H200's 227 KB of shared memory a block
    const std::vector<CudaModel::PackedResult> got = gpu.forward_packed(items);
    ASSERT_EQ(got.size(), items.size());
    for (size_t i = 0; i < items.size(); ++i) {
      SCOPED_TRACE("record of " + std::to_string(items[i].n) + " tokens");
      ASSERT_FALSE(got[i].error);
      const ForwardOutput ref =
          gpu.forward(recs[i].data(), shard_of(items[i].n, 0, 1, 1, items[i].mirrored), *comm);
      EXPECT_EQ(got[i].out.n_global, ref.n_global);
      EXPECT_EQ(got[i].out.pooled_bin, ref.pooled_bin);
      EXPECT_FALSE(got[i].out.y.empty());
      EXPECT_TRUE(got[i].out.y == ref.y);
      EXPECT_EQ(got[i].out.global_positions, ref.global_positions);
      EXPECT_EQ(got[i].out.global_scores, ref.global_scores);
    }
  }
}

// forward_packed's float16 rows are a record's own (converted on the device); and a record whose
// router score is not finite (here: its one T, embedded as NaN) gets its own error while the
// records beside it come back whole.
TEST(CudaModel, PackedFloat16RowsAndAnErrorOfItsOwn) {
  SKIP_WITHOUT_GPU();
  const ModelConfig c = small_config(128, 2, 32, false, 64);
  ModelWeights w = init_model(c, 3);
  auto comm = make_single_comm();
  CudaOptions opt{true, -1, 0};
  opt.rows_f16 = true;
  std::vector<std::vector<int32_t>> recs;
  for (int64_t n : {40, 300, 1000}) {  // A, C and G only
    std::vector<int32_t> t = dna(n, n);
    for (int32_t& v : t) v = 3 + v % 3;
    recs.push_back(t);
  }
  {
    CudaModel gpu(w, opt);
    std::vector<CudaModel::PackedItem> items;
    for (auto& r : recs) items.push_back({r.data(), (int64_t)r.size(), false});
    const auto got = gpu.forward_packed(items);
    for (size_t i = 0; i < recs.size(); ++i) {
      ASSERT_FALSE(got[i].error);
      const ForwardOutput ref = gpu.forward(recs[i].data(), shard_of(items[i].n, 0, 1), *comm);
      ASSERT_FALSE(ref.y16.empty());
      EXPECT_TRUE(got[i].out.y16 == ref.y16) << "record " << i;
      EXPECT_TRUE(got[i].out.y.empty());
    }
  }
  // Token 6 (T) embedded as NaN: the middle record holds one T, at position 17.
  for (int64_t j = 0; j < c.d_model; ++j) w.embed[0][6 * c.d_model + j] = NAN;
  recs[1][17] = 6;
  CudaModel gpu(w, CudaOptions{true, -1, 0});
  std::vector<CudaModel::PackedItem> items;
  for (auto& r : recs) items.push_back({r.data(), (int64_t)r.size(), false});
  const auto got = gpu.forward_packed(items);
  ASSERT_TRUE(got[1].error);
  try {
    std::rethrow_exception(got[1].error);
  } catch (const NumericError& e) {
    EXPECT_NE(std::string(e.what()).find("router score at position 17 is not finite"),
              std::string::npos)
        << e.what();
  }
  for (size_t i : {size_t{0}, size_t{2}}) {
    ASSERT_FALSE(got[i].error) << "record " << i;
    const ForwardOutput ref = gpu.forward(recs[i].data(), shard_of(items[i].n, 0, 1), *comm);
    EXPECT_TRUE(got[i].out.y == ref.y) << "record " << i;
  }
}

// forward_packed's output check, per record: an infinite final_norm gain makes dimension 3 of
// every row infinite, so each record's error names its own first row (record position 0, not its
// row in the pack) in every output mode; a finite gain past float16's range does the same for
// float16 rows (the conversion's check, "output row 0, column 3").
TEST(CudaModel, PackedOutputErrorsNameEachRecordsOwnRow) {
  SKIP_WITHOUT_GPU();
  const ModelConfig c = small_config(128, 2, 32, false, 64);
  ModelWeights w = init_model(c, 5);
  std::vector<std::vector<int32_t>> recs;
  for (int64_t n : {40, 300, 1000}) recs.push_back(dna(n, 7 + n));
  std::vector<CudaModel::PackedItem> items;
  for (auto& r : recs) items.push_back({r.data(), (int64_t)r.size(), false});
  auto message = [](const CudaModel::PackedResult& r) -> std::string {
    if (!r.error) return "no error";
    try {
      std::rethrow_exception(r.error);
    } catch (const NumericError& e) {
      return e.what();
    }
    return "";
  };
  w.final_norm[3] = INFINITY;
  for (CudaOutput output : {CudaOutput::kHost, CudaOutput::kPooled}) {
    CudaOptions opt{true, -1, 0};
    opt.output = output;
    opt.pool_bin = 50;
    CudaModel gpu(w, opt);
    const auto got = gpu.forward_packed(items);
    ASSERT_EQ(got.size(), items.size());
    for (size_t i = 0; i < got.size(); ++i)
      EXPECT_NE(message(got[i]).find("non-finite value at record position 0, dimension 3"),
                std::string::npos)
          << "record " << i << ": " << message(got[i]);
  }
  w.final_norm[3] = 1e5f;
  CudaOptions opt{true, -1, 0};
  opt.rows_f16 = true;
  CudaModel gpu(w, opt);
  const auto got = gpu.forward_packed(items);
  for (size_t i = 0; i < got.size(); ++i)
    EXPECT_NE(message(got[i]).find("output row 0, column 3: a value past float16's range"),
              std::string::npos)
        << "record " << i << ": " << message(got[i]);
}

// A mean pool's block sums of rows y [n, d] (pool_shard's): the double sums of B rows each, in
// row order.
static std::vector<double> mean_block_sums(const std::vector<float>& y, int64_t n, int64_t d,
                                           int64_t B) {
  std::vector<double> sums;
  for (int64_t b0 = 0; b0 < n; b0 += B)
    for (int64_t j = 0; j < d; ++j) {
      double acc = 0;
      for (int64_t t = b0; t < std::min(n, b0 + B); ++t) acc += (double)y[t * d + j];
      sums.push_back(acc);
    }
  return sums;
}

// A long record under --pool mean (CudaOptions::mean_block): only the block sums come back, and
// they are the double sums, in row order, of the rows the same model returns without it (plain
// and --rc-average averaged on the device); where the device averages nothing
// (rc_on_device false) the rows come back as before.
TEST(CudaModel, MeanBlocksOfALongRecordAreItsRowsSums) {
  SKIP_WITHOUT_GPU();
  const ModelConfig c = small_config(128, 2, 32, false, 64);
  ModelWeights w = init_model(c, 9);
  auto comm = make_single_comm();
  const int64_t d = c.d_model, B = 64;
  CudaOptions rows_opt{true, -1, 0};
  CudaOptions mean_opt = rows_opt;
  mean_opt.mean_block = B;
  CudaModel rows(w, rows_opt), means(w, mean_opt);
  for (int64_t n : {1, 64, 65, 1000, 20000}) {
    SCOPED_TRACE("record of " + std::to_string(n) + " tokens");
    std::vector<int32_t> t = dna(n, 70 + n), rc = t;
    reverse_complement(rc);
    const Shard sh = shard_of(n, 0, 1, B), mir = shard_of(n, 0, 1, B, true);
    const ForwardOutput ref = rows.forward(t.data(), sh, *comm);
    const ForwardOutput got = means.forward(t.data(), sh, *comm);
    EXPECT_TRUE(got.y.empty());
    EXPECT_EQ(got.block_sums.size(), (size_t)((n + B - 1) / B * d));
    EXPECT_TRUE(got.block_sums == mean_block_sums(ref.y, n, d, B));
    EXPECT_EQ(got.global_positions, ref.global_positions);
    const ForwardOutput ref_rc = rows.forward_rc_average(t.data(), sh, rc.data(), mir, *comm);
    const ForwardOutput got_rc = means.forward_rc_average(t.data(), sh, rc.data(), mir, *comm);
    EXPECT_TRUE(got_rc.y.empty());
    EXPECT_TRUE(got_rc.block_sums == mean_block_sums(ref_rc.y, n, d, B));
  }
  mean_opt.rc_on_device = false;  // both passes' rows to the host: sparsa embed pools them there
  CudaModel host_avg(w, mean_opt);
  std::vector<int32_t> t = dna(300, 3), rc = t;
  reverse_complement(rc);
  const ForwardOutput r = host_avg.forward_rc_average(t.data(), shard_of(300, 0, 1, B), rc.data(),
                                                      shard_of(300, 0, 1, B, true), *comm);
  EXPECT_TRUE(r.block_sums.empty());
  EXPECT_TRUE(r.y == rows.forward_rc_average(t.data(), shard_of(300, 0, 1, B), rc.data(),
                                             shard_of(300, 0, 1, B, true), *comm)
                         .y);
}

// forward_packed's pairs (--rc-average) and mean blocks: rows averaged on the device are
// forward_rc_average's (float32 and float16 rows); a mean pool's block sums are the double sums
// of those rows' blocks in row order (pool_shard's); bins are each pass's bins (the reverse pass
// mirrored) with their means averaged, halves first.
TEST(CudaModel, PackedPairsAndMeansAreTheRecordsOwn) {
  SKIP_WITHOUT_GPU();
  const ModelConfig c = small_config(128, 2, 32, false, 64);
  ModelWeights w = init_model(c, 5);
  auto comm = make_single_comm();
  const int64_t d = c.d_model, B = 64;
  std::vector<std::vector<int32_t>> recs, rcs;
  for (int64_t n : {1, 63, 64, 65, 300, 1111}) {
    recs.push_back(dna(n, 50 + n));
    rcs.push_back(recs.back());
    reverse_complement(rcs.back());
  }
  std::vector<CudaModel::PackedItem> pairs;
  for (size_t i = 0; i < recs.size(); ++i) {
    pairs.push_back({recs[i].data(), (int64_t)recs[i].size(), false});
    pairs.push_back({rcs[i].data(), (int64_t)rcs[i].size(), true});
  }
  for (bool f16 : {false, true}) {  // rows, and rows averaged then pooled as a mean
    SCOPED_TRACE(f16 ? "float16 rows" : "float32 rows");
    CudaOptions opt{true, -1, 0};
    opt.rows_f16 = f16;
    CudaModel gpu(w, opt);
    const auto got = gpu.forward_packed(pairs, {true, 0});
    ASSERT_EQ(got.size(), recs.size());
    CudaOptions f32 = opt;
    f32.rows_f16 = false;
    CudaModel rows32(w, f32);
    const auto means = rows32.forward_packed(pairs, {true, B});
    for (size_t i = 0; i < recs.size(); ++i) {
      const int64_t n = (int64_t)recs[i].size();
      SCOPED_TRACE("record of " + std::to_string(n) + " tokens");
      ASSERT_FALSE(got[i].error);
      const ForwardOutput ref = gpu.forward_rc_average(
          recs[i].data(), shard_of(n, 0, 1), rcs[i].data(), shard_of(n, 0, 1, 1, true), *comm);
      EXPECT_TRUE(got[i].out.y == ref.y);
      EXPECT_TRUE(got[i].out.y16 == ref.y16);
      EXPECT_EQ(got[i].out.global_positions, ref.global_positions);
      if (f16) continue;
      ASSERT_FALSE(means[i].error);
      EXPECT_TRUE(means[i].out.block_sums == mean_block_sums(ref.y, n, d, B));
      EXPECT_TRUE(means[i].out.y.empty());
    }
  }
  CudaOptions bins{true, -1, 0};
  bins.output = CudaOutput::kPooled;
  bins.pool_bin = 50;
  CudaModel gpu(w, bins);
  const auto got = gpu.forward_packed(pairs, {true, 0});
  for (size_t i = 0; i < recs.size(); ++i) {
    const int64_t n = (int64_t)recs[i].size();
    SCOPED_TRACE("bins of a record of " + std::to_string(n) + " tokens");
    ASSERT_FALSE(got[i].error);
    const ForwardOutput f = gpu.forward(recs[i].data(), shard_of(n, 0, 1), *comm);
    const ForwardOutput r = gpu.forward(rcs[i].data(), shard_of(n, 0, 1, 1, true), *comm);
    ASSERT_EQ(f.y.size(), r.y.size());
    std::vector<float> avg(f.y.size());
    for (size_t k = 0; k < avg.size(); ++k) avg[k] = 0.5f * f.y[k] + 0.5f * r.y[k];
    EXPECT_EQ(got[i].out.pooled_bin, 50);
    EXPECT_TRUE(got[i].out.y == avg);
  }
}

// A pack that does not fit on the GPU is OutOfMemory (sparsa embed then runs the records side by
// side), and the model still gives a record its own bits afterwards; release_packed gives the
// pack's own buffers back (sparsa embed: before a long record, or one that ran out of memory).
TEST(CudaModel, PackedOutOfMemoryLeavesTheModelUsable) {
  SKIP_WITHOUT_GPU();
  const ModelConfig c = small_config(128, 2, 32, false, 64);
  ModelWeights w = init_model(c, 9);
  auto comm = make_single_comm();
  std::vector<int32_t> one = dna(500, 1);
  const ForwardOutput ref =
      CudaModel(w, {true, -1, 0}).forward(one.data(), shard_of(500, 0, 1), *comm);
  CudaModel gpu(w, {true, -1, 0});
  std::vector<std::vector<int32_t>> recs;
  std::vector<CudaModel::PackedItem> items;
  for (int i = 0; i < 64; ++i) recs.push_back(dna(gpu.packed_max_tokens(), 10 + i));
  for (auto& r : recs) items.push_back({r.data(), (int64_t)r.size(), false});
  {
    // The buffers only a pack uses are counted, and given back by release_packed.
    const auto small = gpu.forward_packed({items[0]});
    ASSERT_FALSE(small[0].error);
    const int64_t held = gpu.device_bytes();
    gpu.release_packed();
    EXPECT_LT(gpu.device_bytes(), held - 3 * gpu.packed_max_tokens() * 128 * 2);  // Q, K, V
  }
  {
    // All but 64 MB of the GPU taken: the pack's 1M rows (~2 KB a row) cannot be had.
    size_t free_b = 0, total_b = 0;
    cuda::memory_info(&free_b, &total_b);
    ASSERT_GT(free_b, size_t{128} << 20);
    DeviceBuffer blocker(free_b - (size_t{64} << 20));
    EXPECT_THROW(gpu.forward_packed(items), OutOfMemory);
  }
  const ForwardOutput got = gpu.forward(one.data(), shard_of(500, 0, 1), *comm);
  EXPECT_TRUE(got.y == ref.y);
  EXPECT_EQ(got.global_positions, ref.global_positions);
}
