"""koopsweep's built-in fallback rules: accept blindly (the paper), verify one point, backtrack, best of.

Each is registered as an entry point in ``koopsweep.fallbacks`` (``none``, ``verify``, ``backtrack``,
``best-of``). They follow the cost conventions of `koopsweep.fallbacks._base`: predict before paying for a
closure call, ask ``loss_before`` before evaluating candidates.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any, ClassVar

from koopsweep._params import require
from koopsweep.fallbacks._base import Decision, FallbackRule, JumpProposal


def passes(loss: float, loss_before: float, tol: float) -> bool:
    """Whether ``loss`` is acceptable against ``loss_before`` with relative tolerance ``tol``.

    A non-finite ``loss`` never passes; any finite loss passes against a non-finite ``loss_before``
    (the current point has already diverged, so anything finite is an improvement).
    """
    if not math.isfinite(loss):
        return False
    if not math.isfinite(loss_before):
        return True
    return loss <= loss_before + tol * abs(loss_before)


def _unusable(jump: JumpProposal, horizon: int) -> str:
    return jump.unusable_reason(horizon) or "unusable"


def _tol_space() -> Any:
    from optuna.distributions import FloatDistribution

    return FloatDistribution(0.0, 0.05)


def _check_tol(rule: FallbackRule) -> None:
    tol = rule.params["tol"]
    require(
        isinstance(tol, Real) and not isinstance(tol, bool) and math.isfinite(tol) and tol >= 0,
        rule, "tol", tol, "a finite number >= 0 (relative slack on the loss before the jump)",
    )  # fmt: skip


def _check_int(rule: FallbackRule, name: str, minimum: int) -> None:
    value = rule.params[name]
    require(
        isinstance(value, Integral) and not isinstance(value, bool) and value >= minimum,
        rule, name, value, f"an integer >= {minimum}",
    )  # fmt: skip


class AlwaysAccept(FallbackRule):
    """The paper's rule: keep ``predict(horizon)`` without looking at the loss.

    Only an unusable prediction (non-finite, exploding, a failing variant) is rejected. Needs no closure.
    """

    needs_closure: ClassVar[bool] = False
    defaults: ClassVar[dict[str, Any]] = {}

    def decide(self, jump: JumpProposal) -> Decision:
        h = jump.horizon
        pred = jump.predict(h)
        if pred is None:
            return Decision.reject(_unusable(jump, h))
        return Decision.accept(pred, h, "accepted")


class Verify(FallbackRule):
    """Evaluate the loss at ``predict(horizon)`` and keep it if it is no worse than before the jump.

    Accepts when ``loss(pred) <= loss_before + tol * |loss_before|``; a non-finite loss is never accepted.
    Costs one extra closure call per usable jump, accepted or not.
    """

    defaults: ClassVar[dict[str, Any]] = {"tol": 0.0}

    @classmethod
    def search_space(cls) -> dict[str, Any]:
        return {"tol": _tol_space()}

    def validate_params(self) -> None:
        _check_tol(self)

    def decide(self, jump: JumpProposal) -> Decision:
        h = jump.horizon
        pred = jump.predict(h)
        if pred is None:
            return Decision.reject(_unusable(jump, h))
        before = jump.loss_before  # first, so that the accepted point is the last one evaluated
        if passes(jump.evaluate(pred), before, self.params["tol"]):
            return Decision.accept(pred, h, "verified")
        return Decision.reject("loss-increased")


class Backtrack(FallbackRule):
    """Try horizons h, h//2, h//4, ... (at most ``max_halvings + 1`` of them, none below 1) and keep the
    first whose loss passes the `Verify` test. Costs one closure call per usable candidate tried, plus one
    for the loss before the jump.
    """

    defaults: ClassVar[dict[str, Any]] = {"tol": 0.0, "max_halvings": 3}

    @classmethod
    def search_space(cls) -> dict[str, Any]:
        from optuna.distributions import IntDistribution

        return {"tol": _tol_space(), "max_halvings": IntDistribution(0, 6)}

    def validate_params(self) -> None:
        _check_tol(self)
        _check_int(self, "max_halvings", 0)

    def decide(self, jump: JumpProposal) -> Decision:
        tol = self.params["tol"]
        reason = "unusable"
        previous: int | None = None
        previous_pred: list | None = None
        for i in range(self.params["max_halvings"] + 1):
            h = jump.horizon >> i
            if h < 1:
                break
            if h == previous:
                continue
            previous = h
            pred = jump.predict(h)
            if pred is None:
                reason = _unusable(jump, h)
                continue
            if pred is previous_pred:  # the accelerator rounded both horizons to the same jump
                continue
            previous_pred = pred
            before = jump.loss_before
            if passes(jump.evaluate(pred), before, tol):
                return Decision.accept(pred, h, "backtracked" if i else "verified")
            reason = "loss-increased"
        return Decision.reject(reason)


class BestOf(FallbackRule):
    """Evaluate ``points`` horizons evenly spaced up to h (``round(h*i/points)`` for i = 1..points,
    distinct, at least 1) and keep the one with the lowest loss if it passes the `Verify` test (QuACK's
    "best point along the path", restricted to a few points). Ties go to the longer horizon.
    Costs one closure call per usable point plus one for the loss before the jump, plus one more when the
    best point is not the longest one evaluated (its gradient has to be recomputed).
    """

    defaults: ClassVar[dict[str, Any]] = {"points": 4, "tol": 0.0}

    @classmethod
    def search_space(cls) -> dict[str, Any]:
        from optuna.distributions import IntDistribution

        return {"points": IntDistribution(2, 8), "tol": _tol_space()}

    def validate_params(self) -> None:
        _check_int(self, "points", 1)
        _check_tol(self)

    @staticmethod
    def horizons(horizon: int, points: int) -> list[int]:
        """The distinct horizons evaluated for a jump of ``horizon`` steps, ascending."""
        # Integer round-half-up of horizon*i/points, without float error.
        return sorted({max(1, (2 * horizon * i + points) // (2 * points)) for i in range(1, points + 1)})

    def decide(self, jump: JumpProposal) -> Decision:
        reason = "unusable"
        best: tuple[float, int, list] | None = None
        before = math.inf
        for h in self.horizons(jump.horizon, self.params["points"]):
            pred = jump.predict(h)
            if pred is None:
                reason = _unusable(jump, h)
                continue
            before = jump.loss_before
            loss = jump.evaluate(pred)
            if best is None or loss <= best[0]:
                best = (loss, h, pred)
        if best is None:
            return Decision.reject(reason)
        if passes(best[0], before, self.params["tol"]):
            return Decision.accept(best[2], best[1], "best-of")
        return Decision.reject("loss-increased")
