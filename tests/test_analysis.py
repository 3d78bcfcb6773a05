"""analysis.convergence and analysis.complexity on crafted datasets and on a real (small) sweep."""

import numpy as np
import pytest
import xarray as xr
from reference import balanced_flow
from reference import compute as sweep_dataset

from analysis import complexity, convergence, theory


@pytest.fixture(scope="module")
def paper_sweep():
    return sweep_dataset(
        {
            "axes": {
                "depth": [1, 2, 3, 5],
                "width": [5],
                "init_norm": [0.3, 1.0, 10.0],
                "seed": {"start": 0, "stop": 5},
            },
            "integrator": {"method": "dopri5", "rtol": 1e-10, "atol": 1e-13},
            "horizon": 40.0,
            "eps": 1e-6,
        }
    )


def crafted(cells):
    """A dataset with depth 2, widths (1, 5) and one seed per crafted final matrix."""
    z = np.zeros((3, 5))
    z[0, 0], z[1, 1], z[2, 2] = 3.0, 2.0, 1.0
    n = max(len(c) for c in cells.values())
    w = np.full((1, 2, 1, n, 3, 5), np.nan)
    status = np.zeros((1, 2, 1, n), dtype="i1")
    for wi, width in enumerate((1, 5)):
        for si, (mat, st) in enumerate(cells[width]):
            w[0, wi, 0, si] = mat
            status[0, wi, 0, si] = st
    dims = ("depth", "width", "init_norm", "seed")
    return xr.Dataset(
        {"w_final": (dims + ("out", "in"), w), "status": (dims, status), "target": (("out", "in"), z)},
        coords={"depth": [2], "width": [1, 5], "init_norm": [1.0], "seed": np.arange(n)},
    )


def test_classify_every_class():
    zz = np.zeros((3, 5))
    zz[0, 0], zz[1, 1], zz[2, 2] = 3.0, 2.0, 1.0
    z1, s2 = np.zeros((3, 5)), np.zeros((3, 5))
    z1[0, 0], s2[1, 1] = 3.0, 2.0
    rng = np.random.default_rng(0)
    cells = {
        1: [(z1 + 1e-6, 1), (s2, 2), (np.zeros((3, 5)), 2), (np.full((3, 5), 1e3), 3)],  # rank-1 problem
        5: [(zz, 1), (z1, 2), (rng.standard_normal((3, 5)), 2), (np.full((3, 5), np.nan), 0)],  # rank-3 problem
    }
    cls = convergence.classify(crafted(cells)).values[0, :, 0, :]
    G, S, Z0, U, D, K = (
        convergence.GLOBAL,
        convergence.SADDLE,
        convergence.ZERO,
        convergence.UNCONVERGED,
        convergence.DIVERGED,
        convergence.UNKNOWN,
    )
    assert cls.tolist() == [[G, S, Z0, D], [G, S, U, K]]
    _, index = convergence.nearest_critical_point(crafted(cells))
    assert index.values[0, 0, 0, :3].tolist() == [0, 2, -1]
    attrs = convergence.classify(crafted(cells)).attrs
    assert attrs["flag_meanings"].split()[1:] == ["global", "saddle", "zero", "unconverged", "diverged"]


def test_convergence_rate_and_agreement_on_a_real_sweep(paper_sweep):
    rate = convergence.convergence_rate(paper_sweep)
    assert float(rate.min()) == 1.0  # generic balanced starts all reach Z (docs/theory.md §3)
    table = convergence.agreement(paper_sweep)
    assert table.sizes["cell"] == 0 and table.attrs["compared"] == 60


def test_agreement_flags_an_anti_aligned_start():
    ds = sweep_dataset(
        {
            "model": "induced",
            "axes": {"depth": [1, 3], "width": [5], "init_norm": [1.0], "init_angle": [1.0, np.pi], "seed": [0]},
            "horizon": 20.0,
        }
    )
    a = theory.annotate(ds)
    assert a.theory_limit.sel(depth=3, init_angle=np.pi).item() == -1
    assert a.theory_limit.sel(depth=1, init_angle=np.pi).item() == 0
    cls = convergence.classify(a)
    assert cls.sel(depth=1).values.ravel().tolist() == [convergence.GLOBAL] * 2
    # depth 3 from −Z: W → 0 only algebraically, so at t = 20 it is near no critical point yet
    assert cls.sel(depth=3, init_angle=np.pi).item() in (convergence.ZERO, convergence.UNCONVERGED)
    assert convergence.agreement(a).sizes["cell"] == 0


def test_observed_times_match_the_exact_form_and_no_bound_is_below_them(paper_sweep):
    a = theory.annotate(paper_sweep)
    ev = complexity.empirical_vs_theory(a)
    assert float(abs(ev.ratio_exact - 1).max()) < 1e-6
    assert ev.attrs["certificate_violations"] == 0 and ev.attrs["certificate_applicable"] > 0
    assert ev.attrs["arora_violations"] == 0
    assert float(ev.ratio_certificate.max()) <= 1.0 + 1e-6  # depth 1: the bound is the exact time


@pytest.mark.parametrize(
    "form, along, values, truth",
    [
        ("power", "init_norm", [0.1, 0.3, 1.0, 3.0, 10.0, 30.0], -0.7),
        ("loglinear", "depth", [1, 2, 3, 4, 5, 6], 0.25),
    ],
)
def test_fit_scaling_recovers_a_known_exponent(form, along, values, truth):
    rng = np.random.default_rng(1)
    x = np.asarray(values, dtype=float)
    g = np.log(x) if form == "power" else x
    seeds = 30
    t = np.exp(0.5 + truth * g[:, None] + 0.05 * rng.standard_normal((len(x), seeds)))
    other = "depth" if along == "init_norm" else "init_norm"
    ds = xr.Dataset(
        {
            "time_to_eps": ((along, other, "seed"), t[:, None, :]),
            "status": ((along, other, "seed"), np.ones((len(x), 1, seeds), "i1")),
        },
        coords={along: x, other: [1.0], "seed": np.arange(seeds)},
    )
    fit = complexity.fit_scaling(ds, along=along, form=form)
    b = fit.exponent.item()
    assert fit.exponent_low.item() <= truth <= fit.exponent_high.item()
    assert abs(b - truth) < 0.02 and fit.exponent_high.item() - fit.exponent_low.item() < 0.05
    assert fit.attrs["ci_method"] == "t interval clustered by seed (CR2), 30 seeds"
    few = complexity.fit_scaling(ds.isel(seed=[0, 1]), along=along, form=form)
    assert few.attrs["ci_method"] == "t interval clustered by seed (CR2), 2 seeds" and few.dof.item() == 1
    assert few.exponent_low.item() <= truth <= few.exponent_high.item()


def test_time_to_eps_table(paper_sweep):
    table = complexity.time_to_eps_table(paper_sweep, "depth")
    assert table.dims == ("depth", "init_norm")
    expected = paper_sweep.time_to_eps.sel(depth=3, init_norm=1.0).median().item()
    assert table.sel(depth=3, init_norm=1.0).item() == expected


# --------------------------------------------------------------------------------------------------
# agreement: leaving a strict saddle through round-off is an escape, not a disagreement
# --------------------------------------------------------------------------------------------------


def saddle_start_sweep(tmp_path, horizon):
    """A real simulation of docs/theory.md §3's p_1 = 0 case: target diag(3, 2, 1) (dy = 3) in a generic
    rotated basis, a rank-1 balanced start with u0 ⟂ u_1, v0 ⟂ v_1 and p_2 ≠ 0 (as in
    tests/test_theory.py), depths 2–4 at width 1, integrated by the layerwise kernel (dopri5) and
    laid out in the store's own schema (sweep.store.template)."""
    from sweep import problem, store
    from sweep import spec as specs

    rng = np.random.default_rng(0)
    q3, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    q5, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    z = np.zeros((3, 5))
    z[0, 0], z[1, 1], z[2, 2] = 3.0, 2.0, 1.0
    u0 = np.array([0.0, 1.0, 1.0]) / np.sqrt(2)
    v0 = np.array([0.0, 1.0, 0.5, 0.0, 0.3])
    w0 = q3 @ (0.8 * np.outer(u0, v0 / np.linalg.norm(v0))) @ q5
    x = np.linalg.qr(rng.standard_normal((20, 5)))[0].T  # whitened: X Xᵀ = I
    np.savez(tmp_path / "data.npz", X=x, Y=q3 @ z @ q5 @ x)
    depths = [2, 3, 4]
    s = specs.parse(
        {
            "problem": {"data": str(tmp_path / "data.npz")},
            "horizon": horizon,
            "axes": {"depth": depths, "width": [1], "init_norm": [1.0], "seed": [0]},
        }
    )
    p = problem.build(s.problem)
    ds, _ = store.template(s, p, s.fingerprint(p.digest()))
    ds = ds.copy(deep=True)
    for i, n in enumerate(depths):
        flow = balanced_flow(w0, p.target, n, 1, horizon)
        ds.w_init.values[i, 0, 0, 0], ds.w_final.values[i, 0, 0, 0], ds.status.values[i, 0, 0, 0] = flow
    return ds


def test_agreement_counts_a_round_off_escape_from_a_strict_saddle_apart(tmp_path):
    # at t = 10 every depth sits on the predicted saddle s_2 u_2 v_2ᵀ (the exact flow's limit) …
    early = convergence.agreement(saddle_start_sweep(tmp_path, 10.0))
    assert early.sizes["cell"] == 0 and early.attrs["compared"] == 3
    # … by t = 100 round-off has grown and each run has left it for the global minimizer Z_1
    ds = saddle_start_sweep(tmp_path, 100.0)
    a = theory.annotate(ds)
    assert a.theory_limit.values.ravel().tolist() == [2, 2, 2]
    assert convergence.classify(a).values.ravel().tolist() == [convergence.GLOBAL] * 3
    table = convergence.agreement(a)
    assert table.attrs["compared"] == 3 and table.attrs["escapes"] == 3 and table.attrs["disagreements"] == 0
    assert table.escaped.values.tolist() == [True] * 3
    assert table.predicted.values.tolist() == [2] * 3 and table.observed.values.tolist() == [0] * 3


def test_agreement_escape_from_zero_only_where_zero_is_strict():
    # anti-aligned (θ0 = π): the exact flow ends at zero. At depth 2 zero is a strict saddle and the
    # run leaves it through round-off by t = 100; at depth 3 it is not, and the run stays there
    ds = sweep_dataset(
        {
            "model": "induced",
            "axes": {"depth": [2, 3], "width": [5], "init_norm": [1.0], "init_angle": [np.pi], "seed": [0]},
            "horizon": 100.0,
            "checkpoints": {"count": 11},
        }
    )
    table = convergence.agreement(ds)
    assert table.attrs["compared"] == 2 and table.attrs["escapes"] == 1 and table.attrs["disagreements"] == 0
    assert table.depth.values.tolist() == [2] and table.predicted.item() == -1 and table.observed.item() == 0


def test_agreement_a_limit_that_is_not_a_descent_from_a_strict_saddle_is_a_disagreement():
    z = np.zeros((3, 5))
    z[0, 0], z[1, 1], z[2, 2] = 3.0, 2.0, 1.0

    def point(k):  # s_k u_k v_kᵀ; 0: the global minimizer of the rank-1 problem, −1: zero
        w = np.zeros((3, 5))
        if k != -1:
            j = 0 if k == 0 else k - 1
            w[j, j] = z[j, j]
        return w

    # (depth, predicted, observed, escape?)
    cases = [
        (2, 2, 0, True),
        (2, 3, 2, True),
        (2, -1, 0, True),
        (3, 2, 0, True),
        (3, 3, 0, True),
        (2, 2, 3, False),
        (2, 2, -1, False),
        (2, 0, 2, False),
        (3, -1, 0, False),
        (3, -1, 2, False),
        (3, 3, -1, False),
    ]
    n = max(sum(c[0] == d for c in cases) for d in (2, 3))
    w = np.full((2, 1, 1, n, 3, 5), np.nan)
    status = np.zeros((2, 1, 1, n), dtype="i1")
    limit = np.full((2, 1, 1, n), -2, dtype="i1")
    expect = np.zeros((2, 1, 1, n), dtype=bool)
    for di, d in enumerate((2, 3)):
        for si, (_, pred, obs, esc) in enumerate(c for c in cases if c[0] == d):
            w[di, 0, 0, si], status[di, 0, 0, si], limit[di, 0, 0, si] = point(obs), 1, pred
            expect[di, 0, 0, si] = esc
    dims = ("depth", "width", "init_norm", "seed")
    ds = xr.Dataset(
        {
            "w_final": (dims + ("out", "in"), w),
            "status": (dims, status),
            "target": (("out", "in"), z),
            "theory_limit": (dims, limit),
        },
        coords={"depth": [2, 3], "width": [1], "init_norm": [1.0], "seed": np.arange(n)},
    )
    table = convergence.agreement(ds)
    assert table.attrs["compared"] == len(cases) and table.sizes["cell"] == len(cases)
    assert table.attrs["escapes"] == 5 and table.attrs["disagreements"] == 6
    got = {
        (int(c.depth), int(c.predicted), int(c.observed)): bool(c.escaped)
        for c in (table.isel(cell=i) for i in range(table.sizes["cell"]))
    }
    assert got == {(d, p, o): e for d, p, o, e in cases}
    assert convergence.strict_saddle(np.array([2, 3, -1, -1, 0, -2]), np.array([2, 5, 2, 3, 2, 2]), z).tolist() == [
        True,
        True,
        True,
        False,
        False,
        False,
    ]
