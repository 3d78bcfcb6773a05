"""The layerwise flow compiled per shape (sweep.kernel.shaped) against the generic compiled flow, bit for bit:
for networks of every orientation and rank, at every position of a block — in whole tiles, in the columns
before and after them, in blocks that are not a multiple of the tile — and through whole integrations.
The generic flow itself is checked against independent solutions in tests/test_kernel.py."""

import ctypes
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sweep import kernel
from sweep.kernel import flows, shaped, stepper
from sweep.schema import Status

SHAPES = [  # dims (d_0 = dx … d_N = dy)
    (5, 1),
    (5, 5, 1),
    (5, 5, 5, 5, 1),
    (3, 4, 2, 6, 2),  # dy > 1, rank 2 with a narrow middle
    (2, 3, 5),  # dx < dy: the network is transposed
    (4, 7, 7, 3),
    (6, 2, 9, 1),
    (5, 9, 9, 9, 9, 9, 1),
]


def model(dims, seed=0):
    rng = np.random.default_rng(seed)
    return kernel.Layerwise(dims, rng.standard_normal((dims[-1], dims[0])), tail=0.25)


def both(m, y, lo, hi):
    """(out, exc) of columns lo … hi − 1 by the generic flow and by the shaped one."""
    width = y.shape[1]
    results = []
    for g in (m.geometry, shaped.specialize(m.geometry, width)):
        out, exc = np.full_like(y, 7.0), np.full(width, 7.0)
        flows.rhs(g, y, out, lo, hi, exc, np.zeros((g.work_rows, width)))
        results.append((out, exc))
    return results


@pytest.mark.parametrize("dims", SHAPES)
def test_shaped_flow_is_the_generic_flow_bit_for_bit_at_every_position(dims):
    m = model(dims)
    g = shaped.specialize(m.geometry, 40)
    assert g.shaped_width == 40, "these shapes are small enough to be compiled"
    y = np.random.default_rng(1).standard_normal((m.size, 40)) * 1.3
    for lo, hi in [(0, 40), (0, 8), (3, 37), (8, 16), (5, 7), (17, 40), (0, 1), (39, 40)]:
        (o1, e1), (o2, e2) = both(m, y, lo, hi)
        assert np.array_equal(o1, o2), (lo, hi)
        assert np.array_equal(e1, e2), (lo, hi)
        assert np.all(o2[:, :lo] == 7.0) and np.all(o2[:, hi:] == 7.0), "only columns lo … hi − 1 are written"


@settings(max_examples=25, deadline=None)
@given(
    dims=st.lists(st.integers(1, 6), min_size=2, max_size=6).map(tuple),
    tiles=st.integers(1, 5),
    seed=st.integers(0, 2**16),
    scale=st.sampled_from([1e-8, 1.0, 40.0]),
)
def test_shaped_flow_matches_for_any_shape_and_scale(dims, tiles, seed, scale):
    m = model(dims, seed)
    width = 8 * tiles
    y = np.random.default_rng(seed).standard_normal((m.size, width)) * scale
    lo, hi = seed % 5, width - seed % 3
    (o1, e1), (o2, e2) = both(m, y, lo, hi)
    assert np.array_equal(o1, o2, equal_nan=True)
    assert np.array_equal(e1, e2, equal_nan=True)


def test_non_finite_states_flow_as_in_the_generic_code():
    m = model((5, 5, 5, 1))
    y = np.random.default_rng(2).standard_normal((m.size, 16))
    y[3, 2], y[7, 9], y[0, 12] = np.nan, np.inf, -1e308
    (o1, e1), (o2, e2) = both(m, y, 0, 16)
    assert np.array_equal(o1, o2, equal_nan=True) and np.array_equal(e1, e2, equal_nan=True)


def test_what_is_not_compiled_runs_the_generic_code():
    m = model((5, 5, 1))
    assert shaped.specialize(m.geometry, 12).shaped_width == 0, "a width that is not a multiple of the tile"
    big = model((5, 40, 40, 40, 1))
    assert shaped.work(big.geometry) > shaped.MAX_WORK
    assert shaped.specialize(big.geometry, 16).shaped_width == 0
    masked = kernel.Layerwise((4, 3, 4), np.ones((4, 4)), mask=np.eye(4))
    assert shaped.specialize(masked.geometry, 16).shaped_width == 0, "the general losses run the generic code"
    induced = kernel.Induced(3, np.ones((1, 5)))
    assert shaped.specialize(induced.geometry, 16).shaped_width == 0


@pytest.mark.parametrize("method", ["euler", "rk4", "dopri5"])
def test_integrations_are_the_same_with_and_without_the_shaped_flow(method, monkeypatch):
    m = model((5, 4, 4, 1), seed=3)
    rng = np.random.default_rng(4)
    y0 = rng.standard_normal((203, m.size)) * 0.6
    tab = kernel.METHODS[method]
    kw = dict(horizon=2.0, checkpoints=np.linspace(0, 2, 7), eps=1e-3, stop_at_eps=True)
    kw.update(step=0.01) if not tab.adaptive else kw.update(rtol=1e-8, atol=1e-10)
    fast = kernel.integrate(m, y0, tab, **kw)
    monkeypatch.setattr(shaped, "MAX_WORK", -1)
    slow = kernel.integrate(m, y0, tab, **kw)
    for name in ("excess", "time_to_eps", "status", "steps", "rhs_evals", "y_final", "t_final", "w"):
        assert np.array_equal(getattr(fast, name), getattr(slow, name), equal_nan=True), name
    assert np.isfinite(fast.time_to_eps).sum() > 50, "a test with crossings to locate"


def test_compiled_code_is_loaded_from_the_disk_cache_in_a_new_process(tmp_path):
    code = """
import numpy as np, sys
from sweep import kernel
from sweep.kernel import flows, shaped
m = kernel.Layerwise((5, 3, 3, 1), np.arange(5.0)[None] / 5)
g = shaped.specialize(m.geometry, 16)
y = np.linspace(-1, 1, m.size * 16).reshape(m.size, 16)
out, exc = np.zeros_like(y), np.zeros(16)
flows.rhs(g, y, out, 0, 16, exc, np.zeros((g.work_rows, 16)))
sys.stdout.buffer.write(out.tobytes() + exc.tobytes())
"""
    env = {**__import__("os").environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, check=True).stdout
    files = sorted(tmp_path.glob("kernel-*/shaped/flow-*.o"))  # beside the kernel it serves
    assert len(files) == 2  # the shape, and the pointer of geometries without one
    stamps = [f.stat().st_mtime_ns for f in files]
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, check=True).stdout
    assert first == second and len(first) > 0
    assert [f.stat().st_mtime_ns for f in files] == stamps, "loaded, not compiled and written again"


def test_one_compiled_flow_per_layout_and_width_whatever_the_target():
    a, b = model((5, 4, 4, 1), seed=5), model((5, 4, 4, 1), seed=6)  # same shape, other targets
    ga, gb = shaped.specialize(a.geometry, 16), shaped.specialize(b.geometry, 16)
    assert ga.shaped is gb.shaped, "the target is an argument, not compiled in"
    assert shaped.specialize(a.geometry, 24).shaped is not ga.shaped, "the block width is compiled in"
    y = np.random.default_rng(7).standard_normal((b.size, 16))
    (o1, e1), (o2, e2) = both(b, y, 0, 16)
    assert np.array_equal(o1, o2) and np.array_equal(e1, e2)


CRUISES = {  # name: (dims, y0 scale, batch, block, integrate keywords)
    "101 checkpoints, stop at ε": ((5, 4, 4, 1), 0.6, 203, None, dict(checkpoints=101, eps=1e-3, stop_at_eps=True)),
    "crossings kept running": ((5, 5, 5, 5, 1), 0.5, 77, 24, dict(checkpoints=3, eps=1e-2, stop_at_eps=False)),
    "blow-ups": ((4, 6, 6, 1), 2.5, 61, 40, dict(checkpoints=11, eps=1e-9, step=0.08)),
    "horizon off the grid": ((3, 4, 2, 6, 2), 0.8, 50, 16, dict(checkpoints=5, eps=1e-6, horizon=1.234)),
    "transposed, split": ((2, 9, 9, 9, 9, 5), 0.4, 35, 24, dict(checkpoints=7, eps=1e-4)),
}


@pytest.mark.parametrize("case", CRUISES)
def test_cruise_gives_the_numbers_of_one_step_at_a_time(case, monkeypatch):
    """Euler's event-free steps, many at a time per tile (stepper._cruise), against the generic stepper alone:
    checkpoints, ε-crossings, blow-ups, a clipped last step, tiles whose lanes are at different steps (batches
    that are not a multiple of the block or the tile) and networks cut into a function per product."""
    dims, scale, batch, block, kw = CRUISES[case]
    m = model(dims, seed=len(case))
    y0 = np.random.default_rng(len(case)).standard_normal((batch, m.size)) * scale
    kw = dict(dict(horizon=2.0, step=0.01), **kw)
    kw["checkpoints"] = np.linspace(0, kw["horizon"], kw["checkpoints"])
    fast = kernel.integrate(m, y0, kernel.METHODS["euler"], block=block, **kw)
    monkeypatch.setattr(shaped, "MAX_WORK", -1)
    slow = kernel.integrate(m, y0, kernel.METHODS["euler"], block=block, **kw)
    for name in ("excess", "time_to_eps", "status", "steps", "rhs_evals", "y_final", "t_final", "w"):
        assert np.array_equal(getattr(fast, name), getattr(slow, name), equal_nan=True), name
    crossed, diverged = np.isfinite(fast.time_to_eps).sum(), (fast.status == Status.DIVERGED).sum()
    assert crossed > 0 if "ε" in case or "crossings" in case else True, "a test with crossings to locate"
    assert diverged > 0 if "blow" in case else diverged == 0, "a test with blow-ups where it says so"
    assert np.median(fast.steps) > 20 or "blow" in case, "long enough to cruise"


def test_cruise_numbers_do_not_depend_on_the_block_or_the_order():
    m = model((5, 5, 5, 1), seed=9)
    y0 = np.random.default_rng(9).standard_normal((45, m.size)) * 0.7
    kw = dict(horizon=1.5, step=0.01, checkpoints=np.linspace(0, 1.5, 16), eps=1e-3, stop_at_eps=True)
    base = kernel.integrate(m, y0, kernel.METHODS["euler"], block=16, **kw)
    order = np.random.default_rng(1).permutation(45)
    for block, rows in [(24, slice(None)), (40, order), (72, order[::-1])]:
        other = kernel.integrate(m, y0[rows], kernel.METHODS["euler"], block=block, **kw)
        for name in ("excess", "time_to_eps", "status", "steps", "rhs_evals", "y_final", "w"):
            assert np.array_equal(getattr(base, name)[rows], getattr(other, name), equal_nan=True), (block, name)


def _cruise(g, blk, tile, q, step, eps):
    """The compiled cruise of ``g`` called directly: the steps it kept."""
    f, i = blk.f, blk.i
    call = ctypes.CFUNCTYPE(
        ctypes.c_int64, *[ctypes.c_void_p] * 12, *[ctypes.c_double] * 3, ctypes.c_int64, ctypes.c_int64
    )
    rows = [f[r] for r in (stepper.T, stepper.EXC, stepper.EXC_NEW, stepper.BOUND)] + [
        i[r] for r in (stepper.FOUND, stepper.STEPS, stepper.EVALS)
    ]
    arrays = [blk.ys[0], blk.k[0], blk.tiles, blk.work, g.target, *rows]
    return call(g.cruise.address)(*(a.ctypes.data for a in arrays), g.tail, step, eps, tile, q)


@pytest.mark.parametrize("dims", [(5, 4, 4, 1), (2, 9, 9, 9, 9, 5)])  # registers; split into functions
def test_the_cruise_takes_a_tiles_euler_steps_and_stops_before_a_crossing(dims):
    """stepper._cruise's compiled core against Euler's steps written out here with the generic flow: q steps
    kept (y, its flow, t, the excess loss and the counters as after q steps), other tiles untouched; and, with ε
    between two of a lane's excess losses, the steps before the one that crosses it."""
    m = model(dims, seed=11)
    width, step, q = 24, 0.01, 7
    g = shaped.specialize(m.geometry, width, cruise=True)
    rng = np.random.default_rng(11)
    y = rng.standard_normal((m.size, width)) * 0.5
    exc0 = np.zeros(width)
    flows.rhs(m.geometry, y, f0 := np.zeros_like(y), 0, width, exc0, np.zeros((m.geometry.work_rows, width)))
    path = [(y, f0, exc0)]  # Euler, one step at a time, t_n = n·step
    for n in range(q):
        h = (n + 1) * step - n * step
        y_next, f_next, e_next = path[-1][0] + h * path[-1][1], np.zeros_like(y), np.zeros(width)
        flows.rhs(m.geometry, y_next, f_next, 0, width, e_next, np.zeros((m.geometry.work_rows, width)))
        path.append((y_next, f_next, e_next))

    def block():
        blk = stepper.block_arrays(m.size, g.work_rows, 1, width)
        blk.ys[0][:], blk.k[0][:], blk.f[stepper.EXC] = y, f0, exc0
        blk.f[stepper.BOUND], blk.i[stepper.EVALS] = 1e300, 1
        return blk

    tile = slice(8, 16)
    for eps, kept in [(-np.inf, q), (None, 3)]:
        blk = block()
        if eps is None:  # lane 10 crosses ε in its fourth step; the others have crossed it already
            eps = 0.5 * (path[3][2][10] + path[4][2][10])
            assert path[4][2][10] < path[3][2][10], "a decreasing excess loss to cross"
            blk.i[stepper.FOUND] = 1
            blk.i[stepper.FOUND, 10] = 0
        assert _cruise(g, blk, 1, q, step, eps) == kept
        y_k, f_k, e_k = path[kept]
        assert np.array_equal(blk.ys[0][:, tile], y_k[:, tile]) and np.array_equal(blk.k[0][:, tile], f_k[:, tile])
        assert np.array_equal(blk.f[stepper.EXC, tile], e_k[tile])
        assert np.all(blk.f[stepper.T, tile] == kept * step)
        assert np.all(blk.i[stepper.STEPS, tile] == kept) and np.all(blk.i[stepper.EVALS, tile] == 1 + kept)
        others = np.r_[0:8, 16:24]
        assert np.array_equal(blk.ys[0][:, others], y[:, others]) and np.all(blk.i[stepper.STEPS, others] == 0)
