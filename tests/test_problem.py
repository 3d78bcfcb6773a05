"""Problem data: whitening, target, and the checks on a user's .npz file."""

import numpy as np
import pytest

from sweep.problem import build, from_file, synthetic
from sweep.spec import SpecError


def test_synthetic_data_is_whitened_and_reproducible():
    p = synthetic(50, 5, 2, seed=3)
    assert np.allclose(p.x @ p.x.T, np.eye(5), atol=1e-13)
    assert p.target.shape == (2, 5)
    assert np.array_equal(p.x, synthetic(50, 5, 2, seed=3).x)
    assert p.digest() != synthetic(50, 5, 2, seed=4).digest()


def test_data_file_is_whitened_and_keeps_the_least_squares_solution(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 30)) * np.array([[1], [5], [0.2], [2]])
    y = rng.standard_normal((2, 30))
    np.savez(tmp_path / "d.npz", X=x, Y=y)
    p = build({"data": str(tmp_path / "d.npz")})
    assert p.whitened_from_file
    assert np.allclose(p.x @ p.x.T, np.eye(4), atol=1e-12)
    # same fitted values: Z Xw = Y Xᵀ(XXᵀ)⁻¹X, the least-squares projection of Y onto the rows of X
    assert np.allclose(p.target @ p.x, y @ np.linalg.pinv(x) @ x, atol=1e-12)


@pytest.mark.parametrize("arrays, words", [
    ({"X": np.ones((5, 3)), "Y": np.ones((1, 3))}, "m = 3 < dx = 5"),
    ({"X": np.ones((2, 10)), "Y": np.ones((1, 9))}, "both need m = 10"),
    ({"X": np.ones((2, 10))}, "no array Y"),
    ({"X": np.ones(10), "Y": np.ones((1, 10))}, "2-D"),
    ({"X": np.ones((2, 10)), "Y": np.ones((1, 10))}, "singular"),
])
def test_bad_data_files_name_the_problem(tmp_path, arrays, words):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(SpecError, match=words) as info:
        from_file(str(tmp_path / "d.npz"))
    assert info.value.field == "problem.data"


def test_missing_data_file(tmp_path):
    with pytest.raises(SpecError, match="no such file"):
        from_file(str(tmp_path / "nope.npz"))
