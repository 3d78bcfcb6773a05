"""Issue 12 — growing a store: a ~100,000-cell store grown by ~1,000 cells along one axis. What the growth
writes (new chunk files, old chunk files replaced — the edge chunks an old axis shares with new cells —,
metadata) against the bytes of the store, and its wall time against a fresh run of the whole grown grid.

Every case builds its base store once (``model: exact``: closed form, so the cells cost little and the run
is mostly scheduling and store writes), then, per repeat, grows a fresh copy of it (``shutil.copytree``)
and runs the grown grid into a new store: both through ``sweep.runner.run`` on one local Ray instance.
Bytes: every file of the copy is recorded (path → inode, size, mtime) before the growth; a file that is
new, or whose inode or mtime changed (Zarr writes a file aside and renames it: a new inode), was written.

    python bench/grow_store.py [--repeats 3] [--workers 2] [--cases a,b,b2,c,d,e] [--keep FOLDER]
"""

from __future__ import annotations

import os

os.environ["RAY_AUTH_MODE"] = "disabled"  # before Ray is imported (sweep.runner imports it when it connects)
os.environ.pop("RAY_ADDRESS", None)  # a local instance, never a cluster named in the environment
os.environ.setdefault("OMP_NUM_THREADS", "1")  # one BLAS thread: one Ray task per core is the parallelism
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import contextlib
import io
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from sweep import cluster, runner, store
from sweep import spec as specs
from sweep.schema import RESULTS, Status

COMMON = {
    "problem": {"m": 20, "dx": 4, "dy": 1},
    "model": "exact",
    "init": {"scheme": "balanced"},
    "horizon": 10.0,
    "checkpoints": {"count": 11},
}  # batch: the default (256 cells per task)
DEPTHS = list(range(1, 11))


def norms(n: int) -> list[float]:
    return [round(0.1 * k, 6) for k in range(1, n + 1)]


def seeds(n: int) -> dict:
    return {"start": 0, "stop": n}


def axes(depth, init_norm, seed) -> dict:
    return {"depth": depth, "width": [5], "init_norm": init_norm, "seed": seed}


# name: (what, base axes, grown axes). Chunks (sweep.batch.chunk_shape, batch 256): 1 along depth and width;
# an axis longer than the room left is cut into chunks of 128…256 that leave the smallest last chunk (1000
# seeds: 4 × 250; 1009, a prime: 4 × 252 and a last chunk of 1 seed; 257: 256 and 1); 100 seeds fit whole,
# leaving room for 2 init_norms.
CASES = {
    "a": (
        "seed 1000 → 1010 (1000 a multiple of its chunk 250: new chunks only)",
        axes(DEPTHS, norms(10), seeds(1000)),
        axes(DEPTHS, norms(10), seeds(1010)),
    ),
    "b": (
        "seed 1009 → 1019 (1009 prime, chunk 252: each last chunk, 1 old seed, takes new ones: edge chunks)",
        axes(DEPTHS, norms(10), seeds(1009)),
        axes(DEPTHS, norms(10), seeds(1019)),
    ),
    "b2": (
        "seed 257 → 260 (chunk 256: each last chunk, 1 old seed, takes 3 new ones; the largest old share, 1/257)",
        axes(DEPTHS, norms(39), seeds(257)),
        axes(DEPTHS, norms(39), seeds(260)),
    ),
    "c": (
        "depth 1..100 → 1..101 (chunk 1 along depth: new chunks only)",
        axes(list(range(1, 101)), [1.0], seeds(1000)),
        axes(list(range(1, 102)), [1.0], seeds(1000)),
    ),
    "d": (
        "init_norm 100 → 101 values (chunk 2 along init_norm, 100 a multiple: new chunks only)",
        axes(DEPTHS, norms(100), seeds(100)),
        axes(DEPTHS, norms(101), seeds(100)),
    ),
    "e": (
        "init_norm 99 → 100 values (99 odd: chunks of 1 init_norm × 100 seeds, none left over: new chunks only)",
        axes(DEPTHS, norms(99), seeds(100)),
        axes(DEPTHS, norms(100), seeds(100)),
    ),
}
TARGET = 5.0  # % of the grown store's bytes written by the growth (the "≤ 5% of its bytes")


def spec_of(ax: dict) -> specs.Spec:
    return specs.parse({**COMMON, "axes": ax})


def files(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every file under ``root``: relative path → (inode, size, mtime_ns)."""
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            st = os.stat(path)
            out[os.path.relpath(path, root)] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return out


def written(before: dict, after: dict) -> dict:
    """What a growth wrote, by kind: result chunks replaced (old data rewritten: their old and new bytes),
    new result chunks, coordinate chunks (new or replaced), metadata (zarr.json); and the totals."""
    out = {k: [0, 0] for k in ("replaced", "new", "coords", "meta")}  # kind → [files, bytes after]
    replaced_old = 0  # the bytes the replaced result chunks held before
    old_results = 0
    for rel, (_, size, _) in before.items():
        if Path(rel).parts[0] in RESULTS and Path(rel).name != "zarr.json":
            old_results += size
    for rel, (ino, size, mtime) in after.items():
        was = before.get(rel)
        if was is not None and was[0] == ino and was[2] == mtime:
            continue
        top, name = Path(rel).parts[0], Path(rel).name
        if name == "zarr.json":
            kind = "meta"
        elif top not in RESULTS:
            kind = "coords"
        elif was is None:
            kind = "new"
        else:
            kind = "replaced"
            replaced_old += was[1]
        out[kind][0] += 1
        out[kind][1] += size
    out["replaced_old"] = replaced_old
    out["old_results"] = old_results
    out["old_total"] = sum(v[1] for v in before.values())
    out["total"] = sum(v[1] for v in after.values())
    out["files"] = len(after)
    out["removed"] = len(set(before) - set(after))
    out["written"] = sum(out[k][1] for k in ("replaced", "new", "coords", "meta"))
    return out


def timed_run(spec: specs.Spec, out: Path) -> tuple[float, runner.Report]:
    """runner.run, its wall time; its 'growing …' line (stderr) kept off the output, anything else shown."""
    err = io.StringIO()
    t = time.perf_counter()
    with contextlib.redirect_stderr(err):
        report = runner.run(spec, out)
    seconds = time.perf_counter() - t
    for line in err.getvalue().splitlines():
        if not line.startswith("linflow: growing"):
            print(line, file=sys.stderr)
    return seconds, report


def same_results(a: Path, b: Path) -> str:
    """Whether two stores hold the same cells (bit for bit, NaN = NaN): 'same' or what differs."""
    da = store.load_results(store.open_group(a), a)
    db = store.load_results(store.open_group(b), b)
    for name in ("status", "excess_loss", "time_to_eps", "w_init", "w_final"):
        if not np.array_equal(da[name].values, db[name].values, equal_nan=name != "status"):
            return f"{name} differs"
    if not (da.status.values != Status.PENDING).all():
        return "pending cells left"
    return "same"


def spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} s ({min(xs):.2f}–{max(xs):.2f})"


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def case(name: str, folder: Path, repeats: int) -> dict:
    what, old_axes, new_axes = CASES[name]
    old, new = spec_of(old_axes), spec_of(new_axes)
    base = folder / f"{name}-base.zarr"
    t = time.perf_counter()
    built = runner.run(old, base)
    build = time.perf_counter() - t
    shape, chunks = store.layout(store.open_group(base))
    edge = [n % c != 0 for n, c in zip(shape, chunks)]
    grows = specs.extension(old, new)[0]
    edges = any(e for a, e in zip(old.axes, edge) if a in grows)
    cells_old, cells_new = math.prod(old.shape), math.prod(new.shape)
    grown = runner.growth_text(new, grows)
    print(
        f"\n({name}) {what}\n"
        f"  base: {cells_old:,} cells, grid {shape} over {tuple(old.axes)}, chunks {chunks} "
        f"({built.tasks_run} tasks, built in {build:.1f} s); grown: {grown}"
        f"; {'edge chunks shared by old and new cells' if edges else 'no chunk shared by old and new cells'}",
        flush=True,
    )
    grow_s, fresh_s, measures, checks = [], [], [], []
    grow_report = fresh_report = None
    for i in range(repeats):
        copy, fresh = folder / f"{name}-grown-{i}.zarr", folder / f"{name}-fresh-{i}.zarr"
        shutil.copytree(base, copy)
        before = files(copy)
        order = ("grow", "fresh") if i % 2 == 0 else ("fresh", "grow")  # neither always runs first
        for step in order:
            if step == "grow":
                seconds, grow_report = timed_run(new, copy)
                grow_s.append(seconds)
            else:
                seconds, fresh_report = timed_run(new, fresh)
                fresh_s.append(seconds)
        measures.append(written(before, files(copy)))
        if i == 0:
            checks.append(same_results(copy, fresh))
        fresh_chunks = store.layout(store.open_group(fresh))[1]
        shutil.rmtree(copy)
        shutil.rmtree(fresh)
    m = measures[0]
    varied = any(x["written"] != m["written"] or x["total"] != m["total"] for x in measures[1:])
    pct = 100 * m["written"] / m["total"]
    old_pct = 100 * m["replaced_old"] / m["old_total"]
    ok = pct <= TARGET
    print(
        f"  growth run: {grow_report.tasks_run} tasks, {grow_report.cells_run:,} cells computed; "
        f"fresh run of the grown grid: {fresh_report.tasks_run} tasks, {fresh_report.cells_run:,} cells "
        f"(chunks {fresh_chunks}); grown store = fresh store: {checks[0]}\n"
        f"  store: {m['old_total']:,} B in {len(before):,} files before, {m['total']:,} B in {m['files']:,} after "
        f"({m['removed']} removed)\n"
        f"  written by the growth: {m['written']:,} B = {pct:.2f}% of the grown store  (target ≤ {TARGET:.0f}%: "
        f"{'met' if ok else 'NOT met'})\n"
        f"    old result chunks replaced: {m['replaced'][0]:,} files, {m['replaced_old']:,} B before → "
        f"{m['replaced'][1]:,} B = {old_pct:.2f}% of the old store's bytes "
        f"({100 * m['replaced_old'] / m['old_results']:.2f}% of its result chunks)\n"
        f"    new result chunks: {m['new'][0]:,} files, {m['new'][1]:,} B; coordinate chunks: {m['coords'][0]} files, "
        f"{m['coords'][1]:,} B; metadata (zarr.json): {m['meta'][0]} files, {m['meta'][1]:,} B"
        + ("\n    (bytes varied between repeats: first repeat shown)" if varied else "")
        + f"\n  wall (medians of {repeats}, min–max): growth {spread(grow_s)}, fresh {spread(fresh_s)}; "
        f"growth / fresh = {statistics.median(grow_s) / statistics.median(fresh_s):.2f}  (load {load()})",
        flush=True,
    )
    return {
        "name": name,
        "chunks": chunks,
        "cells": (cells_old, cells_new - cells_old),
        "tasks": grow_report.tasks_run,
        "pct": pct,
        "old_pct": old_pct,
        "ok": ok,
        "grow": statistics.median(grow_s),
        "fresh": statistics.median(fresh_s),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2, help="CPUs of the local Ray instance.")
    ap.add_argument("--cases", default=",".join(CASES), help=f"Cases to run, comma-separated ({', '.join(CASES)}).")
    ap.add_argument("--keep", type=Path, help="Build the stores here (default: a temporary folder); bases are kept.")
    args = ap.parse_args()
    names = args.cases.split(",")
    unknown = [n for n in names if n not in CASES]
    if unknown:
        ap.error(f"unknown case(s) {', '.join(unknown)}; choose among {', '.join(CASES)}")
    print(
        f"machine: {os.cpu_count()} cores; load average {load()} (1/5/15 min); local Ray, {args.workers} workers; "
        f"model exact, m 20, dx 4, dy 1, 11 checkpoints, batch 256; medians of {args.repeats}"
    )
    started = time.perf_counter()
    owner = cluster.connect(workers=args.workers)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) if args.keep is None else args.keep
            folder.mkdir(parents=True, exist_ok=True)
            rows = [case(n, folder, args.repeats) for n in names]
    finally:
        if owner:
            cluster.stop_ray()
    print(f"\nall cases: {time.perf_counter() - started:.0f} s; load average at the end {load()}\n")
    head = f"{'case':<5}{'base cells':>11}{'new':>7}{'chunks':>20}{'tasks':>7}{'written':>10}{'old rewr.':>11}"
    print(head + f"{'growth s':>10}{'fresh s':>9}{'ratio':>7}  ≤ {TARGET:.0f}%")
    for r in rows:
        print(
            f"{r['name']:<5}{r['cells'][0]:>11,}{r['cells'][1]:>7,}{str(r['chunks']):>20}{r['tasks']:>7}"
            f"{r['pct']:>9.2f}%{r['old_pct']:>10.2f}%{r['grow']:>10.2f}{r['fresh']:>9.2f}"
            f"{r['grow'] / r['fresh']:>7.2f}  {'met' if r['ok'] else 'NOT met'}"
        )


if __name__ == "__main__":
    main()
