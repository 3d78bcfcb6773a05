"""Stores on object storage (issue 20): ``--out s3://bucket/path.zarr`` against a real S3 API server on the
loopback address (moto's server mode, as s3fs and zarr-python test), started here; nothing is mocked inside
linflow. A store at a URL keeps the promises of one on disk: bit for bit the numbers of ``run_local``, a
killed driver leaves a store that a rerun finishes bit for bit, growth, one driver per store (a lock object
written only if absent or unchanged), reports from a second process while a run writes, and bad input in one
line, exit 2, nothing created."""

import os
import signal
import threading
import time

import numpy as np
import pytest
import xarray as xr
from faults import reap
from faults import start as start_linflow

from sweep import runner, store
from sweep import spec as specs
from sweep.errors import LockError, LockLost, StoreError
from sweep.store.remote import ObjectLock

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
SMALL = ["--depth", "1,2", "--seed", "0:4", "--horizon", "2", "--checkpoints", "5", "-q"]


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 (a free port), the environment pointing at it, and a bucket 'sweeps'."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {**CREDENTIALS, "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("sweeps")
    yield env, fs
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


def linflow(env, *args, timeout=300):
    proc = start_linflow(args, **env)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        reap(proc)
    return proc.returncode, out, err


def objects(fs, prefix="sweeps"):
    fs.invalidate_cache()
    return sorted(fs.find(prefix))


def assert_bitwise(url):
    ds = xr.open_zarr(url).load()
    whole = runner.run_local(specs.parse(store.stored_spec(url)))
    for name in [*whole.data_vars, "time"]:
        assert np.array_equal(ds[name].values, whole[name].values, equal_nan=True), name


@pytest.fixture(scope="module")
def small(s3):
    """s3://sweeps/runs/small.zarr: 8 cells, run by ``linflow run``; (its URL, the run's stdout)."""
    env, _ = s3
    url = "s3://sweeps/runs/small.zarr"
    code, out, err = linflow(env, "run", "--out", url, *SMALL)
    assert code == 0, err
    return url, out


def test_a_sweep_runs_grows_and_reads_at_a_url(s3, small, tmp_path):
    env, fs = s3
    url, out = small
    assert f"{url}: 8 cells computed" in out
    code, out, err = linflow(env, "run", "--out", url, "--seed", "0:6", "-q")
    assert code == 0 and "growing s3://sweeps/runs/small.zarr: seed 4 → 6: 4 new cells" in err, err
    assert_bitwise(url)
    assert store.counts(url)["converged"] + store.counts(url)["unconverged"] == 12
    code, out, err = linflow(env, "status", url)
    assert code == 0 and "complete: no pending cells" in out, err
    code, out, err = linflow(env, "report", url, "--out", tmp_path / "rep")
    assert code == 0 and (tmp_path / "rep" / "report.md").is_file(), err
    code, out, err = linflow(env, "export", url, "--out", tmp_path / "cells.csv")
    assert code == 0 and len((tmp_path / "cells.csv").read_text().splitlines()) == 13, err
    ds = xr.open_zarr(url)  # from anywhere: xarray reads the store itself
    assert ds.sizes["seed"] == 6 and ds.attrs["fingerprint"] == store.open_group(url).attrs["fingerprint"]
    assert not fs.exists("sweeps/runs/small.zarr.lock")  # released


def test_a_killed_run_resumes_bit_for_bit_and_a_report_reads_it_meanwhile(s3, tmp_path):
    env, fs = s3
    url = "s3://sweeps/runs/killed.zarr"
    args = ["run", "--out", url, "--depth", "1:5", "--seed", "0:240", "--batch", "8", "--workers", "1", "-q"]
    proc = start_linflow(args, **env)
    try:
        done = 0
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and done < 16:
            time.sleep(0.5)
            if store.is_store(url):
                done = sum(v for k, v in store.counts(url).items() if k != "pending")
        assert 16 <= done < 960, done
        code, out, err = linflow(env, "report", url, "--out", tmp_path / "rep")  # a second process, mid-run
        assert code == 0 and "a run is writing the store" in out, err
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        reap(proc)
    fs.invalidate_cache()
    assert fs.exists("sweeps/runs/killed.zarr.lock")  # left by the killed driver: its pid is gone
    left = store.counts(url)["pending"]
    assert left > 0
    code, out, err = linflow(env, *args)
    assert code == 0, err
    assert "took over the lock of s3://sweeps/runs/killed.zarr from pid" in err
    assert f"{left} cells computed" in out
    assert_bitwise(url)


def test_one_driver_per_store_the_lock_is_a_conditional_write(s3):
    env, fs = s3
    url = "s3://sweeps/runs/locked.zarr"
    locks, won, lost = [ObjectLock(url) for _ in range(8)], [], []
    start = threading.Barrier(len(locks))

    def race(lock):
        start.wait()
        try:
            won.append(lock.acquire())
        except LockError as exc:
            lost.append(str(exc))

    threads = [threading.Thread(target=race, args=(lock,)) for lock in locks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(lost) == 7 and all("is being written by linflow run pid" in m for m in lost)
    holder = won[0]
    code, out, err = linflow(env, "run", "--out", url, *SMALL)  # a driver of its own: refused, nothing written
    assert code == 2 and err.startswith("linflow: error: ") and "is being written by linflow run pid" in err, err
    assert err.count("\n") == 1 and not fs.exists("sweeps/runs/locked.zarr/zarr.json")
    # another driver takes the lock over (as after the holder went quiet): the holder stops writing
    fs.pipe_file("sweeps/runs/locked.zarr.lock", b'{"pid": 1, "host": "elsewhere", "token": "t"}')
    with pytest.raises(LockLost, match="lost the lock on s3://sweeps/runs/locked.zarr to pid 1 on elsewhere"):
        holder.check()
    with pytest.raises(LockLost):
        holder.beat()
    holder.release()  # never deletes a lock that is not its own
    assert fs.cat_file("sweeps/runs/locked.zarr.lock").startswith(b'{"pid": 1')
    fs.rm_file("sweeps/runs/locked.zarr.lock")


def test_a_killed_creation_is_cleared_by_the_next_run(s3):
    env, fs = s3
    fs.pipe_file("sweeps/runs/half.zarr/.creating", b"")
    fs.pipe_file("sweeps/runs/half.zarr/depth/zarr.json", b"{}")  # a creation killed before its root
    assert not store.is_store("s3://sweeps/runs/half.zarr")
    code, out, err = linflow(env, "run", "--out", "s3://sweeps/runs/half.zarr", *SMALL)
    assert code == 0, err
    assert not fs.exists("sweeps/runs/half.zarr/.creating")
    assert_bitwise("s3://sweeps/runs/half.zarr")


@pytest.mark.parametrize(
    ("name", "out", "extra", "words"),
    [
        (
            "missing bucket",
            "s3://nobucket/s.zarr",
            {},
            "--out: s3://nobucket/s.zarr: the bucket nobucket does not exist",
        ),
        ("unknown scheme", "foo://b/s.zarr", {}, "--out: foo://b/s.zarr: "),
        ("no filesystem installed", "gs://b/s.zarr", {}, "--out: gs://b/s.zarr: Please install gcsfs"),
        (
            "no credentials",
            "s3://sweeps/nocred.zarr",
            {
                "AWS_ACCESS_KEY_ID": "",
                "AWS_SECRET_ACCESS_KEY": "",
                "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
                "AWS_CONFIG_FILE": "/nonexistent",
                "AWS_EC2_METADATA_DISABLED": "true",
            },
            "--out: s3://sweeps/nocred.zarr: cannot reach s3://sweeps",
        ),
        (
            "objects but no store",
            "s3://sweeps/other",
            {},
            "--out: s3://sweeps/other holds objects but no linflow store",
        ),
    ],
)
def test_bad_urls_are_refused_in_one_line_and_nothing_is_created(s3, name, out, extra, words):
    env, fs = s3
    fs.pipe_file("sweeps/other/data.bin", b"not a store")
    before = objects(fs)
    code, _, err = linflow({**env, **extra}, "run", "--out", out, *SMALL, timeout=120)
    assert code == 2, err
    assert err.startswith(f"linflow: error: {words}") and err.count("\n") == 1, err
    assert objects(fs) == before


def test_a_url_is_refused_where_local_files_are_written(s3, small, tmp_path):
    env, _ = s3
    code, _, err = linflow(env, "report", small[0], "--out", "s3://sweeps/rep")
    assert code == 2 and "--out: s3://sweeps/rep: a URL; this is written as local files" in err, err
    with pytest.raises(StoreError, match="lock a store on memory://"):
        ObjectLock("memory://b/s.zarr")


@pytest.mark.slow
def test_a_multi_node_cluster_sweeps_into_object_storage(s3):
    """Two worker nodes (ray.cluster_utils), the driver writing to the S3 server: both nodes compute, and the
    store holds run_local's numbers bit for bit."""
    import json

    from ray.cluster_utils import Cluster

    env, _ = s3
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        url = "s3://sweeps/runs/cluster.zarr"
        args = ["run", "--out", url, "--depth", "1:5", "--seed", "0:16", "--batch", "4", "--address", cluster.address]
        code, out, err = linflow(env, *args, "--json", timeout=600)
        assert code == 0, err
        assert len(json.loads(out.strip().splitlines()[-1])["nodes"]) == 2  # both worker nodes ran batches
        assert_bitwise(url)
    finally:
        cluster.shutdown()


def test_a_lost_chunk_is_found_by_a_listing_and_recomputed(s3):
    env, fs = s3
    url = "s3://sweeps/runs/damaged.zarr"
    code, _, err = linflow(env, "run", "--out", url, *SMALL)
    assert code == 0, err
    fs.invalidate_cache()
    lost = sorted(fs.find("sweeps/runs/damaged.zarr/loss/c"))[0]  # a chunk of done cells, as a partial copy loses
    fs.rm_file(lost)
    code, out, err = linflow(env, "status", url)
    assert code == 0 and "damaged: chunk loss/c/" in out and "is missing" in out, out + err
    code, out, err = linflow(env, "run", "--out", url, *SMALL)
    assert code == 0 and "marked pending — they will be recomputed" in err, err
    assert_bitwise(url)
