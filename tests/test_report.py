"""`linflow report` and `linflow export --theory` stand on every store `linflow run` writes.

A corpus of real stores, made by the real CLI on a real local Ray instance: long horizons, dy = 1 and
dy = 3, balanced and Gaussian starts, every model, every status (diverged from a too-large Euler
step, failed through the test hook, pending from an interrupted run), one cell, one seed, an
init_angle axis with 0 and π. Each one is reported through the CLI: exit 0, a report that says why a
number is missing instead of a traceback, figures that open, and no warning on the terminal."""

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml
from faults import fault_env
from matplotlib.image import imread
from typer.testing import CliRunner

from analysis import theory
from cli.main import app
from sweep import batch, cluster, runner, store
from sweep import spec as specs

FAIL_SEED = 7  # cells with this seed fail (the test hook of tests/faults), in the stores that have it
PI = "3.141592653589793"
COMMON = ["--checkpoints", "21", "--quiet"]

# name: flags of `linflow run` (the store "pending" is an interrupted run, laid out below)
CORPUS = {
    "issue 8": ["--depth", "2:5", "--seed", "0:2", "--init-norm", "1", "--horizon", "100"],
    "long horizon": ["--depth", "1,3", "--init-norm", "0.5,4", "--seed", "0:3", "--horizon", "1000"],
    "dy 3 gaussian long": [
        "--dy",
        "3",
        "--init",
        "gaussian",
        "--depth",
        "2,3",
        "--width",
        "3",
        "--seed",
        "0:3",
        "--horizon",
        "1000",
    ],
    "dy 3 induced": [
        "--dy",
        "3",
        "--model",
        "induced",
        "--depth",
        "1,2,4",
        "--init-norm",
        "0.3,3",
        "--seed",
        "0:2",
        "--horizon",
        "50",
    ],
    "dy 1 gaussian": [
        "--init",
        "gaussian",
        "--depth",
        "2,3",
        "--init-norm",
        "0.5,2",
        "--seed",
        "0:3",
        "--horizon",
        "20",
    ],
    "exact long": ["--model", "exact", "--depth", "1:5", "--seed", "0:2", "--horizon", "1000"],
    "exact angles": [
        "--model",
        "exact",
        "--depth",
        "1:4",
        "--init-angle",
        f"0,1.5,{PI}",
        "--seed",
        "0",
        "--horizon",
        "100",
    ],
    "three swept axes": [
        "--model",
        "induced",
        "--depth",
        "1:4",
        "--init-norm",
        "0.5,2",
        "--init-angle",
        f"0,1.5,{PI}",
        "--seed",
        "0:2",
        "--horizon",
        "30",
    ],
    "anti-aligned long": [
        "--model",
        "induced",
        "--depth",
        "2,3",
        "--init-angle",
        PI,
        "--seed",
        "0",
        "--horizon",
        "100",
    ],
    "diverged": [
        "--method",
        "euler",
        "--step",
        "0.5",
        "--depth",
        "2,3",
        "--init-norm",
        "0.5,20",
        "--seed",
        "0:2",
        "--horizon",
        "5",
    ],
    "some failed": [
        "--depth",
        "2,3",
        "--init-norm",
        "0.5,2",
        "--seed",
        f"{FAIL_SEED - 1}:{FAIL_SEED + 2}",
        "--horizon",
        "10",
    ],
    "all failed": ["--depth", "2", "--seed", str(FAIL_SEED), "--horizon", "10"],
    "single cell": ["--depth", "3", "--seed", "0", "--horizon", "10"],
    "single cell dy 3 width 1": ["--dy", "3", "--depth", "2", "--width", "1", "--seed", "0", "--horizon", "10"],
    "one seed": ["--depth", "1:4", "--init-norm", "0.5,2,8", "--seed", "0", "--horizon", "50"],
}
PENDING = {
    "axes": {"depth": [1, 3], "width": [5], "init_norm": [1.0, 3.0], "seed": {"start": 0, "stop": 4}},
    "horizon": 10.0,
    "checkpoints": {"count": 21},
    "batch": 2,
}


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def interrupted_run(raw: dict, out: Path, batches: int):
    """A store as an interrupted `linflow run` leaves it: laid out whole, only the first ``batches``
    batches written (through the runner's own checks and the store's writer), the rest pending."""
    s = specs.parse(raw)
    problem, fingerprint, *_ = runner.prepare(s, out)
    store.create(out, s, problem, fingerprint)
    group = store.open_group(out, mode="r+")
    for region, mask in store.todo(group)[:batches]:
        store.write_batch(group, region, batch.run_batch(s, problem, region, mask), mask)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """name → store path, every store made by `linflow run` on one local Ray instance whose workers
    fail the cells of seed FAIL_SEED (the hook is loaded from the environment Ray starts with)."""
    import ray

    root = tmp_path_factory.mktemp("corpus")
    faults = fault_env(fail_seed=FAIL_SEED)
    saved = {k: os.environ.get(k) for k in faults}
    os.environ.update(faults)
    try:
        cluster.connect(workers=2)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k)
            else:
                os.environ[k] = v
    paths = {}
    try:
        for name, flags in CORPUS.items():
            out = root / (name.replace(" ", "_") + ".zarr")
            r = cli("run", *flags, *COMMON, "--out", out)
            assert r.exit_code in (0, 1) and "Traceback" not in r.output, (name, r.output)  # 1: cells failed
            paths[name] = out
        paths["pending"] = root / "pending.zarr"
        interrupted_run(PENDING, paths["pending"], batches=3)
        yield paths
    finally:
        ray.shutdown()


def statuses(path) -> set:
    return set(np.unique(xr.open_zarr(path).status.values).tolist())


def test_the_corpus_has_every_status(corpus):
    assert set().union(*(statuses(p) for p in corpus.values())) == {0, 1, 2, 3, 4}
    assert statuses(corpus["pending"]) >= {0, 1} and statuses(corpus["some failed"]) >= {1, 4}
    assert statuses(corpus["all failed"]) == {4} and 3 in statuses(corpus["diverged"])


def report(path, out):
    """`linflow report` in this process; (result, report text, warnings it raised)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = cli("report", path, "--out", out)
    # ResourceWarning comes from the garbage collector closing files of earlier code (Ray, other tests)
    # whenever it happens to run; Python never shows it to a user by default
    leaked = [
        f"{w.category.__name__}: {w.message}"
        for w in caught
        if not issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning, ResourceWarning))
    ]
    text = (out / "report.md").read_text() if (out / "report.md").exists() else ""
    return r, text, leaked


@pytest.fixture(scope="module")
def reports(corpus, tmp_path_factory):
    """name → (CLI result, report text, warnings, report folder), each store reported once."""
    root = tmp_path_factory.mktemp("reports")
    made = {}

    def get(name):
        if name not in made:
            out = root / name.replace(" ", "_")
            made[name] = (*report(corpus[name], out), out)
        return made[name]

    return get


@pytest.mark.parametrize("name", [*CORPUS, "pending"])
def test_report_stands_on_every_store(corpus, reports, name):
    r, text, leaked, folder = reports(name)
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output and not leaked, leaked
    for heading in (
        "## Status",
        "## Where the runs ended",
        "## Time to ε",
        "## Theory agreement",
        "## Bounds",
        "## What could not be computed",
        "## Figures",
    ):
        assert heading in text
    assert not re.search(r"figure \S+ not drawn", text)  # no figure failed
    pngs = sorted(folder.glob("*.png"))
    assert {f"]({p.name})" in text for p in pngs} <= {True}
    if statuses(corpus[name]) == {4}:
        assert not pngs and "excess loss figure: no cell has results" in text
    else:
        assert "excess_vs_time.png" in {p.name for p in pngs}
    for p in pngs:
        image = imread(p)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300, (p.name, image.shape)
        assert image[..., :3].std() > 0.01, p.name  # not blank


@pytest.mark.parametrize("name", [*CORPUS, "pending"])
def test_export_with_theory_stands_on_every_store(corpus, tmp_path, name):
    out = tmp_path / "cells.csv"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = cli("export", corpus[name], "--theory", "--out", out)
    assert r.exit_code == 0, r.output
    assert not [w for w in caught if not issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning))]
    df = pd.read_csv(out, keep_default_na=False)
    ds = xr.open_zarr(corpus[name])
    assert len(df) == ds.status.size
    no_start = df.status.isin(["pending", "failed"])
    assert (df.theory_note[no_start].str.startswith("cell ")).all()
    assert (df.limit_class[no_start] == "unknown").all()
    # a theory value is missing only with a reason: the cell's note, or (dy ≠ 1, Gaussian) the store's
    if ds.sizes["out"] == 1 and yaml.safe_load(ds.attrs["spec"])["init"]["scheme"] == "balanced":
        assert (df.theory_note[df.theory_time_to_eps == ""] != "").all()


def section(text, heading):
    return text.split(heading, 1)[1].split("\n## ", 1)[0]


def test_report_says_why_a_number_is_missing(reports):
    texts = {}
    for name in ("dy 3 induced", "dy 1 gaussian", "one seed", "some failed", "all failed", "pending", "single cell"):
        r, texts[name], _, _ = reports(name)
        assert r.exit_code == 0, r.output
    missing = {k: section(v, "## What could not be computed") for k, v in texts.items()}
    assert (
        "exact T_ε and the certificate bound (docs/theory.md §4–5): not defined for dy = 3" in missing["dy 3 induced"]
    )
    assert "not defined for Gaussian starts" in missing["dy 1 gaussian"]
    assert "exact curve" not in missing["dy 1 gaussian"]  # none is drawn for Gaussian starts: nothing to miss
    # one seed: the fits stand, each row says there is no interval
    fits = section(texts["one seed"], "## Scaling fits")
    rows = [line for line in fits.splitlines() if line.startswith("| depth=") or line.startswith("| init_norm=")]
    assert len(rows) == 3 + 3 and all("no CI: one seed" in row for row in rows)
    assert "**log T_ε vs depth** (no CI: one seed)" in fits
    # failed and pending cells: counted, the errors listed, and their theory missing for that reason
    assert "4 cells failed" in texts["some failed"] and "test hook: cells with seed 7 fail" in texts["some failed"]
    assert "cell failed: no start, no theory — 4 cells" in missing["some failed"]
    assert "cell failed: no start, no theory — 1 cell " in missing["all failed"]
    assert "no cell has results" in missing["all failed"]
    assert (
        "10 cells still pending" in texts["pending"]
        and "cell pending: no start, no theory — 10 cells" in missing["pending"]
    )
    # one cell: no fits, nothing pooled, the theory complete
    assert "## Scaling fits" not in texts["single cell"] and "Every theory value was computed." in texts["single cell"]


def test_report_lists_an_escape_from_a_strict_saddle_apart(reports):
    # π from Z: the exact flow ends at zero; at depth 2 zero is a strict saddle and the simulation
    # leaves it through round-off (reaching Z by t = 100); at depth 3 it is not strict and stays
    r, text, _, _ = reports("anti-aligned long")
    agree = section(text, "## Theory agreement")
    assert "2 cells compared, **0 disagree**, 1 left a strict saddle through round-off" in agree
    assert "| depth=2, width=5, init_norm=1, init_angle=3.14159, seed=0 | -1 | 0 |" in agree
    assert "Disagreements:" not in agree


def test_a_theory_computation_that_raises_is_caught_per_cell_and_said(corpus, tmp_path, monkeypatch):
    """Fault injection: the closed forms raise at depth 3 (as sweep/kernel/exact.py's did, with an
    OverflowError, on the issue's store). The other cells keep their theory; the report counts and
    names the cells and the error, and draws the excess-loss figure without that exact curve."""
    real_time, real_curve = theory.exact_time_to_eps, theory.exact_excess_loss

    def overflowing(real):
        def closed_form(depth, *args):
            if np.any(np.asarray(depth) == 3):
                raise OverflowError("(34, 'Numerical result out of range')")
            return real(depth, *args)

        return closed_form

    monkeypatch.setattr(theory, "exact_time_to_eps", overflowing(real_time))
    monkeypatch.setattr(theory, "exact_excess_loss", overflowing(real_curve))
    r, text, leaked = report(corpus["issue 8"], tmp_path / "rep")
    assert r.exit_code == 0 and not leaked, r.output
    missing = section(text, "## What could not be computed")
    assert (
        "theory raised OverflowError: (34, 'Numerical result out of range') — 2 cells "
        "(depth=3, width=5, init_norm=1, seed=0; depth=3, width=5, init_norm=1, seed=1)"
    ) in missing
    assert "exact curve for N = 3 not drawn: the closed form raised OverflowError" in missing
    assert "over 4 cells" in section(text, "## Bounds")  # depths 2 and 4 keep their exact T_ε
    assert imread(tmp_path / "rep" / "excess_vs_time.png").shape[0] > 200
    r = cli("export", corpus["issue 8"], "--theory", "--out", tmp_path / "cells.csv")
    df = pd.read_csv(tmp_path / "cells.csv", keep_default_na=False)
    assert r.exit_code == 0 and (df.theory_note != "").sum() == 2
    assert (df[df.depth == 3].theory_limit == -2).all() and (df[df.depth != 3].theory_limit == 0).all()


def test_console_report_prints_one_line_and_no_warning(corpus, tmp_path):
    """The issue's command as a user types it: `linflow report` on the issue's store, stderr empty."""
    linflow = Path(sys.executable).parent / "linflow"
    proc = subprocess.run(
        [str(linflow), "report", str(corpus["issue 8"]), "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.strip() == f"wrote {tmp_path / 'r' / 'report.md'} (6 of 6 cells done)"
