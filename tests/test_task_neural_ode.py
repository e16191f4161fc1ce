"""``neural-ode``: the Task contract, determinism, the reference trajectories, the RK4 integrator, the
shooting windows, training, presets and parameters.

Small explicit parameters keep it fast (the tiny reference sets take a few tens of ms each, once per process).
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
from koopsweep.tasks._common import count_parameters, generator
from koopsweep.tasks._neural_ode import (
    PRESETS,
    SYSTEMS,
    NeuralODE,
    initial_conditions,
    reference_trajectories,
    rk4,
    segment_starts,
    solve,
    windows,
)
from koopsweep.testing import check_task
from rng_states import global_states, same_states

CPU = torch.device("cpu")
TINY: dict[str, Any] = {"hidden": 8, "depth": 1, "n_train": 4, "n_eval": 3, "n_times": 10, "t_end": 1.8, "segment": 4}


def lotka_volterra_torch(s: torch.Tensor) -> torch.Tensor:
    """The Lotka-Volterra field of the task's constants, written again here (batched, torch)."""
    x, y = s[..., 0], s[..., 1]
    return torch.stack([1.5 * x - x * y, x * y - 3.0 * y], -1)


def pendulum_torch(s: torch.Tensor) -> torch.Tensor:
    theta, omega = s[..., 0], s[..., 1]
    return torch.stack([omega, -4.0 * torch.sin(theta) - 0.2 * omega], -1)


FIELDS = {"lotka-volterra": lotka_volterra_torch, "pendulum": pendulum_torch}


class TrueField(nn.Module):
    """The exact vector field in the task's standardised units: z' = F(mean + std·z) / std."""

    def __init__(self, task: NeuralODE) -> None:
        super().__init__()
        data = task._on(CPU)
        self.field = FIELDS[task.params["system"]]
        self.register_buffer("mean", data["mean"])
        self.register_buffer("std", data["std"])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.field(self.mean + self.std * z) / self.std


# --------------------------------------------------------------------------------------------------
# Contract and determinism


@pytest.mark.parametrize("system", sorted(SYSTEMS))
def test_conforms(system: str) -> None:
    check_task(NeuralODE, **TINY, system=system)


def test_registered() -> None:
    assert plugins.load_task("neural-ode") is NeuralODE


def test_class_attributes() -> None:
    assert NeuralODE.default_optimizer == "adam"
    assert NeuralODE.schedule == "constant"
    assert {"adam", "adadelta", "sgd", "adagrad"} <= set(NeuralODE.baseline_lrs)
    assert NeuralODE.search_space() == {}


def test_global_random_state_untouched() -> None:
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    before = global_states()
    task = NeuralODE(**TINY, noise=0.1)
    model = task.build_model(3)
    task.loss(model, next(task.batches(3, CPU))).backward()
    task.eval_loss(model, CPU)
    task.eval_metrics(model, CPU)
    assert same_states(before, global_states())


def test_data_fixed_by_data_seed_not_run_seed() -> None:
    task = NeuralODE(**TINY)
    stream = task.batches(0, CPU)
    first = next(stream)
    assert next(stream) is first  # full batch: the very same on-device tensor every step
    assert torch.equal(first, next(task.batches(7, CPU)))
    assert torch.equal(first, next(NeuralODE(**TINY).batches(0, CPU)))
    assert not torch.equal(first, next(NeuralODE(**TINY, data_seed=1).batches(0, CPU)))


def test_held_out_initial_conditions_differ_from_training() -> None:
    _, train = reference_trajectories("lotka-volterra", 1.8, 10, 4, 0, "train")
    _, held_out = reference_trajectories("lotka-volterra", 1.8, 10, 3, 0, "evaluation")
    starts = np.concatenate([train[:, 0], held_out[:, 0]])
    assert len(np.unique(starts.round(12), axis=0)) == 7
    # A bigger training set keeps the same first trajectories (and the held-out set does not move).
    _, more = reference_trajectories("lotka-volterra", 1.8, 10, 6, 0, "train")
    assert np.array_equal(more[:4], train)


def test_eval_metrics_is_a_float_and_leaves_the_model_alone() -> None:
    task = NeuralODE(**TINY)
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
# The reference trajectories


def test_initial_conditions_in_the_box() -> None:
    for name, system in SYSTEMS.items():
        y0 = initial_conditions(name, 500, torch.Generator().manual_seed(0))
        assert y0.shape == (500, 2) and y0.dtype == np.float64
        assert np.all(y0 >= system.low) and np.all(y0 <= system.high)
        # Spread over the box, not bunched in a corner.
        assert np.all(y0.min(0) < np.add(system.low, 0.05)) and np.all(y0.max(0) > np.subtract(system.high, 0.05))


def test_reference_shapes_start_and_cache() -> None:
    times, y = reference_trajectories("lotka-volterra", 1.8, 10, 4, 0, "train")
    assert times.shape == (10,) and times[0] == 0 and times[-1] == 1.8
    assert y.shape == (4, 10, 2) and y.dtype == np.float64 and not y.flags.writeable
    y0 = initial_conditions("lotka-volterra", 4, generator(0, "lotka-volterra/train"))
    assert np.array_equal(y[:, 0], y0)
    assert reference_trajectories("lotka-volterra", 1.8, 10, 4, 0, "train")[1] is y  # cached per process


def test_lotka_volterra_conserves_its_first_integral() -> None:
    _, y = reference_trajectories("lotka-volterra", 10.0, 201, 5, 0, "check")
    x, p = y[..., 0], y[..., 1]
    invariant = x - 3.0 * np.log(x) + p - 1.5 * np.log(p)  # δx − γ ln x + βy − α ln y
    drift = np.abs(invariant - invariant[:, :1]).max()
    assert drift < 1e-8, drift
    assert np.ptp(x, axis=1).min() > 0.1  # the check has teeth: the trajectories really move


def test_pendulum_loses_energy_at_the_damping_rate() -> None:
    # dE/dt = −c ω² for E = ω²/2 + (g/L)(1 − cos θ): compare E(T) − E(0) with −c ∫ ω² dt (Simpson).
    times, y = reference_trajectories("pendulum", 5.0, 2001, 3, 0, "check")
    theta, omega = y[..., 0], y[..., 1]
    energy = omega**2 / 2 + 4.0 * (1 - np.cos(theta))
    h = times[1] - times[0]
    w = np.ones(len(times))
    w[1:-1:2], w[2:-1:2] = 4, 2
    dissipated = 0.2 * (omega**2 * w).sum(axis=1) * h / 3
    assert np.abs(energy[:, -1] - energy[:, 0] + dissipated).max() < 1e-9
    assert dissipated.min() > 0.1


@pytest.mark.parametrize("system", sorted(SYSTEMS))
def test_reference_satisfies_the_ode_by_finite_differences(system: str) -> None:
    h = 1e-4
    y0 = initial_conditions(system, 3, torch.Generator().manual_seed(5))
    y = solve(system, y0, np.array([0.0, 1.0 - h, 1.0, 1.0 + h, 3.0 - h, 3.0, 3.0 + h]))
    for k in (2, 5):
        slope = (y[:, k + 1] - y[:, k - 1]) / (2 * h)
        field = FIELDS[system](torch.tensor(y[:, k])).numpy()
        assert np.abs(slope - field).max() < 1e-6
        assert np.abs(field).max() > 0.1


def test_rk4_is_fourth_order_and_matches_the_reference() -> None:
    _, y = reference_trajectories("lotka-volterra", 1.8, 10, 4, 0, "train")
    start = torch.tensor(y[:, 0])

    def error(substeps: int) -> float:
        z = rk4(lotka_volterra_torch, start, 0.2, 9, substeps)
        assert z.shape == (4, 10, 2) and torch.equal(z[:, 0], start)
        return float((z - torch.tensor(y)).abs().max())

    coarse, fine = error(4), error(8)
    assert 12 < coarse / fine < 20  # halving the step divides the error by 2^4
    assert error(64) < 1e-9


def test_rk4_on_a_linear_system_matches_the_matrix_exponential() -> None:
    a = torch.tensor([[-0.1, 1.0], [-2.0, -0.3]], dtype=torch.float64)
    start = torch.tensor([[1.0, 0.0], [0.5, -1.0]], dtype=torch.float64)
    z = rk4(lambda s: s @ a.T, start, 0.5, 6, 50)
    for k in range(7):
        exact = start @ torch.linalg.matrix_exp(a * 0.5 * k).T
        assert torch.allclose(z[:, k], exact, atol=1e-9)


# --------------------------------------------------------------------------------------------------
# Windows, standardisation and the losses


def test_segment_starts_tile_the_trajectory() -> None:
    assert segment_starts(10, 4) == [0, 3, 6]
    assert segment_starts(11, 4) == [0, 3, 6, 7]  # the last window ends at the last observation
    assert segment_starts(11, 11) == [0]
    assert segment_starts(11, 2) == list(range(10))
    assert segment_starts(12, 4) == [0, 3, 6, 8]
    for n_times in range(2, 30):
        for segment in range(2, n_times + 1):
            starts = segment_starts(n_times, segment)
            covered = {s + j for s in starts for j in range(segment)}
            assert covered == set(range(n_times)) and starts[-1] + segment == n_times


def test_windows_are_slices_of_the_trajectories() -> None:
    trajectories = torch.arange(2 * 11 * 2, dtype=torch.float32).reshape(2, 11, 2)
    cut = windows(trajectories, 4)
    assert cut.shape == (8, 4, 2)
    assert torch.equal(cut[0], trajectories[0, 0:4]) and torch.equal(cut[3], trajectories[0, 7:11])
    assert torch.equal(cut[4], trajectories[1, 0:4]) and torch.equal(cut[6], trajectories[1, 6:10])


def test_data_is_standardised_and_in_system_units_where_it_should_be() -> None:
    task = NeuralODE(**TINY)
    data = task._on(CPU)
    _, train = reference_trajectories("lotka-volterra", 1.8, 10, 4, 0, "train")
    _, held_out = reference_trajectories("lotka-volterra", 1.8, 10, 3, 0, "evaluation")
    z = (torch.tensor(train) - data["mean"].double()) / data["std"].double()
    assert torch.allclose(z.mean((0, 1)), torch.zeros(2, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(z.std((0, 1), unbiased=False), torch.ones(2, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(data["segments"].double(), windows(z, 4), atol=1e-6)
    assert torch.allclose(data["eval_true"].double(), torch.tensor(held_out))
    assert data["segments"].dtype == torch.float32 and data["segments"].shape == (4 * 3, 4, 2)


@pytest.mark.parametrize("system", sorted(SYSTEMS))
def test_the_true_field_has_almost_no_loss_or_error(system: str) -> None:
    # The whole pipeline (time step, standardisation, windows, prediction in system units) is consistent
    # with the exact solution: the true vector field leaves only RK4's own small discretisation error.
    task = NeuralODE(**TINY, system=system)
    model = TrueField(task)
    assert float(task.loss(model, next(task.batches(0, CPU)))) < 1e-8
    assert task.eval_loss(model, CPU) < 1e-8
    assert task.relative_l2_error(model, CPU) < 1e-4
    untrained = task.build_model(0)
    assert task.eval_loss(untrained, CPU) > 1e-3 and task.relative_l2_error(untrained, CPU) > 0.01


def test_noise_perturbs_training_windows_only() -> None:
    clean, noisy = NeuralODE(**TINY), NeuralODE(**TINY, noise=0.1)
    a, b = clean._on(CPU), noisy._on(CPU)
    difference = (a["segments"] - b["segments"]).std()
    assert 0.05 < float(difference) < 0.2
    for key in ("eval_segments", "eval_start", "eval_true", "mean", "std"):
        assert torch.equal(a[key], b[key]), key
    model = clean.build_model(0)
    assert clean.eval_loss(model, CPU) == noisy.eval_loss(model, CPU)


def test_system_and_t_end_change_the_data() -> None:
    model = NeuralODE(**TINY).build_model(0)
    variants = ({}, {"system": "pendulum"}, {"t_end": 3.0})
    values = {NeuralODE(**{**TINY, **extra}).eval_loss(model, CPU) for extra in variants}
    assert len(values) == 3


# --------------------------------------------------------------------------------------------------
# Training


def test_adam_lowers_loss_and_error(one_thread: None) -> None:
    task = NeuralODE(hidden=16, depth=2, n_train=8, n_eval=4, n_times=26, t_end=5.0, segment=6)
    model = task.build_model(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    stream = task.batches(0, CPU)
    eval_before, error_before = task.eval_loss(model, CPU), task.relative_l2_error(model, CPU)
    first = float(task.loss(model, next(stream)).detach())
    for _ in range(80):
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
    cpu, gpu = NeuralODE(), NeuralODE(size="gpu")
    assert count_parameters(gpu.build_model(0)) > 50 * count_parameters(cpu.build_model(0))
    assert count_parameters(cpu.build_model(0)) == 2 * 32 + 32 + 32 * 32 + 32 + 32 * 2 + 2
    assert {name: gpu.knob(name) for name in PRESETS["gpu"]} == PRESETS["gpu"]
    assert gpu.knob("n_train") >= 1000


def test_explicit_knob_overrides_preset() -> None:
    task = NeuralODE(size="gpu", **TINY)
    assert count_parameters(task.build_model(0)) == 2 * 8 + 8 + 8 * 2 + 2
    data = task._on(CPU)
    assert data["segments"].shape == (12, 4, 2) and data["eval_true"].shape == (3, 10, 2)


@pytest.mark.parametrize(
    "params",
    [
        {"size": "tpu"},
        {"hidden": 0},
        {"depth": 1.5},
        {"n_train": 0},
        {"n_eval": True},
        {"system": "lorenz"},
        {"t_end": 0},
        {"t_end": float("inf")},
        {"t_end": "10"},
        {"n_times": 1},
        {"n_times": 10.0},
        {"substeps": 0},
        {"segment": 1},
        {"segment": 102},
        {"segment": 5.0},
        {"noise": -0.1},
        {"noise": float("nan")},
        {"data_seed": -1},
        {"data_seed": 1.5},
        {"width": 32},
    ],
)
def test_bad_parameters(params: dict[str, Any]) -> None:
    with pytest.raises(ParameterError) as info:
        NeuralODE(**params)
    message = str(info.value)
    assert "\n" not in message and next(iter(params)) in message
