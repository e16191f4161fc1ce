"""``neural-ode``: a neural ODE dz/dt = f_θ(z) fitted to observed trajectories of a known 2-D system.

The trajectories are generated here, nothing is downloaded:

- ``system="lotka-volterra"`` (default): x' = αx − βxy, y' = δxy − γy with α = 1.5, β = 1, γ = 3, δ = 1
  (prey x, predators y; closed orbits around the equilibrium (3, 1.5), periods of 3 near it, longer
  further out), initial states uniform in [1.5, 4.5] x [0.75, 2.25];
- ``system="pendulum"``: the damped pendulum θ'' = −(g/L) sin θ − c θ' with g/L = 4, c = 0.2 as the
  first-order system (θ, ω = θ'), initial states uniform in [−1.5, 1.5] x [−2, 2] (energies up to 5.7,
  below the separatrix's 8: every pendulum swings, none goes over the top).

``n_train`` training and ``n_eval`` held-out trajectories start from initial states drawn from two
separate streams of ``data_seed`` (never the run seed) and are observed at ``n_times`` equally spaced
times over [0, t_end]. They are solved in float64 by scipy's DOP853 at rtol 1e-10, atol 1e-12, one
``solve_ivp`` per trajectory (so each meets the tolerance on its own), and cached per process
(`reference_trajectories`, about 0.5 s at the defaults, paid in ``prepare``).

The model sees standardised states z = (y − μ) / σ, with μ and σ the training observations' per-component
mean and standard deviation, and is a tanh MLP f_θ: 2 → hidden → 2. It is integrated by a fixed-step
classical RK4 written in torch (`rk4`; torchdiffeq is not installed, and a hand-written RK4 is a few
lines), ``substeps`` steps per observation interval, unrolled and backpropagated through
(discretise-then-optimise: the gradient is the exact gradient of the discrete prediction, not an adjoint
ODE's). All trajectories run as one batch; nothing in the loss syncs with the host.

Loss (multiple shooting): each training trajectory is cut into windows of ``segment`` observations that
tile it, sharing their end points (the last window ends at the final observation, overlapping its
neighbour where segment − 1 does not divide n_times − 1). From each window's first *observed* state RK4
predicts the other segment − 1 observations, and

    L = mean over windows, predicted observations and components of (z_pred − z_obs)²

in standardised units, full batch (the same on-device tensor every step). ``segment = n_times`` is the
plain fit of whole trajectories from their initial states. ``eval_loss`` is the same windowed loss on the
held-out trajectories. ``eval_metrics`` reports ``relative_l2_error`` = ||y_pred − y_true|| / ||y_true||
over the held-out trajectories' whole horizon, each predicted from its exact initial state alone (a
long rollout, where errors compound), in the system's own units. Calibration: for Lotka-Volterra,
whose states sit around (3, 1.5), predicting the training mean everywhere scores 0.29 and holding each
initial state 0.40 (untrained networks: about 0.4); for the pendulum 1.00 and 1.67 (untrained: 1.6).
``noise`` adds Gaussian noise of that many standard deviations (in standardised units) to the training
observations only (window starts included); the held-out data stay exact.

Why the defaults (``size="cpu"``: 2-32-32-2, 32 + 32 trajectories, t_end 10, 51 observations, 2 RK4
substeps, windows of 6 observations = 1 time unit, about a third of a period; 10 windows per trajectory,
320 in all): measured on one CPU thread, Adam, seed 0 unless said:

- whole trajectories (``segment=51``: 100 RK4 steps unrolled) do train from a random initialisation here
  (lr 3e-3: relative error 0.28 after 100 steps, 0.028 after 600), but a step costs 60 ms against 10 ms
  for the windows (the unroll is sequential; the windows' 10 RK4 steps run over 320 windows at once),
  and per step they are no faster (windows, same lr: 0.022 after 500 steps, 0.008 after 3,000). Windows
  thus buy a 6x cheaper step for the same progress; the metric still judges whole-horizon rollouts;
- 2-64-64-2 with 101 observations and windows of 11 (20 RK4 steps): 34 ms a step;
- the defaults, Adam at the tuned 1e-2, 3,000 steps, seeds 0/1/2: relative L2 error 0.0032 / 0.0045 /
  0.015 (from 0.38-0.45), evaluation loss 1.3e-5 / 2.0e-5 / 1.1e-4 (from 1.45-1.57), 31-34 s a run;
- ``system="pendulum"``, the same otherwise: 0.018 / 0.044 / 0.017 (from 1.6), evaluation loss
  3.6e-5 / 9.5e-4 / 4.2e-5, 31-32 s.

Adam converges steadily rather than in a burst: the evaluation loss falls by about a decade per 500
steps early on, then more slowly (3e-3, seed 0: 1.3e-3 at step 500, 1.8e-4 at 1,000, 2.3e-5 at 3,000).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from scipy.integrate import solve_ivp
from torch import nn

from koopsweep._params import require
from koopsweep.tasks._common import generator, is_int, is_number, mlp
from koopsweep.tasks._scientific import SizedTask, relative_l2

#: Per-size values of the knobs left at None.
PRESETS: dict[str, dict[str, int]] = {
    "cpu": {"hidden": 32, "depth": 2, "n_train": 32, "n_eval": 32},
    "gpu": {"hidden": 256, "depth": 3, "n_train": 1024, "n_eval": 256},
}

#: The reference solver's tolerances (DOP853, relative and absolute).
RTOL, ATOL = 1e-10, 1e-12


# --------------------------------------------------------------------------------------------------
# The systems


@dataclass(frozen=True)
class System:
    """A 2-D autonomous ODE s' = rhs(s) with the box its initial conditions are drawn from."""

    name: str
    rhs: Callable[[float, np.ndarray], np.ndarray]
    low: tuple[float, float]
    high: tuple[float, float]


#: Lotka-Volterra constants: prey growth α, predation β, predator death γ, conversion δ.
LV_ALPHA, LV_BETA, LV_GAMMA, LV_DELTA = 1.5, 1.0, 3.0, 1.0
#: Damped pendulum constants: g/L and the damping rate c.
PENDULUM_G_OVER_L, PENDULUM_DAMPING = 4.0, 0.2


def lotka_volterra(_t: float, s: np.ndarray) -> np.ndarray:
    """x' = αx − βxy, y' = δxy − γy (x prey, y predators)."""
    x, y = s
    return np.array([LV_ALPHA * x - LV_BETA * x * y, LV_DELTA * x * y - LV_GAMMA * y])


def damped_pendulum(_t: float, s: np.ndarray) -> np.ndarray:
    """θ' = ω, ω' = −(g/L) sin θ − c ω."""
    theta, omega = s
    return np.array([omega, -PENDULUM_G_OVER_L * math.sin(theta) - PENDULUM_DAMPING * omega])


SYSTEMS: dict[str, System] = {
    "lotka-volterra": System("lotka-volterra", lotka_volterra, (1.5, 0.75), (4.5, 2.25)),
    "pendulum": System("pendulum", damped_pendulum, (-1.5, -2.0), (1.5, 2.0)),
}


def initial_conditions(system: str, n: int, gen: torch.Generator) -> np.ndarray:
    """``n`` initial states, shape ``(n, 2)``, uniform in the system's box, drawn from ``gen`` (float64)."""
    box = SYSTEMS[system]
    u = torch.rand(n, 2, generator=gen, dtype=torch.float64).numpy()
    low, high = np.array(box.low), np.array(box.high)
    return low + (high - low) * u


def solve(system: str, y0: np.ndarray, times: np.ndarray) -> np.ndarray:
    """The exact trajectories from each row of ``y0`` (``(n, 2)``) at ``times``: ``(n, len(times), 2)``,
    float64, by DOP853 at rtol 1e-10, atol 1e-12 (one solve per trajectory, so each meets the tolerance
    on its own)."""
    rhs = SYSTEMS[system].rhs
    out = np.empty((len(y0), len(times), 2), dtype=np.float64)
    for i, start in enumerate(y0):
        sol = solve_ivp(rhs, (0.0, float(times[-1])), start, method="DOP853", rtol=RTOL, atol=ATOL, t_eval=times)
        if not sol.success:  # pragma: no cover - the systems and boxes are fixed and benign
            raise RuntimeError(f"solve_ivp failed for {system} from {start}: {sol.message}")
        out[i] = sol.y.T
    return out


@functools.lru_cache(maxsize=8)
def reference_trajectories(
    system: str, t_end: float, n_times: int, n: int, data_seed: int, purpose: str
) -> tuple[np.ndarray, np.ndarray]:
    """``(times, trajectories)``: ``linspace(0, t_end, n_times)`` and ``n`` exact trajectories of shape
    ``(n, n_times, 2)`` from initial conditions drawn from ``generator(data_seed, purpose)``. Cached per
    process; read-only."""
    times = np.linspace(0.0, t_end, n_times)
    y0 = initial_conditions(system, n, generator(data_seed, f"{system}/{purpose}"))
    trajectories = solve(system, y0, times)
    for array in (times, trajectories):
        array.setflags(write=False)
    return times, trajectories


# --------------------------------------------------------------------------------------------------
# The model and the integrator


class VectorField(nn.Module):
    """f_θ: a tanh MLP from a (standardised) 2-D state ``(n, 2)`` to its time derivative ``(n, 2)``."""

    def __init__(self, hidden: int, depth: int, gen: torch.Generator) -> None:
        super().__init__()
        self.net = mlp((2, *[hidden] * depth, 2), "tanh", gen)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def rk4(
    f: Callable[[torch.Tensor], torch.Tensor], z0: torch.Tensor, dt: float, n_intervals: int, substeps: int
) -> torch.Tensor:
    """Integrate z' = f(z) from ``z0`` (``(n, d)``) with classical fixed-step RK4: ``substeps`` steps of
    ``dt / substeps`` per observation interval. Returns the states at the ``n_intervals + 1`` observation
    times, ``(n, n_intervals + 1, d)``, starting with ``z0``. Plain tensor arithmetic, so autograd
    backpropagates through every step (discretise-then-optimise) and nothing syncs with the host."""
    h = dt / substeps
    z, states = z0, [z0]
    for _ in range(n_intervals):
        for _ in range(substeps):
            k1 = f(z)
            k2 = f(z + (0.5 * h) * k1)
            k3 = f(z + (0.5 * h) * k2)
            k4 = f(z + h * k3)
            z = z + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        states.append(z)
    return torch.stack(states, 1)


def segment_starts(n_times: int, segment: int) -> list[int]:
    """First observation index of each window of ``segment`` observations: windows tile ``0..n_times−1``,
    sharing their end points, and the last one ends at the final observation (it overlaps its neighbour
    where ``segment − 1`` does not divide ``n_times − 1``)."""
    last = n_times - segment
    starts = list(range(0, last + 1, segment - 1))
    if starts[-1] != last:
        starts.append(last)
    return starts


def as32(array: np.ndarray) -> torch.Tensor:
    """A float32 tensor copy of ``array`` (which may be a read-only cached solution)."""
    return torch.tensor(array, dtype=torch.float32)


def windows(trajectories: torch.Tensor, segment: int) -> torch.Tensor:
    """``(n, n_times, d)`` trajectories cut into the windows of `segment_starts`: ``(n · k, segment, d)``,
    trajectory-major."""
    n, n_times, d = trajectories.shape
    starts = torch.tensor(segment_starts(n_times, segment))
    index = starts[:, None] + torch.arange(segment)[None, :]  # (k, segment)
    return trajectories[:, index].reshape(n * len(starts), segment, d)


def shooting_loss(
    f: Callable[[torch.Tensor], torch.Tensor], segments: torch.Tensor, dt: float, substeps: int
) -> torch.Tensor:
    """Mean squared error of the RK4 predictions from each window's first state against its other
    observations (``segments`` is ``(m, segment, d)``)."""
    prediction = rk4(f, segments[:, 0], dt, segments.shape[1] - 1, substeps)
    return (prediction[:, 1:] - segments[:, 1:]).square().mean()


# --------------------------------------------------------------------------------------------------
# The task


class NeuralODE(SizedTask):
    """Fit a neural ODE dz/dt = f_θ(z) (tanh MLP, RK4) to trajectories of Lotka-Volterra or a damped pendulum.

    Parameters (None = the value of the ``size`` preset):
        size: "cpu" (default: 2-32-32-2, 32 training and 32 held-out trajectories) or "gpu" (2-256x3-2,
            1,024 and 256).
        hidden: width of the hidden layers; depth: their number.
        n_train, n_eval: training and held-out trajectories (separate initial-condition streams).
        system: "lotka-volterra" (default) or "pendulum" (see the module docstring).
        t_end: the observed time span [0, t_end] (default 10).
        n_times: observations per trajectory, equally spaced, t = 0 included (default 51: every 0.2).
        substeps: RK4 steps per observation interval (default 2).
        segment: observations per multiple-shooting window, 2..n_times (default 6); n_times fits whole
            trajectories from their initial states.
        noise: Gaussian noise on the training observations, in standard deviations of each component
            (default 0).
        data_seed: seeds the initial states and the noise (default 0), never the run seed: every run
            trains on the same trajectories.

    Measured (torch 2.13, one CPU thread, default size, a shared 2-core machine): one Adam step takes
    10.2-10.4 ms (fastest / median block of 10 steps); ``eval_loss`` 4 ms, ``eval_metrics`` 17 ms (32
    rollouts of 100 RK4 steps); a whole default run of 3,000 steps took 31-34 s. Seed 0 ends at an
    evaluation loss of 1.3e-5 and a relative L2 error of 0.0032 (module docstring: other seeds, systems).
    """

    default_budget: ClassVar[int] = 3000
    # Tuned by benchmarks/tune_baselines.py (half-decade grids, the default budget, seed 0; docs/tasks.md has
    # the table): the lowest final evaluation loss of each optimizer's grid. adadelta's and sgd's grids were
    # widened (0.01, 0.03 and 1, 3): 0.1 and 0.3 stay best (sgd diverges at 1).
    baseline_lrs: ClassVar[dict[str, float]] = {
        "adam": 1e-2, "adamw": 1e-2, "muon": 1e-3, "adadelta": 0.1, "sgd": 0.3, "adagrad": 0.1,
        "lbfgs": 1.0, "adam-lbfgs": 3e-4, "soap": 1e-3,
    }  # fmt: skip
    default_optimizer: ClassVar[str] = "adam"
    schedule: ClassVar[str] = "constant"
    defaults: ClassVar[dict[str, Any]] = {
        "size": "cpu",
        "hidden": None,
        "depth": None,
        "n_train": None,
        "n_eval": None,
        "system": "lotka-volterra",
        "t_end": 10.0,
        "n_times": 51,
        "substeps": 2,
        "segment": 6,
        "noise": 0.0,
        "data_seed": 0,
    }

    presets = PRESETS
    knob_minimums: ClassVar[dict[str, int]] = {"hidden": 1, "depth": 1, "n_train": 1, "n_eval": 1}

    def validate_params(self) -> None:
        super().validate_params()
        p = self.params
        require(p["system"] in SYSTEMS, self, "system", p["system"], f"one of {', '.join(map(repr, SYSTEMS))}")
        require(is_number(p["t_end"]) and p["t_end"] > 0, self, "t_end", p["t_end"], "a positive number")
        require(is_int(p["n_times"]) and p["n_times"] >= 2, self, "n_times", p["n_times"], "an int >= 2")
        require(is_int(p["substeps"]) and p["substeps"] >= 1, self, "substeps", p["substeps"], "an int >= 1")
        require(
            is_int(p["segment"]) and 2 <= p["segment"] <= (p["n_times"] if is_int(p["n_times"]) else 0),
            self,
            "segment",
            p["segment"],
            f"an int in [2, n_times={p['n_times']}] (observations per window)",
        )
        require(is_number(p["noise"]) and p["noise"] >= 0, self, "noise", p["noise"], "a number >= 0")
        require(is_int(p["data_seed"]) and p["data_seed"] >= 0, self, "data_seed", p["data_seed"], "an int >= 0")

    @property
    def dt(self) -> float:
        """Time between observations."""
        p = self.params
        return float(p["t_end"]) / (p["n_times"] - 1)

    def _make_data(self) -> dict[str, torch.Tensor]:
        p = self.params
        key = (p["system"], float(p["t_end"]), p["n_times"])
        # The exact trajectories (float64, cached per process) are made here, so that prepare() pays for
        # them before any clock starts. Separate streams: the held-out initial conditions do not move
        # when the training set changes size.
        train, mean, std = self._training_trajectories()
        _, held_out = reference_trajectories(*key, self.knob("n_eval"), p["data_seed"], "evaluation")
        clean_eval = (held_out - mean) / std
        return {
            "segments": self._observed_windows(train, f"{p['system']}/noise"),
            "eval_segments": windows(as32(clean_eval), p["segment"]),
            "eval_start": as32(clean_eval[:, 0]),
            "eval_true": as32(held_out),
            "mean": as32(mean),
            "std": as32(std),
        }

    def _training_trajectories(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The exact training trajectories and their per-component mean and standard deviation, with
        which every set is standardised: the network sees and predicts states of order one for either
        system."""
        p = self.params
        _, train = reference_trajectories(p["system"], float(p["t_end"]), p["n_times"], self.knob("n_train"),
                                          p["data_seed"], "train")  # fmt: skip
        return train, train.mean(axis=(0, 1)), train.std(axis=(0, 1))

    def _observed_windows(self, trajectories: np.ndarray, noise_stream: str) -> torch.Tensor:
        """``trajectories`` as the training data observes them: standardised, with the task's noise drawn
        from ``noise_stream`` of ``data_seed``, cut into shooting windows."""
        p = self.params
        _, mean, std = self._training_trajectories()
        observed = (trajectories - mean) / std
        if p["noise"] > 0:
            gen = generator(p["data_seed"], noise_stream)
            draw = torch.randn(observed.shape, generator=gen, dtype=torch.float64).numpy()
            observed = observed + float(p["noise"]) * draw
        return windows(as32(observed), p["segment"])

    def check_batches(self, seed: int, device: torch.device, n: int) -> list[torch.Tensor]:
        """``n`` fresh sets of trajectories, as many as the training set, from initial conditions of their
        own streams of ``data_seed`` (the same for every run seed), observed as the training data is
        (its standardisation, noise of their own): trajectories the run never trains on. The evaluation
        trajectories stay unseen by every decision."""
        p = self.params
        key = (p["system"], float(p["t_end"]), p["n_times"], self.knob("n_train"), p["data_seed"])
        draws = (reference_trajectories(*key, f"check-{i}")[1] for i in range(n))
        noise_streams = (f"{p['system']}/check-{i}/noise" for i in range(n))
        return [self._observed_windows(draw, stream).to(device) for draw, stream in zip(draws, noise_streams)]

    def build_model(self, seed: int) -> nn.Module:
        return VectorField(self.knob("hidden"), self.knob("depth"), generator(seed, "init"))

    def batches(self, seed: int, device: torch.device) -> Iterator[torch.Tensor]:
        segments = self._on(device)["segments"]  # eager: the windows move to the device before any clock

        def full() -> Iterator[torch.Tensor]:
            while True:
                yield segments

        return full()

    def loss(self, model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return shooting_loss(model, batch, self.dt, self.params["substeps"])

    def eval_loss(self, model: nn.Module, device: torch.device) -> float:
        data = self._on(device)
        with torch.no_grad():  # no input derivatives here: no_grad alone keeps the weights out of it
            return float(shooting_loss(model, data["eval_segments"], self.dt, self.params["substeps"]))

    def eval_metrics(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        return {"relative_l2_error": self.relative_l2_error(model, device)}

    def predict(self, model: nn.Module, device: torch.device) -> torch.Tensor:
        """The model's held-out trajectories over the whole horizon from their exact initial states, in
        the system's own units: ``(n_eval, n_times, 2)``."""
        data = self._on(device)
        with torch.no_grad():
            z = rk4(model, data["eval_start"], self.dt, self.params["n_times"] - 1, self.params["substeps"])
            return data["mean"] + data["std"] * z

    def relative_l2_error(self, model: nn.Module, device: torch.device) -> float:
        """||y_pred − y_true|| / ||y_true|| over every held-out trajectory, whole horizon, system units."""
        return relative_l2(self.predict(model, device), self._on(device)["eval_true"])


__all__ = [
    "NeuralODE",
    "PRESETS",
    "SYSTEMS",
    "VectorField",
    "initial_conditions",
    "reference_trajectories",
    "rk4",
    "segment_starts",
    "shooting_loss",
    "solve",
    "windows",
]
