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


@pytest.mark.parametrize(
    "arrays, words",
    [
        ({"X": np.ones((5, 3)), "Y": np.ones((1, 3))}, "m = 3 < dx = 5"),
        ({"X": np.ones((2, 10)), "Y": np.ones((1, 9))}, "both need m = 10"),
        ({"X": np.ones((2, 10))}, "no array Y"),
        ({"X": np.ones(10), "Y": np.ones((1, 10))}, "2-D"),
        ({"X": np.ones((2, 10)), "Y": np.ones((1, 10))}, "singular"),
    ],
)
def test_bad_data_files_name_the_problem(tmp_path, arrays, words):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(SpecError, match=words) as info:
        from_file(str(tmp_path / "d.npz"))
    assert info.value.field == "problem.data"


def test_missing_data_file(tmp_path):
    with pytest.raises(SpecError, match="no such file"):
        from_file(str(tmp_path / "nope.npz"))


def _header_only(path, shapes, descr="<f8"):
    import zipfile

    from numpy.lib import format as npformat

    with zipfile.ZipFile(path, "w") as z:
        for key, shape in shapes.items():
            with z.open(f"{key}.npy", "w") as f:
                npformat.write_array_header_1_0(f, {"descr": descr, "fortran_order": False, "shape": shape})


def test_sizes_are_read_from_the_headers_before_any_array_is_loaded(tmp_path, monkeypatch):
    import sweep.problem as problem

    _header_only(tmp_path / "bomb.npz", {"X": (20000, 20000), "Y": (1, 20000)})
    monkeypatch.setattr(problem.np, "load", lambda *a, **k: pytest.fail("loaded an array before checking its size"))
    with pytest.raises(SpecError, match=r"X \(20,000×20,000\) and Y \(1×20,000\) would take 3,052 MiB") as info:
        from_file(str(tmp_path / "bomb.npz"))
    assert info.value.field == "problem.data"


def test_only_x_and_y_are_read(tmp_path):
    """Other members of the file (however large they claim to be) are never decompressed."""
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "d.npz", X=rng.standard_normal((2, 10)), Y=rng.standard_normal((1, 10)), notes=np.zeros(3))
    assert from_file(str(tmp_path / "d.npz")).x.shape[1] == 10


@pytest.mark.parametrize(
    "arrays, words",
    [
        ({"X": np.ones((0, 5)), "Y": np.ones((1, 5))}, "X is empty"),
        ({"X": np.eye(2, 20), "Y": np.ones((0, 20))}, "Y is empty"),
        ({"X": np.eye(2, 20) * (1 + 1j), "Y": np.ones((1, 20))}, "X is complex"),
        ({"X": np.eye(2, 20), "Y": np.ones((1, 20)) * 1j}, "Y is complex"),
        ({"X": np.eye(2, 20) > 0, "Y": np.ones((1, 20))}, "2-D real numeric"),
        ({"X": np.eye(2, 20) * 1e200 + 1e199, "Y": np.ones((1, 20))}, "overflow X Xᵀ"),
        ({"X": np.eye(2, 20), "Y": np.ones((1, 20)) * 1e200}, "overflow the loss"),
    ],
)
def test_odd_arrays_are_refused_by_name(tmp_path, arrays, words):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(SpecError, match=words) as info:
        from_file(str(tmp_path / "d.npz"))
    assert info.value.field == "problem.data"


def test_a_plain_npy_or_a_folder_is_named(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((2, 10)))
    with pytest.raises(SpecError, match="single .npy array"):
        from_file(str(tmp_path / "x.npy"))
    with pytest.raises(SpecError, match="is a folder"):
        from_file(str(tmp_path))
