"""The general losses — regression on non-whitened inputs (``sigma``) and matrix completion (``mask``) —
against an independent oracle (tests/reference_general.py: plain NumPy from the formulas, from the data
X, Y rather than Σ, C). The oracle is checked first: its flows against finite differences of the loss, its
induced flow against the end-to-end velocity of balanced layers, its least loss L* against the rank-r
minimizer. Then the kernel's right-hand sides and excess losses at random states (both orientations of the
network: the kernel transposes it when dx < dy), its trajectories against scipy's DOP853 on the oracle,
and the bits of a trajectory alone and inside a batch."""

import contextlib
from functools import cache

import numpy as np
import pytest
from reference_general import (
    Regression,
    balanced_start,
    completion,
    gaussian_start,
    induced_flow,
    layerwise_flow,
    orthonormal,
    product,
    regression,
    solve_induced,
    solve_layerwise,
)
from scipy.optimize import minimize

from sweep import kernel

LOSSES = ("sigma", "mask")


def make_problem(loss, rng, dx, dy):
    cond = float(rng.uniform(10, 100))
    return regression(rng, dx, dy, cond=cond) if loss == "sigma" else completion(rng, dx, dy)


def loss_kw(problem):
    """The kernel's description of the oracle's problem: (target, {sigma | mask})."""
    if isinstance(problem, Regression):
        return problem.target, {"sigma": problem.sigma}
    return problem.m, {"mask": problem.mask}


def tail_of(problem, rank):
    return problem.tail(rank) if isinstance(problem, Regression) else 0.0


def layerwise_model(problem, dims):
    target, kw = loss_kw(problem)
    return kernel.Layerwise(dims, target, tail_of(problem, min(dims)), **kw)


def induced_model(problem, depth, rank=None):
    target, kw = loss_kw(problem)
    r = min(problem.shape) if rank is None else rank
    return kernel.Induced(depth, target, tail_of(problem, r), rank=rank, **kw)


def pack(model, states):
    """Rows of the kernel's state for a list of layer lists."""
    return model.pack([np.stack([s[j] for s in states]) for j in range(model.depth)])


def relative(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def random_dims(rng, depth, orientation):
    """(dx, widths…, dy): dy > 1 always; "wide" has dx < dy (the kernel's transposed network), "tall" dx ≥ dy."""
    if orientation == "wide":
        dx = int(rng.integers(1, 4))
        dy = int(rng.integers(dx + 1, 7))
    else:
        dy = int(rng.integers(2, 5))
        dx = int(rng.integers(dy, 7))
    return (dx, *(int(w) for w in rng.integers(1, 6, depth - 1)), dy)


WORST = {}  # the worst errors measured, written to the terminal at the end of the module


def note(key, *errors):
    WORST[key] = max(WORST.get(key, 0.0), *errors)


@pytest.fixture(scope="module", autouse=True)
def report_worst(pytestconfig):
    yield
    terminal = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
    if not WORST or terminal is None:
        return
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        terminal.write_line("")
        terminal.write_line("test_problems: worst errors measured (rhs relative to ‖flow‖; excess at random")
        terminal.write_line("states relative to itself; trajectories: W relative to max_t ‖W_ref(t)‖, excess to")
        terminal.write_line("its initial value)")
        for key, value in sorted(WORST.items()):
            terminal.write_line(f"  {key}: {value:.3g}")


CASES = [(depth, orientation, seed) for depth in (1, 2, 3, 4) for orientation in ("wide", "tall") for seed in (0, 1)]


# --------------------------------------------------------------------------------------------------
# The oracle on its own
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", LOSSES)
def test_oracle_layerwise_flow_is_minus_the_gradient(loss):
    # central differences of L(W_N⋯W_1) over every entry of every layer, h = 1e-5: error O(h²) ≈ 1e-10
    rng = np.random.default_rng(1)
    worst = 0.0
    for depth in (1, 2, 3, 4):
        for orientation in ("wide", "tall"):
            dims = random_dims(rng, depth, orientation)
            problem = make_problem(loss, rng, dims[0], dims[-1])
            layers = gaussian_start(rng, dims)
            flow = layerwise_flow(problem, layers)
            h = 1e-5
            for j, w in enumerate(layers):
                fd = np.empty_like(w)
                for idx in np.ndindex(w.shape):
                    plus = [v.copy() for v in layers]
                    minus = [v.copy() for v in layers]
                    plus[j][idx] += h
                    minus[j][idx] -= h
                    fd[idx] = (problem.loss(product(plus)) - problem.loss(product(minus))) / (2 * h)
                scale = max(np.linalg.norm(f) for f in flow)
                worst = max(worst, float(np.max(np.abs(-fd - flow[j]))) / scale)
    assert worst < 1e-8, worst


@pytest.mark.parametrize("loss", LOSSES)
def test_oracle_induced_flow_is_the_velocity_of_balanced_layers(loss):
    # d/dt W_N⋯W_1 = Σ_j W_N⋯W_{j+1} (dW_j/dt) W_{j−1}⋯W_1 at balanced layers equals the induced flow,
    # also for networks narrower than min(dx, dy) (W of rank r)
    rng = np.random.default_rng(2)
    for depth, orientation, seed in CASES:
        dims = random_dims(np.random.default_rng(seed + 10 * depth), depth, orientation)
        problem = make_problem(loss, rng, dims[0], dims[-1])
        layers = balanced_start(rng, dims, norm=float(rng.uniform(0.3, 2)))
        for a, b in zip(layers[:-1], layers[1:]):
            assert np.allclose(b.T @ b, a @ a.T, rtol=0, atol=1e-13)
        flow = layerwise_flow(problem, layers)
        velocity = sum(
            product([*layers[:j], flow[j], *layers[j + 1 :]]) for j in range(depth)
        )  # product() multiplies in order: W_N⋯(dW_j)⋯W_1
        assert relative(induced_flow(problem, product(layers), depth), velocity) < 1e-11, dims


def factored_search(p, r, rng):
    """A local minimum of L(U Vᵀ) over U (dy × r), V (dx × r) by BFGS from a random start."""
    dy, dx = p.shape

    def f(z):
        u, v = z[: dy * r].reshape(dy, r), z[dy * r :].reshape(dx, r)
        g = p.grad(u @ v.T)
        return p.loss(u @ v.T), np.concatenate([(g @ v).ravel(), (g.T @ u).ravel()])

    return minimize(f, rng.standard_normal((dy + dx) * r), jac=True, method="BFGS").fun


def test_oracle_regression_identities():
    # Σ, C from the data: L(W) − L(A) = ½ tr((W − A)Σ(W − A)ᵀ); L(A) + ½ Σ_{k>r} s_k(AΣ^{1/2})² = L* (the
    # kernel's tail against the oracle's Eckart–Young on Y V); the reduced-rank minimizer attains L*, and a
    # local search over factorizations U Vᵀ of rank r finds nothing lower
    rng = np.random.default_rng(3)
    for dx, dy, r in ((5, 3, 1), (5, 3, 2), (2, 4, 1), (4, 4, 2), (3, 3, 3), (2, 5, 2)):
        p = regression(rng, dx, dy, cond=50.0, noise=0.1)
        a = p.target
        assert relative(a @ p.sigma, p.y @ p.x.T) < 1e-13
        assert np.max(np.abs(p.grad(a))) < 1e-13 * np.linalg.norm(p.y) * np.linalg.norm(p.x)  # ∇L(A) = 0
        w = rng.standard_normal((dy, dx))
        quad = 0.5 * np.trace((w - a) @ p.sigma @ (w - a).T)
        assert abs(p.loss(w) - p.loss(a) - quad) < 1e-12 * p.loss(w)
        least = p.least(r)
        assert abs(p.loss(a) + p.tail(r) - least) < 1e-12 * max(least, 1.0)
        wr = p.minimizer(r)
        assert np.linalg.matrix_rank(wr) <= r and abs(p.loss(wr) - least) < 1e-12 * max(least, 1.0)
        found = [factored_search(p, r, rng) for _ in range(3)]
        assert min(found) >= least - 1e-10 and min(found) < least + 1e-6, (min(found), least)
        if r < min(dx, dy):
            assert p.tail(r) > 1e-3  # genuinely constrained


def test_oracle_completion_and_frames():
    rng = np.random.default_rng(4)
    p = completion(rng, 6, 5)
    assert 0.2 < p.mask.mean() < 0.8 and set(np.unique(p.mask)) <= {0.0, 1.0}
    w = rng.standard_normal((5, 6))
    assert p.loss(w) == pytest.approx(0.5 * sum((w - p.m)[i, j] ** 2 for i, j in zip(*np.nonzero(p.mask))))
    q = orthonormal(rng, 5, 3)
    assert np.allclose(q.T @ q, np.eye(3), atol=1e-14)


# --------------------------------------------------------------------------------------------------
# The kernel's right-hand sides and excess losses at random states
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize(("depth", "orientation", "seed"), CASES)
def test_layerwise_rhs_and_excess(loss, depth, orientation, seed):
    rng = np.random.default_rng([seed, depth, orientation == "wide", loss == "mask"])
    dims = random_dims(rng, depth, orientation)
    problem = make_problem(loss, rng, dims[0], dims[-1])
    model = layerwise_model(problem, dims)
    assert model.flip == (orientation == "wide")
    states = [gaussian_start(rng, dims, scale=float(rng.uniform(0.2, 3))) for _ in range(5)]
    y = pack(model, states)
    out = np.full_like(y, np.nan)
    exc = model.rhs(y, out)
    least = problem.least(min(dims))
    for b, layers in enumerate(states):
        got = model.layers(out[b : b + 1])
        want = layerwise_flow(problem, layers)
        err = relative(np.concatenate([g.ravel() for g in got]), np.concatenate([w.ravel() for w in want]))
        ref = problem.loss(product(layers)) - least
        note(f"rhs layerwise/{loss}", err)
        note(f"excess layerwise/{loss}", abs(exc[b] / ref - 1))
        assert err < 1e-12, (dims, b, err)
        assert abs(exc[b] - ref) <= 1e-12 * abs(ref), (dims, b, exc[b], ref)
    assert np.array_equal(model.excess(y), exc)
    assert np.allclose(model.product(y), [product(s) for s in states], rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize(("depth", "orientation", "seed"), CASES)
def test_induced_rhs_and_excess(loss, depth, orientation, seed):
    # full-rank W with rank=None; rank-r W (r < min(dx, dy)) with rank=r
    rng = np.random.default_rng([seed, depth, orientation == "wide", loss == "mask", 7])
    dims = random_dims(rng, depth, orientation)
    dx, dy = dims[0], dims[-1]
    problem = make_problem(loss, rng, dx, dy)
    ranks = [None] + ([int(rng.integers(1, min(dx, dy)))] if min(dx, dy) > 1 else [])
    for rank in ranks:
        model = induced_model(problem, depth, rank)
        r = min(dx, dy) if rank is None else rank
        ws = []
        for _ in range(5):
            s = rng.uniform(0.2, 2.0, r)
            ws.append((orthonormal(rng, dy, r) * s) @ orthonormal(rng, dx, r).T)
        y = np.stack([w.ravel() for w in ws])
        out = np.full_like(y, np.nan)
        exc = model.rhs(y, out)
        least = problem.least(r)
        for b, w in enumerate(ws):
            err = relative(out[b].reshape(dy, dx), induced_flow(problem, w, depth))
            ref = problem.loss(w) - least
            note(f"rhs induced/{loss}", err)
            note(f"excess induced/{loss}", abs(exc[b] / ref - 1))
            assert err < 1e-12, (dims, rank, b, err)
            assert abs(exc[b] - ref) <= 1e-12 * abs(ref), (dims, rank, b, exc[b], ref)
        assert np.array_equal(model.excess(y), exc)


def test_sigma_and_mask_are_not_both_allowed():
    z = np.ones((2, 3))
    with pytest.raises(ValueError):
        kernel.Layerwise((3, 2), z, sigma=np.eye(3), mask=np.ones((2, 3)))
    with pytest.raises(ValueError):
        kernel.Induced(2, z, sigma=np.eye(3), mask=np.ones((2, 3)))


# --------------------------------------------------------------------------------------------------
# Trajectories against scipy's DOP853 on the oracle
# --------------------------------------------------------------------------------------------------

HORIZON = 4.0
TIMES = np.linspace(0.0, HORIZON, 9)
KERNEL_TOL = {"rtol": 1e-11, "atol": 1e-13}
W_TOL, EXCESS_TOL = 1e-7, 1e-7


def run(model, y0, **kw):
    return kernel.integrate(
        model,
        np.atleast_2d(y0),
        kernel.METHODS["dopri5"],
        horizon=HORIZON,
        checkpoints=TIMES,
        eps=1e-30,
        **{**KERNEL_TOL, **kw},
    )


def errors(result, problem, w_ref, least):
    """(W error relative to max_t ‖W_ref(t)‖, excess error relative to the initial excess)."""
    exc_ref = np.array([problem.loss(w) - least for w in w_ref])
    scale = max(np.linalg.norm(w) for w in w_ref)
    w_err = float(np.max(np.abs(result.w[0] - w_ref))) / scale
    e_err = float(np.max(np.abs(result.excess[0] - exc_ref))) / exc_ref[0]
    return w_err, e_err, exc_ref


TRAJECTORIES = [
    # (depth, orientation, seed): random dims as above
    (1, "wide", 0),
    (2, "tall", 0),
    (2, "wide", 1),
    (3, "tall", 1),
    (3, "wide", 0),
    (4, "tall", 0),
    (4, "wide", 1),
]


@cache
def trajectory_cell(loss, depth, orientation, seed):
    rng = np.random.default_rng([seed, depth, orientation == "wide", loss == "mask", 99])
    dims = random_dims(rng, depth, orientation)
    return dims, make_problem(loss, rng, dims[0], dims[-1])


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize(("depth", "orientation", "seed"), TRAJECTORIES)
def test_layerwise_trajectory_from_gaussian_start(loss, depth, orientation, seed):
    dims, problem = trajectory_cell(loss, depth, orientation, seed)
    layers = gaussian_start(np.random.default_rng(seed), dims, scale=1.5)
    model = layerwise_model(problem, dims)
    got = run(model, pack(model, [layers]))
    w_ref, final = solve_layerwise(problem, layers, TIMES)
    w_err, e_err, exc_ref = errors(got, problem, w_ref, problem.least(min(dims)))
    note(f"layerwise/{loss}/W", w_err)
    note(f"layerwise/{loss}/excess", e_err)
    assert w_err < W_TOL and e_err < EXCESS_TOL, (dims, w_err, e_err)
    assert exc_ref[-1] < 0.9 * exc_ref[0]  # the flow went somewhere
    layer_err = max(relative(a[0], b) for a, b in zip(model.layers(got.y_final), final))
    note(f"layerwise/{loss}/final layers", layer_err)
    assert layer_err < W_TOL, (dims, layer_err)
    # the last checkpoint (read from the step's interpolant) is the final state, up to round-off
    assert relative(got.w[0, -1], model.product(got.y_final)[0]) < 1e-13


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize(("depth", "orientation", "seed"), TRAJECTORIES)
def test_induced_and_layerwise_trajectories_from_balanced_start(loss, depth, orientation, seed):
    # the reference is the oracle's layerwise flow from the balanced layers (valid also for a narrow
    # network); when W0 has full rank the oracle's induced flow must agree with it too
    dims, problem = trajectory_cell(loss, depth, orientation, seed)
    layers = balanced_start(np.random.default_rng(seed + 5), dims, norm=0.8)
    w0 = product(layers)
    r = min(dims)
    w_ref, _ = solve_layerwise(problem, layers, TIMES)
    least = problem.least(r)
    if r == min(dims[0], dims[-1]):
        w_ind = solve_induced(problem, w0, depth, TIMES)
        oracle_err = float(np.max(np.abs(w_ind - w_ref))) / max(np.linalg.norm(w) for w in w_ref)
        note(f"oracle induced vs oracle layerwise/{loss}/W", oracle_err)
        assert oracle_err < 1e-9, (dims, oracle_err)
    induced = run(induced_model(problem, depth, rank=r), w0.ravel())
    model = layerwise_model(problem, dims)
    layerwise = run(model, pack(model, [layers]))
    for name, got in (("induced", induced), ("layerwise balanced", layerwise)):
        w_err, e_err, exc_ref = errors(got, problem, w_ref, least)
        note(f"{name}/{loss}/W", w_err)
        note(f"{name}/{loss}/excess", e_err)
        assert w_err < W_TOL and e_err < EXCESS_TOL, (name, dims, w_err, e_err)
    assert exc_ref[-1] < 0.9 * exc_ref[0]
    scale = max(np.linalg.norm(w) for w in w_ref)
    both = float(np.max(np.abs(induced.w - layerwise.w))) / scale
    note(f"induced vs layerwise (kernel)/{loss}/W", both)
    assert both < W_TOL, (dims, both)


# --------------------------------------------------------------------------------------------------
# Bits: a trajectory alone and inside a batch
# --------------------------------------------------------------------------------------------------

FIELDS = ("excess", "w", "time_to_eps", "steps", "rhs_evals", "y_final", "t_final", "status")


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("kind", ["layerwise", "induced"])
@pytest.mark.parametrize("orientation", ["wide", "tall"])
def test_batch_of_37_gives_the_same_bits_as_alone(loss, kind, orientation):
    rng = np.random.default_rng([11, loss == "mask", kind == "induced", orientation == "wide"])
    dims = random_dims(rng, 3, orientation)
    problem = make_problem(loss, rng, dims[0], dims[-1])
    scales = rng.uniform(0.2, 3.0, 37)
    if kind == "layerwise":
        model = layerwise_model(problem, dims)
        y0 = pack(model, [gaussian_start(rng, dims, scale=s) for s in scales])
    else:
        model = induced_model(problem, 3, rank=min(dims))
        y0 = np.stack([product(balanced_start(rng, dims, norm=s)).ravel() for s in scales])
    kw = {"horizon": 2.0, "checkpoints": np.linspace(0, 2, 5), "eps": 1e-3, "rtol": 1e-8, "atol": 1e-12}
    together = kernel.integrate(model, y0, kernel.METHODS["dopri5"], **kw)
    blocked = kernel.integrate(model, y0, kernel.METHODS["dopri5"], block=16, **kw)  # 16 + 16 + 5
    for i in (0, 15, 16, 31, 32, 36):
        alone = kernel.integrate(model, y0[i : i + 1], kernel.METHODS["dopri5"], **kw)
        for field in FIELDS:
            a = getattr(alone, field)[0]
            assert np.array_equal(getattr(together, field)[i], a, equal_nan=True), (i, field)
            assert np.array_equal(getattr(blocked, field)[i], a, equal_nan=True), (i, field, "block 16")
    assert np.all(np.isfinite(together.excess))
