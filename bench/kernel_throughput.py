"""Target 1 — kernel throughput: fixed-step Euler on the layerwise flow, dx = 5, dy = 1, a batch of
4096 trajectories, N = 4 / width 5 and N = 8 / width 16.

Baselines run in this process on the same starts: (a) a per-trajectory NumPy loop, as a researcher
writes it by hand; (b) JAX vmap + jit + lax.scan of the same step, when JAX is importable. Everything
single-threaded (one Ray task per core is linflow's parallelism). Prints traj-steps/s (medians over
repeats), achieved GFLOP/s against this machine's large-matmul GFLOP/s, and the ratios.

    python bench/kernel_throughput.py [--repeats 5]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import argparse
import itertools
import statistics
import time

import numpy as np

from sweep import kernel
from sweep.init import layer_dims
from sweep.problem import synthetic

B, DX, DY, H = 4096, 5, 1, 1e-4
CASES = [(4, 5), (8, 16)]


def starts(depth, width, batch, seed=0):
    dims = layer_dims(DX, DY, depth, width)
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((batch, dims[j + 1], dims[j])) / np.sqrt(dims[j]) for j in range(depth)]


def flops_per_step(dims):
    """Flops of one Euler step of linflow's layerwise kernel: products from the narrow end
    (3·dy·d_j·d_{j−1} multiply-adds per layer) plus the update (2 per parameter)."""
    macs = sum(3 * DY * a * b for a, b in itertools.pairwise(dims))
    return 2 * macs + 2 * sum(a * b for a, b in itertools.pairwise(dims))


def timed(fn, repeats):
    fn()  # warm-up (and JIT compile)
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def linflow_rate(depth, width, steps, repeats):
    dims = layer_dims(DX, DY, depth, width)
    model = kernel.Layerwise(dims, synthetic(50, DX, DY, 0).target)
    y0 = model.pack(starts(depth, width, B))
    tc = np.array([0.0, steps * H])
    sec = timed(lambda: kernel.integrate(model, y0, kernel.EULER, horizon=steps * H, checkpoints=tc,
                                         eps=1e-300, step=H), repeats)
    return B * steps / sec


def loop_rate(depth, width, steps, ntraj=16):
    """(a): one trajectory at a time, plain NumPy 2-D products, as written from the formula."""
    z = synthetic(50, DX, DY, 0).target
    layers = starts(depth, width, ntraj)

    def run():
        for b in range(ntraj):
            ws = [w[b].copy() for w in layers]
            for _ in range(steps):
                prefix = [np.eye(DX)]
                for w in ws:
                    prefix.append(w @ prefix[-1])
                e = z - prefix[-1]
                grads = []
                suffix = np.eye(DY)
                for j in range(depth - 1, -1, -1):
                    grads.append(suffix.T @ e @ prefix[j].T)
                    suffix = suffix @ ws[j]
                for w, g in zip(ws, reversed(grads)):
                    w += H * g

    t = time.perf_counter()
    run()
    return ntraj * steps / (time.perf_counter() - t)


def jax_rate(depth, width, steps, repeats):
    """(b): the same Euler step in JAX, vmap over the batch, lax.scan over steps, jit."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    jax.config.update("jax_enable_x64", True)
    z = jnp.asarray(synthetic(50, DX, DY, 0).target)

    def step(ws, _):
        prefix = [jnp.eye(DX)]
        for w in ws:
            prefix.append(w @ prefix[-1])
        e = z - prefix[-1]
        grads, suffix = [], jnp.eye(DY)
        for j in range(depth - 1, -1, -1):
            grads.append(suffix.T @ e @ prefix[j].T)
            suffix = suffix @ ws[j]
        return [w + H * g for w, g in zip(ws, reversed(grads))], None

    def trajectory(ws):
        return jax.lax.scan(step, ws, None, length=steps)[0]

    run = jax.jit(jax.vmap(trajectory))
    ws0 = [jnp.asarray(w) for w in starts(depth, width, B)]
    sec = timed(lambda: jax.block_until_ready(run(ws0)), repeats)
    return B * steps / sec


def matmul_gflops(n=1024, repeats=5):
    a = np.random.default_rng(0).standard_normal((n, n))
    return 2 * n**3 / timed(lambda: a @ a, repeats) / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    peak = matmul_gflops()
    print(f"machine: {os.cpu_count()} cores; single-threaded large matmul (1024²): {peak:.1f} GFLOP/s")
    print(f"batch {B}, dx = {DX}, dy = {DY}, Euler h = {H}; medians of {args.repeats} repeats\n")
    for depth, width in CASES:
        dims = layer_dims(DX, DY, depth, width)
        steps = 400 if width <= 5 else 100
        ours = linflow_rate(depth, width, steps, args.repeats)
        gf = ours * flops_per_step(dims) / 1e9
        loop = statistics.median(loop_rate(depth, width, 50) for _ in range(3))
        jx = jax_rate(depth, width, steps, args.repeats)
        print(f"N = {depth}, width {width}:")
        print(f"  linflow kernel       {ours:12.4g} traj-steps/s   {gf:6.2f} GFLOP/s ({100 * gf / peak:.1f}% of large-matmul)")
        print(f"  (a) per-trajectory   {loop:12.4g} traj-steps/s   linflow / loop = {ours / loop:.1f}x   (target ≥ 40x)")
        if jx is None:
            print("  (b) JAX              not importable: skipped (pip install jax to compare)")
        else:
            target = 2.0 if width <= 5 else 1.5
            print(f"  (b) JAX vmap+scan    {jx:12.4g} traj-steps/s   linflow / JAX = {ours / jx:.2f}x   (target ≥ {target}x)")
        print()


if __name__ == "__main__":
    main()
