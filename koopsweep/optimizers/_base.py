"""The `OptimizerPlugin` contract: how an optimizer (a baseline, or the one a Koopman accelerator wraps)
plugs into koopsweep.

An optimizer plugin is a recipe, not an optimizer: it holds its parameters (with defaults, like every
plugin) and builds a fresh ``torch.optim.Optimizer`` for each run, so that a baseline and an accelerated
run start from identical optimizer state. Built-in and third-party optimizers are registered the same
way, as entry points in the group ``koopsweep.optimizers``.

Order of calls made by a training run::

    plugin = PluginClass(**params)          # once per run; every parameter has a default
    optimizer = plugin.build(params, lr)    # the model's parameters and the learning rate
    loop:
        optimizer.step(closure)             # directly, or through KoopmanAccelerator(optimizer)
        with plugin.evaluation(optimizer):  # at every evaluation checkpoint, clock stopped
            task.eval_loss(model, device)

The learning rate is not a plugin parameter: each task tunes it per optimizer name
(``Task.baseline_lrs``), and ``default_lr`` is what runs where a task has no tuned rate. A learning-rate
schedule, when the task or spec asks for one, is attached to the returned optimizer by the run
(``torch.optim.lr_scheduler.LambdaLR``); a plugin whose optimizer schedules itself sets
``schedule_free = True`` and receives only the warm-up.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, ClassVar

from koopsweep._params import Configurable

if TYPE_CHECKING:  # listing plugins must not import torch
    import torch


class OptimizerPlugin(Configurable, abc.ABC):
    """Abstract base of optimizer plugins, built-in or third-party.

    Class attributes:
        default_lr: the learning rate used where a task has no tuned rate for this optimizer.
        schedule_free: True when the optimizer replaces a decaying schedule itself (schedule-free AdamW):
            a run then applies only the schedule's linear warm-up to it.
    """

    default_lr: ClassVar[float]
    schedule_free: ClassVar[bool] = False

    @abc.abstractmethod
    def build(self, params: Iterable[torch.Tensor], lr: float) -> torch.optim.Optimizer:
        """A new optimizer over ``params`` (the model's parameters, in order) at learning rate ``lr``."""

    @contextlib.contextmanager
    def evaluation(self, optimizer: torch.optim.Optimizer) -> Iterator[None]:
        """A context during which the parameters hold the weights to be judged (an average, a
        schedule-free evaluation point), and after which training continues exactly where it was, bit
        for bit. ``optimizer`` is one this plugin built. The default judges the weights as they are."""
        yield


def reevaluates_closure(optimizer: torch.optim.Optimizer) -> bool:
    """True when ``optimizer.step(closure)`` may call the closure several times at weights it chooses
    itself (L-BFGS's line search). `KoopmanAccelerator` then never hands it a closure that returns a
    cached evaluation, and clears its state after an accepted jump (curvature pairs measured where the
    jump left would mislead it). An optimizer says so with a ``reevaluates_closure`` attribute (which may
    change as it trains, as adam-lbfgs's does at its switch); ``torch.optim.LBFGS`` always does."""
    import torch

    flag = getattr(optimizer, "reevaluates_closure", None)
    return bool(flag) if flag is not None else isinstance(optimizer, torch.optim.LBFGS)


def takes_jumps(optimizer: torch.optim.Optimizer) -> bool:
    """False while an optimizer asks `KoopmanAccelerator` not to jump (its ``takes_jumps`` attribute;
    adam-lbfgs sets it during its L-BFGS phase): the accelerator then steps it plainly and records no
    snapshots. True for every other optimizer."""
    return bool(getattr(optimizer, "takes_jumps", True))
