"""Problem data: whitened inputs X (dx×m, X Xᵀ = I), outputs Y (dy×m), target Z = Y Xᵀ."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .spec import SpecError


@dataclass(frozen=True)
class Problem:
    x: np.ndarray  # (dx, m), whitened
    y: np.ndarray  # (dy, m)
    whitened_from_file: bool = False

    @property
    def target(self) -> np.ndarray:
        return self.y @ self.x.T

    @property
    def dx(self) -> int:
        return self.x.shape[0]

    @property
    def dy(self) -> int:
        return self.y.shape[0]

    @property
    def m(self) -> int:
        return self.x.shape[1]

    def digest(self) -> str:
        h = hashlib.sha256()
        for a in (self.x, self.y):
            h.update(np.ascontiguousarray(a, dtype="<f8").tobytes())
        return h.hexdigest()[:16]

    def singular_values(self) -> np.ndarray:
        return np.linalg.svd(self.target, compute_uv=False)


def whiten(x: np.ndarray) -> np.ndarray:
    """Symmetric whitening (X Xᵀ)^{−1/2} X, so that X Xᵀ = I."""
    evals, evecs = np.linalg.eigh(x @ x.T)
    return (evecs / np.sqrt(evals)) @ evecs.T @ x


def synthetic(m: int, dx: int, dy: int, seed: int) -> Problem:
    """Random whitened data: X has orthonormal rows (X Xᵀ = I exactly up to rounding), Y Gaussian."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x1F10]))
    q, _ = np.linalg.qr(rng.standard_normal((m, dx)))
    y = rng.standard_normal((dy, m))
    return Problem(x=np.ascontiguousarray(q.T), y=y)


def from_file(path: str) -> Problem:
    """Arrays X (dx×m) and Y (dy×m) from an .npz file; X is whitened if it is not already."""
    field = "problem.data"
    p = Path(path)
    if not p.is_file():
        raise SpecError(field, f"no such file: {p}")
    try:
        with np.load(p, allow_pickle=False) as f:
            arrays = {k: np.asarray(f[k]) for k in f.files}
    except Exception as exc:  # noqa: BLE001 — any unreadable file is the same user error
        raise SpecError(field, f"cannot read {p} as .npz: {exc}") from None
    for key in ("X", "Y"):
        if key not in arrays:
            raise SpecError(field, f"{p.name} has no array {key} (found: {', '.join(arrays) or 'none'})")
        a = arrays[key]
        if a.ndim != 2 or not np.issubdtype(a.dtype, np.number):
            raise SpecError(field, f"{key} must be a 2-D numeric array, got shape {a.shape}, dtype {a.dtype}")
        if not np.all(np.isfinite(a)):
            raise SpecError(field, f"{key} has non-finite entries")
    x, y = arrays["X"].astype(float), arrays["Y"].astype(float)
    dx, m = x.shape
    if y.shape[1] != m:
        raise SpecError(field, f"X is {dx}×{m} but Y is {y.shape[0]}×{y.shape[1]}: both need m = {m} columns (samples)")
    if m < dx:
        raise SpecError(field, f"needs at least as many samples as inputs to whiten (m = {m} < dx = {dx})")
    gram = x @ x.T
    if np.allclose(gram, np.eye(dx), atol=1e-10):
        return Problem(x=x, y=y)
    if np.linalg.matrix_rank(gram) < dx:
        raise SpecError(field, f"X X^T is singular (rank {np.linalg.matrix_rank(gram)} < dx = {dx}): cannot whiten")
    return Problem(x=whiten(x), y=y, whitened_from_file=True)


def build(problem_spec: dict) -> Problem:
    if "data" in problem_spec:
        return from_file(problem_spec["data"])
    return synthetic(problem_spec["m"], problem_spec["dx"], problem_spec["dy"], problem_spec["seed"])
