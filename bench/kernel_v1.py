# Frozen verbatim copy of sweep/kernel.py at 617bc14: the pre-numba kernel, kept as the benchmark's baseline.
"""Batched gradient-flow kernel: models (right-hand sides) and one explicit Runge–Kutta stepper.

Pure NumPy: no Ray, no I/O. The state of a batch is a C-contiguous array ``(B, P)``; a model views it
as layers and writes the flow into an output array of the same shape. Every right-hand-side call also
returns the excess loss of the state it was evaluated at, so loss monitoring costs nothing extra.

A method is a :class:`Tableau` (data); :func:`integrate` is the only stepper. Each trajectory keeps
its own time, step size, counters and status; finished trajectories leave the active set.
The mathematics is in ``docs/theory.md`` (§2 for the flows).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KERNEL_VERSION = "2"  # 2: induced flow projected onto rank r on narrow networks; its error weights in the layers' scale

PENDING, CONVERGED, UNCONVERGED, DIVERGED, FAILED = 0, 1, 2, 3, 4
STATUS_MEANINGS = "pending converged unconverged diverged failed"

BLOWUP = 1e6  # excess loss above BLOWUP * max(excess(0), ½‖Z‖²) marks a trajectory diverged


# --------------------------------------------------------------------------------------------------
# Methods as data
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Tableau:
    """An explicit Runge–Kutta method: Butcher coefficients, optional embedded error weights
    ``e = b − b̂`` (over the stages plus the FSAL stage f(y_new)), optional dense-output matrix ``p``
    (rows: stages plus FSAL stage; columns: powers θ¹…θᵏ). Without ``p`` the step is interpolated by
    the cubic Hermite polynomial through (y, f) at both ends."""

    name: str
    c: np.ndarray
    a: np.ndarray
    b: np.ndarray
    e: np.ndarray | None = None
    p: np.ndarray | None = None
    error_order: int = 0  # order of the embedded error estimate (its exponent is −1/(order+1))

    @property
    def stages(self) -> int:
        return len(self.c)

    @property
    def adaptive(self) -> bool:
        return self.e is not None


EULER = Tableau("euler", c=np.array([0.0]), a=np.zeros((1, 1)), b=np.array([1.0]))

RK4 = Tableau(
    "rk4",
    c=np.array([0.0, 0.5, 0.5, 1.0]),
    a=np.array([[0, 0, 0, 0], [0.5, 0, 0, 0], [0, 0.5, 0, 0], [0, 0, 1.0, 0]], dtype=float),
    b=np.array([1 / 6, 1 / 3, 1 / 3, 1 / 6]),
)

# Dormand & Prince (1980), "A family of embedded Runge-Kutta formulae", J. Comp. Appl. Math. 6;
# dense output of Shampine (1986), "Some practical Runge-Kutta formulas", Math. Comp. 46 — the same
# coefficients as scipy's RK45 and diffrax's Dopri5.
DOPRI5 = Tableau(
    "dopri5",
    c=np.array([0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1]),
    a=np.array(
        [
            [0, 0, 0, 0, 0],
            [1 / 5, 0, 0, 0, 0],
            [3 / 40, 9 / 40, 0, 0, 0],
            [44 / 45, -56 / 15, 32 / 9, 0, 0],
            [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729, 0],
            [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
        ]
    ),
    b=np.array([35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84]),
    e=np.array([-71 / 57600, 0, 71 / 16695, -71 / 1920, 17253 / 339200, -22 / 525, 1 / 40]),
    p=np.array(
        [
            [1, -8048581381 / 2820520608, 8663915743 / 2820520608, -12715105075 / 11282082432],
            [0, 0, 0, 0],
            [0, 131558114200 / 32700410799, -68118460800 / 10900136933, 87487479700 / 32700410799],
            [0, -1754552775 / 470086768, 14199869525 / 1410260304, -10690763975 / 1880347072],
            [0, 127303824393 / 49829197408, -318862633887 / 49829197408, 701980252875 / 199316789632],
            [0, -282668133 / 205662961, 2019193451 / 616988883, -1453857185 / 822651844],
            [0, 40617522 / 29380423, -110615467 / 29380423, 69997945 / 29380423],
        ]
    ),
    error_order=4,
)

METHODS = {t.name: t for t in (EULER, RK4, DOPRI5)}


# --------------------------------------------------------------------------------------------------
# Models: right-hand sides of batched arrays
# --------------------------------------------------------------------------------------------------


def tail_loss(target: np.ndarray, rank: int) -> float:
    """½ Σ_{k>r} s_k² — the part of ½‖W − Z‖² no rank-r product can remove (Eckart–Young)."""
    s = np.linalg.svd(target, compute_uv=False)
    return 0.5 * float(np.sum(s[rank:] ** 2))


def _half_sq(e: np.ndarray) -> np.ndarray:
    """½‖e_b‖²_F for each matrix of a stack (B, rows, cols); the reduction order depends only on the
    matrix shape, never on B, so results are identical whatever the batch."""
    flat = e.reshape(e.shape[0], -1)
    return 0.5 * np.sum(flat * flat, axis=1)


class Layerwise:
    """Gradient flow on every layer: dW_j/dt = (W_N⋯W_{j+1})ᵀ (Z − W) (W_{j−1}⋯W_1)ᵀ.

    ``dims = (d_0 = dx, d_1, …, d_N = dy)``; the state packs W_1 … W_N row-major.

    The products are taken from the narrow end: with S_j = W_N⋯W_{j+1} (dy × d_j, S_0 = W) and
    V_j = W_j⋯W_1 (Z − W)ᵀ (d_j × dy), the flow of layer j is S_jᵀ V_{j−1}ᵀ — three products of
    size dy·d_j·d_{j−1} per layer. When dx < dy the same is done on the transposed network."""

    def __init__(self, dims, target: np.ndarray, tail: float = 0.0):
        self.dims = tuple(int(d) for d in dims)
        self.depth = len(self.dims) - 1
        self.shapes = [(self.dims[j + 1], self.dims[j]) for j in range(self.depth)]
        sizes = [r * c for r, c in self.shapes]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        self.size = int(self.offsets[-1])
        self.target = np.asarray(target, dtype=float)
        self.tail = float(tail)
        self.flip = self.dims[0] < self.dims[-1]  # work on the transposed network: narrow end first
        self._buffers = (0, None)

    def layers(self, y: np.ndarray) -> list[np.ndarray]:
        """Views (B, d_j, d_{j−1}) of the layers packed in ``y`` (B, P)."""
        b = y.shape[0]
        return [y[:, self.offsets[j] : self.offsets[j + 1]].reshape(b, *self.shapes[j]) for j in range(self.depth)]

    def pack(self, layers) -> np.ndarray:
        b = layers[0].shape[0]
        return np.concatenate([w.reshape(b, -1) for w in layers], axis=1)

    def _oriented(self, y):
        """Layers W_1…W_N and target, transposed and reversed when dx < dy (then dy ≤ dx holds)."""
        ws = self.layers(y)
        if self.flip:
            return [w.transpose(0, 2, 1) for w in reversed(ws)], self.target.T
        return ws, self.target

    def _suffixes(self, ws, b):
        """S_j = W_N⋯W_{j+1} for j = N−1 … 0 into preallocated buffers; S_0 = W."""
        if self._buffers[0] != b:
            r = ws[-1].shape[1]
            dims = [w.shape[2] for w in ws]  # d_0 … d_{N−1}
            self._buffers = (b, [np.empty((b, r, d)) for d in dims], [np.empty((b, d, r)) for d in dims])
        _, s, v = self._buffers
        n = self.depth
        if n == 1:
            return [ws[0]], v
        np.matmul(ws[n - 1], ws[n - 2], out=s[n - 2])
        for j in range(n - 2, 0, -1):
            np.matmul(s[j], ws[j - 1], out=s[j - 1])
        return s[: n - 1] + [ws[n - 1]], v

    def product(self, y: np.ndarray) -> np.ndarray:
        ws, _ = self._oriented(y)
        w = self._suffixes(ws, y.shape[0])[0][0].copy()
        return w.transpose(0, 2, 1) if self.flip else w

    def excess(self, y: np.ndarray) -> np.ndarray:
        return _half_sq(self.target - self.product(y)) - self.tail

    def rhs(self, y: np.ndarray, out: np.ndarray) -> np.ndarray:
        ws, target = self._oriented(y)
        outs = self.layers(out)
        if self.flip:
            outs = [o.transpose(0, 2, 1) for o in reversed(outs)]
        n = self.depth
        s, v = self._suffixes(ws, y.shape[0])  # s[j] = S_j (j < N; S_N = I), v: buffers for V_j
        e = target - s[0]  # Z − W, (B, r, dx) with r = min(dx, dy)
        excess = _half_sq(e) - self.tail
        v[0][...] = e.transpose(0, 2, 1)  # V_0 = (Z − W)ᵀ
        for j in range(1, n):
            np.matmul(ws[j - 1], v[j - 1], out=v[j])  # V_j = W_j V_{j−1}
        vector = target.shape[0] == 1
        for j in range(n - 1):  # layer j+1: S_{j+1}ᵀ V_jᵀ (an outer product when r = 1)
            sj = s[j + 1] if j + 1 < n - 1 else ws[n - 1]
            if vector:
                np.multiply(sj.transpose(0, 2, 1), v[j].transpose(0, 2, 1), out=outs[j])
            else:
                np.matmul(sj.transpose(0, 2, 1), v[j].transpose(0, 2, 1), out=outs[j])
        outs[n - 1][...] = v[n - 1].transpose(0, 2, 1)  # layer N: V_{N−1}ᵀ
        return excess

    def imbalance(self, y: np.ndarray) -> list[np.ndarray]:
        """D_j = W_{j+1}ᵀW_{j+1} − W_jW_jᵀ for j = 1…N−1."""
        ws = self.layers(y)
        return [
            ws[j + 1].transpose(0, 2, 1) @ ws[j + 1] - ws[j] @ ws[j].transpose(0, 2, 1) for j in range(self.depth - 1)
        ]


class Induced:
    """The end-to-end flow of balanced networks (docs/theory.md §2, the paper's (17)):
    dW/dt = −U[(Uᵀ(W − Z)V) ∘ K]Vᵀ, K_ab = Σ_i s_a^{2(N−i)/N} s_b^{2(i−1)/N}, from the full SVD of W,
    with numerically-zero singular values set to exactly 0 and 0⁰ = 1.

    ``rank`` (the narrowest layer of the network it stands for) sets s_k = 0 for k > rank: the exact
    flow keeps rank(W) ≤ rank, but for N = 2 the directions beyond it are unstable (strict saddles)
    and round-off alone would otherwise grow a rank the network cannot have. On those directions the
    flow is zero, so nothing would damp what a Runge–Kutta step leaves there (about the tolerance),
    and the excess loss depends on it to first order: :meth:`project` keeps the state on the rank-r
    set, and the stepper calls it on every state it reports.

    :meth:`error_scale` measures the error of W in the scale of the layers it stands for, so that a
    tolerance means what it means for :class:`Layerwise` also where W is small."""

    def __init__(self, depth: int, target: np.ndarray, tail: float = 0.0, rank: int | None = None):
        self.depth = int(depth)
        self.rank = rank
        self.target = np.asarray(target, dtype=float)
        self.dy, self.dx = self.target.shape
        self.size = self.dy * self.dx
        self.tail = float(tail)
        self.narrow = rank is not None and rank < min(self.dy, self.dx)

    def product(self, y: np.ndarray) -> np.ndarray:
        return y.reshape(y.shape[0], self.dy, self.dx)

    def excess(self, y: np.ndarray) -> np.ndarray:
        return _half_sq(self.target - self.product(y)) - self.tail

    def project(self, y: np.ndarray) -> np.ndarray:
        """Replace each W in ``y`` (in place) by its best rank-r approximation U_r S_r V_rᵀ (Eckart–Young);
        nothing to do unless the network is narrower than min(dx, dy). Non-finite states are left alone."""
        if not self.narrow:
            return y
        w = self.product(y)
        ok = np.flatnonzero(np.all(np.isfinite(y), axis=1))
        if len(ok) == len(y):
            ok = slice(None)
        u, s, vt = np.linalg.svd(w[ok], full_matrices=False)
        r = self.rank
        w[ok] = (u[:, :, :r] * s[:, None, :r]) @ vt[:, :r, :]
        return y

    def error_scale(self, y: np.ndarray, y_new: np.ndarray, rtol: float, atol: float, out: np.ndarray):
        """Error weights rtol·max(|W|, |W_new|) + atol·N·λ^{N−1} with λ = max(‖W‖_F^{1/N}, atol) the size of
        the N balanced layers: a layer error δ moves W by about N·λ^{N−1}·δ, so atol bounds the layers'
        error as it does for :class:`Layerwise` (where atol alone would allow relative errors of
        atol/‖W‖ once W is small, on the plateau near W = 0)."""
        n = self.depth
        _error_scale(y, y_new, rtol, atol if n == 1 else 0.0, out)
        if n == 1:
            return out
        size = np.sqrt(np.maximum(np.sum(y * y, axis=1), np.sum(y_new * y_new, axis=1)))
        layer = np.maximum(size ** (1.0 / n), atol)
        out += (atol * n * layer ** (n - 1))[:, None]
        return out

    def rhs(self, y: np.ndarray, out: np.ndarray) -> np.ndarray:
        w = self.product(y)
        diff = w - self.target
        excess = _half_sq(diff) - self.tail
        n = self.depth
        if n == 1:
            np.negative(diff, out=self.product(out))
            return excess
        finite = np.isfinite(excess)
        if not finite.all():  # LAPACK may not return on non-finite input: such states have no flow
            out[~finite] = np.nan
            if finite.any():
                good = np.flatnonzero(finite)
                sub = np.empty((len(good), y.shape[1]))
                self._flow(w[good], diff[good], sub)
                out[good] = sub
            return excess
        self._flow(w, diff, out)
        return excess

    def _flow(self, w, diff, out):
        n = self.depth
        u, s, vt = np.linalg.svd(w, full_matrices=True)
        s = s.copy()
        cutoff = max(self.dy, self.dx) * np.finfo(float).eps * s[:, :1]
        s[s <= cutoff] = 0.0
        if self.rank is not None:
            s[:, self.rank :] = 0.0
        k = len(s[0])
        sa = np.zeros((len(s), self.dy))
        sb = np.zeros((len(s), self.dx))
        sa[:, :k] = s
        sb[:, :k] = s
        # powers s^{2q/N}, q = 0 … N−1 (numpy: 0.0 ** 0.0 == 1.0)
        q = (2.0 / n) * np.arange(n)
        pa = sa[:, None, :] ** q[None, :, None]  # (B, N, dy)
        pb = sb[:, None, :] ** q[None, :, None]  # (B, N, dx)
        kmat = pa[:, ::-1, :].transpose(0, 2, 1) @ pb  # Σ_i s_a^{2(N−i)/N} s_b^{2(i−1)/N}
        m = u.transpose(0, 2, 1) @ diff @ vt.transpose(0, 2, 1)
        np.matmul(u, (m * kmat) @ vt, out=self.product(out))
        np.negative(out, out=out)


# --------------------------------------------------------------------------------------------------
# The stepper
# --------------------------------------------------------------------------------------------------

SAFETY, MIN_FACTOR, MAX_FACTOR = 0.9, 0.2, 10.0


@dataclass
class Result:
    """Per-trajectory results of :func:`integrate` (B first)."""

    excess: np.ndarray  # (B, C) excess loss at the checkpoints (NaN after a stop)
    time_to_eps: np.ndarray  # (B,) first time with excess ≤ eps, NaN if never
    status: np.ndarray  # (B,) int8
    steps: np.ndarray  # (B,) accepted steps
    rhs_evals: np.ndarray  # (B,)
    y_final: np.ndarray  # (B, P) state at the end (at time_to_eps when stopped there)
    t_final: np.ndarray  # (B,)


def _rms(x: np.ndarray) -> np.ndarray:
    return np.sqrt(np.sum(x * x, axis=1) / x.shape[1])


def integrate(
    model,
    y0: np.ndarray,
    method: Tableau,
    *,
    horizon: float,
    checkpoints: np.ndarray,
    eps: float,
    stop_at_eps: bool = False,
    step: float | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    max_steps: int = 1_000_000,
) -> Result:
    """Integrate a batch of trajectories of ``model`` from ``y0`` (B, P) over [0, horizon].

    Fixed-step methods advance on the grid t_n = n·step (last step clipped to the horizon);
    adaptive ones control the local error per trajectory (Hairer–Nørsett–Wanner, as scipy's RK45).
    Checkpoints and the first crossing of ``excess = eps`` are read from the step's interpolant
    (the method's dense output, else cubic Hermite), never snapped to step ends.

    Two optional model hooks: ``model.project(y)`` (in place) maps a state onto the set the model's
    flow lives on; it is applied to the start, to each step's result before its FSAL evaluation and
    to every interpolated state, so that each reported state and excess loss is a projected one.
    ``model.error_scale(y, y_new, rtol, atol, out)`` gives the weights of the error norm; without it
    they are rtol·max(|y|, |y_new|) + atol.

    Large batches are integrated in blocks of about BLOCK_BYTES of state each, so that the working
    set stays in cache; trajectories are independent, so blocking never changes a number."""
    y0 = np.ascontiguousarray(y0, dtype=float)
    block = max(MIN_BLOCK, BLOCK_BYTES // (8 * max(1, y0.shape[1])))
    kw = {
        "method": method,
        "horizon": horizon,
        "checkpoints": checkpoints,
        "eps": eps,
        "stop_at_eps": stop_at_eps,
        "step": step,
        "rtol": rtol,
        "atol": atol,
        "max_steps": max_steps,
    }
    if len(y0) <= block:
        return _integrate_block(model, y0, **kw)
    parts = [_integrate_block(model, y0[i : i + block], **kw) for i in range(0, len(y0), block)]
    return Result(*(np.concatenate([getattr(r, f) for r in parts]) for f in Result.__dataclass_fields__))


BLOCK_BYTES = 2 * 2**20  # state per block (each of the ~nk + 3 work arrays); measured in bench/
MIN_BLOCK = 64


def _integrate_block(model, y0, *, method, horizon, checkpoints, eps, stop_at_eps, step, rtol, atol, max_steps):
    nb, size = y0.shape
    tc = np.asarray(checkpoints, dtype=float)
    nc = len(tc)
    s = method.stages
    nk = s + 1  # stages plus f(y_new)
    a, b = method.a, method.b
    adaptive = method.adaptive
    if adaptive and (rtol is None or atol is None):
        raise ValueError("adaptive methods need rtol and atol")
    if not adaptive and not (step and step > 0):
        raise ValueError("fixed-step methods need step > 0")

    out = Result(
        excess=np.full((nb, nc), np.nan),
        time_to_eps=np.full(nb, np.nan),
        status=np.zeros(nb, dtype=np.int8),
        steps=np.zeros(nb, dtype=np.int64),
        rhs_evals=np.zeros(nb, dtype=np.int64),
        y_final=np.full((nb, size), np.nan),
        t_final=np.zeros(nb),
    )

    # active-set state (compacted as trajectories finish); k[0] = f(y), k[1…s−1] stages, k[s] = f(y_new)
    idx = np.arange(nb)
    y = _project(model, y0.copy())
    k = [np.empty((nb, size)) for _ in range(nk)]
    exc = model.rhs(y, k[0])
    evals = np.ones(nb, dtype=np.int64)
    steps = np.zeros(nb, dtype=np.int64)
    t = np.zeros(nb)
    nxt = np.zeros(nb, dtype=np.int64)  # next checkpoint to fill
    bound = BLOWUP * np.maximum(np.where(np.isfinite(exc), exc, 0.0), _half_sq(model.target[None])[0])
    found = exc <= eps
    out.time_to_eps[found] = 0.0
    if nc and tc[0] <= 0.0:  # the checkpoint at t = 0
        out.excess[:, 0] = exc
        nxt[:] = 1
    status = np.zeros(nb, dtype=np.int8)
    status[~np.isfinite(exc) | ~np.all(np.isfinite(y), axis=1)] = DIVERGED
    status[(status == PENDING) & found & stop_at_eps] = CONVERGED

    if adaptive:
        weights = getattr(model, "error_scale", _error_scale)
        h = _initial_step(model, y, k[0], horizon, method.error_order, weights(y, y, rtol, atol, np.empty_like(y)))
        evals += 1
        rejected = np.zeros(nb, dtype=bool)
    else:
        n_total = round(horizon / step)
        if abs(n_total * step - horizon) > 1e-9 * step:
            n_total = int(np.ceil(horizon / step))

    y_new, ytmp, scratch = np.empty_like(y), np.empty_like(y), np.empty_like(y)
    while True:
        done = status != PENDING
        if done.any():
            _finish(out, idx[done], status[done], steps[done], evals[done], y[done], t[done])
            keep = ~done
            idx, y, t, exc, nxt, steps, evals, found, bound = (
                v[keep] for v in (idx, y, t, exc, nxt, steps, evals, found, bound)
            )
            k = [ki[keep] for ki in k]
            status = status[keep]
            y_new, ytmp, scratch = np.empty_like(y), np.empty_like(y), np.empty_like(y)
            if adaptive:
                h, rejected = h[keep], rejected[keep]
        if len(idx) == 0:
            break

        if adaptive:
            h = np.minimum(h, horizon - t)
            t_new = np.where(t + h >= horizon, horizon, t + h)
        else:
            t_new = np.where(steps + 1 >= n_total, horizon, (steps + 1) * step)
        hh = (t_new - t)[:, None]

        # stages: y + h Σ_j a_ij k_j, then y_new = y + h Σ_j b_j k_j
        for i in range(1, s):
            _combine(ytmp, y, hh, a[i, :i], k, scratch)
            model.rhs(ytmp, k[i])
        _combine(y_new, y, hh, b, k, scratch)
        with np.errstate(all="ignore"):
            exc_new = model.rhs(_project(model, y_new), k[s])
        evals += s

        if adaptive:
            err = _combine(ytmp, None, hh, method.e, k, scratch)
            with np.errstate(all="ignore"):
                weights(y, y_new, rtol, atol, scratch)
                enorm = _rms(np.divide(err, scratch, out=err))
            accept = enorm < 1.0
            bad = ~np.isfinite(enorm)
            with np.errstate(all="ignore", divide="ignore"):
                factor = np.where(enorm == 0, MAX_FACTOR, SAFETY * enorm ** (-1.0 / (method.error_order + 1)))
            grow = np.minimum(MAX_FACTOR, np.where(rejected, np.minimum(1.0, factor), factor))
            shrink = np.maximum(MIN_FACTOR, np.where(bad, MIN_FACTOR, factor))
            h_used = hh[:, 0]
            h = np.where(accept, h_used * grow, h_used * shrink)
            rejected = ~accept
            tiny = ~accept & (h < 10 * np.spacing(np.maximum(t, 1.0)))
            status[tiny] = np.where(bad[tiny], DIVERGED, FAILED)  # overflow vs. step collapse
            whole = bool(accept.all())
        else:
            accept = None
            whole = True

        acc = slice(None) if whole else np.flatnonzero(accept)  # a slice avoids copies
        if whole or accept.any():
            ya, yn = y[acc], y_new[acc]
            ta, tn = t[acc], t_new[acc]
            ka = _StepStages(k, acc)

            # first crossing of eps inside (t, t_new]
            t_stop = tn.copy()  # checkpoints are filled up to here (the crossing when stopping)
            cross = ~found[acc] & (exc_new[acc] <= eps)
            if cross.any():
                ci = np.flatnonzero(cross)
                acc = np.arange(len(idx))[acc]  # integer positions from here on
                theta = _locate(model, method, ya[ci], yn[ci], ka[ci], tn[ci] - ta[ci], eps)
                hit_t = ta[ci] + theta * (tn[ci] - ta[ci])
                gi = acc[ci]
                found[gi] = True
                out.time_to_eps[idx[gi]] = hit_t
                if stop_at_eps:
                    t_stop[ci] = hit_t
                    status[gi] = CONVERGED

            # checkpoints inside (t, t_stop]
            na = nxt[acc]
            while True:
                hit = (na < nc) & (tc[np.minimum(na, nc - 1)] <= t_stop)
                if not hit.any():
                    break
                hi = np.flatnonzero(hit)
                pos = np.arange(len(idx))[acc][hi]
                theta = (tc[na[hi]] - ta[hi]) / (tn[hi] - ta[hi])
                at_end = theta >= 1.0
                e_c = np.empty(len(hi))
                e_c[at_end] = exc_new[pos[at_end]]
                mid = ~at_end
                if mid.any():
                    sub = hi[mid]
                    yi = _state_at(model, method, ya[sub], yn[sub], ka[sub], tn[sub] - ta[sub], theta[mid])
                    with np.errstate(all="ignore"):
                        e_c[mid] = model.excess(yi)
                out.excess[idx[pos], na[hi]] = e_c
                na[hi] += 1
            nxt[acc] = na

            if stop_at_eps and cross.any():  # the trajectory ends exactly at the crossing
                theta = (t_stop[ci] - ta[ci]) / (tn[ci] - ta[ci])
                y_new[gi] = _state_at(model, method, ya[ci], yn[ci], ka[ci], tn[ci] - ta[ci], theta)
                t_new[gi] = t_stop[ci]

            if whole:  # swap buffers instead of copying
                y, y_new = y_new, y
                k[0], k[s] = k[s], k[0]
                t, exc = t_new, exc_new
            else:
                y[acc] = y_new[acc]
                k[0][acc] = k[s][acc]
                t[acc] = t_new[acc]
                exc[acc] = exc_new[acc]
            steps[acc] += 1

            # a non-finite state makes the excess loss non-finite: one check per trajectory suffices
            blown = ~np.isfinite(exc[acc]) | (exc[acc] > bound[acc])
            st = status[acc]
            st[blown & (st == PENDING)] = DIVERGED
            end = (st == PENDING) & (t[acc] >= horizon)
            st[end] = np.where(found[acc][end], CONVERGED, UNCONVERGED)
            status[acc] = st

        if adaptive:
            status[(status == PENDING) & (steps >= max_steps)] = FAILED
    return out


def _project(model, y):
    """``model.project(y)`` (in place) where the model has one; returns y."""
    project = getattr(model, "project", None)
    return y if project is None else project(y)


def _error_scale(y, y_new, rtol, atol, out):
    """The plain error weights rtol·max(|y|, |y_new|) + atol, into ``out``."""
    np.maximum(np.abs(y), np.abs(y_new), out=out)
    out *= rtol
    out += atol
    return out


def _combine(out, base, hh, coef, k, scratch):
    """out = base + h Σ_j coef_j k_j (base None: without it), skipping zero coefficients."""
    first = True
    for c, kj in zip(coef, k):
        if not c:
            continue
        if first:
            np.multiply(kj, hh * c, out=out)
            first = False
        else:
            np.multiply(kj, hh * c, out=scratch)
            out += scratch
    if base is not None:
        out += base
    return out


class _StepStages:
    """The stage derivatives of the accepted trajectories, gathered (B', nk, P) only when needed."""

    def __init__(self, k, acc):
        self.k, self.acc = k, acc

    def __getitem__(self, rows):
        return np.stack([ki[self.acc][rows] for ki in self.k])


def _finish(out: Result, gi, status, steps, evals, y, t):
    out.status[gi] = status
    out.steps[gi] = steps
    out.rhs_evals[gi] = evals
    out.y_final[gi] = y
    out.t_final[gi] = t


def _interpolate(method: Tableau, y0, y1, k, h, theta):
    """State at t + θh inside an accepted step (θ per trajectory, in [0, 1])."""
    th = np.asarray(theta, dtype=float)[:, None]
    hh = np.asarray(h, dtype=float)[:, None]
    if method.p is not None:
        powers = th[:, :, None] ** np.arange(1, method.p.shape[1] + 1)  # (n, 1, q)
        coef = method.p @ powers[:, 0, :, None]  # (n, nk, 1)
        return y0 + hh * np.sum(coef * k.transpose(1, 0, 2), axis=1)
    f0, f1 = k[0], k[-1]
    h00 = 2 * th**3 - 3 * th**2 + 1
    h10 = th**3 - 2 * th**2 + th
    h01 = -2 * th**3 + 3 * th**2
    h11 = th**3 - th**2
    return h00 * y0 + h10 * hh * f0 + h01 * y1 + h11 * hh * f1


def _state_at(model, method, y0, y1, k, h, theta):
    """The interpolated state at t + θh, projected by the model (see :func:`integrate`)."""
    with np.errstate(all="ignore"):
        return _project(model, _interpolate(method, y0, y1, k, h, theta))


def _locate(model, method, y0, y1, k, h, eps, iters: int = 60):
    """θ ∈ (0, 1] where the interpolated excess loss first equals eps (bracketed bisection on the
    interpolant, ~machine precision in θ)."""
    lo = np.zeros(len(y0))
    hi = np.ones(len(y0))
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        with np.errstate(all="ignore"):
            em = model.excess(_state_at(model, method, y0, y1, k, h, mid))
        below = em <= eps
        hi = np.where(below, mid, hi)
        lo = np.where(below, lo, mid)
        if np.all(hi - lo <= 4 * np.spacing(1.0)):
            break
    return hi


def _initial_step(model, y0, f0, horizon, order, scale):
    """Per-trajectory initial step (Hairer–Nørsett–Wanner II.4, as scipy's select_initial_step);
    ``scale``: the error weights at y0."""
    d0 = _rms(y0 / scale)
    d1 = _rms(f0 / scale)
    with np.errstate(all="ignore"):
        h0 = np.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / d1)
    h0 = np.minimum(h0, horizon)
    f1 = np.empty_like(y0)
    with np.errstate(all="ignore"):
        model.rhs(y0 + h0[:, None] * f0, f1)
        d2 = _rms((f1 - f0) / scale) / h0
        dmax = np.maximum(d1, d2)
        h1 = np.where(dmax <= 1e-15, np.maximum(1e-6, h0 * 1e-3), (0.01 / dmax) ** (1.0 / (order + 1)))
    h = np.minimum(np.minimum(100 * h0, h1), horizon)
    return np.where(np.isfinite(h) & (h > 0), h, 1e-6)
