"""Where did each run end? Classification of the final end-to-end matrix against the critical
points of the rank-r problem (theory.md §1, §3), convergence fractions, and agreement with §3.

The critical points of ½‖W − Z‖² over rank ≤ r are Z_S = Σ_{k∈S} s_k u_k v_kᵀ for index sets
|S| ≤ r: S = {1…r} is the global minimizer Z_r, S = ∅ is zero, any other S a saddle. In Z's singular
basis, m_k = u_kᵀ W v_k and ‖W − Z_S‖² = ‖W‖² + Σ_{k∈S}(s_k² − 2 s_k m_k), so the nearest critical
point takes the (at most r) indices with the most negative s_k² − 2 s_k m_k — no enumeration needed.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from sweep.init import rank_of

UNKNOWN, GLOBAL, SADDLE, ZERO, UNCONVERGED, DIVERGED = range(6)
CLASS_MEANINGS = "unknown global saddle zero unconverged diverged"
DISTANCE_TOL = 1e-3  # ‖W_final − critical point‖_F ≤ DISTANCE_TOL·‖Z‖_F counts as arrived


def _cell_dims(ds):
    return tuple(d for d in ds.status.dims)


def nearest_critical_point(ds: xr.Dataset):
    """(distance / ‖Z‖_F, limit index) of each cell's w_final to its nearest critical point.
    Limit index as in :func:`analysis.theory.predicted_limit`: 0 global, −1 zero, k ≥ 2 a saddle
    (k = the largest index of S: for rank-1 limits, the saddle s_k u_k v_kᵀ)."""
    z = ds.target.values
    u, s, vt = np.linalg.svd(z, full_matrices=False)
    w = ds.w_final.transpose(*_cell_dims(ds), "out", "in").values
    m = np.einsum("ik,...ij,kj->...k", u, w, vt)  # m_k = u_kᵀ W v_k
    c = s**2 - 2 * s * m  # gain of putting k in S
    rank = xr.apply_ufunc(lambda d, wd: np.vectorize(rank_of)(z.shape[1], z.shape[0], d, wd),
                          ds.depth, ds.width).broadcast_like(ds.status).transpose(*_cell_dims(ds)).values
    order = np.argsort(c, axis=-1, kind="stable")
    csorted = np.take_along_axis(c, order, axis=-1)
    k = np.arange(len(s))
    chosen = (csorted < 0) & (k < rank[..., None])  # the most negative, at most r of them
    dist2 = np.sum(w * w, axis=(-2, -1)) + np.sum(np.where(chosen, csorted, 0.0), axis=-1)
    members = np.zeros(c.shape, dtype=bool)
    np.put_along_axis(members, order, chosen, axis=-1)
    size = members.sum(-1)
    top = np.all(members == ((k < rank[..., None]) & (s > 0)), axis=-1)  # S = {1 … r}: Z_r
    largest = np.where(members.any(-1), len(s) - np.argmax(members[..., ::-1], axis=-1), 0)
    index = np.where(size == 0, -1, np.where(top, 0, largest))
    scale = np.linalg.norm(z)
    with np.errstate(invalid="ignore"):
        dist = np.sqrt(np.maximum(dist2, 0.0)) / scale
    dims = _cell_dims(ds)
    return xr.DataArray(dist, dims=dims, coords=ds.status.coords), xr.DataArray(index, dims=dims, coords=ds.status.coords)


def classify(ds: xr.Dataset, tol: float = DISTANCE_TOL) -> xr.DataArray:
    """Per cell: global, saddle, zero (the final matrix within ``tol``·‖Z‖_F of that critical point),
    unconverged (near none of them), diverged (status 3) or unknown (pending or failed)."""
    dist, index = nearest_critical_point(ds)
    status = ds.status
    cls = xr.where(index == 0, GLOBAL, xr.where(index == -1, ZERO, SADDLE))
    cls = xr.where(dist <= tol, cls, UNCONVERGED)
    cls = xr.where(status == 3, DIVERGED, cls)
    cls = xr.where((status == 0) | (status == 4) | dist.isnull() & (status != 3), UNKNOWN, cls)
    return cls.astype("i1").rename("limit_class").assign_attrs(
        long_name="where the run ended (nearest critical point of the rank-r problem)",
        flag_values=np.arange(6, dtype="i1"), flag_meanings=CLASS_MEANINGS, distance_tol=tol)


def convergence_rate(ds: xr.Dataset, over=("seed",), tol: float = DISTANCE_TOL) -> xr.DataArray:
    """Fraction of cells that reached the global minimizer, along ``over`` (unknown cells excluded)."""
    cls = classify(ds, tol)
    known = cls != UNKNOWN
    rate = (cls == GLOBAL).where(known).sum(list(over)) / known.sum(list(over))
    return rate.rename("convergence_rate").assign_attrs(
        long_name=f"fraction reaching the global minimizer over {', '.join(over)}", units="1")


def agreement(ds: xr.Dataset, tol: float = DISTANCE_TOL) -> xr.Dataset:
    """Cells where the observed limit differs from theory.md §3's prediction, stacked on ``cell``
    (empty when they all agree). Cells that ended nowhere near a critical point (unconverged,
    diverged, unknown) or whose start §3 does not decide are not compared; ``attrs`` count them."""
    from .theory import annotate

    if "theory_limit" not in ds:
        ds = annotate(ds)
    cls = classify(ds, tol)
    _, observed = nearest_critical_point(ds)
    comparable = cls.isin([GLOBAL, SADDLE, ZERO]) & (ds.theory_limit != -2)
    differ = comparable & (observed != ds.theory_limit)
    dims = _cell_dims(ds)
    table = xr.Dataset({
        "predicted": ds.theory_limit.astype("i1"),
        "observed": observed.astype("i1"),
        "limit_class": cls,
    }).stack(cell=dims)
    table = table.where(differ.stack(cell=dims), drop=True)
    table.attrs.update(compared=int(comparable.sum()), disagreements=int(differ.sum()),
                       not_compared=int((~comparable).sum()))
    return table
