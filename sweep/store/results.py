"""Reading a store's results, also while a run writes it: the status first (a snapshot), then the rest;
never NaN numbers standing for results that were lost."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import xarray as xr
import zarr

from ..errors import StoreDamaged
from ..schema import RESULTS, Status
from . import remote
from .damage import inspect
from .group import open_group


def open_results(path: str | Path):
    """The results dataset of a store (lazy, as ``xr.open_zarr`` gives it), checked to be linflow's —
    also while a run is writing it: ``status`` is read at once (a snapshot, in memory) and says which
    cells are done; ``attrs["cells_done"]`` of ``attrs["cells"]`` are. A done cell's numbers are on disk
    before its status (:func:`write_batch`), so every cell the snapshot says is done reads whole; a cell
    it says is pending may read its fill values or, its batch being written, numbers already."""
    open_group(path)
    return _snapshot(_open_zarr(path))


def _open_zarr(path) -> xr.Dataset:
    """``xr.open_zarr``, quiet about the states a killed growth leaves until the next run settles them (no
    consolidated metadata yet; a half-written metadata file beside the root's): the store reads whole."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*consolidated metadata.*", category=RuntimeWarning)
        warnings.filterwarnings("ignore", message=".*partial is not recognized as a component.*")
        return xr.open_zarr(str(path))


def _snapshot(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with its status read first and counted (cells, cells_done): the other variables read after it."""
    ds["status"] = ds["status"].load()
    ds.attrs["cells"] = int(ds.status.size)
    ds.attrs["cells_done"] = int(np.count_nonzero(ds.status.values != Status.PENDING))
    return ds


def done_text(ds: xr.Dataset) -> str:
    """'1,200 of 2,400 cells done' (of a dataset from :func:`open_results` or :func:`load_results`)."""
    return f"{ds.attrs['cells_done']:,} of {ds.attrs['cells']:,} cells done"


def load_results(group: zarr.Group, path: str | Path) -> xr.Dataset:
    """The whole results dataset in memory, or StoreDamaged naming the first lost or torn chunk — never
    NaN numbers standing for results that were lost. Checked cheaply first; decoded in full only
    when loading fails. Also while a run is writing the store: the status is read first (a snapshot:
    :func:`open_results`), and the cells it says are pending hold their fill values, whatever their
    batch has written since."""
    writing = remote.writer(path) is not None
    damage = inspect(group, path, writing=writing)
    if damage:
        raise StoreDamaged(path, damage.first(), repairable=not damage.fixed)
    try:
        ds = _snapshot(_open_zarr(path)).load()
    except Exception:
        damage = inspect(group, path, verify=True, writing=writing)
        if damage:
            raise StoreDamaged(path, damage.first(), repairable=not damage.fixed) from None
        raise
    pending = ds.status.values == Status.PENDING
    if pending.any():
        for name, var in RESULTS.items():
            if name != "status" and name in ds:
                ds[name].values[pending] = var.fill
    return ds
