"""The flow kernel against solutions computed elsewhere: closed forms, scipy's solve_ivp on the
polar and rank-1 forms, and the conservation law of the layerwise flow."""

from functools import cache

import numpy as np
import pytest
from scipy.integrate import solve_ivp

from sweep import kernel
from sweep.init import balanced_layers, end_to_end_start, gaussian_layers, layer_dims, rank_of
from sweep.problem import synthetic
from sweep.schema import Status

TIGHT = {"method": "DOP853", "rtol": 1e-13, "atol": 1e-16}


def paper_problem(dy=1):
    p = synthetic(50, 5, dy, seed=0)
    return p.target


def w0_for(target, init_norm, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(target.shape)
    return init_norm * np.linalg.norm(target, 2) * w / np.linalg.norm(w, 2)


def layerwise_start(w0, depth, width, seed=0):
    dy, dx = w0.shape
    layers = balanced_layers(w0, problem_seed=0, seed=seed, depth=depth, width=width)
    model = kernel.Layerwise(layer_dims(dx, dy, depth, width), np.zeros_like(w0))
    return model.pack([w[None] for w in layers])


def run(model, y0, method=kernel.DOPRI5, tc=None, horizon=1.0, eps=1e-6, **kw):
    if method.adaptive:
        kw.setdefault("rtol", 1e-10)
        kw.setdefault("atol", 1e-14)
    tc = np.linspace(0, horizon, 11) if tc is None else tc
    return kernel.integrate(model, np.atleast_2d(y0), method, horizon=horizon, checkpoints=tc, eps=eps, **kw)


def polar_form(target, w0, depth):
    """Scalar-output polar form (docs/theory.md §2): (right-hand side, [r0, θ0], ζ)."""
    z, w = target.ravel(), w0.ravel()
    zeta, r0 = np.linalg.norm(z), np.linalg.norm(w)
    th0 = np.arccos(np.clip(w @ z / (r0 * zeta), -1, 1))
    p = 2 - 2 / depth

    def f(t, s):
        r, th = s
        return [depth * r**p * (zeta * np.cos(th) - r), -zeta * r ** (p - 1) * np.sin(th)]

    return f, [r0, th0], zeta


def polar_excess(target, w0, depth, times):
    """The excess loss of the polar form at ``times``, integrated by scipy."""
    f, start, zeta = polar_form(target, w0, depth)
    sol = solve_ivp(f, (0, times[-1]), start, t_eval=times, **TIGHT)
    r, th = sol.y
    return 0.5 * ((r - zeta * np.cos(th)) ** 2 + zeta**2 * np.sin(th) ** 2)


def polar_time_to_eps(target, w0, depth, eps, horizon=1e7):
    """Scalar-output T_ε: an event on the polar form's excess ½[(r − ζcos θ)² + ζ² sin² θ] = eps."""
    f, start, zeta = polar_form(target, w0, depth)

    def hit(t, s):
        r, th = s
        return 0.5 * ((r - zeta * np.cos(th)) ** 2 + zeta**2 * np.sin(th) ** 2) - eps

    hit.terminal = True
    sol = solve_ivp(f, (0, horizon), start, events=hit, **{**TIGHT, "atol": 1e-20})  # r falls to ~1e-7
    return sol.t_events[0][0]


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 6])
def test_layerwise_equals_induced_equals_polar_form(depth):
    z = paper_problem()
    w0 = w0_for(z, 3.0, seed=depth)
    tc = np.linspace(0, 0.5, 11)
    lw = run(kernel.Layerwise(layer_dims(5, 1, depth, 4), z), layerwise_start(w0, depth, 4), tc=tc, horizon=0.5)
    ind = run(kernel.Induced(depth, z), w0.ravel(), tc=tc, horizon=0.5)
    ref = polar_excess(z, w0, depth, tc)
    assert np.max(np.abs(lw.excess[0] / ref - 1)) < 1e-8
    assert np.max(np.abs(ind.excess[0] / ref - 1)) < 1e-8


def test_depth_one_matches_closed_form_for_every_method():
    # N = 1: W(t) = Z + (W0 − Z) e^{−t}, so excess(t) = excess(0) e^{−2t}; both models
    z = paper_problem()
    w0 = np.stack([w0_for(z, a, seed=i) for i, a in enumerate((0.5, 2, 10))])
    tc = np.array([0, 0.01, 0.1, 0.5, 1.0])
    exact = 0.5 * np.sum((w0 - z) ** 2, axis=(1, 2))[:, None] * np.exp(-2 * tc)
    for model in (kernel.Induced(1, z), kernel.Layerwise((5, 1), z)):
        for method, kw, tol in (
            (kernel.EULER, {"step": 1e-5}, 2e-5),
            (kernel.RK4, {"step": 1e-3}, 1e-11),
            (kernel.DOPRI5, {}, 1e-8),
        ):
            r = run(model, w0.reshape(3, -1), method, tc=tc, horizon=1.0, **kw)
            assert np.max(np.abs(r.excess / exact - 1)) < tol, (type(model).__name__, method.name)


def test_fixed_step_orders_of_accuracy():
    # halving the step divides the error by 2 (euler) and 16 (rk4)
    z = paper_problem()
    w0 = w0_for(z, 2.0).ravel()
    ref = polar_excess(z, w0.reshape(1, -1), 3, np.array([0.0, 0.2]))[-1]
    tc = np.array([0.0, 0.2])
    for method, h, order in ((kernel.EULER, 1e-3, 1), (kernel.RK4, 2.5e-3, 4)):  # asymptotic regime
        e1 = abs(run(kernel.Induced(3, z), w0, method, tc=tc, horizon=0.2, step=h).excess[0, -1] - ref)
        e2 = abs(run(kernel.Induced(3, z), w0, method, tc=tc, horizon=0.2, step=h / 2).excess[0, -1] - ref)
        assert 0.8 * 2**order < e1 / e2 < 1.25 * 2**order, method.name


def test_depth_two_aligned_start_is_logistic():
    # docs/theory.md §7: on the ray of Z, s(t) = σ / (1 + (σ/s0 − 1) e^{−2σt}) for N = 2
    z = paper_problem()
    sigma = np.linalg.norm(z)
    s0 = 0.05 * sigma
    w0 = s0 * z / sigma
    tc = np.linspace(0, 2, 9)
    s = sigma / (1 + (sigma / s0 - 1) * np.exp(-2 * sigma * tc))
    exact = 0.5 * (sigma - s) ** 2
    for model, y0 in ((kernel.Induced(2, z), w0.ravel()), (kernel.Layerwise((5, 3, 1), z), layerwise_start(w0, 2, 3))):
        r = run(model, y0, tc=tc, horizon=2.0)
        mask = exact > 1e-4 * exact[0]  # below, atol (not the method) sets the relative error
        assert np.max(np.abs(r.excess[0][mask] / exact[mask] - 1)) < 1e-8


def test_vector_output_dy3_layerwise_balanced_equals_induced():
    z = paper_problem(dy=3)
    w0 = w0_for(z, 2.0, seed=3)
    tc = np.linspace(0, 1, 6)
    for depth, width in ((2, 3), (3, 4), (4, 5)):
        lw = run(kernel.Layerwise(layer_dims(5, 3, depth, width), z), layerwise_start(w0, depth, width), tc=tc)
        ind = run(kernel.Induced(depth, z), w0.ravel(), tc=tc)
        assert np.max(np.abs(lw.excess / ind.excess - 1)) < 1e-8
        w_lw = kernel.Layerwise(layer_dims(5, 3, depth, width), z).product(lw.y_final)
        assert np.max(np.abs(w_lw - ind.y_final.reshape(1, 3, 5))) < 1e-8 * np.linalg.norm(z)


def test_width_one_layer_follows_the_rank_one_form():
    # docs/theory.md §2: W = σ u vᵀ with dσ/dt = −Nσ^p(σ − uᵀZv),
    # du/dt = σ^{p−1}(I − uuᵀ)Zv, dv/dt = σ^{p−1}(I − vvᵀ)Zᵀu
    z = paper_problem(dy=3)
    rng = np.random.default_rng(7)
    u0, v0 = rng.standard_normal(3), rng.standard_normal(5)
    u0, v0 = u0 / np.linalg.norm(u0), v0 / np.linalg.norm(v0)
    depth, sigma0 = 3, 1.5
    w0 = sigma0 * np.outer(u0, v0)
    p = 2 - 2 / depth

    def f(t, s):
        sig, u, v = s[0], s[1:4], s[4:]
        zv, zu = z @ v, z.T @ u
        return np.concatenate(
            [
                [-depth * sig**p * (sig - u @ zv)],
                sig ** (p - 1) * (zv - (u @ zv) * u),
                sig ** (p - 1) * (zu - (v @ zu) * v),
            ]
        )

    tc = np.linspace(0, 1.0, 6)
    sol = solve_ivp(f, (0, 1.0), np.concatenate([[sigma0], u0, v0]), t_eval=tc, **TIGHT)
    w_ref = [s[0] * np.outer(s[1:4], s[4:]) for s in sol.y.T]
    tail = kernel.tail_loss(z, 1)
    ref = np.array([0.5 * np.sum((z - w) ** 2) - tail for w in w_ref])
    model = kernel.Layerwise(layer_dims(5, 3, depth, 1), z, tail)
    r = run(model, layerwise_start(w0, depth, 1), tc=tc)
    assert np.max(np.abs(r.excess[0] / ref - 1)) < 1e-8
    assert np.max(np.abs(model.product(r.y_final)[0] - w_ref[-1])) < 1e-8


def test_conservation_law_for_unbalanced_gaussian_start():
    # W_{j+1}ᵀW_{j+1} − W_jW_jᵀ is invariant: its drift measures the integration error
    z = paper_problem()
    dims = layer_dims(5, 1, 4, 6)
    layers = gaussian_layers(z, problem_seed=0, seed=1, depth=4, width=6, init_norm=1.0)
    model = kernel.Layerwise(dims, z)
    y0 = model.pack([w[None] for w in layers])
    r = run(model, y0, horizon=5.0)
    d0, d1 = model.imbalance(y0), model.imbalance(r.y_final)
    size = max(np.linalg.norm(d) for d in d0)
    drift = max(np.linalg.norm(b - a) for a, b in zip(d0, d1))
    assert size > 0.1  # genuinely unbalanced
    assert drift < 1e-8 * size


def test_euler_paper_step_matches_tight_solution():
    # the paper's discretization (h = 1e-6, 1e5 steps to t = 0.1) is within 1e-4 of the flow
    z = paper_problem()
    w0 = w0_for(z, 10.0, seed=11)
    tc = np.array([0.0, 0.1])
    for depth in (1, 3, 5):
        ref = polar_excess(z, w0, depth, tc)
        r = run(
            kernel.Layerwise(layer_dims(5, 1, depth, 5), z),
            layerwise_start(w0, depth, 5),
            kernel.EULER,
            tc=tc,
            horizon=0.1,
            step=1e-6,
        )
        assert r.steps[0] == 100_000
        assert np.max(np.abs(r.excess[0] / ref - 1)) < 1e-4, depth


def test_time_to_eps_matches_event_location():
    z = paper_problem()
    for depth, init_norm, eps in ((1, 2.0, 1e-6), (2, 0.3, 1e-4), (3, 5.0, 1e-6), (5, 10.0, 1e-8)):
        w0 = w0_for(z, init_norm, seed=depth)
        expected = polar_time_to_eps(z, w0, depth, eps, horizon=50)
        r = run(kernel.Induced(depth, z), w0.ravel(), horizon=50.0, eps=eps)
        assert r.status[0] == Status.CONVERGED
        assert abs(r.time_to_eps[0] / expected - 1) < 1e-6, (depth, r.time_to_eps[0], expected)


def test_stop_at_eps_ends_at_the_crossing():
    z = paper_problem()
    w0 = w0_for(z, 2.0)
    tc = np.linspace(0, 20, 41)
    go = run(kernel.Induced(2, z), w0.ravel(), tc=tc, horizon=20.0, eps=1e-4)
    stop = run(kernel.Induced(2, z), w0.ravel(), tc=tc, horizon=20.0, eps=1e-4, stop_at_eps=True)
    assert stop.status[0] == go.status[0] == Status.CONVERGED
    assert stop.time_to_eps[0] == pytest.approx(go.time_to_eps[0], rel=1e-12)
    after = tc > stop.time_to_eps[0]
    assert np.all(np.isnan(stop.excess[0, after])) and np.all(np.isfinite(stop.excess[0, ~after]))
    assert stop.t_final[0] == stop.time_to_eps[0]
    final_excess = 0.5 * np.sum((stop.y_final[0] - z.ravel()) ** 2)
    assert final_excess == pytest.approx(1e-4, rel=1e-6)
    assert stop.steps[0] < go.steps[0]


def test_blow_up_is_a_result_and_leaves_the_batch_alone():
    # Euler is unstable for h·N·‖W‖^p ≳ 2: the far start diverges, the near one must not notice
    z = paper_problem()
    near, far = w0_for(z, 0.5, seed=1).ravel(), w0_for(z, 100.0, seed=2).ravel()
    model = kernel.Induced(3, z)
    both = run(model, np.stack([near, far]), kernel.EULER, horizon=1.0, step=1e-3)
    alone = run(model, near, kernel.EULER, horizon=1.0, step=1e-3)
    assert list(both.status) == [alone.status[0], Status.DIVERGED]
    assert np.array_equal(both.excess[0], alone.excess[0])
    assert np.array_equal(both.y_final[0], alone.y_final[0])


def test_results_do_not_depend_on_batch_companions():
    # per-trajectory step control: a trajectory's numbers are bitwise the same alone or in a batch
    z = paper_problem(dy=3)
    starts = np.stack([layerwise_start(w0_for(z, a, seed=i), 3, 4)[0] for i, a in enumerate((0.1, 1, 3, 10, 30))])
    model = kernel.Layerwise(layer_dims(5, 3, 3, 4), z, kernel.tail_loss(z, 3))
    together = run(model, starts, horizon=5.0, eps=1e-6, rtol=1e-8, atol=1e-12)
    for i in (0, 2, 4):
        alone = run(model, starts[i], horizon=5.0, eps=1e-6, rtol=1e-8, atol=1e-12)
        for field in ("excess", "time_to_eps", "steps", "rhs_evals", "y_final", "status"):
            assert np.array_equal(getattr(together, field)[i], getattr(alone, field)[0], equal_nan=True), field


def test_exact_model_agrees_with_dopri5():
    # model: exact (closed form of docs/theory.md §4 by quadrature) against the integrated induced flow
    from reference import compute

    raw = {
        "axes": {"depth": [1, 2, 3, 5], "width": [5], "init_norm": [0.3, 1.0, 10.0], "seed": [0, 1]},
        "horizon": 20.0,
        "integrator": {"method": "dopri5", "rtol": 1e-12, "atol": 1e-15},
        "checkpoints": {"count": 21, "spacing": "log"},
    }
    flow, exact = compute({**raw, "model": "induced"}), compute({**raw, "model": "exact"})
    assert np.array_equal(flow.status.values, exact.status.values)
    assert float(abs(exact.time_to_eps / flow.time_to_eps - 1).max()) < 1e-7
    scale = flow.excess_loss.isel(checkpoint=0)
    assert float((abs(exact.excess_loss - flow.excess_loss) / scale).max()) < 1e-7
    assert float(abs(exact.w_final - flow.w_final).max()) < 1e-7 * np.linalg.norm(flow.target)
    assert np.all(exact.steps.values == 0) and np.allclose(exact.w_init.values, flow.w_init.values, rtol=1e-13, atol=0)
    stop = compute({**raw, "model": "exact", "stop_at_eps": True})
    t = stop.time.values
    after = t[None, None, None, None, :] > stop.time_to_eps.values[..., None]
    assert np.all(np.isnan(stop.excess_loss.values[after])) and np.all(np.isfinite(stop.excess_loss.values[~after]))


def test_wide_output_uses_the_transposed_network():
    # dx = 2 < dy = 4: the kernel works on the transposed network; compare with the induced flow
    p = synthetic(30, 2, 4, seed=1)
    z = p.target
    w0 = w0_for(z, 2.0, seed=5)
    tc = np.linspace(0, 1, 6)
    for depth, width in ((2, 3), (4, 2)):
        model = kernel.Layerwise(layer_dims(2, 4, depth, width), z)
        assert model.flip
        lw = run(model, layerwise_start(w0, depth, width), tc=tc)
        ind = run(kernel.Induced(depth, z), w0.ravel(), tc=tc)
        assert np.max(np.abs(lw.excess / ind.excess - 1)) < 1e-8
        assert np.max(np.abs(model.product(lw.y_final) - ind.y_final.reshape(1, 4, 2))) < 1e-8


def test_blocked_batches_give_the_same_bits():
    # a batch larger than one cache block is integrated block by block: same numbers as alone
    z = paper_problem()
    model = kernel.Layerwise(layer_dims(5, 1, 8, 16), z)
    block = kernel.block_width(model.size)
    rng = np.random.default_rng(0)
    starts = np.stack(
        [layerwise_start(w0_for(z, a, seed=i), 8, 16)[0] for i, a in enumerate(rng.uniform(0.2, 3, block + 7))]
    )
    together = run(model, starts, kernel.RK4, horizon=0.05, step=1e-3)
    for i in (0, block - 1, block, block + 6):
        alone = run(model, starts[i], kernel.RK4, horizon=0.05, step=1e-3)
        assert np.array_equal(together.excess[i], alone.excess[0]) and np.array_equal(
            together.y_final[i], alone.y_final[0]
        )


# --------------------------------------------------------------------------------------------------
# The induced flow of networks narrower than min(dx, dy), and near W = 0 (issue 8 item 3)
# --------------------------------------------------------------------------------------------------

NARROW = [(5, 3, depth, width) for depth in (2, 3, 4) for width in (1, 2)] + [(4, 4, depth, 2) for depth in (2, 3, 4)]
NARROW_HORIZON = 40.0
NARROW_TIMES = np.concatenate([[0.0], np.geomspace(1e-3, NARROW_HORIZON, 60)])
DEFAULT_TOL = {"rtol": 1e-8, "atol": 1e-12}  # the spec's defaults


@cache
def narrow_case(dx, dy, depth, width):
    """Balanced starts (init_norm 0.5 and 2, seeds 0–3) of a network whose narrowest layer r < min(dx, dy):
    the two models, the layers and their end-to-end products."""
    z = synthetic(50, dx, dy, seed=0).target
    tail = kernel.tail_loss(z, rank_of(dx, dy, depth, width))
    layerwise = kernel.Layerwise(layer_dims(dx, dy, depth, width), z, tail)
    induced = kernel.Induced(depth, z, tail, rank=rank_of(dx, dy, depth, width))
    y0 = np.concatenate(
        [layerwise_start(w0_for(z, a, seed=s), depth, width, seed=s) for a in (0.5, 2.0) for s in range(4)]
    )
    return z, layerwise, induced, y0, layerwise.product(y0).reshape(len(y0), -1)


@cache
def narrow_reference(dx, dy, depth, width, eps):
    """The layerwise flow at rtol 1e-12: independent of the induced implementation."""
    _, layerwise, _, y0, _ = narrow_case(dx, dy, depth, width)
    return kernel.integrate(
        layerwise, y0, kernel.DOPRI5, horizon=NARROW_HORIZON, checkpoints=NARROW_TIMES, eps=eps, rtol=1e-12, atol=1e-16
    )


def narrow_errors(dx, dy, depth, width, eps, **tol):
    """The induced flow at ``tol`` against the reference: excess relative error where the excess > 1e-4‖Z‖²;
    error of the distance √(2·excess) to the optimum, in units of ‖Z‖, where the excess > 1e-10; relative
    error of T_ε where the reference reaches eps; the least excess / ‖Z‖²; the result."""
    z, _, induced, _, w0 = narrow_case(dx, dy, depth, width)
    ref = narrow_reference(dx, dy, depth, width, eps)
    got = kernel.integrate(induced, w0, kernel.DOPRI5, horizon=NARROW_HORIZON, checkpoints=NARROW_TIMES, eps=eps, **tol)
    zz = np.sum(z * z)
    large, small = ref.excess > 1e-4 * zz, ref.excess > 1e-10
    with np.errstate(invalid="ignore"):  # a negative excess has no distance: NaN fails the comparisons
        rel = np.max(np.abs(got.excess[large] / ref.excess[large] - 1))
        dist = np.max(np.abs(np.sqrt(2 * got.excess[small]) - np.sqrt(2 * ref.excess[small]))) / np.sqrt(zz)
    reached = np.isfinite(ref.time_to_eps)
    t_rel = np.max(np.abs(got.time_to_eps[reached] / ref.time_to_eps[reached] - 1), initial=0.0)
    return rel, dist, t_rel, np.min(got.excess) / zz, got


@pytest.mark.parametrize(("dx", "dy", "depth", "width"), NARROW)
def test_narrow_induced_flow_follows_the_layerwise_flow(dx, dy, depth, width):
    # the induced flow has no force beyond rank r: without projection an RK step's spurious singular value
    # (~tolerance) stays, the excess floored at ~1e-9 and went negative, T_ε came late or never.
    # Measured here at the defaults (worst of the grid): rel 2.64e-8, dist 1.04e-8, T_ε 9.73e-7 (eps 1e-9)
    # and 3.56e-6 (1e-11), excess ≥ −4.54e-17‖Z‖²; the layerwise flow itself at the same tolerances: 1.04e-7,
    # 9.28e-8, 6.13e-6, 4.83e-5; without projection: 4.55e-6, 2.7e-5, 0.11 and unconverged, −3.33e-11‖Z‖².
    # (A 1e-7 relative error of excesses down to 1e-10 is out of reach at rtol 1e-8 for both models — 4.1e-5
    # induced, 1.4e-4 layerwise — and ½‖W − Z‖² − tail carries a round-off of ~1e-15 at any tolerance.)
    for eps, t_tol in ((1e-9, 3e-6), (1e-11, 1e-5)):
        rel, dist, t_rel, least, got = narrow_errors(dx, dy, depth, width, eps, **DEFAULT_TOL)
        ref = narrow_reference(dx, dy, depth, width, eps)
        assert np.array_equal(np.isfinite(got.time_to_eps), np.isfinite(ref.time_to_eps)), eps
        assert rel < 1e-7 and dist < 1e-7, (eps, rel, dist)
        assert t_rel < t_tol, (eps, t_rel)
        assert least >= -1e-13, (eps, least)
        s = np.linalg.svd(got.y_final.reshape(len(got.y_final), dy, dx), compute_uv=False)
        assert np.all(s[:, rank_of(dx, dy, depth, width)] <= 1e-14 * s[:, 0])  # the state has rank r


@pytest.mark.parametrize(("dx", "dy", "depth", "width"), [(5, 3, 2, 1), (5, 3, 3, 2), (4, 4, 4, 2)])
def test_narrow_induced_flow_error_shrinks_with_the_tolerance(dx, dy, depth, width):
    # no floor left: at rtol 1e-11 the errors are the tolerance's (measured rel 2.29e-11, dist 1.77e-11,
    # T_ε 3.82e-8; without projection 9.2e-10, 2.45e-8, 8.31e-5)
    rel, dist, t_rel, least, _ = narrow_errors(dx, dy, depth, width, 1e-9, rtol=1e-11, atol=1e-15)
    assert rel < 1e-10 and dist < 1e-10 and t_rel < 3e-7 and least >= -1e-13, (rel, dist, t_rel, least)


def test_projection_keeps_rank_r_and_leaves_full_rank_models_alone():
    z = synthetic(50, 5, 3, seed=0).target
    rng = np.random.default_rng(0)
    y = rng.standard_normal((4, 15))
    y[3] = np.nan
    w = kernel.Induced(3, z, rank=1).project(y.copy()).reshape(4, 3, 5)
    u, s, vt = np.linalg.svd(y[:3].reshape(3, 3, 5))
    assert np.allclose(w[:3], s[:, None, :1] * u[:, :, :1] @ vt[:, :1], rtol=0, atol=1e-14)  # Eckart–Young
    assert np.all(np.isnan(w[3]))  # a non-finite state is left alone
    again = kernel.Induced(3, z, rank=1).project(w.reshape(4, -1).copy())
    assert np.allclose(again[:3], w[:3].reshape(3, -1), rtol=0, atol=1e-14)
    for model in (kernel.Induced(3, z, rank=3), kernel.Induced(3, z)):
        assert np.array_equal(model.project(y.copy()), y, equal_nan=True)


def test_narrow_induced_results_do_not_depend_on_batch_companions():
    # the projection and the error weights are per trajectory: the same bits alone or in a batch
    _, _, induced, _, w0 = narrow_case(5, 3, 3, 1)
    starts = np.concatenate([w0, 30 * w0[:2]])
    kw = {"horizon": 10.0, "checkpoints": np.linspace(0, 10, 11), "eps": 1e-6, **DEFAULT_TOL}
    together = kernel.integrate(induced, starts, kernel.DOPRI5, **kw)
    for i in (0, 5, 9):
        alone = kernel.integrate(induced, starts[i : i + 1], kernel.DOPRI5, **kw)
        for field in ("excess", "time_to_eps", "steps", "rhs_evals", "y_final", "status"):
            assert np.array_equal(getattr(together, field)[i], getattr(alone, field)[0], equal_nan=True), field


@pytest.mark.parametrize("depth", [3, 4, 5])
def test_induced_time_to_eps_near_zero_is_as_accurate_as_layerwise(depth):
    # dy = 1, θ0 = 3.1: W passes within ~1e-7 (N = 5) of 0, where atol on W alone allowed relative errors of
    # atol/‖W‖; the induced weights measure W in the layers' scale. Measured at rtol 1e-8, atol 1e-12,
    # init_norm 0.5 / 1 (induced vs layerwise relative T_ε error): N = 3: 1.25e-8 vs 1.13e-8, 4.05e-9 vs
    # 1.88e-9; N = 4: 2.73e-8 vs 2.42e-8, 2.59e-8 vs 2.74e-8; N = 5: 4.69e-8 vs 4.79e-8, 4.62e-8 vs 5.47e-8
    # (with atol on W alone, N = 4: 4.4e-7, 3.1e-7; N = 5: 1.6e-5, 1.1e-5).
    z = paper_problem()
    eps = 1e-6
    for init_norm in (0.5, 1.0):
        w0 = end_to_end_start(z, problem_seed=0, seed=0, depth=depth, width=5, init_norm=init_norm, init_angle=3.1)
        expected = polar_time_to_eps(z, w0, depth, eps)
        errors = []
        for model, y0 in (
            (kernel.Induced(depth, z, rank=1), w0.reshape(1, -1)),
            (kernel.Layerwise(layer_dims(5, 1, depth, 5), z), layerwise_start(w0, depth, 5)),
        ):
            r = kernel.integrate(
                model,
                y0,
                kernel.DOPRI5,
                horizon=2 * expected,
                checkpoints=np.array([0.0]),
                eps=eps,
                stop_at_eps=True,
                **DEFAULT_TOL,
            )
            assert r.status[0] == Status.CONVERGED
            errors.append(abs(r.time_to_eps[0] / expected - 1))
        induced, layerwise = errors
        assert induced <= 3 * max(layerwise, DEFAULT_TOL["rtol"]), (init_norm, induced, layerwise)
