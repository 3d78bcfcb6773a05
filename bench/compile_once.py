"""Compiling once per node (issue 20 §2): a Ray cluster of 2 nodes × 2 CPUs (``ray.cluster_utils.Cluster``
on this machine, plus a head node with no CPUs), the workers receiving ``sweep`` through ``py_modules`` as
on a real cluster, each node with its own empty NUMBA_CACHE_DIR (the node's environment, ``env_vars``):
4 first batches submitted at once (one per CPU, 2 per node).

* cold: empty caches. How many worker processes compiled the kernel on each node (target 1), and each
  batch's latency from submission to its result (the first result, the median, the last).
* new cluster: the same caches, a new cluster (a new session, so ``py_modules`` unpacks ``sweep`` in a new
  folder): how many compiled again (target 0), and the latencies.

``before`` is today's code, ``git archive HEAD sweep`` (no warm-up lock; numba's own cache locator, keyed by
the source folder); ``after`` the working tree's ``sweep``. Each worker reports its compiled functions'
cache misses (numba's ``dispatcher.stats``, per process): a process with misses compiled. The variants
alternate, each repeat on new caches and clusters; medians over repeats.

    python bench/compile_once.py [--repeats 3] [--variants before,after]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.pop("RAY_ADDRESS", None)
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

SPEC = {  # a first batch: 16 seeds of a small layerwise sweep (milliseconds once compiled)
    "problem": {"m": 20, "dx": 4, "dy": 2},
    "horizon": 5.0,
    "checkpoints": {"count": 5},
    "axes": {"depth": [3], "width": [4], "init_norm": [0.5], "seed": {"start": 0, "stop": 64}},
    "batch": 16,
}
NODES, CPUS = 2, 2


def probe(payload, chunks):
    """A worker's first task (sweep.task.run_task), and what this process compiled."""
    import hashlib
    import os

    import sweep
    from sweep import task
    from sweep.kernel import flows, stepper

    out, node, seconds = task.run_task(payload, chunks)
    compiled = [d for m in (flows, stepper) for d in vars(m).values() if hasattr(d, "stats")]
    results = out[0][2]
    return {
        "node": node,
        "pid": os.getpid(),
        "misses": sum(sum(d.stats.cache_misses.values()) for d in compiled),
        "hits": sum(sum(d.stats.cache_hits.values()) for d in compiled),
        "sweep": sweep.__file__,
        "cache": os.environ.get("NUMBA_CACHE_DIR"),
        "seconds": seconds,
        "digest": hashlib.sha256(b"".join(k.encode() + results[k].tobytes() for k in sorted(results))).hexdigest(),
    }


def sources(folder: Path) -> dict[str, Path]:
    """The two ``sweep`` packages the workers receive: HEAD's (before) and the working tree's (after)."""
    before, after = folder / "before", folder / "after"
    tar = subprocess.run(["git", "archive", "HEAD", "sweep"], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        t.extractall(before, filter="data")
    shutil.copytree(ROOT / "sweep", after / "sweep", ignore=shutil.ignore_patterns("__pycache__"))
    return {"before": before / "sweep", "after": after / "sweep"}


def first_batches(package: Path, caches: list[Path]) -> list[dict]:
    """A new cluster (one node per cache folder), 4 first batches at once; each one's report and latency."""
    import ray
    from ray.cluster_utils import Cluster

    from sweep import batch, spec
    from sweep.cluster import SINGLE_THREAD
    from sweep.problem import build

    s = spec.parse(SPEC)
    payload = (s, build(s.problem))
    regions = batch.regions(s.shape, batch.chunk_shape(s.shape, tuple(s.axes), s.batch))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        for cache in caches:
            cluster.add_node(num_cpus=CPUS, env_vars={"NUMBA_CACHE_DIR": str(cache)})
        cluster.wait_for_nodes()
        env = {"py_modules": [str(package)], "env_vars": dict(SINGLE_THREAD), "excludes": ["__pycache__/"]}
        ray.init(address=cluster.address, runtime_env=env, logging_level="ERROR", log_to_driver=False)
        task = ray.remote(num_cpus=1, max_retries=0, scheduling_strategy="SPREAD")(probe)
        started = time.perf_counter()
        pending = {task.remote(payload, [(regions[0], None)]) for _ in range(NODES * CPUS)}  # the same batch
        reports = []
        while pending:
            [done], _ = ray.wait(list(pending), num_returns=1)
            pending.remove(done)
            reports.append({**ray.get(done), "latency": time.perf_counter() - started})
        return reports
    finally:
        ray.shutdown()
        cluster.shutdown()


def summary(reports: list[dict]) -> dict:
    nodes = {}
    for r in reports:
        nodes.setdefault(r["node"], []).append(r)
    lat = sorted(r["latency"] for r in reports)
    return {
        "compiled": sorted(sum(1 for r in rs if r["misses"]) for rs in nodes.values()),
        "first": lat[0],
        "median": statistics.median(lat),
        "last": lat[-1],
        "digests": {r["digest"] for r in reports},
        "caches": {r["cache"] for r in reports},
        "folders": {str(Path(r["sweep"]).parent) for r in reports},
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variants", default="before,after")
    args = ap.parse_args()
    variants = args.variants.split(",")
    rows = {(v, phase): [] for v in variants for phase in ("cold", "new cluster")}
    digests = set()
    print(f"{NODES} nodes x {CPUS} CPUs on {os.cpu_count()} cores; load average {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        packages = sources(Path(tmp))
        for rep in range(args.repeats):
            for v in variants:
                caches = [Path(tmp) / f"{v}-{rep}-node{i}" for i in range(NODES)]
                for c in caches:
                    c.mkdir()
                for phase in ("cold", "new cluster"):
                    t = time.perf_counter()
                    s = summary(first_batches(packages[v], caches))
                    assert s["caches"] == {str(c) for c in caches}, s["caches"]  # each node its own cache folder
                    digests |= s["digests"]
                    rows[(v, phase)].append(s)
                    print(
                        f"  {v:6} {phase:11} rep {rep}: compiled per node {s['compiled']}, latency first "
                        f"{s['first']:.1f} s, median {s['median']:.1f} s, last {s['last']:.1f} s "
                        f"({time.perf_counter() - t:.0f} s with the cluster; load "
                        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; sweep in {sorted(s['folders'])})",
                        flush=True,
                    )
    print(f"\nmedians over {args.repeats} repeats (latency: submission of 4 first batches to each result)")
    print(f"{'variant':8} {'phase':12} {'compiled per node':>18} {'first s':>8} {'median s':>9} {'last s':>7}")
    for (v, phase), ss in rows.items():
        compiled = [statistics.median(s["compiled"][i] for s in ss) for i in range(NODES)]
        print(
            f"{v:8} {phase:12} {str(compiled):>18} {statistics.median(s['first'] for s in ss):8.1f} "
            f"{statistics.median(s['median'] for s in ss):9.1f} {statistics.median(s['last'] for s in ss):7.1f}"
        )
    print(f"results of every batch, before and after: {'the same bits' if len(digests) == 1 else 'DIFFER'}")
    print(f"load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
