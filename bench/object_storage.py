"""Issue 20 — a sweep of 16,384 cells into a local store and into a store on object storage (a real S3 API
server on the loopback address: moto's server mode), wall time side by side (target: the URL within 1.5x
of the local folder), and the bytes stored per cell. Each run is a whole ``linflow run`` process (its own
local Ray instance), as a user runs it; runs alternate local / S3 so that load drifts hit both alike.

    python bench/object_storage.py [--repeats 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from sweep_scaling import SWEEP  # 16,384 cells: 64 batches of 256 (run from the repository: bench/ is on the path)

CELLS = 16_384
LINFLOW = str(Path(sys.executable).parent / "linflow")


def run(spec: Path, out: str, env: dict, workers: int) -> float:
    started = time.perf_counter()
    proc = subprocess.run(
        [LINFLOW, "run", str(spec), "--out", out, "--workers", str(workers), "-q"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"linflow run --out {out} failed:\n{proc.stderr}")
    return seconds


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(
        RAY_AUTH_MODE=env.get("RAY_AUTH_MODE", "disabled"),
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=f"http://{host}:{port}",
    )
    os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")})
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("bench")
    folder = Path(tempfile.mkdtemp(prefix="linflow-os-"))
    spec = folder / "sweep.yaml"
    spec.write_text(yaml.safe_dump(SWEEP))
    run(spec, str(folder / "warm.zarr"), env, args.workers)  # compile once (the cache), untimed
    local, remote, sizes = [], [], {}
    for k in range(args.repeats):
        out = folder / f"local{k}.zarr"
        local.append(run(spec, str(out), env, args.workers))
        sizes["local"] = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        url = f"s3://bench/run{k}.zarr"
        remote.append(run(spec, url, env, args.workers))
        fs.invalidate_cache()
        sizes["s3"] = sum(info["size"] for info in fs.find(f"bench/run{k}.zarr", detail=True).values())
        print(f"run {k}: local {local[-1]:.1f} s, s3 {remote[-1]:.1f} s", flush=True)
    server.stop()
    lm, rm = statistics.median(local), statistics.median(remote)
    print(f"load average {os.getloadavg()[0]:.2f}; {args.workers} workers; {CELLS:,} cells, {args.repeats} runs each")
    print(f"local store: median {lm:.1f} s (min {min(local):.1f}, max {max(local):.1f})")
    print(f"s3 (moto on loopback): median {rm:.1f} s (min {min(remote):.1f}, max {max(remote):.1f})")
    print(f"ratio s3 / local (medians): {rm / lm:.2f}x (target ≤ 1.5x)")
    print(f"bytes per cell: local {sizes['local'] / CELLS:.0f}, s3 {sizes['s3'] / CELLS:.0f}")


if __name__ == "__main__":
    main()
