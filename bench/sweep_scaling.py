"""Target 3 — sweep scaling on Ray: the same sweep with 1 and 2 workers (local Ray instance), the
overhead beyond kernel time (scheduling, transfer, store writes) at the default batch size, and the
driver's peak memory for 10^4, 10^5 and 10^6 cells (the last takes 2–3 minutes on 2 cores).

    python bench/sweep_scaling.py [--repeats 3] [--memory-only | --scaling-only] [--batches 256,1024] [--keep FOLDER]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

SWEEP = {  # 16,384 cells: 64 tasks at the default batch of 256 cells, 16 of 1,024, … of dopri5
    "axes": {
        "depth": [2, 3, 4, 5],
        "width": [5],
        "init_norm": [0.3, 1.0, 3.0, 10.0],
        "seed": {"start": 0, "stop": 1024},
    },
    "integrator": {"method": "dopri5", "rtol": 1e-11, "atol": 1e-14},
    "horizon": 30.0,
}
LINFLOW = str(Path(sys.executable).parent / "linflow")


def run(spec: dict, workers: int, folder: Path) -> dict:
    """One `linflow run` as a user runs it (its own local Ray instance); its --json report."""
    path = folder / f"s{len(list(folder.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = path.with_suffix(".zarr")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.setdefault("RAY_AUTH_MODE", "disabled")
    proc = subprocess.run(
        [LINFLOW, "run", str(path), "--out", str(out), "--workers", str(workers), "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--memory-only", action="store_true", help="Only the driver's peak memory (10^4–10^6 cells).")
    ap.add_argument("--keep", type=Path, help="Write the stores here and keep them (default: a temporary folder).")
    ap.add_argument("--scaling-only", action="store_true", help="Skip the driver's peak memory.")
    ap.add_argument("--batches", default="256,1024", help="Batch sizes (cells per task) to compare, comma-separated.")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) if args.keep is None else args.keep
        folder.mkdir(parents=True, exist_ok=True)
        if not args.memory_only:
            for batch in (int(b) for b in args.batches.split(",")):
                scaling(folder, args.repeats, batch)
        if not args.scaling_only:
            memory(folder)


def scaling(folder: Path, repeats: int, batch: int) -> None:
    """1 and 2 workers on the same sweep: wall time against the kernel time, and the speed-up; the overhead per
    task (scheduling, transfer, one store write) is what the default batch size is chosen from."""
    walls, kernels = {}, {}
    print(f"batch {batch}:  (load average {_load()} before)")
    for workers in (1, 2):
        reports = [run({**SWEEP, "batch": batch}, workers, folder) for _ in range(repeats)]
        walls[workers] = statistics.median(r["seconds"] - r["startup_seconds"] for r in reports)
        kernels[workers] = statistics.median(r["kernel_seconds"] for r in reports)
        ideal = kernels[workers] / workers
        print(
            f"{workers} worker(s): wall {walls[workers]:.2f} s (run, after Ray start), kernel {kernels[workers]:.2f} s "
            f"summed over {reports[0]['tasks_run']} tasks; overhead (wall − kernel/workers) / (kernel/workers) = "
            f"{100 * (walls[workers] - ideal) / ideal:.1f}%  (target ≤ 10%); "
            f"{1000 * (walls[workers] - ideal) * workers / reports[0]['tasks_run']:.0f} ms per task"
        )
        # the same runs whole (Ray's start and stop included), so that time moved into Ray's start shows
        print(
            f"    runs: wall {_list(r['seconds'] - r['startup_seconds'] for r in reports)} s, Ray start "
            f"{_list(r['startup_seconds'] for r in reports)} s, whole command "
            f"{_list(r['seconds'] for r in reports)} s (median {statistics.median(r['seconds'] for r in reports):.2f})"
            f"; load average {_load()}"
        )
    print(
        f"speed-up 1 → 2 workers: {walls[1] / walls[2]:.2f}x  "
        f"(target ≥ 1.8x; {os.cpu_count()} cores, the driver shares them)\n"
    )


def _list(values) -> str:
    return "[" + ", ".join(f"{v:.2f}" for v in values) + "]"


def _load() -> str:
    """The 1, 5 and 15-minute load averages: the machine may be shared."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def memory(folder: Path) -> None:
    """The driver's peak RSS (the `linflow run` process) against the number of cells: flat is the target."""
    cheap = {
        "axes": {"depth": [1], "width": [5], "init_norm": [1.0]},
        "horizon": 0.01,
        "checkpoints": {"count": 2, "spacing": "linear"},
    }
    rss = {}
    for n in (10_000, 100_000, 1_000_000):
        r = run({**cheap, "axes": {**cheap["axes"], "seed": {"start": 0, "stop": n}}}, 2, folder)
        rss[n] = r["driver_peak_rss_mb"]
        print(
            f"{n:>7} cells: driver peak RSS {rss[n]:.0f} MB ({r['batches_run']} batches, {r['seconds']:.1f} s)",
            flush=True,
        )
    growth = rss[1_000_000] / rss[100_000] - 1
    print(f"10^5 → 10^6 cells: driver peak RSS {100 * growth:+.1f}%  (target within ±10%)")


if __name__ == "__main__":
    main()
