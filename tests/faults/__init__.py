"""Faults injected into real runs from the tests (see ``sitecustomize`` in this folder)."""

import os
from pathlib import Path

FOLDER = Path(__file__).resolve().parent


def fault_env(*, fail_seed=None, kill_worker=None, slow_batch=None) -> dict[str, str]:
    """Environment variables that make the workers of a run started with them (a `linflow run`
    subprocess, or a local Ray instance started by this process) fail the cells of seed
    ``fail_seed``, kill one worker once after it computed its batch (``kill_worker``: the marker
    file), or take ``slow_batch`` seconds at least a batch. PYTHONPATH puts this folder first, so that
    every Python process loads its sitecustomize."""
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(FOLDER), os.environ.get("PYTHONPATH")]))}
    if fail_seed is not None:
        env["LINFLOW_TEST_FAIL_SEED"] = str(fail_seed)
    if kill_worker is not None:
        env["LINFLOW_TEST_KILL_WORKER"] = str(kill_worker)
    if slow_batch is not None:
        env["LINFLOW_TEST_SLOW_BATCH"] = str(slow_batch)  # seconds each batch takes at least
    return env
