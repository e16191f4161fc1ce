"""``pinn-burgers``: the Task contract, determinism, the exact reference solution, training, presets, parameters.

Small explicit parameters keep it fast; the reference solution (about 0.5 s) is computed once per process.
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
from koopsweep.tasks._common import count_parameters
from koopsweep.tasks._burgers import PRESETS, REF_NT, REF_NX, PINNBurgers, cole_hopf, reference_solution
from koopsweep.testing import check_task
from rng_states import global_states, same_states

CPU = torch.device("cpu")
NU = 0.01 / math.pi
TINY: dict[str, Any] = {"hidden": 8, "depth": 2, "n_interior": 64, "n_boundary": 16, "n_eval": 50}


# --------------------------------------------------------------------------------------------------
# Contract and determinism


def test_conforms() -> None:
    check_task(PINNBurgers, **TINY)


def test_registered() -> None:
    assert plugins.load_task("pinn-burgers") is PINNBurgers


def test_class_attributes() -> None:
    assert PINNBurgers.default_optimizer == "adam"
    assert PINNBurgers.schedule == "constant"
    assert "adam" in PINNBurgers.baseline_lrs
    assert PINNBurgers.search_space() == {}


def test_global_random_state_untouched() -> None:
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    before = global_states()
    task = PINNBurgers(**TINY)
    model = task.build_model(3)
    batch = next(task.batches(3, CPU))
    task.loss(model, batch).backward()
    task.eval_loss(model, CPU)
    task.eval_metrics(model, CPU)
    assert same_states(before, global_states())


def test_points_fixed_by_data_seed_not_run_seed() -> None:
    task, other = PINNBurgers(**TINY), PINNBurgers(**TINY)
    stream = task.batches(0, CPU)
    first, second = next(stream), next(stream)
    # Full batch: the very same on-device tensors every step.
    assert all(a is b for a, b in zip(first, second, strict=True))
    for a, b in zip(first, next(task.batches(7, CPU)), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(first, next(other.batches(0, CPU)), strict=True):
        assert torch.equal(a, b)
    reseeded = next(PINNBurgers(**TINY, data_seed=1).batches(0, CPU))
    assert not torch.equal(first[0], reseeded[0])


def test_points_lie_in_the_domain_with_the_right_targets() -> None:
    interior, boundary, target = next(PINNBurgers(**TINY).batches(0, CPU))
    assert interior.shape == (64, 2) and boundary.shape == (16, 2) and target.shape == (16, 1)
    t, x = interior[:, 0], interior[:, 1]
    assert bool((t >= 0).all() and (t <= 1).all() and (x >= -1).all() and (x <= 1).all())
    initial = boundary[:, 0] == 0
    walls = boundary[:, 1].abs() == 1
    assert int(initial.sum()) == 8 and int(walls.sum()) == 8
    assert torch.allclose(target[initial, 0], -torch.sin(math.pi * boundary[initial, 1]))
    assert bool((target[walls] == 0).all())


def test_eval_metrics_is_a_float_and_leaves_the_model_alone() -> None:
    task = PINNBurgers(**TINY)
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
# The reference solution


def test_reference_grid_and_initial_condition() -> None:
    t, x, u = reference_solution(NU)
    assert u.shape == (REF_NT, REF_NX) and u.dtype == np.float64
    assert t[0] == 0 and t[-1] == 1 and x[0] == -1 and x[-1] == 1
    assert np.abs(u[0] + np.sin(np.pi * x)).max() == 0
    # Just after t = 0 the quadrature itself (not the special case) must give the initial condition.
    early = cole_hopf(np.array([1e-8]), x, NU)[0]
    assert np.abs(early + np.sin(np.pi * x)).max() < 1e-6
    assert reference_solution(NU) is reference_solution(NU)  # cached per process


def test_reference_boundary_values_and_antisymmetry() -> None:
    _, _, u = reference_solution(NU)
    assert np.abs(u[:, 0]).max() < 1e-12 and np.abs(u[:, -1]).max() < 1e-12
    # x = linspace(-1, 1, 256) is symmetric about 0: column j and column 255 - j are x and -x.
    assert np.abs(u + u[:, ::-1]).max() < 1e-12
    # The shock: u falls from about +0.7 to -0.7 across x = 0 by t = 1, u > 0 left of it.
    assert u[-1, 127] > 0.2 and u[-1, 128] < -0.2 and np.all(u[1:, 1:127] > 0)


def test_reference_satisfies_the_pde_by_finite_differences() -> None:
    h = 1e-4
    # Points away from the shock at x = 0 (and from t = 0), where central differences are accurate.
    points = [(0.1, 0.5), (0.3, -0.7), (0.5, 0.5), (0.7, 0.25), (0.9, -0.3), (0.95, 0.1)]
    for t0, x0 in points:
        t = np.array([t0 - h, t0, t0 + h])
        x = np.array([x0 - h, x0, x0 + h])
        u = cole_hopf(t, x, NU)
        u_t = (u[2, 1] - u[0, 1]) / (2 * h)
        u_x = (u[1, 2] - u[1, 0]) / (2 * h)
        u_xx = (u[1, 2] - 2 * u[1, 1] + u[1, 0]) / h**2
        residual = u_t + u[1, 1] * u_x - NU * u_xx
        assert abs(residual) < 1e-5, (t0, x0, residual)
        assert abs(u_t) > 0.1  # the check has teeth: the terms themselves are of order 1


def test_reference_quadrature_converged() -> None:
    t = np.array([0.25, 0.5, 1.0])
    x = np.linspace(-1, 1, 33)
    coarse, fine = cole_hopf(t, x, NU), cole_hopf(t, x, NU, dz=0.01)
    assert np.abs(coarse - fine).max() < 1e-12


# --------------------------------------------------------------------------------------------------
# Training


def test_adam_lowers_loss_and_error(one_thread: None) -> None:
    task = PINNBurgers(hidden=16, depth=2, n_interior=256, n_boundary=64, n_eval=256)
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
    assert task.relative_l2_error(model, CPU) < 0.9 * error_before


# --------------------------------------------------------------------------------------------------
# Presets and parameters


def test_size_presets() -> None:
    cpu, gpu = PINNBurgers(), PINNBurgers(size="gpu")
    assert count_parameters(gpu.build_model(0)) > 50 * count_parameters(cpu.build_model(0))
    assert count_parameters(cpu.build_model(0)) == 2 * 32 + 32 + 2 * (32 * 32 + 32) + 32 + 1
    assert {name: gpu.knob(name) for name in PRESETS["gpu"]} == PRESETS["gpu"]
    assert gpu.knob("n_interior") >= 20000


def test_explicit_knob_overrides_preset() -> None:
    task = PINNBurgers(size="gpu", hidden=16, depth=2, n_interior=100, n_boundary=20, n_eval=40)
    assert count_parameters(task.build_model(0)) == 2 * 16 + 16 + 16 * 16 + 16 + 16 + 1
    interior, boundary, _ = next(task.batches(0, CPU))
    assert interior.shape == (100, 2) and boundary.shape == (20, 2)
    data = task._on(CPU)
    assert data["eval_interior"].shape == (40, 2) and data["eval_boundary"].shape == (8, 2)


def test_nu_changes_the_loss() -> None:
    a, b = PINNBurgers(**TINY), PINNBurgers(**TINY, nu=0.1)
    model = a.build_model(0)
    assert a.eval_loss(model, CPU) != b.eval_loss(model, CPU)


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
        {"nu": 0},
        {"nu": 1e-5},
        {"nu": float("nan")},
        {"nu": "0.01"},
        {"boundary_weight": 0},
        {"boundary_weight": -1.0},
        {"data_seed": -1},
        {"data_seed": 1.5},
        {"width": 32},
    ],
)
def test_bad_parameters(params: dict[str, Any]) -> None:
    with pytest.raises(ParameterError) as info:
        PINNBurgers(**params)
    message = str(info.value)
    assert "\n" not in message and next(iter(params)) in message
