"""The flow kernel — NumPy arrays in and out, compiled inside; no Ray, no I/O. One concept a module:

* :mod:`.tableau` — the methods as data (Butcher tableaus: ``euler``, ``rk4``, ``dopri5``);
* :mod:`.flows` — the compiled right-hand sides of the flows (docs/theory.md §2) and their geometries;
* :mod:`.stepper` — the one compiled Runge–Kutta stepper (step, error control, dense output, ε-crossing);
* :mod:`.integrate` — the models (:class:`Layerwise`, :class:`Induced`) and :func:`integrate`;
* :mod:`.exact` — the closed form of the balanced scalar-output flow (docs/theory.md §4).

This package's names are its public face: ``from sweep import kernel; kernel.integrate(...)``.
"""

from .integrate import KERNEL_VERSION, Induced, Layerwise, Result, block_width, integrate, tail_loss
from .tableau import DEFAULT_METHOD, DOPRI5, EULER, METHODS, RK4, Tableau

__all__ = [
    "DEFAULT_METHOD",
    "DOPRI5",
    "EULER",
    "KERNEL_VERSION",
    "METHODS",
    "RK4",
    "Induced",
    "Layerwise",
    "Result",
    "Tableau",
    "block_width",
    "integrate",
    "tail_loss",
]
