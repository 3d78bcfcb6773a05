"""linflow: parameter sweeps of gradient flow on deep linear networks (Eftekhari, ICML 2020)."""

from .version import __version__  # noqa: F401


def open_results(path):
    """The results dataset of a linflow store (lazy ``xr.open_zarr``), for notebooks — also of a store a run is
    writing: its ``status`` is a snapshot read first, ``attrs["cells_done"]`` of ``attrs["cells"]`` are done."""
    from .store import open_results as _open

    return _open(path)
