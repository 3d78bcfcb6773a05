"""One schema: the store, the batches and the memory bounds all follow sweep.schema, and the statuses'
names and codes are the enum's."""

import numpy as np
import pytest

from sweep import batch, problem, schema, store
from sweep import spec as specs
from sweep.errors import StoreError
from sweep.schema import RESULTS, Status

RAW = {
    "axes": {"depth": [1, 2], "width": [3], "init_norm": [0.5, 2.0], "seed": {"start": 0, "stop": 3}},
    "problem": {"dx": 4, "dy": 2},
    "checkpoints": {"count": 5, "spacing": "linear"},
    "horizon": 0.5,
}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    s = specs.parse(RAW)
    p = problem.build(s.problem)
    path = tmp_path_factory.mktemp("schema") / "s.zarr"
    store.create(path, s, p, s.fingerprint(p.digest()))
    return s, p, store.open_results(path)


def test_the_store_lays_out_exactly_the_schema(made):
    s, p, ds = made
    assert set(ds.data_vars) == set(schema.stored()) | {"target", "x", "y"}
    assert ds.attrs["results"] == list(schema.stored())
    for name in schema.stored():
        var = RESULTS[name]
        da = ds[name]
        assert da.dims == tuple(s.axes) + var.tail, name
        assert da.dtype == np.dtype(var.dtype), name
        assert da.attrs["long_name"] == var.long_name and da.attrs.get("units", "") == var.units, name
        pending = da.values
        assert np.array_equal(pending, np.full(pending.shape, var.fill, dtype=var.dtype), equal_nan=True), name


def test_status_flags_come_from_the_enum(made):
    _, _, ds = made
    attrs = ds.status.attrs
    assert list(attrs["flag_values"]) == [0, 1, 2, 3, 4]
    assert attrs["flag_meanings"].split() == ["pending", "converged", "unconverged", "diverged", "failed"]
    assert [Status[n.upper()] for n in attrs["flag_meanings"].split()] == list(Status)
    assert Status.names(ds) == store.STATUS_NAMES == schema.STATUS_MEANINGS.split()


def test_a_batch_fills_every_variable_with_the_schemas_dtype_and_shape(made):
    s, p, _ = made
    region = batch.regions(s.shape, batch.chunk_shape(s.shape, tuple(s.axes), s.batch))[0]
    shape = tuple(r.stop - r.start for r in region)
    got = batch.run_batch(s, p, region)
    empty = batch.empty_results(s, p, shape)
    assert set(got) == set(empty) == set(schema.stored())
    for name in schema.stored():
        var = RESULTS[name]
        assert got[name].shape == empty[name].shape == shape + schema.tail_shape(var, 5, p.dy, p.dx), name
        assert got[name].dtype == empty[name].dtype == np.dtype(var.dtype), name
    assert set(np.unique(got["status"])) <= {int(x) for x in schema.DONE}
    cells = int(np.prod(shape))
    assert schema.cell_bytes(5, p.dy, p.dx) * cells == sum(v.nbytes for v in got.values())


def test_adding_a_variable_is_one_line(monkeypatch, tmp_path):
    # a new entry in RESULTS reaches the store's layout and the batches' pending arrays with nothing else changed
    monkeypatch.setitem(RESULTS, "probe", schema.Variable("a probe", ("checkpoint",), "f4", -1.0, "units"))
    s = specs.parse(RAW)
    p = problem.build(s.problem)
    store.create(tmp_path / "p.zarr", s, p, "f")
    ds = store.open_results(tmp_path / "p.zarr")
    assert ds.probe.dims == (*s.axes, "checkpoint") and ds.probe.dtype == np.float32
    assert np.all(ds.probe.values == -1.0) and ds.probe.attrs["units"] == "units"
    assert batch.empty_results(s, p, (2,))["probe"].shape == (2, 5)


@pytest.mark.parametrize("model", ["layerwise", "induced", "exact"])
def test_a_variable_added_to_the_schema_alone_is_in_every_batch_at_its_fill(monkeypatch, model):
    raw = {**RAW, "model": model, "problem": {"dx": 4, "dy": 1}} if model == "exact" else {**RAW, "model": model}
    s = specs.parse(raw)
    p = problem.build(s.problem)
    extra = schema.Variable("a variable no model computes yet", ("checkpoint",), "f8", -1.0)
    monkeypatch.setitem(RESULTS, "extra", extra)
    region = batch.regions(s.shape, batch.chunk_shape(s.shape, tuple(s.axes), s.batch))[0]
    n = tuple(r.stop - r.start for r in region)
    for mask in (None, np.arange(int(np.prod(n))).reshape(n) % 2 == 0):
        out = batch.run_batch(s, p, region, mask)
        assert set(out) == set(schema.stored())
        assert out["extra"].shape == n + (s.checkpoints.count,) and (out["extra"] == -1.0).all()


def test_a_store_without_one_of_the_results_is_refused_in_one_line(tmp_path):
    import shutil

    import zarr

    s = specs.parse(RAW)
    p = problem.build(s.problem)
    path = tmp_path / "s.zarr"
    store.create(path, s, p, s.fingerprint(p.digest()))
    shutil.rmtree(path / "imbalance_drift")  # as a store of a linflow before that variable would be
    with pytest.warns(UserWarning, match="Consolidated metadata"):
        zarr.consolidate_metadata(str(path))
    with pytest.raises(StoreError, match=r"has no imbalance_drift \(results this linflow stores\)") as e:
        store.open_group(path)
    assert "\n" not in str(e.value)


def test_record_adds_an_optional_variable_to_the_store_and_the_batches(tmp_path):
    assert schema.RECORDABLE == ("w",) and "w" not in schema.stored()
    s = specs.parse({**RAW, "record": ["w"]})
    p = problem.build(s.problem)
    store.create(tmp_path / "w.zarr", s, p, "f")
    ds = store.open_results(tmp_path / "w.zarr")
    assert ds.w.dims == (*s.axes, "checkpoint", "out", "in") and "w" in ds.attrs["results"]
    region = batch.regions(s.shape, batch.chunk_shape(s.shape, tuple(s.axes), s.batch))[0]
    got = batch.run_batch(s, p, region)
    # W at the last checkpoint is the product of the final layers; its singular values are the stored ones
    last = got["w"][..., -1, :, :]
    assert np.allclose(last, got["w_final"], rtol=1e-12, atol=1e-12)
    assert np.allclose(np.linalg.svd(last, compute_uv=False), got["singular_values"][..., -1, :], rtol=1e-12)
    assert s.fingerprint(p.digest()) != specs.parse(RAW).fingerprint(p.digest())  # a different layout
