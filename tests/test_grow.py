"""A store grows (issue 12): a spec whose axes extend the store's — each axis keeps its values in
their order, new values after them, nothing else differs — adds coordinates and pending cells, and
only the new cells are computed; anything else is refused naming the field, the store untouched.
Each grown store is compared bit for bit with the whole grid computed at once without Ray
(:func:`sweep.runner.run_local`), and a growth SIGKILLed at seeded random writes, and at each write of
the root's metadata (the fault LINFLOW_TEST_KILL_AT_WRITE of tests/faults/sitecustomize.py), leaves the
old or the new store, which the same command then finishes."""

import copy
import hashlib
import json
import shutil
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import xarray as xr
import yaml
import zarr
from faults import fault_env, reap
from faults import start as start_linflow
from reference import assert_identical
from typer.testing import CliRunner

from cli.main import app
from sweep import runner, store
from sweep import spec as specs
from sweep.problem import build
from sweep.schema import stored
from sweep.store.lock import lock_path

RESULTS = stored()  # the variables a store holds (no optional record)

# tiny cells (rk4, 100 steps, 5 checkpoints, dy = 1 so that init_angle can be an axis); batch 4: seed 0:5
# is cut into chunks of 2 to 4 seeds, none of which divides 5, so that the last old chunk is partial and
# shared with the first new seeds
BASE = {
    "problem": {"m": 10, "dx": 3, "dy": 1, "seed": 1},
    "axes": {"depth": [2], "width": [2], "init_norm": [0.5], "seed": {"start": 0, "stop": 5}},
    "integrator": {"method": "rk4", "step": 0.01},
    "horizon": 1.0,
    "checkpoints": {"count": 5},
    "batch": 4,
}


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def sweep_with(**axes) -> dict:
    """BASE with some axes replaced (None: without that axis)."""
    raw = copy.deepcopy(BASE)
    raw["axes"].update(axes)
    raw["axes"] = {k: v for k, v in raw["axes"].items() if v is not None}
    return raw


def make(out: Path, raw: dict) -> Path:
    """A finished store of the sweep ``raw``, made from a spec file beside it."""
    spec = out.with_suffix(".yaml")
    spec.write_text(yaml.safe_dump(raw))
    r = cli("run", spec, "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    assert store.counts(out)["pending"] == 0
    return out


def grow(out: Path, *args):
    """``linflow run [ARGS] --out OUT --json``: (its report, its stderr)."""
    r = cli("run", *args, "--out", out, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout.strip().splitlines()[-1]), r.stderr


def tree_digest(path: Path) -> dict:
    """Every file of a store: relative path → sha256 of its bytes."""
    return {
        str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest() for f in path.rglob("*") if f.is_file()
    }


def plain(attrs: dict) -> dict:
    return {k: np.asarray(v).tolist() if isinstance(v, (list, tuple, np.ndarray)) else v for k, v in attrs.items()}


def assert_bitwise(out: Path, raw: dict):
    """The whole store is what the sweep ``raw`` computed at once gives, bit for bit: every variable and
    coordinate (dtype, dims, shape, bytes, attrs) and the store's attrs (but the recorded failures)."""
    ref = runner.run_local(specs.parse(raw))
    ds = xr.open_zarr(out).load()
    assert set(ds.variables) == set(ref.variables)
    assert dict(ds.sizes) == dict(ref.sizes)
    for name in ref.variables:
        a, b = ds[name], ref[name]
        assert a.dims == b.dims and a.shape == b.shape and a.dtype == b.dtype, name
        assert a.values.tobytes() == b.values.tobytes(), name
        assert plain(a.attrs) == plain(b.attrs), name
    keep = lambda attrs: plain({k: v for k, v in attrs.items() if k != "failures"})
    assert keep(ds.attrs) == keep(ref.attrs)


def new_cells(line: str) -> int:
    """'depth 1 → 2, seed 5 → 9: 13 new cells' → 13."""
    return int(line.rsplit(": ", 1)[1].split()[0])


def tamper(out: Path, cell: tuple) -> int:
    """Set a done cell's rhs_evals to -7 (a recomputation would overwrite it); its true value."""
    group = zarr.open_group(str(out), mode="r+")
    true = int(group["rhs_evals"][cell])
    group["rhs_evals"][cell] = -7
    return true


def restore(out: Path, cell: tuple, value: int):
    zarr.open_group(str(out), mode="r+")["rhs_evals"][cell] = value


# ── growth along each axis, along two at once, in rounds ─────────────────────────────────────────────

# name: (the store's axes, the flags that grow it, its grown axes, the growth line)
ONE_AXIS = {
    "depth": ({}, ["--depth", "2,3"], {"depth": [2, 3]}, "depth 1 → 2: 5 new cells"),
    "width": ({}, ["--width", "2,3"], {"width": [2, 3]}, "width 1 → 2: 5 new cells"),
    # 5 values in chunks of at most 4 (batch 4, one seed) leave a partial edge chunk, which the new values share
    "init_norm": (
        {"init_norm": [0.5, 1.0, 2.0, 3.0, 4.0], "seed": [0]},
        ["--init-norm", "0.5,1,2,3,4,6,8"],
        {"init_norm": [0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0], "seed": [0]},
        "init_norm 5 → 7: 2 new cells",
    ),
    # seed 0:5 in chunks of at most 4: the same
    "seed": ({}, ["--seed", "0:9"], {"seed": {"start": 0, "stop": 9}}, "seed 5 → 9: 4 new cells"),
    "init_angle": (
        {"init_angle": [0.0, 0.5, 1.0, 1.5, 2.0], "seed": [0]},
        ["--init-angle", "0,0.5,1,1.5,2,2.5,3"],
        {"init_angle": [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0], "seed": [0]},
        "init_angle 5 → 7: 2 new cells",
    ),
    "depth and seed": (
        {},
        ["--seed", "0:9", "--depth", "2,3"],
        {"depth": [2, 3], "seed": {"start": 0, "stop": 9}},
        "depth 1 → 2, seed 5 → 9: 13 new cells",
    ),
}


SHARED_EDGE = {"init_norm", "seed", "init_angle", "depth and seed"}  # the new cells fill an old edge chunk


@pytest.mark.parametrize("case", list(ONE_AXIS))
def test_a_store_grows_along_its_axes_computing_only_the_new_cells(ray_local, tmp_path, case):
    axes, flags, grown, line = ONE_AXIS[case]
    out = make(tmp_path / "s.zarr", sweep_with(**axes))
    old, chunks = store.layout(store.open_group(out))
    # the last old cell (in the old edge chunk, which the new cells share when the axis is cut) and the first
    # hold a sentinel that a recomputation would overwrite
    cells = [tuple(n - 1 for n in old), (0,) * len(old)]
    true = [tamper(out, c) for c in cells]

    report, err = grow(out, *flags)

    assert err == f"linflow: growing {out}: {line}\n"
    assert report["grown"] == line and report["cells_run"] == new_cells(line)
    assert report["counts"]["pending"] == 0 and sum(report["counts"].values()) == np.prod(old) + new_cells(line)
    group = store.open_group(out)
    assert [group["rhs_evals"][c] for c in cells] == [-7, -7]  # the old cells were not recomputed
    shape = store.layout(group)[0]
    assert store.layout(group)[1] == chunks  # laid out as it was
    grew = [i for i, (a, b) in enumerate(zip(old, shape)) if a != b]
    assert any(old[i] % chunks[i] for i in grew) == (case in SHARED_EDGE)  # new cells in an old, partial chunk
    for c, v in zip(cells, true):
        restore(out, c, v)
    assert_bitwise(out, sweep_with(**grown))
    assert not lock_path(out).exists()


def test_a_store_grows_in_rounds(ray_local, tmp_path):
    # init_norm 0.5,1 × seed 0:2 in chunks of 2 × 2; seed 0:4 (whole chunks) → 0:7 with a new depth (an edge
    # chunk, seed [6:7]) → 0:8 with a new init_norm (the new seed shares that edge chunk)
    axes = {"init_norm": [0.5, 1.0], "seed": {"start": 0, "stop": 2}}
    out = make(tmp_path / "s.zarr", sweep_with(**axes))
    rounds = [
        (["--seed", "0:4"], {"seed": {"start": 0, "stop": 4}}, "seed 2 → 4: 4 new cells"),
        (
            ["--depth", "2,4", "--seed", "0:7"],
            {"depth": [2, 4], "seed": {"start": 0, "stop": 7}},
            "depth 1 → 2, seed 4 → 7: 20 new cells",
        ),
        (
            ["--seed", "0:8", "--init-norm", "0.5,1,3"],
            {"init_norm": [0.5, 1.0, 3.0], "seed": {"start": 0, "stop": 8}},
            "init_norm 2 → 3, seed 7 → 8: 20 new cells",
        ),
    ]
    for flags, changes, line in rounds:
        axes.update(changes)
        before = xr.open_zarr(out).load()
        report, err = grow(out, *flags)
        assert err == f"linflow: growing {out}: {line}\n"
        assert report["grown"] == line and report["cells_run"] == new_cells(line)
        assert report["counts"]["pending"] == 0
        after = xr.open_zarr(out).load()
        old = {d: slice(0, n) for d, n in before.status.sizes.items()}
        for name in RESULTS:  # the old cells, bit for bit as they were
            assert after[name].isel(old).values.tobytes() == before[name].values.tobytes(), (line, name)
        assert_bitwise(out, sweep_with(**axes))
    assert store.layout(store.open_group(out))[1] == (1, 1, 2, 2)  # the chunks the first store had


def test_a_store_grows_to_a_spec_file_that_extends_it(ray_local, tmp_path):
    # the file lists seeds the store holds as a range, adds a width and a seed, and takes another batch size
    # (an execution setting: never a difference)
    out = make(tmp_path / "s.zarr", sweep_with(seed={"start": 0, "stop": 5}))
    bigger = copy.deepcopy(BASE)
    bigger["axes"].update(width=[2, 5], seed=[0, 1, 2, 3, 4, 5])
    bigger["batch"] = 3
    spec = tmp_path / "bigger.yaml"
    spec.write_text(yaml.safe_dump(bigger))
    report, err = grow(out, spec)
    assert err == f"linflow: growing {out}: width 1 → 2, seed 5 → 6: 7 new cells\n"
    assert report["cells_run"] == 7 and report["grown"] == "width 1 → 2, seed 5 → 6: 7 new cells"
    assert yaml.safe_load(xr.open_zarr(out).attrs["spec"])["axes"]["seed"] == [0, 1, 2, 3, 4, 5]
    assert_bitwise(out, bigger)
    again, err = grow(out, spec)  # grown: the same file resumes it
    assert again["cells_run"] == 0 and again["grown"] == "" and err == ""


# ── what is refused ──────────────────────────────────────────────────────────────────────────────────


@pytest.fixture(scope="module")
def finished_once(ray_local, tmp_path_factory):
    """One finished store: depth 2,3 × init_norm 0.5,1 × seed 0:5."""
    return make(tmp_path_factory.mktemp("refused") / "s.zarr", sweep_with(depth=[2, 3], init_norm=[0.5, 1.0]))


@pytest.fixture
def finished(finished_once, tmp_path):
    """A copy of that store (a test that changes it changes no other test's), and its files."""
    out = tmp_path / "s.zarr"
    shutil.copytree(finished_once, out)
    return out, tree_digest(out)


REFUSED = {
    "removed value": (["--seed", "0:4"], "(axes.seed: 5 values → 4 (a store never loses values))"),
    "removed first value": (["--seed", "1:6"], "(axes.seed: value 0 at position 0 → 1 (a store grows only"),
    "reordered values": (["--depth", "3,2"], "(axes.depth: value 2 at position 0 → 3 (a store grows only"),
    "reordered, one new": (["--depth", "3,2,4"], "(axes.depth: value 2 at position 0 → 3 (a store grows only"),
    "changed value": (["--init-norm", "0.5,2,4"], "(axes.init_norm: value 1.0 at position 1 → 2.0 (a store grows"),
    "new value before the old": (["--seed", "5,0,1,2,3,4"], "(axes.seed: value 0 at position 0 → 5"),
    "new axis": (["--init-angle", "0,1", "--seed", "0:9"], "(axes.init_angle: added (a store grows only"),
    "horizon with grown axes": (["--horizon", "2", "--seed", "0:9", "--depth", "2,3,4"], "(horizon 1.0 → 2.0)"),
    "step with a grown axis": (["--step", "0.02", "--seed", "0:9"], "(integrator.step 0.01 → 0.02)"),
    "method with a grown axis": (
        ["--method", "euler", "--step", "0.01", "--seed", "0:9"],
        "(integrator.method rk4 → euler)",
    ),
    "checkpoints with a grown axis": (["--checkpoints", "6", "--seed", "0:9"], "(checkpoints.count 5 → 6)"),
    "eps with a grown axis": (["--eps", "1e-5", "--seed", "0:9"], "(eps 1e-06 → 1e-05)"),
    "model with a grown axis": (["--model", "induced", "--seed", "0:9"], "(model layerwise → induced)"),
    "problem with a grown axis": (["--problem-seed", "3", "--seed", "0:9"], "(problem.seed 1 → 3)"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_anything_but_an_extension_is_refused_naming_the_field(finished, case):
    out, files = finished
    flags, says = REFUSED[case]
    r = cli("run", "--out", out, *flags, "--json")
    assert r.exit_code == 2, r.output
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("linflow: error: --out: "), r.stderr
    assert f"{out} holds a different sweep {says}" in r.stderr, r.stderr
    assert r.stdout == ""
    assert tree_digest(out) == files  # byte for byte
    assert not lock_path(out).exists()


def test_a_spec_file_that_drops_an_axis_or_changes_a_setting_is_refused(ray_local, tmp_path):
    raw = sweep_with(init_angle=[0.0, 1.0], seed=[0, 1])
    out = make(tmp_path / "s.zarr", raw)
    files = tree_digest(out)
    for name, changed in [
        ("removed", sweep_with(seed=[0, 1, 2])),  # init_angle gone (and a seed added)
        ("horizon", {**sweep_with(init_angle=[0.0, 1.0, 2.0], seed=[0, 1]), "horizon": 3.0}),
    ]:
        spec = tmp_path / f"{name}.yaml"
        spec.write_text(yaml.safe_dump(changed))
        r = cli("run", spec, "--out", out)
        assert r.exit_code == 2 and r.stderr.count("\n") == 1, r.output
        says = "(axes.init_angle: removed (a store grows only" if name == "removed" else "(horizon 1.0 → 3.0)"
        assert says in r.stderr, r.stderr
        assert tree_digest(out) == files


@pytest.mark.parametrize(
    "flags",
    [[], ["--batch", "2"], ["--batch", "64", "--workers", "1"], ["--seed", "0:5", "--depth", "2,3"]],
    ids=["nothing", "batch", "batch and workers", "the same axes"],
)
def test_the_same_sweep_is_no_growth(finished, flags):
    out, files = finished
    report, err = grow(out, *flags)
    assert report["cells_run"] == 0 and report["grown"] == "" and err == ""
    assert tree_digest(out) == files


# ── SIGKILL at any write of a growth ─────────────────────────────────────────────────────────────────

KILL_FROM = sweep_with(depth=[1])  # 5 cells: 2 chunks of seeds
KILL_GROW = ["--depth", "1,2", "--seed", "0:9"]  # 13 new cells in 5 chunks, one of them the old edge chunk
KILL_TO = sweep_with(depth=[1, 2], seed={"start": 0, "stop": 9})
KILL_SEED = 20260412


def start(args, **extra):
    """``linflow`` with tests/faults on its PYTHONPATH, and ``extra`` (which faults) in its environment."""
    return start_linflow(args, **fault_env(), **extra)


def finish(proc, timeout=240) -> tuple[str, str]:
    """Wait for ``proc``, then end whatever it started and left (its session: Ray's processes)."""
    try:
        return proc.communicate(timeout=timeout)
    finally:
        reap(proc)


def writes(log: Path, out: Path) -> list[str]:
    """The files a run wrote (its write log), relative to the store."""
    root = out.resolve()
    return [str(Path(line).resolve().relative_to(root)) for line in log.read_text().splitlines()]


def is_chunk(key: str) -> bool:
    name, _, rest = key.partition("/")
    return name in RESULTS and rest.startswith("c/")


@pytest.fixture(scope="module")
def counted(ray_local, tmp_path_factory):
    """The store before the growth; the grown grid computed at once; and a whole growth run in a real
    `linflow` process with its writes logged (how many, and which file each one wrote)."""
    tmp = tmp_path_factory.mktemp("kill")
    base = make(tmp / "base.zarr", KILL_FROM)
    old, new = specs.parse(KILL_FROM), specs.parse(KILL_TO)
    data = build(old.problem).digest()
    out, log = tmp / "counted.zarr", tmp / "counted.log"
    shutil.copytree(base, out)
    proc = start(["run", "--out", out, *KILL_GROW, "--workers", "1", "--json"], LINFLOW_TEST_WRITE_LOG=str(log))
    stdout, err = finish(proc)
    keys = writes(log, out) if log.exists() else []
    first_chunk = next((i for i, k in enumerate(keys) if is_chunk(k)), len(keys))  # before it: metadata
    return SimpleNamespace(
        base=base,
        before=xr.open_zarr(base).load(),
        reference=runner.run_local(new),
        fingerprints={old.shape: old.fingerprint(data), new.shape: new.fingerprint(data)},
        old=old,
        new=new,
        run=(out, proc.returncode, stdout, err),
        keys=keys,
        meta=keys[:first_chunk],
        roots=[i + 1 for i, k in enumerate(keys[:first_chunk]) if k == "zarr.json"],  # 1-based, as K counts
    )


@pytest.mark.slow
def test_a_growth_in_a_real_process_writes_its_metadata_then_its_chunks(counted):
    out, code, stdout, err = counted.run
    assert code == 0, err
    assert err == f"linflow: growing {out}: depth 1 → 2, seed 5 → 9: 13 new cells\n"
    assert json.loads(stdout.strip().splitlines()[-1])["cells_run"] == 13
    assert_bitwise(out, KILL_TO)
    meta, chunks = counted.meta, counted.keys[len(counted.meta) :]
    assert len(chunks) == 5 * len(RESULTS) and all(is_chunk(k) for k in chunks)  # 5 chunks of every variable
    # the arrays' own metadata and the coordinates, then the root (its attrs, then its consolidated metadata)
    roots = counted.roots
    assert len(roots) >= 2 and roots[-1] == len(meta) and roots == list(range(roots[0], len(meta) + 1))
    assert {k.split("/")[0] for k in meta[: roots[0] - 1]} == {"depth", "seed", *RESULTS}  # not width, init_norm


def kill_at(k: int, counted, tmp_path: Path) -> str:
    """Grow a copy of the store in a `linflow` process SIGKILLed at its k-th write, check what is left, rerun
    the same command, and compare the result with the grid computed at once. What happened, in a few words."""
    out, log = tmp_path / f"k{k}.zarr", tmp_path / f"k{k}.log"
    shutil.copytree(counted.base, out)
    proc = start(
        ["run", "--out", out, *KILL_GROW, "--workers", "1", "--quiet"],
        LINFLOW_TEST_KILL_AT_WRITE=str(k),
        LINFLOW_TEST_WRITE_LOG=str(log),
    )
    _, err = finish(proc)
    assert proc.returncode == -signal.SIGKILL, err
    line = f"linflow: growing {out}: depth 1 → 2, seed 5 → 9: 13 new cells\n"
    assert err == (line if k > len(counted.meta) else ""), err  # said once the growth is committed
    torn = writes(log, out)
    assert len(torn) == k  # killed in its k-th write, the counted run's so far
    assert torn[:-1] == counted.keys[: k - 1] or k > len(counted.meta)  # (batches finish in any order)
    assert (k <= len(counted.meta)) == (not is_chunk(torn[-1])), torn[-1]
    assert list((out / torn[-1]).parent.glob("*.partial")), torn[-1]  # its half-written temporary, left

    # what readers see: the old grid or the new one, its spec and coordinates saying which, the old cells
    # as they were, the new cells pending or the reference's
    group = store.open_group(out)
    shape = store.layout(group)[0]
    assert shape in counted.fingerprints, shape
    stored = specs.parse(store.stored_spec(group))
    assert stored.shape == shape
    fingerprint = group.attrs["fingerprint"]
    assert json.loads(cli("status", out, "--json").stdout)["cells"] == np.prod(shape)
    ds = xr.open_zarr(out)
    assert tuple(ds.status.shape) == shape and yaml.safe_load(ds.attrs["spec"]) == store.stored_spec(group)
    assert ds.attrs["fingerprint"] == fingerprint
    for axis in stored.axes:
        assert np.array_equal(ds[axis].values, stored.values(axis)), axis
    ds = ds.load()
    old = {d: slice(0, n) for d, n in counted.before.status.sizes.items()}
    for name in RESULTS:
        assert ds[name].shape[: len(shape)] == shape, name
        assert ds[name].isel(old).values.tobytes() == counted.before[name].values.tobytes(), name
    done = ds.status.values != 0
    assert_identical(ds, counted.reference.isel({d: slice(0, n) for d, n in zip(ds.status.dims, shape)}), where=done)
    grown = shape == counted.new.shape
    pending = int((~done).sum()) + (0 if grown else 13)
    # the old grid until the root's new attrs are on disk (readers then see the arrays' own metadata)
    after_root = k > counted.roots[0]
    state = f"killed writing {torn[-1]}: {'new' if grown else 'old'} grid, fingerprint {fingerprint}"

    r = cli("run", "--out", out, *KILL_GROW, "--json")  # the same command finishes it
    assert r.exit_code == 0, f"{state}; rerun: {r.stderr.strip()}"
    assert fingerprint == counted.fingerprints[shape], f"{state}: the fingerprint of the other grid"
    assert grown == after_root, state
    assert json.loads(r.stdout.strip().splitlines()[-1])["cells_run"] == pending, state
    assert ("linflow: growing" in r.stderr) == (not grown), r.stderr
    assert_bitwise(out, KILL_TO)
    assert not lock_path(out).exists()
    assert not [f for d in [out, *out.iterdir()] if d.is_dir() for f in d.glob("*.partial")]  # metadata tidied
    return state


def kill_each(kills: list[int], counted, tmp_path: Path):
    """:func:`kill_at` for each of ``kills``; every one is tried, and the failures reported together."""
    failed = {}
    for k in kills:
        try:
            began = time.monotonic()
            state = kill_at(k, counted, tmp_path)
            print(f"K = {k}: {state}; finished by the same command ({time.monotonic() - began:.1f} s)")
        except AssertionError as exc:
            failed[k] = str(exc).splitlines()[0]
    assert not failed, failed


@pytest.mark.slow
def test_a_growth_killed_at_random_writes_leaves_the_old_or_the_new_store(counted, tmp_path):
    # seeded random writes of both phases; the root's own writes are each killed by the test below
    meta, total, roots = len(counted.meta), len(counted.keys), counted.roots
    assert roots and meta > 5 and total > meta + 5, counted.run[3]
    rng = np.random.default_rng(KILL_SEED)
    before_root = np.arange(1, roots[0])  # the arrays' metadata, the coordinates
    kills = sorted(
        int(k)
        for k in [
            *rng.choice(before_root, 3, replace=False),
            *rng.choice(np.arange(meta + 1, total + 1), 3, replace=False),  # the batches' chunks
        ]
    )
    print(f"{total} writes, {meta} of them metadata (the root's at {roots}); kills at {kills}")
    kill_each(kills, counted, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("which", [0, -1], ids=["attrs", "consolidation"])
def test_a_growth_killed_at_each_write_of_the_root_metadata_leaves_the_old_or_the_new_store(counted, tmp_path, which):
    # the moments a growth becomes visible: the root's attrs (spec, fingerprint), then its consolidated metadata
    assert len(counted.roots) == 2, counted.run[3]  # the attrs (spec and fingerprint at once), then consolidation
    kill_each([counted.roots[which]], counted, tmp_path)


@pytest.mark.slow
def test_a_growth_killed_before_its_commit_then_the_old_sweep_then_another_growth(counted, tmp_path):
    """Killed after the arrays' own metadata was grown (before the root's commit), then resumed with the
    store's own spec: the rerun shrinks the arrays' metadata back, so that even a reader of it (not of the
    consolidated metadata) sees one grid; a different growth then grows it right."""
    out = tmp_path / "k.zarr"
    shutil.copytree(counted.base, out)
    k = counted.roots[0] - 1  # the last write before the root's: the arrays' metadata and coordinates are grown
    proc = start(["run", "--out", out, *KILL_GROW, "--workers", "1", "--quiet"], LINFLOW_TEST_KILL_AT_WRITE=str(k))
    finish(proc)
    assert proc.returncode == -signal.SIGKILL
    own = zarr.open_group(str(out), mode="r", use_consolidated=False)
    assert own["status"].shape != counted.old.shape or own["seed"].shape != (5,)  # the arrays' own: grown
    r = cli("run", "--out", out, "--json")  # the store's own spec: nothing to compute, nothing grows
    assert r.exit_code == 0 and json.loads(r.stdout.strip().splitlines()[-1])["cells_run"] == 0, r.output
    own = zarr.open_group(str(out), mode="r", use_consolidated=False)
    assert {name: own[name].shape[:4] for name in RESULTS} == {name: counted.old.shape for name in RESULTS}
    assert own["seed"].shape == (5,) and own["depth"].shape == (1,)
    plain_reader = xr.open_zarr(out, consolidated=False).load()
    assert plain_reader.status.shape == counted.old.shape
    assert plain_reader.loss.values.tobytes() == counted.before.loss.values.tobytes()
    other = sweep_with(depth=[1, 3], seed={"start": 0, "stop": 7})  # another growth than the one killed
    r = cli("run", "--out", out, "--depth", "1,3", "--seed", "0:7", "--quiet")
    assert r.exit_code == 0 and "depth 1 → 2, seed 5 → 7: 9 new cells" in r.stderr, r.output
    assert_bitwise(out, other)


def _as_before_the_records(out: Path) -> None:
    """Make ``out`` a store as linflow wrote it before singular values were recorded: without those arrays and
    without the list of its variables (attribute ``results``)."""
    group = zarr.open_group(str(out), mode="r+", use_consolidated=False)
    for name in ("singular_values", "effective_rank", "reconstruction_error"):
        del group[name]
    attrs = dict(group.attrs)
    del attrs["results"]
    group.attrs.clear()
    group.attrs.update(attrs)
    zarr.consolidate_metadata(str(out), zarr_format=3)


def test_a_store_made_before_the_records_resumes_and_grows(ray_local, tmp_path):
    out = tmp_path / "old.zarr"
    make(out, sweep_with())
    before = xr.open_zarr(out).load()
    _as_before_the_records(out)
    pending = store.open_group(out, "r+")["status"]
    pending[..., 3:] = 0  # the last seeds of the old store still to compute
    report, _ = grow(out)  # resume
    assert report["cells_run"] == 2 and report["counts"]["pending"] == 0
    report, _ = grow(out, "--seed", "0:8")  # and grow
    assert report["cells_run"] == 3
    ds = xr.open_zarr(out)
    assert "singular_values" not in ds and "results" not in ds.attrs  # it keeps its own layout
    whole = runner.run_local(specs.parse(sweep_with(seed={"start": 0, "stop": 8})))
    for name in store.open_group(out).array_keys():
        if name in RESULTS:
            assert np.array_equal(ds[name].values, whole[name].values, equal_nan=True), name
    assert np.array_equal(ds.loss.values[..., :5, :], before.loss.values, equal_nan=True)
