"""Shared pieces of the scientific-ML tasks (PINNs, neural ODEs): size presets, autograd derivatives,
evaluation at frozen weights, and the relative L2 error every one of them reports.

A physics-informed loss differentiates the network with respect to its inputs, so training needs
``create_graph=True`` (the weights' gradient flows through the derivatives), while evaluation needs the
input derivatives only: `frozen_loss` (in `_common`, shared with the oscillator) runs it over detached
weights, so an evaluation builds no graph to the weights and never touches their ``.grad``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from koopsweep._params import require
from koopsweep.tasks._common import CachedTask, frozen_loss, generator, is_int, tensor_batches


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


class PINNTask(SizedTask):
    """A physics-informed task trained full batch on fixed collocation points.

    ``_make_data`` returns the tensors named in ``batch_keys`` (the residual points first), drawn by
    `collocation` from the ``"collocation"`` stream of ``data_seed``, their evaluation twins
    ``"eval_" + key``, and ``ref_grid``/``ref_u``, the points and values of the known solution. A
    subclass writes `residual_loss`, its equation, and `collocation`, its points; training, evaluation
    at frozen weights, the check batches and the relative L2 error are shared here.
    """

    batch_keys: ClassVar[tuple[str, ...]]

    @abc.abstractmethod
    def collocation(self, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        """A set of training points at the training sizes, drawn from ``gen``: the batch's tensors in the
        order of ``batch_keys``."""

    @abc.abstractmethod
    def residual_loss(
        self, u_of: Callable[[torch.Tensor], torch.Tensor], points: torch.Tensor, *rest: torch.Tensor,
        create_graph: bool = True,
    ) -> torch.Tensor:  # fmt: skip
        """The physics loss of ``u_of`` at the residual ``points`` (requiring grad) and the batch's other
        tensors ``rest``; ``create_graph`` as in `derivative`, for the derivatives' last pass."""

    def batches(self, seed: int, device: torch.device) -> Iterator[tuple[torch.Tensor, ...]]:
        data = self._on(device)  # eager: the points move to the device before the first step is timed
        return tensor_batches(tuple(data[key] for key in self.batch_keys), 0, seed, device)  # full batch

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        interior, *rest = batch
        # A fresh leaf that shares the batch's storage: no copy, and the batch itself is never modified.
        return self.residual_loss(model, interior.detach().requires_grad_(True), *rest)

    def eval_loss(self, model: nn.Module, device: torch.device) -> float:
        data = self._on(device)
        return float(frozen_loss(self.residual_loss, model, *(data["eval_" + key] for key in self.batch_keys)))

    def check_batches(self, seed: int, device: torch.device, n: int) -> list[tuple[torch.Tensor, ...]]:
        """``n`` fresh draws of the training points, each from its own stream of ``data_seed`` (the same for
        every run seed, like the training points): points the run never trains on, so a jump that fits
        the collocation points at the expense of the equation between them (the PINN's way to overfit)
        shows as a higher loss there. The evaluation points stay unseen by every decision."""
        draws = (self.collocation(generator(self.params["data_seed"], f"check-{i}")) for i in range(n))
        return [tuple(t.to(device) for t in draw) for draw in draws]

    def check_loss(self, model: nn.Module, batches: list[tuple[torch.Tensor, ...]]) -> torch.Tensor:
        return sum(frozen_loss(self.residual_loss, model, *batch) for batch in batches) / len(batches)

    def eval_metrics(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        return {"relative_l2_error": self.relative_l2_error(model, device)}

    def relative_l2_error(self, model: nn.Module, device: torch.device) -> float:
        """||u_net − u_ref|| / ||u_ref|| on the reference grid."""
        data = self._on(device)
        with torch.no_grad():
            return relative_l2(model(data["ref_grid"]), data["ref_u"])


def space_time_reference(t: Any, x: Any, u: Any) -> dict[str, torch.Tensor]:
    """``ref_grid`` (every (t, x) pair, t slowest) and ``ref_u`` (``(n, 1)``) as float32 tensors from a
    solution ``u`` of shape ``(len(t), len(x))``."""
    # torch.tensor copies: the arrays may be read-only views (a cached solution), which as_tensor warns about.
    grid = torch.cartesian_prod(torch.tensor(t), torch.tensor(x)).float()
    return {"ref_grid": grid, "ref_u": torch.tensor(u).reshape(-1, 1).float()}


def derivative(outputs: torch.Tensor, inputs: torch.Tensor, *, create_graph: bool = True) -> torch.Tensor:
    """d outputs / d inputs, row by row: ``outputs`` is ``(n, 1)`` (or ``(n, k)``, summed over k) with row i
    depending on row i of ``inputs`` only, so one backward pass with ones gives every point's own
    derivative, shape ``inputs.shape``."""
    (grad,) = torch.autograd.grad(outputs, inputs, torch.ones_like(outputs), create_graph=create_graph)
    return grad


def relative_l2(prediction: torch.Tensor, reference: torch.Tensor) -> float:
    """||prediction − reference|| / ||reference|| (one host sync: call it at the end of a run)."""
    error = torch.linalg.vector_norm(prediction - reference) / torch.linalg.vector_norm(reference)
    return float(error)


__all__ = ["PINNTask", "SizedTask", "derivative", "relative_l2", "space_time_reference"]
