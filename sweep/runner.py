"""Run a sweep: check the spec against the output, lay out the store, send the batches still to do
to Ray, and write what comes back — the driver is the only writer.

Tasks are pure (:func:`sweep.batch.run_batch`). A worker that dies is retried by Ray; a batch that
raises is split into single cells so that only the cells that fail are marked ``failed`` (with their
error recorded in the store's attrs), and the sweep goes on.
"""

from __future__ import annotations

import logging
import math
import os
import resource
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import kernel, store
from .lock import StoreLock
from .problem import Problem, build
from .spec import Spec, SpecError
from .task import run_task

# BLAS inside a task stays single-threaded: one task per core is the parallelism
SINGLE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
# test hooks, passed to the workers only when set in the driver's environment (never in normal runs)
TEST_HOOKS = ("LINFLOW_TEST_KILL_WORKER", "LINFLOW_TEST_FAIL_SEED")  # read in sweep.task and sweep.batch
HEARTBEAT_SECONDS = 30.0


class StoreWriteError(RuntimeError):
    """Writing the store failed mid-run (disk full, permissions): finished batches are safe."""


@dataclass
class Report:
    """What a run did: the store's status counts after it, and the batches it computed."""

    path: str
    counts: dict
    batches_run: int = 0
    cells_run: int = 0
    seconds: float = 0.0
    errors: list = field(default_factory=list)
    nodes: list = field(default_factory=list)
    kernel_seconds: float = 0.0  # compute time summed over the batches (in the workers)
    startup_seconds: float = 0.0  # connecting to (or starting) Ray
    driver_peak_rss_mb: float = 0.0


def prepare(spec: Spec, out: str | Path) -> tuple[Problem, str, bool]:
    """Check everything before anything is written: the problem data, and ``out`` against the spec.
    Returns (problem, fingerprint, exists). Raises SpecError on bad input."""
    problem = build(spec.problem)
    if spec.model == "exact" and problem.dy != 1:
        raise SpecError("model", f"exact (the closed form of docs/theory.md §4) needs a scalar output, dy = 1; the data has dy = {problem.dy}")
    check_memory(spec, problem)
    fingerprint = spec.fingerprint(problem.digest())
    path = Path(out)
    if path.exists():
        group = store.open_group(path)
        if group.attrs["fingerprint"] != fingerprint:
            raise SpecError(
                "--out",
                f"{path} holds a different sweep (fingerprint {group.attrs['fingerprint']}, this spec "
                f"{fingerprint}); choose a new --out or rerun with the spec that made it",
            )
        return problem, fingerprint, True
    parent = path.resolve().parent
    while not parent.exists():
        parent = parent.parent
    inside = next((p for p in (parent, *parent.parents) if store.is_store(p)), None)
    if inside is not None:
        raise SpecError("--out", f"cannot create {path} inside the store {inside}; choose a folder outside it")
    if not parent.is_dir():
        raise SpecError("--out", f"cannot create {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK):
        raise SpecError("--out", f"cannot create {path}: {parent} is not writable")
    return problem, fingerprint, False


MEMORY_LIMIT = 2 * 2**30  # bytes: the driver's store template, and one task's working set


def check_memory(spec: Spec, problem: Problem) -> None:
    """Refuse grids whose store template, or batches whose working set, would not fit in memory
    (Ray retries a task killed for memory forever). A task holds the cells of one chunk
    (≤ ``batch``, and never more than the grid has at one depth and width): their results, the
    integrator's stages, and the layers of every start — built even for the induced model, whose
    balanced starts factor W0 through width×width layers."""
    from .batch import chunk_shape
    from .init import parameter_count

    count = spec.checkpoints["count"]
    per_cell = 8 * (2 * count + 2 * problem.dy * problem.dx + 6)
    cells = math.prod(spec.shape)
    if per_cell > MEMORY_LIMIT:
        raise SpecError("checkpoints.count", f"one cell's {count:,} checkpoints need {per_cell / 2**30:.1f} GiB "
                                             f"(limit {MEMORY_LIMIT / 2**30:.0f} GiB); use fewer checkpoints")
    if cells * per_cell > MEMORY_LIMIT:
        advice = " or use fewer checkpoints" if 2 * count > 2 * problem.dy * problem.dx + 6 else ""
        raise SpecError("axes", f"the grid has {cells:,} cells: its results need {cells * per_cell / 2**30:.1f} GiB "
                                f"(limit {MEMORY_LIMIT / 2**30:.0f} GiB); split the sweep into several stores{advice}")
    method = kernel.METHODS[spec.integrator["method"]]
    per_task = math.prod(chunk_shape(spec.shape, tuple(spec.axes), spec.batch))
    depth, width = max(spec.axes["depth"]), max(spec.axes["width"])  # the parameters grow with both
    layers = parameter_count(problem.dx, problem.dy, depth, width)
    if spec.model == "layerwise":  # state and stages are the layers; the starts are packed into it
        per_state = 8 * ((method.stages + 6) * layers)
    elif spec.model == "induced":  # state W (dy×dx); the starts' layers are built, then multiplied out
        per_state = 8 * ((method.stages + 5) * problem.dx * problem.dy + layers)
    else:  # exact: closed form of W0 only
        per_state = 8 * 4 * problem.dx * problem.dy
    transient = 8 * layers if spec.model != "exact" else 0  # one start being factored
    need = per_task * (per_state + per_cell) + transient
    if need <= MEMORY_LIMIT:
        return
    where = f"at depth {depth}, width {width}"
    one = per_state + per_cell + transient
    gib = MEMORY_LIMIT / 2**30
    if one <= MEMORY_LIMIT:
        fits = (MEMORY_LIMIT - transient) // (per_state + per_cell)
        raise SpecError("batch", f"{per_task} cells per task need {need / 2**30:.1f} GiB {where} (limit {gib:.0f} GiB); "
                                 f"use --batch {fits} or less")
    if per_cell >= per_state:
        raise SpecError("checkpoints.count", f"one cell needs {one / 2**30:.1f} GiB {where}, mostly its {count:,} "
                                             f"checkpoints (limit {gib:.0f} GiB); use fewer checkpoints")
    raise SpecError("axes.width", f"one cell needs {one / 2**30:.1f} GiB {where}: its layers hold {layers:,} numbers "
                                  f"(limit {gib:.0f} GiB); use a smaller width or depth")


def runtime_env(address: str | None) -> dict:
    """Environment of the workers: single-threaded BLAS, test hooks; on a cluster also the
    ``sweep`` package itself (workers need not have linflow installed)."""
    env_vars = dict(SINGLE_THREAD)
    env_vars.update({k: os.environ[k] for k in TEST_HOOKS if k in os.environ})
    env = {"env_vars": env_vars}
    if address:
        env["py_modules"] = [str(Path(__file__).resolve().parent)]
        env["excludes"] = ["*.zarr", "runs/", "__pycache__/"]
    return env


def check_address(address: str | None) -> None:
    """Fail fast (SpecError) when a named cluster's port does not answer: ray.init would otherwise
    retry for minutes. ``auto`` and unnamed (local) are not checked."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if not address or address == "auto":
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise SpecError("--address", f"expected HOST:PORT or ray://HOST:PORT, got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise SpecError("--address", f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}); is it up?") from None


def connect(address: str | None = None, workers: int | None = None) -> bool:
    """Attach to the Ray cluster at ``address`` (or RAY_ADDRESS), else start a local instance with
    ``workers`` CPUs (default: all). Returns True when this call started Ray (and should stop it)."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    quiet = {"logging_level": logging.ERROR, "configure_logging": True}
    if address:
        ray.init(address=address, runtime_env=runtime_env(address), **quiet)
        return True
    # a local instance inherits the driver's environment: set it for the Ray processes started here,
    # so the workers Ray starts ahead of time (default environment) serve the tasks without a cold start
    env_vars = runtime_env(None)["env_vars"]
    saved = {k: os.environ.get(k) for k in env_vars}
    os.environ.update(env_vars)
    try:
        ray.init(num_cpus=workers, include_dashboard=False, **quiet)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return True


def run(spec: Spec, out: str | Path, *, address=None, workers=None, progress=None, retry_failed=False) -> Report:
    """Run (or resume) the sweep ``spec`` into the store ``out``.

    Only the cells still pending are computed (and, with ``retry_failed``, the failed ones).
    ``progress(done_cells, total_cells)`` is called after each stored batch."""
    started = time.perf_counter()
    problem, fingerprint, exists = prepare(spec, out)
    check_address(address)
    where = Path(out).resolve()  # a store is one store under any of its names (symlinks): one lock
    lock = StoreLock(where)
    try:
        where.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except OSError as exc:
        raise SpecError("--out", f"cannot create {out}: {exc.strerror or exc}") from None
    if lock.taken_over is not None:
        print(f"linflow: warning: {lock.takeover_message()}", file=sys.stderr)
    try:
        if not exists:
            try:
                store.create(where, spec, problem, fingerprint)
            except OSError as exc:
                raise SpecError("--out", f"cannot create {out}: {exc.strerror or exc}") from None
        group = store.open_group(out, mode="r+")
        store.recheck(group, out)  # lost or torn chunks of done cells (a partial copy): back to pending
        work = store.todo(group, retry_failed)
        total = int(np.prod(store.layout(group)[0]))
        done = total - sum(int(m.sum()) for _, m in work)
        report = Report(path=str(out), counts={})
        if progress:
            progress(done, total)
        if work:
            _dispatch(spec, problem, group, work, report, lock, address, workers,
                      lambda n: progress(done + n, total) if progress else None)
        report.counts = store.counts(group)
    finally:
        lock.release()
    report.seconds = time.perf_counter() - started
    report.driver_peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return report


def _cost(spec, problem, region, mask) -> float:
    from .init import parameter_count

    depth, width = (int(np.asarray(spec.axes[a])[region[i].start]) for i, a in enumerate(("depth", "width")))
    return float(mask.sum()) * parameter_count(problem.dx, problem.dy, depth, width)


def _dispatch(spec, problem, group, work, report, lock, address, workers, progress):
    import ray

    started = time.perf_counter()
    owner = connect(address, workers)
    report.startup_seconds = time.perf_counter() - started
    try:
        task = ray.remote(num_cpus=1, max_retries=3)(run_task)
        payload = ray.put((spec, problem))
        limit = 2 * max(1, int(workers or ray.cluster_resources().get("CPU", 1)))
        # longest first (cells × parameters per cell), so that no long batch is left for the end alone
        queue = sorted(work, key=lambda w: _cost(spec, problem, *w))
        running = []
        nodes = set()
        last_beat = time.monotonic()
        while queue or running:
            while queue and len(running) < limit:
                region, mask = queue.pop()
                running.append(task.remote(payload, region, mask))
            ready, running = ray.wait(running, num_returns=1, timeout=HEARTBEAT_SECONDS)
            if time.monotonic() - last_beat > HEARTBEAT_SECONDS / 2:
                lock.beat()
                last_beat = time.monotonic()
            if not ready:
                continue
            region, mask, results, errors, node, seconds = ray.get(ready[0])
            report.kernel_seconds += seconds
            try:
                store.write_batch(group, region, results, mask)
                if errors or "failures" in group.attrs:
                    store.record_failures(group, region, mask, errors)
            except OSError as exc:
                raise StoreWriteError(
                    f"writing {report.path} failed ({exc.strerror or exc}); every batch written before "
                    "is intact — fix the cause and rerun the same command to finish") from None
            report.errors += [f"{cell}: {error}" for cell, error in errors]
            nodes.add(node)
            report.batches_run += 1
            report.cells_run += int(mask.sum())
            if progress:
                progress(report.cells_run)
        report.nodes = sorted(nodes)
    finally:
        if owner:
            ray.shutdown()
