"""Every way a run ends says so in one line and leaves no lock (issue 9 item 3): SIGTERM and SIGINT
to the driver or to its whole process group (Slurm, systemd, docker stop, timeout, Ctrl-C), workers
that keep dying, a raylet that dies, a signal while Ray starts, and --address values that are not a
Ray cluster — each through the real `linflow run`, against real Ray processes and real stores."""

import json
import os
import signal
import socket
import subprocess
import threading
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
from faults import LINFLOW, reap, session, start
from reference import assert_identical, compute
from typer.testing import CliRunner

from cli.main import app
from sweep import batch, store
from sweep import spec as specs
from sweep.store.lock import lock_path

ROOT = Path(__file__).resolve().parents[1]
# 24 batches of 4 cells, ~0.3 s of kernel time each: several seconds on 2 workers
SWEEP = {
    "axes": {"depth": [2, 3], "width": [5], "init_norm": [0.5, 5.0], "seed": {"start": 0, "stop": 24}},
    "integrator": {"method": "rk4", "step": 2e-3},
    "horizon": 6.0,
    "checkpoints": {"count": 21, "spacing": "log"},
    "batch": 4,
}
CRASH_CELL = {"depth": 2, "init_norm": 0.5, "seed": 5}

# loaded by every Python process started with this folder on PYTHONPATH (the driver and Ray's workers):
# a worker that computes the batch holding the cell LINFLOW_TEST_CRASH_CELL (JSON) dies, every time
SITECUSTOMIZE = """
import importlib.machinery, json, os, sys

class _CrashingBatches:
    def find_spec(self, name, path=None, target=None):
        if name != "sweep.batch":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            run_batch, cell = module.run_batch, json.loads(os.environ["LINFLOW_TEST_CRASH_CELL"])

            def crash(spec, problem, region, *args, **kw):
                c = module.cells(spec, region)
                if any(all(c[k][i] == v for k, v in cell.items()) for i in range(len(c["seed"]))):
                    os._exit(1)
                return run_batch(spec, problem, region, *args, **kw)

            module.run_batch = crash
        spec.loader.exec_module = exec_module
        return spec

if "LINFLOW_TEST_CRASH_CELL" in os.environ:
    sys.meta_path.insert(0, _CrashingBatches())
"""


@pytest.fixture(scope="module")
def reference():
    return compute(SWEEP)


@pytest.fixture
def spec(tmp_path):
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump(SWEEP))
    return p


def wait_for(condition, seconds=90.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def batches_written(out: Path, total: int) -> bool:
    try:
        return out.exists() and store.counts(out)["pending"] < total
    except Exception:  # noqa: BLE001 — the store is being created
        return False


def one_line(err: str) -> str:
    """The whole of stderr, which must be one line from linflow (no traceback, no Ray log line)."""
    assert err.count("\n") == 1 and err.startswith("linflow: "), err
    assert "Traceback" not in err and "***" not in err
    return err


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def resume_matches_reference(out: Path, reference):
    """The store opens, holds only reference numbers, and a rerun finishes it to equal the reference."""
    ds = xr.open_zarr(out).load()
    done = ds.status.values != 0
    assert_identical(ds, reference, where=done)
    r = cli("run", out.parent / "sweep.yaml", "--out", out, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["cells_run"] == int((~done).sum())
    finished = xr.open_zarr(out).load()
    assert_identical(finished, reference)
    assert np.array_equal(finished.loss.values, reference.loss.values, equal_nan=True)
    assert not lock_path(out).exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("target", "signum", "code"),
    [
        ("group", signal.SIGTERM, 143),  # Slurm, systemd, docker stop, timeout
        ("driver", signal.SIGTERM, 143),  # kill PID
        ("group", signal.SIGINT, 130),  # Ctrl-C in a terminal
    ],
)
def test_signal_mid_run_stops_in_one_line_keeps_every_batch_and_leaves_no_lock(
    ray_local, spec, tmp_path, reference, target, signum, code
):
    out = tmp_path / "s.zarr"
    proc = start(["run", spec, "--out", out, "--quiet", "--workers", "2"])
    try:
        wait_for(lambda: batches_written(out, reference.status.size))
        (os.killpg if target == "group" else os.kill)(proc.pid, signum)
        sent = time.monotonic()
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        reap(proc)
    assert proc.returncode == code, err
    assert "rerun the same command" in one_line(err)
    assert ("terminated" if signum == signal.SIGTERM else "interrupted") in err
    assert took < 30
    assert not lock_path(out).exists()
    resume_matches_reference(out, reference)


@pytest.mark.slow
@pytest.mark.parametrize(("target", "signum", "code"), [("driver", signal.SIGTERM, 143), ("group", signal.SIGINT, 130)])
def test_signal_while_ray_starts_leaves_no_ray_process(spec, tmp_path, target, signum, code):
    out = tmp_path / "s.zarr"
    proc = start(["run", spec, "--out", out, "--quiet", "--workers", "2"])
    try:
        wait_for(lambda: "raylet" in session(proc).values(), 60)  # Ray is starting: GCS and raylet are up
        (os.killpg if target == "group" else os.kill)(proc.pid, signum)
        _, err = proc.communicate(timeout=60)
        wait_for(
            lambda: not session(proc), 25
        )  # (orphans used to stay ~40 s) not one raylet, GCS, agent or worker left behind
    finally:
        reap(proc)
    assert proc.returncode == code, err
    one_line(err)
    assert not lock_path(out).exists()


@pytest.mark.slow
def test_workers_that_keep_dying_fail_their_batch_and_the_sweep_goes_on(ray_local, spec, tmp_path, reference):
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    out = tmp_path / "s.zarr"
    proc = start(
        ["run", spec, "--out", out, "--json", "--workers", "2"],
        PYTHONPATH=str(tmp_path),
        LINFLOW_TEST_CRASH_CELL=json.dumps(CRASH_CELL),
    )
    try:
        stdout, err = proc.communicate(timeout=400)
    finally:
        reap(proc)
    assert proc.returncode == 1, err
    assert "cells failed" in one_line(err) and "WorkerCrashedError" in err
    ds = xr.open_zarr(out).load()
    failed = ds.status.values == 4
    assert np.array_equal(failed, crashing_batch())  # exactly the cells of the batch whose workers died
    assert_identical(ds, reference, where=~failed)  # every other batch stands
    assert (ds.status.values[~failed] != 0).all()
    report = json.loads(stdout.strip().splitlines()[-1])
    assert report["counts"]["failed"] == failed.sum() and report["counts"]["pending"] == 0
    failures = json.loads(cli("status", out, "--json").stdout)["failures"]
    assert len(failures) == failed.sum() and all("WorkerCrashedError" in f["error"] for f in failures)
    assert not lock_path(out).exists()


def crashing_batch() -> np.ndarray:
    """The cells of the batch holding CRASH_CELL."""
    s = specs.parse(SWEEP)
    cells = np.zeros(s.shape, dtype=bool)
    for region in batch.regions(s.shape, batch.chunk_shape(s.shape, tuple(s.axes), s.batch)):
        c = batch.cells(s, region)
        if any(all(c[k][i] == v for k, v in CRASH_CELL.items()) for i in range(len(c["seed"]))):
            cells[region] = True
    assert 1 <= cells.sum() <= s.batch
    return cells


@pytest.mark.slow
def test_dead_raylet_stops_the_run_in_one_line_and_the_store_resumes(ray_local, spec, tmp_path, reference):
    out = tmp_path / "s.zarr"
    proc = start(["run", spec, "--out", out, "--json", "--workers", "2"])
    try:
        wait_for(lambda: batches_written(out, reference.status.size))
        raylet = next(pid for pid, name in session(proc).items() if name == "raylet")
        os.kill(raylet, signal.SIGKILL)
        killed = time.monotonic()
        stdout, err = proc.communicate(timeout=120)
        took = time.monotonic() - killed
    finally:
        reap(proc)
    assert proc.returncode == 1, err
    assert stdout == ""  # --json: stdout carries the JSON only (none here); never Ray's raylet dump
    assert "Ray stopped mid-run" in one_line(err) and "raylet" in err and "rerun the same command" in err
    assert took < 10  # before Ray's own core ends the driver (some 15 s on), with the lock held
    assert not lock_path(out).exists()
    resume_matches_reference(out, reference)


class NotRay:
    """A local TCP server that accepts connections and never answers (an open port that is not Ray's)."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.held = []
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self):
        self.sock.close()
        for c in self.held:
            c.close()


def closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return s.getsockname()[1]


@pytest.mark.parametrize("kind", ["not-ray", "http", "ray-client-down", "gcs-down", "no-port"])
def test_bad_address_is_refused_in_one_line_before_anything_is_created(spec, tmp_path, kind):
    server = NotRay() if kind == "not-ray" else None
    address = {
        "not-ray": f"127.0.0.1:{server.port}" if server else "",
        "http": "http://127.0.0.1:8265",
        "ray-client-down": f"ray://127.0.0.1:{closed_port()}",
        "gcs-down": f"127.0.0.1:{closed_port()}",
        "no-port": "ray://localhost",
    }[kind]
    out = tmp_path / "s.zarr"
    try:
        began = time.monotonic()
        proc = subprocess.run(
            [LINFLOW, "run", str(spec), "--out", str(out), "--address", address],
            text=True,
            capture_output=True,
            timeout=60,
            env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
        )
        took = time.monotonic() - began
    finally:
        if server:
            server.close()
    assert proc.returncode == 2, proc.stderr
    assert "--address" in one_line(proc.stderr)
    assert took < 30
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.yaml"]  # no store, no lock, no temporary
    if kind == "http":
        assert "job-submission" in proc.stderr and "ray job submit" in proc.stderr


def test_ray_client_addresses_work_out_of_the_box():
    """ray:// (the form the README documents) needs Ray Client, which the package depends on."""
    import importlib.util

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.replace(" ", "").startswith("ray[client]") for d in deps)
    assert importlib.util.find_spec("grpc") is not None
