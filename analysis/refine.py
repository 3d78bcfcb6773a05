"""Refining a sweep until its scaling fits are tight (``linflow refine``): how wide each fit's confidence
interval is, whether every one is within a target, and the seed axis of the next round. Pure: the
command line runs the rounds (each an ordinary growth of the store, sweep.runner)."""

from __future__ import annotations

import math

import numpy as np
import xarray as xr

from sweep.spec import axis_values

from . import complexity


def form_for(along: str) -> str:
    """The fit form of an axis, as the report fits it: a power law in init_norm, log-linear otherwise."""
    return "power" if along == "init_norm" else "loglinear"


def fits(ds: xr.Dataset, along: str) -> xr.Dataset:
    """The scaling fits of T_ε along ``along`` per value of the other axes (analysis.complexity.fit_scaling,
    a t interval clustered by seed at 95%), with ``half_width``: the interval's half-width relative to the
    exponent, (high − low) / 2 / |exponent| — NaN where there is no fit or no interval, ∞ at exponent 0."""
    fit = complexity.fit_scaling(ds, along=along, form=form_for(along))
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = (fit.exponent_high - fit.exponent_low) / 2 / abs(fit.exponent)
    fit["half_width"] = rel.assign_attrs(long_name="half-width of the 95% interval / |exponent|")
    return fit


def counted(fit: xr.Dataset) -> np.ndarray:
    """The slices the target is for: those with a converged run (a slice where no run converged has no T_ε
    to fit, and more seeds will not give it one)."""
    return fit.n_points.values > 0


def tight(fit: xr.Dataset, target: float) -> bool:
    """Every counted slice (:func:`counted`) has an exponent whose interval is within ``target``, and there
    is at least one."""
    rel = fit.half_width.values[counted(fit)]
    return bool(rel.size) and bool(np.all(rel <= target))  # NaN (no fit, no interval) is not within


def widest(fit: xr.Dataset) -> float:
    """The widest relative half-width among the counted slices (∞ when one has no fit or no interval)."""
    rel = fit.half_width.values[counted(fit)]
    return float(np.max(np.where(np.isnan(rel), np.inf, rel))) if rel.size else math.inf


def lines(fit: xr.Dataset, target: float) -> list[str]:
    """One line per slice: 'init_norm=0.1: exponent 0.5312 [0.4118, 0.6634] ±24.5% (> 5%)'."""
    out = []
    dims = list(fit.exponent.dims)
    for idx in np.ndindex(fit.exponent.shape):
        where = ", ".join(f"{d}={fit[d].values[i]:g}" for d, i in zip(dims, idx) if fit.sizes[d] > 1) or "all"
        b, lo, hi, rel = (
            float(fit[k].values[idx]) for k in ("exponent", "exponent_low", "exponent_high", "half_width")
        )
        if not np.isfinite(b):
            left = " (not counted: no run converged)" if fit.n_points.values[idx] == 0 else ""
            out.append(f"{where}: {fit.note.values[idx]}{left}")
            continue
        if np.isnan(rel):
            out.append(f"{where}: exponent {b:.4g}, {fit.note.values[idx] or 'no interval'}")
            continue
        mark = "within" if rel <= target else ">"
        zero = "; the interval holds 0: a relative target may never be met" if lo <= 0 <= hi else ""
        out.append(f"{where}: exponent {b:.4g} [{lo:.4g}, {hi:.4g}] ±{100 * rel:.1f}% ({mark} {100 * target:g}%{zero})")
    return out


def more_seeds(axis, n: int):
    """The seed axis ``axis`` (of a Spec: a range or a tuple) extended to ``n`` values, as a spec writes it:
    a range continues with its step ({start, stop, step}); a list takes the next integers after its largest."""
    if isinstance(axis, range):
        return {"start": axis.start, "stop": axis.start + n * axis.step, "step": axis.step}
    values = [int(v) for v in axis_values(axis)]
    top = max(values)
    values += range(top + 1, top + 1 + n - len(values))
    step = values[1] - values[0] if len(values) > 1 else 1
    if step > 0 and values == list(range(values[0], values[0] + step * len(values), step)):
        return {"start": values[0], "stop": values[0] + step * len(values), "step": step}  # a range: 3 numbers
    return values


def next_size(shape: tuple[int, ...], seeds: int, max_cells: int, factor: int = 2) -> int:
    """The seed count of the next round: ``factor`` × ``seeds``, cut to what ``max_cells`` allows (cells of
    the whole grid); ``seeds`` itself when not one more seed fits."""
    per_seed = math.prod(shape) // seeds
    return max(seeds, min(factor * seeds, max_cells // per_seed))
