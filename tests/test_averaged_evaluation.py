"""Averaged evaluation (``snapshot="average"``): with an EMA or schedule-free inner optimizer the
operator fits the averaged weights' trajectory, jumps start from the average and are judged by the loss
there, an accepted jump lands the average (an EMA's model with it; schedule-free's y and z translated
by the same displacement), and a rejected one changes nothing."""

from __future__ import annotations

import pytest
import torch

from koopsweep import KoopmanAccelerator
from koopsweep.errors import ParameterError
from koopsweep.fallbacks import Decision, FallbackRule
from koopsweep.optimizers._trajectory import weight_average
from koopsweep.training import build_optimizer

from test_accelerator import _resume
from test_slow_weights import Recorded, batches, closure_for, mlp, outer_loop
from test_slow_weights import wrapped as slow_weights_wrapped


def ema_adam():
    return outer_loop("ema-adam", decay=0.9)


def wrapped(optimizer, variant, **options):
    return slow_weights_wrapped(optimizer, variant, snapshot="average", **options)


def schedule_free():
    return outer_loop("schedulefree-adamw")


def x_of(model, optimizer):
    """Schedule-free's averaged point x, as the package's own eval() computes it (weights put back)."""
    plugin, _ = build_optimizer("schedulefree-adamw", [torch.zeros(1, requires_grad=True)], 1e-2, {})
    with plugin.evaluation(optimizer):
        return [p.detach().clone() for p in model.parameters()]


def z_of(model, optimizer):
    return [optimizer.state[p]["z"].clone() for p in model.parameters()]


def loss_at(model, weights, batch):
    x, y = batch
    with torch.no_grad():
        saved = [p.detach().clone() for p in model.parameters()]
        for p, w in zip(model.parameters(), weights):
            p.copy_(w)
        loss = float(torch.nn.functional.cross_entropy(model(x), y))
        for p, w in zip(model.parameters(), saved):
            p.copy_(w)
    return loss


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
    expected_before = loss_at(model, average, data[window])
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


def test_schedule_free_snapshots_are_its_averaged_point():
    window = 3
    data = batches(window + 1)
    bare_model, bare = schedule_free()
    points = []
    for batch in data[:window]:
        bare.step(closure_for(bare_model, bare, batch))
        points.append(x_of(bare_model, bare))
    model, optimizer = schedule_free()
    variant = Recorded()
    acc = wrapped(optimizer, variant, window=window, horizon=2)
    for batch in data:
        acc.step(closure_for(model, acc, batch))
    [fitted] = variant.windows
    for i, point in enumerate(points):
        for row, expected in zip(fitted, point):
            torch.testing.assert_close(row[i], expected, rtol=0, atol=1e-7)


def test_a_schedule_free_jump_is_judged_at_x_and_translates_x_y_and_z_together():
    window = 4
    data = batches(window + 1)
    model, optimizer = schedule_free()
    variant, judge = Recorded(factor=1.0), Judge()
    acc = wrapped(optimizer, variant, window=window, horizon=3, fallback=judge)
    # The same run by hand: the optimizer alone, translated by the jump before its step.
    manual_model, manual = schedule_free()
    for batch in data[:window]:
        acc.step(closure_for(model, acc, batch))
        manual.step(closure_for(manual_model, manual, batch))
    x0 = x_of(model, optimizer)
    acc.step(closure_for(model, acc, data[window]))
    assert acc.stats.jumps_accepted == 1
    assert judge.before == pytest.approx(loss_at(model, x0, data[window]), rel=1e-6)  # at x, not at y
    [jumped] = variant.predictions
    with torch.no_grad():
        for p, z, j, a in zip(manual_model.parameters(), z_of(manual_model, manual), jumped, x0):
            p.add_(j - a)
            manual.state[p]["z"].add_(j - a)
    # The translated state's x is the jump: the landing formula agrees with the package's eval().
    for x, j in zip(x_of(manual_model, manual), jumped):
        torch.testing.assert_close(x, j, rtol=1e-5, atol=1e-6)
    manual.step(closure_for(manual_model, manual, data[window]))
    for p, q in zip(model.parameters(), manual_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    for z, w in zip(z_of(model, optimizer), z_of(manual_model, manual)):
        torch.testing.assert_close(z, w, rtol=1e-5, atol=1e-6)


def averaging_state(model, optimizer):
    """What the averaging keeps besides the weights: the EMA's raw sum, or schedule-free's z."""
    average = weight_average(optimizer)
    return average.raw if average is not None else z_of(model, optimizer)


@pytest.mark.parametrize("make_optimizer", [ema_adam, schedule_free], ids=["ema-adam", "schedulefree-adamw"])
def test_rejected_jumps_leave_the_weights_and_the_averaging_as_without_them(make_optimizer):
    data = batches(40)
    bare_model, bare = make_optimizer()
    for batch in data:
        bare.step(closure_for(bare_model, bare, batch))
    model, optimizer = make_optimizer()
    acc = wrapped(optimizer, Recorded(factor=-50.0), window=3, horizon=6, fallback="verify")
    for batch in data:
        acc.step(closure_for(model, acc, batch))
    assert acc.stats.jumps_tried >= 5 and acc.stats.jumps_accepted == 0
    for p, q in zip(model.parameters(), bare_model.parameters()):
        assert torch.equal(p, q)
    for a, b in zip(averaging_state(model, optimizer), averaging_state(bare_model, bare)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("make_optimizer", [ema_adam, schedule_free], ids=["ema-adam", "schedulefree-adamw"])
def test_state_dict_round_trip_mid_window(make_optimizer):
    data = batches(30)

    def make():
        model, optimizer = make_optimizer()
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
