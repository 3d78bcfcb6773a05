"""Reference results for the fault and cluster tests: the same pure batch computation the Ray tasks
run, done in this process without Ray, a store, or a driver that can be killed."""

import numpy as np
import xarray as xr

from sweep import batch, problem, schema
from sweep import spec as specs
from sweep.store import template

CONTRACT = [*schema.RESULTS, "target", "x", "y", "time"]  # every result variable, the data, the times


def compute(raw: dict) -> xr.Dataset:
    s = specs.parse(raw)
    p = problem.build(s.problem)
    ds, _ = template(s, p, s.fingerprint(p.digest()))
    ds = ds.copy(deep=True)  # the template's fill values are read-only broadcasts
    for region in batch.regions(s.shape, batch.chunk_shape(s.shape, tuple(s.axes), s.batch)):
        for name, values in batch.run_batch(s, p, region).items():
            ds[name].values[region] = values
    return ds


def assert_identical(a: xr.Dataset, b: xr.Dataset, where=None):
    """Every contract variable bitwise equal (NaN = NaN); ``where`` restricts to some cells."""
    for name in CONTRACT:
        x, y = a[name].values, b[name].values
        if where is not None and a[name].dims[: where.ndim] == a.status.dims:
            x, y = x[where], y[where]
        assert np.array_equal(x, y, equal_nan=True), name
