"""A Markdown report of a results dataset: tables and the PNG figures it links."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import xarray as xr
import yaml

from sweep.schema import Status

from . import complexity, convergence, plots, theory
from .export import last_finite


def markdown_table(header, rows) -> str:
    """A Markdown table of ``rows`` under ``header``; floats with 4 significant digits."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        return "—" if not np.isfinite(v) else f"{v:.4g}"
    return str(v)


def _grid_table(da: xr.DataArray) -> str:
    """A 1-D or 2-D DataArray as a table (rows: its first dim; further dims: their median)."""
    da = da.squeeze(drop=True)
    if da.ndim == 0:
        return markdown_table(["value"], [[da.item()]])
    if da.ndim == 1:
        d = da.dims[0]
        return markdown_table([d, da.name or "value"], [[c, v] for c, v in zip(da[d].values, da.values)])
    rows_dim, cols_dim = da.dims[0], da.dims[1]
    da = da.transpose(rows_dim, cols_dim, ...)
    if da.ndim > 2:
        with warnings.catch_warnings():  # all-NaN groups stay NaN ("—")
            warnings.simplefilter("ignore", RuntimeWarning)
            da = da.median([d for d in da.dims[2:]])
    header = [f"{rows_dim} \\ {cols_dim}"] + [f"{c:g}" if isinstance(c, float) else c for c in da[cols_dim].values]
    return markdown_table(header, [[r, *da.sel({rows_dim: r}).values] for r in da[rows_dim].values])


def _records(a: xr.Dataset) -> list[str]:
    """What W became: the median over seeds, per depth and the next axis, of its effective rank and its
    distance to the target map at the last checkpoint (stores made before these were recorded: nothing)."""
    if "effective_rank" not in a:
        return []
    over = [d for d in a.status.dims if d == "seed"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rank = last_finite(a.effective_rank).median(over).rename("effective rank")
        error = last_finite(a.reconstruction_error).median(over).rename("‖W − M‖_F / ‖M‖_F")
    return [
        "## What W became (docs/theory.md §12)",
        "",
        "At each cell's last checkpoint, median over seeds: the effective rank of W (Roy & Vetterli) and its "
        "distance to the target map M (matrix completion: the ground truth on all entries, also off Ω).",
        "",
        _grid_table(rank),
        "",
        _grid_table(error),
        "",
    ]


def _save(fig, path: Path) -> str:
    fig.savefig(path, dpi=110)
    return path.name


def _cell_name(ds: xr.Dataset, idx) -> str:
    return ", ".join(f"{d}={ds[d].values[i]:g}" for d, i in zip(ds.status.dims, idx))


def _cells(n: int) -> str:
    return f"{n} cell{'s' * (n != 1)}"


def _status_notes(ds: xr.Dataset, counts: dict) -> list[str]:
    """What the status counts mean for the rest of the report: pending and failed cells."""
    md = []
    if counts.get("pending"):
        md += [
            (
                f"{_cells(counts['pending'])} still pending (an unfinished run): the report covers the finished "
                "cells; rerun `linflow run` with the same spec and `--out` to finish the store."
            ),
            "",
        ]
    if counts.get("failed"):
        md += [
            (
                f"{_cells(counts['failed'])} failed (no results; `linflow run --retry-failed` recomputes them). "
                "Errors recorded:"
            ),
            "",
        ]
        failures = json.loads(ds.attrs.get("failures", "[]"))
        md += [f"- {', '.join(f'{k}={v}' for k, v in f['cell'].items())}: {f['error']}" for f in failures[:10]]
        if len(failures) > 10:
            md.append(f"- … and {len(failures) - 10} more")
        md.append("")
    return md


def _missing_theory(a: xr.Dataset, figure_notes: list[str]) -> list[str]:
    """Bullets saying which theory values are missing, and why (store-wide notes, then per-cell
    notes grouped by their reason with a few example cells, then the figures)."""
    lines = [f"- {n}" for n in a.attrs.get("theory_notes", [])]
    note = a.theory_note.transpose(*a.status.dims).values
    for reason in sorted({n for n in note.ravel() if n}):
        where = list(zip(*np.nonzero(note == reason)))
        examples = "; ".join(_cell_name(a, i) for i in where[:3]) + ("; …" if len(where) > 3 else "")
        lines.append(f"- {reason} — {_cells(len(where))} ({examples})")
    lines += [f"- {n}" for n in figure_notes]
    return lines or ["Every theory value was computed."]


def _figures(a: xr.Dataset, out: Path, sizes: dict, pair: list, scalar: bool, notes: list) -> list[tuple[str, str]]:
    """The report's figures as (title, file name); a figure that cannot be drawn is left out and
    ``notes`` says why."""
    figs = []
    finished = bool(a.excess_loss.notnull().any())
    converged = bool(np.isfinite(complexity.converged_times(a)).any())
    todo = []
    if finished:
        todo.append(
            ("Excess loss per depth", "excess_vs_time.png", lambda: plots.excess_vs_time(a, exact=scalar, notes=notes))
        )
    else:
        notes.append("excess loss figure: no cell has results")
    for along in ("init_norm", "depth"):
        if along in sizes and sizes[along] >= 2 and converged:
            todo.append(
                (
                    f"T_ε against {along}",
                    f"time_to_eps_{along}.png",
                    lambda along=along: plots.time_to_eps_scaling(a, along),
                )
            )
    if len(pair) == 2:
        todo.append(
            ("Convergence fractions", "convergence.png", lambda: plots.convergence_heatmap(a, x=pair[1], y=pair[0]))
        )
    if scalar and np.isfinite(a.theory_time_to_eps).any() and converged:
        todo.append(("Observed against exact T_ε", "theory_scatter.png", lambda: plots.theory_scatter(a)))
    for title, name, draw in todo:
        try:
            figs.append((title, _save(draw(), out / name)))
        except Exception as exc:  # noqa: BLE001 — the report stands without it, and says why
            notes.append(f"figure {name} not drawn: {type(exc).__name__}: {exc}")
    return figs


def _where_ended(a: xr.Dataset, sizes: dict, pair: list, outside: str) -> list[str]:
    """Where the runs ended (the critical points of §3), and how many reached the global minimizer."""
    md = ["## Where the runs ended", ""]
    if outside:
        return md + [f"Not classified: §3's critical points are whitened regression's; this problem is {outside}.", ""]
    cls = convergence.classify(a)
    cnames = cls.attrs["flag_meanings"].split()
    md += [
        (
            f"Nearest critical point of the rank-r problem, within {cls.attrs['distance_tol']:g}·‖Z‖_F "
            "(`analysis.convergence.classify`)."
        ),
        "",
        markdown_table(["class", "cells"], [(n, int((cls == i).sum())) for i, n in enumerate(cnames)]),
        "",
    ]
    if pair:
        rate = convergence.convergence_rate(a, over=tuple(d for d in sizes if d not in pair))
        md += ["Fraction reaching the global minimizer (— where no cell has a known limit):", "", _grid_table(rate), ""]
    return md


def _against_theory(a: xr.Dataset, ds: xr.Dataset, scalar: bool) -> list[str]:
    """The limits predicted by §3 against the observed ones, and the bounds of §5 against T_ε."""
    md = []
    agree = convergence.agreement(a)
    md += [
        "## Theory agreement (docs/theory.md §3, derived)",
        "",
        (
            f"{agree.attrs['compared']} cells compared, **{agree.attrs['disagreements']} disagree**, "
            f"{agree.attrs['escapes']} left a strict saddle through round-off, "
            f"{agree.attrs['not_compared']} not compared (ended near no critical point, no result, or a start §3 "
            "does not decide)."
        ),
        "",
    ]
    escaped = agree.escaped.values.astype(bool) if agree.sizes["cell"] else np.zeros(0, bool)
    for label, which in (("Disagreements", ~escaped), ("Escapes through round-off", escaped)):
        picked = np.flatnonzero(which)
        if not len(picked):
            continue
        if label.startswith("Escapes"):
            md += [
                (
                    f"{label}: §3 predicts the exact flow, which stays on a strict saddle's stable set; a simulation "
                    "leaves it through round-off (growing exponentially) and descends to a critical point of lower "
                    "loss (`analysis.convergence.agreement`). Not counted as disagreements."
                ),
                "",
            ]
        else:
            md += [f"{label}:", ""]
        rows = []
        for i in picked[:20]:
            c = agree.isel(cell=i)
            rows.append([", ".join(f"{d}={c[d].item():g}" for d in ds.status.dims), int(c.predicted), int(c.observed)])
        md += [markdown_table(["cell", "predicted", "observed"], rows), ""]
        if len(picked) > 20:
            md += [f"… and {len(picked) - 20} more.", ""]
    md += ["Limits: 0 the global minimizer, −1 zero, k ≥ 2 the saddle s_k u_k v_kᵀ.", ""] if agree.sizes["cell"] else []

    ev = complexity.empirical_vs_theory(a)
    md += [
        "## Bounds (docs/theory.md §5, derived)",
        "",
        markdown_table(
            ["bound", "cells where it applies", "violations (bound below observed T_ε)"],
            [
                [
                    "certificate (dy = 1, cos θ0 > 0)",
                    ev.attrs["certificate_applicable"],
                    ev.attrs["certificate_violations"],
                ],
                ["Arora et al. deficiency margin", ev.attrs["arora_applicable"], ev.attrs["arora_violations"]],
            ],
        ),
        "",
    ]
    ratio = ev.ratio_exact.values
    ratio = ratio[np.isfinite(ratio)]
    if scalar and ratio.size:
        md += [
            (
                f"Observed over exact T_ε: median {float(np.median(ratio)):.10g}, "
                f"max |ratio − 1| = {float(np.max(np.abs(ratio - 1))):.3g} over {ratio.size} cells."
            ),
            "",
        ]
    return md


def write_report(ds: xr.Dataset, out: str | Path, title: str = "linflow report") -> Path:
    """Write ``out/report.md`` and its figures; returns the report's path.

    Stands on any store ``linflow run`` wrote — pending, failed and diverged cells, one seed, one
    cell: where a number cannot be had (no CI with one seed, no exact T_ε for dy ≠ 1, a closed
    form that raised at some cell), the report says why instead of failing."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spec = yaml.safe_load(ds.attrs["spec"])
    scalar = ds.sizes["out"] == 1
    a = complexity.safe_annotate(ds)
    sizes = {d: ds.sizes[d] for d in ds.status.dims}
    md = [
        f"# {title}",
        "",
        (
            f"Fingerprint `{ds.attrs.get('fingerprint')}`, linflow {ds.attrs.get('linflow_version')}; model "
            f"`{spec['model']}`, init `{spec['init']['scheme']}`, integrator `{spec['integrator']}`, horizon "
            f"{spec['horizon']}, eps {spec['eps']}."
        ),
        "",
        "Grid: " + " × ".join(f"{d} {n}" for d, n in sizes.items()) + f" = {int(np.prod(list(sizes.values())))} cells.",
        "",
    ]

    names = Status.names(ds)
    counts = {n: int((ds.status == i).sum()) for i, n in enumerate(names)}
    done = sum(counts.values()) - counts.get("pending", 0)
    md += ["## Status", "", f"{done:,} of {sum(counts.values()):,} cells done.", ""]
    md += [markdown_table(["status", "cells"], list(counts.items())), "", *_status_notes(ds, counts)]

    pair = [d for d in ("depth", "init_norm", "init_angle", "width") if d in sizes and sizes[d] > 1][:2]
    outside = theory.outside(spec["problem"])  # §3–§5 (critical points, limits, bounds) assume whitening
    md += _where_ended(a, sizes, pair, outside)

    table = complexity.time_to_eps_table(a, "depth")
    md += [
        "## Time to ε",
        "",
        "Median over seeds of T_ε (converged runs; flow time; — where none converged):",
        "",
        _grid_table(table.rename("median T_ε")),
        "",
    ]
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
                rows.append(
                    [
                        ", ".join(f"{d}={v:g}" for d, v in sel.items()) or "all",
                        pt.exponent.item(),
                        pt.exponent_low.item(),
                        pt.exponent_high.item(),
                        pt.r2.item(),
                        int(np.nan_to_num(pt.n_points.item())),
                        pt.note.item() or "",
                    ]
                )
            what = "log T_ε vs log " + along if fit.attrs["form"] == "power" else "log T_ε vs " + along
            ci = (
                f"no CI: one {fit.attrs['over']}"
                if fit.attrs["ci_method"].startswith("none")
                else f"{fit.attrs['level']:.0%} CI, {fit.attrs['ci_method']}"
            )
            fits_md += [
                f"**{what}** ({ci}):",
                "",
                markdown_table(["cells", "slope", "CI low", "CI high", "r²", "runs", "note"], rows),
                "",
            ]
    if fits_md:
        md += ["## Scaling fits", "", *fits_md]

    md += [] if outside else _against_theory(a, ds, scalar)
    md += _records(a)

    figure_notes = []
    figs = _figures(a, out, sizes, pair, scalar, figure_notes)
    md += ["## What could not be computed", "", *_missing_theory(a, figure_notes), ""]
    md += ["## Figures", ""]
    md += [f"![{t}]({f})" for t, f in figs] + [""]
    path = out / "report.md"
    path.write_text("\n".join(md))
    return path
