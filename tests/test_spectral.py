"""Spectral filtering of the DMD variants (``modes="converging"``): predictions from the real-positive
decays and the drift only, exact where those are all the dynamics has, and blind to oscillation."""

from __future__ import annotations

import math

import pytest
import torch

from koopsweep.errors import ParameterError
from koopsweep.koopman import converging_modes
from koopsweep.variants._dmd import GlobalDMD, HankelDMD, LayerDMD


def trajectory(a: torch.Tensor, x0: torch.Tensor, steps: int) -> torch.Tensor:
    """States ``x_{k+1} = a x_k + b`` for an affine map with fixed point 0.5 (rows: time)."""
    fixed = torch.full_like(x0, 0.5)
    xs = [x0]
    for _ in range(steps - 1):
        xs.append(fixed + a @ (xs[-1] - fixed))
    return torch.stack(xs)


def rotation(theta: float, radius: float) -> torch.Tensor:
    c, s = math.cos(theta), math.sin(theta)
    return radius * torch.tensor([[c, -s], [s, c]], dtype=torch.float64)


def fitted(variant, states: torch.Tensor, window: int):
    variant.fit([states[:window].clone()])
    return variant


def test_the_mask_keeps_decays_and_the_drift_and_drops_the_rest():
    lam = torch.tensor([0.9, 1.0, 1.0 + 1e-9, 0.5 + 0.5j, 0.5 - 0.5j, -0.8, 1.2, 0.0, 0.99 + 0.01j],
                       dtype=torch.complex128)  # fmt: skip
    keep = converging_modes(lam, max_angle=0.1)
    assert keep.tolist() == [True, True, True, False, False, False, False, False, True]


@pytest.mark.parametrize("variant", [GlobalDMD, HankelDMD, LayerDMD])
def test_gradient_descent_on_a_quadratic_is_still_exact(variant):
    """Gradient descent on a convex quadratic has only real decays in (0, 1): the filter drops nothing
    and the jump lands where the descent would."""
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))
    hessian = q @ torch.diag(torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64)) @ q.T
    step = torch.eye(4, dtype=torch.float64) - 0.2 * hessian  # eigenvalues 0.9, 0.8, 0.6, 0.2
    states = trajectory(step, torch.randn(4, dtype=torch.float64), 60)
    window, horizon = 10, 30
    dmd = fitted(variant(modes="converging", dtype="float64"), states, window)
    [pred] = dmd.predict(horizon)
    torch.testing.assert_close(pred, states[window - 1 + horizon], rtol=1e-8, atol=1e-9)


def test_an_oscillating_block_is_left_where_it_is_and_the_decay_is_followed():
    """A decaying real mode (0.9) beside a decaying rotation: all modes predict the whole state; the
    converging ones continue the real coordinate exactly and leave the rotating pair at its last value."""
    a = torch.zeros(3, 3, dtype=torch.float64)
    a[0, 0] = 0.9
    a[1:, 1:] = rotation(0.5, 0.95)
    states = trajectory(a, torch.tensor([2.0, 1.0, -1.0], dtype=torch.float64), 60)
    window, horizon = 10, 20
    truth = states[window - 1 + horizon]
    [every] = fitted(GlobalDMD(dtype="float64"), states, window).predict(horizon)
    torch.testing.assert_close(every, truth, rtol=1e-7, atol=1e-8)
    [filtered] = fitted(GlobalDMD(dtype="float64", modes="converging"), states, window).predict(horizon)
    torch.testing.assert_close(filtered[0], truth[0], rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(filtered[1:], states[window - 1, 1:], rtol=1e-7, atol=1e-8)
    # A wide enough angle lets the rotation (0.5 rad a step) back in.
    [wide] = fitted(GlobalDMD(dtype="float64", modes="converging", max_angle=0.6), states, window).predict(horizon)
    torch.testing.assert_close(wide, truth, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("bad", [{"modes": "stable"}, {"max_angle": -0.1}, {"max_angle": 4.0}, {"max_angle": True}])
def test_bad_options_are_one_line_errors(bad):
    with pytest.raises(ParameterError, match=next(iter(bad))):
        GlobalDMD(**bad)
