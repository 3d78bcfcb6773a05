"""Target 4 — ``model: exact``: balanced scalar-output cells from the closed form of docs/theory.md §4
(compiled quadrature) against dopri5 on the induced flow at tight tolerance: agreement and speed-up.
The exact model is run once before the timed runs; that first call (compiling sweep.kernel.exact, or
loading it from numba's cache) is reported on its own, as is the time spent inside sweep.kernel.exact.

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
    "axes": {"depth": [1, 2, 3, 4, 5], "width": [5], "init_norm": [0.3, 1.0, 10.0], "seed": {"start": 0, "stop": 16}},
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
    t = time.perf_counter()
    for region in batch.regions(s.shape, batch.chunk_shape(s.shape, tuple(s.axes), s.batch)):
        res = batch.run_batch(s, p, region)
        for k, values in out.items():
            values[region] = res[k]
    return out, time.perf_counter() - t


class _Inside:
    """Wall time spent in sweep.kernel.exact's public functions (batch.py imports them at each call)."""

    def __init__(self):
        self.seconds = 0.0
        self.saved = {name: getattr(exact, name) for name in ("exact_path", "exact_time_to_eps")}

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
    inside = []
    runs = {"exact": [], "dopri5": [compute(dopri) for _ in range(args.repeats)]}
    for _ in range(args.repeats):
        with _Inside() as clock:
            runs["exact"].append(compute({**SWEEP, "model": "exact"}))
        inside.append(clock.seconds)
    (ex, _), (dp, _) = runs["exact"][0], runs["dopri5"][0]
    t_ex = statistics.median(t for _, t in runs["exact"])
    t_dp = statistics.median(t for _, t in runs["dopri5"])
    scale = dp["excess_loss"][..., :1]
    print(f"{ex['time_to_eps'].size} cells, 101 checkpoints, horizon {SWEEP['horizon']}")
    print(
        "  time_to_eps: max |exact / dopri5 − 1| = "
        f"{np.nanmax(np.abs(ex['time_to_eps'] / dp['time_to_eps'] - 1)):.2e}  (target ≤ 1e-7)"
    )
    print(
        "  excess loss: max |exact − dopri5| / excess(0) = "
        f"{np.nanmax(np.abs(ex['excess_loss'] - dp['excess_loss']) / scale):.2e}"
    )
    print(
        f"  wall: exact {t_ex * 1e3:.1f} ms, dopri5 (rtol 1e-12) {t_dp:.2f} s → speed-up {t_dp / t_ex:.0f}x "
        f"(medians of {args.repeats})"
    )
    print(
        f"  exact: first call {first:.2f} s (compile or cache load, not timed above); inside sweep.kernel.exact "
        f"{statistics.median(inside) * 1e3:.1f} ms of the {t_ex * 1e3:.1f} ms (the rest is the batch around it)"
    )


if __name__ == "__main__":
    main()
