"""Finished trajectories cost nothing: a batch in which most trajectories stop early (at ε) against its
two parts run apart, same kernel, same process. A finished trajectory's column is refilled with the next
one of the batch (sweep/kernel/stepper.py, `integrate`), so the mixed batch should cost the sum of its parts.

    python bench/compaction.py [--repeats 5]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import statistics
import time

import numpy as np

from sweep import kernel
from sweep.init import layer_dims
from sweep.problem import synthetic


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    z = synthetic(50, 5, 1, seed=0).target
    model = kernel.Layerwise(layer_dims(5, 1, 4, 5), z)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4096, model.size)) / np.sqrt(5)
    # the early ones start near the optimum along the layers' own product: they stop after a few steps
    early = np.arange(4096) % 4 != 0
    kw = {"horizon": 2.0, "checkpoints": np.linspace(0, 2, 5), "eps": 1e-4, "stop_at_eps": True, "step": 1e-3}
    w[early] = _optimum_layers(model, z) + 3e-2 * w[early]  # a balanced optimum, slightly perturbed
    kernel.integrate(model, w[:64], kernel.EULER, **kw)  # compile / load outside the timing

    def timed(y):
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            r = kernel.integrate(model, y, kernel.EULER, **kw)
            times.append(time.perf_counter() - t)
        return statistics.median(times), r

    mixed, r_mixed = timed(w)
    alone, r_alone = timed(w[~early])
    short, _ = timed(w[early])
    print(
        f"4096 trajectories: {early.sum()} stop early at ε (median {np.median(r_mixed.steps[early]):.0f} steps), "
        f"{(~early).sum()} run {np.median(r_alone.steps):.0f} steps"
    )
    print(
        f"  mixed batch {mixed:.3f} s; the long ones alone {alone:.3f} s, the early ones alone {short:.3f} s: "
        f"mixed / (long + early) = {mixed / (alone + short):.2f}  (1: a finished trajectory costs nothing; "
        f"medians of {args.repeats})"
    )
    assert np.array_equal(r_mixed.excess[~early], r_alone.excess, equal_nan=True)


def _optimum_layers(model, z):
    """Balanced layers whose product is Z (rank one: W_1 = s^{1/N} v ..., the rest s^{1/N} e₁ chains)."""
    n = model.depth
    s = np.linalg.norm(z)
    v = z.ravel() / s
    c = s ** (1.0 / n)
    layers = []
    for j, (rows, cols) in enumerate(model.shapes):
        layer = np.zeros((rows, cols))
        if j == 0:
            layer[0] = c * v
        else:
            layer[0, 0] = c
        layers.append(layer[None])
    return model.pack(layers)[0]


if __name__ == "__main__":
    main()
