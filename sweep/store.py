"""The Zarr store: the only code that writes results.

The template (every variable, all cells pending) is laid out first with xarray; each finished batch
is then written as whole chunks straight into the Zarr arrays, ``status`` last, so a cell counts as
done only once all of its numbers are on disk.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import xarray as xr
import zarr

from . import __version__, kernel
from .batch import FILL, chunk_shape, regions
from .problem import Problem
from .spec import Spec, SpecError

STATUS_NAMES = kernel.STATUS_MEANINGS.split()

# name: (long_name, units, dims after the axes, dtype); pending fill values in batch.FILL
RESULTS = {
    "loss": ("training loss ½‖Y − W X‖²_F", "", ("checkpoint",), "f8"),
    "excess_loss": ("excess loss (loss − L*, L* the rank-r global minimum)", "", ("checkpoint",), "f8"),
    "time_to_eps": ("first flow time with excess loss ≤ eps", "flow time", (), "f8"),
    "status": ("trajectory status", "", (), "i1"),
    "steps": ("accepted integrator steps", "", (), "i8"),
    "rhs_evals": ("right-hand-side evaluations", "", (), "i8"),
    "w_init": ("end-to-end matrix W(0) = W_N⋯W_1 at t = 0", "", ("out", "in"), "f8"),
    "w_final": ("end-to-end matrix at the end of the trajectory", "", ("out", "in"), "f8"),
    "imbalance": ("max_j ‖W_{j+1}ᵀW_{j+1} − W_jW_jᵀ‖_F at t = 0", "", (), "f8"),
    "imbalance_drift": ("max_j change of W_{j+1}ᵀW_{j+1} − W_jW_jᵀ by the end (Frobenius)", "", (), "f8"),
}
AXIS_ATTRS = {
    "depth": {"long_name": "depth N (number of layers)"},
    "width": {"long_name": "width of every hidden layer"},
    "init_norm": {"long_name": "‖W(0)‖₂ / ‖Z‖₂"},
    "init_angle": {"long_name": "angle between W(0) and Z", "units": "rad"},
    "seed": {"long_name": "initialization seed"},
}


def template(spec: Spec, problem: Problem, fingerprint: str) -> tuple[xr.Dataset, dict]:
    """The dataset with every cell pending, and the Zarr encoding (chunks aligned to batches)."""
    axes = tuple(spec.axes)
    shape = spec.shape
    chunks = chunk_shape(shape, axes, spec.batch)
    extra = {"checkpoint": spec.checkpoints["count"], "out": problem.dy, "in": problem.dx}
    data_vars, encoding = {}, {}
    for name, (long_name, units, tail, dtype) in RESULTS.items():
        fill = FILL[name]
        attrs = {"long_name": long_name}
        if units:
            attrs["units"] = units
        if name == "status":
            attrs["flag_values"] = np.arange(len(STATUS_NAMES), dtype="i1")
            attrs["flag_meanings"] = kernel.STATUS_MEANINGS
        full = shape + tuple(extra[d] for d in tail)
        data_vars[name] = (axes + tail, np.broadcast_to(np.array(fill, dtype=dtype), full), attrs)  # no memory
        encoding[name] = {"chunks": chunks + tuple(extra[d] for d in tail)}
        if dtype != "f8":
            encoding[name]["_FillValue"] = None
    data_vars["target"] = (("out", "in"), problem.target, {"long_name": "target Z = Y Xᵀ"})
    data_vars["x"] = (("in", "sample"), problem.x, {"long_name": "inputs X (whitened, X Xᵀ = I)"})
    data_vars["y"] = (("out", "sample"), problem.y, {"long_name": "outputs Y"})
    coords = {name: (name, np.asarray(values), AXIS_ATTRS[name]) for name, values in spec.axes.items()}
    coords["checkpoint"] = ("checkpoint", np.arange(extra["checkpoint"]), {"long_name": "checkpoint index"})
    coords["time"] = ("checkpoint", spec.checkpoint_times(), {"long_name": "flow time", "units": "flow time"})
    attrs = {
        "title": "linflow sweep: gradient flow of deep linear networks",
        "spec": spec.to_yaml(),
        "linflow_version": __version__,
        "kernel_version": kernel.KERNEL_VERSION,
        "fingerprint": fingerprint,
        "eps": spec.eps,
        "data_whitened_by_linflow": int(problem.whitened_from_file),
    }
    return xr.Dataset(data_vars, coords=coords, attrs=attrs), encoding


def create(path: str | Path, spec: Spec, problem: Problem, fingerprint: str) -> None:
    """Lay out the template in a temporary folder beside ``path`` and rename it into place, so a
    crash or a full disk never leaves a half-written store that looks valid."""
    path = Path(path)
    ds, encoding = template(spec, problem, fingerprint)
    for stale in path.parent.glob(f".{path.name}.creating-*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    tmp = path.with_name(f".{path.name}.creating-{os.getpid()}")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
            ds.to_zarr(str(tmp), mode="w", encoding=encoding, zarr_format=3, consolidated=True)
        os.rename(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def is_store(path: str | Path) -> bool:
    p = Path(path)
    return (p / "zarr.json").is_file() or (p / ".zgroup").is_file()


def open_group(path: str | Path, mode: str = "r") -> zarr.Group:
    if not is_store(path):
        raise SpecError("--out", f"{path} exists but is not a linflow store")
    group = zarr.open_group(str(path), mode=mode)
    if "fingerprint" not in group.attrs or "status" not in group:
        raise SpecError("--out", f"{path} is a Zarr store but not a linflow store (no fingerprint/status)")
    return group


def layout(group: zarr.Group) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(grid shape, chunk shape) over the axes, as laid out in the store."""
    status = group["status"]
    return tuple(status.shape), tuple(status.chunks)


def todo(group: zarr.Group, retry_failed: bool = False) -> list[tuple[tuple[slice, ...], np.ndarray]]:
    """(chunk, mask of the cells to compute) for every chunk holding a pending cell — or, with
    ``retry_failed``, a failed one. A pending chunk is computed whole (chunks are written whole)."""
    shape, chunks = layout(group)
    status = group["status"][...]
    out = []
    for r in regions(shape, chunks):
        st = status[r]
        want = st == kernel.PENDING
        if retry_failed:
            want |= st == kernel.FAILED
        if want.any():
            out.append((r, want))
    return out


def pending_regions(group: zarr.Group) -> list[tuple[slice, ...]]:
    """Chunks that still hold a pending cell."""
    return [r for r, _ in todo(group)]


def write_batch(group: zarr.Group, region: tuple[slice, ...], results: dict[str, np.ndarray], mask=None) -> None:
    """Write one batch as whole chunks, ``status`` last. With ``mask``, only the masked cells take
    the new values; the rest of the chunk is read back and rewritten unchanged."""
    partial = mask is not None and not np.all(mask)
    for name in [n for n in RESULTS if n != "status"] + ["status"]:
        values = results[name]
        if partial:
            values = group[name][region]
            values[mask] = results[name][mask]
        group[name][region] = values


def failures(group: zarr.Group) -> list[dict]:
    """The errors recorded for failed cells: [{"cell": {axis: value}, "error": text}, …]."""
    return json.loads(group.attrs.get("failures", "[]"))


def record_failures(group: zarr.Group, region, mask, errors: list[tuple[dict, str]]) -> None:
    """Replace the recorded errors of the cells just computed (``mask`` in ``region``) by ``errors``."""
    names = list(group["status"].metadata.dimension_names)
    coords = {n: group[n][...] for n in names}
    done = set()
    for idx in zip(*np.nonzero(mask)):
        done.add(tuple(_plain(coords[n][s.start + i]) for n, s, i in zip(names, region, idx)))
    kept = [f for f in failures(group) if tuple(f["cell"][n] for n in names) not in done]
    kept += [{"cell": cell, "error": error} for cell, error in errors]
    if kept or "failures" in group.attrs:
        group.attrs["failures"] = json.dumps(kept[-MAX_FAILURES:])


def _plain(v):
    return v.item() if hasattr(v, "item") else v


MAX_FAILURES = 1000


def counts(group_or_path) -> dict[str, int]:
    group = group_or_path if isinstance(group_or_path, zarr.Group) else open_group(group_or_path)
    status = group["status"][...]
    return {name: int(np.sum(status == code)) for code, name in enumerate(STATUS_NAMES)}


def open_results(path: str | Path):
    """The results dataset of a store (lazy, as ``xr.open_zarr`` gives it), checked to be linflow's."""
    open_group(path)
    return xr.open_zarr(str(path))
