"""Cold and warm start of the default path (targets: cold compile ≤ 10 s, warm start ≤ 1 s): each run a new
Python process (``sys.executable -c``) with ``sweep`` from the variant's folder (PYTHONPATH) and its own
NUMBA_CACHE_DIR, timing inside the process ``import sweep.task`` and the first dopri5 integrate.

* cold layerwise: an empty cache; the first ``sweep.task._tiny_integration()`` (the layerwise flow).
* induced after layerwise: in the same process, then the first induced-model integrate (depth 2, rank 1,
  Z 1×1): what an induced run costs once the layerwise code is compiled.
* warm layerwise: a new process on the cache the cold run filled; import and the first layerwise integrate
  (target: their sum ≤ 1 s).
* cold induced: an empty cache; the first integrate is the induced model's.

``before`` is a commit's code, ``git archive REV sweep`` (``--before REV``, default HEAD); ``after`` the
working tree's ``sweep``. Each process
reports ``sweep.__file__`` (checked to lie in the variant's folder) and numba's cache misses of the kernel's
compiled functions (``dispatcher.stats``, per call). The variants alternate; medians over repeats. The cold
target is read on import + first integrate.

    python bench/cold_start.py [--repeats 3] [--variants before,after] [--before REV]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SINGLE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}

CHILD = """
import json, sys, time
t = time.perf_counter()
import sweep, sweep.task
out = {"sweep": sweep.__file__, "import": time.perf_counter() - t}
import numba, numpy as np
from sweep import kernel

def induced():
    m = kernel.Induced(2, np.ones((1, 1)), tail=0.0, rank=1)
    kernel.integrate(
        m, np.full((1, 1), 0.1), kernel.DOPRI5, horizon=1.0, checkpoints=[1.0], eps=0.1, rtol=1e-3, atol=1e-6
    )

def misses():  # numba's cache misses so far, all the kernel's compiled functions
    mods = [m for n, m in list(sys.modules.items()) if n.startswith("sweep.kernel")]
    return sum(sum(d.stats.cache_misses.values()) for m in mods for d in vars(m).values() if hasattr(d, "stats"))

calls = {"layerwise": sweep.task._tiny_integration, "induced": induced}
for name in sys.argv[1:]:
    t, before = time.perf_counter(), misses()
    calls[name]()
    out[name] = time.perf_counter() - t
    out["misses " + name] = misses() - before
out["cache"] = numba.config.CACHE_DIR
print(json.dumps(out))
"""
PHASES = ("cold layerwise", "induced after layerwise", "warm layerwise", "cold induced")


def child(folder: Path, cache: Path, calls: list[str]) -> dict:
    """One new process: ``sweep`` from ``folder``, numba's cache in ``cache``; its report (seconds inside it)."""
    env = {**os.environ, **SINGLE_THREAD, "PYTHONPATH": str(folder), "NUMBA_CACHE_DIR": str(cache)}
    env.pop("LINFLOW_PRELOAD", None)
    t = time.perf_counter()
    # cwd: the cache folder, not the repository, whose ``sweep`` would come first on the path (``-c``: '')
    p = subprocess.run([sys.executable, "-c", CHILD, *calls], env=env, cwd=cache, capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"child failed ({folder}, {calls}):\n{p.stderr}")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert Path(out["sweep"]).resolve().is_relative_to(folder.resolve() / "sweep"), (out["sweep"], folder)
    assert Path(out["cache"]).resolve() == cache.resolve(), (out["cache"], cache)
    return {**out, "process": time.perf_counter() - t}


def runs(folder: Path, tmp: Path) -> dict[str, dict]:
    """The four phases of one repeat of one variant: {phase: {"import", "first", "misses", "process"}}."""
    cold = Path(tempfile.mkdtemp(dir=tmp))
    a = child(folder, cold, ["layerwise", "induced"])
    b = child(folder, cold, ["layerwise"])
    c = child(folder, Path(tempfile.mkdtemp(dir=tmp)), ["induced"])

    def row(r, call, imp=True):
        return {
            "import": r["import"] if imp else 0.0,
            "first": r[call],
            "misses": r["misses " + call],
            "process": r["process"],
        }

    return dict(zip(PHASES, (row(a, "layerwise"), row(a, "induced", False), row(b, "layerwise"), row(c, "induced"))))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variants", default="before,after")
    ap.add_argument("--before", default="HEAD", help="the commit whose sweep is the 'before' variant")
    args = ap.parse_args()
    variants = args.variants.split(",")
    rows = {(v, phase): [] for v in variants for phase in PHASES}
    print(f"{os.cpu_count()} cores; load average {os.getloadavg()}; before: {args.before}", flush=True)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        tar = subprocess.run(["git", "archive", args.before, "sweep"], cwd=ROOT, capture_output=True, check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(tar)) as t:
            t.extractall(tmp / "before", filter="data")
        folders = {"before": tmp / "before", "after": ROOT}
        for rep in range(args.repeats):
            for v in variants:
                for phase, r in runs(folders[v], tmp).items():
                    rows[(v, phase)].append(r)
                    print(
                        f"  {v:6} {phase:23} rep {rep}: import {r['import']:5.2f} s + first integrate "
                        f"{r['first']:6.2f} s = {r['import'] + r['first']:6.2f} s (process {r['process']:5.1f} s, "
                        f"cache misses {r['misses']}; load {os.getloadavg()[0]:.2f})",
                        flush=True,
                    )
    med = {k: {f: statistics.median(r[f] for r in rs) for f in ("import", "first")} for k, rs in rows.items()}
    print(f"\nmedians over {args.repeats} repeats (seconds, inside the process)")
    print(f"{'variant':8} {'phase':24} {'import':>7} {'first':>7} {'sum':>7}")
    for (v, phase), m in med.items():
        print(f"{v:8} {phase:24} {m['import']:7.2f} {m['first']:7.2f} {m['import'] + m['first']:7.2f}")
    total = {v: med[(v, "cold layerwise")]["import"] + med[(v, "cold layerwise")]["first"] for v in variants}
    if {"before", "after"} <= set(variants):
        print(f"cold layerwise before / after: {total['before'] / total['after']:.2f}x")
    if "after" in variants:
        warm = med[("after", "warm layerwise")]["import"] + med[("after", "warm layerwise")]["first"]
        print(f"after: cold layerwise ≤ 10 s: {'met' if total['after'] <= 10 else 'NOT met'} ({total['after']:.2f} s)")
        print(f"after: warm ≤ 1 s: {'met' if warm <= 1 else 'NOT met'} ({warm:.2f} s)")
    print(f"load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
