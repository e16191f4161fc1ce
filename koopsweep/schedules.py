"""Learning-rate schedules: constant or cosine, after a linear warm-up, the same for every run it drives.

A schedule is a multiplier of the tuned learning rate by gradient step, attached to an optimizer as a
``torch.optim.lr_scheduler.LambdaLR`` and stepped once per gradient step. In a paired comparison the
baseline and the accelerated run's inner optimizer follow the same schedule step for step: a Koopman
jump does not advance it (the schedule counts the gradient steps taken, as in a user's own loop).

- ``"constant"``: 1 after the warm-up.
- ``"cosine"``: from 1 down to `FINAL_RATIO` over the run's budget (the baseline's steps), half a cosine
  period, then held there, so that an accelerated run allowed past the budget keeps a usable rate.

Warm-up: the multiplier is ``(s + 1) / warmup`` at gradient step ``s < warmup`` (never 0, so the first
step moves). A schedule-free optimizer (``OptimizerPlugin.schedule_free``) gets the warm-up alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from koopsweep.errors import UsageError

if TYPE_CHECKING:
    import torch

SCHEDULES = ("constant", "cosine")

#: Where the cosine ends, as a fraction of the tuned rate (nanoGPT's min_lr = lr / 10).
FINAL_RATIO = 0.1


@dataclass(frozen=True)
class Schedule:
    """A learning-rate multiplier by gradient step; ``total_steps`` is the span of the cosine."""

    kind: str = "constant"
    warmup: int = 0
    total_steps: int = 0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise UsageError(f"schedule {self.kind!r} is not one of {', '.join(SCHEDULES)}")
        if not isinstance(self.warmup, int) or isinstance(self.warmup, bool) or self.warmup < 0:
            raise UsageError(f"warmup={self.warmup!r} is invalid; expected an integer >= 0 (gradient steps)")
        if self.kind == "cosine" and self.total_steps <= self.warmup:
            raise UsageError(
                f"a cosine schedule needs a budget longer than its warmup ({self.total_steps} <= {self.warmup} steps)"
            )

    @property
    def is_constant(self) -> bool:
        return self.kind == "constant" and self.warmup == 0

    def factor(self, step: int) -> float:
        """The multiplier of the learning rate for gradient step ``step`` (0-based)."""
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.kind == "constant":
            return 1.0
        progress = min(1.0, (step - self.warmup) / (self.total_steps - self.warmup))
        return FINAL_RATIO + (1.0 - FINAL_RATIO) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def for_optimizer(self, schedule_free: bool) -> Schedule:
        """This schedule as applied to an optimizer: only the warm-up for a schedule-free one."""
        return replace(self, kind="constant") if schedule_free else self

    def attach(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler | None:
        """A ``LambdaLR`` driving ``optimizer``'s rates (None for a plain constant rate); step it once per
        gradient step, after ``optimizer.step()``."""
        if self.is_constant:
            return None
        import torch

        return torch.optim.lr_scheduler.LambdaLR(optimizer, self.factor)

    def describe(self) -> str:
        """``cosine, warmup 50`` and the like, for tables."""
        return self.kind + (f", warmup {self.warmup}" if self.warmup else "")
