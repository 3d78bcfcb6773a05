"""One writer per store, against real processes: many drivers acquiring one lock at the same instant,
taking over one stale lock at the same instant, locks still being written, symlinked store names,
and a data-file sweep whose folder was moved."""

import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from cli.main import app
from sweep.store.lock import GRACE_SECONDS, LockError, StoreLock, _namespace, lock_path

pytestmark = pytest.mark.slow

SMALL = [
    "--dx",
    "3",
    "--m",
    "12",
    "--depth",
    "1,2",
    "--width",
    "3",
    "--seed",
    "0:2",
    "--horizon",
    "2",
    "--checkpoints",
    "5",
]

# one contender: for each trial, wait at the gate go<t> (a file the parent holds locked; all contenders
# wake when it lets go), acquire, say whether it holds the lock, and hold it until the gate done<t>
CONTENDER = r"""
import fcntl, sys, time
from sweep.store.lock import LockError, StoreLock

root, trials = sys.argv[1], int(sys.argv[2])
for t in range(trials):
    lock = StoreLock(f"{root}/s{t}.zarr")
    print("ready", flush=True)
    with open(f"{root}/go{t}") as gate:
        fcntl.flock(gate, fcntl.LOCK_SH)
    try:
        lock.acquire()
        print("held", time.monotonic_ns(), int(lock.taken_over is not None), flush=True)
    except LockError:
        print("busy", flush=True)
    with open(f"{root}/done{t}") as gate:
        fcntl.flock(gate, fcntl.LOCK_SH)
    lock.release()
"""


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def lock_of(pid: int) -> str:
    """The content of a lock of process ``pid`` of this host, PID namespace and boot."""
    return json.dumps({"pid": pid, "host": socket.gethostname(), "since": "earlier", **_namespace()})


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def contend(root: Path, processes: int = 8, trials: int = 15, before=None) -> list[dict]:
    """Per trial: how many of ``processes`` contenders that acquire ``root/s<t>.zarr`` at the same
    instant hold it together, how many took over a stale lock, and the spread of their acquire times."""
    gates = {}
    for t in range(trials):
        for name in (f"go{t}", f"done{t}"):
            gates[name] = open(root / name, "w")
            fcntl.flock(gates[name], fcntl.LOCK_EX)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONTENDER, str(root), str(trials)],
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(processes)
    ]
    outcome = []
    try:
        for t in range(trials):
            for p in procs:
                line = p.stdout.readline()
                assert line == "ready\n", line + p.stderr.read()
            if before:
                before(root / f"s{t}.zarr")
            time.sleep(0.05)  # every contender is blocked on the gate
            gates[f"go{t}"].close()
            lines = [p.stdout.readline().split() for p in procs]
            assert all(lines), [p.stderr.read() for p in procs if p.poll() is not None]
            held = [(int(w[1]), int(w[2])) for w in lines if w[0] == "held"]
            times = [h[0] for h in held]
            outcome.append(
                {
                    "holders": len(held),
                    "took_over": sum(h[1] for h in held),
                    "spread_ms": (max(times) - min(times)) / 1e6 if times else 0.0,
                }
            )
            gates[f"done{t}"].close()
        for p in procs:
            p.wait(timeout=60)
            assert p.returncode == 0, p.stderr.read()
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for g in gates.values():
            g.close()
    return outcome


def test_one_holder_among_processes_acquiring_at_once(tmp_path):
    outcome = contend(tmp_path.resolve())
    assert [o["holders"] for o in outcome] == [1] * len(outcome), outcome
    assert not any(o["took_over"] for o in outcome)
    assert not list(tmp_path.glob("*.lock")) and not list(tmp_path.glob(".*"))  # all released, no leftovers


def test_one_process_takes_over_a_stale_lock_that_many_find_at_once(tmp_path):
    def stale(store):
        lock_path(store).write_text(lock_of(dead_pid()))

    outcome = contend(tmp_path.resolve(), before=stale)
    assert [(o["holders"], o["took_over"]) for o in outcome] == [(1, 1)] * len(outcome), outcome
    assert not list(tmp_path.glob("*.lock*")) and not list(tmp_path.glob(".*"))  # no claims left behind


def test_a_lock_being_written_is_busy_not_stale(tmp_path):
    store = tmp_path / "s.zarr"
    lock_path(store).write_text("")  # created, content not yet written
    with pytest.raises(LockError, match="being written by another linflow run"):
        StoreLock(store).acquire()
    assert lock_path(store).read_text() == ""
    lock_path(store).write_text('{"pid": 12')  # torn
    with pytest.raises(LockError):
        StoreLock(store).acquire()
    # left unreadable for longer than the grace period: stale, taken over, and said so
    old = time.time() - GRACE_SECONDS - 1
    os.utime(lock_path(store), (old, old))
    lock = StoreLock(store).acquire()
    assert lock.taken_over == {"heartbeat": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(old))}
    assert "from an unreadable lock file" in lock.takeover_message()
    assert json.loads(lock_path(store).read_text())["pid"] == os.getpid()
    lock.release()
    assert not lock_path(store).exists()


def test_a_live_lock_is_refused_and_kept(tmp_path):
    store = tmp_path / "s.zarr"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom sweep.store.lock import StoreLock\n"
            "l = StoreLock(sys.argv[1]).acquire()\nprint('held', flush=True)\ntime.sleep(60)",
            str(store),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        old = time.time() - 3600  # no heartbeat for an hour, but its process is alive on this host
        os.utime(lock_path(store), (old, old))
        with pytest.raises(LockError, match=f"pid {holder.pid} on"):
            StoreLock(store).acquire()
        assert json.loads(lock_path(store).read_text())["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()
    lock = StoreLock(store).acquire()  # now it is gone
    assert lock.taken_over["pid"] == holder.pid
    lock.release()


def test_a_dead_drivers_lock_is_taken_over_with_a_warning(ray_local, tmp_path):
    out = tmp_path / "s.zarr"
    pid = dead_pid()
    lock_path(out).write_text(lock_of(pid))
    r = cli("run", *SMALL, "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    warning = (
        f"linflow: warning: took over the lock of {out.resolve()} from pid {pid} on {socket.gethostname()} (gone since "
    )
    assert r.stderr.startswith(warning) and r.stderr.count("\n") == 1, r.stderr
    assert not lock_path(out).exists()


def test_symlinked_names_of_a_store_share_one_lock(ray_local, tmp_path):
    real, link = tmp_path / "real.zarr", tmp_path / "link.zarr"
    link.symlink_to(real)  # dangling until the store is made
    assert lock_path(link) == lock_path(real)
    with StoreLock(real):
        with pytest.raises(LockError):
            StoreLock(link).acquire()
        r = cli("run", *SMALL, "--out", link)
        assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "is being written by linflow run pid" in r.stderr, (
            r.output
        )
        assert not real.exists() and link.is_symlink()  # nothing created

    assert cli("run", *SMALL, "--out", link, "--quiet").exit_code == 0  # the store is made where the link points
    assert link.is_symlink() and (real / "zarr.json").is_file()
    before = sorted((f.name, f.stat().st_mtime_ns) for f in real.rglob("*"))
    with StoreLock(real):
        r = cli("run", *SMALL, "--out", link)
        assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "is being written" in r.stderr, r.output
    assert sorted((f.name, f.stat().st_mtime_ns) for f in real.rglob("*")) == before
    r = cli("run", *SMALL, "--out", link, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["cells_run"] == 0, r.output


def test_a_data_file_sweep_resumes_after_its_folder_moved(ray_local, tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((3, 30)), rng.standard_normal((1, 30))
    first, moved = tmp_path / "project", tmp_path / "elsewhere" / "project"
    first.mkdir()
    np.savez(first / "data.npz", X=x, Y=y)
    args = ["--depth", "1,2", "--width", "2", "--seed", "0:3", "--horizon", "2", "--checkpoints", "5"]
    r = cli("run", "--data", first / "data.npz", *args, "--out", first / "d.zarr", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["cells_run"] == 6, r.output
    shutil.copytree(first, moved)
    shutil.rmtree(first)
    r = cli("run", "--data", moved / "data.npz", *args, "--out", moved / "d.zarr", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["cells_run"] == 0
    # another file with the same numbers is the same data; other numbers are another sweep
    np.savez(moved / "copy.npz", X=x, Y=y)
    assert cli("run", "--data", moved / "copy.npz", *args, "--out", moved / "d.zarr", "--quiet").exit_code == 0
    np.savez(moved / "other.npz", X=x, Y=2 * y)
    r = cli("run", "--data", moved / "other.npz", *args, "--out", moved / "d.zarr")
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "different sweep" in r.stderr, r.output
    assert np.all(xr.open_zarr(moved / "d.zarr").status.values != 0)  # every cell done
