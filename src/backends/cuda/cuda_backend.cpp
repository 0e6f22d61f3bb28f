#include "backends/cuda/cuda_backend.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <future>
#include <sstream>

#include "backends/cpu/ops.hpp"
#include "backends/cuda/check.hpp"
#include "backends/cuda/gemm.hpp"
#include "backends/cuda/router_split.hpp"
#include "core/env.hpp"
#include "core/error.hpp"
#include "core/memory.hpp"
#include "dist/comm_nccl.hpp"
#include "io/h5.hpp"
#include "kernels/attention/attention.hpp"
#include "kernels/elementwise/elementwise.hpp"
#include "kernels/embed/embed.hpp"
#include "kernels/gemm/gemm.hpp"
#include "kernels/norm/norm.hpp"
#include "kernels/rope/rope.hpp"
#include "kernels/router/router.hpp"
#include "kernels/topg/topg.hpp"

namespace sparsa {

using cuda::DeviceBuffer;
using kern::DType;

namespace {

constexpr int64_t kQueryTile = 128;  // the largest query tile of the attention kernels: chunk
                                     // and interior bounds are aligned to it (record positions)

// Stages of the per-stage profile (SPARSA_PROFILE=1): the GPU time from one mark to the next is
// charged to the stage of the first.
enum Stage {
  kEmbed,
  kNorm,
  kQkv,
  kRope,
  kRouter,
  kTopG,
  kSelect,
  kGather,
  kHalo,
  kAttention,
  kWo,
  kMlpUp,
  kGelu,
  kMlpDown,
  kOutput,
  kStages
};
const char* const kStageName[kStages] = {
    "embed",          "attn RMSNorm", "QKV GEMM",      "RoPE",     "router",
    "top-G sort+D2H", "select(host)", "global gather", "halo",     "attention",
    "Wo GEMM",        "MLP norm+up",  "GELU",          "MLP down", "output"};

struct Profiler {
  bool on = false;
  std::vector<cudaEvent_t> ev;
  std::vector<int> tag;
  size_t used = 0;
  std::vector<StageTime> last;
  ~Profiler() {
    for (cudaEvent_t e : ev) cudaEventDestroy(e);
  }
  void mark(int stage, cudaStream_t s) {
    if (!on) return;
    if (used == ev.size()) {
      cudaEvent_t e;
      CUDA_OK(cudaEventCreate(&e));
      ev.push_back(e);
    }
    if (tag.size() <= used) tag.resize(used + 1);
    tag[used] = stage;
    CUDA_OK(cudaEventRecord(ev[used++], s));
  }
  // After the stream's last mark completed: sum the intervals per stage.
  void finish() {
    if (!on) return;
    last.assign(kStages, StageTime{});
    for (int i = 0; i < kStages; ++i) last[i].name = kStageName[i];
    if (used > 0) CUDA_OK(cudaEventSynchronize(ev[used - 1]));
    for (size_t i = 0; i + 1 < used; ++i) {
      float t = 0;
      CUDA_OK(cudaEventElapsedTime(&t, ev[i], ev[i + 1]));
      last[tag[i]].ms += t;
      last[tag[i]].count += 1;
    }
    used = 0;
  }
};

struct DeviceLayer {
  DeviceBuffer attn_norm, wqk, wv, wo, router_w1, router_b1, router_w2, alpha, beta, mlp_norm, w_up,
      w_down;
  float router_b2 = 0;
  DeviceBuffer router_split;                 // bf16 mode: [2d, 2r] (router_split.hpp)
  DeviceBuffer router_frags, router_images;  // bf16 mode, fused router: RouterSplit's
  DeviceBuffer w_up_img;  // bf16 mode with the image GEMM: W_up's B images (gemm.hpp)
};

// Q, K and V of the shard rows [lo, hi) (after RoPE, activation type): rows below 0 or from m on
// are halo rows of the neighbours. The attention reads its queries and band keys from one window.
struct RowWindow {
  int64_t lo = 0, hi = 0, cap = 0;  // rows held, capacity in rows
  DeviceBuffer q, k, v;
  void reserve(int64_t rows, int64_t row_bytes) {
    cap = rows;
    for (DeviceBuffer* b : {&q, &k, &v}) b->reserve(std::max<int64_t>(1, rows) * row_bytes);
    lo = hi = 0;
  }
  char* at(const DeviceBuffer& b, int64_t row, int64_t row_bytes) const {
    return b.as<char>() + (row - lo) * row_bytes;
  }
  bool holds(int64_t r0, int64_t r1) const { return r0 >= lo && r1 <= hi && r1 > r0; }
};

}  // namespace

struct CudaModel::Impl {
  ModelConfig c;
  CudaOptions opt;
  DType act;
  int64_t eb;  // bytes of one activation element
  int device = 0;
  cudaStream_t s = nullptr;
  cuda::Gemm gemm;
  DeviceBuffer embed, final_norm;
  DeviceBuffer gelu_table;  // bf16 mode: GELU of every bf16 (elementwise.hpp)
  DeviceBuffer rc_keep;     // forward_rc_average: a short record's forward rows, kept between calls
  std::vector<DeviceLayer> layers;
  int64_t weight_bytes = 0;
  // Activations, grown as needed.
  DeviceBuffer tokens, x, scores, keys, sorted, topg_temp, bad;
  DeviceBuffer h32, hact, qkv32, hid, up32, upact;
  DeviceBuffer kg, vg, gamma, gpos, gidx, kpack, vpack, pooled, gscratch, xg, rowpos;
  // The global set's scores; one rank holding the record: the selection's scratch, and every
  // layer's set and router flag, copied back once after the last layer.
  DeviceBuffer gscore, sel_keys, sel_temp, gpos_all, gscore_all, bad_all;
  // Q/K/V windows: the interior's, carried from attention chunk to chunk, and the two edges' of a
  // split record (made before the interior changes x; the halo rows land in them).
  RowWindow ring, edge_lo, edge_hi;
  // NCCL path of a split record: gathered candidates, K/V parts in rank order, the permutation
  // to the order of the global set, received halo rows.
  DeviceBuffer cand, kcat, vcat, gperm, halo_rx;
  // forward_packed: Q/K/V of every packed row, each row's position in its record, the records'
  // and their sets' offsets, the sets' packed rows, every layer's router flags, the output flags.
  DeviceBuffer pq, pk, pv, prow_pos, prow_rec, pseg, pgseg, pgrow, pbad_all, pbad_out, prc, psegs;
  // forward_packed: the per-record attention launches run on these streams, forked from and
  // joined back into s by events; each has its own global scratch where one is needed.
  std::vector<cudaStream_t> astreams;
  std::vector<cudaEvent_t> aevents;  // [0]: the fork; [1 + i]: stream i's join
  std::vector<DeviceBuffer> ascratch;
  int64_t packed_max = 0;  // the longest record forward_packed takes on this device
  // The NCCL communicator (created by the first forward over a Comm of more than one rank).
  std::unique_ptr<NcclComm> nccl;
  const Comm* nccl_host = nullptr;
  // adopt_nccl: the communicator being made on a helper thread, for forwards over nccl_pending_host
  std::future<std::unique_ptr<NcclComm>> nccl_pending;
  const Comm* nccl_pending_host = nullptr;
  // An adopted communicator never used: waited for, then destroyed (its error matters no more).
  void drop_pending_nccl() {
    if (!nccl_pending.valid()) return;
    try {
      nccl_pending.get().reset();
    } catch (...) {
    }
  }
  bool nccl_wanted() const { return opt.nccl > 0 || (opt.nccl < 0 && nccl_enabled_by_env()); }
  Profiler prof;
  bool profile_env = false;
  // bf16 mode's split router (router_split.hpp), by the fused kernel where it applies (or with
  // SPARSA_ROUTER=split: norm, GEMM and score passes); SPARSA_ROUTER=exact: the float32 GEMM.
  // Whether the last forward used the split arithmetic, and the fused kernel.
  bool router_split = true, router_fused = true, router_split_used = false,
       router_fused_used = false;
  bool router_mma_only = false;  // SPARSA_ROUTER=fused-mma: the mma.sync kernel on any GPU
  // bf16 mode, SPARSA_MLP_GEMM=images: the MLP's up projection and GELU by our fused GEMM
  // (kernels/gemm; the same bits, slower than cuBLASLt + the GELU table so far: bench/NOTES.md).
  bool mlp_images = false;
  // Rows per projection / MLP chunk in this forward (CudaOptions::chunk_rows, resolved), and
  // SPARSA_CHUNK_ROWS (0: unset).
  int64_t chunk_rows = 65536, chunk_env = 0;
  cudaEvent_t layer_done[2] = {nullptr, nullptr};  // layer ends (for the hooks), two in turn
  cuda::HostStaging staging;  // the rows' way back to the host (CudaOutput::kHost)
  // count float32 values at rows (device) into out.y, or as float16 into out.y16 (rows_f16); or
  // to hooks.rows_out in pieces of whole rows when it is set; or, with opt.mean_block, only the
  // mean pool's block sums into out.block_sums (d / 8 bytes a token cross PCIe instead of 4 d).
  // first_row: the record position of the first row (messages).
  void rows_to_host(ForwardOutput& out, const float* rows, int64_t count, const ForwardHooks& hooks,
                    int64_t first_row) {
    const int64_t d = c.d_model, n_rows = count / d, B = opt.mean_block;
    const int64_t blocks = B > 0 ? (n_rows + B - 1) / B : 0;
    bool sums = B > 0;
    if (sums) {  // (a device without room for them: the rows, which the host pools the same)
      if (first_row % B != 0) throw SystemError("rows_to_host: shard not on a mean-block edge");
      try {
        pooled.reserve(std::max<int64_t>(1, blocks) * d * 8);
      } catch (const OutOfMemory&) {
        sums = false;
      }
    }
    if (sums) {
      kern::PoolSegmentsParams pp{rows, d, nullptr, blocks};
      pp.block = B;
      pp.rows = n_rows;
      pp.sums = pooled.as<double>();
      kern::launch_pool_segments(pp, s);
      out.block_sums.resize((size_t)(blocks * d));
      cuda::copy_to_host(out.block_sums.data(), pooled.get(), (size_t)(blocks * d) * 8, s);
      cuda::synchronize(s);
      return;
    }
    if (hooks.rows_out) {
      const int64_t rb = d * (opt.rows_f16 ? 2 : 4);
      auto sink = [&](size_t off, size_t bytes, const void* host) {
        hooks.rows_out((int64_t)off / rb, (int64_t)bytes / rb, host);
      };
      if (opt.rows_f16)
        staging.copy_to_sink_f16(rows, count, (size_t)rb, s, sink, first_row);
      else
        staging.copy_to_sink(rows, (size_t)count * 4, (size_t)rb, s, sink);
      out.rows_streamed = true;
      return;
    }
    if (opt.rows_f16) {
      resize_huge(out.y16, (size_t)count);
      staging.copy_to_host_f16(out.y16.data(), rows, count, s, d, first_row);
    } else {
      resize_huge(out.y, (size_t)count);
      staging.copy_to_host(out.y.data(), rows, (size_t)count * 4, s);
    }
  }

  DeviceBuffer upload(const std::vector<float>& w, bool as_act) {
    if (as_act && act == DType::kBF16) {
      std::vector<uint16_t> b(w.size());
      cuda::to_bf16(w.data(), b.data(), (int64_t)w.size());
      DeviceBuffer d(b.size() * 2);
      cuda::copy_to_device(d.get(), b.data(), b.size() * 2);
      weight_bytes += (int64_t)d.bytes();
      return d;
    }
    DeviceBuffer d(w.size() * 4);
    cuda::copy_to_device(d.get(), w.data(), w.size() * 4);
    weight_bytes += (int64_t)d.bytes();
    return d;
  }

  int64_t activation_bytes() const {
    int64_t t = 0;
    for (const DeviceBuffer* b :
         {&tokens,     &x,       &scores,  &keys,     &sorted,   &topg_temp, &bad,      &h32,
          &hact,       &qkv32,   &hid,     &up32,     &upact,    &kg,        &vg,       &gamma,
          &gpos,       &gidx,    &kpack,   &vpack,    &gscore,   &sel_keys,  &sel_temp, &gpos_all,
          &gscore_all, &bad_all, &pooled,  &gscratch, &xg,       &rowpos,    &cand,     &kcat,
          &vcat,       &gperm,   &halo_rx, &pq,       &pk,       &pv,        &prow_pos, &prow_rec,
          &pseg,       &pgseg,   &pgrow,   &pbad_all, &pbad_out, &prc,       &psegs})
      t += (int64_t)b->bytes();
    for (const DeviceBuffer& b : ascratch) t += (int64_t)b.bytes();
    for (const RowWindow* w : {&ring, &edge_lo, &edge_hi})
      t += (int64_t)(w->q.bytes() + w->k.bytes() + w->v.bytes());
    return t;
  }

  // Router scores of rows [0, m) into `scores`; rank: then the shard's keys ranked (launch_topg).
  void route(const DeviceLayer& L, int64_t m, int64_t b, bool rank = true);
  // The projection / MLP scratch for chunks of `chunk` rows.
  void reserve_chunk(int64_t chunk) {
    const int64_t d = c.d_model;
    h32.reserve(chunk * d * 4);
    if (act == DType::kBF16) {
      hact.reserve(kern::gemm_a_bytes(chunk, d));  // the A images' rows padded to 128
      upact.reserve(chunk * c.d_ff * eb);
    }
    qkv32.reserve(chunk * 2 * d * 4);
    hid.reserve(chunk * 2 * c.router_hidden * 4);  // 2: the split router's [a | b]
    if (act == DType::kF32) up32.reserve(chunk * c.d_ff * 4);
  }
  void project(const DeviceLayer& L, const float* xr, int64_t n, int64_t first_pos,
               const int64_t* positions, void* q, void* k, void* v);
  void fill(const DeviceLayer& L, RowWindow& W, int64_t lo, int64_t hi, int64_t m, int64_t b);
  void global_kv(const DeviceLayer& L, const std::vector<int64_t>& positions, int64_t b, void* k,
                 void* v);
  void global_kv_device(const DeviceLayer& L, const int64_t* rows, const int64_t* positions,
                        int64_t n, void* k, void* v);
  void mlp(const DeviceLayer& L, int64_t m);
};

CudaModel::CudaModel(const ModelWeights& w, const CudaOptions& o) : impl_(nullptr) {
  if (o.chunk_rows < 0 || o.attn_chunk_rows <= 0)
    throw ConfigError("CUDA chunk_rows must be >= 0 (0: automatic), attn_chunk_rows positive");
  // The device first: Impl's members (the cuBLASLt handle and its workspace) are made on the
  // current device (a workspace on GPU 0 made every GEMM of rank 1 fail to launch).
  const int device = cuda::select_device(o.device);
  impl_ = std::make_unique<Impl>();
  Impl& I = *impl_;
  I.c = w.config;
  I.opt = o;
  I.act = o.bf16 ? DType::kBF16 : DType::kF32;
  const ModelConfig& c0 = w.config;
  I.eb = kern::dtype_bytes(I.act);
  I.device = device;
  I.profile_env = env_on("SPARSA_PROFILE");
  if (const char* e = std::getenv("SPARSA_MLP_GEMM")) {
    const std::string v = e;
    if (v != "cublas" && v != "images" && !v.empty())
      throw ConfigError("SPARSA_MLP_GEMM must be cublas or images, not '" + v + "'");
    I.mlp_images = v == "images";
    if (I.mlp_images &&
        (I.act != DType::kBF16 || !kern::gemm_images_supported(c0.d_ff, c0.d_model)))
      throw ConfigError(
          "SPARSA_MLP_GEMM=images needs bf16, an sm_90a GPU, d_model a multiple of 64 up to 512 "
          "and d_ff a multiple of 128");
  }
  if (const char* e = std::getenv("SPARSA_CHUNK_ROWS"); e && *e) {
    char* end = nullptr;
    const long long v = std::strtoll(e, &end, 10);
    if (*end != '\0' || v < 1024 || v > (1 << 22))
      throw ConfigError("SPARSA_CHUNK_ROWS must be a number of rows from 1024 to 4194304, not '" +
                        std::string(e) + "'");
    I.chunk_env = v;
  }
  bool router_asked = false;  // SPARSA_ROUTER=fused or fused-mma
  if (const char* e = std::getenv("SPARSA_ROUTER")) {
    const std::string v = e;
    if (v != "exact" && v != "split" && v != "fused" && v != "fused-mma" && v != "auto" &&
        !v.empty())
      throw ConfigError("SPARSA_ROUTER must be exact, split, fused, fused-mma or auto, not '" + v +
                        "'");
    I.router_split = v != "exact";
    I.router_fused = v != "exact" && v != "split";
    I.router_mma_only = v == "fused-mma";
    router_asked = v == "fused" || v == "fused-mma";
  }
  // auto: the unfused passes where the fused kernel does not apply or fit; asked for: an error
  if (I.router_fused && !kern::router_fused_fits(c0.d_model, c0.router_hidden, I.router_mma_only)) {
    if (router_asked)
      throw ConfigError(
          std::string("SPARSA_ROUTER=") + (I.router_mma_only ? "fused-mma" : "fused") +
          " needs d_model 128, 256 or 512, router_hidden a multiple of 32 and, for the mma.sync "
          "kernel (GPUs other than sm_90a, or fused-mma), up to 206 KB of shared memory a block");
    I.router_fused = false;
  }
  I.prof.on = o.profile || I.profile_env;
  I.s = cuda::create_stream();
  I.packed_max = kern::topg_segment_max_len();
  if (o.rows_f16 && o.output == CudaOutput::kHost) I.staging.reserve_f16();
  for (cudaEvent_t& e : I.layer_done) CUDA_OK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  const ModelConfig& c = I.c;
  const int64_t d = c.d_model;
  std::vector<float> tables;
  for (auto& t : w.embed) tables.insert(tables.end(), t.begin(), t.end());
  I.embed = I.upload(tables, false);
  I.final_norm = I.upload(w.final_norm, false);
  if (I.act == DType::kBF16) {
    I.gelu_table = DeviceBuffer(65536 * 2);
    kern::launch_gelu_table(I.gelu_table.get(), nullptr);
    cuda::synchronize();
  }
  for (const LayerWeights& L : w.layers) {
    DeviceLayer D;
    D.attn_norm = I.upload(L.attn_norm, false);
    std::vector<float> qk(d * 2 * d);  // [d, 2d]: row e = wq[e,:] | wk[e,:]
    for (int64_t e = 0; e < d; ++e) {
      std::copy_n(L.wq.begin() + e * d, d, qk.begin() + e * 2 * d);
      std::copy_n(L.wk.begin() + e * d, d, qk.begin() + e * 2 * d + d);
    }
    D.wqk = I.upload(qk, true);
    D.wv = I.upload(L.wv, true);
    D.wo = I.upload(L.wo, true);
    D.router_w1 = I.upload(L.router_w1, false);  // router in fp32 in both modes
    D.router_b1 = I.upload(L.router_b1, false);
    D.router_w2 = I.upload(L.router_w2, false);
    D.router_b2 = L.router_b2.at(0);
    if (I.act == DType::kBF16) {
      cuda::RouterSplit rs =
          cuda::make_router_split(L.router_w1.data(), L.router_b1.data(), L.router_w2.data(),
                                  L.router_b2.at(0), L.attn_norm.data(), d, c.router_hidden);
      D.router_split = DeviceBuffer(rs.w.size() * 2);
      cuda::copy_to_device(D.router_split.get(), rs.w.data(), rs.w.size() * 2);
      I.weight_bytes += (int64_t)D.router_split.bytes();
      if (!rs.frags.empty()) {
        D.router_frags = DeviceBuffer(rs.frags.size() * 4);
        cuda::copy_to_device(D.router_frags.get(), rs.frags.data(), rs.frags.size() * 4);
        D.router_images = DeviceBuffer(rs.images.size() * 2);
        cuda::copy_to_device(D.router_images.get(), rs.images.data(), rs.images.size() * 2);
        I.weight_bytes += (int64_t)(D.router_frags.bytes() + D.router_images.bytes());
      }
    }
    D.alpha = I.upload(L.alpha, false);
    D.beta = I.upload(L.beta, false);
    D.mlp_norm = I.upload(L.mlp_norm, false);
    if (!I.mlp_images) D.w_up = I.upload(L.w_up, true);
    if (I.mlp_images) {  // W_up only as the image GEMM's B images
      std::vector<uint16_t> b(L.w_up.size());
      cuda::to_bf16(L.w_up.data(), b.data(), (int64_t)b.size());
      const std::vector<uint16_t> img = kern::pack_gemm_b(b.data(), d, c.d_ff);
      D.w_up_img = DeviceBuffer(img.size() * 2);
      cuda::copy_to_device(D.w_up_img.get(), img.data(), img.size() * 2);
      I.weight_bytes += (int64_t)D.w_up_img.bytes();
    }
    D.w_down = I.upload(L.w_down, true);
    I.layers.push_back(std::move(D));
  }
}

void CudaModel::adopt_nccl(std::future<std::unique_ptr<NcclComm>> pending, Comm& comm) {
  Impl& I = *impl_;
  if (comm.size() < 2 || !I.nccl_wanted() || !pending.valid()) return;
  I.drop_pending_nccl();  // an earlier one, never used
  I.nccl_pending = std::move(pending);
  I.nccl_pending_host = &comm;
}

CudaModel::~CudaModel() {
  if (impl_) {
    cudaSetDevice(impl_->device);  // a model may be dropped by a thread that never used it
    impl_->drop_pending_nccl();
    cudaStreamSynchronize(impl_->s);
    impl_->nccl.reset();  // destroyed when idle, aborted otherwise (comm_nccl.hpp)
    for (cudaEvent_t e : impl_->layer_done)
      if (e) cudaEventDestroy(e);
    for (cudaEvent_t e : impl_->aevents)
      if (e) cudaEventDestroy(e);
    for (cudaStream_t st : impl_->astreams) cuda::destroy_stream(st);
    cuda::destroy_stream(impl_->s);
  }
}

int CudaModel::device() const { return impl_->device; }
const float* CudaModel::device_output() const { return impl_->x.as<float>(); }
void CudaModel::set_profile(bool on) { impl_->prof.on = on || impl_->profile_env; }
const std::vector<StageTime>& CudaModel::profile() const { return impl_->prof.last; }

std::string CudaModel::format_profile(const std::vector<StageTime>& st, int64_t n_layers) {
  double total = 0;
  for (const StageTime& t : st) total += t.ms;
  std::ostringstream o;
  char line[160];
  std::snprintf(line, sizeof line, "# profile (CUDA events; total %.2f ms)\n%-16s %10s %10s %7s\n",
                total, "stage", "ms", "ms/layer", "%");
  o << line;
  for (const StageTime& t : st) {
    if (t.count == 0) continue;
    std::snprintf(line, sizeof line, "%-16s %10.3f %10.3f %6.1f%%\n", t.name.c_str(), t.ms,
                  t.ms / (double)std::max<int64_t>(1, n_layers),
                  total > 0 ? 100 * t.ms / total : 0);
    o << line;
  }
  return o.str();
}
int64_t CudaModel::device_bytes() const { return impl_->weight_bytes + impl_->activation_bytes(); }
bool CudaModel::split_router() const { return impl_->router_split_used; }
bool CudaModel::fused_router() const { return impl_->router_fused_used; }

// The shard's router keys, best first, in `sorted` (its first min(G, m) are the shard's top G)
// and bad[0] the smallest position of a non-finite score (~0: none). Chunk by chunk. fp32 mode:
// h W1 by a float32 GEMM; bf16 mode: by the split bf16 GEMM of router_split.hpp (16-bit operands,
// float32 accumulation), unless SPARSA_ROUTER=exact.
void CudaModel::Impl::route(const DeviceLayer& L, int64_t m, int64_t b, bool rank) {
  const int64_t d = c.d_model, r = c.router_hidden;
  const bool split = router_split && act == DType::kBF16;
  const bool fused = split && router_fused && L.router_frags.get() != nullptr;
  // fused: hid holds the hidden chunks' partial sums, r / router_fused_width(r) doubles a row, so
  // one launch covers hid's 8 r chunk_rows bytes / that (32 or 64 times chunk_rows rows)
  const int64_t step =
      fused ? (int64_t)hid.bytes() / (8 * (r / kern::router_fused_width(r))) : chunk_rows;
  for (int64_t c0 = 0; c0 < m; c0 += step) {
    const int64_t rows = std::min(step, m - c0);
    prof.mark(kRouter, s);
    if (fused) {
      kern::RouterFusedParams fp{x.as<float>() + c0 * d,
                                 L.attn_norm.as<float>(),
                                 kern::router_fused_eps(c.norm_eps),
                                 L.router_frags.as<uint32_t>(),
                                 L.router_b1.as<float>(),
                                 L.router_w2.as<float>(),
                                 L.router_b2,
                                 hid.as<double>(),
                                 scores.as<float>() + c0,
                                 rows,
                                 d,
                                 r};
      fp.images = L.router_images.as<uint16_t>();
      fp.mma_only = router_mma_only;
      kern::launch_router_fused(fp, s);
      continue;
    }
    kern::RmsNormParams np{x.as<float>() + c0 * d,
                           L.attn_norm.as<float>(),
                           split ? nullptr : h32.as<float>(),
                           nullptr,
                           act,
                           rows,
                           d,
                           c.norm_eps};
    if (split) np.out_split = h32.get();  // bf16 [rows, 2d] = hi | lo: the bytes of fp32 [rows, d]
    kern::launch_rmsnorm(np, s);
    if (split)
      gemm.run(h32.get(), L.router_split.get(), hid.as<float>(), rows, 2 * r, 2 * d, DType::kBF16,
               false, s);
    else
      gemm.run(h32.get(), L.router_w1.get(), hid.as<float>(), rows, r, d, DType::kF32, false, s);
    kern::RouterParams rp{hid.as<float>(),
                          L.router_b1.as<float>(),
                          L.router_w2.as<float>(),
                          L.router_b2,
                          scores.as<float>() + c0,
                          rows,
                          r};
    rp.split = split;
    kern::launch_router(rp, s);
  }
  router_split_used = split;
  router_fused_used = fused;
  if (!rank) return;
  prof.mark(kTopG, s);
  kern::launch_topg({scores.as<float>(), m, b, keys.as<uint64_t>(), sorted.as<uint64_t>(),
                     topg_temp.get(), topg_temp.bytes(), bad.as<unsigned long long>()},
                    s);
}

// q, k, v = RoPE(RMSNorm(xr) W_q), RoPE(RMSNorm(xr) W_k), RMSNorm(xr) W_v for n float32 rows xr
// at record positions first_pos.. (or positions[], device), in projection chunks; q may be null.
// One GEMM against [W_q | W_k] and one against W_v, whatever the rows: a row's bits do not depend
// on where or with which other rows it is projected (the band, a global row, any shard). v is
// written by its GEMM in place; q and k through RoPE.
void CudaModel::Impl::project(const DeviceLayer& L, const float* xr, int64_t n, int64_t first_pos,
                              const int64_t* positions, void* q, void* k, void* v) {
  const int64_t d = c.d_model, rb = d * eb;
  const bool bf = act == DType::kBF16;
  for (int64_t c0 = 0; c0 < n; c0 += chunk_rows) {
    const int64_t rows = std::min(chunk_rows, n - c0);
    prof.mark(kNorm, s);
    kern::launch_rmsnorm({xr + c0 * d, L.attn_norm.as<float>(), bf ? nullptr : h32.as<float>(),
                          bf ? hact.get() : nullptr, act, rows, d, c.norm_eps},
                         s);
    // bf16: the projection is written as bf16 by cuBLASLt (into qkv32's memory), so RoPE reads
    // half the bytes; a row's q and k are rounded to bf16 before the rotation and after it.
    prof.mark(kQkv, s);
    const void* h = bf ? hact.get() : h32.get();
    gemm.run(h, L.wqk.get(), qkv32.get(), rows, 2 * d, d, act, false, s, act);
    gemm.run(h, L.wv.get(), static_cast<char*>(v) + c0 * rb, rows, d, d, act, false, s, act);
    prof.mark(kRope, s);
    const char* p = qkv32.as<char>();
    kern::RopeParams rp{p,
                        p + d * eb,
                        nullptr,
                        2 * d,
                        q ? static_cast<char*>(q) + c0 * rb : nullptr,
                        static_cast<char*>(k) + c0 * rb,
                        nullptr,
                        act,
                        rows,
                        c.n_heads,
                        c.head_dim(),
                        first_pos + c0,
                        c.rope_base};
    rp.positions = positions ? positions + c0 : nullptr;
    rp.in_type = act;
    kern::launch_rope(rp, s);
  }
}

// W holds rows [lo, hi) afterwards: the rows it held in that range are kept (moved to the front),
// the others in [0, m) projected from x (which must still be this layer's input there); rows
// outside [0, m) are the caller's to fill (halo).
void CudaModel::Impl::fill(const DeviceLayer& L, RowWindow& W, int64_t lo, int64_t hi, int64_t m,
                           int64_t b) {
  const int64_t d = c.d_model, rb = d * eb;
  if (hi - lo > W.cap) throw SystemError("CUDA row window: capacity exceeded");
  int64_t kept = lo;  // rows [lo, kept) carried over
  if (W.hi > W.lo && lo >= W.lo && lo < W.hi) {
    kept = std::min(W.hi, hi);
    const int64_t off = lo - W.lo, count = kept - lo;
    // Down by `off` rows in steps of at most `off` rows, so that no copy overlaps itself.
    for (DeviceBuffer* buf : {&W.q, &W.k, &W.v})
      for (int64_t i = 0; off > 0 && i < count; i += off)
        cuda::copy_device(buf->as<char>() + i * rb, buf->as<char>() + (off + i) * rb,
                          std::min(off, count - i) * rb, s);
  }
  W.lo = lo;
  W.hi = hi;
  const int64_t r0 = std::max({kept, lo, int64_t{0}}), r1 = std::min(hi, m);
  if (r1 > r0)
    project(L, x.as<float>() + r0 * d, r1 - r0, b + r0, nullptr, W.at(W.q, r0, rb),
            W.at(W.k, r0, rb), W.at(W.v, r0, rb));
}

// K and V (after RoPE) of the rows at record positions `positions` of the shard starting at b,
// in that order.
void CudaModel::Impl::global_kv(const DeviceLayer& L, const std::vector<int64_t>& positions,
                                int64_t b, void* k, void* v) {
  const int64_t n = (int64_t)positions.size();
  if (n == 0) return;
  std::vector<int64_t> rows(n);
  for (int64_t i = 0; i < n; ++i) rows[i] = positions[i] - b;
  cuda::copy_to_device(gidx.get(), rows.data(), n * 8, s);
  cuda::copy_to_device(rowpos.get(), positions.data(), n * 8, s);
  global_kv_device(L, gidx.as<int64_t>(), rowpos.as<int64_t>(), n, k, v);
}

// The same from device lists of the n shard rows and their record positions.
void CudaModel::Impl::global_kv_device(const DeviceLayer& L, const int64_t* rows,
                                       const int64_t* positions, int64_t n, void* k, void* v) {
  if (n == 0) return;
  kern::launch_gather_rows({x.get(), rows, xg.get(), n, c.d_model * 4}, s);
  project(L, xg.as<float>(), n, 0, positions, nullptr, k, v);
}

// x += GELU(RMSNorm(x) W_up) W_down, chunk by chunk.
void CudaModel::Impl::mlp(const DeviceLayer& L, int64_t m) {
  const int64_t d = c.d_model, f = c.d_ff;
  const bool bf = act == DType::kBF16;
  for (int64_t c0 = 0; c0 < m; c0 += chunk_rows) {
    const int64_t rows = std::min(chunk_rows, m - c0);
    float* xc = x.as<float>() + c0 * d;
    prof.mark(kMlpUp, s);
    kern::RmsNormParams np{xc,
                           L.mlp_norm.as<float>(),
                           bf ? nullptr : h32.as<float>(),
                           bf ? hact.get() : nullptr,
                           act,
                           rows,
                           d,
                           c.norm_eps};
    np.act_tiled = mlp_images;
    kern::launch_rmsnorm(np, s);
    if (mlp_images) {  // the GELU fused: bf16(GELU(bf16(h W_up))), the table's bits
      kern::launch_gemm_images(
          {hact.get(), L.w_up_img.get(), upact.get(), rows, f, d, true, gelu_table.as<uint16_t>()},
          s);
      prof.mark(kMlpDown, s);
      gemm.run(upact.get(), L.w_down.get(), xc, rows, d, f, act, true, s);
      continue;
    }
    // bf16: the up projection straight to bf16, GELU in place on it; fp32: GELU in place.
    void* u = bf ? upact.get() : up32.get();
    gemm.run(bf ? hact.get() : h32.get(), L.w_up.get(), u, rows, f, d, act, false, s, act);
    prof.mark(kGelu, s);
    kern::launch_gelu(
        {bf ? nullptr : up32.as<float>(), u, act, rows * f, bf ? u : nullptr, gelu_table.get()}, s);
    prof.mark(kMlpDown, s);
    gemm.run(u, L.w_down.get(), xc, rows, d, f, act, true, s);
  }
}

ForwardOutput CudaModel::forward(const int32_t* tokens_host, const Shard& shard, Comm& comm,
                                 const ForwardHooks& hooks) {
  Impl& I = *impl_;
  const ModelConfig& c = I.c;
  const int64_t n = shard.n_record, m = shard.size(), d = c.d_model, b = shard.begin;
  const int64_t G = c.n_global(n), eb = I.eb, H = c.n_heads;
  const KvRange kv = kv_range(shard, c.window, c.causal);
  const int64_t kvlo = kv.begin - b, kvhi = kv.end - b;  // shard rows with the halo
  // Rows of K/V a query row i needs besides its own: [i - back, i + lead].
  const int64_t back = c.window, lead = c.causal ? 0 : c.window;
  const HaloPlan plan = plan_halo(shard, comm.rank(), comm.size(), c.window, c.causal);
  // Projection / MLP chunks: larger ones are ~1% faster at 1M tokens (fewer, larger GEMMs;
  // bench/NOTES.md), smaller ones leave room for the longest records.
  I.chunk_rows = I.opt.chunk_rows > 0      ? I.opt.chunk_rows
                 : I.chunk_env > 0         ? I.chunk_env
                 : m <= (int64_t{1} << 24) ? 131072
                                           : 65536;
  const int64_t chunk = std::max<int64_t>(1, std::min(I.chunk_rows, m));
  // One rank holding the whole record: every chosen row is local, no host staging at all.
  const bool single = comm.size() == 1 && b == 0 && m == n;
  cudaStream_t s = I.s;
  CUDA_OK(cudaSetDevice(I.device));
  // SPARSA_PROFILE=1: host-side time stamps (s since the call) of the forward's phases
  const auto t_call = std::chrono::steady_clock::now();
  auto since_call = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t_call).count();
  };
  double t_nccl = 0, t_first = 0, t_layers = 0;
  // A split record over several ranks: exchanges device to device through NCCL unless asked for
  // host staging (SPARSA_NCCL=0). The communicator is made once, collectively over `comm`.
  const bool use_nccl = !single && comm.size() > 1 && I.nccl_wanted();
  if (use_nccl && (!I.nccl || I.nccl_host != &comm || I.nccl->size() != comm.size())) {
    I.nccl.reset();
    if (I.nccl_pending.valid() && I.nccl_pending_host == &comm)
      I.nccl = I.nccl_pending.get();  // adopted (its error, if any, rethrown here)
    else
      I.nccl = std::make_unique<NcclComm>(comm, I.device);
    I.nccl_host = &comm;
  }
  NcclComm* nc = use_nccl ? I.nccl.get() : nullptr;
  t_nccl = since_call();
  // Every rank's shard (the owner of a chosen row, the size of each rank's candidate list).
  std::vector<Shard> shards;
  if (nc)
    for (int r = 0; r < comm.size(); ++r)
      shards.push_back(shard_of(n, r, comm.size(), shard.align, shard.mirrored));
  Profiler& P = I.prof;
  P.used = 0;

  ForwardOutput out;
  out.n_global = G;
  out.global_positions.resize(c.n_layers * G);
  out.global_scores.resize(c.n_layers * G);

  // Activations (grown, kept between calls).
  I.tokens.reserve(m * c.n_tables() * 4);
  I.x.reserve(m * d * 4);
  // Attention runs over chunks of `achunk` rows: Q, K and V exist for one chunk and its band at a
  // time (the ring window), as do the global part's fp32 scratch and the attention output; only x
  // spans the shard, so the longest record is set by x (4 d bytes a token).
  const int64_t achunk = std::max<int64_t>(1, std::min(m, I.opt.attn_chunk_rows));
  const int64_t row_bytes = d * eb;
  // Interior rows read only this shard's rows; their range is aligned to query tiles in record
  // positions so that no tile straddles interior and edge rows. One rank holding the whole record:
  // everything is interior.
  int64_t lo_a = 0, hi_a = m;
  if (!single) {
    const int64_t lo = std::min(m, c.window), hi = c.causal ? m : std::max(lo, m - c.window);
    lo_a = ((b + lo + kQueryTile - 1) / kQueryTile) * kQueryTile - b;
    hi_a = ((b + hi) / kQueryTile) * kQueryTile - b;
    if (lo_a >= hi_a) lo_a = hi_a = m;  // no interior: everything is the low edge
  }
  // The edges' windows: [kvlo, lo_a + lead) and [hi_a - back, kvhi), or all of [kvlo, kvhi).
  const int64_t elo_hi = lo_a == m ? kvhi : std::min(kvhi, lo_a + lead);
  const int64_t ehi_lo = lo_a == m ? kvhi : std::max(kvlo, hi_a - back);
  I.ring.reserve(hi_a > lo_a ? std::min(hi_a - lo_a, achunk) + back + lead : 0, row_bytes);
  I.edge_lo.reserve(single ? 0 : elo_hi - kvlo, row_bytes);
  I.edge_hi.reserve(single ? 0 : kvhi - ehi_lo, row_bytes);
  I.scores.reserve(m * 4);
  I.keys.reserve(m * 8);
  I.sorted.reserve(m * 8);
  const size_t temp = kern::topg_temp_bytes(m);
  I.topg_temp.reserve(temp);
  I.bad.reserve(8);
  I.reserve_chunk(chunk);
  I.kg.reserve(G * d * eb);
  I.vg.reserve(G * d * eb);
  I.gamma.reserve(G * 4);
  I.gpos.reserve(G * 8);
  I.gscore.reserve(G * 4);
  if (single) {
    I.sel_keys.reserve(2 * G * 8);
    const size_t sel_temp = kern::topg_select_temp_bytes(G);
    I.sel_temp.reserve(sel_temp);
    I.gpos_all.reserve(c.n_layers * G * 8);
    I.gscore_all.reserve(c.n_layers * G * 4);
    I.bad_all.reserve(c.n_layers * 8);
  }
  I.gidx.reserve(G * 8);
  I.rowpos.reserve(G * 8);
  I.xg.reserve(G * d * 4);
  // beta * Global in fp32 between the global and band kernels, where they are two (attention.hpp:
  // not with the sm_90a kernel that runs both, which saves achunk x d floats, 2 GB at 1M rows)
  kern::AttentionParams probe{};
  probe.type = I.act;
  probe.head_dim = c.head_dim();
  probe.n_global = G;
  const bool split_scratch = kern::attention_needs_global_scratch(probe);
  if (split_scratch) I.gscratch.reserve(achunk * d * 4);
  if (!single) {
    I.kpack.reserve(G * d * eb);
    I.vpack.reserve(G * d * eb);
  }
  std::vector<int64_t> cand_bytes;  // NCCL path: each rank's candidate list, in bytes
  int64_t halo_rx_bytes = 0;
  if (nc) {
    int64_t total = 0;
    for (const Shard& sr : shards) {
      cand_bytes.push_back(std::min(G, sr.size()) * 8);
      total += cand_bytes.back();
    }
    I.cand.reserve(std::max<int64_t>(8, total));
    I.kcat.reserve(G * d * eb);
    I.vcat.reserve(G * d * eb);
    I.gperm.reserve(G * 8);
    for (auto& [peer, r] : plan.recvs) halo_rx_bytes += 2 * (r.end - r.begin) * row_bytes;
    I.halo_rx.reserve(std::max<int64_t>(8, halo_rx_bytes));
  }

  t_first = since_call();
  P.mark(kEmbed, s);
  cuda::copy_to_device(I.tokens.get(), tokens_host, m * c.n_tables() * 4, s);
  kern::launch_embed(
      {I.tokens.as<int32_t>(), I.embed.as<float>(), I.x.as<float>(), m, c.n_tables(), c.vocab(), d},
      s);

  std::vector<uint64_t> best;
  std::vector<int64_t> gpos(G), local_pos;
  std::vector<float> gscore(G);
  std::vector<char> kg_host, vg_host, kp_host, vp_host;
  if (!single) {
    kg_host.resize(G * row_bytes);
    vg_host.resize(G * row_bytes);
  }
  // The edge window holding shard rows [r0, r1) (halo sends and receipts).
  auto edge_of = [&](int64_t r0, int64_t r1) -> RowWindow& {
    if (I.edge_lo.holds(r0, r1)) return I.edge_lo;
    if (I.edge_hi.holds(r0, r1)) return I.edge_hi;
    throw SystemError("CUDA halo: rows " + std::to_string(b + r0) + ".." + std::to_string(b + r1) +
                      " are in no edge window");
  };

  for (int64_t l = 0; l < c.n_layers; ++l) {
    const DeviceLayer& L = I.layers[l];
    I.route(L, m, b);  // ranked on the device; the best keys are copied back below
    for (RowWindow* w : {&I.ring, &I.edge_lo, &I.edge_hi}) w->lo = w->hi = 0;
    if (!single) {  // the edges' Q/K/V, from this layer's input (the interior changes x first)
      I.fill(L, I.edge_lo, kvlo, elo_hi, m, b);
      if (kvhi > ehi_lo) I.fill(L, I.edge_hi, ehi_lo, kvhi, m, b);
      // Halo rows are zero until they land: the kernels load whole key tiles, and a masked key's
      // p = 0 times a NaN pattern in stale memory would be NaN.
      for (auto [r0, r1] : {std::pair{kvlo, int64_t{0}}, std::pair{m, kvhi}})
        if (r1 > r0) {
          RowWindow& E = edge_of(r0, r1);
          cuda::memset_device(E.at(E.k, r0, row_bytes), 0, (r1 - r0) * row_bytes, s);
          cuda::memset_device(E.at(E.v, r0, row_bytes), 0, (r1 - r0) * row_bytes, s);
        }
    }

    // Halo: K and V rows (after RoPE) beyond the shard edges, staged through the host (only the
    // halo rows), in flight during the selection of the global set and the interior attention.
    P.mark(kHalo, s);
    std::vector<std::vector<char>> send_buf, recv_buf;
    std::vector<Transfer> sends, recvs;
    send_buf.reserve(2 * plan.sends.size());
    recv_buf.reserve(2 * plan.recvs.size());
    if (!nc) {  // host staging (the NCCL path sends from the device buffers, below)
      for (auto& [peer, r] : plan.sends) {
        const RowWindow& E = edge_of(r.begin - b, r.end - b);
        const int64_t bytes = (r.end - r.begin) * row_bytes;
        for (const DeviceBuffer* src : {&E.k, &E.v}) {
          send_buf.emplace_back(bytes);
          cuda::copy_to_host(send_buf.back().data(), E.at(*src, r.begin - b, row_bytes), bytes, s);
          sends.push_back({peer, send_buf.back().data(), bytes});
        }
      }
      for (auto& [peer, r] : plan.recvs) {
        const int64_t bytes = (r.end - r.begin) * row_bytes;
        for (int t = 0; t < 2; ++t) {
          recv_buf.emplace_back(bytes);
          recvs.push_back({peer, recv_buf.back().data(), bytes});
        }
      }
    }

    // Top-G proposals of this shard (ranked by route(), the best G copied back).
    P.mark(kTopG, s);
    const int64_t n_best = std::min(G, m);
    unsigned long long bad = ~0ull;
    if (single) {
      // The selection stays on the device (no round trip to the host within the layer): S in
      // position order, its scores and shard rows; the set and the router flag are kept per layer
      // and copied back after the last one.
      kern::launch_topg_select(
          {I.sorted.as<uint64_t>(), G, b, I.sel_keys.as<uint64_t>(), I.sel_temp.get(),
           I.sel_temp.bytes(), I.gpos.as<int64_t>(), I.gscore.as<float>(), I.gidx.as<int64_t>()},
          s);
      cuda::copy_device(I.gpos_all.as<int64_t>() + l * G, I.gpos.get(), G * 8, s);
      cuda::copy_device(I.gscore_all.as<float>() + l * G, I.gscore.get(), G * 4, s);
      cuda::copy_device(I.bad_all.as<unsigned long long>() + l, I.bad.get(), 8, s);
    } else if (nc) {
      // Every rank's best keys gathered on the device (the sizes are known: min(G, shard size)),
      // then copied back once: the same list, in rank order, that the host path gathers.
      if (n_best * 8 != cand_bytes[comm.rank()])
        throw SystemError("NCCL candidate gather: shard sizes disagree");
      P.mark(kGather, s);
      nc->allgatherv(I.sorted.get(), I.cand.get(), cand_bytes, s);
      int64_t total = 0;
      for (int64_t v : cand_bytes) total += v;
      best.resize(total / 8);
      cuda::copy_to_host(best.data(), I.cand.get(), total, s);
      cuda::copy_to_host(&bad, I.bad.get(), 8, s);
      nc->synchronize(s);
    } else {
      best.resize(n_best);
      cuda::copy_to_host(best.data(), I.sorted.get(), n_best * 8, s);
      cuda::copy_to_host(&bad, I.bad.get(), 8, s);
      cuda::synchronize(s);  // also completes the halo staging copies
    }
    P.mark(kSelect, s);
    const int token = single || nc ? -1 : comm.start_exchange(sends, recvs);
    if (bad != ~0ull) throw router_not_finite((int64_t)bad, l);
    std::vector<uint8_t> gathered;
    if (!single) {
      std::vector<cpu::GlobalCandidate> mine(best.size());
      for (size_t j = 0; j < best.size(); ++j)
        mine[j] = {kern::topg_key_score(best[j]), kern::topg_key_pos(best[j])};
      std::vector<cpu::GlobalCandidate> S;
      if (nc) {
        S = cpu::select_global(std::move(mine), G);
      } else {
        comm.allgatherv(mine.data(), (int64_t)(mine.size() * sizeof(cpu::GlobalCandidate)),
                        gathered);
        std::vector<cpu::GlobalCandidate> all(gathered.size() / sizeof(cpu::GlobalCandidate));
        if (!all.empty()) std::memcpy(all.data(), gathered.data(), gathered.size());
        S = cpu::select_global(std::move(all), G);
      }
      for (int64_t j = 0; j < G; ++j) {
        out.global_positions[l * G + j] = S[j].pos;
        out.global_scores[l * G + j] = S[j].score;
        gpos[j] = S[j].pos;
        gscore[j] = S[j].score;
      }
      cuda::copy_to_device(I.gpos.get(), gpos.data(), G * 8, s);
      cuda::copy_to_device(I.gscore.get(), gscore.data(), G * 4, s);
    }
    kern::launch_topg_gate(I.gscore.as<float>(), G, I.gamma.as<float>(), s);

    P.mark(kGather, s);
    if (single) {
      // Every chosen row is in this shard: K/V projected from x, in the order of S.
      I.global_kv_device(L, I.gidx.as<int64_t>(), I.gpos.as<int64_t>(), G, I.kg.get(), I.vg.get());
    } else if (nc) {
      // The chosen rows this shard owns, packed in the order of S; all-gathered device to device
      // into rank order; then permuted into the order of S. Every rank knows every owner.
      local_pos.clear();
      std::vector<int64_t> part(comm.size(), 0), perm(G);
      std::vector<int> owner(G);
      for (int64_t j = 0; j < G; ++j) {
        int r = 0;
        while (r < comm.size() && !(gpos[j] >= shards[r].begin && gpos[j] < shards[r].end)) ++r;
        if (r == comm.size())
          throw SystemError("global gather: position " + std::to_string(gpos[j]) +
                            " is in no shard");
        owner[j] = r;
        ++part[r];
        if (r == comm.rank()) local_pos.push_back(gpos[j]);
      }
      std::vector<int64_t> first(comm.size() + 1, 0);
      for (int r = 0; r < comm.size(); ++r) first[r + 1] = first[r] + part[r];
      for (int64_t j = 0; j < G; ++j) perm[j] = first[owner[j]]++;
      for (int64_t& v : part) v *= row_bytes;
      I.global_kv(L, local_pos, b, I.kpack.get(), I.vpack.get());
      nc->allgatherv(I.kpack.get(), I.kcat.get(), part, s);
      nc->allgatherv(I.vpack.get(), I.vcat.get(), part, s);
      cuda::copy_to_device(I.gperm.get(), perm.data(), G * 8, s);
      kern::launch_gather_rows({I.kcat.get(), I.gperm.as<int64_t>(), I.kg.get(), G, row_bytes}, s);
      kern::launch_gather_rows({I.vcat.get(), I.gperm.as<int64_t>(), I.vg.get(), G, row_bytes}, s);
    } else {
      // K and V of the chosen tokens this shard owns: [int32 index in S][4 bytes 0][K][V]; only
      // these G rows cross ranks (through the host, so that any Comm works). The gate is
      // computed from S on every rank.
      local_pos.clear();
      std::vector<int32_t> local_j;
      for (int64_t j = 0; j < G; ++j)
        if (gpos[j] >= b && gpos[j] < shard.end) {
          local_pos.push_back(gpos[j]);
          local_j.push_back((int32_t)j);
        }
      const int64_t cnt = (int64_t)local_pos.size();
      I.global_kv(L, local_pos, b, I.kpack.get(), I.vpack.get());
      kp_host.resize(cnt * row_bytes);
      vp_host.resize(cnt * row_bytes);
      cuda::copy_to_host(kp_host.data(), I.kpack.get(), cnt * row_bytes, s);
      cuda::copy_to_host(vp_host.data(), I.vpack.get(), cnt * row_bytes, s);
      cuda::synchronize(s);
      const int64_t pack_row = 8 + 2 * row_bytes;
      std::vector<char> pack(cnt * pack_row);
      for (int64_t t = 0; t < cnt; ++t) {
        char* p = pack.data() + t * pack_row;
        std::memcpy(p, &local_j[t], 4);
        std::memset(p + 4, 0, 4);
        std::memcpy(p + 8, kp_host.data() + t * row_bytes, row_bytes);
        std::memcpy(p + 8 + row_bytes, vp_host.data() + t * row_bytes, row_bytes);
      }
      comm.allgatherv(pack.data(), (int64_t)pack.size(), gathered);
      if ((int64_t)gathered.size() != G * pack_row)
        throw SystemError("global gather returned " + std::to_string(gathered.size()) +
                          " bytes, expected " + std::to_string(G * pack_row));
      for (int64_t row = 0; row < G; ++row) {
        const char* p = reinterpret_cast<const char*>(gathered.data()) + row * pack_row;
        int32_t j;
        std::memcpy(&j, p, 4);
        if (j < 0 || j >= G) throw SystemError("global gather: bad index");
        std::memcpy(kg_host.data() + j * row_bytes, p + 8, row_bytes);
        std::memcpy(vg_host.data() + j * row_bytes, p + 8 + row_bytes, row_bytes);
      }
      cuda::copy_to_device(I.kg.get(), kg_host.data(), G * row_bytes, s);
      cuda::copy_to_device(I.vg.get(), vg_host.data(), G * row_bytes, s);
    }

    P.mark(kAttention, s);
    kern::AttentionParams ap{};
    ap.type = I.act;
    ap.k_global = I.kg.get();
    ap.v_global = I.vg.get();
    ap.gamma = I.gamma.as<float>();
    ap.pos_global = I.gpos.as<int64_t>();
    ap.n_global = G;
    ap.alpha = L.alpha.as<float>();
    ap.beta = L.beta.as<float>();
    ap.n_record = n;
    ap.n_heads = H;
    ap.head_dim = c.head_dim();
    ap.window = c.window;
    ap.causal = c.causal;
    ap.global_scratch = split_scratch ? I.gscratch.as<float>() : nullptr;
    // Attention of shard rows [c0, c1) from window W (their queries, their band's keys): into W's
    // q rows, in place (the chunk is a shard of its own to the kernels: first_pos, n_tokens), then
    // x += out W_o for those rows.
    auto attend = [&](const RowWindow& W, int64_t c0, int64_t c1) {
      const int64_t rows = c1 - c0;
      P.mark(kAttention, s);
      ap.q = W.at(W.q, c0, row_bytes);
      ap.out = W.at(W.q, c0, row_bytes);  // each block reads its queries before writing
      ap.k = W.k.get();
      ap.v = W.v.get();
      ap.kv_begin = b + W.lo;
      ap.kv_count = W.hi - W.lo;
      ap.n_tokens = rows;
      ap.first_pos = b + c0;
      ap.row_begin = 0;
      ap.row_end = rows;
      kern::launch_attention(ap, s);
      P.mark(kWo, s);
      I.gemm.run(ap.out, L.wo.get(), I.x.as<float>() + c0 * d, rows, d, d, I.act, true, s);
    };
    // Shard rows [r0, r1) in chunks of at most achunk rows, aligned to query tiles in record
    // positions, so no tile is computed twice and a row's arithmetic is the same in any chunk.
    auto chunks = [&](int64_t r0, int64_t r1, auto&& f) {
      for (int64_t c0 = r0; c0 < r1;) {
        int64_t c1 = std::min(r1, (b + c0 + achunk) / kQueryTile * kQueryTile - b);
        if (c1 <= c0) c1 = std::min(r1, c0 + achunk);
        f(c0, c1);
        c0 = c1;
      }
    };
    // NCCL: the halo (K and V rows after RoPE) goes device to device on the communicator's own
    // stream, received into halo_rx, overlapped with the interior attention below.
    int nccl_token = -1;
    if (nc) {
      P.mark(kHalo, s);
      std::vector<Transfer> dsends, drecvs;
      for (auto& [peer, r] : plan.sends) {
        const RowWindow& E = edge_of(r.begin - b, r.end - b);
        const int64_t bytes = (r.end - r.begin) * row_bytes;
        dsends.push_back({peer, E.at(E.k, r.begin - b, row_bytes), bytes});
        dsends.push_back({peer, E.at(E.v, r.begin - b, row_bytes), bytes});
      }
      int64_t rx = 0;
      for (auto& [peer, r] : plan.recvs) {
        const int64_t bytes = (r.end - r.begin) * row_bytes;
        for (int t = 0; t < 2; ++t, rx += bytes)
          drecvs.push_back({peer, I.halo_rx.as<char>() + rx, bytes});
      }
      nccl_token = nc->start_exchange(dsends, drecvs, s);
    }
    // The interior, chunk by chunk: the ring window moves along, keeping the rows the next chunk
    // shares with this one (made from this layer's input, before W_o changed x there) and
    // projecting the new ones, which x still holds unchanged.
    chunks(lo_a, hi_a, [&](int64_t c0, int64_t c1) {
      I.fill(L, I.ring, std::max<int64_t>(0, c0 - back), std::min(m, c1 + lead), m, b);
      attend(I.ring, c0, c1);
    });
    if (!single) {
      P.mark(kHalo, s);
      auto land = [&](int64_t r0, int64_t r1, const char* k_src, const char* v_src, bool host) {
        RowWindow& E = edge_of(r0, r1);
        const int64_t bytes = (r1 - r0) * row_bytes;
        if (host) {
          cuda::copy_to_device(E.at(E.k, r0, row_bytes), k_src, bytes, s);
          cuda::copy_to_device(E.at(E.v, r0, row_bytes), v_src, bytes, s);
        } else {
          cuda::copy_device(E.at(E.k, r0, row_bytes), k_src, bytes, s);
          cuda::copy_device(E.at(E.v, r0, row_bytes), v_src, bytes, s);
        }
      };
      if (nc) {
        nc->wait_exchange(nccl_token, s);  // s waits for the exchange stream (no host wait)
        int64_t rx = 0;
        for (auto& [peer, r] : plan.recvs) {
          const int64_t bytes = (r.end - r.begin) * row_bytes;
          land(r.begin - b, r.end - b, I.halo_rx.as<char>() + rx, I.halo_rx.as<char>() + rx + bytes,
               false);
          rx += 2 * bytes;
        }
      } else {
        comm.wait_exchange(token);
        size_t rb_i = 0;
        for (auto& [peer, r] : plan.recvs) {
          land(r.begin - b, r.end - b, recv_buf[rb_i].data(), recv_buf[rb_i + 1].data(), true);
          rb_i += 2;
        }
      }
      chunks(0, lo_a, [&](int64_t c0, int64_t c1) { attend(I.edge_lo, c0, c1); });
      if (hi_a < m) chunks(hi_a, m, [&](int64_t c0, int64_t c1) { attend(I.edge_hi, c0, c1); });
    }
    I.mlp(L, m);
    // The hook of layer l - 1 once the GPU has finished it, while layer l is queued: the GPU never
    // waits for the host to queue a layer (a sync per layer idled it for the queuing, ~1 ms).
    if (hooks.after_layer) {
      CUDA_OK(cudaEventRecord(I.layer_done[l % 2], s));
      if (l > 0) {
        CUDA_OK(cudaEventSynchronize(I.layer_done[(l - 1) % 2]));
        hooks.after_layer(l - 1);
      }
    }
  }
  if (hooks.after_layer && c.n_layers > 0) {
    cuda::synchronize(s);
    hooks.after_layer(c.n_layers - 1);
  }
  t_layers = since_call();
  P.mark(kOutput, s);
  // The non-finite check runs on the device, in the final RMSNorm: y need not cross to the host
  // (or be read again) to be checked.
  cuda::memset_device(I.bad.get(), 0xff, 8, s);
  kern::RmsNormParams fn{
      I.x.as<float>(), I.final_norm.as<float>(), I.x.as<float>(), nullptr, DType::kF32, m, d,
      c.norm_eps};
  fn.bad = I.bad.as<unsigned long long>();
  kern::launch_rmsnorm(fn, s);
  // Pooled: the bins queued behind the norm, and the host makes room for them while the GPU
  // works (the copies below wait for it). Rows that are not finite are pooled too, then dropped
  // (the error below is thrown instead).
  const bool pooled = I.opt.output == CudaOutput::kPooled;
  const int64_t bin = I.opt.pool_bin, bins = pooled ? (m + bin - 1) / bin : 0;
  if (pooled) {
    I.pooled.reserve(std::max<int64_t>(1, bins) * d * 4);
    kern::launch_pool({I.x.as<float>(), I.pooled.as<float>(), m, d, bin, shard.mirrored}, s);
    out.y.resize(bins * d);
    out.pooled_bin = bin;
  }
  unsigned long long bad = ~0ull;
  cuda::copy_to_host(&bad, I.bad.get(), 8, s);
  std::vector<unsigned long long> router_bad;
  if (single) {  // the layers' global sets and router flags, kept on the device
    router_bad.resize(c.n_layers);
    cuda::copy_to_host(router_bad.data(), I.bad_all.get(), c.n_layers * 8, s);
    cuda::copy_to_host(out.global_positions.data(), I.gpos_all.get(), c.n_layers * G * 8, s);
    cuda::copy_to_host(out.global_scores.data(), I.gscore_all.get(), c.n_layers * G * 4, s);
  }
  if (pooled) cuda::copy_to_host(out.y.data(), I.pooled.get(), bins * d * 4, s);
  cuda::synchronize(s);  // bad, router_bad (and the bins) have landed
  bool finite = bad == ~0ull;
  for (unsigned long long rb : router_bad) finite = finite && rb == ~0ull;
  if (I.opt.output == CudaOutput::kHost) {
    // Rows that are not finite are not streamed (the error below is thrown instead).
    if (finite || !hooks.rows_out) I.rows_to_host(out, I.x.as<float>(), m * d, hooks, b);
  }
  P.mark(kOutput, s);  // the closing mark
  cuda::synchronize(s);
  P.finish();
  for (size_t l = 0; l < router_bad.size(); ++l)  // the first layer with one
    if (router_bad[l] != ~0ull) throw router_not_finite((int64_t)router_bad[l], (int64_t)l);
  if (I.profile_env && P.on) {
    std::fprintf(stderr, "%s", format_profile(P.last, c.n_layers).c_str());
    std::fprintf(stderr,
                 "# rank %d: forward host time: communicator %.3f s, buffers %.3f s, layers "
                 "%.3f s, output %.3f s\n",
                 comm.rank(), t_nccl, t_first - t_nccl, t_layers - t_first,
                 since_call() - t_layers);
  }
  if (bad != ~0ull)
    throw output_not_finite(b + (int64_t)(bad / (unsigned long long)d),
                            (int64_t)(bad % (unsigned long long)d));
  return out;
}

ForwardOutput CudaModel::forward_rc_average(const int32_t* tokens, const Shard& shard,
                                            const int32_t* rc_tokens, const Shard& mirror,
                                            Comm& comm, const ForwardHooks& hooks) {
  Impl& I = *impl_;
  if (I.opt.output != CudaOutput::kHost)
    throw SystemError("forward_rc_average: the rows must come back to the host");
  if (mirror.size() != shard.size())
    throw SystemError("forward_rc_average: the mirrored shard has another size");
  const int64_t m = shard.size(), d = I.c.d_model;
  const size_t bytes = (size_t)(m * d) * 4;
  struct HostOutputAgain {  // the passes run with CudaOutput::kDevice: y stays in I.x
    CudaOptions& o;
    ~HostOutputAgain() { o.output = CudaOutput::kHost; }
  } restore{I.opt};
  I.opt.output = CudaOutput::kDevice;
  ForwardOutput out = forward(tokens, shard, comm, hooks);
  // The forward rows wait on the device when there is room for them and 1 GB besides. Up to
  // 64 MB (short records) in a buffer the model keeps: a cudaFree per record would wait for the
  // whole GPU, other models' streams included (short records side by side).
  void* keep = nullptr;
  void* owned = nullptr;
  size_t free_b = 0, total_b = 0;
  if (I.opt.rc_on_device && bytes <= (size_t{64} << 20)) {
    try {
      I.rc_keep.reserve(bytes);
      keep = I.rc_keep.get();
    } catch (const OutOfMemory&) {  // the host way
    }
  } else if (I.opt.rc_on_device) {
    if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess)
      free_b = 0;
    else if (free_b > bytes + (size_t{1} << 30) && cudaMalloc(&owned, bytes) != cudaSuccess)
      owned = nullptr;
    cudaGetLastError();  // a failed query or allocation leaves no error behind
    keep = owned;
  }
  std::unique_ptr<void, void (*)(void*)> keep_owner(owned, [](void* p) {
    if (p) cudaFree(p);
  });
  if (keep) {
    cuda::copy_device(keep, I.x.get(), bytes, I.s);
  } else {
    resize_huge(out.y, (size_t)(m * d));
    I.staging.copy_to_host(out.y.data(), I.x.get(), bytes, I.s);
  }
  forward(rc_tokens, mirror, comm, hooks);
  if (keep) {
    kern::launch_rc_average(
        {static_cast<const float*>(keep), I.x.as<float>(), static_cast<float*>(keep), m, d}, I.s);
    I.rows_to_host(out, static_cast<const float*>(keep), m * d, hooks, shard.begin);
  } else {
    std::vector<float> rev;
    resize_huge(rev, (size_t)(m * d));
    I.staging.copy_to_host(rev.data(), I.x.get(), bytes, I.s);
    rc_average_rows(out.y, rev, m, d);
    if (I.opt.rows_f16) {  // as the device would have converted them, and checked
      resize_huge(out.y16, (size_t)(m * d));
      if (const int64_t bad = h5::float_to_f16(out.y.data(), out.y16.data(), m * d); bad >= 0)
        throw NumericError("output row " + std::to_string(shard.begin + bad / d) + ", column " +
                           std::to_string(bad % d) + ": " + std::to_string(out.y[bad]) +
                           h5::f16_range_advice);
      out.y = {};
    }
  }
  return out;
}

int64_t CudaModel::packed_max_tokens() const { return impl_->packed_max; }

void CudaModel::release_packed() {
  Impl& I = *impl_;
  CUDA_OK(cudaSetDevice(I.device));
  cuda::synchronize(I.s);
  for (DeviceBuffer* b : {&I.pq, &I.pk, &I.pv, &I.prow_pos, &I.prow_rec, &I.pseg, &I.pgseg,
                          &I.pgrow, &I.pbad_all, &I.pbad_out, &I.prc, &I.psegs})
    *b = DeviceBuffer();
  for (DeviceBuffer& b : I.ascratch) b = DeviceBuffer();
}

std::vector<CudaModel::PackedResult> CudaModel::forward_packed(const std::vector<PackedItem>& items,
                                                               const PackedOptions& po) {
  Impl& I = *impl_;
  const ModelConfig& c = I.c;
  if (I.opt.output == CudaOutput::kDevice)
    throw SystemError("forward_packed: the rows must come back to the host");
  const int64_t R = (int64_t)items.size(), d = c.d_model, H = c.n_heads, eb = I.eb;
  const int64_t row_bytes = d * eb, tables = c.n_tables(), Lc = c.n_layers;
  if (R == 0) return {};
  if (po.rc_pairs)
    for (int64_t r = 0; r < R; r += 2)
      if (r + 1 == R || items[r + 1].n != items[r].n || items[r].mirrored || !items[r + 1].mirrored)
        throw SystemError("forward_packed: item " + std::to_string(r) +
                          " has no mirrored pass of its length after it");
  // The records' rows and their sets' entries, one after another.
  std::vector<int64_t> seg(R + 1, 0), gseg(R + 1, 0);
  int64_t max_len = 1;
  for (int64_t r = 0; r < R; ++r) {
    const int64_t n = items[r].n;
    if (n < 1 || n > I.packed_max)
      throw SystemError("forward_packed: a record of " + std::to_string(n) + " tokens");
    seg[r + 1] = seg[r] + n;
    gseg[r + 1] = gseg[r] + c.n_global(n);
    max_len = std::max(max_len, n);
  }
  const int64_t M = seg[R], GS = gseg[R];
  I.chunk_rows = I.opt.chunk_rows > 0 ? I.opt.chunk_rows : I.chunk_env > 0 ? I.chunk_env : 131072;
  const int64_t chunk = std::max<int64_t>(1, std::min(I.chunk_rows, M));
  cudaStream_t s = I.s;
  CUDA_OK(cudaSetDevice(I.device));
  I.prof.used = 0;

  // Buffers (grown, kept between calls).
  I.tokens.reserve(M * tables * 4);
  I.x.reserve(M * d * 4);
  I.scores.reserve(M * 4);
  I.reserve_chunk(chunk);
  for (DeviceBuffer* b : {&I.pq, &I.pk, &I.pv}) b->reserve(M * row_bytes);
  I.prow_pos.reserve(M * 8);
  I.prow_rec.reserve(M * 4);
  I.pseg.reserve((R + 1) * 8);
  I.pgseg.reserve((R + 1) * 8);
  I.pgrow.reserve(GS * 8);
  I.gpos.reserve(GS * 8);
  I.gscore.reserve(GS * 4);
  I.gamma.reserve(GS * 4);
  I.kg.reserve(GS * row_bytes);
  I.vg.reserve(GS * row_bytes);
  I.gpos_all.reserve(Lc * GS * 8);
  I.gscore_all.reserve(Lc * GS * 4);
  I.pbad_all.reserve(Lc * R * 8);
  I.pbad_out.reserve(R * 8);
  kern::AttentionParams probe{};
  probe.type = I.act;
  probe.head_dim = c.head_dim();
  probe.n_global = 1;
  const bool scratch = kern::attention_needs_global_scratch(probe);
  // The attention's streams, made once.
  constexpr int kStreams = 8;
  if (I.astreams.empty()) {
    for (int i = 0; i < kStreams; ++i) I.astreams.push_back(cuda::create_stream());
    I.aevents.resize(1 + kStreams, nullptr);
    for (cudaEvent_t& e : I.aevents) CUDA_OK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    I.ascratch.resize(kStreams);
  }
  if (scratch)
    for (DeviceBuffer& b : I.ascratch) b.reserve(max_len * d * 4);

  // Tokens, each row's position in its record, the offsets.
  std::vector<int32_t> tok((size_t)(M * tables));
  std::vector<int64_t> rowpos((size_t)M);
  std::vector<int32_t> rowrec((size_t)M);
  for (int64_t r = 0; r < R; ++r) {
    std::memcpy(tok.data() + seg[r] * tables, items[r].tokens, (size_t)(items[r].n * tables) * 4);
    for (int64_t i = 0; i < items[r].n; ++i) {
      rowpos[seg[r] + i] = i;
      rowrec[seg[r] + i] = (int32_t)r;
    }
  }
  Profiler& P = I.prof;
  P.mark(kEmbed, s);
  cuda::copy_to_device(I.tokens.get(), tok.data(), M * tables * 4, s);
  cuda::copy_to_device(I.prow_pos.get(), rowpos.data(), M * 8, s);
  cuda::copy_to_device(I.prow_rec.get(), rowrec.data(), M * 4, s);
  cuda::copy_to_device(I.pseg.get(), seg.data(), (R + 1) * 8, s);
  cuda::copy_to_device(I.pgseg.get(), gseg.data(), (R + 1) * 8, s);
  kern::launch_embed(
      {I.tokens.as<int32_t>(), I.embed.as<float>(), I.x.as<float>(), M, tables, c.vocab(), d}, s);

  for (int64_t l = 0; l < Lc; ++l) {
    const DeviceLayer& L = I.layers[l];
    I.route(L, M, 0, false);  // scores only; the sets per record:
    P.mark(kTopG, s);
    kern::launch_topg_segments(
        {I.scores.as<float>(), I.pseg.as<int64_t>(), I.pgseg.as<int64_t>(), R, max_len,
         I.gpos.as<int64_t>(), I.gscore.as<float>(), I.gamma.as<float>(), I.pgrow.as<int64_t>(),
         I.pbad_all.as<unsigned long long>() + l * R},
        s);
    cuda::copy_device(I.gpos_all.as<int64_t>() + l * GS, I.gpos.get(), GS * 8, s);
    cuda::copy_device(I.gscore_all.as<float>() + l * GS, I.gscore.get(), GS * 4, s);
    // Q, K, V of every row from this layer's input; a set's K and V are its members' rows (a
    // row's projection does not depend on the rows projected with it).
    I.project(L, I.x.as<float>(), M, 0, I.prow_pos.as<int64_t>(), I.pq.get(), I.pk.get(),
              I.pv.get());
    P.mark(kGather, s);
    kern::launch_gather_rows({I.pk.get(), I.pgrow.as<int64_t>(), I.kg.get(), GS, row_bytes}, s);
    kern::launch_gather_rows({I.pv.get(), I.pgrow.as<int64_t>(), I.vg.get(), GS, row_bytes}, s);
    P.mark(kAttention, s);
    // Each record's attention, as forward() launches it for a record one rank holds (its rows in
    // place of its queries), on the streams in turn.
    CUDA_OK(cudaEventRecord(I.aevents[0], s));
    const int used = (int)std::min<int64_t>(kStreams, R);
    for (int i = 0; i < used; ++i) CUDA_OK(cudaStreamWaitEvent(I.astreams[i], I.aevents[0], 0));
    for (int64_t r = 0; r < R; ++r) {
      const int64_t n = items[r].n, G = gseg[r + 1] - gseg[r];
      kern::AttentionParams ap{};
      ap.type = I.act;
      ap.q = I.pq.as<char>() + seg[r] * row_bytes;
      ap.out = I.pq.as<char>() + seg[r] * row_bytes;
      ap.k = I.pk.as<char>() + seg[r] * row_bytes;
      ap.v = I.pv.as<char>() + seg[r] * row_bytes;
      ap.kv_begin = 0;
      ap.kv_count = n;
      ap.k_global = I.kg.as<char>() + gseg[r] * row_bytes;
      ap.v_global = I.vg.as<char>() + gseg[r] * row_bytes;
      ap.gamma = I.gamma.as<float>() + gseg[r];
      ap.pos_global = I.gpos.as<int64_t>() + gseg[r];
      ap.n_global = G;
      ap.alpha = L.alpha.as<float>();
      ap.beta = L.beta.as<float>();
      ap.n_tokens = n;
      ap.first_pos = 0;
      ap.n_record = n;
      ap.n_heads = H;
      ap.head_dim = c.head_dim();
      ap.window = c.window;
      ap.causal = c.causal;
      ap.row_begin = 0;
      ap.row_end = n;
      ap.global_scratch = scratch ? I.ascratch[r % kStreams].as<float>() : nullptr;
      kern::launch_attention(ap, I.astreams[r % kStreams]);
    }
    for (int i = 0; i < used; ++i) {
      CUDA_OK(cudaEventRecord(I.aevents[1 + i], I.astreams[i]));
      CUDA_OK(cudaStreamWaitEvent(s, I.aevents[1 + i], 0));
    }
    P.mark(kWo, s);
    for (int64_t c0 = 0; c0 < M; c0 += I.chunk_rows) {
      const int64_t rows = std::min(I.chunk_rows, M - c0);
      I.gemm.run(I.pq.as<char>() + c0 * row_bytes, L.wo.get(), I.x.as<float>() + c0 * d, rows, d, d,
                 I.act, true, s);
    }
    I.mlp(L, M);
  }

  // The final norm over every row, then each record's first value that is not finite (forward()
  // checks a record in its norm).
  P.mark(kOutput, s);
  float* y = I.x.as<float>();
  kern::launch_rmsnorm({y, I.final_norm.as<float>(), y, nullptr, DType::kF32, M, d, c.norm_eps}, s);
  cuda::memset_device(I.pbad_out.get(), 0xff, R * 8, s);
  kern::launch_nonfinite_segments({y, M, d, I.prow_rec.as<int32_t>(), I.pseg.as<int64_t>(),
                                   I.pbad_out.as<unsigned long long>()},
                                  s);
  const bool pooled = I.opt.output == CudaOutput::kPooled;
  const bool means = !pooled && po.mean_block > 0;
  const int64_t step = po.rc_pairs ? 2 : 1, n_res = R / step;
  // Pairs: the forward row and the reverse-complement row that mirrors it averaged on the device
  // (as forward_rc_average), except for bins (each pass pooled, the bin means averaged below).
  if (po.rc_pairs && !pooled) {
    std::vector<int64_t> rows, partners;
    for (int64_t r = 0; r < R; r += 2)
      for (int64_t i = 0; i < items[r].n; ++i) {
        rows.push_back(seg[r] + i);
        partners.push_back(seg[r + 1] + items[r].n - 1 - i);
      }
    I.prc.reserve((int64_t)rows.size() * 16);
    int64_t* dev = I.prc.as<int64_t>();
    cuda::copy_to_device(dev, rows.data(), rows.size() * 8, s);
    cuda::copy_to_device(dev + rows.size(), partners.data(), partners.size() * 8, s);
    kern::launch_rc_average_rows({y, dev, dev + rows.size(), (int64_t)rows.size(), d}, s);
  }
  // Bins (forward or mirrored) or a mean pool's blocks, every record's in one launch.
  const int64_t B = pooled ? I.opt.pool_bin : po.mean_block;
  std::vector<kern::PoolSegment> segs;
  std::vector<int64_t> first_seg(R + 1, 0);
  for (int64_t r = 0; r < R; ++r) {
    const int64_t n = items[r].n;
    if (pooled || (means && r % step == 0))
      for (int64_t b0 = 0; b0 < n; b0 += B) {
        const int64_t cnt = std::min(B, n - b0);
        segs.push_back(pooled && items[r].mirrored ? kern::PoolSegment{seg[r] + n - 1 - b0, cnt, -1}
                                                   : kern::PoolSegment{seg[r] + b0, cnt, 1});
      }
    first_seg[r + 1] = (int64_t)segs.size();
  }
  const int64_t S = (int64_t)segs.size();
  std::vector<float> bins;
  std::vector<double> sums;
  if (S > 0) {
    I.psegs.reserve(S * (int64_t)sizeof(kern::PoolSegment));
    I.pooled.reserve(S * d * (means ? 8 : 4));
    cuda::copy_to_device(I.psegs.get(), segs.data(), S * sizeof(kern::PoolSegment), s);
    kern::PoolSegmentsParams pp{y, d, I.psegs.as<kern::PoolSegment>(), S};
    if (means)
      pp.sums = I.pooled.as<double>();
    else
      pp.means = I.pooled.as<float>();
    kern::launch_pool_segments(pp, s);
    if (means) {
      sums.resize((size_t)(S * d));
      cuda::copy_to_host(sums.data(), I.pooled.get(), S * d * 8, s);
    } else {
      bins.resize((size_t)(S * d));
      cuda::copy_to_host(bins.data(), I.pooled.get(), S * d * 4, s);
    }
  }
  std::vector<unsigned long long> bad_all((size_t)(Lc * R)), bad_out((size_t)R);
  std::vector<int64_t> gpos_all((size_t)(Lc * GS));
  std::vector<float> gscore_all((size_t)(Lc * GS));
  cuda::copy_to_host(bad_all.data(), I.pbad_all.get(), Lc * R * 8, s);
  cuda::copy_to_host(bad_out.data(), I.pbad_out.get(), R * 8, s);
  cuda::copy_to_host(gpos_all.data(), I.gpos_all.get(), Lc * GS * 8, s);
  cuda::copy_to_host(gscore_all.data(), I.gscore_all.get(), Lc * GS * 4, s);
  P.mark(kOutput, s);  // the closing mark
  cuda::synchronize(s);
  P.finish();
  if (I.profile_env && P.on)
    std::fprintf(stderr, "# packed forward: %lld records, %lld rows\n%s", (long long)R,
                 (long long)M, format_profile(P.last, Lc).c_str());
  // A pass's error, as forward() throws it: a router score (the first layer with one), else the
  // output.
  auto check = [&](int64_t r) {
    for (int64_t l = 0; l < Lc; ++l)
      if (bad_all[l * R + r] != ~0ull) throw router_not_finite((int64_t)bad_all[l * R + r], l);
    if (bad_out[r] != ~0ull)
      throw output_not_finite((int64_t)(bad_out[r] / (unsigned long long)d),
                              (int64_t)(bad_out[r] % (unsigned long long)d));
  };
  std::vector<PackedResult> res(n_res);
  for (int64_t q = 0; q < n_res; ++q) {
    const int64_t r = q * step, n = items[r].n, G = gseg[r + 1] - gseg[r];
    ForwardOutput& out = res[q].out;
    try {
      check(r);
      if (po.rc_pairs) check(r + 1);
      out.n_global = G;  // the forward pass's sets
      out.global_positions.resize(Lc * G);
      out.global_scores.resize(Lc * G);
      for (int64_t l = 0; l < Lc; ++l) {
        std::copy_n(gpos_all.begin() + l * GS + gseg[r], G, out.global_positions.begin() + l * G);
        std::copy_n(gscore_all.begin() + l * GS + gseg[r], G, out.global_scores.begin() + l * G);
      }
      if (pooled) {
        out.pooled_bin = B;
        out.y.assign(bins.begin() + first_seg[r] * d, bins.begin() + first_seg[r + 1] * d);
        if (po.rc_pairs)  // halves first, as sparsa embed averages two passes' bin means
          for (int64_t i = 0; i < (int64_t)out.y.size(); ++i)
            out.y[i] = 0.5f * out.y[i] + 0.5f * bins[first_seg[r + 1] * d + i];
      } else if (means) {
        out.block_sums.assign(sums.begin() + first_seg[r] * d, sums.begin() + first_seg[r + 1] * d);
      } else if (I.opt.rows_f16) {
        resize_huge(out.y16, (size_t)(n * d));
        I.staging.copy_to_host_f16(out.y16.data(), y + seg[r] * d, n * d, s, d, 0);
      } else {
        resize_huge(out.y, (size_t)(n * d));
        I.staging.copy_to_host(out.y.data(), y + seg[r] * d, (size_t)(n * d) * 4, s);
      }
    } catch (const NumericError&) {
      res[q].out = ForwardOutput{};
      res[q].error = std::current_exception();
    }
  }
  return res;
}

}  // namespace sparsa
