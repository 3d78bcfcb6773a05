"""A sweep starts at once (issue 21): a local instance's workers import the task and load the kernel as they
start, before their first task; a preloaded copy of sweep that is not the driver's is set aside; Ray's stop
does not wait on its autoscaler monitor; a new store is laid out while the workers start, and a Ray that does
not start leaves no store."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sweep import cluster, runner, task
from sweep import spec as specs
from sweep.errors import RayGone
from sweep.models import MODELS

ROOT = Path(__file__).resolve().parents[1]
SMALL = {
    "axes": {"depth": [2], "width": [3], "init_norm": [1.0], "seed": {"start": 0, "stop": 4}},
    "integrator": {"method": "rk4", "step": 1e-2},
    "horizon": 1.0,
    "checkpoints": {"count": 5, "spacing": "linear"},
    "batch": 2,
}


def test_workers_have_the_task_and_the_kernel_loaded_before_their_first_task():
    import ray

    assert cluster.connect(workers=2, kernels=["layerwise"])
    try:

        @ray.remote(num_cpus=1)
        def state():
            import sys

            task = sys.modules.get("sweep.task")  # this function imports nothing of sweep
            cache = sys.modules.get("sweep.kernel.cache")
            return task and task.__file__, cache and sorted(cache._done), os.environ.get(cluster.PRELOAD_VAR)

        ours = str(Path(runner.__file__).with_name("task.py"))
        for path, done, left in ray.get([state.remote() for _ in range(2)]):
            assert path == ours and done == ["layerwise"] and left is None  # (not passed on to what tasks start)
    finally:
        cluster.stop_ray()
    assert cluster.PRELOAD_VAR not in os.environ  # set for Ray's processes only, while they start


def _import_task(env_value) -> dict:
    """Import sweep.task in a fresh interpreter with PRELOAD_VAR set to ``env_value``: what it finds."""
    code = (
        "import json, sys\n"
        "try:\n"
        "    import sweep.task\n"
        "    error = None\n"
        "except ImportError as exc:\n"
        "    error = str(exc)\n"
        "cache = sys.modules.get('sweep.kernel.cache')\n"
        "print(json.dumps({'error': error, 'left': sorted(n for n in sys.modules if n.split('.')[0] == 'sweep'),"
        " 'done': cache and sorted(cache._done)}))\n"
    )
    env = {**os.environ, cluster.PRELOAD_VAR: env_value}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_preload_of_the_drivers_own_sweep_loads_the_kernels():
    got = _import_task(cluster.preload(["layerwise"]))
    assert got["error"] is None and got["done"] == ["layerwise"]


def test_every_model_has_its_kernel_and_its_warm_up_loads_it():
    assert set(task.KERNELS) == set(MODELS)  # a run's workers load its model's code (task.kernel_of)
    got = _import_task(cluster.preload(list(MODELS)))
    assert got["error"] is None and got["done"] == sorted(MODELS)


def test_a_preloaded_copy_of_sweep_other_than_the_drivers_is_set_aside(tmp_path):
    value = json.dumps({"package": str(tmp_path / "sweep"), "kernels": ["layerwise"]})
    got = _import_task(value)
    assert got["error"] and "not preloaded" in got["error"]
    assert got["left"] == []  # no module of that copy stays: the tasks import the driver's


def test_a_broken_preload_value_is_ignored():
    got = _import_task("not json")
    assert got["error"] is None and got["done"] == []


def test_rays_stop_does_not_wait_on_the_autoscaler_monitor():
    import ray

    assert cluster.connect(workers=1)
    node = ray._private.worker._global_node
    monitor = node.all_processes["monitor"][0].process
    started = time.perf_counter()
    cluster._end_monitor()
    assert monitor.poll() is not None and time.perf_counter() - started < 1.0
    cluster.stop_ray()
    assert not cluster.ray_descendants()


def test_a_ray_that_does_not_start_leaves_no_store(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("no Ray here")

    monkeypatch.setattr(cluster, "connect", refuse)
    out = tmp_path / "new.zarr"
    with pytest.raises(RayGone, match="Ray did not start"):
        runner.run(specs.parse(SMALL), out)
    assert not out.exists() and not Path(str(out) + ".lock").exists()
    assert os.listdir(tmp_path) == []


def test_a_new_store_is_laid_out_after_ray_starts_and_computed_whole(tmp_path, monkeypatch):
    order = []
    connect, create = cluster.connect, runner.store.create
    monkeypatch.setattr(cluster, "connect", lambda *a, **k: order.append("ray") or connect(*a, **k))
    monkeypatch.setattr(runner.store, "create", lambda *a, **k: order.append("store") or create(*a, **k))
    spec = specs.parse(SMALL)
    report = runner.run(spec, tmp_path / "s.zarr")
    assert order == ["ray", "store"] and report.cells_run == 4 and report.startup_seconds > 0
    assert report.counts["pending"] == report.counts["failed"] == 0
    assert not cluster.ray_descendants()  # stopped
    rerun = runner.run(spec, tmp_path / "s.zarr")  # nothing to do: Ray is not started at all
    assert order == ["ray", "store"] and rerun.cells_run == 0 and rerun.startup_seconds == 0


def test_the_cli_run_of_a_new_store(tmp_path):
    """Through `linflow run` as a user runs it: the store whole, its numbers those of run_local."""
    import numpy as np

    from sweep import store

    (tmp_path / "s.yaml").write_text(yaml.safe_dump(SMALL))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    linflow = str(Path(sys.executable).parent / "linflow")
    proc = subprocess.run(
        [linflow, "run", "s.yaml", "--out", "s.zarr", "--json"], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr
    counts = json.loads(proc.stdout.strip().splitlines()[-1])["counts"]
    assert counts["pending"] == counts["failed"] == 0
    ds, ref = store.open_results(tmp_path / "s.zarr"), runner.run_local(specs.parse(SMALL))
    np.testing.assert_array_equal(ds["loss"].values, ref["loss"].values)
