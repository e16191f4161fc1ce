"""The `FallbackRule` contract: what to do with a proposed jump.

After a variant is fitted, the accelerator hands the rule a `JumpProposal`. The rule may ask for
predictions at any horizon and evaluate the training loss at any of them (each evaluation runs the
user's closure once, a cost that the accelerator records), then returns a `Decision`: the parameters to
keep, or ``None`` to restore the exact previous ones. Rules never touch the model themselves.
Registered as entry points in the group ``koopsweep.fallbacks``.

Cost conventions a rule should follow, because the accelerator relies on them to keep verification
cheap:

- The variant is fitted on the first ``predict``: a rule that can decline without a prediction (from
  what it measured so far, or from ``loss_before``) should do so before asking for one, and the attempt
  then costs no fit.
- ``loss_before`` is the inner step's own gradient evaluation when the jump is rejected (its gradients
  are restored and reused), so asking it costs no extra closure call; a rule that needs no loss for an
  unusable prediction may still ask ``predict`` first and save the copy of the gradients.
- Ask ``loss_before`` *before* evaluating candidates. Every closure call leaves its gradients in the
  parameters' ``.grad``; when the accepted parameters are the last ones evaluated, the accelerator reuses
  that evaluation as the next optimizer step's gradient instead of recomputing it. A rejected jump reuses
  the ``loss_before`` evaluation the same way. Verifying one point therefore costs exactly one extra
  closure call whether it is accepted or not.
- Evaluating the same prediction object twice is free (the loss is cached by identity).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from koopsweep._params import Configurable

if TYPE_CHECKING:  # rules only pass tensors through; listing the rules must not import torch
    import torch


class JumpProposal(Protocol):
    """What the accelerator offers a rule for one jump.

    Horizons are counted in inner optimizer steps. With a snapshot stride ``s > 1`` the variant steps in
    units of ``s`` optimizer steps, so a horizon is rounded to the nearest multiple of ``s`` (at least
    ``s``); horizons that round alike return the same prediction object.
    """

    #: The accelerator's configured horizon.
    horizon: int
    #: Inner optimizer steps taken since the previous jump attempt (since the start, for the first): the
    #: plain training between two jumps, over which a rule can measure the loss's own progress.
    steps_since_last_attempt: int

    def predict(self, horizon: int) -> list[torch.Tensor] | None:
        """Predicted parameters ``horizon`` steps ahead, or None when the prediction is unusable
        (non-finite, exploding beyond the accelerator's guard, no parameter consistent, or the variant
        raised). Cached per horizon;
        the returned tensors must not be modified."""

    def unusable_reason(self, horizon: int) -> str | None:
        """Why ``predict(horizon)`` returned None (``"fit-failed"``, ``"non-finite"``, ``"exploding"``,
        ``"inconsistent"``, ``"predict-failed"``), or None when it did not (or was not asked yet)."""

    @property
    def window_losses(self) -> list[float] | None:
        """The loss each inner step returned over the window the variant is fitted on, oldest first
        (each at the weights its step started from; with minibatches, each on its own batch), or None
        when the steps returned none (``step()`` without a closure) or the snapshots are not those
        weights (``snapshot`` other than ``"last"``). Free: no closure call."""

    def evaluate(self, params: list[torch.Tensor]) -> float:
        """The training loss at ``params`` (one closure call; ``inf`` when it is not finite)."""

    @property
    def loss_before(self) -> float:
        """The training loss at the current parameters (evaluated once, on first use; ``inf`` when it is
        not finite)."""


@dataclass(frozen=True)
class Decision:
    """A rule's verdict: ``params`` to keep (None rejects the jump), the horizon they correspond to
    (0 when rejected), and a short reason. The accelerator counts the reasons of rejected jumps in
    ``stats.rejections``; the reason of an accepted one is informative only. ``back_off=False`` marks a
    rejection for a passing reason (the next window may well pass): the accelerator's backoff neither
    counts it nor waits after it."""

    params: list[torch.Tensor] | None
    horizon: int
    reason: str
    back_off: bool = True

    @property
    def accepted(self) -> bool:
        return self.params is not None

    @classmethod
    def accept(cls, params: list[torch.Tensor], horizon: int, reason: str = "accepted") -> Decision:
        return cls(params, horizon, reason)

    @classmethod
    def reject(cls, reason: str, back_off: bool = True) -> Decision:
        return cls(None, 0, reason, back_off)


class FallbackRule(Configurable, abc.ABC):
    """Abstract base of fallback rules. Parameters in ``defaults``; searchable ones in ``search_space()``."""

    #: Whether the rule evaluates the loss (and therefore needs a closure in ``step``).
    needs_closure: ClassVar[bool] = True

    @abc.abstractmethod
    def decide(self, jump: JumpProposal) -> Decision:
        """Return the parameters to keep, or `Decision.reject(reason)`."""

    def state_dict(self) -> dict[str, Any]:
        """What the rule has learned during a run (JSON-safe), saved with the accelerator's state so a
        resumed run continues exactly; nothing by default."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` saved."""
