"""One explicit Runge–Kutta stepper for every method and model, compiled whole.

Trajectories run in a block of ``width`` columns laid out batch-last, ``(P, width)`` (see
:mod:`sweep.kernel.flows`). Each has its own time, step size, counters and status. When one finishes, its
results are written out, the block's last live column takes its place, and the free columns take the
next trajectories of the batch: finished trajectories cost nothing. The driver loop, :func:`integrate`,
reads:

    load the next trajectories → retire the finished → cruise (Euler: the steps before the next event, many
    at a time) → choose each step's end → take the step → control its error → accept (ε-crossing,
    checkpoints, status) → commit the accepted steps

with one function per concept below: :func:`_step` (stages), :func:`_control` (error norm and step-size
control of Hairer–Nørsett–Wanner, as scipy's RK45), :func:`_dense` (the step's interpolant),
:func:`_locate` (the first ε-crossing). Checkpoints and the crossing are read from the interpolant,
never snapped to step ends.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ..schema import Status
from . import flows
from .flows import FLOW, LOSS, ONE, ZERO, inner, jit, part  # part: inlined into integrate (one compiled unit)

PENDING, CONVERGED, UNCONVERGED, DIVERGED, FAILED = (int(s) for s in Status)  # plain ints for compiled code
EPS = 2.0**-52
BLOWUP = 1e6  # excess loss above BLOWUP · max(excess(0), ½‖Z‖²) marks a trajectory diverged
SAFETY, MIN_FACTOR, MAX_FACTOR = 0.9, 0.2, 10.0


class Method(NamedTuple):
    """A :class:`sweep.kernel.tableau.Tableau` as arrays: ``e`` is zero and ``p`` has no columns when absent."""

    a: np.ndarray
    b: np.ndarray
    e: np.ndarray
    p: np.ndarray
    adaptive: bool
    order: int


class Options(NamedTuple):
    horizon: float
    step: float  # fixed-step methods: the grid t_n = n·step, its last step clipped to the horizon
    n_steps: int
    rtol: float
    atol: float
    eps: float
    stop_at_eps: bool
    max_steps: int


class Output(NamedTuple):
    """Per-trajectory results, trajectory first, filled in place (few arrays: numba compiles each
    function's arguments field by field)."""

    excess: np.ndarray  # (B, C)
    y_final: np.ndarray  # (B, P)
    time_to_eps: np.ndarray  # (B,)
    t_final: np.ndarray  # (B,)
    counts: np.ndarray  # (3, B): status, accepted steps, right-hand-side evaluations
    w: np.ndarray  # (B, C, dy·dx): the end-to-end matrix at the checkpoints


# the per-trajectory fields of a block: rows of Block.f (float) and Block.i (integer)
T, T_NEW, H, HH, EXC, EXC_NEW, EXC_STAGE, BOUND, FLOOR, ENORM, ROW, COL_EXC, UNTIL, THETA = range(14)
INDEX, NXT, STEPS, EVALS, STATUS, FOUND, ACCEPT, REJECTED, AT = range(9)


class Block(NamedTuple):
    """The work arrays of one block, reused from block to block. The state and its derivative swap
    buffers by index: y = ys[cur], y_new = ys[1 − cur]; stage j lives in k[kmap[j]], where kmap[0] (f(y))
    and kmap[s] (f(y_new)) trade places after each step (a rejected step's columns copied back).

    Per trajectory (column b): f[T] time, f[T_NEW] its step's end, f[H] the next step size (adaptive),
    f[HH] this step's size, f[EXC] / f[EXC_NEW] excess loss at t / t_new, f[BOUND] the divergence bound,
    f[FLOOR] / f[ENORM] the error weights' floor and the error norm; f[UNTIL] the last time of this step whose
    checkpoints are recorded; f[EXC_STAGE], f[ROW], f[COL_EXC] scratch. i[INDEX] the trajectory in the column,
    i[NXT] its next checkpoint, i[STEPS] / i[EVALS] counters, i[STATUS], and the flags i[FOUND] (crossed ε),
    i[ACCEPT] (this step), i[REJECTED] (the last). The checkpoints recorded at once (:func:`_checkpoints`), the
    j-th in column j: i[AT, j] its trajectory's column, f[THETA, j] its place in that trajectory's step."""

    ys: np.ndarray  # (2, P, W)
    k: np.ndarray  # (s + 1, P, W)
    kmap: np.ndarray  # (s + 1,)
    coef: np.ndarray  # (s + 1, W): each trajectory's dense-output weights at its checkpoint
    tmp: np.ndarray  # (P, W): stage arguments, then the states at checkpoints
    work: np.ndarray  # the model's work rows
    col: np.ndarray  # (P, 1): one interpolated state
    col_work: np.ndarray
    f: np.ndarray  # (14, W)
    i: np.ndarray  # (9, W)
    tiles: np.ndarray  # (3P + work rows, LANES): the memory of a tile in the cruise (sweep.kernel.shaped.cruise_ir)


def _zeros(shape) -> np.ndarray:
    """Zeros whose data start on a 64-byte boundary (a cache line): with a width that is a multiple of 8, every
    row of a tile is then one line, not two (NumPy aligns to 16 bytes)."""
    count = int(np.prod(shape))
    raw = np.zeros(count + 8)
    skip = (-raw.ctypes.data % 64) // 8
    return raw[skip : skip + count].reshape(shape)


def block_arrays(size: int, work_rows: int, stages: int, width: int) -> Block:
    z = _zeros
    return Block(
        ys=z((2, size, width)),
        k=z((stages + 1, size, width)),
        kmap=np.arange(stages + 1),
        coef=z((stages + 1, width)),
        tmp=z((size, width)),
        work=z((work_rows, width)),
        col=z((size, 1)),
        col_work=z((work_rows, 1)),
        f=z((14, width)),
        i=np.zeros((9, width), np.int64),
        tiles=z((3 * size + work_rows, flows.LANES)),
    )


@jit
def integrate(g, meth, opt, y0, tc, out, blk):
    """Every trajectory of ``y0`` (B, P): the block's free columns take the next trajectories as soon as
    others finish, so the block stays full until the batch runs out."""
    width, total = blk.i.shape[1], y0.shape[0]
    cur, m, loaded = ZERO, ZERO, 0  # not the literal 0 (cur, m): numba would compile their callees twice
    while True:
        if m < width and loaded < total:
            count = min(width - m, total - loaded)
            _load(g, meth, opt, y0, tc, out, blk, cur, m, m + count, loaded)
            m, loaded = m + count, loaded + count
        m = _retire(out, blk, cur, m)
        if m == 0:
            if loaded == total:
                return
            continue
        _cruise(g, meth, opt, tc, blk, cur, m)
        _step_ends(meth, opt, blk, m)
        _step(g, meth, blk, cur, m)
        if meth.adaptive:
            _control(g, meth, opt, blk, cur, m)
        _accept(g, meth, opt, tc, out, blk, cur, m)
        cur = _commit(meth, opt, blk, cur, m)


@part
def _load(g, meth, opt, y0, tc, out, blk, cur, lo, hi, first):
    """Trajectories first, first + 1, … into columns lo … hi − 1: f(y0), statuses, the first step size."""
    y, f0 = blk.ys[cur], blk.k[blk.kmap[0]]
    for b in range(lo, hi):
        blk.i[INDEX, b] = first + b - lo
        for p in range(y.shape[0]):
            y[p, b] = y0[first + b - lo, p]
    flows.project(g, y, lo, hi)
    flows.evaluate(g, y, f0, lo, hi, blk.f[EXC], blk.work, FLOW)
    for b in range(lo, hi):
        i, exc = blk.i[INDEX, b], blk.f[EXC, b]
        blk.f[T, b], blk.i[STEPS, b], blk.i[EVALS, b], blk.i[NXT, b], blk.i[REJECTED, b] = 0.0, 0, 1, 0, False
        blk.f[BOUND, b] = BLOWUP * max(exc if math.isfinite(exc) else 0.0, g.half_z2)
        blk.i[FOUND, b] = exc <= opt.eps
        if blk.i[FOUND, b]:
            out.time_to_eps[i] = 0.0
        if len(tc) and tc[0] <= 0.0:
            out.excess[i, 0] = exc
            _copy_column(blk.col, ZERO, y, b)
            flows.evaluate(g, blk.col, blk.col, ZERO, ONE, blk.f[COL_EXC], blk.col_work, LOSS)
            flows.end_to_end_of(g, blk.col, blk.col_work, ZERO, out.w[i, 0])
            blk.i[NXT, b] = 1
        blk.i[STATUS, b] = PENDING
        if not _finite(y, b, exc):
            blk.i[STATUS, b] = DIVERGED
        elif blk.i[FOUND, b] and opt.stop_at_eps:
            blk.i[STATUS, b] = CONVERGED
    if meth.adaptive:
        _initial_step(g, meth, opt, blk, cur, lo, hi)


@part
def _retire(out, blk, cur, m):
    """Write out the finished trajectories; the block's last live column fills each one's place."""
    y, f0 = blk.ys[cur], blk.k[blk.kmap[0]]
    for b in range(m - 1, -1, -1):
        if blk.i[STATUS, b] == PENDING:
            continue
        i = blk.i[INDEX, b]
        out.counts[0, i], out.counts[1, i], out.counts[2, i] = blk.i[STATUS, b], blk.i[STEPS, b], blk.i[EVALS, b]
        out.t_final[i] = blk.f[T, b]
        for p in range(y.shape[0]):
            out.y_final[i, p] = y[p, b]
        last = m - 1
        if b != last:
            for a in (y, f0, blk.f):
                _copy_column(a, b, a, last)
            for r in range(blk.i.shape[0]):
                blk.i[r, b] = blk.i[r, last]
        m -= 1
    return m


@inner
def _copy_column(dst, b, src, c):
    for p in range(dst.shape[0]):
        dst[p, b] = src[p, c]


@inner
def _finite(y, b, exc):
    """Whether trajectory b's state and excess loss are finite."""
    if not math.isfinite(exc):
        return False
    for p in range(y.shape[0]):
        if not math.isfinite(y[p, b]):
            return False
    return True


@part
def _cruise(g, meth, opt, tc, blk, cur, m):
    """Euler's steps that meet no event, many at a time for each whole tile, by the code compiled with the shape's
    flow (:func:`sweep.kernel.shaped.cruise_ir`): a tile's update, flow and checks, step after step, on a state
    that stays in the cache. The step that meets an event — it reaches a checkpoint or the horizon, crosses ε or
    blows up — is left to :func:`_step`, which takes every trajectory's next step as it would have anyway: the
    numbers are those of one step at a time."""
    if meth.adaptive or len(meth.b) != 1 or meth.b[0] != 1.0 or g.shaped_width != blk.i.shape[1]:
        return
    y, f0 = blk.ys[cur], blk.k[blk.kmap[0]]
    for tile in range(m // flows.LANES):
        q = opt.n_steps
        for b in range(tile * flows.LANES, (tile + 1) * flows.LANES):
            q = min(q, _quiet(opt, tc, blk, b))
        if q > 0:
            f, i = blk.f, blk.i
            g.cruise(
                y.ctypes.data,
                f0.ctypes.data,
                blk.tiles.ctypes.data,
                blk.work.ctypes.data,
                g.target.ctypes.data,
                f[T].ctypes.data,
                f[EXC].ctypes.data,
                f[EXC_NEW].ctypes.data,
                f[BOUND].ctypes.data,
                i[FOUND].ctypes.data,
                i[STEPS].ctypes.data,
                i[EVALS].ctypes.data,
                g.tail,
                opt.step,
                opt.eps,
                tile,
                q,
            )


@inner
def _quiet(opt, tc, blk, b):
    """How many fixed steps trajectory b takes before the one whose end reaches its next checkpoint or the
    horizon (t_n = n·step ≥ either), or the last."""
    n0, end = blk.i[STEPS, b], opt.horizon
    if blk.i[NXT, b] < len(tc):
        end = min(end, tc[blk.i[NXT, b]])
    n = min(opt.n_steps - 1, int(min(end / opt.step, 1e18)) + 1)
    while n > n0 and n * opt.step >= end:
        n -= 1
    return max(n - n0, 0)


@part
def _step_ends(meth, opt, blk, m):
    """Each trajectory's next step end: the fixed grid, or t + h clipped to the horizon."""
    for b in range(m):
        if meth.adaptive:
            blk.f[H, b] = min(blk.f[H, b], opt.horizon - blk.f[T, b])
            end = blk.f[T, b] + blk.f[H, b]
            blk.f[T_NEW, b] = min(opt.horizon, end)
        else:
            n = blk.i[STEPS, b] + 1
            blk.f[T_NEW, b] = opt.horizon if n >= opt.n_steps else n * opt.step
        blk.f[HH, b] = blk.f[T_NEW, b] - blk.f[T, b]


@inner
def _combine(dst, base, blk, coef, count, m):
    """dst = base + h·Σ_{j<count} coef_j k_j for each trajectory (its own h), skipping zero coefficients; the
    last pass over the trajectories writes dst."""
    acc, hh, k, kmap = blk.f[ROW], blk.f[HH], blk.k, blk.kmap
    nonzero = 0
    for j in range(count):
        nonzero += coef[j] != 0.0
    if nonzero == 1:  # one pass (Euler; the same numbers as the general case)
        for j in range(count):
            if coef[j] != 0.0:
                c, kj = coef[j], k[kmap[j]]
                for p in range(dst.shape[0]):
                    for b in range(m):
                        dst[p, b] = base[p, b] + hh[b] * (c * kj[p, b])
        return
    for p in range(dst.shape[0]):  # two terms or more: acc holds a sum, and at most the last term is left over
        _, last = _pairs(acc, k, kmap, coef, count, p, m)
        if last < 0:
            for b in range(m):
                dst[p, b] = base[p, b] + hh[b] * acc[b]
        else:
            c, kl = coef[last], kmap[last]
            for b in range(m):
                dst[p, b] = base[p, b] + hh[b] * (acc[b] + c * k[kl, p, b])


@inner
def _pairs(acc, k, kmap, coef, count, p, m):
    """Row p of Σ_{j<count} coef_j k[kmap[j]] into ``acc`` (zero coefficients skipped), the terms added in order,
    two per pass over the trajectories. Returns whether acc holds a sum, and the index of the last term when it is
    left over (an odd count) — for the caller's last pass to add — else −1. The numbers are those of one term per
    pass."""
    summed, held = False, -1
    for j in range(count):
        if coef[j] == 0.0:
            continue
        if held < 0:
            held = j
            continue
        c0, k0, c1, k1 = coef[held], kmap[held], coef[j], kmap[j]
        if summed:
            for b in range(m):
                acc[b] = (acc[b] + c0 * k[k0, p, b]) + c1 * k[k1, p, b]
        else:
            for b in range(m):
                acc[b] = c0 * k[k0, p, b] + c1 * k[k1, p, b]
        summed, held = True, -1
    return summed, held


@part
def _step(g, meth, blk, cur, m):
    """One step of every live trajectory: the stages, y_new, and f(y_new) with its excess loss."""
    s = len(meth.b)
    y, y_new = blk.ys[cur], blk.ys[1 - cur]
    for i in range(1, s):
        _combine(blk.tmp, y, blk, meth.a[i], i, m)
        flows.evaluate(g, blk.tmp, blk.k[blk.kmap[i]], ZERO, m, blk.f[EXC_STAGE], blk.work, FLOW)
    _combine(y_new, y, blk, meth.b, s, m)
    flows.project(g, y_new, ZERO, m)
    flows.evaluate(g, y_new, blk.k[blk.kmap[s]], ZERO, m, blk.f[EXC_NEW], blk.work, FLOW)
    for b in range(m):
        blk.i[EVALS, b] += s
        blk.i[ACCEPT, b] = True


@part
def _control(g, meth, opt, blk, cur, m):
    """Accept or reject each step by the RMS norm of its error estimate h·Σ e_j k_j in the weights
    rtol·max(|y|, |y_new|) + floor (:func:`sweep.kernel.flows.weight_floor`); choose the next step size.
    A step rejected at a size below 10 ulp of t fails the trajectory (diverged if the error was not
    finite)."""
    y, y_new = blk.ys[cur], blk.ys[1 - cur]
    size = y.shape[0]
    flows.weight_floor(g, y, y_new, opt.atol, ZERO, m, blk.f[FLOOR])
    blk.f[ENORM, :m] = 0.0
    err, k, kmap, e = blk.f[ROW], blk.k, blk.kmap, meth.e
    for p in range(size):
        # the estimate starts from its first term, not 0.0 + …: that changes only the sign of a zero, which q² ignores
        summed, last = _pairs(err, k, kmap, e, len(e), p, m)
        c, kl = e[max(last, 0)], kmap[max(last, 0)]
        for b in range(m):
            if last >= 0:
                err[b] = err[b] + c * k[kl, p, b] if summed else c * k[kl, p, b]
            elif not summed:
                err[b] = 0.0
            scale = opt.rtol * max(abs(y[p, b]), abs(y_new[p, b])) + blk.f[FLOOR, b]
            q = blk.f[HH, b] * err[b] / scale
            blk.f[ENORM, b] += q * q
    for b in range(m):
        enorm = math.sqrt(blk.f[ENORM, b] / size)
        used = blk.f[HH, b]
        factor = MAX_FACTOR if enorm == 0.0 else SAFETY * enorm ** (-1.0 / (meth.order + 1))
        if enorm < 1.0:
            grow = min(1.0, factor) if blk.i[REJECTED, b] else factor
            blk.f[H, b] = used * min(MAX_FACTOR, grow)
            blk.i[REJECTED, b] = False
        else:
            bad = not math.isfinite(enorm)
            blk.f[H, b] = used * max(MIN_FACTOR, MIN_FACTOR if bad else factor)
            blk.i[REJECTED, b] = True
            blk.i[ACCEPT, b] = False
            t = max(blk.f[T, b], 1.0)
            if blk.f[H, b] < 10 * EPS * t:  # about 10 ulp
                blk.i[STATUS, b] = DIVERGED if bad else FAILED  # overflow vs. step collapse


@part
def _accept(g, meth, opt, tc, out, blk, cur, m):
    """The accepted steps: the first ε-crossing inside each, the checkpoints it passes (up to the
    crossing when the run stops there), the trajectory's status."""
    for b in range(m):
        blk.f[UNTIL, b] = -math.inf
        if not blk.i[ACCEPT, b]:
            continue
        blk.f[UNTIL, b] = blk.f[T_NEW, b]
        if not blk.i[FOUND, b] and blk.f[EXC_NEW, b] <= opt.eps:
            blk.i[FOUND, b] = True
            hit = _crossing(g, meth, opt, out, blk, cur, b)
            if opt.stop_at_eps:
                blk.f[UNTIL, b] = hit
                blk.i[STATUS, b] = CONVERGED  # (it was pending: the trajectory stops at the crossing)
    _checkpoints(g, meth, tc, out, blk, cur, m)
    for b in range(m):
        if not blk.i[ACCEPT, b]:
            continue
        t0, t1, e = blk.f[T, b], blk.f[UNTIL, b], blk.f[EXC_NEW, b]
        if opt.stop_at_eps and blk.i[STATUS, b] == CONVERGED:  # the trajectory ends exactly at the crossing
            _dense(g, meth, blk, cur, b, (t1 - t0) / (blk.f[T_NEW, b] - t0))
            _copy_column(blk.ys[1 - cur], b, blk.col, ZERO)
            blk.f[T_NEW, b] = t1
        if blk.i[STATUS, b] == PENDING:
            if not np.isfinite(e) or e > blk.f[BOUND, b]:  # a non-finite state has a non-finite excess loss
                blk.i[STATUS, b] = DIVERGED
            elif t1 >= opt.horizon:
                blk.i[STATUS, b] = CONVERGED if blk.i[FOUND, b] else UNCONVERGED


@part
def _crossing(g, meth, opt, out, blk, cur, b):
    """Record and return the time of trajectory b's first ε-crossing, inside its current step."""
    t0 = blk.f[T, b]
    hit = t0 + _locate(g, meth, opt, blk, cur, b) * (blk.f[T_NEW, b] - t0)
    out.time_to_eps[blk.i[INDEX, b]] = hit
    return hit


@part
def _checkpoints(g, meth, tc, out, blk, cur, m):
    """The excess loss and end-to-end matrix at the checkpoints in (t, f[UNTIL]] of each accepted step: one
    checkpoint of each trajectory that has one at a time, all at once — their states interpolated into the first
    columns of ``blk.tmp``, the j-th that of trajectory i[AT, j], and evaluated together, row by row. The numbers
    are those of :func:`_dense` and :func:`sweep.kernel.flows.evaluate` on one column."""
    col, theta, at = blk.tmp, blk.f[THETA], blk.i[AT]
    while True:
        n = _due(tc, blk, m)
        if n == 0:
            return
        _dense_columns(g, meth, blk, cur, n)
        flows.evaluate(g, col, col, ZERO, n, blk.f[EXC_STAGE], blk.work, LOSS)
        for j in range(n):
            b = at[j]
            i, c = blk.i[INDEX, b], blk.i[NXT, b]
            out.excess[i, c] = blk.f[EXC_NEW, b] if theta[j] >= 1.0 else blk.f[EXC_STAGE, j]
            flows.end_to_end_of(g, col, blk.work, j, out.w[i, c])
            blk.i[NXT, b] += 1


@inner
def _due(tc, blk, m):
    """The next checkpoint of each trajectory that has one in (t, f[UNTIL]]: the j-th into i[AT, j] (its column)
    and f[THETA, j] (its place in the step). Returns how many (a function's result, never a literal 0: one
    compiled version of its callers)."""
    n = 0
    for b in range(m):
        if blk.i[NXT, b] < len(tc) and tc[blk.i[NXT, b]] <= blk.f[UNTIL, b]:
            blk.f[THETA, n] = (tc[blk.i[NXT, b]] - blk.f[T, b]) / (blk.f[T_NEW, b] - blk.f[T, b])
            blk.i[AT, n] = b
            n += 1
    return n


@inner
def _dense_columns(g, meth, blk, cur, n):
    """:func:`_dense` at θ = f[THETA, j] of trajectory b = i[AT, j] into column j of ``blk.tmp``, j < n (θ ≥ 1: the
    step's end, y_new itself, not projected again)."""
    y, y_new, col, theta, at = blk.ys[cur], blk.ys[1 - cur], blk.tmp, blk.f[THETA], blk.i[AT]
    s = len(meth.b)
    if meth.p.shape[1]:
        for j in range(n):
            if theta[j] < 1.0:
                _weights(meth, theta[j], blk.coef, j)
    f0, f1, k = blk.k[blk.kmap[0]], blk.k[blk.kmap[s]], blk.k
    for p in range(y.shape[0]):
        for j in range(n):
            b, th = at[j], theta[j]
            if th >= 1.0:
                col[p, j] = y_new[p, b]
            else:
                h = blk.f[T_NEW, b] - blk.f[T, b]
                if meth.p.shape[1]:
                    acc = 0.0
                    for q in range(s + 1):
                        acc += blk.coef[q, j] * k[blk.kmap[q], p, b]
                    col[p, j] = y[p, b] + h * acc
                else:
                    h00, h10, h01, h11 = _hermite(th)
                    col[p, j] = h00 * y[p, b] + h10 * h * f0[p, b] + h01 * y_new[p, b] + h11 * h * f1[p, b]
    for j in range(n):
        if theta[j] < 1.0:
            flows.project(g, col, j, j + 1)


@part
def _commit(meth, opt, blk, cur, m):
    """The accepted steps become the state: the buffers swap, and the rejected steps' columns (if any) are
    copied back from the old ones. Returns the new ``cur``."""
    s = len(meth.b)
    blk.kmap[0], blk.kmap[s] = blk.kmap[s], blk.kmap[0]
    cur = 1 - cur
    y, f0 = blk.ys[cur], blk.k[blk.kmap[0]]
    for b in range(m):
        if not blk.i[ACCEPT, b]:
            _copy_column(y, b, blk.ys[1 - cur], b)
            _copy_column(f0, b, blk.k[blk.kmap[s]], b)
            continue
        blk.f[T, b], blk.f[EXC, b] = blk.f[T_NEW, b], blk.f[EXC_NEW, b]
        blk.i[STEPS, b] += 1
        if meth.adaptive and blk.i[STATUS, b] == PENDING and blk.i[STEPS, b] >= opt.max_steps:
            blk.i[STATUS, b] = FAILED
    return cur


@inner
def _dense(g, meth, blk, cur, b, theta):
    """The state at t + θh inside trajectory b's step, into ``blk.col``: the method's dense output, or the
    cubic Hermite interpolant through (y, f) at both ends; projected by the model."""
    y, y_new, col = blk.ys[cur], blk.ys[1 - cur], blk.col
    h = blk.f[T_NEW, b] - blk.f[T, b]
    s = len(meth.b)
    if meth.p.shape[1]:
        _weights(meth, theta, blk.coef, b)
        for p in range(y.shape[0]):
            acc = 0.0
            for j in range(s + 1):
                acc += blk.coef[j, b] * blk.k[blk.kmap[j]][p, b]
            col[p, 0] = y[p, b] + h * acc
    else:
        f0, f1 = blk.k[blk.kmap[0]], blk.k[blk.kmap[s]]
        h00, h10, h01, h11 = _hermite(theta)
        for p in range(y.shape[0]):
            col[p, 0] = h00 * y[p, b] + h10 * h * f0[p, b] + h01 * y_new[p, b] + h11 * h * f1[p, b]
    flows.project(g, col, ZERO, ONE)


@inner
def _weights(meth, theta, coef, b):
    """The method's dense-output weights at θ into coef[:, b]: Σ_q p[j, q] θ^q for each stage j."""
    for j in range(coef.shape[0]):
        coef[j, b] = 0.0
        power = 1.0
        for q in range(meth.p.shape[1]):
            power *= theta
            coef[j, b] += meth.p[j, q] * power


@inner
def _hermite(theta):
    """The cubic Hermite weights at θ of y, h·f(y), y_new and h·f(y_new)."""
    t2, t3 = theta * theta, theta * theta * theta
    return 2 * t3 - 3 * t2 + 1, t3 - 2 * t2 + theta, -2 * t3 + 3 * t2, t3 - t2


@part
def _excess_at(g, meth, blk, cur, b, theta):
    _dense(g, meth, blk, cur, b, theta)
    flows.evaluate(g, blk.col, blk.col, ZERO, ONE, blk.f[COL_EXC], blk.col_work, LOSS)
    return blk.f[COL_EXC, 0]


@part
def _locate(g, meth, opt, blk, cur, b):
    """θ ∈ (0, 1] where the interpolated excess loss first equals ε: bisection, to ~machine precision."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if _excess_at(g, meth, blk, cur, b, mid) <= opt.eps:
            hi = mid
        else:
            lo = mid
        if hi - lo <= 4 * EPS:
            break
    return hi


@part
def _initial_step(g, meth, opt, blk, cur, lo, hi):
    """The first step size of trajectories lo … hi − 1 (Hairer–Nørsett–Wanner II.4, as scipy's
    select_initial_step)."""
    y, f0, y1, f1 = blk.ys[cur], blk.k[blk.kmap[0]], blk.tmp, blk.k[blk.kmap[1]]
    size = y.shape[0]
    flows.weight_floor(g, y, y, opt.atol, lo, hi, blk.f[FLOOR])
    d0, d1, d2, h0 = np.zeros(hi), np.zeros(hi), np.zeros(hi), np.zeros(hi)
    for p in range(size):
        for b in range(lo, hi):
            scale = opt.rtol * abs(y[p, b]) + blk.f[FLOOR, b]
            d0[b] += (y[p, b] / scale) ** 2
            d1[b] += (f0[p, b] / scale) ** 2
    for b in range(lo, hi):
        d0[b], d1[b] = math.sqrt(d0[b] / size), math.sqrt(d1[b] / size)
        h0[b] = min(1e-6 if d0[b] < 1e-5 or d1[b] < 1e-5 else 0.01 * d0[b] / d1[b], opt.horizon)
    for p in range(size):
        for b in range(lo, hi):
            y1[p, b] = y[p, b] + h0[b] * f0[p, b]
    flows.evaluate(g, y1, f1, lo, hi, blk.f[EXC_STAGE], blk.work, FLOW)
    for p in range(size):
        for b in range(lo, hi):
            scale = opt.rtol * abs(y[p, b]) + blk.f[FLOOR, b]
            d2[b] += ((f1[p, b] - f0[p, b]) / scale) ** 2
    for b in range(lo, hi):
        dmax = max(d1[b], math.sqrt(d2[b] / size) / h0[b])
        h1 = max(1e-6, h0[b] * 1e-3) if dmax <= 1e-15 else (0.01 / dmax) ** (1.0 / (meth.order + 1))
        h = min(100 * h0[b], h1, opt.horizon)
        blk.f[H, b] = h if math.isfinite(h) and h > 0 else 1e-6
        blk.i[EVALS, b] += 1
