"""One training run of a task, plain or Koopman-accelerated, with an honest clock.

Both sides of every comparison go through `train`: the same model built from the seed, the same batch
stream, the same closure (zero_grad, loss, backward), the same evaluation checkpoints. The clock runs
during training and stops during checkpoints, so evaluation costs neither side anything; everything
the accelerator does (snapshot copies, fits, verification losses, state resets) happens while it runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from koopsweep.devices import Stopwatch
from koopsweep.errors import UsageError
from koopsweep.knobs import ACCELERATOR_KNOBS, KNOBS
from koopsweep.optimizers._base import OptimizerPlugin
from koopsweep.schedules import Schedule
from koopsweep.tasks._base import Task


def build_optimizer(
    name: str, params: Any, lr: float, optimizer_params: Mapping[str, Any] | None = None
) -> tuple[OptimizerPlugin, torch.optim.Optimizer]:
    """The optimizer plugin registered as ``name``, built with ``optimizer_params``, and a fresh optimizer
    from it over ``params`` at ``lr``."""
    from koopsweep import plugins

    plugin = plugins.instantiate(plugins.load_optimizer(name), optimizer_params)
    return plugin, plugin.build(params, lr)


def learning_rate(task: Task | type[Task], optimizer: str) -> tuple[float, bool]:
    """The rate ``optimizer`` runs at on ``task``, and whether it is tuned: the task's ``baseline_lrs``
    entry, else the plugin's ``default_lr`` (untuned; tables mark it)."""
    from koopsweep import plugins

    tuned = type(task).baseline_lrs if isinstance(task, Task) else task.baseline_lrs
    if optimizer in tuned:
        return float(tuned[optimizer]), True
    return float(plugins.load_optimizer(optimizer).default_lr), False


def task_schedule(
    task: Task | type[Task], budget: int, kind: str | None = None, warmup: int | None = None
) -> Schedule:
    """The schedule of a run of ``budget`` steps: the task's kind and warm-up unless given."""
    cls = type(task) if isinstance(task, Task) else task
    return Schedule(kind or cls.schedule, cls.warmup if warmup is None else warmup, budget)


@dataclass
class KoopmanConfig:
    """Everything `KoopmanAccelerator` needs besides the inner optimizer."""

    variant: str
    variant_params: dict[str, Any] = field(default_factory=dict)
    fallback_params: dict[str, Any] = field(default_factory=dict)
    # The shared knobs (`koopsweep.knobs.KNOBS`, which defines their defaults and valid values).
    window: int = KNOBS["window"].default
    horizon: int = KNOBS["horizon"].default
    fallback: str = KNOBS["fallback"].default
    stride: int = KNOBS["stride"].default
    snapshot: str = KNOBS["snapshot"].default
    burn_in: int = KNOBS["burn_in"].default
    backoff: int = KNOBS["backoff"].default
    reset_state: str = KNOBS["reset_state"].default
    max_overhead: float | None = KNOBS["max_overhead"].default
    consistency: float | None = KNOBS["consistency"].default
    layer_horizons: str = KNOBS["layer_horizons"].default
    coordinates: str = KNOBS["coordinates"].default
    # > 0: jumps are judged by the mean loss on this many fixed training batches, drawn once from a
    # stream seeded apart from the training one, instead of on the step's own minibatch.
    check_batches: int = KNOBS["check_batches"].default

    def __post_init__(self) -> None:
        for name, knob in KNOBS.items():
            problem = knob.problem(getattr(self, name))
            if problem:
                raise UsageError(f"{name}={getattr(self, name)!r} is invalid; {problem} ({knob.doc})")

    def accelerator_kwargs(self) -> dict[str, Any]:
        knobs = {name: getattr(self, name) for name in ACCELERATOR_KNOBS}
        return dict(variant=self.variant, fallback_params=dict(self.fallback_params), **knobs, **self.variant_params)

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
    cpu_time_s: float = 0.0  # process CPU seconds of training (see `koopsweep.devices.Stopwatch`)
    # Accelerator counters at this point (zero for a plain run).
    jumps_tried: int = 0
    jumps_accepted: int = 0
    evaluations: int = 0
    fit_time_s: float = 0.0  # fit + predict; verification losses are counted in `evaluations`
    #: ``Task.eval_metrics`` here, when the run was asked for them at every checkpoint (else empty).
    metrics: dict[str, float] = field(default_factory=dict)


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
    optimizer_params: dict[str, Any] = field(default_factory=dict)
    schedule: str = "constant"  # Schedule.describe() of what drove the rate
    #: ``Task.eval_metrics`` at the end of the run (at the weights the optimizer is judged at).
    metrics: dict[str, float] = field(default_factory=dict)

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


class TrainingRun:
    """One run of a task, advanced in one or more segments on a clock that only runs while it trains.

    Segments let a measurement pause a run and resume it later: `koopsweep.pairing` advances a
    baseline and an accelerated run in alternating chunks of one evaluation interval, each on its own
    clock, so that both see the same load. Data loading, model construction and the first batch all
    happen before the clock first starts.
    """

    #: Reasons after which a run cannot continue.
    TERMINAL = ("diverged", "pruned")

    def __init__(
        self,
        task: Task,
        *,
        optimizer: str,
        lr: float,
        seed: int,
        device: torch.device,
        koopman: KoopmanConfig | None = None,
        eval_every: int,
        on_checkpoint: CheckpointHook | None = None,
        optimizer_params: Mapping[str, Any] | None = None,
        schedule: Schedule | None = None,
        checkpoint_metrics: bool = False,
    ) -> None:
        self.checkpoint_metrics = checkpoint_metrics  # Task.eval_metrics at every checkpoint, clock stopped
        self.task, self.optimizer_name, self.lr, self.seed = task, optimizer, lr, seed
        self.device, self.koopman, self.eval_every, self.on_checkpoint = device, koopman, eval_every, on_checkpoint
        self.optimizer_params = dict(optimizer_params or {})
        task.prepare(device)
        self.model = task.build_model(seed).to(device)
        self.plugin, self.optimizer = build_optimizer(optimizer, self.model.parameters(), lr, self.optimizer_params)
        self.schedule = (schedule or Schedule()).for_optimizer(self.plugin.schedule_free)
        self.scheduler = self.schedule.attach(self.optimizer)
        self.stepper: Any = self.optimizer
        if koopman is not None:
            from koopsweep.accelerator import KoopmanAccelerator

            self.stepper = KoopmanAccelerator(self.optimizer, **koopman.accelerator_kwargs())
        self.batches = task.batches(seed, device)
        self._next_batch = next(self.batches)  # generators start lazily: set the stream up now
        self.check_batches: list[Any] = []
        if koopman is not None and koopman.check_batches > 0:
            self.check_batches = task.check_batches(seed, device, koopman.check_batches)
        self.clock = Stopwatch(device)
        self.curve: list[Checkpoint] = []
        self.steps = 0
        self.stopped = "budget"
        self._evaluate()

    def _evaluate(self) -> Checkpoint:
        """Evaluate with the clock stopped, at the weights the optimizer is judged at, and record a checkpoint."""
        elapsed = self.clock.pause()
        with self.plugin.evaluation(self.optimizer):
            loss = self.task.eval_loss(self.model, self.device)
            metrics = self._metrics() if self.checkpoint_metrics else {}
        point = Checkpoint(self.steps, elapsed, loss, self.clock.cpu_elapsed, metrics=metrics)
        if self.koopman is not None:
            stats = self.stepper.stats
            point.jumps_tried, point.jumps_accepted = stats.jumps_tried, stats.jumps_accepted
            point.evaluations = stats.evaluations
            point.fit_time_s = stats.fit_time_s + stats.predict_time_s
        self.curve.append(point)
        if not math.isfinite(point.loss):
            self.stopped = "diverged"
        elif self.on_checkpoint is not None and self.on_checkpoint(point):
            self.stopped = "pruned"
        return point

    @property
    def time_s(self) -> float:
        """Training wall-clock seconds so far (at the last checkpoint)."""
        return self.curve[-1].time_s

    def _should_stop(self, stop_below: float | None, min_steps: int, max_time_s: float | None) -> str | None:
        if self.stopped in self.TERMINAL:
            return self.stopped
        point = self.curve[-1]
        if stop_below is not None and point.loss <= stop_below and point.step >= min_steps:
            return "target"
        if max_time_s is not None and point.time_s >= max_time_s:
            return "time-cap"
        return None

    def advance(
        self,
        max_steps: int,
        *,
        stop_below: float | None = None,
        min_steps: int = 0,
        max_time_s: float | None = None,
    ) -> str:
        """Train until ``max_steps`` inner steps in all, or until a checkpoint shows the loss at or
        below ``stop_below`` after ``min_steps`` ("target"), the clock past ``max_time_s``
        ("time-cap"), a non-finite loss ("diverged") or a pruning request ("pruned"). Returns why."""
        self.stopped = self._should_stop(stop_below, min_steps, max_time_s) or "budget"
        if self.stopped != "budget":
            return self.stopped
        task, model, stepper = self.task, self.model, self.stepper
        # Only the accelerator takes a check; a plain optimizer's step() would refuse the keyword.
        judge = {"check": self._check_loss} if self.check_batches else {}
        self.clock.start()
        while self.steps < max_steps:
            batch, self._next_batch = self._next_batch, None
            if batch is None:
                batch = next(self.batches)

            def closure(batch=batch) -> torch.Tensor:
                stepper.zero_grad()
                loss = task.loss(model, batch)
                loss.backward()
                return loss

            stepper.step(closure, **judge)
            if self.scheduler is not None:
                self.scheduler.step()
            self.steps += 1
            if self.steps % self.eval_every == 0 or self.steps == max_steps:
                self._evaluate()
                reason = self._should_stop(stop_below, min_steps, max_time_s)
                if reason:
                    self.stopped = reason
                    return reason
                self.clock.start()
        self.clock.pause()
        return self.stopped

    def _check_loss(self) -> torch.Tensor:
        """The mean loss on the fixed check batches, at the weights the model holds."""
        return self.task.check_loss(self.model, self.check_batches)

    def _metrics(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.task.eval_metrics(self.model, self.device).items()}

    def result(self) -> RunResult:
        """The run so far, with the task's end-of-run metrics (measured with the clock stopped)."""
        with self.plugin.evaluation(self.optimizer):
            metrics = self._metrics()
        result = RunResult(
            self.optimizer_name, self.lr, self.seed, str(self.device), self.koopman, self.curve, self.stopped,
            optimizer_params=dict(self.optimizer_params), schedule=self.schedule.describe(),
            metrics=metrics,
        )  # fmt: skip
        if self.koopman is not None:
            result.stats = self.stepper.stats.to_dict()
            eigs = self.stepper.stats.last_eigenvalues
            if eigs is not None:
                result.eigenvalues = [complex(z) for z in eigs.tolist()]
        return result


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
    optimizer_params: Mapping[str, Any] | None = None,
    schedule: Schedule | None = None,
) -> RunResult:
    """Train ``task`` for up to ``max_steps`` inner optimizer steps in one segment (see `TrainingRun`)."""
    run = TrainingRun(
        task, optimizer=optimizer, lr=lr, seed=seed, device=device, koopman=koopman,
        eval_every=eval_every or task.checkpoint_interval(max_steps), on_checkpoint=on_checkpoint,
        optimizer_params=optimizer_params, schedule=schedule,
    )  # fmt: skip
    run.advance(max_steps, stop_below=stop_below, min_steps=min_steps, max_time_s=max_time_s)
    return run.result()
