"""Problem data: whitened inputs X (dx×m, X Xᵀ = I), outputs Y (dy×m), target Z = Y Xᵀ."""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib import format as npformat

from .spec import MAX_DATA_BYTES, SpecError, data_bytes


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

    def digest(self) -> str:
        h = hashlib.sha256()
        for a in (self.x, self.y):
            h.update(np.ascontiguousarray(a, dtype="<f8").tobytes())
        return h.hexdigest()[:16]


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


def _headers(p: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of each array of the .npz file ``p``, from the .npy headers inside the zip
    (nothing is decompressed beyond them): sizes are checked before any array is loaded."""
    field = "problem.data"
    with p.open("rb") as f:
        magic = f.read(6)
    if magic == b"\x93NUMPY":
        raise SpecError(
            field, f"{p.name} is a single .npy array; save X and Y together with numpy.savez(path, X=X, Y=Y)"
        )
    if not zipfile.is_zipfile(p):
        raise SpecError(field, f"cannot read {p} as .npz: not a zip archive (save with numpy.savez(path, X=X, Y=Y))")
    out = {}
    with zipfile.ZipFile(p) as z:
        for info in z.infolist():
            if not info.filename.endswith(".npy"):
                continue
            key = info.filename[:-4]
            with z.open(info) as member:
                version = npformat.read_magic(member)
                if version == (1, 0):
                    shape, _, dtype = npformat.read_array_header_1_0(member)
                elif version == (2, 0):
                    shape, _, dtype = npformat.read_array_header_2_0(member)
                else:
                    raise SpecError(
                        field, f"{key} is stored as .npy version {version[0]}.{version[1]}; save it with numpy.savez"
                    )
            out[key] = (tuple(shape), np.dtype(dtype))
    return out


def from_file(path: str) -> Problem:
    """Arrays X (dx×m) and Y (dy×m) from an .npz file; X is whitened if it is not already.
    Shapes and dtypes are checked from the file's headers before the arrays are loaded."""
    field = "problem.data"
    p = Path(path)
    if p.is_dir():
        raise SpecError(field, f"{p} is a folder, not an .npz file")
    if not p.is_file():
        raise SpecError(field, f"no such file: {p}" if not p.exists() else f"{p} is not a regular file")
    try:
        headers = _headers(p)
    except SpecError:
        raise
    except Exception as exc:  # noqa: BLE001 — any unreadable file is the same user error
        raise SpecError(field, f"cannot read {p} as .npz: {_first_line(exc)}") from None
    for key in ("X", "Y"):
        if key not in headers:
            raise SpecError(field, f"{p.name} has no array {key} (found: {', '.join(headers) or 'none'})")
        shape, dtype = headers[key]
        if dtype.kind == "c":
            raise SpecError(field, f"{key} is complex ({dtype}); the data must be real")
        if len(shape) != 2 or dtype.kind not in "iuf":
            raise SpecError(field, f"{key} must be a 2-D real numeric array, got shape {shape}, dtype {dtype}")
        if 0 in shape:
            raise SpecError(
                field, f"{key} is empty (shape {shape[0]}×{shape[1]}): it needs at least one row and one sample"
            )
    (dx, m), (dy, my) = headers["X"][0], headers["Y"][0]
    if my != m:
        raise SpecError(field, f"X is {dx}×{m} but Y is {dy}×{my}: both need m = {m} columns (samples)")
    if m < dx:
        raise SpecError(field, f"needs at least as many samples as inputs to whiten (m = {m} < dx = {dx})")
    size = data_bytes(m, dx, dy)
    if size > MAX_DATA_BYTES:
        raise SpecError(
            field,
            f"X ({dx:,}×{m:,}) and Y ({dy:,}×{m:,}) would take {size / 2**20:,.0f} MiB "
            f"(limit {MAX_DATA_BYTES / 2**20:.0f} MiB)",
        )
    try:
        with np.load(p, allow_pickle=False) as f:
            arrays = {k: np.asarray(f[k]) for k in ("X", "Y")}
    except Exception as exc:  # noqa: BLE001 — a torn or lying member is the same user error
        raise SpecError(field, f"cannot read {p} as .npz: {_first_line(exc)}") from None
    for key, a in arrays.items():
        if a.shape != headers[key][0]:
            raise SpecError(field, f"{key} cannot be read: shape {a.shape}, its header says {headers[key][0]}")
        if not np.all(np.isfinite(a)):
            raise SpecError(field, f"{key} has non-finite entries")
    x, y = arrays["X"].astype(float), arrays["Y"].astype(float)
    with np.errstate(all="ignore"):
        gram = x @ x.T
        y_square = float(np.sum(y * y))
    big = float(np.max(np.abs(x)))
    if not np.all(np.isfinite(gram)):
        raise SpecError(field, f"X's entries (up to {big:.3g}) overflow X Xᵀ: rescale X")
    if not np.isfinite(y_square) or y_square > 1e300:
        raise SpecError(
            field, f"Y's entries (up to {float(np.max(np.abs(y))):.3g}) overflow the loss ½‖Y − W X‖²: rescale Y"
        )
    if np.allclose(gram, np.eye(dx), atol=1e-10):
        return Problem(x=x, y=y)
    rank = np.linalg.matrix_rank(gram)
    if rank < dx:
        raise SpecError(field, f"X X^T is singular (rank {rank} < dx = {dx}): cannot whiten")
    with np.errstate(all="ignore"):
        xw = whiten(x)
        ok = bool(np.all(np.isfinite(xw))) and np.allclose(xw @ xw.T, np.eye(dx), atol=1e-6)
    if not ok:
        raise SpecError(field, f"X X^T is too ill-conditioned to whiten (entries of X up to {big:.3g}): rescale X")
    return Problem(x=xw, y=y, whitened_from_file=True)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def build(problem_spec: dict) -> Problem:
    if "data" in problem_spec:
        return from_file(problem_spec["data"])
    return synthetic(problem_spec["m"], problem_spec["dx"], problem_spec["dy"], problem_spec["seed"])
