"""Figures of a results dataset (matplotlib, headless: each function returns a Figure).

Theory curves are the derived closed forms of docs/theory.md §4 (labelled "exact (derived)")."""

from __future__ import annotations

import warnings

import numpy as np
import xarray as xr
import yaml
from matplotlib.figure import Figure

from . import complexity, convergence, theory


def figure(ncols=1, width=6.4, height=4.4):
    """A figure of ``ncols`` panels side by side (no pyplot state): (figure, axes)."""
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def _first(ds: xr.Dataset, keep=("depth", "checkpoint")) -> dict:
    """Selection of one value of every axis not in ``keep``, for one-line-per-depth plots: the first
    values whose cells hold the most results (the first value of each axis when every cell has one)."""
    rest = [d for d in ds.status.dims if d not in keep]
    if not rest:
        return {}
    have = ds.excess_loss.notnull().any("checkpoint").sum([d for d in ds.status.dims if d in keep]).transpose(*rest)
    idx = np.unravel_index(int(np.argmax(have.values)), have.shape)
    return {d: ds[d].values[i] for d, i in zip(rest, idx)}


def _balanced(ds: xr.Dataset) -> bool:
    """The store's starts are balanced (its spec says so; a dataset without a spec is taken to be)."""
    spec = yaml.safe_load(ds.attrs.get("spec", "")) or {}
    return spec.get("init", {}).get("scheme", "balanced") in theory.BALANCED


def excess_vs_time(ds: xr.Dataset, select: dict | None = None, exact: bool = True, notes: list | None = None) -> Figure:
    """Excess loss against flow time (log y), one line per depth, for one start (``select`` picks
    it; default the first init_norm / seed / … with results), with the exact curve dashed beside it
    (scalar output, balanced starts: elsewhere there is none). A depth whose exact curve cannot be
    computed (no start, or the closed form raised) is drawn without it; why is appended to ``notes``."""
    sel = {**_first(ds), **(select or {})}
    cell = ds.sel(sel)
    notes = [] if notes is None else notes
    fig, (ax,) = figure()
    t = ds.time.values
    exact = exact and ds.sizes["out"] == 1 and _balanced(ds)
    r0, zeta, theta0 = theory.polar_coordinates(cell) if exact else (None, None, None)
    drawn, missing, tops = [], [], []
    for i, n in enumerate(cell.depth.values):
        color = f"C{i}"
        e = cell.excess_loss.sel(depth=n).values
        ax.semilogy(t[1:], e[1:], color=color, lw=3, alpha=0.45, label=f"N = {n}")
        if not exact:
            continue
        rn, thn = float(r0.sel(depth=n)), float(theta0.sel(depth=n))
        if not (np.isfinite(rn) and np.isfinite(thn)):
            missing.append(n)
            notes.append(f"exact curve for N = {n} not drawn: the cell has no start (pending or failed)")
            continue
        try:
            with complexity.quiet():
                curve = theory.exact_excess_loss(int(n), rn, zeta, thn, t[1:])
        except Exception as exc:  # noqa: BLE001 — the simulated curve stands alone; the report says why
            missing.append(n)
            notes.append(f"exact curve for N = {n} not drawn: the closed form raised {type(exc).__name__}: {exc}")
            continue
        drawn.append(thn)
        tops.append(np.max(curve[np.isfinite(curve)], initial=0.0))
        ax.semilogy(t[1:], curve, color=color, ls="--", lw=1.2)
    ttl = ""
    if drawn:
        ax.plot([], [], "k--", lw=1.2, label="exact (derived, §4)")
        ttl = f"cos θ0 = {np.cos(drawn[0]):.3f}"
    if missing:
        ax.text(
            0.02,
            0.02,
            "no exact curve for N = " + ", ".join(map(str, missing)) + " (see the report)",
            transform=ax.transAxes,
            fontsize="small",
            color="0.3",
        )
    what = ", ".join(f"{k} = {v:g}" for k, v in sel.items() if ds.sizes[k] > 1)
    shown = cell.excess_loss.values[..., 1:]
    shown = shown[np.isfinite(shown) & (shown > 0)]
    if shown.size:  # the exact curves go on below round-off (to 1e-300): don't let them squash the view
        ax.set_ylim(max(shown.min(), 1e-30) / 10, max([shown.max(), *tops]) * 10)
    else:
        ax.set_ylim(1e-16, 1.0)
        ax.text(0.5, 0.5, "no results for these cells", transform=ax.transAxes, ha="center", color="0.3")
    ax.set(
        xlabel="flow time t",
        ylabel="excess loss L − L*",
        title="Excess loss per depth" + (f"\n({what}{'; ' if what and ttl else ''}{ttl})" if what or ttl else ""),
    )
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    return fig


def time_to_eps_scaling(ds: xr.Dataset, along: str = "init_norm", fit: bool = True) -> Figure:
    """Median T_ε (bars: interquartile range over seeds) against ``along`` on log-log axes, one line
    per value of the other swept axis, with the fitted scaling law."""
    t = complexity.converged_times(ds)
    other = next((d for d in ds.status.dims if d not in (along, "seed") and ds.sizes[d] > 1), None)
    fits = complexity.fit_scaling(ds, along=along) if fit else None
    fig, (ax,) = figure()
    groups = ds[other].values if other else [None]
    x = ds[along].values.astype(float)
    for i, g in enumerate(groups):
        sub = t.sel({other: g}) if other is not None else t
        dims = [d for d in sub.dims if d != along]
        with warnings.catch_warnings():  # groups where nothing converged plot as gaps
            warnings.simplefilter("ignore", RuntimeWarning)
            med = sub.median(dims).values
            lo, hi = sub.quantile(0.25, dims).values, sub.quantile(0.75, dims).values
        label = f"{other} = {g}" if other else "T_ε"
        yerr = [np.maximum(med - lo, 0), np.maximum(hi - med, 0)]
        ax.errorbar(x, med, yerr=yerr, fmt="o-", color=f"C{i}", capsize=3, label=label)
        if fits is not None:
            f = fits.sel({other: g}) if other is not None and other in fits.dims else fits
            f = f.squeeze()
            if f.exponent.size == 1 and np.isfinite(f.exponent.item()):  # (one fit per line only)
                gx = np.log(x) if fits.attrs["form"] == "power" else x
                low, high = f.exponent_low.item(), f.exponent_high.item()
                ci = f"[{low:.3g}, {high:.3g}]" if np.isfinite(low) else "(no CI)"
                ax.plot(
                    x,
                    np.exp(f.intercept.item() + f.exponent.item() * gx),
                    color=f"C{i}",
                    ls=":",
                    label=f"fit: slope {f.exponent.item():.3g} {ci}",
                )
    ax.set_xscale("log" if along != "depth" else "linear")
    if np.any(t.values > 0):  # (a log axis with nothing positive on it warns)
        ax.set_yscale("log")
    else:
        ax.text(0.5, 0.5, "no converged runs", transform=ax.transAxes, ha="center", color="0.3")
    unit = " (‖W0‖₂/‖Z‖₂)" if along == "init_norm" else ""
    ax.set(xlabel=f"{along}{unit}", ylabel="time to ε, T_ε (flow time)", title=f"Time to ε against {along}")
    ax.legend(fontsize="small")
    ax.grid(True, which="both", alpha=0.3)
    return fig


def convergence_heatmap(ds: xr.Dataset, x: str = "init_norm", y: str = "depth") -> Figure:
    """Fraction of runs reaching the global minimizer over two axes (all others pooled)."""
    over = [d for d in ds.status.dims if d not in (x, y)]
    rate = convergence.convergence_rate(ds, over=tuple(over)).transpose(y, x)
    fig, (ax,) = figure()
    im = ax.imshow(rate.values, vmin=0, vmax=1, cmap="viridis", origin="lower", aspect="auto")
    ax.set_xticks(range(ds.sizes[x]), [f"{v:g}" for v in ds[x].values])
    ax.set_yticks(range(ds.sizes[y]), [f"{v:g}" for v in ds[y].values])
    for (i, j), v in np.ndenumerate(rate.values):
        ax.text(
            j,
            i,
            f"{v:.2f}" if np.isfinite(v) else "—",
            ha="center",
            va="center",
            color="w" if v < 0.6 else "k",
            fontsize="small",
        )
    fig.colorbar(im, ax=ax, label="fraction reaching the global minimizer")
    ax.set(xlabel=x, ylabel=y, title=f"Convergence to the global minimizer over {', '.join(over) or 'cells'}")
    return fig


def theory_scatter(ds: xr.Dataset) -> Figure:
    """Observed T_ε against the exact T_ε (scalar output, balanced), coloured by depth; y = x dashed."""
    a = ds if "theory_time_to_eps" in ds else complexity.safe_annotate(ds)
    t = complexity.converged_times(a)
    fig, (ax,) = figure()
    for i, n in enumerate(a.depth.values):
        obs, ex = t.sel(depth=n).values.ravel(), a.theory_time_to_eps.sel(depth=n).values.ravel()
        ok = np.isfinite(obs) & np.isfinite(ex)
        ax.loglog(ex[ok], obs[ok], "o", color=f"C{i}", ms=4, label=f"N = {n}")
    both = np.concatenate([t.values.ravel(), a.theory_time_to_eps.values.ravel()])
    both = both[np.isfinite(both) & (both > 0)]
    if len(both):
        lim = [both.min() / 1.5, both.max() * 1.5]
        ax.plot(lim, lim, "k--", lw=1, label="observed = exact")
    ax.set(
        xlabel="exact T_ε (derived, §4; flow time)",
        ylabel="observed T_ε (flow time)",
        title="Simulated against exact time to ε",
    )
    ax.legend(fontsize="small")
    ax.grid(True, which="both", alpha=0.3)
    return fig
