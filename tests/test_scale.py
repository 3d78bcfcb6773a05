"""A million cells (issue 9 item 6): a range stays a range from the spec to the store, so the
driver's time and memory grow with the axes given, not with the cells of the grid."""

import json
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import xarray as xr
import yaml

from sweep import batch, problem, store
from sweep import spec as specs

MILLION = {
    "axes": {"depth": [1], "width": [5], "init_norm": [1.0], "seed": {"start": 0, "stop": 1_000_000}},
    "horizon": 0.01,
    "checkpoints": {"count": 2, "spacing": "linear"},
}


def _with_seeds(seeds) -> dict:
    return {**MILLION, "axes": {**MILLION["axes"], "seed": seeds}}


def test_a_million_seed_range_parses_fingerprints_and_round_trips_in_bounded_time_and_memory():
    specs.parse(_with_seeds([0, 1])).fingerprint()  # imports and first-call costs out of the measure
    tracemalloc.start()
    try:
        started = time.perf_counter()
        s = specs.parse(MILLION)
        fingerprint = s.fingerprint("digest")
        text = s.to_yaml()
        again = specs.parse(yaml.safe_load(text))
        seconds = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert again == s and again.fingerprint("digest") == fingerprint
    assert s.shape == (1, 1, 1, 1_000_000) and isinstance(s.axes["seed"], range)
    assert yaml.safe_load(text)["axes"]["seed"] == {"start": 0, "stop": 1_000_000}  # three numbers, not a million
    assert seconds < 1.0, f"{seconds:.2f} s"
    assert peak < 30 * 2**20, f"{peak / 2**20:.1f} MB"


def test_a_list_and_a_range_of_the_same_values_are_the_same_sweep():
    # short axes (the list form, as fingerprints always were) and long ones (the range form)
    for n, step in ((8, 1), (20_000, 1), (20_000, 3)):
        as_list = specs.parse(_with_seeds(list(range(5, 5 + n * step, step))))
        as_range = specs.parse(_with_seeds({"start": 5, "stop": 5 + n * step, "step": step}))
        assert isinstance(as_list.axes["seed"], tuple) and isinstance(as_range.axes["seed"], range)
        assert as_list.fingerprint() == as_range.fingerprint(), (n, step)
        # the same stop reached another way: the same values
        ragged = specs.parse(_with_seeds({"start": 5, "stop": 5 + n * step - step + 1, "step": step}))
        assert ragged.fingerprint() == as_range.fingerprint(), (n, step)
        p = problem.build(as_list.problem)
        a, _ = store.template(as_list, p, "f")
        b, _ = store.template(as_range, p, "f")
        for name in ("depth", "width", "init_norm", "seed"):
            assert a[name].dtype == b[name].dtype and np.array_equal(a[name].values, b[name].values), name
        region = batch.regions(as_list.shape, batch.chunk_shape(as_list.shape, tuple(as_list.axes), 256))[-1]
        ca, cb = batch.cells(as_list, region), batch.cells(as_range, region)
        assert all(np.array_equal(ca[k], cb[k]) and ca[k].dtype == cb[k].dtype for k in ca)
    # other values: another sweep
    base = specs.parse(_with_seeds({"start": 0, "stop": 20_000})).fingerprint()
    for other in (
        {"start": 0, "stop": 20_001},
        {"start": 1, "stop": 20_001},
        {"start": 0, "stop": 40_000, "step": 2},
        list(range(19_999)) + [20_000],
    ):
        assert specs.parse(_with_seeds(other)).fingerprint() != base, str(other)[:40]


def test_fingerprints_of_short_axes_are_those_stores_were_made_with():
    # a store made before ranges stayed ranges must resume: its fingerprint (all values listed) is unchanged.
    # Pinned for kernel version 4 (the version is part of the fingerprint: a new kernel refuses old stores)
    assert specs.parse({}).fingerprint("d") == "a142df5fd47b3b87"
    short = specs.parse({"axes": {"seed": {"start": 3, "stop": 5000, "step": 7}, "init_angle": [0.0, 1.0]}})
    listed = specs.parse({"axes": {"seed": list(range(3, 5000, 7)), "init_angle": [0.0, 1.0]}})
    assert short.fingerprint("d") == listed.fingerprint("d") == "105ac5f4f4c3e5bf"


def test_ranges_from_flags_stay_ranges_and_a_decreasing_one_is_listed():
    s = specs.load(None, {"axes": {"seed": specs.parse_list("0:100000", "--seed", int)}})
    assert s.axes["seed"] == range(100_000) and isinstance(s.axes["seed"], range)
    down = specs.load(None, {"axes": {"seed": specs.parse_list("9:0:-3", "--seed", int)}})
    assert down.axes["seed"] == (9, 6, 3)
    assert specs.parse(yaml.safe_load(down.to_yaml())) == down
    floats = specs.parse({"axes": {"init_norm": {"start": 1, "stop": 3}}})
    assert floats.axes["init_norm"] == (1.0, 2.0) and all(isinstance(v, float) for v in floats.axes["init_norm"])


def _metadata(root: Path) -> dict:
    return {str(f.relative_to(root)): json.loads(f.read_text()) for f in sorted(root.rglob("zarr.json"))}


def test_store_create_declares_the_results_as_xarray_writes_them(tmp_path):
    s = specs.parse(
        {
            "axes": {"depth": [1, 2], "width": [5], "init_norm": [0.5, 1.0], "seed": {"start": 0, "stop": 300}},
            "checkpoints": {"count": 3, "spacing": "linear"},
        }
    )
    p = problem.build(s.problem)
    store.create(tmp_path / "fast.zarr", s, p, "f")
    ds, encoding = store.template(s, p, "f")
    with warnings.catch_warnings():  # the layout store.create made before: all of it through xarray
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        ds.to_zarr(str(tmp_path / "xarray.zarr"), mode="w", encoding=encoding, zarr_format=3, consolidated=True)
    assert _metadata(tmp_path / "fast.zarr") == _metadata(tmp_path / "xarray.zarr")
    files = {str(f.relative_to(tmp_path / "fast.zarr")) for f in (tmp_path / "fast.zarr").rglob("*") if f.is_file()}
    assert files == {
        str(f.relative_to(tmp_path / "xarray.zarr")) for f in (tmp_path / "xarray.zarr").rglob("*") if f.is_file()
    }
    a, b = xr.open_zarr(tmp_path / "fast.zarr"), xr.open_zarr(tmp_path / "xarray.zarr")
    xr.testing.assert_identical(a.load(), b.load())
    for v in a.variables:  # as read back: the same chunks, dtypes and fill values (NaN repr'd alike)
        assert repr({k: x for k, x in a[v].encoding.items() if k != "source"}) == repr(
            {k: x for k, x in b[v].encoding.items() if k != "source"}
        ), v


def test_a_million_cell_store_is_laid_out_in_seconds_and_reads_back(tmp_path):
    s = specs.parse(MILLION)
    p = problem.build(s.problem)
    started = time.perf_counter()
    store.create(tmp_path / "m.zarr", s, p, s.fingerprint(p.digest()))
    seconds = time.perf_counter() - started
    assert seconds < 5.0, f"{seconds:.1f} s"  # 0.1 s measured; writing the fill values took 24 s
    group = store.open_group(tmp_path / "m.zarr")
    assert store.counts(group)["pending"] == 1_000_000
    assert yaml.safe_load(group.attrs["spec"])["axes"]["seed"] == {"start": 0, "stop": 1_000_000}
    seed = xr.open_zarr(tmp_path / "m.zarr").seed.values
    assert np.array_equal(seed, np.arange(1_000_000))
