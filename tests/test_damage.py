"""A damaged store never passes for a complete one: chunks lost (a partial copy) or torn (a truncated
file) in real stores made by the CLI — checked through `status` (plain and --verify), `export`,
`report` and `run`, whose resume recomputes the damaged cells to the very bits of an undamaged copy."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from typer.testing import CliRunner

from cli.main import app
from sweep import runner, store
from sweep import spec as specs

# 2 depths × 2 norms × 5 seeds in chunks of 4 seeds: 8 chunks per variable, 4 cells each but 1 in the
# chunks of seed 4; horizon long enough that both converged and unconverged cells are stored
SPEC = [
    "--depth",
    "1,3",
    "--width",
    "3",
    "--init-norm",
    "0.5,4",
    "--seed",
    "0:5",
    "--m",
    "20",
    "--dx",
    "4",
    "--dy",
    "1",
    "--horizon",
    "8",
    "--checkpoints",
    "21",
    "--batch",
    "4",
    "--quiet",
]
VARIABLES = [
    "loss",
    "excess_loss",
    "time_to_eps",
    "status",
    "steps",
    "rhs_evals",
    "w_init",
    "w_final",
    "imbalance",
    "imbalance_drift",
    "target",
    "x",
    "y",
    "time",
]


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def run(out):
    return cli("run", *SPEC, "--out", out)


@pytest.fixture(scope="module")
def reference(ray_local, tmp_path_factory):
    """One store made by the CLI, and its results in memory."""
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    r = run(out)
    assert r.exit_code == 0, r.output
    ds = xr.open_zarr(out).load()
    assert {1, 2} <= set(np.unique(ds.status.values))
    return out, ds


@pytest.fixture
def copy(reference, tmp_path):
    """A fresh copy of the reference store, as cp -r or rsync would make it."""
    out = tmp_path / "c.zarr"
    shutil.copytree(reference[0], out)
    return out


def chunk(store: Path, name: str, depth: int, norm: int, seed_chunk: int) -> Path:
    """The chunk file of variable ``name`` at grid chunk (depth, width 0, norm, seed_chunk)."""
    tail = {"loss": 1, "excess_loss": 1, "w_init": 2, "w_final": 2}.get(name, 0)
    return store.joinpath(name, "c", str(depth), "0", str(norm), str(seed_chunk), *["0"] * tail)


def same_bits(store: Path, ds: xr.Dataset):
    again = xr.open_zarr(store).load()
    for name in VARIABLES:
        assert np.array_equal(again[name].values, ds[name].values, equal_nan=True), name


def one_line(r, *words):
    assert r.exit_code == 2, r.output
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.output, r.stderr
    for w in words:
        assert w in r.stderr, (w, r.stderr)


# lost: rm of a chunk file (the case: loss of the 1-cell chunk at seed 4; w_final of a full
# chunk); torn: truncate -s 10; each with the cells it takes
LOST = {
    "loss missing": ([("loss", 0, 0, 1, "rm")], 1),
    "w_final missing": ([("w_final", 1, 1, 0, "rm")], 4),
    "steps torn": ([("steps", 1, 0, 0, 10)], 4),
    "loss and w_final torn, time_to_eps missing": (
        [("loss", 0, 1, 0, 10), ("w_final", 1, 0, 1, 10), ("time_to_eps", 0, 0, 0, "rm")],
        9,
    ),
    "status torn": ([("status", 1, 1, 0, 5)], 4),
    "status missing": ([("status", 0, 1, 0, "rm")], 4),
}


def damage(store: Path, what):
    for name, d, n, s, how in what:
        f = chunk(store, name, d, n, s)
        assert f.is_file(), f
        if how == "rm":
            f.unlink()
        else:
            with open(f, "r+b") as fh:
                fh.truncate(how)


@pytest.mark.parametrize("case", list(LOST))
def test_damage_is_named_by_status_export_report_and_repaired_by_run(reference, copy, tmp_path, case):
    what, cells = LOST[case]
    damage(copy, what)
    names = {name for name, *_ in what}

    # plain status: a listing (and a decode of tiny files) finds it; never "complete"
    r = cli("status", copy)
    assert r.exit_code == 0, r.output
    assert "complete" not in r.stdout and "damaged: chunk " in r.stdout and "--verify" in r.stdout
    assert f"left: {cells} cells" in r.stdout
    info = json.loads(cli("status", copy, "--json").stdout)
    assert info["damaged_cells"] == cells and info["counts"]["pending"] == cells
    assert {c["chunk"].split("/")[0] for c in info["damaged_chunks"]} == names

    # export and report: one line naming the damage, no NaN rows standing for results
    out_csv = tmp_path / "c.csv"
    one_line(cli("export", copy, "--out", out_csv), "is damaged: chunk ", "status --verify")
    assert not out_csv.exists()
    one_line(cli("report", copy, "--out", tmp_path / "rep"), "is damaged: chunk ", "status --verify")

    # the rerun marks them pending, says how many, and recomputes them to the same bits
    r = run(copy)
    assert r.exit_code == 0, r.output
    warning = [line for line in r.stderr.splitlines() if "marked pending" in line]
    assert len(warning) == 1 and warning[0].startswith(f"linflow: warning: {cells} cells had missing or unreadable")
    assert all(n in warning[0] for n in names)
    assert f"{cells} cells computed" in r.stdout
    same_bits(copy, reference[1])
    assert "complete: no pending cells" in cli("status", copy, "--verify").stdout


@pytest.mark.parametrize("case", ["loss torn to half", "loss missing"])
def test_verify_marks_the_damaged_cells_pending_then_export_shows_them_pending(reference, copy, tmp_path, case):
    if case == "loss missing":
        damage(copy, [("loss", 0, 0, 1, "rm")])
        cells = 1
    else:  # torn to half its size: only a decode finds it (the plain listing does not)
        f = chunk(copy, "loss", 1, 0, 0)
        with open(f, "r+b") as fh:
            fh.truncate(f.stat().st_size // 2)
        cells = 4
        assert "complete: no pending cells" in cli("status", copy).stdout
        one_line(cli("export", copy, "--out", tmp_path / "x.csv"), "is damaged: chunk loss/c/1/0/0/0/0 is unreadable")

    r = cli("status", copy, "--verify")
    assert r.exit_code == 0, r.output
    assert (
        r.stderr.startswith(f"linflow: warning: {cells} cells had missing or unreadable chunks")
        and r.stderr.count("\n") == 1
    )
    assert f"left: {cells} cells" in r.stdout
    assert cli("status", copy, "--verify").stderr == ""  # marked: nothing damaged any more

    # export now works: the damaged cells are rows marked pending, with no numbers
    r = cli("export", copy, "--out", tmp_path / "c.csv")
    assert r.exit_code == 0, r.output
    import pandas as pd

    df = pd.read_csv(tmp_path / "c.csv")
    assert (df.status == "pending").sum() == cells
    assert df[df.status != "pending"].final_loss.notna().all()
    assert df[df.status == "pending"].final_loss.isna().all()

    r = run(copy)
    assert r.exit_code == 0 and f"{cells} cells computed" in r.stdout, r.output
    assert "marked pending" not in r.stderr
    same_bits(copy, reference[1])


def test_an_undamaged_copy_passes_every_check_untouched(reference, copy):
    r = cli("status", copy, "--verify")
    assert r.exit_code == 0 and r.stderr == "" and "complete: no pending cells" in r.stdout, r.output
    info = json.loads(cli("status", copy, "--json").stdout)
    assert info["damaged_cells"] == 0 and info["damaged_chunks"] == []
    r = run(copy)
    assert r.exit_code == 0 and "0 cells computed" in r.stdout and r.stderr == "", r.output
    same_bits(copy, reference[1])


def test_pending_cells_hold_no_chunks_and_that_is_not_damage(reference, tmp_path):
    """A batch never written has no chunks (they read as fill values): normal for pending cells."""
    out = tmp_path / "p.zarr"
    shutil.copytree(reference[0], out)
    for name in ("status", "loss", "w_final"):  # one chunk back to pending, as an interrupted run leaves it
        chunk(out, name, 1, 1, 1).unlink()
    r = cli("status", out, "--verify")
    assert r.exit_code == 0 and r.stderr == "" and "left: 1 cells in 1 batches" in r.stdout, r.output
    r = run(out)
    assert r.exit_code == 0 and "1 cells computed" in r.stdout and "marked pending" not in r.stderr, r.output
    same_bits(out, reference[1])


BAD_ROOT = {
    "truncated JSON": lambda text: text[: len(text) // 3],
    "a JSON list": lambda text: "[1, 2]",
    "attributes a list": lambda text: json.dumps({**json.loads(text), "attributes": [1]}),
    "node type array": lambda text: json.dumps({**json.loads(text), "node_type": "array"}),
}


@pytest.mark.parametrize("case", list(BAD_ROOT))
def test_malformed_root_metadata_is_one_line_for_every_command(reference, copy, tmp_path, case):
    meta = copy / "zarr.json"
    meta.write_text(BAD_ROOT[case](meta.read_text()))
    for args in (
        ("status", copy),
        ("status", copy, "--verify"),
        ("status", copy, "--json"),
        ("export", copy, "--out", tmp_path / "c.csv"),
        ("report", copy, "--out", tmp_path / "rep"),
        ("run", *SPEC, "--out", copy),
    ):
        one_line(cli(*args), "is damaged", "zarr.json")


@pytest.mark.parametrize("failures", ["[{", '{"cell": 1}', '[{"cell": {"seed": 0}, "error": "x"}]', "[1]"])
def test_malformed_failures_attribute_is_one_line_for_every_command(reference, copy, tmp_path, failures):
    zarr.open_group(str(copy), mode="r+").attrs["failures"] = failures
    for args in (
        ("status", copy),
        ("status", copy, "--verify"),
        ("export", copy, "--out", tmp_path / "c.csv"),
        ("report", copy, "--out", tmp_path / "rep"),
        ("run", *SPEC, "--out", copy),
    ):
        one_line(cli(*args), "is damaged", '"failures" attribute')


def test_a_notebook_run_warns_of_the_damage_it_repairs_and_prints_nothing(reference, copy, capfd):
    """The library says what is worth a line through warnings (only the CLI prints): a rerun in-process on a
    damaged store warns once with the count, writes nothing to stdout or stderr, and repairs to the same bits."""
    damage(copy, LOST["w_final missing"][0])
    spec = specs.parse(store.stored_spec(copy))
    with pytest.warns(RuntimeWarning, match=r"^4 cells had missing or unreadable chunks \(w_final\); marked pending"):
        report = runner.run(spec, copy)
    assert report.cells_run == 4
    out, err = capfd.readouterr()
    assert "linflow" not in out + err and "marked pending" not in out + err
    same_bits(copy, reference[1])


def test_linflow_writes_whole_chunks_with_zarrs_own_bytes(reference, tmp_path):
    """The driver writes a batch's whole chunks itself (sweep.store.chunks._write_direct: bytes + zstd, through
    Zarr's atomic write), ten times cheaper than through Zarr: every chunk file it writes holds Zarr's bytes, and
    the chunks at the grid's edge (seed 4 alone in its chunk) are left to Zarr."""
    from sweep.store.chunks import _write_direct, layout, regions, results_of, write_batch

    ours, zarrs = tmp_path / "ours.zarr", tmp_path / "zarrs.zarr"
    shutil.copytree(reference[0], ours)
    shutil.copytree(reference[0], zarrs)
    a, b = zarr.open_group(ours, mode="r+"), zarr.open_group(zarrs, mode="r+")
    shape, chunks = layout(a)
    direct = 0
    for k, region in enumerate(regions(shape, chunks)):
        values = {name: a[name][region] for name in results_of(a)}
        for v in values.values():
            if v.dtype.kind == "f":
                v += 0.25 + k  # new values, NaN stays NaN
        write_batch(a, region, values)
        for name, v in values.items():
            b[name].with_config({"write_empty_chunks": True})[region] = v
        edge = region[-1].stop - region[-1].start < chunks[-1]
        direct += _write_direct(a["loss"], str(ours), region, values["loss"])
        assert edge == (not _write_direct(a["status"], str(ours), region, values["status"]))
    assert direct == 4, "the whole chunks of the 2 × 2 × 2 grid of chunks"
    whole = next(r for r in regions(shape, chunks) if r[-1].stop - r[-1].start == chunks[-1])
    read_only = zarr.open_group(ours, mode="r")
    assert not _write_direct(read_only["loss"], str(ours), whole, a["loss"][whole]), "Zarr's read-only mode holds"
    files = sorted(p.relative_to(ours) for n in results_of(a) for p in (ours / n).rglob("*") if p.is_file())
    files = [f for f in files if f.name != "zarr.json"]
    assert len(files) == 8 * len(results_of(a)) and not list(ours.rglob("*.partial"))
    for f in files:
        assert (ours / f).read_bytes() == (zarrs / f).read_bytes(), f
    same_bits(ours, xr.open_zarr(zarrs).load())
