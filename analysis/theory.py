"""The derived results of docs/theory.md as functions (labelled "derived", not the paper's theorem numbers).

Scalar-output closed forms (§4) are evaluated by quadrature (scipy); every function broadcasts over
array inputs. Notation: ζ = ‖Z‖, r0 = ‖W0‖, θ0 = ∠(W0, Z), p = 2 − 2/N.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from sweep.kernel.exact import exact_excess_loss, exact_path, exact_time_to_eps, initial_excess  # noqa: F401 — §4, public here

ALIGN_TOL = 1e-8  # |p_k| ≤ ALIGN_TOL·(|u_kᵀu0| + |v_kᵀv0| + 1) counts as an exact alignment zero

# --------------------------------------------------------------------------------------------------
# §3 stable sets
# --------------------------------------------------------------------------------------------------


def _rank1(w0):
    """Leading singular pair of each W0; a W0 with non-finite entries (a pending or failed cell has
    no start) gives NaN instead of making the SVD raise."""
    finite = np.all(np.isfinite(w0), axis=(-2, -1))
    u, s, vt = np.linalg.svd(np.where(finite[..., None, None], w0, 0.0), full_matrices=False)
    u, s, vt = (np.where(finite.reshape(finite.shape + (1,) * (x.ndim - finite.ndim)), x, np.nan) for x in (u, s, vt))
    return u[..., :, 0], s[..., 0], vt[..., 0, :], s


def alignment(w0, target):
    """Coefficients p_k = u_kᵀu0 + v_kᵀv0 of a rank-1 start W0 = σ0 u0 v0ᵀ (leading dims broadcast);
    the sign of the pair (u0, v0) is fixed so that p_1 ≥ 0 when it can be (it is irrelevant to §3)."""
    w0 = np.asarray(w0, dtype=float)
    uz, _, vzt = np.linalg.svd(np.asarray(target, dtype=float), full_matrices=False)
    u0, _, v0, _ = _rank1(w0)
    p = np.einsum("ik,...i->...k", uz, u0) + np.einsum("ki,...i->...k", vzt, v0)
    flip = np.where(p[..., :1] < 0, -1.0, 1.0)
    return p * flip


def predicted_limit(w0, target, depth, tol: float = ALIGN_TOL):
    """Which critical point the balanced flow from W0 ends at (docs/theory.md §3):
    0 = the global minimizer Z_1; k ≥ 2 = the saddle s_k u_k v_kᵀ; −1 = zero (all p_k = 0).

    Exact-alignment cases (anti-aligned starts) are decided with ``tol`` on |p_k| relative to the
    size of its two terms. Depth 1 is linear regression: always 0. For depth 2 the answer is the exact
    flow's; the saddles are strict and a simulation can escape them through round-off.
    Only rank-1 starts are decided; a start of rank ≥ 2, or no start (NaN), gives −2 (undecided)."""
    w0 = np.asarray(w0, dtype=float)
    p = alignment(w0, target)
    uz, _, vzt = np.linalg.svd(np.asarray(target, dtype=float), full_matrices=False)
    u0, _, v0, s = _rank1(w0)
    size = np.abs(np.einsum("ik,...i->...k", uz, u0)) + np.abs(np.einsum("ki,...i->...k", vzt, v0))
    nonzero = np.abs(p) > tol * (size + 1.0)
    first = np.where(nonzero.any(-1), np.argmax(nonzero, axis=-1) + 1, -1)
    limit = np.where(first == 1, 0, first)
    rank = np.sum(s > 1e-10 * s[..., :1], axis=-1)
    limit = np.where((rank > 1) | np.isnan(s[..., 0]), -2, limit)
    return np.where(np.asarray(depth) == 1, 0, limit)


# --------------------------------------------------------------------------------------------------
# §5 bounds (derived)
# --------------------------------------------------------------------------------------------------


def certificate_time_bound(depth, r0, zeta, theta0, eps):
    """dy = 1, cos θ0 > 0: T_ε ≤ ln(excess(0)/ε) / (2 min(r0, ζ cos θ0)^p); NaN where cos θ0 ≤ 0."""
    depth, r0, zeta, theta0, eps = np.broadcast_arrays(
        *(np.asarray(a, dtype=float) for a in (depth, r0, zeta, theta0, eps))
    )
    p = 2 - 2 / depth
    c = np.cos(theta0)
    with np.errstate(all="ignore"):
        bound = np.log(initial_excess(r0, zeta, theta0) / eps) / (2 * np.minimum(r0, zeta * c) ** p)
    return np.where(c > 0, np.maximum(bound, 0.0), np.nan)


def certificate_bound(excess0, norms, times, depth):
    """excess(t) ≤ excess(0)·exp(−2∫_0^t ‖W(s)‖^p ds), from samples of ‖W(s)‖ (trapezoid rule)."""
    p = 2 - 2 / depth
    integral = np.concatenate([[0.0], np.cumsum(0.5 * np.diff(times) * (norms[1:] ** p + norms[:-1] ** p))])
    return excess0 * np.exp(-2 * integral)


def far_phase_bound(depth, r0, zeta):
    """Time to shrink from r0 ≥ 2ζ to 2ζ: ≤ (2ζ)^{−p}/(N − 1) for N ≥ 2 (independent of r0); ln(r0/ζ)
    for N = 1 (exactly the time to reach 2ζ along the ray is ln((r0 − ζ)/ζ) ≤ ln(r0/ζ))."""
    depth = np.asarray(depth, dtype=float)
    p = 2 - 2 / depth
    with np.errstate(all="ignore"):
        deep = (2 * np.asarray(zeta)) ** (-p) / (depth - 1)
    return np.where(depth == 1, np.log(np.asarray(r0) / np.asarray(zeta)), deep)


def local_rate(depth, s1, s2=0.0):
    """Rate ρ of excess ∝ exp(−ρ t) near the optimum: 2(s_1 − s_2)s_1^{1−2/N} (rank 1); dy = 1: 2ζ^p (s2 = 0)."""
    depth = np.asarray(depth, dtype=float)
    return 2 * (np.asarray(s1) - np.asarray(s2)) * np.asarray(s1) ** (1 - 2 / depth)


def arora_margin(w0, target):
    """Deficiency margin c = s_min(Z) − ‖W0 − Z‖_F (Arora et al. 2018a); > 0 means covered."""
    s = np.linalg.svd(np.asarray(target, dtype=float), compute_uv=False)
    return s[-1] - np.linalg.norm(np.asarray(w0) - target, axis=(-2, -1))


def arora_covered(w0, target, depth, width):
    """The margin is positive and no layer is narrower than min(dx, dy)."""
    dy, dx = np.asarray(target).shape
    wide = (np.asarray(depth) == 1) | (np.asarray(width) >= min(dx, dy))
    return (arora_margin(w0, target) > 0) & wide


def arora_time_bound(w0, target, depth, width, eps):
    """T_ε ≤ ln(excess(0)/ε)/(2c^p) where covered (see :func:`arora_covered`), NaN elsewhere."""
    c = arora_margin(w0, target)
    p = 2 - 2 / np.asarray(depth, dtype=float)
    excess0 = 0.5 * np.sum((np.asarray(w0) - target) ** 2, axis=(-2, -1))
    with np.errstate(all="ignore"):
        bound = np.maximum(np.log(excess0 / eps), 0.0) / (2 * c**p)
    return np.where(arora_covered(w0, target, depth, width), bound, np.nan)


def bah_prediction(w0, target, depth, tol: float = ALIGN_TOL):
    """Bah et al. 2019: the limit is a global minimizer of the rank-k problem for some k ≤ rank W0;
    for a rank-1 start that is Z_1 (0) or zero (−1), and §3 decides which. Saddles (k ≥ 2) appear
    only on the measure-zero sets p_1 = 0; they are reported as such."""
    return predicted_limit(w0, target, depth, tol)


# --------------------------------------------------------------------------------------------------
# per-cell theory variables for a results dataset
# --------------------------------------------------------------------------------------------------


def polar_coordinates(ds: xr.Dataset):
    """(r0, ζ, θ0) of every cell of a scalar-output dataset (NaN where dy ≠ 1)."""
    z = ds.target.values
    w0 = ds.w_init
    zeta = float(np.linalg.norm(z))
    r0 = np.sqrt((w0**2).sum(("out", "in")))
    cos = (w0 * ds.target).sum(("out", "in")) / (r0 * zeta)
    theta0 = np.arccos(cos.clip(-1, 1))
    return r0, zeta, theta0


BALANCED = ("balanced", "aligned")  # the init schemes whose starts are balanced


def outside(problem: dict) -> str:
    """Why the theory of docs/theory.md §3–§5 (whitened regression, Eftekhari's setting) does not hold for the
    problem a spec describes ('' when it does): 'matrix completion' or 'regression with inputs not whitened'."""
    if problem.get("kind") == "completion":
        return "matrix completion"
    if problem.get("whiten") is False or "input_spectrum" in problem:
        return "regression with inputs not whitened"
    return ""


def annotate(ds: xr.Dataset, tol: float = ALIGN_TOL) -> xr.Dataset:
    """Add per-cell theory variables: ``theory_limit``, ``theory_time_to_eps`` (balanced starts of
    rank ≤ 1 with scalar output; NaN elsewhere), ``arora_covered``, ``arora_time_bound``,
    ``certificate_time_bound`` and ``alignment_p1``."""
    import yaml

    spec = yaml.safe_load(ds.attrs["spec"])
    eps = float(spec["eps"])
    balanced = spec["init"]["scheme"] in BALANCED
    z = ds.target.values
    w0 = ds.w_init.load()
    depth = ds.depth.broadcast_like(w0.isel(out=0, **{"in": 0}))
    width = ds.width.broadcast_like(depth)
    out = ds.copy()

    limit = predicted_limit(w0.values, z, depth.values, tol)
    out["theory_limit"] = (
        depth.dims,
        limit.astype("i1"),
        {
            "long_name": "predicted limit of the balanced flow (docs/theory.md §3, derived)",
            "flag_values": np.array([-2, -1, 0], dtype="i1"),
            "flag_meanings": "undecided zero global (k ≥ 2: saddle s_k u_k v_kᵀ)",
        },
    )
    out["alignment_p1"] = (
        depth.dims,
        alignment(w0.values, z)[..., 0],
        {"long_name": "alignment coefficient p_1 = u_1ᵀu0 + v_1ᵀv0"},
    )
    out["arora_covered"] = (
        depth.dims,
        arora_covered(w0.values, z, depth.values, width.values),
        {"long_name": "covered by Arora et al. 2018a (positive deficiency margin, no narrow layer)"},
    )
    out["arora_time_bound"] = (
        depth.dims,
        arora_time_bound(w0.values, z, depth.values, width.values, eps),
        {"long_name": "Arora et al. deficiency-margin bound on T_ε (derived)", "units": "flow time"},
    )

    tte = np.full(depth.shape, np.nan)
    cert = np.full(depth.shape, np.nan)
    if z.shape[0] == 1 and balanced:
        r0, zeta, theta0 = polar_coordinates(ds)
        r0, theta0 = r0.broadcast_like(depth).values, theta0.broadcast_like(depth).values
        tte = exact_time_to_eps(depth.values, r0, zeta, theta0, eps)
        tte = np.where(np.isinf(tte), np.nan, tte)
        cert = certificate_time_bound(depth.values, r0, zeta, theta0, eps)
    out["theory_time_to_eps"] = (
        depth.dims,
        tte,
        {"long_name": "exact T_ε of the balanced flow (docs/theory.md §4, derived)", "units": "flow time"},
    )
    out["certificate_time_bound"] = (
        depth.dims,
        cert,
        {"long_name": "certificate bound on T_ε for cos θ0 > 0 (docs/theory.md §5, derived)", "units": "flow time"},
    )
    return out
