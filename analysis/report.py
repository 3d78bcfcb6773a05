"""A Markdown report of a results dataset: tables and the PNG figures it links."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr
import yaml

from . import complexity, convergence, plots, theory


def _table(header, rows) -> str:
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        return "—" if not np.isfinite(v) else f"{v:.4g}"
    return str(v)


def _grid_table(da: xr.DataArray) -> str:
    """A 1-D or 2-D DataArray as a table (rows: its first dim)."""
    da = da.squeeze(drop=True)
    if da.ndim == 0:
        return _table(["value"], [[da.item()]])
    if da.ndim == 1:
        d = da.dims[0]
        return _table([d, da.name or "value"], [[c, v] for c, v in zip(da[d].values, da.values)])
    rows_dim, cols_dim = da.dims[0], da.dims[1]
    da = da.transpose(rows_dim, cols_dim, ...)
    if da.ndim > 2:
        da = da.median([d for d in da.dims[2:]])
    header = [f"{rows_dim} \\ {cols_dim}"] + [f"{c:g}" if isinstance(c, float) else c for c in da[cols_dim].values]
    return _table(header, [[r, *da.sel({rows_dim: r}).values] for r in da[rows_dim].values])


def _save(fig, path: Path) -> str:
    fig.savefig(path, dpi=110)
    return path.name


def write_report(ds: xr.Dataset, out: str | Path, title: str = "linflow report") -> Path:
    """Write ``out/report.md`` and its figures; returns the report's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spec = yaml.safe_load(ds.attrs["spec"])
    scalar = ds.sizes["out"] == 1
    a = theory.annotate(ds)
    sizes = {d: ds.sizes[d] for d in ds.status.dims}
    md = [f"# {title}", "",
          (f"Fingerprint `{ds.attrs.get('fingerprint')}`, linflow {ds.attrs.get('linflow_version')}; model "
          f"`{spec['model']}`, init `{spec['init']['scheme']}`, integrator `{spec['integrator']}`, horizon "
          f"{spec['horizon']}, eps {spec['eps']}."), "",
          "Grid: " + " × ".join(f"{d} {n}" for d, n in sizes.items()) + f" = {int(np.prod(list(sizes.values())))} cells.", ""]

    names = ds.status.attrs.get("flag_meanings", "pending converged unconverged diverged failed").split()
    counts = [(n, int((ds.status == i).sum())) for i, n in enumerate(names)]
    md += ["## Status", "", _table(["status", "cells"], counts), ""]

    cls = convergence.classify(a)
    cnames = cls.attrs["flag_meanings"].split()
    md += ["## Where the runs ended", "",
           (f"Nearest critical point of the rank-r problem, within {cls.attrs['distance_tol']:g}·‖Z‖_F "
           "(`analysis.convergence.classify`)."), "",
           _table(["class", "cells"], [(n, int((cls == i).sum())) for i, n in enumerate(cnames)]), ""]
    pair = [d for d in ("depth", "init_norm", "init_angle", "width") if d in sizes and sizes[d] > 1][:2]
    if pair:
        rate = convergence.convergence_rate(a, over=tuple(d for d in sizes if d not in pair))
        md += ["Fraction reaching the global minimizer:", "", _grid_table(rate), ""]

    table = complexity.time_to_eps_table(a, "depth")
    md += ["## Time to ε", "", "Median over seeds of T_ε (converged runs; flow time):", "",
           _grid_table(table.rename("median T_ε")), ""]
    fits_md = []
    for along in ("init_norm", "depth", "init_angle"):
        if along in sizes and sizes[along] >= 2:
            fit = complexity.fit_scaling(a, along=along, form="loglinear" if along != "init_norm" else "power")
            f2 = fit.squeeze(drop=True)
            others = list(f2.exponent.dims)
            rows = []
            for idx in np.ndindex(f2.exponent.shape):
                sel = {d: f2[d].values[i] for d, i in zip(others, idx)}
                pt = f2.isel({d: i for d, i in zip(others, idx)})
                rows.append([", ".join(f"{d}={v:g}" for d, v in sel.items()) or "all", pt.exponent.item(),
                             pt.exponent_low.item(), pt.exponent_high.item(), pt.r2.item(), int(np.nan_to_num(pt.n_points.item()))])
            what = "log T_ε vs log " + along if fit.attrs["form"] == "power" else "log T_ε vs " + along
            fits_md += [f"**{what}** ({fit.attrs['level']:.0%} CI, {fit.attrs['ci_method']}):", "",
                        _table(["cells", "slope", "CI low", "CI high", "r²", "runs"], rows), ""]
    if fits_md:
        md += ["## Scaling fits", "", *fits_md]

    agree = convergence.agreement(a)
    md += ["## Theory agreement (theory.md §3, derived)", "",
           (f"{agree.attrs['compared']} cells compared, **{agree.attrs['disagreements']} disagree**, "
           f"{agree.attrs['not_compared']} not compared (ended near no critical point, or a start §3 does not decide)."), ""]
    if agree.sizes["cell"]:
        rows = []
        for i in range(min(agree.sizes["cell"], 20)):
            c = agree.isel(cell=i)
            rows.append([", ".join(f"{d}={c[d].item():g}" for d in ds.status.dims), int(c.predicted), int(c.observed)])
        md += [_table(["cell", "predicted", "observed"], rows), ""]

    ev = complexity.empirical_vs_theory(a)
    md += ["## Bounds (theory.md §5, derived)", "",
           _table(["bound", "cells where it applies", "violations (bound below observed T_ε)"],
                  [["certificate (dy = 1, cos θ0 > 0)", ev.attrs["certificate_applicable"], ev.attrs["certificate_violations"]],
                   ["Arora et al. deficiency margin", ev.attrs["arora_applicable"], ev.attrs["arora_violations"]]]), ""]
    if scalar and np.isfinite(ev.ratio_exact).any():
        dev = abs(ev.ratio_exact - 1)
        md += [(f"Observed over exact T_ε: median {float(ev.ratio_exact.median()):.10g}, "
               f"max |ratio − 1| = {float(dev.max()):.3g} over {int(ev.ratio_exact.notnull().sum())} cells."), ""]

    md += ["## Figures", ""]
    figs = []
    if "depth" in sizes:
        figs.append(("Excess loss per depth", _save(plots.excess_vs_time(a, exact=scalar), out / "excess_vs_time.png")))
    for along in ("init_norm", "depth"):
        if along in sizes and sizes[along] >= 2 and np.isfinite(complexity.converged_times(a)).any():
            figs.append((f"T_ε against {along}", _save(plots.time_to_eps_scaling(a, along), out / f"time_to_eps_{along}.png")))
    if len(pair) == 2:
        figs.append(("Convergence fractions", _save(plots.convergence_heatmap(a, x=pair[1], y=pair[0]), out / "convergence.png")))
    if scalar and np.isfinite(a.theory_time_to_eps).any():
        figs.append(("Observed against exact T_ε", _save(plots.theory_scatter(a), out / "theory_scatter.png")))
    md += [f"![{t}]({f})" for t, f in figs] + [""]
    path = out / "report.md"
    path.write_text("\n".join(md))
    return path
