"""Outgrowing one machine: the launcher config, single-threaded BLAS in tasks, and a real multi-node
Ray cluster on this machine (head + 2 worker nodes) — with a node removed mid-sweep."""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import xarray as xr
import yaml
from reference import assert_identical, compute

from sweep import runner
from sweep import spec as specs
from sweep.cluster import connect

ROOT = Path(__file__).resolve().parents[1]
SWEEP = {
    "axes": {"depth": [2, 3], "width": [5], "init_norm": [0.5, 5.0], "seed": {"start": 0, "stop": 16}},
    "integrator": {"method": "rk4", "step": 2e-3},
    "horizon": 6.0,
    "checkpoints": {"count": 21, "spacing": "log"},
    "batch": 4,
}


def test_cluster_yaml_passes_rays_own_launcher_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(prepare_config(config))  # what `ray up` runs before launching anything
    assert config["provider"]["type"] == "local"
    assert any("pip install" in c and "linflow-dist/linflow-*.whl" in c for c in config["setup_commands"])
    assert not any("install -e" in c for c in config["setup_commands"])  # a built wheel, not a source tree
    assert config["file_mounts"] == {"~/linflow-dist": "./dist"}
    assert {"runs/", "*.zarr"} <= set(config["rsync_exclude"])
    broken = {**config, "max_wokers": 2}  # the validator is real: a typo fails it
    with pytest.raises(Exception, match="max_wokers"):
        validate_config(prepare_config(broken))


def test_blas_is_single_threaded_inside_tasks(ray_local):
    import ray

    @ray.remote(num_cpus=1)
    def blas_threads():
        import numpy as np
        from threadpoolctl import threadpool_info

        np.ones((64, 64)) @ np.ones((64, 64))  # BLAS loaded and used
        return [(i["internal_api"], i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"]

    pools = ray.get(blas_threads.remote())
    assert pools and all(n == 1 for _, n in pools), pools


@pytest.fixture
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # tasks run on the worker nodes only
    workers = [c.add_node(num_cpus=1) for _ in range(2)]
    c.wait_for_nodes()
    c.workers = workers
    yield c
    c.shutdown()


@pytest.mark.slow
def test_sweep_on_a_multi_node_cluster_matches_a_local_run(cluster, tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(SWEEP))
    out = tmp_path / "s.zarr"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "linflow"),
            "run",
            str(spec),
            "--out",
            str(out),
            "--address",
            cluster.address,
            "--json",
        ],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(report["nodes"]) == 2  # both worker nodes ran batches
    assert_identical(xr.open_zarr(out).load(), compute(SWEEP))


@pytest.mark.slow
def test_worker_node_removed_mid_sweep(cluster, tmp_path):
    import ray

    connect(address=cluster.address)
    try:
        out = tmp_path / "s.zarr"
        first_batch = threading.Event()
        result = {}

        def drive():
            try:
                result["report"] = runner.run(specs.parse(SWEEP), out, progress=lambda d, t: d and first_batch.set())
            except BaseException as exc:  # noqa: BLE001 — surfaced by the asserts below
                result["error"] = exc

        t = threading.Thread(target=drive)
        t.start()
        assert first_batch.wait(300)
        cluster.remove_node(cluster.workers[0], allow_graceful=False)
        t.join(600)
        assert not t.is_alive() and "error" not in result, result.get("error")
        assert result["report"].counts["pending"] == 0 and result["report"].counts["failed"] == 0
        assert_identical(xr.open_zarr(out).load(), compute(SWEEP))
    finally:
        ray.shutdown()
