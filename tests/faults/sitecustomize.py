"""Faults injected from the tests into real runs, with no test branch in the shipped code.

Python imports ``sitecustomize`` at the start of every process that has this folder on its
PYTHONPATH: a test puts it there (:func:`faults.fault_env`) for a `linflow run` subprocess, or for
the local Ray instance it starts itself — Ray's raylet and workers inherit the environment of the
driver that started them, so every worker loads this module before its first task. Then, when
``sweep.batch`` is imported, its ``run_batch`` (which ``sweep.task.run_task`` calls) is wrapped:

* LINFLOW_TEST_FAIL_SEED=N — computing cells of seed N raises (RuntimeError "test hook: cells with
  seed N fail"): the batch fails whole, then cell by cell, and only those cells are marked failed.
* LINFLOW_TEST_KILL_WORKER=FILE — the first batch computed kills its own worker process once it is
  computed (before the task returns it); FILE, created exclusively, marks that it happened (it
  holds the pid), so it happens once across all workers.

Without either variable nothing is wrapped."""

import importlib.machinery
import os
import sys

FAIL_SEED = os.environ.get("LINFLOW_TEST_FAIL_SEED")
KILL_MARKER = os.environ.get("LINFLOW_TEST_KILL_WORKER")


def _wrap(module):
    import numpy as np

    run_batch = module.run_batch

    def faulty_run_batch(spec, problem, region, mask=None):
        if FAIL_SEED is not None:
            seeds = module.cells(spec, region)["seed"]
            if mask is not None:
                seeds = seeds[np.asarray(mask, dtype=bool).ravel()]
            if int(FAIL_SEED) in seeds:
                raise RuntimeError(f"test hook: cells with seed {FAIL_SEED} fail")
        results = run_batch(spec, problem, region, mask)
        if KILL_MARKER:
            try:
                fd = os.open(KILL_MARKER, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return results
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            os._exit(1)
        return results

    module.run_batch = faulty_run_batch


class _FaultyBatches:
    """Finds ``sweep.batch`` as usual, and wraps its run_batch once it is loaded."""

    def find_spec(self, name, path=None, target=None):
        if name != "sweep.batch":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None:
            return None
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            _wrap(module)

        spec.loader.exec_module = exec_module
        return spec


if FAIL_SEED is not None or KILL_MARKER:
    sys.meta_path.insert(0, _FaultyBatches())
