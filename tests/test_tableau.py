"""The methods as data: each tableau satisfies its order conditions, and a broken one is refused."""

import numpy as np
import pytest

from sweep.kernel.tableau import DOPRI5, EULER, METHODS, RK4, Tableau


@pytest.mark.parametrize(("method", "order"), [(EULER, 1), (RK4, 4), (DOPRI5, 5)])
def test_quadrature_conditions_up_to_the_order(method, order):
    # Σ_i b_i c_i^k = 1/(k+1) for k < order (the method integrates t^k exactly), and not beyond for Euler / RK4
    for k in range(order):
        assert method.b @ method.c**k == pytest.approx(1 / (k + 1), abs=1e-15), k
    if method is not DOPRI5:
        assert abs(method.b @ method.c**order - 1 / (order + 1)) > 1e-3


def test_rk4_and_dopri5_tree_conditions_of_order_three_and_four():
    for method in (RK4, DOPRI5):
        b, a, c = method.b, method.a, method.c
        assert b @ a @ c == pytest.approx(1 / 6, abs=1e-15)
        assert b @ (c * (a @ c)) == pytest.approx(1 / 8, abs=1e-15)
        assert b @ a @ c**2 == pytest.approx(1 / 12, abs=1e-15)
        assert b @ a @ a @ c == pytest.approx(1 / 24, abs=1e-15)


def test_dopri5_embedded_method_is_of_order_four():
    # b̂ = b − e (over the stages; the FSAL stage's b is 0): a fourth-order method that is not fifth-order
    b_hat = np.append(DOPRI5.b, 0.0) - DOPRI5.e
    c = np.append(DOPRI5.c, 1.0)
    for k in range(4):
        assert b_hat @ c**k == pytest.approx(1 / (k + 1), abs=1e-15)
    assert abs(b_hat @ c**4 - 1 / 5) > 1e-6


def test_dense_output_at_the_step_ends():
    p = DOPRI5.p
    assert np.allclose(p.sum(axis=1), np.append(DOPRI5.b, 0.0), atol=1e-15)  # θ = 1: y_new
    assert np.array_equal(p[:, 0], np.eye(len(p))[0])  # dθ at θ = 0: f(y) only (C¹ interpolant)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"c": np.array([0.0, 0.4])}, "rows of a must sum to c"),
        ({"b": np.array([0.4, 0.5])}, "must sum to 1"),
        ({"a": np.array([[0.0, 0.5], [0.5, 0.0]])}, "strictly lower triangular"),
        ({"e": np.array([0.1, 0.0, 0.0]), "error_order": 1}, "summing to 0"),
    ],
)
def test_a_broken_tableau_is_refused(change, message):
    heun = {"c": np.array([0.0, 1.0]), "a": np.array([[0.0, 0.0], [1.0, 0.0]]), "b": np.array([0.5, 0.5])}
    Tableau("heun", **heun)  # the correct one stands
    with pytest.raises(ValueError, match=message):
        Tableau("heun", **{**heun, **change})


def test_registry_names_every_method():
    assert set(METHODS) == {"euler", "rk4", "dopri5"}
    assert all(METHODS[name].name == name for name in METHODS)
