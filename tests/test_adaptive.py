"""The `adaptive` fallback rule: verify at a horizon that grows after accepted jumps and shrinks after
rejected ones; and, end to end, that it jumps further than `verify` where the dynamics allow it."""

from __future__ import annotations

import math

import pytest
import torch
from test_fallbacks import FakeProposal, horizon_of

from koopsweep import KoopmanAccelerator, plugins
from koopsweep.errors import ParameterError
from koopsweep.fallbacks import Adaptive


def test_registered_and_validated():
    assert plugins.load_fallback("adaptive") is Adaptive
    assert set(Adaptive.search_space()) <= set(Adaptive.defaults)
    for bad in ({"grow": 0.5}, {"shrink": 0.0}, {"shrink": 1.5}, {"max_factor": 0.5}, {"min_factor": 2.0},
                {"tol": -1.0}, {"grow": True}, {"grow": math.inf}):  # fmt: skip
        with pytest.raises(ParameterError):
            Adaptive(**bad)


def test_horizon_grows_after_acceptance_and_shrinks_after_rejection():
    rule = Adaptive(grow=2.0, shrink=0.5, max_factor=4.0, min_factor=0.25)
    tried = []
    # accepted, accepted, accepted (capped at 4x), rejected, rejected, rejected, rejected (floored at 1/4)
    for accept in (True, True, True, False, False, False, False):
        jump = FakeProposal(100, default_loss=0.5 if accept else 2.0)
        decision = rule.decide(jump)
        tried.append(jump.evaluated()[0])
        assert decision.accepted == accept
        if accept:
            assert horizon_of(decision) == decision.horizon == tried[-1]
        else:
            assert decision.reason == "loss-increased"
        assert jump.log.index(("before",)) < jump.log.index(("evaluate", tried[-1]))  # the cost convention
    assert tried == [100, 200, 400, 400, 200, 100, 50]
    assert rule.current_horizon(100) == 25


def test_an_unusable_prediction_shrinks_the_horizon_without_an_evaluation():
    rule = Adaptive()
    jump = FakeProposal(40, unusable={40: "exploding"})
    decision = rule.decide(jump)
    assert not decision.accepted and decision.reason == "exploding"
    assert jump.evaluated() == [] and not jump.asked_before()
    assert rule.current_horizon(40) == 20


def test_the_horizon_never_drops_below_one_step():
    rule = Adaptive(shrink=0.1, min_factor=0.01)
    for _ in range(3):
        rule.decide(FakeProposal(10, default_loss=2.0))
    assert rule.current_horizon(10) == 1
    jump = FakeProposal(10, default_loss=0.5)
    assert horizon_of(rule.decide(jump)) == 1


def test_on_linear_dynamics_it_jumps_further_than_verify():
    """Gradient descent on a quadratic is exactly linear, so every exact jump passes: the adaptive
    horizon doubles up to its cap while `verify` stays at the configured one."""
    torch.manual_seed(0)
    n = 6
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    h_mat = q @ torch.diag(torch.linspace(0.5, 2.0, n, dtype=torch.float64)) @ q.T
    w_star = torch.randn(n, dtype=torch.float64)
    start = torch.randn(n, dtype=torch.float64)

    def run(fallback):
        w = torch.nn.Parameter(start.clone())
        acc = KoopmanAccelerator(torch.optim.SGD([w], lr=0.3), "dmd-global", window=n + 4, horizon=10,
                                 fallback=fallback, dtype="float64")  # fmt: skip

        def closure():
            acc.zero_grad()
            loss = 0.5 * (w - w_star) @ h_mat @ (w - w_star)
            loss.backward()
            return loss

        for _ in range(3 * (n + 5)):  # three cycles: n + 4 snapshots, then a jump step
            acc.step(closure)
        return acc.stats

    verify, adaptive = run("verify"), run("adaptive")
    assert verify.jumps_accepted == adaptive.jumps_accepted == 3
    assert verify.accepted_horizon_total == 3 * 10
    assert adaptive.accepted_horizon_total == 10 + 20 + 40
