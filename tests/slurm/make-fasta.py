#!/usr/bin/env python3
"""Writes a FASTA file of random DNA records, the same bytes for the same arguments.

    make-fasta.py OUT N_RECORDS LENGTH SEED [PREFIX]

The Slurm tests use it for inputs big enough that a job can be stopped part way (many records,
so the journal has finished ones to keep) and for the array job's small inputs.
"""
import random
import sys


def main():
    out, n, length, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    prefix = sys.argv[5] if len(sys.argv) > 5 else "rec"
    rng = random.Random(seed)
    with open(out, "w") as f:
        for i in range(n):
            seq = "".join(rng.choice("ACGT") for _ in range(length))
            f.write(f">{prefix}{i + 1} synthetic seed={seed}\n")
            for j in range(0, length, 80):
                f.write(seq[j:j + 80] + "\n")


if __name__ == "__main__":
    main()
