"""The Ray task: one batch of cells, computed in a worker. Kept light to import (no xarray, no
Zarr), since every worker process imports it before its first batch."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

# set by the driver for the Ray processes of a local instance it starts (sweep.cluster.connect): this module's
# package and the kernels its workers load as they start (:func:`_preload`)
PRELOAD_VAR = "LINFLOW_PRELOAD"


def _preloaded_elsewhere() -> bool:
    """Whether this import is a worker's preload (:func:`sweep.cluster.connect`) of a ``sweep`` package other
    than the driver's own — one found first on the worker's path, where the driver's comes from its folder."""
    try:
        return Path(json.loads(os.environ[PRELOAD_VAR])["package"]) != Path(__file__).resolve().parent
    except (KeyError, TypeError, ValueError):
        return False


if _preloaded_elsewhere():  # set it aside whole (no module of it stays): the run's tasks import the driver's
    for _name in [n for n in sys.modules if n == "sweep" or n.startswith("sweep.")]:
        del sys.modules[_name]
    os.environ.pop(PRELOAD_VAR, None)  # (the tasks' first batch warms up)
    raise ImportError("sweep preloaded from another folder than the driver's: not preloaded")

import numpy as np  # noqa: E402

from . import batch as batches  # noqa: E402
from . import kernel  # noqa: E402
from .kernel import cache  # noqa: E402
from .schema import Status, plain  # noqa: E402


def run_task(payload, chunks):
    """([(region, mask, results, errors)] of each batch in ``chunks`` — [(region, mask)] —, node id, compute
    seconds): a task computes one or more batches, one after another."""
    import ray

    spec, problem = payload
    node = ray.get_runtime_context().get_node_id()
    started = time.perf_counter()
    warm_up(spec)
    out = []
    for region, mask in chunks:
        try:
            results, errors = batches.run_batch(spec, problem, region, mask), []
        except Exception:  # noqa: BLE001 — isolate the failing cells, the rest of the batch stands
            results, errors = _cell_by_cell(spec, problem, region, mask)
        out.append((region, mask, results, errors))
    return out, node, time.perf_counter() - started


def warm_up(spec) -> None:
    """Before a worker's first batch: compile the kernel it runs — or load it, once another process of the
    node has (sweep.kernel.cache.compile_once: one compiles, the others wait) — with a tiny call of the same
    argument types. If the warm-up fails, the batch compiles on its own and reports the error per cell."""
    _load(kernel_of(spec))


def _load(name: str) -> None:
    """Compile or load the kernel ``name`` by its tiny call (KERNELS); a failure is left to the first batch,
    which compiles on its own and reports the error per cell."""
    try:
        cache.compile_once(name, KERNELS[name], lock=LOCKS.get(name))
    except Exception:  # noqa: BLE001 — the batch compiles on its own
        pass


def kernel_of(spec) -> str:
    """The kernel the cells of ``spec`` run — its model's name: each model's code is compiled apart
    (:func:`warm_up`)."""
    return spec.model


def _preload() -> None:
    """In a worker of a local instance (PRELOAD_VAR in its environment: :func:`sweep.cluster.connect`), which
    imports this module as it starts, before it takes work: load the kernels the run will use now, while Ray
    is still starting, rather than in the worker's first task. Errors are left to that task's warm-up."""
    try:
        names = json.loads(os.environ.pop(PRELOAD_VAR))["kernels"]  # (not passed on to what the tasks start)
    except (KeyError, TypeError, ValueError):
        return
    for name in names:
        if name in KERNELS:
            _load(name)


def _tiny_integration(model=None):
    if model is None:
        model = kernel.Layerwise((1, 1), np.ones((1, 1)))
    kernel.integrate(
        model, np.zeros((1, model.size)), kernel.DOPRI5, horizon=1.0, checkpoints=[1.0], eps=0.1, rtol=1e-3, atol=1e-6
    )


def _tiny_induced():
    _tiny_integration(kernel.Induced(2, np.ones((1, 1))))


def _tiny_exact():
    from .kernel.exact import exact_path, exact_time_to_eps

    exact_time_to_eps(2, np.ones(1), 2.0, np.ones(1), 0.1)
    exact_path(np.full(1, 2), np.ones(1), 2.0, np.ones(1), np.ones((1, 2)))


# a kernel (a model's compiled code): the warm-up call that loads it
KERNELS = {"layerwise": _tiny_integration, "induced": _tiny_induced, "exact": _tiny_exact}
# the integrated models' code shares numba's index files (the stepper's, the flows'): one compiles at a time
LOCKS = {"layerwise": "integrate", "induced": "integrate"}


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
            results["status"][idx] = Status.FAILED
            cell = {
                n: plain(v[s.start + i]) for (n, v), s, i in zip(spec.axes.items(), region, idx)
            }  # a range: no array
            errors.append((cell, f"{type(exc).__name__}: {exc}"))
            continue
        for name in results:
            results[name][idx] = part[name][idx]
    return results, errors


if PRELOAD_VAR in os.environ:  # a local instance's worker, starting (the driver sets it only while ray.init runs)
    _preload()
