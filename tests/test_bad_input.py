"""The bad-input corpus: every malformed spec or flag, impossible combination, oversized grid and
foreign store gives exit code 2, one line on stderr naming the field, no traceback — and no store is
created, nor an existing one changed (hashed before and after)."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from typer.testing import CliRunner

from cli.main import app

GOOD = {"axes": {"depth": [1, 2], "width": [3], "init_norm": [1.0], "seed": [0, 1]}, "horizon": 1.0}

# (id, spec text or None for the good spec, extra flags, words that must be in the one-line error)
CORPUS = [
    ("malformed yaml", "axes: {depth: [1, 2\n", [], "spec: malformed YAML"),
    ("not a mapping", "- depth\n- width\n", [], "must hold a mapping"),
    ("unknown top-level key", "horizen: 3\n", [], "horizen: unknown key"),
    ("unknown nested key", "integrator: {method: dopri5, rtol: 1.0e-8, atol: 1.0e-12, rtoll: 1}\n", [], "integrator.rtoll: unknown key"),
    ("unknown axis", "axes: {sed: [1]}\n", [], "axes.sed: unknown key"),
    ("depth < 1", "axes: {depth: [0]}\n", [], "axes.depth[0]: must be ≥ 1"),
    ("depth wrong type", "axes: {depth: [two]}\n", [], "axes.depth[0]: expected an integer"),
    ("depth not whole", "axes: {depth: [2.5]}\n", [], "axes.depth[0]: expected an integer"),
    ("width < 1", "axes: {width: [0]}\n", [], "axes.width[0]: must be ≥ 1"),
    ("init_norm zero", "axes: {init_norm: [0.0]}\n", [], "axes.init_norm[0]: must be > 0"),
    ("init_norm negative", "axes: {init_norm: [1.0, -1.0]}\n", [], "axes.init_norm[1]: must be > 0"),
    ("init_norm text", "axes: {init_norm: [big]}\n", [], "axes.init_norm[0]: expected a number"),
    ("init_norm infinite", "axes: {init_norm: [.inf]}\n", [], "axes.init_norm[0]: must be finite"),
    ("empty axis", "axes: {seed: []}\n", [], "axes.seed: is empty"),
    ("empty range", "axes: {seed: {start: 4, stop: 2}}\n", [], "axes.seed: is empty"),
    ("negative seed", "axes: {seed: [-1]}\n", [], "axes.seed[0]: must be ≥ 0"),
    ("duplicate in axis", "axes: {depth: [2, 3, 2]}\n", [], "axes.depth: value 2 appears twice"),
    ("angle beyond pi", "axes: {init_angle: [3.5]}\n", [], "axes.init_angle[0]: must be ≤ 3.14159"),
    ("angle for matrix target", "problem: {dy: 3}\naxes: {init_angle: [1.0]}\n", [], "axes.init_angle: is defined for vector targets"),
    ("angle with gaussian init", "init: {scheme: gaussian}\naxes: {init_angle: [1.0]}\n", [], "axes.init_angle: needs init.scheme: balanced"),
    ("induced with gaussian", "model: induced\ninit: {scheme: gaussian}\n", [], "model: the induced flow holds only for balanced"),
    ("unknown model", "model: end-to-end\n", [], "model: must be one of layerwise, induced"),
    ("negative step", "integrator: {method: euler, step: -1.0e-6}\n", [], "integrator.step: must be > 0"),
    ("euler without step", "integrator: {method: euler}\n", [], "integrator.step: method euler needs a fixed step"),
    ("dopri5 tolerance zero", "integrator: {method: dopri5, rtol: 0}\n", [], "integrator.rtol: must be > 0"),
    ("dopri5 with a step", "integrator: {method: dopri5, rtol: 1.0e-8, atol: 1.0e-12, step: 0.1}\n", [], "integrator.step: method dopri5 chooses its own steps"),
    ("rk4 with rtol", "integrator: {method: rk4, step: 0.01, rtol: 1.0e-6}\n", [], "integrator.rtol: not used by the fixed-step method rk4"),
    ("unknown method", "integrator: {method: rk45, rtol: 1.0e-6, atol: 1.0e-9}\n", [], "integrator.method: must be one of"),
    ("step longer than horizon", "integrator: {method: euler, step: 5.0}\nhorizon: 1.0\n", [], "integrator.step: is longer than the horizon"),
    ("too many steps", "integrator: {method: euler, step: 1.0e-12}\nhorizon: 10.0\n", [], "integrator.step: gives 1e+13 steps"),
    ("horizon zero", "horizon: 0\n", [], "horizon: must be > 0"),
    ("eps negative", "eps: -1.0e-6\n", [], "eps: must be > 0"),
    ("stop_at_eps not a bool", "stop_at_eps: yes please\n", [], "stop_at_eps: expected true or false"),
    ("one checkpoint", "checkpoints: {count: 1}\n", [], "checkpoints.count: must be ≥ 2"),
    ("unknown spacing", "checkpoints: {count: 5, spacing: cubic}\n", [], "checkpoints.spacing: must be one of log, linear"),
    ("log_start with linear", "checkpoints: {count: 5, spacing: linear, log_start: 0.1}\n", [], "checkpoints.log_start: only used with spacing: log"),
    ("batch zero", "batch: 0\n", [], "batch: must be ≥ 1"),
    ("m < dx", "problem: {m: 4, dx: 5}\n", [], "problem.m: needs m ≥ dx"),
    ("data file missing", "problem: {data: nowhere.npz}\n", [], "problem.data: no such file"),
    ("data wrong shapes", "problem: {data: shapes.npz}\n", [], "problem.data: X is 3×10 but Y is 1×9"),
    ("data not npz", "problem: {data: garbage.npz}\n", [], "problem.data: cannot read"),
    ("data with synthetic keys", "problem: {data: shapes.npz, m: 5}\n", [], "problem.m: unknown key"),
    ("grid too large for memory", "axes: {depth: [1], width: [1], init_norm: [1.0], seed: {start: 0, stop: 2000000}}\n", [], "axes: the grid has 2,000,000 cells"),
    ("batch too large for memory", "axes: {depth: [8], width: [200]}\nbatch: 60000\n", [], "batch: 60000 cells per task need"),
    ("flag: bad depth list", None, ["--depth", "2,x"], "--depth: expected integers"),
    ("flag: bad seed range", None, ["--seed", "a:b"], "--seed: expected integers"),
    ("flag: empty seed range", None, ["--seed", "5:1"], "axes.seed: is empty"),
    ("flag: init_norm negative", None, ["--init-norm", "-1"], "axes.init_norm[0]: must be > 0"),
    ("flag: negative step", None, ["--method", "euler", "--step", "-1e-3"], "integrator.step: must be > 0"),
    ("flag: dopri5 negative atol", None, ["--method", "dopri5", "--atol", "-1e-8"], "integrator.atol: must be > 0"),
    ("flag: euler with rtol", None, ["--method", "euler", "--step", "1e-3", "--rtol", "1e-8"], "integrator.rtol: not used"),
    ("flag: not a number", None, ["--horizon", "soon"], "'--horizon'"),
    ("flag: workers zero", None, ["--workers", "0"], "--workers: must be ≥ 1"),
    ("flag: unknown option", None, ["--bogus"], "--bogus"),
    ("flag: data with synthetic sizes", None, ["--data", "shapes.npz", "--m", "50"], "--data: cannot be combined with --m"),
    ("flag: unknown model", None, ["--model", "deep"], "model: must be one of"),
    ("flag: cluster not reachable", None, ["--address", "127.0.0.1:9"], "--address: cannot reach the Ray cluster"),
    ("flag: address not host:port", None, ["--address", "ray://nowhere"], "--address: expected HOST:PORT"),
]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.savez(tmp_path / "shapes.npz", X=np.ones((3, 10)), Y=np.ones((1, 9)))
    (tmp_path / "garbage.npz").write_bytes(b"not a zip file at all")
    return tmp_path


def digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")):
        h.update(str(f.relative_to(path)).encode())
        if f.is_file():
            h.update(f.read_bytes())
    return h.hexdigest()


def check_refused(r, words):
    assert r.exit_code == 2, r.output
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("linflow: error: "), r.stderr
    assert words in r.stderr, r.stderr
    assert "Traceback" not in r.output


def invoke(workdir, text, flags, out):
    args = ["run"]
    if text is not None:
        (workdir / "bad.yaml").write_text(text)
        args.append("bad.yaml")
    return CliRunner().invoke(app, [*args, "--out", str(out), *flags])


def test_corpus_is_large():
    assert len(CORPUS) >= 30


@pytest.mark.parametrize("name, text, flags, words", CORPUS, ids=[c[0] for c in CORPUS])
def test_bad_input_creates_nothing(workdir, name, text, flags, words):
    out = workdir / "new.zarr"
    check_refused(invoke(workdir, text, flags, out), words)
    assert not out.exists() and not Path(str(out) + ".lock").exists()
    assert sorted(p.name for p in workdir.iterdir()) == sorted(["shapes.npz", "garbage.npz"] + (["bad.yaml"] if text is not None else []))


@pytest.fixture(scope="module")
def existing_store(tmp_path_factory):
    """A real, finished store (made once) that no bad input may change."""
    import ray

    from sweep import runner
    from sweep import spec as specs

    root = tmp_path_factory.mktemp("existing")
    runner.connect(workers=2)
    try:
        runner.run(specs.parse(GOOD), root / "done.zarr")
    finally:
        ray.shutdown()
    return root / "done.zarr"


@pytest.mark.parametrize("name, text, flags, words", CORPUS[::4], ids=[c[0] for c in CORPUS[::4]])
def test_bad_input_leaves_an_existing_store_unchanged(workdir, existing_store, name, text, flags, words):
    before = digest(existing_store)
    if text is None:  # a bad flag on top of the store's own spec
        text = yaml.safe_dump(GOOD)
    check_refused(invoke(workdir, text, flags, existing_store), words)
    assert digest(existing_store) == before


def test_store_from_a_different_spec(workdir, existing_store):
    before = digest(existing_store)
    (workdir / "other.yaml").write_text(yaml.safe_dump({**GOOD, "horizon": 2.0}))
    r = CliRunner().invoke(app, ["run", "other.yaml", "--out", str(existing_store)])
    check_refused(r, "--out: ")
    assert "holds a different sweep" in r.stderr and digest(existing_store) == before


def test_store_made_by_another_program(workdir):
    foreign = workdir / "foreign.zarr"
    zarr.open_group(str(foreign), mode="w").create_array("a", shape=(3,), dtype="f8")
    before = digest(foreign)
    (workdir / "good.yaml").write_text(yaml.safe_dump(GOOD))
    for args in (["run", "good.yaml", "--out", str(foreign)], ["status", str(foreign)],
                 ["report", str(foreign), "--out", "rep"], ["export", str(foreign)]):
        r = CliRunner().invoke(app, args)
        check_refused(r, "not a linflow store")
    assert digest(foreign) == before and not (workdir / "rep").exists()


def test_folder_that_is_not_a_store(workdir):
    plain = workdir / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("keep me")
    (workdir / "good.yaml").write_text(yaml.safe_dump(GOOD))
    check_refused(CliRunner().invoke(app, ["run", "good.yaml", "--out", str(plain)]), "is not a linflow store")
    assert [p.name for p in plain.iterdir()] == ["notes.txt"]
