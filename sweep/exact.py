"""Exact solution of the balanced scalar-output flow (theory.md §4, derived), by quadrature.

With x = artanh cos θ, the closed form gives r(x) and t(x); the excess loss is monotone in x, so
T_ε = t(x_ε). θ0 = 0 and θ0 = π are the rays (solved in a variable where they are smooth), N = 1 is
explicit. Used by ``model: exact`` and, as the theory, by ``analysis.theory``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.integrate import quad
from scipy.optimize import brentq

# --------------------------------------------------------------------------------------------------
# §4 exact time to ε and excess loss, scalar output
# --------------------------------------------------------------------------------------------------


def _cosh_integral(n: int, y):
    """J_n(y) = ∫_0^y cosh^n (recurrence J_n = cosh^{n−1} sinh / n + (n−1)/n J_{n−2})."""
    y = np.asarray(y, dtype=float)
    c, s = np.cosh(y), np.sinh(y)
    j_prev, j = y, s  # J_0, J_1
    if n == 0:
        return j_prev
    for k in range(2, n + 1):
        j_prev, j = j, c ** (k - 1) * s / k + (k - 1) / k * j_prev
    return j


class _Polar:
    """The closed form of §4 for one (N, r0, ζ, θ0) with 0 < θ0 < π, in the variable x = artanh cos θ."""

    def __init__(self, n, r0, zeta, theta0):
        self.n, self.zeta = n, zeta
        self.x0 = np.arctanh(np.cos(theta0))
        self.k = 1.0 / (r0 * np.sin(theta0) ** n)
        self.j0 = float(_cosh_integral(n, self.x0))
        self.x0, self.k = float(self.x0), float(self.k)

    def r(self, x):
        return np.cosh(x) ** self.n / (self.k + self.n / self.zeta * (_cosh_integral(self.n, x) - self.j0))

    def excess(self, x):
        return 0.5 * ((self.r(x) - self.zeta * np.tanh(x)) ** 2 + (self.zeta / np.cosh(x)) ** 2)

    def dtdx(self, x: float) -> float:
        """dt/dx = r^{(2−N)/N} / ζ at a scalar x, in plain floats (quad calls it ~10⁶ times)."""
        n, c, s = self.n, math.cosh(x), math.sinh(x)
        j_prev, j = x, s  # J_0, J_1 of the recurrence in _cosh_integral
        for k in range(2, n + 1):
            j_prev, j = j, c ** (k - 1) * s / k + (k - 1) / k * j_prev
        r = c**n / (self.k + n / self.zeta * (j - self.j0))
        return r ** ((2.0 - n) / n) / self.zeta

    def t(self, x, x_from=None, t_from=0.0):
        a = self.x0 if x_from is None else x_from
        if self.n == 2:
            return (x - self.x0) / self.zeta
        if abs(x - a) <= 1e-9 * max(1.0, abs(a)):  # a Newton correction: the midpoint rule is exact enough
            return t_from + (x - a) * self.dtdx(0.5 * (a + x))
        val, _ = quad(self.dtdx, a, x, epsabs=0.0, epsrel=1e-13, limit=1000)
        return t_from + val

    def x_at_excess(self, eps):
        """x where the (monotone) excess loss equals eps."""
        lo = self.x0
        hi = max(self.x0, 0.0) + 1.0
        while self.excess(hi) > eps:
            hi = hi + 2.0 * (hi - lo)
            if hi > 700 / max(self.n, 1):
                return np.inf
        return brentq(lambda x: np.log(self.excess(x)) - np.log(eps), lo, hi, xtol=1e-15, rtol=1e-15, maxiter=500)


def _excess0(r0, zeta, theta0):
    return 0.5 * ((r0 - zeta * np.cos(theta0)) ** 2 + (zeta * np.sin(theta0)) ** 2)


def _ray_coordinate(r, c):
    """The smooth variable of a ray: w = ln|r − c| (c > 0, r → c) or w = ln r (c < 0, r → 0)."""
    return np.log(abs(r - c)) if c > 0 else np.log(r)


def _ray_time(n, r0, c, w1):
    """Time for dr/dt = N r^p (c − r) to go from r0 to the point with coordinate w1 on a ray:
    c = ζ (θ0 = 0, r → ζ) or c = −ζ (θ0 = π, r → 0); integrated in w, where it is smooth."""
    p = 2.0 - 2.0 / n
    if c > 0:
        sign = 1.0 if r0 > c else -1.0
        f = lambda w: 1.0 / (n * (c + sign * np.exp(w)) ** p)
    else:
        f = lambda v: 1.0 / (n * np.exp((p - 1) * v) * (-c + np.exp(v)))
    val, _ = quad(f, w1, _ray_coordinate(r0, c), epsabs=0.0, epsrel=1e-13, limit=1000)
    return val


def _ray_path(n, r0, c, times):
    """(r, excess) along a ray at sorted times (θ0 = 0: c = ζ, r → ζ; θ0 = π: c = −ζ, r → 0)."""
    r, excess = np.empty(len(times)), np.empty(len(times))
    start = _ray_coordinate(r0, c) if r0 != c else -np.inf
    for i, t in enumerate(times):
        if t <= 0 or r0 == c:
            r[i], excess[i] = r0, 0.5 * (r0 - c) ** 2
            continue
        g = lambda w, t=t: _ray_time(n, r0, c, w) - t
        lo = start - 1.0
        while g(lo) < 0 and lo > -700:
            lo = start - 2 * (start - lo)
        w = brentq(g, lo, start, xtol=1e-14, rtol=1e-15, maxiter=500) if g(lo) >= 0 else lo
        if c > 0:
            r[i], excess[i] = c + np.sign(r0 - c) * np.exp(w), 0.5 * np.exp(2 * w)
        else:
            r[i], excess[i] = np.exp(w), 0.5 * (np.exp(w) - c) ** 2
    return r, excess


def _tte_one(n, r0, zeta, theta0, eps):
    e0 = _excess0(r0, zeta, theta0)
    if e0 <= eps:
        return 0.0
    if n == 1:  # W(t) = Z + (W0 − Z) e^{−t}
        return 0.5 * np.log(e0 / eps)
    if theta0 >= np.pi:
        return np.inf if 0.5 * zeta**2 > eps else 0.0  # anti-aligned: W → 0, excess → ½ζ² (N ≥ 2)
    if theta0 == 0.0:
        return _ray_time(n, r0, zeta, 0.5 * np.log(2 * eps))  # |r − ζ| = √(2ε)
    pol = _Polar(n, r0, zeta, theta0)
    x1 = pol.x_at_excess(eps)
    return np.inf if not np.isfinite(x1) else pol.t(x1)


def exact_time_to_eps(depth, r0, zeta, theta0, eps):
    """T_ε of the balanced scalar-output flow (theory.md §4, derived), by quadrature; ∞ where the
    flow never gets within ε (anti-aligned starts). Broadcasts over all arguments."""
    args = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (depth, r0, zeta, theta0, eps)))
    out = np.empty(args[0].shape)
    for i in np.ndindex(out.shape):
        n, a, z, th, e = (float(v[i]) for v in args)
        out[i] = _tte_one(int(n), a, z, th, e) if np.isfinite(a) and np.isfinite(th) else np.nan
    return out[()] if out.ndim == 0 else out


def _advance(pol, x_cur, t_cur, t):
    """x with t(x) = t > t_cur = t(x_cur): Newton steps on t(x) (dt/dx is known in closed form, t
    from short quadratures), safeguarded by a bracket and bisection when a step leaves it."""
    lo, t_lo = x_cur, t_cur
    hi = None
    x, tx = x_cur, t_cur
    reach = 0.5  # before a bracket exists, a step goes at most this far (then doubles)
    for _ in range(200):
        cand = x + (t - tx) / pol.dtdx(x)
        if hi is None:
            cand = min(cand, x + reach)
            reach *= 2
        elif not (lo < cand < hi):
            cand = 0.5 * (lo + hi)
        t_cand = pol.t(cand, x, tx) if cand > x else pol.t(cand, lo, t_lo)
        if t_cand < t:
            lo, t_lo = cand, t_cand
        else:
            hi = cand
        if abs(t_cand - t) <= 4e-16 * t or (hi is not None and hi - lo <= 4e-16 * max(1.0, abs(lo))):
            return cand
        x, tx = cand, t_cand
    return x


def exact_path(n, r0, zeta, theta0, times):
    """(r, cos θ, sin θ, excess loss) of one balanced scalar-output start at sorted ``times``: the
    flow stays in the plane of W0 and Z, so these give W(t) = r (cos θ ẑ + sin θ q̂)."""
    times = np.asarray(times, dtype=float)
    n = int(n)
    if n == 1:  # W(t) = Z + (W0 − Z) e^{−t}, in the plane's coordinates
        e = np.exp(-times)
        a, b = zeta * (1 - e) + r0 * np.cos(theta0) * e, r0 * np.sin(theta0) * e
        r = np.hypot(a, b)
        return r, a / r, b / r, _excess0(r0, zeta, theta0) * e**2
    if theta0 >= np.pi or theta0 == 0.0:
        c = -zeta if theta0 >= np.pi else zeta
        r, excess = _ray_path(n, r0, c, times)
        return r, np.full(len(times), np.sign(c)), np.zeros(len(times)), excess
    pol = _Polar(n, r0, zeta, theta0)
    xs = np.empty(len(times))
    x_cur, t_cur = pol.x0, 0.0
    for i, t in enumerate(times):
        if t > 0 and n == 2:
            x_cur = pol.x0 + zeta * t
        elif t > t_cur:
            x_cur, t_cur = _advance(pol, x_cur, t_cur, t), t
        xs[i] = x_cur
    return pol.r(xs), np.tanh(xs), 1.0 / np.cosh(xs), pol.excess(xs)


def exact_excess_loss(depth, r0, zeta, theta0, t):
    """Excess loss of the balanced scalar-output flow at times ``t`` (theory.md §4, derived).
    ``t`` may be an array (the last axis of the result); the other arguments broadcast."""
    t = np.atleast_1d(np.asarray(t, dtype=float))
    args = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (depth, r0, zeta, theta0)))
    out = np.empty(args[0].shape + t.shape)
    order = np.argsort(t)
    for i in np.ndindex(args[0].shape):
        n, a, z, th = (float(v[i]) for v in args)
        curve = np.empty(len(t))
        curve[order] = exact_path(int(n), a, z, th, t[order])[3]
        out[i] = curve
    return out


