"""The `Task` contract: a network, its data and its losses, so that every optimizer sees the same run.

A task is fully determined by its parameters and a seed: the same seed gives the same initial weights
and the same batch order on every call, which is what makes a baseline and an accelerated run
comparable side by side. Registered as entry points in the group ``koopsweep.tasks``.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from typing import Any, ClassVar

import torch

from koopsweep._params import Configurable


#: `Task.check_batches` draws from ``task.batches(seed + this)`` by default.
CHECK_STREAM_SEED_OFFSET = 1_000_003


class Task(Configurable, abc.ABC):
    """Abstract base of training tasks.

    Class attributes:
        default_budget: gradient steps that a baseline runs for.
        baseline_lrs: tuned learning rate per optimizer plugin name, e.g. ``{"adam": 1e-3, "adadelta": 1.0}``;
            an optimizer without one runs at its plugin's ``default_lr`` (and results say so).
        default_optimizer: the optimizer a practitioner would train the task with; used where a
            command or spec names none.
        schedule: the learning-rate schedule of every run on the task unless a spec or ``bench`` says
            otherwise: ``"constant"`` or ``"cosine"`` (see `koopsweep.schedules`), after ``warmup``
            linear warm-up steps.
        eval_every: gradient steps between evaluation checkpoints (0: about 50 checkpoints per budget).
    """

    default_budget: ClassVar[int]
    baseline_lrs: ClassVar[dict[str, float]]
    default_optimizer: ClassVar[str] = "adam"
    schedule: ClassVar[str] = "constant"
    warmup: ClassVar[int] = 0
    eval_every: ClassVar[int] = 0

    @abc.abstractmethod
    def build_model(self, seed: int) -> torch.nn.Module:
        """A freshly initialised model; the same seed gives the same weights."""

    @abc.abstractmethod
    def batches(self, seed: int, device: torch.device) -> Iterator[Any]:
        """An endless stream of training batches on ``device``, in an order fixed by ``seed``."""

    @abc.abstractmethod
    def loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        """The scalar training loss of ``model`` on ``batch``."""

    @abc.abstractmethod
    def eval_loss(self, model: torch.nn.Module, device: torch.device) -> float:
        """The loss on a fixed evaluation set (the same for every seed), without gradients."""

    def eval_metrics(self, model: torch.nn.Module, device: torch.device) -> dict[str, float]:
        """Figures reported beside the evaluation loss at the end of a run (an accuracy, the error against
        a reference solution), without gradients. Optional; never used for targets."""
        return {}

    def data_facts(self) -> dict[str, str]:
        """What the task's data depends on beyond its parameters (e.g. the Python version whose standard
        library is the corpus), recorded with every run. Optional."""
        return {}

    def prepare(self, device: torch.device) -> None:
        """Load or generate the data and put it on ``device`` now. Optional: the training loop calls it
        before any clock starts, so that neither side of a comparison pays for loading."""

    def check_batches(self, seed: int, device: torch.device, n: int) -> list[Any]:
        """``n`` fixed batches that the fallback rule judges jumps on instead of the step's own (the
        ``check_batches`` knob): by default the first ``n`` of a training stream seeded apart from the
        run's, a fixed sample of the training data in an order unrelated to the training stream's. A task
        trained full batch overrides it with data the run does not train on: its own stream is one batch."""
        stream = self.batches(seed + CHECK_STREAM_SEED_OFFSET, device)
        return [next(stream) for _ in range(n)]

    def check_loss(self, model: torch.nn.Module, batches: list[Any]) -> torch.Tensor:
        """The mean loss on ``batches`` (from `check_batches`) at the weights ``model`` holds, as a tensor
        (no host sync). The accelerator calls it without gradients; a loss that needs autograd inside
        (a PINN's derivatives) enables it here."""
        return sum(self.loss(model, batch) for batch in batches) / len(batches)

    def checkpoint_interval(self, budget: int) -> int:
        """Gradient steps between evaluation checkpoints for a run of ``budget`` steps."""
        return self.eval_every or max(1, budget // 50)
