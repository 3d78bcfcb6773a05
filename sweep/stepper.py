"""One explicit Runge–Kutta stepper for every method and model, compiled whole.

The batch is cut into blocks of ``width`` trajectories laid out batch-last, ``(P, width)`` (see
:mod:`sweep.flows`). Each trajectory has its own time, step size, counters and status; when one
finishes, its results are written out and the block's last live column takes its place, so finished
trajectories cost nothing. The driver loop, :func:`_integrate_block`, reads:

    retire the finished → choose each step's end → take the step → control its error → accept
    (ε-crossing, checkpoints, status) → commit the accepted steps

with one function per concept below: :func:`_step` (stages), :func:`_control` (error norm and step-size
control of Hairer–Nørsett–Wanner, as scipy's RK45), :func:`_dense` (the step's interpolant),
:func:`_locate` (the first ε-crossing). Checkpoints and the crossing are read from the interpolant,
never snapped to step ends.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import flows
from .flows import jit

PENDING, CONVERGED, UNCONVERGED, DIVERGED, FAILED = 0, 1, 2, 3, 4
BLOWUP = 1e6  # excess loss above BLOWUP · max(excess(0), ½‖Z‖²) marks a trajectory diverged
SAFETY, MIN_FACTOR, MAX_FACTOR = 0.9, 0.2, 10.0


class Method(NamedTuple):
    """A :class:`sweep.tableau.Tableau` as arrays: ``e`` is zero and ``p`` has no columns when absent."""

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
    """Per-trajectory results, trajectory first, filled in place."""

    excess: np.ndarray
    time_to_eps: np.ndarray
    status: np.ndarray
    steps: np.ndarray
    rhs_evals: np.ndarray
    y_final: np.ndarray
    t_final: np.ndarray


class Block(NamedTuple):
    """The work arrays of one block, reused from block to block. The state and its derivative swap
    buffers by index: y = ys[cur], y_new = ys[1 − cur]; stage j lives in k[kmap[j]], where kmap[0] (f(y))
    and kmap[s] (f(y_new)) trade places when a step is accepted."""

    ys: np.ndarray  # (2, P, W)
    k: np.ndarray  # (s + 1, P, W)
    kmap: np.ndarray  # (s + 1,)
    tmp: np.ndarray  # (P, W): stage arguments
    work: np.ndarray  # model work rows
    row: np.ndarray  # (W,) scratch
    col: np.ndarray  # (P, 1): one interpolated state
    col_work: np.ndarray
    col_exc: np.ndarray  # (1,)
    index: np.ndarray  # (W,) the trajectory in each column
    t: np.ndarray
    t_new: np.ndarray
    h: np.ndarray  # the next step size (adaptive methods)
    hh: np.ndarray  # this step's size, t_new − t
    exc: np.ndarray
    exc_new: np.ndarray
    exc_stage: np.ndarray
    bound: np.ndarray
    floor: np.ndarray
    enorm: np.ndarray
    found: np.ndarray  # bool: crossed ε
    accept: np.ndarray  # bool
    rejected: np.ndarray  # bool: the previous attempt was rejected
    nxt: np.ndarray  # int64: next checkpoint
    steps: np.ndarray
    evals: np.ndarray
    status: np.ndarray  # int8


def block_arrays(size: int, work_rows: int, stages: int, width: int) -> Block:
    f, i = np.zeros, np.int64
    return Block(
        ys=f((2, size, width)), k=f((stages + 1, size, width)), kmap=np.arange(stages + 1), tmp=f((size, width)),
        work=f((work_rows, width)), row=f(width), col=f((size, 1)), col_work=f((work_rows, 1)), col_exc=f(1),
        index=np.zeros(width, i), t=f(width), t_new=f(width), h=f(width), hh=f(width), exc=f(width), exc_new=f(width),
        exc_stage=f(width), bound=f(width), floor=f(width), enorm=f(width), found=np.zeros(width, np.bool_),
        accept=np.zeros(width, np.bool_), rejected=np.zeros(width, np.bool_), nxt=np.zeros(width, i),
        steps=np.zeros(width, i), evals=np.zeros(width, i), status=np.zeros(width, np.int8),
    )


@jit
def integrate(g, meth, opt, y0, tc, out, blk):
    """Every trajectory of ``y0`` (B, P), block by block."""
    width = len(blk.index)
    for first in range(0, y0.shape[0], width):
        _integrate_block(g, meth, opt, y0, tc, out, blk, first, min(width, y0.shape[0] - first))


@jit
def _integrate_block(g, meth, opt, y0, tc, out, blk, first, m):
    cur = _start(g, meth, opt, y0, tc, out, blk, first, m)
    while True:
        m = _retire(out, blk, cur, m)
        if m == 0:
            return
        _step_ends(meth, opt, blk, m)
        _step(g, meth, blk, cur, m)
        every = _control(g, meth, opt, blk, cur, m) if meth.adaptive else True
        _accept(g, meth, opt, tc, out, blk, cur, m)
        cur = _commit(meth, opt, blk, cur, m, every)


@jit
def _start(g, meth, opt, y0, tc, out, blk, first, m):
    """Load trajectories first … first + m − 1 into the block: f(y0), statuses, the first step size."""
    y, f0 = blk.ys[0], blk.k[blk.kmap[0]]
    for b in range(m):
        blk.index[b] = first + b
        for p in range(y.shape[0]):
            y[p, b] = y0[first + b, p]
    flows.project(g, y, m)
    flows.rhs(g, y, f0, m, blk.exc, blk.work)
    for b in range(m):
        i, exc = blk.index[b], blk.exc[b]
        blk.t[b], blk.steps[b], blk.evals[b], blk.nxt[b], blk.rejected[b] = 0.0, 0, 1, 0, False
        blk.bound[b] = BLOWUP * max(exc if np.isfinite(exc) else 0.0, g.half_z2)
        blk.found[b] = exc <= opt.eps
        if blk.found[b]:
            out.time_to_eps[i] = 0.0
        if len(tc) and tc[0] <= 0.0:
            out.excess[i, 0] = exc
            blk.nxt[b] = 1
        blk.status[b] = PENDING
        if not (np.isfinite(exc) and np.all(np.isfinite(y[:, b]))):
            blk.status[b] = DIVERGED
        elif blk.found[b] and opt.stop_at_eps:
            blk.status[b] = CONVERGED
    if meth.adaptive:
        _initial_step(g, meth, opt, blk, m)
    return 0


@jit
def _retire(out, blk, cur, m):
    """Write out the finished trajectories; the block's last live column fills each one's place."""
    y, f0 = blk.ys[cur], blk.k[blk.kmap[0]]
    for b in range(m - 1, -1, -1):
        if blk.status[b] == PENDING:
            continue
        i = blk.index[b]
        out.status[i], out.steps[i], out.rhs_evals[i], out.t_final[i] = (
            blk.status[b], blk.steps[b], blk.evals[b], blk.t[b])
        out.y_final[i, :] = y[:, b]
        last = m - 1
        if b != last:
            y[:, b] = y[:, last]
            f0[:, b] = f0[:, last]
            for v in (blk.t, blk.h, blk.exc, blk.bound):
                v[b] = v[last]
            for w in (blk.index, blk.nxt, blk.steps, blk.evals):
                w[b] = w[last]
            blk.found[b], blk.rejected[b], blk.status[b] = blk.found[last], blk.rejected[last], blk.status[last]
        m -= 1
    return m


@jit
def _step_ends(meth, opt, blk, m):
    """Each trajectory's next step end: the fixed grid, or t + h clipped to the horizon."""
    for b in range(m):
        if meth.adaptive:
            blk.h[b] = min(blk.h[b], opt.horizon - blk.t[b])
            end = blk.t[b] + blk.h[b]
            blk.t_new[b] = opt.horizon if end >= opt.horizon else end
        else:
            n = blk.steps[b] + 1
            blk.t_new[b] = opt.horizon if n >= opt.n_steps else n * opt.step
        blk.hh[b] = blk.t_new[b] - blk.t[b]


@jit
def _combine(dst, base, blk, coef, count, m):
    """dst = base + h·Σ_{j<count} coef_j k_j for each trajectory (its own h), skipping zero coefficients."""
    acc, hh = blk.row, blk.hh
    nonzero = 0
    for j in range(count):
        nonzero += coef[j] != 0.0
    if nonzero == 1:  # one pass (Euler; the same numbers as the general case)
        for j in range(count):
            if coef[j] != 0.0:
                c, kj = coef[j], blk.k[blk.kmap[j]]
                for p in range(dst.shape[0]):
                    for b in range(m):
                        dst[p, b] = base[p, b] + hh[b] * (c * kj[p, b])
        return
    for p in range(dst.shape[0]):
        first = True
        for j in range(count):
            c = coef[j]
            if c == 0.0:
                continue
            kj = blk.k[blk.kmap[j]]
            if first:
                for b in range(m):
                    acc[b] = c * kj[p, b]
                first = False
            else:
                for b in range(m):
                    acc[b] += c * kj[p, b]
        for b in range(m):
            dst[p, b] = base[p, b] + hh[b] * acc[b]


@jit
def _step(g, meth, blk, cur, m):
    """One step of every live trajectory: the stages, y_new, and f(y_new) with its excess loss."""
    s = len(meth.b)
    y, y_new = blk.ys[cur], blk.ys[1 - cur]
    for i in range(1, s):
        _combine(blk.tmp, y, blk, meth.a[i], i, m)
        flows.rhs(g, blk.tmp, blk.k[blk.kmap[i]], m, blk.exc_stage, blk.work)
    _combine(y_new, y, blk, meth.b, s, m)
    flows.project(g, y_new, m)
    flows.rhs(g, y_new, blk.k[blk.kmap[s]], m, blk.exc_new, blk.work)
    for b in range(m):
        blk.evals[b] += s
        blk.accept[b] = True


@jit
def _control(g, meth, opt, blk, cur, m):
    """Accept or reject each step by the RMS norm of its error estimate h·Σ e_j k_j in the weights
    rtol·max(|y|, |y_new|) + floor (:func:`sweep.flows.weight_floor`); choose the next step size.
    A step rejected at a size below 10 ulp of t fails the trajectory (diverged if the error was not
    finite). Returns whether every step was accepted."""
    y, y_new = blk.ys[cur], blk.ys[1 - cur]
    size = y.shape[0]
    flows.weight_floor(g, y, y_new, opt.atol, m, blk.floor)
    blk.enorm[:m] = 0.0
    for p in range(size):
        blk.row[:m] = 0.0
        for j in range(len(meth.e)):
            c = meth.e[j]
            if c != 0.0:
                kj = blk.k[blk.kmap[j]]
                for b in range(m):
                    blk.row[b] += c * kj[p, b]
        for b in range(m):
            scale = opt.rtol * max(abs(y[p, b]), abs(y_new[p, b])) + blk.floor[b]
            q = blk.hh[b] * blk.row[b] / scale
            blk.enorm[b] += q * q
    every = True
    for b in range(m):
        enorm = np.sqrt(blk.enorm[b] / size)
        used = blk.hh[b]
        factor = MAX_FACTOR if enorm == 0.0 else SAFETY * enorm ** (-1.0 / (meth.order + 1))
        if enorm < 1.0:
            grow = min(1.0, factor) if blk.rejected[b] else factor
            blk.h[b] = used * min(MAX_FACTOR, grow)
            blk.rejected[b] = False
        else:
            bad = not np.isfinite(enorm)
            blk.h[b] = used * max(MIN_FACTOR, MIN_FACTOR if bad else factor)
            blk.rejected[b] = True
            blk.accept[b] = False
            every = False
            t = max(blk.t[b], 1.0)
            if blk.h[b] < 10 * (np.nextafter(t, np.inf) - t):
                blk.status[b] = DIVERGED if bad else FAILED  # overflow vs. step collapse
    return every


@jit
def _accept(g, meth, opt, tc, out, blk, cur, m):
    """The accepted steps: the first ε-crossing inside each, the checkpoints it passes (up to the
    crossing when the run stops there), the trajectory's status."""
    for b in range(m):
        if not blk.accept[b]:
            continue
        t0, t1, e = blk.t[b], blk.t_new[b], blk.exc_new[b]
        stop = False
        if not blk.found[b] and e <= opt.eps:
            blk.found[b] = True
            hit = _crossing(g, meth, opt, out, blk, cur, b)
            if opt.stop_at_eps:
                t1, stop = hit, True
                blk.status[b] = CONVERGED
        if blk.nxt[b] < len(tc) and tc[blk.nxt[b]] <= t1:
            _checkpoints(g, meth, tc, out, blk, cur, b, t1)
        if stop:  # the trajectory ends exactly at the crossing
            _dense(g, meth, blk, cur, b, (t1 - t0) / (blk.t_new[b] - t0))
            blk.ys[1 - cur][:, b] = blk.col[:, 0]
            blk.t_new[b] = t1
        if blk.status[b] == PENDING:
            if not np.isfinite(e) or e > blk.bound[b]:  # a non-finite state has a non-finite excess loss
                blk.status[b] = DIVERGED
            elif t1 >= opt.horizon:
                blk.status[b] = CONVERGED if blk.found[b] else UNCONVERGED


@jit
def _crossing(g, meth, opt, out, blk, cur, b):
    """Record and return the time of trajectory b's first ε-crossing, inside its current step."""
    t0 = blk.t[b]
    hit = t0 + _locate(g, meth, opt, blk, cur, b) * (blk.t_new[b] - t0)
    out.time_to_eps[blk.index[b]] = hit
    return hit


@jit
def _checkpoints(g, meth, tc, out, blk, cur, b, t_stop):
    """The excess loss at the checkpoints in (t, t_stop] of trajectory b's step."""
    t0, h = blk.t[b], blk.t_new[b] - blk.t[b]
    while blk.nxt[b] < len(tc) and tc[blk.nxt[b]] <= t_stop:
        theta = (tc[blk.nxt[b]] - t0) / h
        out.excess[blk.index[b], blk.nxt[b]] = blk.exc_new[b] if theta >= 1.0 else _excess_at(g, meth, blk, cur, b, theta)
        blk.nxt[b] += 1


@jit
def _commit(meth, opt, blk, cur, m, every):
    """The accepted steps become the state: by swapping buffers when all were accepted, else by copying
    their columns. Returns the new ``cur``."""
    s = len(meth.b)
    if every:
        blk.kmap[0], blk.kmap[s] = blk.kmap[s], blk.kmap[0]
        cur = 1 - cur
    y, f0 = blk.ys[cur], blk.k[blk.kmap[0]]
    for b in range(m):
        if not blk.accept[b]:
            continue
        if not every:
            y[:, b] = blk.ys[1 - cur][:, b]
            f0[:, b] = blk.k[blk.kmap[s]][:, b]
        blk.t[b], blk.exc[b] = blk.t_new[b], blk.exc_new[b]
        blk.steps[b] += 1
        if meth.adaptive and blk.status[b] == PENDING and blk.steps[b] >= opt.max_steps:
            blk.status[b] = FAILED
    return cur


@jit
def _dense(g, meth, blk, cur, b, theta):
    """The state at t + θh inside trajectory b's step, into ``blk.col``: the method's dense output, or the
    cubic Hermite interpolant through (y, f) at both ends; projected by the model."""
    y, y_new, col = blk.ys[cur], blk.ys[1 - cur], blk.col
    h = blk.t_new[b] - blk.t[b]
    s = len(meth.b)
    if meth.p.shape[1]:
        coef = np.zeros(s + 1)
        for j in range(s + 1):
            power = 1.0
            for q in range(meth.p.shape[1]):
                power *= theta
                coef[j] += meth.p[j, q] * power
        for p in range(y.shape[0]):
            acc = 0.0
            for j in range(s + 1):
                acc += coef[j] * blk.k[blk.kmap[j]][p, b]
            col[p, 0] = y[p, b] + h * acc
    else:
        f0, f1 = blk.k[blk.kmap[0]], blk.k[blk.kmap[s]]
        t2, t3 = theta * theta, theta * theta * theta
        h00, h10, h01, h11 = 2 * t3 - 3 * t2 + 1, t3 - 2 * t2 + theta, -2 * t3 + 3 * t2, t3 - t2
        for p in range(y.shape[0]):
            col[p, 0] = h00 * y[p, b] + h10 * h * f0[p, b] + h01 * y_new[p, b] + h11 * h * f1[p, b]
    flows.project(g, col, 1)


@jit
def _excess_at(g, meth, blk, cur, b, theta):
    _dense(g, meth, blk, cur, b, theta)
    flows.excess(g, blk.col, 1, blk.col_exc, blk.col_work)
    return blk.col_exc[0]


@jit
def _locate(g, meth, opt, blk, cur, b):
    """θ ∈ (0, 1] where the interpolated excess loss first equals ε: bisection, to ~machine precision."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if _excess_at(g, meth, blk, cur, b, mid) <= opt.eps:
            hi = mid
        else:
            lo = mid
        if hi - lo <= 4 * np.finfo(np.float64).eps:
            break
    return hi


@jit
def _initial_step(g, meth, opt, blk, m):
    """Each trajectory's first step size (Hairer–Nørsett–Wanner II.4, as scipy's select_initial_step)."""
    y, f0, y1, f1 = blk.ys[0], blk.k[blk.kmap[0]], blk.tmp, blk.k[blk.kmap[1]]
    size = y.shape[0]
    flows.weight_floor(g, y, y, opt.atol, m, blk.floor)
    d0, d1, d2 = np.zeros(m), np.zeros(m), np.zeros(m)
    for p in range(size):
        for b in range(m):
            scale = opt.rtol * abs(y[p, b]) + blk.floor[b]
            d0[b] += (y[p, b] / scale) ** 2
            d1[b] += (f0[p, b] / scale) ** 2
    h0 = np.empty(m)
    for b in range(m):
        d0[b], d1[b] = np.sqrt(d0[b] / size), np.sqrt(d1[b] / size)
        h0[b] = min(1e-6 if d0[b] < 1e-5 or d1[b] < 1e-5 else 0.01 * d0[b] / d1[b], opt.horizon)
    for p in range(size):
        for b in range(m):
            y1[p, b] = y[p, b] + h0[b] * f0[p, b]
    flows.rhs(g, y1, f1, m, blk.exc_stage, blk.work)
    for p in range(size):
        for b in range(m):
            scale = opt.rtol * abs(y[p, b]) + blk.floor[b]
            d2[b] += ((f1[p, b] - f0[p, b]) / scale) ** 2
    for b in range(m):
        dmax = max(d1[b], np.sqrt(d2[b] / size) / h0[b])
        h1 = max(1e-6, h0[b] * 1e-3) if dmax <= 1e-15 else (0.01 / dmax) ** (1.0 / (meth.order + 1))
        h = min(100 * h0[b], h1, opt.horizon)
        blk.h[b] = h if np.isfinite(h) and h > 0 else 1e-6
        blk.evals[b] += 1
