"""The Zarr store: the only code that writes results.

The template (every variable, all cells pending) is laid out first with xarray; each finished batch
is then written as whole chunks straight into the Zarr arrays, ``status`` last, so a cell counts as
done only once all of its numbers are on disk.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import xarray as xr
import yaml
import zarr

from . import __version__, kernel
from .batch import chunk_shape, regions
from .problem import Problem
from .spec import Spec, SpecError, parse

STATUS_NAMES = kernel.STATUS_MEANINGS.split()

# name: (long_name, units, dims after the axes, dtype, fill)
RESULTS = {
    "loss": ("training loss ½‖Y − W X‖²_F", "", ("checkpoint",), "f8", np.nan),
    "excess_loss": ("excess loss (loss − L*, L* the rank-r global minimum)", "", ("checkpoint",), "f8", np.nan),
    "time_to_eps": ("first flow time with excess loss ≤ eps", "flow time", (), "f8", np.nan),
    "status": ("trajectory status", "", (), "i1", kernel.PENDING),
    "steps": ("accepted integrator steps", "", (), "i8", 0),
    "rhs_evals": ("right-hand-side evaluations", "", (), "i8", 0),
    "w_init": ("end-to-end matrix W(0) = W_N⋯W_1 at t = 0", "", ("out", "in"), "f8", np.nan),
    "w_final": ("end-to-end matrix at the end of the trajectory", "", ("out", "in"), "f8", np.nan),
    "imbalance": ("max_j ‖W_{j+1}ᵀW_{j+1} − W_jW_jᵀ‖_F at t = 0", "", (), "f8", np.nan),
    "imbalance_drift": ("max_j change of W_{j+1}ᵀW_{j+1} − W_jW_jᵀ by the end (Frobenius)", "", (), "f8", np.nan),
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
    for name, (long_name, units, tail, dtype, fill) in RESULTS.items():
        attrs = {"long_name": long_name}
        if units:
            attrs["units"] = units
        if name == "status":
            attrs["flag_values"] = np.arange(len(STATUS_NAMES), dtype="i1")
            attrs["flag_meanings"] = kernel.STATUS_MEANINGS
        full = shape + tuple(extra[d] for d in tail)
        data_vars[name] = (axes + tail, np.full(full, fill, dtype=dtype), attrs)
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
    ds, encoding = template(spec, problem, fingerprint)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        ds.to_zarr(str(path), mode="w-", encoding=encoding, zarr_format=3, consolidated=True)


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


def stored_spec(group: zarr.Group) -> Spec:
    return parse(yaml.safe_load(group.attrs["spec"]))


def layout(group: zarr.Group) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(grid shape, chunk shape) over the axes, as laid out in the store."""
    status = group["status"]
    return tuple(status.shape), tuple(status.chunks)


def pending_regions(group: zarr.Group) -> list[tuple[slice, ...]]:
    """Chunks that still hold a pending cell (a chunk is written whole, status last)."""
    shape, chunks = layout(group)
    status = group["status"][...]
    return [r for r in regions(shape, chunks) if np.any(status[r] == kernel.PENDING)]


def write_batch(group: zarr.Group, region: tuple[slice, ...], results: dict[str, np.ndarray]) -> None:
    """Write one batch (one chunk of every result variable); status last."""
    for name in RESULTS:
        if name != "status":
            group[name][region] = results[name]
    group["status"][region] = results["status"]


def counts(group_or_path) -> dict[str, int]:
    group = group_or_path if isinstance(group_or_path, zarr.Group) else open_group(group_or_path)
    status = group["status"][...]
    return {name: int(np.sum(status == code)) for code, name in enumerate(STATUS_NAMES)}
