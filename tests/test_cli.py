"""The CLI end to end on a real local Ray instance into real Zarr stores."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
import zarr
from scipy.integrate import solve_ivp
from typer.testing import CliRunner

from cli.main import app
from sweep import schema, store

ROOT = Path(__file__).resolve().parents[1]
SMALL = {
    "problem": {"m": 20, "dx": 4, "dy": 1, "seed": 2},
    "axes": {"depth": [1, 3], "width": [3], "init_norm": [0.5, 4.0], "seed": {"start": 0, "stop": 5}},
    "integrator": {"method": "dopri5", "rtol": 1e-10, "atol": 1e-13},
    "horizon": 8.0,
    "eps": 1e-6,
    "checkpoints": {"count": 21, "spacing": "log"},
    "batch": 4,
}
CONTRACT = [*schema.stored(), "target", "x", "y"]  # every result variable, and the problem's data


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def write_spec(path, **changes):
    spec = {**SMALL, **changes}
    path.write_text(yaml.safe_dump(spec))
    return path


def tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")):
        if f.is_file():
            h.update(str(f.relative_to(path)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def assert_same_results(a: xr.Dataset, b: xr.Dataset):
    for name in CONTRACT + ["time"]:
        assert np.array_equal(a[name].values, b[name].values, equal_nan=True), name
    assert a.attrs["fingerprint"] == b.attrs["fingerprint"]


def test_run_writes_the_contract_dataset(ray_local, tmp_path):
    out = tmp_path / "s.zarr"
    r = cli("run", write_spec(tmp_path / "s.yaml"), "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    assert "20 cells computed" in r.stdout

    ds = xr.open_zarr(out)
    assert set(CONTRACT) <= set(ds.data_vars)
    assert ds.loss.dims == ("depth", "width", "init_norm", "seed", "checkpoint")
    assert ds.w_final.dims == ("depth", "width", "init_norm", "seed", "out", "in")
    assert ds.x.dims == ("in", "sample") and ds.y.dims == ("out", "sample")
    assert ds.time.dims == ("checkpoint",) and ds.time.values[0] == 0 and ds.time.values[-1] == 8.0
    assert ds.status.dtype == np.int8
    assert list(ds.status.attrs["flag_values"]) == [0, 1, 2, 3, 4]
    assert ds.status.attrs["flag_meanings"].split() == ["pending", "converged", "unconverged", "diverged", "failed"]
    for name in ds.variables:
        assert ds[name].attrs.get("long_name"), name
    assert yaml.safe_load(ds.attrs["spec"])["axes"]["depth"] == [1, 3]
    assert ds.attrs["linflow_version"] and len(ds.attrs["fingerprint"]) == 16

    # the numbers: norms at t = 0, loss = excess + L*, time_to_eps exactly where converged
    z = ds.target.values
    assert np.allclose(
        np.linalg.norm(ds.w_init.values, ord=2, axis=(-2, -1)),
        ds.init_norm.values[None, None, :, None] * np.linalg.norm(z, 2),
        rtol=1e-12,
    )
    floor = 0.5 * (np.sum(ds.y.values**2) - np.sum(z**2))  # rank Z = 1 ≤ r: L* is the data's residual
    assert np.allclose(ds.loss - ds.excess_loss, floor, rtol=1e-12)
    converged = ds.status.values == 1
    assert converged.any() and np.isfinite(ds.time_to_eps.values[converged]).all()
    assert np.isnan(ds.time_to_eps.values[~converged]).all()
    assert np.all(ds.status.values > 0) and np.all(ds.steps.values > 0)
    assert ds.imbalance.max() < 1e-12 and ds.imbalance_drift.max() < 1e-7

    # one cell against the polar form integrated by scipy
    cell = ds.isel(depth=1, width=0, init_norm=1, seed=3)
    w0, zeta = cell.w_init.values.ravel(), np.linalg.norm(z)
    n, p = 3, 2 - 2 / 3
    th0 = np.arccos(w0 @ z.ravel() / (np.linalg.norm(w0) * zeta))
    f = lambda t, s: [n * s[0] ** p * (zeta * np.cos(s[1]) - s[0]), -zeta * s[0] ** (p - 1) * np.sin(s[1])]
    sol = solve_ivp(
        f, (0, 8), [np.linalg.norm(w0), th0], t_eval=ds.time.values, method="DOP853", rtol=1e-13, atol=1e-16
    )
    ref = 0.5 * ((sol.y[0] - zeta * np.cos(sol.y[1])) ** 2 + zeta**2 * np.sin(sol.y[1]) ** 2)
    big = ref > 1e-8
    assert np.max(np.abs(cell.excess_loss.values[big] / ref[big] - 1)) < 1e-6


def test_status_reports_counts(ray_local, tmp_path):
    out = tmp_path / "s.zarr"
    assert cli("run", write_spec(tmp_path / "s.yaml"), "--out", out, "--quiet").exit_code == 0
    r = cli("status", out, "--json")
    info = json.loads(r.stdout)
    status = xr.open_zarr(out).status.values
    assert info["cells"] == 20 and info["pending_batches"] == 0
    assert info["counts"]["converged"] == int(np.sum(status == 1))
    assert info["counts"]["unconverged"] == int(np.sum(status == 2))
    text = cli("status", out).stdout
    assert "complete" in text and "converged" in text and "depth 2 × width 1 × init_norm 2 × seed 5" in text


def test_resume_computes_only_missing_cells(ray_local, tmp_path):
    out = tmp_path / "s.zarr"
    spec = write_spec(tmp_path / "s.yaml")
    assert cli("run", spec, "--out", out, "--quiet").exit_code == 0
    full = xr.open_zarr(out).load()

    # simulate an interrupted run: one batch back to pending (its numbers wiped), and a sentinel in a
    # done batch that a recomputation would overwrite
    group = zarr.open_group(str(out), mode="r+")
    wiped = (slice(1, 2), slice(0, 1), slice(0, 1), slice(0, 4))
    group["status"][wiped] = 0
    group["loss"][wiped] = np.nan
    group["rhs_evals"][0, 0, 0, 0] = -7
    r = cli("status", out)
    assert "left: 4 cells in 1 batches" in r.stdout

    r = cli("run", spec, "--out", out, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["cells_run"] == 4
    again = xr.open_zarr(out).load()
    assert again.rhs_evals.values[0, 0, 0, 0] == -7  # done cells were not recomputed
    again.rhs_evals.values[0, 0, 0, 0] = full.rhs_evals.values[0, 0, 0, 0]
    assert_same_results(again, full)

    r = cli("run", spec, "--out", out, "--json")  # nothing left: nothing computed
    assert json.loads(r.stdout)["cells_run"] == 0


def test_changed_spec_is_refused_and_store_untouched(ray_local, tmp_path):
    out = tmp_path / "s.zarr"
    spec = write_spec(tmp_path / "s.yaml")
    assert cli("run", spec, "--out", out, "--quiet").exit_code == 0
    before = tree_digest(out)
    r = cli("run", spec, "--out", out, "--eps", "1e-5")
    assert r.exit_code == 2
    assert r.stderr.count("\n") == 1 and "--out" in r.stderr and "different sweep" in r.stderr
    assert tree_digest(out) == before
    # execution settings are not part of the sweep: another batch size resumes the same store
    assert cli("run", spec, "--out", out, "--batch", "64", "--quiet").exit_code == 0


def test_batch_size_does_not_change_a_single_bit(ray_local, tmp_path):
    spec = write_spec(tmp_path / "s.yaml", axes={**SMALL["axes"], "seed": {"start": 0, "stop": 13}})
    for b in (7, 64):
        assert cli("run", spec, "--out", tmp_path / f"b{b}.zarr", "--batch", b, "--quiet").exit_code == 0
    a, b = xr.open_zarr(tmp_path / "b7.zarr").load(), xr.open_zarr(tmp_path / "b64.zarr").load()
    assert a.status.encoding["chunks"] != b.status.encoding["chunks"]
    assert_same_results(a, b)


def test_flags_alone_run_a_sweep(ray_local, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = cli(
        "run",
        "--depth",
        "2",
        "--seed",
        "0:3",
        "--init-norm",
        "1",
        "--method",
        "rk4",
        "--step",
        "1e-3",
        "--horizon",
        "1",
        "--quiet",
    )
    assert r.exit_code == 0, r.output
    ds = xr.open_zarr(tmp_path / "runs" / "sweep.zarr")
    assert ds.sizes["seed"] == 3 and ds.sizes["depth"] == 1
    assert np.all(ds.steps.values == 1000)
    assert yaml.safe_load(ds.attrs["spec"])["integrator"] == {"method": "rk4", "step": 1e-3}


def test_a_store_remembers_its_spec(ray_local, tmp_path):
    # flags alone against an existing store start from the store's own spec: no flags resume it, a flag that
    # changes a setting (not an axis growth) is refused with the store untouched
    out = tmp_path / "s.zarr"
    made = cli(
        "run",
        "--depth",
        "2",
        "--seed",
        "0:3",
        "--method",
        "rk4",
        "--step",
        "1e-3",
        "--horizon",
        "1",
        "--out",
        out,
        "--quiet",
    )
    assert made.exit_code == 0, made.output
    before = tree_digest(out)
    again = cli("run", "--out", out, "--quiet", "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout.strip().splitlines()[-1])["cells_run"] == 0
    same = cli("run", "--out", out, "--horizon", "1", "--quiet")  # a flag repeating the stored value
    assert same.exit_code == 0, same.output
    changed = cli("run", "--out", out, "--horizon", "2", "--quiet")
    assert changed.exit_code == 2 and "holds a different sweep" in changed.stderr
    assert tree_digest(out) == before


def test_out_that_is_not_a_store_is_refused(tmp_path):
    out = tmp_path / "notastore"
    out.mkdir()
    (out / "precious.txt").write_text("keep")
    r = cli("run", "--out", out, "--depth", "1")
    assert r.exit_code == 2 and "not a linflow store" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]
    assert cli("status", tmp_path / "absent.zarr").exit_code == 2


@pytest.mark.slow
def test_console_script_starts_its_own_local_ray(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = tmp_path / "q.zarr"
    spec = write_spec(tmp_path / "s.yaml", axes={"depth": [2], "width": [3], "init_norm": [1.0], "seed": [0, 1]})
    linflow = Path(sys.executable).parent / "linflow"
    proc = subprocess.run(
        [str(linflow), "run", str(spec), "--out", str(out), "--workers", "2"],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "2 cells computed" in proc.stdout
    assert store.counts(out)["pending"] == 0
    proc = subprocess.run(
        [str(linflow), "status", str(out)], check=False, capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0 and "complete" in proc.stdout


def test_layerwise_and_induced_sweeps_agree_for_balanced_starts(ray_local, tmp_path):
    # the induced flow (17) is exact for balanced starts: two models, one set of numbers
    changes = {
        "problem": {"m": 20, "dx": 4, "dy": 3, "seed": 1},
        "axes": {"depth": [2, 3], "width": [2, 4], "init_norm": [0.5, 3.0], "seed": [0, 1]},
    }
    for model in ("layerwise", "induced"):
        spec = write_spec(tmp_path / f"{model}.yaml", model=model, **changes)
        assert cli("run", spec, "--out", tmp_path / f"{model}.zarr", "--quiet").exit_code == 0
    lw, ind = (xr.open_zarr(tmp_path / f"{m}.zarr").load() for m in ("layerwise", "induced"))
    assert np.allclose(lw.w_init.values, ind.w_init.values, rtol=1e-13, atol=1e-15)
    scale = ind.excess_loss.isel(checkpoint=0)
    assert float((abs(lw.excess_loss - ind.excess_loss) / scale).max()) < 1e-8
    assert np.allclose(lw.w_final, ind.w_final, atol=1e-6)
    # width 2 < dy = 3: rank-2 products, L* includes the best rank-2 tail; the excess still goes to 0
    s = np.linalg.svd(lw.target.values, compute_uv=False)
    narrow = lw.sel(width=2)
    floor = 0.5 * (np.sum(lw.y.values**2) - np.sum(s[:2] ** 2))
    assert np.allclose(narrow.loss - narrow.excess_loss, floor, rtol=1e-12)
    assert float(narrow.excess_loss.isel(checkpoint=-1).min()) > -1e-9
    assert np.array_equal(lw.status.values, ind.status.values)


def test_blow_up_is_recorded_as_diverged(ray_local, tmp_path):
    # Euler is stable only for h·N·‖W‖^p ≲ 2: at init_norm 30 and h = 0.05 it blows up; a result, not a crash
    r = cli(
        "run",
        "--out",
        tmp_path / "d.zarr",
        "--depth",
        "3",
        "--init-norm",
        "0.5,30",
        "--seed",
        "0:2",
        "--method",
        "euler",
        "--step",
        "0.05",
        "--horizon",
        "5",
        "--json",
    )
    assert r.exit_code == 0, r.output
    ds = xr.open_zarr(tmp_path / "d.zarr")
    assert np.all(ds.status.sel(init_norm=30.0).values == 3)
    assert np.all(ds.status.sel(init_norm=0.5).values == 1)
    assert json.loads(r.stdout)["counts"]["diverged"] == 2


def test_init_angle_axis(ray_local, tmp_path):
    angles = [0.0, 1.0, 2.5]
    r = cli(
        "run",
        "--out",
        tmp_path / "a.zarr",
        "--depth",
        "2,4",
        "--init-angle",
        ",".join(map(str, angles)),
        "--seed",
        "0",
        "--model",
        "induced",
        "--horizon",
        "30",
        "--quiet",
    )
    assert r.exit_code == 0, r.output
    ds = xr.open_zarr(tmp_path / "a.zarr")
    assert ds.w_init.dims[:5] == ("depth", "width", "init_norm", "init_angle", "seed")
    w, z = ds.w_init.values[0, 0, 0, :, 0, 0, :], ds.target.values[0]
    cos = w @ z / (np.linalg.norm(w, axis=1) * np.linalg.norm(z))
    assert np.allclose(np.arccos(np.clip(cos, -1, 1)), angles, atol=1e-7)
    # angle 0 at init_norm 1 starts exactly at Z: converged at t = 0; wider angles take time
    t = ds.time_to_eps.values[:, 0, 0, :, 0]
    assert np.all(t[:, 0] == 0) and np.all(t[:, 1:] > 0) and np.all(ds.status.values == 1)


def test_report_writes_markdown_and_figures(ray_local, tmp_path):
    out = tmp_path / "s.zarr"
    assert cli("run", write_spec(tmp_path / "s.yaml"), "--out", out, "--quiet").exit_code == 0
    r = cli("report", out, "--out", tmp_path / "rep")
    assert r.exit_code == 0, r.output
    text = (tmp_path / "rep" / "report.md").read_text()
    for heading in (
        "## Status",
        "## Where the runs ended",
        "## Time to ε",
        "## Scaling fits",
        "## Theory agreement",
        "## Bounds",
    ):
        assert heading in text
    assert "**0 disagree**" in text
    pngs = sorted((tmp_path / "rep").glob("*.png"))
    assert {p.name for p in pngs} >= {
        "excess_vs_time.png",
        "time_to_eps_init_norm.png",
        "time_to_eps_depth.png",
        "convergence.png",
        "theory_scatter.png",
    }
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000
        assert f"]({p.name})" in text
    assert cli("report", tmp_path / "missing.zarr", "--out", tmp_path / "x").exit_code == 2


def test_reproduce_lists_its_studies_one_file_each():
    from analysis import studies

    r = cli("reproduce", "--list")
    assert r.exit_code == 0, r.output
    assert r.output.splitlines() == [f"{n}: {studies.get(n).TITLE}" for n in studies.names()]
    assert "eftekhari2020" in studies.names()
    for name in studies.names():  # what a study file must define
        study = studies.get(name)
        assert callable(study.specs_for) and callable(study.write) and callable(study.checks), name
        assert all(hasattr(s, "fingerprint") for s in study.specs_for(quick=True).values()), name


@pytest.mark.slow
def test_reproduce_eftekhari2020_quick(ray_local, tmp_path):
    out = tmp_path / "paper"
    r = cli("reproduce", "eftekhari2020", "--out", out, "--quick", "--quiet")
    assert r.exit_code == 0, r.output
    text = (out / "reproduce.md").read_text()
    assert "## Excess loss at t = 0.1" in text and "## Where depth helps" in text
    assert "## Checks" in text and "FAILED" not in text  # the study's checks hold (exit code 0 says so too)
    for png in ("excess_vs_time.png", "time_to_eps_vs_angle.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG" and (out / png).stat().st_size > 10_000
    euler = xr.open_zarr(out / "euler.zarr")
    assert np.all(euler.steps.values == 100_000) and np.all(euler.status.values > 0)
    # the paper's discretization against the exact closed form at t = 0.1 (rows of the table)
    from analysis.studies.eftekhari2020 import paper_table

    rows = paper_table(euler.load(), xr.open_zarr(out / "dopri5.zarr").load())
    assert len(rows) == 10 and max(abs(row[-1]) for row in rows) < 1e-4
    assert max(abs(row[4] / row[5] - 1) for row in rows) < 1e-8  # dopri5 against exact
    assert cli("reproduce", "smith1999", "--out", out).exit_code == 2


@pytest.mark.slow
def test_analysis_notebook_runs(ray_local, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    out = tmp_path / "s.zarr"
    assert cli("run", write_spec(tmp_path / "s.yaml"), "--out", out, "--quiet").exit_code == 0
    nb = nbformat.read(ROOT / "examples" / "analysis.ipynb", as_version=4)
    os.environ["LINFLOW_STORE"] = str(out)
    try:
        nbclient.NotebookClient(
            nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "examples")}}
        ).execute()
    finally:
        del os.environ["LINFLOW_STORE"]
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3


def test_export_csv_and_parquet_one_row_per_cell(ray_local, tmp_path):
    import pandas as pd

    import sweep

    out = tmp_path / "s.zarr"
    assert cli("run", write_spec(tmp_path / "s.yaml"), "--out", out, "--quiet").exit_code == 0
    ds = sweep.open_results(out).load()
    r = cli("export", out, "--theory")
    assert r.exit_code == 0, r.output
    df = pd.read_csv(tmp_path / "s.csv")
    assert len(df) == ds.status.size == 20
    assert list(df.columns[:4]) == ["depth", "width", "init_norm", "seed"]
    assert {"status", "time_to_eps", "final_loss", "final_excess_loss", "theory_time_to_eps", "limit_class"} <= set(
        df.columns
    )
    row = df[(df.depth == 3) & (df.init_norm == 4.0) & (df.seed == 2)].iloc[0]
    cell = ds.sel(depth=3, init_norm=4.0, seed=2).squeeze()
    assert row.time_to_eps == cell.time_to_eps.item() and row.final_loss == cell.loss.isel(checkpoint=-1).item()
    assert row.status == "converged" and row.limit_class == "global"
    assert abs(row.theory_time_to_eps / row.time_to_eps - 1) < 1e-6
    assert cli("export", out, "--format", "parquet", "--out", tmp_path / "s.parquet").exit_code == 0
    pq = pd.read_parquet(tmp_path / "s.parquet")
    assert len(pq) == 20 and "theory_time_to_eps" not in pq.columns
    assert cli("export", out, "--format", "xml").exit_code == 2


def test_run_on_a_data_file(ray_local, tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 40)) * np.array([[1.0], [3.0], [0.5], [2.0]]), rng.standard_normal((2, 40))
    np.savez(tmp_path / "data.npz", X=x, Y=y)
    r = cli(
        "run",
        "--data",
        tmp_path / "data.npz",
        "--depth",
        "2",
        "--width",
        "2",
        "--seed",
        "0:3",
        "--out",
        tmp_path / "d.zarr",
        "--quiet",
    )
    assert r.exit_code == 0, r.output
    ds = xr.open_zarr(tmp_path / "d.zarr")
    assert ds.attrs["data_whitened_by_linflow"] == 1
    assert np.allclose(ds.x.values @ ds.x.values.T, np.eye(4), atol=1e-12) and np.array_equal(ds.y.values, y)
    assert np.allclose(ds.target.values, y @ ds.x.values.T)
    s = np.linalg.svd(ds.target.values, compute_uv=False)  # width 2 = dy: full rank, L* the residual
    assert np.allclose(ds.loss - ds.excess_loss, 0.5 * (np.sum(y**2) - np.sum(s**2)), rtol=1e-12)
    assert np.all(ds.status.values == 1)


# a sweep of a few tiny cells (rk4, 100 steps, 5 checkpoints; dy = 1, so that init_angle can be an axis)
TINY = [
    *("--depth", "1", "--width", "2", "--init-norm", "0.5", "--seed", "0:2", "--m", "10", "--dx", "3"),
    *("--method", "rk4", "--step", "0.01", "--horizon", "1", "--checkpoints", "5"),
]


def test_status_prints_no_terminal_escapes_from_a_store(ray_local, tmp_path):
    out = tmp_path / "s.zarr"
    assert cli("run", *TINY, "--out", out, "--quiet").exit_code == 0
    cell = {"depth": 1, "width": 2, "init_norm": 0.5, "seed": "\x1b[31m0"}
    hostile = "\x1b[2J\x1b]0;pwned\x07boom\x9b6n\nnext line\x7f\x00"
    zarr.open_group(str(out), mode="r+").attrs["failures"] = json.dumps([{"cell": cell, "error": hostile}])
    r = cli("status", out)
    assert r.exit_code == 0, r.output
    assert not any(c in r.output for c in "\x1b\x07\x9b\x7f\x00"), repr(r.output)
    assert "boom" in r.output and "pwned" not in r.output
    assert [line for line in r.stdout.splitlines() if "boom" in line][0].endswith("boom next line")  # one line


def test_negative_zero_is_the_stored_zero(ray_local, tmp_path):
    out = tmp_path / "a.zarr"
    assert cli("run", *TINY, "--init-angle", "0.0", "--out", out, "--quiet").exit_code == 0
    r = cli("run", "--init-angle=-0.0,1.0", "--out", out, "--quiet")  # grows by the angle 1.0 only
    assert r.exit_code == 0 and "2 cells computed" in r.stdout, r.output
    angles = xr.open_zarr(out).init_angle.values
    assert list(angles) == [0.0, 1.0] and not np.signbit(angles[0])
    assert not np.signbit(store.stored_spec(out)["axes"]["init_angle"][0])
    r = cli("run", "--init-angle", "0.0,1.0", "--out", out, "--quiet")  # the same sweep: nothing to compute
    assert r.exit_code == 0 and "0 cells computed" in r.stdout, r.output


def test_a_yaml_seed_range_runs_as_its_flag_does(ray_local, tmp_path):
    spec = tmp_path / "r.yaml"
    spec.write_text(
        "problem: {m: 10, dx: 3}\naxes: {depth: [1], width: [2], init_norm: [0.5], seed: 1:20}\n"
        "integrator: {method: rk4, step: 0.01}\nhorizon: 1.0\ncheckpoints: {count: 5}\n"
    )
    r = cli("run", spec, "--out", tmp_path / "r.zarr", "--quiet")
    assert r.exit_code == 0 and "19 cells computed" in r.stdout, r.output  # YAML 1.1 read seed 1:20 as 80
    assert list(xr.open_zarr(tmp_path / "r.zarr").seed.values) == list(range(1, 20))
    flags = cli("run", *TINY, "--seed", "1:20", "--out", tmp_path / "r.zarr", "--quiet")  # the same sweep
    assert flags.exit_code == 0 and "0 cells computed" in flags.stdout, flags.output
