"""``pinn-allen-cahn``: the Task contract, determinism, the spectral reference solution, training, presets,
parameters.

Small explicit parameters keep it fast; the reference solution (about 1.3 s) is computed once per process,
and the solver's own checks run on short horizons or coarse grids.
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import pytest
import torch

from koopsweep import plugins
from koopsweep.errors import ParameterError
from koopsweep.tasks._allen_cahn import (
    PRESETS,
    REF_NT,
    REF_NX,
    REF_REFINE,
    AllenCahnNet,
    PINNAllenCahn,
    etdrk4,
    initial_condition,
    periodic_grid,
    physics_loss,
    reference_dt,
    reference_solution,
)
from koopsweep.tasks._common import count_parameters, generator
from koopsweep.testing import check_task
from rng_states import global_states, same_states

CPU = torch.device("cpu")
D, R = 1e-4, 5.0
TINY: dict[str, Any] = {"hidden": 8, "depth": 2, "n_interior": 64, "n_initial": 16, "n_eval": 50}


# --------------------------------------------------------------------------------------------------
# Contract and determinism


def test_conforms() -> None:
    check_task(PINNAllenCahn, **TINY)


def test_registered() -> None:
    assert plugins.load_task("pinn-allen-cahn") is PINNAllenCahn


def test_class_attributes() -> None:
    assert PINNAllenCahn.default_optimizer == "adam"
    assert PINNAllenCahn.schedule == "constant"
    assert {"adam", "adamw", "muon"} <= set(PINNAllenCahn.baseline_lrs)
    assert PINNAllenCahn.search_space() == {}


def test_global_random_state_untouched() -> None:
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    before = global_states()
    task = PINNAllenCahn(**TINY)
    model = task.build_model(3)
    batch = next(task.batches(3, CPU))
    task.loss(model, batch).backward()
    task.eval_loss(model, CPU)
    task.eval_metrics(model, CPU)
    assert same_states(before, global_states())


def test_points_fixed_by_data_seed_not_run_seed() -> None:
    task, other = PINNAllenCahn(**TINY), PINNAllenCahn(**TINY)
    stream = task.batches(0, CPU)
    first, second = next(stream), next(stream)
    # Full batch: the very same on-device tensors every step.
    assert all(a is b for a, b in zip(first, second, strict=True))
    for a, b in zip(first, next(task.batches(7, CPU)), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(first, next(other.batches(0, CPU)), strict=True):
        assert torch.equal(a, b)
    reseeded = next(PINNAllenCahn(**TINY, data_seed=1).batches(0, CPU))
    assert not torch.equal(first[0], reseeded[0]) and not torch.equal(first[1], reseeded[1])


def test_points_lie_in_the_domain_with_the_right_targets() -> None:
    interior, initial, target = next(PINNAllenCahn(**TINY).batches(0, CPU))
    assert interior.shape == (64, 2) and initial.shape == (16, 2) and target.shape == (16, 1)
    t, x = interior[:, 0], interior[:, 1]
    assert bool((t >= 0).all() and (t <= 1).all() and (x >= -1).all() and (x <= 1).all())
    assert bool((initial[:, 0] == 0).all()) and bool((initial[:, 1].abs() <= 1).all())
    x0 = initial[:, 1]
    assert torch.allclose(target[:, 0], x0**2 * torch.cos(math.pi * x0))
    assert float(target.abs().max()) > 0.1  # not all zero


def test_network_is_periodic_in_x() -> None:
    """u(t, −1) = u(t, 1), and u_x too, at any weights (to float32 rounding: π is rounded in the features)."""
    model = AllenCahnNet(16, 2, 2, generator(0, "init"))
    t = torch.linspace(0, 1, 11)

    def at(x: float) -> tuple[torch.Tensor, torch.Tensor]:
        points = torch.stack([t, torch.full_like(t, x)], 1).requires_grad_(True)
        u = model(points)
        return u.detach(), torch.autograd.grad(u.sum(), points)[0][:, 1]

    (u_left, g_left), (u_right, g_right), (u_near, _) = at(-1.0), at(1.0), at(-0.9)
    assert (u_left - u_right).abs().max() < 1e-5 and (g_left - g_right).abs().max() < 1e-5
    assert (u_left - u_near).abs().max() > 1e-3 and g_left.abs().max() > 1e-3  # x matters
    # One period further along is the same point.
    inside = torch.cartesian_prod(t, torch.linspace(-1, 1, 11))
    shifted = inside + torch.tensor([0.0, 2.0])
    with torch.no_grad():
        assert (model(inside) - model(shifted)).abs().max() < 1e-5


def test_eval_metrics_is_a_float_and_leaves_the_model_alone() -> None:
    task = PINNAllenCahn(**TINY)
    model = task.build_model(0)
    task.loss(model, next(task.batches(0, CPU))).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    metrics = task.eval_metrics(model, CPU)
    assert set(metrics) == {"relative_l2_error"}
    value = metrics["relative_l2_error"]
    assert isinstance(value, float) and math.isfinite(value) and value > 0
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads, strict=True))
    assert task.eval_metrics(model, CPU) == metrics


class StableState(torch.nn.Module):
    """u ≡ 1 (through the inputs, so that autograd can differentiate it twice)."""

    def forward(self, tx: torch.Tensor) -> torch.Tensor:
        return 1.0 + 0.0 * tx.square().sum(1, keepdim=True)


def test_the_stable_state_has_zero_residual() -> None:
    """u ≡ 1 solves the equation: its loss is the initial-condition term alone (such trivial solutions are
    what the residual cannot rule out)."""
    task = PINNAllenCahn(**TINY, ic_weight=3.0)
    interior, initial, target = next(task.batches(0, CPU))
    loss = float(task.loss(StableState(), (interior, initial, target)).detach())
    assert math.isclose(loss, 3.0 * float((1.0 - target).square().mean()), rel_tol=1e-6)
    assert loss > 1.0


def test_physics_loss_matches_a_hand_computed_residual() -> None:
    """u = e^{−t} sin(πx): u_t = −u and u_xx = −π² u, so the residual is (Dπ² − 1 − r) u + r u³; every
    term's sign and coefficient shows."""
    diffusion, reaction = 0.1, 2.0

    def u_of(tx: torch.Tensor) -> torch.Tensor:
        return (torch.exp(-tx[:, :1]) * torch.sin(math.pi * tx[:, 1:])).double()

    interior, initial, _ = (p.double() for p in next(PINNAllenCahn(**TINY).batches(0, CPU)))
    u = u_of(interior)
    exact = ((diffusion * math.pi**2 - 1 - reaction) * u + reaction * u**3).square().mean()
    points = interior.clone().requires_grad_(True)
    target = u_of(initial) + 0.5  # the initial-condition term: 0.5² times the weight
    loss = physics_loss(u_of, points, initial, target, diffusion, reaction, ic_weight=4.0)
    assert math.isclose(float(loss.detach()), float(exact) + 4.0 * 0.25, rel_tol=1e-9)


# --------------------------------------------------------------------------------------------------
# The reference solution


def test_reference_grid_and_initial_condition() -> None:
    t, x, u = reference_solution(D, R)
    assert u.shape == (REF_NT, REF_NX) and u.dtype == np.float64
    assert t[0] == 0 and t[-1] == 1 and x[0] == -1 and x[-1] == 1 - 2 / REF_NX
    assert np.abs(u[0] - x**2 * np.cos(np.pi * x)).max() == 0
    assert reference_solution(D, R) is reference_solution(D, R)  # cached per process
    assert not u.flags.writeable


def test_reference_shape_of_the_solution() -> None:
    """Even in x, bounded by the stable states ±1, and by t = 1 at plateaus near ±1 with interfaces at
    x ≈ ±0.5 and a dip at x = 0, where u₀ ≈ x² starts next to the unstable state 0 (Raissi et al.'s picture)."""
    _, x, u = reference_solution(D, R)
    mirror = (-np.arange(REF_NX)) % REF_NX  # x_j -> −x_j on the periodic grid
    assert np.abs(u - u[:, mirror]).max() < 1e-12
    assert np.abs(u).max() <= 1.0 + 1e-9
    final = u[-1]
    assert np.mean(np.abs(np.abs(final) - 1) < 0.05) > 0.7
    assert final[0] < -0.99 and np.abs(final[np.abs(x - 0.25) < 0.1] - 1).max() < 0.1
    assert 0 < final[REF_NX // 2] < 0.1
    crossings = x[np.sign(final) != np.sign(np.roll(final, 1))]
    assert crossings.size == 2 and np.abs(np.abs(crossings) - 0.5).max() < 0.01


def test_solver_matches_the_closed_form_of_the_reaction() -> None:
    """A spatially constant u obeys u' = r(u − u³): u(t) = c e^{rt} / sqrt(1 − c² + c² e^{2rt})."""
    t = np.linspace(0.0, 1.0, 11)
    for c in (0.3, -0.6, 1.5):
        u = etdrk4(np.full(16, c), t, 1e-3, D, R)
        exact = c * np.exp(R * t) / np.sqrt(1 - c**2 + c**2 * np.exp(2 * R * t))
        assert np.abs(u - exact[:, None]).max() < 1e-10, c
        assert abs(abs(u[-1, 0]) - 1) < 1e-3  # it has reached a stable state: the check has teeth


def test_solver_matches_the_closed_form_of_diffusion() -> None:
    """Without reaction, cos(mπx) decays like e^{−D (mπ)² t}; the stiff modes are exact under ETD."""
    x = periodic_grid(64)
    t = np.array([0.0, 0.5, 1.0])
    for m in (1, 7, 31):
        u = etdrk4(np.cos(m * np.pi * x), t, 0.1, 0.05, 0.0)
        exact = np.exp(-0.05 * (m * np.pi) ** 2 * t)[:, None] * np.cos(m * np.pi * x)[None, :]
        assert np.abs(u - exact).max() < 1e-12, m
    assert 0.1 * 0.05 * (31 * np.pi) ** 2 > 20 * 2  # a step 20 times beyond explicit Euler's stability limit


def test_reference_converged_in_space_and_time() -> None:
    """Against twice the points and half the step on the first 0.1 time units, where the error lives (the
    kink of the periodic initial condition at x = ±1 is smoothed only over sqrt(D t))."""
    t = np.linspace(0.0, 0.1, 21)
    nx = REF_NX * REF_REFINE
    dt = reference_dt(R)
    base = etdrk4(initial_condition(periodic_grid(nx)), t, dt, D, R)[:, :: REF_REFINE]
    fine_x = etdrk4(initial_condition(periodic_grid(2 * nx)), t, dt, D, R)[:, :: 2 * REF_REFINE]
    fine_t = etdrk4(initial_condition(periodic_grid(nx)), t, dt / 2, D, R)[:, :: REF_REFINE]
    _, _, reference = reference_solution(D, R)
    assert np.array_equal(base, reference[:21])  # the same computation as the cached reference
    scale = np.linalg.norm(base)
    assert np.linalg.norm(fine_x - base) / scale < 1e-6
    assert np.abs(fine_x - base).max() < 1e-4
    assert np.abs(fine_x[5:] - base[5:]).max() < 1e-5  # from t = 0.025 on
    assert np.abs(fine_t - base).max() < 1e-9
    assert np.abs(base[-1] - base[0]).max() > 0.1  # the check has teeth: the solution moves


def test_reference_energy_decreases() -> None:
    """Allen-Cahn is the L2 gradient flow of E(u) = ∫ D/2 u_x² + r/4 (1 − u²)² dx: E never increases."""
    _, x, u = reference_solution(D, R)
    k = np.pi * np.fft.rfftfreq(REF_NX, d=1.0 / REF_NX)
    u_x = np.fft.irfft(1j * k * np.fft.rfft(u, axis=1), REF_NX, axis=1)
    energy = (D / 2 * u_x**2 + R / 4 * (1 - u**2) ** 2).sum(axis=1) * (2 / REF_NX)
    assert np.all(np.diff(energy[1:]) < 0)
    assert energy[-1] < 0.2 * energy[0]


# --------------------------------------------------------------------------------------------------
# Training


def test_adam_lowers_loss_and_error(one_thread: None) -> None:
    """At a milder reaction (r = 1): at the default r = 5 a short run only reaches the loss plateau on
    the way to the trivial u ≈ 0, and the error first rises (see the module docstring)."""
    task = PINNAllenCahn(hidden=16, depth=2, n_interior=256, n_initial=64, n_eval=256, reaction=1.0)
    model = task.build_model(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    stream = task.batches(0, CPU)
    eval_before, error_before = task.eval_loss(model, CPU), task.relative_l2_error(model, CPU)
    first = float(task.loss(model, next(stream)).detach())
    for _ in range(60):
        optimizer.zero_grad(set_to_none=True)
        loss = task.loss(model, next(stream))
        loss.backward()
        optimizer.step()
    assert float(loss.detach()) < 0.5 * first
    assert task.eval_loss(model, CPU) < 0.5 * eval_before
    assert task.relative_l2_error(model, CPU) < 0.5 * error_before


# --------------------------------------------------------------------------------------------------
# Presets and parameters


def test_size_presets() -> None:
    cpu, gpu = PINNAllenCahn(), PINNAllenCahn(size="gpu")
    assert count_parameters(gpu.build_model(0)) > 50 * count_parameters(cpu.build_model(0))
    assert count_parameters(cpu.build_model(0)) == 5 * 32 + 32 + 2 * (32 * 32 + 32) + 32 + 1  # (t, 2 modes)
    assert {name: gpu.knob(name) for name in PRESETS["gpu"]} == PRESETS["gpu"]
    assert gpu.knob("n_interior") >= 20000


def test_explicit_knob_overrides_preset() -> None:
    task = PINNAllenCahn(size="gpu", hidden=16, depth=2, fourier_modes=3, n_interior=100, n_initial=20, n_eval=40)
    assert count_parameters(task.build_model(0)) == 7 * 16 + 16 + 16 * 16 + 16 + 16 + 1
    interior, initial, _ = next(task.batches(0, CPU))
    assert interior.shape == (100, 2) and initial.shape == (20, 2)
    data = task._on(CPU)
    assert data["eval_interior"].shape == (40, 2) and data["eval_initial"].shape == (8, 2)


def test_coefficients_change_the_loss() -> None:
    model = PINNAllenCahn(**TINY).build_model(0)
    base = PINNAllenCahn(**TINY).eval_loss(model, CPU)
    assert PINNAllenCahn(**TINY, reaction=2.0).eval_loss(model, CPU) != base
    assert PINNAllenCahn(**TINY, ic_weight=1.0).eval_loss(model, CPU) != base


@pytest.mark.parametrize(
    "params",
    [
        {"size": "tpu"},
        {"hidden": 0},
        {"hidden": 2.5},
        {"depth": True},
        {"depth": 0},
        {"fourier_modes": 0},
        {"n_interior": 0},
        {"n_initial": 0},
        {"n_eval": 4},
        {"diffusion": 0},
        {"diffusion": 1e-6},
        {"diffusion": 2.0},
        {"diffusion": float("nan")},
        {"diffusion": "1e-4"},
        {"reaction": -1.0},
        {"reaction": 50.0},
        {"ic_weight": 0},
        {"ic_weight": -1.0},
        {"data_seed": -1},
        {"data_seed": 1.5},
        {"nu": 0.01},
    ],
)
def test_bad_parameters(params: dict[str, Any]) -> None:
    with pytest.raises(ParameterError) as info:
        PINNAllenCahn(**params)
    message = str(info.value)
    assert "\n" not in message and next(iter(params)) in message
