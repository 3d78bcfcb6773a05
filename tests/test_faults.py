"""Lose nothing: dead workers, a SIGKILLed or interrupted driver, failing cells, two drivers on one
store, unwritable and full disks — each against real Ray processes and real stores, and each
finished sweep compared bitwise with a reference computed without Ray."""

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
from faults import fault_env, reap, start
from reference import assert_identical, compute
from typer.testing import CliRunner

from cli.main import app
from sweep import store
from sweep.store.lock import _namespace, lock_path

pytestmark = pytest.mark.slow

# 24 batches of 4 cells, ~0.3 s of kernel time each: long enough to be hit mid-run
SWEEP = {
    "axes": {"depth": [2, 3], "width": [5], "init_norm": [0.5, 5.0], "seed": {"start": 0, "stop": 24}},
    "integrator": {"method": "rk4", "step": 2e-3},
    "horizon": 6.0,
    "checkpoints": {"count": 21, "spacing": "log"},
    "batch": 4,
}


@pytest.fixture(scope="module")
def reference():
    return compute(SWEEP)


@pytest.fixture
def spec(tmp_path):
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump(SWEEP))
    return p


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def check_readable(out: Path, reference):
    """The store opens, every cell marked done holds exactly the reference numbers."""
    ds = xr.open_zarr(out).load()
    done = ds.status.values != 0
    assert_identical(ds, reference, where=done)
    return int((~done).sum())


@pytest.mark.parametrize("trial", range(5))
def test_driver_sigkill_then_rerun_finishes_exactly_the_missing_cells(ray_local, spec, tmp_path, reference, trial):
    out = tmp_path / "s.zarr"
    delay = random.Random(trial).uniform(0.5, 9.0)
    proc = start(["run", spec, "--out", out, "--quiet", "--workers", "2"])
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)  # the driver only: its Ray processes are orphaned
    finally:
        reap(proc)
    pending = check_readable(out, reference) if out.exists() else reference.status.size
    r = cli("run", spec, "--out", out, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["cells_run"] == pending
    assert_identical(xr.open_zarr(out).load(), reference)
    assert not lock_path(out).exists()
    assert not list(tmp_path.glob(".s.zarr.creating-*"))


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(ray_local, spec, tmp_path, reference):
    out = tmp_path / "s.zarr"
    proc = start(["run", spec, "--out", out, "--quiet", "--workers", "2"])
    try:
        deadline = time.time() + 60
        while not (out.exists() and store.counts(out)["pending"] < reference.status.size) and time.time() < deadline:
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        reap(proc)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "rerun the same command" in err and "Traceback" not in err
    assert not lock_path(out).exists()
    pending = check_readable(out, reference)
    r = cli("run", spec, "--out", out, "--json")
    assert json.loads(r.stdout)["cells_run"] == pending
    assert_identical(xr.open_zarr(out).load(), reference)


def test_dead_worker_is_retried_and_nothing_is_lost(spec, tmp_path, reference):
    out, marker = tmp_path / "s.zarr", tmp_path / "killed"
    proc = start(["run", spec, "--out", out, "--json", "--workers", "2"], **fault_env(kill_worker=marker))
    try:
        stdout, err = proc.communicate(timeout=300)
    finally:
        reap(proc)
    assert proc.returncode == 0, err
    assert marker.exists()  # a worker really died mid-batch (its pid is in the marker)
    report = json.loads(stdout.strip().splitlines()[-1])
    assert report["cells_run"] == reference.status.size and report["counts"]["pending"] == 0
    assert_identical(xr.open_zarr(out).load(), reference)


def test_failing_cells_are_recorded_and_retried_alone(ray_local, spec, tmp_path, reference):
    out = tmp_path / "s.zarr"
    proc = start(["run", spec, "--out", out, "--quiet", "--workers", "2"], **fault_env(fail_seed=5))
    try:
        _stdout, err = proc.communicate(timeout=300)
    finally:
        reap(proc)
    assert proc.returncode == 1, err
    assert "4 cells failed" in err and "--retry-failed" in err and "Traceback" not in err
    ds = xr.open_zarr(out).load()
    failed = ds.status.values == 4
    assert failed.sum() == 4 and np.all(ds.seed.values[np.nonzero(failed)[3]] == 5)
    assert_identical(ds, reference, where=~failed)  # the other cells of those batches stand
    info = json.loads(cli("status", out, "--json").stdout)
    assert len(info["failures"]) == 4
    assert all(f["cell"]["seed"] == 5 and "test hook" in f["error"] for f in info["failures"])

    r = cli("run", spec, "--out", out, "--json")  # without the flag, failed cells stay
    assert json.loads(r.stdout)["cells_run"] == 0 and r.exit_code == 1
    r = cli("run", spec, "--out", out, "--json", "--retry-failed")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["cells_run"] == 4
    assert_identical(xr.open_zarr(out).load(), reference)
    assert json.loads(cli("status", out, "--json").stdout)["failures"] == []


def test_second_driver_on_the_same_store_is_refused(ray_local, spec, tmp_path, reference):
    out = tmp_path / "s.zarr"
    proc = start(["run", spec, "--out", out, "--quiet", "--workers", "1"])
    try:
        deadline = time.time() + 60
        while not (out.exists() and lock_path(out).exists()) and time.time() < deadline:
            time.sleep(0.1)
        before = store.counts(out)
        r = cli("run", spec, "--out", out)
        assert r.exit_code == 2 and r.stderr.count("\n") == 1
        assert "is being written by linflow run pid" in r.stderr
        assert store.counts(out)["pending"] <= before["pending"]
        proc.communicate(timeout=300)
    finally:
        reap(proc)
    assert proc.returncode == 0
    assert_identical(xr.open_zarr(out).load(), reference)


def test_stale_lock_of_a_dead_driver_is_taken_over(ray_local, spec, tmp_path, reference):
    out = tmp_path / "s.zarr"
    dead = subprocess.Popen(["true"])
    dead.wait()
    owner = {"pid": dead.pid, "host": os.uname().nodename, "since": "earlier", **_namespace()}
    lock_path(out).write_text(json.dumps(owner))
    r = cli("run", spec, "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    assert not lock_path(out).exists()
    assert_identical(xr.open_zarr(out).load(), reference)


def test_unwritable_output_is_a_clear_error_and_creates_nothing(tmp_path, spec):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out in (afile / "s.zarr", Path("/sys/linflow-test.zarr")):
        r = cli("run", spec, "--out", out)
        assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "--out" in r.stderr, r.output
        assert "Traceback" not in r.output and not out.exists()


@pytest.fixture
def tiny_disk(tmp_path):
    """A tmpfs of a few hundred kB (needs root and mount; skipped where unavailable)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()

    def mount(size):
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], check=False, capture_output=True
        )
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        return mnt

    yield mount
    subprocess.run(["umount", str(mnt)], check=False, capture_output=True)


def test_full_disk_at_creation_leaves_no_store(ray_local, tiny_disk, spec):
    out = tiny_disk("16k") / "s.zarr"
    r = cli("run", spec, "--out", out)
    assert r.exit_code == 2 and "No space left" in r.stderr and r.stderr.count("\n") == 1, r.output
    assert not out.exists() and not list(out.parent.glob(".s.zarr.creating-*"))


def test_full_disk_mid_run_keeps_the_store_consistent(ray_local, tiny_disk, tmp_path, reference):
    raw = {**SWEEP, "checkpoints": {"count": 401, "spacing": "log"}}  # results outgrow the disk
    ref = compute(raw)
    spec = tmp_path / "big.yaml"
    spec.write_text(yaml.safe_dump(raw))
    out = tiny_disk("600k") / "s.zarr"
    r = cli("run", spec, "--out", out, "--quiet")
    assert r.exit_code == 1, r.output
    assert "No space left" in r.stderr and "rerun the same command" in r.stderr and r.stderr.count("\n") == 1
    ds = xr.open_zarr(out).load()
    done = ds.status.values != 0
    assert 0 < done.sum() < done.size
    assert_identical(ds, ref, where=done)
