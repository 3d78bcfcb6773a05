"""The flow kernel: models, and :func:`integrate` — NumPy arrays in and out, compiled inside.

A batch is an array ``(B, P)``, one trajectory per row; a model says how its parameters pack into a row
and gives compiled code its geometry (:class:`sweep.kernel.flows.Geometry`, ``InducedGeometry``). The right-hand
sides are in :mod:`sweep.kernel.flows`, the methods in :mod:`sweep.kernel.tableau`, the stepper in
:mod:`sweep.kernel.stepper`; the mathematics in ``docs/theory.md`` (§2 for the flows). No Ray, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from . import flows, shaped, stepper
from .tableau import Tableau

# 3: the compiled kernel (its rounding differs from version 2's in the last bits); 4: model exact sums each
# cell's dot products alone (in version 3 they went through BLAS, whose rounding of a cell depended on its batch)
KERNEL_VERSION = "4"


def tail_loss(target: np.ndarray, rank: int) -> float:
    """½ Σ_{k>r} s_k² — the part of ½‖W − Z‖² no rank-r product can remove (Eckart–Young)."""
    s = np.linalg.svd(target, compute_uv=False)
    return 0.5 * float(np.sum(s[rank:] ** 2))


class _Model:
    """What both models share: their flow and excess loss on (B, P) arrays, through compiled code; the loss
    (docs/theory.md §12): ½‖W − Z‖² by default, ½ tr((W − A)Σ(W − A)ᵀ) with ``sigma`` Σ (inputs not
    whitened, ``target`` A = C Σ⁻¹), or ½‖P_Ω(W − M)‖² with ``mask`` the 0/1 observed entries (target M)."""

    geometry: flows.Geometry | flows.InducedGeometry

    def _loss(self, sigma, mask):
        if sigma is not None and mask is not None:
            raise ValueError("a loss has a covariance or a mask, not both")
        self.sigma = None if sigma is None else np.asarray(sigma, dtype=float)
        self.mask = None if mask is None else (np.asarray(mask) != 0).astype(float)

    def _metric(self, flip: bool) -> tuple[int, np.ndarray]:
        """The geometry's loss code and metric (oriented: transposed with the network)."""
        if self.mask is not None:
            return flows.MASK, np.ascontiguousarray(self.mask.T if flip else self.mask)
        if self.sigma is not None:
            return (flows.LEFT if flip else flows.RIGHT), np.ascontiguousarray(self.sigma)
        return flows.PLAIN, np.zeros((1, 1))

    def _columns(self, y):
        y = np.asarray(y, dtype=float)
        return np.ascontiguousarray(y.T), np.zeros((self.geometry.work_rows, len(y)))

    def rhs(self, y: np.ndarray, out: np.ndarray) -> np.ndarray:
        """The flow at each row of ``y`` into ``out``; returns the excess losses."""
        cols, work = self._columns(y)
        flow, exc = np.empty_like(cols), np.empty(len(y))
        flows.rhs(self.geometry, cols, flow, 0, len(y), exc, work)
        out[...] = flow.T
        return exc

    def excess(self, y: np.ndarray) -> np.ndarray:
        """The excess loss of each row of ``y``: ½‖W − Z‖² − tail, or the general loss's (:class:`_Model`)."""
        cols, work = self._columns(y)
        exc = np.empty(len(y))
        flows.excess(self.geometry, cols, 0, len(y), exc, work)
        return exc


class Layerwise(_Model):
    """Gradient flow on every layer: dW_j/dt = (W_N⋯W_{j+1})ᵀ (Z − W) (W_{j−1}⋯W_1)ᵀ.

    ``dims = (d_0 = dx, d_1, …, d_N = dy)``; a row packs W_1 … W_N row-major. The products are taken
    from the narrow end, on the transposed network when dx < dy (:func:`sweep.kernel.flows._layerwise`)."""

    def __init__(self, dims, target: np.ndarray, tail: float = 0.0, sigma=None, mask=None):
        self._loss(sigma, mask)
        self.dims = tuple(int(d) for d in dims)
        self.dx, self.dy = self.dims[0], self.dims[-1]
        self.depth = len(self.dims) - 1
        self.shapes = [(self.dims[j + 1], self.dims[j]) for j in range(self.depth)]
        self.offsets = np.concatenate([[0], np.cumsum([r * c for r, c in self.shapes])]).astype(int)
        self.size = int(self.offsets[-1])
        self.target = np.asarray(target, dtype=float)
        self.tail = float(tail)
        self.flip = self.dims[0] < self.dims[-1]  # work on the transposed network: narrow end first

    @cached_property
    def geometry(self) -> flows.Geometry:
        n = self.depth
        order = range(n - 1, -1, -1) if self.flip else range(n)  # oriented layer i is W_{order[i]}(ᵀ)
        off = np.array([self.offsets[j] for j in order])
        cols = np.array([self.shapes[j][1] for j in order])
        rs, cs = (np.ones(n, int), cols) if self.flip else (cols, np.ones(n, int))
        d = np.array(self.dims[::-1] if self.flip else self.dims)
        r = d[n]
        s_size = [r * d[i] for i in range(n - 1)]  # S_0 … S_{N−2}; S_{N−1} is the last layer itself
        s_off = np.concatenate([[0], np.cumsum(s_size)]).astype(int)
        e_off = int(s_off[-1])
        v_off = np.concatenate([[0], e_off + r * d[0] + np.cumsum([0] + [d[i] * r for i in range(1, n)])]).astype(int)
        target = np.ascontiguousarray(self.target.T if self.flip else self.target)
        loss, metric = self._metric(self.flip)
        d_off = int(v_off[-1])  # D = A − W of the general losses, after everything else
        return flows.Geometry(
            depth=n,
            dims=d.astype(np.int64),
            off=off.astype(np.int64),
            rs=rs.astype(np.int64),
            cs=cs.astype(np.int64),
            target=target,
            tail=self.tail,
            half_z2=0.5 * float(np.sum(target**2)),
            s_off=s_off[:-1] if n > 1 else np.zeros(1, np.int64),
            e_off=e_off,
            v_off=v_off[:-1] if n > 1 else np.zeros(1, np.int64),
            work_rows=d_off + (r * int(d[0]) if loss != flows.PLAIN else 0),
            loss=loss,
            metric=metric,
            d_off=d_off,
            flip=self.flip,
            **shaped.none(),
        )

    def layers(self, y: np.ndarray) -> list[np.ndarray]:
        """Views (B, d_j, d_{j−1}) of the layers packed in ``y`` (B, P)."""
        b = y.shape[0]
        return [y[:, self.offsets[j] : self.offsets[j + 1]].reshape(b, *self.shapes[j]) for j in range(self.depth)]

    def pack(self, layers) -> np.ndarray:
        b = layers[0].shape[0]
        return np.concatenate([w.reshape(b, -1) for w in layers], axis=1)

    def product(self, y: np.ndarray) -> np.ndarray:
        """W = W_N⋯W_1 for each row, (B, dy, dx)."""
        ws = self.layers(y)
        w = ws[0]
        for layer in ws[1:]:
            w = layer @ w
        return w.copy()

    def imbalance(self, y: np.ndarray) -> list[np.ndarray]:
        """D_j = W_{j+1}ᵀW_{j+1} − W_jW_jᵀ for j = 1…N−1."""
        ws = self.layers(y)
        return [
            ws[j + 1].transpose(0, 2, 1) @ ws[j + 1] - ws[j] @ ws[j].transpose(0, 2, 1) for j in range(self.depth - 1)
        ]


class Induced(_Model):
    """The end-to-end flow of balanced networks (docs/theory.md §2, the paper's (17)):
    dW/dt = −U[(Uᵀ(W − Z)V) ∘ K]Vᵀ, K_ab = Σ_i s_a^{2(N−i)/N} s_b^{2(i−1)/N}, from the full SVD of W,
    with numerically-zero singular values set to exactly 0 and 0⁰ = 1.

    ``rank`` (the narrowest layer of the network it stands for) sets s_k = 0 for k > rank: the exact
    flow keeps rank(W) ≤ rank, but for N = 2 the directions beyond it are unstable (strict saddles)
    and round-off alone would otherwise grow a rank the network cannot have. On those directions the
    flow is zero, so nothing would damp what a Runge–Kutta step leaves there (about the tolerance),
    and the excess loss depends on it to first order: :meth:`project` keeps the state on the rank-r
    set, and the stepper applies it to every state it reports. The error weights measure W in the
    scale of the layers it stands for (:func:`sweep.kernel.flows.weight_floor`)."""

    def __init__(
        self, depth: int, target: np.ndarray, tail: float = 0.0, rank: int | None = None, sigma=None, mask=None
    ):
        self._loss(sigma, mask)
        self.depth = int(depth)
        self.rank = rank
        self.target = np.asarray(target, dtype=float)
        self.dy, self.dx = self.target.shape
        self.size = self.dy * self.dx
        self.tail = float(tail)

    @cached_property
    def geometry(self) -> flows.InducedGeometry:
        rank = min(self.dx, self.dy) if self.rank is None else int(self.rank)
        loss, metric = self._metric(False)
        return flows.InducedGeometry(
            depth=self.depth,
            dims=np.array([self.dx, self.dy], np.int64),
            target=np.ascontiguousarray(self.target),
            tail=self.tail,
            half_z2=0.5 * float(np.sum(self.target**2)),
            work_rows=0 if loss == flows.PLAIN else self.size,  # the gradient of the general losses
            loss=loss,
            metric=metric,
            **shaped.none(),
            rank=rank,
        )

    def product(self, y: np.ndarray) -> np.ndarray:
        return y.reshape(y.shape[0], self.dy, self.dx)

    def project(self, y: np.ndarray) -> np.ndarray:
        """Replace each W in ``y`` (in place) by its best rank-r approximation (Eckart–Young); nothing to do
        unless the network is narrower than min(dx, dy). Non-finite states are left alone."""
        cols = np.ascontiguousarray(np.asarray(y, dtype=float).T)
        flows.project(self.geometry, cols, 0, len(y))
        y[...] = cols.T
        return y


# --------------------------------------------------------------------------------------------------
# Integration
# --------------------------------------------------------------------------------------------------


@dataclass
class Result:
    """Per-trajectory results of :func:`integrate` (B first)."""

    excess: np.ndarray  # (B, C) excess loss at the checkpoints (NaN after a stop)
    time_to_eps: np.ndarray  # (B,) first time with excess ≤ eps, NaN if never
    status: np.ndarray  # (B,) int8
    steps: np.ndarray  # (B,) accepted steps
    rhs_evals: np.ndarray  # (B,)
    y_final: np.ndarray  # (B, P) state at the end (at time_to_eps when stopped there)
    t_final: np.ndarray  # (B,)
    w: np.ndarray  # (B, C, dy, dx) the end-to-end matrix at the checkpoints (NaN after a stop)


BLOCK_BYTES = 160 * 2**10  # state per block (each of the s + 5 work arrays), within the limits below;
MIN_BLOCK, MAX_BLOCK = 64, 256  # measured in bench/kernel_throughput.py: shorter loops cost more than cache misses


def block_width(size: int) -> int:
    """Trajectories per block for states of ``size`` parameters: about BLOCK_BYTES of state, a power of two
    plus one tile — an odd number of tiles, so that a tile's rows, a row stride apart, fall in different
    sets of the cache instead of evicting each other (a power-of-two stride made the shaped flow 2x slower)."""
    width = 2 ** int(np.round(np.log2(max(1.0, BLOCK_BYTES / (8 * max(1, size))))))
    return int(np.clip(width, MIN_BLOCK, MAX_BLOCK)) + flows.LANES


def integrate(
    model,
    y0: np.ndarray,
    method: Tableau,
    *,
    horizon: float,
    checkpoints: np.ndarray,
    eps: float,
    stop_at_eps: bool = False,
    step: float | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    max_steps: int = 1_000_000,
    block: int | None = None,
) -> Result:
    """Integrate each row of ``y0`` (B, P) under ``model`` over [0, horizon].

    Fixed-step methods advance on the grid t_n = n·step (the last step clipped to the horizon); adaptive
    ones control the local error per trajectory. Checkpoints and the first crossing of ``excess = eps``
    are read from each step's interpolant. ``block``: trajectories per block (default
    :func:`block_width`); a trajectory's numbers never depend on it, nor on its companions."""
    if method.adaptive and (rtol is None or atol is None):
        raise ValueError("adaptive methods need rtol and atol")
    if not method.adaptive and not (step and step > 0):
        raise ValueError("fixed-step methods need step > 0")
    y0 = np.ascontiguousarray(y0, dtype=float)
    nb, size = y0.shape
    tc = np.ascontiguousarray(checkpoints, dtype=float)
    n_steps = 0
    if not method.adaptive:
        n_steps = round(horizon / step)
        if abs(n_steps * step - horizon) > 1e-9 * step:
            n_steps = int(np.ceil(horizon / step))
    opt = stepper.Options(
        float(horizon),
        float(step or 0.0),
        int(n_steps),
        float(rtol or 0.0),
        float(atol or 0.0),
        float(eps),
        bool(stop_at_eps),
        int(max_steps),
    )
    out = stepper.Output(
        np.full((nb, len(tc)), np.nan),
        np.full((nb, size), np.nan),
        np.full(nb, np.nan),
        np.zeros(nb),
        np.zeros((3, nb), np.int64),
        np.full((nb, len(tc), model.dy * model.dx), np.nan),
    )
    width = block or block_width(size)
    euler = not method.adaptive and len(method.b) == 1 and method.b[0] == 1.0  # stepper._cruise's steps
    g = shaped.specialize(model.geometry, width, cruise=euler)
    blk = stepper.block_arrays(size, max(1, g.work_rows), method.stages, width)
    stepper.integrate(g, _compiled(method), opt, y0, tc, out, blk)
    status, steps, evals = out.counts
    w = out.w.reshape(nb, len(tc), model.dy, model.dx)
    return Result(out.excess, out.time_to_eps, status.astype(np.int8), steps, evals, out.y_final, out.t_final, w)


def _compiled(method: Tableau) -> stepper.Method:
    e = np.zeros(method.stages + 1) if method.e is None else method.e
    p = np.zeros((method.stages + 1, 0)) if method.p is None else method.p
    return stepper.Method(
        np.ascontiguousarray(method.a, dtype=float),
        method.b.astype(float),
        e.astype(float),
        np.ascontiguousarray(p, dtype=float),
        bool(method.adaptive),
        int(method.error_order),
    )
