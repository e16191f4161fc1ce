"""``schedulefree-adamw``: schedule-free AdamW (Defazio et al. 2024) from Meta's ``schedulefree`` package.

Taken from the package (its authors' reference implementation, maintained) rather than written here.
Schedule-free AdamW trains at an interpolation point ``y`` and is judged at the averaged point ``x``:
the package swaps the parameters between them with ``optimizer.train()`` and ``optimizer.eval()``. Those
swaps are interpolations in floating point, so a round trip is not exact; `evaluation` therefore keeps a
copy of the training weights and puts it back, and training continues bit for bit.

It replaces a decaying schedule by its own averaging (``schedule_free = True``): a run gives it only the
schedule's linear warm-up, through the learning rate it reads at every step (the same as the package's
own ``warmup_steps``).

`ScheduleFreeAverage` reads and moves the averaged point ``x`` while the optimizer trains, for averaged
evaluation (``snapshot="average"``): in train mode the parameters hold ``y = (1 - beta1) z + beta1 x``
and the optimizer's state holds ``z``, so ``x`` is what the package's ``eval()`` computes from them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

import torch

from koopsweep._params import require
from koopsweep.optimizers._base import OptimizerPlugin
from koopsweep.optimizers._torch import check_params


class ScheduleFreeAdamW(OptimizerPlugin):
    """``schedulefree.AdamWScheduleFree``, in train mode; judged at its averaged point.

    Parameters keep the package's names and defaults: ``beta1`` (0.9), ``beta2`` (0.999), ``eps``,
    ``weight_decay`` (0), ``r`` (0: uniform averaging) and ``weight_lr_power`` (2).
    """

    default_lr = 2.5e-3
    schedule_free: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {
        "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0, "r": 0.0, "weight_lr_power": 2.0,
    }  # fmt: skip

    def validate_params(self) -> None:
        check_params(self)
        for name in ("r", "weight_lr_power"):
            value = self.params[name]
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
            require(ok, self, name, value, "a number >= 0")

    def build(self, params: Iterable[torch.Tensor], lr: float) -> torch.optim.Optimizer:
        import schedulefree

        p = self.params
        optimizer = schedulefree.AdamWScheduleFree(
            params, lr=lr, betas=(p["beta1"], p["beta2"]), eps=p["eps"], weight_decay=p["weight_decay"],
            r=p["r"], weight_lr_power=p["weight_lr_power"], warmup_steps=0,
        )  # fmt: skip
        optimizer.train()  # it refuses to step until told it is training
        return optimizer

    @contextlib.contextmanager
    def evaluation(self, optimizer: torch.optim.Optimizer) -> Iterator[None]:  # noqa: D102
        params = [p for group in optimizer.param_groups for p in group["params"]]
        with torch.no_grad():
            training_weights = [p.detach().clone() for p in params]
        optimizer.eval()
        try:
            yield
        finally:
            optimizer.train()
            with torch.no_grad():
                torch._foreach_copy_(params, training_weights)


class ScheduleFreeAverage:
    """The averaged point ``x`` of a ``schedulefree.AdamWScheduleFree`` in train mode (an `AveragedPoint`).

    A jump that lands ``x`` at ``x + d`` moves ``z`` by the same ``d``, so ``y`` moves by ``d`` too: the
    three sequences are translated together and keep their distances (the lead of ``z`` over ``x``, which
    carries the step's momentum). Moving ``x`` alone would leave ``z`` behind, and the averaging would
    pull ``x`` back towards it over the following steps."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    def _entries(self) -> list[tuple[torch.Tensor, torch.Tensor | None, float]]:
        """(parameter y, its z or None before the first step, beta1) for each parameter."""
        return [
            (p, self.optimizer.state[p].get("z"), float(group["betas"][0]))
            for group in self.optimizer.param_groups
            for p in group["params"]
        ]

    @torch.no_grad()
    def average_into(self, out: list[torch.Tensor]) -> None:  # noqa: D102
        for (y, z, beta1), o in zip(self._entries(), out, strict=True):
            if z is None:  # before the first step x = y = z
                o.copy_(y)
            else:  # x = y + (1 - 1/beta1) (z - y), as eval() computes it
                torch.lerp(y, z, 1.0 - 1.0 / beta1, out=o)

    def average(self) -> list[torch.Tensor]:  # noqa: D102
        out = [torch.empty_like(y) for y, _, _ in self._entries()]
        self.average_into(out)
        return out

    @torch.no_grad()
    def land(self, values: list[torch.Tensor], origin: list[torch.Tensor]) -> list[torch.Tensor]:  # noqa: D102
        weights = []
        for (_, z, beta1), x, x0 in zip(self._entries(), values, origin, strict=True):
            if z is None:  # nothing to translate yet: the first step starts z from the weights
                weights.append(x)
                continue
            z.add_(x - x0)
            weights.append(torch.lerp(z, x, beta1))  # y = (1 - beta1) z + beta1 x
        return weights


def schedule_free_average(optimizer: torch.optim.Optimizer) -> ScheduleFreeAverage | None:
    """`ScheduleFreeAverage` of a schedule-free AdamW, or None for any other optimizer."""
    import schedulefree

    return ScheduleFreeAverage(optimizer) if isinstance(optimizer, schedulefree.AdamWScheduleFree) else None
