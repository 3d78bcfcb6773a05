"""An independent oracle for the general losses of tests/test_problems.py: plain NumPy from the formulas,
nothing from ``sweep``.

* Regression on data: L(W) = ½‖W X − Y‖²_F (X: dx × n, Y: dy × n), gradient (W X − Y) Xᵀ — from the data,
  not from Σ = X Xᵀ and C = Y Xᵀ; the least rank-r loss L* by Eckart–Young on Y V (X = U S Vᵀ thin).
* Matrix completion: L(W) = ½‖P_Ω(W − M)‖²_F, gradient P_Ω(W − M).
* The layerwise flow dW_j/dt = −(W_N⋯W_{j+1})ᵀ ∇L(W) (W_{j−1}⋯W_1)ᵀ and the induced flow
  dW/dt = −Σ_j (W Wᵀ)^{(N−j)/N} ∇L(W) (Wᵀ W)^{(j−1)/N}, powers from eigh of the Gram matrices.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce

import numpy as np
from scipy.integrate import solve_ivp

REF_TOL = {"method": "DOP853", "rtol": 1e-12, "atol": 1e-14}


def orthonormal(rng, rows, cols):
    """A random rows × cols matrix with orthonormal columns (rows ≥ cols)."""
    q, r = np.linalg.qr(rng.standard_normal((rows, cols)))
    return q * np.sign(np.diag(r))


# --------------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------------


@dataclass
class Regression:
    """½‖W X − Y‖²_F for data X (dx × n), Y (dy × n)."""

    x: np.ndarray
    y: np.ndarray

    @property
    def shape(self):
        return self.y.shape[0], self.x.shape[0]

    @property
    def sigma(self):
        return self.x @ self.x.T

    @property
    def target(self):
        """A = C Σ^{-1}, the unconstrained minimizer (Σ symmetric: A = solve(Σ, Cᵀ)ᵀ)."""
        return np.linalg.solve(self.sigma, (self.y @ self.x.T).T).T

    def loss(self, w):
        return 0.5 * float(np.sum((w @ self.x - self.y) ** 2))

    def grad(self, w):
        return (w @ self.x - self.y) @ self.x.T

    def least(self, rank):
        """min over rank(W) ≤ r of L: with X = U S Vᵀ (thin, S invertible), ‖W X − Y‖² = ‖W U S − Y V‖² +
        ‖Y (I − V Vᵀ)‖², and W ↦ W U S is a rank-preserving bijection: Eckart–Young on Y V."""
        _, _, vt = np.linalg.svd(self.x, full_matrices=False)
        yv = self.y @ vt.T
        s = np.linalg.svd(yv, compute_uv=False)
        return 0.5 * float(np.sum(s[rank:] ** 2)) + 0.5 * float(np.sum((self.y - yv @ vt) ** 2))

    def minimizer(self, rank):
        """A minimizer of rank ≤ r (the reduced-rank regression solution), from the data."""
        u, s, vt = np.linalg.svd(self.x, full_matrices=False)
        p, q, rt = np.linalg.svd(self.y @ vt.T, full_matrices=False)
        b = (p[:, :rank] * q[:rank]) @ rt[:rank]
        return b @ (u / s).T

    def tail(self, rank):
        """The kernel's tail ½ Σ_{k>r} s_k(A Σ^{1/2})², Σ^{1/2} from eigh."""
        lam, q = np.linalg.eigh(self.sigma)
        root = (q * np.sqrt(lam)) @ q.T
        s = np.linalg.svd(self.target @ root, compute_uv=False)
        return 0.5 * float(np.sum(s[rank:] ** 2))


@dataclass
class Completion:
    """½‖P_Ω(W − M)‖²_F with a 0/1 mask."""

    m: np.ndarray
    mask: np.ndarray

    @property
    def shape(self):
        return self.m.shape

    def loss(self, w):
        return 0.5 * float(np.sum((self.mask * (w - self.m)) ** 2))

    def grad(self, w):
        return self.mask * (w - self.m)

    def least(self, rank):
        return 0.0  # the kernel's convention for masks: tail = 0, excess = L(W)


def regression(rng, dx, dy, cond=30.0, n=None, noise=1e-3):
    """Data with Σ = X Xᵀ of condition number ``cond`` (eigenvalues log-spaced in [1/cond, 1]), Y = A0 X plus
    a little noise (so that L(A) > 0 but the excess dominates at random states)."""
    n = n or 3 * dx + 2
    lam = np.geomspace(1.0, 1.0 / cond, dx)
    x = (orthonormal(rng, dx, dx) * np.sqrt(lam)) @ orthonormal(rng, n, dx).T
    a0 = rng.standard_normal((dy, dx)) / np.sqrt(dx)
    return Regression(x, a0 @ x + noise * rng.standard_normal((dy, n)))


def completion(rng, dx, dy, observed=0.5):
    """A random target and a mask with about ``observed`` of the entries (at least one)."""
    mask = (rng.random((dy, dx)) < observed).astype(float)
    mask.flat[rng.integers(mask.size)] = 1.0
    return Completion(rng.standard_normal((dy, dx)) / np.sqrt(dx), mask)


# --------------------------------------------------------------------------------------------------
# Networks and flows
# --------------------------------------------------------------------------------------------------


def product(layers):
    """W = W_N⋯W_1 for layers [W_1, …, W_N]."""
    return reduce(lambda w, layer: layer @ w, layers[1:], layers[0])


def layerwise_flow(problem, layers):
    """[dW_1/dt, …, dW_N/dt] = −(W_N⋯W_{j+1})ᵀ ∇L(W) (W_{j−1}⋯W_1)ᵀ, empty products the identity."""
    g = problem.grad(product(layers))
    out = []
    for j in range(len(layers)):
        left = product(layers[j + 1 :]) if j + 1 < len(layers) else np.eye(g.shape[0])
        right = product(layers[:j]) if j > 0 else np.eye(g.shape[1])
        out.append(-left.T @ g @ right.T)
    return out


def gram_power(gram, p, cutoff):
    """gram^p for a symmetric PSD matrix: eigenvalues below ``cutoff`` are exactly 0, and gram^0 = I."""
    if p == 0:
        return np.eye(len(gram))
    lam, q = np.linalg.eigh(gram)
    lam = np.where(lam > cutoff, lam, 0.0)
    return (q * lam**p) @ q.T


def induced_flow(problem, w, depth, rel_cutoff=1e-10):
    """dW/dt = −Σ_{j=1}^N (W Wᵀ)^{(N−j)/N} ∇L(W) (Wᵀ W)^{(j−1)/N}; Gram eigenvalues below rel_cutoff·λ_max
    (singular values below 1e-5 s_max, far above round-off) count as 0."""
    g = problem.grad(w)
    cutoff = rel_cutoff * max(np.linalg.norm(w, 2) ** 2, 1e-300)
    wwt, wtw = w @ w.T, w.T @ w
    return -sum(
        gram_power(wwt, (depth - j) / depth, cutoff) @ g @ gram_power(wtw, (j - 1) / depth, cutoff)
        for j in range(1, depth + 1)
    )


def dims_of(layers):
    return (layers[0].shape[1], *(w.shape[0] for w in layers))


def flatten(layers):
    return np.concatenate([w.ravel() for w in layers])


def unflatten(y, dims):
    layers, at = [], 0
    for a, b in zip(dims[:-1], dims[1:]):
        layers.append(y[at : at + a * b].reshape(b, a))
        at += a * b
    return layers


def gaussian_start(rng, dims, scale=1.0):
    """Independent layers N(0, 1/d_{j−1}), times scale^{1/N}."""
    n = len(dims) - 1
    return [scale ** (1 / n) * rng.standard_normal((b, a)) / np.sqrt(a) for a, b in zip(dims[:-1], dims[1:])]


def balanced_start(rng, dims, norm=1.0):
    """W_j = Q_j S^{1/N} Q_{j−1}ᵀ with Q_0 = V, Q_N = U of a random rank-r W0 = U S Vᵀ (r the narrowest
    width, ‖W0‖₂ = norm) and random orthonormal frames Q_j (d_j × r) in between: W_{j+1}ᵀ W_{j+1} = W_j W_jᵀ."""
    n, r = len(dims) - 1, min(dims)
    s = np.sort(rng.uniform(0.3, 1.0, r))[::-1] * norm
    s[0] = norm
    frames = [orthonormal(rng, dims[0], r)] + [orthonormal(rng, d, r) for d in dims[1:-1]]
    frames.append(orthonormal(rng, dims[-1], r))
    root = s ** (1.0 / n)
    return [(frames[j + 1] * root) @ frames[j].T for j in range(n)]


def solve_layerwise(problem, layers, times):
    """W(t) (len(times), dy, dx) of the layerwise flow by scipy, and the layers at the last time."""
    dims = dims_of(layers)
    f = lambda t, y: flatten(layerwise_flow(problem, unflatten(y, dims)))
    sol = solve_ivp(f, (0.0, times[-1]), flatten(layers), t_eval=times, **REF_TOL)
    assert sol.success, sol.message
    return np.stack([product(unflatten(y, dims)) for y in sol.y.T]), unflatten(sol.y[:, -1], dims)


def solve_induced(problem, w0, depth, times):
    """W(t) (len(times), dy, dx) of the induced flow by scipy."""
    shape = w0.shape
    f = lambda t, y: induced_flow(problem, y.reshape(shape), depth).ravel()
    sol = solve_ivp(f, (0.0, times[-1]), w0.ravel(), t_eval=times, **REF_TOL)
    assert sol.success, sol.message
    return sol.y.T.reshape(len(times), *shape)
