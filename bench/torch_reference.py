#!/usr/bin/env python3
"""The PyTorch side of issue 4's comparison, measured on the same GPU as `sparsa bench`.

dna-base written in PyTorch the way the issue describes its baseline: torch.compile'd
FlexAttention for the local band, SDPA over the gathered global set, cuBLAS for the projections
and the MLP, bf16 with fp32 residual stream and norms. Random weights and tokens (timing only:
the math follows docs/model.md, but this is not a reference for values; tests/unit's float64
reference and the CPU backend are).

    python3 bench/torch_reference.py [--n 1048576] [--iters 3] [--what model,local,local+global]

Prints one line per benchmark: ms (median), useful TFLOP/s (the band and the global set only, as
`sparsa bench` counts them), tokens/s and peak GPU memory. Needs PyTorch >= 2.5 with a CUDA GPU.
"""
import argparse
import math
import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

# dna-base (configs/dna-base.toml)
D, H, DH, L, FF, W, R = 512, 8, 64, 8, 2048, 256, 128
GLOBAL_EVERY, GLOBAL_MAX, EPS, ROPE_BASE, VOCAB = 256, 4096, 1e-6, 10000.0, 7
ROUTER_FP32 = False  # --router
COMPILE_MODE = None  # --mode


def n_global(n):
    return min(GLOBAL_MAX, n, max(1, math.ceil(n / GLOBAL_EVERY)))


def band_keys(n, w):
    # sum over i of |{j : |i - j| <= w, 0 <= j < n}|
    full = n * (2 * w + 1)
    edge = 2 * sum(w - i for i in range(min(w, n)))
    return full - edge


def timed(fn, iters):
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    ms = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ms.append(a.elapsed_time(b))
    return statistics.median(ms)


def rmsnorm(x, g):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * g


def rope_tables(n, device):
    k = torch.arange(DH // 2, dtype=torch.float64, device=device)
    theta = ROPE_BASE ** (-2.0 * k / DH)
    ang = torch.arange(n, dtype=torch.float64, device=device)[:, None] * theta[None, :]
    cos = torch.cat([ang.cos(), ang.cos()], -1).float()[:, None, :]  # [n, 1, DH]
    sin = torch.cat([ang.sin(), ang.sin()], -1).float()[:, None, :]
    return cos, sin


def rope(x, cos, sin):  # x [n, H, DH] bf16, rotate half
    x1, x2 = x[..., : DH // 2], x[..., DH // 2 :]
    rot = torch.cat([-x2, x1], -1)
    return (x.float() * cos + rot.float() * sin).to(torch.bfloat16)


def make_weights(device, seed=1):
    g = torch.Generator(device="cpu").manual_seed(seed)

    def rnd(*shape, scale):
        return (torch.randn(*shape, generator=g) * scale).to(device)

    s = 1 / math.sqrt(D)
    layers = []
    for _ in range(L):
        layers.append(
            dict(
                attn_norm=torch.ones(D, device=device),
                wqkv=rnd(D, 3 * D, scale=s).bfloat16(),
                wo=rnd(D, D, scale=s).bfloat16(),
                w1f=rnd(D, R, scale=s),
                b1=torch.zeros(R, device=device),
                w2=rnd(R, scale=1 / math.sqrt(R)),
                b2=torch.zeros(1, device=device),
                alpha=torch.ones(H, device=device),
                beta=torch.full((H,), 0.5, device=device),
                mlp_norm=torch.ones(D, device=device),
                w_up=rnd(D, FF, scale=s).bfloat16(),
                w_down=rnd(FF, D, scale=1 / math.sqrt(FF)).bfloat16(),
            )
        )
    for p in layers:
        p["w1"] = p["w1f"].bfloat16()
    return rnd(VOCAB, D, scale=1.0), layers, torch.ones(D, device=device)


def load_checkpoint(path, device):
    """The weights of a sparsa checkpoint (docs/formats.md) in this script's layout."""
    import h5py

    with h5py.File(path, "r") as f:
        t = lambda name: torch.from_numpy(f[name][...]).to(device)  # noqa: E731
        layers = []
        for i in range(L):
            g = f"/layers/{i}/"
            layers.append(
                dict(
                    attn_norm=t(g + "attn_norm"),
                    wqkv=torch.cat([t(g + "wq"), t(g + "wk"), t(g + "wv")], 1).bfloat16(),
                    wo=t(g + "wo").bfloat16(),
                    w1f=t(g + "router_w1"),
                    w1=t(g + "router_w1").bfloat16(),
                    b1=t(g + "router_b1"),
                    w2=t(g + "router_w2"),
                    b2=t(g + "router_b2"),
                    alpha=t(g + "alpha"),
                    beta=t(g + "beta"),
                    mlp_norm=t(g + "mlp_norm"),
                    w_up=t(g + "w_up").bfloat16(),
                    w_down=t(g + "w_down").bfloat16(),
                )
            )
        return t("/embedding/tokens"), layers, t("/final_norm")


def check(model, sparsa, n, device, work):
    """This script's model against `sparsa embed --device cuda` on one random DNA record of n
    bases with the weights of `model`: the largest difference of the output rows and the overlap
    of the global sets, layer by layer."""
    import subprocess

    import h5py

    g = torch.Generator(device="cpu").manual_seed(5)
    tok = torch.randint(3, 7, (n,), generator=g)  # A C G T = 3 4 5 6 (spec section 1)
    fa, out = f"{work}/check.fa", f"{work}/check.h5"
    with open(fa, "w") as f:
        seq = "".join("ACGT"[i - 3] for i in tok.tolist())
        f.write(">check\n" + "\n".join(seq[i : i + 80] for i in range(0, n, 80)) + "\n")
    subprocess.run([sparsa, "embed", "-q", "--force", "--model", model, "--input", fa, "--output",
                    out, "--pool", "none", "--dtype", "f32", "--device", "cuda"], check=True)
    with h5py.File(out, "r") as f:
        rec = f["records"][list(f["records"].keys())[0]]
        want = torch.from_numpy(rec["embedding"][...]).to(device)
        want_sets = rec["global_positions"][...]
    emb, layers, final = load_checkpoint(model, device)
    tok = tok.to(device)
    cos, sin = rope_tables(n, device)
    bm = band_mask(n, device)
    G = n_global(n)
    sets = []
    step = torch.compile(layer)  # eager flex_attention would hold every n x n score
    x = emb[tok]
    for p in layers:
        x, chosen = step(x, p, cos, sin, bm, G, True)  # the set the compiled layer used
        sets.append(chosen.cpu().numpy())
    y = rmsnorm(x, final)
    diff = (y - want).abs().max().item()
    overlap = min(len(set(a.tolist()) & set(b.tolist())) / G for a, b in zip(sets, want_sets))
    print(f"check n={n}: max |torch - sparsa| = {diff:.3e} (outputs ~1), smallest global-set "
          f"overlap over layers = {overlap:.3f}")


def route(h, p, G):
    """The global set S (ascending positions) and its gate gamma, from h = RMSNorm(x) in float32."""
    if ROUTER_FP32:  # the spec's h (float32) through a float32 GEMM, TF32 off
        hw = h @ p["w1f"]
    else:  # h and W1 in bf16 (fp32 accumulate): cheaper, less exact scores than sparsa's router
        hw = (h.bfloat16() @ p["w1"]).float()
    s = F.gelu(hw + p["b1"], approximate="none") @ p["w2"] + p["b2"]
    idx = torch.topk(s, G).indices.sort().values
    return idx, torch.sigmoid(s[idx])


def layer(x, p, cos, sin, block_mask, G, with_set=False):
    """One layer; with_set: also the global set it chose (for --check)."""
    n = x.shape[0]
    h32 = rmsnorm(x, p["attn_norm"])
    h = h32.bfloat16()
    q, k, v = (h @ p["wqkv"]).view(n, 3, H, DH).unbind(1)
    q, k = rope(q, cos, sin), rope(k, cos, sin)
    idx, gamma = route(h32, p, G)
    q, k, v = (t.transpose(0, 1).unsqueeze(0).contiguous() for t in (q, k, v))  # [1, H, n, DH]
    kg = k[:, :, idx]
    vg = (v[:, :, idx].float() * gamma[None, None, :, None]).bfloat16()
    local = flex_attention(q, k, v, block_mask=block_mask)
    glob = F.scaled_dot_product_attention(q, kg, vg)
    a = p["alpha"].view(1, H, 1, 1) * local.float() + p["beta"].view(1, H, 1, 1) * glob.float()
    a = a.transpose(1, 2).reshape(n, D).bfloat16()
    x = x + (a @ p["wo"]).float()
    u = F.gelu((rmsnorm(x, p["mlp_norm"]).bfloat16() @ p["w_up"]).float(), approximate="none")
    x = x + (u.bfloat16() @ p["w_down"]).float()
    return (x, idx) if with_set else x


def band_mask(n, device):
    def near(b, h, qi, ki):
        return (qi - ki).abs() <= W

    # Compiled: the eager version would evaluate the mask over all n x n pairs.
    return torch.compile(create_block_mask)(near, B=None, H=None, Q_LEN=n, KV_LEN=n, device=device)


def bench_model(n, iters, device):
    emb, layers, final = make_weights(device)
    tok = torch.randint(2, 7, (n,), device=device)
    cos, sin = rope_tables(n, device)
    bm = band_mask(n, device)
    G = n_global(n)
    step = torch.compile(layer, mode=COMPILE_MODE)

    def forward():
        x = emb[tok]
        for p in layers:
            x = step(x, p, cos, sin, bm, G)
        y = rmsnorm(x, final)
        return y[: n // 128 * 128].view(-1, 128, D).mean(1)  # pooled output, bins of 128

    torch.cuda.reset_peak_memory_stats()
    ms = timed(forward, iters)
    peak = torch.cuda.max_memory_allocated() / 1e9
    gemm = 2.0 * n * (4 * D * D + 2 * D * FF + D * R)
    attn = 4.0 * D * (band_keys(n, W) + n * G)
    return ms, L * (gemm + attn), peak


def bench_attention(n, iters, device, with_global):
    g = torch.Generator(device="cpu").manual_seed(3)
    q, k, v = (torch.randn(1, H, n, DH, generator=g).bfloat16().to(device) for _ in range(3))
    bm = band_mask(n, device)
    G = GLOBAL_MAX
    idx = torch.randperm(n, generator=g)[:G].sort().values.to(device)
    kg, vg = k[:, :, idx].contiguous(), v[:, :, idx].contiguous()
    flex = torch.compile(flex_attention)

    def local_only():
        return flex(q, k, v, block_mask=bm)

    # Compiled, so that the mix is fused as in the model's layer (gamma is folded into vg).
    both = torch.compile(
        lambda: 0.5 * flex_attention(q, k, v, block_mask=bm)
        + 0.5 * F.scaled_dot_product_attention(q, kg, vg))

    torch.cuda.reset_peak_memory_stats()
    ms = timed(both if with_global else local_only, iters)
    peak = torch.cuda.max_memory_allocated() / 1e9
    flops = 4.0 * D * (band_keys(n, W) + (n * G if with_global else 0))
    return ms, flops, peak


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1 << 20)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--what", default="model,local,local+global")
    ap.add_argument("--check", metavar="MODEL.h5",
                    help="instead of timing: compare with `sparsa embed` using this dna-base "
                    "checkpoint (needs --sparsa and h5py)")
    ap.add_argument("--sparsa", default="sparsa", help="the sparsa binary for --check")
    ap.add_argument("--work", default="/tmp", help="folder for --check's FASTA and output")
    ap.add_argument("--router", choices=["bf16", "fp32"], default="bf16",
                    help="precision of the router's GEMM h W1 (sparsa's bf16 mode: split bf16, "
                    "between the two)")
    ap.add_argument("--mode", default=None,
                    help="torch.compile mode for the model's layer (default: torch's default; "
                    "e.g. max-autotune)")
    a = ap.parse_args()
    global ROUTER_FP32, COMPILE_MODE
    ROUTER_FP32 = a.router == "fp32"
    COMPILE_MODE = a.mode
    torch.backends.cuda.matmul.allow_tf32 = False
    dev = torch.device("cuda")
    print(f"# torch {torch.__version__} on {torch.cuda.get_device_name()}, router {a.router}")
    if a.check:
        with torch.no_grad():
            check(a.check, a.sparsa, a.n, dev, a.work)
        return
    print(f"{'bench':>14} {'n':>9} {'ms':>10} {'TFLOP/s':>8} {'tokens/s':>10} {'peak_GB':>8}")
    for what in a.what.split(","):
        with torch.no_grad():
            if what == "model":
                ms, flops, peak = bench_model(a.n, a.iters, dev)
            else:
                ms, flops, peak = bench_attention(a.n, a.iters, dev, what == "local+global")
        print(f"{what:>14} {a.n:>9} {ms:>10.3f} {flops / ms / 1e9:>8.1f} {a.n / ms * 1e3:>10.4g} "
              f"{peak:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
