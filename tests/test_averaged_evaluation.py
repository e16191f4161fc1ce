"""Averaged evaluation (``snapshot="average"``): with an EMA inner optimizer the operator fits the
average's trajectory, jumps start from the average and are judged by the loss there, an accepted jump
lands the model and the average together, and a rejected one changes nothing."""

from __future__ import annotations

import pytest
import torch

from koopsweep import KoopmanAccelerator
from koopsweep.errors import ParameterError
from koopsweep.fallbacks import Decision, FallbackRule
from koopsweep.optimizers._trajectory import weight_average

from test_accelerator import _resume
from test_slow_weights import Recorded, batches, closure_for, mlp, outer_loop
from test_slow_weights import wrapped as slow_weights_wrapped


def ema_adam():
    return outer_loop("ema-adam", decay=0.9)


def wrapped(optimizer, variant, **options):
    return slow_weights_wrapped(optimizer, variant, snapshot="average", **options)


def test_snapshots_are_the_average_after_each_stride_block():
    stride, window = 2, 3
    data = batches(stride * window + 1)
    bare_model, bare = ema_adam()
    averages = []
    for i, batch in enumerate(data[: stride * window]):
        bare.step(closure_for(bare_model, bare, batch))
        if (i + 1) % stride == 0:
            averages.append(weight_average(bare).average())
    model, optimizer = ema_adam()
    variant = Recorded()
    acc = wrapped(optimizer, variant, window=window, stride=stride, horizon=2 * stride)
    for batch in data:
        acc.step(closure_for(model, acc, batch))
    [fitted] = variant.windows
    for i, average in enumerate(averages):
        for row, expected in zip(fitted, average):
            torch.testing.assert_close(row[i], expected, rtol=0, atol=1e-7)


class Judge(FallbackRule):
    """Records loss_before and accepts the prediction."""

    needs_closure = True

    def decide(self, proposal):
        self.before = proposal.loss_before
        return Decision.accept(proposal.predict(proposal.horizon), proposal.horizon)


def test_a_jump_starts_from_the_average_is_judged_there_and_lands_both():
    window = 4
    data = batches(window + 1)
    model, optimizer = ema_adam()
    variant, judge = Recorded(factor=1.0), Judge()
    acc = wrapped(optimizer, variant, window=window, horizon=3, fallback=judge)
    for batch in data[:window]:
        acc.step(closure_for(model, acc, batch))
    average = weight_average(optimizer).average()
    x, y = data[window]
    with torch.no_grad():
        saved = [p.detach().clone() for p in model.parameters()]
        for p, a in zip(model.parameters(), average):
            p.copy_(a)
        expected_before = float(torch.nn.functional.cross_entropy(model(x), y))
        for p, s in zip(model.parameters(), saved):
            p.copy_(s)
    acc.step(closure_for(model, acc, data[window]))
    assert judge.before == pytest.approx(expected_before, rel=1e-6)  # the loss at the average, not the model's
    [jumped] = variant.predictions
    # The average trajectory's last point is the average itself: the jump continues from there.
    for row, a in zip(variant.windows[0], average):
        torch.testing.assert_close(row[-1], a, rtol=0, atol=1e-7)
    # The average landed on the jump, then took one EMA step towards the model's new weights.
    decay = 0.9
    for avg, j, p in zip(weight_average(optimizer).average(), jumped, model.parameters()):
        steps = weight_average(optimizer).steps
        landed = (decay * (1 - decay ** (steps - 1)) * j + (1 - decay) * p.detach()) / (1 - decay**steps)
        torch.testing.assert_close(avg, landed, rtol=1e-5, atol=1e-6)


def test_rejected_jumps_leave_model_and_average_as_without_them():
    data = batches(40)
    bare_model, bare = ema_adam()
    for batch in data:
        bare.step(closure_for(bare_model, bare, batch))
    model, optimizer = ema_adam()
    acc = wrapped(optimizer, Recorded(factor=-50.0), window=3, horizon=6, fallback="verify")
    for batch in data:
        acc.step(closure_for(model, acc, batch))
    assert acc.stats.jumps_tried >= 5 and acc.stats.jumps_accepted == 0
    for p, q in zip(model.parameters(), bare_model.parameters()):
        assert torch.equal(p, q)
    for a, b in zip(weight_average(optimizer).raw, weight_average(bare).raw):
        assert torch.equal(a, b)


def test_state_dict_round_trip_mid_window():
    data = batches(30)

    def make():
        model, optimizer = ema_adam()
        return model, wrapped(optimizer, Recorded(factor=0.5), window=3, horizon=4, fallback="verify")

    (model, acc), (resumed_model, resumed) = make(), make()
    for batch in data[:8]:
        acc.step(closure_for(model, acc, batch))
    _resume(model, acc, resumed_model, resumed)
    for batch in data[8:]:
        acc.step(closure_for(model, acc, batch))
        resumed.step(closure_for(resumed_model, resumed, batch))
    assert acc.stats.jumps_tried >= 3 and acc.stats.to_dict()["rejections"] == resumed.stats.to_dict()["rejections"]
    for p, q in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(p, q)


def test_average_snapshots_need_an_averaging_optimizer():
    with pytest.raises(ParameterError, match="snapshot='average' needs an inner optimizer that averages"):
        KoopmanAccelerator(torch.optim.Adam(mlp().parameters()), snapshot="average")
