"""The Ray task: one batch of cells, computed in a worker. Kept light to import (no xarray, no
Zarr), since every worker process imports it before its first batch."""

from __future__ import annotations

import time

import numpy as np

from . import batch as batches
from . import kernel
from .kernel import cache
from .models import MODELS
from .schema import Status, plain


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
    integrated = MODELS[spec.model].integrated
    try:
        cache.compile_once("integrate" if integrated else "exact", _tiny_integration if integrated else _tiny_exact)
    except Exception:  # noqa: BLE001 — the batch compiles on its own
        pass


def _tiny_integration():
    model = kernel.Layerwise((1, 1), np.ones((1, 1)))
    kernel.integrate(
        model, np.zeros((1, 1)), kernel.DOPRI5, horizon=1.0, checkpoints=[1.0], eps=0.1, rtol=1e-3, atol=1e-6
    )


def _tiny_exact():
    from .kernel.exact import exact_path, exact_time_to_eps

    exact_time_to_eps(2, np.ones(1), 2.0, np.ones(1), 0.1)
    exact_path(np.full(1, 2), np.ones(1), 2.0, np.ones(1), np.ones((1, 2)))


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
