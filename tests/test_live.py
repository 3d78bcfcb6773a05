"""Reading a store while a run writes it: `linflow report` and `sweep.open_results` use the cells whose status
says done, say "k of n cells done", and never fail on pending cells or a batch being written."""

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from faults import LINFLOW, fault_env, start
from typer.testing import CliRunner

import sweep
from cli.main import app
from sweep import schema, store
from sweep.errors import StoreDamaged
from sweep.schema import Status
from sweep.store import lock

# 64 batches of 4 cells (Euler, small steps), each made to take ≥ 0.5 s: a reader finds it part-done; stopped once read
SLOW = [
    *("--depth", "2,4", "--width", "6", "--init-norm", "0.5,1", "--seed", "0:64", "--m", "20", "--dx", "4"),
    *("--method", "euler", "--step", "1e-3", "--horizon", "20", "--checkpoints", "6", "--batch", "4"),
]


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def done_cells(out: Path) -> int:
    if not store.is_store(out):
        return 0
    try:
        return sweep.open_results(out).attrs["cells_done"]
    except Exception:  # noqa: BLE001 — being created: not a store yet
        return 0


@pytest.mark.slow
def test_report_and_open_results_on_a_store_a_live_driver_is_writing(tmp_path):
    out = tmp_path / "live.zarr"
    # a batch ≥ 0.5 s: the run lasts ~30 s on any machine (stopped sooner)
    driver = start(["run", *SLOW, "--workers", "2", "--out", out, "--quiet"], **fault_env(slow_batch=0.5))
    try:
        deadline = time.monotonic() + 240
        while done_cells(out) == 0:
            assert driver.poll() is None, driver.communicate()
            assert time.monotonic() < deadline, "no batch stored in time"
            time.sleep(0.2)
        seen = []
        for i in range(3):
            assert lock.writer(out) is not None  # the driver still holds the store
            ds = sweep.open_results(out)
            n, k = ds.attrs["cells"], ds.attrs["cells_done"]
            assert n == 2 * 2 * 64 and 1 <= k <= n
            done = ds.status.values != Status.PENDING
            assert int(done.sum()) == k
            loss = ds.loss.values  # read after the status: every done cell is whole
            assert np.isfinite(loss[done]).all()

            r = subprocess.run(
                [LINFLOW, "report", str(out), "--out", str(tmp_path / f"rep{i}")],
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert r.returncode == 0, r.stderr
            words = r.stdout.strip().split("(")[-1]
            done_now, total = (int(w.replace(",", "")) for w in words.split(" cells done")[0].split(" of "))
            assert total == n and k <= done_now <= n, r.stdout
            assert "a run is writing the store" in words or done_now == n, r.stdout  # (unless it just finished)
            md = (tmp_path / f"rep{i}" / "report.md").read_text()
            assert f"{done_now:,} of {n:,} cells done." in md
            if done_now < n:
                assert "still pending" in md
            seen.append((done_now, "a run is writing the store" in words))
            if driver.poll() is not None:
                break
        assert [d for d, _ in seen] == sorted(d for d, _ in seen)  # the reports followed the run
        assert seen[0][1] and seen[0][0] < n  # the first, at least, was of a store mid-run
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGINT)  # stopped as Ctrl-C does: every stored batch kept
            try:
                driver.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(driver.pid, signal.SIGKILL)
                driver.wait(timeout=60)
    assert lock.writer(out) is None
    assert cli("status", out).exit_code == 0


def _made(tmp_path, ray_local) -> Path:
    out = tmp_path / "s.zarr"
    r = cli(
        *("run", "--depth", "1,2", "--width", "3", "--init-norm", "0.5,2", "--seed", "0:6", "--m", "20", "--dx", "4"),
        *("--horizon", "4", "--checkpoints", "5", "--batch", "4", "--out", out, "--quiet"),
    )
    assert r.exit_code == 0, r.output
    return out


def test_a_batch_being_written_reads_pending_while_a_run_holds_the_store(ray_local, tmp_path):
    """The state a driver leaves between a batch's results and its status (status is written last): while
    a live run holds the lock it is a batch in flight — its cells read pending, with their fill values; once
    no run holds the store the same state is a lost status chunk, named as damage."""
    out = _made(tmp_path, ray_local)
    full = xr.open_zarr(out).load()
    chunk = out / "status" / "c" / "1" / "0" / "1" / "1"  # depth 2, norm 2, seeds 3–5
    assert chunk.is_file()
    chunk.unlink()
    group = store.open_group(out)
    with lock.StoreLock(out.resolve()):
        ds = store.load_results(group, out)
        assert ds.attrs["cells"] == 24 and ds.attrs["cells_done"] == 21
        assert store.done_text(ds) == "21 of 24 cells done"
        flight = (slice(1, 2), slice(None), slice(1, 2), slice(3, 6))
        assert (ds.status.values[flight] == Status.PENDING).all()
        for name in schema.stored():
            var = schema.RESULTS[name]
            got = ds[name].values[flight]
            assert np.array_equal(got, np.full_like(got, var.fill), equal_nan=True), name
        rest = ds.status.values != Status.PENDING
        for name in schema.stored():
            assert np.array_equal(ds[name].values[rest], full[name].values[rest], equal_nan=True), name
        r = cli("report", out, "--out", tmp_path / "rep")
        assert r.exit_code == 0 and "(21 of 24 cells done; a run is writing the store)" in r.stdout, r.output
        r = cli("status", out)  # in flight, not damage
        assert r.exit_code == 0 and "damaged" not in r.stdout and "left: 3 cells in 1 batches" in r.stdout, r.output
    with pytest.raises(StoreDamaged, match="status/c/1/0/1/1 is missing"):
        store.load_results(group, out)
    assert "damaged: chunk status/c/1/0/1/1 is missing" in cli("status", out).stdout


def test_report_of_a_store_with_nothing_done_yet_says_so(ray_local, tmp_path):
    out = _made(tmp_path, ray_local)
    for f in (out / "status" / "c").rglob("*"):
        if f.is_file():
            f.unlink()  # every status chunk gone: no cell done
    for held in (True, False):
        if held:
            with lock.StoreLock(out.resolve()):
                r = cli("report", out, "--out", tmp_path / "rep")
            assert r.exit_code == 2 and "a run is writing it; try again soon" in r.stderr, r.output
        else:
            r = cli("report", out, "--out", tmp_path / "rep")
            assert r.exit_code == 2 and r.stderr.count("\n") == 1, r.output
    assert not (tmp_path / "rep" / "report.md").exists()
