"""Exact solution of the balanced scalar-output flow (docs/theory.md §4, derived).

With x = artanh cos θ = −log tan(θ/2), x grows along the flow (dx/dt = ζ r^{p−1}); we use
s = x − x0 ≥ 0, so that the aligned and anti-aligned rays (θ0 = 0, π) are limits of the same
formulas rather than special cases. With a = cos²(θ0/2), b = sin²(θ0/2) and α = cos²(θ/2),
β = sin²(θ/2) at the current angle,

    1/r = R^{−N}/r0 + (N/ζ) J_N(s),   R(s) = a e^s + b e^{−s},   tan(θ/2) = tan(θ0/2) e^{−s},
    J_m(s) = Σ_k C(m,k) α^k β^{m−k} (e^{(m−2k)s} − 1)/(m − 2k),   t(s) = (1/ζ) ∫_0^s r^{(2−N)/N} dσ.

**The sums.** Every term of J is positive. With ψ_j = (1 − e^{−js})/j ∈ (0, s], the terms with
m − 2k > 0 are R^{−m} C(m,k) a^k b^{m−k} ψ_{m−2k} and the others C(m,k) α^k β^{m−k} ψ_{2k−m}, so
J_m = R^{−m} A_m + B_m: A_m (θ0's binomial weights) and B_m (the current angle's) are sums of
positive terms, each at most s, formed in floating point (a term that underflows is below 1e-300
of J). Only R^{±N} can leave the float range: while it is within 1e±200,
1/r = R^{−N}(1/r0 + (N/ζ) A_N) + (N/ζ) B_N is formed as it stands, beyond that in logarithms (long
horizons; starts near π at large N), so nothing overflows at any angle or horizon. The ψ_j come
from one expm1 (1 − e^{−(j+2)s} = (1 − e^{−js}) + e^{−js}(1 − e^{−2s}), all positive); the weights
of B from their mode outward by exact ratios (binomial weights are unimodal; those below 1e-40 of
the mode are dropped). On the common path dt/ds costs two transcendentals (e^{−s}, a power).

**Time.** t(s) is integrated per cell by marching s forward over panels with NODES-point
Gauss–Legendre. A panel of length h from s_lo is kept when the Legendre tail of the interpolant p of
dt/ds at its nodes is below TOL·max(t(s_lo)/h, min dt/ds): that bounds the relative error of t
anywhere in the panel by TOL. Otherwise it is halved; after an easy panel the next one doubles.
Inside a panel t(s) = t(s_lo) + (s − s_lo) G(s), G = the mean of p over [s_lo, s], itself a
polynomial: relative accuracy down to s → s_lo, so tiny times are resolved. Times are inverted by
safeguarded Newton on that polynomial (its derivative is p). N = 2 has t = s/ζ; N = 1 is explicit.
One march per cell serves T_ε (a target in s) and the checkpoints (targets in t): the panels do not
depend on what is asked, so each number is the one it would be if asked alone (``exact_run``).

**T_ε.** The excess decreases in s, so T_ε = t(s_ε) with s_ε the root of log excess(s) = log ε:
bracketed by doubling, then safeguarded Newton with d excess/ds = −(r/ζ)[2 excess + (N−1)(r − ζ cos θ)²]
(dL/dt of §4 divided by ds/dt = ζ r^{p−1}). The anti-aligned ray (θ0 = float π) never gets within
ε ≤ ½ζ² (N ≥ 2): T_ε = ∞.

Compiled with numba, one cell at a time (a cell's numbers do not depend on the rest of the batch);
the public functions are vectorized over cells. Used by ``model: exact`` and ``analysis.theory``.
"""

from __future__ import annotations

import math

import numba
import numpy as np

NODES = 20  # Gauss–Legendre nodes per panel
TOL = 1e-13  # relative error of t(s) allowed from a panel's interpolant
GROW = 0.1  # a panel whose tail is below GROW·TOL·scale is followed by one twice as long
HMAX = 1.0  # a panel is at most max(HMAX, s_lo) long
ITERS = 200  # cap on bracketing and Newton steps (never reached in practice)
ULP = 2.0**-52

jit = numba.njit(cache=True, error_model="numpy")  # IEEE arithmetic (1/0 = inf); never fastmath


def _panel_matrices(n):
    """Gauss–Legendre nodes and weights on [−1, 1]; LEG maps values at the nodes to the Legendre
    coefficients of their interpolant p, MEAN to those of G(x) = ∫_{−1}^x p / (x + 1), a polynomial
    of the same degree (built in long double: (P_{k+1} − P_{k−1})/(x + 1) cancels near x = −1)."""
    x, w = np.polynomial.legendre.leggauss(n)
    xl, wl = x.astype(np.longdouble), w.astype(np.longdouble)
    p = np.zeros((n, n + 1), dtype=np.longdouble)  # P_k(x_j), k ≤ n
    p[:, 0], p[:, 1] = 1, xl
    for k in range(1, n):
        p[:, k + 1] = ((2 * k + 1) * xl * p[:, k] - k * p[:, k - 1]) / (k + 1)
    k = np.arange(n)
    leg = ((2 * k + 1) / np.longdouble(2))[:, None] * (wl[:, None] * p[:, :n]).T
    mean = np.ones((n, n), dtype=np.longdouble)  # mean of P_k over [−1, x_j] (k = 0: 1)
    for kk in range(1, n):
        mean[:, kk] = (p[:, kk + 1] - p[:, kk - 1]) / ((2 * kk + 1) * (xl + 1))
    return x, w, leg.astype(float), (leg @ mean @ leg).astype(float)


_X, _W, _LEG, _MEAN = _panel_matrices(NODES)


# ---------------------------------------------------------------------------------------------
# one cell: (N, r0, ζ, log a, log b, gap0, a, b, tan(θ0/2), binomial tables of N and N − 2, ψ)
# ---------------------------------------------------------------------------------------------

LINEAR_M = 500  # up to this m, the mode's binomial weight is formed as a product (C(m,k) < 1e150), beyond by logs
RANGE = 1e200  # R^N within [1/RANGE, RANGE]: 1/r is formed in floating point, else as a logarithm


@jit
def _log(x):
    """log x, −∞ at 0 (also without the compiler)."""
    return math.log(x) if x > 0 else -np.inf


@jit
def _logaddexp(x, y):
    top = max(x, y)
    if top == -np.inf:
        return top
    return top + math.log1p(math.exp(min(x, y) - top))


@jit
def _xlogy(k, log_y):
    """k log y with 0 · log 0 = 0 (y⁰ = 1 even at y = 0)."""
    return 0.0 if k == 0 else k * log_y


@jit
def _binomial(m, log_a, log_b):
    """Rows over k ≤ m: C(m, k) (log C when m > LINEAR_M); the ratios C(m,k+1)/C(m,k) and
    C(m,k−1)/C(m,k); θ0's weights C(m,k) a^k b^{m−k} of A (k < m/2, else 0); 1/k (0 at k = 0)."""
    tab = np.zeros((5, m + 1))
    c = 1.0  # C(m, k) by its product: a few ulps, exact below m = 57
    for k in range(m + 1):
        log_c = math.log(c) if m <= 1000 else math.lgamma(m + 1) - math.lgamma(k + 1) - math.lgamma(m - k + 1)
        tab[0, k] = c if m <= LINEAR_M else log_c
        tab[1, k] = (m - k) / (k + 1)
        tab[2, k] = k / (m - k + 1)
        if 2 * k < m:
            tab[3, k] = math.exp(log_c + _xlogy(k, log_a) + _xlogy(m - k, log_b))
        if k > 0:
            tab[4, k] = 1.0 / k
        c = c * (m - k) / (k + 1)
    return tab


@jit
def _cell(n, r0, zeta, log_a, log_b, gap0):
    tan0 = math.exp(0.5 * (log_b - log_a))
    return (
        n,
        r0,
        zeta,
        log_a,
        log_b,
        gap0,
        math.exp(log_a),
        math.exp(log_b),
        tan0,
        _binomial(n, log_a, log_b),
        _binomial(n - 2, log_a, log_b),
        np.empty(n + 1),
    )


@jit
def _angle(s, tan0):
    """e^{−s}, 1 − e^{−s}, α = cos²(θ/2), β = sin²(θ/2), cos θ, sin θ at s (tan(θ/2) = tan(θ0/2) e^{−s})."""
    if s < 0.7:
        d1 = -math.expm1(-s)
        q = 1.0 - d1
    else:
        q = math.exp(-s)
        d1 = 1.0 - q
    if tan0 == np.inf:  # the anti-aligned ray
        return q, d1, 0.0, 1.0, -1.0, 0.0
    tau = tan0 * q
    if tau <= 1.0:
        t2 = tau * tau
        alpha = 1.0 / (1.0 + t2)
        return q, d1, alpha, t2 * alpha, (1.0 - t2) * alpha, 2.0 * tau * alpha
    c2 = 1.0 / (tau * tau)
    beta = 1.0 / (1.0 + c2)
    return q, d1, c2 * beta, beta, (c2 - 1.0) * beta, 2.0 / tau * beta


@jit
def _fill_psi(m, s, d1, q, inverse, psi):
    """psi[j] = (1 − e^{−js})/j for j ≤ m, j ≡ m (mod 2), from d1 = 1 − e^{−s}, q = e^{−s} and
    inverse[j] = 1/j; psi[0] = s."""
    d2 = d1 * (1.0 + q)  # 1 − e^{−2s}
    psi[0] = s
    j, d, qj = 0, 0.0, 1.0
    if m % 2 == 1:
        j, d, qj = 1, d1, q
        psi[1] = d1
    while j + 2 <= m:
        d += qj * d2
        qj *= q * q
        j += 2
        psi[j] = d * inverse[j]


@jit
def _sums(m, alpha, beta, tab, psi):
    """(A_m, B_m), J_m = R^{−m} A_m + B_m: A from θ0's weights, B from the current angle's binomial
    weights C(m,k) α^k β^{m−k} (k ≥ m/2), formed at their mode and by exact ratios outward."""
    a_sum = 0.0
    for k in range((m + 1) // 2):
        a_sum += tab[3, k] * psi[m - 2 * k]
    k_lo = (m + 1) // 2
    mode = max(k_lo, min(m, int((m + 1) * alpha)))
    if m <= LINEAR_M:
        top = tab[0, mode] * alpha**mode * beta ** (m - mode)
    else:
        top = math.exp(tab[0, mode] + _xlogy(mode, _log(alpha)) + _xlogy(m - mode, _log(beta)))
    if top == 0.0:  # below 1e-300 of J
        return a_sum, 0.0
    b_sum = top * psi[2 * mode - m]
    cut = 1e-40 * top  # the weights only fall away from the mode, and ψ varies by far less than 1e20
    p, ratio = top, alpha / beta if beta > 0 else np.inf  # used only when β > 0 (else the mode is m)
    for k in range(mode, m):
        p *= tab[1, k] * ratio
        b_sum += p * psi[2 * k + 2 - m]
        if p < cut:
            break
    p, ratio = top, beta / alpha if alpha > 0 else np.inf  # used only when α > 0 (else top = 0)
    for k in range(mode, k_lo, -1):
        p *= tab[2, k] * ratio
        b_sum += p * psi[2 * k - 2 - m]
        if p < cut:
            break
    return a_sum, b_sum


@jit
def _point(cell, s, full):
    """(dt/ds, r, cos θ, sin θ, excess, d log excess/ds) at s ≥ 0; only dt/ds unless ``full``.

    1/r = u = R^{−N} H + T with H = 1/r0 + (N/ζ) A_N, T = (N/ζ) B_N, in floating point while R^N is
    in range, else in logs. The excess uses
    r − ζ cos θ = r[sin²θ (1 − (N−1) cos θ J_{N−2}) − cos θ (ζ/r0 − cos θ0) R^{−N}] (integration by
    parts of J_N, §4): no cancellation when θ is small, where this difference is all the excess;
    r R^{−N} = 1/(H + T R^N) stays O(1) on the anti-aligned ray."""
    n, r0, zeta, log_a, log_b, gap0, a, b, tan0, tab, tab2, psi = cell
    q, d1, alpha, beta, cos, sin = _angle(s, tan0)
    _fill_psi(n, s, d1, q, tab[4], psi)
    a_n, b_n = _sums(n, alpha, beta, tab, psi)
    head, tail = 1.0 / r0 + n / zeta * a_n, n / zeta * b_n
    big_r = a / q + b * q if s < 700 else np.inf
    rn = big_r**n
    u = head / rn + tail
    linear = 1 / RANGE < rn < RANGE and u < RANGE
    if linear:
        dtds = u ** ((n - 2) / n) / zeta
    else:
        log_rr = _logaddexp(log_a + s, log_b - s)
        lu = _logaddexp(math.log(head) - n * log_rr, _log(tail))
        dtds = math.exp((n - 2) / n * lu - math.log(zeta))
    if not full:
        return dtds, 0.0, 0.0, 0.0, 0.0, 0.0
    a2, b2 = _sums(n - 2, alpha, beta, tab2, psi)  # J_{N−2} = R^{2−N} A2 + B2
    if linear:
        r = 1.0 / u
        second = (n - 1) * cos * sin * sin * r * (a2 * big_r * big_r / rn + b2)
        third = cos * gap0 / (head + tail * rn)
    else:
        r = math.exp(-lu)
        log_j2 = _logaddexp(_log(a2) - (n - 2) * log_rr, _log(b2))
        second = (n - 1) * cos * math.exp(2 * _log(sin) + log_j2 - lu)
        third = cos * gap0 * math.exp(-_logaddexp(math.log(head), n * log_rr + _log(tail)))
    delta = r * sin * sin - second - third
    excess = 0.5 * (delta * delta + (zeta * sin) ** 2)
    slope = -(r / zeta) * (2.0 + (n - 1) * delta * delta / excess)  # d excess/ds = −(r/ζ)[2 excess + (N−1)δ²]
    return dtds, r, cos, sin, excess, slope


# ---------------------------------------------------------------------------------------------
# t(s) by panels; s_ε
# ---------------------------------------------------------------------------------------------

_UP = np.array([(2 * k + 1) / (k + 1) for k in range(NODES)])  # P_{k+1} = _UP[k] x P_k − _BACK[k] P_{k−1}
_BACK = np.array([k / (k + 1) for k in range(NODES)])


@jit
def _series(cg, cf, x, deg):
    """Σ cg_k P_k(x) and Σ cf_k P_k(x) over k < deg."""
    p0, p1 = 1.0, x
    g, f = cg[0] + cg[1] * x, cf[0] + cf[1] * x
    for k in range(1, deg - 1):
        p0, p1 = p1, _UP[k] * x * p1 - _BACK[k] * p0
        g += cg[k + 1] * p1
        f += cf[k + 1] * p1
    return g, f


@jit
def _invert(dt, lo, h, share, ends, cg, cf, deg):
    """y in [0, h] with y G(y) = dt, for the panel from lo (share = its whole increment of t, ends =
    p and dp/ds at its two ends): Newton from a second-order guess at the nearer end, inside a
    shrinking bracket. Newton's error after a step is about (p'/2p) step², p'/p of order 1/h: a step
    with step² ≤ 1e-17 (lo + y) h is the last."""
    f0, d0, f1, d1 = ends
    if 2 * dt < share:  # f0 y + d0 y²/2 = dt
        y = 2 * dt / (f0 + math.sqrt(max(f0 * f0 + 2 * d0 * dt, 0.0)))
    else:  # f1 z − d1 z²/2 = share − dt, y = h − z
        y = h - 2 * (share - dt) / (f1 + math.sqrt(max(f1 * f1 - 2 * d1 * (share - dt), 0.0)))
    y_lo, y_hi = 0.0, h
    if not 0 <= y <= h:
        y = h * dt / share
    for _ in range(ITERS):
        g, f = _series(cg, cf, 2 * y / h - 1, deg)
        gap = y * g - dt
        if gap == 0:
            return y
        if gap > 0:
            y_hi = y
        else:
            y_lo = y
        new = y - gap / f
        if not y_lo < new < y_hi:
            new = 0.5 * (y_lo + y_hi)
        elif (new - y) ** 2 <= 1e-17 * (lo + new) * h:
            return new
        if abs(new - y) <= 2 * ULP * (lo + new) or y_hi - y_lo <= 2 * ULP * (lo + y_hi):
            return new
        y = new
    return y


@jit
def _dot(row, f):
    total = 0.0
    for j in range(NODES):
        total += row[j] * f[j]
    return total


@jit
def _interpolant(f, h, cf, cg):
    """Legendre coefficients of p (values f at the nodes of a panel of length h) and of G into cf,
    cg; the number of terms above 1e-18 of the first; p and dp/ds at the panel's two ends."""
    deg, f0, d0, f1, d1 = 2, 0.0, 0.0, 0.0, 0.0
    for k in range(NODES):
        cf[k], cg[k] = _dot(_LEG[k], f), _dot(_MEAN[k], f)
        if abs(cf[k]) + abs(cg[k]) > 1e-18 * (abs(cf[0]) + abs(cg[0])):
            deg = max(deg, k + 1)
        sign = 1.0 if k % 2 == 0 else -1.0  # P_k(±1) = (±1)^k, P_k'(±1) = (±1)^{k+1} k(k+1)/2
        f0, f1 = f0 + sign * cf[k], f1 + cf[k]
        d0, d1 = d0 - sign * cf[k] * k * (k + 1) / h, d1 + cf[k] * k * (k + 1) / h
    return deg, (f0, d0, f1, d1)


@jit
def _march(cell, s_target, times, horizon, stop, out):
    """t(s_target) (NaN: none asked), and out[i] = s at min(times[i], t_end) for times sorted ascending,
    t_end = t(s_target) if ``stop`` and it is ≤ horizon, else horizon — one march over panels serves both.
    Returns ∞ for t(s_target) once the march has passed the horizon without reaching s_target, or when t
    leaves the float range. The panels do not depend on what is asked: every number is the same as
    when asked alone. (Before s_target's panel, a time ≤ the panel's end is ≤ t(s_target): clipping it
    at t_end cannot change it.)"""
    n, r0, zeta, tan0 = cell[0], cell[1], cell[2], cell[8]
    count, i = len(times), 0
    t_eps, pending, t_end = np.inf, s_target < np.inf, horizon  # NaN: not asked; ∞: never reached
    if pending and s_target <= 0:
        t_eps, pending = 0.0, False
        t_end = 0.0 if stop and 0.0 <= horizon else horizon
    while i < count and min(times[i], t_end) <= 0:
        out[i] = 0.0
        i += 1
    f, cf, cg = np.empty(NODES), np.empty(NODES), np.empty(NODES)
    cos0 = _angle(0.0, tan0)[4]
    h = min(HMAX, 1.0 / (abs((n - 2) * (r0 / zeta - cos0)) + 1.0))  # dt/ds changes on this scale at 0
    lo, t_lo = 0.0, 0.0
    while i < count or (pending and t_lo <= horizon):
        h = min(h, max(HMAX, lo))
        fmin = np.inf
        for j in range(NODES):
            f[j] = _point(cell, lo + 0.5 * h * (_X[j] + 1), False)[0]
            fmin = min(fmin, f[j])
        share = 0.5 * h * _dot(_W, f)
        if not np.isfinite(share):  # t beyond the float range
            break
        tail = abs(_dot(_LEG[NODES - 1], f)) + abs(_dot(_LEG[NODES - 2], f))
        scale = TOL * max(t_lo / h, fmin)
        if tail > scale and h > 64 * ULP * max(lo, 1e-280):
            h *= 0.5
            continue
        ready = False  # the interpolant is formed only for a panel that holds a target
        if pending and s_target <= lo + h:
            deg, ends = _interpolant(f, h, cf, cg)
            ready, pending = True, False
            y = s_target - lo
            t_eps = t_lo + y * _series(cg, cf, 2 * y / h - 1, deg)[0]
            if stop and t_eps <= horizon:
                t_end = t_eps
        while i < count and min(times[i], t_end) <= t_lo + share:
            if not ready:
                deg, ends = _interpolant(f, h, cf, cg)
                ready = True
            out[i] = lo + _invert(min(times[i], t_end) - t_lo, lo, h, share, ends, cg, cf, deg)
            i += 1
        lo, t_lo = lo + h, t_lo + share
        if tail <= GROW * scale:
            h *= 2
    out[i:] = np.nan
    return t_eps


@jit
def _gap(cell, s, log_eps):
    """log excess(s) − log ε (at least −50) and its derivative."""
    excess, slope = _point(cell, s, True)[4:]
    log_excess = _log(excess)
    if log_excess < log_eps - 50:
        return -50.0, 0.0
    return log_excess - log_eps, slope


@jit
def _s_at_excess(cell, log_eps):
    """s ≥ 0 where the excess equals ε (∞ when the flow never gets there)."""
    zeta, log_a, log_b = cell[2], cell[3], cell[4]
    if log_a == -np.inf and log_eps <= math.log(0.5 * zeta * zeta):  # the excess only falls to ½ζ²
        return np.inf
    turn = 0.5 * (log_b - log_a)  # s where θ = π/2
    lo, hi = 0.0, (turn if np.isfinite(turn) and turn > 0 else 0.0) + 1.0
    gap, slope = _gap(cell, hi, log_eps)
    for _ in range(ITERS):  # once the angle has turned, the excess falls at least like e^{−2s}
        if gap <= 0:
            break
        lo, hi = hi, 2 * hi
        gap, slope = _gap(cell, hi, log_eps)
    if gap > 0:
        return np.inf
    s = hi
    for _ in range(ITERS):
        new = s - gap / slope if slope < 0 else lo
        if not lo < new < hi:
            new = 0.5 * (lo + hi)
        if abs(new - s) <= 2 * ULP * new:
            return new
        s = new
        gap, slope = _gap(cell, s, log_eps)
        if gap == 0:
            return s
        if gap > 0:
            lo = s
        else:
            hi = s
        if hi - lo <= 2 * ULP * hi:
            return s
    return s


@jit
def _cells_kernel(n, r0, zeta, log_a, log_b, gap0, log_eps, times, horizon, stop, t_eps, r, cos, sin, excess):
    """Per cell c (N ≥ 2): t_eps[c] = T_ε (log_eps[c] = −∞: 0, the cell starts within ε; NaN: not asked),
    and (r, cos θ, sin θ, excess) at min(times[c, i], t_end) as in _march; times[c] need not be sorted."""
    s = np.empty(times.shape[1])
    for c in range(len(n)):
        cell = _cell(n[c], r0[c], zeta[c], log_a[c], log_b[c], gap0[c])
        s_eps = 0.0 if log_eps[c] == -np.inf else _s_at_excess(cell, log_eps[c]) if log_eps[c] < np.inf else np.nan
        t = times[c]
        order = np.arange(len(t))
        for i in range(1, len(t)):
            if t[i] < t[i - 1]:
                order = np.argsort(t)
                break
        if n[c] == 2:  # t = s/ζ
            t_eps[c] = s_eps / zeta[c]
            t_end = t_eps[c] if stop and t_eps[c] <= horizon else horizon
            for i in range(len(t)):
                s[i] = zeta[c] * max(min(t[order[i]], t_end), 0.0)
        else:
            t_eps[c] = _march(cell, s_eps, t[order], horizon, stop, s)
        for i in range(len(t)):
            k = order[i]
            r[c, k], cos[c, k], sin[c, k], excess[c, k] = _point(cell, s[i], True)[1:5]


# ---------------------------------------------------------------------------------------------
# the public functions: vectorized over cells
# ---------------------------------------------------------------------------------------------


def _cos_sin(theta0):
    """cos θ0, sin θ0 with the float nearest π standing for π itself (sin = 0: the anti-aligned ray)."""
    theta0 = np.asarray(theta0, dtype=float)
    return np.where(theta0 >= np.pi, -1.0, np.cos(theta0)), np.where(theta0 >= np.pi, 0.0, np.sin(theta0))


def initial_excess(r0, zeta, theta0):
    """½‖W0 − Z‖² = ½[(r0 − ζ cos θ0)² + ζ² sin² θ0] of scalar-output cells."""
    cos0, sin0 = _cos_sin(theta0)
    return 0.5 * ((r0 - zeta * cos0) ** 2 + (zeta * sin0) ** 2)


def _cells(n, r0, zeta, theta0):
    """The compiled code's arguments for cells (1-d arrays): N as int, r0, ζ, log a, log b, and
    ζ/r0 − cos θ0 without cancellation, (ζ − r0)/r0 + 2 sin²(θ0/2)."""
    half = 0.5 * theta0
    with np.errstate(divide="ignore"):  # float π (π − 1.2e-16) is π: cos²(θ0/2) = 0, the anti-aligned ray
        log_a = np.where(theta0 >= np.pi, -np.inf, 2 * np.log(np.cos(half)))
        log_b = 2 * np.log(np.sin(half))
    gap0 = (zeta - r0) / r0 + 2 * np.sin(half) ** 2
    return np.round(n).astype(np.int64), r0, zeta, log_a, log_b, gap0


def _flat(*arrays):
    b = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in arrays))
    return b[0].shape, [v.ravel() for v in b]


def _deep(n, r0, zeta, theta0):
    """The valid cells with N ≥ 2: those the march serves (N = 1 is explicit)."""
    return (n >= 2) & np.isfinite(r0) & np.isfinite(theta0) & np.isfinite(zeta) & (r0 > 0) & (zeta > 0)


def _kernel(n, r0, zeta, theta0, log_eps, times, horizon=np.inf, stop=False):
    """_cells_kernel on valid cells with N ≥ 2 (1-d arrays; times: cells × T): (T_ε, r, cos θ, sin θ, excess).
    Every call passes the same argument types: one compiled version serves all the public functions."""
    times = np.ascontiguousarray(times, dtype=float)
    t_eps, cols = np.empty(len(n)), [np.empty(times.shape) for _ in range(4)]
    _cells_kernel(*_cells(n, r0, zeta, theta0), log_eps, times, float(horizon), bool(stop), t_eps, *cols)
    return (t_eps, *cols)


def exact_time_to_eps(depth, r0, zeta, theta0, eps):
    """T_ε of the balanced scalar-output flow (docs/theory.md §4, derived); ∞ where the flow never
    gets within ε (the anti-aligned ray, N ≥ 2, ε < ½ζ²); 0 where it starts within ε; NaN for
    non-finite inputs. Broadcasts over all arguments."""
    shape, (n, r0, zeta, theta0, eps) = _flat(depth, r0, zeta, theta0, eps)
    out = np.full(n.shape, np.nan)
    ok = np.isfinite(r0) & np.isfinite(theta0) & np.isfinite(zeta) & (r0 > 0) & (zeta > 0) & (eps > 0)
    e0 = initial_excess(r0, zeta, theta0)
    out[ok & (e0 <= eps)] = 0.0
    one = ok & (e0 > eps) & (n == 1)  # W(t) = Z + (W0 − Z) e^{−t}
    out[one] = 0.5 * np.log(e0[one] / eps[one])
    deep = ok & (e0 > eps) & (n >= 2)
    if deep.any():
        no_times = np.empty((deep.sum(), 0))
        out[deep] = _kernel(n[deep], r0[deep], zeta[deep], theta0[deep], np.log(eps[deep]), no_times)[0]
    out = out.reshape(shape)
    return out[()] if out.ndim == 0 else out


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
        excess[one] = initial_excess(r0, zeta, theta0)[one, None] * e**2
    deep = _deep(n, r0, zeta, theta0)
    if deep.any():
        r[deep], cos[deep], sin[deep], excess[deep] = _kernel(
            n[deep], r0[deep], zeta[deep], theta0[deep], np.full(deep.sum(), np.nan), t[deep]
        )[1:]
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


def exact_run(depth, r0, zeta, theta0, eps, times, horizon, stop_at_eps):
    """What ``model: exact`` stores of cells (1-d arrays; eps a number; docs/theory.md §4):
    (T_ε, r, cos θ, sin θ, excess), the last four at min(times, t_end) and, in a last column, at t_end =
    T_ε if ``stop_at_eps`` and T_ε ≤ horizon, else the horizon (``times`` ascending, ≤ horizon). T_ε is
    exact_time_to_eps's where it is ≤ horizon, else only known to exceed it (∞). The same numbers, bit
    for bit, as exact_time_to_eps followed by exact_path at those times, but one march per cell serves
    both (with N ≥ 2)."""
    n, r0, zeta, theta0 = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (depth, r0, zeta, theta0)))
    cols = np.append(np.asarray(times, dtype=float), horizon)
    t_eps = np.full(len(n), np.nan)
    r, cos, sin, excess = (np.full((len(n), len(cols)), np.nan) for _ in range(4))
    deep = _deep(n, r0, zeta, theta0)
    if (~deep).any():  # N = 1 (explicit) and invalid cells
        some = ~deep
        t_eps[some] = exact_time_to_eps(n[some], r0[some], zeta[some], theta0[some], eps)
        t_end = np.where(stop_at_eps & (t_eps[some] <= horizon), t_eps[some], horizon)
        r[some], cos[some], sin[some], excess[some] = _curves(
            n[some], r0[some], zeta[some], theta0[some], np.minimum(cols, t_end[:, None])
        )
    if deep.any():  # log ε: −∞ for a start within ε (T_ε = 0), NaN for ε ≤ 0 (T_ε not asked)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_eps = np.where(initial_excess(r0[deep], zeta[deep], theta0[deep]) <= eps, -np.inf, np.log(eps))
        log_eps = np.where(eps > 0, log_eps, np.nan)
        times = np.broadcast_to(cols, (deep.sum(), len(cols)))
        t_eps[deep], r[deep], cos[deep], sin[deep], excess[deep] = _kernel(
            n[deep], r0[deep], zeta[deep], theta0[deep], log_eps, times, horizon, stop_at_eps
        )
    return t_eps, r, cos, sin, excess
