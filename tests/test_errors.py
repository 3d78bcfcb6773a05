"""Errors of the library, words of the command line: a notebook user calling the library sees fields
(``out``, ``address``, spec paths), the CLI alone turns them into flags and exit codes."""

import subprocess
import sys

import numpy as np
import pytest
import zarr

from sweep import cluster, problem, runner, store
from sweep import spec as specs
from sweep.errors import ClusterError, LinflowError, LockError, RayGone, SpecError, StoreError, StoreWriteError


def test_every_error_is_a_linflow_error_with_a_field_and_a_problem():
    for cls in (SpecError, StoreError, ClusterError):
        err = cls("out", "cannot create x")
        assert isinstance(err, LinflowError) and err.field == "out" and str(err) == "out: cannot create x"
    for cls in (LockError, StoreWriteError, RayGone):
        err = cls("the store is busy")
        assert isinstance(err, LinflowError) and err.field is None and str(err) == "the store is busy"
    assert isinstance(SpecError("axes", "x"), ValueError)  # code that caught ValueError still does


def test_the_library_speaks_of_out_not_of_a_flag(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(StoreError) as info:
        runner.prepare(specs.parse({}), tmp_path / "file" / "s.zarr")
    assert info.value.field == "out" and "--" not in str(info.value)
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "zarr.json").write_text("{}")
    with pytest.raises(StoreError, match="not a linflow store") as info:
        store.open_group(tmp_path / "plain")
    assert info.value.field == "out"


def test_the_library_speaks_of_address_not_of_a_flag():
    with pytest.raises(ClusterError) as info:
        cluster.check_address("not an address")
    assert info.value.field == "address" and "--address" not in str(info.value)


def test_the_cli_names_the_flag(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "run", "--out", str(tmp_path / "file" / "s.zarr")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"linflow: error: --out: cannot create {tmp_path / 'file' / 's.zarr'}: "
        f"{tmp_path / 'file'} is a file, not a folder"
    ]


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"horizon": 2.0}, "(horizon 1.0 → 2.0)"),
        ({"integrator": {"method": "rk4", "step": 1e-3}}, "(integrator.method dopri5 → rk4)"),
        ({"integrator": {"rtol": 1e-9}}, "(integrator.rtol 1e-08 → 1e-09)"),
        ({"problem": {"seed": 3}}, "(problem.seed 0 → 3)"),
        ({"axes": {"depth": [2], "seed": [0, 1]}}, "(axes.seed: 3 values → 2 (a store never loses values))"),
        ({"axes": {"depth": [2], "seed": [2, 1, 0]}}, "(axes.seed: value 0 at position 0 → 2 (a store grows only"),
        ({"axes": {"depth": [2], "seed": [0, 1, 2, 4, 3]}}, None),  # grows: not refused
        ({"axes": {"depth": [3, 2], "seed": {"start": 0, "stop": 3}}}, "(axes.depth: value 2 at position 0 → 3"),
        ({"axes": {"depth": [2], "seed": {"start": 0, "stop": 3}, "init_angle": [0.5]}}, "(axes.init_angle: added"),
        ({"horizon": 2.0, "axes": {"depth": [2, 3], "seed": [0, 1, 2]}}, "(horizon 1.0 → 2.0)"),  # not only axes
    ],
)
def test_a_different_sweep_is_refused_naming_what_differs(tmp_path, change, words):
    made = {"axes": {"depth": [2], "seed": {"start": 0, "stop": 3}}, "horizon": 1.0}
    s = specs.parse(made)
    p = problem.build(s.problem)
    store.create(tmp_path / "s.zarr", s, p, s.fingerprint(p.digest()))
    runner.prepare(specs.parse({**made, "batch": 7}), tmp_path / "s.zarr")  # an execution setting: the same sweep
    if words is None:
        assert runner.prepare(specs.parse({**made, **change}), tmp_path / "s.zarr").grows == {"seed": (3, 5)}
        return
    with pytest.raises(StoreError, match="holds a different sweep") as info:
        runner.prepare(specs.parse({**made, **change}), tmp_path / "s.zarr")
    assert words in str(info.value)


def test_what_only_the_fingerprint_sees_and_a_change_of_data_kind_are_refused(tmp_path):
    made = {"axes": {"depth": [2], "seed": [0, 1], "init_angle": [0.0]}, "horizon": 1.0}
    s = specs.parse(made)
    p = problem.build(s.problem)
    store.create(tmp_path / "s.zarr", s, p, s.fingerprint(p.digest()))
    same = runner.prepare(specs.parse({**made, "axes": {**made["axes"], "init_angle": [-0.0]}}), tmp_path / "s.zarr")
    assert same.exists and same.grows == {}  # -0.0 is 0.0: the same sweep, the same fingerprint
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="r+")
    group.update_attributes({"fingerprint": "0" * 16})  # a fingerprint its own spec does not give: other data
    with pytest.raises(StoreError, match=r"holds a different sweep \(the data\)"):
        runner.prepare(s, tmp_path / "s.zarr")
    group.update_attributes({"fingerprint": s.fingerprint(p.digest())})
    np.savez(tmp_path / "d.npz", X=p.x, Y=p.y)
    data = {**made, "problem": {"data": str(tmp_path / "d.npz")}}
    with pytest.raises(StoreError, match=r"\(problem: synthetic data → a data file\)"):
        runner.prepare(specs.parse(data), tmp_path / "s.zarr")
