"""Explicit Runge–Kutta methods as data: a Butcher tableau that checks itself.

A method differs from another in its coefficients, never in code: one compiled stepper
(:mod:`sweep.kernel.stepper`) serves every :class:`Tableau`, as in scipy's ``integrate/_ivp/rk.py`` and diffrax.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class Tableau:
    """Butcher coefficients ``c``, ``a`` (strictly lower triangular), ``b``; for adaptive methods the
    embedded error weights ``e = b − b̂`` over the stages plus the FSAL stage f(y_new) and the order of
    that estimate (its step-size exponent is −1/(order + 1)); optionally a dense-output matrix ``p``
    (rows: the stages plus the FSAL stage; columns: the powers θ¹…θᵏ). Without ``p`` a step is
    interpolated by the cubic Hermite polynomial through (y, f) at both ends."""

    name: str
    c: np.ndarray
    a: np.ndarray
    b: np.ndarray
    e: np.ndarray | None = None
    p: np.ndarray | None = None
    error_order: int = 0

    def __post_init__(self):
        s = len(self.c)
        tol = 1e-14
        if self.a.shape != (s, s) or len(self.b) != s or np.any(np.triu(self.a) != 0):
            raise ValueError(f"{self.name}: a must be strictly lower triangular s × s, b of length s")
        if np.max(np.abs(self.a.sum(axis=1) - self.c)) > tol:
            raise ValueError(f"{self.name}: the rows of a must sum to c")
        if abs(self.b.sum() - 1) > tol:
            raise ValueError(f"{self.name}: the weights b must sum to 1")
        if self.e is not None and (len(self.e) != s + 1 or abs(self.e.sum()) > tol or self.error_order < 1):
            raise ValueError(f"{self.name}: e needs s + 1 entries summing to 0 and an error order ≥ 1")
        if self.p is not None:
            if self.p.shape[0] != s + 1:
                raise ValueError(f"{self.name}: p needs one row per stage plus the FSAL stage")
            if np.max(np.abs(self.p.sum(axis=1) - np.append(self.b, 0.0))) > tol:  # at θ = 1: y_new
                raise ValueError(f"{self.name}: the dense output at θ = 1 must be the step's result")

    @property
    def stages(self) -> int:
        return len(self.c)

    @property
    def adaptive(self) -> bool:
        return self.e is not None


EULER = Tableau("euler", c=np.array([0.0]), a=np.zeros((1, 1)), b=np.array([1.0]))

RK4 = Tableau(
    "rk4",
    c=np.array([0.0, 0.5, 0.5, 1.0]),
    a=np.array([[0, 0, 0, 0], [0.5, 0, 0, 0], [0, 0.5, 0, 0], [0, 0, 1.0, 0]], dtype=float),
    b=np.array([1 / 6, 1 / 3, 1 / 3, 1 / 6]),
)

# Dormand & Prince (1980), "A family of embedded Runge-Kutta formulae", J. Comp. Appl. Math. 6;
# dense output of Shampine (1986), "Some practical Runge-Kutta formulas", Math. Comp. 46 — the same
# coefficients as scipy's RK45 and diffrax's Dopri5.
DOPRI5 = Tableau(
    "dopri5",
    c=np.array([0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1]),
    a=np.array(
        [
            [0, 0, 0, 0, 0, 0],
            [1 / 5, 0, 0, 0, 0, 0],
            [3 / 40, 9 / 40, 0, 0, 0, 0],
            [44 / 45, -56 / 15, 32 / 9, 0, 0, 0],
            [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729, 0, 0],
            [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656, 0],
        ]
    ),
    b=np.array([35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84]),
    e=np.array([-71 / 57600, 0, 71 / 16695, -71 / 1920, 17253 / 339200, -22 / 525, 1 / 40]),
    p=np.array(
        [
            [1, -8048581381 / 2820520608, 8663915743 / 2820520608, -12715105075 / 11282082432],
            [0, 0, 0, 0],
            [0, 131558114200 / 32700410799, -68118460800 / 10900136933, 87487479700 / 32700410799],
            [0, -1754552775 / 470086768, 14199869525 / 1410260304, -10690763975 / 1880347072],
            [0, 127303824393 / 49829197408, -318862633887 / 49829197408, 701980252875 / 199316789632],
            [0, -282668133 / 205662961, 2019193451 / 616988883, -1453857185 / 822651844],
            [0, 40617522 / 29380423, -110615467 / 29380423, 69997945 / 29380423],
        ]
    ),
    error_order=4,
)

METHODS = {t.name: t for t in (EULER, RK4, DOPRI5)}
DEFAULT_METHOD = "dopri5"  # adaptive: what a spec without an integrator gets
