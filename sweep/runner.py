"""Run a sweep: check the spec against the output, lay out the store, send the batches still to do
to Ray, and write what comes back — the driver is the only writer.

Tasks are pure (:func:`sweep.batch.run_batch`). A worker that dies is retried by Ray; a batch that
raises is split into single cells so that only the cells that fail are marked ``failed`` (with their
error recorded in the store's attrs), and the sweep goes on.
"""

from __future__ import annotations

import math
import os
import pickle
import resource
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import cluster, kernel, schema, store
from .errors import LinflowError, RayGone, SpecError, StoreError, StoreWriteError
from .models import MODELS
from .problem import Problem, build
from .schema import Status, plain
from .spec import Spec
from .store.lock import heartbeat_seconds
from .task import kernel_of, run_task

# a task's spec and data travel inside the task when this small (Ray inlines arguments under 100 KiB): no
# object-store copy that Ray's core would try to recover — and die on — when a signal to the whole process
# group has ended the raylet a moment before this driver
INLINE_BYTES = 64 * 2**10


@dataclass
class Report:
    """What a run did: the store's status counts after it, and the batches it computed."""

    path: str
    counts: dict
    batches_run: int = 0  # chunks written
    tasks_run: int = 0  # Ray tasks: each computes one or more chunks (:func:`_tasks`)
    cells_run: int = 0
    seconds: float = 0.0
    errors: list = field(default_factory=list)
    nodes: list = field(default_factory=list)
    kernel_seconds: float = 0.0  # compute time summed over the batches (in the workers)
    startup_seconds: float = 0.0  # connecting to (or starting) Ray
    driver_peak_rss_mb: float = 0.0
    grown: str = ""  # what the run grew: 'seed 8 → 32: 48 new cells' (empty: nothing)


class Plan(NamedTuple):
    """What :func:`prepare` found: the problem, the sweep's fingerprint, whether ``out`` exists, and
    the axes along which the store there grows ({axis: (its size, the new size)}; empty: none)."""

    problem: Problem
    fingerprint: str
    exists: bool
    grows: dict


def prepare(spec: Spec, out: str | Path) -> Plan:
    """Check everything before anything is written: the problem data, and ``out`` against the spec —
    the same sweep, or one that extends it along its axes (:func:`sweep.spec.extension`). Raises
    SpecError on a bad spec, StoreError on a bad ``out`` or a store holding another sweep."""
    problem = build(spec.problem)
    MODELS[spec.model].check_data(problem.dy)
    check_memory(spec, problem)
    fingerprint = spec.fingerprint(problem.digest())
    if store.is_url(out):  # object storage: one line when it cannot be served or reached
        store.check_new(out)  # (nothing there, or a store: then it must hold this sweep or one it extends)
        exists = store.is_store(out)
        return Plan(problem, fingerprint, exists, _growth(out, spec, problem, fingerprint) if exists else {})
    path = Path(out)
    if path.exists():
        return Plan(problem, fingerprint, True, _growth(path, spec, problem, fingerprint))
    store.check_new(path)
    parent = path.resolve().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise StoreError("out", f"cannot create {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK):
        raise StoreError("out", f"cannot create {path}: {parent} is not writable")
    return Plan(problem, fingerprint, False, {})


MEMORY_LIMIT = 2 * 2**30  # bytes: the driver's store template, and one task's working set


def _growth(path, spec: Spec, problem: Problem, fingerprint: str) -> dict:
    """The axes along which the store at ``path`` grows to ``spec`` ({axis: (old, new size)}; {} when it holds
    this very sweep), or StoreError naming the first difference when it holds another."""
    group = store.open_group(path)
    if group.attrs["fingerprint"] == fingerprint:
        return {}
    grows, difference = _extension(group, spec, problem)
    if difference or not grows:  # (not grows: a difference only the fingerprint sees)
        raise StoreError(
            "out",
            f"{path} holds a different sweep ({difference or 'fingerprint ' + group.attrs['fingerprint']}); "
            "choose another store or rerun with the spec that made it",
        )
    return grows


def _extension(group, spec: Spec, problem: Problem) -> tuple[dict, str | None]:
    """How ``spec`` extends the sweep a store holds ({axis: (old, new size)}, None), or ({}, the first
    difference in a few words: 'horizon 1.0 → 2.0', 'axes.seed: value 3 at position 3 → 5 (…)',
    'the data', 'the kernel version 2 → 3')."""
    from . import spec as specs
    from .kernel import KERNEL_VERSION

    try:
        old = specs.parse(store.stored_spec(group))
    except Exception:  # noqa: BLE001 — a store of another version: say only that it differs
        return {}, f"fingerprint {group.attrs['fingerprint']} → {spec.fingerprint(problem.digest())}"
    grows, difference = specs.extension(old, spec)
    if difference:
        return {}, difference
    if group.attrs.get("kernel_version") != KERNEL_VERSION:
        return {}, f"the kernel version {group.attrs.get('kernel_version')} → {KERNEL_VERSION}"
    if old.fingerprint(problem.digest()) != group.attrs["fingerprint"]:
        return {}, "the data"
    return grows, None


def growth_text(spec: Spec, grows: dict) -> str:
    """'depth 4 → 6, seed 8 → 32: 1,440 new cells': the grid of ``spec`` grown along ``grows`` ({axis: (old, new)})."""
    old = [grows.get(name, (n, n))[0] for name, n in zip(spec.axes, spec.shape)]
    what = ", ".join(f"{name} {a} → {b}" for name, (a, b) in grows.items())
    return f"{what}: {math.prod(spec.shape) - math.prod(old):,} new cells"


def check_memory(spec: Spec, problem: Problem) -> None:
    """Refuse grids whose store template, or batches whose working set, would not fit in memory
    (Ray retries a task killed for memory forever). A task holds the cells of one chunk
    (≤ ``batch``, and never more than the grid has at one depth and width): their results, the
    integrator's stages, and the layers of every start — built even for the induced model, whose
    balanced starts factor W0 through width×width layers."""
    from .batch import chunk_shape
    from .init import parameter_count

    count = spec.checkpoints.count
    per_cell = schema.cell_bytes(count, problem.dy, problem.dx, schema.stored(spec.record))
    cells = math.prod(spec.shape)
    if per_cell > MEMORY_LIMIT:
        raise SpecError(
            "checkpoints.count",
            f"one cell's {count:,} checkpoints need {per_cell / 2**30:.1f} GiB "
            f"(limit {MEMORY_LIMIT / 2**30:.0f} GiB); use fewer checkpoints",
        )
    if cells * per_cell > MEMORY_LIMIT:
        advice = " or use fewer checkpoints" if 2 * count > 2 * problem.dy * problem.dx + 6 else ""
        raise SpecError(
            "axes",
            f"the grid has {cells:,} cells: its results need {cells * per_cell / 2**30:.1f} GiB "
            f"(limit {MEMORY_LIMIT / 2**30:.0f} GiB); split the sweep into several stores{advice}",
        )
    method = kernel.METHODS[spec.integrator.method]
    per_task = math.prod(chunk_shape(spec.shape, tuple(spec.axes), spec.batch))
    depth, width = max(spec.axes["depth"]), max(spec.axes["width"])  # the parameters grow with both
    layers = parameter_count(problem.dx, problem.dy, depth, width)
    model = MODELS[spec.model]
    # its working set, and W at every checkpoint (what the records are derived from)
    per_state = (
        model.state_bytes(method.stages, problem.dx, problem.dy, depth, width) + 8 * count * problem.dy * problem.dx
    )
    transient = 8 * layers if model.integrated else 0  # one start being factored
    need = per_task * (per_state + per_cell) + transient
    if need <= MEMORY_LIMIT:
        return
    where = f"at depth {depth}, width {width}"
    one = per_state + per_cell + transient
    gib = MEMORY_LIMIT / 2**30
    if one <= MEMORY_LIMIT:
        fits = (MEMORY_LIMIT - transient) // (per_state + per_cell)
        raise SpecError(
            "batch",
            f"{per_task} cells per task need {need / 2**30:.1f} GiB {where} (limit {gib:.0f} GiB); "
            f"use --batch {fits} or less",
        )
    if per_cell >= per_state:
        raise SpecError(
            "checkpoints.count",
            f"one cell needs {one / 2**30:.1f} GiB {where}, mostly its {count:,} "
            f"checkpoints (limit {gib:.0f} GiB); use fewer checkpoints",
        )
    raise SpecError(
        "axes.width",
        f"one cell needs {one / 2**30:.1f} GiB {where}: its layers hold {layers:,} numbers "
        f"(limit {gib:.0f} GiB); use a smaller width or depth",
    )


def run(
    spec: Spec, out: str | Path, *, address=None, workers=None, progress=None, retry_failed=False, say=None
) -> Report:
    """Run (or resume) the sweep ``spec`` into the store ``out``.

    Only the cells still pending are computed (and, with ``retry_failed``, the failed ones).
    ``progress(done_cells, total_cells)`` is called after each stored batch. What is worth a line — a lock
    taken over, a growth, damaged cells marked pending — goes to ``say(text)`` (the CLI prints it);
    without ``say``, the warnings among them are ``warnings.warn``-ed (a notebook shows them)."""
    started = time.perf_counter()
    problem, fingerprint, exists, grows = prepare(spec, out)
    cluster.check_address(address)
    where = out if store.is_url(out) else Path(out).resolve()  # one store under any of its names: one lock
    lock = store.lock_for(where)
    try:
        if not store.is_url(where):
            where.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except OSError as exc:
        raise StoreError("out", f"cannot create {out}: {exc.strerror or exc}") from None
    if lock.taken_over is not None:
        _notice(say, lock.takeover_message())
    ray_ = _Ray(address, workers, [kernel_of(spec)])
    try:
        try:
            if not exists:  # every cell is to compute: Ray starts now, and its workers start and load the
                ray_.start()  # kernel while the store is laid out (they compute nothing before it is made)
                store.create(where, spec, problem, fingerprint)
                lock.pin()
            else:  # what a driver killed mid-growth left, then the store checked again: it may have changed since
                lock.pin()
                store.settle(where)
                grows = _growth(out, spec, problem, fingerprint)
            if grows:
                store.grow(where, spec, fingerprint, lock.check)
                _notice(say, f"growing {out}: {growth_text(spec, grows)}", warning=False)
        except OSError as exc:
            raise StoreError("out", f"cannot {'grow' if exists else 'create'} {out}: {exc.strerror or exc}") from None
        group = store.open_group(out, mode="r+")
        shape = store.layout(group)[0]
        if shape != spec.shape:  # never computes a grid with another spec's coordinates
            raise StoreError("out", f"{out}'s grid {shape} is not the spec's {spec.shape}")
        damage = store.recheck(group, out, lock.check)  # lost or torn chunks of done cells (a partial copy): pending
        if damage.cells:
            _notice(say, f"{damage.summary()}; marked pending — they will be recomputed")
        work = store.todo(group, retry_failed)
        total = math.prod(shape)
        done = total - sum(int(m.sum()) for _, m in work)
        report = Report(path=str(out), counts={}, grown=growth_text(spec, grows) if grows else "")
        if progress:
            progress(done, total)
        if work:
            _dispatch(
                spec,
                problem,
                group,
                work,
                report,
                lock,
                ray_,
                workers,
                lambda n: progress(done + n, total) if progress else None,
            )
        report.counts = store.counts(group)
    finally:
        lock.release()  # the store is free before Ray's stop, however long that takes
        ray_.stop()
    report.startup_seconds = ray_.seconds
    report.seconds = time.perf_counter() - started
    report.driver_peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return report


def run_all(specs: dict[str, Spec], folder: str | Path, *, address=None, workers=None, progress=None, say=None) -> dict:
    """Run (or resume) several sweeps on one Ray connection, each into ``folder/NAME.zarr``; returns
    {name: store path}. ``progress(name, done, total)``; ``say`` as :func:`run`'s."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stores = {name: folder / f"{name}.zarr" for name in specs}
    owner = cluster.connect(address, workers, kernels=[kernel_of(s) for s in specs.values()])
    try:
        for name, spec in specs.items():
            report = (lambda d, t, n=name: progress(n, d, t)) if progress else None
            run(spec, stores[name], address=address, workers=workers, progress=report, say=say)
    finally:
        if owner:
            cluster.stop_ray()
    return stores


def _notice(say, text: str, warning: bool = True) -> None:
    """``text`` to ``say`` ('warning: ' before a warning), or without ``say`` a warning to ``warnings.warn``."""
    if say is not None:
        say(f"warning: {text}" if warning else text)
    elif warning:
        warnings.warn(text, RuntimeWarning, stacklevel=3)


def run_local(spec: Spec, problem: Problem | None = None):
    """Every cell of ``spec`` computed in this process, one batch after another — no Ray, no store, no
    lock: the dataset a finished run's store holds, bit for bit (cells depend only on their coordinates).
    For tests, benchmarks and small notebook sweeps."""
    from .batch import chunk_shape, regions, run_batch

    problem = build(spec.problem) if problem is None else problem
    ds, _ = store.template(spec, problem, spec.fingerprint(problem.digest()))
    ds = ds.copy(deep=True)  # the template's pending values are read-only broadcasts
    for region in regions(spec.shape, chunk_shape(spec.shape, tuple(spec.axes), spec.batch)):
        for name, values in run_batch(spec, problem, region).items():
            ds[name].values[region] = values
    return ds


def _tasks(work: list, names: tuple[str, ...], batch: int) -> list[list]:
    """The chunks to compute (``work``: (region, mask), in the grid's C order) grouped into tasks: neighbouring
    chunks of one depth and width, up to ``batch`` cells to compute a task (a chunk with more is a task alone).
    A grown store keeps its chunks, however small (seeds 8 → 1024 in chunks of 8): its tasks are not."""
    d, w = names.index("depth"), names.index("width")
    tasks, size, key = [], 0, None
    for region, mask in work:
        cells, here = int(mask.sum()), (region[d].start, region[w].start)
        if not tasks or here != key or size + cells > batch:
            tasks.append([])
            size, key = 0, here
        tasks[-1].append((region, mask))
        size += cells
    return tasks


def _cost(spec, problem, region, mask) -> float:
    from .init import parameter_count

    depth, width = (int(np.asarray(spec.axes[a])[region[i].start]) for i, a in enumerate(("depth", "width")))
    return float(mask.sum()) * parameter_count(problem.dx, problem.dy, depth, width)


class _Ray:
    """Ray for one run: connected to (or started: :func:`sweep.cluster.connect`) once, by :meth:`start` — before
    the store is laid out when every cell is to compute, else only once there is work —, and stopped by
    :meth:`stop` when this run started it. ``seconds``: the time it took to start (the Report's startup_seconds)."""

    def __init__(self, address, workers, kernels):
        self.address, self.workers, self.kernels = address, workers, kernels
        self.started = self.owner = False
        self.others = set()
        self.seconds = 0.0

    def start(self) -> None:
        if self.started:
            return
        self.started = True
        began = time.perf_counter()
        self.others = {p.pid for p in cluster.ray_descendants()}  # Ray processes of this process not this run's
        try:
            self.owner = cluster.connect(self.address, self.workers, kernels=self.kernels)
        except (LinflowError, KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 — Ray did not start, or the cluster refused this driver
            raise RayGone(f"Ray did not start ({_one_line(exc)})") from None
        finally:
            self.seconds = time.perf_counter() - began

    def stop(self) -> None:
        if self.owner:
            self.owner = False
            cluster.stop_ray(keep=self.others)


BATCH_ATTEMPTS = 2  # submissions of a batch whose task Ray loses (each after Ray's own max_retries)
WAIT_SECONDS = 1.0  # between checks that Ray is still there (its core ends the driver some 15 s after the raylet)


def _dispatch(spec, problem, group, work, report, lock, ray_, workers, progress):
    import ray
    from ray import exceptions as rx

    done = False
    address = ray_.address
    try:
        ray_.start()
        owner = ray_.owner
        task = ray.remote(num_cpus=1, max_retries=3)(run_task)
        payload = (spec, problem)
        if len(pickle.dumps(payload)) > INLINE_BYTES:  # large data: one copy in the object store, not one per task
            payload = ray.put(payload)
        limit = 2 * max(1, int(workers or ray.cluster_resources().get("CPU", 1)))
        # longest first (cells × parameters per cell), so that no long task is left for the end alone
        tasks = sorted(
            _tasks(work, tuple(spec.axes), spec.batch), key=lambda t: sum(_cost(spec, problem, *c) for c in t)
        )
        queue = [(chunks, 1) for chunks in tasks]
        running = {}  # object ref → (chunks, attempt)
        nodes = set()
        # whether the store records failures: read once (the handle was opened under this run's lock, and only this
        # run adds them), so that a batch without errors in a store without failures opens no root metadata
        recorded = "failures" in group.attrs
        last_beat = time.monotonic()
        while queue or running:
            try:
                while queue and len(running) < limit:
                    chunks, attempt = queue.pop()
                    running[task.remote(payload, chunks)] = (chunks, attempt)
                ready, _ = ray.wait(list(running), num_returns=1, timeout=WAIT_SECONDS)
            except (rx.RaySystemError, rx.LocalRayletDiedError, ConnectionError) as exc:
                raise RayGone(f"Ray stopped mid-run ({_one_line(exc)})") from None
            if owner and not address:
                cluster.check_local_ray()
            if time.monotonic() - last_beat > heartbeat_seconds():
                lock.beat()  # LockLost when another driver took the lock over meanwhile
                last_beat = time.monotonic()
            if not ready:
                continue
            chunks, attempt = running.pop(ready[0])
            try:
                computed, node, seconds = ray.get(ready[0])
            except (rx.RaySystemError, rx.LocalRayletDiedError, ConnectionError) as exc:
                raise RayGone(f"Ray stopped mid-run ({_one_line(exc)})") from None
            except rx.RayError as exc:  # the task was lost (its worker died each time, its result was lost, …)
                if attempt < BATCH_ATTEMPTS:
                    queue.append((chunks, attempt + 1))
                    continue
                why = f"{_one_line(exc)} (after {attempt} attempts)"
                node, seconds = None, 0.0
                computed = [(r, m, _lost_batch(spec, problem, r, m), _cell_errors(spec, r, m, why)) for r, m in chunks]
            report.kernel_seconds += seconds
            for region, mask, results, errors in computed:
                try:
                    store.write_batch(group, region, results, mask, lock.check)
                    if errors or recorded:
                        store.record_failures(group, region, mask, errors, lock.check)
                        recorded = True
                except OSError as exc:
                    raise StoreWriteError(
                        f"writing {report.path} failed ({exc.strerror or exc}); every batch written before "
                        "is intact — fix the cause and rerun the same command to finish"
                    ) from None
                report.errors += [f"{cell}: {error}" for cell, error in errors]
                report.batches_run += 1
                report.cells_run += int(mask.sum())
            if node:
                nodes.add(node)
            report.tasks_run += 1
            if progress:
                progress(report.cells_run)
        report.nodes = sorted(nodes)
        done = True
    finally:
        if not done:  # stopped by a signal or a failure: the driver writes no more, so the store is free
            lock.release()  # (run releases it again: a no-op), then run stops Ray


def _lost_batch(spec, problem, region, mask) -> dict:
    """The results of a batch Ray could not compute: its cells ``failed``, the rest pending."""
    from .batch import empty_results

    results = empty_results(spec, problem, tuple(s.stop - s.start for s in region))
    results["status"][mask] = Status.FAILED
    return results


def _cell_errors(spec, region, mask, error: str) -> list:
    """(cell coordinates, error) for each cell of ``mask`` in ``region``."""
    names = list(spec.axes)
    return [
        ({n: plain(spec.axes[n][s.start + i]) for n, s, i in zip(names, region, idx)}, error)
        for idx in zip(*np.nonzero(mask))
    ]


def _one_line(exc: BaseException) -> str:
    """An exception as one line: its type, and the first line of its message."""
    cause = getattr(exc, "cause", None)  # RayTaskError: what the task raised
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    name = type(cause).__name__ if isinstance(cause, BaseException) else type(exc).__name__
    return f"{name}: {text[:300]}" if text else name
