"""The Zarr store: the only code that writes results.

The template (every variable, all cells pending) is laid out first with xarray; each finished batch
is then written as whole chunks straight into the Zarr arrays, ``status`` last, so a cell counts as
done only once all of its numbers are on disk. Every chunk of a computed batch is written, even one of
fill values only, so that a chunk lost later (a partial copy) or torn is found and its cells recomputed
(:func:`inspect`, :func:`mark_pending`) instead of reading as NaN results.
"""

from __future__ import annotations

import base64
import errno
import json
import math
import os
import shutil
import stat
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr
import zarr
from numcodecs import zstd

from . import kernel, lock
from .batch import chunk_shape, regions
from .errors import StoreDamaged, StoreError  # noqa: F401 — StoreDamaged is part of this module's interface
from .problem import Problem
from .schema import DONE, RESULTS, Status, plain, tail_shape
from .spec import Spec, axis_values
from .version import __version__

STATUS_NAMES = [s.name.lower() for s in Status]
AXIS_ATTRS = {
    "depth": {"long_name": "depth N (number of layers)"},
    "width": {"long_name": "width of every hidden layer"},
    "init_norm": {"long_name": "‖W(0)‖₂ / ‖Z‖₂"},
    "init_angle": {"long_name": "angle between W(0) and Z", "units": "rad"},
    "seed": {"long_name": "initialization seed"},
}


COORD_CHUNK = 2**16  # values per chunk of an axis' coordinate (512 KiB of int64 or float64)


def template(spec: Spec, problem: Problem, fingerprint: str, range_coords: bool = True) -> tuple[xr.Dataset, dict]:
    """The dataset with every cell pending, and the Zarr encoding (chunks aligned to batches).
    ``range_coords=False`` leaves out the coordinates of the axes given as ranges (:func:`create`
    writes them piece by piece)."""
    axes = tuple(spec.axes)
    shape = spec.shape
    chunks = chunk_shape(shape, axes, spec.batch)
    count = spec.checkpoints.count
    data_vars, encoding = {}, {}
    for name, var in RESULTS.items():
        tail = tail_shape(var, count, problem.dy, problem.dx)
        data_vars[name] = (
            axes + var.tail,
            np.broadcast_to(np.array(var.fill, dtype=var.dtype), shape + tail),
            var.attrs(),
        )  # a broadcast: no memory
        encoding[name] = {"chunks": chunks + tail}
        if var.dtype != "f8":
            encoding[name]["_FillValue"] = None
    data_vars["target"] = (("out", "in"), problem.target, {"long_name": "target Z = Y Xᵀ"})
    data_vars["x"] = (("in", "sample"), problem.x, {"long_name": "inputs X (whitened, X Xᵀ = I)"})
    data_vars["y"] = (("out", "sample"), problem.y, {"long_name": "outputs Y"})
    coords = {
        name: (name, spec.values(name), AXIS_ATTRS[name])
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
        EVERY_CHUNK: 1,
    }
    return xr.Dataset(data_vars, coords=coords, attrs=attrs), encoding


def create(path: str | Path, spec: Spec, problem: Problem, fingerprint: str) -> None:
    """Lay out the template in a temporary folder beside ``path`` and rename it into place, so a
    crash or a full disk never leaves a half-written store that looks valid.

    Only metadata and the fixed arrays (coordinates, data) are written: xarray writes the dataset
    without the results, then each result variable is declared as the Zarr array xarray would have
    made of it (same metadata: :func:`_declare`), with no chunk — a missing chunk reads as its fill
    value, which is what a pending cell holds. Time and memory grow with the axes, not the cells."""
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
            fixed = ds.drop_vars(list(RESULTS))
            coords = {n: encoding[n] for n in fixed.variables if n in encoding}
            fixed.to_zarr(str(tmp), mode="w", zarr_format=3, consolidated=False, encoding=coords)
            group = zarr.open_group(str(tmp), mode="r+")
            group.attrs.pop("coordinates", None)  # "time" is named by the results that use it (below)
            for name, values in spec.axes.items():
                if isinstance(values, range):
                    _write_range(group, name, values)
            for name in RESULTS:
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
    for name in RESULTS:
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
    root = os.path.realpath(path)
    for left in check_tree(path):
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


def check_tree(path: str | Path) -> list[str]:
    """The ``*.partial`` files in the store at ``path`` (its real path: the store may be reached through a link),
    or StoreDamaged naming a symbolic link or a special file (FIFO, socket, device) in it: linflow never follows
    a link inside a store, and reads only regular files. One walk of the store's folders (:func:`_walk`)."""
    root = os.path.realpath(path)
    links, special, partial = _walk(root)
    if links or special:
        raise _not_a_file(path, os.path.relpath(min(links) if links else min(special), root))
    return partial


def _walk(root: str) -> tuple[list[str], list[str], list[str]]:
    """The symbolic links, the special files and the ``*.partial`` files under the folder ``root``: one pass,
    one ``scandir`` a folder (the kind of an entry comes with its name), never following a link."""
    links, special, partial = [], [], []
    folders = [root]
    while folders:
        with os.scandir(folders.pop()) as entries:
            for entry in entries:
                if entry.is_symlink():
                    links.append(entry.path)
                elif entry.is_dir(follow_symlinks=False):
                    folders.append(entry.path)
                elif not entry.is_file(follow_symlinks=False) and os.path.lexists(entry.path):  # (not just renamed)
                    special.append(entry.path)
                elif entry.name.endswith(".partial"):
                    partial.append(entry.path)
    return links, special, partial


def _not_a_file(path: str | Path, name: str) -> StoreDamaged:
    """StoreDamaged naming ``name`` (relative to the store at ``path``), a symbolic link or a special file."""
    found = os.path.join(path, name)
    mode = os.lstat(found).st_mode
    if stat.S_ISLNK(mode):
        return StoreDamaged(
            path,
            f"{name} is a symbolic link (to {os.readlink(found)}); linflow never follows links inside a store — "
            "replace it by what it points to, or remove it",
        )
    kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
    return StoreDamaged(path, f"{name} is {kind}, not a file; linflow reads only regular files in a store — remove it")


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
        attributes=AXIS_ATTRS[name],
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


def is_store(path: str | Path) -> bool:
    p = Path(path)
    return (p / "zarr.json").is_file() or (p / ".zgroup").is_file()


def stored_spec(store: str | Path | zarr.Group) -> dict:
    """The spec of a store (a path, or its open group), as the raw mapping (its ``spec`` attribute, YAML)."""
    import yaml

    group = store if isinstance(store, zarr.Group) else open_group(store)
    return yaml.safe_load(group.attrs["spec"]) or {}


def open_group(path: str | Path, mode: str = "r") -> zarr.Group:
    """The store's root group, checked to be a readable linflow store: StoreDamaged when it holds a link
    or a special file (:func:`check_tree`, before anything is read: every reader and writer opens the store
    here) or when its metadata (the root ``zarr.json``, the ``failures`` attribute) cannot be read."""
    if not is_store(path):
        raise StoreError("out", f"{path} exists but is not a linflow store")
    check_tree(path)  # before anything is read: no link, no FIFO or device in it
    try:
        group = zarr.open_group(str(path), mode=mode)
        attrs = dict(group.attrs)
        status = group["status"] if "status" in group else None
    except Exception as exc:  # zarr raises JSONDecodeError, TypeError, KeyError, … on a torn zarr.json
        raise StoreDamaged(
            path, f"its metadata {Path(path) / 'zarr.json'} cannot be read ({type(exc).__name__}: {_first_line(exc)})"
        ) from None
    if "fingerprint" not in attrs or status is None:
        raise StoreError("out", f"{path} is a Zarr store but not a linflow store (no fingerprint/status)")
    if not isinstance(status, zarr.Array) or status.ndim < 1 or status.dtype != np.int8:
        raise StoreDamaged(path, f"its status is not a grid of int8 codes ({Path(path) / 'zarr.json'})")
    missing = [name for name in RESULTS if name not in group]
    if missing:
        raise StoreError(
            "out",
            f"{path} has no {', '.join(missing)} (results this linflow stores): it was made by another "
            "version of linflow — run the sweep into a new store",
        )
    failures(group, path)
    return group


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]


def layout(group: zarr.Group) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(grid shape, chunk shape) over the axes, as laid out in the store."""
    status = group["status"]
    return tuple(status.shape), tuple(status.chunks)


def read_status(group: zarr.Group) -> tuple[np.ndarray, list[tuple[slice, ...]]]:
    """The status grid, and the chunks of it that cannot be read (their cells read as pending).
    A store on disk with the default codecs is read chunk file by chunk file (:func:`_read_direct`:
    one file and one zstd call a chunk, in time and memory proportional to the chunks)."""
    arr = group["status"]
    shape, chunks = layout(group)
    root = _root(group)
    if root is not None and _zstd_only(arr):
        return _read_direct(arr, root, shape, chunks)
    try:
        return arr[...], []
    except Exception:  # a torn chunk: find which, chunk by chunk
        pass
    status = np.full(shape, Status.PENDING, dtype=np.int8)
    bad = []
    for r in regions(shape, chunks):
        try:
            status[r] = arr[r]
        except Exception:
            bad.append(r)
    return status, bad


def _read_direct(arr: zarr.Array, root: str, shape, chunks) -> tuple[np.ndarray, list[tuple[slice, ...]]]:
    """The status grid read from its chunk files (in the store at ``root``) as Zarr reads them: a missing file
    is the fill value; a file that does not decode to a whole chunk is unreadable (its cells read as pending);
    a link or a special file is StoreDamaged (:func:`_read_chunk`)."""
    status = np.full(shape, arr.fill_value, dtype=np.int8)
    bad = []
    grid = regions(shape, chunks)
    corners = [tuple(s.start // c for s, c in zip(r, chunks)) for r in grid]
    for r, key in zip(grid, _keys(arr, corners)):
        try:
            data = _read_chunk(root, f"{arr.path}/{key}", status.itemsize * math.prod(chunks))
        except FileNotFoundError:
            continue
        except OSError:
            bad.append(r)
            status[r] = Status.PENDING
            continue
        raw = _zstd_chunk(data, status.itemsize * math.prod(chunks))
        if raw is None:
            bad.append(r)
            status[r] = Status.PENDING
            continue
        status[r] = np.frombuffer(raw, dtype=np.int8).reshape(chunks)[tuple(slice(0, s.stop - s.start) for s in r)]
    return status, bad


def _root(group: zarr.Group) -> str | None:
    """The folder of a group of a store on the local disk (None for other stores)."""
    root = getattr(group.store, "root", None)
    if not isinstance(group.store, zarr.storage.LocalStore) or root is None:
        return None
    return os.path.join(str(root), group.path) if group.path else str(root)


def _read_chunk(root: str, name: str, nbytes: int) -> bytes:
    """The bytes of the chunk file ``name`` (relative to the store at ``root``) of a chunk of ``nbytes`` bytes
    compressed by zstd: read only from a regular file — a link (never followed) or a FIFO or a device is
    StoreDamaged — and never more than zstd's bound for ``nbytes`` (a longer file is no such chunk: it does
    not decode). FileNotFoundError when it is missing."""
    try:
        fd = os.open(os.path.join(root, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW: a link
            raise _not_a_file(root, name) from None
        raise
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _not_a_file(root, name)
        return f.read(nbytes + (nbytes >> 8) + 1024)  # zstd's compress bound is n + n/256 + 64 at most


def _zstd_only(arr: zarr.Array) -> bool:
    """The store's own codecs (bytes + zstd): a chunk file is one zstd frame of the chunk's bytes."""
    return [type(c).__name__ for c in arr.metadata.codecs] == ["BytesCodec", "ZstdCodec"]


def _zstd_chunk(data: bytes, nbytes: int) -> bytes | None:
    """The bytes of a chunk file of bytes + zstd codecs, or None when it does not decode to ``nbytes``."""
    try:
        raw = zstd.decompress(data)
    except Exception:
        return None
    return raw if len(raw) == nbytes else None


def todo(group: zarr.Group, retry_failed: bool = False) -> list[tuple[tuple[slice, ...], np.ndarray]]:
    """(chunk, mask of the cells to compute) for every chunk holding a pending cell — or, with
    ``retry_failed``, a failed one. A pending chunk is computed whole (chunks are written whole)."""
    shape, chunks = layout(group)
    status = read_status(group)[0]
    out = []
    for r in regions(shape, chunks):
        st = status[r]
        want = st == Status.PENDING
        if retry_failed:
            want |= st == Status.FAILED
        if want.any():
            out.append((r, want))
    return out


def pending_regions(group: zarr.Group) -> list[tuple[slice, ...]]:
    """Chunks that still hold a pending cell."""
    return [r for r, _ in todo(group)]


def write_batch(
    group: zarr.Group, region: tuple[slice, ...], results: dict[str, np.ndarray], mask=None, check=lambda: None
) -> None:
    """Write one batch as whole chunks, ``status`` last. With ``mask``, only the masked cells take
    the new values; the rest of the chunk is read back and rewritten unchanged. ``check()`` is called
    before each variable is written (the driver's lock: :meth:`sweep.lock.StoreLock.check`)."""
    partial = mask is not None and not np.all(mask)
    for name in [n for n in RESULTS if n != "status"] + ["status"]:
        values = results[name]
        arr = group[name].with_config({"write_empty_chunks": True})  # on disk even when all fill (EVERY_CHUNK)
        if partial:
            values = arr[region]
            values[mask] = results[name][mask]
        check()
        arr[region] = values


def failures(group: zarr.Group, path=None) -> list[dict]:
    """The errors recorded for failed cells: [{"cell": {axis: value}, "error": text}, …]
    (StoreDamaged when the attribute is not that)."""
    text = group.attrs.get("failures", "[]")
    try:
        out = json.loads(text) if isinstance(text, str) else None
        names = list(group["status"].metadata.dimension_names or ())
        ok = isinstance(out, list) and all(
            isinstance(f, dict)
            and isinstance(f.get("cell"), dict)
            and set(names) <= set(f["cell"])
            and isinstance(f.get("error"), str)
            for f in out
        )
    except ValueError as exc:
        out, ok = None, False
        text = _first_line(exc)
    if not ok:
        where = path if path is not None else group.store
        shape = '[{"cell": {axis: value}, "error": text}, …]'
        raise StoreDamaged(where, f'its "failures" attribute is not a JSON list {shape} ({str(text)[:80]!r})')
    return out


def record_failures(group: zarr.Group, region, mask, errors: list[tuple[dict, str]], check=lambda: None) -> None:
    """Replace the recorded errors of the cells just computed (``mask`` in ``region``) by ``errors``. The root's
    attributes are read anew, merged and written in one step — never through ``group``, a handle that may
    have been opened before the last write of them (a growth). ``check()`` is called before the write."""
    root = zarr.open_group(group.store, path=group.path, mode="r+")
    if not errors and "failures" not in root.attrs:
        return
    names = list(root["status"].metadata.dimension_names)
    coords = {n: root[n][...] for n in names}
    done = set()
    for idx in zip(*np.nonzero(mask)):
        done.add(tuple(plain(coords[n][s.start + i]) for n, s, i in zip(names, region, idx)))
    kept = [f for f in failures(root) if tuple(f["cell"][n] for n in names) not in done]
    kept += [{"cell": cell, "error": error} for cell, error in errors]
    check()
    root.update_attributes({"failures": json.dumps(kept[-MAX_FAILURES:])})


MAX_FAILURES = 1000


def counts(group_or_path) -> dict[str, int]:
    group = group_or_path if isinstance(group_or_path, zarr.Group) else open_group(group_or_path)
    status = read_status(group)[0]
    return {s.name.lower(): int(np.sum(status == s)) for s in Status}


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


# ── lost and torn chunks ──────────────────────────────────────────────────────────────────────────
# A partial copy (cp, rsync) or a torn file can lose a chunk; Zarr reads a lost chunk as fill values,
# so a done cell would silently read as NaN. Stores made with EVERY_CHUNK set hold every chunk of
# every computed batch (even one of fill values only): there a lost chunk of a done cell is always
# detectable by a directory listing. Older stores skipped all-fill chunks; there a chunk must exist
# only where a done cell of these statuses holds a value other than the fill.
EVERY_CHUNK = "every_chunk_written"
_NEEDED_BEFORE_EVERY_CHUNK = {
    "loss": DONE,
    "excess_loss": DONE,
    "w_init": DONE,
    "imbalance": DONE,
    "time_to_eps": (Status.CONVERGED,),
}
SUSPICIOUS_BYTES = 64  # a chunk file smaller than this, or than a quarter of its variable's median, is decoded


@dataclass
class Damage:
    """The lost or unreadable chunks of a store and the cells they take with them."""

    path: str
    chunks: list = field(default_factory=list)  # (key, "missing" | "unreadable", cells lost), key "loss/c/0/0/1/0"
    regions: dict = field(default_factory=dict)  # chunk index (corner // chunk shape) → (its region, its cells lost)
    fixed: list = field(default_factory=list)  # unreadable arrays written at creation (target, x, …): not recomputable
    status: np.ndarray | None = None  # the status grid, unreadable status chunks read as pending

    def __bool__(self):
        return bool(self.chunks or self.fixed)

    @property
    def cells(self) -> int:
        return sum(n for _, n in self.regions.values())

    def variables(self) -> list[str]:
        names = {key.split("/", 1)[0] for key, _, _ in self.chunks}
        return [n for n in RESULTS if n in names]

    def summary(self) -> str:
        """'12 cells had missing or unreadable chunks (loss, w_final)'."""
        unknown = sum(n for key, _, n in self.chunks if key.startswith("status/"))
        text = f"{self.cells} cells had missing or unreadable chunks ({', '.join(self.variables())})"
        return text + (f", {unknown} of them an unreadable or lost status (read as pending)" if unknown else "")

    def first(self) -> str:
        """The first damaged chunk, by name: 'chunk loss/c/0/0/1/0 is missing (4 done cells)'."""
        if self.fixed:
            return (
                f"{', '.join(self.fixed)} cannot be read; written when the store was made, it cannot be "
                "recomputed — run the sweep into a new store"
            )
        key, what, n = self.chunks[0]
        text = f"chunk {key} is {what} ({n} {'cells of unknown status' if key.startswith('status/') else 'done cells'})"
        if len(self.chunks) > 1:
            text += f", and {len(self.chunks) - 1} more chunks ({self.cells} cells in all)"
        return text


def inspect(group: zarr.Group, path: str | Path, verify: bool = False, writing: bool = False) -> Damage:
    """Find the chunks that done cells need and that are missing (a listing of the store's folders)
    or unreadable (decoded: every chunk with ``verify``, else only files of suspicious size). The
    status grid itself is always decoded: its unreadable chunks make their cells unknown (pending).
    ``group`` comes from :func:`open_group`, which refused links and special files; the chunk files read
    here are read only if regular, and bounded in size (:func:`_read_chunk`).
    ``writing``: a run is writing the store, so a chunk whose results are on disk and whose status is
    not may be a batch being written (its status comes last) — pending, not lost."""
    root = Path(path)
    shape, chunks = layout(group)
    status, bad_status = read_status(group)
    damage = Damage(str(path), status=status)
    every = bool(group.attrs.get(EVERY_CHUNK))
    grid = regions(shape, chunks)
    corners = [tuple(s.start // c for s, c in zip(r, chunks)) for r in grid]
    done = [int(np.count_nonzero(status[r])) for r in grid]  # PENDING is 0
    present, keys, by_tail = {}, {}, {}
    for name in RESULTS:
        arr = group[name]
        if arr.ndim not in by_tail:  # the chunk keys of arrays with as many trailing dims are the same
            by_tail[arr.ndim] = _keys(arr, corners)
        keys[name] = by_tail[arr.ndim]
        folder = str(root / arr.path)
        files = present[name] = _chunk_sizes(folder, keys[name])
        if name == "status":
            continue
        decodes = _decoder(arr, str(root))
        median = float(np.median(list(files.values()))) if files else 0.0
        for i, (r, key) in enumerate(zip(grid, keys[name])):
            size = files.get(key)
            if size is None:
                if done[i] and (every or np.isin(status[r], _NEEDED_BEFORE_EVERY_CHUNK.get(name, ())).any()):
                    damage.chunks.append((f"{arr.path}/{key}", "missing", done[i]))
                    damage.regions[corners[i]] = (r, done[i])
            elif (verify or size < max(SUSPICIOUS_BYTES, median / 4)) and not decodes(f"{arr.path}/{key}", r):
                damage.chunks.append((f"{arr.path}/{key}", "unreadable", done[i]))
                damage.regions[corners[i]] = (r, done[i])
    bad_status = {tuple(s.start for s in r) for r in bad_status}
    for i, (r, key) in enumerate(zip(grid, keys["status"])):
        unreadable = tuple(s.start for s in r) in bad_status
        lost = unreadable
        if (
            not lost and every and not writing and key not in present["status"]
        ):  # results on disk, no status: lost (or a write cut short)
            lost = all(keys[n][i] in present[n] for n in RESULTS if n != "status")
        if lost:
            n = int(np.prod([s.stop - s.start for s in r]))
            damage.chunks.append((f"status/{key}", "unreadable" if unreadable else "missing", n))
            damage.regions[corners[i]] = (r, n)
    if verify:
        for name in sorted(set(group.array_keys()) - set(RESULTS)):
            try:
                group[name][...]
            except Exception:
                damage.fixed.append(name)
    return damage


@dataclass
class Summary:
    """What ``linflow status`` shows of a store: counts per status (the cells of lost or unreadable chunks
    counted pending), the batches a rerun computes, the failures and the damage."""

    counts: dict
    pending_batches: int
    fingerprint: str
    version: str | None
    dims: tuple
    shape: tuple
    failures: list
    damage: Damage

    def as_dict(self, verified: bool) -> dict:
        lost = [] if verified else self.damage.chunks
        return {
            "counts": self.counts,
            "cells": int(sum(self.counts.values())),
            "pending_batches": self.pending_batches,
            "fingerprint": self.fingerprint,
            "failures": self.failures,
            "damaged_cells": 0 if verified else self.damage.cells,
            "verified": verified,
            "damaged_chunks": [{"chunk": k, "problem": w, "cells": n} for k, w, n in lost],
        }


def summary(group: zarr.Group, path: str | Path, damage: Damage) -> Summary:
    """The :class:`Summary` of a store inspected as ``damage`` (:func:`inspect`)."""
    grid = damage.status.copy()
    for r, _ in damage.regions.values():  # the cells a rerun will recompute
        grid[r] = Status.PENDING
    shape, chunks = layout(group)
    left = [r for r in regions(shape, chunks) if (grid[r] == Status.PENDING).any()]
    return Summary(
        {s.name.lower(): int(np.sum(grid == s)) for s in Status},
        len(left),
        group.attrs["fingerprint"],
        group.attrs.get("linflow_version"),
        tuple(group["status"].metadata.dimension_names or ()),
        shape,
        failures(group),
        damage,
    )


def mark_pending(group: zarr.Group, damage: Damage, check=lambda: None) -> None:
    """Make the cells of every damaged chunk pending, as a batch never written is: ``status`` first,
    then the chunks of every variable there are deleted (they read as fill values), and their
    recorded failures dropped. A rerun recomputes them whole."""
    root = Path(damage.path)
    for corner, (r, _) in damage.regions.items():
        for name in ["status"] + [n for n in RESULTS if n != "status"]:
            arr = group[name]
            check()
            (root / arr.path / _keys(arr, [corner])[0]).unlink(missing_ok=True)
        record_failures(group, r, np.ones([s.stop - s.start for s in r], bool), [], check)
    damage.status = read_status(group)[0]


def recheck(group: zarr.Group, path: str | Path, check=lambda: None) -> Damage:
    """On resume, cheaply (a listing, and decoding only files of suspicious size): mark the cells of
    lost or torn chunks pending, and say how many (one line on stderr)."""
    damage = inspect(group, path)
    if damage:
        mark_pending(group, damage, check)
    if damage.cells:
        print(f"linflow: warning: {damage.summary()}; marked pending — they will be recomputed", file=sys.stderr)
    return damage


def load_results(group: zarr.Group, path: str | Path) -> xr.Dataset:
    """The whole results dataset in memory, or StoreDamaged naming the first lost or torn chunk — never
    NaN numbers standing for results that were lost. Checked cheaply first; decoded in full only
    when loading fails. Also while a run is writing the store: the status is read first (a snapshot:
    :func:`open_results`), and the cells it says are pending hold their fill values, whatever their
    batch has written since."""
    writing = lock.writer(path) is not None
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
            if name != "status":
                ds[name].values[pending] = var.fill
    return ds


def _keys(arr: zarr.Array, corners: list[tuple[int, ...]]) -> list[str]:
    """Chunk keys (relative to the array's folder) of the grid chunks at ``corners`` (whole trailing dims)."""
    tail = (0,) * (arr.ndim - len(corners[0])) if corners else ()
    encode = arr.metadata.chunk_key_encoding.encode_chunk_key
    return [encode(c + tail) for c in corners]


def _chunk_sizes(folder: str, keys: list[str]) -> dict[str, int]:
    """Chunk key → file size of the chunks ``keys`` (relative to an array's folder) that are on
    disk as regular files: one lstat a chunk, no walk through the folders Zarr makes for trailing dims."""
    out = {}
    for key in keys:
        try:
            st = os.lstat(f"{folder}/{key}")
        except OSError:  # missing (or its folder unreadable): not there
            continue
        if stat.S_ISREG(st.st_mode):  # a link, a FIFO, a device: no chunk
            out[key] = st.st_size
    return out


def _decoder(arr: zarr.Array, root: str):
    """``decodes(name, region)``: whether the chunk file ``name`` (relative to the store at ``root``) of ``arr``
    decodes to a whole chunk — zstd directly for the store's own codecs (bytes + zstd, microseconds a chunk,
    :func:`_read_chunk`), else through Zarr."""
    if _zstd_only(arr):
        nbytes = math.prod(arr.chunks) * arr.dtype.itemsize

        def decodes(name: str, region) -> bool:
            try:
                data = _read_chunk(root, name, nbytes)
            except OSError:
                return False
            return _zstd_chunk(data, nbytes) is not None

        return decodes

    def decodes_by_zarr(name: str, region) -> bool:
        try:
            arr[region]
            return True
        except Exception:
            return False

    return decodes_by_zarr
