"""Faults injected into real runs from the tests (see ``sitecustomize`` in this folder), and the real
``linflow`` processes they are injected into: started in a session of their own, reaped with their Ray."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil

FOLDER = Path(__file__).resolve().parent
LINFLOW = str(Path(sys.executable).parent / "linflow")


def start(args, preexec_fn=None, **extra) -> subprocess.Popen:
    """``linflow ARGS`` in its own session (its pid is the session's id), so that its Ray processes can be
    found and reaped; never attached to a cluster named in RAY_ADDRESS; ``extra`` added to its environment;
    ``preexec_fn`` run in the child before it starts (a resource limit)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(extra)
    return subprocess.Popen(
        [LINFLOW, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
        preexec_fn=preexec_fn,
    )


def session(proc) -> dict[int, str]:
    """The processes of ``proc``'s session other than itself (the Ray processes it started): pid → name."""
    found = {}
    for p in psutil.process_iter(["pid", "name"]):
        try:
            if p.pid != proc.pid and os.getsid(p.pid) == proc.pid:
                found[p.pid] = p.info["name"]
        except (OSError, psutil.Error):
            pass
    return found


def reap(proc):
    """SIGKILL ``proc``'s process group, wait for it, then the Ray processes of its session that left the group."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)
    for pid in session(proc):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def fault_env(*, fail_seed=None, kill_worker=None, slow_batch=None, stale_seconds=None, host=None) -> dict[str, str]:
    """Environment variables that make the workers of a run started with them (a `linflow run`
    subprocess, or a local Ray instance started by this process) fail the cells of seed
    ``fail_seed``, kill one worker once after it computed its batch (``kill_worker``: the marker
    file), or take ``slow_batch`` seconds at least a batch; and its driver judge a lock stale after
    ``stale_seconds`` without a heartbeat, and take itself to run on ``host``. PYTHONPATH puts this
    folder first, so that every Python process loads its sitecustomize."""
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(FOLDER), os.environ.get("PYTHONPATH")]))}
    if fail_seed is not None:
        env["LINFLOW_TEST_FAIL_SEED"] = str(fail_seed)
    if kill_worker is not None:
        env["LINFLOW_TEST_KILL_WORKER"] = str(kill_worker)
    if slow_batch is not None:
        env["LINFLOW_TEST_SLOW_BATCH"] = str(slow_batch)  # seconds each batch takes at least
    if stale_seconds is not None:
        env["LINFLOW_TEST_STALE_SECONDS"] = str(stale_seconds)
    if host is not None:
        env["LINFLOW_TEST_HOSTNAME"] = host
    return env
