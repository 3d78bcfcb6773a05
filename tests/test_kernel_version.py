"""KERNEL_VERSION names the numbers of today's problems: while it stays "4", every variable linflow stored
under it keeps its bits. The digests below were computed by linflow at commit 5789f3a (kernel version 4,
before general inputs, matrix completion and the checkpoint records were added) with this same code; a
change that moves them must bump KERNEL_VERSION (stores of the old version then refuse to resume), not
this table."""

import hashlib

import numpy as np
import pytest

from sweep import kernel, runner
from sweep import spec as specs
from sweep.schema import LEGACY_RESULTS

CELLS = {
    "default": {"axes": {"depth": [1, 2, 3], "seed": {"start": 0, "stop": 3}}, "horizon": 2.0},
    "layerwise flip rk4": {
        "problem": {"m": 20, "dx": 2, "dy": 4, "seed": 1},
        "integrator": {"method": "rk4", "step": 0.01},
        "axes": {"depth": [2, 3], "width": [3], "init_norm": [0.5, 2.0], "seed": [0, 1]},
        "horizon": 1.0,
        "checkpoints": {"count": 5},
    },
    "induced dy 3": {
        "model": "induced",
        "problem": {"m": 20, "dx": 4, "dy": 3},
        "axes": {"depth": [2, 3], "width": [2, 4], "seed": [0, 1]},
        "horizon": 2.0,
        "checkpoints": {"count": 5},
    },
    "exact": {"model": "exact", "axes": {"depth": [1, 2, 4], "seed": [0, 1, 2]}, "horizon": 5.0},
    "gaussian euler": {
        "init": {"scheme": "gaussian"},
        "integrator": {"method": "euler", "step": 0.01},
        "axes": {"depth": [2, 4], "seed": [0, 1]},
        "horizon": 1.0,
        "stop_at_eps": True,
        "eps": 1e-3,
    },
}
VERSION_4 = {
    "default": "82f037d2c05c2202",
    "layerwise flip rk4": "6bc713378e9f0efe",
    "induced dy 3": "3b814dc99c979141",
    "exact": "db65a95855f44d5b",
    "gaussian euler": "55f634e65a70b2f0",
}


@pytest.mark.parametrize("name", list(CELLS))
def test_todays_problems_keep_the_numbers_of_their_kernel_version(name):
    assert kernel.KERNEL_VERSION == "4"
    ds = runner.run_local(specs.parse(CELLS[name]))
    h = hashlib.sha256()
    for variable in LEGACY_RESULTS:  # every variable a store held under version 4
        h.update(np.ascontiguousarray(ds[variable].values).tobytes())
    assert h.hexdigest()[:16] == VERSION_4[name]
