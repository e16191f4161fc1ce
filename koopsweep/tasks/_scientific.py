"""Shared pieces of the scientific-ML tasks (PINNs, neural ODEs): size presets, autograd derivatives,
evaluation at frozen weights, and the relative L2 error every one of them reports.

A physics-informed loss differentiates the network with respect to its inputs, so training needs
``create_graph=True`` (the weights' gradient flows through the derivatives), while evaluation needs the
input derivatives only: `frozen` gives a callable over detached weights, so an evaluation builds no graph
to the weights and never touches their ``.grad``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import nn
from torch.func import functional_call

from koopsweep._params import require
from koopsweep.tasks._common import CachedTask, is_int


class SizedTask(CachedTask):
    """A cached task whose size knobs default to a per-``size`` preset ("cpu" or "gpu").

    Subclasses set ``presets`` (size name -> knob -> value) and list each knob's smallest valid value in
    ``knob_minimums``; a knob left at None takes its preset's value (`knob`).
    """

    presets: ClassVar[Mapping[str, Mapping[str, int]]]
    knob_minimums: ClassVar[Mapping[str, int]] = {}

    def validate_params(self) -> None:
        p = self.params
        require(p["size"] in self.presets, self, "size", p["size"], f"one of {', '.join(map(repr, self.presets))}")
        for name, low in self.knob_minimums.items():
            value = p[name]
            require(value is None or (is_int(value) and value >= low), self, name, value, f"None or an int >= {low}")

    def knob(self, name: str) -> int:
        """The effective value of ``name``: the explicit parameter, else the size preset's."""
        value = self.params[name]
        return self.presets[self.params["size"]][name] if value is None else value


def derivative(outputs: torch.Tensor, inputs: torch.Tensor, *, create_graph: bool = True) -> torch.Tensor:
    """d outputs / d inputs, row by row: ``outputs`` is ``(n, 1)`` (or ``(n, k)``, summed over k) with row i
    depending on row i of ``inputs`` only, so one backward pass with ones gives every point's own
    derivative, shape ``inputs.shape``."""
    (grad,) = torch.autograd.grad(outputs, inputs, torch.ones_like(outputs), create_graph=create_graph)
    return grad


def frozen(model: nn.Module) -> Callable[..., torch.Tensor]:
    """``model`` as a function of its inputs over detached copies of its weights (no copy of the data):
    autograd through it reaches the inputs only."""
    params: dict[str, Any] = {name: value.detach() for name, value in model.named_parameters()}
    params.update(model.named_buffers())
    return lambda *inputs: functional_call(model, params, inputs)


def relative_l2(prediction: torch.Tensor, reference: torch.Tensor) -> float:
    """||prediction − reference|| / ||reference|| (one host sync: call it at the end of a run)."""
    error = torch.linalg.vector_norm(prediction - reference) / torch.linalg.vector_norm(reference)
    return float(error)


__all__ = ["SizedTask", "derivative", "frozen", "relative_l2"]
