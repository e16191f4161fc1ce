"""The `worth-it` fallback rule: a jump of h steps is kept only when its loss drop is worth ``worth``
times what plain training's own rate (read from the window's loss curve, or between two attempts)
would give over h steps; for ``chain`` attempts after a kept jump, any drop is kept."""

from __future__ import annotations

import math

import pytest
import torch
from test_accelerator import Scaled, _resume, assert_same_params, batches, mlp, mlp_closure
from test_fallbacks import FakeProposal, horizon_of

from koopsweep import KoopmanAccelerator, plugins
from koopsweep.errors import ParameterError
from koopsweep.fallbacks import FallbackRule, Verify, WorthIt
from koopsweep.fallbacks._worth import window_trend


def proposal(horizon=10, *, before, loss, steps=20, unusable=None):
    jump = FakeProposal(horizon, before=before, default_loss=loss, unusable=unusable)
    jump.steps_since_last_attempt = steps
    return jump


def test_registered_and_validated():
    assert plugins.load_fallback("worth-it") is WorthIt
    plugins.validate("fallbacks", WorthIt)
    assert set(WorthIt.search_space()) <= set(WorthIt.defaults)
    for bad in ({"worth": -0.1}, {"worth": math.inf}, {"worth": True}, {"tol": -1.0}, {"floor": math.nan},
                {"floor": "0"}, {"smoothness": 1.5}, {"smoothness": -0.1}, {"smoothness": None}, {"chain": -1},
                {"chain": 1.5}, {"chain": True}):
        with pytest.raises(ParameterError, match=next(iter(bad))):
            WorthIt(**bad)


def test_the_first_attempt_only_measures_and_costs_no_check():
    rule = WorthIt()
    jump = proposal(before=1.0, loss=0.1)
    decision = rule.decide(jump)
    assert not decision.accepted and decision.reason == "measuring" and not decision.back_off
    assert jump.evaluated() == [] and jump.asked_before()  # loss_before's gradients serve the next step
    assert rule.loss_after == 1.0


def test_a_jump_is_kept_only_when_its_drop_is_worth_its_horizon():
    # Plain training fell from 1.0 to 0.8 over 20 steps: 0.01 per step. A 10-step jump must then drop the
    # loss by at least worth * 0.01 * 10 = 0.05.
    rule = WorthIt(worth=0.5)
    rule.loss_after = 1.0
    small = proposal(before=0.8, loss=0.76)  # drops 0.04 < 0.05: lower, but not worth the steps it skips
    decision = rule.decide(small)
    assert not decision.accepted and decision.reason == "not-worth-it"
    assert rule.loss_after == 0.8  # the weights stay where they were
    assert Verify().decide(proposal(before=0.8, loss=0.76)).accepted  # where verify would have kept it

    rule.loss_after = 1.0
    big = proposal(before=0.8, loss=0.74)  # drops 0.06 >= 0.05
    decision = rule.decide(big)
    assert decision.accepted and horizon_of(decision) == 10
    assert big.log.index(("before",)) < big.log.index(("evaluate", 10))  # the cost convention
    assert rule.loss_after == 0.74  # the next rate starts where the jump landed


def test_no_jump_while_the_loss_is_not_falling_and_a_higher_loss_is_never_kept():
    rule = WorthIt()
    rule.loss_after = 0.8
    flat = proposal(before=0.85, loss=0.1)  # the loss rose between attempts: nothing to extrapolate
    decision = rule.decide(flat)
    assert decision.reason == "not-descending" and flat.evaluated() == []
    assert decision.back_off  # a flat stretch is no passing matter: the backoff counts it
    rule.loss_after = 1.0
    assert rule.decide(proposal(before=0.8, loss=0.9)).reason == "loss-increased"
    rule.loss_after = 1.0
    assert rule.decide(proposal(before=0.8, loss=math.inf)).reason == "loss-increased"


def test_a_drop_below_the_floor_is_unreachable_and_costs_no_fit():
    # 0.01 per step over 20 steps; a 100-step jump must drop 0.5 * 0.01 * 100 = 0.5, more than the 0.3
    # a non-negative loss has left: declined before the fit.
    rule = WorthIt()
    rule.loss_after = 0.5
    jump = proposal(horizon=100, before=0.3, loss=0.0)
    decision = rule.decide(jump)
    assert decision.reason == "unreachable" and jump.evaluated() == [] and ("predict", 100) not in jump.log
    assert not decision.back_off  # a passing decline: the accelerator tries again at the next window
    assert rule.loss_after == 0.3
    # The same attempt is judged (and kept: it drops 0.3 + 0.25 >= 0.5) with no bound, or one far enough down.
    for floor in (None, -1.0):
        rule = WorthIt(floor=floor)
        rule.loss_after = 0.5
        assert rule.decide(proposal(horizon=100, before=0.3, loss=-0.25)).accepted
    # A loss already below the floor shows it is no bound: it is ignored.
    rule = WorthIt(floor=0.0)
    rule.loss_after = -0.8
    assert rule.decide(proposal(horizon=100, before=-1.0, loss=-2.1)).accepted
    # Where the drop is within reach, the rule judges as before.
    rule = WorthIt()
    rule.loss_after = 0.5
    assert rule.decide(proposal(horizon=10, before=0.3, loss=0.1)).accepted


def test_a_loss_curve_that_is_not_smooth_gates_the_jump_off_before_the_fit():
    # Minibatch noise, rough at every lag: smoothness 0.31 read every step, 0.43 every other step.
    noisy = [1.0, 0.7, 0.95, 0.9, 0.6, 0.85, 0.55]
    smooth = [1.0, 0.9, 0.82, 0.76, 0.71, 0.67]  # monotone: falls by its whole variation
    for curve, threshold, gated in ((noisy, 0.5, True), (noisy, 0.25, False), (smooth, 0.5, False),
                                    (smooth, 1.0, False), (noisy, 0.0, False), (None, 0.5, False), ([1.0, 2.0], 0.5, False)):  # fmt: skip
        rule = WorthIt(smoothness=threshold)
        rule.loss_after = 1.0
        jump = FakeProposal(10, before=0.8, default_loss=0.1, window_losses=curve)
        jump.steps_since_last_attempt = 20
        decision = rule.decide(jump)
        assert (decision.reason == "not-smooth") == gated, (curve, threshold)
        if gated:
            assert ("predict", 10) not in jump.log and jump.evaluated() == [] and rule.loss_after == 0.8
        else:
            assert decision.accepted


def test_the_window_losses_are_what_each_inner_step_returned():
    """The proposal's window_losses are the losses the closure returned at each inner step of the window
    (strided, after a backoff wait, across a checkpoint), and None without a closure."""

    class Curves(FallbackRule):
        needs_closure = False
        defaults: dict = {}

        def __init__(self, **params):
            super().__init__(**params)
            self.curves = []

        def decide(self, jump):
            from koopsweep.fallbacks import Decision

            self.curves.append(jump.window_losses)
            jump.predict(jump.horizon)  # a fitted attempt: a rejection backs off
            return Decision.reject("recorded")

    def make(model, rule):
        return KoopmanAccelerator(torch.optim.SGD(model.parameters(), lr=0.1), Scaled(), window=3, horizon=4,
                                  fallback=rule, stride=2, burn_in=1, backoff=1)  # fmt: skip

    model, rule = mlp(), Curves()
    acc = make(model, rule)
    returned = []
    for batch in batches(30):
        returned.append(float(acc.step(mlp_closure(model, acc, batch)).detach()))
    # burn-in 1, a window of 3 x 2 steps, the attempt; then a wait of 1 window before each next one.
    first, second = returned[1:7], returned[13:19]
    assert rule.curves[0] == pytest.approx(first, abs=0) and rule.curves[1] == pytest.approx(second, abs=0)

    resumed_model, resumed_rule = mlp(), Curves()
    resumed = make(resumed_model, resumed_rule)
    _resume(model, acc, resumed_model, resumed)  # after 30 steps: mid-window
    for batch in batches(20, seed=2):
        acc.step(mlp_closure(model, acc, batch))
        resumed.step(mlp_closure(resumed_model, resumed, batch))
    assert resumed_rule.curves == rule.curves[-len(resumed_rule.curves):] and resumed_rule.curves

    bare_rule = Curves()
    bare = KoopmanAccelerator(torch.optim.SGD(mlp().parameters(), lr=0.1), Scaled(), window=3, fallback=bare_rule)
    for _ in range(4):
        bare.step()  # the user computed no gradients: the step changes nothing, and returns no loss
    assert bare_rule.curves == [None]

    # Mean snapshots are not the weights the steps' losses were measured at: no curve.
    mean_model, mean_rule = mlp(), Curves()
    mean = KoopmanAccelerator(torch.optim.SGD(mean_model.parameters(), lr=0.1), Scaled(), window=3, stride=2,
                              snapshot="mean", fallback=mean_rule)  # fmt: skip
    for batch in batches(7):
        mean.step(mlp_closure(mean_model, mean, batch))
    assert mean_rule.curves == [None]


def test_the_floor_changes_no_decision_only_what_it_costs():
    """With a non-negative loss, every jump the floor declines would have been rejected after its fit and
    check: a run with the floor is the run without it bit for bit, with fewer fits and evaluations."""
    runs = {}
    for floor in (0.0, None):
        model = mlp()
        acc = KoopmanAccelerator(torch.optim.Adam(model.parameters(), lr=2e-2), Scaled(factor=0.5), window=3,
                                 horizon=200, fallback="worth-it", fallback_params={"floor": floor, "smoothness": 0.0}, backoff=0)  # fmt: skip
        for batch in batches(60):
            acc.step(mlp_closure(model, acc, batch))
        runs[floor] = (model, acc.stats)
    (floored, with_floor), (unbounded, without) = runs[0.0], runs[None]
    assert_same_params(floored, unbounded)
    assert with_floor.rejections.get("unreachable", 0) > 0 and "unreachable" not in without.rejections
    assert with_floor.jumps_tried == without.jumps_tried and with_floor.jumps_accepted == without.jumps_accepted
    assert with_floor.fits < without.fits and with_floor.evaluations < without.evaluations


def test_an_unusable_prediction_costs_no_check_and_the_measurement_goes_on():
    rule = WorthIt()
    rule.loss_after = 1.0
    jump = proposal(before=0.8, loss=0.1, unusable={10: "exploding"})
    assert rule.decide(jump).reason == "exploding"
    assert jump.evaluated() == []
    assert rule.loss_after == 0.8  # the weights stay where loss_before measured them


def test_attempts_declined_from_the_rate_alone_fit_nothing():
    """The variant is fitted only when the rule asks for a prediction: attempts after a stretch where the
    loss rose, over a curve that is not smooth, or with a drop out of reach cost no fit; the others fit
    once each. The window's loss curve gives a rate from the first attempt on: none only measures."""
    model = mlp()
    acc = KoopmanAccelerator(torch.optim.Adam(model.parameters(), lr=1e-2), Scaled(), window=3, horizon=4,
                             fallback="worth-it", backoff=0, max_overhead=None)  # fmt: skip
    for batch in batches(4):  # one window and the first attempt
        acc.step(mlp_closure(model, acc, batch))
    assert acc.stats.jumps_tried == 1 and "measuring" not in acc.stats.rejections
    for batch in batches(40)[4:]:
        acc.step(mlp_closure(model, acc, batch))
    stats = acc.stats
    declined = sum(stats.rejections.get(r, 0) for r in ("measuring", "not-descending", "not-smooth", "unreachable"))
    assert stats.jumps_tried > declined > 0
    assert stats.fits == stats.jumps_tried - declined
    assert stats.to_dict()["fits"] == stats.fits


def test_worth_zero_judges_as_verify_does():
    for before, loss in ((0.8, 0.79), (0.8, 0.81), (0.8, 0.8)):
        rule = WorthIt(worth=0.0)
        assert rule.decide(proposal(before=before, loss=loss)).accepted == Verify().decide(
            proposal(before=before, loss=loss)
        ).accepted


class Recorder(FallbackRule):
    """Rejects every jump after fitting it (an attempt that cost something), recording the steps since
    the previous attempt it was offered; ``free``: rejects before any fit instead."""

    needs_closure = False
    defaults: dict = {}

    def __init__(self, free=False, **params):
        super().__init__(**params)
        self.gaps: list[int] = []
        self.free = free

    def decide(self, jump):
        from koopsweep.fallbacks import Decision

        self.gaps.append(jump.steps_since_last_attempt)
        if not self.free:
            jump.predict(jump.horizon)
        return Decision.reject("recorded")


@pytest.mark.parametrize("stride, backoff", [(1, 0), (2, 0), (1, 2)])
def test_the_accelerator_offers_the_steps_since_the_last_attempt(stride, backoff):
    model = mlp()
    rule = Recorder()
    acc = KoopmanAccelerator(torch.optim.SGD(model.parameters(), lr=0.1), Scaled(), window=3, horizon=4,
                             fallback=rule, stride=stride, burn_in=2, backoff=backoff, max_overhead=None)  # fmt: skip
    for batch in batches(60):
        acc.step(mlp_closure(model, acc, batch))
    window_steps = 3 * stride
    first = 2 + window_steps  # burn-in, then a full window
    if backoff == 0:
        assert rule.gaps[:4] == [first, window_steps, window_steps, window_steps]
    else:  # after k rejections in a row the accelerator waits 2**min(k, 2) - 1 windows first
        assert rule.gaps[:4] == [first, 2 * window_steps, 4 * window_steps, 4 * window_steps]


def test_window_trend_reads_through_a_period_two_flip():
    # Full-batch Adadelta at the edge of stability: high and low losses alternate while both halves fall.
    flip = [1.0, 0.5, 0.98, 0.49, 0.96, 0.48, 0.94, 0.47]
    trend = window_trend(flip)
    assert trend.lag == 2 and trend.smoothness == pytest.approx(1.0)
    assert trend.rate == pytest.approx(sum(a - b for a, b in zip(flip, flip[2:])) / (2 * 6))
    assert window_trend([1.0, 0.9, 0.8, 0.7, 0.6]).lag == 1  # a monotone curve: every step (the first on a tie)
    assert window_trend([1.0, 0.9]) is None and window_trend(None) is None
    broken = window_trend([1.0, math.nan, 0.8, 0.7])
    assert math.isnan(broken.rate) and broken.smoothness == -math.inf
    # A flip is no reason to decline (0.02 a step: a 10-step jump must drop 0.1); a non-finite loss is.
    assert WorthIt().decide(windowed(flip, before=0.47, loss=0.3)).accepted
    assert WorthIt().decide(windowed([1.0, math.inf, 0.7], before=0.7, loss=0.3)).reason == "not-descending"


def windowed(curve, *, before, loss, horizon=10):
    jump = FakeProposal(horizon, before=before, default_loss=loss, window_losses=curve)
    jump.steps_since_last_attempt = len(curve)
    return jump


def test_after_a_kept_jump_the_chain_judges_as_verify_does():
    rising = [0.70, 0.72, 0.75, 0.78]  # the loss relaxing upwards after a jump
    rule = WorthIt(chain=2)
    assert rule.decide(windowed(rising, before=0.78, loss=0.5)).reason == "not-descending"
    falling = [1.0, 0.9, 0.82, 0.76]  # 0.08 a step: a 10-step jump must drop 0.4
    assert rule.decide(windowed(falling, before=0.76, loss=0.3)).reason == "worth-it"
    # Now a rising window's jump is tried, and any drop is kept; each kept jump starts the count again.
    for _ in range(3):
        jump = windowed(rising, before=0.78, loss=0.77)
        decision = rule.decide(jump)
        assert decision.reason == "chained" and jump.evaluated() == [10]
    assert rule.decide(windowed(rising, before=0.78, loss=0.79)).reason == "loss-increased"
    assert rule.decide(windowed(rising, before=0.78, loss=0.9)).reason == "loss-increased"
    # Two attempts in a row kept nothing: the chain is over, and the rate rule judges again (no fit).
    jump = windowed(rising, before=0.78, loss=0.5)
    assert rule.decide(jump).reason == "not-descending" and jump.evaluated() == []
    # chain=0: never.
    rule = WorthIt(chain=0)
    assert rule.decide(windowed(falling, before=0.76, loss=0.3)).accepted
    assert rule.decide(windowed(rising, before=0.78, loss=0.5)).reason == "not-descending"


def test_state_dict_keeps_what_the_rule_measured():
    def make(model):
        return KoopmanAccelerator(torch.optim.Adam(model.parameters(), lr=2e-2), Scaled(factor=0.5), window=3,
                                  horizon=4, fallback="worth-it", fallback_params={"worth": 0.1}, backoff=0,
                                  max_overhead=None)  # fmt: skip

    model, resumed_model = mlp(), mlp()
    acc, resumed = make(model), make(resumed_model)
    data = batches(40)
    for batch in data[:13]:  # three attempts: the rule holds the loss after the last one
        acc.step(mlp_closure(model, acc, batch))
    assert acc.fallback.loss_after is not None
    _resume(model, acc, resumed_model, resumed)
    assert resumed.fallback.loss_after == acc.fallback.loss_after
    assert resumed.fallback.since_kept == acc.fallback.since_kept
    for batch in data[13:]:
        acc.step(mlp_closure(model, acc, batch))
        resumed.step(mlp_closure(resumed_model, resumed, batch))
    assert_same_params(model, resumed_model)
    assert acc.stats.to_dict()["rejections"] == resumed.stats.to_dict()["rejections"]
    assert acc.stats.jumps_tried >= 8
