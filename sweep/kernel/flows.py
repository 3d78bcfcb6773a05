"""The flows' right-hand sides, compiled, on batch-last blocks of trajectories (docs/theory.md §2).

A block is an array ``(P, BW)``: parameter index first, trajectory last, so that every loop's innermost
level runs over trajectories and the compiler vectorizes it; each function treats the columns lo … hi − 1.
A model reaches compiled code as a :class:`Geometry` (layerwise) or an :data:`InducedGeometry` — shapes,
offsets and the target are data, so one compilation serves every depth and width; the model is in the
type, so that code compiled for one holds none of the other's. The Python classes that build geometries
are in :mod:`sweep.kernel`.

Each function treats a trajectory alone: sums run over the parameters in a fixed order, never across
trajectories, and nothing is contracted to fused multiply-adds (no ``fastmath``), so a trajectory's
numbers do not depend on its column or its companions.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numba
import numpy as np

from .cache import CACHE_DIR  # noqa: F401 — first: the cache's place and locator, before any @jit below

LANES = 8  # trajectories per tile of the shaped flows (sweep.kernel.shaped)
# the loss (docs/theory.md §2, §12): ½‖W − Z‖² (whitened inputs); ½ tr((W − A)Σ(W − A)ᵀ) with the input
# covariance Σ acting on the right of the oriented W (or on its left, the network transposed); ½‖P_Ω(W − M)‖²
PLAIN, RIGHT, LEFT, MASK = 0, 1, 2, 3
# indices and flags passed to compiled callees as NumPy scalars, never as the literals 0, 1, True and False: numba
# compiles a callee once more for each literal argument (each flow function once, not two to four times: seconds
# of every cold start)
ZERO, ONE = np.int64(0), np.int64(1)
FLOW, LOSS = np.bool_(True), np.bool_(False)  # the flow and the excess loss, or the excess loss alone

jit = numba.njit(cache=True, error_model="numpy")  # IEEE arithmetic: 1/0 = inf, never an exception
# called from compiled code only: no Python wrapper to build
inner = numba.njit(cache=True, error_model="numpy", no_cpython_wrapper=True, no_cfunc_wrapper=True)
# inlined into its callers by numba: no compiled function of its own (whose code LLVM would optimize once more)
part = numba.njit(inline="always", error_model="numpy")


class Geometry(NamedTuple):
    """What compiled code knows of a model (the layerwise flow's; :data:`InducedGeometry`: the induced flow's).

    Layerwise: ``dims`` are the oriented widths D_0 … D_N (the network transposed when dx < dy, so that
    r = D_N ≤ D_0); oriented layer i (D_{i+1} × D_i) has element (a, c) in row
    ``off[i] + a·rs[i] + c·cs[i]`` of the state; ``target`` is the oriented Z (r × D_0); ``s_off``,
    ``e_off`` and ``v_off`` place the products S_i, the residual E and V_i in the work array.
    Induced (:data:`InducedGeometry`): the state is W (dy × dx) row-major, ``dims = (dx, dy)``, ``target`` is Z.

    ``loss`` (PLAIN, RIGHT, LEFT, MASK) and ``metric`` (Σ or the 0/1 mask of observed entries, oriented as
    the target; unused for PLAIN) say what the gradient is: −E with E = D (PLAIN), D·Σ (RIGHT), Σ·D (LEFT) or
    mask ∘ D (MASK), D = target − W; the excess loss is ½⟨D, E⟩ − tail. ``d_off`` places D in the work
    array (general losses); ``flip``: the layerwise network is transposed (oriented W = Wᵀ)."""

    depth: int
    dims: np.ndarray
    off: np.ndarray
    rs: np.ndarray
    cs: np.ndarray
    target: np.ndarray
    tail: float  # ½ Σ_{k>r} s_k², subtracted so that the excess loss tends to 0
    half_z2: float  # ½‖Z‖²
    s_off: np.ndarray
    e_off: int
    v_off: np.ndarray
    work_rows: int
    loss: int
    metric: np.ndarray
    d_off: int
    flip: bool
    shaped: object  # the flow compiled for this shape and block width (sweep.kernel.shaped), or shaped.none()
    cruise: object  # the fixed steps of a tile compiled with it (sweep.kernel.stepper._cruise)
    shaped_width: int  # the block width they serve; 0: none


# The induced flow's geometry: the fields both flows read, and the rank of the network it stands for
# (narrow when < min(dx, dy)). Compiled code asks ``hasattr(g, "rank")``, which numba answers as it
# compiles, and drops the other model's branch: a run compiles its own model's code only (the induced
# flow's SVDs are not in a layerwise run's code, nor the layerwise products in an induced one's). Numba
# types both branches first, as it looks for the one to drop; each model lacks fields the other's code
# reads (the induced functions take ``g.rank`` as an argument), so it cannot type, and compiles nothing
# of, the other model's calls.
LAYERWISE_ONLY = ("off", "rs", "cs", "s_off", "e_off", "v_off", "d_off", "flip")
_SHARED = [(name, hint) for name, hint in Geometry.__annotations__.items() if name not in LAYERWISE_ONLY]
InducedGeometry = NamedTuple("InducedGeometry", [*_SHARED, ("rank", int)])


@jit
def evaluate(g, y, out, lo, hi, exc, work, flow):
    """The excess loss of trajectories lo … hi − 1 of ``y`` into ``exc``, and with ``flow`` their flow into
    ``out``. The stepper calls this function alone of the flows (with :func:`project`, :func:`weight_floor` and
    :func:`end_to_end_of`): numba links a callee's code into every compiled function that calls it, and
    optimizes it there once more, so one entry compiles the flows once for each caller, not once per entry."""
    if hasattr(g, "rank"):  # decided as numba compiles (InducedGeometry)
        for b in range(lo, hi):
            exc[b] = _induced_column(g, y, out, b, flow, work, g.rank)
    elif flow and g.shaped_width == y.shape[1]:
        _layerwise_shaped(g, y, out, lo, hi, exc, work)
    else:
        _layerwise(g, y, out, lo, hi, exc, work, flow)


@jit
def rhs(g, y, out, lo, hi, exc, work):
    """The flow of trajectories lo … hi − 1 of ``y`` into ``out``; their excess loss into ``exc``."""
    evaluate(g, y, out, lo, hi, exc, work, FLOW)


@jit
def excess(g, y, lo, hi, exc, work):
    """The excess loss ½⟨D, E⟩ − tail (½‖W − Z‖² − tail for whitened data) of trajectories lo … hi − 1 (no
    flow)."""
    evaluate(g, y, y, lo, hi, exc, work, LOSS)


@jit
def project(g, y, lo, hi):
    """Induced flow of a network narrower than min(dx, dy): replace each W by its best rank-r
    approximation (Eckart–Young), so that round-off cannot grow a rank the network cannot have.
    Nothing to do for other models; non-finite states are left alone."""
    if hasattr(g, "rank"):
        _truncate(g, y, lo, hi, g.rank)


@inner
def _truncate(g, y, lo, hi, rank):
    """Each W of columns lo … hi − 1 (finite) by its rank-``rank`` truncated SVD, when that is narrow."""
    dx, dy = g.dims[0], g.dims[1]
    if rank >= min(dx, dy):
        return
    w = np.empty((dy, dx))
    for b in range(lo, hi):
        finite = True
        for i in range(dy):
            for j in range(dx):
                w[i, j] = y[i * dx + j, b]
                finite = finite and math.isfinite(w[i, j])
        if not finite:
            continue
        u, s, vt = np.linalg.svd(w, full_matrices=False)
        for i in range(dy):
            for j in range(dx):
                acc = 0.0
                for k in range(rank):
                    acc += u[i, k] * s[k] * vt[k, j]
                y[i * dx + j, b] = acc


@jit
def weight_floor(g, y, y_new, atol, lo, hi, floor):
    """The additive part of each trajectory's error weights rtol·max(|y|, |y_new|) + floor.

    atol, except for the induced flow with N > 1: atol·N·λ^{N−1} with λ = max(‖W‖_F^{1/N}, atol) the
    size of the N balanced layers W stands for — a layer error δ moves W by about N·λ^{N−1}·δ, so atol
    bounds the layers' error as it does for the layerwise flow, also on the plateau near W = 0."""
    n = g.depth
    if hasattr(g, "rank"):
        if n > 1:
            for b in range(lo, hi):  # W is small (dy·dx): one trajectory at a time, no work arrays
                sy = sn = 0.0
                for p in range(y.shape[0]):
                    sy += y[p, b] * y[p, b]
                    sn += y_new[p, b] * y_new[p, b]
                layer = max(math.sqrt(max(sy, sn)) ** (1.0 / n), atol)
                floor[b] = atol * n * layer ** (n - 1)
            return
    for b in range(lo, hi):
        floor[b] = atol


# --------------------------------------------------------------------------------------------------
# Layerwise: dW_j/dt = (W_N⋯W_{j+1})ᵀ (Z − W) (W_{j−1}⋯W_1)ᵀ, products from the narrow end
# --------------------------------------------------------------------------------------------------


@inner
def _matmul(out, x, z, rows, inner, cols, lo, hi):
    """out = x·z (rows × inner times inner × cols) for trajectories lo … hi − 1. Each operand is a view
    (array, first row, row stride, column stride) of a batch-last array, so transposes cost nothing.
    The inner index runs in groups of four per pass over the trajectories (fewer loads and stores);
    the order of the sums depends on the shapes only."""
    oa, o0, ors, ocs = out
    xa, x0, xrs, xcs = x
    za, z0, zrs, zcs = z
    for i in range(rows):
        for j in range(cols):
            o = o0 + i * ors + j * ocs
            xr, zr = x0 + i * xrs, z0 + j * zcs
            for b in range(lo, hi):
                oa[o, b] = xa[xr, b] * za[zr, b]
            k = 1
            while k + 4 <= inner:
                x1, z1 = xr + k * xcs, zr + k * zrs
                x2, z2, x3, z3, x4, z4 = x1 + xcs, z1 + zrs, x1 + 2 * xcs, z1 + 2 * zrs, x1 + 3 * xcs, z1 + 3 * zrs
                for b in range(lo, hi):
                    oa[o, b] += (xa[x1, b] * za[z1, b] + xa[x2, b] * za[z2, b]) + (
                        xa[x3, b] * za[z3, b] + xa[x4, b] * za[z4, b]
                    )
                k += 4
            while k < inner:
                x1, z1 = xr + k * xcs, zr + k * zrs
                for b in range(lo, hi):
                    oa[o, b] += xa[x1, b] * za[z1, b]
                k += 1


@part
def _layerwise_shaped(g, y, out, lo, hi, exc, work):
    """The layerwise flow of columns lo … hi − 1 by the code compiled for this shape (``g.shaped``) on whole
    tiles of LANES columns, and by :func:`_layerwise` on the columns on either side: the same sums in the same
    order, so a trajectory's numbers do not depend on where it sits."""
    t0, t1 = -(-lo // LANES), hi // LANES
    if t1 <= t0:
        _layerwise(g, y, out, lo, hi, exc, work, FLOW)
        return
    if lo < t0 * LANES:
        _layerwise(g, y, out, lo, t0 * LANES, exc, work, FLOW)
    g.shaped(y.ctypes.data, out.ctypes.data, exc.ctypes.data, work.ctypes.data, g.target.ctypes.data, g.tail, t0, t1)
    if t1 * LANES < hi:
        _layerwise(g, y, out, t1 * LANES, hi, exc, work, FLOW)


@inner
def _layer(g, y, i):
    """Oriented layer i, D_{i+1} × D_i, as a view of the state."""
    return y, g.off[i], g.rs[i], g.cs[i]


@inner
def _s(g, y, work, i):
    """S_i = L_{N−1}⋯L_i's left factor (r × D_i): the last layer itself for i = N − 1."""
    n = g.depth
    if i == n - 1:
        return _layer(g, y, n - 1)
    return work, g.s_off[i], g.dims[i], 1


@inner
def _v(g, work, i):
    """V_i = L_{i−1}⋯L_0 Eᵀ (D_i × r); V_0 = Eᵀ, a transposed view of the residual."""
    if i == 0:
        return work, g.e_off, 1, g.dims[0]
    return work, g.v_off[i], g.dims[g.depth], 1


@inner
def _transposed(view):
    a, start, rs, cs = view
    return a, start, cs, rs


@inner
def _layerwise(g, y, out, lo, hi, exc, work, flow):
    """With S_i as in :func:`_s`, the residual E = Z − W (S_0 = W) and V_i as in :func:`_v`, the flow of
    layer i is S_{i+1}ᵀ V_iᵀ (V_{N−1}ᵀ for the last layer): three products of r·D_{i+1}·D_i per layer."""
    lo, hi = np.uint64(lo), np.uint64(hi)  # unsigned: LLVM vectorizes the loops over b (signed bounds: it does not)
    n, d = g.depth, g.dims
    r = d[n]
    for i in range(n - 2, -1, -1):
        _matmul(_s(g, y, work, i), _s(g, y, work, i + 1), _layer(g, y, i), r, d[i + 1], d[i], lo, hi)
    wa, w0, wrs, wcs = _s(g, y, work, ZERO)
    for b in range(lo, hi):
        exc[b] = 0.0
    if g.loss != PLAIN:
        _residual(g, wa, w0, wrs, wcs, work, lo, hi, exc)
    else:
        for a in range(r):
            for c in range(d[0]):
                z, row, w = g.target[a, c], g.e_off + a * d[0] + c, w0 + a * wrs + c * wcs
                for b in range(lo, hi):
                    e = z - wa[w, b]
                    work[row, b] = e
                    exc[b] += e * e
    for b in range(lo, hi):
        exc[b] = 0.5 * exc[b] - g.tail
    if not flow:
        return
    for i in range(1, n):
        _matmul(_v(g, work, i), _layer(g, y, i - 1), _v(g, work, i - 1), d[i], d[i - 1], r, lo, hi)
    for i in range(n - 1):
        grad = _layer(g, out, i)
        _matmul(grad, _transposed(_s(g, y, work, i + 1)), _transposed(_v(g, work, i)), d[i + 1], r, d[i], lo, hi)
    va, v0, vrs, vcs = _v(g, work, n - 1)
    oa, o0, ors, ocs = _layer(g, out, n - 1)
    for a in range(d[n]):
        for c in range(d[n - 1]):
            o, v = o0 + a * ors + c * ocs, v0 + c * vrs + a * vcs
            for b in range(lo, hi):
                oa[o, b] = va[v, b]


@inner
def _residual(g, wa, w0, wrs, wcs, work, lo, hi, exc):
    """E = −∇L(W) of the general losses into the residual rows, and Σ_ac D_ac E_ac into ``exc``: D = A − W
    (oriented, r × D_0) first into its own rows, then E = D·Σ, Σ·D or mask ∘ D (:class:`Geometry`)."""
    r, d0, m = g.dims[g.depth], g.dims[0], g.metric
    for a in range(r):
        for c in range(d0):
            z, row, w = g.target[a, c], g.d_off + a * d0 + c, w0 + a * wrs + c * wcs
            for b in range(lo, hi):
                work[row, b] = z - wa[w, b]
    for a in range(r):
        for c in range(d0):
            row, drow = g.e_off + a * d0 + c, g.d_off + a * d0 + c
            if g.loss == MASK:
                keep = m[a, c] != 0.0
                for b in range(lo, hi):
                    work[row, b] = work[drow, b] if keep else 0.0
            else:
                for b in range(lo, hi):
                    work[row, b] = 0.0
                for k in range(d0 if g.loss == RIGHT else r):
                    if g.loss == RIGHT:
                        coef, src = m[k, c], g.d_off + a * d0 + k
                    else:
                        coef, src = m[a, k], g.d_off + k * d0 + c
                    for b in range(lo, hi):
                        work[row, b] += work[src, b] * coef
            for b in range(lo, hi):
                exc[b] += work[drow, b] * work[row, b]


@jit
def end_to_end_of(g, y, work, b, dst):
    """W of trajectory b of ``y`` into ``dst`` once :func:`evaluate` has run on columns including b with this
    ``work``: the state itself for the induced flow, else the product S_0 it left in ``work``."""
    if hasattr(g, "rank"):
        for p in range(dst.shape[0]):
            dst[p] = y[p, b]
        return
    sa, s0, srs, scs = _s(g, y, work, ZERO)
    r, d0 = g.dims[g.depth], g.dims[0]
    for a in range(r):
        for c in range(d0):
            v = sa[s0 + a * srs + c * scs, b]
            if g.flip:
                dst[c * r + a] = v
            else:
                dst[a * d0 + c] = v


# --------------------------------------------------------------------------------------------------
# Induced: dW/dt = −U[(Uᵀ(W − Z)V) ∘ K]Vᵀ, K_ab = Σ_i s_a^{2(N−i)/N} s_b^{2(i−1)/N}, one trajectory at a time
# --------------------------------------------------------------------------------------------------


@inner
def _induced_column(g, y, out, b, flow, work, rank):
    """Excess loss of trajectory b; with ``flow`` its flow into out[:, b]. Numerically zero singular
    values are set to exactly 0 (0⁰ = 1), and those beyond the rank to 0. When dy = 1 or dx = 1 the
    SVD is explicit: the flow is −s^{2−2/N}[D + (N−1)(D·v)v] with s = ‖W‖, v = W/s, D = W − Z."""
    dx, dy, n = g.dims[0], g.dims[1], g.depth
    size = dx * dy
    if g.loss != PLAIN:
        return _induced_general(g, y, out, b, flow, work, rank)
    z = g.target.ravel()  # D = W − Z is formed where it is used: no array per call
    half = 0.0
    for i in range(size):
        half += (y[i, b] - z[i]) * (y[i, b] - z[i])
    exc = 0.5 * half - g.tail
    if not flow:
        return exc
    if n == 1:
        for i in range(size):
            out[i, b] = -(y[i, b] - z[i])
    elif not math.isfinite(exc):  # LAPACK may not return on non-finite input: no flow
        for i in range(size):
            out[i, b] = np.nan
    elif dx == 1 or dy == 1:
        s2 = 0.0
        for i in range(size):
            s2 += y[i, b] * y[i, b]
        s = math.sqrt(s2)
        dv = 0.0
        for i in range(size):
            dv += (y[i, b] - z[i]) * (y[i, b] / s if s > 0 else 0.0)
        sp = s ** (2.0 - 2.0 / n)
        for i in range(size):
            v = y[i, b] / s if s > 0 else 0.0
            out[i, b] = -sp * ((y[i, b] - z[i]) + (n - 1) * dv * v)
    else:
        w = np.empty((dy, dx))
        for i in range(dy):
            for j in range(dx):
                w[i, j] = y[i * dx + j, b]
        _matrix_flow(g, w, w - g.target, out, b, rank)
    return exc


@inner
def _matrix_flow(g, w, grad, out, b, rank):
    """−U[(Uᵀ G V) ∘ K]Vᵀ into out[:, b], from the full SVD of W (dy × dx) and the gradient G."""
    dy, dx, n = w.shape[0], w.shape[1], g.depth
    u, s, vt = np.linalg.svd(w)
    cutoff = max(dy, dx) * 2.0**-52 * s[0]
    sa = np.zeros(dy)
    sb = np.zeros(dx)
    for k in range(min(len(s), rank)):
        if s[k] > cutoff:
            sa[k] = s[k]
            sb[k] = s[k]
    mk = np.ascontiguousarray(u.T) @ grad @ np.ascontiguousarray(vt.T)
    for i in range(dy):
        for j in range(dx):
            kij = 0.0
            for q in range(n):
                kij += sa[i] ** (2.0 * (n - 1 - q) / n) * sb[j] ** (2.0 * q / n)
            mk[i, j] *= kij
    flow_w = u @ mk @ vt
    for i in range(dy):
        for j in range(dx):
            out[i * dx + j, b] = -flow_w[i, j]


@inner
def _induced_general(g, y, out, b, flow, work, rank):
    """:func:`_induced_column` for the general losses: the gradient G = (W − A)·Σ or mask ∘ (W − A) into
    work[:, b], the excess ½⟨W − A, G⟩ − tail, and the flow −Σ_j (WWᵀ)^{(N−j)/N} G (WᵀW)^{(j−1)/N}
    (docs/theory.md §12: the end-to-end dynamics hold for any loss from balanced starts)."""
    dx, dy, n = g.dims[0], g.dims[1], g.depth
    size = dx * dy
    z, m = g.target.ravel(), g.metric
    half = 0.0
    for i in range(dy):
        for j in range(dx):
            p = i * dx + j
            if g.loss == MASK:
                gp = y[p, b] - z[p] if m[i, j] != 0.0 else 0.0
            else:
                gp = 0.0
                for k in range(dx):
                    gp += (y[i * dx + k, b] - z[i * dx + k]) * m[k, j]
            work[p, b] = gp
            half += (y[p, b] - z[p]) * gp
    exc = 0.5 * half - g.tail
    if not flow:
        return exc
    if n == 1:
        for p in range(size):
            out[p, b] = -work[p, b]
    elif not math.isfinite(exc):
        for p in range(size):
            out[p, b] = np.nan
    elif dx == 1 or dy == 1:
        s2 = 0.0
        for p in range(size):
            s2 += y[p, b] * y[p, b]
        s = math.sqrt(s2)
        gv = 0.0
        for p in range(size):
            gv += work[p, b] * (y[p, b] / s if s > 0 else 0.0)
        sp = s ** (2.0 - 2.0 / n)
        for p in range(size):
            v = y[p, b] / s if s > 0 else 0.0
            out[p, b] = -sp * (work[p, b] + (n - 1) * gv * v)
    else:
        w = np.empty((dy, dx))
        grad = np.empty((dy, dx))
        for i in range(dy):
            for j in range(dx):
                w[i, j] = y[i * dx + j, b]
                grad[i, j] = work[i * dx + j, b]
        _matrix_flow(g, w, grad, out, b, rank)
    return exc
