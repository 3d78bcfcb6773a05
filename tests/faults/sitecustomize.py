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
* LINFLOW_TEST_SLOW_BATCH=SECONDS — every batch takes at least this long (it sleeps after computing):
  a run lasts long enough, on any machine, for a test to watch it mid-way.

and, when ``zarr.storage._local`` is imported, the function through which Zarr's LocalStore writes
every file (``_atomic_write``: a temporary file beside the target, renamed onto it) is wrapped — in
the ``linflow`` command-line process only (its ``sys.argv[0]`` is the ``linflow`` script; Ray's
workers and agents, which load this module too, are left alone). Its writes are counted from the
start of the process (every file: metadata, coordinates, chunks):

* LINFLOW_TEST_KILL_AT_WRITE=K — the K-th write is cut short: half of its bytes reach the temporary
  file, then the process SIGKILLs itself (the target file is never replaced; the temporary stays).
* LINFLOW_TEST_WRITE_LOG=FILE — each write appends the path of its target to FILE (one a line, the
  K-th too), so that a test can count the writes of a whole run and see what each one was.

and, when ``sweep.store.lock`` is imported (in every process: the lock is taken by the driver only):

* LINFLOW_TEST_STALE_SECONDS=S — a lock whose heartbeat is older than S seconds is stale (the driver
  beats every S/20): a driver frozen for a few seconds loses its lock to another.
* LINFLOW_TEST_HOSTNAME=NAME — the driver takes itself to run on host NAME (its pid proves nothing to
  a driver of this host, nor theirs to it): a second driver "on another host", on one machine.

Without any of these variables nothing is wrapped."""

import contextlib
import importlib.machinery
import os
import signal
import sys
import threading

FAIL_SEED = os.environ.get("LINFLOW_TEST_FAIL_SEED")
KILL_MARKER = os.environ.get("LINFLOW_TEST_KILL_WORKER")
KILL_AT_WRITE = int(os.environ.get("LINFLOW_TEST_KILL_AT_WRITE") or 0)
WRITE_LOG = os.environ.get("LINFLOW_TEST_WRITE_LOG")
SLOW_BATCH = float(os.environ.get("LINFLOW_TEST_SLOW_BATCH") or 0)
STALE_SECONDS = float(os.environ.get("LINFLOW_TEST_STALE_SECONDS") or 0)
HOSTNAME = os.environ.get("LINFLOW_TEST_HOSTNAME")


def _wrap_batch(module):
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
        if SLOW_BATCH:
            import time

            time.sleep(SLOW_BATCH)
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


class _Dying:
    """A file being written that takes half of what it is given, then kills its process."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        view = memoryview(data).cast("B")
        self.f.write(view[: len(view) // 2])
        self.f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
        os._exit(137)  # never reached


def _wrap_local_store(module):
    atomic_write = module._atomic_write
    lock = threading.Lock()
    writes = [0]

    @contextlib.contextmanager
    def counted_atomic_write(path, mode, exclusive=False):
        with atomic_write(path, mode, exclusive=exclusive) as f:
            if os.path.basename(sys.argv[0] if sys.argv else "") != "linflow":
                yield f
                return
            with lock:
                writes[0] += 1
                if WRITE_LOG:
                    with open(WRITE_LOG, "a") as log:
                        log.write(f"{path}\n")
                dying = writes[0] == KILL_AT_WRITE
            yield _Dying(f) if dying else f

    module._atomic_write = counted_atomic_write


def _wrap_lock(module):
    if STALE_SECONDS:
        module.STALE_SECONDS = STALE_SECONDS
    if HOSTNAME:
        import types

        module.socket = types.SimpleNamespace(gethostname=lambda: HOSTNAME)  # the module's only use of socket


WRAPS = {}
if FAIL_SEED is not None or KILL_MARKER or SLOW_BATCH:
    WRAPS["sweep.batch"] = _wrap_batch
if STALE_SECONDS or HOSTNAME:
    WRAPS["sweep.store.lock"] = _wrap_lock
if KILL_AT_WRITE or WRITE_LOG:
    WRAPS["zarr.storage._local"] = _wrap_local_store


class _Faulty:
    """Finds the modules of WRAPS as usual, and wraps each once it is loaded."""

    def find_spec(self, name, path=None, target=None):
        if name not in WRAPS:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None:
            return None
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            WRAPS[name](module)

        spec.loader.exec_module = exec_module
        return spec


if WRAPS:
    sys.meta_path.insert(0, _Faulty())
