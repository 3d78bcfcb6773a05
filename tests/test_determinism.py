"""Bitwise determinism: a trajectory's numbers depend on its own start and settings only — never on the
batch it is integrated in (its size, its position there, its companions and how and when they finish,
blow up or stop), nor, through the CLI, on the batch size or the number of workers of a sweep.

Written against the public API of ``sweep.kernel`` only, so that they pin any implementation (a
batch-last compiled kernel with vectorized loops over trajectories, cache-sized blocks, finished
trajectories compacted or masked): positions 0, 7, 8, 63 and the last of batches of 1, 7, 8, 64 and 4097
put a trajectory in the body and in the remainder of vectorized loops of widths 2, 4 and 8, first and last
in a batch; 255, 256 and 4096 of 4097 on both sides of block boundaries (power-of-two blocks up to 256
trajectories), the last one alone in its block."""

import os
import subprocess
import sys
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

from sweep import kernel
from sweep.init import layer_dims
from sweep.problem import synthetic
from sweep.schema import Status

FIELDS = ("excess", "time_to_eps", "status", "steps", "rhs_evals", "y_final", "t_final", "w")  # every Result field
POSITIONS = (0, 7, 8, 63, 255, 256)  # and the last; 255 and 256 fit only in the batch of 4097


def same_bits(a, b) -> bool:
    """Bitwise the same numbers: equal values (NaN = NaN), dtype and shape, and the same sign of zero."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape or not np.array_equal(a, b, equal_nan=True):
        return False
    if a.dtype.kind == "f":
        zero = a == 0
        return np.array_equal(np.signbit(a[zero]), np.signbit(b[zero]))
    return True


def assert_same_trajectory(got, i, ref, j, what):
    """Trajectory ``i`` of result ``got`` has bitwise the numbers of trajectory ``j`` of ``ref``, in every field."""
    for field in FIELDS:
        assert same_bits(np.asarray(getattr(got, field))[i], np.asarray(getattr(ref, field))[j]), (*what, field)


def assert_shapes(r, nb, nc, size):
    for field in FIELDS:
        want = {"excess": (nb, nc), "y_final": (nb, size), "w": (nb, nc, *r.w.shape[2:])}.get(field, (nb,))
        assert np.asarray(getattr(r, field)).shape == want, field


# --------------------------------------------------------------------------------------------------
# Models, methods and starts
# --------------------------------------------------------------------------------------------------


def _targets():
    return synthetic(50, 5, 1, seed=0).target, synthetic(50, 5, 3, seed=0).target, synthetic(30, 2, 4, seed=1).target


def _general(dx, dy):
    """A problem with inputs not whitened (its target map and Σ) and a completion-style mask of the same shape."""
    p = synthetic(30, dx, dy, seed=3, input_spectrum=np.geomspace(0.2, 3.0, dx))
    mask = np.random.default_rng(4).random((dy, dx)) < 0.6
    return p.target, p.sigma, p.tail, mask


@cache
def case(name):
    """(model, horizon, eps): horizon and eps chosen so that a log-uniform spread of init norms gives a
    mix of trajectories converging early, unconverged at the horizon, and (euler, rk4) diverged."""
    z1, z3, zf = _targets()
    if name == "layerwise-scalar":  # dims (5, 4, 4, 1): the vector (outer-product) path
        model, horizon, eps = kernel.Layerwise(layer_dims(5, 1, 3, 4), z1), 1.0, 1e-3
    elif name == "layerwise-flip":  # dx = 2 < dy = 4: the transposed network, matrix products, dims (2, 3, 3, 4)
        model, horizon, eps = kernel.Layerwise(layer_dims(2, 4, 3, 3), zf), 2.0, 1e-2
        assert model.flip
    elif name == "induced":
        model, horizon, eps = kernel.Induced(3, z3), 2.0, 1e-2
    elif name == "induced-rank1":  # narrow: projected onto rank 1 at every reported state
        model, horizon, eps = kernel.Induced(3, z3, kernel.tail_loss(z3, 1), rank=1), 2.0, 1e-2
    elif name == "layerwise-sigma-flip":  # inputs not whitened, Σ on the left of the transposed network
        a, sigma, tail, _ = _general(2, 4)
        model, horizon, eps = kernel.Layerwise(layer_dims(2, 4, 3, 3), a, tail(2), sigma=sigma), 2.0, 1e-2
    elif name == "layerwise-mask":
        a, _, _, mask = _general(5, 3)
        model, horizon, eps = kernel.Layerwise(layer_dims(5, 3, 3, 4), a, mask=mask), 1.5, 1e-2
    elif name == "induced-sigma":
        a, sigma, tail, _ = _general(5, 3)
        model, horizon, eps = kernel.Induced(3, a, tail(3), sigma=sigma), 2.0, 1e-2
    elif name == "induced-mask-scalar":  # the vector path of the general losses
        a, _, _, mask = _general(5, 1)
        model, horizon, eps = kernel.Induced(3, a, mask=mask), 2.0, 1e-2
    else:
        raise KeyError(name)
    return model, horizon, eps * float(np.sum(model.target**2))


METHODS = {
    "euler": (kernel.EULER, {"step": 1e-2}),
    "rk4": (kernel.RK4, {"step": 2e-2}),
    "dopri5": (kernel.DOPRI5, {"rtol": 1e-6, "atol": 1e-9}),  # per-trajectory step sizes
}


def starts(model, norms, seed):
    """Gaussian starts whose product has about ``norms`` × ‖Z‖ (layers of equal norm, not balanced)."""
    rng = np.random.default_rng(seed)
    a = np.asarray(norms, dtype=float) * np.linalg.norm(model.target)
    y = rng.standard_normal((len(a), model.size))
    if isinstance(model, kernel.Layerwise):
        for w in model.layers(y):
            w *= (a ** (1 / model.depth) / np.linalg.norm(w, axis=(1, 2)))[:, None, None]
    else:
        y *= (a / np.linalg.norm(y, axis=1))[:, None]
    return y


@cache
def companions(name, n):
    """``n`` varied starts: init norms log-uniform in [0.02, 30] (plateaus near 0 to blow-ups)."""
    model = case(name)[0]
    rng = np.random.default_rng(1000 + n)
    return starts(model, np.exp(rng.uniform(np.log(0.02), np.log(30), n)), seed=n)


def integrate(name, method, y0, stop_at_eps=True):
    model, horizon, eps = case(name)
    m, kw = METHODS[method]
    tc = np.linspace(0, horizon, 7)
    r = kernel.integrate(
        model, np.ascontiguousarray(y0), m, horizon=horizon, checkpoints=tc, eps=eps, stop_at_eps=stop_at_eps, **kw
    )
    assert_shapes(r, len(y0), len(tc), model.size)
    return r


# --------------------------------------------------------------------------------------------------
# 1. Alone or anywhere in any batch: the same bits
# --------------------------------------------------------------------------------------------------

CASES = [
    (name, method, (1, 7, 8, 64))
    for name in (
        "layerwise-scalar",
        "layerwise-flip",
        "induced",
        "induced-rank1",
        "layerwise-sigma-flip",
        "layerwise-mask",
        "induced-sigma",
        "induced-mask-scalar",
    )
    for method in METHODS
]
CASES = [
    (n, m, sizes + (4097,) if n == "layerwise-scalar" and m in ("euler", "dopri5") else sizes) for n, m, sizes in CASES
]


@pytest.mark.parametrize(("name", "method", "sizes"), CASES, ids=[f"{n}-{m}" for n, m, _ in CASES])
def test_a_trajectory_has_the_same_bits_alone_and_anywhere_in_any_batch(name, method, sizes):
    # two subjects: one converging early (stop_at_eps: it leaves the batch mid-run), one running to the
    # horizon unconverged (it outlives most companions); in each batch they alternate over the positions.
    # (The batch of 1 is the reference itself: it checks that a second run repeats the first.)
    model, horizon, _ = case(name)
    subjects = np.concatenate([starts(model, [2.0], seed=21), starts(model, [0.05], seed=12)])
    alone = [integrate(name, method, s[None]) for s in subjects]
    assert alone[0].status[0] == Status.CONVERGED and alone[0].t_final[0] < horizon
    assert alone[1].status[0] == Status.UNCONVERGED and alone[1].t_final[0] == horizon

    for nb in sizes:
        pool = companions(name, nb)
        positions = [p for p in (*POSITIONS, nb - 1) if p < nb]
        positions = sorted(set(positions))
        for shift in (0, 1):
            y0 = pool.copy()
            who = {p: (k + shift) % 2 for k, p in enumerate(positions)}
            for p, s in who.items():
                y0[p] = subjects[s]
            r = integrate(name, method, y0)
            for p, s in who.items():
                assert_same_trajectory(r, p, alone[s], 0, (name, method, nb, p, s))
            if nb == 64 and shift == 0:  # the companions really are varied: they finish at different times
                others = np.setdiff1d(np.arange(nb), positions)
                st = r.status[others]
                assert np.any(st == Status.CONVERGED) and np.any(st == Status.UNCONVERGED), np.bincount(st)
                assert len(np.unique(r.steps[others])) >= 5
                assert np.any(r.t_final[others] < horizon)
                if isinstance(model, kernel.Induced) and method != "dopri5":
                    assert np.any(st == Status.DIVERGED)


def test_every_trajectory_of_a_varied_batch_has_its_own_bits():
    # every trajectory of a varied batch of 64 (not only two subjects) against itself alone, for the
    # adaptive method on the narrow induced model (per-trajectory steps, SVDs, projections) and for euler
    # on the flipped layerwise model; without stop_at_eps, so the crossings are located but nobody stops
    for name, method in (("induced-rank1", "dopri5"), ("layerwise-flip", "euler")):
        y0 = companions(name, 64)
        together = integrate(name, method, y0, stop_at_eps=False)
        for i in range(0, 64, 3):
            alone = integrate(name, method, y0[i : i + 1], stop_at_eps=False)
            assert_same_trajectory(together, i, alone, 0, (name, method, i))
        assert np.any(np.isfinite(together.time_to_eps)) and np.any(together.status == Status.UNCONVERGED)


# --------------------------------------------------------------------------------------------------
# 2. A blow-up leaves its companions alone
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "method", "norm"),
    [
        ("induced", "euler", 60.0),
        ("induced-rank1", "rk4", 60.0),
        ("layerwise-scalar", "euler", 3000.0),
        ("layerwise-flip", "dopri5", np.nan),
    ],
)
def test_a_diverging_trajectory_leaves_its_companions_bitwise_alone(name, method, norm):
    # (tests/test_kernel.py::test_blow_up_is_a_result_and_leaves_the_batch_alone: one companion, two fields)
    # mid-run blow-ups of euler and rk4 from a start too far for the step; for dopri5 a start that is not
    # finite (diverged at t = 0). Inserted first, in the middle, and last of 64 companions that do not blow up.
    model = case(name)[0]
    rng = np.random.default_rng(7)
    calm = starts(model, np.exp(rng.uniform(np.log(0.03), np.log(4), 64)), seed=7)
    if np.isnan(norm):
        bad = starts(model, [2.0], seed=8)
        bad[0, 1] = np.nan
    else:
        bad = starts(model, [norm], seed=8)
    without = integrate(name, method, calm)
    assert not np.any(without.status == Status.DIVERGED)
    alone = integrate(name, method, bad)
    assert alone.status[0] == Status.DIVERGED
    assert alone.steps[0] < without.steps.max()  # it ends while its companions are still running
    for p in (0, 8, 64):
        y0 = np.insert(calm, p, bad[0], axis=0)
        r = integrate(name, method, y0)
        assert_same_trajectory(r, p, alone, 0, (name, method, "diverging", p))
        others = np.delete(np.arange(65), p)
        for j, i in enumerate(others):
            assert_same_trajectory(r, i, without, j, (name, method, p, i))


# --------------------------------------------------------------------------------------------------
# 3. Through the real CLI: batch size and workers
# --------------------------------------------------------------------------------------------------
# Already covered elsewhere, not repeated here: --batch 7 against --batch 64 through the CLI on one local
# Ray instance (tests/test_cli.py::test_batch_size_does_not_change_a_single_bit, a dopri5 sweep without
# stops), and --workers 1 and --workers 2 each against a sweep computed without Ray (tests/test_faults.py,
# an rk4 sweep, under faults). Added here, on an adaptive sweep that stops at eps and whose batches mix
# converged and unconverged cells: --batch 1 on a Ray instance of 1 CPU and the default batch on one of 2
# (two Ray runs, each `linflow run` starting its own), both against batches of 7 computed without Ray.

SWEEP = {
    "problem": {"m": 20, "dx": 4, "dy": 3, "seed": 2},
    "axes": {"depth": [1, 3], "width": [2, 3], "init_norm": [0.1, 1.0, 6.0], "seed": {"start": 0, "stop": 9}},
    "integrator": {"method": "dopri5", "rtol": 1e-8, "atol": 1e-11},
    "horizon": 5.0,
    "eps": 1e-3,
    "stop_at_eps": True,
    "checkpoints": {"count": 11, "spacing": "log"},
}
LINFLOW = str(Path(sys.executable).parent / "linflow")


def linflow_run(spec, out, *args):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [LINFLOW, "run", str(spec), "--out", str(out), "--quiet", *map(str, args)],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return xr.open_zarr(out).load()


@pytest.mark.slow
def test_batch_size_and_workers_do_not_change_a_single_bit(tmp_path):
    from reference import compute

    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(SWEEP))
    runs = {
        "batch 1, 1 worker": linflow_run(spec, tmp_path / "b1.zarr", "--batch", 1, "--workers", 1),
        "default batch, 2 workers": linflow_run(spec, tmp_path / "bd.zarr", "--workers", 2),
    }
    ref = compute({**SWEEP, "batch": 7})  # what the workers compute for --batch 7, in this process, without Ray
    status = ref.status.values
    assert np.any(status == Status.CONVERGED) and np.any(status == Status.UNCONVERGED)
    assert len(np.unique(ref.steps.values)) > 10
    one, default = runs.values()
    assert one.status.encoding["chunks"] == (1, 1, 1, 1)
    assert np.prod(default.status.encoding["chunks"]) > 7  # batches of more cells than the reference's
    assert set(one.data_vars) == set(default.data_vars) and set(one.coords) == set(default.coords)
    for name in [*one.data_vars, *one.coords]:  # every variable of the store
        assert one[name].dtype == default[name].dtype, name
        assert np.array_equal(one[name].values, default[name].values, equal_nan=True), name
    for what, ds in runs.items():
        for name in [*ref.data_vars, *ref.coords]:
            assert np.array_equal(ds[name].values, ref[name].values, equal_nan=True), (what, name)
    assert one.attrs["fingerprint"] == default.attrs["fingerprint"]
    assert one.attrs["kernel_version"] == default.attrs["kernel_version"]


# --------------------------------------------------------------------------------------------------
# Whole cells: every stored variable of a batch (sweep.batch.run_batch), not only the kernel's result
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        # the closed form (no kernel): its starts' norms, angles and the path, dx ≥ 8 so sums of ≥ 8 terms
        {"model": "exact", "problem": {"m": 20, "dx": 4, "dy": 1}, "horizon": 10.0, "depth": 9},
        {"model": "exact", "problem": {"m": 30, "dx": 9, "dy": 1}, "horizon": 10.0, "depth": 10},
        {"model": "layerwise", "problem": {"m": 20, "dx": 4, "dy": 2}, "integrator": {"method": "rk4", "step": 0.05}},
        {"model": "induced", "problem": {"m": 20, "dx": 3, "dy": 1}, "integrator": {"method": "euler", "step": 0.05}},
        {
            "problem": {"m": 20, "dx": 3, "dy": 4, "input_spectrum": [0.5, 1.0, 2.0], "target_spectrum": [2.0, 1.0]},
            "integrator": {"method": "rk4", "step": 0.05},
            "record": ["w"],
        },
        {
            "model": "induced",
            "problem": {"kind": "completion", "n": 5, "rank": 1, "observed": 0.6},
            "integrator": {"method": "rk4", "step": 0.05},
            "record": ["w"],
        },
    ],
    ids=["exact", "exact dx 9", "layerwise", "induced", "general inputs, record w", "completion, record w"],
)
def test_every_variable_of_a_cell_is_the_same_alone_and_in_any_batch(raw):
    from sweep import spec as specs
    from sweep.batch import run_batch
    from sweep.problem import build

    raw = dict(raw)
    depth = raw.pop("depth", 3)
    s = specs.parse(
        {
            **raw,
            "horizon": raw.get("horizon", 1.0),
            "checkpoints": {"count": 6},
            "axes": {"depth": [depth], "width": [4], "init_norm": [0.1, 2.5], "seed": {"start": 0, "stop": 70}},
        }
    )
    p = build(s.problem)
    grid = (slice(0, 1), slice(0, 1))
    for k in range(2):
        whole = run_batch(s, p, (*grid, slice(k, k + 1), slice(0, 70)))
        for start, stop in [(0, 1), (7, 8), (8, 9), (63, 64), (69, 70), (5, 13), (60, 70)]:
            part = run_batch(s, p, (*grid, slice(k, k + 1), slice(start, stop)))
            mask = np.zeros((1, 1, 1, 70), bool)
            mask[..., start:stop] = True
            masked = run_batch(s, p, (*grid, slice(k, k + 1), slice(0, 70)), mask)
            for name, values in whole.items():
                assert same_bits(part[name], values[:, :, :, start:stop]), (name, k, start, stop)
                assert same_bits(masked[name][:, :, :, start:stop], values[:, :, :, start:stop]), (name, k, "mask")
