"""A store's root group: what makes a folder a linflow store, opening it (checked: no link or special
file in it, readable metadata, every result array), its spec, its recorded failures (read anew, merged
and written in one step), its counts, and where a new store may be made (:func:`check_new`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import zarr

from ..errors import StoreDamaged, StoreError
from ..schema import Status, plain
from . import remote
from .chunks import not_a_file, read_status, results_of

STATUS_NAMES = [s.name.lower() for s in Status]


def check_local(out: str | Path, field: str = "out") -> None:
    """StoreError unless ``out`` is a local path (reports, exported tables and studies are written as local
    files; only stores may live at a URL)."""
    if remote.is_url(out):
        raise StoreError(field, f"{remote.url(out)}: a URL; this is written as local files: give a local path")


def is_store(path: str | Path) -> bool:
    if remote.is_url(path):
        remote.reach(path)  # one line when the URL cannot be served or reached
        return remote.exists(path)
    p = Path(path)
    return (p / "zarr.json").is_file() or (p / ".zgroup").is_file()


def check_tree(path: str | Path) -> list[str]:
    """The ``*.partial`` files in the store at ``path`` (its real path: the store may be reached through a link),
    or StoreDamaged naming a symbolic link or a special file (FIFO, socket, device) in it: linflow never follows
    a link inside a store, and reads only regular files. One walk of the store's folders (:func:`_walk`)."""
    if remote.is_url(path):  # object storage has no links nor special files (nor partial files: PUTs are whole)
        return []
    root = os.path.realpath(path)
    links, special, partial = _walk(root)
    if links or special:
        raise not_a_file(path, os.path.relpath(min(links) if links else min(special), root))
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


def check_new(out: str | Path, field: str = "out", verb: str = "create") -> None:
    """StoreError naming ``field`` when ``out`` (a store, a report folder, a file; made or not yet) would lie
    inside a linflow store — which only linflow writes, and whose damage checks would refuse it."""
    if remote.is_url(out):
        return remote.check_new(out, field)
    place = Path(out).resolve()
    while not place.exists():
        place = place.parent
    inside = next((p for p in (place, *place.parents) if is_store(p)), None)
    if inside is not None:
        raise StoreError(field, f"cannot {verb} {out} inside the store {inside}; choose a folder outside it")


def stored_spec(store: str | Path | zarr.Group) -> dict:
    """The spec of a store (a path, or its open group), as the raw mapping (its ``spec`` attribute, YAML)."""
    import yaml

    group = store if isinstance(store, zarr.Group) else open_group(store)
    return yaml.safe_load(group.attrs["spec"]) or {}


def open_group(path: str | Path, mode: str = "r") -> zarr.Group:
    """The store's root group, checked to be a readable linflow store: StoreDamaged when it holds a link
    or a special file (:func:`check_tree`, before anything is read: every reader and writer opens the store
    here) or when its metadata (the root ``zarr.json``, the ``failures`` attribute) cannot be read."""
    if not is_store(path):  # (at a URL: one line when it cannot be served or reached)
        raise StoreError("out", f"{path} exists but is not a linflow store")
    check_tree(path)  # before anything is read: no link, no FIFO or device in it
    try:
        group = zarr.open_group(str(path), mode=mode)
        attrs = dict(group.attrs)
        status = group["status"] if "status" in group else None
    except Exception as exc:  # zarr raises JSONDecodeError, TypeError, KeyError, … on a torn zarr.json
        raise StoreDamaged(
            path, f"its metadata {path}/zarr.json cannot be read ({type(exc).__name__}: {_first_line(exc)})"
        ) from None
    if "fingerprint" not in attrs or status is None:
        raise StoreError("out", f"{path} is a Zarr store but not a linflow store (no fingerprint/status)")
    if not isinstance(status, zarr.Array) or status.ndim < 1 or status.dtype != np.int8:
        raise StoreDamaged(path, f"its status is not a grid of int8 codes ({path}/zarr.json)")
    missing = [name for name in results_of(group) if name not in group]
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
