"""``hnn-oscillator``: the paper's network that solves Hamilton's equations of a nonlinear oscillator.

H(x, p) = p²/2 + x²/2 + x⁴/4, so ẋ = p and ṗ = −x − x³. A 1-10-10-2 network N with sine activations
maps a time t to the trajectory, with the initial condition built in:

    x(t) = x0 + (1 − e^{−t}) N_x(t),    p(t) = p0 + (1 − e^{−t}) N_p(t)

and is trained, without data, on the mean squared residual of the equations at sampled times:

    L = mean_t [ (ẋ − p)² + (ṗ + x + x³)² ]

with ẋ, ṗ from ``torch.autograd.grad(..., create_graph=True)``. This is the setting of Dogra & Redman's
first experiment, itself derived from Mattheakis et al.'s Hamiltonian networks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from koopsweep._params import require
from koopsweep.tasks._common import CachedTask, frozen_loss, generator, is_int, is_number, mlp

#: Steps of random times drawn and shipped to the device at once in the stochastic form.
_CHUNK_STEPS = 256


class HamiltonianNet(nn.Module):
    """``t (n, 1) -> (x, p) (n, 2)``, exact at t = 0 by construction."""

    def __init__(self, hidden: int, depth: int, x0: float, p0: float, gen: torch.Generator) -> None:
        super().__init__()
        self.net = mlp((1, *[hidden] * depth, 2), "sin", gen)
        self.register_buffer("z0", torch.tensor([x0, p0], dtype=torch.float32))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.z0 - torch.expm1(-t) * self.net(t)


def hamiltonian(x: torch.Tensor | np.ndarray, p: torch.Tensor | np.ndarray) -> Any:
    """The oscillator's energy p²/2 + x²/2 + x⁴/4."""
    return p**2 / 2 + x**2 / 2 + x**4 / 4


def residual_loss(
    trajectory: Callable[[torch.Tensor], torch.Tensor], t: torch.Tensor, *, create_graph: bool = True
) -> torch.Tensor:
    """Mean over the times ``t`` (shape ``(n, 1)``, requiring grad) of (ẋ − p)² + (ṗ + x + x³)².

    ``trajectory`` maps ``t`` to ``(n, 2)`` = (x, p), each row depending only on its own time.
    """
    z = trajectory(t)
    x, p = z[:, :1], z[:, 1:]
    ones = torch.ones_like(x)
    (dx,) = torch.autograd.grad(x, t, ones, retain_graph=True, create_graph=create_graph)
    (dp,) = torch.autograd.grad(p, t, ones, create_graph=create_graph)
    return ((dx - p) ** 2 + (dp + x + x**3) ** 2).mean()


def reference_trajectory(t: np.ndarray, x0: float, p0: float, substeps: int = 20) -> np.ndarray:
    """The exact solution at the sorted times ``t`` (from 0), by classical RK4 with ``substeps`` per interval."""

    def f(z: np.ndarray) -> np.ndarray:
        return np.array([z[1], -z[0] - z[0] ** 3])

    out = np.empty((len(t), 2))
    z, now = np.array([x0, p0], dtype=np.float64), 0.0
    for i, target in enumerate(np.asarray(t, dtype=np.float64)):
        h = (target - now) / substeps
        for _ in range(substeps if h else 0):
            k1 = f(z)
            k2 = f(z + h / 2 * k1)
            k3 = f(z + h / 2 * k2)
            k4 = f(z + h * k3)
            z = z + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        now = target
        out[i] = z
    return out


class HNNOscillator(CachedTask):
    """Solve the nonlinear oscillator's Hamilton equations with a sine MLP (no data), MSE of the residual.

    Parameters:
        n_points: times per step (default 200).
        t_max: the time interval is [0, t_max] (default 2π, about 1.4 periods).
        batch_size: 0 (default) = the fixed grid ``linspace(0, t_max, n_points)`` every step (the
            paper's deterministic form); > 0 = that many times drawn uniformly in [0, t_max] afresh
            every step from a seeded generator (stochastic; n_points is then unused).
        hidden: width of the hidden layers (default 10); depth: their number (default 2), i.e. 1-10-10-2.
        x0, p0: the initial condition (default 1.3, 1.0).
        n_eval: points of the fixed evaluation grid on [0, t_max] (default 1000).
    """

    default_budget: ClassVar[int] = 4000
    # Beyond the first four: benchmarks/tune_baselines.py hnn-oscillator --seeds 3 (lookahead-adam, snoo-adam,
    # ema-adam) or --seeds 2 (the rest) --optimizers NAME,...
    baseline_lrs: ClassVar[dict[str, float]] = {
        "adam": 0.01, "adadelta": 0.3, "sgd": 0.003, "adagrad": 0.1,
        "lookahead-adam": 0.03, "snoo-adam": 0.01, "ema-adam": 0.01, "adamw": 0.003, "muon": 0.003, "nadam": 0.003,
        "rmsprop": 0.001, "schedulefree-adamw": 0.01,
    }  # fmt: skip
    defaults: ClassVar[dict[str, Any]] = {
        "n_points": 200,
        "t_max": 2 * math.pi,
        "batch_size": 0,
        "hidden": 10,
        "depth": 2,
        "x0": 1.3,
        "p0": 1.0,
        "n_eval": 1000,
    }

    def validate_params(self) -> None:
        p = self.params
        for name in ("n_points", "n_eval"):
            require(is_int(p[name]) and p[name] >= 2, self, name, p[name], "an int >= 2")
        require(is_number(p["t_max"]) and p["t_max"] > 0, self, "t_max", p["t_max"], "a positive number")
        require(
            is_int(p["batch_size"]) and p["batch_size"] >= 0,
            self,
            "batch_size",
            p["batch_size"],
            "an int >= 0 (0 = fixed grid)",
        )
        require(is_int(p["hidden"]) and p["hidden"] > 0, self, "hidden", p["hidden"], "a positive int")
        require(is_int(p["depth"]) and p["depth"] > 0, self, "depth", p["depth"], "a positive int")
        for name in ("x0", "p0"):
            require(is_number(p[name]), self, name, p[name], "a finite number")

    def _make_data(self) -> dict[str, torch.Tensor]:
        p = self.params
        return {
            "grid": torch.linspace(0.0, p["t_max"], p["n_points"]).unsqueeze(1),
            "eval_grid": torch.linspace(0.0, p["t_max"], p["n_eval"]).unsqueeze(1),
        }

    def build_model(self, seed: int) -> nn.Module:
        p = self.params
        return HamiltonianNet(p["hidden"], p["depth"], p["x0"], p["p0"], generator(seed, "init"))

    def batches(self, seed: int, device: torch.device) -> Iterator[torch.Tensor]:
        device = torch.device(device)
        grid = self._on(device)["grid"]
        batch_size, t_max = self.params["batch_size"], float(self.params["t_max"])

        def full() -> Iterator[torch.Tensor]:
            while True:
                yield grid

        def sampled() -> Iterator[torch.Tensor]:
            gen = generator(seed, "batches")
            while True:
                chunk = torch.rand(_CHUNK_STEPS, batch_size, 1, generator=gen).mul_(t_max)
                yield from chunk.to(device, non_blocking=True).unbind(0)

        return sampled() if batch_size else full()

    def loss(self, model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        # A fresh leaf that shares the batch's storage: no copy, and the batch itself is never modified.
        t = batch.detach().requires_grad_(True)
        return residual_loss(model, t)

    def eval_loss(self, model: nn.Module, device: torch.device) -> float:
        return float(frozen_loss(residual_loss, model, self._on(device)["eval_grid"]))

    def check_loss(self, model: nn.Module, batches: list[torch.Tensor]) -> torch.Tensor:
        return sum(frozen_loss(residual_loss, model, times) for times in batches) / len(batches)

    def reference(self) -> tuple[np.ndarray, np.ndarray]:
        """The evaluation grid and the exact (RK4) trajectory on it, shape ``(n_eval, 2)``."""
        t = self._data()["eval_grid"].squeeze(1).double().numpy()
        if "_reference" not in self.__dict__:
            self._reference = reference_trajectory(t, self.params["x0"], self.params["p0"])
        return t, self._reference

    def trajectory_error(self, model: nn.Module, device: torch.device) -> float:
        """RMS distance of the network's (x, p) to the exact trajectory on the evaluation grid (not in the contract)."""
        _, exact = self.reference()
        with torch.no_grad():
            z = model(self._on(device)["eval_grid"]).double().cpu().numpy()
        return float(np.sqrt(((z - exact) ** 2).sum(1).mean()))


__all__ = ["HNNOscillator", "HamiltonianNet", "hamiltonian", "reference_trajectory", "residual_loss"]
