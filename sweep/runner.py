"""Run a sweep: check the spec against the output, lay out the store, send the batches still to do
to Ray, and write what comes back — the driver is the only writer.

Tasks are pure (:func:`sweep.batch.run_batch`). A worker that dies is retried by Ray; a batch that
raises is split into single cells so that only the cells that fail are marked ``failed`` (with their
error recorded in the store's attrs), and the sweep goes on.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import batch as batches
from . import kernel, store
from .lock import StoreLock
from .problem import Problem, build
from .spec import Spec, SpecError

# BLAS inside a task stays single-threaded: one task per core is the parallelism
SINGLE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
# test hooks, passed to the workers only when set in the driver's environment (never in normal runs)
TEST_HOOKS = ("LINFLOW_TEST_KILL_WORKER", "LINFLOW_TEST_FAIL_SEED")
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


def prepare(spec: Spec, out: str | Path) -> tuple[Problem, str, bool]:
    """Check everything before anything is written: the problem data, and ``out`` against the spec.
    Returns (problem, fingerprint, exists). Raises SpecError on bad input."""
    problem = build(spec.problem)
    if spec.model == "exact" and problem.dy != 1:
        raise SpecError("model", f"exact (the closed form of theory.md §4) needs a scalar output, dy = 1; the data has dy = {problem.dy}")
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
    if not parent.is_dir():
        raise SpecError("--out", f"cannot create {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK):
        raise SpecError("--out", f"cannot create {path}: {parent} is not writable")
    return problem, fingerprint, False


MEMORY_LIMIT = 2 * 2**30  # bytes: the driver's store template, and one task's working set


def check_memory(spec: Spec, problem: Problem) -> None:
    """Refuse grids whose store template, or batches whose working set, would not fit in memory
    (Ray retries a task killed for memory forever)."""
    from .init import layer_dims

    count = spec.checkpoints["count"]
    per_cell = 8 * (2 * count + 2 * problem.dy * problem.dx + 6)
    cells = int(np.prod(spec.shape))
    if cells * per_cell > MEMORY_LIMIT:
        raise SpecError("axes", f"the grid has {cells:,} cells: its results need {cells * per_cell / 2**30:.1f} GiB "
                                f"(limit {MEMORY_LIMIT / 2**30:.0f} GiB); split the sweep into several stores")
    method = kernel.METHODS[spec.integrator["method"]]
    for depth in spec.axes["depth"]:
        for width in spec.axes["width"]:
            dims = layer_dims(problem.dx, problem.dy, depth, width)
            state = sum(a * b for a, b in itertools.pairwise(dims)) if spec.model == "layerwise" else problem.dx * problem.dy
            need = spec.batch * 8 * ((method.stages + 5) * state + per_cell // 8)
            if need > MEMORY_LIMIT:
                raise SpecError("batch", f"{spec.batch} cells per task need {need / 2**30:.1f} GiB at depth {depth}, "
                                         f"width {width} (limit {MEMORY_LIMIT / 2**30:.0f} GiB); use a smaller batch")


def _task(payload, region, mask):
    import ray

    spec, problem = payload
    node = ray.get_runtime_context().get_node_id()
    try:
        results, errors = batches.run_batch(spec, problem, region, mask), []
    except Exception:  # noqa: BLE001 — isolate the failing cells, the rest of the batch stands
        results, errors = _cell_by_cell(spec, problem, region, mask)
    _test_kill_hook()
    return region, mask, results, errors, node


def _cell_by_cell(spec, problem, region, mask):
    """The batch one cell at a time: the cells that raise are marked failed, with their error."""
    results = batches.empty_results(spec, problem, tuple(s.stop - s.start for s in region))
    errors = []
    for idx in zip(*np.nonzero(mask)):
        one = np.zeros(mask.shape, dtype=bool)
        one[idx] = True
        try:
            part = batches.run_batch(spec, problem, region, one)
        except Exception as exc:  # noqa: BLE001
            results["status"][idx] = kernel.FAILED
            cell = {n: _plain(np.asarray(v)[s.start + i]) for (n, v), s, i in zip(spec.axes.items(), region, idx)}
            errors.append((cell, f"{type(exc).__name__}: {exc}"))
            continue
        for name in results:
            results[name][idx] = part[name][idx]
    return results, errors


def _plain(v):
    return v.item() if hasattr(v, "item") else v


def _test_kill_hook():
    """LINFLOW_TEST_KILL_WORKER=FILE: the first task to run kills its own worker process after
    computing its batch (before returning it), once — FILE marks that it happened."""
    marker = os.environ.get("LINFLOW_TEST_KILL_WORKER")
    if marker:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        os._exit(1)


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


def connect(address: str | None = None, workers: int | None = None) -> bool:
    """Attach to the Ray cluster at ``address`` (or RAY_ADDRESS), else start a local instance with
    ``workers`` CPUs (default: all). Returns True when this call started Ray (and should stop it)."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    common = {"runtime_env": runtime_env(address), "logging_level": logging.ERROR, "configure_logging": True}
    if address:
        ray.init(address=address, **common)
    else:
        ray.init(num_cpus=workers, include_dashboard=False, **common)
    return True


def run(spec: Spec, out: str | Path, *, address=None, workers=None, progress=None, retry_failed=False) -> Report:
    """Run (or resume) the sweep ``spec`` into the store ``out``.

    Only the cells still pending are computed (and, with ``retry_failed``, the failed ones).
    ``progress(done_cells, total_cells)`` is called after each stored batch."""
    started = time.perf_counter()
    problem, fingerprint, exists = prepare(spec, out)
    lock = StoreLock(out)
    try:
        Path(out).resolve().parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except OSError as exc:
        raise SpecError("--out", f"cannot create {out}: {exc.strerror or exc}") from None
    try:
        if not exists:
            try:
                store.create(out, spec, problem, fingerprint)
            except OSError as exc:
                raise SpecError("--out", f"cannot create {out}: {exc.strerror or exc}") from None
        group = store.open_group(out, mode="r+")
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
    return report


def _dispatch(spec, problem, group, work, report, lock, address, workers, progress):
    import ray

    owner = connect(address, workers)
    try:
        task = ray.remote(num_cpus=1, max_retries=3)(_task)
        payload = ray.put((spec, problem))
        limit = 2 * max(1, int(workers or ray.cluster_resources().get("CPU", 1)))
        queue = list(reversed(work))
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
            region, mask, results, errors, node = ray.get(ready[0])
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
