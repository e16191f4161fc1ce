"""The built-in fallback rules' decision logic, on a fake `JumpProposal` (no model, no accelerator)."""

from __future__ import annotations

import math

import pytest
import torch

from koopsweep import plugins
from koopsweep.errors import ParameterError
from koopsweep.fallbacks import AlwaysAccept, Backtrack, BestOf, Decision, FallbackRule, Verify, passes


class FakeProposal:
    """Predictions are one-element tensors holding their horizon; losses are looked up by horizon."""

    def __init__(self, horizon, losses=None, before=1.0, unusable=None, default_loss=0.5, window_losses=None):
        self.horizon = horizon
        self.window_losses = window_losses
        self.losses = losses or {}
        self.before = before
        self.unusable = unusable or {}  # horizon -> reason
        self.default_loss = default_loss
        self.log: list[tuple] = []
        self._preds: dict[int, list[torch.Tensor]] = {}

    def predict(self, h):
        self.log.append(("predict", h))
        if h in self.unusable:
            return None
        return self._preds.setdefault(h, [torch.tensor([float(h)])])

    def unusable_reason(self, h):
        return self.unusable.get(h)

    def evaluate(self, params):
        h = int(params[0].item())
        self.log.append(("evaluate", h))
        loss = self.losses.get(h, self.default_loss)
        return loss if math.isfinite(loss) else math.inf

    @property
    def loss_before(self):
        self.log.append(("before",))
        return self.before

    def evaluated(self):
        return [entry[1] for entry in self.log if entry[0] == "evaluate"]

    def asked_before(self):
        return any(entry[0] == "before" for entry in self.log)


def horizon_of(decision: Decision) -> int:
    assert decision.accepted
    return int(decision.params[0].item())


# --- passes ----------------------------------------------------------------------------------------------


def test_passes_tolerance_semantics():
    assert passes(1.0, 1.0, 0.0)
    assert not passes(1.0 + 1e-12, 1.0, 0.0)
    assert passes(1.05, 1.0, 0.1)
    assert not passes(1.2, 1.0, 0.1)
    # relative to |loss_before|, also for negative losses
    assert passes(-0.95, -1.0, 0.1)
    assert not passes(-0.85, -1.0, 0.1)
    assert not passes(math.inf, 1.0, 0.5)
    assert not passes(math.nan, 1.0, 0.5)
    assert not passes(math.inf, math.inf, 0.0)
    assert passes(3.0, math.inf, 0.0)  # anything finite beats a diverged point


# --- none ------------------------------------------------------------------------------------------------


def test_always_accept_takes_the_prediction_without_evaluating():
    jump = FakeProposal(100)
    decision = AlwaysAccept().decide(jump)
    assert decision.accepted and decision.horizon == 100 and horizon_of(decision) == 100
    assert jump.evaluated() == [] and not jump.asked_before()
    assert AlwaysAccept.needs_closure is False


@pytest.mark.parametrize("reason", ["non-finite", "exploding", "predict-failed"])
def test_always_accept_rejects_unusable_predictions(reason):
    decision = AlwaysAccept().decide(FakeProposal(100, unusable={100: reason}))
    assert not decision.accepted and decision.reason == reason and decision.horizon == 0


# --- verify ----------------------------------------------------------------------------------------------


def test_verify_accepts_a_lower_loss_and_asks_loss_before_first():
    jump = FakeProposal(50, losses={50: 0.9}, before=1.0)
    decision = Verify().decide(jump)
    assert decision.accepted and decision.horizon == 50
    # loss_before is asked before the evaluation, so the accepted point is the last one evaluated
    assert jump.log == [("predict", 50), ("before",), ("evaluate", 50)]


def test_verify_rejects_a_higher_loss():
    decision = Verify().decide(FakeProposal(50, losses={50: 1.01}, before=1.0))
    assert not decision.accepted and decision.reason == "loss-increased"


def test_verify_tolerance():
    assert Verify(tol=0.1).decide(FakeProposal(10, losses={10: 1.05}, before=1.0)).accepted
    assert not Verify(tol=0.01).decide(FakeProposal(10, losses={10: 1.05}, before=1.0)).accepted
    assert Verify(tol=0.0).decide(FakeProposal(10, losses={10: 1.0}, before=1.0)).accepted  # equal passes


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_verify_never_accepts_non_finite_losses(bad):
    decision = Verify(tol=1e6).decide(FakeProposal(10, losses={10: bad}, before=1.0))
    assert not decision.accepted and decision.reason == "loss-increased"


def test_verify_does_not_pay_for_an_unusable_prediction():
    jump = FakeProposal(10, unusable={10: "exploding"})
    decision = Verify().decide(jump)
    assert decision.reason == "exploding"
    assert not jump.asked_before() and jump.evaluated() == []


# --- backtrack -------------------------------------------------------------------------------------------


def test_backtrack_accepts_the_first_passing_halving():
    jump = FakeProposal(16, losses={16: 2.0, 8: 1.5, 4: 0.5, 2: 0.1}, before=1.0)
    decision = Backtrack().decide(jump)
    assert decision.accepted and decision.horizon == 4 and horizon_of(decision) == 4
    assert jump.evaluated() == [16, 8, 4]  # stops at the first pass, not the best
    assert jump.log.index(("before",)) < jump.log.index(("evaluate", 16))


def test_backtrack_full_horizon_first():
    decision = Backtrack().decide(FakeProposal(16, losses={16: 0.2}, before=1.0))
    assert decision.horizon == 16


def test_backtrack_respects_max_halvings():
    jump = FakeProposal(16, losses={16: 2.0, 8: 1.5, 4: 0.5}, before=1.0)
    decision = Backtrack(max_halvings=1).decide(jump)
    assert not decision.accepted and decision.reason == "loss-increased"
    assert jump.evaluated() == [16, 8]


def test_backtrack_candidates_stop_at_one():
    jump = FakeProposal(5, default_loss=2.0, before=1.0)
    Backtrack(max_halvings=10).decide(jump)
    assert jump.evaluated() == [5, 2, 1]
    jump = FakeProposal(1, default_loss=2.0, before=1.0)
    Backtrack(max_halvings=3).decide(jump)
    assert jump.evaluated() == [1]


def test_backtrack_skips_unusable_candidates():
    jump = FakeProposal(16, losses={8: 0.5}, before=1.0, unusable={16: "exploding"})
    decision = Backtrack().decide(jump)
    assert decision.accepted and decision.horizon == 8
    assert jump.evaluated() == [8]


def test_backtrack_all_unusable_reports_the_reason():
    unusable = {16: "non-finite", 8: "non-finite", 4: "non-finite", 2: "non-finite"}
    jump = FakeProposal(16, unusable=unusable)
    decision = Backtrack().decide(jump)
    assert decision.reason == "non-finite" and not jump.asked_before()


def test_backtrack_tolerance():
    jump = FakeProposal(8, losses={8: 1.05, 4: 1.02}, before=1.0)
    assert Backtrack(tol=0.03).decide(jump).horizon == 4
    assert Backtrack(tol=0.1).decide(FakeProposal(8, losses={8: 1.05}, before=1.0)).horizon == 8


def test_backtrack_does_not_reevaluate_an_identical_prediction():
    class SameForAll(FakeProposal):
        def predict(self, h):
            self.log.append(("predict", h))
            return self._preds.setdefault(0, [torch.tensor([7.0])])

    jump = SameForAll(8, losses={7: 2.0}, before=1.0)
    assert not Backtrack(max_halvings=3).decide(jump).accepted
    assert jump.evaluated() == [7]


# --- best-of ---------------------------------------------------------------------------------------------


def test_best_of_horizons():
    assert BestOf.horizons(100, 4) == [25, 50, 75, 100]
    assert BestOf.horizons(10, 4) == [3, 5, 8, 10]  # 2.5 -> 3, 7.5 -> 8 (half up)
    assert BestOf.horizons(3, 4) == [1, 2, 3]  # distinct
    assert BestOf.horizons(1, 4) == [1]
    assert BestOf.horizons(7, 1) == [7]


def test_best_of_picks_the_lowest():
    jump = FakeProposal(100, losses={25: 0.9, 50: 0.3, 75: 0.5, 100: 0.8}, before=1.0)
    decision = BestOf().decide(jump)
    assert decision.accepted and decision.horizon == 50 and horizon_of(decision) == 50
    assert jump.evaluated() == [25, 50, 75, 100]
    assert jump.log.index(("before",)) < jump.log.index(("evaluate", 25))


def test_best_of_rejects_when_the_best_is_worse_than_before():
    jump = FakeProposal(100, losses={25: 1.2, 50: 1.1, 75: 1.3, 100: 1.4}, before=1.0)
    assert BestOf().decide(jump).reason == "loss-increased"
    jump = FakeProposal(100, losses={25: 1.2, 50: 1.05, 75: 1.3, 100: 1.4}, before=1.0)
    assert BestOf(tol=0.1).decide(jump).horizon == 50


def test_best_of_ties_go_to_the_longer_horizon():
    jump = FakeProposal(4, losses={1: 0.5, 2: 0.5, 3: 0.7, 4: 0.5}, before=1.0)
    assert BestOf().decide(jump).horizon == 4


def test_best_of_ignores_unusable_points_and_non_finite_losses():
    jump = FakeProposal(100, losses={25: 0.9, 50: math.nan}, before=1.0, unusable={75: "exploding", 100: "exploding"})
    decision = BestOf().decide(jump)
    assert decision.horizon == 25
    everything_bad = FakeProposal(8, unusable={2: "non-finite", 4: "non-finite", 6: "non-finite", 8: "exploding"})
    decision = BestOf().decide(everything_bad)
    assert decision.reason == "exploding" and not everything_bad.asked_before()


# --- parameters and registration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls, params",
    [
        (Verify, {"tol": -0.1}),
        (Verify, {"tol": math.nan}),
        (Verify, {"tol": "0.1"}),
        (Verify, {"tol": True}),
        (Backtrack, {"max_halvings": -1}),
        (Backtrack, {"max_halvings": 1.5}),
        (Backtrack, {"tol": -1.0}),
        (BestOf, {"points": 0}),
        (BestOf, {"points": 2.0}),
        (BestOf, {"tol": math.inf}),
        (AlwaysAccept, {"tol": 0.0}),
        (Verify, {"points": 3}),
    ],
)
def test_invalid_parameters(cls, params):
    with pytest.raises(ParameterError, match=next(iter(params))):
        cls(**params)


def test_defaults():
    assert Verify().params == {"tol": 0.0}
    assert Backtrack().params == {"tol": 0.0, "max_halvings": 3}
    assert BestOf().params == {"points": 4, "tol": 0.0}
    assert AlwaysAccept().params == {}


@pytest.mark.parametrize(
    "name, cls", [("none", AlwaysAccept), ("verify", Verify), ("backtrack", Backtrack), ("best-of", BestOf)]
)
def test_registered_and_valid(name, cls):
    assert plugins.load_fallback(name) is cls
    plugins.validate("fallbacks", cls)
    assert issubclass(cls, FallbackRule)
    space = cls.search_space()
    assert set(space) <= set(cls.defaults)
    for dist in space.values():  # every sampled value must be accepted by the rule
        low = dist.low
        cls(**{k: (d.low if d is not dist else low) for k, d in space.items()})
        cls(**{k: d.high for k, d in space.items()})
