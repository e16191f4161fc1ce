"""``adaptive``: verify one point, at a horizon learned from how the previous jumps went.

A fixed horizon is either too timid where the weights move smoothly (accepted jumps that could have
gone further) or too bold where they do not (every jump rejected, each costing a closure call). This
rule keeps a scale on the configured horizon: after an accepted jump it grows (by ``grow``, up to
``max_factor``), after a rejected or unusable one it shrinks (by ``shrink``, down to ``min_factor``).
The check is `Verify`'s, so each jump still costs exactly one closure call, accepted or not.

The scale is state of the rule instance, i.e. of one accelerator's run; it travels in the
accelerator's ``state_dict``, so a resumed run continues from the horizon it had reached.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any, ClassVar

from koopsweep._params import require
from koopsweep.fallbacks._base import Decision, FallbackRule, JumpProposal
from koopsweep.fallbacks._rules import _check_tol, _tol_space, _unusable, passes


class Adaptive(FallbackRule):
    """`Verify` at ``round(scale * horizon)`` (at least 1), with ``scale`` starting at 1, multiplied by
    ``grow`` after each accepted jump and by ``shrink`` after each rejection, and kept within
    ``[min_factor, max_factor]``."""

    defaults: ClassVar[dict[str, Any]] = {
        "tol": 0.0,
        "grow": 2.0,
        "shrink": 0.5,
        "max_factor": 8.0,
        "min_factor": 0.125,
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.scale = 1.0

    @classmethod
    def search_space(cls) -> dict[str, Any]:
        from optuna.distributions import FloatDistribution

        return {
            "tol": _tol_space(),
            "grow": FloatDistribution(1.0, 4.0),
            "shrink": FloatDistribution(0.1, 1.0),
            "max_factor": FloatDistribution(1.0, 32.0, log=True),
        }

    def validate_params(self) -> None:
        _check_tol(self)
        p = self.params
        at_least_one, in_unit_interval = (lambda v: v >= 1.0), (lambda v: 0.0 < v <= 1.0)
        for name, in_range, hint in (
            ("grow", at_least_one, "a number >= 1"),
            ("shrink", in_unit_interval, "a number in (0, 1]"),
            ("max_factor", at_least_one, "a number >= 1"),
            ("min_factor", in_unit_interval, "a number in (0, 1]"),
        ):
            value = p[name]
            ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value) and in_range(value)
            require(ok, self, name, value, hint)
            p[name] = float(value)

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        return {"scale": self.scale}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: D102
        self.scale = float(state["scale"])

    def current_horizon(self, configured: int) -> int:
        """The horizon the next jump will try, for a configured horizon of ``configured`` steps."""
        return max(1, round(self.scale * configured))

    def _learn(self, accepted: bool) -> None:
        p = self.params
        if accepted:
            self.scale = min(self.scale * p["grow"], p["max_factor"])
        else:
            self.scale = max(self.scale * p["shrink"], p["min_factor"])

    def decide(self, jump: JumpProposal) -> Decision:
        h = self.current_horizon(jump.horizon)
        pred = jump.predict(h)
        if pred is None:
            self._learn(False)
            return Decision.reject(_unusable(jump, h))
        before = jump.loss_before  # first, so that the accepted point is the last one evaluated
        accepted = passes(jump.evaluate(pred), before, self.params["tol"])
        self._learn(accepted)
        if accepted:
            return Decision.accept(pred, h, "verified")
        return Decision.reject("loss-increased")
