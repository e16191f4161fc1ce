"""``pinn-helmholtz``: the Task contract, determinism, the exact solution, training, presets, parameters.

Small explicit parameters keep it fast; the reference grid is closed form and cached per process.
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from koopsweep import plugins
from koopsweep.errors import ParameterError
from koopsweep.tasks._common import count_parameters
from koopsweep.tasks._helmholtz import (
    PRESETS,
    REF_N,
    PINNHelmholtz,
    exact_solution,
    physics_loss,
    reference_solution,
    residual_scale,
    source,
)
from koopsweep.testing import check_task
from rng_states import global_states, same_states

CPU = torch.device("cpu")
TINY: dict[str, Any] = {"hidden": 8, "depth": 2, "n_interior": 64, "n_boundary": 16, "n_eval": 50}


class Exact(nn.Module):
    """The manufactured solution as a "network" (in the input's dtype), with one dummy parameter."""

    def __init__(self, a1: int = 1, a2: int = 4) -> None:
        super().__init__()
        self.a1, self.a2 = a1, a2
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, xy: torch.Tensor) -> torch.Tensor:
        u = torch.sin(self.a1 * math.pi * xy[:, :1]) * torch.sin(self.a2 * math.pi * xy[:, 1:])
        return u + 0.0 * self.dummy


# --------------------------------------------------------------------------------------------------
# Contract and determinism


def test_conforms() -> None:
    check_task(PINNHelmholtz, **TINY)


def test_registered() -> None:
    assert plugins.load_task("pinn-helmholtz") is PINNHelmholtz


def test_class_attributes() -> None:
    assert PINNHelmholtz.default_optimizer == "adam"
    assert PINNHelmholtz.schedule == "constant"
    assert {"adam", "adamw", "muon"} <= set(PINNHelmholtz.baseline_lrs)
    assert PINNHelmholtz.search_space() == {}


def test_global_random_state_untouched() -> None:
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    before = global_states()
    task = PINNHelmholtz(**TINY)
    model = task.build_model(3)
    batch = next(task.batches(3, CPU))
    task.loss(model, batch).backward()
    task.eval_loss(model, CPU)
    task.eval_metrics(model, CPU)
    assert same_states(before, global_states())


def test_points_fixed_by_data_seed_not_run_seed() -> None:
    task, other = PINNHelmholtz(**TINY), PINNHelmholtz(**TINY)
    stream = task.batches(0, CPU)
    first, second = next(stream), next(stream)
    # Full batch: the very same on-device tensors every step.
    assert all(a is b for a, b in zip(first, second, strict=True))
    for a, b in zip(first, next(task.batches(7, CPU)), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(first, next(other.batches(0, CPU)), strict=True):
        assert torch.equal(a, b)
    reseeded = next(PINNHelmholtz(**TINY, data_seed=1).batches(0, CPU))
    assert not torch.equal(first[0], reseeded[0]) and not torch.equal(first[2], reseeded[2])


def test_points_lie_in_the_domain_with_the_right_source() -> None:
    interior, q, boundary = next(PINNHelmholtz(**TINY).batches(0, CPU))
    assert interior.shape == (64, 2) and q.shape == (64, 1) and boundary.shape == (16, 2)
    assert bool((interior.abs() <= 1).all()) and bool((boundary.abs() <= 1).all())
    # A quarter of the boundary points on each edge.
    for column in (0, 1):
        for side in (-1.0, 1.0):
            assert int((boundary[:, column] == side).sum()) == 4
    assert bool((boundary.abs().amax(1) == 1).all())
    xy = interior.double().numpy()
    expected = (1 - 17 * math.pi**2) * np.sin(math.pi * xy[:, 0]) * np.sin(4 * math.pi * xy[:, 1])
    assert np.abs(q[:, 0].double().numpy() - expected).max() < 1e-4
    assert float(q.abs().max()) > 50  # the source has the scale k² − 17π² ≈ −167


def test_eval_set_is_separate() -> None:
    data = PINNHelmholtz(**TINY)._on(CPU)
    assert data["eval_interior"].shape == (50, 2) and data["eval_boundary"].shape == (10, 2)
    assert not torch.equal(data["eval_interior"][:50], data["interior"][:50])


def test_eval_metrics_is_a_float_and_leaves_the_model_alone() -> None:
    task = PINNHelmholtz(**TINY)
    model = task.build_model(0)
    task.loss(model, next(task.batches(0, CPU))).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    metrics = task.eval_metrics(model, CPU)
    assert set(metrics) == {"relative_l2_error"}
    value = metrics["relative_l2_error"]
    assert isinstance(value, float) and math.isfinite(value) and value > 0
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads, strict=True))
    assert task.eval_metrics(model, CPU) == metrics


# --------------------------------------------------------------------------------------------------
# The exact solution


def test_reference_grid() -> None:
    grid, u = reference_solution(1, 4)
    assert grid.shape == (REF_N**2, 2) and u.shape == (REF_N**2, 1) and u.dtype == np.float64
    axis = np.linspace(-1, 1, REF_N)
    assert np.array_equal(np.unique(grid[:, 0]), axis) and np.array_equal(np.unique(grid[:, 1]), axis)
    assert np.array_equal(u[:, 0], np.sin(np.pi * grid[:, 0]) * np.sin(4 * np.pi * grid[:, 1]))
    assert reference_solution(1, 4) is reference_solution(1, 4)  # cached per process
    assert not u.flags.writeable


def test_exact_solution_vanishes_on_the_boundary() -> None:
    s = np.linspace(-1, 1, 41)
    for a1, a2 in ((1, 4), (2, 3), (5, 1)):
        for edge in (exact_solution(-1.0, s, a1, a2), exact_solution(1.0, s, a1, a2)):
            assert np.abs(edge).max() < 1e-14
        for edge in (exact_solution(s, -1.0, a1, a2), exact_solution(s, 1.0, a1, a2)):
            assert np.abs(edge).max() < 1e-14
    assert np.abs(exact_solution(s, 0.125, 1, 4)).max() > 0.99  # and is not zero inside


@pytest.mark.parametrize("a1, a2, k", [(1, 4, 1.0), (2, 3, 5.0), (1, 1, 0.0)])
def test_exact_solution_satisfies_the_pde_by_finite_differences(a1: int, a2: int, k: float) -> None:
    h = 1e-4
    points = np.random.default_rng(0).uniform(-0.95, 0.95, (20, 2))
    x, y = points[:, 0], points[:, 1]

    def u(dx: float, dy: float) -> np.ndarray:
        return exact_solution(x + dx, y + dy, a1, a2)

    laplacian = (u(h, 0) + u(-h, 0) + u(0, h) + u(0, -h) - 4 * u(0, 0)) / h**2
    residual = laplacian + k * k * u(0, 0) - source(x, y, a1, a2, k)
    # Central differences: truncation error h²/12 (u_xxxx + u_yyyy), at most h²/12 ((a1 π)⁴ + (a2 π)⁴)
    # (2e-5 at a2 = 4), plus rounding of about 4 eps / h² (4e-8).
    bound = h**2 / 12 * ((a1 * math.pi) ** 4 + (a2 * math.pi) ** 4) + 1e-7
    assert np.abs(residual).max() < bound
    assert np.abs(laplacian).max() > 0.3 * residual_scale(a1, a2)  # the check has teeth: the terms are of order s


def test_exact_solution_satisfies_the_pde_by_autograd() -> None:
    a1, a2, k = 1, 4, 1.0
    points = torch.rand(200, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    xy = points.numpy()
    q = torch.tensor(source(xy[:, 0], xy[:, 1], a1, a2, k)).unsqueeze(1)
    edges = torch.tensor([[-1.0, 0.3], [1.0, -0.7], [0.2, -1.0], [-0.9, 1.0]], dtype=torch.float64)
    scale = residual_scale(a1, a2)
    points.requires_grad_(True)

    def loss(u_of: Any, wave_number: float = k) -> float:
        value = physics_loss(u_of, points, q, edges, wave_number, scale, 1.0, create_graph=False)
        return float(value.detach())

    assert loss(Exact(a1, a2)) < 1e-24
    # The loss is not blind: the zero function scores mean (q / s)², about 1/4 at these settings ...
    zero = loss(lambda p: 0.0 * p.square().sum(1, keepdim=True))
    assert zero == pytest.approx(float((q / scale).square().mean()), rel=1e-12) and zero > 0.1
    # ... and k = 3 instead of 1 leaves the residual (9 − 1) u.
    with torch.no_grad():
        expected = float((8.0 / scale * Exact(a1, a2)(points)).square().mean())
    assert loss(Exact(a1, a2), 3.0) == pytest.approx(expected, rel=1e-9)


def test_exact_solution_has_zero_error_and_the_task_loss_is_small_there() -> None:
    task = PINNHelmholtz(**TINY)
    model = Exact()
    assert task.relative_l2_error(model, CPU) < 1e-6
    assert task.eval_loss(model, CPU) < 1e-7  # float32 points and source
    assert task.relative_l2_error(Exact(2, 4), CPU) > 1.0  # another mode is orthogonal: error sqrt(2)


# --------------------------------------------------------------------------------------------------
# Training


def test_adam_lowers_loss_and_error(one_thread: None) -> None:
    # a2 = 2: a small net on few points learns sin(4πy) only after a plateau at u = 0 (and overfits 256
    # points), while sin(2πy) takes a few hundred steps.
    task = PINNHelmholtz(hidden=16, depth=2, n_interior=256, n_boundary=64, n_eval=256, a2=2)
    model = task.build_model(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    stream = task.batches(0, CPU)
    eval_before, error_before = task.eval_loss(model, CPU), task.relative_l2_error(model, CPU)
    first = float(task.loss(model, next(stream)).detach())
    for _ in range(400):
        optimizer.zero_grad(set_to_none=True)
        loss = task.loss(model, next(stream))
        loss.backward()
        optimizer.step()
    assert float(loss.detach()) < 0.1 * first
    assert task.eval_loss(model, CPU) < 0.1 * eval_before
    assert task.relative_l2_error(model, CPU) < 0.5 * error_before


# --------------------------------------------------------------------------------------------------
# Presets and parameters


def test_size_presets() -> None:
    cpu, gpu = PINNHelmholtz(), PINNHelmholtz(size="gpu")
    assert count_parameters(gpu.build_model(0)) > 50 * count_parameters(cpu.build_model(0))
    assert count_parameters(cpu.build_model(0)) == 2 * 32 + 32 + 2 * (32 * 32 + 32) + 32 + 1
    assert {name: gpu.knob(name) for name in PRESETS["gpu"]} == PRESETS["gpu"]
    assert gpu.knob("n_interior") >= 20000


def test_explicit_knob_overrides_preset() -> None:
    task = PINNHelmholtz(size="gpu", hidden=16, depth=2, n_interior=100, n_boundary=20, n_eval=40)
    assert count_parameters(task.build_model(0)) == 2 * 16 + 16 + 16 * 16 + 16 + 16 + 1
    interior, q, boundary = next(task.batches(0, CPU))
    assert interior.shape == (100, 2) and q.shape == (100, 1) and boundary.shape == (20, 2)
    data = task._on(CPU)
    assert data["eval_interior"].shape == (40, 2) and data["eval_boundary"].shape == (8, 2)


def test_equation_parameters_change_the_loss() -> None:
    base = PINNHelmholtz(**TINY)
    model = base.build_model(0)
    reference = base.eval_loss(model, CPU)
    for change in ({"k": 3.0}, {"a1": 2}, {"a2": 1}, {"boundary_weight": 10.0}):
        assert PINNHelmholtz(**TINY, **change).eval_loss(model, CPU) != reference, change


def test_normalize_residual_divides_by_the_source_scale() -> None:
    weight = 1e-3
    normalized = PINNHelmholtz(**TINY, boundary_weight=weight)
    raw = PINNHelmholtz(**TINY, boundary_weight=weight * residual_scale(1, 4) ** 2, normalize_residual=False)
    model = normalized.build_model(0)
    scale = residual_scale(1, 4)
    assert raw.eval_loss(model, CPU) == pytest.approx(scale**2 * normalized.eval_loss(model, CPU), rel=1e-4)


@pytest.mark.parametrize(
    "params",
    [
        {"size": "tpu"},
        {"hidden": 0},
        {"hidden": 2.5},
        {"depth": True},
        {"depth": 0},
        {"n_interior": 0},
        {"n_boundary": 3},
        {"n_eval": 4},
        {"a1": 0},
        {"a1": 1.5},
        {"a2": 17},
        {"a2": True},
        {"k": -1.0},
        {"k": float("nan")},
        {"k": "1"},
        {"normalize_residual": 1},
        {"boundary_weight": 0},
        {"boundary_weight": -1.0},
        {"data_seed": -1},
        {"data_seed": 1.5},
        {"width": 32},
    ],
)
def test_bad_parameters(params: dict[str, Any]) -> None:
    with pytest.raises(ParameterError) as info:
        PINNHelmholtz(**params)
    message = str(info.value)
    assert "\n" not in message and next(iter(params)) in message
