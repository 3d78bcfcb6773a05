"""Targets 4 and 5 (issue 21) — ``model: exact``: 4,096 balanced scalar-output cells (depths 1–4 × 4
init_norms × 256 seeds, 101 checkpoints) from the closed form of docs/theory.md §4 (compiled quadrature)
against dopri5 on the induced flow at tight tolerance: agreement, and the speed-up (target ≥ 30x).
Both are run once before the timed runs (the exact model's first call, compiling sweep.kernel.exact or
loading it from numba's cache, is reported on its own; dopri5's on a small sweep); the time spent inside
sweep.kernel.exact is reported beside the whole.

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
from sweep.kernel import exact

SWEEP = {
    "axes": {
        "depth": [1, 2, 3, 4],
        "width": [5],
        "init_norm": [0.3, 1.0, 3.0, 10.0],
        "seed": {"start": 0, "stop": 256},
    },
    "horizon": 20.0,
    "eps": 1e-6,
    "checkpoints": {"count": 101, "spacing": "log"},
}


def compute(raw):
    s = specs.parse(raw)
    p = problem.build(s.problem)
    out = {
        k: np.empty(s.shape + ((s.checkpoints.count,) if k == "excess_loss" else ()))
        for k in ("excess_loss", "time_to_eps")
    }
    batch._direction.cache_clear()  # each run draws every seed's start direction once, as a fresh worker would
    t = time.perf_counter()
    for region in batch.regions(s.shape, batch.chunk_shape(s.shape, tuple(s.axes), s.batch)):
        res = batch.run_batch(s, p, region)
        for k, values in out.items():
            values[region] = res[k]
    return out, time.perf_counter() - t


class _Inside:
    """Wall time spent in sweep.kernel.exact.exact_run (batch.py imports it at each call)."""

    def __init__(self):
        self.seconds = 0.0
        self.saved = {name: getattr(exact, name) for name in ("exact_run",)}

    def __enter__(self):
        for name, fn in self.saved.items():
            setattr(exact, name, self._timed(fn))
        return self

    def __exit__(self, *exc):
        for name, fn in self.saved.items():
            setattr(exact, name, fn)

    def _timed(self, fn):
        def run(*args):
            t = time.perf_counter()
            try:
                return fn(*args)
            finally:
                self.seconds += time.perf_counter() - t

        return run


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    dopri = {**SWEEP, "model": "induced", "integrator": {"method": "dopri5", "rtol": 1e-12, "atol": 1e-15}}
    first = compute({**SWEEP, "model": "exact"})[1]  # compiles sweep.kernel.exact (or loads numba's cache)
    compute({**dopri, "axes": {**SWEEP["axes"], "init_norm": [1.0], "seed": [0]}})  # compiles the integrator
    inside = []
    runs = {"exact": [], "dopri5": [compute(dopri) for _ in range(args.repeats)]}
    for _ in range(args.repeats):
        with _Inside() as clock:
            runs["exact"].append(compute({**SWEEP, "model": "exact"}))
        inside.append(clock.seconds)
    (ex, _), (dp, _) = runs["exact"][0], runs["dopri5"][0]
    t_ex = statistics.median(t for _, t in runs["exact"])
    t_dp = statistics.median(t for _, t in runs["dopri5"])
    cells = ex["time_to_eps"].size
    scale = dp["excess_loss"][..., :1]
    print(f"{cells} cells, {SWEEP['checkpoints']['count']} checkpoints, horizon {SWEEP['horizon']}")
    print(
        "  time_to_eps: max |exact / dopri5 − 1| = "
        f"{np.nanmax(np.abs(ex['time_to_eps'] / dp['time_to_eps'] - 1)):.2e}  (target ≤ 1e-7)"
    )
    print(
        "  excess loss: max |exact − dopri5| / excess(0) = "
        f"{np.nanmax(np.abs(ex['excess_loss'] - dp['excess_loss']) / scale):.2e}"
    )
    print(
        f"  wall: exact {t_ex * 1e3:.1f} ms ({t_ex / cells * 1e6:.1f} µs a cell), dopri5 (rtol 1e-12) {t_dp:.2f} s "
        f"({t_dp / cells * 1e6:.0f} µs a cell) → speed-up {t_dp / t_ex:.1f}x (target ≥ 30x: "
        f"{'met' if t_dp / t_ex >= 30 else 'NOT met'}; medians of {args.repeats})"
    )
    print(
        f"  exact: first call {first:.2f} s (compile or cache load, not timed above); inside sweep.kernel.exact "
        f"{statistics.median(inside) * 1e3:.1f} ms of the {t_ex * 1e3:.1f} ms (the rest is the batch around it)"
    )


if __name__ == "__main__":
    main()
