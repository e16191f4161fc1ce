"""One training run of a task, plain or Koopman-accelerated, with an honest clock.

Both sides of every comparison go through `train`: the same model built from the seed, the same batch
stream, the same closure (zero_grad, loss, backward), the same evaluation checkpoints. The clock runs
during training and stops during checkpoints, so evaluation costs neither side anything; everything
the accelerator does (snapshot copies, fits, verification losses, state resets) happens while it runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from koopsweep.devices import Stopwatch
from koopsweep.errors import UsageError
from koopsweep.tasks._base import Task

#: The baseline optimizers, by name. SGD uses momentum 0.9, the usual tuned-SGD baseline.
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": lambda params, lr: torch.optim.Adam(params, lr=lr),
    "adadelta": lambda params, lr: torch.optim.Adadelta(params, lr=lr),
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9),
    "adagrad": lambda params, lr: torch.optim.Adagrad(params, lr=lr),
}


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    try:
        factory = OPTIMIZERS[name]
    except KeyError:
        raise UsageError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}") from None
    return factory(params, lr)


@dataclass
class KoopmanConfig:
    """Everything `KoopmanAccelerator` needs besides the inner optimizer."""

    variant: str
    variant_params: dict[str, Any] = field(default_factory=dict)
    window: int = 16
    horizon: int = 100
    fallback: str = "verify"
    fallback_params: dict[str, Any] = field(default_factory=dict)
    stride: int = 1
    burn_in: int = 0
    reset_state: str = "keep"

    def accelerator_kwargs(self) -> dict[str, Any]:
        return dict(
            variant=self.variant,
            window=self.window,
            horizon=self.horizon,
            fallback=self.fallback,
            fallback_params=dict(self.fallback_params),
            stride=self.stride,
            burn_in=self.burn_in,
            reset_state=self.reset_state,
            **self.variant_params,
        )

    def flat_params(self) -> dict[str, Any]:
        """One flat dict for logging: shared knobs plus ``<variant>.<param>`` and ``<rule>.<param>``."""
        flat = {k: v for k, v in asdict(self).items() if k not in ("variant_params", "fallback_params")}
        flat.update({f"{self.variant}.{k}": v for k, v in self.variant_params.items()})
        flat.update({f"{self.fallback}.{k}": v for k, v in self.fallback_params.items()})
        return flat


@dataclass
class Checkpoint:
    """One evaluation: after ``step`` inner optimizer steps and ``time_s`` seconds of training."""

    step: int
    time_s: float
    loss: float
    # Accelerator counters at this point (zero for a plain run).
    jumps_tried: int = 0
    jumps_accepted: int = 0
    evaluations: int = 0
    fit_time_s: float = 0.0  # fit + predict; verification losses are counted in `evaluations`


@dataclass
class RunResult:
    """A finished run: its curve of checkpoints and why it stopped."""

    optimizer: str
    lr: float
    seed: int
    device: str
    koopman: KoopmanConfig | None
    curve: list[Checkpoint]
    stopped: str  # "budget", "target", "time-cap" or "diverged"
    stats: dict[str, Any] | None = None  # the accelerator's final stats
    eigenvalues: list[complex] | None = None  # of the last fit, for plots

    @property
    def label(self) -> str:
        return f"koopman-{self.optimizer}" if self.koopman else self.optimizer

    @property
    def steps(self) -> int:
        return self.curve[-1].step

    @property
    def time_s(self) -> float:
        return self.curve[-1].time_s

    @property
    def final_loss(self) -> float:
        return self.curve[-1].loss

    @property
    def seconds_per_step(self) -> float:
        return self.time_s / self.steps if self.steps else math.nan


#: Called at every checkpoint, while the clock is stopped. Returning True stops the run ("pruned").
CheckpointHook = Callable[[Checkpoint], bool | None]


def train(
    task: Task,
    *,
    optimizer: str,
    lr: float,
    seed: int,
    device: torch.device,
    max_steps: int,
    koopman: KoopmanConfig | None = None,
    eval_every: int | None = None,
    stop_below: float | None = None,
    min_steps: int = 0,
    max_time_s: float | None = None,
    on_checkpoint: CheckpointHook | None = None,
) -> RunResult:
    """Train ``task`` for up to ``max_steps`` inner optimizer steps.

    Stops early once the evaluation loss is at or below ``stop_below`` after at least ``min_steps``
    steps ("target"), once the training
    clock passes ``max_time_s`` ("time-cap"), when the loss stops being finite ("diverged"), or when
    ``on_checkpoint`` returns True ("pruned").
    """
    task.prepare(device)
    model = task.build_model(seed).to(device)
    inner = make_optimizer(optimizer, model.parameters(), lr)
    stepper: Any = inner
    if koopman is not None:
        from koopsweep.accelerator import KoopmanAccelerator

        stepper = KoopmanAccelerator(inner, **koopman.accelerator_kwargs())
    batches = task.batches(seed, device)
    first_batch = next(batches)  # generators start lazily: set the stream up before the clock runs
    eval_every = eval_every or task.checkpoint_interval(max_steps)
    clock = Stopwatch(device)
    curve: list[Checkpoint] = []

    def checkpoint(step: int) -> str | None:
        """Evaluate with the clock stopped; return why the run must stop, if it must."""
        elapsed = clock.pause()
        point = Checkpoint(step, elapsed, task.eval_loss(model, device))
        if koopman is not None:
            stats = stepper.stats
            point.jumps_tried, point.jumps_accepted = stats.jumps_tried, stats.jumps_accepted
            point.evaluations = stats.evaluations
            point.fit_time_s = stats.fit_time_s + stats.predict_time_s
        curve.append(point)
        if not math.isfinite(point.loss):
            return "diverged"
        if on_checkpoint is not None and on_checkpoint(point):
            return "pruned"
        if stop_below is not None and point.loss <= stop_below and step >= min_steps:
            return "target"
        if max_time_s is not None and elapsed >= max_time_s:
            return "time-cap"
        return None

    stopped = checkpoint(0) or "budget"
    if stopped == "budget":
        clock.start()
        for step in range(1, max_steps + 1):
            batch = first_batch if step == 1 else next(batches)

            def closure(batch=batch) -> torch.Tensor:
                stepper.zero_grad()
                loss = task.loss(model, batch)
                loss.backward()
                return loss

            stepper.step(closure)
            if step % eval_every == 0 or step == max_steps:
                reason = checkpoint(step)
                if reason:
                    stopped = reason
                    break
                clock.start()
    result = RunResult(optimizer, lr, seed, str(device), koopman, curve, stopped)
    if koopman is not None:
        result.stats = stepper.stats.to_dict()
        eigs = stepper.stats.last_eigenvalues
        if eigs is not None:
            result.eigenvalues = [complex(z) for z in eigs.tolist()]
    return result
