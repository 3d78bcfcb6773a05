"""How long did it take? Tables of time_to_eps, scaling fits with confidence intervals, and the
observed times beside the exact closed form and the bounds of theory.md §4–5."""

from __future__ import annotations

import numpy as np
import xarray as xr

BOUND_RTOL = 1e-6  # a bound below the observation by more than this (relative) is a violation


def _attrs(da: xr.DataArray, **attrs) -> xr.DataArray:
    """``da`` with exactly these attrs (arithmetic would carry over the operands' units)."""
    da = da.copy()
    da.attrs = attrs
    return da


def converged_times(ds: xr.Dataset) -> xr.DataArray:
    """time_to_eps where the run converged, NaN elsewhere."""
    return ds.time_to_eps.where(ds.status == 1)


def time_to_eps_table(ds: xr.Dataset, along: str = "depth", over=("seed",), stat: str = "median") -> xr.DataArray:
    """A statistic (median, mean, min, max) of converged T_ε over ``over``, indexed by ``along``
    and the other axes (length-1 axes dropped)."""
    t = converged_times(ds)
    table = getattr(t, stat)(list(over), skipna=True).squeeze(drop=True)
    if along in table.dims:
        table = table.transpose(along, ...)
    return table.rename(f"time_to_eps_{stat}").assign_attrs(
        long_name=f"{stat} over {', '.join(over)} of T_ε (converged runs)", units="flow time")


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


def fit_scaling(ds: xr.Dataset, along: str = "init_norm", form: str | None = None, over: str = "seed",
                n_boot: int = 2000, level: float = 0.95, rng_seed: int = 0) -> xr.Dataset:
    """Fit T_ε against ``along`` for every combination of the other axes:
    ``form="power"``: log T = a + b log x (exponent b); ``"loglinear"``: log T = a + b x (rate b).
    Default: power for init_norm, loglinear for depth. The confidence interval at ``level`` comes
    from a bootstrap over ``over`` (resampling whole seeds) when there are ≥ 3 of them, else from
    the fit's covariance (t distribution)."""
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
    names = ("intercept", "exponent", "exponent_low", "exponent_high", "stderr", "r2", "n_points")
    out = {k: np.full(shape, np.nan) for k in names}
    rng = np.random.default_rng(rng_seed)
    alpha = (1 - level) / 2
    for idx in np.ndindex(shape):
        logt = np.log(t.values[idx])  # (along, over)
        ok = np.isfinite(logt) & (t.values[idx] > 0)
        xgrid = np.broadcast_to(gx[:, None], logt.shape)
        if ok.sum() < 3 or len(np.unique(xgrid[ok])) < 2:
            continue
        a, b, se, r2 = _fit(xgrid[ok], logt[ok])
        n_over = logt.shape[1]
        if n_over >= 3 and n_boot:
            boots = []
            for _ in range(n_boot):
                pick = rng.integers(0, n_over, n_over)
                xb, yb, okb = xgrid[:, pick], logt[:, pick], ok[:, pick]
                if okb.sum() >= 3 and len(np.unique(xb[okb])) >= 2:
                    boots.append(_fit(xb[okb], yb[okb])[1])
            lo, hi = np.quantile(boots, [alpha, 1 - alpha])
        else:
            q = stats.t.ppf(1 - alpha, max(ok.sum() - 2, 1))
            lo, hi = b - q * se, b + q * se
        for k, v in zip(names, (a, b, lo, hi, se, r2, ok.sum())):
            out[k][idx] = v
    coords = {d: t[d] for d in others}
    what = f"d log T_ε / d log {along}" if form == "power" else f"d log T_ε / d {along}"
    attrs = {
        "intercept": {"long_name": "fit intercept (log T_ε at log x = 0 / x = 0)"},
        "exponent": {"long_name": f"scaling exponent {what}"},
        "exponent_low": {"long_name": f"{level:.0%} CI lower end of the exponent"},
        "exponent_high": {"long_name": f"{level:.0%} CI upper end of the exponent"},
        "stderr": {"long_name": "standard error of the exponent (least squares)"},
        "r2": {"long_name": "coefficient of determination of the fit"},
        "n_points": {"long_name": "converged runs in the fit"},
    }
    res = xr.Dataset({k: (others, v, attrs[k]) for k, v in out.items()}, coords=coords)
    res.attrs.update(along=along, form=form, over=over, level=level,
                     ci_method="bootstrap over " + over if t.sizes[over] >= 3 and n_boot else "t interval")
    return res


def empirical_vs_theory(ds: xr.Dataset, rtol: float = BOUND_RTOL) -> xr.Dataset:
    """Observed T_ε over the exact T_ε and over each bound, with a violation flag where a bound is
    below the observation (by more than ``rtol``). Annotates ``ds`` first when needed."""
    from .theory import annotate

    if "theory_time_to_eps" not in ds:
        ds = annotate(ds)
    t = converged_times(ds)
    out = xr.Dataset()
    out["ratio_exact"] = _attrs(t / ds.theory_time_to_eps, long_name="observed T_ε / exact T_ε", units="1")
    counts = {}
    for bound in ("certificate_time_bound", "arora_time_bound"):
        b = ds[bound]
        name = bound.replace("_time_bound", "")
        out[f"ratio_{name}"] = _attrs(t / b, long_name=f"observed T_ε / {name} bound (≤ 1 when it holds)", units="1")
        viol = (b < t * (1 - rtol)) & b.notnull() & t.notnull()
        out[f"{name}_violated"] = _attrs(viol, long_name=f"{name} bound below the observed T_ε")
        counts[f"{name}_violations"] = int(viol.sum())
        counts[f"{name}_applicable"] = int((b.notnull() & t.notnull()).sum())
    out.attrs.update(counts)
    return out
