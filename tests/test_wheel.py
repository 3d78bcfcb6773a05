"""linflow as a user installs it from a wheel (not this checkout): every sub-package is in the wheel,
`linflow reproduce --list` finds the studies, and a small sweep runs on a local Ray instance."""

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_the_wheel_holds_every_package_and_runs_a_sweep(tmp_path):
    source = tmp_path / "linflow"  # built from a clean copy: a stale build/ folder would hide a missing package
    leftovers = shutil.ignore_patterns(".*", "build", "*.egg-info", "__pycache__", "runs", "*.zarr")
    shutil.copytree(ROOT, source, ignore=leftovers)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", wheels, source],
        check=True,
        cwd=tmp_path,
        timeout=600,
    )
    (wheel,) = wheels.glob("linflow-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = Path(
        subprocess.check_output(
            [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], text=True
        ).strip()
    )
    # the dependencies come from this environment (a path line: its .pth files, this checkout's editable
    # install among them, are not read); linflow itself only from the wheel
    deps = [p for p in site.getsitepackages() + [sysconfig.get_path("purelib")] if Path(p).is_dir()]
    (purelib / "deps.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--quiet", wheel],
        check=True,
        timeout=600,
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONPATH")}
    where = subprocess.check_output(
        [python, "-c", "import sweep, cli, analysis.studies as s; print(sweep.__file__); print(*s.names())"],
        text=True,
        cwd=tmp_path,
        env=env,
    ).split("\n")
    assert Path(where[0]).is_relative_to(purelib), where  # the wheel's copy, not this checkout
    assert "eftekhari2020" in where[1].split()
    linflow = venv / "bin" / "linflow"
    listed = subprocess.run([linflow, "reproduce", "--list"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert listed.returncode == 0 and "eftekhari2020" in listed.stdout, listed.stdout + listed.stderr
    out = tmp_path / "s.zarr"
    small = ["--dx", "3", "--m", "12", "--depth", "1,2", "--width", "3", "--seed", "0:2", "--checkpoints", "5"]
    r = subprocess.run(
        [linflow, "run", *small, "--horizon", "2", "--workers", "1", "--out", out, "--json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["cells_run"] == 4
