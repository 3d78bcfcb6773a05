"""Problem data (docs/theory.md §1, §12).

Regression: inputs X (dx×m), outputs Y (dy×m), loss ½‖W X − Y‖². Whitened (the default: X Xᵀ = I, the
paper's setting) the loss is ½‖W − Z‖² + const with the target Z = Y Xᵀ; otherwise the flow needs the
input covariance Σ = X Xᵀ and the target map A = Y Xᵀ Σ⁻¹, and the loss is ½ tr((W − A)Σ(W − A)ᵀ) + const.
Matrix completion: a rank-r ground truth M (n×n) seen on a fixed set Ω of entries, loss ½‖P_Ω(W − M)‖².
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib import format as npformat

from .kernel import tail_loss
from .spec import MAX_DATA_BYTES, SpecError, data_bytes, observed_count


@dataclass(frozen=True)
class Problem:
    """Regression data ``x``, ``y`` (whitened unless ``whitened`` is False), or a completion problem
    (``truth`` M and the 0/1 ``observed`` entries). What the flow needs of either: :attr:`target`,
    :attr:`sigma`, :attr:`mask`, :meth:`tail` and :meth:`loss_floor`."""

    x: np.ndarray | None = None  # (dx, m)
    y: np.ndarray | None = None  # (dy, m)
    whitened_from_file: bool = False
    whitened: bool = True
    truth: np.ndarray | None = None  # completion: M (n × n)
    observed: np.ndarray | None = None  # completion: 1 where an entry of M is seen, else 0 (int8)

    @property
    def completion(self) -> bool:
        return self.truth is not None

    @property
    def target(self) -> np.ndarray:
        """The map the network learns: Z = Y Xᵀ (whitened), A = Y Xᵀ Σ⁻¹ (the loss's minimizer), or M."""
        if self.completion:
            return self.truth
        if self.whitened:
            return self.y @ self.x.T
        return np.linalg.solve(self.sigma, (self.y @ self.x.T).T).T

    @property
    def sigma(self) -> np.ndarray | None:
        """Σ = X Xᵀ of regression data not whitened; None where the loss has no input covariance."""
        return None if self.completion or self.whitened else self.x @ self.x.T

    @property
    def mask(self) -> np.ndarray | None:
        return None if self.observed is None else self.observed.astype(float)

    @property
    def dx(self) -> int:
        return self.truth.shape[1] if self.completion else self.x.shape[0]

    @property
    def dy(self) -> int:
        return self.truth.shape[0] if self.completion else self.y.shape[0]

    def tail(self, rank: int) -> float:
        """The part of the loss above its unconstrained minimum that no rank-``rank`` product removes:
        ½Σ_{k>r} s_k² of Z (whitened) or of A Σ^{1/2}; 0 for completion (L* = 0 is taken, which holds when the
        network's rank is at least M's — docs/theory.md §12)."""
        if self.completion:
            return 0.0
        if self.whitened:
            return tail_loss(self.target, rank)
        evals, evecs = np.linalg.eigh(self.sigma)
        root = (evecs * np.sqrt(np.maximum(evals, 0.0))) @ evecs.T
        return tail_loss(self.target @ root, rank)

    def loss_floor(self, rank: int) -> float:
        """L*: the global minimum of the training loss over products of rank ≤ ``rank``."""
        if self.completion:
            return 0.0
        if self.whitened:  # ½Σ_{k>r} s_k² + ½(‖Y‖² − ‖Z‖²), as linflow always computed it
            z = self.target
            return self.tail(rank) + 0.5 * (float(np.sum(self.y**2)) - float(np.sum(z**2)))
        return self.tail(rank) + 0.5 * float(np.sum((self.y - self.target @ self.x) ** 2))

    def digest(self) -> str:
        h = hashlib.sha256()
        for a in (self.truth, self.observed) if self.completion else (self.x, self.y):
            h.update(np.ascontiguousarray(a, dtype="<f8").tobytes())
        return h.hexdigest()[:16]

    def stored(self) -> dict:
        """The problem's arrays as the store keeps them: (dims, values, attrs)."""
        if self.completion:
            return {
                "target": (("out", "in"), self.truth, {"long_name": "ground truth M (all entries)"}),
                "observed": (("out", "in"), self.observed, {"long_name": "1 where M is observed (Ω), else 0"}),
            }
        if self.whitened:
            target, x = "target Z = Y Xᵀ", "inputs X (whitened, X Xᵀ = I)"
        else:
            target, x = "target map A = Y Xᵀ Σ⁻¹, Σ = X Xᵀ (the loss's minimizer)", "inputs X (not whitened)"
        return {
            "target": (("out", "in"), self.target, {"long_name": target}),
            "x": (("in", "sample"), self.x, {"long_name": x}),
            "y": (("out", "sample"), self.y, {"long_name": "outputs Y"}),
        }


def whiten(x: np.ndarray) -> np.ndarray:
    """Symmetric whitening (X Xᵀ)^{−1/2} X, so that X Xᵀ = I."""
    evals, evecs = np.linalg.eigh(x @ x.T)
    return (evecs / np.sqrt(evals)) @ evecs.T @ x


def synthetic(m: int, dx: int, dy: int, seed: int, whiten=None, input_spectrum=None, target_spectrum=None) -> Problem:
    """Random data. Whitened by default: X has orthonormal rows (X Xᵀ = I up to rounding). With
    ``input_spectrum`` λ (or ``whiten: false``) X Xᵀ = Q diag(λ) Qᵀ, Q random (λ: a random spectrum, X
    Gaussian / √m). Y is Gaussian, or Y = A X with ``target_spectrum`` s: A = U diag(s) Vᵀ, U and V random
    orthonormal (so Z = A when whitened). Every draw comes from ``seed``; today's whitened data are
    unchanged (same stream, drawn first)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x1F10]))
    q, _ = np.linalg.qr(rng.standard_normal((m, dx)))
    y = rng.standard_normal((dy, m))
    x = np.ascontiguousarray(q.T)
    whitened = not (whiten is False or input_spectrum is not None)
    extra = np.random.default_rng(np.random.SeedSequence([seed, 0x1F11]))  # the new draws: a stream of their own
    if input_spectrum is not None:
        basis, _ = np.linalg.qr(extra.standard_normal((dx, dx)))
        x = (basis * np.sqrt(np.asarray(input_spectrum, dtype=float))) @ basis.T @ x
    elif not whitened:
        x = extra.standard_normal((dx, m)) / np.sqrt(m)
    if target_spectrum is not None:
        k = len(target_spectrum)
        u, _ = np.linalg.qr(extra.standard_normal((dy, k)))
        v, _ = np.linalg.qr(extra.standard_normal((dx, k)))
        y = (u * np.asarray(target_spectrum, dtype=float)) @ v.T @ x
    return Problem(x=x, y=y, whitened=whitened)


def completion(n: int, rank: int, observed: float, seed: int) -> Problem:
    """A random rank-``rank`` ground truth M = U Vᵀ (n×n, Gaussian factors, scaled to ‖M‖_F = n: entries of
    unit mean square) and a uniformly random set Ω of round(observed·n²) entries, both from ``seed``."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xC0DE]))
    m = rng.standard_normal((n, rank)) @ rng.standard_normal((rank, n))
    m *= n / np.linalg.norm(m)
    seen = np.zeros(n * n, np.int8)
    seen[rng.choice(n * n, observed_count(n, observed), replace=False)] = 1
    return Problem(truth=m, observed=seen.reshape(n, n))


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


def from_file(path: str, whiten_inputs: bool = True) -> Problem:
    """Arrays X (dx×m) and Y (dy×m) from an .npz file; X is whitened if it is not already (with
    ``whiten_inputs`` False, X is kept as it is: its covariance X Xᵀ must be invertible).
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
    if whiten_inputs and np.allclose(gram, np.eye(dx), atol=1e-10):
        return Problem(x=x, y=y)
    rank = np.linalg.matrix_rank(gram)
    if rank < dx:
        verb = "whiten" if whiten_inputs else "fit"
        raise SpecError(field, f"X X^T is singular (rank {rank} < dx = {dx}): cannot {verb}")
    if not whiten_inputs:
        if np.linalg.cond(gram) > 1e12:
            raise SpecError(field, f"X X^T is too ill-conditioned (condition number {np.linalg.cond(gram):.3g} > 1e12)")
        return Problem(x=x, y=y, whitened=False)
    with np.errstate(all="ignore"):
        xw = whiten(x)
        ok = bool(np.all(np.isfinite(xw))) and np.allclose(xw @ xw.T, np.eye(dx), atol=1e-6)
    if not ok:
        raise SpecError(field, f"X X^T is too ill-conditioned to whiten (entries of X up to {big:.3g}): rescale X")
    return Problem(x=xw, y=y, whitened_from_file=True)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def build(problem_spec: dict) -> Problem:
    p = problem_spec
    if p.get("kind") == "completion":
        return completion(p["n"], p["rank"], p["observed"], p["seed"])
    if "data" in p:
        return from_file(p["data"], whiten_inputs=p.get("whiten") is not False)
    return synthetic(
        p["m"], p["dx"], p["dy"], p["seed"], p.get("whiten"), p.get("input_spectrum"), p.get("target_spectrum")
    )
