"""Per-parameter consistency (``consistency=TOL``): a tensor jumps only where the variant, fitted on the
window less its last snapshot, predicts that snapshot; the others keep their current values."""

from __future__ import annotations

import io

import pytest
import torch

from koopsweep import KoopmanAccelerator
from koopsweep import Variant
from koopsweep.errors import ParameterError


class Drifting(torch.nn.Module):
    """Two tensors under SGD: ``steady`` feels a constant gradient (it moves in a straight line, which
    linear extrapolation predicts exactly), ``noisy`` a fresh random gradient every call."""

    def __init__(self, with_steady: bool = True):
        super().__init__()
        self.steady = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64)) if with_steady else None
        self.noisy = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
        self.pull = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
        self.noise = torch.Generator().manual_seed(0)

    def loss(self) -> torch.Tensor:
        kick = torch.randn(4, generator=self.noise, dtype=torch.float64)
        total = (kick * self.noisy).sum()
        return total + (self.pull * self.steady).sum() if self.steady is not None else total


def run(model, steps, **options):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    options = {"fallback": "none", "backoff": 0, "window": 6, "horizon": 10, **options}
    acc = KoopmanAccelerator(optimizer, "extrapolate-linear", **options)

    def closure():
        acc.zero_grad()
        loss = model.loss()
        loss.backward()
        return loss

    trace = []
    for _ in range(steps):
        acc.step(closure)
        trace.append([p.detach().clone() for p in model.parameters()])
    return acc, trace


def bare_sgd(model, steps):
    """The trajectory of SGD alone (the kicks do not depend on the weights: same stream, same kicks)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trace = []
    for _ in range(steps):
        optimizer.zero_grad()
        model.loss().backward()
        optimizer.step()
        trace.append([p.detach().clone() for p in model.parameters()])
    return trace


def test_only_the_consistent_tensor_jumps():
    model = Drifting()
    acc, trace = run(model, 7, consistency=0.1)  # the window (6 steps), then the jump and one step
    assert acc.stats.jumps_accepted == 1 and acc.stats.fits == 2 and acc.stats.tensors_held == 1
    bare = bare_sgd(Drifting(), 7)
    velocity = -0.1 * model.pull
    # steady: jumped 10 steps along its line, then one SGD step; noisy: held, so exactly SGD's
    torch.testing.assert_close(trace[6][0], bare[5][0] + 11 * velocity, rtol=1e-12, atol=1e-12)
    assert torch.equal(trace[6][1], bare[6][1])

    acc, trace = run(Drifting(), 7)  # the check off: both tensors jump
    assert acc.stats.fits == 1 and acc.stats.tensors_held == 0
    assert (trace[6][1] - bare[6][1]).norm() > 0.1


def test_an_attempt_with_no_consistent_tensor_is_rejected_without_a_check():
    model = Drifting(with_steady=False)
    bare = Drifting(with_steady=False)
    acc, trace = run(model, 40, consistency=0.1, fallback="verify")
    assert acc.stats.jumps_tried >= 5 and acc.stats.jumps_accepted == 0
    assert acc.stats.rejections == {"inconsistent": acc.stats.jumps_tried}
    assert acc.stats.evaluations == 0  # the rule saw an unusable prediction; nothing was evaluated
    for step, expected in enumerate(bare_sgd(bare, 40)):
        assert torch.equal(trace[step][0], expected[0])


def test_dmd_on_gradient_descent_with_every_tensor_consistent_is_still_exact():
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))
    hessian = q @ torch.diag(torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64)) @ q.T
    start = torch.randn(4, dtype=torch.float64)
    window, horizon = 10, 20

    def descend(steps, **koopman):
        x = torch.nn.Parameter(start.clone())
        optimizer = torch.optim.SGD([x], lr=0.2)
        stepper = KoopmanAccelerator(optimizer, "dmd-global", dtype="float64", **koopman) if koopman else optimizer

        def closure():
            stepper.zero_grad()
            loss = 0.5 * x @ hessian @ x
            loss.backward()
            return loss

        for _ in range(steps):
            stepper.step(closure)
        return x.detach(), stepper

    target, _ = descend(window + horizon + 1)
    jumped, acc = descend(window + 1, window=window, horizon=horizon, fallback="none", backoff=0, consistency=1e-6)
    assert acc.stats.jumps_accepted == 1 and acc.stats.tensors_held == 0
    torch.testing.assert_close(jumped, target, rtol=1e-8, atol=1e-10)


def test_the_check_needs_one_snapshot_more_and_a_positive_tolerance():
    params = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ParameterError, match="needs at least 3 snapshots, one more than its fit"):
        KoopmanAccelerator(torch.optim.SGD(params, lr=0.1), "extrapolate-linear", window=2, consistency=0.5)
    with pytest.raises(ParameterError, match="consistency=0 is invalid"):
        KoopmanAccelerator(torch.optim.SGD(params, lr=0.1), consistency=0)


def test_state_dict_keeps_the_held_count():
    acc, _ = run(Drifting(), 7, consistency=0.1)
    buffer = io.BytesIO()
    torch.save(acc.state_dict(), buffer)
    buffer.seek(0)
    resumed, _ = run(Drifting(), 0, consistency=0.1)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.stats.tensors_held == 1 and resumed.stats.fits == 2


def test_bench_and_specs_set_it_as_a_shared_knob():
    from koopsweep.bench import split_params
    from koopsweep.errors import UsageError

    config = split_params("dmd-global", {"consistency": 0.5, "max_overhead": 0.02}).koopman
    params = [torch.nn.Parameter(torch.zeros(2))]
    acc = KoopmanAccelerator(torch.optim.SGD(params, lr=0.1), **config.accelerator_kwargs())
    assert (acc.consistency, acc.max_overhead) == (0.5, 0.02)
    with pytest.raises(UsageError, match="consistency=-1 is invalid; expected a number > 0"):
        split_params("dmd-global", {"consistency": -1})


class Biased(Variant):
    """Linear extrapolation whose step along tensor ``i`` is ``1 + bias[i]`` times too long, so that the
    one-step consistency miss of tensor ``i`` is exactly ``bias[i]`` times its last displacement."""

    defaults = {"bias": (0.0,)}

    def fit(self, snapshots):
        self.last = [s[-1].clone() for s in snapshots]
        self.slope = [(s[-1] - s[0]) / (s.shape[0] - 1) for s in snapshots]

    def predict(self, horizon):
        return [x + horizon * (1 + b) * v for x, v, b in zip(self.last, self.slope, self.params["bias"])]


class Pulled(torch.nn.Module):
    """Four tensors under SGD with constant gradients: each moves in its own straight line."""

    def __init__(self):
        super().__init__()
        self.tensors = torch.nn.ParameterList(torch.nn.Parameter(torch.zeros(2, dtype=torch.float64)) for _ in range(4))
        self.pulls = [torch.tensor([1.0 + i, -0.5 * i], dtype=torch.float64) for i in range(4)]

    def loss(self):
        return sum((pull * t).sum() for pull, t in zip(self.pulls, self.tensors))


def test_graded_layer_horizons_give_each_tensor_a_share_that_falls_with_its_miss():
    bias = (0.0, 0.1, 0.3, 0.6)  # misses of 0, 0.1, 0.3 and 0.6 displacements; tolerance 0.5
    model = Pulled()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    acc = KoopmanAccelerator(optimizer, Biased(bias=bias), window=6, horizon=8, fallback="none", backoff=0,
                             consistency=0.5, layer_horizons="graded")  # fmt: skip

    def closure():
        acc.zero_grad()
        loss = model.loss()
        loss.backward()
        return loss

    for _ in range(7):  # the window, then the jump and one step
        acc.step(closure)
    assert acc.stats.jumps_accepted == 1 and acc.stats.tensors_held == 1
    # Shares 1 - miss / 0.5 in quarters: 1, 0.75, 0.25 and 0 of the 8-step horizon.
    for t, pull, b, steps in zip(model.tensors, model.pulls, bias, (8, 6, 2, 0)):
        velocity = -0.1 * pull
        last = 6 * velocity  # where SGD alone is after the window's 6 steps
        expected = last + steps * (1 + b) * velocity + velocity  # the jump, then one SGD step
        torch.testing.assert_close(t.detach(), expected, rtol=1e-12, atol=1e-12)


def test_graded_horizons_need_the_consistency_check():
    with pytest.raises(ParameterError, match="layer_horizons='graded' needs consistency"):
        KoopmanAccelerator(torch.optim.SGD(Drifting().parameters(), lr=0.1), layer_horizons="graded")
