"""Target 2 — time to solution on the paper's example: m = 50, dx = 5, dy = 1, ‖W0‖ = 10‖Z‖,
depths 1–5, 64 seeds, horizon 0.1, induced and layerwise models.

The paper's run (forward Euler, step 1e-6, 1e5 steps) against dopri5 at the loosest tolerance whose
error in the final excess loss matches or beats Euler's — both measured against the exact closed form
(docs/theory.md §4, ``model: exact``). Same process, single-threaded, no Ray; wall times are medians.

    python bench/time_to_solution.py [--seeds 64] [--repeats 3]
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
from sweep.init import initial_layers


def sweep_final_excess(raw):
    """(final excess loss of every cell, wall seconds) — the batches a Ray task would run, in-process."""
    s = specs.parse(raw)
    p = problem.build(s.problem)
    out = np.empty(s.shape)
    t = time.perf_counter()
    for region in batch.regions(s.shape, batch.chunk_shape(s.shape, tuple(s.axes), s.batch)):
        res = batch.run_batch(s, p, region)
        out[region] = res["excess_loss"][..., -1]
    return out, time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    base = {"problem": {"m": 50, "dx": 5, "dy": 1, "seed": 0}, "init": {"scheme": "balanced"},
            "axes": {"depth": [1, 2, 3, 4, 5], "width": [5], "init_norm": [10.0], "seed": {"start": 0, "stop": args.seeds}},
            "horizon": 0.1, "eps": 1e-6, "checkpoints": {"count": 2, "spacing": "linear"}, "batch": 256}
    exact, t_exact = sweep_final_excess({**base, "model": "exact"})
    results = {}
    print(f"paper's example: depths 1–5 × {args.seeds} seeds, horizon 0.1; reference: model exact ({t_exact:.2f} s)\n")
    for model in ("induced", "layerwise"):
        euler, t_euler = sweep_final_excess({**base, "model": model, "integrator": {"method": "euler", "step": 1e-6}})
        err_euler = np.abs(euler / exact - 1)
        print(f"{model}: Euler h = 1e-6 (1e5 steps): {t_euler:.1f} s, final excess rel. error max {err_euler.max():.2e}, "
              f"median {np.median(err_euler):.2e}")
        chosen = None
        for rtol in (1e-5, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10):
            raw = {**base, "model": model, "integrator": {"method": "dopri5", "rtol": rtol, "atol": rtol * 1e-3}}
            final, _ = sweep_final_excess(raw)
            err = np.abs(final / exact - 1)
            ok = err.max() <= err_euler.max()
            print(f"  dopri5 rtol {rtol:.0e}: max rel. error {err.max():.2e} {'≤' if ok else '>'} Euler's")
            if ok:
                chosen = raw
                break
        times = [sweep_final_excess(chosen)[1] for _ in range(args.repeats)]
        t_dopri = statistics.median(times)
        print(f"  → dopri5 at rtol {chosen['integrator']['rtol']:.0e}: {t_dopri:.3f} s (median of {args.repeats}); "
              f"Euler / dopri5 = {t_euler / t_dopri:.0f}x  (target ≥ 100x)\n")
        results[model] = (chosen, t_dopri)
    diffrax_comparison(base, results["layerwise"], args.repeats)


def diffrax_comparison(base, chosen_and_time, repeats):
    """diffrax Dopri5 under vmap on the layerwise flow, same starts and tolerance, compiled once per
    depth (compile time excluded); the error against the exact form printed beside it."""
    try:
        import diffrax
        import jax
        import jax.numpy as jnp
    except ImportError:
        print("diffrax not importable: the diffrax Dopri5 comparison is skipped (pip install diffrax to run it)")
        return
    jax.config.update("jax_enable_x64", True)
    raw, t_linflow = chosen_and_time
    rtol, atol = raw["integrator"]["rtol"], raw["integrator"]["atol"]
    s = specs.parse(raw)
    p = problem.build(s.problem)
    z = jnp.asarray(p.target)
    exact, _ = sweep_final_excess({**base, "model": "exact"})
    solvers, starts = [], []
    for i, depth in enumerate(s.axes["depth"]):
        region = (slice(i, i + 1), slice(0, 1), slice(0, 1), slice(0, len(s.axes["seed"])))
        c = batch.cells(s, region)
        layers = [initial_layers("balanced", p.target, problem_seed=0, seed=int(seed), depth=depth,
                                       width=5, init_norm=10.0) for seed in c["seed"]]
        starts.append(tuple(jnp.asarray(np.stack(ws)) for ws in zip(*layers)))

        def flow(t, ws, args, depth=depth):
            prefix = [jnp.eye(p.dx)]
            for w in ws:
                prefix.append(w @ prefix[-1])
            e = z - prefix[-1]
            grads, suffix = [], jnp.eye(p.dy)
            for j in range(depth - 1, -1, -1):
                grads.append(suffix.T @ e @ prefix[j].T)
                suffix = suffix @ ws[j]
            return tuple(reversed(grads))

        def solve(ws, flow=flow):
            sol = diffrax.diffeqsolve(diffrax.ODETerm(flow), diffrax.Dopri5(), 0.0, s.horizon, None, ws,
                                      stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
                                      saveat=diffrax.SaveAt(t1=True), max_steps=1_000_000)
            w = sol.ys[0]
            for layer in sol.ys[1:]:
                w = layer[0] @ w
            return 0.5 * jnp.sum((z - w) ** 2)

        solvers.append(jax.jit(jax.vmap(solve)))
    finals = [jax.block_until_ready(f(w)) for f, w in zip(solvers, starts)]  # compile
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for f, w in zip(solvers, starts):
            jax.block_until_ready(f(w))
        times.append(time.perf_counter() - t)
    err = np.abs(np.stack([np.asarray(x) for x in finals]) / exact[:, 0, 0, :] - 1)
    t_dx = statistics.median(times)
    print(f"diffrax Dopri5 (vmap, jit, rtol {rtol:.0e}) on the layerwise flow: {t_dx:.3f} s, max rel. error "
          f"{err.max():.2e}; diffrax / linflow wall = {t_dx / t_linflow:.2f}x  (target ≥ 1x)")


if __name__ == "__main__":
    main()
