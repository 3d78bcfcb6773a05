"""Where did each run end? Classification of the final end-to-end matrix against the critical
points of the rank-r problem (docs/theory.md §9, §3), convergence fractions, and agreement with §3.

The critical points of ½‖W − Z‖² over rank ≤ r are Z_S = Σ_{k∈S} s_k u_k v_kᵀ for index sets
|S| ≤ r: S = {1…r} is the global minimizer Z_r, S = ∅ is zero, any other S a saddle. In Z's singular
basis, m_k = u_kᵀ W v_k and ‖W − Z_S‖² = ‖W‖² + Σ_{k∈S}(s_k² − 2 s_k m_k), so the nearest critical
point takes the (at most r) indices with the most negative s_k² − 2 s_k m_k — no enumeration needed.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
import xarray as xr

from sweep.init import rank_of
from sweep.schema import Status


class Limit(IntEnum):
    """Where a run ended: the class of its nearest critical point (or why there is none)."""

    UNKNOWN = 0  # pending or failed: no final matrix
    GLOBAL = 1  # within tol of Z_r
    SADDLE = 2
    ZERO = 3
    UNCONVERGED = 4  # near no critical point
    DIVERGED = 5


UNKNOWN, GLOBAL, SADDLE, ZERO, UNCONVERGED, DIVERGED = Limit  # the names analysis code and notebooks use
CLASS_MEANINGS = " ".join(c.name.lower() for c in Limit)
DISTANCE_TOL = 1e-3  # ‖W_final − critical point‖_F ≤ DISTANCE_TOL·‖Z‖_F counts as arrived


def _cell_dims(ds):
    return tuple(d for d in ds.status.dims)


def _nearest(ds: xr.Dataset):
    """(distance / ‖Z‖_F, limit index, captured energy Σ_{k∈S} s_k²) of each cell's nearest critical
    point Z_S; the loss there is ½‖Z‖² − ½·captured + the data's residual (higher captured, lower loss)."""
    z = ds.target.values
    u, s, vt = np.linalg.svd(z, full_matrices=False)
    w = ds.w_final.transpose(*_cell_dims(ds), "out", "in").values
    with np.errstate(all="ignore"):  # pending, failed and diverged cells hold NaN or inf
        m = np.einsum("ik,...ij,kj->...k", u, w, vt)  # m_k = u_kᵀ W v_k
        c = s**2 - 2 * s * m  # gain of putting k in S
    rank = (
        xr.apply_ufunc(lambda d, wd: np.vectorize(rank_of)(z.shape[1], z.shape[0], d, wd), ds.depth, ds.width)
        .broadcast_like(ds.status)
        .transpose(*_cell_dims(ds))
        .values
    )
    order = np.argsort(c, axis=-1, kind="stable")
    csorted = np.take_along_axis(c, order, axis=-1)
    k = np.arange(len(s))
    chosen = (csorted < 0) & (k < rank[..., None])  # the most negative, at most r of them
    with np.errstate(all="ignore"):
        dist2 = np.sum(w * w, axis=(-2, -1)) + np.sum(np.where(chosen, csorted, 0.0), axis=-1)
    members = np.zeros(c.shape, dtype=bool)
    np.put_along_axis(members, order, chosen, axis=-1)
    size = members.sum(-1)
    top = np.all(members == ((k < rank[..., None]) & (s > 0)), axis=-1)  # S = {1 … r}: Z_r
    largest = np.where(members.any(-1), len(s) - np.argmax(members[..., ::-1], axis=-1), 0)
    index = np.where(size == 0, -1, np.where(top, 0, largest))
    captured = np.sum(np.where(members, s**2, 0.0), axis=-1)
    scale = np.linalg.norm(z)
    with np.errstate(invalid="ignore"):
        dist = np.sqrt(np.maximum(dist2, 0.0)) / scale
    dims = _cell_dims(ds)
    return tuple(xr.DataArray(v, dims=dims, coords=ds.status.coords) for v in (dist, index, captured))


def nearest_critical_point(ds: xr.Dataset):
    """(distance / ‖Z‖_F, limit index) of each cell's w_final to its nearest critical point.
    Limit index as in :func:`analysis.theory.predicted_limit`: 0 global, −1 zero, k ≥ 2 a saddle
    (k = the largest index of S: for rank-1 limits, the saddle s_k u_k v_kᵀ)."""
    dist, index, _ = _nearest(ds)
    return dist, index


def classify(ds: xr.Dataset, tol: float = DISTANCE_TOL) -> xr.DataArray:
    """Per cell: global, saddle, zero (the final matrix within ``tol``·‖Z‖_F of that critical point),
    unconverged (near none of them), diverged (status diverged) or unknown (pending or failed)."""
    dist, index = nearest_critical_point(ds)
    status = ds.status
    cls = xr.where(index == 0, GLOBAL, xr.where(index == -1, ZERO, SADDLE))
    cls = xr.where(dist <= tol, cls, UNCONVERGED)
    cls = xr.where(status == Status.DIVERGED, DIVERGED, cls)
    no_result = (status == Status.PENDING) | (status == Status.FAILED)
    cls = xr.where(no_result | dist.isnull() & (status != Status.DIVERGED), UNKNOWN, cls)
    return (
        cls.astype("i1")
        .rename("limit_class")
        .assign_attrs(
            long_name="where the run ended (nearest critical point of the rank-r problem)",
            flag_values=np.array([c.value for c in Limit], dtype="i1"),
            flag_meanings=CLASS_MEANINGS,
            distance_tol=tol,
        )
    )


def convergence_rate(ds: xr.Dataset, over=("seed",), tol: float = DISTANCE_TOL) -> xr.DataArray:
    """Fraction of cells that reached the global minimizer, along ``over`` (unknown cells excluded;
    NaN where every cell is unknown)."""
    cls = classify(ds, tol)
    known = cls != UNKNOWN
    n = known.sum(list(over))
    rate = (cls == GLOBAL).where(known).sum(list(over)) / n.where(n > 0)
    return rate.rename("convergence_rate").assign_attrs(
        long_name=f"fraction reaching the global minimizer over {', '.join(over)}", units="1"
    )


def _predicted_captured(limit, s, rank):
    """Σ_{k∈S} s_k² of the predicted critical point: s_k² for a saddle k ≥ 2, 0 for zero, Σ_{k≤r} s_k²
    for the global minimizer Z_r; NaN where §3 does not decide (−2)."""
    s2 = np.append(s**2, 0.0)  # index len(s): a saddle beyond the spectrum, s_k = 0
    saddle = s2[np.where(limit >= 2, np.minimum(limit, len(s) + 1) - 1, len(s))]
    top = np.cumsum(s**2)[np.clip(rank, 1, len(s)) - 1]
    return np.where(limit == -2, np.nan, np.where(limit == -1, 0.0, np.where(limit == 0, top, saddle)))


def strict_saddle(limit, depth, target) -> np.ndarray:
    """Where the predicted limit (index as in :func:`analysis.theory.predicted_limit`) is a strict
    saddle, one a simulation leaves through round-off: s_k u_k v_kᵀ (k ≥ 2, s_k > 0) at every depth
    N ≥ 2, and zero (−1) at depth 2 only (docs/theory.md §3). At N ≥ 3, W = 0 is not strict."""
    s = np.linalg.svd(np.asarray(target, dtype=float), compute_uv=False)
    limit, depth = np.broadcast_arrays(np.asarray(limit), np.asarray(depth))
    sk = np.append(s, 0.0)[np.where(limit >= 2, np.minimum(limit, len(s) + 1) - 1, len(s))]
    return (depth >= 2) & (((limit >= 2) & (sk > 0)) | ((limit == -1) & (depth == 2) & (s[0] > 0)))


def agreement(ds: xr.Dataset, tol: float = DISTANCE_TOL) -> xr.Dataset:
    """Cells where the observed limit differs from docs/theory.md §3's prediction, stacked on ``cell``
    (empty when they all agree), each marked ``escaped`` or not. Cells that ended nowhere near a
    critical point (unconverged, diverged, unknown) or whose start §3 does not decide are not
    compared; ``attrs`` count them (``compared``, ``disagreements``, ``escapes``, ``not_compared``).

    §3 describes the exact flow. A simulation started on a strict saddle's stable set leaves it
    through round-off (docs/theory.md §3: the error grows exponentially; measured t ≈ 30–40), so a cell
    **escaped** — counted apart, not as a disagreement — when the prediction is a strict saddle
    (:func:`strict_saddle`: s_k u_k v_kᵀ with k ≥ 2, or zero at depth 2) and the run ended at a
    critical point of strictly lower loss (the global minimizer, or a saddle that captures more of
    Z: Σ_{k∈S} s_k² larger), which gradient descent can reach from there. Any other difference —
    a limit of higher loss than predicted (the flow never climbs), or a departure from a
    non-strict point — is a disagreement.

    Decided: at depth N ≥ 3 a predicted zero (−1) is *not* a strict saddle, and a run that left it
    is a disagreement. Near W = 0 the rotation of W towards u_1 v_1ᵀ runs at a rate ∝ ‖W‖^{1−2/N}
    while ‖W‖ decays like t^{−N/(N−2)}, so an error δ off the stable set grows only polynomially
    (δ·t^{1/(N−2)} on the anti-aligned ray, dy = 1, and alike for rank-1 starts): from round-off
    (δ ~ 1e-16) it takes t of order 1e16 at N = 3, and far longer at larger N — beyond any sweep's
    horizon, so round-off cannot explain such a run. At depth 2, zero is strict (the error grows
    like e^{s_1 t}): an anti-aligned run (dy = 1, ‖Z‖ ≈ 2.7) is within ε = 1e-6 of Z by t = 20."""
    from .complexity import safe_annotate

    if "theory_limit" not in ds:
        ds = safe_annotate(ds)
    cls = classify(ds, tol)
    _, observed, captured = _nearest(ds)
    predicted = ds.theory_limit.broadcast_like(ds.status).transpose(*_cell_dims(ds))
    z = ds.target.values
    s = np.linalg.svd(z, compute_uv=False)
    depth = ds.depth.broadcast_like(ds.status).transpose(*_cell_dims(ds))
    width = ds.width.broadcast_like(ds.status).transpose(*_cell_dims(ds))
    rank = np.vectorize(rank_of)(z.shape[1], z.shape[0], depth.values, width.values)
    expected = _predicted_captured(predicted.values.astype(int), s, rank)
    comparable = cls.isin([GLOBAL, SADDLE, ZERO]) & (predicted != -2)
    differ = comparable & (observed != predicted)
    with np.errstate(invalid="ignore"):
        lower = captured.values > expected + 1e-9 * s[0] ** 2  # the observed point has lower loss
    escaped = differ & strict_saddle(predicted.values, depth.values, z) & lower
    disagree = differ & ~escaped
    dims = _cell_dims(ds)
    table = xr.Dataset(
        {
            "predicted": predicted.astype("i1"),
            "observed": observed.astype("i1"),
            "limit_class": cls,
            "escaped": escaped.assign_attrs(long_name="left a strict saddle through round-off (not a disagreement)"),
        }
    ).stack(cell=dims)
    table = table.isel(cell=np.flatnonzero(differ.stack(cell=dims).values))
    table.attrs.update(
        compared=int(comparable.sum()),
        disagreements=int(disagree.sum()),
        escapes=int(escaped.sum()),
        not_compared=int((~comparable).sum()),
    )
    return table
