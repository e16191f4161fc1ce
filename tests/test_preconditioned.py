"""Fitting in Adam's preconditioned coordinates (``coordinates="preconditioned"``): the variant sees
each weight times ``(sqrt(v) + eps) ** 0.5``, its predictions come back divided by the same scale,
exact dynamics stay exact, and an optimizer without Adam's second moment is refused up front."""

from __future__ import annotations

import pytest
import torch

from koopsweep import KoopmanAccelerator
from koopsweep.errors import ParameterError
from koopsweep.fallbacks import Decision, FallbackRule
from koopsweep.training import KoopmanConfig
from koopsweep.variants._dmd import GlobalDMD

from test_accelerator import batches, mlp
from test_accelerator import mlp_closure as closure_for
from test_slow_weights import Recorded


class Keep(FallbackRule):
    """Accepts the configured horizon's prediction, remembering it."""

    needs_closure = False

    def decide(self, proposal):
        self.kept = proposal.predict(proposal.horizon)
        return Decision.accept(self.kept, proposal.horizon)


def scales_of(optimizer, model):
    return [(optimizer.state[p]["exp_avg_sq"].sqrt() + 1e-8).sqrt() for p in model.parameters()]


def test_the_variant_fits_scaled_weights_and_its_prediction_comes_back_unscaled():
    window = 4
    data = batches(window + 1)
    bare_model = mlp()
    bare = torch.optim.Adam(bare_model.parameters(), lr=1e-2)
    raw_window = []
    for batch in data[:window]:
        bare.step(closure_for(bare_model, bare, batch))
        raw_window.append([p.detach().clone() for p in bare_model.parameters()])
    scales = scales_of(bare, bare_model)  # Adam's state when the attempt fits

    model = mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    variant, rule = Recorded(factor=1.0), Keep()
    acc = KoopmanAccelerator(optimizer, variant, window=window, horizon=3, fallback=rule, backoff=0,
                             coordinates="preconditioned")  # fmt: skip
    for batch in data:
        acc.step(closure_for(model, acc, batch))
    [fitted] = variant.windows
    for i, snapshot in enumerate(raw_window):
        for row, w, d in zip(fitted, snapshot, scales):
            torch.testing.assert_close(row[i], w * d, rtol=1e-6, atol=1e-7)
    [scaled] = variant.predictions
    for kept, s, d in zip(rule.kept, scaled, scales):
        torch.testing.assert_close(kept, s / d, rtol=1e-6, atol=1e-7)


class DescentWithAdamState(torch.optim.Adam):
    """Plain gradient descent (an affine map on a quadratic) that also keeps a fixed, uneven
    ``exp_avg_sq``, so the preconditioned coordinates are a fixed diagonal rescaling."""

    def step(self, closure=None):
        loss = closure() if closure is not None else None
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    p.sub_(group["lr"] * p.grad)
                    self.state[p]["exp_avg_sq"] = torch.linspace(1e-4, 10.0, p.numel(), dtype=p.dtype).reshape(p.shape)
        return loss


def test_exact_dynamics_stay_exact_in_preconditioned_coordinates():
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64))
    hessian = q @ torch.diag(torch.tensor([0.5, 0.8, 1.0, 1.5, 2.0], dtype=torch.float64)) @ q.T
    start = torch.randn(5, dtype=torch.float64)
    window, ahead = 10, 30

    def run(coordinates):
        x = torch.nn.Parameter(start.clone())
        optimizer = DescentWithAdamState([x], lr=0.2)

        def closure():
            optimizer.zero_grad()
            loss = 0.5 * x @ hessian @ x
            loss.backward()
            return loss

        acc = KoopmanAccelerator(optimizer, GlobalDMD(dtype="float64", rank=5), window=window, horizon=ahead,
                                 fallback="none", backoff=0, coordinates=coordinates)  # fmt: skip
        for _ in range(window + 1):  # the window, then the jump (the step's inner step follows it)
            acc.step(closure)
        assert acc.stats.jumps_accepted == 1
        return x.detach().clone()

    with torch.no_grad():  # where plain descent is after the window, the jump and one more step
        expected = start.clone()
        for _ in range(window + ahead + 1):
            expected -= 0.2 * (hessian @ expected)
    # Exact up to rounding. The rescaled window's Gram matrix is worse conditioned by the square of the
    # scales' spread (18x here), so its rounding is that much larger.
    for coordinates, tol in (("raw", 1e-6), ("preconditioned", 1e-4)):
        torch.testing.assert_close(run(coordinates), expected, rtol=tol, atol=tol * float(expected.abs().max()))


def test_optimizers_without_a_second_moment_are_refused():
    with pytest.raises(ParameterError, match="coordinates='preconditioned' needs an inner optimizer"):
        KoopmanAccelerator(torch.optim.SGD(mlp().parameters(), lr=0.1), coordinates="preconditioned")
    with pytest.raises(ParameterError, match="coordinates='diagonal' is invalid"):
        KoopmanAccelerator(torch.optim.Adam(mlp().parameters()), coordinates="diagonal")


def test_a_training_run_takes_it_from_its_config():
    config = KoopmanConfig(variant="dmd-global", coordinates="preconditioned")
    assert config.accelerator_kwargs()["coordinates"] == "preconditioned"
    assert KoopmanAccelerator(torch.optim.Adam(mlp().parameters()), **config.accelerator_kwargs()).coordinates == (
        "preconditioned"
    )


@pytest.mark.parametrize("options", [{"coordinates": "preconditioned"},
                                     {"consistency": 0.5, "layer_horizons": "graded"}], ids=["preconditioned", "graded"])  # fmt: skip
def test_a_resumed_run_continues_bit_for_bit(options):
    """Neither option keeps state of its own (the scales and shares are recomputed at each attempt), so
    a run resumed from a mid-window checkpoint is the uninterrupted run."""
    from test_accelerator import _resume

    def make(model):
        return KoopmanAccelerator(torch.optim.Adam(model.parameters(), lr=1e-2), Recorded(factor=0.5), window=4,
                                  horizon=6, fallback="none", backoff=0, **options)  # fmt: skip

    data = batches(30)
    model, resumed_model = mlp(), mlp()
    acc, resumed = make(model), make(resumed_model)
    for batch in data[:7]:
        acc.step(closure_for(model, acc, batch))
    _resume(model, acc, resumed_model, resumed)
    for batch in data[7:]:
        acc.step(closure_for(model, acc, batch))
        resumed.step(closure_for(resumed_model, resumed, batch))
    assert acc.stats.jumps_tried >= 4 and acc.stats.jumps_accepted >= 1
    for p, q in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(p, q)
