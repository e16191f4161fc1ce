"""``worth-it``: keep a jump only when it gains what the steps it skips would have.

`Verify` keeps any jump that does not raise the loss. A jump that lowers the loss a little, far less
than plain training would have over the same span, still counts its whole horizon as done, and the
run then pays for it: measured on ``digits-mlp`` the default configuration accepted two thirds of its
jumps and still ended above Adam's loss at equal steps on three seeds of five. This rule reads plain
training's own progress from the window's loss curve (the loss each inner step returned; between two
attempts when there is none) and accepts a jump of ``h`` steps only when its drop is at least
``worth`` times what that rate would give over ``h`` steps. While the loss is not falling (a noisy or
flat stretch: nothing to extrapolate) it does not jump, and pays for neither a fit nor a check; nor
while the window's curve is not smooth enough, its net drop less than ``smoothness`` times its total
variation (minibatch noise: a trajectory a linear operator will not continue); nor when the drop it
would need is more than the loss has left above ``floor``, a lower bound on the loss (0, the default,
for the non-negative losses of classification and regression): early in a run, where the loss falls
fast, plain training is already doing what a jump would.

Once a jump is kept, the rule has evidence that the operator continues this trajectory, and the
measured rate stops meaning much: after a jump the inner optimizer's state belongs to the weights it
left, and the loss relaxes upwards for a window or two, so the next windows read as "not descending"
although the next jump would pay again. For the ``chain`` attempts after a kept jump the rule therefore
judges as `Verify` does (any drop is kept, and each kept jump starts the count again); then it asks for
jumps worth their horizon again. On ``digits-mlp`` the first jump is never worth its horizon, so no
chain starts there.

Why the paper's oscillator under full-batch Adadelta lost its gain to this rule (issue 26: 1.03x, where
`verify` keeps 3.1-3.4x), measured attempt by attempt: the step size sits at the edge of stability, so
the loss alternates high and low every step while both halves fall; the rate between two attempts
read that flip's amplitude, and the smoothness test saw a rough curve (both now read the window at the
lag of `TREND_LAGS` where it is smoothest); after each kept jump the relaxation read as not descending
(the chain); and the early declines (``measuring``, ``unreachable``: not yet, rather than not here)
counted towards the accelerator's backoff, so by the time jumps were worth their horizon the rule was
waiting many windows between attempts. Those two declines now pass (`PASSING`): the accelerator
neither counts them nor waits after them.

Like `Verify` it costs at most one closure call per usable jump, accepted or not, and an attempt it
declines from the loss curve alone costs no fit (nor, for a passing decline, any backoff); what it
remembers (the loss after the last attempt, the attempts since the last kept jump) travels in the
accelerator's ``state_dict``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import Any, ClassVar

from koopsweep._params import require
from koopsweep.fallbacks._base import Decision, FallbackRule, JumpProposal
from koopsweep.fallbacks._rules import _check_int, _check_tol, _tol_space, _unusable, passes


#: Lags at which `window_trend` reads a loss curve: every step, and every other step, which sees through
#: the period-two flip of a step size at the edge of stability (full-batch Adadelta on the oscillator
#: alternates a high and a low loss every step while both halves fall steadily: a trajectory a linear
#: operator continues, its eigenvalue near -1 included). Minibatch noise is rough at every lag.
TREND_LAGS = (1, 2)

#: Declines that say "not yet" rather than "not here": the first attempt only measures the rate, and the
#: loss falls too fast for a jump to be worth its horizon early in a run, which passes as training slows.
#: Both cost no fit, and the accelerator's backoff neither counts them nor waits after them
#: (``Decision.back_off``), so the first jump worth its horizon is tried when it comes.
PASSING = frozenset({"measuring", "unreachable"})


@dataclass(frozen=True)
class Trend:
    """A window's loss curve read at one lag ``d``: the mean drop per step, ``sum(l[t] - l[t+d]) /
    (d * (n - d))``, and how smooth the drop is, that net drop over the total variation
    ``sum|l[t] - l[t+d]|`` (1: the loss fell at every lag-``d`` step; 0 or less: no net fall)."""

    lag: int
    rate: float
    smoothness: float


def window_trend(losses: list[float] | None) -> Trend | None:
    """The window's loss curve read at the lag of `TREND_LAGS` where it is smoothest (the first on a tie),
    or None when there is no curve, or too short a one (fewer than 3 points) to judge."""
    if losses is None or len(losses) < 3:
        return None
    best: Trend | None = None
    for lag in TREND_LAGS:
        if len(losses) < 2 * lag + 1:
            break
        diffs = [a - b for a, b in zip(losses, losses[lag:])]
        variation = sum(abs(d) for d in diffs)
        if not math.isfinite(variation):
            return Trend(lag, math.nan, -math.inf)  # a non-finite loss: nothing to extrapolate
        net = sum(diffs)
        smoothness = net / variation if variation > 0 else 0.0
        trend = Trend(lag, net / (lag * len(diffs)), smoothness)
        if best is None or trend.smoothness > best.smoothness:
            best = trend
    return best


class WorthIt(FallbackRule):
    """`Verify` at the configured horizon ``h``, and accepted only if ``loss_before - loss(pred) >=
    worth * rate * h``, where ``rate`` is the loss's drop per inner step over the window (`window_trend`;
    between the previous attempt and this one where the window has no loss curve). The first attempt
    without a curve (no rate yet: ``measuring``) and an attempt over a stretch where the loss did not
    fall (``not-descending``) are rejected without a fit or a check; so are an attempt whose window's
    loss curve falls by less than ``smoothness`` times its total variation (``not-smooth``; 0 disables
    the gate) and one whose needed drop would take the loss below ``floor`` (``unreachable``).
    ``floor=None``: no bound is known; a loss measured below the floor shows it is none, and it is then
    ignored. For the ``chain`` attempts after a kept jump, any drop is kept (``chained``; 0: never).
    ``worth=0`` judges as `Verify`."""

    defaults: ClassVar[dict[str, Any]] = {"tol": 0.0, "worth": 0.5, "smoothness": 0.5, "floor": 0.0, "chain": 8}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.loss_after: float | None = None  # the loss where the previous attempt left the weights
        self.since_kept: int | None = None  # attempts since the last kept jump (None: none kept yet)

    @classmethod
    def search_space(cls) -> dict[str, Any]:
        from optuna.distributions import FloatDistribution, IntDistribution

        return {
            "tol": _tol_space(),
            "worth": FloatDistribution(0.05, 2.0, log=True),
            "smoothness": FloatDistribution(0.0, 0.9),  # 1 would allow only a monotone curve
            "chain": IntDistribution(0, 16),
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
        _check_int(self, "chain", 0)

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        return {"loss_after": self.loss_after, "since_kept": self.since_kept}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: D102
        value = state.get("loss_after")
        self.loss_after = None if value is None else float(value)
        since = state.get("since_kept")
        self.since_kept = None if since is None else int(since)

    def rate(self, loss_before: float, steps: int) -> float | None:
        """Plain training's drop in loss per inner step since the previous attempt (None before one)."""
        if self.loss_after is None or steps <= 0 or not math.isfinite(self.loss_after) or not math.isfinite(loss_before):
            return None
        return (self.loss_after - loss_before) / steps

    def decide(self, jump: JumpProposal) -> Decision:
        h = jump.horizon
        # loss_before first: it is the inner step's own gradient evaluation whenever the jump is rejected,
        # so measuring the rate costs nothing, and a rejection decided from it alone costs no fit either.
        before = jump.loss_before
        between = self.rate(before, jump.steps_since_last_attempt)
        self.loss_after = before  # where a rejection leaves the weights
        chained = self.since_kept is not None and self.since_kept < self.params["chain"]
        if self.since_kept is not None:
            self.since_kept += 1
        judged = self.params["worth"] > 0 and not chained
        need = 0.0
        if judged:
            rejection, need = self._gate(jump, before, h, between)
            if rejection:
                return Decision.reject(rejection, back_off=rejection not in PASSING)
        pred = jump.predict(h)
        if pred is None:
            return Decision.reject(_unusable(jump, h))
        loss = jump.evaluate(pred)
        if not passes(loss, before, self.params["tol"]):
            return Decision.reject("loss-increased")
        if judged and before - loss < need:
            return Decision.reject("not-worth-it")
        self.loss_after = loss
        self.since_kept = 0
        return Decision.accept(pred, h, "chained" if chained else "worth-it")

    def _gate(self, jump: JumpProposal, before: float, h: int, between: float | None) -> tuple[str | None, float]:
        """Why the attempt is declined before its fit (None: it goes on), and the drop it needs;
        ``between``: the rate between the previous attempt and this one, for a window without a curve."""
        trend = window_trend(jump.window_losses)
        # The window's own curve gives the rate where there is one: it spans plain training since the
        # previous attempt (or its backoff), read past a period-two flip; two single losses at the
        # attempts would land on either side of the flip and read its amplitude as the rate.
        rate = trend.rate if trend is not None else between
        if rate is None:  # the first attempt without a curve only measures where the rate starts
            return "measuring", 0.0
        if not rate > 0:  # NaN too: a window with a non-finite loss; nothing to extrapolate
            return "not-descending", 0.0
        threshold = self.params["smoothness"]
        if threshold > 0 and trend is not None and trend.smoothness < threshold:
            return "not-smooth", 0.0
        need = self.params["worth"] * rate * h
        floor = self.params["floor"]
        if floor is not None and before >= floor and before - floor < need:
            return "unreachable", need  # no jump can drop the loss that far
        return None, need
