"""One row per cell: the axes, the outcome, and (optionally) the theory beside it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import xarray as xr

from sweep.schema import Status

from . import complexity, convergence

COLUMNS = ["status", "time_to_eps", "final_loss", "final_excess_loss", "steps", "rhs_evals", "imbalance_drift"]
THEORY = [
    "limit_class",
    "theory_limit",
    "theory_time_to_eps",
    "certificate_time_bound",
    "arora_covered",
    "arora_time_bound",
    "alignment_p1",
    "theory_note",
]


def last_finite(v: xr.DataArray) -> xr.DataArray:
    """The last finite value along ``checkpoint`` (a run stopped at eps has NaN after it)."""
    finite = v.notnull()
    last = (finite * xr.DataArray(range(v.sizes["checkpoint"]), dims="checkpoint")).argmax("checkpoint")
    return v.isel(checkpoint=last).where(finite.any("checkpoint")).drop_vars(["checkpoint", "time"], errors="ignore")


def cell_table(ds: xr.Dataset, with_theory: bool = False):
    """A pandas DataFrame with one row per cell (the axes as columns). ``status`` and
    ``limit_class`` are written as their names; the final losses (and, in stores that record them, the
    final effective rank and reconstruction error) are the last finite checkpoint.
    ``with_theory`` adds :func:`analysis.complexity.safe_annotate`'s columns, ``theory_note`` saying
    why a cell's theory values are missing (any store: pending, failed, a closed form that raised)."""
    names = Status.names(ds)
    cols = xr.Dataset(
        {
            "status": ds.status,
            "time_to_eps": ds.time_to_eps,
            "final_loss": last_finite(ds.loss),
            "final_excess_loss": last_finite(ds.excess_loss),
            "steps": ds.steps,
            "rhs_evals": ds.rhs_evals,
            "imbalance_drift": ds.imbalance_drift,
            **{f"final_{n}": last_finite(ds[n]) for n in ("effective_rank", "reconstruction_error") if n in ds},
        }
    )
    if with_theory:
        a = complexity.safe_annotate(ds)
        a = a.assign(limit_class=convergence.classify(a))
        cols = cols.merge(a[THEORY[1:]]).assign(limit_class=a.limit_class)
    df = cols.to_dataframe(dim_order=list(ds.status.dims)).reset_index()
    df = df.drop(columns=[c for c in ("time",) if c in df.columns])
    df["status"] = [names[int(i)] for i in df["status"]]
    if with_theory:
        classes = convergence.CLASS_MEANINGS.split()
        df["limit_class"] = [classes[int(i)] for i in df["limit_class"]]
    return df


def write_table(df, out: str | Path, fmt: str = "csv") -> None:
    """Write ``df`` to ``out`` as CSV or Parquet all at once: into a temporary file beside it, then
    renamed over it, so a full disk or a crash never leaves a truncated table (OSError, nothing
    written)."""
    out = Path(out)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if fmt == "csv":
                df.to_csv(f, index=False)
            else:
                df.to_parquet(f, index=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
