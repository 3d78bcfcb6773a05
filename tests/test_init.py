"""Initialization: balancedness, norms, ranks, angles and per-cell reproducibility."""

import itertools

import numpy as np
import pytest

from sweep.init import balanced_layers, end_to_end_start, initial_layers, rank_of
from sweep.problem import synthetic


def product(layers):
    w = layers[0]
    for layer in layers[1:]:
        w = layer @ w
    return w


@pytest.mark.parametrize("dy, depth, width", [(1, 1, 5), (1, 4, 5), (3, 3, 4), (3, 3, 1), (3, 5, 2)])
def test_balanced_start_is_balanced_with_the_asked_norm_and_rank(dy, depth, width):
    z = synthetic(50, 5, dy, seed=1).target
    layers = initial_layers("balanced", z, problem_seed=1, seed=4, depth=depth, width=width, init_norm=2.5)
    w = product(layers)
    assert np.linalg.norm(w, 2) == pytest.approx(2.5 * np.linalg.norm(z, 2), rel=1e-12)
    for lower, upper in itertools.pairwise(layers):
        assert np.allclose(upper.T @ upper, lower @ lower.T, atol=1e-12)
    s = np.linalg.svd(w, compute_uv=False)
    r = rank_of(5, dy, depth, width)
    assert np.sum(s > 1e-10 * s[0]) == r


def test_same_seed_same_end_to_end_start_across_depth_and_norm():
    z = synthetic(50, 5, 1, seed=0).target
    w = [
        product(initial_layers("balanced", z, problem_seed=0, seed=3, depth=n, width=5, init_norm=a))
        for n, a in ((1, 1.0), (3, 1.0), (5, 10.0))
    ]
    assert np.allclose(w[0], w[1], rtol=1e-12) and np.allclose(10 * w[0], w[2], rtol=1e-12)
    other = product(initial_layers("balanced", z, problem_seed=0, seed=4, depth=3, width=5, init_norm=1.0))
    assert not np.allclose(other, w[1])


@pytest.mark.parametrize("angle", [0.0, 0.7, np.pi / 2, 3.0, np.pi])
def test_init_angle_sets_the_angle_to_the_target(angle):
    z = synthetic(50, 5, 1, seed=0).target
    w = end_to_end_start(z, problem_seed=0, seed=2, depth=3, width=5, init_norm=10.0, init_angle=angle)
    cos = (w.ravel() @ z.ravel()) / (np.linalg.norm(w) * np.linalg.norm(z))
    assert np.arccos(np.clip(cos, -1, 1)) == pytest.approx(angle, abs=1e-7)
    assert np.linalg.norm(w) == pytest.approx(10 * np.linalg.norm(z), rel=1e-12)


def test_gaussian_start_is_scaled_uniformly_and_unbalanced():
    z = synthetic(50, 5, 1, seed=0).target
    layers = initial_layers("gaussian", z, problem_seed=0, seed=0, depth=4, width=6, init_norm=0.3)
    assert np.linalg.norm(product(layers), 2) == pytest.approx(0.3 * np.linalg.norm(z, 2), rel=1e-12)
    d = layers[1].T @ layers[1] - layers[0] @ layers[0].T
    assert np.linalg.norm(d) > 1e-2


def test_balanced_layers_reproduce_a_given_product():
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((3, 5))
    layers = balanced_layers(w0, problem_seed=0, seed=0, depth=4, width=3)
    assert np.allclose(product(layers), w0, atol=1e-12)
