"""Exact solution of the balanced scalar-output flow (docs/theory.md §4, derived).

With x = artanh cos θ = −log tan(θ/2), x grows along the flow (dx/dt = ζ r^{p−1}); we use
s = x − x0 ≥ 0, so that the aligned and anti-aligned rays (θ0 = 0, π) are limits of the same
formulas rather than special cases. With α = cos²(θ/2), β = sin²(θ/2) at the current angle,

    1/r = R^{−N}/r0 + (N/ζ) J_N(s),   J_m(s) = ∫_0^s (α e^{−v} + β e^{v})^m dv
                                            = Σ_k C(m,k) α^k β^{m−k} (e^{(m−2k)s} − 1)/(m − 2k),
    R(s) = cos²(θ0/2) e^s + sin²(θ0/2) e^{−s},  tan(θ/2) = tan(θ0/2) e^{−s},
    t(s) = (1/ζ) ∫_0^s r^{(2−N)/N} dσ.

Every term of J is positive and everything is evaluated in log space, so nothing cancels or
overflows at any angle or horizon. The excess loss ½[(r − ζ cos θ)² + ζ² sin² θ] decreases in s:
T_ε = t(s_ε) with s_ε its root (brackets, Chandrupatla); a path inverts t(s) at the asked times.
Quadratures are tanh–sinh in log space. N = 1 is explicit; N = 2 has t = s/ζ.
Every function here is vectorized over cells. Used by ``model: exact`` and ``analysis.theory``.
"""

from __future__ import annotations

import numpy as np
from scipy.integrate import tanhsinh
from scipy.optimize.elementwise import find_root
from scipy.special import gammaln

LOG_RTOL = np.log(1e-12)  # tanh–sinh relative tolerance (as a log)
ROOT_TOL = {"xatol": 1e-300, "xrtol": 4 * np.finfo(float).eps, "fatol": 0.0, "frtol": 0.0}


def _cos_sin(theta0):
    """cos θ0, sin θ0 with the float nearest π standing for π itself (sin = 0: the anti-aligned ray)."""
    theta0 = np.asarray(theta0, dtype=float)
    return np.where(theta0 >= np.pi, -1.0, np.cos(theta0)), np.where(theta0 >= np.pi, 0.0, np.sin(theta0))


def _excess0(r0, zeta, theta0):
    cos0, sin0 = _cos_sin(theta0)
    return 0.5 * ((r0 - zeta * cos0) ** 2 + (zeta * sin0) ** 2)


def _log_phi(c, s):
    """log of (e^{cs} − 1)/c for s ≥ 0 (the value s at c = 0; −∞ at s = 0)."""
    size = np.abs(c)
    with np.errstate(divide="ignore", invalid="ignore"):
        tail = np.log(-np.expm1(-size * s)) - np.log(size) + np.maximum(c, 0.0) * s
        return np.where(c == 0, np.log(s), tail)


def _logsumexp(x):
    """log Σ exp(x) over the last axis (−∞ when every term is −∞)."""
    top = np.max(x, axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return np.log(np.sum(np.exp(x - top), axis=-1)) + top[..., 0]


def _log_j(m, s, log_alpha, log_beta):
    """log J_m(s) = log Σ_k C(m,k) α^k β^{m−k} (e^{(m−2k)s} − 1)/(m − 2k) — a sum of positive terms
    (m ≥ 0 an integer array; the terms are a trailing axis)."""
    m, s = np.asarray(m, dtype=float)[..., None], np.asarray(s, dtype=float)[..., None]
    # log 0 = −∞ as a huge finite number, so that 0 · log 0 = 0 (y⁰ = 1 even at y = 0)
    log_alpha, log_beta = (np.maximum(np.asarray(v, dtype=float)[..., None], -1e300) for v in (log_alpha, log_beta))
    k = np.arange(int(np.max(m)) + 1, dtype=float)
    terms = (gammaln(m + 1) - gammaln(k + 1) - gammaln(np.maximum(m - k, 0) + 1)
             + k * log_alpha + (m - k) * log_beta + _log_phi(m - 2 * k, s))
    return _logsumexp(np.where(k <= m, terms, -np.inf))


class _Flows:
    """The balanced scalar-output flows of a set of cells (arrays that broadcast together)."""

    def __init__(self, n, r0, zeta, theta0):
        self.n, self.r0, self.zeta = (np.asarray(v, dtype=float) for v in (n, r0, zeta))
        theta0 = np.asarray(theta0, dtype=float)
        half = 0.5 * theta0
        with np.errstate(divide="ignore"):  # float π (π − 1.2e-16) is π: cos²(θ0/2) = 0, the anti-aligned ray
            self.log_a = np.where(theta0 >= np.pi, -np.inf, 2 * np.log(np.cos(half)))
            self.log_b = 2 * np.log(np.sin(half))
        # ζ/r0 − cos θ0 without cancellation: (ζ − r0)/r0 + 2 sin²(θ0/2)
        self.gap0 = (self.zeta - self.r0) / self.r0 + 2 * np.sin(half) ** 2

    def args(self):
        return self.n, self.r0, self.zeta, self.log_a, self.log_b, self.gap0

    @staticmethod
    def log_u(s, n, r0, zeta, log_a, log_b, log_alpha, log_beta):
        """log 1/r at s, and log R(s)."""
        log_r_big = np.logaddexp(log_a + s, log_b - s)  # log R(s)
        lj = _log_j(n, s, log_alpha, log_beta)
        return np.logaddexp(-np.log(r0) - n * log_r_big, np.log(n) - np.log(zeta) + lj), log_r_big

    @staticmethod
    def angle(s, log_a, log_b):
        """log tan(θ/2), log cos²(θ/2), log sin²(θ/2) at s."""
        lt = 0.5 * (log_b - log_a) - s
        return lt, -np.logaddexp(0.0, 2 * lt), -np.logaddexp(0.0, -2 * lt)

    @classmethod
    def state(cls, s, n, r0, zeta, log_a, log_b, gap0):
        """(r, cos θ, sin θ, log excess) at s ≥ 0.

        r − ζ cos θ = r[sin²θ (1 − (N−1) cos θ J_{N−2}) − cos θ (ζ/r0 − cos θ0) R^{−N}] (integration
        by parts of J_N): no cancellation when θ is small, where this difference is all the excess.
        r R^{−N} = 1/(1/r0 + (N/ζ) I(s)), I(s) = ∫_0^s R^N from the binomial sum in θ0's weights: it stays
        O(1) on the anti-aligned ray, where this term is all of r − ζ cos θ → ζ."""
        lt, la, lb = cls.angle(s, log_a, log_b)
        lu, _ = cls.log_u(s, n, r0, zeta, log_a, log_b, la, lb)
        log_i = _log_j(n, s, log_b, log_a)  # log I(s): Σ_k C(N,k) a^k b^{N−k} φ(2k − N, s)
        lr = -lu
        cos = -np.tanh(lt)
        log_sin = np.log(2.0) + 0.5 * (la + lb)
        lj2 = _log_j(np.maximum(n - 2, 0), s, la, lb)
        with np.errstate(over="ignore", invalid="ignore"):
            a1 = np.exp(lr + 2 * log_sin)
            a2 = np.where(n >= 2, (n - 1) * cos * np.exp(lr + 2 * log_sin + lj2), 0.0)
            a3 = cos * gap0 * np.exp(-np.logaddexp(-np.log(r0), np.log(n) - np.log(zeta) + log_i))
        delta = a1 - a2 - a3
        with np.errstate(divide="ignore"):
            log_excess = np.log(0.5) + np.logaddexp(2 * np.log(np.abs(delta)), 2 * (np.log(zeta) + log_sin))
        return np.exp(lr), cos, np.exp(log_sin), log_excess

    @classmethod
    def log_dtds(cls, s, n, r0, zeta, log_a, log_b, gap0):
        """log dt/ds = log(r^{(2−N)/N} / ζ)."""
        _, la, lb = cls.angle(s, log_a, log_b)
        lu, _ = cls.log_u(s, n, r0, zeta, log_a, log_b, la, lb)
        return (n - 2) / n * lu - np.log(zeta)


# fixed panel ends for the quadrature of t(s): geometric, plus a few around the turn of the angle
# (s = log tan(θ0/2), where θ = π/2): inside a panel the integrand is smooth, so tanh–sinh converges fast
_GEOMETRIC = 2.0 ** np.arange(-4, 50)
_TURN = np.array([-4.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 4.0])


def _breaks(log_a, log_b):
    """Panel ends (cells, P), sorted, starting at 0."""
    turn = 0.5 * (log_b - log_a)[..., None] + _TURN
    turn = np.where(np.isfinite(turn), np.maximum(np.round(16 * turn) / 16, 0.0), 0.0)  # on the 1/16 grid:
    # an end never falls a few ulps from another (a sliver panel is where tanh–sinh fails)
    geo = np.broadcast_to(_GEOMETRIC, turn.shape[:-1] + _GEOMETRIC.shape)
    return np.sort(np.concatenate([np.zeros(turn.shape[:-1] + (1,)), turn, geo], axis=-1), axis=-1)


def _log_integral(lo, hi, cell):
    """log ∫_lo^hi dt/ds ds per element (lo ≤ hi; cells broadcast with lo, hi)."""
    res = tanhsinh(_Flows.log_dtds, lo, hi, args=cell, log=True, rtol=LOG_RTOL, maxlevel=12)
    return res.integral.real


def _log_time(s, *cell):
    """log t(s), t(s) = (1/ζ)∫_0^s r^{(2−N)/N} dσ, by tanh–sinh in log space on fixed panels (N = 2: s/ζ)."""
    args = np.broadcast_arrays(np.asarray(s, dtype=float), *cell)
    s, rest = args[0], args[1:]
    with np.errstate(divide="ignore"):
        out = np.log(s) - np.log(rest[2])  # N = 2 (and s = 0)
    quad = (rest[0] != 2) & (s > 0)
    if quad.any():
        sub = tuple(v[quad][:, None] for v in rest)
        ends = _breaks(sub[3][:, 0], sub[4][:, 0])
        top = s[quad][:, None]
        lo, hi = np.minimum(ends[:, :-1], top), np.minimum(ends[:, 1:], top)
        out[quad] = _logsumexp(_log_integral(lo, hi, sub))
    return out


def _time(s, *cell):
    return np.exp(_log_time(s, *cell))


def _s_at_excess(flows, eps):
    """s ≥ 0 where the excess loss equals eps (∞ when the flow never gets there); cells broadcast."""
    args = np.broadcast_arrays(np.asarray(eps, dtype=float), *flows.args())
    log_eps, rest = np.log(args[0]), args[1:]
    g = lambda s, le, *a: np.maximum(flows.state(s, *a)[3], le - 50.0) - le
    turn = 0.5 * (rest[4] - rest[3])  # s where θ = π/2: log tan(θ0/2) (+∞ on the anti-aligned ray)
    hi = np.where(np.isfinite(turn), np.maximum(turn, 0.0), 0.0) + 1.0
    out = np.full(log_eps.shape, np.inf)
    # the anti-aligned ray's excess falls only to its limit ½ζ² (W → 0): below that, never
    never = np.isneginf(rest[3]) & (log_eps <= np.log(0.5) + 2 * np.log(rest[2]))
    open_ = ~never & (g(hi, log_eps, *rest) > 0)
    for _ in range(60):  # elsewhere the excess falls at least like e^{−2s} once the angle has turned
        if not open_.any():
            break
        hi = np.where(open_, 2 * hi, hi)
        open_ &= g(hi, log_eps, *rest) > 0
    ok = ~never & ~open_
    if ok.any():
        res = find_root(g, (np.zeros(ok.sum()), hi[ok]), args=(log_eps[ok], *(v[ok] for v in rest)),
                        tolerances=ROOT_TOL)
        out[ok] = res.x
    return out


def _flat(*arrays):
    b = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in arrays))
    return b[0].shape, [v.ravel() for v in b]


def exact_time_to_eps(depth, r0, zeta, theta0, eps):
    """T_ε of the balanced scalar-output flow (docs/theory.md §4, derived); ∞ where the flow never
    gets within ε (the anti-aligned ray, N ≥ 2, ε < ½ζ²); 0 where it starts within ε; NaN for
    non-finite inputs. Broadcasts over all arguments."""
    shape, (n, r0, zeta, theta0, eps) = _flat(depth, r0, zeta, theta0, eps)
    out = np.full(n.shape, np.nan)
    ok = np.isfinite(r0) & np.isfinite(theta0) & np.isfinite(zeta) & (r0 > 0) & (zeta > 0) & (eps > 0)
    e0 = _excess0(r0, zeta, theta0)
    out[ok & (e0 <= eps)] = 0.0
    one = ok & (e0 > eps) & (n == 1)  # W(t) = Z + (W0 − Z) e^{−t}
    out[one] = 0.5 * np.log(e0[one] / eps[one])
    deep = ok & (e0 > eps) & (n >= 2)
    if deep.any():
        flows = _Flows(n[deep], r0[deep], zeta[deep], theta0[deep])
        s = _s_at_excess(flows, eps[deep])
        t = np.full(s.shape, np.inf)
        fin = np.isfinite(s)
        if fin.any():
            t[fin] = _time(s[fin], *(v[fin] for v in flows.args()))
        out[deep] = t
    out = out.reshape(shape)
    return out[()] if out.ndim == 0 else out


def _s_at_time(flows, t):
    """s with t(s) = t for cells (M,) at times t (M, T), t ≥ 0: log t at the panel ends of each cell
    (up to where t(s) must have passed max t: dt/ds ≥ max(r0, ζ)^{(2−N)/N}/ζ since r never exceeds
    max(r0, ζ)), then a bracketed root inside the panel that holds each t."""
    n, r0, zeta = flows.n, flows.r0, flows.zeta
    s = np.where((n == 2)[:, None], zeta[:, None] * t, 0.0)
    cells = np.flatnonzero((n != 2) & np.any(t > 0, axis=-1))
    if len(cells):
        sub = tuple(v[cells] for v in flows.args())
        tt = t[cells]
        slope = np.maximum(sub[1], sub[2]) ** ((2 - sub[0]) / sub[0]) / sub[2]
        reach = np.max(tt, axis=-1) / slope * (1 + 1e-9)
        ends = _breaks(sub[3], sub[4])
        ends = np.concatenate([np.minimum(ends, reach[:, None]), reach[:, None]], axis=-1)
        log_panels = _log_integral(ends[:, :-1], ends[:, 1:], tuple(v[:, None] for v in sub))
        with np.errstate(invalid="ignore"):  # logaddexp(−∞, −∞) = −∞ (empty panels)
            log_ends = np.logaddexp.accumulate(log_panels, axis=-1)
        log_ends = np.concatenate([np.full((len(ends), 1), -np.inf), log_ends], axis=-1)
        with np.errstate(divide="ignore"):
            log_t = np.log(tt)
        j = np.sum(log_ends[:, None, :] <= log_t[..., None], axis=-1) - 1  # panel holding t: (M', T)
        j = np.clip(j, 0, ends.shape[1] - 2)
        rows = np.arange(len(cells))[:, None]
        lo, hi, log_lo = ends[rows, j], ends[rows, j + 1], log_ends[rows, j]
        live = tt > 0
        cell_args = tuple(np.broadcast_to(v[:, None], tt.shape)[live] for v in sub)

        def g(x, lo, log_lo, log_t, *cell):
            with np.errstate(invalid="ignore"):
                return np.logaddexp(log_lo, _log_integral(lo, x, cell)) - log_t

        res = find_root(g, (lo[live], hi[live]), args=(lo[live], log_lo[live], log_t[live], *cell_args),
                        tolerances=ROOT_TOL)
        found = np.zeros(tt.shape)
        found[live] = np.where(np.isfinite(res.x), res.x, hi[live])
        s[cells] = found
    return s


def _curves(n, r0, zeta, theta0, t):
    """(r, cos θ, sin θ, excess) of cells (arrays of one shape C) at times t (shape C + (T,), or (T,))."""
    cells = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (n, r0, zeta, theta0)))
    shape = cells[0].shape
    n, r0, zeta, theta0 = (c.reshape(-1) for c in cells)
    t = np.broadcast_to(np.asarray(t, dtype=float), shape + np.shape(t)[-1:]).reshape(len(n), -1)
    r, cos, sin, excess = (np.full(t.shape, np.nan) for _ in range(4))
    one = n == 1  # W(t) = Z + (W0 − Z) e^{−t}, in the plane's coordinates
    if one.any():
        e = np.exp(-t[one])
        cos0, sin0 = _cos_sin(theta0)
        a = zeta[one, None] * (1 - e) + (r0 * cos0)[one, None] * e
        b = (r0 * sin0)[one, None] * e
        r[one] = np.hypot(a, b)
        with np.errstate(invalid="ignore", divide="ignore"):
            cos[one], sin[one] = np.where(r[one] > 0, a / r[one], 1.0), np.where(r[one] > 0, b / r[one], 0.0)
        excess[one] = _excess0(r0, zeta, theta0)[one, None] * e**2
    deep = ~one
    if deep.any():
        flows = _Flows(n[deep], r0[deep], zeta[deep], theta0[deep])
        s = _s_at_time(flows, t[deep])
        r[deep], cos[deep], sin[deep], log_excess = flows.state(s, *(v[:, None] for v in flows.args()))
        excess[deep] = np.exp(log_excess)
    return tuple(v.reshape(shape + t.shape[-1:]) for v in (r, cos, sin, excess))


def exact_path(n, r0, zeta, theta0, times):
    """(r, cos θ, sin θ, excess loss) at ``times``: for one cell, arrays shaped like ``times``; for
    arrays of cells, shaped cells + times. The flow stays in the plane of W0 and Z, so these give
    W(t) = r (cos θ ẑ + sin θ q̂)."""
    return _curves(n, r0, zeta, theta0, np.asarray(times, dtype=float))


def exact_excess_loss(depth, r0, zeta, theta0, t):
    """Excess loss of the balanced scalar-output flow at times ``t`` (docs/theory.md §4, derived).
    ``t`` may be an array (the last axis of the result); the other arguments broadcast."""
    return _curves(depth, r0, zeta, theta0, np.atleast_1d(np.asarray(t, dtype=float)))[3]
