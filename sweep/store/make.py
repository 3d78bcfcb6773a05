"""Laying a store out: the template (every cell pending), its atomic creation beside its place, growth
along its axes in one atomic commit, and settling what a killed driver left."""

from __future__ import annotations

import base64
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import xarray as xr
import zarr

from .. import kernel
from ..batch import chunk_shape
from ..problem import Problem
from ..schema import AXES, RESULTS, stored, tail_shape
from ..spec import Spec, axis_values
from ..version import __version__
from . import remote
from .chunks import results_of
from .group import check_tree, open_group

COORD_CHUNK = 2**16  # values per chunk of an axis' coordinate (512 KiB of int64 or float64)


# ── lost and torn chunks ──────────────────────────────────────────────────────────────────────────
# A partial copy (cp, rsync) or a torn file can lose a chunk; Zarr reads a lost chunk as fill values,
# so a done cell would silently read as NaN. Stores made with EVERY_CHUNK set hold every chunk of
# every computed batch (even one of fill values only): there a lost chunk of a done cell is always
# detectable by a directory listing. Older stores skipped all-fill chunks; there a chunk must exist
# only where a done cell of these statuses holds a value other than the fill.
EVERY_CHUNK = "every_chunk_written"


def template(spec: Spec, problem: Problem, fingerprint: str, range_coords: bool = True) -> tuple[xr.Dataset, dict]:
    """The dataset with every cell pending, and the Zarr encoding (chunks aligned to batches).
    ``range_coords=False`` leaves out the coordinates of the axes given as ranges (:func:`create`
    writes them piece by piece)."""
    axes = tuple(spec.axes)
    shape = spec.shape
    chunks = chunk_shape(shape, axes, spec.batch)
    count = spec.checkpoints.count
    data_vars, encoding = {}, {}
    names = stored(spec.record)
    for name in names:
        var = RESULTS[name]
        tail = tail_shape(var, count, problem.dy, problem.dx)
        data_vars[name] = (
            axes + var.tail,
            np.broadcast_to(np.array(var.fill, dtype=var.dtype), shape + tail),
            var.attrs(),
        )  # a broadcast: no memory
        encoding[name] = {"chunks": chunks + tail}
        if var.dtype != "f8":
            encoding[name]["_FillValue"] = None
    data_vars.update(problem.stored())
    coords = {
        name: (name, spec.values(name), AXES[name].attrs())
        for name, values in spec.axes.items()
        if range_coords or not isinstance(values, range)
    }
    for name in spec.axes:  # room to grow: a million seeds added to a store of 8 are 16 chunk files, not 125,000
        encoding[name] = {"chunks": (COORD_CHUNK,)}
    coords["checkpoint"] = ("checkpoint", np.arange(count), {"long_name": "checkpoint index"})
    coords["time"] = ("checkpoint", spec.checkpoint_times(), {"long_name": "flow time", "units": "flow time"})
    attrs = {
        "title": "linflow sweep: gradient flow of deep linear networks",
        "spec": spec.to_yaml(),
        "linflow_version": __version__,
        "kernel_version": kernel.KERNEL_VERSION,
        "fingerprint": fingerprint,
        "eps": spec.eps,
        "data_whitened_by_linflow": int(problem.whitened_from_file),
        "results": list(names),
        EVERY_CHUNK: 1,
    }
    return xr.Dataset(data_vars, coords=coords, attrs=attrs), encoding


def create(path: str | Path, spec: Spec, problem: Problem, fingerprint: str) -> None:
    """Lay out the template in a temporary folder beside ``path`` and rename it into place, so a
    crash or a full disk never leaves a half-written store that looks valid.

    Only metadata and the fixed arrays (coordinates, data) are written: xarray writes the dataset
    without the results, then each result variable is declared as the Zarr array xarray would have
    made of it (same metadata: :func:`_declare`), with no chunk — a missing chunk reads as its fill
    value, which is what a pending cell holds. Time and memory grow with the axes, not the cells.
    A store at a URL is made so on the local disk, then uploaded, its root metadata last
    (:func:`sweep.store.remote.create`)."""
    if remote.is_url(path):
        return remote.create(path, lambda folder: create(folder, spec, problem, fingerprint))
    path = Path(path)
    ds, encoding = template(spec, problem, fingerprint, range_coords=False)
    prefix = f".{path.name}.creating-"  # compared, never globbed: a store's name may hold * ? [ ]
    for stale in os.listdir(path.parent):  # left by a killed run (a pid after the prefix)
        pid = stale[len(prefix) :]
        if stale.startswith(prefix) and pid.isascii() and pid.isdigit():
            shutil.rmtree(path.parent / stale, ignore_errors=True)  # never follows a link
    tmp = path.with_name(f".{path.name}.creating-{os.getpid()}")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
            fixed = ds.drop_vars(list(stored(spec.record)))
            coords = {n: encoding[n] for n in fixed.variables if n in encoding}
            fixed.to_zarr(str(tmp), mode="w", zarr_format=3, consolidated=False, encoding=coords)
            group = zarr.open_group(str(tmp), mode="r+")
            group.attrs.pop("coordinates", None)  # "time" is named by the results that use it (below)
            for name, values in spec.axes.items():
                if isinstance(values, range):
                    _write_range(group, name, values)
            for name in stored(spec.record):
                _declare(group, ds[name], encoding[name])
            zarr.consolidate_metadata(str(tmp), zarr_format=3)
        os.rename(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def grow(path: str | Path, spec: Spec, fingerprint: str, check=lambda: None) -> None:
    """Grow a store to the axes of ``spec``, each of which extends the store's own (new values after
    the old ones: checked by the caller, :func:`sweep.spec.extension`). The new cells are pending
    (their chunks are missing, or the fill values of an edge chunk); no chunk of a result is written.

    Readers, and the driver, see the store through the consolidated metadata of its root
    ``zarr.json``, so a growth becomes visible in one atomic write (Zarr writes a file aside and
    renames it into place): first the arrays' own metadata and the new coordinate values are written
    (invisible: the root still describes the old shape), then the root's attributes (spec,
    fingerprint) — written without consolidated metadata, which makes readers read the arrays' own,
    now grown — and last the consolidated metadata again. A store killed at any moment shows either
    the old or the new shape; rerunning the growth finishes it (every step is idempotent). ``check()`` is
    called before each write (the driver's lock: :meth:`sweep.lock.StoreLock.check`)."""
    check()
    committed = open_group(path)  # the shape readers see now: new coordinates are written after it
    group = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    shape = spec.shape
    for name, n in zip(spec.axes, shape):
        old = committed[name].shape[0]
        if old == n and group[name].shape[0] == n:
            continue  # an axis that does not grow (and whose metadata no earlier attempt grew)
        coord = group[name]
        check()
        coord.resize((n,))
        step = coord.chunks[0]
        for start in range(old - old % step, n, step):  # whole chunks from the one that holds the first new value
            coord[start : min(start + step, n)] = spec.values(name, slice(start, min(start + step, n)))
    for name in results_of(group):
        arr = group[name]
        check()
        arr.resize(shape + arr.shape[len(shape) :])
    check()
    group.update_attributes({"spec": spec.to_yaml(), "fingerprint": fingerprint})  # one write of the root
    settle(path)


def settle(path: str | Path) -> None:
    """Tidy what a driver killed mid-growth left (under the store's lock), so that every reader — one that reads
    the arrays' own metadata too — sees one grid: the files a write cut short left anywhere in the store (Zarr
    writes ``NAME.<hex>.partial`` and renames it into place; only inside the store's real path, never through a
    link: a store holding one is refused, :func:`check_tree`); no consolidated metadata (killed after the root's
    attributes: consolidated now); arrays whose own metadata was grown but never committed (shrunk back to the
    committed shape: nothing was written beyond it but coordinates)."""
    for left in check_tree(path):  # (none at a URL: an object is put whole)
        root = os.path.realpath(path)
        if os.path.commonpath([root, os.path.realpath(left)]) == root:  # inside the store, whatever changed since
            Path(left).unlink(missing_ok=True)
    committed = zarr.open_group(str(path), mode="r")
    if committed.metadata.consolidated_metadata is None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
            zarr.consolidate_metadata(str(path), zarr_format=3)
        return
    own = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    for name, arr in committed.arrays():
        if own[name].shape != arr.shape:
            own[name].resize(arr.shape)


def _write_range(group: zarr.Group, name: str, values: range) -> None:
    """The coordinate of an axis given as a range, as xarray writes it (Zarr's chunks for it),
    written a chunk at a time from the range: never all of its values at once."""
    arr = group.create_array(
        name,
        shape=(len(values),),
        chunks=(COORD_CHUNK,),
        dtype=np.int64,
        fill_value=0,
        dimension_names=(name,),
        attributes=AXES[name].attrs(),
    )
    step = arr.chunks[0]
    for start in range(0, len(values), step):
        arr[start : start + step] = axis_values(values, slice(start, start + step))


def _declare(group: zarr.Group, var: xr.DataArray, encoding: dict) -> None:
    """Create the Zarr array of a result variable of the template, without writing a chunk: the
    metadata xarray writes for it (dimension names, attrs, its fill value — for floats also as the
    ``_FillValue`` attr, base64 as xarray encodes it — and ``coordinates`` naming the non-dimension
    coordinates along its dims)."""
    dtype = var.dtype
    attrs = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in var.attrs.items()}
    coords = [c for c in var.coords if c not in var.dims]
    if coords:
        attrs["coordinates"] = " ".join(coords)
    fill = var.data.flat[0]  # the template holds its fill value everywhere
    if encoding.get("_FillValue", "default") is not None:  # floats: NaN, masked on reading
        attrs["_FillValue"] = base64.standard_b64encode(np.asarray(fill, dtype=dtype).tobytes()).decode()
    group.create_array(
        var.name,
        shape=var.shape,
        chunks=encoding["chunks"],
        dtype=dtype,
        fill_value=fill,
        dimension_names=var.dims,
        attributes=attrs,
    )
