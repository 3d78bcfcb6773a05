"""Test environment: never attach to a stray Ray cluster; no token files in the user's home."""

import os

os.environ.pop("RAY_ADDRESS", None)
os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


import pytest


@pytest.fixture(scope="module")
def ray_local():
    """One real local Ray instance (2 CPUs) for the in-process runs of a test module."""
    import ray

    from sweep import cluster

    cluster.connect(workers=2)
    yield
    ray.shutdown()
