"""Run a sweep: lay out (or reopen) the store, send pending batches to Ray, write what comes back.

The driver is the only writer. Tasks are pure (:func:`sweep.batch.run_batch`); a task that raises
marks its cells ``failed`` instead of stopping the sweep, and a dead worker is retried by Ray.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import batch as batches
from . import kernel, store
from .problem import Problem, build
from .spec import Spec, SpecError

# BLAS inside a task stays single-threaded: one task per core is the parallelism
SINGLE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


@dataclass
class Report:
    """What a run did: the store's status counts after it, and the batches it computed."""

    path: str
    counts: dict
    batches_run: int = 0
    cells_run: int = 0
    seconds: float = 0.0
    errors: list = field(default_factory=list)


def prepare(spec: Spec, out: str | Path) -> tuple[Problem, str, bool]:
    """Build the problem, check ``out`` against the spec, and create the store if it is new.
    Returns (problem, fingerprint, resumed). Raises SpecError before touching anything on bad input."""
    problem = build(spec.problem)
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
    path.parent.mkdir(parents=True, exist_ok=True)
    store.create(path, spec, problem, fingerprint)
    return problem, fingerprint, False


def _task(payload, region):
    spec, problem = payload
    try:
        return region, batches.run_batch(spec, problem, region), None
    except Exception as exc:  # noqa: BLE001 — reported per batch, the sweep goes on
        return region, None, f"{type(exc).__name__}: {exc}"


def _failed(group, region) -> dict:
    shape = tuple(s.stop - s.start for s in region)
    out = {}
    for name, (_, _, tail, dtype, fill) in store.RESULTS.items():
        full = shape + tuple(group[name].shape[len(shape):])
        out[name] = np.full(full, fill, dtype=dtype)
    out["status"][...] = kernel.FAILED
    return out


def connect(address: str | None = None, workers: int | None = None) -> bool:
    """Attach to the Ray cluster at ``address`` (or RAY_ADDRESS), else start a local instance with
    ``workers`` CPUs (default: all). Returns True when this call started Ray (and should stop it)."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    runtime_env = {"env_vars": dict(SINGLE_THREAD)}
    common = dict(runtime_env=runtime_env, logging_level=logging.ERROR, configure_logging=True)
    if address:
        ray.init(address=address, **common)
    else:
        ray.init(num_cpus=workers, include_dashboard=False, **common)
    return True


def run(spec: Spec, out: str | Path, *, address=None, workers=None, progress=None) -> Report:
    """Run (or resume) the sweep ``spec`` into the store ``out``.

    ``progress(done_cells, total_cells)`` is called after each stored batch."""
    import ray

    started = time.perf_counter()
    problem, _, _ = prepare(spec, out)
    group = store.open_group(out, mode="r+")
    todo = store.pending_regions(group)
    total = int(np.prod(store.layout(group)[0]))
    done = total - sum(int(np.prod([s.stop - s.start for s in r])) for r in todo)
    report = Report(path=str(out), counts={})
    if progress:
        progress(done, total)
    if todo:
        owner = connect(address, workers)
        try:
            task = ray.remote(num_cpus=1, max_retries=3)(_task)
            payload = ray.put((spec, problem))
            limit = 2 * max(1, int(workers or ray.cluster_resources().get("CPU", 1)))
            queue = list(reversed(todo))
            running = []
            while queue or running:
                while queue and len(running) < limit:
                    running.append(task.remote(payload, queue.pop()))
                ready, running = ray.wait(running, num_returns=1)
                region, results, error = ray.get(ready[0])
                if error:
                    report.errors.append(error)
                    results = _failed(group, region)
                store.write_batch(group, region, results)
                n = int(np.prod([s.stop - s.start for s in region]))
                done += n
                report.batches_run += 1
                report.cells_run += n
                if progress:
                    progress(done, total)
        finally:
            if owner:
                ray.shutdown()
    report.counts = store.counts(group)
    report.seconds = time.perf_counter() - started
    return report
