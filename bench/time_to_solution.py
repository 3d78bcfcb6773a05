"""Target 2 — time to solution on the paper's example at Euler's accuracy: m = 50, dx = 5, dy = 1,
width 5, balanced starts with ‖W0‖ = 10‖Z‖, horizon 0.1, the layerwise flow; depths 1–5 with a batch of
B = 4096 trajectories each (seeds 0…4095).

1. Reference: the exact closed form (docs/theory.md §4, ``model: exact`` through ``sweep.batch``) for
   every trajectory.
2. Euler's accuracy: the paper's run (forward Euler, h = 1e-6, 1e5 steps) on the first --euler-seeds
   seeds of each depth (it is slow); its max relative error in the final excess loss is the accuracy
   target.
3. linflow: ``sweep.kernel.integrate`` with dopri5 (atol = rtol·1e-3) at the loosest rtol in
   1e-5, 1e-6, … whose max relative error over all 5·B trajectories is ≤ Euler's.
4. diffrax (when importable): Dopri5 + PIDController, vmap over the batch, jit, one compiled solver per
   depth, at the same rtol and atol — tightened tenfold while its max error is above Euler's, so both
   are timed at the measured accuracy. The flow is the same narrow-end formulation as linflow's. Also
   tried: the same vmapped solve over blocks of 1024 and 256 trajectories under lax.map (the same
   numbers up to rounding, checked: XLA's code for another shape may round differently); the fastest of
   the three is timed.

Times are of the integration alone (the starts are built beforehand, and no store), medians of
--repeats, summed over the five depths; compile time (linflow's first call, diffrax's jit) is excluded
and printed. Single-threaded, in-process, no Ray.

    python bench/time_to_solution.py [--seeds 4096] [--euler-seeds 64] [--repeats 3] [--quick]
"""

from __future__ import annotations

import os

os.environ["OPENBLAS_NUM_THREADS"] = "1"
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["NUMBA_NUM_THREADS"] = "1"
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
).strip()

import argparse
import statistics
import time

import numpy as np

from sweep import batch, kernel, problem
from sweep import spec as specs
from sweep.init import initial_layers, layer_dims, rank_of

DEPTHS = (1, 2, 3, 4, 5)
WIDTH, INIT_NORM, HORIZON, EPS = 5, 10.0, 0.1, 1e-6
PROBLEM = {"m": 50, "dx": 5, "dy": 1, "seed": 0}
RTOLS = (1e-5, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10)
TARGET = 2.0  # linflow dopri5 ≥ 2x faster than diffrax Dopri5


def exact_final_excess(seeds):
    """(depths, seeds) final excess loss from the closed form, and the wall time."""
    raw = {
        "problem": PROBLEM,
        "init": {"scheme": "balanced"},
        "model": "exact",
        "axes": {
            "depth": list(DEPTHS),
            "width": [WIDTH],
            "init_norm": [INIT_NORM],
            "seed": {"start": 0, "stop": seeds},
        },
        "horizon": HORIZON,
        "eps": EPS,
        "checkpoints": {"count": 2, "spacing": "linear"},
        "batch": seeds,
    }
    s = specs.parse(raw)
    p = problem.build(s.problem)
    t = time.perf_counter()
    out = np.stack(
        [
            batch.run_batch(s, p, (slice(i, i + 1), slice(0, 1), slice(0, 1), slice(0, seeds)))["excess_loss"][
                0, 0, 0, :, -1
            ]
            for i in range(len(DEPTHS))
        ]
    )
    return out, time.perf_counter() - t


def setups(target, seeds):
    """Per depth: (model, layers [(B, d_j, d_{j−1})]) for seeds 0…seeds−1 — the starts ``linflow run``
    builds for these cells (sweep.init, problem seed 0)."""
    out = []
    for depth in DEPTHS:
        dims = layer_dims(PROBLEM["dx"], PROBLEM["dy"], depth, WIDTH)
        tail = kernel.tail_loss(target, rank_of(PROBLEM["dx"], PROBLEM["dy"], depth, WIDTH))
        model = kernel.Layerwise(dims, target, tail)
        starts = [
            initial_layers(
                "balanced",
                target,
                problem_seed=PROBLEM["seed"],
                seed=seed,
                depth=depth,
                width=WIDTH,
                init_norm=INIT_NORM,
            )
            for seed in range(seeds)
        ]
        out.append((model, [np.stack(ws) for ws in zip(*starts)]))
    return out


def linflow_run(setup, n, **settings):
    """Final excess loss (depths, n) of the first n trajectories of each depth, and the wall time."""
    finals, total = [], 0.0
    for model, layers in setup:
        y0 = model.pack([w[:n] for w in layers])
        t = time.perf_counter()
        res = kernel.integrate(model, y0, horizon=HORIZON, checkpoints=np.array([0.0, HORIZON]), eps=EPS, **settings)
        total += time.perf_counter() - t
        finals.append(res.excess[:, -1])
    return np.stack(finals), total


def rel_error(final, exact):
    return np.abs(final / exact[:, : final.shape[1]] - 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=4096, help="trajectories per depth (B)")
    ap.add_argument("--euler-seeds", type=int, default=64, help="trajectories per depth for Euler's accuracy")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="256 seeds, Euler on 8 seeds, 1 repeat (for development)")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.euler_seeds, args.repeats = min(args.seeds, 256), min(args.euler_seeds, 8), 1
    nb, ne = args.seeds, min(args.euler_seeds, args.seeds)
    target = problem.build(PROBLEM).target

    exact, t_exact = exact_final_excess(nb)
    setup = setups(target, nb)
    print(
        f"paper's example, layerwise: depths 1–5 × B = {nb} seeds, width 5, ‖W0‖ = 10‖Z‖, t = {HORIZON}; "
        f"reference: closed form ({t_exact:.2f} s); kernel version {getattr(kernel, 'KERNEL_VERSION', '?')}; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )

    t = time.perf_counter()
    linflow_run(setup, 2, method=kernel.EULER, step=1e-3)  # compile (excluded)
    t_first = time.perf_counter() - t
    euler, t_euler = linflow_run(setup, ne, method=kernel.EULER, step=1e-6)
    t_euler = statistics.median(
        [t_euler] + [linflow_run(setup, ne, method=kernel.EULER, step=1e-6)[1] for _ in range(args.repeats - 1)]
    )  # the ratio to the paper's Euler below carries this baseline's noise: a median, as dopri5's
    err_euler = rel_error(euler, exact)
    goal = err_euler.max()
    print(
        f"Euler h = 1e-6 (1e5 steps) on {ne} seeds/depth: {t_euler:.3f} s (median of {args.repeats}); final excess "
        f"rel. error max {goal:.2e}, median {np.median(err_euler):.2e}  → accuracy target {goal:.2e}"
    )

    t = time.perf_counter()
    linflow_run(setup, 2, method=kernel.DOPRI5, rtol=1e-6, atol=1e-9)
    t_compile = time.perf_counter() - t
    print(
        f"linflow first calls (incl. any compile; excluded below): Euler {t_first:.2f} s, then dopri5 {t_compile:.2f} s"
    )
    chosen = None
    for rtol in RTOLS:
        final, _ = linflow_run(setup, nb, method=kernel.DOPRI5, rtol=rtol, atol=rtol * 1e-3)
        err = rel_error(final, exact)
        ok = err.max() <= goal
        print(
            f"  linflow dopri5 rtol {rtol:.0e}: max rel. error {err.max():.2e} {'≤' if ok else '>'} Euler's "
            f"(median {np.median(err):.2e})"
        )
        if ok:
            chosen = rtol
            break
    if chosen is None:
        print("  no tolerance down to 1e-10 reaches Euler's accuracy: stopping")
        return
    times = [
        linflow_run(setup, nb, method=kernel.DOPRI5, rtol=chosen, atol=chosen * 1e-3)[1] for _ in range(args.repeats)
    ]
    t_linflow = statistics.median(times)
    per_traj_ratio = (t_euler / ne) / (t_linflow / nb)
    print(
        f"→ linflow dopri5 at rtol {chosen:.0e}: {t_linflow:.3f} s for {len(DEPTHS)} × {nb} trajectories "
        f"(median of {args.repeats}); per trajectory "
        f"Euler / dopri5 = {per_traj_ratio:.0f}x"
    )
    diffrax_comparison(setup, exact, goal, chosen, t_linflow, args.repeats)


def diffrax_comparison(setup, exact, goal, rtol, t_linflow, repeats):
    """diffrax Dopri5, vmap + jit, one compiled solver per depth. The tolerance is set on the plain
    vmap over the batch; then the same solve vmapped over blocks of trajectories under lax.map (the
    state of a block stays in cache: measured ~2x faster at B = 4096) — the fastest variant is timed."""
    try:
        import diffrax
        import jax
        import jax.numpy as jnp
    except ImportError:
        print("diffrax not importable: the diffrax Dopri5 comparison is skipped (pip install diffrax to run it)")
        return
    jax.config.update("jax_enable_x64", True)
    z = jnp.asarray(setup[0][0].target)  # (1, dx)

    def flow(t, ws, args):  # one trajectory, the narrow-end products (dy = 1)
        n = len(ws)
        s = [None] * n
        s[n - 1] = ws[n - 1]
        for j in range(n - 1, 0, -1):
            s[j - 1] = s[j] @ ws[j - 1]
        v = [(z - s[0]).T]
        for j in range(1, n):
            v.append(ws[j - 1] @ v[-1])
        return tuple([s[j + 1].T * v[j].T for j in range(n - 1)] + [v[n - 1].T])

    def make(rtol, block):
        def solve(ws):
            sol = diffrax.diffeqsolve(
                diffrax.ODETerm(flow),
                diffrax.Dopri5(),
                0.0,
                HORIZON,
                None,
                ws,
                stepsize_controller=diffrax.PIDController(rtol=rtol, atol=rtol * 1e-3),
                saveat=diffrax.SaveAt(t1=True),
                max_steps=1_000_000,
            )
            w = sol.ys[0][0]
            for layer in sol.ys[1:]:
                w = layer[0] @ w
            return 0.5 * jnp.sum((z - w) ** 2)

        if block is None:
            return jax.jit(jax.vmap(solve))
        return jax.jit(lambda ws: jax.lax.map(jax.vmap(solve), ws).reshape(-1))

    nb = len(setup[0][1][0])

    def starts(block):
        if block is None:
            return [tuple(jnp.asarray(w) for w in layers) for _, layers in setup]
        return [tuple(jnp.asarray(w.reshape(nb // block, block, *w.shape[1:])) for w in layers) for _, layers in setup]

    def compiled(rtol, block):
        solvers, args = [make(rtol, block) for _ in setup], starts(block)
        t = time.perf_counter()
        finals = [jax.block_until_ready(f(w)) for f, w in zip(solvers, args)]  # compile + first call
        return solvers, args, finals, time.perf_counter() - t

    def wall(solvers, args):
        t = time.perf_counter()
        for f, w in zip(solvers, args):
            jax.block_until_ready(f(w))
        return time.perf_counter() - t

    tails = np.array([m.tail for m, _ in setup])[:, None]
    while True:
        solvers, args, finals, t_compile = compiled(rtol, None)
        err = rel_error(np.stack([np.asarray(x) for x in finals]) - tails, exact)
        ok = err.max() <= goal
        print(
            f"  diffrax Dopri5 rtol {rtol:.0e}: max rel. error {err.max():.2e} {'≤' if ok else '>'} Euler's "
            f"(median {np.median(err):.2e})"
        )
        if ok or rtol <= RTOLS[-1]:
            break
        rtol /= 10
    variants = [("vmap over the batch", solvers, args, t_compile, 0.0)]
    for block in (1024, 256):
        if block < nb and nb % block == 0:
            solvers_b, args_b, finals_b, t_b = compiled(rtol, block)
            diff = max(float(np.max(np.abs(np.asarray(x) / np.asarray(y) - 1))) for x, y in zip(finals_b, finals))
            assert diff < 1e-10, f"diffrax in blocks of {block}: final excess differs by {diff:.1e} (relative)"
            variants.append((f"lax.map over vmapped blocks of {block}", solvers_b, args_b, t_b, diff))
    screened = []
    for label, solvers, args, t_c, diff in variants:
        sec = min(wall(solvers, args) for _ in range(2))
        print(
            f"    {label:36s} {sec:7.3f} s (best of 2)   compile + first call {t_c:5.1f} s (all depths)   "
            f"vs whole batch {diff:.0e}"
        )
        screened.append((sec, label, solvers, args))
    _, label, solvers, args = min(screened, key=lambda x: x[0])
    t_dx = statistics.median([wall(solvers, args) for _ in range(repeats)])
    print(
        f"→ diffrax {diffrax.__version__} Dopri5 (jit, {label}; JAX {jax.__version__}) at rtol {rtol:.0e}: "
        f"{t_dx:.3f} s for {len(setup)} × {nb} trajectories (median of {repeats}; compile excluded)"
    )
    print(f"diffrax / linflow wall = {t_dx / t_linflow:.2f}x  (target ≥ {TARGET:g}x)")


if __name__ == "__main__":
    main()
