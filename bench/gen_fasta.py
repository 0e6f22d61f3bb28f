#!/usr/bin/env python3
"""Seeded generator of large FASTA inputs for benchmarks (never stored in the repository).

    bench/gen_fasta.py --tokens 100000000 --records 1 --seed 1 > big.fa
    bench/gen_fasta.py --tokens 100 --max-tokens 1000 --records 5000 --seed 1 > reads.fa

With --max-tokens each record's length is drawn uniformly from [--tokens, --max-tokens] (reads).
Bases are drawn i.i.d. from A, C, G, T with P(N) = 0.001, from Python's random.Random(seed)
(Mersenne Twister), so the same arguments give the same file on every machine. Lines of 60.
"""
import argparse
import random
import sys


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, required=True, help="bases per record")
    ap.add_argument("--max-tokens", type=int, default=0,
                    help="lengths uniform in [tokens, max-tokens] (default: all --tokens)")
    ap.add_argument("--records", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    out = sys.stdout
    alphabet = "ACGT" * 250 + "N"  # P(N) ~ 0.001
    if a.max_tokens and a.max_tokens < a.tokens:
        ap.error("--max-tokens must be at least --tokens")
    for r in range(a.records):
        length = rng.randint(a.tokens, a.max_tokens) if a.max_tokens else a.tokens
        out.write(f">synthetic_{a.seed}_{r} tokens={length}\n")
        left = length
        while left > 0:
            n = min(left, 60 * 1000)
            seq = "".join(rng.choices(alphabet, k=n))
            out.write("\n".join(seq[i:i + 60] for i in range(0, n, 60)))
            out.write("\n")
            left -= n


if __name__ == "__main__":
    main()
