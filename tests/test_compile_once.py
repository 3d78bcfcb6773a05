"""The compiled kernel is compiled once per node (sweep.kernel.cache): of the worker processes that start
together on an empty cache, one compiles while the others wait, then load what it wrote; a copy of ``sweep``
in another folder with new mtimes (as Ray's ``py_modules`` unpacks it on each node) finds the same cache; a
process that dies holding the lock leaves no one waiting.

Each process here runs what a Ray worker runs before its first batch (``task.warm_up``), then a small batch,
and reports its compiled functions' cache misses and hits (numba's ``dispatcher.stats``, per process): a
process that compiled anything has misses, one that loaded everything has none. Misses in the batch itself,
after the warm-up, mean that the warm-up's tiny call missed argument types the batch uses: the workers would
compile again in their first task.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import hashlib, json, sys, time
started = time.perf_counter()
import sweep
from sweep import spec as specs, task
from sweep.batch import chunk_shape, regions, run_batch
from sweep.kernel import cache, exact, flows, stepper
from sweep.problem import build

model = sys.argv[1]
s = specs.parse({
    "model": model, "problem": {"m": 20, "dx": 3, "dy": 1 if model == "exact" else 2}, "horizon": 1.0,
    "checkpoints": {"count": 3},
    "axes": {"depth": [2], "width": [3], "init_norm": [0.5], "seed": {"start": 0, "stop": 4}},
    **json.loads(sys.argv[2] if len(sys.argv) > 2 else "{}"),
})
p = build(s.problem)
compiled = [d for m in (flows, stepper, exact) for d in vars(m).values() if hasattr(d, "stats")]
misses = lambda: sum(sum(d.stats.cache_misses.values()) for d in compiled)
task.warm_up(s)
warm = misses()
out = run_batch(s, p, regions(s.shape, chunk_shape(s.shape, tuple(s.axes), s.batch))[0])
kernel_functions = [(n, d) for m in (flows, stepper) for n, d in vars(m).items() if getattr(d, "overloads", None)]
digest = hashlib.sha256(b"".join(name.encode() + out[name].tobytes() for name in sorted(out))).hexdigest()
print(json.dumps({
    "sweep": sweep.__file__,
    "folder": str(cache.FOLDER),
    "misses": misses(),
    "batch_misses": misses() - warm,
    "hits": sum(sum(d.stats.cache_hits.values()) for d in compiled),
    "compiled": sorted(n for n, d in kernel_functions),
    "versions": {n: len(d.overloads) for n, d in kernel_functions},
    "digest": digest,
    "seconds": time.perf_counter() - started,
}))
"""


def _start(args, cache_dir: Path, cwd: Path, pythonpath: Path | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["NUMBA_CACHE_DIR"] = str(cache_dir)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.Popen(
        [sys.executable, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _report(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """Four processes started at once on an empty cache (one node's workers): their reports and the cache."""
    cache_dir = tmp_path_factory.mktemp("numba-cache")
    cwd = tmp_path_factory.mktemp("cwd")
    procs = [_start(["-c", CHILD, "layerwise"], cache_dir, cwd) for _ in range(4)]
    return [_report(p) for p in procs], cache_dir, cwd


@pytest.mark.slow
def test_processes_starting_together_on_an_empty_cache_compile_once(node):
    reports, cache_dir, _ = node
    compiled = [r for r in reports if r["misses"]]
    assert len(compiled) == 1, reports  # one compiled; the others waited for it, then loaded
    assert compiled[0]["batch_misses"] == 0, compiled[0]  # its warm-up alone compiled what the batch runs
    # one version of each function: numba compiles a callee again for each literal argument (a 0, a True), and
    # the cold compile doubled; the kernel passes flows.ZERO, ONE, FLOW and LOSS instead
    twice = {n: v for n, v in compiled[0]["versions"].items() if v > 1}
    assert not twice, twice
    for r in reports:
        if r is not compiled[0]:
            assert r["misses"] == 0 and r["hits"] > 0, r
    assert len({r["digest"] for r in reports}) == 1  # loaded code gives the compiled code's numbers, bit for bit
    folders = sorted(p.name for p in cache_dir.iterdir())
    assert folders == [Path(reports[0]["folder"]).name], folders  # every kernel function in the one keyed folder


@pytest.mark.slow
def test_a_copy_of_sweep_elsewhere_with_new_mtimes_finds_the_cache(node, tmp_path):
    reports, cache_dir, cwd = node
    copy = tmp_path / "unpacked"
    shutil.copytree(ROOT / "sweep", copy / "sweep", ignore=shutil.ignore_patterns("__pycache__"))
    later = time.time() + 3600
    for path in (copy / "sweep").rglob("*.py"):
        os.utime(path, (later, later))  # as an unpacked py_modules copy: other folder, other mtimes
    r = _report(_start(["-c", CHILD, "layerwise"], cache_dir, cwd, pythonpath=copy))
    assert Path(r["sweep"]).is_relative_to(copy), r["sweep"]  # the copy was imported, not the checkout
    assert r["misses"] == 0 and r["hits"] > 0, r  # loaded, nothing compiled
    assert r["digest"] == reports[0]["digest"]
    assert r["seconds"] < 20, r  # ~1 s on an idle 2-core machine; compiling takes 20 s or more


@pytest.mark.slow
def test_the_closed_form_is_warmed_up_too(node):
    _, cache_dir, cwd = node
    first = _report(_start(["-c", CHILD, "exact"], cache_dir, cwd))
    second = _report(_start(["-c", CHILD, "exact"], cache_dir, cwd))
    assert first["misses"] > 0  # `model: exact` compiles its own functions, once
    assert first["batch_misses"] == 0, first  # all in its warm-up: the batch compiled nothing more
    assert second["misses"] == 0 and second["hits"] > 0, second  # loaded, nothing compiled again
    assert second["digest"] == first["digest"]


@pytest.mark.slow
def test_a_run_compiles_its_own_models_code_only(node):
    reports, cache_dir, cwd = node
    layerwise = next(r for r in reports if r["misses"])
    induced = _report(_start(["-c", CHILD, "induced"], cache_dir, cwd))
    again = _report(_start(["-c", CHILD, "induced"], cache_dir, cwd))
    assert induced["misses"] > 0  # its code was in no layerwise run's
    assert induced["batch_misses"] == 0, induced  # all in its warm-up: the batch compiled nothing more
    assert again["misses"] == 0 and again["hits"] > 0, again  # loaded, nothing compiled again
    assert again["digest"] == induced["digest"]
    layerwise_code = {"_layerwise", "_matmul", "_residual"}  # (_layerwise_shaped is inlined into flows.evaluate)
    induced_code = {"_induced_column", "_induced_general", "_matrix_flow", "_truncate"}  # (the SVDs)
    for run, own, other in ((layerwise, layerwise_code, induced_code), (induced, induced_code, layerwise_code)):
        assert own <= set(run["compiled"]) and not other & set(run["compiled"]), run["compiled"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "fields",
    [
        {"integrator": {"method": "euler", "step": 0.01}},
        {"integrator": {"method": "rk4", "step": 0.01}},
        {"problem": {"m": 20, "dx": 3, "dy": 2, "whiten": False}},
        {"problem": {"kind": "completion", "n": 4, "rank": 1, "observed": 0.8}},
    ],
    ids=["euler", "rk4", "not-whitened", "completion"],
)
def test_one_warm_up_covers_every_method_and_problem_of_its_model(node, fields):
    _, cache_dir, cwd = node  # holds the layerwise warm-up's code, and the default batch's
    r = _report(_start(["-c", CHILD, "layerwise", json.dumps(fields)], cache_dir, cwd))
    assert r["misses"] == 0 and r["hits"] > 0, r  # their batches run on the same compiled code: nothing new


HOLDER = r"""
import os, sys, time
from sweep.kernel import cache

def warm():
    with open(sys.argv[1], "a") as f:
        f.write(sys.argv[2] + "\n")
    if sys.argv[2] == "dies":
        time.sleep(2)
        os._exit(3)  # killed while compiling: the kernel releases its flock
    if sys.argv[2].startswith("part"):
        time.sleep(1)
        with open(sys.argv[1], "a") as f:
            f.write(sys.argv[2] + "-end\n")

cache.compile_once(sys.argv[2] if sys.argv[2].startswith("part") else "probe", warm, lock="probe")
"""


def test_a_holder_that_dies_hands_the_lock_to_a_waiter(tmp_path):
    log = tmp_path / "log"
    holder = _start(["-c", HOLDER, str(log), "dies"], tmp_path / "cache", tmp_path)
    deadline = time.monotonic() + 60
    while not log.exists():  # the holder has the lock and is "compiling"
        assert time.monotonic() < deadline and holder.poll() is None
        time.sleep(0.05)
    waiter = _start(["-c", HOLDER, str(log), "waits"], tmp_path / "cache", tmp_path)
    assert holder.wait(timeout=60) == 3
    _, err = waiter.communicate(timeout=60)
    assert waiter.returncode == 0, err
    assert log.read_text().split() == ["dies", "waits"]  # the waiter found no mark and compiled itself
    assert list((tmp_path / "cache").glob("kernel-*/probe-*.done"))


def test_parts_that_share_a_lock_compile_one_at_a_time_and_each_leaves_its_mark(tmp_path):
    log = tmp_path / "log"
    procs = [_start(["-c", HOLDER, str(log), part], tmp_path / "cache", tmp_path) for part in ("part-a", "part-b")]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    lines = log.read_text().split()
    assert sorted(lines) == ["part-a", "part-a-end", "part-b", "part-b-end"]
    assert lines[1] == lines[0] + "-end", lines  # the second began after the first had ended
    assert len(list((tmp_path / "cache").glob("kernel-*/part-*.done"))) == 2
