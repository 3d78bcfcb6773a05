"""Reference results for the fault and cluster tests: the same pure batch computation the Ray tasks
run, done in this process without Ray, a store, or a driver that can be killed."""

import numpy as np
import xarray as xr

from sweep import kernel, runner, schema
from sweep import spec as specs
from sweep.init import balanced_layers, layer_dims

CONTRACT = [*schema.stored(), "target", "x", "y", "time"]  # every result variable, the data, the times


def compute(raw: dict) -> xr.Dataset:
    return runner.run_local(specs.parse(raw))


def assert_identical(a: xr.Dataset, b: xr.Dataset, where=None):
    """Every contract variable (and the optional ones either holds) bitwise equal (NaN = NaN); ``where``
    restricts to some cells."""
    optional = [n for n in schema.RECORDABLE if n in a or n in b]
    for name in CONTRACT + optional:
        x, y = a[name].values, b[name].values
        if where is not None and a[name].dims[: where.ndim] == a.status.dims:
            x, y = x[where], y[where]
        assert np.array_equal(x, y, equal_nan=True), name


def balanced_flow(w0, target, depth, width, horizon):
    """The layerwise flow from the balanced start that factors ``w0`` (seed 0), dopri5 at rtol 1e-10:
    (W(0), W(horizon), status) of the end-to-end matrix."""
    model = kernel.Layerwise(layer_dims(target.shape[1], target.shape[0], depth, width), target)
    y0 = model.pack([w[None] for w in balanced_layers(w0, problem_seed=0, seed=0, depth=depth, width=width)])
    r = kernel.integrate(
        model,
        y0,
        kernel.DOPRI5,
        horizon=horizon,
        checkpoints=np.array([0.0, horizon]),
        eps=1e-30,
        rtol=1e-10,
        atol=1e-13,
    )
    return model.product(y0)[0], model.product(r.y_final)[0], r.status[0]
