"""The schema: the grid's axes and every variable a sweep stores per cell, each in one table.

:data:`AXES` holds what each grid axis is (its type, bounds, default, CF attributes and flag help): the spec
validates it, the store writes its coordinate and the CLI reads its flag from that row. :data:`RESULTS`
holds the variables: the store lays its arrays out from it, a batch fills it, the memory bounds count its
bytes and the tests check it; adding a variable is one line. Statuses are :class:`Status`; the CF
``flag_values`` / ``flag_meanings`` of the ``status`` variable come from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum

import numpy as np


class Status(IntEnum):
    """What became of a cell (docs/theory.md §10)."""

    PENDING = 0  # not computed yet: the store's fill value
    CONVERGED = 1  # the excess loss reached ε within the horizon
    UNCONVERGED = 2  # reached the horizon without the excess ever ≤ ε
    DIVERGED = 3  # non-finite, above the blow-up bound, or a step collapsed on a non-finite error
    FAILED = 4  # a step collapsed, max_steps ran out, or the cell's computation raised

    @classmethod
    def flag_attrs(cls) -> dict:
        """The CF attributes of the ``status`` variable."""
        return {
            "flag_values": np.array([s.value for s in cls], dtype="i1"),
            "flag_meanings": " ".join(s.name.lower() for s in cls),
        }

    @classmethod
    def names(cls, ds) -> list[str]:
        """The status names of a dataset (its flag_meanings), code order."""
        return ds.status.attrs.get("flag_meanings", " ".join(s.name.lower() for s in cls)).split()


STATUS_MEANINGS = " ".join(s.name.lower() for s in Status)
DONE = (Status.CONVERGED, Status.UNCONVERGED, Status.DIVERGED)  # computed, with numbers to show


@dataclass(frozen=True)
class Variable:
    long_name: str
    tail: tuple[str, ...]  # dims after the grid axes: "checkpoint", "out" (dy), "in" (dx)
    dtype: str
    fill: float  # a pending cell's value
    units: str = ""
    flags: type[IntEnum] | None = None  # the codes' meanings (CF flag attributes)
    optional: bool = False  # stored only when the spec's ``record`` names it

    def attrs(self) -> dict:
        attrs = {"long_name": self.long_name}
        if self.units:
            attrs["units"] = self.units
        if self.flags is not None:
            attrs.update(self.flags.flag_attrs())
        return attrs


@dataclass(frozen=True)
class Axis:
    """A grid axis: its values' type and bounds, its default, its coordinate's CF attributes, its flag's help."""

    dtype: str  # "i8" (whole numbers) or "f8"
    long_name: str
    low: float  # the smallest value allowed (excluded when low_open)
    high: float | None = None  # the largest (None: no bound but int64's)
    low_open: bool = False
    default: object = None  # as a spec writes it; None: the axis is absent unless given
    units: str = ""
    example: str = ""  # the flag's help: "Depths, e.g. 1,2,3,4 or 1:9"

    def attrs(self) -> dict:
        return {"long_name": self.long_name} | ({"units": self.units} if self.units else {})


MAX_DEPTH = 10_000
# the grid axes in their canonical order (the dataset's dims); seed last so that a batch runs over seeds
AXES = {
    "depth": Axis(
        "i8", "depth N (number of layers)", 1, MAX_DEPTH, default=[1, 2, 3, 4], example="Depths, e.g. 1,2,3,4 or 1:9"
    ),
    "width": Axis("i8", "width of every hidden layer", 1, default=[5], example="Hidden-layer widths, e.g. 1,5"),
    "init_norm": Axis(
        "f8", "‖W(0)‖₂ / ‖Z‖₂", 0.0, low_open=True, default=[1.0], example="‖W(0)‖₂/‖Z‖₂ values, e.g. 0.1,1,10"
    ),
    "init_angle": Axis(
        "f8",
        "angle between W(0) and Z",
        0.0,
        math.pi,
        units="rad",
        example="Angles (rad) between W(0) and Z, e.g. 0,1.5,3.1 (vector targets)",
    ),
    "seed": Axis(
        "i8",
        "initialization seed",
        0,
        default={"start": 0, "stop": 8},
        example="Initialization seeds, e.g. 0:100 or 1,2,3",
    ),
}


NAN = float("nan")
RESULTS = {
    "loss": Variable("training loss ½‖Y − W X‖²_F", ("checkpoint",), "f8", NAN),
    "excess_loss": Variable("excess loss (loss − L*, L* the rank-r global minimum)", ("checkpoint",), "f8", NAN),
    "time_to_eps": Variable("first flow time with excess loss ≤ eps", (), "f8", NAN, "flow time"),
    "status": Variable("trajectory status", (), "i1", Status.PENDING, flags=Status),
    "steps": Variable("accepted integrator steps", (), "i8", 0),
    "rhs_evals": Variable("right-hand-side evaluations", (), "i8", 0),
    "w_init": Variable("end-to-end matrix W(0) = W_N⋯W_1 at t = 0", ("out", "in"), "f8", NAN),
    "w_final": Variable("end-to-end matrix at the end of the trajectory", ("out", "in"), "f8", NAN),
    "imbalance": Variable("max_j ‖W_{j+1}ᵀW_{j+1} − W_jW_jᵀ‖_F at t = 0", (), "f8", NAN),
    "imbalance_drift": Variable("max_j change of W_{j+1}ᵀW_{j+1} − W_jW_jᵀ by the end (Frobenius)", (), "f8", NAN),
    "singular_values": Variable("singular values of W(t), descending", ("checkpoint", "mode"), "f8", NAN),
    "effective_rank": Variable("effective rank exp(H(σ/Σσ)) of W(t) (Roy & Vetterli 2007)", ("checkpoint",), "f8", NAN),
    "reconstruction_error": Variable(
        "‖W(t) − M‖_F / ‖M‖_F, M the target map (completion: the ground truth, all entries)", ("checkpoint",), "f8", NAN
    ),
    "w": Variable("end-to-end matrix W(t)", ("checkpoint", "out", "in"), "f8", NAN, optional=True),
}
RECORDABLE = tuple(name for name, v in RESULTS.items() if v.optional)  # what a spec's ``record`` may name
# the variables of stores made before a store listed its own (attribute "results")
LEGACY_RESULTS = (
    "loss",
    "excess_loss",
    "time_to_eps",
    "status",
    "steps",
    "rhs_evals",
    "w_init",
    "w_final",
    "imbalance",
    "imbalance_drift",
)


def stored(record=()) -> tuple[str, ...]:
    """The variables a sweep stores: every one but the optional ones its ``record`` does not name."""
    return tuple(name for name, v in RESULTS.items() if not v.optional or name in record)


def tail_shape(var: Variable, checkpoints: int, dy: int, dx: int) -> tuple[int, ...]:
    sizes = {"checkpoint": checkpoints, "out": dy, "in": dx, "mode": min(dy, dx)}
    return tuple(sizes[d] for d in var.tail)


def empty(shape: tuple[int, ...], checkpoints: int, dy: int, dx: int, names=None) -> dict[str, np.ndarray]:
    """The result variables ``names`` (default: all but the optional ones) of ``shape`` cells, holding the
    pending fill values."""
    return {
        name: np.full(shape + tail_shape(RESULTS[name], checkpoints, dy, dx), RESULTS[name].fill, RESULTS[name].dtype)
        for name in (stored() if names is None else names)
    }


def cell_bytes(checkpoints: int, dy: int, dx: int, names=None) -> int:
    """The bytes of one cell's results (``names``: as :func:`empty`)."""
    return sum(
        np.dtype(RESULTS[n].dtype).itemsize * int(np.prod(tail_shape(RESULTS[n], checkpoints, dy, dx)))
        for n in (stored() if names is None else names)
    )


def plain(value):
    """A coordinate value as a plain Python number (a NumPy scalar's ``item``), for JSON and messages."""
    return value.item() if hasattr(value, "item") else value
