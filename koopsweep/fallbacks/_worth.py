"""``worth-it``: keep a jump only when it gains what the steps it skips would have.

`Verify` keeps any jump that does not raise the loss. A jump that lowers the loss a little, far less
than plain training would have over the same span, still counts its whole horizon as done, and the
run then pays for it: measured on ``digits-mlp`` the default configuration accepted two thirds of its
jumps and still ended above Adam's loss at equal steps on three seeds of five. This rule measures
plain training's own progress between two jump attempts (the loss just after the previous attempt,
the loss before this one, and the steps between; the first attempt only measures) and accepts a jump
of ``h`` steps only when its drop is at least ``worth`` times what that rate would give over ``h``
steps. While the loss is not falling between attempts (a noisy or flat stretch: nothing to
extrapolate) it does not jump, and pays for neither a fit nor a check; nor while the loss curve over
the window (the loss each inner step returned) is not smooth enough, its net drop less than
``smoothness`` times the total variation along it (minibatch noise, or an optimizer that oscillates:
a trajectory a linear operator will not continue); nor when the drop it would need is more than the
loss has left above ``floor``, a lower bound on the loss (0, the default, for the non-negative losses
of classification and regression): early in a run, where the loss falls fast, no jump can be worth
its horizon, and on a run of a second the fits saved are a few percent of its time.

Like `Verify` it costs at most one closure call per usable jump, accepted or not, and an attempt it
declines from the rate alone costs no fit; what it remembers (the loss after the last attempt)
travels in the accelerator's ``state_dict``.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any, ClassVar

from koopsweep._params import require
from koopsweep.fallbacks._base import Decision, FallbackRule, JumpProposal
from koopsweep.fallbacks._rules import _check_tol, _tol_space, _unusable, passes


class WorthIt(FallbackRule):
    """`Verify` at the configured horizon ``h``, and accepted only if ``loss_before - loss(pred) >=
    worth * rate * h``, where ``rate`` is the loss's drop per inner step between the previous attempt
    and this one. The first attempt (no rate yet: ``measuring``) and an attempt after a stretch where the
    loss did not fall (``not-descending``) are rejected without a fit or a check; so are an attempt whose
    window's loss curve falls by less than ``smoothness`` times its total variation (``not-smooth``; 0
    disables the gate) and one whose needed drop would take the loss below ``floor`` (``unreachable``).
    ``floor=None``: no bound is known; a loss measured below the floor shows it is none, and it is then
    ignored. ``worth=0`` judges as `Verify`."""

    defaults: ClassVar[dict[str, Any]] = {"tol": 0.0, "worth": 0.5, "smoothness": 0.5, "floor": 0.0}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.loss_after: float | None = None  # the loss where the previous attempt left the weights

    @classmethod
    def search_space(cls) -> dict[str, Any]:
        from optuna.distributions import FloatDistribution

        return {
            "tol": _tol_space(),
            "worth": FloatDistribution(0.05, 2.0, log=True),
            "smoothness": FloatDistribution(0.0, 0.9),  # 1 would allow only a monotone curve
        }

    def validate_params(self) -> None:
        _check_tol(self)
        worth = self.params["worth"]
        ok = isinstance(worth, Real) and not isinstance(worth, bool) and math.isfinite(worth) and worth >= 0
        require(ok, self, "worth", worth, "a finite number >= 0 (0 judges as verify does)")
        self.params["worth"] = float(worth)
        smoothness = self.params["smoothness"]
        ok = isinstance(smoothness, Real) and not isinstance(smoothness, bool) and 0 <= smoothness <= 1
        require(ok, self, "smoothness", smoothness, "a number from 0 (no gate) to 1 (only a monotone loss curve)")
        self.params["smoothness"] = float(smoothness)
        floor = self.params["floor"]
        ok = floor is None or (isinstance(floor, Real) and not isinstance(floor, bool) and math.isfinite(floor))
        require(ok, self, "floor", floor, "None or a finite number (a lower bound on the loss)")
        self.params["floor"] = None if floor is None else float(floor)

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        return {"loss_after": self.loss_after}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: D102
        value = state.get("loss_after")
        self.loss_after = None if value is None else float(value)

    def rate(self, loss_before: float, steps: int) -> float | None:
        """Plain training's drop in loss per inner step since the previous attempt (None before one)."""
        if self.loss_after is None or steps <= 0 or not math.isfinite(self.loss_after) or not math.isfinite(loss_before):
            return None
        return (self.loss_after - loss_before) / steps

    def smooth_enough(self, losses: list[float] | None) -> bool:
        """Whether the window's loss curve falls by at least ``smoothness`` times its total variation (a
        curve with fewer than 3 points, or none, passes: there is nothing to judge)."""
        threshold = self.params["smoothness"]
        if threshold <= 0 or losses is None or len(losses) < 3:
            return True
        variation = sum(abs(b - a) for a, b in zip(losses, losses[1:]))
        return math.isfinite(variation) and losses[0] - losses[-1] >= threshold * variation

    def decide(self, jump: JumpProposal) -> Decision:
        h = jump.horizon
        # loss_before first: it is the inner step's own gradient evaluation whenever the jump is rejected,
        # so measuring the rate costs nothing, and a rejection decided from it alone costs no fit either.
        before = jump.loss_before
        rate = self.rate(before, jump.steps_since_last_attempt)
        self.loss_after = before  # where a rejection leaves the weights
        judged = self.params["worth"] > 0
        # Rejected before the fit: the first attempt, which only measures where the rate starts, and any
        # attempt after a stretch where the loss did not fall (nothing to extrapolate).
        if judged and rate is None:
            return Decision.reject("measuring")
        if judged and rate <= 0:
            return Decision.reject("not-descending")
        if judged and self.params["smoothness"] > 0 and not self.smooth_enough(jump.window_losses):
            return Decision.reject("not-smooth")
        floor = self.params["floor"]
        if judged and floor is not None and before >= floor and before - floor < self.params["worth"] * rate * h:
            return Decision.reject("unreachable")  # no jump can drop the loss that far
        pred = jump.predict(h)
        if pred is None:
            return Decision.reject(_unusable(jump, h))
        loss = jump.evaluate(pred)
        if not passes(loss, before, self.params["tol"]):
            return Decision.reject("loss-increased")
        if judged and before - loss < self.params["worth"] * rate * h:
            return Decision.reject("not-worth-it")
        self.loss_after = loss
        return Decision.accept(pred, h, "worth-it")
