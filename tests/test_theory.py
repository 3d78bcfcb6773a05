"""analysis.theory against independent solutions: solve_ivp on the polar form, the depth-2 explicit
form, and simulated limits of the layerwise flow."""

import numpy as np
import pytest
from reference import balanced_flow
from scipy.integrate import solve_ivp

from analysis import theory

ZETA = 2.0
TIGHT = {"method": "DOP853", "rtol": 1e-13, "atol": 1e-15}


def polar_rhs(n, zeta=ZETA):
    p = 2 - 2 / n
    return lambda t, s: [n * s[0] ** p * (zeta * np.cos(s[1]) - s[0]), -zeta * s[0] ** (p - 1) * np.sin(s[1])]


def polar_excess(s, zeta=ZETA):
    return 0.5 * ((s[0] - zeta * np.cos(s[1])) ** 2 + zeta**2 * np.sin(s[1]) ** 2)


def event_time(n, r0, theta0, eps):
    hit = lambda t, s: polar_excess(s) - eps
    hit.terminal = True
    sol = solve_ivp(polar_rhs(n), (0, 1e13), [r0, theta0], events=hit, **TIGHT)
    return sol.t_events[0][0]


GRID = [
    (n, r0, th, eps)
    for n in range(1, 9)
    for r0 in (0.05, 1.0, 20.0)
    for th in (0.0, 0.5, 2.0, 3.0, np.pi - 1e-2)
    for eps in (1e-4, 1e-8)
    if not (th > 3.1 and n >= 7 and r0 < 1)
]  # (those take > 1e12 flow time: beyond the ODE's reach)


def test_exact_time_to_eps_matches_event_location():
    worst = 0.0
    for n, r0, th, eps in GRID:
        exact = theory.exact_time_to_eps(n, r0, ZETA, th, eps)
        worst = max(worst, abs(exact / event_time(n, r0, th, eps) - 1))
    assert worst < 1e-8  # the issue asks 1e-6; measured 1.1e-10


def test_exact_time_to_eps_broadcasts_and_handles_limits():
    t = theory.exact_time_to_eps(np.array([1, 2, 3])[:, None], 1.0, ZETA, np.array([0.0, 1.0]), 1e-6)
    assert t.shape == (3, 2) and np.all(np.isfinite(t))
    assert theory.exact_time_to_eps(1, 3.0, ZETA, 0.7, 1e-6) == pytest.approx(
        0.5 * np.log(0.5 * ((3 - ZETA * np.cos(0.7)) ** 2 + (ZETA * np.sin(0.7)) ** 2) / 1e-6), rel=1e-14
    )
    # the float nearest π stands for π: the anti-aligned ray never gets within ε < ½ζ²; one ulp below,
    # the exact flow does leave it, after ~1e16 at N = 3 (T_ε grows without bound as θ0 → π)
    assert theory.exact_time_to_eps(3, 1.0, ZETA, np.pi, 1e-6) == np.inf
    assert 1e15 < theory.exact_time_to_eps(3, 1.0, ZETA, np.nextafter(np.pi, 0), 1e-6) < np.inf
    assert theory.exact_time_to_eps(3, 1.0, ZETA, np.pi, 0.6 * ZETA**2) < 1  # excess tends to ½ζ² there
    assert theory.exact_time_to_eps(3, ZETA, ZETA, 0.0, 1e-6) == 0.0  # starts at the optimum


def test_depth_two_explicit_form():
    # N = 2: x = artanh cos θ moves at speed ζ, r = cosh²x / (K + (2/ζ)∫cosh²) with ∫cosh² = (x + sinh x cosh x)/2
    r0, th0, eps = 0.7, 2.2, 1e-7
    x0 = np.arctanh(np.cos(th0))
    k = 1 / (r0 * np.sin(th0) ** 2)
    prim = lambda x: 0.5 * (x + np.sinh(x) * np.cosh(x))
    r = lambda x: np.cosh(x) ** 2 / (k + (2 / ZETA) * (prim(x) - prim(x0)))
    excess = lambda x: 0.5 * ((r(x) - ZETA * np.tanh(x)) ** 2 + (ZETA / np.cosh(x)) ** 2)
    ts = np.linspace(0, 6, 13)
    assert np.allclose(theory.exact_excess_loss(2, r0, ZETA, th0, ts), excess(x0 + ZETA * ts), rtol=1e-12, atol=0)
    from scipy.optimize import brentq

    x_eps = brentq(lambda x: excess(x) - eps, x0, 30, xtol=1e-15)
    assert theory.exact_time_to_eps(2, r0, ZETA, th0, eps) == pytest.approx((x_eps - x0) / ZETA, rel=1e-10)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("th", [0.0, 1.0, 2.9, np.pi])
def test_exact_excess_loss_matches_ode(n, th):
    ts = np.array([0.0, 0.05, 0.3, 1.0, 2.0])
    got = theory.exact_excess_loss(n, 3.0, ZETA, th, ts)
    sol = solve_ivp(polar_rhs(n), (0, 2), [3.0, th], t_eval=ts, **TIGHT)
    ref = polar_excess(sol.y)
    big = ref > 1e-9  # below, the ODE's own absolute error dominates
    assert np.max(np.abs(got[big] / ref[big] - 1)) < 1e-8


def test_predicted_limit_matches_simulated_limits():
    rng = np.random.default_rng(0)
    # dy = 1 generic start: the global minimizer
    z = rng.standard_normal((1, 5))
    w0 = 3 * rng.standard_normal((1, 5))
    assert theory.predicted_limit(w0, z, 3) == 0
    assert np.allclose(balanced_flow(w0, z, 3, 4, 60.0)[1], z, atol=1e-6)
    # dy = 1 anti-aligned start at depth 3: zero
    w0 = -1.5 * z
    assert theory.predicted_limit(w0, z, 3) == -1
    assert np.linalg.norm(balanced_flow(w0, z, 3, 4, 200.0)[1]) < 0.05 * np.linalg.norm(z)
    assert theory.predicted_limit(w0, z, 1) == 0  # depth 1 is linear regression
    # dy = 3, rank-1 start with p_1 = 0 (u0 ⟂ u_1, v0 ⟂ v_1) and p_2 ≠ 0 at depth 3: the saddle s_2 u_2 v_2ᵀ.
    # The saddle is strict (σ = s_2 > 0), so round-off along u_1 v_1ᵀ would grow; in Z's own basis the
    # u_1, v_1 components are exact zeros, which every product keeps exactly: the exact flow's limit.
    z3 = np.zeros((3, 5))
    z3[0, 0], z3[1, 1], z3[2, 2] = 3.0, 2.0, 1.0
    u0 = np.array([0.0, 1.0, 1.0]) / np.sqrt(2)
    v0 = np.array([0.0, 1.0, 0.5, 0.0, 0.3])
    w0 = 0.8 * np.outer(u0, v0 / np.linalg.norm(v0))
    p = theory.alignment(w0, z3)
    assert p[0] == 0 and abs(p[1]) > 0.1
    assert theory.predicted_limit(w0, z3, 3) == 2
    saddle = np.zeros((3, 5))
    saddle[1, 1] = 2.0
    assert np.allclose(balanced_flow(w0, z3, 3, 1, 60.0)[1], saddle, atol=1e-6)
    # rotated into a generic basis, p_1 ≈ 1e-16 and still counts as zero within the tolerance
    q3, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    q5, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    assert theory.predicted_limit(q3 @ w0 @ q5, q3 @ z3 @ q5, 3) == 2


def test_bounds_hold_on_the_exact_times():
    depth, r0, th = np.meshgrid([1, 2, 3, 5], [0.3, 1.0, 5.0, 20.0], [0.0, 0.4, 1.2], indexing="ij")
    t = theory.exact_time_to_eps(depth, r0, ZETA, th, 1e-6)
    cert = theory.certificate_time_bound(depth, r0, ZETA, th, 1e-6)
    assert np.all(np.isfinite(cert)) and np.all(cert >= t * (1 - 1e-9))
    # far phase: from r0 = 20 ≥ 2ζ along the ray, reaching 2ζ takes at most the far-phase bound
    for n in (2, 3, 5):
        hit = lambda t_, s: s[0] - 2 * ZETA
        hit.terminal = True
        sol = solve_ivp(polar_rhs(n), (0, 100), [20.0, 0.0], events=hit, **TIGHT)
        assert sol.t_events[0][0] <= theory.far_phase_bound(n, 20.0, ZETA)


def test_certificate_and_local_rate_on_the_exact_trajectory():
    # excess(t) ≤ excess(0)·exp(−2∫‖W‖^p) along the flow; near the optimum excess ∝ exp(−2ζ^p t)
    from sweep.kernel.exact import exact_path

    for n, r0, th in ((2, 0.5, 1.0), (3, 4.0, 2.0), (5, 1.0, 0.3)):
        t = np.linspace(0, 8, 4001)
        r, _, _, excess = exact_path(n, r0, ZETA, th, t)
        bound = theory.certificate_bound(excess[0], r, t, n)
        assert np.all(bound >= excess * (1 - 1e-6))
        late = (t > 5) & (excess > 1e-25)
        slope = np.polyfit(t[late], np.log(excess[late]), 1)[0]
        assert -slope == pytest.approx(theory.local_rate(n, ZETA), rel=1e-3)
    rng = np.random.default_rng(3)
    w0 = rng.standard_normal((1, 5))
    assert theory.bah_prediction(w0, rng.standard_normal((1, 5)), 3) == 0
