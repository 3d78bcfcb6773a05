"""The grid, its batches, and the computation of one batch (pure: no Ray, no I/O).

A batch is one Zarr chunk of the dataset: a hyper-rectangle of cells with a single depth and width
(so every trajectory has the same layer shapes) and at most ``spec.batch`` cells.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np

from . import kernel, schema
from .init import initial_layers, rank_of
from .models import MODELS
from .problem import Problem
from .schema import Status
from .spec import Spec


def chunk_shape(shape: tuple[int, ...], names: tuple[str, ...], batch: int) -> tuple[int, ...]:
    """Chunk sizes over the grid axes: 1 along depth and width; the other axes filled from the
    innermost (seed) outwards while the product stays ≤ batch — an outer axis grows only once the
    inner ones are whole, so chunks stay rectangular. An axis cut into pieces is cut so that its last
    chunk holds as few cells as can be, at chunks of between ``batch``/2 and ``batch`` cells (1000 seeds in
    batches of 256: chunks of 250, none left over; 1009: 4 of 252 and one of 1): a store grown along that
    axis then shares no chunk, or only a small one, with its new cells (:func:`sweep.store.grow`)."""
    chunks = [1] * len(shape)
    room = max(batch, 1)
    for i in range(len(shape) - 1, -1, -1):
        if names[i] in ("depth", "width"):
            break
        n = shape[i]
        if n > room:
            chunks[i] = min(range(room, (room + 1) // 2 - 1, -1), key=lambda c: n % c)  # the largest of the best
            break
        chunks[i] = max(1, n)
        room //= max(n, 1)
    return tuple(chunks)


def regions(shape: tuple[int, ...], chunks: tuple[int, ...]) -> list[tuple[slice, ...]]:
    """All chunks of the grid, in C order, as tuples of slices."""
    ranges = [range(0, n, c) for n, c in zip(shape, chunks)]
    return [
        tuple(slice(start, min(start + c, n)) for start, c, n in zip(corner, chunks, shape))
        for corner in itertools.product(*ranges)
    ]


def cells(spec: Spec, region: tuple[slice, ...]) -> dict[str, np.ndarray]:
    """Coordinates of the cells of a region, flattened in C order: name → (n,) array."""
    values = [spec.values(name, s) for name, s in zip(spec.axes, region)]  # a range's slice only
    mesh = np.meshgrid(*values, indexing="ij")
    return {name: m.ravel() for name, m in zip(spec.axes, mesh)}


def run_batch(spec: Spec, problem: Problem, region: tuple[slice, ...], mask=None) -> dict[str, np.ndarray]:
    """Integrate the cells of ``region`` (those where ``mask``, shaped like the region, is true;
    default all); returns every variable of the result schema shaped like the region (plus trailing
    checkpoint / out / in dims) — cells outside the mask, and variables a model does not compute, hold
    their pending fill values."""
    shape = tuple(s.stop - s.start for s in region)
    c = cells(spec, region)
    out = empty_results(spec, problem, shape)
    keep = np.flatnonzero(np.ones(shape, bool) if mask is None else np.asarray(mask).ravel())
    if len(keep) == math.prod(shape):  # every cell: the computed arrays themselves (no copy)
        out.update({k: v.reshape(out[k].shape) for k, v in _compute(spec, problem, c).items()})
        return out
    computed = _compute(spec, problem, {k: v[keep] for k, v in c.items()}) if len(keep) else {}
    for name, values in computed.items():
        out[name].reshape((-1,) + values.shape[1:])[keep] = values
    return out


def empty_results(spec: Spec, problem: Problem, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Every result variable of a region of ``shape``, holding the pending fill values."""
    return schema.empty(shape, spec.checkpoints.count, problem.dy, problem.dx, schema.stored(spec.record))


def _start_args(spec: Spec, c: dict[str, np.ndarray], i: int) -> dict:
    """What the start of cell i depends on (sweep.init): the problem seed and the cell's coordinates."""
    args = {
        "problem_seed": getattr(spec.problem, "seed", 0),
        "seed": int(c["seed"][i]),
        "depth": int(c["depth"][i]),
        "width": int(c["width"][i]),
        "init_norm": float(c["init_norm"][i]),
    }
    if "init_angle" in c:
        args["init_angle"] = float(c["init_angle"][i])
    return args


def _compute(spec: Spec, problem: Problem, c: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The dataset variables of a flat list of cells of one depth and width, cell axis first."""
    n = len(c["seed"])
    depth, width = int(c["depth"][0]), int(c["width"][0])
    record = MODELS[spec.model]
    if not record.integrated:
        return _compute_exact(spec, problem, c, depth, width)
    model = record.kernel_model(problem, depth, width)
    starts = [initial_layers(spec.init.scheme, problem.target, **_start_args(spec, c, i)) for i in range(n)]
    y0 = record.states(model, starts)

    settings = {k: v for k, v in spec.integrator.items() if k != "method"}
    result = kernel.integrate(
        model,
        y0,
        kernel.METHODS[spec.integrator.method],
        horizon=spec.horizon,
        checkpoints=spec.checkpoint_times(),
        eps=spec.eps,
        stop_at_eps=spec.stop_at_eps,
        **settings,
    )

    floor = problem.loss_floor(rank_of(problem.dx, problem.dy, depth, width))
    with np.errstate(all="ignore"):
        w_final = model.product(result.y_final)
    imbalance, drift = _imbalance(model, y0, result.y_final)
    out = {
        "loss": result.excess + floor,
        "excess_loss": result.excess,
        "time_to_eps": result.time_to_eps,
        "status": result.status,
        "steps": result.steps,
        "rhs_evals": result.rhs_evals,
        "w_init": model.product(y0),
        "w_final": w_final,
        "imbalance": imbalance,
        "imbalance_drift": drift,
        **records(result.w, problem.target, spec.record),
    }
    return out


def records(w: np.ndarray, target: np.ndarray, record=()) -> dict[str, np.ndarray]:
    """What each cell records of W(t) at the checkpoints, from ``w`` (cells, checkpoints, dy, dx): its singular
    values (descending), effective rank (Roy & Vetterli: exp of the entropy of σ/Σσ; NaN at W = 0) and distance
    to the target map ‖W − M‖_F/‖M‖_F — NaN where W is not finite (after a stop, or diverged) — and W itself
    when ``record`` names it. Each cell's numbers are its own (no sum runs across cells)."""
    n, c, dy, dx = w.shape
    finite = np.isfinite(w).all(axis=(2, 3))
    sv = np.full((n, c, min(dy, dx)), np.nan)
    if finite.any():
        sv[finite] = np.linalg.svd(w[finite], compute_uv=False)
    total = sv.sum(axis=2, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = sv / total
        entropy = -np.sum(np.where(p > 0, p * np.log(p), 0.0), axis=2)
        erank = np.where(total[..., 0] > 0, np.exp(entropy), np.nan)
        error = np.sqrt(np.sum((w - target) ** 2, axis=(2, 3))) / np.sqrt(np.sum(target**2))
    out = {"singular_values": sv, "effective_rank": erank, "reconstruction_error": error}
    if "w" in record:
        out["w"] = w
    return out


def _compute_exact(spec: Spec, problem: Problem, c: dict, depth: int, width: int) -> dict[str, np.ndarray]:
    """``model: exact`` — balanced scalar-output starts from the closed form of docs/theory.md §4 (all
    cells at once): no integrator steps; W stays in the plane of W0 and Z, W(t) = r (cos θ ẑ + sin θ q̂)."""
    from .init import aligned_start
    from .kernel.exact import exact_run

    z = problem.target.ravel()
    zeta = float(np.linalg.norm(z))
    zhat = z / zeta
    times = spec.checkpoint_times()
    n = len(c["seed"])
    out = empty_results(spec, problem, (n,))
    out["steps"][:] = 0
    out["rhs_evals"][:] = 0
    out["imbalance"][:] = 0.0
    out["imbalance_drift"][:] = 0.0
    scale = np.linalg.norm(problem.target, 2)
    if spec.init.scheme == "aligned":  # W0 along Z (θ0 = 0): init.aligned_start
        w, norm = aligned_start(problem.target, depth=depth, width=width, init_norm=1.0).ravel(), np.full(n, scale)
    else:  # the random part of a start depends on the seed (and angle) only: drawn once per seed and process
        angles = c["init_angle"].tolist() if "init_angle" in c else [None] * n
        target = (problem.target.tobytes(), problem.target.shape, getattr(spec.problem, "seed", 0))
        drawn = [_direction(*target, seed, _exactly(angle)) for seed, angle in zip(c["seed"].tolist(), angles)]
        w, norm = np.array([d[0].ravel() for d in drawn]), np.array([d[1] for d in drawn], dtype=float)
    w0 = c["init_norm"].astype(float)[:, None] * scale * w / norm[:, None]  # = init.end_to_end_start, bit for bit
    r0 = np.sqrt(_row_dot(w0, w0))
    along = _row_dot(w0, zhat)
    ortho = w0 - along[:, None] * zhat
    size = np.sqrt(_row_dot(ortho, ortho))
    qhat = ortho / np.where(size > 0, size, 1.0)[:, None]
    theta0 = np.arctan2(size, along)  # well conditioned at 0 and π (arccos of the cosine is not)
    tte, r, cos, sin, excess = exact_run(depth, r0, zeta, theta0, spec.eps, times, spec.horizon, spec.stop_at_eps)
    reached = tte <= spec.horizon
    t_end = np.where(reached & spec.stop_at_eps, tte, spec.horizon)
    shown = times[None, :] <= t_end[:, None]
    floor = problem.loss_floor(1)
    out["excess_loss"] = np.where(shown, excess[:, :-1], np.nan)
    out["loss"] = out["excess_loss"] + floor
    out["w_init"] = w0.reshape(n, problem.dy, problem.dx)
    w_final = r[:, -1:] * (cos[:, -1:] * zhat + sin[:, -1:] * qhat)
    out["w_final"] = w_final.reshape(n, problem.dy, problem.dx)
    path = r[:, :-1, None] * (cos[:, :-1, None] * zhat + sin[:, :-1, None] * qhat[:, None, :])
    path = np.where(shown[..., None], path, np.nan).reshape(n, len(times), problem.dy, problem.dx)
    out.update(records(path, problem.target, spec.record))
    out["time_to_eps"] = np.where(reached, tte, np.nan)
    out["status"] = np.where(reached, Status.CONVERGED, Status.UNCONVERGED).astype(np.int8)
    return out


@functools.lru_cache(maxsize=1 << 16)
def _direction(target: bytes, shape: tuple, problem_seed: int, seed: int, angle: str | None):
    """init.start_direction of a rank-1 start, (w, ‖w‖₂), kept for the next batches of the process (the
    same seed's start at other depths and init_norms: the sweep's axes are crossed). ``angle`` by its bits
    (:func:`_exactly`)."""
    from .init import start_direction

    return start_direction(
        np.frombuffer(target).reshape(shape), problem_seed, seed, 1, None if angle is None else float.fromhex(angle)
    )


def _exactly(angle: float | None) -> str | None:
    """A key that tells −0.0 from 0.0 (equal, and equal in hash, as floats)."""
    return None if angle is None else float(angle).hex()


def _row_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Σ_j a[:, j] b[:, j] (``b`` a matrix) or Σ_j a[:, j] b[j] (a vector), summed in the order of j: each row's
    sum has the same bits however many rows there are — a cell's numbers never depend on its batch (BLAS's
    gemv, behind ``a @ b``, and NumPy's pairwise sums round a row differently with the rows around it)."""
    out = np.zeros(len(a))
    for j in range(a.shape[1]):
        out += a[:, j] * (b[:, j] if b.ndim == 2 else b[j])
    return out


def _imbalance(model, y0, y1):
    """max_j ‖D_j‖_F at t = 0 and max_j ‖D_j(end) − D_j(0)‖_F; zero for the induced model and N = 1."""
    n = len(y0)
    if not isinstance(model, kernel.Layerwise) or model.depth == 1:
        return np.zeros(n), np.zeros(n)

    def fro(d):
        return np.sqrt(np.sum(d.reshape(n, -1) ** 2, axis=1))

    with np.errstate(all="ignore"):
        d0, d1 = model.imbalance(y0), model.imbalance(y1)
        size = np.max([fro(a) for a in d0], axis=0)
        drift = np.max([fro(b - a) for a, b in zip(d0, d1)], axis=0)
    return size, drift
