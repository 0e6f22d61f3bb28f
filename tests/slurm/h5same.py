#!/usr/bin/env python3
"""Exit 0 when two sparsa embeddings files hold the same results, bit for bit.

    h5same.py A.h5 B.h5

Every group, dataset (shape, type and bytes) and attribute under /records must be equal, and so
must the root attributes, except those that name the run rather than its results (created_utc,
command_line, working_directory: a Slurm run and an mpirun run differ there by design). Both files
must be complete.
"""
import sys

import h5py
import numpy as np

RUN_ATTRS = {"created_utc", "command_line", "working_directory"}


def attrs_equal(a, b, where, diffs, skip=()):
    ka = set(a.attrs) - set(skip)
    kb = set(b.attrs) - set(skip)
    if ka != kb:
        diffs.append(f"{where}: attributes differ: {sorted(ka ^ kb)}")
    for k in sorted(ka & kb):
        va, vb = a.attrs[k], b.attrs[k]
        if not np.array_equal(np.asarray(va), np.asarray(vb)):
            diffs.append(f"{where}: attribute {k}: {va!r} != {vb!r}")


def walk(a, b, where, diffs):
    attrs_equal(a, b, where, diffs)
    if isinstance(a, h5py.Dataset) or isinstance(b, h5py.Dataset):
        if not (isinstance(a, h5py.Dataset) and isinstance(b, h5py.Dataset)):
            diffs.append(f"{where}: a dataset in one file only")
        elif a.shape != b.shape or a.dtype != b.dtype:
            diffs.append(f"{where}: {a.shape} {a.dtype} != {b.shape} {b.dtype}")
        elif a.dtype.kind == "O":  # variable-length strings (timestamps): by value
            if list(np.ravel(a[()])) != list(np.ravel(b[()])):
                diffs.append(f"{where}: values differ")
        elif a[()].tobytes() != b[()].tobytes():
            diffs.append(f"{where}: values differ")
        return
    ka, kb = set(a.keys()), set(b.keys())
    if ka != kb:
        diffs.append(f"{where}: members differ: {sorted(ka ^ kb)}")
    for k in sorted(ka & kb):
        walk(a[k], b[k], f"{where}/{k}", diffs)


def main():
    pa, pb = sys.argv[1], sys.argv[2]
    diffs = []
    with h5py.File(pa, "r") as a, h5py.File(pb, "r") as b:
        for f, p in ((a, pa), (b, pb)):
            if f.attrs.get("complete") != 1:
                diffs.append(f"{p}: not complete")
        attrs_equal(a, b, "/", diffs, skip=RUN_ATTRS)
        if "records" not in a or "records" not in b:
            diffs.append("/records missing")
        else:
            walk(a["records"], b["records"], "/records", diffs)
            n = len(a["records"])
            if n == 0:
                diffs.append("no records")
    if diffs:
        print(f"{pa} and {pb} differ:", *diffs[:20], sep="\n  ")
        sys.exit(1)
    print(f"{pa} and {pb}: the same {n} records")


if __name__ == "__main__":
    main()
