"""How long did it take? Tables of time_to_eps, scaling fits with confidence intervals, and the
observed times beside the exact closed form and the bounds of docs/theory.md §4–5."""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import xarray as xr

from sweep.schema import Status

from . import theory

BOUND_RTOL = 1e-6  # a bound below the observation by more than this (relative) is a violation


def _attrs(da: xr.DataArray, **attrs) -> xr.DataArray:
    """``da`` with exactly these attrs (arithmetic would carry over the operands' units)."""
    da = da.copy()
    da.attrs = attrs
    return da


def converged_times(ds: xr.Dataset) -> xr.DataArray:
    """time_to_eps where the run converged, NaN elsewhere."""
    return ds.time_to_eps.where(ds.status == Status.CONVERGED)


def time_to_eps_table(ds: xr.Dataset, along: str = "depth", over=("seed",), stat: str = "median") -> xr.DataArray:
    """A statistic (median, mean, min, max) of converged T_ε over ``over``, indexed by ``along``
    and the other axes (length-1 axes dropped)."""
    t = converged_times(ds)
    with warnings.catch_warnings():  # groups where nothing converged are NaN ("All-NaN slice")
        warnings.simplefilter("ignore", RuntimeWarning)
        table = getattr(t, stat)(list(over), skipna=True).squeeze(drop=True)
    if along in table.dims:
        table = table.transpose(along, ...)
    return table.rename(f"time_to_eps_{stat}").assign_attrs(
        long_name=f"{stat} over {', '.join(over)} of T_ε (converged runs)", units="flow time"
    )


def _fit(x, y):
    """Least squares y = a + b x; returns a, b, the standard error of b, r²."""
    n = len(x)
    xm, ym = x.mean(), y.mean()
    sxx = np.sum((x - xm) ** 2)
    b = np.sum((x - xm) * (y - ym)) / sxx
    a = ym - b * xm
    resid = y - a - b * x
    sse = np.sum(resid**2)
    se = np.sqrt(sse / (n - 2) / sxx) if n > 2 else np.nan
    sst = np.sum((y - ym) ** 2)
    return a, b, se, 1 - sse / sst if sst > 0 else 1.0


def _clustered_se(gx, logt, ok, a, b):
    """The seed-clustered standard error of the pooled slope ``b`` (least squares ``a + b gx`` over the
    points ``ok`` of ``logt``, shape (along, seed)) and the degrees of freedom of its t quantile.

    The sandwich is CR2 (Bell & McCaffrey 2002): each seed's residuals are scaled by
    (I − H_ss)^(−1/2), H_ss the seed's block of the hat matrix, which makes the variance unbiased
    when the points' errors are independent with one variance; with every seed at the same points it
    is the variance of the mean of the per-seed slopes, sd(b_s)² / k. The degrees of freedom are
    Bell and McCaffrey's (tr M)² / tr(M²) for M = Gᵀ(I − H)G (G: each seed's weights on its own
    residuals), k − 1 with every seed at the same points, fewer when seeds miss points unevenly."""
    x = np.where(ok, 1.0, 0.0)[..., None] * np.stack([np.ones_like(logt), np.broadcast_to(gx[:, None], logt.shape)], -1)
    x = x.transpose(1, 0, 2)  # (seed, along, 2); rows of missing points are 0
    inv = np.linalg.inv(np.einsum("sai,saj->ij", x, x))
    h = np.einsum("sai,ij,sbj->sab", x, inv, x)  # each seed's block of the hat matrix
    mu, q = np.linalg.eigh(np.eye(h.shape[-1]) - h)
    root = np.where(mu > 1e-10, 1 / np.sqrt(np.clip(mu, 1e-10, None)), 0.0)  # (I − H_ss)^(−1/2), pseudo-inverse
    adjust = np.einsum("sak,sk,sbk->sab", q, root, q)
    w = x @ inv[:, 1]  # (seed, along): the slope's weights on the points
    g = np.einsum("sab,sb->sa", adjust, w)
    resid = np.where(ok, logt - a - b * gx[:, None], 0.0).T
    se = np.sqrt(np.sum(np.einsum("sa,sa->s", g, resid) ** 2))
    d = np.einsum("sa,sa->s", g, g)  # Gᵀ G is diagonal (each seed's column lives on its own points)
    gtx = np.einsum("sa,sai->si", g, x)  # Gᵀ X; Gᵀ H G = (Gᵀ X) inv (Gᵀ X)ᵀ, never formed (k × k)
    diag = np.einsum("si,ij,sj->s", gtx, inv, gtx)
    c = inv @ gtx.T @ gtx
    trace = d.sum() - diag.sum()
    square = np.sum(d**2) - 2 * np.sum(d * diag) + np.trace(c @ c)
    seeds = int(ok.any(0).sum())  # k independent units: at most k − 1 degrees of freedom for their spread
    return se, min(trace**2 / square, seeds - 1)


def fit_scaling(
    ds: xr.Dataset,
    along: str = "init_norm",
    form: str | None = None,
    over: str = "seed",
    level: float = 0.95,
) -> xr.Dataset:
    """Fit T_ε against ``along`` for every combination of the other axes:
    ``form="power"``: log T = a + b log x (exponent b); ``"loglinear"``: log T = a + b x (rate b).
    Default: power for init_norm, loglinear for depth. ``exponent`` is the least-squares slope over
    every converged run of the slice (all values of ``over`` pooled).

    The confidence interval at ``level`` treats the values of ``over`` (seeds) as the independent
    units: exponent ± t_ν · stderr, where ``stderr`` is the seed-clustered (CR2) standard error of the
    pooled slope and ν the Bell–McCaffrey degrees of freedom (``dof``; k − 1 for k seeds when every
    seed has the same points, where the interval is the t interval on the k per-seed slopes). See
    docs/theory.md §11. It needs two seeds that each have
    converged runs at two values of ``along`` (two per-seed slopes); with one there is no interval.
    With a single value of ``over`` (one seed) there is none either: the scatter about the line is then
    the misfit of the form, not variation between seeds. ``note`` says, per fit, why there is no fit
    (fewer than 3 converged runs, or all at one value of ``along``) or no interval ("no CI: one seed")."""
    from scipy import stats

    form = form or ("loglinear" if along == "depth" else "power")
    if form not in ("power", "loglinear"):
        raise ValueError(f"form must be power or loglinear, got {form!r}")
    t = converged_times(ds)
    others = [d for d in t.dims if d not in (along, over)]
    t = t.transpose(*others, along, over)
    xs = t[along].values.astype(float)
    gx = np.log(xs) if form == "power" else xs
    shape = t.shape[:-2]
    names = ("intercept", "exponent", "exponent_low", "exponent_high", "stderr", "dof", "r2", "n_points")
    out = {k: np.full(shape, np.nan) for k in names}
    notes = np.full(shape, "", dtype=object)
    alpha = (1 - level) / 2
    n_over = t.sizes[over]
    values = t.values
    for idx in np.ndindex(shape):
        with np.errstate(divide="ignore", invalid="ignore"):  # T_ε = 0 (started within ε) and NaN
            logt = np.log(values[idx])  # (along, over)
        ok = np.isfinite(logt) & (values[idx] > 0)
        n = int(ok.sum())
        out["n_points"][idx] = n
        if n < 3:
            notes[idx] = f"no fit: {n} converged run{'s' * (n != 1)} with T_ε > 0 (needs 3)"
            continue
        xgrid = np.broadcast_to(gx[:, None], logt.shape)
        if len(np.unique(xgrid[ok])) < 2:
            notes[idx] = f"no fit: converged runs at one {along} only"
            continue
        a, b, _, r2 = _fit(xgrid[ok], logt[ok])
        out["intercept"][idx], out["exponent"][idx], out["r2"][idx] = a, b, r2
        spread = np.where(ok, xgrid, -np.inf).max(0) > np.where(ok, xgrid, np.inf).min(0)
        if n_over == 1:
            notes[idx] = f"no CI: one {over}"
            continue
        if spread.sum() < 2:
            notes[idx] = (
                f"no CI: {int(spread.sum())} of {n_over} {over}s with converged runs at two or more {along} "
                "values (needs 2)"
            )
            continue
        se, dof = _clustered_se(gx, logt, ok, a, b)
        q = stats.t.ppf(1 - alpha, dof)
        out["exponent_low"][idx], out["exponent_high"][idx] = b - q * se, b + q * se
        out["stderr"][idx], out["dof"][idx] = se, dof
    coords = {d: t[d] for d in others}
    what = f"d log T_ε / d log {along}" if form == "power" else f"d log T_ε / d {along}"
    attrs = {
        "intercept": {"long_name": "fit intercept (log T_ε at log x = 0 / x = 0)"},
        "exponent": {"long_name": f"scaling exponent {what} (least squares, {over}s pooled)"},
        "exponent_low": {"long_name": f"{level:.0%} CI lower end of the exponent"},
        "exponent_high": {"long_name": f"{level:.0%} CI upper end of the exponent"},
        "stderr": {"long_name": f"standard error of the exponent, clustered by {over} (CR2)"},
        "dof": {"long_name": "degrees of freedom of the interval's t quantile (Bell–McCaffrey)"},
        "r2": {"long_name": "coefficient of determination of the fit"},
        "n_points": {"long_name": "converged runs in the fit"},
    }
    res = xr.Dataset({k: (others, v, attrs[k]) for k, v in out.items()}, coords=coords)
    res["note"] = (others, notes, {"long_name": "why there is no fit or no confidence interval (empty: both there)"})
    method = f"none (one {over})" if n_over == 1 else f"t interval clustered by {over} (CR2), {n_over} {over}s"
    res.attrs.update(along=along, form=form, over=over, level=level, ci_method=method)
    return res


def empirical_vs_theory(ds: xr.Dataset, rtol: float = BOUND_RTOL) -> xr.Dataset:
    """Observed T_ε over the exact T_ε and over each bound, with a violation flag where a bound is
    below the observation (by more than ``rtol``). Annotates ``ds`` first when needed
    (:func:`safe_annotate`). A ratio is NaN where either time is missing, inf where the theory's is 0."""
    if "theory_time_to_eps" not in ds:
        ds = safe_annotate(ds)
    t = converged_times(ds)
    out = xr.Dataset()
    with np.errstate(divide="ignore", invalid="ignore"):
        out["ratio_exact"] = _attrs(t / ds.theory_time_to_eps, long_name="observed T_ε / exact T_ε", units="1")
    counts = {}
    for bound in ("certificate_time_bound", "arora_time_bound"):
        b = ds[bound]
        name = bound.replace("_time_bound", "")
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = t / b
        out[f"ratio_{name}"] = _attrs(ratio, long_name=f"observed T_ε / {name} bound (≤ 1 when it holds)", units="1")
        viol = (b < t * (1 - rtol)) & b.notnull() & t.notnull()
        out[f"{name}_violated"] = _attrs(viol, long_name=f"{name} bound below the observed T_ε")
        counts[f"{name}_violations"] = int(viol.sum())
        counts[f"{name}_applicable"] = int((b.notnull() & t.notnull()).sum())
    out.attrs.update(counts)
    return out


# --------------------------------------------------------------------------------------------------
# the theory of every cell, on any store
# --------------------------------------------------------------------------------------------------

THEORY_VARIABLES = (
    "theory_limit",
    "alignment_p1",
    "arora_covered",
    "arora_time_bound",
    "theory_time_to_eps",
    "certificate_time_bound",
)
_MISSING = {
    "theory_limit": np.int8(-2),
    "alignment_p1": np.nan,
    "arora_covered": False,
    "arora_time_bound": np.nan,
    "theory_time_to_eps": np.nan,
    "certificate_time_bound": np.nan,
}


@contextlib.contextmanager
def quiet():
    """No floating-point or quadrature warnings from the closed forms (overflow in cosh, round-off
    in quad): the values they concern come out NaN or raise, and are noted where they are used."""
    from scipy.integrate import IntegrationWarning

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", IntegrationWarning)
        yield


def safe_annotate(ds: xr.Dataset, tol: float | None = None) -> xr.Dataset:
    """:func:`analysis.theory.annotate` on any store ``linflow run`` wrote, and why a value is missing.

    - Cells without a start (pending, failed: W(0) is NaN) are left out of the computation and
      keep no theory values (limit −2, undecided).
    - When the computation raises (a closed form that overflows at some cell), it is redone cell by
      cell; the cells where it raises keep no theory values and their error.
    - ``theory_note`` (per cell, empty when nothing is missing) says why: "cell failed: …", "theory
      raised OverflowError: …", "exact T_ε: ∞ …"; ``attrs["theory_notes"]`` holds what holds for
      the whole store (no exact T_ε for dy ≠ 1 or Gaussian starts; undecided limits).
    Warnings of the closed forms are silenced (:func:`quiet`): what they concern is noted."""
    import yaml

    if "theory_note" in ds:
        return ds
    tol = theory.ALIGN_TOL if tol is None else tol
    dims = tuple(ds.status.dims)
    outside = theory.outside(yaml.safe_load(ds.attrs["spec"])["problem"])
    if outside:  # none of §3–§5 holds: every cell without theory values, the store saying why
        out = ds.copy()
        for n in THEORY_VARIABLES:
            out[n] = (dims, np.full(ds.status.shape, _MISSING[n]), {})
        out["theory_note"] = (dims, np.full(ds.status.shape, "", dtype=object), {"long_name": "unused"})
        out.attrs["theory_notes"] = [
            f"limits, exact T_ε and bounds (docs/theory.md §3–§5): not computed: they hold for whitened "
            f"regression, and this store's problem is {outside} (docs/theory.md §12)"
        ]
        return out
    status = ds.status.transpose(*dims).values
    started_da = np.isfinite(ds.w_init).all(("out", "in"))
    started = started_da.transpose(*dims).values
    # annotate needs a finite W(0) everywhere (an SVD of NaN raises): Z stands in where there is none
    slim = xr.Dataset(
        {"w_init": ds.w_init.where(started_da, ds.target), "target": ds.target, "status": ds.status}, attrs=ds.attrs
    )
    try:
        with quiet():
            a = theory.annotate(slim, tol)
        values = {n: a[n].transpose(*dims).values.copy() for n in THEORY_VARIABLES}
        attrs = {n: a[n].attrs for n in THEORY_VARIABLES}
        errors = {}
    except Exception:  # noqa: BLE001 — find the cells where it raises; the others keep their theory
        values, attrs, errors = _annotate_cell_by_cell(slim, dims, tol)
    for n in THEORY_VARIABLES:
        values[n][~started] = _MISSING[n]

    spec = yaml.safe_load(ds.attrs["spec"])
    dy, balanced = ds.sizes["out"], spec["init"]["scheme"] in theory.BALANCED
    note = np.full(status.shape, "", dtype=object)
    if dy == 1 and balanced:
        never = np.isnan(values["theory_time_to_eps"])
        note[never & (values["theory_limit"] == -1)] = "exact T_ε: ∞ (anti-aligned: the exact flow ends at zero)"
        note[never & (values["theory_limit"] != -1)] = "exact T_ε: none (the closed form never gets within ε)"
    for idx, message in errors.items():
        note[idx] = f"theory raised {message}"
    names = Status.names(ds)
    for code, name in enumerate(names):
        note[~started & (status == code)] = f"cell {name}: no start, no theory"

    notes = []
    why = [f"dy = {dy} (they hold for a scalar output, dy = 1)"] if dy != 1 else []
    why += [] if balanced else ["Gaussian starts (they hold for balanced starts)"]
    if why:
        notes.append(
            "exact T_ε and the certificate bound (docs/theory.md §4–5): not defined for " + " and for ".join(why)
        )
    raised = np.zeros(status.shape, dtype=bool)
    for idx in errors:
        raised[idx] = True
    undecided = int(np.sum(started & ~raised & (values["theory_limit"] == -2)))
    if undecided:
        notes.append(
            f"limit prediction (docs/theory.md §3): undecided for {undecided} cells, starts of rank ≥ 2 "
            "(§3 decides rank-1 starts)"
        )

    out = ds.copy()
    for n in THEORY_VARIABLES:
        out[n] = (dims, values[n], attrs.get(n, {}))
    out["theory_note"] = (dims, note, {"long_name": "why a theory value of the cell is missing (empty: none is)"})
    out.attrs["theory_notes"] = notes
    return out


def _annotate_cell_by_cell(slim, dims, tol):
    """``annotate`` one cell at a time: (values, attrs, {cell index: error}) of the whole grid."""
    shape = slim.status.shape
    values = {n: np.full(shape, _MISSING[n]) for n in THEORY_VARIABLES}
    attrs, errors = {}, {}
    for idx in np.ndindex(shape):
        one = slim.isel({d: slice(i, i + 1) for d, i in zip(dims, idx)})
        try:
            with quiet():
                a = theory.annotate(one, tol)
        except Exception as exc:  # noqa: BLE001 — recorded per cell, said in the report
            errors[idx] = f"{type(exc).__name__}: {exc}"
            continue
        for n in THEORY_VARIABLES:
            values[n][idx] = a[n].values.ravel()[0]
            attrs.setdefault(n, a[n].attrs)
    return values, attrs, errors
