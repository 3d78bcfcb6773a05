"""Lost and torn chunks: found (:func:`inspect`), summed up for ``linflow status``, and made pending so
that a rerun recomputes them (:func:`mark_pending`, :func:`recheck`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr

from ..batch import regions
from ..schema import DONE, RESULTS, Status
from . import remote
from .chunks import chunk_keys, chunk_sizes, decoder, delete_chunk, layout, read_status, results_of
from .group import failures, record_failures
from .make import EVERY_CHUNK

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
    root = str(path) if remote.is_url(path) else Path(path)
    shape, chunks = layout(group)
    status, bad_status = read_status(group)
    damage = Damage(str(path), status=status)
    every = bool(group.attrs.get(EVERY_CHUNK))
    grid = regions(shape, chunks)
    corners = [tuple(s.start // c for s, c in zip(r, chunks)) for r in grid]
    done = [int(np.count_nonzero(status[r])) for r in grid]  # PENDING is 0
    present, keys, by_tail = {}, {}, {}
    names = results_of(group)
    for name in names:
        arr = group[name]
        if arr.ndim not in by_tail:  # the chunk keys of arrays with as many trailing dims are the same
            by_tail[arr.ndim] = chunk_keys(arr, corners)
        keys[name] = by_tail[arr.ndim]
        folder = f"{root}/{arr.path}"
        files = present[name] = chunk_sizes(folder, keys[name])
        if name == "status":
            continue
        decodes = decoder(arr, str(root))
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
            lost = all(keys[n][i] in present[n] for n in names if n != "status")
        if lost:
            n = int(np.prod([s.stop - s.start for s in r]))
            damage.chunks.append((f"status/{key}", "unreadable" if unreadable else "missing", n))
            damage.regions[corners[i]] = (r, n)
    if verify:
        for name in sorted(set(group.array_keys()) - set(names)):
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
    root = damage.path
    for corner, (r, _) in damage.regions.items():
        for name in ["status"] + [n for n in results_of(group) if n != "status"]:
            arr = group[name]
            check()
            delete_chunk(root, arr, corner)
        record_failures(group, r, np.ones([s.stop - s.start for s in r], bool), [], check)
    damage.status = read_status(group)[0]


def recheck(group: zarr.Group, path: str | Path, check=lambda: None) -> Damage:
    """On resume, cheaply (a listing, and decoding only files of suspicious size): mark the cells of
    lost or torn chunks pending; returns what was found (its ``summary()`` says how many)."""
    damage = inspect(group, path)
    if damage:
        mark_pending(group, damage, check)
    return damage
