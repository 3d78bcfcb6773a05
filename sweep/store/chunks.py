"""The only code that opens a store's chunk files: the grid's layout, the status read chunk file by chunk
file, bounded reads of regular files only, the batches written as whole chunks (``status`` last), and the
chunks deleted to make cells pending. The seam for stores elsewhere than on a local disk."""

from __future__ import annotations

import errno
import math
import os
import stat
from pathlib import Path

import numpy as np
import zarr
from numcodecs import Zstd, zstd

from ..batch import regions
from ..errors import StoreDamaged
from ..schema import LEGACY_RESULTS, Status
from . import remote

try:  # Zarr's own atomic write of a file (sweep.store.chunks._write_direct); without it, writes go through Zarr
    from zarr.storage import _local as zarr_local
except ImportError:  # pragma: no cover — another Zarr layout
    zarr_local = None


def results_of(group: zarr.Group) -> tuple[str, ...]:
    """The result variables a store holds: those it lists (attribute ``results``), or, in a store made before
    stores listed theirs, the variables linflow stored then."""
    return tuple(group.attrs.get("results", LEGACY_RESULTS))


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
    for r, key in zip(grid, chunk_keys(arr, corners)):
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
    """The folder of the root group of a store on the local disk (None for other stores and groups: the paths
    of a group's arrays, ``arr.path``, are taken from the store's root)."""
    root = getattr(group.store, "root", None)
    if not isinstance(group.store, zarr.storage.LocalStore) or root is None or group.path:
        return None
    return str(root)


def _read_chunk(root: str, name: str, nbytes: int) -> bytes:
    """The bytes of the chunk file ``name`` (relative to the store at ``root``) of a chunk of ``nbytes`` bytes
    compressed by zstd: read only from a regular file — a link (never followed) or a FIFO or a device is
    StoreDamaged — and never more than zstd's bound for ``nbytes`` (a longer file is no such chunk: it does
    not decode). FileNotFoundError when it is missing. In a store at a URL: at most that many bytes of the object."""
    if remote.is_url(root):
        return remote.read(root, name, nbytes + (nbytes >> 8) + 1024)
    try:
        fd = os.open(os.path.join(root, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW: a link
            raise not_a_file(root, name) from None
        raise
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise not_a_file(root, name)
        return f.read(nbytes + (nbytes >> 8) + 1024)  # zstd's compress bound is n + n/256 + 64 at most


def not_a_file(path: str | Path, name: str) -> StoreDamaged:
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
    before each variable is written (the driver's lock: :meth:`sweep.lock.StoreLock.check`). A whole chunk of
    a store on disk is written directly (:func:`_write_direct`), anything else through Zarr."""
    partial = mask is not None and not np.all(mask)
    root = _root(group)
    for name in [n for n in results_of(group) if n != "status"] + ["status"]:
        values = results[name]
        arr = group[name].with_config({"write_empty_chunks": True})  # on disk even when all fill (EVERY_CHUNK)
        if partial:
            values = arr[region]
            values[mask] = results[name][mask]
        check()
        if not (root is not None and _write_direct(arr, root, region, values)):
            arr[region] = values


def _write_direct(arr: zarr.Array, root: str, region: tuple[slice, ...], values: np.ndarray) -> bool:
    """Write ``values`` as the chunk file of a whole chunk ``region`` of ``arr`` (in the store at ``root``) as Zarr
    writes it — the chunk's bytes in the codec's byte order, one zstd frame at the codec's level, written aside
    and renamed into place — in a tenth of Zarr's time (its asynchronous machinery costs ~2 ms of CPU a chunk,
    which the driver's writes take from the workers). False, with nothing written, unless ``arr`` has the
    store's own codecs (bytes + zstd) and ``region`` is one whole chunk."""
    chunks = arr.chunks
    whole = values.shape == chunks and not any(s.start % c for s, c in zip(region, chunks))
    if not (whole and not arr.read_only and _zstd_only(arr) and hasattr(zarr_local, "_atomic_write")):
        return False
    bytes_codec, zstd_codec = arr.metadata.codecs
    order = "<" if str(getattr(bytes_codec.endian, "value", "little")) == "little" else ">"
    raw = np.ascontiguousarray(values, dtype=np.dtype(arr.dtype).newbyteorder(order)).tobytes()
    data = Zstd(level=zstd_codec.level, checksum=zstd_codec.checksum).encode(raw)
    corner = tuple(s.start // c for s, c in zip(region, chunks))
    path = Path(root) / arr.path / chunk_keys(arr, [corner])[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    with zarr_local._atomic_write(path, "wb") as f:  # Zarr's own: a *.partial file beside it, renamed onto it
        f.write(data)
    return True


def chunk_keys(arr: zarr.Array, corners: list[tuple[int, ...]]) -> list[str]:
    """Chunk keys (relative to the array's folder) of the grid chunks at ``corners`` (whole trailing dims)."""
    tail = (0,) * (arr.ndim - len(corners[0])) if corners else ()
    encode = arr.metadata.chunk_key_encoding.encode_chunk_key
    return [encode(c + tail) for c in corners]


def chunk_sizes(folder: str, keys: list[str]) -> dict[str, int]:
    """Chunk key → file size of the chunks ``keys`` (relative to an array's folder) that are on
    disk as regular files: one lstat a chunk, no walk through the folders Zarr makes for trailing dims. In a
    store at a URL: one LIST of the array's objects."""
    if remote.is_url(folder):
        found = remote.listing(folder)
        return {key: found[key] for key in keys if key in found}
    out = {}
    for key in keys:
        try:
            st = os.lstat(f"{folder}/{key}")
        except OSError:  # missing (or its folder unreadable): not there
            continue
        if stat.S_ISREG(st.st_mode):  # a link, a FIFO, a device: no chunk
            out[key] = st.st_size
    return out


def decoder(arr: zarr.Array, root: str):
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


def delete_chunk(root: str | Path, arr: zarr.Array, corner: tuple[int, ...]) -> None:
    """Delete the chunk file of ``arr`` (in the store at ``root``) at the grid chunk ``corner``: it reads as its
    fill values (a cell never computed)."""
    name = f"{arr.path}/{chunk_keys(arr, [corner])[0]}"
    if remote.is_url(root):
        return remote.delete(root, name)
    (Path(root) / name).unlink(missing_ok=True)
