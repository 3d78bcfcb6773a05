"""Reference results for the fault and cluster tests: the same pure batch computation the Ray tasks
run, done in this process without Ray, a store, or a driver that can be killed."""

import numpy as np
import xarray as xr

from sweep import runner, schema
from sweep import spec as specs

CONTRACT = [*schema.RESULTS, "target", "x", "y", "time"]  # every result variable, the data, the times


def compute(raw: dict) -> xr.Dataset:
    return runner.run_local(specs.parse(raw))


def assert_identical(a: xr.Dataset, b: xr.Dataset, where=None):
    """Every contract variable bitwise equal (NaN = NaN); ``where`` restricts to some cells."""
    for name in CONTRACT:
        x, y = a[name].values, b[name].values
        if where is not None and a[name].dims[: where.ndim] == a.status.dims:
            x, y = x[where], y[where]
        assert np.array_equal(x, y, equal_nan=True), name
