"""The `FallbackRule` contract: what to do with a proposed jump.

After a variant is fitted, the accelerator hands the rule a `JumpProposal`. The rule may ask for
predictions at any horizon and evaluate the training loss at any of them (each evaluation runs the
user's closure once, a cost that the accelerator records), then returns a `Decision`: the parameters to
keep, or ``None`` to restore the exact previous ones. Rules never touch the model themselves.
Registered as entry points in the group ``koopsweep.fallbacks``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch

from koopsweep._params import Configurable


class JumpProposal(Protocol):
    """What the accelerator offers a rule for one jump."""

    #: The accelerator's configured horizon.
    horizon: int

    def predict(self, horizon: int) -> list[torch.Tensor] | None:
        """Predicted parameters ``horizon`` steps ahead, or None when the prediction is unusable
        (non-finite, or exploding beyond the accelerator's guard)."""

    def evaluate(self, params: list[torch.Tensor]) -> float:
        """The training loss at ``params`` (one closure call; ``inf`` when it is not finite)."""

    @property
    def loss_before(self) -> float:
        """The training loss at the current parameters (evaluated once, on first use)."""


@dataclass(frozen=True)
class Decision:
    """A rule's verdict: ``params`` to keep (None rejects the jump), the horizon they correspond to
    (0 when rejected), and a short reason that the accelerator counts in its stats."""

    params: list[torch.Tensor] | None
    horizon: int
    reason: str

    @property
    def accepted(self) -> bool:
        return self.params is not None

    @classmethod
    def reject(cls, reason: str) -> Decision:
        return cls(None, 0, reason)


class FallbackRule(Configurable, abc.ABC):
    """Abstract base of fallback rules. Parameters in ``defaults``; searchable ones in ``search_space()``."""

    #: Whether the rule evaluates the loss (and therefore needs a closure in ``step``).
    needs_closure: ClassVar[bool] = True

    @abc.abstractmethod
    def decide(self, jump: JumpProposal) -> Decision:
        """Return the parameters to keep, or `Decision.reject(reason)`."""
