"""A lock is a lease, against real drivers: one frozen (SIGSTOP) past the stale age loses the store to
another and, woken, writes nothing more; a live driver in another PID namespace is not taken for dead;
a store deleted or replaced under a running driver stops it. Every store ends as a clean run leaves it."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from faults import LINFLOW, fault_env, reap, start
from reference import assert_identical

from sweep import runner, store
from sweep import spec as specs
from sweep.errors import LockLost
from sweep.problem import build
from sweep.schema import plain
from sweep.store.lock import StoreLock, lock_path

pytestmark = pytest.mark.slow

# 2 depths × seeds, chunks of 2 seeds: a task a chunk, each made to take ≥ 0.5 s (below)
SMALL = [
    *("--dx", "3", "--m", "12", "--depth", "1,2", "--width", "3", "--horizon", "2", "--checkpoints", "5"),
    *("--batch", "2", "--workers", "1", "--quiet"),
]
STALE = 3.0  # seconds without a heartbeat after which a lock is stale (the drivers beat every 0.15 s)


def run(*args, host=None):
    """A real `linflow run` driver (on ``host``, as far as locks are concerned)."""
    return start(["run", *SMALL, *map(str, args)], **fault_env(slow_batch=0.5, stale_seconds=STALE, host=host))


def finish(proc, timeout=240) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        reap(proc)
    return proc.returncode, err


def wait_for(what, proc, timeout=240.0):
    deadline = time.monotonic() + timeout
    while not what():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def seeds(out: Path) -> int:
    try:
        return store.open_group(out)["seed"].shape[0]
    except Exception:  # noqa: BLE001 — not made yet
        return 0


def done(out: Path) -> int:
    try:
        counts = store.counts(out)
    except Exception:  # noqa: BLE001 — not made yet
        return 0
    return sum(counts.values()) - counts["pending"]


def digest(path: Path) -> dict:
    files = [f for f in path.rglob("*") if f.is_file()]
    return {str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def assert_whole(out: Path):
    """Every cell done, bit for bit what the sweep the store holds gives computed at once."""
    ds = xr.open_zarr(out).load()
    assert (ds.status.values != 0).all()
    assert_identical(ds, runner.run_local(specs.parse(store.stored_spec(out))))


@pytest.mark.parametrize("grows", [True, False], ids=["B grows the store", "same sweep"])
def test_a_driver_frozen_past_the_stale_age_loses_the_store_and_writes_nothing_more(tmp_path, grows):
    out = tmp_path / "s.zarr"
    assert finish(run("--seed", "0:4", "--out", out))[0] == 0
    a = run("--seed", "0:8", "--out", out)  # A grows the store to 8 seeds
    wait_for(lambda: seeds(out) == 8 and done(out) > 8, a)
    os.kill(a.pid, signal.SIGSTOP)  # frozen: its heartbeat stops
    try:
        time.sleep(STALE + 1.5)
        b = run("--seed", "0:12" if grows else "0:8", "--out", out, host="elsewhere")
        wait_for(lambda: lock_path(out).exists() and b"elsewhere" in lock_path(out).read_bytes(), b)
        if grows:
            wait_for(lambda: seeds(out) == 12, b)
    finally:
        os.kill(a.pid, signal.SIGCONT)
    code, err = finish(a)
    assert code == 1, err
    lines = err.strip().splitlines()
    assert lines[-1] == (
        f"linflow: error: lost the lock on {out.resolve()} to pid {b.pid} on elsewhere; "
        "its results are safe; nothing more written by this run"
    ), err
    code, err = finish(b)
    assert code == 0, err
    assert f"took over the lock of {out.resolve()} from pid {a.pid} on " in err and "no heartbeat since" in err
    assert seeds(out) == (12 if grows else 8)  # A's grid never came back
    rerun = subprocess.run(
        [LINFLOW, "run", *SMALL, "--seed", "0:12" if grows else "0:8", "--out", out, "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rerun.returncode == 0 and '"cells_run": 0' in rerun.stdout, rerun.stdout + rerun.stderr
    assert_whole(out)
    assert not lock_path(out).exists()


def unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    r = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True)
    return r.returncode == 0


@pytest.mark.skipif(not unshare_works(), reason="no `unshare --pid` here (needs CAP_SYS_ADMIN or user namespaces)")
def test_a_live_driver_in_another_pid_namespace_is_not_taken_for_dead(tmp_path):
    out = tmp_path / "s.zarr"
    a = run("--seed", "0:16", "--out", out)
    try:
        wait_for(lambda: done(out) > 0, a)
        b = subprocess.run(
            ["unshare", "--pid", "--fork", "--mount-proc", LINFLOW, "run", *SMALL, "--seed", "0:16", "--out", out],
            capture_output=True,
            text=True,
            timeout=300,
            env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
        )
        assert a.poll() is None, "A finished before B looked: the test proves nothing"
        assert b.returncode == 2, b.stderr
        assert b.stderr.count("\n") == 1 and f"being written by linflow run pid {a.pid} on " in b.stderr, b.stderr
    finally:
        code, err = finish(a)
    assert code == 0, err
    assert "took over" not in err
    assert_whole(out)


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_store_deleted_or_replaced_under_a_running_driver_stops_it(tmp_path, how):
    out = tmp_path / "s.zarr"
    if how == "replaced":  # by another store (say, an older one restored from a backup)
        assert finish(run("--seed", "0:2", "--out", out))[0] == 0
        shutil.copytree(out, tmp_path / "copy.zarr")
        shutil.rmtree(out)
    a = run("--seed", "0:16", "--out", out)
    wait_for(lambda: done(out) > 0, a)
    os.kill(a.pid, signal.SIGSTOP)  # deterministic: the store changes while the driver waits
    try:
        shutil.rmtree(out)
        if how == "replaced":
            (tmp_path / "copy.zarr").rename(out)
            before = digest(out)
    finally:
        os.kill(a.pid, signal.SIGCONT)
    code, err = finish(a)
    assert code == 1, err
    assert err.strip().splitlines()[-1] == (
        f"linflow: error: {out.resolve()} was deleted or replaced while this run wrote it; "
        "nothing more written by this run"
    ), err
    if how == "deleted":
        assert not out.exists()  # no folder recreated, no chunk written
    else:
        assert digest(out) == before  # the store in its place untouched
    assert not lock_path(out).exists()  # its own lock released


def test_failures_are_recorded_on_the_store_as_it_is_now_not_through_a_handle_opened_before_a_growth(tmp_path):
    out = tmp_path / "s.zarr"
    small = specs.parse({"problem": {"m": 10, "dx": 3}, "axes": {"depth": [1], "seed": [0, 1]}, "batch": 2})
    problem = build(small.problem)
    store.create(out, small, problem, small.fingerprint(problem.digest()))
    before = store.open_group(out, mode="r+")  # the driver's handle, opened before the growth
    grown = specs.parse({**small.to_dict(), "axes": {**small.to_dict()["axes"], "seed": [0, 1, 2, 3]}})
    store.grow(out, grown, grown.fingerprint(problem.digest()))
    region = tuple(slice(0, n) for n in small.shape)
    cell = {name: plain(small.values(name)[0]) for name in small.axes}
    store.record_failures(before, region, np.ones(small.shape, bool), [(cell, "boom")])
    now = store.open_group(out)
    assert store.layout(now)[0] == grown.shape and specs.parse(store.stored_spec(now)) == grown
    assert now.attrs["fingerprint"] == grown.fingerprint(problem.digest())
    assert [f["error"] for f in store.failures(now)] == ["boom"]
    assert xr.open_zarr(out).sizes["seed"] == 4


def test_a_heartbeat_never_touches_a_lock_that_is_no_longer_its_own(tmp_path):
    out = tmp_path / "s.zarr"
    mine = StoreLock(out)
    mine.acquire()
    theirs = json.dumps({"pid": 1, "host": "elsewhere", "since": "now", "token": "0" * 16})
    lock_path(out).write_text(theirs)  # taken over while this holder slept
    os.utime(lock_path(out), (1.0, 1.0))
    with pytest.raises(LockLost, match="lost the lock on .* to pid 1 on elsewhere; its results are safe"):
        mine.beat()
    with pytest.raises(LockLost):
        mine.check()
    assert lock_path(out).stat().st_mtime == 1.0 and lock_path(out).read_text() == theirs
    mine.release()  # only ever its own
    assert lock_path(out).read_text() == theirs
    lock_path(out).unlink()
    mine.acquire()
    lock_path(out).unlink()
    with pytest.raises(LockLost, match="its lock file .* was deleted"):
        mine.beat()
