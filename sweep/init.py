"""Initial layers for one grid cell (docs/theory.md §2).

Random draws come from ``SeedSequence`` keys built from the problem seed, the cell's ``seed`` and
the shapes the draw depends on — never from batch position — so a cell's start is reproducible on
its own. The end-to-end direction W0/‖W0‖ of a balanced start depends on (problem seed, seed, rank)
only: the same seed gives the same W0 at every depth and init_norm (paired comparisons, as in the
paper's example); ``init_norm`` only rescales it.
"""

from __future__ import annotations

import itertools

import numpy as np

# stream tags (part of the kernel's reproducibility contract: change KERNEL_VERSION with them)
_W0, _FRAMES, _GAUSS, _ANGLE = 1, 2, 3, 4


def layer_dims(dx: int, dy: int, depth: int, width: int) -> tuple[int, ...]:
    """(d_0 = dx, d_1 … d_{N−1} = width, d_N = dy)."""
    return (dx, *([width] * (depth - 1)), dy)


def parameter_count(dx: int, dy: int, depth: int, width: int) -> int:
    """Σ_j d_j·d_{j−1}: the numbers in all the layers of one network."""
    dims = layer_dims(dx, dy, depth, width)
    return sum(a * b for a, b in itertools.pairwise(dims))


def rank_of(dx: int, dy: int, depth: int, width: int) -> int:
    """r = the narrowest layer: the largest rank the end-to-end product can have."""
    return min(layer_dims(dx, dy, depth, width))


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


def _unit_orthogonal(rng, z: np.ndarray) -> np.ndarray:
    """A random unit vector orthogonal to the unit vector z."""
    q = rng.standard_normal(z.shape)
    q -= (q @ z) * z
    return q / np.linalg.norm(q)


def end_to_end_start(target, *, problem_seed, seed, depth, width, init_norm, init_angle=None):
    """W0 for a balanced start: random of rank r (or at ``init_angle`` from the vector target),
    scaled to ‖W0‖₂ = init_norm · ‖Z‖₂."""
    w, norm = start_direction(
        target, problem_seed, seed, rank_of(target.shape[1], target.shape[0], depth, width), init_angle
    )
    return init_norm * np.linalg.norm(target, 2) * w / norm


def start_direction(target, problem_seed, seed, rank, init_angle=None):
    """The random part of :func:`end_to_end_start`, which does not depend on init_norm: (w, ‖w‖₂), with
    W0 = init_norm·‖Z‖₂·w / ‖w‖₂ (‖w‖₂ = 1 for an angle start)."""
    dy, dx = target.shape
    if init_angle is not None:  # vector target (dy = 1 or dx = 1): rotate away from it
        z = target.ravel() / np.linalg.norm(target)
        q = _unit_orthogonal(_rng(problem_seed, seed, _ANGLE, z.size), z) if z.size > 1 else 0 * z
        return (np.cos(init_angle) * z + np.sin(init_angle) * q).reshape(dy, dx), 1.0
    rng = _rng(problem_seed, seed, _W0, dy, dx, rank)
    w = rng.standard_normal((dy, rank)) @ rng.standard_normal((rank, dx))
    return w, np.linalg.norm(w, 2)


def balanced_layers(w0, *, problem_seed, seed, depth, width):
    """Balanced factorization of W0 = U S Vᵀ: W_1 = Q_1 S^{1/N} Vᵀ, W_j = Q_j S^{1/N} Q_{j−1}ᵀ,
    W_N = U S^{1/N} Q_{N−1}ᵀ with random orthonormal frames Q_j (d_j × r)."""
    dy, dx = w0.shape
    if depth == 1:
        return [w0.copy()]
    r = rank_of(dx, dy, depth, width)
    u, s, vt = np.linalg.svd(w0, full_matrices=False)
    u, root, vt = u[:, :r], s[:r] ** (1.0 / depth), vt[:r]
    rng = _rng(problem_seed, seed, _FRAMES, depth, width)
    frames = [np.linalg.qr(rng.standard_normal((width, r)))[0] for _ in range(depth - 1)]
    layers = [frames[0] * root @ vt]
    layers += [frames[j] * root @ frames[j - 1].T for j in range(1, depth - 1)]
    layers.append(u * root @ frames[-1].T)
    return layers


def gaussian_layers(target, *, problem_seed, seed, depth, width, init_norm):
    """Independent Gaussian layers N(0, 1/d_{j−1}), rescaled uniformly by c^{1/N} so that
    ‖W_N⋯W_1‖₂ = init_norm · ‖Z‖₂."""
    dy, dx = target.shape
    dims = layer_dims(dx, dy, depth, width)
    rng = _rng(problem_seed, seed, _GAUSS, depth, width)
    layers = [rng.standard_normal((dims[j + 1], dims[j])) / np.sqrt(dims[j]) for j in range(depth)]
    prod = layers[0]
    for w in layers[1:]:
        prod = w @ prod
    factor = (init_norm * np.linalg.norm(target, 2) / np.linalg.norm(prod, 2)) ** (1.0 / depth)
    return [factor * w for w in layers]


def aligned_start(target, *, depth, width, init_norm, **_):
    """W0 = init_norm·‖Z‖₂·U_r V_rᵀ: the target's top r singular directions, every one at the same size (the
    aligned starts of Saxe et al. 2014, where each mode then follows its own scalar flow)."""
    dy, dx = target.shape
    r = rank_of(dx, dy, depth, width)
    u, s, vt = np.linalg.svd(target)
    return init_norm * s[0] * u[:, :r] @ vt[:r]


def initial_layers(scheme, target, **cell):
    """The N layers of one cell; ``cell`` holds problem_seed, seed, depth, width, init_norm and
    optionally init_angle."""
    if scheme == "gaussian":
        cell.pop("init_angle", None)
        return gaussian_layers(target, **cell)
    w0 = aligned_start(target, **cell) if scheme == "aligned" else end_to_end_start(target, **cell)
    return balanced_layers(
        w0, problem_seed=cell["problem_seed"], seed=cell["seed"], depth=cell["depth"], width=cell["width"]
    )
