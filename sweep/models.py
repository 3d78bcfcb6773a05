"""The models a sweep can run, one record each: what the spec offers (``model:``), the CLI's help, which
starts and data a model accepts, how a batch builds its kernel model and its states, and how much memory
one cell's state takes. A new model is one record here (and its flow in :mod:`sweep.kernel`).

The mathematics is in docs/theory.md: §2 (the layerwise and induced flows), §4 (the closed form).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import kernel
from .errors import SpecError
from .init import layer_dims, parameter_count, rank_of


@dataclass(frozen=True)
class Model:
    name: str
    help: str  # one phrase: the CLI's help and the spec's docs
    balanced_only: bool  # the model's flow holds only from balanced starts
    scalar_output: bool  # dy = 1 only
    integrated: bool  # by kernel.integrate (else a closed form: sweep.batch)
    whitened_only: bool = False  # only for whitened regression (the loss ½‖W − Z‖²)

    def kernel_model(self, problem, depth: int, width: int):
        """The kernel model of a network of ``depth`` layers of ``width`` on ``problem``."""
        r = rank_of(problem.dx, problem.dy, depth, width)
        loss = {"target": problem.target, "tail": problem.tail(r), "sigma": problem.sigma, "mask": problem.mask}
        if self.name == "induced":
            return kernel.Induced(depth, rank=r, **loss)
        return kernel.Layerwise(layer_dims(problem.dx, problem.dy, depth, width), **loss)

    def states(self, model, starts: list) -> np.ndarray:
        """The initial states (B, P) of ``model`` from each cell's initial layers (W_1 … W_N)."""
        if self.name == "induced":  # the end-to-end matrix W = W_N⋯W_1
            return np.stack([_product(layers).ravel() for layers in starts])
        return model.pack([np.stack(ws) for ws in zip(*starts)])

    def state_bytes(self, stages: int, dx: int, dy: int, depth: int, width: int) -> int:
        """One cell's working set in a task: its state and the integrator's stages (and work arrays), plus
        the layers of its start, built even for the induced model (its balanced starts factor W0 through
        width×width layers)."""
        layers = parameter_count(dx, dy, depth, width)
        if self.name == "layerwise":  # state and stages are the layers; the starts are packed into it
            return 8 * (stages + 6) * layers
        if self.name == "induced":  # state W (dy×dx); the starts' layers are built, then multiplied out
            return 8 * ((stages + 5) * dx * dy + layers)
        return 8 * 4 * dx * dy  # the closed form of W0 only

    def check_data(self, dy: int, field: str = "model") -> None:
        """SpecError unless the data suit the model (the closed form needs dy = 1)."""
        if self.scalar_output and dy != 1:
            closed = "the closed form of docs/theory.md §4"
            raise SpecError(field, f"{self.name} ({closed}) needs a scalar output, dy = 1; got dy = {dy}")


MODELS = {
    m.name: m
    for m in (
        Model("layerwise", "gradient flow on every layer", False, False, True),
        Model("induced", "the end-to-end flow of balanced networks", True, False, True),
        Model("exact", "closed form, dy = 1, balanced", True, True, False, whitened_only=True),
    )
}
DEFAULT_MODEL = "layerwise"


def _product(layers):
    w = layers[0]
    for layer in layers[1:]:
        w = layer @ w
    return w
