"""Target 4 — ``model: exact``: balanced scalar-output cells from the closed form of docs/theory.md §4
(quadrature) against dopri5 on the induced flow at tight tolerance: agreement and speed-up.

    python bench/exact_model.py [--repeats 3]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import statistics
import time

import numpy as np

from sweep import batch, problem
from sweep import spec as specs

SWEEP = {"axes": {"depth": [1, 2, 3, 4, 5], "width": [5], "init_norm": [0.3, 1.0, 10.0], "seed": {"start": 0, "stop": 16}},
         "horizon": 20.0, "eps": 1e-6, "checkpoints": {"count": 101, "spacing": "log"}}


def compute(raw):
    s = specs.parse(raw)
    p = problem.build(s.problem)
    out = {k: np.empty(s.shape + ((s.checkpoints["count"],) if k == "excess_loss" else ()))
           for k in ("excess_loss", "time_to_eps")}
    t = time.perf_counter()
    for region in batch.regions(s.shape, batch.chunk_shape(s.shape, tuple(s.axes), s.batch)):
        res = batch.run_batch(s, p, region)
        for k, values in out.items():
            values[region] = res[k]
    return out, time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    dopri = {**SWEEP, "model": "induced", "integrator": {"method": "dopri5", "rtol": 1e-12, "atol": 1e-15}}
    runs = {name: [compute(raw) for _ in range(args.repeats)]
            for name, raw in (("exact", {**SWEEP, "model": "exact"}), ("dopri5", dopri))}
    (ex, _), (dp, _) = runs["exact"][0], runs["dopri5"][0]
    t_ex = statistics.median(t for _, t in runs["exact"])
    t_dp = statistics.median(t for _, t in runs["dopri5"])
    scale = dp["excess_loss"][..., :1]
    print(f"{ex['time_to_eps'].size} cells, 101 checkpoints, horizon {SWEEP['horizon']}")
    print(f"  time_to_eps: max |exact / dopri5 − 1| = {np.nanmax(np.abs(ex['time_to_eps'] / dp['time_to_eps'] - 1)):.2e}  (target ≤ 1e-7)")
    print(f"  excess loss: max |exact − dopri5| / excess(0) = {np.nanmax(np.abs(ex['excess_loss'] - dp['excess_loss']) / scale):.2e}")
    print(f"  wall: exact {t_ex:.2f} s, dopri5 (rtol 1e-12) {t_dp:.2f} s → speed-up {t_dp / t_ex:.2f}x (medians of {args.repeats})")


if __name__ == "__main__":
    main()
